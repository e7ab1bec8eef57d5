//! The `VolumeBackup` API (group `volbackup.io`, version `v1alpha1`) and, later, the populator
//! controller that fills PVCs whose `dataSourceRef` names a `VolumeBackup`.

pub mod api;
pub mod manifests;
