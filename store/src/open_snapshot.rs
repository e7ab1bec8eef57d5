//! A snapshot opened for a restore: the repository's shared lock taken, its index loaded, the
//! snapshot and its root tree read — each once, and side by side.
//!
//! Behind an object store every request costs a round trip, and one after the other the
//! requests that open a restore (lock, index, snapshot, root tree) cost more than reading
//! hundreds of MiB of packs with many reads in flight. So the lock is taken while the index
//! files are listed and loaded and the snapshot is looked up; the root tree is read as soon as
//! index and snapshot are in. The index must be the one the lock protects: a prune that ended
//! just before our lock was written may have replaced index files (and removed the packs they
//! named). So once our lock file is written the index files are listed again (beside the look
//! for conflicting locks: a prune that had not ended then holds a lock that look finds), and if
//! the list changed the index is loaded again. Callers take snapshot, tree and lock from here
//! and read none of them a second time. A repository opened with
//! [`Repository::open_warm`] has listed the index and snapshot files, and read them, while the
//! key was derived: those listings are the first ones used here.

use crate::Result;
use crate::backend::FileType;
use crate::format::{BlobType, Snapshot};
use crate::id::Id;
use crate::lock::{Lock, LockGuard};
use crate::repo::Repository;
use crate::tree::{NodeType, Tree};

/// A snapshot ready to restore, with the repository locked (shared) and its index loaded
/// under the lock. The lock is held until this is dropped.
#[derive(Debug)]
pub struct OpenSnapshot {
    /// The snapshot's id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its root tree.
    pub root: Tree,
    lock: LockGuard,
}

impl OpenSnapshot {
    /// Locks `repo` (shared), loads its index and finds the snapshot `spec` (`latest`, a full
    /// id or a unique prefix) and its root tree. Of several failures, a missing snapshot is
    /// reported first, then a failed index load, then a lock that could not be taken.
    pub fn open(repo: &Repository, spec: &str) -> Result<OpenSnapshot> {
        let (lock, index, found, root) = std::thread::scope(|s| {
            // The index files are listed again once the lock file is written, beside the look
            // for conflicting locks.
            let lock = s.spawn(|| Lock::shared_and(repo, || repo.list_ids(FileType::Index)));
            let found = s.spawn(|| repo.find_snapshot_early(spec));
            let index = repo.early_list(FileType::Index).and_then(|listed| {
                repo.load_index_files(listed.clone())?;
                Ok(listed)
            });
            // The root tree is read while the lock is still being taken.
            let found = found.join().expect("snapshot lookup");
            let root = match (&found, &index) {
                (Ok((_, snapshot)), Ok(_)) => Some(read_tree(repo, &snapshot.tree)),
                _ => None,
            };
            (lock.join().expect("lock taker"), index, found, root)
        });
        repo.end_read_ahead();
        let (id, snapshot) = found?;
        let listed = index?;
        let root = root.expect("read once snapshot and index are in");
        let (lock, relisted) = lock?;
        let root = if relisted == listed {
            root?
        } else {
            tracing::debug!("the index files changed before the lock was taken: loading again");
            repo.load_index_files(relisted)?;
            match root {
                Ok(root) => root,
                Err(_) => read_tree(repo, &snapshot.tree)?,
            }
        };
        Ok(OpenSnapshot {
            id,
            snapshot,
            root,
            lock,
        })
    }

    /// The shared lock held while this is open.
    pub fn lock(&self) -> &LockGuard {
        &self.lock
    }

    /// Whether the snapshot is a block image: its root holds one file, named as the
    /// snapshot's only path (`/NAME`, as `restic backup --stdin` writes it).
    pub fn is_block_image(&self) -> bool {
        match (self.snapshot.paths.as_slice(), self.root.nodes.as_slice()) {
            ([path], [node]) => {
                node.node_type == NodeType::File
                    && *path == format!("/{}", node.name.to_string_lossy())
            }
            _ => false,
        }
    }
}

/// Reads and parses a tree blob.
pub(crate) fn read_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let blob = repo.read_blob(BlobType::Tree, id)?;
    Tree::from_blob(&blob, &format!("tree {}", id.short()))
}
