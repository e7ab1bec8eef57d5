//! `mover backup` and `mover restore`: what the mover and populate pods run, and what a user
//! runs on a machine that sees the volume.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use volbackup_populator::contract::{ErrorLine, FailureReason, MoverLine, PlannedRead, Summary};
use volbackup_store::Repository;
use volbackup_store::block::{self, BackupOptions};
use volbackup_store::id::Id;
use volbackup_store::open_snapshot::{OpenSnapshot, Opening};
use volbackup_store::packer::WriterOptions;
use volbackup_store::parent::backup_parent;
use volbackup_store::{backup_tree, restore_tree};

use crate::cli::{MoverBackupArgs, MoverRestoreArgs};
use crate::progress::{Mode, Reporter};
use crate::repository::{self, Purpose};

fn is_directory(path: &Path) -> Result<bool> {
    if path.as_os_str() == "-" {
        return Ok(false);
    }
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot back up {}: it does not exist or cannot be read",
            path.display()
        )
    })?;
    Ok(meta.is_dir())
}

/// What a backup reports, whatever its kind.
struct Done {
    snapshot_id: Id,
    bytes_total: u64,
    bytes_new: u64,
    bytes_stored: u64,
}

/// `mover backup`
pub fn backup(args: &MoverBackupArgs, quiet: bool) -> Result<()> {
    let result = backup_inner(args, quiet);
    report_failure(&result, args.json, FailureReason::BackupFailed);
    result
}

fn backup_inner(args: &MoverBackupArgs, quiet: bool) -> Result<()> {
    let description = match &args.description {
        Some(text) => Some(
            serde_json::from_str::<serde_json::Value>(text)
                .context("--description is not valid JSON")?,
        ),
        None => None,
    };
    let directory = is_directory(&args.source)?;
    // The backup loads the index itself, under its lock; the index and snapshot files are
    // listed and read while the key is derived.
    let repo = repository::open(&repository::Access::new(&args.repo)?, Purpose::Read)?;
    report_lock_waits(&repo, args.json);
    let host = args
        .host
        .clone()
        .unwrap_or_else(volbackup_store::format::hostname);
    let mut opts = BackupOptions {
        tags: args.tags.clone(),
        hostname: host.clone(),
        description,
        parent: None,
        writer: WriterOptions {
            compression_level: args.compression,
            ..WriterOptions::default()
        },
        total_size: None,
    };
    let started = Instant::now();
    let reporter = Reporter::start(Mode::choose(args.json, quiet), "backup");
    let summary = if directory {
        let abs = std::path::absolute(&args.source)
            .with_context(|| format!("cannot resolve {}", args.source.display()))?;
        opts.parent = backup_parent(
            &repo,
            args.parent.as_deref(),
            &host,
            &[abs.to_string_lossy().into_owned()],
        )?;
        let s = backup_tree::backup_tree(&repo, &abs, &opts, reporter.progress())?;
        Done {
            snapshot_id: s.snapshot_id,
            bytes_total: s.bytes_total,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
        }
    } else {
        let name = match &args.name {
            Some(n) => n.clone(),
            None if args.source.as_os_str() == "-" => "stdin".to_string(),
            None => args
                .source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "volume.img".to_string()),
        };
        opts.parent = backup_parent(&repo, args.parent.as_deref(), &host, &[format!("/{name}")])?;
        let mut source = block::open_source(&args.source)?;
        opts.total_size = source.size;
        let s = block::backup_block(&repo, &mut source.reader, &name, &opts, reporter.progress())?;
        Done {
            snapshot_id: s.snapshot_id,
            bytes_total: s.bytes_total,
            bytes_new: s.bytes_new,
            bytes_stored: s.bytes_stored,
        }
    };
    reporter.finish();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let line = MoverLine::Summary(Summary {
            snapshot_id: summary.snapshot_id.to_string(),
            bytes_total: summary.bytes_total,
            bytes_new: Some(summary.bytes_new),
            bytes_stored: Some(summary.bytes_stored),
            bytes_written: None,
            seconds: (seconds * 1000.0).round() / 1000.0,
            source: Some(args.source.to_string_lossy().into_owned()),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", line.to_line())?;
    } else if !quiet {
        eprintln!(
            "snapshot {} saved: {} read, {} new, {} stored, in {:.1} s",
            summary.snapshot_id.short(),
            super::human_bytes(summary.bytes_total),
            super::human_bytes(summary.bytes_new),
            super::human_bytes(summary.bytes_stored),
            seconds
        );
    }
    Ok(())
}

/// Whether a snapshot holds a block image (`restic backup --stdin` layout: one file node at
/// the root and `paths: ["/NAME"]`) rather than a file tree.
/// With `--json`, a wait for another process's lock is reported as a line
/// `{"type":"waiting","message":...}` on stdout (what `create` and the populator show) instead
/// of a warning on stderr.
fn report_lock_waits(repo: &volbackup_store::Repository, json: bool) {
    if !json {
        return;
    }
    let mut wait = repo.lock_wait();
    // Often enough that whoever reads the last lines of the log sees the wait.
    wait.report_every = std::time::Duration::from_secs(5);
    wait.on_wait = Some(std::sync::Arc::new(|message: &str| {
        let line = MoverLine::Waiting {
            message: message.to_string(),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", line.to_line());
        let _ = out.flush();
    }));
    repo.set_lock_wait(wait);
}

/// Names a mover's failure (`otherwise` when no cause is known), which says whether trying
/// again can help.
pub fn classify(err: &anyhow::Error, otherwise: FailureReason) -> FailureReason {
    use FailureReason as R;
    use volbackup_store::Error as E;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<E>() {
            return match e {
                E::WrongPassword { .. } => R::WrongPassword,
                E::NoRepository { .. } => R::RepositoryNotFound,
                E::Backend {
                    retryable: true, ..
                } => R::RepositoryUnreachable,
                E::Backend { .. } => R::RepositoryError,
                E::NotFound { .. } | E::Corrupt { .. } | E::NotIndexed { .. } => {
                    R::RepositoryDamaged
                }
                E::Locked { .. } => R::RepositoryLocked,
                E::LockLost(_) => R::RepositoryLockLost,
                E::SnapshotNotFound { .. } | E::NoSnapshots { .. } => R::SnapshotNotFound,
                E::AmbiguousSnapshot { .. } => R::SnapshotAmbiguous,
                E::TargetTooSmall { .. } => R::VolumeTooSmall,
                E::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                    R::VolumeTooSmall
                }
                _ => otherwise,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::ENOSPC)
        {
            return R::VolumeTooSmall;
        }
    }
    otherwise
}

/// `mover restore`
pub fn restore(args: &MoverRestoreArgs, quiet: bool) -> Result<()> {
    let result = restore_inner(args, quiet);
    report_failure(&result, args.json, FailureReason::RestoreFailed);
    result
}

/// With `--json`, a failure's last line on stdout is its error line, written to the
/// termination message too: what `create` and the populator read to say what failed and
/// whether a retry can help (`otherwise` when no cause is known).
fn report_failure(result: &Result<()>, json: bool, otherwise: FailureReason) {
    if let Err(e) = result
        && json
    {
        let line =
            MoverLine::Error(ErrorLine::new(classify(e, otherwise), crate::one_line(e))).to_line();
        println!("{line}");
        write_termination_message(Path::new(TERMINATION_LOG), &line);
    }
}

/// In a container, the kubelet mounts a file at the pod's `terminationMessagePath` and copies
/// its content into the container's terminated state: the error line written there reaches the
/// populator whatever else the log holds (the log's tail is only a fallback, cut at 2 KiB or 80
/// lines). Outside a container the file does not exist and nothing is written.
fn write_termination_message(path: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The default `terminationMessagePath` of a container.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// How an image restore merges and splits its pack reads: the defaults, or `--max-read-mib`.
fn plan_options(args: &MoverRestoreArgs) -> volbackup_store::restore_plan::PlanOptions {
    let mut plan = volbackup_store::restore_plan::PlanOptions::default();
    if let Some(mib) = args.max_read_mib {
        plan.max_read = mib << 20;
    }
    plan
}

/// `mover restore --dry-run`: the pack reads of an image restore, and nothing restored.
fn print_plan(
    repo: &Repository,
    open: &OpenSnapshot,
    args: &MoverRestoreArgs,
    block: bool,
) -> Result<()> {
    if !block {
        anyhow::bail!(
            "--dry-run plans image restores only; snapshot {} is a file tree",
            open.id.short()
        );
    }
    let plan = block::plan_image_restore(repo, open, args.path.as_deref(), &plan_options(args))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for r in &plan.reads {
            let line = MoverLine::Read(PlannedRead {
                pack: r.pack.to_string(),
                offset: r.offset,
                length: r.length,
                blobs: r.blobs.len(),
            });
            writeln!(out, "{}", line.to_line())?;
        }
    } else {
        let packs: std::collections::HashSet<Id> = plan.reads.iter().map(|r| r.pack).collect();
        writeln!(
            out,
            "{} reads of {} packs, {} read for an image of {}",
            plan.reads.len(),
            packs.len(),
            super::human_bytes(plan.bytes_read()),
            super::human_bytes(plan.size)
        )?;
    }
    Ok(())
}

fn restore_inner(args: &MoverRestoreArgs, quiet: bool) -> Result<()> {
    // The index is loaded while the restore's lock is taken, with the snapshot and its root
    // tree, all at once (see `Opening`): nothing here reads them before or after. An image
    // restore starts its pack reads before the lock is confirmed and writes nothing until it
    // is; the rest waits for the lock first.
    let repo = repository::open(&repository::Access::new(&args.repo)?, Purpose::Read)?;
    report_lock_waits(&repo, args.json);
    let started = Instant::now();
    let opening = Opening::begin(&repo, &args.snapshot)?;
    let id = opening.id;
    let image = args.path.is_some() || opening.is_block_image();
    if args.dry_run || !image {
        let (open, _) = opening.confirm()?;
        let block = args.path.is_some() || open.is_block_image();
        if args.dry_run {
            return print_plan(&repo, &open, args, block);
        }
        return restore_opened(&repo, open, args, quiet, started);
    }
    let reporter = Reporter::start(Mode::choose(args.json, quiet), "restore");
    let s = block::restore_opening(
        &repo,
        opening,
        args.path.as_deref(),
        &args.target,
        &image_options(args),
        reporter.progress(),
    )?;
    reporter.finish();
    print_restored(args, quiet, id, s.bytes_total, s.bytes_written, started)
}

/// The settings of an image restore from the flags.
fn image_options(args: &MoverRestoreArgs) -> block::RestoreOptions {
    block::RestoreOptions {
        read_concurrency: args.read_concurrency.map_or(0, usize::from),
        reorder_window: args
            .reorder_window_mib
            .map_or(block::RestoreOptions::default().reorder_window, |m| m << 20),
        read_budget: args.read_budget_mib.map_or(0, |m| m << 20),
        plan: plan_options(args),
        ..block::RestoreOptions::default()
    }
}

/// Restores a snapshot opened under its lock: a file tree, or an image whose root tree the
/// index loaded before the lock did not name.
fn restore_opened(
    repo: &Repository,
    open: OpenSnapshot,
    args: &MoverRestoreArgs,
    quiet: bool,
    started: Instant,
) -> Result<()> {
    let block = args.path.is_some() || open.is_block_image();
    let reporter = Reporter::start(Mode::choose(args.json, quiet), "restore");
    let (bytes_total, bytes_written) = match block {
        true => {
            let s = block::restore_image(
                repo,
                &open,
                args.path.as_deref(),
                &args.target,
                &image_options(args),
                reporter.progress(),
            )?;
            (s.bytes_total, s.bytes_written)
        }
        false => {
            let opts = restore_tree::RestoreOptions {
                privileged_files: args.privileged_files,
                ..restore_tree::RestoreOptions::default()
            };
            let s =
                restore_tree::restore_open(repo, &open, &args.target, &opts, reporter.progress())?;
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(left_out) = privileged_left_out(&s) {
                eprintln!(
                    "note: not restored: {left_out} (they grant privilege; restore with --privileged-files to get them)"
                );
            }
            (s.bytes, s.bytes)
        }
    };
    reporter.finish();
    print_restored(args, quiet, open.id, bytes_total, bytes_written, started)
}

/// What a tree restore left out because privileged files were not asked for, for people.
fn privileged_left_out(s: &restore_tree::RestoreSummary) -> Option<String> {
    let parts: Vec<String> = [
        (s.devices_skipped, "device node(s)"),
        (
            s.setid_cleared,
            "set-user-id/set-group-id bit(s) of file(s)",
        ),
        (s.capabilities_skipped, "file capability attribute(s)"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The line (or JSON summary) that says what was restored.
fn print_restored(
    args: &MoverRestoreArgs,
    quiet: bool,
    id: Id,
    bytes_total: u64,
    bytes_written: u64,
    started: Instant,
) -> Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let line = MoverLine::Summary(Summary {
            snapshot_id: id.to_string(),
            bytes_total,
            bytes_new: None,
            bytes_stored: None,
            bytes_written: Some(bytes_written),
            seconds: (seconds * 1000.0).round() / 1000.0,
            source: None,
        });
        println!("{}", line.to_line());
    } else if !quiet {
        eprintln!(
            "restored snapshot {} to {}: {} in {:.1} s",
            id.short(),
            args.target.display(),
            super::human_bytes(bytes_total),
            seconds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{classify, write_termination_message};
    use volbackup_populator::contract::FailureReason as R;
    use volbackup_store::Error;

    fn of(e: Error) -> R {
        classify(
            &anyhow::Error::new(e).context("restoring"),
            R::RestoreFailed,
        )
    }

    #[test]
    fn failures_that_cannot_heal_are_not_retried() {
        let loc = || "s3:https://h/b".to_string();
        let cases = [
            (Error::WrongPassword { location: loc() }, R::WrongPassword),
            (
                Error::NoRepository { location: loc() },
                R::RepositoryNotFound,
            ),
            (
                Error::SnapshotNotFound {
                    spec: "abcd".into(),
                    location: loc(),
                },
                R::SnapshotNotFound,
            ),
            (
                Error::AmbiguousSnapshot {
                    spec: "a".into(),
                    candidates: vec!["a1234567".into(), "a7654321".into()],
                },
                R::SnapshotAmbiguous,
            ),
            (
                Error::TargetTooSmall {
                    target: "/dev/x".into(),
                    size: 1,
                    needed: 2,
                },
                R::VolumeTooSmall,
            ),
            (
                Error::Io {
                    path: "/data/f".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                R::VolumeTooSmall,
            ),
        ];
        for (e, want) in cases {
            let got = of(e);
            assert_eq!(got, want);
            assert!(!got.retryable(), "{got}");
        }
    }

    #[test]
    fn an_empty_repository_is_a_snapshot_not_found() {
        assert_eq!(
            of(Error::NoSnapshots {
                location: "s3:https://h/b".into()
            }),
            R::SnapshotNotFound
        );
        assert!(!R::SnapshotNotFound.retryable());
    }

    #[test]
    fn network_trouble_is_retried() {
        let got = of(Error::Backend {
            location: "s3:https://h/b".into(),
            message: "connection refused".into(),
            retryable: true,
        });
        assert_eq!(got, R::RepositoryUnreachable);
        assert!(got.retryable());
        let other = classify(&anyhow::anyhow!("something else"), R::BackupFailed);
        assert_eq!(other, R::BackupFailed);
        assert!(other.retryable());
    }

    #[test]
    fn the_error_line_replaces_a_termination_message_and_creates_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("termination-log");
        std::fs::write(&log, "an older, longer message\n").unwrap();
        write_termination_message(&log, r#"{"type":"error"}"#);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "{\"type\":\"error\"}\n"
        );
        // Outside a container there is no such file, and none is made.
        let absent = dir.path().join("absent");
        write_termination_message(&absent, "x");
        assert!(!absent.exists());
    }

    #[test]
    fn the_arguments_the_pods_get_are_the_movers_own_flags() {
        use clap::Parser;
        use volbackup_populator::contract::{BackupArgs, MoverArgs, RestoreArgs};

        use crate::cli::{Cli, Command, MoverCommand};

        let backup = MoverArgs::Backup(BackupArgs {
            source: "/dev/volbackup-source".into(),
            name: "db.img".into(),
            host: "app/db".into(),
            tags: vec!["namespace=app".into(), "pvc=db".into(), "daily".into()],
            description: r#"{"pvc":"db"}"#.into(),
            retry_lock: "30m".into(),
        });
        let cli = Cli::try_parse_from(
            std::iter::once("kubectl-volbackup".to_string()).chain(backup.to_args()),
        )
        .unwrap();
        match cli.command {
            Command::Mover(MoverCommand::Backup(a)) => {
                assert!(a.json);
                assert_eq!(a.source, std::path::Path::new("/dev/volbackup-source"));
                assert_eq!(a.name.as_deref(), Some("db.img"));
                assert_eq!(a.host.as_deref(), Some("app/db"));
                assert_eq!(a.tags, ["namespace=app", "pvc=db", "daily"]);
                assert_eq!(a.description.as_deref(), Some(r#"{"pvc":"db"}"#));
                assert_eq!(
                    a.repo.retry_lock,
                    Some(std::time::Duration::from_secs(30 * 60))
                );
            }
            other => panic!("{other:?}"),
        }
        let restore = MoverArgs::Restore(RestoreArgs {
            snapshot: "ab".repeat(32),
            target: "/data".into(),
            retry_lock: "30m".into(),
            path: Some("/db.img".into()),
            privileged_files: true,
        });
        let cli = Cli::try_parse_from(
            std::iter::once("kubectl-volbackup".to_string()).chain(restore.to_args()),
        )
        .unwrap();
        match cli.command {
            Command::Mover(MoverCommand::Restore(a)) => {
                assert!(a.json && a.privileged_files);
                assert_eq!(a.snapshot, "ab".repeat(32));
                assert_eq!(a.target, std::path::Path::new("/data"));
                assert_eq!(a.path.as_deref(), Some("/db.img"));
                assert_eq!(
                    a.repo.retry_lock,
                    Some(std::time::Duration::from_secs(30 * 60))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
