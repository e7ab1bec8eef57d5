//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`
//! ("Receiving resources as Tables", https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables).
//! Columns follow `pkg/printers/internalversion/printers.go` for the kinds below and
//! `additionalPrinterColumns` for custom kinds; everything else prints Name and Age.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// `duration.HumanDuration` of the time since an RFC 3339 timestamp.
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else {
        format!("{d}d")
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(x)) => x.clone(),
        Some(other) => other.to_string(),
    }
}

fn or(v: String, d: &str) -> String {
    if v.is_empty() { d.to_string() } else { v }
}

fn modes(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Follows a simple JSONPath (`.status.phase`, `.spec.items[0].name`).
fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, idx) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn col(name: &str, ty: &str, priority: i64) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

type Row = Vec<Value>;

fn columns_and_cells(rt: &ResourceType, obj: &Value) -> (Vec<Value>, Row) {
    let name = json!(s(obj.pointer("/metadata/name")));
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let age_cell = json!(age(created));
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "persistentvolumeclaims") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Volume", "string", 0),
                col("Capacity", "string", 0),
                col("Access Modes", "string", 0),
                col("StorageClass", "string", 0),
                col("VolumeAttributesClass", "string", 0),
                col("Age", "string", 0),
                col("VolumeMode", "string", 1),
            ],
            vec![
                name,
                json!(s(obj.pointer("/status/phase"))),
                json!(s(obj.pointer("/spec/volumeName"))),
                json!(s(obj.pointer("/status/capacity/storage"))),
                json!(modes(obj.pointer("/status/accessModes"))),
                json!(s(obj.pointer("/spec/storageClassName"))),
                json!(or(
                    s(obj.pointer("/spec/volumeAttributesClassName")),
                    "<unset>"
                )),
                age_cell,
                json!(s(obj.pointer("/spec/volumeMode"))),
            ],
        ),
        ("", "persistentvolumes") => {
            let claim = match (
                obj.pointer("/spec/claimRef/namespace"),
                obj.pointer("/spec/claimRef/name"),
            ) {
                (Some(n), Some(c)) => format!("{}/{}", s(Some(n)), s(Some(c))),
                _ => String::new(),
            };
            (
                vec![
                    col("Name", "string", 0),
                    col("Capacity", "string", 0),
                    col("Access Modes", "string", 0),
                    col("Reclaim Policy", "string", 0),
                    col("Status", "string", 0),
                    col("Claim", "string", 0),
                    col("StorageClass", "string", 0),
                    col("VolumeAttributesClass", "string", 0),
                    col("Reason", "string", 0),
                    col("Age", "string", 0),
                    col("VolumeMode", "string", 1),
                ],
                vec![
                    name,
                    json!(s(obj.pointer("/spec/capacity/storage"))),
                    json!(modes(obj.pointer("/spec/accessModes"))),
                    json!(s(obj.pointer("/spec/persistentVolumeReclaimPolicy"))),
                    json!(s(obj.pointer("/status/phase"))),
                    json!(claim),
                    json!(s(obj.pointer("/spec/storageClassName"))),
                    json!(or(
                        s(obj.pointer("/spec/volumeAttributesClassName")),
                        "<unset>"
                    )),
                    json!(s(obj.pointer("/status/reason"))),
                    age_cell,
                    json!(s(obj.pointer("/spec/volumeMode"))),
                ],
            )
        }
        ("", "pods") => {
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum();
            let mut status = or(
                s(obj.pointer("/status/reason")),
                &s(obj.pointer("/status/phase")),
            );
            for c in &statuses {
                if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                    status = r.to_string();
                } else if let Some(r) = c
                    .pointer("/state/terminated/reason")
                    .and_then(Value::as_str)
                {
                    status = r.to_string();
                }
            }
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            (
                vec![
                    col("Name", "string", 0),
                    col("Ready", "string", 0),
                    col("Status", "string", 0),
                    col("Restarts", "string", 0),
                    col("Age", "string", 0),
                    col("IP", "string", 1),
                    col("Node", "string", 1),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{total}")),
                    json!(status),
                    json!(restarts.to_string()),
                    age_cell,
                    json!(or(s(obj.pointer("/status/podIP")), "<none>")),
                    json!(or(s(obj.pointer("/spec/nodeName")), "<none>")),
                ],
            )
        }
        ("", "events") => {
            let last = obj
                .get("lastTimestamp")
                .and_then(Value::as_str)
                .or_else(|| obj.get("eventTime").and_then(Value::as_str))
                .or(created);
            let object = format!(
                "{}/{}",
                s(obj.pointer("/involvedObject/kind")).to_lowercase(),
                s(obj.pointer("/involvedObject/name"))
            );
            (
                vec![
                    col("Last Seen", "string", 0),
                    col("Type", "string", 0),
                    col("Reason", "string", 0),
                    col("Object", "string", 0),
                    col("Message", "string", 0),
                    col("Name", "string", 1),
                ],
                vec![
                    json!(age(last)),
                    json!(s(obj.get("type"))),
                    json!(s(obj.get("reason"))),
                    json!(object),
                    json!(s(obj.get("message"))),
                    name,
                ],
            )
        }
        ("", "namespaces") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            vec![name, json!(s(obj.pointer("/status/phase"))), age_cell],
        ),
        ("storage.k8s.io", "storageclasses") => (
            vec![
                col("Name", "string", 0),
                col("Provisioner", "string", 0),
                col("ReclaimPolicy", "string", 0),
                col("VolumeBindingMode", "string", 0),
                col("AllowVolumeExpansion", "string", 0),
                col("Age", "string", 0),
            ],
            vec![
                name,
                json!(s(obj.get("provisioner"))),
                json!(s(obj.get("reclaimPolicy"))),
                json!(s(obj.get("volumeBindingMode"))),
                json!(or(s(obj.get("allowVolumeExpansion")), "false")),
                age_cell,
            ],
        ),
        ("apps", "deployments") => {
            let want = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            (
                vec![
                    col("Name", "string", 0),
                    col("Ready", "string", 0),
                    col("Up-to-date", "string", 0),
                    col("Available", "string", 0),
                    col("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(format!("{}/{want}", n("/status/readyReplicas"))),
                    json!(n("/status/updatedReplicas").to_string()),
                    json!(n("/status/availableReplicas").to_string()),
                    age_cell,
                ],
            )
        }
        _ => {
            let printer = rt
                .crd
                .as_ref()
                .map(|c| c.printer_columns.clone())
                .unwrap_or_default();
            if printer.is_empty() {
                return (
                    vec![col("Name", "string", 0), col("Age", "string", 0)],
                    vec![name, age_cell],
                );
            }
            let mut cols = vec![col("Name", "string", 0)];
            let mut cells = vec![name];
            for p in printer {
                let cname = s(p.get("name"));
                let ty = s(p.get("type"));
                let pri = p.get("priority").and_then(Value::as_i64).unwrap_or(0);
                let v = json_path(obj, &s(p.get("jsonPath")));
                let cell = if ty == "date" {
                    json!(age(v.and_then(Value::as_str)))
                } else {
                    json!(s(v))
                };
                cols.push(col(&cname, "string", pri));
                cells.push(cell);
            }
            (cols, cells)
        }
    }
}

/// A Table of `objs`. `include` is the `includeObject` parameter (`None`, `Object`,
/// `Metadata`, the default).
pub fn table(rt: &ResourceType, objs: &[Value], rv: Option<&str>, include: Option<&str>) -> Value {
    let mut columns = None;
    let mut rows = Vec::new();
    for o in objs {
        let (cols, cells) = columns_and_cells(rt, o);
        columns.get_or_insert(cols);
        let mut row = json!({"cells": cells});
        match include.unwrap_or("Metadata") {
            "None" => {}
            "Object" => row["object"] = o.clone(),
            _ => {
                row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
            }
        }
        rows.push(row);
    }
    let columns = columns.unwrap_or_else(|| columns_and_cells(rt, &json!({})).0);
    let mut meta = json!({});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows})
}
