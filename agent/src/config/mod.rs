//! The agent's TOML configuration: the types it runs with and their defaults, loaded from a
//! file whose keys are declared in `raw` and checked in `read`, every problem reported at
//! once with its line.

mod raw;
mod read;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use respawn_common::config_file::summary;
pub use respawn_common::config_file::Problem;
use respawn_common::messages::{Notify, Permission};
use respawn_common::mqtt::{BrokerUrl, TlsFiles};
use respawn_common::signing::VerifyingKey;
use respawn_common::topics::Topics;

/// Where the agent looks for its configuration when neither `--config` nor `RESPAWN_CONFIG`
/// says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/respawn/agent.toml";

/// The whole configuration of one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub agent: AgentConfig,
    /// In the order of the file.
    pub processes: Vec<ProcessConfig>,
    /// The broker to report to; `None` runs a local supervisor only.
    pub mqtt: Option<MqttConfig>,
    /// The broker to host inside the agent.
    pub broker: Option<BrokerConfig>,
    /// Whose signed commands are taken.
    pub operators: Vec<OperatorConfig>,
}

impl Config {
    /// Whether `new` changes what only a restart of the agent applies: its id, its state
    /// directory, its containment, its broker.
    pub fn needs_restart_for(&self, new: &Config) -> bool {
        new.agent.id != self.agent.id
            || new.agent.state_dir != self.agent.state_dir
            || new.agent.containment != self.agent.containment
            || new.agent.remote_config != self.agent.remote_config
            || new.mqtt != self.mqtt
            || new.broker != self.broker
    }

    /// The longest any process is given to stop before it is killed.
    pub fn longest_stop(&self) -> Duration {
        let timeouts = self.processes.iter().map(|p| p.stop_timeout);
        timeouts.max().unwrap_or_default()
    }

    /// Takes over whom `new` takes commands from; returns whether that changed.
    pub fn adopt_command_policy(&mut self, new: &Config) -> bool {
        let changed = new.operators != self.operators
            || new.agent.allow_unsigned_commands != self.agent.allow_unsigned_commands;
        self.operators = new.operators.clone();
        self.agent.allow_unsigned_commands = new.agent.allow_unsigned_commands;
        changed
    }
}

/// The `[mqtt]` section: how the agent reaches its broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    pub url: BrokerUrl,
    /// For `mqtts://`: the CA to trust (else the system's), and a client certificate.
    pub tls: TlsFiles,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    pub topics: Topics,
    pub heartbeat: Duration,
    /// Events kept on disk while the broker cannot be reached; the oldest go first.
    pub spool_limit: usize,
}

impl MqttConfig {
    /// The settings the agent uses for a broker at `url` when nothing else is said.
    pub fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            tls: TlsFiles::default(),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            topics: Topics::default(),
            heartbeat: Duration::from_secs(30),
            spool_limit: 10_000,
        }
    }
}

/// A password: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The `[broker]` section: an MQTT broker inside the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
}

impl BrokerConfig {
    /// Reporting to this broker, as an agent does that hosts it and has no `[mqtt]`.
    pub fn local_mqtt(&self) -> MqttConfig {
        let host = match self.listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        };
        MqttConfig::new(BrokerUrl {
            host,
            port: self.listen.port(),
            tls: false,
        })
    }
}

/// The `[agent]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub id: String,
    pub state_dir: PathBuf,
    /// Take commands without a signature (anyone who can publish on the broker can then
    /// command this agent).
    pub allow_unsigned_commands: bool,
    pub containment: ContainmentMode,
    /// Take processes over the network (`remote.toml` in the state directory).
    pub remote_config: bool,
}

/// `[agent] containment`: how the processes of each program are kept together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainmentMode {
    /// A cgroup per process where the agent can manage cgroups, else process groups.
    Auto,
    /// A cgroup per process, or the agent does not start.
    Cgroup,
    /// Process groups: a descendant that starts a session of its own escapes a stop.
    ProcessGroup,
}

/// An `[[operator]]`: someone whose signed commands this agent takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    pub name: String,
    pub key: VerifyingKey,
    /// What this operator may do.
    pub allow: Vec<Permission>,
    /// Globs of the process names this operator may act on.
    pub processes: Vec<String>,
}

/// One `[[process]]`: what to run and how to keep it alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessConfig {
    pub name: String,
    /// argv; never empty.
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub restart: RestartPolicy,
    pub backoff: Backoff,
    /// Uptime after which a run counts as stable: the backoff resets and the next exit
    /// restarts at once.
    pub stable_after: Duration,
    pub crash_loop: CrashLoop,
    /// Unstable restarts in a row after which the process is given up (`failed`);
    /// `None` retries forever.
    pub max_restarts: Option<u32>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub autostart: bool,
    /// Which failures `respawnctl alerts` should report; supervision does not look at it.
    pub notify: Notify,
    /// A probe that tells a working process from a hung one.
    pub health: Option<HealthCheck>,
    /// The process speaks the systemd notify protocol (`READY=1`, `WATCHDOG=1`).
    pub sd_notify: bool,
    /// With `sd_notify`: a `WATCHDOG=1` must come at least this often.
    pub watchdog: Option<Duration>,
    /// Restart when the process group uses more memory (RSS, bytes) than this.
    pub max_memory: Option<u64>,
    /// Restart after this long running, whatever its health.
    pub restart_every: Option<Duration>,
    /// Applied over the network (`remote.toml`), not from the local file.
    pub remote: bool,
}

/// `[process.health]`: how to tell that a process works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed probes in a row that make the process unhealthy.
    pub failures: u32,
    /// After a start, failed probes do not count for this long.
    pub grace: Duration,
}

/// One kind of probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP GET whose status is within `status` and whose body holds `body`.
    Http {
        url: String,
        host: String,
        port: u16,
        path: String,
        status: (u16, u16),
        body: Option<String>,
    },
    /// A TCP connection that opens.
    Tcp { address: String },
    /// A command that exits 0.
    Exec { command: Vec<String> },
}

impl HealthCheck {
    /// A check by `probe` with every other setting at its default.
    pub fn new(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failures: 3,
            grace: Duration::from_secs(30),
        }
    }
}

impl Probe {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Tcp { .. } => "tcp",
            Self::Exec { .. } => "exec",
        }
    }
}

impl ProcessConfig {
    /// Whether a start waits for the process to say it is ready (a passing health check or
    /// `READY=1`) before it shows as running.
    pub fn awaits_readiness(&self) -> bool {
        self.health.is_some() || self.sd_notify
    }

    /// Whether a process under `other` runs exactly as under this one: only what is reported
    /// about it (or the file it comes from) may differ, so that a change of it needs no
    /// restart.
    pub fn runs_as(&self, other: &ProcessConfig) -> bool {
        let reported_only = |c: &ProcessConfig| ProcessConfig {
            notify: Notify::Every,
            remote: false,
            ..c.clone()
        };
        reported_only(self) == reported_only(other)
    }
}

/// When an exited process is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// After every exit, clean or not.
    Always,
    /// After an exit with a non-zero code or by a signal; exit 0 means done.
    OnFailure,
    /// Never; the process runs once.
    Never,
}

/// Exponential backoff between unstable restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

/// How many exits within a window make a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoop {
    pub max_exits: u32,
    pub window: Duration,
}

impl ProcessConfig {
    /// A process with every setting at its default, as design.md §3 specifies.
    pub fn new(name: &str, command: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            command,
            cwd: None,
            env: BTreeMap::new(),
            user: None,
            restart: RestartPolicy::Always,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            stable_after: Duration::from_secs(60),
            crash_loop: CrashLoop {
                max_exits: 5,
                window: Duration::from_secs(600),
            },
            max_restarts: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            autostart: true,
            notify: Notify::Every,
            health: None,
            sd_notify: false,
            watchdog: None,
            max_memory: None,
            restart_every: None,
            remote: false,
        }
    }
}

/// Facts about the machine that the configuration is checked against.
pub struct Environment {
    pub hostname: String,
    pub is_root: bool,
    pub default_state_dir: PathBuf,
    pub user_exists: fn(&str) -> bool,
    pub read_file: fn(&Path) -> std::io::Result<String>,
    /// The broker password from `$RESPAWN_PASSWORD`, used when `[mqtt]` has a username and no
    /// `password_file`.
    pub password: Option<String>,
    /// Builds a TLS configuration from files, to report problems with them.
    pub tls_check: fn(&TlsFiles) -> Result<(), respawn_common::mqtt::TlsError>,
}

impl Environment {
    /// The machine the agent runs on.
    pub fn current() -> Self {
        let is_root = nix::unistd::geteuid().is_root();
        Self {
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            is_root,
            default_state_dir: default_state_dir(is_root),
            user_exists: |name| matches!(nix::unistd::User::from_name(name), Ok(Some(_))),
            read_file: |path| std::fs::read_to_string(path),
            password: std::env::var("RESPAWN_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
            tls_check: |files| respawn_common::mqtt::tls_config(files).map(drop),
        }
    }
}

/// `/var/lib/respawn` for root; for anyone else, who cannot write there, the XDG state
/// directory (`$XDG_STATE_HOME/respawn`, else `~/.local/state/respawn`).
fn default_state_dir(is_root: bool) -> PathBuf {
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match xdg {
        Some(base) if !is_root => base.join("respawn"),
        _ => PathBuf::from("/var/lib/respawn"),
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {}", summary(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path, env: &Environment) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
    parse(&text, &base_dir, env).map_err(|problems| LoadError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// Parses a remote configuration (`remote.toml`: `[[process]]` tables only, no name of a
/// `local` process); relative paths are taken relative to `base_dir`.
pub fn parse_remote(
    text: &str,
    base_dir: &Path,
    env: &Environment,
    local: &[String],
) -> Result<Vec<ProcessConfig>, Vec<Problem>> {
    read::remote_document(text, base_dir, env, local)
}

/// Parses a configuration; relative paths are taken relative to `base_dir`.
pub fn parse(text: &str, base_dir: &Path, env: &Environment) -> Result<Config, Vec<Problem>> {
    read::document(text, base_dir, env)
}

#[cfg(test)]
mod tests;
