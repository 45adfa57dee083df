//! `event`: what happened to a process, and the audit of every command, one at a time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{is_zero, version, Reason, ReplyStatus};
use crate::status::{is_false, ExitStatus, LogLine};

/// Lines of output an exit event carries at most (`log_tail`).
pub const TAIL_LINES: usize = 20;
/// Bytes kept of each of those lines: a longer one is cut (at a character's end) and the
/// event says `log_truncated`.
pub const TAIL_LINE_BYTES: usize = 512;
/// Bytes the whole tail may take as JSON, so that an event stays a few KiB.
pub const TAIL_BYTES: usize = 4096;

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
    Stopped {
        /// It left the agent's configuration (a reload, a remote change): gone, not stopped
        /// by anyone. Absent otherwise.
        #[serde(default, skip_serializing_if = "is_false")]
        removed: bool,
    },
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
    /// Every kind an agent sends, as [`name`](Self::name) says it: a reader that counts
    /// events shows each at 0 before the first comes (Prometheus' `increase()` misses the
    /// first count of a series that begins at 1).
    pub const NAMES: [&'static str; 10] = [
        "started",
        "exited",
        "spawn_failed",
        "crash_loop",
        "recovered",
        "unhealthy",
        "stopped",
        "failed",
        "vanished",
        "command",
    ];

    /// The `kind` field's value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Exited { .. } => "exited",
            Self::SpawnFailed { .. } => "spawn_failed",
            Self::CrashLoop { .. } => "crash_loop",
            Self::Recovered => "recovered",
            Self::Unhealthy { .. } => "unhealthy",
            Self::Stopped { .. } => "stopped",
            Self::Failed { .. } => "failed",
            Self::Vanished { .. } => "vanished",
            Self::Command { .. } => "command",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_kind_agents_send() {
        for name in EventKind::NAMES {
            // A known kind without its fields is refused; an unknown one reads as `Unknown`.
            match serde_json::from_value::<EventKind>(serde_json::json!({ "kind": name })) {
                Ok(kind) => assert!(kind.name() == name && every_kind_is_named(&kind)),
                Err(e) => assert!(e.to_string().contains("missing field"), "{name}: {e}"),
            }
        }
        let unknown = serde_json::json!({ "kind": "no_such_kind" });
        let unknown = serde_json::from_value::<EventKind>(unknown).unwrap();
        assert_eq!(unknown.name(), "unknown");
    }

    /// A new kind fails to compile here until it is looked at: name it in `NAMES` too.
    fn every_kind_is_named(kind: &EventKind) -> bool {
        use EventKind::*;
        match kind {
            Started { .. }
            | Exited { .. }
            | SpawnFailed { .. }
            | CrashLoop { .. }
            | Recovered
            | Unhealthy { .. }
            | Stopped { .. }
            | Failed { .. }
            | Vanished { .. }
            | Command { .. } => EventKind::NAMES.contains(&kind.name()),
            Unknown => true,
        }
    }
}
