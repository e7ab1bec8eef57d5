//! `kubectl volbackup create` end to end: the real binary against kubesim, whose mover pods run
//! the same binary as processes; the real `restic` reads what they wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common::*;
use crate::support_s3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_filesystem_pvcs_are_backed_up_and_restic_reads_them_back() {
    let env = Env::start().await;
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(data.join("tree/sub")).unwrap();
    let block = pattern(4 << 20, 7);
    std::fs::write(data.join("block.bin"), &block).unwrap();
    std::fs::write(data.join("tree/a.txt"), b"alpha\n").unwrap();
    std::fs::write(data.join("tree/sub/b.bin"), pattern(300_000, 9)).unwrap();
    std::os::unix::fs::symlink("../a.txt", data.join("tree/sub/link")).unwrap();

    env.pvc("blk", "Block", "4Mi", json!({"app": "db"})).await;
    env.pvc("files", "Filesystem", "8Mi", json!({"app": "web"}))
        .await;
    let d = data.display();
    env.run_pod(
        "fill-blk",
        "blk",
        "Block",
        &format!("dd if={d}/block.bin of=/dev/xvda bs=1M conv=notrunc 2>/dev/null && sync"),
    )
    .await;
    env.run_pod(
        "fill-files",
        "files",
        "Filesystem",
        &format!("cp -a {d}/tree/. /data/ && sync"),
    )
    .await;

    let started = Instant::now();
    let out = env.create_backup(&["blk", "files"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    eprintln!("create of 2 PVCs took {:?}", started.elapsed());
    assert_eq!(
        out.stdout.matches("volumebackup.volbackup.io/").count(),
        2,
        "{}",
        out.stdout
    );

    // The records.
    let backups = env.list(&backups_ar(), true, None).await;
    assert_eq!(backups.len(), 2, "{backups:?}");
    let by_pvc = |pvc: &str| {
        backups
            .iter()
            .find(|b| b.pointer("/status/volume/pvc") == Some(&json!(pvc)))
            .unwrap_or_else(|| panic!("no VolumeBackup for {pvc}: {backups:?}"))
            .clone()
    };
    let vb_blk = by_pvc("blk");
    let vb_fs = by_pvc("files");
    for vb in [&vb_blk, &vb_fs] {
        assert_eq!(vb["status"]["phase"], "Completed");
        assert_eq!(
            vb["spec"]["repository"]["secretRef"]["name"],
            repository_secret(&env).as_str()
        );
        assert_eq!(
            vb["spec"]["repository"]["location"],
            env.repo.to_str().unwrap()
        );
        assert_eq!(vb["spec"]["snapshot"].as_str().unwrap().len(), 64);
        assert_eq!(
            vb["status"]["volume"]["csiDriver"],
            "hostpath.csi.kubesim.io"
        );
        assert_eq!(vb["status"]["volume"]["storageClass"], "fast");
        assert!(vb["status"]["volume"]["snapshotHandle"].is_string(), "{vb}");
        assert!(
            vb["status"]["startTime"].is_string() && vb["status"]["completionTime"].is_string()
        );
        let c = backed_up(vb).expect("a BackedUp condition");
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("True"), &json!("Completed"))
        );
        assert!(
            c["message"].as_str().unwrap().starts_with(&format!(
                "snapshot {}",
                &vb["spec"]["snapshot"].as_str().unwrap()[..8]
            )),
            "{c}"
        );
    }
    assert_eq!(vb_blk["spec"]["path"], "/blk.img");
    assert_eq!(vb_blk["status"]["volume"]["volumeMode"], "Block");
    assert_eq!(vb_blk["status"]["volume"]["capacity"], "4Mi");
    assert_eq!(vb_blk["status"]["bytesTotal"], 4 << 20);
    assert_eq!(vb_fs["status"]["volume"]["volumeMode"], "Filesystem");
    assert!(vb_fs["spec"].get("path").is_none());

    // The repository, read by restic.
    env.restic(&["check", "--read-data"]);
    let snaps: Value =
        serde_json::from_slice(&env.restic(&["snapshots", "--json"]).stdout).unwrap();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let blk_snap = snaps
        .iter()
        .find(|s| s["id"] == vb_blk["spec"]["snapshot"])
        .expect("block snapshot in the repository");
    let tags: Vec<&str> = blk_snap["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.contains(&"namespace=t") && tags.contains(&"pvc=blk"),
        "{tags:?}"
    );
    let dumped = env
        .restic(&[
            "dump",
            vb_blk["spec"]["snapshot"].as_str().unwrap(),
            "/blk.img",
        ])
        .stdout;
    assert!(
        dumped == block,
        "restic dump differs from the block volume ({} bytes)",
        dumped.len()
    );

    let target = env.dir.path().join("restored");
    env.restic(&[
        "restore",
        vb_fs["spec"]["snapshot"].as_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ]);
    // The snapshot's root tree holds the volume's contents (like `restic backup .` inside it).
    let root = target.as_path();
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(root.join("sub/b.bin")).unwrap(),
        pattern(300_000, 9)
    );
    assert_eq!(
        std::fs::read_link(root.join("sub/link")).unwrap(),
        Path::new("../a.txt")
    );

    // Nothing temporary is left; the Secret holds the settings, but no event repeats them.
    env.assert_nothing_temporary_left().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    let secret = secrets
        .get(&repository_secret(&env))
        .await
        .expect("repository Secret");
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["volbackup.io/repository"],
        "true"
    );
    let data = secret.data.unwrap_or_default();
    let keys: Vec<&String> = data.keys().collect();
    assert!(
        data.contains_key("VOLBACKUP_REPOSITORY") && data.contains_key("VOLBACKUP_PASSWORD"),
        "{keys:?}"
    );
    // The key the repository was opened with, which the movers read by name instead of
    // listing the key files first.
    let key_files: Vec<String> = std::fs::read_dir(env.repo.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        data.get("VOLBACKUP_KEY_HINT").map(|v| v.0.as_slice()),
        Some(key_files[0].as_bytes()),
        "key files {key_files:?}, Secret keys {keys:?}"
    );
    assert_eq!(key_files.len(), 1, "{key_files:?}");
    // With a copy of it, from which the movers derive the key while they read the file.
    {
        use base64::Engine as _;
        let copy = data
            .get("VOLBACKUP_KEY_COPY")
            .expect("a copy of the key file");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&copy.0)
                .expect("base64"),
            std::fs::read(env.repo.join("keys").join(&key_files[0])).unwrap(),
            "the copy differs from the key file"
        );
    }
    let events = env.list(&ar("", "v1", "Event", "events"), true, None).await;
    assert!(
        !serde_json::to_string(&events).unwrap().contains(PASSWORD),
        "an event holds the password"
    );

    // list and describe show the records.
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    let listed = env
        .plugin(&["list", "-n", NS, "--kubeconfig", &kc], &[])
        .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("blk")
            && listed.stdout.contains("files")
            && listed.stdout.contains("Completed"),
        "{}",
        listed.stdout
    );
    let name = vb_blk["metadata"]["name"].as_str().unwrap();
    let described = env
        .plugin(&["describe", name, "-n", NS, "--kubeconfig", &kc], &[])
        .await;
    assert_eq!(described.code, 0, "{}", described.stderr);
    assert!(
        described.stdout.contains("hostpath.csi.kubesim.io") && described.stdout.contains("Block"),
        "{}",
        described.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_in_one_line_and_leaves_nothing_behind() {
    let env = Env::start().await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;

    // PVC not found.
    let out = env.create_backup(&["nope"]).await;
    assert_one_line_failure(&out, "PVC \"nope\" not found in namespace \"t\"");

    // PVC not bound: a class nobody provisions.
    env.create(
        &pvcs_ar(),
        json!({"metadata": {"name": "pending"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "nobody", "resources": {"requests": {"storage": "1Mi"}}}}),
    )
    .await;
    let out = env.create_backup(&["pending"]).await;
    assert_one_line_failure(&out, "is Pending, not Bound");

    // Wrong password: refused before anything is created.
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "-n",
                NS,
                "--repo",
                env.repo.to_str().unwrap(),
            ],
            &[("VOLBACKUP_PASSWORD", "not-the-password")],
        )
        .await;
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("password"),
        "{}",
        out.stderr
    );

    // The image cannot be pulled: noticed, not waited out until the --timeout (60 s), and the
    // snapshot, temporary PVC and pod that already existed are removed.
    let started = Instant::now();
    let out = env
        .create_backup(&["vol", "--image", "registry.invalid/volbackup:none"])
        .await;
    assert_one_line_failure(&out, "cannot pull the mover image");
    // Its record says so; the runs below fail before anything is created, and add none.
    assert_failed_backup(&env, "vol", "MoverFailed", "cannot pull the mover image").await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    env.assert_nothing_temporary_left().await;

    // No default snapshot class for the driver.
    env.api(&snapclass_ar(), false)
        .patch(
            "snap",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"snapshot.storage.kubernetes.io/is-default-class": "false"}}})),
        )
        .await
        .expect("patch class");
    let out = env.create_backup(&["vol"]).await;
    assert_one_line_failure(
        &out,
        "no default VolumeSnapshotClass for CSI driver hostpath.csi.kubesim.io",
    );
    // ... and a named class that does not exist.
    let out = env
        .create_backup(&["vol", "--snapshot-class", "gone"])
        .await;
    assert_one_line_failure(&out, "VolumeSnapshotClass \"gone\" not found");

    // An existing Secret named with --repo-secret must exist.
    let out = env
        .create_backup(&[
            "vol",
            "--snapshot-class",
            "snap",
            "--repo-secret",
            "missing",
        ])
        .await;
    assert_one_line_failure(&out, "Secret \"missing\" not found in namespace \"t\"");

    // A repository that is not there: refused before anything is created.
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "-n",
                NS,
                "--repo",
                "/nonexistent/volbackup-repo",
            ],
            &[],
        )
        .await;
    assert_ne!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("repository"), "{}", out.stderr);

    // No VolumeSnapshot API at all.
    env.api(
        &ar(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
        false,
    )
    .delete(
        "volumesnapshotclasses.snapshot.storage.k8s.io",
        &Default::default(),
    )
    .await
    .expect("delete the VolumeSnapshotClass CRD");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = env.create_backup(&["vol"]).await;
    assert_one_line_failure(
        &out,
        "the VolumeSnapshot CRDs (snapshot.storage.k8s.io/v1) are not installed",
    );

    env.assert_nothing_temporary_left().await;
    assert_eq!(
        env.list(&backups_ar(), true, None).await.len(),
        1,
        "a VolumeBackup was recorded for a run refused before it began"
    );
    assert!(
        env.list(&snapshots_ar(), true, None).await.is_empty(),
        "a VolumeSnapshot was left"
    );
}

/// The one VolumeBackup of a PVC, which must be Failed, name no snapshot, and carry the
/// condition `BackedUp=False` with this reason and a message containing `says`.
async fn assert_failed_backup(env: &Env, pvc: &str, reason: &str, says: &str) -> Value {
    let mut b = backups_of(env, pvc).await;
    assert_eq!(b.len(), 1, "{b:?}");
    let b = b.remove(0);
    assert_eq!(b["status"]["phase"], "Failed", "{b}");
    assert!(b["spec"].get("snapshot").is_none(), "{b}");
    let c = backed_up(&b).expect("a BackedUp condition");
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], reason, "{c}");
    assert!(
        c["message"].as_str().unwrap_or_default().contains(says),
        "{c}"
    );
    b
}

/// The `BackedUp` condition of a VolumeBackup.
fn backed_up(b: &Value) -> Option<Value> {
    b["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "BackedUp")
        .cloned()
}

/// The VolumeBackups of one PVC, oldest first.
async fn backups_of(env: &Env, pvc: &str) -> Vec<Value> {
    let mut v: Vec<Value> = env
        .list(
            &backups_ar(),
            true,
            Some(&format!("volbackup.io/pvc={pvc}")),
        )
        .await;
    v.sort_by_key(|b| b["status"]["startTime"].as_str().unwrap_or("").to_string());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvcs_selected_by_label_are_backed_up_and_a_second_backup_stores_only_the_change() {
    let env = Env::start().await;
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (i, name) in ["b1", "b2"].iter().enumerate() {
        env.pvc(name, "Block", "2Mi", json!({"tier": "batch"}))
            .await;
        std::fs::write(
            data.join(format!("{name}.bin")),
            pattern(2 << 20, 100 + i as u64),
        )
        .unwrap();
        env.run_pod(
            &format!("fill-{name}"),
            name,
            "Block",
            &format!(
                "dd if={}/{name}.bin of=/dev/xvda bs=1M 2>/dev/null && sync",
                data.display()
            ),
        )
        .await;
    }
    env.pvc("f1", "Filesystem", "4Mi", json!({"tier": "batch"}))
        .await;
    env.run_pod(
        "fill-f1",
        "f1",
        "Filesystem",
        "echo hello > /data/x && sync",
    )
    .await;
    env.pvc("other", "Block", "2Mi", json!({"tier": "web"}))
        .await;

    let out = env
        .create_backup(&[
            "-l",
            "tier=batch",
            "--parallel",
            "3",
            "--tag",
            "run=nightly",
        ])
        .await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    for pvc in ["b1", "b2", "f1"] {
        let b = backups_of(&env, pvc).await;
        assert_eq!(b.len(), 1, "{pvc}: {b:?}");
        assert_eq!(b[0]["status"]["phase"], "Completed");
    }
    assert!(
        backups_of(&env, "other").await.is_empty(),
        "a PVC outside the selector was backed up"
    );
    let snaps: Value = serde_json::from_slice(
        &env.restic(&["snapshots", "--json", "--tag", "run=nightly"])
            .stdout,
    )
    .unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 3, "{snaps}");

    // A 32 MiB volume, backed up, 1% of it changed, backed up again.
    const SIZE: usize = 32 << 20;
    let mut image = pattern(SIZE, 5);
    std::fs::write(data.join("big.bin"), &image).unwrap();
    env.pvc("big", "Block", "32Mi", json!({})).await;
    env.run_pod(
        "fill-big",
        "big",
        "Block",
        &format!(
            "dd if={}/big.bin of=/dev/xvda bs=1M 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;
    let out = env.create_backup(&["big"]).await;
    assert_eq!(out.code, 0, "first backup failed: {}", out.stderr);
    let change = SIZE / 100;
    let offset = 10 << 20;
    image[offset..offset + change].copy_from_slice(&pattern(change, 77));
    std::fs::write(data.join("change.bin"), &image[offset..offset + change]).unwrap();
    env.run_pod(
        "change-big",
        "big",
        "Block",
        &format!(
            "dd if={}/change.bin of=/dev/xvda bs=4096 seek={} conv=notrunc 2>/dev/null && sync",
            data.display(),
            offset / 4096
        ),
    )
    .await;
    // The backup name carries the second; two backups in the same second would collide.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = env.create_backup(&["big"]).await;
    assert_eq!(out.code, 0, "second backup failed: {}", out.stderr);
    let b = backups_of(&env, "big").await;
    assert_eq!(b.len(), 2, "{b:?}");
    let first_new = b[0]["status"]["bytesNew"].as_u64().unwrap();
    let second_new = b[1]["status"]["bytesNew"].as_u64().unwrap();
    eprintln!(
        "big volume: first backup {first_new} new bytes, after a {change}-byte change {second_new}"
    );
    assert_eq!(first_new, SIZE as u64);
    assert!(
        second_new > 0 && second_new < (SIZE / 4) as u64,
        "the second backup stored {second_new} new bytes for a {change}-byte change"
    );
    let dumped = env
        .restic(&[
            "dump",
            b[1]["spec"]["snapshot"].as_str().unwrap(),
            "/big.img",
        ])
        .stdout;
    assert!(
        dumped == image,
        "the second snapshot does not hold the changed volume"
    );
    env.restic(&["check", "--read-data"]);
    env.assert_nothing_temporary_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backup_removes_its_temporary_objects_and_the_repository_stays_sound() {
    let env = Env::start().await;
    // Large enough that the upload is still running when the first pack has landed.
    env.pvc("v", "Block", "256Mi", json!({})).await;
    env.run_pod(
        "fill",
        "v",
        "Block",
        "dd if=/dev/urandom of=/dev/xvda bs=1M count=256 2>/dev/null && sync",
    )
    .await;

    let child = tokio::process::Command::new(&env.bin)
        .args([
            "create",
            "v",
            "-n",
            NS,
            "--repo",
            env.repo.to_str().unwrap(),
        ])
        .env("KUBECONFIG", env.cluster.kubeconfig_path())
        .env("VOLBACKUP_PASSWORD", PASSWORD)
        .env("VOLBACKUP_IMAGE", &env.image)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl-volbackup starts");
    let pid = child.id().expect("pid");
    // Interrupt once the mover has uploaded its first pack (it is then mid-upload) and the
    // record says so (create notices the running mover a moment after it starts writing).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if env.repo.join("data").is_dir() && pack_bytes(&env.repo) > 0 {
            let copying = backups_of(&env, "v")
                .await
                .first()
                .and_then(backed_up)
                .is_some_and(|c| c["reason"] == "Copying");
            if copying {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the mover never uploaded a pack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("exits after SIGINT")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the interrupted run reported success"
    );
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");
    env.assert_nothing_temporary_left().await;
    assert_failed_backup(
        &env,
        "v",
        "Interrupted",
        "create was interrupted by Ctrl-C while copying the data to the repository",
    )
    .await;

    // `cleanup` finds nothing more, and the repository passes check.
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    let out = env
        .plugin(&["cleanup", "-n", NS, "--kubeconfig", &kc], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // The killed mover's lock stays in the repository (the mover does not remove it on
    // SIGTERM). `restic unlock` removes only stale locks (same host, process gone), so this
    // also shows that the mover process really ended; then the repository passes check.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        env.restic(&["unlock"]);
        let out = std::process::Command::new("/usr/bin/restic")
            .arg("--repo")
            .arg(&env.repo)
            .args(["--no-cache", "check", "--read-data"])
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("restic runs");
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("already locked") && Instant::now() < deadline,
            "restic check failed: {err}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_what_a_killed_run_left() {
    let env = Env::start().await;
    env.pvc("v", "Block", "2Mi", json!({})).await;
    // What a run killed with SIGKILL right after creating its snapshot and temporary PVC leaves.
    let labels = json!({"volbackup.io/backup": "deadbeef", "volbackup.io/pvc": "v"});
    env.create(&snapshots_ar(), json!({"metadata": {"name": "v-deadbeef", "labels": labels}, "spec": {"source": {"persistentVolumeClaimName": "v"}}})).await;
    env.wait_for(&snapshots_ar(), "v-deadbeef", "to be ready", |s| {
        s.pointer("/status/readyToUse") == Some(&json!(true))
    })
    .await;
    env.create(
        &pvcs_ar(),
        json!({"metadata": {"name": "v-deadbeef", "labels": labels}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "2Mi"}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "v-deadbeef"}}}),
    )
    .await;
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    let out = env
        .plugin(&["cleanup", "-n", NS, "--kubeconfig", &kc], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    env.assert_nothing_temporary_left().await;
    // The user's PVC is untouched.
    env.wait_for(&pvcs_ar(), "v", "to stay bound", |p| {
        p.pointer("/status/phase") == Some(&json!("Bound"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_user_without_rights_is_told_the_missing_verb_and_resource() {
    use base64::Engine;
    let env = Env::start().await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    let (cert, key) = env
        .cluster
        .issue_client_cert("alice", &["devs"])
        .expect("client cert");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kc = env.dir.path().join("alice.kubeconfig");
    env.cluster
        .write_kubeconfig(
            &kc,
            json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
            NS,
        )
        .expect("kubeconfig");
    let kcs = kc.to_str().unwrap();
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "--kubeconfig",
                kcs,
                "--repo",
                env.repo.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_one_line_failure(
        &out,
        "forbidden: you may not list volumebackups.volbackup.io in namespace \"t\"",
    );

    // With read rights on the PVC side but none on snapshots, the denial names the next step.
    let rbac = |kind: &str, plural: &str| ar("rbac.authorization.k8s.io", "v1", kind, plural);
    env.api(&rbac("Role", "roles"), true)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "namespace": NS},
                "rules": [{"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list"]},
                          {"apiGroups": ["volbackup.io"], "resources": ["volumebackups"], "verbs": ["get", "list"]}]}))
            .unwrap(),
        )
        .await
        .expect("role");
    env.api(&rbac("RoleBinding", "rolebindings"), true)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}))
            .unwrap(),
        )
        .await
        .expect("binding");
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "--kubeconfig",
                kcs,
                "--repo",
                env.repo.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "forbidden: you may not get persistentvolumes");
    env.assert_nothing_temporary_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_pvc_is_backed_up_to_s3_with_credentials_from_the_secret() {
    let env = Env::start().await;
    let garage = tokio::task::spawn_blocking(support_s3::Garage::shared)
        .await
        .expect("garage");
    let bucket = garage.new_bucket("e2e-create");
    let location = format!("s3:{}/{bucket}/repo", garage.endpoint());
    let aws: Vec<(&str, String)> = garage.restic_env();
    let aws_ref: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = env
        .plugin(&["repo", "init", "--repo", &location], &aws_ref)
        .await;
    assert_eq!(out.code, 0, "repo init on S3: {}", out.stderr);

    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let block = pattern(3 << 20, 11);
    std::fs::write(data.join("s3.bin"), &block).unwrap();
    env.pvc("s3vol", "Block", "3Mi", json!({})).await;
    env.run_pod(
        "fill",
        "s3vol",
        "Block",
        &format!(
            "dd if={}/s3.bin of=/dev/xvda bs=1M 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;

    let out = env
        .plugin(
            &[
                "create",
                "s3vol",
                "-n",
                NS,
                "--repo",
                &location,
                "--timeout",
                "60s",
            ],
            &aws_ref,
        )
        .await;
    assert_eq!(out.code, 0, "create to S3 failed: {}", out.stderr);
    assert!(
        !out.stdout.contains(garage.secret_key()) && !out.stderr.contains(garage.secret_key()),
        "the S3 secret key was printed"
    );
    let b = backups_of(&env, "s3vol").await;
    assert_eq!(b.len(), 1);
    let snapshot = b[0]["spec"]["snapshot"].as_str().unwrap().to_string();

    let restic = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/restic")
            .args(["--repo", &location, "--no-cache"])
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .envs(aws.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("restic runs");
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    restic(&["check", "--read-data"]);
    assert!(
        restic(&["dump", &snapshot, "/s3vol.img"]) == block,
        "restic dump from S3 differs from the volume"
    );
    let events = env.list(&ar("", "v1", "Event", "events"), true, None).await;
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains(garage.secret_key()),
        "an event holds the S3 secret key"
    );
    env.assert_nothing_temporary_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_credential_user_lists_and_deletes_backups_with_confirmation_rules() {
    let env = Env::start().await;
    env.pvc("vol", "Filesystem", "2Mi", json!({})).await;
    env.run_pod("fill", "vol", "Filesystem", "echo x > /data/x && sync")
        .await;
    let out = env.create_backup(&["vol"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let name = backups_of(&env, "vol").await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    // An EKS/GKE-style exec credential plugin hands out a token the cluster knows.
    let token = "exec-token-5c1d";
    env.cluster
        .add_user_token(token, "bob", &["system:masters"]);
    let cred = json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {"token": token}});
    let kc = env.dir.path().join("exec.kubeconfig");
    env.cluster
        .write_kubeconfig(
            &kc,
            json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "sh", "args": ["-c", format!("echo '{cred}'")], "interactiveMode": "Never"}}),
            NS,
        )
        .expect("kubeconfig");
    let kcs = kc.to_str().unwrap();
    let out = env
        .plugin(&["list", "--kubeconfig", kcs, "-o", "json"], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: Value = serde_json::from_str(&out.stdout).expect("list -o json is JSON");
    assert_eq!(listed[0]["metadata"]["name"], name.as_str());
    let out = env
        .plugin(&["list", "--kubeconfig", kcs, "-o", "wide"], &[])
        .await;
    assert!(
        out.stdout.contains("Filesystem") && out.stdout.contains(&repository_secret(&env)),
        "{}",
        out.stdout
    );
    let out = env
        .plugin(&["list", "-A", "--kubeconfig", kcs, "-o", "yaml"], &[])
        .await;
    assert!(
        out.stdout.contains(&format!("name: {name}")),
        "{}",
        out.stdout
    );

    // Without a terminal, delete needs --yes.
    let out = env
        .plugin(&["delete", &name, "--kubeconfig", kcs], &[])
        .await;
    assert_one_line_failure(&out, "pass --yes");
    assert_eq!(
        backups_of(&env, "vol").await.len(),
        1,
        "deleted without confirmation"
    );
    let out = env
        .plugin(&["delete", &name, "--yes", "--kubeconfig", kcs], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(backups_of(&env, "vol").await.is_empty(), "not deleted");
    let out = env
        .plugin(&["describe", &name, "--kubeconfig", kcs], &[])
        .await;
    assert_one_line_failure(&out, "not found");
}

/// Fails when any event in the test namespace holds one of `secrets`.
async fn assert_no_secret_in_events(env: &Env, secrets: &[&str]) {
    let events = env.list(&ar("", "v1", "Event", "events"), true, None).await;
    let text = serde_json::to_string(&events).unwrap();
    for s in secrets {
        assert!(!text.contains(s), "an event holds a secret value");
    }
}

/// Polls until no VolumeSnapshotContent is left in the cluster.
async fn assert_no_snapshot_contents_left(env: &Env) {
    let contents = ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = env.list(&contents, false, None).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "VolumeSnapshotContents left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_never_becomes_ready_fails_at_the_timeout_naming_it_and_the_cause() {
    let env = Env::start().await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    // kubesim's fault hook: the simulated CSI driver rejects every CreateSnapshot of this class,
    // and the snapshotter reports the error in the snapshot's status, retrying for ever.
    env.create(
        &snapclass_ar(),
        json!({"metadata": {"name": "broken"}, "driver": "hostpath.csi.kubesim.io", "deletionPolicy": "Delete",
               "parameters": {"kubesim.io/fail-snapshot": "rpc error: code = ResourceExhausted desc = snapshot quota of pool p1 exceeded"}}),
    )
    .await;
    let started = Instant::now();
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "-n",
                NS,
                "--repo",
                env.repo.to_str().unwrap(),
                "--snapshot-class",
                "broken",
                "--timeout",
                "5s",
            ],
            &[],
        )
        .await;
    let took = started.elapsed();
    assert_one_line_failure(&out, "was not ready within 5s");
    assert!(
        out.stderr.contains("VolumeSnapshot t/vol-")
            && out.stderr.contains("snapshot quota of pool p1 exceeded")
            && out.stderr.contains("--snapshot-class"),
        "{}",
        out.stderr
    );
    // Given up at the timeout, not long after it (the bound leaves room for a loaded machine).
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(60),
        "took {took:?}"
    );
    env.assert_nothing_temporary_left().await;
    assert!(
        env.list(&snapshots_ar(), true, None).await.is_empty(),
        "a VolumeSnapshot was left"
    );
    assert_no_snapshot_contents_left(&env).await;
    // The record says where and why the backup failed.
    assert_failed_backup(
        &env,
        "vol",
        "SnapshotFailed",
        "snapshot quota of pool p1 exceeded",
    )
    .await;
    assert_no_secret_in_events(&env, &[PASSWORD]).await;
    // The repository holds no snapshot from the failed run.
    let snaps: Value =
        serde_json::from_slice(&env.restic(&["snapshots", "--json"]).stdout).unwrap();
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{snaps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_whose_storage_class_is_not_a_csi_driver_is_refused_with_a_hint() {
    let env = Env::start().await;
    env.create(
        &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        json!({"metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"}),
    )
    .await;
    let host_dir = env.dir.path().join("static-pv");
    std::fs::create_dir_all(&host_dir).unwrap();
    env.create(
        &ar("", "v1", "PersistentVolume", "persistentvolumes"),
        json!({"metadata": {"name": "static-pv"}, "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
               "storageClassName": "local", "volumeMode": "Filesystem", "persistentVolumeReclaimPolicy": "Retain",
               "hostPath": {"path": host_dir.to_str().unwrap()}}}),
    )
    .await;
    env.create(
        &pvcs_ar(),
        json!({"metadata": {"name": "legacy"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local", "resources": {"requests": {"storage": "1Mi"}}}}),
    )
    .await;
    env.wait_for(&pvcs_ar(), "legacy", "to bind to the static PV", |p| {
        p.pointer("/status/phase") == Some(&json!("Bound"))
    })
    .await;
    let out = env.create_backup(&["legacy"]).await;
    assert_one_line_failure(&out, "PVC t/legacy is not a CSI volume");
    assert!(
        out.stderr.contains("PV static-pv")
            && out.stderr.contains("storage class local")
            && out.stderr.contains("CSI driver with a VolumeSnapshotClass"),
        "{}",
        out.stderr
    );
    env.assert_nothing_temporary_left().await;
    assert!(
        env.list(&snapshots_ar(), true, None).await.is_empty(),
        "a VolumeSnapshot was created for a non-CSI volume"
    );
    assert!(env.list(&backups_ar(), true, None).await.is_empty());
    assert_no_secret_in_events(&env, &[PASSWORD]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_fails_fast_in_one_line_without_leaking_credentials() {
    let env = Env::start().await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    const AWS_SECRET: &str = "e2e-aws-secret-d41c9";
    let aws = [
        ("AWS_ACCESS_KEY_ID", "GKe2eDUMMYKEY"),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ("AWS_REGION", "garage"),
    ];
    let unreachable = "s3:http://127.0.0.1:1/bucket/repo";

    // From the user's settings: refused before anything exists in the cluster.
    let started = Instant::now();
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "-n",
                NS,
                "--repo",
                unreachable,
                "--timeout",
                "60s",
            ],
            &aws,
        )
        .await;
    assert_one_line_failure(&out, "cannot reach S3 endpoint http://127.0.0.1:1");
    // Refused at once, not after the --timeout (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !out.stderr.contains(AWS_SECRET) && !out.stdout.contains(AWS_SECRET),
        "the AWS secret key was printed"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), NS);
    assert!(
        secrets
            .list(&kube::api::ListParams::default().labels("volbackup.io/repository"))
            .await
            .expect("list secrets")
            .items
            .is_empty(),
        "a repository Secret was written for an unreachable repository"
    );

    // From an existing VolSync-style Secret: the repository is checked only by the mover, in the
    // cluster; its failure still ends the run in one line, fast, with nothing left.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "restic-config", "namespace": NS},
        "stringData": {"RESTIC_REPOSITORY": unreachable, "RESTIC_PASSWORD": PASSWORD,
                       "AWS_ACCESS_KEY_ID": "GKe2eDUMMYKEY", "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_REGION": "garage"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    // Not marked as a repository Secret: the populator would never restore from it, so no
    // backup through it is started.
    let out = env
        .plugin(
            &["create", "vol", "-n", NS, "--repo-secret", "restic-config"],
            &[],
        )
        .await;
    assert_one_line_failure(
        &out,
        "Secret t/restic-config is not marked as a repository Secret",
    );
    assert!(
        out.stderr
            .contains("kubectl label secret restic-config -n t volbackup.io/repository=true"),
        "{}",
        out.stderr
    );
    assert!(backups_of(&env, "vol").await.is_empty());
    env.assert_nothing_temporary_left().await;
    secrets
        .patch(
            "restic-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"volbackup.io/repository": "true"}}})),
        )
        .await
        .expect("label the Secret");
    let started = Instant::now();
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "-n",
                NS,
                "--repo-secret",
                "restic-config",
                "--timeout",
                "60s",
            ],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "cannot reach S3 endpoint http://127.0.0.1:1");
    assert!(out.stderr.contains("mover pod t/vol-"), "{}", out.stderr);
    // Ended by the mover's failure, not by the --timeout (60 s).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !out.stderr.contains(AWS_SECRET) && !out.stdout.contains(AWS_SECRET),
        "the AWS secret key was printed"
    );
    env.assert_nothing_temporary_left().await;
    let failed = assert_failed_backup(
        &env,
        "vol",
        "CopyFailed",
        "cannot reach S3 endpoint http://127.0.0.1:1",
    )
    .await;
    assert!(
        !failed.to_string().contains(AWS_SECRET),
        "the AWS secret key is in the record"
    );
    assert!(env.list(&snapshots_ar(), true, None).await.is_empty());
    assert_no_secret_in_events(&env, &[PASSWORD, AWS_SECRET]).await;
}

/// Total bytes of the pack files in a local repository (a file renamed or removed while it is
/// read, as during an upload, is passed over).
fn pack_bytes(repo: &Path) -> u64 {
    let mut total = 0;
    for sub in std::fs::read_dir(repo.join("data")).unwrap().flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            total += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

fn restic_snapshot_ids(env: &Env) -> Vec<String> {
    let snaps: Value =
        serde_json::from_slice(&env.restic(&["snapshots", "--json"]).stdout).unwrap();
    snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `delete NAMES --prune --yes` in the test namespace against repository `repo`.
async fn delete_pruning(env: &Env, kc: &str, repo: &str, names: &[&str]) -> Outcome {
    let mut args = vec!["delete"];
    args.extend_from_slice(names);
    args.extend_from_slice(&[
        "--prune",
        "--yes",
        "-n",
        NS,
        "--kubeconfig",
        kc,
        "--repo",
        repo,
    ]);
    env.plugin(&args, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_repo_shows_orphaned_snapshots_and_delete_prune_removes_the_data() {
    let env = Env::start().await;
    let repo = env.repo.to_str().unwrap().to_string();
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("b.bin"), pattern(2 << 20, 21)).unwrap();
    env.pvc("a", "Filesystem", "2Mi", json!({})).await;
    env.run_pod("fill-a", "a", "Filesystem", "echo a > /data/a && sync")
        .await;
    env.pvc("b", "Block", "2Mi", json!({})).await;
    env.run_pod(
        "fill-b",
        "b",
        "Block",
        &format!(
            "dd if={}/b.bin of=/dev/xvda bs=1M 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;
    let out = env.create_backup(&["a", "b"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let vb_a = backups_of(&env, "a").await.remove(0);
    let vb_b = backups_of(&env, "b").await.remove(0);
    let snap_a = vb_a["spec"]["snapshot"].as_str().unwrap().to_string();
    let snap_b = vb_b["spec"]["snapshot"].as_str().unwrap().to_string();
    let name_a = vb_a["metadata"]["name"].as_str().unwrap().to_string();
    let name_b = vb_b["metadata"]["name"].as_str().unwrap().to_string();

    // A backup made in another cluster, of namespace prod, straight into the repository.
    std::fs::write(data.join("db.img"), pattern(100_000, 4)).unwrap();
    let desc = json!({"namespace": "prod", "pvc": "db", "volumeMode": "Block", "capacity": "1Gi", "csiDriver": "ebs.csi.aws.com"});
    let out = env
        .plugin(
            &[
                "mover",
                "backup",
                "--repo",
                &repo,
                "--source",
                data.join("db.img").to_str().unwrap(),
                "--tag",
                "namespace=prod",
                "--tag",
                "pvc=db",
                "--description",
                &desc.to_string(),
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The record of `a` goes; its snapshot stays in the repository.
    env.api(&backups_ar(), true)
        .delete(&name_a, &Default::default())
        .await
        .expect("delete the VolumeBackup of a");

    let out = env
        .plugin(
            &["list", "-n", NS, "--kubeconfig", &kc, "--repo", &repo],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (records, repo_only) = out
        .stdout
        .split_once("Repository only")
        .unwrap_or_else(|| panic!("no repository section: {}", out.stdout));
    assert!(records.contains(&name_b), "{}", out.stdout);
    assert!(
        repo_only.contains(&snap_a[..8])
            && !repo_only.contains(&snap_b[..8])
            && repo_only.contains("Filesystem")
            && repo_only.contains("2Mi")
            && !repo_only.contains("prod"),
        "{}",
        out.stdout
    );
    // Without --repo, the repository is not read.
    let out = env
        .plugin(&["list", "-n", NS, "--kubeconfig", &kc], &[])
        .await;
    assert!(!out.stdout.contains("Repository only"), "{}", out.stdout);

    let out = env
        .plugin(
            &[
                "list",
                "-n",
                NS,
                "--kubeconfig",
                &kc,
                "--repo",
                &repo,
                "-o",
                "json",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(
        listed["volumeBackups"][0]["metadata"]["name"],
        name_b.as_str()
    );
    let only = listed["repositoryOnly"].as_array().unwrap();
    assert_eq!(only.len(), 1, "{listed}");
    assert_eq!(only[0]["snapshot"], snap_a.as_str());
    assert_eq!(only[0]["namespace"], "t");
    assert_eq!(only[0]["pvc"], "a");
    assert_eq!(only[0]["volume"]["volumeMode"], "Filesystem");
    assert_eq!(only[0]["volume"]["capacity"], "2Mi");
    let out = env
        .plugin(
            &[
                "list",
                "-A",
                "--kubeconfig",
                &kc,
                "--repo",
                &repo,
                "-o",
                "yaml",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let listed: Value = serde_yaml::from_str(&out.stdout).expect("YAML");
    let only = listed["repositoryOnly"].as_array().unwrap();
    assert_eq!(only.len(), 2, "{listed}");
    let prod = only
        .iter()
        .find(|o| o["namespace"] == "prod")
        .expect("the other cluster's backup");
    assert_eq!(prod["pvc"], "db");
    assert_eq!(prod["volume"]["csiDriver"], "ebs.csi.aws.com");

    // delete --prune: without a terminal and without --yes, refused, nothing touched.
    let out = env
        .plugin(
            &[
                "delete",
                &name_b,
                "--prune",
                "-n",
                NS,
                "--kubeconfig",
                &kc,
                "--repo",
                &repo,
            ],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "pass --yes");
    assert!(out.stderr.contains("repository data"), "{}", out.stderr);
    // A repository other than the one the Secret names: refused.
    let other = env.dir.path().join("other-repo");
    let out = env
        .plugin(&["repo", "init", "--repo", other.to_str().unwrap()], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = delete_pruning(&env, &kc, other.to_str().unwrap(), &[&name_b]).await;
    assert_one_line_failure(&out, "pass that repository with --repo");
    // A name that does not exist: nothing is deleted, not even the names that do.
    let out = delete_pruning(&env, &kc, &repo, &[&name_b, "nope"]).await;
    assert_one_line_failure(&out, "VolumeBackup \"nope\" not found");
    // A record whose snapshot is not in the repository: refused.
    env.create(
        &backups_ar(),
        json!({"metadata": {"name": "ghost", "namespace": NS}, "spec": {"repository": {"secretRef": {"name": "volbackup-repository"}}, "snapshot": "ab".repeat(32)}}),
    )
    .await;
    let out = delete_pruning(&env, &kc, &repo, &["ghost"]).await;
    assert_one_line_failure(
        &out,
        "the snapshot abababab of VolumeBackup t/ghost is not in the repository",
    );
    assert_eq!(
        backups_of(&env, "b").await.len(),
        1,
        "deleted after a refusal"
    );
    assert_eq!(restic_snapshot_ids(&env).len(), 3);
    // A copy of the record in another namespace (what a cross-namespace restore makes) names
    // the same snapshot: refused, nothing touched; once the copy is gone, allowed.
    env.create(
        &ar("", "v1", "Namespace", "namespaces"),
        json!({"metadata": {"name": "elsewhere"}}),
    )
    .await;
    let elsewhere = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
        env.client.clone(),
        "elsewhere",
        &backups_ar(),
    );
    let copy: kube::api::DynamicObject = serde_json::from_value(json!({"apiVersion": "volbackup.io/v1alpha1", "kind": "VolumeBackup",
        "metadata": {"name": "copied"}, "spec": {"repository": {"secretRef": {"name": "volbackup-repository"}}, "snapshot": snap_b}}))
    .unwrap();
    elsewhere
        .create(&Default::default(), &copy)
        .await
        .expect("the copy");
    let out = delete_pruning(&env, &kc, &repo, &[&name_b]).await;
    assert_one_line_failure(&out, "also the backup of VolumeBackup elsewhere/copied");
    assert_eq!(
        restic_snapshot_ids(&env).len(),
        3,
        "a snapshot was forgotten"
    );
    assert_eq!(
        backups_of(&env, "b").await.len(),
        1,
        "deleted after a refusal"
    );
    elsewhere
        .delete("copied", &Default::default())
        .await
        .expect("delete the copy");

    let before = pack_bytes(&env.repo);
    let out = delete_pruning(&env, &kc, &repo, &[&name_b]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("volumebackup.volbackup.io/{name_b} deleted")),
        "{}",
        out.stdout
    );
    assert!(backups_of(&env, "b").await.is_empty(), "not deleted");
    let ids = restic_snapshot_ids(&env);
    assert!(!ids.contains(&snap_b), "restic still lists {snap_b}");
    assert!(ids.contains(&snap_a) && ids.len() == 2, "{ids:?}");
    let after = pack_bytes(&env.repo);
    assert!(
        before - after >= 1 << 20,
        "the prune freed {} bytes of the 2 MiB only the deleted snapshot used",
        before - after
    );
    env.restic(&["check", "--read-data"]);
    // The other backups still restore.
    let dumped = env.restic(&["dump", &snap_a, "/a"]).stdout;
    assert_eq!(dumped, b"a\n");

    // A prune that fails (the index directory cannot be written) after the forget: the
    // VolumeBackup is kept, and the one line says what happened and what to run.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = env.create_backup(&["a"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let vb_a2 = backups_of(&env, "a").await.remove(0);
    let name_a2 = vb_a2["metadata"]["name"].as_str().unwrap().to_string();
    let snap_a2 = vb_a2["spec"]["snapshot"].as_str().unwrap().to_string();
    let guard = Immutable::set(&env.repo.join("index"));
    let out = delete_pruning(&env, &kc, &repo, &[&name_a2]).await;
    drop(guard);
    assert_one_line_failure(&out, "forgot 1 snapshot(s)");
    assert!(
        out.stderr.contains("but the prune failed")
            && out
                .stderr
                .contains(&format!("the VolumeBackups {name_a2} were kept"))
            && out.stderr.contains("kubectl-volbackup prune --repo"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("deleted"), "{}", out.stdout);
    assert_eq!(
        backups_of(&env, "a").await.len(),
        1,
        "deleted although the prune failed"
    );
    assert!(!restic_snapshot_ids(&env).contains(&snap_a2));
    // The hint works.
    let out = env.plugin(&["prune", "--repo", &repo], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = env
        .plugin(
            &["delete", &name_a2, "--yes", "-n", NS, "--kubeconfig", &kc],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(backups_of(&env, "a").await.is_empty());
    env.restic(&["check", "--read-data"]);
}

/// Makes a directory immutable (`chattr +i`: even root cannot add or remove entries) until
/// dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Immutable {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "chattr +i {} failed: the test needs `chattr` (e2fsprogs) and a temp dir on a filesystem with the immutable attribute (ext4, xfs, btrfs)",
            dir.display()
        );
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// On a terminal, `create` draws one line per PVC: a spinner with the phase, then a bar with
/// bytes, rate and ETA (through a real pseudo-terminal); off a terminal (every other test) it
/// draws nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_on_a_terminal_draws_a_progress_bar_with_bytes_rate_and_eta() {
    let env = Env::start().await;
    env.pvc("big", "Block", "96Mi", json!({})).await;
    env.run_pod(
        "fill-big",
        "big",
        "Block",
        "dd if=/dev/urandom of=/dev/xvda bs=1M count=96 2>/dev/null && sync",
    )
    .await;
    let repo = env.repo.display().to_string();
    let (ok, screen) = env
        .plugin_on_terminal(&[
            "create",
            "big",
            "-n",
            NS,
            "--repo",
            &repo,
            "--timeout",
            "60s",
        ])
        .await;
    assert!(ok, "create failed: {screen}");
    let lines: Vec<&str> = screen.lines().filter(|l| l.contains("t/big")).collect();
    eprintln!("drawn: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("waiting for the snapshot")),
        "the phase was not shown: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("copying [") && l.contains("/96.00 MiB") && l.contains("B/s ETA")),
        "no bar shows the volume's size, a rate and an ETA: {lines:#?}"
    );
    assert!(
        screen.contains("volumebackup.volbackup.io/") && screen.contains("96.0 MiB read"),
        "the result line is missing: {screen}"
    );
}

/// `--keep-snapshot` leaves the VolumeSnapshot ready and unlabelled (so `cleanup` keeps it too),
/// and the VolumeBackup names its handle; everything else temporary is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_snapshot_leaves_a_ready_snapshot_that_cleanup_does_not_touch() {
    let env = Env::start().await;
    env.pvc("kept", "Block", "2Mi", json!({})).await;
    let out = env.create_backup(&["kept", "--keep-snapshot"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    env.assert_nothing_temporary_left().await;
    let snaps = env.list(&snapshots_ar(), true, None).await;
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let snap = &snaps[0];
    assert_eq!(snap["status"]["readyToUse"], true, "{snap}");
    assert_eq!(snap["spec"]["source"]["persistentVolumeClaimName"], "kept");
    assert!(
        snap.pointer("/metadata/labels/volbackup.io~1backup")
            .is_none(),
        "{snap}"
    );
    let content = snap["status"]["boundVolumeSnapshotContentName"]
        .as_str()
        .expect("bound to a content");
    let contents = env
        .list(
            &ar(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshotContent",
                "volumesnapshotcontents",
            ),
            false,
            None,
        )
        .await;
    let handle = contents
        .iter()
        .find(|c| c["metadata"]["name"] == content)
        .and_then(|c| c["status"]["snapshotHandle"].as_str())
        .expect("the content has a handle")
        .to_string();
    let backups = backups_of(&env, "kept").await;
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["status"]["volume"]["snapshotHandle"], handle);

    let out = env.plugin(&["cleanup", "-n", NS], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.list(&snapshots_ar(), true, None).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pvc_whose_name_is_longer_than_a_label_value_is_backed_up() {
    let env = Env::start().await;
    let name = format!("data-{}", "l".repeat(90));
    env.pvc(&name, "Block", "1Mi", json!({})).await;
    let out = env.create_backup(&[&name]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    let backups = env.list(&backups_ar(), true, None).await;
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["status"]["volume"]["pvc"], json!(name));
    let label = backups[0]["metadata"]["labels"]["volbackup.io/pvc"]
        .as_str()
        .unwrap();
    assert!(
        label.len() <= 63 && label.starts_with("data-lll"),
        "{label}"
    );
    env.assert_nothing_temporary_left().await;
}

/// The pid of the mover process backing up `host` (`NAMESPACE/PVC`), found through /proc: the
/// kubelet runs it with runc on this machine.
fn mover_pid(host: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w == [&b"mover"[..], &b"backup"[..]])
            && args.contains(&host.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_bounds_the_waits_not_the_copy_and_a_stalled_copy_is_given_up() {
    let env = Env::start().await;
    for pvc in ["v", "w"] {
        env.pvc(pvc, "Block", "4Mi", json!({})).await;
    }
    env.run_pod(
        "fill",
        "v",
        "Block",
        "dd if=/dev/urandom of=/dev/xvda bs=1M count=4 2>/dev/null && sync",
    )
    .await;
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    let repo = env.repo.to_str().unwrap().to_string();
    // A prune's exclusive lock, held by this process: the mover (another host, in its pod)
    // waits for it, reporting the wait, as long as its --retry-lock allows.
    let store = volbackup_store::Repository::open(
        std::sync::Arc::new(volbackup_store::backend::local::LocalBackend::new(
            &env.repo,
        )),
        PASSWORD,
    )
    .expect("the repository opens");
    let lock = volbackup_store::lock::Lock::exclusive(&store).expect("exclusive lock");

    // 1. --timeout 15s, and the copy waits 25 s for the lock: it is not cut off.
    let started = Instant::now();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(25)).await;
        drop(lock);
    });
    let out = env
        .plugin(
            &[
                "create",
                "v",
                "-n",
                NS,
                "--repo",
                &repo,
                "--kubeconfig",
                &kc,
                "--timeout",
                "15s",
            ],
            &[],
        )
        .await;
    release.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() > Duration::from_secs(25),
        "create ended before the lock was released"
    );
    assert_eq!(backups_of(&env, "v").await.len(), 1);
    env.assert_nothing_temporary_left().await;

    // 2. A mover that stops (frozen: no progress, no output) is given up after
    //    --stall-timeout, and its temporaries are removed.
    let child = tokio::process::Command::new(&env.bin)
        .args([
            "create",
            "w",
            "-n",
            NS,
            "--repo",
            &repo,
            "--kubeconfig",
            &kc,
            "--stall-timeout",
            "4s",
        ])
        .env("VOLBACKUP_PASSWORD", PASSWORD)
        .env("VOLBACKUP_IMAGE", &env.image)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl-volbackup starts");
    // Hold the lock again so the mover is still running when it is found and stopped.
    let lock = volbackup_store::lock::Lock::exclusive(&store).expect("exclusive lock");
    let host = format!("{NS}/w");
    freeze_mover(&host).await;
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("create gives up on the stalled copy")
        .expect("output");
    drop(lock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stalled copy succeeded: {stderr}");
    assert!(stderr.contains("made no progress for 4s"), "{stderr}");
    assert!(
        stderr.contains("--stall-timeout"),
        "no hint on the flag: {stderr}"
    );
    assert_failed_backup(&env, "w", "CopyFailed", "made no progress for 4s").await;
    env.assert_nothing_temporary_left().await;
    assert!(mover_pid(&host).is_none(), "the stopped mover still runs");
}

/// Waits (up to 60 s) for the mover process backing up `host` (`NS/PVC`) and stops it with
/// SIGSTOP: it stays alive, holding its lock, and makes no progress.
async fn freeze_mover(host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        if let Some(pid) = mover_pid(host) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no mover process within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("pid"),
        rustix::process::Signal::STOP,
    )
    .expect("SIGSTOP the mover");
}

/// Starts `create PVC`, freezes its mover once it copies, waits until the record says
/// `Copying`, and kills the `create` with SIGKILL (it can clean nothing up); gives the record.
async fn kill_create_mid_copy(env: &Env, pvc: &str) -> Value {
    let mut child = tokio::process::Command::new(&env.bin)
        .args([
            "create",
            pvc,
            "-n",
            NS,
            "--repo",
            env.repo.to_str().unwrap(),
        ])
        .env("KUBECONFIG", env.cluster.kubeconfig_path())
        .env("VOLBACKUP_PASSWORD", PASSWORD)
        .env("VOLBACKUP_IMAGE", &env.image)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl-volbackup starts");
    freeze_mover(&format!("{NS}/{pvc}")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let b = backups_of(env, pvc).await;
        if let Some(b) = b.first()
            && backed_up(b).is_some_and(|c| c["reason"] == "Copying")
        {
            break b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the record never said Copying: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.start_kill().expect("SIGKILL create");
    child.wait().await.expect("create ends");
    record
}

/// The temporary objects of a run (pods, PVCs, VolumeSnapshots labelled with its id).
async fn temporaries_of(env: &Env, run: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for r in [pods_ar(), pvcs_ar(), snapshots_ar()] {
        all.extend(
            env.list(&r, true, Some(&format!("volbackup.io/backup={run}")))
                .await,
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_create_leaves_an_in_progress_record_owning_its_temporaries_for_cleanup_and_delete()
 {
    let env = Env::start().await;
    // Names no other test uses: movers of all tests run on this host and are found by NS/PVC.
    for pvc in ["killed-a", "killed-b"] {
        env.pvc(pvc, "Block", "32Mi", json!({})).await;
        env.run_pod(
            &format!("fill-{pvc}"),
            pvc,
            "Block",
            "dd if=/dev/urandom of=/dev/xvda bs=1M count=32 2>/dev/null && sync",
        )
        .await;
    }
    let kc = env.cluster.kubeconfig_path().to_str().unwrap().to_string();
    fn with(args: &[&str]) -> Vec<String> {
        args.iter()
            .chain(&["-n", NS])
            .map(|a| a.to_string())
            .collect()
    }
    let run_plugin = |mut args: Vec<String>| {
        let env = &env;
        args.extend(["--kubeconfig".to_string(), kc.clone()]);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            env.plugin(&refs, &[]).await
        }
    };

    // 1. Killed while copying: the record is InProgress, says so, and owns the temporaries.
    let vb = kill_create_mid_copy(&env, "killed-a").await;
    let name = vb["metadata"]["name"].as_str().unwrap().to_string();
    let uid = vb["metadata"]["uid"].as_str().unwrap().to_string();
    let run = vb["metadata"]["labels"]["volbackup.io/backup"]
        .as_str()
        .expect("the record carries its run's label")
        .to_string();
    assert_eq!(vb["status"]["phase"], "InProgress", "{vb}");
    assert!(vb["spec"].get("snapshot").is_none(), "{vb}");
    assert_eq!(backed_up(&vb).unwrap()["status"], "Unknown");
    assert!(
        vb["metadata"]["annotations"]["volbackup.io/heartbeat"].is_string(),
        "{vb}"
    );
    let temporaries = temporaries_of(&env, &run).await;
    let kinds: Vec<&str> = temporaries
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        ["Pod", "PersistentVolumeClaim", "VolumeSnapshot"],
        "{temporaries:?}"
    );
    // The pod belongs to the record; the claim and snapshot to the pod (deleting it takes
    // them along, so the backup operator needs no right to delete claims or snapshots).
    let pod = &temporaries[0];
    for o in &temporaries {
        let owner = &o["metadata"]["ownerReferences"][0];
        let want = if o["kind"] == "Pod" {
            (json!("VolumeBackup"), json!(name), json!(uid))
        } else {
            (
                json!("Pod"),
                pod["metadata"]["name"].clone(),
                pod["metadata"]["uid"].clone(),
            )
        };
        assert_eq!(
            (&owner["kind"], &owner["name"], &owner["uid"]),
            (&want.0, &want.1, &want.2),
            "{o}"
        );
    }
    let out = run_plugin(with(&["list"])).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(&name) && l.contains("InProgress")),
        "{}",
        out.stdout
    );

    // 2. Heard from within the last minute: cleanup leaves it alone, delete refuses it.
    let out = run_plugin(with(&["cleanup"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("left alone 1 backup(s) still being taken")
            && out.stderr.contains(&name),
        "{}",
        out.stderr
    );
    assert_eq!(temporaries_of(&env, &run).await.len(), 3);
    let out = run_plugin(with(&["delete", &name, "--yes"])).await;
    assert_one_line_failure(&out, "is still being taken");
    assert!(out.stderr.contains("cleanup --backup"), "{}", out.stderr);
    assert_eq!(
        backups_of(&env, "killed-a").await.len(),
        1,
        "deleted anyway"
    );

    // 3. Named: cleanup removes what it left and marks it Failed with the step it stopped at.
    let out = run_plugin(with(&["cleanup", "--backup", &name])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "marked 1 unfinished VolumeBackup(s) Failed: {NS}/{name}"
        )),
        "{}",
        out.stderr
    );
    env.assert_nothing_temporary_left().await;
    assert_failed_backup(
        &env,
        "killed-a",
        "Abandoned",
        "stopped while copying the data to the repository",
    )
    .await;
    assert!(
        mover_pid(&format!("{NS}/killed-a")).is_none(),
        "the mover still runs"
    );
    let out = run_plugin(with(&["list"])).await;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(&name) && l.contains("Failed") && l.contains("<none>")),
        "{}",
        out.stdout
    );
    let out = run_plugin(with(&["delete", &name, "--yes"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(backups_of(&env, "killed-a").await.is_empty());

    // 4. Silent for longer than a minute (its heartbeat set back, as if the time had passed):
    //    delete removes the record and what its run left.
    let vb = kill_create_mid_copy(&env, "killed-b").await;
    let name = vb["metadata"]["name"].as_str().unwrap().to_string();
    let run = vb["metadata"]["labels"]["volbackup.io/backup"]
        .as_str()
        .unwrap()
        .to_string();
    let long_ago = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.api(&backups_ar(), true)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"volbackup.io/heartbeat": long_ago}}}),
            ),
        )
        .await
        .expect("set the heartbeat back");
    assert_eq!(temporaries_of(&env, &run).await.len(), 3);
    let out = run_plugin(with(&["delete", &name, "--yes"])).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "removed 3 temporary object(s) VolumeBackup {name} left"
        )),
        "{}",
        out.stderr
    );
    env.assert_nothing_temporary_left().await;
    assert!(backups_of(&env, "killed-b").await.is_empty());
    assert!(
        mover_pid(&format!("{NS}/killed-b")).is_none(),
        "the mover still runs"
    );
}
