//! What `create` checks before anything exists in the cluster: the PVCs, their snapshot
//! classes, the repository Secret, and whether the namespace admits the mover pod.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use volbackup_populator::api::{VolumeBackup, VolumeInfo};
use volbackup_populator::contract::RepositorySettings;
use volbackup_populator::mover;

use super::{BLOCK_PATH, MOUNT_PATH, Target, backup_args, repository_dir, temp_name};
use crate::cli::CreateArgs;
use crate::cluster::{self, BACKUP_LABEL, DEFAULT_SNAPSHOT_CLASS, explain};

/// Finds the PVCs and checks each one before anything is created.
pub(super) async fn preflight(client: &Client, args: &CreateArgs, ns: &str) -> Result<Vec<Target>> {
    // The VolumeBackup kind must exist, or the backup would have no record.
    let vb: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    if let Err(e) = vb.list(&ListParams::default().limit(1)).await {
        return Err(cluster::explain_volumebackups(e, "list", Some(ns)));
    }
    let mut pvcs = Vec::new();
    if !args.pvcs.is_empty() {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        for name in &args.pvcs {
            match api.get_opt(name).await {
                Ok(Some(p)) => pvcs.push(p),
                Ok(None) => bail!(
                    "PVC {name:?} not found in namespace {ns:?}: list them with kubectl get pvc -n {ns}"
                ),
                Err(e) => return Err(explain(e, "get", "persistentvolumeclaims", Some(ns))),
            }
        }
    } else {
        let api: Api<PersistentVolumeClaim> = if args.all_namespaces {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), ns)
        };
        let mut lp = ListParams::default();
        if let Some(sel) = &args.selector {
            lp = lp.labels(sel);
        }
        let list = api.list(&lp).await.map_err(|e| {
            explain(
                e,
                "list",
                "persistentvolumeclaims",
                (!args.all_namespaces).then_some(ns),
            )
        })?;
        // Our own temporary PVCs are never backed up.
        pvcs.extend(
            list.items
                .into_iter()
                .filter(|p| !p.labels().contains_key(BACKUP_LABEL)),
        );
    }
    let mut class_cache: BTreeMap<String, String> = BTreeMap::new();
    let mut targets = Vec::new();
    for pvc in pvcs {
        let info = volume_info(client, &pvc).await?;
        let driver = info.csi_driver.clone().unwrap_or_default();
        let class = match class_cache.get(&driver) {
            Some(c) => c.clone(),
            None => {
                let c =
                    snapshot_class(client, args.snapshot_class.as_deref(), &driver, &info).await?;
                class_cache.insert(driver.clone(), c.clone());
                c
            }
        };
        targets.push(Target {
            info,
            snapshot_class: class,
        });
    }
    Ok(targets)
}

/// Checks that a PVC can be snapshotted and describes it.
async fn volume_info(client: &Client, pvc: &PersistentVolumeClaim) -> Result<VolumeInfo> {
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if phase != "Bound" {
        bail!(
            "PVC {ns}/{name} is {phase}, not Bound: only a bound claim has data to back up; wait until it binds (kubectl describe pvc {name} -n {ns})"
        );
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let pv_name = spec.volume_name.clone().unwrap_or_default();
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get(&pv_name)
        .await
        .map_err(|e| explain(e, "get", "persistentvolumes", None))?;
    let storage_class = spec.storage_class_name.clone();
    let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.clone()) else {
        bail!(
            "PVC {ns}/{name} is not a CSI volume (PV {pv_name}, storage class {}): volbackup reads volumes through CSI snapshots; back up PVCs of a storage class whose provisioner is a CSI driver with a VolumeSnapshotClass (kubectl get csidrivers,volumesnapshotclass)",
            storage_class.as_deref().unwrap_or("none")
        );
    };
    let capacity = pvc
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    Ok(VolumeInfo {
        namespace: ns,
        pvc: name,
        pv: Some(pv_name),
        storage_class,
        csi_driver: Some(csi.driver),
        volume_mode: spec
            .volume_mode
            .clone()
            .unwrap_or_else(|| "Filesystem".into()),
        access_modes: spec.access_modes.clone().unwrap_or_default(),
        capacity,
        snapshot_handle: None,
    })
}

/// The VolumeSnapshotClass: the flag's, else the driver's default.
async fn snapshot_class(
    client: &Client,
    flag: Option<&str>,
    driver: &str,
    info: &VolumeInfo,
) -> Result<String> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &cluster::volume_snapshot_class_resource());
    let missing_crds = "the VolumeSnapshot CRDs (snapshot.storage.k8s.io/v1) are not installed: install the external-snapshotter CRDs and snapshot controller";
    if let Some(name) = flag {
        let class = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => bail!(
                "VolumeSnapshotClass {name:?} not found: list them with kubectl get volumesnapshotclass"
            ),
            Err(e) if cluster::is_status(&e, 404) => bail!("{missing_crds}"),
            Err(e) => return Err(explain(e, "get", "volumesnapshotclasses", None)),
        };
        let class_driver = class
            .data
            .get("driver")
            .and_then(Value::as_str)
            .unwrap_or("");
        if class_driver != driver {
            bail!(
                "VolumeSnapshotClass {name} is for driver {class_driver}, but PVC {}/{} uses {driver}: pick a class of that driver",
                info.namespace,
                info.pvc
            );
        }
        return Ok(name.to_string());
    }
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) if cluster::is_status(&e, 404) => bail!("{missing_crds}"),
        Err(e) => return Err(explain(e, "list", "volumesnapshotclasses", None)),
    };
    let defaults: Vec<String> = list
        .items
        .iter()
        .filter(|c| c.data.get("driver").and_then(Value::as_str) == Some(driver))
        .filter(|c| {
            c.annotations()
                .get(DEFAULT_SNAPSHOT_CLASS)
                .map(String::as_str)
                == Some("true")
        })
        .map(|c| c.name_any())
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no default VolumeSnapshotClass for CSI driver {driver} (PVC {}/{}): pass --snapshot-class NAME, or mark a class with kubectl annotate volumesnapshotclass NAME {DEFAULT_SNAPSHOT_CLASS}=true",
            info.namespace,
            info.pvc
        ),
        many => bail!(
            "several default VolumeSnapshotClasses for CSI driver {driver} ({}): pass --snapshot-class NAME",
            many.join(", ")
        ),
    }
}

/// Checks that `--repo-secret` exists, names a repository and a password (by key only) and is
/// marked as a repository Secret; gives the repository location it names.
pub(super) async fn check_secret(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => bail!(
            "Secret {name:?} not found in namespace {ns:?}: create it or leave out --repo-secret"
        ),
        Err(e) => return Err(explain(e, "get", "secrets", Some(ns))),
    };
    let mut keys: BTreeSet<String> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_keys()
        .collect();
    keys.extend(secret.string_data.clone().unwrap_or_default().into_keys());
    for (a, b) in [
        ("VOLBACKUP_REPOSITORY", "RESTIC_REPOSITORY"),
        ("VOLBACKUP_PASSWORD", "RESTIC_PASSWORD"),
    ] {
        if !keys.contains(a) && !keys.contains(b) {
            bail!("Secret {ns}/{name} has neither {a} nor {b}: add one of them");
        }
    }
    // The populator restores only from Secrets marked as repository Secrets (it may read
    // every Secret, so it uses only those meant for it): a backup through an unmarked one
    // would complete and never restore. `create` does not mark a Secret it did not write.
    let labels = secret.labels();
    let marked = labels.get(mover::REPOSITORY_LABEL).map(String::as_str) == Some("true")
        || labels.get(mover::LEGACY_MARK.0).map(String::as_str) == Some(mover::LEGACY_MARK.1);
    if !marked {
        bail!(
            "Secret {ns}/{name} is not marked as a repository Secret, and the populator restores only from marked ones, so its backups could never be restored: if it holds repository settings, label it with kubectl label secret {name} -n {ns} {}=true",
            mover::REPOSITORY_LABEL
        );
    }
    Ok(RepositorySettings::location_of(
        secret.data.as_ref().unwrap_or(&BTreeMap::new()),
        secret.string_data.as_ref().unwrap_or(&BTreeMap::new()),
    ))
}

/// Asks the API server whether it would admit this target's mover pod (a server-side dry
/// run, so Pod Security and any other admission policy answer); a refusal by Pod Security
/// becomes one line naming the namespace, the level and the fix.
pub(super) async fn admitted(
    client: &Client,
    t: &Target,
    image: &str,
    secret: &str,
    locations: &BTreeMap<String, Option<String>>,
) -> Result<()> {
    let ns = t.info.namespace.as_str();
    let probe = mover::pod(&mover::MoverPod {
        name: temp_name(&t.info.pvc, "admission"),
        namespace: ns.to_string(),
        image: image.to_string(),
        block: t.is_block(),
        claim: t.info.pvc.clone(),
        paths: mover::Paths {
            device: BLOCK_PATH,
            mount: MOUNT_PATH,
        },
        secret: secret.to_string(),
        args: backup_args(t, &t.info, &[], mover::LOCK_WAIT)?,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        node_name: None,
        repository_dir: repository_dir(locations, ns),
        volume_bytes: volbackup_populator::quantity::parse_bytes(&t.info.capacity),
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    match pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &probe,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("violates PodSecurity") => {
            let level = e
                .message
                .split("violates PodSecurity \"")
                .nth(1)
                .and_then(|r| r.split(['"', ':']).next())
                .unwrap_or("restricted");
            let why = if repository_dir(locations, ns).is_some() {
                "the repository is a node directory, mounted with hostPath: use an S3 repository there"
            } else if t.is_block() {
                "it runs as root to read the Block volume"
            } else {
                "it runs as root to read files of every owner"
            };
            bail!(
                "namespace {ns} enforces Pod Security \"{level}\", which refuses the mover pod for PVC {} ({why}; it meets \"{}\"): label the namespace pod-security.kubernetes.io/enforce={} or back up from a namespace that allows it",
                t.info.pvc,
                mover::MOVER_LEVEL,
                mover::MOVER_LEVEL
            )
        }
        Err(e) => Err(explain(e, "create", "pods", Some(ns))),
    }
}
