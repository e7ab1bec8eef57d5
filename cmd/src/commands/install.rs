//! `install` and `uninstall`: the populator's manifests, embedded in the binary.
//!
//! The files under `manifests/` hold the defaults (namespace `volbackup-system`, image
//! `ghcr.io/volbackup/volbackup:<version>`), so `kubectl apply -k manifests/` works as is. The
//! namespace and image are set per install by editing the parsed objects at known places (see
//! [`customize`]), never by replacing text, so no value a user passes can change the YAML's
//! structure.
//!
//! `install` applies every object with server-side apply, in dependency order, and waits for
//! the CRD to be Established and the populator Deployment to have an available replica.
//! `uninstall` deletes in the reverse order. A namespace that existed before volbackup (one
//! without our `app.kubernetes.io/managed-by` label) is neither applied over nor deleted.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

use crate::cli::{InstallArgs, KubeOptions, PopulatorSettings, UninstallArgs};
use crate::cluster::{self, explain, is_status};

/// The field manager of our server-side applies.
const MANAGER: &str = "kubectl-volbackup";
/// Name of the Deployment, ServiceAccount, roles and bindings.
pub const POPULATOR_NAME: &str = "volbackup-populator";
/// Name of the VolumePopulator registration.
pub const VOLUME_POPULATOR_NAME: &str = "volbackup-volumebackup";
/// Name of the VolumeBackup CRD.
pub const CRD_NAME: &str = "volumebackups.volbackup.io";
/// Selects the populator's pods.
const POD_SELECTOR: &str = "app.kubernetes.io/name=volbackup,app.kubernetes.io/component=populator";
/// How long `install` waits for the CRD and the Deployment, and `uninstall` for deletions.
const WAIT: Duration = Duration::from_secs(60);
/// Where the VolumePopulator CRD comes from.
const VALIDATOR_CRD_URL: &str = "https://raw.githubusercontent.com/kubernetes-csi/volume-data-source-validator/master/client/config/crd/populator.storage.k8s.io_volumepopulators.yaml";

/// The manifest files in apply order: the CRD first, then the namespace, RBAC, the Deployment,
/// and the VolumePopulator registration last.
const FILES: [(&str, &str); 6] = [
    (
        "crds/volumebackups.yaml",
        include_str!("../../../manifests/crds/volumebackups.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../../manifests/namespace.yaml"),
    ),
    ("rbac.yaml", include_str!("../../../manifests/rbac.yaml")),
    (
        "user-roles.yaml",
        include_str!("../../../manifests/user-roles.yaml"),
    ),
    (
        "deployment.yaml",
        include_str!("../../../manifests/deployment.yaml"),
    ),
    (
        "volumepopulator.yaml",
        include_str!("../../../manifests/volumepopulator.yaml"),
    ),
];

/// A kind the manifests contain and how to reach it.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const KINDS: &[Kind] = &[
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
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// `plural.group`, as RBAC and errors name the resource.
    fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `kind.group/name`, as kubectl prints an object it changed.
    fn display(&self, name: &str) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}.{}/{name}", self.group)
        }
    }
}

/// One object of the manifests, customized.
struct Object {
    kind: &'static Kind,
    name: String,
    namespace: Option<String>,
    body: Yaml,
}

impl Object {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.kind.resource()),
            None => Api::all_with(client.clone(), &self.kind.resource()),
        }
    }

    fn display(&self) -> String {
        self.kind.display(&self.name)
    }
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// The Pod Security level `install` enforces on its namespace unless told otherwise: what the
/// populate pods meet (`volbackup_populator::mover`).
pub const DEFAULT_POD_SECURITY: &str = volbackup_populator::mover::MOVER_LEVEL;

/// A proxy for the populate pods: `http[s]://HOST[:PORT]`, without credentials (they would
/// stand in the Deployment's arguments for anyone who may read it).
pub fn check_proxy(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or(""));
    match host {
        Some(h) if h.contains('@') => bail!(
            "--proxy {}: credentials do not belong in it (they would be readable in the populator's Deployment): use a proxy that admits the populate pods without them",
            url.split_once("://")
                .map(|(s, r)| format!("{s}://***@{}", r.rsplit_once('@').map_or(r, |x| x.1)))
                .unwrap_or_default()
        ),
        Some(h) if !h.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Ok(())
        }
        _ => bail!("--proxy {url:?} is not a proxy URL: use http://HOST:PORT"),
    }
}

/// The populator's arguments for what the administrator chose (see [`PopulatorSettings`]);
/// checked, so that a bad value fails `install` and not the populator.
pub fn populator_args(s: &PopulatorSettings) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(p) = &s.proxy {
        check_proxy(p)?;
        out.extend(["--proxy".to_string(), p.clone()]);
    }
    if let Some(n) = &s.no_proxy {
        if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--no-proxy {n:?}: give host names separated by commas, without spaces");
        }
        out.extend(["--no-proxy".to_string(), n.clone()]);
    }
    for (flag, value) in [
        ("--stall-timeout", &s.stall_timeout),
        ("--restore-deadline", &s.restore_deadline),
    ] {
        if let Some(v) = value {
            out.extend([flag.to_string(), crate::flag_values::format_duration(*v)]);
        }
    }
    for dir in &s.allow_node_repository {
        volbackup_populator::mover::check_node_directory(dir).map_err(|why| {
            anyhow!("--allow-node-repository {why}: name the directory every node mounts the repositories from, like /srv/backups")
        })?;
        out.extend(["--allow-node-repository".to_string(), dir.clone()]);
    }
    Ok(out)
}

/// Sets the namespace, its Pod Security level and the image in one parsed manifest: the
/// Namespace's name and `enforce` label, every `metadata.namespace`, ServiceAccount subjects of
/// bindings, and the Deployment's container images and their `--namespace`/`--image`
/// arguments, with `extra` arguments for the populator appended.
fn customize(doc: &mut Yaml, namespace: &str, image: &str, pod_security: &str, extra: &[String]) {
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
        doc["metadata"]["labels"][super::version::VERSION_LABEL] =
            Yaml::String(super::version::VERSION.to_string());
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
fn objects(
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
fn render(objects: &[Object]) -> Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&o.body)?);
    }
    Ok(out)
}

/// A namespace name must be a DNS-1123 label.
fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if !ok {
        bail!(
            "namespace {ns:?} is not a valid name: use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
        );
    }
    Ok(())
}

fn check_image(image: &str) -> Result<()> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "--image {image:?} is not an image reference: use a name like ghcr.io/volbackup/volbackup:0.1.0"
        );
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn kube_options(kubeconfig: &Option<std::path::PathBuf>, context: &Option<String>) -> KubeOptions {
    KubeOptions {
        kubeconfig: kubeconfig.clone(),
        context: context.clone(),
        namespace: None,
    }
}

/// What an apply did, as kubectl says it.
fn outcome(before: Option<&str>, after: Option<&str>) -> &'static str {
    match before {
        None => "created",
        Some(rv) if Some(rv) == after => "unchanged",
        Some(_) => "configured",
    }
}

/// `install`
pub fn install(args: &InstallArgs, quiet: bool) -> Result<()> {
    check_namespace(&args.namespace)?;
    let image = args
        .image
        .clone()
        .unwrap_or_else(volbackup_populator::mover::default_image);
    check_image(&image)?;
    let extra = populator_args(&args.populator)?;
    let objs = objects(&args.namespace, &image, args.pod_security.label(), &extra)?;
    if args.dry_run {
        print!("{}", render(&objs)?);
        return Ok(());
    }
    runtime()?.block_on(async {
        let kube = cluster::connect(&kube_options(&args.kubeconfig, &args.context)).await?;
        install_async(&kube.client, &args.namespace, &objs, quiet).await
    })
}

async fn install_async(client: &Client, ns: &str, objs: &[Object], quiet: bool) -> Result<()> {
    // Everything that can refuse the install is checked before anything is written.
    match client
        .list_api_group_resources("populator.storage.k8s.io/v1beta1")
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "volumepopulators") => {}
        Ok(_) => bail!(missing_validator_crd()),
        Err(e) if is_status(&e, 404) => bail!(missing_validator_crd()),
        Err(e) => {
            return Err(explain(
                e,
                "discover",
                "the populator.storage.k8s.io API",
                None,
            ));
        }
    }
    let bindings: Api<DynamicObject> =
        Api::all_with(client.clone(), &kind_named("ClusterRoleBinding").resource());
    if let Some(b) = bindings.get_opt(POPULATOR_NAME).await.map_err(|e| {
        explain(
            e,
            "get",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        )
    })? && let Some(other) = bound_namespace(&b)
        && other != ns
    {
        bail!(
            "volbackup is already installed in namespace {other:?}: run `kubectl volbackup uninstall -n {other}` first, or install with -n {other}"
        );
    }
    let namespaces: Api<DynamicObject> =
        Api::all_with(client.clone(), &kind_named("Namespace").resource());
    let existing_ns = namespaces
        .get_opt(ns)
        .await
        .map_err(|e| explain(e, "get", "namespaces", None))?;
    if existing_ns
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    {
        bail!("namespace {ns:?} is being deleted: wait until it is gone, then install again");
    }
    let foreign_ns = existing_ns.as_ref().is_some_and(|n| !ours(&n.metadata));

    let params = PatchParams::apply(MANAGER).force();
    for o in objs {
        if o.kind.kind == "Namespace" && foreign_ns {
            println!("namespace/{ns} exists (not created by volbackup), left as it is");
            continue;
        }
        let api = o.api(client);
        let what = o.kind.qualified_plural();
        let place = o.namespace.as_deref();
        let before = api
            .get_opt(&o.name)
            .await
            .map_err(|e| explain(e, "get", &what, place))?;
        let body: DynamicObject = serde_json::from_value(serde_json::to_value(&o.body)?)
            .with_context(|| format!("embedded manifest {} is not an object", o.display()))?;
        let verb = if before.is_some() { "patch" } else { "create" };
        let after = api
            .patch(&o.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| explain(e, verb, &what, place))?;
        println!(
            "{} {}",
            o.display(),
            outcome(
                before
                    .as_ref()
                    .and_then(|b| b.metadata.resource_version.as_deref()),
                after.metadata.resource_version.as_deref()
            )
        );
        if o.kind.kind == "CustomResourceDefinition" {
            wait_established(client, &o.name).await?;
        }
    }
    if !quiet && std::io::stderr().is_terminal() {
        eprintln!("waiting for the populator Deployment {ns}/{POPULATOR_NAME} to be available...");
    }
    wait_available(client, ns).await
}

fn missing_validator_crd() -> String {
    format!(
        "the cluster has no VolumePopulator API (populator.storage.k8s.io/v1beta1): install the volume-data-source-validator CRD first (`kubectl apply -f {VALIDATOR_CRD_URL}`), then run install again"
    )
}

fn kind_named(kind: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.kind == kind)
        .expect("every kind used here is in KINDS")
}

/// The namespace of the ServiceAccount a binding grants to.
fn bound_namespace(binding: &DynamicObject) -> Option<String> {
    binding.data["subjects"]
        .as_array()?
        .iter()
        .find(|s| s["kind"] == "ServiceAccount")?["namespace"]
        .as_str()
        .map(str::to_string)
}

/// Whether a namespace is ours: it carries our `managed-by` label, with today's value or the
/// one earlier versions gave it (a namespace without it is the user's).
fn ours(meta: &kube::api::ObjectMeta) -> bool {
    let (key, value) = cluster::MANAGED_BY;
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .is_some_and(|v| v == value || v == cluster::EARLIER_MANAGED_BY)
}

async fn wait_established(client: &Client, name: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let crd = api.get(name).await.map_err(|e| {
            explain(
                e,
                "get",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
            )
        })?;
        let conditions = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .cloned()
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = conditions
                .iter()
                .find(|c| c.status != "True" && c.message.is_some())
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "no Established condition".into());
            bail!(
                "the CRD {name} was not established within {} s: {why}",
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Container waiting reasons that will not resolve by waiting.
const STUCK: &[&str] = &[
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Why a pod cannot start, if a container is stuck: `(reason, message, last exit code)`.
fn stuck(pod: &Pod) -> Option<(String, String, Option<i32>)> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in all {
        let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        if STUCK.contains(&reason.as_str()) {
            let exit = cs
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code);
            return Some((reason, w.message.clone().unwrap_or_default(), exit));
        }
    }
    None
}

/// A pod's state in a few words (`Pending (ContainerCreating)`).
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone());
    match (waiting, unschedulable) {
        (Some(w), _) => format!("{phase} ({w})"),
        (None, Some(m)) => format!("{phase} (not scheduled: {m})"),
        (None, None) => phase,
    }
}

/// Whether the populator Deployment has an available replica of its current generation.
pub fn available(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or(0) >= generation
            && s.updated_replicas.unwrap_or(0) >= 1
            && s.available_replicas.unwrap_or(0) >= 1
    })
}

async fn wait_available(client: &Client, ns: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + WAIT;
    loop {
        let d = deployments
            .get(POPULATOR_NAME)
            .await
            .map_err(|e| explain(e, "get", "deployments.apps", Some(ns)))?;
        if available(&d) {
            return Ok(());
        }
        let current: Vec<Pod> = pods
            .list(&ListParams::default().labels(POD_SELECTOR))
            .await
            .map_err(|e| explain(e, "list", "pods", Some(ns)))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        for p in &current {
            let Some((reason, message, exit)) = stuck(p) else {
                continue;
            };
            let name = p.name_any();
            if reason == "CrashLoopBackOff" {
                let exit = exit
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                let last = last_log_line(&pods, &name).await;
                bail!(
                    "the populator pod {ns}/{name} keeps crashing{exit}{}; see `kubectl -n {ns} logs {name}`",
                    last.map(|l| format!(": {l}")).unwrap_or_default()
                );
            }
            let hint = if reason.contains("Image") {
                "; check the image (--image) and that the nodes can pull it"
            } else {
                ""
            };
            bail!("the populator pod {ns}/{name} cannot start: {reason}: {message}{hint}");
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = current
                .iter()
                .map(|p| format!("pod {} is {}", p.name_any(), pod_state(p)))
                .collect();
            bail!(
                "the populator Deployment {ns}/{POPULATOR_NAME} has no available replica after {} s: {}",
                WAIT.as_secs(),
                if states.is_empty() {
                    "no pod was created".to_string()
                } else {
                    states.join(", ")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last line the populator wrote, trimmed, to say why it exits (best effort).
async fn last_log_line(pods: &Api<Pod>, name: &str) -> Option<String> {
    let params = LogParams {
        container: Some("populator".into()),
        tail_lines: Some(5),
        ..LogParams::default()
    };
    let text = pods.logs(name, &params).await.ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}

/// `uninstall`
pub fn uninstall(args: &UninstallArgs, quiet: bool) -> Result<()> {
    check_namespace(&args.namespace)?;
    let ask = !args.yes;
    if ask && !std::io::stdin().is_terminal() {
        bail!(
            "uninstall needs a confirmation and stdin is not a terminal: pass --yes to delete without asking"
        );
    }
    // The image does not matter for names; the defaults keep the objects' identities.
    let objs = objects(
        &args.namespace,
        &volbackup_populator::mover::default_image(),
        DEFAULT_POD_SECURITY,
        &[],
    )?;
    runtime()?.block_on(async {
        let kube = cluster::connect(&kube_options(&args.kubeconfig, &args.context)).await?;
        uninstall_async(&kube.client, args, &objs, ask, quiet).await
    })
}

async fn uninstall_async(
    client: &Client,
    args: &UninstallArgs,
    objs: &[Object],
    ask: bool,
    quiet: bool,
) -> Result<()> {
    let ns = args.namespace.as_str();
    let mut present: Vec<&Object> = Vec::new();
    let mut kept_ns = false;
    for o in objs.iter().rev() {
        if o.kind.kind == "CustomResourceDefinition" && args.keep_crds {
            continue;
        }
        let found = match o.api(client).get_opt(&o.name).await {
            Ok(f) => f,
            // The kind itself is missing (no VolumePopulator CRD): nothing of it to delete.
            Err(e) if is_status(&e, 404) => None,
            Err(e) => {
                return Err(explain(
                    e,
                    "get",
                    &o.kind.qualified_plural(),
                    o.namespace.as_deref(),
                ));
            }
        };
        let Some(found) = found else { continue };
        if o.kind.kind == "Namespace" && !ours(&found.metadata) {
            kept_ns = true;
            continue;
        }
        present.push(o);
    }
    if present.is_empty() {
        eprintln!("volbackup is not installed in namespace {ns:?}: nothing to delete");
        return Ok(());
    }
    let deletes_crd = present
        .iter()
        .any(|o| o.kind.kind == "CustomResourceDefinition");
    let backups = if deletes_crd {
        count_backups(client).await
    } else {
        None
    };
    if ask {
        eprintln!("This deletes:");
        for o in &present {
            match &o.namespace {
                Some(n) => eprintln!("  {} (namespace {n})", o.display()),
                None => eprintln!("  {}", o.display()),
            }
        }
        if kept_ns {
            eprintln!("  (namespace {ns} is kept: volbackup did not create it)");
        }
        let ok = dialoguer::Confirm::new()
            .with_prompt(prompt(present.len(), deletes_crd, backups))
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("nothing deleted");
        }
    }
    for o in &present {
        let params = if o.kind.kind == "Deployment" {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        match o.api(client).delete(&o.name, &params).await {
            Ok(_) => println!("{} deleted", o.display()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(explain(
                    e,
                    "delete",
                    &o.kind.qualified_plural(),
                    o.namespace.as_deref(),
                ));
            }
        }
    }
    // Like kubectl delete: return once the namespace and the CRD (with their contents) are gone,
    // so that an install right after does not meet them terminating.
    let slow: Vec<&&Object> = present
        .iter()
        .filter(|o| matches!(o.kind.kind, "Namespace" | "CustomResourceDefinition"))
        .collect();
    if !slow.is_empty() && !quiet && std::io::stderr().is_terminal() {
        eprintln!("waiting for the deletions to finish...");
    }
    let deadline = Instant::now() + WAIT;
    for o in slow {
        loop {
            match o.api(client).get_opt(&o.name).await {
                Ok(None) => break,
                Err(e) if is_status(&e, 404) => break,
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(explain(
                        e,
                        "get",
                        &o.kind.qualified_plural(),
                        o.namespace.as_deref(),
                    ));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is still being deleted after {} s: check its finalizers (`kubectl get {} {} -o yaml`)",
                    o.display(),
                    WAIT.as_secs(),
                    o.kind.qualified_plural(),
                    o.name
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

/// How many VolumeBackup objects exist in the cluster (None when they cannot be listed).
async fn count_backups(client: &Client) -> Option<usize> {
    let resource = ApiResource {
        group: "volbackup.io".into(),
        version: "v1alpha1".into(),
        api_version: "volbackup.io/v1alpha1".into(),
        kind: "VolumeBackup".into(),
        plural: "volumebackups".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Some(list.items.len()),
        Err(e) if is_status(&e, 404) => Some(0),
        Err(_) => None,
    }
}

/// The confirmation question.
fn prompt(objects: usize, deletes_crd: bool, backups: Option<usize>) -> String {
    let mut p = format!("Delete these {objects} objects?");
    if deletes_crd {
        let what = match backups {
            Some(1) => "the 1 VolumeBackup object".to_string(),
            Some(n) => format!("all {n} VolumeBackup objects"),
            None => "every VolumeBackup object (they could not be counted)".to_string(),
        };
        p.push_str(&format!(
            " Deleting the VolumeBackup CRD also deletes {what} in the cluster; the data in the repositories stays (--keep-crds keeps them)."
        ));
    }
    p
}

/// Ok when the VolumeBackup CRD, the VolumePopulator registration and an available populator
/// Deployment exist; else one line naming what is missing. A check the caller's RBAC does not
/// allow (403) is skipped: restoring needs none of these reads.
pub async fn check_installed(client: &Client, namespace: &str) -> Result<()> {
    let crd = match client
        .list_api_group_resources("volbackup.io/v1alpha1")
        .await
    {
        Ok(list) => Seen::from(list.resources.iter().any(|r| r.name == "volumebackups")),
        Err(e) if is_status(&e, 404) => Seen::Absent,
        Err(e) if is_status(&e, 403) => Seen::Unknown,
        Err(e) => return Err(explain(e, "discover", "the volbackup.io API", None)),
    };
    let vp = kind_named("VolumePopulator");
    let populators: Api<DynamicObject> = Api::all_with(client.clone(), &vp.resource());
    let populator = match populators.get_opt(VOLUME_POPULATOR_NAME).await {
        Ok(found) => Seen::from(found.is_some()),
        // 404 here: the VolumePopulator kind itself is missing.
        Err(e) if is_status(&e, 404) => Seen::Absent,
        Err(e) if is_status(&e, 403) => Seen::Unknown,
        Err(e) => return Err(explain(e, "get", &vp.qualified_plural(), None)),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = match deployments.get_opt(POPULATOR_NAME).await {
        Ok(Some(d)) => Some(Some(available(&d))),
        Ok(None) => Some(None),
        Err(e) if is_status(&e, 403) => None,
        Err(e) => return Err(explain(e, "get", "deployments.apps", Some(namespace))),
    };
    match missing(crd, populator, deployment, namespace) {
        Some(why) => Err(anyhow!(why)),
        None => Ok(()),
    }
}

/// Whether something was found, or could not be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Present,
    Absent,
    Unknown,
}

impl From<bool> for Seen {
    fn from(found: bool) -> Self {
        if found { Seen::Present } else { Seen::Absent }
    }
}

/// What keeps restores from working, given what was seen: `deployment` is None when it could
/// not be read, `Some(None)` when missing, `Some(Some(available))` otherwise.
fn missing(
    crd: Seen,
    populator: Seen,
    deployment: Option<Option<bool>>,
    namespace: &str,
) -> Option<String> {
    const FIX: &str = "(run `kubectl volbackup install`)";
    let not_installed = "the volbackup populator is not installed";
    if crd == Seen::Absent {
        return Some(format!(
            "{not_installed}: no VolumeBackup CRD ({CRD_NAME}) {FIX}"
        ));
    }
    if populator == Seen::Absent {
        return Some(format!(
            "{not_installed}: no VolumePopulator {VOLUME_POPULATOR_NAME} {FIX}"
        ));
    }
    match deployment {
        Some(None) => Some(format!(
            "{not_installed}: no Deployment {namespace}/{POPULATOR_NAME} {FIX}"
        )),
        Some(Some(false)) => Some(format!(
            "the volbackup populator is not running: Deployment {namespace}/{POPULATOR_NAME} has no available replica {FIX}"
        )),
        Some(Some(true)) | None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::POPULATOR_NAMESPACE;
    use std::collections::BTreeSet;

    fn defaults() -> Vec<Object> {
        objects(
            POPULATOR_NAMESPACE,
            &volbackup_populator::mover::default_image(),
            DEFAULT_POD_SECURITY,
            &[],
        )
        .unwrap()
    }

    fn find<'a>(objs: &'a [Object], kind: &str) -> &'a Object {
        objs.iter()
            .find(|o| o.kind.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in the manifests"))
    }

    #[test]
    fn the_checked_in_manifests_are_the_defaults_unchanged() {
        for (file, text) in FILES {
            for de in serde_yaml::Deserializer::from_str(text) {
                let doc = Yaml::deserialize(de).unwrap();
                if doc.is_null() {
                    continue;
                }
                let mut custom = doc.clone();
                customize(
                    &mut custom,
                    POPULATOR_NAMESPACE,
                    &volbackup_populator::mover::default_image(),
                    DEFAULT_POD_SECURITY,
                    &[],
                );
                assert_eq!(
                    doc,
                    custom,
                    "{file} does not hold the defaults (namespace {POPULATOR_NAMESPACE}, image {}): update it",
                    volbackup_populator::mover::default_image()
                );
            }
        }
    }

    #[test]
    fn objects_come_in_dependency_order() {
        let kinds: Vec<&str> = defaults().iter().map(|o| o.kind.kind).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "ClusterRole",
                "Deployment",
                "VolumePopulator"
            ]
        );
    }

    #[test]
    fn another_namespace_and_image_replace_every_default() {
        let objs = objects("backup-ops", "registry.example/vb:dev", "privileged", &[]).unwrap();
        let text = render(&objs).unwrap();
        assert!(!text.contains("volbackup-system"), "{text}");
        assert!(!text.contains("ghcr.io/volbackup"), "{text}");
        assert_eq!(
            str_at(&find(&objs, "Namespace").body, &["metadata", "name"]),
            Some("backup-ops")
        );
        for o in &objs {
            if o.kind.namespaced {
                assert_eq!(
                    str_at(&o.body, &["metadata", "namespace"]),
                    Some("backup-ops"),
                    "{}",
                    o.display()
                );
            }
        }
        for kind in ["ClusterRoleBinding", "RoleBinding"] {
            assert_eq!(
                find(&objs, kind).body["subjects"][0]["namespace"].as_str(),
                Some("backup-ops")
            );
        }
        let c = &find(&objs, "Deployment").body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"].as_str(), Some("registry.example/vb:dev"));
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            args[..5],
            [
                "populator",
                "--namespace",
                "backup-ops",
                "--image",
                "registry.example/vb:dev"
            ]
        );
    }

    #[test]
    fn the_deployment_runs_unprivileged_with_the_downward_api() {
        let objs = defaults();
        let spec = &find(&objs, "Deployment").body["spec"]["template"]["spec"];
        assert_eq!(spec["serviceAccountName"].as_str(), Some(POPULATOR_NAME));
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true)
        );
        assert_eq!(spec["securityContext"]["runAsUser"].as_u64(), Some(65532));
        let c = &spec["containers"][0];
        assert_eq!(c["name"].as_str(), Some("populator"));
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false)
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"][0].as_str(),
            Some("ALL")
        );
        let env: Vec<(&str, &str)> = c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?,
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
                ))
            })
            .collect();
        for want in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            assert!(env.contains(&want), "{want:?} not in {env:?}");
        }
        assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(8080));
        assert_eq!(c["ports"][0]["name"].as_str(), Some("metrics"));
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
    }

    /// (group, resource) -> verbs granted by the rules of a role.
    fn grants(role: &Yaml) -> BTreeSet<(String, String, String)> {
        let mut out = BTreeSet::new();
        for rule in role["rules"].as_sequence().unwrap() {
            for g in rule["apiGroups"].as_sequence().unwrap() {
                for r in rule["resources"].as_sequence().unwrap() {
                    for v in rule["verbs"].as_sequence().unwrap() {
                        out.insert((
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            v.as_str().unwrap().into(),
                        ));
                    }
                }
            }
        }
        out
    }

    fn assert_grants(role: &Yaml, group: &str, resource: &str, verbs: &[&str]) {
        let g = grants(role);
        for v in verbs {
            assert!(
                g.contains(&(group.into(), resource.into(), (*v).into())),
                "{resource}.{group} lacks {v}"
            );
        }
    }

    #[test]
    fn the_roles_grant_what_the_controller_does_and_no_more() {
        let objs = defaults();
        let cr = &find(&objs, "ClusterRole").body;
        let role = &find(&objs, "Role").body;
        // Exactly these, cluster-wide: reads, PV and PVC patches, status, events.
        let expected_cluster: BTreeSet<(String, String, String)> = [
            (
                "",
                "persistentvolumes",
                &["get", "list", "watch", "patch"][..],
            ),
            (
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "patch"],
            ),
            ("", "secrets", &["get"]),
            ("", "events", &["create", "patch"]),
            ("events.k8s.io", "events", &["create", "patch"]),
            (
                "storage.k8s.io",
                "storageclasses",
                &["get", "list", "watch"],
            ),
            ("volbackup.io", "volumebackups", &["get", "list", "watch"]),
            ("volbackup.io", "volumebackups/status", &["get", "patch"]),
        ]
        .iter()
        .flat_map(|(g, r, vs)| {
            vs.iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
        assert_eq!(grants(cr), expected_cluster);
        // Creating and deleting happens only in the populator's own namespace.
        assert_grants(
            role,
            "",
            "secrets",
            &["get", "list", "watch", "create", "patch", "delete"],
        );
        assert_grants(role, "", "persistentvolumeclaims", &["create", "delete"]);
        assert_grants(
            role,
            "",
            "pods",
            &["get", "list", "watch", "create", "delete"],
        );
        assert_grants(role, "", "pods/log", &["get"]);
        assert_grants(
            role,
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update", "patch"],
        );
    }

    #[test]
    fn the_administrators_proxy_reaches_the_populator_and_credentials_in_it_are_refused() {
        let settings = PopulatorSettings {
            proxy: Some("http://proxy.example:3128".into()),
            no_proxy: Some("10.0.0.0/8,.svc".into()),
            ..Default::default()
        };
        let extra = populator_args(&settings).unwrap();
        let objs = objects(POPULATOR_NAMESPACE, "img:1", DEFAULT_POD_SECURITY, &extra).unwrap();
        let c = &find(&objs, "Deployment").body["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(args.ends_with(&[
            "--proxy",
            "http://proxy.example:3128",
            "--no-proxy",
            "10.0.0.0/8,.svc"
        ]));
        let err = check_proxy("http://user:pw@proxy.example:3128")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials do not belong"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(check_proxy("proxy.example:3128").is_err());
        assert!(
            populator_args(&PopulatorSettings::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn allowed_node_directories_reach_the_populator_and_bad_ones_are_refused() {
        let settings = PopulatorSettings {
            allow_node_repository: vec!["/srv/backups".into(), "/mnt/nfs".into()],
            ..Default::default()
        };
        assert_eq!(
            populator_args(&settings).unwrap(),
            [
                "--allow-node-repository",
                "/srv/backups",
                "--allow-node-repository",
                "/mnt/nfs"
            ]
        );
        for bad in ["/", "srv", "/srv/../etc"] {
            let settings = PopulatorSettings {
                allow_node_repository: vec![bad.into()],
                ..Default::default()
            };
            let err = populator_args(&settings).unwrap_err().to_string();
            assert!(err.starts_with("--allow-node-repository "), "{err}");
        }
    }

    fn role_named<'a>(objs: &'a [Object], name: &str) -> &'a Yaml {
        &objs
            .iter()
            .find(|o| o.kind.kind == "ClusterRole" && o.name == name)
            .unwrap_or_else(|| panic!("no ClusterRole {name}"))
            .body
    }

    #[test]
    fn the_backup_operator_deletes_no_claim_or_snapshot_and_lists_no_secret() {
        let objs = defaults();
        let user = grants(role_named(&objs, "volbackup-user"));
        for (group, resource, verb) in [
            ("", "persistentvolumeclaims", "delete"),
            ("", "persistentvolumeclaims", "deletecollection"),
            ("snapshot.storage.k8s.io", "volumesnapshots", "delete"),
            ("", "secrets", "list"),
            ("", "secrets", "watch"),
            ("", "secrets", "delete"),
            ("", "pods", "update"),
            ("", "pods/exec", "create"),
            ("", "serviceaccounts", "get"),
        ] {
            assert!(
                !user.contains(&(group.into(), resource.into(), verb.into())),
                "volbackup-user may {verb} {resource}"
            );
        }
        assert!(
            !user
                .iter()
                .any(|(g, r, v)| g == "*" || r == "*" || v == "*")
        );
        // What cleanup needs lives in its own role.
        let cleanup = role_named(&objs, "volbackup-cleanup");
        assert_grants(cleanup, "", "persistentvolumeclaims", &["list", "delete"]);
        assert_grants(
            cleanup,
            "snapshot.storage.k8s.io",
            "volumesnapshots",
            &["list", "delete"],
        );
        assert!(!grants(cleanup).iter().any(|(_, r, _)| r == "secrets"));
    }

    #[test]
    fn kubectl_names_objects_by_kind_and_group() {
        let objs = defaults();
        let names: Vec<String> = objs.iter().map(Object::display).collect();
        assert_eq!(
            names[0],
            "customresourcedefinition.apiextensions.k8s.io/volumebackups.volbackup.io"
        );
        assert!(names.contains(&"namespace/volbackup-system".to_string()));
        assert!(names.contains(&"deployment.apps/volbackup-populator".to_string()));
        assert!(names.contains(
            &"volumepopulator.populator.storage.k8s.io/volbackup-volumebackup".to_string()
        ));
    }

    #[test]
    fn an_apply_is_unchanged_only_when_the_resource_version_stayed() {
        assert_eq!(outcome(None, Some("5")), "created");
        assert_eq!(outcome(Some("5"), Some("5")), "unchanged");
        assert_eq!(outcome(Some("5"), Some("6")), "configured");
    }

    #[test]
    fn bad_namespaces_and_images_are_refused() {
        for ns in ["", "Caps", "-x", "x-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_namespace(ns).is_err(), "{ns:?} was accepted");
        }
        check_namespace("volbackup-system").unwrap();
        for image in ["", "a b", "x\ny"] {
            assert!(check_image(image).is_err(), "{image:?} was accepted");
        }
        check_image("ghcr.io/volbackup/volbackup:0.1.0").unwrap();
    }

    #[test]
    fn the_prompt_says_how_many_backups_the_crd_takes_along() {
        let p = prompt(9, true, Some(3));
        assert!(
            p.contains("9 objects") && p.contains("all 3 VolumeBackup objects"),
            "{p}"
        );
        assert!(p.contains("repositories stays"), "{p}");
        assert!(prompt(9, true, None).contains("could not be counted"));
        assert!(!prompt(8, false, None).contains("VolumeBackup"));
    }

    #[test]
    fn check_installed_names_the_first_missing_piece() {
        let ns = "volbackup-system";
        let all = missing(Seen::Present, Seen::Present, Some(Some(true)), ns);
        assert_eq!(all, None);
        let no_crd = missing(Seen::Absent, Seen::Absent, Some(None), ns).unwrap();
        assert!(no_crd.contains("no VolumeBackup CRD"), "{no_crd}");
        let no_vp = missing(Seen::Present, Seen::Absent, Some(Some(true)), ns).unwrap();
        assert!(
            no_vp.contains("no VolumePopulator volbackup-volumebackup"),
            "{no_vp}"
        );
        assert_eq!(
            missing(Seen::Present, Seen::Present, Some(None), ns).unwrap(),
            "the volbackup populator is not installed: no Deployment volbackup-system/volbackup-populator (run `kubectl volbackup install`)"
        );
        let down = missing(Seen::Present, Seen::Present, Some(Some(false)), ns).unwrap();
        assert!(down.contains("no available replica"), "{down}");
        for m in [no_crd, no_vp, down] {
            assert!(m.ends_with("(run `kubectl volbackup install`)"), "{m}");
        }
    }

    #[test]
    fn checks_the_caller_may_not_make_are_skipped() {
        assert_eq!(
            missing(Seen::Unknown, Seen::Unknown, None, "volbackup-system"),
            None
        );
    }

    #[test]
    fn a_pod_that_cannot_pull_its_image_is_stuck() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "populator", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}
            }]}
        }))
        .unwrap();
        let (reason, message, _) = stuck(&pod).unwrap();
        assert_eq!(reason, "ImagePullBackOff");
        assert!(message.contains("Back-off"));
        let creating: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "populator", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}
        }))
        .unwrap();
        assert!(stuck(&creating).is_none());
        assert_eq!(pod_state(&creating), "Pending (ContainerCreating)");
    }
}
