//! The node's image service: pulls OCI images from a registry and keeps their unpacked root
//! filesystems, like containerd's image and snapshot stores (docs: "Images", image pull
//! policy; the OCI image and distribution specs).
//!
//! A reference `HOST[:PORT]/NAME[:TAG][@DIGEST]` is resolved to its manifest digest with
//! `skopeo inspect`, copied into an OCI layout with `skopeo copy` and unpacked with
//! `umoci raw unpack`. Root filesystems are cached by digest in a directory shared by every
//! cluster of the machine (`ClusterOptions::image_cache`), so a second pull of the same image is
//! free and a new build under the same tag is a new digest. Which digest a tag names is
//! remembered per node: `IfNotPresent` (the default for a tag other than `latest`) reuses it,
//! `Always` resolves again.
//!
//! Only registries on loopback are contacted (over plain HTTP, like a registry the node trusts
//! as insecure): this simulator never sends traffic off the machine, so any other registry
//! fails to pull, as an unreachable one would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// What a container needs from its image: the root filesystem and the image's config.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// The unpacked root filesystem (shared: never written; containers get an overlay on it).
    pub rootfs: PathBuf,
    /// The `config` section of the image configuration (`User`, `Env`, `Entrypoint`, `Cmd`,
    /// `WorkingDir`).
    pub config: ImageConfig,
}

/// The parts of an image's configuration a runtime uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`; empty is root.
    pub user: String,
    /// `Env` as `KEY=value`.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
}

impl ImageConfig {
    fn from_json(v: &Value) -> Self {
        let c = v.get("config").unwrap_or(&Value::Null);
        let list = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Self {
            user: text("User"),
            env: list("Env"),
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            working_dir: text("WorkingDir"),
        }
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Registry host and port (`docker.io` when the name has none).
    pub registry: String,
    /// Repository path within the registry.
    pub repository: String,
    /// Tag (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// `sha256:...` when the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference the way container runtimes normalise it.
    pub fn parse(image: &str) -> Reference {
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (image, None),
        };
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name[last_slash..].find(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Reference {
            registry,
            repository,
            tag,
            digest,
        }
    }

    /// Whether the registry is on this machine.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => self.registry.as_str(),
        };
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
    }

    /// `docker://registry/repository[:tag]` for skopeo.
    fn transport(&self, digest: Option<&str>) -> String {
        match (digest, &self.tag) {
            (Some(d), _) => format!("docker://{}/{}@{d}", self.registry, self.repository),
            (None, Some(t)) => format!("docker://{}/{}:{t}", self.registry, self.repository),
            (None, None) => format!("docker://{}/{}", self.registry, self.repository),
        }
    }
}

/// The node's images: the tags it has resolved and the shared cache of root filesystems.
pub struct ImageService {
    cache: PathBuf,
    resolved: Mutex<HashMap<String, Image>>,
}

/// Pulls into the shared cache one at a time (one process may run many clusters).
static PULLING: Mutex<()> = Mutex::new(());

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run {:?}: {e} (apt-get install skopeo umoci)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads a blob of an OCI layout by digest.
fn blob(layout: &Path, digest: &str) -> Result<Value, String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let path = layout.join("blobs/sha256").join(hex);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl ImageService {
    /// An image service caching root filesystems in `cache`.
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the node has already resolved `image` (an `IfNotPresent` pull is then free).
    pub fn has(&self, image: &str) -> bool {
        self.resolved
            .lock()
            .expect("images lock")
            .contains_key(image)
    }

    /// Pulls `image` under the pull policy (`Always`, `IfNotPresent`, `Never`); the error is
    /// the runtime's reason, as the kubelet reports it.
    pub fn pull(&self, image: &str, policy: &str) -> Result<Image, String> {
        if policy != "Always"
            && let Some(img) = self.resolved.lock().expect("images lock").get(image)
        {
            return Ok(img.clone());
        }
        if policy == "Never" {
            return Err(format!(
                "Container image \"{image}\" is not present with pull policy of Never"
            ));
        }
        let r = Reference::parse(image);
        let shown = match (&r.tag, &r.digest) {
            (_, Some(d)) => format!("{}/{}@{d}", r.registry, r.repository),
            (Some(t), None) => format!("{}/{}:{t}", r.registry, r.repository),
            (None, None) => format!("{}/{}", r.registry, r.repository),
        };
        let fail = |why: &str| format!("failed to pull and unpack image \"{shown}\": {why}");
        if !r.is_loopback() {
            return Err(fail(&format!(
                "failed to resolve reference \"{shown}\": pull access denied, repository does not exist or may require authorization"
            )));
        }
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => run(Command::new("skopeo").args([
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                &r.transport(None),
            ]))
            .map_err(|e| fail(&format!("failed to resolve reference \"{shown}\": {e}")))?,
        };
        let img = self.unpack(&r, &digest).map_err(|e| fail(&e))?;
        self.resolved
            .lock()
            .expect("images lock")
            .insert(image.to_string(), img.clone());
        Ok(img)
    }

    /// Removes cached images unpacked more than a day ago (every build of the project's image
    /// is a new digest; no test run lasts that long, so none is in use).
    fn evict_old(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        for e in entries.flatten() {
            let p = e.path();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > day);
            if p != keep && old {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }

    /// The cached root filesystem of `digest`, pulled and unpacked when missing.
    fn unpack(&self, r: &Reference, digest: &str) -> Result<Image, String> {
        let _one = PULLING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.cache.join(digest.replace(':', "-"));
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            std::fs::create_dir_all(&self.cache).map_err(|e| e.to_string())?;
            let tmp = self.cache.join(format!(".pull-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
            let layout = tmp.join("layout");
            run(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &r.transport(Some(digest)),
                &format!("oci:{}:image", layout.display()),
            ]))?;
            run(Command::new("umoci").args([
                "raw",
                "unpack",
                "--image",
                &format!("{}:image", layout.display()),
                &tmp.join("rootfs").to_string_lossy(),
            ]))?;
            let index: Value = std::fs::read(layout.join("index.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
            let manifest_digest = index
                .pointer("/manifests/0/digest")
                .and_then(Value::as_str)
                .ok_or("the OCI layout has no manifest")?;
            let manifest = blob(&layout, manifest_digest)?;
            let config_digest = manifest
                .pointer("/config/digest")
                .and_then(Value::as_str)
                .ok_or("the manifest names no config")?;
            let config = blob(&layout, config_digest)?;
            std::fs::write(
                tmp.join("config.json"),
                serde_json::to_vec(&config).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            std::fs::remove_dir_all(&layout).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())?;
            self.evict_old(&dir);
        }
        let config: Value = std::fs::read(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
        Ok(Image {
            digest: digest.to_string(),
            rootfs: dir.join("rootfs"),
            config: ImageConfig::from_json(&config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_a_container_runtime_does() {
        assert_eq!(
            Reference::parse("busybox"),
            Reference {
                registry: "docker.io".into(),
                repository: "library/busybox".into(),
                tag: Some("latest".into()),
                digest: None
            }
        );
        let r = Reference::parse("127.0.0.1:5000/volbackup/volbackup:0.1.0");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "volbackup/volbackup");
        assert_eq!(r.tag.as_deref(), Some("0.1.0"));
        assert!(r.is_loopback());
        let r = Reference::parse("localhost:5000/x@sha256:ab");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some("sha256:ab"));
        assert!(r.is_loopback());
        assert!(!Reference::parse("ghcr.io/volbackup/volbackup:0.1.0").is_loopback());
        assert!(!Reference::parse("10.0.0.1:5000/x:1").is_loopback());
    }

    #[test]
    fn a_registry_off_this_machine_is_never_contacted() {
        let svc = ImageService::new(std::env::temp_dir().join("kubesim-images-unused"));
        let err = svc
            .pull("ghcr.io/nobody/nothing:1", "IfNotPresent")
            .unwrap_err();
        assert!(
            err.starts_with("failed to pull and unpack image \"ghcr.io/nobody/nothing:1\""),
            "{err}"
        );
    }

    #[test]
    fn the_image_config_gives_user_entrypoint_and_env() {
        let c = ImageConfig::from_json(
            &serde_json::json!({"config": {"User": "65532:65532", "Entrypoint": ["/usr/local/bin/x"], "Env": ["PATH=/bin"]}}),
        );
        assert_eq!(c.user, "65532:65532");
        assert_eq!(c.entrypoint, vec!["/usr/local/bin/x"]);
        assert_eq!(c.env, vec!["PATH=/bin"]);
        assert!(c.cmd.is_empty());
    }
}
