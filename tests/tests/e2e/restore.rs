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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_filesystem_volumes_come_back_identical_and_into_a_larger_pvc() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, files, image) = backed_up_volumes(&env, 8 << 20).await;
    let original_tree = tree(&volume_path(&env, NS, "files").await);
    assert!(original_tree.len() >= 8, "{original_tree:?}");

    let out = env
        .plugin(
            &["restore", &blk, "--to", "blk-back", "-n", NS, "--wait"],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    // Its results are data, on stdout, as `create`'s are; stderr is for messages.
    let results: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(results.len(), 2, "{}", out.stdout);
    assert!(
        results[0]
            .starts_with("persistentvolumeclaim/blk-back created in t: restoring VolumeBackup"),
        "{}",
        out.stdout
    );
    assert!(
        results[1].starts_with(&format!(
            "restored {NS}/blk-back from VolumeBackup {blk} in "
        )),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stderr, "",
        "a restore without trouble says nothing on stderr"
    );
    let out = env
        .plugin(
            &["restore", &files, "--to", "files-back", "-n", NS, "--wait"],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let restored = std::fs::read(volume_path(&env, NS, "blk-back").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
    assert_eq!(
        tree(&volume_path(&env, NS, "files-back").await),
        original_tree
    );
    assert_cleanly_bound(&env, NS, "blk-back").await;
    assert_cleanly_bound(&env, NS, "files-back").await;

    // Into a larger volume: the image at the start, the rest untouched (zero).
    let out = env
        .plugin(
            &[
                "restore", &blk, "--to", "blk-big", "-n", NS, "--size", "12Mi", "--wait",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let big = std::fs::read(volume_path(&env, NS, "blk-big").await).unwrap();
    assert_eq!(big.len(), 12 << 20);
    assert!(
        big[..image.len()] == image[..],
        "the image differs in the larger volume"
    );
    assert!(big[image.len()..].iter().all(|b| *b == 0));
    // Smaller than the image: refused before anything is created.
    let out = env
        .plugin(
            &[
                "restore",
                &blk,
                "--to",
                "blk-small",
                "-n",
                NS,
                "--size",
                "4Mi",
            ],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "smaller than the backed-up block image");
    assert!(get_in(&env, &pvcs_ar(), NS, "blk-small").await.is_none());

    let events = events_of(&env, NS, "blk-back").await;
    assert!(
        events.iter().any(|e| e.contains("PopulatorCreated"))
            && events.iter().any(|e| e.contains("PopulatorFinished")),
        "{events:?}"
    );
    // `restore --wait` returns once the claim is bound; the populator reports the success
    // right after.
    let cond = eventually(20, "the Restored condition to be True", || async {
        restored_condition(&env, NS, &blk)
            .await
            .filter(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(cond["reason"], "Restored", "{cond}");
    let vb = get_in(&env, &backups_ar(), NS, &blk).await.unwrap();
    assert_eq!(vb["status"]["progress"]["bytesDone"], json!(image.len()));
    // The backup's own condition is kept beside it.
    assert!(
        vb["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "BackedUp" && c["status"] == "True"),
        "{vb}"
    );

    // The metrics endpoint of the running populator counts the three restores.
    let pods = list_in(&env, &pods_ar(), POP_NS).await;
    let pod = pods
        .iter()
        .find(|p| p["status"]["phase"] == "Running")
        .expect("a running populator pod");
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let succeeded = "volbackup_populator_operations_total{result=\"succeeded\"} 3";
    let metrics = eventually(10, "three restores in the metrics", || async {
        let m = http_get(&format!("{ip}:8080"), "/metrics").await;
        m.contains(succeeded).then_some(m)
    })
    .await;
    assert!(
        metrics.contains("volbackup_populator_leader 1"),
        "{metrics}"
    );
    assert!(
        !populator_logs(&env).contains(PASSWORD),
        "the password was logged"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_wait_for_the_first_consumer_and_go_into_other_namespaces() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, files, image) = backed_up_volumes(&env, 4 << 20).await;
    env.create(
        &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        json!({"metadata": {"name": "late"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;

    // WaitForFirstConsumer: nothing happens until a pod wants the claim.
    let out = env
        .plugin(
            &[
                "restore",
                &blk,
                "--to",
                "late-blk",
                "-n",
                NS,
                "--storage-class",
                "late",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        list_in(&env, &pvcs_ar(), POP_NS).await.is_empty(),
        "a prime PVC was made before a consumer was scheduled"
    );
    let data = env.dir.path().join("data");
    // The consumer checks the data itself; it can only start once the claim is bound.
    env.run_pod(
        "consumer",
        "late-blk",
        "Block",
        &format!("cmp {}/block.bin /dev/xvda", data.display()),
    )
    .await;
    let claim = get_in(&env, &pvcs_ar(), NS, "late-blk").await.unwrap();
    assert!(
        claim
            .pointer("/metadata/annotations/volume.kubernetes.io~1selected-node")
            .is_some()
    );
    assert_cleanly_bound(&env, NS, "late-blk").await;

    // Another namespace: the VolumeBackup (and with --copy-secret its Secret) is copied.
    env.create(
        &ar("", "v1", "Namespace", "namespaces"),
        json!({"metadata": {"name": "other"}}),
    )
    .await;
    let from = format!("{NS}/{files}");
    let out = env
        .plugin(
            &["restore", &from, "--to", "copy", "-n", "other", "--wait"],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "--copy-secret");
    assert!(get_in(&env, &pvcs_ar(), "other", "copy").await.is_none());
    let out = env
        .plugin(
            &[
                "restore",
                &from,
                "--to",
                "copy",
                "-n",
                "other",
                "--copy-secret",
                "--wait",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    assert_eq!(
        tree(&volume_path(&env, "other", "copy").await),
        tree(&volume_path(&env, NS, "files").await)
    );
    assert!(get_in(&env, &backups_ar(), "other", &files).await.is_some());
    assert!(
        get_in(&env, &secrets_ar(), "other", &repository_secret(&env))
            .await
            .is_some()
    );
    assert_cleanly_bound(&env, "other", "copy").await;
    let restored = std::fs::read(volume_path(&env, NS, "late-blk").await).unwrap();
    assert!(restored == image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_restores_from_the_repository_alone() {
    let first = Env::start().await;
    let (blk, _files, image) = backed_up_volumes(&first, 4 << 20).await;
    let snapshot = first
        .list(&backups_ar(), true, None)
        .await
        .into_iter()
        .find(|b| b["metadata"]["name"] == blk.as_str())
        .unwrap()["spec"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let second = Env::start().await;
    let repo = first.repo.to_str().unwrap();
    // The second cluster's administrator allows the first cluster's repository directory.
    install_with(&second, &["--allow-node-repository", repo]).await;
    let out = second
        .plugin(
            &[
                "restore",
                &snapshot[..12],
                "--to",
                "moved",
                "-n",
                NS,
                "--repo",
                repo,
                "--wait",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let restored = std::fs::read(volume_path(&second, NS, "moved").await).unwrap();
    assert!(
        restored == image,
        "the volume restored in the second cluster differs"
    );
    let vbs = second.list(&backups_ar(), true, None).await;
    assert_eq!(vbs.len(), 1, "{vbs:?}");
    assert_eq!(vbs[0]["spec"]["snapshot"], snapshot.as_str());
    assert_eq!(vbs[0]["status"]["volume"]["pvc"], "blk");
    assert_cleanly_bound(&second, NS, "moved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_populate_pod_is_retried_and_the_data_is_right() {
    let env = Env::start().await;
    install(&env).await;
    // 96 MiB, so that the copy still runs when the test kills it.
    let (blk, _files, image) = backed_up_volumes(&env, 96 << 20).await;
    let out = env
        .plugin(&["restore", &blk, "--to", "again", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    // Kill the copy as soon as it runs.
    let name = eventually(30, "a running populate pod", || async {
        list_in(&env, &pods_ar(), POP_NS)
            .await
            .into_iter()
            .find(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("populate-")
                    && p["status"]["phase"] == "Running"
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
    })
    .await;
    assert!(
        env.cluster.kill_pod(POP_NS, &name),
        "the pod's processes were not found"
    );
    // While the populator waits to try again (5 s by default), the VolumeBackup says so.
    let cond = eventually(20, "the Restored condition to say Retrying", || async {
        restored_condition(&env, NS, &blk)
            .await
            .filter(|c| c["reason"] == "Retrying")
    })
    .await;
    assert_eq!(cond["status"], "Unknown", "{cond}");
    let msg = cond["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("restoring into") && msg.contains("/again: attempt 1 of 5 failed"),
        "{msg}"
    );
    eventually(60, "the restored PVC to bind", || async {
        let c = get_in(&env, &pvcs_ar(), NS, "again").await?;
        (c["status"]["phase"] == "Bound").then_some(())
    })
    .await;
    let events = events_of(&env, NS, "again").await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("PopulatorFailed") && e.contains("attempt 1 of 5 failed")),
        "no retry reported: {events:?}"
    );
    let restored = std::fs::read(volume_path(&env, NS, "again").await).unwrap();
    assert!(restored == image, "the retried restore wrote other bytes");
    assert_cleanly_bound(&env, NS, "again").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populator_that_crashes_after_every_step_still_converges() {
    let env = Env::start().await;
    env.create(
        &ar("", "v1", "Namespace", "namespaces"),
        json!({"metadata": {"name": POP_NS}}),
    )
    .await;
    let (blk, files, image) = backed_up_volumes(&env, 4 << 20).await;
    claim_from(&env, NS, "crashy-blk", &blk, "Block", "4Mi").await;
    claim_from(&env, NS, "crashy-files", &files, "Filesystem", "16Mi").await;
    let mut crashes = 0;
    loop {
        let both_bound = {
            let a = get_in(&env, &pvcs_ar(), NS, "crashy-blk").await.unwrap();
            let b = get_in(&env, &pvcs_ar(), NS, "crashy-files").await.unwrap();
            let done = |c: &Value| {
                c["status"]["phase"] == "Bound"
                    && c["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| !f.contains(&json!("volbackup.io/populate")))
            };
            done(&a) && done(&b)
        };
        if both_bound {
            break;
        }
        // A run that takes one step and then dies, as a crash would. It may wait for the
        // copy before its step: two minutes is a hang, not a slow machine.
        match populator_process(&env, Some(1), Duration::from_secs(120)).await {
            Some(3) => crashes += 1,
            other => panic!("the populator ended with {other:?} instead of crashing after a step"),
        }
        // Every run takes a step, and a claim has about nine (more with retried pods); how
        // many share a run depends on timing, so only a loop that never ends is caught here.
        assert!(crashes < 100, "no convergence after {crashes} restarts");
    }
    // What the test means: it converged (above), the data is the backup's, nothing is left.
    let restored = std::fs::read(volume_path(&env, NS, "crashy-blk").await).unwrap();
    assert!(restored == image);
    assert_eq!(
        tree(&volume_path(&env, NS, "crashy-files").await),
        tree(&volume_path(&env, NS, "files").await)
    );
    assert_cleanly_bound(&env, NS, "crashy-blk").await;
    assert_cleanly_bound(&env, NS, "crashy-files").await;
    assert_no_populator_leftovers(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_the_pvc_pending_with_a_warning_and_a_false_condition() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, _files, _image) = backed_up_volumes(&env, 4 << 20).await;
    // Another namespace whose repository Secret has the wrong password.
    let wrong_pw = "not-the-password-9d1c";
    namespace_with_repository_secret(
        &env,
        "wrong",
        json!({"RESTIC_REPOSITORY": env.repo.to_str().unwrap(), "RESTIC_PASSWORD": wrong_pw}),
        true,
    )
    .await;
    let pvs_before = pv_names(&env).await;
    let from = format!("{NS}/{blk}");
    let out = env
        .plugin(
            &[
                "restore",
                &from,
                "--to",
                "nope",
                "-n",
                "wrong",
                "--wait",
                "--timeout",
                "60s",
            ],
            &[],
        )
        .await;
    assert_ne!(out.code, 0, "a restore with the wrong password succeeded");
    let last = out.stderr.lines().last().unwrap_or("");
    assert!(last.contains("WrongPassword"), "{}", out.stderr);

    let claim = get_in(&env, &pvcs_ar(), "wrong", "nope").await.unwrap();
    assert_eq!(claim["status"]["phase"], "Pending");
    assert!(
        claim["spec"]["volumeName"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
    let events = events_of(&env, "wrong", "nope").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Warning PopulatorFailed") && e.contains("wrong password")),
        "{events:?}"
    );
    let vb = get_in(&env, &backups_ar(), "wrong", &blk).await.unwrap();
    let cond = vb["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restored")
        .cloned()
        .unwrap();
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "WrongPassword");
    // No PV is bound to the claim, and the prime volume is gone again.
    assert_no_populator_leftovers(&env).await;
    for pv in env.list(&pvs_ar(), false, None).await {
        assert_ne!(pv["spec"]["claimRef"]["name"], "nope", "{pv}");
    }
    assert_no_new_volume_left(&env, &pvs_before).await;
    // Neither password shows anywhere.
    let all_events = list_in(&env, &events_ar(), "wrong").await;
    let text = format!("{all_events:?}{vb}{}{}", out.stdout, out.stderr) + &populator_logs(&env);
    assert!(
        !text.contains(wrong_pw) && !text.contains(PASSWORD),
        "a password leaked"
    );

    // Still Pending a while later: the failure is not retried with the same Secret.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let claim = get_in(&env, &pvcs_ar(), "wrong", "nope").await.unwrap();
    assert_eq!(claim["status"]["phase"], "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pvc_deleted_midway_leaves_nothing_behind() {
    let env = Env::start().await;
    install(&env).await;
    // 96 MiB, so that the copy still runs when the claim is deleted.
    let (blk, _files, _image) = backed_up_volumes(&env, 96 << 20).await;
    let pvs_before = pv_names(&env).await;
    let out = env
        .plugin(&["restore", &blk, "--to", "gone", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    eventually(30, "the populate pod", || async {
        list_in(&env, &pods_ar(), POP_NS)
            .await
            .into_iter()
            .find(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("populate-")
            })
    })
    .await;
    api_in(&env, &pvcs_ar(), NS)
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete the claim");
    eventually(30, "the claim to go away", || async {
        get_in(&env, &pvcs_ar(), NS, "gone")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert_no_populator_leftovers(&env).await;
    let events = events_of(&env, NS, "gone").await;
    assert!(
        !events.iter().any(|e| e.contains("PopulatorFinished")),
        "the restore finished before the claim was deleted, so nothing was midway: {events:?}"
    );
    assert_no_new_volume_left(&env, &pvs_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_without_the_populator_says_to_install_it() {
    let env = Env::start().await;
    let out = env
        .plugin(&["restore", "whatever", "--to", "x", "-n", NS], &[])
        .await;
    assert_one_line_failure(&out, "kubectl volbackup install");
    assert!(get_in(&env, &pvcs_ar(), NS, "x").await.is_none());
    // Bad input is refused before the cluster is asked anything.
    let out = env
        .plugin(&["restore", "b", "--to", "Bad_Name", "-n", NS], &[])
        .await;
    assert_one_line_failure(&out, "not a valid PVC name");
    let out = env
        .plugin(&["restore", "b", "--to", "x", "--size", "lots"], &[])
        .await;
    assert_one_line_failure(&out, "not a Kubernetes quantity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_populator_replicas_elect_one_leader() {
    let env = Env::start().await;
    install(&env).await;
    let deploys = api_in(&env, &ar("apps", "v1", "Deployment", "deployments"), POP_NS);
    deploys
        .patch(
            "volbackup-populator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale");
    let pods = eventually(30, "two running populator pods", || async {
        let running: Vec<Value> = list_in(&env, &pods_ar(), POP_NS)
            .await
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    // Both replicas answer, and exactly one says it leads: polled, since a replica that has
    // just started may not serve its metrics yet on a loaded machine.
    let leaders = eventually(
        60,
        "both replicas answering and exactly one leading",
        || async {
            let mut leaders = Vec::new();
            for p in &pods {
                let ip = p["status"]["podIP"].as_str().unwrap();
                let m = try_http_get(&format!("{ip}:8080"), "/metrics").await?;
                if m.contains("volbackup_populator_leader 1") {
                    leaders.push(p["metadata"]["name"].as_str().unwrap().to_string());
                }
            }
            (leaders.len() == 1).then_some(leaders)
        },
    )
    .await;
    let lease = get_in(
        &env,
        &ar("coordination.k8s.io", "v1", "Lease", "leases"),
        POP_NS,
        "volbackup-populator",
    )
    .await
    .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], leaders[0].as_str());

    // The leader goes away: the other one takes over and restores.
    api_in(&env, &pods_ar(), POP_NS)
        .delete(&leaders[0], &DeleteParams::default())
        .await
        .unwrap();
    let (blk, _files, image) = backed_up_volumes(&env, 4 << 20).await;
    let out = env
        .plugin(
            &[
                "restore",
                &blk,
                "--to",
                "after-failover",
                "-n",
                NS,
                "--wait",
                "--timeout",
                "90s",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let restored = std::fs::read(volume_path(&env, NS, "after-failover").await).unwrap();
    assert!(restored == image);
}

/// On a terminal, `restore --wait` shows the PVC's phase while it waits and ends with one line
/// naming the volume (through a real pseudo-terminal). The bar itself appears once the
/// populator publishes progress (every 2 s while the pod copies), which a restore this small
/// can finish before; the same bar is asserted for `create`, whose mover reports at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_on_a_terminal_shows_progress_and_the_bound_volume() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, _files, image) = backed_up_volumes(&env, 8 << 20).await;
    let (ok, screen) = env
        .plugin_on_terminal(&["restore", &blk, "--to", "seen", "-n", NS, "--wait"])
        .await;
    assert!(ok, "restore failed: {screen}");
    let lines: Vec<&str> = screen.lines().filter(|l| l.contains("t/seen")).collect();
    eprintln!("drawn: {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("waiting for the populator")),
        "the phase was not shown: {lines:#?}"
    );
    let volume = get_in(&env, &pvcs_ar(), NS, "seen").await.unwrap()["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        screen.contains(&format!("restored t/seen from VolumeBackup {blk}"))
            && screen.contains(&volume),
        "{screen}"
    );
    let restored = std::fs::read(volume_path(&env, NS, "seen").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
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

/// A snapshot missing from the repository and a claim too small for the image fail at once;
/// an unreachable repository fails after its retries. Each leaves its PVC Pending with a
/// Warning event and a False condition, never bound to an empty or partial volume; fixing the
/// VolumeBackup starts that restore again and it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_that_cannot_be_restored_keep_the_pvc_pending_with_the_reason() {
    let env = Env::start().await;
    install(&env).await;
    // Two attempts a second apart, so giving up on an unreachable repository is quick.
    let deploys = api_in(&env, &ar("apps", "v1", "Deployment", "deployments"), POP_NS);
    let d = deploys.get("volbackup-populator").await.unwrap();
    let mut containers =
        serde_json::to_value(&d).unwrap()["spec"]["template"]["spec"]["containers"].clone();
    for a in ["--max-attempts", "2", "--retry-backoff", "1s"] {
        containers[0]["args"].as_array_mut().unwrap().push(json!(a));
    }
    deploys
        .patch(
            "volbackup-populator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": containers}}}})),
        )
        .await
        .expect("patch the populator");
    eventually(30, "the reconfigured populator to run", || async {
        let pods = list_in(&env, &pods_ar(), POP_NS).await;
        let running: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("volbackup-populator-")
            })
            .collect();
        (running.len() == 1
            && running[0]["status"]["phase"] == "Running"
            && running[0]["spec"]["containers"][0]["args"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("--max-attempts"))))
        .then_some(())
    })
    .await;
    let (blk, files, _image) = backed_up_volumes(&env, 4 << 20).await;
    let original_tree = tree(&volume_path(&env, NS, "files").await);
    let pvs_before = pv_names(&env).await;

    // Too small: a hand-written claim of 1 MiB for a 4 MiB image.
    claim_from(&env, NS, "small", &blk, "Block", "1Mi").await;
    assert_given_up(&env, NS, "small", &blk, "VolumeTooSmall", 30).await;

    // A snapshot the repository does not have.
    let backups = api_in(&env, &backups_ar(), NS);
    let real = get_in(&env, &backups_ar(), NS, &files).await.unwrap()["spec"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let bogus = "5".repeat(64);
    backups
        .patch(
            &files,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"snapshot": bogus}})),
        )
        .await
        .unwrap();
    claim_from(&env, NS, "missing", &files, "Filesystem", "16Mi").await;
    assert_given_up(&env, NS, "missing", &files, "SnapshotNotFound", 60).await;

    // A repository nobody answers at, in another namespace.
    let aws_secret = "far-aws-secret-0b7e";
    namespace_with_repository_secret(
        &env,
        "far",
        json!({"RESTIC_REPOSITORY": "s3:http://127.0.0.1:1/bucket/repo", "RESTIC_PASSWORD": PASSWORD,
               "AWS_ACCESS_KEY_ID": "GKfar", "AWS_SECRET_ACCESS_KEY": aws_secret, "AWS_REGION": "garage"}),
        true,
    )
    .await;
    let from = format!("{NS}/{blk}");
    let out = env
        .plugin(&["restore", &from, "--to", "unreachable", "-n", "far"], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    // The copied record names the repository it was written to; this namespace's Secret
    // points elsewhere: refused as a mismatch, without a pod looking in the wrong place.
    assert_given_up(&env, "far", "unreachable", &blk, "RepositoryMismatch", 60).await;
    assert_no_populate_pod(&env, "far", "unreachable").await;
    let far_events = events_of(&env, "far", "unreachable").await;
    assert!(
        far_events
            .iter()
            .any(|e| e.contains("s3:http://127.0.0.1:1/bucket/repo")
                && e.contains(env.repo.to_str().unwrap())),
        "the mismatch does not name both repositories: {far_events:?}"
    );
    // A record that names the Secret's repository is tried there (and that one is down).
    api_in(&env, &backups_ar(), "far")
        .patch(
            &blk,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"repository": {"location": "s3:http://127.0.0.1:1/bucket/repo"}}}),
            ),
        )
        .await
        .expect("repoint the record");
    eventually(30, "the mismatch to be cleared", || async {
        let c = get_in(&env, &pvcs_ar(), "far", "unreachable").await?;
        let why = c
            .pointer("/metadata/annotations/volbackup.io~1populate-failed")
            .and_then(Value::as_str)
            .unwrap_or("");
        (!why.starts_with("RepositoryMismatch")).then_some(())
    })
    .await;
    assert_given_up(
        &env,
        "far",
        "unreachable",
        &blk,
        "RepositoryUnreachable",
        150,
    )
    .await;
    let events = events_of(&env, "far", "unreachable").await;
    assert!(
        events.iter().any(|e| e.contains("attempt 1 of 2 failed")),
        "the first failure was not retried: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains("gave up after 2 attempts")),
        "{events:?}"
    );

    // A Secret the plugin did not write (no repository mark), even with the right settings:
    // refused before any pod could carry it.
    namespace_with_repository_secret(
        &env,
        "plain",
        json!({"RESTIC_REPOSITORY": env.repo.to_str().unwrap(), "RESTIC_PASSWORD": PASSWORD}),
        false,
    )
    .await;
    let out = env
        .plugin(&["restore", &from, "--to", "unmarked", "-n", "plain"], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    assert_given_up(&env, "plain", "unmarked", &blk, "SecretNotMarked", 60).await;
    let events = events_of(&env, "plain", "unmarked").await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("volbackup.io/repository=true")),
        "the event does not name the missing mark: {events:?}"
    );
    assert_no_populate_pod(&env, "plain", "unmarked").await;

    // A backup that failed: `restore` refuses it in one line and creates nothing; a claim
    // written by hand is refused by the populator, with no pod.
    let mut failed = get_in(&env, &backups_ar(), NS, &blk).await.unwrap();
    let spec = failed["spec"].as_object_mut().unwrap();
    spec.remove("snapshot");
    let spec = failed["spec"].clone();
    backups
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "volbackup.io/v1alpha1", "kind": "VolumeBackup",
                "metadata": {"name": "failed"}, "spec": spec}),
            )
            .unwrap(),
        )
        .await
        .expect("create the failed record");
    backups
        .patch_status(
            "failed",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed", "conditions": [{"type": "BackedUp", "status": "False",
                "reason": "SnapshotFailed", "message": "failed while taking the VolumeSnapshot: quota exceeded",
                "lastTransitionTime": "2026-12-03T12:00:00Z"}]}})),
        )
        .await
        .expect("mark it Failed");
    let out = env
        .plugin(&["restore", "failed", "--to", "from-failed", "-n", NS], &[])
        .await;
    assert_one_line_failure(
        &out,
        "failed (SnapshotFailed: failed while taking the VolumeSnapshot",
    );
    assert!(
        out.stderr.contains("holds nothing to restore"),
        "{}",
        out.stderr
    );
    assert!(get_in(&env, &pvcs_ar(), NS, "from-failed").await.is_none());
    claim_from(&env, NS, "by-hand", "failed", "Block", "16Mi").await;
    assert_given_up(&env, NS, "by-hand", "failed", "BackupFailed", 30).await;
    assert_no_populate_pod(&env, NS, "by-hand").await;

    // Nothing temporary stays, no volume made for these restores is left, and no secret shows.
    assert_no_populator_leftovers(&env).await;
    assert_no_new_volume_left(&env, &pvs_before).await;
    let mut text = populator_logs(&env);
    for ns in [NS, "far"] {
        text += &format!("{:?}", list_in(&env, &events_ar(), ns).await);
    }
    assert!(
        !text.contains(PASSWORD) && !text.contains(aws_secret),
        "a secret leaked"
    );

    // Fixing the VolumeBackup starts the restore again, and it completes.
    backups
        .patch(
            &files,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"snapshot": real}})),
        )
        .await
        .unwrap();
    eventually(60, "the healed restore to bind", || async {
        let c = get_in(&env, &pvcs_ar(), NS, "missing").await?;
        (c["status"]["phase"] == "Bound").then_some(())
    })
    .await;
    assert_eq!(tree(&volume_path(&env, NS, "missing").await), original_tree);
    assert_cleanly_bound(&env, NS, "missing").await;
    let cond = restored_condition(&env, NS, &files).await.unwrap();
    assert_eq!(cond["status"], "True", "{cond}");
}

/// Two backups of one PVC in one namespace, to two repositories with two passwords: each
/// record names its own repository and Secret, so the older one still restores (it used to
/// look for its snapshot in the newer repository: `SnapshotNotFound`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_to_two_repositories_with_two_passwords_each_restore_from_their_own() {
    let env = Env::start().await;
    // The second repository, with another password; the volume changes in between. Both are
    // node directories the administrator allows.
    let second = env.dir.path().join("second-repo");
    install_with(&env, &["--allow-node-repository", second.to_str().unwrap()]).await;
    let image = filled_volumes(&env, 2 << 20).await;
    let out = env.create_backup(&["blk"]).await;
    assert_eq!(out.code, 0, "first create failed: {}", out.stderr);

    let second_pw = "second-repository-pw-41c2";
    let out = env
        .plugin(
            &["repo", "init", "--repo", second.to_str().unwrap()],
            &[("VOLBACKUP_PASSWORD", second_pw)],
        )
        .await;
    assert_eq!(out.code, 0, "repo init failed: {}", out.stderr);
    let changed = pattern(2 << 20, 77);
    let data = env.dir.path().join("changed.bin");
    std::fs::write(&data, &changed).unwrap();
    env.run_pod(
        "change-blk",
        "blk",
        "Block",
        &format!(
            "dd if={} of=/dev/xvda bs=1M conv=notrunc 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;
    // Backup names carry the time to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = env
        .plugin(
            &[
                "create",
                "blk",
                "-n",
                NS,
                "--repo",
                second.to_str().unwrap(),
                "--timeout",
                "60s",
            ],
            &[("VOLBACKUP_PASSWORD", second_pw)],
        )
        .await;
    assert_eq!(out.code, 0, "second create failed: {}", out.stderr);
    assert!(!out.stderr.contains(second_pw) && !out.stdout.contains(second_pw));

    let records = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=blk"))
        .await;
    assert_eq!(records.len(), 2, "{records:?}");
    let record_of = |repo: &Path| {
        records
            .iter()
            .find(|r| r["spec"]["repository"]["location"] == repo.to_str().unwrap())
            .unwrap_or_else(|| panic!("no record names {}: {records:?}", repo.display()))
            .clone()
    };
    let (first_vb, second_vb) = (record_of(&env.repo), record_of(&second));
    let secret_of = |r: &Value| {
        r["spec"]["repository"]["secretRef"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(secret_of(&first_vb), secret_of(&second_vb));
    for (vb, repo) in [(&first_vb, &env.repo), (&second_vb, &second)] {
        let s = get_in(&env, &secrets_ar(), NS, &secret_of(vb))
            .await
            .unwrap();
        let stored = s["data"]["VOLBACKUP_REPOSITORY"].as_str().unwrap();
        use base64::Engine;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap();
        assert_eq!(stored, repo.to_str().unwrap().as_bytes());
    }

    // Both restore, each from its own repository, byte for byte.
    for (vb, pvc, want) in [
        (&first_vb, "first", &image),
        (&second_vb, "second", &changed),
    ] {
        let name = vb["metadata"]["name"].as_str().unwrap();
        let out = env
            .plugin(
                &[
                    "restore",
                    name,
                    "--to",
                    pvc,
                    "-n",
                    NS,
                    "--wait",
                    "--timeout",
                    "120s",
                ],
                &[],
            )
            .await;
        assert_eq!(out.code, 0, "restore of {name} failed: {}", out.stderr);
        let restored = std::fs::read(volume_path(&env, NS, pvc).await).unwrap();
        assert!(&restored == want, "{pvc} differs from what was backed up");
    }

    // A record as earlier versions wrote it (no location; the one Secret
    // `volbackup-repository`, marked only as managed by volbackup) still restores.
    let legacy: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "volbackup-repository", "namespace": NS,
                     "labels": {"app.kubernetes.io/managed-by": "volbackup"}},
        "stringData": {"VOLBACKUP_REPOSITORY": env.repo.to_str().unwrap(), "VOLBACKUP_PASSWORD": PASSWORD},
    }))
    .unwrap();
    api_in(&env, &secrets_ar(), NS)
        .create(&Default::default(), &legacy)
        .await
        .unwrap();
    let first_name = first_vb["metadata"]["name"].as_str().unwrap();
    api_in(&env, &backups_ar(), NS)
        .patch(
            first_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"repository": {"secretRef": {"name": "volbackup-repository"}, "location": null}}})),
        )
        .await
        .expect("make the record an old one");
    let out = env
        .plugin(
            &[
                "restore",
                first_name,
                "--to",
                "legacy",
                "-n",
                NS,
                "--wait",
                "--timeout",
                "120s",
            ],
            &[],
        )
        .await;
    assert_eq!(
        out.code, 0,
        "restore of an old record failed: {}",
        out.stderr
    );
    let restored = std::fs::read(volume_path(&env, NS, "legacy").await).unwrap();
    assert!(restored == image, "the old record's restore differs");
}

/// Two restores from one VolumeBackup at once, one into a claim too small for the image (written
/// by hand: `restore` itself refuses that size): `restore --wait` of the other follows its own
/// claim (its progress and its result), and the failure stays with the small claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restores_from_one_backup_at_once_each_keep_their_own_progress_and_result() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, _files, image) = backed_up_volumes(&env, 4 << 20).await;
    claim_from(&env, NS, "small", &blk, "Block", "1Mi").await;
    let fits = env
        .plugin(
            &[
                "restore",
                &blk,
                "--to",
                "fits",
                "-n",
                NS,
                "--wait",
                "--timeout",
                "120s",
            ],
            &[],
        )
        .await;
    assert_eq!(
        fits.code, 0,
        "the restore that fits failed: {}",
        fits.stderr
    );
    assert!(
        !fits.stderr.contains("VolumeTooSmall") && !fits.stdout.contains("VolumeTooSmall"),
        "the restore that fits reported the other claim's failure: {}{}",
        fits.stdout,
        fits.stderr
    );
    assert!(
        fits.stdout.contains(&format!("restored {NS}/fits")),
        "{}",
        fits.stdout
    );
    let restored = std::fs::read(volume_path(&env, NS, "fits").await).unwrap();
    assert!(restored == image, "the restored image differs");
    // The failure is the small claim's own: on it (annotation, Warning event), while the
    // VolumeBackup's one Restored condition tells whichever restore ended last.
    let why = eventually(60, "the small claim to be given up", || async {
        let c = get_in(&env, &pvcs_ar(), NS, "small").await?;
        c.pointer("/metadata/annotations/volbackup.io~1populate-failed")
            .and_then(Value::as_str)
            .map(String::from)
    })
    .await;
    assert!(why.starts_with("VolumeTooSmall"), "{why}");
    let events = events_of(&env, NS, "small").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("Warning PopulatorFailed") && e.contains("VolumeTooSmall")),
        "{events:?}"
    );
    assert!(
        !events_of(&env, NS, "fits")
            .await
            .iter()
            .any(|e| e.contains("VolumeTooSmall")),
        "the other claim's failure shows on fits"
    );

    // The progress each claim carries is its own: the whole image for the one that fits,
    // nothing for the one that never started.
    let progress = eventually(10, "the progress of fits", || async {
        let c = get_in(&env, &pvcs_ar(), NS, "fits").await?;
        let p: Value = serde_json::from_str(
            c.pointer("/metadata/annotations/volbackup.io~1populate-progress")?
                .as_str()?,
        )
        .ok()?;
        (p["bytesTotal"].as_u64().unwrap_or(0) > 0).then_some(p)
    })
    .await;
    assert_eq!(progress["bytesTotal"], image.len() as u64, "{progress}");
    assert_eq!(progress["bytesDone"], image.len() as u64, "{progress}");
    let small = get_in(&env, &pvcs_ar(), NS, "small").await.unwrap();
    assert!(
        small
            .pointer("/metadata/annotations/volbackup.io~1populate-progress")
            .is_none(),
        "{small}"
    );
}

/// A file capability as the kernel stores it (`security.capability`, revision 2): permitted
/// and effective `cap_net_bind_service`.
const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The mode bits, the device number (0 for anything but a device node) and the file
/// capability (empty without one) of `p`, or `None` when nothing is there.
fn privileges_of(p: &Path) -> Option<(u32, u64, Vec<u8>)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let mut cap = [0u8; 64];
    let cap = match rustix::fs::lgetxattr(p, "security.capability", &mut cap[..]) {
        Ok(n) => cap[..n].to_vec(),
        Err(_) => Vec::new(),
    };
    Some((m.mode() & 0o7777, m.rdev(), cap))
}

/// A file tree with a set-user-id program, a file capability and a device node comes back
/// without them, unless the restore asks for them; the VolumeBackup then says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_set_id_bits_and_capabilities_come_back_only_when_the_restore_asks() {
    let env = Env::start().await;
    install(&env).await;
    env.pvc("priv", "Filesystem", "16Mi", json!({})).await;
    // Filled on the node, as root.
    let vol = volume_path(&env, NS, "priv").await;
    std::fs::write(vol.join("tool"), b"#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(
        vol.join("tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(vol.join("capable"), b"x").unwrap();
    rustix::fs::lsetxattr(
        vol.join("capable"),
        "security.capability",
        &CAP_NET_BIND_SERVICE,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let disk = rustix::fs::makedev(7, 200);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        vol.join("disk"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::Mode::from_raw_mode(0o660),
        disk,
    )
    .unwrap();
    // Past the umask.
    std::fs::set_permissions(
        vol.join("disk"),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    let out = env.create_backup(&["priv"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    let backup = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=priv"))
        .await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // Not asked for: none of it.
    let out = env
        .plugin(
            &["restore", &backup, "--to", "plain", "-n", NS, "--wait"],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let plain = volume_path(&env, NS, "plain").await;
    assert_eq!(privileges_of(&plain.join("tool")), Some((0o755, 0, vec![])));
    assert_eq!(privileges_of(&plain.join("capable")).unwrap().2, b"");
    assert_eq!(privileges_of(&plain.join("disk")), None);
    assert_eq!(
        std::fs::read(plain.join("tool")).unwrap(),
        b"#!/bin/sh\nid\n"
    );
    let vb = get_in(&env, &backups_ar(), NS, &backup).await.unwrap();
    assert!(vb["spec"].get("privilegedFiles").is_none(), "{vb}");

    // Asked for: all of it, for this restore and those after it.
    let out = env
        .plugin(
            &[
                "restore",
                &backup,
                "--to",
                "privileged",
                "-n",
                NS,
                "--privileged-files",
                "--wait",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "VolumeBackup {NS}/{backup} now restores device nodes"
        )),
        "{}",
        out.stderr
    );
    let back = volume_path(&env, NS, "privileged").await;
    assert_eq!(privileges_of(&back.join("tool")), Some((0o4755, 0, vec![])));
    assert_eq!(
        privileges_of(&back.join("capable")).unwrap().2,
        CAP_NET_BIND_SERVICE
    );
    assert_eq!(
        privileges_of(&back.join("disk")),
        Some((0o660, disk, vec![]))
    );
    let vb = get_in(&env, &backups_ar(), NS, &backup).await.unwrap();
    assert_eq!(vb["spec"]["privilegedFiles"], true, "{vb}");
    assert_cleanly_bound(&env, NS, "plain").await;
    assert_cleanly_bound(&env, NS, "privileged").await;
    assert_no_populator_leftovers(&env).await;
}
