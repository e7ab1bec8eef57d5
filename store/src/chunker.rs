//! Content-defined chunking that cuts at exactly the offsets restic cuts at.
//!
//! restic (through `github.com/restic/chunker`) splits a file where a Rabin fingerprint of the
//! last 64 bytes, taken modulo the repository's random irreducible polynomial of degree 53,
//! has its low 20 bits all zero. A chunk is never shorter than 512 KiB (except the last one of
//! a file) and never longer than 8 MiB. Data blobs deduplicate against restic's only when the
//! cuts agree to the byte, so everything here reproduces restic's behaviour, including its
//! quirks:
//!
//! - The first `512 KiB - 64` bytes of a chunk are not hashed at all.
//! - At the start of a chunk the window is reset to zeros and the byte `1` is slid in, so the
//!   window holds `[1, 0, 0, …]`. That byte leaves the window exactly when the 64th hashed byte
//!   enters, i.e. when the chunk is 512 KiB long, the first length at which a cut is allowed.
//! - The cut test is `digest & (2^20 - 1) == 0`, or the chunk reached 8 MiB.
//!
//! # Why the search can run in parallel lanes
//!
//! restic updates its digest byte by byte, and each update depends on the previous one through
//! a table lookup: a latency-bound chain that caps a plain loop at about 540 MB/s. But the
//! digest after sliding in byte `e - 1` is the residue of the window polynomial
//! `sum(data[e-1-i] * x^(8 i), i = 0..64) mod P`, a function of the last 64 bytes only, for
//! every length at which restic may cut (the reset state `[1, 0, …]` has fully left the window
//! by then). So whether a cut is allowed after `e` bytes of a chunk is a property of the 64
//! bytes before `e`, and any stretch of candidate positions can be tested independently: here
//! four lanes hash four adjacent stretches at once, so the CPU overlaps four dependency
//! chains. The answer is the first hit in stream order, which is restic's cut.
//!
//! The digest is kept left-aligned in the `u64` (shifted up by `64 - degree`), so the byte that
//! selects the reduction entry is simply `digest >> 56` and the bits that restic cancels with
//! the upper half of its `mod` table fall off the top by themselves.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes in the rolling hash window.
pub const WINDOW_SIZE: usize = 64;
/// Smallest chunk restic cuts (only the last chunk of a file may be shorter).
pub const MIN_SIZE: usize = 512 * 1024;
/// Largest chunk restic cuts.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
/// A cut is allowed where `digest & SPLIT_MASK == 0` (about one position in 2^20).
pub const SPLIT_MASK: u64 = (1 << 20) - 1;
/// Degree of the polynomials restic generates.
pub const POL_DEGREE: i32 = 53;

/// How many bytes `Chunker` asks its reader for at a time once the minimum size is buffered.
const READ_BLOCK: usize = 512 * 1024;
/// Candidate positions given to one lane per round. A round tests `LANES * LANE_LEN`
/// positions; whatever lies after the first hit is wasted, so rounds are kept moderate.
const LANE_LEN: usize = 32 * 1024;
const LANES: usize = 4;
/// Lanes advance in blocks of this many steps (the window size, so a block and the window
/// before it are one fixed-size array).
const BLOCK: usize = WINDOW_SIZE;
/// Below this many positions per lane the 64-byte warm-up of each lane does not pay off.
const MIN_LANE_LEN: usize = 1024;

/// A polynomial over GF(2): bit `i` is the coefficient of `x^i`.
///
/// `Display` and `FromStr` use restic's config form: lowercase hex without `0x`
/// (`3da3358b4dc173`); serde (de)serializes the same string, as in restic's
/// `"chunker_polynomial"` field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pol(pub u64);

impl Pol {
    /// The degree of the polynomial; -1 for the zero polynomial.
    pub const fn deg(self) -> i32 {
        63 - self.0.leading_zeros() as i32
    }

    /// A random irreducible polynomial of degree 53, found like restic does: random
    /// candidates with the `x^53` and `1` terms set, until one passes the irreducibility test.
    pub fn random() -> Pol {
        Pol::random_from(&mut rand::rng())
    }

    /// [`Pol::random`] drawing from the given generator.
    ///
    /// Panics if the generator yields no irreducible polynomial in a million candidates (about
    /// one candidate in 27 is irreducible, so only a broken generator gets there).
    pub fn random_from<R: rand::Rng + ?Sized>(rng: &mut R) -> Pol {
        for _ in 0..1_000_000 {
            let candidate = Pol((rng.random::<u64>() & ((1 << 54) - 1)) | (1 << 53) | 1);
            if candidate.is_irreducible() {
                return candidate;
            }
        }
        panic!("the random number generator yielded no irreducible polynomial in a million tries");
    }

    /// Whether the polynomial has no factor of smaller positive degree over GF(2).
    ///
    /// Ben-Or's test: `f` of degree `d` is irreducible iff `gcd(f, x^(2^i) - x mod f) = 1` for
    /// every `i` in `1..=d/2`. Constants (degree 0 or less) are not irreducible.
    pub fn is_irreducible(&self) -> bool {
        let f = self.0;
        let d = self.deg();
        if d < 1 {
            return false;
        }
        let x = pol_mod(2, f);
        let mut x_pow = x; // x^(2^i) mod f
        for _ in 1..=d / 2 {
            x_pow = pol_mul_mod(x_pow, x_pow, f);
            if pol_gcd(f, x_pow ^ x) != 1 {
                return false;
            }
        }
        true
    }

    /// Checks that this polynomial can drive the chunker: irreducible, of degree 8 to 53
    /// (restic makes degree 53; its chunker refuses higher degrees).
    pub fn validate(&self) -> Result<(), PolError> {
        let d = self.deg();
        if !(8..=POL_DEGREE).contains(&d) {
            return Err(PolError(format!(
                "chunker polynomial {self} has degree {d}, but restic's chunker needs a degree from 8 to 53; the repository config is damaged"
            )));
        }
        if !self.is_irreducible() {
            return Err(PolError(format!(
                "chunker polynomial {self} is not irreducible; the repository config is damaged"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Pol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Debug for Pol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pol(0x{:x})", self.0)
    }
}

/// A polynomial that does not parse or cannot drive the chunker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolError(String);

impl fmt::Display for PolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolError {}

impl FromStr for Pol {
    type Err = PolError;

    /// Parses restic's form, hex digits without a prefix (either case, as Go's
    /// `strconv.ParseUint(s, 16, 64)` accepts).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            let shown: String = s.chars().take(40).collect();
            return Err(PolError(format!(
                "chunker polynomial {shown:?} is not a hexadecimal number of at most 16 digits"
            )));
        }
        u64::from_str_radix(s, 16)
            .map(Pol)
            .map_err(|e| PolError(format!("chunker polynomial {s:?}: {e}")))
    }
}

impl serde::Serialize for Pol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Degree of a raw polynomial; -1 for zero.
fn raw_deg(a: u64) -> i32 {
    63 - a.leading_zeros() as i32
}

/// `a mod m` over GF(2). `m` must not be zero.
fn pol_mod(mut a: u64, m: u64) -> u64 {
    let dm = raw_deg(m);
    loop {
        let da = raw_deg(a);
        if da < dm {
            return a;
        }
        a ^= m << (da - dm);
    }
}

/// `a * b mod m` over GF(2), by shift-and-add with reduction at every step. `m` must not be
/// zero.
fn pol_mul_mod(a: u64, b: u64, m: u64) -> u64 {
    let a = pol_mod(a, m);
    let dm = raw_deg(m);
    let top = 1u64 << dm;
    let mut res = 0u64;
    for i in (0..=raw_deg(b)).rev() {
        // res < x^dm before the shift, so the shifted value has at most bit dm set.
        res <<= 1;
        if res & top != 0 {
            res ^= m;
        }
        if (b >> i) & 1 == 1 {
            res ^= a;
        }
    }
    res
}

fn pol_gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = pol_mod(a, b);
        a = b;
        b = r;
    }
    a
}

/// Lookup tables for one polynomial. Building them costs some microseconds of polynomial
/// arithmetic; [`ChunkerTables::cached`] keeps one copy per polynomial for the process.
pub struct ChunkerTables {
    pol: Pol,
    /// `64 - degree`: digests are kept shifted up by this much.
    shift: u32,
    /// Two tables in one array. `lut[i] = (i * x^degree mod P) << shift` folds the byte
    /// shifted out at the top back in (restic's `mod` table without the half that cancels the
    /// top byte). `lut[256 + b] = (b * x^(8 * 64) mod P) << shift` removes byte `b` leaving
    /// the window, already multiplied by `x^8` (restic's `out` table, applied one step later
    /// so it stays off the digest's dependency chain).
    lut: [u64; 512],
}

impl ChunkerTables {
    /// Builds the tables for `pol`.
    ///
    /// Panics if the degree of `pol` is not between 8 and 53: restic's chunker cannot run on
    /// such polynomials. Check polynomials read from a repository with [`Pol::validate`].
    pub fn new(pol: Pol) -> ChunkerTables {
        let deg = pol.deg();
        assert!(
            (8..=POL_DEGREE).contains(&deg),
            "chunker polynomial {pol} has degree {deg}; restic's chunker needs 8 to 53"
        );
        let p = pol.0;
        let shift = (64 - deg) as u32;
        let x_deg = pol_mod(1 << deg, p);
        let x_window = (0..8 * WINDOW_SIZE).fold(1u64, |acc, _| pol_mul_mod(acc, 2, p));
        let mut lut = [0u64; 512];
        for b in 0..256u64 {
            lut[b as usize] = pol_mul_mod(b, x_deg, p) << shift;
            lut[256 + b as usize] = pol_mul_mod(b, x_window, p) << shift;
        }
        ChunkerTables { pol, shift, lut }
    }

    /// The tables for `pol`, built on first use and shared for the life of the process.
    ///
    /// Panics like [`ChunkerTables::new`].
    pub fn cached(pol: Pol) -> Arc<ChunkerTables> {
        static CACHE: OnceLock<Mutex<HashMap<Pol, Arc<ChunkerTables>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(pol)
            .or_insert_with(|| Arc::new(ChunkerTables::new(pol)))
            .clone()
    }

    /// The polynomial these tables belong to.
    pub fn pol(&self) -> Pol {
        self.pol
    }
}

impl fmt::Debug for ChunkerTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkerTables")
            .field("pol", &self.pol)
            .finish_non_exhaustive()
    }
}

/// Size limits and cut mask. Always restic's values outside of tests, which use smaller ones
/// to get many cuts out of little data.
#[derive(Clone, Copy, Debug)]
struct Params {
    min: usize,
    max: usize,
    mask: u64,
}

const RESTIC_PARAMS: Params = Params {
    min: MIN_SIZE,
    max: MAX_SIZE,
    mask: SPLIT_MASK,
};

/// Shift and mask of the digest: compile-time constants in restic's case (so they become
/// immediates in the hot loop), runtime values for anything else.
trait Shape: Copy {
    /// `64 - degree`.
    fn shift(self) -> u32;
    /// The split mask shifted like the digest.
    fn mask(self) -> u64;
}

/// Degree 53 and a 20-bit split mask: every repository restic creates.
#[derive(Clone, Copy)]
struct Restic53;

impl Shape for Restic53 {
    #[inline(always)]
    fn shift(self) -> u32 {
        64 - POL_DEGREE as u32
    }

    #[inline(always)]
    fn mask(self) -> u64 {
        SPLIT_MASK << (64 - POL_DEGREE as u32)
    }
}

#[derive(Clone, Copy)]
struct AnyShape {
    shift: u32,
    mask: u64,
}

impl Shape for AnyShape {
    #[inline(always)]
    fn shift(self) -> u32 {
        self.shift
    }

    #[inline(always)]
    fn mask(self) -> u64 {
        self.mask
    }
}

/// The rolling hash over left-aligned digests.
#[derive(Clone, Copy)]
struct Hasher<'a, S: Shape> {
    /// `reduce` then `slide` (see [`ChunkerTables`]), adjacent so one base register serves both.
    lut: &'a [u64; 512],
    shape: S,
}

impl<S: Shape> Hasher<'_, S> {
    /// Appends byte `b` to a digest without removing anything (window warm-up).
    #[inline(always)]
    fn append(self, d: u64, b: u8) -> u64 {
        (d << 8) ^ (u64::from(b) << self.shape.shift()) ^ self.lut[(d >> 56) as usize]
    }

    /// Slides the window on by one byte: `out` leaves, `b` enters.
    #[inline(always)]
    fn roll(self, d: u64, out: u8, b: u8) -> u64 {
        let side = self.lut[256 + usize::from(out)] ^ (u64::from(b) << self.shape.shift());
        ((d << 8) ^ side) ^ self.lut[(d >> 56) as usize]
    }

    #[inline(always)]
    fn hit(self, d: u64) -> bool {
        d & self.shape.mask() == 0
    }

    /// The digest restic holds after the byte before `data[end]` entered the window, i.e. the
    /// hash of `data[end - 64..end]`.
    #[inline(always)]
    fn window_digest(self, data: &[u8], end: usize) -> u64 {
        data[end - WINDOW_SIZE..end]
            .iter()
            .fold(0, |d, &b| self.append(d, b))
    }

    /// The smallest `e` in `from..=to` at which restic may cut (the digest of
    /// `data[e - 64..e]` matches the mask). Needs `64 < from` and `to <= data.len()`.
    fn search(self, data: &[u8], from: usize, to: usize) -> Option<usize> {
        debug_assert!(from > WINDOW_SIZE && to <= data.len());
        let mut e = from;
        while e <= to {
            let remaining = to - e + 1;
            if remaining < LANES * MIN_LANE_LEN {
                return self.search_serial(data, e, to);
            }
            let per_lane = (remaining / LANES).min(LANE_LEN) / BLOCK * BLOCK;
            if let Some(hit) = self.search_lanes(data, e, per_lane) {
                return Some(hit);
            }
            e += LANES * per_lane;
        }
        None
    }

    fn search_serial(self, data: &[u8], from: usize, to: usize) -> Option<usize> {
        let mut d = self.window_digest(data, from);
        if self.hit(d) {
            return Some(from);
        }
        // Candidate e = from + 1 + i takes in data[e - 1] and lets out data[e - 65].
        let ins = &data[from..to];
        let outs = &data[from - WINDOW_SIZE..to - WINDOW_SIZE];
        for (i, (&b, &out)) in ins.iter().zip(outs).enumerate() {
            d = self.roll(d, out, b);
            if self.hit(d) {
                return Some(from + 1 + i);
            }
        }
        None
    }

    /// Tests the `LANES * n` candidates from `start` on, lane `k` taking
    /// `start + k n .. start + (k + 1) n`, and returns the first hit in stream order.
    /// `n` is a multiple of [`BLOCK`]; `start` is above 64.
    fn search_lanes(self, data: &[u8], start: usize, n: usize) -> Option<usize> {
        debug_assert!(n.is_multiple_of(BLOCK) && start > WINDOW_SIZE);
        let a = [start, start + n, start + 2 * n, start + 3 * n];
        // Step s of lane k lets data[base[k] + s] out and data[base[k] + s + 64] in, which
        // yields the digest of candidate a[k] + s. The lanes start one candidate early.
        let base = a.map(|ak| ak - 1 - WINDOW_SIZE);
        let mut d = a.map(|ak| self.window_digest(data, ak - 1));
        // The best hit so far, as (lane, step).
        let mut best: Option<(usize, usize)> = None;
        for block_start in (0..n).step_by(BLOCK) {
            let window = |k: usize| -> &[u8; 2 * BLOCK] {
                let from = base[k] + block_start;
                data[from..from + 2 * BLOCK]
                    .try_into()
                    .expect("a range of 2 * BLOCK bytes")
            };
            let blocks = [window(0), window(1), window(2), window(3)];
            let mut i = 0;
            while let Some(step) = self.run_block(&mut d, &blocks, i) {
                for (k, &dk) in d.iter().enumerate() {
                    if self.hit(dk) && best.is_none_or(|(lane, _)| k < lane) {
                        best = Some((k, block_start + step));
                    }
                }
                if best.is_some_and(|(lane, _)| lane == 0) {
                    return Some(a[0] + block_start + step);
                }
                i = step + 1;
            }
            // Lanes after the best one cannot win any more, but running them costs nothing
            // extra and keeps this loop simple.
        }
        best.map(|(lane, step)| a[lane] + step)
    }

    /// Runs the lanes through steps `from..BLOCK` of a block, stopping after the first step at
    /// which any lane hits; returns that step.
    #[inline(always)]
    fn run_block(
        self,
        d: &mut [u64; LANES],
        blocks: &[&[u8; 2 * BLOCK]; LANES],
        from: usize,
    ) -> Option<usize> {
        let [mut d0, mut d1, mut d2, mut d3] = *d;
        let [b0, b1, b2, b3] = *blocks;
        let mut found = None;
        for i in from..BLOCK {
            d0 = self.roll(d0, b0[i], b0[i + BLOCK]);
            d1 = self.roll(d1, b1[i], b1[i + BLOCK]);
            d2 = self.roll(d2, b2[i], b2[i + BLOCK]);
            d3 = self.roll(d3, b3[i], b3[i + BLOCK]);
            // About one position in 2^20 hits: this branch is almost never taken.
            if self.hit(d0) || self.hit(d1) || self.hit(d2) || self.hit(d3) {
                found = Some(i);
                break;
            }
        }
        *d = [d0, d1, d2, d3];
        found
    }
}

/// The first cut position in `from..=to` (see [`Hasher::search`]).
fn find_cut(
    tables: &ChunkerTables,
    mask: u64,
    data: &[u8],
    from: usize,
    to: usize,
) -> Option<usize> {
    let lut = &tables.lut;
    if tables.shift == Restic53.shift() && mask == SPLIT_MASK {
        Hasher {
            lut,
            shape: Restic53,
        }
        .search(data, from, to)
    } else {
        let shape = AnyShape {
            shift: tables.shift,
            mask: mask << tables.shift,
        };
        Hasher { lut, shape }.search(data, from, to)
    }
}

/// What to do with a chunk that starts at `data[0]`, given the candidates before `next` were
/// already tested without a hit.
enum Decision {
    /// The chunk is `data[..n]`.
    Cut(usize),
    /// More input is needed; candidates before the returned position are done.
    NeedMore(usize),
}

/// Decides the chunk starting at `data[0]`. `at_eof` says that `data` holds all the remaining
/// input.
fn decide(tables: &ChunkerTables, p: Params, data: &[u8], next: usize, at_eof: bool) -> Decision {
    let end = data.len().min(p.max);
    let next = next.max(p.min);
    if next <= end
        && let Some(e) = find_cut(tables, p.mask, data, next, end)
    {
        return Decision::Cut(e);
    }
    if data.len() >= p.max {
        Decision::Cut(p.max)
    } else if at_eof {
        Decision::Cut(data.len())
    } else {
        Decision::NeedMore(next.max(end + 1))
    }
}

/// Where restic cuts `data` with polynomial `pol`: the end offset (exclusive) of every chunk,
/// in order, so the last entry is `data.len()`. Empty data gives no chunks.
///
/// Panics like [`ChunkerTables::new`] on a polynomial of a degree outside 8 to 53.
pub fn cut_points(data: &[u8], pol: Pol) -> Vec<usize> {
    cut_points_with(&ChunkerTables::cached(pol), RESTIC_PARAMS, data)
}

fn cut_points_with(tables: &ChunkerTables, p: Params, data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0;
    while start < data.len() {
        match decide(tables, p, &data[start..], 0, true) {
            Decision::Cut(n) => {
                start += n;
                ends.push(start);
            }
            Decision::NeedMore(_) => unreachable!("all input is present"),
        }
    }
    ends
}

/// Splits a byte stream into chunks exactly where restic would.
///
/// The reader is read in blocks of up to 512 KiB; reads that return fewer bytes are fine.
/// After a read error the chunker's position in the stream is unspecified: stop using it.
pub struct Chunker<R: Read> {
    reader: R,
    tables: Arc<ChunkerTables>,
    params: Params,
    read_block: usize,
    /// Bytes read past the last cut: the start of the next chunk.
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader` for polynomial `pol` (tables from [`ChunkerTables::cached`]).
    ///
    /// Panics like [`ChunkerTables::new`] on a polynomial of a degree outside 8 to 53; check
    /// polynomials from a repository with [`Pol::validate`] first.
    pub fn new(reader: R, pol: Pol) -> Chunker<R> {
        Chunker::with_tables(reader, ChunkerTables::cached(pol))
    }

    /// A chunker using tables the caller already holds.
    pub fn with_tables(reader: R, tables: Arc<ChunkerTables>) -> Chunker<R> {
        Chunker {
            reader,
            tables,
            params: RESTIC_PARAMS,
            read_block: READ_BLOCK,
            carry: Vec::new(),
            eof: false,
        }
    }

    /// The next chunk, or `None` at the end of the input. The last chunk may be shorter than
    /// [`MIN_SIZE`]; empty input yields no chunk at all.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok(self.next_chunk_into(&mut buf)?.then_some(buf))
    }

    /// Like [`Chunker::next_chunk`], but fills `buf` (replacing its contents) so a caller can
    /// reuse allocations. Returns `false`, with `buf` empty, at the end of the input.
    pub fn next_chunk_into(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        // The chunk is assembled in buf[..filled]. Whatever buf held before is overwritten
        // rather than cleared first: bytes past `filled` are initialised already, so reads go
        // straight into them and a reused buffer is not zeroed again for every chunk.
        let carried = self.carry.len();
        if buf.len() < carried {
            buf.resize(carried, 0);
        }
        buf[..carried].copy_from_slice(&self.carry);
        self.carry.clear();
        let p = self.params;
        // No cut is possible before the minimum size: get that much in as few reads as may be.
        let mut filled = self.fill(buf, carried, p.min)?;
        if filled == 0 {
            buf.clear();
            return Ok(false);
        }
        let mut next = p.min;
        loop {
            match decide(&self.tables, p, &buf[..filled], next, self.eof) {
                Decision::Cut(n) => {
                    self.carry.extend_from_slice(&buf[n..filled]);
                    buf.truncate(n);
                    return Ok(true);
                }
                Decision::NeedMore(resume) => {
                    next = resume;
                    // Never read beyond the maximum size: that data would only be carried.
                    let target = (filled + self.read_block).min(p.max);
                    filled = self.fill(buf, filled, target)?;
                }
            }
        }
    }

    /// Reads into `buf[filled..]` until `target` bytes are there or the input ends; returns
    /// the new fill level. `buf` may be longer than `filled`; it is lengthened if needed.
    fn fill(&mut self, buf: &mut Vec<u8>, mut filled: usize, target: usize) -> io::Result<usize> {
        if self.eof || filled >= target {
            return Ok(filled);
        }
        if buf.len() < target {
            buf.resize(target, 0);
        }
        while filled < target {
            match self.reader.read(&mut buf[filled..target]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(filled);
                    return Err(e);
                }
            }
        }
        Ok(filled)
    }

    /// The polynomial this chunker cuts with.
    pub fn pol(&self) -> Pol {
        self.tables.pol
    }

    /// Gives the reader back. Bytes read but not yet returned as chunks are lost.
    pub fn into_inner(self) -> R {
        self.reader
    }
}

#[cfg(test)]
mod tests;
