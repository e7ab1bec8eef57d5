//! `kubectl volbackup install` / `uninstall` end to end: the real binary applies its embedded
//! manifests to kubesim, whose kubelet runs the populator Deployment's pod as the same binary.

use std::path::Path;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use crate::common::*;

const SYSTEM: &str = "volbackup-system";

fn crd_ar() -> ApiResource {
    ar(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    )
}

/// Everything `install` applies: (resource, namespace, name).
fn installed(ns: &str) -> Vec<(ApiResource, Option<String>, &'static str)> {
    let rbac = |kind: &str, plural: &str| ar("rbac.authorization.k8s.io", "v1", kind, plural);
    let n = || Some(ns.to_string());
    vec![
        (crd_ar(), None, "volumebackups.volbackup.io"),
        (
            ar("", "v1", "Namespace", "namespaces"),
            None,
            "volbackup-system",
        ),
        (
            ar("", "v1", "ServiceAccount", "serviceaccounts"),
            n(),
            "volbackup-populator",
        ),
        (
            rbac("ClusterRole", "clusterroles"),
            None,
            "volbackup-populator",
        ),
        (
            rbac("ClusterRoleBinding", "clusterrolebindings"),
            None,
            "volbackup-populator",
        ),
        (rbac("Role", "roles"), n(), "volbackup-populator"),
        (
            rbac("RoleBinding", "rolebindings"),
            n(),
            "volbackup-populator",
        ),
        (
            ar("apps", "v1", "Deployment", "deployments"),
            n(),
            "volbackup-populator",
        ),
        (
            ar(
                "populator.storage.k8s.io",
                "v1beta1",
                "VolumePopulator",
                "volumepopulators",
            ),
            None,
            "volbackup-volumebackup",
        ),
    ]
}

fn api(env: &Env, r: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(env.client.clone(), ns, r),
        None => Api::all_with(env.client.clone(), r),
    }
}

async fn get(env: &Env, r: &ApiResource, ns: Option<&str>, name: &str) -> Option<Value> {
    api(env, r, ns)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("get {} {name}: {e}", r.plural))
        .map(|o| serde_json::to_value(o).expect("json"))
}

/// The resourceVersion of every installed object (None for a missing one).
async fn versions(env: &Env, ns: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (r, ons, name) in installed(ns) {
        let o = get(env, &r, ons.as_deref(), name).await;
        out.push((
            format!("{}/{name}", r.plural),
            o.and_then(|o| o["metadata"]["resourceVersion"].as_str().map(String::from)),
        ));
    }
    out
}

fn parse_stream(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Integral floats as integers (`minimum: 0.0` and kustomize's `minimum: 0` are one value).
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

fn backup_object(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS}, "spec": {"repository": {"secretRef": {"name": "volbackup-repository"}}, "snapshot": "0".repeat(64)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_starts_the_populator_a_second_install_changes_nothing_and_uninstall_removes_it() {
    let env = Env::start().await;

    let out = env.plugin(&["install"], &[]).await;
    assert_eq!(out.code, 0, "install failed: {}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}", out.stdout);
    assert_eq!(
        lines[0],
        "customresourcedefinition.apiextensions.k8s.io/volumebackups.volbackup.io unchanged",
        "the CRD Env::start created from the same manifest is unchanged"
    );
    for expect in [
        "namespace/volbackup-system created",
        "serviceaccount/volbackup-populator created",
        "clusterrole.rbac.authorization.k8s.io/volbackup-populator created",
        "clusterrolebinding.rbac.authorization.k8s.io/volbackup-populator created",
        "role.rbac.authorization.k8s.io/volbackup-populator created",
        "rolebinding.rbac.authorization.k8s.io/volbackup-populator created",
        "clusterrole.rbac.authorization.k8s.io/volbackup-restorer created",
        "clusterrole.rbac.authorization.k8s.io/volbackup-user created",
        "clusterrole.rbac.authorization.k8s.io/volbackup-cleanup created",
        "clusterrole.rbac.authorization.k8s.io/volbackup-cluster-reader created",
        "deployment.apps/volbackup-populator created",
        "volumepopulator.populator.storage.k8s.io/volbackup-volumebackup created",
    ] {
        assert!(lines.contains(&expect), "no {expect:?} in {}", out.stdout);
    }
    for (name, rv) in versions(&env, SYSTEM).await {
        assert!(rv.is_some(), "{name} was not created");
    }
    let deployments = ar("apps", "v1", "Deployment", "deployments");
    let d = get(&env, &deployments, Some(SYSTEM), "volbackup-populator")
        .await
        .unwrap();
    assert!(
        d["status"]["availableReplicas"].as_i64().unwrap_or(0) >= 1,
        "install returned before the populator was available: {}",
        d["status"]
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    // This build's image, from the test registry (VOLBACKUP_IMAGE), tagged with the version.
    let image = env.image.clone();
    assert!(
        image.ends_with(&format!(
            "/volbackup/volbackup:{}",
            env!("CARGO_PKG_VERSION")
        )),
        "{image}"
    );
    assert_eq!(c["image"], json!(image));
    assert_eq!(
        c["args"].as_array().unwrap()[..5],
        json!(["populator", "--namespace", SYSTEM, "--image", image])
            .as_array()
            .unwrap()[..]
    );
    let pods = api(&env, &pods_ar(), Some(SYSTEM))
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=populator"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    let pod = serde_json::to_value(&pods.items[0]).unwrap();
    assert_eq!(pod["status"]["phase"], "Running", "{}", pod["status"]);
    assert_eq!(pod["spec"]["serviceAccountName"], "volbackup-populator");
    // Pulled from the registry and run by runc as the image's non-root user.
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["image"], json!(image));
    assert!(
        status["containerID"]
            .as_str()
            .unwrap_or("")
            .starts_with("runc://"),
        "{status}"
    );
    let pulled = env
        .list(&ar("", "v1", "Event", "events"), false, None)
        .await
        .into_iter()
        .any(|e| {
            e["reason"] == "Pulled" && e["message"].as_str().is_some_and(|m| m.contains(&image))
        });
    assert!(pulled, "no Pulled event for {image}");

    // Again: nothing moves.
    let before = versions(&env, SYSTEM).await;
    let again = env.plugin(&["install"], &[]).await;
    assert_eq!(again.code, 0, "second install failed: {}", again.stderr);
    let lines: Vec<&str> = again.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}", again.stdout);
    for l in &lines {
        assert!(l.ends_with(" unchanged"), "second install changed {l:?}");
    }
    assert_eq!(
        versions(&env, SYSTEM).await,
        before,
        "a resourceVersion moved"
    );

    // Without a terminal and without --yes: refused, nothing deleted.
    env.create(&backups_ar(), backup_object("kept")).await;
    let refused = env.plugin(&["uninstall"], &[]).await;
    assert_one_line_failure(&refused, "pass --yes");
    assert_eq!(
        versions(&env, SYSTEM).await,
        before,
        "uninstall without --yes changed something"
    );

    let gone = env.plugin(&["uninstall", "--yes"], &[]).await;
    assert_eq!(gone.code, 0, "uninstall failed: {}", gone.stderr);
    assert!(
        gone.stdout.contains(
            "customresourcedefinition.apiextensions.k8s.io/volumebackups.volbackup.io deleted"
        ),
        "{}",
        gone.stdout
    );
    for (name, rv) in versions(&env, SYSTEM).await {
        assert!(rv.is_none(), "{name} is still there after uninstall");
    }
    // The populator's pod went with its namespace; the other namespaces are untouched.
    assert!(
        api(&env, &pods_ar(), Some(SYSTEM))
            .list(&Default::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(true)
    );
    assert!(
        get(&env, &ar("", "v1", "Namespace", "namespaces"), None, NS)
            .await
            .is_some()
    );

    // Idempotent: a second uninstall finds nothing and succeeds.
    let twice = env.plugin(&["uninstall", "--yes"], &[]).await;
    assert_eq!(twice.code, 0, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("nothing to delete"),
        "{}",
        twice.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_dry_run_prints_the_manifests_of_kubectl_apply_k_and_creates_nothing() {
    let env = Env::start().await;
    // Without VOLBACKUP_IMAGE: the release image of this very version.
    let out = env
        .plugin(&["install", "--dry-run"], &[("VOLBACKUP_IMAGE", "")])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let docs = parse_stream(&out.stdout);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        json!(format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION")))
    );
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "Deployment",
            "VolumePopulator"
        ]
    );
    for (name, rv) in versions(&env, SYSTEM).await {
        if !name.starts_with("customresourcedefinitions/") {
            assert!(rv.is_none(), "--dry-run created {name}");
        }
    }

    // The checked-in kustomization builds the same objects.
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let k = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&manifests)
        .output()
        .expect("kubectl is on PATH (the e2e tests need it)");
    assert!(
        k.status.success(),
        "kubectl kustomize manifests/ failed: {}",
        String::from_utf8_lossy(&k.stderr)
    );
    let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
    let mut ours: Vec<Value> = docs.iter().cloned().map(normalize).collect();
    let mut theirs: Vec<Value> = parse_stream(&String::from_utf8_lossy(&k.stdout))
        .into_iter()
        .map(normalize)
        .collect();
    ours.sort_by_key(key);
    theirs.sort_by_key(key);
    assert_eq!(
        ours, theirs,
        "install --dry-run and kubectl kustomize differ"
    );

    // Another namespace and image reach every reference.
    let out = env
        .plugin(
            &[
                "install",
                "--dry-run",
                "-n",
                "ops",
                "--image",
                "reg.example/vb:dev",
            ],
            &[],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("volbackup-system"), "{}", out.stdout);
    let docs = parse_stream(&out.stdout);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(d["metadata"]["namespace"], "ops");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()[..5],
        json!([
            "populator",
            "--namespace",
            "ops",
            "--image",
            "reg.example/vb:dev"
        ])
        .as_array()
        .unwrap()[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_without_the_volume_populator_crd_says_how_to_get_it_and_creates_nothing() {
    let env = Env::start().await;
    api(&env, &crd_ar(), None)
        .delete(
            "volumepopulators.populator.storage.k8s.io",
            &DeleteParams::default(),
        )
        .await
        .expect("delete the VolumePopulator CRD");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(
        &env,
        &crd_ar(),
        None,
        "volumepopulators.populator.storage.k8s.io",
    )
    .await
    .is_some()
    {
        assert!(std::time::Instant::now() < deadline, "the CRD stays");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = env.plugin(&["install"], &[]).await;
    assert_one_line_failure(&out, "volume-data-source-validator");
    assert!(
        out.stderr.contains("kubectl apply -f https://"),
        "{}",
        out.stderr
    );
    for (name, rv) in versions(&env, SYSTEM).await {
        if !name.starts_with("customresourcedefinitions/") {
            assert!(rv.is_none(), "a refused install created {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_fails_install_with_the_cause_and_uninstall_keeps_a_foreign_namespace()
 {
    let env = Env::start().await;
    // Into the test namespace, which volbackup did not create.
    let out = env
        .plugin(
            &["install", "-n", NS, "--image", "registry.invalid/nothing:1"],
            &[],
        )
        .await;
    assert_one_line_failure(&out, "ImagePullBackOff");
    assert!(out.stderr.contains("--image"), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "namespace/{NS} exists (not created by volbackup), left as it is"
        )),
        "{}",
        out.stdout
    );
    let ns = get(&env, &ar("", "v1", "Namespace", "namespaces"), None, NS)
        .await
        .unwrap();
    assert!(
        ns["metadata"]["labels"]["app.kubernetes.io/managed-by"].is_null(),
        "install labelled the user's namespace: {}",
        ns["metadata"]
    );

    // A second install into another namespace would fight over the cluster-wide objects.
    let other = env.plugin(&["install", "--dry-run"], &[]).await;
    assert_eq!(other.code, 0);
    let clash = env.plugin(&["install"], &[]).await;
    assert_one_line_failure(&clash, &format!("already installed in namespace \"{NS}\""));

    env.create(&backups_ar(), backup_object("survivor")).await;
    let out = env
        .plugin(&["uninstall", "-n", NS, "--yes", "--keep-crds"], &[])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("namespace/"), "{}", out.stdout);
    for (r, ons, name) in installed(NS) {
        let o = get(&env, &r, ons.as_deref(), name).await;
        match r.kind.as_str() {
            "CustomResourceDefinition" => assert!(o.is_some(), "--keep-crds deleted the CRD"),
            "Namespace" => {}
            _ => assert!(o.is_none(), "{} {name} is still there", r.kind),
        }
    }
    assert!(
        get(&env, &ar("", "v1", "Namespace", "namespaces"), None, NS)
            .await
            .is_some(),
        "uninstall deleted a namespace volbackup did not create"
    );
    assert!(
        get(&env, &backups_ar(), Some(NS), "survivor")
            .await
            .is_some(),
        "--keep-crds lost a VolumeBackup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_holds_the_binary_its_libraries_and_the_ca_bundle_and_runs_as_nonroot() {
    let env = Env::start().await;
    let reference = env.image.clone();
    let (files, config, ca) = tokio::task::spawn_blocking(move || {
        (
            xtask::image::list_files(&reference).expect("list the image's files"),
            xtask::image::config(&reference).expect("the image's config"),
            xtask::image::read_file(&reference, "/etc/ssl/certs/ca-certificates.crt")
                .expect("the image's CA bundle"),
        )
    })
    .await
    .unwrap();
    let libraries: Vec<String> = xtask::image::shared_libraries(&env.bin)
        .unwrap()
        .iter()
        .map(|l| l.display().to_string())
        .collect();
    let mut allowed: Vec<String> = [
        "/usr/local/bin/kubectl-volbackup",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    allowed.extend(libraries.iter().cloned());
    let regular: Vec<&String> = files.iter().filter(|f| !f.ends_with('/')).collect();
    for f in &regular {
        assert!(
            allowed.contains(f),
            "the image holds {f}, which it does not need"
        );
    }
    for f in &allowed {
        assert!(files.contains(f), "the image lacks {f}: {files:?}");
    }
    // The CA bundle is whole (S3 over TLS verifies against it).
    let ca = String::from_utf8(ca).expect("PEM text");
    assert!(
        ca.matches("-----BEGIN CERTIFICATE-----").count() > 50,
        "the CA bundle holds too few certificates"
    );
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        json!(["/usr/local/bin/kubectl-volbackup"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_populators_service_account_may_start_pods_only_in_its_own_namespace() {
    let env = Env::start().await;
    let out = env.plugin(&["install"], &[]).await;
    assert_eq!(out.code, 0, "install failed: {}", out.stderr);
    // A client acting as the populator's ServiceAccount (impersonation, as a stolen token).
    let kc = kube::config::Kubeconfig::read_from(env.cluster.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{SYSTEM}:volbackup-populator"
    ));
    let as_populator = kube::Client::try_from(config).unwrap();
    let pod: DynamicObject = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stolen"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}))
    .unwrap();
    for ns in [NS, "kube-system"] {
        let pods: Api<DynamicObject> = Api::namespaced_with(as_populator.clone(), ns, &pods_ar());
        match pods.create(&Default::default(), &pod).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{ns}: {e:?}");
                assert!(e.message.contains("volbackup-populator"), "{}", e.message);
            }
            other => panic!("the populator's account created a pod in {ns}: {other:?}"),
        }
        let pvcs: Api<DynamicObject> = Api::namespaced_with(as_populator.clone(), ns, &pvcs_ar());
        assert!(
            matches!(pvcs.delete("anything", &DeleteParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
            "the populator's account may delete claims in {ns}"
        );
    }
    // In its own namespace it may (a dry run, so nothing starts).
    let own: Api<DynamicObject> = Api::namespaced_with(as_populator, SYSTEM, &pods_ar());
    own.create(
        &kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        },
        &pod,
    )
    .await
    .expect("the populator may create pods in its own namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_refuses_a_volume_backup_whose_snapshot_or_secret_is_not_well_formed() {
    let env = Env::start().await;
    let api = api(&env, &backups_ar(), Some(NS));
    for (field, spec, expect) in [
        (
            "spec.snapshot",
            json!({"repository": {"secretRef": {"name": "volbackup-repository"}}, "snapshot": "latest"}),
            "spec.snapshot in body should match '^[0-9a-f]{64}$'",
        ),
        (
            "spec.repository.secretRef.name",
            json!({"repository": {"secretRef": {"name": "Not/A Name"}}, "snapshot": "ab".repeat(32)}),
            "spec.repository.secretRef.name in body should match",
        ),
        (
            "spec.path",
            json!({"repository": {"secretRef": {"name": "s"}}, "snapshot": "ab".repeat(32), "path": "relative.img"}),
            "spec.path in body should match",
        ),
    ] {
        let obj: DynamicObject =
            serde_json::from_value(json!({"apiVersion": "volbackup.io/v1alpha1",
            "kind": "VolumeBackup", "metadata": {"name": "bad"}, "spec": spec}))
            .unwrap();
        match api.create(&Default::default(), &obj).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{field}: {e:?}");
                assert!(e.message.contains(expect), "{field}: {}", e.message);
            }
            other => panic!("a VolumeBackup with a bad {field} was accepted: {other:?}"),
        }
    }
    let good: DynamicObject = serde_json::from_value(json!({"apiVersion": "volbackup.io/v1alpha1",
        "kind": "VolumeBackup", "metadata": {"name": "good"},
        "spec": {"repository": {"secretRef": {"name": "volbackup-repository"}}, "snapshot": "ab".repeat(32), "path": "/data.img"}}))
    .unwrap();
    api.create(&Default::default(), &good)
        .await
        .expect("a well-formed VolumeBackup is accepted");
}

/// A client-certificate user with a kubeconfig of their own; returns the kubeconfig's path.
fn user_kubeconfig(env: &Env, name: &str) -> std::path::PathBuf {
    use base64::Engine;
    let (cert, key) = env
        .cluster
        .issue_client_cert(name, &["people"])
        .expect("client cert");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kc = env.dir.path().join(format!("{name}.kubeconfig"));
    env.cluster
        .write_kubeconfig(
            &kc,
            json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
            NS,
        )
        .expect("kubeconfig");
    kc
}

/// Grants `user` the shipped ClusterRole `role` in the test namespace, and the cluster-scoped
/// reads cluster-wide, as the comments of manifests/user-roles.yaml say to.
async fn grant(env: &Env, user: &str, role: &str) {
    let rbac = |kind: &str, plural: &str| ar("rbac.authorization.k8s.io", "v1", kind, plural);
    let subjects = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]);
    env.create(
        &rbac("RoleBinding", "rolebindings"),
        json!({"metadata": {"name": format!("{user}-{role}"), "namespace": NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": subjects}),
    )
    .await;
    env.create(
        &rbac("ClusterRoleBinding", "clusterrolebindings"),
        json!({"metadata": {"name": format!("{user}-volbackup-cluster-reader")},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "volbackup-cluster-reader"},
               "subjects": subjects}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_user_roles_back_up_and_restore_and_a_restorer_cannot_touch_secrets_or_status()
{
    let env = Env::start().await;
    crate::restore::install(&env).await;
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    env.run_pod(
        "fill",
        "vol",
        "Block",
        "dd if=/dev/urandom of=/dev/xvda bs=1M count=2 2>/dev/null && sync",
    )
    .await;
    let bob = user_kubeconfig(&env, "bob");
    let alice = user_kubeconfig(&env, "alice");
    grant(&env, "bob", "volbackup-user").await;
    grant(&env, "alice", "volbackup-restorer").await;
    let repo = env.repo.to_str().unwrap();

    // Bob, with volbackup-user, backs up.
    let out = env
        .plugin(
            &[
                "create",
                "vol",
                "--kubeconfig",
                bob.to_str().unwrap(),
                "--repo",
                repo,
            ],
            &[],
        )
        .await;
    assert_eq!(
        out.code, 0,
        "create as volbackup-user failed: {}",
        out.stderr
    );
    let backups = env
        .list(&backups_ar(), true, Some("volbackup.io/pvc=vol"))
        .await;
    assert_eq!(backups.len(), 1, "{backups:?}");
    let name = backups[0]["metadata"]["name"].as_str().unwrap().to_string();
    // Its temporary claim and snapshot went with its mover pod, though Bob may delete neither.
    env.assert_nothing_temporary_left().await;

    // What the backup operator may not do: delete a claim or a snapshot, list Secrets.
    let bob_client = {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&bob).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("bob's config");
        kube::Client::try_from(config).expect("bob's client")
    };
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("volbackup-user could {what}: {other:?}"),
    };
    let claims: Api<DynamicObject> = Api::namespaced_with(bob_client.clone(), NS, &pvcs_ar());
    forbidden(
        claims.delete("vol", &Default::default()).await.map(|_| ()),
        "delete a PVC",
    );
    let snapshots: Api<DynamicObject> =
        Api::namespaced_with(bob_client.clone(), NS, &snapshots_ar());
    forbidden(
        snapshots
            .delete("any", &Default::default())
            .await
            .map(|_| ()),
        "delete a VolumeSnapshot",
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bob_client.clone(), NS);
    forbidden(
        secrets.list(&Default::default()).await.map(|_| ()),
        "list every Secret",
    );
    assert!(
        env.list(&pvcs_ar(), true, None)
            .await
            .iter()
            .any(|p| p["metadata"]["name"] == "vol"),
        "the PVC is gone"
    );

    // Alice, with volbackup-restorer, restores it (no Secret read, no record written).
    let out = env
        .plugin(
            &[
                "restore",
                &name,
                "--to",
                "back",
                "--wait",
                "--timeout",
                "120s",
                "--kubeconfig",
                alice.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(
        out.code, 0,
        "restore as volbackup-restorer failed: {}",
        out.stderr
    );
    let restored = crate::restore::volume_path(&env, NS, "back").await;
    let original = crate::restore::volume_path(&env, NS, "vol").await;
    assert!(
        std::fs::read(restored).unwrap() == std::fs::read(original).unwrap(),
        "the restored volume differs"
    );

    // What the restorer may not do: read a Secret, or write a VolumeBackup's status.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&alice).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("alice's config");
    let client = kube::Client::try_from(config).expect("alice's client");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let denied = secrets.get(&repository_secret(&env)).await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied}"
    );
    let records: Api<DynamicObject> = Api::namespaced_with(client, NS, &backups_ar());
    let denied = records
        .patch_status(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"phase": "Completed"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(s) if s.code == 403),
        "{denied}"
    );
}
