//! Backups cut short: an interrupted or killed run, `cleanup` of what it left, `--timeout` and
//! a stalled copy.

use super::*;

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
