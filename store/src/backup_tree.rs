//! Backing up a directory tree (a Filesystem volume) as a restic snapshot.
//!
//! Layout: the snapshot's root tree holds the directory's *contents*, exactly as `restic backup
//! .` run inside the directory stores them (checked with restic 0.14), and `paths` records the
//! directory's absolute path, as restic does. So `restic restore latest --target X` (and our
//! [`crate::restore_tree::restore_tree`]) put the volume's files directly under `X`. restic has
//! no node for the directory itself in this layout; we keep its metadata (owner, mode, times,
//! xattrs of the volume root) in the snapshot field
//! [`ROOT_NODE_FIELD`](crate::restore_tree::ROOT_NODE_FIELD), which restic ignores.
//!
//! The walk is sorted by name bytes and builds trees bottom-up. Files are cut by the
//! repository's chunker and their chunks handed to the [`BlobWriter`], whose workers compress,
//! seal and pack them while the walk goes on. What restic 0.14 does, we do:
//!
//! - a file whose size, mtime, ctime and inode equal those of the parent snapshot's node at the
//!   same path reuses that node's content list without being read (`ignore_ctime` and
//!   `ignore_inode` relax this like restic's `--ignore-ctime`/`--ignore-inode`);
//! - hard links: every link is recorded as a file node with its `inode`, `device_id` and
//!   `links`; the content of an inode is read once and its content list reused for its other
//!   links, and restore relinks them by (`device_id`, `inode`);
//! - sockets are not backed up (counted in the summary);
//! - atime is recorded as the mtime unless [`TreeOptions::with_atime`] (restic's default), so
//!   that merely reading files does not change the trees;
//! - an entry that cannot be read (permission, vanished, I/O error) is left out of the snapshot
//!   and reported as a warning naming its path; the backup goes on. Callers that want an
//!   all-or-nothing backup check [`BackupSummary::warnings`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::block::BackupOptions;
use crate::chunker::{Chunker, ChunkerTables, Pol};
use crate::format::{BlobType, Snapshot};
use crate::fsmeta::node_from_metadata;
use crate::id::Id;
use crate::packer::{BlobWriter, Pending};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore_tree::ROOT_NODE_FIELD;
use crate::tree::{Node, NodeType, Tree, time_from_unix};
use crate::{Error, Result};

/// File-tree settings beyond the common [`BackupOptions`], for [`backup_tree_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeOptions {
    /// The path recorded in the snapshot's `paths` (default: the directory's absolute path).
    pub path: Option<String>,
    /// Do not compare ctime when deciding a file is unchanged (restic's `--ignore-ctime`).
    pub ignore_ctime: bool,
    /// Do not compare inode numbers when deciding a file is unchanged (`--ignore-inode`).
    pub ignore_inode: bool,
    /// Record real access times. By default, as restic does without `--with-atime`, a node's
    /// atime is its mtime, so that reading a tree does not change its tree blobs.
    pub with_atime: bool,
}

/// What a tree backup did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackupSummary {
    /// The new snapshot.
    pub snapshot_id: Id,
    /// Its root tree.
    pub tree: Id,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent snapshot that had changed (read again).
    pub files_changed: u64,
    /// Files reused from the parent snapshot without reading.
    pub files_unmodified: u64,
    /// Further links of a hard-linked file already read in this backup.
    pub hardlinks: u64,
    /// Directories (the root not counted).
    pub dirs: u64,
    /// Symlinks, devices, fifos.
    pub others: u64,
    /// Sockets left out (restic does not back them up either).
    pub sockets_skipped: u64,
    /// Sum of the sizes of all files in the snapshot.
    pub bytes_total: u64,
    /// File bytes actually read from disk.
    pub bytes_read: u64,
    /// Blobs (data and tree) the repository did not have yet.
    pub blobs_new: u64,
    /// Plaintext bytes of those blobs.
    pub bytes_new: u64,
    /// Bytes they take in packs (compressed, sealed).
    pub bytes_stored: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Entries left out, one line each naming the path and the reason.
    pub warnings: Vec<String>,
}

struct Walker<'a> {
    writer: &'a BlobWriter,
    lock: &'a crate::lock::LockGuard,
    repo: &'a Repository,
    tables: std::sync::Arc<ChunkerTables>,
    tree_opts: &'a TreeOptions,
    progress: &'a dyn Progress,
    summary: BackupSummary,
    /// (st_dev, st_ino) of hard-linked files read in this backup -> content.
    inodes: HashMap<(u64, u64), Vec<Id>>,
    buf: Vec<u8>,
    /// The largest tree blob written ([`crate::repo::MAX_TREE_BLOB`]: what a reader accepts).
    tree_limit: u64,
}

/// A file node whose content ids are still being computed by the writer.
enum Content {
    Ready,
    Pending(Vec<Pending>),
}

/// Backs up the directory `root` into `repo` and saves a snapshot. See the module docs.
/// `opts.total_size` is ignored (the walk measures the tree first).
pub fn backup_tree(
    repo: &Repository,
    root: &Path,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupSummary> {
    backup_tree_with(repo, root, opts, &TreeOptions::default(), progress)
}

/// [`backup_tree`] with file-tree settings.
pub fn backup_tree_with(
    repo: &Repository,
    root: &Path,
    opts: &BackupOptions,
    tree_opts: &TreeOptions,
    progress: &dyn Progress,
) -> Result<BackupSummary> {
    let limit = u64::from(crate::repo::MAX_TREE_BLOB);
    backup_tree_within(repo, root, opts, tree_opts, progress, limit)
}

/// [`backup_tree_with`] refusing a directory whose tree would be larger than `tree_limit`.
fn backup_tree_within(
    repo: &Repository,
    root: &Path,
    opts: &BackupOptions,
    tree_opts: &TreeOptions,
    progress: &dyn Progress,
    tree_limit: u64,
) -> Result<BackupSummary> {
    let started = Instant::now();
    // The index is loaded under the lock: one loaded before it may list packs a prune has
    // since removed, and a blob found there would not be written again.
    let lock = crate::resume::lock_for_backup(repo)?;
    let root = std::path::absolute(root).map_err(|e| Error::io(root, e))?;
    let root_md = std::fs::metadata(&root).map_err(|e| Error::io(&root, e))?;
    if !root_md.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory: a file-tree backup needs a directory",
            root.display()
        )));
    }
    let mut root_node = node_from_metadata(&root, OsString::new(), &root_md)?;
    if !tree_opts.with_atime {
        root_node.atime = root_node.mtime;
    }

    let parent_tree = match &opts.parent {
        Some(p) => {
            let snap: Snapshot = repo.load_unpacked(crate::backend::FileType::Snapshot, p)?;
            Some(load_tree(repo, &snap.tree)?)
        }
        None => None,
    };

    progress.message("scanning");
    progress.set_total(Some(scan_size(&root)));

    let pol = Pol(repo.config().chunker_polynomial);
    pol.validate().map_err(|e| {
        Error::Invalid(format!(
            "{}: bad chunker polynomial in config: {e}",
            repo.location()
        ))
    })?;
    let writer = BlobWriter::new(repo, opts.writer)?;
    let mut w = Walker {
        writer: &writer,
        lock: &lock,
        repo,
        tables: ChunkerTables::cached(pol),
        tree_opts,
        progress,
        summary: BackupSummary::default(),
        inodes: HashMap::new(),
        buf: Vec::new(),
        tree_limit,
    };
    progress.message("reading files");
    let tree_id = w.dir(&root, parent_tree.as_ref())?;
    let mut summary = std::mem::take(&mut w.summary);
    drop(w);
    progress.message("writing index");
    // The index and the snapshot refer to every pack written so far: a lost lock means a
    // prune may have removed some of them. `finish` looks before each index file it writes.
    lock.check()?;
    let stats = writer.finish(&lock)?;
    summary.blobs_new = stats.blobs_new;
    summary.bytes_new = stats.bytes_new;
    summary.bytes_stored = stats.bytes_stored;

    let path = match &tree_opts.path {
        Some(p) => p.clone(),
        None => root.to_string_lossy().into_owned(),
    };
    let mut snap = Snapshot::new(tree_id, vec![path]);
    snap.parent = opts.parent;
    snap.tags = opts.tags.clone();
    if !opts.hostname.is_empty() {
        snap.hostname = opts.hostname.clone();
    }
    snap.volbackup = opts.description.clone();
    snap.extra.insert(
        ROOT_NODE_FIELD.to_string(),
        serde_json::to_value(&root_node).map_err(|e| Error::Invalid(format!("root node: {e}")))?,
    );
    lock.check()?;
    summary.snapshot_id = repo.save_snapshot(&snap)?;
    summary.tree = tree_id;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn load_tree(repo: &Repository, id: &Id) -> Result<Tree> {
    let raw = repo.read_blob(BlobType::Tree, id)?;
    Tree::from_blob(&raw, &format!("tree {}", id.short()))
}

/// The sum of the sizes of the regular files under `dir` (for progress; errors ignored, the
/// walk reports them).
fn scan_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            total += scan_size(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

impl Walker<'_> {
    fn warn(&mut self, path: &Path, what: impl std::fmt::Display) {
        self.summary
            .warnings
            .push(format!("{}: {what}", path.display()));
    }

    /// Backs up the entries of `dir`; returns the id of its tree.
    fn dir(&mut self, dir: &Path, parent: Option<&Tree>) -> Result<Id> {
        let mut names: Vec<OsString> = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => names.push(e.file_name()),
                        Err(e) => {
                            self.warn(dir, format_args!("cannot list directory: {e}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => self.warn(dir, format_args!("cannot list directory: {e}")),
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        let mut nodes: Vec<(Node, Content)> = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            let md = match std::fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) => {
                    self.warn(&path, format_args!("cannot stat: {e}"));
                    continue;
                }
            };
            let mut node = match node_from_metadata(&path, name.clone(), &md) {
                Ok(n) => n,
                Err(e) => {
                    self.warn(&path, format_args!("cannot read metadata: {e}"));
                    continue;
                }
            };
            if !self.tree_opts.with_atime {
                node.atime = node.mtime;
            }
            let old = parent.and_then(|t| t.find(&name));
            match node.node_type {
                NodeType::Dir => {
                    let sub_parent = match old {
                        Some(o) if o.node_type == NodeType::Dir => match &o.subtree {
                            Some(id) => match load_tree(self.repo, id) {
                                Ok(t) => Some(t),
                                Err(e) => {
                                    self.warn(
                                        &path,
                                        format_args!(
                                            "parent tree unreadable, reading all files: {e}"
                                        ),
                                    );
                                    None
                                }
                            },
                            None => None,
                        },
                        _ => None,
                    };
                    node.subtree = Some(self.dir(&path, sub_parent.as_ref())?);
                    self.summary.dirs += 1;
                    nodes.push((node, Content::Ready));
                }
                NodeType::File => {
                    if let Some(c) = self.file(&path, &md, &mut node, old)? {
                        nodes.push((node, c));
                    }
                }
                NodeType::Socket => self.summary.sockets_skipped += 1,
                _ => {
                    self.summary.others += 1;
                    nodes.push((node, Content::Ready));
                }
            }
        }

        let mut done = Vec::with_capacity(nodes.len());
        for (mut node, content) in nodes {
            if let Content::Pending(pending) = content {
                node.content = wait_all(pending)?;
            }
            done.push(node);
        }
        let tree = Tree::from_nodes(done)?;
        let entries = tree.nodes.len();
        let blob = tree.to_blob();
        drop(tree);
        if blob.len() as u64 > self.tree_limit {
            // Refused here, so that no snapshot names a tree no reader accepts.
            return Err(Error::Invalid(format!(
                "{}: a directory of {entries} entries makes a tree of {}, more than the {} \
                 a tree may hold (restic keeps a directory in one tree); no snapshot was written",
                dir.display(),
                crate::format::human_bytes(blob.len() as u64),
                crate::format::human_bytes(self.tree_limit)
            )));
        }
        Ok(self.writer.add(BlobType::Tree, blob)?.id)
    }

    fn unchanged(&self, md: &std::fs::Metadata, old: &Node) -> bool {
        old.node_type == NodeType::File
            && old.size == md.size()
            && old.mtime == time_from_unix(md.mtime(), md.mtime_nsec() as u32)
            && (self.tree_opts.ignore_ctime
                || old.ctime == time_from_unix(md.ctime(), md.ctime_nsec() as u32))
            && (self.tree_opts.ignore_inode || old.inode == md.ino())
            && old
                .content
                .iter()
                .all(|id| self.repo.has_blob(BlobType::Data, id))
    }

    /// Fills a file node's content: from the parent snapshot, from an earlier link of the same
    /// inode, or by reading and chunking the file. `Ok(None)`: the file could not be read (a
    /// warning is recorded); errors are the repository's.
    fn file(
        &mut self,
        path: &Path,
        md: &std::fs::Metadata,
        node: &mut Node,
        old: Option<&Node>,
    ) -> Result<Option<Content>> {
        self.lock.check()?;
        let linked = md.nlink() > 1;
        if linked && let Some(content) = self.inodes.get(&(md.dev(), md.ino())) {
            node.content = content.clone();
            self.summary.hardlinks += 1;
            self.summary.bytes_total += md.size();
            self.progress.add_done(md.size());
            return Ok(Some(Content::Ready));
        }
        if let Some(old) = old
            && self.unchanged(md, old)
        {
            node.content = old.content.clone();
            self.summary.files_unmodified += 1;
            self.summary.bytes_total += md.size();
            if linked {
                self.inodes
                    .insert((md.dev(), md.ino()), node.content.clone());
            }
            self.progress.add_done(md.size());
            return Ok(Some(Content::Ready));
        }
        let (pending, size) = match self.read_file(path, md)? {
            Ok(r) => r,
            Err(e) => {
                self.warn(path, format_args!("cannot read file, left out: {e}"));
                return Ok(None);
            }
        };
        // Record what was read: a file that grew or shrank meanwhile stays consistent.
        node.size = size;
        self.summary.bytes_total += size;
        if old.is_some_and(|o| o.node_type == NodeType::File) {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        if linked {
            // Its other links may come next in this very directory: resolve the ids now.
            node.content = wait_all(pending)?;
            self.inodes
                .insert((md.dev(), md.ino()), node.content.clone());
            return Ok(Some(Content::Ready));
        }
        Ok(Some(Content::Pending(pending)))
    }

    /// Chunks a file into the writer. The inner error is the source file's.
    fn read_file(
        &mut self,
        path: &Path,
        md: &std::fs::Metadata,
    ) -> Result<std::io::Result<(Vec<Pending>, u64)>> {
        let f = match open_for_reading(path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        // The path may have been replaced between lstat and open.
        match f.metadata() {
            Ok(fmd) if fmd.ino() == md.ino() && fmd.dev() == md.dev() => {}
            Ok(_) => return Ok(Err(std::io::Error::other("replaced while being backed up"))),
            Err(e) => return Ok(Err(e)),
        }
        let mut chunker =
            Chunker::with_tables(CountingReader { inner: f, n: 0 }, self.tables.clone());
        let mut pending = Vec::new();
        let mut size = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let result = loop {
            match chunker.next_chunk_into(&mut buf) {
                Ok(true) => {
                    let len = buf.len() as u64;
                    size += len;
                    let cap = buf.capacity();
                    let chunk = std::mem::replace(&mut buf, Vec::with_capacity(cap));
                    match self.writer.submit(BlobType::Data, chunk) {
                        Ok(p) => pending.push(p),
                        Err(e) => {
                            self.summary.bytes_read += chunker.into_inner().n;
                            return Err(e);
                        }
                    }
                    self.progress.add_done(len);
                }
                Ok(false) => break Ok((pending, size)),
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        self.summary.bytes_read += chunker.into_inner().n;
        Ok(result)
    }
}

fn wait_all(pending: Vec<Pending>) -> Result<Vec<Id>> {
    pending
        .into_iter()
        .map(|p| p.wait().map(|r| r.id))
        .collect()
}

/// Opens a file without following symlinks and, where permitted, without touching its atime.
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | flags)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}

struct CountingReader {
    inner: File,
    n: u64,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FileType;
    use crate::backend::local::LocalBackend;
    use crate::progress::NoProgress;
    use crate::repo::InitOptions;

    #[test]
    fn a_directory_whose_tree_is_too_large_is_refused_before_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: crate::crypto::KdfParams::insecure_fast(),
            polynomial: None,
        };
        let repo = Repository::init(
            std::sync::Arc::new(LocalBackend::new(dir.path().join("r"))),
            "pw",
            &opts,
        )
        .unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("many")).unwrap();
        for i in 0..40 {
            std::fs::write(src.join("many").join(format!("f{i:02}")), b"x").unwrap();
        }
        std::fs::write(src.join("one"), b"y").unwrap();
        let backup = |limit| {
            backup_tree_within(
                &repo,
                &src,
                &BackupOptions::default(),
                &TreeOptions::default(),
                &NoProgress,
                limit,
            )
        };
        // Forty file nodes take about 12 KiB of JSON; the root's two nodes well under 2 KiB.
        let e = backup(4 << 10).unwrap_err().to_string();
        let many = src.join("many");
        assert!(
            e.starts_with(&format!(
                "{}: a directory of 40 entries makes a tree of",
                many.display()
            )),
            "{e}"
        );
        assert!(e.ends_with("more than the 4.0 KiB a tree may hold (restic keeps a directory in one tree); no snapshot was written"), "{e}");
        assert!(repo.list_ids(FileType::Snapshot).unwrap().is_empty());
        assert!(repo.list_ids(FileType::Lock).unwrap().is_empty());
        let sum = backup(64 << 10).unwrap();
        assert_eq!(sum.files_new, 41);
        assert_eq!(repo.list_ids(FileType::Snapshot).unwrap().len(), 1);
    }
}
