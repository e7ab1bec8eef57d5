//! `install` and `uninstall`: the populator's manifests, embedded in the binary.
//!
//! The files under `manifests/` hold the defaults (namespace `volbackup-system`, image
//! `ghcr.io/volbackup/volbackup:<version>`), so `kubectl apply -k manifests/` works as is. The
//! namespace and image are set per install by editing the parsed objects at known places (see
//! [`objects::customize`]), never by replacing text, so no value a user passes can change the YAML's
//! structure.
//!
//! `install` applies every object with server-side apply, in dependency order, and waits for
//! the CRD to be Established and the populator Deployment to have an available replica.
//! `uninstall` deletes in the reverse order. A namespace that existed before volbackup (one
//! without our `app.kubernetes.io/managed-by` label) is neither applied over nor deleted.

mod apply;
mod installed;
mod objects;
mod settings;
mod uninstall;
mod wait;

pub use apply::install;
pub use installed::check_installed;
pub use settings::{DEFAULT_POD_SECURITY, check_proxy, populator_args};
pub use uninstall::uninstall;
pub use wait::available;

use std::time::Duration;

/// The field manager of our server-side applies.
const MANAGER: &str = "kubectl-volbackup";
/// Name of the Deployment, ServiceAccount, roles and bindings.
pub const POPULATOR_NAME: &str = "volbackup-populator";
/// Name of the VolumePopulator registration.
pub const VOLUME_POPULATOR_NAME: &str = "volbackup-volumebackup";
/// Name of the VolumeBackup CRD.
pub const CRD_NAME: &str = "volumebackups.volbackup.io";
/// Selects the populator's pods.
const POD_SELECTOR: &str = "app.kubernetes.io/name=volbackup,app.kubernetes.io/component=populator";
/// How long `install` waits for the CRD and the Deployment, and `uninstall` for deletions.
const WAIT: Duration = Duration::from_secs(60);
/// Where the VolumePopulator CRD comes from.
const VALIDATOR_CRD_URL: &str = "https://raw.githubusercontent.com/kubernetes-csi/volume-data-source-validator/master/client/config/crd/populator.storage.k8s.io_volumepopulators.yaml";

#[cfg(test)]
mod tests;
