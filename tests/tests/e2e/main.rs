//! The end-to-end tests, in one test binary: the real `kubectl-volbackup` against kubesim, with
//! the real `restic` as the oracle.
//!
//! Needs root, util-linux (`losetup`, `unshare`), loop devices, `/usr/bin/restic` and a built
//! `target/debug/kubectl-volbackup` (`cargo test --workspace` builds it first); each missing
//! piece fails the test with a message saying so.

mod common;
mod create;
mod install;
mod restore;

#[path = "../../../store/tests/support_s3/mod.rs"]
mod support_s3;
