//! Block images against the real restic: what we write restic checks and dumps, what restic
//! writes we restore, and both open each other's repositories.

use std::process::Command;

use crate::common::{PASSWORD, TempRepo, allocated_bytes, mixed_image, random_bytes};
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_block};
use volbackup_store::packer::WriterOptions;
use volbackup_store::progress::{CountingProgress, NoProgress};
use volbackup_store::{BlobType, Repository};

fn small_packs() -> WriterOptions {
    // Small packs so that a few MiB still make several packs and exercise the upload pool.
    WriterOptions {
        pack_size: 1 << 20,
        ..WriterOptions::default()
    }
}

fn data_blob_count(repo: &Repository) -> usize {
    repo.load_index().unwrap();
    repo.index()
        .iter()
        .filter(|(t, _, _)| *t == BlobType::Data)
        .count()
}

#[test]
fn our_block_backup_passes_restic_check_and_dumps_identically() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(1, 6);
    let opts = BackupOptions {
        tags: vec!["pvc=data".into(), "ns=default".into()],
        hostname: "test-host".into(),
        description: Some(serde_json::json!({"pvc": "data", "namespace": "default"})),
        writer: small_packs(),
        total_size: Some(image.len() as u64),
        ..Default::default()
    };
    let progress = CountingProgress::default();
    let sum = backup_block(&repo, &mut &image[..], "data.img", &opts, &progress).unwrap();
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert_eq!(
        progress.done.load(std::sync::atomic::Ordering::Relaxed),
        image.len() as u64
    );
    assert!(
        sum.bytes_stored < sum.bytes_new,
        "zeros and text compress: {sum:?}"
    );
    // The zero region is one entry of the file node (runs of zero chunks are listed as one
    // blob), and restic reads it like any other chunk.
    assert!(sum.chunks_new <= sum.chunks, "{sum:?}");

    let check = t.restic(&["check", "--read-data"], None);
    assert!(String::from_utf8_lossy(&check).contains("no errors were found"));
    let id = sum.snapshot_id.to_string();
    let dumped = t.restic(&["dump", &id, "/data.img"], None);
    assert!(dumped == image, "restic dump differs from the input");

    let snaps: serde_json::Value =
        serde_json::from_slice(&t.restic(&["snapshots", "--json"], None)).unwrap();
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/data.img"]));
    assert_eq!(snaps[0]["hostname"], "test-host");
    assert_eq!(
        snaps[0]["tags"],
        serde_json::json!(["pvc=data", "ns=default"])
    );

    // The same data again: no new data blobs, a second snapshot, still a valid repository.
    let before = data_blob_count(&repo);
    let again = backup_block(&repo, &mut &image[..], "data.img", &opts, &NoProgress).unwrap();
    assert_eq!(again.chunks_new, 0, "{again:?}");
    assert_eq!(again.bytes_new, 0, "{again:?}");
    assert_eq!(data_blob_count(&repo), before);
    assert_ne!(again.snapshot_id, sum.snapshot_id);
    t.restic(&["check"], None);
}

#[test]
fn restic_stdin_backup_of_our_data_adds_no_data_blobs_but_its_zero_chunk() {
    // Same chunker, same polynomial: restic cuts where we cut and finds every chunk, except
    // that we list a run of zero chunks as one blob where restic lists each 512 KiB of it.
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(2, 5);
    let ours: std::collections::HashSet<_> = {
        backup_block(
            &repo,
            &mut &image[..],
            "disk.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
        repo.index().iter().map(|(_, id, _)| id).collect()
    };
    let out = t.restic(
        &[
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            "disk.img",
        ],
        Some(&image),
    );
    let summary = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("restic printed a summary");
    let theirs = t.open();
    theirs.load_index().unwrap();
    let added: Vec<_> = theirs
        .index()
        .iter()
        .filter(|(t, id, _)| *t == BlobType::Data && !ours.contains(id))
        .map(|(_, id, _)| id)
        .collect();
    let zeros = volbackup_store::Id::hash(&[0u8; 512 << 10]);
    assert_eq!(added, vec![zeros], "restic stored new data: {summary}");
}

#[test]
fn restic_stdin_backup_of_our_data_without_zero_runs_adds_no_data_blobs() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let mut image = random_bytes(21, 3 << 20);
    image.extend(crate::common::text_bytes(22, 3 << 20));
    backup_block(
        &repo,
        &mut &image[..],
        "disk.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let out = t.restic(
        &[
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            "disk.img",
        ],
        Some(&image),
    );
    let summary = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("restic printed a summary");
    assert_eq!(
        summary["data_blobs"], 0,
        "restic stored new data: {summary}"
    );
}

#[test]
fn restic_stdin_backup_restores_identically_into_a_sparse_file() {
    let t = TempRepo::new();
    t.init_restic();
    let image = mixed_image(3, 8);
    t.restic(
        &["backup", "-q", "--stdin", "--stdin-filename", "vol.img"],
        Some(&image),
    );

    let repo = t.open();
    let (id, snap) = repo.find_snapshot("latest").unwrap();
    assert_eq!(snap.paths, vec!["/vol.img"]);
    let target = t.scratch("restored.img");
    let progress = CountingProgress::default();
    let sum = restore_block(
        &repo,
        &id,
        None,
        &target,
        &RestoreOptions::default(),
        &progress,
    )
    .unwrap();
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    assert_eq!(
        progress.done.load(std::sync::atomic::Ordering::Relaxed),
        image.len() as u64
    );
    // The 2 MiB zero region is mostly whole 512 KiB zero chunks: those stay holes.
    let allocated = allocated_bytes(&target);
    assert!(
        allocated <= image.len() as u64 - (1 << 20),
        "restored file is not sparse: {allocated} of {} bytes allocated",
        image.len()
    );
    assert!(sum.bytes_written < sum.bytes_total);

    // Restoring over an existing, larger file truncates it to the image.
    std::fs::write(&target, vec![0xffu8; 10 << 20]).unwrap();
    restore_block(
        &repo,
        &id,
        Some("/vol.img"),
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restore over an old file differs"
    );
    // A path that is not in the snapshot.
    let err = restore_block(
        &repo,
        &id,
        Some("/nope.img"),
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nope.img is not in the snapshot"),
        "{err}"
    );
}

#[test]
fn restic_initialized_repository_opens_with_our_code_and_ours_with_restic() {
    let theirs = TempRepo::new();
    theirs.init_restic();
    let repo = theirs.open();
    let config: serde_json::Value =
        serde_json::from_slice(&theirs.restic(&["cat", "config"], None)).unwrap();
    assert_eq!(repo.config().version, 2);
    assert_eq!(config["id"], repo.config().id.to_string());
    assert_eq!(
        config["chunker_polynomial"],
        format!("{:x}", repo.config().chunker_polynomial)
    );

    let ours = TempRepo::new();
    let repo = ours.init_ours();
    let config: serde_json::Value =
        serde_json::from_slice(&ours.restic(&["cat", "config"], None)).unwrap();
    assert_eq!(config["version"], 2);
    assert_eq!(config["id"], repo.config().id.to_string());
    let keys = String::from_utf8(ours.restic(&["key", "list"], None)).unwrap();
    assert!(keys.contains(&repo.key_id().short()), "{keys}");
    let wrong = crate::common::restic_output(&ours.path, "not the password", &["snapshots"], None);
    assert!(
        !wrong.status.success(),
        "restic opened our repository with a wrong password"
    );
    // A key restic adds opens with our code too.
    let pwfile = ours.scratch("pw2");
    std::fs::write(&pwfile, "second password").unwrap();
    ours.restic(
        &[
            "key",
            "add",
            "--new-password-file",
            pwfile.to_str().unwrap(),
        ],
        None,
    );
    Repository::open(ours.backend(), "second password").unwrap();
    Repository::open(ours.backend(), PASSWORD).unwrap();
}

/// A loop device over a sparse file of `size` bytes; detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &std::path::Path, size: u64) -> Loop {
        std::fs::File::create(file).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("this test needs losetup (util-linux) and root to attach a loop device");
        assert!(
            out.status.success(),
            "this test needs root and a free loop device: losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn restore_onto_a_loop_device_writes_the_image_and_refuses_a_small_one() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    let image = mixed_image(4, 4);
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "blk.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let small = Loop::new(&t.scratch("small"), 2 << 20);
    let err = restore_block(
        &repo,
        &sum.snapshot_id,
        None,
        std::path::Path::new(&small.dev),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        matches!(err, volbackup_store::Error::TargetTooSmall { size, needed, .. }
            if size == 2 << 20 && needed == image.len() as u64),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: target is {} bytes, the image needs {}",
            small.dev,
            2 << 20,
            image.len()
        )
    );

    // A larger device that holds old data everywhere: every byte of the image is written,
    // including the zero region (the device does not read as zeros there).
    let big_file = t.scratch("big");
    let big = Loop::new(&big_file, 6 << 20);
    std::fs::write(&big.dev, vec![0x5au8; 6 << 20]).unwrap();
    restore_block(
        &repo,
        &sum.snapshot_id,
        None,
        std::path::Path::new(&big.dev),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let dev = std::fs::read(&big.dev).unwrap();
    assert!(
        dev[..image.len()] == image[..],
        "device content differs from the image"
    );
    assert!(
        dev[image.len()..].iter().all(|&b| b == 0x5a),
        "bytes past the image changed"
    );
}

#[test]
fn a_version_1_repository_gets_uncompressed_files_restic_accepts() {
    let t = TempRepo::new();
    t.restic(&["init", "-q", "--repository-version", "1"], None);
    let repo = t.open();
    assert_eq!(repo.config().version, 1);
    let image = mixed_image(10, 4);
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "old.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    repo.load_index().unwrap();
    assert!(
        repo.index()
            .iter()
            .all(|(_, _, e)| e.uncompressed_length.is_none())
    );
    let check = t.restic(&["check", "--read-data"], None);
    assert!(String::from_utf8_lossy(&check).contains("no errors were found"));
    let dumped = t.restic(&["dump", &sum.snapshot_id.to_string(), "/old.img"], None);
    assert!(dumped == image, "restic dump differs from the input");
}

/// The device path assembles aligned windows: an image of several windows with an unaligned
/// tail, chunks crossing window edges, repeated chunks and a zero region comes back byte for
/// byte on a device full of old data and on a fresh device (where no zero window is written);
/// progress counts the whole image.
#[test]
fn restore_onto_a_device_assembles_whole_windows_and_writes_no_zero_window() {
    let t = TempRepo::new();
    let repo = t.init_ours();
    // 5 MiB of random data, 17 MiB of zeros (a whole 8 MiB window among them), the first
    // 3 MiB again (the same chunks at a second offset), and an unaligned tail.
    let mut image = random_bytes(7, 5 << 20);
    image.resize(22 << 20, 0);
    image.extend_from_within(..3 << 20);
    image.extend(random_bytes(8, 1000));
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "blk.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let old = Loop::new(&t.scratch("old"), 28 << 20);
    std::fs::write(&old.dev, vec![0xa5u8; 28 << 20]).unwrap();
    let progress = CountingProgress::default();
    let restore_onto =
        |dev: &str, threads: usize, progress: &dyn volbackup_store::progress::Progress| {
            restore_block(
                &repo,
                &sum.snapshot_id,
                None,
                std::path::Path::new(dev),
                &RestoreOptions {
                    threads,
                    ..RestoreOptions::default()
                },
                progress,
            )
        };
    let r = restore_onto(&old.dev, 3, &progress).unwrap();
    let dev = std::fs::read(&old.dev).unwrap();
    assert!(dev[..image.len()] == image[..], "device content differs");
    assert!(
        dev[image.len()..].iter().all(|&b| b == 0xa5),
        "bytes past the image changed"
    );
    assert_eq!(r.bytes_total, image.len() as u64);
    // The zero window is either zeroed by the device (a loop device punches a hole in its
    // file) or written; the content check above is what matters.
    assert!(
        [image.len() as u64, image.len() as u64 - (8 << 20)].contains(&r.bytes_written),
        "{r:?}"
    );
    assert_eq!(
        progress.done.load(std::sync::atomic::Ordering::Relaxed),
        image.len() as u64
    );

    let fresh = Loop::new(&t.scratch("fresh"), 28 << 20);
    let r = restore_onto(&fresh.dev, 2, &NoProgress).unwrap();
    let dev = std::fs::read(&fresh.dev).unwrap();
    assert!(dev[..image.len()] == image[..], "device content differs");
    assert_eq!(
        r.bytes_written,
        image.len() as u64 - (8 << 20),
        "the zero window was written: {r:?}"
    );

    // Damage the largest pack (a data pack; the tree pack is small): the restore fails
    // naming the damage.
    let mut packs = Vec::new();
    for sub in std::fs::read_dir(t.path.join("data")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            packs.push((std::fs::metadata(&f).unwrap().len(), f));
        }
    }
    let (_, largest) = packs.iter().max().unwrap();
    let mut bytes = std::fs::read(largest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(largest, bytes).unwrap();
    let err = restore_onto(&fresh.dev, 2, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn a_mostly_empty_image_lists_its_zeros_in_8_mib_blobs_that_restic_reads() {
    // 64 MiB with three islands of data: about 128 chunks as restic cuts it, a dozen here.
    let t = TempRepo::new();
    let repo = t.init_ours();
    let mut image = vec![0u8; 64 << 20];
    for (i, at) in [0usize, 20 << 20, 63 << 20].into_iter().enumerate() {
        image[at..at + (700 << 10)].copy_from_slice(&random_bytes(30 + i as u64, 700 << 10));
    }
    let sum = backup_block(
        &repo,
        &mut &image[..],
        "sparse.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(sum.chunks <= 16, "{sum:?}");
    t.restic(&["check", "--read-data"], None);
    let id = sum.snapshot_id.to_string();
    let dumped = t.restic(&["dump", &id, "/sparse.img"], None);
    assert!(dumped == image, "restic dump differs from the input");
    let out = t.scratch("restored");
    t.restic(&["restore", &id, "--target", out.to_str().unwrap()], None);
    assert!(std::fs::read(out.join("sparse.img")).unwrap() == image);
}
