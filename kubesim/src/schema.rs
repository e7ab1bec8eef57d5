//! Structural-schema handling of custom resources: defaulting, pruning and validation, in that
//! order, as the apiextensions-apiserver does on create and update.
//!
//! Source: "Extend the Kubernetes API with CustomResourceDefinitions", sections "Specifying a
//! structural schema", "Field pruning", "Defaulting", "Validation" and
//! "Controlling pruning with x-kubernetes-preserve-unknown-fields"
//! (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/).
//! Messages follow the field-error formats of `k8s.io/apimachinery/pkg/util/validation/field`
//! ("Required value", "Unsupported value: ...: supported values: ...", "Invalid value: ...")
//! and kube-openapi's validate package ("in body must be of type").
//! Simplified: `pattern`, `format` and CEL rules (`x-kubernetes-validations`) are not checked.

use serde_json::Value;

/// One field error: the path, the message text after the path, and the cause reason.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// `spec.size`
    pub field: String,
    /// `Required value`
    pub detail: String,
    /// `FieldValueRequired`
    pub reason: &'static str,
}

impl FieldError {
    /// `spec.size: Required value`
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.detail)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

fn truthy(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// Applies defaults and prunes unknown fields of `obj` (a whole custom object) in place, then
/// returns the validation errors. `apiVersion`, `kind` and `metadata` at the root are kept as
/// they are (ObjectMeta is validated by the generic code).
pub fn default_prune_validate(schema: &Value, obj: &mut Value) -> (Vec<FieldError>, Vec<String>) {
    let mut errs = Vec::new();
    if let Value::Object(map) = obj {
        let saved: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| map.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        walk(schema, obj, "", &mut errs, true);
        if let Value::Object(map) = obj {
            for (k, v) in saved {
                map.insert(k, v);
            }
        }
    }
    // Pruned fields are reported separately: they only fail `fieldValidation=Strict`.
    let (pruned, errs): (Vec<FieldError>, Vec<FieldError>) =
        errs.into_iter().partition(|e| e.reason == PRUNED);
    (errs, pruned.into_iter().map(|e| e.field).collect())
}

const PRUNED: &str = "Pruned";

fn walk(schema: &Value, v: &mut Value, path: &str, errs: &mut Vec<FieldError>, root: bool) {
    let int_or_string = truthy(schema, "x-kubernetes-int-or-string");
    let preserve = truthy(schema, "x-kubernetes-preserve-unknown-fields");
    let ty = schema.get("type").and_then(Value::as_str);
    if int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            errs.push(FieldError {
                field: path.into(),
                detail: format!(
                    "Invalid value: {}: {path} in body must be of type integer,string: {}",
                    quoted(&Value::String(type_name(v).into())),
                    quoted(&Value::String(type_name(v).into()))
                ),
                reason: "FieldValueInvalid",
            });
            return;
        }
    } else if let Some(t) = ty {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errs.push(FieldError {
                field: path.into(),
                detail: format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
                ),
                reason: "FieldValueInvalid",
            });
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(quoted).collect();
        errs.push(FieldError {
            field: path.into(),
            detail: format!(
                "Unsupported value: {}: supported values: {}",
                quoted(v),
                list.join(", ")
            ),
            reason: "FieldValueNotSupported",
        });
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            // Nulls of non-nullable fields are pruned ("Defaulting and Nullable").
            let nullable_keys: Vec<String> = map
                .iter()
                .filter(|(k, val)| {
                    val.is_null()
                        && !props
                            .and_then(|p| p.get(k.as_str()))
                            .is_some_and(|s| truthy(s, "nullable"))
                        && !additional.is_some_and(|s| truthy(s, "nullable"))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in nullable_keys {
                map.remove(&k);
            }
            if let Some(props) = props {
                for (k, sub) in props {
                    if !map.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(additional);
                match sub {
                    Some(sub) => {
                        let child = map.get_mut(&k).expect("key listed above");
                        let embedded_meta = root && k == "metadata";
                        if !embedded_meta {
                            walk(sub, child, &join(path, &k), errs, false);
                        }
                    }
                    None if preserve
                        || schema.get("additionalProperties").and_then(Value::as_bool)
                            == Some(true) => {}
                    None if props.is_none() && ty.is_none() => {}
                    // An embedded resource keeps its apiVersion, kind and metadata.
                    None if truthy(schema, "x-kubernetes-embedded-resource")
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => {
                        map.remove(&k);
                        errs.push(FieldError {
                            field: join(path, &k),
                            detail: String::new(),
                            reason: PRUNED,
                        });
                    }
                }
            }
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errs.push(FieldError {
                            field: join(path, r),
                            detail: "Required value".into(),
                            reason: "FieldValueRequired",
                        });
                    }
                }
            }
            check_len(
                schema,
                map.len(),
                "minProperties",
                "maxProperties",
                path,
                v_quoted_obj(),
                errs,
            );
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), errs, false);
                }
            }
            check_len(
                schema,
                items.len(),
                "minItems",
                "maxItems",
                path,
                "array".into(),
                errs,
            );
        }
        Value::String(s) => {
            let n = s.chars().count();
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && (n as u64) < min
            {
                errs.push(FieldError {
                    field: path.into(),
                    detail: format!(
                        "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                    ),
                    reason: "FieldValueInvalid",
                });
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && (n as u64) > max
            {
                errs.push(FieldError {
                    field: path.into(),
                    detail: format!("Too long: may not be more than {max} bytes"),
                    reason: "FieldValueTooLong",
                });
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(s))
            {
                errs.push(FieldError {
                    field: path.into(),
                    detail: format!(
                        "Invalid value: \"{s}\": {path} in body should match '{pattern}'"
                    ),
                    reason: "FieldValueInvalid",
                });
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errs.push(FieldError { field: path.into(), detail: format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"), reason: "FieldValueInvalid" });
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errs.push(FieldError {
                    field: path.into(),
                    detail: format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ),
                    reason: "FieldValueInvalid",
                });
            }
        }
        _ => {}
    }
}

fn v_quoted_obj() -> String {
    "object".into()
}

fn check_len(
    schema: &Value,
    len: usize,
    min_key: &str,
    max_key: &str,
    path: &str,
    what: String,
    errs: &mut Vec<FieldError>,
) {
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
        && (len as u64) < min
    {
        errs.push(FieldError {
            field: path.into(),
            detail: format!(
                "Invalid value: {len}: {path} in body should have at least {min} {}",
                if what == "array" {
                    "items"
                } else {
                    "properties"
                }
            ),
            reason: "FieldValueInvalid",
        });
    }
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
        && (len as u64) > max
    {
        errs.push(FieldError {
            field: path.into(),
            detail: format!(
                "Too many: {len}: must have at most {max} {}",
                if what == "array" {
                    "items"
                } else {
                    "properties"
                }
            ),
            reason: "FieldValueTooMany",
        });
    }
}
