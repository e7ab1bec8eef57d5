//! `forget`, `prune` and `repo check` on real repositories.

use super::*;

#[test]
fn forget_dry_run_changes_nothing_and_forget_with_prune_leaves_a_sound_smaller_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let image = dir.path().join("vol.img");
    let mut last = Vec::new();
    for round in 0..3u8 {
        let mut data = mixed_data(6);
        data[..4096].fill(round + 1);
        data.extend(
            std::iter::repeat_n(round, 3 << 20)
                .enumerate()
                .map(|(i, r)| (i as u8) ^ r.wrapping_mul(97)),
        );
        std::fs::write(&image, &data).unwrap();
        ok(
            bin()
                .args(["mover", "backup", "-q", "--repo"])
                .arg(&repo)
                .arg("--source")
                .arg(&image)
                .output()
                .unwrap(),
            "backup",
        );
        last = data;
    }
    let before = fingerprint(&repo);
    let plan = ok(
        bin()
            .args([
                "forget",
                "--keep-last",
                "1",
                "--dry-run",
                "-o",
                "json",
                "--repo",
            ])
            .arg(&repo)
            .output()
            .unwrap(),
        "forget --dry-run",
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        plan["groups"][0]["keep"].as_array().unwrap().len(),
        1,
        "{plan}"
    );
    assert_eq!(
        plan["groups"][0]["remove"].as_array().unwrap().len(),
        2,
        "{plan}"
    );
    assert_eq!(
        before,
        fingerprint(&repo),
        "a dry run changed the repository"
    );

    let size = |m: &BTreeMap<PathBuf, Vec<u8>>| m.values().map(|v| v.len()).sum::<usize>();
    ok(
        bin()
            .args(["forget", "-q", "--keep-last", "1", "--prune", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "forget --prune",
    );
    let after = fingerprint(&repo);
    assert!(
        size(&after) < size(&before),
        "prune did not shrink the repository"
    );
    let snaps = ok(
        restic(&repo)
            .args(["snapshots", "--json"])
            .output()
            .unwrap(),
        "restic snapshots",
    );
    let snaps: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_restic_checks_and_dumps(&repo, "latest", "/vol.img", &last);

    let no_policy = bin()
        .args(["forget", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let line = one_error_line(&no_policy);
    assert!(line.contains("no policy"), "{line}");
}

#[test]
fn repo_check_reads_every_pack_with_the_reads_asked_for_and_names_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_with_one_backup(dir.path());
    let check = |extra: &[&str]| {
        bin()
            .args(["repo", "check", "--read-data", "--repo"])
            .arg(&repo)
            .args(extra)
            .output()
            .unwrap()
    };
    for extra in [
        &[][..],
        &["--read-concurrency", "1"],
        &["--read-concurrency", "8"],
    ] {
        let out = ok(check(extra), "repo check --read-data");
        assert!(
            out.stdout.is_empty(),
            "{extra:?}: findings on a sound repository"
        );
    }
    let refused = check(&["--read-concurrency", "0"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a read concurrency of 0 is refused"
    );

    // A flipped byte in the middle of a pack: the pack is named, the check fails.
    let pack = packs(&repo)
        .into_iter()
        .map(|name| repo.join("data").join(&name[..2]).join(name))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let out = check(&["--read-concurrency", "3"]);
    assert_eq!(out.status.code(), Some(1), "a damaged pack fails the check");
    let name = pack.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&name),
        "the damaged pack {name} is not named: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
