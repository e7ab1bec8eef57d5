//! The binary as a user runs it: exit codes, one-line errors, JSON output, and restic reading
//! what it wrote. Uses the real `restic` 0.14 binary as the oracle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "cli-test-password";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-volbackup"));
    c.env_remove("VOLBACKUP_REPOSITORY")
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env("VOLBACKUP_PASSWORD", PASSWORD)
        .stdin(Stdio::null());
    c
}

/// `mover backup --repo REPO --source SOURCE`, ready to run.
fn mover_backup(repo: &Path, source: &Path) -> Command {
    let mut c = bin();
    c.args(["mover", "backup", "--repo"])
        .arg(repo)
        .arg("--source")
        .arg(source);
    c
}

fn restic(repo: &Path) -> Command {
    if Command::new("restic").arg("version").output().is_err() {
        panic!("restic not found: install the Debian package restic (.ci/run does)");
    }
    let mut c = Command::new("restic");
    c.arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PASSWORD)
        .stdin(Stdio::null());
    c
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir` with its content hash, to show a failed command changed nothing.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut map = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                map.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    map
}

/// Mixed data: random, text and a repeated block, `mib` MiB.
fn mixed_data(mib: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut out = Vec::with_capacity(mib << 20);
    for block in 0..mib {
        match block % 4 {
            0 | 1 => {
                for _ in 0..(1 << 17) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            2 => {
                let line = format!(
                    "2026-11-21 12:00:{:02} INFO request served block={block}\n",
                    block % 60
                );
                while out.len() < (block + 1) << 20 {
                    out.extend_from_slice(line.as_bytes());
                }
                out.truncate((block + 1) << 20);
            }
            _ => out.extend_from_slice(&vec![0u8; 1 << 20]),
        }
    }
    out
}

/// restic 0.14 passes `check --read-data` on `repo`, and `restic dump SNAPSHOT PATH` gives
/// back exactly `expected`.
fn assert_restic_checks_and_dumps(repo: &Path, snapshot: &str, path: &str, expected: &[u8]) {
    ok(
        restic(repo)
            .args(["check", "--read-data"])
            .output()
            .unwrap(),
        "restic check --read-data",
    );
    let dumped = ok(
        restic(repo)
            .args(["dump", snapshot, path])
            .output()
            .unwrap(),
        "restic dump",
    );
    assert!(
        dumped.stdout == expected,
        "restic dump {snapshot} {path} differs from what was backed up"
    );
}

/// A repository in `dir` holding one `mover backup` of an image (`dir/a.img`).
fn repo_with_one_backup(dir: &Path) -> PathBuf {
    let repo = init_repo(dir);
    let src = dir.join("a.img");
    std::fs::write(&src, mixed_data(1)).unwrap();
    ok(mover_backup(&repo, &src).output().unwrap(), "mover backup");
    repo
}

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    ok(
        bin()
            .args(["repo", "init", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "repo init",
    );
    repo
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure, got success");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "not an error line: {err}");
    lines[0].to_string()
}

#[test]
fn an_image_backed_up_by_the_binary_passes_restic_check_and_dumps_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let image = dir.path().join("disk.img");
    let data = mixed_data(24);
    std::fs::write(&image, &data).unwrap();

    let out = ok(
        bin()
            .args(["mover", "backup", "--json", "--tag", "pvc=data", "--repo"])
            .arg(&repo)
            .arg("--source")
            .arg(&image)
            .output()
            .unwrap(),
        "mover backup",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["bytes_total"], data.len() as u64);
    assert!(
        stdout.lines().any(|l| l.contains("\"progress\"")),
        "no progress line in: {stdout}"
    );
    let snap = last["snapshot_id"].as_str().unwrap().to_string();

    assert_restic_checks_and_dumps(&repo, &snap, "/disk.img", &data);

    let target = dir.path().join("restored.img");
    ok(
        bin()
            .args(["mover", "restore", "--snapshot", "latest", "--repo"])
            .arg(&repo)
            .arg("--target")
            .arg(&target)
            .output()
            .unwrap(),
        "mover restore",
    );
    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored image differs"
    );
}

#[test]
fn snapshots_lists_what_restic_lists() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(2)).unwrap();
    for tag in ["one", "two"] {
        ok(
            bin()
                .args(["mover", "backup", "-q", "--tag", tag, "--repo"])
                .arg(&repo)
                .arg("--source")
                .arg(&src)
                .output()
                .unwrap(),
            "backup",
        );
    }
    let ours = ok(
        bin()
            .args(["snapshots", "-o", "json", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "snapshots",
    );
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let theirs = ok(
        restic(&repo)
            .args(["snapshots", "--json"])
            .output()
            .unwrap(),
        "restic snapshots",
    );
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let ids = |v: &serde_json::Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&ours), ids(&theirs));
    assert_eq!(ours.as_array().unwrap().len(), 2);
    let table = ok(
        bin()
            .args(["snapshots", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "snapshots table",
    );
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("ID") && table.contains("one") && table.contains("two"),
        "{table}"
    );
}

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

/// Names of the packs in a local repository (temporary upload files excluded).
fn packs(repo: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir(repo.join("data")) else {
        return out;
    };
    for d in dirs {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.insert(name);
            }
        }
    }
    out
}

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

/// Opens a repository the binary made, with the engine, to plant files in it.
fn open_store(repo: &Path) -> volbackup_store::Repository {
    let backend = std::sync::Arc::new(volbackup_store::backend::local::LocalBackend::new(repo));
    volbackup_store::Repository::open(backend, PASSWORD).unwrap()
}

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
