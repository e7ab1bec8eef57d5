//! The container image: built with buildah from the top-level `Containerfile` and pushed to a
//! registry.
//!
//! The Containerfile takes its base as a build argument. The release passes a public minimal
//! base; a machine that cannot pull one (CI here) first makes [`LOCAL_BASE`] from the same
//! parts taken from the host: the binary's shared libraries (as `ldd` lists them), the CA
//! bundle, an `/etc/passwd` and `/etc/group` with `root` and `nonroot` (65532), `/tmp`. The
//! binary goes in stripped of debug information (a debug build is mostly that).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The base made from the host's parts.
pub const LOCAL_BASE: &str = "localhost/volbackup-base:local";

/// The repository root (where the Containerfile is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Build {
    /// The linux binary to put in the image.
    pub binary: PathBuf,
    /// The reference to tag and push (`127.0.0.1:5000/volbackup/volbackup:0.1.0`).
    pub reference: String,
    /// The base image; `None` makes and uses [`LOCAL_BASE`].
    pub base: Option<String>,
    /// The image's architecture (`amd64`, `arm64`).
    pub arch: String,
    /// The version label.
    pub version: String,
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown} (apt-get install buildah binutils)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// buildah with the storage driver that works on these machines (no overlay in a container).
fn buildah() -> Command {
    let mut c = Command::new("buildah");
    c.args(["--storage-driver", "vfs"]);
    c
}

/// The shared libraries a dynamic binary loads, as `ldd` resolves them (empty for a static one).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd (apt-get install libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    if libs.is_empty() {
        bail!("ldd found no libraries of {}: {text}", binary.display());
    }
    Ok(libs)
}

/// Writes the root filesystem of the local base into `root`.
pub fn local_base_tree(binary: &Path, root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for lib in shared_libraries(binary)? {
        // Each library at the path the loader asks for, as a file (not the host's link).
        let dest = root.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(dest.parent().expect("parent"))?;
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if !ca.is_file() {
        bail!(
            "{} is missing: apt-get install ca-certificates",
            ca.display()
        );
    }
    std::fs::create_dir_all(root.join("etc/ssl/certs"))?;
    std::fs::copy(ca, root.join("etc/ssl/certs/ca-certificates.crt"))?;
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
    for (d, mode) in [("tmp", 0o1777), ("root", 0o700), ("home/nonroot", 0o700)] {
        std::fs::create_dir_all(root.join(d))?;
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(mode))?;
    }
    std::os::unix::fs::chown(root.join("home/nonroot"), Some(65532), Some(65532))?;
    Ok(())
}

/// Removes an image from buildah's storage, if it is there.
fn remove_image(reference: &str) {
    let _ = buildah()
        .args(["rmi", "--force", reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Removes the images that earlier test runs pushed to their (now gone) loopback registries,
/// and untagged leftovers, so that repeated runs on one machine do not fill its disk.
pub fn remove_stale_test_images(keep: &str) {
    let Ok(listed) = run(buildah().args(["images", "--format", "{{.Name}}:{{.Tag}}"])) else {
        return;
    };
    for image in listed.lines().map(str::trim) {
        if image != keep && is_loopback_registry(image) && image.contains("/volbackup/volbackup:") {
            remove_image(image);
        }
    }
    let _ = buildah()
        .args(["rmi", "--prune"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Makes [`LOCAL_BASE`] for `binary`.
pub fn build_local_base(binary: &Path) -> Result<()> {
    remove_image(LOCAL_BASE);
    let dir = tempfile::tempdir()?;
    local_base_tree(binary, &dir.path().join("rootfs"))?;
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\n",
    )?;
    run(buildah()
        .args(["bud", "--quiet", "--layers=false", "-t", LOCAL_BASE, "-f"])
        .arg(dir.path().join("Containerfile"))
        .arg(dir.path()))?;
    Ok(())
}

/// Builds the image from the Containerfile and tags it `b.reference`.
pub fn build(b: &Build) -> Result<()> {
    let base = match &b.base {
        Some(base) => base.clone(),
        None => {
            build_local_base(&b.binary)?;
            LOCAL_BASE.to_string()
        }
    };
    // Each build would otherwise leave the previous image of this tag behind, untagged.
    remove_image(&b.reference);
    let context = tempfile::tempdir()?;
    let staged = context
        .path()
        .join(format!("kubectl-volbackup-linux-{}", b.arch));
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&b.binary)
        .arg(&staged))?;
    run(buildah()
        .args(["bud", "--quiet", "--layers=false", "--pull-never"])
        .args(["--build-arg", &format!("BASE={base}")])
        .args(["--build-arg", &format!("TARGETARCH={}", b.arch)])
        .args(["--build-arg", &format!("VERSION={}", b.version)])
        .args(["-t", &b.reference, "-f"])
        .arg(workspace_root().join("Containerfile"))
        .arg(context.path()))?;
    Ok(())
}

/// Pushes a built image to its registry (plain HTTP for a registry on loopback); gives the
/// manifest digest.
pub fn push(reference: &str) -> Result<String> {
    let digest_file = tempfile::NamedTempFile::new()?;
    let mut cmd = buildah();
    cmd.args(["push", "--quiet"]);
    if is_loopback_registry(reference) {
        cmd.arg("--tls-verify=false");
    }
    cmd.arg("--digestfile")
        .arg(digest_file.path())
        .arg(reference)
        .arg(format!("docker://{reference}"));
    run(&mut cmd)?;
    Ok(std::fs::read_to_string(digest_file.path())?
        .trim()
        .to_string())
}

/// Whether the reference's registry is this machine.
pub fn is_loopback_registry(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Runs `f` on the root filesystem of an image (mounted through a working container).
fn with_root<T>(reference: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let container = run(buildah().args(["from", "--quiet", "--pull-never", reference]))?;
    let out = run(buildah().args(["mount", &container])).and_then(|m| f(Path::new(&m)));
    let _ = run(buildah().args(["rm", &container]));
    out
}

/// A file of an image.
pub fn read_file(reference: &str, path: &str) -> Result<Vec<u8>> {
    with_root(reference, |root| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::read(&p).with_context(|| format!("{path} in {reference}"))
    })
}

/// Lists the files of an image (as `PATH` lines, directories ending in `/`) by mounting it.
pub fn list_files(reference: &str) -> Result<Vec<String>> {
    with_root(reference, |mount| {
        let mount = mount.to_path_buf();
        let mut out = Vec::new();
        let mut todo = vec![mount.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let p = e.path();
                let rel = format!("/{}", p.strip_prefix(&mount)?.display());
                if e.file_type()?.is_dir() {
                    out.push(format!("{rel}/"));
                    todo.push(p);
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    })
}

/// The image configuration's `config` section (`User`, `Entrypoint`, ...).
pub fn config(reference: &str) -> Result<serde_json::Value> {
    let text = run(buildah().args(["inspect", "--type", "image", reference]))?;
    let all: serde_json::Value = serde_json::from_str(&text)?;
    all.pointer("/OCIv1/config")
        .cloned()
        .with_context(|| format!("buildah inspect {reference} has no OCIv1.config"))
}
