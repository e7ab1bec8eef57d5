//! kubesim's own tests, in one test binary: the API server through a real kube-rs client and
//! the real kubectl (`api`), and the simulated controllers with real pod processes (`controllers`).
//!
//! The controller tests need root, `losetup`, `unshare`, `runc` and loop devices; they fail
//! (never skip) with a message saying what is missing.

mod api;
mod controllers;
