//! Damaged repositories: a tree blob that decompresses beyond its claim.

use super::*;

/// `n` zero bytes as one zstd frame, compressed a mebibyte at a time (so that making the bomb
/// does not need the memory the bomb is about).
fn zstd_zeros(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    let mib = vec![0u8; 1 << 20];
    for _ in 0..n >> 20 {
        enc.write_all(&mib).unwrap();
    }
    enc.finish().unwrap()
}

/// Stores `compressed` as a compressed tree blob `id` in a pack of its own whose header and
/// index entry both claim `claimed` uncompressed bytes; returns the pack's id.
fn plant_tree_blob(
    store: &volbackup_store::Repository,
    id: volbackup_store::Id,
    compressed: &[u8],
    claimed: u32,
) -> volbackup_store::Id {
    use volbackup_store::backend::FileType;
    use volbackup_store::format::{IndexFile, IndexPack, PackedBlob, encode_pack_header};
    let sealed = store.key().seal(compressed);
    let blob = PackedBlob {
        blob_type: volbackup_store::BlobType::Tree,
        id,
        offset: 0,
        length: sealed.len() as u32,
        uncompressed_length: Some(claimed),
    };
    let header = store
        .key()
        .seal(&encode_pack_header(std::slice::from_ref(&blob)));
    let mut pack = sealed;
    pack.extend_from_slice(&header);
    pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
    let pack_id = volbackup_store::Id::hash(&pack);
    store
        .backend()
        .write(FileType::Pack, &pack_id.to_hex(), &pack)
        .unwrap();
    let index = IndexFile {
        packs: vec![IndexPack {
            id: pack_id,
            blobs: vec![blob.to_index_blob()],
        }],
        ..Default::default()
    };
    store.save_unpacked(FileType::Index, &index).unwrap();
    pack_id
}

#[test]
fn a_tree_blob_that_decompresses_beyond_its_claim_fails_restore_cleanly_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_one_backup(dir.path());
    let store = open_store(&repo);
    let (_, mut snap) = store.find_snapshot("latest").unwrap();
    // 3 GiB of zeros that claim to be 100 bytes, as the root tree of a new snapshot.
    let bomb_id = volbackup_store::Id::hash(b"a tree of 100 bytes");
    let pack = plant_tree_blob(&store, bomb_id, &zstd_zeros(3 << 30), 100);
    snap.tree = bomb_id;
    let snap_id = store.save_snapshot(&snap).unwrap();

    // Address space for the program, far less than the bomb (few malloc arenas, so that
    // threads do not reserve it all up front).
    let target = dir.path().join("out.img");
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 1u64 << 30))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_kubectl-volbackup"))
        .args(["mover", "restore", "--snapshot"])
        .arg(snap_id.to_hex())
        .arg("--repo")
        .arg(&repo)
        .arg("--target")
        .arg(&target)
        .env("VOLBACKUP_PASSWORD", PASSWORD)
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .output()
        .expect("run prlimit (util-linux)");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_error_line(&out);
    assert!(
        line.contains(&format!("blob {} in pack data/{pack}", bomb_id.short())),
        "{line}"
    );
    assert!(line.contains("100 bytes"), "{line}");
}
