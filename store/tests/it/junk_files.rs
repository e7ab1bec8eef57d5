//! Junk in a repository: files of any size, or no files at all (FIFOs, folders), where lock,
//! index, snapshot and key files belong, and planted key files that ask for huge scrypt
//! costs. Anyone who can write to the repository can plant them (in `locks/` without a key):
//! each is refused from its size or type before it is read, backups and restores pass over
//! what they cannot use, and opening the repository costs a bounded time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{PASSWORD, TempRepo, mixed_image};
use volbackup_store::backend::{Backend, FileType};
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_block};
use volbackup_store::check::{CheckOptions, check};
use volbackup_store::crypto::KdfParams;
use volbackup_store::parent::backup_parent;
use volbackup_store::progress::NoProgress;
use volbackup_store::prune::{PruneOptions, plan_prune};
use volbackup_store::repo::{InitOptions, KeyHint, max_file_len};
use volbackup_store::{Error, Id, Repository};
use volbackup_store::{OpenOptions, ReadAhead};

/// A sparse file of `size` bytes at `path`: it takes no disk space, and reading it whole
/// would need that much memory (a TiB cannot even be allocated).
fn sparse(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

fn mkfifo(path: &Path) {
    let out = std::process::Command::new("mkfifo")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfifo {}: {out:?}", path.display());
}

/// Runs `f` on a thread of its own and returns what it returns; fails the test if it has not
/// returned after a minute (what it does takes milliseconds: it has hung, reading a FIFO).
fn without_hanging<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} hung (a FIFO opened for reading waits for a writer)"))
}

fn corrupt_message(e: &Error) -> String {
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    let s = e.to_string();
    assert!(!s.contains('\n'), "error spans lines: {s:?}");
    s
}

/// Restores each snapshot into a scratch file and compares it with the image it was made from.
fn restore_each(t: &TempRepo, repo: &Repository, cases: [(Id, &Vec<u8>); 2]) {
    for (id, expected) in cases {
        let target = t.scratch(&format!("{}.img", id.short()));
        restore_block(
            repo,
            &id,
            None,
            &target,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert!(
            std::fs::read(&target).unwrap() == *expected,
            "restored image differs"
        );
    }
}

/// A repository with one block backup; returns it, the image and the snapshot id.
fn with_one_backup(t: &TempRepo) -> (Repository, Vec<u8>, Id) {
    let repo = t.init_ours();
    let image = mixed_image(30, 4);
    let s = backup_block(
        &repo,
        &mut &image[..],
        "junk.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    (repo, image, s.snapshot_id)
}

// Item 12: reads bounded by what a file of its kind can be.

#[test]
fn a_tebibyte_file_in_locks_index_or_snapshots_is_refused_from_its_size_and_never_read() {
    let t = TempRepo::new();
    let (repo, image, snapshot) = with_one_backup(&t);
    let huge = 1u64 << 40;
    let lock = Id::random();
    let index = Id::random();
    let snap = Id::random();
    sparse(&t.path.join("locks").join(lock.to_hex()), huge);
    sparse(&t.path.join("index").join(index.to_hex()), huge);
    sparse(&t.path.join("snapshots").join(snap.to_hex()), huge);

    for (kind, id, noun) in [
        (FileType::Lock, lock, "a lock file"),
        (FileType::Index, index, "an index file"),
        (FileType::Snapshot, snap, "a snapshot file"),
    ] {
        let err = repo.load_unpacked_raw(kind, &id).unwrap_err();
        let msg = corrupt_message(&err);
        let path = format!("{}/{}", kind.dir(), id.to_hex());
        assert!(
            msg.starts_with(&format!(
                "{path}: {huge} bytes long, more than {noun} may be"
            )),
            "{msg}"
        );
    }

    // A backup and a restore pass over all three; check reports the index and snapshot
    // files (the lock file is no finding: restic's check passes over locks too).
    let repo = Repository::open_with(
        t.backend(),
        PASSWORD,
        &OpenOptions {
            read_ahead: ReadAhead::SnapshotsAndIndex,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let second = mixed_image(31, 4);
    let s = backup_block(
        &repo,
        &mut &second[..],
        "junk.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    restore_each(&t, &repo, [(snapshot, &image), (s.snapshot_id, &second)]);
    let report = check(&repo, &CheckOptions::default(), &NoProgress).unwrap();
    for subject in [
        format!("index/{}", index.to_hex()),
        format!("snapshots/{}", snap.to_hex()),
    ] {
        assert!(
            report
                .errors()
                .any(|p| p.subject == subject && p.message.contains("bytes long, more than")),
            "check does not report {subject}: {report}"
        );
    }
}

#[test]
fn a_fifo_named_as_a_snapshot_is_refused_without_blocking() {
    let t = TempRepo::new();
    let (repo, _, _) = with_one_backup(&t);
    let id = Id::random();
    mkfifo(&t.path.join("snapshots").join(id.to_hex()));
    let err = without_hanging("reading a snapshot by its id", move || {
        repo.find_snapshot(&id.to_hex()).unwrap_err()
    });
    let msg = corrupt_message(&err);
    assert!(
        msg.starts_with(&format!(
            "snapshots/{}: is a FIFO, where a plain file belongs",
            id.to_hex()
        )),
        "{msg}"
    );
}

#[test]
fn files_just_over_their_kinds_limit_are_refused_and_files_at_it_are_read() {
    let t = TempRepo::new();
    t.init_ours();
    let backend = t.backend();
    for kind in [
        FileType::Lock,
        FileType::Snapshot,
        FileType::Key,
        FileType::Index,
    ] {
        let max = max_file_len(kind);
        let at = Id::random().to_hex();
        let over = Id::random().to_hex();
        sparse(&backend.path_of(kind, &at), max);
        sparse(&backend.path_of(kind, &over), max + 1);
        assert_eq!(
            backend.read_at_most(kind, &at, max).unwrap().len() as u64,
            max
        );
        let err = backend.read_at_most(kind, &over, max).unwrap_err();
        assert!(
            corrupt_message(&err).contains(&format!("{} bytes long", max + 1)),
            "{err}"
        );
    }
}

#[test]
fn oversized_lock_and_index_files_on_s3_are_refused_from_the_announced_length() {
    use crate::support_s3::Garage;
    use volbackup_store::backend::s3::S3Backend;
    let g = Garage::shared();
    let bucket = g.new_bucket("junk-sizes");
    let backend: Arc<dyn Backend> =
        Arc::new(S3Backend::open(g.repo_config(&g.endpoint(), &bucket, "repo")).unwrap());
    let opts = InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    };
    let repo = Repository::init(backend.clone(), PASSWORD, &opts).unwrap();
    let lock = Id::random();
    let index = Id::random();
    let lock_len = max_file_len(FileType::Lock) + 1;
    let index_len = max_file_len(FileType::Index) + 1;
    backend
        .write(
            FileType::Lock,
            &lock.to_hex(),
            &vec![b'{'; lock_len as usize],
        )
        .unwrap();
    backend
        .write(
            FileType::Index,
            &index.to_hex(),
            &vec![b'['; index_len as usize],
        )
        .unwrap();
    for (kind, id, len) in [
        (FileType::Lock, lock, lock_len),
        (FileType::Index, index, index_len),
    ] {
        let err = repo.load_unpacked_raw(kind, &id).unwrap_err();
        let msg = corrupt_message(&err);
        assert!(
            msg.starts_with(&format!(
                "{}/{}: {len} bytes long, more than",
                kind.dir(),
                id.to_hex()
            )),
            "{msg}"
        );
    }
    // A backup passes over both.
    let repo = Repository::open_with(
        backend,
        PASSWORD,
        &OpenOptions {
            read_ahead: ReadAhead::SnapshotsAndIndex,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let image = mixed_image(32, 4);
    backup_block(
        &repo,
        &mut &image[..],
        "s3.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
}

// Item 13: one undecodable snapshot or index file stops no backup or restore.

/// Random bytes under a random name: the name is not their hash.
fn plant_junk(t: &TempRepo, kind: FileType, seed: u64) -> Id {
    let id = Id::random();
    std::fs::write(
        t.path.join(kind.dir()).join(id.to_hex()),
        crate::common::random_bytes(seed, 500),
    )
    .unwrap();
    id
}

#[test]
fn backups_and_restores_pass_over_a_damaged_index_or_snapshot_file_check_reports_it_and_prune_refuses()
 {
    let t = TempRepo::new();
    let (_, image, first) = with_one_backup(&t);
    let bad_index = plant_junk(&t, FileType::Index, 40);
    let bad_snapshot = plant_junk(&t, FileType::Snapshot, 41);

    // A backup (whose parent lookup lists the snapshots) and restores of `latest` and by id.
    let repo = Repository::open_with(
        t.backend(),
        PASSWORD,
        &OpenOptions {
            read_ahead: ReadAhead::SnapshotsAndIndex,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let host = volbackup_store::format::hostname();
    let parent = backup_parent(&repo, None, &host, &["/junk.img".to_string()]).unwrap();
    assert_eq!(parent, Some(first));
    let second = mixed_image(33, 4);
    let s = backup_block(
        &repo,
        &mut &second[..],
        "junk.img",
        &BackupOptions {
            parent: Some(first),
            ..BackupOptions::default()
        },
        &NoProgress,
    )
    .unwrap();
    let repo = Repository::open_with(
        t.backend(),
        PASSWORD,
        &OpenOptions {
            read_ahead: ReadAhead::SnapshotsAndIndex,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let latest = backup_parent(&repo, Some("latest"), "", &[]).unwrap();
    assert_eq!(latest, Some(s.snapshot_id));
    restore_each(&t, &repo, [(first, &image), (s.snapshot_id, &second)]);

    let report = check(&repo, &CheckOptions::default(), &NoProgress).unwrap();
    for subject in [
        format!("index/{}", bad_index.to_hex()),
        format!("snapshots/{}", bad_snapshot.to_hex()),
    ] {
        assert!(
            report.errors().any(|p| p.subject == subject),
            "check does not report {subject}: {report}"
        );
    }

    // Prune cannot know what the damaged files hold: it refuses, changing nothing.
    let before = crate::common::fingerprint(&t.path);
    let err = plan_prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("snapshots/{}", bad_snapshot.to_hex())),
        "prune does not name the damaged snapshot file: {err}"
    );
    assert_eq!(
        crate::common::fingerprint(&t.path),
        before,
        "a refused prune changed the repository"
    );
    std::fs::remove_file(t.path.join("snapshots").join(bad_snapshot.to_hex())).unwrap();
    let before = crate::common::fingerprint(&t.path);
    let err = plan_prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("index/{}", bad_index.to_hex())),
        "prune does not name the damaged index file: {err}"
    );
    assert_eq!(
        crate::common::fingerprint(&t.path),
        before,
        "a refused prune changed the repository"
    );
}

// Item 14: key files that cannot be read, and planted scrypt costs.

/// The repository's one key file and its id.
fn only_key(t: &TempRepo) -> (String, Vec<u8>) {
    let keys: Vec<_> = std::fs::read_dir(t.path.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1);
    (
        keys[0].file_name().unwrap().to_str().unwrap().to_string(),
        std::fs::read(&keys[0]).unwrap(),
    )
}

#[test]
fn a_hinted_key_file_that_cannot_be_read_falls_back_to_the_listed_keys() {
    let t = TempRepo::new();
    t.init_ours();
    let (real, _) = only_key(&t);
    let keys = t.path.join("keys");
    let folder = Id::random().to_hex();
    std::fs::create_dir(keys.join(&folder)).unwrap();
    let fifo = Id::random().to_hex();
    mkfifo(&keys.join(&fifo));
    let huge = Id::random().to_hex();
    sparse(&keys.join(&huge), 1 << 40);
    for (what, hinted) in [("a folder", folder), ("a FIFO", fifo), ("a TiB file", huge)] {
        let backend = t.backend();
        let repo = without_hanging(&format!("opening with a hint naming {what}"), move || {
            Repository::open_with(
                backend,
                PASSWORD,
                &OpenOptions {
                    key_hint: Some(&KeyHint::named(hinted)),
                    ..OpenOptions::default()
                },
            )
        })
        .unwrap_or_else(|e| panic!("a hint naming {what}: {e}"));
        assert_eq!(repo.key_id().to_hex(), real, "a hint naming {what}");
    }
}

/// A key file like `real` with these scrypt parameters, which no password opens (its data is
/// random).
fn planted_key(t: &TempRepo, real: &[u8], name: &str, n: u64, r: u32, p: u32) {
    let mut json: serde_json::Value = serde_json::from_slice(real).unwrap();
    json["N"] = n.into();
    json["r"] = r.into();
    json["p"] = p.into();
    json["data"] = base64_of(&crate::common::random_bytes(u64::from(p), 160)).into();
    std::fs::write(
        t.path.join("keys").join(name),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn a_planted_key_costing_more_than_a_key_may_is_skipped_underived() {
    let t = TempRepo::new();
    t.init_ours();
    let (real, file) = only_key(&t);
    // 128 times restic's default (N=2^15, r=8, p=1), 256 MiB: allowed until now, and about a
    // minute of scrypt on a loaded core. It sorts first, so it is tried first.
    let bomb = "0".repeat(64);
    planted_key(&t, &file, &bomb, 1 << 18, 8, 16);
    let repo = Repository::open(t.backend(), PASSWORD).unwrap();
    assert_eq!(repo.key_id().to_hex(), real);

    std::fs::remove_file(t.path.join("keys").join(&real)).unwrap();
    let err = Repository::open(t.backend(), PASSWORD).unwrap_err();
    let msg = corrupt_message(&err);
    assert!(
        msg.contains("no key file can be used")
            && msg.contains(&format!("keys/{bomb}"))
            && msg.contains("costs 128 times restic's default key, above the limit of 64 times"),
        "{msg}"
    );
}

#[test]
fn planted_keys_cost_an_open_no_more_scrypt_than_its_budget() {
    let t = TempRepo::new();
    t.init_ours();
    // Each at the limit for one key (64 times restic's default); an open may spend twice
    // that, and the real key (tried too: the password is wrong) has spent a little of it.
    // The hint has the real key tried first, wherever its name sorts.
    let (real, file) = only_key(&t);
    let (first, second) = ("1".repeat(64), "2".repeat(64));
    planted_key(&t, &file, &first, 1 << 17, 8, 16);
    planted_key(&t, &file, &second, 1 << 17, 8, 16);
    let hint = KeyHint::named(real);
    let err = Repository::open_with(
        t.backend(),
        "not the password",
        &OpenOptions {
            key_hint: Some(&hint),
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    let msg = corrupt_message(&err);
    assert!(
        msg.contains("the password opens none of the 2 key files tried, and 1 more were not tried")
            && msg.contains(&format!("keys/{second}"))
            && msg.contains("VOLBACKUP_KEY_HINT"),
        "{msg}"
    );
    assert!(!msg.contains(&format!("keys/{first}")), "{msg}");
}
