//! kube-scheduler over the named nodes, with the VolumeBinding plugin's behaviour
//! (kubernetes/kubernetes `pkg/scheduler/framework/plugins/volumebinding`, docs: "Storage
//! Classes — Volume Binding Mode" and "Assigning Pods to Nodes").
//!
//! - Pods that already have `spec.nodeName` are not scheduled (they bypass the scheduler).
//! - A pod waits (Warning `FailedScheduling`) while a PVC it uses is missing or being deleted,
//!   or while an Immediate PVC is unbound.
//! - Bound PVCs restrict the pod to the nodes of their PV's `nodeAffinity`.
//! - Unbound WaitForFirstConsumer PVCs get `volume.kubernetes.io/selected-node` for the node
//!   chosen for the pod (the volume binder's "assume"), and the pod is bound only once they
//!   are bound, as the PreBind step waits for the provisioner.
//! - `nodeSelector` `kubernetes.io/hostname` is honoured; otherwise nodes are used round-robin.
//! - Binding sets `spec.nodeName` and the `PodScheduled` condition and records `Scheduled`.

use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::provisioner::{SELECTED_NODE, TOPOLOGY_KEY};
use super::{Controller, annotation, name, namespace, now, patch, pvc_class, s, terminating};

const COMPONENT: &str = "default-scheduler";

/// The scheduler.
#[derive(Default)]
pub struct Scheduler {
    next: usize,
}

impl Controller for Scheduler {
    fn reconcile(&mut self, store: &dyn ObjectStore, ctx: &ControllerContext) {
        for pod in store.list(&res::pods(), None) {
            if terminating(&pod)
                || s(&pod, "/spec/nodeName").is_some_and(|n| !n.is_empty())
                || matches!(s(&pod, "/status/phase"), Some("Succeeded") | Some("Failed"))
            {
                continue;
            }
            let scheduler = s(&pod, "/spec/schedulerName").unwrap_or("default-scheduler");
            if scheduler != "default-scheduler" {
                continue;
            }
            if let Err(msg) = self.schedule(store, ctx, &pod) {
                let total = ctx.nodes.len();
                let msg = format!(
                    "0/{total} nodes are available: {msg}. preemption: 0/{total} nodes are available."
                );
                events::record(
                    store,
                    &pod,
                    EventType::Warning,
                    "FailedScheduling",
                    &msg,
                    COMPONENT,
                );
                let cond = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg, "lastTransitionTime": now(), "lastProbeTime": null}]);
                if pod.pointer("/status/conditions/0/message") != cond.pointer("/0/message") {
                    patch(
                        store,
                        &res::pods(),
                        Some(namespace(&pod)),
                        name(&pod),
                        json!({"status": {"phase": "Pending", "conditions": cond}}),
                    );
                }
            }
        }
    }
}

/// Nodes allowed by a PV's `nodeAffinity` (only `In` on our topology key or the hostname label
/// is understood; anything else allows every node).
fn pv_nodes(pv: &Value, nodes: &[String]) -> Vec<String> {
    let terms = pv
        .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array);
    let Some(terms) = terms else {
        return nodes.to_vec();
    };
    let mut allowed = Vec::new();
    for term in terms {
        let exprs = term
            .get("matchExpressions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut term_nodes = nodes.to_vec();
        for e in exprs {
            let key = s(&e, "/key").unwrap_or("");
            if (key == TOPOLOGY_KEY || key == "kubernetes.io/hostname")
                && s(&e, "/operator") == Some("In")
            {
                let values: Vec<&str> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                term_nodes.retain(|n| values.contains(&n.as_str()));
            }
        }
        for n in term_nodes {
            if !allowed.contains(&n) {
                allowed.push(n);
            }
        }
    }
    allowed
}

impl Scheduler {
    fn schedule(
        &mut self,
        store: &dyn ObjectStore,
        ctx: &ControllerContext,
        pod: &Value,
    ) -> Result<(), String> {
        let ns = namespace(pod);
        let mut candidates = ctx.nodes.clone();
        if let Some(host) = s(pod, "/spec/nodeSelector/kubernetes.io~1hostname") {
            candidates.retain(|n| n == host);
            if candidates.is_empty() {
                return Err(format!(
                    "{} node(s) didn't match Pod's node affinity/selector",
                    ctx.nodes.len()
                ));
            }
        }
        let mut wait_for_consumer = Vec::new();
        let volumes = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in &volumes {
            let Some(claim) = s(v, "/persistentVolumeClaim/claimName") else {
                continue;
            };
            let Some(pvc) = store.get(&res::pvcs(), Some(ns), claim) else {
                return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
            };
            if terminating(&pvc) {
                return Err(format!(
                    "persistentvolumeclaim \"{claim}\" is being deleted"
                ));
            }
            let pv_name = s(&pvc, "/spec/volumeName").unwrap_or("");
            if !pv_name.is_empty() {
                if let Some(pv) = store.get(&res::pvs(), None, pv_name) {
                    let allowed = pv_nodes(&pv, &ctx.nodes);
                    candidates.retain(|n| allowed.contains(n));
                    if candidates.is_empty() {
                        return Err(format!(
                            "{} node(s) had volume node affinity conflict",
                            ctx.nodes.len()
                        ));
                    }
                }
                continue;
            }
            let class = pvc_class(store, &pvc).unwrap_or_default();
            let sc = store.get(&res::storageclasses(), None, &class);
            if sc.as_ref().and_then(|sc| s(sc, "/volumeBindingMode"))
                == Some("WaitForFirstConsumer")
            {
                wait_for_consumer.push(pvc);
            } else {
                return Err("pod has unbound immediate PersistentVolumeClaims".to_string());
            }
        }
        // Nodes already chosen for this pod's waiting claims win (the volume binder's assume
        // cache: the choice stays put while the provisioner works).
        let chosen = wait_for_consumer
            .iter()
            .find_map(|p| annotation(p, SELECTED_NODE).map(str::to_string))
            .filter(|n| candidates.contains(n));
        let node = match chosen {
            Some(n) => n,
            None => {
                let n = candidates[self.next % candidates.len()].clone();
                self.next = self.next.wrapping_add(1);
                n
            }
        };
        if !wait_for_consumer.is_empty() {
            for pvc in &wait_for_consumer {
                if annotation(pvc, SELECTED_NODE) != Some(node.as_str()) {
                    patch(
                        store,
                        &res::pvcs(),
                        Some(ns),
                        name(pvc),
                        json!({"metadata": {"annotations": {SELECTED_NODE: node}}}),
                    );
                }
            }
            // PreBind waits until the provisioner has created and the PV controller bound them.
            return Ok(());
        }
        let p = json!({
            "spec": {"nodeName": node},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now(), "lastProbeTime": null}]},
        });
        if patch(store, &res::pods(), Some(ns), name(pod), p).is_some() {
            events::record(
                store,
                pod,
                EventType::Normal,
                "Scheduled",
                &format!("Successfully assigned {ns}/{} to {node}", name(pod)),
                COMPONENT,
            );
        }
        Ok(())
    }
}
