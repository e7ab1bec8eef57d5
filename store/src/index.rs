//! The in-memory index: where every blob lives (pack, offset, length).

use std::collections::{HashMap, HashSet};

use crate::format::{BlobType, IndexFile, PackedBlob};
use crate::id::Id;

/// Where one blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// The pack holding the blob.
    pub pack: Id,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length if compressed.
    pub uncompressed_length: Option<u32>,
}

impl IndexEntry {
    /// The blob's plaintext length.
    pub fn plaintext_len(&self) -> u32 {
        self.uncompressed_length
            .unwrap_or(self.length.saturating_sub(crate::crypto::OVERHEAD as u32))
    }
}

/// All blobs known from the loaded index files (and from packs written since).
///
/// A blob stored in several packs has one primary entry (the first seen); the others are kept
/// in [`Index::duplicates`] for check and prune.
#[derive(Debug, Default, Clone)]
pub struct Index {
    blobs: HashMap<(BlobType, Id), IndexEntry>,
    duplicates: Vec<(BlobType, Id, IndexEntry)>,
    files: Vec<Id>,
    supersedes: Vec<Id>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Adds the contents of an index file (`id` is its file name, if it has one).
    pub fn add_file(&mut self, id: Option<Id>, file: &IndexFile) {
        if let Some(id) = id {
            self.files.push(id);
        }
        self.supersedes.extend(file.supersedes.iter().copied());
        for p in &file.packs {
            for b in &p.blobs {
                self.insert(
                    b.blob_type,
                    b.id,
                    IndexEntry {
                        pack: p.id,
                        offset: b.offset,
                        length: b.length,
                        uncompressed_length: b.uncompressed_length.filter(|&u| u != 0),
                    },
                );
            }
        }
    }

    /// Adds the blobs of one pack.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        for b in blobs {
            self.insert(
                b.blob_type,
                b.id,
                IndexEntry {
                    pack,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                },
            );
        }
    }

    fn insert(&mut self, t: BlobType, id: Id, e: IndexEntry) {
        match self.blobs.entry((t, id)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(e);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                if *o.get() != e {
                    self.duplicates.push((t, id, e));
                }
            }
        }
    }

    /// Where a blob is stored, if anywhere.
    pub fn get(&self, t: BlobType, id: &Id) -> Option<&IndexEntry> {
        self.blobs.get(&(t, *id))
    }

    /// Whether a blob is stored.
    pub fn has(&self, t: BlobType, id: &Id) -> bool {
        self.blobs.contains_key(&(t, *id))
    }

    /// Every location of a blob (primary first, then duplicates).
    pub fn get_all(&self, t: BlobType, id: &Id) -> Vec<IndexEntry> {
        let mut v: Vec<IndexEntry> = self.get(t, id).copied().into_iter().collect();
        v.extend(
            self.duplicates
                .iter()
                .filter(|(dt, did, _)| *dt == t && did == id)
                .map(|(_, _, e)| *e),
        );
        v
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether no blob is known.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every primary entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (BlobType, Id, &IndexEntry)> + '_ {
        self.blobs.iter().map(|((t, id), e)| (*t, *id, e))
    }

    /// Extra locations of blobs stored more than once.
    pub fn duplicates(&self) -> &[(BlobType, Id, IndexEntry)] {
        &self.duplicates
    }

    /// Every pack referenced by the index (primary and duplicate entries).
    pub fn packs(&self) -> HashSet<Id> {
        self.blobs
            .values()
            .map(|e| e.pack)
            .chain(self.duplicates.iter().map(|d| d.2.pack))
            .collect()
    }

    /// The index files this index was loaded from.
    pub fn files(&self) -> &[Id] {
        &self.files
    }

    /// Index files named as superseded by the loaded ones.
    pub fn supersedes(&self) -> &[Id] {
        &self.supersedes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{IndexBlob, IndexPack};

    #[test]
    fn blobs_are_found_by_type_and_id_and_duplicates_are_kept() {
        let mut idx = Index::new();
        let blob = |off| IndexBlob {
            id: Id([7; 32]),
            blob_type: BlobType::Data,
            offset: off,
            length: 40,
            uncompressed_length: Some(0),
        };
        idx.add_file(
            Some(Id([1; 32])),
            &IndexFile {
                supersedes: vec![],
                packs: vec![
                    IndexPack {
                        id: Id([2; 32]),
                        blobs: vec![blob(0)],
                    },
                    IndexPack {
                        id: Id([3; 32]),
                        blobs: vec![blob(8)],
                    },
                ],
            },
        );
        assert!(idx.has(BlobType::Data, &Id([7; 32])));
        assert!(!idx.has(BlobType::Tree, &Id([7; 32])));
        let e = idx.get(BlobType::Data, &Id([7; 32])).unwrap();
        assert_eq!(e.pack, Id([2; 32]));
        assert_eq!(e.uncompressed_length, None, "0 means not compressed");
        assert_eq!(e.plaintext_len(), 8);
        assert_eq!(idx.get_all(BlobType::Data, &Id([7; 32])).len(), 2);
        assert_eq!(idx.packs().len(), 2);
        assert_eq!(idx.files(), &[Id([1; 32])]);
    }
}
