//! `cargo xtask`: build tasks (see the library's docs).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "volbackup's build tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack the release archives, SHA256SUMS and the krew manifest into a folder.
    Release(xtask::release::ReleaseArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Release(args) => xtask::release::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
