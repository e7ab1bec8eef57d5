//! `create`: back up PVCs from the user's own context. Per PVC: VolumeSnapshot, a temporary
//! PVC from it, a mover pod that reads the temporary volume and writes to the repository, then
//! a `VolumeBackup` that records the result. Whatever happens, the temporary objects go.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use volbackup_populator::api::{
    ANN_HEARTBEAT, Phase, RepositoryRef, SecretRef, VolumeBackup, VolumeBackupSpec,
    VolumeBackupStatus, VolumeInfo,
};
use volbackup_populator::contract::{BackupArgs, BackupSummary, MoverArgs, RepositorySettings};
use volbackup_populator::mover;

use super::record::{Heartbeat, Record, Step, fail_unfinished, now_rfc3339, with_backed_up};
use crate::cli::CreateArgs;
use crate::cluster::{self, BACKUP_LABEL, PVC_LABEL, explain};
use crate::progress;
use crate::repository;

mod cleanup;
mod preflight;
mod steps;

pub use cleanup::cleanup_selector;
use preflight::{admitted, check_secret, preflight};
use steps::backup_steps;

/// Where a Block volume appears in the mover pod.
pub const BLOCK_PATH: &str = "/dev/volbackup-source";
/// Where a Filesystem volume is mounted in the mover pod.
pub const MOUNT_PATH: &str = "/data";
/// What the mover of one target runs: the volume described by `info` (the record's), tagged
/// with its namespace and claim, then the user's tags.
fn backup_args(
    t: &Target,
    info: &VolumeInfo,
    tags: &[String],
    retry_lock: &str,
) -> Result<MoverArgs> {
    let mut all = vec![
        format!("namespace={}", info.namespace),
        format!("pvc={}", info.pvc),
    ];
    all.extend(tags.iter().cloned());
    Ok(MoverArgs::Backup(BackupArgs {
        source: if t.is_block() { BLOCK_PATH } else { MOUNT_PATH }.to_string(),
        name: format!("{}.img", info.pvc),
        host: format!("{}/{}", info.namespace, info.pvc),
        tags: all,
        description: serde_json::to_string(info)?,
        retry_lock: retry_lock.to_string(),
    }))
}

/// The mover pod of one target (the template the populate pod shares).
fn mover_pod(run: &Run, t: &Target, tmp: &str, ns: &str, args: MoverArgs) -> Pod {
    mover::pod(&mover::MoverPod {
        name: tmp.to_string(),
        namespace: ns.to_string(),
        image: run.image.clone(),
        block: t.is_block(),
        claim: tmp.to_string(),
        paths: mover::Paths {
            device: BLOCK_PATH,
            mount: MOUNT_PATH,
        },
        secret: run.secret.clone(),
        args,
        labels: serde_json::from_value(labels(run, t)).unwrap_or_default(),
        annotations: BTreeMap::new(),
        node_name: None,
        repository_dir: repository_dir(&run.locations, ns),
        volume_bytes: volbackup_populator::quantity::parse_bytes(&t.info.capacity),
    })
}

/// The node directory to mount when the namespace's repository is a local path.
fn repository_dir(locations: &BTreeMap<String, Option<String>>, ns: &str) -> Option<String> {
    locations
        .get(ns)
        .and_then(|l| l.as_deref())
        .and_then(mover::local_repository)
}

/// One PVC that passed the checks, with everything the backup records about it.
#[derive(Debug, Clone)]
struct Target {
    info: VolumeInfo,
    snapshot_class: String,
}

impl Target {
    fn label(&self) -> String {
        format!("{}/{}", self.info.namespace, self.info.pvc)
    }
    fn is_block(&self) -> bool {
        self.info.volume_mode == "Block"
    }
}

/// What the whole run shares.
struct Run {
    client: Client,
    id: String,
    args_tags: Vec<String>,
    image: String,
    secret: String,
    /// The repository location per namespace (from the local settings or `--repo-secret`).
    locations: BTreeMap<String, Option<String>>,
    keep_snapshot: bool,
    /// How long each wait (the snapshot, the mover pod's start) may take.
    timeout: Duration,
    /// How long the copy may go without progress.
    stall: Duration,
    /// How long the mover waits for another process's repository lock (`--retry-lock`).
    retry_lock: String,
    bars: MultiProgress,
    show: bool,
}

/// A random id for this run: the value of the `volbackup.io/backup` label.
fn new_run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `<pvc>-<id>`, short enough for any object name and a pod's hostname.
fn temp_name(pvc: &str, id: &str) -> String {
    let keep = 63 - id.len() - 1;
    let base: String = pvc.chars().take(keep).collect();
    format!("{}-{id}", base.trim_end_matches('-'))
}

/// `<pvc>-<yyyymmddhhmmss>`, the VolumeBackup's name.
fn backup_name(pvc: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    let stamp = at.format("%Y%m%d%H%M%S").to_string();
    let keep = 253 - stamp.len() - 1;
    let base: String = pvc.chars().take(keep).collect();
    format!("{base}-{stamp}")
}

/// `create`
pub fn run(args: &CreateArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    if args.pvcs.is_empty() && args.selector.is_none() && !args.all_namespaces {
        bail!("no PVC given: name PVCs, select them with -l SELECTOR, or use -A for all");
    }
    if args.all_namespaces && !args.pvcs.is_empty() {
        bail!(
            "PVC names and -A do not go together: name PVCs with -n NAMESPACE, or use -A with -l SELECTOR"
        );
    }
    let (timeout, stall) = (args.timeout, args.stall_timeout);
    let retry_lock = args.repo.retry_lock.map_or_else(
        || volbackup_populator::mover::LOCK_WAIT.to_string(),
        crate::flag_values::format_duration,
    );
    // The repository is checked here, before anything exists in the cluster: a wrong password
    // or an unreachable repository fails in a second and leaves nothing behind.
    let data = match &args.repo_secret {
        Some(_) => None,
        None => {
            let access = repository::Access::new(&args.repo)?;
            let mut settings = RepositorySettings::from_map(&repository::secret_data(&access)?)
                .context("the repository settings name no location or password")?;
            let repo = repository::open(&access, repository::Purpose::List)
                .context("cannot open the repository")?;
            // The movers read this key by name (see `repository::key_hint`).
            repository::add_key_hint(&mut settings.other, &repo);
            Some(settings)
        }
    };
    rt.block_on(run_async(args, quiet, (timeout, stall, retry_lock), data))
}

async fn run_async(
    args: &CreateArgs,
    quiet: bool,
    limits: (Duration, Duration, String),
    data: Option<RepositorySettings>,
) -> Result<()> {
    let kube = cluster::connect(&args.kube).await?;
    let client = kube.client.clone();
    let targets = preflight(&client, args, &kube.namespace).await?;
    if targets.is_empty() {
        bail!("no PVC matches: check the selector and namespace (kubectl get pvc --show-labels)");
    }
    let namespaces: BTreeSet<String> = targets.iter().map(|t| t.info.namespace.clone()).collect();
    // One Secret per repository: a backup to another repository never repoints the Secret
    // that older VolumeBackups name.
    let secret = match (&args.repo_secret, &data) {
        (Some(name), _) => name.clone(),
        (None, Some(d)) => mover::repository_secret_name(&d.location),
        (None, None) => bail!("no repository: give --repo or --repo-secret"),
    };
    // Pod Security: a namespace that would refuse the mover pod fails here, before anything is
    // created, rather than leaving a snapshot and a claim behind a pod that never starts.
    let image = args.image.clone().unwrap_or_else(mover::default_image);
    let mut locations = BTreeMap::new();
    for ns in &namespaces {
        let location = match &data {
            Some(d) => Some(d.location.clone()),
            None => check_secret(&client, ns, &secret).await?,
        };
        locations.insert(ns.clone(), location);
    }
    for t in &targets {
        admitted(&client, t, &image, &secret, &locations).await?;
    }
    if let Some(d) = &data {
        let all: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        if let Some(w) = repository::shared_repository_warning(&d.location, &all) {
            eprintln!("warning: {w}");
        }
        for ns in &namespaces {
            cluster::write_repository_secret(&client, ns, &d.to_map()).await?;
        }
    }
    let show = !quiet && std::io::stderr().is_terminal();
    let bars = MultiProgress::with_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let run = Run {
        client: client.clone(),
        id: new_run_id(),
        args_tags: args.tags.clone(),
        image,
        secret,
        locations,
        keep_snapshot: args.keep_snapshot,
        timeout: limits.0,
        stall: limits.1,
        retry_lock: limits.2,
        bars,
        show,
    };
    let total = targets.len();
    let work = futures::stream::iter(targets.clone())
        .map(|t| {
            let run = &run;
            async move {
                let r = backup_one(run, &t).await;
                (t, r)
            }
        })
        .buffer_unordered(args.parallel.max(1))
        .collect::<Vec<_>>();
    let results = tokio::select! {
        r = work => r,
        sig = interrupted() => {
            let sig = sig?;
            let selector = format!("{BACKUP_LABEL}={}", run.id);
            for ns in &namespaces {
                // The records first: if removing the temporaries fails, the Failed backups
                // still own them, and deleting those removes what is left.
                fail_unfinished(&client, ns, &selector, "Interrupted", |step| {
                    format!("create was interrupted by {sig} while {step}")
                })
                .await?;
                cleanup_selector(&client, ns, &selector, run.keep_snapshot).await?;
            }
            bail!("interrupted by {sig}: the temporary objects of this run were removed and its VolumeBackups marked Failed");
        }
    };
    let mut failed = Vec::new();
    for (t, r) in results {
        match r {
            Ok((name, s)) => {
                println!(
                    "volumebackup.volbackup.io/{name} created in {} (snapshot {}, {} read, {} new)",
                    t.info.namespace,
                    &s.snapshot_id[..8.min(s.snapshot_id.len())],
                    super::human_bytes(s.bytes_total),
                    super::human_bytes(s.bytes_new)
                );
            }
            Err(e) => failed.push((t, e)),
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 if total == 1 => Err(failed.pop().map(|(_, e)| e).expect("one failure")),
        n => {
            for (t, e) in &failed {
                eprintln!("error: {}: {}", t.label(), crate::one_line(e));
            }
            bail!("{n} of {total} backups failed (see above)")
        }
    }
}

/// Waits for Ctrl-C or SIGTERM and names it.
async fn interrupted() -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("cannot listen for Ctrl-C")?; Ok("Ctrl-C") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

fn bar_for(run: &Run, t: &Target) -> ProgressBar {
    progress::volume_bar(ProgressDrawTarget::hidden(), Some(&run.bars), t.label())
}

/// Writes the backup's record, `InProgress`, before anything else is created.
async fn start_record(
    run: &Run,
    t: &Target,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<Record> {
    let ns = t.info.namespace.as_str();
    let name = backup_name(&t.info.pvc, started);
    let api: Api<VolumeBackup> = Api::namespaced(run.client.clone(), ns);
    let mut vb = VolumeBackup::new(
        &name,
        VolumeBackupSpec {
            repository: RepositoryRef {
                secret_ref: SecretRef {
                    name: run.secret.clone(),
                },
                location: run.locations.get(ns).cloned().flatten(),
            },
            snapshot: None,
            path: t.is_block().then(|| format!("/{}.img", t.info.pvc)),
            privileged_files: None,
        },
    );
    vb.metadata.namespace = Some(ns.to_string());
    vb.metadata.labels = Some(BTreeMap::from([
        (PVC_LABEL.to_string(), cluster::pvc_label_value(&t.info.pvc)),
        (BACKUP_LABEL.to_string(), run.id.clone()),
        (
            cluster::MANAGED_BY.0.to_string(),
            cluster::MANAGED_BY.1.to_string(),
        ),
    ]));
    vb.metadata.annotations = Some(BTreeMap::from([(ANN_HEARTBEAT.to_string(), now_rfc3339())]));
    let created = api
        .create(&PostParams::default(), &vb)
        .await
        .map_err(|e| explain(e, "create", "volumebackups.volbackup.io", Some(ns)))?;
    let record = Record {
        api,
        name,
        uid: created.uid().unwrap_or_default(),
        step: std::sync::Mutex::new(Step::Snapshot),
    };
    let status = VolumeBackupStatus {
        phase: Some(Phase::InProgress),
        volume: Some(t.info.clone()),
        start_time: Some(started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        conditions: with_backed_up(
            None,
            "Unknown",
            Step::Snapshot.doing(),
            Step::Snapshot.what().to_string(),
        ),
        ..Default::default()
    };
    let written = record
        .api
        .patch_status(
            &record.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await;
    if let Err(e) = written {
        // Nothing half-created: a record without a status would look abandoned.
        let _ = record
            .api
            .delete(&record.name, &DeleteParams::default())
            .await;
        return Err(explain(e, "patch", "volumebackups/status", Some(ns)));
    }
    Ok(record)
}

/// Backs up one PVC and always removes its temporary objects; a failed backup's record says
/// at which step and why.
async fn backup_one(run: &Run, t: &Target) -> Result<(String, BackupSummary)> {
    let failed = || format!("backup of PVC {} failed", t.label());
    let started = chrono::Utc::now();
    let record = start_record(run, t, started).await.with_context(failed)?;
    let heartbeat = Heartbeat::start(record.api.clone(), record.name.clone());
    let bar = bar_for(run, t);
    let result = backup_steps(run, t, &bar, &record, started).await;
    bar.finish_and_clear();
    drop(heartbeat);
    if let Err(e) = &result {
        // The error is what the user needs; a record that cannot be marked is left InProgress
        // without a heartbeat, for `cleanup` to find.
        let _ = record.failed(e).await;
    }
    let selector = format!(
        "{BACKUP_LABEL}={},{PVC_LABEL}={}",
        run.id,
        cluster::pvc_label_value(&t.info.pvc)
    );
    let cleanup =
        cleanup_selector(&run.client, &t.info.namespace, &selector, run.keep_snapshot).await;
    let out = result.with_context(failed)?;
    cleanup.with_context(|| format!("cleaning up after the backup of PVC {}", t.label()))?;
    Ok(out)
}

fn labels(run: &Run, t: &Target) -> Value {
    json!({BACKUP_LABEL: run.id, PVC_LABEL: cluster::pvc_label_value(&t.info.pvc), cluster::MANAGED_BY.0: cluster::MANAGED_BY.1})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_fit_a_pod_hostname_and_keep_the_run_id() {
        let long = "p".repeat(100);
        let n = temp_name(&long, "0123abcd");
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-0123abcd"));
        assert_eq!(temp_name("data", "0123abcd"), "data-0123abcd");
    }

    #[test]
    fn backup_names_carry_the_pvc_and_the_time() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-21T12:34:56Z")
            .unwrap()
            .to_utc();
        assert_eq!(backup_name("db", at), "db-20261121123456");
    }
}
