//! `repo init`, `repo check`, `repo unlock`, `prune`.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use volbackup_store::Repository;
use volbackup_store::check::{CheckOptions, check};
use volbackup_store::lock;
use volbackup_store::prune::{PruneOptions, execute, plan_prune};
use volbackup_store::repo::InitOptions;

use crate::cli::{PruneArgs, RepoCheckArgs, RepoInitArgs, RepoUnlockArgs};
use crate::progress::{Mode, Reporter};
use crate::repository::{self, Purpose};

/// `repo init`
pub fn init(args: &RepoInitArgs, quiet: bool) -> Result<()> {
    let loc = repository::location(&args.repo)?;
    let backend = repository::open_backend(&loc)?;
    let password = repository::password(&args.repo, true)?;
    let repo = Repository::init(backend, &password, &InitOptions::default())?;
    if !quiet {
        eprintln!(
            "created restic repository {} at {}",
            repo.config().id,
            repo.location()
        );
    }
    Ok(())
}

/// `repo check`: prints every finding, fails when any is an error.
pub fn check_cmd(args: &RepoCheckArgs, quiet: bool) -> Result<()> {
    // Check reads the index and snapshot files itself, under its lock; those read ahead while
    // the key is derived are used then (their names are their hashes).
    let repo = repository::open(&repository::Access::new(&args.repo)?, Purpose::Read)?;
    let reporter = Reporter::start(Mode::choose(false, quiet), "check");
    let report = check(
        &repo,
        &CheckOptions {
            read_data: args.read_data,
            read_concurrency: args.read_concurrency.map_or(0, usize::from),
        },
        reporter.progress(),
    )?;
    reporter.finish();
    for p in &report.problems {
        println!("{p}");
    }
    let errors = report.errors().count();
    if errors > 0 {
        bail!("check found {errors} error(s) in {}", repo.location());
    }
    if !quiet {
        eprintln!(
            "no errors were found ({} snapshots, {} packs)",
            report.snapshots, report.packs
        );
    }
    Ok(())
}

/// `repo unlock`: removes stale locks, or with `--remove-all` every file in `locks/` once the
/// user confirmed (or passed `--yes`).
pub fn unlock(args: &RepoUnlockArgs, quiet: bool) -> Result<()> {
    let repo = repository::open(&repository::Access::new(&args.repo)?, Purpose::Remove)?;
    let location = repo.location();
    if !args.remove_all {
        let done = lock::remove_stale_locks(&repo)?;
        if !quiet {
            eprintln!(
                "removed {} stale lock(s) from {location}; {} lock(s) in use kept",
                done.removed, done.kept
            );
        }
        return Ok(());
    }
    let names = lock::lock_file_names(&repo)?;
    if names.is_empty() {
        if !quiet {
            eprintln!("{location} has no locks");
        }
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to remove every lock of {location} without confirmation: pass --yes once no backup, restore or prune uses it"
            );
        }
        let ok = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Remove all {} lock(s) of {location}? A backup, restore or prune still running loses its lock and a prune may then delete data a running backup needs",
                names.len()
            ))
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("no lock removed");
        }
    }
    let removed = lock::remove_all_locks(&repo)?;
    if !quiet {
        eprintln!("removed {removed} lock(s) from {location}");
    }
    Ok(())
}

/// `prune`
pub fn prune(args: &PruneArgs, quiet: bool) -> Result<()> {
    let repo = repository::open(&repository::Access::new(&args.repo)?, Purpose::Remove)?;
    prune_repo(&repo, args.dry_run, quiet)
}

/// Plans a prune and (unless `dry_run`) carries it out.
pub fn prune_repo(repo: &Repository, dry_run: bool, quiet: bool) -> Result<()> {
    let plan = plan_prune(repo, &PruneOptions::default())?;
    if dry_run || !quiet {
        println!("{plan}");
    }
    if dry_run || plan.is_noop() {
        return Ok(());
    }
    let reporter = Reporter::start(Mode::choose(false, quiet), "prune");
    let stats = execute(repo, &plan, reporter.progress())?;
    reporter.finish();
    if !quiet {
        eprintln!(
            "removed {} packs ({}), wrote {} packs ({})",
            stats.packs_deleted,
            super::human_bytes(stats.bytes_deleted),
            stats.packs_written,
            super::human_bytes(stats.bytes_written)
        );
    }
    Ok(())
}
