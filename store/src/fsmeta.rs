//! File metadata: reading a directory entry into a [`Node`] the way restic 0.14 does
//! (`NodeFromFileInfo`), and putting a node's metadata back onto a restored path.
//!
//! What is recorded, per restic 0.14: for every node its name, type, Go file mode, mtime,
//! atime, ctime, uid, gid, user and group names (looked up in this machine's `/etc/passwd` and
//! `/etc/group`, as restic does; `""` when unknown), inode and `st_dev`. Files add size and
//! link count, symlinks their target and link count, devices `st_rdev` and link count.
//! Extended attributes are read for everything but symlinks (`llistxattr`/`lgetxattr`, in the
//! order the kernel lists them).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

use rustix::fs::{AtFlags, CWD, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::tree::{
    ExtendedAttribute, Node, NodeTime, NodeType, chmod_bits_from_go_mode, go_mode_from_st_mode,
    time_from_unix,
};
use crate::{Error, Result};

/// The metadata of `path` (not following a symlink) as a node named `name`. Content and
/// subtree are left empty: the caller fills them in. Errors name the path.
pub fn node_from_path(path: &Path, name: OsString) -> Result<Node> {
    let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    node_from_metadata(path, name, &md)
}

/// Like [`node_from_path`] with metadata already read by `symlink_metadata`.
pub fn node_from_metadata(path: &Path, name: OsString, md: &std::fs::Metadata) -> Result<Node> {
    let node_type = NodeType::from_st_mode(md.mode()).ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::other(format!("unknown file type (mode {:o})", md.mode())),
        )
    })?;
    let mut node = Node::new(name, node_type.clone());
    node.mode = go_mode_from_st_mode(md.mode());
    node.mtime = time_from_unix(md.mtime(), md.mtime_nsec() as u32);
    node.atime = time_from_unix(md.atime(), md.atime_nsec() as u32);
    node.ctime = time_from_unix(md.ctime(), md.ctime_nsec() as u32);
    node.uid = md.uid();
    node.gid = md.gid();
    node.user = user_name(md.uid());
    node.group = group_name(md.gid());
    node.inode = md.ino();
    node.device_id = md.dev();
    match node_type {
        NodeType::File => {
            node.size = md.size();
            node.links = md.nlink();
        }
        NodeType::Symlink => {
            node.links = md.nlink();
            node.link_target = std::fs::read_link(path)
                .map_err(|e| Error::io(path, e))?
                .into_os_string();
        }
        NodeType::Dev | NodeType::CharDev => {
            node.links = md.nlink();
            node.device = md.rdev();
        }
        _ => {}
    }
    if node.node_type != NodeType::Symlink {
        node.extended_attributes = read_xattrs(path)?;
    }
    Ok(node)
}

/// The extended attributes of `path` (not following symlinks). A file system without xattr
/// support has none.
pub fn read_xattrs(path: &Path) -> Result<Vec<ExtendedAttribute>> {
    let list = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(xattr_error(path, "list extended attributes", e)),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            // The list grew between the two calls: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(xattr_error(path, "list extended attributes", e)),
        }
    };
    let mut attrs = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_str = String::from_utf8_lossy(name).into_owned();
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, name) {
                Ok(n) => n,
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(xattr_error(path, &format!("read xattr {name_str}"), e)),
            };
            let mut buf = vec![0u8; size];
            match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(xattr_error(path, &format!("read xattr {name_str}"), e)),
            }
        };
        if let Some(value) = value {
            attrs.push(ExtendedAttribute {
                name: name_str,
                value,
            });
        }
    }
    Ok(attrs)
}

fn xattr_error(path: &Path, what: &str, e: Errno) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("cannot {what}: {e}"),
        ),
    )
}

/// The name of user `uid` in this machine's `/etc/passwd`, `""` if none.
pub fn user_name(uid: u32) -> String {
    static USERS: OnceLock<HashMap<u32, String>> = OnceLock::new();
    USERS
        .get_or_init(|| read_id_names("/etc/passwd"))
        .get(&uid)
        .cloned()
        .unwrap_or_default()
}

/// The name of group `gid` in this machine's `/etc/group`, `""` if none.
pub fn group_name(gid: u32) -> String {
    static GROUPS: OnceLock<HashMap<u32, String>> = OnceLock::new();
    GROUPS
        .get_or_init(|| read_id_names("/etc/group"))
        .get(&gid)
        .cloned()
        .unwrap_or_default()
}

/// `name:password:id:...` lines; the first name of each id wins, as getpwuid's does.
fn read_id_names(file: &str) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    let Ok(text) = std::fs::read_to_string(file) else {
        return map;
    };
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>() {
            map.entry(id).or_insert_with(|| name.to_string());
        }
    }
    map
}

/// What [`restore_metadata`] could not restore without failing the restore.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetadataWarnings {
    /// One line per problem, naming the path.
    pub messages: Vec<String>,
}

/// Puts a node's owner, mode, extended attributes and times back onto `path`, in that order:
/// `chown` clears setuid/setgid so `chmod` follows it, and the times go last because setting
/// xattrs or mode changes nothing of mtime but every later write to the path would. Symlinks
/// get owner and times only (Linux has no symlink modes). Owner, mode and times failing is an
/// error; an extended attribute the target file system refuses (no xattr support,
/// `security.*` without privilege) is a warning.
pub fn restore_metadata(path: &Path, node: &Node, warnings: &mut MetadataWarnings) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
        .map_err(|e| Error::io(path, with_context(e, "cannot change owner")))?;
    let is_symlink = node.node_type == NodeType::Symlink;
    if !is_symlink {
        std::fs::set_permissions(
            path,
            Permissions::from_mode(chmod_bits_from_go_mode(node.mode)),
        )
        .map_err(|e| Error::io(path, with_context(e, "cannot change mode")))?;
        for attr in &node.extended_attributes {
            if let Err(e) =
                rustix::fs::lsetxattr(path, attr.name.as_bytes(), &attr.value, XattrFlags::empty())
            {
                warnings.messages.push(format!(
                    "{}: cannot set extended attribute {}: {e}",
                    path.display(),
                    attr.name
                ));
            }
        }
    }
    set_times(path, &node.atime, &node.mtime)
}

/// Sets access and modification time of `path` without following a symlink.
pub fn set_times(path: &Path, atime: &NodeTime, mtime: &NodeTime) -> Result<()> {
    let ts = |t: &NodeTime| rustix::fs::Timespec {
        tv_sec: t.timestamp(),
        tv_nsec: (t.timestamp_subsec_nanos() % 1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io(path, with_context(e.into(), "cannot set times")))
}

fn with_context(e: std::io::Error, what: &str) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::gomode;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_file_and_a_symlink_are_read_like_restic_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello\n").unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o4751)).unwrap();
        rustix::fs::lsetxattr(&f, "user.k", b"v", XattrFlags::empty()).unwrap();
        set_times(
            &f,
            &time_from_unix(1000, 5),
            &time_from_unix(2000, 123_456_789),
        )
        .unwrap();
        let n = node_from_path(&f, "f".into()).unwrap();
        assert_eq!(n.node_type, NodeType::File);
        assert_eq!(n.mode, gomode::SETUID | 0o751);
        assert_eq!(n.size, 6);
        assert_eq!(n.links, 1);
        assert_eq!(n.mtime, time_from_unix(2000, 123_456_789));
        assert_eq!(n.atime, time_from_unix(1000, 5));
        assert_eq!(
            n.extended_attributes,
            vec![ExtendedAttribute {
                name: "user.k".into(),
                value: b"v".to_vec()
            }]
        );
        assert_ne!(n.inode, 0);

        let target = OsString::from_vec(b"../x\xffy".to_vec());
        let l = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &l).unwrap();
        let n = node_from_path(&l, "l".into()).unwrap();
        assert_eq!(n.node_type, NodeType::Symlink);
        assert_eq!(n.mode, gomode::SYMLINK | 0o777);
        assert_eq!(n.link_target, target);
        assert!(n.extended_attributes.is_empty());
    }

    #[test]
    fn restored_metadata_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let mut node = node_from_path(&f, "f".into()).unwrap();
        node.mode = gomode::SETGID | 0o640;
        node.mtime = time_from_unix(1_600_000_000, 999);
        node.atime = time_from_unix(1_500_000_000, 1);
        node.extended_attributes = vec![ExtendedAttribute {
            name: "user.a".into(),
            value: vec![0, 1, 2],
        }];
        let mut w = MetadataWarnings::default();
        restore_metadata(&f, &node, &mut w).unwrap();
        assert!(w.messages.is_empty(), "{w:?}");
        let back = node_from_path(&f, "f".into()).unwrap();
        assert_eq!(back.mode, node.mode);
        assert_eq!(back.mtime, node.mtime);
        assert_eq!(back.atime, node.atime);
        assert_eq!(back.extended_attributes, node.extended_attributes);
    }

    #[test]
    fn user_and_group_names_come_from_etc_passwd_and_group() {
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "");
    }
}
