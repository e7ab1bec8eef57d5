//! File-tree backup and restore against the real restic 0.14 (`/usr/bin/restic`) as the oracle.
//!
//! One fixture holds every node type restic knows (files, an empty file, nested and empty
//! directories, symlinks, hard links, a character and a block device, a fifo, a socket),
//! extended attributes, setuid/setgid/sticky bits, odd names (quotes, backslashes, newline,
//! tab, control characters, non-ASCII, bytes that are not UTF-8), several owners and explicit
//! times. One comparison helper, [`snapshot_of`], reduces a directory to everything a restore
//! must reproduce; the tests compare those. They need root (mknod, chown) and restic.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use volbackup_store::backend::local::LocalBackend;
use volbackup_store::backup_tree::{BackupSummary, TreeOptions, backup_tree, backup_tree_with};
use volbackup_store::block::BackupOptions;
use volbackup_store::format::BlobType;
use volbackup_store::fsmeta::set_times;
use volbackup_store::id::Id;
use volbackup_store::progress::{CountingProgress, NoProgress};
use volbackup_store::repo::Repository;
use volbackup_store::restore_tree::{RestoreOptions, restore_tree};
use volbackup_store::tree::{Tree, time_from_unix};

const PASSWORD: &str = "restic-tree-test-password";
const RESTIC: &str = "/usr/bin/restic";

// ---------------------------------------------------------------------------------------------
// helpers

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create device nodes and chown files: run them as root"
    );
}

fn restic_in(repo: &Path, cwd: Option<&Path>, args: &[&str]) -> Output {
    assert!(
        Path::new(RESTIC).exists(),
        "{RESTIC} is missing: these tests use the real restic 0.14 as the oracle (apt-get install restic)"
    );
    let mut cmd = Command::new(RESTIC);
    cmd.arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd.output().expect("run restic");
    assert!(
        out.status.success(),
        "restic {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn restic(repo: &Path, args: &[&str]) -> Output {
    restic_in(repo, None, args)
}

/// A new repository made by restic itself (version 2).
fn init_repo(dir: &Path) -> (PathBuf, Repository) {
    let path = dir.join("repo");
    restic(&path, &["init", "--repository-version", "2"]);
    let repo =
        Repository::open(Arc::new(LocalBackend::new(&path)), PASSWORD).expect("open repository");
    repo.load_index().unwrap();
    (path, repo)
}

fn check_read_data(repo: &Path) {
    let out = restic(repo, &["check", "--read-data"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no errors were found"),
        "restic check: {text}"
    );
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// Names restic and Go quote in every way: quotes, backslash, newline, tab, a control
/// character, HTML characters, a non-breaking space, non-ASCII, bytes that are not UTF-8.
fn odd_names() -> Vec<OsString> {
    vec![
        os(b"quo\"te"),
        os(b"back\\slash"),
        os(b"new\nline"),
        os(b"tab\there"),
        os(b"bell\x07ctl\x01"),
        os(b"<html&amp>"),
        os("nbsp\u{a0}ünïcödé 日本".as_bytes()),
        os(b"inv\xff\xfe"),
        os(b"trunc\xe2\x82"),
        os(b"-dash"),
        os(b" space "),
    ]
}

/// Builds the fixture under `root` (which must not exist). `non_utf8_symlink` adds a symlink
/// whose target is not UTF-8: restic 0.14 cannot store such a target (it writes U+FFFD), so
/// comparisons through restic leave it out.
fn build_fixture(root: &Path, non_utf8_symlink: bool) {
    fs::create_dir(root).unwrap();
    let p = |rel: &str| root.join(rel);
    fs::write(p("big.bin"), noise(1, 3 << 20)).unwrap();
    fs::write(p("small.txt"), b"hello, volume\n").unwrap();
    fs::write(p("empty"), b"").unwrap();
    fs::create_dir_all(p("dir/nested/deep")).unwrap();
    fs::write(p("dir/nested/deep/leaf.txt"), noise(2, 70_000)).unwrap();
    fs::create_dir(p("emptydir")).unwrap();
    fs::write(p("dir/zeros"), vec![0u8; 1_200_000]).unwrap();

    // hard links: three names of one inode across directories, and two of an empty file
    fs::write(p("hl_a"), noise(3, 600_000)).unwrap();
    fs::hard_link(p("hl_a"), p("dir/hl_b")).unwrap();
    fs::hard_link(p("hl_a"), p("dir/nested/hl_c")).unwrap();
    fs::write(p("hl_empty1"), b"").unwrap();
    fs::hard_link(p("hl_empty1"), p("hl_empty2")).unwrap();

    std::os::unix::fs::symlink("small.txt", p("link")).unwrap();
    std::os::unix::fs::symlink("../../nowhere/at all", p("dir/dangling")).unwrap();
    std::os::unix::fs::symlink("quo\"te\\back", p("odd_target")).unwrap();
    if non_utf8_symlink {
        std::os::unix::fs::symlink(os(b"x\xffy"), p("bad_target")).unwrap();
    }

    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    mknodat(
        CWD,
        p("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknodat(
        CWD,
        p("blk"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o640),
        makedev(7, 200),
    )
    .unwrap();
    mknodat(
        CWD,
        p("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();

    for (i, name) in odd_names().into_iter().enumerate() {
        let path = root.join(&name);
        fs::write(&path, format!("odd file {i}")).unwrap();
    }
    fs::create_dir(root.join(os(b"odd\ndir\xff"))).unwrap();
    fs::write(root.join(os(b"odd\ndir\xff")).join("inside"), b"x").unwrap();

    // xattrs
    setxattr(&p("small.txt"), "user.comment", b"a note");
    setxattr(&p("small.txt"), "user.binary", &[0, 1, 2, 255]);
    setxattr(&p("dir"), "user.dirattr", b"on a directory");
    setxattr(&p("empty"), "user.empty_value", b"");

    // modes
    chmod(&p("small.txt"), 0o4755);
    chmod(&p("dir/zeros"), 0o2640);
    chmod(&p("emptydir"), 0o1777);
    chmod(&p("dir/nested"), 0o2750);
    chmod(&p("big.bin"), 0o600);
    chmod(&p("hl_empty1"), 0o400);

    // owners (chown clears setuid: set modes again afterwards)
    chown(&p("small.txt"), 1000, 1000);
    chown(&p("big.bin"), 12345, 54321);
    chown(&p("dir"), 65534, 65534);
    chown(&p("link"), 4242, 4343);
    chown(&p("null"), 0, 5);
    chown(&p("hl_a"), 7, 8);
    chmod(&p("small.txt"), 0o4755);
    chown(root, 2000, 3000);
    chmod(root, 0o750);

    // times last, deepest first; atimes in the future so that reading (relatime) leaves them
    set_all_times(root);
}

/// Gives every entry under `root` (and `root`) a distinct mtime with nanoseconds and an atime
/// in 2035, children before parents.
fn set_all_times(root: &Path) {
    fn walk(dir: &Path, n: &mut i64) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            let md = fs::symlink_metadata(&e).unwrap();
            if md.is_dir() {
                walk(&e, n);
            }
            *n += 1;
            set_times(
                &e,
                &time_from_unix(2_050_000_000 + *n, 7),
                &time_from_unix(1_600_000_000 + *n * 3600, (*n as u32) * 1_000_003),
            )
            .unwrap();
        }
    }
    let mut n = 0;
    walk(root, &mut n);
    set_times(
        root,
        &time_from_unix(2_050_000_000, 0),
        &time_from_unix(1_500_000_000, 123_456_789),
    )
    .unwrap();
}

/// Everything about one entry that a restore must reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<Id>,
    link_target: Option<OsString>,
    rdev: u64,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// For a file with several links: the first of its names (in sorted walk order).
    hardlink_group: Option<Vec<u8>>,
}

/// Reduces the tree under `root` to a map from relative path bytes to [`Entry`]. The root
/// itself is keyed `"."`. Sockets are left out (neither restic nor we keep them).
fn snapshot_of(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    fn xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
        let mut names = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap_or(0);
        let mut out: Vec<(OsString, Vec<u8>)> = names[..n]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|name| {
                let mut v = vec![0u8; 4096];
                let len = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
                v.truncate(len);
                (os(name), v)
            })
            .collect();
        out.sort();
        out
    }
    fn entry(p: &Path, inodes: &mut BTreeMap<(u64, u64), Vec<u8>>, rel: &[u8]) -> Option<Entry> {
        let md = fs::symlink_metadata(p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "dev"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            return None;
        };
        let hardlink_group = (ft.is_file() && md.nlink() > 1).then(|| {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.to_vec())
                .clone()
        });
        Some(Entry {
            kind,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: (md.mtime(), md.mtime_nsec()),
            size: if ft.is_file() { md.size() } else { 0 },
            content: ft.is_file().then(|| Id::hash(&fs::read(p).unwrap())),
            link_target: ft
                .is_symlink()
                .then(|| fs::read_link(p).unwrap().into_os_string()),
            rdev: md.rdev(),
            xattrs: if ft.is_symlink() {
                Vec::new()
            } else {
                xattrs(p)
            },
            hardlink_group,
        })
    }
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<Vec<u8>, Entry>,
        inodes: &mut BTreeMap<(u64, u64), Vec<u8>>,
    ) {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let p = dir.join(&name);
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if let Some(e) = entry(&p, inodes, &rel) {
                let is_dir = e.kind == "dir";
                out.insert(rel, e);
                if is_dir {
                    walk(root, &p, out, inodes);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    out.insert(b".".to_vec(), entry(root, &mut inodes, b".").unwrap());
    walk(root, root, &mut out, &mut inodes);
    out
}

/// Asserts two trees are the same; `with_root` also compares the top directory's own metadata.
fn assert_same_tree(expected: &Path, actual: &Path, with_root: bool) {
    let mut a = snapshot_of(expected);
    let mut b = snapshot_of(actual);
    if !with_root {
        a.remove(&b"."[..]);
        b.remove(&b"."[..]);
    }
    let names = |m: &BTreeMap<Vec<u8>, Entry>| -> Vec<String> {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    assert_eq!(
        names(&a),
        names(&b),
        "entries differ between {expected:?} and {actual:?}"
    );
    for (k, ea) in &a {
        assert_eq!(
            Some(ea),
            b.get(k),
            "entry {:?} differs",
            String::from_utf8_lossy(k)
        );
    }
    assert!(
        a.len() > 30,
        "the fixture should have many entries, has {}",
        a.len()
    );
}

/// Restore settings that recreate everything the fixture holds: its device nodes and
/// set-user-id file are left out by default.
fn with_privileged_files() -> RestoreOptions {
    RestoreOptions {
        privileged_files: true,
        ..RestoreOptions::default()
    }
}

fn backup(repo: &Repository, root: &Path, parent: Option<Id>) -> BackupSummary {
    let opts = BackupOptions {
        parent,
        ..BackupOptions::default()
    };
    backup_tree(repo, root, &opts, &NoProgress).expect("backup_tree")
}

/// Runs `restic backup .` inside `dir`; returns the new snapshot's id and tree.
fn restic_backup_dot(repo_path: &Path, dir: &Path) -> (String, Id) {
    let out = restic_in(repo_path, Some(dir), &["backup", "--json", "."]);
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("restic backup --json prints a summary");
    let id = summary["snapshot_id"].as_str().unwrap().to_string();
    let snap = restic(repo_path, &["cat", "snapshot", &id]);
    let snap: serde_json::Value = serde_json::from_slice(&snap.stdout).unwrap();
    (id, snap["tree"].as_str().unwrap().parse().unwrap())
}

/// Every tree blob under `tree`, read through our repository.
fn all_trees(repo: &Repository, tree: &Id, out: &mut Vec<(Id, Vec<u8>)>) {
    let raw = repo.read_blob(BlobType::Tree, tree).unwrap();
    let t = Tree::from_blob(&raw, "tree").unwrap();
    out.push((*tree, raw));
    for n in &t.nodes {
        if let Some(sub) = &n.subtree {
            all_trees(repo, sub, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn every_node_type_backs_up_checks_and_restores_identically_with_restic_and_with_us() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_fixture(&src, false);
    let (repo_path, repo) = init_repo(tmp.path());

    let progress = CountingProgress::default();
    let opts = BackupOptions {
        tags: vec!["pvc=data".into()],
        ..BackupOptions::default()
    };
    let s = backup_tree(&repo, &src, &opts, &progress).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.sockets_skipped, 1);
    assert_eq!(
        s.hardlinks, 3,
        "hl_b, hl_c and hl_empty2 reuse their inode's content"
    );
    let file_bytes: u64 = snapshot_of(&src)
        .values()
        .filter(|e| e.kind == "file")
        .map(|e| e.size)
        .sum();
    assert_eq!(s.bytes_total, file_bytes);
    assert_eq!(
        s.bytes_read,
        file_bytes - 2 * 600_000,
        "each hard-linked inode is read once"
    );
    assert_eq!(
        progress.done.load(std::sync::atomic::Ordering::Relaxed),
        file_bytes
    );
    check_read_data(&repo_path);

    // restic lists the snapshot with the absolute path and restores the files directly
    // under the target
    let snaps = restic(&repo_path, &["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps[0]["paths"][0], src.to_str().unwrap());
    assert_eq!(snaps[0]["tags"][0], "pvc=data");
    let by_restic = tmp.path().join("by_restic");
    restic(
        &repo_path,
        &["restore", "latest", "--target", by_restic.to_str().unwrap()],
    );
    assert_same_tree(&src, &by_restic, false);

    // ours also restores the volume root's own owner, mode and times
    let by_us = tmp.path().join("by_us");
    let r = restore_tree(
        &repo,
        &s.snapshot_id,
        &by_us,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!((r.hardlinks, r.devices, r.fifos), (3, 2, 1));
    assert_same_tree(&src, &by_us, true);
}

#[test]
fn a_symlink_target_that_is_not_utf8_survives_our_backup_and_restore() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_fixture(&src, true);
    let (repo_path, repo) = init_repo(tmp.path());
    let s = backup(&repo, &src, None);
    check_read_data(&repo_path);
    let dst = tmp.path().join("dst");
    restore_tree(
        &repo,
        &s.snapshot_id,
        &dst,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read_link(dst.join("bad_target")).unwrap().as_os_str(),
        OsStr::from_bytes(b"x\xffy")
    );
    assert_same_tree(&src, &dst, true);
}

#[test]
fn restic_and_we_write_the_same_tree_blobs_and_we_restore_what_restic_backed_up() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_fixture(&src, false);
    let (repo_path, repo) = init_repo(tmp.path());

    let ours = backup(&repo, &src, None);
    let (restic_snap, restic_tree) = restic_backup_dot(&repo_path, &src);
    repo.load_index().unwrap();

    // Every tree restic wrote parses and re-encodes to the very same bytes.
    let mut trees = Vec::new();
    all_trees(&repo, &restic_tree, &mut trees);
    assert!(trees.len() >= 6);
    for (id, raw) in &trees {
        let again = Tree::from_blob(raw, "tree").unwrap().to_blob();
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(raw),
            "tree {id} re-encodes differently"
        );
    }
    // Same metadata, same chunks, same encoding: restic's root tree is ours.
    if restic_tree != ours.tree {
        let mut mine = Vec::new();
        all_trees(&repo, &ours.tree, &mut mine);
        for ((_, a), (_, b)) in trees.iter().zip(&mine) {
            assert_eq!(
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b),
                "restic's tree (left) differs from ours (right)"
            );
        }
        panic!(
            "restic's root tree {restic_tree} differs from ours {}",
            ours.tree
        );
    }

    let (full, _) = repo.find_snapshot(&restic_snap).unwrap();
    let dst = tmp.path().join("dst");
    let r = restore_tree(&repo, &full, &dst, &with_privileged_files(), &NoProgress).unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_same_tree(&src, &dst, false);
    check_read_data(&repo_path);
}

#[test]
fn a_backup_with_a_parent_reads_only_changed_files_and_every_snapshot_checks() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_fixture(&src, false);
    let (repo_path, repo) = init_repo(tmp.path());
    let first = backup(&repo, &src, None);
    assert!(first.bytes_read > 4 << 20);

    // nothing changed: nothing is read, the tree is the same
    let second = backup(&repo, &src, Some(first.snapshot_id));
    assert_eq!(second.bytes_read, 0);
    assert_eq!(second.files_new + second.files_changed, 0);
    assert_eq!(second.tree, first.tree);

    // one file grows, one is new: only those are read
    fs::write(src.join("dir/nested/deep/leaf.txt"), noise(9, 80_000)).unwrap();
    fs::write(src.join("dir/new.txt"), b"brand new").unwrap();
    let third = backup(&repo, &src, Some(second.snapshot_id));
    assert_eq!(third.bytes_read, 80_000 + 9);
    assert_eq!((third.files_changed, third.files_new), (1, 1));
    assert_eq!(
        third.files_unmodified, 18,
        "every other file is reused: {third:?}"
    );

    // Content rewritten with the same size and mtime: the ctime still tells (restic 0.14
    // compares it too) ...
    let big = src.join("big.bin");
    let md = fs::symlink_metadata(&big).unwrap();
    let mut changed = fs::read(&big).unwrap();
    changed[100] ^= 0xff;
    fs::write(&big, &changed).unwrap();
    set_times(
        &big,
        &time_from_unix(md.atime(), md.atime_nsec() as u32),
        &time_from_unix(md.mtime(), md.mtime_nsec() as u32),
    )
    .unwrap();
    let tree_opts = TreeOptions {
        ignore_ctime: true,
        ..TreeOptions::default()
    };
    let opts = BackupOptions {
        parent: Some(third.snapshot_id),
        ..BackupOptions::default()
    };
    // ... unless ctime is ignored: then, as with restic --ignore-ctime, the parent's content
    // is kept without reading the file.
    let fourth = backup_tree_with(&repo, &src, &opts, &tree_opts, &NoProgress).unwrap();
    assert_eq!(fourth.bytes_read, 0);
    let old_restore = tmp.path().join("fourth");
    restore_tree(
        &repo,
        &fourth.snapshot_id,
        &old_restore,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read(old_restore.join("big.bin")).unwrap(),
        noise(1, 3 << 20)
    );

    // With the ctime compared (against the third snapshot: the fourth recorded the new ctime
    // with the old content, as restic --ignore-ctime would), the change is read.
    let fifth = backup(&repo, &src, Some(third.snapshot_id));
    assert_eq!(fifth.bytes_read, 3 << 20);
    let new_restore = tmp.path().join("fifth");
    restore_tree(
        &repo,
        &fifth.snapshot_id,
        &new_restore,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert_same_tree(&src, &new_restore, true);

    let snaps = restic(&repo_path, &["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 5);
    check_read_data(&repo_path);
}

#[test]
fn restoring_into_a_non_empty_directory_replaces_same_names_and_leaves_the_rest() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), b"from the snapshot").unwrap();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(src.join("sub/b.txt"), b"also from the snapshot").unwrap();
    let (_repo_path, repo) = init_repo(tmp.path());
    let s = backup(&repo, &src, None);

    let dst = tmp.path().join("dst");
    fs::create_dir_all(dst.join("lost+found")).unwrap();
    fs::write(dst.join("lost+found/#123"), b"fsck found this").unwrap();
    fs::write(dst.join("extra.txt"), b"not in the snapshot").unwrap();
    let outside = tmp.path().join("outside.txt");
    fs::write(&outside, b"must not be touched").unwrap();
    // a symlink where the snapshot has a file: replaced, not written through
    std::os::unix::fs::symlink(&outside, dst.join("a.txt")).unwrap();
    // a file where the snapshot has a directory: replaced by the directory
    fs::write(dst.join("sub"), b"in the way").unwrap();

    restore_tree(
        &repo,
        &s.snapshot_id,
        &dst,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(dst.join("a.txt")).unwrap(), b"from the snapshot");
    assert!(fs::symlink_metadata(dst.join("a.txt")).unwrap().is_file());
    assert_eq!(
        fs::read(dst.join("sub/b.txt")).unwrap(),
        b"also from the snapshot"
    );
    assert_eq!(fs::read(&outside).unwrap(), b"must not be touched");
    assert_eq!(
        fs::read(dst.join("extra.txt")).unwrap(),
        b"not in the snapshot"
    );
    assert_eq!(
        fs::read(dst.join("lost+found/#123")).unwrap(),
        b"fsck found this"
    );

    // a directory where the snapshot has a file is an error naming the path
    let dst2 = tmp.path().join("dst2");
    fs::create_dir_all(dst2.join("a.txt")).unwrap();
    let err = restore_tree(
        &repo,
        &s.snapshot_id,
        &dst2,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a.txt") && err.contains("directory is in the way"),
        "{err}"
    );
}

/// Gives `p` the owner, mode and times of `md` again.
fn put_back_metadata(p: &Path, md: &fs::Metadata) {
    chown(p, md.uid(), md.gid());
    chmod(p, md.mode() & 0o7777);
    let t = time_from_unix(md.mtime(), md.mtime_nsec() as u32);
    set_times(p, &t, &t).unwrap();
}

#[test]
fn the_tree_comparison_notices_every_kind_of_difference() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_fixture(&src, true);
    let (_repo_path, repo) = init_repo(tmp.path());
    let s = backup(&repo, &src, None);

    // Each change is made to a fresh, identical restore, so no case rides on an earlier one.
    let mut n = 0;
    let mut differs = |what: &str, change: &dyn Fn(&Path)| {
        n += 1;
        let copy = tmp.path().join(format!("copy{n}"));
        restore_tree(
            &repo,
            &s.snapshot_id,
            &copy,
            &with_privileged_files(),
            &NoProgress,
        )
        .unwrap();
        assert_same_tree(&src, &copy, true);
        change(&copy);
        let caught = std::panic::catch_unwind(|| assert_same_tree(&src, &copy, true)).is_err();
        assert!(caught, "a changed {what} went unnoticed");
    };
    differs("mode", &|c| chmod(&c.join("big.bin"), 0o644));
    differs("owner", &|c| chown(&c.join("link"), 1, 1));
    differs("mtime", &|c| {
        set_times(
            &c.join("empty"),
            &time_from_unix(5, 0),
            &time_from_unix(5, 0),
        )
        .unwrap()
    });
    differs("xattr", &|c| {
        setxattr(&c.join("dir"), "user.dirattr", b"other")
    });
    differs("content", &|c| {
        let zeros = c.join("dir/zeros");
        let md = fs::symlink_metadata(&zeros).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&zeros).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"\x01", 7).unwrap();
        put_back_metadata(&zeros, &md);
    });
    differs("hard link", &|c| {
        // an independent copy with the same content and metadata, no longer a link
        let hl_b = c.join("dir/hl_b");
        let md = fs::symlink_metadata(&hl_b).unwrap();
        let dir_md = fs::symlink_metadata(c.join("dir")).unwrap();
        fs::remove_file(&hl_b).unwrap();
        fs::write(&hl_b, noise(3, 600_000)).unwrap();
        put_back_metadata(&hl_b, &md);
        put_back_metadata(&c.join("dir"), &dir_md);
    });
    differs("symlink target", &|c| {
        // same owner and times (symlinks have no mode of their own), only the target changes
        let link = c.join("link");
        let md = fs::symlink_metadata(&link).unwrap();
        let root_md = fs::symlink_metadata(c).unwrap();
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("small.tx_", &link).unwrap();
        chown(&link, md.uid(), md.gid());
        let t = time_from_unix(md.mtime(), md.mtime_nsec() as u32);
        set_times(&link, &t, &t).unwrap();
        put_back_metadata(c, &root_md);
    });
    differs("device number", &|c| {
        // same type, mode, owner and times: only the device number changes
        let null = c.join("null");
        let md = fs::symlink_metadata(&null).unwrap();
        let root_md = fs::symlink_metadata(c).unwrap();
        fs::remove_file(&null).unwrap();
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        let ft = rustix::fs::FileType::CharacterDevice;
        rustix::fs::mknodat(rustix::fs::CWD, &null, ft, mode, rustix::fs::makedev(1, 5)).unwrap();
        put_back_metadata(&null, &md);
        put_back_metadata(c, &root_md);
    });
    differs("missing entry", &|c| {
        fs::remove_file(c.join("fifo")).unwrap()
    });
    differs("root mode", &|c| chmod(c, 0o755));
}

/// A file capability as the kernel stores it (`security.capability`, revision 2): permitted
/// and effective `cap_net_bind_service`.
const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn xattr_names(p: &Path) -> Vec<String> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    let mut out: Vec<String> = names[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    out.sort();
    out
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn device_nodes_set_id_bits_and_file_capabilities_are_restored_only_when_asked_for() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let p = |rel: &str| src.join(rel);
    fs::write(p("suid"), b"#!/bin/sh\nid\n").unwrap();
    chmod(&p("suid"), 0o4755);
    fs::write(p("sgid"), b"x").unwrap();
    chmod(&p("sgid"), 0o2711);
    fs::create_dir(p("shared")).unwrap();
    chmod(&p("shared"), 0o2775);
    fs::write(p("capable"), b"y").unwrap();
    chmod(&p("capable"), 0o755);
    setxattr(&p("capable"), "security.capability", &CAP_NET_BIND_SERVICE);
    setxattr(&p("capable"), "user.note", b"kept");
    fs::write(p("plain"), b"z").unwrap();
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    for (name, ft, dev) in [
        ("null", FileType::CharacterDevice, makedev(1, 3)),
        ("disk", FileType::BlockDevice, makedev(7, 200)),
        ("fifo", FileType::Fifo, 0),
    ] {
        mknodat(CWD, p(name), ft, Mode::from_raw_mode(0o660), dev).unwrap();
    }
    assert_eq!(
        xattr_names(&p("capable")),
        ["security.capability", "user.note"],
        "the file system keeps file capabilities"
    );
    set_all_times(&src);
    let (repo_path, repo) = init_repo(tmp.path());
    let s = backup(&repo, &src, None);
    check_read_data(&repo_path);

    // By default: no device node, no set-user-id or set-group-id bit on a file, no
    // capability; everything else as it was (a directory keeps its set-group-id bit).
    let dst = tmp.path().join("default");
    let r = restore_tree(
        &repo,
        &s.snapshot_id,
        &dst,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        (
            r.devices,
            r.devices_skipped,
            r.setid_cleared,
            r.capabilities_skipped,
            r.fifos
        ),
        (0, 2, 2, 1, 1)
    );
    for gone in ["null", "disk"] {
        assert!(
            fs::symlink_metadata(dst.join(gone)).is_err(),
            "device node {gone} was created"
        );
    }
    assert_eq!(mode_of(&dst.join("suid")), 0o755);
    assert_eq!(mode_of(&dst.join("sgid")), 0o711);
    assert_eq!(mode_of(&dst.join("shared")), 0o2775);
    assert_eq!(xattr_names(&dst.join("capable")), ["user.note"]);
    assert_eq!(fs::read(dst.join("suid")).unwrap(), b"#!/bin/sh\nid\n");
    assert!(
        fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // Asked for: the tree as it was.
    let dst = tmp.path().join("privileged");
    let r = restore_tree(
        &repo,
        &s.snapshot_id,
        &dst,
        &with_privileged_files(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        (
            r.devices,
            r.devices_skipped,
            r.setid_cleared,
            r.capabilities_skipped
        ),
        (2, 0, 0, 0)
    );
    assert_eq!(snapshot_of(&src), snapshot_of(&dst));
}
