//! Progress reporting. The engine calls these from worker threads; implementations must be
//! cheap (an atomic add) and thread-safe.

/// Receives progress of a long operation (bytes read or written).
pub trait Progress: Send + Sync {
    /// The total amount of work, if known (bytes of the volume or snapshot).
    fn set_total(&self, total: Option<u64>);
    /// `n` more bytes were processed.
    fn add_done(&self, n: u64);
    /// A human-readable status line (phase changes: "uploading index", ...).
    fn message(&self, _msg: &str) {}
}

/// Ignores all progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: Option<u64>) {}
    fn add_done(&self, _n: u64) {}
}

/// Counts progress in atomics; handy for tests and for callers that poll.
#[derive(Debug, Default)]
pub struct CountingProgress {
    /// Last total set (`u64::MAX` = unknown).
    pub total: std::sync::atomic::AtomicU64,
    /// Bytes done so far.
    pub done: std::sync::atomic::AtomicU64,
}

impl Progress for CountingProgress {
    fn set_total(&self, total: Option<u64>) {
        self.total.store(
            total.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    fn add_done(&self, n: u64) {
        self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}
