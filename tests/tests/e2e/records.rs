//! The VolumeBackup records and the repository Secret when someone else writes at the same
//! moment: a `create` completing while `cleanup` marks its backup, a `create` stopped between
//! naming its snapshot and completing its status, two runs writing one repository Secret. The
//! other writer's step runs exactly between the plugin's read and its write (kubesim's
//! `before_next` hook), so each race happens on every run.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::*;

const SNAPSHOT: &str = "0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd0123abcd";
const OTHER_SNAPSHOT: &str = "fedc9876fedc9876fedc9876fedc9876fedc9876fedc9876fedc9876fedc9876";

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn volume(pvc: &str) -> Value {
    json!({"namespace": NS, "pvc": pvc, "volumeMode": "Block", "capacity": "4Mi"})
}

/// A record as a `create` killed outright leaves it (InProgress, its heartbeat five minutes
/// old, labelled with its run), naming `snapshot` if the kill came after the spec write, with
/// the result annotation that write carries, if given.
async fn abandoned_record(env: &Env, name: &str, snapshot: Option<&str>, result: Option<Value>) {
    let started = chrono::Utc::now() - chrono::Duration::minutes(6);
    let mut annotations = json!({
        "volbackup.io/heartbeat": rfc3339(chrono::Utc::now() - chrono::Duration::minutes(5)),
    });
    if let Some(r) = result {
        annotations["volbackup.io/result"] = json!(r.to_string());
    }
    let mut spec = json!({"repository": {"secretRef": {"name": "volbackup-repo-0123456789ab"}}});
    if let Some(s) = snapshot {
        spec["snapshot"] = json!(s);
    }
    env.create(
        &backups_ar(),
        json!({"metadata": {"name": name, "namespace": NS,
                            "labels": {"volbackup.io/backup": format!("run-{name}"), "volbackup.io/pvc": name},
                            "annotations": annotations},
               "spec": spec}),
    )
    .await;
    env.api(&backups_ar(), true)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "InProgress",
                "startTime": rfc3339(started),
                "volume": volume(name),
                "conditions": [{"type": "BackedUp", "status": "Unknown", "reason": "Recording",
                                "message": "recording the result", "lastTransitionTime": rfc3339(started)}],
            }})),
        )
        .await
        .expect("the record's status");
}

async fn record(env: &Env, name: &str) -> Value {
    let b = env
        .api(&backups_ar(), true)
        .get(name)
        .await
        .expect("the record");
    serde_json::to_value(b).unwrap()
}

/// Phase, and the `BackedUp` condition's status and reason.
fn verdict(b: &Value) -> (String, String, String) {
    let c = b["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "BackedUp"))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (s(&b["status"]["phase"]), s(&c["status"]), s(&c["reason"]))
}

fn backed_up_message(b: &Value) -> String {
    b["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "BackedUp"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

fn completed() -> (String, String, String) {
    ("Completed".into(), "True".into(), "Completed".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_completes_while_cleanup_marks_it_stays_completed() {
    let env = Env::start().await;
    abandoned_record(&env, "racing", None, None).await;
    // cleanup read the record unfinished; the moment its verdict reaches the API server, the
    // backup's create names the snapshot and completes the status (as `completed` does).
    let client = env.client.clone();
    env.cluster
        .faults()
        .before_next("patch", "volumebackups/status", move || {
            Box::pin(async move {
                let api: Api<DynamicObject> = Api::namespaced_with(client, NS, &backups_ar());
                api.patch(
                    "racing",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"snapshot": SNAPSHOT}})),
                )
                .await
                .expect("the spec write");
                let now = rfc3339(chrono::Utc::now());
                api.patch_status(
                    "racing",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "phase": "Completed", "completionTime": now, "bytesTotal": 4194304,
                        "conditions": [{"type": "BackedUp", "status": "True", "reason": "Completed",
                                        "message": "snapshot 0123abcd: 4.0 MiB read, 4.0 MiB new",
                                        "lastTransitionTime": now}],
                    }})),
                )
                .await
                .expect("the status write");
            })
        });
    let out = env
        .plugin(&["cleanup", "-n", NS, "--backup", "racing"], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b = record(&env, "racing").await;
    assert_eq!(verdict(&b), completed(), "{b}");
    assert_eq!(b["spec"]["snapshot"], SNAPSHOT, "{b}");
    assert_eq!(b["status"]["bytesTotal"], 4194304, "{b}");
    assert!(!out.stderr.contains("Failed"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_completes_a_backup_whose_create_stopped_after_naming_its_snapshot() {
    let env = Env::start().await;
    let started = rfc3339(chrono::Utc::now() - chrono::Duration::minutes(6));
    let finished = rfc3339(chrono::Utc::now() - chrono::Duration::minutes(5));
    // Stopped between the spec write (the snapshot and the result it carries) and the status
    // write.
    let result = json!({"phase": "Completed", "volume": volume("stopped"), "bytesTotal": 4194304,
                        "bytesNew": 1048576, "bytesStored": 524288, "startTime": started,
                        "completionTime": finished});
    abandoned_record(&env, "stopped", Some(SNAPSHOT), Some(result)).await;
    // The same, written by a create that kept no result with the snapshot.
    abandoned_record(&env, "older", Some(OTHER_SNAPSHOT), None).await;
    // Stopped before it had a snapshot: Failed, as before.
    abandoned_record(&env, "unfinished", None, None).await;

    let out = env.plugin(&["cleanup", "-n", NS], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.starts_with(
            "marked 2 VolumeBackup(s) Completed whose create stopped after recording the snapshot:"
        ) && l.contains("t/stopped")
            && l.contains("t/older")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("marked 1 unfinished VolumeBackup(s) Failed: t/unfinished"),
        "{}",
        out.stderr
    );

    let b = record(&env, "stopped").await;
    assert_eq!(verdict(&b), completed(), "{b}");
    assert_eq!(b["spec"]["snapshot"], SNAPSHOT);
    assert_eq!(
        (
            &b["status"]["bytesTotal"],
            &b["status"]["bytesNew"],
            &b["status"]["bytesStored"],
            &b["status"]["completionTime"]
        ),
        (
            &json!(4194304),
            &json!(1048576),
            &json!(524288),
            &json!(finished)
        ),
        "{b}"
    );
    assert!(backed_up_message(&b).contains("snapshot 0123abcd"), "{b}");

    let b = record(&env, "older").await;
    assert_eq!(verdict(&b), completed(), "{b}");
    assert_eq!(b["status"]["volume"]["pvc"], "older", "{b}");
    assert!(
        backed_up_message(&b).contains("the byte counts were not kept"),
        "{b}"
    );

    let b = record(&env, "unfinished").await;
    assert_eq!(
        verdict(&b),
        ("Failed".into(), "False".into(), "Abandoned".into()),
        "{b}"
    );
    assert!(b["spec"].get("snapshot").is_none(), "{b}");
}

/// The repository Secret's `VOLBACKUP_REPOSITORY`.
async fn secret_repository(env: &Env) -> String {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let s = secrets
        .get(&repository_secret(env))
        .await
        .expect("the repository Secret");
    let data = s.data.unwrap_or_default();
    String::from_utf8_lossy(&data["VOLBACKUP_REPOSITORY"].0).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_secret_another_run_writes_at_the_same_moment_is_written_again() {
    let env = Env::start().await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    let name = repository_secret(&env);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NS);

    // 1. No Secret yet: another run creates it between this run's look and its create.
    let (api, n) = (secrets.clone(), name.clone());
    env.cluster
        .faults()
        .before_next("create", "secrets", move || {
            Box::pin(async move {
                let other: Secret = serde_json::from_value(json!({
                    "metadata": {"name": n, "labels": {"volbackup.io/repository": "true"}},
                    "stringData": {"VOLBACKUP_REPOSITORY": "the other run's"},
                }))
                .unwrap();
                api.create(&PostParams::default(), &other)
                    .await
                    .expect("the other run's create");
            })
        });
    let out = env.create_backup(&["vol"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(secret_repository(&env).await, env.repo.to_str().unwrap());

    // 2. The Secret is there: another run replaces it between this run's read and its
    //    replace. (Backup names carry the time to the second.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (api, n) = (secrets.clone(), name.clone());
    env.cluster
        .faults()
        .before_next("update", "secrets", move || {
            Box::pin(async move {
                api.patch(
                    &n,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {"written-by": "the other run"}}}),
                    ),
                )
                .await
                .expect("the other run's write");
            })
        });
    let out = env.create_backup(&["vol"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(secret_repository(&env).await, env.repo.to_str().unwrap());

    let backups = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=vol"))
        .await;
    assert_eq!(backups.len(), 2, "{backups:?}");
    for b in &backups {
        assert_eq!(verdict(b), completed(), "{b}");
    }
    env.assert_nothing_temporary_left().await;
}
