//! Objects for the controller's unit tests.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde_json::json;

use super::Config;
use crate::api::VolumeBackup;
use crate::state;

pub fn claim(mode: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "app", "uid": "u-1",
                     "annotations": {state::SELECTED_NODE: "node-2"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
            "storageClassName": "fast",
            "volumeMode": mode,
            "dataSourceRef": {"apiGroup": "volbackup.io", "kind": "VolumeBackup", "name": "b1"},
        },
    }))
    .unwrap()
}

pub fn backup(path: Option<&str>) -> VolumeBackup {
    serde_json::from_value(json!({
        "apiVersion": "volbackup.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": "b1", "namespace": "app"},
        "spec": {"repository": {"secretRef": {"name": "repo"}}, "snapshot": "ab".repeat(32), "path": path},
    }))
    .unwrap()
}

pub fn config() -> Config {
    Config {
        namespace: "volbackup-system".into(),
        image: "img:1".into(),
        max_attempts: 3,
        retry_backoff: Duration::from_secs(5),
        pod_env: vec![("HTTPS_PROXY".into(), "http://proxy.example:3128".into())],
        node_repositories: Vec::new(),
        stall_timeout: Duration::from_secs(600),
        pod_deadline: Duration::from_secs(86400),
        identity: "p-0".into(),
        crash_after_steps: None,
    }
}
