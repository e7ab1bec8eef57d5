//! The checked-in CRD matches the Rust type. `VOLBACKUP_UPDATE_MANIFESTS=1` rewrites it.

use std::path::PathBuf;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds/volumebackups.yaml")
}

#[test]
fn the_checked_in_volumebackup_crd_is_generated_from_the_rust_type() {
    let generated = volbackup_populator::manifests::volumebackup_crd_yaml();
    let path = checked_in();
    if std::env::var_os("VOLBACKUP_UPDATE_MANIFESTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} differs from the VolumeBackup type: run VOLBACKUP_UPDATE_MANIFESTS=1 cargo test -p volbackup-populator --test crd and commit the result",
        path.display()
    );
}

#[test]
fn the_crd_declares_the_status_subresource_and_a_structural_schema() {
    let crd: serde_json::Value =
        serde_yaml::from_str(&volbackup_populator::manifests::volumebackup_crd_yaml()).unwrap();
    assert_eq!(crd["spec"]["group"], "volbackup.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    // The snapshot id comes when the backup completes: the record exists before it.
    assert_eq!(required, ["repository"]);
    assert_eq!(
        spec["properties"]["snapshot"]["pattern"], "^[0-9a-f]{64}$",
        "{spec}"
    );
}
