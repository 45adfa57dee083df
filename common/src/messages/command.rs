//! `cmd` and `reply/{requester}`: commands, who may send them, and the replies; and the
//! live lines of a followed process (`logs/{process}`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{is_zero, version, ConfigReport, VERSION};
use crate::status::{is_false, LogLine, ProcessStatus};

/// `{prefix}/{agent}/cmd`: a command. The body travels as a JSON *string* so that a signature
/// can cover its exact bytes; `signature` is where the security layer puts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// `None` when the envelope does not say: a command without a version is refused, not
    /// taken for version 1.
    #[serde(default)]
    pub v: Option<u32>,
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
    /// `null` is as if absent, as for the other optional fields.
    #[serde(
        default,
        deserialize_with = "null_as_false",
        skip_serializing_if = "is_false"
    )]
    pub dry_run: bool,
    /// After this moment the command must not run.
    #[serde(with = "crate::time::rfc3339")]
    pub expires_at: SystemTime,
    /// The agent's session (from its birth message) the command is meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// A flag that may be written `null`, read as false.
fn null_as_false<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or_default())
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
    /// Whether the command changes what runs (an interrupted wait for it leaves it going on),
    /// rather than reading.
    pub fn changes_what_runs(self) -> bool {
        match self {
            Self::Restart | Self::Stop | Self::Start | Self::ConfigApply | Self::ConfigRollback => {
                true
            }
            Self::Logs | Self::Status | Self::Follow | Self::ConfigGet | Self::Unknown => false,
        }
    }

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
    /// `logs`: set when lines were left out to keep the reply small; `status`: when
    /// processes were.
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
    /// When the count of the process's lines began (see [`LogBatch::numbered_since`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub numbered_since: Option<SystemTime>,
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
    /// When this count of lines began at 0: the agent's start, or the process's return to
    /// its configuration. Another time means the numbers started again (older agents leave
    /// it out; from them a smaller `seq` says it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::rfc3339_opt"
    )]
    pub numbered_since: Option<SystemTime>,
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
