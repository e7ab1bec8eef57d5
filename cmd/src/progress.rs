//! Progress output: JSON lines for machines (`--json`), a bar on a terminal for people, or
//! nothing.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use volbackup_populator::contract::{MoverLine, ProgressLine};
use volbackup_store::progress::Progress;

const UNKNOWN: u64 = u64::MAX;

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for Counters {
    fn set_total(&self, total: Option<u64>) {
        self.total
            .store(total.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }
    fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One JSON line per second on stdout.
    Json,
    /// A progress bar on stderr (only when stderr is a terminal).
    Bar,
    /// Nothing.
    Silent,
}

impl Mode {
    /// The mode for a command's flags.
    pub fn choose(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet || !std::io::stderr().is_terminal() {
            Mode::Silent
        } else {
            Mode::Bar
        }
    }
}

/// A running progress display. Hand [`Reporter::progress`] to the engine; call
/// [`Reporter::finish`] when the operation ends.
pub struct Reporter {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts showing progress of an operation called `what` ("backup", "restore").
    pub fn start(mode: Mode, what: &'static str) -> Reporter {
        let counters = Arc::new(Counters::default());
        counters.total.store(UNKNOWN, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match mode {
            Mode::Silent => None,
            Mode::Json => {
                let (c, s) = (counters.clone(), stop.clone());
                Some(std::thread::spawn(move || json_loop(&c, &s, what)))
            }
            Mode::Bar => {
                let (c, s) = (counters.clone(), stop.clone());
                Some(std::thread::spawn(move || bar_loop(&c, &s, what)))
            }
        };
        Reporter {
            counters,
            stop,
            thread,
        }
    }

    /// What the engine reports to.
    pub fn progress(&self) -> &dyn Progress {
        &*self.counters
    }

    /// Stops the display (the last JSON line or bar state is printed first).
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn total_of(c: &Counters) -> Option<u64> {
    match c.total.load(Ordering::Relaxed) {
        UNKNOWN => None,
        t => Some(t),
    }
}

/// Sleeps up to `d`, waking early when asked to stop or when `ready()` holds. Returns true
/// when stopping.
fn wait(stop: &AtomicBool, d: Duration, ready: impl Fn() -> bool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        if ready() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.load(Ordering::Relaxed)
}

fn json_loop(c: &Counters, stop: &AtomicBool, what: &str) {
    let start = Instant::now();
    // The first line goes out as soon as the size is known, so that whoever follows the log
    // can draw a bar at once; then one a second.
    let mut first = true;
    loop {
        let stopping = if first {
            first = false;
            wait(stop, Duration::from_millis(900), || total_of(c).is_some())
        } else {
            wait(stop, Duration::from_millis(900), || false)
        };
        let line = MoverLine::Progress(ProgressLine {
            operation: what.to_string(),
            bytes_done: c.done.load(Ordering::Relaxed),
            bytes_total: total_of(c),
            seconds: (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
        .to_line();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if stopping {
            return;
        }
    }
}

fn bar_loop(c: &Counters, stop: &AtomicBool, what: &str) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:8} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    loop {
        let stopping = wait(stop, Duration::from_millis(200), || false);
        if let Some(t) = total_of(c) {
            bar.set_length(t);
        }
        bar.set_position(c.done.load(Ordering::Relaxed));
        if stopping {
            bar.finish_and_clear();
            return;
        }
    }
}

/// Whether `NO_COLOR` (any non-empty value, no-color.org) asks for text without colours or
/// bold.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// The volume label of a bar: bold, unless `NO_COLOR` is set.
fn prefix() -> &'static str {
    if no_color() {
        "{prefix}"
    } else {
        "{prefix:.bold}"
    }
}

/// A bar for one volume (a backup's or a restore's), drawn to `target` or added to `multi`:
/// a spinner with the current phase until the size is known, then bytes, rate and ETA.
pub fn volume_bar(
    target: ProgressDrawTarget,
    multi: Option<&MultiProgress>,
    label: String,
) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target);
    let bar = match multi {
        Some(m) => m.add(bar),
        None => bar,
    };
    bar.set_style(
        ProgressStyle::with_template(&format!("{} {{spinner}} {{msg}} {{elapsed}}", prefix()))
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(label);
    bar.enable_steady_tick(Duration::from_millis(150));
    bar
}

/// Shows `done` of `total` bytes on a [`volume_bar`]; the first known total turns the spinner
/// into a bar.
pub fn show_bytes(bar: &ProgressBar, done: u64, total: Option<u64>) {
    if let Some(total) = total {
        if bar.length().is_none() {
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{} {{msg}} [{{bar:30}}] {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}}",
                    prefix()
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
        bar.set_length(total);
    }
    bar.set_position(done);
}
