//! Where repository files live. A backend stores immutable, named files of a few kinds and
//! knows nothing of their contents; the repository layer above it seals and verifies them.
//!
//! The trait is synchronous on purpose: the engine's hot paths are CPU-bound (chunking,
//! hashing, compression, encryption) and run on plain threads; the S3 backend drives its async
//! client on a runtime of its own, so callers never need one.

use crate::Result;

pub mod local;
pub mod s3;

/// The kinds of files in a restic repository, each with its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `config`: a single file with a fixed name.
    Config,
    /// `keys/<id>`
    Key,
    /// `snapshots/<id>`
    Snapshot,
    /// `index/<id>`
    Index,
    /// `locks/<id>`
    Lock,
    /// `data/<first two hex digits>/<id>`
    Pack,
}

impl FileType {
    /// Every kind, in the order a repository is usually read.
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Key,
        FileType::Snapshot,
        FileType::Index,
        FileType::Lock,
        FileType::Pack,
    ];

    /// The folder of this kind inside the repository (`""` for the config file).
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Lock => "locks",
            FileType::Pack => "data",
        }
    }
}

/// The path of a file relative to the repository root, `/`-separated: `config`,
/// `keys/<name>`, `data/ab/<name>` and so on. Every backend lays files out this way.
pub fn relative_path(t: FileType, name: &str) -> String {
    match t {
        FileType::Config => "config".to_string(),
        FileType::Pack => {
            let prefix = name.get(..2).unwrap_or(name);
            format!("data/{prefix}/{name}")
        }
        _ => format!("{}/{}", t.dir(), name),
    }
}

/// Opens the backend for a repository location: `s3:https://host/bucket/prefix` or
/// `s3://bucket/prefix` (endpoint from `AWS_ENDPOINT_URL`) for S3, anything else a local
/// directory path.
pub fn open(location: &str) -> Result<std::sync::Arc<dyn Backend>> {
    if location.starts_with("s3:") {
        Ok(std::sync::Arc::new(s3::S3Backend::from_location(location)?))
    } else {
        Ok(std::sync::Arc::new(local::LocalBackend::new(location)))
    }
}

/// A file in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's name (for packs the id, without the `data/xx/` folder).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Storage for repository files. Implementations are shared between threads.
///
/// Errors: a missing file is [`crate::Error::NotFound`]; everything the backend could not do
/// after its own retries is [`crate::Error::Backend`], whose message names the location and
/// never contains credentials.
pub trait Backend: Send + Sync {
    /// Where this backend points, for messages (`/srv/repo`, `s3:http://host/bucket/prefix`).
    /// Never contains secrets.
    fn location(&self) -> String;

    /// Prepares an empty repository location (folders, or a check that the bucket exists).
    /// Fails if a `config` file is already there.
    fn create(&self) -> Result<()>;

    /// Stores a file. Files are immutable: writing the same name twice stores the same bytes.
    /// A write either stores the whole file or nothing.
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()>;

    /// Reads a whole file.
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>>;

    /// Reads `length` bytes at `offset`. Reading past the end is an error.
    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>>;

    /// Like [`Backend::read_range`], into `buf` (replacing its contents), so hot loops can
    /// reuse one allocation. Backends may override it to avoid the copy.
    fn read_range_into(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        *buf = self.read_range(t, name, offset, length)?;
        Ok(())
    }

    /// The size of a file, or `NotFound`.
    fn stat(&self, t: FileType, name: &str) -> Result<u64>;

    /// All files of one kind (for `Config`, the config file if it exists).
    fn list(&self, t: FileType) -> Result<Vec<FileInfo>>;

    /// Removes a file. Removing a missing file is not an error.
    fn remove(&self, t: FileType, name: &str) -> Result<()>;
}
