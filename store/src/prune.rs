//! `prune`: removes data no snapshot uses, following restic 0.14's strategy.
//!
//! [`plan_prune`] reads the snapshots, walks their trees and the index, and decides per pack:
//!
//! - a pack no index lists is deleted first (nothing can refer to it);
//! - a pack with no used blob is deleted;
//! - a pack whose blobs are all used is kept, unless it is tiny (below 1/25 of the target pack
//!   size, or below 80 % with `repack_small`) and there are at least ten such packs;
//! - every other pack (partly used, mixing blob types, holding uncompressed trees) is a
//!   candidate for repacking: its used blobs are copied into new packs and it is deleted.
//!   Candidates holding trees are always repacked; data packs are repacked, most wasteful
//!   first, until the unused bytes left in the repository are within `max_unused_percent` of
//!   the used bytes (restic's `--max-unused`, default 5 %).
//!
//! A blob stored more than once counts as used in one pack only (preferring a pack that is
//! kept anyway); its other copies count as unused, so duplicates disappear as their packs are
//! deleted or repacked.
//!
//! [`execute`] carries the plan out under an exclusive lock, in an order that leaves a
//! repository passing `check` if it stops at any point: delete unreferenced packs; write the
//! new packs; write a new index that lists every kept and new pack and supersedes all old index
//! files; delete the old index files; only then delete the packs that were repacked or unused.
//! Blobs are copied as stored (sealed), after being decrypted, decompressed and hashed to make
//! sure a damaged blob is never carried over; uncompressed tree blobs are compressed on the way.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::backend::FileType;
use crate::check::{PackMap, pack_path, walk_trees};
use crate::format::{self, BlobType, IndexBlob, IndexFile, IndexPack, PackedBlob, Snapshot};
use crate::id::Id;
use crate::index::IndexEntry;
use crate::lock::Lock;
use crate::packer::{DEFAULT_PACK_SIZE, INDEX_BLOBS_PER_FILE};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::{Error, Result};

/// How aggressively to prune.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneOptions {
    /// Unused space tolerated after pruning, in percent of the repository's size (0 to below
    /// 100; restic's `--max-unused`, default 5). Lower means more repacking.
    pub max_unused_percent: f64,
    /// Also repack packs below 80 % of the target pack size (restic's `--repack-small`).
    pub repack_small: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: 5.0,
            repack_small: false,
        }
    }
}

/// Counts and sizes behind a plan, for the `--dry-run` printout. Sizes are stored bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneCounts {
    /// Blobs some snapshot uses (one copy each).
    pub used_blobs: u64,
    /// Their stored size.
    pub used_bytes: u64,
    /// Extra copies of used blobs.
    pub duplicate_blobs: u64,
    /// Their stored size.
    pub duplicate_bytes: u64,
    /// Blobs no snapshot uses.
    pub unused_blobs: u64,
    /// Their stored size.
    pub unused_bytes: u64,
    /// Size of packs no index lists.
    pub unreferenced_bytes: u64,
    /// Blobs in packs that will be repacked.
    pub repack_blobs: u64,
    /// Their stored size.
    pub repack_bytes: u64,
    /// Of those, blobs dropped by repacking.
    pub repack_removed_blobs: u64,
    /// Their stored size.
    pub repack_removed_bytes: u64,
    /// Blobs in packs deleted whole.
    pub remove_blobs: u64,
    /// Their stored size.
    pub remove_bytes: u64,
    /// Packs whose blobs are all used.
    pub packs_used: u64,
    /// Packs with used and unused blobs.
    pub packs_partly_used: u64,
    /// Packs without a used blob.
    pub packs_unused: u64,
    /// Packs kept as they are.
    pub packs_keep: u64,
    /// Packs to repack.
    pub packs_repack: u64,
    /// Packs to delete (unused).
    pub packs_remove: u64,
    /// Packs to delete (not in any index).
    pub packs_unreferenced: u64,
}

/// What a prune will do. Made by [`plan_prune`], carried out by [`execute`].
#[derive(Debug, Clone, PartialEq)]
pub struct PrunePlan {
    /// Counts for display.
    pub counts: PruneCounts,
    /// Packs kept as they are.
    pub keep_packs: BTreeSet<Id>,
    /// Packs whose used blobs are copied into new packs before they are deleted.
    pub repack_packs: BTreeSet<Id>,
    /// Packs deleted because nothing in them is used.
    pub remove_packs: BTreeSet<Id>,
    /// Packs deleted first because no index lists them.
    pub unreferenced_packs: BTreeSet<Id>,
    /// Packs the index lists but that do not exist and hold nothing needed: dropped from the index.
    pub missing_packs: BTreeSet<Id>,
    /// The index files the plan was made from; all are superseded by the new index.
    pub index_files: Vec<Id>,
    /// The snapshots the plan was made for.
    pub snapshots: Vec<Id>,
    /// Blobs to copy: where to read each (in order of preference).
    copy: BTreeMap<(BlobType, Id), Vec<IndexEntry>>,
    /// Every indexed pack's blob list (offset order).
    pack_blobs: BTreeMap<Id, Vec<IndexBlob>>,
}

impl PrunePlan {
    /// Whether executing the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.repack_packs.is_empty()
            && self.remove_packs.is_empty()
            && self.unreferenced_packs.is_empty()
            && self.missing_packs.is_empty()
    }

    /// Whether the index must be rewritten.
    fn rewrites_index(&self) -> bool {
        !(self.repack_packs.is_empty()
            && self.remove_packs.is_empty()
            && self.missing_packs.is_empty())
    }

    /// Number of blobs that will be copied into new packs.
    pub fn blobs_to_copy(&self) -> usize {
        self.copy.len()
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0.00%".into()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

impl fmt::Display for PrunePlan {
    /// restic's prune summary: what is used, what goes, what remains.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "used:         {:>10} blobs / {}",
            c.used_blobs,
            format::human_bytes(c.used_bytes)
        )?;
        if c.duplicate_blobs > 0 {
            writeln!(
                f,
                "duplicates:   {:>10} blobs / {}",
                c.duplicate_blobs,
                format::human_bytes(c.duplicate_bytes)
            )?;
        }
        writeln!(
            f,
            "unused:       {:>10} blobs / {}",
            c.unused_blobs,
            format::human_bytes(c.unused_bytes)
        )?;
        if c.unreferenced_bytes > 0 {
            writeln!(
                f,
                "unreferenced:                    {}",
                format::human_bytes(c.unreferenced_bytes)
            )?;
        }
        let total_blobs = c.used_blobs + c.duplicate_blobs + c.unused_blobs;
        let total = c.used_bytes + c.duplicate_bytes + c.unused_bytes + c.unreferenced_bytes;
        let unused = c.duplicate_bytes + c.unused_bytes;
        writeln!(
            f,
            "total:        {:>10} blobs / {}",
            total_blobs,
            format::human_bytes(total)
        )?;
        writeln!(f, "unused size: {} of total size", percent(unused, total))?;
        writeln!(f)?;
        writeln!(
            f,
            "to repack:    {:>10} blobs / {}",
            c.repack_blobs,
            format::human_bytes(c.repack_bytes)
        )?;
        writeln!(
            f,
            "this removes: {:>10} blobs / {}",
            c.repack_removed_blobs,
            format::human_bytes(c.repack_removed_bytes)
        )?;
        writeln!(
            f,
            "to delete:    {:>10} blobs / {}",
            c.remove_blobs,
            format::human_bytes(c.remove_bytes + c.unreferenced_bytes)
        )?;
        let pruned = c.remove_bytes + c.repack_removed_bytes + c.unreferenced_bytes;
        let pruned_blobs = c.remove_blobs + c.repack_removed_blobs;
        writeln!(
            f,
            "total prune:  {:>10} blobs / {}",
            pruned_blobs,
            format::human_bytes(pruned)
        )?;
        let remaining = total.saturating_sub(pruned);
        writeln!(
            f,
            "remaining:    {:>10} blobs / {}",
            total_blobs.saturating_sub(pruned_blobs),
            format::human_bytes(remaining)
        )?;
        let unused_after = unused.saturating_sub(c.remove_bytes + c.repack_removed_bytes);
        writeln!(
            f,
            "unused size after prune: {} ({} of remaining size)",
            format::human_bytes(unused_after),
            percent(unused_after, remaining)
        )?;
        writeln!(f)?;
        writeln!(f, "totally used packs: {:>10}", c.packs_used)?;
        writeln!(f, "partly used packs:  {:>10}", c.packs_partly_used)?;
        writeln!(f, "unused packs:       {:>10}", c.packs_unused)?;
        writeln!(f)?;
        writeln!(f, "to keep:      {:>10} packs", c.packs_keep)?;
        writeln!(f, "to repack:    {:>10} packs", c.packs_repack)?;
        write!(f, "to delete:    {:>10} packs", c.packs_remove)?;
        if c.packs_unreferenced > 0 {
            write!(
                f,
                "\nto delete:    {:>10} unreferenced packs",
                c.packs_unreferenced
            )?;
        }
        Ok(())
    }
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneStats {
    /// Packs deleted (unused, repacked and unreferenced).
    pub packs_deleted: u64,
    /// Bytes of the deleted packs.
    pub bytes_deleted: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Bytes of the new packs.
    pub bytes_written: u64,
    /// Blobs copied into new packs.
    pub blobs_repacked: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Index files deleted.
    pub index_files_deleted: u64,
}

/// Per-pack accounting while planning.
#[derive(Debug, Default, Clone)]
struct PackInfo {
    used_blobs: u64,
    unused_blobs: u64,
    used_size: u64,
    unused_size: u64,
    has_data: bool,
    has_tree: bool,
    uncompressed_tree: bool,
}

impl PackInfo {
    fn total(&self) -> u64 {
        self.used_size + self.unused_size
    }
    fn is_data_only(&self) -> bool {
        self.has_data && !self.has_tree
    }
}

/// What the repository looks like, read under a lock.
struct Observed {
    map: PackMap,
    index_files: Vec<Id>,
    snapshots: Vec<(Id, Id)>,
    listing: BTreeMap<Id, u64>,
}

fn observe(repo: &Repository) -> Result<Observed> {
    let mut snapshots = Vec::new();
    for id in repo.list_ids(FileType::Snapshot)? {
        match repo.load_unpacked::<Snapshot>(FileType::Snapshot, &id) {
            Ok(s) => snapshots.push((id, s.tree)),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut map = PackMap::default();
    let mut index_files = Vec::new();
    for id in repo.list_ids(FileType::Index)? {
        let f = repo.load_index_file(&id)?;
        map.add(id, &f);
        index_files.push(id);
    }
    let listing = repo
        .backend()
        .list(FileType::Pack)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (id, f.size)))
        .collect();
    Ok(Observed {
        map,
        index_files,
        snapshots,
        listing,
    })
}

fn refuse(message: String) -> Error {
    Error::Invalid(format!("prune refused, nothing was changed: {message}"))
}

/// Decides what to delete and what to repack. Takes an exclusive lock while it reads (like
/// restic, so that no backup adds data meanwhile) and writes nothing else.
pub fn plan_prune(repo: &Repository, opts: &PruneOptions) -> Result<PrunePlan> {
    let p = opts.max_unused_percent;
    if !(0.0..100.0).contains(&p) {
        return Err(Error::Invalid(format!(
            "max unused {p}% is out of range: give a percentage from 0 to below 100"
        )));
    }
    let _lock = Lock::exclusive(repo)?;
    let observed = observe(repo)?;
    plan_from(repo, opts, &observed)
}

fn plan_from(repo: &Repository, opts: &PruneOptions, obs: &Observed) -> Result<PrunePlan> {
    let walk = walk_trees(repo, &obs.map.index, &obs.snapshots);
    if let Some((subject, message)) = walk.errors.first() {
        return Err(refuse(format!(
            "{subject}: {message} ({} problems; run check for the full list)",
            walk.errors.len()
        )));
    }
    let used = &walk.used;
    let packs = &obs.map.packs;
    let mut counts = PruneCounts::default();
    let copies = used_copies(obs, used)?;
    let home = homes(&copies);
    // Version 2 repositories compress trees; version 1 ones cannot hold compressed blobs.
    let compress_trees = repo.config().version >= 2;
    let info = pack_infos(packs, &home, used, compress_trees, &mut counts);

    let mut plan = PrunePlan {
        counts: PruneCounts::default(),
        keep_packs: BTreeSet::new(),
        repack_packs: BTreeSet::new(),
        remove_packs: BTreeSet::new(),
        unreferenced_packs: BTreeSet::new(),
        missing_packs: BTreeSet::new(),
        index_files: obs.index_files.clone(),
        snapshots: obs.snapshots.iter().map(|(id, _)| *id).collect(),
        copy: BTreeMap::new(),
        pack_blobs: packs.clone(),
    };
    for (id, size) in &obs.listing {
        if !packs.contains_key(id) {
            plan.unreferenced_packs.insert(*id);
            counts.unreferenced_bytes += size;
        }
    }
    let decided = decide_packs(
        &info,
        &obs.listing,
        opts,
        DEFAULT_PACK_SIZE as u64,
        &mut counts,
    )?;
    plan.keep_packs = decided.keep;
    plan.repack_packs = decided.repack;
    plan.remove_packs = decided.remove;
    plan.missing_packs = decided.missing;
    plan.copy = copy_sources(&copies, &home, packs, &plan.keep_packs);

    counts.packs_keep = plan.keep_packs.len() as u64;
    counts.packs_repack = plan.repack_packs.len() as u64;
    counts.packs_remove = plan.remove_packs.len() as u64;
    counts.packs_unreferenced = plan.unreferenced_packs.len() as u64;
    plan.counts = counts;
    Ok(plan)
}

/// A used blob: its type and id.
type BlobKey = (BlobType, Id);

/// Where each used blob is stored, among packs that exist; a used blob stored nowhere refuses
/// the prune.
fn used_copies(
    obs: &Observed,
    used: &std::collections::HashSet<BlobKey>,
) -> Result<HashMap<BlobKey, Vec<Id>>> {
    let mut copies: HashMap<BlobKey, Vec<Id>> = HashMap::new();
    for (pack, blobs) in &obs.map.packs {
        if !obs.listing.contains_key(pack) {
            continue;
        }
        for b in blobs {
            if used.contains(&(b.blob_type, b.id)) {
                copies.entry((b.blob_type, b.id)).or_default().push(*pack);
            }
        }
    }
    for key in used {
        if !copies.contains_key(key) {
            return Err(refuse(format!(
                "{} blob {} is used by a snapshot but stored in no existing pack (run check)",
                key.0, key.1
            )));
        }
    }
    Ok(copies)
}

/// The pack each used blob is kept in. Used blobs stored once decide which packs are needed
/// anyway; each duplicated blob is then homed in the pack with the most such blobs, so that
/// its other copies can go.
fn homes(copies: &HashMap<BlobKey, Vec<Id>>) -> HashMap<BlobKey, Id> {
    let mut unique_used: HashMap<Id, u64> = HashMap::new();
    for locations in copies.values() {
        if let [only] = locations.as_slice() {
            *unique_used.entry(*only).or_default() += 1;
        }
    }
    copies
        .iter()
        .map(|(key, locations)| {
            let best = locations
                .iter()
                .max_by(|a, b| {
                    let (ua, ub) = (
                        unique_used.get(*a).copied().unwrap_or(0),
                        unique_used.get(*b).copied().unwrap_or(0),
                    );
                    ua.cmp(&ub).then_with(|| b.cmp(a))
                })
                .expect("at least one copy");
            (*key, *best)
        })
        .collect()
}

/// What each indexed pack holds, used and unused, counted into `counts`.
fn pack_infos(
    packs: &BTreeMap<Id, Vec<IndexBlob>>,
    home: &HashMap<BlobKey, Id>,
    used: &std::collections::HashSet<BlobKey>,
    compress_trees: bool,
    counts: &mut PruneCounts,
) -> BTreeMap<Id, PackInfo> {
    let mut info: BTreeMap<Id, PackInfo> = BTreeMap::new();
    for (pack, blobs) in packs {
        // The header counts as used space, as in restic.
        let header =
            format::pack_size(blobs) - blobs.iter().map(|b| u64::from(b.length)).sum::<u64>();
        let mut pi = PackInfo {
            used_size: header,
            ..Default::default()
        };
        for b in blobs {
            let size = u64::from(b.length);
            match b.blob_type {
                BlobType::Data => pi.has_data = true,
                BlobType::Tree => {
                    pi.has_tree = true;
                    if compress_trees
                        && b.uncompressed_length.is_none()
                        && b.length as usize > crate::crypto::OVERHEAD
                    {
                        pi.uncompressed_tree = true;
                    }
                }
            }
            let key = (b.blob_type, b.id);
            if home.get(&key) == Some(pack) {
                pi.used_blobs += 1;
                pi.used_size += size;
                counts.used_blobs += 1;
                counts.used_bytes += size;
            } else {
                pi.unused_blobs += 1;
                pi.unused_size += size;
                if used.contains(&key) {
                    counts.duplicate_blobs += 1;
                    counts.duplicate_bytes += size;
                } else {
                    counts.unused_blobs += 1;
                    counts.unused_bytes += size;
                }
            }
        }
        info.insert(*pack, pi);
    }
    info
}

/// The blobs to copy: used blobs with no copy in a kept pack, each with where to read it,
/// the home copy first.
fn copy_sources(
    copies: &HashMap<BlobKey, Vec<Id>>,
    home: &HashMap<BlobKey, Id>,
    packs: &BTreeMap<Id, Vec<IndexBlob>>,
    keep: &BTreeSet<Id>,
) -> BTreeMap<BlobKey, Vec<IndexEntry>> {
    let mut copy = BTreeMap::new();
    for (key, locations) in copies {
        if locations.iter().any(|p| keep.contains(p)) {
            continue;
        }
        let mut sources: Vec<IndexEntry> = Vec::new();
        let first = home[key];
        for pack in std::iter::once(&first).chain(locations.iter().filter(|p| **p != first)) {
            if let Some(b) = packs[pack].iter().find(|b| (b.blob_type, b.id) == *key) {
                sources.push(IndexEntry {
                    pack: *pack,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                });
            }
        }
        copy.insert(*key, sources);
    }
    copy
}

/// What happens to each indexed pack.
#[derive(Debug, Default, PartialEq, Eq)]
struct PackDecisions {
    keep: BTreeSet<Id>,
    repack: BTreeSet<Id>,
    remove: BTreeSet<Id>,
    missing: BTreeSet<Id>,
}

/// Decides per pack from its accounting alone (`listing`: the packs that exist, with sizes;
/// `target`: the target pack size). `counts` must hold the blob totals; the pack and
/// repack/remove figures are added here.
fn decide_packs(
    info: &BTreeMap<Id, PackInfo>,
    listing: &BTreeMap<Id, u64>,
    opts: &PruneOptions,
    target: u64,
    counts: &mut PruneCounts,
) -> Result<PackDecisions> {
    let small_below = if opts.repack_small {
        target / 5 * 4
    } else {
        target / 25
    };
    let mut d = PackDecisions::default();
    let mut candidates: Vec<(Id, &PackInfo)> = Vec::new();
    let mut small: Vec<(Id, &PackInfo)> = Vec::new();
    for (id, pi) in info {
        let Some(&size) = listing.get(id) else {
            // Missing: used_blobs is 0 here, since homes are existing packs only.
            d.missing.insert(*id);
            counts.remove_blobs += pi.unused_blobs;
            counts.remove_bytes += pi.unused_size;
            continue;
        };
        if pi.used_blobs > 0 && pi.total() != size {
            return Err(refuse(format!(
                "{} is {size} bytes but its index entries add up to {} (run check)",
                pack_path(id),
                pi.total()
            )));
        }
        match (pi.used_blobs, pi.unused_blobs) {
            (0, _) => counts.packs_unused += 1,
            (_, 0) => counts.packs_used += 1,
            _ => counts.packs_partly_used += 1,
        }
        let mixed = pi.has_data && pi.has_tree;
        if pi.used_blobs == 0 {
            d.remove.insert(*id);
            counts.remove_blobs += pi.unused_blobs;
            counts.remove_bytes += pi.unused_size;
        } else if pi.unused_blobs == 0 && !mixed && !pi.uncompressed_tree {
            if size >= small_below {
                d.keep.insert(*id);
            } else {
                small.push((*id, pi));
            }
        } else {
            candidates.push((*id, pi));
        }
    }
    // A few small packs are not worth rewriting, and rewriting a lone small pack would only
    // produce another small pack on every run.
    if small.len() < 10 {
        d.keep.extend(small.iter().map(|(id, _)| *id));
    } else {
        candidates.extend(small);
    }
    // Trees first, then small packs, then the highest share of unused space.
    candidates.sort_by(|(ia, a), (ib, b)| {
        let key = |p: &PackInfo| (p.is_data_only(), p.total() >= small_below);
        key(a)
            .cmp(&key(b))
            .then_with(|| {
                (u128::from(b.unused_size) * u128::from(a.used_size))
                    .cmp(&(u128::from(a.unused_size) * u128::from(b.used_size)))
            })
            .then_with(|| ia.cmp(ib))
    });
    let p = opts.max_unused_percent;
    let max_unused_after = (p / (100.0 - p) * counts.used_bytes as f64) as u64;
    let total_unused = counts.unused_bytes + counts.duplicate_bytes;
    for (id, pi) in candidates {
        let unused_after =
            total_unused.saturating_sub(counts.remove_bytes + counts.repack_removed_bytes);
        let must = !pi.is_data_only() || pi.uncompressed_tree;
        if !must && unused_after < max_unused_after && pi.total() >= small_below {
            d.keep.insert(id);
            continue;
        }
        d.repack.insert(id);
        counts.repack_blobs += pi.used_blobs + pi.unused_blobs;
        counts.repack_bytes += pi.total();
        counts.repack_removed_blobs += pi.unused_blobs;
        counts.repack_removed_bytes += pi.unused_size;
    }

    Ok(d)
}

/// Collects sealed blobs of one type into packs and writes them.
struct PackBuilder<'a> {
    repo: &'a Repository,
    body: Vec<u8>,
    blobs: Vec<PackedBlob>,
    written: Vec<IndexPack>,
    bytes: u64,
}

impl<'a> PackBuilder<'a> {
    fn new(repo: &'a Repository) -> Self {
        PackBuilder {
            repo,
            body: Vec::new(),
            blobs: Vec::new(),
            written: Vec::new(),
            bytes: 0,
        }
    }

    fn add(
        &mut self,
        t: BlobType,
        id: Id,
        sealed: &[u8],
        uncompressed_length: Option<u32>,
    ) -> Result<()> {
        let offset = u32::try_from(self.body.len()).expect("packs stay below 4 GiB");
        let length = u32::try_from(sealed.len()).map_err(|_| Error::Corrupt {
            what: format!("{t} blob {id}"),
            message: "larger than 4 GiB".into(),
        })?;
        self.body.extend_from_slice(sealed);
        self.blobs.push(PackedBlob {
            blob_type: t,
            id,
            offset,
            length,
            uncompressed_length,
        });
        if self.body.len() >= DEFAULT_PACK_SIZE {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let header = self
            .repo
            .key()
            .seal(&format::encode_pack_header(&self.blobs));
        let mut pack = std::mem::take(&mut self.body);
        pack.extend_from_slice(&header);
        pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
        let id = Id::hash(&pack);
        self.repo
            .backend()
            .write_hashed(FileType::Pack, &id, &pack)?;
        self.bytes += pack.len() as u64;
        let blobs = std::mem::take(&mut self.blobs)
            .iter()
            .map(PackedBlob::to_index_blob)
            .collect();
        self.written.push(IndexPack { id, blobs });
        Ok(())
    }
}

/// Carries out a plan under an exclusive lock. Fails without changing anything if the
/// repository changed since the plan was made (new snapshots, index files or packs).
pub fn execute(repo: &Repository, plan: &PrunePlan, progress: &dyn Progress) -> Result<PruneStats> {
    let lock = Lock::exclusive(repo)?;
    let obs = observe(repo)?;
    let now_snapshots: Vec<Id> = obs.snapshots.iter().map(|(id, _)| *id).collect();
    if obs.index_files != plan.index_files || now_snapshots != plan.snapshots {
        return Err(refuse(
            "the repository changed since the prune plan was made (snapshots or index files differ); plan again".into(),
        ));
    }
    let mut stats = PruneStats::default();

    // 1. Packs no index lists: nothing refers to them.
    delete_packs(
        repo,
        &lock,
        &plan.unreferenced_packs,
        &obs.listing,
        &mut stats,
        progress,
    )?;

    if plan.rewrites_index() {
        // 2. Copy the blobs still needed out of the packs that go.
        let mut by_pack: BTreeMap<Id, Vec<(BlobType, Id)>> = BTreeMap::new();
        for (key, sources) in &plan.copy {
            if let Some(first) = sources.first() {
                by_pack.entry(first.pack).or_default().push(*key);
            }
        }
        let total: u64 = by_pack.keys().filter_map(|p| obs.listing.get(p)).sum();
        progress.set_total(Some(total));
        progress.message("repacking");
        let mut data = PackBuilder::new(repo);
        let mut trees = PackBuilder::new(repo);
        for (pack, keys) in &by_pack {
            let bytes = repo.backend().read(FileType::Pack, &pack.to_hex())?;
            progress.add_done(bytes.len() as u64);
            for key in keys {
                let (sealed, uncompressed_length) =
                    fetch_verified(repo, *key, &plan.copy[key], &bytes)?;
                let builder = if key.0 == BlobType::Tree {
                    &mut trees
                } else {
                    &mut data
                };
                builder.add(key.0, key.1, &sealed, uncompressed_length)?;
                stats.blobs_repacked += 1;
            }
        }
        data.flush()?;
        trees.flush()?;
        stats.packs_written = (data.written.len() + trees.written.len()) as u64;
        stats.bytes_written = data.bytes + trees.bytes;

        // 3. The new index: kept packs as listed, plus the new ones; it supersedes every old file.
        progress.message("writing index");
        let mut new_packs: Vec<IndexPack> = plan
            .keep_packs
            .iter()
            .map(|id| IndexPack {
                id: *id,
                blobs: plan.pack_blobs[id].clone(),
            })
            .collect();
        new_packs.extend(data.written);
        new_packs.extend(trees.written);
        let mut written = Vec::new();
        let mut file = IndexFile {
            supersedes: plan.index_files.clone(),
            packs: Vec::new(),
        };
        for pack in new_packs {
            if !file.packs.is_empty() && file.blob_count() + pack.blobs.len() > INDEX_BLOBS_PER_FILE
            {
                lock.check()?;
                written.push(repo.save_unpacked(FileType::Index, &file)?);
                file.packs.clear();
            }
            file.packs.push(pack);
        }
        if !file.packs.is_empty() || written.is_empty() {
            lock.check()?;
            written.push(repo.save_unpacked(FileType::Index, &file)?);
        }
        stats.index_files_written = written.len() as u64;

        // 4. The old index files, now superseded.
        for id in &plan.index_files {
            if !written.contains(id) {
                lock.check()?;
                repo.backend().remove(FileType::Index, &id.to_hex())?;
                stats.index_files_deleted += 1;
            }
        }

        // 5. Only now the packs nothing refers to any more.
        progress.message("deleting packs");
        let doomed: BTreeSet<Id> = plan
            .repack_packs
            .union(&plan.remove_packs)
            .copied()
            .collect();
        delete_packs(repo, &lock, &doomed, &obs.listing, &mut stats, progress)?;
    }
    Ok(stats)
}

fn delete_packs(
    repo: &Repository,
    lock: &crate::lock::LockGuard,
    packs: &BTreeSet<Id>,
    listing: &BTreeMap<Id, u64>,
    stats: &mut PruneStats,
    _progress: &dyn Progress,
) -> Result<()> {
    for id in packs {
        // A lost exclusive lock: a backup may have started and reuse these packs.
        lock.check()?;
        repo.backend().remove(FileType::Pack, &id.to_hex())?;
        stats.packs_deleted += 1;
        stats.bytes_deleted += listing.get(id).copied().unwrap_or(0);
    }
    Ok(())
}

/// The sealed bytes of a blob to copy, verified (decrypt, decompress, hash). Tries the copy in
/// `pack_bytes` (the first source) and then the other copies. Uncompressed trees come back
/// compressed and resealed. A copy in `pack_bytes` is borrowed from there, not copied once
/// more beside the copy its check decrypts (a tree blob can be large).
fn fetch_verified<'a>(
    repo: &Repository,
    (t, id): (BlobType, Id),
    sources: &[IndexEntry],
    pack_bytes: &'a [u8],
) -> Result<(Cow<'a, [u8]>, Option<u32>)> {
    let mut last_err = None;
    for (i, src) in sources.iter().enumerate() {
        let sealed = if i == 0 {
            let start = src.offset as usize;
            match pack_bytes.get(start..start + src.length as usize) {
                Some(s) => Cow::Borrowed(s),
                None => {
                    last_err = Some(Error::Corrupt {
                        what: pack_path(&src.pack),
                        message: format!("{t} blob {id} lies beyond the end of the pack"),
                    });
                    continue;
                }
            }
        } else {
            match crate::repo::check_claim(t, &id, src).and_then(|()| {
                repo.backend().read_range(
                    FileType::Pack,
                    &src.pack.to_hex(),
                    u64::from(src.offset),
                    u64::from(src.length),
                )
            }) {
                Ok(s) => Cow::Owned(s),
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            }
        };
        match repo.decode_blob(t, &id, src, sealed.to_vec()) {
            Ok(plain) => {
                let v2 = repo.config().version >= 2;
                if v2
                    && t == BlobType::Tree
                    && src.uncompressed_length.is_none()
                    && !plain.is_empty()
                {
                    let compressed = zstd::bulk::compress(&plain, 3)
                        .map_err(|e| Error::Invalid(format!("zstd compression failed: {e}")))?;
                    let len = u32::try_from(plain.len()).map_err(|_| Error::Corrupt {
                        what: format!("tree blob {id}"),
                        message: "larger than 4 GiB".into(),
                    })?;
                    return Ok((Cow::Owned(repo.key().seal(&compressed)), Some(len)));
                }
                return Ok((sealed, src.uncompressed_length));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(refuse_partial(t, id, last_err))
}

fn refuse_partial(t: BlobType, id: Id, cause: Option<Error>) -> Error {
    let cause = cause
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no copy is known".into());
    Error::Corrupt {
        what: format!("{t} blob {id}"),
        message: format!(
            "no intact copy to repack ({cause}); prune stopped before deleting anything that is still needed, run check"
        ),
    }
}

#[cfg(test)]
mod tests;
