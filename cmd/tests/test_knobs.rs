//! The engine's test knobs (`VOLBACKUP_LOCK_STALE_AFTER`, which shortens the age at which a
//! lock turns stale) stay out of the plugin that users run: the engine honours them only with
//! its `test-knobs` feature, and only dev-dependencies turn that on. A leftover export, or a
//! Secret key copied into a pod, must not let a prune pass over the locks of running backups.
//! That the engine ignores the variable without the feature is its own unit test
//! (`store/src/lock.rs`); here, what cargo resolves for the binary's builds.

use std::path::Path;
use std::process::Command;

/// The features cargo turns on for volbackup-store when it builds kubectl-volbackup with the
/// dependency `edges` (`normal,build`: `cargo build`, release or not; with `dev`: a build of
/// the tests).
fn store_features(edges: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["tree", "--frozen", "-p", "kubectl-volbackup", "-e", edges])
        .args(["--prefix", "none", "-f", "{p}|{f}", "-i", "volbackup-store"])
        .output()
        .expect("run cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("volbackup-store "))
        .unwrap_or_else(|| panic!("volbackup-store is not in the tree: {stdout}"));
    let (_, features) = line.split_once('|').expect("package|features");
    features
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn only_builds_of_the_tests_give_the_plugin_the_engines_test_knobs() {
    let built = store_features("normal,build");
    assert!(
        !built.iter().any(|f| f == "test-knobs"),
        "`cargo build -p kubectl-volbackup` turns on the test knobs: {built:?}"
    );
    // The look above would see the feature: a build of the tests has it.
    let tested = store_features("normal,build,dev");
    assert!(
        tested.iter().any(|f| f == "test-knobs"),
        "the tests' build lacks the test knobs: {tested:?}"
    );
}
