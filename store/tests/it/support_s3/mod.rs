//! Real-S3 test support: a single-node Garage server on loopback and a fault-injecting HTTP
//! proxy to put in front of it.
//!
//! Include it from any test crate with
//! `#[path = "../../store/tests/it/support_s3/mod.rs"] mod support_s3;` (adjust the path); it needs
//! only `std` plus the `socket2` crate (for connection resets) in the including crate's
//! dev-dependencies, and `volbackup-store` for [`Garage::repo_config`].
//!
//! Garage is found on `PATH` or in `~/.cargo/bin`; when it is missing the test fails with the
//! command that installs it. [`Garage::shared`] starts one server per test binary (each test
//! takes a fresh bucket with [`Garage::new_bucket`]); the server is stopped when the test
//! process exits, even though statics are never dropped: it runs under a small shell that
//! kills it once our end of its stdin pipe closes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The region Garage is configured with; clients must sign for it.
pub const GARAGE_REGION: &str = "garage";

/// A running single-node Garage server with one access key that may use every bucket made by
/// [`Garage::new_bucket`].
pub struct Garage {
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    s3_port: u16,
    key_name: String,
    key_id: String,
    secret: String,
    child: Child,
    /// Closing this stops the server (see the module docs).
    stdin: Option<ChildStdin>,
    buckets: AtomicUsize,
}

/// The `garage` binary: `PATH`, then `~/.cargo/bin`. Panics with how to install it.
pub fn garage_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("garage"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/garage"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("garage not found: install it with `cargo install --locked garage` (looked in PATH and ~/.cargo/bin)")
    })
}

/// A loopback port that was free a moment ago and that this process has not handed out
/// before. Two servers started at once in one test binary could otherwise get the same port
/// (each picked while the other had not bound it yet), and one's CLI then reached the other
/// over RPC ("failed verifying server hello").
fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN.get_or_init(Default::default).lock().expect("ports");
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind a loopback port")
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Garage {
    /// One server for the whole test binary, started on first use. Its files live in a
    /// temporary folder that is removed when the process exits.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!(
                "volbackup-garage-{}-{}",
                std::process::id(),
                random_hex(4)
            ));
            Garage::start_in(&dir, true)
        })
    }

    /// Starts a server whose configuration, metadata and data live in `dir` (created if
    /// needed). The server stops when the value is dropped or the process exits.
    pub fn start(dir: &Path) -> Garage {
        Garage::start_in(dir, false)
    }

    fn start_in(dir: &Path, remove_dir_on_exit: bool) -> Garage {
        // A port picked as free may be taken by someone else before Garage binds it: then
        // Garage exits at once, and we try again with other ports.
        let mut last = String::new();
        for _ in 0..3 {
            let mut g = Garage::spawn(dir, remove_dir_on_exit);
            match g.wait_ready() {
                Ok(node) => {
                    g.setup(&node);
                    return g;
                }
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }

    fn spawn(dir: &Path, remove_dir_on_exit: bool) -> Garage {
        let bin = garage_binary();
        std::fs::create_dir_all(dir).expect("create the Garage folder");
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
            secret = random_hex(32),
        );
        std::fs::write(&config, text).expect("write garage.toml");
        let log = std::fs::File::create(dir.join("garage.log")).expect("create garage.log");
        // The shell runs Garage and exits with it. A watcher in the background waits on the
        // shell's stdin, which is our pipe: when we close it (drop) or die, the watcher kills
        // the server and, for the shared server, removes its folder (not when the server had
        // already exited: a failed start is retried in the same folder).
        let script = r#"exec 3<&0
"$0" -c "$1" server </dev/null & pid=$!
(
  read _ignored <&3
  if kill "$pid" 2>/dev/null; then
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    if [ -n "$2" ]; then rm -rf "$2"; fi
  fi
) &
wait "$pid""#;
        let cleanup = if remove_dir_on_exit {
            dir.display().to_string()
        } else {
            String::new()
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&bin)
            .arg(&config)
            .arg(cleanup)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        Garage {
            bin,
            config,
            dir: dir.to_path_buf(),
            s3_port: s3,
            key_name: "volbackup-test".to_string(),
            key_id: String::new(),
            secret: String::new(),
            child,
            stdin,
            buckets: AtomicUsize::new(0),
        }
    }

    /// Waits until the CLI can talk to the node over RPC and returns the node id; `Err` if
    /// the server exited.
    fn wait_ready(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_cli(&["node", "id", "-q"]) {
                Ok(out) => {
                    if let Some(id) = out
                        .lines()
                        .find_map(|l| l.trim().split_once('@').map(|(id, _)| id.to_string()))
                    {
                        return Ok(id);
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "Garage did not come up within 60 s: {e}\nlog:\n{}",
                        self.log()
                    )
                }
                Err(_) => {}
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "Garage exited ({status}) while starting:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn setup(&mut self, node: &str) {
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", node]);
        self.cli(&["layout", "apply", "--version", "1"]);
        let key = self.cli(&["key", "create", &self.key_name.clone()]);
        for line in key.lines() {
            if let Some(v) = line.trim().strip_prefix("Key ID:") {
                self.key_id = v.trim().to_string();
            } else if let Some(v) = line.trim().strip_prefix("Secret key:") {
                self.secret = v.trim().to_string();
            }
        }
        assert!(
            !self.key_id.is_empty() && !self.secret.is_empty(),
            "cannot find the key id and secret in `garage key create` output:\n{key}"
        );
        // The S3 API answers once the layout is live; wait for it by making a first bucket.
        self.new_bucket("warmup");
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`garage {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs a `garage` CLI command against this server, retrying for a while (the cluster
    /// needs a moment after start and after a layout change), and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_cli(args) {
                Ok(out) => return out,
                Err(e) if Instant::now() > deadline => panic!("{e}\nGarage log:\n{}", self.log()),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `http://127.0.0.1:PORT`, the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The access key id allowed on every bucket made by [`Garage::new_bucket`].
    pub fn access_key(&self) -> &str {
        &self.key_id
    }

    /// Its secret.
    pub fn secret_key(&self) -> &str {
        &self.secret
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        GARAGE_REGION
    }

    /// Creates a bucket whose name starts with `name` (made S3-safe and unique) and gives the
    /// key full access to it. Returns the bucket's name.
    pub fn new_bucket(&self, name: &str) -> String {
        let n = self.buckets.fetch_add(1, Ordering::SeqCst);
        let mut base: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        base.truncate(40);
        let bucket = format!("{}-{n}", base.trim_matches('-'));
        let bucket = if bucket.len() < 3 {
            format!("b{bucket}-x")
        } else {
            bucket
        };
        self.cli(&["bucket", "create", &bucket]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &bucket,
            "--key",
            &self.key_name,
        ]);
        bucket
    }

    /// The environment restic needs for this server.
    pub fn restic_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_DEFAULT_REGION", GARAGE_REGION.to_string()),
        ]
    }

    /// A backend configuration for `bucket`/`prefix` on `endpoint` (this server's, or a proxy in
    /// front of it), with this server's key and region.
    pub fn repo_config(
        &self,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
    ) -> volbackup_store::backend::s3::S3Config {
        let mut cfg =
            volbackup_store::backend::s3::S3Config::new(Some(endpoint.to_string()), bucket, prefix);
        cfg.region = Some(GARAGE_REGION.to_string());
        cfg.credentials = Some(volbackup_store::backend::s3::S3Credentials {
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
        });
        cfg
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting proxy
// ---------------------------------------------------------------------------------------------

/// What a fault does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Read the whole request, do not forward it, answer with this HTTP status and an S3 error
    /// body (`InternalError`, or `SlowDown` for 503).
    Status(u16),
    /// Reset the connection midway: during the request body if there is one (after half of
    /// it), else after forwarding, during the response body (after half of it).
    Reset,
    /// Forward the request, then hold the response back this long before sending it.
    Delay(Duration),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// HTTP method, e.g. `PUT`; `None` for any.
    pub method: Option<String>,
    /// A substring of the request target (path and query), e.g. `/data/`.
    pub path_contains: Option<String>,
}

impl Match {
    /// Requests with this method.
    pub fn method(m: &str) -> Match {
        Match {
            method: Some(m.to_ascii_uppercase()),
            path_contains: None,
        }
    }

    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Narrows to targets containing `s`.
    pub fn path_contains(mut self, s: &str) -> Match {
        self.path_contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| target.contains(p))
    }
}

struct Rule {
    when: Match,
    fault: Fault,
    remaining: usize,
}

/// How many faults a proxy has injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Error statuses sent instead of forwarding.
    pub statuses: usize,
    /// Connections reset midway.
    pub resets: usize,
    /// Responses held back.
    pub delays: usize,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    counts: Mutex<FaultCounts>,
    /// Requests seen, by method.
    requests: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
}

/// A plain HTTP/1.1 proxy on 127.0.0.1 in front of one upstream server, injecting faults on
/// request. Clients talk to [`FaultProxy::endpoint`] as if it were the server (the Host
/// header is passed through unchanged, so SigV4 signatures stay valid).
pub struct FaultProxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let up = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("FaultProxy needs an http:// upstream, got {upstream}"))
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let up = up.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &up, &s);
                    });
                }
            })
            .expect("spawn the proxy thread");
        FaultProxy { addr, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `n` requests that match `when`.
    pub fn inject(&self, when: Match, fault: Fault, n: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            when,
            fault,
            remaining: n,
        });
    }

    /// The next `n` requests with `method` get HTTP `status` instead of being forwarded.
    pub fn fail_next(&self, method: &str, n: usize, status: u16) {
        self.inject(Match::method(method), Fault::Status(status), n);
    }

    /// The next `n` requests with `method` have their connection reset midway.
    pub fn reset_next(&self, method: &str, n: usize) {
        self.inject(Match::method(method), Fault::Reset, n);
    }

    /// The responses to the next `n` requests with `method` are held back for `d`.
    pub fn delay_next(&self, method: &str, n: usize, d: Duration) {
        self.inject(Match::method(method), Fault::Delay(d), n);
    }

    /// Drops every fault not yet injected.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> FaultCounts {
        *self.shared.counts.lock().unwrap()
    }

    /// Faults still waiting for a matching request.
    pub fn pending(&self) -> usize {
        self.shared
            .rules
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.remaining)
            .sum()
    }

    /// Requests received with `method` (faulty or not).
    pub fn requests(&self, method: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A parsed HTTP message head.
struct Head {
    /// Request line or status line.
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head as bytes, without the hop-by-hop headers we rewrite, plus `extra`.
    fn encode(&self, drop: &[&str], extra: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !drop.iter().any(|d| k.eq_ignore_ascii_case(d)) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads a message head; `None` at a clean end of stream.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let start = start.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { start, headers }))
}

/// Reads a chunked body and returns it decoded.
fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn reset(conn: &TcpStream) {
    let _ = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO));
    let _ = conn.shutdown(Shutdown::Both);
}

fn error_response(status: u16) -> Vec<u8> {
    let (code, reason) = match status {
        503 => ("SlowDown", "Service Unavailable"),
        500 => ("InternalError", "Internal Server Error"),
        502 => ("BadGateway", "Bad Gateway"),
        429 => ("SlowDown", "Too Many Requests"),
        _ => ("InternalError", "Error"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by FaultProxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one client connection: requests one after another (keep-alive), each forwarded on a
/// fresh upstream connection.
fn serve(conn: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
    let mut client_w = conn.try_clone()?;
    let mut client_r = BufReader::new(conn.try_clone()?);
    loop {
        let Some(req) = read_head(&mut client_r)? else {
            return Ok(());
        };
        let mut parts = req.start.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        *shared
            .requests
            .lock()
            .unwrap()
            .entry(method.clone())
            .or_default() += 1;
        let fault = {
            let mut rules = shared.rules.lock().unwrap();
            let found = rules
                .iter_mut()
                .find(|r| r.remaining > 0 && r.when.matches(&method, &target));
            found.map(|r| {
                r.remaining -= 1;
                r.fault
            })
        };
        if req
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            client_w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body_len = req.content_length();
        if fault == Some(Fault::Reset) && body_len.is_some_and(|n| n > 0) {
            let mut half = vec![0u8; body_len.unwrap() / 2];
            client_r.read_exact(&mut half)?;
            shared.counts.lock().unwrap().resets += 1;
            reset(&conn);
            return Ok(());
        }
        let body = if req.chunked() {
            read_chunked(&mut client_r)?
        } else {
            let mut b = vec![0u8; body_len.unwrap_or(0)];
            client_r.read_exact(&mut b)?;
            b
        };
        if let Some(Fault::Status(status)) = fault {
            shared.counts.lock().unwrap().statuses += 1;
            client_w.write_all(&error_response(status))?;
            continue;
        }

        // Forward on a fresh connection and read the whole answer.
        let mut up = TcpStream::connect(upstream)?;
        let mut out = req.encode(
            &[
                "connection",
                "expect",
                "transfer-encoding",
                "content-length",
                "keep-alive",
            ],
            &[
                ("Content-Length", body.len().to_string()),
                ("Connection", "close".to_string()),
            ],
        );
        if body_len.is_none() && !req.chunked() && body.is_empty() {
            // No body and no length: keep it that way (GET, HEAD, DELETE).
            out = req.encode(
                &["connection", "expect", "keep-alive"],
                &[("Connection", "close".to_string())],
            );
        }
        up.write_all(&out)?;
        up.write_all(&body)?;
        let mut up_r = BufReader::new(up);
        let resp = loop {
            let head = read_head(&mut up_r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
            // Interim 1xx answers are consumed here.
            if !head
                .start
                .split_whitespace()
                .nth(1)
                .is_some_and(|s| s.starts_with('1'))
            {
                break head;
            }
        };
        let status: u16 = resp
            .start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let resp_body = if no_body {
            Vec::new()
        } else if resp.chunked() {
            read_chunked(&mut up_r)?
        } else if let Some(n) = resp.content_length() {
            let mut b = vec![0u8; n];
            up_r.read_exact(&mut b)?;
            b
        } else {
            let mut b = Vec::new();
            up_r.read_to_end(&mut b)?;
            b
        };
        let head = if no_body {
            resp.encode(&["connection", "keep-alive"], &[])
        } else {
            resp.encode(
                &[
                    "connection",
                    "keep-alive",
                    "transfer-encoding",
                    "content-length",
                ],
                &[("Content-Length", resp_body.len().to_string())],
            )
        };
        match fault {
            Some(Fault::Delay(d)) => {
                shared.counts.lock().unwrap().delays += 1;
                std::thread::sleep(d);
            }
            Some(Fault::Reset) => {
                // No request body to cut: cut the response body instead.
                shared.counts.lock().unwrap().resets += 1;
                if !resp_body.is_empty() {
                    client_w.write_all(&head)?;
                    client_w.write_all(&resp_body[..resp_body.len() / 2])?;
                    client_w.flush()?;
                }
                reset(&conn);
                return Ok(());
            }
            _ => {}
        }
        client_w.write_all(&head)?;
        client_w.write_all(&resp_body)?;
        client_w.flush()?;
    }
}
