//! Errors of the repository engine.
//!
//! Policy: every error names what it is about (a repository location, a file, a snapshot id, a
//! path on the volume) and, where the user can do something, says what. Messages are one line
//! and never contain a password, a key or a credential. `is_retryable` tells callers whether
//! trying the same operation again can help.

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
    #[error(
        "wrong password: no key in {location} opens with it (check VOLBACKUP_PASSWORD or --password-file)"
    )]
    WrongPassword {
        /// The backend location.
        location: String,
    },

    /// There is no repository at the location.
    #[error("{location}: no repository here (create one with `kubectl-volbackup repo init`)")]
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
    #[error(
        "no snapshot matches ID {spec:?} in {location} (list them with `kubectl-volbackup snapshots`)"
    )]
    SnapshotNotFound {
        /// What the user gave.
        spec: String,
        /// The backend location.
        location: String,
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
    #[error("{0}")]
    Locked(String),

    /// This process's own lock could not be kept (refreshes failed, the process was frozen
    /// past the stale age, or someone removed the lock file): others may have pruned data the
    /// operation relies on, so it stopped before writing anything that refers to that data.
    #[error("{0}")]
    LockLost(String),
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
