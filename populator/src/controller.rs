//! The populator controller: for each PVC whose `dataSourceRef` names a `VolumeBackup`, read
//! every object involved, let [`state::next_step`] choose one step, take it, and come back.
//!
//! Objects it makes, all in the populator's namespace and named after the user PVC's uid:
//! the Secret `populate-<uid>` (the repository settings a mover reads, [`crate::mover::SECRET_KEYS`],
//! copied from the Secret the VolumeBackup names), PVC' `prime-<uid>` and the pod
//! `populate-<uid>`, which runs `kubectl-volbackup mover restore --json` onto PVC'. Each
//! carries the label [`state::LABEL_FOR_UID`] and the annotation [`state::ANN_FOR`], which is
//! how watch events on them lead back to the user's PVC and how orphans are found.
//!
//! Here: the wiring (what is watched, the reconcile loop, the retry policy) and the intervals
//! and reasons it uses. `observe` reads a claim's objects and turns them into
//! [`state::Observed`] (pure: [`observed_from`]); `steps` takes one step each; `objects` makes
//! PVC' and the pod; `reap` removes what a deleted claim left.

#[cfg(test)]
mod fixtures;
mod objects;
mod observe;
mod reap;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, LogParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

pub use objects::{populate_pod, prime_claim};
pub use observe::{Reads, observed_from, pod_failure, pv_is_ours, wants_us};
pub use reap::reap_orphans;
pub use steps::{PodReport, parse_pod_report};

use crate::api::{self, Progress, VolumeBackup};
use crate::events::{Events, Kind as EventType};
use crate::metrics::Metrics;
use crate::state::{self, Step};
use observe::annotation;

/// Where the target volume appears in the populate pod.
pub const BLOCK_TARGET: &str = "/dev/volbackup-target";
/// Where a Filesystem target is mounted in the populate pod.
pub const MOUNT_TARGET: &str = "/data";
/// The condition on the VolumeBackup that reports restores.
pub const CONDITION: &str = "Restored";
/// Name of this controller in events.
pub const COMPONENT: &str = "volbackup-populator";

/// Come back at once: the step changed something, and the next one may follow.
const AGAIN: Duration = Duration::from_millis(1);
/// A claim that waits for its source, was given up, or whose pod admission refused: a fixed
/// Secret, VolumeBackup or namespace is noticed this soon, without watching every Secret.
const RECHECK_FAILED: Duration = Duration::from_secs(10);
/// A claim with nothing to do (done, or not ours to touch).
const RECHECK_IDLE: Duration = Duration::from_secs(300);
/// A WaitForFirstConsumer claim without a selected node.
const RECHECK_NODE: Duration = Duration::from_secs(30);
/// A running populate pod: how often its progress is read.
const RECHECK_POD: Duration = Duration::from_secs(2);
/// A rebound volume, until the claim is bound.
const RECHECK_BIND: Duration = Duration::from_secs(1);
/// A step that lost a race with another writer (409 Conflict).
const RETRY_CONFLICT: Duration = Duration::from_millis(200);
/// A step that failed otherwise.
const RETRY_ERROR: Duration = Duration::from_secs(5);
/// How often orphaned objects are looked for.
const ORPHAN_SWEEP: Duration = Duration::from_secs(60);
/// A wait for a lock renews the claim's progress time this often (seconds), so that it is not
/// taken for a stall.
const PROGRESS_RENEW_SECONDS: i64 = 30;
/// The lines of a populate pod's log read for its progress.
const LOG_TAIL_LINES: i64 = 12;

/// Event (on the user's claim): the VolumeBackup or its Secret is missing.
pub const EVENT_DATA_SOURCE_NOT_FOUND: &str = "PopulatorDataSourceNotFound";
/// Event: PVC' could not be created.
pub const EVENT_PRIME_CREATION_ERROR: &str = "PopulatorPVCPrimeCreationError";
/// Event: a populate pod started.
pub const EVENT_CREATED: &str = "PopulatorCreated";
/// Event: an attempt failed, the pod was refused, or the restore was given up.
pub const EVENT_FAILED: &str = "PopulatorFailed";
/// Event: the inputs of a given-up restore changed, and it starts again.
pub const EVENT_RETRYING: &str = "PopulatorRetrying";
/// Event: the claim is bound to the restored volume.
pub const EVENT_FINISHED: &str = "PopulatorFinished";

/// [`CONDITION`] reason: the mover waits for another process's repository lock.
pub const REASON_WAITING_FOR_LOCK: &str = "WaitingForLock";
/// [`CONDITION`] reason: a populate pod restores.
pub const REASON_RESTORING: &str = "Restoring";
/// [`CONDITION`] reason: admission refused the populate pod.
pub const REASON_POD_REFUSED: &str = "PodRefused";
/// [`CONDITION`] reason: an attempt failed and another follows.
pub const REASON_RETRYING: &str = "Retrying";
/// [`CONDITION`] reason: the data is restored and the volume moves to the claim.
pub const REASON_BINDING: &str = "Binding";
/// [`CONDITION`] reason: the claim is bound to the restored volume.
pub const REASON_RESTORED: &str = "Restored";

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
    /// refused (see [`crate::mover::node_repository_allowed`]).
    pub node_repositories: Vec<String>,
    /// This replica's name (events, lease).
    pub identity: String,
    /// Fault injection for tests: exit (as a crash would) right after this many steps that
    /// changed something. Debug builds only.
    pub crash_after_steps: Option<u32>,
}

/// What every reconcile shares.
pub struct Context {
    client: Client,
    config: Config,
    events: Events,
    metrics: Arc<Metrics>,
    #[cfg_attr(
        not(debug_assertions),
        allow(dead_code, reason = "the fault injection is in debug builds only")
    )]
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

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
                    tail_lines: Some(LOG_TAIL_LINES),
                    ..LogParams::default()
                },
            )
            .await
            .ok()?;
        parse_pod_report(&log)
    }
}

async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pvc.namespace().unwrap_or_default();
    if ns == ctx.config.namespace || wants_us(&pvc).is_none() {
        return Ok(Action::await_change());
    }
    let Some(mut seen) = observe::observe(&ctx, &ns, &pvc.name_any()).await? else {
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
        let action = steps::act(&ctx, &seen, step.clone()).await?;
        if changes {
            crash_if_asked(&ctx, &step);
        }
        // A step whose whole effect is known goes straight on to the next one, without
        // reading everything again.
        if !state::take_effect(&mut seen.observed, &step) {
            return Ok(action);
        }
    }
}

/// The fault injection of the tests ([`Config::crash_after_steps`]): exits as a crash would
/// once that many steps changed something. Only in debug builds, which the end-to-end tests
/// run; a release build never stops on purpose.
#[cfg(debug_assertions)]
fn crash_if_asked(ctx: &Context, step: &Step) {
    if let Some(limit) = ctx.config.crash_after_steps {
        let n = ctx
            .steps_taken
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n >= limit {
            tracing::warn!(
                ?step,
                "crashing on purpose after {n} steps (fault injection)"
            );
            std::process::exit(3);
        }
    }
}

#[cfg(not(debug_assertions))]
fn crash_if_asked(_ctx: &Context, _step: &Step) {}

fn error_policy(pvc: Arc<PersistentVolumeClaim>, err: &Error, _ctx: Arc<Context>) -> Action {
    match err {
        Error::Kube(kube::Error::Api(e)) if e.code == 409 => Action::requeue(RETRY_CONFLICT),
        _ => {
            tracing::warn!(
                pvc = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()),
                "step failed, retrying in 5s: {err}"
            );
            Action::requeue(RETRY_ERROR)
        }
    }
}

/// Where a labelled object in our namespace leads: the user PVC it works for.
fn owner_of(meta: &kube::api::ObjectMeta) -> Option<ObjectRef<PersistentVolumeClaim>> {
    let (ns, name) = annotation(meta, state::ANN_FOR)?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
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
            tokio::time::sleep(ORPHAN_SWEEP).await;
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
