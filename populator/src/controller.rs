//! The populator controller: for each PVC whose `dataSourceRef` names a `VolumeBackup`, read
//! every object involved, let [`state::next_step`] choose one step, take it, and come back.
//!
//! Objects it makes, all in the populator's namespace and named after the user PVC's uid:
//! the Secret `populate-<uid>` (the repository settings a mover reads, [`mover::SECRET_KEYS`],
//! copied from the Secret the VolumeBackup names), PVC' `prime-<uid>` and the pod
//! `populate-<uid>`, which runs `kubectl-volbackup mover restore --json` onto PVC'. Each
//! carries the label [`state::LABEL_FOR_UID`] and the annotation [`state::ANN_FOR`], which is
//! how watch events on them lead back to the user's PVC and how orphans are found.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{self, Phase, Progress, VolumeBackup};
use crate::contract::{ClaimProgress, MoverArgs, MoverLine, RepositorySettings, RestoreArgs};
use crate::events::{Events, Kind as EventType};
use crate::metrics::Metrics;
use crate::mover;
use crate::quantity;
use crate::state::{self, Claim, Failure, Observed, PodFailure, PodState, Prime, Source, Step};

/// Where the target volume appears in the populate pod.
pub const BLOCK_TARGET: &str = "/dev/volbackup-target";
/// Where a Filesystem target is mounted in the populate pod.
pub const MOUNT_TARGET: &str = "/data";
/// The condition on the VolumeBackup that reports restores.
pub const CONDITION: &str = "Restored";
/// Name of this controller in events.
pub const COMPONENT: &str = "volbackup-populator";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The populator's namespace (PVC', pods, Secrets).
    pub namespace: String,
    /// Image of the populate pods.
    pub image: String,
    /// Copies before a restore is given up.
    pub max_attempts: u32,
    /// Wait before the first retry (doubles each time).
    pub retry_backoff: Duration,
    /// Environment every populate pod gets besides the repository settings: what the
    /// administrator set at install (a proxy), never anything from a repository Secret.
    pub pod_env: Vec<(String, String)>,
    /// A populate pod that does not start, or shows no progress, for this long is given up
    /// (the attempt counts as failed and is retried); zero for never.
    pub stall_timeout: Duration,
    /// The populate pod's `activeDeadlineSeconds`: the kubelet stops a copy running longer.
    pub pod_deadline: Duration,
    /// Node directories a repository may be (and below): a Secret naming any other path is
    /// refused (see [`mover::node_repository_allowed`]).
    pub node_repositories: Vec<String>,
    /// This replica's name (events, lease).
    pub identity: String,
    /// Fault injection for tests: exit (as a crash would) right after this many steps that
    /// changed something.
    pub crash_after_steps: Option<u32>,
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    config: Config,
    events: Events,
    metrics: Arc<Metrics>,
    steps_taken: std::sync::atomic::AtomicU32,
}

/// Errors of a reconcile: the step is retried after a pause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// An object we read is not what we expect.
    #[error("{0}")]
    Invalid(String),
}

fn prime_name(uid: &str) -> String {
    format!("prime-{uid}")
}

fn populate_name(uid: &str) -> String {
    format!("populate-{uid}")
}

/// Whether a PVC asks to be filled from a VolumeBackup.
pub fn wants_us(pvc: &PersistentVolumeClaim) -> Option<String> {
    let r = pvc.spec.as_ref()?.data_source_ref.as_ref()?;
    (r.api_group.as_deref() == Some(crate::api::GROUP)
        && r.kind == "VolumeBackup"
        && r.namespace
            .as_deref()
            .is_none_or(|n| Some(n) == pvc.namespace().as_deref()))
    .then(|| r.name.clone())
}

/// A repository location for a message: user information in a URL (`//user:secret@host`)
/// becomes `//***@host`.
fn redact_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains('/') => format!("{scheme}://***@{host}"),
            _ => location.to_string(),
        },
        None => location.to_string(),
    }
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reads the mover's error line (`{"type":"error",...}`) from a failed pod's termination
/// message (the mover writes the line to its termination-message file; without it the kubelet
/// copies the end of the log there, `FallbackToLogsOnError`).
pub fn pod_failure(message: &str, exit_code: Option<i32>) -> PodFailure {
    for line in message.lines().rev() {
        if let Some(MoverLine::Error(e)) = MoverLine::parse(line) {
            return PodFailure {
                reason: e.reason.to_string(),
                message: e.message,
                permanent: !e.retryable,
            };
        }
    }
    let last = message
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('{'))
        .map(|l| l.trim_start_matches("error: ").to_string());
    PodFailure {
        reason: "RestoreFailed".into(),
        message: last.unwrap_or_else(|| match exit_code {
            Some(c) => format!("the populate pod exited with code {c}"),
            None => "the populate pod failed".into(),
        }),
        permanent: false,
    }
}

fn pod_state(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Deleting;
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") if status.and_then(|s| s.reason.as_deref()) == Some("DeadlineExceeded") => {
            PodState::Failed(PodFailure {
                reason: "DeadlineExceeded".into(),
                message: format!(
                    "the populate pod ran longer than its deadline of {}s (install --restore-deadline) and was stopped",
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.active_deadline_seconds)
                        .unwrap_or(0)
                ),
                permanent: false,
            })
        }
        Some("Failed") => {
            let terminated = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref());
            let message = terminated
                .and_then(|t| t.message.clone())
                .or_else(|| status.and_then(|s| s.message.clone()))
                .unwrap_or_default();
            PodState::Failed(pod_failure(&message, terminated.map(|t| t.exit_code)))
        }
        Some("Running") => PodState::Running,
        _ => {
            // An image that cannot be pulled never heals by waiting.
            let waiting = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref());
            match waiting.and_then(|w| w.reason.as_deref()) {
                Some(r @ ("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")) => {
                    PodState::Failed(PodFailure {
                        reason: "ImagePullFailed".into(),
                        message: format!(
                            "{r}: {}",
                            waiting.and_then(|w| w.message.as_deref()).unwrap_or("")
                        ),
                        permanent: false,
                    })
                }
                _ => PodState::Waiting,
            }
        }
    }
}

/// Why a pod that has not started waits: the scheduler's message, else its container's
/// waiting reason.
fn pending_note(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone());
    unscheduled.or_else(|| {
        let w = status
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?;
        Some(match &w.message {
            Some(m) => format!("{}: {m}", w.reason.as_deref().unwrap_or("waiting")),
            None => w.reason.clone()?,
        })
    })
}

/// Everything read for one claim, with the objects the steps need.
struct Seen {
    pvc: PersistentVolumeClaim,
    backup: Option<VolumeBackup>,
    secret: Option<Secret>,
    prime: Option<PersistentVolumeClaim>,
    pv: Option<PersistentVolume>,
    pod: Option<Pod>,
    observed: Observed,
}

impl Seen {
    /// The PV, which the steps after the copy need.
    fn pv(&self) -> Result<&PersistentVolume, Error> {
        self.pv
            .as_ref()
            .ok_or_else(|| Error::Invalid("the PV vanished".into()))
    }
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Option<Seen>, Error> {
    let c = &ctx.client;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    let Some(pvc) = pvcs.get_opt(name).await? else {
        return Ok(None);
    };
    let Some(backup_name) = wants_us(&pvc) else {
        return Ok(None);
    };
    let uid = pvc.uid().unwrap_or_default();
    let own = &ctx.config.namespace;
    let spec = pvc.spec.clone().unwrap_or_default();
    let claim_pv = spec.volume_name.clone().filter(|v| !v.is_empty());
    // The reads do not depend on each other (but for the Secret on its VolumeBackup, and the
    // PV on PVC' when the claim names none): made at once, one reconcile costs about one round
    // trip to the API server instead of eight in a row.
    let source = async {
        let backup = Api::<VolumeBackup>::namespaced(c.clone(), ns)
            .get_opt(&backup_name)
            .await?;
        let secret = match &backup {
            Some(b) => {
                Api::<Secret>::namespaced(c.clone(), ns)
                    .get_opt(&b.spec.repository.secret_ref.name)
                    .await?
            }
            None => None,
        };
        Ok::<_, kube::Error>((backup, secret))
    };
    let wffc = async {
        Ok::<_, kube::Error>(match spec.storage_class_name.as_deref() {
            Some(sc) => Api::<StorageClass>::all(c.clone())
                .get_opt(sc)
                .await?
                .and_then(|s| s.volume_binding_mode)
                .is_some_and(|m| m == "WaitForFirstConsumer"),
            None => false,
        })
    };
    let own_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), own);
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let prime_and_pv = async {
        let prime = own_pvcs.get_opt(&prime_name(&uid)).await?;
        let pv_name = claim_pv.clone().or_else(|| {
            prime
                .as_ref()
                .and_then(|p| p.spec.as_ref()?.volume_name.clone())
                .filter(|v| !v.is_empty())
        });
        let pv = match &pv_name {
            Some(n) => pvs.get_opt(n).await?,
            None => None,
        };
        Ok::<_, kube::Error>((prime, pv))
    };
    let populate = populate_name(&uid);
    let own_pods: Api<Pod> = Api::namespaced(c.clone(), own);
    let own_secrets: Api<Secret> = Api::namespaced(c.clone(), own);
    let pod = own_pods.get_opt(&populate);
    let op_secret = own_secrets.get_opt(&populate);
    let ((backup, secret), wffc, (prime, pv), pod, op_secret) =
        futures::try_join!(source, wffc, prime_and_pv, pod, op_secret)?;

    let meta = &pvc.metadata;
    let failed = annotation(meta, state::ANN_FAILED).map(|r| Failure {
        reason: r.to_string(),
        inputs: annotation(meta, state::ANN_FAILED_INPUTS)
            .unwrap_or("")
            .to_string(),
    });
    let claim = Claim {
        deleting: meta.deletion_timestamp.is_some(),
        volume_name: spec.volume_name.clone().filter(|v| !v.is_empty()),
        finalizer: meta
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == state::FINALIZER)),
        selected_node: annotation(meta, state::SELECTED_NODE).map(str::to_string),
        request_bytes: spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity::parse_bytes(&q.0)),
        attempts: annotation(meta, state::ANN_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        retry_at: annotation(meta, state::ANN_RETRY_AT).and_then(|a| a.parse().ok()),
        failed,
    };
    let source = match (&backup, &secret) {
        (None, _) => Source::Missing(format!("VolumeBackup {ns}/{backup_name} not found")),
        (Some(b), None) => Source::Missing(format!(
            "Secret {ns}/{} named by VolumeBackup {backup_name} not found",
            b.spec.repository.secret_ref.name
        )),
        // A failed backup never becomes restorable: refused at once, not waited for.
        (Some(b), Some(_)) if b.phase() == Some(Phase::Failed) => Source::Ready {
            inputs: String::new(),
            block: false,
            image_bytes: None,
            refused: Some((
                "BackupFailed".to_string(),
                format!(
                    "VolumeBackup {ns}/{backup_name} failed ({}), so it holds nothing to restore: name a Completed VolumeBackup (kubectl volbackup list)",
                    b.condition(api::BACKED_UP)
                        .map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_else(|| "no reason recorded".into())
                ),
            )),
        },
        (Some(b), Some(_)) if b.phase() != Some(Phase::Completed) || b.spec.snapshot.is_none() => {
            Source::Missing(format!(
                "VolumeBackup {ns}/{backup_name} is not Completed yet"
            ))
        }
        (Some(b), Some(s)) => {
            let status = b.status.clone().unwrap_or_default();
            // The record names the repository it was written to: a Secret pointing elsewhere
            // (edited, or replaced by a backup to another repository) would make the restore
            // look for the snapshot in the wrong place and fail as if it were gone.
            let have = RepositorySettings::location_of(
                s.data.as_ref().unwrap_or(&Default::default()),
                s.string_data.as_ref().unwrap_or(&Default::default()),
            );
            let marked = s.labels().get(mover::REPOSITORY_LABEL).map(String::as_str)
                == Some("true")
                || s.labels().get(mover::LEGACY_MARK.0).map(String::as_str)
                    == Some(mover::LEGACY_MARK.1);
            let node_dir = have
                .as_deref()
                .and_then(mover::local_repository)
                .filter(|d| !mover::node_repository_allowed(d, &ctx.config.node_repositories));
            let refused = match (&b.spec.repository.location, &have) {
                // The populator may read every Secret: carrying one the plugin did not write
                // into a pod would let whoever may create a VolumeBackup, but not read Secrets,
                // use any Secret of their namespace.
                _ if !marked => Some((
                    "SecretNotMarked".to_string(),
                    format!(
                        "Secret {ns}/{} is not marked as a repository Secret (label {}=true, which create and restore set): label it if it holds repository settings, or name a repository Secret in the VolumeBackup",
                        b.spec.repository.secret_ref.name,
                        mover::REPOSITORY_LABEL
                    ),
                )),
                (Some(want), Some(have)) if want != have => Some((
                    "RepositoryMismatch".to_string(),
                    format!(
                        "Secret {ns}/{} points at {}, but VolumeBackup {backup_name} was written to {}: point the Secret back, or name the Secret of that repository in the VolumeBackup",
                        b.spec.repository.secret_ref.name,
                        redact_location(have),
                        redact_location(want)
                    ),
                )),
                // A pod that runs as root would mount this directory of the node.
                _ if node_dir.is_some() => Some((
                    "NodeRepositoryNotAllowed".to_string(),
                    format!(
                        "Secret {ns}/{} names the node directory {} as its repository, which the administrator has not allowed for restores{}: use an S3 repository, or ask them to run kubectl volbackup install --allow-node-repository DIR",
                        b.spec.repository.secret_ref.name,
                        node_dir.as_deref().unwrap_or_default(),
                        if ctx.config.node_repositories.is_empty() {
                            String::new()
                        } else {
                            format!(" (allowed: {})", ctx.config.node_repositories.join(", "))
                        }
                    ),
                )),
                _ => None,
            };
            let block = b.spec.path.is_some()
                || status
                    .volume
                    .as_ref()
                    .is_some_and(|v| v.volume_mode == "Block");
            Source::Ready {
                inputs: format!(
                    "{}/{}",
                    s.resource_version().unwrap_or_default(),
                    b.metadata.generation.unwrap_or(0)
                ),
                block,
                image_bytes: block.then_some(status.bytes_total).flatten(),
                refused,
            }
        }
    };
    // Only a PV this restore binds is ever patched: the prime claim's, or the user's once we
    // moved it there. A PV the user's claim merely names (`spec.volumeName`) is none of ours.
    let pv = pv.filter(|pv| pv_is_ours(pv, own, &uid));
    let volume = pv.as_ref().map(|pv| {
        let spec = pv.spec.clone().unwrap_or_default();
        state::Volume {
            claimed_by_user: spec
                .claim_ref
                .as_ref()
                .is_some_and(|r| r.uid.as_deref() == Some(uid.as_str())),
            reclaim_policy: spec
                .persistent_volume_reclaim_policy
                .unwrap_or_else(|| "Delete".into()),
            saved_policy: annotation(&pv.metadata, state::ANN_SAVED_POLICY).map(str::to_string),
        }
    });
    let observed = Observed {
        now: chrono::Utc::now().timestamp(),
        claim,
        source,
        wait_for_first_consumer: wffc,
        prime: prime.as_ref().map(|p| Prime {
            deleting: p.metadata.deletion_timestamp.is_some(),
            lost: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost"),
        }),
        volume,
        pod: pod.as_ref().map(pod_state),
        secret: op_secret.is_some(),
        max_attempts: ctx.config.max_attempts,
        pod_since: pod.as_ref().and_then(|p| {
            let created = p.metadata.creation_timestamp.as_ref()?.0.as_second();
            let progress = annotation(meta, state::ANN_PROGRESS_AT).and_then(|a| a.parse().ok());
            Some(progress.map_or(created, |t: i64| t.max(created)))
        }),
        pod_note: pod.as_ref().and_then(pending_note),
        stall_timeout: ctx.config.stall_timeout.as_secs() as i64,
    };
    Ok(Some(Seen {
        pvc,
        backup,
        secret,
        prime,
        pv,
        pod,
        observed,
    }))
}

/// Whether `pv` is the volume of the restore for the claim with this uid: claimed by its prime
/// claim (`own/prime-<uid>`), or by the claim itself after our rebind (which wrote
/// [`state::ANN_POPULATED_FROM`]). The populator patches no other PV.
pub fn pv_is_ours(pv: &PersistentVolume, own: &str, uid: &str) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let by_prime =
        r.namespace.as_deref() == Some(own) && r.name.as_deref() == Some(prime_name(uid).as_str());
    let by_claim = !uid.is_empty()
        && r.uid.as_deref() == Some(uid)
        && annotation(&pv.metadata, state::ANN_POPULATED_FROM).is_some();
    by_prime || by_claim
}

fn labels_for(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (state::LABEL_FOR_UID.to_string(), uid.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            COMPONENT.to_string(),
        ),
    ])
}

fn annotations_for(ns: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(state::ANN_FOR.to_string(), format!("{ns}/{name}"))])
}

/// PVC' for a user PVC: same access modes, size, class and mode, nothing else.
/// The selected node is copied only for a WaitForFirstConsumer class (`pin`, see
/// [`populate_pod`]).
pub fn prime_claim(
    pvc: &PersistentVolumeClaim,
    namespace: &str,
    pin: bool,
) -> PersistentVolumeClaim {
    let uid = pvc.uid().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let mut annotations = annotations_for(&pvc.namespace().unwrap_or_default(), &pvc.name_any());
    if pin && let Some(node) = annotation(&pvc.metadata, state::SELECTED_NODE) {
        annotations.insert(state::SELECTED_NODE.to_string(), node.to_string());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": prime_name(&uid),
            "namespace": namespace,
            "labels": labels_for(&uid),
            "annotations": annotations,
        },
        "spec": {
            "accessModes": spec.access_modes,
            "resources": spec.resources,
            "storageClassName": spec.storage_class_name,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
        },
    }))
    .expect("a PVC always deserializes")
}

/// The populate pod: `mover restore --json` onto PVC' (the shared mover template). It is pinned
/// to the node the scheduler chose only for a WaitForFirstConsumer class (`pin`): on any other
/// class the annotation is the user's to write, and must not let them bypass the scheduler and
/// its taints.
pub fn populate_pod(
    pvc: &PersistentVolumeClaim,
    backup: &VolumeBackup,
    config: &Config,
    repository: Option<&str>,
    pin: bool,
) -> Pod {
    let uid = pvc.uid().unwrap_or_default();
    let block = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    let args = MoverArgs::Restore(RestoreArgs {
        snapshot: backup.spec.snapshot.clone().unwrap_or_default(),
        target: if block { BLOCK_TARGET } else { MOUNT_TARGET }.into(),
        retry_lock: mover::LOCK_WAIT.into(),
        path: backup.spec.path.clone(),
        privileged_files: !block && backup.spec.privileged_files == Some(true),
    });
    let mut pod = mover::pod(&mover::MoverPod {
        name: populate_name(&uid),
        namespace: config.namespace.clone(),
        image: config.image.clone(),
        block,
        claim: prime_name(&uid),
        paths: mover::Paths {
            device: BLOCK_TARGET,
            mount: MOUNT_TARGET,
        },
        secret: populate_name(&uid),
        args,
        labels: labels_for(&uid),
        annotations: annotations_for(&pvc.namespace().unwrap_or_default(), &pvc.name_any()),
        node_name: annotation(&pvc.metadata, state::SELECTED_NODE)
            .filter(|_| pin)
            .map(str::to_string),
        repository_dir: repository.and_then(mover::local_repository),
        volume_bytes: pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| crate::quantity::parse_bytes(&q.0)),
    });
    if let Some(spec) = pod.spec.as_mut()
        && !config.pod_deadline.is_zero()
    {
        spec.active_deadline_seconds = Some(config.pod_deadline.as_secs() as i64);
    }
    if let Some(spec) = pod.spec.as_mut()
        && let Some(c) = spec.containers.first_mut()
    {
        c.env
            .get_or_insert_with(Vec::new)
            .extend(config.pod_env.iter().map(|(name, value)| {
                k8s_openapi::api::core::v1::EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                }
            }));
    }
    pod
}

impl Context {
    async fn event(
        &self,
        pvc: &PersistentVolumeClaim,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        if let Err(e) = self
            .events
            .publish(&pvc.object_ref(&()), type_, reason, "Populate", note)
            .await
        {
            tracing::warn!("cannot record event {reason}: {e}");
        }
    }

    /// Sets the `Restored` condition (and progress) on the VolumeBackup.
    async fn set_condition(
        &self,
        backup: &VolumeBackup,
        status: &str,
        reason: &str,
        message: String,
        progress: Option<Progress>,
    ) {
        let ns = backup.namespace().unwrap_or_default();
        let conditions = api::upsert_condition(
            Some(backup),
            CONDITION,
            status,
            reason,
            message,
            rfc3339_now(),
        );
        let mut patch = json!({"status": {"conditions": conditions}});
        if let Some(p) = progress {
            patch["status"]["progress"] = json!(p);
        }
        let api: Api<VolumeBackup> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(
                &backup.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            tracing::warn!("cannot update VolumeBackup {ns}/{}: {e}", backup.name_any());
        }
    }

    /// The last progress or summary line of a running or finished populate pod.
    async fn pod_progress(&self, pod: &str) -> Option<(u64, Option<u64>, bool)> {
        match self.pod_report(pod).await? {
            PodReport::Bytes {
                done,
                total,
                finished,
            } => Some((done, total, finished)),
            PodReport::Waiting(_) => Some((0, None, false)),
        }
    }

    /// What the last lines of a populate pod's log say.
    async fn pod_report(&self, pod: &str) -> Option<PodReport> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let log = pods
            .logs(
                pod,
                &LogParams {
                    tail_lines: Some(12),
                    ..LogParams::default()
                },
            )
            .await
            .ok()?;
        parse_pod_report(&log)
    }
}

/// What a populate pod reports: bytes, or a wait for another process's repository lock.
#[derive(Debug, Clone, PartialEq)]
pub enum PodReport {
    /// Bytes restored so far.
    Bytes {
        done: u64,
        total: Option<u64>,
        finished: bool,
    },
    /// The mover waits for a lock (a prune's) and has restored nothing yet.
    Waiting(String),
}

/// Reads the last lines of `mover restore --json` (pure; unit-tested): the newest summary or
/// progress with bytes; else a wait reported after the last progress line; else no bytes yet.
pub fn parse_pod_report(log: &str) -> Option<PodReport> {
    let mut none_yet = None;
    for line in log.lines().rev() {
        match MoverLine::parse(line) {
            Some(MoverLine::Progress(p)) => {
                let report = PodReport::Bytes {
                    done: p.bytes_done,
                    total: p.bytes_total,
                    finished: false,
                };
                if p.bytes_done > 0 {
                    return Some(report);
                }
                none_yet.get_or_insert(report);
            }
            Some(MoverLine::Summary(s)) => {
                return Some(PodReport::Bytes {
                    done: s.bytes_written.unwrap_or(s.bytes_total),
                    total: Some(s.bytes_total),
                    finished: true,
                });
            }
            Some(MoverLine::Waiting { message }) => return Some(PodReport::Waiting(message)),
            _ => {}
        }
    }
    none_yet
}

fn percent(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!("{}%", done.saturating_mul(100) / t),
        _ => format!("{done} bytes"),
    }
}

async fn patch_claim_annotations(
    ctx: &Context,
    pvc: &PersistentVolumeClaim,
    annotations: Value,
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    api.patch(
        &pvc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await?;
    Ok(())
}

async fn set_finalizer(ctx: &Context, pvc: &PersistentVolumeClaim, on: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = pvc.finalizers().to_vec();
    finalizers.retain(|f| f != state::FINALIZER);
    if on {
        finalizers.push(state::FINALIZER.to_string());
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &pvc.namespace().unwrap_or_default());
    // The resourceVersion makes this a compare-and-swap: a finalizer someone else added
    // meanwhile is not lost.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": pvc.resource_version(),
    }});
    match api
        .patch(
            &pvc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn patch_pv(client: &Client, pv: &PersistentVolume, body: Value) -> Result<(), Error> {
    Api::<PersistentVolume>::all(client.clone())
        .patch(&pv.name_any(), &PatchParams::default(), &Patch::Merge(body))
        .await?;
    Ok(())
}

async fn delete_quietly<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Takes one step for one claim.
async fn act(ctx: &Context, seen: &Seen, step: Step) -> Result<Action, Error> {
    let c = &ctx.client;
    let cfg = &ctx.config;
    let pvc = &seen.pvc;
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let uid = pvc.uid().unwrap_or_default();
    let now = Action::requeue(Duration::from_millis(1));
    tracing::debug!(pvc = %format!("{ns}/{name}"), ?step, "step");
    match step {
        // A given-up claim is looked at again now and then: a fixed Secret is noticed without
        // watching every Secret in the cluster.
        Step::Idle if seen.observed.claim.failed.is_some() => {
            Ok(Action::requeue(Duration::from_secs(10)))
        }
        Step::Idle => Ok(Action::requeue(Duration::from_secs(300))),
        Step::WaitForSource(what) => {
            ctx.event(pvc, EventType::Warning, "PopulatorDataSourceNotFound", what)
                .await;
            Ok(Action::requeue(Duration::from_secs(10)))
        }
        Step::WaitForNode => Ok(Action::requeue(Duration::from_secs(30))),
        Step::WaitForPod => {
            if seen.observed.pod == Some(PodState::Running)
                && let Some(backup) = &seen.backup
                && let Some(report) = ctx.pod_report(&populate_name(&uid)).await
            {
                // The claim's own progress, for `restore --wait` of this claim.
                let own = match &report {
                    PodReport::Waiting(message) => ClaimProgress::Waiting {
                        bytes_done: 0,
                        waiting: message.clone(),
                    },
                    PodReport::Bytes { done, total, .. } => ClaimProgress::Bytes {
                        bytes_done: *done,
                        bytes_total: *total,
                    },
                }
                .to_annotation();
                // Progress is bytes that moved, the first report, or a wait for a lock (not
                // a stall: renewed now and then while it lasts).
                let now = seen.observed.now;
                let waiting = matches!(report, PodReport::Waiting(_));
                let renew = annotation(&pvc.metadata, state::ANN_PROGRESS_AT)
                    .and_then(|a| a.parse::<i64>().ok())
                    .is_none_or(|t| now - t >= 30);
                if annotation(&pvc.metadata, state::ANN_PROGRESS) != Some(own.as_str())
                    || (waiting && renew)
                {
                    patch_claim_annotations(
                        ctx,
                        pvc,
                        json!({ state::ANN_PROGRESS: own, state::ANN_PROGRESS_AT: now.to_string() }),
                    )
                    .await?;
                }
                let (reason, message, progress) = match report {
                    // A prune holds the repository: the mover waits (bounded by its
                    // --retry-lock) instead of failing and spending an attempt; say so.
                    PodReport::Waiting(message) => ("WaitingForLock", message, None),
                    PodReport::Bytes { done, total, .. } => (
                        "Restoring",
                        percent(done, total),
                        Some(Progress {
                            bytes_done: done,
                            bytes_total: total,
                        }),
                    ),
                };
                ctx.set_condition(
                    backup,
                    "Unknown",
                    reason,
                    format!("restoring into {ns}/{name}: {message}"),
                    progress,
                )
                .await;
            }
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        Step::WaitForRetry(at) => {
            let wait = (at - seen.observed.now).max(1) as u64;
            Ok(Action::requeue(Duration::from_secs(wait)))
        }
        Step::WaitForBind => Ok(Action::requeue(Duration::from_secs(1))),
        Step::AddFinalizer => {
            set_finalizer(ctx, pvc, true).await?;
            Ok(now)
        }
        Step::CreateSecret => {
            let source = seen
                .secret
                .as_ref()
                .ok_or_else(|| Error::Invalid("the repository Secret vanished".into()))?;
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(populate_name(&uid)),
                    namespace: Some(cfg.namespace.clone()),
                    labels: Some(labels_for(&uid)),
                    annotations: Some(annotations_for(&ns, &name)),
                    ..Default::default()
                },
                // Only what a mover reads: the populate pod never sees the rest.
                data: source.data.as_ref().map(mover::mover_settings),
                string_data: source.string_data.as_ref().map(mover::mover_settings),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            let api: Api<Secret> = Api::namespaced(c.clone(), &cfg.namespace);
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(now)
        }
        Step::CreatePrime => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &cfg.namespace);
            match api
                .create(
                    &PostParams::default(),
                    &prime_claim(pvc, &cfg.namespace, seen.observed.wait_for_first_consumer),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    ctx.event(
                        pvc,
                        EventType::Warning,
                        "PopulatorPVCPrimeCreationError",
                        format!("cannot create {}/{}: {e}", cfg.namespace, prime_name(&uid)),
                    )
                    .await;
                    return Err(e.into());
                }
            }
            ctx.metrics.started(&uid);
            Ok(now)
        }
        Step::CreatePod => {
            let backup = seen
                .backup
                .as_ref()
                .ok_or_else(|| Error::Invalid("the VolumeBackup vanished".into()))?;
            let location = seen.secret.as_ref().and_then(|s| {
                RepositorySettings::location_of(
                    s.data.as_ref().unwrap_or(&BTreeMap::new()),
                    s.string_data.as_ref().unwrap_or(&BTreeMap::new()),
                )
            });
            let api: Api<Pod> = Api::namespaced(c.clone(), &cfg.namespace);
            match api
                .create(
                    &PostParams::default(),
                    &populate_pod(
                        pvc,
                        backup,
                        cfg,
                        location.as_deref(),
                        seen.observed.wait_for_first_consumer,
                    ),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(now),
                // Admission (Pod Security, a policy) refused the pod: say so where the user
                // looks, then try again later (the namespace's labels may change).
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    let why = format!(
                        "the populate pod {}/{} was refused: {} (the populate pods meet Pod Security \"{}\"; a repository that is a node directory needs \"privileged\": kubectl volbackup install --pod-security privileged)",
                        cfg.namespace,
                        populate_name(&uid),
                        e.message,
                        mover::MOVER_LEVEL,
                    );
                    ctx.event(pvc, EventType::Warning, "PopulatorFailed", why.clone())
                        .await;
                    ctx.set_condition(backup, "False", "PodRefused", why, None)
                        .await;
                    return Ok(Action::requeue(Duration::from_secs(10)));
                }
                Err(e) => return Err(e.into()),
            }
            ctx.metrics.started(&uid);
            let attempt = seen.observed.claim.attempts + 1;
            ctx.event(
                pvc,
                EventType::Normal,
                "PopulatorCreated",
                format!(
                    "populate pod {}/{} started (attempt {attempt} of {}): restoring snapshot {} of VolumeBackup {}",
                    cfg.namespace,
                    populate_name(&uid),
                    cfg.max_attempts,
                    backup.short_snapshot(),
                    backup.name_any()
                ),
            )
            .await;
            ctx.set_condition(
                backup,
                "Unknown",
                "Restoring",
                format!("restoring into {ns}/{name}"),
                Some(Progress {
                    bytes_done: 0,
                    bytes_total: backup.status.as_ref().and_then(|s| s.bytes_total),
                }),
            )
            .await;
            Ok(now)
        }
        Step::RetryPod(f) => {
            let attempts = seen.observed.claim.attempts + 1;
            let wait = state::backoff_seconds(cfg.retry_backoff.as_secs(), attempts);
            let why = format!(
                "attempt {attempts} of {} failed ({}): {}; retrying in {wait}s",
                cfg.max_attempts, f.reason, f.message
            );
            ctx.event(pvc, EventType::Warning, "PopulatorFailed", why.clone())
                .await;
            // Not False yet (the next attempt may work), but not silent either.
            if let Some(backup) = &seen.backup {
                ctx.set_condition(
                    backup,
                    "Unknown",
                    "Retrying",
                    format!("restoring into {ns}/{name}: {why}"),
                    None,
                )
                .await;
            }
            ctx.metrics.retries.fetch_add(1, Ordering::Relaxed);
            patch_claim_annotations(
                ctx,
                pvc,
                json!({
                    state::ANN_ATTEMPTS: attempts.to_string(),
                    state::ANN_RETRY_AT: (seen.observed.now + wait as i64).to_string(),
                }),
            )
            .await?;
            delete_quietly(
                &Api::<Pod>::namespaced(c.clone(), &cfg.namespace),
                &populate_name(&uid),
            )
            .await?;
            Ok(Action::requeue(Duration::from_secs(wait)))
        }
        Step::Fail(f) => {
            let attempts = seen.observed.claim.attempts + 1;
            let why = if f.permanent {
                f.message.clone()
            } else {
                format!("{} (gave up after {attempts} attempts)", f.message)
            };
            ctx.event(
                pvc,
                EventType::Warning,
                "PopulatorFailed",
                format!(
                    "{}: {why}; the PVC stays Pending (fix the cause, then change the Secret or the VolumeBackup, or delete and recreate the PVC)",
                    f.reason
                ),
            )
            .await;
            if let Some(b) = &seen.backup {
                ctx.set_condition(
                    b,
                    "False",
                    &f.reason,
                    format!("restoring into {ns}/{name} failed: {why}"),
                    None,
                )
                .await;
            }
            let inputs = match &seen.observed.source {
                Source::Ready { inputs, .. } => inputs.clone(),
                Source::Missing(_) => String::new(),
            };
            patch_claim_annotations(
                ctx,
                pvc,
                json!({
                    state::ANN_FAILED: format!("{}: {why}", f.reason),
                    state::ANN_FAILED_INPUTS: inputs,
                }),
            )
            .await?;
            ctx.metrics.failed.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.ended(&uid);
            Ok(now)
        }
        Step::ClearFailure => {
            ctx.event(
                pvc,
                EventType::Normal,
                "PopulatorRetrying",
                "the repository Secret or the VolumeBackup changed: trying again".into(),
            )
            .await;
            patch_claim_annotations(
                ctx,
                pvc,
                json!({
                    state::ANN_FAILED: null,
                    state::ANN_FAILED_INPUTS: null,
                    state::ANN_ATTEMPTS: null,
                    state::ANN_RETRY_AT: null,
                    state::ANN_PROGRESS: null,
                    state::ANN_PROGRESS_AT: null,
                }),
            )
            .await?;
            Ok(now)
        }
        Step::Rebind { save_policy } => {
            let pv = seen.pv()?;
            let from = seen
                .backup
                .as_ref()
                .map(|b| {
                    format!(
                        "{ns}/{} (snapshot {})",
                        b.name_any(),
                        b.spec.snapshot.as_deref().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let mut annotations = json!({state::ANN_POPULATED_FROM: from});
            let mut spec = json!({"claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": ns,
                "name": name,
                "uid": uid,
                "resourceVersion": pvc.resource_version(),
            }});
            if let Some(policy) = save_policy {
                annotations[state::ANN_SAVED_POLICY] = json!(policy);
                spec["persistentVolumeReclaimPolicy"] = json!("Retain");
            }
            // One write, checked against the PV as read: its claimRef may be absent (a PV not
            // made by a provisioner), and the policy is never Delete while the claim moves.
            patch_pv(
                c,
                pv,
                json!({
                    "metadata": {
                        "annotations": annotations,
                        "resourceVersion": pv.resource_version(),
                    },
                    "spec": spec,
                }),
            )
            .await?;
            // Count what the pod wrote while its log is still there; after the write, so the
            // bind does not wait for it.
            if let Some(pod) = &seen.pod
                && let Some((written, total, true)) = ctx.pod_progress(&pod.name_any()).await
            {
                ctx.metrics.bytes.fetch_add(written, Ordering::Relaxed);
                let own = ClaimProgress::Bytes {
                    bytes_done: total.unwrap_or(written),
                    bytes_total: total,
                };
                if let Err(e) = patch_claim_annotations(
                    ctx,
                    pvc,
                    json!({ state::ANN_PROGRESS: own.to_annotation() }),
                )
                .await
                {
                    tracing::warn!("cannot record the progress of {ns}/{name}: {e}");
                }
                if let Some(b) = &seen.backup {
                    ctx.set_condition(
                        b,
                        "Unknown",
                        "Binding",
                        format!("restored into {ns}/{name}: binding the volume"),
                        Some(Progress {
                            bytes_done: total.unwrap_or(written),
                            bytes_total: total,
                        }),
                    )
                    .await;
                }
            }
            Ok(now)
        }
        Step::RemoveTemporaries => {
            let own = &cfg.namespace;
            let p = populate_name(&uid);
            delete_quietly(&Api::<Pod>::namespaced(c.clone(), own), &p).await?;
            if seen.prime.is_some() {
                delete_quietly(
                    &Api::<PersistentVolumeClaim>::namespaced(c.clone(), own),
                    &prime_name(&uid),
                )
                .await?;
            }
            delete_quietly(&Api::<Secret>::namespaced(c.clone(), own), &p).await?;
            Ok(now)
        }
        Step::RestorePolicy => {
            let pv = seen.pv()?;
            let saved = annotation(&pv.metadata, state::ANN_SAVED_POLICY)
                .unwrap_or("Delete")
                .to_string();
            patch_pv(
                c,
                pv,
                json!({
                    "metadata": {"annotations": {state::ANN_SAVED_POLICY: null}},
                    "spec": {"persistentVolumeReclaimPolicy": saved},
                }),
            )
            .await?;
            Ok(now)
        }
        Step::Finish => {
            let seconds = pvc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| {
                    (k8s_openapi::jiff::Timestamp::now().as_millisecond() - t.0.as_millisecond())
                        as f64
                        / 1000.0
                })
                .unwrap_or(0.0);
            ctx.metrics.observe_duration(seconds);
            ctx.metrics.succeeded.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.ended(&uid);
            let volume = seen.observed.claim.volume_name.clone().unwrap_or_default();
            ctx.event(
                pvc,
                EventType::Normal,
                "PopulatorFinished",
                format!("populated from the backup in {seconds:.1}s; bound to {volume}"),
            )
            .await;
            if let Some(b) = &seen.backup {
                let total = b.status.as_ref().and_then(|s| s.bytes_total);
                ctx.set_condition(
                    b,
                    "True",
                    "Restored",
                    format!("restored into {ns}/{name}"),
                    total.map(|t| Progress {
                        bytes_done: t,
                        bytes_total: Some(t),
                    }),
                )
                .await;
            }
            // Last: once the finalizer is gone this claim needs nothing more, so everything
            // that reports the success comes before (a crash in between repeats this step).
            set_finalizer(ctx, pvc, false).await?;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Step::Release => {
            set_finalizer(ctx, pvc, false).await?;
            ctx.metrics.ended(&uid);
            Ok(Action::requeue(Duration::from_secs(300)))
        }
    }
}

async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pvc.namespace().unwrap_or_default();
    if ns == ctx.config.namespace || wants_us(&pvc).is_none() {
        return Ok(Action::await_change());
    }
    let Some(mut seen) = observe(&ctx, &ns, &pvc.name_any()).await? else {
        return Ok(Action::await_change());
    };
    loop {
        let step = state::next_step(&seen.observed);
        let changes = !matches!(
            step,
            Step::Idle
                | Step::WaitForSource(_)
                | Step::WaitForNode
                | Step::WaitForPod
                | Step::WaitForRetry(_)
                | Step::WaitForBind
        );
        let action = act(&ctx, &seen, step.clone()).await?;
        if changes && let Some(limit) = ctx.config.crash_after_steps {
            let n = ctx.steps_taken.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= limit {
                tracing::warn!(
                    ?step,
                    "crashing on purpose after {n} steps (fault injection)"
                );
                std::process::exit(3);
            }
        }
        // A step whose whole effect is known goes straight on to the next one, without
        // reading everything again.
        if !state::take_effect(&mut seen.observed, &step) {
            return Ok(action);
        }
    }
}

fn error_policy(pvc: Arc<PersistentVolumeClaim>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::Kube(kube::Error::Api(e)) if e.code == 409 => {
            Action::requeue(Duration::from_millis(200))
        }
        _ => {
            tracing::warn!(
                pvc = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()),
                "step failed, retrying in 5s: {err}"
            );
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Where a labelled object in our namespace leads: the user PVC it works for.
fn owner_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<PersistentVolumeClaim>> {
    let (ns, name) = annotation(meta, state::ANN_FOR)?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// Deletes prime PVCs, pods and Secrets whose user PVC is gone (or is another PVC by now).
pub async fn reap_orphans(client: &Client, namespace: &str) -> Result<usize, Error> {
    let lp = ListParams::default().labels(state::LABEL_FOR_UID);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut candidates: Vec<(&'static str, kube::api::ObjectMeta)> = Vec::new();
    candidates.extend(
        pvcs.list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("pvc", o.metadata)),
    );
    candidates.extend(
        pods.list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("pod", o.metadata)),
    );
    candidates.extend(
        secrets
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("secret", o.metadata)),
    );
    let mut reaped = 0;
    for (kind, meta) in candidates {
        let uid = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(state::LABEL_FOR_UID))
            .cloned()
            .unwrap_or_default();
        let alive = match owner_of(&meta) {
            Some(r) => {
                let api: Api<PersistentVolumeClaim> =
                    Api::namespaced(client.clone(), r.namespace.as_deref().unwrap_or_default());
                api.get_opt(&r.name)
                    .await?
                    .is_some_and(|p| p.uid().as_deref() == Some(uid.as_str()))
            }
            None => false,
        };
        if alive {
            continue;
        }
        let name = meta.name.clone().unwrap_or_default();
        tracing::info!("removing orphaned {kind} {namespace}/{name}");
        match kind {
            "pvc" => delete_quietly(&pvcs, &name).await?,
            "pod" => delete_quietly(&pods, &name).await?,
            _ => delete_quietly(&secrets, &name).await?,
        }
        reaped += 1;
    }
    Ok(reaped)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let events = Events::new(client.clone(), COMPONENT, &config.identity);
    let own = config.namespace.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        events,
        metrics,
        steps_taken: Default::default(),
    });

    let reaper_client = client.clone();
    let reaper_ns = own.clone();
    let reaper = tokio::spawn(async move {
        loop {
            match reap_orphans(&reaper_client, &reaper_ns).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} orphaned objects"),
                Err(e) => tracing::warn!("cannot look for orphans: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });

    let labelled = watcher::Config::default().labels(state::LABEL_FOR_UID);
    let controller = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    );
    let claims = controller.store();
    controller
        .watches(
            Api::<Pod>::namespaced(client.clone(), &own),
            labelled.clone(),
            |pod: Pod| owner_of(&pod.metadata),
        )
        .watches(
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), &own),
            labelled,
            |pvc: PersistentVolumeClaim| owner_of(&pvc.metadata),
        )
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            |pv: PersistentVolume| {
                let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
                Some(ObjectRef::new(r.name.as_deref()?).within(r.namespace.as_deref()?))
            },
        )
        .watches(
            Api::<VolumeBackup>::all(client.clone()),
            watcher::Config::default(),
            move |b: VolumeBackup| {
                let ns = b.namespace();
                let name = b.name_any();
                claims
                    .state()
                    .into_iter()
                    .filter(|p| {
                        p.namespace() == ns && wants_us(p).as_deref() == Some(name.as_str())
                    })
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
    reaper.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(mode: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "app", "uid": "u-1",
                         "annotations": {state::SELECTED_NODE: "node-2"}},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "2Gi"}},
                "storageClassName": "fast",
                "volumeMode": mode,
                "dataSourceRef": {"apiGroup": "volbackup.io", "kind": "VolumeBackup", "name": "b1"},
            },
        }))
        .unwrap()
    }

    fn backup(path: Option<&str>) -> VolumeBackup {
        serde_json::from_value(json!({
            "apiVersion": "volbackup.io/v1alpha1", "kind": "VolumeBackup",
            "metadata": {"name": "b1", "namespace": "app"},
            "spec": {"repository": {"secretRef": {"name": "repo"}}, "snapshot": "ab".repeat(32), "path": path},
        }))
        .unwrap()
    }

    fn config() -> Config {
        Config {
            namespace: "volbackup-system".into(),
            image: "img:1".into(),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(5),
            pod_env: vec![("HTTPS_PROXY".into(), "http://proxy.example:3128".into())],
            node_repositories: Vec::new(),
            stall_timeout: Duration::from_secs(600),
            pod_deadline: Duration::from_secs(86400),
            identity: "p-0".into(),
            crash_after_steps: None,
        }
    }

    #[test]
    fn only_claims_naming_a_volume_backup_are_ours() {
        assert_eq!(wants_us(&claim("Block")).as_deref(), Some("b1"));
        let mut other = claim("Block");
        other
            .spec
            .as_mut()
            .unwrap()
            .data_source_ref
            .as_mut()
            .unwrap()
            .kind = "VolumeSnapshot".into();
        assert_eq!(wants_us(&other), None);
        let mut elsewhere = claim("Block");
        elsewhere
            .spec
            .as_mut()
            .unwrap()
            .data_source_ref
            .as_mut()
            .unwrap()
            .namespace = Some("other".into());
        assert_eq!(
            wants_us(&elsewhere),
            None,
            "cross-namespace references are not ours"
        );
    }

    #[test]
    fn the_prime_claim_copies_modes_size_class_and_node_and_nothing_else() {
        let p =
            serde_json::to_value(prime_claim(&claim("Block"), "volbackup-system", true)).unwrap();
        assert_eq!(p["metadata"]["name"], "prime-u-1");
        assert_eq!(p["metadata"]["namespace"], "volbackup-system");
        assert_eq!(p["metadata"]["annotations"][state::ANN_FOR], "app/data");
        assert_eq!(p["metadata"]["annotations"][state::SELECTED_NODE], "node-2");
        assert_eq!(p["metadata"]["labels"][state::LABEL_FOR_UID], "u-1");
        assert_eq!(p["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(p["spec"]["resources"]["requests"]["storage"], "2Gi");
        assert_eq!(p["spec"]["storageClassName"], "fast");
        assert_eq!(p["spec"]["volumeMode"], "Block");
        assert!(p["spec"].get("dataSourceRef").is_none());
        // Not for a class that binds at once: the annotation is then only the user's word.
        let p =
            serde_json::to_value(prime_claim(&claim("Block"), "volbackup-system", false)).unwrap();
        assert!(
            p["metadata"]["annotations"]
                .get(state::SELECTED_NODE)
                .is_none()
        );
    }

    #[test]
    fn the_populate_pod_restores_onto_the_device_or_the_mount_on_the_chosen_node() {
        let pod = serde_json::to_value(populate_pod(
            &claim("Block"),
            &backup(Some("/data.img")),
            &config(),
            None,
            true,
        ))
        .unwrap();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(pod["metadata"]["name"], "populate-u-1");
        // Pinned through the scheduler (taints and admission stay in force), not nodeName.
        assert!(pod["spec"].get("nodeName").is_none(), "{}", pod["spec"]);
        assert_eq!(
            pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"],
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}])
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["activeDeadlineSeconds"], 86400);
        // The limit grows with the claim: 1 GiB, and 256 MiB for its (first and only) TiB.
        assert_eq!(c["resources"]["limits"]["memory"], "1280Mi");
        assert_eq!(c["image"], "img:1");
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "populate-u-1"
        );
        // The administrator's proxy, as a plain value after the Secret's keys.
        let env = c["env"].as_array().unwrap();
        assert_eq!(
            env.last().unwrap(),
            &json!({"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"})
        );
        assert_eq!(env.len(), mover::SECRET_KEYS.len() + 1);
        assert_eq!(c["volumeDevices"][0]["devicePath"], BLOCK_TARGET);
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..3], ["mover", "restore", "--json"]);
        assert!(args.windows(2).any(|w| w == ["--target", BLOCK_TARGET]));
        assert!(args.windows(2).any(|w| w == ["--path", "/data.img"]));
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "prime-u-1"
        );

        let pod = serde_json::to_value(populate_pod(
            &claim("Filesystem"),
            &backup(None),
            &config(),
            Some("s3:https://h/b"),
            false,
        ))
        .unwrap();
        // The claim names node-2, but its class binds at once: the scheduler places the pod.
        assert!(pod["spec"].get("nodeName").is_none(), "{}", pod["spec"]);
        assert!(pod["spec"].get("affinity").is_none(), "{}", pod["spec"]);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["mountPath"], MOUNT_TARGET);
        assert!(c.get("volumeDevices").is_none());
        assert!(!c["args"].as_array().unwrap().contains(&json!("--path")));
    }

    #[test]
    fn a_pod_stopped_at_its_deadline_is_a_failed_attempt_that_says_so() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "populate-u-1"},
            "spec": {"activeDeadlineSeconds": 86400, "containers": []},
            "status": {"phase": "Failed", "reason": "DeadlineExceeded",
                       "message": "Pod was active on the node longer than the specified deadline"},
        }))
        .unwrap();
        match pod_state(&pod) {
            PodState::Failed(f) => {
                assert_eq!(f.reason, "DeadlineExceeded");
                assert!(f.message.contains("86400s"), "{}", f.message);
                assert!(!f.permanent);
            }
            s => panic!("{s:?}"),
        }
        let unscheduled: Pod = serde_json::from_value(json!({
            "metadata": {"name": "populate-u-1"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "message": "0/1 nodes are available: 1 node(s) had untolerated taint {a: b}"}]},
        }))
        .unwrap();
        assert_eq!(pod_state(&unscheduled), PodState::Waiting);
        assert!(
            pending_note(&unscheduled)
                .unwrap()
                .contains("untolerated taint")
        );
    }

    #[test]
    fn only_the_volume_of_this_restore_is_ours_to_patch() {
        let pv = |claim: Value, annotations: Value| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "pv-1", "annotations": annotations},
                "spec": {"claimRef": claim},
            }))
            .unwrap()
        };
        let prime = json!({"namespace": "volbackup-system", "name": "prime-u-1", "uid": "p-9"});
        let user = json!({"namespace": "app", "name": "data", "uid": "u-1"});
        let ours = json!({state::ANN_POPULATED_FROM: "app/b1"});
        assert!(pv_is_ours(
            &pv(prime.clone(), json!({})),
            "volbackup-system",
            "u-1"
        ));
        assert!(pv_is_ours(
            &pv(user.clone(), ours.clone()),
            "volbackup-system",
            "u-1"
        ));
        // A PV the user's claim names but that we never populated: someone else's data.
        assert!(!pv_is_ours(&pv(user, json!({})), "volbackup-system", "u-1"));
        assert!(!pv_is_ours(
            &pv(prime, json!({})),
            "volbackup-system",
            "u-2"
        ));
        let other = json!({"namespace": "db", "name": "main", "uid": "x-1"});
        assert!(!pv_is_ours(&pv(other, ours), "volbackup-system", "u-1"));
        assert!(!pv_is_ours(
            &pv(Value::Null, json!({})),
            "volbackup-system",
            "u-1"
        ));
    }

    #[test]
    fn locations_in_messages_never_carry_credentials() {
        assert_eq!(
            redact_location("s3:https://ak:sk@s3.example.com/b/p"),
            "s3:https://***@s3.example.com/b/p"
        );
        assert_eq!(
            redact_location("s3:https://s3.example.com/b/p@x"),
            "s3:https://s3.example.com/b/p@x"
        );
        assert_eq!(redact_location("/srv/repo"), "/srv/repo");
    }

    #[test]
    fn a_wait_for_a_lock_is_reported_until_bytes_move() {
        let wait = r#"{"type":"waiting","message":"waiting up to 1800s for the lock: locked exclusively"}"#;
        let zero = r#"{"type":"progress","bytes_done":0,"bytes_total":null}"#;
        let some = r#"{"type":"progress","bytes_done":4096,"bytes_total":8192}"#;
        let waiting =
            PodReport::Waiting("waiting up to 1800s for the lock: locked exclusively".to_string());
        assert_eq!(
            parse_pod_report(&format!("{zero}\n{wait}\n{zero}\n{zero}")),
            Some(waiting)
        );
        assert_eq!(
            parse_pod_report(&format!("{wait}\n{zero}\n{some}\nwarning: x")),
            Some(PodReport::Bytes {
                done: 4096,
                total: Some(8192),
                finished: false
            })
        );
        assert_eq!(
            parse_pod_report(zero),
            Some(PodReport::Bytes {
                done: 0,
                total: None,
                finished: false
            })
        );
        assert_eq!(parse_pod_report("error: nothing useful"), None);
    }

    #[test]
    fn the_movers_error_line_says_what_failed_and_whether_to_retry() {
        let msg = "{\"type\":\"progress\",\"bytes_done\":1}\n{\"type\":\"error\",\"reason\":\"WrongPassword\",\"retryable\":false,\"message\":\"wrong password\"}\nerror: wrong password\n";
        let f = pod_failure(msg, Some(1));
        assert_eq!(f.reason, "WrongPassword");
        assert_eq!(f.message, "wrong password");
        assert!(f.permanent);
        let f = pod_failure("something broke\nerror: disk on fire\n", Some(1));
        assert_eq!(f.reason, "RestoreFailed");
        assert_eq!(f.message, "disk on fire");
        assert!(!f.permanent);
        let f = pod_failure("", Some(137));
        assert!(f.message.contains("137"), "{}", f.message);
    }
}
