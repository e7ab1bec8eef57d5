//! The container image.
