//! Restoring a file-tree snapshot onto a directory, ours or one restic wrote.
//!
//! The snapshot's root tree is laid out directly under the target (as `restic restore
//! --target` does for a snapshot taken with `restic backup .`, the layout our backups use).
//! The restore runs in four steps, planned from the trees first:
//!
//! 1. walk the trees: create directories, symlinks, device nodes and fifos, and create every
//!    file at its final size; sockets are skipped (restic neither backs them up nor restores
//!    them), as are node types we do not know (counted as warnings);
//! 2. fill the files: the contents of all files, one after the other, are restored like one
//!    image (ranged pack reads, many in flight, decoded on a thread per core, see
//!    [`crate::block`]), so many small files restore with as few requests as a large one and
//!    each file is written front to back;
//! 3. hard links: a file node with `links > 1` whose (`device_id`, `inode`) was already
//!    restored within this snapshot becomes a hard link to that first path;
//! 4. metadata: owner, mode, xattrs and times of every entry, then of the directories from the
//!    deepest up (their times would otherwise be changed by creating their entries), and at last
//!    the target directory itself if the snapshot carries the volume root's metadata
//!    ([`ROOT_NODE_FIELD`], written by our backups).
//!
//! What grants privilege is restored only when asked for ([`RestoreOptions::privileged_files`]):
//! without it, device nodes are not created, files (not directories) lose their set-user-id
//! and set-group-id bits, and no file capability (`security.capability`) is set; the summary
//! counts each. A tree from a volume someone else filled should not become a set-user-id
//! root program or a raw disk node in the volume of whoever restores it.
//!
//! Restoring into a non-empty directory: entries of the snapshot replace what is there under the
//! same name. A non-directory in the way is removed first (never written through, so a symlink
//! in the target cannot redirect a write outside it); an existing directory is reused; a
//! directory where the snapshot has a non-directory is an error. Nothing else is removed:
//! extra files, and the file system's `lost+found`, are left alone.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode};
use serde::Serialize;

use crate::backend::FileType as RepoFile;
use crate::format::{BlobType, Snapshot};
use crate::fsmeta::{MetadataWarnings, restore_metadata};
use crate::id::Id;
use crate::image_writer::{REORDER_WINDOW, Target, write_in_order};
use crate::index::IndexEntry;
use crate::open_snapshot::OpenSnapshot;
use crate::pack_reader::{ReaderOptions, read_plan};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore_plan::PlanOptions;
use crate::tree::{Node, NodeType, Tree};
use crate::{Error, Result};

/// The snapshot field holding the metadata node of the backed-up directory itself (restic's
/// `backup .` layout has no node for it). restic ignores the field.
pub const ROOT_NODE_FIELD: &str = "volbackup_root";

/// Settings of [`restore_tree`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Threads that decrypt, decompress and verify blobs (at most one per core is used).
    pub threads: usize,
    /// Pack reads in flight at once (0: the backend's default, see
    /// [`crate::backend::Backend::read_concurrency`]).
    pub read_concurrency: usize,
    /// Apply the snapshot's root metadata (owner, mode, times of the backed-up directory) to
    /// the target directory (default true).
    pub restore_root_metadata: bool,
    /// Do not take a shared repository lock (for read-only repositories).
    pub no_lock: bool,
    /// Restore what grants privilege: device nodes, set-user-id and set-group-id bits of
    /// files, file capabilities (the `security.capability` extended attribute). Default false:
    /// those are left out and counted in the summary.
    pub privileged_files: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        RestoreOptions {
            threads: cpus.clamp(1, 16),
            read_concurrency: 0,
            restore_root_metadata: true,
            no_lock: false,
            privileged_files: false,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreSummary {
    /// Regular files written (hard links not counted).
    pub files: u64,
    /// Directories created or reused (the target not counted).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created to files restored earlier.
    pub hardlinks: u64,
    /// Block and character devices created.
    pub devices: u64,
    /// Named pipes created.
    pub fifos: u64,
    /// Socket nodes skipped (they cannot be restored).
    pub sockets_skipped: u64,
    /// Device nodes not created (restoring them was not asked for).
    pub devices_skipped: u64,
    /// Files restored without their set-user-id or set-group-id bit (not asked for).
    pub setid_cleared: u64,
    /// File capabilities not set (not asked for).
    pub capabilities_skipped: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Problems that did not stop the restore (unknown node types, refused xattrs).
    pub warnings: Vec<String>,
}

struct FileJob {
    path: PathBuf,
    /// The file's chunks in order, with where each is stored.
    chunks: Vec<(Id, IndexEntry)>,
}

#[derive(Default)]
struct Plan {
    files: Vec<FileJob>,
    /// (path, first path of the same inode)
    links: Vec<(PathBuf, PathBuf)>,
    /// Non-directories, in walk order: metadata restored after the content.
    entries: Vec<(PathBuf, Node)>,
    /// Directories in walk order (parents first).
    dirs: Vec<(PathBuf, Node)>,
    inodes: HashMap<(u64, u64), PathBuf>,
    total_bytes: u64,
}

/// Restores snapshot `snapshot` into `target` (created if missing). See the module docs.
pub fn restore_tree(
    repo: &Repository,
    snapshot: &Id,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    if !opts.no_lock {
        let open = OpenSnapshot::open(repo, &snapshot.to_hex())?;
        return restore_open(repo, &open, target, opts, progress);
    }
    if repo.index().is_empty() {
        repo.load_usable_index()?;
    }
    let snap: Snapshot = repo.load_unpacked(RepoFile::Snapshot, snapshot)?;
    let root = load_tree(repo, &snap.tree)?;
    restore_loaded(repo, snapshot, &snap, root, target, opts, progress)
}

/// Restores an opened snapshot (locked, its index and root tree loaded) into `target`
/// (created if missing); `opts.no_lock` does not apply. See the module docs.
pub fn restore_open(
    repo: &Repository,
    open: &OpenSnapshot,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let root = open.root.clone();
    restore_loaded(repo, &open.id, &open.snapshot, root, target, opts, progress)
}

fn restore_loaded(
    repo: &Repository,
    snapshot: &Id,
    snap: &Snapshot,
    root: Tree,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    if !std::fs::symlink_metadata(target)
        .map_err(|e| Error::io(target, e))?
        .is_dir()
    {
        return Err(Error::Invalid(format!(
            "restore target {} is not a directory",
            target.display()
        )));
    }

    let mut summary = RestoreSummary::default();
    let mut plan = Plan::default();
    progress.message("creating directories and files");
    let mut walk = Walk {
        plan: &mut plan,
        summary: &mut summary,
        privileged: opts.privileged_files,
    };
    walk_loaded(repo, &snap.tree, root, target, &mut walk)?;

    progress.set_total(Some(plan.total_bytes));
    progress.message("restoring file contents");
    write_contents(repo, &plan.files, opts, progress)?;
    summary.bytes = plan.total_bytes;

    for (path, first) in &plan.links {
        remove_non_dir(path)?;
        std::fs::hard_link(first, path).map_err(|e| Error::io(path, e))?;
        summary.hardlinks += 1;
    }

    progress.message("restoring metadata");
    let mut warnings = MetadataWarnings::default();
    for (path, node) in &plan.entries {
        restore_metadata(path, node, &mut warnings)?;
    }
    for (path, node) in plan.dirs.iter().rev() {
        restore_metadata(path, node, &mut warnings)?;
    }
    if opts.restore_root_metadata
        && let Some(root) = snap.extra.get(ROOT_NODE_FIELD)
    {
        let mut node: Node = serde_json::from_value(root.clone()).map_err(|e| Error::Corrupt {
            what: format!("snapshot {}", snapshot.short()),
            message: format!("field {ROOT_NODE_FIELD} is not a node: {e}"),
        })?;
        if !opts.privileged_files {
            unprivileged(&mut node, &mut summary);
        }
        restore_metadata(target, &node, &mut warnings)?;
    }
    summary.warnings.extend(warnings.messages);
    Ok(summary)
}

fn load_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let raw = repo.read_blob(BlobType::Tree, id)?;
    Tree::from_blob(&raw, &format!("tree {}", id.short()))
}

/// A node name that is safe to join onto a directory: one path component.
fn checked_name<'a>(node: &'a Node, tree: &Id) -> Result<&'a OsStr> {
    let b = node.name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Error::Corrupt {
            what: format!("tree {}", tree.short()),
            message: format!("entry name {:?} is not a single path component", node.name),
        });
    }
    Ok(&node.name)
}

/// What the walk over the trees fills in.
struct Walk<'a> {
    plan: &'a mut Plan,
    summary: &'a mut RestoreSummary,
    /// [`RestoreOptions::privileged_files`].
    privileged: bool,
}

/// The extended attribute that holds a file's capabilities.
const CAPABILITY_XATTR: &str = "security.capability";

/// Takes what grants privilege out of a node's metadata (its set-user-id and set-group-id
/// bits, unless it is a directory, where set-group-id only passes the group on; its
/// capabilities), counting what was taken.
fn unprivileged(node: &mut Node, summary: &mut RestoreSummary) {
    use crate::tree::gomode::{SETGID, SETUID};
    if node.node_type != NodeType::Dir && node.mode & (SETUID | SETGID) != 0 {
        node.mode &= !(SETUID | SETGID);
        summary.setid_cleared += 1;
    }
    let before = node.extended_attributes.len();
    node.extended_attributes
        .retain(|a| a.name != CAPABILITY_XATTR);
    summary.capabilities_skipped += (before - node.extended_attributes.len()) as u64;
}

fn walk(repo: &Repository, tree_id: &Id, dir: &Path, w: &mut Walk) -> Result<()> {
    let tree = load_tree(repo, tree_id)?;
    walk_loaded(repo, tree_id, tree, dir, w)
}

/// [`walk`] of a tree already read.
fn walk_loaded(
    repo: &Repository,
    tree_id: &Id,
    tree: Tree,
    dir: &Path,
    w: &mut Walk,
) -> Result<()> {
    for mut node in tree.nodes {
        let path = dir.join(checked_name(&node, tree_id)?);
        if matches!(node.node_type, NodeType::Dev | NodeType::CharDev) && !w.privileged {
            w.summary.devices_skipped += 1;
            continue;
        }
        if !w.privileged {
            unprivileged(&mut node, w.summary);
        }
        let (plan, summary) = (&mut *w.plan, &mut *w.summary);
        match &node.node_type {
            NodeType::Dir => {
                let subtree = node.subtree.ok_or_else(|| Error::Corrupt {
                    what: format!("tree {}", tree_id.short()),
                    message: format!("directory {:?} has no subtree", node.name),
                })?;
                make_dir(&path)?;
                summary.dirs += 1;
                plan.dirs.push((path.clone(), node));
                walk(repo, &subtree, &path, w)?;
            }
            NodeType::File => {
                if node.links > 1 && node.inode != 0 {
                    let key = (node.device_id, node.inode);
                    if let Some(first) = plan.inodes.get(&key) {
                        plan.links.push((path.clone(), first.clone()));
                        plan.entries.push((path, node));
                        continue;
                    }
                    plan.inodes.insert(key, path.clone());
                }
                let mut chunks = Vec::with_capacity(node.content.len());
                let mut offset = 0u64;
                for id in &node.content {
                    let entry =
                        repo.blob_entry(BlobType::Data, id)
                            .ok_or_else(|| Error::Corrupt {
                                what: path.display().to_string(),
                                message: format!(
                                    "data blob {id} is not in the repository index (run check)"
                                ),
                            })?;
                    chunks.push((*id, entry));
                    offset += u64::from(entry.plaintext_len());
                }
                remove_non_dir(&path)?;
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                f.set_len(offset).map_err(|e| Error::io(&path, e))?;
                plan.total_bytes += offset;
                summary.files += 1;
                if !chunks.is_empty() {
                    plan.files.push(FileJob {
                        path: path.clone(),
                        chunks,
                    });
                }
                plan.entries.push((path, node));
            }
            NodeType::Symlink => {
                remove_non_dir(&path)?;
                std::os::unix::fs::symlink(&node.link_target, &path)
                    .map_err(|e| Error::io(&path, e))?;
                summary.symlinks += 1;
                plan.entries.push((path, node));
            }
            NodeType::Dev | NodeType::CharDev | NodeType::Fifo => {
                remove_non_dir(&path)?;
                let (ft, dev) = match node.node_type {
                    NodeType::Dev => (FileType::BlockDevice, node.device),
                    NodeType::CharDev => (FileType::CharacterDevice, node.device),
                    _ => (FileType::Fifo, 0),
                };
                rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| Error::io(&path, e.into()))?;
                if node.node_type == NodeType::Fifo {
                    summary.fifos += 1;
                } else {
                    summary.devices += 1;
                }
                plan.entries.push((path, node));
            }
            NodeType::Socket => summary.sockets_skipped += 1,
            NodeType::Other(t) => summary.warnings.push(format!(
                "{}: node type {t:?} cannot be restored; skipped",
                path.display()
            )),
        }
    }
    Ok(())
}

/// Makes sure `path` is a directory: reuses one, replaces a non-directory.
fn make_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io(path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    std::fs::create_dir(path).map_err(|e| Error::io(path, e))
}

/// Removes whatever non-directory is at `path`; a directory there is an error.
fn remove_non_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Err(Error::io(
            path,
            std::io::Error::other(
                "a directory is in the way of a non-directory in the snapshot; remove it and retry",
            ),
        )),
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Fetches every chunk and writes the files: one plan of pack reads over all of them (their
/// contents one after the other, as if one image), so a tree of small files is read with as
/// few requests as an image, and each file is written front to back.
fn write_contents(
    repo: &Repository,
    files: &[FileJob],
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let mut content = Vec::new();
    let mut starts = Vec::with_capacity(files.len());
    let mut at = 0u64;
    for f in files {
        starts.push(at);
        for &(id, entry) in &f.chunks {
            content.push((id, entry));
            at += u64::from(entry.plaintext_len());
        }
    }
    let plan = crate::restore_plan::plan(&content, &PlanOptions::default());
    let mut reader = ReaderOptions::for_repository(repo);
    if opts.read_concurrency > 0 {
        reader.read_concurrency = opts.read_concurrency;
    }
    reader.decode_threads = opts.threads.clamp(1, reader.decode_threads);
    let mut target = TreeTarget {
        files,
        starts,
        open: None,
        written: 0,
    };
    read_plan(repo, &plan, &reader, |deliveries| {
        write_in_order(&mut target, &plan, deliveries, REORDER_WINDOW, progress)
    })?;
    Ok(())
}

/// The files of a tree restore as one image: their contents one after the other. Each file was
/// just created at its final size, so it reads as zeros where nothing is written.
struct TreeTarget<'a> {
    files: &'a [FileJob],
    /// Where each file starts in the image (increasing: every file has content).
    starts: Vec<u64>,
    /// The file written last, kept open.
    open: Option<(usize, std::fs::File)>,
    written: u64,
}

impl TreeTarget<'_> {
    /// The file holding image byte `at`, opened, and the offset in it.
    fn locate(&mut self, at: u64) -> Result<(&std::fs::File, &Path, u64)> {
        let i = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
        let path = &self.files[i].path;
        if self.open.as_ref().is_none_or(|(j, _)| *j != i) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            self.open = Some((i, f));
        }
        let (_, f) = self.open.as_ref().expect("opened above");
        Ok((f, path, at - self.starts[i]))
    }
}

impl Target for TreeTarget<'_> {
    fn put(&mut self, start: u64, data: &[u8]) -> Result<()> {
        let (f, path, off) = self.locate(start)?;
        f.write_all_at(data, off).map_err(|e| Error::io(path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }
    fn read_back(&mut self, start: u64, buf: &mut [u8]) -> Result<()> {
        let (f, path, off) = self.locate(start)?;
        f.read_exact_at(buf, off).map_err(|e| Error::io(path, e))
    }
    fn finish(&mut self) -> Result<u64> {
        Ok(self.written)
    }
}
