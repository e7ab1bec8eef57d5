//! The `VolumeBackup` custom resource: the handle of one backup of one volume.
//!
//! The spec says where the data is (the repository Secret and the snapshot id); the status
//! describes the volume it came from, so a restore can recreate a matching PVC, and the
//! progress of whatever is happening to it. The same description is stored in the repository
//! snapshot, so the repository alone is enough to restore in another cluster.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of our kinds.
pub const GROUP: &str = "volbackup.io";
/// API version of our kinds.
pub const VERSION: &str = "v1alpha1";

/// A backup of one volume in a restic-format repository.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "volbackup.io",
    version = "v1alpha1",
    kind = "VolumeBackup",
    plural = "volumebackups",
    singular = "volumebackup",
    shortname = "vbk",
    namespaced,
    status = "VolumeBackupStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".status.volume.pvc"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".spec.snapshot"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.volume.capacity"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupSpec {
    /// Where the backup is stored.
    pub repository: RepositoryRef,
    /// The restic snapshot id (64 hex digits). Absent while the backup is taken, and on a
    /// backup that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub snapshot: Option<String>,
    /// The file in the snapshot that holds a block image (`/NAME`); absent for file trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^/].*$"), length(max = 4096))]
    pub path: Option<String>,
    /// Restores of this file tree also recreate what grants privilege: device nodes,
    /// set-user-id and set-group-id bits of files, and file capabilities. Absent or false (the
    /// default): those are left out. Ignored for block images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged_files: Option<bool>,
}

/// The repository of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRef {
    /// A Secret in the VolumeBackup's namespace with the repository settings
    /// (`VOLBACKUP_REPOSITORY` or `RESTIC_REPOSITORY`, `VOLBACKUP_PASSWORD` or
    /// `RESTIC_PASSWORD`, and `AWS_*` keys for S3).
    pub secret_ref: SecretRef,
    /// Where the backup was written (the repository URL or path, never credentials). A
    /// restore refuses a Secret that points anywhere else (`RepositoryMismatch`): the snapshot
    /// would be looked for in the wrong repository. Absent on records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub location: Option<String>,
}

/// A Secret in the same namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
}

/// Where a VolumeBackup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// `create` is taking the backup: the condition `BackedUp` (`Unknown`) names the step, the
    /// annotation `volbackup.io/heartbeat` when that `create` was last heard from, and the
    /// temporary snapshot, claim and pod carry this VolumeBackup as their owner.
    InProgress,
    /// The backup is complete and can be restored.
    Completed,
    /// The backup failed: the condition `BackedUp` (`False`) gives the failing step as its
    /// reason and the error as its message. Deleting it removes whatever it left.
    Failed,
}

/// The condition `create` keeps on a backup it takes: `Unknown` with the step it is at, `True`
/// when complete, `False` with the failing step (`SnapshotFailed`, `VolumeFailed`,
/// `MoverFailed`, `CopyFailed`, `RecordFailed`, `Interrupted`, `Abandoned`).
pub const BACKED_UP: &str = "BackedUp";

/// Annotation on a backup being taken: when its `create` last said it is alive (RFC 3339).
pub const ANN_HEARTBEAT: &str = "volbackup.io/heartbeat";

/// How often a running `create` renews its heartbeat.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A backup whose `create` has not been heard from for this long was abandoned (the process
/// was killed, or lost the cluster): `cleanup` and `delete` may then remove what it left.
pub const HEARTBEAT_STALE: std::time::Duration = std::time::Duration::from_secs(60);

impl VolumeBackup {
    /// The phase, `None` when no status was written yet.
    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// A backup that is not finished (`InProgress`, or created without a status yet) and whose
    /// `create` was heard from less than [`HEARTBEAT_STALE`] ago (by `now`). `create` writes
    /// the heartbeat with the record, so one without it was not written by a running `create`.
    pub fn is_being_taken(&self, now: chrono::DateTime<chrono::Utc>) -> bool {
        if matches!(self.phase(), Some(Phase::Completed | Phase::Failed)) {
            return false;
        }
        let last = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_HEARTBEAT))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc());
        last.is_some_and(|t| {
            now.signed_duration_since(t)
                .to_std()
                .map_or(true, |age| age < HEARTBEAT_STALE)
        })
    }

    /// The first 8 digits of the snapshot id (empty while there is none).
    pub fn short_snapshot(&self) -> &str {
        let id = self.spec.snapshot.as_deref().unwrap_or_default();
        &id[..id.len().min(8)]
    }

    /// The condition of this type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
    }
}

/// Observed state of a VolumeBackup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    /// Where the backup stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Conditions, in the usual Kubernetes form: `BackedUp`, set by `create` (the step it is
    /// at, or why it failed), and `Restored`, set by the populator for the latest restore from
    /// this backup (each claim's own progress and result are on the claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Progress of the latest restore (each claim has its own in the annotation
    /// `volbackup.io/populate-progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The volume the backup was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeInfo>,
    /// Bytes read from the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Bytes the repository did not have yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_new: Option<u64>,
    /// Bytes added to the repository (compressed and encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    /// When the backup started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// A condition, as in `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type (`BackedUp` or `Restored`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// What happened, for people. Never contains secret values.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The conditions of `backup` (none without one) with the condition `type_` set to this
/// status, reason and message, the others kept: replaced in place, its transition time kept
/// while the status stays the same, else `now` (RFC 3339). Both condition writers, `create`
/// (`BackedUp`) and the populator (`Restored`), go through here.
pub fn upsert_condition(
    backup: Option<&VolumeBackup>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: String,
) -> Vec<Condition> {
    let mut conditions = backup
        .and_then(|b| b.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let transition = match previous {
        Some(i) if conditions[i].status == status => conditions[i].last_transition_time.clone(),
        _ => now,
    };
    let cond = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: transition,
        observed_generation: backup.and_then(|b| b.metadata.generation),
    };
    match previous {
        Some(i) => conditions[i] = cond,
        None => conditions.push(cond),
    }
    conditions
}

/// Bytes moved so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
}

/// The volume a backup was taken from: enough to recreate a matching PVC anywhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeInfo {
    /// Namespace of the source PVC.
    pub namespace: String,
    /// Name of the source PVC.
    pub pvc: String,
    /// The PV it was bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// Its StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The CSI driver of the PV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csi_driver: Option<String>,
    /// `Block` or `Filesystem`.
    pub volume_mode: String,
    /// Access modes of the PVC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Capacity of the volume (a Kubernetes quantity, `10Gi`).
    pub capacity: String,
    /// The CSI snapshot handle the backup was read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(phase: Option<Phase>, heartbeat: Option<&str>) -> VolumeBackup {
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
            phase,
            ..Default::default()
        });
        if let Some(h) = heartbeat {
            b.metadata.annotations = Some([(ANN_HEARTBEAT.to_string(), h.to_string())].into());
        }
        b
    }

    #[test]
    fn a_backup_is_being_taken_while_its_create_was_heard_from_within_a_minute() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .to_utc();
        let fresh = Some("2026-12-03T11:59:30Z");
        let stale = Some("2026-12-03T11:58:59Z");
        assert!(backup(Some(Phase::InProgress), fresh).is_being_taken(now));
        assert!(backup(None, fresh).is_being_taken(now));
        assert!(!backup(Some(Phase::InProgress), stale).is_being_taken(now));
        // A clock a little ahead on the machine that ran create: still alive.
        assert!(backup(Some(Phase::InProgress), Some("2026-12-03T12:00:05Z")).is_being_taken(now));
        assert!(!backup(Some(Phase::Completed), fresh).is_being_taken(now));
        assert!(!backup(Some(Phase::Failed), fresh).is_being_taken(now));
        // No heartbeat (a record written by hand): nothing says it is alive.
        assert!(!backup(Some(Phase::InProgress), None).is_being_taken(now));
    }
}
