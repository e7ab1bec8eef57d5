//! Whether restores can work here: the check `restore` makes before it writes anything.

use anyhow::{Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DynamicObject};

use crate::cluster::{explain, explain_for, is_status};

use super::{CRD_NAME, POPULATOR_NAME, VOLUME_POPULATOR_NAME};
use super::{objects::*, wait::*};

/// Ok when the VolumeBackup CRD, the VolumePopulator registration and an available populator
/// Deployment exist; else one line naming what is missing. A check the caller's RBAC does not
/// allow (403) is skipped: restoring needs none of these reads.
pub async fn check_installed(client: &Client, namespace: &str) -> Result<()> {
    let crd = match client
        .list_api_group_resources("volbackup.io/v1alpha1")
        .await
    {
        Ok(list) => Seen::from(list.resources.iter().any(|r| r.name == "volumebackups")),
        Err(e) if is_status(&e, 404) => Seen::Absent,
        Err(e) if is_status(&e, 403) => Seen::Unknown,
        Err(e) => return Err(explain(e, "discover", "the volbackup.io API", None)),
    };
    let vp = kind_named("VolumePopulator");
    let populators: Api<DynamicObject> = Api::all_with(client.clone(), &vp.resource());
    let populator = match populators.get_opt(VOLUME_POPULATOR_NAME).await {
        Ok(found) => Seen::from(found.is_some()),
        // 404 here: the VolumePopulator kind itself is missing.
        Err(e) if is_status(&e, 404) => Seen::Absent,
        Err(e) if is_status(&e, 403) => Seen::Unknown,
        Err(e) => return Err(explain(e, "get", &vp.qualified_plural(), None)),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = match deployments.get_opt(POPULATOR_NAME).await {
        Ok(Some(d)) => Some(Some(available(&d))),
        Ok(None) => Some(None),
        Err(e) if is_status(&e, 403) => None,
        Err(e) => return Err(explain_for::<Deployment>(e, "get", &(), Some(namespace))),
    };
    match missing(crd, populator, deployment, namespace) {
        Some(why) => Err(anyhow!(why)),
        None => Ok(()),
    }
}

/// Whether something was found, or could not be looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Present,
    Absent,
    Unknown,
}

impl From<bool> for Seen {
    fn from(found: bool) -> Self {
        if found { Seen::Present } else { Seen::Absent }
    }
}

/// What keeps restores from working, given what was seen: `deployment` is None when it could
/// not be read, `Some(None)` when missing, `Some(Some(available))` otherwise.
pub(super) fn missing(
    crd: Seen,
    populator: Seen,
    deployment: Option<Option<bool>>,
    namespace: &str,
) -> Option<String> {
    const FIX: &str = "(run `kubectl volbackup install`)";
    let not_installed = "the volbackup populator is not installed";
    if crd == Seen::Absent {
        return Some(format!(
            "{not_installed}: no VolumeBackup CRD ({CRD_NAME}) {FIX}"
        ));
    }
    if populator == Seen::Absent {
        return Some(format!(
            "{not_installed}: no VolumePopulator {VOLUME_POPULATOR_NAME} {FIX}"
        ));
    }
    match deployment {
        Some(None) => Some(format!(
            "{not_installed}: no Deployment {namespace}/{POPULATOR_NAME} {FIX}"
        )),
        Some(Some(false)) => Some(format!(
            "the volbackup populator is not running: Deployment {namespace}/{POPULATOR_NAME} has no available replica {FIX}"
        )),
        Some(Some(true)) | None => None,
    }
}
