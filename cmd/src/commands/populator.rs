//! `populator`: the populator controller, as the Deployment runs it. It serves metrics at once,
//! waits to lead (a Lease in its namespace), runs the controller, and on SIGTERM finishes the
//! steps under way, gives the lease up and exits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result};
use volbackup_populator::controller::{self, Config};
use volbackup_populator::leader::Elector;
use volbackup_populator::metrics::{self, Metrics};

use crate::cli::{POPULATOR_NAMESPACE, PopulatorArgs, PopulatorSettings};

/// How long a populate pod may make no progress without --stall-timeout (its help says so).
const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// A populate pod's activeDeadlineSeconds without --restore-deadline (its help says so).
const DEFAULT_RESTORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The namespace: the flag, then POD_NAMESPACE, then the service account's, then the default.
fn namespace(args: &PopulatorArgs) -> String {
    if let Some(ns) = &args.namespace {
        return ns.clone();
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| POPULATOR_NAMESPACE.to_string())
}

/// This replica's name: POD_NAME, else the host name with a random suffix.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}-{:06x}",
                volbackup_store::format::hostname(),
                rand::random::<u32>() & 0xff_ffff
            )
        })
}

async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The environment every populate pod gets from the administrator's settings (`install
/// --proxy`, `--no-proxy`), in the names the S3 client reads.
fn pod_env(settings: &PopulatorSettings) -> Result<Vec<(String, String)>> {
    super::install::populator_args(settings)?;
    let mut env = Vec::new();
    if let Some(p) = &settings.proxy {
        env.push(("HTTPS_PROXY".to_string(), p.clone()));
        env.push(("HTTP_PROXY".to_string(), p.clone()));
    }
    if let Some(n) = &settings.no_proxy {
        env.push(("NO_PROXY".to_string(), n.clone()));
    }
    Ok(env)
}

/// `populator`
pub fn run(args: &PopulatorArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = Config {
        namespace: namespace(args),
        image: args
            .image
            .clone()
            .unwrap_or_else(volbackup_populator::mover::default_image),
        max_attempts: args.max_attempts.max(1),
        retry_backoff: args.retry_backoff,
        pod_env: pod_env(&args.settings)?,
        node_repositories: args.settings.allow_node_repository.clone(),
        stall_timeout: args.settings.stall_timeout.unwrap_or(DEFAULT_STALL_TIMEOUT),
        pod_deadline: args
            .settings
            .restore_deadline
            .unwrap_or(DEFAULT_RESTORE_DEADLINE),
        identity: identity(),
        // Fault injection for the end-to-end tests (a crash after each step).
        crash_after_steps: std::env::var("VOLBACKUP_POPULATOR_CRASH_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.context(
            "cannot reach the Kubernetes API (no in-cluster configuration and no kubeconfig)",
        )?;
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind(&args.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--metrics-addr)", args.metrics_addr))?;
        tokio::spawn(metrics::serve(listener, metrics.clone()));

        let elector = Arc::new(Elector::new(
            client.clone(),
            &config.namespace,
            &args.lease,
            &config.identity,
        ));
        tracing::info!(
            namespace = %config.namespace,
            identity = %config.identity,
            image = %config.image,
            "volbackup populator {} starting",
            env!("CARGO_PKG_VERSION")
        );
        tokio::select! {
            _ = elector.acquire() => {}
            _ = terminated() => return Ok(()),
        }
        metrics.leader.store(true, Ordering::Relaxed);
        tracing::info!("leading: lease {}/{}", config.namespace, args.lease);

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<&'static str>();
        let keeper = elector.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = keeper.keep() => { let _ = stop_tx.send("lost the lease"); }
                _ = terminated() => { let _ = stop_tx.send("terminated"); }
            }
        });
        let (why_tx, why_rx) = tokio::sync::oneshot::channel::<&'static str>();
        let shutdown = async move {
            let why = stop_rx.await.unwrap_or("terminated");
            let _ = why_tx.send(why);
        };
        controller::run(client, config, metrics.clone(), shutdown).await;
        metrics.leader.store(false, Ordering::Relaxed);
        let why = why_rx.await.unwrap_or("terminated");
        if why == "lost the lease" {
            anyhow::bail!("stopped: this replica lost the lease (another one leads now)");
        }
        elector.release().await;
        tracing::info!("stopped");
        Ok(())
    })
}
