//! Generated manifests. The CRD YAML checked in under `manifests/` is produced from the Rust
//! types here; a test fails when the two drift apart.

use kube::CustomResourceExt;

use crate::api::VolumeBackup;

/// The VolumeBackup CRD as YAML, as checked in at `manifests/crds/volumebackups.yaml`.
pub fn volumebackup_crd_yaml() -> String {
    let crd = VolumeBackup::crd();
    let body = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated from populator/src/api.rs; do not edit. Regenerate with:\n#   VOLBACKUP_UPDATE_MANIFESTS=1 cargo test -p volbackup-populator --test crd\n{body}"
    )
}
