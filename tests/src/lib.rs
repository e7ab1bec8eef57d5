//! The helpers of volbackup's end-to-end tests and of the try-it demo: the plugin binary Cargo
//! builds for them, this build's image in a registry on loopback, and a TLS proxy. The simulated cluster itself is the `kubesim` crate.
//! Test infrastructure only: nothing here ships in the binary.

pub mod image;
pub mod plugin;
pub mod tls_proxy;
