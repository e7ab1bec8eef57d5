//! Repositories: S3 with credentials from the Secret, an exec-credential user, `list --repo`
//! with orphaned snapshots and `delete --prune`.

use super::*;

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
