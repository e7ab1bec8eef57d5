//! kubesim's API server, driven through a real kube-rs client and the real kubectl.
//! Each test starts its own cluster in a temporary directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, Pod, Secret, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, config::KubeConfigOptions, config::Kubeconfig};
use serde_json::{Value, json};
use volbackup_e2e::kubesim::{Cluster, ClusterOptions};

struct Sim {
    _dir: tempfile::TempDir,
    cluster: Cluster,
    client: Client,
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(cfg).expect("client")
}

async fn start() -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(ClusterOptions::new(dir.path()))
        .await
        .expect("cluster starts");
    let client = client_for(cluster.kubeconfig_path()).await;
    Sim {
        _dir: dir,
        cluster,
        client,
    }
}

fn status(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"}
    }))
    .unwrap()
}

fn widget_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1},
                        "mode": {"type": "string", "enum": ["Block", "Filesystem"], "default": "Filesystem"}
                    }},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
                }}}
            }]
        }
    })
}

async fn install_widgets(client: &Client) -> Api<DynamicObject> {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.create(
        &PostParams::default(),
        &serde_json::from_value(widget_crd()).unwrap(),
    )
    .await
    .expect("CRD created");
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.com", "v1", "Widget"),
            "widgets",
        ),
    )
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec})).unwrap()
}

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
