//! Measures the chunker's throughput on 256 MiB of pseudo-random data held in memory.
//!
//! Rates are computed from the CPU time of this thread (from `/proc/thread-self/schedstat`), so
//! other processes competing for the cores do not distort them; wall-clock rates are printed
//! alongside.
//!
//! `cargo run --release -p volbackup-store --example chunker_speed [MiB]`

use std::io::{Seek, SeekFrom, Write};
use std::time::Instant;

/// Nanoseconds of CPU time this thread has used.
fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat is readable on Linux");
    stat.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .expect("schedstat starts with the CPU time in nanoseconds")
}

/// restic's own loop (restic/chunker), byte by byte with a window array, for comparison.
/// Returns the number of chunks.
fn restic_style_loop(data: &[u8], pol: u64) -> usize {
    let deg = 63 - pol.leading_zeros();
    let modulo = |mut a: u64| {
        while a != 0 && 63 - a.leading_zeros() >= deg {
            a ^= pol << (63 - a.leading_zeros() - deg);
        }
        a
    };
    let mut out_t = [0u64; 256];
    let mut mod_t = [0u64; 256];
    for b in 0..256u64 {
        out_t[b as usize] = (0..63).fold(modulo(b), |h, _| modulo(h << 8));
        mod_t[b as usize] = modulo(b << deg) | (b << deg);
    }
    let shift = deg - 8;
    let (min, max, mask) = (MIN_SIZE, MAX_SIZE, SPLIT_MASK);
    let (mut chunks, mut start) = (0, 0);
    while start < data.len() {
        let mut window = [0u8; 64];
        window[0] = 1;
        let (mut wpos, mut digest) = (1usize, 1u64);
        let mut end = data.len();
        for (i, &b) in data.iter().enumerate().skip(start + min - 64) {
            let out = window[wpos % 64];
            window[wpos % 64] = b;
            wpos += 1;
            digest ^= out_t[usize::from(out)];
            digest = ((digest << 8) | u64::from(b)) ^ mod_t[(digest >> shift) as usize & 0xff];
            let len = i + 1 - start;
            if (digest & mask == 0 || len >= max) && len >= min {
                end = i + 1;
                break;
            }
        }
        chunks += 1;
        start = end;
    }
    chunks
}

/// Runs `f` three times; returns the best (CPU seconds, wall seconds).
fn best_of_three(mut f: impl FnMut()) -> (f64, f64) {
    let (mut cpu, mut wall) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (c, t) = (thread_cpu_ns(), Instant::now());
        f();
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min((thread_cpu_ns() - c) as f64 / 1e9);
    }
    (cpu, wall)
}

use volbackup_store::chunker::{Chunker, MAX_SIZE, MIN_SIZE, Pol, SPLIT_MASK, cut_points};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("the argument is the data size in MiB"))
        .unwrap_or(256);
    let mut data = vec![0u8; mib << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in data.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let pol = Pol(0x3DA3358B4DC173);
    let mb = data.len() as f64 / 1e6;

    let mut cuts = 0;
    let slice = best_of_three(|| cuts = cut_points(&data, pol).len());
    let reader = best_of_three(|| {
        let mut chunker = Chunker::new(&data[..], pol);
        let mut buf = Vec::new();
        let mut total = 0;
        while chunker
            .next_chunk_into(&mut buf)
            .expect("reading memory cannot fail")
        {
            total += buf.len();
        }
        assert_eq!(total, data.len());
    });
    // The same through a file in the page cache, as a backup reads a volume.
    let mut file = tempfile::tempfile().expect("a temporary file");
    file.write_all(&data).expect("writing the temporary file");
    let from_file = best_of_three(|| {
        file.seek(SeekFrom::Start(0))
            .expect("seeking the temporary file");
        let mut chunker = Chunker::new(&file, pol);
        let mut buf = Vec::new();
        let mut chunks = 0;
        while chunker
            .next_chunk_into(&mut buf)
            .expect("reading the temporary file")
        {
            chunks += 1;
        }
        assert_eq!(chunks, cuts);
    });
    let mut plain_cuts = 0;
    let plain = best_of_three(|| plain_cuts = restic_style_loop(&data, pol.0));
    assert_eq!(plain_cuts, cuts, "the plain loop must cut like the chunker");
    println!(
        "{mib} MiB random data, {cuts} chunks (mean {:.2} MiB)",
        mib as f64 / cuts as f64
    );
    let rows = [
        ("cut_points (slice)", slice),
        ("Chunker::next_chunk_into", reader),
        ("  same, reading a file", from_file),
        ("restic-style plain loop", plain),
    ];
    for (name, (cpu, wall)) in rows {
        println!(
            "{name:26} {:6.0} MB/s per CPU second ({:.0} MB/s wall clock)",
            mb / cpu,
            mb / wall
        );
    }
}
