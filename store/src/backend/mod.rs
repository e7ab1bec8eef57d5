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

    /// What a file of this kind is called in messages: `a lock file`, `an index file`.
    pub fn described(self) -> &'static str {
        match self {
            FileType::Config => "a config file",
            FileType::Key => "a key file",
            FileType::Snapshot => "a snapshot file",
            FileType::Index => "an index file",
            FileType::Lock => "a lock file",
            FileType::Pack => "a pack file",
        }
    }

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
/// `s3://bucket/prefix` (endpoint from `AWS_ENDPOINT_URL`) for S3, a directory path otherwise.
/// Any other `scheme:` prefix (`rest:`, `sftp:`, `S3:`...) is refused rather than taken for a
/// directory name, which would quietly create a local repository where the user meant a server.
pub fn open(location: &str) -> Result<std::sync::Arc<dyn Backend>> {
    if location.starts_with("s3:") {
        return Ok(std::sync::Arc::new(s3::S3Backend::from_location(location)?));
    }
    if let Some(scheme) = scheme_of(location) {
        return Err(crate::Error::Invalid(format!(
            "{}: {scheme}: repositories are not supported; use a directory path, \
             s3:https://host[:port]/bucket/prefix or s3://bucket/prefix (write a directory \
             whose name has a colon as ./NAME)",
            redact(location)
        )));
    }
    Ok(std::sync::Arc::new(local::LocalBackend::new(location)))
}

/// The URL-style scheme a location starts with (`rest` in `rest:https://...`), if any.
fn scheme_of(location: &str) -> Option<&str> {
    let (scheme, _) = location.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// `location` with the user information of its URL (`user:password@`) replaced by `***@`, so
/// that messages never show a password someone put into a location.
pub fn redact(location: &str) -> String {
    let start = match location.find("://") {
        Some(i) => i + 3,
        // `sftp:user@host:/path` has no `//`.
        None => match scheme_of(location) {
            Some(scheme) => scheme.len() + 1,
            None => return location.to_string(),
        },
    };
    let rest = &location[start..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}***{}", &location[..start], &rest[at..]),
        None => location.to_string(),
    }
}

/// The error for a file of kind `t` that is `size` bytes long (at least: a file that grew
/// while it was read) where no file of its kind may be longer than `max`: the file is
/// damaged or planted, and nothing more of it is read.
pub fn too_large(t: FileType, name: &str, size: u64, max: u64) -> crate::Error {
    crate::Error::Corrupt {
        what: relative_path(t, name),
        message: format!(
            "{size} bytes long, more than {} may be ({}), so it was not read",
            t.described(),
            crate::format::human_bytes(max)
        ),
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

    /// [`Backend::write`] of a file named by its own SHA-256, `id` (a pack): a backend that
    /// signs the hash of what it sends takes `id` rather than hashing `data` once more.
    fn write_hashed(&self, t: FileType, id: &crate::id::Id, data: &[u8]) -> Result<()> {
        self.write(t, &id.to_hex(), data)
    }

    /// Reads a whole file.
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>>;

    /// Reads a whole file that may be at most `max` bytes long. A longer file is refused
    /// ([`too_large`]), and so is anything but a plain file; backends find that out from the
    /// file's size before they read its contents, so a planted file of any size costs neither
    /// the time nor the memory to read it, and a local FIFO never blocks the read. This
    /// default, for wrappers, reads first and checks after.
    fn read_at_most(&self, t: FileType, name: &str, max: u64) -> Result<Vec<u8>> {
        let data = self.read(t, name)?;
        if data.len() as u64 > max {
            return Err(too_large(t, name, data.len() as u64, max));
        }
        Ok(data)
    }

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

    /// How many reads a restore keeps in flight at once by default: enough to hide the time
    /// each request waits for its answer. A local disk needs few; an object store many.
    fn read_concurrency(&self) -> usize {
        4
    }

    /// Packs a backup uploads at once by default (each holds a pack buffer of its own). A
    /// local disk takes a pack in a few milliseconds: one upload beside the pack being filled
    /// keeps up (2 cost 17 MiB more peak memory and were 2-3 % faster, 2026-12-06). An object
    /// store needs more to hide the time each request takes.
    fn write_concurrency(&self) -> usize {
        1
    }

    /// Bytes of blobs a restore may hold read and not yet written, by default (see
    /// [`crate::pack_reader::ReaderOptions::budget`]): what keeps enough reads in flight to
    /// hide the backend's latency. A local disk answers at once and needs little.
    fn read_budget(&self) -> u64 {
        16 << 20
    }

    /// The size of a file, or `NotFound`.
    fn stat(&self, t: FileType, name: &str) -> Result<u64>;

    /// All files of one kind (for `Config`, the config file if it exists).
    fn list(&self, t: FileType) -> Result<Vec<FileInfo>>;

    /// Removes a file. Removing a missing file is not an error.
    fn remove(&self, t: FileType, name: &str) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_user_information_and_nothing_else() {
        assert_eq!(
            redact("rest:https://user:pw@host:8000/repo"),
            "rest:https://***@host:8000/repo"
        );
        assert_eq!(
            redact("sftp:user:pw@host:/srv/repo"),
            "sftp:***@host:/srv/repo"
        );
        assert_eq!(redact("s3:https://host/b/p"), "s3:https://host/b/p");
        assert_eq!(redact("/srv/a@b/repo"), "/srv/a@b/repo");
        assert_eq!(redact("s3://bucket/x@y"), "s3://bucket/x@y");
    }

    #[test]
    fn schemes_are_told_from_paths() {
        assert_eq!(scheme_of("rest:https://h/"), Some("rest"));
        assert_eq!(scheme_of("S3:https://h/b"), Some("S3"));
        assert_eq!(scheme_of("rclone:remote:path"), Some("rclone"));
        assert_eq!(scheme_of("/srv/a:b"), None);
        assert_eq!(scheme_of("./a:b"), None);
        assert_eq!(scheme_of("repo"), None);
    }
}
