//! `list`: VolumeBackups as a table, JSON or YAML, with `--repo` also the repository's
//! snapshots that no VolumeBackup here names.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;
use tabled::Tabled;
use volbackup_populator::api::{VolumeBackup, VolumeInfo};
use volbackup_store::backend::redact;
use volbackup_store::{Id, Snapshot};

use crate::cli::{ListArgs, ListFormat, OutputFormat, RepoOptions};
use crate::cluster;
use crate::repository;

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "NAMESPACE")]
    namespace: String,
    #[tabled(rename = "NAME")]
    name: String,
    #[tabled(rename = "PHASE")]
    phase: String,
    #[tabled(rename = "SOURCE")]
    source: String,
    #[tabled(rename = "SIZE")]
    size: String,
    #[tabled(rename = "SNAPSHOT")]
    snapshot: String,
    #[tabled(rename = "CREATED")]
    created: String,
}

#[derive(Tabled)]
struct WideRow {
    #[tabled(inline)]
    row: Row,
    #[tabled(rename = "MODE")]
    mode: String,
    #[tabled(rename = "CLASS")]
    class: String,
    #[tabled(rename = "NEW")]
    new: String,
    #[tabled(rename = "SECRET")]
    secret: String,
}

fn row(b: &VolumeBackup) -> Row {
    let st = b.status.clone().unwrap_or_default();
    let vol = st.volume.clone().unwrap_or_default();
    Row {
        namespace: b.namespace().unwrap_or_default(),
        name: b.name_any(),
        phase: st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        source: vol.pvc,
        size: vol.capacity,
        snapshot: match b.short_snapshot() {
            "" => "<none>".to_string(),
            id => id.to_string(),
        },
        created: b
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

/// A repository snapshot that no listed VolumeBackup names: a backup made in another cluster,
/// or one whose VolumeBackup was deleted (or one written by restic itself).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RepositoryOnly {
    /// The full snapshot id.
    snapshot: String,
    /// When the backup started (RFC 3339, UTC).
    time: String,
    /// Namespace and PVC, from the stored volume description, else from the tags.
    namespace: Option<String>,
    pvc: Option<String>,
    hostname: String,
    paths: Vec<String>,
    tags: Vec<String>,
    /// The volume description `create` stored with the snapshot.
    volume: Option<VolumeInfo>,
}

/// `list -o json|yaml` with `--repo`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListWithRepository<'a> {
    volume_backups: &'a [VolumeBackup],
    repository: String,
    repository_only: &'a [RepositoryOnly],
}

fn tag_value(tags: &[String], key: &str) -> Option<String> {
    tags.iter()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Describes one repository snapshot from its stored volume description and tags.
fn repository_only(id: &Id, snap: &Snapshot) -> RepositoryOnly {
    let volume: Option<VolumeInfo> = snap
        .volbackup
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    let namespace = volume
        .as_ref()
        .map(|v| v.namespace.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| tag_value(&snap.tags, "namespace"));
    let pvc = volume
        .as_ref()
        .map(|v| v.pvc.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| tag_value(&snap.tags, "pvc"));
    RepositoryOnly {
        snapshot: id.to_hex(),
        time: snap
            .time
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        namespace,
        pvc,
        hostname: snap.hostname.clone(),
        paths: snap.paths.clone(),
        tags: snap.tags.clone(),
        volume,
    }
}

/// The snapshots of the repository `--repo` names (password from the usual chain).
fn repository_snapshots(opts: &RepoOptions) -> Result<(String, Vec<(Id, Snapshot)>)> {
    let access = repository::Access::new(opts)?;
    let shown = redact(&access.location);
    let repo = repository::open(&access, repository::Purpose::List)
        .with_context(|| format!("cannot open the repository {shown}"))?;
    let snaps = repo
        .list_snapshots()
        .with_context(|| format!("cannot list the snapshots of {shown}"))?;
    Ok((repo.location(), snaps))
}

#[derive(Tabled)]
struct RepoRow {
    #[tabled(rename = "NAMESPACE")]
    namespace: String,
    #[tabled(rename = "PVC")]
    pvc: String,
    #[tabled(rename = "SNAPSHOT")]
    snapshot: String,
    #[tabled(rename = "MODE")]
    mode: String,
    #[tabled(rename = "SIZE")]
    size: String,
    #[tabled(rename = "TIME")]
    time: String,
}

#[derive(Tabled)]
struct WideRepoRow {
    #[tabled(inline)]
    row: RepoRow,
    #[tabled(rename = "HOST")]
    host: String,
    #[tabled(rename = "DRIVER")]
    driver: String,
    #[tabled(rename = "CLASS")]
    class: String,
    #[tabled(rename = "TAGS")]
    tags: String,
}

fn repo_row(r: &RepositoryOnly) -> RepoRow {
    let dash = |o: Option<String>| o.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into());
    RepoRow {
        namespace: dash(r.namespace.clone()),
        pvc: dash(r.pvc.clone()),
        snapshot: r.snapshot.chars().take(8).collect(),
        mode: dash(r.volume.as_ref().map(|v| v.volume_mode.clone())),
        size: dash(r.volume.as_ref().map(|v| v.capacity.clone())),
        time: r.time.clone(),
    }
}

/// `list`; with `--repo` on the command line, also the repository's snapshots that no listed
/// VolumeBackup names. In one namespace those are the snapshots of that namespace (by the
/// stored description or the `namespace=` tag) and the ones that name no namespace; with `-A`,
/// all of them.
pub fn list(args: &ListArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    // The repository is read first and outside the async runtime (its client is blocking).
    let repo = match &args.repo.repo {
        Some(_) => Some(repository_snapshots(&args.repo)?),
        None => None,
    };
    let (items, namespace) = rt.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let api: Api<VolumeBackup> = if args.all_namespaces {
            Api::all(kube.client.clone())
        } else {
            Api::namespaced(kube.client.clone(), &kube.namespace)
        };
        let ns = (!args.all_namespaces).then_some(kube.namespace.as_str());
        let mut items = api
            .list(&ListParams::default())
            .await
            .map_err(|e| cluster::explain_volumebackups(e, "list", ns))?
            .items;
        items.sort_by_key(|b| (b.namespace(), b.name_any()));
        anyhow::Ok((items, kube.namespace.clone()))
    })?;
    let repo_only: Option<(String, Vec<RepositoryOnly>)> = repo.map(|(location, snaps)| {
        let named: BTreeSet<&str> = items
            .iter()
            .filter_map(|b| b.spec.snapshot.as_deref())
            .collect();
        let rows = snaps
            .iter()
            .filter(|(id, _)| !named.contains(id.to_hex().as_str()))
            .map(|(id, s)| repository_only(id, s))
            .filter(|r| {
                args.all_namespaces || r.namespace.as_deref().is_none_or(|n| n == namespace)
            })
            .collect();
        (location, rows)
    });
    let structured = |format: OutputFormat| match &repo_only {
        None => crate::commands::print_structured(format, &items),
        Some((location, rows)) => crate::commands::print_structured(
            format,
            &ListWithRepository {
                volume_backups: &items,
                repository: location.clone(),
                repository_only: rows,
            },
        ),
    };
    let headers = !args.no_headers;
    // Under its own heading, only where headings are printed: without headers every line is
    // a row (of the VolumeBackups, then of the repository's snapshots).
    let repository_heading = |location: &str| {
        if headers {
            println!();
            println!("Repository only ({location}; no VolumeBackup here names these snapshots):");
        }
    };
    match args.output {
        ListFormat::Json | ListFormat::Yaml => {
            structured(crate::commands::structured(args.output).expect("a structured format"))?
        }
        ListFormat::Name => {
            for b in &items {
                println!("volumebackup.volbackup.io/{}", b.name_any());
            }
            // A repository snapshot's name is its id, the form `restore ID --repo` takes.
            for r in repo_only.iter().flat_map(|(_, rows)| rows) {
                println!("{}", r.snapshot);
            }
        }
        ListFormat::Table => {
            crate::commands::print_table(&crate::commands::table(items.iter().map(row), headers));
            if let Some((location, rows)) = &repo_only {
                repository_heading(location);
                crate::commands::print_table(&crate::commands::table(
                    rows.iter().map(repo_row),
                    headers,
                ));
            }
        }
        ListFormat::Wide => {
            let rows = items.iter().map(|b| {
                let st = b.status.clone().unwrap_or_default();
                let vol = st.volume.unwrap_or_default();
                WideRow {
                    row: row(b),
                    mode: vol.volume_mode,
                    class: vol.storage_class.unwrap_or_default(),
                    new: st
                        .bytes_new
                        .map(crate::commands::human_bytes)
                        .unwrap_or_default(),
                    secret: b.spec.repository.secret_ref.name.clone(),
                }
            });
            crate::commands::print_table(&crate::commands::table(rows, headers));
            if let Some((location, rows)) = &repo_only {
                let wide = rows.iter().map(|r| WideRepoRow {
                    row: repo_row(r),
                    host: r.hostname.clone(),
                    driver: r
                        .volume
                        .as_ref()
                        .and_then(|v| v.csi_driver.clone())
                        .unwrap_or_else(|| "-".into()),
                    class: r
                        .volume
                        .as_ref()
                        .and_then(|v| v.storage_class.clone())
                        .unwrap_or_else(|| "-".into()),
                    tags: r.tags.join(","),
                });
                repository_heading(location);
                crate::commands::print_table(&crate::commands::table(wide, headers));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_snapshot_is_described_from_its_volume_then_its_tags() {
        let mut snap = Snapshot::new(Id([1; 32]), vec!["/db.img".into()]);
        snap.tags = vec!["namespace=prod".into(), "pvc=db".into(), "nightly".into()];
        let r = repository_only(&Id([2; 32]), &snap);
        assert_eq!(r.namespace.as_deref(), Some("prod"));
        assert_eq!(r.pvc.as_deref(), Some("db"));
        assert!(r.volume.is_none());
        assert_eq!(repo_row(&r).mode, "-");

        snap.volbackup = Some(
            serde_json::json!({"namespace": "apps", "pvc": "data", "volumeMode": "Block", "capacity": "5Gi"}),
        );
        let r = repository_only(&Id([2; 32]), &snap);
        assert_eq!(r.namespace.as_deref(), Some("apps"));
        assert_eq!(r.pvc.as_deref(), Some("data"));
        let row = repo_row(&r);
        assert_eq!((row.mode.as_str(), row.size.as_str()), ("Block", "5Gi"));
        assert_eq!(row.snapshot, "02020202");
    }
}
