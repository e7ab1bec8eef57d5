//! Tree blobs: directory listings exactly as restic stores them.
//!
//! A tree blob is the JSON `{"nodes":[...]}` followed by a newline. Each node describes one
//! directory entry (`internal/restic/node.go` in restic 0.14 is the reference). We write the
//! bytes Go's `encoding/json` writes for the same node, so that a tree we build from the same
//! metadata as restic gets the same id and deduplicates against restic's trees:
//!
//! - fields in restic's order; `mode`, `user`, `group`, `inode`, `device_id`, `size`, `links`,
//!   `linktarget`, `extended_attributes`, `device`, `subtree` and `error` are left out when zero
//!   or empty (`omitempty`); `uid`, `gid`, the three times and `content` are always written;
//!   `content` is `[]` for every file (an empty file too: `null` fails `restic check`) and
//!   `null` for other nodes without content;
//! - strings escaped as Go does (`<`, `>`, `&`, U+2028, U+2029 as `\u....`, control characters as
//!   `\u00xx`, `\b` and `\f` as go1.19 writes them: `\u0008`, `\u000c`);
//! - `name` holds Go `strconv.Quote` output without the outer quotes, so that any byte string is
//!   representable; restic unquotes it on read;
//! - `linktarget` is NOT quoted by restic 0.14 (checked with `restic cat blob`): it is a plain
//!   JSON string, and a target that is not UTF-8 is written lossily (`\ufffd` per bad byte).
//!   Newer restic adds `linktarget_raw` (base64 of the exact bytes) for such targets; we write
//!   both, restic 0.14 ignores the unknown field (and restores the lossy target), our reader
//!   prefers `linktarget_raw`. A genuine U+FFFD in a string is written as `\ufffd` too (Go
//!   writes it raw): only tree dedup against restic could notice;
//! - times in RFC 3339 with nanoseconds, trailing zeros of the fraction trimmed (`RFC3339Nano`).
//!
//! Go's idea of a printable rune (`strconv.IsPrint`) follows Unicode 13 in go1.19; we use the
//! Unicode 16 categories, so a name using a character assigned after Unicode 13 is quoted
//! differently (still correctly: restic unquotes either form).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Datelike, FixedOffset, TimeZone, Timelike, Utc};
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Id;
use crate::{Error, Result};

/// Go `os.FileMode` bits (the `mode` field of a node is a Go `FileMode`, not an `st_mode`).
pub mod gomode {
    /// A directory.
    pub const DIR: u32 = 1 << 31;
    /// Append-only (unused on Linux).
    pub const APPEND: u32 = 1 << 30;
    /// Exclusive use (unused on Linux).
    pub const EXCLUSIVE: u32 = 1 << 29;
    /// Temporary file (unused on Linux).
    pub const TEMPORARY: u32 = 1 << 28;
    /// A symbolic link.
    pub const SYMLINK: u32 = 1 << 27;
    /// A device (block, or character together with `CHAR_DEVICE`).
    pub const DEVICE: u32 = 1 << 26;
    /// A named pipe.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// A Unix domain socket.
    pub const SOCKET: u32 = 1 << 24;
    /// Set-user-id.
    pub const SETUID: u32 = 1 << 23;
    /// Set-group-id.
    pub const SETGID: u32 = 1 << 22;
    /// A character device (with `DEVICE`).
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Sticky.
    pub const STICKY: u32 = 1 << 20;
    /// Irregular file (newer restic on other systems).
    pub const IRREGULAR: u32 = 1 << 19;
    /// Permission bits.
    pub const PERM: u32 = 0o777;
}

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Converts a Linux `st_mode` to Go's `os.FileMode`, as Go's `os.Lstat` does.
pub fn go_mode_from_st_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & gomode::PERM;
    mode |= match st_mode & S_IFMT {
        S_IFBLK => gomode::DEVICE,
        S_IFCHR => gomode::DEVICE | gomode::CHAR_DEVICE,
        S_IFDIR => gomode::DIR,
        S_IFIFO => gomode::NAMED_PIPE,
        S_IFLNK => gomode::SYMLINK,
        S_IFSOCK => gomode::SOCKET,
        _ => 0,
    };
    if st_mode & S_ISUID != 0 {
        mode |= gomode::SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= gomode::SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= gomode::STICKY;
    }
    mode
}

/// Converts Go's `os.FileMode` back to a Linux `st_mode` (file type and permission bits).
pub fn st_mode_from_go_mode(mode: u32) -> u32 {
    let mut st = mode & gomode::PERM;
    st |= if mode & gomode::DIR != 0 {
        S_IFDIR
    } else if mode & gomode::SYMLINK != 0 {
        S_IFLNK
    } else if mode & gomode::DEVICE != 0 {
        if mode & gomode::CHAR_DEVICE != 0 {
            S_IFCHR
        } else {
            S_IFBLK
        }
    } else if mode & gomode::NAMED_PIPE != 0 {
        S_IFIFO
    } else if mode & gomode::SOCKET != 0 {
        S_IFSOCK
    } else {
        S_IFREG
    };
    st | chmod_bits_from_go_mode(mode)
}

/// The bits `chmod` takes (permissions, setuid, setgid, sticky) of a Go `os.FileMode`.
pub fn chmod_bits_from_go_mode(mode: u32) -> u32 {
    let mut st = mode & gomode::PERM;
    if mode & gomode::SETUID != 0 {
        st |= S_ISUID;
    }
    if mode & gomode::SETGID != 0 {
        st |= S_ISGID;
    }
    if mode & gomode::STICKY != 0 {
        st |= S_ISVTX;
    }
    st
}

/// The kind of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// A regular file (`file`).
    File,
    /// A directory (`dir`).
    Dir,
    /// A symbolic link (`symlink`).
    Symlink,
    /// A block device (`dev`).
    Dev,
    /// A character device (`chardev`).
    CharDev,
    /// A named pipe (`fifo`).
    Fifo,
    /// A Unix domain socket (`socket`); restic neither backs these up nor restores them.
    Socket,
    /// Anything else another program wrote (newer restic: `irregular`); kept as read.
    Other(String),
}

impl NodeType {
    /// The string restic stores.
    pub fn as_str(&self) -> &str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Dev => "dev",
            NodeType::CharDev => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Other(s) => s,
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> NodeType {
        match s {
            "file" => NodeType::File,
            "dir" => NodeType::Dir,
            "symlink" => NodeType::Symlink,
            "dev" => NodeType::Dev,
            "chardev" => NodeType::CharDev,
            "fifo" => NodeType::Fifo,
            "socket" => NodeType::Socket,
            other => NodeType::Other(other.to_string()),
        }
    }

    /// The node type of a Linux `st_mode`, `None` for an unknown file type.
    pub fn from_st_mode(st_mode: u32) -> Option<NodeType> {
        Some(match st_mode & S_IFMT {
            S_IFREG => NodeType::File,
            S_IFDIR => NodeType::Dir,
            S_IFLNK => NodeType::Symlink,
            S_IFBLK => NodeType::Dev,
            S_IFCHR => NodeType::CharDev,
            S_IFIFO => NodeType::Fifo,
            S_IFSOCK => NodeType::Socket,
            _ => return None,
        })
    }
}

/// A time as stored in a node: RFC 3339 with nanoseconds and the writer's UTC offset.
pub type NodeTime = DateTime<FixedOffset>;

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`), what restic reads for a missing time.
pub fn zero_time() -> NodeTime {
    Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0)
        .single()
        .expect("year 1 is representable")
        .fixed_offset()
}

/// A time from seconds and nanoseconds since the Unix epoch, in UTC. Years outside 0..=9999
/// are moved into that range the way restic's `FixTime` does (only the year changes), since
/// Go cannot write them as JSON.
pub fn time_from_unix(secs: i64, nsecs: u32) -> NodeTime {
    let t = DateTime::<Utc>::from_timestamp(secs, nsecs.min(999_999_999)).unwrap_or_else(|| {
        let fallback = if secs < 0 {
            -62_167_219_200
        } else {
            253_402_300_799
        };
        DateTime::<Utc>::from_timestamp(fallback, 0).expect("in range")
    });
    let t = if t.year() < 0 {
        t.with_year(0).unwrap_or(t)
    } else if t.year() > 9999 {
        t.with_year(9999).unwrap_or(t)
    } else {
        t
    };
    t.fixed_offset()
}

/// Formats a time as Go's `time.RFC3339Nano` does (fraction without trailing zeros, `Z` for UTC).
pub fn format_time(t: &NodeTime) -> String {
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    let off = t.offset().local_minus_utc();
    if off == 0 {
        s.push('Z');
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let off = off.unsigned_abs();
        s.push_str(&format!("{sign}{:02}:{:02}", off / 3600, (off % 3600) / 60));
    }
    s
}

fn parse_time(s: &str) -> std::result::Result<NodeTime, String> {
    DateTime::parse_from_rfc3339(s).map_err(|e| format!("bad time {s:?}: {e}"))
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space.
fn go_is_print(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    let u = c as u32;
    if u <= 0xff {
        return (0x20..0x7f).contains(&u) || (u >= 0xa1 && u != 0xad);
    }
    !matches!(
        get_general_category(c),
        G::SpaceSeparator
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
    )
}

const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Go's `strconv.Quote(s)` without the surrounding quotes, for arbitrary bytes: bytes that are
/// not UTF-8 become `\xNN`, `"` and `\` are escaped, printable runes stay as they are, the
/// rest become `\a \b \f \n \r \t \v`, `\xNN` (other ASCII controls), `\uNNNN` or `\UNNNNNNNN`.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            quote_rune(&mut out, c);
        }
        // Every byte of an invalid sequence is escaped on its own, as Go decodes it byte by byte.
        for &b in chunk.invalid() {
            out.push_str("\\x");
            out.push(LOWER_HEX[(b >> 4) as usize] as char);
            out.push(LOWER_HEX[(b & 15) as usize] as char);
        }
    }
    out
}

fn quote_rune(out: &mut String, c: char) {
    if c == '"' || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if go_is_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        _ => {
            let u = c as u32;
            if u < 0x20 || u == 0x7f {
                out.push_str(&format!("\\x{u:02x}"));
            } else if u < 0x10000 {
                out.push_str(&format!("\\u{u:04x}"));
            } else {
                out.push_str(&format!("\\U{u:08x}"));
            }
        }
    }
}

/// A Go string converted to JSON: every byte that is not part of valid UTF-8 becomes U+FFFD
/// (one per byte, as Go's encoder decodes byte by byte).
fn go_lossy_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push('\u{fffd}');
        }
    }
    out
}

/// Go's `strconv.Unquote("\"" + s + "\"")`: the bytes a quoted name stands for. Errors on what
/// Go rejects: an unescaped `"` or newline, an unknown escape, a bad `\u` rune, a short escape.
pub fn go_unquote(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex_digits = |at: usize, n: usize| -> std::result::Result<u32, String> {
        let digits = b
            .get(at..at + n)
            .ok_or_else(|| format!("short escape in {s:?}"))?;
        let mut v = 0u32;
        for &d in digits {
            let x = (d as char)
                .to_digit(16)
                .ok_or_else(|| format!("bad hex digit in {s:?}"))?;
            v = v * 16 + x;
        }
        Ok(v)
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => return Err(format!("unescaped quote in {s:?}")),
            b'\n' => return Err(format!("unescaped newline in {s:?}")),
            b'\\' => {
                let e = *b
                    .get(i + 1)
                    .ok_or_else(|| format!("trailing backslash in {s:?}"))?;
                i += 2;
                match e {
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(11),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    b'x' => {
                        out.push(hex_digits(i, 2)? as u8);
                        i += 2;
                    }
                    b'u' | b'U' => {
                        let n = if e == b'u' { 4 } else { 8 };
                        let v = hex_digits(i, n)?;
                        i += n;
                        let ch = char::from_u32(v)
                            .ok_or_else(|| format!("invalid rune \\{}{v:x} in {s:?}", e as char))?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    b'0'..=b'7' => {
                        let digits = b
                            .get(i - 1..i + 2)
                            .ok_or_else(|| format!("short octal escape in {s:?}"))?;
                        let mut v = 0u32;
                        for &d in digits {
                            if !(b'0'..=b'7').contains(&d) {
                                return Err(format!("bad octal escape in {s:?}"));
                            }
                            v = v * 8 + (d - b'0') as u32;
                        }
                        if v > 255 {
                            return Err(format!("octal escape above 255 in {s:?}"));
                        }
                        out.push(v as u8);
                        i += 2;
                    }
                    _ => return Err(format!("unknown escape \\{} in {s:?}", e as char)),
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// An extended attribute of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtendedAttribute {
    /// The attribute's name (`user.foo`).
    pub name: String,
    /// Its value, stored base64-encoded.
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => BASE64.decode(s.as_bytes()).map_err(D::Error::custom),
        }
    }
}

/// One directory entry of a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The entry's name: any bytes but `/` and NUL.
    pub name: OsString,
    /// What it is.
    pub node_type: NodeType,
    /// Go `os.FileMode`: type bits plus permissions, setuid, setgid, sticky.
    pub mode: u32,
    /// Modification time.
    pub mtime: NodeTime,
    /// Access time.
    pub atime: NodeTime,
    /// Status change time.
    pub ctime: NodeTime,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner's name, `""` if unknown.
    pub user: String,
    /// Group's name, `""` if unknown.
    pub group: String,
    /// Inode number on the backed-up file system.
    pub inode: u64,
    /// `st_dev` of the backed-up file system.
    pub device_id: u64,
    /// File size in bytes (files only).
    pub size: u64,
    /// Hard link count (files, symlinks, devices).
    pub links: u64,
    /// Symlink target: any bytes.
    pub link_target: OsString,
    /// Extended attributes.
    pub extended_attributes: Vec<ExtendedAttribute>,
    /// `st_rdev` of a device node.
    pub device: u64,
    /// Data blob ids of a file, in order.
    pub content: Vec<Id>,
    /// Tree id of a directory.
    pub subtree: Option<Id>,
    /// An error the writer recorded for this entry.
    pub error: String,
}

impl Node {
    /// A node of the given name and type with every other field empty or zero.
    pub fn new(name: impl Into<OsString>, node_type: NodeType) -> Node {
        Node {
            name: name.into(),
            node_type,
            mode: 0,
            mtime: zero_time(),
            atime: zero_time(),
            ctime: zero_time(),
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            link_target: OsString::new(),
            extended_attributes: Vec::new(),
            device: 0,
            content: Vec::new(),
            subtree: None,
            error: String::new(),
        }
    }

    /// The name as bytes.
    pub fn name_bytes(&self) -> &[u8] {
        self.name.as_bytes()
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Node", 21)?;
        st.serialize_field("name", &go_quote(self.name.as_bytes()))?;
        st.serialize_field("type", self.node_type.as_str())?;
        if self.mode != 0 {
            st.serialize_field("mode", &self.mode)?;
        }
        st.serialize_field("mtime", &format_time(&self.mtime))?;
        st.serialize_field("atime", &format_time(&self.atime))?;
        st.serialize_field("ctime", &format_time(&self.ctime))?;
        st.serialize_field("uid", &self.uid)?;
        st.serialize_field("gid", &self.gid)?;
        if !self.user.is_empty() {
            st.serialize_field("user", &self.user)?;
        }
        if !self.group.is_empty() {
            st.serialize_field("group", &self.group)?;
        }
        if self.inode != 0 {
            st.serialize_field("inode", &self.inode)?;
        }
        if self.device_id != 0 {
            st.serialize_field("device_id", &self.device_id)?;
        }
        if self.size != 0 {
            st.serialize_field("size", &self.size)?;
        }
        if self.links != 0 {
            st.serialize_field("links", &self.links)?;
        }
        if !self.link_target.is_empty() {
            let bytes = self.link_target.as_bytes();
            match std::str::from_utf8(bytes) {
                Ok(t) => st.serialize_field("linktarget", t)?,
                Err(_) => {
                    st.serialize_field("linktarget", &go_lossy_utf8(bytes))?;
                    st.serialize_field("linktarget_raw", &BASE64.encode(bytes))?;
                }
            }
        }
        if !self.extended_attributes.is_empty() {
            st.serialize_field("extended_attributes", &self.extended_attributes)?;
        }
        if self.device != 0 {
            st.serialize_field("device", &self.device)?;
        }
        if self.node_type == NodeType::File || !self.content.is_empty() {
            st.serialize_field("content", &self.content)?;
        } else {
            st.serialize_field("content", &None::<Vec<Id>>)?;
        }
        if let Some(subtree) = &self.subtree {
            st.serialize_field("subtree", subtree)?;
        }
        if !self.error.is_empty() {
            st.serialize_field("error", &self.error)?;
        }
        st.end()
    }
}

#[derive(Deserialize)]
struct RawNode {
    name: String,
    #[serde(rename = "type", default)]
    node_type: String,
    #[serde(default)]
    mode: u32,
    #[serde(default)]
    mtime: Option<String>,
    #[serde(default)]
    atime: Option<String>,
    #[serde(default)]
    ctime: Option<String>,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    inode: u64,
    #[serde(default)]
    device_id: u64,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    links: u64,
    #[serde(default)]
    linktarget: Option<String>,
    #[serde(default)]
    linktarget_raw: Option<String>,
    #[serde(default)]
    extended_attributes: Option<Vec<ExtendedAttribute>>,
    #[serde(default)]
    device: u64,
    #[serde(default)]
    content: Option<Vec<Id>>,
    #[serde(default)]
    subtree: Option<Id>,
    #[serde(default)]
    error: Option<String>,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Node, D::Error> {
        let r = RawNode::deserialize(d)?;
        let name = go_unquote(&r.name).map_err(D::Error::custom)?;
        let time = |t: Option<String>| match t {
            None => Ok(zero_time()),
            Some(t) => parse_time(&t).map_err(D::Error::custom),
        };
        let link_target = match (r.linktarget_raw, r.linktarget) {
            (Some(raw), _) => BASE64.decode(raw.as_bytes()).map_err(D::Error::custom)?,
            (None, Some(t)) => t.into_bytes(),
            (None, None) => Vec::new(),
        };
        Ok(Node {
            name: OsString::from_vec(name),
            node_type: NodeType::parse(&r.node_type),
            mode: r.mode,
            mtime: time(r.mtime)?,
            atime: time(r.atime)?,
            ctime: time(r.ctime)?,
            uid: r.uid,
            gid: r.gid,
            user: r.user.unwrap_or_default(),
            group: r.group.unwrap_or_default(),
            inode: r.inode,
            device_id: r.device_id,
            size: r.size,
            links: r.links,
            link_target: OsString::from_vec(link_target),
            extended_attributes: r.extended_attributes.unwrap_or_default(),
            device: r.device,
            content: r.content.unwrap_or_default(),
            subtree: r.subtree,
            error: r.error.unwrap_or_default(),
        })
    }
}

/// A directory listing: nodes sorted bytewise by name, no two with the same name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tree {
    /// The entries.
    #[serde(default, deserialize_with = "nodes_or_null")]
    pub nodes: Vec<Node>,
}

fn nodes_or_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Node>, D::Error> {
    Ok(Option::<Vec<Node>>::deserialize(d)?.unwrap_or_default())
}

impl Tree {
    /// A tree of these nodes, sorted by name. Fails on two nodes with the same name.
    pub fn from_nodes(mut nodes: Vec<Node>) -> Result<Tree> {
        nodes.sort_by(|a, b| a.name_bytes().cmp(b.name_bytes()));
        for w in nodes.windows(2) {
            if w[0].name == w[1].name {
                return Err(Error::Invalid(format!(
                    "two entries named {:?} in one directory",
                    w[0].name
                )));
            }
        }
        Ok(Tree { nodes })
    }

    /// The tree blob: JSON as Go writes it, plus a newline.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 * self.nodes.len() + 16);
        let mut ser = serde_json::Serializer::with_formatter(&mut out, GoJsonFormatter);
        self.serialize(&mut ser)
            .expect("serializing a tree into memory cannot fail");
        out.push(b'\n');
        out
    }

    /// Parses a tree blob. `what` names it in errors (`tree 1234abcd`).
    pub fn from_blob(data: &[u8], what: &str) -> Result<Tree> {
        let tree: Tree = serde_json::from_slice(data).map_err(|e| Error::Corrupt {
            what: what.to_string(),
            message: format!("not a tree: {e}"),
        })?;
        for w in tree.nodes.windows(2) {
            if w[0].name_bytes() >= w[1].name_bytes() {
                return Err(Error::Corrupt {
                    what: what.to_string(),
                    message: format!("nodes not sorted or duplicated at {:?}", w[1].name),
                });
            }
        }
        Ok(tree)
    }

    /// The node with this name, if any.
    pub fn find(&self, name: &OsStr) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Writes JSON strings the way Go's `encoding/json` (go1.19) does; everything else as compact
/// serde_json.
pub struct GoJsonFormatter;

impl serde_json::ser::Formatter for GoJsonFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc: Option<&str> = match c {
                '<' => Some("\\u003c"),
                '>' => Some("\\u003e"),
                '&' => Some("\\u0026"),
                '\u{2028}' => Some("\\u2028"),
                '\u{2029}' => Some("\\u2029"),
                // Go writes each invalid byte as `\ufffd`; our strings reach here already made
                // valid with U+FFFD in their place (a genuine U+FFFD, which Go writes raw, is
                // rare enough to ignore).
                '\u{fffd}' => Some("\\ufffd"),
                _ => None,
            };
            if let Some(esc) = esc {
                w.write_all(&fragment.as_bytes()[start..i])?;
                w.write_all(esc.as_bytes())?;
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        e: serde_json::ser::CharEscape,
    ) -> io::Result<()> {
        use serde_json::ser::CharEscape as C;
        let control = |w: &mut W, b: u8| {
            w.write_all(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                LOWER_HEX[(b >> 4) as usize],
                LOWER_HEX[(b & 15) as usize],
            ])
        };
        match e {
            C::Quote => w.write_all(b"\\\""),
            C::ReverseSolidus => w.write_all(b"\\\\"),
            C::Solidus => w.write_all(b"/"),
            C::Backspace => control(w, 8),
            C::FormFeed => control(w, 12),
            C::LineFeed => w.write_all(b"\\n"),
            C::CarriageReturn => w.write_all(b"\\r"),
            C::Tab => w.write_all(b"\\t"),
            C::AsciiControl(b) => control(w, b),
        }
    }
}

#[cfg(test)]
mod tests;
