//! `cargo xtask release` run as a program, on the real plugin binary and the real krew template.
//!
//! The plugin is `target/debug/kubectl-volbackup` (`cargo test --workspace` builds it first), a
//! glibc debug build passed as `--binary x86_64-unknown-linux-musl=...`: no musl target can be
//! installed on these machines, and the task only checks that the binary is an x86_64 ELF file,
//! which it is. The release workflow hands in the real static musl builds. The archive is read
//! back with GNU tar and the sums recomputed here, not with the task's own code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The plugin binary cargo built for this workspace.
fn plugin_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug/kubectl-volbackup");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p kubectl-volbackup` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("xtask runs")
}

/// The release target of this machine's CPU (for its Linux plugin binary) and its krew `arch`.
fn host_target() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("x86_64-unknown-linux-musl", "amd64"),
        "aarch64" => ("aarch64-unknown-linux-musl", "arm64"),
        arch => panic!("no release target runs on {arch}"),
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn the_linux_amd64_archive_and_its_manifest_entry_agree() {
    let plugin = plugin_binary();
    // linux/amd64 on the x86_64 machines the tests run on.
    let (triple, arch) = host_target();
    let out = tempfile::tempdir().unwrap();
    let binary = format!("{triple}={}", plugin.display());
    let run = xtask(&[
        "release",
        "--version",
        VERSION,
        "--out",
        out.path().to_str().unwrap(),
        "--binary",
        &binary,
        "--partial",
    ]);
    assert!(
        run.status.success(),
        "xtask release failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let name = format!("kubectl-volbackup-v{VERSION}-{triple}.tar.gz");
    let archive = out.path().join(&name);

    // Exactly the plugin (executable) and the licence, at the top of the archive.
    let listing = Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--gzip", "--file"])
        .arg(&archive)
        .output()
        .expect("GNU tar runs");
    assert!(listing.status.success(), "tar cannot read {name}");
    let entries: Vec<(String, String)> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[0].to_string(), fields[fields.len() - 1].to_string())
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("-rwxr-xr-x".to_string(), "kubectl-volbackup".to_string()),
            ("-rw-r--r--".to_string(), "LICENSE".to_string()),
        ]
    );
    let unpacked = tempfile::tempdir().unwrap();
    let extract = Command::new("tar")
        .args(["--extract", "--gzip", "--file"])
        .arg(&archive)
        .arg("--directory")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(extract.success());
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert!(
        read(&unpacked.path().join("kubectl-volbackup")) == read(&plugin),
        "the archive's kubectl-volbackup is not the plugin binary given"
    );
    assert_eq!(
        read(&unpacked.path().join("LICENSE")),
        read(&workspace_root().join("LICENSE"))
    );

    // The sum of the archive's bytes, in SHA256SUMS and in the manifest.
    let sum = sha256(&read(&archive));
    assert_eq!(
        std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap(),
        format!("{sum}  {name}\n")
    );
    let manifest = std::fs::read_to_string(out.path().join("volbackup.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&manifest).expect("the manifest is YAML");
    assert_eq!(doc["kind"].as_str(), Some("Plugin"));
    assert_eq!(
        doc["spec"]["version"].as_str(),
        Some(format!("v{VERSION}").as_str())
    );
    let platforms = doc["spec"]["platforms"].as_sequence().unwrap();
    assert_eq!(platforms.len(), 1, "only the platform built: {manifest}");
    let platform = &platforms[0];
    assert_eq!(
        platform["selector"]["matchLabels"]["os"].as_str(),
        Some("linux")
    );
    assert_eq!(
        platform["selector"]["matchLabels"]["arch"].as_str(),
        Some(arch)
    );
    assert_eq!(
        platform["uri"].as_str(),
        Some(
            format!("https://github.com/volbackup/volbackup/releases/download/v{VERSION}/{name}")
                .as_str()
        )
    );
    assert_eq!(platform["sha256"].as_str(), Some(sum.as_str()));
    assert_eq!(platform["bin"].as_str(), Some("kubectl-volbackup"));
}

#[test]
fn an_unfilled_placeholder_without_partial_fails_naming_it_and_writes_nothing() {
    let plugin = plugin_binary();
    let out = tempfile::tempdir().unwrap();
    let binary = format!("x86_64-unknown-linux-musl={}", plugin.display());
    // No --partial: the three other platforms of the template have no archive.
    let run = xtask(&[
        "release",
        "--version",
        VERSION,
        "--out",
        out.path().to_str().unwrap(),
        "--binary",
        &binary,
    ]);
    assert!(!run.status.success());
    assert_eq!(
        String::from_utf8(run.stderr).unwrap(),
        "error: krew/volbackup.yaml: {{SHA256_LINUX_ARM64}}, {{SHA256_DARWIN_AMD64}}, \
         {{SHA256_DARWIN_ARM64}} left unfilled: no archive was packed for \
         aarch64-unknown-linux-musl, x86_64-apple-darwin, aarch64-apple-darwin (build it, or \
         pass --partial to leave such platforms out)\n"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_binary_for_another_cpu_is_refused_before_it_is_packed() {
    let plugin = plugin_binary();
    let out = tempfile::tempdir().unwrap();
    let (other, found, needed) = match host_target().0 {
        "x86_64-unknown-linux-musl" => ("aarch64-unknown-linux-musl", "x86_64", "aarch64"),
        _ => ("x86_64-unknown-linux-musl", "aarch64", "x86_64"),
    };
    let binary = format!("{other}={}", plugin.display());
    let run = xtask(&[
        "release",
        "--version",
        VERSION,
        "--out",
        out.path().to_str().unwrap(),
        "--binary",
        &binary,
        "--partial",
    ]);
    assert!(!run.status.success());
    assert_eq!(
        String::from_utf8(run.stderr).unwrap(),
        format!(
            "error: {binary}: is an ELF {found} executable, but the target needs an ELF {needed} \
             executable\n"
        )
    );
    assert!(!out.path().join("volbackup.yaml").exists());
}
