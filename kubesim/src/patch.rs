//! Strategic merge patch and the simplified server-side apply built on it.
//!
//! Strategic merge patch: "Update API Objects in Place Using kubectl patch"
//! (https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/)
//! and the patch-strategy directives of `k8s.io/apimachinery/pkg/util/strategicpatch`
//! (`$patch: replace|delete|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`,
//! `$setElementOrder/<field>`). Merge keys come from the `patchMergeKey` tags of k8s.io/api.
//! Simplified: the merge key of a list is chosen by the field's name (not by the Go type), so a
//! list named like one of those below merges by its key wherever it appears; `$setElementOrder`
//! is accepted and ignored (merged lists keep the target's order, new elements go last).

use serde_json::{Map, Value};

/// How a list field merges.
enum ListStrategy {
    /// Merge elements that have the same value of this key.
    Key(&'static str),
    /// A list of scalars merged as a set (metadata.finalizers).
    PrimitiveSet,
    /// Replaced as a whole.
    Replace,
}

fn strategy(field: &str, sample: &[Value]) -> ListStrategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => ListStrategy::Key("name"),
        "volumeMounts" => ListStrategy::Key("mountPath"),
        "volumeDevices" => ListStrategy::Key("devicePath"),
        "ownerReferences" => ListStrategy::Key("uid"),
        "conditions" => ListStrategy::Key("type"),
        "hostAliases" => ListStrategy::Key("ip"),
        "topologySpreadConstraints" => ListStrategy::Key("topologyKey"),
        "ports" => {
            if sample.iter().any(|e| e.get("containerPort").is_some()) {
                ListStrategy::Key("containerPort")
            } else {
                ListStrategy::Key("port")
            }
        }
        "finalizers" => ListStrategy::PrimitiveSet,
        _ => ListStrategy::Replace,
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|e| e.get("$patch").is_none())
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch to `target`.
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Err("strategic merge patch must be a JSON object".into());
    };
    let mut t = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    match merge_map(&mut t, p)? {
        true => Ok(Value::Object(t)),
        false => Ok(Value::Null),
    }
}

/// Merges `p` into `t`; returns false when the patch says `$patch: delete` for the whole map.
fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<bool, String> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(false),
        Some("replace") => {
            *t = match strip_directives(&Value::Object(p.clone())) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            return Ok(true);
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other} in map")),
    }
    for (k, pv) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), pv) {
                list.retain(|e| !del.contains(e));
            }
            continue;
        }
        match pv {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                let mut child = match t.get(k) {
                    Some(Value::Object(m)) => m.clone(),
                    _ => Map::new(),
                };
                if merge_map(&mut child, pm)? {
                    t.insert(k.clone(), Value::Object(child));
                } else {
                    t.remove(k);
                }
            }
            Value::Array(pa) => {
                let current = match t.get(k) {
                    Some(Value::Array(a)) => a.clone(),
                    _ => Vec::new(),
                };
                let merged = merge_list(k, current, pa)?;
                t.insert(k.clone(), Value::Array(merged));
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(true)
}

fn merge_list(field: &str, mut current: Vec<Value>, patch: &[Value]) -> Result<Vec<Value>, String> {
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip_directives)
            .collect());
    }
    let mut sample = current.clone();
    sample.extend(patch.iter().cloned());
    match strategy(field, &sample) {
        ListStrategy::Replace => Ok(patch.iter().map(strip_directives).collect()),
        ListStrategy::PrimitiveSet => {
            for e in patch {
                if !current.contains(e) {
                    current.push(e.clone());
                }
            }
            Ok(current)
        }
        ListStrategy::Key(key) => {
            for e in patch {
                let Some(kv) = e.get(key) else {
                    return Err(format!(
                        "map: {e} does not contain declared merge key: {key}"
                    ));
                };
                let pos = current.iter().position(|c| c.get(key) == Some(kv));
                if e.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        current.remove(i);
                    }
                    continue;
                }
                let Value::Object(pm) = e else { continue };
                match pos {
                    Some(i) => {
                        let mut m = current[i].as_object().cloned().unwrap_or_default();
                        merge_map(&mut m, pm)?;
                        current[i] = Value::Object(m);
                    }
                    None => current.push(strip_directives(e)),
                }
            }
            Ok(current)
        }
    }
}

/// A strategic merge patch that removes what `prev` set and `next` no longer sets: keys of maps
/// become `null`, elements of keyed lists get `$patch: delete`, scalar-set elements go to
/// `$deleteFromPrimitiveList`. Atomic lists are left to the next patch to replace.
fn removal_patch(prev: &Value, next: &Value, field: &str) -> Option<Value> {
    match (prev, next) {
        (Value::Object(pm), Value::Object(nm)) => {
            let mut out = Map::new();
            for (k, pv) in pm {
                match nm.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(nv) => {
                        if let Some(sub) = removal_patch(pv, nv, k) {
                            out.insert(k.clone(), sub);
                        }
                    }
                }
            }
            // Lists are handled in the parent through the `$deleteFromPrimitiveList` key.
            let extra: Vec<(String, Value)> = out
                .iter()
                .filter_map(|(k, v)| {
                    v.get("$deleteFromPrimitiveList")
                        .map(|d| (format!("$deleteFromPrimitiveList/{k}"), d.clone()))
                })
                .collect();
            for (k, v) in extra {
                out.remove(k.trim_start_matches("$deleteFromPrimitiveList/"));
                out.insert(k, v);
            }
            if out.is_empty() {
                None
            } else {
                Some(Value::Object(out))
            }
        }
        (Value::Array(pa), Value::Array(na)) => {
            let mut sample = pa.clone();
            sample.extend(na.iter().cloned());
            match strategy(field, &sample) {
                ListStrategy::Key(key) => {
                    let gone: Vec<Value> = pa
                        .iter()
                        .filter_map(|e| e.get(key))
                        .filter(|kv| !na.iter().any(|n| n.get(key) == Some(*kv)))
                        .map(|kv| serde_json::json!({"$patch": "delete", key: kv}))
                        .collect();
                    if gone.is_empty() {
                        None
                    } else {
                        Some(Value::Array(gone))
                    }
                }
                ListStrategy::PrimitiveSet => {
                    let gone: Vec<Value> = pa.iter().filter(|e| !na.contains(e)).cloned().collect();
                    if gone.is_empty() {
                        None
                    } else {
                        Some(serde_json::json!({"$deleteFromPrimitiveList": gone}))
                    }
                }
                ListStrategy::Replace => None,
            }
        }
        _ => None,
    }
}

/// Server-side apply, simplified: a field manager owns exactly the fields of the configuration
/// it applied last. Applying removes the fields that manager applied before and no longer
/// applies, then merges the new configuration like a strategic merge patch (maps merge, keyed
/// lists merge by key, other lists are replaced). Conflicts between managers are not detected
/// (every apply behaves as if `force=true`), and `managedFields` is not written.
/// (Semantics: https://kubernetes.io/docs/reference/using-api/server-side-apply/)
pub fn apply(live: &Value, applied: &Value, previous: Option<&Value>) -> Result<Value, String> {
    let mut out = live.clone();
    if let Some(prev) = previous
        && let Some(rm) = removal_patch(prev, applied, "")
    {
        out = strategic_merge(&out, &rm)?;
    }
    strategic_merge(&out, applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_finalizers_merge_as_a_set() {
        let t = json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": [{"name": "x", "image": "1"}, {"name": "y", "image": "2"}]}});
        let p = json!({"metadata": {"finalizers": ["b"]}, "spec": {"containers": [{"name": "y", "image": "3"}, {"name": "z", "image": "4"}]}});
        let r = strategic_merge(&t, &p).unwrap();
        assert_eq!(r["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            r["spec"]["containers"],
            json!([{"name": "x", "image": "1"}, {"name": "y", "image": "3"}, {"name": "z", "image": "4"}])
        );
    }

    #[test]
    fn patch_delete_directive_removes_a_keyed_element() {
        let t = json!({"volumes": [{"name": "a"}, {"name": "b"}]});
        let r =
            strategic_merge(&t, &json!({"volumes": [{"name": "a", "$patch": "delete"}]})).unwrap();
        assert_eq!(r, json!({"volumes": [{"name": "b"}]}));
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}});
        let prev = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let next = json!({"metadata": {"labels": {"a": "3"}}});
        let r = apply(&live, &next, Some(&prev)).unwrap();
        assert_eq!(r, json!({"metadata": {"labels": {"a": "3", "other": "x"}}}));
    }
}
