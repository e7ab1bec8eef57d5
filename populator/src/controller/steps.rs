//! Taking the step [`state::next_step`] chose: one function per step, each idempotent (a crash
//! or a conflict repeats it), each returning when to look at the claim again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::objects::{annotations_for, labels_for, populate_name, populate_pod, prime_claim};
use super::observe::{Seen, annotation};
use super::{
    AGAIN, Context, EVENT_CREATED, EVENT_DATA_SOURCE_NOT_FOUND, EVENT_FAILED, EVENT_FINISHED,
    EVENT_PRIME_CREATION_ERROR, EVENT_RETRYING, Error, PROGRESS_RENEW_SECONDS, REASON_BINDING,
    REASON_POD_REFUSED, REASON_RESTORED, REASON_RESTORING, REASON_RETRYING,
    REASON_WAITING_FOR_LOCK, RECHECK_BIND, RECHECK_FAILED, RECHECK_IDLE, RECHECK_NODE, RECHECK_POD,
};
use crate::api::Progress;
use crate::contract::{ClaimProgress, MoverLine, RepositorySettings};
use crate::events::Kind as EventType;
use crate::mover;
use crate::state::{self, PodFailure, PodState, Source, Step};

/// Takes one step for one claim.
pub(super) async fn act(ctx: &Context, seen: &Seen, step: Step) -> Result<Action, Error> {
    let pvc = &seen.pvc;
    tracing::debug!(pvc = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), ?step, "step");
    match step {
        // A given-up claim is looked at again now and then: a fixed Secret is noticed without
        // watching every Secret in the cluster.
        Step::Idle if seen.observed.claim.failed.is_some() => Ok(Action::requeue(RECHECK_FAILED)),
        Step::Idle => Ok(Action::requeue(RECHECK_IDLE)),
        Step::WaitForSource(what) => {
            ctx.event(pvc, EventType::Warning, EVENT_DATA_SOURCE_NOT_FOUND, what)
                .await;
            Ok(Action::requeue(RECHECK_FAILED))
        }
        Step::WaitForNode => Ok(Action::requeue(RECHECK_NODE)),
        Step::WaitForPod => wait_for_pod(ctx, seen).await,
        Step::WaitForRetry(at) => {
            let wait = (at - seen.observed.now).max(1) as u64;
            Ok(Action::requeue(Duration::from_secs(wait)))
        }
        Step::WaitForBind => Ok(Action::requeue(RECHECK_BIND)),
        Step::AddFinalizer => {
            set_finalizer(ctx, pvc, true).await?;
            Ok(Action::requeue(AGAIN))
        }
        Step::CreateSecret => create_secret(ctx, seen).await,
        Step::CreatePrime => create_prime(ctx, seen).await,
        Step::CreatePod => create_pod(ctx, seen).await,
        Step::RetryPod(f) => retry_pod(ctx, seen, &f).await,
        Step::Fail(f) => fail(ctx, seen, &f).await,
        Step::ClearFailure => clear_failure(ctx, seen).await,
        Step::Rebind { save_policy } => rebind(ctx, seen, save_policy).await,
        Step::RemoveTemporaries => remove_temporaries(ctx, seen).await,
        Step::RestorePolicy => restore_policy(ctx, seen).await,
        Step::Finish => finish(ctx, seen).await,
        Step::Release => {
            set_finalizer(ctx, pvc, false).await?;
            ctx.metrics.ended(&pvc.uid().unwrap_or_default());
            Ok(Action::requeue(RECHECK_IDLE))
        }
    }
}

/// `ns/name` of the user's claim, for messages.
fn claim_label(pvc: &PersistentVolumeClaim) -> String {
    format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any())
}

/// While the pod runs: its progress on the claim (for `restore --wait`) and in the
/// `Restored` condition.
async fn wait_for_pod(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let pvc = &seen.pvc;
    let uid = pvc.uid().unwrap_or_default();
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
        // Progress is bytes that moved, the first report, or a wait for a lock (not a stall:
        // renewed now and then while it lasts).
        let now = seen.observed.now;
        let waiting = matches!(report, PodReport::Waiting(_));
        let renew = annotation(&pvc.metadata, state::ANN_PROGRESS_AT)
            .and_then(|a| a.parse::<i64>().ok())
            .is_none_or(|t| now - t >= PROGRESS_RENEW_SECONDS);
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
            // A prune holds the repository: the mover waits (bounded by its --retry-lock)
            // instead of failing and spending an attempt; say so.
            PodReport::Waiting(message) => (REASON_WAITING_FOR_LOCK, message, None),
            PodReport::Bytes { done, total, .. } => (
                REASON_RESTORING,
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
            format!("restoring into {}: {message}", claim_label(pvc)),
            progress,
        )
        .await;
    }
    Ok(Action::requeue(RECHECK_POD))
}

/// The populate pod's Secret: only what a mover reads of the repository Secret.
async fn create_secret(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let pvc = &seen.pvc;
    let uid = pvc.uid().unwrap_or_default();
    let source = seen
        .secret
        .as_ref()
        .ok_or_else(|| Error::Invalid("the repository Secret vanished".into()))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(populate_name(&uid)),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(labels_for(&uid)),
            annotations: Some(annotations_for(
                &pvc.namespace().unwrap_or_default(),
                &pvc.name_any(),
            )),
            ..Default::default()
        },
        // Only what a mover reads: the populate pod never sees the rest.
        data: source.data.as_ref().map(mover::mover_settings),
        string_data: source.string_data.as_ref().map(mover::mover_settings),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::requeue(AGAIN))
}

/// PVC', which the pod fills.
async fn create_prime(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let pvc = &seen.pvc;
    let uid = pvc.uid().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let prime = prime_claim(pvc, &cfg.namespace, seen.observed.wait_for_first_consumer);
    match api.create(&PostParams::default(), &prime).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            ctx.event(
                pvc,
                EventType::Warning,
                EVENT_PRIME_CREATION_ERROR,
                format!("cannot create {}/{}: {e}", cfg.namespace, prime.name_any()),
            )
            .await;
            return Err(e.into());
        }
    }
    ctx.metrics.started(&uid);
    Ok(Action::requeue(AGAIN))
}

/// The populate pod; a pod admission refuses is reported and tried again later.
async fn create_pod(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let pvc = &seen.pvc;
    let uid = pvc.uid().unwrap_or_default();
    let backup = seen
        .backup
        .as_ref()
        .ok_or_else(|| Error::Invalid("the VolumeBackup vanished".into()))?;
    let location = seen.secret.as_ref().and_then(|s| {
        RepositorySettings::location_of(
            s.data.as_ref().unwrap_or(&Default::default()),
            s.string_data.as_ref().unwrap_or(&Default::default()),
        )
    });
    let pod = populate_pod(
        pvc,
        backup,
        cfg,
        location.as_deref(),
        seen.observed.wait_for_first_consumer,
    );
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &cfg.namespace);
    match api.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(AGAIN)),
        // Admission (Pod Security, a policy) refused the pod: say so where the user looks,
        // then try again later (the namespace's labels may change).
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let why = format!(
                "the populate pod {}/{} was refused: {} (the populate pods meet Pod Security \"{}\"; a repository that is a node directory needs \"privileged\": kubectl volbackup install --pod-security privileged)",
                cfg.namespace,
                populate_name(&uid),
                e.message,
                mover::MOVER_LEVEL,
            );
            ctx.event(pvc, EventType::Warning, EVENT_FAILED, why.clone())
                .await;
            ctx.set_condition(backup, "False", REASON_POD_REFUSED, why, None)
                .await;
            return Ok(Action::requeue(RECHECK_FAILED));
        }
        Err(e) => return Err(e.into()),
    }
    ctx.metrics.started(&uid);
    let attempt = seen.observed.claim.attempts + 1;
    ctx.event(
        pvc,
        EventType::Normal,
        EVENT_CREATED,
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
        REASON_RESTORING,
        format!("restoring into {}", claim_label(pvc)),
        Some(Progress {
            bytes_done: 0,
            bytes_total: backup.status.as_ref().and_then(|s| s.bytes_total),
        }),
    )
    .await;
    Ok(Action::requeue(AGAIN))
}

/// A failed attempt with attempts left: said so, counted, the pod removed, the next attempt
/// after a backoff.
async fn retry_pod(ctx: &Context, seen: &Seen, f: &PodFailure) -> Result<Action, Error> {
    let cfg = &ctx.config;
    let pvc = &seen.pvc;
    let attempts = seen.observed.claim.attempts + 1;
    let wait = state::backoff_seconds(cfg.retry_backoff.as_secs(), attempts);
    let why = format!(
        "attempt {attempts} of {} failed ({}): {}; retrying in {wait}s",
        cfg.max_attempts, f.reason, f.message
    );
    ctx.event(pvc, EventType::Warning, EVENT_FAILED, why.clone())
        .await;
    // Not False yet (the next attempt may work), but not silent either.
    if let Some(backup) = &seen.backup {
        ctx.set_condition(
            backup,
            "Unknown",
            REASON_RETRYING,
            format!("restoring into {}: {why}", claim_label(pvc)),
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
        &Api::<Pod>::namespaced(ctx.client.clone(), &cfg.namespace),
        &populate_name(&pvc.uid().unwrap_or_default()),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(wait)))
}

/// Gives the restore up: said on the claim and the VolumeBackup, and remembered with the
/// inputs it failed with (a change to them tries again).
async fn fail(ctx: &Context, seen: &Seen, f: &PodFailure) -> Result<Action, Error> {
    let pvc = &seen.pvc;
    let attempts = seen.observed.claim.attempts + 1;
    let why = if f.permanent {
        f.message.clone()
    } else {
        format!("{} (gave up after {attempts} attempts)", f.message)
    };
    ctx.event(
        pvc,
        EventType::Warning,
        EVENT_FAILED,
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
            format!("restoring into {} failed: {why}", claim_label(pvc)),
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
    ctx.metrics.ended(&pvc.uid().unwrap_or_default());
    Ok(Action::requeue(AGAIN))
}

/// The inputs of a given-up restore changed: everything it remembered goes.
async fn clear_failure(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    ctx.event(
        &seen.pvc,
        EventType::Normal,
        EVENT_RETRYING,
        "the repository Secret or the VolumeBackup changed: trying again".into(),
    )
    .await;
    patch_claim_annotations(
        ctx,
        &seen.pvc,
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
    Ok(Action::requeue(AGAIN))
}

/// Moves the filled PV to the user's claim (its policy kept from Delete meanwhile), then
/// records what the pod wrote while its log is still there.
async fn rebind(ctx: &Context, seen: &Seen, save_policy: Option<String>) -> Result<Action, Error> {
    let pvc = &seen.pvc;
    let ns = pvc.namespace().unwrap_or_default();
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
        "name": pvc.name_any(),
        "uid": pvc.uid().unwrap_or_default(),
        "resourceVersion": pvc.resource_version(),
    }});
    if let Some(policy) = save_policy {
        annotations[state::ANN_SAVED_POLICY] = json!(policy);
        spec["persistentVolumeReclaimPolicy"] = json!("Retain");
    }
    // One write, checked against the PV as read: its claimRef may be absent (a PV not made by
    // a provisioner), and the policy is never Delete while the claim moves.
    patch_pv(
        &ctx.client,
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
    // After the write, so the bind does not wait for it.
    record_written(ctx, seen).await;
    Ok(Action::requeue(AGAIN))
}

/// Counts what the finished pod wrote, on the claim and the VolumeBackup (best effort).
async fn record_written(ctx: &Context, seen: &Seen) {
    let pvc = &seen.pvc;
    let Some(pod) = &seen.pod else { return };
    let Some((written, total, true)) = ctx.pod_progress(&pod.name_any()).await else {
        return;
    };
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
        tracing::warn!("cannot record the progress of {}: {e}", claim_label(pvc));
    }
    if let Some(b) = &seen.backup {
        ctx.set_condition(
            b,
            "Unknown",
            REASON_BINDING,
            format!("restored into {}: binding the volume", claim_label(pvc)),
            Some(Progress {
                bytes_done: total.unwrap_or(written),
                bytes_total: total,
            }),
        )
        .await;
    }
}

/// The pod, PVC' and the pod's Secret go.
async fn remove_temporaries(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let c = &ctx.client;
    let own = &ctx.config.namespace;
    let uid = seen.pvc.uid().unwrap_or_default();
    let p = populate_name(&uid);
    delete_quietly(&Api::<Pod>::namespaced(c.clone(), own), &p).await?;
    if let Some(prime) = &seen.prime {
        delete_quietly(
            &Api::<PersistentVolumeClaim>::namespaced(c.clone(), own),
            &prime.name_any(),
        )
        .await?;
    }
    delete_quietly(&Api::<Secret>::namespaced(c.clone(), own), &p).await?;
    Ok(Action::requeue(AGAIN))
}

/// The PV gets back the reclaim policy it had before the rebind.
async fn restore_policy(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let pv = seen.pv()?;
    let saved = annotation(&pv.metadata, state::ANN_SAVED_POLICY)
        .unwrap_or("Delete")
        .to_string();
    patch_pv(
        &ctx.client,
        pv,
        json!({
            "metadata": {"annotations": {state::ANN_SAVED_POLICY: null}},
            "spec": {"persistentVolumeReclaimPolicy": saved},
        }),
    )
    .await?;
    Ok(Action::requeue(AGAIN))
}

/// The claim is bound: the success is counted and reported, then the finalizer goes.
async fn finish(ctx: &Context, seen: &Seen) -> Result<Action, Error> {
    let pvc = &seen.pvc;
    let uid = pvc.uid().unwrap_or_default();
    let seconds = pvc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| {
            (k8s_openapi::jiff::Timestamp::now().as_millisecond() - t.0.as_millisecond()) as f64
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
        EVENT_FINISHED,
        format!("populated from the backup in {seconds:.1}s; bound to {volume}"),
    )
    .await;
    if let Some(b) = &seen.backup {
        let total = b.status.as_ref().and_then(|s| s.bytes_total);
        ctx.set_condition(
            b,
            "True",
            REASON_RESTORED,
            format!("restored into {}", claim_label(pvc)),
            total.map(|t| Progress {
                bytes_done: t,
                bytes_total: Some(t),
            }),
        )
        .await;
    }
    // Last: once the finalizer is gone this claim needs nothing more, so everything that
    // reports the success comes before (a crash in between repeats this step).
    set_finalizer(ctx, pvc, false).await?;
    Ok(Action::requeue(RECHECK_IDLE))
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

pub(super) async fn delete_quietly<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
