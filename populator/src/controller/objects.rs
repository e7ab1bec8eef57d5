//! The objects the populator makes for one claim, all in its own namespace and named after the
//! claim's uid: PVC' `prime-<uid>`, the pod and the Secret `populate-<uid>`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use serde_json::json;

use super::observe::annotation;
use super::{BLOCK_TARGET, COMPONENT, Config, MOUNT_TARGET};
use crate::api::VolumeBackup;
use crate::contract::{MoverArgs, RestoreArgs};
use crate::mover;
use crate::state;

pub(super) fn prime_name(uid: &str) -> String {
    format!("prime-{uid}")
}

pub(super) fn populate_name(uid: &str) -> String {
    format!("populate-{uid}")
}

pub(super) fn labels_for(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (state::LABEL_FOR_UID.to_string(), uid.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            COMPONENT.to_string(),
        ),
    ])
}

pub(super) fn annotations_for(ns: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(state::ANN_FOR.to_string(), format!("{ns}/{name}"))])
}

/// PVC' for a user PVC: same access modes, size, class and mode, nothing else.
/// The selected node is copied only for a WaitForFirstConsumer class (`pin`, see
/// [`populate_pod`]).
pub fn prime_claim(
    pvc: &PersistentVolumeClaim,
    namespace: &str,
    pin: bool,
) -> PersistentVolumeClaim {
    let uid = pvc.uid().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let mut annotations = annotations_for(&pvc.namespace().unwrap_or_default(), &pvc.name_any());
    if pin && let Some(node) = annotation(&pvc.metadata, state::SELECTED_NODE) {
        annotations.insert(state::SELECTED_NODE.to_string(), node.to_string());
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": prime_name(&uid),
            "namespace": namespace,
            "labels": labels_for(&uid),
            "annotations": annotations,
        },
        "spec": {
            "accessModes": spec.access_modes,
            "resources": spec.resources,
            "storageClassName": spec.storage_class_name,
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
        },
    }))
    .expect("a PVC always deserializes")
}

/// The populate pod: `mover restore --json` onto PVC' (the shared mover template). It is pinned
/// to the node the scheduler chose only for a WaitForFirstConsumer class (`pin`): on any other
/// class the annotation is the user's to write, and must not let them bypass the scheduler and
/// its taints.
pub fn populate_pod(
    pvc: &PersistentVolumeClaim,
    backup: &VolumeBackup,
    config: &Config,
    repository: Option<&str>,
    pin: bool,
) -> Pod {
    let uid = pvc.uid().unwrap_or_default();
    let block = pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    let args = MoverArgs::Restore(RestoreArgs {
        snapshot: backup.spec.snapshot.clone().unwrap_or_default(),
        target: if block { BLOCK_TARGET } else { MOUNT_TARGET }.into(),
        retry_lock: mover::LOCK_WAIT.into(),
        path: backup.spec.path.clone(),
        privileged_files: !block && backup.spec.privileged_files == Some(true),
    });
    let mut pod = mover::pod(&mover::MoverPod {
        name: populate_name(&uid),
        namespace: config.namespace.clone(),
        image: config.image.clone(),
        block,
        claim: prime_name(&uid),
        paths: mover::Paths {
            device: BLOCK_TARGET,
            mount: MOUNT_TARGET,
        },
        secret: populate_name(&uid),
        args,
        labels: labels_for(&uid),
        annotations: annotations_for(&pvc.namespace().unwrap_or_default(), &pvc.name_any()),
        node_name: annotation(&pvc.metadata, state::SELECTED_NODE)
            .filter(|_| pin)
            .map(str::to_string),
        repository_dir: repository.and_then(mover::local_repository),
        volume_bytes: pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| crate::quantity::parse_bytes(&q.0)),
    });
    if let Some(spec) = pod.spec.as_mut()
        && !config.pod_deadline.is_zero()
    {
        spec.active_deadline_seconds = Some(config.pod_deadline.as_secs() as i64);
    }
    if let Some(spec) = pod.spec.as_mut()
        && let Some(c) = spec.containers.first_mut()
    {
        c.env
            .get_or_insert_with(Vec::new)
            .extend(config.pod_env.iter().map(|(name, value)| {
                k8s_openapi::api::core::v1::EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                }
            }));
    }
    pod
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::{backup, claim, config};
    use super::*;

    #[test]
    fn the_prime_claim_copies_modes_size_class_and_node_and_nothing_else() {
        let p =
            serde_json::to_value(prime_claim(&claim("Block"), "volbackup-system", true)).unwrap();
        assert_eq!(p["metadata"]["name"], "prime-u-1");
        assert_eq!(p["metadata"]["namespace"], "volbackup-system");
        assert_eq!(p["metadata"]["annotations"][state::ANN_FOR], "app/data");
        assert_eq!(p["metadata"]["annotations"][state::SELECTED_NODE], "node-2");
        assert_eq!(p["metadata"]["labels"][state::LABEL_FOR_UID], "u-1");
        assert_eq!(p["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(p["spec"]["resources"]["requests"]["storage"], "2Gi");
        assert_eq!(p["spec"]["storageClassName"], "fast");
        assert_eq!(p["spec"]["volumeMode"], "Block");
        assert!(p["spec"].get("dataSourceRef").is_none());
        // Not for a class that binds at once: the annotation is then only the user's word.
        let p =
            serde_json::to_value(prime_claim(&claim("Block"), "volbackup-system", false)).unwrap();
        assert!(
            p["metadata"]["annotations"]
                .get(state::SELECTED_NODE)
                .is_none()
        );
    }

    #[test]
    fn the_populate_pod_restores_onto_the_device_or_the_mount_on_the_chosen_node() {
        let pod = serde_json::to_value(populate_pod(
            &claim("Block"),
            &backup(Some("/data.img")),
            &config(),
            None,
            true,
        ))
        .unwrap();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(pod["metadata"]["name"], "populate-u-1");
        // Pinned through the scheduler (taints and admission stay in force), not nodeName.
        assert!(pod["spec"].get("nodeName").is_none(), "{}", pod["spec"]);
        assert_eq!(
            pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"],
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}])
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["activeDeadlineSeconds"], 86400);
        // The limit grows with the claim: 1 GiB, and 256 MiB for its (first and only) TiB.
        assert_eq!(c["resources"]["limits"]["memory"], "1280Mi");
        assert_eq!(c["image"], "img:1");
        assert_eq!(
            c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "populate-u-1"
        );
        // The administrator's proxy, as a plain value after the Secret's keys.
        let env = c["env"].as_array().unwrap();
        assert_eq!(
            env.last().unwrap(),
            &json!({"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"})
        );
        assert_eq!(env.len(), mover::SECRET_KEYS.len() + 1);
        assert_eq!(c["volumeDevices"][0]["devicePath"], BLOCK_TARGET);
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..3], ["mover", "restore", "--json"]);
        assert!(args.windows(2).any(|w| w == ["--target", BLOCK_TARGET]));
        assert!(args.windows(2).any(|w| w == ["--path", "/data.img"]));
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "prime-u-1"
        );

        let pod = serde_json::to_value(populate_pod(
            &claim("Filesystem"),
            &backup(None),
            &config(),
            Some("s3:https://h/b"),
            false,
        ))
        .unwrap();
        // The claim names node-2, but its class binds at once: the scheduler places the pod.
        assert!(pod["spec"].get("nodeName").is_none(), "{}", pod["spec"]);
        assert!(pod["spec"].get("affinity").is_none(), "{}", pod["spec"]);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["mountPath"], MOUNT_TARGET);
        assert!(c.get("volumeDevices").is_none());
        assert!(!c["args"].as_array().unwrap().contains(&json!("--path")));
    }
}
