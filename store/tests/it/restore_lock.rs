//! A restore holds its lock while any plan of it reads packs: when the index changed before the
//! lock was confirmed, the restore is planned again, and a read of the first plan that
//! arrives late must not release the lock the second plan reads under. The backend here
//! orders the steps (index listed, then the lock written; a pack read begun, then the lock
//! confirmed) so that the index always changes and the first plan's read is always under way
//! when the lock is confirmed; only how late that read arrives is a pause.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::common::{PASSWORD, TempRepo, backup_with_its_index_file, random_bytes};
use volbackup_store::backend::local::LocalBackend;
use volbackup_store::backend::{Backend, FileInfo, FileType};
use volbackup_store::block::{RestoreOptions, restore_block};
use volbackup_store::progress::NoProgress;
use volbackup_store::{BlobType, Repository, Result};

/// Steps the backend has seen; waiting for one gives up after a minute.
#[derive(Default)]
struct Steps {
    state: Mutex<Seen>,
    changed: Condvar,
}

#[derive(Default)]
struct Seen {
    /// The restore listed the index files (before its lock file was written).
    index_listed: bool,
    /// A data-pack read began.
    pack_read: bool,
    /// The newer index file was read (the index is loaded again under the lock).
    newer_index_read: bool,
    /// A tree was read after that: the restore is planned again.
    replanned: bool,
    /// Whether a lock file existed at each data-pack read begun once the restore was
    /// planned again.
    locked_at_second_reads: Vec<bool>,
}

impl Steps {
    fn note(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let state = self.state.lock().unwrap();
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(60), |s| !done(s))
            .unwrap();
        drop(state);
        assert!(!timeout.timed_out(), "waited a minute for {what}");
    }
}

/// A local backend that orders a restore's steps (see the module docs).
struct Ordered {
    inner: Arc<LocalBackend>,
    /// Left out of index listings until a lock file is written.
    hidden_index: Mutex<Option<String>>,
    newer_index: String,
    data_packs: HashSet<String>,
    steps: Steps,
}

impl Backend for Ordered {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        if t == FileType::Lock {
            // Written after the index was listed: the listing misses the newer file.
            self.steps.wait_for("the index listing", |s| s.index_listed);
        }
        let r = self.inner.write(t, name, data);
        if t == FileType::Lock {
            *self.hidden_index.lock().unwrap() = None;
        }
        r
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        let r = self.inner.read(t, name);
        if t == FileType::Index && name == self.newer_index {
            self.steps.note(|s| s.newer_index_read = true);
        }
        r
    }
    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        if t == FileType::Pack && self.data_packs.contains(name) {
            let second = self.steps.state.lock().unwrap().replanned;
            if second {
                let locked = !self.inner.list(FileType::Lock)?.is_empty();
                self.steps.note(|s| s.locked_at_second_reads.push(locked));
                return self.inner.read_range(t, name, offset, length);
            }
            // A read of the first plan: it arrives well after the restore was planned again.
            self.steps.note(|s| s.pack_read = true);
            let r = self.inner.read_range(t, name, offset, length);
            self.steps.wait_for("the second plan", |s| s.replanned);
            std::thread::sleep(Duration::from_millis(500));
            return r;
        }
        let r = self.inner.read_range(t, name, offset, length);
        if t == FileType::Pack && self.steps.state.lock().unwrap().newer_index_read {
            self.steps.note(|s| s.replanned = true);
        }
        r
    }
    fn stat(&self, t: FileType, name: &str) -> Result<u64> {
        self.inner.stat(t, name)
    }
    fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
        if t == FileType::Lock {
            // The lock is confirmed only once a pack read of the first plan is under way.
            self.steps.wait_for("a pack read", |s| s.pack_read);
        }
        let mut files = self.inner.list(t)?;
        if t == FileType::Index {
            if let Some(hidden) = self.hidden_index.lock().unwrap().as_ref() {
                files.retain(|f| &f.name != hidden);
            }
            self.steps.note(|s| s.index_listed = true);
        }
        Ok(files)
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.inner.remove(t, name)
    }
}

#[test]
fn a_restore_planned_again_reads_every_pack_under_its_lock_though_an_early_read_ends_late() {
    let t = TempRepo::new();
    t.init_ours();
    let image = random_bytes(51, 3 << 20);
    let (snap, _) = backup_with_its_index_file(&t, &image, "vol.img");
    // A later backup's index file, written (as far as the restore can tell) between its first
    // listing and its lock.
    let (_, newer) = backup_with_its_index_file(&t, &random_bytes(52, 1 << 20), "other.img");
    let plain = t.open();
    plain.load_index().unwrap();
    let data_packs = plain
        .index()
        .iter()
        .filter(|(t, _, _)| *t == BlobType::Data)
        .map(|(_, _, e)| e.pack.to_hex())
        .collect();
    let ordered = Arc::new(Ordered {
        inner: t.backend(),
        hidden_index: Mutex::new(Some(newer.to_hex())),
        newer_index: newer.to_hex(),
        data_packs,
        steps: Steps::default(),
    });
    let repo = Repository::open(ordered.clone(), PASSWORD).unwrap();
    let target = t.scratch("out.img");
    let sum = restore_block(
        &repo,
        &snap,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    let seen = ordered.steps.state.lock().unwrap();
    assert!(seen.replanned, "the restore was not planned again");
    assert!(
        !seen.locked_at_second_reads.is_empty(),
        "the second plan read no pack"
    );
    assert!(
        seen.locked_at_second_reads.iter().all(|&l| l),
        "a pack was read without a lock file in the repository: {:?}",
        seen.locked_at_second_reads
    );
    drop(seen);
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}
