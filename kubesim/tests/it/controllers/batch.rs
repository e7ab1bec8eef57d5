//! Jobs and CronJobs (`batch/v1`) with real pods.

use super::*;

const JOBS: Kind = Kind("batch", "v1", "Job", "jobs", true);
const CRONJOBS: Kind = Kind("batch", "v1", "CronJob", "cronjobs", true);

fn condition<'a>(o: &'a Value, kind: &str) -> Option<&'a Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == kind && c["status"] == "True")
        })
}

fn template(script: &str, volume: Option<&str>) -> Value {
    let mut spec = json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]});
    if let Some(claim) = volume {
        spec["volumes"] = json!([{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]);
        spec["containers"][0]["volumeMounts"] = json!([{"name": "vol", "mountPath": "/data"}]);
    }
    json!({ "spec": spec })
}

async fn job(sim: &Sim, name: &str, script: &str, extra: Value) -> Value {
    let mut spec = json!({ "template": template(script, None) });
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    sim.create(JOBS, json!({"metadata": {"name": name}, "spec": spec}))
        .await
}

async fn pods_of(sim: &Sim, job: &str) -> Vec<Value> {
    sim.list(PODS)
        .await
        .into_iter()
        .filter(|p| {
            p.pointer("/metadata/labels/job-name")
                .and_then(Value::as_str)
                == Some(job)
        })
        .collect()
}

async fn wait_no_pods(sim: &Sim, job: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pods_of(sim, job).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pods of job {job} are still there after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_pods_to_completion_retry_after_a_failure_and_stop_at_their_limits() {
    let sim = Sim::start().await;
    // A Job whose pod succeeds completes, with the interim condition before it.
    job(&sim, "ok", "echo done", json!({})).await;
    let j = sim
        .wait_for(JOBS, "ok", "to complete", 60, |j| {
            condition(j, "Complete").is_some()
        })
        .await;
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(j["status"]["completionTime"].is_string(), "{}", j["status"]);
    assert!(
        condition(&j, "SuccessCriteriaMet").is_some(),
        "{}",
        j["status"]
    );
    let pods = pods_of(&sim, "ok").await;
    assert_eq!(pods.len(), 1);
    assert_eq!(phase(&pods[0]), "Succeeded");
    assert_eq!(
        sim.logs(pods[0]["metadata"]["name"].as_str().unwrap())
            .await,
        "done\n"
    );

    // A Job's pods may not restart Always: refused at create.
    let bad: DynamicObject = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "always"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}})).unwrap();
    let err = sim
        .api(JOBS)
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("restartPolicy"), "{err}");

    // No retry allowed: the first failure fails the Job.
    job(&sim, "fails", "exit 3", json!({"backoffLimit": 0})).await;
    let j = sim
        .wait_for(JOBS, "fails", "to fail", 60, |j| {
            condition(j, "Failed").is_some()
        })
        .await;
    assert_eq!(
        condition(&j, "Failed").unwrap()["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(j["status"]["failed"], 1);

    // One retry allowed: a pod that fails once (it leaves a mark on a volume) is replaced
    // after the back-off, and the second pod completes the Job.
    sim.pvc("state", "fast", "Filesystem", "16Mi").await;
    let mut spec = json!({"backoffLimit": 1, "template": template("if [ -e /data/once ]; then echo second; else touch /data/once; exit 1; fi", Some("state"))});
    spec["template"]["spec"]["restartPolicy"] = json!("Never");
    sim.create(JOBS, json!({"metadata": {"name": "retry"}, "spec": spec}))
        .await;
    let j = sim
        .wait_for(JOBS, "retry", "to complete on its second pod", 90, |j| {
            condition(j, "Complete").is_some() || condition(j, "Failed").is_some()
        })
        .await;
    assert!(condition(&j, "Complete").is_some(), "{}", j["status"]);
    assert_eq!(
        (
            j["status"]["failed"].clone(),
            j["status"]["succeeded"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(pods_of(&sim, "retry").await.len(), 2);

    // An active deadline fails the Job and kills its pod.
    job(
        &sim,
        "slow",
        "sleep 600",
        json!({"activeDeadlineSeconds": 2}),
    )
    .await;
    let j = sim
        .wait_for(JOBS, "slow", "to pass its deadline", 60, |j| {
            condition(j, "Failed").is_some()
        })
        .await;
    assert_eq!(
        condition(&j, "Failed").unwrap()["reason"],
        "DeadlineExceeded"
    );
    wait_no_pods(&sim, "slow", 30).await;

    // ttlSecondsAfterFinished: a finished Job goes, and its pods with it.
    job(&sim, "brief", "true", json!({"ttlSecondsAfterFinished": 0})).await;
    sim.wait_gone(JOBS, "brief", 60).await;
    wait_no_pods(&sim, "brief", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cronjob_starts_its_job_when_its_time_comes_and_adopts_one_started_by_hand() {
    let sim = Sim::start().await;
    let cj = sim
        .create(
            CRONJOBS,
            json!({"metadata": {"name": "tick"}, "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 3, "jobTemplate": {"metadata": {"labels": {"app": "tick"}}, "spec": {"template": template("echo tick", None)}}}}),
        )
        .await;
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    // An unknown time zone is refused at create.
    let bad: DynamicObject = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nowhere"}, "spec": {"schedule": "0 2 * * *", "timeZone": "Mars/Olympus", "jobTemplate": {"spec": {"template": template("true", None)}}}})).unwrap();
    let err = sim
        .api(CRONJOBS)
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.timeZone"), "{err}");

    // The next minute comes (the controller's clock moves; the Job and its pod run in
    // real time).
    sim.cluster.advance_cron_clock(Duration::from_secs(60));
    let cj = sim
        .wait_for(CRONJOBS, "tick", "to see its job succeed", 60, |c| {
            c.pointer("/status/lastSuccessfulTime").is_some()
        })
        .await;
    assert!(cj["status"]["lastScheduleTime"].is_string());
    // Suspended now, so that no further minute adds a scheduled Job from here on.
    sim.patch(CRONJOBS, "tick", json!({"spec": {"suspend": true}}))
        .await;
    // Each scheduled Job is named by its minute. On a slow machine a further minute may have
    // come before the suspension, so there is at least one; the first that succeeded is read
    // (a history of three keeps it meanwhile).
    let scheduled: Vec<Value> = sim
        .list(JOBS)
        .await
        .into_iter()
        .filter(|j| j["metadata"]["labels"]["app"] == "tick")
        .collect();
    for j in &scheduled {
        let n = j["metadata"]["name"].as_str().unwrap();
        let minute = n.strip_prefix("tick-").unwrap_or_default();
        assert!(
            !minute.is_empty() && minute.bytes().all(|b| b.is_ascii_digit()),
            "{n}"
        );
    }
    let first = scheduled
        .iter()
        .filter(|j| condition(j, "Complete").is_some())
        .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
        .min()
        .expect("a scheduled Job completed");
    let pods = pods_of(&sim, &first).await;
    assert_eq!(
        sim.logs(pods[0]["metadata"]["name"].as_str().unwrap())
            .await,
        "tick\n"
    );

    // A Job started by hand from the CronJob, shaped as `kubectl create job
    // --from=cronjob/tick tick-manual` shapes it (the CronJob's template, owned by it, the
    // `instantiate: manual` annotation). It is sent as JSON: kubectl itself sends a Job as
    // protobuf, which kubesim does not decode yet. With a history of one success, the
    // scheduled Job goes once this one has completed (the older start, or on a tie the name
    // that sorts first, as the real controller orders them).
    // A history of one success from now on, once no scheduled Job runs any more: when the
    // hand-started Job completes, the scheduled ones go.
    sim.wait_for(CRONJOBS, "tick", "to have no running job", 60, |c| {
        c.pointer("/status/active")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    })
    .await;
    sim.patch(
        CRONJOBS,
        "tick",
        json!({"spec": {"successfulJobsHistoryLimit": 1}}),
    )
    .await;
    let by_hand = json!({"metadata": {"name": "tick-manual", "annotations": {"cronjob.kubernetes.io/instantiate": "manual"}, "labels": cj["spec"]["jobTemplate"]["metadata"]["labels"].clone(), "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "tick", "uid": cj["metadata"]["uid"].clone(), "controller": true}]}, "spec": cj["spec"]["jobTemplate"]["spec"].clone()});
    sim.create(JOBS, by_hand).await;
    sim.wait_event(cj["metadata"]["uid"].as_str().unwrap(), "UnexpectedJob", 30)
        .await;
    let j = sim
        .wait_for(JOBS, "tick-manual", "to complete", 60, |j| {
            condition(j, "Complete").is_some()
        })
        .await;
    assert_eq!(
        j["metadata"]["ownerReferences"][0]["uid"],
        cj["metadata"]["uid"]
    );
    assert_eq!(
        j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    sim.wait_gone(JOBS, &first, 30).await;
}
