//! The volume-data-source-validator (kubernetes-csi/volume-data-source-validator
//! `pkg/data-source-validator/data_source_validator.go`, KEP-1495): a PVC whose `dataSourceRef`
//! names a kind that no `VolumePopulator` (`populator.storage.k8s.io/v1beta1`, `sourceKind
//! {group, kind}`, exact match) registers gets a Warning event `UnrecognizedDataSourceKind`.
//! PVCs and VolumeSnapshots are allowed as special cases; core kinds are not checked. It blocks
//! nothing.

use serde_json::Value;

use super::super::api::{ControllerContext, ObjectStore, res};
use super::events::{self, EventType};
use super::{Controller, s, terminating};

/// The validator.
pub struct Validator;

impl Controller for Validator {
    fn reconcile(&mut self, store: &dyn ObjectStore, _ctx: &ControllerContext) {
        let mut populators: Option<Vec<Value>> = None;
        for pvc in store.list(&res::pvcs(), None) {
            if terminating(&pvc) || s(&pvc, "/status/phase") == Some("Bound") {
                continue;
            }
            let Some(ds) = pvc.pointer("/spec/dataSourceRef").filter(|v| v.is_object()) else {
                continue;
            };
            let group = s(ds, "/apiGroup").unwrap_or("");
            let kind = s(ds, "/kind").unwrap_or("");
            if group.is_empty() || (group == "snapshot.storage.k8s.io" && kind == "VolumeSnapshot")
            {
                continue;
            }
            let pops = populators.get_or_insert_with(|| store.list(&res::volumepopulators(), None));
            let registered = pops.iter().any(|p| {
                s(p, "/sourceKind/group") == Some(group) && s(p, "/sourceKind/kind") == Some(kind)
            });
            if !registered {
                events::record(
                    store,
                    &pvc,
                    EventType::Warning,
                    "UnrecognizedDataSourceKind",
                    "The datasource for this PVC does not match any registered VolumePopulator",
                    "volume-data-source-validator",
                );
            }
        }
    }
}
