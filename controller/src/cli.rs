//! The `respawnctl` command line: its arguments, what they mean and how they are checked.
//! What each command does is in `crate::cmd`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::fleet::Target;
use respawn_common::messages::MAX_LOG_LINES;

/// Watch and command a fleet of respawn agents through their MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "respawnctl", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The broker, e.g. mqtt://192.168.1.10:1883 [env: RESPAWN_BROKER; default: mqtt://127.0.0.1:1883]
    #[arg(long, global = true)]
    pub broker: Option<String>,
    /// The broker username [env: RESPAWN_USERNAME]
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// A file holding the broker password [env: RESPAWN_PASSWORD_FILE, or the password itself in RESPAWN_PASSWORD]
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// The topic prefix the agents use [default: respawn/v1]
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// respawnctl's configuration file, given before the command [default: ~/.config/respawn/respawnctl.toml]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The operator key that signs commands (from `respawnctl keygen`) [env: RESPAWN_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// For mqtts://: the CA certificate to trust (PEM) instead of the system's.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// For mutual TLS: this client's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// For mutual TLS: this client's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Debug tracing to stderr (-vv for the MQTT client too).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  respawnctl --broker mqtt://192.168.1.10 status
  respawnctl status 'door-*' --json
  respawnctl events
  respawnctl restart door-pi/doorbot
  respawnctl stop '*/scraper'
  respawnctl logs door-pi/doorbot -n 20
  respawnctl config apply garage-pi garage.toml
  respawnctl keygen --out ~/.config/respawn/alice.key
  respawnctl --key ~/.config/respawn/alice.key restart door-pi/doorbot
  respawnctl alerts --config /etc/respawn/alerts.toml

Exit codes: 0 success, 1 usage or connection error, 2 a command failed or was rejected (or a
target matched nothing), 3 a command timed out.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every agent and its processes, from the broker's retained state.
    #[command(
        after_help = "Examples:\n  respawnctl status\n  respawnctl status 'door-*'\n  respawnctl status '*/doorbot' --json"
    )]
    Status {
        /// AGENT or AGENT/PROCESS, with * and ? as wildcards.
        #[arg(value_parser = Target::parse)]
        pattern: Option<Target>,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live tail of lifecycle events (Ctrl-C to stop).
    #[command(
        after_help = "Examples:\n  respawnctl events\n  respawnctl events 'door-pi/*'\n  respawnctl events --json | jq ."
    )]
    Events {
        /// AGENT or AGENT/PROCESS, with * and ? as wildcards.
        #[arg(value_parser = Target::parse)]
        pattern: Option<Target>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Restart processes: stop them if they run, then start them.
    #[command(
        after_help = "Examples:\n  respawnctl restart door-pi/doorbot\n  respawnctl restart '*/worker' --timeout 30s\n  respawnctl restart door-pi        (all of its processes)"
    )]
    Restart(Act),
    /// Stop processes; they stay stopped, also across agent restarts, until started.
    #[command(
        after_help = "Examples:\n  respawnctl stop door-pi/doorbot\n  respawnctl stop 'garage-*/scraper'"
    )]
    Stop(Act),
    /// Start stopped processes.
    #[command(after_help = "Examples:\n  respawnctl start door-pi/doorbot")]
    Start(Act),
    /// The last lines a process wrote to stdout and stderr; with -f, then every new line as it
    /// is written, until Ctrl-C.
    #[command(
        after_help = "Examples:\n  respawnctl logs door-pi/doorbot\n  respawnctl logs door-pi/doorbot -n 200\n  respawnctl logs -f door-pi/doorbot\n  respawnctl logs -f door-pi/doorbot --json | jq .text"
    )]
    Logs {
        /// AGENT/PROCESS naming exactly one process.
        #[arg(value_parser = one_process)]
        target: Target,
        /// How many lines (at most 1000) [default: 50, or 10 with -f]
        #[arg(short = 'n', long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_LOG_LINES as u64))]
        lines: Option<usize>,
        /// Go on printing new lines as the process writes them, until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// With -f: one JSON object per line.
        #[arg(long, requires = "follow")]
        json: bool,
        /// How long to wait for the agent.
        #[arg(long, default_value = "10s", value_parser = respawn_common::time::parse_wait)]
        timeout: Duration,
    },
    /// An agent's remote processes (the `remote.toml` in its state directory): read, compare,
    /// change and roll back with signed commands. The agent must allow it (`[agent]
    /// remote_config = true`) and the key must be allowed to `configure`.
    #[command(
        subcommand,
        after_help = "Examples:\n  respawnctl config get garage-pi > garage.toml\n  respawnctl config diff garage-pi garage.toml\n  respawnctl config apply garage-pi garage.toml\n  respawnctl config rollback garage-pi"
    )]
    Config(ConfigAction),
    /// Make an operator key pair: the private key (mode 0600) in FILE, the public key in
    /// FILE.pub and on stdout, for an agent's [[operator]] public_key.
    #[command(
        after_help = "Examples:\n  respawnctl keygen --out alice.key\n  respawnctl keygen --out ~/.config/respawn/ops.key --name ops-team"
    )]
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The operator's name, as agents will know it [default: the file name without extension].
        #[arg(long)]
        name: Option<String>,
    },
    /// Crash alerts to chat — Slack, Discord, Telegram, Matrix, ntfy, webhooks — until stopped.
    #[command(
        after_help = "Examples:\n  respawnctl --broker mqtt://192.168.1.10 alerts --config alerts.toml\n  respawnctl alerts check --config alerts.toml\n  respawnctl alerts test --config alerts.toml\n\nSee docs/alerts.md for the file, the rules and a systemd unit."
    )]
    Alerts {
        /// The alerts file: targets, and how alerts behave.
        #[arg(long = "config", value_name = "FILE", global = true)]
        alerts_config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<AlertsAction>,
    },
    /// The fleet in a browser, live, with restart/stop/start buttons signed by the hub's key,
    /// and /metrics for Prometheus (see docs/dashboard.md).
    #[command(
        after_help = "Examples:\n  respawnctl --key hub.key serve                 # http://127.0.0.1:8080/, no login\n  respawnctl serve --config /etc/respawn/serve.toml\n  respawnctl serve passwd alice >> /etc/respawn/serve.toml"
    )]
    Serve {
        /// serve.toml: where to listen, users, the signing key, the metrics token.
        #[arg(long = "config", value_name = "FILE", global = true)]
        serve_config: Option<PathBuf>,
        /// Where to listen, e.g. 0.0.0.0:8080 (needs users) [default: 127.0.0.1:8080]
        #[arg(long)]
        listen: Option<String>,
        #[command(subcommand)]
        action: Option<ServeAction>,
    },
    /// Shell completions, e.g. `respawnctl completions bash > /etc/bash_completion.d/respawnctl`.
    #[command(
        after_help = "Examples:\n  respawnctl completions bash\n  respawnctl completions zsh > ~/.zfunc/_respawnctl"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Print a [[user]] for serve.toml, with the password (asked for, not echoed; or one line
    /// on stdin) hashed with argon2.
    Passwd {
        /// The user's name: also the requester the agents' audit names.
        name: String,
        /// May look, not act.
        #[arg(long)]
        viewer: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// Send a test message to every target and say which took it (exit 0 when all did).
    Test,
    /// Check the file and say what each target is sent, without connecting or sending
    /// (exit 0 when it is valid).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the agent's remote configuration (stdout, with its sha256 in a first comment
    /// line that apply checks) and every process it runs, local and remote (stderr).
    Get {
        #[command(flatten)]
        agent: ConfigTarget,
        /// The whole reply as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show how FILE differs from the agent's remote configuration, and what applying it
    /// would start, restart and stop (the agent checks it and changes nothing).
    Diff {
        #[command(flatten)]
        agent: ConfigTarget,
        /// The remote configuration: [[process]] tables, as `config get` writes them.
        file: PathBuf,
    },
    /// Make FILE the agent's remote configuration: shows the diff, asks (without a terminal
    /// to ask on, only --yes makes the change), then added processes start, removed ones
    /// stop, changed ones restart and the others are not touched.
    Apply {
        #[command(flatten)]
        agent: ConfigTarget,
        /// The remote configuration: [[process]] tables, as `config get` writes them.
        file: PathBuf,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Have the agent check FILE and say what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Go back to the remote configuration before the last apply (or rollback): shows what
    /// that does and asks, like apply.
    Rollback {
        #[command(flatten)]
        agent: ConfigTarget,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Have the agent say what going back would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigTarget {
    /// The agent's id.
    #[arg(value_name = "AGENT", value_parser = one_agent)]
    pub id: String,
    /// How long to wait for each answer of the agent.
    #[arg(long, default_value = "10s", value_parser = respawn_common::time::parse_wait)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct Act {
    /// AGENT/PROCESS (either part may use * and ?), or AGENT for all of its processes.
    #[arg(required = true, value_parser = Target::parse)]
    pub targets: Vec<Target>,
    /// How long to wait for the outcomes.
    #[arg(long, default_value = "10s", value_parser = respawn_common::time::parse_wait)]
    pub timeout: Duration,
}

impl ConfigAction {
    /// The command as the operator typed it, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Get { .. } => "config get",
            Self::Diff { .. } => "config diff",
            Self::Apply { .. } => "config apply",
            Self::Rollback { .. } => "config rollback",
        }
    }

    /// Whether the command may change the agent's remote configuration.
    pub fn changes(&self) -> bool {
        matches!(self, Self::Apply { .. } | Self::Rollback { .. })
    }
}

/// A target that names a process: logs are one process's.
fn one_process(text: &str) -> Result<Target, String> {
    let target = Target::parse(text)?;
    match target.process {
        Some(_) => Ok(target),
        None => Err(format!("name one process: {target}/PROCESS")),
    }
}

/// One agent's id: a configuration is one agent's, so a pattern is no target here.
fn one_agent(id: &str) -> Result<String, String> {
    if id.contains(['*', '?']) {
        return Err("a configuration is one agent's: name its id, not a pattern".into());
    }
    respawn_common::ids::validate_agent_id(id)
        .map(|()| id.to_owned())
        .map_err(|e| format!("not an agent id: it {e}"))
}

const MISPLACED_CONFIG: &str = "error: --config names respawnctl's own configuration and goes before the command (respawnctl --config FILE COMMAND ...); `config diff` and `config apply` take the remote configuration as FILE after the agent, without --config";

/// Whether `error` is a `--config` after a command that has none of its own: clap's tip
/// (`use '-- --config'`) would send the user the wrong way.
fn misplaced_config(error: &clap::Error) -> bool {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let named = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.split('=').next() == Some("--config"),
        _ => false,
    };
    error.kind() == ErrorKind::UnknownArgument && named
}

/// Runs the command line with the process's arguments. A usage error exits 1, as the other
/// errors that keep a command from running do (exit codes 2 and 3 say how commands fared).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if misplaced_config(&e) => {
            eprintln!("{MISPLACED_CONFIG}\n\nFor more information, try '--help'.");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            let _ = e.print();
            return match e.use_stderr() {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            };
        }
    };
    if let Command::Completions { shell } = cli.command {
        // Into memory first: clap_complete panics when its writer fails (`| head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "respawnctl", &mut script);
        crate::cmd::print(&String::from_utf8_lossy(&script));
        return ExitCode::SUCCESS;
    }
    crate::cmd::run(cli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "respawnctl",
            "--config",
            "ctl.toml",
            "alerts",
            "test",
            "--config",
            "alerts.toml",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("ctl.toml")));
        assert!(matches!(
            cli.command,
            Command::Alerts { alerts_config: Some(ref p), action: Some(AlertsAction::Test) }
                if p == &PathBuf::from("alerts.toml")
        ));
    }

    #[test]
    fn a_config_after_a_command_without_one_is_told_where_it_goes() {
        let misplaced = |args: &[&str]| {
            let error = Cli::try_parse_from(args).map(|_| ()).unwrap_err();
            misplaced_config(&error)
        };
        assert!(misplaced(&["respawnctl", "status", "--config", "ctl.toml"]));
        assert!(misplaced(&["respawnctl", "status", "--config=ctl.toml"]));
        assert!(!misplaced(&["respawnctl", "status", "--colour"]));
        assert!(!misplaced(&["respawnctl", "--config"]));
        // Where a remote configuration is meant, what is said does not lead to reading it as
        // respawnctl's own.
        let apply = [
            "respawnctl",
            "config",
            "apply",
            "garage-pi",
            "--config",
            "garage.toml",
        ];
        assert!(misplaced(&apply));
        assert!(MISPLACED_CONFIG.contains("`config apply` take the remote configuration as FILE"));
    }

    #[test]
    fn logs_are_asked_for_no_more_lines_than_an_agent_gives() {
        let lines = |n: &str| {
            let cli = Cli::try_parse_from(["respawnctl", "logs", "door-pi/doorbot", "-n", n])?;
            Ok::<_, clap::Error>(match cli.command {
                Command::Logs { lines, .. } => lines,
                _ => None,
            })
        };
        assert_eq!(lines("1000").unwrap(), Some(MAX_LOG_LINES));
        assert_eq!(lines("0").unwrap(), Some(0));
        let refused = lines("1001").unwrap_err().to_string();
        assert!(refused.contains("1001 is not in 0..=1000"), "{refused}");
    }
}
