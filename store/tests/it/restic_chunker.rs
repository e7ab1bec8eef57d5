//! Our chunker against the real restic binary: restic backs up generated data from stdin into
//! a fresh repository, and the SHA-256 of each of our chunks (cut with the polynomial from that
//! repository's config) must equal, in order, the blob ids restic lists as the file's content.
//! Every `restic init` picks a new random polynomial, so each run checks another one.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use volbackup_store::chunker::{Chunker, MAX_SIZE, MIN_SIZE, Pol, cut_points};

const PASSWORD: &str = "chunker-test-password";
const MIB: usize = 1 << 20;

/// A command running restic on the repository at `repo`.
fn restic(repo: &Path) -> Command {
    let mut cmd = Command::new("restic");
    cmd.env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_PASSWORD_COMMAND")
        .args(["--no-cache", "--quiet"]);
    cmd
}

/// Runs restic with `args`, feeding `stdin`, and returns its standard output.
fn run(repo: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = match restic(repo)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("restic not found: install the Debian package restic")
        }
        Err(e) => panic!("cannot start restic: {e}"),
    };
    let mut input = child.stdin.take().expect("stdin is piped");
    // Write from a thread: restic may write output before it has read all its input.
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            input
                .write_all(stdin)
                .expect("restic reads all of its standard input");
        });
        child.wait_with_output().expect("restic runs to the end")
    });
    assert!(
        out.status.success(),
        "restic {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("restic prints JSON")
}

/// A fresh repository made by `restic init`, and the chunker polynomial restic chose for it.
struct Repo {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pol: Pol,
}

fn init_repo() -> Repo {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("repo");
    run(&path, &["init"], b"");
    let config = json(&run(&path, &["cat", "config"], b""));
    let pol: Pol = serde_json::from_value(config["chunker_polynomial"].clone())
        .expect("the config holds a chunker polynomial in hex");
    assert_eq!(pol.deg(), 53, "restic makes polynomials of degree 53");
    assert!(
        pol.is_irreducible(),
        "restic's polynomial {pol} must be irreducible"
    );
    Repo {
        _dir: dir,
        path,
        pol,
    }
}

/// Backs `data` up with `restic backup --stdin` and returns the file's content blob ids, in
/// order.
fn restic_content_ids(repo: &Repo, data: &[u8]) -> Vec<String> {
    let out = run(
        &repo.path,
        &[
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            "data.bin",
        ],
        data,
    );
    let snapshot_id = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|msg| msg["message_type"] == "summary")
        .and_then(|msg| msg["snapshot_id"].as_str().map(str::to_owned))
        .expect("restic backup --json reports a summary with the snapshot id");

    let snapshot = json(&run(&repo.path, &["cat", "snapshot", &snapshot_id], b""));
    let tree_id = snapshot["tree"]
        .as_str()
        .expect("the snapshot names its tree");
    let tree = json(&run(&repo.path, &["cat", "blob", tree_id], b""));
    let node = tree["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == "data.bin"))
        .expect("the snapshot's tree holds data.bin");
    assert_eq!(node["size"].as_u64(), Some(data.len() as u64));
    node["content"]
        .as_array()
        .expect("data.bin has a content list")
        .iter()
        .map(|id| id.as_str().expect("blob ids are strings").to_owned())
        .collect()
}

/// The SHA-256 of every chunk our chunker cuts from `data`.
fn our_chunk_ids(data: &[u8], pol: Pol) -> Vec<String> {
    let mut chunker = Chunker::new(data, pol);
    let mut ids = Vec::new();
    let mut buf = Vec::new();
    while chunker
        .next_chunk_into(&mut buf)
        .expect("reading memory cannot fail")
    {
        assert!(buf.len() <= MAX_SIZE);
        ids.push(hex::encode(Sha256::digest(&buf)));
    }
    ids
}

/// Deterministic pseudo-random bytes (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

/// Checks that restic and we cut `data` identically; returns our chunk lengths.
fn assert_same_chunks(repo: &Repo, data: &[u8]) -> Vec<usize> {
    let pol = repo.pol;
    let restic_ids = restic_content_ids(repo, data);
    let ours = our_chunk_ids(data, pol);
    assert_eq!(
        ours, restic_ids,
        "chunk ids differ from restic's for polynomial {pol}"
    );
    // The slice function must cut at the same places as the reader-based chunker.
    let ends = cut_points(data, pol);
    let mut start = 0;
    let mut lengths = Vec::new();
    let slice_ids: Vec<String> = ends
        .iter()
        .map(|&end| {
            let id = hex::encode(Sha256::digest(&data[start..end]));
            lengths.push(end - start);
            start = end;
            id
        })
        .collect();
    assert_eq!(
        slice_ids, restic_ids,
        "cut_points differs for polynomial {pol}"
    );
    lengths
}

#[test]
fn chunks_match_restic_on_forty_mib_of_mixed_data() {
    let repo = init_repo();
    let mut rng = XorShift(0xC0FFEE);
    let mut data = rng.bytes(14 * MIB + 12_345);
    // Zeros: restic cuts them every 512 KiB.
    data.resize(data.len() + 3 * MIB + 777, 0);
    // Repeated content: a block copied many times, like duplicated files in an image.
    let block = data[1000..1000 + 300_000].to_vec();
    for _ in 0..20 {
        data.extend_from_slice(&block);
    }
    data.extend_from_slice(&rng.bytes(10 * MIB));
    // A short repeating pattern that never matches the split mask under this polynomial (we
    // pick one with our chunker; restic's ids then show whether it agrees): chunks run to the
    // 8 MiB maximum.
    let pattern = loop {
        let candidate = rng.bytes(200);
        let probe: Vec<u8> = candidate
            .iter()
            .copied()
            .cycle()
            .take(MIN_SIZE + 300)
            .collect();
        if cut_points(&probe, repo.pol) == [probe.len()] {
            break candidate;
        }
    };
    data.extend(pattern.iter().copied().cycle().take(9 * MIB));
    data.extend_from_slice(&rng.bytes(MIB / 3));
    assert!(data.len() > 40 * MIB);

    let lengths = assert_same_chunks(&repo, &data);
    // restic picks the polynomial at random, and with it where random data is cut: 24 MiB of
    // it give about 16 chunks on average, the zeros 6 and the pattern 2, and runs have seen
    // fewer than 20 in all. Below 13 the data would hardly be cut at all.
    assert!(lengths.len() > 12, "only {} chunks", lengths.len());
    assert!(
        lengths.contains(&MAX_SIZE),
        "no chunk of the maximum size: {lengths:?}"
    );
    let minimal = lengths.iter().filter(|&&n| n == MIN_SIZE).count();
    assert!(
        minimal >= 5,
        "the zeros gave only {minimal} chunks of the minimum size"
    );
}

#[test]
fn a_file_smaller_than_the_minimum_is_one_chunk_like_in_restic() {
    let data = XorShift(42).bytes(MIN_SIZE - 4321);
    assert_eq!(assert_same_chunks(&init_repo(), &data), [data.len()]);
}

#[test]
fn a_cut_at_exactly_the_minimum_size_happens_like_in_restic() {
    // 64 zero bytes ending at 512 KiB give digest 0 there: the earliest cut restic allows.
    // (Empty input is not compared: restic 0.14 refuses an empty --stdin backup.)
    let mut rng = XorShift(7);
    let mut data = rng.bytes(MIN_SIZE - 64);
    data.resize(MIN_SIZE, 0);
    data.extend_from_slice(&rng.bytes(1000));
    assert_eq!(
        cut_points(&data, Pol(0x3DA3358B4DC173)),
        [MIN_SIZE, data.len()]
    );
    assert_eq!(assert_same_chunks(&init_repo(), &data), [MIN_SIZE, 1000]);
}
