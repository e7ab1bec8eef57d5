//! kubectl-volbackup: the plugin binary and the in-cluster modes (mover backup/restore).
//!
//! `run` parses the command line, runs one command, prints an error as a single line on
//! stderr and turns the outcome into an exit code.

pub mod cli;
pub mod cluster;
pub mod commands;
pub mod flag_values;
pub mod progress;
pub mod repository;
pub mod schedule;

use anyhow::Context as _;
use clap::Parser;

use cli::{Cli, Command, MoverCommand, RepoCommand};

/// Runs the command line and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => match flag_values::refused_value(&err) {
            Some(line) => {
                eprintln!("error: {line}");
                return 1;
            }
            None => err.exit(),
        },
    };
    match dispatch(&cli) {
        Ok(()) => 0,
        Err(err) => {
            if is_broken_pipe(&err) {
                return 0;
            }
            eprintln!("error: {}", one_line(&err));
            if let Some(hint) = err.downcast_ref::<Hint>() {
                eprintln!("hint: {}", hint.0);
            }
            1
        }
    }
}

fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    // The process's one async runtime: the Kubernetes commands run their requests on it, the
    // repository commands only its signal handler (the engine, synchronous, runs on this
    // thread; its S3 client keeps a runtime of its own).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let repository_command = matches!(
        cli.command,
        Command::Repo(_)
            | Command::Snapshots(_)
            | Command::Forget(_)
            | Command::Prune(_)
            | Command::Mover(_)
    );
    if repository_command {
        // The Kubernetes commands handle Ctrl-C themselves (they clean up cluster objects).
        exit_cleanly_on_signals(&rt);
    }
    if !matches!(cli.command, Command::Populator(_)) {
        show_engine_warnings();
    }
    match &cli.command {
        Command::Repo(RepoCommand::Init(a)) => commands::repo::init(a, quiet),
        Command::Repo(RepoCommand::Check(a)) => commands::repo::check_cmd(a, quiet),
        Command::Repo(RepoCommand::Unlock(a)) => commands::repo::unlock(a, quiet),
        Command::Snapshots(a) => commands::snapshots::run(a),
        Command::Forget(a) => commands::forget::run(a, quiet),
        Command::Prune(a) => commands::repo::prune(a, quiet),
        Command::Mover(MoverCommand::Backup(a)) => commands::mover::backup(a, quiet),
        Command::Mover(MoverCommand::Restore(a)) => commands::mover::restore(a, quiet),
        Command::Create(a) => commands::create::run(a, quiet, &rt),
        Command::Cleanup(a) => commands::backups::cleanup(a, quiet, &rt),
        Command::List(a) => commands::backups::list(a, &rt),
        Command::Describe(a) => commands::backups::describe(a, &rt),
        Command::Delete(a) => commands::backups::delete(a, quiet, &rt),
        Command::Restore(a) => commands::restore::run(a, quiet, &rt),
        Command::Install(a) => commands::install::install(a, quiet, &rt),
        Command::Uninstall(a) => commands::install::uninstall(a, quiet, &rt),
        Command::Populator(a) => commands::populator::run(a, &rt),
        Command::Version(a) => commands::version::run(a, &rt),
        Command::Doctor(a) => commands::doctor::run(a, &rt),
        Command::Completion(a) => commands::completion::run(a),
    }
}

/// Prints the engine's warnings (an unreadable lock file passed over, a key file skipped) and
/// the plugin's own (credentials that will not reach a pod, a key copy that is not base64) on
/// stderr, as `warning: ...` lines beside our `error: ...` ones; `RUST_LOG` can ask for more.
/// The populator sets up its own logging.
fn show_engine_warnings() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("volbackup_store=warn,kubectl_volbackup=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .event_format(PlainLine)
        .with_env_filter(filter)
        .try_init();
}

/// One line per event: `warning: message`, no time, target or colour.
struct PlainLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        write!(writer, "{level}: ")?;
        let mut line = EventLine::default();
        event.record(&mut line);
        write!(writer, "{}", line.text)?;
        // An engine warning names the fix by kind; the command that helps is ours to name.
        if let Some(hint) = line.fix.as_deref().and_then(repository::warning_hint) {
            write!(writer, " ({hint})")?;
        }
        writeln!(writer)
    }
}

/// An event's message and fields as one line (`name=value` after the message), and its `fix`
/// field apart.
#[derive(Default)]
struct EventLine {
    text: String,
    fix: Option<String>,
}

impl tracing::field::Visit for EventLine {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "fix" => self.fix = Some(value.to_string()),
            "message" => self.text.push_str(value),
            name => self.text.push_str(&format!(" {name}={value:?}")),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.text.push_str(&format!("{value:?}")),
            name => self.text.push_str(&format!(" {name}={value:?}")),
        }
    }
}

/// On SIGINT or SIGTERM: remove the repository locks this process holds, say so, and exit
/// (130 / 143, as a shell reports a process stopped by those signals). Everything a backup had
/// written by then is valid on its own; the next backup picks its packs up (see
/// `volbackup_store::resume`).
fn exit_cleanly_on_signals(rt: &tokio::runtime::Runtime) {
    // The handlers are installed before the command starts: a signal that comes earlier ends
    // the process by its default action, with nothing to release.
    let _guard = rt.enter();
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without the handlers the default signal action still ends the process.
        return;
    };
    rt.spawn(async move {
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        volbackup_store::lock::release_held_locks();
        eprintln!("error: interrupted; repository locks removed, nothing half-written is used");
        std::process::exit(code);
    });
}

/// A fix to suggest, attached to an error with `.context(Hint(...))` below the message that
/// says what went wrong: `run` prints it as a `hint:` line under the `error:` line. Its own
/// text stays out of the error line.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl std::error::Error for Hint {}

/// The error chain on one line, each cause once (a cause whose text the outer message already
/// contains is not repeated).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    let engine = err
        .chain()
        .find_map(|c| c.downcast_ref::<volbackup_store::Error>());
    if let Some(hint) = engine.and_then(repository::hint) {
        out.push_str(&format!(" ({hint})"));
    }
    out.replace('\n', " ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
