//! kubesim, a simulated Kubernetes cluster that speaks the real REST API, and the helpers of
//! volbackup's end-to-end tests. Test infrastructure only: nothing here ships in the binary.

pub mod image;
pub mod kubesim;
pub mod tls_proxy;
