//! The PersistentVolume binder of kube-controller-manager
//! (kubernetes/kubernetes `pkg/controller/volume/persistentvolume/pv_controller.go`: `syncClaim`,
//! `syncUnboundClaim`, `syncBoundClaim`, `syncVolume`; docs: "Persistent Volumes", Binding and
//! Reclaiming).
//!
//! - An unbound claim binds to the PV whose `claimRef` names it (pre-bound by a provisioner or a
//!   populator), else to the smallest Available PV of the same class and volume mode with enough
//!   capacity and the requested access modes (a static PV). Binding writes the PV's `claimRef`
//!   and phase Bound, then the claim's `spec.volumeName`, the annotations
//!   `pv.kubernetes.io/bind-completed` and `pv.kubernetes.io/bound-by-controller`, and its status
//!   (phase Bound, capacity, access modes).
//! - A claim whose PV is gone, or whose PV's `claimRef` now names another claim, goes `Lost`
//!   (events `ClaimLost` / `ClaimMisbound`). This is how a populator hands its prime PVC's volume
//!   to the user's claim.
//! - A PV whose claim is gone is `Released`; the external provisioner then deletes it when its
//!   policy is Delete; Retain keeps it (and its data) Released.
//! - Claims that wait for provisioning get `volume.kubernetes.io/storage-provisioner` (and the
//!   beta annotation) and the `ExternalProvisioning` / `WaitForFirstConsumer` events.

use serde_json::{Value, json};

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::{
    Controller, annotation, name, namespace, parse_quantity, patch, pvc_class, pvc_request, s,
    terminating, uid, volume_mode,
};

const COMPONENT: &str = "persistentvolume-controller";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";

/// The binder.
#[derive(Default)]
pub struct PvController;

impl Controller for PvController {
    fn reconcile(&mut self, store: &dyn ObjectStore, _ctx: &ControllerContext) {
        for pvc in store.list(&res::pvcs(), None) {
            sync_claim(store, &pvc);
        }
        for pv in store.list(&res::pvs(), None) {
            sync_volume(store, &pv);
        }
    }
}

fn claim_ref_matches(pv: &Value, pvc: &Value) -> bool {
    let Some(cr) = pv.pointer("/spec/claimRef").filter(|c| c.is_object()) else {
        return false;
    };
    s(cr, "/namespace") == Some(namespace(pvc))
        && s(cr, "/name") == Some(name(pvc))
        && s(cr, "/uid").is_none_or(|u| u.is_empty() || u == uid(pvc))
}

fn sync_claim(store: &dyn ObjectStore, pvc: &Value) {
    let volume_name = s(pvc, "/spec/volumeName").unwrap_or("");
    if volume_name.is_empty() {
        sync_unbound_claim(store, pvc);
    } else {
        sync_bound_claim(store, pvc, volume_name);
    }
}

fn set_claim_phase(store: &dyn ObjectStore, pvc: &Value, phase: &str) {
    if s(pvc, "/status/phase") != Some(phase) {
        let mut status = json!({"phase": phase});
        if phase == "Pending" {
            status["capacity"] = Value::Null;
        }
        patch(
            store,
            &res::pvcs(),
            Some(namespace(pvc)),
            name(pvc),
            json!({"status": status}),
        );
    }
}

fn sync_unbound_claim(store: &dyn ObjectStore, pvc: &Value) {
    if terminating(pvc) {
        return;
    }
    let pvs = store.list(&res::pvs(), None);
    // A PV pre-bound to this claim (by a provisioner, a populator or an administrator).
    if let Some(pv) = pvs
        .iter()
        .find(|pv| claim_ref_matches(pv, pvc) && !terminating(pv))
    {
        bind(store, pv, pvc, false);
        return;
    }
    let class = pvc_class(store, pvc).unwrap_or_default();
    let sc = if class.is_empty() {
        None
    } else {
        store.get(&res::storageclasses(), None, &class)
    };
    let wait_for_consumer =
        sc.as_ref().and_then(|sc| s(sc, "/volumeBindingMode")) == Some("WaitForFirstConsumer");
    let selected = annotation(pvc, super::provisioner::SELECTED_NODE);
    // A static PV: Available, no claimRef, same class and mode, enough capacity and modes.
    if !wait_for_consumer || selected.is_some() {
        let want_modes: Vec<&str> = pvc
            .pointer("/spec/accessModes")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let request = pvc_request(pvc);
        let best = pvs
            .iter()
            .filter(|pv| {
                pv.pointer("/spec/claimRef").is_none_or(Value::is_null)
                    && !terminating(pv)
                    && s(pv, "/status/phase").is_none_or(|p| p == "Available" || p == "Pending")
                    && s(pv, "/spec/storageClassName").unwrap_or("") == class
                    && volume_mode(pv) == volume_mode(pvc)
                    && want_modes.iter().all(|m| {
                        pv.pointer("/spec/accessModes")
                            .and_then(Value::as_array)
                            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(m)))
                    })
            })
            .filter_map(|pv| {
                let cap = s(pv, "/spec/capacity/storage").and_then(parse_quantity)?;
                (cap >= request).then_some((cap, pv))
            })
            .min_by_key(|(cap, _)| *cap);
        if let Some((_, pv)) = best {
            bind(store, pv, pvc, true);
            return;
        }
    }
    set_claim_phase(store, pvc, "Pending");
    // Provisioning needed: tell the external provisioner (and the user) who is expected to act.
    let Some(sc) = sc else { return };
    let provisioner = s(&sc, "/provisioner").unwrap_or("");
    if provisioner.is_empty() || provisioner == "kubernetes.io/no-provisioner" {
        return;
    }
    if wait_for_consumer && selected.is_none() {
        events::record(
            store,
            pvc,
            EventType::Normal,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
            COMPONENT,
        );
        return;
    }
    if annotation(pvc, "volume.kubernetes.io/storage-provisioner") != Some(provisioner) {
        patch(
            store,
            &res::pvcs(),
            Some(namespace(pvc)),
            name(pvc),
            json!({"metadata": {"annotations": {
                "volume.kubernetes.io/storage-provisioner": provisioner,
                "volume.beta.kubernetes.io/storage-provisioner": provisioner,
            }}}),
        );
    }
    events::record(
        store,
        pvc,
        EventType::Normal,
        "ExternalProvisioning",
        &format!(
            "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by \
             the system administrator. If volume creation is delayed, please verify that the provisioner is running \
             and correctly registered."
        ),
        COMPONENT,
    );
}

/// Binds PV and claim both ways (`bindVolumeToClaim`, then `bindClaimToVolume`, then the claim's
/// status), each step idempotent.
fn bind(store: &dyn ObjectStore, pv: &Value, pvc: &Value, by_controller: bool) {
    let pv_name = name(pv);
    let cr_uid = s(pv, "/spec/claimRef/uid").unwrap_or("");
    if cr_uid != uid(pvc) {
        let mut p = json!({"spec": {"claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": namespace(pvc),
            "name": name(pvc),
            "uid": uid(pvc),
            "resourceVersion": s(pvc, "/metadata/resourceVersion").unwrap_or(""),
        }}});
        if by_controller {
            p["metadata"] = json!({"annotations": {BOUND_BY_CONTROLLER: "yes"}});
        }
        if patch(store, &res::pvs(), None, pv_name, p).is_none() {
            return;
        }
    }
    if s(pv, "/status/phase") != Some("Bound") {
        patch(
            store,
            &res::pvs(),
            None,
            pv_name,
            json!({"status": {"phase": "Bound"}}),
        );
    }
    let mut annotations = json!({BIND_COMPLETED: "yes"});
    // The binder marks claims it bound itself; a claim pre-bound by its author (spec.volumeName
    // set by the user) is not marked. A PV pre-bound by a provisioner or populator is bound to
    // the claim by the controller.
    if s(pvc, "/spec/volumeName").unwrap_or("").is_empty() {
        annotations[BOUND_BY_CONTROLLER] = json!("yes");
    }
    if s(pvc, "/spec/volumeName") != Some(pv_name) || annotation(pvc, BIND_COMPLETED) != Some("yes")
    {
        let p = json!({"metadata": {"annotations": annotations}, "spec": {"volumeName": pv_name}});
        if patch(store, &res::pvcs(), Some(namespace(pvc)), name(pvc), p).is_none() {
            return;
        }
    }
    set_claim_bound_status(store, pv, pvc);
}

fn set_claim_bound_status(store: &dyn ObjectStore, pv: &Value, pvc: &Value) {
    let capacity = pv.pointer("/spec/capacity").cloned().unwrap_or(json!({}));
    let modes = pv
        .pointer("/spec/accessModes")
        .cloned()
        .unwrap_or(json!([]));
    if s(pvc, "/status/phase") == Some("Bound")
        && pvc.pointer("/status/capacity") == Some(&capacity)
        && pvc.pointer("/status/accessModes") == Some(&modes)
    {
        return;
    }
    patch(
        store,
        &res::pvcs(),
        Some(namespace(pvc)),
        name(pvc),
        json!({"status": {"phase": "Bound", "capacity": capacity, "accessModes": modes}}),
    );
}

fn sync_bound_claim(store: &dyn ObjectStore, pvc: &Value, volume_name: &str) {
    let Some(pv) = store.get(&res::pvs(), None, volume_name) else {
        if s(pvc, "/status/phase") == Some("Bound") || s(pvc, "/status/phase") == Some("Lost") {
            if s(pvc, "/status/phase") != Some("Lost") {
                events::record(
                    store,
                    pvc,
                    EventType::Warning,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                    COMPONENT,
                );
            }
            set_claim_phase(store, pvc, "Lost");
        } else {
            // Pre-bound by its author to a PV that does not exist (yet).
            set_claim_phase(store, pvc, "Pending");
        }
        return;
    };
    let cr = pv.pointer("/spec/claimRef").filter(|c| c.is_object());
    match cr {
        None => {
            if !terminating(pvc) {
                bind(store, &pv, pvc, false);
            }
        }
        Some(_) if claim_ref_matches(&pv, pvc) => {
            if !terminating(pvc) {
                bind(store, &pv, pvc, false);
            }
        }
        Some(_) => {
            if s(pvc, "/status/phase") != Some("Lost") {
                events::record(
                    store,
                    pvc,
                    EventType::Warning,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly",
                    COMPONENT,
                );
            }
            set_claim_phase(store, pvc, "Lost");
        }
    }
}

fn sync_volume(store: &dyn ObjectStore, pv: &Value) {
    let pv_name = name(pv);
    let phase = s(pv, "/status/phase");
    let Some(cr) = pv.pointer("/spec/claimRef").filter(|c| c.is_object()) else {
        if phase != Some("Available") {
            patch(
                store,
                &res::pvs(),
                None,
                pv_name,
                json!({"status": {"phase": "Available"}}),
            );
        }
        return;
    };
    let cr_uid = s(cr, "/uid").unwrap_or("");
    let claim = store.get(
        &res::pvcs(),
        s(cr, "/namespace"),
        s(cr, "/name").unwrap_or(""),
    );
    match claim {
        Some(c) if cr_uid.is_empty() || uid(&c) == cr_uid => {
            // The claim exists; `sync_claim` completes the binding. The volume is Bound once
            // the claim points back at it.
            if s(&c, "/spec/volumeName") == Some(pv_name) {
                if phase != Some("Bound") {
                    patch(
                        store,
                        &res::pvs(),
                        None,
                        pv_name,
                        json!({"status": {"phase": "Bound"}}),
                    );
                }
            } else if !s(&c, "/spec/volumeName").unwrap_or("").is_empty()
                && annotation(pv, BOUND_BY_CONTROLLER) == Some("yes")
            {
                // The claim went to another volume; release ours (the controller bound it, so
                // the controller may unbind it).
                patch(
                    store,
                    &res::pvs(),
                    None,
                    pv_name,
                    json!({"spec": {"claimRef": null}, "status": {"phase": "Available"}}),
                );
            } else if phase.is_none() {
                patch(
                    store,
                    &res::pvs(),
                    None,
                    pv_name,
                    json!({"status": {"phase": "Pending"}}),
                );
            }
        }
        _ if cr_uid.is_empty() => {
            // Pre-bound by name to a claim that does not exist yet.
            if phase != Some("Available") {
                patch(
                    store,
                    &res::pvs(),
                    None,
                    pv_name,
                    json!({"status": {"phase": "Available"}}),
                );
            }
        }
        _ => {
            // The claim was deleted (or replaced by a new one of the same name).
            if phase != Some("Released") && phase != Some("Failed") {
                patch(
                    store,
                    &res::pvs(),
                    None,
                    pv_name,
                    json!({"status": {"phase": "Released", "message": null}}),
                );
            }
        }
    }
}
