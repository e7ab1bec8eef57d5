//! The CronJob controller (kubernetes/kubernetes `pkg/controller/cronjob`, the "v2" controller;
//! docs: "CronJob").
//!
//! On every pass, for each CronJob:
//! - its Jobs (those it controls) are compared with `status.active`: a finished Job leaves the
//!   list (`SawCompletedJob`; `lastSuccessfulTime` from a `Complete` Job), an unfinished Job it
//!   did not start joins it (`UnexpectedJob`: `kubectl create job --from=cronjob/NAME`), a Job
//!   that is gone leaves it;
//! - finished Jobs beyond `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit` (1) are
//!   deleted, oldest first;
//! - unless suspended, the most recent scheduled time after `lastScheduleTime` (or the
//!   creation) that is not later than now, in `spec.timeZone` (UTC without), starts a Job
//!   named `<cronjob>-<minutes since the epoch>`: not when it is older than
//!   `startingDeadlineSeconds` (`MissSchedule`), not while a Job runs under `Forbid`
//!   (`JobAlreadyActive`; the time stays due), after deleting the running ones under
//!   `Replace`; more than 100 missed times give `TooManyMissedTimes`.
//!
//! The controller reads the time from a clock that tests may move forward
//! ([`Clock::advance`]), so that a schedule's next minute comes without waiting for it; Jobs,
//! pods and everything else keep the real time.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, ResourceKey};
use super::events::{self, EventType};
use super::job::{self, finished, jobs, owned_by};
use super::{Controller, name, namespace, patch, s, terminating, uid};

const COMPONENT: &str = "cronjob-controller";

/// More missed start times than this and the controller warns instead of counting on.
const MAX_MISSED: usize = 100;

/// batch/v1 cronjobs
pub fn cronjobs() -> ResourceKey {
    ResourceKey::new("batch", "cronjobs")
}

/// The CronJob controller's clock: the real time plus an offset tests can move forward.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
}

impl Clock {
    /// Now, as the CronJob controller sees it.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_secs.load(Ordering::SeqCst))
    }
    /// Moves the controller's time forward.
    pub fn advance(&self, by: std::time::Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX / 2);
        self.offset_secs.fetch_add(secs, Ordering::SeqCst);
    }
}

/// A schedule as a CronJob's `spec.schedule` and `spec.timeZone` give it.
pub struct Schedule {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    /// Parses what the API server accepts: five fields (minute, hour, day of month, month,
    /// day of week) with lists, ranges, steps, names and `?`, or one of the `@` descriptors;
    /// no `TZ=`/`CRON_TZ=` prefix; an IANA time zone name.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let text = schedule.trim();
        if text.contains("TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let descriptors = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ];
        let expanded = if text.starts_with('@') {
            if !descriptors.contains(&text.to_ascii_lowercase().as_str()) {
                return Err(format!("unrecognized descriptor: {text}"));
            }
            text.to_string()
        } else {
            let fields: Vec<&str> = text.split_whitespace().collect();
            if fields.len() != 5 {
                return Err(format!(
                    "expected exactly 5 fields, found {}: {text}",
                    fields.len()
                ));
            }
            let bad = text
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || " */,-?".contains(*c)))
                .or_else(|| without_names(text).chars().find(char::is_ascii_alphabetic));
            if let Some(bad) = bad {
                return Err(format!("unsupported character {bad:?} in {text}"));
            }
            text.to_string()
        };
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&expanded)
            .map_err(|e| format!("{e}"))?;
        let zone = match time_zone {
            None | Some("") => chrono_tz::UTC,
            Some(z) => chrono_tz::Tz::from_str(z).map_err(|_| format!("unknown time zone {z}"))?,
        };
        Ok(Schedule { cron, zone })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The time zone, for the scheduled-time annotation.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.zone
    }
}

/// The schedule with its month and weekday names taken out (any other letter, such as `L` or
/// `W`, is an extension the API server refuses).
fn without_names(text: &str) -> String {
    const NAMES: [&str; 19] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", "SUN",
        "MON", "TUE", "WED", "THU", "FRI", "SAT",
    ];
    let mut rest = text.to_ascii_uppercase();
    for n in NAMES {
        rest = rest.replace(n, "");
    }
    rest
}

/// The CronJob controller.
pub struct CronJobController {
    clock: Arc<Clock>,
}

impl CronJobController {
    /// A controller reading the given clock.
    pub fn new(clock: Arc<Clock>) -> Self {
        Self { clock }
    }
}

impl Controller for CronJobController {
    fn reconcile(&mut self, store: &dyn ObjectStore, _ctx: &ControllerContext) {
        let cronjobs = store.list(&cronjobs(), None);
        if cronjobs.is_empty() {
            return;
        }
        let all_jobs = store.list(&jobs(), None);
        let now = self.clock.now();
        for cj in &cronjobs {
            if terminating(cj) {
                continue;
            }
            let owned: Vec<&Value> = all_jobs.iter().filter(|j| owned_by(j, cj)).collect();
            sync(store, cj, &owned, now);
        }
    }
}

fn time(v: &Value, ptr: &str) -> Option<DateTime<Utc>> {
    s(v, ptr)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn job_ref(j: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name(j),
        "namespace": namespace(j),
        "uid": uid(j),
        "resourceVersion": s(j, "/metadata/resourceVersion").unwrap_or(""),
    })
}

fn sync(store: &dyn ObjectStore, cj: &Value, owned: &[&Value], now: DateTime<Utc>) {
    let mut status = cj.get("status").cloned().unwrap_or(json!({}));
    let before = status.clone();
    let listed: Vec<String> = status["active"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut active = Vec::new();
    for j in owned {
        let listed_here = listed.iter().any(|u| u == uid(j));
        match finished(j) {
            Some(done) => {
                if listed_here {
                    events::record(
                        store,
                        cj,
                        EventType::Normal,
                        "SawCompletedJob",
                        &format!("Saw completed job: {}, condition: {done}", name(j)),
                        COMPONENT,
                    );
                }
                if done == "Complete"
                    && let Some(at) = job::finished_at(j, done)
                    && time(&status, "/lastSuccessfulTime").is_none_or(|t| t < at)
                {
                    status["lastSuccessfulTime"] = json!(stamp(at));
                }
            }
            None if terminating(j) => {}
            None => {
                if !listed_here {
                    events::record(
                        store,
                        cj,
                        EventType::Warning,
                        "UnexpectedJob",
                        &format!(
                            "Saw a job that the controller did not create or forgot: {}",
                            name(j)
                        ),
                        COMPONENT,
                    );
                }
                active.push(job_ref(j));
            }
        }
    }
    status["active"] = Value::Array(active);
    clean_history(store, cj, owned);

    if cj.pointer("/spec/suspend").and_then(Value::as_bool) != Some(true)
        && let Some(started) = run_due(store, cj, &status, now)
    {
        if let Some(a) = status["active"].as_array_mut() {
            a.push(job_ref(&started.1));
        }
        status["lastScheduleTime"] = json!(stamp(started.0));
    }
    if status["active"].as_array().is_some_and(Vec::is_empty) {
        status.as_object_mut().expect("object").remove("active");
    }
    if status != before {
        let mut p = json!({ "status": status });
        if before.get("active").is_some() && p["status"].get("active").is_none() {
            p["status"]["active"] = Value::Null;
        }
        patch(store, &cronjobs(), Some(namespace(cj)), name(cj), p);
    }
}

/// Starts the Job of the most recent due time, if any and allowed. Returns the time and Job.
fn run_due(
    store: &dyn ObjectStore,
    cj: &Value,
    status: &Value,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, Value)> {
    let schedule = match Schedule::parse(
        s(cj, "/spec/schedule").unwrap_or(""),
        s(cj, "/spec/timeZone"),
    ) {
        Ok(s) => s,
        Err(e) => {
            events::record(
                store,
                cj,
                EventType::Warning,
                "UnparseableSchedule",
                &format!("unparseable schedule: {e}"),
                COMPONENT,
            );
            return None;
        }
    };
    let deadline = cj
        .pointer("/spec/startingDeadlineSeconds")
        .and_then(Value::as_i64);
    let mut earliest = time(status, "/lastScheduleTime")
        .or_else(|| time(cj, "/metadata/creationTimestamp"))
        .unwrap_or(now);
    if let Some(d) = deadline {
        earliest = earliest.max(now - chrono::Duration::seconds(d));
    }
    let mut due = None;
    let mut missed = 0usize;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t) {
        if next > now {
            break;
        }
        missed += 1;
        due = Some(next);
        t = next;
        if missed > MAX_MISSED {
            events::record(
                store,
                cj,
                EventType::Warning,
                "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
                COMPONENT,
            );
            // Carry on from the most recent due time rather than the hundredth.
            due = schedule_before(&schedule, now);
            break;
        }
    }
    let due = due?;
    if let Some(d) = deadline
        && due + chrono::Duration::seconds(d) < now
    {
        events::record(
            store,
            cj,
            EventType::Warning,
            "MissSchedule",
            &format!("Missed scheduled time to start a job: {}", due.to_rfc2822()),
            COMPONENT,
        );
        return None;
    }
    let running: Vec<String> = status["active"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match s(cj, "/spec/concurrencyPolicy").unwrap_or("Allow") {
        "Forbid" if !running.is_empty() => {
            events::record(
                store,
                cj,
                EventType::Normal,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
                COMPONENT,
            );
            return None;
        }
        "Replace" => {
            for j in &running {
                delete_job(store, cj, j);
            }
        }
        _ => {}
    }
    create_job(store, cj, due, schedule.zone()).map(|j| (due, j))
}

/// The most recent scheduled time not after `now` (searched back at most a year).
fn schedule_before(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut from = now - chrono::Duration::minutes(1);
    while from > now - chrono::Duration::days(366) {
        if let Some(t) = schedule.next_after(from)
            && t <= now
        {
            let mut last = t;
            while let Some(n) = schedule.next_after(last) {
                if n > now {
                    break;
                }
                last = n;
            }
            return Some(last);
        }
        from -= chrono::Duration::hours(1);
    }
    None
}

fn create_job(
    store: &dyn ObjectStore,
    cj: &Value,
    at: DateTime<Utc>,
    zone: chrono_tz::Tz,
) -> Option<Value> {
    let job_name = format!("{}-{}", name(cj), at.timestamp() / 60);
    let template = cj
        .pointer("/spec/jobTemplate")
        .cloned()
        .unwrap_or(json!({}));
    let mut annotations = template
        .pointer("/metadata/annotations")
        .cloned()
        .unwrap_or(json!({}));
    annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(
        at.with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": namespace(cj),
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": name(cj),
                "uid": uid(cj),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    match store.create(&jobs(), job) {
        Ok(j) => {
            events::record(
                store,
                cj,
                EventType::Normal,
                "SuccessfulCreate",
                &format!("Created job {job_name}"),
                COMPONENT,
            );
            Some(j)
        }
        // Started before (a pass that did not get to write the status).
        Err(e) if e.code == 409 => store.get(&jobs(), Some(namespace(cj)), &job_name),
        Err(e) => {
            events::record(
                store,
                cj,
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating job: {e}"),
                COMPONENT,
            );
            None
        }
    }
}

fn delete_job(store: &dyn ObjectStore, cj: &Value, job_name: &str) {
    match store.delete(&jobs(), Some(namespace(cj)), job_name) {
        Ok(()) => events::record(
            store,
            cj,
            EventType::Normal,
            "SuccessfulDelete",
            &format!("Deleted job {job_name}"),
            COMPONENT,
        ),
        Err(e) if e.code == 404 => {}
        Err(e) => tracing::warn!("kubesim cronjob {}: deleting job {job_name}: {e}", name(cj)),
    }
}

/// Deletes the oldest finished Jobs beyond the history limits.
fn clean_history(store: &dyn ObjectStore, cj: &Value, owned: &[&Value]) {
    for (outcome, ptr, default) in [
        ("Complete", "/spec/successfulJobsHistoryLimit", 3),
        ("Failed", "/spec/failedJobsHistoryLimit", 1),
    ] {
        let limit = cj.pointer(ptr).and_then(Value::as_u64).unwrap_or(default) as usize;
        let mut done: Vec<&&Value> = owned
            .iter()
            .filter(|j| !terminating(j) && finished(j) == Some(outcome))
            .collect();
        if done.len() <= limit {
            continue;
        }
        // Oldest start first; on a tie (times have whole seconds), by name.
        done.sort_by_key(|j| {
            (
                s(j, "/status/startTime")
                    .or(s(j, "/metadata/creationTimestamp"))
                    .unwrap_or("")
                    .to_string(),
                name(j).to_string(),
            )
        });
        for j in &done[..done.len() - limit] {
            delete_job(store, cj, name(j));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A CronJob in namespace `t` (the store stamps the real time: the tests choose the
    /// controller's `now` relative to the object's own creation time).
    fn cronjob(store: &Store, name: &str, spec: Value) -> Value {
        if store
            .get(&ResourceKey::core("namespaces"), None, "t")
            .is_none()
        {
            store
                .create(
                    &ResourceKey::core("namespaces"),
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}),
                )
                .expect("namespace created");
        }
        let mut spec = spec;
        spec["jobTemplate"] = json!({"metadata": {"labels": {"from": name}}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
        store
            .create(
                &cronjobs(),
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "namespace": "t"}, "spec": spec}),
            )
            .expect("cronjob created")
    }

    fn created(cj: &Value) -> DateTime<Utc> {
        time(cj, "/metadata/creationTimestamp").expect("creation time")
    }

    /// The start of the minute after `t`.
    fn next_minute(t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp((t.timestamp() / 60 + 1) * 60, 0).expect("time")
    }

    /// One controller pass at `now` over the CronJob as stored.
    fn pass(store: &Store, cj_name: &str, now: DateTime<Utc>) -> Value {
        let cj = store.get(&cronjobs(), Some("t"), cj_name).expect("cronjob");
        let all = store.list(&jobs(), Some("t"));
        let owned: Vec<&Value> = all.iter().filter(|j| owned_by(j, &cj)).collect();
        sync(store, &cj, &owned, now);
        store.get(&cronjobs(), Some("t"), cj_name).expect("cronjob")
    }

    fn job_names(store: &Store) -> Vec<String> {
        let mut v: Vec<String> = store
            .list(&jobs(), Some("t"))
            .iter()
            .filter(|j| !terminating(j))
            .map(|j| name(j).to_string())
            .collect();
        v.sort();
        v
    }

    fn events_of(store: &Store, reason: &str) -> usize {
        store
            .list(&ResourceKey::core("events"), Some("t"))
            .iter()
            .filter(|e| e["reason"] == reason)
            .count()
    }

    fn finish_job(store: &Store, job: &str, outcome: &str, at: DateTime<Utc>) {
        let mut status = json!({"startTime": stamp(at), "conditions": [{"type": outcome, "status": "True", "lastTransitionTime": stamp(at)}]});
        if outcome == "Complete" {
            status["completionTime"] = json!(stamp(at));
        }
        store
            .merge_patch(&jobs(), Some("t"), job, &json!({ "status": status }))
            .expect("job patched");
    }

    #[test]
    fn a_due_time_starts_one_job_named_by_its_minute_and_forbid_waits_for_it() {
        let store = Store::new();
        let cj = cronjob(
            &store,
            "nightly",
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Forbid"}),
        );
        let t0 = created(&cj);
        // Nothing due before the first minute.
        let cj = pass(&store, "nightly", t0);
        assert!(job_names(&store).is_empty());
        assert!(cj.pointer("/status/lastScheduleTime").is_none());
        // The first minute: one Job, named by the minute, owned, labelled and annotated.
        let m1 = next_minute(t0);
        let cj = pass(&store, "nightly", m1 + chrono::Duration::seconds(5));
        let first = format!("nightly-{}", m1.timestamp() / 60);
        assert_eq!(job_names(&store), vec![first.clone()]);
        assert_eq!(cj["status"]["lastScheduleTime"], json!(stamp(m1)));
        assert_eq!(cj["status"]["active"][0]["name"], json!(first));
        let job = store.get(&jobs(), Some("t"), &first).unwrap();
        assert!(owned_by(&job, &cj));
        assert_eq!(job["metadata"]["labels"]["from"], "nightly");
        assert_eq!(
            job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"],
            json!(stamp(m1))
        );
        // The next minute while it runs: Forbid starts nothing and says so.
        let m2 = m1 + chrono::Duration::minutes(1);
        let cj = pass(&store, "nightly", m2 + chrono::Duration::seconds(5));
        assert_eq!(job_names(&store), vec![first.clone()]);
        assert_eq!(cj["status"]["lastScheduleTime"], json!(stamp(m1)));
        assert_eq!(events_of(&store, "JobAlreadyActive"), 1);
        // Once it has finished, the time still due starts the next Job.
        finish_job(&store, &first, "Complete", m2);
        let cj = pass(&store, "nightly", m2 + chrono::Duration::seconds(10));
        assert_eq!(cj["status"]["lastSuccessfulTime"], json!(stamp(m2)));
        assert_eq!(cj["status"]["lastScheduleTime"], json!(stamp(m2)));
        assert_eq!(
            job_names(&store),
            [first, format!("nightly-{}", m2.timestamp() / 60)]
        );
        assert_eq!(events_of(&store, "SawCompletedJob"), 1);
    }

    #[test]
    fn replace_deletes_the_running_job_and_suspend_starts_nothing() {
        let store = Store::new();
        let cj = cronjob(
            &store,
            "r",
            json!({"schedule": "* * * * *", "concurrencyPolicy": "Replace"}),
        );
        let m1 = next_minute(created(&cj));
        pass(&store, "r", m1);
        let m2 = m1 + chrono::Duration::minutes(1);
        pass(&store, "r", m2);
        assert_eq!(job_names(&store), [format!("r-{}", m2.timestamp() / 60)]);
        assert_eq!(events_of(&store, "SuccessfulDelete"), 1);
        store
            .merge_patch(
                &cronjobs(),
                Some("t"),
                "r",
                &json!({"spec": {"suspend": true}}),
            )
            .unwrap();
        let cj = pass(&store, "r", m2 + chrono::Duration::minutes(5));
        assert_eq!(job_names(&store).len(), 1);
        assert_eq!(cj["status"]["lastScheduleTime"], json!(stamp(m2)));
    }

    #[test]
    fn a_time_older_than_the_starting_deadline_is_skipped() {
        let store = Store::new();
        let cj = cronjob(
            &store,
            "late",
            json!({"schedule": "* * * * *", "startingDeadlineSeconds": 20}),
        );
        let m1 = next_minute(created(&cj));
        // 40 s after the minute: beyond the 20 s deadline, nothing starts.
        pass(&store, "late", m1 + chrono::Duration::seconds(40));
        assert!(job_names(&store).is_empty());
        // 10 s after the next minute: within it.
        let m2 = m1 + chrono::Duration::minutes(1);
        pass(&store, "late", m2 + chrono::Duration::seconds(10));
        assert_eq!(job_names(&store), [format!("late-{}", m2.timestamp() / 60)]);
        // Without a deadline, a controller that was down for hours starts the most recent
        // time once (and warns that it missed too many).
        let cj = cronjob(&store, "down", json!({"schedule": "* * * * *"}));
        let later = next_minute(created(&cj)) + chrono::Duration::hours(3);
        let cj = pass(&store, "down", later + chrono::Duration::seconds(1));
        assert_eq!(cj["status"]["lastScheduleTime"], json!(stamp(later)));
        assert_eq!(events_of(&store, "TooManyMissedTimes"), 1);
    }

    #[test]
    fn finished_jobs_beyond_the_history_limits_are_deleted_oldest_first() {
        let store = Store::new();
        let cj = cronjob(
            &store,
            "h",
            json!({"schedule": "@yearly", "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
        );
        let t0 = created(&cj);
        for (i, outcome) in ["Complete", "Complete", "Failed", "Failed", "Complete"]
            .iter()
            .enumerate()
        {
            let n = format!("h-manual-{i}");
            store
                .create(
                    &jobs(),
                    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": n, "namespace": "t", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "h", "uid": uid(&cj), "controller": true}]}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}),
                )
                .unwrap();
            finish_job(
                &store,
                &n,
                outcome,
                t0 + chrono::Duration::seconds(i as i64),
            );
        }
        let cj = pass(&store, "h", t0 + chrono::Duration::seconds(30));
        assert_eq!(job_names(&store), ["h-manual-3", "h-manual-4"]);
        assert_eq!(
            cj["status"]["lastSuccessfulTime"],
            json!(stamp(t0 + chrono::Duration::seconds(4)))
        );
    }

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_parse_as_the_api_server_accepts_them() {
        for ok in [
            "* * * * *",
            "*/5 1-3 * * MON-FRI",
            "0 2 1,15 jan *",
            "@daily",
            "@hourly",
            "0 0 ? * sun",
        ] {
            assert!(Schedule::parse(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "* * * *",
            "0 * * * * *",
            "TZ=UTC 0 * * * *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "@every 5m",
            "61 * * * *",
        ] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Schedule::parse("0 * * * *", Some("Mars/Base")).is_err());
    }

    #[test]
    fn the_next_time_follows_the_time_zone() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(at("2026-12-07T12:00:00Z")),
            Some(at("2026-12-08T01:00:00Z"))
        );
        let u = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            u.next_after(at("2026-12-07T12:00:00Z")),
            Some(at("2026-12-07T12:15:00Z"))
        );
    }
}
