//! The parent of a backup: the snapshot whose trees a file-tree backup compares against, and
//! which is named in the new snapshot. Looked up in the snapshot listing read ahead while the
//! repository was opened ([`crate::ReadAhead::SnapshotsAndIndex`]): a parent is a guess (one
//! saved a moment ago changes what is compared, never what is stored), so a listing that
//! old serves, and saves a round trip.

use crate::Result;
use crate::id::Id;
use crate::repo::Repository;

/// The parent of a backup of `paths` from `host`: the snapshot `spec` names (`latest`, an id
/// or a unique prefix) if one is given, else the newest snapshot with the same host and
/// paths, if any. Snapshot files that cannot be used are passed over with a warning.
pub fn backup_parent(
    repo: &Repository,
    spec: Option<&str>,
    host: &str,
    paths: &[String],
) -> Result<Option<Id>> {
    if let Some(spec) = spec {
        return Ok(Some(repo.find_snapshot_ahead(spec)?.0));
    }
    Ok(repo
        .list_snapshots_ahead()?
        .into_iter()
        .filter(|(_, s)| s.hostname == host && s.paths == paths)
        .max_by(|a, b| a.1.time.cmp(&b.1.time))
        .map(|(id, _)| id))
}
