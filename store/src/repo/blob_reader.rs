//! Reading blobs: a blob's bytes are ranged out of its pack, decrypted, decompressed to the
//! length the index claims and no further, and verified against their id. [`BlobReader`]
//! does the same with reusable buffers, for the hot loops of a restore.

use crate::backend::FileType;
use crate::crypto;
use crate::format::{self, BlobType, PackedBlob};
use crate::id::Id;
use crate::index::IndexEntry;
use crate::{Error, Result};

use super::{MAX_PACK_HEADER, Repository, max_blob_len};

impl Repository {
    /// Reads a blob: range from its pack, decrypt, decompress, verify SHA-256 == id.
    pub fn read_blob(&self, t: BlobType, id: &Id) -> Result<Vec<u8>> {
        let entry = self.blob_entry(t, id).ok_or_else(|| Error::NotIndexed {
            what: format!("{t} blob {id}"),
            location: self.location(),
        })?;
        self.read_blob_at(t, id, &entry)
    }

    /// Reads the blob `id` of type `t` from the place `entry` names (one of its copies).
    pub fn read_blob_at(&self, t: BlobType, id: &Id, entry: &IndexEntry) -> Result<Vec<u8>> {
        check_claim(t, id, entry)?;
        let sealed = self.inner.backend.read_range(
            FileType::Pack,
            &entry.pack.to_hex(),
            u64::from(entry.offset),
            u64::from(entry.length),
        )?;
        self.decode_blob(t, id, entry, sealed)
    }

    /// Decrypts, decompresses and verifies a sealed blob of type `t` read from `entry.pack`.
    pub fn decode_blob(
        &self,
        t: BlobType,
        id: &Id,
        entry: &IndexEntry,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        check_claim(t, id, entry)?;
        let plain = self
            .inner
            .key
            .open_in_place(sealed)
            .map_err(|_| Error::Corrupt {
                what: what(),
                message: "MAC does not match: the pack is damaged".into(),
            })?;
        let data = match entry.uncompressed_length {
            Some(n) => {
                // The output buffer is the claimed length: zstd stops there.
                let out = zstd::bulk::decompress(&plain, n as usize)
                    .map_err(|e| decompress_error(what(), n, e))?;
                check_length(what(), out.len(), n)?;
                out
            }
            None => plain,
        };
        if Id::hash(&data) != *id {
            return Err(Error::Corrupt {
                what: what(),
                message: "content does not match its id (SHA-256)".into(),
            });
        }
        Ok(data)
    }

    /// Reads and decodes a pack's header (its blob list), straight from the pack file.
    pub fn read_pack_header(&self, pack: &Id) -> Result<Vec<PackedBlob>> {
        let name = pack.to_hex();
        let what = || format!("data/{name}");
        let size = self.inner.backend.stat(FileType::Pack, &name)?;
        if size < 4 {
            return Err(Error::Corrupt {
                what: what(),
                message: format!("only {size} bytes long"),
            });
        }
        let tail = self
            .inner
            .backend
            .read_range(FileType::Pack, &name, size - 4, 4)?;
        let hlen = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
        if hlen + 4 > size || hlen < crypto::OVERHEAD as u64 {
            return Err(Error::Corrupt {
                what: what(),
                message: format!("header length {hlen} does not fit a {size}-byte pack"),
            });
        }
        if hlen > MAX_PACK_HEADER {
            return Err(Error::Corrupt {
                what: what(),
                message: format!(
                    "header length {hlen} is above the limit {}",
                    format::human_bytes(MAX_PACK_HEADER)
                ),
            });
        }
        let sealed = self
            .inner
            .backend
            .read_range(FileType::Pack, &name, size - 4 - hlen, hlen)?;
        let plain = self
            .inner
            .key
            .open_in_place(sealed)
            .map_err(|_| Error::Corrupt {
                what: what(),
                message: "pack header does not decrypt (MAC mismatch)".into(),
            })?;
        format::decode_pack_header(&plain).map_err(|e| match e {
            Error::Corrupt { message, .. } => Error::Corrupt {
                what: what(),
                message,
            },
            e => e,
        })
    }
}

/// Reads blobs with reusable buffers and a reusable zstd context: one per thread in hot loops
/// (restore). Every blob is verified (MAC, then SHA-256 of the plaintext).
pub struct BlobReader {
    repo: Repository,
    sealed: Vec<u8>,
    plain: Vec<u8>,
    dctx: zstd::bulk::Decompressor<'static>,
}

impl BlobReader {
    /// A reader for `repo`.
    pub fn new(repo: &Repository) -> Result<BlobReader> {
        Ok(BlobReader {
            repo: repo.clone(),
            sealed: Vec::new(),
            plain: Vec::new(),
            dctx: zstd::bulk::Decompressor::new()
                .map_err(|e| Error::Invalid(format!("cannot create a zstd decoder: {e}")))?,
        })
    }

    /// Reads a blob by id (looked up in the repository's index).
    pub fn read(&mut self, t: BlobType, id: &Id) -> Result<&[u8]> {
        let entry = self
            .repo
            .blob_entry(t, id)
            .ok_or_else(|| Error::NotIndexed {
                what: format!("{t} blob {id}"),
                location: self.repo.location(),
            })?;
        self.read_entry(t, id, &entry)
    }

    /// Reads the blob `id` of type `t` stored at `entry`.
    pub fn read_entry(&mut self, t: BlobType, id: &Id, entry: &IndexEntry) -> Result<&[u8]> {
        check_claim(t, id, entry)?;
        let n = self.open_entry(id, entry)?;
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        let plain = &self.sealed[16..16 + n];
        let data: &[u8] = match entry.uncompressed_length {
            Some(len) => {
                self.plain.clear();
                self.plain.reserve(len as usize);
                let got = self
                    .dctx
                    .decompress_to_buffer(plain, &mut self.plain)
                    .map_err(|e| decompress_error(what(), len, e))?;
                check_length(what(), got, len)?;
                &self.plain
            }
            None => plain,
        };
        verify(id, data, what)?;
        Ok(data)
    }

    /// Reads the blob `id` of type `t` stored at `entry` straight into `dst`, which must be
    /// exactly as long as the blob's plaintext (saves a copy where the bytes have a place
    /// already).
    pub fn read_entry_into(
        &mut self,
        t: BlobType,
        id: &Id,
        entry: &IndexEntry,
        dst: &mut [u8],
    ) -> Result<()> {
        let what = || format!("blob {} in pack data/{}", id.short(), entry.pack);
        check_claim(t, id, entry)?;
        if dst.len() != entry.plaintext_len() as usize {
            return Err(Error::Invalid(format!(
                "{}: a {}-byte buffer for {} bytes",
                what(),
                dst.len(),
                entry.plaintext_len()
            )));
        }
        match entry.uncompressed_length {
            Some(len) => {
                let n = self.open_entry(id, entry)?;
                let got = self
                    .dctx
                    .decompress_to_buffer(&self.sealed[16..16 + n], dst)
                    .map_err(|e| decompress_error(what(), len, e))?;
                check_length(what(), got, len)?;
            }
            None => {
                // Stored as is: decrypted straight into its place, not in place and copied.
                self.fetch_entry(entry)?;
                check_length(
                    what(),
                    self.sealed.len().saturating_sub(crate::crypto::OVERHEAD),
                    dst.len() as u32,
                )?;
                self.repo
                    .key()
                    .open_into(&self.sealed, dst)
                    .map_err(|_| mac_error(id, entry))?;
            }
        }
        verify(id, dst, what)
    }

    /// Fetches and decrypts the blob at `entry` in place; its (maybe compressed) plaintext is
    /// `self.sealed[16..16 + n]`.
    fn open_entry(&mut self, id: &Id, entry: &IndexEntry) -> Result<usize> {
        self.fetch_entry(entry)?;
        self.repo
            .key()
            .open_slice(&mut self.sealed)
            .map_err(|_| mac_error(id, entry))
    }

    /// Reads the sealed blob at `entry` into `self.sealed`.
    fn fetch_entry(&mut self, entry: &IndexEntry) -> Result<()> {
        self.repo.backend().read_range_into(
            FileType::Pack,
            &entry.pack.to_hex(),
            u64::from(entry.offset),
            u64::from(entry.length),
            &mut self.sealed,
        )
    }
}

/// Refuses a blob whose index entry claims more than any blob of its type may hold, before its
/// bytes are read or a buffer of the claimed size is allocated.
pub fn check_claim(t: BlobType, id: &Id, entry: &IndexEntry) -> Result<()> {
    let max = max_blob_len(t);
    // zstd's worst case adds well under 1/128 to incompressible data.
    let max_sealed = u64::from(max) + u64::from(max) / 128 + crypto::OVERHEAD as u64;
    if entry.plaintext_len() > max || u64::from(entry.length) > max_sealed {
        return Err(Error::Corrupt {
            what: format!("{t} blob {} in pack data/{}", id.short(), entry.pack),
            message: format!(
                "the index says it is {} bytes ({} stored), more than a {t} blob may be ({})",
                entry.plaintext_len(),
                entry.length,
                format::human_bytes(u64::from(max))
            ),
        });
    }
    Ok(())
}

pub(crate) fn mac_error(id: &Id, entry: &IndexEntry) -> Error {
    Error::Corrupt {
        what: format!("blob {} in pack data/{}", id.short(), entry.pack),
        message: "MAC does not match: the pack is damaged".into(),
    }
}

pub(crate) fn decompress_error(what: String, len: u32, e: std::io::Error) -> Error {
    Error::Corrupt {
        what,
        message: format!("does not decompress to the {len} bytes the index says: {e}"),
    }
}

pub(crate) fn check_length(what: String, got: usize, len: u32) -> Result<()> {
    if got != len as usize {
        return Err(Error::Corrupt {
            what,
            message: format!("decompresses to {got} bytes, the index says {len}"),
        });
    }
    Ok(())
}

/// Checks that `data` hashes to `id`.
pub(crate) fn verify(id: &Id, data: &[u8], what: impl Fn() -> String) -> Result<()> {
    if Id::hash(data) != *id {
        return Err(Error::Corrupt {
            what: what(),
            message: "content does not match its id (SHA-256)".into(),
        });
    }
    Ok(())
}
