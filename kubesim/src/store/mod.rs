//! The in-memory object store: what etcd plus the generic registry and a few admission
//! plugins and core controllers do in a real control plane.
//!
//! Semantics and their sources:
//! - uid, resourceVersion, generation, creationTimestamp, generateName, deletionTimestamp:
//!   "Object Names and IDs", "API concepts: resource versions" and the ObjectMeta reference
//!   (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions,
//!   https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/).
//!   resourceVersion is one global counter (like etcd's revision), served as a string.
//! - An update whose resourceVersion is stale is a 409 Conflict (optimistic concurrency,
//!   "API concepts: resource versions").
//! - An update that changes nothing is a no-op: it keeps the resourceVersion and sends no
//!   watch event (`k8s.io/apiserver/pkg/registry/generic/registry/store.go`, GuaranteedUpdate
//!   short-circuits unchanged objects).
//! - Finalizers: "Finalizers" and "Using Finalizers to Control Deletion"
//!   (https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/): deleting an
//!   object with finalizers only sets deletionTimestamp; the object goes when the last
//!   finalizer is removed; no finalizers may be added once deletion started.
//! - Garbage collection through ownerReferences, background, foreground and orphan
//!   propagation: "Garbage Collection" and "Use Cascading Deletion"
//!   (https://kubernetes.io/docs/concepts/architecture/garbage-collection/). Simplified: the
//!   collector runs synchronously after every write instead of from an informer.
//! - Namespace deletion deletes every object in the namespace, then the namespace
//!   ("Namespaces", namespace controller: https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/);
//!   creating in a terminating namespace is Forbidden (NamespaceLifecycle admission).
//! - The ServiceAccount controller keeps a `default` ServiceAccount in every namespace
//!   (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#serviceaccount-controller).
//! - The ServiceAccount admission plugin rejects pods whose ServiceAccount does not exist and
//!   defaults `serviceAccountName` to `default`
//!   (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#serviceaccount-admission-controller).
//! - PVC `dataSource`/`dataSourceRef` mirroring and spec immutability:
//!   `pkg/api/persistentvolumeclaim/util.go` (NormalizeDataSources) and
//!   `pkg/apis/core/validation` (ValidatePersistentVolumeClaimUpdate).
//! - CRDs: an applied CRD serves its kind; objects are defaulted, pruned and validated against
//!   its structural schema (see `schema.rs`); deleting a CRD deletes its objects first
//!   (finalizer `customresourcecleanup.apiextensions.k8s.io`).
//!
//! Here: the state, reads and watches, and the `ObjectStore` the controllers use; admission in
//! `admission`, writes in `writes`, the controllers that run after a write in `housekeeping`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::api::{ApiError, Change, ObjectStore, ResourceKey};
use super::errors::{self, group_kind};
use super::patch;
use super::podsecurity;
use super::registry::{self, ResourceType};
use super::schema;

mod admission;
mod housekeeping;
mod writes;

/// How many changes are kept for watches that resume from a resourceVersion.
const HISTORY: usize = 20_000;

/// A change as HTTP watches see it: with its resourceVersion and the previous state (so a
/// selector watch can turn "stopped matching" into DELETED).
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// Storage key.
    pub key: ResourceKey,
    /// The object after the change.
    pub object: Value,
    /// The object before the change, if any.
    pub old: Option<Value>,
}

/// The changes a watch replays and the receiver of the later ones.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: status is kept as stored for kinds with a status subresource.
    Main,
    /// The `status` subresource: only status changes.
    Status,
    /// Everything (in-process controllers' merge patch).
    All,
}

/// Options of a write.
#[derive(Debug, Clone, Copy)]
pub struct WriteOpts {
    /// `?dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// Which part is written.
    pub part: Part,
    /// The write came through HTTP (admission rules that only API clients meet apply).
    pub http: bool,
    /// `fieldValidation=Strict`: unknown fields of custom resources are rejected.
    pub strict: bool,
}

impl WriteOpts {
    /// A write of the main resource.
    pub fn main() -> Self {
        Self {
            dry_run: false,
            part: Part::Main,
            http: false,
            strict: false,
        }
    }
}

/// Delete options (the DeleteOptions body and query parameters).
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `Background` (default), `Foreground`, `Orphan`.
    pub propagation: Option<String>,
    /// `preconditions.uid`
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`
    pub resource_version: Option<String>,
    /// `dryRun`
    pub dry_run: bool,
    /// `gracePeriodSeconds` (pods only; 0 deletes at once).
    pub grace_period: Option<i64>,
}

struct State {
    rv: u64,
    objects: HashMap<ResourceKey, BTreeMap<(String, String), Value>>,
    history: VecDeque<Arc<Event>>,
    trimmed_upto: u64,
    history_limit: usize,
    crd_types: Vec<ResourceType>,
    applied: HashMap<(String, String), Value>,
    changes: broadcast::Sender<Change>,
    events: broadcast::Sender<Arc<Event>>,
}

/// The object store.
pub struct Store {
    state: Mutex<State>,
    builtins: Vec<ResourceType>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        ["8", "9", "a", "b"][(b[8] & 3) as usize],
        &h[17..20],
        &h[20..32]
    )
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let o = obj.as_object_mut().expect("object");
    if !o.get("metadata").is_some_and(Value::is_object) {
        o.insert("metadata".into(), json!({}));
    }
    o.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata object")
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// An object being deleted whose last finalizer is gone and whose grace period is over
/// (`ShouldDeleteDuringUpdate` in the generic registry).
fn ready_to_go(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers(obj).is_empty()
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

fn rv_of(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// DNS-1123 subdomain (`metadata.name` of most kinds).
fn valid_subdomain(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// DNS-1123 label (namespace names).
fn valid_label(n: &str) -> bool {
    n.len() <= 63 && !n.contains('.') && valid_subdomain(n)
}

fn name_error(rt: &ResourceType, name: &str) -> Option<String> {
    if rt.group == "rbac.authorization.k8s.io" {
        // Path segment names: `ValidatePathSegmentName`.
        if name == "." || name == ".." || name.contains('/') || name.contains('%') {
            return Some(format!(
                "Invalid value: \"{name}\": may not contain '/' or '%'"
            ));
        }
        return None;
    }
    if rt.plural == "namespaces" {
        if !valid_label(name) {
            return Some(format!(
                "Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ));
        }
        return None;
    }
    if !valid_subdomain(name) {
        return Some(format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ));
    }
    None
}

/// The part of an object whose change bumps `metadata.generation`.
fn spec_part(obj: &Value, rt: &ResourceType) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    o
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, kind: &'static str, key: &ResourceKey, object: &Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            rv: rv_of(object),
            kind,
            key: key.clone(),
            object: object.clone(),
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.trimmed_upto = e.rv;
            }
        }
        let _ = self.events.send(ev);
        let _ = self.changes.send(Change {
            kind,
            resource: key.clone(),
            object: object.clone(),
        });
    }

    fn bucket(&mut self, key: &ResourceKey) -> &mut BTreeMap<(String, String), Value> {
        self.objects.entry(key.clone()).or_default()
    }

    fn get(&self, key: &ResourceKey, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)
            .and_then(|b| b.get(&(ns.to_string(), name.to_string())))
    }
}

/// The first label value that is not a valid label value (`apimachinery` validation: at most
/// 63 characters, alphanumerics with `-`, `_`, `.` inside), as the API server words it.
fn label_value_error(obj: &Value) -> Option<String> {
    let labels = obj.pointer("/metadata/labels")?.as_object()?;
    for v in labels.values() {
        let v = v.as_str().unwrap_or("");
        if v.len() > 63 {
            return Some(format!(
                "Invalid value: \"{v}\": must be no more than 63 characters"
            ));
        }
        let inner_ok = v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let ends_ok = v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if !inner_ok || !ends_ok {
            return Some(format!(
                "Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    None
}

/// The default StorageClass (annotation `storageclass.kubernetes.io/is-default-class`), the
/// newest when several are marked, as the DefaultStorageClass admission plugin picks it.
fn default_storage_class(st: &State) -> Option<String> {
    st.objects
        .get(&ResourceKey::new("storage.k8s.io", "storageclasses"))?
        .values()
        .filter(|c| {
            c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                .and_then(Value::as_str)
                == Some("true")
        })
        .max_by_key(|c| {
            (
                meta_str(c, "creationTimestamp").unwrap_or("").to_string(),
                meta_str(c, "name").unwrap_or("").to_string(),
            )
        })
        .and_then(|c| meta_str(c, "name").map(str::to_string))
}

impl Store {
    /// An empty store with the built-in kinds.
    pub fn new() -> Arc<Self> {
        let (changes, _) = broadcast::channel(65_536);
        let (events, _) = broadcast::channel(65_536);
        Arc::new(Store {
            state: Mutex::new(State {
                rv: 1,
                objects: HashMap::new(),
                history: VecDeque::new(),
                trimmed_upto: 0,
                history_limit: HISTORY,
                crd_types: Vec::new(),
                applied: HashMap::new(),
                changes,
                events,
            }),
            builtins: registry::builtins(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every served resource type (built-in and from CRDs).
    pub fn types(&self) -> Vec<ResourceType> {
        let st = self.lock();
        let mut v = self.builtins.clone();
        v.extend(st.crd_types.iter().cloned());
        v
    }

    /// The type served at `group/version/plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type of a storage key (the first served version).
    pub fn type_for_key(&self, key: &ResourceKey) -> Option<ResourceType> {
        let st = self.lock();
        Self::type_in(&self.builtins, &st, key)
    }

    fn type_in(builtins: &[ResourceType], st: &State, key: &ResourceKey) -> Option<ResourceType> {
        builtins
            .iter()
            .chain(st.crd_types.iter())
            .find(|t| t.group == key.group && t.plural == key.resource)
            .cloned()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// One object, or 404.
    pub fn get_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let st = self.lock();
        st.get(&rt.key(), ns.unwrap_or(""), name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))
    }

    /// All objects of a kind in a namespace or everywhere, and the list's resourceVersion.
    pub fn list_objs(&self, key: &ResourceKey, ns: Option<&str>) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .get(key)
            .map(|b| {
                b.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, st.rv)
    }

    /// Changes after `rv` (for watches), plus a receiver for later ones. 410 if `rv` is older
    /// than the kept history.
    pub fn watch_from(&self, rv: u64) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        if rv < st.trimmed_upto {
            let oldest = st.history.front().map(|e| e.rv).unwrap_or(st.rv);
            return Err(errors::expired(rv, oldest));
        }
        let past = st.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Ok((past, st.events.subscribe()))
    }

    /// The current objects of a kind and a receiver for the changes after them, atomically.
    pub fn snapshot_and_watch(
        &self,
        key: &ResourceKey,
        ns: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Arc<Event>>) {
        let st = self.lock();
        let items = st
            .objects
            .get(key)
            .map(|b| {
                b.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, st.rv, st.events.subscribe())
    }

    /// How many changes watches can resume from (default 20000); older resourceVersions get
    /// 410 Gone, like a compacted etcd. Lower it in tests of that path.
    pub fn set_history_limit(&self, n: usize) {
        self.lock().history_limit = n.max(1);
    }
}

fn obj_storage_versions(spec: &Value) -> Vec<String> {
    spec.get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn key_type(store: &Store, r: &ResourceKey) -> Result<ResourceType, ApiError> {
    store
        .type_for_key(r)
        .ok_or_else(|| errors::not_found("resource", &r.resource))
}

impl ObjectStore for Store {
    fn get(&self, r: &ResourceKey, namespace: Option<&str>, name: &str) -> Option<Value> {
        let st = self.lock();
        st.get(r, namespace.unwrap_or(""), name).cloned()
    }

    fn list(&self, r: &ResourceKey, namespace: Option<&str>) -> Vec<Value> {
        self.list_objs(r, namespace).0
    }

    fn create(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError> {
        let rt = key_type(self, r)?;
        let ns = meta_str(&object, "namespace").map(str::to_string);
        self.create_obj(&rt, ns.as_deref(), object, WriteOpts::main())
    }

    fn update(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError> {
        let rt = key_type(self, r)?;
        let ns = meta_str(&object, "namespace").map(str::to_string);
        let name = meta_str(&object, "name").unwrap_or("").to_string();
        self.update_obj(&rt, ns.as_deref(), &name, object, WriteOpts::main())
    }

    fn update_status(&self, r: &ResourceKey, object: Value) -> Result<Value, ApiError> {
        let rt = key_type(self, r)?;
        let ns = meta_str(&object, "namespace").map(str::to_string);
        let name = meta_str(&object, "name").unwrap_or("").to_string();
        self.update_obj(
            &rt,
            ns.as_deref(),
            &name,
            object,
            WriteOpts {
                dry_run: false,
                part: Part::Status,
                http: false,
                strict: false,
            },
        )
    }

    fn merge_patch(
        &self,
        r: &ResourceKey,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let rt = key_type(self, r)?;
        self.modify(
            &rt,
            namespace,
            name,
            WriteOpts {
                dry_run: false,
                part: Part::All,
                http: false,
                strict: false,
            },
            |cur| {
                let mut new = cur.clone();
                json_patch::merge(&mut new, patch);
                Ok(new)
            },
        )
    }

    fn delete(&self, r: &ResourceKey, namespace: Option<&str>, name: &str) -> Result<(), ApiError> {
        let rt = key_type(self, r)?;
        // The kubelet's final delete of a pod that is already terminating has grace 0.
        let terminating = self
            .get(r, namespace, name)
            .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some());
        let grace_period = if terminating { Some(0) } else { None };
        self.delete_obj(
            &rt,
            namespace,
            name,
            DeleteOpts {
                grace_period,
                ..DeleteOpts::default()
            },
        )
        .map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.lock().changes.subscribe()
    }
}
