//! The binary as a user runs it: exit codes, one-line errors, JSON output, and restic reading
//! what it wrote. Uses the real `restic` 0.14 binary as the oracle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod damaged;
mod errors;
mod interrupted;
mod junk_files;
mod locks;
mod maintenance;
mod restic_reads;

const PASSWORD: &str = "cli-test-password";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-volbackup"));
    c.env_remove("VOLBACKUP_REPOSITORY")
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RUST_LOG")
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

/// Opens a repository the binary made, with the engine, to plant files in it.
fn open_store(repo: &Path) -> volbackup_store::Repository {
    let backend = std::sync::Arc::new(volbackup_store::backend::local::LocalBackend::new(repo));
    volbackup_store::Repository::open(backend, PASSWORD).unwrap()
}
