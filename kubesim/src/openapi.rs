//! OpenAPI v3 documents: `/openapi/v3` lists one document per group/version, each with the
//! resource paths and a component schema per kind carrying `x-kubernetes-group-version-kind`.
//!
//! Why: `kubectl apply` validates by default. It first asks the OpenAPI v3 document of the
//! object's group/version whether the PATCH operation of that kind takes the
//! `fieldValidation` query parameter (`k8s.io/cli-runtime/pkg/resource/query_param_verifier_v3.go`);
//! when it does, validation is left to the server. The strategic merge patch content type is
//! not advertised, so kubectl computes patches of built-in kinds from its compiled-in types and
//! uses JSON merge patches for custom kinds, as it does against a real server whose v3 schema
//! it cannot use. Schemas of built-in kinds are permissive objects; custom kinds publish
//! their CRD's structural schema. (https://kubernetes.io/docs/concepts/overview/kubernetes-api/#openapi-v3)

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::registry::ResourceType;

fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() {
        format!("api/{}", t.version)
    } else {
        format!("apis/{}/{}", t.group, t.version)
    }
}

fn schema_name(t: &ResourceType) -> String {
    if t.crd.is_some() {
        let rev: Vec<&str> = t.group.split('.').rev().collect();
        format!("{}.{}.{}", rev.join("."), t.version, t.kind)
    } else {
        let g = if t.group.is_empty() {
            "core".to_string()
        } else {
            t.group.split('.').next().unwrap_or("").to_string()
        };
        format!("io.k8s.api.{g}.{}.{}", t.version, t.kind)
    }
}

fn hash(v: &Value) -> String {
    // FNV-1a of the document, as a stable cache key.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in v.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`
pub fn index(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    let gvs: BTreeMap<String, ()> = types.iter().map(|t| (gv_path(t), ())).collect();
    for gv in gvs.keys() {
        let doc = document(types, gv).unwrap_or(Value::Null);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

fn param(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`.
pub fn document(types: &[ResourceType], gv: &str) -> Option<Value> {
    let mine: Vec<&ResourceType> = types.iter().filter(|t| gv_path(t) == gv).collect();
    if mine.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for t in mine {
        let name = schema_name(t);
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let mut schema = t
            .crd
            .as_ref()
            .and_then(|c| c.schema.clone())
            .unwrap_or_else(|| {
                json!({"type": "object", "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                }, "x-kubernetes-preserve-unknown-fields": true})
            });
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(name.clone(), schema);
        let base = if t.group.is_empty() {
            format!("/api/{}", t.version)
        } else {
            format!("/apis/{}/{}", t.group, t.version)
        };
        let coll = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        let item = format!("{coll}/{{name}}");
        let ok = |r: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": r}}}});
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [param("dryRun", "string"), param("fieldManager", "string"), param("fieldValidation", "string")],
                "responses": ok(&reference),
            })
        };
        let mut patch = op("patch");
        patch["parameters"]
            .as_array_mut()
            .expect("array")
            .push(param("force", "boolean"));
        patch["requestBody"] = json!({"content": {
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}}
        }, "required": true});
        let mut get = op("get");
        get["parameters"] = json!([]);
        let mut put = op("put");
        put["requestBody"] = json!({"content": {"*/*": {"schema": reference}}, "required": true});
        let mut post = op("post");
        post["requestBody"] = json!({"content": {"*/*": {"schema": reference}}, "required": true});
        let mut list = op("list");
        list["parameters"] = json!([
            param("labelSelector", "string"),
            param("fieldSelector", "string"),
            param("watch", "boolean")
        ]);
        paths.insert(item.clone(), json!({"get": get, "put": put, "patch": patch, "delete": op("delete"), "parameters": [
            {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}
        ]}));
        paths.insert(coll, json!({"get": list, "post": post}));
        if t.status_subresource {
            let mut sp = patch.clone();
            sp["x-kubernetes-action"] = json!("patch");
            paths.insert(
                format!("{item}/status"),
                json!({"get": get, "put": put, "patch": sp}),
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-kubesim"},
        "paths": paths,
        "components": {"schemas": schemas}
    }))
}
