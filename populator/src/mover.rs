//! The mover pod, one template for both directions: the backup mover (`mover backup`, started
//! by `create` in the PVC's namespace) and the populate pod (`mover restore`, started by the
//! populator in its own namespace). Also the one place that names the project's image.
//!
//! The security context is the least each direction needs under a real kubelet (runc or crun
//! with the runtime's default capability set):
//! - every mover runs as root (uid 0: a Block volume's device node belongs to root and only
//!   root can open it; file owners are read and restored by number), with no privilege
//!   escalation, a read-only root filesystem, the `RuntimeDefault` seccomp profile and every
//!   capability dropped except:
//!   - reading a Filesystem volume: `DAC_OVERRIDE` (read every file and directory whatever
//!     its owner and mode);
//!   - restoring a Filesystem volume: `CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID` (owners,
//!     modes with set-id bits and times of files it does not own), `MKNOD` (device nodes) and
//!     `SETFCAP` (file capabilities);
//!   - reading or writing a Block volume: none;
//! - so every mover meets the Pod Security `baseline` level and none meets `restricted`
//!   (which forbids uid 0). `create` therefore refuses at once in a namespace that enforces
//!   `restricted`, and `install` labels the populator's namespace `baseline`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The image repository of the project's one image.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/volbackup/volbackup";

/// The environment variable that overrides the image everywhere (`--image` wins over it).
pub const IMAGE_ENV: &str = "VOLBACKUP_IMAGE";

/// How long a mover pod waits for a lock another process holds (a prune) before it fails
/// (`--retry-lock`): a prune is routine, and a restore that fails because of one would spend
/// one of its attempts on it.
pub const LOCK_WAIT: &str = "30m";

/// The image of this version: `ghcr.io/volbackup/volbackup:<version>`.
pub fn default_image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Which way the data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Volume to repository.
    Backup,
    /// Repository to volume.
    Restore,
}

/// Where a Block volume appears and where a Filesystem volume is mounted.
#[derive(Debug, Clone, Copy)]
pub struct Paths {
    /// Device path for a Block volume.
    pub device: &'static str,
    /// Mount path for a Filesystem volume.
    pub mount: &'static str,
}

/// What differs between two mover pods.
#[derive(Debug, Clone)]
pub struct MoverPod {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Container image.
    pub image: String,
    /// Backup or restore.
    pub direction: Direction,
    /// The volume is a Block volume.
    pub block: bool,
    /// The claim to read or write.
    pub claim: String,
    /// Where the volume appears in the pod.
    pub paths: Paths,
    /// The Secret whose keys become the mover's environment (repository settings).
    pub secret: String,
    /// The mover's arguments (`mover backup ...`, `mover restore ...`).
    pub args: Vec<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// Pin to a node (WaitForFirstConsumer volumes).
    pub node_name: Option<String>,
    /// A repository that is a directory of the node (see [`local_repository`]): mounted from
    /// the node at the same path.
    pub repository_dir: Option<String>,
}

/// The directory of a repository location that is a local path (`/srv/backups`), or `None`
/// for object storage. A pod reaches such a repository only through a `hostPath` volume (a
/// directory every node mounts, NFS for example), which Pod Security `baseline` refuses: use
/// object storage in namespaces that enforce it.
pub fn local_repository(location: &str) -> Option<String> {
    location.starts_with('/').then(|| location.to_string())
}

/// The repository location named by a repository Secret's data.
pub fn secret_location(
    data: &BTreeMap<String, k8s_openapi::ByteString>,
    string_data: &BTreeMap<String, String>,
) -> Option<String> {
    ["VOLBACKUP_REPOSITORY", "RESTIC_REPOSITORY"]
        .iter()
        .find_map(|k| {
            string_data.get(*k).cloned().or_else(|| {
                data.get(*k)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            })
        })
}

/// The name of the repository Secret for a repository location: one Secret per repository
/// (`volbackup-repo-` and 12 hex digits of the location's SHA-256), so that a backup written to
/// another repository, with another password, never repoints the Secret older records name.
pub fn repository_secret_name(location: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(location.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("volbackup-repo-{}", &hex[..12])
}

/// Marks a Secret the plugin wrote for a repository (label key; value `"true"`). The populator
/// uses no other Secret.
pub const REPOSITORY_LABEL: &str = "volbackup.io/repository";

/// The label earlier versions put on the repository Secrets they wrote: still accepted, so
/// that their backups restore.
pub const LEGACY_MARK: (&str, &str) = ("app.kubernetes.io/managed-by", "volbackup");

/// The capabilities a mover adds after dropping all of them.
pub fn capabilities(direction: Direction, block: bool) -> &'static [&'static str] {
    match (direction, block) {
        (_, true) => &[],
        (Direction::Backup, false) => &["DAC_OVERRIDE"],
        (Direction::Restore, false) => &[
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "MKNOD",
            "SETFCAP",
        ],
    }
}

/// The Pod Security level every mover pod meets (see the module docs).
pub const MOVER_LEVEL: &str = "baseline";

/// The pod.
pub fn pod(p: &MoverPod) -> Pod {
    let mut container = json!({
        "name": match p.direction { Direction::Backup => "mover", Direction::Restore => "populate" },
        "image": p.image,
        "args": p.args,
        "envFrom": [{"secretRef": {"name": p.secret}}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": capabilities(p.direction, p.block)},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    let read_only = p.direction == Direction::Backup;
    if p.block {
        container["volumeDevices"] = json!([{"name": "volume", "devicePath": p.paths.device}]);
    } else {
        container["volumeMounts"] =
            json!([{"name": "volume", "mountPath": p.paths.mount, "readOnly": read_only}]);
    }
    let mut claim = json!({"claimName": p.claim});
    if read_only {
        claim["readOnly"] = json!(true);
    }
    let mut volumes = vec![json!({"name": "volume", "persistentVolumeClaim": claim})];
    if let Some(dir) = &p.repository_dir {
        let mounts = container
            .as_object_mut()
            .expect("object")
            .entry("volumeMounts")
            .or_insert_with(|| json!([]));
        if let Some(m) = mounts.as_array_mut() {
            m.push(json!({"name": "repository", "mountPath": dir}));
        }
        volumes.push(json!({"name": "repository", "hostPath": {"path": dir, "type": "Directory"}}));
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    });
    if let Some(node) = &p.node_name {
        spec["nodeName"] = json!(node);
    }
    let mut meta = json!({"name": p.name, "namespace": p.namespace, "labels": p.labels});
    if !p.annotations.is_empty() {
        meta["annotations"] = json!(p.annotations);
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
    )
    .expect("a mover pod always deserializes")
}

/// The container's security context of a pod built here (for tests and messages).
pub fn container_security(pod: &Pod) -> Value {
    serde_json::to_value(pod)
        .ok()
        .and_then(|v| v.pointer("/spec/containers/0/securityContext").cloned())
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mover(direction: Direction, block: bool) -> MoverPod {
        MoverPod {
            name: "m".into(),
            namespace: "ns".into(),
            image: "img:1".into(),
            direction,
            block,
            claim: "c".into(),
            paths: Paths {
                device: "/dev/x",
                mount: "/data",
            },
            secret: "s".into(),
            args: vec!["mover".into()],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            node_name: None,
            repository_dir: None,
        }
    }

    #[test]
    fn a_backup_reads_the_volume_read_only_with_only_dac_override() {
        let p = serde_json::to_value(pod(&mover(Direction::Backup, false))).unwrap();
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["readOnly"],
            true
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["DAC_OVERRIDE"])
        );
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            p["spec"]["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }

    #[test]
    fn a_restore_writes_owners_and_device_nodes_and_a_block_mover_adds_nothing() {
        let p = serde_json::to_value(pod(&mover(Direction::Restore, false))).unwrap();
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["volumeMounts"][0]["readOnly"], false);
        assert!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]
                .get("readOnly")
                .is_none()
        );
        for cap in ["CHOWN", "FOWNER", "MKNOD"] {
            assert!(
                c["securityContext"]["capabilities"]["add"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(cap))
            );
        }
        let p = serde_json::to_value(pod(&mover(Direction::Restore, true))).unwrap();
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["add"], json!([]));
        assert_eq!(c["volumeDevices"][0]["devicePath"], "/dev/x");
    }

    #[test]
    fn a_local_repository_is_mounted_from_the_node_and_object_storage_is_not() {
        let mut m = mover(Direction::Backup, true);
        m.repository_dir = local_repository("/srv/backups");
        let p = serde_json::to_value(pod(&m)).unwrap();
        assert_eq!(p["spec"]["volumes"][1]["hostPath"]["path"], "/srv/backups");
        assert_eq!(
            p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/srv/backups"
        );
        assert_eq!(local_repository("s3:https://h/b"), None);
    }

    #[test]
    fn the_image_of_this_version_is_named_in_one_place() {
        assert_eq!(
            default_image(),
            format!("ghcr.io/volbackup/volbackup:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
