//! Backups killed, stopped or frozen midway: the repository stays sound and a rerun resumes.

use super::*;

/// A 320 MiB random image in `dir`, and a backup of it running in the background (stderr
/// piped), returned once at least `packs_wanted` packs are stored — so it can be stopped
/// midway.
fn backup_running_midway(
    dir: &Path,
    repo: &Path,
    packs_wanted: usize,
    env: &[(&str, &str)],
) -> (std::process::Child, Vec<u8>, PathBuf) {
    use std::io::Read;
    let image = dir.join("big.img");
    let mut data = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(320 << 20)
        .read_to_end(&mut data)
        .unwrap();
    std::fs::write(&image, &data).unwrap();
    let before = packs(repo);
    let mut child = bin()
        .envs(env.iter().copied())
        .args(["mover", "backup", "-q", "--repo"])
        .arg(repo)
        .arg("--source")
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while packs(repo).difference(&before).count() < packs_wanted {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be stopped"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no packs appeared within 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, data, image)
}

#[test]
fn a_backup_killed_midway_leaves_a_valid_repository_and_the_rerun_uploads_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (mut child, data, image) = backup_running_midway(dir.path(), &repo, 3, &[]);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = packs(&repo);
    assert!(
        std::fs::read_dir(repo.join("snapshots"))
            .unwrap()
            .next()
            .is_none(),
        "the killed backup wrote a snapshot"
    );

    // A killed process cannot remove its lock file, and restic 0.14 does not pass over stale
    // locks when it locks, so (as after a killed restic) `restic unlock` must find the lock
    // stale (same host, process gone) and remove it; then check must pass.
    ok(
        restic(&repo).arg("unlock").output().unwrap(),
        "restic unlock",
    );
    ok(
        restic(&repo).arg("check").output().unwrap(),
        "restic check after the kill",
    );

    let out = ok(
        bin()
            .args(["mover", "backup", "--json", "--repo"])
            .arg(&repo)
            .arg("--source")
            .arg(&image)
            .output()
            .unwrap(),
        "backup again",
    );
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let after = packs(&repo);
    assert!(
        before.is_subset(&after),
        "packs of the killed run disappeared"
    );

    // Every blob is stored once: nothing of the killed run was uploaded again.
    let listed = ok(
        restic(&repo).args(["list", "blobs"]).output().unwrap(),
        "restic list blobs",
    );
    let mut ids: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "some blobs were stored twice");
    let new = summary["bytes_new"].as_u64().unwrap();
    assert!(
        new < data.len() as u64,
        "the rerun stored all {new} bytes again"
    );

    assert_restic_checks_and_dumps(&repo, "latest", "/big.img", &data);
}

#[test]
fn a_backup_stopped_with_sigterm_removes_its_lock_so_restic_check_runs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (child, _, _) = backup_running_midway(dir.path(), &repo, 2, &[]);
    let locks_while_running = std::fs::read_dir(repo.join("locks")).unwrap().count();
    assert_eq!(locks_while_running, 1, "a running backup holds one lock");
    ok(
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .output()
            .unwrap(),
        "kill -TERM",
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = one_error_line(&out);
    assert!(line.contains("interrupted"), "{line}");
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "the lock was left behind"
    );
    ok(
        restic(&repo).arg("check").output().unwrap(),
        "restic check right after SIGTERM",
    );
}

/// Sends `signal` (`-STOP`, `-CONT`) to a child process.
fn signal(child: &std::process::Child, signal: &str) {
    ok(
        Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .output()
            .unwrap(),
        &format!("kill {signal}"),
    );
}

#[test]
fn a_backup_frozen_past_the_stale_age_stops_without_a_snapshot_and_the_repository_stays_sound() {
    // The stale age is shortened to 6 s (refresh every second, give up after 5 s) for every
    // process here, as it would be 30 min for all of them in real use.
    const STALE: &str = "6";
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    // A first snapshot that must survive everything below.
    let kept = dir.path().join("kept.img");
    let kept_data = mixed_data(4);
    std::fs::write(&kept, &kept_data).unwrap();
    ok(mover_backup(&repo, &kept).output().unwrap(), "first backup");
    let before = packs(&repo);
    let (child, _, _) = backup_running_midway(
        dir.path(),
        &repo,
        2,
        &[(volbackup_store::lock::STALE_AFTER_ENV, STALE)],
    );
    // Frozen (a stopped process, a suspended node) past the stale age: a prune then takes
    // its exclusive lock and removes the packs the frozen backup wrote but has not indexed.
    signal(&child, "-STOP");
    std::thread::sleep(std::time::Duration::from_millis(7500));
    let written = packs(&repo).difference(&before).count();
    let pruned = bin()
        .env(volbackup_store::lock::STALE_AFTER_ENV, STALE)
        .args(["prune", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let pruned_ok = pruned.status.success();
    let left = packs(&repo).difference(&before).count();
    signal(&child, "-CONT");
    let out = child.wait_with_output().unwrap();
    assert!(
        pruned_ok,
        "prune did not pass over the stale lock: {}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    assert!(
        left < written,
        "the prune removed none of the frozen backup's {written} packs"
    );
    // The backup notices that its lock was lost and stops before writing an index or a
    // snapshot that would name the removed packs.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the backup went on: {err}");
    assert!(err.contains("lost the lock"), "{err}");
    assert!(
        err.lines().filter(|l| l.starts_with("error: ")).count() == 1,
        "{err}"
    );
    let snapshots = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(snapshots, 1, "the frozen backup wrote a snapshot");
    assert_eq!(
        std::fs::read_dir(repo.join("locks")).unwrap().count(),
        0,
        "the stopped backup left its lock"
    );
    ok(
        restic(&repo)
            .args(["check", "--read-data"])
            .output()
            .unwrap(),
        "restic check --read-data after the prune",
    );
    assert_restic_checks_and_dumps(&repo, "latest", "/kept.img", &kept_data);
}
