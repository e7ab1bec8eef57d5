//! The S3 backend against a real S3 server: Garage on loopback with SigV4 authentication,
//! optionally behind a fault-injecting proxy, and the real restic 0.14 as the oracle for
//! repositories written through it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{in_child, run_in_child};
use crate::support_s3::{Fault, FaultProxy, Garage, Match};
use volbackup_store::Error;
use volbackup_store::backend::s3::{S3Backend, S3Config, S3Credentials, parse_location};
use volbackup_store::backend::{Backend, FileType};
use volbackup_store::block::{BackupOptions, RestoreOptions, backup_block, restore_block};
use volbackup_store::crypto::KdfParams;
use volbackup_store::id::Id;
use volbackup_store::packer::WriterOptions;
use volbackup_store::progress::NoProgress;
use volbackup_store::repo::{InitOptions, Repository};

const RESTIC: &str = "/usr/bin/restic";
const PASSWORD: &str = "s3-test-password";

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

fn hex_name(i: usize) -> String {
    format!(
        "{:064x}",
        (i as u128).wrapping_mul(0x1234_5678_9abc_def1_1357_9bdf_2468_ace1)
    )
}

/// A backend on a fresh bucket of the shared Garage, reached through `endpoint` (Garage's own
/// or a proxy's); `tune` adjusts the configuration first.
fn backend_via(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    tune: impl FnOnce(&mut S3Config),
) -> S3Backend {
    let mut cfg = Garage::shared().repo_config(endpoint, bucket, prefix);
    tune(&mut cfg);
    S3Backend::open(cfg).expect("open the S3 backend")
}

fn message(e: &Error) -> String {
    e.to_string()
}

fn restic(location: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    assert!(
        Path::new(RESTIC).exists(),
        "{RESTIC} is missing: install the Debian package restic (0.14)"
    );
    let g = Garage::shared();
    let mut cmd = Command::new(RESTIC);
    cmd.arg("-r")
        .arg(location)
        .arg("--no-cache")
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD);
    for (k, v) in g.restic_env() {
        cmd.env(k, v);
    }
    let out = match stdin {
        None => cmd.output().expect("run restic"),
        Some(data) => {
            use std::io::Write;
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().expect("run restic");
            child.stdin.take().unwrap().write_all(data).unwrap();
            child.wait_with_output().unwrap()
        }
    };
    assert!(
        out.status.success(),
        "restic {args:?} on {location} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn files_round_trip_through_garage_with_ranges_stat_listing_and_removal() {
    let g = Garage::shared();
    let bucket = g.new_bucket("roundtrip");
    let b = backend_via(&g.endpoint(), &bucket, "repo/one", |_| {});
    assert_eq!(
        b.location(),
        format!("s3:{}/{bucket}/repo/one", g.endpoint())
    );

    b.create().expect("create on an empty bucket");
    assert!(b.list(FileType::Config).unwrap().is_empty());
    assert!(matches!(
        b.read(FileType::Config, "config"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        b.stat(FileType::Key, "nope"),
        Err(Error::NotFound { .. })
    ));

    let config = b"config bytes".to_vec();
    b.write(FileType::Config, "config", &config).unwrap();
    let err = b
        .create()
        .expect_err("create must refuse an existing repository");
    assert!(message(&err).contains("already exists"), "{err}");
    assert_eq!(b.list(FileType::Config).unwrap().len(), 1);

    let pack = noise(3 << 20, 1);
    let pack_name = hex_name(1);
    b.write(FileType::Pack, &pack_name, &pack).unwrap();
    b.write(FileType::Pack, &hex_name(2), b"second pack")
        .unwrap();
    b.write(FileType::Key, "k1", b"key").unwrap();
    b.write(FileType::Snapshot, "s1", b"").unwrap();

    assert_eq!(b.read(FileType::Config, "config").unwrap(), config);
    assert_eq!(b.read(FileType::Pack, &pack_name).unwrap(), pack);
    assert_eq!(b.read(FileType::Snapshot, "s1").unwrap(), b"");
    assert_eq!(
        b.stat(FileType::Pack, &pack_name).unwrap(),
        pack.len() as u64
    );
    assert_eq!(
        b.read_range(FileType::Pack, &pack_name, 1_000_000, 4096)
            .unwrap(),
        pack[1_000_000..1_004_096]
    );
    assert_eq!(
        b.read_range(FileType::Pack, &pack_name, pack.len() as u64 - 10, 10)
            .unwrap(),
        pack[pack.len() - 10..]
    );
    assert!(
        b.read_range(FileType::Pack, &pack_name, pack.len() as u64 - 10, 11)
            .is_err()
    );
    assert!(
        b.read_range(FileType::Pack, &pack_name, pack.len() as u64 + 5, 1)
            .is_err()
    );
    assert!(matches!(
        b.read_range(FileType::Pack, &hex_name(9), 0, 1),
        Err(Error::NotFound { .. })
    ));

    // Packs are listed through their data/xx/ folders, by bare name.
    let mut packs: Vec<_> = b
        .list(FileType::Pack)
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.size))
        .collect();
    packs.sort();
    let mut want = vec![(pack_name.clone(), pack.len() as u64), (hex_name(2), 11)];
    want.sort();
    assert_eq!(packs, want);
    assert_eq!(
        b.list(FileType::Key)
            .unwrap()
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["k1"]
    );
    assert!(b.list(FileType::Lock).unwrap().is_empty());

    // The keys sit under the prefix exactly as relative_path lays them out: restic's layout.
    let other = backend_via(&g.endpoint(), &bucket, "repo", |_| {});
    assert!(
        other.list(FileType::Pack).unwrap().is_empty(),
        "a shorter prefix must not see repo/one's packs"
    );

    b.remove(FileType::Pack, &pack_name).unwrap();
    b.remove(FileType::Pack, &pack_name)
        .expect("removing a missing file is not an error");
    assert!(matches!(
        b.read(FileType::Pack, &pack_name),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(b.list(FileType::Pack).unwrap().len(), 1);
}

/// A pack uploaded with the hash its writer knows (its name) is signed with that hash rather
/// than hashed again; Garage checks it, so a body that does not match is refused and nothing
/// is stored.
#[test]
fn a_pack_uploaded_with_its_known_hash_is_stored_and_a_wrong_hash_is_refused() {
    let g = Garage::shared();
    let bucket = g.new_bucket("hashed");
    let b = backend_via(&g.endpoint(), &bucket, "repo", |_| {});
    b.create().unwrap();

    let pack = noise(2 << 20, 7);
    let id = Id::hash(&pack);
    b.write_hashed(FileType::Pack, &id, &pack)
        .expect("a pack with its own hash is stored");
    assert_eq!(b.read(FileType::Pack, &id.to_hex()).unwrap(), pack);

    let other = noise(2 << 20, 8);
    let wrong = Id::hash(&other[1..]);
    let err = b
        .write_hashed(FileType::Pack, &wrong, &other)
        .expect_err("a body that does not match its hash must be refused");
    assert!(
        matches!(
            b.stat(FileType::Pack, &wrong.to_hex()),
            Err(Error::NotFound { .. })
        ),
        "nothing may be stored after a refused upload ({err})"
    );
}

#[test]
fn listings_of_more_than_a_thousand_files_follow_continuation_tokens() {
    let g = Garage::shared();
    let bucket = g.new_bucket("many");
    let b = Arc::new(backend_via(&g.endpoint(), &bucket, "p", |_| {}));
    const N: usize = 1100;
    std::thread::scope(|s| {
        for t in 0..8 {
            let b = b.clone();
            s.spawn(move || {
                for i in (t..N).step_by(8) {
                    b.write(FileType::Index, &hex_name(i), &i.to_le_bytes())
                        .unwrap();
                }
            });
        }
    });
    let proxy = FaultProxy::start(&g.endpoint());
    let via = backend_via(&proxy.endpoint(), &bucket, "p", |_| {});
    let mut names: Vec<String> = via
        .list(FileType::Index)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..N).map(hex_name).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(
        proxy.requests("GET") >= 2,
        "{N} keys need at least two list pages, saw {}",
        proxy.requests("GET")
    );
}

#[test]
fn large_files_are_uploaded_in_parts_and_read_back_whole() {
    let g = Garage::shared();
    let bucket = g.new_bucket("multipart");
    let proxy = FaultProxy::start(&g.endpoint());
    let b = backend_via(&proxy.endpoint(), &bucket, "", |c| {
        c.multipart_threshold = 6 << 20;
        c.part_size = 5 << 20;
    });
    let data = noise(12 << 20, 7);
    // One part upload fails once; the part is sent again, not the whole file.
    proxy.inject(
        Match::method("PUT").path_contains("partNumber=2"),
        Fault::Status(500),
        1,
    );
    b.write(FileType::Pack, &hex_name(3), &data).unwrap();
    assert_eq!(proxy.injected().statuses, 1);
    assert_eq!(proxy.requests("PUT"), 4, "3 parts plus one retried part");
    assert_eq!(
        proxy.requests("POST"),
        2,
        "create and complete the multipart upload"
    );
    assert_eq!(b.read(FileType::Pack, &hex_name(3)).unwrap(), data);
    assert_eq!(
        b.stat(FileType::Pack, &hex_name(3)).unwrap(),
        data.len() as u64
    );
}

#[test]
fn server_errors_throttling_resets_and_stalls_are_retried_until_requests_pass() {
    let g = Garage::shared();
    let bucket = g.new_bucket("retries");
    let proxy = FaultProxy::start(&g.endpoint());
    let b = backend_via(&proxy.endpoint(), &bucket, "r", |c| {
        c.attempt_timeout = Duration::from_millis(1500)
    });
    let data = noise(256 << 10, 3);

    proxy.fail_next("PUT", 2, 500);
    proxy.fail_next("PUT", 1, 503);
    proxy.reset_next("PUT", 2);
    b.write(FileType::Pack, &hex_name(4), &data)
        .expect("write succeeds after 5 faults");
    assert_eq!(proxy.injected().statuses, 3);
    assert_eq!(proxy.injected().resets, 2);
    assert_eq!(proxy.pending(), 0);

    // A download that breaks off in the middle of the body is fetched again.
    proxy.reset_next("GET", 2);
    assert_eq!(b.read(FileType::Pack, &hex_name(4)).unwrap(), data);
    assert_eq!(proxy.injected().resets, 4);
    proxy.reset_next("GET", 1);
    assert_eq!(
        b.read_range(FileType::Pack, &hex_name(4), 100, 1000)
            .unwrap(),
        data[100..1100]
    );

    // A response held back longer than the attempt timeout counts as a failed attempt. The
    // stall is long (20 s against 1.5 s) so that a loaded machine's slow retry is never
    // mistaken for a stall waited out.
    proxy.delay_next("GET", 1, Duration::from_secs(20));
    let t = Instant::now();
    assert_eq!(b.read(FileType::Pack, &hex_name(4)).unwrap(), data);
    let took = t.elapsed();
    assert_eq!(proxy.injected().delays, 1);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(20),
        "took {took:?}"
    );

    // The same for an upload: the first attempt's answer never comes in time, the second does.
    proxy.delay_next("PUT", 1, Duration::from_secs(20));
    let t = Instant::now();
    b.write(FileType::Index, &hex_name(5), b"small index")
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the stalled PUT was waited out: {:?}",
        t.elapsed()
    );
    assert_eq!(
        b.read(FileType::Index, &hex_name(5)).unwrap(),
        b"small index"
    );

    proxy.delay_next("HEAD", 1, Duration::from_secs(20));
    let t = Instant::now();
    assert_eq!(
        b.stat(FileType::Pack, &hex_name(4)).unwrap(),
        data.len() as u64
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the stalled HEAD was waited out: {:?}",
        t.elapsed()
    );
    assert_eq!(proxy.injected().delays, 3);
}

#[test]
fn persistent_server_errors_give_up_after_a_bounded_number_of_attempts() {
    let g = Garage::shared();
    let bucket = g.new_bucket("giveup");
    let proxy = FaultProxy::start(&g.endpoint());
    let b = backend_via(&proxy.endpoint(), &bucket, "", |_| {});
    b.write(FileType::Key, "k", b"key").unwrap();
    proxy.fail_next("GET", 1000, 500);
    let t = Instant::now();
    let err = b.read(FileType::Key, "k").unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let msg = message(&err);
    assert!(
        msg.contains("HTTP 500") && msg.contains("InternalError"),
        "{msg}"
    );
    assert_eq!(proxy.requests("GET"), 6, "6 attempts, then give up");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_wrong_secret_is_reported_as_access_denied_without_showing_the_secret() {
    let g = Garage::shared();
    let bucket = g.new_bucket("denied");
    let secret = "0123456789abcdef-this-is-the-wrong-secret";
    let b = backend_via(&g.endpoint(), &bucket, "x", |c| {
        c.credentials = Some(S3Credentials {
            access_key_id: g.access_key().to_string(),
            secret_access_key: secret.into(),
        });
    });
    for err in [
        b.read(FileType::Config, "config").unwrap_err(),
        b.write(FileType::Key, "k", b"x").unwrap_err(),
        b.list(FileType::Pack).unwrap_err(),
        b.create().unwrap_err(),
    ] {
        let msg = message(&err);
        assert!(
            msg.contains(&format!(
                "access denied by S3 at {} for bucket {bucket}",
                g.endpoint()
            )) && msg.contains("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            "{msg}"
        );
        assert!(
            !msg.contains(secret) && !format!("{err:?}").contains(secret),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(!err.is_retryable());
    }
}

#[test]
fn a_missing_bucket_is_reported_by_name() {
    let g = Garage::shared();
    let b = backend_via(&g.endpoint(), "no-such-bucket-here", "x", |_| {});
    let want = format!(
        "bucket no-such-bucket-here does not exist at {} (create it first)",
        g.endpoint()
    );
    for err in [
        b.create().unwrap_err(),
        b.read(FileType::Config, "config").unwrap_err(),
        b.list(FileType::Key).unwrap_err(),
    ] {
        assert!(message(&err).contains(&want), "{err}");
    }
}

#[test]
fn a_wrong_region_is_reported_with_the_variables_to_set() {
    let g = Garage::shared();
    let bucket = g.new_bucket("region");
    let b = backend_via(&g.endpoint(), &bucket, "x", |c| {
        c.region = Some("eu-west-3".into())
    });
    let msg = message(&b.read(FileType::Config, "config").unwrap_err());
    assert!(
        msg.contains(&format!("bucket {bucket} at {} expects another region than eu-west-3: set AWS_REGION / AWS_DEFAULT_REGION", g.endpoint())),
        "{msg}"
    );
}

#[test]
fn a_garage_of_its_own_serves_s3_and_stops_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let g = Garage::start(dir.path());
    let bucket = g.new_bucket("own");
    let endpoint = g.endpoint();
    let mut cfg = S3Config::new(Some(endpoint.clone()), &bucket, "");
    cfg.region = Some(g.region().to_string());
    cfg.credentials = Some(S3Credentials {
        access_key_id: g.access_key().into(),
        secret_access_key: g.secret_key().into(),
    });
    let b = S3Backend::open(cfg).unwrap();
    b.write(FileType::Key, "k", b"own server").unwrap();
    assert_eq!(b.read(FileType::Key, "k").unwrap(), b"own server");
    drop(g);
    let addr = endpoint.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "Garage still listens on {addr} after drop"
    );
}

#[test]
fn an_unreachable_endpoint_is_reported_quickly_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cfg = S3Config::new(Some(endpoint.clone()), "bucket", "x");
    cfg.region = Some("garage".into());
    cfg.credentials = Some(S3Credentials {
        access_key_id: "GKunused".into(),
        secret_access_key: "unused".into(),
    });
    let b = S3Backend::open(cfg).unwrap();
    let t = Instant::now();
    let err = b.read(FileType::Config, "config").unwrap_err();
    let took = t.elapsed();
    let msg = message(&err);
    assert!(
        msg.contains(&format!("cannot reach S3 endpoint {endpoint}: ")),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("refused"),
        "the cause is named: {msg}"
    );
    assert!(msg.contains("check the URL / AWS_ENDPOINT_URL"), "{msg}");
    assert!(err.is_retryable());
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn the_backend_can_be_called_from_inside_another_tokio_runtime() {
    let g = Garage::shared();
    let bucket = g.new_bucket("nested");
    let b = backend_via(&g.endpoint(), &bucket, "", |_| {});
    for rt in [
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    ] {
        rt.block_on(async {
            b.write(FileType::Lock, "l", b"lock").unwrap();
            assert_eq!(b.read(FileType::Lock, "l").unwrap(), b"lock");
        });
    }
}

#[test]
fn s3_locations_parse_into_endpoint_bucket_and_prefix() {
    let c = parse_location("s3:https://s3.example.com:8443/bkt/a/b").unwrap();
    assert_eq!(
        (
            c.endpoint.as_deref(),
            c.bucket.as_str(),
            c.prefix.as_str(),
            c.path_style
        ),
        (Some("https://s3.example.com:8443"), "bkt", "a/b", true)
    );
    let c = parse_location("s3://bkt/pre").unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", "pre"));
    assert_eq!(c.path_style, c.endpoint.is_some());
}

#[test]
fn a_block_backup_through_faults_is_intact_for_restic() {
    let g = Garage::shared();
    let bucket = g.new_bucket("faulty-backup");
    let proxy = FaultProxy::start(&g.endpoint());
    let backend: Arc<dyn Backend> =
        Arc::new(backend_via(&proxy.endpoint(), &bucket, "vols/a", |_| {}));
    let repo = Repository::init(
        backend,
        PASSWORD,
        &InitOptions {
            kdf: KdfParams::insecure_fast(),
            polynomial: None,
        },
    )
    .expect("init over S3");

    let image = noise(10 << 20, 11);
    let packs = Match::method("PUT").path_contains("/data/");
    proxy.inject(packs.clone(), Fault::Status(500), 2);
    proxy.inject(packs.clone(), Fault::Status(503), 1);
    proxy.inject(packs.clone(), Fault::Reset, 2);
    proxy.inject(packs.clone(), Fault::Delay(Duration::from_millis(1500)), 1);
    let opts = BackupOptions {
        writer: WriterOptions {
            pack_size: 4 << 20,
            ..WriterOptions::default()
        },
        ..BackupOptions::default()
    };
    let summary = backup_block(&repo, &mut &image[..], "vol.img", &opts, &NoProgress)
        .expect("backup through faults");
    assert_eq!(summary.bytes_total, image.len() as u64);
    let n = proxy.injected();
    assert_eq!(
        (n.statuses, n.resets, n.delays),
        (3, 2, 1),
        "every fault was injected: {n:?}"
    );
    assert_eq!(proxy.pending(), 0);

    let location = format!("s3:{}/{bucket}/vols/a", g.endpoint());
    let check = restic(&location, &["check", "--read-data"], None);
    assert!(String::from_utf8_lossy(&check.stdout).contains("no errors were found"));
    let dump = restic(&location, &["dump", "latest", "/vol.img"], None);
    assert!(
        dump.stdout == image,
        "restic dump gives back the image ({} bytes vs {})",
        dump.stdout.len(),
        image.len()
    );
}

#[test]
fn a_repository_restic_wrote_on_garage_restores_through_the_s3_backend() {
    let g = Garage::shared();
    let bucket = g.new_bucket("from-restic");
    let location = format!("s3:{}/{bucket}/restic-made", g.endpoint());
    restic(&location, &["init"], None);
    let image = noise(5 << 20, 21);
    restic(
        &location,
        &["backup", "--stdin", "--stdin-filename", "disk.img"],
        Some(&image),
    );

    // Read through the proxy: pack downloads that fail or break off are fetched again.
    let proxy = FaultProxy::start(&g.endpoint());
    let backend: Arc<dyn Backend> = Arc::new(backend_via(
        &proxy.endpoint(),
        &bucket,
        "restic-made",
        |_| {},
    ));
    let repo = Repository::open(backend, PASSWORD).expect("open restic's repository over S3");
    let (id, _snap) = repo.find_snapshot("latest").expect("restic's snapshot");
    let packs = Match::method("GET").path_contains("/data/");
    proxy.inject(packs.clone(), Fault::Status(500), 2);
    proxy.inject(packs.clone(), Fault::Reset, 2);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("restored.img");
    restore_block(
        &repo,
        &id,
        Some("/disk.img"),
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .expect("restore");
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    let n = proxy.injected();
    assert_eq!(
        (n.statuses, n.resets),
        (2, 2),
        "the faults hit pack reads: {n:?}"
    );
}

#[test]
fn s3_slash_slash_locations_take_endpoint_keys_and_region_from_the_aws_variables() {
    if !in_child() {
        let g = Garage::shared();
        let bucket = g.new_bucket("from-env");
        let mut envs = g.restic_env();
        envs.push(("AWS_ENDPOINT_URL", g.endpoint()));
        envs.push(("TEST_BUCKET", bucket));
        run_in_child(
            "s3::s3_slash_slash_locations_take_endpoint_keys_and_region_from_the_aws_variables",
            &envs,
        );
        return;
    }
    let bucket = std::env::var("TEST_BUCKET").unwrap();
    let b = S3Backend::from_location(&format!("s3://{bucket}/env/prefix"))
        .expect("open from the environment");
    assert_eq!(b.config().endpoint, std::env::var("AWS_ENDPOINT_URL").ok());
    assert!(b.config().path_style);
    b.create().unwrap();
    b.write(FileType::Snapshot, "s", b"from the environment")
        .unwrap();
    assert_eq!(
        b.read(FileType::Snapshot, "s").unwrap(),
        b"from the environment"
    );
    assert_eq!(b.list(FileType::Snapshot).unwrap().len(), 1);
}

#[test]
fn missing_credentials_are_reported_with_the_variables_to_set() {
    if !in_child() {
        run_in_child(
            "s3::missing_credentials_are_reported_with_the_variables_to_set",
            &[],
        );
        return;
    }
    let b = S3Backend::from_location("s3:http://127.0.0.1:9/bucket/prefix").unwrap();
    let t = Instant::now();
    let err = b.read(FileType::Config, "config").unwrap_err();
    let msg = message(&err);
    assert!(
        msg.contains("no S3 credentials found for http://127.0.0.1:9: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn an_image_restore_reads_pack_ranges_again_when_the_server_cuts_the_answer_short() {
    let g = Garage::shared();
    let bucket = g.new_bucket("cut-short-restore");
    let direct: Arc<dyn Backend> = Arc::new(backend_via(&g.endpoint(), &bucket, "r", |_| {}));
    let repo = Repository::init(
        direct,
        PASSWORD,
        &InitOptions {
            kdf: KdfParams::insecure_fast(),
            polynomial: None,
        },
    )
    .expect("init over S3");
    let mut image = noise(12 << 20, 31);
    image[4 << 20..6 << 20].fill(0);
    let opts = BackupOptions {
        writer: WriterOptions {
            pack_size: 4 << 20,
            ..WriterOptions::default()
        },
        ..BackupOptions::default()
    };
    let snap = backup_block(&repo, &mut &image[..], "vol.img", &opts, &NoProgress)
        .expect("backup")
        .snapshot_id;

    // The first two pack reads break off halfway through the response body.
    let proxy = FaultProxy::start(&g.endpoint());
    proxy.inject(
        Match::method("GET").path_contains("/data/"),
        Fault::Reset,
        2,
    );
    let via: Arc<dyn Backend> = Arc::new(backend_via(&proxy.endpoint(), &bucket, "r", |_| {}));
    let repo = Repository::open(via, PASSWORD).expect("open through the proxy");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("vol.img");
    let sum = restore_block(
        &repo,
        &snap,
        None,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .expect("restore through cut-short answers");
    assert_eq!(proxy.injected().resets, 2, "both faults were injected");
    assert!(
        std::fs::read(&target).unwrap() == image,
        "restored bytes differ"
    );
    assert_eq!(sum.bytes_total, image.len() as u64);
}
