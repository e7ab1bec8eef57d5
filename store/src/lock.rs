//! Repository locks (`locks/<id>`), compatible with restic's.
//!
//! Backups and restores take a shared lock; forget and prune take an exclusive one. A lock is
//! refreshed (new file written, old one removed) every [`REFRESH_INTERVAL`] by a background
//! thread and removed when the guard is dropped. A lock is stale when it is older than
//! [`STALE_AFTER`], or when it was taken on this host by a process that no longer exists.
//! Files in `locks/` that do not verify or decrypt are passed over with a warning; only
//! `repo unlock --remove-all` ([`remove_all_locks`]) removes them.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use crossbeam_channel::{Sender, bounded};

use crate::backend::FileType;
use crate::format::{self, LockFile};
use crate::id::Id;
use crate::repo::Repository;
use crate::{Error, Result};

/// How often a held lock is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A lock older than this is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Takes repository locks.
pub struct Lock;

impl Lock {
    /// A shared lock: fails if a non-stale exclusive lock exists.
    pub fn shared(repo: &Repository) -> Result<LockGuard> {
        LockGuard::take(repo, false)
    }

    /// An exclusive lock: fails if any other non-stale lock exists.
    pub fn exclusive(repo: &Repository) -> Result<LockGuard> {
        LockGuard::take(repo, true)
    }
}

/// Every lock this process holds, so that a process that is told to stop (SIGTERM, Ctrl-C)
/// can remove its lock files before it exits: restic does not pass over a stale lock when it
/// locks, so a lock left behind blocks `restic check` until someone runs `restic unlock`.
static HELD: Mutex<Vec<HeldLock>> = Mutex::new(Vec::new());

/// A held lock's token, repository and current lock file id.
type HeldLock = (u64, Repository, Arc<Mutex<Id>>);
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes the lock files of every lock this process holds, without waiting for their guards.
/// For a signal handler that is about to exit the process; best effort.
pub fn release_held_locks() {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for (_, repo, current) in held.iter() {
        let id = *current.lock().unwrap_or_else(|e| e.into_inner());
        let _ = repo.backend().remove(FileType::Lock, &id.to_hex());
    }
}

/// A held lock. Dropping it stops the refresh thread and removes the lock file.
pub struct LockGuard {
    token: u64,
    repo: Repository,
    current: Arc<Mutex<Id>>,
    exclusive: bool,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("id", &*self.current.lock().expect("lock id"))
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

impl LockGuard {
    fn take(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
        check_conflicts(repo, exclusive, None)?;
        let id = repo.save_unpacked(FileType::Lock, &new_lock_file(exclusive))?;
        // Another process may have locked between our check and our write: check again,
        // now that ours is visible to it too.
        if let Err(e) = check_conflicts(repo, exclusive, Some(&id)) {
            let _ = repo.backend().remove(FileType::Lock, &id.to_hex());
            return Err(e);
        }
        let current = Arc::new(Mutex::new(id));
        let (stop, stop_rx) = bounded::<()>(1);
        let thread_repo = repo.clone();
        let thread_current = current.clone();
        let thread = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(REFRESH_INTERVAL)
                {
                    let mut cur = thread_current.lock().expect("lock id");
                    if let Ok(new_id) =
                        thread_repo.save_unpacked(FileType::Lock, &new_lock_file(exclusive))
                    {
                        let _ = thread_repo.backend().remove(FileType::Lock, &cur.to_hex());
                        *cur = new_id;
                    }
                }
            })
            .map_err(|e| Error::Invalid(format!("cannot start lock refresh thread: {e}")))?;
        let token = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((token, repo.clone(), current.clone()));
        Ok(LockGuard {
            token,
            repo: repo.clone(),
            current,
            exclusive,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The id of the lock file currently held.
    pub fn id(&self) -> Id {
        *self.current.lock().expect("lock id")
    }

    /// Whether the lock is exclusive.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let id = *self.current.lock().expect("lock id");
        let _ = self.repo.backend().remove(FileType::Lock, &id.to_hex());
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _, _)| *t != self.token);
    }
}

fn new_lock_file(exclusive: bool) -> LockFile {
    LockFile {
        time: format::now(),
        exclusive,
        hostname: format::hostname(),
        username: format::username(),
        pid: i64::from(rustix::process::getpid().as_raw_nonzero().get()),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    }
}

/// Every readable lock file in the repository. Files that vanish while listing are skipped;
/// so are files that do not verify, decrypt or parse, with a warning: lock files are written
/// by anyone with access to the bucket, and one bad file must not stop every backup, restore
/// and prune (restic passes over them too). Backend failures still fail the listing.
pub fn list_locks(repo: &Repository) -> Result<Vec<(Id, LockFile)>> {
    let mut out = Vec::new();
    for id in repo.list_ids(FileType::Lock)? {
        match repo.load_unpacked::<LockFile>(FileType::Lock, &id) {
            Ok(l) => out.push((id, l)),
            Err(Error::NotFound { .. }) => {}
            Err(e @ Error::Corrupt { .. }) => {
                // Taking a lock lists twice, and a long run takes several: say it once.
                let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
                if !warned.insert(id) {
                    continue;
                }
                tracing::warn!(
                    "{}: ignoring an unreadable lock file ({e}): delete it, or run \
                     `kubectl-volbackup repo unlock --remove-all` when nothing uses the repository",
                    repo.location()
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Unreadable lock files this process has warned about.
static WARNED: Mutex<std::collections::BTreeSet<Id>> =
    Mutex::new(std::collections::BTreeSet::new());

/// What [`remove_stale_locks`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unlocked {
    /// Stale locks removed.
    pub removed: usize,
    /// Locks still in use, left in place.
    pub kept: usize,
}

/// Removes stale locks (`repo unlock`): those older than [`STALE_AFTER`] and those taken on
/// this host by a process that is gone. Locks in use and unreadable files stay.
pub fn remove_stale_locks(repo: &Repository) -> Result<Unlocked> {
    let host = format::hostname();
    let now = format::now();
    let mut done = Unlocked {
        removed: 0,
        kept: 0,
    };
    for (id, l) in list_locks(repo)? {
        if is_stale(&l, now, &host, pid_alive) {
            repo.backend().remove(FileType::Lock, &id.to_hex())?;
            done.removed += 1;
        } else {
            done.kept += 1;
        }
    }
    Ok(done)
}

/// The names of every file in `locks/`, readable or not (what `repo unlock --remove-all`
/// would remove).
pub fn lock_file_names(repo: &Repository) -> Result<Vec<String>> {
    Ok(repo
        .backend()
        .list(FileType::Lock)?
        .into_iter()
        .map(|f| f.name)
        .collect())
}

/// Removes every file in `locks/`, including the locks of running processes and files that
/// are not locks at all (`repo unlock --remove-all`); returns how many were removed.
pub fn remove_all_locks(repo: &Repository) -> Result<usize> {
    let names = lock_file_names(repo)?;
    for name in &names {
        repo.backend().remove(FileType::Lock, name)?;
    }
    Ok(names.len())
}

/// Whether a process with this pid exists on this host.
pub fn pid_alive(pid: i64) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// Whether a lock is stale: older than [`STALE_AFTER`], or taken on `host` by a process that
/// is gone. A lock from the future (clock skew) is not stale.
pub fn is_stale(
    lock: &LockFile,
    now: DateTime<FixedOffset>,
    host: &str,
    alive: impl Fn(i64) -> bool,
) -> bool {
    let age = now.signed_duration_since(lock.time);
    if age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false) {
        return true;
    }
    lock.hostname == host && !alive(lock.pid)
}

/// Whether a lock held by someone else blocks taking ours.
pub fn conflicts(want_exclusive: bool, other: &LockFile) -> bool {
    want_exclusive || other.exclusive
}

fn check_conflicts(repo: &Repository, exclusive: bool, own: Option<&Id>) -> Result<()> {
    let host = format::hostname();
    let now = format::now();
    for (id, l) in list_locks(repo)? {
        if Some(&id) == own || !conflicts(exclusive, &l) || is_stale(&l, now, &host, pid_alive) {
            continue;
        }
        let kind = if l.exclusive {
            "exclusively"
        } else {
            "(shared lock)"
        };
        return Err(Error::Locked(format!(
            "{} is locked {kind} by {}@{} (pid {}) since {}: wait for it to finish, or run \
             `kubectl-volbackup repo unlock --remove-all` if no backup, restore or prune uses \
             the repository any more (lock {})",
            repo.location(),
            l.username,
            l.hostname,
            l.pid,
            l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            id.short()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(host: &str, pid: i64, age_secs: i64, exclusive: bool) -> LockFile {
        LockFile {
            time: format::now() - chrono::Duration::seconds(age_secs),
            exclusive,
            hostname: host.into(),
            username: "u".into(),
            pid,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn locks_are_stale_when_old_or_their_local_process_is_gone() {
        let now = format::now();
        let alive = |_| true;
        let dead = |_| false;
        assert!(!is_stale(&lock("h", 1, 60, false), now, "h", alive));
        assert!(is_stale(&lock("h", 1, 31 * 60, false), now, "h", alive));
        assert!(is_stale(&lock("h", 1, 60, false), now, "h", dead));
        assert!(
            !is_stale(&lock("other", 1, 60, false), now, "h", dead),
            "remote pid unknown"
        );
        assert!(
            !is_stale(&lock("h", 1, -600, false), now, "h", alive),
            "future lock"
        );
    }

    #[test]
    fn only_exclusive_locks_conflict_with_shared_ones() {
        assert!(!conflicts(false, &lock("h", 1, 0, false)));
        assert!(conflicts(false, &lock("h", 1, 0, true)));
        assert!(conflicts(true, &lock("h", 1, 0, false)));
    }

    #[test]
    fn this_process_is_alive_and_a_huge_pid_is_not() {
        assert!(pid_alive(i64::from(std::process::id())));
        assert!(!pid_alive(999_999_999));
        assert!(!pid_alive(-5));
    }
}
