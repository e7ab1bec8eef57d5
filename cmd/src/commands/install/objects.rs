//! The populator's manifests as objects: the embedded files, the kinds they hold, and the
//! edits an install makes to them (namespace, image, Pod Security level, populator flags).

use anyhow::{Context, Result, anyhow};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

use crate::cluster;

/// The manifest files in apply order: the CRD first, then the namespace, RBAC, the Deployment,
/// and the VolumePopulator registration last.
pub(super) const FILES: [(&str, &str); 6] = [
    (
        "crds/volumebackups.yaml",
        include_str!("../../../../manifests/crds/volumebackups.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../../../manifests/namespace.yaml"),
    ),
    ("rbac.yaml", include_str!("../../../../manifests/rbac.yaml")),
    (
        "user-roles.yaml",
        include_str!("../../../../manifests/user-roles.yaml"),
    ),
    (
        "deployment.yaml",
        include_str!("../../../../manifests/deployment.yaml"),
    ),
    (
        "volumepopulator.yaml",
        include_str!("../../../../manifests/volumepopulator.yaml"),
    ),
];

/// A kind the manifests contain and how to reach it.
pub(super) struct Kind {
    pub(super) group: &'static str,
    pub(super) version: &'static str,
    pub(super) kind: &'static str,
    pub(super) plural: &'static str,
    pub(super) namespaced: bool,
}

pub(super) const KINDS: &[Kind] = &[
    Kind {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        namespaced: false,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    Kind {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        namespaced: true,
    },
    Kind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        namespaced: false,
    },
    Kind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        namespaced: false,
    },
    Kind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        namespaced: true,
    },
    Kind {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        namespaced: true,
    },
    Kind {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        namespaced: true,
    },
    Kind {
        group: "populator.storage.k8s.io",
        version: "v1beta1",
        kind: "VolumePopulator",
        plural: "volumepopulators",
        namespaced: false,
    },
];

impl Kind {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(super) fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// `plural.group`, as RBAC and errors name the resource.
    pub(super) fn qualified_plural(&self) -> String {
        cluster::resource_name::<DynamicObject>(&self.resource())
    }

    /// `kind.group/name`, as kubectl prints an object it changed.
    pub(super) fn display(&self, name: &str) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}.{}/{name}", self.group)
        }
    }
}

/// One object of the manifests, customized.
pub(super) struct Object {
    pub(super) kind: &'static Kind,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) body: Yaml,
}

impl Object {
    pub(super) fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.kind.resource()),
            None => Api::all_with(client.clone(), &self.kind.resource()),
        }
    }

    pub(super) fn display(&self) -> String {
        self.kind.display(&self.name)
    }
}

pub(super) fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// Sets the namespace, its Pod Security level and the image in one parsed manifest: the
/// Namespace's name and `enforce` label, every `metadata.namespace`, ServiceAccount subjects of
/// bindings, and the Deployment's container images and their `--namespace`/`--image`
/// arguments, with `extra` arguments for the populator appended.
pub(super) fn customize(
    doc: &mut Yaml,
    namespace: &str,
    image: &str,
    pod_security: &str,
    extra: &[String],
) {
    let ns = Yaml::String(namespace.to_string());
    let kind = str_at(doc, &["kind"]).unwrap_or("").to_string();
    if kind == "Namespace" {
        doc["metadata"]["name"] = ns.clone();
        doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] =
            Yaml::String(pod_security.to_string());
    }
    if doc["metadata"].get("namespace").is_some() {
        doc["metadata"]["namespace"] = ns.clone();
    }
    if matches!(kind.as_str(), "ClusterRoleBinding" | "RoleBinding")
        && let Some(subjects) = doc.get_mut("subjects").and_then(Yaml::as_sequence_mut)
    {
        for s in subjects {
            if str_at(s, &["kind"]) == Some("ServiceAccount") {
                s["namespace"] = ns.clone();
            }
        }
    }
    if kind == "Deployment" {
        // Which plugin installed it: `version` and `doctor` compare it with their own.
        doc["metadata"]["labels"][crate::commands::version::VERSION_LABEL] =
            Yaml::String(crate::commands::version::VERSION.to_string());
    }
    if kind == "Deployment"
        && let Some(containers) = doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .and_then(|s| s.get_mut("containers"))
            .and_then(Yaml::as_sequence_mut)
    {
        for c in containers {
            c["image"] = Yaml::String(image.to_string());
            if let Some(args) = c.get_mut("args").and_then(Yaml::as_sequence_mut) {
                for i in 1..args.len() {
                    match args[i - 1].as_str() {
                        Some("--namespace") => args[i] = ns.clone(),
                        Some("--image") => args[i] = Yaml::String(image.to_string()),
                        _ => {}
                    }
                }
                args.extend(extra.iter().cloned().map(Yaml::String));
            }
        }
    }
}

/// Every object of the manifests, for this namespace, level and image, in apply order.
pub(super) fn objects(
    namespace: &str,
    image: &str,
    pod_security: &str,
    extra: &[String],
) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for (file, text) in FILES {
        for de in serde_yaml::Deserializer::from_str(text) {
            let mut doc = Yaml::deserialize(de)
                .with_context(|| format!("embedded manifest {file} is not valid YAML"))?;
            if doc.is_null() {
                continue;
            }
            customize(&mut doc, namespace, image, pod_security, extra);
            let api_version = str_at(&doc, &["apiVersion"]).unwrap_or("");
            let kind_name = str_at(&doc, &["kind"]).unwrap_or("");
            let kind = KINDS
                .iter()
                .find(|k| k.api_version() == api_version && k.kind == kind_name)
                .ok_or_else(|| {
                    anyhow!(
                        "embedded manifest {file} has an unknown kind {api_version} {kind_name}"
                    )
                })?;
            let name = str_at(&doc, &["metadata", "name"])
                .ok_or_else(|| {
                    anyhow!("embedded manifest {file} has a {kind_name} without a name")
                })?
                .to_string();
            let obj_ns = kind.namespaced.then(|| namespace.to_string());
            out.push(Object {
                kind,
                name,
                namespace: obj_ns,
                body: doc,
            });
        }
    }
    Ok(out)
}

/// The objects as one multi-document YAML stream.
pub(super) fn render(objects: &[Object]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o.body)?);
    }
    Ok(out)
}

pub(super) fn kind_named(kind: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .expect("every kind used here is in KINDS")
}

/// The namespace of the ServiceAccount a binding grants to.
pub(super) fn bound_namespace(binding: &DynamicObject) -> Option<String> {
    binding.data["subjects"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == "ServiceAccount")?["namespace"]
        .as_str()
        .map(str::to_string)
}

/// Whether a namespace is ours: it carries our `managed-by` label, with today's value or the
/// one earlier versions gave it (a namespace without it is the user's).
pub(super) fn ours(meta: &kube::api::ObjectMeta) -> bool {
    let (key, value) = cluster::MANAGED_BY;
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .is_some_and(|v| v == value || v == cluster::EARLIER_MANAGED_BY)
}
