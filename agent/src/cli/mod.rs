//! The `respawn-agent` command line: run the supervisor, check a configuration, or talk to the
//! running agent through its control socket.

mod check;
pub mod display;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use crate::config::{self, Config, Environment, LoadError};
use crate::config::{DEFAULT_CONFIG_PATH, DEFAULT_STOP_TIMEOUT};
use crate::control::{self, Reply, Request};
use crate::mqtt::remote::DEFAULT_LOG_LINES;
use crate::shell::KILL_GRACE;
use crate::StateDir;
use clap::{Parser, Subcommand};

/// Keeps programs alive: restarts them with backoff, detects crash loops, stops whole process
/// trees cleanly and records why every run ended.
#[derive(Debug, Parser)]
#[command(name = "respawn-agent", version, after_help = EXAMPLES)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "RESPAWN_CONFIG", hide_env_values = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,
}

const EXAMPLES: &str = "Examples:
  respawn-agent --config examples/agent.toml          supervise the example processes
  respawn-agent check /etc/respawn/agent.toml
  respawn-agent status
  respawn-agent restart doorbot
  respawn-agent logs doorbot -n 20
  respawn-agent reload                                after editing the file

Logging: RESPAWN_LOG=debug (a level, or target=level pairs such as
info,respawn_agent::mqtt=debug) sets the detail of the agent's log.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervise the configured processes (what runs without a subcommand).
    Run,
    /// Check the configuration and report every problem with its line; exit 1 if any.
    Check {
        /// The file to check, instead of --config's.
        file: Option<PathBuf>,
    },
    /// Show the processes of the running agent.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped process; it is no longer remembered as stopped.
    Start {
        #[arg(value_parser = process_name)]
        process: String,
        /// How long to wait for the outcome [default: 30s].
        #[arg(long, value_parser = respawn_common::time::parse_wait)]
        timeout: Option<Duration>,
    },
    /// Stop a process and keep it stopped, also across agent restarts.
    Stop {
        #[arg(value_parser = process_name)]
        process: String,
        /// How long to wait for the outcome [default: the process's stop_timeout + 30s].
        #[arg(long, value_parser = respawn_common::time::parse_wait)]
        timeout: Option<Duration>,
    },
    /// Stop a process if it runs, then start it again.
    Restart {
        #[arg(value_parser = process_name)]
        process: String,
        /// How long to wait for the outcome [default: the process's stop_timeout + 30s].
        #[arg(long, value_parser = respawn_common::time::parse_wait)]
        timeout: Option<Duration>,
    },
    /// Show the last lines a process wrote to stdout and stderr.
    Logs {
        #[arg(value_parser = process_name)]
        process: String,
        /// How many lines.
        #[arg(short = 'n', long, default_value_t = DEFAULT_LOG_LINES)]
        lines: usize,
    },
    /// Read the configuration file again (as SIGHUP does) and show what starts, restarts and
    /// stops; a file with mistakes is refused with each one, exit 2.
    Reload,
}

/// A process name as the configuration allows it: a longer or stranger one names no process.
fn process_name(text: &str) -> Result<String, String> {
    respawn_common::ids::validate_process_name(text)
        .map(|()| text.to_owned())
        .map_err(|e| format!("not a process name: it {e}"))
}

/// Runs the command line with the process's arguments.
pub fn main() -> ExitCode {
    // First, while the agent has no other thread.
    crate::shell::notify::take_manager_variables();
    // A mistake on the command line exits 1, as respawnctl's do: 2 is the agent's refusal.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            };
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        end_quietly_when_output_is_closed();
    }
    match command {
        Command::Run => run(&cli.config),
        Command::Check { file } => check::check(file.as_deref().unwrap_or(&cli.config)),
        Command::Status { json } => client(&cli.config, Request::Status, None, json),
        Command::Start { process, timeout } => {
            say_what_goes_on_at_interrupt("start");
            client(&cli.config, Request::Start { process }, timeout, false)
        }
        Command::Stop { process, timeout } => {
            say_what_goes_on_at_interrupt("stop");
            client(&cli.config, Request::Stop { process }, timeout, false)
        }
        Command::Restart { process, timeout } => {
            say_what_goes_on_at_interrupt("restart");
            client(&cli.config, Request::Restart { process }, timeout, false)
        }
        Command::Logs { process, lines } => {
            client(&cli.config, Request::Logs { process, lines }, None, false)
        }
        Command::Reload => {
            // The file meant, as the agent can find it whatever its working directory.
            let file = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
            // JSON carries only text: a name that is not is not checked.
            let file = file.to_str().is_some().then_some(file);
            let request = Request::Reload { file };
            client(&cli.config, request, None, false)
        }
    }
}

/// A command's output piped into `head` ends the command as it ends `cat`, by SIGPIPE, rather
/// than in a panic of `println!` (Rust ignores SIGPIPE). Only for the commands that print: the
/// agent itself must outlive a connection that breaks.
fn end_quietly_when_output_is_closed() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: the default disposition runs no code of ours, and no other thread exists yet.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Ctrl-C while a start, stop or restart is awaited ends the wait, not what the agent does:
/// said so, rather than ending without a word as if it were undone.
fn say_what_goes_on_at_interrupt(what: &str) {
    respawn_common::interrupt::say_at_interrupt(
        format!("respawn-agent: interrupted: the {what} goes on in the agent (`respawn-agent status` shows how it ends)"),
        format!("respawn-agent: interrupted before the {what} reached the agent: nothing was asked"),
    );
}

/// How long to wait for a reply: a stop may take the process's whole stop timeout.
fn default_timeout(config: &Config, request: &Request) -> Duration {
    let stop_timeout = |name: &str| {
        config
            .processes
            .iter()
            .find(|p| p.name == name)
            .map_or(DEFAULT_STOP_TIMEOUT, |p| p.stop_timeout)
    };
    match request {
        Request::Stop { process } | Request::Restart { process } => {
            stop_timeout(process) + ROOM_TO_START
        }
        Request::Start { .. } => ROOM_TO_START,
        Request::Status | Request::Logs { .. } | Request::Reload { .. } => Duration::from_secs(10),
    }
}

/// How long a start may take to be answered: spawning, and a readiness check.
const ROOM_TO_START: Duration = Duration::from_secs(30);

/// How long a command waits when the file's `stop_timeout`s cannot be read: the default
/// `stop_timeout`, the kill's grace, and room to start again.
const UNREADABLE_CONFIG_WAIT: Duration = DEFAULT_STOP_TIMEOUT
    .saturating_add(KILL_GRACE)
    .saturating_add(ROOM_TO_START);

fn load(path: &Path) -> Result<Config, ExitCode> {
    config::load(path, &Environment::current()).map_err(|e| not_loaded(path, &e))
}

fn not_loaded(path: &Path, e: &LoadError) -> ExitCode {
    eprintln!("respawn-agent: {e}");
    if matches!(e, LoadError::Read { .. }) && path == Path::new(DEFAULT_CONFIG_PATH) {
        eprintln!("hint: pass --config PATH or set RESPAWN_CONFIG; examples/agent.toml is a starting point");
    }
    ExitCode::FAILURE
}

fn run(path: &Path) -> ExitCode {
    crate::shell::process::keep_inherited_descriptors_from_children();
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log_guard = init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run(path.to_owned(), config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr through a background writer that drops lines rather than block: a stalled
/// terminal or journal must never stall supervision or the children's output pipes.
pub fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        // The channel is allocated up front: 4 096 lines cost 128 KiB, 16 384 cost half a MiB.
        .buffered_lines_limit(4 * 1024)
        .finish(std::io::stderr());
    // No bridge from `log`, which the MQTT client and TLS log through: with a logger, all their
    // log calls stay in the binary (57 KB); the agent's own log says what they do.
    // Levels by target (`debug`, `info,respawn::output=off`), not EnvFilter's span and field
    // filters: those need a regex engine, 0.38 MB of the binary, and the agent's resident memory
    // is about as large as its code.
    let wanted = std::env::var("RESPAWN_LOG")
        .ok()
        .filter(|w| !w.trim().is_empty());
    let parsed = wanted.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(targets)) => targets.clone(),
        _ => Targets::new().with_default(LevelFilter::INFO),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(writer)
        .with_ansi(ansi)
        .finish()
        .with(filter)
        .init();
    if let (Some(wanted), Some(Err(e))) = (wanted, parsed) {
        tracing::warn!("RESPAWN_LOG={wanted:?} is not a filter ({e}); write a level, or target=level pairs such as \"info,respawn_agent::mqtt=debug\"; logging at info");
    }
    guard
}

/// What a user other than root who asked in vain can do: the packaged agent runs as root, in
/// root's state directory (not the user's default), and its socket is root's only.
fn root_agent_hint(e: &control::ClientError, asked: &Path, is_root: bool) -> Option<String> {
    let control::ClientError::Connect { source, .. } = e else {
        return None;
    };
    if is_root {
        return None;
    }
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        return Some(
            "its socket is not yours: ask it with sudo, or as the account it runs as".into(),
        );
    }
    // Root's state directory is root's to read (0700): that it is there says enough.
    let roots = config::default_state_dir(true);
    let socket = StateDir::socket_path(&roots);
    (asked != socket && roots.is_dir()).then(|| {
        format!(
            "an agent running as root (the packaged one) answers at {}: ask it with sudo",
            socket.display()
        )
    })
}

fn client(path: &Path, request: Request, timeout: Option<Duration>, json: bool) -> ExitCode {
    let env = Environment::current();
    let (state_dir, wait) = match config::load(path, &env) {
        Ok(config) => (
            config.agent.state_dir.clone(),
            default_timeout(&config, &request),
        ),
        // A bad edit must not lock the operator out of the agent that still runs on the
        // configuration it read last: it is asked all the same.
        Err(e @ LoadError::Invalid { .. }) => match config::state_dir_anyway(path, &env) {
            // The agent's refusal of the file lists its problems.
            Some(state_dir) if matches!(request, Request::Reload { .. }) => {
                (state_dir, UNREADABLE_CONFIG_WAIT)
            }
            Some(state_dir) => {
                eprintln!("respawn-agent: warning: {e}");
                eprintln!("respawn-agent: the running agent keeps the configuration it read last; asking it anyway");
                (state_dir, UNREADABLE_CONFIG_WAIT)
            }
            None => return not_loaded(path, &e),
        },
        Err(e) => return not_loaded(path, &e),
    };
    let socket = StateDir::socket_path(&state_dir);
    let timeout = timeout.unwrap_or(wait);
    let reply = match control::request(&socket, &request, timeout) {
        Ok(reply) => reply,
        Err(e @ control::ClientError::Timeout(_)) => {
            eprintln!("respawn-agent: {e}");
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("respawn-agent: {e}");
            if let Some(hint) = root_agent_hint(&e, &socket, env.is_root) {
                eprintln!("respawn-agent: {hint}");
            }
            return ExitCode::FAILURE;
        }
    };
    match reply {
        Reply::Status {
            agent,
            containment,
            processes,
        } => {
            if json {
                match serde_json::to_string_pretty(&serde_json::json!({
                    "agent": agent,
                    "containment": containment,
                    "processes": processes,
                })) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("respawn-agent: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!(
                    "{}",
                    display::status_table(
                        &agent,
                        containment.as_deref(),
                        &processes,
                        SystemTime::now()
                    )
                );
            }
        }
        Reply::Logs {
            process,
            lines,
            dropped,
        } => {
            // `-n 0` asked for none: that there are none says nothing (as respawnctl says it).
            let asked = matches!(&request, Request::Logs { lines: n, .. } if *n > 0);
            if lines.is_empty() && asked {
                eprintln!("(no output from {process} yet)");
            }
            print!("{}", display::log_lines(&lines, dropped))
        }
        Reply::Done {
            process,
            outcome,
            warning,
        } => say(&format!("{}\n", outcome.sentence(&process)), warning),
        Reply::Reloaded {
            path,
            changes,
            operators,
            warning,
        } => say(
            &display::reloaded(&path, &changes, operators.as_deref()),
            warning,
        ),
        Reply::Error { message } => {
            eprintln!("respawn-agent: {message}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// An answer on stdout, and what it does not say on stderr.
fn say(text: &str, warning: Option<String>) {
    print!("{text}");
    if let Some(warning) = warning {
        eprintln!("respawn-agent: warning: {warning}");
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Found by a review: a user asking the packaged agent (root's) was told only that it
    /// could not be reached, and of an edit of state_dir.
    #[test]
    fn a_user_refused_the_socket_is_told_to_ask_with_sudo() {
        let denied = super::control::ClientError::Connect {
            path: "/var/lib/respawn/agent.sock".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        let socket = std::path::Path::new("/var/lib/respawn/agent.sock");
        let hint = super::root_agent_hint(&denied, socket, false);
        assert!(hint.is_some_and(|h| h.contains("sudo")));
        assert_eq!(super::root_agent_hint(&denied, socket, true), None);
    }
}
