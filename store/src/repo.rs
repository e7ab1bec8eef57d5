//! An open repository: backend, master key, config and index.
//!
//! The repository itself lives here: opening and creating it, its limits, its unpacked files
//! (index, snapshots, locks) and the in-memory index. Beside it: `keys` finds the key file a
//! password opens and writes new ones, the blob reader ([`BlobReader`] and the blob methods of
//! [`Repository`]) decrypts and verifies blobs, and `read_ahead` reads what an operation will
//! ask for while the key is derived.

mod blob_reader;
mod keys;
mod read_ahead;
#[cfg(test)]
mod tests;

use std::io::Read as _;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, FileType};
use crate::crypto::{KdfParams, Key};
use crate::format::{Config, IndexFile, Snapshot};
use crate::id::Id;
use crate::index::{Index, IndexEntry};
use crate::{BlobType, Error, Result};

pub use blob_reader::{BlobReader, check_claim};
pub(crate) use blob_reader::{check_length, decompress_error, mac_error, verify};
pub use keys::{KeyHint, MAX_KEY_FILE_SIZE, MAX_KEYS_TRIED, MAX_SCRYPT_WORK_PER_OPEN};
use keys::{find_key, write_key_file};
use read_ahead::Early;

/// Largest plaintext accepted for a data blob: the chunker's maximum, with room for other
/// writers whose chunker cuts a little larger.
pub const MAX_DATA_BLOB: u32 = crate::chunker::MAX_SIZE as u32 + (4 << 20);
/// Largest plaintext accepted for a tree blob, read or written: 2 GiB. restic's index and pack
/// header hold a blob's lengths (stored and decompressed) in 32 bits, and 2 GiB is the largest
/// power of two whose sealed form always fits there (4 GiB does not: sealing adds 32 bytes and
/// a blob that does not compress is stored as it is). A block image is one file node listing
/// every chunk id in 67 bytes of JSON, so this is about 32 million chunks: some 30 TiB of data
/// at the chunker's 1 MiB average, at least 15 TiB whatever the data (see [`crate::block`]); a
/// directory of about 7 million entries. Backups refuse, before their snapshot is written, a
/// tree that would be larger; a reader holds at most about 1.6 times the tree's size while it
/// reads one (the sealed blob, then the JSON and what is parsed from it).
pub const MAX_TREE_BLOB: u32 = 1 << 31;
/// Largest sealed pack header accepted (restic's own limit): about 400,000 blobs.
pub const MAX_PACK_HEADER: u64 = 16 << 20;

/// The most plaintext a blob of type `t` may have. Index entries and pack headers are not to
/// be trusted on this: a blob that claims more is refused before anything that large is read
/// or allocated, and no blob is ever decompressed beyond the length it claims.
pub fn max_blob_len(t: BlobType) -> u32 {
    match t {
        BlobType::Data => MAX_DATA_BLOB,
        BlobType::Tree => MAX_TREE_BLOB,
    }
}

/// The most JSON an unpacked file of type `t` may decompress to. An index file holds at most
/// about 50,000 blobs (under 10 MiB of JSON) when restic writes it; the limits leave room for
/// other writers without letting a small file expand without bound.
pub fn max_unpacked_len(t: FileType) -> usize {
    match t {
        FileType::Index => 512 << 20,
        FileType::Lock => 1 << 20,
        _ => 64 << 20,
    }
}

/// The longest file of kind `t`, as stored (sealed), that is read: a longer one is refused
/// from its size before its contents are read ([`Backend::read_at_most`]). Anyone who can
/// write to the repository can plant files, in `locks/` even without a key, so these bound
/// what one planted file costs. Lock, key and config files are a few hundred bytes; a
/// snapshot file is a few KiB (16 MiB holds hundreds of thousands of paths or tags); an index
/// file is started afresh at 50,000 blobs by restic and by us ([`crate::packer::INDEX_BLOBS_PER_FILE`]),
/// under 8 MiB of JSON, so 64 MiB leaves room for writers that pack more into one file.
pub fn max_file_len(t: FileType) -> u64 {
    match t {
        FileType::Config | FileType::Lock => 64 << 10,
        FileType::Key => MAX_KEY_FILE_SIZE,
        FileType::Snapshot => 16 << 20,
        FileType::Index => 64 << 20,
        FileType::Pack => u64::MAX,
    }
}

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// scrypt parameters of the first key (default N=2^15, r=8, p=1).
    pub kdf: KdfParams,
    /// The chunker polynomial; `None` draws a random irreducible one.
    pub polynomial: Option<u64>,
}

/// How [`Repository::open_with`] opens a repository.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions<'a> {
    /// The key file to try first: read by its name, without listing the key files, which
    /// saves a round trip before the key can be derived; with a copy of the file in the hint,
    /// the key is derived from the copy while the file is read, and used only if the
    /// repository still holds that file unchanged (a removed key stays removed). A hint that
    /// names no key file, or one the password does not open, is passed over and the key files
    /// are listed as without one.
    pub key_hint: Option<&'a KeyHint>,
    /// What to read while the key is derived from the password.
    pub read_ahead: ReadAhead,
}

/// What an open reads while the key is derived from the password: scrypt takes about as long
/// as three round trips to an object store. Chosen by what the repository is opened for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadAhead {
    /// Nothing: for a listing of the snapshots, and for whatever removes data (forget,
    /// prune, unlock), which lists what it removes under its own lock.
    #[default]
    Nothing,
    /// The snapshot and index files, listed and read: for a backup, a restore or a check,
    /// each of which loads the index under its own lock. The files, named by their hashes,
    /// serve whoever loads them first, so nothing is read twice. The listings are taken only
    /// by a backup's parent lookup ([`crate::parent`]) and a restore's snapshot lookup
    /// ([`crate::open_snapshot`]); the index files are listed again under the lock.
    SnapshotsAndIndex,
}

impl ReadAhead {
    fn kinds(self) -> &'static [FileType] {
        match self {
            ReadAhead::Nothing => &[],
            ReadAhead::SnapshotsAndIndex => &[FileType::Index, FileType::Snapshot],
        }
    }
}

/// A repository, opened with a password. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    key: Key,
    key_id: Id,
    /// That key file's bytes, as read (or written).
    key_file: Vec<u8>,
    config: Config,
    index: RwLock<Arc<Index>>,
    lock_wait: std::sync::Mutex<LockWait>,
    early: Early,
}

/// The ids of all files of one kind, sorted (names that are not ids are skipped).
fn list_ids_of(backend: &dyn Backend, t: FileType) -> Result<Vec<Id>> {
    Ok(list_sized_of(backend, t)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// A file's id and its size as listed.
type ListedFile = (Id, u64);

/// [`list_ids_of`] with each file's listed size.
fn list_sized_of(backend: &dyn Backend, t: FileType) -> Result<Vec<ListedFile>> {
    let mut files: Vec<ListedFile> = backend
        .list(t)?
        .into_iter()
        .filter_map(|f| Id::from_hex(&f.name).ok().map(|id| (id, f.size)))
        .collect();
    files.sort();
    Ok(files)
}

/// Hears one-line messages about a wait for a lock.
pub type WaitReport = Arc<dyn Fn(&str) + Send + Sync>;

/// How long taking a lock waits for a conflicting lock to go away, and whom it tells while it
/// waits (restic's `--retry-lock`). The default does not wait.
#[derive(Clone, Default)]
pub struct LockWait {
    /// The longest wait; zero fails at once.
    pub max: std::time::Duration,
    /// Called with a one-line message when the wait starts and every `report_every` after.
    pub on_wait: Option<WaitReport>,
    /// How often `on_wait` hears of a continuing wait (zero: once a minute).
    pub report_every: std::time::Duration,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location())
            .finish()
    }
}

impl Repository {
    /// Creates a new repository (format version 2) with one key for `password`.
    pub fn init(
        backend: Arc<dyn Backend>,
        password: &str,
        opts: &InitOptions,
    ) -> Result<Repository> {
        let location = backend.location();
        match backend.stat(FileType::Config, "config") {
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{location}: a repository already exists here (open it instead of creating one)"
                )));
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        backend.create()?;
        let master = Key::random();
        let (key_id, key_file) = write_key_file(backend.as_ref(), &master, password, opts.kdf)?;
        let polynomial = match opts.polynomial {
            Some(p) => p,
            None => crate::chunker::Pol::random().0,
        };
        let config = Config {
            version: 2,
            id: Id::random(),
            chunker_polynomial: polynomial,
        };
        let json = serde_json::to_vec(&config).expect("config serializes");
        backend.write(FileType::Config, "config", &master.seal(&json))?;
        Ok(Repository {
            inner: Arc::new(Inner {
                backend,
                key: master,
                key_id,
                key_file,
                config,
                index: RwLock::new(Arc::new(Index::new())),
                lock_wait: Default::default(),
                early: Early::default(),
            }),
        })
    }

    /// Opens an existing repository: finds a key that opens with `password` (trying at most
    /// [`MAX_KEYS_TRIED`]) and reads the config; nothing is read ahead and no key hint is
    /// tried ([`Repository::open_with`]). The index is not loaded: each operation loads it
    /// under its own lock.
    pub fn open(backend: Arc<dyn Backend>, password: &str) -> Result<Repository> {
        Self::open_with(backend, password, &OpenOptions::default())
    }

    /// Opens an existing repository as [`Repository::open`] does, with a key hint tried first
    /// and what the operation it is opened for will read read ahead ([`OpenOptions`]).
    pub fn open_with(
        backend: Arc<dyn Backend>,
        password: &str,
        opts: &OpenOptions<'_>,
    ) -> Result<Repository> {
        let key_hint = opts.key_hint;
        let early = Early::start(&backend, opts.read_ahead.kinds());
        let location = backend.location();
        // The config is read while the key files are listed and tried: behind an object
        // store, each of these requests costs a round trip.
        let (sealed_config, key) = std::thread::scope(|s| {
            let config = s.spawn(|| {
                backend.read_at_most(FileType::Config, "config", max_file_len(FileType::Config))
            });
            let key = find_key(backend.as_ref(), password, key_hint);
            (config.join().expect("config reader"), key)
        });
        let sealed_config = match sealed_config {
            Ok(c) => c,
            Err(Error::NotFound { .. }) => return Err(Error::NoRepository { location }),
            Err(e) => return Err(e),
        };
        let (key, key_id, key_file) = key?;
        let plain = key.open(&sealed_config).map_err(|_| Error::Corrupt {
            what: format!("{location}/config"),
            message: "does not decrypt with the repository key".into(),
        })?;
        let config: Config = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
            what: format!("{location}/config"),
            message: format!("not a valid config: {e}"),
        })?;
        if config.version != 1 && config.version != 2 {
            return Err(Error::Invalid(format!(
                "{location}: repository format version {} is not supported (1 and 2 are)",
                config.version
            )));
        }
        Ok(Repository {
            inner: Arc::new(Inner {
                backend,
                key,
                key_id,
                key_file,
                config,
                index: RwLock::new(Arc::new(Index::new())),
                lock_wait: Default::default(),
                early,
            }),
        })
    }

    /// The files of kind `t` as listed while the repository was opened, the first time it is
    /// asked for; a new listing otherwise, or when that listing failed. A listing that old is a
    /// guess, taken only by the backup's parent lookup and the restore's snapshot lookup: what
    /// must be current (the index files under a lock) is listed again with
    /// [`Repository::list_ids`].
    pub(crate) fn listed_ahead(&self, t: FileType) -> Result<Vec<Id>> {
        match self.inner.early.take(t, |read| read.lists.remove(&t)) {
            Some(ids) => Ok(ids),
            None => self.list_ids(t),
        }
    }

    /// Drops whatever was read ahead and not used.
    pub(crate) fn end_read_ahead(&self) {
        self.inner.early.clear();
    }

    /// Adds another key file for `password`; returns its id.
    pub fn add_key(&self, password: &str, kdf: KdfParams) -> Result<Id> {
        write_key_file(self.backend().as_ref(), &self.inner.key, password, kdf).map(|(id, _)| id)
    }

    /// The decrypted config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The backend's location, for messages.
    pub fn location(&self) -> String {
        self.inner.backend.location()
    }

    /// The master key.
    pub fn key(&self) -> &Key {
        &self.inner.key
    }

    /// Sets how long taking a lock waits for a conflicting one (shared by every clone).
    pub fn set_lock_wait(&self, wait: LockWait) {
        *self
            .inner
            .lock_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = wait;
    }

    /// How long taking a lock waits for a conflicting one.
    pub fn lock_wait(&self) -> LockWait {
        self.inner
            .lock_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The id of the key file that opened the repository.
    pub fn key_id(&self) -> Id {
        self.inner.key_id
    }

    /// A hint naming the key file that opened the repository, with a copy of it, for
    /// [`OpenOptions::key_hint`].
    pub fn key_hint(&self) -> KeyHint {
        KeyHint {
            id: self.inner.key_id.to_hex(),
            copy: Some(self.inner.key_file.clone()),
        }
    }

    /// Loads every index file into memory, replacing the current index.
    pub fn load_index(&self) -> Result<()> {
        self.load_index_files(self.list_ids(FileType::Index)?)
    }

    /// [`Repository::load_index`] passing over index files that cannot be used, for a
    /// backup or a restore ([`Repository::load_usable_index_files`]).
    pub fn load_usable_index(&self) -> Result<()> {
        self.load_usable_index_files(self.list_ids(FileType::Index)?)
    }

    /// Loads the index files `files` (as listed by [`Repository::list_ids`]) into memory,
    /// replacing the current index.
    pub fn load_index_files(&self, files: Vec<Id>) -> Result<()> {
        let loaded = load_parallel(&files, |id| self.load_index_file(id))?;
        self.set_index(files, loaded);
        Ok(())
    }

    /// [`Repository::load_index_files`] for a backup or a restore: an index file that cannot
    /// be used (it does not verify, decrypt or parse, or is longer than an index file may be)
    /// is passed over with a warning naming it, rather than stopping every backup and
    /// restore. Its blobs are then unknown here: a backup lists the packs no usable index
    /// file names in an index file of its own, from their headers
    /// ([`crate::resume::index_unindexed_packs`]); a restore that needs one of them fails
    /// naming the blob. `repo check` reports the file, and prune refuses to run
    /// while it is there.
    pub fn load_usable_index_files(&self, files: Vec<Id>) -> Result<()> {
        let loaded = self.load_passing_over(&files, |id| self.load_index_file(id))?;
        self.set_index(files, loaded);
        Ok(())
    }

    fn set_index(&self, files: Vec<Id>, loaded: Vec<Option<IndexFile>>) {
        let mut index = Index::new();
        // A file removed by a concurrent prune between listing and reading was superseded
        // by another index file: skip it.
        for (id, f) in files.into_iter().zip(loaded) {
            if let Some(f) = f {
                index.add_file(Some(id), &f);
            }
        }
        *self.inner.index.write().expect("index lock") = Arc::new(index);
    }

    /// [`load_parallel`] of files, passing over those that cannot be used
    /// ([`Error::Corrupt`]) with a warning naming each, once per process.
    fn load_passing_over<T: Send>(
        &self,
        ids: &[Id],
        load: impl Fn(&Id) -> Result<T> + Sync,
    ) -> Result<Vec<Option<T>>> {
        static WARNED: std::sync::Mutex<std::collections::BTreeSet<(String, Id)>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let usable = |e: &Error| matches!(e, Error::NotFound { .. } | Error::Corrupt { .. });
        let mut out = Vec::with_capacity(ids.len());
        for (id, loaded) in ids.iter().zip(load_each(ids, load, |e| !usable(e))) {
            match loaded {
                Some(Ok(v)) => out.push(Some(v)),
                Some(Err(e @ Error::Corrupt { .. })) => {
                    let first = WARNED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((self.location(), *id));
                    if first {
                        tracing::warn!(
                            fix = "check",
                            "{}: passing over {e}; check reports it, and prune refuses to run \
                             until it is removed",
                            self.location()
                        );
                    }
                    out.push(None);
                }
                Some(Err(Error::NotFound { .. })) | None => out.push(None),
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Loads one index file.
    pub fn load_index_file(&self, id: &Id) -> Result<IndexFile> {
        let raw = self.load_unpacked_raw(FileType::Index, id)?;
        IndexFile::from_json(&raw).map_err(|e| match e {
            Error::Corrupt { message, .. } => Error::Corrupt {
                what: format!("index/{id}"),
                message,
            },
            e => e,
        })
    }

    /// The current in-memory index (a snapshot of it; cheap).
    pub fn index(&self) -> Arc<Index> {
        self.inner.index.read().expect("index lock").clone()
    }

    /// Adds entries to the in-memory index (after their index file was saved).
    pub fn add_to_index(&self, file: &IndexFile) {
        let mut guard = self.inner.index.write().expect("index lock");
        let mut idx = (**guard).clone();
        idx.add_file(None, file);
        *guard = Arc::new(idx);
    }

    /// Whether the index knows a blob.
    pub fn has_blob(&self, t: BlobType, id: &Id) -> bool {
        self.inner.index.read().expect("index lock").has(t, id)
    }

    /// Where a blob is stored.
    pub fn blob_entry(&self, t: BlobType, id: &Id) -> Option<IndexEntry> {
        self.inner
            .index
            .read()
            .expect("index lock")
            .get(t, id)
            .copied()
    }

    /// Seals and stores an unpacked file (index, snapshot, lock): `0x02 || zstd(json)`.
    /// Returns its id (= file name).
    pub fn save_unpacked_raw(&self, t: FileType, json: &[u8]) -> Result<Id> {
        // Format version 1 knows no compression: its readers expect bare JSON.
        let plain = if self.inner.config.version < 2 {
            json.to_vec()
        } else {
            let mut plain = Vec::with_capacity(json.len() / 4 + 64);
            plain.push(2u8);
            let compressed = zstd::bulk::compress(json, 3)
                .map_err(|e| Error::Invalid(format!("zstd compression failed: {e}")))?;
            plain.extend_from_slice(&compressed);
            plain
        };
        let sealed = self.inner.key.seal(&plain);
        let id = Id::hash(&sealed);
        self.inner.backend.write(t, &id.to_hex(), &sealed)?;
        Ok(id)
    }

    /// Reads an unpacked file: verifies the name hash and MAC, decompresses; returns the JSON.
    pub fn load_unpacked_raw(&self, t: FileType, id: &Id) -> Result<Vec<u8>> {
        let name = id.to_hex();
        let what = || crate::backend::relative_path(t, &name);
        let sealed = match self
            .inner
            .early
            .take(t, |read| read.files.remove(&(t, *id)))
        {
            Some(sealed) => sealed,
            None => self.inner.backend.read_at_most(t, &name, max_file_len(t))?,
        };
        if Id::hash(&sealed) != *id {
            return Err(Error::Corrupt {
                what: what(),
                message: "content does not match its name (SHA-256)".into(),
            });
        }
        let plain = self
            .inner
            .key
            .open_in_place(sealed)
            .map_err(|_| Error::Corrupt {
                what: what(),
                message: "does not decrypt with the repository key (MAC mismatch)".into(),
            })?;
        decode_unpacked(&plain, max_unpacked_len(t)).map_err(|message| Error::Corrupt {
            what: what(),
            message,
        })
    }

    /// Serializes `value` as JSON and stores it with [`Repository::save_unpacked_raw`].
    pub fn save_unpacked<T: Serialize>(&self, t: FileType, value: &T) -> Result<Id> {
        let json = serde_json::to_vec(value).expect("repository JSON serializes");
        self.save_unpacked_raw(t, &json)
    }

    /// Loads and parses an unpacked JSON file.
    pub fn load_unpacked<T: DeserializeOwned>(&self, t: FileType, id: &Id) -> Result<T> {
        let raw = self.load_unpacked_raw(t, id)?;
        serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            what: crate::backend::relative_path(t, &id.to_hex()),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// The ids of all files of one kind (names that are not ids are skipped).
    pub fn list_ids(&self, t: FileType) -> Result<Vec<Id>> {
        list_ids_of(self.inner.backend.as_ref(), t)
    }

    /// All snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.snapshots_of(self.list_ids(FileType::Snapshot)?, false)
    }

    /// [`Repository::list_snapshots`] from the listing made while the repository was opened
    /// ([`Repository::listed_ahead`]), for a guess that may miss a snapshot saved since: a
    /// backup's parent ([`crate::parent`]). A snapshot file that cannot be used is passed over
    /// with a warning naming it.
    pub(crate) fn list_snapshots_ahead(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.snapshots_of(self.listed_ahead(FileType::Snapshot)?, true)
    }

    /// The snapshots `ids`, oldest first; with `pass_over`, those that cannot be used are
    /// left out with a warning instead of failing the whole list.
    fn snapshots_of(&self, ids: Vec<Id>, pass_over: bool) -> Result<Vec<(Id, Snapshot)>> {
        let load = |id: &Id| self.load_unpacked::<Snapshot>(FileType::Snapshot, id);
        let loaded = if pass_over {
            self.load_passing_over(&ids, load)?
        } else {
            load_parallel(&ids, load)?
        };
        let mut out: Vec<(Id, Snapshot)> = ids
            .into_iter()
            .zip(loaded)
            .filter_map(|(id, s)| s.map(|s| (id, s)))
            .collect();
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Finds a snapshot by `latest`, a full id, or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_in(spec, || self.list_ids(FileType::Snapshot), false)
    }

    /// [`Repository::find_snapshot`] in the listing made while the repository was opened
    /// ([`Repository::listed_ahead`]): for the snapshot a restore or backup starts from
    /// ([`crate::open_snapshot`], [`crate::parent`]). `latest` passes over snapshot files that
    /// cannot be used, with a warning naming each.
    pub(crate) fn find_snapshot_ahead(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_in(spec, || self.listed_ahead(FileType::Snapshot), true)
    }

    fn find_snapshot_in(
        &self,
        spec: &str,
        list: impl FnOnce() -> Result<Vec<Id>>,
        pass_over: bool,
    ) -> Result<(Id, Snapshot)> {
        let not_found = || Error::SnapshotNotFound {
            spec: spec.to_string(),
            location: self.location(),
        };
        if spec == "latest" {
            return self.snapshots_of(list()?, pass_over)?.pop().ok_or_else(|| {
                Error::NoSnapshots {
                    location: self.location(),
                }
            });
        }
        let lower = spec.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_hexdigit()) || lower.len() > 64 {
            return Err(not_found());
        }
        if let Ok(id) = Id::from_hex(&lower) {
            // A full id names one file: no listing needed.
            return match self.load_unpacked(FileType::Snapshot, &id) {
                Ok(s) => Ok((id, s)),
                Err(Error::NotFound { .. }) => Err(not_found()),
                Err(e) => Err(e),
            };
        }
        let matches: Vec<Id> = list()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&lower))
            .collect();
        match matches.as_slice() {
            [] => Err(not_found()),
            [id] => {
                let s = self.load_unpacked(FileType::Snapshot, id)?;
                Ok((*id, s))
            }
            _ => Err(Error::AmbiguousSnapshot {
                spec: spec.to_string(),
                // Enough digits to tell them apart where the prefix did not.
                candidates: {
                    let digits = (lower.len() + 4).clamp(8, 64);
                    matches
                        .iter()
                        .map(|id| id.to_hex()[..digits].to_string())
                        .collect()
                },
            }),
        }
    }

    /// Stores a snapshot; returns its id.
    pub fn save_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        self.save_unpacked(FileType::Snapshot, snapshot)
    }
}

/// Loads many small files with a few threads (object stores answer each request slowly but
/// many at once). Files that vanished meanwhile (`NotFound`) come back as `None`; any other
/// error fails the whole load.
fn load_parallel<T: Send>(
    ids: &[Id],
    load: impl Fn(&Id) -> Result<T> + Sync,
) -> Result<Vec<Option<T>>> {
    let mut out = Vec::with_capacity(ids.len());
    for loaded in load_each(ids, load, |e| !matches!(e, Error::NotFound { .. })) {
        match loaded {
            Some(Ok(v)) => out.push(Some(v)),
            Some(Err(Error::NotFound { .. })) => out.push(None),
            Some(Err(e)) => return Err(e),
            // Not loaded because another file failed; that error comes first or later.
            None => out.push(None),
        }
    }
    Ok(out)
}

/// Loads many small files with a few threads, each file's result in the order of `ids`. After
/// an error `fatal` says ends the load, the files not yet started are left out (`None`).
pub(crate) fn load_each<T: Send>(
    ids: &[Id],
    load: impl Fn(&Id) -> Result<T> + Sync,
    fatal: impl Fn(&Error) -> bool + Sync,
) -> Vec<Option<Result<T>>> {
    const THREADS: usize = 8;
    if ids.len() <= 1 {
        return ids.iter().map(|id| Some(load(id))).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<T>>>> =
        ids.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(ids.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    let r = load(id);
                    let failed = r.as_ref().is_err_and(&fatal);
                    *results[i].lock().expect("result slot") = Some(r);
                    if failed {
                        // Stop the other threads early too.
                        next.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|slot| slot.into_inner().expect("result slot"))
        .collect()
}

/// Decodes the plaintext of an unpacked file: `0x02 || zstd frame`, or bare JSON. JSON longer
/// than `limit` bytes is an error, and decompression stops there.
pub fn decode_unpacked(plain: &[u8], limit: usize) -> std::result::Result<Vec<u8>, String> {
    let too_long =
        || format!("holds more than {limit} bytes of JSON, the most this kind of file may");
    match plain.first() {
        Some(b'{') | Some(b'[') if plain.len() > limit => Err(too_long()),
        Some(b'{') | Some(b'[') => Ok(plain.to_vec()),
        Some(2) => {
            let mut out = Vec::with_capacity(plain.len().saturating_mul(4).min(limit));
            zstd::stream::Decoder::new(&plain[1..])
                .and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut out))
                .map_err(|e| format!("does not decompress: {e}"))?;
            if out.len() > limit {
                return Err(too_long());
            }
            Ok(out)
        }
        Some(b) => Err(format!("unknown format version byte {b:#04x}")),
        None => Err("empty file".into()),
    }
}
