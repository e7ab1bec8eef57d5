//! `cleanup`: what runs of `create` left behind, removed, and their unfinished VolumeBackups
//! marked.

use std::collections::BTreeSet;

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use volbackup_populator::api::{HEARTBEAT_STALE, Phase, VolumeBackup};

use crate::commands::record::Finished;

use crate::cli::CleanupArgs;
use crate::cluster::{self, BACKUP_LABEL};

/// `cleanup`: removes what runs of `create` left and marks their unfinished VolumeBackups
/// Failed (Completed, when the snapshot was recorded before the `create` stopped). A backup
/// still being taken (its `create` heard from within the last minute) is left alone unless
/// named with `--backup`.
pub fn cleanup(args: &CleanupArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let namespaces = if args.all_namespaces {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.client.clone());
            api.list(&ListParams::default())
                .await
                .map_err(|e| cluster::explain_for::<Namespace>(e, "list", &(), None))?
                .items
                .iter()
                .map(|n| n.name_any())
                .collect()
        } else {
            vec![kube.namespace.clone()]
        };
        let (mut removed, mut failed, mut completed, mut running) =
            (0, Vec::new(), Vec::new(), Vec::new());
        for ns in &namespaces {
            let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), ns);
            // Records of runs; without the CRD there are none (an older install's leftovers
            // are still removed).
            let records = match api.list(&ListParams::default().labels(BACKUP_LABEL)).await {
                Ok(l) => l.items,
                Err(e) if cluster::is_status(&e, 404) => Vec::new(),
                Err(e) => return Err(cluster::explain_volumebackups(e, "list", Some(ns))),
            };
            // `--backup` takes a run id or the name of a VolumeBackup of that run.
            let run = args.backup.as_ref().map(|given| {
                records
                    .iter()
                    .find(|b| &b.name_any() == given)
                    .and_then(|b| b.labels().get(BACKUP_LABEL).cloned())
                    .unwrap_or_else(|| given.clone())
            });
            let unfinished = records.iter().filter(|b| {
                !matches!(b.phase(), Some(Phase::Completed | Phase::Failed))
                    && run
                        .as_ref()
                        .is_none_or(|r| b.labels().get(BACKUP_LABEL) == Some(r))
            });
            let mut live = BTreeSet::new();
            for b in unfinished {
                let id = b.labels().get(BACKUP_LABEL).cloned().unwrap_or_default();
                let label = format!("{ns}/{}", b.name_any());
                // Decided again from the record as it is when written (see finish_unfinished):
                // a backup completing meanwhile stays Completed.
                let finished = crate::commands::record::finish_unfinished(
                    &api,
                    b,
                    "Abandoned",
                    &|b| {
                        format!(
                            "the create taking this backup stopped while {} and was not heard from again; cleanup removed what it left",
                            crate::commands::record::last_step(b)
                        )
                    },
                    run.is_none(),
                )
                .await?;
                match finished {
                    Finished::Failed => failed.push(label),
                    Finished::Completed => completed.push(label),
                    Finished::BeingTaken => {
                        running.push(label);
                        live.insert(id);
                    }
                    Finished::AlreadyFinished | Finished::Gone => {}
                }
            }
            let selector = match (&run, live.is_empty()) {
                (Some(id), _) => format!("{BACKUP_LABEL}={id}"),
                (None, true) => BACKUP_LABEL.to_string(),
                (None, false) => format!(
                    "{BACKUP_LABEL},{BACKUP_LABEL} notin ({})",
                    live.into_iter().collect::<Vec<_>>().join(",")
                ),
            };
            removed += crate::commands::create::cleanup_selector(&kube.client, ns, &selector, false).await?;
        }
        if !quiet {
            eprintln!("removed {removed} temporary object(s)");
            if !failed.is_empty() {
                eprintln!(
                    "marked {} unfinished VolumeBackup(s) Failed: {}",
                    failed.len(),
                    failed.join(", ")
                );
            }
            if !completed.is_empty() {
                eprintln!(
                    "marked {} VolumeBackup(s) Completed whose create stopped after recording the snapshot: {}",
                    completed.len(),
                    completed.join(", ")
                );
            }
            if !running.is_empty() {
                eprintln!(
                    "left alone {} backup(s) still being taken (their create was heard from in the last {}s): {}; name one with --backup NAME to clean it up anyway",
                    running.len(),
                    HEARTBEAT_STALE.as_secs(),
                    running.join(", ")
                );
            }
        }
        Ok(())
    })
}
