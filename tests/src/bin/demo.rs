//! `cargo run -p volbackup-e2e --bin demo`: volbackup from a fresh clone, in a few minutes,
//! without a cluster of your own.
//!
//! Starts kubesim (the simulated cluster of the tests) with this build's image in a registry on
//! loopback and a repository in a local directory; makes a Block and a Filesystem PVC with
//! data; runs `kubectl volbackup install`, `create`, `list`, `describe` and `restore --wait`
//! into new PVCs, as a user would; reads the restored volumes back and compares them with
//! what was written. Prints each command and its output, and at the end the same commands for
//! a real cluster. Everything it started (cluster, pods, registry) stops when it exits; the
//! exit status is non-zero when anything failed or differs.
//!
//! Needs what the end-to-end tests need: root, loop devices, util-linux, runc, buildah,
//! skopeo, umoci and docker-registry (`bash .ci/run` installs them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kubesim::{Cluster, ClusterOptions};
use serde_json::{Value, json};

const NS: &str = "demo";
/// The demo repository's password (a local directory deleted at the end).
const PASSWORD: &str = "demo-repository-password";
/// The line CI looks for.
const SUCCESS: &str = "demo: restored volumes are identical to the originals";

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => {
            println!("\n{SUCCESS}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

/// What the demo needs of this machine, each missing piece named.
fn check_host() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "kubesim runs pods with runc, loop devices and mounts: run the demo as root"
    );
    for tool in [
        "losetup", "mount", "runc", "buildah", "skopeo", "umoci", "objcopy", "dd", "cp",
    ] {
        ensure!(
            volbackup_e2e::image::on_path(tool),
            "`{tool}` is missing from PATH: `bash .ci/run` installs what the demo needs (or apt-get install util-linux runc buildah skopeo umoci binutils)"
        );
    }
    ensure!(
        Path::new("/usr/bin/docker-registry").is_file(),
        "/usr/bin/docker-registry is missing: apt-get install docker-registry"
    );
    ensure!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: modprobe loop"
    );
    Ok(())
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
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

struct Demo {
    cluster: Cluster,
    client: kube::Client,
    dir: PathBuf,
    repo: PathBuf,
    bin: PathBuf,
    image: String,
}

impl Demo {
    async fn create(&self, r: &ApiResource, namespaced: bool, mut obj: Value) -> Result<()> {
        obj["apiVersion"] = json!(r.api_version);
        obj["kind"] = json!(r.kind);
        let o: DynamicObject = serde_json::from_value(obj)?;
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(self.client.clone(), NS, r)
        } else {
            Api::all_with(self.client.clone(), r)
        };
        api.create(&PostParams::default(), &o)
            .await
            .with_context(|| format!("creating a {}", r.kind))?;
        Ok(())
    }

    async fn wait_for(
        &self,
        r: &ApiResource,
        name: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), NS, r);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(o) = api.get_opt(name).await? {
                let v = serde_json::to_value(o)?;
                if done(&v) {
                    return Ok(v);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{} {name} did not {what} within 60 s",
                r.kind
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PVC of the class `fast`, bound.
    async fn pvc(&self, name: &str, mode: &str, size: &str) -> Result<()> {
        let pvcs = ar("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims");
        self.create(
            &pvcs,
            true,
            json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                   "volumeMode": mode, "resources": {"requests": {"storage": size}}}}),
        )
        .await?;
        self.wait_for(&pvcs, name, "bind", |p| {
            p.pointer("/status/phase") == Some(&json!("Bound"))
        })
        .await?;
        Ok(())
    }

    /// Runs `sh -c script` to completion in a pod with the PVC at /dev/xvda (Block) or /data,
    /// and the demo directory at its own path.
    async fn run_pod(&self, name: &str, pvc: &str, mode: &str, script: &str) -> Result<()> {
        let own = self.dir.to_string_lossy().to_string();
        let mut c = json!({"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "demo", "mountPath": own}]});
        if mode == "Block" {
            c["volumeDevices"] = json!([{"name": "v", "devicePath": "/dev/xvda"}]);
        } else {
            c["volumeMounts"]
                .as_array_mut()
                .expect("mounts")
                .push(json!({"name": "v", "mountPath": "/data"}));
        }
        let pods = ar("", "v1", "Pod", "pods");
        self.create(
            &pods,
            true,
            json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [c], "volumes": [
                {"name": "v", "persistentVolumeClaim": {"claimName": pvc}},
                {"name": "demo", "hostPath": {"path": own, "type": "Directory"}}]}}),
        )
        .await?;
        let done = self
            .wait_for(&pods, name, "finish", |p| {
                matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
            })
            .await?;
        ensure!(
            done.pointer("/status/phase") == Some(&json!("Succeeded")),
            "pod {name} failed: {}",
            done["status"]
        );
        Api::<DynamicObject>::namespaced_with(self.client.clone(), NS, &pods)
            .delete(name, &Default::default())
            .await?;
        Ok(())
    }

    /// Runs `kubectl volbackup ARGS` (the plugin binary, as kubectl would), shows the command
    /// and what it printed, and gives its stdout; a failure ends the demo.
    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        println!("$ kubectl volbackup {}", args.join(" "));
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("VOLBACKUP_PASSWORD", PASSWORD)
            .env("VOLBACKUP_IMAGE", &self.image)
            .env_remove("VOLBACKUP_REPOSITORY")
            .env_remove("RESTIC_REPOSITORY")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run kubectl-volbackup")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stdout.lines().chain(stderr.lines()) {
            println!("  {line}");
        }
        ensure!(
            out.status.success(),
            "`kubectl volbackup {}` failed ({})",
            args.join(" "),
            out.status
        );
        Ok(stdout)
    }
}

/// Deterministic bytes that neither compress nor deduplicate.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
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

/// Every file and symlink below `dir` (`lost+found` left out): its content or link target.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(dir)?.to_path_buf();
            if rel == Path::new("lost+found") {
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else if ft.is_dir() {
                todo.push(path);
            } else {
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

/// The names `create` printed on stdout (`volumebackup.volbackup.io/NAME created ...`).
fn created_backups(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("volumebackup.volbackup.io/"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

async fn demo() -> Result<()> {
    check_host()?;
    step("building the plugin and its image");
    let bin = volbackup_e2e::plugin::binary()?;
    let image = {
        let b = bin.clone();
        tokio::task::spawn_blocking(move || volbackup_e2e::image::test_image(&b).reference.clone())
            .await
            .context("building the image")?
    };
    println!(
        "plugin {}\nimage  {image} (a registry on loopback)",
        bin.display()
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let temp = tempfile::Builder::new()
        .prefix("volbackup-demo-")
        .tempdir()?;
    let dir = temp.path().canonicalize()?;
    step("starting kubesim, a simulated cluster");
    let cluster = Cluster::start(ClusterOptions::new(dir.join("cluster"))).await?;
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let demo = Demo {
        cluster,
        client,
        repo: dir.join("repository"),
        dir: dir.clone(),
        bin,
        image,
    };
    let result = run(&demo).await;
    demo.cluster.stop();
    result
}

async fn run(demo: &Demo) -> Result<()> {
    println!("kubeconfig {}", demo.cluster.kubeconfig_path().display());
    demo.create(
        &ar("", "v1", "Namespace", "namespaces"),
        false,
        json!({"metadata": {"name": NS}}),
    )
    .await?;
    demo.create(
        &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        false,
        json!({"metadata": {"name": "fast", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
    )
    .await?;
    demo.create(
        &ar("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass", "volumesnapshotclasses"),
        false,
        json!({"metadata": {"name": "snap", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}},
               "driver": "hostpath.csi.kubesim.io", "deletionPolicy": "Delete"}),
    )
    .await?;
    println!("namespace {NS}, StorageClass fast (default), VolumeSnapshotClass snap (default)");

    step("two PVCs with data: db (Block, 8 MiB) and files (Filesystem)");
    let data = demo.dir.join("data");
    std::fs::create_dir_all(data.join("files/site"))?;
    std::fs::write(data.join("db.img"), pattern(6 << 20, 7))?;
    std::fs::write(
        data.join("files/index.html"),
        b"<h1>hello from volbackup</h1>\n",
    )?;
    std::fs::write(data.join("files/site/app.bin"), pattern(300_000, 9))?;
    std::os::unix::fs::symlink("../index.html", data.join("files/site/home.html"))?;
    demo.pvc("db", "Block", "8Mi").await?;
    demo.pvc("files", "Filesystem", "16Mi").await?;
    let d = data.display();
    demo.run_pod(
        "fill-db",
        "db",
        "Block",
        &format!("dd if={d}/db.img of=/dev/xvda bs=1M conv=fsync 2>/dev/null"),
    )
    .await?;
    demo.run_pod(
        "fill-files",
        "files",
        "Filesystem",
        &format!("cp -a {d}/files/. /data/"),
    )
    .await?;
    println!("wrote 6 MiB to db and 3 entries to files");

    step("a repository (a local directory here; S3 on a real cluster)");
    let repo = demo.repo.to_string_lossy().into_owned();
    demo.kubectl(&["repo", "init", "--repo", &repo]).await?;

    step("install the populator");
    // A directory repository reaches the populate pods as a hostPath volume: the
    // administrator allows that directory, and the `baseline` Pod Security level refuses
    // hostPath; with S3 neither is needed.
    demo.kubectl(&[
        "install",
        "--pod-security",
        "privileged",
        "--allow-node-repository",
        &repo,
    ])
    .await?;
    demo.kubectl(&["version"]).await?;

    step("back up both PVCs");
    let created = demo
        .kubectl(&["create", "db", "files", "-n", NS, "--repo", &repo])
        .await?;
    let backups = created_backups(&created);
    ensure!(
        backups.len() == 2,
        "create named {} backups, not 2: {created}",
        backups.len()
    );
    demo.kubectl(&["list", "-n", NS]).await?;
    demo.kubectl(&["doctor", "-n", NS]).await?;
    // Backups are named after their PVC and the time.
    let backup_of = |pvc: &str| -> Result<String> {
        backups
            .iter()
            .find(|name| name.starts_with(&format!("{pvc}-")))
            .cloned()
            .with_context(|| format!("no backup of {pvc} in: {created}"))
    };
    let (db_backup, files_backup) = (backup_of("db")?, backup_of("files")?);
    demo.kubectl(&["describe", &db_backup, "-n", NS]).await?;

    step("restore each into a new PVC");
    demo.kubectl(&[
        "restore",
        &db_backup,
        "--to",
        "db-restored",
        "-n",
        NS,
        "--wait",
    ])
    .await?;
    demo.kubectl(&[
        "restore",
        &files_backup,
        "--to",
        "files-restored",
        "-n",
        NS,
        "--wait",
    ])
    .await?;

    step("compare the restored volumes with the originals");
    let out = demo.dir.join("out");
    std::fs::create_dir_all(out.join("files"))?;
    let o = out.display();
    demo.run_pod(
        "read-db",
        "db-restored",
        "Block",
        &format!("dd if=/dev/xvda of={o}/db.img bs=1M count=6 2>/dev/null"),
    )
    .await?;
    demo.run_pod(
        "read-files",
        "files-restored",
        "Filesystem",
        &format!("cp -a /data/. {o}/files/"),
    )
    .await?;
    let (want, got) = (
        std::fs::read(data.join("db.img"))?,
        std::fs::read(out.join("db.img"))?,
    );
    if want != got {
        let at = want.iter().zip(&got).position(|(a, b)| a != b);
        bail!(
            "db-restored differs from db: {} bytes read back, first difference at {at:?}",
            got.len()
        );
    }
    println!("db-restored: 6 MiB identical to db");
    let (want, got) = (tree(&data.join("files"))?, tree(&out.join("files"))?);
    ensure!(
        want == got,
        "files-restored differs from files: {:?} against {:?}",
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    println!("files-restored: {} entries identical to files", want.len());

    step("on a real cluster, the same in commands");
    println!(
        "{}",
        [
            "kubectl volbackup doctor -n apps                 # what is missing, and the fix",
            "kubectl volbackup install",
            "export VOLBACKUP_PASSWORD=...                    # or --password-file FILE",
            "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...",
            "kubectl volbackup create db files -n apps --repo s3:https://s3.example.com/bucket/cluster1",
            "kubectl volbackup list -n apps",
            "kubectl volbackup describe BACKUP -n apps",
            "kubectl volbackup restore BACKUP --to db-restored -n apps --wait",
        ]
        .map(|l| format!("  {l}"))
        .join("\n")
    );
    Ok(())
}
