//! What the kubelet enforces: a private /dev, read-only roots, non-root users, capabilities,
//! device owners, fsGroup, and Pod Security refusing violations.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_a_private_dev_with_the_usual_nodes_links_and_its_block_device() {
    let sim = Sim::start().await;
    sim.pvc("raw", "fast", "Block", "1Mi").await;
    let script = "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
                  for l in fd stdin stdout stderr ptmx; do printf '%s -> %s\\n' $l \"$(readlink /dev/$l)\"; done; \
                  test -b /dev/xvda && echo block device; \
                  echo shared > /dev/shm/x && cat /dev/shm/x; \
                  test -c /dev/ptmx && echo ptmx through pts; \
                  test -e /dev/loop-control && echo the node\\'s /dev || echo private; \
                  head -c 3 /dev/zero | od -An -tx1; echo written > /dev/null && echo null takes writes";
    let log = sim.run("devs", Some(("raw", "Block")), script).await;
    assert_eq!(
        log,
        "/dev/null character special file 1:3 666\n\
         /dev/zero character special file 1:5 666\n\
         /dev/full character special file 1:7 666\n\
         /dev/random character special file 1:8 666\n\
         /dev/urandom character special file 1:9 666\n\
         /dev/tty character special file 5:0 666\n\
         fd -> /proc/self/fd\n\
         stdin -> /proc/self/fd/0\n\
         stdout -> /proc/self/fd/1\n\
         stderr -> /proc/self/fd/2\n\
         ptmx -> pts/ptmx\n\
         block device\n\
         shared\n\
         ptmx through pts\n\
         private\n \
         00 00 00\n\
         null takes writes\n"
    );
    // A second pod copies the same template.
    assert!(
        sim.run("devs-again", None, "stat -c %a /dev/null")
            .await
            .starts_with("666")
    );
}

/// The phase and the reason a pod's first container is waiting or ended with.
async fn settle(sim: &Sim, name: &str) -> Value {
    sim.wait_for(PODS, name, "to finish or be refused", 30, |p| {
        matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        ) || p
            .pointer("/status/containerStatuses/0/state/waiting/reason")
            .and_then(Value::as_str)
            == Some("CreateContainerConfigError")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_enforces_read_only_roots_non_root_users_capabilities_and_device_owners() {
    let sim = Sim::start().await;
    let pod = |name: &str, sc: Value, script: &str| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script], "securityContext": sc}]}})
    };

    // A read-only root filesystem cannot be written; a writable one can.
    sim.create(
        PODS,
        pod("ro", json!({"readOnlyRootFilesystem": true}), "touch /x"),
    )
    .await;
    sim.create(PODS, pod("rw", json!({}), "touch /x && echo wrote"))
        .await;
    let p = settle(&sim, "ro").await;
    assert_eq!(phase(&p), "Failed");
    assert!(sim.logs("ro").await.contains("Read-only file system"));
    settle(&sim, "rw").await;
    assert_eq!(sim.logs("rw").await, "wrote\n");

    // runAsNonRoot with an image that runs as root is refused by the kubelet.
    let refused = sim
        .create(PODS, pod("nonroot", json!({"runAsNonRoot": true}), "id -u"))
        .await;
    let p = settle(&sim, "nonroot").await;
    let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(waiting["reason"], "CreateContainerConfigError");
    assert_eq!(
        waiting["message"],
        json!(format!(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_{NS}({})\", container: main)",
            uid(&refused)
        ))
    );
    // With a non-root user it runs.
    sim.create(
        PODS,
        pod(
            "nonroot-ok",
            json!({"runAsNonRoot": true, "runAsUser": 1000}),
            "id -u",
        ),
    )
    .await;
    settle(&sim, "nonroot-ok").await;
    assert_eq!(sim.logs("nonroot-ok").await, "1000\n");

    // Dropping CAP_CHOWN makes chown fail for root; the default set allows it.
    let chown = "touch /tmp/f && chown 1234 /tmp/f && stat -c %u /tmp/f";
    sim.create(PODS, pod("chown", json!({}), chown)).await;
    sim.create(
        PODS,
        pod(
            "no-chown",
            json!({"capabilities": {"drop": ["CHOWN"]}}),
            chown,
        ),
    )
    .await;
    settle(&sim, "chown").await;
    assert_eq!(sim.logs("chown").await, "1234\n");
    let p = settle(&sim, "no-chown").await;
    assert_eq!(phase(&p), "Failed");
    assert!(
        sim.logs("no-chown")
            .await
            .contains("Operation not permitted"),
        "{}",
        sim.logs("no-chown").await
    );
    // Added capabilities are effective for root only; privilege escalation off is no_new_privs.
    sim.create(
        PODS,
        pod(
            "caps",
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["DAC_OVERRIDE"]}}),
            "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        ),
    )
    .await;
    settle(&sim, "caps").await;
    assert_eq!(
        sim.logs("caps").await,
        "CapEff:\t0000000000000002\nNoNewPrivs:\t1\n"
    );

    // A Block volume's device node belongs to root: a non-root user cannot open it.
    sim.pvc("raw", "fast", "Block", "1Mi").await;
    sim.wait_phase(PVCS, "raw", "Bound", 10).await;
    let dev = |name: &str, sc: Value| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "head -c 4 /dev/xvda | wc -c"],
                "securityContext": sc, "volumeDevices": [{"name": "v", "devicePath": "/dev/xvda"}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "raw"}}]}})
    };
    sim.create(PODS, dev("dev-user", json!({"runAsUser": 1000})))
        .await;
    settle(&sim, "dev-user").await;
    assert!(
        sim.logs("dev-user").await.contains("Permission denied"),
        "{}",
        sim.logs("dev-user").await
    );
    sim.create(
        PODS,
        dev("dev-root", json!({"capabilities": {"drop": ["ALL"]}})),
    )
    .await;
    settle(&sim, "dev-root").await;
    assert_eq!(sim.logs("dev-root").await.trim(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_group_gives_the_group_a_filesystem_volume_and_pod_security_refuses_violations() {
    let sim = Sim::start().await;
    sim.pvc("shared", "fast", "Filesystem", "1Mi").await;
    sim.wait_phase(PVCS, "shared", "Bound", 10).await;
    // Root writes a private file; a pod with fsGroup 2000 running as 1000 may then use it.
    sim.run(
        "seed",
        Some(("shared", "Filesystem")),
        "mkdir /data/d && echo x > /data/d/f && chmod 600 /data/d/f && chmod 700 /data/d",
    )
    .await;
    sim.create(
        PODS,
        json!({"metadata": {"name": "grouped"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c",
                "id -G; stat -c '%g %A' /data/d /data/d/f; cat /data/d/f; echo y > /data/d/g && stat -c %g /data/d/g"],
                "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "shared"}}]}}),
    )
    .await;
    let p = settle(&sim, "grouped").await;
    let log = sim.logs("grouped").await;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    assert_eq!(
        log,
        "1000 2000\n2000 drwxrws---\n2000 -rw-rw----\nx\n2000\n"
    );

    // Pod Security admission: a restricted namespace refuses a root pod with the API server's
    // message; a hardened pod is admitted.
    sim.create(
        NAMESPACES,
        json!({"metadata": {"name": "locked", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await;
    let pods: Api<DynamicObject> = Api::namespaced_with(
        sim.client.clone(),
        "locked",
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    let bad: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0}}]}}))
    .unwrap();
    match pods.create(&Default::default(), &bad).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403);
            assert_eq!(
                e.message,
                "pods \"root\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), runAsUser=0 (container \"c\" must not set runAsUser=0), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
            );
        }
        other => panic!("a root pod was admitted to a restricted namespace: {other:?}"),
    }
    let good: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hardened"}, "spec": {"restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox", "command": ["true"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}))
    .unwrap();
    pods.create(&Default::default(), &good)
        .await
        .expect("a hardened pod is admitted");
    // A claim without a class gets the default one (DefaultStorageClass admission).
    sim.patch(
        STORAGECLASSES,
        "fast",
        json!({"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}}),
    )
    .await;
    let pvc = sim
        .create(
            PVCS,
            json!({"metadata": {"name": "classless"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}),
        )
        .await;
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
}
