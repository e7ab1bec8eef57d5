//! Restore planning: which byte ranges of which packs a restore reads, and where each blob it
//! decodes goes. Pure: no I/O, no threads; [`crate::pack_reader`] executes a plan.
//!
//! A restore of an image needs a list of blobs in order. Fetching them one request per blob
//! costs one round trip each, which an object store charges tens of milliseconds for. The plan
//! instead reads packs: the blobs needed from one pack are sorted by their place in it and
//! neighbours are merged into one ranged read when the gap between them is small (reading a
//! few unneeded bytes is cheaper than another request), and split when the gap is large or the
//! read would grow past a limit (which bounds the memory a read in flight holds). Every blob is
//! fetched once: a blob the image holds several times is decoded at its first place, and the
//! later places copy it from there ([`Source::Copy`]), which a sequential writer has written
//! by the time it gets to them.

use std::collections::HashMap;

use crate::id::Id;
use crate::index::IndexEntry;

/// Limits of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Unneeded bytes between two needed blobs of a pack that are read rather than skipped
    /// with a second request.
    pub max_gap: u64,
    /// The longest read (a single blob longer than this is still read whole).
    pub max_read: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        // At 25 ms a request and a few hundred MB/s, a request costs as much as several MiB
        // of transfer: reading a gap of 1 MiB is cheaper than a second request. Reads of at
        // most 8 MiB keep several in flight within the reader's budget of 48 MiB (on 2 cores
        // behind 25 ms, 8 MiB reads were 5-12 % faster than 4 MiB ones, and 16 MiB no faster).
        PlanOptions {
            max_gap: 1 << 20,
            max_read: 8 << 20,
        }
    }
}

/// One ranged read of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRead {
    /// The pack.
    pub pack: Id,
    /// First byte read.
    pub offset: u64,
    /// Bytes read.
    pub length: u64,
    /// The blobs decoded from the read, in pack order.
    pub blobs: Vec<ReadBlob>,
}

/// A blob decoded from a [`PackRead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlob {
    /// The blob.
    pub id: Id,
    /// Where it is stored (its `offset` is in the pack, not in the read).
    pub entry: IndexEntry,
    /// The piece of the image it fills (its first place; later places copy it).
    pub piece: usize,
}

impl ReadBlob {
    /// Where the blob starts inside the bytes of its read.
    pub fn offset_in(&self, read: &PackRead) -> usize {
        (u64::from(self.entry.offset) - read.offset) as usize
    }
}

/// Where the bytes of a piece come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Decoded from blob `blob` of read `read`.
    Fetch {
        /// Index into [`Plan::reads`].
        read: usize,
        /// Index into that read's blobs.
        blob: usize,
    },
    /// The same blob as an earlier piece: a copy of its bytes.
    Copy {
        /// Index into [`Plan::pieces`] of the first place of the blob.
        piece: usize,
    },
}

/// A place in the image: one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The blob.
    pub id: Id,
    /// Its first byte in the image.
    pub start: u64,
    /// Its plaintext length.
    pub len: u64,
    /// Where its bytes come from.
    pub source: Source,
}

impl Piece {
    /// One past its last byte in the image.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A restore plan: the image's pieces in order and the reads that fill them, in the order the
/// image needs them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Every chunk of the image, in order.
    pub pieces: Vec<Piece>,
    /// The reads, ordered by the first piece each fills.
    pub reads: Vec<PackRead>,
    /// The image's size.
    pub size: u64,
}

impl Plan {
    /// Bytes all reads together fetch.
    pub fn bytes_read(&self) -> u64 {
        self.reads.iter().map(|r| r.length).sum()
    }
}

/// Plans the restore of an image made of `content` (each chunk's blob id and where it is
/// stored, in image order).
pub fn plan(content: &[(Id, IndexEntry)], opts: &PlanOptions) -> Plan {
    let mut pieces = Vec::with_capacity(content.len());
    let mut first: HashMap<Id, usize> = HashMap::with_capacity(content.len());
    // Blobs to fetch, by pack: (entry, id, first piece).
    let mut by_pack: HashMap<Id, Vec<(IndexEntry, Id, usize)>> = HashMap::new();
    let mut pos = 0u64;
    for (i, (id, entry)) in content.iter().enumerate() {
        let len = u64::from(entry.plaintext_len());
        let source = match first.get(id) {
            Some(&piece) => Source::Copy { piece },
            None => {
                first.insert(*id, i);
                by_pack
                    .entry(entry.pack)
                    .or_default()
                    .push((*entry, *id, i));
                // Filled in below, once the reads are ordered.
                Source::Fetch { read: 0, blob: 0 }
            }
        };
        pieces.push(Piece {
            id: *id,
            start: pos,
            len,
            source,
        });
        pos += len;
    }

    let mut reads = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|(e, _, _)| e.offset);
        let mut current: Option<PackRead> = None;
        for (entry, id, piece) in blobs {
            let (start, end) = (
                u64::from(entry.offset),
                u64::from(entry.offset) + u64::from(entry.length),
            );
            if let Some(r) = current.as_mut() {
                let r_end = r.offset + r.length;
                let gap = start.saturating_sub(r_end);
                let grown = end.max(r_end) - r.offset;
                if gap <= opts.max_gap && grown <= opts.max_read {
                    r.length = grown;
                    r.blobs.push(ReadBlob { id, entry, piece });
                    continue;
                }
                reads.extend(current.take());
            }
            current = Some(PackRead {
                pack,
                offset: start,
                length: end - start,
                blobs: vec![ReadBlob { id, entry, piece }],
            });
        }
        reads.extend(current);
    }
    // The order the image needs them in, so that a sequential writer is fed in order.
    reads.sort_by_key(|r: &PackRead| r.blobs.iter().map(|b| b.piece).min());
    for (ri, r) in reads.iter().enumerate() {
        for (bi, b) in r.blobs.iter().enumerate() {
            pieces[b.piece].source = Source::Fetch { read: ri, blob: bi };
        }
    }
    Plan {
        pieces,
        reads,
        size: pos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pack: u8, offset: u32, length: u32) -> IndexEntry {
        IndexEntry {
            pack: Id([pack; 32]),
            offset,
            length,
            uncompressed_length: None,
        }
    }

    #[test]
    fn an_empty_image_plans_nothing() {
        let p = plan(&[], &PlanOptions::default());
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn every_piece_points_at_the_blob_that_fills_it() {
        let content: Vec<(Id, IndexEntry)> = (0..20u8)
            .map(|i| (Id([i; 32]), entry(i % 3, u32::from(i) * 1000, 532)))
            .collect();
        let p = plan(&content, &PlanOptions::default());
        for (i, piece) in p.pieces.iter().enumerate() {
            let Source::Fetch { read, blob } = piece.source else {
                panic!("piece {i} is not fetched");
            };
            let b = &p.reads[read].blobs[blob];
            assert_eq!((b.id, b.piece), (piece.id, i));
        }
    }
}
