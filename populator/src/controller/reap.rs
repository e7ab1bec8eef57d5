//! Finding what the populator left behind: PVC', pods and Secrets whose user claim is gone.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::steps::delete_quietly;
use super::{Error, owner_of};
use crate::state;

/// Deletes prime PVCs, pods and Secrets whose user PVC is gone (or is another PVC by now).
pub async fn reap_orphans(client: &Client, namespace: &str) -> Result<usize, Error> {
    let lp = ListParams::default().labels(state::LABEL_FOR_UID);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut candidates: Vec<(&'static str, kube::api::ObjectMeta)> = Vec::new();
    candidates.extend(
        pvcs.list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("pvc", o.metadata)),
    );
    candidates.extend(
        pods.list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("pod", o.metadata)),
    );
    candidates.extend(
        secrets
            .list(&lp)
            .await?
            .items
            .into_iter()
            .map(|o| ("secret", o.metadata)),
    );
    let mut reaped = 0;
    for (kind, meta) in candidates {
        let uid = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(state::LABEL_FOR_UID))
            .cloned()
            .unwrap_or_default();
        let alive = match owner_of(&meta) {
            Some(r) => {
                let api: Api<PersistentVolumeClaim> =
                    Api::namespaced(client.clone(), r.namespace.as_deref().unwrap_or_default());
                api.get_opt(&r.name)
                    .await?
                    .is_some_and(|p| p.uid().as_deref() == Some(uid.as_str()))
            }
            None => false,
        };
        if alive {
            continue;
        }
        let name = meta.name.clone().unwrap_or_default();
        tracing::info!("removing orphaned {kind} {namespace}/{name}");
        match kind {
            "pvc" => delete_quietly(&pvcs, &name).await?,
            "pod" => delete_quietly(&pods, &name).await?,
            _ => delete_quietly(&secrets, &name).await?,
        }
        reaped += 1;
    }
    Ok(reaped)
}
