//! `kubesim --dir DIR [--nodes N] [--image NAME=BINARY]...`: starts a simulated cluster,
//! writes `DIR/kubeconfig`, prints its path and serves until SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kubesim::{Cluster, ClusterOptions};

/// A simulated Kubernetes cluster for end-to-end tests.
#[derive(Parser)]
#[command(name = "kubesim")]
struct Args {
    /// Directory for the kubeconfig, volumes and pod logs (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// An image whose containers run a host binary: NAME=BINARY (repeatable). Other images
    /// run their command from the host's PATH.
    #[arg(long = "image", value_name = "NAME=BINARY")]
    images: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut images = BTreeMap::new();
    for i in &args.images {
        let (name, bin) = i
            .split_once('=')
            .with_context(|| format!("--image {i}: expected NAME=BINARY"))?;
        let bin = std::fs::canonicalize(bin)
            .with_context(|| format!("--image {i}: binary {bin} not found"))?;
        images.insert(name.to_string(), bin);
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let mut opts = ClusterOptions::new(dir);
    opts.nodes = args.nodes;
    opts.images = images;
    let cluster = Cluster::start(opts).await?;
    println!("{}", cluster.kubeconfig_path().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cluster.stop();
    Ok(())
}
