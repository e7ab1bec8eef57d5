//! kubesim: a simulated Kubernetes cluster (see `api` for what the controllers see).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod controllers;
pub mod convert;
pub mod discovery;
pub mod errors;
pub mod faults;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod proto;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;

pub use cluster::{Cluster, ClusterOptions};
pub use faults::Faults;
