//! Opening reads the key file a hint names, by name, and a copied key file only while the
//! repository holds it unchanged.

use super::*;

#[test]
fn a_key_hint_is_read_by_name_without_listing_the_keys_and_a_wrong_one_is_passed_over() {
    let t = TempRepo::new();
    let first = t.init_ours();
    let ours = first.key_id();
    // A second key, for another password: the hint may name a key this password does not
    // open.
    let other = first
        .add_key(
            "another password",
            volbackup_store::crypto::KdfParams::insecure_fast(),
        )
        .unwrap();
    let open = |hint: Option<KeyHint>| {
        let w = Arc::new(Wrapped::new(t.backend()));
        let repo = Repository::open_with(
            w.clone(),
            PASSWORD,
            &OpenOptions {
                key_hint: hint.as_ref(),
                ..OpenOptions::default()
            },
        )
        .unwrap();
        assert_eq!(repo.key_id(), ours, "opened with {hint:?}");
        w.log()
    };
    let key_reads = |log: &[String], id: &Id| count_prefix(log, &format!("read keys/{id}"));

    // The right key: read by name, the keys never listed.
    let log = open(Some(KeyHint::named(ours.to_hex())));
    assert_eq!(count_prefix(&log, "list keys/"), 0, "{log:#?}");
    assert_eq!(key_reads(&log, &ours), 1, "{log:#?}");

    // A key the password does not open: tried once, then the others from the listing.
    let log = open(Some(KeyHint::named(other.to_hex())));
    assert_eq!(count_prefix(&log, "list keys/"), 1, "{log:#?}");
    assert_eq!(key_reads(&log, &other), 1, "{log:#?}");
    assert_eq!(key_reads(&log, &ours), 1, "{log:#?}");

    // No such key file, or not a key id: the keys are listed as without a hint.
    for hint in [Id::random().to_hex(), "not-a-key-id".to_string()] {
        let log = open(Some(KeyHint::named(hint.clone())));
        assert_eq!(count_prefix(&log, "list keys/"), 1, "{hint}: {log:#?}");
        assert_eq!(key_reads(&log, &ours), 1, "{hint}: {log:#?}");
    }
    let log = open(None);
    assert_eq!(count_prefix(&log, "list keys/"), 1, "{log:#?}");
}

#[test]
fn a_copied_key_file_opens_only_while_the_repository_holds_it_unchanged() {
    let t = TempRepo::new();
    let first = t.init_ours();
    let ours = first.key_hint();
    let stored = |id: &str| t.backend().read(FileType::Key, id).unwrap();
    assert_eq!(
        ours.copy.as_deref(),
        Some(stored(&ours.id).as_slice()),
        "the hint of a new repository copies its key file"
    );
    let open = |password: &str, hint: &KeyHint| {
        let w = Arc::new(Wrapped::new(t.backend()));
        let opened = Repository::open_with(
            w.clone(),
            password,
            &OpenOptions {
                key_hint: Some(hint),
                ..OpenOptions::default()
            },
        );
        (opened, w.log())
    };

    // The copy of the stored file: the key opens, the file is still read (it must be
    // there), the keys are not listed, and the repository hints the same again.
    let (repo, log) = open(PASSWORD, &ours);
    let repo = repo.unwrap();
    assert_eq!(repo.key_id().to_hex(), ours.id);
    assert_eq!(repo.key_hint(), ours);
    assert_eq!(count_prefix(&log, "list keys/"), 0, "{log:#?}");
    assert_eq!(
        count_prefix(&log, &format!("read keys/{}", ours.id)),
        1,
        "{log:#?}"
    );
    let again = Repository::open_with(
        t.backend(),
        PASSWORD,
        &OpenOptions {
            key_hint: None,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        again.key_hint(),
        ours,
        "a key found by listing is copied too"
    );

    // A copy that is not the file the hint names is ignored: the named file opens.
    let second = first
        .add_key(
            PASSWORD,
            volbackup_store::crypto::KdfParams::insecure_fast(),
        )
        .unwrap();
    let mismatched = KeyHint {
        id: ours.id.clone(),
        copy: Some(stored(&second.to_hex())),
    };
    let (repo, log) = open(PASSWORD, &mismatched);
    assert_eq!(repo.unwrap().key_id().to_hex(), ours.id, "{log:#?}");
    assert_eq!(count_prefix(&log, "list keys/"), 0, "{log:#?}");

    // A removed key stays removed, copy or not: the password opens the repository only
    // through a key file still there ...
    let removed = KeyHint {
        id: second.to_hex(),
        copy: Some(stored(&second.to_hex())),
    };
    t.backend().remove(FileType::Key, &removed.id).unwrap();
    let (repo, log) = open(PASSWORD, &removed);
    assert_eq!(repo.unwrap().key_id().to_hex(), ours.id, "{log:#?}");
    assert_eq!(count_prefix(&log, "list keys/"), 1, "{log:#?}");
    // ... and not at all when its only key is gone.
    let lone = first
        .add_key(
            "a lone password",
            volbackup_store::crypto::KdfParams::insecure_fast(),
        )
        .unwrap();
    let lone = KeyHint {
        id: lone.to_hex(),
        copy: Some(stored(&lone.to_hex())),
    };
    let (repo, _) = open("a lone password", &lone);
    assert!(repo.is_ok(), "the copy opens while its file is there");
    t.backend().remove(FileType::Key, &lone.id).unwrap();
    let (repo, log) = open("a lone password", &lone);
    assert!(
        matches!(repo, Err(volbackup_store::Error::WrongPassword { .. })),
        "a copy of a removed key opened the repository: {:?} {log:#?}",
        repo.err()
    );
}
