//! restic's authenticated encryption: AES-256-CTR, then Poly1305-AES over the ciphertext.
//!
//! Stored form of every sealed message: `IV (16) || ciphertext || MAC (16)`. The IV is the
//! initial 128-bit big-endian counter; the Poly1305 one-time key is `r || AES-128_k(IV)`.
//! Keys used by a password are derived with scrypt.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use poly1305::Poly1305;

use crate::{Error, Result};

/// Bytes added by [`Key::seal`]: IV and MAC.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;
pub(crate) const IV_LEN: usize = 16;
const MAC_LEN: usize = 16;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// The Poly1305 `r` clamp restic applies to new keys.
const R_MASK: [u8; 16] = [
    0xff, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f, 0xfc, 0xff, 0xff, 0x0f,
];

/// A repository (or user) key: AES-256 encryption key and the Poly1305-AES MAC key (`k`, `r`).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// AES-256 key for the CTR stream.
    pub encrypt: [u8; 32],
    /// AES-128 key that encrypts the IV into the Poly1305 `s` part.
    pub mac_k: [u8; 16],
    /// Poly1305 `r` part (clamped).
    pub mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

impl Key {
    /// A new random key, `r` clamped as restic does.
    pub fn random() -> Key {
        let mut mac_r: [u8; 16] = rand::random();
        for (b, m) in mac_r.iter_mut().zip(R_MASK) {
            *b &= m;
        }
        Key {
            encrypt: rand::random(),
            mac_k: rand::random(),
            mac_r,
        }
    }

    /// Builds a key from scrypt output (64 bytes: encryption key, `k`, `r`).
    pub fn from_bytes(b: &[u8; 64]) -> Key {
        let mut k = Key {
            encrypt: [0; 32],
            mac_k: [0; 16],
            mac_r: [0; 16],
        };
        k.encrypt.copy_from_slice(&b[..32]);
        k.mac_k.copy_from_slice(&b[32..48]);
        k.mac_r.copy_from_slice(&b[48..]);
        k
    }

    /// Whether the key could be a real key (restic rejects all-zero parts).
    pub fn is_valid(&self) -> bool {
        self.encrypt != [0; 32] && self.mac_k != [0; 16] && self.mac_r != [0; 16]
    }

    fn mac(&self, iv: &[u8], ciphertext: &[u8]) -> [u8; 16] {
        let aes = aes::Aes128::new(&self.mac_k.into());
        let mut s = aes::Block::clone_from_slice(iv);
        aes.encrypt_block(&mut s);
        let mut pk = [0u8; 32];
        pk[..16].copy_from_slice(&self.mac_r);
        pk[16..].copy_from_slice(&s);
        poly1305_mac(&pk, ciphertext)
    }

    /// Encrypts and authenticates `plaintext`: returns `IV || ciphertext || MAC`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.seal_into(plaintext, &mut out);
        out
    }

    /// Like [`Key::seal`], appending the sealed form to `out` (no other allocation).
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let iv = loop {
            let iv: [u8; 16] = rand::random();
            if iv != [0; 16] {
                break iv;
            }
        };
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let ct = &mut out[start + IV_LEN..];
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(ct);
        let mac = self.mac(&iv, &out[start + IV_LEN..]);
        out.extend_from_slice(&mac);
    }

    /// Checks the MAC, then decrypts. A wrong MAC (wrong key or damaged data) is
    /// [`Error::Corrupt`] naming `what`.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        self.open_in_place(sealed.to_vec())
    }

    /// Like [`Key::open`], reusing the sealed buffer for the plaintext.
    pub fn open_in_place(&self, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        let n = self.open_slice(&mut buf)?;
        buf.truncate(IV_LEN + n);
        buf.drain(..IV_LEN);
        Ok(buf)
    }

    /// Checks and decrypts `buf` in place; the plaintext is `buf[16..16 + n]` for the
    /// returned `n`.
    pub fn open_slice(&self, buf: &mut [u8]) -> Result<usize> {
        let iv = self.check(buf)?;
        let end = buf.len() - MAC_LEN;
        let ct = &mut buf[IV_LEN..end];
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(ct);
        Ok(ct.len())
    }

    /// Checks `sealed` and decrypts it into `out`, which must be exactly as long as the
    /// plaintext (`sealed.len() - 32`): where the plaintext has a place already, this saves
    /// decrypting in place and copying it there.
    pub fn open_into(&self, sealed: &[u8], out: &mut [u8]) -> Result<()> {
        let iv = self.check(sealed)?;
        let ct = &sealed[IV_LEN..sealed.len() - MAC_LEN];
        Aes256Ctr::new(&self.encrypt.into(), &iv.into())
            .apply_keystream_b2b(ct, out)
            .map_err(|_| corrupt("sealed data is not as long as its place"))
    }

    /// Checks the MAC of sealed data (constant time); returns its IV.
    fn check(&self, sealed: &[u8]) -> Result<[u8; IV_LEN]> {
        if sealed.len() < OVERHEAD {
            return Err(corrupt("sealed data is shorter than IV and MAC"));
        }
        let (iv, rest) = sealed.split_at(IV_LEN);
        let (ct, mac) = rest.split_at(rest.len() - MAC_LEN);
        let want = self.mac(iv, ct);
        let diff = want
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(corrupt("MAC does not match (wrong key or damaged data)"));
        }
        Ok(iv.try_into().expect("16-byte IV"))
    }
}

/// Poly1305 over `data` (restic's "unpadded" form: the last partial block is padded with a 1
/// byte, not zeros). Whole blocks go through the universal-hash interface, which takes the
/// 4-blocks-at-a-time AVX2 path without copying each block; only the tail is fed one block
/// at a time.
fn poly1305_mac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    use poly1305::universal_hash::UniversalHash;
    let full = data.len() - data.len() % 16;
    let mut m = Poly1305::new(key.into());
    // Whole blocks only, so no zero padding is ever applied here.
    m.update_padded(&data[..full]);
    m.compute_unpadded(&data[full..]).into()
}

fn corrupt(message: &str) -> Error {
    Error::Corrupt {
        what: "sealed data".into(),
        message: message.into(),
    }
}

/// scrypt parameters of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// CPU/memory cost, a power of two.
    pub n: u64,
    /// Block size.
    pub r: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    /// restic's minimum and our default for new keys: N = 2^15, r = 8, p = 1.
    fn default() -> Self {
        KdfParams {
            n: 1 << 15,
            r: 8,
            p: 1,
        }
    }
}

/// Largest scrypt N accepted.
pub const MAX_SCRYPT_N: u64 = 1 << 20;
/// Largest scrypt r accepted.
pub const MAX_SCRYPT_R: u32 = 32;
/// Largest scrypt p accepted.
pub const MAX_SCRYPT_P: u32 = 16;
/// Largest scrypt working memory (128·N·r bytes) accepted: each of N and r may be at its cap,
/// not both at once.
pub const MAX_SCRYPT_MEMORY: u64 = 1 << 30;

/// The most scrypt work (N·r·p, which its time grows with) a key may ask for: 2^24, 64 times
/// restic's default (N=2^15, r=8, p=1), a few seconds of one core. restic calibrates new keys
/// to about half a second on the machine that makes them, well below.
pub const MAX_SCRYPT_WORK: u64 = 1 << 24;

impl KdfParams {
    /// The work scrypt does with these parameters, N·r·p: what its time grows with.
    pub fn work(&self) -> u64 {
        self.n
            .saturating_mul(u64::from(self.r))
            .saturating_mul(u64::from(self.p))
    }

    /// How many times restic's default key ([`KdfParams::default`]) these parameters cost.
    pub fn times_default(&self) -> u64 {
        self.work() / KdfParams::default().work()
    }

    /// Why these parameters are refused, if they are. Key files are not authenticated, so
    /// anyone who can write to `keys/` chooses them; without limits a planted key makes every
    /// open allocate without bound (N = 2^40) or spin for hours. restic's own keys stay far
    /// below these limits (about 60 MiB of memory).
    pub fn check_limits(&self) -> std::result::Result<(), String> {
        let KdfParams { n, r, p } = *self;
        if n < 2 || !n.is_power_of_two() {
            return Err(format!("scrypt N={n} is not a power of two"));
        }
        if n > MAX_SCRYPT_N {
            return Err(format!("scrypt N={n} is above the limit 2^20"));
        }
        if r == 0 || r > MAX_SCRYPT_R {
            return Err(format!("scrypt r={r} is outside 1..={MAX_SCRYPT_R}"));
        }
        if p == 0 || p > MAX_SCRYPT_P {
            return Err(format!("scrypt p={p} is outside 1..={MAX_SCRYPT_P}"));
        }
        let memory = 128 * n * u64::from(r);
        if memory > MAX_SCRYPT_MEMORY {
            return Err(format!(
                "scrypt N={n}, r={r} needs {} of memory, above the limit {}",
                crate::format::human_bytes(memory),
                crate::format::human_bytes(MAX_SCRYPT_MEMORY)
            ));
        }
        if self.work() > MAX_SCRYPT_WORK {
            return Err(format!(
                "scrypt N={n}, r={r}, p={p} costs {} times restic's default key, above the \
                 limit of {} times",
                self.times_default(),
                MAX_SCRYPT_WORK / KdfParams::default().work()
            ));
        }
        Ok(())
    }

    /// Cheap parameters for tests (N = 2^10). Never use these for real repositories.
    pub fn insecure_fast() -> Self {
        KdfParams {
            n: 1 << 10,
            r: 8,
            p: 1,
        }
    }
}

/// Derives the user key from a password with scrypt (64 bytes of output).
/// Parameters outside [`KdfParams::check_limits`] are refused before anything is allocated.
pub fn derive_key(password: &str, salt: &[u8], params: KdfParams) -> Result<Key> {
    params.check_limits().map_err(Error::Invalid)?;
    let log_n = params.n.trailing_zeros() as u8;
    let p = scrypt::Params::new(log_n, params.r, params.p, 64)
        .map_err(|e| Error::Invalid(format!("bad scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password.as_bytes(), salt, &p, &mut out)
        .map_err(|e| Error::Invalid(format!("scrypt failed: {e}")))?;
    Ok(Key::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrypt_parameters_beyond_the_limits_are_refused_without_deriving() {
        let ok = |n, r, p| KdfParams { n, r, p }.check_limits().is_ok();
        assert!(ok(1 << 15, 8, 1), "restic's default");
        assert!(ok(1 << 20, 8, 2));
        assert!(ok(1 << 18, 32, 1));
        assert!(
            ok(1 << 15, 8, 16),
            "restic's default calibrated for a fast machine"
        );
        assert!(!ok(1 << 20, 8, 16), "512 times the default, about a minute");
        assert!(!ok(1 << 18, 8, 16), "128 times the default");
        assert!(!ok(1 << 40, 8, 1));
        assert!(!ok(1 << 21, 1, 1));
        assert!(!ok(1 << 20, 32, 1), "4 GiB of memory");
        assert!(!ok(3 << 10, 8, 1), "not a power of two");
        assert!(!ok(1, 8, 1));
        assert!(!ok(1 << 10, 0, 1));
        assert!(!ok(1 << 10, 33, 1));
        assert!(!ok(1 << 10, 8, 0));
        assert!(!ok(1 << 10, 8, 17));
        let err = derive_key(
            "pw",
            &[0; 64],
            KdfParams {
                n: 1 << 40,
                r: 8,
                p: 1,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("above the limit 2^20"), "{err}");
    }

    #[test]
    fn sealed_data_opens_to_the_plaintext() {
        let k = Key::random();
        for len in [0usize, 1, 15, 16, 17, 1000, 70000] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = k.seal(&pt);
            assert_eq!(sealed.len(), len + OVERHEAD);
            if len > 0 {
                assert_ne!(
                    &sealed[16..16 + len],
                    &pt[..],
                    "ciphertext equals plaintext"
                );
            }
            assert_eq!(k.open(&sealed).unwrap(), pt);
        }
    }

    #[test]
    fn tampered_ciphertext_or_mac_fails_to_open() {
        let k = Key::random();
        let sealed = k.seal(b"hello world");
        for i in [0, 16, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                matches!(k.open(&bad), Err(Error::Corrupt { .. })),
                "flip at {i}"
            );
        }
        assert!(Key::random().open(&sealed).is_err());
        assert!(k.open(&sealed[..20]).is_err());
    }

    #[test]
    fn fast_poly1305_equals_the_plain_unpadded_computation() {
        let key: [u8; 32] = rand::random();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in (0..200).chain([255, 256, 257, 1023, 1024, 1025, 4095, 5000]) {
            let want: [u8; 16] = Poly1305::new(&key.into())
                .compute_unpadded(&data[..len])
                .into();
            assert_eq!(poly1305_mac(&key, &data[..len]), want, "length {len}");
        }
    }

    #[test]
    fn poly1305_matches_the_rfc_8439_vector() {
        // RFC 8439 section 2.5.2.
        let key = hex::decode("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
            .unwrap();
        let msg = b"Cryptographic Forum Research Group";
        let tag = poly1305_mac(&key.try_into().unwrap(), msg);
        assert_eq!(hex::encode(tag), "a8061dc1305136c6c22b8baf0c0127a9");
    }

    #[test]
    fn new_keys_are_clamped_like_restic() {
        let k = Key::random();
        assert!(k.is_valid());
        for (b, m) in k.mac_r.iter().zip(R_MASK) {
            assert_eq!(b & !m, 0);
        }
    }

    #[test]
    fn scrypt_matches_the_rfc_7914_vector() {
        // RFC 7914 section 12, second vector: P="password", S="NaCl", N=1024, r=8, p=16.
        let k = derive_key(
            "password",
            b"NaCl",
            KdfParams {
                n: 1024,
                r: 8,
                p: 16,
            },
        )
        .unwrap();
        assert_eq!(
            hex::encode(&k.encrypt[..16]),
            "fdbabe1c9d3472007856e7190d01e9fe"
        );
    }
}
