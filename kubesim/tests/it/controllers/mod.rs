//! kubesim's simulated controllers, end to end: volumes written by real pod processes in their
//! own mount namespaces (bind mounts, loop devices), snapshots and restores, a populator
//! written here, WaitForFirstConsumer, Deployments, pod lifecycle.
//!
//! These tests need root, `losetup`, `unshare` and loop devices; they fail (never skip) with a
//! message saying what is missing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, LogParams, Patch, PatchParams, PostParams,
};
use kubesim::cluster::{Cluster, ClusterOptions};
use serde_json::{Value, json};

const NS: &str = "t";

fn require_host() {
    assert!(
        rustix::process::geteuid().is_root(),
        "kubesim's kubelet needs root (mount namespaces, bind mounts, loop devices): run the tests as root"
    );
    for tool in [
        "losetup", "unshare", "mount", "setpriv", "sh", "dd", "blockdev",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is missing from PATH: install util-linux/coreutils (Debian: apt-get install util-linux coreutils)"
        );
    }
    assert!(
        std::path::Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: load the loop module (modprobe loop)"
    );
}

/// A resource type as the tests name it: (group, version, kind, plural, namespaced).
#[derive(Clone, Copy)]
struct Kind(&'static str, &'static str, &'static str, &'static str, bool);

const NAMESPACES: Kind = Kind("", "v1", "Namespace", "namespaces", false);
const PVCS: Kind = Kind(
    "",
    "v1",
    "PersistentVolumeClaim",
    "persistentvolumeclaims",
    true,
);
const PVS: Kind = Kind("", "v1", "PersistentVolume", "persistentvolumes", false);
const PODS: Kind = Kind("", "v1", "Pod", "pods", true);
const EVENTS: Kind = Kind("", "v1", "Event", "events", true);
const SERVICEACCOUNTS: Kind = Kind("", "v1", "ServiceAccount", "serviceaccounts", true);
const SECRETS: Kind = Kind("", "v1", "Secret", "secrets", true);
const CONFIGMAPS: Kind = Kind("", "v1", "ConfigMap", "configmaps", true);
const STORAGECLASSES: Kind = Kind(
    "storage.k8s.io",
    "v1",
    "StorageClass",
    "storageclasses",
    false,
);
const SNAPSHOTS: Kind = Kind(
    "snapshot.storage.k8s.io",
    "v1",
    "VolumeSnapshot",
    "volumesnapshots",
    true,
);
const CONTENTS: Kind = Kind(
    "snapshot.storage.k8s.io",
    "v1",
    "VolumeSnapshotContent",
    "volumesnapshotcontents",
    false,
);
const SNAPCLASSES: Kind = Kind(
    "snapshot.storage.k8s.io",
    "v1",
    "VolumeSnapshotClass",
    "volumesnapshotclasses",
    false,
);
const DEPLOYMENTS: Kind = Kind("apps", "v1", "Deployment", "deployments", true);
const ROLES: Kind = Kind("rbac.authorization.k8s.io", "v1", "Role", "roles", true);
const ROLEBINDINGS: Kind = Kind(
    "rbac.authorization.k8s.io",
    "v1",
    "RoleBinding",
    "rolebindings",
    true,
);

/// A cluster started through `Cluster::start`, driven through its HTTPS API with kube-rs.
struct Sim {
    cluster: Cluster,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

impl Sim {
    async fn start() -> Sim {
        Self::start_with(BTreeMap::new()).await
    }

    async fn start_with(images: BTreeMap<String, std::path::PathBuf>) -> Sim {
        require_host();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = ClusterOptions::new(dir.path());
        opts.nodes = 2;
        opts.images = images;
        let cluster = Cluster::start(opts).await.expect("cluster starts");
        let kubeconfig =
            kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config");
        let client = kube::Client::try_from(config).expect("client");
        let sim = Sim {
            cluster,
            client,
            _dir: dir,
        };
        sim.create(NAMESPACES, json!({"metadata": {"name": NS}}))
            .await;
        sim.create(
            STORAGECLASSES,
            json!({"metadata": {"name": "fast"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate", "allowVolumeExpansion": true}),
        )
        .await;
        sim.create(
            STORAGECLASSES,
            json!({"metadata": {"name": "wffc"}, "provisioner": "hostpath.csi.kubesim.io", "volumeBindingMode": "WaitForFirstConsumer"}),
        )
        .await;
        sim.create(
            SNAPCLASSES,
            json!({"metadata": {"name": "snap", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}}, "driver": "hostpath.csi.kubesim.io", "deletionPolicy": "Delete"}),
        )
        .await;
        sim
    }

    fn dir(&self) -> &std::path::Path {
        self.cluster.dir()
    }

    fn api(&self, k: Kind) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: k.0.into(),
            version: k.1.into(),
            api_version: if k.0.is_empty() {
                k.1.into()
            } else {
                format!("{}/{}", k.0, k.1)
            },
            kind: k.2.into(),
            plural: k.3.into(),
        };
        if k.4 {
            Api::namespaced_with(self.client.clone(), NS, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        }
    }

    async fn create(&self, k: Kind, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(if k.0.is_empty() {
            k.1.to_string()
        } else {
            format!("{}/{}", k.0, k.1)
        });
        obj["kind"] = json!(k.2);
        let o: DynamicObject = serde_json::from_value(obj).expect("object");
        let created = self
            .api(k)
            .create(&PostParams::default(), &o)
            .await
            .unwrap_or_else(|e| panic!("creating {}: {e}", k.3));
        serde_json::to_value(created).expect("json")
    }

    async fn get(&self, k: Kind, name: &str) -> Option<Value> {
        let o = self
            .api(k)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("getting {} {name}: {e}", k.3));
        o.map(|o| serde_json::to_value(o).expect("json"))
    }

    async fn patch(&self, k: Kind, name: &str, p: Value) -> Value {
        let o = self
            .api(k)
            .patch(name, &PatchParams::default(), &Patch::Merge(p))
            .await
            .unwrap_or_else(|e| panic!("patching {} {name}: {e}", k.3));
        serde_json::to_value(o).expect("json")
    }

    async fn delete(&self, k: Kind, name: &str) {
        self.api(k)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {} {name}: {e}", k.3));
    }

    async fn list(&self, k: Kind) -> Vec<Value> {
        let l = self
            .api(k)
            .list(&Default::default())
            .await
            .unwrap_or_else(|e| panic!("listing {}: {e}", k.3));
        l.items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    async fn pvc(&self, name: &str, class: &str, mode: &str, size: &str) -> Value {
        self.create(
            PVCS,
            json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class, "volumeMode": mode, "resources": {"requests": {"storage": size}}}}),
        )
        .await
    }

    /// A pod running `sh -c script` (image busybox) with the PVC at /data (Filesystem) or
    /// /dev/xvda (Block).
    async fn sh_pod(
        &self,
        name: &str,
        pvc: Option<(&str, &str)>,
        script: &str,
        restart: &str,
    ) -> Value {
        let mut container =
            json!({"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]});
        let mut volumes = json!([]);
        if let Some((claim, mode)) = pvc {
            volumes = json!([{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]);
            if mode == "Block" {
                container["volumeDevices"] = json!([{"name": "vol", "devicePath": "/dev/xvda"}]);
            } else {
                container["volumeMounts"] = json!([{"name": "vol", "mountPath": "/data"}]);
            }
        }
        self.create(PODS, json!({"metadata": {"name": name}, "spec": {"restartPolicy": restart, "containers": [container], "volumes": volumes}}))
            .await
    }

    /// Polls an object until `pred` holds.
    async fn wait_for(
        &self,
        k: Kind,
        name: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let o = self.get(k, name).await;
            if let Some(o) = o.filter(|o| pred(o)) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {} {name} {what}: {:?}",
                k.3,
                self.get(k, name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_phase(&self, k: Kind, name: &str, phase: &str, secs: u64) -> Value {
        self.wait_for(k, name, &format!("to be {phase}"), secs, |o| {
            o.pointer("/status/phase").and_then(Value::as_str) == Some(phase)
        })
        .await
    }

    async fn wait_gone(&self, k: Kind, name: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.get(k, name).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {} {name} to be gone",
                k.3
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an event with this reason about the object with this uid.
    async fn wait_event(&self, uid: &str, reason: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let found = self.list(EVENTS).await.into_iter().find(|e| {
                e.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(uid)
                    && e["reason"] == reason
            });
            if let Some(e) = found {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for event {reason} on {uid}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A pod's log through `pods/log`.
    async fn logs(&self, pod: &str) -> String {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), NS);
        pods.logs(pod, &LogParams::default())
            .await
            .unwrap_or_else(|e| panic!("logs of {pod}: {e}"))
    }

    /// Runs a pod to completion and returns its log.
    async fn run(&self, name: &str, pvc: Option<(&str, &str)>, script: &str) -> String {
        self.sh_pod(name, pvc, script, "Never").await;
        let done = self
            .wait_for(PODS, name, "to finish", 30, |p| {
                matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
            })
            .await;
        let log = self.logs(name).await;
        assert_eq!(
            done.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded"),
            "pod {name} failed: {}\nlog:\n{log}",
            done["status"]
        );
        log
    }
}

fn uid(v: &Value) -> String {
    v["metadata"]["uid"].as_str().expect("uid").to_string()
}

fn phase(v: &Value) -> &str {
    v.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn ready(v: &Value) -> bool {
    v.pointer("/status/readyToUse") == Some(&json!(true))
}

mod batch;
mod isolation;
mod pods;
mod volumes;
