//! Block images: backup of a device or file as one file node, and restore onto a device or
//! file.
//!
//! A backup is stored exactly like `restic backup --stdin --stdin-filename NAME`: the root
//! tree holds one `file` node `NAME`, the snapshot's paths are `["/NAME"]`, so
//! `restic dump <snapshot> /NAME > device` restores it too.
//!
//! Backup pipeline: the chunker runs on the calling thread (it is the serial part); every chunk
//! is handed to the [`BlobWriter`]'s workers, which hash, compress and seal in parallel, and
//! packs are uploaded by its upload threads. Restore: a plan of ranged pack reads
//! ([`crate::restore_plan`]), fetched with many requests in flight and decoded on a thread per
//! core ([`crate::pack_reader`]), written front to back ([`crate::image_writer`]). Onto a file,
//! zero chunks are skipped, so a restored file stays sparse; onto a block device, aligned
//! 8 MiB windows are written with one `O_DIRECT` write each, and a window of zeros is zeroed
//! by the device itself where it can, else written only where the device does not read as
//! zeros already.
//!
//! Size: the file node lists every chunk id, 67 bytes of JSON each, and its tree may hold at
//! most [`crate::repo::MAX_TREE_BLOB`] (2 GiB, about 32 million chunks). The chunker cuts a run
//! of zeros every 512 KiB, so a backup lists consecutive zero chunks as one blob of up to
//! [`ZERO_RUN_BLOB`] (8 MiB, the chunker's largest chunk): the format lets a file's chunks be
//! cut anywhere, an empty stretch costs 16 times fewer entries, and the chunks of data around
//! it are cut exactly where restic cuts them. An image whose tree would be larger is refused
//! before its snapshot is written: before it is read when even 8 MiB chunks would be too many
//! for its size (when the size is known), else as soon as its chunks are. That makes about 30 TiB of data at the chunker's 1 MiB
//! average, never less than 15 TiB (every chunk at the 512 KiB minimum); a 64 TiB volume fits
//! with up to about 25 TiB of data in it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::chunker::{Chunker, Pol};
use crate::format::{self, BlobType, Snapshot};
use crate::id::Id;
use crate::image_writer::{DeviceTarget, FileTarget, REORDER_WINDOW, write_in_order};
use crate::index::IndexEntry;
use crate::open_snapshot::{OpenSnapshot, Opening, read_tree};
use crate::pack_reader::{Deliveries, ReaderOptions, read_plan_then};
use crate::packer::{AddResult, BlobWriter, Pending, WriterOptions, is_zero};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore_plan::PlanOptions;
use crate::tree::{Node, NodeType, Tree};
use crate::{Error, Result};

/// The longest run of zero chunks a backup lists as one blob: the chunker's largest chunk.
pub const ZERO_RUN_BLOB: usize = crate::chunker::MAX_SIZE;

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
    /// Chunks the image lists (a run of zero chunks is one, see [`ZERO_RUN_BLOB`]).
    pub chunks: u64,
    /// Chunks that were new.
    pub chunks_new: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Options of [`restore_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Threads that decrypt, decompress and verify blobs (at most one per core is used).
    pub threads: usize,
    /// Pack reads in flight at once (0: the backend's default, see
    /// [`crate::backend::Backend::read_concurrency`]).
    pub read_concurrency: usize,
    /// How pack reads are merged and split.
    pub plan: PlanOptions,
    /// Onto a file: bytes of image ahead of the next unwritten byte that blobs arriving early
    /// are held for, to be written in order (0: each blob is written in its place as it
    /// arrives, out of order; kept to compare the two).
    pub reorder_window: u64,
    /// Bytes of blobs read and not yet written the restore may hold (0: the default,
    /// [`crate::backend::Backend::read_budget`]).
    pub read_budget: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        RestoreOptions {
            threads: cpus.clamp(1, 16),
            read_concurrency: 0,
            plan: PlanOptions::default(),
            reorder_window: REORDER_WINDOW,
            read_budget: 0,
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
    let limit = u64::from(crate::repo::MAX_TREE_BLOB);
    backup_block_within(repo, source, name, opts, progress, limit)
}

/// [`backup_block`] refusing an image whose tree would be larger than `tree_limit` bytes.
fn backup_block_within(
    repo: &Repository,
    source: &mut dyn Read,
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
    tree_limit: u64,
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
    // A source too large even in chunks of the largest size is refused before it is read.
    if let Some(size) = opts.total_size {
        let fewest = size.div_ceil(ZERO_RUN_BLOB as u64);
        if !chunks_may_fit(fewest, tree_limit) {
            return Err(image_too_large(
                name,
                &format!("is {}: too large", format::human_bytes(size)),
                tree_limit,
            ));
        }
    }
    // The index is loaded under the lock: one loaded before it may list packs a prune has
    // since removed, and a blob found there would not be written again.
    let lock = crate::resume::lock_for_backup(repo)?;
    progress.set_total(opts.total_size);
    let started = crate::format::now();

    let writer = BlobWriter::new(repo, opts.writer)?;
    let mut chunker = Chunker::new(source, pol);
    let mut content = Vec::new();
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let mut zeros = ZeroRun::default();
    // A buffer whose chunk was all zeros, for the next chunk (bytes in it need no zeroing).
    let mut spare: Option<Vec<u8>> = None;
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
        let mut buf = spare
            .take()
            .unwrap_or_else(|| writer.take_buffer(crate::chunker::MAX_SIZE));
        let more = chunker
            .next_chunk_into(&mut buf)
            .map_err(|e| Error::Invalid(format!("reading the source of {name}: {e}")))?;
        if !more {
            break;
        }
        total += buf.len() as u64;
        lock.check()?;
        if is_zero(&buf) {
            if zeros.len + buf.len() > ZERO_RUN_BLOB {
                zeros.flush(&writer, &mut pending)?;
            }
            zeros.len += buf.len();
            spare = Some(buf);
        } else {
            zeros.flush(&writer, &mut pending)?;
            pending.push_back(Slot::Pending(writer.submit(BlobType::Data, buf)?));
        }
        while let Some(r) = pending.front().and_then(Slot::try_take) {
            pending.pop_front();
            resolve(r?, &mut content);
        }
        // Every entry adds 67 bytes to the tree: give up as soon as it cannot fit, instead of
        // reading the rest of the volume for nothing.
        let entries = content.len() + pending.len() + usize::from(zeros.len > 0);
        if !chunks_may_fit(entries as u64, tree_limit) {
            return Err(image_too_large(
                name,
                &format!(
                    "has at least {entries} chunks in its first {}: too many",
                    format::human_bytes(total)
                ),
                tree_limit,
            ));
        }
    }
    zeros.flush(&writer, &mut pending)?;
    drop(spare);
    for p in pending {
        resolve(p.wait()?, &mut content);
    }

    let now = crate::format::now();
    let chunks = content.len() as u64;
    let mut node = Node::new(name, NodeType::File);
    node.mode = 0o644;
    node.mtime = now;
    node.atime = now;
    node.ctime = now;
    node.uid = rustix::process::getuid().as_raw();
    node.gid = rustix::process::getgid().as_raw();
    node.size = total;
    node.content = content;
    let blob = Tree::from_nodes(vec![node])?.to_blob();
    if blob.len() as u64 > tree_limit {
        return Err(image_too_large(
            name,
            &format!("has {chunks} chunks: too many"),
            tree_limit,
        ));
    }
    let tree_id = writer.add(BlobType::Tree, blob)?.id;
    progress.message("writing index");
    // The index and the snapshot refer to every pack written so far: a lost lock means a
    // prune may have removed some of them. `finish` looks before each index file it writes.
    lock.check()?;
    let stats = writer.finish(&lock)?;

    let mut snap = Snapshot::new(tree_id, vec![format!("/{name}")]);
    snap.time = started;
    if !opts.hostname.is_empty() {
        snap.hostname = opts.hostname.clone();
    }
    snap.tags = opts.tags.clone();
    snap.parent = opts.parent;
    snap.volbackup = opts.description.clone();
    lock.check()?;
    let snapshot_id = repo.save_snapshot(&snap)?;
    Ok(BackupSummary {
        snapshot_id,
        bytes_total: total,
        bytes_new,
        bytes_stored: stats.bytes_stored,
        chunks,
        chunks_new,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A content entry of an image still being stored, or one known already.
enum Slot {
    Pending(Pending),
    Known(AddResult),
}

impl Slot {
    fn try_take(&self) -> Option<Result<AddResult>> {
        match self {
            Slot::Pending(p) => p.try_take(),
            Slot::Known(r) => Some(Ok(*r)),
        }
    }

    fn wait(self) -> Result<AddResult> {
        match self {
            Slot::Pending(p) => p.wait(),
            Slot::Known(r) => Ok(r),
        }
    }
}

/// Zero chunks read and not yet listed, and the ids of the zero blobs this backup stored.
#[derive(Default)]
struct ZeroRun {
    len: usize,
    ids: HashMap<usize, Id>,
}

impl ZeroRun {
    /// Lists the zeros read so far as one blob: stored the first time a run of its length
    /// occurs, known from then on.
    fn flush(&mut self, writer: &BlobWriter, pending: &mut VecDeque<Slot>) -> Result<()> {
        let n = std::mem::take(&mut self.len);
        if n == 0 {
            return Ok(());
        }
        let slot = match self.ids.get(&n) {
            Some(&id) => Slot::Known(AddResult {
                id,
                len: n as u64,
                new: false,
                stored_len: 0,
            }),
            None => {
                let mut z = writer.take_buffer(n);
                z.clear();
                z.resize(n, 0);
                self.ids.insert(n, Id::hash(&z));
                Slot::Pending(writer.submit(BlobType::Data, z)?)
            }
        };
        pending.push_back(slot);
        Ok(())
    }
}

/// Whether a file node listing `chunks` content ids may fit a tree of `limit` bytes: each id
/// takes 67 bytes of JSON (64 hex digits, two quotes, a comma; the last has no comma).
fn chunks_may_fit(chunks: u64, limit: u64) -> bool {
    chunks.saturating_mul(67).saturating_sub(1) <= limit
}

/// The most content ids a file node may list within a tree of `limit` bytes (the other
/// fields of the node take a few hundred bytes).
fn max_image_chunks(limit: u64) -> u64 {
    (limit + 1) / 67
}

/// The error of an image whose tree would be larger than `limit`: `what` says why.
fn image_too_large(name: &str, what: &str, limit: u64) -> Error {
    Error::Invalid(format!(
        "{name} {what} for one image, whose tree lists every chunk and may hold \
         {} (at most {} chunks, about {} of data; zeros take 8 MiB a chunk); no snapshot was \
         written",
        format::human_bytes(limit),
        max_image_chunks(limit),
        format::human_bytes(max_image_chunks(limit) << 20),
    ))
}

/// The file node of a block snapshot: `path` (`/NAME`, or nested), or, when `None`, the
/// snapshot's only file.
pub fn find_image_node(repo: &Repository, snap: &Snapshot, path: Option<&str>) -> Result<Node> {
    let root = read_tree(repo, &snap.tree)?;
    image_node(repo, &root, snap, path).map(Cow::into_owned)
}

/// [`find_image_node`] with the snapshot's root tree already read. A node of the root is
/// borrowed, not copied: an image's node holds its whole chunk list.
fn image_node<'a>(
    repo: &Repository,
    root: &'a Tree,
    snap: &Snapshot,
    path: Option<&str>,
) -> Result<Cow<'a, Node>> {
    let Some(path) = path else {
        let files: Vec<&Node> = root
            .nodes
            .iter()
            .filter(|n| n.node_type == NodeType::File)
            .collect();
        return match files.as_slice() {
            [n] if root.nodes.len() == 1 => Ok(Cow::Borrowed(*n)),
            _ => Err(Error::Invalid(format!(
                "snapshot of {} is not a single block image: name the file to restore",
                snap.paths.join(", ")
            ))),
        };
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || Error::Invalid(format!("{path} is not in the snapshot"));
    let (last, dirs) = parts.split_last().ok_or_else(not_found)?;
    let mut sub: Option<Tree> = None;
    for part in dirs {
        let tree = sub.as_ref().unwrap_or(root);
        let node = tree.find(OsStr::new(part)).ok_or_else(not_found)?;
        let id = node.subtree.ok_or_else(not_found)?;
        sub = Some(read_tree(repo, &id)?);
    }
    let node = match sub {
        None => Cow::Borrowed(root.find(OsStr::new(last)).ok_or_else(not_found)?),
        Some(tree) => Cow::Owned(
            tree.nodes
                .into_iter()
                .find(|n| n.name_bytes() == last.as_bytes())
                .ok_or_else(not_found)?,
        ),
    };
    if node.node_type != NodeType::File {
        return Err(Error::Invalid(format!(
            "{path} in the snapshot is not a file"
        )));
    }
    Ok(node)
}

/// Restores a block image from `snapshot` onto `target` (a block device, or a regular file
/// which is created or truncated). `path` names the file in the snapshot (`/NAME`); `None`
/// takes the snapshot's only file. Begins opening the snapshot ([`Opening`]) and calls
/// [`restore_opening`].
pub fn restore_block(
    repo: &Repository,
    snapshot: &Id,
    path: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let opening = Opening::begin(repo, &snapshot.to_hex())?;
    let mut summary = restore_opening(repo, opening, path, target, opts, progress)?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Restores the block image `path` (`None`: the only file) of an opened snapshot onto
/// `target` (a block device, or a regular file which is created or truncated).
pub fn restore_image(
    repo: &Repository,
    open: &OpenSnapshot,
    path: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let (plan, size) = image_plan(repo, &open.root, &open.snapshot, &open.id, path, &opts.plan)?;
    progress.set_total(Some(size));
    // Once every pack read has arrived the repository is done with: the lock goes while the
    // last blobs are decoded and written.
    let all_read = || open.lock().release();
    let written = read_plan_then(repo, &plan, &reader_options(repo, opts), &all_read, |d| {
        write_image(target, size, &plan, d, opts, progress)
    })?;
    Ok(RestoreSummary {
        bytes_total: size,
        bytes_written: written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Restores the block image `path` (`None`: the only file) of a snapshot whose lock is still
/// being taken. The pack reads are planned from the index loaded before the lock and started
/// at once, a round trip earlier than [`restore_image`] would; the target is opened and
/// written only once [`Opening::confirm`] says the lock is held and the index unchanged. Had
/// the index changed (a prune ended just before the lock was written), the reads made are
/// dropped and the restore is planned again under the lock, which stays until the last read
/// of the new plan has arrived (an early read that arrives late does not release it). A lock
/// that cannot be taken fails the restore before anything is written.
pub fn restore_opening(
    repo: &Repository,
    opening: Opening,
    path: Option<&str>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let early = opening.root().and_then(|root| {
        image_plan(repo, root, &opening.snapshot, &opening.id, path, &opts.plan).ok()
    });
    // Without an early plan (the early index did not name the tree, or the image is not
    // there: the error is reported from under the lock), the restore starts once it is held.
    let Some((plan, size)) = early else {
        let (open, _) = opening.confirm()?;
        return restore_image(repo, &open, path, target, opts, progress);
    };
    // The opening confirmed, and whether the index changed before its lock was taken.
    let confirmed = std::sync::OnceLock::<(OpenSnapshot, bool)>::new();
    // The lock goes with this plan's last read only if this plan is the one written: one
    // planned again reads on under the same lock after these reads end, late ones included.
    let all_read = || {
        if let Some((open, false)) = confirmed.get() {
            open.lock().release();
        }
    };
    let written = read_plan_then(repo, &plan, &reader_options(repo, opts), &all_read, |d| {
        let (open, changed) = opening.confirm()?;
        let _ = confirmed.set((open, changed));
        if changed {
            return Ok(None);
        }
        progress.set_total(Some(size));
        write_image(target, size, &plan, d, opts, progress).map(Some)
    })?;
    let (open, _) = confirmed
        .into_inner()
        .expect("confirmed before anything is written");
    // A plan made again is not made beside this one: it can be large for a large image.
    drop(plan);
    let bytes_written = match written {
        Some(written) => written,
        None => restore_image(repo, &open, path, target, opts, progress)?.bytes_written,
    };
    Ok(RestoreSummary {
        bytes_total: size,
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The reader settings of a restore with `opts`.
fn reader_options(repo: &Repository, opts: &RestoreOptions) -> ReaderOptions {
    let mut reader = ReaderOptions::for_repository(repo);
    if opts.read_concurrency > 0 {
        reader.read_concurrency = opts.read_concurrency;
    }
    reader.decode_threads = opts.threads.clamp(1, reader.decode_threads);
    if opts.read_budget > 0 {
        reader.budget = opts.read_budget;
    }
    reader
}

/// Opens `target` (a block device, or a regular file which is created or truncated) for an
/// image of `size` bytes and writes the deliveries of `plan` onto it in order. Returns the
/// bytes written.
fn write_image(
    target: &Path,
    size: u64,
    plan: &crate::restore_plan::Plan,
    deliveries: &Deliveries,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<u64> {
    if std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device()) {
        let mut device = DeviceTarget::open(target, size)?;
        write_in_order(&mut device, plan, deliveries, REORDER_WINDOW, progress)
    } else {
        let file = open_target(target, size)?;
        let mut file = FileTarget::new(&file, target);
        write_in_order(&mut file, plan, deliveries, opts.reorder_window, progress)
    }
}

/// The restore plan of the image `path` (`None`: the only file) in snapshot `snapshot` (`id`)
/// with root tree `root`, and the image's size.
fn image_plan(
    repo: &Repository,
    root: &Tree,
    snap: &Snapshot,
    snapshot: &Id,
    path: Option<&str>,
    opts: &PlanOptions,
) -> Result<(crate::restore_plan::Plan, u64)> {
    let (content, size) = image_chunks(repo, root, snap, snapshot, path)?;
    Ok((crate::restore_plan::plan(&content, opts), size))
}

/// The chunks of the image `path` (`None`: the only file) in snapshot `snapshot` (`id`) with
/// root tree `root`, in order, each with where it is stored, and the image's size.
fn image_chunks(
    repo: &Repository,
    root: &Tree,
    snap: &Snapshot,
    snapshot: &Id,
    path: Option<&str>,
) -> Result<(Vec<(Id, IndexEntry)>, u64)> {
    let node = image_node(repo, root, snap, path)?;
    let index = repo.index();

    // Where every chunk is stored, from the index alone.
    let mut content: Vec<(Id, IndexEntry)> = Vec::with_capacity(node.content.len());
    let mut size = 0u64;
    for id in &node.content {
        let e = *index
            .get(BlobType::Data, id)
            .ok_or_else(|| Error::NotIndexed {
                what: format!("data blob {id} of snapshot {}", snapshot.short()),
                location: repo.location(),
            })?;
        content.push((*id, e));
        size += u64::from(e.plaintext_len());
    }
    if size != node.size {
        return Err(Error::Corrupt {
            what: format!("snapshot {}", snapshot.short()),
            message: format!(
                "chunks add up to {size} bytes but the file node says {}",
                node.size
            ),
        });
    }
    Ok((content, size))
}

/// The pack reads a restore of the image `path` in `snapshot` onto a file would make, without
/// making them (`mover restore --dry-run`).
pub fn plan_block_restore(
    repo: &Repository,
    snapshot: &Id,
    path: Option<&str>,
    opts: &PlanOptions,
) -> Result<crate::restore_plan::Plan> {
    let open = OpenSnapshot::open(repo, &snapshot.to_hex())?;
    plan_image_restore(repo, &open, path, opts)
}

/// [`plan_block_restore`] of an opened snapshot.
pub fn plan_image_restore(
    repo: &Repository,
    open: &OpenSnapshot,
    path: Option<&str>,
    opts: &PlanOptions,
) -> Result<crate::restore_plan::Plan> {
    Ok(image_plan(repo, &open.root, &open.snapshot, &open.id, path, opts)?.0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileType;
    use crate::backend::local::LocalBackend;
    use crate::progress::NoProgress;
    use crate::repo::InitOptions;

    fn repo(dir: &Path) -> Repository {
        let opts = InitOptions {
            kdf: crate::crypto::KdfParams::insecure_fast(),
            polynomial: None,
        };
        Repository::init(std::sync::Arc::new(LocalBackend::new(dir)), "pw", &opts).unwrap()
    }

    /// `len` pseudo-random bytes, counting how many were read.
    struct Noise {
        x: u64,
        left: u64,
        read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Noise {
        fn new(len: u64) -> (Noise, std::sync::Arc<std::sync::atomic::AtomicU64>) {
            let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let n = Noise {
                x: 0x9E37_79B9_7F4A_7C15,
                left: len,
                read: read.clone(),
            };
            (n, read)
        }
    }

    impl Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.left as usize);
            for c in buf[..n].chunks_mut(8) {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                c.copy_from_slice(&self.x.to_le_bytes()[..c.len()]);
            }
            self.left -= n as u64;
            self.read
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    fn snapshots(repo: &Repository) -> usize {
        repo.list_ids(FileType::Snapshot).unwrap().len()
    }

    #[test]
    fn zero_chunks_are_listed_as_blobs_of_up_to_8_mib() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let mut image = vec![0u8; 3 * ZERO_RUN_BLOB + (5 << 19)];
        image.extend((0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        image.extend(vec![0u8; 1 << 20]);
        let sum = backup_block(
            &repo,
            &mut &image[..],
            "disk.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
        let snap: Snapshot = repo
            .load_unpacked(FileType::Snapshot, &sum.snapshot_id)
            .unwrap();
        let node = find_image_node(&repo, &snap, None).unwrap();
        let lens: Vec<u32> = node
            .content
            .iter()
            .map(|id| repo.blob_entry(BlobType::Data, id).unwrap().plaintext_len())
            .collect();
        let z = ZERO_RUN_BLOB as u32;
        assert_eq!(lens[..4], [z, z, z, 5 << 19], "{lens:?}");
        assert_eq!(node.content[0], node.content[1]);
        assert_eq!(node.content[1], node.content[2]);
        assert_eq!(sum.chunks, lens.len() as u64);
        assert!(lens.len() < 12, "{lens:?}");
        let restored = dir.path().join("out.img");
        restore_block(
            &repo,
            &sum.snapshot_id,
            None,
            &restored,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert!(std::fs::read(&restored).unwrap() == image);
        // Once more: every entry, zero runs too, is found.
        let again = backup_block(
            &repo,
            &mut &image[..],
            "disk.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!((again.chunks_new, again.chunks), (0, sum.chunks));
    }

    #[test]
    fn an_image_too_large_for_its_tree_is_refused_before_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let total = 256u64 << 20;
        let (mut source, read) = Noise::new(total);
        // Room for ten chunk ids.
        let limit = 10 * 67 + 200;
        let e = backup_block_within(
            &repo,
            &mut source,
            "disk.img",
            &BackupOptions::default(),
            &NoProgress,
            limit,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("disk.img has at least 14 chunks in its first"),
            "{e}"
        );
        assert!(e.contains("no snapshot was written"), "{e}");
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(read < total / 4, "read {read} of {total} bytes");
        assert_eq!(snapshots(&repo), 0);
        assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
    }

    #[test]
    fn a_source_too_large_even_in_8_mib_chunks_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let (mut source, read) = Noise::new(1 << 30);
        let opts = BackupOptions {
            total_size: Some(101 * ZERO_RUN_BLOB as u64),
            ..Default::default()
        };
        let e = backup_block_within(&repo, &mut source, "d.img", &opts, &NoProgress, 100 * 67)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("d.img is 808.0 MiB: too large for one image"),
            "{e}"
        );
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(snapshots(&repo), 0);
    }

    #[test]
    fn the_whole_tree_is_measured_against_the_limit_not_only_its_chunk_ids() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path());
        let image = vec![0u8; 3 * ZERO_RUN_BLOB];
        let sum = backup_block(
            &repo,
            &mut &image[..],
            "z.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(sum.chunks, 3);
        let snap: Snapshot = repo
            .load_unpacked(FileType::Snapshot, &sum.snapshot_id)
            .unwrap();
        let len = u64::from(
            repo.blob_entry(BlobType::Tree, &snap.tree)
                .unwrap()
                .plaintext_len(),
        );
        // Three ids pass the count (3 * 67 - 1 bytes), the node around them does not. (The
        // times of another backup may be up to 30 bytes shorter or longer.)
        assert!(len > 3 * 67 + 100, "{len}");
        let e = backup_block_within(
            &repo,
            &mut &image[..],
            "z.img",
            &BackupOptions::default(),
            &NoProgress,
            len - 40,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("z.img has 3 chunks: too many for one image"),
            "{e}"
        );
        assert_eq!(snapshots(&repo), 1);
        backup_block_within(
            &repo,
            &mut &image[..],
            "z.img",
            &BackupOptions::default(),
            &NoProgress,
            len + 40,
        )
        .unwrap();
        assert_eq!(snapshots(&repo), 2);
    }
}
