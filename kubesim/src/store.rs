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

    /// Creates an object of type `rt` in namespace `ns`.
    pub fn create_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let out = self.create_locked(&mut st, rt, ns, obj, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(errors::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let gk = group_kind(&rt.group, &rt.kind);
        let ns = if rt.namespaced {
            ns.or(meta_str(&obj, "namespace"))
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if rt.namespaced
            && let Some(body_ns) = meta_str(&obj, "namespace")
            && body_ns != ns
        {
            return Err(errors::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if meta_str(&obj, "resourceVersion").is_some_and(|s| !s.is_empty()) {
            return Err(errors::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        // Name or generateName.
        let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() {
            let Some(prefix) = meta_str(&obj, "generateName").filter(|p| !p.is_empty()) else {
                return Err(errors::invalid1(
                    &gk,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            };
            // `names.SimpleNameGenerator`: five random characters from a consonant/digit alphabet.
            const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            loop {
                let suffix: String = (0..5)
                    .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
                    .collect();
                let candidate = format!("{prefix}{suffix}");
                if st.get(&rt.key(), &ns, &candidate).is_none() {
                    name = candidate;
                    break;
                }
            }
        }
        if let Some(e) = name_error(rt, &name) {
            return Err(errors::invalid1(&gk, &name, "metadata.name", &e));
        }
        if rt.namespaced {
            match st.get(&ResourceKey::core("namespaces"), "", &ns) {
                None => return Err(errors::not_found("namespaces", &ns)),
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(errors::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )));
                }
                _ => {}
            }
        }
        if st.get(&rt.key(), &ns, &name).is_some() {
            return Err(errors::already_exists(&rt.qualified(), &name));
        }
        {
            let o = obj.as_object_mut().expect("object");
            o.insert("apiVersion".into(), Value::String(rt.api_version()));
            o.insert("kind".into(), Value::String(rt.kind.clone()));
            if rt.status_subresource && rt.plural != "customresourcedefinitions" {
                o.remove("status");
            }
        }
        {
            let m = meta_mut(&mut obj);
            m.insert("name".into(), Value::String(name.clone()));
            if rt.namespaced {
                m.insert("namespace".into(), Value::String(ns.clone()));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), Value::String(new_uid()));
            m.insert("creationTimestamp".into(), Value::String(now()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            m.remove("managedFields");
        }
        self.admit(st, rt, None, &mut obj, opts)?;
        if opts.dry_run {
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(st.rv.to_string()));
            return Ok(obj);
        }
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(&rt.key()).insert((ns, name), obj.clone());
        st.emit("ADDED", &rt.key(), &obj, None);
        if rt.plural == "customresourcedefinitions" {
            Self::refresh_crds(st);
        }
        Ok(obj)
    }

    /// Defaulting, admission and validation of a new state of an object (`old` is `None` on
    /// create).
    fn admit(
        &self,
        st: &State,
        rt: &ResourceType,
        old: Option<&Value>,
        obj: &mut Value,
        opts: WriteOpts,
    ) -> Result<(), ApiError> {
        let gk = group_kind(&rt.group, &rt.kind);
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let ns = meta_str(obj, "namespace").unwrap_or("").to_string();
        if let Some(e) = label_value_error(obj) {
            return Err(errors::invalid1(&gk, &name, "metadata.labels", &e));
        }
        if let Some(crd) = &rt.crd
            && let Some(schema) = &crd.schema
        {
            let (errs, pruned) = schema::default_prune_validate(schema, obj);
            if !errs.is_empty() {
                return Err(errors::invalid(&gk, &name, &errs));
            }
            // `fieldValidation=Strict` (kubectl's default): unknown fields are an error
            // ("Field validation", https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation).
            if opts.strict && !pruned.is_empty() {
                let list: Vec<String> = pruned
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                return Err(errors::bad_request(format!(
                    "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                    list.join(", "),
                    kind = rt.kind,
                    v = rt.version
                )));
            }
        }
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") if old.is_none() => {
                let o = obj.as_object_mut().expect("object");
                o.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                o.insert("status".into(), json!({"phase": "Active"}));
                let m = meta_mut(obj);
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert(
                        "kubernetes.io/metadata.name".into(),
                        Value::String(name.clone()),
                    );
                }
            }
            ("", "persistentvolumeclaims") => {
                let spec = obj.get("spec").cloned().unwrap_or(json!({}));
                if old.is_none() {
                    if spec.pointer("/resources/requests/storage").is_none() {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.resources[storage]",
                            "Required value",
                        ));
                    }
                    if spec
                        .get("accessModes")
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.accessModes",
                            "Required value: at least 1 access mode is required",
                        ));
                    }
                    let mut spec = spec;
                    let s = spec
                        .as_object_mut()
                        .ok_or_else(|| errors::bad_request("spec must be an object"))?;
                    s.entry("volumeMode").or_insert_with(|| json!("Filesystem"));
                    // DefaultStorageClass admission: a claim that names no class (the field
                    // absent, not "") gets the default one, the newest if several are marked.
                    if !s.contains_key("storageClassName")
                        && let Some(class) = default_storage_class(st)
                    {
                        s.insert("storageClassName".into(), Value::String(class));
                    }
                    // NormalizeDataSources (AnyVolumeDataSource, GA in 1.33).
                    match (
                        s.get("dataSource").cloned(),
                        s.get("dataSourceRef").cloned(),
                    ) {
                        (Some(ds), None) if !ds.is_null() => {
                            s.insert("dataSourceRef".into(), ds);
                        }
                        (None, Some(r))
                            if !r.is_null()
                                && r.get("namespace")
                                    .and_then(Value::as_str)
                                    .is_none_or(str::is_empty) =>
                        {
                            let mut ds = r.clone();
                            if let Some(m) = ds.as_object_mut() {
                                m.remove("namespace");
                            }
                            s.insert("dataSource".into(), ds);
                        }
                        _ => {}
                    }
                    if let Some(ds) = s.get("dataSource")
                        && ds
                            .get("apiGroup")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        && ds.get("kind").and_then(Value::as_str) != Some("PersistentVolumeClaim")
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.dataSource",
                            &format!(
                                "Invalid value: \"{}\": must be 'PersistentVolumeClaim' when referencing the default apiGroup",
                                ds.get("kind").and_then(Value::as_str).unwrap_or("")
                            ),
                        ));
                    }
                    obj.as_object_mut()
                        .expect("object")
                        .insert("spec".into(), spec);
                    obj.as_object_mut()
                        .expect("object")
                        .insert("status".into(), json!({"phase": "Pending"}));
                } else if let Some(old) = old {
                    // Spec is immutable except resources.requests, volumeAttributesClassName,
                    // and volumeName while it is still empty.
                    let strip = |v: &Value, old_vol_empty: bool| {
                        let mut v = v.get("spec").cloned().unwrap_or(json!({}));
                        if let Some(m) = v.as_object_mut() {
                            m.remove("volumeAttributesClassName");
                            if old_vol_empty {
                                m.remove("volumeName");
                            }
                            if let Some(r) = m.get_mut("resources").and_then(Value::as_object_mut) {
                                r.remove("requests");
                            }
                        }
                        v
                    };
                    let old_vol_empty = old
                        .pointer("/spec/volumeName")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty);
                    if strip(old, old_vol_empty) != strip(obj, old_vol_empty) {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec",
                            "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                        ));
                    }
                }
            }
            ("", "secrets") => {
                // Secret.stringData is write-only: it is merged into `data` (base64), overwriting
                // keys of the same name, and never returned (core/v1 types.go, Secret.StringData).
                if let Some(Value::Object(plain)) =
                    obj.as_object_mut().and_then(|o| o.remove("stringData"))
                {
                    use base64::Engine as _;
                    let o = obj.as_object_mut().expect("object");
                    let data = o.entry("data").or_insert_with(|| json!({}));
                    if !data.is_object() {
                        *data = json!({});
                    }
                    let data = data.as_object_mut().expect("object");
                    for (k, v) in plain {
                        let text = v.as_str().unwrap_or_default().to_string();
                        data.insert(
                            k,
                            Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
            ("", "persistentvolumes") if old.is_none() => {
                let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                let Some(spec) = spec else {
                    return Err(errors::invalid1(&gk, &name, "spec", "Required value"));
                };
                spec.entry("volumeMode")
                    .or_insert_with(|| json!("Filesystem"));
                spec.entry("persistentVolumeReclaimPolicy")
                    .or_insert_with(|| json!("Retain"));
                obj.as_object_mut()
                    .expect("object")
                    .insert("status".into(), json!({"phase": "Pending"}));
            }
            ("", "pods") => {
                if old.is_none() {
                    let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
                    let Some(spec) = spec else {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.containers",
                            "Required value",
                        ));
                    };
                    if spec
                        .get("containers")
                        .and_then(Value::as_array)
                        .is_none_or(|a| a.is_empty())
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec.containers",
                            "Required value",
                        ));
                    }
                    spec.entry("restartPolicy")
                        .or_insert_with(|| json!("Always"));
                    spec.entry("schedulerName")
                        .or_insert_with(|| json!("default-scheduler"));
                    spec.entry("terminationGracePeriodSeconds")
                        .or_insert_with(|| json!(30));
                    let sa = spec
                        .entry("serviceAccountName")
                        .or_insert_with(|| json!("default"))
                        .as_str()
                        .unwrap_or("default")
                        .to_string();
                    spec.insert("serviceAccount".into(), Value::String(sa.clone()));
                    if st
                        .get(&ResourceKey::core("serviceaccounts"), &ns, &sa)
                        .is_none()
                    {
                        return Err(errors::forbidden(format!(
                            "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
                        )));
                    }
                    // Pod Security admission (after defaulting, as in the real chain).
                    if let Some(namespace) = st.get(&ResourceKey::core("namespaces"), "", &ns)
                        && let Some(msg) = podsecurity::check_pod(
                            namespace,
                            &name,
                            obj.get("spec").unwrap_or(&Value::Null),
                        )
                    {
                        return Err(errors::forbidden(msg));
                    }
                    obj.as_object_mut().expect("object").insert(
                        "status".into(),
                        json!({"phase": "Pending", "qosClass": "BestEffort"}),
                    );
                } else if let Some(old) = old
                    && opts.http
                {
                    // Pod updates may change only images and a few fields.
                    let strip = |v: &Value| {
                        let mut s = v.get("spec").cloned().unwrap_or(json!({}));
                        if let Some(m) = s.as_object_mut() {
                            m.remove("activeDeadlineSeconds");
                            m.remove("tolerations");
                            m.remove("terminationGracePeriodSeconds");
                            for list in ["containers", "initContainers"] {
                                if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
                                    for c in cs {
                                        if let Some(c) = c.as_object_mut() {
                                            c.remove("image");
                                        }
                                    }
                                }
                            }
                        }
                        s
                    };
                    if strip(old) != strip(obj) {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "spec",
                            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                        ));
                    }
                }
            }
            ("storage.k8s.io", "storageclasses") => {
                if old.is_none() {
                    if obj
                        .get("provisioner")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        return Err(errors::invalid1(
                            &gk,
                            &name,
                            "provisioner",
                            "Required value",
                        ));
                    }
                    let o = obj.as_object_mut().expect("object");
                    o.entry("reclaimPolicy").or_insert_with(|| json!("Delete"));
                    o.entry("volumeBindingMode")
                        .or_insert_with(|| json!("Immediate"));
                } else if let Some(old) = old {
                    for f in [
                        "provisioner",
                        "parameters",
                        "reclaimPolicy",
                        "volumeBindingMode",
                    ] {
                        if old.get(f) != obj.get(f) {
                            return Err(errors::invalid1(
                                &gk,
                                &name,
                                f,
                                "Forbidden: updates to provisioner are forbidden.",
                            ));
                        }
                    }
                }
            }
            ("apps", "deployments") if old.is_none() => {
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.entry("replicas").or_insert_with(|| json!(1));
                    spec.entry("revisionHistoryLimit")
                        .or_insert_with(|| json!(10));
                    spec.entry("strategy").or_insert_with(|| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}));
                }
                if obj.pointer("/spec/selector").is_none() {
                    return Err(errors::invalid1(
                        &gk,
                        &name,
                        "spec.selector",
                        "Required value",
                    ));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                if let Err(e) = registry::types_of_crd(obj) {
                    let (field, detail) = e.split_once(": ").unwrap_or(("spec", e.as_str()));
                    return Err(errors::invalid1(&gk, &name, field, detail));
                }
                let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                let stored = obj_storage_versions(&obj.get("spec").cloned().unwrap_or(Value::Null));
                // A condition whose status stays keeps its lastTransitionTime, so an update that
                // changes nothing leaves the object (and its resourceVersion) as it was.
                let since = |t: &str| {
                    obj.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == t && c["status"] == "True"))
                        .and_then(|c| c.get("lastTransitionTime").cloned())
                        .unwrap_or_else(|| json!(now()))
                };
                let (accepted_at, established_at) = (since("NamesAccepted"), since("Established"));
                let o = obj.as_object_mut().expect("object");
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(s) = status.as_object_mut() {
                    s.insert("acceptedNames".into(), names);
                    s.insert("storedVersions".into(), json!(stored));
                    s.insert(
                        "conditions".into(),
                        json!([
                            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": accepted_at},
                            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": established_at}
                        ]),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn refresh_crds(st: &mut State) {
        let crds: Vec<Value> = st
            .objects
            .get(&ResourceKey::new(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ))
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default();
        st.crd_types = crds
            .iter()
            .filter_map(|c| registry::types_of_crd(c).ok())
            .flatten()
            .collect();
    }

    /// Replaces an object (PUT), or writes its status (`part == Status`).
    pub fn update_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let out = self.update_locked(&mut st, rt, ns, name, obj, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    /// Reads the current object, computes its new state with `f` and writes it (patches).
    /// `f` gets the current object; its result is written like an update whose
    /// resourceVersion is the current one.
    pub fn modify(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: WriteOpts,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let cur = st
            .get(&rt.key(), ns.unwrap_or(""), name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        let mut new = f(&cur)?;
        let cur_rv = meta_str(&cur, "resourceVersion").unwrap_or("").to_string();
        // A patch may carry its own resourceVersion precondition; otherwise the current one.
        if meta_str(&new, "resourceVersion").is_none_or(str::is_empty) {
            meta_mut(&mut new).insert("resourceVersion".into(), Value::String(cur_rv));
        }
        let out = self.update_locked(&mut st, rt, ns, name, new, opts)?;
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    /// Server-side apply (see `patch::apply` for the simplification). Creates the object when
    /// missing.
    pub fn apply(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        applied: Value,
        manager: &str,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let cur = st.get(&rt.key(), ns.unwrap_or(""), name).cloned();
        let out = match cur {
            None => {
                if opts.part == Part::Status {
                    return Err(errors::not_found(&rt.qualified(), name));
                }
                let mut obj = applied.clone();
                meta_mut(&mut obj).insert("name".into(), Value::String(name.into()));
                let created = self.create_locked(&mut st, rt, ns, obj, opts)?;
                if !opts.dry_run {
                    let uid = meta_str(&created, "uid").unwrap_or("").to_string();
                    st.applied.insert((uid, manager.into()), applied);
                }
                created
            }
            Some(cur) => {
                let uid = meta_str(&cur, "uid").unwrap_or("").to_string();
                let prev = st.applied.get(&(uid.clone(), manager.to_string())).cloned();
                let mut applied_body = applied.clone();
                if let Some(m) = applied_body
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                {
                    m.remove("resourceVersion");
                }
                let mut new = patch::apply(&cur, &applied_body, prev.as_ref())
                    .map_err(errors::bad_request)?;
                meta_mut(&mut new).insert(
                    "resourceVersion".into(),
                    cur["metadata"]["resourceVersion"].clone(),
                );
                let out = self.update_locked(&mut st, rt, ns, name, new, opts)?;
                if !opts.dry_run {
                    st.applied.insert((uid, manager.into()), applied);
                }
                out
            }
        };
        if !opts.dry_run {
            self.housekeeping(&mut st);
        }
        Ok(out)
    }

    fn update_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(errors::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        let ns = if rt.namespaced {
            ns.unwrap_or("").to_string()
        } else {
            String::new()
        };
        if let Some(n) = meta_str(&obj, "name")
            && n != name
        {
            return Err(errors::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(n) = meta_str(&obj, "namespace")
            && n != ns
        {
            return Err(errors::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let key = rt.key();
        let old = st
            .get(&key, &ns, name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        let want_rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
        if !want_rv.is_empty() && want_rv != meta_str(&old, "resourceVersion").unwrap_or("") {
            return Err(errors::conflict_modified(&rt.qualified(), name));
        }
        // Build the new state from the part that may change.
        let mut new = match opts.part {
            Part::Status => {
                let mut n = old.clone();
                match obj.get("status") {
                    Some(s) => {
                        n.as_object_mut()
                            .expect("object")
                            .insert("status".into(), s.clone());
                    }
                    None => {
                        n.as_object_mut().expect("object").remove("status");
                    }
                }
                n
            }
            Part::Main | Part::All => {
                if opts.part == Part::Main && rt.status_subresource {
                    let o = obj.as_object_mut().expect("object");
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                // Metadata the client cannot change.
                let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
                let m = meta_mut(&mut obj);
                for f in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    match old_meta.get(f) {
                        Some(v) => m.insert(f.into(), v.clone()),
                        None => m.remove(f),
                    };
                }
                m.remove("selfLink");
                m.remove("managedFields");
                let o = obj.as_object_mut().expect("object");
                o.insert("apiVersion".into(), old["apiVersion"].clone());
                o.insert("kind".into(), old["kind"].clone());
                obj
            }
        };
        let gk = group_kind(&rt.group, &rt.kind);
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(errors::invalid1(
                    &gk,
                    name,
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if opts.part != Part::Status {
            self.admit(st, rt, Some(&old), &mut new, opts)?;
        }
        if spec_part(&old, rt) != spec_part(&new, rt) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(old);
        }
        if opts.dry_run {
            return Ok(new);
        }
        let rv = st.bump();
        meta_mut(&mut new).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(&key)
            .insert((ns.clone(), name.to_string()), new.clone());
        st.emit("MODIFIED", &key, &new, Some(old));
        if ready_to_go(&new) {
            Self::remove(st, &key, &ns, name);
        }
        if rt.plural == "customresourcedefinitions" {
            Self::refresh_crds(st);
        }
        Ok(new)
    }

    /// Removes an object for good and sends DELETED.
    fn remove(st: &mut State, key: &ResourceKey, ns: &str, name: &str) -> Option<Value> {
        let mut obj = st.bucket(key).remove(&(ns.to_string(), name.to_string()))?;
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        st.applied.retain(|(u, _), _| *u != uid);
        st.emit("DELETED", key, &obj, None);
        if key.resource == "customresourcedefinitions" && key.group == "apiextensions.k8s.io" {
            Self::refresh_crds(st);
        }
        Some(obj)
    }

    /// Deletes an object (DELETE).
    pub fn delete_obj(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if rt.namespaced { ns.unwrap_or("") } else { "" };
        let cur = st
            .get(&rt.key(), ns, name)
            .cloned()
            .ok_or_else(|| errors::not_found(&rt.qualified(), name))?;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&cur, "uid")
        {
            return Err(errors::conflict(
                &rt.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&cur, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta_str(&cur, "resourceVersion")
        {
            return Err(errors::conflict(
                &rt.qualified(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&cur, "resourceVersion").unwrap_or("")
                ),
            ));
        }
        if opts.dry_run {
            return Ok(cur);
        }
        let out = Self::delete_locked(
            &mut st,
            &rt.key(),
            ns,
            name,
            opts.propagation.as_deref(),
            opts.grace_period,
        );
        self.housekeeping(&mut st);
        Ok(out.unwrap_or(cur))
    }

    /// Starts the deletion of an object: marks it (finalizers, namespaces) or removes it.
    ///
    /// Pods are deleted gracefully like the real pod strategy (`pkg/registry/core/pod/strategy.go`,
    /// CheckGracefulDelete): a pod bound to a node and not yet terminal only gets a
    /// deletionTimestamp and deletionGracePeriodSeconds; the kubelet stops its containers and
    /// then deletes it for good (a second delete, or `gracePeriodSeconds=0`). Unscheduled or
    /// terminal pods go at once.
    fn delete_locked(
        st: &mut State,
        key: &ResourceKey,
        ns: &str,
        name: &str,
        propagation: Option<&str>,
        grace: Option<i64>,
    ) -> Option<Value> {
        let mut obj = st.get(key, ns, name).cloned()?;
        let is_pod = key.group.is_empty() && key.resource == "pods";
        let graceful_pod = is_pod
            && grace != Some(0)
            && obj.pointer("/metadata/deletionTimestamp").is_none()
            && obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && !matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
        if is_pod && grace != Some(0) && obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(obj);
        }
        if graceful_pod {
            let secs = grace
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            let old = obj.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
            {
                let m = meta_mut(&mut obj);
                m.insert(
                    "deletionTimestamp".into(),
                    Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(secs));
                if let Some(f) = match propagation {
                    Some("Foreground") => Some("foregroundDeletion"),
                    Some("Orphan") => Some("orphan"),
                    _ => None,
                } {
                    let fins = m.entry("finalizers").or_insert_with(|| json!([]));
                    if let Some(a) = fins.as_array_mut() {
                        a.push(json!(f));
                    }
                }
            }
            let rv = st.bump();
            meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
            st.bucket(key)
                .insert((ns.to_string(), name.to_string()), obj.clone());
            st.emit("MODIFIED", key, &obj, Some(old));
            return Some(obj);
        }
        let is_ns = key.group.is_empty() && key.resource == "namespaces";
        let is_crd =
            key.group == "apiextensions.k8s.io" && key.resource == "customresourcedefinitions";
        let mut fins = finalizers(&obj);
        let marked = obj.pointer("/metadata/deletionTimestamp").is_some();
        let extra = match propagation {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra
            && !fins.iter().any(|x| x == f)
            && !marked
        {
            fins.push(f.to_string());
        }
        if is_crd && !marked {
            fins.push("customresourcecleanup.apiextensions.k8s.io".into());
        }
        if fins.is_empty() && !is_ns {
            return Self::remove(st, key, ns, name);
        }
        if marked && finalizers(&obj) == fins {
            return Some(obj);
        }
        let old = obj.clone();
        {
            let m = meta_mut(&mut obj);
            m.insert("finalizers".into(), json!(fins));
            m.entry("deletionTimestamp")
                .or_insert_with(|| Value::String(now()));
            m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
        }
        if is_ns && let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"phase": "Terminating"}));
        }
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(key)
            .insert((ns.to_string(), name.to_string()), obj.clone());
        st.emit("MODIFIED", key, &obj, Some(old));
        Some(obj)
    }

    fn set_finalizers(st: &mut State, key: &ResourceKey, ns: &str, name: &str, fins: Vec<String>) {
        let Some(mut obj) = st.get(key, ns, name).cloned() else {
            return;
        };
        let old = obj.clone();
        meta_mut(&mut obj).insert("finalizers".into(), json!(fins));
        let rv = st.bump();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        st.bucket(key)
            .insert((ns.to_string(), name.to_string()), obj.clone());
        st.emit("MODIFIED", key, &obj, Some(old));
        if ready_to_go(&obj) {
            Self::remove(st, key, ns, name);
        }
    }

    /// The core controllers that run after every write: namespace lifecycle, the default
    /// ServiceAccount, CRD cleanup, and the garbage collector.
    fn housekeeping(&self, st: &mut State) {
        for _round in 0..50 {
            let mut changed = false;
            let ns_key = ResourceKey::core("namespaces");
            let namespaces: Vec<Value> = st
                .objects
                .get(&ns_key)
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default();
            let namespaced_keys: Vec<ResourceKey> = {
                let types: Vec<ResourceType> = self
                    .builtins
                    .iter()
                    .chain(st.crd_types.iter())
                    .cloned()
                    .collect();
                let mut keys: Vec<ResourceKey> = types
                    .iter()
                    .filter(|t| t.namespaced)
                    .map(ResourceType::key)
                    .collect();
                keys.sort();
                keys.dedup();
                keys
            };
            for n in &namespaces {
                let name = meta_str(n, "name").unwrap_or("").to_string();
                if n.pointer("/metadata/deletionTimestamp").is_some() {
                    let mut left = 0;
                    for k in &namespaced_keys {
                        let names: Vec<(String, bool)> = st
                            .objects
                            .get(k)
                            .map(|b| {
                                b.iter()
                                    .filter(|((o_ns, _), _)| *o_ns == name)
                                    .map(|((_, o), v)| {
                                        (
                                            o.clone(),
                                            v.pointer("/metadata/deletionTimestamp").is_some(),
                                        )
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        for (o, marked) in names {
                            left += 1;
                            if !marked {
                                Self::delete_locked(st, k, &name, &o, None, None);
                                changed = true;
                            }
                        }
                    }
                    if left == 0 && finalizers(n).is_empty() {
                        Self::remove(st, &ns_key, "", &name);
                        changed = true;
                    }
                } else if st
                    .get(&ResourceKey::core("serviceaccounts"), &name, "default")
                    .is_none()
                {
                    let rt = self
                        .builtins
                        .iter()
                        .find(|t| t.plural == "serviceaccounts")
                        .cloned()
                        .expect("builtin");
                    let sa = json!({"metadata": {"name": "default", "namespace": name}});
                    if self
                        .create_locked(st, &rt, Some(&name), sa, WriteOpts::main())
                        .is_ok()
                    {
                        changed = true;
                    }
                }
            }
            // CRD cleanup.
            let crd_key = ResourceKey::new("apiextensions.k8s.io", "customresourcedefinitions");
            let crds: Vec<Value> = st
                .objects
                .get(&crd_key)
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default();
            for c in crds {
                if c.pointer("/metadata/deletionTimestamp").is_none() {
                    continue;
                }
                let fins = finalizers(&c);
                if !fins
                    .iter()
                    .any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
                {
                    continue;
                }
                let group = c
                    .pointer("/spec/group")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let plural = c
                    .pointer("/spec/names/plural")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let key = ResourceKey::new(group, plural);
                let objs: Vec<((String, String), bool)> = st
                    .objects
                    .get(&key)
                    .map(|b| {
                        b.iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    v.pointer("/metadata/deletionTimestamp").is_some(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if objs.is_empty() {
                    let name = meta_str(&c, "name").unwrap_or("").to_string();
                    let rest: Vec<String> = fins
                        .into_iter()
                        .filter(|f| f != "customresourcecleanup.apiextensions.k8s.io")
                        .collect();
                    Self::set_finalizers(st, &crd_key, "", &name, rest);
                    changed = true;
                } else {
                    for ((o_ns, o_name), marked) in objs {
                        if !marked {
                            Self::delete_locked(st, &key, &o_ns, &o_name, None, None);
                            changed = true;
                        }
                    }
                }
            }
            if self.collect_garbage(st) {
                changed = true;
            }
            if !changed {
                break;
            }
        }
    }

    /// One pass of the garbage collector. Returns whether anything changed.
    fn collect_garbage(&self, st: &mut State) -> bool {
        let mut live: HashMap<String, (ResourceKey, String, String, Vec<String>, bool)> =
            HashMap::new();
        let mut dependents: Vec<(ResourceKey, String, String, Vec<Value>, bool)> = Vec::new();
        for (k, b) in &st.objects {
            for ((ns, name), v) in b {
                if let Some(uid) = meta_str(v, "uid") {
                    live.insert(
                        uid.to_string(),
                        (
                            k.clone(),
                            ns.clone(),
                            name.clone(),
                            finalizers(v),
                            v.pointer("/metadata/deletionTimestamp").is_some(),
                        ),
                    );
                }
                if let Some(refs) = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    && !refs.is_empty()
                {
                    dependents.push((
                        k.clone(),
                        ns.clone(),
                        name.clone(),
                        refs.clone(),
                        v.pointer("/metadata/deletionTimestamp").is_some(),
                    ));
                }
            }
        }
        let mut changed = false;
        let mut has_dependents: HashSet<String> = HashSet::new();
        for (k, ns, name, refs, marked) in &dependents {
            let uids: Vec<&str> = refs
                .iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect();
            let present: Vec<&str> = uids
                .iter()
                .copied()
                .filter(|u| live.contains_key(*u))
                .collect();
            // Owners being deleted with orphan propagation: drop the reference.
            let orphaning: Vec<&str> = present
                .iter()
                .copied()
                .filter(|u| {
                    live.get(*u)
                        .is_some_and(|(_, _, _, f, m)| *m && f.iter().any(|x| x == "orphan"))
                })
                .collect();
            let foreground: Vec<&str> = present
                .iter()
                .copied()
                .filter(|u| {
                    live.get(*u).is_some_and(|(_, _, _, f, m)| {
                        *m && f.iter().any(|x| x == "foregroundDeletion")
                    })
                })
                .collect();
            for u in &present {
                has_dependents.insert(u.to_string());
            }
            if present.is_empty() {
                if !marked {
                    Self::delete_locked(st, k, ns, name, None, None);
                    changed = true;
                }
                continue;
            }
            if !foreground.is_empty() && foreground.len() == present.len() {
                if !marked {
                    Self::delete_locked(st, k, ns, name, Some("Foreground"), None);
                    changed = true;
                }
                continue;
            }
            if present.len() != uids.len() || !orphaning.is_empty() {
                // Remove dangling and orphaned references.
                let keep: Vec<Value> = refs
                    .iter()
                    .filter(|r| {
                        let u = r.get("uid").and_then(Value::as_str).unwrap_or("");
                        present.contains(&u) && !orphaning.contains(&u)
                    })
                    .cloned()
                    .collect();
                if let Some(mut obj) = st.get(k, ns, name).cloned() {
                    let old = obj.clone();
                    meta_mut(&mut obj).insert("ownerReferences".into(), Value::Array(keep));
                    let rv = st.bump();
                    meta_mut(&mut obj)
                        .insert("resourceVersion".into(), Value::String(rv.to_string()));
                    st.bucket(k).insert((ns.clone(), name.clone()), obj.clone());
                    st.emit("MODIFIED", k, &obj, Some(old));
                    changed = true;
                }
            }
        }
        // Owners waiting for their dependents (foreground) or for orphaning to finish.
        for (uid, (k, ns, name, fins, marked)) in live {
            if !marked {
                continue;
            }
            let waiting = has_dependents.contains(&uid);
            let mut rest = fins.clone();
            if fins.iter().any(|f| f == "orphan") && !waiting {
                rest.retain(|f| f != "orphan");
            }
            if fins.iter().any(|f| f == "foregroundDeletion") && !waiting {
                rest.retain(|f| f != "foregroundDeletion");
            }
            if rest != fins {
                Self::set_finalizers(st, &k, &ns, &name, rest);
                changed = true;
            }
        }
        changed
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
