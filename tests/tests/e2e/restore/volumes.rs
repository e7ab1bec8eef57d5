//! The data comes back: both volume modes, into a larger PVC, on a second cluster, from two
//! repositories, and device nodes, set-id bits and capabilities only when asked.

use super::*;

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
