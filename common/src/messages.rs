//! The payloads of the MQTT protocol, version 1. Every message carries `"v": 1`.
//!
//! Readers are lenient by design, so that agents and controllers of different versions work
//! together: unknown fields are ignored, and an unknown event kind, presence, command or reply
//! status reads as `Unknown` instead of failing the whole message.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::status::{ExitStatus, LogLine, ProcessStatus};

/// The protocol version written into every message.
pub const VERSION: u32 = 1;

use crate::status::is_false;

fn version() -> u32 {
    VERSION
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether an agent is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected (the birth message).
    Online,
    /// Disconnected on purpose (the agent shut down).
    Offline,
    /// Disconnected without saying goodbye: the broker published the Last Will.
    Lost,
    #[serde(other)]
    Unknown,
}

/// `{prefix}/{agent}/state`, retained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    #[serde(default = "version")]
    pub v: u32,
    pub agent: String,
    pub state: Presence,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The machine's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The processes the agent supervises.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Random for every connection of the agent; commands will be bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the agent went online or offline (absent in the Last Will, which the broker sends
    /// later).
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<SystemTime>,
    /// When this run of the agent began: a process it reports stopped, with its last exit
    /// before then, was left off by this run (`autostart = false`), not kept down by a crash.
    #[serde(
        default,
        with = "crate::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub started: Option<SystemTime>,
    /// The heartbeat interval, so that readers know when a heartbeat is overdue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// How the agent keeps each program's processes together: `cgroup` (nothing escapes a
    /// stop) or `process-group` (a daemon that starts a session of its own does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<String>,
}

/// `{prefix}/{agent}/proc/{process}`, retained; an empty payload means the process was removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    #[serde(default = "version")]
    pub v: u32,
    pub agent: String,
    #[serde(flatten)]
    pub status: ProcessStatus,
    /// Which of its failures deserve an alert (absent: every one).
    #[serde(default, skip_serializing_if = "Notify::is_every")]
    pub notify: Notify,
}

/// Which failures of a process deserve an alert: set per process in the agent's
/// configuration, honoured by `respawnctl alerts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// Only crash loops and giving up: for a program that may crash now and then.
    LoopOnly,
    /// Never.
    Off,
    /// Every crash, crash loop, failed start and giving up (an unknown value reads as this).
    #[default]
    #[serde(other)]
    Every,
}

impl Notify {
    pub fn is_every(&self) -> bool {
        *self == Self::Every
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Every => "every",
            Self::LoopOnly => "loop_only",
            Self::Off => "off",
        }
    }

    pub const ALL: [Self; 3] = [Self::Every, Self::LoopOnly, Self::Off];
}

/// `{prefix}/{agent}/event`: one lifecycle event. Delivered at least once: readers deduplicate
/// by `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default = "version")]
    pub v: u32,
    /// A UUID, the same when the event is delivered again.
    pub id: String,
    /// Counts the agent's events; it only grows, also across agent restarts.
    pub seq: u64,
    pub agent: String,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Events dropped (from a full spool: the oldest) since the agent's previous event.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Started {
        pid: u32,
        restarts: u32,
    },
    Exited {
        pid: u32,
        status: ExitStatus,
        runtime_ms: u64,
        /// Automatic restarts before this exit.
        restarts: u32,
        /// True when a stop, restart or shutdown asked for the exit, or the agent stopped an
        /// unhealthy process to restart it (then `reason` says why).
        #[serde(default)]
        requested: bool,
        /// With `requested`: the agent stopped it because the agent itself was stopping (a
        /// restart or an upgrade of the agent), which says nothing about the process.
        #[serde(default, skip_serializing_if = "is_false")]
        shutdown: bool,
        /// With `requested`: an earlier run of the agent left it running (it was killed, or
        /// crashed) and this run stopped it before starting anything, so that no program
        /// runs twice. Its status is the last signal sent: the agent was not its parent.
        #[serde(default, skip_serializing_if = "is_false")]
        leftover: bool,
        /// With `requested`: the agent restarted it because its `restart_every` was up — a
        /// restart on schedule, neither asked for nor a failure.
        #[serde(default, skip_serializing_if = "is_false")]
        scheduled: bool,
        /// It did not end within its `stop_timeout` of the stop signal, and was killed
        /// (SIGKILL, with what it started).
        #[serde(default, skip_serializing_if = "is_false")]
        killed_at_stop_timeout: bool,
        #[serde(
            default,
            with = "crate::time::rfc3339_opt",
            skip_serializing_if = "Option::is_none"
        )]
        next_start: Option<SystemTime>,
        /// Why the agent stopped the process itself: what made it unhealthy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The last lines of output before the exit, oldest first.
        #[serde(default)]
        log_tail: Vec<LogLine>,
        /// Set when older lines or long lines were cut to keep the message small.
        #[serde(default, skip_serializing_if = "is_false")]
        log_truncated: bool,
        /// Set when the kernel killed it (or one of its processes) for want of memory.
        #[serde(default, skip_serializing_if = "is_false")]
        oom_killed: bool,
        /// With `oom_killed`: the memory limit (bytes) the kernel enforced on it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory_max: Option<u64>,
    },
    SpawnFailed {
        error: String,
        #[serde(
            default,
            with = "crate::time::rfc3339_opt",
            skip_serializing_if = "Option::is_none"
        )]
        next_start: Option<SystemTime>,
    },
    CrashLoop {
        exits: u32,
        window_secs: u64,
    },
    Recovered,
    /// The process ran but did not work (a failed health check, a missed watchdog ping, too
    /// much memory); it is being restarted.
    Unhealthy {
        reason: String,
    },
    Stopped,
    Failed {
        restarts: u32,
    },
    /// A run that ended while no agent watched it (the agent was dead, or the machine went
    /// down): how it ended is not known. The next `started` of the process follows.
    Vanished {
        pid: u32,
    },
    /// A command arrived over MQTT: who sent it, and what became of it.
    Command {
        cmd_id: String,
        command: String,
        requester: String,
        /// The operator whose signature verified, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signer: Option<String>,
        outcome: ReplyStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// `config_apply` and `config_rollback` that succeeded: the sha256 of the remote
        /// configuration now in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// `config_apply` and `config_rollback` that only checked and said what would change
        /// (as `config diff` and every apply first do): nothing changed.
        #[serde(default, skip_serializing_if = "is_false")]
        dry_run: bool,
        /// What was not audited one by one since the previous audit event, by reason:
        /// rejections over the audit budget (their reason), malformed messages that named no
        /// command (`malformed`), and commands shed because too many were waiting (`shed`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        unaudited: BTreeMap<String, u64>,
    },
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// The `kind` field's value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Exited { .. } => "exited",
            Self::SpawnFailed { .. } => "spawn_failed",
            Self::CrashLoop { .. } => "crash_loop",
            Self::Recovered => "recovered",
            Self::Unhealthy { .. } => "unhealthy",
            Self::Stopped => "stopped",
            Self::Failed { .. } => "failed",
            Self::Vanished { .. } => "vanished",
            Self::Command { .. } => "command",
            Self::Unknown => "unknown",
        }
    }
}

/// The most a reader (`respawnctl`, the hub, the alerter) takes of one agent's report, so
/// that an agent that misbehaves — or a stolen device, which can still publish under its
/// own topics — cannot make a reader hold more than a bounded amount for it: a process state
/// or an event larger than this is ignored (an agent's own are a few KiB: an exit's output
/// is cut to 4 KiB), and so is a process beyond the first [`MAX_PROCESSES_READ`] of an agent.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
pub const MAX_PROCESSES_READ: usize = 1000;

/// Why a process state or an event was not read.
#[derive(Debug, thiserror::Error)]
pub enum UnreadReport {
    #[error("{0} bytes: larger than any report an agent sends")]
    TooLarge(usize),
    #[error(transparent)]
    Invalid(#[from] serde_json::Error),
}

/// A process state or an event, read unless it is larger than [`MAX_REPORT_BYTES`].
pub fn read_report<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, UnreadReport> {
    if payload.len() > MAX_REPORT_BYTES {
        return Err(UnreadReport::TooLarge(payload.len()));
    }
    Ok(serde_json::from_slice(payload)?)
}

/// A heartbeat interval from the network, kept to what makes sense (1 s to a day), so that
/// no deadline made from it can overflow.
pub fn heartbeat_interval_secs(secs: u64) -> u64 {
    secs.clamp(1, 86_400)
}

/// `{prefix}/{agent}/heartbeat`: retained, QoS 0, with a message expiry of three intervals, so
/// that it disappears when the agent stops sending it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default = "version")]
    pub v: u32,
    pub agent: String,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    pub interval_secs: u64,
    /// How long the agent has been running.
    pub uptime_secs: u64,
    /// Processes running, and configured.
    pub running: u32,
    pub processes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_temp_c: Option<f64>,
}

/// `{prefix}/{agent}/cmd`: a command. The body travels as a JSON *string* so that a signature
/// can cover its exact bytes; `signature` is where the security layer puts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    #[serde(default = "version")]
    pub v: u32,
    /// A JSON-encoded [`CommandBody`].
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A signature over the exact bytes of a command's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The operator whose key made it.
    pub key: String,
    /// The algorithm, e.g. `ed25519`.
    pub alg: String,
    /// The signature, base64.
    pub value: String,
}

/// What a command asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBody {
    /// Unique per command; a repeated id gets the earlier reply and never a second run.
    pub cmd_id: String,
    /// The agent that is to act; any other agent rejects the command.
    pub agent: String,
    /// Replies go to `{prefix}/{agent}/reply/{requester}`.
    pub requester: String,
    pub command: CommandName,
    /// The process to act on (all but `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// How many lines `logs` returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// `config_apply`: the new `remote.toml`, at most [`MAX_REMOTE_CONFIG`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `config_apply` (required), `config_rollback` (optional): the sha256 (hex) of the
    /// `remote.toml` it replaces, as `config_get` returned it; refused as `conflict` if it
    /// changed meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// `config_apply`, `config_rollback`: check and say what would change, change nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// After this moment the command must not run.
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: SystemTime,
    /// The agent's session (from its birth message) the command is meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The commands an agent understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandName {
    Restart,
    Stop,
    Start,
    Logs,
    Status,
    /// New lines of a process on its `logs/{process}` topic while the lease holds.
    Follow,
    /// The effective processes and the remote configuration's text and hash.
    ConfigGet,
    /// A new remote configuration (`text`, `base`, `dry_run`).
    ConfigApply,
    /// Back to the remote configuration before the last apply.
    ConfigRollback,
    #[serde(other)]
    Unknown,
}

impl CommandName {
    /// Every command an agent understands.
    pub const ALL: [CommandName; 9] = [
        Self::Restart,
        Self::Stop,
        Self::Start,
        Self::Logs,
        Self::Status,
        Self::Follow,
        Self::ConfigGet,
        Self::ConfigApply,
        Self::ConfigRollback,
    ];

    /// The command named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Logs => "logs",
            Self::Status => "status",
            Self::Follow => "follow",
            Self::ConfigGet => "config_get",
            Self::ConfigApply => "config_apply",
            Self::ConfigRollback => "config_rollback",
            Self::Unknown => "unknown",
        }
    }

    /// What an operator needs in its `allow` list to send it.
    pub fn permission(self) -> Option<Permission> {
        match self {
            Self::Restart => Some(Permission::Restart),
            Self::Stop => Some(Permission::Stop),
            Self::Start => Some(Permission::Start),
            Self::Logs | Self::Follow => Some(Permission::Logs),
            Self::Status => Some(Permission::Status),
            Self::ConfigGet | Self::ConfigApply | Self::ConfigRollback => {
                Some(Permission::Configure)
            }
            Self::Unknown => None,
        }
    }

    /// Whether it acts on one process (and must name it).
    pub fn needs_process(self) -> bool {
        matches!(
            self,
            Self::Restart | Self::Stop | Self::Start | Self::Logs | Self::Follow
        )
    }
}

/// What an `[[operator]]` may do: the words of its `allow` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Restart,
    Stop,
    Start,
    Logs,
    Status,
    /// Change which programs run (`config_get`, `config_apply`, `config_rollback`): as
    /// powerful as root on the device, so never given by default.
    Configure,
}

impl Permission {
    /// Every permission, in the order of the documentation.
    pub const ALL: [Permission; 6] = [
        Self::Restart,
        Self::Stop,
        Self::Start,
        Self::Logs,
        Self::Status,
        Self::Configure,
    ];

    /// What an operator may do when its `allow` list does not say: everything but configure.
    pub const DEFAULT: [Permission; 5] = [
        Self::Restart,
        Self::Stop,
        Self::Start,
        Self::Logs,
        Self::Status,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Logs => "logs",
            Self::Status => "status",
            Self::Configure => "configure",
        }
    }
}

/// The most lines a `logs` or `follow` reply carries.
pub const MAX_LOG_LINES: usize = 1000;

/// The largest `remote.toml` an agent takes over the network.
pub const MAX_REMOTE_CONFIG: usize = 64 * 1024;

/// Where a command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// Valid and under way; a final reply follows.
    Accepted,
    Succeeded,
    Failed,
    /// Not carried out; `reason` says why.
    Rejected,
    #[serde(other)]
    Unknown,
}

impl ReplyStatus {
    /// Whether no further reply follows.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Accepted)
    }
}

/// Why a command was rejected or failed, for programs to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not valid JSON, or fields missing or of the wrong type.
    Malformed,
    /// Not a command this agent knows.
    UnknownCommand,
    /// The process is not in the agent's configuration.
    UnknownProcess,
    /// The command names another agent.
    WrongAgent,
    /// Its `expires_at` has passed.
    Expired,
    /// Another command on the same process is under way.
    Busy,
    /// The `cmd_id` was seen before: a command runs at most once.
    Replayed,
    /// The command carries no signature, and this agent takes only signed commands.
    Unsigned,
    /// The signature does not verify over the body (or uses an unknown algorithm).
    BadSignature,
    /// The signature names an operator this agent does not know.
    UnknownKey,
    /// The operator may not send this command, or not for this process.
    NotAllowed,
    /// The command is bound to an earlier session of the agent (it reconnected or restarted):
    /// read the current `session` from its birth message and sign again.
    StaleSession,
    /// The agent is shutting down.
    ShuttingDown,
    /// The command ran but did not reach its goal (e.g. the program could not start).
    Unsuccessful,
    /// `config_*`: this agent does not take its processes over the network
    /// (`[agent] remote_config`).
    RemoteConfigOff,
    /// `config_apply`: the text does not validate; `config.problems` says why, line by line.
    InvalidConfig,
    /// `config_apply`: `remote.toml` changed since the `base` the command names.
    Conflict,
    /// `config_apply`: the text is larger than an agent takes.
    TooLarge,
    /// `config_rollback`: there is no earlier remote configuration.
    NoPrevious,
    #[serde(other)]
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownCommand => "unknown_command",
            Self::UnknownProcess => "unknown_process",
            Self::WrongAgent => "wrong_agent",
            Self::Expired => "expired",
            Self::Busy => "busy",
            Self::Replayed => "replayed",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::NotAllowed => "not_allowed",
            Self::StaleSession => "stale_session",
            Self::ShuttingDown => "shutting_down",
            Self::Unsuccessful => "unsuccessful",
            Self::RemoteConfigOff => "remote_config_off",
            Self::InvalidConfig => "invalid_config",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::NoPrevious => "no_previous",
            Self::Other => "other",
        }
    }
}

/// `{prefix}/{agent}/reply/{requester}`: a step of a command. The MQTT 5 correlation data of
/// the command is echoed too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandReply {
    #[serde(default = "version")]
    pub v: u32,
    pub cmd_id: String,
    pub agent: String,
    pub status: ReplyStatus,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Says what happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What a success does not hold to: a `stop` the agent could not save, which ends when
    /// the agent restarts; a signature the agent had no key for, so that the command ran as
    /// an unsigned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// A restart's pids; a start's new pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pid: Option<u32>,
    /// `logs`: the lines, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<LogLine>>,
    /// `logs`: set when lines were left out to keep the reply small.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// `status`: every process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessStatus>>,
    /// `config_*`: the remote configuration, and what an apply or rollback changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigReport>,
    /// `follow`: where the stream of new lines starts, and how long the lease holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<Following>,
}

/// A `follow` lease: new lines of the process go to its `logs/{process}` topic, starting with
/// line number `seq` (the first after the `lines` of the reply), until `lease_secs` after the
/// last `follow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Following {
    pub seq: u64,
    pub lease_secs: u64,
}

/// `{prefix}/{agent}/logs/{process}`: new lines of a followed process (QoS 0, not retained),
/// sent in batches while some follower holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    #[serde(default = "version")]
    pub v: u32,
    pub agent: String,
    pub process: String,
    /// The number of the first line of `lines`; each next line is one more. The count starts
    /// at 0 when the agent starts.
    pub seq: u64,
    pub lines: Vec<LogLine>,
    /// Lines written before these that the stream left out: over the agent's rate bound, or
    /// gone from its memory before they could be sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

/// An agent's remote configuration, in a reply to a `config_*` command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// sha256 (hex) of `remote.toml` as it now is (an agent without one: of the empty text) —
    /// after an apply, of the new one; after a dry run, of the unchanged one.
    pub sha256: String,
    /// `config_get`: the text of `remote.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `config_get`: every process the agent runs, local and remote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ConfiguredProcess>,
    /// `config_apply` and `config_rollback`: what changed (or, for a dry run, would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ConfigChanges>,
    /// A dry run: `changes` says what an apply would do; nothing was changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// `config_apply` with `invalid_config`: every problem of the text, each with its line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<crate::config_file::Problem>,
    /// `config_apply` and `config_rollback`: the processes of `changes.added` and
    /// `changes.changed` that do not run, with why: could not be started (and whether they
    /// are tried again), stopped meanwhile, or still stopping when the reply was due. The
    /// reply comes once every one of them has started or could not, or at that deadline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_started: BTreeMap<String, String>,
}

/// A process of an agent's configuration, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfiguredProcess {
    pub name: String,
    /// Applied over the network (`remote.toml`), not from the local file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote: bool,
}

/// What an apply does to the processes, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {
    /// New, and started.
    pub added: Vec<String>,
    /// New with `autostart = false`: configured, not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_stopped: Vec<String>,
    /// Stopped and gone.
    pub removed: Vec<String>,
    /// Restarted with their new configuration.
    pub changed: Vec<String>,
    /// Changed while stopped by hand: they take the new configuration and stay stopped until
    /// started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_stopped: Vec<String>,
    /// Changed while not running, now with `autostart = false`: they take the new
    /// configuration and are not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_left_off: Vec<String>,
    /// Only what is reported about them changed (`notify`), or, while they run, only how
    /// they are supervised (`restart`, `backoff`, `stop_timeout`, …): taken over without a
    /// restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<String>,
    /// Not touched.
    pub unchanged: Vec<String>,
}

/// What a change does to one group of processes, for the words that tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Started,
    Added,
    Restarted,
    Changed,
    Updated,
    Stopped,
}

/// When a change is told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tense {
    /// Done (an apply, waited for).
    Done,
    /// What a dry run would do.
    Would,
    /// Under way (a local reload, answered before the starts and stops are over).
    Doing,
}

impl ChangeKind {
    pub fn verb(self, tense: Tense) -> &'static str {
        let [done, would, doing] = match self {
            Self::Started => ["started", "would start", "starting"],
            Self::Added => ["added", "would add", "added"],
            Self::Restarted => ["restarted", "would restart", "restarting"],
            Self::Changed => ["changed", "would change", "changed"],
            Self::Updated => ["updated", "would update", "updated"],
            Self::Stopped => ["stopped", "would stop", "stopping"],
        };
        match tense {
            Tense::Done => done,
            Tense::Would => would,
            Tense::Doing => doing,
        }
    }
}

impl ConfigChanges {
    /// The groups of processes a change touches, in the order they are told, each with what
    /// it does to them and a note that goes after each name.
    pub fn groups(&self) -> [(ChangeKind, &[String], &'static str); 7] {
        [
            (ChangeKind::Started, &self.added, ""),
            (
                ChangeKind::Added,
                &self.added_stopped,
                " (autostart off: not started)",
            ),
            (ChangeKind::Restarted, &self.changed, ""),
            (
                ChangeKind::Changed,
                &self.changed_stopped,
                " (stopped by hand: stays stopped until started)",
            ),
            (
                ChangeKind::Changed,
                &self.changed_left_off,
                " (autostart off: not started)",
            ),
            (ChangeKind::Updated, &self.updated, " (no restart)"),
            (ChangeKind::Stopped, &self.removed, ""),
        ]
    }

    fn lists_mut(&mut self) -> [&mut Vec<String>; 8] {
        [
            &mut self.added,
            &mut self.added_stopped,
            &mut self.removed,
            &mut self.changed,
            &mut self.changed_stopped,
            &mut self.changed_left_off,
            &mut self.updated,
            &mut self.unchanged,
        ]
    }

    /// Each list in order of name.
    pub fn sort(&mut self) {
        self.lists_mut().into_iter().for_each(|list| list.sort());
    }

    /// Keeps only the processes `keep` takes.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for list in self.lists_mut() {
            list.retain(|name| keep(name));
        }
    }

    /// Every process the change adds, removes or alters.
    pub fn touched(&self) -> impl Iterator<Item = &String> {
        self.added
            .iter()
            .chain(&self.added_stopped)
            .chain(&self.removed)
            .chain(&self.changed)
            .chain(&self.changed_stopped)
            .chain(&self.changed_left_off)
            .chain(&self.updated)
    }
}

impl CommandReply {
    /// A reply with no result fields.
    pub fn new(cmd_id: &str, agent: &str, status: ReplyStatus) -> Self {
        Self {
            v: VERSION,
            cmd_id: cmd_id.to_owned(),
            agent: agent.to_owned(),
            status,
            at: SystemTime::now(),
            reason: None,
            message: None,
            warning: None,
            old_pid: None,
            new_pid: None,
            lines: None,
            truncated: false,
            processes: None,
            config: None,
            follow: None,
        }
    }

    /// A rejection with its reason and explanation.
    pub fn rejected(cmd_id: &str, agent: &str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason),
            message: Some(message.into()),
            ..Self::new(cmd_id, agent, ReplyStatus::Rejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Stream;
    use std::time::Duration;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_600_000_123)
    }

    #[test]
    fn an_exit_event_has_a_flat_readable_shape() {
        let event = Event {
            v: VERSION,
            id: "6f1c".into(),
            seq: 42,
            agent: "door-pi".into(),
            at: at(),
            process: Some("doorbot".into()),
            dropped_before: 0,
            kind: EventKind::Exited {
                pid: 812,
                status: ExitStatus::Code { code: 1 },
                runtime_ms: 5321,
                restarts: 2,
                requested: false,
                shutdown: false,
                leftover: false,
                scheduled: false,
                killed_at_stop_timeout: false,
                next_start: Some(at()),
                reason: None,
                log_tail: vec![LogLine {
                    at: at(),
                    stream: Stream::Stderr,
                    text: "boom".into(),
                }],
                log_truncated: false,
                oom_killed: false,
                memory_max: None,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1, "id": "6f1c", "seq": 42, "agent": "door-pi",
                "at": "2026-11-25T09:46:40.123Z", "process": "doorbot",
                "kind": "exited", "pid": 812, "status": {"code": 1}, "runtime_ms": 5321,
                "restarts": 2, "requested": false, "next_start": "2026-11-25T09:46:40.123Z",
                "log_tail": [{"at": "2026-11-25T09:46:40.123Z", "stream": "stderr", "text": "boom"}]
            })
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }

    #[test]
    fn readers_tolerate_unknown_kinds_and_fields() {
        let json = r#"{"v":1,"id":"x","seq":1,"agent":"a","at":"2026-11-25T06:26:40Z",
                       "kind":"teleported","where":"mars","extra":{"nested":true}}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.kind, EventKind::Unknown);
        let json = r#"{"v":2,"agent":"a","state":"hibernating","future":1}"#;
        let state: AgentState = serde_json::from_str(json).unwrap();
        assert_eq!(state.state, Presence::Unknown);
        let json = r#"{"cmd_id":"c","agent":"a","status":"queued","at":"2026-11-25T06:26:40Z","reason":"solar_flare"}"#;
        let reply: CommandReply = serde_json::from_str(json).unwrap();
        assert_eq!(
            (reply.status, reply.reason),
            (ReplyStatus::Unknown, Some(Reason::Other))
        );
        assert_eq!(reply.v, VERSION, "a missing version reads as 1");
    }

    #[test]
    fn a_command_body_travels_as_a_string_inside_the_envelope() {
        let body = CommandBody {
            cmd_id: "c1".into(),
            agent: "door-pi".into(),
            requester: "laptop".into(),
            command: CommandName::Restart,
            process: Some("doorbot".into()),
            lines: None,
            text: None,
            base: None,
            dry_run: false,
            expires_at: at(),
            session: None,
        };
        let envelope = CommandEnvelope {
            v: VERSION,
            body: serde_json::to_string(&body).unwrap(),
            signature: None,
        };
        let json = serde_json::to_string(&envelope).unwrap();
        assert!(
            json.starts_with(r#"{"v":1,"body":"{\"cmd_id\":\"c1\""#),
            "{json}"
        );
        let back: CommandEnvelope = serde_json::from_str(&json).unwrap();
        assert_eq!(
            serde_json::from_str::<CommandBody>(&back.body).unwrap(),
            body
        );
        let unknown: CommandBody = serde_json::from_str(
            r#"{"cmd_id":"c","agent":"a","requester":"r","command":"reboot","expires_at":"2026-11-25T06:26:40Z"}"#,
        )
        .unwrap();
        assert_eq!(unknown.command, CommandName::Unknown);
    }

    #[test]
    fn process_reports_flatten_the_status() {
        let report = ProcessReport {
            v: VERSION,
            agent: "a".into(),
            status: ProcessStatus {
                name: "web".into(),
                state: crate::status::ProcessState::Running,
                pid: Some(7),
                since: at(),
                restarts: 0,
                crash_loop: false,
                manually_stopped: false,
                last_exit: None,
                spawn_error: None,
                next_start: None,
                health: None,
                usage: None,
                remote: false,
            },
            notify: Notify::Every,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["name"], "web");
        assert_eq!(json["state"], "running");
        assert!(json.get("notify").is_none(), "the default is left out");
        assert_eq!(
            serde_json::from_value::<ProcessReport>(json.clone()).unwrap(),
            report
        );
        let mut quiet = json.clone();
        quiet["notify"] = "loop_only".into();
        let quiet: ProcessReport = serde_json::from_value(quiet).unwrap();
        assert_eq!(quiet.notify, Notify::LoopOnly);
        let mut future = json;
        future["notify"] = "on_full_moon".into();
        let future: ProcessReport = serde_json::from_value(future).unwrap();
        assert_eq!(future.notify, Notify::Every, "unknown values read as every");
    }
}
