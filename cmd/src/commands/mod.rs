//! One function per command; each takes its parsed options.

pub mod backups;
pub mod create;
pub mod forget;
pub mod install;
pub mod mover;
pub mod populator;
pub mod repo;
pub mod restore;
pub mod snapshots;

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::cli::OutputFormat;

/// Prints `value` as JSON or YAML on stdout (tables are printed by the caller).
pub fn print_structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, value)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => {
            serde_yaml::to_writer(&mut out, value)?;
        }
        OutputFormat::Table => unreachable!("tables are printed by the command"),
    }
    Ok(())
}

pub use volbackup_store::format::human_bytes;

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
