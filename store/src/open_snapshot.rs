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
//! and read none of them a second time. An image restore goes one step further
//! ([`Opening`]): it plans and starts its pack reads from the index loaded before the lock,
//! while the lock is still being confirmed, and writes nothing until it is. A repository opened with
//! [`crate::repo::ReadAhead::SnapshotsAndIndex`] has listed the index and snapshot files, and read them, while the
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
        Ok(Opening::begin(repo, spec)?.confirm()?.0)
    }

    /// The shared lock held while this is open.
    pub fn lock(&self) -> &LockGuard {
        &self.lock
    }

    /// Whether the snapshot is a block image: its root holds one file, named as the
    /// snapshot's only path (`/NAME`, as `restic backup --stdin` writes it).
    pub fn is_block_image(&self) -> bool {
        is_block_image(&self.snapshot, &self.root)
    }
}

fn is_block_image(snapshot: &Snapshot, root: &Tree) -> bool {
    match (snapshot.paths.as_slice(), root.nodes.as_slice()) {
        ([path], [node]) => {
            node.node_type == NodeType::File && *path == format!("/{}", node.name.to_string_lossy())
        }
        _ => false,
    }
}

/// A snapshot found and its root tree read while the lock is still being taken: what a
/// restore can plan its pack reads from, and start them, one round trip before the lock is
/// confirmed. Pack files are named by their hash, so what a read returns is right or the read
/// fails; but nothing may be written from them before [`Opening::confirm`] says the lock is
/// held and the index the plan came from is still the repository's.
pub struct Opening {
    repo: Repository,
    /// The snapshot's id.
    pub id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its root tree, read with the index loaded before the lock (an error when that index
    /// did not name it; it is read again once the lock is held).
    root: Result<Tree>,
    /// The index files loaded.
    listed: Vec<Id>,
    lock: PendingLock,
}

/// The lock being taken on a thread of its own. Dropped unconfirmed, it is waited for, and
/// the lock, if taken, released.
struct PendingLock(Option<std::thread::JoinHandle<Result<Locked>>>);

/// A lock taken, and the index files listed once its file was written.
type Locked = (LockGuard, Vec<Id>);

impl PendingLock {
    /// The lock and the index files listed once it was written.
    fn wait(mut self) -> Result<Locked> {
        let taker = self.0.take().expect("waited for once");
        taker.join().expect("lock taker")
    }
}

impl Drop for PendingLock {
    fn drop(&mut self) {
        if let Some(taker) = self.0.take() {
            drop(taker.join());
        }
    }
}

impl std::fmt::Debug for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opening").field("id", &self.id).finish()
    }
}

impl Opening {
    /// Starts taking the shared lock of `repo` and, meanwhile, loads the index, finds the
    /// snapshot `spec` and reads its root tree; returns without waiting for the lock. Of
    /// several failures, a missing snapshot is reported first, then a failed index load; a
    /// lock taken by then is released.
    pub fn begin(repo: &Repository, spec: &str) -> Result<Opening> {
        // The index files are listed again once the lock file is written, beside the look
        // for conflicting locks.
        let lock = {
            let repo = repo.clone();
            std::thread::Builder::new()
                .name("lock".into())
                .spawn(move || Lock::shared_and(&repo, || repo.list_ids(FileType::Index)))
                .map_err(|e| crate::Error::Invalid(format!("cannot start the lock taker: {e}")))?
        };
        let lock = PendingLock(Some(lock));
        let (index, found, root) = std::thread::scope(|s| {
            let found = s.spawn(|| repo.find_snapshot_ahead(spec));
            let index = repo.listed_ahead(FileType::Index).and_then(|listed| {
                repo.load_usable_index_files(listed.clone())?;
                Ok(listed)
            });
            let found = found.join().expect("snapshot lookup");
            let root = match (&found, &index) {
                (Ok((_, snapshot)), Ok(_)) => Some(read_tree(repo, &snapshot.tree)),
                _ => None,
            };
            (index, found, root)
        });
        repo.end_read_ahead();
        let early = found.and_then(|found| Ok((found, index?)));
        let ((id, snapshot), listed) = match early {
            Ok(early) => early,
            Err(e) => {
                // Whatever became of the lock, it is not wanted.
                drop(lock);
                return Err(e);
            }
        };
        Ok(Opening {
            repo: repo.clone(),
            id,
            snapshot,
            root: root.expect("read once snapshot and index are in"),
            listed,
            lock,
        })
    }

    /// The root tree, if the index loaded before the lock named it.
    pub fn root(&self) -> Option<&Tree> {
        self.root.as_ref().ok()
    }

    /// Waits for the lock. Returns the snapshot opened under it, and whether the index
    /// files changed before it was taken (the index is then loaded again, and whatever was
    /// planned from the earlier one must be planned again).
    pub fn confirm(self) -> Result<(OpenSnapshot, bool)> {
        let Opening {
            repo,
            id,
            snapshot,
            root,
            listed,
            lock,
        } = self;
        let (lock, relisted) = lock.wait()?;
        let changed = relisted != listed;
        let root = if changed {
            tracing::debug!("the index files changed before the lock was taken: loading again");
            // Not held beside the tree read again (a large image's tree is large).
            drop(root);
            repo.load_usable_index_files(relisted)?;
            read_tree(&repo, &snapshot.tree)?
        } else {
            root?
        };
        Ok((
            OpenSnapshot {
                id,
                snapshot,
                root,
                lock,
            },
            changed,
        ))
    }

    /// Whether the snapshot is a block image (see [`OpenSnapshot::is_block_image`]); false
    /// when the root tree is not read yet.
    pub fn is_block_image(&self) -> bool {
        self.root()
            .is_some_and(|root| is_block_image(&self.snapshot, root))
    }
}

/// Reads and parses a tree blob.
pub(crate) fn read_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let blob = repo.read_blob(BlobType::Tree, id)?;
    Tree::from_blob(&blob, &format!("tree {}", id.short()))
}
