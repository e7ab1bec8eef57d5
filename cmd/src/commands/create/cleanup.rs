//! Removing a run's temporary objects: the VolumeSnapshots, claims and pods its label selects.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::cluster::{self, BACKUP_LABEL, explain};

/// Deletes the pods, PVCs and (unless kept) VolumeSnapshots matching a label selector in a
/// namespace and waits until they are gone. A kept snapshot loses the run label and its owner
/// first, so `cleanup` leaves it alone and the garbage collector does not take it. A claim or
/// snapshot owned by a mover pod ([`cluster::give_to_pod`]) goes with its pod, through the
/// garbage collector: only what a run left before its pod existed is deleted by name.
pub async fn cleanup_selector(
    client: &Client,
    ns: &str,
    selector: &str,
    keep_snapshot: bool,
) -> Result<usize> {
    let lp = ListParams::default().labels(selector);
    let dp = DeleteParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let snaps = cluster::snapshots(client, ns);
    let by_pod = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Pod" && o.api_version == "v1")
    };
    let mut removed = 0;
    match snaps.list(&lp).await {
        Ok(list) => {
            for s in list {
                let name = s.name_any();
                if keep_snapshot {
                    // Kept: out of this run, and no longer owned by its VolumeBackup or pod
                    // (deleting either would take the snapshot along).
                    let patch = json!({"metadata": {"labels": {BACKUP_LABEL: null}, "ownerReferences": null}});
                    snaps
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map_err(|e| {
                            explain(
                                e,
                                "patch",
                                "volumesnapshots.snapshot.storage.k8s.io",
                                Some(ns),
                            )
                        })?;
                } else {
                    if !by_pod(&s.metadata) {
                        delete_ignoring_gone(snaps.delete(&name, &dp).await).map_err(|e| {
                            explain(
                                e,
                                "delete",
                                "volumesnapshots.snapshot.storage.k8s.io",
                                Some(ns),
                            )
                        })?;
                    }
                    removed += 1;
                }
            }
        }
        Err(e) if cluster::is_status(&e, 404) => {}
        Err(e) => {
            return Err(explain(
                e,
                "list",
                "volumesnapshots.snapshot.storage.k8s.io",
                Some(ns),
            ));
        }
    }
    for p in pods
        .list(&lp)
        .await
        .map_err(|e| explain(e, "list", "pods", Some(ns)))?
    {
        delete_ignoring_gone(pods.delete(&p.name_any(), &dp).await)
            .map_err(|e| explain(e, "delete", "pods", Some(ns)))?;
        removed += 1;
    }
    for p in pvcs
        .list(&lp)
        .await
        .map_err(|e| explain(e, "list", "persistentvolumeclaims", Some(ns)))?
    {
        if !by_pod(&p.metadata) {
            delete_ignoring_gone(pvcs.delete(&p.name_any(), &dp).await)
                .map_err(|e| explain(e, "delete", "persistentvolumeclaims", Some(ns)))?;
        }
        removed += 1;
    }
    // Pods take their grace period; the PVCs follow once no pod uses them.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let left = pods.list(&lp).await.map(|l| l.items.len()).unwrap_or(0)
            + pvcs.list(&lp).await.map(|l| l.items.len()).unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(removed)
}

fn delete_ignoring_gone<T>(
    r: std::result::Result<T, kube::Error>,
) -> std::result::Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if cluster::is_status(&e, 404) => Ok(()),
        Err(e) => Err(e),
    }
}
