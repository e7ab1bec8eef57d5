//! `populator`: the populator controller.

use anyhow::{Result, bail};

use crate::cli::PopulatorArgs;

/// `populator`
pub fn run(_args: &PopulatorArgs) -> Result<()> {
    bail!("populator: not written yet")
}
