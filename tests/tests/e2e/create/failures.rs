//! Backups refused or failed in one line: bad input, a user without rights, a snapshot that
//! never becomes ready, a class that is not a CSI driver, an unreachable repository.

use super::*;

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
