//! What the binary prints, pinned by snapshot tests (`cmd/tests/snapshots/`): the help of every
//! command, `snapshots` in every output format, and the error lines of bad input. A change to
//! any of them shows as a diff in review; `cargo insta review` (or `INSTA_UPDATE=always`)
//! accepts an intended one.
//!
//! What differs between runs is redacted: snapshot ids, times, temporary paths, owners and
//! the version.

use std::path::Path;
use std::process::{Command, Stdio};

use clap::CommandFactory;

const PASSWORD: &str = "snapshot-test-password";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-volbackup"));
    for var in [
        "VOLBACKUP_REPOSITORY",
        "RESTIC_REPOSITORY",
        "RESTIC_PASSWORD",
        "RESTIC_PASSWORD_FILE",
        "VOLBACKUP_IMAGE",
        "KUBECONFIG",
        "AWS_ENDPOINT_URL",
        "NO_COLOR",
    ] {
        c.env_remove(var);
    }
    c.env("VOLBACKUP_PASSWORD", PASSWORD)
        // The user name snapshots record.
        .env("USER", "tester")
        // No kubeconfig anywhere: `version` must work without a cluster.
        .env("HOME", "/nonexistent-home")
        .stdin(Stdio::null());
    c
}

/// Exit code, stdout and stderr as one text, with what varies between runs redacted.
fn run(cmd: &mut Command, dir: Option<&Path>) -> String {
    let out = cmd.output().expect("the binary runs");
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    redact(&text, dir)
}

fn redact(text: &str, dir: Option<&Path>) -> String {
    let mut text = text.to_string();
    if let Some(dir) = dir {
        text = text.replace(&dir.display().to_string(), "[TMP]");
    }
    text = text.replace(env!("CARGO_PKG_VERSION"), "[VERSION]");
    let rules = [
        (r"\b[0-9a-f]{64}\b", "[ID]"),
        (r"\b[0-9a-f]{8}\b", "[SHORT-ID]"),
        (
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)?",
            "[TIME]",
        ),
        (r#""(uid|gid)": \d+"#, r#""$1": [N]"#),
        (r"\b(uid|gid): \d+", "$1: [N]"),
    ];
    for (pattern, with) in rules {
        text = regex_lite(pattern).replace_all(&text, with).into_owned();
    }
    // Table cells are padded to the widest value; trailing blanks depend on redacted values.
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn regex_lite(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).expect("a valid pattern")
}

/// Every command path: `[]`, `["repo"]`, `["repo", "init"]`, ...
fn command_paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.clone();
        path.push(sub.get_name().to_string());
        command_paths(sub, path, out);
    }
}

#[test]
fn the_help_of_every_command_is_pinned() {
    let mut paths = Vec::new();
    command_paths(
        &kubectl_volbackup::cli::Cli::command(),
        Vec::new(),
        &mut paths,
    );
    assert!(paths.len() > 20, "only {} commands found", paths.len());
    for path in paths {
        let name = if path.is_empty() {
            "help".to_string()
        } else {
            format!("help-{}", path.join("-"))
        };
        let text = run(bin().args(&path).arg("--help"), None);
        assert!(text.starts_with("exit: 0\n"), "{name}: {text}");
        insta::assert_snapshot!(name, text);
    }
}

/// A repository with two snapshots of fixed hosts, tags and paths.
fn repository(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    let out = bin()
        .args(["repo", "init", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(dir.join("disk.img"), vec![7u8; 100_000]).unwrap();
    for (host, tag) in [("node-a", "nightly"), ("node-b", "weekly")] {
        let out = bin()
            .args(["mover", "backup", "--repo"])
            .arg(&repo)
            .arg("--source")
            .arg(dir.join("disk.img"))
            .args(["--host", host, "--tag", tag, "--tag", "pvc=data"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Distinct times, so the order is fixed.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    repo
}

#[test]
fn snapshots_is_pinned_in_every_output_format() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    for (name, extra) in [
        ("snapshots-table", &["-o", "table"][..]),
        ("snapshots-table-no-headers", &["--no-headers"][..]),
        ("snapshots-wide", &["-o", "wide"][..]),
        ("snapshots-name", &["-o", "name"][..]),
        ("snapshots-json", &["-o", "json"][..]),
        ("snapshots-yaml", &["-o", "yaml"][..]),
        ("snapshots-tag-filter", &["--tag", "weekly"][..]),
    ] {
        let text = run(
            bin().args(["snapshots", "--repo"]).arg(&repo).args(extra),
            Some(dir.path()),
        );
        assert!(text.starts_with("exit: 0\n"), "{name}: {text}");
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn bad_input_gives_one_pinned_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repository(dir.path());
    let missing = dir.path().join("no-such-repo");
    let cases: Vec<(&str, Command)> = vec![
        ("error-bad-scheme", {
            let mut c = bin();
            c.args([
                "repo",
                "init",
                "--repo",
                "rest:https://alice:hunter2@example.com/",
            ]);
            c
        }),
        ("error-no-repository", {
            let mut c = bin();
            c.arg("snapshots");
            c
        }),
        ("error-no-password", {
            let mut c = bin();
            c.args(["snapshots", "--repo"])
                .arg(&repo)
                .env_remove("VOLBACKUP_PASSWORD");
            c
        }),
        ("error-wrong-password", {
            let mut c = bin();
            c.args(["snapshots", "--repo"])
                .arg(&repo)
                .env("VOLBACKUP_PASSWORD", "wrong");
            c
        }),
        ("error-missing-repository", {
            let mut c = bin();
            c.args(["snapshots", "--repo"]).arg(&missing);
            c
        }),
        ("error-unknown-snapshot", {
            let mut c = bin();
            c.args(["mover", "restore", "--repo"])
                .arg(&repo)
                .args(["--snapshot", "deadbeef", "--target"])
                .arg(dir.path().join("out.img"));
            c
        }),
        ("error-empty-password-file", {
            std::fs::write(dir.path().join("empty"), "").unwrap();
            let mut c = bin();
            c.args(["snapshots", "--repo"])
                .arg(&repo)
                .arg("--password-file")
                .arg(dir.path().join("empty"));
            c
        }),
        ("error-no-kubeconfig", {
            let mut c = bin();
            c.args(["list", "-n", "apps"]);
            c
        }),
        ("error-unknown-output-format", {
            let mut c = bin();
            c.args(["snapshots", "-o", "csv"]);
            c
        }),
        ("error-unknown-shell", {
            let mut c = bin();
            c.args(["completion", "tcsh"]);
            c
        }),
    ];
    for (name, mut cmd) in cases {
        let text = run(&mut cmd, Some(dir.path()));
        assert!(!text.starts_with("exit: 0\n"), "{name} succeeded: {text}");
        assert!(!text.contains("hunter2"), "{name}: a password was printed");
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn version_works_without_a_cluster() {
    let text = run(bin().arg("version"), None);
    insta::assert_snapshot!("version-without-cluster", text);
    let json = run(bin().args(["version", "-o", "json"]), None);
    insta::assert_snapshot!("version-without-cluster-json", json);
}

#[test]
fn completion_scripts_name_the_commands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kubectl-volbackup"),
        ("fish", "complete -c kubectl-volbackup"),
    ] {
        let out = bin().args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in ["create", "restore", "doctor", "snapshots"] {
            assert!(script.contains(sub), "{shell}: {sub} is not completed");
        }
    }
}
