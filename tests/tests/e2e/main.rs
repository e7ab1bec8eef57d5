//! The end-to-end tests, in one test binary: the real `kubectl-volbackup` against kubesim, with
//! the real `restic` as the oracle.
//!
//! Needs root, util-linux (`losetup`), loop devices, `runc`, `buildah`, `skopeo`, `umoci`,
//! `docker-registry` and `/usr/bin/restic`; each missing piece fails the test with a message
//! saying so. The plugin under test is built by Cargo from the current sources once per run
//! (`volbackup_e2e::plugin`). The project's pods run from this build's image, built and pushed
//! to a registry on loopback once per run (`volbackup_e2e::image`).

mod common;
mod create;
mod doctor;
mod install;
mod populate;
mod records;
mod restore;
mod security;

#[path = "../../../store/tests/it/support_s3/mod.rs"]
mod support_s3;
