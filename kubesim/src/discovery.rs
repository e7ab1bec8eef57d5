//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/GROUP`, resource lists, and the
//! aggregated discovery document (`apidiscovery.k8s.io/v2`, what kubectl 1.32 and kube-rs'
//! `Discovery::run_aggregated` ask for with
//! `Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`).
//!
//! Sources: "Kubernetes API Concepts: Discovery API"
//! (https://kubernetes.io/docs/concepts/overview/kubernetes-api/#discovery-api) and the
//! `k8s.io/api/apidiscovery/v2` types.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::registry::ResourceType;

/// `/version`: a v1.32 server (what the kubectl here speaks).
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-kubesim", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64"
    })
}

/// Orders versions like `version.CompareKubeAwareVersionStrings`: GA before beta before
/// alpha, higher numbers first.
fn version_rank(v: &str) -> (u8, i64, i64) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major: i64 = digits.parse().unwrap_or(-1);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, major, 0)
    }
}

/// Group -> versions, in preference order; groups in a stable order (core first).
fn groups(types: &[ResourceType]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types {
        let vs = m.entry(t.group.clone()).or_default();
        if !vs.contains(&t.version) {
            vs.push(t.version.clone());
        }
    }
    for vs in m.values_mut() {
        vs.sort_by_key(|v| std::cmp::Reverse(version_rank(v)));
    }
    m
}

/// `/api`
pub fn api_versions(port: u16) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}]
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`
pub fn group_list(types: &[ResourceType]) -> Value {
    let gs: Vec<Value> = groups(types)
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/GROUP`
pub fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    let gs = groups(types);
    let vs = gs.get(name).filter(|_| !name.is_empty())?;
    let mut g = group_json(name, vs);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `/api/v1` or `/apis/GROUP/VERSION`
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        for s in &t.extra_subresources {
            let (verbs, kind, group, version) = match s.as_str() {
                "log" => (json!(["get"]), "Pod", "", ""),
                "scale" => (
                    json!(["get", "patch", "update"]),
                    "Scale",
                    "autoscaling",
                    "v1",
                ),
                _ => (json!(["update"]), t.kind.as_str(), "", ""),
            };
            let mut r = json!({"name": format!("{}/{s}", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs});
            if !group.is_empty() {
                r["group"] = json!(group);
                r["version"] = json!(version);
            }
            resources.push(r);
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The aggregated discovery document of `/api` (`core`) or `/apis`.
pub fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let mut items = Vec::new();
    for (g, vs) in groups(types) {
        if g.is_empty() != core {
            continue;
        }
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| {
                let resources: Vec<Value> = types
                    .iter()
                    .filter(|t| t.group == g && t.version == *v)
                    .map(|t| {
                        let kind = json!({"group": t.group, "version": t.version, "kind": t.kind});
                        let mut subs = Vec::new();
                        if t.status_subresource {
                            subs.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
                        }
                        for s in &t.extra_subresources {
                            if s == "scale" {
                                subs.push(json!({"subresource": "scale", "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
                            } else if s == "log" {
                                subs.push(json!({"subresource": "log", "responseKind": {"group": "", "version": "", "kind": "string"}, "verbs": ["get"]}));
                            } else {
                                subs.push(json!({"subresource": s, "responseKind": kind, "verbs": ["update"]}));
                            }
                        }
                        let mut r = json!({
                            "resource": t.plural, "responseKind": kind,
                            "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": t.singular, "verbs": t.verbs(),
                        });
                        if !t.short_names.is_empty() {
                            r["shortNames"] = json!(t.short_names);
                        }
                        if !t.categories.is_empty() {
                            r["categories"] = json!(t.categories);
                        }
                        if !subs.is_empty() {
                            r["subresources"] = json!(subs);
                        }
                        r
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions}),
        );
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
