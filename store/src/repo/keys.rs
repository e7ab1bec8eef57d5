//! Key files: finding the one a password opens (within a budget of key files and scrypt
//! work, so that planted files cost an open a bounded time) and writing new ones.

use crate::backend::{Backend, FileType};
use crate::crypto::{self, KdfParams, Key};
use crate::format::{self, KeyData, KeyFile, MacKeyData};
use crate::id::Id;
use crate::{Error, Result};

/// restic tries at most this many key files when opening a repository. Key files skipped
/// before scrypt runs (unreadable, too large, refused parameters) do not count.
pub const MAX_KEYS_TRIED: usize = 20;

/// The most scrypt work ([`KdfParams::work`]) one open spends trying key files: twice what
/// one key may ask for ([`crypto::MAX_SCRYPT_WORK`]), 128 times restic's default key, some
/// seconds of one core. A key file that would take an open past it is not tried (a warning
/// names it), so planted keys cost each open a bounded time, however many there are.
pub const MAX_SCRYPT_WORK_PER_OPEN: u64 = 2 * crypto::MAX_SCRYPT_WORK;

/// Key files larger than this are skipped unread: restic's are about 450 bytes, and the
/// files are not authenticated, so their size is whatever someone planted.
pub const MAX_KEY_FILE_SIZE: u64 = 64 * 1024;

pub(super) fn write_key_file(
    backend: &dyn Backend,
    master: &Key,
    password: &str,
    kdf: KdfParams,
) -> Result<(Id, Vec<u8>)> {
    let salt: [u8; 64] = rand::random();
    let user = crypto::derive_key(password, &salt, kdf)?;
    let data = KeyData {
        mac: MacKeyData {
            k: master.mac_k.to_vec(),
            r: master.mac_r.to_vec(),
        },
        encrypt: master.encrypt.to_vec(),
    };
    let kf = KeyFile {
        created: format::now(),
        username: format::username(),
        hostname: format::hostname(),
        kdf: "scrypt".into(),
        n: kdf.n,
        r: kdf.r,
        p: kdf.p,
        salt: salt.to_vec(),
        data: user.seal(&serde_json::to_vec(&data).expect("key data serializes")),
    };
    let json = serde_json::to_vec(&kf).expect("key file serializes");
    let id = Id::hash(&json);
    backend.write(FileType::Key, &id.to_hex(), &json)?;
    Ok((id, json))
}

/// The key file to try first when opening a repository ([`super::OpenOptions::key_hint`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyHint {
    /// The key file's id (its name under `keys/`), as [`super::Repository::key_id`] gives it.
    pub id: String,
    /// A copy of the key file's bytes ([`super::Repository::key_hint`]), if one was kept: the key
    /// is derived from it while the stored file is read, so the round trip that reads the
    /// file no longer comes before the derivation. Used only if its hash is `id`.
    pub copy: Option<Vec<u8>>,
}

impl KeyHint {
    /// A hint that names the key file `id` and has no copy of it.
    pub fn named(id: impl Into<String>) -> KeyHint {
        KeyHint {
            id: id.into(),
            copy: None,
        }
    }
}

// The copy is not secret (the repository holds it for anyone who can read it), but it is
// kept out of debug output all the same: it is useless there.
impl std::fmt::Debug for KeyHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHint")
            .field("id", &self.id)
            .field(
                "copy",
                &self.copy.as_ref().map(|c| format!("{} bytes", c.len())),
            )
            .finish()
    }
}

/// Finds the key file that opens with `password` and returns the master key, the file's id
/// and its bytes. Key files that cannot be used are skipped with a warning, so one planted or
/// damaged file does not lock everyone out.
pub(super) fn find_key(
    backend: &dyn Backend,
    password: &str,
    hint: Option<&KeyHint>,
) -> Result<(Key, Id, Vec<u8>)> {
    let location = backend.location();
    let mut tried = 0;
    let mut work_left = MAX_SCRYPT_WORK_PER_OPEN;
    let mut untried = Vec::new();
    let mut passed_over = None;
    let hinted = hint.and_then(|h| match Id::from_hex(&h.id) {
        Ok(id) => Some((id, h.copy.as_deref())),
        Err(_) => {
            tracing::warn!(
                "ignoring the key hint {:?}: not a key id (64 hex digits)",
                h.id
            );
            None
        }
    });
    if let Some((id, copy)) = hinted {
        let copy = copy.filter(|c| {
            let fits = Id::hash(c) == id && c.len() as u64 <= MAX_KEY_FILE_SIZE;
            if !fits {
                tracing::warn!(
                    "ignoring the copy of key file keys/{id} in the key hint: it is not that file"
                );
            }
            fits
        });
        // Read whole, up to the size a key file may have: without a listing the size is not
        // known, and both backends refuse a range past the end. The copy's key is derived
        // meanwhile; it counts only if the repository still holds the same file.
        let (stored, from_copy) = std::thread::scope(|s| {
            let stored =
                s.spawn(|| backend.read_at_most(FileType::Key, &id.to_hex(), MAX_KEY_FILE_SIZE));
            let from_copy = copy.map(|c| try_key_file(c, password, &mut work_left));
            (stored.join().expect("key reader"), from_copy)
        });
        match stored {
            Ok(raw) => {
                let outcome = match from_copy {
                    Some(outcome) if copy == Some(raw.as_slice()) => outcome,
                    _ => try_key_file(&raw, password, &mut work_left),
                };
                match outcome {
                    KeyTry::Opened(key) => return Ok((key, id, raw)),
                    KeyTry::NotThisPassword => {
                        tried += 1;
                        passed_over = Some(id.to_hex());
                    }
                    // Tried again below, where what is wrong with it is reported.
                    KeyTry::Unusable(_) | KeyTry::OverBudget(_) => {}
                }
            }
            Err(Error::NotFound { .. }) => {
                tracing::debug!("{location}: the hinted key file keys/{id} does not exist")
            }
            // Whatever is wrong with the hinted file (too long, a folder, a FIFO, unreadable),
            // the other key files may still open the repository.
            Err(e) => tracing::warn!(
                "{location}: passing over the key file the key hint names ({e}); listing the \
                 key files instead"
            ),
        }
    }
    let mut keys = backend.list(FileType::Key)?;
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(name) = passed_over {
        keys.retain(|k| k.name != name);
    }
    let mut unusable = Vec::new();
    let mut raw = Vec::new();
    for k in &keys {
        if tried == MAX_KEYS_TRIED {
            break;
        }
        let outcome = if k.size == 0 {
            KeyTry::Unusable("empty".into())
        } else if k.size > MAX_KEY_FILE_SIZE {
            KeyTry::Unusable(format!(
                "{} bytes long, above the limit {}",
                k.size,
                format::human_bytes(MAX_KEY_FILE_SIZE)
            ))
        } else {
            // The listed size bounds the read, whatever the file holds by now.
            match backend.read_range(FileType::Key, &k.name, 0, k.size) {
                Ok(read) => {
                    raw = read;
                    try_key_file(&raw, password, &mut work_left)
                }
                Err(Error::NotFound { .. }) => continue,
                // One unreadable file (permissions, a folder in its place) is passed over
                // like a damaged one; the backend failing is not.
                Err(e) if !e.is_retryable() => KeyTry::Unusable(format!("cannot be read: {e}")),
                Err(e) => return Err(e),
            }
        };
        match outcome {
            KeyTry::Opened(key) => {
                return Ok((key, Id::from_hex(&k.name).unwrap_or_default(), raw));
            }
            KeyTry::NotThisPassword => tried += 1,
            KeyTry::Unusable(why) => {
                tracing::warn!("{location}: skipping key file keys/{}: {why}", k.name);
                unusable.push(format!("keys/{}: {why}", k.name));
            }
            KeyTry::OverBudget(why) => {
                tracing::warn!("{location}: not trying key file keys/{}: {why}", k.name);
                untried.push(format!("keys/{}: {why}", k.name));
            }
        }
    }
    if let Some(first) = untried.first() {
        return Err(Error::Corrupt {
            what: format!("{location}/keys"),
            message: format!(
                "the password opens none of the {tried} key files tried, and {} more were not \
                 tried ({first}): remove the key files nobody uses, or name yours with \
                 VOLBACKUP_KEY_HINT, which is tried first",
                untried.len()
            ),
        });
    }
    if tried == 0
        && let Some(first) = unusable.first()
    {
        return Err(Error::Corrupt {
            what: format!("{location}/keys"),
            message: format!(
                "no key file can be used ({} skipped; {first}): the key files are damaged or \
                 were replaced, restore keys/ from a copy",
                unusable.len()
            ),
        });
    }
    Err(Error::WrongPassword { location })
}

/// What one key file gave.
enum KeyTry {
    /// The password opens it: the master key.
    Opened(Key),
    /// A usable key file the password does not open.
    NotThisPassword,
    /// Not a key file this program will use, and why.
    Unusable(String),
    /// A key file whose scrypt work would take the open past [`MAX_SCRYPT_WORK_PER_OPEN`],
    /// left untried, and why.
    OverBudget(String),
}

/// Tries one key file; the scrypt parameters are checked before scrypt runs, and the work it
/// takes is taken from `work_left` (a key file that asks for more than is left is not tried).
fn try_key_file(raw: &[u8], password: &str, work_left: &mut u64) -> KeyTry {
    let kf = match serde_json::from_slice::<KeyFile>(raw) {
        Ok(kf) => kf,
        Err(e) => return KeyTry::Unusable(format!("not a key file: {e}")),
    };
    if kf.kdf != "scrypt" {
        return KeyTry::Unusable(format!("unknown key derivation {:?}", kf.kdf));
    }
    let params = KdfParams {
        n: kf.n,
        r: kf.r,
        p: kf.p,
    };
    if let Err(why) = params.check_limits() {
        return KeyTry::Unusable(why);
    }
    if params.work() > *work_left {
        return KeyTry::OverBudget(format!(
            "its scrypt parameters (N={}, r={}, p={}, {} times restic's default key) would take \
             this open past the {} times the default it may spend on key files",
            params.n,
            params.r,
            params.p,
            params.times_default(),
            MAX_SCRYPT_WORK_PER_OPEN / KdfParams::default().work()
        ));
    }
    *work_left -= params.work();
    let user = match crypto::derive_key(password, &kf.salt, params) {
        Ok(user) => user,
        Err(e) => return KeyTry::Unusable(e.to_string()),
    };
    let Ok(plain) = user.open(&kf.data) else {
        return KeyTry::NotThisPassword;
    };
    let kd = match serde_json::from_slice::<KeyData>(&plain) {
        Ok(kd) => kd,
        Err(e) => return KeyTry::Unusable(format!("the key data is not valid: {e}")),
    };
    if kd.encrypt.len() != 32 || kd.mac.k.len() != 16 || kd.mac.r.len() != 16 {
        return KeyTry::Unusable("the key data has keys of the wrong length".into());
    }
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(&kd.encrypt);
    b[32..48].copy_from_slice(&kd.mac.k);
    b[48..].copy_from_slice(&kd.mac.r);
    let key = Key::from_bytes(&b);
    if key.is_valid() {
        KeyTry::Opened(key)
    } else {
        KeyTry::Unusable("the key data holds an invalid key".into())
    }
}
