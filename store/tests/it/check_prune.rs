//! check, forget and prune against the real restic 0.14 (`/usr/bin/restic`) as the oracle:
//! our check must agree with restic's about intact and damaged repositories, our forget must
//! keep the snapshots restic's forget keeps, and after our prune restic must find the
//! repository intact and restore the kept snapshots byte for byte.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use volbackup_store::backend::local::LocalBackend;
use volbackup_store::backend::{Backend, FileInfo, FileType};
use volbackup_store::block::{BackupOptions, backup_block};
use volbackup_store::check::{CheckOptions, CheckReport, Severity, check};
use volbackup_store::crypto::KdfParams;
use volbackup_store::forget::{self, GroupBy, Policy};
use volbackup_store::format::{BlobType, Snapshot};
use volbackup_store::id::Id;
use volbackup_store::packer::{BlobWriter, WriterOptions};
use volbackup_store::progress::NoProgress;
use volbackup_store::prune::{PruneOptions, execute, plan_prune};
use volbackup_store::repo::{InitOptions, Repository};
use volbackup_store::tree::{Node, NodeType, Tree};
use volbackup_store::{OpenOptions, ReadAhead};

const PASSWORD: &str = "check-prune-test-password";
const RESTIC: &str = "/usr/bin/restic";

// ---------------------------------------------------------------------------------------------
// helpers

fn restic(repo: &Path, args: &[&str]) -> Output {
    assert!(
        Path::new(RESTIC).exists(),
        "{RESTIC} is missing: these tests use the real restic 0.14 as the oracle (apt-get install restic)"
    );
    Command::new(RESTIC)
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("run restic")
}

fn restic_ok(repo: &Path, args: &[&str]) -> Output {
    let out = restic(repo, args);
    assert!(
        out.status.success(),
        "restic {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift), different for each seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn open(repo: &Path) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(repo)), PASSWORD).expect("open repository")
}

/// Every file of the repository (except locks) with its SHA-256.
fn digest(repo: &Path) -> BTreeMap<String, Id> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Id>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("locks") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, Id::hash(&fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(repo, repo, &mut out);
    out
}

fn size_of_packs(repo: &Path) -> u64 {
    digest(repo)
        .keys()
        .filter(|k| k.starts_with("data/"))
        .map(|k| fs::metadata(repo.join(k)).unwrap().len())
        .sum()
}

fn files_of(repo: &Path, dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = digest(repo)
        .keys()
        .filter(|k| k.starts_with(dir))
        .map(|k| repo.join(k))
        .collect();
    v.sort();
    v
}

fn no_locks_left(repo: &Path) {
    let locks = repo.join("locks");
    let n = fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "a lock was left behind in {}", locks.display());
}

fn run_check(repo: &Path, read_data: bool) -> CheckReport {
    let r = open(repo);
    let report = check(
        &r,
        &CheckOptions {
            read_data,
            ..CheckOptions::default()
        },
        &NoProgress,
    )
    .expect("check runs");
    no_locks_left(repo);
    report
}

/// The repository `check` must leave alone: it runs check and asserts nothing but the lock
/// folder changed.
fn check_without_changes(repo: &Path, read_data: bool) -> CheckReport {
    let before = digest(repo);
    let report = run_check(repo, read_data);
    assert_eq!(digest(repo), before, "check changed the repository");
    report
}

fn assert_names(report: &CheckReport, severity: Severity, needle: &str) {
    assert!(
        report.problems.iter().any(|p| p.severity == severity
            && (p.subject.contains(needle) || p.message.contains(needle))),
        "expected a {severity:?} naming {needle}, got:\n{report}"
    );
}

/// The pack with the most bytes (a data pack in our test repositories).
fn largest_pack(repo: &Path) -> (PathBuf, String) {
    let p = files_of(repo, "data/")
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a pack");
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let rel = format!("data/{}/{}", &name[..2], name);
    (p, rel)
}

/// A repository written by restic: one backup of a small tree (a few files, a subfolder).
fn restic_repo_with_one_backup(tmp: &Path) -> PathBuf {
    let repo = tmp.join("repo");
    let src = tmp.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big.bin"), noise(1, 3 << 20)).unwrap();
    fs::write(src.join("sub/small.txt"), b"hello restic\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    restic_ok(&repo, &["init", "--repository-version", "2"]);
    restic_ok(&repo, &["backup", src.to_str().unwrap()]);
    repo
}

/// One snapshot per entry, made by restic at the given local time; snapshot `i` holds
/// `common.bin` (the same in all) and `unique.bin` (different in each, `unique(i)`).
fn restic_repo_with_history(
    tmp: &Path,
    times: &[&str],
    tags: &[&str],
) -> (PathBuf, PathBuf, Vec<Id>) {
    let repo = tmp.join("repo");
    let src = tmp.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("common.bin"), noise(99, 1 << 20)).unwrap();
    restic_ok(&repo, &["init", "--repository-version", "2"]);
    for (i, t) in times.iter().enumerate() {
        fs::write(src.join("d/unique.bin"), unique(i)).unwrap();
        let mut args = vec!["backup", "--time", t, src.to_str().unwrap()];
        if !tags[i].is_empty() {
            args.extend(["--tag", tags[i]]);
        }
        restic_ok(&repo, &args);
    }
    // restic 0.14 prints only short ids; the times are distinct, so list oldest first.
    let ids: Vec<Id> = open(&repo)
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), times.len());
    (repo, src, ids)
}

fn unique(i: usize) -> Vec<u8> {
    noise(1000 + i as u64, 300 << 10)
}

/// The snapshot ids restic's own `forget --dry-run --json` keeps with these options.
fn restic_keeps(repo: &Path, policy_args: &[&str]) -> Vec<Id> {
    let mut args = vec!["forget", "--dry-run", "--json"];
    args.extend_from_slice(policy_args);
    let out = restic_ok(repo, &args);
    let groups: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("restic forget --json output");
    let mut ids: Vec<Id> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["keep"].as_array().cloned().unwrap_or_default())
        .map(|s| s["id"].as_str().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

fn our_keeps(repo: &Path, policy: &Policy) -> Vec<Id> {
    let snaps = open(repo).list_snapshots().unwrap();
    let mut ids = forget::plan(&snaps, policy, GroupBy::default())
        .unwrap()
        .keep_ids();
    ids.sort();
    ids
}

fn prune(repo: &Path, opts: &PruneOptions) -> volbackup_store::prune::PruneStats {
    let r = open(repo);
    let plan = plan_prune(&r, opts).expect("plan prune");
    let stats = execute(&r, &plan, &NoProgress).expect("execute prune");
    no_locks_left(repo);
    stats
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, _) in digest(from) {
        let dst = to.join(&rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(from.join(&rel), &dst).unwrap();
    }
    fs::create_dir_all(to.join("locks")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// check

/// A new repository of ours at `repo`, with a fast key derivation.
fn init_ours(repo: &Path) -> Repository {
    Repository::init(
        Arc::new(LocalBackend::new(repo)),
        PASSWORD,
        &InitOptions {
            kdf: KdfParams::insecure_fast(),
            polynomial: None,
        },
    )
    .unwrap()
}

#[test]
fn check_passes_on_a_repository_restic_wrote_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    let report = check_without_changes(&repo, true);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.snapshots, 1);
    assert!(report.trees >= 2, "root and sub folder trees: {report}");
    assert!(
        report.packs_read >= 2 && report.packs_read == report.packs,
        "{report}"
    );
    assert!(report.bytes_read > 3 << 20, "{report}");
    assert_eq!(
        report.problems,
        vec![],
        "a fresh restic repository has nothing to report"
    );
}

#[test]
fn check_passes_on_a_repository_we_wrote_and_restic_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = init_ours(&repo);
    let image = noise(7, 5 << 20);
    backup_block(
        &r,
        &mut &image[..],
        "vol.img",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let report = check_without_changes(&repo, true);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.problems, vec![]);
    restic_ok(&repo, &["check", "--read-data"]);
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_by_read_data_and_the_pack_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    let (path, rel) = largest_pack(&repo);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    // The header is intact, so the structure alone looks fine; only reading the data shows it.
    let structure = check_without_changes(&repo, false);
    assert!(structure.is_ok(), "{structure}");
    let report = check_without_changes(&repo, true);
    assert!(!report.is_ok(), "read-data check must fail:\n{report}");
    assert_names(&report, Severity::Error, &rel);
    assert!(
        report.to_string().contains("does not match its name"),
        "{report}"
    );
    assert!(
        !restic(&repo, &["check", "--read-data"]).status.success(),
        "restic agrees it is damaged"
    );
}

#[test]
fn a_truncated_pack_fails_the_structure_check_and_the_pack_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    let (path, rel) = largest_pack(&repo);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();

    let report = check_without_changes(&repo, false);
    assert!(!report.is_ok(), "{report}");
    assert_names(&report, Severity::Error, &rel);
    assert!(!check_without_changes(&repo, true).is_ok());
    assert!(
        !restic(&repo, &["check"]).status.success(),
        "restic agrees it is damaged"
    );
}

#[test]
fn a_missing_pack_fails_the_check_and_the_pack_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    let (path, rel) = largest_pack(&repo);
    fs::remove_file(&path).unwrap();

    let report = check_without_changes(&repo, false);
    assert!(!report.is_ok(), "{report}");
    assert_names(&report, Severity::Error, &rel);
    assert!(report.to_string().contains("does not exist"), "{report}");
    assert!(
        !restic(&repo, &["check"]).status.success(),
        "restic agrees it is damaged"
    );
}

#[test]
fn a_missing_index_fails_the_check_and_the_orphaned_packs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    for f in files_of(&repo, "index/") {
        fs::remove_file(f).unwrap();
    }
    let (_, rel) = largest_pack(&repo);

    let report = check_without_changes(&repo, false);
    assert!(!report.is_ok(), "{report}");
    assert_names(&report, Severity::Error, "is not in the index");
    assert_names(&report, Severity::Info, &rel);
    assert!(
        !restic(&repo, &["check"]).status.success(),
        "restic agrees it is damaged"
    );
}

#[test]
fn a_damaged_snapshot_file_is_reported_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = restic_repo_with_one_backup(tmp.path());
    let snap = files_of(&repo, "snapshots/").pop().unwrap();
    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = fs::read(&snap).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&snap, &bytes).unwrap();
    let report = check_without_changes(&repo, false);
    assert!(!report.is_ok(), "{report}");
    assert_names(&report, Severity::Error, &format!("snapshots/{name}"));
}

#[test]
fn check_passes_after_restic_forgot_and_pruned_and_our_prune_continues_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _, ids) = restic_repo_with_history(tmp.path(), &TIMES[..4], &TAGS[..4]);
    // restic rewrites the index (with "supersedes") and leaves up to 5% unused behind.
    restic_ok(&repo, &["forget", "--keep-last", "1", "--prune"]);
    let report = check_without_changes(&repo, true);
    assert!(report.is_ok(), "{report}");
    prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 0.0,
            repack_small: false,
        },
    );
    restic_ok(&repo, &["check", "--read-data"]);
    let left: Vec<Id> = open(&repo)
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![ids[3]]);
    let report = run_check(&repo, true);
    assert!(report.is_ok() && report.problems.is_empty(), "{report}");
}

#[test]
fn prune_removes_duplicate_copies_of_a_blob_and_keeps_one() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = init_ours(&repo);
    let content = noise(77, 200 << 10);
    // Two writers that do not know of each other's blobs store the same blob twice (as two
    // backups racing each other can).
    for _ in 0..2 {
        let fresh = open(&repo);
        let w = BlobWriter::new(&fresh, WriterOptions::default()).unwrap();
        w.add(BlobType::Data, content.clone()).unwrap();
        w.finish(&volbackup_store::lock::Lock::shared(&fresh).unwrap())
            .unwrap();
    }
    let blob = Id::hash(&content);
    let mut node = Node::new("f", NodeType::File);
    node.size = content.len() as u64;
    node.content = vec![blob];
    let tree = Tree::from_nodes(vec![node]).unwrap();
    let w = BlobWriter::new(&r, WriterOptions::default()).unwrap();
    let tree_id = w.add(BlobType::Tree, tree.to_blob()).unwrap().id;
    w.finish(&volbackup_store::lock::Lock::shared(&r).unwrap())
        .unwrap();
    let snap = r
        .save_snapshot(&Snapshot::new(tree_id, vec!["/f".into()]))
        .unwrap();

    let r = open(&repo);
    r.load_index().unwrap();
    assert_eq!(
        r.index().get_all(BlobType::Data, &blob).len(),
        2,
        "the blob should be stored twice"
    );
    let report = check_without_changes(&repo, true);
    assert!(report.is_ok(), "duplicates are not an error: {report}");
    assert_names(&report, Severity::Info, "extra copies");
    restic_ok(&repo, &["check", "--read-data"]);

    let plan = plan_prune(&r, &PruneOptions::default()).unwrap();
    assert_eq!(plan.counts.duplicate_blobs, 1, "{plan}");
    assert!(plan.to_string().contains("duplicates:"), "{plan}");
    execute(&r, &plan, &NoProgress).unwrap();

    let r = open(&repo);
    r.load_index().unwrap();
    assert_eq!(
        r.index().get_all(BlobType::Data, &blob).len(),
        1,
        "one copy should remain"
    );
    let report = run_check(&repo, true);
    assert!(report.is_ok() && report.problems.is_empty(), "{report}");
    restic_ok(&repo, &["check", "--read-data"]);
    let out = restic_ok(&repo, &["dump", &snap.to_hex(), "/f"]);
    assert!(out.stdout == content, "the file no longer restores");
}

// ---------------------------------------------------------------------------------------------
// forget

const TIMES: [&str; 6] = [
    "2024-01-01 10:00:00",
    "2024-01-01 18:00:00",
    "2024-01-09 09:00:00",
    "2024-02-14 12:00:00",
    "2024-02-15 08:00:00",
    "2024-02-15 20:00:00",
];
const TAGS: [&str; 6] = ["", "", "release", "", "", ""];

#[test]
fn our_forget_plan_keeps_the_same_snapshots_as_restic_forget() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _, ids) = restic_repo_with_history(tmp.path(), &TIMES, &TAGS);
    let cases: Vec<(Vec<&str>, Policy, Vec<usize>)> = vec![
        (
            vec!["--keep-last", "2"],
            Policy {
                keep_last: Some(2),
                ..Default::default()
            },
            vec![4, 5],
        ),
        (
            vec!["--keep-daily", "2", "--keep-weekly", "2"],
            Policy {
                keep_daily: Some(2),
                keep_weekly: Some(2),
                ..Default::default()
            },
            vec![2, 3, 5],
        ),
        (
            vec!["--keep-monthly", "2", "--keep-within", "2d"],
            Policy {
                keep_monthly: Some(2),
                keep_within: Some("2d".parse().unwrap()),
                ..Default::default()
            },
            vec![2, 3, 4, 5],
        ),
        (
            vec![
                "--keep-hourly",
                "3",
                "--keep-yearly",
                "1",
                "--keep-tag",
                "release",
            ],
            Policy {
                keep_hourly: Some(3),
                keep_yearly: Some(1),
                keep_tags: vec!["release".into()],
                ..Default::default()
            },
            vec![2, 3, 4, 5],
        ),
    ];
    for (args, policy, expected) in cases {
        let theirs = restic_keeps(&repo, &args);
        let ours = our_keeps(&repo, &policy);
        let mut want: Vec<Id> = expected.iter().map(|&i| ids[i]).collect();
        want.sort();
        assert_eq!(
            ours, theirs,
            "policy {args:?}: we and restic keep different snapshots"
        );
        assert_eq!(
            ours, want,
            "policy {args:?}: not the snapshots worked out by hand"
        );
    }
}

#[test]
fn forget_and_prune_remove_old_data_and_restic_still_restores_what_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src, ids) = restic_repo_with_history(tmp.path(), &TIMES, &TAGS);
    let size_before = size_of_packs(&repo);

    let r = open(&repo);
    let snaps = r.list_snapshots().unwrap();
    let policy = Policy {
        keep_daily: Some(2),
        keep_weekly: Some(2),
        ..Default::default()
    };
    let plan = forget::plan(&snaps, &policy, GroupBy::default()).unwrap();
    let mut removed = plan.remove_ids();
    removed.sort();
    let mut want_removed = vec![ids[0], ids[1], ids[4]];
    want_removed.sort();
    assert_eq!(removed, want_removed);
    assert_eq!(forget::apply(&r, &plan).unwrap(), 3);
    no_locks_left(&repo);
    let left: Vec<Id> = open(&repo)
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![ids[2], ids[3], ids[5]]);

    let stats = prune(
        &repo,
        &PruneOptions {
            max_unused_percent: 0.0,
            repack_small: false,
        },
    );
    assert!(stats.packs_deleted > 0, "{stats:?}");

    restic_ok(&repo, &["check", "--read-data"]);
    let report = run_check(&repo, true);
    assert!(report.is_ok(), "{report}");
    assert!(report.problems.iter().all(|p| p.severity == Severity::Info));
    assert!(
        !report.to_string().contains("not used by any snapshot"),
        "max unused 0% leaves no unused blob:\n{report}"
    );

    for i in [2usize, 3, 5] {
        let file = src.join("d/unique.bin");
        let out = restic_ok(&repo, &["dump", &ids[i].to_hex(), file.to_str().unwrap()]);
        assert!(
            out.stdout == unique(i),
            "snapshot {i} no longer restores its unique file"
        );
        let common = src.join("common.bin");
        let out = restic_ok(&repo, &["dump", &ids[i].to_hex(), common.to_str().unwrap()]);
        assert!(
            out.stdout == noise(99, 1 << 20),
            "snapshot {i} no longer restores the shared file"
        );
    }
    // The files only the forgotten snapshots had are gone (each is a single chunk: its id is
    // the SHA-256 of the content).
    let r = open(&repo);
    r.load_index().unwrap();
    for i in [0usize, 1, 4] {
        assert!(
            !r.has_blob(BlobType::Data, &Id::hash(&unique(i))),
            "data of forgotten snapshot {i} is still indexed"
        );
    }
    for i in [2usize, 3, 5] {
        assert!(r.has_blob(BlobType::Data, &Id::hash(&unique(i))));
    }
    // restic's own prune finds nothing left to do.
    let out = restic_ok(&repo, &["prune", "--dry-run", "--max-unused", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text
        .lines()
        .find(|l| l.starts_with("total prune:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        total.contains(" 0 blobs / 0 B"),
        "restic would still prune after us: {total}"
    );
    let size_after = size_of_packs(&repo);
    assert!(
        size_after + 3 * (300 << 10) <= size_before + (64 << 10),
        "packs should shrink by about three unique files: {size_before} -> {size_after}"
    );
}

#[test]
fn a_second_prune_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _, ids) = restic_repo_with_history(tmp.path(), &TIMES[..4], &TAGS[..4]);
    let r = open(&repo);
    let snaps = r.list_snapshots().unwrap();
    let plan = forget::plan(
        &snaps,
        &Policy {
            keep_last: Some(2),
            ..Default::default()
        },
        GroupBy::default(),
    )
    .unwrap();
    forget::apply(&r, &plan).unwrap();
    let opts = PruneOptions::default();
    let first = prune(&repo, &opts);
    assert!(first.packs_deleted > 0, "{first:?}");

    let before = digest(&repo);
    let r = open(&repo);
    let plan = plan_prune(&r, &opts).unwrap();
    assert!(plan.is_noop(), "second plan should do nothing:\n{plan}");
    let second = execute(&r, &plan, &NoProgress).unwrap();
    assert_eq!(second, Default::default(), "second prune did something");
    assert_eq!(digest(&repo), before, "second prune changed files");
    restic_ok(&repo, &["check", "--read-data"]);
    let left: Vec<Id> = open(&repo)
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![ids[2], ids[3]]);
}

/// A local repository whose writes and removals (other than of locks) fail once a budget is
/// used up, as if the process had died there: a real backend with an injected fault.
struct CrashingBackend {
    inner: LocalBackend,
    budget: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl CrashingBackend {
    fn mutate(&self, t: FileType) -> volbackup_store::Result<()> {
        if t == FileType::Lock {
            return Ok(());
        }
        let ok = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok();
        if !ok {
            return Err(volbackup_store::Error::Backend {
                location: self.inner.location(),
                message: "simulated crash".into(),
                retryable: false,
            });
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Backend for CrashingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> volbackup_store::Result<()> {
        self.inner.create()
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> volbackup_store::Result<()> {
        self.mutate(t)?;
        self.inner.write(t, name, data)
    }
    fn read(&self, t: FileType, name: &str) -> volbackup_store::Result<Vec<u8>> {
        self.inner.read(t, name)
    }
    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> volbackup_store::Result<Vec<u8>> {
        self.inner.read_range(t, name, offset, length)
    }
    fn stat(&self, t: FileType, name: &str) -> volbackup_store::Result<u64> {
        self.inner.stat(t, name)
    }
    fn list(&self, t: FileType) -> volbackup_store::Result<Vec<FileInfo>> {
        self.inner.list(t)
    }
    fn remove(&self, t: FileType, name: &str) -> volbackup_store::Result<()> {
        self.mutate(t)?;
        self.inner.remove(t, name)
    }
}

/// Plans and executes a prune on `repo` with a budget of `budget` file writes and removals;
/// returns how many were made and whether the prune finished.
fn prune_with_budget(repo: &Path, budget: usize) -> (usize, bool) {
    let done = Arc::new(AtomicUsize::new(0));
    let backend = CrashingBackend {
        inner: LocalBackend::new(repo),
        budget: Arc::new(AtomicUsize::new(budget)),
        done: done.clone(),
    };
    let r = Repository::open(Arc::new(backend), PASSWORD).unwrap();
    let opts = PruneOptions {
        max_unused_percent: 0.0,
        repack_small: false,
    };
    let plan = plan_prune(&r, &opts).expect("planning writes nothing but a lock");
    let finished = execute(&r, &plan, &NoProgress).is_ok();
    (done.load(Ordering::SeqCst), finished)
}

#[test]
fn a_prune_interrupted_after_any_number_of_writes_leaves_a_repository_that_passes_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _, ids) = restic_repo_with_history(tmp.path(), &TIMES[..4], &TAGS[..4]);
    restic_ok(&repo, &["forget", "--keep-last", "1"]);
    // A pack no index lists, as an interrupted backup leaves behind.
    let (largest, _) = largest_pack(&repo);
    let orphan = tmp.path().join("orphan");
    fs::write(&orphan, noise(3, 4096)).unwrap();
    let orphan_id = Id::hash(&fs::read(&orphan).unwrap()).to_hex();
    let orphan_path = largest
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(&orphan_id[..2])
        .join(&orphan_id);
    fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    fs::rename(&orphan, &orphan_path).unwrap();
    let pristine = tmp.path().join("pristine");
    copy_dir(&repo, &pristine);

    let (total, finished) = prune_with_budget(&repo, usize::MAX);
    assert!(finished);
    assert!(
        total >= 5,
        "a prune that repacks makes several writes and removals, made {total}"
    );
    for budget in 0..total {
        let state = tmp.path().join(format!("crash-{budget}"));
        copy_dir(&pristine, &state);
        let (done, finished) = prune_with_budget(&state, budget);
        assert!(
            !finished && done == budget,
            "prune should have stopped after {budget} changes"
        );
        // A crashed process leaves its lock behind; restic would wait for it to go stale.
        for f in files_of(&state, "locks/") {
            fs::remove_file(f).unwrap();
        }
        let out = restic(&state, &["check", "--read-data"]);
        assert!(
            out.status.success(),
            "after {budget} of {total} changes restic check fails:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = run_check(&state, false);
        assert!(
            report.is_ok(),
            "after {budget} of {total} changes: {report}"
        );
        let dump = restic_ok(&state, &["dump", &ids[3].to_hex(), "/"]);
        assert!(!dump.stdout.is_empty());
        fs::remove_dir_all(&state).unwrap();
    }
}

#[test]
fn forget_and_prune_on_block_snapshots_we_wrote_keep_the_images_restic_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = init_ours(&repo);
    // An image that changes a little between backups, each backup dated a day apart.
    let mut image = noise(5, 4 << 20);
    let mut images = Vec::new();
    let mut ids = Vec::new();
    for day in 0..4u8 {
        let start = usize::from(day) * (1 << 20);
        image[start..start + (600 << 10)].copy_from_slice(&noise(50 + u64::from(day), 600 << 10));
        let s = backup_block(
            &r,
            &mut &image[..],
            "vol.img",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
        // Re-date the snapshot: same content, chosen time.
        let mut snap: Snapshot = r.load_unpacked(FileType::Snapshot, &s.snapshot_id).unwrap();
        snap.time =
            chrono::DateTime::parse_from_rfc3339(&format!("2024-03-0{}T12:00:00+01:00", day + 1))
                .unwrap();
        let id = r.save_snapshot(&snap).unwrap();
        r.backend()
            .remove(FileType::Snapshot, &s.snapshot_id.to_hex())
            .unwrap();
        images.push(image.clone());
        ids.push(id);
    }
    let keep_last_two = Policy {
        keep_last: Some(2),
        ..Default::default()
    };
    assert_eq!(our_keeps(&repo, &keep_last_two), {
        let mut v = restic_keeps(&repo, &["--keep-last", "2"]);
        v.sort();
        v
    });
    let before = size_of_packs(&repo);
    let plan = forget::plan(
        &r.list_snapshots().unwrap(),
        &keep_last_two,
        GroupBy::default(),
    )
    .unwrap();
    assert_eq!(forget::apply(&r, &plan).unwrap(), 2);
    let plan = plan_prune(
        &r,
        &PruneOptions {
            max_unused_percent: 0.0,
            repack_small: false,
        },
    )
    .unwrap();
    assert!(!plan.is_noop(), "{plan}");
    let printed = plan.to_string();
    assert!(
        printed.contains("to repack:") && printed.contains("unused size after prune"),
        "{printed}"
    );
    execute(&r, &plan, &NoProgress).unwrap();
    assert!(size_of_packs(&repo) < before, "packs did not shrink");

    restic_ok(&repo, &["check", "--read-data"]);
    assert!(run_check(&repo, true).is_ok());
    for i in [2usize, 3] {
        let out = restic_ok(&repo, &["dump", &ids[i].to_hex(), "/vol.img"]);
        assert!(out.stdout == images[i], "image {i} does not restore");
    }
}

// ---------------------------------------------------------------------------------------------
// a prune between opening a repository and locking it; check's reads

mod open_and_read;
