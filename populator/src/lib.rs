//! The `VolumeBackup` API (group `volbackup.io`, version `v1alpha1`) and the populator
//! controller that fills PVCs whose `dataSourceRef` names a `VolumeBackup`.

pub mod api;
pub mod contract;
pub mod controller;
pub mod events;
pub mod leader;
pub mod manifests;
pub mod metrics;
pub mod mover;
pub mod quantity;
pub mod state;
