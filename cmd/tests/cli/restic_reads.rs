//! restic reads what the binary wrote: a backed-up image checks and dumps back identical, and
//! `snapshots` lists what restic lists.

use super::*;

#[test]
fn an_image_backed_up_by_the_binary_passes_restic_check_and_dumps_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let image = dir.path().join("disk.img");
    let data = mixed_data(24);
    std::fs::write(&image, &data).unwrap();

    let out = ok(
        bin()
            .args(["mover", "backup", "--json", "--tag", "pvc=data", "--repo"])
            .arg(&repo)
            .arg("--source")
            .arg(&image)
            .output()
            .unwrap(),
        "mover backup",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["bytes_total"], data.len() as u64);
    assert!(
        stdout.lines().any(|l| l.contains("\"progress\"")),
        "no progress line in: {stdout}"
    );
    let snap = last["snapshot_id"].as_str().unwrap().to_string();

    assert_restic_checks_and_dumps(&repo, &snap, "/disk.img", &data);

    let target = dir.path().join("restored.img");
    ok(
        bin()
            .args(["mover", "restore", "--snapshot", "latest", "--repo"])
            .arg(&repo)
            .arg("--target")
            .arg(&target)
            .output()
            .unwrap(),
        "mover restore",
    );
    assert!(
        std::fs::read(&target).unwrap() == data,
        "restored image differs"
    );
}

#[test]
fn snapshots_lists_what_restic_lists() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let src = dir.path().join("a.img");
    std::fs::write(&src, mixed_data(2)).unwrap();
    for tag in ["one", "two"] {
        ok(
            bin()
                .args(["mover", "backup", "-q", "--tag", tag, "--repo"])
                .arg(&repo)
                .arg("--source")
                .arg(&src)
                .output()
                .unwrap(),
            "backup",
        );
    }
    let ours = ok(
        bin()
            .args(["snapshots", "-o", "json", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "snapshots",
    );
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    let theirs = ok(
        restic(&repo)
            .args(["snapshots", "--json"])
            .output()
            .unwrap(),
        "restic snapshots",
    );
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let ids = |v: &serde_json::Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&ours), ids(&theirs));
    assert_eq!(ours.as_array().unwrap().len(), 2);
    let table = ok(
        bin()
            .args(["snapshots", "--repo"])
            .arg(&repo)
            .output()
            .unwrap(),
        "snapshots table",
    );
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("ID") && table.contains("one") && table.contains("two"),
        "{table}"
    );
}
