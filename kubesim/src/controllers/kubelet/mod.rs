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
//! then removes the pod object (the kubelet's final delete). A pod still running when its
//! `spec.activeDeadlineSeconds` (counted from `status.startTime`) runs out is stopped the same
//! way and fails: phase `Failed`, reason `DeadlineExceeded`, with the kubelet's event; as the
//! kubelet's `activeDeadlineHandler` does, but with the deadline read when the pod starts.
//!
//! Simplified or ignored: probes (a running container is ready), resources, seccomp, image
//! pull secrets, network (pods share the host's; each pod's IP is its own address in
//! 127.0.0.0/8, see [`pod_ip`]); with a host image and `readOnlyRootFilesystem`, `/etc` stays
//! writable (it is an overlay of its own).
//!
//! Here: the node-wide state and the controller that starts and stops pod workers; a worker's
//! lifecycle and status in `lifecycle`, a container start (image, argv, environment, bundle) in
//! `container`, a pod's volumes in `volumes`.

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

mod container;
mod lifecycle;
mod volumes;

use container::{ImageKind, image_variants};
pub use volumes::pod_ip;
use volumes::{field_ref, object_data, str_list, write_file};

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
    /// The pod ran past `spec.activeDeadlineSeconds` and was stopped for it.
    deadline_exceeded: bool,
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
    /// When `spec.activeDeadlineSeconds` runs out, counted from the worker's start (the pod's
    /// `status.startTime`).
    deadline: Option<tokio::time::Instant>,
    procs: Arc<Mutex<HashMap<String, Running>>>,
    loops: Arc<Mutex<Vec<String>>>,
    state: Mutex<PodState>,
}

/// Resolves when the pod is to stop (or its stop channel is gone).
async fn wait_stop(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
