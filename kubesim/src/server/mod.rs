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
//!
//! Here: routing, authentication, authorization and the request's parts; the verbs in
//! `dispatch`, watches and pod logs in `streams`.

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

mod dispatch;
mod streams;

use dispatch::dispatch;
use streams::{pod_log, watch};

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
