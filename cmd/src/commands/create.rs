//! `create`: back up PVCs from the user's own context. Per PVC: VolumeSnapshot, a temporary
//! PVC from it, a mover pod that reads the temporary volume and writes to the repository, then
//! a `VolumeBackup` that records the result. Whatever happens, the temporary objects go.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use volbackup_populator::api::{
    ANN_HEARTBEAT, Phase, RepositoryRef, SecretRef, VolumeBackup, VolumeBackupSpec,
    VolumeBackupStatus, VolumeInfo,
};
use volbackup_populator::mover;

use super::record::{Heartbeat, Record, Step, fail_unfinished, now_rfc3339, with_backed_up};
use crate::cli::CreateArgs;
use crate::cluster::{self, BACKUP_LABEL, DEFAULT_SNAPSHOT_CLASS, PVC_LABEL, explain};
use crate::progress;
use crate::repository;

/// Where a Block volume appears in the mover pod.
pub const BLOCK_PATH: &str = "/dev/volbackup-source";
/// Where a Filesystem volume is mounted in the mover pod.
pub const MOUNT_PATH: &str = "/data";
/// The mover pod of one target (the template the populate pod shares).
fn mover_pod(run: &Run, t: &Target, tmp: &str, ns: &str, args: Vec<String>) -> Pod {
    mover::pod(&mover::MoverPod {
        name: tmp.to_string(),
        namespace: ns.to_string(),
        image: run.image.clone(),
        direction: mover::Direction::Backup,
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

/// The last line of `mover backup --json`.
#[derive(Debug, Deserialize)]
pub(crate) struct MoverSummary {
    pub(crate) snapshot_id: String,
    pub(crate) bytes_total: u64,
    pub(crate) bytes_new: u64,
    pub(crate) bytes_stored: u64,
}

/// One line of the mover's output, as far as `create` cares.
#[derive(Debug, PartialEq)]
enum MoverLine {
    Progress {
        done: u64,
        total: Option<u64>,
    },
    /// The mover waits for a lock another process holds (a prune): alive, not stalled.
    Waiting(String),
    Summary(String),
    Other(String),
}

/// Classifies a line of the mover pod's log (pure; unit-tested).
fn parse_mover_line(line: &str) -> MoverLine {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return MoverLine::Other(line.trim().to_string());
    };
    match v.get("type").and_then(Value::as_str) {
        Some("progress") => MoverLine::Progress {
            done: v.get("bytes_done").and_then(Value::as_u64).unwrap_or(0),
            total: v.get("bytes_total").and_then(Value::as_u64),
        },
        Some("summary") => MoverLine::Summary(line.to_string()),
        Some("waiting") => MoverLine::Waiting(
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or("waiting for a repository lock")
                .to_string(),
        ),
        _ => MoverLine::Other(line.trim().to_string()),
    }
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
pub fn run(args: &CreateArgs, quiet: bool) -> Result<()> {
    if args.pvcs.is_empty() && args.selector.is_none() && !args.all_namespaces {
        bail!("no PVC given: name PVCs, select them with -l SELECTOR, or use -A for all");
    }
    if args.all_namespaces && !args.pvcs.is_empty() {
        bail!(
            "PVC names and -A do not go together: name PVCs with -n NAMESPACE, or use -A with -l SELECTOR"
        );
    }
    let timeout = cluster::parse_duration(&args.timeout).context("--timeout")?;
    let stall = cluster::parse_duration(&args.stall_timeout).context("--stall-timeout")?;
    let retry_lock = args
        .repo
        .retry_lock
        .clone()
        .unwrap_or_else(|| volbackup_populator::mover::LOCK_WAIT.to_string());
    cluster::parse_duration(&retry_lock).context("--retry-lock")?;
    // The repository is checked here, before anything exists in the cluster: a wrong password
    // or an unreachable repository fails in a second and leaves nothing behind.
    let data = match &args.repo_secret {
        Some(_) => None,
        None => {
            let access = repository::Access::new(&args.repo)?;
            let mut data = repository::secret_data(&access)?;
            let repo = repository::open(&access, repository::Purpose::List)
                .context("cannot open the repository")?;
            // The movers read this key by name (see `repository::key_hint`).
            repository::add_key_hint(&mut data, &repo);
            Some(data)
        }
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(run_async(args, quiet, (timeout, stall, retry_lock), data))
}

async fn run_async(
    args: &CreateArgs,
    quiet: bool,
    limits: (Duration, Duration, String),
    data: Option<BTreeMap<String, String>>,
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
        (None, Some(d)) => mover::repository_secret_name(&d["VOLBACKUP_REPOSITORY"]),
        (None, None) => bail!("no repository: give --repo or --repo-secret"),
    };
    // Pod Security: a namespace that would refuse the mover pod fails here, before anything is
    // created, rather than leaving a snapshot and a claim behind a pod that never starts.
    let image = args.image.clone().unwrap_or_else(mover::default_image);
    let mut locations = BTreeMap::new();
    for ns in &namespaces {
        let location = match &data {
            Some(d) => d.get("VOLBACKUP_REPOSITORY").cloned(),
            None => check_secret(&client, ns, &secret).await?,
        };
        locations.insert(ns.clone(), location);
    }
    for t in &targets {
        admitted(&client, t, &image, &secret, &locations).await?;
    }
    if let Some(d) = &data {
        let all: Vec<&str> = namespaces.iter().map(String::as_str).collect();
        if let Some(w) = repository::shared_repository_warning(&d["VOLBACKUP_REPOSITORY"], &all) {
            eprintln!("warning: {w}");
        }
        for ns in &namespaces {
            cluster::write_repository_secret(&client, ns, d).await?;
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

/// Finds the PVCs and checks each one before anything is created.
async fn preflight(client: &Client, args: &CreateArgs, ns: &str) -> Result<Vec<Target>> {
    // The VolumeBackup kind must exist, or the backup would have no record.
    let vb: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    if let Err(e) = vb.list(&ListParams::default().limit(1)).await {
        if cluster::is_status(&e, 404) {
            bail!(
                "the VolumeBackup CRD (volbackup.io/v1alpha1) is not installed: run `kubectl volbackup install` or kubectl apply -f manifests/crds/"
            );
        }
        return Err(explain(e, "list", "volumebackups.volbackup.io", Some(ns)));
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
async fn check_secret(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
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
    Ok(mover::secret_location(
        secret.data.as_ref().unwrap_or(&BTreeMap::new()),
        secret.string_data.as_ref().unwrap_or(&BTreeMap::new()),
    ))
}

/// Asks the API server whether it would admit this target's mover pod (a server-side dry
/// run, so Pod Security and any other admission policy answer); a refusal by Pod Security
/// becomes one line naming the namespace, the level and the fix.
async fn admitted(
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
        direction: mover::Direction::Backup,
        block: t.is_block(),
        claim: t.info.pvc.clone(),
        paths: mover::Paths {
            device: BLOCK_PATH,
            mount: MOUNT_PATH,
        },
        secret: secret.to_string(),
        args: vec!["mover".into(), "backup".into()],
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
            "app.kubernetes.io/managed-by".to_string(),
            "volbackup".to_string(),
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
async fn backup_one(run: &Run, t: &Target) -> Result<(String, MoverSummary)> {
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
    json!({BACKUP_LABEL: run.id, PVC_LABEL: cluster::pvc_label_value(&t.info.pvc), "app.kubernetes.io/managed-by": "volbackup"})
}

async fn backup_steps(
    run: &Run,
    t: &Target,
    bar: &ProgressBar,
    record: &Record,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(String, MoverSummary)> {
    // --timeout bounds each wait on the cluster, not the copy: a large volume takes as long as
    // it takes, and only a copy that stops making progress (--stall-timeout) is given up.
    let deadline = Instant::now() + run.timeout;
    let ns = t.info.namespace.as_str();
    let tmp = temp_name(&t.info.pvc, &run.id);
    let client = &run.client;

    // 1. The VolumeSnapshot.
    bar.set_message("waiting for the snapshot");
    let snaps = cluster::snapshots(client, ns);
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": tmp, "namespace": ns, "labels": labels(run, t),
                     "ownerReferences": record.owner()},
        "spec": {"volumeSnapshotClassName": t.snapshot_class,
                 "source": {"persistentVolumeClaimName": t.info.pvc}},
    }))?;
    snaps
        .create(&PostParams::default(), &vs)
        .await
        .map_err(|e| {
            explain(
                e,
                "create",
                "volumesnapshots.snapshot.storage.k8s.io",
                Some(ns),
            )
        })?;
    let ready = loop {
        let cur = snaps.get(&tmp).await.map_err(|e| {
            explain(
                e,
                "get",
                "volumesnapshots.snapshot.storage.k8s.io",
                Some(ns),
            )
        })?;
        let status = cur.data.get("status").cloned().unwrap_or(Value::Null);
        if status.get("readyToUse") == Some(&Value::Bool(true)) {
            break status;
        }
        // The snapshot controller reports transient errors here and retries, so an error
        // only ends the wait at the deadline, where it says why.
        let error = status.pointer("/error/message").and_then(Value::as_str);
        if Instant::now() > deadline {
            match error {
                Some(msg) => bail!(
                    "VolumeSnapshot {ns}/{tmp} was not ready within {:?}: {msg} (the CSI driver of VolumeSnapshotClass {} reports this; fix it or pass another --snapshot-class)",
                    run.timeout,
                    t.snapshot_class
                ),
                None => bail!(
                    "VolumeSnapshot {ns}/{tmp} was not ready within {:?}: is the snapshot controller running? (kubectl describe volumesnapshot {tmp} -n {ns})",
                    run.timeout
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let restore_size = match ready.get("restoreSize") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => t.info.capacity.clone(),
    };
    let mut info = t.info.clone();
    if let Some(content) = ready
        .get("boundVolumeSnapshotContentName")
        .and_then(Value::as_str)
    {
        let contents: Api<DynamicObject> =
            Api::all_with(client.clone(), &cluster::volume_snapshot_content_resource());
        // The handle is informative; a user without rights on contents still gets a backup.
        if let Ok(c) = contents.get(content).await {
            info.snapshot_handle = c
                .data
                .pointer("/status/snapshotHandle")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    }

    // 2. The temporary PVC from the snapshot.
    record.at(Step::Volume).await;
    bar.set_message("creating the volume");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut pvc_spec = json!({
        "accessModes": if info.access_modes.is_empty() { json!(["ReadWriteOnce"]) } else { json!(info.access_modes) },
        "volumeMode": info.volume_mode,
        "resources": {"requests": {"storage": restore_size}},
        "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": tmp},
    });
    if let Some(sc) = &info.storage_class {
        pvc_spec["storageClassName"] = json!(sc);
    }
    let temp_pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": tmp, "namespace": ns, "labels": labels(run, t),
                     "ownerReferences": record.owner()},
        "spec": pvc_spec,
    }))?;
    pvcs.create(&PostParams::default(), &temp_pvc)
        .await
        .map_err(|e| explain(e, "create", "persistentvolumeclaims", Some(ns)))?;

    // 3. The mover pod.
    record.at(Step::Mover).await;
    bar.set_message("starting the mover");
    let description = serde_json::to_string(&info)?;
    let mut mover_args = vec![
        "mover".to_string(),
        "backup".into(),
        "--json".into(),
        "--source".into(),
        if t.is_block() {
            BLOCK_PATH.into()
        } else {
            MOUNT_PATH.into()
        },
        "--name".into(),
        format!("{}.img", info.pvc),
        "--host".into(),
        format!("{}/{}", info.namespace, info.pvc),
        "--tag".into(),
        format!("namespace={}", info.namespace),
        "--tag".into(),
        format!("pvc={}", info.pvc),
    ];
    for tag in &run.args_tags {
        mover_args.push("--tag".into());
        mover_args.push(tag.clone());
    }
    mover_args.push("--description".into());
    mover_args.push(description);
    mover_args.push("--retry-lock".into());
    mover_args.push(run.retry_lock.clone());
    let mut pod = mover_pod(run, t, &tmp, ns, mover_args);
    pod.metadata.owner_references = Some(serde_json::from_value(record.owner())?);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| explain(e, "create", "pods", Some(ns)))?;
    cluster::give_to_pod(client, ns, &tmp, &created).await?;
    let deadline = Instant::now() + run.timeout;
    wait_started(&pods, &tmp, &run.image, deadline, run.timeout).await?;

    // 4. Follow the log.
    record.at(Step::Copy).await;
    bar.set_message("copying");
    let (summary, last_error) = follow_log(&pods, &tmp, bar, run.show, run.stall).await?;
    let phase = wait_finished(&pods, &tmp).await?;
    let summary = match (summary, phase.as_str()) {
        (Some(s), "Succeeded") => s,
        (_, _) => {
            let why =
                last_error.unwrap_or_else(|| format!("the pod ended {phase} without a result"));
            bail!(
                "mover pod {ns}/{tmp}: {}",
                why.trim_start_matches("error: ")
            );
        }
    };
    let summary: MoverSummary = serde_json::from_str(&summary)
        .context("the mover's result line is not what this version expects")?;

    // 5. The record.
    record.at(Step::Record).await;
    record.completed(&info, &summary, started).await?;
    Ok((record.name.clone(), summary))
}

/// Waits until the mover container runs or ended; an image that cannot be pulled fails at once.
async fn wait_started(
    pods: &Api<Pod>,
    name: &str,
    image: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        let pod = pods
            .get(name)
            .await
            .map_err(|e| explain(e, "get", "pods", None))?;
        let status = pod.status.unwrap_or_default();
        for cs in status.container_statuses.unwrap_or_default() {
            if let Some(w) = cs.state.and_then(|s| s.waiting) {
                let reason = w.reason.unwrap_or_default();
                if matches!(
                    reason.as_str(),
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName"
                ) {
                    bail!(
                        "the cluster cannot pull the mover image {image} ({reason}): use --image to name one it can pull"
                    );
                }
                if reason == "CreateContainerConfigError" {
                    bail!(
                        "the mover pod cannot start: {}",
                        w.message.unwrap_or(reason)
                    );
                }
            }
        }
        if matches!(
            status.phase.as_deref(),
            Some("Running" | "Succeeded" | "Failed")
        ) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the mover pod {name} did not start within {timeout:?}: kubectl describe pod {name} shows why"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Follows the mover's log: returns its result line and its last other line (an error).
async fn follow_log(
    pods: &Api<Pod>,
    name: &str,
    bar: &ProgressBar,
    show: bool,
    stall: Duration,
) -> Result<(Option<String>, Option<String>)> {
    let lp = LogParams {
        follow: true,
        container: Some("mover".into()),
        ..Default::default()
    };
    let stream = pods
        .log_stream(name, &lp)
        .await
        .map_err(|e| explain(e, "get", "pods/log", None))?;
    let mut lines = stream.lines();
    let mut summary = None;
    let mut other = None;
    // Progress lines come every second whether bytes move or not: a stall is no new bytes
    // (and no wait for a lock reported) for `stall`, or no line at all.
    let mut last_done = None;
    let mut advanced = Instant::now();
    loop {
        let left = stall.saturating_sub(advanced.elapsed());
        let next = match tokio::time::timeout(left, lines.try_next()).await {
            Ok(next) => next.context("reading the mover's log")?,
            Err(_) => return Err(stalled(name, stall, last_done)),
        };
        let Some(line) = next else { break };
        match parse_mover_line(&line) {
            MoverLine::Progress { done, total } => {
                if last_done != Some(done) {
                    last_done = Some(done);
                    advanced = Instant::now();
                } else if advanced.elapsed() >= stall {
                    return Err(stalled(name, stall, last_done));
                }
                progress::show_bytes(bar, done, total);
            }
            MoverLine::Waiting(message) => {
                advanced = Instant::now();
                bar.set_message("waiting for the repository lock");
                if show {
                    bar.println(&message);
                }
                other = Some(message);
            }
            MoverLine::Summary(s) => summary = Some(s),
            MoverLine::Other(text) if !text.is_empty() => {
                if show {
                    bar.println(&text);
                }
                other = Some(text);
            }
            MoverLine::Other(_) => {}
        }
    }
    Ok((summary, other))
}

fn stalled(pod: &str, stall: Duration, done: Option<u64>) -> anyhow::Error {
    anyhow!(
        "the mover pod {pod} made no progress for {stall:?} (at {} bytes): is the volume or the repository stuck? Raise --stall-timeout if the storage is that slow",
        done.unwrap_or(0)
    )
}

/// Waits (briefly: the log already ended) for the pod's final phase.
async fn wait_finished(pods: &Api<Pod>, name: &str) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let pod = pods
            .get(name)
            .await
            .map_err(|e| explain(e, "get", "pods", None))?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" || Instant::now() > until {
            return Ok(phase);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the pods, PVCs and (unless kept) VolumeSnapshots matching a label selector in a
/// namespace and waits until they are gone. A kept snapshot loses the run label and its owner
/// first, so `cleanup` leaves it alone and the garbage collector does not take it. A claim or
/// snapshot owned by a mover pod ([`cluster::give_to_pod`]) goes with its pod, through the
/// garbage collector: only what a run left before its pod existed is deleted by name.
pub async fn cleanup_selector(
    client: &Client,
    ns: &str,
    selector: &str,
    keep_snapshot: bool,
) -> Result<usize> {
    let lp = ListParams::default().labels(selector);
    let dp = DeleteParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let snaps = cluster::snapshots(client, ns);
    let by_pod = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Pod" && o.api_version == "v1")
    };
    let mut removed = 0;
    match snaps.list(&lp).await {
        Ok(list) => {
            for s in list {
                let name = s.name_any();
                if keep_snapshot {
                    // Kept: out of this run, and no longer owned by its VolumeBackup or pod
                    // (deleting either would take the snapshot along).
                    let patch = json!({"metadata": {"labels": {BACKUP_LABEL: null}, "ownerReferences": null}});
                    snaps
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(|e| {
                            explain(
                                e,
                                "patch",
                                "volumesnapshots.snapshot.storage.k8s.io",
                                Some(ns),
                            )
                        })?;
                } else {
                    if !by_pod(&s.metadata) {
                        delete_ignoring_gone(snaps.delete(&name, &dp).await).map_err(|e| {
                            explain(
                                e,
                                "delete",
                                "volumesnapshots.snapshot.storage.k8s.io",
                                Some(ns),
                            )
                        })?;
                    }
                    removed += 1;
                }
            }
        }
        Err(e) if cluster::is_status(&e, 404) => {}
        Err(e) => {
            return Err(explain(
                e,
                "list",
                "volumesnapshots.snapshot.storage.k8s.io",
                Some(ns),
            ));
        }
    }
    for p in pods
        .list(&lp)
        .await
        .map_err(|e| explain(e, "list", "pods", Some(ns)))?
    {
        delete_ignoring_gone(pods.delete(&p.name_any(), &dp).await)
            .map_err(|e| explain(e, "delete", "pods", Some(ns)))?;
        removed += 1;
    }
    for p in pvcs
        .list(&lp)
        .await
        .map_err(|e| explain(e, "list", "persistentvolumeclaims", Some(ns)))?
    {
        if !by_pod(&p.metadata) {
            delete_ignoring_gone(pvcs.delete(&p.name_any(), &dp).await)
                .map_err(|e| explain(e, "delete", "persistentvolumeclaims", Some(ns)))?;
        }
        removed += 1;
    }
    // Pods take their grace period; the PVCs follow once no pod uses them.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let left = pods.list(&lp).await.map(|l| l.items.len()).unwrap_or(0)
            + pvcs.list(&lp).await.map(|l| l.items.len()).unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(removed)
}

fn delete_ignoring_gone<T>(
    r: std::result::Result<T, kube::Error>,
) -> std::result::Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if cluster::is_status(&e, 404) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mover_lines_are_told_apart() {
        assert_eq!(
            parse_mover_line(r#"{"type":"progress","bytes_done":5,"bytes_total":10}"#),
            MoverLine::Progress {
                done: 5,
                total: Some(10)
            }
        );
        let s = r#"{"type":"summary","snapshot_id":"ab","bytes_total":1,"bytes_new":1,"bytes_stored":1,"seconds":0.1}"#;
        assert_eq!(parse_mover_line(s), MoverLine::Summary(s.to_string()));
        assert_eq!(
            parse_mover_line("error: wrong password\n"),
            MoverLine::Other("error: wrong password".into())
        );
    }

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
