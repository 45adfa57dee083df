//! What an agent says of itself and its processes: presence (`state`), each process's state
//! (`proc/{process}`) and the heartbeat, all retained.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{version, UnreadReport, MAX_PROCESSES_READ};
use crate::ids::validate_process_name;
use crate::status::ProcessStatus;
use crate::time::ClockOffset;

/// The most a reader takes of an agent's `state`: room for the names of
/// [`MAX_PROCESSES_READ`] processes of the longest name a process may have, and the rest.
pub const MAX_STATE_BYTES: usize = 128 * 1024;

/// The longest `version`, `host`, `session` or `containment` a reader takes: an agent's are
/// far shorter (a hostname has at most 64 bytes, a session 32). The hub copies the version
/// into each Home Assistant entity of the agent, thousands of copies.
pub const MAX_STATE_TEXT: usize = 64;

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

impl AgentState {
    /// An agent's `state` as readers take it, so that one that misbehaves (or a stolen
    /// device, which can still publish under its own topics) cannot make them hold or pass on
    /// more than a bounded amount for it: refused when larger than [`MAX_STATE_BYTES`] or with
    /// a text longer than [`MAX_STATE_TEXT`]; names that no process can have (a forgery's, or
    /// junk) are left out, a name said twice is one process (as the agent's file allows), and
    /// names beyond the first [`MAX_PROCESSES_READ`] are not read.
    pub fn read(payload: &[u8]) -> Result<Self, UnreadReport> {
        if payload.len() > MAX_STATE_BYTES {
            return Err(UnreadReport::TooLarge(payload.len()));
        }
        let mut state: Self = serde_json::from_slice(payload)?;
        let texts = [
            ("version", &state.version),
            ("host", &state.host),
            ("session", &state.session),
            ("containment", &state.containment),
        ];
        for (field, text) in texts {
            if let Some(bytes) = text.as_ref().map(String::len) {
                if bytes > MAX_STATE_TEXT {
                    return Err(UnreadReport::TooLong { field, bytes });
                }
            }
        }
        let mut seen = HashSet::new();
        state
            .processes
            .retain(|name| validate_process_name(name).is_ok() && seen.insert(name.clone()));
        state.processes.truncate(MAX_PROCESSES_READ);
        Ok(state)
    }
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

/// A heartbeat interval from the network, kept to what makes sense (1 s to a day), so that
/// no deadline made from it can overflow.
pub fn heartbeat_interval_secs(secs: u64) -> u64 {
    secs.clamp(1, 86_400)
}

/// The message expiry of a heartbeat sent every `interval_secs`: three intervals, so that it
/// disappears from the broker once the agent has missed three.
pub fn heartbeat_expiry_secs(interval_secs: u64) -> u32 {
    u32::try_from(interval_secs.saturating_mul(3).max(1)).unwrap_or(u32::MAX)
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

impl Heartbeat {
    /// How far the agent's clock is off the reader's, from this heartbeat heard at `heard` by
    /// the reader's clock: live (sent as heard), or retained with `left` of its expiry (the
    /// broker counts it down while it keeps the message). `None` when its age cannot be told:
    /// a retained copy that came without its expiry.
    pub fn clock_offset(
        &self,
        heard: SystemTime,
        retained: bool,
        left: Option<Duration>,
    ) -> Option<ClockOffset> {
        let full = Duration::from_secs(u64::from(heartbeat_expiry_secs(self.interval_secs)));
        // A live one is passed on as it comes: its expiry, which a broker may cap, is not
        // needed to tell its age.
        let age = match (retained, left) {
            (false, _) => Duration::ZERO,
            (true, Some(left)) => full.saturating_sub(left),
            (true, None) => return None,
        };
        let sent = heard.checked_sub(age)?;
        Some(ClockOffset::between(self.at, sent))
    }
}
