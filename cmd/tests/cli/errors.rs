//! Bad input and missing settings: one error line that says what to do, and nothing changed.

use super::*;

#[test]
fn wrong_password_is_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(1)).unwrap();
    let before = fingerprint(&repo);
    let out = mover_backup(&repo, &src)
        .env("VOLBACKUP_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(line.contains("wrong password"), "{line}");
    assert!(
        !line.contains("not-the-password"),
        "the password leaked: {line}"
    );
    assert_eq!(
        before,
        fingerprint(&repo),
        "a failed backup changed the repository"
    );
}

#[test]
fn missing_repository_is_one_line_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["snapshots", "--repo"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("no repository") && line.contains("repo init"),
        "{line}"
    );
    assert!(
        !dir.path().join("nothing-here").exists(),
        "a failed open created the repository folder"
    );
}

#[test]
fn unknown_snapshot_id_is_one_line_and_creates_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let target = dir.path().join("out.img");
    let before = fingerprint(&repo);
    let out = bin()
        .args(["mover", "restore", "--snapshot", "deadbeef", "--repo"])
        .arg(&repo)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(line.contains("deadbeef"), "{line}");
    assert!(!target.exists(), "a failed restore created its target");
    assert_eq!(before, fingerprint(&repo));
}

#[test]
fn no_password_without_a_terminal_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .env_remove("VOLBACKUP_PASSWORD")
        .args(["repo", "init", "--repo"])
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("VOLBACKUP_PASSWORD") && line.contains("--password-file"),
        "{line}"
    );
    assert!(!dir.path().join("r").exists());
}

#[test]
fn repo_init_refuses_unsupported_schemes_creates_nothing_and_never_echoes_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for location in [
        "rest:https://alice:hunter2secret@backup.example.com:8000/",
        "sftp:alice:hunter2secret@host:/srv/restic-repo",
        "b2:bucket:path",
        "azure:container:/path",
        "gs:bucket:/path",
        "swift:container:/path",
        "rclone:remote:path",
        "S3:https://alice:hunter2secret@s3.example.com/bucket",
        "s3:https://alice:hunter2secret@s3.example.com/bucket",
    ] {
        let out = bin()
            .current_dir(dir.path())
            .args(["repo", "init", "--repo", location])
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(
            !line.contains("hunter2secret"),
            "{location}: the password leaked: {line}"
        );
        if location.starts_with("s3:") {
            assert!(line.contains("AWS_SECRET_ACCESS_KEY"), "{line}");
        } else {
            assert!(
                line.contains("use a directory path, s3:https://host[:port]/bucket/prefix or s3://bucket/prefix"),
                "{location}: {line}"
            );
        }
        let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(made.is_empty(), "{location}: created {made:?}");
    }
    // A directory whose name has a colon is still a directory when written as a path.
    ok(
        bin()
            .current_dir(dir.path())
            .args(["repo", "init", "--repo", "./with:colon"])
            .output()
            .unwrap(),
        "repo init ./with:colon",
    );
    assert!(dir.path().join("with:colon/config").exists());
}

#[test]
fn an_ambiguous_snapshot_prefix_fails_at_once_listing_the_candidates_and_is_not_retried() {
    use volbackup_store::backend::FileType;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_one_backup(dir.path());
    // Seventeen snapshots: two of them share their first hex digit.
    let store = open_store(&repo);
    let (_, snap) = store.find_snapshot("latest").unwrap();
    for i in 0..16 {
        let mut copy = snap.clone();
        copy.tags = vec![format!("copy-{i}")];
        store.save_snapshot(&copy).unwrap();
    }
    let ids = store.list_ids(FileType::Snapshot).unwrap();
    let shared = ids
        .windows(2)
        .find(|w| w[0].to_hex()[..1] == w[1].to_hex()[..1])
        .expect("two ids share a first digit");
    let prefix = &shared[0].to_hex()[..1];
    let target = dir.path().join("out.img");
    let out = bin()
        .args(["mover", "restore", "--json", "--snapshot", prefix, "--repo"])
        .arg(&repo)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("is ambiguous")
            && line.contains(&shared[0].to_hex()[..8])
            && line.contains(&shared[1].to_hex()[..8]),
        "{line}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["reason"], "SnapshotAmbiguous", "{stdout}");
    assert_eq!(last["retryable"], false, "{stdout}");
    assert!(!target.exists());
}

#[test]
fn a_refused_flag_value_is_one_error_line_naming_the_flag_before_anything_runs() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["restore", "b", "--to", "x", "--size", "lots"],
            "error: --size \"lots\" is not a Kubernetes quantity: use a size like 10Gi or 500Mi",
        ),
        (
            &["restore", "b", "--to", "x", "--access-mode", "RWX"],
            "error: --access-mode \"RWX\" is not an access mode: use one of ReadWriteOnce, ReadOnlyMany, ReadWriteMany, ReadWriteOncePod",
        ),
        (
            &["create", "data", "--timeout", "10x"],
            "error: --timeout \"10x\" is not a duration: use a number with a unit, like 90s, 10m or 1h30m",
        ),
        (
            &["snapshots", "--retry-lock", "soon"],
            "error: --retry-lock \"soon\" is not a duration: use a number with a unit, like 90s, 10m or 1h30m",
        ),
    ];
    for (args, expected) in cases {
        // No kubeconfig and no repository: a value parser must refuse first.
        let out = bin()
            .args(args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{expected}\n"),
            "{args:?}"
        );
    }
}

#[test]
fn a_failed_json_backup_ends_with_an_error_line_saying_what_failed_and_whether_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(1)).unwrap();
    let out = mover_backup(&dir.path().join("nothing-here"), &src)
        .arg("--json")
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(line.contains("no repository"), "{line}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "error", "{stdout}");
    assert_eq!(last["reason"], "RepositoryNotFound", "{stdout}");
    assert_eq!(last["retryable"], false, "{stdout}");
    assert!(
        last["message"].as_str().unwrap().contains("no repository"),
        "{stdout}"
    );
}
