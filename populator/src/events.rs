//! Events on the user's PVC (`events.k8s.io/v1`).
//!
//! kube-runtime's `Recorder` folds every repeat of the same type, reason and action on an
//! object into the first event's series and keeps the first note, so "attempt 2 of 5 failed"
//! and "gave up after 5 attempts" never reached `kubectl describe pvc`: only "attempt 1 of 5"
//! did, with a count. Here a repeat is folded only when its note is the same too, which is
//! what client-go's event correlator does with identical events; a different note is a new
//! event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::Mutex;

/// How long an event stays a candidate for folding repeats into (kube-runtime and client-go
/// use a few minutes too).
const FOLD_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Progress as expected.
    Normal,
    /// Something a person should look at.
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// What makes two events the same (and a repeat a series).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    regarding_uid: String,
    regarding_name: String,
    kind: Kind,
    reason: String,
    action: String,
    note: String,
}

/// Publishes events as one reporting controller instance.
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
    seen: Mutex<HashMap<Key, (Event, Instant)>>,
}

impl Events {
    /// A publisher reporting as `controller` (the component) and `instance` (this replica).
    pub fn new(client: Client, controller: &str, instance: &str) -> Events {
        Events {
            client,
            controller: controller.into(),
            instance: instance.into(),
            seen: Mutex::default(),
        }
    }

    /// Records one event about `regarding`; an identical one within a few minutes bumps the
    /// earlier event's series count instead.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        kind: Kind,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = Key {
            regarding_uid: regarding.uid.clone().unwrap_or_default(),
            regarding_name: regarding.name.clone().unwrap_or_default(),
            kind,
            reason: reason.into(),
            action: action.into(),
            note,
        };
        let earlier = {
            let mut seen = self.seen.lock().await;
            seen.retain(|_, (_, at)| at.elapsed() < FOLD_WINDOW);
            seen.get(&key).map(|(e, _)| e.clone())
        };
        let now = Timestamp::now();
        let event = match earlier {
            Some(mut event) => {
                let count = event.series.as_ref().map_or(2, |s| s.count + 1);
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                let name = event.metadata.name.clone().unwrap_or_default();
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&event))
                    .await?;
                event
            }
            None => {
                let event = self.new_event(regarding, &key, now);
                api.create(&PostParams::default(), &event).await?
            }
        };
        self.seen.lock().await.insert(key, (event, Instant::now()));
        Ok(())
    }

    fn new_event(&self, regarding: &ObjectReference, key: &Key, now: Timestamp) -> Event {
        let stem = if key.regarding_name.is_empty() {
            &self.controller
        } else {
            &key.regarding_name
        };
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{stem}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(key.action.clone()),
            reason: Some(key.reason.clone()),
            note: Some(key.note.clone()),
            type_: Some(key.kind.as_str().into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}
