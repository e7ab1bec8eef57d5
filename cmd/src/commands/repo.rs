//! `repo init`, `repo check`, `prune`.

use anyhow::{Result, bail};
use volbackup_store::Repository;
use volbackup_store::check::{CheckOptions, check};
use volbackup_store::prune::{PruneOptions, execute, plan_prune};
use volbackup_store::repo::InitOptions;

use crate::cli::{PruneArgs, RepoCheckArgs, RepoInitArgs};
use crate::progress::{Mode, Reporter};
use crate::repository;

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
    let repo = repository::open(&args.repo)?;
    let reporter = Reporter::start(Mode::choose(false, quiet), "check");
    let report = check(
        &repo,
        &CheckOptions {
            read_data: args.read_data,
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

/// `prune`
pub fn prune(args: &PruneArgs, quiet: bool) -> Result<()> {
    let repo = repository::open(&args.repo)?;
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
