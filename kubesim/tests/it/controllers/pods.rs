//! Pods: logs, termination, kills, restarts and unknown images, a Deployment's pod reaching the
//! API with its ServiceAccount, init containers, Secret and ConfigMap volumes, env, users, the
//! active deadline.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_report_logs_termination_kills_restarts_and_unknown_images() {
    let sim = Sim::start().await;
    // Exit code, termination message and log.
    sim.sh_pod(
        "fails",
        None,
        "echo out; echo err >&2; echo 'it broke' > /dev/termination-log; exit 3",
        "Never",
    )
    .await;
    let p = sim.wait_phase(PODS, "fails", "Failed", 15).await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");
    assert_eq!(t["message"], "it broke\n");
    // stdout and stderr are two streams (runc copies each through its own pipe): both lines
    // are in the log, in either order.
    let mut lines: Vec<String> = sim.logs("fails").await.lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["err", "out"]);

    // A killed pod is Failed.
    sim.sh_pod("sleeper", None, "sleep 600", "Never").await;
    sim.wait_phase(PODS, "sleeper", "Running", 15).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sim.cluster.kill_pod(NS, "sleeper") {
        assert!(
            Instant::now() < deadline,
            "the running pod had no process to kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = sim.wait_phase(PODS, "sleeper", "Failed", 15).await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );

    // restartPolicy Always restarts an exited container.
    sim.sh_pod("looper", None, "echo run; exit 1", "Always")
        .await;
    let p = sim
        .wait_for(PODS, "looper", "to restart twice", 20, |p| {
            p.pointer("/status/containerStatuses/0/restartCount")
                .and_then(Value::as_u64)
                >= Some(2)
        })
        .await;
    assert_eq!(phase(&p), "Running");
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );
    assert!(sim.logs("looper").await.starts_with("run\nrun\n"));

    // An unknown image fails with ErrImagePull and the kubelet's event, instead of staying
    // in ContainerCreating (bounded by the wait, generous for a loaded machine).
    let nope = sim
        .create(PODS, json!({"metadata": {"name": "nope"}, "spec": {"containers": [{"name": "c", "image": "ghcr.io/nobody/nothing:1"}]}}))
        .await;
    let p = sim
        .wait_for(PODS, "nope", "to fail pulling", 60, |p| {
            matches!(
                p.pointer("/status/containerStatuses/0/state/waiting/reason")
                    .and_then(Value::as_str),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })
        .await;
    assert_eq!(phase(&p), "Pending");
    let ev = sim.wait_event(&uid(&nope), "Failed", 30).await;
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to pull image \"ghcr.io/nobody/nothing:1\""),
        "{ev}"
    );

    // Deleting a running pod kills it and removes the object.
    sim.delete(PODS, "looper").await;
    sim.wait_gone(PODS, "looper", 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pod_reaches_the_api_with_its_service_account_and_nothing_more() {
    let probe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kubesim-probe"));
    let sim = Sim::start_with(BTreeMap::from([("example.io/probe".to_string(), probe)])).await;
    sim.create(SERVICEACCOUNTS, json!({"metadata": {"name": "reader"}}))
        .await;
    sim.create(
        SECRETS,
        json!({"metadata": {"name": "hidden"}, "stringData": {"k": "v"}}),
    )
    .await;
    sim.create(ROLES, json!({"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}))
        .await;
    sim.create(
        ROLEBINDINGS,
        json!({"metadata": {"name": "reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}]}),
    )
    .await;
    sim.create(
        DEPLOYMENTS,
        json!({"metadata": {"name": "probe"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "probe"}},
            "template": {"metadata": {"labels": {"app": "probe"}}, "spec": {"serviceAccountName": "reader",
                "containers": [{"name": "probe", "image": "example.io/probe:v1"}]}}}}),
    )
    .await;
    sim.wait_for(DEPLOYMENTS, "probe", "to be available", 20, |d| {
        d.pointer("/status/availableReplicas")
            .and_then(Value::as_u64)
            == Some(1)
    })
    .await;
    let pods = sim.list(PODS).await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    assert!(pod_name.starts_with("probe-"), "{pod_name}");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert!(pod["metadata"]["labels"]["pod-template-hash"].is_string());

    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = sim.logs(&pod_name).await;
        if log.lines().count() >= 4 {
            break log;
        }
        assert!(Instant::now() < deadline, "the probe printed only:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], format!("namespace: {NS}"), "{log}");
    assert_eq!(lines[1], "pods: ok 1", "{log}");
    assert!(lines[2].starts_with("secrets: 403 "), "{log}");
    assert!(lines[2].contains("system:serviceaccount:t:reader"), "{log}");
    assert!(lines[3].starts_with("pods in default: 403 "), "{log}");

    // A new template replaces the pod; a killed container is restarted (restartPolicy Always).
    sim.cluster.kill_pod(NS, &pod_name);
    sim.wait_for(PODS, &pod_name, "to restart", 20, |p| {
        p.pointer("/status/containerStatuses/0/restartCount")
            .and_then(Value::as_u64)
            >= Some(1)
    })
    .await;
    sim.patch(
        DEPLOYMENTS,
        "probe",
        json!({"spec": {"template": {"metadata": {"labels": {"app": "probe", "v": "2"}}}}}),
    )
    .await;
    sim.wait_gone(PODS, &pod_name, 20).await;
    let d = sim
        .wait_for(DEPLOYMENTS, "probe", "to roll out", 20, |d| {
            d.pointer("/status/updatedReplicas").and_then(Value::as_u64) == Some(1)
                && d.pointer("/status/availableReplicas")
                    .and_then(Value::as_u64)
                    == Some(1)
        })
        .await;
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    let pods = sim.list(PODS).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["metadata"]["labels"]["v"], "2");

    // `command` naming the image's program runs the mapped binary with the rest and `args`.
    let once = |name: &str, automount: bool| {
        json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "serviceAccountName": "reader", "automountServiceAccountToken": automount,
            "containers": [{"name": "probe", "image": "example.io/probe@sha256:0123", "command": ["/usr/local/bin/kubesim-probe"], "args": ["--once"]}]}})
    };
    sim.create(PODS, once("once", true)).await;
    sim.wait_phase(PODS, "once", "Succeeded", 20).await;
    assert!(sim.logs("once").await.contains("pods: ok"));
    // Without the token, in-cluster configuration has nothing to read.
    sim.create(PODS, once("no-token", false)).await;
    sim.wait_phase(PODS, "no-token", "Failed", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gets_init_containers_secrets_configmaps_env_read_only_mounts_and_its_user() {
    let sim = Sim::start().await;
    sim.create(
        SECRETS,
        json!({"metadata": {"name": "creds"}, "stringData": {"user": "alice", "pass": "s3cret"}}),
    )
    .await;
    sim.create(
        CONFIGMAPS,
        json!({"metadata": {"name": "cfg"}, "data": {"mode": "fast", "file.txt": "hello"}}),
    )
    .await;
    sim.pvc("data", "fast", "Filesystem", "1Mi").await;
    let script = "id -u; id -g; pwd; cat x; cat /data/f; (echo no > /data/f) 2>/dev/null && echo writable || echo read-only; \
                  stat -c %a /etc/creds/p/pass; ls /etc/creds; echo $USER_NAME $POD $GREETING $CFG_mode; cat /etc/cfg/file.txt; echo; \
                  cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; echo $KUBERNETES_SERVICE_HOST";
    sim.create(
        PODS,
        json!({"metadata": {"name": "full"}, "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "echo from-init > /work/x; echo pvc > /data/f"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "vol", "mountPath": "/data"}]}],
            "containers": [{"name": "main", "image": "docker.io/library/busybox:latest", "workingDir": "/work", "command": ["sh", "-c", script],
                "securityContext": {"runAsUser": 1234, "runAsGroup": 2345},
                "env": [
                    {"name": "USER_NAME", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "value": "hi-$(POD)"}],
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "vol", "mountPath": "/data", "readOnly": true},
                    {"name": "secret", "mountPath": "/etc/creds"},
                    {"name": "cfg", "mountPath": "/etc/cfg"}]}],
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "vol", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "secret", "secret": {"secretName": "creds", "items": [{"key": "pass", "path": "p/pass", "mode": 256}]}},
                {"name": "cfg", "configMap": {"name": "cfg"}}]}}),
    )
    .await;
    let p = sim
        .wait_for(PODS, "full", "to finish", 30, |p| {
            matches!(
                p.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
        })
        .await;
    let log = sim.logs("full").await;
    assert_eq!(phase(&p), "Succeeded", "{log}");
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(
        log,
        "1234\n2345\n/work\nfrom-init\npvc\nread-only\n400\np\nalice full hi-full fast\nhello\nt\n127.0.0.1\n"
    );

    // A PVC cloned from that PVC holds the same data.
    sim.create(
        PVCS,
        json!({"metadata": {"name": "clone"}, "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "1Mi"}},
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "data"}}}),
    )
    .await;
    sim.wait_phase(PVCS, "clone", "Bound", 10).await;
    assert_eq!(
        sim.run("reader", Some(("clone", "Filesystem")), "cat /data/f")
            .await,
        "pvc\n"
    );
}

/// `spec.activeDeadlineSeconds`, as the kubelet enforces it: a pod still running when its
/// deadline runs out has its containers killed and fails with `DeadlineExceeded` (even with
/// restartPolicy Always), with the kubelet's event; a pod that ends in time is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_running_past_its_active_deadline_is_killed_and_fails_with_deadline_exceeded() {
    let sim = Sim::start().await;
    // Stopped like a deleted pod: SIGTERM to every process of the container, SIGKILL after
    // the grace period.
    let overdue = sim
        .create(PODS, json!({"metadata": {"name": "overdue"}, "spec": {
            "activeDeadlineSeconds": 8,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Always",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "echo started; sleep 600"]}]}}))
        .await;
    let in_time = sim
        .create(PODS, json!({"metadata": {"name": "in-time"}, "spec": {
            "activeDeadlineSeconds": 600,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "echo done"]}]}}))
        .await;

    let p = sim.wait_phase(PODS, "overdue", "Failed", 60).await;
    assert_eq!(p["status"]["reason"], "DeadlineExceeded", "{p:#}");
    assert_eq!(
        p["status"]["message"],
        "Pod was active on the node longer than the specified deadline"
    );
    let c = &p["status"]["containerStatuses"][0];
    let t = &c["state"]["terminated"];
    assert!(
        (t["signal"] == 15 && t["exitCode"] == 143) || (t["signal"] == 9 && t["exitCode"] == 137),
        "the container was not killed: {c:#}"
    );
    assert_eq!(c["restartCount"], 0);
    // The container had started (its shell may add "Terminated" for its killed child).
    let log = sim.logs("overdue").await;
    assert!(log.starts_with("started\n"), "{log:?}");
    let ev = sim.wait_event(&uid(&overdue), "DeadlineExceeded", 10).await;
    assert_eq!(ev["type"], "Normal");
    sim.wait_event(&uid(&overdue), "Killing", 10).await;
    // Nothing of the pod runs any more.
    assert!(!sim.cluster.kill_pod(NS, "overdue"));

    let p = sim.wait_phase(PODS, "in-time", "Succeeded", 30).await;
    assert!(p["status"].get("reason").is_none(), "{p:#}");
    assert_eq!(sim.logs("in-time").await, "done\n");
    assert!(
        sim.list(EVENTS)
            .await
            .iter()
            .all(|e| !(e["involvedObject"]["uid"] == uid(&in_time).as_str()
                && e["reason"] == "DeadlineExceeded")),
        "a pod that ended in time got a DeadlineExceeded event"
    );
}
