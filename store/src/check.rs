//! `check`: verifies that a repository is complete and consistent, the way `restic check`
//! does, and reports every problem it finds instead of stopping at the first.
//!
//! Structure (always): every index file opens; every pack the index names exists with the size
//! the index implies; each pack's header (read from its tail and decrypted) lists exactly the
//! blobs the index lists for it, at the same offsets, types and lengths, tiling the pack; every
//! snapshot loads; every tree reachable from a snapshot loads and parses, and every blob it
//! references is in the index. Packs no index names, and blobs no snapshot uses, are reported
//! as information (prune removes them), not as errors.
//!
//! With `read_data`, every pack is also read whole: its SHA-256 must equal its name and every
//! blob in it must decrypt, decompress and hash to its id.
//!
//! Check takes a shared lock, like restic, and writes nothing else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Deserialize;

use crate::backend::{FileType, relative_path};
use crate::crypto;
use crate::format::{self, BlobType, IndexBlob, PackedBlob, Snapshot};
use crate::id::Id;
use crate::index::{Index, IndexEntry};
use crate::lock::Lock;
use crate::progress::Progress;
use crate::repo::{Repository, load_each};
use crate::{Error, Result};

/// What to check besides the structure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Read every pack whole and verify every blob (slow: reads the whole repository).
    pub read_data: bool,
    /// Pack reads (headers, or whole packs with `read_data`) in flight at once; 0: as many as
    /// the backend takes by default ([`crate::backend::Backend::read_concurrency`]).
    pub read_concurrency: usize,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Harmless; `prune` tidies it up.
    Info,
    /// Data is missing or damaged, or the repository is inconsistent.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or information.
    pub severity: Severity,
    /// The file or object involved: `data/ab/ab12…` (full id), `index/<id>`, `snapshots/<id>`,
    /// `tree <id>`.
    pub subject: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "error",
            Severity::Info => "info",
        };
        write!(f, "{tag}: {}: {}", self.subject, self.message)
    }
}

/// Everything `check` found, and how much it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Findings, errors first, in a stable order.
    pub problems: Vec<Problem>,
    /// Index files read.
    pub index_files: usize,
    /// Packs in the repository.
    pub packs: usize,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Distinct trees walked.
    pub trees: usize,
    /// Distinct blobs in the index.
    pub blobs: usize,
    /// Packs read whole (with `read_data`).
    pub packs_read: usize,
    /// Bytes read whole (with `read_data`).
    pub bytes_read: u64,
}

impl CheckReport {
    /// Whether no error was found (information does not count).
    pub fn is_ok(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    fn error(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Error,
            subject: subject.into(),
            message: message.into(),
        });
    }

    fn info(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            severity: Severity::Info,
            subject: subject.into(),
            message: message.into(),
        });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        let errors = self.errors().count();
        write!(
            f,
            "checked {} snapshots, {} trees, {} blobs in {} packs and {} index files",
            self.snapshots, self.trees, self.blobs, self.packs, self.index_files
        )?;
        if self.packs_read > 0 {
            write!(
                f,
                "; read {} packs ({} bytes)",
                self.packs_read, self.bytes_read
            )?;
        }
        if errors == 0 {
            write!(f, "; no errors")
        } else {
            write!(f, "; {errors} errors")
        }
    }
}

/// A failure that stops the check (the backend or the disk failing) rather than a finding.
fn cannot_go_on(e: &Error) -> bool {
    matches!(e, Error::Backend { .. } | Error::Io { .. })
}

/// The path of a pack file in messages.
pub(crate) fn pack_path(id: &Id) -> String {
    relative_path(FileType::Pack, &id.to_hex())
}

/// The index as check sees it: per pack, the blobs listed for it (first index file wins) and
/// which index files mention it.
#[derive(Debug, Default)]
pub(crate) struct PackMap {
    /// Pack id to its blobs sorted by offset.
    pub packs: BTreeMap<Id, Vec<IndexBlob>>,
    /// Pack id to the index files that list it.
    pub listed_in: HashMap<Id, Vec<Id>>,
    /// The same information as an [`Index`], for reading blobs.
    pub index: Index,
}

impl PackMap {
    pub(crate) fn add(&mut self, file_id: Id, file: &format::IndexFile) {
        self.index.add_file(Some(file_id), file);
        for p in &file.packs {
            let files = self.listed_in.entry(p.id).or_default();
            files.push(file_id);
            if files.len() > 1 {
                continue;
            }
            let mut blobs = p.blobs.clone();
            for b in &mut blobs {
                // restic writes 0 for "not compressed" in some old versions.
                b.uncompressed_length = b.uncompressed_length.filter(|&u| u != 0);
            }
            blobs.sort_by_key(|b| b.offset);
            self.packs.insert(p.id, blobs);
        }
    }
}

/// Checks the repository. Errors in the repository are findings in the report; `Err` means the
/// check itself could not run (no lock, backend unreachable).
pub fn check(
    repo: &Repository,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let _lock = Lock::shared(repo)?;
    check_locked(repo, opts, progress)
}

fn check_locked(
    repo: &Repository,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();

    // Snapshots are listed before the index is read (a backup finishing meanwhile writes its
    // index before its snapshot, so every snapshot we see has its index).
    progress.message("loading snapshots");
    let mut roots: Vec<(Id, Id)> = Vec::new();
    let ids = repo.list_ids(FileType::Snapshot)?;
    let loaded = load_each(
        &ids,
        |id| repo.load_unpacked::<Snapshot>(FileType::Snapshot, id),
        cannot_go_on,
    );
    for (id, loaded) in ids.into_iter().zip(loaded) {
        match loaded {
            Some(Ok(s)) => roots.push((id, s.tree)),
            Some(Err(Error::NotFound { .. })) => {}
            Some(Err(e)) if cannot_go_on(&e) => return Err(e),
            Some(Err(e)) => report.error(
                relative_path(FileType::Snapshot, &id.to_hex()),
                e.to_string(),
            ),
            None => {}
        }
    }
    report.snapshots = roots.len();

    progress.message("loading index");
    let mut map = PackMap::default();
    let ids = repo.list_ids(FileType::Index)?;
    let loaded = load_each(&ids, |id| repo.load_index_file(id), cannot_go_on);
    for (id, loaded) in ids.into_iter().zip(loaded) {
        match loaded {
            Some(Ok(f)) => {
                map.add(id, &f);
                report.index_files += 1;
            }
            Some(Err(e)) if cannot_go_on(&e) => return Err(e),
            Some(Err(e)) => {
                report.error(relative_path(FileType::Index, &id.to_hex()), e.to_string())
            }
            None => {}
        }
    }
    report.blobs = map.index.len();

    progress.message("checking packs");
    let listing: BTreeMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (id, f.size)))
        .collect();
    report.packs = listing.len();
    check_packs(repo, &map, &listing, opts, progress, &mut report)?;

    progress.message("checking snapshots and trees");
    let walk = walk_trees(repo, &map.index, &roots);
    report.trees = walk.trees;
    for (subject, message) in walk.errors {
        report.error(subject, message);
    }

    let mut unused = 0usize;
    let mut unused_bytes = 0u64;
    for (t, id, e) in map.index.iter() {
        if !walk.used.contains(&(t, id)) {
            unused += 1;
            unused_bytes += u64::from(e.length);
        }
    }
    if unused > 0 {
        report.info(
            "index",
            format!("{unused} blobs ({unused_bytes} bytes) are not used by any snapshot; prune removes them"),
        );
    }
    let dups = map.index.duplicates().len();
    if dups > 0 {
        report.info(
            "index",
            format!("{dups} extra copies of blobs are stored; prune removes them"),
        );
    }

    report.problems.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.subject.cmp(&b.subject))
    });
    Ok(report)
}

fn check_packs(
    repo: &Repository,
    map: &PackMap,
    listing: &BTreeMap<Id, u64>,
    opts: &CheckOptions,
    progress: &dyn Progress,
    report: &mut CheckReport,
) -> Result<()> {
    let read_data = opts.read_data;
    let readers = match opts.read_concurrency {
        0 => repo.backend().read_concurrency().max(1),
        n => n,
    };
    for (id, files) in &map.listed_in {
        if files.len() > 1 {
            report.info(
                pack_path(id),
                format!("listed in {} index files; prune merges them", files.len()),
            );
        }
    }
    for id in listing.keys() {
        if !map.packs.contains_key(id) {
            report.info(
                pack_path(id),
                "not referenced by any index; prune removes it",
            );
        }
    }
    if read_data {
        progress.set_total(Some(
            listing
                .iter()
                .filter(|(id, _)| map.packs.contains_key(id))
                .map(|(_, s)| s)
                .sum(),
        ));
    } else {
        progress.set_total(Some(map.packs.len() as u64));
    }
    for (id, blobs) in &map.packs {
        let path = pack_path(id);
        let Some(&size) = listing.get(id) else {
            report.error(
                &path,
                format!(
                    "does not exist, but the index lists {} blobs in it",
                    blobs.len()
                ),
            );
            continue;
        };
        let types: HashSet<BlobType> = blobs.iter().map(|b| b.blob_type).collect();
        if types.len() > 1 {
            report.error(
                &path,
                "holds both data and tree blobs (restic requires separate packs)",
            );
        }
        let mut tiled = true;
        let mut pos = 0u64;
        for b in blobs {
            if u64::from(b.offset) != pos {
                report.error(
                    &path,
                    format!(
                        "index has a gap or overlap at offset {pos} (next blob {} at {})",
                        b.id, b.offset
                    ),
                );
                tiled = false;
                break;
            }
            pos += u64::from(b.length);
        }
        let expected = format::pack_size(blobs);
        if tiled && expected != size {
            report.error(
                &path,
                format!("is {size} bytes, the index implies {expected}"),
            );
        }
    }

    let work: Vec<(&Id, &Vec<IndexBlob>, u64)> = map
        .packs
        .iter()
        .filter_map(|(id, blobs)| listing.get(id).map(|&size| (id, blobs, size)))
        .collect();
    let parts = if read_data {
        read_packs_whole(repo, &work, readers, progress)
    } else {
        // A header is a small read: as many in flight as the backend takes.
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..readers)
                .map(|_| {
                    s.spawn(|| {
                        let mut part = CheckReport::default();
                        while let Some((id, blobs, _)) =
                            work.get(next.fetch_add(1, Ordering::Relaxed))
                        {
                            verify_header(repo, id, blobs, progress, &mut part)?;
                        }
                        Ok(part)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("check worker panicked"))
                .collect::<Vec<Result<CheckReport>>>()
        })
    };
    for part in parts {
        let part = part?;
        report.problems.extend(part.problems);
        report.packs_read += part.packs_read;
        report.bytes_read += part.bytes_read;
    }
    Ok(())
}

/// Bytes of whole packs `check --read-data` holds read and not yet verified: the reads in
/// flight are as many as [`CheckOptions::read_concurrency`] allows within this budget,
/// whatever the number of threads that verify.
pub const READ_AHEAD_BYTES: u64 = 64 << 20;

/// Reads the packs of `work` whole, `readers` at once within [`READ_AHEAD_BYTES`], and
/// verifies them on a thread per core (at most 4). Each part of the
/// result is one verifying thread's findings, or the retryable backend failure that stopped
/// the check.
fn read_packs_whole(
    repo: &Repository,
    work: &[(&Id, &Vec<IndexBlob>, u64)],
    readers: usize,
    progress: &dyn Progress,
) -> Vec<Result<CheckReport>> {
    let next = AtomicUsize::new(0);
    let held = std::sync::Mutex::new(0u64);
    let room = std::sync::Condvar::new();
    let stop = AtomicBool::new(false);
    let give_back = |bytes: u64| {
        *held.lock().unwrap_or_else(|e| e.into_inner()) -= bytes;
        room.notify_all();
    };
    // Never full: memory is bounded by the budget, not by the channel.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Result<Vec<u8>>)>(work.len().max(1));
    let rx = std::sync::Mutex::new(rx);
    let readers = readers.min(work.len()).max(1);
    let verifiers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let tx = tx.clone();
            let (next, held, room, stop) = (&next, &held, &room, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(id, _, size)) = work.get(i) else {
                        break;
                    };
                    {
                        // A pack larger than the budget is read alone.
                        let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                        while *h > 0
                            && *h + size > READ_AHEAD_BYTES
                            && !stop.load(Ordering::Relaxed)
                        {
                            h = room.wait(h).unwrap_or_else(|e| e.into_inner());
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        *h += size;
                    }
                    let read = repo.backend().read(FileType::Pack, &id.to_hex());
                    if tx.send((i, read)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let workers: Vec<_> = (0..verifiers)
            .map(|_| {
                s.spawn(|| {
                    let mut part = CheckReport::default();
                    loop {
                        let message = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((i, read)) = message else {
                            return Ok(part);
                        };
                        let (id, blobs, size) = work[i];
                        let verified =
                            verify_whole_pack(repo, id, blobs, read, progress, &mut part);
                        give_back(size);
                        if let Err(e) = verified {
                            // Set under the lock the readers check it with, so that none
                            // starts waiting for room just after this wake-up.
                            let guard = held.lock().unwrap_or_else(|e| e.into_inner());
                            stop.store(true, Ordering::Relaxed);
                            drop(guard);
                            room.notify_all();
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("check worker panicked"))
            .collect()
    })
}

/// Verifies a pack read whole (`read`) against the index. Only a retryable backend failure
/// is an `Err`; the rest are findings.
fn verify_whole_pack(
    repo: &Repository,
    id: &Id,
    blobs: &[IndexBlob],
    read: Result<Vec<u8>>,
    progress: &dyn Progress,
    report: &mut CheckReport,
) -> Result<()> {
    match read {
        Ok(bytes) => {
            report.packs_read += 1;
            report.bytes_read += bytes.len() as u64;
            progress.add_done(bytes.len() as u64);
            check_pack_bytes(repo, id, blobs, &bytes, report);
        }
        Err(
            e @ Error::Backend {
                retryable: true, ..
            },
        ) => return Err(e),
        Err(e) => report.error(pack_path(id), format!("cannot be read: {e}")),
    }
    Ok(())
}

/// Reads one existing pack's header and compares it with the index. Only a retryable backend
/// failure is an `Err`; the rest are findings.
fn verify_header(
    repo: &Repository,
    id: &Id,
    blobs: &[IndexBlob],
    progress: &dyn Progress,
    report: &mut CheckReport,
) -> Result<()> {
    let path = pack_path(id);
    match repo.read_pack_header(id) {
        Ok(header) => compare_header(&path, blobs, &header, report),
        Err(
            e @ Error::Backend {
                retryable: true, ..
            },
        ) => return Err(e),
        Err(Error::Corrupt { message, .. }) => report.error(&path, message),
        Err(e) => report.error(&path, format!("header cannot be read: {e}")),
    }
    progress.add_done(1);
    Ok(())
}

/// Compares the header's blob list with the index's (both in offset order).
fn compare_header(
    path: &str,
    index: &[IndexBlob],
    header: &[PackedBlob],
    report: &mut CheckReport,
) {
    if index.len() != header.len() {
        report.error(
            path,
            format!(
                "header lists {} blobs, the index {}",
                header.len(),
                index.len()
            ),
        );
    }
    for (i, h) in header.iter().enumerate() {
        let matches = index.get(i).is_some_and(|x| {
            x.id == h.id
                && x.blob_type == h.blob_type
                && x.offset == h.offset
                && x.length == h.length
                && x.uncompressed_length == h.uncompressed_length
        });
        if !matches {
            report.error(
                path,
                format!(
                    "header entry {i} ({} blob {} at offset {}, {} bytes) does not match the index",
                    h.blob_type, h.id, h.offset, h.length
                ),
            );
            return;
        }
    }
}

/// Verifies a whole pack read into memory: name hash, header, every blob.
fn check_pack_bytes(
    repo: &Repository,
    id: &Id,
    index: &[IndexBlob],
    bytes: &[u8],
    report: &mut CheckReport,
) {
    let path = pack_path(id);
    if Id::hash(bytes) != *id {
        report.error(
            &path,
            "content does not match its name (SHA-256): the pack is damaged",
        );
    }
    match parse_header(repo, bytes) {
        Ok(header) => compare_header(&path, index, &header, report),
        Err(message) => report.error(&path, message),
    }
    let mut bad = 0usize;
    let mut first = None;
    for b in index {
        let start = b.offset as usize;
        let Some(sealed) = bytes.get(start..start + b.length as usize) else {
            bad += 1;
            first.get_or_insert_with(|| format!("blob {} lies beyond the end of the pack", b.id));
            continue;
        };
        let entry = IndexEntry {
            pack: *id,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        };
        if let Err(e) = repo.decode_blob(b.blob_type, &b.id, &entry, sealed.to_vec()) {
            bad += 1;
            first.get_or_insert_with(|| match e {
                Error::Corrupt { message, .. } => {
                    format!("{} blob {}: {message}", b.blob_type, b.id)
                }
                e => format!("{} blob {}: {e}", b.blob_type, b.id),
            });
        }
    }
    if let Some(first) = first {
        report.error(
            &path,
            format!("{bad} of {} blobs are damaged, first: {first}", index.len()),
        );
    }
}

/// Decodes the header from a whole pack in memory.
fn parse_header(repo: &Repository, bytes: &[u8]) -> std::result::Result<Vec<PackedBlob>, String> {
    let size = bytes.len();
    if size < 4 {
        return Err(format!("only {size} bytes long"));
    }
    let hlen = u32::from_le_bytes(bytes[size - 4..].try_into().expect("4 bytes")) as usize;
    if hlen + 4 > size || hlen < crypto::OVERHEAD {
        return Err(format!(
            "header length {hlen} does not fit a {size}-byte pack"
        ));
    }
    let plain = repo
        .key()
        .open(&bytes[size - 4 - hlen..size - 4])
        .map_err(|_| "pack header does not decrypt (MAC mismatch)".to_string())?;
    format::decode_pack_header(&plain).map_err(|e| match e {
        Error::Corrupt { message, .. } => message,
        e => e.to_string(),
    })
}

/// The parts of a tree node that reference other blobs. Parsed leniently and on its own, so
/// that check sees exactly what is stored (`content: null` and a missing `subtree` are errors
/// restic reports too).
#[derive(Deserialize)]
struct RefNode {
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    node_type: String,
    #[serde(default)]
    content: Option<Vec<Id>>,
    #[serde(default)]
    subtree: Option<Id>,
}

#[derive(Deserialize)]
struct RefTree {
    #[serde(default)]
    nodes: Option<Vec<RefNode>>,
}

/// What walking the trees of some snapshots found.
#[derive(Debug, Default)]
pub(crate) struct TreeWalk {
    /// Every blob referenced (trees and data), whether it is in the index or not.
    pub used: HashSet<(BlobType, Id)>,
    /// Distinct trees walked.
    pub trees: usize,
    /// (subject, message) of every problem.
    pub errors: Vec<(String, String)>,
}

/// Reads a blob through `index`, trying every stored copy; reports each copy that fails.
fn read_blob_any(
    repo: &Repository,
    index: &Index,
    t: BlobType,
    id: &Id,
    errors: &mut Vec<(String, String)>,
) -> Option<Vec<u8>> {
    for entry in index.get_all(t, id) {
        match repo.read_blob_at(t, id, &entry) {
            Ok(data) => return Some(data),
            Err(Error::NotFound { .. }) => {} // reported by the pack check
            Err(e) => errors.push((pack_path(&entry.pack), format!("{t} blob {id}: {e}"))),
        }
    }
    None
}

/// Walks every tree reachable from `roots` (snapshot id, root tree id), collecting the blobs
/// they use and every reference that cannot be followed.
pub(crate) fn walk_trees(repo: &Repository, index: &Index, roots: &[(Id, Id)]) -> TreeWalk {
    let mut walk = TreeWalk::default();
    let mut queue: Vec<(Id, String)> = Vec::new();
    for (snap, tree) in roots {
        if walk.used.insert((BlobType::Tree, *tree)) {
            queue.push((*tree, relative_path(FileType::Snapshot, &snap.to_hex())));
        }
    }
    while let Some((tree_id, parent)) = queue.pop() {
        walk.trees += 1;
        let subject = format!("tree {tree_id}");
        if !index.has(BlobType::Tree, &tree_id) {
            walk.errors.push((
                subject,
                format!("is not in the index (referenced by {parent})"),
            ));
            continue;
        }
        let Some(raw) = read_blob_any(repo, index, BlobType::Tree, &tree_id, &mut walk.errors)
        else {
            walk.errors.push((
                subject,
                format!("cannot be loaded from any pack (referenced by {parent})"),
            ));
            continue;
        };
        let parsed = serde_json::from_slice::<RefTree>(&raw);
        // A large tree's JSON is not held beside what was parsed from it while it is walked.
        drop(raw);
        let tree = match parsed {
            Ok(t) => t,
            Err(e) => {
                walk.errors
                    .push((subject, format!("is not valid tree JSON: {e}")));
                continue;
            }
        };
        for node in tree.nodes.unwrap_or_default() {
            if node.name.is_empty() {
                walk.errors
                    .push((subject.clone(), "has a node with an empty name".into()));
            }
            match node.node_type.as_str() {
                "file" => match node.content {
                    None => walk.errors.push((
                        subject.clone(),
                        format!("file {:?} has no content list (null)", node.name),
                    )),
                    Some(content) => {
                        for blob in content {
                            if !index.has(BlobType::Data, &blob) {
                                walk.errors.push((
                                    subject.clone(),
                                    format!(
                                        "file {:?}: data blob {blob} is not in the index",
                                        node.name
                                    ),
                                ));
                            }
                            walk.used.insert((BlobType::Data, blob));
                        }
                    }
                },
                "dir" => match node.subtree {
                    None => walk.errors.push((
                        subject.clone(),
                        format!("dir {:?} has no subtree", node.name),
                    )),
                    Some(sub) => {
                        if walk.used.insert((BlobType::Tree, sub)) {
                            queue.push((sub, subject.clone()));
                        }
                    }
                },
                "symlink" | "dev" | "chardev" | "fifo" | "socket" | "irregular" => {}
                other => walk.errors.push((
                    subject.clone(),
                    format!("node {:?} has unknown type {other:?}", node.name),
                )),
            }
        }
    }
    walk
}
