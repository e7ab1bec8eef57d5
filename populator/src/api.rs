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
    /// The restic snapshot id (64 hex digits).
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub snapshot: String,
    /// The file in the snapshot that holds a block image (`/NAME`); absent for file trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^/].*$"), length(max = 4096))]
    pub path: Option<String>,
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
    /// The backup is being taken.
    InProgress,
    /// The backup is complete and can be restored.
    Completed,
    /// The backup failed; see the conditions.
    Failed,
}

/// Observed state of a VolumeBackup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackupStatus {
    /// Where the backup stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Conditions, in the usual Kubernetes form: `Restored`, set by the populator for the latest
    /// restore from this backup (each claim's own progress and result are on the claim).
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
    /// Condition type (`Restored`).
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
