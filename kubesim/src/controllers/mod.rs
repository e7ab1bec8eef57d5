//! The simulated controllers of kubesim: what kube-controller-manager, kube-scheduler, the
//! kubelet, the CSI external-provisioner/external-snapshotter sidecars with the hostpath CSI
//! driver, and the volume-data-source-validator do in a real cluster, reduced to what volbackup
//! relies on.
//!
//! Every controller is level-triggered like the real ones: on every change the object store
//! reports (a nudge, never the state itself) and on a periodic tick it re-reads the objects and
//! reconciles them with idempotent steps. The reconcile passes run on tokio's blocking pool
//! (they copy volume data and run `losetup`), one pass at a time per controller.
//!
//! | module | real counterpart |
//! |---|---|
//! | [`provisioner`] | kubernetes-csi/external-provisioner + csi-driver-host-path |
//! | [`pv_controller`] | kube-controller-manager `pkg/controller/volume/persistentvolume` |
//! | [`snapshot`] | kubernetes-csi/external-snapshotter (snapshot-controller + csi-snapshotter) |
//! | [`scheduler`] | kube-scheduler with the VolumeBinding plugin |
//! | [`kubelet`] | the kubelet |
//! | [`runtime`], [`images`] | containerd with runc: OCI bundles from pod specs, image pulls |
//! | [`deployment`] | kube-controller-manager `pkg/controller/deployment` (no ReplicaSet layer) |
//! | [`job`] | kube-controller-manager `pkg/controller/job` and `ttlafterfinished` |
//! | [`cronjob`] | kube-controller-manager `pkg/controller/cronjob` |
//! | [`validator`] | kubernetes-csi/volume-data-source-validator |

pub mod cronjob;
pub mod deployment;
pub mod events;
pub mod images;
pub mod job;
pub mod kubelet;
pub mod provisioner;
pub mod pv_controller;
pub mod runtime;
pub mod scheduler;
pub mod snapshot;
pub mod validator;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{ApiError, ControllerContext, ObjectStore, ResourceKey};

/// The name of the simulated CSI driver (and provisioner of its StorageClasses).
pub const DRIVER: &str = "hostpath.csi.kubesim.io";

/// How often a controller reconciles when nothing changes.
const TICK: Duration = Duration::from_millis(150);

/// How long a controller lets a burst of writes settle before it reconciles: long enough to
/// take the writes of one API call chain as one nudge, short enough that a chain of
/// controllers (provisioner, PV binder, scheduler, kubelet) adds little latency of its own.
const SETTLE: Duration = Duration::from_millis(2);

/// A controller: one reconcile pass over everything it owns.
pub(crate) trait Controller: Send + 'static {
    /// Re-reads the objects and moves them one idempotent step towards their desired state.
    fn reconcile(&mut self, store: &dyn ObjectStore, ctx: &ControllerContext);
}

/// The running controllers of one cluster. Dropping it (or [`Controllers::shutdown`]) stops
/// every controller, kills every pod process and detaches the loop devices.
pub struct Controllers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    kubelet: Arc<kubelet::KubeletShared>,
    cron_clock: Arc<cronjob::Clock>,
}

/// Starts all simulated controllers as tokio tasks on the current runtime.
///
/// Panics when called outside a tokio runtime.
pub fn spawn_controllers(store: Arc<dyn ObjectStore>, mut ctx: ControllerContext) -> Controllers {
    // Pods see host paths below the directory from their own working directory: make it absolute.
    if let Ok(abs) = std::path::absolute(&ctx.dir) {
        ctx.dir = abs;
    }
    let (stop, stop_rx) = watch::channel(false);
    let handle = tokio::runtime::Handle::current();
    let kubelet_shared = Arc::new(kubelet::KubeletShared::new(handle.clone()));
    let mut tasks = Vec::new();
    let mut spawn = |name: &'static str, c: Box<dyn Controller>| {
        tasks.push(handle.spawn(run(name, c, store.clone(), ctx.clone(), stop_rx.clone())));
    };
    spawn("provisioner", Box::new(provisioner::Provisioner));
    spawn("pv-controller", Box::new(pv_controller::PvController));
    spawn(
        "snapshot-controller",
        Box::new(snapshot::SnapshotController),
    );
    spawn("scheduler", Box::<scheduler::Scheduler>::default());
    spawn(
        "deployment-controller",
        Box::new(deployment::DeploymentController),
    );
    spawn("data-source-validator", Box::new(validator::Validator));
    spawn("job-controller", Box::<job::JobController>::default());
    let cron_clock = Arc::new(cronjob::Clock::default());
    spawn(
        "cronjob-controller",
        Box::new(cronjob::CronJobController::new(cron_clock.clone())),
    );
    spawn(
        "kubelet",
        Box::new(kubelet::Kubelet::new(kubelet_shared.clone(), store.clone())),
    );
    Controllers {
        stop,
        tasks,
        kubelet: kubelet_shared,
        cron_clock,
    }
}

impl Controllers {
    /// Kills every process of the pod with SIGKILL, as if the node killed it (an OOM kill or
    /// `kill -9` on the node). The kubelet then records the containers as terminated with exit
    /// code 137 and applies the pod's restartPolicy. Returns false when no process of that pod
    /// is running.
    pub fn kill_pod(&self, namespace: &str, name: &str) -> bool {
        self.kubelet.kill_pod(namespace, name)
    }

    /// Moves the CronJob controller's clock forward (see [`cronjob::Clock`]).
    pub fn advance_cron_clock(&self, by: Duration) {
        self.cron_clock.advance(by);
    }

    /// Stops all controllers, kills all pod processes and detaches their loop devices.
    pub fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.kubelet.shutdown();
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(
    name: &'static str,
    controller: Box<dyn Controller>,
    store: Arc<dyn ObjectStore>,
    ctx: ControllerContext,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    let mut controller = Some(controller);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut c = controller
            .take()
            .expect("controller present between passes");
        let (s, x) = (store.clone(), ctx.clone());
        match tokio::task::spawn_blocking(move || {
            c.reconcile(&*s, &x);
            c
        })
        .await
        {
            Ok(c) => controller = Some(c),
            Err(e) => {
                tracing::error!("kubesim {name} stopped: a reconcile pass panicked: {e}");
                return;
            }
        }
        let tick = tokio::time::sleep(TICK);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick => {}
            _ = next_relevant_change(&mut changes) => {
                // Let a burst of writes settle, then take them all as one nudge.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
            }
        }
    }
}

/// Waits for a change that can matter to a controller. Events are skipped: controllers write
/// them, and re-reading after our own events would only spin.
async fn next_relevant_change(rx: &mut tokio::sync::broadcast::Receiver<super::api::Change>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(c) if c.resource.group.is_empty() && c.resource.resource == "events" => continue,
            Ok(_) | Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers over JSON objects shared by the controllers.

/// A string at a JSON pointer.
pub(crate) fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// `metadata.name`.
pub(crate) fn name(v: &Value) -> &str {
    s(v, "/metadata/name").unwrap_or("")
}

/// `metadata.namespace` (empty for cluster-scoped objects).
pub(crate) fn namespace(v: &Value) -> &str {
    s(v, "/metadata/namespace").unwrap_or("")
}

/// `metadata.uid`.
pub(crate) fn uid(v: &Value) -> &str {
    s(v, "/metadata/uid").unwrap_or("")
}

/// Whether the object is being deleted.
pub(crate) fn terminating(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// An annotation's value.
pub(crate) fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// Now, as the API server formats `metav1.Time` (RFC 3339, seconds, `Z`).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Applies a merge patch and logs (rather than propagates) a failure: the next pass retries.
pub(crate) fn patch(
    store: &dyn ObjectStore,
    r: &ResourceKey,
    ns: Option<&str>,
    n: &str,
    p: Value,
) -> Option<Value> {
    match store.merge_patch(r, ns, n, &p) {
        Ok(v) => Some(v),
        Err(e) => {
            log_api_error("patch", r, n, &e);
            None
        }
    }
}

pub(crate) fn log_api_error(what: &str, r: &ResourceKey, n: &str, e: &ApiError) {
    if e.code == 404 || e.code == 409 {
        tracing::debug!("kubesim: {what} {}/{n}: {e}", r.resource);
    } else {
        tracing::warn!("kubesim: {what} {}/{n}: {e}", r.resource);
    }
}

/// Parses a Kubernetes quantity (`10Mi`, `1G`, `1048576`, `1.5Gi`, `1e6`) into bytes
/// (rounded up, like `Quantity.Value()`). See k8s.io/apimachinery `pkg/api/resource/quantity.go`.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suf, mult) in suffixes {
        if let Some(num) = q.strip_suffix(suf) {
            let n: f64 = num.parse().ok()?;
            return Some((n * mult).ceil() as u64);
        }
    }
    if let Ok(n) = q.parse::<u64>() {
        return Some(n);
    }
    q.parse::<f64>()
        .ok()
        .filter(|n| *n >= 0.0)
        .map(|n| n.ceil() as u64)
}

/// Formats bytes as a quantity the way `resource.NewQuantity(n, BinarySI)` prints it: the largest
/// binary suffix that divides exactly, else plain bytes.
pub fn format_bytes(n: u64) -> String {
    for (suf, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let unit = 1u64 << shift;
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{suf}", n / unit);
        }
    }
    n.to_string()
}

/// The requested storage of a PVC in bytes (0 when missing).
pub(crate) fn pvc_request(pvc: &Value) -> u64 {
    s(pvc, "/spec/resources/requests/storage")
        .and_then(parse_quantity)
        .unwrap_or(0)
}

/// A PVC's or PV's volume mode (`Filesystem` when unset, the API default).
pub(crate) fn volume_mode(v: &Value) -> &str {
    s(v, "/spec/volumeMode").unwrap_or("Filesystem")
}

/// The storage class a PVC asks for: `spec.storageClassName`, else the deprecated beta
/// annotation, else the cluster's default class (`storageclass.kubernetes.io/is-default-class`),
/// as the DefaultStorageClass admission plugin would have set it.
pub(crate) fn pvc_class(store: &dyn ObjectStore, pvc: &Value) -> Option<String> {
    if let Some(c) = pvc.pointer("/spec/storageClassName") {
        return c.as_str().map(str::to_string);
    }
    if let Some(c) = annotation(pvc, "volume.beta.kubernetes.io/storage-class") {
        return Some(c.to_string());
    }
    store
        .list(&super::api::res::storageclasses(), None)
        .into_iter()
        .find(|sc| annotation(sc, "storageclass.kubernetes.io/is-default-class") == Some("true"))
        .map(|sc| name(&sc).to_string())
}

/// JSON with object keys sorted, so that equal values hash equally.
pub(crate) fn canonical_json(v: &Value) -> String {
    fn canon(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), canon(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
            other => other.clone(),
        }
    }
    canon(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_the_api_server() {
        assert_eq!(parse_quantity("10Mi"), Some(10 << 20));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(format_bytes(10 << 20), "10Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(3 << 30), "3Gi");
    }
}
