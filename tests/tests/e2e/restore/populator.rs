//! The populator at work: WaitForFirstConsumer and other namespaces, a killed populate pod, a
//! populator crashing after every step, two replicas, two restores at once, a terminal.

use super::*;

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
