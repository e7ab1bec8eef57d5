//! Restores end to end: `create`, then `restore` (or a hand-written PVC) filled by the real
//! populator, which kubesim runs as the Deployment `install` made (or, where the test restarts
//! it at will, as a host process with the admin kubeconfig). Volumes are compared byte for byte
//! (Block) or file by file with modes and owners (Filesystem).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::*;

mod failures;
mod populator;
mod volumes;

pub(crate) const POP_NS: &str = "volbackup-system";

fn pvs_ar() -> kube::api::ApiResource {
    ar("", "v1", "PersistentVolume", "persistentvolumes")
}
pub(crate) fn secrets_ar() -> kube::api::ApiResource {
    ar("", "v1", "Secret", "secrets")
}
fn events_ar() -> kube::api::ApiResource {
    ar("", "v1", "Event", "events")
}

/// An API for a kind in any namespace ("" for cluster-scoped kinds).
pub(crate) fn api_in(
    env: &Env,
    r: &kube::api::ApiResource,
    ns: &str,
) -> Api<kube::api::DynamicObject> {
    if ns.is_empty() {
        Api::all_with(env.client.clone(), r)
    } else {
        Api::namespaced_with(env.client.clone(), ns, r)
    }
}

pub(crate) async fn get_in(
    env: &Env,
    r: &kube::api::ApiResource,
    ns: &str,
    name: &str,
) -> Option<Value> {
    api_in(env, r, ns)
        .get_opt(name)
        .await
        .expect("get")
        .map(|o| serde_json::to_value(o).unwrap())
}

pub(crate) async fn list_in(env: &Env, r: &kube::api::ApiResource, ns: &str) -> Vec<Value> {
    api_in(env, r, ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

/// Polls `f` every 100 ms until it gives `Some`, for at most `secs` seconds.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl volbackup install`, which waits for the populator Deployment to be available.
/// These tests restore from a local-directory repository, which populate pods mount from the
/// node (hostPath): their namespace must allow privileged pods, and the administrator must
/// allow the directory.
pub(crate) async fn install(env: &Env) {
    install_with(env, &[]).await;
}

/// [`install`] with more flags.
pub(crate) async fn install_with(env: &Env, extra: &[&str]) {
    let mut args = vec![
        "install",
        "--pod-security",
        "privileged",
        "--allow-node-repository",
        env.repo.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = env.plugin(&args, &[]).await;
    assert_eq!(out.code, 0, "install failed: {}{}", out.stdout, out.stderr);
}

/// A Block and a Filesystem PVC with known content, backed up; returns the backups' names.
pub(crate) async fn backed_up_volumes(env: &Env, block_bytes: usize) -> (String, String, Vec<u8>) {
    let image = filled_volumes(env, block_bytes).await;
    let out = env.create_backup(&["blk", "files"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    let (blk, files) = backup_names(env).await;
    (blk, files, image)
}

/// The PVCs `blk` (Block, `block_bytes` of a pattern, returned) and `files` (a tree with files
/// of several owners, private modes, links, a fifo and a set mtime) in the test namespace.
pub(crate) async fn filled_volumes(env: &Env, block_bytes: usize) -> Vec<u8> {
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let image = pattern(block_bytes, 11);
    std::fs::write(data.join("block.bin"), &image).unwrap();
    let mib = block_bytes.div_ceil(1 << 20);
    env.pvc("blk", "Block", &format!("{mib}Mi"), json!({}))
        .await;
    env.pvc("files", "Filesystem", "16Mi", json!({})).await;
    env.run_pod(
        "fill-blk",
        "blk",
        "Block",
        &format!(
            "dd if={}/block.bin of=/dev/xvda bs=1M conv=notrunc 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;
    std::fs::write(data.join("big.bin"), pattern(3 << 20, 12)).unwrap();
    env.run_pod(
        "fill-files",
        "files",
        "Filesystem",
        &format!(
            "set -e; cd /data; mkdir -p app/conf private; echo hello > app/hello.txt; \
             cp {}/big.bin app/big.bin; echo secret > private/key; \
             chown -R 1234:5678 app; chmod 0750 app/conf; chmod 0640 app/hello.txt; \
             chown 0:0 private; chmod 0700 private; chmod 0600 private/key; \
             ln -s ../private/key app/link; ln app/hello.txt app/hard; \
             mkfifo app/fifo; touch -d '2020-01-02 03:04:05' app/hello.txt; sync",
            data.display()
        ),
    )
    .await;
    image
}

/// The names of the VolumeBackups of `blk` and `files` (one each).
pub(crate) async fn backup_names(env: &Env) -> (String, String) {
    let name_of = |pvc: &'static str| async move {
        let b = env
            .list(
                &backups_ar(),
                true,
                Some(&format!("volbackup.io/pvc={pvc}")),
            )
            .await;
        assert_eq!(b.len(), 1, "{b:?}");
        b[0]["metadata"]["name"].as_str().unwrap().to_string()
    };
    (name_of("blk").await, name_of("files").await)
}

/// The directory or image file behind a bound PVC.
pub(crate) async fn volume_path(env: &Env, ns: &str, pvc: &str) -> PathBuf {
    let claim = get_in(env, &pvcs_ar(), ns, pvc).await.expect("pvc");
    let pv = claim["spec"]["volumeName"].as_str().expect("bound");
    env.cluster.dir().join("volumes").join(pv)
}

/// Every entry under `root` (but `lost+found`): type, mode, owner, size, mtime, content or
/// link target.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                format!("file {} {:x}", bytes.len(), fnv(&bytes))
            } else {
                "special".to_string()
            };
            let mtime = if ft.is_file() { m.mtime() } else { 0 };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{} nlink={} mtime={mtime}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if ft.is_dir() { 0 } else { m.nlink() },
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Waits until the populator's namespace holds none of its temporary objects.
pub(crate) async fn assert_no_populator_leftovers(env: &Env) {
    let mut left = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        left.clear();
        for r in [pvcs_ar(), pods_ar(), secrets_ar()] {
            for o in list_in(env, &r, POP_NS).await {
                if o.pointer("/metadata/labels/volbackup.io~1populate-for-uid")
                    .is_some()
                {
                    left.push(format!("{}/{}", r.plural, o["metadata"]["name"]));
                }
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "populator leftovers: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of the PVs that exist now.
async fn pv_names(env: &Env) -> BTreeSet<String> {
    env.list(&pvs_ar(), false, None)
        .await
        .iter()
        .filter_map(|pv| pv["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// Waits until no PV is left that was not in `before` (the prime volume was reclaimed). A PV
/// of `before` may go away meanwhile (the backup's temporary volume is deleted
/// asynchronously), so this compares names, not counts.
async fn assert_no_new_volume_left(env: &Env, before: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pvs = env.list(&pvs_ar(), false, None).await;
        let new: Vec<&Value> = pvs
            .iter()
            .filter(|pv| !before.contains(pv["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        if new.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let left: Vec<String> = new
                .iter()
                .map(|pv| {
                    format!(
                        "{} phase={} policy={} claim={}/{}",
                        pv["metadata"]["name"],
                        pv["status"]["phase"],
                        pv["spec"]["persistentVolumeReclaimPolicy"],
                        pv["spec"]["claimRef"]["namespace"],
                        pv["spec"]["claimRef"]["name"],
                    )
                })
                .collect();
            panic!("volumes made during the restore were not reclaimed: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a restored claim is bound, unfinalized, and its PV has its policy back (the last
/// steps follow the bind, so this waits a little for them).
pub(crate) async fn assert_cleanly_bound(env: &Env, ns: &str, pvc: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let claim = get_in(env, &pvcs_ar(), ns, pvc).await.expect("pvc");
        assert_eq!(claim["status"]["phase"], "Bound", "{claim}");
        let finalizers = claim["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let pv = get_in(
            env,
            &pvs_ar(),
            "",
            claim["spec"]["volumeName"].as_str().unwrap(),
        )
        .await
        .expect("pv");
        assert_eq!(pv["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
        let done = !finalizers.contains(&json!("volbackup.io/populate"))
            && pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
            && pv
                .pointer("/metadata/annotations/volbackup.io~1saved-reclaim-policy")
                .is_none();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished: finalizers {finalizers:?}, PV {pv}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_populator_leftovers(env).await;
}

/// Events about one PVC, as `reason: message` lines.
pub(crate) async fn events_of(env: &Env, ns: &str, pvc: &str) -> Vec<String> {
    list_in(env, &events_ar(), ns)
        .await
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pvc)
        .map(|e| {
            format!(
                "{} {}: {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Everything the populator's pods printed, to check no secret leaked.
fn populator_logs(env: &Env) -> String {
    let mut all = String::new();
    let pods = env.cluster.dir().join("pods");
    if let Ok(rd) = std::fs::read_dir(&pods) {
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with(POP_NS) {
                continue;
            }
            for f in walkdir(&e.path()) {
                if f.extension().is_some_and(|x| x == "log") {
                    all.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
                }
            }
        }
    }
    all
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path)
        .await
        .expect("GET from the metrics port")
}

/// [`http_get`], or `None` while nothing answers there yet.
async fn try_http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// Runs `kubectl-volbackup populator` on the host until it exits or `limit` passes.
async fn populator_process(env: &Env, crash_after: Option<u32>, limit: Duration) -> Option<i32> {
    let mut cmd = tokio::process::Command::new(&env.bin);
    cmd.args([
        "populator",
        "--namespace",
        POP_NS,
        "--image",
        &env.image,
        "--metrics-addr",
        "127.0.0.1:0",
        "--retry-backoff",
        "1s",
        "--allow-node-repository",
        env.repo.to_str().unwrap(),
    ])
    .env("KUBECONFIG", env.cluster.kubeconfig_path())
    .env("POD_NAME", "restarted-populator")
    .env("RUST_LOG", "warn")
    .kill_on_drop(true);
    if let Some(n) = crash_after {
        cmd.env("VOLBACKUP_POPULATOR_CRASH_AFTER_STEPS", n.to_string());
    }
    let mut child = cmd.spawn().expect("populator starts");
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.expect("wait").code(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// A new namespace with a repository Secret holding `settings`, under the name the test
/// repository's VolumeBackups name.
async fn namespace_with_repository_secret(env: &Env, ns: &str, settings: Value, marked: bool) {
    env.create(
        &ar("", "v1", "Namespace", "namespaces"),
        json!({"metadata": {"name": ns}}),
    )
    .await;
    let secret: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": repository_secret(env), "namespace": ns,
                     "labels": if marked { json!({"volbackup.io/repository": "true"}) } else { json!({}) }},
        "stringData": settings,
    }))
    .unwrap();
    api_in(env, &secrets_ar(), ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
}

/// No populate pod exists for the claim `ns/pvc`, and none was ever started (a refused source).
pub(crate) async fn assert_no_populate_pod(env: &Env, ns: &str, pvc: &str) {
    let claim = get_in(env, &pvcs_ar(), ns, pvc).await.expect("claim");
    let pod = format!("populate-{}", claim["metadata"]["uid"].as_str().unwrap());
    assert!(
        get_in(env, &pods_ar(), POP_NS, &pod).await.is_none(),
        "{pod} was started for a refused source"
    );
    let events = list_in(env, &events_ar(), POP_NS).await;
    assert!(
        !format!("{events:?}").contains(&pod),
        "{pod} was started for a refused source (events name it)"
    );
}

/// A hand-written PVC naming a VolumeBackup (no plugin involved).
pub(crate) async fn claim_from(
    env: &Env,
    ns: &str,
    name: &str,
    backup: &str,
    mode: &str,
    size: &str,
) {
    let api = api_in(env, &pvcs_ar(), ns);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": mode,
                 "resources": {"requests": {"storage": size}},
                 "dataSourceRef": {"apiGroup": "volbackup.io", "kind": "VolumeBackup", "name": backup}},
    }))
    .unwrap();
    api.create(&Default::default(), &obj)
        .await
        .expect("create pvc");
}

/// The `Restored` condition of a VolumeBackup, once it has one.
pub(crate) async fn restored_condition(env: &Env, ns: &str, backup: &str) -> Option<Value> {
    let vb = get_in(env, &backups_ar(), ns, backup).await?;
    vb["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Restored")
        .cloned()
}

/// Waits until the claim's restore was given up, then checks what a person would look at: the
/// claim Pending and unbound, a Warning event and the VolumeBackup's condition naming `reason`.
pub(crate) async fn assert_given_up(
    env: &Env,
    ns: &str,
    pvc: &str,
    backup: &str,
    reason: &str,
    secs: u64,
) {
    let why = eventually(secs, &format!("{ns}/{pvc} to be given up"), || async {
        let c = get_in(env, &pvcs_ar(), ns, pvc).await?;
        c.pointer("/metadata/annotations/volbackup.io~1populate-failed")
            .and_then(Value::as_str)
            .map(String::from)
    })
    .await;
    assert!(why.starts_with(reason), "{pvc}: {why}");
    let claim = get_in(env, &pvcs_ar(), ns, pvc).await.unwrap();
    assert_eq!(claim["status"]["phase"], "Pending", "{claim}");
    assert!(
        claim["spec"]["volumeName"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{claim}"
    );
    let events = events_of(env, ns, pvc).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Warning PopulatorFailed") && e.contains(reason)),
        "{pvc}: {events:?}"
    );
    let cond = eventually(10, "the Restored condition", || async {
        restored_condition(env, ns, backup)
            .await
            .filter(|c| c["reason"] == reason)
    })
    .await;
    assert_eq!(cond["status"], "False", "{cond}");
}
