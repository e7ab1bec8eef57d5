//! The VolumeBackup of a backup being taken: written `InProgress` before anything else, with
//! the step it is at in the `BackedUp` condition and a heartbeat, then `Completed` or `Failed`
//! with the failing step. `cleanup`, `delete` and an interrupted `create` mark unfinished ones.

use anyhow::Result;
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use volbackup_populator::api::{
    ANN_HEARTBEAT, BACKED_UP, Condition, HEARTBEAT_EVERY, Phase, VolumeBackup, VolumeBackupStatus,
    VolumeInfo,
};

use super::create::MoverSummary;
use crate::cluster::explain;

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
    let mut conditions = vb
        .and_then(|b| b.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let previous = conditions.iter().position(|c| c.type_ == BACKED_UP);
    let transition = match previous {
        Some(i) if conditions[i].status == status => conditions[i].last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    let cond = Condition {
        type_: BACKED_UP.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: transition,
        observed_generation: vb.and_then(|b| b.metadata.generation),
    };
    match previous {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
    conditions
}

/// Marks a backup Failed with this reason and message.
pub async fn mark_failed(
    api: &Api<VolumeBackup>,
    vb: &VolumeBackup,
    reason: &str,
    message: String,
) -> Result<()> {
    let ns = vb.namespace().unwrap_or_default();
    let patch = json!({"status": {
        "phase": Phase::Failed,
        "completionTime": now_rfc3339(),
        "conditions": with_backed_up(Some(vb), "False", reason, message),
    }});
    api.patch_status(
        &vb.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(|e| explain(e, "patch", "volumebackups/status", Some(&ns)))?;
    Ok(())
}

/// What an unfinished backup was doing when last heard from (its `BackedUp` message).
pub fn last_step(vb: &VolumeBackup) -> String {
    vb.condition(BACKED_UP)
        .filter(|c| c.status == "Unknown" && !c.message.is_empty())
        .map(|c| c.message.clone())
        .unwrap_or_else(|| "starting".to_string())
}

/// Marks Failed every unfinished backup matching the label selector in a namespace, with a
/// message made from the step it was at; gives their names.
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
        mark_failed(&api, vb, reason, message(&last_step(vb))).await?;
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

    /// Marks the backup Failed at the current step.
    pub(crate) async fn failed(&self, err: &anyhow::Error) -> Result<()> {
        let step = self.step();
        let current = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| explain(e, "get", "volumebackups.volbackup.io", None))?;
        mark_failed(
            &self.api,
            &current,
            step.failed(),
            format!("failed while {}: {}", step.what(), crate::one_line(err)),
        )
        .await
    }

    /// Records the snapshot and marks the backup Completed.
    pub(crate) async fn completed(
        &self,
        info: &VolumeInfo,
        summary: &MoverSummary,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let ns = info.namespace.as_str();
        self.api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"snapshot": summary.snapshot_id}})),
            )
            .await
            .map_err(|e| explain(e, "patch", "volumebackups.volbackup.io", Some(ns)))?;
        let current = self
            .api
            .get(&self.name)
            .await
            .map_err(|e| explain(e, "get", "volumebackups.volbackup.io", Some(ns)))?;
        let status = VolumeBackupStatus {
            phase: Some(Phase::Completed),
            volume: Some(info.clone()),
            bytes_total: Some(summary.bytes_total),
            bytes_new: Some(summary.bytes_new),
            bytes_stored: Some(summary.bytes_stored),
            start_time: Some(started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            completion_time: Some(now_rfc3339()),
            conditions: with_backed_up(
                Some(&current),
                "True",
                "Completed",
                format!(
                    "snapshot {}: {} read, {} new",
                    &summary.snapshot_id[..8.min(summary.snapshot_id.len())],
                    super::human_bytes(summary.bytes_total),
                    super::human_bytes(summary.bytes_new)
                ),
            ),
            ..Default::default()
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
