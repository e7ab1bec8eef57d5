//! The real kubectl against kubesim (apply, get, describe, watch, create, logs, auth can-i),
//! kube-runtime watchers, and the `kubesim` binary.

use super::*;

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let bin = Path::new("/usr/bin/kubectl");
    assert!(bin.exists(), "kubectl not found: .ci/run installs it");
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache");
    Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_applies_a_crd_and_an_object_of_it_then_gets_and_describes_them() {
    let sim = start().await;
    let kc = sim.cluster.kubeconfig_path().to_path_buf();
    let dir = sim.cluster.dir().to_path_buf();
    std::fs::write(
        dir.join("crd.json"),
        serde_json::to_string_pretty(&widget_crd()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("w.yaml"),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  labels: {team: a}\nspec:\n  size: 3\n  mode: Block\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  size: -1\n",
    )
    .unwrap();
    let d = dir.clone();
    let kc2 = kc.clone();
    let out = tokio::task::spawn_blocking(move || {
        let p = |n: &str| d.join(n).to_string_lossy().into_owned();
        let a = ok(kubectl(&kc2, &["apply", "-f", &p("crd.json")]));
        let b = ok(kubectl(&kc2, &["apply", "-f", &p("w.yaml")]));
        let get = ok(kubectl(&kc2, &["get", "widgets"]));
        let short = ok(kubectl(
            &kc2,
            &["get", "wd", "w1", "-o", "jsonpath={.spec.size}"],
        ));
        let describe = ok(kubectl(&kc2, &["describe", "widget", "w1"]));
        let bad = kubectl(&kc2, &["apply", "-f", &p("bad.yaml")]);
        std::fs::write(p("extra.yaml"), "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w3\nspec:\n  size: 1\n  colour: red\n").unwrap();
        let strict = kubectl(&kc2, &["apply", "-f", &p("extra.yaml")]);
        let lax = ok(kubectl(&kc2, &["apply", "--validate=false", "-f", &p("extra.yaml")]));
        std::fs::write(
            p("w.yaml"),
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 5\n",
        )
        .unwrap();
        let again = ok(kubectl(&kc2, &["apply", "-f", &p("w.yaml")]));
        let get2 = ok(kubectl(&kc2, &["get", "widget", "w1", "-o", "json"]));
        (a, b, get, short, describe, bad, again, get2, strict, lax)
    })
    .await
    .unwrap();
    let (a, b, get, short, describe, bad, again, get2, strict, lax) = out;
    // kubectl validates strictly by default (fieldValidation=Strict): unknown fields fail;
    // with --validate=false they are pruned.
    assert!(!strict.status.success());
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.colour\""),
        "{err}"
    );
    assert_eq!(lax.trim(), "widget.example.com/w3 created");
    assert_eq!(
        a.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    assert_eq!(b.trim(), "widget.example.com/w1 created");
    let lines: Vec<&str> = get.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("SIZE"),
        "{get}"
    );
    assert!(
        lines[1].starts_with("w1") && lines[1].contains('3'),
        "{get}"
    );
    assert_eq!(short, "3");
    assert!(
        describe.contains("Name:         w1")
            && describe.contains("Size:  3")
            && describe.contains("team=a"),
        "{describe}"
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("The Widget \"w2\" is invalid") && err.contains("spec.size: Invalid value: -1: spec.size in body should be greater than or equal to 1"), "{err}");
    assert_eq!(again.trim(), "widget.example.com/w1 configured");
    let w: Value = serde_json::from_str(&get2).unwrap();
    assert_eq!(
        w["spec"],
        json!({"size": 5, "mode": "Filesystem"}),
        "kubectl's three-way merge removed `mode`, the schema default came back"
    );
    assert!(w["metadata"].get("labels").is_none(), "and the label");
}

#[tokio::test]
async fn kubectl_get_pvc_watch_sees_the_claim_bind() {
    let sim = start().await;
    let kc = sim.cluster.kubeconfig_path().to_path_buf();
    let dir = sim.cluster.dir().to_path_buf();
    std::fs::write(
        dir.join("pvc.yaml"),
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 1Gi\n",
    )
    .unwrap();
    let p = dir.join("pvc.yaml").to_string_lossy().into_owned();
    let kc2 = kc.clone();
    ok(
        tokio::task::spawn_blocking(move || kubectl(&kc2, &["apply", "-f", &p]))
            .await
            .unwrap(),
    );
    let bin = Path::new("/usr/bin/kubectl");
    assert!(bin.exists(), "kubectl not found: .ci/run installs it");
    let mut watch = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--cache-dir")
        .arg(dir.join("kubectl-cache"))
        .args(["get", "pvc", "-w", "--request-timeout=20s"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.starts_with("NAME") && first.contains("STATUS"),
        "{first}"
    );
    let second = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        second.starts_with("data") && second.contains("Pending"),
        "{second}"
    );
    // A PersistentVolume for the claim: the PV controller binds them.
    let pvs: Api<PersistentVolume> = Api::all(sim.client.clone());
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "pv-data"}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": dir.join("hostpv").to_string_lossy()}
        }}))
        .unwrap(),
    )
    .await
    .unwrap();
    let bound = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let l = lines
                .next_line()
                .await
                .unwrap()
                .expect("kubectl still watching");
            if l.contains("Bound") {
                return l;
            }
        }
    })
    .await
    .expect("kubectl -w prints the bind");
    assert!(
        bound.starts_with("data")
            && bound.contains("pv-data")
            && bound.contains("1Gi")
            && bound.contains("RWO"),
        "{bound}"
    );
}

#[tokio::test]
async fn pod_logs_are_served_and_follow_ends_when_the_container_exits() {
    let sim = start().await;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "talker"}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": "busybox", "command": ["sh", "-c", "echo one; sleep 1; echo two"]}
    ]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // Follow from the start: both lines, then the stream ends because the container exited.
    let followed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match pods
                .log_stream(
                    "talker",
                    &kube::api::LogParams {
                        follow: true,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(stream) => {
                    use futures::AsyncReadExt;
                    let mut s = String::new();
                    let mut r = stream;
                    r.read_to_string(&mut s).await.unwrap();
                    return s;
                }
                // 400 "waiting to start" until the kubelet has started the container.
                Err(kube::Error::Api(s)) if s.code == 400 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("log stream: {e}"),
            }
        }
    })
    .await
    .expect("follow ends once the container exited");
    assert_eq!(followed, "one\ntwo\n");
    let p = pods.get("talker").await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Succeeded"));
    assert_eq!(
        pods.logs(
            "talker",
            &kube::api::LogParams {
                tail_lines: Some(1),
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        "two\n"
    );
    let e = status(
        pods.logs(
            "talker",
            &kube::api::LogParams {
                container: Some("other".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "container other is not valid for pod talker")
    );
}

#[tokio::test]
async fn kube_runtime_watchers_see_changes_with_list_watch_and_streaming_lists() {
    use kube::runtime::watcher;
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    cms.create(&PostParams::default(), &cm("before", &[("w", "1")]))
        .await
        .unwrap();
    for cfg in [
        watcher::Config::default().labels("w"),
        watcher::Config::default().labels("w").streaming_lists(),
    ] {
        let mut stream = watcher::watcher(cms.clone(), cfg).boxed();
        let mut names = Vec::new();
        let mut created = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !names.contains(&"after".to_string()) {
            let ev = tokio::time::timeout_at(deadline, stream.try_next())
                .await
                .expect("watcher event in time")
                .unwrap()
                .unwrap();
            match ev {
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                    names.push(o.metadata.name.unwrap())
                }
                watcher::Event::InitDone if !created => {
                    created = true;
                    cms.create(&PostParams::default(), &cm("after", &[("w", "1")]))
                        .await
                        .unwrap();
                    cms.create(&PostParams::default(), &cm("unlabelled", &[]))
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
        assert_eq!(names, ["before", "after"]);
        cms.delete("after", &DeleteParams::default()).await.unwrap();
        cms.delete("unlabelled", &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[test]
fn the_kubesim_binary_serves_a_cluster_until_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .arg("--dir")
        .arg(dir.path())
        .arg("--nodes")
        .arg("2")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubesim starts");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let kc = Path::new(first.trim()).to_path_buf();
    assert_eq!(kc, dir.path().canonicalize().unwrap().join("kubeconfig"));
    let nodes = ok(kubectl(&kc, &["get", "nodes", "-o", "name"]));
    assert_eq!(
        nodes.lines().collect::<Vec<_>>(),
        ["node/node-1", "node/node-2"]
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "kubesim exits cleanly on SIGTERM: {st:?}");
}

#[tokio::test]
async fn kubectl_create_commands_logs_and_auth_can_i_work() {
    let sim = start().await;
    let kc = sim.cluster.kubeconfig_path().to_path_buf();
    let (created, secret, can, cannot, impersonated) = tokio::task::spawn_blocking(move || {
        // `kubectl create ...` sends protobuf bodies; `auth can-i` a SelfSubjectAccessReview.
        let mut created = ok(kubectl(&kc, &["create", "namespace", "team"]));
        created += &ok(kubectl(
            &kc,
            &["create", "serviceaccount", "bot", "-n", "team"],
        ));
        created += &ok(kubectl(
            &kc,
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "-n",
                "team",
                "--from-literal=password=hunter2",
            ],
        ));
        created += &ok(kubectl(
            &kc,
            &[
                "create",
                "configmap",
                "cfg",
                "-n",
                "team",
                "--from-literal=k=v",
            ],
        ));
        let secret = ok(kubectl(
            &kc,
            &[
                "get",
                "secret",
                "creds",
                "-n",
                "team",
                "-o",
                "jsonpath={.data.password}",
            ],
        ));
        let can = ok(kubectl(
            &kc,
            &["auth", "can-i", "delete", "persistentvolumes"],
        ));
        let cannot = kubectl(
            &kc,
            &[
                "auth",
                "can-i",
                "list",
                "pods",
                "-n",
                "team",
                "--as=system:serviceaccount:team:bot",
            ],
        );
        let impersonated = kubectl(
            &kc,
            &[
                "get",
                "pods",
                "--as=someone",
                "--as-group=system:masters",
                "-n",
                "team",
            ],
        );
        (created, secret, can, cannot, impersonated)
    })
    .await
    .unwrap();
    assert_eq!(
        created.lines().collect::<Vec<_>>(),
        [
            "namespace/team created",
            "serviceaccount/bot created",
            "secret/creds created",
            "configmap/cfg created"
        ]
    );
    assert_eq!(secret, "aHVudGVyMg==");
    assert_eq!(can.trim(), "yes");
    assert_eq!(String::from_utf8_lossy(&cannot.stdout).trim(), "no");
    // The admin may impersonate: the request runs as `someone` in group system:masters.
    assert!(
        impersonated.status.success(),
        "{}",
        String::from_utf8_lossy(&impersonated.stderr)
    );

    // Impersonation by a user without the `impersonate` verb is forbidden.
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client.clone(), "team");
    sas.get("bot").await.unwrap();
    let bot_kc = sim.cluster.dir().join("bot.kubeconfig");
    sim.cluster
        .write_kubeconfig(
            &bot_kc,
            json!({"token": sim.cluster.service_account_token("team", "bot")}),
            "team",
        )
        .unwrap();
    let out = tokio::task::spawn_blocking(move || kubectl(&bot_kc, &["get", "pods", "--as=admin"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("users \"admin\" is forbidden: User \"system:serviceaccount:team:bot\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{err}"
    );

    // `kubectl scale` goes through the Deployment's `scale` subresource.
    let deps: Api<Deployment> = Api::namespaced(sim.client.clone(), "team");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "30"]}]}
        }}
    }))
    .unwrap();
    deps.create(&PostParams::default(), &d).await.unwrap();
    let kc = sim.cluster.kubeconfig_path().to_path_buf();
    let scaled = tokio::task::spawn_blocking(move || {
        ok(kubectl(
            &kc,
            &["scale", "deployment", "web", "-n", "team", "--replicas=2"],
        ))
    })
    .await
    .unwrap();
    assert_eq!(scaled.trim(), "deployment.apps/web scaled");
    assert_eq!(deps.get("web").await.unwrap().spec.replicas, Some(2));
    let scale = deps.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
}
