//! The command line, as clap types. Every command is a function in `commands` that takes its
//! parsed options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::flag_values::{PodSecurity, parse_access_mode, parse_duration, parse_size};

/// Back up Kubernetes volumes to restic-format repositories and restore them.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-volbackup",
    bin_name = "kubectl volbackup",
    version,
    about
)]
pub struct Cli {
    /// Print less: no progress bars, no summaries on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and check repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// List the snapshots in a repository.
    Snapshots(SnapshotsArgs),
    /// Remove snapshots by a retention policy.
    Forget(ForgetArgs),
    /// Remove data that no snapshot needs any more.
    Prune(PruneArgs),
    /// Move data between a volume and a repository (what the mover and populate pods run).
    #[command(subcommand)]
    Mover(MoverCommand),
    /// Back up PVCs: snapshot, temporary volume, mover pod, VolumeBackup.
    Create(CreateArgs),
    /// Delete what an interrupted or killed `create` left and mark its backups Failed.
    ///
    /// Removes the run's pods, PVCs and VolumeSnapshots and marks its unfinished VolumeBackups
    /// Failed (reason Abandoned). A backup whose create was heard from in the last minute is
    /// left alone unless named with --backup.
    Cleanup(CleanupArgs),
    /// List VolumeBackups.
    List(ListArgs),
    /// Show one VolumeBackup with its volume info.
    Describe(DescribeArgs),
    /// Delete VolumeBackups (and with --prune their repository snapshots).
    Delete(DeleteArgs),
    /// Restore a backup into a new PVC (filled by the volbackup populator).
    Restore(RestoreArgs),
    /// Install the populator (CRDs, RBAC, Deployment, VolumePopulator) into the cluster.
    Install(InstallArgs),
    /// Remove what `install` created.
    Uninstall(UninstallArgs),
    /// Run the populator controller (what the populator Deployment runs).
    Populator(PopulatorArgs),
    /// Show the plugin's version and the version of the populator installed in the cluster.
    Version(VersionArgs),
    /// Check that the cluster has what backups and restores need, and say how to fix what not.
    Doctor(DoctorArgs),
    /// Print a shell completion script (`source <(kubectl-volbackup completion bash)`).
    Completion(CompletionArgs),
}

/// `version`
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the populator.
    #[arg(long, default_value = POPULATOR_NAMESPACE, value_name = "NAMESPACE")]
    pub populator_namespace: String,
    /// Only the plugin's version: do not ask the cluster.
    #[arg(long)]
    pub client: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: VersionFormat,
}

/// Output formats of `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum VersionFormat {
    /// Lines for people.
    #[default]
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// Namespace of the populator.
    #[arg(long, default_value = POPULATOR_NAMESPACE, value_name = "NAMESPACE")]
    pub populator_namespace: String,
}

/// Shells `completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash (`source <(kubectl volbackup completion bash)`).
    Bash,
    /// zsh (`source <(kubectl volbackup completion zsh)`).
    Zsh,
    /// fish (`kubectl volbackup completion fish | source`).
    Fish,
}

/// `completion`
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The namespace the populator runs in unless told otherwise.
pub const POPULATOR_NAMESPACE: &str = "volbackup-system";

/// `restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    #[command(flatten)]
    pub repo: RepoOptions,
    /// A VolumeBackup (`NAME` in the target namespace, or `NAMESPACE/NAME`), or a repository
    /// snapshot id (with --repo: restore from the repository alone).
    #[arg(value_name = "BACKUP")]
    pub backup: String,
    /// Name of the new PVC.
    #[arg(long, value_name = "PVC")]
    pub to: String,
    /// StorageClass of the new PVC (default: the backed-up volume's, else the default class).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Size of the new PVC (default: the backed-up volume's capacity; never smaller).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<String>,
    /// Access mode of the new PVC (repeatable; default: the backed-up volume's).
    #[arg(long = "access-mode", value_name = "MODE", value_parser = parse_access_mode)]
    pub access_modes: Vec<String>,
    /// Copy the repository Secret along with the VolumeBackup into the target namespace.
    #[arg(long)]
    pub copy_secret: bool,
    /// Also restore what grants privilege in a file tree: device nodes, set-user-id and
    /// set-group-id bits of files, file capabilities. Sets spec.privilegedFiles on the
    /// VolumeBackup, so every later restore from it gets them too.
    #[arg(long)]
    pub privileged_files: bool,
    /// Wait until the PVC is bound, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (`90s`, `10m`, `1h`).
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Namespace of the populator (to check that it is installed).
    #[arg(long, default_value = POPULATOR_NAMESPACE, value_name = "NAMESPACE")]
    pub populator_namespace: String,
}

/// `install`
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace for the populator.
    #[arg(short = 'n', long, default_value = POPULATOR_NAMESPACE, value_name = "NAMESPACE")]
    pub namespace: String,
    /// Populator image (default: ghcr.io/volbackup/volbackup:<this version>).
    #[arg(long, env = "VOLBACKUP_IMAGE", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Pod Security level enforced on the namespace: `baseline` (what the populate pods need),
    /// or `privileged` for restores from a repository that is a node directory (hostPath).
    #[arg(long, value_enum, default_value = "baseline", value_name = "LEVEL")]
    pub pod_security: PodSecurity,
    #[command(flatten)]
    pub populator: PopulatorSettings,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// What the administrator decides for every restore (`install` passes them to the populator,
/// which passes them to its populate pods); nothing a namespace writes can change them.
#[derive(Debug, Clone, Default, Args)]
pub struct PopulatorSettings {
    /// HTTP(S) proxy of the populate pods (`http://HOST:PORT`; sets HTTPS_PROXY and
    /// HTTP_PROXY). A repository Secret never sets one.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// Hosts the populate pods reach without the proxy (NO_PROXY, comma-separated).
    #[arg(long, value_name = "HOSTS", requires = "proxy")]
    pub no_proxy: Option<String>,
    /// A node directory (and what is below it) that restores may use as a repository (a
    /// hostPath mount; the same path on every node, e.g. NFS); repeat for several. Without
    /// it, a repository Secret naming a node directory is refused.
    #[arg(long, value_name = "DIR")]
    pub allow_node_repository: Vec<String>,
    /// A populate pod that does not start, or makes no progress, for this long is stopped and
    /// the attempt retried (a wait for a repository lock is progress) [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// The longest a populate pod may run (its activeDeadlineSeconds) [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restore_deadline: Option<Duration>,
}

/// `uninstall`
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the populator.
    #[arg(short = 'n', long, default_value = POPULATOR_NAMESPACE, value_name = "NAMESPACE")]
    pub namespace: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Keep the VolumeBackup CRD (and so every VolumeBackup object).
    #[arg(long)]
    pub keep_crds: bool,
}

/// `populator`
#[derive(Debug, Args)]
pub struct PopulatorArgs {
    /// Namespace for prime PVCs, populate pods and their Secrets (default: POD_NAMESPACE, then
    /// volbackup-system).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Image of the populate pods (default: ghcr.io/volbackup/volbackup:<this version>).
    #[arg(long, env = "VOLBACKUP_IMAGE", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Where to serve /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub metrics_addr: String,
    /// Populate attempts before a restore is given up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with each attempt (`5s`, `1m`).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "volbackup-populator", value_name = "NAME")]
    pub lease: String,
    #[command(flatten)]
    pub settings: PopulatorSettings,
}

/// The kubectl-standard connection flags.
#[derive(Debug, Clone, Args)]
pub struct KubeOptions {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    #[command(flatten)]
    pub repo: RepoOptions,
    /// PVCs to back up (or use -l / -A).
    #[arg(value_name = "PVC")]
    pub pvcs: Vec<String>,
    /// Back up the PVCs of all namespaces (with -l: the matching ones).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Back up the PVCs matching this label selector.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// VolumeSnapshotClass (default: the default class of the PVC's CSI driver).
    #[arg(long, value_name = "CLASS")]
    pub snapshot_class: Option<String>,
    /// Keep the VolumeSnapshot after the backup.
    #[arg(long)]
    pub keep_snapshot: bool,
    /// Extra tags for the repository snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// How many PVCs to back up at the same time.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub parallel: usize,
    /// Give up when the snapshot is not ready, or the mover pod has not started, after this
    /// long (`90s`, `10m`, `1h`; each wait). The copy itself may take as long as it needs.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Give up when the copy makes no progress for this long (a stuck volume or repository).
    /// Waiting for another process's repository lock (a prune) counts as progress; that wait
    /// is bounded by --retry-lock (default 30m).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// Mover image (default: ghcr.io/volbackup/volbackup:<this version>).
    #[arg(long, env = "VOLBACKUP_IMAGE", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Use this existing Secret for the repository settings instead of writing the
    /// repository's own Secret (`volbackup-repo-...`) from the local settings.
    #[arg(long, value_name = "NAME")]
    pub repo_secret: Option<String>,
}

/// `cleanup`
#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// Clean up in all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only what this run left: a VolumeBackup's name, or the run id (the value of the
    /// `volbackup.io/backup` label). A backup named here is cleaned up even if its create was
    /// heard from in the last minute (otherwise it is left alone as still running).
    #[arg(long, value_name = "NAME|ID")]
    pub backup: Option<String>,
}

/// Output formats of `list` and `snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ListFormat {
    /// A table for people.
    #[default]
    Table,
    /// A table with more columns.
    Wide,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// Only the names (`volumebackup.volbackup.io/NAME`; for `snapshots`, the full ids).
    Name,
}

/// `list`
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// List in all namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: ListFormat,
    /// Tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Also list the repository's snapshots (made here or in other clusters).
    #[command(flatten)]
    pub repo: RepoOptions,
}

/// `describe`
#[derive(Debug, Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// The VolumeBackup.
    #[arg(value_name = "BACKUP")]
    pub backup: String,
}

/// `delete`
#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// The VolumeBackups.
    #[arg(value_name = "BACKUP", required = true)]
    pub backups: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also forget the repository snapshots and prune the data only they used.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub repo: RepoOptions,
}

/// `repo ...`
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a new repository (restic format, version 2).
    Init(RepoInitArgs),
    /// Verify a repository's structure and, with --read-data, every stored byte.
    Check(RepoCheckArgs),
    /// Remove stale locks (older than 30 minutes, or left by a process on this host that is
    /// gone); with --remove-all, every lock.
    Unlock(RepoUnlockArgs),
}

/// Where the repository is and how to open it.
#[derive(Debug, Clone, Args)]
pub struct RepoOptions {
    /// Repository: a directory, `s3:https://host/bucket/prefix` or `s3://bucket/prefix`
    /// (endpoint from AWS_ENDPOINT_URL). Default: VOLBACKUP_REPOSITORY, then RESTIC_REPOSITORY.
    #[arg(short = 'r', long = "repo", global = true, value_name = "REPOSITORY")]
    pub repo: Option<String>,

    /// Read the repository password from this file (first line). Default: VOLBACKUP_PASSWORD,
    /// then RESTIC_PASSWORD, then RESTIC_PASSWORD_FILE, then a prompt on a terminal.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Wait up to this long (`30s`, `10m`, `1h`) for a lock another process holds, such as a
    /// prune's, instead of failing at once (as restic's --retry-lock).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub retry_lock: Option<Duration>,
}

/// `repo init`
#[derive(Debug, Args)]
pub struct RepoInitArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
}

/// `repo check`
#[derive(Debug, Args)]
pub struct RepoCheckArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Also read every pack and verify every blob (slow: reads the whole repository).
    #[arg(long)]
    pub read_data: bool,
    /// Pack reads kept in flight (default: 16 for S3, 4 for a directory; with --read-data at
    /// most 64 MiB of packs are held); more hides more latency of the object store.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub read_concurrency: Option<u16>,
}

/// `repo unlock`
#[derive(Debug, Args)]
pub struct RepoUnlockArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Remove every lock, also those of backups, restores and prunes still running (and files
    /// in locks/ that are not readable locks).
    #[arg(long)]
    pub remove_all: bool,
    /// With --remove-all: do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Output formats of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `snapshots`
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: ListFormat,
    /// Tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// `forget`
#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Snapshots to remove by id (in addition to the policy).
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Keep the last N snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the last snapshot of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the last snapshot of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the last snapshot of each of the last N weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the last snapshot of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the last snapshot of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune after forgetting.
    #[arg(long)]
    pub prune: bool,
    /// Output format of the plan.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Print the plan, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `mover ...`
#[derive(Debug, Subcommand)]
pub enum MoverCommand {
    /// Back up a block device, an image file, stdin (`-`) or a directory.
    Backup(MoverBackupArgs),
    /// Restore a snapshot onto a block device, an image file or into a directory.
    Restore(MoverRestoreArgs),
}

/// `mover backup`
#[derive(Debug, Args)]
pub struct MoverBackupArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// What to back up: a block device, an image file, `-` for stdin, or a directory.
    #[arg(long, value_name = "PATH")]
    pub source: PathBuf,
    /// File name of a block image in the snapshot (default: the source's file name,
    /// `stdin` for `-`). Ignored for directories.
    #[arg(long)]
    pub name: Option<String>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// JSON description of the volume, stored with the snapshot.
    #[arg(long, value_name = "JSON")]
    pub description: Option<String>,
    /// Base the backup on this snapshot (default: the latest with the same host and paths).
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// zstd compression level (0 = no compression).
    #[arg(long, default_value_t = 3)]
    pub compression: i32,
    /// Print JSON progress lines and a JSON result line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `mover restore`
#[derive(Debug, Args)]
pub struct MoverRestoreArgs {
    #[command(flatten)]
    pub repo: RepoOptions,
    /// Snapshot id, unique prefix, or `latest`.
    #[arg(long, value_name = "ID")]
    pub snapshot: String,
    /// The file to restore from a block snapshot (`/NAME`; default: its only file).
    #[arg(long, value_name = "/NAME")]
    pub path: Option<String>,
    /// Where to: a block device or image file (block snapshots) or a directory.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    /// Pack reads kept in flight when restoring an image to a file (default: 16 for S3, 4
    /// for a directory; more hides more latency of the object store).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub read_concurrency: Option<u16>,
    /// MiB of image ahead that blobs arriving early are held for, to write an image file in
    /// order (0: write each where it belongs as it arrives). For benchmarks.
    #[arg(long, value_name = "MIB", hide = true)]
    pub reorder_window_mib: Option<u64>,
    /// MiB of blobs read and not yet written that an image restore may hold (reads wait for
    /// room; default 48 for S3, 16 for a directory). For benchmarks.
    #[arg(long, value_name = "MIB", hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub read_budget_mib: Option<u64>,
    /// MiB a pack read may grow to by merging neighbouring blobs (default 8). For
    /// benchmarks.
    #[arg(long, value_name = "MIB", hide = true, value_parser = clap::value_parser!(u64).range(1..=128))]
    pub max_read_mib: Option<u64>,
    /// Also restore what grants privilege in a file tree: device nodes, set-user-id and
    /// set-group-id bits of files, and file capabilities (left out by default).
    #[arg(long)]
    pub privileged_files: bool,
    /// Print the pack reads an image restore would make (one JSON line each with --json) and
    /// restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON progress lines and a JSON result line on stdout.
    #[arg(long)]
    pub json: bool,
}
