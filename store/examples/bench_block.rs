//! Measures block backup and restore on real files, for comparison with restic.
//!
//! ```text
//! VOLBACKUP_PASSWORD=pw cargo run -p volbackup-store --example bench_block -- backup REPO FILE
//! VOLBACKUP_PASSWORD=pw cargo run -p volbackup-store --example bench_block -- restore REPO SNAPSHOT TARGET
//! ```
//! `backup` initializes REPO when it does not exist; `BENCH_WORKERS`, `BENCH_UPLOAD_THREADS`
//! and `BENCH_COMPRESSION` override the writer settings. Run it under `/usr/bin/time -v` for
//! the peak memory.

use std::path::Path;
use std::sync::Arc;

use volbackup_store::backend::local::LocalBackend;
use volbackup_store::block::{self, BackupOptions, RestoreOptions};
use volbackup_store::progress::NoProgress;
use volbackup_store::{InitOptions, Repository};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let password = std::env::var("VOLBACKUP_PASSWORD").map_err(|_| "set VOLBACKUP_PASSWORD")?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["backup", repo, file] => {
            let backend = Arc::new(LocalBackend::new(repo));
            let repo = if Path::new(repo).join("config").exists() {
                Repository::open(backend, &password)?
            } else {
                Repository::init(backend, &password, &InitOptions::default())?
            };
            let mut src = block::open_source(Path::new(file))?;
            let mut opts = BackupOptions {
                total_size: src.size,
                ..Default::default()
            };
            let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
            if let Some(n) = env("BENCH_WORKERS") {
                opts.writer.workers = n;
            }
            if let Some(n) = env("BENCH_UPLOAD_THREADS") {
                opts.writer.upload_threads = n;
            }
            if let Some(n) = env("BENCH_COMPRESSION") {
                opts.writer.compression_level = n as i32;
            }
            let name = Path::new(file)
                .file_name()
                .ok_or("file name")?
                .to_string_lossy();
            let sum = block::backup_block(&repo, &mut src.reader, &name, &opts, &NoProgress)?;
            let mbps = sum.bytes_total as f64 / sum.seconds / 1e6;
            println!("{} ({mbps:.0} MB/s)", serde_json::to_string(&sum)?);
        }
        ["restore", repo, snap, target] => {
            let repo = Repository::open(Arc::new(LocalBackend::new(repo)), &password)?;
            let (id, _) = repo.find_snapshot(snap)?;
            let sum = block::restore_block(
                &repo,
                &id,
                None,
                Path::new(target),
                &RestoreOptions::default(),
                &NoProgress,
            )?;
            let mbps = sum.bytes_total as f64 / sum.seconds / 1e6;
            println!("{} ({mbps:.0} MB/s)", serde_json::to_string(&sum)?);
        }
        _ => {
            return Err(
                "usage: bench_block backup REPO FILE | restore REPO SNAPSHOT TARGET".into(),
            );
        }
    }
    Ok(())
}
