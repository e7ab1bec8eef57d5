//! What the administrator passes to `install`, checked before anything is written.

use anyhow::{Result, anyhow, bail};

use crate::cli::PopulatorSettings;

/// The Pod Security level `install` enforces on its namespace unless told otherwise: what the
/// populate pods meet (`volbackup_populator::mover`).
pub const DEFAULT_POD_SECURITY: &str = volbackup_populator::mover::MOVER_LEVEL;

/// A proxy for the populate pods: `http[s]://HOST[:PORT]`, without credentials (they would
/// stand in the Deployment's arguments for anyone who may read it).
pub fn check_proxy(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or(""));
    match host {
        Some(h) if h.contains('@') => bail!(
            "--proxy {}: credentials do not belong in it (they would be readable in the populator's Deployment): use a proxy that admits the populate pods without them",
            url.split_once("://")
                .map(|(s, r)| format!("{s}://***@{}", r.rsplit_once('@').map_or(r, |x| x.1)))
                .unwrap_or_default()
        ),
        Some(h) if !h.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Ok(())
        }
        _ => bail!("--proxy {url:?} is not a proxy URL: use http://HOST:PORT"),
    }
}

/// The populator's arguments for what the administrator chose (see [`PopulatorSettings`]);
/// checked, so that a bad value fails `install` and not the populator.
pub fn populator_args(s: &PopulatorSettings) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(p) = &s.proxy {
        check_proxy(p)?;
        out.extend(["--proxy".to_string(), p.clone()]);
    }
    if let Some(n) = &s.no_proxy {
        if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--no-proxy {n:?}: give host names separated by commas, without spaces");
        }
        out.extend(["--no-proxy".to_string(), n.clone()]);
    }
    for (flag, value) in [
        ("--stall-timeout", &s.stall_timeout),
        ("--restore-deadline", &s.restore_deadline),
    ] {
        if let Some(v) = value {
            out.extend([flag.to_string(), crate::flag_values::format_duration(*v)]);
        }
    }
    for dir in &s.allow_node_repository {
        volbackup_populator::mover::check_node_directory(dir).map_err(|why| {
            anyhow!("--allow-node-repository {why}: name the directory every node mounts the repositories from, like /srv/backups")
        })?;
        out.extend(["--allow-node-repository".to_string(), dir.clone()]);
    }
    Ok(out)
}

/// A namespace name must be a DNS-1123 label.
pub(super) fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if !ok {
        bail!(
            "namespace {ns:?} is not a valid name: use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
        );
    }
    Ok(())
}

pub(super) fn check_image(image: &str) -> Result<()> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "--image {image:?} is not an image reference: use a name like ghcr.io/volbackup/volbackup:0.1.0"
        );
    }
    Ok(())
}
