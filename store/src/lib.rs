//! The volbackup repository engine: restic repositories (format version 2) on a local
//! directory or S3, backup and restore of block images and file trees, check, forget and prune.
//!
//! This crate knows nothing of Kubernetes or terminals: progress is reported through
//! [`progress::Progress`], errors are values.

pub mod backend;
pub mod backup_tree;
pub mod block;
pub mod check;
pub mod chunker;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod format;
pub mod fsmeta;
pub mod id;
pub mod image_writer;
pub mod index;
pub mod lock;
pub mod open_snapshot;
pub mod pack_reader;
pub mod packer;
pub mod parent;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod restore_plan;
pub mod restore_tree;
pub mod resume;
pub mod tree;

pub use error::{Error, Result};
pub use format::{BlobType, Snapshot};
pub use id::Id;
pub use repo::{InitOptions, KeyHint, OpenOptions, ReadAhead, Repository};
