use super::*;

#[test]
fn unpacked_plaintext_accepts_compressed_and_bare_json() {
    let json = br#"{"a":[1,2,3]}"#;
    let mut c = vec![2u8];
    c.extend(zstd::bulk::compress(json, 3).unwrap());
    assert_eq!(decode_unpacked(&c, 100).unwrap(), json);
    assert_eq!(decode_unpacked(json, 100).unwrap(), json);
    assert_eq!(decode_unpacked(b"[1]", 100).unwrap(), b"[1]");
    assert!(decode_unpacked(&[1, 2, 3], 100).is_err());
    assert!(decode_unpacked(&[], 100).is_err());
}

#[test]
fn unpacked_files_stop_decompressing_at_their_limit() {
    let mut json = b"[".to_vec();
    json.resize(10_000, b' ');
    json.push(b']');
    let mut c = vec![2u8];
    c.extend(zstd::bulk::compress(&json, 3).unwrap());
    assert!(c.len() < 100);
    assert_eq!(decode_unpacked(&c, json.len()).unwrap(), json);
    let err = decode_unpacked(&c, 1000).unwrap_err();
    assert!(err.contains("more than 1000 bytes"), "{err}");
    assert!(decode_unpacked(&json, 1000).is_err());
}
