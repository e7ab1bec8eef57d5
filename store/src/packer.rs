//! Writing blobs into packs: dedup, compress, seal, pack, upload, index.
//!
//! A [`BlobWriter`] is shared by the threads of one backup. Blobs go through
//! hash -> dedup (against the loaded index and against blobs already written or in flight) ->
//! zstd -> seal -> the open pack of their type. A pack that reaches the target size is handed to
//! a small pool of upload threads. Data packs are built in a fixed set of `upload_threads + 1`
//! buffers; starting a new pack waits for a free one, so memory stays bounded.
//! [`BlobWriter::finish`] flushes the open packs, waits for every upload and only then writes
//! the index file(s), each only while the writer's lock is still held: an upload may stall
//! past the age at which others call the lock stale, and a prune may have removed the packs
//! the index would name.
//!
//! Two ways in: [`BlobWriter::add`] does the work on the calling thread;
//! [`BlobWriter::submit`] queues it for the writer's worker threads and returns at once
//! (blocking only when the queue is full), so a serial producer such as the chunker never
//! waits for compression.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::Serialize;

use crate::backend::FileType;
use crate::format::{self, BlobType, IndexFile, IndexPack, PackedBlob};
use crate::id::Id;
use crate::index::Index;
use crate::lock::LockGuard;
use crate::repo::Repository;
use crate::{Error, Result};

/// restic closes an index file at about this many blobs; so do we.
pub const INDEX_BLOBS_PER_FILE: usize = 50_000;

/// Default target pack size (restic's default).
pub const DEFAULT_PACK_SIZE: usize = 16 << 20;

/// Settings of a [`BlobWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// zstd level for blobs (default 3); 0 stores blobs uncompressed.
    pub compression_level: i32,
    /// Threads that hash, compress and seal submitted blobs (default: number of CPUs).
    pub workers: usize,
    /// Packs uploaded in parallel (0, the default: the backend's
    /// [`crate::backend::Backend::write_concurrency`], 1 for a directory and 2 for S3).
    pub upload_threads: usize,
    /// A pack is closed once it reaches this size (default 16 MiB; restic accepts 4–128 MiB).
    pub pack_size: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression_level: 3,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            upload_threads: 0,
            pack_size: DEFAULT_PACK_SIZE,
        }
    }
}

/// What happened to one added blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddResult {
    /// The blob id (SHA-256 of the data).
    pub id: Id,
    /// Plaintext length.
    pub len: u64,
    /// Whether this call stored it (false: it was already in the repository or in flight).
    pub new: bool,
    /// Bytes it takes in its pack (sealed, maybe compressed); 0 when not new.
    pub stored_len: u64,
}

/// Totals of a writer, returned by [`BlobWriter::finish`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteStats {
    /// Blobs stored.
    pub blobs_new: u64,
    /// Plaintext bytes of the blobs stored.
    pub bytes_new: u64,
    /// Bytes added to packs for them (after compression and sealing).
    pub bytes_stored: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Bytes of packs uploaded (blobs, headers).
    pub pack_bytes: u64,
    /// Index files written.
    pub index_files: Vec<Id>,
}

/// A blob queued with [`BlobWriter::submit`]; resolves to its [`AddResult`].
#[derive(Debug)]
pub struct Pending {
    rx: Receiver<Result<AddResult>>,
}

impl Pending {
    /// Waits for the blob to be processed.
    pub fn wait(self) -> Result<AddResult> {
        self.rx.recv().unwrap_or_else(|_| {
            Err(Error::Invalid(
                "blob writer stopped before processing a blob".into(),
            ))
        })
    }

    /// The result if the blob has been processed already.
    pub fn try_take(&self) -> Option<Result<AddResult>> {
        self.rx.try_recv().ok()
    }
}

struct Job {
    t: BlobType,
    data: Vec<u8>,
    reply: Sender<Result<AddResult>>,
}

/// Per-thread scratch space: a zstd context and a reusable output buffer.
struct Scratch {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    compressed: Vec<u8>,
}

impl Scratch {
    fn new(level: i32) -> Result<Scratch> {
        let compressor = if level == 0 {
            None
        } else {
            Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| Error::Invalid(format!("zstd level {level}: {e}")))?,
            )
        };
        Ok(Scratch {
            compressor,
            compressed: Vec::new(),
        })
    }
}

#[derive(Default)]
struct OpenPack {
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
    pooled: bool,
}

struct FinishedPack {
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
    /// The buffer came from the data-pack pool and goes back there after the upload.
    pooled: bool,
}

struct Shared {
    repo: Repository,
    index: Arc<Index>,
    known: Mutex<HashSet<(BlobType, Id)>>,
    open: [Mutex<OpenPack>; 2],
    upload_tx: Mutex<Option<Sender<FinishedPack>>>,
    written: Mutex<Vec<IndexPack>>,
    error: Mutex<Option<Error>>,
    scratch_pool: Mutex<Vec<Scratch>>,
    /// Buffers for data packs: a fixed number, so at most that many data packs are in memory
    /// (one filling, the rest queued or uploading).
    pack_buf_tx: Sender<Vec<u8>>,
    pack_buf_rx: Receiver<Vec<u8>>,
    data_pool: Mutex<Vec<Vec<u8>>>,
    zero_ids: Mutex<std::collections::HashMap<usize, Id>>,
    opts: WriterOptions,
    blobs_new: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
    packs: AtomicU64,
    pack_bytes: AtomicU64,
}

/// Writes blobs into packs. See the module docs.
pub struct BlobWriter {
    shared: Arc<Shared>,
    job_tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    uploaders: Vec<JoinHandle<()>>,
}

fn slot(t: BlobType) -> usize {
    match t {
        BlobType::Data => 0,
        BlobType::Tree => 1,
    }
}

impl BlobWriter {
    /// A writer for `repo`, deduplicating against the repository's loaded index.
    pub fn new(repo: &Repository, opts: WriterOptions) -> Result<BlobWriter> {
        let opts = WriterOptions {
            // Format version 1 knows no compressed blobs.
            compression_level: if repo.config().version < 2 {
                0
            } else {
                opts.compression_level
            },
            workers: opts.workers.max(1),
            upload_threads: match opts.upload_threads {
                0 => repo.backend().write_concurrency(),
                n => n,
            }
            .max(1),
            pack_size: opts.pack_size.clamp(64 << 10, 128 << 20),
        };
        // Fail early on a bad level.
        let first = Scratch::new(opts.compression_level)?;
        // Rendezvous channel: a full pack waits for a free uploader, bounding memory.
        let (upload_tx, upload_rx) = crossbeam_channel::unbounded::<FinishedPack>();
        let pack_buffers = opts.upload_threads + 1;
        let (pack_buf_tx, pack_buf_rx) = bounded::<Vec<u8>>(pack_buffers);
        for _ in 0..pack_buffers {
            pack_buf_tx.send(Vec::new()).expect("channel has room");
        }
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            index: repo.index(),
            known: Mutex::new(HashSet::new()),
            open: [
                Mutex::new(OpenPack::default()),
                Mutex::new(OpenPack::default()),
            ],
            upload_tx: Mutex::new(Some(upload_tx)),
            written: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            scratch_pool: Mutex::new(vec![first]),
            pack_buf_tx,
            pack_buf_rx,
            data_pool: Mutex::new(Vec::new()),
            zero_ids: Mutex::new(std::collections::HashMap::new()),
            opts,
            blobs_new: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            packs: AtomicU64::new(0),
            pack_bytes: AtomicU64::new(0),
        });
        let mut uploaders = Vec::new();
        for i in 0..opts.upload_threads {
            let s = shared.clone();
            let rx = upload_rx.clone();
            uploaders.push(
                std::thread::Builder::new()
                    .name(format!("upload-{i}"))
                    .spawn(move || upload_loop(&s, &rx))
                    .map_err(|e| Error::Invalid(format!("cannot start upload thread: {e}")))?,
            );
        }
        let (job_tx, job_rx) = bounded::<Job>(opts.workers);
        let mut workers = Vec::new();
        for i in 0..opts.workers {
            let s = shared.clone();
            let rx = job_rx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("blob-{i}"))
                    .spawn(move || worker_loop(&s, &rx))
                    .map_err(|e| Error::Invalid(format!("cannot start worker thread: {e}")))?,
            );
        }
        Ok(BlobWriter {
            shared,
            job_tx: Some(job_tx),
            workers,
            uploaders,
        })
    }

    /// The repository written to.
    pub fn repo(&self) -> &Repository {
        &self.shared.repo
    }

    /// Stores a blob unless it is already stored or in flight; the work runs on the calling
    /// thread. Thread-safe.
    pub fn add(&self, t: BlobType, data: Vec<u8>) -> Result<AddResult> {
        self.shared.check_error()?;
        let mut scratch = self.shared.take_scratch()?;
        let r = self.shared.process(t, &data, &mut scratch);
        self.shared.scratch_pool.lock().expect("pool").push(scratch);
        r
    }

    /// Queues a blob for the worker threads and returns without waiting for it (blocks only
    /// while the queue is full). The [`Pending`] yields the result.
    pub fn submit(&self, t: BlobType, data: Vec<u8>) -> Result<Pending> {
        self.shared.check_error()?;
        let (reply, rx) = bounded(1);
        self.job_tx
            .as_ref()
            .expect("writer is running")
            .send(Job { t, data, reply })
            .map_err(|_| Error::Invalid("blob writer workers stopped".into()))?;
        Ok(Pending { rx })
    }

    /// An empty buffer with room for `capacity` bytes for the next blob's data, recycled from
    /// blobs already processed: a producer that fills it up to `capacity` never reallocates
    /// and never faults in fresh memory for every chunk. (Room that is never written costs
    /// address space, not memory.)
    pub fn take_buffer(&self, capacity: usize) -> Vec<u8> {
        let mut b = self
            .shared
            .data_pool
            .lock()
            .expect("pool")
            .pop()
            .unwrap_or_default();
        b.reserve(capacity);
        b
    }

    /// Totals so far.
    pub fn stats(&self) -> WriteStats {
        self.shared.stats()
    }

    /// Writes the open packs, waits for all uploads, then writes the index file(s) and adds
    /// them to the repository's in-memory index. Call it before saving a snapshot that
    /// refers to the blobs. Each index file is written only if `lock` is not lost
    /// ([`LockGuard::check`]), else [`Error::LockLost`].
    pub fn finish(mut self, lock: &LockGuard) -> Result<WriteStats> {
        self.stop_workers();
        for t in [BlobType::Data, BlobType::Tree] {
            let pack = std::mem::take(&mut *self.shared.open[slot(t)].lock().expect("pack"));
            if !pack.blobs.is_empty() {
                self.shared.send_pack(pack)?;
            }
        }
        self.stop_uploaders();
        self.shared.check_error()?;
        let packs = std::mem::take(&mut *self.shared.written.lock().expect("written"));
        let mut stats = self.shared.stats();
        let mut file = IndexFile::default();
        let mut count = 0usize;
        let mut files = Vec::new();
        for p in packs {
            count += p.blobs.len();
            file.packs.push(p);
            if count >= INDEX_BLOBS_PER_FILE {
                files.push(std::mem::take(&mut file));
                count = 0;
            }
        }
        if !file.packs.is_empty() {
            files.push(file);
        }
        for f in files {
            // The uploads may have taken long enough for the lock to be lost meanwhile.
            lock.check()?;
            let id = self.shared.repo.save_unpacked(FileType::Index, &f)?;
            self.shared.repo.add_to_index(&f);
            stats.index_files.push(id);
        }
        Ok(stats)
    }

    fn stop_workers(&mut self) {
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn stop_uploaders(&mut self) {
        *self.shared.upload_tx.lock().expect("upload sender") = None;
        for u in self.uploaders.drain(..) {
            let _ = u.join();
        }
    }
}

impl Drop for BlobWriter {
    /// Without `finish`, nothing is indexed: uploaded packs stay unreferenced until prune.
    fn drop(&mut self) {
        self.stop_workers();
        self.stop_uploaders();
    }
}

fn worker_loop(shared: &Shared, rx: &Receiver<Job>) {
    let mut scratch = match Scratch::new(shared.opts.compression_level) {
        Ok(s) => s,
        Err(e) => {
            shared.set_error(e);
            for job in rx.iter() {
                let _ = job
                    .reply
                    .send(shared.check_error().map(|()| AddResult::default()));
            }
            return;
        }
    };
    for job in rx.iter() {
        let r = shared
            .check_error()
            .and_then(|()| shared.process(job.t, &job.data, &mut scratch));
        shared.recycle(job.data);
        let _ = job.reply.send(r);
    }
}

fn upload_loop(shared: &Shared, rx: &Receiver<FinishedPack>) {
    for pack in rx.iter() {
        if shared.error.lock().expect("error").is_some() {
            continue;
        }
        let id = Id::hash(&pack.data);
        let len = pack.data.len() as u64;
        match shared
            .repo
            .backend()
            .write_hashed(FileType::Pack, &id, &pack.data)
        {
            Ok(()) => {
                shared.packs.fetch_add(1, Ordering::Relaxed);
                shared.pack_bytes.fetch_add(len, Ordering::Relaxed);
                shared.written.lock().expect("written").push(IndexPack {
                    id,
                    blobs: pack.blobs.iter().map(PackedBlob::to_index_blob).collect(),
                });
            }
            Err(e) => shared.set_error(e),
        }
        if pack.pooled {
            let mut b = pack.data;
            b.clear();
            let _ = shared.pack_buf_tx.send(b);
        }
    }
}

impl Shared {
    fn check_error(&self) -> Result<()> {
        match &*self.error.lock().expect("error") {
            None => Ok(()),
            Some(e) => Err(clone_error(e)),
        }
    }

    fn set_error(&self, e: Error) {
        let mut g = self.error.lock().expect("error");
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn recycle(&self, mut data: Vec<u8>) {
        // Every buffer handed out comes back here, so the pool never holds more than the
        // most blobs ever in flight at once; keeping them avoids allocator churn, which
        // costs more resident memory (fragmented arenas) than the buffers themselves.
        let mut pool = self.data_pool.lock().expect("pool");
        if pool.len() < 2 * self.opts.workers + 4 {
            data.clear();
            pool.push(data);
        }
    }

    fn take_scratch(&self) -> Result<Scratch> {
        match self.scratch_pool.lock().expect("pool").pop() {
            Some(s) => Ok(s),
            None => Scratch::new(self.opts.compression_level),
        }
    }

    fn stats(&self) -> WriteStats {
        WriteStats {
            blobs_new: self.blobs_new.load(Ordering::Relaxed),
            bytes_new: self.bytes_new.load(Ordering::Relaxed),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
            packs: self.packs.load(Ordering::Relaxed),
            pack_bytes: self.pack_bytes.load(Ordering::Relaxed),
            index_files: Vec::new(),
        }
    }

    fn process(&self, t: BlobType, data: &[u8], s: &mut Scratch) -> Result<AddResult> {
        // What a reader would refuse is not written (callers refuse with a better message
        // first; this keeps any other writer from storing a blob nobody can read back).
        let max = crate::repo::max_blob_len(t);
        if data.len() as u64 > u64::from(max) {
            return Err(Error::Invalid(format!(
                "a {t} blob of {} bytes is larger than the {} any {t} blob may be; not written",
                data.len(),
                format::human_bytes(u64::from(max))
            )));
        }
        // Volumes are full of zeros: an all-zero chunk of a length seen before has a known id.
        // Checking is memory-speed and stops at the first non-zero page.
        let id = if is_zero(data) {
            *self
                .zero_ids
                .lock()
                .expect("zero ids")
                .entry(data.len())
                .or_insert_with(|| Id::hash(data))
        } else {
            Id::hash(data)
        };
        let len = data.len() as u64;
        let dup = AddResult {
            id,
            len,
            new: false,
            stored_len: 0,
        };
        if self.index.has(t, &id) || !self.known.lock().expect("known").insert((t, id)) {
            return Ok(dup);
        }
        let r = self.store(t, id, data, s);
        if r.is_err() {
            self.known.lock().expect("known").remove(&(t, id));
        }
        r
    }

    fn store(&self, t: BlobType, id: Id, data: &[u8], s: &mut Scratch) -> Result<AddResult> {
        let mut uncompressed_length = None;
        let mut plain = data;
        if let Some(c) = s.compressor.as_mut()
            && !data.is_empty()
        {
            s.compressed.clear();
            s.compressed
                .reserve(zstd::zstd_safe::compress_bound(data.len()));
            c.compress_to_buffer(data, &mut s.compressed)
                .map_err(|e| Error::Invalid(format!("zstd compression failed: {e}")))?;
            if s.compressed.len() < data.len() {
                plain = &s.compressed;
                uncompressed_length = Some(
                    u32::try_from(data.len())
                        .map_err(|_| Error::Invalid("blob larger than 4 GiB".into()))?,
                );
            }
        }
        let (full, stored_len) = {
            let mut open = self.open[slot(t)].lock().expect("pack");
            if open.data.capacity() == 0 && t == BlobType::Data {
                // Waits while all data-pack buffers are queued or uploading.
                open.data = self
                    .pack_buf_rx
                    .recv()
                    .map_err(|_| Error::Invalid("blob writer is finished".into()))?;
                open.pooled = true;
                // Untouched capacity costs address space, not memory.
                open.data.reserve(self.opts.pack_size + (1 << 20));
            }
            let offset = open.data.len() as u32;
            // Sealing straight into the pack saves a copy and a buffer per worker.
            self.repo.key().seal_into(plain, &mut open.data);
            let stored_len = (open.data.len() - offset as usize) as u64;
            open.blobs.push(PackedBlob {
                blob_type: t,
                id,
                offset,
                length: stored_len as u32,
                uncompressed_length,
            });
            let full = if open.data.len() >= self.opts.pack_size {
                Some(std::mem::take(&mut *open))
            } else {
                None
            };
            (full, stored_len)
        };
        if s.compressed.capacity() > 64 << 20 {
            // A large tree's room is not kept for the blobs of a few MiB that follow.
            s.compressed = Vec::new();
        }
        self.blobs_new.fetch_add(1, Ordering::Relaxed);
        self.bytes_new
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.bytes_stored.fetch_add(stored_len, Ordering::Relaxed);
        if let Some(pack) = full {
            self.send_pack(pack)?;
        }
        Ok(AddResult {
            id,
            len: data.len() as u64,
            new: true,
            stored_len,
        })
    }

    /// Appends the sealed header and hands the pack to an uploader (waits for a free one).
    fn send_pack(&self, mut pack: OpenPack) -> Result<()> {
        let header = format::encode_pack_header(&pack.blobs);
        let before = pack.data.len();
        self.repo.key().seal_into(&header, &mut pack.data);
        let hlen = (pack.data.len() - before) as u32;
        pack.data.extend_from_slice(&hlen.to_le_bytes());
        let tx = self.upload_tx.lock().expect("upload sender").clone();
        let Some(tx) = tx else {
            return Err(Error::Invalid("blob writer is finished".into()));
        };
        tx.send(FinishedPack {
            data: pack.data,
            blobs: pack.blobs,
            pooled: pack.pooled,
        })
        .map_err(|_| Error::Invalid("upload threads stopped".into()))?;
        self.check_error()
    }
}

/// Whether all bytes are zero (checked a page at a time, stopping early).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// Errors are not `Clone` (they hold `io::Error`); rebuild an equivalent one for every caller
/// that runs into a stored failure.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::NotFound { location, path } => Error::NotFound {
            location: location.clone(),
            path: path.clone(),
        },
        Error::Backend {
            location,
            message,
            retryable,
        } => Error::Backend {
            location: location.clone(),
            message: message.clone(),
            retryable: *retryable,
        },
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::WrongPassword { location } => Error::WrongPassword {
            location: location.clone(),
        },
        Error::NoRepository { location } => Error::NoRepository {
            location: location.clone(),
        },
        Error::Corrupt { what, message } => Error::Corrupt {
            what: what.clone(),
            message: message.clone(),
        },
        Error::Invalid(m) => Error::Invalid(m.clone()),
        Error::Locked {
            location,
            holder,
            exclusive,
            since,
            lock,
            waited,
        } => Error::Locked {
            location: location.clone(),
            holder: holder.clone(),
            exclusive: *exclusive,
            since: since.clone(),
            lock: lock.clone(),
            waited: *waited,
        },
        Error::NoSnapshots { location } => Error::NoSnapshots {
            location: location.clone(),
        },
        Error::NotIndexed { what, location } => Error::NotIndexed {
            what: what.clone(),
            location: location.clone(),
        },
        Error::LockLost(m) => Error::LockLost(m.clone()),
        #[allow(unreachable_patterns)]
        other => Error::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{Backend, FileInfo};
    use crate::crypto::KdfParams;
    use crate::repo::InitOptions;

    fn fast() -> InitOptions {
        InitOptions {
            kdf: KdfParams::insecure_fast(),
            polynomial: None,
        }
    }

    fn blob(seed: u8, len: usize) -> Vec<u8> {
        let mut x = u32::from(seed).wrapping_mul(2654435761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_blob_larger_than_a_reader_accepts_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let repo =
            Repository::init(Arc::new(LocalBackend::new(dir.path())), "pw", &fast()).unwrap();
        let lock = crate::lock::Lock::shared(&repo).unwrap();
        let w = BlobWriter::new(&repo, WriterOptions::default()).unwrap();
        // Zeroed memory that is never touched: the length alone is refused.
        let limit = crate::repo::MAX_TREE_BLOB as usize;
        let e = w.add(BlobType::Tree, vec![0u8; limit + 1]).unwrap_err();
        assert!(e.to_string().contains("larger than the 2.0 GiB"), "{e}");
        let data_limit = crate::repo::MAX_DATA_BLOB as usize;
        let e = w
            .submit(BlobType::Data, vec![0u8; data_limit + 1])
            .unwrap()
            .wait();
        assert!(e.is_err());
        let stats = w.finish(&lock).unwrap();
        assert_eq!((stats.blobs_new, stats.packs), (0, 0));
        assert!(stats.index_files.is_empty());
    }

    #[test]
    fn concurrent_adds_of_one_blob_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo =
            Repository::init(Arc::new(LocalBackend::new(dir.path())), "pw", &fast()).unwrap();
        let lock = crate::lock::Lock::shared(&repo).unwrap();
        let w = BlobWriter::new(&repo, WriterOptions::default()).unwrap();
        let data = blob(1, 100_000);
        let results: Vec<AddResult> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| w.add(BlobType::Data, data.clone()).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.new).count(), 1);
        let pending: Vec<Pending> = (0..4)
            .map(|_| w.submit(BlobType::Data, data.clone()).unwrap())
            .collect();
        assert!(pending.into_iter().all(|p| !p.wait().unwrap().new));
        // The same bytes as a tree blob are a different blob.
        assert!(w.add(BlobType::Tree, data.clone()).unwrap().new);
        let stats = w.finish(&lock).unwrap();
        assert_eq!(stats.blobs_new, 2);
        assert_eq!(stats.packs, 2, "data and tree blobs go to separate packs");
        repo.load_index().unwrap();
        assert_eq!(
            repo.read_blob(BlobType::Data, &Id::hash(&data)).unwrap(),
            data
        );
        // A later writer dedups against the index.
        let w = BlobWriter::new(&repo, WriterOptions::default()).unwrap();
        assert!(!w.add(BlobType::Data, data).unwrap().new);
        assert_eq!(w.finish(&lock).unwrap().packs, 0);
    }

    #[test]
    fn packs_close_at_the_target_size_and_match_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let repo =
            Repository::init(Arc::new(LocalBackend::new(dir.path())), "pw", &fast()).unwrap();
        let opts = WriterOptions {
            pack_size: 256 << 10,
            workers: 2,
            upload_threads: 1,
            ..Default::default()
        };
        let lock = crate::lock::Lock::shared(&repo).unwrap();
        let w = BlobWriter::new(&repo, opts).unwrap();
        let mut ids = Vec::new();
        for i in 0..20u8 {
            // Half random (stored uncompressed), half compressible, one empty.
            let data = match i % 3 {
                0 => blob(i, 50_000),
                1 => vec![i; 60_000],
                _ => Vec::new(),
            };
            ids.push((Id::hash(&data), data.clone()));
            w.submit(BlobType::Data, data).unwrap();
        }
        let stats = w.finish(&lock).unwrap();
        assert!(stats.packs >= 2, "{stats:?}");
        assert_eq!(stats.index_files.len(), 1);
        repo.load_index().unwrap();
        let index = repo.index();
        for pack in index.packs() {
            let mut from_index: Vec<PackedBlob> = index
                .iter()
                .filter(|(_, _, e)| e.pack == pack)
                .map(|(t, id, e)| PackedBlob {
                    blob_type: t,
                    id,
                    offset: e.offset,
                    length: e.length,
                    uncompressed_length: e.uncompressed_length,
                })
                .collect();
            from_index.sort_by_key(|b| b.offset);
            let header = repo.read_pack_header(&pack).unwrap();
            assert_eq!(header, from_index);
            let size = repo.backend().stat(FileType::Pack, &pack.to_hex()).unwrap();
            let listed: Vec<_> = header.iter().map(PackedBlob::to_index_blob).collect();
            assert_eq!(size, format::pack_size(&listed));
        }
        for (id, data) in ids {
            let e = index.get(BlobType::Data, &id).unwrap();
            assert_eq!(
                e.uncompressed_length.is_some(),
                !data.is_empty() && data[0] == data[data.len() - 1] && data.len() == 60_000
            );
            assert_eq!(repo.read_blob(BlobType::Data, &id).unwrap(), data);
        }
    }

    /// A local backend whose pack writes fail, as a full disk or a lost connection would.
    struct FailingPacks(LocalBackend);

    impl Backend for FailingPacks {
        fn location(&self) -> String {
            self.0.location()
        }
        fn create(&self) -> Result<()> {
            self.0.create()
        }
        fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
            if t == FileType::Pack {
                return Err(Error::Backend {
                    location: self.location(),
                    message: "no space left on device".into(),
                    retryable: false,
                });
            }
            self.0.write(t, name, data)
        }
        fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
            self.0.read(t, name)
        }
        fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
            self.0.read_range(t, name, offset, length)
        }
        fn stat(&self, t: FileType, name: &str) -> Result<u64> {
            self.0.stat(t, name)
        }
        fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
            self.0.list(t)
        }
        fn remove(&self, t: FileType, name: &str) -> Result<()> {
            self.0.remove(t, name)
        }
    }

    #[test]
    fn a_failed_pack_upload_fails_finish_and_writes_no_index() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(FailingPacks(LocalBackend::new(dir.path())));
        let repo = Repository::init(backend, "pw", &fast()).unwrap();
        let opts = WriterOptions {
            pack_size: 64 << 10,
            ..Default::default()
        };
        let lock = crate::lock::Lock::shared(&repo).unwrap();
        let w = BlobWriter::new(&repo, opts).unwrap();
        let mut first_err = None;
        for i in 0..40u8 {
            if let Err(e) = w.add(BlobType::Data, blob(i, 40_000)) {
                first_err = Some(e);
                break;
            }
        }
        let err = match first_err {
            Some(e) => e,
            None => w.finish(&lock).unwrap_err(),
        };
        assert!(err.to_string().contains("no space left on device"), "{err}");
        assert!(repo.list_ids(FileType::Index).unwrap().is_empty());
    }
}
