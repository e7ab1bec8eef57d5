//! Damaged files in a repository as a user meets them: a backup or a restore passes over an
//! index or snapshot file it cannot use with a `warning:` line naming it, `repo check`
//! reports it, and prune refuses to run while it is there.

use super::*;

fn run(args: &[&str], repo: &Path) -> Output {
    bin().args(args).arg("--repo").arg(repo).output().unwrap()
}

/// Bytes that do not compress, deterministic per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// 500 random bytes in `repo/<dir>/<name>`: the name is not their hash.
fn plant(repo: &Path, dir: &str, seed: u64) -> String {
    let name = format!("{:016x}", seed).repeat(4);
    std::fs::write(repo.join(dir).join(&name), noise(500, seed)).unwrap();
    name
}

/// The names of the files in `data/` and `index/`.
fn packs_and_indexes(repo: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut dirs = vec![repo.join("data"), repo.join("index")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                names.push(p.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    names
}

/// The `warning:` lines of `out` that name `path`.
fn warnings_naming(out: &Output, path: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning: ") && l.contains(path))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_damaged_index_or_snapshot_file_is_passed_over_with_a_warning_reported_by_check_and_refused_by_prune()
 {
    let dir = tempfile::tempdir().unwrap();
    let repo: PathBuf = dir.path().join("repo");
    ok(run(&["repo", "init"], &repo), "repo init");
    let src = dir.path().join("disk.img");
    std::fs::write(&src, noise(3 << 20, 1)).unwrap();
    let backup = || {
        bin()
            .args(["mover", "backup", "-q", "--repo"])
            .arg(&repo)
            .arg("--source")
            .arg(&src)
            .output()
            .unwrap()
    };
    ok(backup(), "first mover backup");
    let index = format!("index/{}", plant(&repo, "index", 0x1dec5));
    let snapshot = format!("snapshots/{}", plant(&repo, "snapshots", 0x5a95));

    // The next backup of the same source looks for its parent among the snapshots.
    let second = noise(3 << 20, 2);
    std::fs::write(&src, &second).unwrap();
    let out = ok(backup(), "mover backup beside damaged files");
    for path in [&index, &snapshot] {
        let lines = warnings_naming(&out, path);
        assert_eq!(lines.len(), 1, "not one warning naming {path}: {lines:?}");
        assert!(lines[0].contains("repo check"), "{}", lines[0]);
    }

    let target = dir.path().join("out.img");
    let out = ok(
        bin()
            .args(["mover", "restore", "-q", "--snapshot", "latest", "--repo"])
            .arg(&repo)
            .arg("--target")
            .arg(&target)
            .output()
            .unwrap(),
        "mover restore latest beside damaged files",
    );
    assert!(
        std::fs::read(&target).unwrap() == second,
        "restored image differs"
    );
    for path in [&index, &snapshot] {
        assert_eq!(
            warnings_naming(&out, path).len(),
            1,
            "no warning naming {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = run(&["repo", "check"], &repo);
    assert!(!out.status.success(), "check passed a damaged repository");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&index) && said.contains(&snapshot), "{said}");

    let before = packs_and_indexes(&repo);
    let out = run(&["prune"], &repo);
    assert!(!out.status.success(), "prune ran beside damaged files");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && (err.contains(&index) || err.contains(&snapshot)),
        "{err}"
    );
    assert_eq!(
        packs_and_indexes(&repo),
        before,
        "a refused prune changed the repository"
    );
}
