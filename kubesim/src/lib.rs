//! kubesim: a simulated Kubernetes cluster (see `api` for what the controllers see).
//!
//! [`Cluster::start`] runs an HTTPS API server on a free port of 127.0.0.1 (CA and serving
//! certificate from `pki`), writes `DIR/kubeconfig` for an admin user (`system:masters`), and
//! starts the simulated controllers (`controllers`). The API half:
//!
//! | module | what it is in a real cluster |
//! |---|---|
//! | `store` | etcd + generic registry + a few admission plugins, the namespace, ServiceAccount and CRD-cleanup controllers and the garbage collector |
//! | `server` | kube-apiserver's REST handlers: get/list/watch/create/update/patch/delete/deletecollection, `pods/log`, `status`, dry run, Table output, impersonation |
//! | `discovery`, `openapi` | discovery (plain and aggregated v2) and OpenAPI v3 documents |
//! | `auth` | token, ServiceAccount-token and client-certificate authentication; RBAC |
//! | `schema` | CRD structural schemas: defaulting, pruning, validation |
//! | `patch` | strategic merge patch and (simplified) server-side apply |
//! | `registry` | the served kinds; the snapshot and populator kinds are installed as CRDs |
//! | `faults` | test hooks: failing and delaying requests |
//!
//! Simplified on purpose (see each module): server-side apply tracks ownership as "the last
//! configuration each manager applied" and never reports conflicts; `managedFields` is not
//! written; built-in kinds are validated only where the project depends on it (names, PVC and
//! pod immutability, required PVC fields); field selectors accept any field path; watch
//! bookmarks are sent every 30 s when asked for; aggregated ClusterRoles are not expanded;
//! protobuf request bodies are read only for the kinds `kubectl create` and `kubectl auth
//! can-i` send; `exec`, `attach`, `port-forward` and `scale` are not served.

pub mod api;
pub mod auth;
pub mod batch;
pub mod cluster;
pub mod controllers;
pub mod convert;
pub mod discovery;
pub mod errors;
pub mod faults;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod podsecurity;
pub mod proto;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;

pub use cluster::{Cluster, ClusterOptions};
pub use faults::Faults;
