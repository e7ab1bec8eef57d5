//! One function per command; each takes its parsed options.

pub mod backups;
pub mod completion;
pub mod create;
pub mod doctor;
pub mod forget;
pub mod install;
pub mod mover;
pub mod populator;
pub mod record;
pub mod repo;
pub mod restore;
pub mod snapshots;
pub mod version;

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{ListFormat, OutputFormat};

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

/// The structured format a listing format stands for, if it is one.
pub fn structured(format: ListFormat) -> Option<OutputFormat> {
    match format {
        ListFormat::Json => Some(OutputFormat::Json),
        ListFormat::Yaml => Some(OutputFormat::Yaml),
        ListFormat::Table | ListFormat::Wide | ListFormat::Name => None,
    }
}

/// Renders rows as a borderless table, kubectl's way: upper-case headers unless `headers` is
/// false, and nothing at all for no rows without headers.
pub fn table<T: tabled::Tabled>(rows: impl IntoIterator<Item = T>, headers: bool) -> String {
    use tabled::settings::{Remove, Style, object::Rows};
    let mut table = tabled::Table::new(rows);
    table.with(Style::blank());
    if !headers {
        if table.count_rows() <= 1 {
            return String::new();
        }
        table.with(Remove::row(Rows::first()));
    }
    table.to_string()
}

/// Prints a rendered table with its line break; an empty one prints nothing.
pub fn print_table(text: &str) {
    if !text.is_empty() {
        println!("{text}");
    }
}

pub use volbackup_store::format::human_bytes;

#[cfg(test)]
mod tests {
    use super::{human_bytes, table};

    #[derive(tabled::Tabled)]
    struct Row {
        #[tabled(rename = "NAME")]
        name: &'static str,
        #[tabled(rename = "SIZE")]
        size: &'static str,
    }

    #[test]
    fn tables_lose_only_their_header_line_without_headers() {
        let rows = || {
            [
                Row {
                    name: "a",
                    size: "1Mi",
                },
                Row {
                    name: "bb",
                    size: "2Mi",
                },
            ]
        };
        let with = table(rows(), true);
        assert_eq!(with.lines().count(), 3, "{with}");
        assert!(with.lines().next().unwrap().contains("NAME"));
        let without = table(rows(), false);
        let words: Vec<Vec<&str>> = without
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(words, [["a", "1Mi"], ["bb", "2Mi"]]);
    }

    #[test]
    fn no_rows_without_headers_print_nothing() {
        assert_eq!(table(Vec::<Row>::new(), false), "");
        assert!(table(Vec::<Row>::new(), true).contains("NAME"));
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
