//! An open repository: backend, master key, config and index.

use std::io::Read as _;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, FileType};
use crate::crypto::{self, KdfParams, Key};
use crate::format::{
    self, BlobType, Config, IndexFile, KeyData, KeyFile, MacKeyData, PackedBlob, Snapshot,
};
use crate::id::Id;
use crate::index::{Index, IndexEntry};
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

/// Snapshot files read ahead while the key is derived, at most this many (`latest` reads
/// them all; a repository with more reads the rest when asked).
const EARLY_SNAPSHOT_FILES: usize = 64;

/// What [`Repository::open_warm`] lists and reads while the password's key is derived: the
/// listings are taken by the first [`Repository::early_list`] of their kind, the files (whose
/// names are their hashes, so a copy never goes stale) by whoever loads them first.
#[derive(Default)]
struct Early {
    /// The kinds read ahead; nothing else waits for the reading.
    kinds: Vec<FileType>,
    state: std::sync::Mutex<EarlyState>,
}

#[derive(Default)]
struct EarlyState {
    /// The reading, until someone needs what it read.
    pending: Option<std::thread::JoinHandle<WarmedUp>>,
    read: WarmedUp,
}

#[derive(Default)]
struct WarmedUp {
    lists: std::collections::HashMap<FileType, Vec<Id>>,
    files: std::collections::HashMap<(FileType, Id), Vec<u8>>,
}

impl Early {
    fn start(backend: &Arc<dyn Backend>, kinds: &[FileType]) -> Early {
        if kinds.is_empty() {
            return Early::default();
        }
        let (backend, wanted) = (backend.clone(), kinds.to_vec());
        let pending = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || warm_up(backend.as_ref(), &wanted))
            .ok();
        Early {
            kinds: kinds.to_vec(),
            state: std::sync::Mutex::new(EarlyState {
                pending,
                read: WarmedUp::default(),
            }),
        }
    }

    /// Runs `take` on what was read ahead of kind `t`, once the reading is done; `None` when
    /// nothing of that kind was read ahead.
    fn take<T>(&self, t: FileType, take: impl FnOnce(&mut WarmedUp) -> Option<T>) -> Option<T> {
        if !self.kinds.contains(&t) {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = state.pending.take()
            && let Ok(read) = reading.join()
        {
            state.read = read;
        }
        take(&mut state.read)
    }

    fn clear(&self) {
        if self.kinds.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending = None;
        state.read = WarmedUp::default();
    }
}

/// Lists the kinds `kinds` side by side, then reads the index files and (up to
/// [`EARLY_SNAPSHOT_FILES`]) the snapshot files they list. Whatever fails is left out: it
/// is asked for again when needed, and fails then with its proper error; so is a file
/// listed longer than its kind may be ([`max_file_len`]).
fn warm_up(backend: &dyn Backend, kinds: &[FileType]) -> WarmedUp {
    let mut read = WarmedUp::default();
    let listed: Vec<(FileType, Result<Vec<ListedFile>>)> = std::thread::scope(|s| {
        let listers: Vec<_> = kinds
            .iter()
            .map(|&t| (t, s.spawn(move || list_sized_of(backend, t))))
            .collect();
        listers
            .into_iter()
            .map(|(t, h)| (t, h.join().expect("lister")))
            .collect()
    });
    let mut to_read: Vec<(FileType, Id)> = Vec::new();
    for (t, files) in listed {
        let Ok(files) = files else { continue };
        let fits = |&&(_, size): &&ListedFile| size <= max_file_len(t);
        match t {
            FileType::Index => to_read.extend(files.iter().filter(fits).map(|(id, _)| (t, *id))),
            FileType::Snapshot if files.len() <= EARLY_SNAPSHOT_FILES => {
                to_read.extend(files.iter().filter(fits).map(|(id, _)| (t, *id)))
            }
            _ => {}
        }
        read.lists
            .insert(t, files.into_iter().map(|(id, _)| id).collect());
    }
    let names: Vec<Id> = to_read.iter().map(|(_, id)| *id).collect();
    let kind_of: std::collections::HashMap<Id, FileType> =
        to_read.iter().map(|(t, id)| (*id, *t)).collect();
    let read_one = |id: &Id| {
        let t = kind_of[id];
        backend.read_at_most(t, &id.to_hex(), max_file_len(t))
    };
    if let Ok(files) = load_parallel(&names, read_one) {
        for (id, file) in names.into_iter().zip(files) {
            if let Some(file) = file {
                read.files.insert((kind_of[&id], id), file);
            }
        }
    }
    read
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
    /// [`MAX_KEYS_TRIED`]) and reads the config. The index is not loaded yet
    /// ([`Repository::load_index`]).
    pub fn open(backend: Arc<dyn Backend>, password: &str) -> Result<Repository> {
        Self::open_warm(backend, password, &[])
    }

    /// [`Repository::open`], listing the files of the kinds `warm` (and reading the index and
    /// snapshot files among them) while the key is derived from the password: scrypt takes
    /// about as long as three round trips to an object store. The listings are there for the
    /// first [`Repository::early_list`] of their kind; files read ahead are used by whoever
    /// loads them first.
    pub fn open_warm(
        backend: Arc<dyn Backend>,
        password: &str,
        warm: &[FileType],
    ) -> Result<Repository> {
        Self::open_hinted(backend, password, warm, None)
    }

    /// [`Repository::open_warm`], trying the key file `key_hint` names first: read by its
    /// name, without listing the key files, which saves a round trip before the key can be
    /// derived; with a copy of the file in the hint, the key is derived from the copy while
    /// the file is read, and used only if the repository still holds that file unchanged (a
    /// removed key stays removed). A hint that names no key file, or one the password does
    /// not open, is passed over and the key files are listed as without one.
    pub fn open_hinted(
        backend: Arc<dyn Backend>,
        password: &str,
        warm: &[FileType],
        key_hint: Option<&KeyHint>,
    ) -> Result<Repository> {
        let early = Early::start(&backend, warm);
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

    /// The files of kind `t` as listed while the repository was opened
    /// ([`Repository::open_warm`]), the first time it is asked for; a new listing otherwise,
    /// or when that listing failed. A listing that old is a guess: what must be current (the
    /// index files under a lock) is listed again.
    pub fn early_list(&self, t: FileType) -> Result<Vec<Id>> {
        match self.inner.early.take(t, |read| read.lists.remove(&t)) {
            Some(ids) => Ok(ids),
            None => self.list_ids(t),
        }
    }

    /// Drops whatever was read ahead and not used.
    pub fn end_read_ahead(&self) {
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
    /// [`Repository::open_hinted`].
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
                            "{}: passing over {e}; `kubectl-volbackup repo check` reports it, \
                             and prune refuses to run until it is removed",
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

    /// Reads a blob: range from its pack, decrypt, decompress, verify SHA-256 == id.
    pub fn read_blob(&self, t: BlobType, id: &Id) -> Result<Vec<u8>> {
        let entry = self.blob_entry(t, id).ok_or_else(|| {
            Error::Invalid(format!(
                "{t} blob {id} is not in the index of {} (run `kubectl-volbackup repo check`)",
                self.location()
            ))
        })?;
        self.read_blob_at(t, id, &entry)
    }

    /// Reads the blob `id` of type `t` from the place `entry` names (one of its copies).
    pub fn read_blob_at(&self, t: BlobType, id: &Id, entry: &IndexEntry) -> Result<Vec<u8>> {
        check_claim(t, id, entry)?;
        let sealed = self.inner.backend.read_range(
            FileType::Pack,
            &entry.pack.to_hex(),
            u64::from(entry.offset),
            u64::from(entry.length),
        )?;
        self.decode_blob(t, id, entry, sealed)
    }

    /// Decrypts, decompresses and verifies a sealed blob of type `t` read from `entry.pack`.
    pub fn decode_blob(
        &self,
        t: BlobType,
        id: &Id,
        entry: &IndexEntry,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        check_claim(t, id, entry)?;
        let plain = self
            .inner
            .key
            .open_in_place(sealed)
            .map_err(|_| Error::Corrupt {
                what: what(),
                message: "MAC does not match: the pack is damaged".into(),
            })?;
        let data = match entry.uncompressed_length {
            Some(n) => {
                // The output buffer is the claimed length: zstd stops there.
                let out = zstd::bulk::decompress(&plain, n as usize)
                    .map_err(|e| decompress_error(what(), n, e))?;
                check_length(what(), out.len(), n)?;
                out
            }
            None => plain,
        };
        if Id::hash(&data) != *id {
            return Err(Error::Corrupt {
                what: what(),
                message: "content does not match its id (SHA-256)".into(),
            });
        }
        Ok(data)
    }

    /// Reads and decodes a pack's header (its blob list), straight from the pack file.
    pub fn read_pack_header(&self, pack: &Id) -> Result<Vec<PackedBlob>> {
        let name = pack.to_hex();
        let what = || format!("data/{name}");
        let size = self.inner.backend.stat(FileType::Pack, &name)?;
        if size < 4 {
            return Err(Error::Corrupt {
                what: what(),
                message: format!("only {size} bytes long"),
            });
        }
        let tail = self
            .inner
            .backend
            .read_range(FileType::Pack, &name, size - 4, 4)?;
        let hlen = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
        if hlen + 4 > size || hlen < crypto::OVERHEAD as u64 {
            return Err(Error::Corrupt {
                what: what(),
                message: format!("header length {hlen} does not fit a {size}-byte pack"),
            });
        }
        if hlen > MAX_PACK_HEADER {
            return Err(Error::Corrupt {
                what: what(),
                message: format!(
                    "header length {hlen} is above the limit {}",
                    format::human_bytes(MAX_PACK_HEADER)
                ),
            });
        }
        let sealed = self
            .inner
            .backend
            .read_range(FileType::Pack, &name, size - 4 - hlen, hlen)?;
        let plain = self
            .inner
            .key
            .open_in_place(sealed)
            .map_err(|_| Error::Corrupt {
                what: what(),
                message: "pack header does not decrypt (MAC mismatch)".into(),
            })?;
        format::decode_pack_header(&plain).map_err(|e| match e {
            Error::Corrupt { message, .. } => Error::Corrupt {
                what: what(),
                message,
            },
            e => e,
        })
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
    /// ([`Repository::early_list`]), for a guess that may miss a snapshot saved since, such
    /// as a backup's parent. Never for anything that removes data. A snapshot file that
    /// cannot be used is passed over with a warning naming it.
    pub fn list_snapshots_early(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.snapshots_of(self.early_list(FileType::Snapshot)?, true)
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
    /// ([`Repository::early_list`]): for the snapshot a restore or backup starts from.
    /// `latest` passes over snapshot files that cannot be used, with a warning naming each.
    pub fn find_snapshot_early(&self, spec: &str) -> Result<(Id, Snapshot)> {
        self.find_snapshot_in(spec, || self.early_list(FileType::Snapshot), true)
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
                Error::Invalid(format!(
                    "{} has no snapshots yet (create one with `kubectl-volbackup create`)",
                    self.location()
                ))
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

/// Reads blobs with reusable buffers and a reusable zstd context: one per thread in hot loops
/// (restore). Every blob is verified (MAC, then SHA-256 of the plaintext).
pub struct BlobReader {
    repo: Repository,
    sealed: Vec<u8>,
    plain: Vec<u8>,
    dctx: zstd::bulk::Decompressor<'static>,
}

impl BlobReader {
    /// A reader for `repo`.
    pub fn new(repo: &Repository) -> Result<BlobReader> {
        Ok(BlobReader {
            repo: repo.clone(),
            sealed: Vec::new(),
            plain: Vec::new(),
            dctx: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::Invalid(format!("cannot create a zstd decoder: {e}")))?,
        })
    }

    /// Reads a blob by id (looked up in the repository's index).
    pub fn read(&mut self, t: BlobType, id: &Id) -> Result<&[u8]> {
        let entry = self.repo.blob_entry(t, id).ok_or_else(|| {
            Error::Invalid(format!(
                "{t} blob {id} is not in the index of {} (run `kubectl-volbackup repo check`)",
                self.repo.location()
            ))
        })?;
        self.read_entry(t, id, &entry)
    }

    /// Reads the blob `id` of type `t` stored at `entry`.
    pub fn read_entry(&mut self, t: BlobType, id: &Id, entry: &IndexEntry) -> Result<&[u8]> {
        check_claim(t, id, entry)?;
        let n = self.open_entry(id, entry)?;
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        let plain = &self.sealed[16..16 + n];
        let data: &[u8] = match entry.uncompressed_length {
            Some(len) => {
                self.plain.clear();
                self.plain.reserve(len as usize);
                let got = self
                    .dctx
                    .decompress_to_buffer(plain, &mut self.plain)
                    .map_err(|e| decompress_error(what(), len, e))?;
                check_length(what(), got, len)?;
                &self.plain
            }
            None => plain,
        };
        verify(id, data, what)?;
        Ok(data)
    }

    /// Reads the blob `id` of type `t` stored at `entry` straight into `dst`, which must be
    /// exactly as long as the blob's plaintext (saves a copy where the bytes have a place
    /// already).
    pub fn read_entry_into(
        &mut self,
        t: BlobType,
        id: &Id,
        entry: &IndexEntry,
        dst: &mut [u8],
    ) -> Result<()> {
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        check_claim(t, id, entry)?;
        if dst.len() != entry.plaintext_len() as usize {
            return Err(Error::Invalid(format!(
                "{}: a {}-byte buffer for {} bytes",
                what(),
                dst.len(),
                entry.plaintext_len()
            )));
        }
        match entry.uncompressed_length {
            Some(len) => {
                let n = self.open_entry(id, entry)?;
                let got = self
                    .dctx
                    .decompress_to_buffer(&self.sealed[16..16 + n], dst)
                    .map_err(|e| decompress_error(what(), len, e))?;
                check_length(what(), got, len)?;
            }
            None => {
                // Stored as is: decrypted straight into its place, not in place and copied.
                self.fetch_entry(entry)?;
                check_length(
                    what(),
                    self.sealed.len().saturating_sub(crate::crypto::OVERHEAD),
                    dst.len() as u32,
                )?;
                self.repo
                    .key()
                    .open_into(&self.sealed, dst)
                    .map_err(|_| mac_error(id, entry))?;
            }
        }
        verify(id, dst, what)
    }

    /// Fetches and decrypts the blob at `entry` in place; its (maybe compressed) plaintext is
    /// `self.sealed[16..16 + n]`.
    fn open_entry(&mut self, id: &Id, entry: &IndexEntry) -> Result<usize> {
        self.fetch_entry(entry)?;
        self.repo
            .key()
            .open_slice(&mut self.sealed)
            .map_err(|_| mac_error(id, entry))
    }

    /// Reads the sealed blob at `entry` into `self.sealed`.
    fn fetch_entry(&mut self, entry: &IndexEntry) -> Result<()> {
        self.repo.backend().read_range_into(
            FileType::Pack,
            &entry.pack.to_hex(),
            u64::from(entry.offset),
            u64::from(entry.length),
            &mut self.sealed,
        )
    }
}

/// Refuses a blob whose index entry claims more than any blob of its type may hold, before its
/// bytes are read or a buffer of the claimed size is allocated.
pub fn check_claim(t: BlobType, id: &Id, entry: &IndexEntry) -> Result<()> {
    let max = max_blob_len(t);
    // zstd's worst case adds well under 1/128 to incompressible data.
    let max_sealed = u64::from(max) + u64::from(max) / 128 + crypto::OVERHEAD as u64;
    if entry.plaintext_len() > max || u64::from(entry.length) > max_sealed {
        return Err(Error::Corrupt {
            what: format!("{t} blob {} in pack data/{}", id.short(), entry.pack),
            message: format!(
                "the index says it is {} bytes ({} stored), more than a {t} blob may be ({})",
                entry.plaintext_len(),
                entry.length,
                format::human_bytes(u64::from(max))
            ),
        });
    }
    Ok(())
}

pub(crate) fn mac_error(id: &Id, entry: &IndexEntry) -> Error {
    Error::Corrupt {
        what: format!("blob {} in pack data/{}", id.short(), entry.pack),
        message: "MAC does not match: the pack is damaged".into(),
    }
}

pub(crate) fn decompress_error(what: String, len: u32, e: std::io::Error) -> Error {
    Error::Corrupt {
        what,
        message: format!("does not decompress to the {len} bytes the index says: {e}"),
    }
}

pub(crate) fn check_length(what: String, got: usize, len: u32) -> Result<()> {
    if got != len as usize {
        return Err(Error::Corrupt {
            what,
            message: format!("decompresses to {got} bytes, the index says {len}"),
        });
    }
    Ok(())
}

/// Checks that `data` hashes to `id`.
pub(crate) fn verify(id: &Id, data: &[u8], what: impl Fn() -> String) -> Result<()> {
    if Id::hash(data) != *id {
        return Err(Error::Corrupt {
            what: what(),
            message: "content does not match its id (SHA-256)".into(),
        });
    }
    Ok(())
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

fn write_key_file(
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

/// The key file to try first when opening a repository ([`Repository::open_hinted`]).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyHint {
    /// The key file's id (its name under `keys/`), as [`Repository::key_id`] gives it.
    pub id: String,
    /// A copy of the key file's bytes ([`Repository::key_hint`]), if one was kept: the key
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
fn find_key(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacked_plaintext_accepts_compressed_and_bare_json() {
        let json = br#"{"a":[1,2,3]}"#;
        let mut c = vec![2u8];
        c.extend(zstd::bulk::compress(json, 3).unwrap());
        assert_eq!(decode_unpacked(&c, 100).unwrap(), json);
        assert_eq!(decode_unpacked(json, 100).unwrap(), json);
        assert_eq!(decode_unpacked(b"[1]", 100).unwrap(), b"[1]");
        assert!(decode_unpacked(&[1, 2, 3], 100).is_err());
        assert!(decode_unpacked(&[], 100).is_err());
    }

    #[test]
    fn unpacked_files_stop_decompressing_at_their_limit() {
        let mut json = b"[".to_vec();
        json.resize(10_000, b' ');
        json.push(b']');
        let mut c = vec![2u8];
        c.extend(zstd::bulk::compress(&json, 3).unwrap());
        assert!(c.len() < 100);
        assert_eq!(decode_unpacked(&c, json.len()).unwrap(), json);
        let err = decode_unpacked(&c, 1000).unwrap_err();
        assert!(err.contains("more than 1000 bytes"), "{err}");
        assert!(decode_unpacked(&json, 1000).is_err());
    }
}
