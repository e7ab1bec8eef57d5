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
use serde_json::{Value, json};
use volbackup_e2e::kubesim::cluster::{Cluster, ClusterOptions};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_volume_is_written_by_a_pod_snapshotted_and_restored() {
    let sim = Sim::start().await;
    sim.pvc("src", "fast", "Filesystem", "8Mi").await;
    let pvc = sim.wait_phase(PVCS, "src", "Bound", 10).await;
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    let pv = sim.get(PVS, &pv_name).await.unwrap();
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    assert_eq!(pv["spec"]["csi"]["driver"], "hostpath.csi.kubesim.io");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(phase(&pv), "Bound");
    assert_eq!(pvc["status"]["capacity"]["storage"], "8Mi");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert!(sim.dir().join("volumes").join(&pv_name).is_dir());

    sim.run(
        "writer",
        Some(("src", "Filesystem")),
        "echo first > /data/f && mkdir /data/d && ln -s ../f /data/d/l",
    )
    .await;
    // The pod's mount was private to it: nothing of the volume shows on the host's /data.
    assert!(
        !std::path::Path::new("/data/f").exists(),
        "the pod's bind mount leaked to the host"
    );

    sim.create(SNAPSHOTS, json!({"metadata": {"name": "snap1"}, "spec": {"source": {"persistentVolumeClaimName": "src"}}})).await;
    let vs = sim
        .wait_for(SNAPSHOTS, "snap1", "to be ready", 10, ready)
        .await;
    assert_eq!(vs["status"]["restoreSize"], "8Mi");
    assert_eq!(
        vs["spec"]["volumeSnapshotClassName"], "snap",
        "the default class was not chosen"
    );
    let content = sim
        .get(
            CONTENTS,
            vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        content["metadata"]["name"],
        format!("snapcontent-{}", uid(&vs))
    );
    assert_eq!(content["spec"]["sourceVolumeMode"], "Filesystem");
    assert_eq!(content["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        content["spec"]["source"]["volumeHandle"],
        pv["spec"]["csi"]["volumeHandle"]
    );
    assert_eq!(content["status"]["restoreSize"], 8 << 20);

    // A later write to the source does not change the snapshot.
    sim.run(
        "overwriter",
        Some(("src", "Filesystem")),
        "echo second > /data/f",
    )
    .await;

    sim.create(
        PVCS,
        json!({"metadata": {"name": "restored"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "8Mi"}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap1"}}}),
    )
    .await;
    sim.wait_phase(PVCS, "restored", "Bound", 10).await;
    let log = sim
        .run(
            "reader",
            Some(("restored", "Filesystem")),
            "cat /data/f; readlink /data/d/l",
        )
        .await;
    assert_eq!(log, "first\n../f\n");
    let log = sim
        .run("reader2", Some(("src", "Filesystem")), "cat /data/f")
        .await;
    assert_eq!(log, "second\n");

    // Deleting the snapshot (policy Delete) deletes its content and data.
    let handle = content["status"]["snapshotHandle"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.dir().join("snapshots").join(&handle).exists());
    sim.delete(SNAPSHOTS, "snap1").await;
    sim.wait_gone(CONTENTS, content["metadata"]["name"].as_str().unwrap(), 10)
        .await;
    assert!(!sim.dir().join("snapshots").join(&handle).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_is_written_through_a_loop_device_snapshotted_and_restored_larger() {
    let sim = Sim::start().await;
    sim.pvc("blk", "fast", "Block", "4Mi").await;
    sim.wait_phase(PVCS, "blk", "Bound", 10).await;
    sim.run(
        "writer",
        Some(("blk", "Block")),
        "test -b /dev/xvda && printf 'hello block' | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc 2>/dev/null && sync",
    )
    .await;
    sim.create(SNAPSHOTS, json!({"metadata": {"name": "s"}, "spec": {"source": {"persistentVolumeClaimName": "blk"}, "volumeSnapshotClassName": "snap"}})).await;
    let vs = sim.wait_for(SNAPSHOTS, "s", "to be ready", 10, ready).await;
    let content = sim
        .get(
            CONTENTS,
            vs["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(content["spec"]["sourceVolumeMode"], "Block");
    sim.run(
        "overwrite",
        Some(("blk", "Block")),
        "printf 'HELLO BLOCK' | dd of=/dev/xvda bs=512 seek=2048 conv=notrunc 2>/dev/null && sync",
    )
    .await;

    // Smaller than restoreSize: refused with the external-provisioner's event, stays Pending.
    let small = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "small"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "2Mi"}},
                "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
        )
        .await;
    // Another mode than the source without the allow-volume-mode-change annotation: refused.
    let fs = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "fs"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Filesystem", "resources": {"requests": {"storage": "4Mi"}},
                "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
        )
        .await;
    sim.create(
        PVCS,
        json!({"metadata": {"name": "big"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "8Mi"}},
            "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}}),
    )
    .await;
    let big = sim.wait_phase(PVCS, "big", "Bound", 10).await;
    let log = sim
        .run("reader", Some(("big", "Block")), "dd if=/dev/xvda bs=512 skip=2048 count=1 2>/dev/null | head -c 11; echo; blockdev --getsize64 /dev/xvda")
        .await;
    assert_eq!(log, format!("hello block\n{}\n", 8 << 20));
    let file = sim
        .dir()
        .join("volumes")
        .join(big["spec"]["volumeName"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 20);

    let ev = sim.wait_event(&uid(&small), "ProvisioningFailed", 10).await;
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("is less than the size"),
        "{ev}"
    );
    let ev = sim.wait_event(&uid(&fs), "ProvisioningFailed", 10).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("allow-volume-mode-change"),
        "{ev}"
    );
    assert_eq!(phase(&sim.get(PVCS, "small").await.unwrap()), "Pending");
    assert_eq!(phase(&sim.get(PVCS, "fs").await.unwrap()), "Pending");

    // With the annotation on the content, the mode check passes and the request reaches the
    // driver, which cannot turn a Block image into a directory: it says so.
    sim.patch(
        CONTENTS,
        content["metadata"]["name"].as_str().unwrap(),
        json!({"metadata": {"annotations": {"snapshot.storage.kubernetes.io/allow-volume-mode-change": "true"}}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim.list(EVENTS).await.iter().any(|e| {
        e.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(uid(&fs).as_str())
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("does not convert volume modes")
    }) {
        assert!(
            Instant::now() < deadline,
            "no driver error after allowing the mode change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No loop device of the finished pods is left attached to our volumes.
    let out = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains(sim.dir().to_str().unwrap()),
        "loop devices left attached:\n{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populator_hands_its_prime_volume_to_the_user_claim() {
    let sim = Sim::start().await;
    // The user's claim names a data source kind the provisioner does not handle.
    let user = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "user"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "4Mi"}},
                "dataSourceRef": {"apiGroup": "example.io", "kind": "Hello", "name": "h"}}}),
        )
        .await;
    let ev = sim.wait_event(&uid(&user), "Provisioning", 10).await;
    assert_eq!(
        ev["message"],
        "Assuming an external populator will provision the volume"
    );
    assert_eq!(ev["type"], "Normal");
    let ev = sim
        .wait_event(&uid(&user), "UnrecognizedDataSourceKind", 10)
        .await;
    assert_eq!(ev["type"], "Warning");
    // Once a VolumePopulator registers the kind, new claims of it get no warning.
    let populators = Kind(
        "populator.storage.k8s.io",
        "v1beta1",
        "VolumePopulator",
        "volumepopulators",
        false,
    );
    sim.create(populators, json!({"metadata": {"name": "hello"}, "sourceKind": {"group": "example.io", "kind": "Hello"}})).await;
    let other = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "other"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Mi"}},
                "dataSourceRef": {"apiGroup": "example.io", "kind": "Hello", "name": "h2"}}}),
        )
        .await;
    sim.wait_event(&uid(&other), "Provisioning", 10).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !sim.list(EVENTS).await.iter().any(|e| e
            .pointer("/involvedObject/uid")
            .and_then(Value::as_str)
            == Some(uid(&other).as_str())
            && e["reason"] == "UnrecognizedDataSourceKind"),
        "a registered populator kind was reported as unrecognized"
    );

    // The populator: PVC' → pod fills it → claimRef moved to the user's PVC.
    sim.pvc("prime", "fast", "Filesystem", "4Mi").await;
    let prime = sim.wait_phase(PVCS, "prime", "Bound", 10).await;
    sim.run(
        "populate",
        Some(("prime", "Filesystem")),
        "echo populated > /data/hello",
    )
    .await;
    let pv_name = prime["spec"]["volumeName"].as_str().unwrap().to_string();
    sim.patch(
        PVS,
        &pv_name,
        json!({"spec": {"persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": NS, "name": "user", "uid": uid(&user), "resourceVersion": user["metadata"]["resourceVersion"]}}}),
    )
    .await;
    let user_bound = sim.wait_phase(PVCS, "user", "Bound", 10).await;
    assert_eq!(user_bound["spec"]["volumeName"], pv_name.as_str());
    assert_eq!(user_bound["status"]["capacity"]["storage"], "4Mi");
    sim.wait_phase(PVCS, "prime", "Lost", 10).await;
    // Deleting PVC' does not release the volume: it belongs to the user's claim now.
    sim.delete(PVCS, "prime").await;
    sim.patch(
        PVS,
        &pv_name,
        json!({"spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
    )
    .await;
    let log = sim
        .run("reader", Some(("user", "Filesystem")), "cat /data/hello")
        .await;
    assert_eq!(log, "populated\n");
    assert_eq!(phase(&sim.get(PVS, &pv_name).await.unwrap()), "Bound");

    // Deleting the user's claim releases the volume; policy Delete removes it and its data.
    sim.delete(PODS, "reader").await;
    sim.delete(PVCS, "user").await;
    sim.wait_gone(PVS, &pv_name, 10).await;
    assert!(!sim.dir().join("volumes").join(&pv_name).exists());

    // Retain keeps a Released volume and its data.
    sim.create(
        STORAGECLASSES,
        json!({"metadata": {"name": "keep"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Retain"}),
    )
    .await;
    sim.pvc("kept", "keep", "Filesystem", "1Mi").await;
    let kept = sim.wait_phase(PVCS, "kept", "Bound", 10).await;
    let kept_pv = kept["spec"]["volumeName"].as_str().unwrap().to_string();
    sim.delete(PVCS, "kept").await;
    sim.wait_phase(PVS, &kept_pv, "Released", 10).await;
    assert!(sim.dir().join("volumes").join(&kept_pv).is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_claim_stays_pending_until_a_pod_uses_it() {
    let sim = Sim::start().await;
    let pvc = sim.pvc("late", "wffc", "Filesystem", "4Mi").await;
    sim.wait_event(&uid(&pvc), "WaitForFirstConsumer", 10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pvc = sim.get(PVCS, "late").await.unwrap();
    assert_eq!(phase(&pvc), "Pending");
    assert!(
        pvc.pointer("/metadata/annotations/volume.kubernetes.io~1selected-node")
            .is_none()
    );
    assert!(
        sim.list(PVS).await.is_empty(),
        "a PV was provisioned before any consumer"
    );

    let log = sim
        .run(
            "consumer",
            Some(("late", "Filesystem")),
            "echo ok > /data/x && cat /data/x",
        )
        .await;
    assert_eq!(log, "ok\n");
    let pvc = sim.get(PVCS, "late").await.unwrap();
    assert_eq!(phase(&pvc), "Bound");
    let node = pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = sim.get(PODS, "consumer").await.unwrap();
    assert_eq!(pod["spec"]["nodeName"], node.as_str());
    let pv = sim
        .get(PVS, pvc["spec"]["volumeName"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        node.as_str()
    );
    sim.wait_event(&uid(&pod), "Scheduled", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_report_logs_termination_kills_restarts_and_unknown_images() {
    let sim = Sim::start().await;
    // Exit code, termination message and log.
    sim.sh_pod(
        "fails",
        None,
        "echo out; echo err >&2; echo 'it broke' > /dev/termination-log; exit 3",
        "Never",
    )
    .await;
    let p = sim.wait_phase(PODS, "fails", "Failed", 15).await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_eq!(t["message"], "it broke\n");
    // stdout and stderr are two streams (runc copies each through its own pipe): both lines
    // are in the log, in either order.
    let mut lines: Vec<String> = sim.logs("fails").await.lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["err", "out"]);

    // A killed pod is Failed.
    sim.sh_pod("sleeper", None, "sleep 600", "Never").await;
    sim.wait_phase(PODS, "sleeper", "Running", 15).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sim.cluster.kill_pod(NS, "sleeper") {
        assert!(
            Instant::now() < deadline,
            "the running pod had no process to kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = sim.wait_phase(PODS, "sleeper", "Failed", 15).await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );

    // restartPolicy Always restarts an exited container.
    sim.sh_pod("looper", None, "echo run; exit 1", "Always")
        .await;
    let p = sim
        .wait_for(PODS, "looper", "to restart twice", 20, |p| {
            p.pointer("/status/containerStatuses/0/restartCount")
                .and_then(Value::as_u64)
                >= Some(2)
        })
        .await;
    assert_eq!(phase(&p), "Running");
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );
    assert!(sim.logs("looper").await.starts_with("run\nrun\n"));

    // An unknown image fails with ErrImagePull and the kubelet's event, instead of staying
    // in ContainerCreating (bounded by the wait, generous for a loaded machine).
    let nope = sim
        .create(PODS, json!({"metadata": {"name": "nope"}, "spec": {"containers": [{"name": "c", "image": "ghcr.io/nobody/nothing:1"}]}}))
        .await;
    let p = sim
        .wait_for(PODS, "nope", "to fail pulling", 60, |p| {
            matches!(
                p.pointer("/status/containerStatuses/0/state/waiting/reason")
                    .and_then(Value::as_str),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    let ev = sim.wait_event(&uid(&nope), "Failed", 30).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to pull image \"ghcr.io/nobody/nothing:1\""),
        "{ev}"
    );

    // Deleting a running pod kills it and removes the object.
    sim.delete(PODS, "looper").await;
    sim.wait_gone(PODS, "looper", 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pod_reaches_the_api_with_its_service_account_and_nothing_more() {
    let probe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubesim-probe"));
    let sim = Sim::start_with(BTreeMap::from([("example.io/probe".to_string(), probe)])).await;
    sim.create(SERVICEACCOUNTS, json!({"metadata": {"name": "reader"}}))
        .await;
    sim.create(
        SECRETS,
        json!({"metadata": {"name": "hidden"}, "stringData": {"k": "v"}}),
    )
    .await;
    sim.create(ROLES, json!({"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}))
        .await;
    sim.create(
        ROLEBINDINGS,
        json!({"metadata": {"name": "reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]}),
    )
    .await;
    sim.create(
        DEPLOYMENTS,
        json!({"metadata": {"name": "probe"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "probe"}},
            "template": {"metadata": {"labels": {"app": "probe"}}, "spec": {"serviceAccountName": "reader",
                "containers": [{"name": "probe", "image": "example.io/probe:v1"}]}}}}),
    )
    .await;
    sim.wait_for(DEPLOYMENTS, "probe", "to be available", 20, |d| {
        d.pointer("/status/availableReplicas")
            .and_then(Value::as_u64)
            == Some(1)
    })
    .await;
    let pods = sim.list(PODS).await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(pod_name.starts_with("probe-"), "{pod_name}");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert!(pod["metadata"]["labels"]["pod-template-hash"].is_string());

    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = sim.logs(&pod_name).await;
        if log.lines().count() >= 4 {
            break log;
        }
        assert!(Instant::now() < deadline, "the probe printed only:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], format!("namespace: {NS}"), "{log}");
    assert_eq!(lines[1], "pods: ok 1", "{log}");
    assert!(lines[2].starts_with("secrets: 403 "), "{log}");
    assert!(lines[2].contains("system:serviceaccount:t:reader"), "{log}");
    assert!(lines[3].starts_with("pods in default: 403 "), "{log}");

    // A new template replaces the pod; a killed container is restarted (restartPolicy Always).
    sim.cluster.kill_pod(NS, &pod_name);
    sim.wait_for(PODS, &pod_name, "to restart", 20, |p| {
        p.pointer("/status/containerStatuses/0/restartCount")
            .and_then(Value::as_u64)
            >= Some(1)
    })
    .await;
    sim.patch(
        DEPLOYMENTS,
        "probe",
        json!({"spec": {"template": {"metadata": {"labels": {"app": "probe", "v": "2"}}}}}),
    )
    .await;
    sim.wait_gone(PODS, &pod_name, 20).await;
    let d = sim
        .wait_for(DEPLOYMENTS, "probe", "to roll out", 20, |d| {
            d.pointer("/status/updatedReplicas").and_then(Value::as_u64) == Some(1)
                && d.pointer("/status/availableReplicas")
                    .and_then(Value::as_u64)
                    == Some(1)
        })
        .await;
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    let pods = sim.list(PODS).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["metadata"]["labels"]["v"], "2");

    // `command` naming the image's program runs the mapped binary with the rest and `args`.
    let once = |name: &str, automount: bool| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "serviceAccountName": "reader", "automountServiceAccountToken": automount,
            "containers": [{"name": "probe", "image": "example.io/probe@sha256:0123", "command": ["/usr/local/bin/kubesim-probe"], "args": ["--once"]}]}})
    };
    sim.create(PODS, once("once", true)).await;
    sim.wait_phase(PODS, "once", "Succeeded", 20).await;
    assert!(sim.logs("once").await.contains("pods: ok"));
    // Without the token, in-cluster configuration has nothing to read.
    sim.create(PODS, once("no-token", false)).await;
    sim.wait_phase(PODS, "no-token", "Failed", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gets_init_containers_secrets_configmaps_env_read_only_mounts_and_its_user() {
    let sim = Sim::start().await;
    sim.create(
        SECRETS,
        json!({"metadata": {"name": "creds"}, "stringData": {"user": "alice", "pass": "s3cret"}}),
    )
    .await;
    sim.create(
        CONFIGMAPS,
        json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "file.txt": "hello"}}),
    )
    .await;
    sim.pvc("data", "fast", "Filesystem", "1Mi").await;
    let script = "id -u; id -g; pwd; cat x; cat /data/f; (echo no > /data/f) 2>/dev/null && echo writable || echo read-only; \
                  stat -c %a /etc/creds/p/pass; ls /etc/creds; echo $USER_NAME $POD $GREETING $CFG_mode; cat /etc/cfg/file.txt; echo; \
                  cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; echo $KUBERNETES_SERVICE_HOST";
    sim.create(
        PODS,
        json!({"metadata": {"name": "full"}, "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "echo from-init > /work/x; echo pvc > /data/f"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "vol", "mountPath": "/data"}]}],
            "containers": [{"name": "main", "image": "docker.io/library/busybox:latest", "workingDir": "/work", "command": ["sh", "-c", script],
                "securityContext": {"runAsUser": 1234, "runAsGroup": 2345},
                "env": [
                    {"name": "USER_NAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "value": "hi-$(POD)"}],
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "vol", "mountPath": "/data", "readOnly": true},
                    {"name": "secret", "mountPath": "/etc/creds"},
                    {"name": "cfg", "mountPath": "/etc/cfg"}]}],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "vol", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "secret", "secret": {"secretName": "creds", "items": [{"key": "pass", "path": "p/pass", "mode": 256}]}},
                {"name": "cfg", "configMap": {"name": "cfg"}}]}}),
    )
    .await;
    let p = sim
        .wait_for(PODS, "full", "to finish", 30, |p| {
            matches!(
                p.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        })
        .await;
    let log = sim.logs("full").await;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(
        log,
        "1234\n2345\n/work\nfrom-init\npvc\nread-only\n400\np\nalice full hi-full fast\nhello\nt\n127.0.0.1\n"
    );

    // A PVC cloned from that PVC holds the same data.
    sim.create(
        PVCS,
        json!({"metadata": {"name": "clone"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Mi"}},
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "data"}}}),
    )
    .await;
    sim.wait_phase(PVCS, "clone", "Bound", 10).await;
    assert_eq!(
        sim.run("reader", Some(("clone", "Filesystem")), "cat /data/f")
            .await,
        "pvc\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_waits_for_missing_claims_and_static_volumes_bind_by_class_and_size() {
    let sim = Sim::start().await;
    // An administrator's volumes: too small, and big enough (the smallest fitting one wins).
    for (name, size) in [
        ("static-small", "1Mi"),
        ("static-big", "64Mi"),
        ("static-fit", "8Mi"),
    ] {
        std::fs::create_dir_all(sim.dir().join("volumes").join(name)).unwrap();
        sim.create(
            PVS,
            json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain", "csi": {"driver": "hostpath.csi.kubesim.io", "volumeHandle": name}}}),
        )
        .await;
    }
    sim.wait_phase(PVS, "static-fit", "Available", 10).await;
    // A pod whose claim does not exist yet is not scheduled.
    let pod = sim
        .sh_pod(
            "early",
            Some(("later", "Filesystem")),
            "echo static > /data/f; cat /data/f",
            "Never",
        )
        .await;
    let ev = sim.wait_event(&uid(&pod), "FailedScheduling", 10).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("persistentvolumeclaim \"later\" not found"),
        "{ev}"
    );
    assert!(
        sim.get(PODS, "early")
            .await
            .unwrap()
            .pointer("/spec/nodeName")
            .is_none()
    );

    sim.pvc("later", "", "Filesystem", "4Mi").await;
    let pvc = sim.wait_phase(PVCS, "later", "Bound", 10).await;
    assert_eq!(pvc["spec"]["volumeName"], "static-fit");
    assert_eq!(pvc["status"]["capacity"]["storage"], "8Mi");
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    let pv = sim.wait_phase(PVS, "static-fit", "Bound", 10).await;
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);
    sim.wait_phase(PODS, "early", "Succeeded", 20).await;
    assert_eq!(sim.logs("early").await, "static\n");
    assert_eq!(
        std::fs::read_to_string(sim.dir().join("volumes/static-fit/f")).unwrap(),
        "static\n"
    );
    assert_eq!(
        phase(&sim.get(PVS, "static-small").await.unwrap()),
        "Available"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_a_private_dev_with_the_usual_nodes_links_and_its_block_device() {
    let sim = Sim::start().await;
    sim.pvc("raw", "fast", "Block", "1Mi").await;
    let script = "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
                  for l in fd stdin stdout stderr ptmx; do printf '%s -> %s\\n' $l \"$(readlink /dev/$l)\"; done; \
                  test -b /dev/xvda && echo block device; \
                  echo shared > /dev/shm/x && cat /dev/shm/x; \
                  test -c /dev/ptmx && echo ptmx through pts; \
                  test -e /dev/loop-control && echo the node\\'s /dev || echo private; \
                  head -c 3 /dev/zero | od -An -tx1; echo written > /dev/null && echo null takes writes";
    let log = sim.run("devs", Some(("raw", "Block")), script).await;
    assert_eq!(
        log,
        "/dev/null character special file 1:3 666\n\
         /dev/zero character special file 1:5 666\n\
         /dev/full character special file 1:7 666\n\
         /dev/random character special file 1:8 666\n\
         /dev/urandom character special file 1:9 666\n\
         /dev/tty character special file 5:0 666\n\
         fd -> /proc/self/fd\n\
         stdin -> /proc/self/fd/0\n\
         stdout -> /proc/self/fd/1\n\
         stderr -> /proc/self/fd/2\n\
         ptmx -> pts/ptmx\n\
         block device\n\
         shared\n\
         ptmx through pts\n\
         private\n \
         00 00 00\n\
         null takes writes\n"
    );
    // A second pod copies the same template.
    assert!(
        sim.run("devs-again", None, "stat -c %a /dev/null")
            .await
            .starts_with("666")
    );
}

/// The phase and the reason a pod's first container is waiting or ended with.
async fn settle(sim: &Sim, name: &str) -> Value {
    sim.wait_for(PODS, name, "to finish or be refused", 30, |p| {
        matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ) || p
            .pointer("/status/containerStatuses/0/state/waiting/reason")
            .and_then(Value::as_str)
            == Some("CreateContainerConfigError")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_enforces_read_only_roots_non_root_users_capabilities_and_device_owners() {
    let sim = Sim::start().await;
    let pod = |name: &str, sc: Value, script: &str| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script], "securityContext": sc}]}})
    };

    // A read-only root filesystem cannot be written; a writable one can.
    sim.create(
        PODS,
        pod("ro", json!({"readOnlyRootFilesystem": true}), "touch /x"),
    )
    .await;
    sim.create(PODS, pod("rw", json!({}), "touch /x && echo wrote"))
        .await;
    let p = settle(&sim, "ro").await;
    assert_eq!(phase(&p), "Failed");
    assert!(sim.logs("ro").await.contains("Read-only file system"));
    settle(&sim, "rw").await;
    assert_eq!(sim.logs("rw").await, "wrote\n");

    // runAsNonRoot with an image that runs as root is refused by the kubelet.
    let refused = sim
        .create(PODS, pod("nonroot", json!({"runAsNonRoot": true}), "id -u"))
        .await;
    let p = settle(&sim, "nonroot").await;
    let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerConfigError");
    assert_eq!(
        waiting["message"],
        json!(format!(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_{NS}({})\", container: main)",
            uid(&refused)
        ))
    );
    // With a non-root user it runs.
    sim.create(
        PODS,
        pod(
            "nonroot-ok",
            json!({"runAsNonRoot": true, "runAsUser": 1000}),
            "id -u",
        ),
    )
    .await;
    settle(&sim, "nonroot-ok").await;
    assert_eq!(sim.logs("nonroot-ok").await, "1000\n");

    // Dropping CAP_CHOWN makes chown fail for root; the default set allows it.
    let chown = "touch /tmp/f && chown 1234 /tmp/f && stat -c %u /tmp/f";
    sim.create(PODS, pod("chown", json!({}), chown)).await;
    sim.create(
        PODS,
        pod(
            "no-chown",
            json!({"capabilities": {"drop": ["CHOWN"]}}),
            chown,
        ),
    )
    .await;
    settle(&sim, "chown").await;
    assert_eq!(sim.logs("chown").await, "1234\n");
    let p = settle(&sim, "no-chown").await;
    assert_eq!(phase(&p), "Failed");
    assert!(
        sim.logs("no-chown")
            .await
            .contains("Operation not permitted"),
        "{}",
        sim.logs("no-chown").await
    );
    // Added capabilities are effective for root only; privilege escalation off is no_new_privs.
    sim.create(
        PODS,
        pod(
            "caps",
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}}),
            "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        ),
    )
    .await;
    settle(&sim, "caps").await;
    assert_eq!(
        sim.logs("caps").await,
        "CapEff:\t0000000000000002\nNoNewPrivs:\t1\n"
    );

    // A Block volume's device node belongs to root: a non-root user cannot open it.
    sim.pvc("raw", "fast", "Block", "1Mi").await;
    sim.wait_phase(PVCS, "raw", "Bound", 10).await;
    let dev = |name: &str, sc: Value| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "head -c 4 /dev/xvda | wc -c"],
                "securityContext": sc, "volumeDevices": [{"name": "v", "devicePath": "/dev/xvda"}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "raw"}}]}})
    };
    sim.create(PODS, dev("dev-user", json!({"runAsUser": 1000})))
        .await;
    settle(&sim, "dev-user").await;
    assert!(
        sim.logs("dev-user").await.contains("Permission denied"),
        "{}",
        sim.logs("dev-user").await
    );
    sim.create(
        PODS,
        dev("dev-root", json!({"capabilities": {"drop": ["ALL"]}})),
    )
    .await;
    settle(&sim, "dev-root").await;
    assert_eq!(sim.logs("dev-root").await.trim(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_group_gives_the_group_a_filesystem_volume_and_pod_security_refuses_violations() {
    let sim = Sim::start().await;
    sim.pvc("shared", "fast", "Filesystem", "1Mi").await;
    sim.wait_phase(PVCS, "shared", "Bound", 10).await;
    // Root writes a private file; a pod with fsGroup 2000 running as 1000 may then use it.
    sim.run(
        "seed",
        Some(("shared", "Filesystem")),
        "mkdir /data/d && echo x > /data/d/f && chmod 600 /data/d/f && chmod 700 /data/d",
    )
    .await;
    sim.create(
        PODS,
        json!({"metadata": {"name": "grouped"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c",
                "id -G; stat -c '%g %A' /data/d /data/d/f; cat /data/d/f; echo y > /data/d/g && stat -c %g /data/d/g"],
                "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "shared"}}]}}),
    )
    .await;
    let p = settle(&sim, "grouped").await;
    let log = sim.logs("grouped").await;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    assert_eq!(
        log,
        "1000 2000\n2000 drwxrws---\n2000 -rw-rw----\nx\n2000\n"
    );

    // Pod Security admission: a restricted namespace refuses a root pod with the API server's
    // message; a hardened pod is admitted.
    sim.create(
        NAMESPACES,
        json!({"metadata": {"name": "locked", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await;
    let pods: Api<DynamicObject> = Api::namespaced_with(
        sim.client.clone(),
        "locked",
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let bad: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0}}]}}))
    .unwrap();
    match pods.create(&Default::default(), &bad).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403);
            assert_eq!(
                e.message,
                "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), runAsUser=0 (container \"c\" must not set runAsUser=0), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            );
        }
        other => panic!("a root pod was admitted to a restricted namespace: {other:?}"),
    }
    let good: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hardened"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox", "command": ["true"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}))
    .unwrap();
    pods.create(&Default::default(), &good)
        .await
        .expect("a hardened pod is admitted");
    // A claim without a class gets the default one (DefaultStorageClass admission).
    sim.patch(
        STORAGECLASSES,
        "fast",
        json!({"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}}),
    )
    .await;
    let pvc = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "classless"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}),
        )
        .await;
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
}
