//! `snapshots`

use anyhow::Result;
use serde::Serialize;
use tabled::Tabled;
use volbackup_store::format::Snapshot;
use volbackup_store::id::Id;

use crate::cli::{ListFormat, SnapshotsArgs};
use crate::repository;

/// A snapshot as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Full id.
    pub id: String,
    /// The snapshot itself, as stored.
    #[serde(flatten)]
    pub snapshot: Snapshot,
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "ID")]
    id: String,
    #[tabled(rename = "TIME")]
    time: String,
    #[tabled(rename = "HOST")]
    host: String,
    #[tabled(rename = "TAGS")]
    tags: String,
    #[tabled(rename = "PATHS")]
    paths: String,
}

#[derive(Tabled)]
struct WideRow {
    #[tabled(inline)]
    row: Row,
    #[tabled(rename = "TREE")]
    tree: String,
    #[tabled(rename = "PARENT")]
    parent: String,
    #[tabled(rename = "USER")]
    user: String,
}

/// Snapshots sorted oldest first, filtered by tags (all must match).
pub fn sorted(list: Vec<(Id, Snapshot)>, tags: &[String]) -> Vec<(Id, Snapshot)> {
    let mut list: Vec<_> = list
        .into_iter()
        .filter(|(_, s)| tags.iter().all(|t| s.tags.contains(t)))
        .collect();
    list.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    list
}

/// `snapshots`
pub fn run(args: &SnapshotsArgs) -> Result<()> {
    let repo = repository::open(
        &repository::Access::new(&args.repo)?,
        repository::Purpose::List,
    )?;
    let list = sorted(repo.list_snapshots()?, &args.tags);
    let headers = !args.no_headers;
    let row = |id: &Id, s: &Snapshot| Row {
        id: id.short(),
        time: s.time.format("%Y-%m-%d %H:%M:%S").to_string(),
        host: s.hostname.clone(),
        tags: s.tags.join(","),
        paths: s.paths.join(","),
    };
    match args.output {
        ListFormat::Table => {
            let rows = list.iter().map(|(id, s)| row(id, s));
            super::print_table(&super::table(rows, headers));
        }
        ListFormat::Wide => {
            let rows = list.iter().map(|(id, s)| WideRow {
                row: Row {
                    id: id.to_hex(),
                    ..row(id, s)
                },
                tree: s.tree.short(),
                parent: s
                    .parent
                    .as_ref()
                    .map(|p| p.short())
                    .unwrap_or_else(|| "-".into()),
                user: s.username.clone(),
            });
            super::print_table(&super::table(rows, headers));
        }
        ListFormat::Name => {
            for (id, _) in &list {
                println!("{}", id.to_hex());
            }
        }
        ListFormat::Json | ListFormat::Yaml => {
            let format = super::structured(args.output).expect("a structured format");
            let listed: Vec<Listed> = list
                .into_iter()
                .map(|(id, snapshot)| Listed {
                    id: id.to_string(),
                    snapshot,
                })
                .collect();
            super::print_structured(format, &listed)?;
        }
    }
    Ok(())
}
