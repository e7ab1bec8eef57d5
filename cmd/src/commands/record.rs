//! The VolumeBackup of a backup being taken: written `InProgress` before anything else, with
//! the step it is at in the `BackedUp` condition and a heartbeat, then `Completed` or `Failed`
//! with the failing step. `cleanup`, `delete` and an interrupted `create` mark unfinished ones.

use crate::cluster::explain;
use anyhow::Result;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use volbackup_populator::api::{
    ANN_HEARTBEAT, BACKED_UP, Condition, HEARTBEAT_EVERY, Phase, VolumeBackup, VolumeBackupStatus,
    VolumeInfo, upsert_condition,
};
use volbackup_populator::contract::BackupSummary;

/// The steps of one backup, as the `BackedUp` condition names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Snapshot,
    Volume,
    Mover,
    Copy,
    Record,
}

impl Step {
    /// The condition's reason while the backup is at this step.
    pub(crate) fn doing(self) -> &'static str {
        match self {
            Step::Snapshot => "TakingSnapshot",
            Step::Volume => "CreatingVolume",
            Step::Mover => "StartingMover",
            Step::Copy => "Copying",
            Step::Record => "Recording",
        }
    }

    /// The condition's reason when this step failed.
    pub(crate) fn failed(self) -> &'static str {
        match self {
            Step::Snapshot => "SnapshotFailed",
            Step::Volume => "VolumeFailed",
            Step::Mover => "MoverFailed",
            Step::Copy => "CopyFailed",
            Step::Record => "RecordFailed",
        }
    }

    /// The step, for people (the condition's message while at it).
    pub(crate) fn what(self) -> &'static str {
        match self {
            Step::Snapshot => "taking the VolumeSnapshot",
            Step::Volume => "creating the volume from the snapshot",
            Step::Mover => "starting the mover pod",
            Step::Copy => "copying the data to the repository",
            Step::Record => "recording the result",
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The backup's conditions with `BackedUp` set to this (the others kept).
pub(crate) fn with_backed_up(
    vb: Option<&VolumeBackup>,
    status: &str,
    reason: &str,
    message: String,
) -> Vec<Condition> {
    upsert_condition(vb, BACKED_UP, status, reason, message, now_rfc3339())
}

/// Annotation `completed` writes with the snapshot id, in the same write: the status it is
/// about to record (without conditions). A `create` stopped between that write and the status
/// write leaves a backup that is complete; whoever finishes the record writes this status.
pub const ANN_RESULT: &str = "volbackup.io/result";

/// How a record that its `create` will not finish was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Marked Failed with the given reason.
    Failed,
    /// Its spec names the snapshot (the `create` stopped after recording it): marked Completed.
    Completed,
    /// Finished by someone else meanwhile (its `create`, another cleanup): left as it is.
    AlreadyFinished,
    /// Heard from again meanwhile, and `respect_heartbeat` was asked: left alone.
    BeingTaken,
    /// Deleted meanwhile.
    Gone,
}

/// How many times a record that keeps changing under us is read again.
const FINISH_ATTEMPTS: usize = 10;

/// The status that marks a backup Completed from its spec's snapshot and the result `completed`
/// stored with it (else what the record shows).
fn completed_status(vb: &VolumeBackup) -> VolumeBackupStatus {
    let stored: Option<VolumeBackupStatus> = vb
        .annotations()
        .get(ANN_RESULT)
        .and_then(|r| serde_json::from_str(r).ok());
    let id = vb.spec.snapshot.as_deref().unwrap_or_default();
    let (base, message) = match stored {
        Some(s) => (
            s,
            format!(
                "snapshot {}: recorded after its create stopped between writing the snapshot id and the status",
                &id[..8.min(id.len())]
            ),
        ),
        None => (
            vb.status.clone().unwrap_or_default(),
            format!(
                "snapshot {}: recorded after its create stopped; the byte counts were not kept",
                &id[..8.min(id.len())]
            ),
        ),
    };
    VolumeBackupStatus {
        phase: Some(Phase::Completed),
        completion_time: base.completion_time.clone().or_else(|| Some(now_rfc3339())),
        conditions: with_backed_up(Some(vb), "True", "Completed", message),
        progress: vb.status.as_ref().and_then(|s| s.progress.clone()),
        ..base
    }
}

/// Finishes a backup that its `create` will not finish: Completed when its spec names the
/// snapshot (`completed` records it there first, so a `create` stopped after that took a
/// backup), else Failed with `reason` and the message made from the record. The write carries
/// the resourceVersion the decision was made from: when the record changed meanwhile (its
/// `create` completing it, a heartbeat), it is read again and decided anew, and one finished by
/// then is left as it is. With `respect_heartbeat`, one heard from again is left alone too.
pub async fn finish_unfinished(
    api: &Api<VolumeBackup>,
    vb: &VolumeBackup,
    reason: &str,
    message: &dyn Fn(&VolumeBackup) -> String,
    respect_heartbeat: bool,
) -> Result<Finished> {
    let ns = vb.namespace().unwrap_or_default();
    let name = vb.name_any();
    let mut current = vb.clone();
    for _ in 0..FINISH_ATTEMPTS {
        if matches!(current.phase(), Some(Phase::Completed | Phase::Failed)) {
            return Ok(Finished::AlreadyFinished);
        }
        if respect_heartbeat && current.is_being_taken(chrono::Utc::now()) {
            return Ok(Finished::BeingTaken);
        }
        let (status, outcome) = if current.spec.snapshot.is_some() {
            (completed_status(&current), Finished::Completed)
        } else {
            let status = VolumeBackupStatus {
                phase: Some(Phase::Failed),
                completion_time: Some(now_rfc3339()),
                conditions: with_backed_up(Some(&current), "False", reason, message(&current)),
                ..current.status.clone().unwrap_or_default()
            };
            (status, Finished::Failed)
        };
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": status,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(outcome),
            Err(e) if crate::cluster::is_status(&e, 409) => {}
            Err(e) if crate::cluster::is_status(&e, 404) => return Ok(Finished::Gone),
            Err(e) => return Err(explain(e, "patch", "volumebackups/status", Some(&ns))),
        }
        current = match api.get_opt(&name).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Finished::Gone),
            Err(e) => return Err(explain(e, "get", "volumebackups.volbackup.io", Some(&ns))),
        };
    }
    anyhow::bail!(
        "VolumeBackup {ns}/{name} changed {FINISH_ATTEMPTS} times while it was being marked: is another program writing it? Run the command again"
    )
}

/// What an unfinished backup was doing when last heard from (its `BackedUp` message).
pub fn last_step(vb: &VolumeBackup) -> String {
    vb.condition(BACKED_UP)
        .filter(|c| c.status == "Unknown" && !c.message.is_empty())
        .map(|c| c.message.clone())
        .unwrap_or_else(|| "starting".to_string())
}

/// Finishes every unfinished backup matching the label selector in a namespace (Failed with
/// a message made from the step it was at, or Completed when it recorded its snapshot); gives
/// their names.
pub async fn fail_unfinished(
    client: &Client,
    ns: &str,
    selector: &str,
    reason: &str,
    message: impl Fn(&str) -> String,
) -> Result<Vec<String>> {
    let api: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| explain(e, "list", "volumebackups.volbackup.io", Some(ns)))?;
    let mut names = Vec::new();
    for vb in list
        .items
        .iter()
        .filter(|b| !matches!(b.phase(), Some(Phase::Completed | Phase::Failed)))
    {
        finish_unfinished(&api, vb, reason, &|b| message(&last_step(b)), false).await?;
        names.push(vb.name_any());
    }
    Ok(names)
}

/// The VolumeBackup of one backup, written before anything else is created: `InProgress`
/// while the backup is taken (the owner of its temporary objects, with a heartbeat), then
/// `Completed` or `Failed`.
pub(crate) struct Record {
    pub(crate) api: Api<VolumeBackup>,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) step: std::sync::Mutex<Step>,
}

impl Record {
    /// The owner reference the temporary objects carry.
    pub(crate) fn owner(&self) -> Value {
        json!([{
            "apiVersion": "volbackup.io/v1alpha1",
            "kind": "VolumeBackup",
            "name": self.name,
            "uid": self.uid,
        }])
    }

    pub(crate) fn step(&self) -> Step {
        *self.step.lock().expect("step lock")
    }

    /// Moves on to a step; the condition says so (best effort: the backup goes on without).
    pub(crate) async fn at(&self, step: Step) {
        *self.step.lock().expect("step lock") = step;
        let Ok(current) = self.api.get(&self.name).await else {
            return;
        };
        let patch = json!({"status": {"conditions": with_backed_up(
            Some(&current),
            "Unknown",
            step.doing(),
            step.what().to_string(),
        )}});
        let _ = self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
    }

    /// Marks the backup Failed at the current step (Completed if its snapshot was recorded
    /// before the failure).
    pub(crate) async fn failed(&self, err: &anyhow::Error) -> Result<Finished> {
        let step = self.step();
        let current = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| explain(e, "get", "volumebackups.volbackup.io", None))?;
        let message = format!("failed while {}: {}", step.what(), crate::one_line(err));
        finish_unfinished(
            &self.api,
            &current,
            step.failed(),
            &|_| message.clone(),
            false,
        )
        .await
    }

    /// Records the snapshot and marks the backup Completed. The spec write is the one that
    /// counts: it names the snapshot and carries the status that follows (annotation
    /// [`ANN_RESULT`]), so a `create` stopped before the status write still leaves a backup
    /// that `cleanup` (or its own failure path) records as Completed, never Failed.
    pub(crate) async fn completed(
        &self,
        info: &VolumeInfo,
        summary: &BackupSummary,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let ns = info.namespace.as_str();
        let result = VolumeBackupStatus {
            phase: Some(Phase::Completed),
            volume: Some(info.clone()),
            bytes_total: Some(summary.bytes_total),
            bytes_new: Some(summary.bytes_new),
            bytes_stored: Some(summary.bytes_stored),
            start_time: Some(started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            completion_time: Some(now_rfc3339()),
            ..Default::default()
        };
        let written = self
            .api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"annotations": {ANN_RESULT: serde_json::to_string(&result)?}},
                    "spec": {"snapshot": summary.snapshot_id},
                })),
            )
            .await
            .map_err(|e| explain(e, "patch", "volumebackups.volbackup.io", Some(ns)))?;
        let status = VolumeBackupStatus {
            conditions: with_backed_up(
                Some(&written),
                "True",
                "Completed",
                format!(
                    "snapshot {}: {} read, {} new",
                    &summary.snapshot_id[..8.min(summary.snapshot_id.len())],
                    super::human_bytes(summary.bytes_total),
                    super::human_bytes(summary.bytes_new)
                ),
            ),
            ..result
        };
        self.api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|e| explain(e, "patch", "volumebackups/status", Some(ns)))?;
        Ok(())
    }
}

/// Renews the record's heartbeat until dropped, so `cleanup` and `delete` can tell a backup
/// being taken from one whose `create` is gone.
pub(crate) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    pub(crate) fn start(api: Api<VolumeBackup>, name: String) -> Heartbeat {
        Heartbeat(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            // The first tick is at once; the record was created with a fresh heartbeat.
            tick.tick().await;
            loop {
                tick.tick().await;
                let patch = json!({"metadata": {"annotations": {ANN_HEARTBEAT: now_rfc3339()}}});
                let _ = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volbackup_populator::api::{RepositoryRef, SecretRef, VolumeBackupSpec};

    fn with_conditions(conditions: Vec<Condition>) -> VolumeBackup {
        let mut b = VolumeBackup::new(
            "b",
            VolumeBackupSpec {
                repository: RepositoryRef {
                    secret_ref: SecretRef { name: "s".into() },
                    location: None,
                },
                snapshot: None,
                path: None,
                privileged_files: None,
            },
        );
        b.status = Some(VolumeBackupStatus {
            conditions,
            ..Default::default()
        });
        b
    }

    fn condition(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: at.into(),
            observed_generation: None,
        }
    }

    #[test]
    fn backed_up_is_replaced_in_place_and_the_restored_condition_kept() {
        let b = with_conditions(vec![
            condition("Restored", "True", "Restored", "2026-12-01T00:00:00Z"),
            condition(
                "BackedUp",
                "Unknown",
                "TakingSnapshot",
                "2026-12-02T00:00:00Z",
            ),
        ]);
        // Another step, same status: the transition time stays.
        let c = with_backed_up(Some(&b), "Unknown", "Copying", Step::Copy.what().into());
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].type_, "Restored");
        assert_eq!(
            (c[1].reason.as_str(), c[1].last_transition_time.as_str()),
            ("Copying", "2026-12-02T00:00:00Z")
        );
        // A new status: a new transition time.
        let c = with_backed_up(Some(&b), "False", Step::Copy.failed(), "boom".into());
        assert_eq!(c[1].status, "False");
        assert_ne!(c[1].last_transition_time, "2026-12-02T00:00:00Z");
        // The step an unfinished backup was at, for the messages of cleanup and restore.
        let mut b = with_conditions(c);
        assert_eq!(last_step(&b), "starting");
        b.status.as_mut().unwrap().conditions[1] = Condition {
            message: Step::Volume.what().into(),
            ..condition("BackedUp", "Unknown", Step::Volume.doing(), "x")
        };
        assert_eq!(last_step(&b), "creating the volume from the snapshot");
    }
}
