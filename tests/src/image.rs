//! This build's container image in a registry on loopback, for the end-to-end tests: the
//! project's pods in kubesim are started from it, as a cluster starts them from the release.
//!
//! Once per test process: a CNCF distribution registry (Debian's `docker-registry`) is started
//! on a free port of 127.0.0.1 with its storage in a temporary directory, the image is built
//! from the top-level `Containerfile` with buildah (`xtask::image`, base made from this
//! machine's libraries) around the given binary, and pushed there as
//! `127.0.0.1:<port>/volbackup/volbackup:<version>`. The registry lives as long as the test
//! process: a watcher kills it and removes its storage when the process ends.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The image the tests run.
pub struct TestImage {
    /// `127.0.0.1:<port>/volbackup/volbackup:<version>`.
    pub reference: String,
    /// The manifest digest the push reported.
    pub digest: String,
    /// `127.0.0.1:<port>`.
    pub registry: String,
    _server: Mutex<(Child, Option<ChildStdin>)>,
}

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Whether `GET /v2/` answers 200.
fn registry_answers(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if String::from_utf8_lossy(&buf[..n]).contains(" 200 "))
}

fn start_registry() -> (String, Child, Option<ChildStdin>) {
    assert!(
        Path::new(REGISTRY_BIN).is_file(),
        "{REGISTRY_BIN} is missing: apt-get install docker-registry (the tests serve the image from it)"
    );
    let dir = std::env::temp_dir().join(format!("volbackup-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("registry dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .expect("registry config");
    let log = std::fs::File::create(dir.join("registry.log")).expect("registry log");
    // The shell runs the registry; a watcher waits on the shell's stdin (our pipe): when this
    // process ends the pipe closes, and the watcher stops the registry and removes its data.
    let script = r#"exec 3<&0
"$0" serve "$1" </dev/null & pid=$!
( read _ignored <&3; kill "$pid" 2>/dev/null; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; rm -rf "$2" ) &
wait "$pid""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(REGISTRY_BIN)
        .arg(&config)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("the registry starts");
    let stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !registry_answers(&addr) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the registry exited ({status}): {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not answer on {addr} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (addr, child, stdin)
}

static IMAGE: OnceLock<TestImage> = OnceLock::new();

/// This build's image, built around `binary` and pushed to the test registry (once per process).
pub fn test_image(binary: &Path) -> &'static TestImage {
    IMAGE.get_or_init(|| {
        for tool in ["buildah", "skopeo", "umoci", "runc", "objcopy"] {
            assert!(
                on_path(tool),
                "`{tool}` is missing from PATH: apt-get install buildah skopeo umoci runc binutils"
            );
        }
        let (registry, child, stdin) = start_registry();
        let reference = format!(
            "{registry}/volbackup/volbackup:{}",
            env!("CARGO_PKG_VERSION")
        );
        xtask::image::remove_stale_test_images(&reference);
        xtask::image::build(&xtask::image::Build {
            binary: binary.to_path_buf(),
            reference: reference.clone(),
            base: None,
            arch: "amd64".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .unwrap_or_else(|e| panic!("building the image: {e:#}"));
        let digest =
            xtask::image::push(&reference).unwrap_or_else(|e| panic!("pushing the image: {e:#}"));
        TestImage {
            reference,
            digest,
            registry,
            _server: Mutex::new((child, stdin)),
        }
    })
}

/// Whether a program is on PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d: PathBuf| d.join(tool).is_file()))
        .unwrap_or(false)
}
