//! The agent's TOML configuration: parsing, defaults and validation that reports every problem
//! at once, each with its line.
//!
//! serde's `deny_unknown_fields` stops at the first error, so the document is parsed into toml's
//! spanned tree and walked here by hand: one bad key never hides the next.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use respawn_common::ids::{agent_id_from_hostname, validate_agent_id, validate_process_name};
use respawn_common::messages::{CommandName, Notify};
use respawn_common::mqtt::{BrokerUrl, TlsFiles};
use respawn_common::signing::VerifyingKey;
use respawn_common::topics::Topics;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

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
    /// directory, its broker.
    pub fn needs_restart_for(&self, new: &Config) -> bool {
        new.agent.id != self.agent.id
            || new.agent.state_dir != self.agent.state_dir
            || new.mqtt != self.mqtt
            || new.broker != self.broker
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

/// The `[agent]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub id: String,
    pub state_dir: PathBuf,
    /// Take commands without a signature (anyone who can publish on the broker can then
    /// command this agent).
    pub allow_unsigned_commands: bool,
}

/// An `[[operator]]`: someone whose signed commands this agent takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    pub name: String,
    pub key: VerifyingKey,
    /// The commands this operator may send.
    pub allow: Vec<CommandName>,
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
    /// about it may differ, so that a change of it needs no restart.
    pub fn runs_as(&self, other: &ProcessConfig) -> bool {
        let reported_only = |c: &ProcessConfig| ProcessConfig {
            notify: Notify::Every,
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
        }
    }
}

/// `http://host[:port][/path]` as host, port and path. Only plain HTTP: a health check talks
/// to the process on this machine.
fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} must start with http:// (health checks are plain HTTP)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("{url:?}: {port:?} is not a port"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() || host.contains(char::is_whitespace) || path.contains(char::is_whitespace) {
        return Err(format!(
            "{url:?} is not a URL such as http://127.0.0.1:4567/health"
        ));
    }
    Ok((
        host.trim_matches(['[', ']']).to_owned(),
        port,
        path.to_owned(),
    ))
}

/// `"200MB"`, `"512MiB"`, `"1G"`, `"1048576"`: decimal and binary units, case-insensitive.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (0.0..1e18).contains(&bytes).then_some(bytes as u64)
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

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the problem has no place in the file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
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
    #[error("{path}: {} problem{}:\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, format_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
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

/// Parses a configuration; relative paths are taken relative to `base_dir`.
pub fn parse(text: &str, base_dir: &Path, env: &Environment) -> Result<Config, Vec<Problem>> {
    let mut walker = Walker {
        text,
        base_dir,
        env,
        problems: Vec::new(),
    };
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    for error in syntax_errors {
        let line = error.span().map_or(0, |s| walker.line_of(s.start));
        walker.problems.push(Problem {
            line,
            message: format!("TOML syntax: {}", error.message().trim_end()),
        });
    }
    let config = walker.document(root.get_ref());
    let mut problems = walker.problems;
    if problems.is_empty() {
        Ok(config)
    } else {
        problems.sort_by_key(|p| p.line);
        problems.dedup();
        Err(problems)
    }
}

/// The longest duration accepted anywhere: far beyond any sensible timeout, and far from the
/// limits of clock arithmetic and of timestamps (year 9999).
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const TOP_KEYS: &[&str] = &["agent", "process", "mqtt", "broker", "operator"];
const AGENT_KEYS: &[&str] = &["id", "state_dir", "allow_unsigned_commands"];
const OPERATOR_KEYS: &[&str] = &["name", "public_key", "allow", "processes"];
const MQTT_KEYS: &[&str] = &[
    "url",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password_file",
    "keep_alive",
    "topic_prefix",
    "heartbeat",
    "spool_limit",
];
const BROKER_KEYS: &[&str] = &["listen"];
const PROCESS_KEYS: &[&str] = &[
    "name",
    "command",
    "cwd",
    "env",
    "user",
    "restart",
    "backoff",
    "stable_after",
    "crash_loop",
    "max_restarts",
    "stop_signal",
    "stop_timeout",
    "autostart",
    "notify",
    "health",
    "sd_notify",
    "watchdog",
    "max_memory",
    "restart_every",
];
const HEALTH_KEYS: &[&str] = &[
    "http", "tcp", "exec", "status", "body", "interval", "timeout", "failures", "grace",
];
const BACKOFF_KEYS: &[&str] = &["initial", "max"];
const CRASH_LOOP_KEYS: &[&str] = &["max_exits", "window"];

type Value<'i> = Spanned<DeValue<'i>>;

struct Walker<'a> {
    text: &'a str,
    base_dir: &'a Path,
    env: &'a Environment,
    problems: Vec<Problem>,
}

impl Walker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, span: Range<usize>, message: String) {
        let line = self.line_of(span.start);
        self.problems.push(Problem { line, message });
    }

    fn document(&mut self, root: &DeTable<'_>) -> Config {
        let mut agent = None;
        let mut processes = Vec::new();
        let mut mqtt = None;
        let mut broker = None;
        let mut operators = Vec::new();
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "agent" => agent = self.agent(value),
                "process" => processes = self.processes(value),
                "operator" => operators = self.operators(value),
                "mqtt" => mqtt = self.mqtt(value),
                "broker" => broker = self.broker(value),
                other => self.unknown_key(key.span(), "", other, TOP_KEYS),
            }
        }
        let agent = agent.unwrap_or_else(|| AgentConfig {
            id: agent_id_from_hostname(&self.env.hostname),
            state_dir: self.env.default_state_dir.clone(),
            allow_unsigned_commands: false,
        });
        // An embedded broker with no [mqtt] section: report to it.
        let mqtt = mqtt.or_else(|| {
            broker.as_ref().map(|b: &BrokerConfig| {
                let host = match b.listen.ip() {
                    ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
                    ip if ip.is_unspecified() => "::1".to_owned(),
                    ip => ip.to_string(),
                };
                MqttConfig::new(BrokerUrl {
                    host,
                    port: b.listen.port(),
                    tls: false,
                })
            })
        });
        Config {
            agent,
            processes,
            mqtt,
            broker,
            operators,
        }
    }

    fn mqtt(&mut self, value: &Value<'_>) -> Option<MqttConfig> {
        let table = self.table(value, "[mqtt]")?;
        let before = self.problems.len();
        let Some(url_value) = find(table, "url") else {
            self.problem(
                value.span(),
                "[mqtt]: missing `url`, e.g. url = \"mqtt://192.168.1.10:1883\"".into(),
            );
            return None;
        };
        let url = self.string(url_value, "[mqtt] url").and_then(|text| {
            BrokerUrl::parse(&text)
                .map_err(|e| self.problem(url_value.span(), format!("[mqtt] url: {e}")))
                .ok()
        });
        let mut config = MqttConfig::new(url.unwrap_or(BrokerUrl {
            host: String::new(),
            port: 0,
            tls: false,
        }));
        let mut password_file = None;
        for (key, v) in table.iter() {
            let name = key.get_ref().as_ref();
            let what = format!("[mqtt] {name}");
            match name {
                "url" => {}
                "ca_file" => config.tls.ca_file = self.path(v, &what),
                "cert_file" => config.tls.cert_file = self.path(v, &what),
                "key_file" => config.tls.key_file = self.path(v, &what),
                "username" => config.username = self.non_empty_string(v, &what),
                "password_file" => password_file = self.path(v, &what).map(|p| (p, v.span())),
                "keep_alive" => {
                    if let Some(d) = self.duration(v, &what) {
                        if d < Duration::from_secs(5) || d > Duration::from_secs(65_535) {
                            self.problem(v.span(), format!("{what} must be between 5s and 18h"));
                        }
                        config.keep_alive = d;
                    }
                }
                "topic_prefix" => {
                    if let Some(prefix) = self.string(v, &what) {
                        match Topics::new(&prefix) {
                            Ok(topics) => config.topics = topics,
                            Err(e) => self.problem(v.span(), format!("{what}: {e}")),
                        }
                    }
                }
                "heartbeat" => {
                    if let Some(d) = self.duration(v, &what) {
                        if d < Duration::from_secs(1) {
                            self.problem(v.span(), format!("{what} must be at least 1s"));
                        }
                        config.heartbeat = d;
                    }
                }
                "spool_limit" => {
                    if let Some(n) = self.integer(v, &what, 1) {
                        config.spool_limit = n as usize;
                    }
                }
                other => self.unknown_key(key.span(), "[mqtt]: ", other, MQTT_KEYS),
            }
        }
        if let Some((path, span)) = password_file {
            if config.username.is_none() {
                self.problem(span.clone(), "[mqtt] password_file needs a username".into());
            }
            match (self.env.read_file)(&path) {
                Ok(text) => {
                    let password = text.trim_end_matches(['\n', '\r']).to_owned();
                    if password.is_empty() {
                        self.problem(
                            span,
                            format!("[mqtt] password_file {} is empty", path.display()),
                        );
                    }
                    config.password = Some(Secret(password));
                }
                Err(e) => self.problem(
                    span,
                    format!("[mqtt] password_file {}: {e}", path.display()),
                ),
            }
        } else if config.username.is_some() {
            config.password = self.env.password.clone().map(Secret);
        }
        let uses_tls_files = config.tls != TlsFiles::default();
        if config.url.tls {
            if !respawn_common::mqtt::valid_server_name(&config.url.host) {
                self.problem(
                    url_value.span(),
                    format!(
                        "[mqtt] url: {:?} cannot be checked against a certificate",
                        config.url.host
                    ),
                );
            } else if let Err(e) = (self.env.tls_check)(&config.tls) {
                self.problem(value.span(), format!("[mqtt]: {e}"));
            }
        } else if uses_tls_files && self.problems.len() == before {
            self.problem(
                value.span(),
                "[mqtt]: ca_file, cert_file and key_file need an mqtts:// url".into(),
            );
        }
        (self.problems.len() == before).then_some(config)
    }

    fn broker(&mut self, value: &Value<'_>) -> Option<BrokerConfig> {
        let table = self.table(value, "[broker]")?;
        let mut listen = None;
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "listen" => {
                    if let Some(text) = self.string(v, "[broker] listen") {
                        match text.parse::<SocketAddr>() {
                            Ok(addr) if addr.port() != 0 => listen = Some(addr),
                            _ => self.problem(
                                v.span(),
                                format!("[broker] listen {text:?} is not an address with a port, e.g. \"127.0.0.1:1883\""),
                            ),
                        }
                    }
                }
                other => self.unknown_key(key.span(), "[broker]: ", other, BROKER_KEYS),
            }
        }
        if find(table, "listen").is_none() {
            self.problem(
                value.span(),
                "[broker]: missing `listen`, e.g. listen = \"127.0.0.1:1883\"".into(),
            );
        }
        if cfg!(not(feature = "embedded-broker")) {
            self.problem(
                value.span(),
                "[broker]: this build of respawn-agent has no embedded broker (cargo feature `embedded-broker`); point [mqtt] url at a broker instead".into(),
            );
        }
        listen.map(|listen| BrokerConfig { listen })
    }

    fn agent(&mut self, value: &Value<'_>) -> Option<AgentConfig> {
        let table = self.table(value, "[agent]")?;
        let mut id = agent_id_from_hostname(&self.env.hostname);
        let mut state_dir = self.env.default_state_dir.clone();
        let mut allow_unsigned_commands = false;
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "allow_unsigned_commands" => {
                    if let Some(b) = self.boolean(value, "[agent] allow_unsigned_commands") {
                        allow_unsigned_commands = b;
                    }
                }
                "id" => {
                    if let Some(s) = self.string(value, "[agent] id") {
                        match validate_agent_id(&s) {
                            Ok(()) => id = s,
                            Err(e) => self.problem(
                                value.span(),
                                format!(
                                    "[agent] id {s:?} is not a valid agent id ([a-z0-9][a-z0-9_-]{{0,63}}): it {e}"
                                ),
                            ),
                        }
                    }
                }
                "state_dir" => {
                    if let Some(dir) = self.path(value, "[agent] state_dir") {
                        state_dir = dir;
                    }
                }
                other => self.unknown_key(key.span(), "[agent]: ", other, AGENT_KEYS),
            }
        }
        Some(AgentConfig {
            id,
            state_dir,
            allow_unsigned_commands,
        })
    }

    fn operators(&mut self, value: &Value<'_>) -> Vec<OperatorConfig> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span(),
                "`operator` must be an array of tables, written as [[operator]] sections".into(),
            );
            return Vec::new();
        };
        let mut operators: Vec<OperatorConfig> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let Some(operator) = self.operator(item, index + 1) else {
                continue;
            };
            if operators.iter().any(|o| o.name == operator.name) {
                self.problem(
                    item.span(),
                    format!("[[operator]] {:?}: duplicate name", operator.name),
                );
                continue;
            }
            operators.push(operator);
        }
        operators
    }

    fn operator(&mut self, value: &Value<'_>, ordinal: usize) -> Option<OperatorConfig> {
        let table = self.table(value, &format!("[[operator]] #{ordinal}"))?;
        let before = self.problems.len();
        let ctx = match find(table, "name").and_then(|v| v.get_ref().as_str()) {
            Some(name) => format!("[[operator]] {name:?}"),
            None => format!("[[operator]] #{ordinal}"),
        };
        let (mut name, mut key) = (None, None);
        let mut allow = CommandName::ALL.to_vec();
        let mut processes = vec!["*".to_owned()];
        for (k, v) in table.iter() {
            let what = format!("{ctx}: `{}`", k.get_ref());
            match k.get_ref().as_ref() {
                "name" => {
                    name = self
                        .string(v, &what)
                        .filter(|n| match validate_process_name(n) {
                            Ok(()) => true,
                            Err(e) => {
                                self.problem(
                                    v.span(),
                                    format!("{what}: {n:?} is not a valid name: it {e}"),
                                );
                                false
                            }
                        })
                }
                "public_key" => {
                    key = self.string(v, &what).and_then(|text| {
                        let named = find(table, "name").and_then(|n| n.get_ref().as_str());
                        match (VerifyingKey::line_name(&text), named) {
                            (Some(in_line), Some(name)) if in_line != name => self.problem(
                                v.span(),
                                format!("{what}: this is the key of {in_line:?}, whose commands are signed as {in_line:?}: name the operator {in_line:?}, or make a key for {name:?}"),
                            ),
                            _ => {}
                        }
                        VerifyingKey::parse(&text)
                            .map_err(|e| self.problem(v.span(), format!("{what}: {e}")))
                            .ok()
                    })
                }
                "allow" => {
                    if let Some(names) = self.string_list(v, &what) {
                        allow = Vec::new();
                        for n in names {
                            match CommandName::from_name(&n) {
                                Some(c) => allow.push(c),
                                None => self.problem(
                                    v.span(),
                                    format!("{what}: {n:?} is not a command (restart, stop, start, logs, status)"),
                                ),
                            }
                        }
                    }
                }
                "processes" => {
                    if let Some(globs) = self.string_list(v, &what) {
                        for g in &globs {
                            let ok = !g.is_empty()
                                && g.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "_-.*?".contains(c));
                            if !ok {
                                self.problem(
                                    v.span(),
                                    format!("{what}: {g:?} is not a process-name glob"),
                                );
                            }
                        }
                        processes = globs;
                    }
                }
                other => self.unknown_key(k.span(), &format!("{ctx}: "), other, OPERATOR_KEYS),
            }
        }
        if find(table, "name").is_none() {
            self.problem(value.span(), format!("{ctx}: missing `name`"));
        }
        if find(table, "public_key").is_none() {
            self.problem(
                value.span(),
                format!("{ctx}: missing `public_key` (the line `respawnctl keygen` prints)"),
            );
        }
        if self.problems.len() != before {
            return None;
        }
        Some(OperatorConfig {
            name: name?,
            key: key?,
            allow,
            processes,
        })
    }

    fn string_list(&mut self, value: &Value<'_>, what: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(value.span(), format!("{what} must be a list of strings"));
            return None;
        };
        let strings: Vec<String> = items.iter().filter_map(|i| self.string(i, what)).collect();
        (strings.len() == items.len()).then_some(strings)
    }

    fn processes(&mut self, value: &Value<'_>) -> Vec<ProcessConfig> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span(),
                "`process` must be an array of tables, written as [[process]] sections".into(),
            );
            return Vec::new();
        };
        let mut processes: Vec<ProcessConfig> = Vec::new();
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let (name, process) = self.process(item, index + 1);
            let Some(name) = name else {
                continue;
            };
            if let Some(first) = first_lines.get(&name) {
                self.problem(
                    item.span(),
                    format!("[[process]] {name:?}: duplicate name (first defined on line {first})"),
                );
                continue;
            }
            first_lines.insert(name, self.line_of(item.span().start));
            processes.extend(process);
        }
        processes
    }

    /// The process's name, if it has a valid one, and its configuration, if it has no problem.
    fn process(
        &mut self,
        value: &Value<'_>,
        ordinal: usize,
    ) -> (Option<String>, Option<ProcessConfig>) {
        let Some(table) = self.table(value, &format!("[[process]] #{ordinal}")) else {
            return (None, None);
        };
        let problems_before = self.problems.len();
        let name = match find(table, "name") {
            Some(v) => self.string(v, &format!("[[process]] #{ordinal}: name")).and_then(|name| {
                match validate_process_name(&name) {
                    Ok(()) => Some(name),
                    Err(e) => {
                        self.problem(
                            v.span(),
                            format!(
                                "[[process]] #{ordinal}: name {name:?} is not valid ([A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}): it {e}"
                            ),
                        );
                        None
                    }
                }
            }),
            None => {
                self.problem(
                    value.span(),
                    format!("[[process]] #{ordinal}: missing `name`"),
                );
                None
            }
        };
        let ctx = match &name {
            Some(n) => format!("[[process]] {n:?}"),
            None => format!("[[process]] #{ordinal}"),
        };

        let mut p = ProcessConfig::new(name.as_deref().unwrap_or(""), Vec::new());
        let mut has_command = false;
        for (key, value) in table.iter() {
            let key_name = key.get_ref().as_ref();
            let what = format!("{ctx}: `{key_name}`");
            match key_name {
                "name" => {}
                "command" => {
                    has_command = true;
                    if let Some(argv) = self.command(value, &what) {
                        p.command = argv;
                    }
                }
                "cwd" => p.cwd = self.path(value, &what),
                "env" => p.env = self.env_table(value, &what),
                "user" => p.user = self.user(value, &what),
                "restart" => {
                    if let Some(policy) = self.restart_policy(value, &what) {
                        p.restart = policy;
                    }
                }
                "backoff" => {
                    if let Some(backoff) = self.backoff(value, &ctx, p.backoff) {
                        p.backoff = backoff;
                    }
                }
                "stable_after" => {
                    if let Some(d) = self.duration(value, &what) {
                        p.stable_after = d;
                    }
                }
                "crash_loop" => {
                    if let Some(cl) = self.crash_loop(value, &ctx, p.crash_loop) {
                        p.crash_loop = cl;
                    }
                }
                "max_restarts" => p.max_restarts = self.integer(value, &what, 0),
                "stop_signal" => {
                    if let Some(signal) = self.signal(value, &what) {
                        p.stop_signal = signal;
                    }
                }
                "stop_timeout" => {
                    if let Some(d) = self.duration(value, &what) {
                        p.stop_timeout = d;
                    }
                }
                "autostart" => {
                    if let Some(b) = self.boolean(value, &what) {
                        p.autostart = b;
                    }
                }
                "notify" => {
                    if let Some(n) = self.string(value, &what) {
                        match Notify::from_name(&n) {
                            Some(notify) => p.notify = notify,
                            None => self.problem(
                                value.span(),
                                format!(
                                    "{what}: {n:?} is not one of \"every\", \"loop_only\", \"off\""
                                ),
                            ),
                        }
                    }
                }
                "health" => p.health = self.health(value, &ctx),
                "sd_notify" => {
                    if let Some(b) = self.boolean(value, &what) {
                        p.sd_notify = b;
                    }
                }
                "watchdog" => {
                    if let Some(d) = self.duration(value, &what) {
                        if d < Duration::from_secs(1) {
                            self.problem(value.span(), format!("{what} must be at least 1s"));
                        }
                        p.watchdog = Some(d);
                    }
                }
                "max_memory" => p.max_memory = self.bytes(value, &what),
                "restart_every" => {
                    if let Some(d) = self.duration(value, &what) {
                        if d < Duration::from_secs(60) {
                            self.problem(value.span(), format!("{what} must be at least 1m"));
                        }
                        p.restart_every = Some(d);
                    }
                }
                other => self.unknown_key(key.span(), &format!("{ctx}: "), other, PROCESS_KEYS),
            }
        }
        if p.watchdog.is_some() && !p.sd_notify {
            if let Some(v) = find(table, "watchdog") {
                self.problem(
                    v.span(),
                    format!("{ctx}: `watchdog` needs `sd_notify = true`: the process pings with WATCHDOG=1 over the notify socket"),
                );
            }
        }
        if !has_command {
            self.problem(value.span(), format!("{ctx}: missing `command`"));
        }
        let config = (self.problems.len() == problems_before).then_some(p);
        (name, config)
    }

    fn unknown_key(&mut self, span: Range<usize>, ctx: &str, key: &str, known: &[&str]) {
        let hint = match closest(key, known) {
            Some(k) => format!(" (did you mean `{k}`?)"),
            None => format!(" (known keys: {})", known.join(", ")),
        };
        self.problem(span, format!("{ctx}unknown key `{key}`{hint}"));
    }

    fn table<'v, 'i>(&mut self, value: &'v Value<'i>, what: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.problem(
                    value.span(),
                    format!("{what} must be a table, not a {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.problem(
                    value.span(),
                    format!("{what} must be a string, not a {}", other.type_str()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value<'_>, what: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.problem(
                    value.span(),
                    format!("{what} must be true or false, not a {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, value: &Value<'_>, what: &str, min: u32) -> Option<u32> {
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match parsed
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n >= min)
        {
            Some(n) => Some(n),
            None => {
                self.problem(
                    value.span(),
                    format!("{what} must be a whole number from {min} to {}", u32::MAX),
                );
                None
            }
        }
    }

    /// A string that can go into argv or the environment, which cannot hold NUL.
    fn string_without_nul(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        let s = self.string(value, what)?;
        if s.contains('\0') {
            self.problem(value.span(), format!("{what} must not contain a NUL byte"));
            return None;
        }
        Some(s)
    }

    fn non_empty_string(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        let s = self.string_without_nul(value, what)?;
        if s.is_empty() {
            self.problem(value.span(), format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    fn path(&mut self, value: &Value<'_>, what: &str) -> Option<PathBuf> {
        let s = self.non_empty_string(value, what)?;
        Some(self.base_dir.join(s))
    }

    fn command(&mut self, value: &Value<'_>, what: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.problem(
                value.span(),
                format!(
                    "{what} must be a list of strings, e.g. [\"ruby\", \"server.rb\"]; for a shell line use [\"sh\", \"-c\", \"...\"]"
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.problem(value.span(), format!("{what} must not be empty"));
            return None;
        }
        let mut argv = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let arg = if i == 0 {
                self.non_empty_string(item, &format!("{what}: the program"))
            } else {
                self.string_without_nul(item, &format!("{what}: argument {i}"))
            };
            argv.extend(arg);
        }
        (argv.len() == items.len()).then_some(argv)
    }

    fn env_table(&mut self, value: &Value<'_>, what: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(table) = self.table(value, what) else {
            return env;
        };
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            if name.is_empty() || name.contains(['=', '\0']) {
                self.problem(
                    key.span(),
                    format!("{what}: {name:?} is not a valid variable name"),
                );
                continue;
            }
            if let Some(v) = self.string_without_nul(value, &format!("{what}: {name}")) {
                env.insert(name.to_owned(), v);
            }
        }
        env
    }

    fn user(&mut self, value: &Value<'_>, what: &str) -> Option<String> {
        let user = self.non_empty_string(value, what)?;
        if !self.env.is_root {
            self.problem(
                value.span(),
                format!("{what}: switching to user {user:?} needs the agent to run as root"),
            );
            return None;
        }
        if !(self.env.user_exists)(&user) {
            self.problem(value.span(), format!("{what}: no such user {user:?}"));
            return None;
        }
        Some(user)
    }

    fn restart_policy(&mut self, value: &Value<'_>, what: &str) -> Option<RestartPolicy> {
        let s = self.string(value, what)?;
        match s.as_str() {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "never" => Some(RestartPolicy::Never),
            _ => {
                self.problem(
                    value.span(),
                    format!("{what} is {s:?}; expected \"always\", \"on-failure\" or \"never\""),
                );
                None
            }
        }
    }

    fn duration(&mut self, value: &Value<'_>, what: &str) -> Option<Duration> {
        let DeValue::String(s) = value.get_ref() else {
            self.problem(
                value.span(),
                format!("{what} must be a duration string such as \"10s\", \"500ms\" or \"10m\""),
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) if d > MAX_DURATION => {
                self.problem(
                    value.span(),
                    format!("{what}: {s:?} is longer than the limit of 365 days"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    value.span(),
                    format!("{what}: bad duration {s:?} ({e}); write e.g. \"10s\", \"500ms\" or \"10m\""),
                );
                None
            }
        }
    }

    fn signal(&mut self, value: &Value<'_>, what: &str) -> Option<Signal> {
        let s = self.string(value, what)?;
        let upper = s.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        match Signal::from_str(&full) {
            Ok(Signal::SIGKILL | Signal::SIGSTOP) | Err(_) => {
                self.problem(
                    value.span(),
                    format!("{what}: {s:?} is not a signal a process can handle; use e.g. \"TERM\", \"INT\", \"QUIT\" or \"HUP\""),
                );
                None
            }
            Ok(signal) => Some(signal),
        }
    }

    /// `[process.health]`.
    fn health(&mut self, value: &Value<'_>, ctx: &str) -> Option<HealthCheck> {
        let what = format!("{ctx}: `health`");
        let table = self.table(value, &what)?;
        let before = self.problems.len();
        let mut probes: Vec<Probe> = Vec::new();
        let mut status = (200, 399);
        let mut body = None;
        let mut check = HealthCheck {
            probe: Probe::Tcp {
                address: String::new(),
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failures: 3,
            grace: Duration::from_secs(30),
        };
        for (key, v) in table.iter() {
            let key_name = key.get_ref().as_ref();
            let field = format!("{ctx}: `health.{key_name}`");
            match key_name {
                "http" => {
                    if let Some(url) = self.non_empty_string(v, &field) {
                        match parse_http_url(&url) {
                            Ok((host, port, path)) => probes.push(Probe::Http {
                                url,
                                host,
                                port,
                                path,
                                status: (0, 0),
                                body: None,
                            }),
                            Err(e) => self.problem(v.span(), format!("{field}: {e}")),
                        }
                    }
                }
                "tcp" => {
                    if let Some(address) = self.non_empty_string(v, &field) {
                        match address.rsplit_once(':') {
                            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                                probes.push(Probe::Tcp { address })
                            }
                            _ => self.problem(
                                v.span(),
                                format!("{field}: {address:?} is not HOST:PORT, e.g. \"127.0.0.1:4567\""),
                            ),
                        }
                    }
                }
                "exec" => {
                    if let Some(command) = self.command(v, &field) {
                        probes.push(Probe::Exec { command });
                    }
                }
                "status" => {
                    if let Some(range) = self.status_range(v, &field) {
                        status = range;
                    }
                }
                "body" => body = self.string(v, &field),
                "interval" => {
                    if let Some(d) = self.duration(v, &field) {
                        if d < Duration::from_millis(100) {
                            self.problem(v.span(), format!("{field} must be at least 100ms"));
                        }
                        check.interval = d;
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration(v, &field) {
                        if d < Duration::from_millis(10) {
                            self.problem(v.span(), format!("{field} must be at least 10ms"));
                        }
                        check.timeout = d;
                    }
                }
                "failures" => {
                    if let Some(n) = self.integer(v, &field, 1) {
                        check.failures = n;
                    }
                }
                "grace" => {
                    if let Some(d) = self.duration(v, &field) {
                        check.grace = d;
                    }
                }
                other => self.unknown_key(key.span(), &format!("{what}: "), other, HEALTH_KEYS),
            }
        }
        match probes.len() {
            1 => {}
            0 => {
                if self.problems.len() == before {
                    self.problem(
                        value.span(),
                        format!("{what}: say how to check: `http`, `tcp` or `exec`"),
                    );
                }
                return None;
            }
            _ => {
                self.problem(
                    value.span(),
                    format!("{what}: one of `http`, `tcp` or `exec`, not several"),
                );
                return None;
            }
        }
        let mut probe = probes.remove(0);
        match &mut probe {
            Probe::Http {
                status: s, body: b, ..
            } => {
                *s = status;
                *b = body;
            }
            _ => {
                for key in ["status", "body"] {
                    if let Some(v) = find(table, key) {
                        self.problem(v.span(), format!("{what}: `{key}` is for `http` checks"));
                    }
                }
            }
        }
        if check.timeout > check.interval {
            self.problem(
                value.span(),
                format!(
                    "{what}: timeout ({}) is longer than interval ({}): probes would pile up",
                    humantime::format_duration(check.timeout),
                    humantime::format_duration(check.interval)
                ),
            );
        }
        check.probe = probe;
        (self.problems.len() == before).then_some(check)
    }

    /// An HTTP status or a range of them: `200`, `"200-299"`.
    fn status_range(&mut self, value: &Value<'_>, what: &str) -> Option<(u16, u16)> {
        let range = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u16::try_from(n).ok())
                .map(|n| (n, n)),
            DeValue::String(text) => text.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            }),
            _ => None,
        };
        match range {
            Some((low, high)) if (100..=599).contains(&low) && low <= high && high <= 599 => {
                Some((low, high))
            }
            _ => {
                self.problem(
                    value.span(),
                    format!("{what} must be a status such as 200 or a range such as \"200-399\""),
                );
                None
            }
        }
    }

    /// A size: a number of bytes, or a string such as `"200MB"`, `"512MiB"`, `"1G"`.
    fn bytes(&mut self, value: &Value<'_>, what: &str) -> Option<u64> {
        let parsed = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok()),
            DeValue::String(text) => parse_size(text),
            _ => None,
        };
        match parsed {
            Some(n) if n >= 1024 * 1024 => Some(n),
            _ => {
                self.problem(
                    value.span(),
                    format!("{what} must be a size of at least 1MB, such as \"200MB\" or \"1GiB\""),
                );
                None
            }
        }
    }

    fn backoff(&mut self, value: &Value<'_>, ctx: &str, defaults: Backoff) -> Option<Backoff> {
        let what = format!("{ctx}: `backoff`");
        let table = self.table(value, &what)?;
        let mut backoff = defaults;
        let before = self.problems.len();
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "initial" => {
                    if let Some(d) = self.duration(v, &format!("{ctx}: `backoff.initial`")) {
                        if d < Duration::from_millis(1) {
                            self.problem(
                                v.span(),
                                format!("{ctx}: `backoff.initial` must be at least 1ms, or a crashing program would be restarted in a busy loop"),
                            );
                        }
                        backoff.initial = d;
                    }
                }
                "max" => {
                    if let Some(d) = self.duration(v, &format!("{ctx}: `backoff.max`")) {
                        backoff.max = d;
                    }
                }
                other => self.unknown_key(key.span(), &format!("{what}: "), other, BACKOFF_KEYS),
            }
        }
        if self.problems.len() == before && backoff.max < backoff.initial {
            self.problem(
                value.span(),
                format!(
                    "{what}: max ({}) is shorter than initial ({})",
                    humantime::format_duration(backoff.max),
                    humantime::format_duration(backoff.initial)
                ),
            );
        }
        Some(backoff)
    }

    fn crash_loop(
        &mut self,
        value: &Value<'_>,
        ctx: &str,
        defaults: CrashLoop,
    ) -> Option<CrashLoop> {
        let what = format!("{ctx}: `crash_loop`");
        let table = self.table(value, &what)?;
        let mut crash_loop = defaults;
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "max_exits" => {
                    if let Some(n) = self.integer(v, &format!("{ctx}: `crash_loop.max_exits`"), 1) {
                        crash_loop.max_exits = n;
                    }
                }
                "window" => {
                    if let Some(d) = self.duration(v, &format!("{ctx}: `crash_loop.window`")) {
                        if d.is_zero() {
                            self.problem(
                                v.span(),
                                format!("{ctx}: `crash_loop.window` must be longer than 0s"),
                            );
                        }
                        crash_loop.window = d;
                    }
                }
                other => self.unknown_key(key.span(), &format!("{what}: "), other, CRASH_LOOP_KEYS),
            }
        }
        Some(crash_loop)
    }
}

fn find<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Value<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// The known key nearest to a mistyped one, if it is near enough to be a likely typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            hostname: "Door-Pi.local".into(),
            is_root: false,
            default_state_dir: PathBuf::from("/var/lib/respawn"),
            user_exists: |name| name == "pi",
            password: None,
            read_file: |path| match path.to_str() {
                Some("/etc/respawn/mqtt-password") => Ok("s3cret\n".into()),
                Some("/etc/respawn/empty") => Ok("\n".into()),
                _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
            tls_check: |files| match &files.ca_file {
                Some(p) if p.ends_with("bad-ca.pem") => {
                    Err(respawn_common::mqtt::TlsError::NoCertificate(p.clone()))
                }
                _ => Ok(()),
            },
        }
    }

    fn root_env() -> Environment {
        Environment {
            is_root: true,
            ..env()
        }
    }

    fn parse_ok(text: &str) -> Config {
        match parse(text, Path::new("/etc/respawn"), &env()) {
            Ok(c) => c,
            Err(problems) => panic!("unexpected problems: {problems:#?}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        problems_in(text, &env())
    }

    fn problems_in(text: &str, env: &Environment) -> Vec<String> {
        match parse(text, Path::new("/etc/respawn"), env) {
            Ok(c) => panic!("expected problems, got {c:#?}"),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_process_gets_the_documented_defaults() {
        let config = parse_ok("[[process]]\nname = \"web\"\ncommand = [\"ruby\", \"server.rb\"]\n");
        assert_eq!(config.agent.id, "door-pi");
        assert_eq!(config.agent.state_dir, PathBuf::from("/var/lib/respawn"));
        let p = &config.processes[0];
        assert_eq!(
            p,
            &ProcessConfig::new("web", vec!["ruby".into(), "server.rb".into()])
        );
        assert_eq!(p.restart, RestartPolicy::Always);
        assert_eq!(p.backoff.initial, Duration::from_secs(1));
        assert_eq!(p.backoff.max, Duration::from_secs(60));
        assert_eq!(p.stable_after, Duration::from_secs(60));
        assert_eq!(p.crash_loop.max_exits, 5);
        assert_eq!(p.crash_loop.window, Duration::from_secs(600));
        assert_eq!(p.max_restarts, None);
        assert_eq!(p.stop_signal, Signal::SIGTERM);
        assert_eq!(p.stop_timeout, Duration::from_secs(10));
        assert!(p.autostart);
    }

    #[test]
    fn every_key_is_read() {
        let config = parse_ok(
            r#"
            [agent]
            id = "door-pi"
            state_dir = "state"

            [[process]]
            name = "doorbot"
            command = ["ruby", "server.rb", ""]
            cwd = "door"
            env = { PORT = "4567", RACK_ENV = "production" }
            restart = "on-failure"
            backoff = { initial = "500ms", max = "30s" }
            stable_after = "2m"
            crash_loop = { max_exits = 3, window = "1h" }
            max_restarts = 10
            stop_signal = "int"
            stop_timeout = "3s"
            autostart = false
            "#,
        );
        assert_eq!(config.agent.state_dir, PathBuf::from("/etc/respawn/state"));
        let p = &config.processes[0];
        assert_eq!(p.command, ["ruby", "server.rb", ""]);
        assert_eq!(p.cwd.as_deref(), Some(Path::new("/etc/respawn/door")));
        assert_eq!(p.env["PORT"], "4567");
        assert_eq!(p.restart, RestartPolicy::OnFailure);
        assert_eq!(
            p.backoff,
            Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30)
            }
        );
        assert_eq!(p.stable_after, Duration::from_secs(120));
        assert_eq!(
            p.crash_loop,
            CrashLoop {
                max_exits: 3,
                window: Duration::from_secs(3600)
            }
        );
        assert_eq!(p.max_restarts, Some(10));
        assert_eq!(p.stop_signal, Signal::SIGINT);
        assert_eq!(p.stop_timeout, Duration::from_secs(3));
        assert!(!p.autostart);
    }

    #[test]
    fn all_problems_are_reported_at_once_with_their_lines() {
        let found = problems(
            r#"[agent]
id = "Door Pi"

[[process]]
name = "web"
comand = ["x"]

[[process]]
name = "web"
command = []
stop_timeout = "ten seconds"

[[process]]
name = "web"
command = ["ok"]
"#,
        );
        assert_eq!(
            found,
            [
                "line 2: [agent] id \"Door Pi\" is not a valid agent id ([a-z0-9][a-z0-9_-]{0,63}): it must start with a lower-case letter or a digit",
                "line 4: [[process]] \"web\": missing `command`",
                "line 6: [[process]] \"web\": unknown key `comand` (did you mean `command`?)",
                "line 8: [[process]] \"web\": duplicate name (first defined on line 4)",
                "line 10: [[process]] \"web\": `command` must not be empty",
                "line 11: [[process]] \"web\": `stop_timeout`: bad duration \"ten seconds\" (expected number at 0); write e.g. \"10s\", \"500ms\" or \"10m\"",
                "line 13: [[process]] \"web\": duplicate name (first defined on line 4)",
            ]
        );
    }

    #[test]
    fn wrong_types_and_values_are_explained() {
        let found = problems(
            r#"[[process]]
name = "a/b"
command = "ruby server.rb"
restart = "sometimes"
backoff = { initial = "0s", maximum = "1s" }
crash_loop = { max_exits = 0, window = "0s" }
max_restarts = -1
stop_signal = "KILL"
autostart = "yes"
env = { PORT = 4567 }
"#,
        );
        let expected_fragments = [
            "line 2: [[process]] #1: name \"a/b\" is not valid",
            "line 3: [[process]] #1: `command` must be a list of strings",
            "line 4: [[process]] #1: `restart` is \"sometimes\"",
            "line 5: [[process]] #1: `backoff.initial` must be at least 1ms",
            "line 5: [[process]] #1: `backoff`: unknown key `maximum` (known keys: initial, max)",
            "line 6: [[process]] #1: `crash_loop.max_exits` must be a whole number from 1",
            "line 6: [[process]] #1: `crash_loop.window` must be longer than 0s",
            "line 7: [[process]] #1: `max_restarts` must be a whole number from 0",
            "line 8: [[process]] #1: `stop_signal`: \"KILL\" is not a signal a process can handle",
            "line 9: [[process]] #1: `autostart` must be true or false",
            "line 10: [[process]] #1: `env`: PORT must be a string",
        ];
        for fragment in expected_fragments {
            assert!(
                found.iter().any(|p| p.starts_with(fragment)),
                "no problem starts with {fragment:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected_fragments.len(), "{found:#?}");
    }

    #[test]
    fn unknown_sections_and_syntax_errors_are_reported() {
        let found = problems("[agnet]\nid = \"x\"\n");
        assert_eq!(
            found,
            ["line 1: unknown key `agnet` (did you mean `agent`?)"]
        );
        let found = problems("[[process]]\nname = \"x\"\ncommand = [\"a\"\n");
        assert!(found[0].starts_with("line 3: TOML syntax:"), "{found:?}");
    }

    #[test]
    fn user_needs_root_and_an_existing_account() {
        let text = "[[process]]\nname = \"x\"\ncommand = [\"id\"]\nuser = \"pi\"\n";
        assert_eq!(
            problems(text),
            ["line 4: [[process]] \"x\": `user`: switching to user \"pi\" needs the agent to run as root"]
        );
        let config = parse(text, Path::new("/"), &root_env()).unwrap();
        assert_eq!(config.processes[0].user.as_deref(), Some("pi"));
        let text = text.replace("\"pi\"", "\"nobody-here\"");
        assert_eq!(
            problems_in(&text, &root_env()),
            ["line 4: [[process]] \"x\": `user`: no such user \"nobody-here\""]
        );
    }

    #[test]
    fn absurd_durations_and_nul_bytes_are_refused() {
        let found = problems(
            "[[process]]\nname = \"x\"\ncommand = [\"a\", \"b\\u0000c\"]\nstop_timeout = \"500000000000years\"\nbackoff = { max = \"400days\" }\nenv = { A = \"x\\u0000\" }\n",
        );
        assert_eq!(
            found,
            [
                "line 3: [[process]] \"x\": `command`: argument 1 must not contain a NUL byte",
                "line 4: [[process]] \"x\": `stop_timeout`: \"500000000000years\" is longer than the limit of 365 days",
                "line 5: [[process]] \"x\": `backoff.max`: \"400days\" is longer than the limit of 365 days",
                "line 6: [[process]] \"x\": `env`: A must not contain a NUL byte",
            ]
        );
    }

    #[test]
    fn backoff_max_below_initial_is_refused() {
        let found = problems(
            "[[process]]\nname = \"x\"\ncommand = [\"a\"]\nbackoff = { initial = \"10s\", max = \"1s\" }\n",
        );
        assert_eq!(
            found,
            ["line 4: [[process]] \"x\": `backoff`: max (1s) is shorter than initial (10s)"]
        );
    }

    #[test]
    fn partial_tables_keep_the_other_defaults() {
        let config = parse_ok(
            "[[process]]\nname = \"x\"\ncommand = [\"a\"]\nbackoff = { max = \"5s\" }\ncrash_loop = { window = \"1m\" }\n",
        );
        let p = &config.processes[0];
        assert_eq!(p.backoff.initial, Duration::from_secs(1));
        assert_eq!(p.backoff.max, Duration::from_secs(5));
        assert_eq!(p.crash_loop.max_exits, 5);
    }

    /// What the Debian package installs as /etc/respawn/agent.toml: valid as it is, and its
    /// commented door-server example valid once uncommented.
    #[test]
    fn the_packaged_configuration_and_its_example_are_valid() {
        let packaged = include_str!("../../../packaging/agent.toml");
        assert!(parse_ok(packaged).processes.is_empty());
        let example: String = packaged
            .lines()
            .skip_while(|line| *line != "# [[process]]")
            .filter_map(|line| line.strip_prefix("# "))
            .map(|line| format!("{line}\n"))
            .collect();
        let config = parse_ok_as_root(&example);
        assert_eq!(config.processes[0].name, "doorbot");
        assert!(config.processes[0].health.is_some());
    }

    /// docs/raspberry-pi.md has the reader add its TOML snippets, one after the other, to the
    /// packaged file: every stage must stay valid.
    #[test]
    fn the_raspberry_pi_guide_builds_a_valid_configuration() {
        let guide = include_str!("../../../docs/raspberry-pi.md");
        let agent_part = &guide[..guide.find("## 7.").expect("the alerts step")];
        let mut config = include_str!("../../../packaging/agent.toml").to_owned();
        let mut in_block = false;
        let mut snippets = 0;
        for line in agent_part.lines() {
            match (in_block, line) {
                (false, "```toml") => in_block = true,
                (true, "```") => {
                    in_block = false;
                    snippets += 1;
                    if let Err(problems) = parse(&config, Path::new("/etc/respawn"), &root_env()) {
                        panic!("after snippet {snippets}:\n{config}\n{problems:#?}");
                    }
                }
                (true, line) => {
                    config.push_str(line);
                    config.push('\n');
                }
                (false, _) => {}
            }
        }
        assert_eq!(snippets, 3, "the process, the broker and the operator");
        let config = parse_ok_as_root(&config);
        assert_eq!(config.agent.id, "door-pi");
        assert!(config.mqtt.is_some());
        assert_eq!(config.operators.len(), 1);
        assert_eq!(config.processes[0].user.as_deref(), Some("pi"));
    }

    fn parse_ok_as_root(text: &str) -> Config {
        match parse(text, Path::new("/etc/respawn"), &root_env()) {
            Ok(c) => c,
            Err(problems) => panic!("unexpected problems: {problems:#?}"),
        }
    }

    #[test]
    fn an_empty_file_is_a_valid_agent_with_nothing_to_do() {
        let config = parse_ok("");
        assert!(config.processes.is_empty());
    }

    #[test]
    fn mqtt_section_with_defaults_and_every_key() {
        let config = parse_ok("[mqtt]\nurl = \"mqtt://broker.lan\"\n");
        let mqtt = config.mqtt.unwrap();
        assert_eq!(mqtt.url.to_string(), "mqtt://broker.lan:1883");
        assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(mqtt.heartbeat, Duration::from_secs(30));
        assert_eq!(mqtt.topics.prefix(), "respawn/v1");
        assert_eq!(mqtt.spool_limit, 10_000);
        assert_eq!((mqtt.username, mqtt.password), (None, None));

        let config = parse_ok(
            r#"
            [mqtt]
            url = "mqtt://10.0.0.1:1884"
            username = "door-pi"
            password_file = "mqtt-password"
            keep_alive = "10s"
            topic_prefix = "site-a/respawn"
            heartbeat = "5s"
            spool_limit = 100
            "#,
        );
        let mqtt = config.mqtt.unwrap();
        assert_eq!(mqtt.username.as_deref(), Some("door-pi"));
        assert_eq!(mqtt.password, Some(Secret("s3cret".into())));
        assert_eq!(format!("{:?}", mqtt.password), "Some(Secret(..))");
        assert_eq!(mqtt.topics.prefix(), "site-a/respawn");
        assert_eq!(mqtt.spool_limit, 100);
    }

    #[test]
    fn health_checks_and_limits() {
        let config = parse_ok(
            r#"
            [[process]]
            name = "web"
            command = ["ruby", "server.rb"]
            max_memory = "200MB"
            restart_every = "1d"
            [process.health]
            http = "http://127.0.0.1:4567/health"
            status = "200-299"
            body = "ok"
            interval = "5s"
            timeout = "1s"
            failures = 2
            grace = "10s"

            [[process]]
            name = "db"
            command = ["db"]
            sd_notify = true
            watchdog = "30s"
            health = { tcp = "127.0.0.1:5432" }

            [[process]]
            name = "job"
            command = ["job"]
            health = { exec = ["./check.sh", "--quick"] }
            "#,
        );
        let web = &config.processes[0];
        let check = web.health.as_ref().unwrap();
        assert_eq!(
            check.probe,
            Probe::Http {
                url: "http://127.0.0.1:4567/health".into(),
                host: "127.0.0.1".into(),
                port: 4567,
                path: "/health".into(),
                status: (200, 299),
                body: Some("ok".into()),
            }
        );
        assert_eq!(
            (check.interval, check.timeout, check.failures, check.grace),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                2,
                Duration::from_secs(10)
            )
        );
        assert_eq!(web.max_memory, Some(200_000_000));
        assert_eq!(web.restart_every, Some(Duration::from_secs(86_400)));
        assert!(web.awaits_readiness());
        let db = &config.processes[1];
        assert!(db.sd_notify && db.awaits_readiness());
        assert_eq!(db.watchdog, Some(Duration::from_secs(30)));
        let defaults = db.health.as_ref().unwrap();
        assert_eq!(
            (
                defaults.interval,
                defaults.timeout,
                defaults.failures,
                defaults.grace
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(2),
                3,
                Duration::from_secs(30)
            ),
            "the defaults"
        );
        assert_eq!(
            config.processes[2].health.as_ref().unwrap().probe,
            Probe::Exec {
                command: vec!["./check.sh".into(), "--quick".into()]
            }
        );
        assert!(
            !parse_ok("[[process]]\nname = \"a\"\ncommand = [\"x\"]\n").processes[0]
                .awaits_readiness()
        );

        let found = problems(
            r#"[[process]]
name = "a"
command = ["x"]
watchdog = "30s"
max_memory = "lots"
restart_every = "5s"
[process.health]
http = "https://example.org/"
tcp = "nowhere"
status = "600"
interval = "1s"
timeout = "5s"
speed = 1
"#,
        );
        for expected in [
            "line 4: [[process]] \"a\": `watchdog` needs `sd_notify = true`",
            "line 5: [[process]] \"a\": `max_memory` must be a size of at least 1MB",
            "line 6: [[process]] \"a\": `restart_every` must be at least 1m",
            "line 8: [[process]] \"a\": `health.http`: \"https://example.org/\" must start with http://",
            "line 9: [[process]] \"a\": `health.tcp`: \"nowhere\" is not HOST:PORT",
            "line 10: [[process]] \"a\": `health.status` must be a status such as 200",
            "[[process]] \"a\": `health`: unknown key `speed`",
        ] {
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{expected:?} in {found:#?}"
            );
        }
        let both = problems(
            "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", exec = [\"y\"], interval = \"1s\", timeout = \"5s\" }\n",
        );
        assert!(
            both.iter()
                .any(|p| p.contains("one of `http`, `tcp` or `exec`, not several")),
            "{both:?}"
        );
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_size("200MB"), Some(200_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("1.5G"), Some(1_500_000_000));
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        assert_eq!(parse_size("12 kb"), Some(12_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1MB"), None);
        assert_eq!(parse_size("1e400"), None);
    }

    #[test]
    fn notify_says_which_failures_are_alerted() {
        let config = parse_ok(
            "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nnotify = \"loop_only\"\n\n[[process]]\nname = \"b\"\ncommand = [\"x\"]\n",
        );
        assert_eq!(config.processes[0].notify, Notify::LoopOnly);
        assert_eq!(config.processes[1].notify, Notify::Every, "the default");
        assert_eq!(
            problems("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nnotify = \"sometimes\"\n"),
            ["line 4: [[process]] \"a\": `notify`: \"sometimes\" is not one of \"every\", \"loop_only\", \"off\""]
        );
    }

    #[test]
    fn the_password_may_come_from_the_environment_but_the_file_wins() {
        let env = Environment {
            password: Some("from-env".into()),
            ..env()
        };
        let parse_with = |text: &str| {
            parse(text, Path::new("/etc/respawn"), &env)
                .expect("valid")
                .mqtt
                .expect("[mqtt]")
                .password
        };
        let base = "[mqtt]\nurl = \"mqtt://b\"\nusername = \"door-pi\"\n";
        assert_eq!(parse_with(base), Some(Secret("from-env".into())));
        assert_eq!(
            parse_with(&format!(
                "{base}password_file = \"/etc/respawn/mqtt-password\"\n"
            )),
            Some(Secret("s3cret".into()))
        );
        assert_eq!(
            parse_with("[mqtt]\nurl = \"mqtt://b\"\n"),
            None,
            "no username, no password"
        );
    }

    #[test]
    fn mqtt_problems_are_reported() {
        let found = problems(
            r#"[mqtt]
url = "tcp://broker"
password_file = "missing"
keep_alive = "1s"
topic_prefix = "a/#"
heartbeat = "0s"
spool_limit = 0
qos = 2
"#,
        );
        let expected = [
            "line 2: [mqtt] url: \"tcp://broker\" is not a broker URL",
            "line 3: [mqtt] password_file needs a username",
            "line 3: [mqtt] password_file /etc/respawn/missing: entity not found",
            "line 4: [mqtt] keep_alive must be between 5s and 18h",
            "line 5: [mqtt] topic_prefix: topic prefix \"a/#\" must be",
            "line 6: [mqtt] heartbeat must be at least 1s",
            "line 7: [mqtt] spool_limit must be a whole number from 1",
            "line 8: [mqtt]: unknown key `qos`",
        ];
        for fragment in expected {
            assert!(
                found.iter().any(|p| p.starts_with(fragment)),
                "no {fragment:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        assert_eq!(
            problems("[mqtt]\nusername = \"x\"\n"),
            ["line 1: [mqtt]: missing `url`, e.g. url = \"mqtt://192.168.1.10:1883\""]
        );
    }

    #[test]
    fn an_embedded_broker_is_reported_to_unless_mqtt_says_otherwise() {
        let config = parse_ok("[broker]\nlisten = \"0.0.0.0:18830\"\n");
        assert_eq!(
            config.broker.unwrap().listen,
            "0.0.0.0:18830".parse().unwrap()
        );
        assert_eq!(
            config.mqtt.unwrap().url.to_string(),
            "mqtt://127.0.0.1:18830"
        );
        let config =
            parse_ok("[broker]\nlisten = \"127.0.0.1:1\"\n[mqtt]\nurl = \"mqtt://elsewhere\"\n");
        assert_eq!(config.mqtt.unwrap().url.host, "elsewhere");
        assert_eq!(
            problems("[broker]\nlisten = \"localhost\"\n"),
            ["line 2: [broker] listen \"localhost\" is not an address with a port, e.g. \"127.0.0.1:1883\""]
        );
    }

    #[test]
    fn tls_files_belong_to_mqtts_and_are_checked() {
        let config = parse_ok(
            "[mqtt]\nurl = \"mqtts://broker.lan\"\nca_file = \"ca.pem\"\ncert_file = \"door.pem\"\nkey_file = \"door.key\"\n",
        );
        let mqtt = config.mqtt.unwrap();
        assert_eq!(mqtt.url.port, 8883);
        assert_eq!(
            mqtt.tls.ca_file.as_deref(),
            Some(Path::new("/etc/respawn/ca.pem"))
        );
        assert_eq!(
            mqtt.tls.key_file.as_deref(),
            Some(Path::new("/etc/respawn/door.key"))
        );
        assert_eq!(
            problems("[mqtt]\nurl = \"mqtt://broker\"\nca_file = \"ca.pem\"\n"),
            ["line 1: [mqtt]: ca_file, cert_file and key_file need an mqtts:// url"]
        );
        assert_eq!(
            problems("[mqtt]\nurl = \"mqtts://broker\"\nca_file = \"bad-ca.pem\"\n"),
            ["line 1: [mqtt]: /etc/respawn/bad-ca.pem holds no PEM certificate"]
        );
    }

    #[test]
    fn operators_with_their_permissions() {
        let key = respawn_common::signing::SigningKey::generate("alice").unwrap();
        let bob_key = respawn_common::signing::SigningKey::generate("bob").unwrap();
        let config = parse_ok(&format!(
            "[agent]\nallow_unsigned_commands = true\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\nallow = [\"restart\", \"logs\"]\nprocesses = [\"door*\"]\n\n[[operator]]\nname = \"bob\"\npublic_key = \"{}\"\n",
            key.public_line(),
            bob_key.public_line()
        ));
        assert!(config.agent.allow_unsigned_commands);
        let alice = &config.operators[0];
        assert_eq!(alice.key, key.verifying_key());
        assert_eq!(alice.allow, [CommandName::Restart, CommandName::Logs]);
        assert_eq!(alice.processes, ["door*"]);
        let bob = &config.operators[1];
        assert_eq!(bob.allow, CommandName::ALL, "everything by default");
        assert_eq!(bob.processes, ["*"]);
        assert!(
            !parse_ok("").agent.allow_unsigned_commands,
            "signed only by default"
        );

        assert_eq!(
            problems(&format!(
                "[[operator]]\nname = \"carol\"\npublic_key = \"{}\"\n",
                bob_key.public_line()
            )),
            ["line 3: [[operator]] \"carol\": `public_key`: this is the key of \"bob\", whose commands are signed as \"bob\": name the operator \"bob\", or make a key for \"carol\""]
        );

        let found = problems(
            "[[operator]]\nname = \"a b\"\npublic_key = \"ssh-rsa AAAA\"\nallow = [\"reboot\"]\nprocesses = [\"a/b\"]\n\n[[operator]]\nname = \"x\"\n",
        );
        let expected = [
            "line 2: [[operator]] \"a b\": `name`: \"a b\" is not a valid name",
            "line 3: [[operator]] \"a b\": `public_key`: not a respawn public key",
            "line 4: [[operator]] \"a b\": `allow`: \"reboot\" is not a command",
            "line 5: [[operator]] \"a b\": `processes`: \"a/b\" is not a process-name glob",
            "line 7: [[operator]] \"x\": missing `public_key`",
        ];
        for fragment in expected {
            assert!(
                found.iter().any(|p| p.starts_with(fragment)),
                "no {fragment:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn typo_suggestions_only_when_close() {
        assert_eq!(closest("comand", PROCESS_KEYS), Some("command"));
        assert_eq!(closest("stop_sigal", PROCESS_KEYS), Some("stop_signal"));
        assert_eq!(closest("zzzzzz", PROCESS_KEYS), None);
    }
}
