//! The object store as the simulated controllers see it: the same objects the HTTP server
//! serves, reached in-process without HTTP or authorization, the way kube-controller-manager
//! and the kubelet act with full rights. Objects are plain JSON (`serde_json::Value`) exactly as
//! they are served, so a controller reads and writes the same fields a real one would.

use serde_json::Value;

/// A resource type: API group (`""` for the core group) and plural resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// API group, `""` for core (v1).
    pub group: String,
    /// Plural lowercase resource name (`persistentvolumeclaims`).
    pub resource: String,
}

impl ResourceKey {
    /// A resource of the core group.
    pub fn core(resource: &str) -> Self {
        Self {
            group: String::new(),
            resource: resource.to_string(),
        }
    }
    /// A resource of a named group.
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// Well-known resources the controllers use.
pub mod res {
    use super::ResourceKey;
    /// v1 namespaces
    pub fn namespaces() -> ResourceKey {
        ResourceKey::core("namespaces")
    }
    /// v1 persistentvolumeclaims
    pub fn pvcs() -> ResourceKey {
        ResourceKey::core("persistentvolumeclaims")
    }
    /// v1 persistentvolumes
    pub fn pvs() -> ResourceKey {
        ResourceKey::core("persistentvolumes")
    }
    /// v1 pods
    pub fn pods() -> ResourceKey {
        ResourceKey::core("pods")
    }
    /// v1 secrets
    pub fn secrets() -> ResourceKey {
        ResourceKey::core("secrets")
    }
    /// v1 configmaps
    pub fn configmaps() -> ResourceKey {
        ResourceKey::core("configmaps")
    }
    /// v1 serviceaccounts
    pub fn serviceaccounts() -> ResourceKey {
        ResourceKey::core("serviceaccounts")
    }
    /// v1 events
    pub fn events() -> ResourceKey {
        ResourceKey::core("events")
    }
    /// v1 nodes
    pub fn nodes() -> ResourceKey {
        ResourceKey::core("nodes")
    }
    /// storage.k8s.io/v1 storageclasses
    pub fn storageclasses() -> ResourceKey {
        ResourceKey::new("storage.k8s.io", "storageclasses")
    }
    /// snapshot.storage.k8s.io/v1 volumesnapshots
    pub fn volumesnapshots() -> ResourceKey {
        ResourceKey::new("snapshot.storage.k8s.io", "volumesnapshots")
    }
    /// snapshot.storage.k8s.io/v1 volumesnapshotcontents
    pub fn volumesnapshotcontents() -> ResourceKey {
        ResourceKey::new("snapshot.storage.k8s.io", "volumesnapshotcontents")
    }
    /// snapshot.storage.k8s.io/v1 volumesnapshotclasses
    pub fn volumesnapshotclasses() -> ResourceKey {
        ResourceKey::new("snapshot.storage.k8s.io", "volumesnapshotclasses")
    }
    /// populator.storage.k8s.io/v1beta1 volumepopulators
    pub fn volumepopulators() -> ResourceKey {
        ResourceKey::new("populator.storage.k8s.io", "volumepopulators")
    }
    /// apps/v1 deployments
    pub fn deployments() -> ResourceKey {
        ResourceKey::new("apps", "deployments")
    }
}

/// An error as the API server reports it (becomes a `Status` body with this code and reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, 422, 403, ...).
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Forbidden`).
    pub reason: String,
    /// Human-readable message, worded like the real API server's.
    pub message: String,
}

/// A change to an object, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Change {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The resource type of the object.
    pub resource: ResourceKey,
    /// The object after the change (for `DELETED`, its last state).
    pub object: Value,
}

/// In-process access to the cluster's objects. All methods are cheap and never block on I/O.
pub trait ObjectStore: Send + Sync {
    /// One object, or `None`. `namespace` is `None` for cluster-scoped kinds.
    fn get(&self, r: &ResourceKey, namespace: Option<&str>, name: &str) -> Option<Value>;

    /// All objects of a kind, in one namespace (`Some`) or everywhere (`None`).
    fn list(&self, r: &ResourceKey, namespace: Option<&str>) -> Vec<Value>;

    /// Creates an object (honours `metadata.generateName`; sets uid, resourceVersion,
    /// creationTimestamp, generation). Returns the stored object.
    fn create(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError>;

    /// Replaces an object (spec and metadata; status is kept as stored). A non-empty
    /// `metadata.resourceVersion` that is not current is a 409 Conflict.
    fn update(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError>;

    /// Replaces an object's status only, like a PUT to the `status` subresource.
    fn update_status(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError>;

    /// Applies a JSON merge patch (RFC 7386) to the whole object, spec and status alike.
    fn merge_patch(
        &self,
        r: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError>;

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; without, it is
    /// removed (and its dependents are garbage-collected through ownerReferences).
    fn delete(&self, r: &ResourceKey, namespace: Option<&str>, name: &str) -> Result<(), ApiError>;

    /// Every change from now on, to all kinds. Lagging receivers lose old changes, so a
    /// controller treats a change as a nudge to re-read, never as the state itself.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;
}

/// Issues the bearer tokens that authenticate ServiceAccounts to the API server.
pub trait TokenIssuer: Send + Sync {
    /// The token a pod running as `system:serviceaccount:<namespace>:<name>` presents.
    fn service_account_token(&self, namespace: &str, name: &str) -> String;
}

/// What the simulated controllers need to know about the cluster they run in.
#[derive(Clone)]
pub struct ControllerContext {
    /// The cluster's directory. Volumes live at `dir/volumes/<pv-name>` (a file for Block, a
    /// directory for Filesystem); snapshot contents and pod scratch space live below it too.
    pub dir: std::path::PathBuf,
    /// Host of the API server as pods reach it (`127.0.0.1`).
    pub api_host: String,
    /// Port of the API server (stays the same across a simulated restart).
    pub api_port: u16,
    /// PEM of the CA that signed the API server's certificate (pods get it as `ca.crt`).
    pub ca_pem: String,
    /// Mints ServiceAccount tokens for pods.
    pub tokens: std::sync::Arc<dyn TokenIssuer>,
    /// Which host binary runs a container of an image, keyed by image name without tag or
    /// digest (`example.io/probe` -> `target/debug/kubesim-probe`): for kubesim's own test
    /// programs only. Other images are host images or pulled from a registry.
    pub images: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// The node's image service (pulls, the shared cache of root filesystems).
    pub image_service: std::sync::Arc<super::controllers::images::ImageService>,
    /// Names of the simulated nodes (at least one).
    pub nodes: Vec<String>,
}

/// Where the kubelet writes a container's stdout and stderr (appended across restarts) and
/// where `pods/log` reads them: `DIR/pods/<ns>_<name>_<uid>/<container>.log`.
pub fn pod_log_path(
    dir: &std::path::Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
) -> std::path::PathBuf {
    dir.join("pods")
        .join(format!("{namespace}_{name}_{uid}"))
        .join(format!("{container}.log"))
}
