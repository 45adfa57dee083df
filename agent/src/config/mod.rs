//! The agent's TOML configuration: the types it runs with, each key of the file declared
//! once as a field with its doc, its default (the type's `Default`) and its check (the
//! `deserialize_with` adapter of `fields`, over a check of `checks`). `read` reads a file
//! section by section and reports every problem at once with its line.

mod checks;
mod fields;
mod read;

pub use read::{parse, parse_remote};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use fields as v;
use nix::sys::signal::Signal;
use respawn_common::config_file::summary;
pub use respawn_common::config_file::Problem;
use respawn_common::messages::{Notify, Permission};
use respawn_common::mqtt::{BrokerUrl, TlsError, TlsFiles, TlsKey};
use respawn_common::signing::VerifyingKey;
use respawn_common::topics::Topics;
use serde::Deserialize;
use smart_default::SmartDefault;

/// Where the agent looks for its configuration when neither `--config` nor `RESPAWN_CONFIG`
/// says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/respawn/agent.toml";

/// The environment variable that tags every process of one run of a program, inherited by
/// all it starts: as systemd's `INVOCATION_ID`, it names the run to the program, and it lets
/// the agent find the descendants that left the run's process group (`setsid`, a daemon's
/// double fork), which no signal to the group reaches.
pub const INVOCATION_VAR: &str = "RESPAWN_INVOCATION";

/// The environment variable that names the program to each of its processes, as
/// supervisord's `SUPERVISOR_PROCESS_NAME`.
pub const PROCESS_VAR: &str = "RESPAWN_PROCESS";

/// The environment variable that tags an `exec` health probe with the program it checks, so
/// that what it leaves behind (a daemon it started) is found and stopped.
pub const PROBE_VAR: &str = "RESPAWN_PROBE";

/// How long a process is given to stop before it is killed, unless its `stop_timeout` says.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The settings whose change in `new` only a restart of the agent applies, as the file
    /// names them: its id, its state directory, its containment, its broker.
    pub fn changes_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        let (was, now) = (&self.agent, &new.agent);
        // An agent without [mqtt] reports to its [broker]: that one names the change.
        let implied = |c: &Config| c.broker.as_ref().map(BrokerConfig::local_mqtt) == c.mqtt;
        let mqtt_written = !(implied(self) && implied(new));
        [
            ("[agent] id", was.id != now.id),
            ("[agent] state_dir", was.state_dir != now.state_dir),
            ("[agent] containment", was.containment != now.containment),
            (
                "[agent] remote_config",
                was.remote_config != now.remote_config,
            ),
            ("[mqtt]", new.mqtt != self.mqtt && mqtt_written),
            ("[broker]", new.broker != self.broker),
        ]
        .into_iter()
        .filter_map(|(setting, changed)| changed.then_some(setting))
        .collect()
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, SmartDefault)]
#[serde(default)]
pub struct MqttConfig {
    /// Required: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`. (The default, a broker on
    /// this machine, only stands in while a file is read.)
    #[serde(deserialize_with = "v::broker_url")]
    #[default(BrokerUrl { host: "127.0.0.1".to_owned(), port: 1883, tls: false })]
    pub url: BrokerUrl,
    /// mqtts: the CA to trust; default: the system's CAs.
    #[serde(deserialize_with = "v::path")]
    pub ca_file: Option<PathBuf>,
    /// mqtts: a client certificate for mutual TLS, with its key.
    #[serde(deserialize_with = "v::path")]
    pub cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "v::path")]
    pub key_file: Option<PathBuf>,
    #[serde(deserialize_with = "v::text")]
    pub username: Option<String>,
    /// The password, alone in a file; default: `$RESPAWN_PASSWORD`. Needs a username.
    #[serde(deserialize_with = "v::path")]
    pub password_file: Option<PathBuf>,
    /// Read from `password_file` or the environment, never from the file itself.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// 5 s to 18 h 12 min 15 s (65,535 s, MQTT's limit).
    #[serde(deserialize_with = "v::keep_alive")]
    #[default(Duration::from_secs(30))]
    pub keep_alive: Duration,
    /// `topic_prefix`; default: `respawn/v1`.
    #[serde(rename = "topic_prefix", deserialize_with = "v::topics")]
    pub topics: Topics,
    /// At least 1 s. The heartbeat expires after three of these.
    #[serde(deserialize_with = "v::heartbeat")]
    #[default(Duration::from_secs(30))]
    pub heartbeat: Duration,
    /// Events kept on disk while the broker cannot be reached (the oldest go first).
    #[serde(deserialize_with = "v::spool_limit")]
    #[default(10_000)]
    pub spool_limit: usize,
}

impl MqttConfig {
    /// The username of a login with no password, which a broker that asks for one refuses.
    pub fn passwordless_user(&self) -> Option<&str> {
        self.username.as_deref().filter(|_| self.password.is_none())
    }

    /// The TLS files, for `mqtts://`.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BrokerConfig {
    /// Required: an address and port, such as `127.0.0.1:1883`.
    #[serde(deserialize_with = "v::listen_address")]
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
        let port = self.listen.port();
        let url = BrokerUrl {
            host,
            port,
            tls: false,
        };
        MqttConfig {
            url,
            ..MqttConfig::default()
        }
    }
}

/// The `[agent]` section. An `id` or `state_dir` left out is empty until `read` fills it in
/// from the machine (an empty one written in the file is refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// `[a-z0-9][a-z0-9_-]{0,63}`; default: the hostname, lower-cased and sanitised.
    #[serde(deserialize_with = "v::agent_id")]
    pub id: String,
    /// Default: `/var/lib/respawn` as root, else `$XDG_STATE_HOME/respawn`.
    #[serde(deserialize_with = "v::state_dir")]
    pub state_dir: PathBuf,
    /// Take commands without a signature: anyone who can publish on the broker may command
    /// the agent. Default: false.
    #[serde(deserialize_with = "v::flag")]
    pub allow_unsigned_commands: bool,
    /// `auto` (default), `cgroup` or `process-group`.
    #[serde(deserialize_with = "v::containment")]
    pub containment: ContainmentMode,
    /// Take `[[process]]` tables over the network (signed `config_apply` from an operator
    /// allowed to `configure`), kept in `remote.toml` in the state directory. Default: false.
    #[serde(deserialize_with = "v::flag")]
    pub remote_config: bool,
}

/// `[agent] containment`: how the processes of each program are kept together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContainmentMode {
    /// A cgroup per process where the agent can manage cgroups, else process groups.
    #[default]
    Auto,
    /// A cgroup per process, or the agent does not start.
    Cgroup,
    /// Process groups: a descendant that starts a session of its own gets no stop signal; it is
    /// killed when the main process ends if it kept the run's `RESPAWN_INVOCATION`.
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

/// One `[[process]]`: what to run and how to keep it alive (the README's configuration
/// reference says each key with its default).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, SmartDefault)]
#[serde(default)]
pub struct ProcessConfig {
    /// Required; `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, unique (checked by `read`, which names
    /// the table by it).
    #[serde(deserialize_with = "v::any_text")]
    pub name: String,
    /// Required: argv, no shell; never empty.
    #[serde(deserialize_with = "v::command")]
    pub command: Vec<String>,
    /// Default: the agent's working directory.
    #[serde(deserialize_with = "v::path")]
    pub cwd: Option<PathBuf>,
    /// Added to the agent's environment.
    #[serde(deserialize_with = "v::env_table")]
    pub env: BTreeMap<String, String>,
    /// Only when the agent runs as root (checked by `read` against the machine).
    #[serde(deserialize_with = "v::text")]
    pub user: Option<String>,
    /// `always` (default), `on-failure` or `never`.
    #[serde(deserialize_with = "v::restart_policy")]
    pub restart: RestartPolicy,
    #[serde(deserialize_with = "v::backoff")]
    pub backoff: Backoff,
    /// Uptime after which a run counts as stable: the backoff resets and the next exit
    /// restarts at once.
    #[serde(deserialize_with = "v::duration")]
    #[default(Duration::from_secs(60))]
    pub stable_after: Duration,
    pub crash_loop: CrashLoop,
    /// Unstable restarts in a row after which the process is given up (`failed`); default:
    /// retry forever.
    #[serde(deserialize_with = "v::max_restarts")]
    pub max_restarts: Option<u32>,
    #[serde(deserialize_with = "v::signal")]
    #[default(Signal::SIGTERM)]
    pub stop_signal: Signal,
    #[serde(deserialize_with = "v::duration")]
    #[default(DEFAULT_STOP_TIMEOUT)]
    pub stop_timeout: Duration,
    #[serde(deserialize_with = "v::flag")]
    #[default(true)]
    pub autostart: bool,
    /// `every` (default), `loop_only` or `off`: which failures `respawnctl alerts` reports;
    /// supervision does not look at it.
    #[serde(deserialize_with = "v::notify")]
    pub notify: Notify,
    /// A probe that tells a working process from a hung one.
    #[serde(deserialize_with = "v::health")]
    pub health: Option<HealthCheck>,
    /// The process speaks the systemd notify protocol (`READY=1`, `WATCHDOG=1`).
    #[serde(deserialize_with = "v::flag")]
    pub sd_notify: bool,
    /// With `sd_notify`: a `WATCHDOG=1` must come at least this often; at least 1 s.
    #[serde(deserialize_with = "v::watchdog")]
    pub watchdog: Option<Duration>,
    /// Restart when the process uses more memory than this (its cgroup's `memory.max`, else
    /// measured: the PSS of its processes): bytes, or `"200MB"`,
    /// `"512MiB"`, `"1G"`; at least 1 MB.
    #[serde(deserialize_with = "v::size")]
    pub max_memory: Option<u64>,
    /// Restart after this long running, whatever its health; at least 1 min.
    #[serde(deserialize_with = "v::restart_every")]
    pub restart_every: Option<Duration>,
    /// Applied over the network (`remote.toml`), not from the local file.
    #[serde(skip)]
    pub remote: bool,
}

/// `[process.health]`: how to tell that a process works. The file says it with exactly one
/// of `http`, `tcp` and `exec` (`fields::HealthKeys`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
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
    /// A process running `command` with every other setting at its default.
    pub fn new(name: &str, command: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            command,
            ..Self::default()
        }
    }

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

    /// Whether a process under `other` runs the same program in the same way as under this
    /// one: only how the agent supervises it may differ besides what is reported — its restart
    /// policy, backoff, crash-loop limits, stop signal and timeout, autostart. A live process
    /// takes such a change without a restart, as systemd takes a new `TimeoutStopSec` or
    /// `Restart=`.
    pub fn runs_the_same_program(&self, other: &ProcessConfig) -> bool {
        let with_this_supervision = ProcessConfig {
            restart: self.restart,
            backoff: self.backoff,
            stable_after: self.stable_after,
            crash_loop: self.crash_loop,
            max_restarts: self.max_restarts,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            autostart: self.autostart,
            ..other.clone()
        };
        self.runs_as(&with_this_supervision)
    }
}

/// When an exited process is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// After every exit, clean or not.
    #[default]
    Always,
    /// After an exit with a non-zero code or by a signal; exit 0 means done.
    OnFailure,
    /// Never; the process runs once.
    Never,
}

/// `backoff = { … }`: exponential backoff between unstable restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, SmartDefault)]
#[serde(default)]
pub struct Backoff {
    /// At least 1 ms.
    #[serde(deserialize_with = "v::no_busy_loop")]
    #[default(Duration::from_secs(1))]
    pub initial: Duration,
    /// Not below `initial`.
    #[serde(deserialize_with = "v::duration")]
    #[default(Duration::from_secs(60))]
    pub max: Duration,
}

/// `crash_loop = { … }`: how many exits within a window make a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, SmartDefault)]
#[serde(default)]
pub struct CrashLoop {
    /// At least 1.
    #[serde(deserialize_with = "v::at_least_one")]
    #[default(5)]
    pub max_exits: u32,
    /// Longer than 0.
    #[serde(deserialize_with = "v::window")]
    #[default(Duration::from_secs(600))]
    pub window: Duration,
}

/// Facts about the machine that the configuration is checked against.
pub struct Environment {
    pub hostname: String,
    pub is_root: bool,
    /// The account the agent runs as: a process may name it in `user` without root.
    pub own_account: Option<String>,
    pub default_state_dir: PathBuf,
    pub read_file: fn(&Path) -> std::io::Result<String>,
    /// The broker password from `$RESPAWN_PASSWORD`, used when `[mqtt]` has a username and no
    /// `password_file`.
    pub password: Option<String>,
    /// Every problem with the TLS files, each with its key (`mqtt::tls_problems`).
    pub tls_check: fn(&TlsFiles) -> Vec<(TlsKey, TlsError)>,
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
            own_account: nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|user| user.name),
            default_state_dir: default_state_dir(is_root),
            read_file: respawn_common::config_file::read_text,
            password: std::env::var("RESPAWN_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty()),
            tls_check: respawn_common::mqtt::tls_problems,
        }
    }
}

/// `/var/lib/respawn` for root; for anyone else, who cannot write there, the XDG state
/// directory (`$XDG_STATE_HOME/respawn`, else `~/.local/state/respawn`).
pub(crate) fn default_state_dir(is_root: bool) -> PathBuf {
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
    load_with_text(path, env).map(|(config, _)| config)
}

/// As [`load`], with the text the configuration was read from: what else is told of the file
/// is told of the same version of it, however it is being written meanwhile.
pub fn load_with_text(path: &Path, env: &Environment) -> Result<(Config, String), LoadError> {
    let text = respawn_common::config_file::read_text(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    match parse(&text, &base_dir(path), env) {
        Ok(config) => Ok((config, text)),
        Err(problems) => Err(LoadError::Invalid {
            path: path.to_owned(),
            problems,
        }),
    }
}

/// Where relative paths of the file at `path` start: its directory. Also those of the remote
/// configuration, which are written as in the local file.
pub fn base_dir(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Canonical where it can be: one directory has one name however the file was named.
    std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_owned())
}

/// `path` as the file at whose directory `base` names it: `..` and `.` at its start are taken
/// off `base` rather than kept, so `../target/state` of `/srv/app/examples` reads as
/// `/srv/app/target/state` in every log and message. Only at the start, and only off a
/// `base` that ends in a name: `base` is canonical (or kept as written), so its parent is
/// what `..` reaches, which past a symbolic link in `path` would not hold.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    let mut resolved = base.to_owned();
    let mut rest = path.components();
    loop {
        let unread = rest.clone();
        match rest.next() {
            Some(Component::CurDir) => {}
            Some(Component::ParentDir) if resolved.file_name().is_some() => {
                resolved.pop();
            }
            // The root's parent is the root, as the kernel has it.
            Some(Component::ParentDir) if resolved.has_root() && resolved.parent().is_none() => {}
            _ => {
                rest = unread;
                break;
            }
        }
    }
    match rest.as_path().as_os_str().is_empty() {
        true => resolved,
        false => resolved.join(rest.as_path()),
    }
}

/// The state directory a file at `path` names even when its values have mistakes: where the
/// running agent, which keeps the configuration it last read, has its socket. `None` when it
/// cannot be told: the file is no TOML at all (then the default would be a guess, perhaps
/// another agent's), or `[agent] state_dir` itself is not a path.
pub fn state_dir_anyway(path: &Path, env: &Environment) -> Option<PathBuf> {
    match agent_key_as_written(path, "state_dir")? {
        None => Some(env.default_state_dir.clone()),
        Some(named) => {
            let dir = named.as_str().filter(|dir| !dir.is_empty())?;
            Some(resolve(&base_dir(path), Path::new(dir)))
        }
    }
}

/// What the file at `path` says of `[agent] key`, as written and whatever mistakes its values
/// have: `None` when it is no TOML at all, `Some(None)` when it leaves the key out.
pub fn agent_key_as_written(path: &Path, key: &str) -> Option<Option<toml::Value>> {
    let text = respawn_common::config_file::read_text(path).ok()?;
    let mut table: toml::Table = toml::from_str(&text).ok()?;
    Some(
        table
            .remove("agent")
            .and_then(|mut agent| agent.as_table_mut()?.remove(key)),
    )
}

#[cfg(test)]
mod tests;
