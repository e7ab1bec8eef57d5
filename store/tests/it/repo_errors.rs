//! Clear, one-line errors for the mistakes users make, and no change to the repository.

use std::sync::Arc;

use crate::common::{PASSWORD, TempRepo, fingerprint, mixed_image};
use volbackup_store::Error;
use volbackup_store::Repository;
use volbackup_store::backend::local::LocalBackend;
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_block};
use volbackup_store::progress::NoProgress;

fn one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error spans lines: {s:?}");
    assert!(!s.contains(PASSWORD), "error shows the password: {s:?}");
    s
}

#[test]
fn wrong_password_is_reported_and_changes_nothing() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(5, 4);
    backup_block(
        &repo,
        &mut &image[..],
        "a.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let before = fingerprint(&t.path);
    let err = Repository::open(t.backend(), "wrong password").unwrap_err();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err:?}");
    let msg = one_line(&err);
    assert!(msg.starts_with("wrong password"), "{msg}");
    assert!(msg.contains(&t.path.display().to_string()), "{msg}");
    assert_eq!(fingerprint(&t.path), before, "the repository changed");

    // Same for a repository restic made.
    let r = TempRepo::new();
    r.init_restic();
    let before = fingerprint(&r.path);
    let err = Repository::open(r.backend(), "wrong password").unwrap_err();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err:?}");
    assert_eq!(
        fingerprint(&r.path),
        before,
        "the restic repository changed"
    );
}

#[test]
fn missing_repository_is_reported_and_creates_nothing() {
    let t = TempRepo::new();
    let err = Repository::open(t.backend(), PASSWORD).unwrap_err();
    assert!(matches!(err, Error::NoRepository { .. }), "{err:?}");
    let msg = one_line(&err);
    assert_eq!(msg, format!("{}: no repository here", t.path.display()));
    assert!(!t.path.exists(), "opening created the repository folder");

    // An existing empty folder is not a repository either, and stays empty.
    std::fs::create_dir(&t.path).unwrap();
    let err = Repository::open(Arc::new(LocalBackend::new(&t.path)), PASSWORD).unwrap_err();
    assert!(matches!(err, Error::NoRepository { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(&t.path).unwrap().count(), 0);
}

#[test]
fn unknown_snapshot_id_is_reported_and_changes_nothing() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(6, 4);
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "b.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let before = fingerprint(&t.path);

    for spec in ["deadbeef", "not-an-id", &"0".repeat(64)] {
        let err = repo.find_snapshot(spec).unwrap_err();
        let msg = one_line(&err);
        assert!(
            msg.starts_with(&format!("no snapshot matches ID {spec:?}"))
                && matches!(err, Error::SnapshotNotFound { .. }),
            "{msg}"
        );
    }
    // The real one is found by a prefix and by "latest".
    assert_eq!(
        repo.find_snapshot(&sum.snapshot_id.short()).unwrap().0,
        sum.snapshot_id
    );
    assert_eq!(repo.find_snapshot("latest").unwrap().0, sum.snapshot_id);

    // Restoring an id that is not there fails before touching the target, and leaves no lock.
    let target = t.scratch("out.img");
    let missing = "ab".repeat(32).parse().unwrap();
    let err = restore_block(
        &repo,
        &missing,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    one_line(&err);
    assert!(!target.exists(), "restore created the target");
    assert_eq!(fingerprint(&t.path), before, "the repository changed");
}

#[test]
fn init_refuses_an_existing_repository_and_changes_nothing() {
    let t = TempRepo::new();
    t.init_ours();
    let before = fingerprint(&t.path);
    let err = Repository::init(t.backend(), PASSWORD, &Default::default()).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(fingerprint(&t.path), before);
}

#[test]
fn a_damaged_pack_is_reported_naming_the_pack() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(7, 4);
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "c.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    // Flip one byte in the middle of every data pack.
    for f in repo
        .backend()
        .list(volbackup_store::backend::FileType::Pack)
        .unwrap()
    {
        let p = t.path.join("data").join(&f.name[..2]).join(&f.name);
        let mut data = std::fs::read(&p).unwrap();
        let mid = data.len() / 3;
        data[mid] ^= 0x40;
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    let target = t.scratch("out.img");
    let err = restore_block(
        &repo,
        &sum.snapshot_id,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    let msg = one_line(&err);
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(msg.contains("in pack data/"), "{msg}");
}

#[test]
fn an_exclusive_lock_blocks_our_backups_and_restics_until_released() {
    use volbackup_store::lock::Lock;
    let t = TempRepo::new();
    let repo = t.init_ours();
    let guard = Lock::exclusive(&repo).unwrap();

    let image = mixed_image(8, 4);
    let err = backup_block(
        &repo,
        &mut &image[..],
        "d.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    let msg = one_line(&err);
    assert!(
        msg.contains("is locked exclusively by")
            && msg.contains(&format!("(pid {})", std::process::id())),
        "{msg}"
    );
    assert!(Lock::shared(&repo).is_err());
    assert!(Lock::exclusive(&repo).is_err());

    // restic reads our lock file and refuses too.
    let out = crate::common::restic_output(
        &t.path,
        PASSWORD,
        &["backup", "--stdin", "--stdin-filename", "x"],
        Some(b"hello"),
    );
    assert!(!out.status.success(), "restic ignored our exclusive lock");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(guard);
    assert!(
        repo.list_ids(volbackup_store::backend::FileType::Lock)
            .unwrap()
            .is_empty(),
        "lock file left behind"
    );
    // Shared locks coexist, with each other and with restic's.
    let a = Lock::shared(&repo).unwrap();
    let b = Lock::shared(&repo).unwrap();
    t.restic(
        &["backup", "-q", "--stdin", "--stdin-filename", "x"],
        Some(b"hello"),
    );
    drop((a, b));
    backup_block(
        &repo,
        &mut &image[..],
        "d.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
}

#[test]
fn a_lock_left_by_a_dead_process_on_this_host_is_ignored() {
    use volbackup_store::backend::FileType;
    use volbackup_store::format::{LockFile, hostname, now};
    let t = TempRepo::new();
    let repo = t.init_ours();
    // A process that has exited: its pid is free (not reused within this test).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let stale = LockFile {
        time: now(),
        exclusive: true,
        hostname: hostname(),
        username: "someone".into(),
        pid: i64::from(pid),
        uid: 0,
        gid: 0,
    };
    repo.save_unpacked(FileType::Lock, &stale).unwrap();
    let image = mixed_image(9, 4);
    backup_block(
        &repo,
        &mut &image[..],
        "e.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    // An exclusive lock from another host, taken just now, is respected.
    let remote = LockFile {
        hostname: "other-host".into(),
        pid: 1,
        ..stale
    };
    repo.save_unpacked(FileType::Lock, &remote).unwrap();
    let err = backup_block(
        &repo,
        &mut &image[..],
        "e.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        one_line(&err).contains("someone@other-host (pid 1)"),
        "{err}"
    );
}

/// Plants three kinds of garbage in `locks/`: random bytes under a random name, random bytes
/// named by their own hash (so only the MAC fails), and a sealed file that is not lock JSON.
fn plant_garbage_locks(t: &TempRepo, repo: &Repository) {
    use volbackup_store::Id;
    use volbackup_store::backend::FileType;
    let before = repo.list_ids(FileType::Lock).unwrap().len();
    let locks = t.path.join("locks");
    let junk = crate::common::random_bytes(11, 300);
    std::fs::write(locks.join(Id::random().to_hex()), &junk).unwrap();
    let junk = crate::common::random_bytes(12, 300);
    std::fs::write(locks.join(Id::hash(&junk).to_hex()), &junk).unwrap();
    repo.save_unpacked_raw(FileType::Lock, b"{\"not\": \"a lock\"")
        .unwrap();
    assert_eq!(repo.list_ids(FileType::Lock).unwrap().len(), before + 3);
}

#[test]
fn garbage_in_locks_does_not_stop_backup_restore_or_prune() {
    use volbackup_store::backend::FileType;
    use volbackup_store::prune::{PruneOptions, execute, plan_prune};
    let t = TempRepo::new();
    let repo = t.init_ours();
    plant_garbage_locks(&t, &repo);

    let first = mixed_image(20, 4);
    let second = mixed_image(21, 4);
    let old = backup_block(
        &repo,
        &mut &first[..],
        "g.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let new = backup_block(
        &repo,
        &mut &second[..],
        "g.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let target = t.scratch("out.img");
    restore_block(
        &repo,
        &new.snapshot_id,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        std::fs::read(&target).unwrap() == second,
        "restored image differs"
    );

    repo.backend()
        .remove(FileType::Snapshot, &old.snapshot_id.to_hex())
        .unwrap();
    let plan = plan_prune(&repo, &PruneOptions::default()).unwrap();
    assert!(
        !plan.is_noop(),
        "the forgotten snapshot left nothing to prune"
    );
    execute(&repo, &plan, &NoProgress).unwrap();

    // The garbage is passed over, not removed: only `repo unlock --remove-all` removes it.
    assert_eq!(repo.list_ids(FileType::Lock).unwrap().len(), 3);
}

#[test]
fn unlock_removes_stale_locks_and_keeps_fresh_ones_and_remove_all_removes_everything() {
    use volbackup_store::backend::FileType;
    use volbackup_store::format::{LockFile, now};
    use volbackup_store::lock::{Unlocked, remove_all_locks, remove_stale_locks};
    let t = TempRepo::new();
    let repo = t.init_ours();
    let fresh = LockFile {
        time: now(),
        exclusive: true,
        hostname: "other-host".into(),
        username: "someone".into(),
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let old = LockFile {
        time: now() - chrono::Duration::minutes(31),
        ..fresh.clone()
    };
    let fresh_id = repo.save_unpacked(FileType::Lock, &fresh).unwrap();
    repo.save_unpacked(FileType::Lock, &old).unwrap();
    plant_garbage_locks(&t, &repo);

    assert_eq!(
        remove_stale_locks(&repo).unwrap(),
        Unlocked {
            removed: 1,
            kept: 1
        }
    );
    let left = repo.list_ids(FileType::Lock).unwrap();
    assert!(left.contains(&fresh_id), "the fresh lock was removed");
    assert_eq!(left.len(), 4, "the stale lock is still there: {left:?}");

    assert_eq!(remove_all_locks(&repo).unwrap(), 4);
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

/// The repository's one key file, as JSON, and its path.
fn only_key_file(t: &TempRepo) -> (std::path::PathBuf, serde_json::Value) {
    let keys: Vec<_> = std::fs::read_dir(t.path.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    let json = serde_json::from_slice(&std::fs::read(&keys[0]).unwrap()).unwrap();
    (keys[0].clone(), json)
}

#[test]
fn a_planted_key_with_an_absurd_scrypt_cost_is_skipped_and_alone_is_a_clear_error() {
    let t = TempRepo::new();
    t.init_ours();
    let (real, mut planted) = only_key_file(&t);
    planted["N"] = serde_json::json!(1_099_511_627_776u64);
    // Sorts before the real key, so it is tried first.
    let bomb = t.path.join("keys").join("0".repeat(64));
    std::fs::write(&bomb, serde_json::to_vec(&planted).unwrap()).unwrap();

    let repo = Repository::open(t.backend(), PASSWORD).unwrap();
    assert_eq!(
        repo.key_id().to_hex(),
        real.file_name().unwrap().to_str().unwrap()
    );

    std::fs::remove_file(&real).unwrap();
    let err = Repository::open(t.backend(), PASSWORD).unwrap_err();
    let msg = one_line(&err);
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(
        msg.contains("no key file can be used")
            && msg.contains("N=1099511627776 is above the limit 2^20")
            && msg.contains(&format!("keys/{}", "0".repeat(64))),
        "{msg}"
    );
}

#[test]
fn an_oversized_key_file_is_not_read() {
    let t = TempRepo::new();
    t.init_ours();
    let (real, _) = only_key_file(&t);
    // A working key padded with JSON whitespace past the size limit.
    let mut padded = std::fs::read(&real).unwrap();
    padded.extend(std::iter::repeat_n(b' ', 100 * 1024));
    std::fs::write(t.path.join("keys").join("1".repeat(64)), padded).unwrap();
    std::fs::remove_file(&real).unwrap();
    let err = Repository::open(t.backend(), PASSWORD).unwrap_err();
    let msg = one_line(&err);
    assert!(msg.contains("above the limit 64.0 KiB"), "{msg}");
}

#[test]
fn a_blob_claiming_more_than_any_blob_may_hold_is_refused_naming_blob_and_pack() {
    use volbackup_store::BlobType;
    use volbackup_store::format::{IndexBlob, IndexFile, IndexPack};
    let t = TempRepo::new();
    let repo = t.init_ours();
    let id = volbackup_store::Id::hash(b"claims four gibibytes");
    let pack = volbackup_store::Id::hash(b"some pack");
    repo.add_to_index(&IndexFile {
        packs: vec![IndexPack {
            id: pack,
            blobs: vec![IndexBlob {
                id,
                blob_type: BlobType::Tree,
                offset: 0,
                length: 200,
                uncompressed_length: Some(u32::MAX),
            }],
        }],
        ..Default::default()
    });
    let err = repo.read_blob(BlobType::Tree, &id).unwrap_err();
    let msg = one_line(&err);
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!("tree blob {} in pack data/{pack}: ", id.short()))
            && msg.contains("more than a tree blob may be (2.0 GiB)"),
        "{msg}"
    );
}

#[test]
fn a_pack_header_length_above_the_limit_is_refused_unread() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let pack = volbackup_store::Id::hash(b"a sparse pack");
    let hex = pack.to_hex();
    let dir = t.path.join("data").join(&hex[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    // 40 MiB, sparse, whose trailer claims a 20 MiB header.
    let f = std::fs::File::create(dir.join(&hex)).unwrap();
    f.set_len(40 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&(20u32 << 20).to_le_bytes(), (40 << 20) - 4)
        .unwrap();
    let err = repo.read_pack_header(&pack).unwrap_err();
    let msg = one_line(&err);
    assert_eq!(
        msg,
        format!("data/{hex}: header length 20971520 is above the limit 16.0 MiB")
    );
}

#[test]
fn an_ambiguous_snapshot_prefix_lists_the_candidates_and_is_not_retryable() {
    use volbackup_store::backend::FileType;
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(30, 4);
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "h.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let (_, snap) = repo.find_snapshot(&sum.snapshot_id.to_hex()).unwrap();
    for i in 0..16 {
        let mut copy = snap.clone();
        copy.tags = vec![format!("copy-{i}")];
        repo.save_snapshot(&copy).unwrap();
    }
    // Seventeen ids, sixteen first digits: two share one.
    let ids = repo.list_ids(FileType::Snapshot).unwrap();
    let pair = ids
        .windows(2)
        .find(|w| w[0].to_hex()[..1] == w[1].to_hex()[..1])
        .unwrap();
    let prefix = &pair[0].to_hex()[..1];
    let err = repo.find_snapshot(prefix).unwrap_err();
    assert!(!err.is_retryable());
    let Error::AmbiguousSnapshot { candidates, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        candidates.contains(&pair[0].to_hex()[..8].to_string()),
        "{candidates:?}"
    );
    assert!(
        candidates.contains(&pair[1].to_hex()[..8].to_string()),
        "{candidates:?}"
    );
    let msg = one_line(&err);
    assert!(
        msg.starts_with(&format!(
            "snapshot ID prefix {prefix:?} is ambiguous, it matches "
        )) && msg.contains(&pair[1].to_hex()[..8]),
        "{msg}"
    );
}

/// Many threads of one process take exclusive locks at once on one repository: each looks
/// for others, writes its lock file and looks again, so two takers can see each other and
/// both back off, but two never hold it together; waiting takers all get it in the end, and
/// withdrawn attempts leave no lock file behind.
#[test]
fn exclusive_locks_taken_at_once_are_never_held_by_two_and_all_waiters_get_one() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use volbackup_store::backend::FileType;
    use volbackup_store::lock::Lock;
    use volbackup_store::repo::LockWait;

    let t = TempRepo::new();
    let repo = t.init_ours();
    let holders = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let held = |guard: volbackup_store::lock::LockGuard| {
        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        holders.fetch_sub(1, Ordering::SeqCst);
        drop(guard);
    };

    // No waiting: each try either gets the lock or is refused at once.
    let taken = AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..15 {
                    match Lock::exclusive(&repo) {
                        Ok(g) => {
                            taken.fetch_add(1, Ordering::SeqCst);
                            held(g);
                        }
                        Err(Error::Locked { .. }) => {}
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            });
        }
    });
    assert!(taken.load(Ordering::SeqCst) > 0, "nobody got the lock");
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two held the exclusive lock at once"
    );
    assert!(
        repo.list_ids(FileType::Lock).unwrap().is_empty(),
        "withdrawn or released locks left files behind"
    );

    // Waiting: every taker gets the lock, one at a time.
    repo.set_lock_wait(LockWait {
        max: Duration::from_secs(60),
        on_wait: None,
        report_every: Duration::ZERO,
    });
    let taken = AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                barrier.wait();
                let g = Lock::exclusive(&repo).expect("a waiting taker gets the lock");
                taken.fetch_add(1, Ordering::SeqCst);
                held(g);
            });
        }
    });
    assert_eq!(taken.load(Ordering::SeqCst), 4);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two held the exclusive lock at once"
    );
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}
