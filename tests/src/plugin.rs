//! The plugin under test: `kubectl-volbackup` as Cargo builds it from this workspace's sources,
//! once per process.
//!
//! Cargo sets `CARGO_BIN_EXE_<name>` only for the binaries of a test's own package, and the
//! plugin is a binary of package `kubectl-volbackup`. So the first caller runs `cargo build -p
//! kubectl-volbackup` with the `cargo` that runs the tests (`CARGO`), from the workspace root,
//! and takes the executable's path from Cargo's JSON messages. Cargo rebuilds the plugin when
//! any of its sources changed, so the binary under test is the current one, wherever the
//! target directory is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The plugin's package and binary name.
const PLUGIN: &str = "kubectl-volbackup";

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The path of the current `kubectl-volbackup` binary, built on the first call.
pub fn binary() -> Result<PathBuf> {
    BINARY
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(&cargo)
        .args(["build", "-p", PLUGIN, "--bin", PLUGIN])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(&root)
        .output()
        .with_context(|| format!("cannot run {} to build the plugin", cargo.display()))?;
    if !out.status.success() {
        bail!(
            "`cargo build -p {PLUGIN}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let executable = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == PLUGIN)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("`cargo build -p {PLUGIN}` named no executable"))?;
    if !executable.is_file() {
        bail!("cargo built {} but it is not there", executable.display());
    }
    Ok(executable)
}
