//! The resource types kubesim serves: the built-in kinds, and the kinds that applied
//! CustomResourceDefinitions add.
//!
//! Source for names, scopes, short names and subresources: the output of
//! `kubectl api-resources` on a v1.32 cluster and the API reference
//! (https://kubernetes.io/docs/reference/kubernetes-api/).

use serde_json::Value;

use super::api::ResourceKey;

/// One resource type at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Kind (`PersistentVolumeClaim`).
    pub kind: String,
    /// Plural resource name (`persistentvolumeclaims`).
    pub plural: String,
    /// Singular resource name (`persistentvolumeclaim`).
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`pvc`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Has a `status` subresource.
    pub status_subresource: bool,
    /// Further subresources (`log` for pods).
    pub extra_subresources: Vec<String>,
    /// Where the objects live: `events.k8s.io/v1` events are stored as core v1 events, as in
    /// the real API server (both are views of one storage).
    pub storage: ResourceKey,
    /// For kinds added by a CRD: the version's `openAPIV3Schema` and printer columns.
    pub crd: Option<CrdVersion>,
    /// Only `create` is served (SelfSubjectAccessReview).
    pub create_only: bool,
}

/// What a CRD says about one of its versions.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    /// The structural schema (`openAPIV3Schema`), if any.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
    /// The CRD's name (`volumebackups.volbackup.io`).
    pub crd_name: String,
}

impl ResourceType {
    /// The key objects of this type are stored under.
    pub fn key(&self) -> ResourceKey {
        self.storage.clone()
    }
    /// `group/version`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `plural.group` as the API server names a resource in messages (`persistentvolumeclaims`,
    /// `volumesnapshots.snapshot.storage.k8s.io`).
    pub fn qualified(&self) -> String {
        qualified(&self.group, &self.plural)
    }
    /// Verbs served, as discovery lists them.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
    /// Whether this is a custom resource (strategic merge patch is not served for those).
    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }
}

/// `resource.group` as the API server's `GroupResource.String()` prints it.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

struct B {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    extra: &'static [&'static str],
}

const BUILTINS: &[B] = &[
    B {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        short: &["ns"],
        status: true,
        extra: &["finalize"],
    },
    B {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        short: &["no"],
        status: true,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        namespaced: false,
        short: &["pv"],
        status: true,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        namespaced: true,
        short: &["pvc"],
        status: true,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        short: &["po"],
        status: true,
        extra: &["log"],
    },
    B {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
        short: &[],
        status: false,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
        short: &["cm"],
        status: false,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
        short: &["sa"],
        status: false,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        short: &["svc"],
        status: true,
        extra: &[],
    },
    B {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        status: false,
        extra: &[],
    },
    B {
        group: "events.k8s.io",
        version: "v1",
        kind: "Event",
        plural: "events",
        namespaced: true,
        short: &["ev"],
        status: false,
        extra: &[],
    },
    B {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
        namespaced: false,
        short: &["sc"],
        status: false,
        extra: &[],
    },
    B {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
        short: &["crd", "crds"],
        status: true,
        extra: &[],
    },
    B {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        namespaced: true,
        short: &[],
        status: false,
        extra: &[],
    },
    B {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
        short: &[],
        status: false,
        extra: &[],
    },
    B {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
        short: &[],
        status: false,
        extra: &[],
    },
    B {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
        short: &[],
        status: false,
        extra: &[],
    },
    B {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
        short: &["deploy"],
        status: true,
        extra: &["scale"],
    },
    B {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        namespaced: true,
        short: &["rs"],
        status: true,
        extra: &["scale"],
    },
    B {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        namespaced: true,
        short: &[],
        status: true,
        extra: &[],
    },
    B {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        namespaced: true,
        short: &["cj"],
        status: true,
        extra: &[],
    },
    B {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        namespaced: true,
        short: &[],
        status: false,
        extra: &[],
    },
];

/// The built-in resource types (the snapshot and populator kinds are CRDs, see `builtin_crds`).
pub fn builtins() -> Vec<ResourceType> {
    let mut v: Vec<ResourceType> = BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.into(),
            version: b.version.into(),
            kind: b.kind.into(),
            plural: b.plural.into(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| s.to_string()).collect(),
            categories: if matches!(
                b.plural,
                "pods" | "services" | "deployments" | "replicasets" | "jobs" | "cronjobs"
            ) {
                vec!["all".into()]
            } else {
                vec![]
            },
            status_subresource: b.status,
            extra_subresources: b.extra.iter().map(|s| s.to_string()).collect(),
            storage: if b.group == "events.k8s.io" {
                ResourceKey::core("events")
            } else {
                ResourceKey::new(b.group, b.plural)
            },
            crd: None,
            create_only: false,
        })
        .collect();
    // authorization.k8s.io/v1 SelfSubjectAccessReview: `kubectl auth can-i`
    // (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access).
    v.push(ResourceType {
        group: "authorization.k8s.io".into(),
        version: "v1".into(),
        kind: "SelfSubjectAccessReview".into(),
        plural: "selfsubjectaccessreviews".into(),
        singular: "selfsubjectaccessreview".into(),
        namespaced: false,
        short_names: vec![],
        categories: vec![],
        status_subresource: false,
        extra_subresources: vec![],
        storage: ResourceKey::new("authorization.k8s.io", "selfsubjectaccessreviews"),
        crd: None,
        create_only: true,
    });
    v
}

/// The resource types a CRD object declares (one per served version), or an error message
/// when the CRD is malformed.
pub fn types_of_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .ok_or("spec.names.plural: Required value")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("spec.names.kind: Required value")?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let scope = spec
        .get("scope")
        .and_then(Value::as_str)
        .ok_or("spec.scope: Required value")?;
    if scope != "Namespaced" && scope != "Cluster" {
        return Err(format!(
            "spec.scope: Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
        ));
    }
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Invalid value: null: must have exactly one version marked as storage version")?;
    if versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count()
        != 1
    {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let mut out = Vec::new();
    for v in versions {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("spec.versions[].name: Required value")?;
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        out.push(ResourceType {
            group: group.into(),
            version: vname.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: singular.clone(),
            namespaced: scope == "Namespaced",
            short_names: strs(names.get("shortNames")),
            categories: strs(names.get("categories")),
            status_subresource: v.pointer("/subresources/status").is_some(),
            extra_subresources: vec![],
            storage: ResourceKey::new(group, plural),
            crd: Some(CrdVersion {
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                crd_name: name.to_string(),
            }),
            create_only: false,
        });
    }
    Ok(out)
}

/// The CRDs a cluster with the external-snapshotter and volume-data-source-validator installed
/// has: snapshot.storage.k8s.io/v1 (kubernetes-csi/external-snapshotter `client/config/crd`)
/// and populator.storage.k8s.io/v1beta1 VolumePopulator (kubernetes-csi/
/// volume-data-source-validator `client/config/crd`). In real clusters these are CRDs, so
/// kubesim installs them as CRD objects at start-up: they are listed under
/// `customresourcedefinitions`, served like any CRD, and can be deleted to test a cluster
/// without them. Their schemas keep the required fields and enums of the originals and
/// preserve the rest.
pub fn builtin_crds() -> Vec<Value> {
    use serde_json::json;
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd = |group: &str,
               version: &str,
               kind: &str,
               plural: &str,
               short: Vec<&str>,
               namespaced: bool,
               schema: Value,
               columns: Value| {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "names": {"kind": kind, "listKind": format!("{kind}List"), "plural": plural,
                          "singular": kind.to_lowercase(), "shortNames": short},
                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                "versions": [{
                    "name": version, "served": true, "storage": true,
                    "subresources": if kind == "VolumeSnapshot" || kind == "VolumeSnapshotContent" { json!({"status": {}}) } else { json!({}) },
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema}
                }]
            }
        })
    };
    let age = json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"});
    let deletion_policy = json!({"type": "string", "enum": ["Delete", "Retain"]});
    vec![
        crd(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshot",
            "volumesnapshots",
            vec!["vs"],
            true,
            json!({"type": "object", "required": ["spec"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "spec": {"type": "object", "required": ["source"], "properties": {
                    "source": {"type": "object", "properties": {
                        "persistentVolumeClaimName": {"type": "string"},
                        "volumeSnapshotContentName": {"type": "string"}}},
                    "volumeSnapshotClassName": {"type": "string"}}},
                "status": open.clone()}}),
            json!([{"name": "ReadyToUse", "type": "boolean", "jsonPath": ".status.readyToUse"},
                   {"name": "SourcePVC", "type": "string", "jsonPath": ".spec.source.persistentVolumeClaimName"},
                   {"name": "RestoreSize", "type": "string", "jsonPath": ".status.restoreSize"},
                   {"name": "SnapshotClass", "type": "string", "jsonPath": ".spec.volumeSnapshotClassName"},
                   {"name": "SnapshotContent", "type": "string", "jsonPath": ".status.boundVolumeSnapshotContentName"},
                   age.clone()]),
        ),
        crd(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            vec!["vsc", "vscs"],
            false,
            json!({"type": "object", "required": ["spec"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "spec": {"type": "object", "required": ["deletionPolicy", "driver", "source", "volumeSnapshotRef"], "properties": {
                    "deletionPolicy": deletion_policy.clone(),
                    "driver": {"type": "string"},
                    "source": {"type": "object", "properties": {
                        "snapshotHandle": {"type": "string"}, "volumeHandle": {"type": "string"}}},
                    "sourceVolumeMode": {"type": "string"},
                    "volumeSnapshotClassName": {"type": "string"},
                    "volumeSnapshotRef": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                "status": open.clone()}}),
            json!([{"name": "ReadyToUse", "type": "boolean", "jsonPath": ".status.readyToUse"},
                   {"name": "RestoreSize", "type": "integer", "jsonPath": ".status.restoreSize"},
                   {"name": "DeletionPolicy", "type": "string", "jsonPath": ".spec.deletionPolicy"},
                   {"name": "Driver", "type": "string", "jsonPath": ".spec.driver"},
                   age.clone()]),
        ),
        crd(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            vec!["vsclass", "vsclasses"],
            false,
            json!({"type": "object", "required": ["deletionPolicy", "driver"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "deletionPolicy": deletion_policy,
                "driver": {"type": "string"},
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}}),
            json!([{"name": "Driver", "type": "string", "jsonPath": ".driver"},
                   {"name": "DeletionPolicy", "type": "string", "jsonPath": ".deletionPolicy"},
                   age.clone()]),
        ),
        crd(
            "populator.storage.k8s.io",
            "v1beta1",
            "VolumePopulator",
            "volumepopulators",
            vec![],
            false,
            json!({"type": "object", "required": ["sourceKind"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                "sourceKind": {"type": "object", "required": ["kind"], "properties": {
                    "group": {"type": "string"}, "kind": {"type": "string"}}}}}),
            json!([{"name": "SourceKind", "type": "string", "jsonPath": ".sourceKind"}, age]),
        ),
    ]
}
