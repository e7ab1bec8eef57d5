//! `restore`: a new PVC whose `dataSourceRef` names a VolumeBackup; the populator fills it.
//!
//! The source is a VolumeBackup in the target namespace, one in another namespace (copied into
//! the target namespace, with `--copy-secret` its repository Secret too: a PVC cannot name a
//! data source in another namespace without an alpha feature gate), or a repository snapshot id
//! (with `--repo`: the VolumeBackup is made from the volume description stored in the snapshot,
//! so a cluster that never saw the backup can restore it).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use indicatif::ProgressDrawTarget;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use volbackup_populator::api::{
    Phase, RepositoryRef, SecretRef, VolumeBackup, VolumeBackupSpec, VolumeBackupStatus, VolumeInfo,
};
use volbackup_populator::contract::{ClaimProgress, RepositorySettings};
use volbackup_populator::{quantity, state};
use volbackup_store::open_snapshot::OpenSnapshot;

use crate::cli::RestoreArgs;
use crate::cluster::{self, explain};
use crate::progress;
use crate::repository;

/// Whether `name` is a valid PVC name (a DNS-1123 subdomain).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether BACKUP looks like a repository snapshot id (8 to 64 hex digits).
fn looks_like_snapshot_id(text: &str) -> bool {
    (8..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The PVC size: `--size` if given (never smaller than a block image), else the backup's.
fn choose_size(
    flag: Option<&str>,
    info: &VolumeInfo,
    image_bytes: Option<u64>,
) -> Result<(String, u64)> {
    let (text, bytes) = match flag {
        Some(s) => {
            let b = quantity::parse_bytes(s).ok_or_else(|| {
                anyhow!("--size {s:?} is not a Kubernetes quantity: use a size like 10Gi or 500Mi")
            })?;
            (s.to_string(), b)
        }
        None => {
            let b = quantity::parse_bytes(&info.capacity).ok_or_else(|| {
                anyhow!(
                    "the backup records no usable capacity ({:?}): pass --size",
                    info.capacity
                )
            })?;
            (info.capacity.clone(), b)
        }
    };
    if info.volume_mode == "Block"
        && let Some(need) = image_bytes
        && bytes < need
    {
        bail!(
            "--size {text} is smaller than the backed-up block image ({need} bytes): use at least {}",
            quantity::format_bytes(need.div_ceil(1 << 20) << 20)
        );
    }
    Ok((text, bytes))
}

/// `restore`
pub fn run(args: &RestoreArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    if !valid_name(&args.to) {
        bail!(
            "--to {:?} is not a valid PVC name: use lower-case letters, digits and '-'",
            args.to
        );
    }
    // --access-mode, --size and --timeout are checked by their parsers (`flag_values`).
    let timeout = args.timeout;
    rt.block_on(run_async(args, quiet, timeout))
}

/// A VolumeBackup ready to be named by a PVC in the target namespace.
struct Source {
    backup: VolumeBackup,
    info: VolumeInfo,
}

async fn run_async(args: &RestoreArgs, quiet: bool, timeout: Duration) -> Result<()> {
    let kube = cluster::connect(&args.kube).await?;
    let client = &kube.client;
    let ns = kube.namespace.as_str();
    super::install::check_installed(client, &args.populator_namespace).await?;

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    if pvcs
        .get_opt(&args.to)
        .await
        .map_err(|e| explain(e, "get", "persistentvolumeclaims", Some(ns)))?
        .is_some()
    {
        bail!(
            "PVC {ns}/{} already exists: choose another --to or delete that PVC",
            args.to
        );
    }

    let mut source = resolve_source(args, client, ns).await?;
    if args.privileged_files {
        allow_privileged(client, &mut source.backup, quiet).await?;
    }
    let image_bytes = source
        .backup
        .status
        .as_ref()
        .and_then(|s| s.bytes_total)
        .filter(|_| source.info.volume_mode == "Block");
    let (size, _) = choose_size(args.size.as_deref(), &source.info, image_bytes)?;
    let storage_class =
        choose_class(client, args.storage_class.as_deref(), &source.info, quiet).await?;
    let access_modes = if !args.access_modes.is_empty() {
        args.access_modes.clone()
    } else if !source.info.access_modes.is_empty() {
        source.info.access_modes.clone()
    } else {
        vec!["ReadWriteOnce".to_string()]
    };

    let backup_name = source.backup.name_any();
    let mut spec = json!({
        "accessModes": access_modes,
        "volumeMode": source.info.volume_mode,
        "resources": {"requests": {"storage": size}},
        "dataSourceRef": {"apiGroup": volbackup_populator::api::GROUP, "kind": "VolumeBackup", "name": backup_name},
    });
    if let Some(sc) = &storage_class {
        spec["storageClassName"] = json!(sc);
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": args.to,
            "namespace": ns,
            "labels": {cluster::MANAGED_BY.0: cluster::MANAGED_BY.1},
            "annotations": {"volbackup.io/restored-from": format!("{ns}/{backup_name}")},
        },
        "spec": spec,
    }))?;
    pvcs.create(&PostParams::default(), &pvc)
        .await
        .map_err(|e| explain(e, "create", "persistentvolumeclaims", Some(ns)))?;
    // The result, as data: on stdout, like `create`'s.
    println!(
        "persistentvolumeclaim/{} created in {ns}: restoring VolumeBackup {backup_name} ({}, {size})",
        args.to, source.info.volume_mode
    );
    if args.wait {
        wait(client, ns, &args.to, &backup_name, timeout, quiet).await?;
    }
    Ok(())
}

/// The refusal of `--privileged-files` for a block image.
fn block_has_no_privileged_files(what: &str) -> String {
    format!(
        "--privileged-files is for file trees, and {what} is a block image (restored byte for byte): leave the flag out"
    )
}

/// `--privileged-files`: sets `spec.privilegedFiles` on the VolumeBackup the PVC names (the
/// populator passes it on to the restore), unless it is set already.
async fn allow_privileged(client: &Client, backup: &mut VolumeBackup, quiet: bool) -> Result<()> {
    if backup.spec.privileged_files == Some(true) {
        return Ok(());
    }
    let ns = backup.namespace().unwrap_or_default();
    let name = backup.name_any();
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &ns);
    *backup = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"privilegedFiles": true}})),
        )
        .await
        .map_err(|e| explain(e, "patch", "volumebackups.volbackup.io", Some(&ns)))?;
    if !quiet {
        eprintln!(
            "VolumeBackup {ns}/{name} now restores device nodes, set-user-id/set-group-id bits and file capabilities (spec.privilegedFiles), this restore and every later one"
        );
    }
    Ok(())
}

/// Finds or makes the VolumeBackup in the target namespace.
async fn resolve_source(args: &RestoreArgs, client: &Client, ns: &str) -> Result<Source> {
    let (from_ns, name) = match args.backup.split_once('/') {
        Some((n, b)) => (n.to_string(), b.to_string()),
        None => (ns.to_string(), args.backup.clone()),
    };
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), &from_ns);
    let found = api
        .get_opt(&name)
        .await
        .map_err(|e| cluster::explain_volumebackups(e, "get", Some(&from_ns)))?;
    let backup = match found {
        Some(b) => b,
        None if !args.backup.contains('/') && looks_like_snapshot_id(&args.backup) => {
            return from_repository(args, client, ns).await;
        }
        None => bail!(
            "VolumeBackup {from_ns}/{name} not found: list them with `kubectl volbackup list -n {from_ns}`, or give a snapshot id with --repo"
        ),
    };
    let status = backup.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Completed) if backup.spec.snapshot.is_some() => {}
        Some(Phase::Failed) => bail!(
            "VolumeBackup {from_ns}/{name} failed ({}), so it holds nothing to restore: restore a Completed backup (kubectl volbackup list -n {from_ns})",
            backup
                .condition(volbackup_populator::api::BACKED_UP)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "no reason recorded".into())
        ),
        Some(Phase::InProgress) | None => bail!(
            "VolumeBackup {from_ns}/{name} is still being taken ({}): wait until it is Completed (kubectl volbackup list -n {from_ns})",
            super::record::last_step(&backup)
        ),
        Some(Phase::Completed) => bail!(
            "VolumeBackup {from_ns}/{name} is Completed but names no snapshot: it was not written by `kubectl volbackup create`"
        ),
    }
    if args.privileged_files && backup.spec.path.is_some() {
        bail!(
            "{}",
            block_has_no_privileged_files(&format!("VolumeBackup {from_ns}/{name}"))
        );
    }
    let info = status.volume.clone().ok_or_else(|| {
        anyhow!("VolumeBackup {from_ns}/{name} has no volume info in its status: it was not made by `kubectl volbackup create`")
    })?;
    if from_ns == ns {
        return Ok(Source { backup, info });
    }
    // Another namespace: the PVC can only name a VolumeBackup in its own, so copy it.
    let secret_name = backup.spec.repository.secret_ref.name.clone();
    copy_secret(client, &from_ns, ns, &secret_name, args.copy_secret).await?;
    let mut spec = backup.spec.clone();
    if args.privileged_files {
        spec.privileged_files = Some(true);
    }
    let copied = put_backup(client, ns, &name, spec, status).await?;
    Ok(Source {
        backup: copied,
        info,
    })
}

/// Makes sure the repository Secret is in the target namespace.
async fn copy_secret(client: &Client, from: &str, to: &str, name: &str, copy: bool) -> Result<()> {
    let target: Api<Secret> = Api::namespaced(client.clone(), to);
    let exists = target
        .get_opt(name)
        .await
        .map_err(|e| explain(e, "get", "secrets", Some(to)))?
        .is_some();
    if exists {
        return Ok(());
    }
    if !copy {
        bail!(
            "the repository Secret {name:?} is not in namespace {to:?}: add --copy-secret to copy it from {from:?}, or create it there"
        );
    }
    let source: Api<Secret> = Api::namespaced(client.clone(), from);
    let s = source
        .get_opt(name)
        .await
        .map_err(|e| explain(e, "get", "secrets", Some(from)))?
        .ok_or_else(|| anyhow!("the repository Secret {from}/{name} does not exist: the backup cannot be read without it"))?;
    let copy = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(to.to_string()),
            labels: Some(BTreeMap::from([
                (
                    cluster::MANAGED_BY.0.to_string(),
                    cluster::MANAGED_BY.1.to_string(),
                ),
                (
                    volbackup_populator::mover::REPOSITORY_LABEL.to_string(),
                    "true".to_string(),
                ),
            ])),
            ..Default::default()
        },
        data: s.data,
        type_: s.type_,
        ..Default::default()
    };
    target
        .create(&PostParams::default(), &copy)
        .await
        .map_err(|e| explain(e, "create", "secrets", Some(to)))?;
    Ok(())
}

/// Creates the VolumeBackup (or reuses one with the same spec) and sets its status.
async fn put_backup(
    client: &Client,
    ns: &str,
    name: &str,
    spec: VolumeBackupSpec,
    status: VolumeBackupStatus,
) -> Result<VolumeBackup> {
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let existing = api
        .get_opt(name)
        .await
        .map_err(|e| explain(e, "get", "volumebackups.volbackup.io", Some(ns)))?;
    // Whether restores recreate privileged files is settled after (see `allow_privileged`).
    let comparable = |s: &VolumeBackupSpec| VolumeBackupSpec {
        privileged_files: None,
        ..s.clone()
    };
    if let Some(e) = existing {
        if comparable(&e.spec) != comparable(&spec) {
            bail!(
                "VolumeBackup {ns}/{name} already exists and names another snapshot: delete it or restore into another namespace"
            );
        }
        if e.status.as_ref().and_then(|s| s.phase) == Some(Phase::Completed) {
            return Ok(e);
        }
    } else {
        let mut vb = VolumeBackup::new(name, spec);
        vb.metadata.namespace = Some(ns.to_string());
        vb.metadata.labels = Some(BTreeMap::from([(
            cluster::MANAGED_BY.0.to_string(),
            cluster::MANAGED_BY.1.to_string(),
        )]));
        api.create(&PostParams::default(), &vb)
            .await
            .map_err(|e| explain(e, "create", "volumebackups.volbackup.io", Some(ns)))?;
    }
    let status = VolumeBackupStatus {
        conditions: Vec::new(),
        progress: None,
        ..status
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(|e| explain(e, "patch", "volumebackups/status", Some(ns)))
}

/// The VolumeBackup for a repository snapshot, from the description stored with it.
async fn from_repository(args: &RestoreArgs, client: &Client, ns: &str) -> Result<Source> {
    let access = repository::Access::new(&args.repo).context(
        "restoring a snapshot id needs the repository: pass --repo and the password (VOLBACKUP_PASSWORD or --password-file)",
    )?;
    let mut settings = RepositorySettings::from_map(&repository::secret_data(&access)?)
        .context("the repository settings name no location or password")?;
    let repo = repository::open(&access, repository::Purpose::Read)?;
    repository::add_key_hint(&mut settings.other, &repo);
    // The snapshot and its root tree are read as a restore reads them: under a shared lock,
    // with the index loaded under it. The lock goes once they are read.
    let open = OpenSnapshot::open(&repo, &args.backup)?;
    let (id, snap) = (open.id, open.snapshot.clone());
    let info: VolumeInfo = snap
        .volbackup
        .clone()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| {
            anyhow!(
                "snapshot {} has no volume description (it was not made by `kubectl volbackup create`): restore it with `kubectl-volbackup mover restore` instead",
                id.short()
            )
        })?;
    // A block image is one file node at the root, named as the snapshot's only path.
    let (path, image_bytes) = match open.root.nodes.as_slice() {
        [node] if open.is_block_image() => (Some(snap.paths[0].clone()), Some(node.size)),
        _ => (None, None),
    };
    drop(open);
    if args.privileged_files && path.is_some() {
        bail!(
            "{}",
            block_has_no_privileged_files(&format!("snapshot {}", id.short()))
        );
    }
    if (info.volume_mode == "Block") != path.is_some() {
        bail!(
            "snapshot {} says its volume was {} but holds {}: it cannot be restored into a PVC",
            id.short(),
            info.volume_mode,
            if path.is_some() {
                "a block image"
            } else {
                "a file tree"
            }
        );
    }
    let secret = cluster::write_repository_secret(client, ns, &settings.to_map()).await?;
    let name = format!(
        "{}-{}",
        info.pvc.chars().take(240).collect::<String>(),
        &id.to_string()[..8]
    );
    let spec = VolumeBackupSpec {
        repository: RepositoryRef {
            secret_ref: SecretRef { name: secret },
            location: Some(settings.location.clone()),
        },
        snapshot: Some(id.to_string()),
        path,
        privileged_files: args.privileged_files.then_some(true),
    };
    let time = snap
        .time
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = VolumeBackupStatus {
        phase: Some(Phase::Completed),
        volume: Some(info.clone()),
        bytes_total: image_bytes,
        start_time: Some(time.clone()),
        completion_time: Some(time),
        ..VolumeBackupStatus::default()
    };
    let backup = put_backup(client, ns, &name, spec, status).await?;
    Ok(Source { backup, info })
}

/// The StorageClass: the flag, else the backed-up volume's if this cluster has it, else the
/// cluster's default (by leaving the field out).
async fn choose_class(
    client: &Client,
    flag: Option<&str>,
    info: &VolumeInfo,
    quiet: bool,
) -> Result<Option<String>> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    if let Some(sc) = flag {
        if classes
            .get_opt(sc)
            .await
            .map_err(|e| explain(e, "get", "storageclasses.storage.k8s.io", None))?
            .is_none()
        {
            bail!("StorageClass {sc:?} does not exist: pick one from `kubectl get storageclass`");
        }
        return Ok(Some(sc.to_string()));
    }
    let Some(sc) = &info.storage_class else {
        return Ok(None);
    };
    match classes.get_opt(sc).await {
        Ok(Some(_)) => Ok(Some(sc.clone())),
        Ok(None) => {
            if !quiet {
                eprintln!(
                    "warning: StorageClass {sc:?} of the backed-up volume does not exist here: using the default class (or pass --storage-class)"
                );
            }
            Ok(None)
        }
        // Without rights to read classes, name the original one and let the API server judge.
        Err(_) => Ok(Some(sc.clone())),
    }
}

/// Follows the restore until the PVC is bound, it fails, or the time is up.
async fn wait(
    client: &Client,
    ns: &str,
    pvc: &str,
    backup: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let show = !quiet && std::io::stderr().is_terminal();
    let bar = progress::volume_bar(
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
        None,
        format!("{ns}/{pvc}"),
    );
    bar.set_message("waiting for the populator");
    // A watch on the claim wakes the loop as soon as it changes (bound, failed); the loop still
    // looks every 300 ms for progress and events. Without watch rights it only polls.
    let mut changes = Some(
        watcher::watcher(
            pvcs.clone(),
            watcher::Config::default().fields(&format!("metadata.name={pvc}")),
        )
        .boxed(),
    );
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last_warning = String::new();
    loop {
        let claim = pvcs
            .get_opt(pvc)
            .await
            .map_err(|e| explain(e, "get", "persistentvolumeclaims", Some(ns)))?
            .ok_or_else(|| anyhow!("PVC {ns}/{pvc} was deleted while it was being restored"))?;
        let annotations = claim.annotations();
        if let Some(why) = annotations.get(state::ANN_FAILED) {
            bar.abandon();
            bail!(
                "restoring {ns}/{pvc} failed: {why} (the PVC stays Pending; `kubectl describe pvc {pvc} -n {ns}` shows the events)"
            );
        }
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Bound") {
            bar.finish_and_clear();
            let volume = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            println!(
                "restored {ns}/{pvc} from VolumeBackup {backup} in {:.1}s (volume {volume})",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        // This claim's own progress (another restore from the same VolumeBackup has its own).
        match annotations
            .get(state::ANN_PROGRESS)
            .and_then(|p| ClaimProgress::parse(p))
        {
            Some(ClaimProgress::Waiting { .. }) => {
                bar.set_message("waiting for the repository lock");
            }
            Some(ClaimProgress::Bytes {
                bytes_done,
                bytes_total,
            }) => {
                bar.set_message("copying");
                progress::show_bytes(&bar, bytes_done, bytes_total);
            }
            None => {}
        }
        // The newest warning about this PVC tells why it waits (a retry, a missing source).
        let lp = ListParams::default().fields(&format!(
            "involvedObject.kind=PersistentVolumeClaim,involvedObject.name={pvc}"
        ));
        if let Ok(list) = events.list(&lp).await
            && let Some(ev) = list
                .items
                .iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .max_by_key(|e| {
                    e.metadata
                        .resource_version
                        .clone()
                        .unwrap_or_default()
                        .parse::<u64>()
                        .unwrap_or(0)
                })
        {
            let msg = ev.message.clone().unwrap_or_default();
            if msg != last_warning {
                if !quiet {
                    bar.suspend(|| eprintln!("warning: {msg}"));
                }
                last_warning = msg;
            }
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!(
                "PVC {ns}/{pvc} was not restored within {timeout:?} (it is still being restored; follow it with `kubectl describe pvc {pvc} -n {ns}`)"
            );
        }
        let watch_ended = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => false,
            ev = next_change(&mut changes) => !matches!(ev, Some(Ok(_))),
        };
        if watch_ended {
            changes = None;
        }
    }
}

/// The next change the watch reports; never, once the watch is gone.
async fn next_change<S: futures::Stream + Unpin>(watch: &mut Option<S>) -> Option<S::Item> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: &str, capacity: &str) -> VolumeInfo {
        VolumeInfo {
            namespace: "a".into(),
            pvc: "p".into(),
            volume_mode: mode.into(),
            capacity: capacity.into(),
            ..VolumeInfo::default()
        }
    }

    #[test]
    fn names_and_snapshot_ids_are_told_apart() {
        assert!(valid_name("data-1"));
        assert!(!valid_name("Data"));
        assert!(!valid_name("-x"));
        assert!(looks_like_snapshot_id("0123abcd"));
        assert!(looks_like_snapshot_id(&"ab".repeat(32)));
        assert!(!looks_like_snapshot_id("db-20261121"));
        assert!(!looks_like_snapshot_id("abc"));
    }

    #[test]
    fn the_size_defaults_to_the_backup_and_never_shrinks_a_block_image() {
        assert_eq!(
            choose_size(None, &info("Block", "1Gi"), Some(1 << 30)).unwrap(),
            ("1Gi".to_string(), 1 << 30)
        );
        assert_eq!(
            choose_size(Some("2Gi"), &info("Block", "1Gi"), Some(1 << 30)).unwrap(),
            ("2Gi".to_string(), 2 << 30)
        );
        let e = choose_size(Some("512Mi"), &info("Block", "1Gi"), Some(1 << 30)).unwrap_err();
        assert!(e.to_string().contains("at least 1Gi"), "{e}");
        // A file tree may go into a smaller volume; the populator reports it if it does not fit.
        assert!(choose_size(Some("512Mi"), &info("Filesystem", "1Gi"), None).is_ok());
        assert!(choose_size(None, &info("Block", "lots"), None).is_err());
    }
}
