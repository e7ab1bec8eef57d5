//! The JSON and binary structures of a restic repository (format version 2).
//!
//! Readers ignore unknown fields and default missing ones, as restic does; writers emit the
//! fields restic 0.14 writes (plus our own `volbackup` field in snapshots, which Go ignores).

use base64::Engine as _;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::{Error, Result};

/// The two kinds of blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// File contents.
    Data,
    /// A directory listing (tree JSON).
    Tree,
}

impl std::fmt::Display for BlobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        })
    }
}

/// The decrypted `config` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Repository format version (we write 2, read 1 and 2).
    pub version: u32,
    /// Random repository id.
    pub id: Id,
    /// The chunker's irreducible polynomial (degree 53), as lowercase hex without `0x`.
    #[serde(with = "hex_u64")]
    pub chunker_polynomial: u64,
}

/// A key file (`keys/<id>`), stored as plain JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// When the key was made.
    pub created: DateTime<FixedOffset>,
    /// Who made it.
    #[serde(default)]
    pub username: String,
    /// Where it was made.
    #[serde(default)]
    pub hostname: String,
    /// Always `scrypt`.
    pub kdf: String,
    /// scrypt N.
    #[serde(rename = "N")]
    pub n: u64,
    /// scrypt r.
    pub r: u32,
    /// scrypt p.
    pub p: u32,
    /// scrypt salt (64 bytes), base64.
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    /// The master key ([`KeyData`] JSON) sealed with the user key, base64.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// The master key inside a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyData {
    /// The MAC key.
    pub mac: MacKeyData,
    /// The AES-256 key, base64.
    #[serde(with = "b64")]
    pub encrypt: Vec<u8>,
}

/// The Poly1305-AES key parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MacKeyData {
    /// AES-128 key, base64.
    #[serde(with = "b64")]
    pub k: Vec<u8>,
    /// Poly1305 r, base64.
    #[serde(with = "b64")]
    pub r: Vec<u8>,
}

/// An index file (`index/<id>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Index files this one replaces (written by prune).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    /// The packs it describes.
    #[serde(default)]
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Parses an index file, also in the old format (a bare array of packs).
    pub fn from_json(json: &[u8]) -> Result<IndexFile> {
        let first = json.iter().find(|b| !b.is_ascii_whitespace());
        let parsed = if first == Some(&b'[') {
            serde_json::from_slice::<Vec<IndexPack>>(json).map(|packs| IndexFile {
                supersedes: Vec::new(),
                packs,
            })
        } else {
            serde_json::from_slice::<IndexFile>(json)
        };
        parsed.map_err(|e| Error::Corrupt {
            what: "index file".into(),
            message: format!("not valid index JSON: {e}"),
        })
    }

    /// Number of blob entries.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}

/// One pack in an index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack's id (its file name).
    pub id: Id,
    /// Its blobs, in any order.
    #[serde(default)]
    pub blobs: Vec<IndexBlob>,
}

/// One blob in an index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    /// SHA-256 of the blob's plaintext (uncompressed).
    pub id: Id,
    /// Data or tree.
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob in the pack.
    pub length: u32,
    /// Plaintext length, only for compressed blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// A snapshot (`snapshots/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started.
    pub time: DateTime<FixedOffset>,
    /// The snapshot this one was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// The root tree.
    pub tree: Id,
    /// The backed-up paths (`["/NAME"]` for a block image).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// User id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u32,
    /// Group id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u32,
    /// Exclude patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The snapshot this one is a rewritten copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// Our own field: the volume description supplied by the caller (PVC, namespace, ...).
    /// restic ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volbackup: Option<serde_json::Value>,
    /// Fields written by other programs (newer restic: `program_version`, `summary`), kept
    /// so that a rewritten snapshot loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Snapshot {
    /// A snapshot of `tree` taken now, with this process's user and host.
    pub fn new(tree: Id, paths: Vec<String>) -> Snapshot {
        Snapshot {
            time: now(),
            parent: None,
            tree,
            paths,
            hostname: hostname(),
            username: username(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            excludes: Vec::new(),
            tags: Vec::new(),
            original: None,
            volbackup: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A lock file (`locks/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    /// When the lock was taken or last refreshed.
    pub time: DateTime<FixedOffset>,
    /// Exclusive (prune, forget) or shared (backup, restore, check).
    #[serde(default)]
    pub exclusive: bool,
    /// Host of the holder.
    #[serde(default)]
    pub hostname: String,
    /// User of the holder.
    #[serde(default)]
    pub username: String,
    /// Process id of the holder.
    #[serde(default)]
    pub pid: i64,
    /// User id of the holder.
    #[serde(default)]
    pub uid: u32,
    /// Group id of the holder.
    #[serde(default)]
    pub gid: u32,
}

/// The current time with the local offset (UTC in containers), nanosecond precision.
pub fn now() -> DateTime<FixedOffset> {
    chrono::Local::now().fixed_offset()
}

/// This machine's host name (`""` if unknown).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// This process's user name: `$USER`, else the uid's name from /etc/passwd, else `""`.
pub fn username() -> String {
    if let Ok(u) = std::env::var("USER")
        && !u.is_empty()
    {
        return u;
    }
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_default()
}

/// One blob in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    /// Data or tree.
    pub blob_type: BlobType,
    /// SHA-256 of the plaintext.
    pub id: Id,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length if the blob is compressed.
    pub uncompressed_length: Option<u32>,
}

impl PackedBlob {
    /// The blob's plaintext length (from the index alone, without reading it).
    pub fn plaintext_len(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or(self.length.saturating_sub(crate::crypto::OVERHEAD as u32))
    }

    /// The index-file form.
    pub fn to_index_blob(&self) -> IndexBlob {
        IndexBlob {
            id: self.id,
            blob_type: self.blob_type,
            offset: self.offset,
            length: self.length,
            uncompressed_length: self.uncompressed_length,
        }
    }
}

/// Size of an uncompressed header entry: type, length, id.
pub const HEADER_ENTRY_LEN: usize = 1 + 4 + 32;
/// Size of a compressed header entry: type, length, uncompressed length, id.
pub const HEADER_ENTRY_COMPRESSED_LEN: usize = 1 + 4 + 4 + 32;

/// Encodes the plaintext pack header for `blobs` (in pack order).
pub fn encode_pack_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blobs.len() * HEADER_ENTRY_COMPRESSED_LEN);
    for b in blobs {
        let compressed = b.uncompressed_length.is_some();
        let t = match (b.blob_type, compressed) {
            (BlobType::Data, false) => 0u8,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        out.push(t);
        out.extend_from_slice(&b.length.to_le_bytes());
        if let Some(u) = b.uncompressed_length {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&b.id.0);
    }
    out
}

/// Decodes a plaintext pack header; offsets are computed from the lengths (blobs are
/// contiguous from offset 0).
pub fn decode_pack_header(plain: &[u8]) -> Result<Vec<PackedBlob>> {
    let bad = |m: String| Error::Corrupt {
        what: "pack header".into(),
        message: m,
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut offset = 0u64;
    while pos < plain.len() {
        let t = plain[pos];
        let (blob_type, compressed) = match t {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            _ => return Err(bad(format!("unknown blob type {t} at header byte {pos}"))),
        };
        let need = if compressed {
            HEADER_ENTRY_COMPRESSED_LEN
        } else {
            HEADER_ENTRY_LEN
        };
        let e = plain
            .get(pos..pos + need)
            .ok_or_else(|| bad(format!("entry at byte {pos} is cut off")))?;
        let length = u32::from_le_bytes(e[1..5].try_into().expect("4 bytes"));
        let (uncompressed_length, id_at) = if compressed {
            (
                Some(u32::from_le_bytes(e[5..9].try_into().expect("4 bytes"))),
                9,
            )
        } else {
            (None, 5)
        };
        let id = Id(e[id_at..id_at + 32].try_into().expect("32 bytes"));
        let off = u32::try_from(offset).map_err(|_| bad("pack larger than 4 GiB".into()))?;
        out.push(PackedBlob {
            blob_type,
            id,
            offset: off,
            length,
            uncompressed_length,
        });
        offset += u64::from(length);
        pos += need;
    }
    Ok(out)
}

/// Serde helpers: bytes as standard base64.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    /// Deserializes base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Serde helpers: u64 as lowercase hex without prefix (restic's chunker polynomial).
pub mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as hex.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:x}"))
    }

    /// Deserializes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(serde::de::Error::custom)
    }
}

/// Base64 (standard alphabet, padded), as Go's `[]byte` JSON encoding.
pub fn base64_encode(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// A byte count as people read it, in binary units (`1.5 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The size a pack must have, given its complete blob list: the sealed blobs, the sealed header
/// (one entry per blob, longer for compressed blobs) and the header's u32 length.
pub fn pack_size(blobs: &[IndexBlob]) -> u64 {
    let header: u64 = blobs
        .iter()
        .map(|b| {
            if b.uncompressed_length.is_some() {
                HEADER_ENTRY_COMPRESSED_LEN as u64
            } else {
                HEADER_ENTRY_LEN as u64
            }
        })
        .sum();
    let body: u64 = blobs.iter().map(|b| u64::from(b.length)).sum();
    body + header + crate::crypto::OVERHEAD as u64 + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_header_round_trips_with_offsets_from_lengths() {
        let blobs = vec![
            PackedBlob {
                blob_type: BlobType::Data,
                id: Id([1; 32]),
                offset: 0,
                length: 100,
                uncompressed_length: None,
            },
            PackedBlob {
                blob_type: BlobType::Tree,
                id: Id([2; 32]),
                offset: 100,
                length: 50,
                uncompressed_length: Some(400),
            },
            PackedBlob {
                blob_type: BlobType::Data,
                id: Id([3; 32]),
                offset: 150,
                length: 32,
                uncompressed_length: Some(7),
            },
        ];
        let enc = encode_pack_header(&blobs);
        assert_eq!(
            enc.len(),
            HEADER_ENTRY_LEN + 2 * HEADER_ENTRY_COMPRESSED_LEN
        );
        assert_eq!(enc[0], 0);
        assert_eq!(&enc[1..5], &100u32.to_le_bytes());
        assert_eq!(enc[HEADER_ENTRY_LEN], 3);
        assert_eq!(decode_pack_header(&enc).unwrap(), blobs);
        assert!(decode_pack_header(&enc[..enc.len() - 1]).is_err());
        assert!(decode_pack_header(&[9]).is_err());
    }

    #[test]
    fn index_json_has_restic_field_names_and_omits_empty_parts() {
        let idx = IndexFile {
            supersedes: vec![],
            packs: vec![IndexPack {
                id: Id([0xaa; 32]),
                blobs: vec![
                    IndexBlob {
                        id: Id([0xbb; 32]),
                        blob_type: BlobType::Data,
                        offset: 0,
                        length: 10,
                        uncompressed_length: None,
                    },
                    IndexBlob {
                        id: Id([0xcc; 32]),
                        blob_type: BlobType::Tree,
                        offset: 10,
                        length: 40,
                        uncompressed_length: Some(100),
                    },
                ],
            }],
        };
        let json = serde_json::to_string(&idx).unwrap();
        assert!(!json.contains("supersedes"));
        assert!(
            json.contains(r#""type":"data","offset":0,"length":10}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""type":"tree","offset":10,"length":40,"uncompressed_length":100}"#)
        );
        assert_eq!(IndexFile::from_json(json.as_bytes()).unwrap(), idx);
        let old = serde_json::to_string(&idx.packs).unwrap();
        assert_eq!(IndexFile::from_json(old.as_bytes()).unwrap(), idx);
    }

    #[test]
    fn snapshots_keep_unknown_fields_and_read_restic_times() {
        let json = r#"{"time":"2022-08-01T10:11:12.123456789+02:00","tree":"0000000000000000000000000000000000000000000000000000000000000001","paths":["/x.img"],"hostname":"h","program_version":"restic 0.16.0","summary":{"files_new":1}}"#;
        let s: Snapshot = serde_json::from_str(json).unwrap();
        assert_eq!(s.paths, vec!["/x.img"]);
        assert_eq!(s.extra["program_version"], "restic 0.16.0");
        let back = serde_json::to_string(&s).unwrap();
        assert!(back.contains("program_version"), "{back}");
        assert!(
            back.contains("2022-08-01T10:11:12.123456789+02:00"),
            "{back}"
        );
        assert!(!back.contains("volbackup"));
    }

    #[test]
    fn config_polynomial_is_plain_lowercase_hex() {
        let c = Config {
            version: 2,
            id: Id([1; 32]),
            chunker_polynomial: 0x3da3358b4dc173,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains(r#""chunker_polynomial":"3da3358b4dc173""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
    }
}
