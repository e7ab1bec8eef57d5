//! `doctor`: checks that the cluster has what backups and restores need, one line per check
//! (`ok`, `FAIL` with the fix, or `skip` when this machine or these credentials cannot tell),
//! and fails when any check does.
//!
//! What is read comes first (`observe`); the verdicts are pure functions of it, each with its
//! own tests. The repository is opened by this binary run as a child process with the
//! Secret's settings as its environment, so the check is the one a mover pod makes, and
//! nothing of the Secret is printed or lingers in this process's environment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use volbackup_populator::api::VolumeBackup;

use crate::cli::DoctorArgs;
use crate::cluster::{self, DEFAULT_SNAPSHOT_CLASS, explain, explain_for, is_status};
use crate::commands::install::{CRD_NAME, POPULATOR_NAME, VOLUME_POPULATOR_NAME};
use crate::commands::version::{self, Populator, State};

/// Annotation of the default StorageClass.
const DEFAULT_STORAGE_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The kinds the external-snapshotter CRDs define.
const SNAPSHOT_KINDS: [&str; 3] = [
    "VolumeSnapshot",
    "VolumeSnapshotClass",
    "VolumeSnapshotContent",
];
/// How long opening a repository may take.
const OPEN_WAIT: Duration = Duration::from_secs(120);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It holds.
    Ok,
    /// It does not; the text says how to fix it.
    Fail(String),
    /// It could not be checked from here; the text says why.
    Skip(String),
}

/// One check: what was looked at and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What holds (or should).
    pub what: String,
    /// Whether it does.
    pub verdict: Verdict,
}

impl Check {
    fn ok(what: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            verdict: Verdict::Ok,
        }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            verdict: Verdict::Fail(fix.into()),
        }
    }
    fn skip(what: impl Into<String>, why: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            verdict: Verdict::Skip(why.into()),
        }
    }

    /// The line printed for it.
    pub fn line(&self) -> String {
        match &self.verdict {
            Verdict::Ok => format!("ok    {}", self.what),
            Verdict::Fail(fix) => format!("FAIL  {}; fix: {fix}", self.what),
            Verdict::Skip(why) => format!("skip  {} ({why})", self.what),
        }
    }
}

/// A StorageClass as far as the checks care.
#[derive(Debug, Clone)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// The provisioner (for a CSI class, the driver).
    pub driver: String,
    /// Whether it is marked as the default.
    pub default: bool,
}

/// The snapshot CRDs: which of the three kinds the API serves (`None`: the group is absent).
pub fn snapshot_crds(kinds: Option<&BTreeSet<String>>) -> Check {
    let what = "snapshot CRDs (snapshot.storage.k8s.io/v1): VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent";
    let missing: Vec<&str> = SNAPSHOT_KINDS
        .iter()
        .copied()
        .filter(|k| kinds.is_none_or(|ks| !ks.contains(*k)))
        .collect();
    if missing.is_empty() {
        Check::ok(what)
    } else {
        Check::fail(
            format!("{what}: missing {}", missing.join(", ")),
            "install the CRDs and the snapshot controller of kubernetes-csi/external-snapshotter (client/config/crd, deploy/kubernetes/snapshot-controller)",
        )
    }
}

/// Whether a provisioner is a CSI driver (in-tree provisioners are `kubernetes.io/...`).
fn is_csi(driver: &str) -> bool {
    !driver.starts_with("kubernetes.io/")
}

/// One check per CSI driver that StorageClasses use: it needs exactly one default
/// VolumeSnapshotClass (what `create` picks without `--snapshot-class`).
pub fn snapshot_classes(storage: &[Class], snapshot: &[Class]) -> Vec<Check> {
    let mut drivers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in storage.iter().filter(|c| is_csi(&c.driver)) {
        drivers
            .entry(c.driver.as_str())
            .or_default()
            .push(c.name.as_str());
    }
    drivers
        .into_iter()
        .map(|(driver, used_by)| {
            let what = format!(
                "VolumeSnapshotClass for CSI driver {driver} (StorageClass {})",
                used_by.join(", ")
            );
            let of_driver: Vec<&Class> = snapshot.iter().filter(|c| c.driver == driver).collect();
            let defaults: Vec<&str> = of_driver
                .iter()
                .filter(|c| c.default)
                .map(|c| c.name.as_str())
                .collect();
            match (of_driver.as_slice(), defaults.as_slice()) {
                (_, [one]) => Check::ok(format!("{what}: {one} (default)")),
                ([], _) => Check::fail(
                    format!("{what}: none"),
                    format!(
                        "create a VolumeSnapshotClass with driver: {driver} and the annotation {DEFAULT_SNAPSHOT_CLASS}: \"true\""
                    ),
                ),
                (some, []) => Check::fail(
                    format!(
                        "{what}: {} but none is the default",
                        some.iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "kubectl annotate volumesnapshotclass {} {DEFAULT_SNAPSHOT_CLASS}=true (or pass --snapshot-class to create)",
                        some[0].name
                    ),
                ),
                (_, many) => Check::fail(
                    format!("{what}: several defaults ({})", many.join(", ")),
                    format!(
                        "remove the annotation {DEFAULT_SNAPSHOT_CLASS} from all but one (or pass --snapshot-class to create)"
                    ),
                ),
            }
        })
        .collect()
}

/// The default StorageClass: a restore whose backed-up class does not exist here uses it.
pub fn default_storage_class(storage: &[Class]) -> Check {
    let defaults: Vec<&str> = storage
        .iter()
        .filter(|c| c.default)
        .map(|c| c.name.as_str())
        .collect();
    match defaults.as_slice() {
        [one] => Check::ok(format!("default StorageClass: {one}")),
        [] => Check::fail(
            "default StorageClass: none",
            format!(
                "kubectl annotate storageclass NAME {DEFAULT_STORAGE_CLASS}=true (restores whose class does not exist here use it; or pass --storage-class to restore)"
            ),
        ),
        many => Check::ok(format!(
            "default StorageClass: {} (several are marked; Kubernetes uses the newest)",
            many.join(", ")
        )),
    }
}

/// The populator: its CRD, its VolumePopulator registration, its Deployment and its version.
/// `None` for what could not be read.
pub fn populator(
    crd: Option<bool>,
    registration: Option<bool>,
    deployment: &Populator,
) -> Vec<Check> {
    const INSTALL: &str = "run `kubectl volbackup install`";
    let mut out = Vec::new();
    let crd_what = format!("VolumeBackup CRD ({CRD_NAME})");
    out.push(match crd {
        Some(true) => Check::ok(crd_what),
        Some(false) => Check::fail(format!("{crd_what}: missing"), INSTALL),
        None => Check::skip(crd_what, "the API discovery of volbackup.io is not allowed"),
    });
    let vp_what = format!("VolumePopulator {VOLUME_POPULATOR_NAME} (populator.storage.k8s.io)");
    out.push(match registration {
        Some(true) => Check::ok(vp_what),
        Some(false) => Check::fail(format!("{vp_what}: missing"), INSTALL),
        None => Check::skip(vp_what, "reading volumepopulators is not allowed"),
    });
    let d_what = format!(
        "populator Deployment {}/{POPULATOR_NAME}",
        deployment.namespace
    );
    match deployment.state {
        State::Installed if deployment.ready == Some(true) => {
            out.push(Check::ok(format!("{d_what}: ready")))
        }
        State::Installed => out.push(Check::fail(
            format!("{d_what}: no available replica"),
            format!(
                "see `kubectl -n {} get pods` and the pod's events; {INSTALL} again",
                deployment.namespace
            ),
        )),
        State::NotInstalled => out.push(Check::fail(format!("{d_what}: missing"), INSTALL)),
        State::Unknown => out.push(Check::skip(
            d_what,
            deployment.reason.clone().unwrap_or_default(),
        )),
    }
    if deployment.state == State::Installed {
        let v_what = format!(
            "populator version matches the plugin ({})",
            version::VERSION
        );
        out.push(match (&deployment.version, version::mismatch(deployment)) {
            (Some(_), None) => Check::ok(v_what),
            (Some(theirs), Some(_)) => Check::fail(
                format!("{v_what}: the populator runs {theirs}"),
                format!("{INSTALL} with this plugin (or install the plugin of version {theirs})"),
            ),
            (None, _) => Check::skip(v_what, "the Deployment names no version"),
        });
    }
    out
}

/// What opening a repository with a Secret's settings gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It opened; the number of snapshots.
    Yes(usize),
    /// It did not; the error line.
    No(String),
    /// Not tried; why.
    NotTried(String),
}

/// The check of one repository Secret.
pub fn repository(namespace: &str, secret: &str, location: Option<&str>, opened: &Opened) -> Check {
    let what = match location {
        Some(loc) => format!("repository {loc} opens with Secret {namespace}/{secret}"),
        None => format!("repository Secret {namespace}/{secret}"),
    };
    match opened {
        Opened::Yes(n) => Check::ok(format!("{what} ({n} snapshot(s))")),
        Opened::NotTried(why) => Check::skip(what, why.clone()),
        Opened::No(err) => {
            let fix = if err.contains("wrong password") {
                format!(
                    "put the repository's password in the Secret (`kubectl -n {namespace} edit secret {secret}`, key VOLBACKUP_PASSWORD), or run `kubectl volbackup create` with the right one"
                )
            } else if location.is_none() {
                format!(
                    "the Secret needs VOLBACKUP_REPOSITORY (or RESTIC_REPOSITORY): run `kubectl volbackup create --repo ...` or fix the Secret {secret}"
                )
            } else {
                "check the location and the credentials in the Secret (`kubectl volbackup create --repo ...` rewrites it from your settings)".to_string()
            };
            Check::fail(format!("{what}: {err}"), fix)
        }
    }
}

/// When the namespace has no repository Secret at all.
pub fn no_repository(namespace: &str) -> Check {
    Check::ok(format!(
        "no repository Secret in namespace {namespace} yet (`kubectl volbackup create --repo ...` makes one per repository)"
    ))
}

/// The resource kinds an API group version serves; `Ok(None)` when it is absent, `Err` when
/// the caller may not look.
async fn served_kinds(
    client: &Client,
    group_version: &str,
) -> Result<Option<BTreeSet<String>>, kube::Error> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(Some(list.resources.into_iter().map(|r| r.kind).collect())),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_default(meta: &kube::api::ObjectMeta, annotation: &str) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .is_some_and(|v| v == "true")
}

/// The Secret's keys as text.
fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(s.string_data.clone().unwrap_or_default());
    out
}

/// Opens the repository the way a mover pod would: this binary, `snapshots -o name`, with
/// only the Secret's repository, password, S3 and CA settings in its environment.
async fn open_with(data: &BTreeMap<String, String>, location: &str) -> Opened {
    if !location.contains(':') && !std::path::Path::new(location).exists() {
        return Opened::NotTried(format!(
            "{location} is a directory on the nodes, not on this machine"
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Opened::NotTried(format!("cannot find this program: {e}")),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Opened::NotTried(format!("cannot make a temporary directory: {e}")),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["snapshots", "-o", "name", "--repo", location]);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("VOLBACKUP_") || k.starts_with("RESTIC_") || k.starts_with("AWS_") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in data {
        if k == "VOLBACKUP_CACERT" || k == "RESTIC_CACERT" {
            let path = dir.path().join("ca.pem");
            if std::fs::write(&path, v).is_ok() {
                cmd.env("VOLBACKUP_CACERT", &path);
            }
        } else if k == "RESTIC_PASSWORD_FILE" {
            continue;
        } else if volbackup_populator::mover::SECRET_KEYS.contains(&k.as_str()) {
            cmd.env(k, v);
        }
    }
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(OPEN_WAIT, cmd.output()).await {
        Err(_) => Opened::No(format!("no answer within {} s", OPEN_WAIT.as_secs())),
        Ok(Err(e)) => Opened::NotTried(format!("cannot run this program again: {e}")),
        Ok(Ok(out)) if out.status.success() => Opened::Yes(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .count(),
        ),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .or(err.lines().next())
                .unwrap_or("failed")
                .to_string();
            Opened::No(line)
        }
    }
}

/// Runs every check against the cluster, in the order printed.
async fn observe(args: &DoctorArgs) -> Result<Vec<Check>> {
    let kube = cluster::connect(&args.kube).await?;
    let client = &kube.client;
    let ns = kube.namespace.as_str();
    let mut checks = Vec::new();

    // Snapshots.
    let snapshot_kinds = served_kinds(client, "snapshot.storage.k8s.io/v1")
        .await
        .map_err(|e| explain(e, "discover", "the snapshot.storage.k8s.io API", None))?;
    checks.push(snapshot_crds(snapshot_kinds.as_ref()));
    let storage: Vec<Class> = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| explain_for::<StorageClass>(e, "list", &(), None))?
        .items
        .into_iter()
        .map(|c| Class {
            default: is_default(&c.metadata, DEFAULT_STORAGE_CLASS),
            name: c.name_any(),
            driver: c.provisioner,
        })
        .collect();
    if snapshot_kinds
        .as_ref()
        .is_some_and(|k| k.contains("VolumeSnapshotClass"))
    {
        let classes = cluster::volume_snapshot_class_resource();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &classes);
        let snapshot: Vec<Class> = api
            .list(&ListParams::default())
            .await
            .map_err(|e| explain_for::<DynamicObject>(e, "list", &classes, None))?
            .items
            .into_iter()
            .map(|c| Class {
                default: is_default(&c.metadata, DEFAULT_SNAPSHOT_CLASS),
                driver: c
                    .data
                    .get("driver")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                name: c.name_any(),
            })
            .collect();
        checks.extend(snapshot_classes(&storage, &snapshot));
    }
    checks.push(default_storage_class(&storage));

    // The populator.
    let crd = match served_kinds(client, "volbackup.io/v1alpha1").await {
        Ok(kinds) => Some(kinds.is_some_and(|k| k.contains("VolumeBackup"))),
        Err(e) if is_status(&e, 403) => None,
        Err(e) => return Err(explain(e, "discover", "the volbackup.io API", None)),
    };
    let vp = cluster_volume_populators(client);
    let registration = match vp.get_opt(VOLUME_POPULATOR_NAME).await {
        Ok(found) => Some(found.is_some()),
        Err(e) if is_status(&e, 404) => Some(false),
        Err(e) if is_status(&e, 403) => None,
        Err(e) => {
            return Err(explain(
                e,
                "get",
                "volumepopulators.populator.storage.k8s.io",
                None,
            ));
        }
    };
    let deployment = version::populator(&args.kube, &args.populator_namespace).await;
    checks.extend(populator(crd, registration, &deployment));

    // The repository Secrets of the namespace: those `create` and `restore` wrote (marked) and
    // those the VolumeBackups here name.
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut written = BTreeSet::new();
    if let Ok(list) = api
        .list_metadata(&ListParams::default().labels(&format!(
            "{}=true",
            volbackup_populator::mover::REPOSITORY_LABEL
        )))
        .await
    {
        written.extend(list.items.into_iter().filter_map(|s| s.metadata.name));
    }
    let mut secrets = written.clone();
    if crd == Some(true) {
        let backups: Api<VolumeBackup> = Api::namespaced(client.clone(), ns);
        if let Ok(list) = backups.list(&ListParams::default()).await {
            secrets.extend(
                list.items
                    .into_iter()
                    .map(|b| b.spec.repository.secret_ref.name),
            );
        }
    }
    let mut found = 0;
    for name in &secrets {
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) if written.contains(name) => continue,
            Ok(None) => {
                checks.push(Check::fail(
                    format!("repository Secret {ns}/{name}, named by a VolumeBackup: missing"),
                    format!("recreate it (`kubectl volbackup create --repo-secret {name}` needs it too), or restore with --repo"),
                ));
                found += 1;
                continue;
            }
            Err(e) if is_status(&e, 403) => {
                checks.push(Check::skip(
                    format!("repository Secret {ns}/{name}"),
                    "reading Secrets here is not allowed",
                ));
                found += 1;
                continue;
            }
            Err(e) => return Err(explain_for::<Secret>(e, "get", &(), Some(ns))),
        };
        found += 1;
        let data = secret_strings(&secret);
        let location = cluster::secret_repository(&secret);
        let opened = match &location {
            Some(loc) => open_with(&data, loc).await,
            None => Opened::No("it names no repository".into()),
        };
        checks.push(repository(ns, name, location.as_deref(), &opened));
    }
    if found == 0 {
        checks.push(no_repository(ns));
    }
    Ok(checks)
}

fn cluster_volume_populators(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "populator.storage.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "populator.storage.k8s.io/v1beta1".into(),
            kind: "VolumePopulator".into(),
            plural: "volumepopulators".into(),
        },
    )
}

/// `doctor`
pub fn run(args: &DoctorArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let checks = rt.block_on(observe(args))?;
    for c in &checks {
        println!("{}", c.line());
    }
    let failed = checks
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail(_)))
        .count();
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed (the FAIL lines above say how to fix them)",
            checks.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, default: bool) -> Class {
        Class {
            name: name.into(),
            driver: driver.into(),
            default,
        }
    }

    fn kinds(k: &[&str]) -> BTreeSet<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_three_snapshot_kinds_pass_and_a_missing_one_is_named() {
        let all = kinds(&SNAPSHOT_KINDS);
        assert_eq!(snapshot_crds(Some(&all)).verdict, Verdict::Ok);
        let two = kinds(&["VolumeSnapshot", "VolumeSnapshotClass"]);
        let c = snapshot_crds(Some(&two));
        assert!(c.line().starts_with("FAIL  "), "{}", c.line());
        assert!(
            c.what.ends_with("missing VolumeSnapshotContent"),
            "{}",
            c.what
        );
        assert!(
            snapshot_crds(None)
                .what
                .contains("missing VolumeSnapshot, ")
        );
    }

    #[test]
    fn each_csi_driver_needs_one_default_snapshot_class() {
        let storage = [
            class("fast", "a.csi.io", false),
            class("slow", "a.csi.io", false),
            class("other", "b.csi.io", false),
            class("local", "kubernetes.io/no-provisioner", true),
        ];
        let snaps = [class("snap-a", "a.csi.io", true)];
        let checks = snapshot_classes(&storage, &snaps);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert_eq!(checks[0].verdict, Verdict::Ok);
        assert!(
            checks[0]
                .what
                .contains("(StorageClass fast, slow): snap-a (default)")
        );
        assert!(
            matches!(&checks[1].verdict, Verdict::Fail(fix) if fix.contains("driver: b.csi.io"))
        );
    }

    #[test]
    fn a_snapshot_class_that_is_not_the_default_is_a_failure_naming_the_annotation() {
        let storage = [class("fast", "a.csi.io", false)];
        let checks = snapshot_classes(&storage, &[class("snap", "a.csi.io", false)]);
        assert!(
            matches!(&checks[0].verdict, Verdict::Fail(fix) if fix.contains("kubectl annotate volumesnapshotclass snap")),
            "{checks:?}"
        );
        let two = [class("x", "a.csi.io", true), class("y", "a.csi.io", true)];
        assert!(
            snapshot_classes(&storage, &two)[0]
                .what
                .contains("several defaults (x, y)")
        );
    }

    #[test]
    fn no_default_storage_class_fails() {
        assert!(matches!(
            default_storage_class(&[class("fast", "a", false)]).verdict,
            Verdict::Fail(_)
        ));
        assert_eq!(
            default_storage_class(&[class("fast", "a", true)]).line(),
            "ok    default StorageClass: fast"
        );
    }

    fn deployment(state: State, ready: Option<bool>, version: Option<&str>) -> Populator {
        Populator {
            state,
            namespace: "volbackup-system".into(),
            version: version.map(String::from),
            image: None,
            ready,
            reason: Some("why".into()),
        }
    }

    #[test]
    fn a_healthy_populator_passes_all_four_checks() {
        let d = deployment(State::Installed, Some(true), Some(version::VERSION));
        let checks = populator(Some(true), Some(true), &d);
        assert_eq!(checks.len(), 4);
        assert!(
            checks.iter().all(|c| c.verdict == Verdict::Ok),
            "{checks:?}"
        );
    }

    #[test]
    fn a_missing_populator_fails_with_install_and_an_old_one_with_its_version() {
        let gone = deployment(State::NotInstalled, None, None);
        let checks = populator(Some(false), Some(false), &gone);
        assert_eq!(checks.len(), 3);
        for c in &checks {
            assert!(
                c.line().contains("run `kubectl volbackup install`"),
                "{}",
                c.line()
            );
        }
        let old = deployment(State::Installed, Some(true), Some("0.0.1"));
        let checks = populator(Some(true), Some(true), &old);
        assert!(
            checks[3]
                .line()
                .starts_with("FAIL  populator version matches")
        );
        assert!(checks[3].line().contains("runs 0.0.1"));
    }

    #[test]
    fn a_wrong_password_says_where_the_password_goes() {
        let c = repository(
            "t",
            "volbackup-repository",
            Some("/srv/repo"),
            &Opened::No("wrong password: no key in /srv/repo opens with it".into()),
        );
        let line = c.line();
        assert!(line.starts_with("FAIL  repository /srv/repo opens with Secret t/volbackup-repository: wrong password"), "{line}");
        assert!(line.contains("key VOLBACKUP_PASSWORD"), "{line}");
        let ok = repository("t", "s", Some("/srv/repo"), &Opened::Yes(2));
        assert_eq!(
            ok.line(),
            "ok    repository /srv/repo opens with Secret t/s (2 snapshot(s))"
        );
    }
}
