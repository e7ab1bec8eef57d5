//! Trees larger than the 64 MiB an earlier version accepted (issue 22): a directory of 300,000
//! entries and a block image node of 1,100,000 chunks back up, restore, check and prune with
//! us and with restic 0.14. Whatever the writer produces the reader accepts: these backups
//! used to complete and then fail every restore, incremental, check and prune.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::{TempRepo, restic_output};
use volbackup_store::backup_tree::backup_tree;
use volbackup_store::block::{BackupOptions, RestoreOptions, restore_block};
use volbackup_store::check::{CheckOptions, check};
use volbackup_store::packer::{BlobWriter, WriterOptions};
use volbackup_store::progress::NoProgress;
use volbackup_store::prune::{PruneOptions, execute, plan_prune};
use volbackup_store::restore_tree::{self, restore_tree};
use volbackup_store::tree::{Node, NodeType, Tree};
use volbackup_store::{BlobType, Id, Repository, Snapshot};

/// The tree limit before issue 22.
const OLD_LIMIT: u64 = 64 << 20;

/// The plaintext size of a tree blob, as the index records it.
fn tree_size(repo: &Repository, id: &Id) -> u64 {
    u64::from(
        repo.blob_entry(BlobType::Tree, id)
            .expect("tree indexed")
            .plaintext_len(),
    )
}

/// Entry names of a directory, sorted.
fn names(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

/// Our check (structure) finds nothing wrong, and restic's agrees.
fn both_check(t: &TempRepo) {
    let report = check(&t.open(), &CheckOptions::default(), &NoProgress).expect("check runs");
    assert!(report.is_ok(), "our check: {report}");
    let out = restic_output(&t.path, crate::common::PASSWORD, &["check"], None);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no errors"),
        "restic check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A prune of the whole repository plans and runs (it reads every tree).
fn prune_runs(t: &TempRepo) {
    let repo = t.open();
    let plan = plan_prune(&repo, &PruneOptions::default()).expect("plan prune");
    execute(&repo, &plan, &NoProgress).expect("prune");
}

#[test]
fn a_directory_of_300000_entries_backs_up_restores_checks_and_prunes() {
    const ENTRIES: usize = 300_000;
    let t = TempRepo::new();
    let repo = t.init_ours();
    let src = t.scratch("src");
    let big = src.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..ENTRIES {
        std::fs::File::create(big.join(format!("entry-{i:07}"))).unwrap();
    }
    std::fs::write(src.join("small.txt"), b"beside the big directory\n").unwrap();

    let first = backup_tree(&repo, &src, &BackupOptions::default(), &NoProgress).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    assert_eq!(first.files_new, ENTRIES as u64 + 1);
    let root = Tree::from_blob(
        &repo.read_blob(BlobType::Tree, &first.tree).unwrap(),
        "root",
    )
    .unwrap();
    let sub = root.find("big".as_ref()).unwrap().subtree.unwrap();
    assert!(
        tree_size(&repo, &sub) > OLD_LIMIT,
        "the directory's tree is {} bytes: not above the old limit",
        tree_size(&repo, &sub)
    );

    // An incremental backup reads the big tree of its parent and reuses every node.
    std::fs::write(big.join("entry-new"), b"one more").unwrap();
    let opts = BackupOptions {
        parent: Some(first.snapshot_id),
        ..Default::default()
    };
    let second = backup_tree(&t.open(), &src, &opts, &NoProgress).unwrap();
    assert_eq!(second.files_unmodified, ENTRIES as u64 + 1, "{second:?}");
    assert_eq!(second.files_new, 1, "{second:?}");

    let ours = t.scratch("ours");
    let sum = restore_tree(
        &t.open(),
        &second.snapshot_id,
        &ours,
        &restore_tree::RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(sum.files, ENTRIES as u64 + 2);
    let want = names(&big);
    assert_eq!(want.len(), ENTRIES + 1);
    assert!(
        names(&ours.join("big")) == want,
        "our restore lists other entries"
    );
    assert_eq!(
        std::fs::read(ours.join("big/entry-new")).unwrap(),
        b"one more"
    );

    both_check(&t);
    let theirs = t.scratch("theirs");
    t.restic(
        &[
            "restore",
            &second.snapshot_id.to_hex(),
            "--target",
            theirs.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        names(&theirs.join("big")) == want,
        "restic's restore lists other entries"
    );
    assert_eq!(
        std::fs::read(theirs.join("big/entry-new")).unwrap(),
        b"one more"
    );

    prune_runs(&t);
    both_check(&t);
}

#[test]
fn an_image_node_of_1100000_chunks_restores_checks_and_prunes() {
    const CHUNKS: usize = 1_100_000;
    let t = TempRepo::new();
    let repo = t.init_ours();
    repo.load_index().unwrap();

    // A few real data blobs, listed over and over in a pseudo-random order.
    let blobs: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            (0..24 + i as usize)
                .map(|j| i.wrapping_mul(31) ^ j as u8)
                .collect()
        })
        .collect();
    let lock = volbackup_store::lock::Lock::shared(&repo).unwrap();
    let writer = BlobWriter::new(&repo, WriterOptions::default()).unwrap();
    let ids: Vec<Id> = blobs
        .iter()
        .map(|b| writer.add(BlobType::Data, b.clone()).unwrap().id)
        .collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut content = Vec::with_capacity(CHUNKS);
    let mut image = Vec::new();
    for _ in 0..CHUNKS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = (x % blobs.len() as u64) as usize;
        content.push(ids[k]);
        image.extend_from_slice(&blobs[k]);
    }
    let mut node = Node::new("big.img", NodeType::File);
    node.mode = 0o644;
    node.size = image.len() as u64;
    node.content = content;
    let tree = Tree::from_nodes(vec![node]).unwrap().to_blob();
    assert!(tree.len() as u64 > OLD_LIMIT, "{} bytes", tree.len());
    let tree_id = writer.add(BlobType::Tree, tree).unwrap().id;
    writer.finish(&lock).unwrap();
    let snap = repo
        .save_snapshot(&Snapshot::new(tree_id, vec!["/big.img".into()]))
        .unwrap();
    // Written: the lock goes, so that restic's exclusive lock (check, prune) can be taken.
    drop(lock);

    let ours = t.scratch("ours.img");
    let sum = restore_block(
        &t.open(),
        &snap,
        None,
        &ours,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert!(
        std::fs::read(&ours).unwrap() == image,
        "our restore differs"
    );

    both_check(&t);
    let theirs = t.scratch("theirs");
    t.restic(
        &[
            "restore",
            &snap.to_hex(),
            "--target",
            theirs.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        std::fs::read(theirs.join("big.img")).unwrap() == image,
        "restic's restore differs"
    );

    prune_runs(&t);
    both_check(&t);
}
