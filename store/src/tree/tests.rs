use super::*;

#[test]
fn quote_matches_go_strconv_quote_for_odd_bytes() {
    let cases: &[(&[u8], &str)] = &[
        (b"plain.txt", "plain.txt"),
        (b"a\"b\\c", "a\\\"b\\\\c"),
        (b"new\nline\ttab", "new\\nline\\ttab"),
        (b"\x07\x08\x0c\r\x0b", "\\a\\b\\f\\r\\v"),
        (b"\x00\x1f\x7f", "\\x00\\x1f\\x7f"),
        (b"x\xffy\xfe", "x\\xffy\\xfe"),
        // a truncated 3-byte sequence: each byte escaped on its own
        (b"\xe2\x82z", "\\xe2\\x82z"),
        // a UTF-16 surrogate encoded in UTF-8 is invalid in Go too
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
        ("é日本".as_bytes(), "é日本"),
        ("\u{a0}\u{ad}".as_bytes(), "\\u00a0\\u00ad"),
        ("\u{200b}\u{2028}".as_bytes(), "\\u200b\\u2028"),
        ("\u{e000}".as_bytes(), "\\ue000"),
        ("\u{f0000}".as_bytes(), "\\U000f0000"),
        ("😀".as_bytes(), "😀"),
        ("\u{fffd}".as_bytes(), "\u{fffd}"),
        (b"<&>'", "<&>'"),
    ];
    for (raw, quoted) in cases {
        assert_eq!(&go_quote(raw), quoted, "quoting {raw:?}");
        assert_eq!(&go_unquote(quoted).unwrap(), raw, "unquoting {quoted:?}");
    }
}

#[test]
fn unquote_accepts_every_go_escape_and_rejects_what_go_rejects() {
    assert_eq!(go_unquote(r"\101\x42\u0043\U00000044").unwrap(), b"ABCD");
    assert_eq!(go_unquote("tab\tkept").unwrap(), b"tab\tkept");
    for bad in [
        "a\"b",
        "a\nb",
        r"\q",
        r"\x4",
        r"\u12",
        r"\400",
        r"\ud800",
        r"\U00110000",
        "x\\",
        r"\'",
    ] {
        assert!(go_unquote(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn every_byte_string_survives_quote_and_unquote() {
    let mut state = 0x1234_5678_9abc_def0u64;
    for len in 0..200 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let q = go_quote(&bytes);
        assert!(!q.contains('\n'), "{q:?}");
        assert_eq!(go_unquote(&q).unwrap(), bytes);
    }
}

#[test]
fn go_file_modes_convert_from_and_to_st_mode() {
    let cases = [
        (0o100644, 0o644),
        (0o104755, gomode::SETUID | 0o755),
        (0o102755, gomode::SETGID | 0o755),
        (0o041777, gomode::DIR | gomode::STICKY | 0o777),
        (0o120777, gomode::SYMLINK | 0o777),
        (0o020644, gomode::DEVICE | gomode::CHAR_DEVICE | 0o644),
        (0o060600, gomode::DEVICE | 0o600),
        (0o010644, gomode::NAMED_PIPE | 0o644),
        (0o140755, gomode::SOCKET | 0o755),
    ];
    for (st, go) in cases {
        assert_eq!(go_mode_from_st_mode(st), go, "{st:o}");
        assert_eq!(st_mode_from_go_mode(go), st, "{go:x}");
    }
    // values restic 0.14 wrote for a chardev, a symlink and a sticky directory
    assert_eq!(go_mode_from_st_mode(0o020644), 69206436);
    assert_eq!(go_mode_from_st_mode(0o120777), 134218239);
    assert_eq!(go_mode_from_st_mode(0o041777), 2148532735);
}

#[test]
fn times_format_like_go_rfc3339nano() {
    assert_eq!(
        format_time(&time_from_unix(1_795_000_000, 578_780_840)),
        "2026-11-18T11:06:40.57878084Z"
    );
    assert_eq!(format_time(&time_from_unix(0, 0)), "1970-01-01T00:00:00Z");
    assert_eq!(
        format_time(&time_from_unix(-1, 5)),
        "1969-12-31T23:59:59.000000005Z"
    );
    assert_eq!(format_time(&zero_time()), "0001-01-01T00:00:00Z");
    let t = parse_time("2014-12-22T14:47:59.912418701+01:00").unwrap();
    assert_eq!(format_time(&t), "2014-12-22T14:47:59.912418701+01:00");
    assert_eq!(
        format_time(&time_from_unix(400_000_000_000, 0)).get(..5),
        Some("9999-")
    );
}

/// The tree restic 0.14 wrote for a directory with a character device, an empty file, a
/// setuid file with an xattr, a fifo, an oddly named file, two symlinks and a sticky
/// directory (`restic cat blob`). Parsing and writing it again must give the same bytes.
const RESTIC_TREE: &str = concat!(
    r#"{"nodes":[{"name":"cdev","type":"chardev","mode":69206436,"mtime":"2026-11-21T11:50:04.585864277Z","atime":"2026-11-21T11:50:04.585864277Z","ctime":"2026-11-21T11:50:04.585864277Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027594,"device_id":65024,"links":1,"device":259,"content":null},"#,
    r#"{"name":"empty","type":"file","mode":420,"mtime":"2026-11-21T11:50:04.57878084Z","atime":"2026-11-21T11:50:04.57878084Z","ctime":"2026-11-21T11:50:04.57878084Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027591,"device_id":65024,"links":1,"content":[]},"#,
    r#"{"name":"f","type":"file","mode":8389101,"mtime":"2026-11-21T11:50:04.57878084Z","atime":"2026-11-21T11:50:04.57878084Z","ctime":"2026-11-21T11:50:04.604943675Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027590,"device_id":65024,"size":6,"links":2,"extended_attributes":[{"name":"user.foo","value":"YmFy"}],"content":["5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"]},"#,
    r#"{"name":"fifo","type":"fifo","mode":33554852,"mtime":"2026-11-21T11:50:04.589864277Z","atime":"2026-11-21T11:50:04.589864277Z","ctime":"2026-11-21T11:50:04.589864277Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027595,"device_id":65024,"content":null},"#,
    r#"{"name":"q\\\"u\\\\o\\nt\\tx\\xfe\u003c\u0026\u003e\\u00a0é","type":"file","mode":420,"mtime":"2026-11-21T11:50:04.597864277Z","atime":"2026-11-21T11:50:04.597864277Z","ctime":"2026-11-21T11:50:04.597864277Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027596,"device_id":65024,"links":1,"content":[]},"#,
    r#"{"name":"sl","type":"symlink","mode":134218239,"mtime":"2026-11-21T11:50:04.57878084Z","atime":"2026-11-21T11:50:04.57878084Z","ctime":"2026-11-21T11:50:04.57878084Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027592,"device_id":65024,"links":1,"linktarget":"a\"b\\c","content":null},"#,
    r#"{"name":"sub","type":"dir","mode":2148532735,"mtime":"2026-11-21T11:50:04.573864276Z","atime":"2026-11-21T11:50:04.573864276Z","ctime":"2026-11-21T11:50:04.609864277Z","uid":0,"gid":0,"user":"root","group":"root","inode":10027589,"device_id":65024,"content":null,"subtree":"ac08ce34ba4f8123618661bef2425f7028ffb9ac740578a3ee88684d2523fee8"}]}"#,
    "\n"
);

#[test]
fn a_tree_restic_wrote_is_written_back_byte_for_byte() {
    let tree = Tree::from_blob(RESTIC_TREE.as_bytes(), "test tree").unwrap();
    assert_eq!(tree.nodes.len(), 7);
    let odd = &tree.nodes[4];
    assert_eq!(odd.name_bytes(), b"q\"u\\o\nt\tx\xfe<&>\xc2\xa0\xc3\xa9");
    assert_eq!(tree.nodes[5].link_target, OsString::from("a\"b\\c"));
    assert_eq!(tree.nodes[0].device, 259);
    assert_eq!(tree.nodes[2].extended_attributes[0].value, b"bar");
    assert_eq!(String::from_utf8(tree.to_blob()).unwrap(), RESTIC_TREE);
}

#[test]
fn a_link_target_that_is_not_utf8_is_kept_in_linktarget_raw() {
    let mut n = Node::new("l", NodeType::Symlink);
    n.link_target = OsString::from_vec(b"x\xffy".to_vec());
    let blob = Tree::from_nodes(vec![n.clone()]).unwrap().to_blob();
    let text = String::from_utf8(blob.clone()).unwrap();
    assert!(
        text.contains(r#""linktarget":"x\ufffdy","linktarget_raw":"eP95""#),
        "{text}"
    );
    let mut two = Node::new("l", NodeType::Symlink);
    two.link_target = OsString::from_vec(b"\xe2\x82".to_vec());
    let text = String::from_utf8(Tree::from_nodes(vec![two]).unwrap().to_blob()).unwrap();
    assert!(text.contains(r#""linktarget":"\ufffd\ufffd""#), "{text}");
    let back = Tree::from_blob(&blob, "t").unwrap();
    assert_eq!(back.nodes[0], n);
}

#[test]
fn empty_files_get_an_empty_content_list_and_others_null() {
    let tree = Tree::from_nodes(vec![
        Node::new("d", NodeType::Dir),
        Node::new("f", NodeType::File),
    ])
    .unwrap();
    let text = String::from_utf8(tree.to_blob()).unwrap();
    assert!(text.contains(r#""name":"d","type":"dir","mtime":"0001-01-01T00:00:00Z""#));
    assert!(text.contains(r#""uid":0,"gid":0,"content":null}"#));
    assert!(text.contains(r#""uid":0,"gid":0,"content":[]}"#));
    assert_eq!(Tree::default().to_blob(), b"{\"nodes\":[]}\n");
}

#[test]
fn nodes_are_sorted_bytewise_and_duplicates_rejected() {
    let names: [&[u8]; 4] = [b"b", b"\xff", b"B", b"a\x00"];
    let nodes = names
        .iter()
        .map(|n| Node::new(OsString::from_vec(n.to_vec()), NodeType::File))
        .collect();
    let tree = Tree::from_nodes(nodes).unwrap();
    let got: Vec<&[u8]> = tree.nodes.iter().map(|n| n.name_bytes()).collect();
    assert_eq!(got, vec![&b"B"[..], b"a\x00", b"b", b"\xff"]);
    assert!(
        Tree::from_nodes(vec![
            Node::new("x", NodeType::File),
            Node::new("x", NodeType::Dir)
        ])
        .is_err()
    );
    let unsorted = br#"{"nodes":[{"name":"b","type":"file"},{"name":"a","type":"file"}]}"#;
    assert!(Tree::from_blob(unsorted, "t").is_err());
}
