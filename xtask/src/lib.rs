//! Build tasks that are code rather than shell: the container image (built with buildah from
//! the top-level `Containerfile`, pushed to a registry) and the release archives with the krew
//! manifest. The end-to-end tests call [`image`] to build the image they run in kubesim.

pub mod image;
pub mod release;
