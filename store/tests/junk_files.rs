//! Junk in a repository: files of any size, or no files at all (FIFOs, folders), where lock,
//! index, snapshot and key files belong, and planted key files that ask for huge scrypt
//! costs. Anyone who can write to the repository can plant them (in `locks/` without a key):
//! each is refused from its size or type before it is read, backups and restores pass over
//! what they cannot use, and opening the repository costs a bounded time.

mod common;

use common::{PASSWORD, TempRepo, mixed_image};
use volbackup_store::backend::FileType;
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_block};
use volbackup_store::check::{CheckOptions, check};
use volbackup_store::progress::NoProgress;
use volbackup_store::prune::{PruneOptions, plan_prune};
use volbackup_store::{Id, Repository};

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

// Item 13: one undecodable snapshot or index file stops no backup or restore.

/// Random bytes under a random name: the name is not their hash.
fn plant_junk(t: &TempRepo, kind: FileType, seed: u64) -> Id {
    let id = Id::random();
    std::fs::write(
        t.path.join(kind.dir()).join(id.to_hex()),
        common::random_bytes(seed, 500),
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
    let repo = Repository::open_warm(
        t.backend(),
        PASSWORD,
        &[FileType::Index, FileType::Snapshot],
    )
    .unwrap();
    let listed = repo.list_snapshots_early().unwrap();
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![first]
    );
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
    let repo = Repository::open_warm(
        t.backend(),
        PASSWORD,
        &[FileType::Index, FileType::Snapshot],
    )
    .unwrap();
    let (latest, _) = repo.find_snapshot_early("latest").unwrap();
    assert_eq!(latest, s.snapshot_id);
    for (id, expected) in [(first, &image), (s.snapshot_id, &second)] {
        let target = t.scratch(&format!("{}.img", id.short()));
        restore_block(
            &repo,
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
    let before = common::fingerprint(&t.path);
    let err = plan_prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("snapshots/{}", bad_snapshot.to_hex())),
        "prune does not name the damaged snapshot file: {err}"
    );
    assert_eq!(
        common::fingerprint(&t.path),
        before,
        "a refused prune changed the repository"
    );
    std::fs::remove_file(t.path.join("snapshots").join(bad_snapshot.to_hex())).unwrap();
    let before = common::fingerprint(&t.path);
    let err = plan_prune(&repo, &PruneOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("index/{}", bad_index.to_hex())),
        "prune does not name the damaged index file: {err}"
    );
    assert_eq!(
        common::fingerprint(&t.path),
        before,
        "a refused prune changed the repository"
    );
}
