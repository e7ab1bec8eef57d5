//! Pod Security levels end to end: the mover and populate pods run from this build's image in
//! runc with their real security contexts, in namespaces that enforce `baseline` or
//! `restricted` (kubesim's Pod Security admission). The repository is on S3 (Garage): a
//! local-directory repository would need a hostPath volume, which `baseline` refuses.

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::common::*;
use crate::restore::{
    backup_names, events_of, filled_volumes, restored_condition, tree, volume_path,
};
use crate::support_s3;

/// An S3 repository in a fresh bucket, initialised; its location and the AWS variables.
async fn s3_repository(env: &Env, bucket: &str) -> (String, Vec<(&'static str, String)>) {
    let garage = tokio::task::spawn_blocking(support_s3::Garage::shared)
        .await
        .expect("garage");
    let bucket = garage.new_bucket(bucket);
    let location = format!("s3:{}/{bucket}/repo", garage.endpoint());
    let aws = garage.restic_env();
    let aws_ref: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = env
        .plugin(&["repo", "init", "--repo", &location], &aws_ref)
        .await;
    assert_eq!(out.code, 0, "repo init on S3: {}", out.stderr);
    (location, aws)
}

/// Labels the test namespace with a Pod Security level.
async fn enforce(env: &Env, level: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            NS,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}}),
            ),
        )
        .await
        .expect("label the namespace");
}

async fn create_s3(env: &Env, location: &str, aws: &[(&str, String)], pvcs: &[&str]) -> Outcome {
    let aws_ref: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["create", "-n", NS, "--repo", location, "--timeout", "60s"];
    args.extend_from_slice(pvcs);
    env.plugin(&args, &aws_ref).await
}

async fn restore(env: &Env, backup: &str, to: &str) {
    let out = env
        .plugin(&["restore", backup, "--to", to, "-n", NS, "--wait"], &[])
        .await;
    assert_eq!(out.code, 0, "restore {backup} failed: {}", out.stderr);
}

/// `kubectl volbackup install` with its defaults: the populator's namespace enforces baseline.
async fn install_default(env: &Env) {
    let out = env.plugin(&["install"], &[]).await;
    assert_eq!(out.code, 0, "install failed: {}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_baseline_namespace_block_and_files_of_several_owners_back_up_and_restore() {
    let env = Env::start().await;
    let (location, aws) = s3_repository(&env, "psa-baseline").await;
    install_default(&env).await;
    let image = filled_volumes(&env, 4 << 20).await;
    let original = tree(&volume_path(&env, NS, "files").await);
    enforce(&env, "baseline").await;

    let out = create_s3(&env, &location, &aws, &["blk", "files"]).await;
    assert_eq!(out.code, 0, "create under baseline failed: {}", out.stderr);
    let (blk, files) = backup_names(&env).await;
    restore(&env, &blk, "blk-back").await;
    restore(&env, &files, "files-back").await;
    let restored = std::fs::read(volume_path(&env, NS, "blk-back").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
    assert_eq!(tree(&volume_path(&env, NS, "files-back").await), original);
    env.assert_nothing_temporary_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_namespace_refuses_the_mover_at_once_and_still_receives_restores() {
    let env = Env::start().await;
    let (location, aws) = s3_repository(&env, "psa-restricted").await;
    install_default(&env).await;
    let image = filled_volumes(&env, 2 << 20).await;
    let original = tree(&volume_path(&env, NS, "files").await);
    // Backups taken while the namespace allowed them.
    let out = create_s3(&env, &location, &aws, &["blk", "files"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    let (blk, files) = backup_names(&env).await;

    enforce(&env, "restricted").await;
    for (pvc, why) in [
        ("blk", "it runs as root to read the Block volume"),
        ("files", "it runs as root to read files of every owner"),
    ] {
        let started = std::time::Instant::now();
        let out = create_s3(&env, &location, &aws, &[pvc]).await;
        assert_one_line_failure(&out, "enforces Pod Security \"restricted\"");
        assert!(out.stderr.contains(why), "{}", out.stderr);
        assert!(
            out.stderr
                .contains("label the namespace pod-security.kubernetes.io/enforce=baseline"),
            "{}",
            out.stderr
        );
        // Refused before anything is waited on, not after the --timeout (60 s).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the refusal took {:?}",
            started.elapsed()
        );
    }
    env.assert_nothing_temporary_left().await;
    let backups: Vec<Value> = env.list(&backups_ar(), true, None).await;
    assert_eq!(backups.len(), 2, "a refused create recorded a backup");
    assert!(
        env.list(&pods_ar(), true, None).await.is_empty(),
        "a pod was left in the namespace"
    );

    // Restores run their pods in the populator's namespace, so they land here all the same.
    restore(&env, &blk, "blk-back").await;
    restore(&env, &files, "files-back").await;
    let restored = std::fs::read(volume_path(&env, NS, "blk-back").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
    assert_eq!(tree(&volume_path(&env, NS, "files-back").await), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_behind_https_with_a_private_ca_works_from_inside_the_pods() {
    let env = Env::start().await;
    let garage = tokio::task::spawn_blocking(support_s3::Garage::shared)
        .await
        .expect("garage");
    let upstream: std::net::SocketAddr = garage
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("garage listens on an address");
    let proxy = volbackup_e2e::tls_proxy::TlsProxy::start(upstream)
        .await
        .expect("the TLS proxy starts");
    let ca = env.dir.path().join("private-ca.pem");
    std::fs::write(&ca, &proxy.ca_pem).unwrap();
    let bucket = garage.new_bucket("tls");
    let location = format!("s3:https://127.0.0.1:{}/{bucket}/repo", proxy.port);
    let aws = garage.restic_env();
    let mut with_ca: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let without_ca = with_ca.clone();
    with_ca.push(("VOLBACKUP_CACERT", ca.to_str().unwrap()));

    // Without the CA the server is not trusted, and nothing is created.
    let out = env
        .plugin(&["repo", "init", "--repo", &location], &without_ca)
        .await;
    assert_ne!(out.code, 0, "an untrusted server was accepted");
    let out = env
        .plugin(&["repo", "init", "--repo", &location], &with_ca)
        .await;
    assert_eq!(out.code, 0, "repo init over TLS: {}", out.stderr);

    install_default(&env).await;
    env.pvc("tlsvol", "Block", "2Mi", json!({})).await;
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let block = pattern(2 << 20, 21);
    std::fs::write(data.join("tls.bin"), &block).unwrap();
    env.run_pod(
        "fill",
        "tlsvol",
        "Block",
        &format!(
            "dd if={}/tls.bin of=/dev/xvda bs=1M 2>/dev/null && sync",
            data.display()
        ),
    )
    .await;
    // The CA reaches the mover (and later the populate pod) in the repository Secret.
    let out = env
        .plugin(
            &[
                "create",
                "tlsvol",
                "-n",
                NS,
                "--repo",
                &location,
                "--timeout",
                "60s",
            ],
            &with_ca,
        )
        .await;
    assert_eq!(out.code, 0, "create over TLS failed: {}", out.stderr);
    let backups = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=tlsvol"))
        .await;
    assert_eq!(backups.len(), 1);
    let name = backups[0]["metadata"]["name"].as_str().unwrap().to_string();
    restore(&env, &name, "tls-back").await;
    let restored = std::fs::read(volume_path(&env, NS, "tls-back").await).unwrap();
    assert!(restored == block, "the volume restored over TLS differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populate_pod_refused_by_pod_security_is_reported_on_the_claim_until_allowed() {
    let env = Env::start().await;
    // The test namespace allows anything, so the backup's mover may mount the local-directory
    // repository from the node; the populator's namespace enforces baseline, which refuses it
    // (the administrator allowed the directory itself).
    let out = env
        .plugin(
            &[
                "install",
                "--allow-node-repository",
                env.repo.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "install failed: {}", out.stderr);
    let image = filled_volumes(&env, 2 << 20).await;
    let out = env.create_backup(&["blk"]).await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    let blk = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=blk"))
        .await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env
        .plugin(&["restore", &blk, "--to", "refused", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let event = loop {
        let found = events_of(&env, NS, "refused")
            .await
            .into_iter()
            .find(|e| e.starts_with("Warning PopulatorFailed") && e.contains("was refused"));
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal reported on the claim: {:?}",
            events_of(&env, NS, "refused").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        event.contains("violates PodSecurity \"baseline:latest\"")
            && event.contains("hostPath volumes")
            && event.contains("install --pod-security privileged"),
        "{event}"
    );
    let claim = env
        .list(&pvcs_ar(), true, None)
        .await
        .into_iter()
        .find(|p| p["metadata"]["name"] == "refused")
        .unwrap();
    assert_eq!(
        claim["status"]["phase"], "Pending",
        "bound without its data"
    );
    let cond = restored_condition(&env, NS, &blk)
        .await
        .expect("a Restored condition");
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "PodRefused");

    // Allowed, the same restore carries on by itself.
    let repo = env.repo.to_str().unwrap();
    let out = env
        .plugin(
            &[
                "install",
                "--pod-security",
                "privileged",
                "--allow-node-repository",
                repo,
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "reinstall failed: {}", out.stderr);
    env.wait_for(&pvcs_ar(), "refused", "to bind", |p| {
        p.pointer("/status/phase") == Some(&json!("Bound"))
    })
    .await;
    let restored = std::fs::read(volume_path(&env, NS, "refused").await).unwrap();
    assert!(restored == image, "the restored volume differs");
}
