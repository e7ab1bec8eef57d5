//! `restore`: a new PVC whose dataSourceRef names a VolumeBackup.

use anyhow::{Result, bail};

use crate::cli::RestoreArgs;

/// `restore`
pub fn run(_args: &RestoreArgs, _quiet: bool) -> Result<()> {
    bail!("restore: not written yet")
}
