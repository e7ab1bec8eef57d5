//! The engine's integration tests, one binary (one link instead of one per file): the real
//! `restic` binary as the format oracle, a real S3 server (Garage), damaged and hostile
//! repositories, locks under stress. `cargo test -p volbackup-store --test it -- s3::` runs
//! one part.

mod common;
mod support_s3;

mod check_prune;
mod junk_files;
mod large_trees;
mod lock_lost;
mod repo_errors;
mod restic_block;
mod restic_chunker;
mod restic_tree;
mod restore_lock;
mod restore_reads;
mod s3;
mod untrusted_parsers;
