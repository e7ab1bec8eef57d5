//! The objects of a backup schedule: a CronJob that runs this image doing what `create` does,
//! and the ServiceAccount, Role and bindings that give one run exactly what it needs in its
//! namespace. The `schedule` commands build them here; nothing here talks to a cluster.
//!
//! Schedules are written the way CronJobs read them (five fields, or `@daily` and the other
//! descriptors, in `timeZone` when given), with one addition: `H` in the minute or hour field
//! stands for a value hashed from the schedule's name, so that many schedules written as
//! `H 2 * * *` spread over the hour instead of all starting at 02:00.

use anyhow::{Result, bail};
use serde_json::{Value, json};

/// The label every object of a schedule carries, with the schedule's name as its value; a
/// scheduled run's VolumeBackups carry it too.
pub const SCHEDULE_LABEL: &str = "volbackup.io/schedule";

/// How many finished runs a schedule's CronJob keeps, of each outcome: enough to read the
/// log of the last few failures.
const HISTORY: u32 = 3;

/// A scheduled time the cluster missed (it was down, the controller was busy) still runs when
/// it is at most this late; later, the run is skipped and the next time is waited for.
const STARTING_DEADLINE_SECS: u32 = 3600;

/// A CronJob's name leaves room for the Job names the controller derives from it.
const MAX_NAME: usize = 52;

/// The retention policy applied after each run, to the snapshots of the schedule's volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// `--keep-last`
    pub last: Option<u32>,
    /// `--keep-hourly`
    pub hourly: Option<u32>,
    /// `--keep-daily`
    pub daily: Option<u32>,
    /// `--keep-weekly`
    pub weekly: Option<u32>,
    /// `--keep-monthly`
    pub monthly: Option<u32>,
    /// `--keep-within`, as written (`30d`, `12h`)
    pub within: Option<String>,
}

impl Retention {
    /// The flags that give this policy to a run.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.last),
            ("--keep-hourly", self.hourly),
            ("--keep-daily", self.daily),
            ("--keep-weekly", self.weekly),
            ("--keep-monthly", self.monthly),
        ] {
            if let Some(n) = n {
                out.push(format!("{flag}={n}"));
            }
        }
        if let Some(w) = &self.within {
            out.push(format!("--keep-within={w}"));
        }
        out
    }
}

/// Everything a schedule is made of.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The schedule's name (the CronJob's).
    pub name: String,
    /// The namespace of its volumes; every object of the schedule lives there.
    pub namespace: String,
    /// The volumes, by name, or ...
    pub pvcs: Vec<String>,
    /// ... by label selector.
    pub selector: Option<String>,
    /// The cron expression, `H` already replaced (see [`spread`]).
    pub cron: String,
    /// An IANA time zone for the cron expression (UTC without).
    pub time_zone: Option<String>,
    /// What to keep after each run.
    pub retention: Retention,
    /// Prune after forgetting.
    pub prune: bool,
    /// Extra snapshot tags.
    pub tags: Vec<String>,
    /// Created suspended.
    pub suspend: bool,
    /// The image the runs use (this version's).
    pub image: String,
    /// The repository Secret of the namespace (written by `create`, marked for volbackup).
    pub repo_secret: String,
}

/// The CronJob's, ServiceAccount's, Role's and RoleBinding's name.
pub fn object_name(schedule: &str) -> String {
    format!("volbackup-{schedule}")
}

/// Checks a schedule's name: it names the CronJob, and Job names are derived from that.
pub fn check_name(name: &str) -> Result<()> {
    let full = object_name(name);
    let dns = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !dns(name) {
        bail!(
            "invalid schedule name {name:?}: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        );
    }
    if full.len() > MAX_NAME {
        bail!(
            "schedule name {name:?} is too long: at most {} characters",
            MAX_NAME - object_name("").len()
        );
    }
    Ok(())
}

/// FNV-1a of the name: stable across versions and machines, unlike the standard hasher.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Replaces `H` in the minute and hour fields by values hashed from the schedule's name.
pub fn spread(cron: &str, name: &str) -> Result<String> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if cron.trim_start().starts_with('@') || !cron.contains('H') {
        return Ok(cron.trim().to_string());
    }
    if fields.len() != 5 {
        bail!(
            "invalid schedule {cron:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
        );
    }
    let h = name_hash(name);
    let mut out: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    for (i, range) in [(0usize, 60u64), (1, 24)] {
        if out[i] == "H" {
            let v = if i == 0 { h % range } else { (h / 60) % range };
            out[i] = v.to_string();
        }
    }
    if out.iter().any(|f| f.contains('H')) {
        bail!(
            "invalid schedule {cron:?}: H stands alone, and only in the minute or hour field (e.g. \"H 2 * * *\")"
        );
    }
    Ok(out.join(" "))
}

/// Checks a cron expression and time zone the way the API server will, so that a mistake
/// fails before anything is created.
pub fn check_cron(cron: &str, time_zone: Option<&str>) -> Result<()> {
    next_run(cron, time_zone, chrono::Utc::now()).map(|_| ())
}

/// The first time after `after` the schedule runs.
pub fn next_run(
    cron: &str,
    time_zone: Option<&str>,
    after: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    use std::str::FromStr as _;
    let text = cron.trim();
    let descriptors = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if text.starts_with('@') {
        if !descriptors.contains(&text.to_ascii_lowercase().as_str()) {
            bail!(
                "invalid schedule {text:?}: the descriptors are {}",
                descriptors.join(", ")
            );
        }
    } else {
        let n = text.split_whitespace().count();
        if n != 5 {
            bail!(
                "invalid schedule {text:?}: expected 5 fields (minute hour day-of-month month day-of-week), found {n}"
            );
        }
        let mut letters = text.to_ascii_uppercase();
        for name in [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
        ] {
            letters = letters.replace(name, "");
        }
        if let Some(c) = letters
            .chars()
            .find(|c| !(c.is_ascii_digit() || " */,-?".contains(*c)))
        {
            bail!("invalid schedule {text:?}: {c:?} is not part of a CronJob schedule");
        }
    }
    let parsed = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| anyhow::anyhow!("invalid schedule {text:?}: {e}"))?;
    let zone = match time_zone {
        None | Some("") => chrono_tz::UTC,
        Some(z) => chrono_tz::Tz::from_str(z).map_err(|_| {
            anyhow::anyhow!("unknown time zone {z:?}: use an IANA name such as Europe/Berlin or America/New_York")
        })?,
    };
    let next = parsed
        .find_next_occurrence(&after.with_timezone(&zone), false)
        .map_err(|e| anyhow::anyhow!("schedule {text:?} never runs: {e}"))?;
    Ok(next.with_timezone(&chrono::Utc))
}

fn labels(s: &Schedule) -> Value {
    json!({
        SCHEDULE_LABEL: s.name,
        "app.kubernetes.io/name": "volbackup",
        "app.kubernetes.io/component": "schedule",
        crate::cluster::MANAGED_BY.0: crate::cluster::MANAGED_BY.1,
    })
}

fn meta(s: &Schedule) -> Value {
    json!({"name": object_name(&s.name), "namespace": s.namespace, "labels": labels(s)})
}

/// What one run may do in its namespace: what `create` does there, reading only its own
/// repository Secret, and removing the VolumeBackups the retention policy forgot.
fn role_rules(s: &Schedule) -> Value {
    json!([
        {"apiGroups": ["volbackup.io"], "resources": ["volumebackups"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["volbackup.io"], "resources": ["volumebackups/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [s.repo_secret], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["get", "list", "watch", "create", "patch"]},
    ])
}

/// The run's command line (after the binary's name).
pub fn run_args(s: &Schedule) -> Vec<String> {
    let mut args = vec![
        "schedule".to_string(),
        "exec".to_string(),
        s.name.clone(),
        format!("--namespace={}", s.namespace),
        format!("--repo-secret={}", s.repo_secret),
    ];
    if let Some(sel) = &s.selector {
        args.push(format!("--selector={sel}"));
    }
    args.extend(s.retention.args());
    if s.prune {
        args.push("--prune".into());
    }
    for t in &s.tags {
        args.push(format!("--tag={t}"));
    }
    args.extend(s.pvcs.iter().cloned());
    args
}

/// The schedule's objects, in the order they are created: ServiceAccount, Role, RoleBinding,
/// CronJob.
pub fn objects(s: &Schedule) -> Vec<Value> {
    let name = object_name(&s.name);
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(s), "automountServiceAccountToken": false});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(s), "rules": role_rules(s)});
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(s),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": s.namespace}],
    });
    let pod = json!({
        "metadata": {"labels": labels(s)},
        "spec": {
            "serviceAccountName": name,
            // The run talks to the API server with the account's token, mounted only here.
            "automountServiceAccountToken": true,
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "run",
                "image": s.image,
                "args": run_args(s),
                "envFrom": [{"secretRef": {"name": s.repo_secret}}],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
        },
    });
    let mut spec = json!({
        "schedule": s.cron,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": STARTING_DEADLINE_SECS,
        "successfulJobsHistoryLimit": HISTORY,
        "failedJobsHistoryLimit": HISTORY,
        "suspend": s.suspend,
        "jobTemplate": {
            "metadata": {"labels": labels(s)},
            // One attempt per scheduled time: a failed run is reported, and the next time
            // tries again, rather than a retry racing the next run for the repository lock.
            "spec": {"backoffLimit": 0, "template": pod},
        },
    });
    if let Some(tz) = &s.time_zone {
        spec["timeZone"] = json!(tz);
    }
    let cronjob =
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta(s), "spec": spec});
    vec![sa, role, binding, cronjob]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Schedule {
        Schedule {
            name: "nightly".into(),
            namespace: "shop".into(),
            pvcs: vec!["data".into(), "logs".into()],
            selector: None,
            cron: "0 2 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
            retention: Retention {
                last: Some(7),
                ..Retention::default()
            },
            prune: true,
            tags: vec!["prod".into()],
            suspend: false,
            image: "ghcr.io/volbackup/volbackup:0.1.0".into(),
            repo_secret: "volbackup-repo-1234".into(),
        }
    }

    #[test]
    fn h_spreads_by_name_within_the_field_and_stays_the_same_for_one_name() {
        let a = spread("H 2 * * *", "nightly").unwrap();
        assert_eq!(a, spread("H 2 * * *", "nightly").unwrap());
        let minute: u32 = a.split(' ').next().unwrap().parse().unwrap();
        assert!(minute < 60);
        assert!(a.ends_with(" 2 * * *"), "{a}");
        let b = spread("H H * * *", "weekly-db").unwrap();
        let hour: u32 = b.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(hour < 24);
        // Different names land on different minutes (for these two, by the hash).
        assert_ne!(
            spread("H * * * *", "a").unwrap(),
            spread("H * * * *", "b").unwrap()
        );
        assert_eq!(spread("@daily", "x").unwrap(), "@daily");
        assert!(spread("0 2 H * *", "x").is_err());
        assert!(spread("H/5 * * * *", "x").is_err());
    }

    #[test]
    fn schedules_and_time_zones_are_checked_as_the_api_server_checks_them() {
        assert!(check_cron("*/15 1-3 * * MON-FRI", None).is_ok());
        assert!(check_cron("@weekly", Some("America/New_York")).is_ok());
        for bad in [
            "* * * *",
            "0 0 L * *",
            "0 0 * * 5#2",
            "@every 1h",
            "61 * * * *",
        ] {
            assert!(check_cron(bad, None).is_err(), "{bad}");
        }
        let e = check_cron("0 2 * * *", Some("Berlin")).unwrap_err();
        assert!(e.to_string().starts_with("unknown time zone"), "{e}");
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let next = next_run("0 2 * * *", Some("Europe/Berlin"), at).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-12-08T01:00:00+00:00");
    }

    #[test]
    fn names_fit_the_cronjob_and_its_jobs() {
        assert!(check_name("nightly").is_ok());
        assert!(check_name("Nightly").is_err());
        assert!(check_name(&"a".repeat(43)).is_err());
        assert!(check_name(&"a".repeat(42)).is_ok());
    }

    #[test]
    fn the_cronjob_runs_one_attempt_at_a_time_as_its_own_account() {
        let objs = objects(&sample());
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding", "CronJob"]);
        for o in &objs {
            assert_eq!(o["metadata"]["name"], "volbackup-nightly");
            assert_eq!(o["metadata"]["namespace"], "shop");
            assert_eq!(o["metadata"]["labels"][SCHEDULE_LABEL], "nightly");
        }
        let cj = &objs[3];
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Forbid");
        assert_eq!(cj["spec"]["timeZone"], "Europe/Berlin");
        assert_eq!(cj["spec"]["jobTemplate"]["spec"]["backoffLimit"], 0);
        let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "volbackup-nightly");
        assert_eq!(
            pod["containers"][0]["args"],
            json!([
                "schedule",
                "exec",
                "nightly",
                "--namespace=shop",
                "--repo-secret=volbackup-repo-1234",
                "--keep-last=7",
                "--prune",
                "--tag=prod",
                "data",
                "logs"
            ])
        );
        // The account reads its own repository Secret and no other.
        let rules = objs[1]["rules"].as_array().unwrap();
        let secrets: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == "secrets")
            })
            .collect();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0]["resourceNames"], json!(["volbackup-repo-1234"]));
        assert_eq!(secrets[0]["verbs"], json!(["get"]));
        // The password reaches the run through the Secret, never through its arguments.
        assert!(!cj.to_string().contains("PASSWORD"));
    }
}
