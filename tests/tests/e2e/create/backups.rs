//! Backups that succeed: both volume modes read back by restic, label selection and the
//! second backup storing only the change, the progress bar, `--keep-snapshot`, long names.

use super::*;

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
