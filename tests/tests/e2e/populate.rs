//! What a populate pod may do is the administrator's to decide, not the namespace's: the node
//! a WaitForFirstConsumer restore must use is reached through the scheduler (taints stay in
//! force), a repository that is a node directory is used only where `install` allowed it, and
//! a populate pod that makes no progress is retried and then reported.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::common::*;
use crate::restore::*;

/// Sets the taints of a node (an empty list removes them).
async fn taint(env: &Env, node: &str, taints: Value) {
    Api::<Node>::all(env.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .expect("patch the node's taints");
}

/// A pod that tolerates `dedicated=db:NoSchedule` and compares the Block claim `pvc` with the
/// test's copy of the image.
async fn tolerating_consumer(env: &Env, name: &str, pvc: &str) {
    let own = env.dir.path().to_string_lossy().to_string();
    env.create(
        &pods_ar(),
        json!({"metadata": {"name": name}, "spec": {
            "restartPolicy": "Never",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "busybox:1.36",
                "command": ["sh", "-c", format!("cmp {own}/data/block.bin /dev/xvda")],
                "volumeDevices": [{"name": "v", "devicePath": "/dev/xvda"}],
                "volumeMounts": [{"name": "test", "mountPath": own}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": pvc}},
                        {"name": "test", "hostPath": {"path": own, "type": "Directory"}}]}}),
    )
    .await;
}

/// The populate pod of the claim `ns/pvc`, once it exists.
async fn populate_pod_of(env: &Env, ns: &str, pvc: &str) -> Value {
    let claim = get_in(env, &pvcs_ar(), ns, pvc).await.expect("claim");
    let pod = format!("populate-{}", claim["metadata"]["uid"].as_str().unwrap());
    eventually(30, &format!("the populate pod {pod}"), || async {
        get_in(env, &pods_ar(), POP_NS, &pod).await
    })
    .await
}

/// A WaitForFirstConsumer claim whose consumer tolerates a taint of its node: the populate
/// pod is pinned to that node through the scheduler, which keeps it off while the taint is
/// there (with `spec.nodeName` it would have run on the tainted node anyway); once the taint
/// is gone, the restore completes and the consumer reads the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populate_pod_reaches_the_selected_node_through_the_scheduler_and_its_taints() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, _files, image) = backed_up_volumes(&env, 4 << 20).await;
    env.create(
        &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        json!({"metadata": {"name": "late"}, "provisioner": "hostpath.csi.kubesim.io", "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    taint(
        &env,
        "node-1",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
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
    tolerating_consumer(&env, "consumer", "late-blk").await;

    let pod = populate_pod_of(&env, NS, "late-blk").await;
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let unscheduled = eventually(
        30,
        "the populate pod to be refused by the scheduler",
        || {
            let name = name.clone();
            let env = &env;
            async move {
                let p = get_in(env, &pods_ar(), POP_NS, &name).await?;
                let c = p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "PodScheduled")?
                    .clone();
                (c["status"] == "False").then_some((p, c))
            }
        },
    )
    .await;
    let (p, cond) = unscheduled;
    assert!(
        cond["message"]
            .as_str()
            .unwrap_or("")
            .contains("untolerated taint {dedicated: db}"),
        "{cond}"
    );
    assert!(
        p["spec"]["nodeName"].as_str().unwrap_or("").is_empty(),
        "the populate pod skipped the scheduler: {}",
        p["spec"]
    );
    assert_eq!(
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0]["values"],
        json!(["node-1"])
    );
    let claim = get_in(&env, &pvcs_ar(), NS, "late-blk").await.unwrap();
    assert_eq!(claim["status"]["phase"], "Pending", "{claim}");

    // The administrator lifts the taint: the scheduler places the pod and the restore ends.
    taint(&env, "node-1", json!([])).await;
    let done = eventually(60, "the consumer to finish", || async {
        let c = get_in(&env, &pods_ar(), NS, "consumer").await?;
        matches!(c["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(c)
    })
    .await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{}", done["status"]);
    assert_cleanly_bound(&env, NS, "late-blk").await;
    let restored = std::fs::read(volume_path(&env, NS, "late-blk").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
    api_in(&env, &pods_ar(), NS)
        .delete("consumer", &Default::default())
        .await
        .expect("delete the consumer");
}

/// A repository that is a node directory is mounted into a populate pod only where `install`
/// allowed it: elsewhere the restore is refused before any pod exists, with the reason on the
/// claim; an allowed directory that merely starts with the same letters allows nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_directory_repository_is_refused_unless_install_allowed_it() {
    let env = Env::start().await;
    // "<dir>/rep" is a prefix of "<dir>/repo" as text, not as a path.
    let repo = env.repo.to_str().unwrap().to_string();
    let lookalike = repo.trim_end_matches('o').to_string();
    let out = env
        .plugin(
            &[
                "install",
                "--pod-security",
                "privileged",
                "--allow-node-repository",
                &lookalike,
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "install failed: {}", out.stderr);
    let (blk, _files, image) = backed_up_volumes(&env, 2 << 20).await;
    let out = env
        .plugin(&["restore", &blk, "--to", "refused", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    assert_given_up(&env, NS, "refused", &blk, "NodeRepositoryNotAllowed", 30).await;
    assert_no_populate_pod(&env, NS, "refused").await;
    let events = events_of(&env, NS, "refused").await;
    assert!(
        events
            .iter()
            .any(|e| e.contains(&format!("node directory {repo} "))
                && e.contains("--allow-node-repository")),
        "{events:?}"
    );

    // Allowed by the administrator, the next restore from it goes through.
    install(&env).await;
    let out = env
        .plugin(
            &["restore", &blk, "--to", "allowed", "-n", NS, "--wait"],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let restored = std::fs::read(volume_path(&env, NS, "allowed").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
}

/// Adds arguments to the populator Deployment and waits until a pod with them runs.
async fn reconfigure(env: &Env, extra: &[&str]) {
    let deploys = api_in(env, &ar("apps", "v1", "Deployment", "deployments"), POP_NS);
    let d = deploys.get("volbackup-populator").await.unwrap();
    let mut containers =
        serde_json::to_value(&d).unwrap()["spec"]["template"]["spec"]["containers"].clone();
    for a in extra {
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
    let want = containers[0]["args"].clone();
    eventually(30, "the reconfigured populator to run", || async {
        let pods = list_in(env, &pods_ar(), POP_NS).await;
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
            && running[0]["spec"]["containers"][0]["args"] == want)
            .then_some(())
    })
    .await;
}

/// A populate pod the scheduler cannot place (its only node is tainted) does not leave the
/// claim Pending without a word: after the stall timeout the attempt fails, is retried, and
/// the last one is reported on the claim and the VolumeBackup; nothing of it is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_populate_pod_that_never_starts_is_retried_then_reported() {
    let env = Env::start().await;
    install_with(&env, &["--stall-timeout", "3s"]).await;
    reconfigure(&env, &["--max-attempts", "2", "--retry-backoff", "1s"]).await;
    let (blk, _files, _image) = backed_up_volumes(&env, 2 << 20).await;
    taint(
        &env,
        "node-1",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    let out = env
        .plugin(&["restore", &blk, "--to", "stuck", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let retried = eventually(60, "the first attempt to be retried", || async {
        events_of(&env, NS, "stuck")
            .await
            .into_iter()
            .find(|e| e.contains("attempt 1 of 2 failed (PodNotStarted)"))
    })
    .await;
    assert!(
        retried.contains("untolerated taint {dedicated: db}"),
        "{retried}"
    );
    assert_given_up(&env, NS, "stuck", &blk, "PodNotStarted", 60).await;
    assert_no_populator_leftovers(&env).await;
    taint(&env, "node-1", json!([])).await;
}

/// One repository for several namespaces makes them one trust domain: `create -A` says so in
/// one warning line naming them, and a backup of one namespace alone does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_shared_by_namespaces_is_named_in_one_warning() {
    let env = Env::start().await;
    env.create(
        &ar("", "v1", "Namespace", "namespaces"),
        json!({"metadata": {"name": "other"}}),
    )
    .await;
    env.pvc("mine", "Block", "1Mi", json!({"app": "shared"}))
        .await;
    let theirs: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "theirs", "namespace": "other", "labels": {"app": "shared"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "volumeMode": "Block",
                 "resources": {"requests": {"storage": "1Mi"}}},
    }))
    .unwrap();
    api_in(&env, &pvcs_ar(), "other")
        .create(&Default::default(), &theirs)
        .await
        .expect("create pvc");
    eventually(30, "other/theirs to bind", || async {
        get_in(&env, &pvcs_ar(), "other", "theirs")
            .await
            .filter(|p| p["status"]["phase"] == "Bound")
    })
    .await;
    let repo = env.repo.to_str().unwrap();
    let out = env
        .plugin(&["create", "-A", "-l", "app=shared", "--repo", repo], &[])
        .await;
    assert_eq!(out.code, 0, "create -A failed: {}", out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(
        warnings[0].contains(&format!(
            "repository {repo} is shared by 2 namespaces (other, t)"
        )) && warnings[0].contains("its own repository (or prefix)"),
        "{}",
        warnings[0]
    );
    let out = env
        .plugin(&["create", "mine", "-n", NS, "--repo", repo], &[])
        .await;
    assert_eq!(out.code, 0, "create failed: {}", out.stderr);
    assert!(!out.stderr.contains("is shared by"), "{}", out.stderr);
}

/// Whatever else a repository Secret holds stays out of the populator's namespace and its
/// pods: the per-restore Secret has only the settings a mover reads, and the pod takes them
/// key by key, never the whole Secret. (The node is tainted meanwhile, so the pod waits and
/// can be looked at; once the taint is gone the restore completes with those settings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_secret_passes_only_the_movers_settings_into_a_populate_pod() {
    let env = Env::start().await;
    install(&env).await;
    let (blk, _files, image) = backed_up_volumes(&env, 2 << 20).await;
    let extra = json!({"stringData": {
        "LD_PRELOAD": "/data/not-a-library.so",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "VOLBACKUP_LOCK_STALE_AFTER": "6",
        "RESTIC_PASSWORD_FILE": "/etc/passwd",
    }});
    api_in(&env, &secrets_ar(), NS)
        .patch(
            &repository_secret(&env),
            &PatchParams::default(),
            &Patch::Merge(extra),
        )
        .await
        .expect("add to the repository Secret");
    taint(
        &env,
        "node-1",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    let out = env
        .plugin(&["restore", &blk, "--to", "steered", "-n", NS], &[])
        .await;
    assert_eq!(out.code, 0, "restore failed: {}", out.stderr);
    let pod = populate_pod_of(&env, NS, "steered").await;
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let copy = get_in(&env, &secrets_ar(), POP_NS, &name)
        .await
        .expect("the per-restore Secret");
    let keys: Vec<&str> = copy["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in &keys {
        assert!(
            volbackup_populator::mover::SECRET_KEYS.contains(k),
            "{k} was copied into {POP_NS}/{name}"
        );
    }
    assert!(keys.contains(&"VOLBACKUP_PASSWORD"), "{keys:?}");
    let c = &pod["spec"]["containers"][0];
    assert!(c.get("envFrom").is_none(), "{c}");
    let names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for unwanted in [
        "LD_PRELOAD",
        "HTTPS_PROXY",
        "VOLBACKUP_LOCK_STALE_AFTER",
        "RESTIC_PASSWORD_FILE",
    ] {
        assert!(!names.contains(&unwanted), "{unwanted} in {names:?}");
    }

    taint(&env, "node-1", json!([])).await;
    env.wait_for(&pvcs_ar(), "steered", "to bind", |p| {
        p.pointer("/status/phase") == Some(&json!("Bound"))
    })
    .await;
    let restored = std::fs::read(volume_path(&env, NS, "steered").await).unwrap();
    assert!(restored == image, "the restored block volume differs");
}
