//! `cargo xtask release`: the archives krew installs, their `SHA256SUMS`, and the krew manifest
//! rendered from `krew/volbackup.yaml` with the version and each archive's sha256.
//!
//! The release workflow builds each target on its own runner and hands the binaries in with
//! `--binary`; run by hand, the task builds the targets it is asked for itself. It only writes
//! into `--out` and never publishes: uploading is the workflow's step, so a local run cannot
//! release anything by accident.

mod archive;
mod krew;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The platforms krew installs the plugin on, named by the Rust target triple they are built for.
/// Linux builds are static musl binaries so they run on any distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Target {
    #[value(name = "x86_64-unknown-linux-musl")]
    LinuxAmd64,
    #[value(name = "aarch64-unknown-linux-musl")]
    LinuxArm64,
    #[value(name = "x86_64-apple-darwin")]
    DarwinAmd64,
    #[value(name = "aarch64-apple-darwin")]
    DarwinArm64,
}

impl Target {
    pub const ALL: [Target; 4] = [
        Target::LinuxAmd64,
        Target::LinuxArm64,
        Target::DarwinAmd64,
        Target::DarwinArm64,
    ];

    pub fn triple(self) -> &'static str {
        match self {
            Target::LinuxAmd64 => "x86_64-unknown-linux-musl",
            Target::LinuxArm64 => "aarch64-unknown-linux-musl",
            Target::DarwinAmd64 => "x86_64-apple-darwin",
            Target::DarwinArm64 => "aarch64-apple-darwin",
        }
    }

    /// krew's `os` label.
    pub fn os(self) -> &'static str {
        match self {
            Target::LinuxAmd64 | Target::LinuxArm64 => "linux",
            Target::DarwinAmd64 | Target::DarwinArm64 => "darwin",
        }
    }

    /// krew's `arch` label.
    pub fn arch(self) -> &'static str {
        match self {
            Target::LinuxAmd64 | Target::DarwinAmd64 => "amd64",
            Target::LinuxArm64 | Target::DarwinArm64 => "arm64",
        }
    }

    /// The manifest placeholder for this platform's sha256, without braces.
    pub fn placeholder(self) -> String {
        format!(
            "SHA256_{}_{}",
            self.os().to_uppercase(),
            self.arch().to_uppercase()
        )
    }

    /// The archive's file name, the last part of the manifest's `uri`.
    pub fn archive_name(self, version: &str) -> String {
        format!("kubectl-volbackup-v{version}-{}.tar.gz", self.triple())
    }
}

/// Options of `cargo xtask release`.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The version, without the leading `v` of its tag (e.g. 0.2.0).
    #[arg(long, value_parser = parse_version)]
    pub version: String,
    /// The folder that receives the archives, SHA256SUMS and volbackup.yaml (made if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// A target to build with `cargo build --release` (repeatable). Without any --target or
    /// --binary all four are built.
    #[arg(long = "target", value_name = "TRIPLE")]
    pub targets: Vec<Target>,
    /// A plugin binary built elsewhere for TRIPLE, packed as it is (repeatable).
    #[arg(long = "binary", value_name = "TRIPLE=PATH", value_parser = parse_binary)]
    pub binaries: Vec<(Target, PathBuf)>,
    /// Leave platforms that were not built out of the manifest instead of failing.
    #[arg(long)]
    pub partial: bool,
}

/// Where one target's binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Build,
    Prebuilt(PathBuf),
}

/// Packs the archives, writes `SHA256SUMS` and renders the manifest, as `args` asks.
pub fn run(args: &ReleaseArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let template_path = root.join("krew/volbackup.yaml");
    let template = std::fs::read_to_string(&template_path)
        .with_context(|| format!("reading {}", template_path.display()))?;
    let license_path = root.join("LICENSE");
    let license = std::fs::read(&license_path)
        .with_context(|| format!("reading {}", license_path.display()))?;
    let plan = plan(&args.targets, &args.binaries)?;

    // A manifest that cannot be rendered should fail the run before a build spends minutes;
    // rendering with stand-in sums checks every placeholder, uri and platform label.
    let stand_in: BTreeMap<Target, String> = plan.keys().map(|t| (*t, "0".repeat(64))).collect();
    krew::render(&template, &args.version, &stand_in, args.partial)
        .context("krew/volbackup.yaml")?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut sums = BTreeMap::new();
    for (target, source) in &plan {
        let binary = match source {
            Source::Build => build(&root, *target)?,
            Source::Prebuilt(path) => path.clone(),
        };
        let bytes =
            std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
        archive::check_executable(&bytes, *target)
            .with_context(|| format!("{}={}", target.triple(), binary.display()))?;
        let packed = archive::pack(&bytes, &license)?;
        let name = target.archive_name(&args.version);
        let path = args.out.join(&name);
        std::fs::write(&path, &packed).with_context(|| format!("writing {}", path.display()))?;
        sums.insert(*target, hex::encode(Sha256::digest(&packed)));
        println!("{}", path.display());
    }

    let sums_path = args.out.join("SHA256SUMS");
    std::fs::write(&sums_path, sha256sums(&args.version, &sums))
        .with_context(|| format!("writing {}", sums_path.display()))?;
    println!("{}", sums_path.display());

    let manifest = krew::render(&template, &args.version, &sums, args.partial)
        .context("krew/volbackup.yaml")?;
    let manifest_path = args.out.join("volbackup.yaml");
    std::fs::write(&manifest_path, manifest)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    println!("{}", manifest_path.display());
    Ok(())
}

/// Which targets to pack and where each binary comes from: every `--target` is built, every
/// `--binary` is taken as given, and with neither all four are built.
pub fn plan(
    targets: &[Target],
    binaries: &[(Target, PathBuf)],
) -> anyhow::Result<BTreeMap<Target, Source>> {
    let mut plan = BTreeMap::new();
    if targets.is_empty() && binaries.is_empty() {
        plan.extend(Target::ALL.map(|t| (t, Source::Build)));
    }
    for target in targets {
        // A repeated --target asks for the same build twice: harmless, so it is not refused.
        plan.insert(*target, Source::Build);
    }
    for (target, path) in binaries {
        match plan.insert(*target, Source::Prebuilt(path.clone())) {
            None => {}
            Some(Source::Build) => bail!(
                "{} is given both as --target (build it) and as --binary (take {}): pick one",
                target.triple(),
                path.display()
            ),
            Some(Source::Prebuilt(first)) => bail!(
                "{} is given two binaries: {} and {}",
                target.triple(),
                first.display(),
                path.display()
            ),
        }
    }
    Ok(plan)
}

/// `SHA256SUMS` in the format `sha256sum --check` reads: the sum, two spaces, the file name.
fn sha256sums(version: &str, sums: &BTreeMap<Target, String>) -> String {
    sums.iter()
        .map(|(target, sum)| format!("{sum}  {}\n", target.archive_name(version)))
        .collect()
}

/// The checkout this xtask was built from: the tasks read `krew/` and `LICENSE` there.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// One line of `cargo build --message-format=json`: only the fields that name a built binary.
#[derive(serde::Deserialize)]
struct CargoMessage {
    reason: String,
    target: Option<CargoTarget>,
    executable: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct CargoTarget {
    name: String,
}

/// Builds the plugin for `target` with the release profile and returns the binary's path, as
/// cargo reports it (so a `CARGO_TARGET_DIR` or a `build.target-dir` setting is honoured).
fn build(root: &Path, target: Target) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building kubectl-volbackup for {}", target.triple());
    let output = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "kubectl-volbackup"])
        .args(["--target", target.triple()])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!(
            "cargo build --release --target {} failed ({}; its errors are above)",
            target.triple(),
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<CargoMessage>(line).ok())
        .filter(|m| m.reason == "compiler-artifact")
        .filter(|m| {
            m.target
                .as_ref()
                .is_some_and(|t| t.name == "kubectl-volbackup")
        })
        .find_map(|m| m.executable)
        .with_context(|| {
            format!(
                "cargo build --target {} reported no kubectl-volbackup binary",
                target.triple()
            )
        })
}

/// `--version`: what goes after the `v` in the tag and the archive names.
fn parse_version(value: &str) -> Result<String, String> {
    if value.starts_with('v') {
        return Err("give the version without its leading v (the tag is v<VERSION>)".into());
    }
    if !value.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a version starts with a digit, e.g. 0.2.0".into());
    }
    // The version ends up in a URL and in file names: nothing that needs escaping there.
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-+".contains(*c)))
    {
        return Err(format!("{bad:?} has no place in a version"));
    }
    Ok(value.to_string())
}

/// `--binary TRIPLE=PATH`.
fn parse_binary(value: &str) -> Result<(Target, PathBuf), String> {
    let (triple, path) = value
        .split_once('=')
        .ok_or("expected TRIPLE=PATH, e.g. x86_64-unknown-linux-musl=dist/kubectl-volbackup")?;
    let target = <Target as clap::ValueEnum>::from_str(triple, false).map_err(|_| {
        let known: Vec<_> = Target::ALL.iter().map(|t| t.triple()).collect();
        format!(
            "{triple} is not a release target (known: {})",
            known.join(", ")
        )
    })?;
    if path.is_empty() {
        return Err(format!("no path after {triple}="));
    }
    Ok((target, PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_targets_or_binaries_all_four_targets_are_built() {
        let plan = plan(&[], &[]).unwrap();
        assert_eq!(plan.keys().copied().collect::<Vec<_>>(), Target::ALL);
        assert!(plan.values().all(|s| *s == Source::Build));
    }

    #[test]
    fn a_binary_is_taken_as_given_and_only_the_named_targets_are_packed() {
        let plan = plan(
            &[Target::DarwinArm64],
            &[(Target::LinuxAmd64, PathBuf::from("bin/x"))],
        )
        .unwrap();
        assert_eq!(
            plan.into_iter().collect::<Vec<_>>(),
            [
                (Target::LinuxAmd64, Source::Prebuilt(PathBuf::from("bin/x"))),
                (Target::DarwinArm64, Source::Build),
            ]
        );
    }

    #[test]
    fn a_target_given_both_to_build_and_as_a_binary_is_refused() {
        let err = plan(
            &[Target::LinuxArm64],
            &[(Target::LinuxArm64, PathBuf::from("bin/x"))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "aarch64-unknown-linux-musl is given both as --target (build it) and as --binary (take bin/x): pick one"
        );
    }

    #[test]
    fn two_binaries_for_one_target_are_refused() {
        let err = plan(
            &[],
            &[
                (Target::DarwinAmd64, PathBuf::from("a")),
                (Target::DarwinAmd64, PathBuf::from("b")),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "x86_64-apple-darwin is given two binaries: a and b"
        );
    }

    #[test]
    fn placeholders_and_archive_names_follow_the_manifest_naming() {
        assert_eq!(Target::DarwinAmd64.placeholder(), "SHA256_DARWIN_AMD64");
        assert_eq!(Target::LinuxArm64.placeholder(), "SHA256_LINUX_ARM64");
        assert_eq!(
            Target::LinuxAmd64.archive_name("1.2.3"),
            "kubectl-volbackup-v1.2.3-x86_64-unknown-linux-musl.tar.gz"
        );
    }

    #[test]
    fn a_version_with_its_tag_v_is_refused() {
        assert_eq!(
            parse_version("v1.0.0").unwrap_err(),
            "give the version without its leading v (the tag is v<VERSION>)"
        );
        assert!(parse_version("1.0.0/x").is_err());
        assert!(parse_version("").is_err());
        assert_eq!(parse_version("1.0.0-rc.1").unwrap(), "1.0.0-rc.1");
    }

    #[test]
    fn a_binary_for_an_unknown_triple_is_refused_naming_the_known_ones() {
        assert_eq!(
            parse_binary("x86_64-unknown-linux-gnu=bin/x").unwrap_err(),
            "x86_64-unknown-linux-gnu is not a release target (known: x86_64-unknown-linux-musl, \
             aarch64-unknown-linux-musl, x86_64-apple-darwin, aarch64-apple-darwin)"
        );
        assert!(parse_binary("bin/x").is_err());
        assert!(parse_binary("x86_64-apple-darwin=").is_err());
        assert_eq!(
            parse_binary("x86_64-apple-darwin=a=b").unwrap(),
            (Target::DarwinAmd64, PathBuf::from("a=b"))
        );
    }

    #[test]
    fn sha256sums_lists_each_archive_as_sha256sum_writes_it() {
        let sums = BTreeMap::from([
            (Target::LinuxAmd64, "ab".repeat(32)),
            (Target::DarwinArm64, "cd".repeat(32)),
        ]);
        assert_eq!(
            sha256sums("0.3.0", &sums),
            format!(
                "{}  kubectl-volbackup-v0.3.0-x86_64-unknown-linux-musl.tar.gz\n\
                 {}  kubectl-volbackup-v0.3.0-aarch64-apple-darwin.tar.gz\n",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
    }
}
