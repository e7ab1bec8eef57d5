//! `events.k8s.io/v1` Events are a second view of core v1 Events (one storage, two shapes),
//! as in the real API server (`pkg/apis/events/v1/conversion.go`): `regarding` is
//! `involvedObject`, `note` is `message`, `reportingController` is `reportingComponent`,
//! `deprecatedSource`/`deprecatedFirstTimestamp`/`deprecatedLastTimestamp`/`deprecatedCount`
//! are `source`/`firstTimestamp`/`lastTimestamp`/`count`. So events that kube-runtime's
//! `Recorder` writes through events.k8s.io show in `kubectl describe`.

use serde_json::{Map, Value};

const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, from_core: bool, api_version: &str) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let nk = RENAMES
            .iter()
            .find(|(c, e)| if from_core { c == k } else { e == k })
            .map(|(c, e)| if from_core { *e } else { *c })
            .unwrap_or(k.as_str());
        out.insert(nk.to_string(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// A stored core v1 Event as events.k8s.io/v1 serves it.
pub fn core_event_to_events_v1(obj: &Value) -> Value {
    rename(obj, true, "events.k8s.io/v1")
}

/// An events.k8s.io/v1 Event as it is stored (core v1).
pub fn events_v1_to_core_event(obj: &Value) -> Value {
    rename(obj, false, "v1")
}
