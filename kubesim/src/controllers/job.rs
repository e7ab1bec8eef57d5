//! The Job controller (kubernetes/kubernetes `pkg/controller/job`; docs: "Jobs") and the
//! TTL-after-finished controller (`pkg/controller/ttlafterfinished`).
//!
//! What it keeps, for NonIndexed Jobs:
//! - `spec.parallelism` pods running until `spec.completions` pods have succeeded; a pod that
//!   fails is replaced after the back-off the real controller uses (10 s, doubled per failure,
//!   at most 6 min);
//! - failures counted as the real controller counts them: failed pods, plus container restarts
//!   under `restartPolicy: OnFailure`; more than `spec.backoffLimit` fails the Job
//!   (`BackoffLimitExceeded`);
//! - `spec.activeDeadlineSeconds`, counted from `status.startTime`, fails the Job
//!   (`DeadlineExceeded`) and kills its pods;
//! - `spec.suspend`: pods deleted, `Suspended` condition, `startTime` cleared; on resume it
//!   starts again with a fresh `startTime`;
//! - the terminal conditions as Kubernetes 1.31 and later write them: first the interim
//!   `SuccessCriteriaMet` / `FailureTarget`, then, once no pod of the Job runs any more,
//!   `Complete` / `Failed` (with `completionTime` for success);
//! - `ttlSecondsAfterFinished`: a finished Job is deleted (its pods are garbage-collected) once
//!   that many seconds passed since it finished.
//!
//! Simplified: no Indexed completion mode, no pod failure or success policy, no finalizer on
//! the pods (`batch.kubernetes.io/job-tracking`): the controller remembers the pods it counted
//! in memory, which lives as long as the simulated cluster.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, ResourceKey};
use super::events::{self, EventType};
use super::{Controller, name, namespace, now, patch, s, terminating, uid};

const COMPONENT: &str = "job-controller";

/// batch/v1 jobs
pub fn jobs() -> ResourceKey {
    ResourceKey::new("batch", "jobs")
}

fn pods() -> ResourceKey {
    ResourceKey::core("pods")
}

/// The first back-off after a failed pod, doubled for each further failure.
const BACKOFF_BASE_SECS: i64 = 10;
/// The longest back-off.
const BACKOFF_MAX_SECS: i64 = 360;

/// What the controller remembers of one Job between passes.
#[derive(Default)]
struct Tracked {
    succeeded: BTreeSet<String>,
    failed: BTreeSet<String>,
    /// When the last counted failure happened (for the back-off).
    last_failure: Option<DateTime<Utc>>,
}

/// The Job controller.
#[derive(Default)]
pub struct JobController {
    tracked: BTreeMap<String, Tracked>,
}

impl Controller for JobController {
    fn reconcile(&mut self, store: &dyn ObjectStore, _ctx: &ControllerContext) {
        let jobs = store.list(&jobs(), None);
        let live: BTreeSet<String> = jobs.iter().map(|j| uid(j).to_string()).collect();
        self.tracked.retain(|k, _| live.contains(k));
        if jobs.is_empty() {
            return;
        }
        let pods = store.list(&pods(), None);
        for job in &jobs {
            if terminating(job) {
                continue;
            }
            let owned: Vec<&Value> = pods.iter().filter(|p| owned_by(p, job)).collect();
            let tracked = self.tracked.entry(uid(job).to_string()).or_default();
            sync(store, job, &owned, tracked);
        }
    }
}

/// Whether the pod's controller is this object.
pub(crate) fn owned_by(p: &Value, owner: &Value) -> bool {
    namespace(p) == namespace(owner)
        && p.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter().any(|r| {
                    s(r, "/uid") == Some(uid(owner)) && r["controller"].as_bool() == Some(true)
                })
            })
}

/// A condition of the object's `status.conditions` with status `True`.
pub(crate) fn has_condition(v: &Value, kind: &str) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == Some(kind) && s(c, "/status") == Some("True"))
        })
}

/// Whether a Job has finished: `Complete` or `Failed` is true.
pub fn finished(job: &Value) -> Option<&'static str> {
    if has_condition(job, "Complete") {
        Some("Complete")
    } else if has_condition(job, "Failed") {
        Some("Failed")
    } else {
        None
    }
}

fn phase(p: &Value) -> &str {
    s(p, "/status/phase").unwrap_or("Pending")
}

fn parse_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn int(job: &Value, ptr: &str, default: i64) -> i64 {
    job.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let t = now();
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastProbeTime": t, "lastTransitionTime": t})
}

/// `conditions` with `c` put in place of one of the same type.
fn with_condition(job: &Value, c: Value) -> Value {
    let mut all: Vec<Value> = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    all.retain(|x| x["type"] != c["type"]);
    all.push(c);
    Value::Array(all)
}

fn without_condition(job: &Value, kind: &str) -> Value {
    let mut all: Vec<Value> = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    all.retain(|x| x["type"] != kind);
    Value::Array(all)
}

fn set_status(store: &dyn ObjectStore, job: &Value, status: Value) {
    let cur = job.get("status").cloned().unwrap_or(json!({}));
    let changed = status
        .as_object()
        .expect("status is an object")
        .iter()
        .any(|(k, v)| cur.get(k) != Some(v));
    if changed {
        patch(
            store,
            &jobs(),
            Some(namespace(job)),
            name(job),
            json!({ "status": status }),
        );
    }
}

fn sync(store: &dyn ObjectStore, job: &Value, owned: &[&Value], tracked: &mut Tracked) {
    if let Some(done) = finished(job) {
        expire(store, job, done);
        return;
    }
    let on_failure = s(job, "/spec/template/spec/restartPolicy") == Some("OnFailure");
    for p in owned {
        match phase(p) {
            "Succeeded" => {
                tracked.succeeded.insert(uid(p).to_string());
            }
            "Failed" if tracked.failed.insert(uid(p).to_string()) => {
                tracked.last_failure = Some(Utc::now());
            }
            _ => {}
        }
    }
    let active: Vec<&&Value> = owned
        .iter()
        .filter(|p| !terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let restarts: i64 = if on_failure {
        active
            .iter()
            .filter_map(|p| {
                p.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
            })
            .flatten()
            .filter_map(|c| c["restartCount"].as_i64())
            .sum()
    } else {
        0
    };
    let succeeded = tracked.succeeded.len() as i64;
    let failed = tracked.failed.len() as i64 + restarts;
    let ready = active.iter().filter(|p| has_condition(p, "Ready")).count() as i64;
    let mut status = json!({
        "active": active.len(),
        "ready": ready,
        "succeeded": succeeded,
        "failed": failed,
        "terminating": owned.iter().filter(|p| terminating(p)).count(),
    });

    // An interim condition already set: the Job ends once its pods are gone.
    if has_condition(job, "SuccessCriteriaMet") || has_condition(job, "FailureTarget") {
        finish(store, job, &active, status);
        return;
    }
    let completions = int(job, "/spec/completions", 1);
    let parallelism = int(job, "/spec/parallelism", 1);
    let backoff_limit = int(job, "/spec/backoffLimit", 6);

    if job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        for p in &active {
            delete_pod(store, job, p);
        }
        if !has_condition(job, "Suspended") {
            events::record(
                store,
                job,
                EventType::Normal,
                "Suspended",
                "Job suspended",
                COMPONENT,
            );
        }
        status["conditions"] =
            with_condition(job, condition("Suspended", "JobSuspended", "Job suspended"));
        status["startTime"] = Value::Null;
        status["active"] = json!(0);
        set_status(store, job, status);
        return;
    }
    if has_condition(job, "Suspended") {
        events::record(
            store,
            job,
            EventType::Normal,
            "Resumed",
            "Job resumed",
            COMPONENT,
        );
        status["conditions"] = without_condition(job, "Suspended");
    }
    let started = parse_time(s(job, "/status/startTime"));
    if started.is_none() {
        status["startTime"] = json!(now());
    }

    let (target, reason, message) = if succeeded >= completions {
        (
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )
    } else if failed > backoff_limit {
        (
            "FailureTarget",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )
    } else if let (Some(start), Some(deadline)) = (
        started,
        job.pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64),
    ) && Utc::now() >= start + chrono::Duration::seconds(deadline)
    {
        (
            "FailureTarget",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )
    } else {
        ("", "", "")
    };
    if !target.is_empty() {
        if target == "FailureTarget" {
            events::record(store, job, EventType::Warning, reason, message, COMPONENT);
        }
        // The interim condition now; the next pass kills what runs and ends the Job.
        let mut view = job.clone();
        if let Some(c) = status.get("conditions") {
            view["status"]["conditions"] = c.clone();
        }
        status["conditions"] = with_condition(&view, condition(target, reason, message));
        set_status(store, job, status);
        return;
    }

    // Start pods: as many as parallelism allows and completions still need, after the back-off.
    let want = parallelism.min(completions - succeeded) - active.len() as i64;
    if want > 0 && backoff_over(tracked, failed) {
        for _ in 0..want {
            create_pod(store, job);
        }
    }
    set_status(store, job, status);
}

/// Whether the back-off after the last failure has passed.
fn backoff_over(tracked: &Tracked, failed: i64) -> bool {
    let Some(last) = tracked.last_failure else {
        return true;
    };
    if failed <= 0 {
        return true;
    }
    let shift = u32::try_from(failed - 1).unwrap_or(u32::MAX).min(10);
    let delay = (BACKOFF_BASE_SECS << shift).min(BACKOFF_MAX_SECS);
    Utc::now() >= last + chrono::Duration::seconds(delay)
}

/// A Job whose outcome is decided: kill what still runs, then write the final condition.
fn finish(store: &dyn ObjectStore, job: &Value, active: &[&&Value], mut status: Value) {
    let success = has_condition(job, "SuccessCriteriaMet");
    status["conditions"] = job
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or(json!([]));
    if !active.is_empty() {
        for p in active {
            delete_pod(store, job, p);
        }
        set_status(store, job, status);
        return;
    }
    let interim = if success {
        "SuccessCriteriaMet"
    } else {
        "FailureTarget"
    };
    let c = job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == interim))
        .cloned()
        .unwrap_or(json!({}));
    let (kind, reason, message) = if success {
        (
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )
    } else {
        (
            "Failed",
            s(&c, "/reason").unwrap_or("BackoffLimitExceeded"),
            s(&c, "/message").unwrap_or("Job has reached the specified backoff limit"),
        )
    };
    status["conditions"] = with_condition(job, condition(kind, reason, message));
    if success {
        status["completionTime"] = json!(now());
        events::record(
            store,
            job,
            EventType::Normal,
            "Completed",
            "Job completed",
            COMPONENT,
        );
    }
    set_status(store, job, status);
}

/// When the Job finished: `completionTime`, else the time its final condition was written.
pub fn finished_at(job: &Value, done: &str) -> Option<DateTime<Utc>> {
    parse_time(s(job, "/status/completionTime")).or_else(|| {
        job.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == done))
            .and_then(|c| parse_time(s(c, "/lastTransitionTime")))
    })
}

/// The TTL-after-finished controller's part: delete a finished Job once its TTL has passed.
fn expire(store: &dyn ObjectStore, job: &Value, done: &str) {
    let Some(ttl) = job
        .pointer("/spec/ttlSecondsAfterFinished")
        .and_then(Value::as_i64)
    else {
        return;
    };
    let Some(at) = finished_at(job, done) else {
        return;
    };
    if Utc::now() >= at + chrono::Duration::seconds(ttl)
        && let Err(e) = store.delete(&jobs(), Some(namespace(job)), name(job))
        && e.code != 404
    {
        tracing::warn!(
            "kubesim ttl-after-finished: deleting job {}: {e}",
            name(job)
        );
    }
}

fn create_pod(store: &dyn ObjectStore, job: &Value) {
    let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = json!({
        "generateName": format!("{}-", name(job)),
        "namespace": namespace(job),
        "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        "ownerReferences": [{
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name(job),
            "uid": uid(job),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    match store.create(&pods(), pod) {
        Ok(p) => events::record(
            store,
            job,
            EventType::Normal,
            "SuccessfulCreate",
            &format!("Created pod: {}", name(&p)),
            COMPONENT,
        ),
        Err(e) => events::record(
            store,
            job,
            EventType::Warning,
            "FailedCreate",
            &format!("Error creating: {e}"),
            COMPONENT,
        ),
    }
}

fn delete_pod(store: &dyn ObjectStore, job: &Value, p: &Value) {
    match store.delete(&pods(), Some(namespace(p)), name(p)) {
        Ok(()) => events::record(
            store,
            job,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("Deleted pod: {}", name(p)),
            COMPONENT,
        ),
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!("kubesim job {}: deleting pod {}: {e}", name(job), name(p)),
    }
}
