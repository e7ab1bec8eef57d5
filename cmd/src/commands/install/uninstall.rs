//! `uninstall`: deletes what `install` made, in reverse order, after a confirmation.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams};
use kube::runtime::wait::{self, await_condition};

use crate::cli::UninstallArgs;
use crate::cluster::{self, explain, explain_watch, is_status};

use super::WAIT;
use super::{apply::*, objects::*, settings::*};

/// `uninstall`
pub fn uninstall(args: &UninstallArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    check_namespace(&args.namespace)?;
    let ask = !args.yes;
    if ask && !std::io::stdin().is_terminal() {
        bail!(
            "uninstall needs a confirmation and stdin is not a terminal: pass --yes to delete without asking"
        );
    }
    // The image does not matter for names; the defaults keep the objects' identities.
    let objs = objects(
        &args.namespace,
        &volbackup_populator::mover::default_image(),
        DEFAULT_POD_SECURITY,
        &[],
    )?;
    rt.block_on(async {
        let kube = cluster::connect(&kube_options(&args.kubeconfig, &args.context)).await?;
        uninstall_async(&kube.client, args, &objs, ask, quiet).await
    })
}

pub(super) async fn uninstall_async(
    client: &Client,
    args: &UninstallArgs,
    objs: &[Object],
    ask: bool,
    quiet: bool,
) -> Result<()> {
    let ns = args.namespace.as_str();
    let mut present: Vec<&Object> = Vec::new();
    let mut kept_ns = false;
    for o in objs.iter().rev() {
        if o.kind.kind == "CustomResourceDefinition" && args.keep_crds {
            continue;
        }
        let found = match o.api(client).get_opt(&o.name).await {
            Ok(f) => f,
            // The kind itself is missing (no VolumePopulator CRD): nothing of it to delete.
            Err(e) if is_status(&e, 404) => None,
            Err(e) => {
                return Err(explain(
                    e,
                    "get",
                    &o.kind.qualified_plural(),
                    o.namespace.as_deref(),
                ));
            }
        };
        let Some(found) = found else { continue };
        if o.kind.kind == "Namespace" && !ours(&found.metadata) {
            kept_ns = true;
            continue;
        }
        present.push(o);
    }
    if present.is_empty() {
        eprintln!("volbackup is not installed in namespace {ns:?}: nothing to delete");
        return Ok(());
    }
    let deletes_crd = present
        .iter()
        .any(|o| o.kind.kind == "CustomResourceDefinition");
    let backups = if deletes_crd {
        count_backups(client).await
    } else {
        None
    };
    if ask {
        eprintln!("This deletes:");
        for o in &present {
            match &o.namespace {
                Some(n) => eprintln!("  {} (namespace {n})", o.display()),
                None => eprintln!("  {}", o.display()),
            }
        }
        if kept_ns {
            eprintln!("  (namespace {ns} is kept: volbackup did not create it)");
        }
        let ok = dialoguer::Confirm::new()
            .with_prompt(prompt(present.len(), deletes_crd, backups))
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("nothing deleted");
        }
    }
    for o in &present {
        let params = if o.kind.kind == "Deployment" {
            DeleteParams::foreground()
        } else {
            DeleteParams::background()
        };
        match o.api(client).delete(&o.name, &params).await {
            Ok(_) => println!("{} deleted", o.display()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => {
                return Err(explain(
                    e,
                    "delete",
                    &o.kind.qualified_plural(),
                    o.namespace.as_deref(),
                ));
            }
        }
    }
    // Like kubectl delete: return once the namespace and the CRD (with their contents) are gone,
    // so that an install right after does not meet them terminating.
    let slow: Vec<&&Object> = present
        .iter()
        .filter(|o| matches!(o.kind.kind, "Namespace" | "CustomResourceDefinition"))
        .collect();
    if !slow.is_empty() && !quiet && std::io::stderr().is_terminal() {
        eprintln!("waiting for the deletions to finish...");
    }
    let deadline = Instant::now() + WAIT;
    for o in slow {
        // A watch on the object: done when it is gone.
        let left = deadline.saturating_duration_since(Instant::now());
        let gone = await_condition(o.api(client), &o.name, |found: Option<&DynamicObject>| {
            found.is_none()
        });
        match tokio::time::timeout(left, gone).await {
            Ok(Ok(_)) => {}
            Ok(Err(wait::Error::ProbeFailed(e))) => {
                return Err(explain_watch::<DynamicObject>(
                    e,
                    &o.kind.resource(),
                    o.namespace.as_deref(),
                ));
            }
            Err(_) => bail!(
                "{} is still being deleted after {} s: check its finalizers (`kubectl get {} {} -o yaml`)",
                o.display(),
                WAIT.as_secs(),
                o.kind.qualified_plural(),
                o.name
            ),
        }
    }
    Ok(())
}

/// How many VolumeBackup objects exist in the cluster (None when they cannot be listed).
pub(super) async fn count_backups(client: &Client) -> Option<usize> {
    let resource = ApiResource::erase::<volbackup_populator::api::VolumeBackup>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Some(list.items.len()),
        Err(e) if is_status(&e, 404) => Some(0),
        Err(_) => None,
    }
}

/// The confirmation question.
pub(super) fn prompt(objects: usize, deletes_crd: bool, backups: Option<usize>) -> String {
    let mut p = format!("Delete these {objects} objects?");
    if deletes_crd {
        let what = match backups {
            Some(1) => "the 1 VolumeBackup object".to_string(),
            Some(n) => format!("all {n} VolumeBackup objects"),
            None => "every VolumeBackup object (they could not be counted)".to_string(),
        };
        p.push_str(&format!(
            " Deleting the VolumeBackup CRD also deletes {what} in the cluster; the data in the repositories stays (--keep-crds keeps them)."
        ));
    }
    p
}
