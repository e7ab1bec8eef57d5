//! Objects as the API server keeps them: create, update, conflicts, list and watch,
//! patches, the status subresource and CRD validation, finalizers and garbage collection.

use super::*;

#[tokio::test]
async fn crud_conflicts_and_generate_name_behave_like_the_api_server() {
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("one", &[]))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 36, "uid is a UUID");
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();

    // Update with the current resourceVersion works and moves it forward.
    let mut c = created.clone();
    c.data = Some(BTreeMap::from([("k".to_string(), "w".to_string())]));
    let updated = cms
        .replace("one", &PostParams::default(), &c)
        .await
        .unwrap();
    let rv2: u64 = updated
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    assert_eq!(updated.metadata.uid.as_deref(), Some(uid.as_str()));

    // The stale one is a 409 with the real message.
    let e = status(
        cms.replace("one", &PostParams::default(), &c)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on configmaps \"one\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let e = status(
        cms.create(&PostParams::default(), &cm("one", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (409, "AlreadyExists", "configmaps \"one\" already exists")
    );

    let e = status(cms.get("nope").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );

    let mut g = cm("", &[]);
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let a = cms.create(&PostParams::default(), &g).await.unwrap();
    let b = cms.create(&PostParams::default(), &g).await.unwrap();
    let (an, bn) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(an.starts_with("gen-") && an.len() == 9, "{an}");
    assert_ne!(an, bn);

    let e = status(
        cms.create(&PostParams::default(), &cm("Bad_Name", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(e.message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", e.message);

    // A namespace that does not exist.
    let other: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "missing");
    let e = status(
        other
            .create(&PostParams::default(), &cm("x", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"missing\" not found")
    );

    // Delete, then it is gone.
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(status(cms.get("one").await.unwrap_err()).code, 404);

    // Dry run stores nothing.
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let d = cms.create(&pp, &cm("dry", &[])).await.unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("dry"));
    assert_eq!(status(cms.get("dry").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn list_and_watch_follow_resource_versions_and_selectors() {
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &cm("a", &[("app", "x"), ("tier", "db")]),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("b", &[("app", "y")]))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &cm("c", &[("app", "z"), ("tier", "web")]),
    )
    .await
    .unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let sel = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&sel("app=x")).await.unwrap()), ["a"]);
    assert_eq!(names(cms.list(&sel("app!=x")).await.unwrap()), ["b", "c"]);
    assert_eq!(
        names(cms.list(&sel("app in (x,z)")).await.unwrap()),
        ["a", "c"]
    );
    assert_eq!(
        names(cms.list(&sel("app notin (x,z)")).await.unwrap()),
        ["b"]
    );
    assert_eq!(names(cms.list(&sel("tier")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(cms.list(&sel("!tier")).await.unwrap()), ["b"]);
    assert_eq!(
        names(cms.list(&sel("app in (x,z),tier=web")).await.unwrap()),
        ["c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.namespace=default,metadata.name!=b"))
                .await
                .unwrap()
        ),
        ["a", "c"]
    );
    // Chunked lists.
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let cont = first.metadata.continue_.clone().expect("continue token");
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&cont))
        .await
        .unwrap();
    assert_eq!(names(rest), ["c"]);

    // List, change things, then watch from the list's resourceVersion: every change after it,
    // in order, filtered by the selector; an object leaving the selector is DELETED for it.
    let list = cms.list(&sel("app")).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &cm("d", &[("app", "w")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("nolabel", &[]))
        .await
        .unwrap();
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": null}}})),
    )
    .await
    .unwrap();
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().labels("app").timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("stream open");
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(seen, ["MODIFIED a", "ADDED d", "DELETED b", "DELETED c"]);
    // Changes after the watch started arrive too.
    cms.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "3"}})),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, WatchEvent::Modified(ref o) if o.metadata.name.as_deref() == Some("d")),
        "{ev:?}"
    );

    // A resourceVersion older than the kept history: 410 Expired as an ERROR event.
    sim.cluster.store().set_history_limit(2);
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("h{i}"), &[]))
            .await
            .unwrap();
    }
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), old.try_next())
        .await
        .unwrap()
    {
        Ok(Some(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {rv} (")),
                "{}",
                e.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches_change_objects_like_the_api_server() {
    let sim = start().await;
    let deps: Api<Deployment> = Api::namespaced(sim.client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"a": "1"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [
                {"name": "main", "image": "busybox", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "busybox"}
            ]}
        }}
    }))
    .unwrap();
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // Strategic merge: containers merge by name, env by name, `$patch: delete` removes.
    let p = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "busybox:2", "env": [{"name": "B", "value": "2"}]},
        {"name": "side", "$patch": "delete"},
        {"name": "new", "image": "x"}
    ]}}}});
    let out = deps
        .patch("web", &PatchParams::default(), &Patch::Strategic(p))
        .await
        .unwrap();
    let cs = serde_json::to_value(&out).unwrap()["spec"]["template"]["spec"]["containers"].clone();
    assert_eq!(cs[0]["name"], "main");
    assert_eq!(cs[0]["image"], "busybox:2");
    assert_eq!(
        cs[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(cs[1]["name"], "new");
    assert_eq!(cs.as_array().unwrap().len(), 2);
    assert_eq!(
        out.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );

    // Merge patch replaces lists and deletes with null.
    let out = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "b": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        out.metadata.labels.unwrap(),
        BTreeMap::from([("b".to_string(), "2".to_string())])
    );
    assert_eq!(
        out.metadata.generation,
        Some(2),
        "a metadata change keeps generation"
    );

    // JSON patch, including a failing `test`.
    let jp: json_patch_ops::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/b", "value": "2"},
        {"op": "add", "path": "/metadata/labels/c", "value": "3"}
    ]))
    .unwrap();
    let out = deps
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(out.metadata.labels.as_ref().unwrap()["c"], "3");
    let jp: json_patch_ops::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/b", "value": "wrong"},
        {"op": "add", "path": "/metadata/labels/d", "value": "4"}
    ]))
    .unwrap();
    let e = status(
        deps.patch("web", &PatchParams::default(), &Patch::<()>::Json(jp))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        !deps
            .get("web")
            .await
            .unwrap()
            .metadata
            .labels
            .unwrap()
            .contains_key("d"),
        "a failed test changes nothing"
    );

    // Server-side apply: creates when missing, and a manager's re-apply drops what it no
    // longer applies while keeping other managers' fields.
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let ssa = PatchParams::apply("tester").force();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"x": "1", "y": "2"}}, "data": {"a": "1", "b": "2"}});
    cms.patch("cfg", &ssa, &Patch::Apply(&applied))
        .await
        .unwrap();
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"other": "keep"}}})),
    )
    .await
    .unwrap();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"x": "1"}}, "data": {"a": "9"}});
    let out = cms
        .patch("cfg", &ssa, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(
        out.data.unwrap(),
        BTreeMap::from([("a".to_string(), "9".to_string())])
    );
    assert_eq!(
        out.metadata.labels.unwrap(),
        BTreeMap::from([
            ("x".to_string(), "1".to_string()),
            ("other".to_string(), "keep".to_string())
        ])
    );
}

/// kube's `Patch::Json` takes json-patch 4's type (the same version this crate uses).
mod json_patch_ops {
    pub use json_patch::Patch;
}

#[tokio::test]
async fn status_subresource_and_crd_validation_work_for_custom_resources() {
    let sim = start().await;
    let widgets = install_widgets(&sim.client).await;

    // Validation: types, required, enum, minimum — 422 with the real wording.
    let e = status(
        widgets
            .create(
                &PostParams::default(),
                &widget("bad", json!({"size": "big", "mode": "Tape"})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "Widget.example.com \"bad\" is invalid: [spec.mode: Unsupported value: \"Tape\": supported values: \"Block\", \"Filesystem\", spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"]"
    );
    let e = status(
        widgets
            .create(&PostParams::default(), &widget("bad", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Widget.example.com \"bad\" is invalid: spec.size: Required value"
    );
    let e = status(
        widgets
            .create(&PostParams::default(), &widget("bad", json!({"size": 0})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Widget.example.com \"bad\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
    );

    // Defaults are applied and unknown fields pruned.
    let w = widgets
        .create(
            &PostParams::default(),
            &widget("w", json!({"size": 2, "unknown": true})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"], json!({"size": 2, "mode": "Filesystem"}));
    assert_eq!(w.metadata.generation, Some(1));

    // Status through the main resource is ignored; through /status only status changes.
    let mut upd = w.clone();
    upd.data["status"] = json!({"phase": "Ready"});
    upd.data["spec"]["size"] = json!(3);
    let after = widgets
        .replace("w", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert!(
        after.data.get("status").is_none(),
        "status ignored on the main resource"
    );
    assert_eq!(after.data["spec"]["size"], 3);
    assert_eq!(after.metadata.generation, Some(2));
    let after = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 9}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(after.data["status"]["phase"], "Ready");
    assert_eq!(after.data["spec"]["size"], 3, "spec ignored on /status");
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "status changes keep generation"
    );

    // Strategic merge patch is not served for custom resources (415), as in the real server.
    let e = status(
        widgets
            .patch(
                "w",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"size": 4}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 415);

    // The kind is in discovery (kube-rs' aggregated and legacy discovery).
    let disco = kube::Discovery::new(sim.client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (ar, caps) = disco
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let legacy = kube::Discovery::new(sim.client.clone())
        .run()
        .await
        .unwrap();
    assert!(
        legacy
            .resolve_gvk(&GroupVersionKind::gvk(
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshot"
            ))
            .is_some()
    );

    // Deleting the CRD deletes its objects and stops serving the kind.
    let crds: Api<DynamicObject> = Api::all_with(
        sim.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        status(crds.get("widgets.example.com").await.unwrap_err()).code,
        404
    );
    assert_eq!(status(widgets.get("w").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn finalizers_garbage_collection_and_namespace_deletion_follow_kubernetes() {
    let sim = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let mut c = cm("held", &[]);
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms
        .get("held")
        .await
        .expect("still there while a finalizer is set");
    assert!(held.metadata.deletion_timestamp.is_some());
    let e = status(
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        e.code, 422,
        "no new finalizers once deleting: {}",
        e.message
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(
        status(cms.get("held").await.unwrap_err()).code,
        404,
        "gone once the finalizer is removed"
    );

    // Background garbage collection through ownerReferences.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.clone().unwrap()}]);
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), "default");
    for n in ["dep1", "dep2"] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": n, "ownerReferences": owner_ref}}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert_eq!(status(secrets.get("dep1").await.unwrap_err()).code, 404);
    assert_eq!(status(secrets.get("dep2").await.unwrap_err()).code, 404);

    // Orphan propagation keeps dependents and removes their reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner2", &[]))
        .await
        .unwrap();
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "orphan", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid.clone().unwrap()}
    ]}}))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    cms.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    assert_eq!(status(cms.get("owner2").await.unwrap_err()).code, 404);
    let kept = secrets
        .get("orphan")
        .await
        .expect("orphaned dependent kept");
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Deleting a namespace deletes what is in it, then the namespace.
    let nss: Api<Namespace> = Api::all(sim.client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "scratch"}})).unwrap(),
    )
    .await
    .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client.clone(), "scratch");
    sas.get("default")
        .await
        .expect("the ServiceAccount controller adds `default`");
    let scratch: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "scratch");
    scratch
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    nss.delete("scratch", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status(scratch.get("x").await.unwrap_err()).code, 404);
    assert_eq!(status(nss.get("scratch").await.unwrap_err()).code, 404);
}
