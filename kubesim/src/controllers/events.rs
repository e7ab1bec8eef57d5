//! Core v1 Events, recorded like client-go's event recorder
//! (k8s.io/client-go `tools/record/event.go`, `events_cache.go`): an event names the object it is
//! about (`involvedObject`), a reason, a message, a type (Normal/Warning) and the reporting
//! component. Repeats of the same event are aggregated into one object whose `count` grows
//! and whose `lastTimestamp` moves.
//!
//! Controllers here reconcile every ~150 ms, much more often than a real controller retries,
//! so a repeat within [`REPEAT_AFTER`] is not counted again (the real recorder's backoff plays
//! the same role).

use std::time::Duration;

use serde_json::{Value, json};

use super::super::api::{ObjectStore, res};
use super::{name, namespace, now, s, uid};

/// A repeated event is counted again at most this often.
const REPEAT_AFTER: Duration = Duration::from_secs(10);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`
    Normal,
    /// `Warning`
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Records an event about `object` (a stored object with apiVersion, kind and metadata).
pub fn record(
    store: &dyn ObjectStore,
    object: &Value,
    kind: EventType,
    reason: &str,
    message: &str,
    component: &str,
) {
    let obj_ns = namespace(object);
    // Events about cluster-scoped objects live in `default`, as client-go puts them.
    let ev_ns = if obj_ns.is_empty() { "default" } else { obj_ns };
    let obj_uid = uid(object);
    let existing = store
        .list(&res::events(), Some(ev_ns))
        .into_iter()
        .find(|e| {
            s(e, "/involvedObject/uid") == Some(obj_uid)
                && s(e, "/reason") == Some(reason)
                && s(e, "/message") == Some(message)
                && s(e, "/type") == Some(kind.as_str())
                && s(e, "/source/component") == Some(component)
        });
    let ts = now();
    if let Some(e) = existing {
        let last = s(&e, "/lastTimestamp")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let recent = last.is_some_and(|t| {
            chrono::Utc::now()
                .signed_duration_since(t)
                .to_std()
                .unwrap_or_default()
                < REPEAT_AFTER
        });
        if recent {
            return;
        }
        let count = e.get("count").and_then(Value::as_i64).unwrap_or(1) + 1;
        let _ = store.merge_patch(
            &res::events(),
            Some(ev_ns),
            name(&e),
            &json!({"count": count, "lastTimestamp": ts}),
        );
        return;
    }
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let mut involved = json!({
        "apiVersion": object.get("apiVersion").cloned().unwrap_or(Value::Null),
        "kind": object.get("kind").cloned().unwrap_or(Value::Null),
        "name": name(object),
        "uid": obj_uid,
        "resourceVersion": s(object, "/metadata/resourceVersion").unwrap_or(""),
    });
    if !obj_ns.is_empty() {
        involved["namespace"] = json!(obj_ns);
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{:x}", name(object), nanos), "namespace": ev_ns},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": kind.as_str(),
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": "",
        "count": 1,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "eventTime": null,
    });
    if let Err(e) = store.create(&res::events(), event) {
        tracing::debug!("kubesim: recording event {reason} on {}: {e}", name(object));
    }
}
