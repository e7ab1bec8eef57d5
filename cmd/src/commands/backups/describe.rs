//! `describe`: one VolumeBackup with its volume and its conditions.

use anyhow::{Result, bail};
use kube::ResourceExt;
use kube::api::Api;
use volbackup_populator::api::VolumeBackup;
use volbackup_store::backend::redact;

use crate::cli::DescribeArgs;
use crate::cluster;

/// `describe`
pub fn describe(args: &DescribeArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        let Some(b) = api.get_opt(&args.backup).await.map_err(|e| cluster::explain_volumebackups(e, "get", Some(&ns)))? else {
            bail!("VolumeBackup {:?} not found in namespace {ns:?}: list them with kubectl volbackup list -n {ns}", args.backup);
        };
        let st = b.status.clone().unwrap_or_default();
        let vol = st.volume.clone().unwrap_or_default();
        let opt = |o: Option<String>| o.unwrap_or_else(|| "<none>".into());
        let bytes = |o: Option<u64>| o.map(crate::commands::human_bytes).unwrap_or_else(|| "<none>".into());
        println!("Name:         {}", b.name_any());
        println!("Namespace:    {ns}");
        println!("Phase:        {}", st.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "<none>".into()));
        match &b.spec.repository.location {
            Some(l) => println!(
                "Repository:   {} (Secret {})",
                redact(l),
                b.spec.repository.secret_ref.name
            ),
            None => println!("Repository:   Secret {}", b.spec.repository.secret_ref.name),
        }
        println!("Snapshot:     {}", b.spec.snapshot.as_deref().unwrap_or("<none>"));
        if let Some(p) = &b.spec.path {
            println!("Path:         {p}");
        }
        println!("Started:      {}", opt(st.start_time.clone()));
        println!("Completed:    {}", opt(st.completion_time.clone()));
        println!("Bytes:        {} read, {} new, {} stored", bytes(st.bytes_total), bytes(st.bytes_new), bytes(st.bytes_stored));
        println!("Volume:");
        println!("  PVC:            {}/{}", vol.namespace, vol.pvc);
        println!("  PV:             {}", opt(vol.pv));
        println!("  Storage class:  {}", opt(vol.storage_class));
        println!("  CSI driver:     {}", opt(vol.csi_driver));
        println!("  Volume mode:    {}", vol.volume_mode);
        println!("  Access modes:   {}", vol.access_modes.join(", "));
        println!("  Capacity:       {}", vol.capacity);
        println!("  Snapshot handle: {}", opt(vol.snapshot_handle));
        if !st.conditions.is_empty() {
            println!("Conditions:");
            for c in &st.conditions {
                println!("  {} {} {}: {}", c.type_, c.status, c.reason, c.message);
            }
        }
        Ok(())
    })
}
