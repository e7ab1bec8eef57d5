//! Who may do what: RBAC with the real messages, injected faults and a restarted API server,
//! events and access reviews, Secrets' `stringData`.

use super::*;

#[tokio::test]
async fn rbac_allows_what_roles_grant_and_denies_the_rest_with_the_real_messages() {
    let sim = start().await;
    let c = sim.client.clone();
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
    )
    .await
    .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "app");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap(),
    )
    .await
    .unwrap();
    let roles: Api<Role> = Api::namespaced(c.clone(), "app");
    roles
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "pod-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["allowed"], "verbs": ["get"]}
        ]}))
        .unwrap())
        .await
        .unwrap();
    let rbs: Api<RoleBinding> = Api::namespaced(c.clone(), "app");
    rbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "robot-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "app"}]}))
        .unwrap(),
    )
    .await
    .unwrap();
    // A ClusterRole bound by a RoleBinding grants it in that namespace only.
    let crs: Api<ClusterRole> = Api::all(c.clone());
    crs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "secret-reader"}, "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}
        ]}))
        .unwrap(),
    )
    .await
    .unwrap();
    let other_rbs: Api<RoleBinding> = Api::namespaced(c.clone(), "default");
    other_rbs
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "robot-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "secret-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "app"}]})).unwrap())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "app");
    cms.create(&PostParams::default(), &cm("allowed", &[]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("denied", &[]))
        .await
        .unwrap();

    let token = sim.cluster.service_account_token("app", "robot");
    let kc = sim.cluster.dir().join("robot.kubeconfig");
    sim.cluster
        .write_kubeconfig(&kc, json!({"token": token}), "app")
        .unwrap();
    let robot = client_for(&kc).await;
    let user = "system:serviceaccount:app:robot";

    Api::<Pod>::namespaced(robot.clone(), "app")
        .list(&ListParams::default())
        .await
        .expect("pods list allowed in app");
    let e = status(
        Api::<Pod>::namespaced(robot.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        format!(
            "pods is forbidden: User \"{user}\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        )
    );
    let e = status(
        Api::<Pod>::namespaced(robot.clone(), "app")
            .watch(&WatchParams::default(), "0")
            .await
            .map(|_| ())
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            "pods is forbidden: User \"{user}\" cannot watch resource \"pods\" in API group \"\" in the namespace \"app\""
        )
    );
    let e = status(
        Api::<Secret>::namespaced(robot.clone(), "app")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            "secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"app\""
        )
    );
    Api::<Secret>::namespaced(robot.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("ClusterRole via RoleBinding in default");
    let e = status(
        Api::<PersistentVolume>::all(robot.clone())
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            "persistentvolumes is forbidden: User \"{user}\" cannot list resource \"persistentvolumes\" in API group \"\" at the cluster scope"
        )
    );
    let robot_cms: Api<ConfigMap> = Api::namespaced(robot.clone(), "app");
    robot_cms
        .get("allowed")
        .await
        .expect("resourceNames grants this one");
    let e = status(robot_cms.get("denied").await.unwrap_err());
    assert_eq!(
        e.message,
        format!(
            "configmaps \"denied\" is forbidden: User \"{user}\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"app\""
        )
    );
    let e = status(
        Api::<Pod>::namespaced(robot.clone(), "app")
            .patch_status("p", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        format!(
            "pods \"p\" is forbidden: User \"{user}\" cannot patch resource \"pods/status\" in API group \"\" in the namespace \"app\""
        )
    );

    // Unknown tokens are 401; so is a token of a deleted ServiceAccount.
    let bad = sim.cluster.dir().join("bad.kubeconfig");
    sim.cluster
        .write_kubeconfig(&bad, json!({"token": "not-a-token"}), "default")
        .unwrap();
    let e = status(
        Api::<Pod>::namespaced(client_for(&bad).await, "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.message.as_str()), (401, "Unauthorized"));
    sas.delete("robot", &DeleteParams::default()).await.unwrap();
    let e = status(
        Api::<Pod>::namespaced(robot.clone(), "app")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 401);

    // Client certificates: CN is the user, O the groups.
    let (cert, key) = sim.cluster.issue_client_cert("alice", &["devs"]).unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ckc = sim.cluster.dir().join("alice.kubeconfig");
    sim.cluster
        .write_kubeconfig(
            &ckc,
            json!({"client-certificate-data": b64(&cert), "client-key-data": b64(&key)}),
            "default",
        )
        .unwrap();
    let alice = client_for(&ckc).await;
    let e = status(
        Api::<Pod>::namespaced(alice.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    let crbs: Api<DynamicObject> = Api::all_with(
        c.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
            "clusterrolebindings",
        ),
    );
    crbs.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "devs-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}]})).unwrap())
        .await
        .unwrap();
    Api::<Pod>::namespaced(alice, "default")
        .list(&ListParams::default())
        .await
        .expect("group devs is cluster-admin now");

    // Exec credential plugins: a token mapped to a user.
    sim.cluster.add_user_token("exec-token-123", "bob", &[]);
    let script = sim.cluster.dir().join("cred.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"exec-token-123\"}}'\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let ekc = sim.cluster.dir().join("bob.kubeconfig");
    sim.cluster
        .write_kubeconfig(&ekc, json!({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": script, "interactiveMode": "Never"}}), "default")
        .unwrap();
    let e = status(
        Api::<Pod>::namespaced(client_for(&ekc).await, "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
}

#[tokio::test]
async fn faults_fail_and_delay_requests_and_a_restarted_api_server_keeps_its_objects() {
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    cms.create(&PostParams::default(), &cm("keep", &[]))
        .await
        .unwrap();
    sim.cluster.faults().fail_next("get", "configmaps", 2, 500);
    for _ in 0..2 {
        let e = status(cms.get("keep").await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (500, "InternalError"));
    }
    cms.get("keep").await.expect("third get passes");
    // kube-rs retries 503 by itself: two injected 503s are absorbed by its retry policy.
    sim.cluster.faults().fail_next("get", "configmaps", 2, 503);
    cms.get("keep")
        .await
        .expect("kube-rs retried through the 503s");
    // Other verbs are not affected.
    sim.cluster
        .faults()
        .fail_next("create", "configmaps", 1, 500);
    cms.list(&ListParams::default())
        .await
        .expect("list not affected");
    assert_eq!(
        status(
            cms.create(&PostParams::default(), &cm("x", &[]))
                .await
                .unwrap_err()
        )
        .code,
        500
    );

    sim.cluster
        .faults()
        .delay("list", "configmaps", Duration::from_secs(3));
    let t = std::time::Instant::now();
    cms.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    // Cleared: no longer held back (a list on a loaded machine takes well under the delay).
    sim.cluster.faults().clear();
    let t = std::time::Instant::now();
    cms.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    let rv = cms.get("keep").await.unwrap().metadata.resource_version;
    sim.cluster.restart_api_server().await.unwrap();
    let fresh = client_for(sim.cluster.kubeconfig_path()).await;
    let got = Api::<ConfigMap>::namespaced(fresh, "default")
        .get("keep")
        .await
        .expect("object survives the restart");
    assert_eq!(got.metadata.resource_version, rv);
}

#[tokio::test]
async fn events_written_through_events_k8s_io_are_core_events_too_and_access_reviews_answer() {
    let sim = start().await;
    let new_events: Api<DynamicObject> = Api::namespaced_with(
        sim.client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("events.k8s.io", "v1", "Event"),
            "events",
        ),
    );
    let ev: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "pvc.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "volbackup.io/populator", "reportingInstance": "populator-0",
        "action": "Populate", "reason": "PopulatorCreated", "type": "Normal", "note": "created the populate pod",
        "regarding": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data", "uid": "u-1", "apiVersion": "v1"}
    }))
    .unwrap();
    new_events
        .create(&PostParams::default(), &ev)
        .await
        .unwrap();
    let core: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(sim.client.clone(), "default");
    let found = core
        .list(
            &ListParams::default()
                .fields("involvedObject.name=data,involvedObject.kind=PersistentVolumeClaim"),
        )
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    let e = &found.items[0];
    assert_eq!(e.message.as_deref(), Some("created the populate pod"));
    assert_eq!(e.reason.as_deref(), Some("PopulatorCreated"));
    assert_eq!(
        e.reporting_component.as_deref(),
        Some("volbackup.io/populator")
    );
    let back = new_events.get("pvc.1").await.unwrap();
    assert_eq!(back.data["regarding"]["name"], "data");
    assert_eq!(back.data["note"], "created the populate pod");

    // SelfSubjectAccessReview with the caller's RBAC (`kubectl auth can-i`).
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "ro"}})).unwrap(),
    )
    .await
    .unwrap();
    let kc = sim.cluster.dir().join("ro.kubeconfig");
    sim.cluster
        .write_kubeconfig(
            &kc,
            json!({"token": sim.cluster.service_account_token("default", "ro")}),
            "default",
        )
        .unwrap();
    let ro = client_for(&kc).await;
    let ssar = |verb: &str| {
        serde_json::from_value::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(json!({
            "spec": {"resourceAttributes": {"verb": verb, "resource": "pods", "namespace": "default"}}
        }))
        .unwrap()
    };
    let reviews: Api<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview> =
        Api::all(ro.clone());
    let r = reviews
        .create(&PostParams::default(), &ssar("list"))
        .await
        .unwrap();
    assert!(!r.status.unwrap().allowed);
    let admin_reviews: Api<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview> =
        Api::all(sim.client.clone());
    assert!(
        admin_reviews
            .create(&PostParams::default(), &ssar("list"))
            .await
            .unwrap()
            .status
            .unwrap()
            .allowed
    );
}

#[tokio::test]
async fn secret_string_data_is_merged_into_data_and_never_returned() {
    let sim = start().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(sim.client.clone(), "default");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"},
        "data": {"kept": "a2VwdA==", "both": "b2xk"},
        "stringData": {"both": "new", "plain": "p4ss"}
    }))
    .unwrap();
    let created = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert!(created.string_data.is_none(), "stringData was returned");
    let read = secrets.get("creds").await.unwrap();
    assert!(read.string_data.is_none(), "stringData was stored");
    let data: BTreeMap<String, String> = read
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    assert_eq!(
        data,
        BTreeMap::from([
            ("both".to_string(), "new".to_string()),
            ("kept".to_string(), "kept".to_string()),
            ("plain".to_string(), "p4ss".to_string()),
        ])
    );
}
