//! The HTTPS front of kubesim: routing of the Kubernetes REST paths, authentication,
//! authorization, fault injection, and the verbs.
//!
//! Sources: "Kubernetes API Concepts" (paths, verbs, list/watch, `resourceVersion`,
//! `labelSelector`/`fieldSelector`, chunking with `limit`/`continue`, watch events and
//! `410 Gone`, bookmarks and `sendInitialEvents`, dry run, Table output:
//! https://kubernetes.io/docs/reference/using-api/api-concepts/), "Server-Side Apply"
//! (https://kubernetes.io/docs/reference/using-api/server-side-apply/), the `Status` kind
//! (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/) and
//! `k8s.io/apiserver/pkg/endpoints/handlers` (create, update, patch, delete, watch).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response};
use serde_json::{Value, json};

use super::api::{ApiError, ObjectStore, ResourceKey, pod_log_path};
use super::auth::{Attributes, Auth, UserInfo};
use super::discovery;
use super::errors;
use super::faults::Faults;
use super::patch;
use super::registry::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{DeleteOpts, Part, Store, WriteOpts};
use super::table;

/// The response body type.
pub type Body = BoxBody<Bytes, Infallible>;

/// Everything a request handler needs.
pub struct ServerState {
    /// Objects.
    pub store: Arc<Store>,
    /// Authentication and RBAC.
    pub auth: Arc<Auth>,
    /// Fault hooks.
    pub faults: Arc<Faults>,
    /// The cluster directory (pod logs live below it).
    pub dir: std::path::PathBuf,
    /// The port (for `/api`'s serverAddressByClientCIDRs).
    pub port: u16,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .expect("response")
}

/// A `Status` failure body like the real API server's.
pub fn status_body(e: &ApiError, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": e.message,
        "reason": e.reason,
        "code": e.code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

fn error_response(e: &ApiError, details: Option<Value>) -> Response<Body> {
    json_response(e.code, &status_body(e, details))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// One parsed resource request.
struct ResReq {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    verb: String,
}

/// Handles one request. `cert_user` is the identity of a verified client certificate.
pub async fn handle(
    state: Arc<ServerState>,
    cert_user: Option<UserInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let headers = req.headers().clone();
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();

    // Health and version endpoints are readable anonymously (system:public-info-viewer).
    match seg.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => {
            return Ok(Response::builder()
                .status(200)
                .body(full("ok"))
                .expect("response"));
        }
        ["version"] => return Ok(json_response(200, &discovery::version())),
        _ => {}
    }

    // Authentication.
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let user = match token {
        Some(t) => state.auth.authenticate_token(t),
        None => cert_user,
    };
    let Some(user) = user else {
        let e = ApiError {
            code: 401,
            reason: "Unauthorized".into(),
            message: "Unauthorized".into(),
        };
        return Ok(error_response(&e, None));
    };
    // Impersonation (`kubectl --as`, `--as-group`): allowed when the real user may
    // `impersonate` the user, its groups, or the ServiceAccount
    // (https://kubernetes.io/docs/reference/access-authn-authz/authentication/#user-impersonation).
    let user = match headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    {
        None => user,
        Some(as_user) => {
            let groups: Vec<String> = headers
                .get_all("impersonate-group")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            let mut checks = vec![match as_user
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
            {
                Some((ns, sa)) => Attributes {
                    verb: "impersonate".into(),
                    resource: "serviceaccounts".into(),
                    namespace: ns.into(),
                    name: sa.into(),
                    ..Default::default()
                },
                None => Attributes {
                    verb: "impersonate".into(),
                    resource: "users".into(),
                    name: as_user.into(),
                    ..Default::default()
                },
            }];
            checks.extend(groups.iter().map(|g| Attributes {
                verb: "impersonate".into(),
                resource: "groups".into(),
                name: g.clone(),
                ..Default::default()
            }));
            if let Some(denied) = checks.iter().find(|a| !state.auth.authorize(&user, a)) {
                let e = errors::forbidden(Auth::forbidden_message(&user, denied));
                return Ok(error_response(
                    &e,
                    Some(json!({"name": denied.name, "group": "", "kind": denied.resource})),
                ));
            }
            let mut all = groups;
            if let Some((ns, _)) = as_user
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
            {
                all.push("system:serviceaccounts".into());
                all.push(format!("system:serviceaccounts:{ns}"));
            }
            all.push("system:authenticated".into());
            UserInfo {
                name: as_user.to_string(),
                groups: all,
            }
        }
    };

    // Discovery and OpenAPI (any authenticated user: system:discovery).
    let types = state.store.types();
    // Aggregated discovery v2 when the client lists it; v2beta1 alone gets the plain documents.
    let aggregated = accept.split(',').any(|a| {
        a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2") && !a.contains("v=v2beta1")
    });
    let disco = |v: Value| {
        Response::builder()
            .status(200)
            .header(
                "Content-Type",
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )
            .body(full(serde_json::to_vec(&v).unwrap_or_default()))
            .expect("response")
    };
    let not_found_path = || {
        let e = ApiError {
            code: 404,
            reason: "NotFound".into(),
            message: "the server could not find the requested resource".into(),
        };
        error_response(&e, Some(json!({})))
    };
    match seg.as_slice() {
        ["api"] if method == Method::GET => {
            return Ok(if aggregated {
                disco(discovery::aggregated(&types, true))
            } else {
                json_response(200, &discovery::api_versions(state.port))
            });
        }
        ["apis"] if method == Method::GET => {
            return Ok(if aggregated {
                disco(discovery::aggregated(&types, false))
            } else {
                json_response(200, &discovery::group_list(&types))
            });
        }
        ["api", "v1"] if method == Method::GET => {
            return Ok(json_response(
                200,
                &discovery::resource_list(&types, "", "v1"),
            ));
        }
        ["apis", g] if method == Method::GET => {
            return Ok(match discovery::group(&types, g) {
                Some(v) => json_response(200, &v),
                None => not_found_path(),
            });
        }
        ["apis", g, v] if method == Method::GET => {
            if !types.iter().any(|t| t.group == *g && t.version == *v) {
                return Ok(not_found_path());
            }
            return Ok(json_response(200, &discovery::resource_list(&types, g, v)));
        }
        ["openapi", "v3"] => return Ok(json_response(200, &super::openapi::index(&types))),
        ["openapi", "v3", rest @ ..] => {
            let gv = rest.join("/");
            return Ok(match super::openapi::document(&types, &gv) {
                Some(d) => json_response(200, &d),
                None => not_found_path(),
            });
        }
        ["openapi", ..] => return Ok(not_found_path()),
        _ => {}
    }

    // Resource requests.
    let (group, version, rest): (&str, &str, &[&str]) = match seg.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Ok(not_found_path()),
    };
    let parsed = parse_resource(&state.store, group, version, rest, &method, &query);
    let Some(mut rr) = parsed else {
        return Ok(not_found_path());
    };

    // Authorization.
    let field_sel_name = query
        .get("fieldSelector")
        .and_then(|f| FieldSelector::parse(f).ok())
        .and_then(|f| f.exact_name().map(str::to_string));
    let attrs = Attributes {
        verb: rr.verb.clone(),
        group: rr.rt.group.clone(),
        resource: rr.rt.plural.clone(),
        subresource: rr.sub.clone().unwrap_or_default(),
        namespace: rr.namespace.clone().unwrap_or_default(),
        name: rr
            .name
            .clone()
            .or(if matches!(rr.verb.as_str(), "list" | "watch") {
                field_sel_name
            } else {
                None
            })
            .unwrap_or_default(),
    };
    let details = json!({"name": rr.name.clone().unwrap_or_default(), "group": rr.rt.group, "kind": rr.rt.plural});
    if !state.auth.authorize(&user, &attrs) {
        let mut a = attrs.clone();
        if rr.name.is_none() {
            a.name.clear();
        }
        let e = errors::forbidden(Auth::forbidden_message(&user, &a));
        return Ok(error_response(&e, Some(details)));
    }

    // Fault hooks.
    let fault_resource = match &rr.sub {
        Some(s) => format!("{}/{s}", rr.rt.plural),
        None => rr.rt.plural.clone(),
    };
    if let Some(hook) = state.faults.take_before(&rr.verb, &fault_resource) {
        hook().await;
    }
    let (fail, delay) = state.faults.check(&rr.verb, &fault_resource);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(e) = fail {
        return Ok(error_response(&e, Some(details)));
    }

    // Body.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(
                &errors::bad_request(format!("reading the request body: {e}")),
                None,
            ));
        }
    };
    let table = accept.contains("as=Table");
    let result = dispatch(&state, &user, &mut rr, &query, &content_type, &body, table).await;
    Ok(match result {
        Ok(resp) => resp,
        Err(e) => {
            let mut d = details;
            if e.reason == "Invalid" {
                d["kind"] = Value::String(rr.rt.kind.clone());
                let (name, causes) = invalid_details(&e.message);
                if let Some(n) = name {
                    d["name"] = Value::String(n);
                }
                if !causes.is_empty() {
                    d["causes"] = Value::Array(causes);
                }
            }
            error_response(&e, Some(d))
        }
    })
}

/// The object name and `details.causes` of an Invalid error, recovered from its message
/// (`Kind "name" is invalid: [field: detail, ...]`), as `errors.NewInvalid` fills them.
fn invalid_details(message: &str) -> (Option<String>, Vec<Value>) {
    let Some((head, list)) = message.split_once(" is invalid: ") else {
        return (None, Vec::new());
    };
    let name = head.split('"').nth(1).map(str::to_string);
    let list = list
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or(list);
    let is_field_start = |chunk: &str| {
        chunk.split_once(": ").is_some_and(|(f, _)| {
            !f.is_empty()
                && f.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._[]-/".contains(c))
        })
    };
    let mut items: Vec<String> = Vec::new();
    for chunk in list.split(", ") {
        match items.last_mut() {
            Some(last) if !is_field_start(chunk) => {
                last.push_str(", ");
                last.push_str(chunk);
            }
            _ => items.push(chunk.to_string()),
        }
    }
    let causes = items
        .iter()
        .filter_map(|i| i.split_once(": "))
        .map(|(field, detail)| {
            let reason = if detail.starts_with("Required value") {
                "FieldValueRequired"
            } else if detail.starts_with("Unsupported value") {
                "FieldValueNotSupported"
            } else if detail.starts_with("Forbidden") {
                "FieldValueForbidden"
            } else {
                "FieldValueInvalid"
            };
            json!({"reason": reason, "message": detail, "field": field})
        })
        .collect();
    (name, causes)
}

fn parse_resource(
    store: &Store,
    group: &str,
    version: &str,
    rest: &[&str],
    method: &Method,
    query: &HashMap<String, String>,
) -> Option<ResReq> {
    let find = |plural: &str| store.find_type(group, version, plural);
    let (rt, namespace, name, sub) = match rest {
        [plural] => (find(plural)?, None, None, None),
        ["namespaces", ns, plural]
            if !(group.is_empty() && (*plural == "status" || *plural == "finalize")) =>
        {
            let rt = find(plural)?;
            if !rt.namespaced {
                return None;
            }
            (rt, Some(ns.to_string()), None, None)
        }
        ["namespaces", ns, plural, name] => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return None;
            }
            (rt, Some(ns.to_string()), Some(name.to_string()), None)
        }
        ["namespaces", ns, plural, name, sub] => {
            let rt = find(plural)?;
            if !rt.namespaced {
                return None;
            }
            (
                rt,
                Some(ns.to_string()),
                Some(name.to_string()),
                Some(sub.to_string()),
            )
        }
        [plural, name] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return None;
            }
            (rt, None, Some(name.to_string()), None)
        }
        [plural, name, sub] => {
            let rt = find(plural)?;
            if rt.namespaced {
                return None;
            }
            (rt, None, Some(name.to_string()), Some(sub.to_string()))
        }
        _ => return None,
    };
    if let Some(s) = &sub
        && !(s == "status" && rt.status_subresource)
        && !rt.extra_subresources.contains(s)
    {
        return None;
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET, true) => "get",
        (Method::GET, false) if watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => return None,
    };
    Some(ResReq {
        rt,
        namespace,
        name,
        sub,
        verb: verb.to_string(),
    })
}

/// The type the store keeps objects of this request under (events.k8s.io/v1 events are
/// stored as core v1 events).
fn storage_type(store: &Store, rt: &ResourceType) -> ResourceType {
    if rt.group == "events.k8s.io" {
        store
            .type_for_key(&ResourceKey::core("events"))
            .unwrap_or_else(|| rt.clone())
    } else {
        rt.clone()
    }
}

/// An object as served at the request's group/version.
fn present(rt: &ResourceType, mut obj: Value) -> Value {
    if rt.group == "events.k8s.io" {
        obj = super::convert::core_event_to_events_v1(&obj);
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(rt.api_version()));
        o.insert("kind".into(), Value::String(rt.kind.clone()));
    }
    obj
}

/// A request body as stored.
fn ingest(rt: &ResourceType, obj: Value) -> Value {
    if rt.group == "events.k8s.io" {
        super::convert::events_v1_to_core_event(&obj)
    } else {
        obj
    }
}

fn parse_body(body: &Bytes, content_type: &str) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if content_type.contains("protobuf") {
        let decoded =
            super::proto::unwrap_unknown(body).and_then(|(_, kind, raw)| match kind.as_str() {
                "SelfSubjectAccessReview" => super::proto::self_subject_access_review(&raw),
                other => super::proto::core_object(other, &raw),
            });
        return decoded.ok_or_else(|| {
            errors::unsupported_media_type("kubesim reads protobuf bodies only of SelfSubjectAccessReview, Namespace, ServiceAccount, Secret and ConfigMap; send application/json")
        });
    }
    if content_type.contains("yaml") {
        return serde_yaml::from_slice::<Value>(body)
            .map_err(|e| errors::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| errors::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf ({e})")))
}

async fn dispatch(
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
fn scale(
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

fn delete_opts(body: &Bytes, query: &HashMap<String, String>) -> Result<DeleteOpts, ApiError> {
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
fn self_subject_access_review(
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

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn streaming(rx: tokio::sync::mpsc::Receiver<Bytes>, content_type: &str) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("Content-Type", content_type)
        .header("Transfer-Encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .expect("response")
}

/// A watch: JSON lines of `{type, object}`.
fn watch(
    state: &Arc<ServerState>,
    rt: &ResourceType,
    srt: &ResourceType,
    ns: Option<String>,
    query: &HashMap<String, String>,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields =
        FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let key = srt.key();
    let matches = {
        let ns = ns.clone();
        move |o: &Value| {
            ns.as_deref()
                .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
                && labels.matches(o)
                && fields.matches(o)
        }
    };
    let (initial, start_rv, past, mut rx): (Vec<Value>, u64, Vec<Arc<super::store::Event>>, _) =
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            let (items, rv, rx) = state.store.snapshot_and_watch(&key, ns.as_deref());
            (items, rv, Vec::new(), rx)
        } else {
            let rv: u64 = rv_param.parse().map_err(|_| {
                errors::bad_request(format!("invalid resource version: {rv_param}"))
            })?;
            match state.store.watch_from(rv) {
                Ok((past, rx)) => (Vec::new(), rv, past, rx),
                Err(e) => {
                    // A too old resourceVersion: HTTP 200 with one ERROR event (410 Expired).
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    let _ = tx.try_send(line(
                        &json!({"type": "ERROR", "object": status_body(&e, None)}),
                    ));
                    return Ok(streaming(rx, "application/json"));
                }
            }
        };
    let (tx, out_rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let rt = rt.clone();
    let include = query.get("includeObject").cloned();
    tokio::spawn(async move {
        let render = |kind: &str, obj: Value| -> Value {
            let obj = present(&rt, obj);
            if table {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                json!({"type": kind, "object": table::table(&rt, &[obj], rv.as_deref(), include.as_deref())})
            } else {
                json!({"type": kind, "object": obj})
            }
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut last_rv = start_rv;
        for o in initial.into_iter().filter(|o| matches(o)) {
            if tx.send(line(&render("ADDED", o))).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks {
            let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(line(&b)).await.is_err() {
                return;
            }
        }
        let handle_event = |ev: &super::store::Event| -> Option<Value> {
            if ev.key != key || ev.rv <= start_rv {
                return None;
            }
            let now = matches(&ev.object);
            let before = ev.old.as_ref().is_some_and(&matches);
            match (ev.kind, before, now) {
                ("MODIFIED", false, true) => Some(render("ADDED", ev.object.clone())),
                ("MODIFIED", true, false) => Some(render("DELETED", ev.object.clone())),
                (k, _, true) => Some(render(k, ev.object.clone())),
                _ => None,
            }
        };
        for ev in past {
            last_rv = ev.rv;
            if let Some(v) = handle_event(&ev)
                && tx.send(line(&v)).await.is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                }
                r = rx.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= last_rv { continue; }
                        last_rv = ev.rv;
                        if let Some(v) = handle_event(&ev)
                            && tx.send(line(&v)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let e = errors::expired(last_rv, last_rv);
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": status_body(&e, None)}))).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(out_rx, "application/json"))
}

/// `pods/log`: the container's log file written by the kubelet; with `follow=true` it keeps
/// streaming until the container has terminated and the file is drained
/// (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#get-read-log-of-the-specified-pod).
async fn pod_log(
    state: &Arc<ServerState>,
    ns: &str,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let store = state.store.clone();
    let pods = ResourceKey::core("pods");
    let pod = store
        .get(&pods, Some(ns), name)
        .ok_or_else(|| errors::not_found("pods", name))?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            let init: Vec<String> = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !containers.contains(c) && !init.contains(c) {
                return Err(errors::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.clone()
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(errors::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let path = pod_log_path(&state.dir, ns, name, &uid, &container);
    let follow = matches!(query.get("follow").map(String::as_str), Some("true" | "1"));
    let tail: Option<usize> = query.get("tailLines").and_then(|t| t.parse().ok());
    let limit_bytes: Option<usize> = query.get("limitBytes").and_then(|t| t.parse().ok());
    if !path.exists() {
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        if phase == "Pending" {
            return Err(errors::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
    }
    let read_all = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    let mut data = read_all(&path);
    let mut offset = data.len();
    if let Some(n) = tail {
        let text = String::from_utf8_lossy(&data).into_owned();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let start = lines.len().saturating_sub(n);
        data = lines[start..].concat().into_bytes();
    }
    if let Some(l) = limit_bytes {
        data.truncate(l);
    }
    if !follow {
        return Ok(Response::builder()
            .status(200)
            .header("Content-Type", "text/plain")
            .body(full(data))
            .expect("response"));
    }
    let (ns_o, name_o) = (ns.to_string(), name.to_string());
    let terminated = move |store: &Store| -> bool {
        match store.get(&pods, Some(ns_o.as_str()), &name_o) {
            None => true,
            Some(p) if p.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) => {
                true
            }
            Some(p) => {
                if matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                ) {
                    return true;
                }
                p.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c.get("name").and_then(Value::as_str) == Some(container.as_str())
                        })
                    })
                    .is_some_and(|c| c.pointer("/state/terminated").is_some())
            }
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
            return;
        }
        loop {
            let done = terminated(&store);
            let now = read_all(&path);
            if now.len() > offset {
                let chunk = Bytes::copy_from_slice(&now[offset..]);
                offset = now.len();
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(streaming(rx, "text/plain"))
}
