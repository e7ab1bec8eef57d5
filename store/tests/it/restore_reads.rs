//! Image restores read packs, not blobs: the read planner (merged and split reads, repeated
//! blobs) and its execution against a local repository behind a backend that counts, damages
//! and cuts short what it reads. Nothing here asserts a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{PASSWORD, TempRepo, backup_with_its_index_file, random_bytes, text_bytes};
use volbackup_store::backend::{Backend, FileInfo, FileType};
use volbackup_store::block::{
    BackupOptions, RestoreOptions, backup_block, restore_block, restore_image,
};
use volbackup_store::id::Id;
use volbackup_store::index::IndexEntry;
use volbackup_store::open_snapshot::OpenSnapshot;
use volbackup_store::packer::WriterOptions;
use volbackup_store::progress::NoProgress;
use volbackup_store::restore_plan::{PlanOptions, Source, plan};
use volbackup_store::{BlobType, KeyHint, Repository, Result};
use volbackup_store::{OpenOptions, ReadAhead};

fn entry(pack: u8, offset: u32, length: u32) -> IndexEntry {
    IndexEntry {
        pack: Id([pack; 32]),
        offset,
        length,
        uncompressed_length: None,
    }
}

fn blob(n: u8) -> Id {
    Id([n; 32])
}

const KIB: u32 = 1024;

#[test]
fn blobs_next_to_each_other_in_a_pack_are_read_with_one_request() {
    let content: Vec<(Id, IndexEntry)> = (0..5u8)
        .map(|i| (blob(i), entry(1, u32::from(i) * 100 * KIB, 100 * KIB)))
        .collect();
    let p = plan(&content, &PlanOptions::default());
    assert_eq!(p.reads.len(), 1, "{:?}", p.reads);
    let r = &p.reads[0];
    assert_eq!((r.offset, r.length), (0, 500 * u64::from(KIB)));
    assert_eq!(r.blobs.len(), 5);
    for (i, b) in r.blobs.iter().enumerate() {
        assert_eq!(b.offset_in(r), i * 100 * KIB as usize);
        assert_eq!(b.piece, i);
    }
    assert_eq!(p.size, 5 * (100 * u64::from(KIB) - 32));
}

#[test]
fn a_small_gap_is_read_through_and_a_large_gap_splits_the_read() {
    let opts = PlanOptions {
        max_gap: 64 * u64::from(KIB),
        max_read: 64 << 20,
    };
    // 0..100K, gap 10K, 110K..210K (merged); gap 1M, 1234K..1334K (own read).
    let content = [
        (blob(1), entry(7, 0, 100 * KIB)),
        (blob(2), entry(7, 110 * KIB, 100 * KIB)),
        (blob(3), entry(7, 1234 * KIB, 100 * KIB)),
    ];
    let p = plan(&content, &opts);
    let ranges: Vec<(u64, u64)> = p.reads.iter().map(|r| (r.offset, r.length)).collect();
    let k = u64::from(KIB);
    assert_eq!(ranges, vec![(0, 210 * k), (1234 * k, 100 * k)]);
    assert_eq!(
        p.reads[0].blobs[1].offset_in(&p.reads[0]),
        110 * KIB as usize
    );
    assert_eq!(p.bytes_read(), 310 * k);
}

#[test]
fn a_read_is_split_where_it_would_grow_past_the_limit() {
    let opts = PlanOptions {
        max_gap: 1 << 20,
        max_read: 250 * u64::from(KIB),
    };
    let content: Vec<(Id, IndexEntry)> = (0..5u8)
        .map(|i| (blob(i), entry(2, u32::from(i) * 100 * KIB, 100 * KIB)))
        .collect();
    let p = plan(&content, &opts);
    let sizes: Vec<usize> = p.reads.iter().map(|r| r.blobs.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(p.reads.iter().all(|r| r.length <= opts.max_read));
    // A blob larger than the limit is still read, whole and alone.
    let big = [(blob(9), entry(3, 0, 300 * KIB))];
    let p = plan(&big, &opts);
    assert_eq!(p.reads.len(), 1);
    assert_eq!(p.reads[0].length, 300 * u64::from(KIB));
}

#[test]
fn a_blob_the_image_repeats_is_fetched_once_and_copied_to_its_later_places() {
    let a = (blob(1), entry(4, 0, 1000));
    let b = (blob(2), entry(4, 1000, 2000));
    let content = [a, b, a, a, b];
    let p = plan(&content, &PlanOptions::default());
    assert_eq!(p.reads.len(), 1);
    assert_eq!(p.reads[0].blobs.len(), 2, "each blob is fetched once");
    let sources: Vec<Source> = p.pieces.iter().map(|x| x.source).collect();
    assert!(matches!(sources[0], Source::Fetch { read: 0, blob: 0 }));
    assert!(matches!(sources[1], Source::Fetch { read: 0, blob: 1 }));
    assert_eq!(sources[2], Source::Copy { piece: 0 });
    assert_eq!(sources[3], Source::Copy { piece: 0 });
    assert_eq!(sources[4], Source::Copy { piece: 1 });
    let starts: Vec<u64> = p.pieces.iter().map(|x| x.start).collect();
    assert_eq!(starts, vec![0, 968, 2936, 3904, 4872]);
    assert_eq!(p.size, 6840);
}

#[test]
fn reads_come_in_the_order_the_image_needs_them() {
    // The image takes pack 9 first, then pack 5, then pack 9 again far away in the pack.
    let content = [
        (blob(1), entry(9, 0, 1000)),
        (blob(2), entry(5, 0, 1000)),
        (blob(3), entry(9, 50 << 20, 1000)),
    ];
    let p = plan(&content, &PlanOptions::default());
    let packs: Vec<Id> = p.reads.iter().map(|r| r.pack).collect();
    assert_eq!(packs, vec![Id([9; 32]), Id([5; 32]), Id([9; 32])]);
}

/// A local repository's backend that counts the pack reads, may damage or cut short what it
/// returns, and tracks how many reads are in flight at once.
struct Wrapped {
    inner: Arc<dyn Backend>,
    pack_reads: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Pack reads still to be cut to half their length.
    cut_next: AtomicUsize,
    /// Every read is cut short.
    always_short: bool,
    /// (pack, offset in the pack): a byte flipped whenever a read covers it.
    flip: Mutex<Option<(String, u64)>>,
    /// Each read waits this long (to let reads overlap).
    pause: std::time::Duration,
    /// The data packs: reads of other packs (the tree) pass untouched and uncounted.
    data_packs: Mutex<std::collections::HashSet<String>>,
    /// Bytes of data-pack reads in flight now, and the most at once.
    bytes_in_flight: AtomicUsize,
    most_bytes_in_flight: AtomicUsize,
    /// Every request, as `op kind/name[@offset]`, in order.
    log: Mutex<Vec<String>>,
    /// An index file left out of listings until a lock file is written (as if a prune had
    /// written it just before the lock was taken).
    hidden_index: Mutex<Option<String>>,
    /// Writing a lock file waits this long first.
    lock_pause: std::time::Duration,
    /// Listing the lock files waits this long after the listing, before it is answered.
    lock_list_pause: std::time::Duration,
    /// A restore's target: whether it existed is noted at every data-pack read.
    target: Mutex<Option<std::path::PathBuf>>,
    target_existed_at_pack_reads: Mutex<Vec<bool>>,
}

impl Wrapped {
    fn new(inner: Arc<dyn Backend>) -> Wrapped {
        Wrapped {
            inner,
            pack_reads: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            cut_next: AtomicUsize::new(0),
            always_short: false,
            flip: Mutex::new(None),
            pause: std::time::Duration::ZERO,
            data_packs: Mutex::default(),
            bytes_in_flight: AtomicUsize::new(0),
            most_bytes_in_flight: AtomicUsize::new(0),
            log: Mutex::default(),
            hidden_index: Mutex::default(),
            lock_pause: std::time::Duration::ZERO,
            lock_list_pause: std::time::Duration::ZERO,
            target: Mutex::default(),
            target_existed_at_pack_reads: Mutex::default(),
        }
    }

    fn note(&self, op: &str, t: FileType, name: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{op} {}/{name}", t.dir()));
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Backend for Wrapped {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        if t == FileType::Lock {
            std::thread::sleep(self.lock_pause);
        }
        self.note("write", t, name);
        let r = self.inner.write(t, name, data);
        if t == FileType::Lock {
            *self.hidden_index.lock().unwrap() = None;
        }
        r
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.note("read", t, name);
        self.inner.read(t, name)
    }
    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let data_pack = t == FileType::Pack && self.data_packs.lock().unwrap().contains(name);
        // Looked at before the read is logged: a read logged before something else happened
        // saw the target as it was before that.
        if let Some(target) = self.target.lock().unwrap().as_ref()
            && data_pack
        {
            self.target_existed_at_pack_reads
                .lock()
                .unwrap()
                .push(target.exists());
        }
        self.note("read", t, &format!("{name}@{offset}"));
        if !data_pack {
            return self.inner.read_range(t, name, offset, length);
        }
        self.pack_reads.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let bytes = self
            .bytes_in_flight
            .fetch_add(length as usize, Ordering::SeqCst)
            + length as usize;
        self.most_bytes_in_flight.fetch_max(bytes, Ordering::SeqCst);
        std::thread::sleep(self.pause);
        let r = self.inner.read_range(t, name, offset, length);
        self.bytes_in_flight
            .fetch_sub(length as usize, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut data = r?;
        if let Some((pack, at)) = self.flip.lock().unwrap().as_ref()
            && pack == name
            && (offset..offset + length).contains(at)
        {
            data[(at - offset) as usize] ^= 0x55;
        }
        let cut = self
            .cut_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if self.always_short || cut {
            data.truncate(data.len() / 2);
        }
        Ok(data)
    }
    fn stat(&self, t: FileType, name: &str) -> Result<u64> {
        self.note("stat", t, name);
        self.inner.stat(t, name)
    }
    fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
        self.note("list", t, "");
        let mut files = self.inner.list(t)?;
        if t == FileType::Lock {
            std::thread::sleep(self.lock_list_pause);
            self.note("listed", t, "");
        }
        if t == FileType::Index
            && let Some(hidden) = self.hidden_index.lock().unwrap().as_ref()
        {
            files.retain(|f| &f.name != hidden);
        }
        Ok(files)
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.note("remove", t, name);
        self.inner.remove(t, name)
    }
}

/// An image with random and text data, a zero region, and two blocks it repeats: many chunks,
/// repeated chunks and zero chunks.
fn image() -> Vec<u8> {
    let a = random_bytes(21, 3 << 20);
    let b = text_bytes(22, 2 << 20);
    let mut v = Vec::new();
    v.extend_from_slice(&a);
    v.extend(random_bytes(23, 2 << 20));
    v.extend_from_slice(&b);
    v.extend(vec![0u8; 3 << 20]);
    v.extend_from_slice(&a);
    v.extend(random_bytes(24, 1 << 20));
    v.extend_from_slice(&b);
    v.extend_from_slice(&a);
    v
}

/// A repository holding `image` as `vol.img` in 2 MiB packs; returns the snapshot id.
fn backed_up(t: &TempRepo, image: &[u8]) -> Id {
    backed_up_in_packs_of(t, image, 2 << 20)
}

fn backed_up_in_packs_of(t: &TempRepo, image: &[u8], pack_size: usize) -> Id {
    let repo = t.init_ours();
    let opts = BackupOptions {
        writer: WriterOptions {
            pack_size,
            ..WriterOptions::default()
        },
        ..BackupOptions::default()
    };
    backup_block(&repo, &mut &image[..], "vol.img", &opts, &NoProgress)
        .unwrap()
        .snapshot_id
}

fn open_wrapped(_t: &TempRepo, w: Wrapped) -> (Repository, Arc<Wrapped>) {
    let w = Arc::new(w);
    let repo = Repository::open(w.clone(), PASSWORD).unwrap();
    repo.load_index().unwrap();
    *w.data_packs.lock().unwrap() = repo
        .index()
        .iter()
        .filter(|(t, _, _)| *t == BlobType::Data)
        .map(|(_, _, e)| e.pack.to_hex())
        .collect();
    (repo, w)
}

/// Restores `snap` onto `target` with the default settings; fails unless it gives `image`.
fn restore_exactly(repo: &Repository, snap: &Id, target: &std::path::Path, image: &[u8]) {
    let sum = restore_block(
        repo,
        snap,
        None,
        target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert!(
        std::fs::read(target).unwrap() == image,
        "restored bytes differ"
    );
}

fn data_packs(w: &Wrapped) -> usize {
    w.data_packs.lock().unwrap().len()
}

#[test]
fn an_image_restore_reads_each_pack_once_and_writes_the_image_exactly() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let (repo, w) = open_wrapped(&t, Wrapped::new(t.backend()));
    let packs = data_packs(&w);
    assert!(packs >= 3, "the image fills several packs ({packs})");
    let target = t.scratch("out.img");
    // Reads as long as the largest pack, so that each pack is one read.
    let opts = RestoreOptions {
        plan: PlanOptions {
            max_read: 64 << 20,
            ..PlanOptions::default()
        },
        ..RestoreOptions::default()
    };
    let sum = restore_block(&repo, &snap, None, &target, &opts, &NoProgress).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    assert_eq!(sum.bytes_total, image.len() as u64);
    assert!(
        sum.bytes_written < sum.bytes_total,
        "zero chunks are not written"
    );
    // Every blob of every pack is needed: one read a pack.
    assert_eq!(w.pack_reads.load(Ordering::SeqCst), packs);
}

#[test]
fn reads_stay_in_flight_together_whatever_the_number_of_decoding_threads() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let mut w = Wrapped::new(t.backend());
    w.pause = std::time::Duration::from_millis(30);
    let (repo, w) = open_wrapped(&t, w);
    let target = t.scratch("out.img");
    let opts = RestoreOptions {
        threads: 1,
        read_concurrency: 4,
        ..RestoreOptions::default()
    };
    restore_block(&repo, &snap, None, &target, &opts, &NoProgress).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    let most = w.most_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&most),
        "{most} reads were in flight at most, with one decoding thread and 4 allowed"
    );
}

#[test]
fn a_read_cut_short_is_read_again_and_the_restore_is_exact() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let w = Wrapped::new(t.backend());
    w.cut_next.store(3, Ordering::SeqCst);
    let (repo, w) = open_wrapped(&t, w);
    let packs = data_packs(&w);
    let target = t.scratch("out.img");
    let opts = RestoreOptions {
        plan: PlanOptions {
            max_read: 64 << 20,
            ..PlanOptions::default()
        },
        ..RestoreOptions::default()
    };
    restore_block(&repo, &snap, None, &target, &opts, &NoProgress).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    assert_eq!(w.cut_next.load(Ordering::SeqCst), 0);
    assert_eq!(w.pack_reads.load(Ordering::SeqCst), packs + 3);
}

#[test]
fn reads_that_always_come_back_short_fail_in_one_line_naming_the_pack() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let mut w = Wrapped::new(t.backend());
    w.always_short = true;
    let (repo, _w) = open_wrapped(&t, w);
    let err = restore_block(
        &repo,
        &snap,
        None,
        &t.scratch("out.img"),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot read data/"), "{err}");
    assert!(err.contains("3 times"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn a_damaged_blob_in_the_middle_of_a_read_names_blob_and_pack_and_is_not_written() {
    let t = TempRepo::new();
    // Chunk boundaries follow the repository's random polynomial, so the image is incompressible
    // and the packs large: 8 MiB packs of chunks averaging ~1.5 MiB hold several blobs each,
    // whatever the polynomial.
    let image = random_bytes(31, 24 << 20);
    let snap = backed_up_in_packs_of(&t, &image, 8 << 20);
    let repo = t.open();
    repo.load_index().unwrap();
    // The middle blob of a pack that holds at least three distinct blobs of the image.
    let index = repo.index();
    let mut by_pack: std::collections::HashMap<Id, Vec<(Id, IndexEntry)>> = Default::default();
    for (ty, id, e) in index.iter() {
        if ty == BlobType::Data {
            by_pack.entry(e.pack).or_default().push((id, *e));
        }
    }
    // A blob with neighbours on both sides in its pack, large enough not to be a zero chunk.
    let (pack, blobs, victim) = by_pack
        .into_iter()
        .find_map(|(pack, mut blobs)| {
            blobs.sort_by_key(|(_, e)| e.offset);
            let n = blobs.len();
            let v = (1..n.saturating_sub(1)).find(|&i| blobs[i].1.length > 64 << 10)?;
            Some((pack, blobs.clone(), blobs[v]))
        })
        .expect("a pack with a large blob between two others");
    let (victim, ve) = victim;
    let mut w = Wrapped::new(t.backend());
    let at = u64::from(ve.offset) + u64::from(ve.length) / 2;
    w.flip = Mutex::new(Some((pack.to_hex(), at)));
    let (repo, _w) = open_wrapped(&t, w);
    let target = t.scratch("out.img");
    let err = restore_block(
        &repo,
        &snap,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&victim.short()), "{err}");
    assert!(err.contains(&pack.to_hex()), "{err}");
    assert!(!err.contains('\n'), "{err}");
    // Whatever was written is the image's bytes; the damaged blob's places are not written.
    let out = std::fs::read(&target).unwrap();
    assert_eq!(out.len(), image.len());
    let plain = repo.read_blob(BlobType::Data, &blobs[0].0);
    assert!(plain.is_ok(), "the blob before the damage reads");
    let chunk = repo.read_blob(BlobType::Data, &victim);
    assert!(chunk.is_err(), "the damaged blob does not read");
    let mut pos = 0usize;
    let root = volbackup_store::block::find_image_node(
        &repo,
        &repo.find_snapshot(&snap.to_hex()).unwrap().1,
        None,
    )
    .unwrap();
    for id in &root.content {
        let len = repo.blob_entry(BlobType::Data, id).unwrap().plaintext_len() as usize;
        let got = &out[pos..pos + len];
        if *id == victim {
            assert!(
                got.iter().all(|&b| b == 0),
                "damaged bytes reached the target"
            );
        } else {
            assert!(
                got == &image[pos..pos + len] || got.iter().all(|&b| b == 0),
                "bytes at {pos} are neither the image's nor unwritten"
            );
        }
        pos += len;
    }
}

#[test]
fn a_tree_of_small_files_restores_with_one_read_per_pack() {
    let t = TempRepo::new();
    let src = t.scratch("src");
    for i in 0..60u64 {
        let dir = src.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let data = match i % 3 {
            0 => random_bytes(100 + i, 20_000 + i as usize * 1000),
            1 => text_bytes(200 + i, 50_000),
            // The same content in several files: fetched once, copied to the others.
            _ => random_bytes(7, 30_000),
        };
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    let repo = t.init_ours();
    let snap = volbackup_store::backup_tree::backup_tree(
        &repo,
        &src,
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .snapshot_id;
    let (repo, w) = open_wrapped(&t, Wrapped::new(t.backend()));
    let out = t.scratch("out");
    volbackup_store::restore_tree::restore_tree(
        &repo,
        &snap,
        &out,
        &volbackup_store::restore_tree::RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    for i in 0..60u64 {
        let rel = format!("d{}/f{i}", i % 4);
        assert!(
            std::fs::read(out.join(&rel)).unwrap() == std::fs::read(src.join(&rel)).unwrap(),
            "{rel} differs"
        );
    }
    assert_eq!(w.pack_reads.load(Ordering::SeqCst), data_packs(&w));
}

#[test]
fn writing_each_blob_as_it_arrives_gives_the_same_image_as_writing_in_order() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let repo = t.open();
    for window in [0, 1 << 20, 64 << 20] {
        let target = t.scratch(&format!("out-{window}.img"));
        let opts = RestoreOptions {
            reorder_window: window,
            read_concurrency: 8,
            plan: PlanOptions {
                max_gap: 0,
                max_read: 1 << 20,
            },
            ..RestoreOptions::default()
        };
        restore_block(&repo, &snap, None, &target, &opts, &NoProgress).unwrap();
        assert!(
            std::fs::read(&target).unwrap() == image,
            "restored bytes differ with a window of {window}"
        );
    }
}

/// How a test opens the repository: plainly, or listing and reading the index and snapshot
/// files while the key is derived, as `mover restore` and `mover backup` do.
const OPENINGS: [ReadAhead; 2] = [ReadAhead::Nothing, ReadAhead::SnapshotsAndIndex];

#[test]
fn a_restore_reads_config_keys_index_snapshot_and_tree_once_each() {
    for warm in OPENINGS {
        restore_reads_each_file_once(warm);
    }
}

fn restore_reads_each_file_once(warm: ReadAhead) {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let w = Arc::new(Wrapped::new(t.backend()));
    let repo = Repository::open_with(
        w.clone(),
        PASSWORD,
        &OpenOptions {
            read_ahead: warm,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    // A prefix, as a user gives it: the snapshots are listed once.
    let open = OpenSnapshot::open(&repo, &snap.to_hex()[..8]).unwrap();
    assert_eq!(open.id, snap);
    assert!(open.is_block_image());
    let target = t.scratch("out.img");
    restore_image(
        &repo,
        &open,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    drop(open);
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    let log = w.log();
    let mut seen = std::collections::HashSet::new();
    for op in log.iter().filter(|op| op.starts_with("read ")) {
        assert!(seen.insert(op), "{op} twice: {log:#?}");
    }
    let count = |op: &str| log.iter().filter(|o| o.as_str() == op).count();
    assert_eq!(count("read /config"), 1, "{log:#?}");
    assert_eq!(count("list keys/"), 1, "{log:#?}");
    assert_eq!(count("list snapshots/"), 1, "{log:#?}");
    // Once to load, once more under the lock to see that nothing changed.
    assert_eq!(count("list index/"), 2, "{log:#?}");
    let index_reads = log.iter().filter(|o| o.starts_with("read index/")).count();
    assert_eq!(index_reads, repo.list_ids(FileType::Index).unwrap().len());
    // The lock goes once the last pack has been read, not before.
    let lock_removed = log
        .iter()
        .position(|o| o.starts_with("remove locks/"))
        .unwrap_or_else(|| panic!("the lock was never removed: {log:#?}"));
    let last_pack_read = log
        .iter()
        .rposition(|o| o.starts_with("read data/"))
        .unwrap();
    assert!(lock_removed > last_pack_read, "{log:#?}");
    assert_eq!(count_prefix(&log, "remove locks/"), 1, "{log:#?}");
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

fn count_prefix(log: &[String], prefix: &str) -> usize {
    log.iter().filter(|o| o.starts_with(prefix)).count()
}

#[test]
fn an_index_file_written_just_before_the_lock_is_loaded_under_it() {
    for warm in OPENINGS {
        index_written_before_the_lock_is_loaded(warm);
    }
}

fn index_written_before_the_lock_is_loaded(warm: ReadAhead) {
    let t = TempRepo::new();
    backed_up(&t, &random_bytes(41, 3 << 20));
    // The second image's blobs, and its tree, are named only by the newer index file.
    let image = image();
    let (snap, newer) = backup_with_its_index_file(&t, &image, "vol.img");
    let mut w = Wrapped::new(t.backend());
    *w.hidden_index.lock().unwrap() = Some(newer.to_hex());
    // The index is listed while the lock is being written.
    w.lock_pause = std::time::Duration::from_millis(300);
    let w = Arc::new(w);
    let repo = Repository::open_with(
        w.clone(),
        PASSWORD,
        &OpenOptions {
            read_ahead: warm,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let target = t.scratch("out.img");
    restore_exactly(&repo, &snap, &target, &image);
    let log = w.log();
    let newer_reads = log
        .iter()
        .filter(|o| o.as_str() == format!("read index/{newer}"))
        .count();
    assert_eq!(newer_reads, 1, "{log:#?}");
}

/// Restores `image` with `budget` bytes of blobs at most held, through a backend whose reads
/// take a while; returns the backend (to see what was in flight) and the plan's longest read.
fn restore_with_budget(budget: u64) -> (Arc<Wrapped>, u64) {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let mut w = Wrapped::new(t.backend());
    w.pause = std::time::Duration::from_millis(20);
    let (repo, w) = open_wrapped(&t, w);
    let plan_opts = PlanOptions {
        max_gap: 0,
        max_read: 1 << 20,
    };
    let longest = volbackup_store::block::plan_block_restore(&repo, &snap, None, &plan_opts)
        .unwrap()
        .reads
        .iter()
        .map(|r| r.length)
        .max()
        .unwrap();
    let target = t.scratch("out.img");
    let opts = RestoreOptions {
        read_concurrency: 8,
        read_budget: budget,
        plan: plan_opts,
        ..RestoreOptions::default()
    };
    restore_block(&repo, &snap, None, &target, &opts, &NoProgress).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    (w, longest)
}

#[test]
fn reads_in_flight_stay_within_the_byte_budget() {
    let budget = 3 << 20;
    let (w, longest) = restore_with_budget(budget);
    let most = w.most_bytes_in_flight.load(Ordering::SeqCst) as u64;
    // The lowest read not yet delivered may always start, whatever the budget holds.
    assert!(
        most <= budget + longest,
        "{most} bytes were in flight, with a budget of {budget} and reads of at most {longest}"
    );
    assert!(w.most_in_flight.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_budget_smaller_than_any_read_restores_one_read_at_a_time() {
    let (w, _) = restore_with_budget(1);
    assert_eq!(w.most_in_flight.load(Ordering::SeqCst), 1);
}

#[test]
fn pack_reads_start_while_the_lock_is_confirmed_and_nothing_is_written_before() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    let target = t.scratch("out.img");
    let mut w = Wrapped::new(t.backend());
    // The look for other locks takes long enough for reads to begin meanwhile.
    w.lock_list_pause = std::time::Duration::from_millis(300);
    *w.target.lock().unwrap() = Some(target.clone());
    let (repo, w) = open_wrapped(&t, w);
    restore_exactly(&repo, &snap, &target, &image);
    let early_reads = pack_reads_before_the_lock_was_confirmed(&w);
    assert!(
        early_reads > 0,
        "no pack read began before the lock was confirmed: {:#?}",
        w.log()
    );
    let existed = w.target_existed_at_pack_reads.lock().unwrap().clone();
    assert!(
        existed[..early_reads].iter().all(|e| !e),
        "the target existed before the lock was confirmed: {existed:?}"
    );
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

/// The data-pack reads logged before the look for other locks answered.
fn pack_reads_before_the_lock_was_confirmed(w: &Wrapped) -> usize {
    let log = w.log();
    let confirmed = log
        .iter()
        .position(|o| o == "listed locks/")
        .unwrap_or_else(|| panic!("the locks were never listed: {log:#?}"));
    log[..confirmed]
        .iter()
        .filter(|o| o.starts_with("read data/") && data_pack_read(w, o))
        .count()
}

/// Whether a logged read (`read data/NAME@OFFSET`) is of a data pack.
fn data_pack_read(w: &Wrapped, op: &str) -> bool {
    let name = op
        .trim_start_matches("read data/")
        .split('@')
        .next()
        .unwrap_or("");
    w.data_packs.lock().unwrap().contains(name)
}

#[test]
fn a_lock_refused_after_pack_reads_began_fails_the_restore_and_writes_nothing() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    // Another process holds the repository exclusively (a prune, say).
    let other = t.open();
    let held = volbackup_store::lock::Lock::exclusive(&other).unwrap();
    let target = t.scratch("out.img");
    let mut w = Wrapped::new(t.backend());
    w.lock_list_pause = std::time::Duration::from_millis(300);
    let (repo, w) = open_wrapped(&t, w);
    let err = restore_block(
        &repo,
        &snap,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap_err();
    assert!(
        matches!(err, volbackup_store::Error::Locked { .. }),
        "not a lock refusal: {err}"
    );
    assert!(
        w.pack_reads.load(Ordering::SeqCst) > 0,
        "no pack read began before the lock was refused: {:#?}",
        w.log()
    );
    assert!(!target.exists(), "the target was created");
    // Only the other process's lock is left.
    assert_eq!(repo.list_ids(FileType::Lock).unwrap().len(), 1);
    drop(held);
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

#[test]
fn an_index_changed_before_the_lock_drops_the_early_reads_and_restores_from_the_new_index() {
    let t = TempRepo::new();
    let image = image();
    let snap = backed_up(&t, &image);
    // A later backup's index file, written (as far as this restore can tell) between its
    // first listing and its lock: the snapshot's tree is in the earlier index, so reads are
    // planned and begun from it, then planned again under the lock.
    let (_, newer) = backup_with_its_index_file(&t, &random_bytes(42, 3 << 20), "other.img");
    let target = t.scratch("out.img");
    let mut w = Wrapped::new(t.backend());
    *w.hidden_index.lock().unwrap() = Some(newer.to_hex());
    w.lock_list_pause = std::time::Duration::from_millis(300);
    let (repo, w) = open_wrapped(&t, w);
    restore_exactly(&repo, &snap, &target, &image);
    let log = w.log();
    assert!(
        pack_reads_before_the_lock_was_confirmed(&w) > 0,
        "no pack read began before the lock was confirmed: {log:#?}"
    );
    assert_eq!(
        count_prefix(&log, &format!("read index/{newer}")),
        1,
        "{log:#?}"
    );
    assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
}

mod keys;
mod operations;
