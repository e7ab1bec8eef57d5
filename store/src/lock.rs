//! Repository locks (`locks/<id>`), compatible with restic's.
//!
//! Backups and restores take a shared lock; forget and prune take an exclusive one. A lock is
//! refreshed (new file written, old one removed) every [`REFRESH_INTERVAL`] by a background
//! thread and removed when the guard is dropped. A lock is stale when it is older than
//! [`STALE_AFTER`], or when it was taken on this host by a process that no longer exists.
//! A holder that could not refresh its lock in time, or whose lock file vanished, has lost
//! it: [`LockGuard::check`] then fails and writing operations stop (as restic ≥ 0.16 does).
//! Others judge a lock's age by the wall-clock time written in its file, so its holder does
//! too: a machine that was suspended finds its monotonic clock stood still meanwhile, and a
//! lock judged by that clock alone would seem fresh to it while others already pass over it.
//! Files in `locks/` that do not verify or decrypt are passed over with a warning; only
//! `repo unlock --remove-all` ([`remove_all_locks`]) removes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
/// Shortens [`STALE_AFTER`] to this many seconds (at least 6; refreshes come every sixth of
/// it). For tests of frozen and lost locks, which cannot wait half an hour; every process that
/// shares the repository must see the same value. Only test builds honour it
/// ([`STALE_AFTER_ENV_HONOURED`]): a value left in the environment of a real process would
/// let a prune pass over the locks of running backups and remove their packs.
pub const STALE_AFTER_ENV: &str = "VOLBACKUP_LOCK_STALE_AFTER";

/// Whether this build honours [`STALE_AFTER_ENV`]: only with the `test-knobs` feature, which
/// nothing but the workspace's dev-dependencies turns on (so `cargo test` builds have it, and
/// `cargo build`, release or not, does not). Other builds ignore the variable with a warning.
pub const STALE_AFTER_ENV_HONOURED: bool = cfg!(feature = "test-knobs");

/// Lock timing in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a held lock is refreshed.
    pub refresh: Duration,
    /// A lock older than this is stale: others may pass over it.
    pub stale: Duration,
}

impl Timing {
    /// A holder whose last refresh is this old stops working: one refresh interval before
    /// others may call its lock stale.
    pub fn give_up_after(&self) -> Duration {
        self.stale.saturating_sub(self.refresh)
    }
}

/// The lock timing: [`REFRESH_INTERVAL`] and [`STALE_AFTER`], unless this is a test build
/// and [`STALE_AFTER_ENV`] is set.
pub fn timing() -> Timing {
    static TIMING: std::sync::OnceLock<Timing> = std::sync::OnceLock::new();
    *TIMING.get_or_init(|| {
        let value = std::env::var(STALE_AFTER_ENV).ok();
        let (timing, warning) = timing_from(value.as_deref(), STALE_AFTER_ENV_HONOURED);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        timing
    })
}

/// The lock timing for a value of [`STALE_AFTER_ENV`], in a build that honours it or not,
/// and a warning when the value is not used.
fn timing_from(value: Option<&str>, honoured: bool) -> (Timing, Option<String>) {
    let normal = Timing {
        refresh: REFRESH_INTERVAL,
        stale: STALE_AFTER,
    };
    let Some(value) = value else {
        return (normal, None);
    };
    if !honoured {
        return (
            normal,
            Some(format!(
                "ignoring {STALE_AFTER_ENV}={value}: only test builds shorten the age at which \
                 a lock turns stale ({}s here); unset it",
                STALE_AFTER.as_secs()
            )),
        );
    }
    match value.trim().parse::<u64>().ok().filter(|&s| s >= 6) {
        Some(s) => (
            Timing {
                refresh: Duration::from_secs(s) / 6,
                stale: Duration::from_secs(s),
            },
            None,
        ),
        None => (
            normal,
            Some(format!(
                "ignoring {STALE_AFTER_ENV}={value}: not a number of seconds of at least 6"
            )),
        ),
    }
}

/// How far [`advance_clocks`] has moved this process's wall clock for locks, in milliseconds.
static WALL_SHIFT_MS: AtomicU64 = AtomicU64::new(0);
/// How far [`advance_clocks`] has moved this process's monotonic clock for locks.
static MONOTONIC_SHIFT_MS: AtomicU64 = AtomicU64::new(0);

/// The wall-clock time lock files are written with and judged by.
fn wall_now() -> DateTime<FixedOffset> {
    let shift = WALL_SHIFT_MS.load(Ordering::Relaxed);
    format::now() + chrono::Duration::milliseconds(i64::try_from(shift).unwrap_or(i64::MAX))
}

/// The monotonic clock a holder measures its own lock with, beside the wall clock.
fn monotonic_now() -> Instant {
    Instant::now() + Duration::from_millis(MONOTONIC_SHIFT_MS.load(Ordering::Relaxed))
}

/// Moves the clocks this process judges locks by forward: the wall clock by `wall`, the
/// monotonic clock by `monotonic`. A suspend of the machine moves only the wall clock; a
/// process that stalls (an upload that hangs) sees both move. For tests of lost locks, which
/// cannot wait half an hour; every lock of the process sees the new time.
#[cfg(feature = "test-knobs")]
pub fn advance_clocks(wall: Duration, monotonic: Duration) {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    WALL_SHIFT_MS.fetch_add(ms(wall), Ordering::Relaxed);
    MONOTONIC_SHIFT_MS.fetch_add(ms(monotonic), Ordering::Relaxed);
}

/// Takes repository locks.
pub struct Lock;

impl Lock {
    /// A shared lock: fails if a non-stale exclusive lock exists (after waiting as long as the
    /// repository's [`crate::repo::LockWait`] allows).
    pub fn shared(repo: &Repository) -> Result<LockGuard> {
        LockGuard::take(repo, false)
    }

    /// An exclusive lock: fails if any other non-stale lock exists (after waiting as long as
    /// the repository's [`crate::repo::LockWait`] allows).
    pub fn exclusive(repo: &Repository) -> Result<LockGuard> {
        LockGuard::take(repo, true)
    }

    /// A shared lock, and what `then` returns: `then` runs once the lock file is written, at
    /// the same time as the look for conflicting locks, so that work that must happen under
    /// the lock (such as listing the index files) costs no round trip of its own. When the
    /// lock is withdrawn and taken again, `then` runs again and its last result counts.
    pub fn shared_and<T: Send>(
        repo: &Repository,
        then: impl Fn() -> Result<T> + Sync,
    ) -> Result<(LockGuard, T)> {
        LockGuard::take_and(repo, false, &then)
    }
}

/// Every lock this process holds, so that a process that is told to stop (SIGTERM, Ctrl-C)
/// can remove its lock files before it exits: restic does not pass over a stale lock when it
/// locks, so a lock left behind blocks `restic check` until someone runs `restic unlock`.
static HELD: Mutex<Vec<HeldLock>> = Mutex::new(Vec::new());

/// A held lock's token, repository and state.
type HeldLock = (u64, Repository, Arc<Mutex<Held>>);
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The state of a held lock, shared with its refresh thread.
#[derive(Debug)]
struct Held {
    /// The current lock file.
    id: Id,
    /// The time written into the current lock file: what others judge its age by.
    written: DateTime<FixedOffset>,
    /// When the current lock file was written, by the monotonic clock.
    refreshed: Instant,
    /// Why the lock is lost, once it is.
    lost: Option<String>,
}

impl Held {
    /// The age of the current lock file: by the wall clock, as others judge it, or by the
    /// monotonic clock when that says more (the wall clock was set back).
    fn age(&self) -> Duration {
        let wall = (wall_now() - self.written).to_std().unwrap_or_default();
        wall.max(monotonic_now().saturating_duration_since(self.refreshed))
    }
}

fn held(state: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the lock files of every lock this process holds, without waiting for their guards.
/// For a signal handler that is about to exit the process; best effort.
pub fn release_held_locks() {
    let all = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for (_, repo, state) in all.iter() {
        let id = held(state).id;
        let _ = repo.backend().remove(FileType::Lock, &id.to_hex());
    }
}

/// A held lock. Dropping it stops the refresh thread and removes the lock file.
///
/// A lock can be lost: when refreshing fails until the lock is about to turn stale, when the
/// process was stopped (SIGSTOP, a frozen node) past that point, or when someone removes the
/// lock file. Others may then prune data this process wrote or relies on, so an operation
/// that writes calls [`LockGuard::check`] before it writes anything that refers to earlier
/// data (an index, a snapshot, a deletion) and stops with [`Error::LockLost`].
pub struct LockGuard {
    token: u64,
    repo: Repository,
    state: Arc<Mutex<Held>>,
    exclusive: bool,
    /// The refresh thread and what stops it, until the lock is released.
    refreshing: Mutex<Option<(Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("id", &held(&self.state).id)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

impl LockGuard {
    fn take(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
        Self::take_and(repo, exclusive, &|| Ok(())).map(|(guard, ())| guard)
    }

    fn take_and<T: Send>(
        repo: &Repository,
        exclusive: bool,
        then: &(dyn Fn() -> Result<T> + Sync),
    ) -> Result<(LockGuard, T)> {
        let wait = repo.lock_wait();
        let started = Instant::now();
        let mut next_report = started;
        let mut pause = Duration::from_millis(500);
        let (id, written, got) = loop {
            match try_take(repo, exclusive, then) {
                Ok(taken) => break taken,
                Err(locked @ Error::Locked { .. }) if started.elapsed() < wait.max => {
                    if Instant::now() >= next_report {
                        let line = format!(
                            "waiting up to {}s for the lock: {locked}",
                            wait.max.as_secs()
                        );
                        match &wait.on_wait {
                            Some(report) => report(&line),
                            None => tracing::warn!("{line}"),
                        }
                        next_report = Instant::now()
                            + if wait.report_every.is_zero() {
                                Duration::from_secs(60)
                            } else {
                                wait.report_every
                            };
                    }
                    // Up to a quarter more at random, so that two processes that withdrew
                    // their locks from each other do not meet again at every try.
                    let left = wait.max.saturating_sub(started.elapsed());
                    std::thread::sleep((pause + jitter(pause / 4)).min(left));
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(Error::Locked {
                    location,
                    holder,
                    exclusive,
                    since,
                    lock,
                    waited: _,
                }) if !wait.max.is_zero() => {
                    return Err(Error::Locked {
                        location,
                        holder,
                        exclusive,
                        since,
                        lock,
                        waited: Some(wait.max),
                    });
                }
                Err(e) => return Err(e),
            }
        };
        let state = Arc::new(Mutex::new(Held {
            id,
            written,
            refreshed: monotonic_now(),
            lost: None,
        }));
        let (stop, stop_rx) = bounded::<()>(1);
        let thread_repo = repo.clone();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || refresh_loop(&thread_repo, &thread_state, exclusive, &stop_rx))
            .map_err(|e| Error::Invalid(format!("cannot start lock refresh thread: {e}")))?;
        let token = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((token, repo.clone(), state.clone()));
        let guard = LockGuard {
            token,
            repo: repo.clone(),
            state,
            exclusive,
            refreshing: Mutex::new(Some((stop, thread))),
        };
        Ok((guard, got))
    }

    /// Removes the lock file now, before the guard is dropped: for a restore whose last pack
    /// has been read while blobs are still being decoded and written. Nothing may be read from
    /// or written to the repository under this lock afterwards; [`LockGuard::check`] still
    /// passes. Releasing twice does nothing.
    pub fn release(&self) {
        let refreshing = self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((stop, thread)) = refreshing else {
            return;
        };
        drop(stop);
        let _ = thread.join();
        let id = held(&self.state).id;
        let _ = self.repo.backend().remove(FileType::Lock, &id.to_hex());
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _, _)| *t != self.token);
    }

    /// The id of the lock file currently held.
    pub fn id(&self) -> Id {
        held(&self.state).id
    }

    /// Whether the lock is exclusive.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Fails with [`Error::LockLost`] once the lock is lost, or when its last refresh is so old
    /// that others may soon call it stale (the refresh thread may not have run yet: the
    /// process was stopped, or the machine suspended). The age is the one others see: the
    /// wall-clock time since the time written in the lock file. Cheap: call it before every
    /// write that refers to earlier data.
    pub fn check(&self) -> Result<()> {
        let mut state = held(&self.state);
        if state.lost.is_none() {
            let age = state.age();
            if age >= timing().give_up_after() {
                state.lost = Some(too_old(&self.repo, age));
            }
        }
        match &state.lost {
            Some(why) => Err(Error::LockLost(why.clone())),
            None => Ok(()),
        }
    }
}

fn too_old(repo: &Repository, since: Duration) -> String {
    format!(
        "lost the lock on {}: it was last refreshed {}s ago and others may call it stale after \
         {}s (was the process stopped, or the repository unreachable?); stopped before writing \
         anything that refers to data a prune may have removed: run it again",
        repo.location(),
        since.as_secs(),
        timing().stale.as_secs()
    )
}

/// Writes a fresh lock file every refresh interval and removes the previous one, until told
/// to stop or the lock is lost. A failed refresh is retried sooner.
fn refresh_loop(
    repo: &Repository,
    state: &Mutex<Held>,
    exclusive: bool,
    stop: &crossbeam_channel::Receiver<()>,
) {
    let t = timing();
    let retry = (t.refresh / 10).max(Duration::from_secs(1));
    let mut pause = t.refresh;
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stop.recv_timeout(pause) {
        let (old, since) = {
            let s = held(state);
            if s.lost.is_some() {
                return;
            }
            (s.id, s.age())
        };
        if since >= t.give_up_after() {
            held(state).lost = Some(too_old(repo, since));
            return;
        }
        if let Err(Error::NotFound { .. }) = repo.backend().stat(FileType::Lock, &old.to_hex()) {
            held(state).lost = Some(format!(
                "lost the lock on {}: its lock file {} was removed by someone else (`repo unlock \
                 --remove-all`?); stopped before writing anything that refers to data a prune \
                 may have removed: run it again",
                repo.location(),
                old.short()
            ));
            return;
        }
        let attempt = monotonic_now();
        let file = new_lock_file(exclusive);
        match repo.save_unpacked(FileType::Lock, &file) {
            Ok(new_id) => {
                let _ = repo.backend().remove(FileType::Lock, &old.to_hex());
                let mut s = held(state);
                s.id = new_id;
                s.written = file.time;
                s.refreshed = attempt;
                pause = t.refresh;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot refresh the lock on {} ({e}); trying again in {}s",
                    repo.location(),
                    retry.as_secs()
                );
                pause = retry;
            }
        }
    }
}

/// Writes a lock file, then looks for conflicting locks and withdraws ours when one exists.
///
/// Writing first is as safe as checking before and after writing: of two processes that
/// conflict, the one that lists later sees the other's file, so at least one backs off. For a
/// shared lock (backups, restores) it takes two round trips (write, list) instead of four,
/// which at tens of milliseconds a request is most of what opening a restore costs; a shared
/// lock file withdrawn a moment later can only have met an exclusive taker that an exclusive
/// lock already refuses. An exclusive lock (prune, forget) looks for others first as well:
/// its file, even for a moment, would make every other process that looks then give up
/// (restic, without `--retry-lock`, for good).
///
/// `then` runs on a thread of its own beside the look for conflicts, once the file is written.
/// Returns the lock file's id and the time written in it.
fn try_take<T: Send>(
    repo: &Repository,
    exclusive: bool,
    then: &(dyn Fn() -> Result<T> + Sync),
) -> Result<(Id, DateTime<FixedOffset>, T)> {
    if exclusive {
        check_conflicts(repo, exclusive, None)?;
    }
    let file = new_lock_file(exclusive);
    let id = repo.save_unpacked(FileType::Lock, &file)?;
    let (conflicts, got) = std::thread::scope(|s| {
        let got = s.spawn(then);
        let conflicts = check_conflicts(repo, exclusive, Some(&id));
        (conflicts, got.join().expect("work under a new lock"))
    });
    match conflicts.and(got) {
        Ok(got) => Ok((id, file.time, got)),
        Err(e) => {
            let _ = repo.backend().remove(FileType::Lock, &id.to_hex());
            Err(e)
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// A random duration below `max`. Random, not taken from the clock: takers that withdrew from
/// each other at the same moment read nearly the same clock, and slept alike into the next
/// meeting, again and again (seen with four threads of one process waiting for an exclusive
/// lock: two gave up after a minute).
fn jitter(max: Duration) -> Duration {
    let max = max.as_nanos().max(1) as u64;
    Duration::from_nanos(rand::random::<u64>() % max)
}

fn new_lock_file(exclusive: bool) -> LockFile {
    LockFile {
        time: wall_now(),
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
    list_locks_except(repo, None)
}

/// [`list_locks`] without reading the lock file `own` (a lock of this process).
fn list_locks_except(repo: &Repository, own: Option<&Id>) -> Result<Vec<(Id, LockFile)>> {
    let mut out = Vec::new();
    for id in repo.list_ids(FileType::Lock)? {
        if Some(&id) == own {
            continue;
        }
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
                    fix = "unlock",
                    "{}: ignoring an unreadable lock file ({e}): delete it when nothing uses the \
                     repository",
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
    let now = wall_now();
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
    if age.to_std().map(|a| a > timing().stale).unwrap_or(false) {
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
    let now = wall_now();
    for (id, l) in list_locks_except(repo, own)? {
        if !conflicts(exclusive, &l) || is_stale(&l, now, &host, pid_alive) {
            continue;
        }
        return Err(Error::Locked {
            location: repo.location(),
            holder: format!("{}@{} (pid {})", l.username, l.hostname, l.pid),
            exclusive: l.exclusive,
            since: l.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            lock: id.short(),
            waited: None,
        });
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
    fn only_a_test_build_shortens_the_stale_age_and_other_builds_say_they_ignore_it() {
        let normal = Timing {
            refresh: REFRESH_INTERVAL,
            stale: STALE_AFTER,
        };
        for honoured in [false, true] {
            assert_eq!(timing_from(None, honoured), (normal, None));
        }
        // A release build: the value is ignored, with a line that says so and what to do.
        let (timing, warning) = timing_from(Some("6"), false);
        assert_eq!(timing, normal);
        let warning = warning.expect("a warning");
        assert!(
            warning.contains(STALE_AFTER_ENV) && warning.contains("unset it"),
            "{warning}"
        );
        // A test build.
        let short = Timing {
            refresh: Duration::from_secs(1),
            stale: Duration::from_secs(6),
        };
        assert_eq!(timing_from(Some(" 6 "), true), (short, None));
        for bad in ["5", "soon", "-60"] {
            let (timing, warning) = timing_from(Some(bad), true);
            assert_eq!(timing, normal, "{bad}");
            assert!(warning.is_some_and(|w| w.contains(bad)), "{bad}");
        }
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
