//! `kubectl volbackup create` end to end: the real binary against kubesim, whose mover pods run
//! the same binary as processes; the real `restic` reads what they wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::*;
use crate::support_s3;

mod backups;
mod failures;
mod interrupted;
mod repositories;

/// The one VolumeBackup of a PVC, which must be Failed, name no snapshot, and carry the
/// condition `BackedUp=False` with this reason and a message containing `says`.
async fn assert_failed_backup(env: &Env, pvc: &str, reason: &str, says: &str) -> Value {
    let mut b = backups_of(env, pvc).await;
    assert_eq!(b.len(), 1, "{b:?}");
    let b = b.remove(0);
    assert_eq!(b["status"]["phase"], "Failed", "{b}");
    assert!(b["spec"].get("snapshot").is_none(), "{b}");
    let c = backed_up(&b).expect("a BackedUp condition");
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], reason, "{c}");
    assert!(
        c["message"].as_str().unwrap_or_default().contains(says),
        "{c}"
    );
    b
}

/// The `BackedUp` condition of a VolumeBackup.
fn backed_up(b: &Value) -> Option<Value> {
    b["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "BackedUp")
        .cloned()
}

/// The VolumeBackups of one PVC, oldest first.
async fn backups_of(env: &Env, pvc: &str) -> Vec<Value> {
    let mut v: Vec<Value> = env
        .list(
            &backups_ar(),
            true,
            Some(&format!("volbackup.io/pvc={pvc}")),
        )
        .await;
    v.sort_by_key(|b| b["status"]["startTime"].as_str().unwrap_or("").to_string());
    v
}

/// Fails when any event in the test namespace holds one of `secrets`.
async fn assert_no_secret_in_events(env: &Env, secrets: &[&str]) {
    let events = env.list(&ar("", "v1", "Event", "events"), true, None).await;
    let text = serde_json::to_string(&events).unwrap();
    for s in secrets {
        assert!(!text.contains(s), "an event holds a secret value");
    }
}

/// Polls until no VolumeSnapshotContent is left in the cluster.
async fn assert_no_snapshot_contents_left(env: &Env) {
    let contents = ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = env.list(&contents, false, None).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "VolumeSnapshotContents left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Total bytes of the pack files in a local repository (a file renamed or removed while it is
/// read, as during an upload, is passed over).
fn pack_bytes(repo: &Path) -> u64 {
    let mut total = 0;
    for sub in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            total += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}
