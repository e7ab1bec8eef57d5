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
    /// The repository Secret: its keys in [`SECRET_KEYS`] (and no other) become the mover's
    /// environment.
    pub secret: String,
    /// The mover's arguments (`mover backup ...`, `mover restore ...`).
    pub args: Vec<String>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// The node the pod must run on (WaitForFirstConsumer volumes): a required node affinity
    /// to that node's name, so the scheduler still places the pod and its taints, resources
    /// and admission stay in force (never `spec.nodeName`, which skips them all).
    pub node_name: Option<String>,
    /// A repository that is a directory of the node (see [`local_repository`]): mounted from
    /// the node at the same path.
    pub repository_dir: Option<String>,
    /// The volume's size, which the memory limit grows with ([`memory_limit`]).
    pub volume_bytes: Option<u64>,
}

/// The directory of a repository location that is a local path (`/srv/backups`), or `None`
/// for object storage. A pod reaches such a repository only through a `hostPath` volume (a
/// directory every node mounts, NFS for example), which Pod Security `baseline` refuses: use
/// object storage in namespaces that enforce it.
pub fn local_repository(location: &str) -> Option<String> {
    location.starts_with('/').then(|| location.to_string())
}

/// Whether a repository that is a node directory may be mounted into a populate pod: only at
/// or below a directory the administrator allowed (`install --allow-node-repository DIR`),
/// compared component by component (`/srv/backups` allows `/srv/backups/a`, not
/// `/srv/backups2`), and never through a `.` or `..` component. With nothing allowed, no node
/// directory is: a repository Secret would otherwise mount any directory of the node (its
/// root, the kubelet's) into a pod that runs as root.
pub fn node_repository_allowed(dir: &str, allowed: &[String]) -> bool {
    plain_path(dir)
        && allowed
            .iter()
            .any(|a| check_node_directory(a).is_ok() && std::path::Path::new(dir).starts_with(a))
}

/// An absolute path whose every component is a name: no `.`, `..` or empty component (one
/// trailing `/` is fine). Checked on the text, since `Path` drops `.` and doubled slashes.
fn plain_path(dir: &str) -> bool {
    let trimmed = dir.strip_suffix('/').unwrap_or(dir);
    trimmed
        .strip_prefix('/')
        .is_some_and(|rest| rest.split('/').all(|c| !matches!(c, "" | "." | "..")))
}

/// Whether `dir` can be allowed as a node directory for repositories: absolute, without `.`
/// or `..` components, and not `/` itself. Says what is wrong otherwise.
pub fn check_node_directory(dir: &str) -> Result<(), String> {
    if !dir.starts_with('/') {
        return Err(format!("{dir:?} is not an absolute path"));
    }
    if dir == "/" {
        return Err("\"/\" would allow every directory of the node".to_string());
    }
    if !plain_path(dir) {
        return Err(format!("{dir:?} has a '.', '..' or empty component"));
    }
    Ok(())
}

/// The repository location named by a repository Secret's data: the one rule every reader
/// uses. `VOLBACKUP_REPOSITORY`, else `RESTIC_REPOSITORY`, an empty value skipped, as a mover
/// reads the two from its environment; for one key, `stringData` before `data`, as the API
/// server merges them.
pub fn secret_location(
    data: &BTreeMap<String, k8s_openapi::ByteString>,
    string_data: &BTreeMap<String, String>,
) -> Option<String> {
    ["VOLBACKUP_REPOSITORY", "RESTIC_REPOSITORY"]
        .iter()
        .find_map(|k| {
            string_data
                .get(*k)
                .cloned()
                .or_else(|| {
                    data.get(*k)
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                })
                .filter(|v| !v.is_empty())
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

/// The keys of a repository Secret a mover reads, and the only ones that reach its
/// environment: the repository and its password (ours and restic's names), the S3 credentials,
/// region and endpoint, a private CA, and the key hint with its copy (see `cmd`'s
/// `repository.rs`). Anything else a Secret holds (`LD_PRELOAD`, a proxy, a test knob such as
/// `VOLBACKUP_LOCK_STALE_AFTER`, `RESTIC_PASSWORD_FILE` naming a file of the pod) stays out, so
/// whoever writes a repository Secret cannot steer what a mover loads, where it connects or how
/// it treats locks.
pub const SECRET_KEYS: &[&str] = &[
    "VOLBACKUP_REPOSITORY",
    "RESTIC_REPOSITORY",
    "VOLBACKUP_PASSWORD",
    "RESTIC_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "VOLBACKUP_CACERT",
    "RESTIC_CACERT",
    "VOLBACKUP_KEY_HINT",
    "RESTIC_KEY_HINT",
    "VOLBACKUP_KEY_COPY",
];

/// The part of a repository Secret's data a mover may see ([`SECRET_KEYS`]); the rest is
/// dropped.
pub fn mover_settings<V: Clone>(data: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    data.iter()
        .filter(|(k, _)| SECRET_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

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

/// The memory limit of a mover pod whose volume's size is unknown, and the part of every
/// limit that does not grow with the volume. A mover's buffers are bounded by design, not by
/// the data (a restore holds at most 48 MiB of blobs read ahead and 16 MiB of buffers, a backup
/// two packs in flight; peaks measured at 100–200 MiB): a mover past its limit is broken, and
/// the kubelet stops it before it takes the node's memory.
pub const MEMORY_BASE_MIB: u64 = 1024;

/// What the limit grows by per TiB of the volume (or part of one): an image restore plans about
/// 180 bytes per chunk (about 180 MiB per TiB of 1 MiB chunks), a backup keeps about 100 per
/// chunk while it writes its tree, and a tree read holds about 1.5 times the tree's size.
pub const MEMORY_MIB_PER_TIB: u64 = 256;

/// The memory limit of a mover pod for a volume of `volume_bytes` (a Kubernetes quantity in
/// MiB): [`MEMORY_BASE_MIB`] plus [`MEMORY_MIB_PER_TIB`] for every started TiB, so that the
/// largest volume a backup may hold (see the README's size limits) can be restored within it.
pub fn memory_limit(volume_bytes: Option<u64>) -> String {
    const TIB: u64 = 1 << 40;
    let tib = volume_bytes.map_or(0, |b| b.div_ceil(TIB));
    format!(
        "{}Mi",
        MEMORY_BASE_MIB.saturating_add(tib.saturating_mul(MEMORY_MIB_PER_TIB))
    )
}

/// The Pod Security level every mover pod meets (see the module docs).
pub const MOVER_LEVEL: &str = "baseline";

/// The pod.
pub fn pod(p: &MoverPod) -> Pod {
    let mut container = json!({
        "name": match p.direction { Direction::Backup => "mover", Direction::Restore => "populate" },
        "image": p.image,
        "args": p.args,
        // Key by key, each optional, never `envFrom` the whole Secret (see [`SECRET_KEYS`]).
        "env": SECRET_KEYS
            .iter()
            .map(|k| json!({"name": k, "valueFrom": {"secretKeyRef": {"name": p.secret, "key": k, "optional": true}}}))
            .collect::<Vec<_>>(),
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": memory_limit(p.volume_bytes)}},
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
        spec["affinity"] = node_affinity(node);
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

/// A required node affinity to the node of this name (`metadata.name`, the field the
/// `volume.kubernetes.io/selected-node` annotation holds; the hostname label may differ from
/// it).
pub fn node_affinity(node: &str) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    ]}}})
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
            volume_bytes: None,
        }
    }

    #[test]
    fn the_memory_limit_grows_with_the_volume_so_the_largest_backup_restores() {
        assert_eq!(memory_limit(None), "1024Mi");
        assert_eq!(memory_limit(Some(10 << 30)), "1280Mi");
        assert_eq!(memory_limit(Some(1 << 40)), "1280Mi");
        assert_eq!(memory_limit(Some((1 << 40) + 1)), "1536Mi");
        // 64 TiB: 17 GiB, above the ~6 GiB an image restore at the tree limit plans with.
        assert_eq!(memory_limit(Some(64 << 40)), "17408Mi");
        assert_eq!(memory_limit(Some(u64::MAX)), "4294968320Mi");
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
    fn only_the_settings_a_mover_reads_reach_its_environment() {
        let p = serde_json::to_value(pod(&mover(Direction::Restore, true))).unwrap();
        let c = &p["spec"]["containers"][0];
        assert!(c.get("envFrom").is_none(), "the whole Secret: {c}");
        let env = c["env"].as_array().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, SECRET_KEYS);
        for e in env {
            let r = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(r["name"], "s");
            assert_eq!(r["key"], e["name"]);
            assert_eq!(r["optional"], true);
        }
        for unwanted in [
            "LD_PRELOAD",
            "HTTPS_PROXY",
            "VOLBACKUP_LOCK_STALE_AFTER",
            "RESTIC_PASSWORD_FILE",
        ] {
            assert!(!names.contains(&unwanted), "{unwanted}");
        }
    }

    #[test]
    fn a_copy_of_a_repository_secret_keeps_only_the_movers_settings() {
        let data: BTreeMap<String, String> = [
            ("VOLBACKUP_REPOSITORY", "s3:https://h/b"),
            ("VOLBACKUP_PASSWORD", "pw"),
            ("AWS_ACCESS_KEY_ID", "ak"),
            ("VOLBACKUP_KEY_COPY", "a2V5"),
            ("LD_PRELOAD", "/data/evil.so"),
            ("HTTPS_PROXY", "http://proxy.invalid:3128"),
            ("VOLBACKUP_LOCK_STALE_AFTER", "6"),
            ("RESTIC_PASSWORD_FILE", "/etc/passwd"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept: Vec<String> = mover_settings(&data).into_keys().collect();
        assert_eq!(
            kept,
            [
                "AWS_ACCESS_KEY_ID",
                "VOLBACKUP_KEY_COPY",
                "VOLBACKUP_PASSWORD",
                "VOLBACKUP_REPOSITORY"
            ]
        );
    }

    #[test]
    fn a_node_directory_is_allowed_only_at_or_below_what_the_administrator_named() {
        let allowed = vec!["/srv/backups".to_string(), "/mnt/nfs/".to_string()];
        for ok in ["/srv/backups", "/srv/backups/cluster1", "/mnt/nfs/x"] {
            assert!(node_repository_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "/srv/backups2",
            "/srv",
            "/",
            "/var/lib/kubelet",
            "/srv/backups/../../etc",
            "/srv/backups/./x",
            "/srv/backups//x",
            "srv/backups",
        ] {
            assert!(!node_repository_allowed(refused, &allowed), "{refused}");
        }
        assert!(!node_repository_allowed("/srv/backups", &[]));
        // An allowed "/" (which install refuses) would allow nothing here either.
        assert!(!node_repository_allowed("/etc", &["/".to_string()]));
        assert!(check_node_directory("/").is_err());
        assert!(check_node_directory("relative").is_err());
        assert!(check_node_directory("/a/../b").is_err());
        assert!(check_node_directory("//").is_err());
        check_node_directory("/srv/backups").unwrap();
    }

    #[test]
    fn the_image_of_this_version_is_named_in_one_place() {
        assert_eq!(
            default_image(),
            format!("ghcr.io/volbackup/volbackup:{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
