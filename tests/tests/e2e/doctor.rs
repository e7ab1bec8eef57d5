//! `kubectl volbackup doctor` and `version` end to end: what a healthy cluster shows, and the
//! named FAIL line and exit code of each thing a newcomer's cluster commonly lacks.

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

use crate::common::*;

const SYSTEM: &str = "volbackup-system";

fn storage_classes_ar() -> kube::api::ApiResource {
    ar("storage.k8s.io", "v1", "StorageClass", "storageclasses")
}

/// Marks the test cluster's class `fast` as the default StorageClass.
async fn make_fast_the_default(env: &Env) {
    let api: Api<DynamicObject> = Api::all_with(env.client.clone(), &storage_classes_ar());
    api.patch(
        "fast",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}})),
    )
    .await
    .expect("annotate the StorageClass");
}

/// Writes the repository Secret `create` would write, with this password.
async fn repository_secret(env: &Env, password: &str) {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    let name = crate::common::repository_secret(env);
    let _ = api.delete(&name, &DeleteParams::default()).await;
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": {"volbackup.io/repository": "true"}},
    }))
    .expect("secret");
    secret.data = Some(
        [
            ("VOLBACKUP_REPOSITORY", env.repo.to_str().unwrap()),
            ("VOLBACKUP_PASSWORD", password),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect(),
    );
    api.create(&Default::default(), &secret)
        .await
        .expect("write the repository Secret");
}

async fn doctor(env: &Env) -> Outcome {
    env.plugin(&["doctor", "-n", NS], &[]).await
}

fn assert_line(out: &Outcome, start: &str) {
    assert!(
        out.stdout.lines().any(|l| l.starts_with(start)),
        "no line starting {start:?} in:\n{}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

fn assert_failed(out: &Outcome, start: &str) {
    assert_ne!(out.code, 0, "doctor passed:\n{}", out.stdout);
    assert_line(out, start);
    assert!(
        out.stderr.contains("checks failed"),
        "stderr: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_missing_populator_and_exits_non_zero() {
    let env = Env::start().await;
    make_fast_the_default(&env).await;
    let out = doctor(&env).await;
    assert_failed(
        &out,
        &format!(
            "FAIL  populator Deployment {SYSTEM}/volbackup-populator: missing; fix: run `kubectl volbackup install`"
        ),
    );
    // What is there is said to be there.
    assert_line(&out, "ok    snapshot CRDs (snapshot.storage.k8s.io/v1)");
    assert_line(&out, "ok    VolumeBackup CRD (volumebackups.volbackup.io)");
    assert_line(&out, "ok    default StorageClass: fast");
    // `version` says the same, and succeeds: it only reports.
    let v = env.plugin(&["version"], &[]).await;
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stdout.contains(
            "Populator version: not installed (no Deployment volbackup-system/volbackup-populator"
        ),
        "{}",
        v.stdout
    );
}

/// Output with what differs between runs replaced: the backup's name, the repository's path and
/// Secret, ids, uids, times, ages, resource versions and the stored size (compressed metadata
/// with times in it); in tables, runs of spaces become one (padding follows the replaced values'
/// widths).
fn stable(env: &Env, name: &str, text: &str, table: bool) -> String {
    let mut t = text
        .replace(name, "[NAME]")
        .replace(&crate::common::repository_secret(env), "[SECRET]")
        .replace(env.repo.to_str().unwrap(), "[REPO]");
    for (pattern, with) in [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "[UID]",
        ),
        // YAML quotes an id that reads as a number ('12345678', '1234e567');
        // the quotes are the serializer's choice, not part of the record.
        (r"(?m)(: )'([0-9a-f]+)'$", "${1}${2}"),
        (r"\b[0-9a-f]{64}\b", "[SNAPSHOT]"),
        (r"\b[0-9a-f]{8}\b", "[SHORT]"),
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
        (r#"("?resourceVersion"?: )["']?\d+["']?"#, "${1}[RV]"),
        // Also inside the result annotation, where the record is JSON in a string.
        (r#"(bytesStored\\?"?:\s*)\d+"#, "${1}[BYTES]"),
        (r"\b\d+[smhd]\b", "[AGE]"),
        (r"snap(shot)?-?[0-9a-z-]*[0-9][0-9a-z-]*", "[HANDLE]"),
    ] {
        t = regex::Regex::new(pattern)
            .expect("pattern")
            .replace_all(&t, with)
            .into_owned();
    }
    if table {
        t = regex::Regex::new(r" {2,}")
            .expect("pattern")
            .replace_all(&t, " ")
            .into_owned();
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_healthy_install_and_names_a_missing_snapshot_class() {
    let env = Env::start().await;
    make_fast_the_default(&env).await;
    let install = env.plugin(&["install"], &[]).await;
    assert_eq!(install.code, 0, "install failed: {}", install.stderr);
    // A backup, so the namespace has the repository Secret `create` writes.
    env.pvc("vol", "Block", "2Mi", json!({})).await;
    let created = env.create_backup(&["vol"]).await;
    assert_eq!(created.code, 0, "create failed: {}", created.stderr);
    // The result is data, on stdout; `list` names it the same way in every format.
    let name = created
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("volumebackup.volbackup.io/"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("create printed no backup on stdout: {}", created.stdout))
        .to_string();
    let names = env.plugin(&["list", "-n", NS, "-o", "name"], &[]).await;
    assert_eq!(names.stdout, format!("volumebackup.volbackup.io/{name}\n"));
    let table = env.plugin(&["list", "-n", NS], &[]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", table.stdout);
    assert!(
        lines[0].contains("NAME") && lines[1].contains(&name),
        "{}",
        table.stdout
    );
    let bare = env.plugin(&["list", "-n", NS, "--no-headers"], &[]).await;
    // The same row (columns are only as wide as their values without the header).
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(bare.stdout.lines().count(), 1, "{}", bare.stdout);
    assert_eq!(words(&bare.stdout), words(lines[1]));
    for format in ["json", "yaml"] {
        let out = env.plugin(&["list", "-n", NS, "-o", format], &[]).await;
        let items: Vec<serde_json::Value> = if format == "json" {
            serde_json::from_str(&out.stdout).expect("JSON")
        } else {
            serde_yaml::from_str(&out.stdout).expect("YAML")
        };
        assert_eq!(items.len(), 1, "{}", out.stdout);
        assert_eq!(items[0]["metadata"]["name"], json!(name));
    }
    // What users read, pinned: `list` in every output format, with what differs from run to
    // run (names, ids, times, paths) replaced.
    for (format, args) in [
        ("table", &[][..]),
        ("no-headers", &["--no-headers"][..]),
        ("wide", &["-o", "wide"][..]),
        ("name", &["-o", "name"][..]),
        ("json", &["-o", "json"][..]),
        ("yaml", &["-o", "yaml"][..]),
    ] {
        let mut argv = vec!["list", "-n", NS];
        argv.extend_from_slice(args);
        let out = env.plugin(&argv, &[]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let table = matches!(format, "table" | "no-headers" | "wide");
        insta::assert_snapshot!(
            format!("list-{format}"),
            stable(&env, &name, &out.stdout, table)
        );
    }

    let out = doctor(&env).await;
    assert_eq!(
        out.code, 0,
        "doctor failed on a healthy install:\n{}\n{}",
        out.stdout, out.stderr
    );
    for l in out.stdout.lines() {
        assert!(l.starts_with("ok    "), "not ok: {l}");
    }
    for start in [
        "ok    VolumeSnapshotClass for CSI driver hostpath.csi.kubesim.io (StorageClass fast): snap (default)",
        "ok    VolumePopulator volbackup-volumebackup",
        &format!("ok    populator Deployment {SYSTEM}/volbackup-populator: ready"),
        "ok    populator version matches the plugin",
        &format!(
            "ok    repository {} opens with Secret {NS}/{} (1 snapshot(s))",
            env.repo.display(),
            crate::common::repository_secret(&env)
        ),
    ] {
        assert_line(&out, start);
    }

    // `version` reads the installed populator: the same version, this build's image.
    let v = env.plugin(&["version", "-o", "json"], &[]).await;
    assert_eq!(v.code, 0, "{}", v.stderr);
    let report: serde_json::Value = serde_json::from_str(&v.stdout).expect("JSON");
    assert_eq!(report["plugin"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["populator"]["state"], "installed");
    assert_eq!(report["populator"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["populator"]["image"], json!(env.image));
    assert_eq!(report["populator"]["ready"], true);
    assert_eq!(v.stderr, "", "a matching populator is no warning");

    // Without the driver's snapshot class, backups of its volumes cannot start.
    Api::<DynamicObject>::all_with(env.client.clone(), &snapclass_ar())
        .delete("snap", &DeleteParams::default())
        .await
        .expect("delete the snapshot class");
    let out = doctor(&env).await;
    assert_failed(
        &out,
        "FAIL  VolumeSnapshotClass for CSI driver hostpath.csi.kubesim.io (StorageClass fast): none; fix: create a VolumeSnapshotClass with driver: hostpath.csi.kubesim.io",
    );

    // A populator of another version: a warning from `version`, a FAIL from `doctor`.
    Api::<DynamicObject>::namespaced_with(
        env.client.clone(),
        SYSTEM,
        &ar("apps", "v1", "Deployment", "deployments"),
    )
    .patch(
        "volbackup-populator",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/version": "0.0.1"}}})),
    )
    .await
    .expect("relabel the Deployment");
    let v = env.plugin(&["version"], &[]).await;
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(
        v.stderr
            .starts_with("warning: the populator in volbackup-system runs version 0.0.1"),
        "{}",
        v.stderr
    );
    let out = doctor(&env).await;
    assert_failed(&out, "FAIL  populator version matches the plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_wrong_repository_password_and_never_prints_it() {
    let env = Env::start().await;
    make_fast_the_default(&env).await;
    let wrong = "not-the-password-91c2";
    repository_secret(&env, wrong).await;
    let out = doctor(&env).await;
    assert_failed(
        &out,
        &format!(
            "FAIL  repository {} opens with Secret {NS}/{}: wrong password",
            env.repo.display(),
            crate::common::repository_secret(&env)
        ),
    );
    assert!(
        !out.stdout.contains(wrong) && !out.stderr.contains(wrong),
        "the Secret's password was printed"
    );
    // The right one opens it.
    repository_secret(&env, PASSWORD).await;
    let out = doctor(&env).await;
    assert_line(
        &out,
        &format!(
            "ok    repository {} opens with Secret {NS}/{} (0 snapshot(s))",
            env.repo.display(),
            crate::common::repository_secret(&env)
        ),
    );
}
