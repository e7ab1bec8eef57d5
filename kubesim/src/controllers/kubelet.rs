//! The kubelet and a container runtime, for every simulated node at once (docs: "Pod
//! Lifecycle", "Init Containers", "Volumes", "Configure Service Accounts for Pods"; source:
//! kubernetes/kubernetes `pkg/kubelet/kubelet_pods.go` `getPhase`, `pkg/kubelet/kuberuntime`).
//!
//! How a container runs here: as an OCI container under `runc` (see `runtime` for the bundle
//! and what of the security context it enforces, `images` for pulling). Its root filesystem is
//! - for an image from a registry: an overlay on the image's unpacked root filesystem (cached
//!   by digest), with its own writable layer per container start;
//! - for the images in [`HOST_IMAGES`] (busybox, alpine, debian, ...) and for images mapped to a
//!   host binary ([`ControllerContext::images`], kubesim's own test programs): a skeleton with
//!   the host's `/usr` (and the merged-usr links) bound read-only, an overlay on the host's
//!   `/etc`, and the mapped binary bound at its own path. `command` and `args` run as given
//!   (`sh` when both are empty, `sleep infinity` for pause); a mapped image's `command[0]`
//!   naming the binary's file name runs the binary. The project's tests never map its image.
//!
//! Any other image must come from a registry on loopback; others fail to pull (`ErrImagePull`,
//! then `ImagePullBackOff`, with the kubelet's events).
//!
//! What a container gets, as from a real kubelet:
//! - `/proc`, a `/dev` tmpfs with the usual nodes, `/dev/pts`, `/dev/shm`, `/sys` read-only;
//!   the pod's Block volumes as device nodes at their `devicePath` (a loop device attached with
//!   `losetup` per pod and volume, read-only when the claim is mounted read-only), owned as the
//!   host's node (root:disk, 0660), so only root can open them;
//! - Filesystem PVC volumes bind-mounted from `DIR/volumes/<pv>` at their `mountPath`
//!   (read-only when the mount or the volume source says so; `subPath` honoured); with a pod
//!   `fsGroup`, writable volumes are given to that group first (group read/write, setgid
//!   directories; `fsGroupChangePolicy: OnRootMismatch` skips a volume whose root already fits);
//! - secret, configMap, downwardAPI, projected and emptyDir volumes as files under
//!   `DIR/pods/<ns>_<name>_<uid>/volumes/<volume>`, bind-mounted the same way; hostPath as is;
//! - the ServiceAccount token, `ca.crt` and `namespace` at
//!   `/var/run/secrets/kubernetes.io/serviceaccount` (unless `automountServiceAccountToken` is
//!   false on the pod or its ServiceAccount), plus `KUBERNETES_SERVICE_HOST`/`_PORT`, so
//!   kube-rs's in-cluster configuration works unchanged;
//! - `/etc/hosts` and `/etc/hostname` for the pod, the host's `/etc/resolv.conf`;
//! - the termination message file (`terminationMessagePath`, default `/dev/termination-log`)
//!   bind-mounted from a per-container host file the kubelet reads after the exit.
//!
//! Lifecycle: volumes first (the pod stays Pending/ContainerCreating with `FailedMount` events
//! until its claims are bound and its secrets/configmaps exist), then init containers one by
//! one, then all containers. stdout+stderr go to [`pod_log_path`] (appended across restarts).
//! restartPolicy Always/OnFailure restarts exited containers with a doubling back-off (0.5 s up
//! to 8 s; the real one starts at 10 s) and `CrashLoopBackOff`; the phase follows `getPhase`.
//! Deleting a pod (deletionTimestamp, or the object vanishing) sends SIGTERM to each
//! container (`runc kill`; the program is PID 1 of its namespace, so it dies only if it
//! handles the signal), SIGKILL after min(grace period, 3 s), detaches the loop devices and
//! then removes the pod object (the kubelet's final delete).
//!
//! Simplified or ignored: probes (a running container is ready), resources, seccomp, image
//! pull secrets, network (pods share the host's; each pod's IP is its own address in
//! 127.0.0.0/8, see [`pod_ip`]); with a host image and `readOnlyRootFilesystem`, `/etc` stays
//! writable (it is an overlay of its own).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::super::api::{ControllerContext, ObjectStore, pod_log_path, res};
use super::events::{self, EventType};
use super::{Controller, name, namespace, now, s, terminating, uid};
use super::{images, runtime};

const COMPONENT: &str = "kubelet";
/// Images that run their `command` from the host's PATH.
pub const HOST_IMAGES: &[&str] = &[
    "busybox",
    "alpine",
    "debian",
    "ubuntu",
    "bash",
    "registry.k8s.io/pause",
    "k8s.gcr.io/pause",
];
const SA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// State shared between the kubelet controller, its pod workers and [`super::Controllers`].
pub struct KubeletShared {
    handle: Handle,
    pods: Mutex<HashMap<String, PodEntry>>,
    finished: Mutex<HashSet<String>>,
}

struct PodEntry {
    namespace: String,
    name: String,
    stop: watch::Sender<bool>,
    procs: Arc<Mutex<HashMap<String, Running>>>,
    loops: Arc<Mutex<Vec<String>>>,
}

/// A running container: the `runc run` process and what must be undone after it.
#[derive(Clone)]
struct Running {
    /// Process group of `runc run`.
    pgid: i32,
    /// runc's state directory and the container's id there.
    runc_root: PathBuf,
    id: String,
    /// Overlay mounts made on the host for its root filesystem.
    overlays: Vec<PathBuf>,
}

impl Running {
    /// Sends a signal to every process of the container. A container `runc run` has not
    /// created yet is waited for (up to 2 s), as the signal must not be lost; gives whether it
    /// was delivered.
    fn signal(&self, sig: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let sent = std::process::Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(["kill", "--all", &self.id, sig])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if sent || std::time::Instant::now() > deadline {
                return sent;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes runc's state of the container and its overlays (after it exited).
    fn release(&self) {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        for o in self.overlays.iter().rev() {
            let _ = rustix::mount::unmount(o, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn kill_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

fn detach_loops(loops: &Mutex<Vec<String>>) {
    let devs: Vec<String> = loops.lock().expect("loops lock").drain(..).collect();
    for dev in devs {
        let out = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&dev)
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            tracing::warn!(
                "kubesim kubelet: losetup -d {dev}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
}

impl KubeletShared {
    pub(crate) fn new(handle: Handle) -> Self {
        Self {
            handle,
            pods: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
        }
    }

    /// SIGKILLs every running process of the pod.
    pub(crate) fn kill_pod(&self, ns: &str, pod: &str) -> bool {
        let pods = self.pods.lock().expect("pods lock");
        let mut killed = false;
        for e in pods.values().filter(|e| e.namespace == ns && e.name == pod) {
            let running: Vec<Running> = e
                .procs
                .lock()
                .expect("procs lock")
                .values()
                .cloned()
                .collect();
            for r in running {
                killed |= r.signal("KILL");
            }
        }
        killed
    }

    /// Stops all pod workers, kills their processes and detaches their loop devices.
    pub(crate) fn shutdown(&self) {
        let mut pods = self.pods.lock().expect("pods lock");
        for (_, e) in pods.drain() {
            let _ = e.stop.send(true);
            for r in e.procs.lock().expect("procs lock").values() {
                let _ = r.signal("KILL");
                kill_group(r.pgid, rustix::process::Signal::KILL);
                r.release();
            }
            detach_loops(&e.loops);
        }
    }
}

/// The kubelet controller: starts and stops pod workers.
pub struct Kubelet {
    shared: Arc<KubeletShared>,
    store: Arc<dyn ObjectStore>,
}

impl Kubelet {
    pub(crate) fn new(shared: Arc<KubeletShared>, store: Arc<dyn ObjectStore>) -> Self {
        Self { shared, store }
    }
}

fn pod_dir(ctx: &ControllerContext, pod: &Value) -> PathBuf {
    ctx.dir
        .join("pods")
        .join(format!("{}_{}_{}", namespace(pod), name(pod), uid(pod)))
}

/// The kubelet's final delete of a terminated pod.
fn finish_delete(
    store: &dyn ObjectStore,
    ctx: &ControllerContext,
    ns: &str,
    pod_name: &str,
    pod_uid: &str,
) {
    if let Some(p) = store.get(&res::pods(), Some(ns), pod_name)
        && uid(&p) == pod_uid
        && terminating(&p)
        && let Err(e) = store.delete(&res::pods(), Some(ns), pod_name)
        && e.code != 404
    {
        tracing::warn!("kubesim kubelet: deleting pod {ns}/{pod_name}: {e}");
    }
    let dir = ctx
        .dir
        .join("pods")
        .join(format!("{ns}_{pod_name}_{pod_uid}"));
    let _ = super::provisioner::remove_any(&dir);
}

impl Controller for Kubelet {
    fn reconcile(&mut self, store: &dyn ObjectStore, ctx: &ControllerContext) {
        let pods = store.list(&res::pods(), None);
        let mut seen = HashSet::new();
        let mut entries = self.shared.pods.lock().expect("pods lock");
        for pod in &pods {
            let node = s(pod, "/spec/nodeName").unwrap_or("");
            if node.is_empty() || !ctx.nodes.iter().any(|n| n == node) {
                continue;
            }
            let pod_uid = uid(pod).to_string();
            seen.insert(pod_uid.clone());
            if terminating(pod) {
                if let Some(e) = entries.get(&pod_uid) {
                    let _ = e.stop.send(true);
                } else {
                    finish_delete(store, ctx, namespace(pod), name(pod), &pod_uid);
                }
                continue;
            }
            if entries.contains_key(&pod_uid)
                || self
                    .shared
                    .finished
                    .lock()
                    .expect("finished lock")
                    .contains(&pod_uid)
                || matches!(s(pod, "/status/phase"), Some("Succeeded") | Some("Failed"))
            {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let procs = Arc::new(Mutex::new(HashMap::new()));
            let loops = Arc::new(Mutex::new(Vec::new()));
            entries.insert(
                pod_uid.clone(),
                PodEntry {
                    namespace: namespace(pod).to_string(),
                    name: name(pod).to_string(),
                    stop,
                    procs: procs.clone(),
                    loops: loops.clone(),
                },
            );
            let worker = Arc::new(PodWorker::new(
                self.store.clone(),
                ctx.clone(),
                pod.clone(),
                stop_rx,
                procs,
                loops,
            ));
            let shared = self.shared.clone();
            self.shared.handle.spawn(async move {
                let deleted = worker.clone().run().await;
                detach_loops(&worker.loops);
                shared.pods.lock().expect("pods lock").remove(&worker.uid);
                if deleted {
                    let (st, x) = (worker.store.clone(), worker.ctx.clone());
                    let (ns, n, u) = (worker.ns.clone(), worker.name.clone(), worker.uid.clone());
                    let _ =
                        tokio::task::spawn_blocking(move || finish_delete(&*st, &x, &ns, &n, &u))
                            .await;
                } else {
                    shared
                        .finished
                        .lock()
                        .expect("finished lock")
                        .insert(worker.uid.clone());
                }
            });
        }
        // Pods that vanished from the store: kill what is left of them.
        for (u, e) in entries.iter() {
            if !seen.contains(u) {
                let _ = e.stop.send(true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pod workers.

#[derive(Clone, Default)]
struct ContainerStatus {
    name: String,
    image: String,
    restart_count: u32,
    state: Value,
    last_state: Value,
    started_once: bool,
    container_id: String,
}

impl ContainerStatus {
    fn running(&self) -> bool {
        self.state.get("running").is_some()
    }
    /// The exit code of the latest termination (current or last state).
    fn last_exit(&self) -> Option<i64> {
        self.state
            .pointer("/terminated/exitCode")
            .or_else(|| self.last_state.pointer("/terminated/exitCode"))
            .and_then(Value::as_i64)
    }
    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": format!("kubesim://{}", self.image),
            "ready": self.running(),
            "started": self.running(),
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": if self.last_state.is_null() { json!({}) } else { self.last_state.clone() },
        });
        if !self.container_id.is_empty() {
            v["containerID"] = json!(self.container_id);
        }
        v
    }
}

struct PodState {
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    init_done: bool,
    failed_init: bool,
    start_time: String,
    last_published: Value,
}

enum Prepared {
    /// host path of each volume (dir or file), by volume name
    Paths(HashMap<String, VolumeSource>),
}

#[derive(Clone)]
enum VolumeSource {
    Path {
        path: PathBuf,
        read_only: bool,
    },
    Block {
        major: u32,
        minor: u32,
        uid: u32,
        gid: u32,
        mode: u32,
        read_only: bool,
    },
}

enum RunOutcome {
    Exited(i64),
    Stopped,
    PullFailed,
    ConfigError,
}

struct PodWorker {
    store: Arc<dyn ObjectStore>,
    ctx: ControllerContext,
    pod: Value,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    procs: Arc<Mutex<HashMap<String, Running>>>,
    loops: Arc<Mutex<Vec<String>>>,
    state: Mutex<PodState>,
}

/// Resolves when the pod is to stop (or its stop channel is gone).
async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn image_variants(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let mut v = vec![base.to_string()];
    for prefix in [
        "docker.io/library/",
        "docker.io/",
        "library/",
        "index.docker.io/library/",
    ] {
        if let Some(rest) = base.strip_prefix(prefix) {
            v.push(rest.to_string());
        }
    }
    v
}

#[derive(Clone)]
enum ImageKind {
    /// A kubesim test program run from the host (`ClusterOptions::images`).
    Mapped(PathBuf),
    /// A distribution image whose programs are the host's ([`HOST_IMAGES`]).
    Host,
    /// Pulled from its registry.
    Registry,
}

fn resolve_image(ctx: &ControllerContext, image: &str) -> ImageKind {
    let variants = image_variants(image);
    for (k, bin) in &ctx.images {
        let key_variants = image_variants(k);
        if key_variants.iter().any(|kv| variants.contains(kv)) {
            return ImageKind::Mapped(bin.clone());
        }
    }
    if variants.iter().any(|v| HOST_IMAGES.contains(&v.as_str())) {
        return ImageKind::Host;
    }
    ImageKind::Registry
}

/// The API server's default `imagePullPolicy`: `Always` for `:latest` or no tag, else
/// `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    let r = images::Reference::parse(image);
    if r.digest.is_none() && r.tag.as_deref() == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// Why a container could not be made.
enum BundleError {
    /// The spec cannot run (`CreateContainerConfigError`).
    Config(String),
    /// The node failed (`StartError`).
    Runtime(String),
}

impl From<std::io::Error> for BundleError {
    fn from(e: std::io::Error) -> Self {
        BundleError::Runtime(e.to_string())
    }
}

/// The error runc logged, if it failed before or instead of the container's program.
fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("level").and_then(Value::as_str) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(Value::as_str).map(str::to_string))
        .next_back()
}

/// Mounts an overlay of `lower` with a writable layer in `scratch` at `target`.
fn overlay(lower: &Path, scratch: &Path, target: &Path) -> std::io::Result<()> {
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d)?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(opts).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| std::io::Error::other(format!("overlay on {}: {e}", target.display())))
}

/// Gives a Filesystem volume to the pod's `fsGroup` the way the kubelet does
/// (`SetVolumeOwnership`): every file and directory gets that group and group read (and
/// write, unless the volume is read-only) permission, directories also execute and setgid.
/// With `OnRootMismatch`, a volume whose root already has the group and the permissions is
/// left alone.
fn set_volume_ownership(
    root: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mask = if read_only { 0o440 } else { 0o660 };
    let want = |md: &std::fs::Metadata| {
        let m = md.mode();
        let mut need = mask;
        if md.is_dir() {
            need |= 0o2000 | 0o110;
        }
        (m | need, md.gid() == gid && m & need == need)
    };
    if on_root_mismatch && want(&std::fs::metadata(root)?).1 {
        return Ok(());
    }
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        if md.file_type().is_symlink() {
            let _ = std::os::unix::fs::lchown(&p, None, Some(gid));
            continue;
        }
        std::os::unix::fs::chown(&p, None, Some(gid))?;
        let (mode, _) = want(&md);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(())
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Expands `$(VAR)` references like the kubelet (`$$` escapes).
fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let var = &input[i + 2..i + 2 + end];
                if let Some(val) = env.get(var) {
                    out.push_str(val);
                    i += end + 3;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().expect("char at boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn decode_b64(v: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .unwrap_or_else(|_| v.as_bytes().to_vec())
}

/// The key/value pairs of a secret (decoded) or configmap.
fn object_data(obj: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(m) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in m {
            let s = v.as_str().unwrap_or("");
            out.insert(
                k.clone(),
                if secret {
                    decode_b64(s)
                } else {
                    s.as_bytes().to_vec()
                },
            );
        }
    }
    if let Some(m) = obj
        .get(if secret { "stringData" } else { "binaryData" })
        .and_then(Value::as_object)
    {
        for (k, v) in m {
            let s = v.as_str().unwrap_or("");
            out.insert(
                k.clone(),
                if secret {
                    s.as_bytes().to_vec()
                } else {
                    decode_b64(s)
                },
            );
        }
    }
    out
}

/// The pod's IP: an address in 127.0.0.0/8 derived from its uid, so that pods, which all share
/// the host's network, can each bind the same port on their own address (every 127/8 address
/// is local on Linux).
pub fn pod_ip(pod: &Value) -> String {
    let uid = s(pod, "/metadata/uid").unwrap_or("");
    let h = uid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_le_bytes();
    format!("127.{}.{}.{}", a.max(1), b, c.clamp(2, 254))
}

fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let pod_address = pod_ip(pod);
    let v = match path {
        "metadata.name" => s(pod, "/metadata/name"),
        "metadata.namespace" => s(pod, "/metadata/namespace"),
        "metadata.uid" => s(pod, "/metadata/uid"),
        "spec.nodeName" => s(pod, "/spec/nodeName"),
        "spec.serviceAccountName" => Some(s(pod, "/spec/serviceAccountName").unwrap_or("default")),
        "status.podIP" => Some(pod_address.as_str()),
        "status.hostIP" => Some("127.0.0.1"),
        p => {
            let (field, key) = p.strip_suffix("']").and_then(|p| p.split_once("['"))?;
            let map = match field {
                "metadata.labels" => "/metadata/labels",
                "metadata.annotations" => "/metadata/annotations",
                _ => return None,
            };
            return pod
                .pointer(map)
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    };
    v.map(str::to_string)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl PodWorker {
    fn new(
        store: Arc<dyn ObjectStore>,
        ctx: ControllerContext,
        pod: Value,
        stop: watch::Receiver<bool>,
        procs: Arc<Mutex<HashMap<String, Running>>>,
        loops: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        let statuses = |key: &str| -> Vec<ContainerStatus> {
            pod.pointer(&format!("/spec/{key}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|c| ContainerStatus {
                            name: s(c, "/name").unwrap_or("").to_string(),
                            image: s(c, "/image").unwrap_or("").to_string(),
                            state: json!({"waiting": {"reason": if key == "initContainers" { "PodInitializing" } else { "ContainerCreating" }}}),
                            ..Default::default()
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let init = statuses("initContainers");
        let main = statuses("containers");
        Self {
            dir: pod_dir(&ctx, &pod),
            ns: namespace(&pod).to_string(),
            name: name(&pod).to_string(),
            uid: uid(&pod).to_string(),
            state: Mutex::new(PodState {
                init_done: init.is_empty(),
                init,
                main,
                failed_init: false,
                start_time: now(),
                last_published: Value::Null,
            }),
            store,
            ctx,
            pod,
            stop,
            procs,
            loops,
        }
    }

    fn restart_policy(&self) -> &str {
        s(&self.pod, "/spec/restartPolicy").unwrap_or("Always")
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps, returning true early when the pod is being stopped.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        if self.stopped() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopped(),
            _ = wait_stop(self.stop.clone()) => true,
        }
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        events::record(&*self.store, &self.pod, kind, reason, message, COMPONENT);
    }

    fn phase(&self, st: &PodState) -> &'static str {
        if st.failed_init {
            return "Failed";
        }
        if !st.init_done {
            return "Pending";
        }
        let (mut running, mut waiting, mut stopped, mut failed) = (0, 0, 0, 0);
        for c in &st.main {
            if c.running() {
                running += 1;
            } else if c.state.get("terminated").is_some()
                || c.last_state.get("terminated").is_some()
            {
                stopped += 1;
                if c.last_exit().unwrap_or(0) != 0 {
                    failed += 1;
                }
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            return "Pending";
        }
        if running > 0 {
            return "Running";
        }
        if stopped == 0 {
            return "Pending";
        }
        match self.restart_policy() {
            "Always" => "Running",
            "OnFailure" if failed > 0 => "Running",
            "Never" if failed > 0 => "Failed",
            _ => "Succeeded",
        }
    }

    /// Writes the pod status (only when it changed).
    fn publish(&self) {
        let mut st = self.state.lock().expect("state lock");
        let phase = self.phase(&st);
        let all_ready = !st.main.is_empty() && st.main.iter().all(ContainerStatus::running);
        let t = now();
        let cond = |ty: &str, ok: bool, reason: Option<&str>| {
            let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": t});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let ready_reason = if all_ready {
            None
        } else if phase == "Succeeded" || phase == "Failed" {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", true, None),
                cond("Initialized", st.init_done, if st.init_done { None } else { Some("ContainersNotInitialized") }),
                cond("Ready", all_ready, ready_reason),
                cond("ContainersReady", all_ready, ready_reason),
                cond("PodScheduled", true, None),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod_ip(&self.pod),
            "podIPs": [{"ip": pod_ip(&self.pod)}],
            "startTime": st.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": st.main.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
        });
        if !st.init.is_empty() {
            status["initContainerStatuses"] = json!(
                st.init
                    .iter()
                    .map(ContainerStatus::to_json)
                    .collect::<Vec<_>>()
            );
        }
        // Compare without the timestamps of the conditions.
        let mut cmp = status.clone();
        cmp["conditions"] = json!(status["conditions"].as_array().map(|a| {
            a.iter()
                .map(|c| json!([c["type"], c["status"]]))
                .collect::<Vec<_>>()
        }));
        if cmp == st.last_published {
            return;
        }
        st.last_published = cmp;
        drop(st);
        super::patch(
            &*self.store,
            &res::pods(),
            Some(&self.ns),
            &self.name,
            json!({"status": status}),
        );
    }

    fn set_state(&self, init: bool, idx: usize, f: impl FnOnce(&mut ContainerStatus)) {
        {
            let mut st = self.state.lock().expect("state lock");
            let c = if init {
                &mut st.init[idx]
            } else {
                &mut st.main[idx]
            };
            f(c);
        }
        self.publish();
    }

    /// Runs the pod; returns true when it ended because the pod is being deleted.
    async fn run(self: Arc<Self>) -> bool {
        self.publish();
        // 1. Volumes.
        let prepared = loop {
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || me.prepare_volumes()).await;
            match res {
                Ok(Ok(p)) => break p,
                Ok(Err(msg)) => self.event(EventType::Warning, "FailedMount", &msg),
                Err(e) => tracing::error!("kubesim kubelet: preparing volumes panicked: {e}"),
            }
            if self.sleep_or_stop(Duration::from_millis(300)).await {
                return self.stopped_by_delete();
            }
        };
        let prepared = Arc::new(prepared);
        // 2. Init containers, in order.
        let init_count = self.state.lock().expect("state lock").init.len();
        for i in 0..init_count {
            let mut backoff = Duration::from_millis(500);
            loop {
                match self.clone().run_once(true, i, &prepared).await {
                    RunOutcome::Stopped => return self.stopped_by_delete(),
                    RunOutcome::Exited(0) => break,
                    RunOutcome::Exited(_) if self.restart_policy() == "Never" => {
                        self.state.lock().expect("state lock").failed_init = true;
                        self.publish();
                        return false;
                    }
                    RunOutcome::Exited(_) => {
                        self.set_state(true, i, |c| {
                            c.last_state = c.state.clone();
                            c.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {}s restarting failed container={} pod={}_{}({})", backoff.as_secs_f32(), c.name, self.name, self.ns, self.uid)}});
                        });
                    }
                    RunOutcome::PullFailed | RunOutcome::ConfigError => {}
                }
                if self.sleep_or_stop(backoff).await {
                    return self.stopped_by_delete();
                }
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
        }
        if init_count > 0 {
            self.state.lock().expect("state lock").init_done = true;
            self.publish();
        }
        // 3. All containers at once.
        let main_count = self.state.lock().expect("state lock").main.len();
        let runs = (0..main_count).map(|i| self.clone().run_main(i, prepared.clone()));
        let results = futures::future::join_all(runs).await;
        if results.iter().any(|stopped| *stopped) || self.stopped() {
            return self.stopped_by_delete();
        }
        self.publish();
        false
    }

    /// Whether the pod is gone or being deleted (rather than the kubelet shutting down).
    fn stopped_by_delete(&self) -> bool {
        match self.store.get(&res::pods(), Some(&self.ns), &self.name) {
            Some(p) => uid(&p) != self.uid || terminating(&p),
            None => true,
        }
    }

    /// Runs a main container with its restart policy; returns true when stopped.
    async fn run_main(self: Arc<Self>, i: usize, prepared: Arc<Prepared>) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            let outcome = self.clone().run_once(false, i, &prepared).await;
            let restart = match outcome {
                RunOutcome::Stopped => return true,
                RunOutcome::PullFailed | RunOutcome::ConfigError => true,
                RunOutcome::Exited(code) => match self.restart_policy() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                },
            };
            if !restart {
                return false;
            }
            if let RunOutcome::Exited(_) = outcome {
                let secs = backoff.as_secs_f32();
                self.set_state(false, i, |c| {
                    c.last_state = c.state.clone();
                    c.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off {secs}s restarting failed container={} pod={}_{}({})", c.name, self.name, self.ns, self.uid)}});
                });
                self.event(
                    EventType::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
            }
            if self.sleep_or_stop(backoff).await {
                return true;
            }
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    fn container_spec(&self, init: bool, i: usize) -> Value {
        let key = if init {
            "/spec/initContainers"
        } else {
            "/spec/containers"
        };
        self.pod
            .pointer(key)
            .and_then(|a| a.get(i))
            .cloned()
            .unwrap_or(json!({}))
    }

    /// Reports a failed pull (`ErrImagePull`, then `ImagePullBackOff`) with the kubelet's events.
    fn pull_failed(&self, init: bool, i: usize, image: &str, msg: &str) {
        let already = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            s(&cs.state, "/waiting/reason") == Some("ErrImagePull")
        };
        if already {
            self.set_state(init, i, |cs| cs.state = json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {msg}")}}));
            self.event(
                EventType::Normal,
                "BackOff",
                &format!("Back-off pulling image \"{image}\""),
            );
            self.event(EventType::Warning, "Failed", "Error: ImagePullBackOff");
        } else {
            self.set_state(init, i, |cs| {
                cs.state = json!({"waiting": {"reason": "ErrImagePull", "message": msg}})
            });
            self.event(
                EventType::Warning,
                "Failed",
                &format!("Failed to pull image \"{image}\": {msg}"),
            );
            self.event(EventType::Warning, "Failed", "Error: ErrImagePull");
        }
    }

    /// Reports a container that cannot be created from its spec (`CreateContainerConfigError`).
    fn config_error(&self, init: bool, i: usize, msg: &str) -> RunOutcome {
        self.set_state(
            init,
            i,
            |cs| {
                cs.state =
                    json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}})
            },
        );
        self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
        RunOutcome::ConfigError
    }

    /// The program and arguments: the image's entrypoint and cmd as `command` and `args`
    /// override them (the kubelet's rules), or the host-image conventions.
    fn argv(
        c: &Value,
        kind: &ImageKind,
        image: &str,
        pulled: Option<&images::Image>,
    ) -> Vec<String> {
        let command = str_list(c.get("command"));
        let args = str_list(c.get("args"));
        if let Some(img) = pulled {
            let cfg = &img.config;
            return match (command.is_empty(), args.is_empty()) {
                (true, true) => cfg.entrypoint.iter().chain(&cfg.cmd).cloned().collect(),
                (true, false) => cfg.entrypoint.iter().cloned().chain(args).collect(),
                (false, _) => command.into_iter().chain(args).collect(),
            };
        }
        let file_name = |p: &str| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
        };
        match kind {
            ImageKind::Mapped(bin) => {
                let bin_s = bin.to_string_lossy().to_string();
                if command.is_empty() {
                    std::iter::once(bin_s).chain(args).collect()
                } else if file_name(&command[0]) == file_name(&bin_s) {
                    std::iter::once(bin_s)
                        .chain(command[1..].iter().cloned())
                        .chain(args)
                        .collect()
                } else {
                    command.into_iter().chain(args).collect()
                }
            }
            _ => {
                if !command.is_empty() {
                    command.into_iter().chain(args).collect()
                } else if !args.is_empty() {
                    args
                } else if image_variants(image).iter().any(|v| v.ends_with("pause")) {
                    vec!["sleep".into(), "infinity".into()]
                } else {
                    vec!["sh".into()]
                }
            }
        }
    }

    /// Starts one container and waits for it to exit (or for the pod to stop).
    async fn run_once(self: Arc<Self>, init: bool, i: usize, prepared: &Prepared) -> RunOutcome {
        let c = self.container_spec(init, i);
        let cname = s(&c, "/name").unwrap_or("").to_string();
        let image = s(&c, "/image").unwrap_or("").to_string();
        let kind = resolve_image(&self.ctx, &image);
        let first_start = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            !cs.started_once
        };
        let pulled = if let ImageKind::Registry = kind {
            let policy = s(&c, "/imagePullPolicy")
                .map(str::to_string)
                .unwrap_or_else(|| default_pull_policy(&image).to_string());
            let cached = policy != "Always" && self.ctx.image_service.has(&image);
            if !cached {
                self.event(
                    EventType::Normal,
                    "Pulling",
                    &format!("Pulling image \"{image}\""),
                );
            }
            let started = std::time::Instant::now();
            let svc = self.ctx.image_service.clone();
            let (img, pol) = (image.clone(), policy.clone());
            let pulled = tokio::task::spawn_blocking(move || svc.pull(&img, &pol))
                .await
                .unwrap_or_else(|e| Err(format!("the pull panicked: {e}")));
            match pulled {
                Ok(p) => {
                    if !cached {
                        self.event(
                            EventType::Normal,
                            "Pulled",
                            &format!(
                                "Successfully pulled image \"{image}\" in {:.3}s",
                                started.elapsed().as_secs_f64()
                            ),
                        );
                    } else if first_start {
                        self.event(
                            EventType::Normal,
                            "Pulled",
                            &format!("Container image \"{image}\" already present on machine"),
                        );
                    }
                    Some(p)
                }
                Err(msg) => {
                    self.pull_failed(init, i, &image, &msg);
                    return RunOutcome::PullFailed;
                }
            }
        } else {
            if first_start {
                self.event(
                    EventType::Normal,
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                );
            }
            None
        };
        let env = match self.container_env(&c) {
            Ok(e) => e,
            Err(msg) => return self.config_error(init, i, &msg),
        };
        let mut argv = Self::argv(&c, &kind, &image, pulled.as_ref());
        for a in argv.iter_mut() {
            *a = expand(a, &env);
        }
        let restarts = {
            let st = self.state.lock().expect("state lock");
            let cs = if init { &st.init[i] } else { &st.main[i] };
            cs.restart_count + u32::from(cs.started_once)
        };
        // Log file and termination message file.
        let log_path = pod_log_path(&self.ctx.dir, &self.ns, &self.name, &self.uid, &cname);
        let term_path = self.dir.join("termination").join(&cname);
        let run_dir = self
            .dir
            .join("containers")
            .join(format!("{cname}-{restarts}"));
        let id = format!("{}-{cname}-{restarts}", self.uid);
        let prepared_bundle = {
            let me = self.clone();
            let (c2, run_dir2, term2, id2) =
                (c.clone(), run_dir.clone(), term_path.clone(), id.clone());
            let prepared_paths = match prepared {
                Prepared::Paths(p) => p.clone(),
            };
            let pulled2 = pulled.clone();
            let kind2 = kind.clone();
            tokio::task::spawn_blocking(move || {
                me.bundle(
                    &c2,
                    &kind2,
                    pulled2.as_ref(),
                    &prepared_paths,
                    &run_dir2,
                    &term2,
                    &id2,
                    argv,
                    env,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(BundleError::Runtime(format!(
                    "preparing the container panicked: {e}"
                )))
            })
        };
        let overlays = match prepared_bundle {
            Ok(o) => o,
            Err(BundleError::Config(msg)) => return self.config_error(init, i, &msg),
            Err(BundleError::Runtime(msg)) => {
                let msg = format!("failed to create containerd task: {msg}");
                self.set_state(init, i, |cs| {
                    cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": now(), "finishedAt": now()}});
                });
                self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
                return RunOutcome::Exited(128);
            }
        };
        let runc_root = self.ctx.dir.join("runc");
        let runc_log = run_dir.join("runc.log");
        let files = (|| -> std::io::Result<(std::fs::File, std::fs::File)> {
            std::fs::create_dir_all(log_path.parent().expect("log dir"))?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            Ok((f.try_clone()?, f))
        })();
        let mut cmd = tokio::process::Command::new("runc");
        cmd.arg("--root")
            .arg(&runc_root)
            .arg("--log")
            .arg(&runc_log)
            .args(["--log-format", "json", "run", "--bundle"])
            .arg(&run_dir)
            .arg(&id)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let spawned = files.and_then(|(out, err)| {
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            cmd.spawn()
        });
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                for o in overlays.iter().rev() {
                    let _ = rustix::mount::unmount(o, rustix::mount::UnmountFlags::DETACH);
                }
                let msg = format!(
                    "failed to create containerd task: cannot run runc: {e} (apt-get install runc)"
                );
                self.set_state(init, i, |cs| {
                    cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": now(), "finishedAt": now()}});
                });
                self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
                return RunOutcome::Exited(128);
            }
        };
        let running = Running {
            pgid: child.id().map(|p| p as i32).unwrap_or(0),
            runc_root,
            id,
            overlays,
        };
        self.procs
            .lock()
            .expect("procs lock")
            .insert(cname.clone(), running.clone());
        let started_at = now();
        self.set_state(init, i, |cs| {
            if cs.started_once {
                cs.restart_count += 1;
            }
            cs.started_once = true;
            cs.container_id = format!("runc://{}", running.id);
            cs.state = json!({"running": {"startedAt": started_at}});
        });
        self.event(
            EventType::Normal,
            "Created",
            &format!("Created container: {cname}"),
        );
        self.event(
            EventType::Normal,
            "Started",
            &format!("Started container {cname}"),
        );

        let status = tokio::select! {
            st = child.wait() => st.ok(),
            _ = wait_stop(self.stop.clone()) => {
                // Graceful stop: SIGTERM, then SIGKILL after the grace period (capped at 3 s).
                let r = running.clone();
                let _ = tokio::task::spawn_blocking(move || r.signal("TERM")).await;
                let grace = self.pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30).min(3);
                match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
                    Ok(st) => st.ok(),
                    Err(_) => {
                        let r = running.clone();
                        let _ = tokio::task::spawn_blocking(move || r.signal("KILL")).await;
                        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                            Ok(st) => st.ok(),
                            Err(_) => {
                                kill_group(running.pgid, rustix::process::Signal::KILL);
                                child.wait().await.ok()
                            }
                        }
                    }
                }
            }
        };
        {
            let r = running.clone();
            let _ = tokio::task::spawn_blocking(move || r.release()).await;
        }
        self.procs.lock().expect("procs lock").remove(&cname);
        let code: i64 = match status {
            Some(st) => {
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => i64::from(c),
                    (None, Some(sig)) => 128 + i64::from(sig),
                    _ => 255,
                }
            }
            None => 255,
        };
        // runc's own failure (the container never ran) is a start error, not an exit.
        if let Some(err) = runc_error(&runc_log) {
            let msg = format!(
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: {err}"
            );
            self.set_state(init, i, |cs| {
                cs.state = json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": msg.clone(), "startedAt": started_at, "finishedAt": now()}});
            });
            self.event(EventType::Warning, "Failed", &format!("Error: {msg}"));
            let _ = std::fs::remove_dir_all(&run_dir);
            if self.stopped() {
                return RunOutcome::Stopped;
            }
            return RunOutcome::Exited(128);
        }
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut message = std::fs::read(&term_path)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).to_string())
            .unwrap_or_default();
        if message.is_empty()
            && code != 0
            && s(&c, "/terminationMessagePolicy") == Some("FallbackToLogsOnError")
        {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(2048)..];
            let text = String::from_utf8_lossy(tail);
            let lines: Vec<&str> = text.lines().collect();
            message = lines[lines.len().saturating_sub(80)..].join("\n");
        }
        let finished_at = now();
        self.set_state(init, i, |cs| {
            let mut t = json!({
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started_at,
                "finishedAt": finished_at,
                "containerID": cs.container_id,
            });
            if code > 128 && code < 160 {
                t["signal"] = json!(code - 128);
            }
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            cs.state = json!({"terminated": t});
        });
        if self.stopped() {
            self.event(
                EventType::Normal,
                "Killing",
                &format!("Stopping container {cname}"),
            );
            return RunOutcome::Stopped;
        }
        RunOutcome::Exited(code)
    }

    /// The container's environment (`envFrom`, then `env`, `$(VAR)` expanded), plus the API
    /// server's service variables every container gets (the bundle adds the image's, PATH,
    /// HOSTNAME and HOME).
    fn container_env(&self, c: &Value) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        let (h, p) = (&self.ctx.api_host, self.ctx.api_port);
        env.insert("KUBERNETES_SERVICE_HOST".into(), h.clone());
        env.insert("KUBERNETES_SERVICE_PORT".into(), p.to_string());
        env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.to_string());
        env.insert("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}"));
        env.insert(format!("KUBERNETES_PORT_{p}_TCP"), format!("tcp://{h}:{p}"));
        let get = |kind: &str, obj_name: &str| {
            let r = if kind == "secret" {
                res::secrets()
            } else {
                res::configmaps()
            };
            self.store.get(&r, Some(&self.ns), obj_name)
        };
        for from in c
            .get("envFrom")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let prefix = s(&from, "/prefix").unwrap_or("");
            for (key, kind) in [("secretRef", "secret"), ("configMapRef", "configmap")] {
                let Some(r) = from.get(key) else { continue };
                let n = s(r, "/name").unwrap_or("");
                match get(kind, n) {
                    Some(obj) => {
                        for (k, v) in object_data(&obj, kind == "secret") {
                            env.insert(
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v).to_string(),
                            );
                        }
                    }
                    None if r.get("optional") == Some(&json!(true)) => {}
                    None => return Err(format!("{kind} \"{n}\" not found")),
                }
            }
        }
        for e in c
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let n = s(&e, "/name").unwrap_or("").to_string();
            if let Some(v) = s(&e, "/value") {
                let v = expand(v, &env);
                env.insert(n, v);
                continue;
            }
            let Some(from) = e.get("valueFrom") else {
                env.insert(n, String::new());
                continue;
            };
            for (key, kind, label) in [
                ("secretKeyRef", "secret", "Secret"),
                ("configMapKeyRef", "configmap", "ConfigMap"),
            ] {
                let Some(r) = from.get(key) else { continue };
                let obj_name = s(r, "/name").unwrap_or("");
                let k = s(r, "/key").unwrap_or("");
                let optional = r.get("optional") == Some(&json!(true));
                match get(kind, obj_name).map(|o| object_data(&o, kind == "secret")) {
                    Some(data) => match data.get(k) {
                        Some(v) => {
                            env.insert(n.clone(), String::from_utf8_lossy(v).to_string());
                        }
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {k} in {label} {}/{obj_name}",
                                self.ns
                            ));
                        }
                    },
                    None if optional => {}
                    None => return Err(format!("{kind} \"{obj_name}\" not found")),
                }
            }
            if let Some(path) = s(from, "/fieldRef/fieldPath") {
                env.insert(n.clone(), field_ref(&self.pod, path).unwrap_or_default());
            }
            if from.get("resourceFieldRef").is_some() {
                env.insert(n, "0".to_string());
            }
        }
        Ok(env)
    }

    /// Prepares every volume of the pod on the host (blocking: writes files, runs losetup).
    fn prepare_volumes(&self) -> Result<Prepared, String> {
        let mut out = HashMap::new();
        let vols_dir = self.dir.join("volumes");
        let result = (|| -> Result<(), String> {
            for v in self
                .pod
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let vname = s(&v, "/name").unwrap_or("").to_string();
                let target = vols_dir.join(&vname);
                let fail =
                    |e: String| format!("MountVolume.SetUp failed for volume \"{vname}\" : {e}");
                if let Some(claim) = s(&v, "/persistentVolumeClaim/claimName") {
                    let ro = v.pointer("/persistentVolumeClaim/readOnly") == Some(&json!(true));
                    let pvc = self
                        .store
                        .get(&res::pvcs(), Some(&self.ns), claim)
                        .ok_or_else(|| {
                            fail(format!("persistentvolumeclaim \"{claim}\" not found"))
                        })?;
                    let pv_name = s(&pvc, "/spec/volumeName").unwrap_or("");
                    if s(&pvc, "/status/phase") != Some("Bound") || pv_name.is_empty() {
                        return Err(format!(
                            "Unable to attach or mount volumes: unmounted volumes=[{vname}]: PersistentVolumeClaim \"{claim}\" is not bound"
                        ));
                    }
                    let pv = self
                        .store
                        .get(&res::pvs(), None, pv_name)
                        .ok_or_else(|| fail(format!("persistentvolume \"{pv_name}\" not found")))?;
                    let data = super::provisioner::volume_path(&self.ctx, pv_name);
                    if !data.exists() {
                        return Err(fail(format!(
                            "rpc error: code = NotFound desc = volume {pv_name} does not exist"
                        )));
                    }
                    if s(&pv, "/spec/volumeMode") == Some("Block") {
                        let mut cmd = std::process::Command::new("losetup");
                        cmd.arg("-f").arg("--show");
                        if ro {
                            cmd.arg("-r");
                        }
                        let o = cmd.arg(&data).output().map_err(|e| {
                            fail(format!("losetup: {e} (is util-linux installed?)"))
                        })?;
                        if !o.status.success() {
                            return Err(fail(format!(
                                "losetup -f --show {}: {}",
                                data.display(),
                                String::from_utf8_lossy(&o.stderr).trim()
                            )));
                        }
                        let device = String::from_utf8_lossy(&o.stdout).trim().to_string();
                        self.loops.lock().expect("loops lock").push(device.clone());
                        let st = rustix::fs::stat(device.as_str())
                            .map_err(|e| fail(format!("stat {device}: {e}")))?;
                        out.insert(
                            vname,
                            VolumeSource::Block {
                                major: rustix::fs::major(st.st_rdev),
                                minor: rustix::fs::minor(st.st_rdev),
                                uid: st.st_uid,
                                gid: st.st_gid,
                                mode: st.st_mode & 0o7777,
                                read_only: ro,
                            },
                        );
                    } else {
                        out.insert(
                            vname,
                            VolumeSource::Path {
                                path: data,
                                read_only: ro,
                            },
                        );
                    }
                } else if let Some(sec) = v.get("secret") {
                    let n = s(sec, "/secretName").unwrap_or("");
                    let _ = super::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    match self.store.get(&res::secrets(), Some(&self.ns), n) {
                        Some(obj) => self
                            .project(&target, &object_data(&obj, true), sec)
                            .map_err(&fail)?,
                        None if sec.get("optional") == Some(&json!(true)) => {}
                        None => return Err(fail(format!("secret \"{n}\" not found"))),
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(cm) = v.get("configMap") {
                    let n = s(cm, "/name").unwrap_or("");
                    let _ = super::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    match self.store.get(&res::configmaps(), Some(&self.ns), n) {
                        Some(obj) => self
                            .project(&target, &object_data(&obj, false), cm)
                            .map_err(&fail)?,
                        None if cm.get("optional") == Some(&json!(true)) => {}
                        None => return Err(fail(format!("configmap \"{n}\" not found"))),
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(proj) = v.get("projected") {
                    let _ = super::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    for src in proj
                        .get("sources")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                    {
                        if let Some(sec) = src.get("secret") {
                            let n = s(sec, "/name").unwrap_or("");
                            match self.store.get(&res::secrets(), Some(&self.ns), n) {
                                Some(obj) => self
                                    .project(&target, &object_data(&obj, true), sec)
                                    .map_err(&fail)?,
                                None if sec.get("optional") == Some(&json!(true)) => {}
                                None => return Err(fail(format!("secret \"{n}\" not found"))),
                            }
                        } else if let Some(cm) = src.get("configMap") {
                            let n = s(cm, "/name").unwrap_or("");
                            let data = if n == "kube-root-ca.crt" {
                                Some(BTreeMap::from([(
                                    "ca.crt".to_string(),
                                    self.ctx.ca_pem.as_bytes().to_vec(),
                                )]))
                            } else {
                                self.store
                                    .get(&res::configmaps(), Some(&self.ns), n)
                                    .map(|o| object_data(&o, false))
                            };
                            match data {
                                Some(d) => self.project(&target, &d, cm).map_err(&fail)?,
                                None if cm.get("optional") == Some(&json!(true)) => {}
                                None => return Err(fail(format!("configmap \"{n}\" not found"))),
                            }
                        } else if let Some(tok) = src.get("serviceAccountToken") {
                            let p = s(tok, "/path").unwrap_or("token");
                            let token = self
                                .ctx
                                .tokens
                                .service_account_token(&self.ns, self.service_account());
                            write_file(&target.join(p), token.as_bytes(), 0o644)
                                .map_err(|e| fail(e.to_string()))?;
                        } else if let Some(d) = src.get("downwardAPI") {
                            self.downward(&target, d).map_err(&fail)?;
                        }
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if let Some(d) = v.get("downwardAPI") {
                    let _ = super::provisioner::remove_any(&target);
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    self.downward(&target, d).map_err(&fail)?;
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: true,
                        },
                    );
                } else if v.get("emptyDir").is_some() {
                    std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777))
                        .map_err(|e| fail(e.to_string()))?;
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: target,
                            read_only: false,
                        },
                    );
                } else if let Some(hp) = s(&v, "/hostPath/path") {
                    let p = PathBuf::from(hp);
                    if matches!(s(&v, "/hostPath/type"), Some("DirectoryOrCreate")) {
                        std::fs::create_dir_all(&p).map_err(|e| fail(e.to_string()))?;
                    }
                    out.insert(
                        vname,
                        VolumeSource::Path {
                            path: p,
                            read_only: false,
                        },
                    );
                } else {
                    return Err(fail(
                        "this volume type is not supported by kubesim".to_string(),
                    ));
                }
            }
            // fsGroup: writable volumes (and the kubelet's own secret/configMap/projected
            // files) are given to the group; read-only claims and hostPath are left alone.
            if let Some(fs_group) = self
                .pod
                .pointer("/spec/securityContext/fsGroup")
                .and_then(Value::as_u64)
            {
                let on_root_mismatch = s(&self.pod, "/spec/securityContext/fsGroupChangePolicy")
                    == Some("OnRootMismatch");
                for v in self
                    .pod
                    .pointer("/spec/volumes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let vname = s(v, "/name").unwrap_or("");
                    if v.get("hostPath").is_some()
                        || v.pointer("/persistentVolumeClaim/readOnly") == Some(&json!(true))
                    {
                        continue;
                    }
                    if let Some(VolumeSource::Path { path, read_only }) = out.get(vname) {
                        set_volume_ownership(path, fs_group as u32, *read_only, on_root_mismatch)
                            .map_err(|e| {
                                format!("MountVolume.SetUp failed for volume \"{vname}\" : applying fsGroup {fs_group}: {e}")
                            })?;
                    }
                }
            }
            // The ServiceAccount token, unless opted out.
            if self.automount() {
                let sa_dir = self.dir.join("serviceaccount");
                let token = self
                    .ctx
                    .tokens
                    .service_account_token(&self.ns, self.service_account());
                write_file(&sa_dir.join("token"), token.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
                write_file(&sa_dir.join("ca.crt"), self.ctx.ca_pem.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
                write_file(&sa_dir.join("namespace"), self.ns.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Prepared::Paths(out)),
            Err(e) => {
                detach_loops(&self.loops);
                Err(e)
            }
        }
    }

    fn service_account(&self) -> &str {
        s(&self.pod, "/spec/serviceAccountName")
            .or_else(|| s(&self.pod, "/spec/serviceAccount"))
            .unwrap_or("default")
    }

    fn automount(&self) -> bool {
        if let Some(b) = self
            .pod
            .pointer("/spec/automountServiceAccountToken")
            .and_then(Value::as_bool)
        {
            return b;
        }
        // A projected token volume already mounted there (added by an admission plugin) wins.
        let mounts_sa = ["/spec/containers", "/spec/initContainers"]
            .iter()
            .any(|k| {
                self.pod
                    .pointer(k)
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.get("volumeMounts")
                                .and_then(Value::as_array)
                                .is_some_and(|m| {
                                    m.iter().any(|m| s(m, "/mountPath") == Some(SA_PATH))
                                })
                        })
                    })
            });
        if mounts_sa {
            return false;
        }
        self.store
            .get(
                &res::serviceaccounts(),
                Some(&self.ns),
                self.service_account(),
            )
            .and_then(|sa| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true)
    }

    /// Writes the keys of a secret/configmap into a volume directory (`items`, modes).
    fn project(
        &self,
        dir: &Path,
        data: &BTreeMap<String, Vec<u8>>,
        src: &Value,
    ) -> Result<(), String> {
        let default_mode = src
            .get("defaultMode")
            .and_then(Value::as_u64)
            .unwrap_or(0o644) as u32;
        match src.get("items").and_then(Value::as_array) {
            Some(items) => {
                for it in items {
                    let k = s(it, "/key").unwrap_or("");
                    let p = s(it, "/path").unwrap_or(k);
                    let mode = it
                        .get("mode")
                        .and_then(Value::as_u64)
                        .map(|m| m as u32)
                        .unwrap_or(default_mode);
                    match data.get(k) {
                        Some(v) => write_file(&dir.join(p), v, mode).map_err(|e| e.to_string())?,
                        None if src.get("optional") == Some(&json!(true)) => {}
                        None => {
                            return Err(format!(
                                "configmap or secret references non-existent key {k}"
                            ));
                        }
                    }
                }
            }
            None => {
                for (k, v) in data {
                    write_file(&dir.join(k), v, default_mode).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn downward(&self, dir: &Path, d: &Value) -> Result<(), String> {
        for it in d
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let p = s(&it, "/path").unwrap_or("");
            let val = s(&it, "/fieldRef/fieldPath")
                .map(|f| match f {
                    "metadata.labels" | "metadata.annotations" => {
                        let ptr = if f == "metadata.labels" {
                            "/metadata/labels"
                        } else {
                            "/metadata/annotations"
                        };
                        self.pod
                            .pointer(ptr)
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            })
                            .unwrap_or_default()
                    }
                    f => field_ref(&self.pod, f).unwrap_or_default(),
                })
                .unwrap_or_default();
            write_file(&dir.join(p), val.as_bytes(), 0o644).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Prepares the container's bundle in `run_dir` (blocking: mounts the root filesystem,
    /// writes `config.json`); gives the overlays to unmount after the container ends.
    #[allow(clippy::too_many_arguments)] // one container's parts, gathered by `run_once`
    fn bundle(
        &self,
        c: &Value,
        kind: &ImageKind,
        pulled: Option<&images::Image>,
        vols: &HashMap<String, VolumeSource>,
        run_dir: &Path,
        term_file: &Path,
        id: &str,
        argv: Vec<String>,
        container_env: BTreeMap<String, String>,
    ) -> Result<Vec<PathBuf>, BundleError> {
        if run_dir.exists() {
            let _ = rustix::mount::unmount(
                run_dir.join("rootfs/etc"),
                rustix::mount::UnmountFlags::DETACH,
            );
            let _ =
                rustix::mount::unmount(run_dir.join("rootfs"), rustix::mount::UnmountFlags::DETACH);
            std::fs::remove_dir_all(run_dir)?;
        }
        std::fs::create_dir_all(run_dir)?;
        write_file(term_file, b"", 0o666)?;
        let rootfs = run_dir.join("rootfs");
        let mut overlays = Vec::new();
        let mut mounts = Vec::new();
        // The image's root filesystem (where users and groups are looked up) and config.
        let (image_root, image_config) = match pulled {
            Some(img) => {
                overlay(&img.rootfs, &run_dir.join("layer"), &rootfs)?;
                overlays.push(rootfs.clone());
                (img.rootfs.clone(), img.config.clone())
            }
            None => {
                mounts = runtime::host_skeleton(&rootfs)?;
                overlay(
                    Path::new("/etc"),
                    &run_dir.join("etc-layer"),
                    &rootfs.join("etc"),
                )?;
                overlays.push(rootfs.join("etc"));
                if let ImageKind::Mapped(bin) = kind {
                    mounts.push(runtime::Mount {
                        source: bin.clone(),
                        destination: bin.to_string_lossy().to_string(),
                        read_only: true,
                    });
                }
                (PathBuf::from("/"), images::ImageConfig::default())
            }
        };
        let cname = s(c, "/name").unwrap_or("");
        let who = format!(
            "pod: \"{}_{}({})\", container: {cname}",
            self.name, self.ns, self.uid
        );
        let user = match runtime::user(&self.pod, c, &image_config.user, &image_root, &who) {
            Ok(u) => u,
            Err(msg) => {
                for o in overlays.iter().rev() {
                    let _ = rustix::mount::unmount(o, rustix::mount::UnmountFlags::DETACH);
                }
                return Err(BundleError::Config(msg));
            }
        };
        // Environment: the image's, then the pod's (which wins), PATH and HOME defaulted.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), DEFAULT_PATH.into());
        for kv in &image_config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.into(), v.into());
            }
        }
        env.insert("HOSTNAME".into(), self.hostname());
        env.extend(container_env);
        if !env.contains_key("HOME") {
            let home = home_of(&image_root, user.uid);
            env.insert("HOME".into(), home);
        }
        let cwd = s(c, "/workingDir")
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .or_else(|| Some(image_config.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".into());
        // What the kubelet mounts into every container.
        let etc = self.dir.join("etc");
        write_file(
            &etc.join("hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                pod_ip(&self.pod),
                self.hostname()
            )
            .as_bytes(),
            0o644,
        )?;
        write_file(
            &etc.join("hostname"),
            format!("{}\n", self.hostname()).as_bytes(),
            0o644,
        )?;
        for f in ["hosts", "hostname"] {
            mounts.push(runtime::Mount {
                source: etc.join(f),
                destination: format!("/etc/{f}"),
                read_only: false,
            });
        }
        if Path::new("/etc/resolv.conf").is_file() {
            mounts.push(runtime::Mount {
                source: "/etc/resolv.conf".into(),
                destination: "/etc/resolv.conf".into(),
                read_only: true,
            });
        }
        mounts.push(runtime::Mount {
            source: term_file.to_path_buf(),
            destination: s(c, "/terminationMessagePath")
                .unwrap_or("/dev/termination-log")
                .into(),
            read_only: false,
        });
        if self.automount() {
            mounts.push(runtime::Mount {
                source: self.dir.join("serviceaccount"),
                destination: SA_PATH.into(),
                read_only: true,
            });
        }
        // Volume mounts, parents first.
        let mut vm: Vec<Value> = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        vm.sort_by_key(|m| s(m, "/mountPath").unwrap_or("").matches('/').count());
        for m in &vm {
            let vname = s(m, "/name").unwrap_or("");
            let Some(VolumeSource::Path { path, read_only }) = vols.get(vname) else {
                continue;
            };
            let mut src = path.clone();
            if let Some(sub) = s(m, "/subPath").filter(|p| !p.is_empty()) {
                src = src.join(sub);
                if !src.exists() {
                    std::fs::create_dir_all(&src)?;
                }
            }
            mounts.push(runtime::Mount {
                source: src,
                destination: s(m, "/mountPath").unwrap_or("").into(),
                read_only: *read_only || m.get("readOnly") == Some(&json!(true)),
            });
        }
        let devices = c
            .get("volumeDevices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| match vols.get(s(d, "/name").unwrap_or("")) {
                Some(VolumeSource::Block {
                    major,
                    minor,
                    uid,
                    gid,
                    mode,
                    read_only,
                    ..
                }) => Some(runtime::Device {
                    path: s(d, "/devicePath").unwrap_or("").into(),
                    major: *major,
                    minor: *minor,
                    uid: *uid,
                    gid: *gid,
                    mode: *mode,
                    read_only: *read_only,
                }),
                _ => None,
            })
            .collect();
        let config = runtime::config(&runtime::Bundle {
            id: id.to_string(),
            pod: &self.pod,
            container: c,
            rootfs,
            argv,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            hostname: self.hostname(),
            user,
            mounts,
            devices,
        });
        std::fs::write(
            run_dir.join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(|e| BundleError::Runtime(e.to_string()))?,
        )?;
        Ok(overlays)
    }

    /// The pod's hostname: `spec.hostname`, else its name (at most 63 characters).
    fn hostname(&self) -> String {
        let h = s(&self.pod, "/spec/hostname").unwrap_or(&self.name);
        h.chars().take(63).collect()
    }
}

/// The home directory of `uid` in an image's `/etc/passwd`, else `/`.
fn home_of(rootfs: &Path, uid: u32) -> String {
    std::fs::read_to_string(rootfs.join("etc/passwd"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
            })
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_lose_tags_digests_and_docker_hub_prefixes() {
        assert!(image_variants("docker.io/library/busybox:1.36").contains(&"busybox".to_string()));
        assert!(image_variants("busybox@sha256:abc").contains(&"busybox".to_string()));
        assert_eq!(
            image_variants("localhost:5000/x/y:tag")[0],
            "localhost:5000/x/y"
        );
    }

    #[test]
    fn variable_references_expand_like_the_kubelet() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y$(B)$$(A)", &env), "x1y$(B)$(A)");
    }
}
