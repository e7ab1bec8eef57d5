//! `install` and `uninstall`: the populator's manifests, embedded in the binary.

use anyhow::{Result, bail};

use crate::cli::{InstallArgs, UninstallArgs};

/// `install`
pub fn install(_args: &InstallArgs, _quiet: bool) -> Result<()> {
    bail!("install: not written yet")
}

/// `uninstall`
pub fn uninstall(_args: &UninstallArgs, _quiet: bool) -> Result<()> {
    bail!("uninstall: not written yet")
}
