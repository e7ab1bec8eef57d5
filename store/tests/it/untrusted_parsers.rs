//! Everything read from a repository is untrusted: whoever can write to the bucket chooses the
//! bytes. Each parser of repository data must answer arbitrary and damaged input with a value
//! or an error, never a panic. Damaged input starts from a valid file and flips, cuts and
//! inserts bytes, which reaches deeper than random bytes that fail at the first character.

use std::ffi::OsString;

use proptest::prelude::*;
use volbackup_store::Id;
use volbackup_store::crypto::KdfParams;
use volbackup_store::format::{
    self, BlobType, Config, IndexBlob, IndexFile, IndexPack, KeyFile, LockFile, PackedBlob,
    Snapshot, decode_pack_header, encode_pack_header,
};
use volbackup_store::repo::decode_unpacked;
use volbackup_store::tree::{Node, NodeType, Tree, go_unquote};

/// Enough cases to find shallow bugs, few enough for the suite to stay quick.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn tree_sample() -> Vec<u8> {
    let mut file = Node::new(OsString::from("a \"quoted\"\\name\u{7f}"), NodeType::File);
    file.content = vec![Id::hash(b"chunk")];
    let mut dir = Node::new(OsString::from("dir"), NodeType::Dir);
    dir.subtree = Some(Id::hash(b"subtree"));
    Tree::from_nodes(vec![file, dir]).unwrap().to_blob()
}

fn index_sample() -> Vec<u8> {
    let blob = |n: u32, compressed: bool| IndexBlob {
        id: Id::hash(&n.to_le_bytes()),
        blob_type: if n.is_multiple_of(2) {
            BlobType::Data
        } else {
            BlobType::Tree
        },
        offset: n * 100,
        length: 100,
        uncompressed_length: compressed.then_some(300),
    };
    let file = IndexFile {
        supersedes: vec![Id::hash(b"old index")],
        packs: vec![IndexPack {
            id: Id::hash(b"pack"),
            blobs: vec![blob(0, false), blob(1, true), blob(2, true)],
        }],
    };
    serde_json::to_vec(&file).unwrap()
}

fn snapshot_sample() -> Vec<u8> {
    let mut s = Snapshot::new(Id::hash(b"tree"), vec!["/data".into()]);
    s.tags = vec!["pvc=data".into()];
    s.parent = Some(Id::hash(b"parent"));
    serde_json::to_vec(&s).unwrap()
}

fn key_sample() -> Vec<u8> {
    let kdf = KdfParams::default();
    serde_json::to_vec(&KeyFile {
        created: format::now(),
        username: "u".into(),
        hostname: "h".into(),
        kdf: "scrypt".into(),
        n: kdf.n,
        r: kdf.r,
        p: kdf.p,
        salt: vec![7; 64],
        data: vec![9; 120],
    })
    .unwrap()
}

fn config_sample() -> Vec<u8> {
    serde_json::to_vec(&Config {
        version: 2,
        id: Id::hash(b"repository"),
        chunker_polynomial: 0x3DA3358B4DC173,
    })
    .unwrap()
}

fn lock_sample() -> Vec<u8> {
    serde_json::to_vec(&LockFile {
        time: format::now(),
        exclusive: true,
        hostname: "h".into(),
        username: "u".into(),
        pid: 42,
        uid: 0,
        gid: 0,
    })
    .unwrap()
}

fn header_sample() -> Vec<u8> {
    let blob = |n: u8, compressed: bool| PackedBlob {
        blob_type: BlobType::Data,
        id: Id::hash(&[n]),
        offset: 0,
        length: 1000 + u32::from(n),
        uncompressed_length: compressed.then_some(5000),
    };
    encode_pack_header(&[blob(0, false), blob(1, true), blob(2, false)])
}

/// One change to a byte string: flip a byte, cut the rest, or insert a byte.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, u8),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn damage(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *e {
            Edit::Flip(i, b) if !v.is_empty() => {
                let i = at(i, v.len());
                v[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Cut(i) => v.truncate(at(i, v.len() + 1)),
            Edit::Insert(i, b) => {
                let i = at(i, v.len() + 1);
                v.insert(i, b);
            }
        }
    }
    v
}

/// Every parser of untrusted data, on one input; only a panic fails.
fn parse_everything(bytes: &[u8]) {
    let _ = decode_pack_header(bytes);
    let _ = IndexFile::from_json(bytes);
    let _ = Tree::from_blob(bytes, "tree under test");
    let _ = serde_json::from_slice::<Snapshot>(bytes);
    let _ = serde_json::from_slice::<KeyFile>(bytes);
    let _ = serde_json::from_slice::<Config>(bytes);
    let _ = serde_json::from_slice::<LockFile>(bytes);
    let _ = decode_unpacked(bytes, 1 << 16);
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = go_unquote(s);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_parser(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&bytes);
    }

    #[test]
    fn damaged_repository_files_never_panic_a_parser(
        sample in 0usize..7,
        edits in edits(),
    ) {
        let valid = match sample {
            0 => tree_sample(),
            1 => index_sample(),
            2 => snapshot_sample(),
            3 => key_sample(),
            4 => config_sample(),
            5 => lock_sample(),
            _ => header_sample(),
        };
        parse_everything(&damage(valid, &edits));
    }

    #[test]
    fn damaged_compressed_files_never_panic_or_exceed_their_limit(
        sample in 0usize..3,
        edits in edits(),
    ) {
        let json = match sample {
            0 => index_sample(),
            1 => snapshot_sample(),
            _ => lock_sample(),
        };
        let mut plain = vec![2u8];
        plain.extend(zstd_compress(&json));
        if let Ok(out) = decode_unpacked(&damage(plain, &edits), 4096) {
            prop_assert!(out.len() <= 4096);
        }
    }

    #[test]
    fn escape_soup_never_panics_the_name_unquoting(
        chars in proptest::collection::vec(proptest::sample::select(vec![
            '\\', 'x', 'u', 'U', '0', '7', 'f', 'F', 'g', '"', '\'', 'a', 'n', 'v', '\u{7f}', 'é',
        ]), 0..16),
    ) {
        // Names and link targets are Go-quoted; damage inside an escape is what random
        // bytes around a valid tree rarely reach.
        let _ = go_unquote(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn names_survive_go_quoting(name in proptest::collection::vec(any::<u8>(), 0..64)) {
        let quoted = volbackup_store::tree::go_quote(&name);
        prop_assert_eq!(go_unquote(&quoted).unwrap(), name);
    }

    #[test]
    fn pack_headers_round_trip(
        blobs in proptest::collection::vec((any::<bool>(), any::<bool>(), 33u32..1 << 20, any::<[u8; 32]>()), 0..20)
    ) {
        let mut offset = 0;
        let blobs: Vec<PackedBlob> = blobs
            .into_iter()
            .map(|(tree, compressed, length, id)| {
                let b = PackedBlob {
                    blob_type: if tree { BlobType::Tree } else { BlobType::Data },
                    id: Id(id),
                    offset,
                    length,
                    uncompressed_length: compressed.then_some(length * 3),
                };
                offset += length;
                b
            })
            .collect();
        prop_assert_eq!(decode_pack_header(&encode_pack_header(&blobs)).unwrap(), blobs);
    }

    #[test]
    fn accepted_scrypt_parameters_stay_within_their_memory_limit(
        log_n in 0u32..64,
        r in any::<u32>(),
        p in any::<u32>(),
    ) {
        let kdf = KdfParams { n: 1u64 << log_n, r, p };
        if kdf.check_limits().is_ok() {
            prop_assert!(kdf.n <= 1 << 20 && (1..=32).contains(&r) && (1..=16).contains(&p));
            prop_assert!(128 * kdf.n * u64::from(r) <= 1 << 30);
        }
    }
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}
