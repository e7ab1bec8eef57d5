//! `completion`: shell completion scripts, generated from the clap command line.
//!
//! The scripts complete `kubectl-volbackup` (the name krew puts on PATH) typed directly;
//! kubectl's own completion does not pass `kubectl volbackup ...` on to them.

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell as Target;

use crate::cli::{Cli, CompletionArgs, Shell};

/// `completion`
pub fn run(args: &CompletionArgs) -> Result<()> {
    let target = match args.shell {
        Shell::Bash => Target::Bash,
        Shell::Zsh => Target::Zsh,
        Shell::Fish => Target::Fish,
    };
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a failed write, and a closed pipe
    // (`... | head`) is no failure.
    let mut script = Vec::new();
    clap_complete::generate(target, &mut command, "kubectl-volbackup", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}
