//! Authentication (bearer tokens, ServiceAccount tokens, client certificates) and RBAC
//! authorization.
//!
//! Sources: "Authenticating" (static tokens, X509 client certificates, service account
//! tokens and their username `system:serviceaccount:NS:NAME` and groups
//! `system:serviceaccounts`, `system:serviceaccounts:NS`, `system:authenticated`:
//! https://kubernetes.io/docs/reference/access-authn-authz/authentication/), "Using RBAC
//! Authorization" (Role/ClusterRole rules, RoleBinding of a ClusterRole grants it in that
//! namespace only, subresources as `pods/log`, `resourceNames`, `*`:
//! https://kubernetes.io/docs/reference/access-authn-authz/rbac/), `ResourceMatches` and
//! `VerbMatches` in `plugin/pkg/auth/authorizer/rbac/rbac.go`, and the privileged group
//! `system:masters`, which is authorized for everything before RBAC is consulted.
//! Simplified: aggregated ClusterRoles (`aggregationRule`) are not expanded; every
//! authenticated user may read the non-resource discovery paths (the `system:discovery` and
//! `system:public-info-viewer` roles of a real cluster).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::api::{ObjectStore, ResourceKey, TokenIssuer};
use super::store::Store;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Groups (including `system:authenticated`).
    pub groups: Vec<String>,
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection
    pub verb: String,
    /// API group.
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource (`log`, `status`), or empty.
    pub subresource: String,
    /// Namespace, or empty for cluster scope.
    pub namespace: String,
    /// Object name, or empty.
    pub name: String,
}

/// Authenticator and authorizer of one cluster.
pub struct Auth {
    key: ring::hmac::Key,
    tokens: Mutex<HashMap<String, UserInfo>>,
    store: Arc<Store>,
}

impl Auth {
    /// A new authenticator over `store`, with a random signing key.
    pub fn new(store: Arc<Store>) -> Self {
        let secret: [u8; 32] = rand::random();
        Auth {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            tokens: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Maps a static bearer token to a user (the admin token, exec-plugin tokens).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                token.to_string(),
                UserInfo {
                    name: user.into(),
                    groups,
                },
            );
    }

    /// The user a bearer token stands for, or `None` (401).
    pub fn authenticate_token(&self, token: &str) -> Option<UserInfo> {
        if let Some(u) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return Some(u.clone());
        }
        // A ServiceAccount token: a JWT signed with HS256 by the cluster's key.
        let (signed, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        ring::hmac::verify(&self.key, signed.as_bytes(), &sig).ok()?;
        let payload = signed.split('.').nth(1)?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let ns = claims
            .pointer("/kubernetes.io/namespace")
            .and_then(Value::as_str)?;
        let sa = claims
            .pointer("/kubernetes.io/serviceaccount/name")
            .and_then(Value::as_str)?;
        // The token is bound to the ServiceAccount: once it is deleted, the token is invalid.
        let obj = self
            .store
            .get(&ResourceKey::core("serviceaccounts"), Some(ns), sa)?;
        let uid = claims
            .pointer("/kubernetes.io/serviceaccount/uid")
            .and_then(Value::as_str);
        if uid.is_some() && uid != obj.pointer("/metadata/uid").and_then(Value::as_str) {
            return None;
        }
        Some(UserInfo {
            name: format!("system:serviceaccount:{ns}:{sa}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        })
    }

    /// Whether `user` may do `a`.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let rbac = |r: &str| ResourceKey::new("rbac.authorization.k8s.io", r);
        let role_rules = |kind: &str, name: &str, ns: &str| -> Vec<Value> {
            let obj = if kind == "ClusterRole" {
                self.store.get(&rbac("clusterroles"), None, name)
            } else {
                self.store.get(&rbac("roles"), Some(ns), name)
            };
            obj.and_then(|o| o.get("rules").and_then(Value::as_array).cloned())
                .unwrap_or_default()
        };
        for b in self.store.list(&rbac("clusterrolebindings"), None) {
            if binds(&b, user, "") {
                let name = b
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if role_rules("ClusterRole", name, "")
                    .iter()
                    .any(|r| rule_allows(r, a))
                {
                    return true;
                }
            }
        }
        if !a.namespace.is_empty() {
            for b in self.store.list(&rbac("rolebindings"), Some(&a.namespace)) {
                if binds(&b, user, &a.namespace) {
                    let kind = b
                        .pointer("/roleRef/kind")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let name = b
                        .pointer("/roleRef/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if role_rules(kind, name, &a.namespace)
                        .iter()
                        .any(|r| rule_allows(r, a))
                    {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// The 403 message of the real API server for a denied request
    /// (`k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`, ForbiddenStatusError).
    pub fn forbidden_message(user: &UserInfo, a: &Attributes) -> String {
        let mut resource = a.resource.clone();
        if !a.subresource.is_empty() {
            resource = format!("{resource}/{}", a.subresource);
        }
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", a.namespace)
        };
        let why = format!(
            "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, a.verb, a.group
        );
        let qualified = super::registry::qualified(&a.group, &a.resource);
        if a.name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} \"{}\" is forbidden: {why}", a.name)
        }
    }
}

fn binds(binding: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else {
        return false;
    };
    subjects.iter().any(|s| {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "User" => user.name == name,
            "Group" => user.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                // A ServiceAccount subject without a namespace means the binding's namespace.
                let ns = s
                    .get("namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn has(list: Option<&Value>, want: &str) -> bool {
    list.and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(want)))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !(has(rule.get("verbs"), "*") || has(rule.get("verbs"), &a.verb)) {
        return false;
    }
    if !(has(rule.get("apiGroups"), "*") || has(rule.get("apiGroups"), &a.group)) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resources = rule
        .get("resources")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let res_ok = resources.iter().filter_map(Value::as_str).any(|r| {
        r == "*"
            || r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !res_ok {
        return false;
    }
    match rule.get("resourceNames").and_then(Value::as_array) {
        Some(names) if !names.is_empty() => {
            !a.name.is_empty() && names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    }
}

impl TokenIssuer for Auth {
    fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let uid = self
            .store
            .get(&ResourceKey::core("serviceaccounts"), Some(namespace), name)
            .and_then(|o| {
                o.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "iat": now,
            "nbf": now,
            "exp": now + 365 * 24 * 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}}
        });
        if let Some(uid) = uid {
            claims["kubernetes.io"]["serviceaccount"]["uid"] = Value::String(uid);
        }
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let sig = ring::hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
