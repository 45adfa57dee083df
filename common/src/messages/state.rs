//! What an agent says of itself and its processes: presence (`state`), each process's state
//! (`proc/{process}`) and the heartbeat, all retained.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::version;
use crate::status::ProcessStatus;

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
