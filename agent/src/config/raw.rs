//! What a configuration file says, key by key, before it is checked: one serde struct per
//! section, each field a key of the file. Every key is declared here, once; `read` checks each
//! value and fills in the defaults of the types in the parent module.

use respawn_common::config_file::{Field, Nested};
use serde::Deserialize;
use std::time::Duration;

type Text = Field<String>;
type Flag = Field<bool>;
type Time = Field<Duration>;
type Any = Field<toml::Value>;
type List = Field<Vec<String>>;

/// `[agent]`
#[derive(Deserialize)]
pub struct Agent {
    /// `[a-z0-9][a-z0-9_-]{0,63}`; default: the hostname, lower-cased and sanitised.
    pub id: Option<Text>,
    /// Default: `/var/lib/respawn` as root, else `$XDG_STATE_HOME/respawn`.
    pub state_dir: Option<Text>,
    /// Take commands without a signature: anyone who can publish on the broker may command
    /// the agent. Default: false.
    pub allow_unsigned_commands: Option<Flag>,
    /// `auto` (default: a cgroup per process where the agent can manage cgroups, else
    /// process groups), `cgroup` (refuse to start without) or `process-group`.
    pub containment: Option<Text>,
    /// Take `[[process]]` tables over the network (signed `config_apply` from an operator
    /// allowed to `configure`), kept in `remote.toml` in the state directory. Default: false.
    pub remote_config: Option<Flag>,
}

/// `[mqtt]`
#[derive(Deserialize)]
pub struct Mqtt {
    /// Required: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    pub url: Option<Text>,
    /// mqtts: the CA to trust; default: the system's CAs.
    pub ca_file: Option<Text>,
    /// mqtts: a client certificate for mutual TLS, with its key.
    pub cert_file: Option<Text>,
    pub key_file: Option<Text>,
    pub username: Option<Text>,
    /// The password, alone in a file; default: `$RESPAWN_PASSWORD`. Needs a username.
    pub password_file: Option<Text>,
    /// 5 s to 18 h; default 30 s.
    pub keep_alive: Option<Time>,
    /// Default: `respawn/v1`.
    pub topic_prefix: Option<Text>,
    /// At least 1 s; default 30 s. The heartbeat expires after three of these.
    pub heartbeat: Option<Time>,
    /// Events kept on disk while the broker is away; default 10 000.
    pub spool_limit: Option<Any>,
}

/// `[broker]`
#[derive(Deserialize)]
pub struct Broker {
    /// Required: an address and port, such as `127.0.0.1:1883`.
    pub listen: Option<Text>,
}

/// `[[operator]]`
#[derive(Deserialize)]
pub struct Operator {
    /// Required; the name in the key line.
    pub name: Option<Text>,
    /// Required; the line `respawnctl keygen` prints.
    pub public_key: Option<Text>,
    /// The commands this key may send; default: all five.
    pub allow: Option<List>,
    /// Globs of the process names it may act on; default: `["*"]`.
    pub processes: Option<List>,
}

/// `[[process]]`
#[derive(Deserialize)]
pub struct Process {
    /// Required; `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, unique.
    pub name: Option<Text>,
    /// Required: argv, no shell.
    pub command: Option<Any>,
    /// Default: the agent's working directory.
    pub cwd: Option<Text>,
    /// Added to the agent's environment.
    pub env: Option<Any>,
    /// Only when the agent runs as root.
    pub user: Option<Text>,
    /// `always` (default), `on-failure` or `never`.
    pub restart: Option<Text>,
    pub backoff: Option<Nested<Backoff>>,
    /// Uptime after which a run is stable; default 60 s.
    pub stable_after: Option<Time>,
    pub crash_loop: Option<Nested<CrashLoop>>,
    /// Unstable restarts in a row before `failed`; default: never give up.
    pub max_restarts: Option<Any>,
    /// Default: TERM.
    pub stop_signal: Option<Text>,
    /// Default: 10 s.
    pub stop_timeout: Option<Time>,
    /// Default: true.
    pub autostart: Option<Flag>,
    /// `every` (default), `loop_only` or `off`: what `respawnctl alerts` reports.
    pub notify: Option<Text>,
    pub health: Option<Nested<Health>>,
    /// It speaks the systemd notify protocol; default: false.
    pub sd_notify: Option<Flag>,
    /// With sd_notify: a WATCHDOG=1 at least this often; at least 1 s.
    pub watchdog: Option<Time>,
    /// Bytes, or `"200MB"`, `"512MiB"`, `"1G"`; at least 1 MB.
    pub max_memory: Option<Any>,
    /// At least 1 min.
    pub restart_every: Option<Time>,
}

/// `backoff = { … }`: the delays between unstable restarts.
#[derive(Deserialize)]
pub struct Backoff {
    /// Default: 1 s; at least 1 ms.
    pub initial: Option<Time>,
    /// Default: 60 s; not below `initial`.
    pub max: Option<Time>,
}

/// `crash_loop = { … }`
#[derive(Deserialize)]
pub struct CrashLoop {
    /// Default: 5; at least 1.
    pub max_exits: Option<Any>,
    /// Default: 10 min; longer than 0.
    pub window: Option<Time>,
}

/// `[process.health]`: exactly one of `http`, `tcp`, `exec`.
#[derive(Deserialize)]
pub struct Health {
    /// `http://host[:port][/path]`.
    pub http: Option<Text>,
    /// `host:port`.
    pub tcp: Option<Text>,
    /// argv of a command that exits 0 when all is well.
    pub exec: Option<Any>,
    /// http: the statuses that pass, a number or a range; default `"200-399"`.
    pub status: Option<Any>,
    /// http: a text the answer must contain.
    pub body: Option<Text>,
    /// Default: 10 s; at least 100 ms.
    pub interval: Option<Time>,
    /// Default: 2 s; at least 10 ms, not longer than `interval`.
    pub timeout: Option<Time>,
    /// Failed probes in a row that make it unhealthy; default 3.
    pub failures: Option<Any>,
    /// After a start, failures do not count for this long; default 30 s.
    pub grace: Option<Time>,
}
