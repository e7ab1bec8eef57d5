//! `list`, `describe`, `delete` (VolumeBackups) and `cleanup` (what an interrupted `create`
//! left).

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use tabled::settings::Style;
use tabled::{Table, Tabled};
use volbackup_populator::api::VolumeBackup;

use crate::cli::{CleanupArgs, DeleteArgs, DescribeArgs, ListArgs, ListFormat, OutputFormat};
use crate::cluster::{self, BACKUP_LABEL, explain};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn missing_crd(e: kube::Error, verb: &str, ns: Option<&str>) -> anyhow::Error {
    if cluster::is_status(&e, 404) {
        anyhow::anyhow!(
            "the VolumeBackup CRD (volbackup.io/v1alpha1) is not installed: run `kubectl volbackup install`"
        )
    } else {
        explain(e, verb, "volumebackups.volbackup.io", ns)
    }
}

/// `cleanup`
pub fn cleanup(args: &CleanupArgs, quiet: bool) -> Result<()> {
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let selector = match &args.backup {
            Some(id) => format!("{BACKUP_LABEL}={id}"),
            None => BACKUP_LABEL.to_string(),
        };
        let namespaces = if args.all_namespaces {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.client.clone());
            api.list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "list", "namespaces", None))?
                .items
                .iter()
                .map(|n| n.name_any())
                .collect()
        } else {
            vec![kube.namespace.clone()]
        };
        let mut removed = 0;
        for ns in &namespaces {
            removed += super::create::cleanup_selector(&kube.client, ns, &selector, false).await?;
        }
        if !quiet {
            eprintln!("removed {removed} temporary object(s)");
        }
        Ok(())
    })
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "NAMESPACE")]
    namespace: String,
    #[tabled(rename = "NAME")]
    name: String,
    #[tabled(rename = "PHASE")]
    phase: String,
    #[tabled(rename = "SOURCE")]
    source: String,
    #[tabled(rename = "SIZE")]
    size: String,
    #[tabled(rename = "SNAPSHOT")]
    snapshot: String,
    #[tabled(rename = "CREATED")]
    created: String,
}

#[derive(Tabled)]
struct WideRow {
    #[tabled(inline)]
    row: Row,
    #[tabled(rename = "MODE")]
    mode: String,
    #[tabled(rename = "CLASS")]
    class: String,
    #[tabled(rename = "NEW")]
    new: String,
    #[tabled(rename = "SECRET")]
    secret: String,
}

fn row(b: &VolumeBackup) -> Row {
    let st = b.status.clone().unwrap_or_default();
    let vol = st.volume.clone().unwrap_or_default();
    Row {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        phase: st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        source: vol.pvc,
        size: vol.capacity,
        snapshot: b.spec.snapshot.chars().take(8).collect(),
        created: b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

/// `list`
pub fn list(args: &ListArgs) -> Result<()> {
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let api: Api<VolumeBackup> = if args.all_namespaces {
            Api::all(kube.client.clone())
        } else {
            Api::namespaced(kube.client.clone(), &kube.namespace)
        };
        let ns = (!args.all_namespaces).then_some(kube.namespace.as_str());
        let mut items = api
            .list(&ListParams::default())
            .await
            .map_err(|e| missing_crd(e, "list", ns))?
            .items;
        items.sort_by_key(|b| (b.namespace(), b.name_any()));
        match args.output {
            ListFormat::Json => super::print_structured(OutputFormat::Json, &items),
            ListFormat::Yaml => super::print_structured(OutputFormat::Yaml, &items),
            ListFormat::Table => {
                println!("{}", Table::new(items.iter().map(row)).with(Style::blank()));
                Ok(())
            }
            ListFormat::Wide => {
                let rows = items.iter().map(|b| {
                    let st = b.status.clone().unwrap_or_default();
                    let vol = st.volume.unwrap_or_default();
                    WideRow {
                        row: row(b),
                        mode: vol.volume_mode,
                        class: vol.storage_class.unwrap_or_default(),
                        new: st.bytes_new.map(super::human_bytes).unwrap_or_default(),
                        secret: b.spec.repository.secret_ref.name.clone(),
                    }
                });
                println!("{}", Table::new(rows).with(Style::blank()));
                Ok(())
            }
        }
    })
}

/// `describe`
pub fn describe(args: &DescribeArgs) -> Result<()> {
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        let Some(b) = api.get_opt(&args.backup).await.map_err(|e| missing_crd(e, "get", Some(&ns)))? else {
            bail!("VolumeBackup {:?} not found in namespace {ns:?}: list them with kubectl volbackup list -n {ns}", args.backup);
        };
        let st = b.status.clone().unwrap_or_default();
        let vol = st.volume.clone().unwrap_or_default();
        let opt = |o: Option<String>| o.unwrap_or_else(|| "<none>".into());
        let bytes = |o: Option<u64>| o.map(super::human_bytes).unwrap_or_else(|| "<none>".into());
        println!("Name:         {}", b.name_any());
        println!("Namespace:    {ns}");
        println!("Phase:        {}", st.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "<none>".into()));
        println!("Repository:   Secret {}", b.spec.repository.secret_ref.name);
        println!("Snapshot:     {}", b.spec.snapshot);
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

/// `delete`
pub fn delete(args: &DeleteArgs, quiet: bool) -> Result<()> {
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to delete without confirmation: pass --yes");
        }
        let ok = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Delete VolumeBackup(s) {}?",
                args.backups.join(", ")
            ))
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("nothing deleted");
        }
    }
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        for name in &args.backups {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    if !quiet {
                        println!("volumebackup.volbackup.io/{name} deleted");
                    }
                }
                Err(e) if cluster::is_status(&e, 404) => {
                    bail!("VolumeBackup {name:?} not found in namespace {ns:?}: list them with kubectl volbackup list -n {ns}")
                }
                Err(e) => return Err(missing_crd(e, "delete", Some(&ns))),
            }
        }
        Ok(())
    })
}
