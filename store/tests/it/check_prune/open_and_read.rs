//! A prune between opening a repository and locking it leaves no backup naming a deleted
//! pack; check keeps the reads in flight that the backend takes, and reads each index and
//! snapshot file once.

use super::*;

#[test]
fn a_prune_between_open_and_lock_leaves_no_backup_naming_a_deleted_pack() {
    prune_between_open_and_lock(false);
}

/// The same with the repository opened as `mover backup` opens it: the index and snapshot
/// files listed and read while the key is derived, all of it from before the prune.
#[test]
fn a_prune_after_the_index_was_read_ahead_leaves_no_backup_naming_a_deleted_pack() {
    prune_between_open_and_lock(true);
}

fn prune_between_open_and_lock(read_ahead: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    init_ours(&repo);
    let image = noise(41, 3 << 20);
    let dir = tmp.path().join("files");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("a.bin"), noise(42, 2 << 20)).unwrap();
    fs::write(dir.join("b.txt"), b"a small file\n").unwrap();
    let opts = BackupOptions::default();

    // A long-lived handle (a controller, a process that opened the repository and then waited
    // for its turn) has loaded the index that lists the first backups' packs...
    let first = open(&repo);
    backup_block(
        &first,
        &mut image.as_slice(),
        "disk.img",
        &opts,
        &NoProgress,
    )
    .unwrap();
    volbackup_store::backup_tree::backup_tree(&first, &dir, &opts, &NoProgress).unwrap();
    let early = if read_ahead {
        let warmed = Repository::open_with(
            Arc::new(LocalBackend::new(&repo)),
            PASSWORD,
            &OpenOptions {
                read_ahead: ReadAhead::SnapshotsAndIndex,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        // Waits for the reading ahead to end (a parent lookup takes its listing): what it
        // holds is from before the prune.
        let host = volbackup_store::format::hostname();
        let parent = volbackup_store::parent::backup_parent(
            &warmed,
            None,
            &host,
            &["/disk.img".to_string()],
        );
        assert!(parent.unwrap().is_some());
        warmed
    } else {
        let early = open(&repo);
        early.load_index().unwrap();
        assert!(!early.index().is_empty());
        early
    };

    // ...then every snapshot is forgotten and a prune removes their packs...
    let other = open(&repo);
    for (id, _) in other.list_snapshots().unwrap() {
        other
            .backend()
            .remove(FileType::Snapshot, &id.to_hex())
            .unwrap();
    }
    let stats = prune(&repo, &PruneOptions::default());
    assert!(stats.packs_deleted > 0, "the prune removed nothing");

    // ...and only then does the handle back up the same data again. Each backup loads the
    // index under its own lock, so it stores the data again instead of naming removed packs.
    backup_block(
        &early,
        &mut image.as_slice(),
        "disk.img",
        &opts,
        &NoProgress,
    )
    .unwrap();
    volbackup_store::backup_tree::backup_tree(&early, &dir, &opts, &NoProgress).unwrap();
    no_locks_left(&repo);
    restic_ok(&repo, &["check", "--read-data"]);
    let dumped = restic_ok(
        &repo,
        &["dump", "--path", "/disk.img", "latest", "/disk.img"],
    );
    assert!(dumped.stdout == image, "the image restic dumps differs");
}

/// A repository in `dir/repo` holding one backup of `mib` MiB of noise from `seed`, in packs of
/// 64 KiB: each chunk (about 1 MiB) a pack of its own.
fn repo_of_small_packs(dir: &Path, seed: u64, mib: usize) -> PathBuf {
    let repo = dir.join("repo");
    let r = init_ours(&repo);
    let image = noise(seed, mib << 20);
    let opts = BackupOptions {
        writer: WriterOptions {
            pack_size: 64 << 10,
            ..WriterOptions::default()
        },
        ..BackupOptions::default()
    };
    backup_block(&r, &mut &image[..], "vol.img", &opts, &NoProgress).unwrap();
    repo
}

/// A local repository whose whole-pack reads take a while and are counted while in flight,
/// as an object store's would be; it takes `read_concurrency` reads at once.
struct SlowPackReads {
    inner: LocalBackend,
    read_concurrency: usize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Pack reads that succeed; every one after them fails as a server error would.
    reads_left: AtomicUsize,
    /// Every whole-file read of another kind, as `kind/name`.
    other_reads: std::sync::Mutex<Vec<String>>,
    /// Snapshot reads in flight now (each takes 20 ms), and the most at once.
    snapshot_reads: AtomicUsize,
    most_snapshot_reads: AtomicUsize,
}

impl SlowPackReads {
    fn new(repo: &Path, read_concurrency: usize, reads_left: usize) -> SlowPackReads {
        SlowPackReads {
            inner: LocalBackend::new(repo),
            read_concurrency,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            reads_left: AtomicUsize::new(reads_left),
            other_reads: Default::default(),
            snapshot_reads: AtomicUsize::new(0),
            most_snapshot_reads: AtomicUsize::new(0),
        }
    }
}

impl Backend for SlowPackReads {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> volbackup_store::Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> volbackup_store::Result<()> {
        self.inner.write(t, name, data)
    }
    fn read(&self, t: FileType, name: &str) -> volbackup_store::Result<Vec<u8>> {
        if t != FileType::Pack {
            self.other_reads
                .lock()
                .unwrap()
                .push(format!("{}/{name}", t.dir()));
            if t != FileType::Snapshot {
                return self.inner.read(t, name);
            }
            let now = self.snapshot_reads.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_snapshot_reads.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let read = self.inner.read(t, name);
            self.snapshot_reads.fetch_sub(1, Ordering::SeqCst);
            return read;
        }
        let failing = self
            .reads_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err();
        if failing {
            return Err(volbackup_store::Error::Backend {
                location: self.inner.location(),
                message: "503 Slow Down".into(),
                retryable: true,
            });
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let read = self.inner.read(t, name);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        read
    }
    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> volbackup_store::Result<Vec<u8>> {
        self.inner.read_range(t, name, offset, length)
    }
    fn stat(&self, t: FileType, name: &str) -> volbackup_store::Result<u64> {
        self.inner.stat(t, name)
    }
    fn list(&self, t: FileType) -> volbackup_store::Result<Vec<FileInfo>> {
        self.inner.list(t)
    }
    fn remove(&self, t: FileType, name: &str) -> volbackup_store::Result<()> {
        self.inner.remove(t, name)
    }
    fn read_concurrency(&self) -> usize {
        self.read_concurrency
    }
}

#[test]
fn read_data_keeps_as_many_pack_reads_in_flight_as_the_backend_takes_whatever_the_cores() {
    let tmp = tempfile::tempdir().unwrap();
    // About 48 chunks (the chunker's polynomial is random), each alone in a pack.
    let repo = repo_of_small_packs(tmp.path(), 11, 48);
    let packs = files_of(&repo, "data").len();
    let verifiers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let allowed = verifiers + 4;
    assert!(
        packs >= allowed + 4,
        "{packs} packs, too few to fill {allowed} reads"
    );
    let backend = Arc::new(SlowPackReads::new(&repo, allowed, usize::MAX));
    let opened = Repository::open(backend.clone(), PASSWORD).unwrap();
    let read_data = CheckOptions {
        read_data: true,
        ..CheckOptions::default()
    };
    let report = check(&opened, &read_data, &NoProgress).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.packs_read, report.packs, "{report}");
    let most = backend.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most > verifiers && most <= allowed,
        "{most} pack reads were in flight at most, with {verifiers} verifying threads and \
         {allowed} reads allowed"
    );
}

#[test]
fn read_data_stops_at_a_server_failure_with_the_error_and_leaves_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_of_small_packs(tmp.path(), 12, 16);
    // Every verifying thread meets a failed read, and readers are left waiting for room.
    for reads_left in [0, 3] {
        let backend = Arc::new(SlowPackReads::new(&repo, 16, reads_left));
        let opened = Repository::open(backend, PASSWORD).unwrap();
        let read_data = CheckOptions {
            read_data: true,
            ..CheckOptions::default()
        };
        let failed = check(&opened, &read_data, &NoProgress);
        assert!(
            matches!(
                failed,
                Err(volbackup_store::Error::Backend {
                    retryable: true,
                    ..
                })
            ),
            "after {reads_left} reads: {failed:?}"
        );
        no_locks_left(&repo);
    }
}

#[test]
fn check_reads_each_index_and_snapshot_file_once_with_those_read_while_the_key_is_derived() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = init_ours(&repo);
    for seed in 0..3 {
        let image = noise(20 + seed, 2 << 20);
        backup_block(
            &r,
            &mut &image[..],
            "vol.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
    }
    let files = |dir: &str| -> Vec<String> {
        files_of(&repo, dir)
            .iter()
            .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
            .collect()
    };
    let (snapshots, indexes) = (files("snapshots"), files("index"));
    assert_eq!(snapshots.len(), 3);
    let backend = Arc::new(SlowPackReads::new(&repo, 4, usize::MAX));
    let opened = Repository::open_with(
        backend.clone(),
        PASSWORD,
        &OpenOptions {
            read_ahead: ReadAhead::SnapshotsAndIndex,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let report = check(&opened, &CheckOptions::default(), &NoProgress).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.snapshots, report.index_files), (3, indexes.len()));
    let reads = backend.other_reads.lock().unwrap().clone();
    for file in snapshots.iter().chain(&indexes) {
        let times = reads.iter().filter(|r| *r == file).count();
        assert_eq!(times, 1, "{file} read {times} times: {reads:#?}");
    }

    // Opened without reading ahead, check reads the snapshot files side by side.
    let backend = Arc::new(SlowPackReads::new(&repo, 4, usize::MAX));
    let opened = Repository::open(backend.clone(), PASSWORD).unwrap();
    let report = check(&opened, &CheckOptions::default(), &NoProgress).unwrap();
    assert_eq!(report.snapshots, 3, "{report}");
    let most = backend.most_snapshot_reads.load(Ordering::SeqCst);
    assert!(most >= 2, "{most} snapshot reads at once");
}
