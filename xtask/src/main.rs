//! `cargo xtask`: build tasks (see the library's docs).
//!
//! - `cargo xtask image [--binary PATH] [--tag REF] [--base IMAGE] [--push]`: builds the
//!   container image from the `Containerfile` with buildah (and pushes it).
//! - `cargo xtask release --version V --out DIR [--target T]... [--binary T=PATH]...`: packs the
//!   release archives, `SHA256SUMS` and the krew manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use xtask::image;

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
    /// Build the container image with buildah (and push it).
    Image(ImageArgs),
    /// Pack the release archives, SHA256SUMS and the krew manifest into a folder.
    Release(xtask::release::ReleaseArgs),
}

#[derive(Args)]
struct ImageArgs {
    /// The linux binary to put in the image (default: a release build made now).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The image reference to tag (and push).
    #[arg(long, value_name = "REF", default_value_t = format!("ghcr.io/volbackup/volbackup:{}", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// The base image (default: one made from this machine's libraries and CA bundle).
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
    /// The image's architecture.
    #[arg(long, default_value = "amd64", value_name = "ARCH")]
    arch: String,
    /// Push the image to its registry after the build.
    #[arg(long)]
    push: bool,
}

fn image(args: ImageArgs) -> Result<()> {
    let binary = match args.binary {
        Some(b) => b,
        None => {
            let status =
                std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
                    .args(["build", "--release", "--locked", "-p", "kubectl-volbackup"])
                    .current_dir(image::workspace_root())
                    .status()
                    .context("cannot run cargo")?;
            if !status.success() {
                bail!("cargo build --release -p kubectl-volbackup failed");
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| image::workspace_root().join("target"));
            target.join("release/kubectl-volbackup")
        }
    };
    image::build(&image::Build {
        binary,
        reference: args.tag.clone(),
        base: args.base,
        arch: args.arch,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    println!("built {}", args.tag);
    if args.push {
        let digest = image::push(&args.tag)?;
        println!("pushed {}@{digest}", args.tag);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(a) => image(a),
        Command::Release(args) => xtask::release::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
