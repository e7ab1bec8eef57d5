//! Picking up after an interrupted backup.
//!
//! A backup writes packs first and the index that lists them only at the end, so a backup
//! killed midway leaves complete packs that no index names. restic's `check` calls them
//! "not referenced in any index" and accepts them; restic's next backup uploads their data
//! again. We do better: before a backup, packs that no index names are read back (their
//! headers only), and a new index file that lists them is written, so their blobs count as
//! stored and the next backup uploads only what is really missing.
//!
//! This is safe under a shared lock: a pack is stored whole or not at all (the backends
//! write atomically), a concurrent backup's packs may be listed twice (restic allows several
//! index entries for a pack), and prune, the only thing that deletes packs, needs an exclusive
//! lock.

use crate::Result;
use crate::backend::{FileInfo, FileType};
use crate::format::{IndexFile, IndexPack, PackedBlob};
use crate::id::Id;
use crate::lock::{Lock, LockGuard};
use crate::repo::Repository;

/// Takes the shared lock a backup holds and, under it, loads the index and adopts the packs
/// that no index names ([`index_unindexed_packs`]). The index files and the packs are listed
/// beside the look for conflicting locks, and index files read ahead while the repository
/// was opened ([`crate::repo::ReadAhead`]) are not read again.
pub fn lock_for_backup(repo: &Repository) -> Result<LockGuard> {
    let (lock, (index_files, packs)) = Lock::shared_and(repo, || {
        std::thread::scope(|s| {
            let packs = s.spawn(|| repo.backend().list(FileType::Pack));
            let index_files = repo.list_ids(FileType::Index);
            let packs = packs.join().expect("pack lister");
            Ok((index_files?, packs?))
        })
    })?;
    repo.load_usable_index_files(index_files)?;
    repo.end_read_ahead();
    index_unindexed_packs(repo, &lock, packs)?;
    Ok(lock)
}

/// What [`index_unindexed_packs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Packs now listed in the new index file.
    pub packs: u64,
    /// Blobs in them.
    pub blobs: u64,
    /// Packs that were left alone because their header did not match their size or did
    /// not decrypt (`check` reports them; `prune` removes them).
    pub skipped: Vec<Id>,
}

/// Of the packs `listed` (all of them, listed under `lock`), reads back those that no loaded
/// index names and writes one index file for those whose header reads back whole, unless the
/// lock was lost meanwhile. Call it with the index loaded.
pub fn index_unindexed_packs(
    repo: &Repository,
    lock: &LockGuard,
    listed: Vec<FileInfo>,
) -> Result<Adopted> {
    let indexed = repo.index().packs();
    let mut adopted = Adopted::default();
    let mut file = IndexFile::default();
    for info in listed {
        let Ok(id) = info.name.parse::<Id>() else {
            continue;
        };
        if indexed.contains(&id) {
            continue;
        }
        match repo.read_pack_header(&id) {
            Ok(blobs) if header_fits(&blobs, info.size) => {
                adopted.packs += 1;
                adopted.blobs += blobs.len() as u64;
                file.packs.push(IndexPack {
                    id,
                    blobs: blobs.iter().map(PackedBlob::to_index_blob).collect(),
                });
            }
            _ => adopted.skipped.push(id),
        }
    }
    if !file.packs.is_empty() {
        lock.check()?;
        repo.save_unpacked(FileType::Index, &file)?;
        repo.add_to_index(&file);
    }
    Ok(adopted)
}

/// Whether the blobs of a header tile the pack from offset 0 up to the header, exactly.
fn header_fits(blobs: &[PackedBlob], pack_size: u64) -> bool {
    let mut end = 0u64;
    for b in blobs {
        if u64::from(b.offset) != end {
            return false;
        }
        end += u64::from(b.length);
    }
    let listed: Vec<_> = blobs.iter().map(PackedBlob::to_index_blob).collect();
    crate::format::pack_size(&listed) == pack_size
}
