//! Repository locks: stale and unreadable ones, `repo unlock`, and a restore waiting for a prune.

use super::*;

fn lock_names(repo: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(repo.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_garbage_lock_file_is_passed_over_with_a_warning_naming_the_real_unlock_command() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let garbage = "5a".repeat(32);
    std::fs::write(repo.join("locks").join(&garbage), b"not a lock at all").unwrap();
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(1)).unwrap();
    let out = ok(
        mover_backup(&repo, &src).output().unwrap(),
        "mover backup with a garbage lock file",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(&garbage)).collect();
    assert_eq!(warnings.len(), 1, "not one warning line: {err}");
    assert!(warnings[0].starts_with("warning: "), "{err}");
    assert!(
        err.contains(&format!("locks/{garbage}"))
            && err.contains("`kubectl-volbackup repo unlock --remove-all`"),
        "no warning about the garbage lock: {err}"
    );
}

/// The plugin's own warnings reach stderr as the engine's do: a key copy that is not base64 is
/// named and passed over, and the repository still opens.
#[test]
fn the_plugins_own_warnings_are_printed_like_the_engines() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let out = ok(
        bin()
            .args(["snapshots", "--repo"])
            .arg(&repo)
            .env("VOLBACKUP_KEY_HINT", "00".repeat(32))
            .env("VOLBACKUP_KEY_COPY", "%%% not base64 %%%")
            .output()
            .unwrap(),
        "snapshots with a key copy that is not base64",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l == "warning: ignoring VOLBACKUP_KEY_COPY: not base64"),
        "the warning was not printed: {err}"
    );
}

#[test]
fn repo_unlock_removes_a_stale_lock_and_keeps_a_fresh_one() {
    use volbackup_store::backend::FileType;
    use volbackup_store::format::{LockFile, now};
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let store = open_store(&repo);
    let fresh = LockFile {
        time: now(),
        exclusive: true,
        hostname: "other-host".into(),
        username: "someone".into(),
        pid: 1,
        uid: 0,
        gid: 0,
    };
    let stale = LockFile {
        time: now() - chrono::Duration::minutes(45),
        ..fresh.clone()
    };
    let fresh_id = store.save_unpacked(FileType::Lock, &fresh).unwrap();
    store.save_unpacked(FileType::Lock, &stale).unwrap();

    // The fresh exclusive lock blocks a backup, and the error names a command that exists.
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(1)).unwrap();
    let out = mover_backup(&repo, &src).output().unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("someone@other-host")
            && line.contains("`kubectl-volbackup repo unlock --remove-all`"),
        "{line}"
    );

    let out = ok(
        bin()
            .args(["repo", "unlock", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "repo unlock",
    );
    assert_eq!(
        lock_names(&repo),
        [fresh_id.to_hex()].into_iter().collect(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn repo_unlock_remove_all_asks_first_and_refuses_without_a_terminal_unless_yes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let store = open_store(&repo);
    let held = volbackup_store::lock::Lock::shared(&store).unwrap();
    std::fs::write(repo.join("locks").join("ab".repeat(32)), b"garbage").unwrap();
    let before = lock_names(&repo);
    assert_eq!(before.len(), 2);

    let out = bin()
        .args(["repo", "unlock", "--remove-all", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("without confirmation") && line.contains("--yes"),
        "{line}"
    );
    assert_eq!(
        lock_names(&repo),
        before,
        "locks removed without confirmation"
    );

    ok(
        bin()
            .args(["repo", "unlock", "--remove-all", "--yes", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "repo unlock --remove-all --yes",
    );
    assert!(lock_names(&repo).is_empty(), "{:?}", lock_names(&repo));
    drop(held);
}

/// Reads a child's stdout lines on a thread.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn a_restore_waits_for_a_prunes_lock_reporting_the_wait_and_then_restores() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let src = dir.path().join("a.img");
    let data = mixed_data(6);
    std::fs::write(&src, &data).unwrap();
    ok(mover_backup(&repo, &src).output().unwrap(), "backup");
    // An exclusive lock, as a running prune holds it.
    let store = open_store(&repo);
    let prune_lock = volbackup_store::lock::Lock::exclusive(&store).unwrap();

    // With a short --retry-lock the restore gives up: the one-line error says it waited, and
    // the JSON error line lets the populator retry later.
    let target = dir.path().join("out.img");
    let gave_up = bin()
        .args(["mover", "restore", "--json", "--retry-lock", "2s", "--repo"])
        .arg(&repo)
        .args(["--snapshot", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let line = one_error_line(&gave_up);
    assert!(
        line.contains("locked exclusively") && line.contains("gave up after waiting 2s"),
        "{line}"
    );
    let stdout = String::from_utf8_lossy(&gave_up.stdout);
    assert!(stdout.contains(r#""type":"waiting""#), "{stdout}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["reason"], "RepositoryLocked", "{stdout}");
    assert_eq!(last["retryable"], true, "{stdout}");
    assert!(!target.exists(), "a target was created while locked");

    // With a long one it reports the wait, and restores once the prune is done.
    let mut child = bin()
        .args(["mover", "restore", "--json", "--retry-lock", "5m", "--repo"])
        .arg(&repo)
        .args(["--snapshot", "latest", "--target"])
        .arg(&target)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child);
    let waiting = loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("no waiting line within 60 s");
        if line.contains(r#""type":"waiting""#) {
            break line;
        }
    };
    assert!(waiting.contains("locked exclusively"), "{waiting}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the restore ended while the lock was held"
    );
    drop(prune_lock);
    let rest: Vec<String> = lines.iter().collect();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "restore failed after the lock went: {rest:?}"
    );
    assert!(
        rest.last()
            .is_some_and(|l| l.contains(r#""type":"summary""#)),
        "{rest:?}"
    );
    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored image differs"
    );
}
