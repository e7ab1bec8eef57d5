//! Block images: backup of a device or file as one file node, and restore onto a device or
//! file.
//!
//! A backup is stored exactly like `restic backup --stdin --stdin-filename NAME`: the root
//! tree holds one `file` node `NAME`, the snapshot's paths are `["/NAME"]`, so
//! `restic dump <snapshot> /NAME > device` restores it too.
//!
//! Backup pipeline: the chunker runs on the calling thread (it is the serial part); every chunk
//! is handed to the [`BlobWriter`]'s workers, which hash, compress and seal in parallel, and
//! packs are uploaded by its upload threads. Restore onto a file: a pool of threads reads,
//! decrypts, decompresses and verifies blobs and writes them at their offsets with `pwrite`,
//! out of order; zero chunks are skipped, so a restored file stays sparse. Restore onto a block
//! device: the pool assembles aligned 8 MiB windows and writes each with one `O_DIRECT` write;
//! a window of zeros is zeroed by the device itself where it can, else written only where the
//! device does not read as zeros already.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::backend::FileType;
use crate::chunker::{Chunker, Pol};
use crate::format::{BlobType, Snapshot};
use crate::id::Id;
use crate::index::IndexEntry;
use crate::lock::Lock;
use crate::packer::{BlobWriter, Pending, WriterOptions, is_zero};
use crate::progress::Progress;
use crate::repo::{BlobReader, Repository};
use crate::tree::{Node, NodeType, Tree};
use crate::{Error, Result};

/// Options of [`backup_block`].
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Snapshot tags.
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (`""`: this machine's).
    pub hostname: String,
    /// Our volume description, stored in the snapshot's `volbackup` field.
    pub description: Option<serde_json::Value>,
    /// The previous snapshot of the same volume, recorded as `parent`.
    pub parent: Option<Id>,
    /// Blob writer settings.
    pub writer: WriterOptions,
    /// The source size if known (for progress).
    pub total_size: Option<u64>,
}

/// Result of a backup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupSummary {
    /// The new snapshot.
    pub snapshot_id: Id,
    /// Bytes read from the source.
    pub bytes_total: u64,
    /// Plaintext bytes of image data that was not yet in the repository.
    pub bytes_new: u64,
    /// Bytes added to packs (new data and the tree, compressed and sealed).
    pub bytes_stored: u64,
    /// Chunks in the image.
    pub chunks: u64,
    /// Chunks that were new.
    pub chunks_new: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Options of [`restore_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Blobs fetched, decrypted and written in parallel.
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        RestoreOptions {
            threads: (cpus * 2).clamp(2, 16),
        }
    }
}

/// Result of a restore.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreSummary {
    /// Size of the image.
    pub bytes_total: u64,
    /// Bytes actually written (zero regions left out).
    pub bytes_written: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A source to back up: a block device, a regular file, or stdin.
pub struct Source {
    /// The stream.
    pub reader: Box<dyn Read + Send>,
    /// Its size, when known (devices and files).
    pub size: Option<u64>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("size", &self.size).finish()
    }
}

/// Opens a backup source: `-` is stdin, otherwise a block device or a regular file.
pub fn open_source(path: &Path) -> Result<Source> {
    if path == Path::new("-") {
        return Ok(Source {
            reader: Box::new(std::io::stdin()),
            size: None,
        });
    }
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let md = f.metadata().map_err(|e| Error::io(path, e))?;
    let ft = md.file_type();
    let size = if ft.is_block_device() {
        f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?
    } else if ft.is_file() {
        md.len()
    } else {
        return Err(Error::Invalid(format!(
            "{}: not a block device or regular file (give a device, an image file or -)",
            path.display()
        )));
    };
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    // The chunker reads strictly sequentially: ask for aggressive readahead so the disk
    // works while the chunker hashes.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::Sequential);
    Ok(Source {
        reader: Box::new(f),
        size: Some(size),
    })
}

/// Backs up a stream as one file `name` (like `restic backup --stdin --stdin-filename NAME`).
/// Takes a shared lock, loads the index, writes packs, index, then the snapshot.
pub fn backup_block(
    repo: &Repository,
    source: &mut dyn Read,
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupSummary> {
    let start = Instant::now();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::Invalid(format!(
            "{name:?} is not a valid image name (one path component, like pvc.img)"
        )));
    }
    let pol = Pol(repo.config().chunker_polynomial);
    pol.validate().map_err(|e| Error::Corrupt {
        what: format!("{}/config", repo.location()),
        message: format!("chunker polynomial {pol}: {e}"),
    })?;
    let lock = Lock::shared(repo)?;
    repo.load_index()?;
    crate::resume::index_unindexed_packs(repo)?;
    progress.set_total(opts.total_size);
    let started = crate::format::now();

    let writer = BlobWriter::new(repo, opts.writer)?;
    let mut chunker = Chunker::new(source, pol);
    let mut content = Vec::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut total = 0u64;
    let mut chunks_new = 0u64;
    let mut bytes_new = 0u64;
    let mut resolve = |p: crate::packer::AddResult, content: &mut Vec<Id>| {
        progress.add_done(p.len);
        if p.new {
            chunks_new += 1;
            bytes_new += p.len;
        }
        content.push(p.id);
    };
    loop {
        let mut buf = writer.take_buffer(crate::chunker::MAX_SIZE);
        let more = chunker
            .next_chunk_into(&mut buf)
            .map_err(|e| Error::Invalid(format!("reading the source of {name}: {e}")))?;
        if !more {
            break;
        }
        total += buf.len() as u64;
        lock.check()?;
        pending.push_back(writer.submit(BlobType::Data, buf)?);
        while let Some(r) = pending.front().and_then(Pending::try_take) {
            pending.pop_front();
            resolve(r?, &mut content);
        }
    }
    for p in pending {
        resolve(p.wait()?, &mut content);
    }

    let now = crate::format::now();
    let mut node = Node::new(name, NodeType::File);
    node.mode = 0o644;
    node.mtime = now;
    node.atime = now;
    node.ctime = now;
    node.uid = rustix::process::getuid().as_raw();
    node.gid = rustix::process::getgid().as_raw();
    node.size = total;
    node.content = content;
    let tree = Tree::from_nodes(vec![node])?;
    let tree_id = writer.add(BlobType::Tree, tree.to_blob())?.id;
    progress.message("writing index");
    // The index and the snapshot refer to every pack written so far: a lost lock means a
    // prune may have removed some of them.
    lock.check()?;
    let stats = writer.finish()?;
    lock.check()?;

    let mut snap = Snapshot::new(tree_id, vec![format!("/{name}")]);
    snap.time = started;
    if !opts.hostname.is_empty() {
        snap.hostname = opts.hostname.clone();
    }
    snap.tags = opts.tags.clone();
    snap.parent = opts.parent;
    snap.volbackup = opts.description.clone();
    let snapshot_id = repo.save_snapshot(&snap)?;
    Ok(BackupSummary {
        snapshot_id,
        bytes_total: total,
        bytes_new,
        bytes_stored: stats.bytes_stored,
        chunks: snap_chunks(&tree),
        chunks_new,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn snap_chunks(tree: &Tree) -> u64 {
    tree.nodes
        .first()
        .map(|n| n.content.len() as u64)
        .unwrap_or(0)
}

/// The file node of a block snapshot: `path` (`/NAME`, or nested), or, when `None`, the
/// snapshot's only file.
pub fn find_image_node(repo: &Repository, snap: &Snapshot, path: Option<&str>) -> Result<Node> {
    let root = load_tree(repo, &snap.tree)?;
    let Some(path) = path else {
        let files: Vec<&Node> = root
            .nodes
            .iter()
            .filter(|n| n.node_type == NodeType::File)
            .collect();
        return match files.as_slice() {
            [n] if root.nodes.len() == 1 => Ok((*n).clone()),
            _ => Err(Error::Invalid(format!(
                "snapshot of {} is not a single block image: name the file to restore",
                snap.paths.join(", ")
            ))),
        };
    };
    let mut tree = root;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || Error::Invalid(format!("{path} is not in the snapshot"));
    for (i, part) in parts.iter().enumerate() {
        let node = tree.find(OsStr::new(part)).ok_or_else(not_found)?.clone();
        if i + 1 == parts.len() {
            if node.node_type != NodeType::File {
                return Err(Error::Invalid(format!(
                    "{path} in the snapshot is not a file"
                )));
            }
            return Ok(node);
        }
        let sub = node.subtree.ok_or_else(not_found)?;
        tree = load_tree(repo, &sub)?;
    }
    Err(not_found())
}

fn load_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let blob = repo.read_blob(BlobType::Tree, id)?;
    Tree::from_blob(&blob, &format!("tree {}", id.short()))
}

/// Restores a block image from `snapshot` onto `target` (a block device, or a regular file
/// which is created or truncated). `path` names the file in the snapshot (`/NAME`); `None`
/// takes the snapshot's only file.
pub fn restore_block(
    repo: &Repository,
    snapshot: &Id,
    path: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let _lock = Lock::shared(repo)?;
    let snap: Snapshot = match repo.load_unpacked(FileType::Snapshot, snapshot) {
        Err(Error::NotFound { .. }) => {
            return Err(Error::SnapshotNotFound {
                spec: snapshot.to_string(),
                location: repo.location(),
            });
        }
        r => r?,
    };
    repo.load_index()?;
    let node = find_image_node(repo, &snap, path)?;
    let index = repo.index();

    // Plan: where every blob goes, from the index alone.
    let mut offsets: HashMap<Id, (IndexEntry, Vec<u64>)> = HashMap::new();
    let mut pos = 0u64;
    for id in &node.content {
        let e = *index
            .get(BlobType::Data, id)
            .ok_or_else(|| Error::Corrupt {
                what: format!("snapshot {}", snapshot.short()),
                message: format!(
                    "data blob {id} is missing from the index (run `kubectl-volbackup repo check`)"
                ),
            })?;
        offsets
            .entry(*id)
            .or_insert_with(|| (e, Vec::new()))
            .1
            .push(pos);
        pos += u64::from(e.plaintext_len());
    }
    let size = pos;
    if size != node.size {
        return Err(Error::Corrupt {
            what: format!("snapshot {}", snapshot.short()),
            message: format!(
                "chunks add up to {size} bytes but the file node says {}",
                node.size
            ),
        });
    }
    progress.set_total(Some(size));

    if std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device()) {
        let mut pieces = Vec::with_capacity(node.content.len());
        let mut at = 0u64;
        for id in &node.content {
            let (entry, _) = offsets[id];
            pieces.push(Piece {
                id: *id,
                entry,
                start: at,
            });
            at += u64::from(entry.plaintext_len());
        }
        let written = restore_device(repo, target, &pieces, size, opts.threads, progress)?;
        return Ok(RestoreSummary {
            bytes_total: size,
            bytes_written: written,
            seconds: start.elapsed().as_secs_f64(),
        });
    }

    let file = open_target(target, size)?;
    let mut jobs: Vec<(Id, IndexEntry, Vec<u64>)> = offsets
        .into_iter()
        .map(|(id, (e, offs))| (id, e, offs))
        .collect();
    jobs.sort_by_key(|j| (j.1.pack, j.1.offset));
    let next = Mutex::new(jobs.into_iter());
    let written = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| {
                let mut reader = match BlobReader::new(repo) {
                    Ok(r) => r,
                    Err(e) => {
                        failed.lock().expect("error").get_or_insert(e);
                        return;
                    }
                };
                loop {
                    if failed.lock().expect("error").is_some() {
                        return;
                    }
                    let Some((id, entry, offs)) = next.lock().expect("jobs").next() else {
                        return;
                    };
                    let r = restore_one(&mut reader, &file, target, &id, &entry, &offs);
                    match r {
                        Ok(w) => {
                            written.fetch_add(w, Ordering::Relaxed);
                            progress.add_done(u64::from(entry.plaintext_len()) * offs.len() as u64);
                        }
                        Err(e) => {
                            failed.lock().expect("error").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("error") {
        return Err(e);
    }
    file.sync_all().map_err(|e| Error::io(target, e))?;
    Ok(RestoreSummary {
        bytes_total: size,
        bytes_written: written.into_inner(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Bytes of a block device written in one go. Large aligned writes are what devices (and loop
/// devices over files) take fastest, and `O_DIRECT` needs the alignment.
const WINDOW: u64 = 8 << 20;
/// Buffer and offset alignment for `O_DIRECT` (a multiple of every logical block size in use).
const ALIGN: usize = 4096;

/// One chunk of the image: which blob, where it is stored, where it goes.
struct Piece {
    id: Id,
    entry: IndexEntry,
    start: u64,
}

impl Piece {
    fn end(&self) -> u64 {
        self.start + u64::from(self.entry.plaintext_len())
    }
}

/// A zeroed buffer of `len` bytes whose start is aligned for `O_DIRECT`.
struct AlignedBuf {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN);
        assert!(at < ALIGN, "cannot align a buffer");
        AlignedBuf { raw, at, len }
    }
    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.at..self.at + len.min(self.len)]
    }
}

/// Opens a block device for writing, checking it holds `size` bytes; with `direct`, bypassing
/// the page cache (`O_DIRECT`).
fn open_device(target: &Path, size: u64, direct: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let mut f = o.open(target).map_err(|e| Error::io(target, e))?;
    let dev_size = f.seek(SeekFrom::End(0)).map_err(|e| Error::io(target, e))?;
    if dev_size < size {
        return Err(Error::Invalid(format!(
            "{}: target is {dev_size} bytes, the image needs {size} (use a larger volume)",
            target.display()
        )));
    }
    Ok(f)
}

/// Restores an image onto a block device in aligned windows of [`WINDOW`] bytes: each worker
/// assembles a whole window from its chunks and writes it with one `O_DIRECT` write (buffered
/// where the device refuses `O_DIRECT` or the window is the unaligned tail). Writing through
/// the page cache instead made a fresh loop device several times slower and charged the dirty
/// pages to the pod's memory. Memory stays bounded (a window per worker, the chunks that cross
/// a window edge until their other window took them, and up to [`REPEAT_BUDGET`] of chunks the
/// image repeats, so that most repeats are not fetched and decrypted again). A window of zeros
/// is zeroed by the device itself where it can (`fallocate` punching a hole: the device's
/// write-zeroes), else written only where the device does not read as zeros already. Returns
/// the bytes written (zeroed windows not counted).
fn restore_device(
    repo: &Repository,
    target: &Path,
    pieces: &[Piece],
    size: u64,
    threads: usize,
    progress: &dyn Progress,
) -> Result<u64> {
    let buffered = open_device(target, size, false)?;
    let direct = open_device(target, size, true).ok();
    let windows = size.div_ceil(WINDOW);
    let next = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    // Chunks needed more than once (crossing a window edge, or repeated): see `Kept`.
    let kept = Mutex::new(Kept::new(pieces));
    let can_zero = std::sync::atomic::AtomicBool::new(true);
    let zero_blobs: Mutex<std::collections::HashSet<Id>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let run = || -> Result<()> {
                    let mut reader = BlobReader::new(repo)?;
                    let mut buf = AlignedBuf::new(WINDOW as usize);
                    let mut check = AlignedBuf::new(WINDOW as usize);
                    loop {
                        if failed.lock().expect("error").is_some() {
                            return Ok(());
                        }
                        let w = next.fetch_add(1, Ordering::Relaxed);
                        if w >= windows {
                            return Ok(());
                        }
                        let (ws, we) = (w * WINDOW, ((w + 1) * WINDOW).min(size));
                        let window = buf.get((we - ws) as usize);
                        // Every byte of the window belongs to one chunk; a window that got
                        // only zero chunks is all zeros.
                        let mut any_data = false;
                        let first = pieces.partition_point(|p| p.end() <= ws);
                        for p in &pieces[first..] {
                            if p.start >= we {
                                break;
                            }
                            if p.end() == p.start {
                                continue;
                            }
                            let (from, to) = (p.start.max(ws), p.end().min(we));
                            let part = (from - p.start) as usize..(to - p.start) as usize;
                            let dst = &mut window[(from - ws) as usize..(to - ws) as usize];
                            let (shared, wanted) = {
                                let mut k = kept.lock().expect("kept chunks");
                                (k.take(&p.id), k.wanted(&p.id))
                            };
                            if zero_blobs.lock().expect("zero blobs").contains(&p.id) {
                                dst.fill(0);
                                continue;
                            }
                            any_data = true;
                            if let Some(d) = shared {
                                dst.copy_from_slice(&d[part]);
                                continue;
                            }
                            let whole = from == p.start && to == p.end();
                            if whole && !wanted {
                                reader.read_entry_into(BlobType::Data, &p.id, &p.entry, dst)?;
                                if is_zero(dst) {
                                    zero_blobs.lock().expect("zero blobs").insert(p.id);
                                }
                                continue;
                            }
                            let data = reader.read_entry(BlobType::Data, &p.id, &p.entry)?;
                            dst.copy_from_slice(&data[part]);
                            if is_zero(data) {
                                zero_blobs.lock().expect("zero blobs").insert(p.id);
                            } else if wanted {
                                kept.lock().expect("kept chunks").offer(p.id, data, !whole);
                            }
                        }
                        let len = window.len();
                        let mut must_write = true;
                        let zeros = !any_data || is_zero(window);
                        if zeros && len.is_multiple_of(ALIGN) && can_zero.load(Ordering::Relaxed) {
                            // The device's own write-zeroes (the kernel never falls back to
                            // writing zero pages here): cheap, and thin-provisioned storage may
                            // satisfy it by unmapping.
                            let mode = rustix::fs::FallocateFlags::PUNCH_HOLE
                                | rustix::fs::FallocateFlags::KEEP_SIZE;
                            match rustix::fs::fallocate(&buffered, mode, ws, len as u64) {
                                Ok(()) => {
                                    progress.add_done(len as u64);
                                    continue;
                                }
                                Err(_) => can_zero.store(false, Ordering::Relaxed),
                            }
                        }
                        if zeros {
                            let old = check.get(len);
                            let dev = direct
                                .as_ref()
                                .filter(|_| len.is_multiple_of(ALIGN))
                                .unwrap_or(&buffered);
                            dev.read_exact_at(old, ws)
                                .map_err(|e| Error::io(target, e))?;
                            must_write = !is_zero(old);
                        }
                        if must_write {
                            let via_direct = direct.as_ref().filter(|_| len.is_multiple_of(ALIGN));
                            let r = match via_direct {
                                Some(d) => d.write_all_at(window, ws).or_else(|e| {
                                    if e.raw_os_error() == Some(libc::EINVAL) {
                                        buffered.write_all_at(window, ws)
                                    } else {
                                        Err(e)
                                    }
                                }),
                                None => buffered.write_all_at(window, ws),
                            };
                            r.map_err(|e| Error::io(target, e))?;
                            written.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        progress.add_done(len as u64);
                    }
                };
                if let Err(e) = run() {
                    failed.lock().expect("error").get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("error") {
        return Err(e);
    }
    if let Some(d) = &direct {
        d.sync_all().map_err(|e| Error::io(target, e))?;
    }
    buffered.sync_all().map_err(|e| Error::io(target, e))?;
    Ok(written.into_inner())
}

/// Decoded chunks the device restore needs again: chunks that cross a window edge (always
/// kept until their other windows took them) and chunks the image repeats (kept while they fit
/// in [`REPEAT_BUDGET`]; past it they are decoded again).
struct Kept {
    /// For each chunk needed more than once: uses left (one per window it lands in).
    left: HashMap<Id, u64>,
    /// Decoded bytes of some of them.
    data: HashMap<Id, std::sync::Arc<Vec<u8>>>,
    /// Bytes in `data`.
    bytes: usize,
}

/// Bytes of repeated chunks the device restore keeps decoded.
const REPEAT_BUDGET: usize = 32 << 20;

impl Kept {
    fn new(pieces: &[Piece]) -> Kept {
        let mut left: HashMap<Id, u64> = HashMap::new();
        for p in pieces.iter().filter(|p| p.end() > p.start) {
            *left.entry(p.id).or_default() += (p.end() - 1) / WINDOW - p.start / WINDOW + 1;
        }
        left.retain(|_, n| *n > 1);
        Kept {
            left,
            data: HashMap::new(),
            bytes: 0,
        }
    }

    /// Counts one use of `id`; its bytes, if kept.
    fn take(&mut self, id: &Id) -> Option<std::sync::Arc<Vec<u8>>> {
        let n = self.left.get_mut(id)?;
        *n -= 1;
        if *n == 0 {
            self.left.remove(id);
            let d = self.data.remove(id)?;
            self.bytes -= d.len();
            return Some(d);
        }
        self.data.get(id).cloned()
    }

    /// Whether `id` is needed again.
    fn wanted(&self, id: &Id) -> bool {
        self.left.contains_key(id)
    }

    /// Keeps the decoded bytes of `id` for its other uses (`must`: it crosses a window edge).
    fn offer(&mut self, id: Id, data: &[u8], must: bool) {
        if self.left.contains_key(&id)
            && !self.data.contains_key(&id)
            && (must || self.bytes + data.len() <= REPEAT_BUDGET)
        {
            self.bytes += data.len();
            self.data.insert(id, std::sync::Arc::new(data.to_vec()));
        }
    }
}

/// Opens (creates or truncates) a regular file as the restore target, `size` bytes long and
/// reading as zeros everywhere. Block devices go to [`restore_device`].
fn open_target(target: &Path, size: u64) -> Result<File> {
    match std::fs::metadata(target) {
        Ok(md) if !md.is_file() => Err(Error::Invalid(format!(
            "{}: not a block device or regular file",
            target.display()
        ))),
        Ok(_) | Err(_) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(target)
                .map_err(|e| Error::io(target, e))?;
            f.set_len(size).map_err(|e| Error::io(target, e))?;
            Ok(f)
        }
    }
}

/// Writes blob `id` at each of `offs` in a fresh target file; a zero chunk is left out (the
/// file reads as zeros there and stays sparse). Returns the bytes written.
fn restore_one(
    reader: &mut BlobReader,
    file: &File,
    target: &Path,
    id: &Id,
    entry: &IndexEntry,
    offs: &[u64],
) -> Result<u64> {
    let data = reader.read_entry(BlobType::Data, id, entry)?;
    if is_zero(data) {
        return Ok(0);
    }
    for &off in offs {
        file.write_all_at(data, off)
            .map_err(|e| Error::io(target, e))?;
    }
    Ok(data.len() as u64 * offs.len() as u64)
}
