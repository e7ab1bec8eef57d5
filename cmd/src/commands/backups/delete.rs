//! `delete`: VolumeBackups, and with `--prune` their repository snapshots and the data only
//! they used.

use std::collections::BTreeSet;
use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use volbackup_populator::api::{HEARTBEAT_STALE, Phase, VolumeBackup};
use volbackup_store::Repository;
use volbackup_store::backend::redact;
use volbackup_store::forget::{ForgetGroup, ForgetPlan, GroupKey, Removed};

use crate::cli::{DeleteArgs, RepoOptions};
use crate::cluster::{self, BACKUP_LABEL, PVC_LABEL};
use crate::progress::{Mode, Reporter};
use crate::repository;

/// A repository location in a comparable form: a local path made absolute, no trailing `/`.
fn normalized_location(location: &str) -> String {
    let mut loc = location.trim().to_string();
    if !loc.contains(':')
        && let Ok(abs) = std::path::absolute(&loc)
    {
        loc = abs.to_string_lossy().into_owned();
    }
    loc.trim_end_matches('/').to_string()
}

/// What `delete --prune` removes from the repository, checked before anything is removed.
struct RepositoryRemoval {
    repo: Repository,
    /// For messages: passwords in it are redacted.
    location: String,
    forget: Vec<Removed>,
}

/// Opens the local repository and checks that it holds every backup's snapshot.
fn plan_repository_removal(
    opts: &RepoOptions,
    ns: &str,
    backups: &[(VolumeBackup, Option<String>)],
) -> Result<RepositoryRemoval> {
    let location = repository::location(opts)?;
    let local = normalized_location(&location);
    // Messages and the plan show the location without any password in it.
    let shown = redact(&location);
    for (b, secret_repo) in backups {
        if let Some(theirs) = secret_repo
            && normalized_location(theirs) != local
        {
            bail!(
                "VolumeBackup {ns}/{} was written to the repository its Secret {} names, not to {shown}: pass that repository with --repo (or delete without --prune to remove only the record)",
                b.name_any(),
                b.spec.repository.secret_ref.name
            );
        }
    }
    let repo = repository::open(&repository::Access::new(opts)?, repository::Purpose::Remove)
        .with_context(|| format!("cannot open the repository {shown}"))?;
    let snapshots = repo
        .list_snapshots()
        .with_context(|| format!("cannot list the snapshots of {shown}"))?;
    let mut forget = Vec::new();
    let mut seen = BTreeSet::new();
    // A backup that never completed has no snapshot: nothing of it to forget (the prune
    // removes whatever data its run uploaded).
    for (b, _) in backups.iter().filter(|(b, _)| b.spec.snapshot.is_some()) {
        let Some((id, snap)) = snapshots
            .iter()
            .find(|(id, _)| b.spec.snapshot.as_deref() == Some(id.to_hex().as_str()))
        else {
            bail!(
                "the snapshot {} of VolumeBackup {ns}/{} is not in the repository {shown}: pass the repository it was written to with --repo (or delete without --prune to remove only the record)",
                b.short_snapshot(),
                b.name_any()
            );
        };
        if seen.insert(*id) {
            forget.push(Removed {
                id: *id,
                time: snap.time,
            });
        }
    }
    Ok(RepositoryRemoval {
        repo,
        location: shown,
        forget,
    })
}

/// `delete --prune` forgets snapshots: refused while a VolumeBackup not being deleted, in any
/// namespace, names one of them (a cross-namespace restore copies the record with the same
/// snapshot), since the prune would take that backup's data too.
async fn refuse_shared_snapshots(
    client: &kube::Client,
    ns: &str,
    backups: &[(VolumeBackup, Option<String>)],
) -> Result<()> {
    let snapshots: BTreeSet<&str> = backups
        .iter()
        .filter_map(|(b, _)| b.spec.snapshot.as_deref())
        .collect();
    let deleting: BTreeSet<String> = backups.iter().map(|(b, _)| b.name_any()).collect();
    let all: Api<VolumeBackup> = Api::all(client.clone());
    let others = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 403 => bail!(
            "refusing to prune: cannot check whether VolumeBackups in other namespaces name these snapshots ({}): run delete --prune with the right to list volumebackups in all namespaces, or delete without --prune",
            e.message
        ),
        Err(e) => return Err(cluster::explain_volumebackups(e, "list", None)),
    };
    for o in &others {
        let theirs = o.namespace().unwrap_or_default();
        if theirs == ns && deleting.contains(&o.name_any()) {
            continue;
        }
        if o.spec
            .snapshot
            .as_deref()
            .is_some_and(|id| snapshots.contains(id))
        {
            bail!(
                "refusing to prune: the snapshot {} is also the backup of VolumeBackup {theirs}/{} (a copy a cross-namespace restore made?): delete that one in the same way first, or delete without --prune to remove only the record",
                o.short_snapshot(),
                o.name_any()
            );
        }
    }
    Ok(())
}

/// Forgets the snapshots and prunes what only they used.
fn forget_and_prune(plan: &RepositoryRemoval, names: &str, quiet: bool) -> Result<()> {
    let forget = ForgetPlan {
        groups: vec![ForgetGroup {
            key: GroupKey::default(),
            keep: Vec::new(),
            remove: plan.forget.clone(),
        }],
    };
    let location = &plan.location;
    let removed = volbackup_store::forget::apply(&plan.repo, &forget).with_context(|| {
        format!("cannot forget the snapshots in {location}; nothing was deleted")
    })?;
    let pruned = (|| -> Result<volbackup_store::prune::PruneStats> {
        let prune = volbackup_store::prune::plan_prune(
            &plan.repo,
            &volbackup_store::prune::PruneOptions::default(),
        )?;
        let reporter = Reporter::start(Mode::choose(false, quiet), "prune");
        let stats = volbackup_store::prune::execute(&plan.repo, &prune, reporter.progress());
        reporter.finish();
        Ok(stats?)
    })();
    let stats = pruned.with_context(|| {
        format!(
            "forgot {removed} snapshot(s) in {location}, but the prune failed, so their data is still stored and the VolumeBackups {names} were kept: run `kubectl-volbackup prune --repo {location}`, then `kubectl volbackup delete {names} --yes`"
        )
    })?;
    if !quiet {
        eprintln!(
            "forgot {removed} snapshot(s) in {location}; prune removed {} packs ({}) and wrote {} ({})",
            stats.packs_deleted,
            crate::commands::human_bytes(stats.bytes_deleted),
            stats.packs_written,
            crate::commands::human_bytes(stats.bytes_written)
        );
    }
    Ok(())
}

/// `delete`: every named VolumeBackup must exist before anything is removed. With `--prune`,
/// their snapshots must be in the local repository (`--repo` or the environment, as for
/// `forget`), which must be the one their Secret names when that is readable; the snapshots are
/// forgotten and the repository pruned before the objects go, and a failed prune keeps them.
pub fn delete(args: &DeleteArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    let terminal = std::io::stdin().is_terminal();
    if !args.yes && !terminal {
        if args.prune {
            bail!(
                "refusing to delete VolumeBackups and their repository data without confirmation: pass --yes"
            );
        }
        bail!("refusing to delete without confirmation: pass --yes");
    }
    let (kube, backups) = rt.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), &ns);
        let mut backups = Vec::new();
        for name in &args.backups {
            let Some(b) = api
                .get_opt(name)
                .await
                .map_err(|e| cluster::explain_volumebackups(e, "get", Some(&ns)))?
            else {
                bail!(
                    "VolumeBackup {name:?} not found in namespace {ns:?} (nothing was deleted): list them with kubectl volbackup list -n {ns}"
                );
            };
            if b.is_being_taken(chrono::Utc::now()) {
                bail!(
                    "VolumeBackup {ns}/{name} is still being taken (its create was heard from in the last {}s, while {}; nothing was deleted): wait for it, or stop that create; to remove it anyway run kubectl volbackup cleanup --backup {name} -n {ns}",
                    HEARTBEAT_STALE.as_secs(),
                    crate::commands::record::last_step(&b)
                );
            }
            // Where the Secret says the backup went, when this user may read it.
            let theirs = if args.prune {
                match secrets.get_opt(&b.spec.repository.secret_ref.name).await {
                    Ok(Some(s)) => cluster::secret_repository(&s),
                    _ => None,
                }
            } else {
                None
            };
            backups.push((b, theirs));
        }
        if args.prune {
            refuse_shared_snapshots(&kube.client, &ns, &backups).await?;
        }
        anyhow::Ok((kube, backups))
    })?;
    let ns = kube.namespace.clone();
    let names = args.backups.join(" ");
    let plan = if args.prune {
        Some(plan_repository_removal(&args.repo, &ns, &backups)?)
    } else {
        None
    };
    if !args.yes {
        let prompt = match &plan {
            Some(p) => format!(
                "Delete VolumeBackup(s) {} in namespace {ns} AND their {} snapshot(s) in {} (the repository data only they use is pruned; this cannot be undone)?",
                args.backups.join(", "),
                p.forget.len(),
                p.location
            ),
            None => format!(
                "Delete VolumeBackup(s) {} in namespace {ns}? (the repository snapshots stay)",
                args.backups.join(", ")
            ),
        };
        let ok = dialoguer::Confirm::new()
            .with_prompt(prompt)
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("nothing deleted");
        }
    }
    if let Some(plan) = &plan {
        forget_and_prune(plan, &names, quiet)?;
    }
    rt.block_on(async {
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        for (b, _) in &backups {
            let name = b.name_any();
            // A backup that never completed may have left its run's temporary objects.
            if b.phase() != Some(Phase::Completed)
                && let Some(run) = b.labels().get(BACKUP_LABEL)
            {
                let mut selector = format!("{BACKUP_LABEL}={run}");
                if let Some(pvc) = b.labels().get(PVC_LABEL) {
                    selector.push_str(&format!(",{PVC_LABEL}={pvc}"));
                }
                let left =
                    crate::commands::create::cleanup_selector(&kube.client, &ns, &selector, false)
                        .await?;
                if !quiet && left > 0 {
                    eprintln!("removed {left} temporary object(s) VolumeBackup {name} left");
                }
            }
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    if !quiet {
                        println!("volumebackup.volbackup.io/{name} deleted");
                    }
                }
                // Deleted meanwhile: what the user asked for is done.
                Err(e) if cluster::is_status(&e, 404) => {
                    if !quiet {
                        println!("volumebackup.volbackup.io/{name} deleted");
                    }
                }
                Err(e) => return Err(cluster::explain_volumebackups(e, "delete", Some(&ns))),
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_compare_after_making_paths_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            normalized_location("repo/"),
            cwd.join("repo").to_string_lossy()
        );
        assert_eq!(normalized_location("/srv/backups/"), "/srv/backups");
        assert_eq!(
            normalized_location("s3:https://s3.example.com/b/p/"),
            "s3:https://s3.example.com/b/p"
        );
    }
}
