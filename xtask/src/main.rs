//! `cargo xtask`: build tasks (see the library's docs).

fn main() {}
