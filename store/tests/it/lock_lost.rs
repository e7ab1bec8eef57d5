//! Lost locks: a holder judges the age of its lock the way others do, by the wall-clock time
//! written in its lock file, and writes no index or snapshot once the lock is lost, not even
//! after its last upload. The clocks this process judges locks by are moved forward
//! (`lock::advance_clocks`) to stand in for a machine that was suspended (the wall clock moves,
//! the monotonic clock stands still) and for an upload that hangs past the stale age (both
//! move). A move is seen by every lock of the process, so each test here runs alone in a
//! process of its own.

use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use crate::common::{PASSWORD, TempRepo, in_child, random_bytes, restic_output, run_in_child};
use volbackup_store::backend::local::LocalBackend;
use volbackup_store::backend::{Backend, FileInfo, FileType};
use volbackup_store::block::{BackupOptions, backup_block};
use volbackup_store::id::Id;
use volbackup_store::lock::{Lock, advance_clocks, timing};
use volbackup_store::packer::WriterOptions;
use volbackup_store::progress::NoProgress;
use volbackup_store::prune::{PruneOptions, execute, plan_prune};
use volbackup_store::{Error, Repository, Result};

#[test]
fn a_holder_judges_its_lock_by_the_wall_clock_so_a_suspended_machine_has_lost_it() {
    // The clocks move for the whole process: the test runs alone in its own.
    if !in_child() {
        run_in_child(
            "lock_lost::a_holder_judges_its_lock_by_the_wall_clock_so_a_suspended_machine_has_lost_it",
            &[],
        );
        return;
    }
    let t = TempRepo::new();
    let repo = t.init_ours();
    let lock = Lock::shared(&repo).unwrap();
    lock.check().unwrap();
    let timing = timing();
    // The machine sleeps past the point where a holder gives up: its wall clock moves on, its
    // monotonic clock does not.
    advance_clocks(
        timing.give_up_after() + Duration::from_secs(60),
        Duration::ZERO,
    );
    let err = lock.check().unwrap_err();
    assert!(matches!(err, Error::LockLost(_)), "not a lost lock: {err}");
    assert!(err.to_string().contains("lost the lock"), "{err}");
    // Past the stale age others pass over the lock, by the same clock: an exclusive lock is
    // taken while the shared one's file is still there.
    advance_clocks(timing.stale - timing.give_up_after(), Duration::ZERO);
    assert_eq!(repo.list_ids(FileType::Lock).unwrap().len(), 1);
    let other = t.open();
    let exclusive = Lock::exclusive(&other).unwrap();
    assert!(lock.check().is_err(), "the lost lock came back");
    drop(exclusive);
    drop(lock);
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

#[test]
fn a_backup_whose_last_upload_stalls_past_the_stale_age_writes_no_index_naming_pruned_packs() {
    // The clocks move for the whole process: the test runs alone in its own.
    if !in_child() {
        run_in_child(
            "lock_lost::a_backup_whose_last_upload_stalls_past_the_stale_age_writes_no_index_naming_pruned_packs",
            &[],
        );
        return;
    }
    let stale = timing().stale + Duration::from_secs(60);
    // The upload hangs while time passes (both clocks move), and the machine is suspended
    // during the upload (only the wall clock moves).
    for (case, wall, monotonic) in [
        ("a stalled upload", stale, stale),
        ("a suspend during the upload", stale, Duration::ZERO),
    ] {
        last_upload_outlives_the_lock(case, wall, monotonic);
    }
}

/// A backup whose last upload (its tree's pack, which goes when the backup finishes) waits
/// until it is let go; meanwhile the clocks move by `wall` and `monotonic` and a prune runs.
fn last_upload_outlives_the_lock(case: &str, wall: Duration, monotonic: Duration) {
    let t = TempRepo::new();
    let first = t.init_ours();
    // A first snapshot that must survive everything below.
    backup_block(
        &first,
        &mut &random_bytes(1, 1 << 20)[..],
        "kept.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let kept = packs(&t);

    let (waiting_tx, waiting) = mpsc::channel();
    let stalling = Arc::new(Stalling {
        inner: t.backend(),
        waiting: Mutex::new(waiting_tx),
        go: (Mutex::new(false), Condvar::new()),
    });
    let repo = Repository::open(stalling.clone(), PASSWORD).unwrap();
    // Packs of 64 KiB, which every data chunk fills on its own: each is uploaded as soon as
    // its chunk is stored, and only the tree's pack is left for the end.
    let opts = BackupOptions {
        writer: WriterOptions {
            pack_size: 64 << 10,
            workers: 1,
            upload_threads: 1,
            ..WriterOptions::default()
        },
        ..BackupOptions::default()
    };
    let image = random_bytes(2, 8 << 20);
    let backup = std::thread::spawn(move || {
        backup_block(&repo, &mut &image[..], "vol.img", &opts, &NoProgress)
    });
    waiting
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("{case}: the tree's pack was never uploaded"));
    let written: Vec<Id> = packs(&t).difference(&kept).copied().collect();

    // Past the stale age a prune passes over the backup's lock and removes the packs no index
    // names yet: those the backup has uploaded.
    advance_clocks(wall, monotonic);
    let other = t.open();
    let plan = plan_prune(&other, &PruneOptions::default()).unwrap();
    execute(&other, &plan, &NoProgress).unwrap_or_else(|e| panic!("{case}: prune: {e}"));
    let left = packs(&t);
    assert!(
        written.iter().any(|p| !left.contains(p)),
        "{case}: the prune removed none of the backup's {} packs",
        written.len()
    );

    // The upload ends; the backup must see that its lock is lost before it writes an index.
    stalling.let_go();
    let result = backup.join().unwrap();
    match result {
        Err(Error::LockLost(_)) => {}
        Err(e) => panic!("{case}: not a lost lock: {e}"),
        Ok(s) => panic!("{case}: the backup saved snapshot {}", s.snapshot_id),
    }
    let check = t.open();
    check.load_index().unwrap();
    let stored = packs(&t);
    let named: Vec<Id> = check.index().packs().into_iter().collect();
    let missing: Vec<&Id> = named.iter().filter(|p| !stored.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{case}: the index names pruned packs {missing:?}"
    );
    assert_eq!(
        check.list_ids(FileType::Snapshot).unwrap().len(),
        1,
        "{case}: the backup saved a snapshot"
    );
    assert!(
        check.list_ids(FileType::Lock).unwrap().is_empty(),
        "{case}: a lock was left"
    );
    let out = restic_output(&t.path, PASSWORD, &["check"], None);
    assert!(
        out.status.success(),
        "{case}: restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The packs in the repository.
fn packs(t: &TempRepo) -> std::collections::BTreeSet<Id> {
    t.open()
        .list_ids(FileType::Pack)
        .unwrap()
        .into_iter()
        .collect()
}

/// Packs smaller than this are the tree's (a data chunk is at least 512 KiB).
const SMALL_PACK: usize = 64 << 10;

/// A local backend whose writes of small packs (the tree's) wait until they are let go; it
/// says so when one begins to wait.
struct Stalling {
    inner: Arc<LocalBackend>,
    waiting: Mutex<mpsc::Sender<()>>,
    go: (Mutex<bool>, Condvar),
}

impl Stalling {
    fn let_go(&self) {
        *self.go.0.lock().unwrap() = true;
        self.go.1.notify_all();
    }
}

impl Backend for Stalling {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        if t == FileType::Pack && data.len() < SMALL_PACK {
            let _ = self.waiting.lock().unwrap().send(());
            let mut go = self.go.0.lock().unwrap();
            while !*go {
                go = self.go.1.wait(go).unwrap();
            }
        }
        self.inner.write(t, name, data)
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
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
