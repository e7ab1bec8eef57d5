//! Measures the chunker's throughput on 256 MiB of pseudo-random data held in memory.
//!
//! Rates are computed from the CPU time of this thread (from `/proc/thread-self/schedstat`), so
//! other processes competing for the cores do not distort them; wall-clock rates are printed
//! alongside.
//!
//! `cargo run --release -p volbackup-store --example chunker_speed [MiB]`

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

use volbackup_store::chunker::{Chunker, Pol, cut_points};

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
    println!(
        "{mib} MiB random data, {cuts} chunks (mean {:.2} MiB)",
        mib as f64 / cuts as f64
    );
    for (name, (cpu, wall)) in [
        ("cut_points (slice)", slice),
        ("Chunker::next_chunk_into", reader),
    ] {
        println!(
            "{name:26} {:6.0} MB/s per CPU second ({:.0} MB/s wall clock)",
            mb / cpu,
            mb / wall
        );
    }
}
