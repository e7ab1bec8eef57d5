//! The Deployment controller (kubernetes/kubernetes `pkg/controller/deployment`, with the
//! ReplicaSet controller's pod management from `pkg/controller/replicaset`; docs:
//! "Deployments").
//!
//! Simplified: there is no ReplicaSet layer. The Deployment owns its pods directly
//! (`ownerReferences` with `controller: true`, so deleting the Deployment garbage-collects
//! them); pods are named `<deployment>-<pod-template-hash>-<5 random>` and labelled with the
//! template's labels plus `pod-template-hash`, like pods of a ReplicaSet. The hash is computed
//! the same way in spirit (FNV-1a over the template, encoded with the safe alphabet of
//! `rand.SafeEncodeString`), not bit-identical to the real one.
//!
//! - It keeps `spec.replicas` (default 1) active pods of the current template.
//! - A changed template: with `strategy.type: Recreate` old pods are deleted first and new ones
//!   created once they are gone; with RollingUpdate (the default) new pods are created first and
//!   old ones deleted once enough new pods are Ready (maxSurge/maxUnavailable are not modelled
//!   beyond that).
//! - Restarting exited containers is the kubelet's job (restartPolicy Always).
//! - Status: observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas,
//!   unavailableReplicas and the Available/Progressing conditions.

use rand::Rng;
use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::{Controller, canonical_json, name, namespace, now, patch, s, terminating, uid};

const COMPONENT: &str = "deployment-controller";
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The Deployment controller.
#[derive(Default)]
pub struct DeploymentController;

impl Controller for DeploymentController {
    fn reconcile(&mut self, store: &dyn ObjectStore, _ctx: &ControllerContext) {
        let deployments = store.list(&res::deployments(), None);
        if deployments.is_empty() {
            return;
        }
        let pods = store.list(&res::pods(), None);
        for d in deployments {
            if terminating(&d) {
                continue;
            }
            let owned: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    namespace(p) == namespace(&d)
                        && p.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|o| o.iter().any(|r| s(r, "/uid") == Some(uid(&d))))
                })
                .collect();
            sync(store, &d, &owned);
        }
    }
}

/// The pod-template-hash of a template.
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in canonical_json(template).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

fn active(p: &Value) -> bool {
    !terminating(p) && !matches!(s(p, "/status/phase"), Some("Succeeded") | Some("Failed"))
}

fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| s(c, "/type") == Some("Ready") && s(c, "/status") == Some("True"))
        })
}

fn sync(store: &dyn ObjectStore, d: &Value, owned: &[&Value]) {
    let ns = namespace(d);
    let replicas = d
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let is_current =
        |p: &&&Value| s(p, "/metadata/labels/pod-template-hash") == Some(hash.as_str());
    let current: Vec<&&Value> = owned
        .iter()
        .filter(|p| active(p) && is_current(p))
        .collect();
    let old: Vec<&&Value> = owned
        .iter()
        .filter(|p| !is_current(p) && !terminating(p))
        .collect();
    let recreate = s(d, "/spec/strategy/type") == Some("Recreate");

    // Old pods go: at once for Recreate, once the new ones are Ready for RollingUpdate.
    let new_ready = current.iter().filter(|p| ready(p)).count();
    if !old.is_empty() && (recreate || new_ready >= replicas) {
        for p in &old {
            delete_pod(store, d, p);
        }
    }
    let old_alive = owned.iter().any(|p| !is_current(&p) && active(p));
    if current.len() < replicas && !(recreate && old_alive) {
        for _ in current.len()..replicas {
            create_pod(store, d, &template, &hash);
        }
    } else if current.len() > replicas {
        // Scale down: not-ready pods first, then the youngest.
        let mut extra: Vec<&&Value> = current.clone();
        extra.sort_by_key(|p| {
            (
                ready(p),
                std::cmp::Reverse(
                    s(p, "/metadata/creationTimestamp")
                        .unwrap_or("")
                        .to_string(),
                ),
            )
        });
        for p in extra.into_iter().take(current.len() - replicas) {
            delete_pod(store, d, p);
        }
    }

    let all_active = owned.iter().filter(|p| active(p)).count();
    let ready_all = owned.iter().filter(|p| active(p) && ready(p)).count();
    let available = ready_all;
    let generation = d
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut status = json!({
        "observedGeneration": generation,
        "replicas": all_active,
        "updatedReplicas": current.len(),
        "readyReplicas": ready_all,
        "availableReplicas": available,
        "unavailableReplicas": replicas.saturating_sub(available),
    });
    let available_cond = if available >= replicas {
        "True"
    } else {
        "False"
    };
    let prev_conditions = d
        .pointer("/status/conditions")
        .cloned()
        .unwrap_or(json!([]));
    let prev_avail = prev_conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| s(c, "/type") == Some("Available")))
        .and_then(|c| s(c, "/status"))
        .map(str::to_string);
    let conditions = if prev_avail.as_deref() == Some(available_cond) {
        prev_conditions
    } else {
        let t = now();
        json!([
            {
                "type": "Available",
                "status": available_cond,
                "reason": if available_cond == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                "message": if available_cond == "True" { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                "lastUpdateTime": t, "lastTransitionTime": t,
            },
            {
                "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "message": format!("ReplicaSet \"{}-{hash}\" has successfully progressed.", name(d)),
                "lastUpdateTime": t, "lastTransitionTime": t,
            },
        ])
    };
    status["conditions"] = conditions;
    let cur = d.get("status").cloned().unwrap_or(json!({}));
    let changed = status
        .as_object()
        .expect("object")
        .iter()
        .any(|(k, v)| cur.get(k) != Some(v));
    if changed {
        patch(
            store,
            &res::deployments(),
            Some(ns),
            name(d),
            json!({"status": status}),
        );
    }
}

fn create_pod(store: &dyn ObjectStore, d: &Value, template: &Value, hash: &str) {
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| SAFE_ALPHABET[rng.random_range(0..SAFE_ALPHABET.len())] as char)
        .collect();
    let pod_name = format!("{}-{hash}-{suffix}", name(d));
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    labels["pod-template-hash"] = json!(hash);
    let mut meta = json!({
        "name": pod_name,
        "namespace": namespace(d),
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name(d),
            "uid": uid(d),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    });
    match store.create(&res::pods(), pod) {
        Ok(p) => events::record(
            store,
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Created pod {} for deployment", name(&p)),
            COMPONENT,
        ),
        Err(e) => {
            events::record(
                store,
                d,
                EventType::Warning,
                "FailedCreate",
                &format!("Error creating: {e}"),
                COMPONENT,
            );
        }
    }
}

fn delete_pod(store: &dyn ObjectStore, d: &Value, p: &Value) {
    if let Err(e) = store.delete(&res::pods(), Some(namespace(p)), name(p)) {
        if e.code != 404 {
            tracing::warn!(
                "kubesim deployment {}: deleting pod {}: {e}",
                name(d),
                name(p)
            );
        }
    } else {
        events::record(
            store,
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Deleted pod {} of deployment", name(p)),
            COMPONENT,
        );
    }
}
