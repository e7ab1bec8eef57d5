//! Helpers shared by the store's integration tests: the real restic binary, temporary
//! repositories, generated data and repository fingerprints.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use volbackup_store::backend::FileType;
use volbackup_store::backend::local::LocalBackend;
use volbackup_store::crypto::KdfParams;
use volbackup_store::id::Id;
use volbackup_store::{InitOptions, Repository};

/// The password of every test repository.
pub const PASSWORD: &str = "correct horse battery staple";

/// The restic binary the tests use as oracle. Fails the test if it is missing.
pub fn restic_bin() -> PathBuf {
    let p = PathBuf::from(std::env::var("RESTIC_BIN").unwrap_or_else(|_| "/usr/bin/restic".into()));
    assert!(
        p.exists(),
        "restic is required for this test but {} does not exist (apt-get install restic, or set RESTIC_BIN)",
        p.display()
    );
    p
}

/// A restic command for `repo` with `password`, no cache, quiet progress.
pub fn restic_cmd(repo: &Path, password: &str) -> Command {
    let mut c = Command::new(restic_bin());
    c.arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", password)
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env("RESTIC_PROGRESS_FPS", "0.01");
    c
}

/// Runs restic with `args` (and `stdin` if given); returns its output whatever the status.
pub fn restic_output(repo: &Path, password: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = restic_cmd(repo, password);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("start restic");
    if let Some(data) = stdin {
        use std::io::Write;
        let mut si = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        let t = std::thread::spawn(move || si.write_all(&data));
        let out = child.wait_with_output().expect("wait for restic");
        t.join().expect("stdin writer").expect("write restic stdin");
        return out;
    }
    child.wait_with_output().expect("wait for restic")
}

/// Runs restic and panics with its stderr unless it succeeds; returns stdout.
pub fn restic(repo: &Path, password: &str, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = restic_output(repo, password, args, stdin);
    assert!(
        out.status.success(),
        "restic {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A temporary folder holding one repository at `<tmp>/repo`.
pub struct TempRepo {
    /// Keeps the folder alive.
    pub dir: tempfile::TempDir,
    /// The repository path.
    pub path: PathBuf,
}

impl TempRepo {
    /// A folder for a repository that does not exist yet.
    pub fn new() -> TempRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("repo");
        TempRepo { dir, path }
    }

    /// A scratch path next to the repository.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The local backend of the repository.
    pub fn backend(&self) -> Arc<LocalBackend> {
        Arc::new(LocalBackend::new(&self.path))
    }

    /// Initializes the repository with our code (cheap scrypt parameters).
    pub fn init_ours(&self) -> Repository {
        let opts = InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        };
        Repository::init(self.backend(), PASSWORD, &opts).expect("init repository")
    }

    /// Initializes the repository with restic.
    pub fn init_restic(&self) {
        restic(&self.path, PASSWORD, &["init", "-q"], None);
    }

    /// Opens the repository with our code.
    pub fn open(&self) -> Repository {
        Repository::open(self.backend(), PASSWORD).expect("open repository")
    }

    /// Runs restic on this repository and returns stdout (panics on failure).
    pub fn restic(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        restic(&self.path, PASSWORD, args, stdin)
    }
}

impl Default for TempRepo {
    fn default() -> Self {
        TempRepo::new()
    }
}

/// A small deterministic PRNG (xorshift64*), so generated data is the same in every run.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// `n` random bytes.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Rng::new(seed).fill(&mut v);
    v
}

/// Compressible text-like bytes.
pub fn text_bytes(seed: u64, n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "volume",
        "backup",
        "restic",
        "snapshot",
        "kubernetes",
        "chunk",
        "the",
        "of",
        "and",
        "persistent",
        "claim",
        "storage",
        "class",
        "node",
        "pod",
        "data\n",
        "\t",
        "0",
        "42",
    ];
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(n + 16);
    while v.len() < n {
        v.extend_from_slice(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes());
        v.push(b' ');
    }
    v.truncate(n);
    v
}

/// A disk-image-like mix, `mib` MiB long (at least 4): random data, text, a block repeated
/// several times, and a zero region of a quarter of the image in the middle.
pub fn mixed_image(seed: u64, mib: usize) -> Vec<u8> {
    assert!(mib >= 4);
    let total = mib << 20;
    let zeros = total / 4;
    let rest = total - zeros;
    let mut v = Vec::with_capacity(total);
    v.extend(random_bytes(seed, rest / 3));
    v.extend(vec![0u8; zeros]);
    v.extend(text_bytes(seed + 1, rest / 3));
    let block = random_bytes(seed + 2, 64 << 10);
    while v.len() < total {
        let n = (total - v.len()).min(block.len());
        v.extend_from_slice(&block[..n]);
    }
    v
}

/// Every file under `root` with its size and SHA-256 (and mode), for before/after comparisons.
pub fn fingerprint(root: &Path) -> BTreeMap<String, (u64, u32, String)> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).expect("metadata");
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if md.is_dir() {
                stack.push(p);
                out.insert(rel + "/", (0, md.mode(), String::new()));
            } else {
                let data = std::fs::read(&p).expect("read file");
                let h = hex::encode(sha2::Sha256::digest(&data));
                out.insert(rel, (md.len(), md.mode(), h));
            }
        }
    }
    out
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").blocks() * 512
}

/// Runs the test `name` (as the test harness names it, `module::test`) again, alone, in a child
/// process of this test binary with exactly `envs` (plus `PATH`, an empty `HOME` and no
/// instance metadata lookups): for tests that depend on the process environment, or that move
/// process-wide state (the lock clocks) that would disturb the tests running beside them.
pub fn run_in_child(name: &str, envs: &[(&str, String)]) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(CHILD_ENV, "1")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run of {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Set in the environment of [`run_in_child`]'s process.
const CHILD_ENV: &str = "VOLBACKUP_TEST_CHILD";

/// Whether this process is a child [`run_in_child`] started.
pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Backs `image` up as `name` into `t`; returns the snapshot and the one index file the
/// backup wrote.
pub fn backup_with_its_index_file(t: &TempRepo, image: &[u8], name: &str) -> (Id, Id) {
    let before = t.open().list_ids(FileType::Index).unwrap();
    let snap = volbackup_store::block::backup_block(
        &t.open(),
        &mut &image[..],
        name,
        &volbackup_store::block::BackupOptions::default(),
        &volbackup_store::progress::NoProgress,
    )
    .unwrap()
    .snapshot_id;
    let newer: Vec<Id> = t
        .open()
        .list_ids(FileType::Index)
        .unwrap()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(newer.len(), 1, "one index file a backup");
    (snap, newer[0])
}
