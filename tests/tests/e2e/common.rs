//! What the end-to-end tests share: a kubesim cluster with a storage class, a snapshot class,
//! the VolumeBackup CRD and a local repository, and the real plugin binary to run against it.
//!
//! Needs root, util-linux (`losetup`, `unshare`), loop devices and `/usr/bin/restic`; each
//! missing piece fails the test with a message saying so. The plugin is the one Cargo builds
//! from the current sources (`volbackup_e2e::plugin`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kubesim::cluster::{Cluster, ClusterOptions};
use serde_json::{Value, json};

pub(crate) const NS: &str = "t";
pub(crate) const PASSWORD: &str = "e2e-secret-pw-7f3a";
/// The image repository a cluster pulls from the release (`volbackup_populator::mover`).
pub(crate) const IMAGE: &str = "ghcr.io/volbackup/volbackup";

pub(crate) fn require_host() {
    assert!(
        rustix::process::geteuid().is_root(),
        "kubesim's kubelet needs root (runc containers, overlay mounts, loop devices): run the tests as root"
    );
    for tool in ["losetup", "mount", "runc", "sh", "dd", "cp"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is missing from PATH: install util-linux/coreutils"
        );
    }
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: load the loop module (modprobe loop)"
    );
    assert!(
        Path::new("/usr/bin/restic").is_file(),
        "/usr/bin/restic is missing: apt-get install restic (it is the test oracle)"
    );
}

/// The plugin binary Cargo builds from this workspace's sources (once per test process).
pub(crate) fn plugin_binary() -> PathBuf {
    volbackup_e2e::plugin::binary().unwrap_or_else(|e| panic!("the plugin under test: {e:#}"))
}

pub(crate) fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub(crate) fn pvcs_ar() -> ApiResource {
    ar("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
}
pub(crate) fn pods_ar() -> ApiResource {
    ar("", "v1", "Pod", "pods")
}
pub(crate) fn snapshots_ar() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}
pub(crate) fn snapclass_ar() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
    )
}
pub(crate) fn backups_ar() -> ApiResource {
    ar("volbackup.io", "v1alpha1", "VolumeBackup", "volumebackups")
}

/// What `kubectl-volbackup` printed and how it ended.
pub(crate) struct Outcome {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) struct Env {
    pub(crate) cluster: Cluster,
    pub(crate) client: kube::Client,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) repo: PathBuf,
    pub(crate) bin: PathBuf,
    /// This build's image in the test registry: every plugin run gets it as
    /// `VOLBACKUP_IMAGE`, so the project's pods run from it.
    pub(crate) image: String,
}

/// The name of the repository Secret the plugin writes for the test repository.
pub(crate) fn repository_secret(env: &Env) -> String {
    volbackup_populator::mover::repository_secret_name(env.repo.to_str().unwrap())
}

impl Env {
    pub(crate) async fn start() -> Env {
        require_host();
        // volbackup-store (for the S3 harness) links aws-lc-rs next to ring: pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bin = plugin_binary();
        let image = {
            let b = bin.clone();
            tokio::task::spawn_blocking(move || {
                volbackup_e2e::image::test_image(&b).reference.clone()
            })
            .await
            .expect("the image is built")
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = ClusterOptions::new(dir.path().join("cluster"));
        let cluster = Cluster::start(opts).await.expect("kubesim starts");
        let kc =
            kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let repo = dir.path().join("repo");
        let env = Env {
            cluster,
            client,
            dir,
            repo,
            bin,
            image,
        };
        env.create(
            &ar("", "v1", "Namespace", "namespaces"),
            json!({"metadata": {"name": NS}}),
        )
        .await;
        env.create(
            &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
            json!({"metadata": {"name": "fast"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
        )
        .await;
        env.create(
            &snapclass_ar(),
            json!({"metadata": {"name": "snap", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}}, "driver": "hostpath.csi.kubesim.io", "deletionPolicy": "Delete"}),
        )
        .await;
        let crd_path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds/volumebackups.yaml");
        let crd: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&crd_path).expect("CRD manifest"))
                .expect("CRD yaml");
        env.create(
            &ar(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
            ),
            crd,
        )
        .await;
        let out = env
            .plugin(&["repo", "init", "--repo", env.repo.to_str().unwrap()], &[])
            .await;
        assert_eq!(out.code, 0, "repo init failed: {}", out.stderr);
        env
    }

    pub(crate) fn api(&self, r: &ApiResource, namespaced: bool) -> Api<DynamicObject> {
        if namespaced {
            Api::namespaced_with(self.client.clone(), NS, r)
        } else {
            Api::all_with(self.client.clone(), r)
        }
    }

    pub(crate) async fn create(&self, r: &ApiResource, mut obj: Value) -> Value {
        let namespaced = obj.pointer("/metadata/namespace").is_some()
            || matches!(
                r.plural.as_str(),
                "persistentvolumeclaims" | "pods" | "volumesnapshots"
            );
        obj["apiVersion"] = json!(r.api_version);
        obj["kind"] = json!(r.kind);
        let o: DynamicObject = serde_json::from_value(obj).expect("object");
        let created = self
            .api(r, namespaced)
            .create(&PostParams::default(), &o)
            .await
            .unwrap_or_else(|e| panic!("creating {}: {e}", r.plural));
        serde_json::to_value(created).expect("json")
    }

    pub(crate) async fn list(
        &self,
        r: &ApiResource,
        namespaced: bool,
        labels: Option<&str>,
    ) -> Vec<Value> {
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        self.api(r, namespaced)
            .list(&lp)
            .await
            .unwrap_or_else(|e| panic!("listing {}: {e}", r.plural))
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    pub(crate) async fn wait_for(
        &self,
        r: &ApiResource,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let o = self.api(r, true).get_opt(name).await.expect("get");
            if let Some(o) = o
                .map(|o| serde_json::to_value(o).expect("json"))
                .filter(|o| pred(o))
            {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {} {name} {what}",
                r.plural
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A bound PVC of this mode and size.
    pub(crate) async fn pvc(&self, name: &str, mode: &str, size: &str, labels: Value) {
        self.create(
            &pvcs_ar(),
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": mode, "resources": {"requests": {"storage": size}}}}),
        )
        .await;
        self.wait_for(&pvcs_ar(), name, "to bind", |p| {
            p.pointer("/status/phase") == Some(&json!("Bound"))
        })
        .await;
    }

    /// Runs `sh -c script` in a pod with the PVC at /dev/xvda (Block) or /data, to completion.
    /// The test's directory is mounted at its own path (hostPath), so the script can copy
    /// test data in and out.
    pub(crate) async fn run_pod(&self, name: &str, pvc: &str, mode: &str, script: &str) {
        let own = self.dir.path().to_string_lossy().to_string();
        let mut c = json!({"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "test", "mountPath": own}]});
        if mode == "Block" {
            c["volumeDevices"] = json!([{"name": "v", "devicePath": "/dev/xvda"}]);
        } else {
            c["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "v", "mountPath": "/data"}));
        }
        self.create(
            &pods_ar(),
            json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [c], "volumes": [
                {"name": "v", "persistentVolumeClaim": {"claimName": pvc}},
                {"name": "test", "hostPath": {"path": own, "type": "Directory"}}]}}),
        )
        .await;
        let done = self
            .wait_for(&pods_ar(), name, "to finish", |p| {
                matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
            })
            .await;
        assert_eq!(
            done.pointer("/status/phase"),
            Some(&json!("Succeeded")),
            "pod {name} failed: {}",
            done["status"]
        );
        self.api(&pods_ar(), true)
            .delete(name, &Default::default())
            .await
            .expect("delete pod");
    }

    /// Runs the plugin binary with the cluster's kubeconfig and the repository password.
    pub(crate) async fn plugin(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Outcome {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("VOLBACKUP_PASSWORD", PASSWORD)
            .env("VOLBACKUP_IMAGE", &self.image)
            .env_remove("VOLBACKUP_REPOSITORY")
            .env_remove("RESTIC_REPOSITORY")
            .env_remove("RESTIC_PASSWORD")
            .stdin(std::process::Stdio::null());
        // An empty value unsets the variable.
        for (k, v) in extra_env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("kubectl-volbackup finished within 120 s")
            .expect("kubectl-volbackup runs");
        let o = Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !o.stdout.contains(PASSWORD) && !o.stderr.contains(PASSWORD),
            "the password was printed"
        );
        o
    }

    /// Runs the plugin on a real pseudo-terminal (util-linux `script`, 160 columns), as a
    /// person at a shell would; gives whether it succeeded and the text the terminal showed,
    /// escape sequences removed and each carriage return made a line break.
    pub(crate) async fn plugin_on_terminal(&self, args: &[&str]) -> (bool, String) {
        assert!(
            Path::new("/usr/bin/script").is_file(),
            "/usr/bin/script is missing: apt-get install bsdutils (it gives the test a terminal)"
        );
        let command = format!(
            "stty cols 160 rows 40; exec {} {}",
            self.bin.display(),
            args.join(" ")
        );
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("/usr/bin/script")
                .args(["-qefc", &command, "/dev/null"])
                .env("KUBECONFIG", self.cluster.kubeconfig_path())
                .env("VOLBACKUP_PASSWORD", PASSWORD)
                .env("VOLBACKUP_IMAGE", &self.image)
                .env("TERM", "xterm")
                .env_remove("NO_COLOR")
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .expect("kubectl-volbackup finished within 120 s")
        .expect("script runs");
        let screen = terminal_text(&out.stdout);
        assert!(!screen.contains(PASSWORD), "the password was printed");
        (out.status.success(), screen)
    }

    pub(crate) async fn create_backup(&self, extra: &[&str]) -> Outcome {
        let mut args = vec![
            "create",
            "-n",
            NS,
            "--repo",
            self.repo.to_str().unwrap(),
            "--timeout",
            "60s",
        ];
        args.extend_from_slice(extra);
        self.plugin(&args, &[]).await
    }

    /// Polls until nothing labelled `volbackup.io/backup` is left in the namespace.
    pub(crate) async fn assert_nothing_temporary_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut left = Vec::new();
            for r in [pods_ar(), pvcs_ar(), snapshots_ar()] {
                for o in self.list(&r, true, Some("volbackup.io/backup")).await {
                    left.push(format!(
                        "{}/{}",
                        r.plural,
                        o["metadata"]["name"].as_str().unwrap_or("")
                    ));
                }
            }
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "temporary objects left behind: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn restic(&self, args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("/usr/bin/restic")
            .arg("--repo")
            .arg(&self.repo)
            .arg("--no-cache")
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("restic runs");
        assert!(
            out.status.success(),
            "restic {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Deterministic bytes that do not compress or deduplicate.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub(crate) fn assert_one_line_failure(out: &Outcome, expect: &str) {
    assert_ne!(out.code, 0, "succeeded unexpectedly: {}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", out.stderr);
    assert!(
        lines[0].contains(expect),
        "{:?} does not mention {expect:?}",
        lines[0]
    );
}

/// What a terminal shows of `raw`: CSI escape sequences (`ESC [ ... letter`) removed, carriage
/// returns made line breaks.
fn terminal_text(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}
