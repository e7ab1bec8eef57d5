//! Release archives, their sha256 sums and the rendered krew manifest.
