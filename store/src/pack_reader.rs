//! Executes a restore [`Plan`]: fetches its pack reads with many requests in flight, decodes
//! the blobs of each read on a few threads, and hands every decoded blob to the caller.
//!
//! Fetching and decoding are separate pools on purpose: an object store needs many requests in
//! flight to hide the time each one takes to answer, while decrypting, decompressing and
//! hashing needs no more threads than there are cores. Reads are started in plan order (the
//! order the image needs them) and delivered as they complete. A read that comes back short,
//! or fails in a way the backend calls retryable, is tried again; a blob that does not decode
//! or verify stops the restore with an error naming the blob and its pack, and is never
//! delivered.
//!
//! Memory is bounded by a budget in bytes ([`ReaderOptions::budget`]), not only by the number
//! of reads in flight: a read is started only when the blobs it holds fit into what is left,
//! and each blob gives its share back when the writer drops it (written, or thrown away as
//! zeros). Blobs a writer holds back to write in order count too. So that a full budget can
//! never stop the restore, the lowest read not yet delivered is always started once the
//! writer asks for blobs: every blob the writer waits for lies in that read or in one already
//! started. Before that (a restore still waiting for its lock) reads stay within the budget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};

use crate::backend::{FileType, relative_path};
use crate::format::BlobType;
use crate::packer::is_zero;
use crate::repo::{Repository, check_claim, check_length, decompress_error, mac_error, verify};
use crate::restore_plan::{PackRead, Plan};
use crate::{Error, Result};

/// Settings of [`read_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Reads in flight at once.
    pub read_concurrency: usize,
    /// Threads that decrypt, decompress and verify.
    pub decode_threads: usize,
    /// Tries of a read that comes back short or fails retryably.
    pub attempts: u32,
    /// Bytes of blobs read and not yet dropped by the writer (each blob counts its stored
    /// length or its plaintext length, whichever is larger): reads wait for room.
    pub budget: u64,
}

/// The budget of an object store's restore ([`ReaderOptions::budget`]): at 25 ms a request,
/// 48 MiB in flight keep a restore near a GB/s (the writer's in-order window holds part of
/// it), and the memory a restore takes below restic's. A local directory uses 16 MiB, which
/// is as fast there (see [`crate::backend::Backend::read_budget`]).
pub const BUDGET: u64 = 48 << 20;

impl ReaderOptions {
    /// The defaults for `repo`: its backend's read concurrency, a decoding thread per core.
    pub fn for_repository(repo: &Repository) -> ReaderOptions {
        ReaderOptions {
            read_concurrency: repo.backend().read_concurrency(),
            decode_threads: cores(),
            attempts: 3,
            budget: repo.backend().read_budget(),
        }
    }
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// A decoded blob and the piece of the image it fills. Dropping it gives its share of the
/// budget back.
#[derive(Debug)]
pub struct Decoded {
    /// Index into [`Plan::pieces`].
    pub piece: usize,
    /// Its plaintext (empty when `zero`).
    pub data: Vec<u8>,
    /// Whether the plaintext is all zeros (its bytes are then not kept).
    pub zero: bool,
    _charge: Charge,
}

impl Drop for Decoded {
    fn drop(&mut self) {
        self._charge.budget.recycle(std::mem::take(&mut self.data));
    }
}

/// A blob's share of the budget, given back when dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// What a blob counts against the budget: it is held sealed, then as plaintext.
fn blob_charge(b: &crate::restore_plan::ReadBlob) -> u64 {
    u64::from(b.entry.length).max(u64::from(b.entry.plaintext_len()))
}

/// Bytes of blobs read and not yet dropped, and which reads are fully delivered.
#[derive(Debug)]
struct Budget {
    limit: u64,
    state: Mutex<BudgetState>,
    changed: Condvar,
    /// Plaintext buffers the writer is done with, kept for the blobs decoded next: memory
    /// written before is filled without the page faults of fresh memory, which cost a restore
    /// as much CPU as decompressing.
    spare: Mutex<Vec<Vec<u8>>>,
}

/// The plaintext buffers kept for reuse, in bytes of capacity at most.
const SPARE_BYTES: usize = 16 << 20;

#[derive(Debug)]
struct BudgetState {
    used: u64,
    /// Reads whose every blob was delivered.
    delivered: Vec<bool>,
    /// The lowest read not yet fully delivered.
    lowest: usize,
    /// Whether the writer has asked for a blob: until then (a restore waiting for its lock)
    /// nothing is written, so no read starts past the budget.
    writing: bool,
}

impl Budget {
    fn new(limit: u64, reads: usize) -> Budget {
        Budget {
            limit,
            state: Mutex::new(BudgetState {
                used: 0,
                delivered: vec![false; reads],
                lowest: 0,
                writing: false,
            }),
            changed: Condvar::new(),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer that holds `len` bytes: the smallest kept one that is large enough,
    /// else a new one.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let fit = spare
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let mut b = spare.swap_remove(i);
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Keeps `buf` for another blob while the kept ones stay within [`SPARE_BYTES`]; when
    /// they would not, the smallest ones make room or `buf` is freed.
    fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > SPARE_BYTES {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: usize = spare.iter().map(Vec::capacity).sum();
        while kept + buf.capacity() > SPARE_BYTES {
            let Some(i) = (0..spare.len()).min_by_key(|&i| spare[i].capacity()) else {
                break;
            };
            if spare[i].capacity() >= buf.capacity() {
                return;
            }
            kept -= spare.swap_remove(i).capacity();
        }
        spare.push(buf);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until read `read` of `bytes` fits (or is the lowest not delivered) and counts
    /// it; false when `stop` was set meanwhile.
    fn take(&self, read: usize, bytes: u64, stop: &AtomicBool) -> bool {
        let mut st = self.state();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if (st.writing && read <= st.lowest) || st.used + bytes <= self.limit {
                st.used += bytes;
                return true;
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn give_back(&self, bytes: u64) {
        let mut st = self.state();
        st.used = st.used.saturating_sub(bytes);
        drop(st);
        self.changed.notify_all();
    }

    /// The writer asks for its first blob: the lowest read may start past the budget now.
    fn writing(&self) {
        let mut st = self.state();
        if !st.writing {
            st.writing = true;
            drop(st);
            self.changed.notify_all();
        }
    }

    fn delivered(&self, read: usize) {
        let mut st = self.state();
        st.delivered[read] = true;
        while st.delivered.get(st.lowest) == Some(&true) {
            st.lowest += 1;
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// The decoded blobs of a running [`read_plan`], in the order they were decoded.
pub struct Deliveries<'a> {
    rx: &'a Receiver<Result<Decoded>>,
    budget: &'a Budget,
}

impl Deliveries<'_> {
    /// The next decoded blob; an error if a read or a blob failed, or if the readers ended
    /// before every blob was delivered.
    pub fn next(&self) -> Result<Decoded> {
        self.budget.writing();
        match self.rx.recv() {
            Ok(r) => r,
            Err(_) => Err(Error::Invalid(
                "the restore's readers stopped before every blob was read".into(),
            )),
        }
    }
}

/// Fetches and decodes every read of `plan` and passes the decoded blobs to `consume`, which
/// runs on the calling thread (it is the writer) and takes exactly one delivery per fetched
/// piece. When `consume` returns, early or not, the readers stop.
pub fn read_plan<T>(
    repo: &Repository,
    plan: &Plan,
    opts: &ReaderOptions,
    consume: impl FnOnce(&Deliveries) -> Result<T>,
) -> Result<T> {
    read_plan_then(repo, plan, opts, &|| {}, consume)
}

/// [`read_plan`], calling `all_read` (on a reader thread) as soon as the last read of the plan
/// has arrived, while its blobs may still be decoded and written: a restore releases its lock
/// there.
pub fn read_plan_then<T>(
    repo: &Repository,
    plan: &Plan,
    opts: &ReaderOptions,
    all_read: &(dyn Fn() + Sync),
    consume: impl FnOnce(&Deliveries) -> Result<T>,
) -> Result<T> {
    let stop = &AtomicBool::new(false);
    let next = &AtomicUsize::new(0);
    let arrived = &AtomicUsize::new(0);
    let reads = &plan.reads;
    let decoders = opts.decode_threads.max(1);
    let (fetched_tx, fetched_rx) = bounded::<(usize, Vec<u8>)>(decoders);
    let (out_tx, out_rx) = bounded::<Result<Decoded>>(64);
    let budget = Arc::new(Budget::new(opts.budget, reads.len()));
    // Read buffers go back from the decoders to the fetchers: memory a read was made into
    // before is faster to fill than fresh pages, and the allocator is left alone.
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(decoders + 2);
    std::thread::scope(|s| {
        for _ in 0..opts.read_concurrency.clamp(1, reads.len().max(1)) {
            let (tx, out) = (fetched_tx.clone(), out_tx.clone());
            let (budget, spare) = (&budget, &spare_rx);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(read) = reads.get(i) else { return };
                    if !budget.take(i, read.blobs.iter().map(blob_charge).sum(), stop) {
                        return;
                    }
                    let mut bytes = spare.try_recv().unwrap_or_default();
                    match fetch(repo, read, opts.attempts, &mut bytes) {
                        Ok(()) => {
                            let last = arrived.fetch_add(1, Ordering::Relaxed) + 1 == reads.len();
                            if tx.send((i, bytes)).is_err() {
                                return;
                            }
                            // After the hand-over: the last read is decoded meanwhile.
                            if last {
                                all_read();
                            }
                        }
                        Err(e) => {
                            let _ = out.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        drop(fetched_tx);
        for _ in 0..decoders {
            let (rx, out) = (fetched_rx.clone(), out_tx.clone());
            let (budget, spare) = (&budget, &spare_tx);
            s.spawn(move || {
                let mut dctx = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = out.send(Err(Error::Invalid(format!(
                            "cannot create a zstd decoder: {e}"
                        ))));
                        return;
                    }
                };
                for (i, mut bytes) in rx.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = decode_read(repo, &mut dctx, &reads[i], &mut bytes, budget, &mut |d| {
                        out.send(Ok(d)).is_ok()
                    });
                    // Kept for another read while there is room, else freed.
                    let _ = spare.try_send(bytes);
                    match r {
                        Ok(true) => budget.delivered(i),
                        Ok(false) => return,
                        Err(e) => {
                            let _ = out.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        drop(fetched_rx);
        drop(out_tx);
        let result = consume(&Deliveries {
            rx: &out_rx,
            budget: &budget,
        });
        stop.store(true, Ordering::Relaxed);
        budget.changed.notify_all();
        // Readers blocked on a full channel see it closed and end.
        drop(out_rx);
        result
    })
}

/// Fetches the bytes of one read, trying again when they come back short or the backend
/// failed retryably.
fn fetch(repo: &Repository, read: &PackRead, attempts: u32, bytes: &mut Vec<u8>) -> Result<()> {
    let name = read.pack.to_hex();
    let attempts = attempts.max(1);
    let mut why = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tracing::debug!(pack = %name, "{why}; reading again");
            std::thread::sleep(Duration::from_millis(50 << attempt.min(6)));
        }
        match repo
            .backend()
            .read_range_into(FileType::Pack, &name, read.offset, read.length, bytes)
        {
            Ok(()) if bytes.len() as u64 == read.length => return Ok(()),
            Ok(()) => why = format!("got {} of {} bytes", bytes.len(), read.length),
            Err(e) if e.is_retryable() && attempt < attempts => why = e.to_string(),
            Err(e) => return Err(e),
        }
    }
    Err(Error::Backend {
        location: repo.location(),
        message: format!(
            "cannot read {} at {}+{}: {why}, {attempts} times",
            relative_path(FileType::Pack, &name),
            read.offset,
            read.length
        ),
        retryable: true,
    })
}

/// Decodes the blobs of one read in pack order and passes each to `emit` (which returns
/// whether to go on). Returns whether every blob was passed on.
fn decode_read(
    repo: &Repository,
    dctx: &mut zstd::bulk::Decompressor<'static>,
    read: &PackRead,
    bytes: &mut [u8],
    budget: &Arc<Budget>,
    emit: &mut dyn FnMut(Decoded) -> bool,
) -> Result<bool> {
    for b in &read.blobs {
        let what = || format!("blob {} in pack data/{}", b.id.short(), read.pack);
        check_claim(BlobType::Data, &b.id, &b.entry)?;
        let at = b.offset_in(read);
        let sealed = bytes
            .get_mut(at..at + b.entry.length as usize)
            .ok_or_else(|| Error::Corrupt {
                what: what(),
                message: "lies outside the bytes read for it".into(),
            })?;
        let n = repo
            .key()
            .open_slice(sealed)
            .map_err(|_| mac_error(&b.id, &b.entry))?;
        let plain = &sealed[crate::crypto::IV_LEN..crate::crypto::IV_LEN + n];
        let data = match b.entry.uncompressed_length {
            Some(len) => {
                let mut out = budget.buffer(len as usize);
                let got = dctx
                    .decompress_to_buffer(plain, &mut out)
                    .map_err(|e| decompress_error(what(), len, e))?;
                check_length(what(), got, len)?;
                out
            }
            None => {
                let mut out = budget.buffer(plain.len());
                out.extend_from_slice(plain);
                out
            }
        };
        verify(&b.id, &data, what)?;
        let zero = is_zero(&data);
        let data = if zero {
            budget.recycle(data);
            Vec::new()
        } else {
            data
        };
        let d = Decoded {
            piece: b.piece,
            data,
            zero,
            _charge: Charge {
                budget: budget.clone(),
                bytes: blob_charge(b),
            },
        };
        if !emit(d) {
            return Ok(false);
        }
    }
    Ok(true)
}
