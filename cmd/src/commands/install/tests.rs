//! Unit tests of the manifests, the settings and the installed-check.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize as _;
use serde_yaml::Value as Yaml;

use crate::cli::{POPULATOR_NAMESPACE, PopulatorSettings};

use super::*;
use super::{apply::*, installed::*, objects::*, settings::*, uninstall::*, wait::*};

fn defaults() -> Vec<Object> {
    objects(
        POPULATOR_NAMESPACE,
        &volbackup_populator::mover::default_image(),
        DEFAULT_POD_SECURITY,
        &[],
    )
    .unwrap()
}

fn find<'a>(objs: &'a [Object], kind: &str) -> &'a Object {
    objs.iter()
        .find(|o| o.kind.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

#[test]
fn the_checked_in_manifests_are_the_defaults_unchanged() {
    for (file, text) in FILES {
        for de in serde_yaml::Deserializer::from_str(text) {
            let doc = Yaml::deserialize(de).unwrap();
            if doc.is_null() {
                continue;
            }
            let mut custom = doc.clone();
            customize(
                &mut custom,
                POPULATOR_NAMESPACE,
                &volbackup_populator::mover::default_image(),
                DEFAULT_POD_SECURITY,
                &[],
            );
            assert_eq!(
                doc,
                custom,
                "{file} does not hold the defaults (namespace {POPULATOR_NAMESPACE}, image {}): update it",
                volbackup_populator::mover::default_image()
            );
        }
    }
}

#[test]
fn objects_come_in_dependency_order() {
    let kinds: Vec<&str> = defaults().iter().map(|o| o.kind.kind).collect();
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
}

#[test]
fn another_namespace_and_image_replace_every_default() {
    let objs = objects("backup-ops", "registry.example/vb:dev", "privileged", &[]).unwrap();
    let text = render(&objs).unwrap();
    assert!(!text.contains("volbackup-system"), "{text}");
    assert!(!text.contains("ghcr.io/volbackup"), "{text}");
    assert_eq!(
        str_at(&find(&objs, "Namespace").body, &["metadata", "name"]),
        Some("backup-ops")
    );
    for o in &objs {
        if o.kind.namespaced {
            assert_eq!(
                str_at(&o.body, &["metadata", "namespace"]),
                Some("backup-ops"),
                "{}",
                o.display()
            );
        }
    }
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(
            find(&objs, kind).body["subjects"][0]["namespace"].as_str(),
            Some("backup-ops")
        );
    }
    let c = &find(&objs, "Deployment").body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"].as_str(), Some("registry.example/vb:dev"));
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        args[..5],
        [
            "populator",
            "--namespace",
            "backup-ops",
            "--image",
            "registry.example/vb:dev"
        ]
    );
}

#[test]
fn the_deployment_runs_unprivileged_with_the_downward_api() {
    let objs = defaults();
    let spec = &find(&objs, "Deployment").body["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"].as_str(), Some(POPULATOR_NAME));
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert_eq!(spec["securityContext"]["runAsUser"].as_u64(), Some(65532));
    let c = &spec["containers"][0];
    assert_eq!(c["name"].as_str(), Some("populator"));
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"][0].as_str(),
        Some("ALL")
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    for want in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert!(env.contains(&want), "{want:?} not in {env:?}");
    }
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(8080));
    assert_eq!(c["ports"][0]["name"].as_str(), Some("metrics"));
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
}

/// (group, resource) -> verbs granted by the rules of a role.
fn grants(role: &Yaml) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for g in rule["apiGroups"].as_sequence().unwrap() {
            for r in rule["resources"].as_sequence().unwrap() {
                for v in rule["verbs"].as_sequence().unwrap() {
                    out.insert((
                        g.as_str().unwrap().into(),
                        r.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

fn assert_grants(role: &Yaml, group: &str, resource: &str, verbs: &[&str]) {
    let g = grants(role);
    for v in verbs {
        assert!(
            g.contains(&(group.into(), resource.into(), (*v).into())),
            "{resource}.{group} lacks {v}"
        );
    }
}

#[test]
fn the_roles_grant_what_the_controller_does_and_no_more() {
    let objs = defaults();
    let cr = &find(&objs, "ClusterRole").body;
    let role = &find(&objs, "Role").body;
    // Exactly these, cluster-wide: reads, PV and PVC patches, status, events.
    let expected_cluster: BTreeSet<(String, String, String)> = [
        (
            "",
            "persistentvolumes",
            &["get", "list", "watch", "patch"][..],
        ),
        (
            "",
            "persistentvolumeclaims",
            &["get", "list", "watch", "patch"],
        ),
        ("", "secrets", &["get"]),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        (
            "storage.k8s.io",
            "storageclasses",
            &["get", "list", "watch"],
        ),
        ("volbackup.io", "volumebackups", &["get", "list", "watch"]),
        ("volbackup.io", "volumebackups/status", &["get", "patch"]),
    ]
    .iter()
    .flat_map(|(g, r, vs)| {
        vs.iter()
            .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
    })
    .collect();
    assert_eq!(grants(cr), expected_cluster);
    // Creating and deleting happens only in the populator's own namespace.
    assert_grants(
        role,
        "",
        "secrets",
        &["get", "list", "watch", "create", "patch", "delete"],
    );
    assert_grants(role, "", "persistentvolumeclaims", &["create", "delete"]);
    assert_grants(
        role,
        "",
        "pods",
        &["get", "list", "watch", "create", "delete"],
    );
    assert_grants(role, "", "pods/log", &["get"]);
    assert_grants(
        role,
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "patch"],
    );
}

#[test]
fn the_administrators_proxy_reaches_the_populator_and_credentials_in_it_are_refused() {
    let settings = PopulatorSettings {
        proxy: Some("http://proxy.example:3128".into()),
        no_proxy: Some("10.0.0.0/8,.svc".into()),
        ..Default::default()
    };
    let extra = populator_args(&settings).unwrap();
    let objs = objects(POPULATOR_NAMESPACE, "img:1", DEFAULT_POD_SECURITY, &extra).unwrap();
    let c = &find(&objs, "Deployment").body["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(args.ends_with(&[
        "--proxy",
        "http://proxy.example:3128",
        "--no-proxy",
        "10.0.0.0/8,.svc"
    ]));
    let err = check_proxy("http://user:pw@proxy.example:3128")
        .unwrap_err()
        .to_string();
    assert!(err.contains("credentials do not belong"), "{err}");
    assert!(!err.contains("pw"), "{err}");
    assert!(check_proxy("proxy.example:3128").is_err());
    assert!(
        populator_args(&PopulatorSettings::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn allowed_node_directories_reach_the_populator_and_bad_ones_are_refused() {
    let settings = PopulatorSettings {
        allow_node_repository: vec!["/srv/backups".into(), "/mnt/nfs".into()],
        ..Default::default()
    };
    assert_eq!(
        populator_args(&settings).unwrap(),
        [
            "--allow-node-repository",
            "/srv/backups",
            "--allow-node-repository",
            "/mnt/nfs"
        ]
    );
    for bad in ["/", "srv", "/srv/../etc"] {
        let settings = PopulatorSettings {
            allow_node_repository: vec![bad.into()],
            ..Default::default()
        };
        let err = populator_args(&settings).unwrap_err().to_string();
        assert!(err.starts_with("--allow-node-repository "), "{err}");
    }
}

fn role_named<'a>(objs: &'a [Object], name: &str) -> &'a Yaml {
    &objs
        .iter()
        .find(|o| o.kind.kind == "ClusterRole" && o.name == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name}"))
        .body
}

#[test]
fn the_backup_operator_deletes_no_claim_or_snapshot_and_lists_no_secret() {
    let objs = defaults();
    let user = grants(role_named(&objs, "volbackup-user"));
    for (group, resource, verb) in [
        ("", "persistentvolumeclaims", "delete"),
        ("", "persistentvolumeclaims", "deletecollection"),
        ("snapshot.storage.k8s.io", "volumesnapshots", "delete"),
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
        ("", "secrets", "delete"),
        ("", "pods", "update"),
        ("", "pods/exec", "create"),
        ("", "serviceaccounts", "get"),
    ] {
        assert!(
            !user.contains(&(group.into(), resource.into(), verb.into())),
            "volbackup-user may {verb} {resource}"
        );
    }
    assert!(
        !user
            .iter()
            .any(|(g, r, v)| g == "*" || r == "*" || v == "*")
    );
    // What cleanup needs lives in its own role.
    let cleanup = role_named(&objs, "volbackup-cleanup");
    assert_grants(cleanup, "", "persistentvolumeclaims", &["list", "delete"]);
    assert_grants(
        cleanup,
        "snapshot.storage.k8s.io",
        "volumesnapshots",
        &["list", "delete"],
    );
    assert!(!grants(cleanup).iter().any(|(_, r, _)| r == "secrets"));
}

#[test]
fn kubectl_names_objects_by_kind_and_group() {
    let objs = defaults();
    let names: Vec<String> = objs.iter().map(Object::display).collect();
    assert_eq!(
        names[0],
        "customresourcedefinition.apiextensions.k8s.io/volumebackups.volbackup.io"
    );
    assert!(names.contains(&"namespace/volbackup-system".to_string()));
    assert!(names.contains(&"deployment.apps/volbackup-populator".to_string()));
    assert!(
        names.contains(
            &"volumepopulator.populator.storage.k8s.io/volbackup-volumebackup".to_string()
        )
    );
}

#[test]
fn an_apply_is_unchanged_only_when_the_resource_version_stayed() {
    assert_eq!(outcome(None, Some("5")), "created");
    assert_eq!(outcome(Some("5"), Some("5")), "unchanged");
    assert_eq!(outcome(Some("5"), Some("6")), "configured");
}

#[test]
fn bad_namespaces_and_images_are_refused() {
    for ns in ["", "Caps", "-x", "x-", "a_b", "a.b", &"a".repeat(64)] {
        assert!(check_namespace(ns).is_err(), "{ns:?} was accepted");
    }
    check_namespace("volbackup-system").unwrap();
    for image in ["", "a b", "x\ny"] {
        assert!(check_image(image).is_err(), "{image:?} was accepted");
    }
    check_image("ghcr.io/volbackup/volbackup:0.1.0").unwrap();
}

#[test]
fn the_prompt_says_how_many_backups_the_crd_takes_along() {
    let p = prompt(9, true, Some(3));
    assert!(
        p.contains("9 objects") && p.contains("all 3 VolumeBackup objects"),
        "{p}"
    );
    assert!(p.contains("repositories stays"), "{p}");
    assert!(prompt(9, true, None).contains("could not be counted"));
    assert!(!prompt(8, false, None).contains("VolumeBackup"));
}

#[test]
fn check_installed_names_the_first_missing_piece() {
    let ns = "volbackup-system";
    let all = missing(Seen::Present, Seen::Present, Some(Some(true)), ns);
    assert_eq!(all, None);
    let no_crd = missing(Seen::Absent, Seen::Absent, Some(None), ns).unwrap();
    assert!(no_crd.contains("no VolumeBackup CRD"), "{no_crd}");
    let no_vp = missing(Seen::Present, Seen::Absent, Some(Some(true)), ns).unwrap();
    assert!(
        no_vp.contains("no VolumePopulator volbackup-volumebackup"),
        "{no_vp}"
    );
    assert_eq!(
        missing(Seen::Present, Seen::Present, Some(None), ns).unwrap(),
        "the volbackup populator is not installed: no Deployment volbackup-system/volbackup-populator (run `kubectl volbackup install`)"
    );
    let down = missing(Seen::Present, Seen::Present, Some(Some(false)), ns).unwrap();
    assert!(down.contains("no available replica"), "{down}");
    for m in [no_crd, no_vp, down] {
        assert!(m.ends_with("(run `kubectl volbackup install`)"), "{m}");
    }
}

#[test]
fn checks_the_caller_may_not_make_are_skipped() {
    assert_eq!(
        missing(Seen::Unknown, Seen::Unknown, None, "volbackup-system"),
        None
    );
}

#[test]
fn a_pod_that_cannot_pull_its_image_is_stuck() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "populator", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}
        }]}
    }))
    .unwrap();
    let (reason, message, _) = stuck(&pod).unwrap();
    assert_eq!(reason, "ImagePullBackOff");
    assert!(message.contains("Back-off"));
    let creating: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"},
        "status": {"phase": "Pending", "containerStatuses": [{
            "name": "populator", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}
        }]}
    }))
    .unwrap();
    assert!(stuck(&creating).is_none());
    assert_eq!(pod_state(&creating), "Pending (ContainerCreating)");
}

#[test]
fn kinds_are_named_as_rbac_names_them() {
    let named = |kind: &str| kind_named(kind).qualified_plural();
    assert_eq!(named("Namespace"), "namespaces");
    assert_eq!(
        named("ClusterRoleBinding"),
        "clusterrolebindings.rbac.authorization.k8s.io"
    );
    assert_eq!(
        named("VolumePopulator"),
        "volumepopulators.populator.storage.k8s.io"
    );
}
