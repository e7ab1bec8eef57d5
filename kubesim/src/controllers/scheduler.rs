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
//! - `nodeSelector` (every label must match) and the required node affinity
//!   (`requiredDuringSchedulingIgnoredDuringExecution`: terms ORed, each term's
//!   `matchExpressions` on node labels with `In`, `NotIn`, `Exists`, `DoesNotExist`, and
//!   `matchFields` on `metadata.name` with `In`/`NotIn`, ANDed) restrict the nodes.
//! - A node's `NoSchedule` and `NoExecute` taints keep off every pod without a matching
//!   toleration (`operator` `Equal` or `Exists`, an empty key with `Exists` tolerating all, an
//!   empty effect every effect). A pod that names its node in `spec.nodeName` skips all this,
//!   as in Kubernetes.
//! - Among the nodes left, nodes are used round-robin.
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

/// Whether a node meets the pod's `nodeSelector` and required node affinity.
fn node_selected(pod: &Value, node: &Value) -> bool {
    let labels = node.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object)
        && sel.iter().any(|(k, v)| label(k) != v.as_str())
    {
        return false;
    }
    let Some(terms) = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
    else {
        return true;
    };
    let name = s(node, "/metadata/name");
    let requirement = |r: &Value, value: Option<&str>| {
        let values: Vec<&str> = r
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match s(r, "/operator") {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    };
    // Terms are ORed; the requirements of one term are ANDed; an empty term matches nothing.
    terms.iter().any(|term| {
        let exprs = term.get("matchExpressions").and_then(Value::as_array);
        let fields = term.get("matchFields").and_then(Value::as_array);
        let count = exprs.map_or(0, Vec::len) + fields.map_or(0, Vec::len);
        count > 0
            && exprs
                .into_iter()
                .flatten()
                .all(|e| requirement(e, label(s(e, "/key").unwrap_or(""))))
            && fields
                .into_iter()
                .flatten()
                .all(|f| s(f, "/key") == Some("metadata.name") && requirement(f, name))
    })
}

/// The first `NoSchedule` or `NoExecute` taint of the node that the pod does not tolerate,
/// as the scheduler names it (`{key: value}`).
fn untolerated_taint(pod: &Value, node: &Value) -> Option<String> {
    let tolerations = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let taints = node.pointer("/spec/taints").and_then(Value::as_array)?;
    taints
        .iter()
        .filter(|t| matches!(s(t, "/effect"), Some("NoSchedule" | "NoExecute")))
        .find(|t| {
            let (key, value, effect) = (
                s(t, "/key").unwrap_or(""),
                s(t, "/value").unwrap_or(""),
                s(t, "/effect").unwrap_or(""),
            );
            !tolerations.iter().any(|tol| {
                let tkey = s(tol, "/key").unwrap_or("");
                let teffect = s(tol, "/effect").unwrap_or("");
                let effect_ok = teffect.is_empty() || teffect == effect;
                let matches = match s(tol, "/operator").unwrap_or("Equal") {
                    "Exists" => tkey.is_empty() || tkey == key,
                    _ => tkey == key && s(tol, "/value").unwrap_or("") == value,
                };
                effect_ok && matches
            })
        })
        .map(|t| {
            format!(
                "{{{}: {}}}",
                s(t, "/key").unwrap_or(""),
                s(t, "/value").unwrap_or("")
            )
        })
}

impl Scheduler {
    fn schedule(
        &mut self,
        store: &dyn ObjectStore,
        ctx: &ControllerContext,
        pod: &Value,
    ) -> Result<(), String> {
        let ns = namespace(pod);
        let mut candidates = Vec::new();
        let (mut unmatched, mut tainted) = (0, Vec::new());
        for n in &ctx.nodes {
            let node = store
                .get(&res::nodes(), None, n)
                .unwrap_or_else(|| json!({"metadata": {"name": n}}));
            if !node_selected(pod, &node) {
                unmatched += 1;
            } else if let Some(taint) = untolerated_taint(pod, &node) {
                tainted.push(taint);
            } else {
                candidates.push(n.clone());
            }
        }
        if candidates.is_empty() {
            let mut why = Vec::new();
            for t in &tainted {
                why.push(format!("1 node(s) had untolerated taint {t}"));
            }
            if unmatched > 0 {
                why.push(format!(
                    "{unmatched} node(s) didn't match Pod's node affinity/selector"
                ));
            }
            return Err(why.join(", "));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": "a"}},
               "spec": {"taints": taints}})
    }

    fn pinned(to: &str) -> Value {
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [to]}]}]}}}}})
    }

    #[test]
    fn required_node_affinity_and_selectors_pick_the_nodes() {
        let (n1, n2) = (node("node-1", json!([])), node("node-2", json!([])));
        assert!(!node_selected(&pinned("node-2"), &n1));
        assert!(node_selected(&pinned("node-2"), &n2));
        let by_label = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-9"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "Exists"},
                                      {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-1"]}]}]}}}}});
        assert!(!node_selected(&by_label, &n1));
        assert!(node_selected(&by_label, &n2));
        let selector = json!({"spec": {"nodeSelector": {"zone": "b"}}});
        assert!(!node_selected(&selector, &n1));
        assert!(node_selected(&json!({"spec": {}}), &n1));
    }

    #[test]
    fn taints_keep_off_pods_without_a_matching_toleration() {
        let tainted = node(
            "node-1",
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            untolerated_taint(&json!({"spec": {}}), &tainted).as_deref(),
            Some("{dedicated: db}")
        );
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ] {
            let pod = json!({"spec": {"tolerations": [tol]}});
            assert_eq!(untolerated_taint(&pod, &tainted), None, "{pod}");
        }
        let wrong = json!({"spec": {"tolerations": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]}});
        assert!(untolerated_taint(&wrong, &tainted).is_some());
        let soft = node(
            "node-1",
            json!([{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(untolerated_taint(&json!({"spec": {}}), &soft), None);
    }
}
