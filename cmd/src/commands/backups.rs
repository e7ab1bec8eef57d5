//! `list`, `describe`, `delete` (VolumeBackups) and `cleanup` (what an interrupted `create`
//! left).

use std::collections::BTreeSet;
use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde::Serialize;
use tabled::Tabled;
use volbackup_populator::api::{HEARTBEAT_STALE, Phase, VolumeBackup, VolumeInfo};
use volbackup_store::backend::redact;
use volbackup_store::forget::{ForgetGroup, ForgetPlan, GroupKey, Removed};
use volbackup_store::{Id, Repository, Snapshot};

use super::record::Finished;

use crate::cli::{
    CleanupArgs, DeleteArgs, DescribeArgs, ListArgs, ListFormat, OutputFormat, RepoOptions,
};
use crate::cluster::{self, BACKUP_LABEL, PVC_LABEL, explain};
use crate::progress::{Mode, Reporter};
use crate::repository;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn missing_crd(e: kube::Error, verb: &str, ns: Option<&str>) -> anyhow::Error {
    if cluster::is_status(&e, 404) {
        anyhow::anyhow!(
            "the VolumeBackup CRD (volbackup.io/v1alpha1) is not installed: run `kubectl volbackup install`"
        )
    } else {
        explain(e, verb, "volumebackups.volbackup.io", ns)
    }
}

/// `cleanup`: removes what runs of `create` left and marks their unfinished VolumeBackups
/// Failed (Completed, when the snapshot was recorded before the `create` stopped). A backup
/// still being taken (its `create` heard from within the last minute) is left alone unless
/// named with `--backup`.
pub fn cleanup(args: &CleanupArgs, quiet: bool) -> Result<()> {
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let namespaces = if args.all_namespaces {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.client.clone());
            api.list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "list", "namespaces", None))?
                .items
                .iter()
                .map(|n| n.name_any())
                .collect()
        } else {
            vec![kube.namespace.clone()]
        };
        let (mut removed, mut failed, mut completed, mut running) =
            (0, Vec::new(), Vec::new(), Vec::new());
        for ns in &namespaces {
            let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), ns);
            // Records of runs; without the CRD there are none (an older install's leftovers
            // are still removed).
            let records = match api.list(&ListParams::default().labels(BACKUP_LABEL)).await {
                Ok(l) => l.items,
                Err(e) if cluster::is_status(&e, 404) => Vec::new(),
                Err(e) => return Err(missing_crd(e, "list", Some(ns))),
            };
            // `--backup` takes a run id or the name of a VolumeBackup of that run.
            let run = args.backup.as_ref().map(|given| {
                records
                    .iter()
                    .find(|b| &b.name_any() == given)
                    .and_then(|b| b.labels().get(BACKUP_LABEL).cloned())
                    .unwrap_or_else(|| given.clone())
            });
            let unfinished = records.iter().filter(|b| {
                !matches!(b.phase(), Some(Phase::Completed | Phase::Failed))
                    && run
                        .as_ref()
                        .is_none_or(|r| b.labels().get(BACKUP_LABEL) == Some(r))
            });
            let mut live = BTreeSet::new();
            for b in unfinished {
                let id = b.labels().get(BACKUP_LABEL).cloned().unwrap_or_default();
                let label = format!("{ns}/{}", b.name_any());
                // Decided again from the record as it is when written (see finish_unfinished):
                // a backup completing meanwhile stays Completed.
                let finished = super::record::finish_unfinished(
                    &api,
                    b,
                    "Abandoned",
                    &|b| {
                        format!(
                            "the create taking this backup stopped while {} and was not heard from again; cleanup removed what it left",
                            super::record::last_step(b)
                        )
                    },
                    run.is_none(),
                )
                .await?;
                match finished {
                    Finished::Failed => failed.push(label),
                    Finished::Completed => completed.push(label),
                    Finished::BeingTaken => {
                        running.push(label);
                        live.insert(id);
                    }
                    Finished::AlreadyFinished | Finished::Gone => {}
                }
            }
            let selector = match (&run, live.is_empty()) {
                (Some(id), _) => format!("{BACKUP_LABEL}={id}"),
                (None, true) => BACKUP_LABEL.to_string(),
                (None, false) => format!(
                    "{BACKUP_LABEL},{BACKUP_LABEL} notin ({})",
                    live.into_iter().collect::<Vec<_>>().join(",")
                ),
            };
            removed += super::create::cleanup_selector(&kube.client, ns, &selector, false).await?;
        }
        if !quiet {
            eprintln!("removed {removed} temporary object(s)");
            if !failed.is_empty() {
                eprintln!(
                    "marked {} unfinished VolumeBackup(s) Failed: {}",
                    failed.len(),
                    failed.join(", ")
                );
            }
            if !completed.is_empty() {
                eprintln!(
                    "marked {} VolumeBackup(s) Completed whose create stopped after recording the snapshot: {}",
                    completed.len(),
                    completed.join(", ")
                );
            }
            if !running.is_empty() {
                eprintln!(
                    "left alone {} backup(s) still being taken (their create was heard from in the last {}s): {}; name one with --backup NAME to clean it up anyway",
                    running.len(),
                    HEARTBEAT_STALE.as_secs(),
                    running.join(", ")
                );
            }
        }
        Ok(())
    })
}

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
pub fn list(args: &ListArgs) -> Result<()> {
    // The repository is read first and outside the async runtime (its client is blocking).
    let repo = match &args.repo.repo {
        Some(_) => Some(repository_snapshots(&args.repo)?),
        None => None,
    };
    let (items, namespace) = runtime()?.block_on(async {
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
            .map_err(|e| missing_crd(e, "list", ns))?
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
        None => super::print_structured(format, &items),
        Some((location, rows)) => super::print_structured(
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
            structured(super::structured(args.output).expect("a structured format"))?
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
            super::print_table(&super::table(items.iter().map(row), headers));
            if let Some((location, rows)) = &repo_only {
                repository_heading(location);
                super::print_table(&super::table(rows.iter().map(repo_row), headers));
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
                    new: st.bytes_new.map(super::human_bytes).unwrap_or_default(),
                    secret: b.spec.repository.secret_ref.name.clone(),
                }
            });
            super::print_table(&super::table(rows, headers));
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
                super::print_table(&super::table(wide, headers));
            }
        }
    }
    Ok(())
}

/// `describe`
pub fn describe(args: &DescribeArgs) -> Result<()> {
    runtime()?.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        let Some(b) = api.get_opt(&args.backup).await.map_err(|e| missing_crd(e, "get", Some(&ns)))? else {
            bail!("VolumeBackup {:?} not found in namespace {ns:?}: list them with kubectl volbackup list -n {ns}", args.backup);
        };
        let st = b.status.clone().unwrap_or_default();
        let vol = st.volume.clone().unwrap_or_default();
        let opt = |o: Option<String>| o.unwrap_or_else(|| "<none>".into());
        let bytes = |o: Option<u64>| o.map(super::human_bytes).unwrap_or_else(|| "<none>".into());
        println!("Name:         {}", b.name_any());
        println!("Namespace:    {ns}");
        println!("Phase:        {}", st.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "<none>".into()));
        match &b.spec.repository.location {
            Some(l) => println!(
                "Repository:   {} (Secret {})",
                redact(l),
                b.spec.repository.secret_ref.name
            ),
            None => println!("Repository:   Secret {}", b.spec.repository.secret_ref.name),
        }
        println!("Snapshot:     {}", b.spec.snapshot.as_deref().unwrap_or("<none>"));
        if let Some(p) = &b.spec.path {
            println!("Path:         {p}");
        }
        println!("Started:      {}", opt(st.start_time.clone()));
        println!("Completed:    {}", opt(st.completion_time.clone()));
        println!("Bytes:        {} read, {} new, {} stored", bytes(st.bytes_total), bytes(st.bytes_new), bytes(st.bytes_stored));
        println!("Volume:");
        println!("  PVC:            {}/{}", vol.namespace, vol.pvc);
        println!("  PV:             {}", opt(vol.pv));
        println!("  Storage class:  {}", opt(vol.storage_class));
        println!("  CSI driver:     {}", opt(vol.csi_driver));
        println!("  Volume mode:    {}", vol.volume_mode);
        println!("  Access modes:   {}", vol.access_modes.join(", "));
        println!("  Capacity:       {}", vol.capacity);
        println!("  Snapshot handle: {}", opt(vol.snapshot_handle));
        if !st.conditions.is_empty() {
            println!("Conditions:");
            for c in &st.conditions {
                println!("  {} {} {}: {}", c.type_, c.status, c.reason, c.message);
            }
        }
        Ok(())
    })
}

/// A repository location in a comparable form: a local path made absolute, no trailing `/`.
fn normalized_location(location: &str) -> String {
    let mut loc = location.trim().to_string();
    if !loc.contains(':')
        && let Ok(abs) = std::path::absolute(&loc)
    {
        loc = abs.to_string_lossy().into_owned();
    }
    loc.trim_end_matches('/').to_string()
}

/// The repository location a Secret names (`VOLBACKUP_REPOSITORY`, else `RESTIC_REPOSITORY`).
fn secret_location(secret: &Secret) -> Option<String> {
    for key in ["VOLBACKUP_REPOSITORY", "RESTIC_REPOSITORY"] {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(String::from_utf8_lossy(&v.0).into_owned());
        }
        if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.clone());
        }
    }
    None
}

/// What `delete --prune` removes from the repository, checked before anything is removed.
struct RepositoryRemoval {
    repo: Repository,
    /// For messages: passwords in it are redacted.
    location: String,
    forget: Vec<Removed>,
}

/// Opens the local repository and checks that it holds every backup's snapshot.
fn plan_repository_removal(
    opts: &RepoOptions,
    ns: &str,
    backups: &[(VolumeBackup, Option<String>)],
) -> Result<RepositoryRemoval> {
    let location = repository::location(opts)?;
    let local = normalized_location(&location);
    // Messages and the plan show the location without any password in it.
    let shown = redact(&location);
    for (b, secret_repo) in backups {
        if let Some(theirs) = secret_repo
            && normalized_location(theirs) != local
        {
            bail!(
                "VolumeBackup {ns}/{} was written to the repository its Secret {} names, not to {shown}: pass that repository with --repo (or delete without --prune to remove only the record)",
                b.name_any(),
                b.spec.repository.secret_ref.name
            );
        }
    }
    let repo = repository::open(&repository::Access::new(opts)?, repository::Purpose::Remove)
        .with_context(|| format!("cannot open the repository {shown}"))?;
    let snapshots = repo
        .list_snapshots()
        .with_context(|| format!("cannot list the snapshots of {shown}"))?;
    let mut forget = Vec::new();
    let mut seen = BTreeSet::new();
    // A backup that never completed has no snapshot: nothing of it to forget (the prune
    // removes whatever data its run uploaded).
    for (b, _) in backups.iter().filter(|(b, _)| b.spec.snapshot.is_some()) {
        let Some((id, snap)) = snapshots
            .iter()
            .find(|(id, _)| b.spec.snapshot.as_deref() == Some(id.to_hex().as_str()))
        else {
            bail!(
                "the snapshot {} of VolumeBackup {ns}/{} is not in the repository {shown}: pass the repository it was written to with --repo (or delete without --prune to remove only the record)",
                b.short_snapshot(),
                b.name_any()
            );
        };
        if seen.insert(*id) {
            forget.push(Removed {
                id: *id,
                time: snap.time,
            });
        }
    }
    Ok(RepositoryRemoval {
        repo,
        location: shown,
        forget,
    })
}

/// `delete --prune` forgets snapshots: refused while a VolumeBackup not being deleted, in any
/// namespace, names one of them (a cross-namespace restore copies the record with the same
/// snapshot), since the prune would take that backup's data too.
async fn refuse_shared_snapshots(
    client: &kube::Client,
    ns: &str,
    backups: &[(VolumeBackup, Option<String>)],
) -> Result<()> {
    let snapshots: BTreeSet<&str> = backups
        .iter()
        .filter_map(|(b, _)| b.spec.snapshot.as_deref())
        .collect();
    let deleting: BTreeSet<String> = backups.iter().map(|(b, _)| b.name_any()).collect();
    let all: Api<VolumeBackup> = Api::all(client.clone());
    let others = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 403 => bail!(
            "refusing to prune: cannot check whether VolumeBackups in other namespaces name these snapshots ({}): run delete --prune with the right to list volumebackups in all namespaces, or delete without --prune",
            e.message
        ),
        Err(e) => return Err(missing_crd(e, "list", None)),
    };
    for o in &others {
        let theirs = o.namespace().unwrap_or_default();
        if theirs == ns && deleting.contains(&o.name_any()) {
            continue;
        }
        if o.spec
            .snapshot
            .as_deref()
            .is_some_and(|id| snapshots.contains(id))
        {
            bail!(
                "refusing to prune: the snapshot {} is also the backup of VolumeBackup {theirs}/{} (a copy a cross-namespace restore made?): delete that one in the same way first, or delete without --prune to remove only the record",
                o.short_snapshot(),
                o.name_any()
            );
        }
    }
    Ok(())
}

/// Forgets the snapshots and prunes what only they used.
fn forget_and_prune(plan: &RepositoryRemoval, names: &str, quiet: bool) -> Result<()> {
    let forget = ForgetPlan {
        groups: vec![ForgetGroup {
            key: GroupKey::default(),
            keep: Vec::new(),
            remove: plan.forget.clone(),
        }],
    };
    let location = &plan.location;
    let removed = volbackup_store::forget::apply(&plan.repo, &forget).with_context(|| {
        format!("cannot forget the snapshots in {location}; nothing was deleted")
    })?;
    let pruned = (|| -> Result<volbackup_store::prune::PruneStats> {
        let prune = volbackup_store::prune::plan_prune(
            &plan.repo,
            &volbackup_store::prune::PruneOptions::default(),
        )?;
        let reporter = Reporter::start(Mode::choose(false, quiet), "prune");
        let stats = volbackup_store::prune::execute(&plan.repo, &prune, reporter.progress());
        reporter.finish();
        Ok(stats?)
    })();
    let stats = pruned.with_context(|| {
        format!(
            "forgot {removed} snapshot(s) in {location}, but the prune failed, so their data is still stored and the VolumeBackups {names} were kept: run `kubectl-volbackup prune --repo {location}`, then `kubectl volbackup delete {names} --yes`"
        )
    })?;
    if !quiet {
        eprintln!(
            "forgot {removed} snapshot(s) in {location}; prune removed {} packs ({}) and wrote {} ({})",
            stats.packs_deleted,
            super::human_bytes(stats.bytes_deleted),
            stats.packs_written,
            super::human_bytes(stats.bytes_written)
        );
    }
    Ok(())
}

/// `delete`: every named VolumeBackup must exist before anything is removed. With `--prune`,
/// their snapshots must be in the local repository (`--repo` or the environment, as for
/// `forget`), which must be the one their Secret names when that is readable; the snapshots are
/// forgotten and the repository pruned before the objects go, and a failed prune keeps them.
pub fn delete(args: &DeleteArgs, quiet: bool) -> Result<()> {
    let terminal = std::io::stdin().is_terminal();
    if !args.yes && !terminal {
        if args.prune {
            bail!(
                "refusing to delete VolumeBackups and their repository data without confirmation: pass --yes"
            );
        }
        bail!("refusing to delete without confirmation: pass --yes");
    }
    let rt = runtime()?;
    let (kube, backups) = rt.block_on(async {
        let kube = cluster::connect(&args.kube).await?;
        let ns = kube.namespace.clone();
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), &ns);
        let mut backups = Vec::new();
        for name in &args.backups {
            let Some(b) = api
                .get_opt(name)
                .await
                .map_err(|e| missing_crd(e, "get", Some(&ns)))?
            else {
                bail!(
                    "VolumeBackup {name:?} not found in namespace {ns:?} (nothing was deleted): list them with kubectl volbackup list -n {ns}"
                );
            };
            if b.is_being_taken(chrono::Utc::now()) {
                bail!(
                    "VolumeBackup {ns}/{name} is still being taken (its create was heard from in the last {}s, while {}; nothing was deleted): wait for it, or stop that create; to remove it anyway run kubectl volbackup cleanup --backup {name} -n {ns}",
                    HEARTBEAT_STALE.as_secs(),
                    super::record::last_step(&b)
                );
            }
            // Where the Secret says the backup went, when this user may read it.
            let theirs = if args.prune {
                match secrets.get_opt(&b.spec.repository.secret_ref.name).await {
                    Ok(Some(s)) => secret_location(&s),
                    _ => None,
                }
            } else {
                None
            };
            backups.push((b, theirs));
        }
        if args.prune {
            refuse_shared_snapshots(&kube.client, &ns, &backups).await?;
        }
        anyhow::Ok((kube, backups))
    })?;
    let ns = kube.namespace.clone();
    let names = args.backups.join(" ");
    let plan = if args.prune {
        Some(plan_repository_removal(&args.repo, &ns, &backups)?)
    } else {
        None
    };
    if !args.yes {
        let prompt = match &plan {
            Some(p) => format!(
                "Delete VolumeBackup(s) {} in namespace {ns} AND their {} snapshot(s) in {} (the repository data only they use is pruned; this cannot be undone)?",
                args.backups.join(", "),
                p.forget.len(),
                p.location
            ),
            None => format!(
                "Delete VolumeBackup(s) {} in namespace {ns}? (the repository snapshots stay)",
                args.backups.join(", ")
            ),
        };
        let ok = dialoguer::Confirm::new()
            .with_prompt(prompt)
            .default(false)
            .interact()
            .context("reading the confirmation")?;
        if !ok {
            bail!("nothing deleted");
        }
    }
    if let Some(plan) = &plan {
        forget_and_prune(plan, &names, quiet)?;
    }
    rt.block_on(async {
        let api: Api<VolumeBackup> = Api::namespaced(kube.client.clone(), &ns);
        for (b, _) in &backups {
            let name = b.name_any();
            // A backup that never completed may have left its run's temporary objects.
            if b.phase() != Some(Phase::Completed)
                && let Some(run) = b.labels().get(BACKUP_LABEL)
            {
                let mut selector = format!("{BACKUP_LABEL}={run}");
                if let Some(pvc) = b.labels().get(PVC_LABEL) {
                    selector.push_str(&format!(",{PVC_LABEL}={pvc}"));
                }
                let left =
                    super::create::cleanup_selector(&kube.client, &ns, &selector, false).await?;
                if !quiet && left > 0 {
                    eprintln!("removed {left} temporary object(s) VolumeBackup {name} left");
                }
            }
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    if !quiet {
                        println!("volumebackup.volbackup.io/{name} deleted");
                    }
                }
                // Deleted meanwhile: what the user asked for is done.
                Err(e) if cluster::is_status(&e, 404) => {
                    if !quiet {
                        println!("volumebackup.volbackup.io/{name} deleted");
                    }
                }
                Err(e) => return Err(missing_crd(e, "delete", Some(&ns))),
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_compare_after_making_paths_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            normalized_location("repo/"),
            cwd.join("repo").to_string_lossy()
        );
        assert_eq!(normalized_location("/srv/backups/"), "/srv/backups");
        assert_eq!(
            normalized_location("s3:https://s3.example.com/b/p/"),
            "s3:https://s3.example.com/b/p"
        );
    }

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
