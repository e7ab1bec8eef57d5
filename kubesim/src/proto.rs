//! Just enough of the Kubernetes protobuf encoding to read the request bodies kubectl's typed
//! clients send as `application/vnd.kubernetes.protobuf`: SelfSubjectAccessReview (`kubectl
//! auth can-i`) and the kinds of `kubectl create namespace|serviceaccount|secret|configmap`. Responses are always JSON, which client-go accepts.
//!
//! Format: "Kubernetes Protobuf encoding"
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding): the magic
//! `k8s\0`, then a `runtime.Unknown` message (1: typeMeta {1: apiVersion, 2: kind}, 2: raw,
//! 3: contentEncoding, 4: contentType); `raw` is the object's message as generated from
//! `k8s.io/api/.../generated.proto`.

use serde_json::{Value, json};

/// One field: its number, and its bytes (length-delimited) or value (varint).
type Field = (u64, Result<Vec<u8>, u64>);

/// Length-delimited and varint fields of one message.
fn fields(mut b: &[u8]) -> Option<Vec<Field>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Err(varint(&mut b)?))),
            2 => {
                let len = varint(&mut b)? as usize;
                if b.len() < len {
                    return None;
                }
                out.push((num, Ok(b[..len].to_vec())));
                b = &b[len..];
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

fn string_fields(b: &[u8]) -> Vec<(u64, String)> {
    fields(b)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, v)| {
            v.ok()
                .map(|bytes| (n, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

fn sub(b: &[u8], num: u64) -> Option<Vec<u8>> {
    fields(b)?
        .into_iter()
        .find(|(n, v)| *n == num && v.is_ok())
        .and_then(|(_, v)| v.ok())
}

/// The `(apiVersion, kind, raw)` of a protobuf-encoded request body.
pub fn unwrap_unknown(body: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let rest = body.strip_prefix(b"k8s\0")?;
    let type_meta = sub(rest, 1).unwrap_or_default();
    let tm = string_fields(&type_meta);
    let get = |n: u64| {
        tm.iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Some((get(1), get(2), sub(rest, 2)?))
}

/// A SelfSubjectAccessReview message as JSON (spec.resourceAttributes / nonResourceAttributes).
pub fn self_subject_access_review(raw: &[u8]) -> Option<Value> {
    let spec = sub(raw, 2)?;
    let mut out = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {}, "spec": {}});
    if let Some(ra) = sub(&spec, 1) {
        let names = [
            "",
            "namespace",
            "verb",
            "group",
            "version",
            "resource",
            "subresource",
            "name",
        ];
        let mut m = serde_json::Map::new();
        for (n, v) in string_fields(&ra) {
            if let Some(k) = names.get(n as usize).filter(|k| !k.is_empty()) {
                m.insert(k.to_string(), Value::String(v));
            }
        }
        out["spec"]["resourceAttributes"] = Value::Object(m);
    }
    if let Some(nra) = sub(&spec, 2) {
        let mut m = serde_json::Map::new();
        for (n, v) in string_fields(&nra) {
            match n {
                1 => m.insert("path".into(), Value::String(v)),
                2 => m.insert("verb".into(), Value::String(v)),
                _ => None,
            };
        }
        out["spec"]["nonResourceAttributes"] = Value::Object(m);
    }
    Some(out)
}

fn map_entries(b: &[u8], num: u64, bytes_values: bool) -> Option<Value> {
    use base64::Engine;
    let mut m = serde_json::Map::new();
    for (n, v) in fields(b)? {
        let Ok(entry) = v else { continue };
        if n != num {
            continue;
        }
        let mut key = String::new();
        let mut val = Value::String(String::new());
        for (en, ev) in fields(&entry)? {
            let Ok(bytes) = ev else { continue };
            match en {
                1 => key = String::from_utf8_lossy(&bytes).into_owned(),
                2 if bytes_values => {
                    val = Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
                }
                2 => val = Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                _ => {}
            }
        }
        m.insert(key, val);
    }
    if m.is_empty() {
        None
    } else {
        Some(Value::Object(m))
    }
}

fn repeated_strings(b: &[u8], num: u64) -> Option<Value> {
    let v: Vec<Value> = string_fields(b)
        .into_iter()
        .filter(|(n, _)| *n == num)
        .map(|(_, s)| Value::String(s))
        .collect();
    if v.is_empty() {
        None
    } else {
        Some(Value::Array(v))
    }
}

fn varint_field(b: &[u8], num: u64) -> Option<u64> {
    fields(b)?
        .into_iter()
        .find(|(n, v)| *n == num && v.is_err())
        .and_then(|(_, v)| v.err())
}

/// ObjectMeta: name 1, generateName 2, namespace 3, labels 11, annotations 12, finalizers 14.
fn object_meta(b: &[u8]) -> Value {
    let mut m = serde_json::Map::new();
    for (n, v) in string_fields(b) {
        match n {
            1 => m.insert("name".into(), Value::String(v)),
            2 => m.insert("generateName".into(), Value::String(v)),
            3 => m.insert("namespace".into(), Value::String(v)),
            _ => None,
        };
    }
    if let Some(l) = map_entries(b, 11, false) {
        m.insert("labels".into(), l);
    }
    if let Some(a) = map_entries(b, 12, false) {
        m.insert("annotations".into(), a);
    }
    if let Some(f) = repeated_strings(b, 14) {
        m.insert("finalizers".into(), f);
    }
    Value::Object(m)
}

/// The kinds `kubectl create namespace|serviceaccount|secret|configmap` send as protobuf
/// (field numbers from `k8s.io/api/core/v1/generated.proto`).
pub fn core_object(kind: &str, raw: &[u8]) -> Option<Value> {
    let mut out = json!({"apiVersion": "v1", "kind": kind, "metadata": object_meta(&sub(raw, 1).unwrap_or_default())});
    match kind {
        "Namespace" => {}
        "ServiceAccount" => {
            if let Some(v) = varint_field(raw, 4) {
                out["automountServiceAccountToken"] = Value::Bool(v != 0);
            }
        }
        "Secret" => {
            if let Some(d) = map_entries(raw, 2, true) {
                out["data"] = d;
            }
            if let Some(d) = map_entries(raw, 4, false) {
                out["stringData"] = d;
            }
            if let Some((_, t)) = string_fields(raw).into_iter().find(|(n, _)| *n == 3) {
                out["type"] = Value::String(t);
            }
            if let Some(v) = varint_field(raw, 5) {
                out["immutable"] = Value::Bool(v != 0);
            }
        }
        "ConfigMap" => {
            if let Some(d) = map_entries(raw, 2, false) {
                out["data"] = d;
            }
            if let Some(d) = map_entries(raw, 3, true) {
                out["binaryData"] = d;
            }
            if let Some(v) = varint_field(raw, 4) {
                out["immutable"] = Value::Bool(v != 0);
            }
        }
        _ => return None,
    }
    Some(out)
}
