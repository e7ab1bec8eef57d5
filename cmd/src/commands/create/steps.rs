//! The steps of one backup, each its own function: the VolumeSnapshot, the temporary claim
//! from it, the mover pod, and the copy, followed through the mover's log.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{AsyncBufReadExt, TryStreamExt};
use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DynamicObject, LogParams, PostParams};
use serde_json::{Value, json};
use volbackup_populator::api::VolumeInfo;
use volbackup_populator::contract::{BackupSummary, MoverLine, Summary};

use super::{Run, Target, backup_args, labels, mover_pod, temp_name};
use crate::cluster::{self, explain};
use crate::commands::record::{Record, Step};
use crate::progress;

/// Takes the backup of one target through its steps, the record saying which one it is at.
pub(super) async fn backup_steps(
    run: &Run,
    t: &Target,
    bar: &ProgressBar,
    record: &Record,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(String, BackupSummary)> {
    let tmp = temp_name(&t.info.pvc, &run.id);
    bar.set_message("waiting for the snapshot");
    let (info, restore_size) = take_snapshot(run, t, record, &tmp).await?;
    record.at(Step::Volume).await;
    bar.set_message("creating the volume");
    create_volume(run, t, record, &tmp, &info, &restore_size).await?;
    record.at(Step::Mover).await;
    bar.set_message("starting the mover");
    start_mover(run, t, record, &tmp, &info).await?;
    record.at(Step::Copy).await;
    bar.set_message("copying");
    let summary = copy(run, bar, &tmp, &t.info.namespace).await?;
    record.at(Step::Record).await;
    record.completed(&info, &summary, started).await?;
    Ok((record.name.clone(), summary))
}

/// The VolumeSnapshot, waited for until ready: gives the volume as recorded (with the
/// snapshot's handle, when it can be read) and the size of a volume made from it.
async fn take_snapshot(
    run: &Run,
    t: &Target,
    record: &Record,
    tmp: &str,
) -> Result<(VolumeInfo, String)> {
    // --timeout bounds each wait on the cluster, not the copy: a large volume takes as long as
    // it takes, and only a copy that stops making progress (--stall-timeout) is given up.
    let deadline = Instant::now() + run.timeout;
    let ns = t.info.namespace.as_str();
    let client = &run.client;
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
        let cur = snaps.get(tmp).await.map_err(|e| {
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
    Ok((info, restore_size))
}

/// The temporary claim, made from the snapshot.
async fn create_volume(
    run: &Run,
    t: &Target,
    record: &Record,
    tmp: &str,
    info: &VolumeInfo,
    restore_size: &str,
) -> Result<()> {
    let ns = t.info.namespace.as_str();
    let client = &run.client;
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
    Ok(())
}

/// The mover pod, which then owns the snapshot and the claim; waited for until it runs.
async fn start_mover(
    run: &Run,
    t: &Target,
    record: &Record,
    tmp: &str,
    info: &VolumeInfo,
) -> Result<()> {
    let ns = t.info.namespace.as_str();
    let client = &run.client;
    let mover_args = backup_args(t, info, &run.args_tags, &run.retry_lock)?;
    let mut pod = mover_pod(run, t, tmp, ns, mover_args);
    pod.metadata.owner_references = Some(serde_json::from_value(record.owner())?);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .map_err(|e| explain(e, "create", "pods", Some(ns)))?;
    cluster::give_to_pod(client, ns, tmp, &created).await?;
    let deadline = Instant::now() + run.timeout;
    wait_started(&pods, tmp, &run.image, deadline, run.timeout).await?;
    Ok(())
}

/// Follows the mover until it ends: its summary, or why it failed.
async fn copy(run: &Run, bar: &ProgressBar, tmp: &str, ns: &str) -> Result<BackupSummary> {
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), ns);
    let (summary, last_error) = follow_log(&pods, tmp, bar, run.show, run.stall).await?;
    let phase = wait_finished(&pods, tmp).await?;
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
    let summary = summary
        .of_backup()
        .context("the mover's result line is not what this version expects")?;
    Ok(summary)
}

/// One line of the mover's log, as far as `create` cares: a line of the contract, or text.
#[derive(Debug, PartialEq)]
enum LogLine {
    Mover(MoverLine),
    Text(String),
}

/// Classifies a line of the mover pod's log (pure; unit-tested).
fn parse_log_line(line: &str) -> LogLine {
    match MoverLine::parse(line) {
        Some(l) => LogLine::Mover(l),
        None => LogLine::Text(line.trim().to_string()),
    }
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

/// Follows the mover's log: returns its summary and its last other line (an error).
async fn follow_log(
    pods: &Api<Pod>,
    name: &str,
    bar: &ProgressBar,
    show: bool,
    stall: Duration,
) -> Result<(Option<Summary>, Option<String>)> {
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
        match parse_log_line(&line) {
            LogLine::Mover(MoverLine::Progress(p)) => {
                if last_done != Some(p.bytes_done) {
                    last_done = Some(p.bytes_done);
                    advanced = Instant::now();
                } else if advanced.elapsed() >= stall {
                    return Err(stalled(name, stall, last_done));
                }
                progress::show_bytes(bar, p.bytes_done, p.bytes_total);
            }
            LogLine::Mover(MoverLine::Waiting { message }) => {
                advanced = Instant::now();
                bar.set_message("waiting for the repository lock");
                if show {
                    bar.println(&message);
                }
                other = Some(message);
            }
            LogLine::Mover(MoverLine::Summary(s)) => summary = Some(s),
            // The same error follows as text on stderr, which is shown.
            LogLine::Mover(MoverLine::Error(e)) => other = Some(e.message),
            LogLine::Mover(MoverLine::Read(_)) => {}
            LogLine::Text(text) if !text.is_empty() => {
                if show {
                    bar.println(&text);
                }
                other = Some(text);
            }
            LogLine::Text(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mover_lines_are_told_apart_from_text() {
        assert!(matches!(
            parse_log_line(r#"{"type":"progress","bytes_done":5,"bytes_total":10}"#),
            LogLine::Mover(MoverLine::Progress(p)) if p.bytes_done == 5 && p.bytes_total == Some(10)
        ));
        let s = r#"{"type":"summary","snapshot_id":"ab","bytes_total":1,"bytes_new":1,"bytes_stored":1,"seconds":0.1}"#;
        match parse_log_line(s) {
            LogLine::Mover(MoverLine::Summary(s)) => assert_eq!(
                s.of_backup(),
                Some(BackupSummary {
                    snapshot_id: "ab".into(),
                    bytes_total: 1,
                    bytes_new: 1,
                    bytes_stored: 1
                })
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_log_line("error: wrong password\n"),
            LogLine::Text("error: wrong password".into())
        );
    }
}
