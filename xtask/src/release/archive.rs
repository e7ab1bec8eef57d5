//! One release archive: `kubectl-volbackup` and `LICENSE` in a gzipped tar, and the check that
//! the binary going in was built for the archive's platform.
//!
//! The archive depends on nothing but the two files' bytes (no timestamps, owners or host file
//! modes), so packing the same binary again gives the same sha256.

use std::io::Write;

use anyhow::{Context, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

use super::Target;

/// The gzipped tar krew unpacks: the plugin, executable, and the licence beside it.
pub fn pack(binary: &[u8], license: &[u8]) -> anyhow::Result<Vec<u8>> {
    let gz = GzEncoder::new(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    // 0755 whatever mode the file had on disk: binaries passed between CI jobs as artifacts
    // lose their executable bit on the way.
    append(&mut tar, "kubectl-volbackup", 0o755, binary)?;
    append(&mut tar, "LICENSE", 0o644, license)?;
    let gz = tar.into_inner().context("finishing the tar stream")?;
    gz.finish().context("finishing the gzip stream")
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    mode: u32,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    tar.append_data(&mut header, name, data)
        .with_context(|| format!("adding {name} to the archive"))
}

/// Refuses a binary whose header says it runs elsewhere than `target`: an artifact mixed up
/// between jobs would otherwise ship under the wrong platform, and krew users would get an
/// "exec format error". The header tells the format and the CPU, not the C library, so a glibc
/// build passes for a musl target.
pub fn check_executable(bytes: &[u8], target: Target) -> anyhow::Result<()> {
    let found = kind(bytes);
    let wanted = match target {
        Target::LinuxAmd64 => Kind::Elf(ELF_X86_64),
        Target::LinuxArm64 => Kind::Elf(ELF_AARCH64),
        Target::DarwinAmd64 => Kind::MachO(MACHO_X86_64),
        Target::DarwinArm64 => Kind::MachO(MACHO_ARM64),
    };
    if found != wanted {
        bail!("is {}, but the target needs {}", found, wanted);
    }
    Ok(())
}

const ELF_X86_64: u16 = 62;
const ELF_AARCH64: u16 = 183;
const MACHO_X86_64: u32 = 0x0100_0007;
const MACHO_ARM64: u32 = 0x0100_000c;

/// What an executable's first bytes say about where it runs.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A 64-bit little-endian ELF file and its `e_machine`.
    Elf(u16),
    /// A 64-bit little-endian Mach-O file and its `cputype`.
    MachO(u32),
    /// A Mach-O universal binary: krew's archives carry one architecture each.
    Universal,
    Unknown,
}

fn kind(bytes: &[u8]) -> Kind {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match bytes.get(..4) {
        // ELF class 2 (64-bit), data 1 (little-endian); e_machine follows e_ident and e_type.
        Some(b"\x7fELF") if bytes.get(4..6) == Some(&[2, 1]) => {
            u16_at(18).map_or(Kind::Unknown, Kind::Elf)
        }
        Some([0xcf, 0xfa, 0xed, 0xfe]) => u32_at(4).map_or(Kind::Unknown, Kind::MachO),
        Some([0xca, 0xfe, 0xba, 0xbe]) => Kind::Universal,
        _ => Kind::Unknown,
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Elf(ELF_X86_64) => f.write_str("an ELF x86_64 executable"),
            Kind::Elf(ELF_AARCH64) => f.write_str("an ELF aarch64 executable"),
            Kind::Elf(other) => write!(f, "an ELF executable for machine {other}"),
            Kind::MachO(MACHO_X86_64) => f.write_str("a Mach-O x86_64 executable"),
            Kind::MachO(MACHO_ARM64) => f.write_str("a Mach-O arm64 executable"),
            Kind::MachO(other) => write!(f, "a Mach-O executable for CPU type {other:#x}"),
            Kind::Universal => f.write_str("a Mach-O universal binary"),
            Kind::Unknown => f.write_str("not a 64-bit little-endian ELF or Mach-O executable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a 64-bit little-endian ELF file for `machine`.
    fn elf(machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b
    }

    fn macho(cputype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[..4].copy_from_slice(&[0xcf, 0xfa, 0xed, 0xfe]);
        b[4..8].copy_from_slice(&cputype.to_le_bytes());
        b
    }

    #[test]
    fn each_target_takes_the_executable_built_for_it() {
        check_executable(&elf(ELF_X86_64), Target::LinuxAmd64).unwrap();
        check_executable(&elf(ELF_AARCH64), Target::LinuxArm64).unwrap();
        check_executable(&macho(MACHO_X86_64), Target::DarwinAmd64).unwrap();
        check_executable(&macho(MACHO_ARM64), Target::DarwinArm64).unwrap();
    }

    #[test]
    fn an_executable_for_another_cpu_is_refused_saying_what_it_is() {
        let err = check_executable(&elf(ELF_X86_64), Target::LinuxArm64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is an ELF x86_64 executable, but the target needs an ELF aarch64 executable"
        );
        let err = check_executable(&macho(MACHO_ARM64), Target::DarwinAmd64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is a Mach-O arm64 executable, but the target needs a Mach-O x86_64 executable"
        );
    }

    #[test]
    fn a_linux_executable_is_refused_for_darwin() {
        let err = check_executable(&elf(ELF_AARCH64), Target::DarwinArm64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is an ELF aarch64 executable, but the target needs a Mach-O arm64 executable"
        );
    }

    #[test]
    fn a_universal_binary_a_script_and_a_truncated_header_are_refused() {
        let universal = [0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2];
        assert!(check_executable(&universal, Target::DarwinArm64).is_err());
        let err = check_executable(b"#!/bin/sh\necho hi\n", Target::LinuxAmd64).unwrap_err();
        assert_eq!(
            err.to_string(),
            "is not a 64-bit little-endian ELF or Mach-O executable, but the target needs an ELF x86_64 executable"
        );
        assert!(check_executable(&elf(ELF_X86_64)[..10], Target::LinuxAmd64).is_err());
    }

    #[test]
    fn packing_the_same_files_twice_gives_the_same_bytes() {
        let first = pack(b"binary", b"licence").unwrap();
        let second = pack(b"binary", b"licence").unwrap();
        assert_eq!(first, second);
        assert_ne!(first, pack(b"binarY", b"licence").unwrap());
    }
}
