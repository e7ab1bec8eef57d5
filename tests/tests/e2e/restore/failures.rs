//! Restores that cannot go on: a wrong password, a PVC deleted midway, no populator, and
//! sources that keep the PVC pending with the reason.

use super::*;

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
