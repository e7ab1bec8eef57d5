//! Errors of the repository engine.
//!
//! Policy: every error names what it is about (a repository location, a file, a snapshot id, a
//! path on the volume). Messages are one line and never contain a password, a key or a
//! credential. The engine knows no command line: what the user can do about an error (the
//! command to run, the flag to set) is the caller's to add, and the variants a caller may want
//! to advise on are typed so that it can match them (`NoRepository`, `NoSnapshots`,
//! `TargetTooSmall`, `Locked`, `NotIndexed`, ...). `is_retryable` tells callers whether trying
//! the same operation again can help.

use std::path::PathBuf;

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the operation needs is not in the repository.
    #[error("{location}: {path} does not exist")]
    NotFound {
        /// The backend location.
        location: String,
        /// The file's path inside the repository.
        path: String,
    },

    /// The storage backend failed (after its own retries).
    #[error("{location}: {message}")]
    Backend {
        /// The backend location.
        location: String,
        /// What went wrong and, where known, how to fix it.
        message: String,
        /// Whether trying again later may succeed (network trouble, throttling).
        retryable: bool,
    },

    /// A local file or device could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// No key in the repository opens with the given password.
    #[error("wrong password: no key in {location} opens with it")]
    WrongPassword {
        /// The backend location.
        location: String,
    },

    /// There is no repository at the location.
    #[error("{location}: no repository here")]
    NoRepository {
        /// The backend location.
        location: String,
    },

    /// Stored data does not verify: a MAC, a hash or a structure is wrong.
    #[error("{what}: {message}")]
    Corrupt {
        /// The file or blob involved (`data/ab/abcd…`, `blob 1234…`).
        what: String,
        /// What is wrong with it.
        message: String,
    },

    /// No snapshot has this id (or id prefix).
    #[error("no snapshot matches ID {spec:?} in {location}")]
    SnapshotNotFound {
        /// What the user gave.
        spec: String,
        /// The backend location.
        location: String,
    },

    /// `latest` was asked for, and the repository has no snapshot at all.
    #[error("{location} has no snapshots yet")]
    NoSnapshots {
        /// The backend location.
        location: String,
    },

    /// A blob a snapshot or a read needs is not in the loaded index: the index files are
    /// damaged or missing, or the blob was never stored.
    #[error("{what} is not in the index of {location}")]
    NotIndexed {
        /// The blob (`data blob 1234…`), and where it was needed if known.
        what: String,
        /// The backend location.
        location: String,
    },

    /// A restore target (a device, a file of fixed size) is smaller than the image.
    #[error("{}: target is {size} bytes, the image needs {needed}", target.display())]
    TargetTooSmall {
        /// The device or file.
        target: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The image's size in bytes.
        needed: u64,
    },

    /// An id prefix matches several snapshots: asking again cannot help, more digits can.
    #[error(
        "snapshot ID prefix {spec:?} is ambiguous, it matches {}: give more digits",
        list_candidates(candidates)
    )]
    AmbiguousSnapshot {
        /// What the user gave.
        spec: String,
        /// The short ids of the snapshots it matches.
        candidates: Vec<String>,
    },

    /// The request itself is wrong (a bad option, a path not in the snapshot).
    #[error("{0}")]
    Invalid(String),

    /// Another process holds a lock that conflicts with the operation.
    #[error(
        "{location} is locked {} by {holder} since {since} (lock {lock}){}",
        if *exclusive { "exclusively" } else { "(shared lock)" },
        gave_up_after(waited)
    )]
    Locked {
        /// The backend location.
        location: String,
        /// Who holds the lock: `user@host (pid N)`.
        holder: String,
        /// Whether the lock held is exclusive.
        exclusive: bool,
        /// When the lock was taken or last refreshed (RFC 3339, seconds).
        since: String,
        /// The lock file's short id.
        lock: String,
        /// How long this process waited for it before giving up (`--retry-lock`), if at all.
        waited: Option<std::time::Duration>,
    },

    /// This process's own lock could not be kept (refreshes failed, the process was frozen
    /// past the stale age, or someone removed the lock file): others may have pruned data the
    /// operation relies on, so it stopped before writing anything that refers to that data.
    #[error("{0}")]
    LockLost(String),
}

fn gave_up_after(waited: &Option<std::time::Duration>) -> String {
    match waited {
        Some(w) => format!("; gave up after waiting {}s", w.as_secs()),
        None => String::new(),
    }
}

/// The first few candidates, so that a prefix matching hundreds stays one readable line.
fn list_candidates(candidates: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = candidates
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > SHOWN {
        s.push_str(&format!(" and {} more", candidates.len() - SHOWN));
    }
    s
}

impl Error {
    /// Whether trying the same operation again can help. Only a backend's transient trouble
    /// qualifies: everything else (a wrong or ambiguous snapshot id, damage, a wrong password)
    /// fails the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                retryable: true,
                ..
            }
        )
    }

    /// An I/O error on a local path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
