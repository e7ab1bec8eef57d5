//! Each operation reads what it needs, once: a listing of the snapshots reads no index file;
//! a block backup and a restore each read every index file once, under their own lock. The
//! repository is opened as the plugin's one opener opens it for each command
//! (`cmd/src/repository.rs`: [`ReadAhead::Nothing`] for `snapshots`, `forget` and `prune`,
//! [`ReadAhead::SnapshotsAndIndex`] for `mover backup`, `mover restore` and `repo check`),
//! through a backend that counts every file it is asked for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::common::{PASSWORD, TempRepo, mixed_image};
use volbackup_store::backend::{Backend, FileInfo, FileType};
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_opening};
use volbackup_store::open_snapshot::Opening;
use volbackup_store::parent::backup_parent;
use volbackup_store::progress::NoProgress;
use volbackup_store::{Id, OpenOptions, ReadAhead, Repository, Result};

/// A backend that counts whole-file reads per file (`index/NAME`, `snapshots/NAME`).
struct Counting {
    inner: Arc<dyn Backend>,
    reads: Mutex<BTreeMap<String, usize>>,
}

impl Counting {
    fn new(inner: Arc<dyn Backend>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            reads: Mutex::default(),
        })
    }

    /// How often each file of kind `t` was read.
    fn reads_of(&self, t: FileType) -> BTreeMap<String, usize> {
        let prefix = format!("{}/", t.dir());
        self.reads
            .lock()
            .unwrap()
            .iter()
            .filter(|(file, _)| file.starts_with(&prefix))
            .map(|(file, n)| (file.clone(), *n))
            .collect()
    }
}

impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        self.inner.write(t, name, data)
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        *self
            .reads
            .lock()
            .unwrap()
            .entry(format!("{}/{name}", t.dir()))
            .or_default() += 1;
        self.inner.read(t, name)
    }
    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        self.inner.read_range(t, name, offset, length)
    }
    fn stat(&self, t: FileType, name: &str) -> Result<u64> {
        self.inner.stat(t, name)
    }
    fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
        self.inner.list(t)
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.inner.remove(t, name)
    }
}

/// A repository with two block backups, so two index files; returns the images' snapshots.
fn two_backups(t: &TempRepo) -> Vec<(Id, Vec<u8>)> {
    let repo = t.init_ours();
    (0..2)
        .map(|seed| {
            let image = mixed_image(60 + seed, 4);
            let name = format!("vol{seed}.img");
            let s = backup_block(
                &repo,
                &mut &image[..],
                &name,
                &BackupOptions::default(),
                &NoProgress,
            )
            .unwrap();
            (s.snapshot_id, image)
        })
        .collect()
}

fn open(backend: Arc<Counting>, read_ahead: ReadAhead) -> Repository {
    Repository::open_with(
        backend,
        PASSWORD,
        &OpenOptions {
            read_ahead,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

/// Every index file of the repository at `t`, each counted `times`.
fn every_index_file(t: &TempRepo, times: usize) -> BTreeMap<String, usize> {
    t.open()
        .list_ids(FileType::Index)
        .unwrap()
        .into_iter()
        .map(|id| (format!("index/{id}"), times))
        .collect()
}

#[test]
fn listing_the_snapshots_reads_no_index_file() {
    let t = TempRepo::new();
    let backups = two_backups(&t);
    let counting = Counting::new(t.backend());
    let repo = open(counting.clone(), ReadAhead::Nothing);
    assert_eq!(repo.list_snapshots().unwrap().len(), backups.len());
    assert_eq!(counting.reads_of(FileType::Index), BTreeMap::new());
    assert_eq!(counting.reads_of(FileType::Snapshot).len(), backups.len());
}

#[test]
fn a_block_backup_reads_every_index_file_once() {
    let t = TempRepo::new();
    two_backups(&t);
    let before = every_index_file(&t, 1);
    assert_eq!(before.len(), 2);
    let counting = Counting::new(t.backend());
    let repo = open(counting.clone(), ReadAhead::SnapshotsAndIndex);
    // As `mover backup` does it: the parent from the listing read ahead, then the backup,
    // which loads the index under its lock.
    let host = volbackup_store::format::hostname();
    let parent = backup_parent(&repo, None, &host, &["/vol0.img".to_string()]).unwrap();
    assert!(parent.is_some());
    let image = mixed_image(70, 4);
    backup_block(
        &repo,
        &mut &image[..],
        "vol0.img",
        &BackupOptions {
            parent,
            ..BackupOptions::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(counting.reads_of(FileType::Index), before);
}

#[test]
fn a_restore_reads_every_index_file_once() {
    let t = TempRepo::new();
    let backups = two_backups(&t);
    let before = every_index_file(&t, 1);
    let (snapshot, image) = &backups[1];
    let counting = Counting::new(t.backend());
    let repo = open(counting.clone(), ReadAhead::SnapshotsAndIndex);
    // As `mover restore` does it: the opening loads the index while the lock is taken.
    let opening = Opening::begin(&repo, &snapshot.to_hex()).unwrap();
    let target = t.scratch("out.img");
    restore_opening(
        &repo,
        opening,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        std::fs::read(&target).unwrap() == *image,
        "restored bytes differ"
    );
    assert_eq!(counting.reads_of(FileType::Index), before);
}

#[test]
fn without_reading_ahead_a_restore_still_reads_every_index_file_once() {
    let t = TempRepo::new();
    let backups = two_backups(&t);
    let before = every_index_file(&t, 1);
    let counting = Counting::new(t.backend());
    let repo = open(counting.clone(), ReadAhead::Nothing);
    let opening = Opening::begin(&repo, &backups[0].0.to_hex()).unwrap();
    restore_opening(
        &repo,
        opening,
        None,
        &t.scratch("out.img"),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(counting.reads_of(FileType::Index), before);
}
