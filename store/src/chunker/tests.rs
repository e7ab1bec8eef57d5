use super::*;

/// restic's test polynomial (restic/chunker `testPol`).
const TEST_POL: Pol = Pol(0x3DA3358B4DC173);

/// xorshift64*: deterministic pseudo-random bytes for pinned tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// restic's chunker as written in restic/chunker: byte by byte, a 64-byte window array,
/// restic's own `out` and `mod` tables, the skip of `min - 64` bytes and the reset state.
/// The fast implementation must agree with it on every input and parameter set.
fn reference_cuts(data: &[u8], pol: Pol, p: Params) -> Vec<usize> {
    let f = pol.0;
    let k = pol.deg() as u32;
    let append_byte = |h: u64, b: u8| pol_mod((h << 8) | u64::from(b), f);
    let mut out_t = [0u64; 256];
    let mut mod_t = [0u64; 256];
    for b in 0..256usize {
        let mut h = append_byte(0, b as u8);
        for _ in 0..WINDOW_SIZE - 1 {
            h = append_byte(h, 0);
        }
        out_t[b] = h;
        mod_t[b] = pol_mod((b as u64) << k, f) | ((b as u64) << k);
    }
    let shift = k - 8;
    let mut window = [0u8; WINDOW_SIZE];
    let mut wpos = 0usize;
    let mut digest = 0u64;
    let mut count = 0usize;
    let mut pre;
    let slide = |window: &mut [u8; WINDOW_SIZE], wpos: &mut usize, digest: u64, b: u8| {
        let out = window[*wpos];
        window[*wpos] = b;
        let d = digest ^ out_t[usize::from(out)];
        *wpos = (*wpos + 1) % WINDOW_SIZE;
        let index = (d >> shift) as usize;
        ((d << 8) | u64::from(b)) ^ mod_t[index]
    };
    let reset = |window: &mut [u8; WINDOW_SIZE], wpos: &mut usize, digest: &mut u64| {
        *window = [0; WINDOW_SIZE];
        *wpos = 0;
        *digest = slide(window, wpos, 0, 1);
    };
    reset(&mut window, &mut wpos, &mut digest);
    pre = p.min - WINDOW_SIZE;
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if pre > 0 {
            let skip = pre.min(data.len() - pos);
            pre -= skip;
            count += skip;
            pos += skip;
            continue;
        }
        digest = slide(&mut window, &mut wpos, digest, data[pos]);
        pos += 1;
        count += 1;
        if (digest & p.mask == 0 || count >= p.max) && count >= p.min {
            ends.push(pos);
            count = 0;
            reset(&mut window, &mut wpos, &mut digest);
            pre = p.min - WINDOW_SIZE;
        }
    }
    if count > 0 {
        ends.push(pos);
    }
    ends
}

/// Random data with runs of zeros and repeated blocks, so cuts fall after all kinds of
/// content and the maximum size is reached sometimes.
fn mixed_data(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift(seed);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let piece = (rng.next() % 3_000_000) as usize + 1;
        match rng.next() % 4 {
            0 => data.resize(data.len() + piece, 0),
            1 if data.len() > 70_000 => {
                let from = (rng.next() as usize) % (data.len() - 70_000);
                let n = ((rng.next() as usize) % 60_000 + 1).min(data.len() - from);
                for _ in 0..(piece / n).min(50) {
                    data.extend_from_within(from..from + n);
                }
            }
            _ => data.extend_from_slice(&rng.bytes(piece)),
        }
    }
    data.truncate(len);
    data
}

fn small_params() -> Params {
    Params {
        min: 4096,
        max: 64 * 1024,
        mask: (1 << 12) - 1,
    }
}

/// Hands out bytes in pieces of awkward, varying sizes.
struct Dribble<'a> {
    data: &'a [u8],
    rng: XorShift,
}

impl Read for Dribble<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = (self.rng.next() % 70_000) as usize + 1;
        let n = want.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn chunk_ends<R: Read>(mut chunker: Chunker<R>) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut total = 0;
    while let Some(chunk) = chunker.next_chunk().unwrap() {
        assert!(!chunk.is_empty());
        total += chunk.len();
        ends.push(total);
    }
    ends
}

#[test]
fn known_irreducible_polynomials_are_recognised() {
    // restic's test polynomial and the other irreducible one from restic's test list.
    assert!(Pol(0x3DA3358B4DC173).is_irreducible());
    assert!(Pol(0x2482734cacca49).is_irreducible());
    // x^2+x+1, x^3+x+1, the AES polynomial x^8+x^4+x^3+x+1, x, x+1
    for p in [0x7, 0xb, 0x11b, 0x2, 0x3] {
        assert!(Pol(p).is_irreducible(), "{p:#x}");
    }
}

#[test]
fn known_reducible_polynomials_are_recognised() {
    // From restic's test list.
    for p in [
        0x38f1e565e288df,
        0x30a8295b9d5c91,
        0x255f4350b962cb,
        0x3143d0464b3299,
    ] {
        assert!(!Pol(p).is_irreducible(), "{p:#x}");
    }
    // x^2+1 = (x+1)^2; x^4+x^2+1 = (x^2+x+1)^2 (no root, yet reducible); x^53; constants.
    for p in [0x5, 0x15, 1 << 53, 0, 1] {
        assert!(!Pol(p).is_irreducible(), "{p:#x}");
    }
}

#[test]
fn irreducibility_test_agrees_with_trial_division_up_to_degree_12() {
    for f in 2u64..(1 << 13) {
        let d = raw_deg(f);
        let has_factor = (2u64..f)
            .filter(|&g| raw_deg(g) >= 1 && raw_deg(g) <= d / 2)
            .any(|g| pol_mod(f, g) == 0);
        assert_eq!(Pol(f).is_irreducible(), !has_factor, "{f:#b}");
    }
}

#[test]
fn random_polynomials_have_degree_53_and_are_irreducible() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let p = Pol::random();
        assert_eq!(p.deg(), 53);
        assert!(p.is_irreducible());
        assert!(p.validate().is_ok());
        seen.insert(p);
    }
    assert!(seen.len() > 1, "ten random polynomials were all equal");
}

#[test]
fn polynomial_hex_form_round_trips_like_restic_config() {
    assert_eq!(TEST_POL.to_string(), "3da3358b4dc173");
    assert_eq!("3da3358b4dc173".parse::<Pol>().unwrap(), TEST_POL);
    assert_eq!("3DA3358B4DC173".parse::<Pol>().unwrap(), TEST_POL);
    for bad in [
        "",
        "0x3da3358b4dc173",
        "3da3 358b",
        "g",
        "12345678901234567",
    ] {
        assert!(bad.parse::<Pol>().is_err(), "{bad:?}");
    }
    let json = serde_json::to_string(&TEST_POL).unwrap();
    assert_eq!(json, r#""3da3358b4dc173""#);
    let back: Pol = serde_json::from_str(&json).unwrap();
    assert_eq!(back, TEST_POL);
    let p = Pol::random();
    assert_eq!(p.to_string().parse::<Pol>().unwrap(), p);
    assert!(serde_json::from_str::<Pol>("123").is_err());
}

#[test]
fn validation_rejects_reducible_and_oversized_polynomials() {
    assert!(TEST_POL.validate().is_ok());
    assert!(Pol(0x38f1e565e288df).validate().is_err());
    // x^61 + x + 1 has too high a degree for restic's chunker whatever its factors.
    assert!(Pol((1 << 61) | 3).validate().is_err());
    assert!(Pol(0x7).validate().is_err());
}

#[test]
fn empty_input_yields_no_chunk() {
    assert!(cut_points(&[], TEST_POL).is_empty());
    let mut chunker = Chunker::new(&[][..], TEST_POL);
    assert!(chunker.next_chunk().unwrap().is_none());
    let mut buf = vec![1, 2, 3];
    assert!(!chunker.next_chunk_into(&mut buf).unwrap());
    assert!(buf.is_empty());
}

#[test]
fn input_shorter_than_the_minimum_is_one_chunk() {
    let data = XorShift(7).bytes(MIN_SIZE - 1);
    assert_eq!(cut_points(&data, TEST_POL), vec![MIN_SIZE - 1]);
    let mut chunker = Chunker::new(&data[..], TEST_POL);
    assert_eq!(chunker.next_chunk().unwrap().unwrap(), data);
    assert!(chunker.next_chunk().unwrap().is_none());
}

#[test]
fn zeros_are_cut_every_512_kib() {
    // The digest of 64 zero bytes is 0, which matches the mask: every chunk is minimal.
    let data = vec![0u8; 5 * MIN_SIZE + 1000];
    let expected: Vec<usize> = (1..=5).map(|i| i * MIN_SIZE).chain([data.len()]).collect();
    assert_eq!(cut_points(&data, TEST_POL), expected);
    assert_eq!(chunk_ends(Chunker::new(&data[..], TEST_POL)), expected);
}

#[test]
fn chunks_never_exceed_the_maximum_size() {
    // A repeating 256-byte pattern whose window digests never match the mask forces cuts
    // at exactly 8 MiB. Find such a pattern first, then check the cut.
    let tables = ChunkerTables::new(TEST_POL);
    let mut rng = XorShift(99);
    let pattern = loop {
        let candidate = rng.bytes(256);
        let probe: Vec<u8> = candidate
            .iter()
            .copied()
            .cycle()
            .take(256 + 64 + 256)
            .collect();
        let hits = find_cut(&tables, SPLIT_MASK, &probe, 65, probe.len());
        if hits.is_none() {
            break candidate;
        }
    };
    let data: Vec<u8> = pattern
        .iter()
        .copied()
        .cycle()
        .take(2 * MAX_SIZE + 12345)
        .collect();
    let expected = vec![MAX_SIZE, 2 * MAX_SIZE, data.len()];
    assert_eq!(cut_points(&data, TEST_POL), expected);
    assert_eq!(reference_cuts(&data, TEST_POL, RESTIC_PARAMS), expected);
    assert_eq!(chunk_ends(Chunker::new(&data[..], TEST_POL)), expected);
}

#[test]
fn fast_search_agrees_with_restic_style_reference_on_small_parameters() {
    let tables = ChunkerTables::new(TEST_POL);
    for seed in 1..6 {
        let data = mixed_data(seed, 3_000_000 + seed as usize * 7919);
        let expected = reference_cuts(&data, TEST_POL, small_params());
        assert!(expected.len() > 100, "only {} cuts", expected.len());
        assert_eq!(
            cut_points_with(&tables, small_params(), &data),
            expected,
            "seed {seed}"
        );
        let mut chunker = Chunker::with_tables(
            Dribble {
                data: &data,
                rng: XorShift(seed),
            },
            Arc::new(ChunkerTables::new(TEST_POL)),
        );
        chunker.params = small_params();
        chunker.read_block = 10_000;
        assert_eq!(chunk_ends(chunker), expected, "seed {seed}");
    }
}

#[test]
fn fast_search_agrees_with_reference_for_other_degrees_and_masks() {
    // Lower-degree polynomials take the generic path (the shift is not constant).
    let mut rng = XorShift(5);
    let pols = [Pol(0x11b), Pol(0x2482734cacca49), Pol::random()]
        .into_iter()
        .chain((0..3).map(|_| {
            // A random irreducible polynomial of degree 20..40.
            loop {
                let d = 20 + rng.next() % 21;
                let p = Pol((rng.next() & ((1 << d) - 1)) | (1 << d) | 1);
                if p.is_irreducible() {
                    break p;
                }
            }
        }));
    for pol in pols {
        let tables = ChunkerTables::new(pol);
        for mask_bits in [4, 10, 13] {
            let p = Params {
                min: 2048,
                max: 40_000,
                mask: (1 << mask_bits) - 1,
            };
            let data = mixed_data(pol.0, 1_500_000);
            let expected = reference_cuts(&data, pol, p);
            assert_eq!(
                cut_points_with(&tables, p, &data),
                expected,
                "{pol} mask {mask_bits}"
            );
        }
    }
}

#[test]
fn fast_search_agrees_with_reference_on_restic_parameters() {
    for seed in [11, 12] {
        let data = mixed_data(seed, 20 * 1024 * 1024);
        let pol = Pol::random_from(&mut XorShiftRng(XorShift(seed)));
        let expected = reference_cuts(&data, pol, RESTIC_PARAMS);
        assert_eq!(cut_points(&data, pol), expected, "{pol}");
        let chunker = Chunker::new(
            Dribble {
                data: &data,
                rng: XorShift(seed),
            },
            pol,
        );
        assert_eq!(chunk_ends(chunker), expected, "{pol}");
    }
}

/// Lets `Pol::random_from` draw from the deterministic generator.
struct XorShiftRng(XorShift);

impl rand::RngCore for XorShiftRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill(dst)
    }
}

#[test]
fn next_chunk_into_reuses_the_buffer_and_returns_the_same_chunks() {
    let data = mixed_data(3, 12 * 1024 * 1024);
    let mut a = Chunker::new(&data[..], TEST_POL);
    let mut b = Chunker::new(&data[..], TEST_POL);
    // Old contents, longer than any chunk, must not leak into the chunks.
    let mut buf = vec![0xAA; MAX_SIZE + 1];
    let mut joined = Vec::new();
    while b.next_chunk_into(&mut buf).unwrap() {
        assert_eq!(a.next_chunk().unwrap().as_ref(), Some(&buf));
        joined.extend_from_slice(&buf);
    }
    assert!(a.next_chunk().unwrap().is_none());
    assert_eq!(joined, data);
}

#[test]
fn cuts_for_restic_test_polynomial_are_the_ones_restic_made() {
    // restic 0.14.0 cut this data at these offsets: a repository made by `restic init`,
    // its config re-sealed with chunker_polynomial 3da3358b4dc173, then `restic backup
    // --stdin`; the offsets are the running sums of the content blobs' sizes from restic's
    // index, and `restic check --read-data` passed. (store/tests/it/restic_chunker.rs repeats
    // such comparisons live, with the random polynomials `restic init` picks.)
    const MIB: usize = 1 << 20;
    let mut rng = XorShift(0x5eed);
    let mut data = rng.bytes(10 * MIB);
    data.resize(data.len() + MIB + MIB / 4, 0);
    data.extend_from_slice(&rng.bytes(6 * MIB));
    let restic = [
        1349262, 4130224, 6021579, 7718633, 10485824, 11010112, 11534400, 12981579, 15181812,
        15858813, 18087936,
    ];
    assert_eq!(cut_points(&data, TEST_POL), restic);
    assert_eq!(chunk_ends(Chunker::new(&data[..], TEST_POL)), restic);
    assert_eq!(reference_cuts(&data, TEST_POL, RESTIC_PARAMS), restic);
}

#[test]
fn read_errors_are_passed_on() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let err = Chunker::new(Failing, TEST_POL).next_chunk().unwrap_err();
    assert_eq!(err.to_string(), "disk on fire");
}
