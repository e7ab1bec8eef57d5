//! What is read while the password's key is derived ([`super::ReadAhead`]): scrypt
//! takes about as long as three round trips to an object store, time enough to list the
//! snapshot and index files and read them.

use std::sync::Arc;

use crate::Result;
use crate::backend::{Backend, FileType};
use crate::id::Id;

use super::{ListedFile, list_sized_of, load_parallel, max_file_len};

/// Snapshot files read ahead while the key is derived, at most this many (`latest` reads
/// them all; a repository with more reads the rest when asked).
const EARLY_SNAPSHOT_FILES: usize = 64;

/// What [`super::Repository::open_with`] lists and reads while the password's key is derived: the
/// listings are taken by the first [`super::Repository::listed_ahead`] of their kind, the files (whose
/// names are their hashes, so a copy never goes stale) by whoever loads them first.
#[derive(Default)]
pub(super) struct Early {
    /// The kinds read ahead; nothing else waits for the reading.
    kinds: Vec<FileType>,
    state: std::sync::Mutex<EarlyState>,
}

#[derive(Default)]
struct EarlyState {
    /// The reading, until someone needs what it read.
    pending: Option<std::thread::JoinHandle<WarmedUp>>,
    read: WarmedUp,
}

#[derive(Default)]
pub(super) struct WarmedUp {
    pub(super) lists: std::collections::HashMap<FileType, Vec<Id>>,
    pub(super) files: std::collections::HashMap<(FileType, Id), Vec<u8>>,
}

impl Early {
    pub(super) fn start(backend: &Arc<dyn Backend>, kinds: &[FileType]) -> Early {
        if kinds.is_empty() {
            return Early::default();
        }
        let (backend, wanted) = (backend.clone(), kinds.to_vec());
        let pending = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || warm_up(backend.as_ref(), &wanted))
            .ok();
        Early {
            kinds: kinds.to_vec(),
            state: std::sync::Mutex::new(EarlyState {
                pending,
                read: WarmedUp::default(),
            }),
        }
    }

    /// Runs `take` on what was read ahead of kind `t`, once the reading is done; `None` when
    /// nothing of that kind was read ahead.
    pub(super) fn take<T>(
        &self,
        t: FileType,
        take: impl FnOnce(&mut WarmedUp) -> Option<T>,
    ) -> Option<T> {
        if !self.kinds.contains(&t) {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reading) = state.pending.take()
            && let Ok(read) = reading.join()
        {
            state.read = read;
        }
        take(&mut state.read)
    }

    pub(super) fn clear(&self) {
        if self.kinds.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pending = None;
        state.read = WarmedUp::default();
    }
}

/// Lists the kinds `kinds` side by side, then reads the index files and (up to
/// [`EARLY_SNAPSHOT_FILES`]) the snapshot files they list. Whatever fails is left out: it
/// is asked for again when needed, and fails then with its proper error; so is a file
/// listed longer than its kind may be ([`max_file_len`]).
fn warm_up(backend: &dyn Backend, kinds: &[FileType]) -> WarmedUp {
    let mut read = WarmedUp::default();
    let listed: Vec<(FileType, Result<Vec<ListedFile>>)> = std::thread::scope(|s| {
        let listers: Vec<_> = kinds
            .iter()
            .map(|&t| (t, s.spawn(move || list_sized_of(backend, t))))
            .collect();
        listers
            .into_iter()
            .map(|(t, h)| (t, h.join().expect("lister")))
            .collect()
    });
    let mut to_read: Vec<(FileType, Id)> = Vec::new();
    for (t, files) in listed {
        let Ok(files) = files else { continue };
        let fits = |&&(_, size): &&ListedFile| size <= max_file_len(t);
        match t {
            FileType::Index => to_read.extend(files.iter().filter(fits).map(|(id, _)| (t, *id))),
            FileType::Snapshot if files.len() <= EARLY_SNAPSHOT_FILES => {
                to_read.extend(files.iter().filter(fits).map(|(id, _)| (t, *id)))
            }
            _ => {}
        }
        read.lists
            .insert(t, files.into_iter().map(|(id, _)| id).collect());
    }
    let names: Vec<Id> = to_read.iter().map(|(_, id)| *id).collect();
    let kind_of: std::collections::HashMap<Id, FileType> =
        to_read.iter().map(|(t, id)| (*id, *t)).collect();
    let read_one = |id: &Id| {
        let t = kind_of[id];
        backend.read_at_most(t, &id.to_hex(), max_file_len(t))
    };
    if let Ok(files) = load_parallel(&names, read_one) {
        for (id, file) in names.into_iter().zip(files) {
            if let Some(file) = file {
                read.files.insert((kind_of[&id], id), file);
            }
        }
    }
    read
}
