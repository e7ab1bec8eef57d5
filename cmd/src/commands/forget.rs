//! `forget`

use anyhow::{Result, bail};
use volbackup_store::forget::{
    ForgetGroup, ForgetPlan, GroupBy, GroupKey, Policy, Removed, apply, plan,
};

use crate::cli::{ForgetArgs, OutputFormat};
use crate::repository;

/// The retention policy given on the command line.
pub fn policy(args: &ForgetArgs) -> Policy {
    Policy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
        keep_tags: args.keep_tags.clone(),
        ..Policy::default()
    }
}

/// `forget`
pub fn run(args: &ForgetArgs, quiet: bool) -> Result<()> {
    let repo = repository::open(
        &repository::Access::new(&args.repo)?,
        repository::Purpose::Remove,
    )?;
    let policy = policy(args);
    let snapshots = repo.list_snapshots()?;
    let plan = if !args.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or a policy (--keep-...), not both");
        }
        let mut remove = Vec::new();
        for spec in &args.snapshots {
            let (id, snap) = repo.find_snapshot(spec)?;
            remove.push(Removed {
                id,
                time: snap.time,
            });
        }
        ForgetPlan {
            groups: vec![ForgetGroup {
                key: GroupKey::default(),
                keep: Vec::new(),
                remove,
            }],
        }
    } else {
        if policy.is_empty() {
            bail!(
                "no policy given: name snapshots or use --keep-last, --keep-daily, ... (nothing was removed)"
            );
        }
        plan(&snapshots, &policy, GroupBy::default())?
    };
    match args.output {
        OutputFormat::Table => {
            if args.dry_run || !quiet {
                print!("{plan}");
            }
        }
        format => super::print_structured(format, &plan)?,
    }
    if args.dry_run {
        eprintln!("dry run: nothing was removed");
        return Ok(());
    }
    let removed = apply(&repo, &plan)?;
    if !quiet {
        eprintln!("removed {removed} snapshot(s)");
    }
    if args.prune {
        super::repo::prune_repo(&repo, false, quiet)?;
    }
    Ok(())
}
