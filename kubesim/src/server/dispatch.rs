//! The verbs on a resource: get, list, create, update, patch, delete, deletecollection, the
//! `scale` subresource, delete options, SelfSubjectAccessReview.

use super::*;

pub(super) async fn dispatch(
    state: &Arc<ServerState>,
    user: &UserInfo,
    rr: &mut ResReq,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &Bytes,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let store = &state.store;
    let rt = rr.rt.clone();
    let srt = storage_type(store, &rt);
    let ns = rr.namespace.clone();
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    let part = if rr.sub.as_deref() == Some("status") {
        Part::Status
    } else {
        Part::Main
    };
    let opts = WriteOpts {
        dry_run,
        part,
        http: true,
        strict: query.get("fieldValidation").is_some_and(|v| v == "Strict"),
    };
    if rt.create_only && rr.verb != "create" {
        return Err(errors::method_not_supported(&rt.qualified(), &rr.verb));
    }
    if rr.sub.as_deref() == Some("scale") {
        return scale(state, rr, &srt, ns.as_deref(), content_type, body, opts);
    }
    match rr.verb.as_str() {
        "get" => {
            let name = rr.name.clone().unwrap_or_default();
            if rr.sub.as_deref() == Some("log") {
                return pod_log(state, ns.as_deref().unwrap_or(""), &name, query).await;
            }
            let obj = present(&rt, store.get_obj(&srt, ns.as_deref(), &name)?);
            if table {
                return Ok(json_response(
                    200,
                    &table::table(
                        &rt,
                        std::slice::from_ref(&obj),
                        Some(&store.current_rv().to_string()),
                        query.get("includeObject").map(String::as_str),
                    ),
                ));
            }
            Ok(json_response(200, &obj))
        }
        "list" => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
            let (items, rv) = store.list_objs(&srt.key(), ns.as_deref());
            let mut items: Vec<Value> = items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .collect();
            // Chunking: `continue` is the namespace/name of the last object returned.
            if let Some(c) = query.get("continue").filter(|c| !c.is_empty()) {
                let (c_ns, c_name) = c.split_once('/').unwrap_or(("", c));
                items.retain(|o| {
                    let k = (
                        o.pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                        o.pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    );
                    k > (c_ns, c_name)
                });
            }
            let mut cont = None;
            if let Some(limit) = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0)
                && items.len() > limit
            {
                items.truncate(limit);
                let last = &items[limit - 1];
                cont = Some(format!(
                    "{}/{}",
                    last.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(""),
                    last.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ));
            }
            let items: Vec<Value> = items.into_iter().map(|o| present(&rt, o)).collect();
            if table {
                let mut t = table::table(
                    &rt,
                    &items,
                    Some(&rv.to_string()),
                    query.get("includeObject").map(String::as_str),
                );
                if let Some(c) = &cont {
                    t["metadata"]["continue"] = Value::String(c.clone());
                }
                return Ok(json_response(200, &t));
            }
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = Value::String(c);
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
            ))
        }
        "watch" => watch(state, &rt, &srt, ns, query, table),
        "create" => {
            let obj = parse_body(body, content_type)?;
            if rt.plural == "selfsubjectaccessreviews" {
                return Ok(json_response(
                    201,
                    &self_subject_access_review(state, user, obj)?,
                ));
            }
            let obj = ingest(&rt, obj);
            if rr.name.is_some() {
                return Err(errors::method_not_supported(&rt.qualified(), "create"));
            }
            let out = store.create_obj(&srt, ns.as_deref(), obj, opts)?;
            Ok(json_response(201, &present(&rt, out)))
        }
        "update" => {
            let name = rr.name.clone().unwrap_or_default();
            let obj = ingest(&rt, parse_body(body, content_type)?);
            let out = store.update_obj(&srt, ns.as_deref(), &name, obj, opts)?;
            Ok(json_response(200, &present(&rt, out)))
        }
        "patch" => {
            let name = rr.name.clone().unwrap_or_default();
            let ct = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if ct == "application/apply-patch+yaml" {
                let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(errors::bad_request(
                        "PATCH, application/apply-patch+yaml requires fieldManager parameter",
                    ));
                };
                let applied = serde_yaml::from_slice::<Value>(body)
                    .map_err(|e| errors::bad_request(format!("error decoding YAML: {e}")))?;
                if applied
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                    || applied
                        .get("kind")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    return Err(errors::bad_request("invalid object type: /, Kind="));
                }
                let existed = store.get_obj(&srt, ns.as_deref(), &name).is_ok();
                let applied = ingest(&rt, applied);
                let out = store.apply(&srt, ns.as_deref(), &name, applied, manager, opts)?;
                return Ok(json_response(
                    if existed { 200 } else { 201 },
                    &present(&rt, out),
                ));
            }
            let patch_body: Value = serde_json::from_slice(body)
                .map_err(|e| errors::bad_request(format!("error decoding patch: {e}")))?;
            let kind = ct.clone();
            let rt2 = rt.clone();
            let out = store.modify(&srt, ns.as_deref(), &name, opts, move |cur| {
                let served = present(&rt2, cur.clone());
                let patched = match kind.as_str() {
                    "application/json-patch+json" => {
                        let p: json_patch::Patch = serde_json::from_value(patch_body).map_err(|e| errors::bad_request(e.to_string()))?;
                        let mut doc = served;
                        json_patch::patch(&mut doc, &p).map_err(|e| ApiError {
                            code: 422,
                            reason: "Invalid".into(),
                            message: format!("the server rejected our request due to an error in our request: {e}"),
                        })?;
                        doc
                    }
                    "application/merge-patch+json" => {
                        let mut doc = served;
                        json_patch::merge(&mut doc, &patch_body);
                        doc
                    }
                    "application/strategic-merge-patch+json" => {
                        if rt2.is_custom() {
                            return Err(errors::unsupported_media_type(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                            ));
                        }
                        patch::strategic_merge(&served, &patch_body).map_err(errors::bad_request)?
                    }
                    other => {
                        return Err(errors::unsupported_media_type(format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                        )));
                    }
                };
                let mut out = ingest(&rt2, patched);
                // The stored apiVersion stays; a patch may not move an object between versions.
                if let (Some(o), Some(v)) = (out.as_object_mut(), cur.get("apiVersion")) {
                    o.insert("apiVersion".into(), v.clone());
                }
                Ok(out)
            })?;
            Ok(json_response(200, &present(&rt, out)))
        }
        "delete" => {
            let name = rr.name.clone().unwrap_or_default();
            let d = delete_opts(body, query)?;
            let out = store.delete_obj(&srt, ns.as_deref(), &name, d)?;
            Ok(json_response(200, &present(&rt, out)))
        }
        "deletecollection" => {
            let labels =
                LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
            let fields =
                FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
            let d = delete_opts(body, query)?;
            let (items, _) = store.list_objs(&srt.key(), ns.as_deref());
            let mut deleted = Vec::new();
            for o in items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
            {
                let o_ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let o_name = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match store.delete_obj(&srt, o_ns.as_deref(), &o_name, d.clone()) {
                    Ok(v) => deleted.push(present(&rt, v)),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": deleted}),
            ))
        }
        other => Err(errors::method_not_supported(&rt.qualified(), other)),
    }
}

/// The `scale` subresource of Deployments and ReplicaSets: an `autoscaling/v1` Scale view of
/// `spec.replicas` (what `kubectl scale` reads and patches;
/// https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/).
pub(super) fn scale(
    state: &Arc<ServerState>,
    rr: &ResReq,
    srt: &ResourceType,
    ns: Option<&str>,
    content_type: &str,
    body: &Bytes,
    opts: WriteOpts,
) -> Result<Response<Body>, ApiError> {
    let name = rr.name.clone().unwrap_or_default();
    let view = |o: &Value| -> Value {
        let labels = o
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let selector: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        let m = o.get("metadata").cloned().unwrap_or(json!({}));
        json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
            "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector.join(",")}
        })
    };
    let store = &state.store;
    let out = match rr.verb.as_str() {
        "get" => store.get_obj(srt, ns, &name)?,
        "update" | "patch" => {
            let input = parse_body(body, content_type)?;
            let ct = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let opts = WriteOpts {
                part: Part::Main,
                ..opts
            };
            store.modify(srt, ns, &name, opts, |cur| {
                let current = view(cur);
                let wanted = match (rr.verb.as_str(), ct.as_str()) {
                    ("update", _) => input.clone(),
                    (_, "application/json-patch+json") => {
                        let p: json_patch::Patch = serde_json::from_value(input.clone())
                            .map_err(|e| errors::bad_request(e.to_string()))?;
                        let mut doc = current.clone();
                        json_patch::patch(&mut doc, &p)
                            .map_err(|e| errors::bad_request(e.to_string()))?;
                        doc
                    }
                    _ => {
                        let mut doc = current.clone();
                        json_patch::merge(&mut doc, &input);
                        doc
                    }
                };
                if let Some(rv) = wanted
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    && !rv.is_empty()
                    && Some(rv)
                        != cur
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                {
                    return Err(errors::conflict_modified(&srt.qualified(), &name));
                }
                let replicas = wanted
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let mut next = cur.clone();
                next["spec"]["replicas"] = json!(replicas);
                Ok(next)
            })?
        }
        other => {
            return Err(errors::method_not_supported(
                &format!("{}/scale", srt.qualified()),
                other,
            ));
        }
    };
    Ok(json_response(200, &view(&out)))
}

pub(super) fn delete_opts(
    body: &Bytes,
    query: &HashMap<String, String>,
) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| errors::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    let mut d = DeleteOpts {
        propagation: s("propagationPolicy").or_else(|| query.get("propagationPolicy").cloned()),
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: query.get("dryRun").is_some_and(|v| v == "All")
            || b.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == "All")),
        grace_period: b
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
    };
    // The deprecated `orphanDependents: true` means propagationPolicy Orphan.
    if d.propagation.is_none() && b.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
        d.propagation = Some("Orphan".into());
    }
    if let Some(p) = &d.propagation
        && !matches!(p.as_str(), "Background" | "Foreground" | "Orphan")
    {
        return Err(errors::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok(d)
}

/// `authorization.k8s.io/v1` SelfSubjectAccessReview: answers with the caller's own RBAC
/// (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access).
pub(super) fn self_subject_access_review(
    state: &Arc<ServerState>,
    user: &UserInfo,
    mut obj: Value,
) -> Result<Value, ApiError> {
    let Some(ra) = obj.pointer("/spec/resourceAttributes").cloned() else {
        // Non-resource paths are readable by every authenticated user (system:discovery).
        obj["status"] = json!({"allowed": obj.pointer("/spec/nonResourceAttributes/verb").and_then(Value::as_str) == Some("get")});
        return Ok(obj);
    };
    let s = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let attrs = Attributes {
        verb: s("verb"),
        group: s("group"),
        resource: s("resource"),
        subresource: s("subresource"),
        namespace: s("namespace"),
        name: s("name"),
    };
    let allowed = state.auth.authorize(user, &attrs);
    obj["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed"})
    } else {
        json!({"allowed": false})
    };
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
        m.insert("kind".into(), json!("SelfSubjectAccessReview"));
        m.entry("metadata")
            .or_insert_with(|| json!({"creationTimestamp": null}));
    }
    Ok(obj)
}
