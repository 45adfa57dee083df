//! What the alert rules know: the kinds of alert, what an alert says, and the state they
//! keep — serialisable, so that a restarted alerter neither repeats nor forgets.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use respawn_common::messages::{AgentState, Notify, Presence};
use respawn_common::status::{ExitStatus, LogLine};
use respawn_common::time::ClockOffset;
use serde::{Deserialize, Serialize};

use crate::repeats::Repeats;

/// How the rules behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// An agent is reported offline (or unresponsive) only once it has been so this long.
    pub grace: Duration,
    /// While an alert stays active it is repeated this often; zero: never.
    pub remind_every: Duration,
    /// A process is back once it has run this long without failing again.
    pub resolve_after: Duration,
    /// Where the alerter's own log is read (`journalctl -u respawn-alerts.service -n 50`),
    /// when it runs as a service: said with its broker's alert.
    pub own_log: Option<String>,
}

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A process exited unasked with a failure.
    Crashed,
    /// A process exits more often than its crash-loop limit allows.
    CrashLoop,
    /// A program could not be started.
    SpawnFailed,
    /// The agent gave up restarting a process.
    Failed,
    /// A process ran but did not work (health check, watchdog, memory) and was restarted.
    Unhealthy,
    /// An agent is offline or its connection was lost.
    Offline,
    /// An agent that claims to be online stopped sending heartbeats.
    Stale,
    /// The alerter itself cannot reach the broker: nothing of the fleet is seen. Its key's
    /// `agent` is the broker's URL.
    BrokerUnreachable,
    /// An agent dropped events it could not keep (its spool full, its disk full, or lost in
    /// a crash of the agent), as its next event says: told once, nothing to resolve.
    EventsLost,
}

impl AlertKind {
    pub const ALL: [Self; 9] = [
        Self::Crashed,
        Self::CrashLoop,
        Self::SpawnFailed,
        Self::Failed,
        Self::Unhealthy,
        Self::Offline,
        Self::Stale,
        Self::BrokerUnreachable,
        Self::EventsLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crashed => "crashed",
            Self::CrashLoop => "crash_loop",
            Self::SpawnFailed => "spawn_failed",
            Self::Failed => "failed",
            Self::Unhealthy => "unhealthy",
            Self::Offline => "offline",
            Self::Stale => "stale",
            Self::BrokerUnreachable => "broker_unreachable",
            Self::EventsLost => "events_lost",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// About an agent as a whole (or the broker) rather than one process.
    pub fn is_agent_level(self) -> bool {
        matches!(
            self,
            Self::Offline | Self::Stale | Self::BrokerUnreachable | Self::EventsLost
        )
    }
}

/// One alert's identity: at most one is active per key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub kind: AlertKind,
}

impl AlertKey {
    pub(super) fn process(agent: &str, process: &str, kind: AlertKind) -> Self {
        Self {
            agent: agent.to_owned(),
            process: Some(process.to_owned()),
            kind,
        }
    }

    pub(super) fn agent(agent: &str, kind: AlertKind) -> Self {
        Self {
            agent: agent.to_owned(),
            process: None,
            kind,
        }
    }

    /// `agent/process`, or the agent alone.
    pub fn subject(&self) -> String {
        match &self.process {
            Some(p) => format!("{}/{p}", self.agent),
            None => self.agent.clone(),
        }
    }
}

/// Where an alert stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Firing,
    Reminder,
    Resolved,
    /// The message of `respawnctl alerts test`: about nothing, sent at once, never queued.
    Test,
}

/// What the notices say about the problem, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
    /// The kernel killed it for want of memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// With `oom_killed`: the memory limit the kernel enforced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// Automatic restarts before the latest exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// Failures seen while the alert is active, the first included.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<LogLine>,
    /// Why the program could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For the alerter's own broker alert: how to read the alerter's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_command: Option<String>,
    #[serde(
        default,
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_start: Option<SystemTime>,
    /// For a crash loop: exits within the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_exits: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_window_secs: Option<u64>,
    /// For an agent: how it went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
    /// For a resolved notice: what put it right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// For events lost: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
}

/// One thing to tell the targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub key: AlertKey,
    pub phase: Phase,
    /// When the notice was made.
    #[serde(with = "respawn_common::time::rfc3339")]
    pub at: SystemTime,
    /// When the problem began.
    #[serde(with = "respawn_common::time::rfc3339")]
    pub since: SystemTime,
    pub facts: Facts,
}

/// Everything the rules remember.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub(super) agents: BTreeMap<String, AgentTrack>,
    #[serde(default)]
    pub(super) active: Vec<Active>,
    #[serde(default)]
    pub(super) seen: SeenIds,
    /// The latest events of each agent, while the alerter runs: a fleet's worth of events
    /// between an event and its repeat (a spool sent again) is beyond `seen`. Not in the
    /// file, which it would make kilobytes an agent larger, rewritten every second.
    #[serde(skip)]
    pub(super) repeats: Repeats,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct AgentTrack {
    #[serde(default)]
    pub(super) presence: Option<Presence>,
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    pub(super) down_since: Option<SystemTime>,
    /// When the latest heartbeat (or birth) arrived, by this side's clock.
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    pub(super) heard_at: Option<SystemTime>,
    #[serde(default)]
    pub(super) heartbeat_secs: Option<u64>,
    /// The session of its latest birth, while it is online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) session: Option<String>,
    /// When its latest heartbeat was made, by its clock: what "last heard from" says. The
    /// time one is read is no such thing: a retained heartbeat is read again at every
    /// reconnection of the alerter.
    #[serde(
        default,
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) last_beat: Option<SystemTime>,
    /// When its current run began, by its clock (agents before this field do not say).
    #[serde(
        default,
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) run_started: Option<SystemTime>,
    #[serde(default)]
    pub(super) processes: BTreeMap<String, ProcTrack>,
    /// How far its clock is off ours, from its heartbeats. Kept: after a restart of the
    /// alerter, the events its session kept come before the retained heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) clock: Option<ClockOffset>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct ProcTrack {
    #[serde(default)]
    pub(super) notify: Notify,
    /// Since when it runs, by this side's clock.
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    pub(super) up_since: Option<SystemTime>,
    /// Whether its latest exit was asked for (a stop, restart or shutdown).
    #[serde(default)]
    pub(super) exit_requested: bool,
    /// Its latest failed exit, with the lines before it: a crash loop or a giving up is
    /// reported with it, also where the crash itself was not (`notify = "loop_only"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) last_crash: Option<Facts>,
    /// Its latest state, when that is a stop nobody asked for by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) quiet_stop: Option<QuietStop>,
    /// Whether a state of it was seen while its agent was up: a loop under way is alerted
    /// from the first such. A track kept by an alerter from before this field knew its states
    /// already.
    #[serde(default = "already_seen")]
    pub(super) status_seen: bool,
    /// Whether its agent says it is in a crash loop: until it says otherwise, however long
    /// the process runs, the loop's alert stays (its next exit restarts it at the longest
    /// backoff, and no new crash-loop event comes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) in_crash_loop: bool,
    /// Since when its latest state holds, by its agent's clock: an event older than that
    /// (spooled through an outage) says nothing of how it is now.
    #[serde(
        default,
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) state_since: Option<SystemTime>,
}

/// A process stopped, not by hand and not after a failed start, by its agent's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct QuietStop {
    #[serde(with = "respawn_common::time::rfc3339")]
    pub(super) since: SystemTime,
    #[serde(
        default,
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) last_exit: Option<SystemTime>,
}

impl super::Rules {
    /// Whether `state` is the birth of `agent` already known: an agent says it again with
    /// each heartbeat, and a restarted alerter reads it afresh. No news: it ends neither the
    /// agent's silence nor its alerts.
    pub fn knows_birth(&self, agent: &str, state: &AgentState) -> bool {
        let track = self.state.agents.get(agent);
        let online = |presence| presence == Some(Presence::Online);
        online(Some(state.state))
            && state.session.is_some()
            && track.is_some_and(|t| online(t.presence) && t.session == state.session)
    }
}

impl QuietStop {
    /// Whether the run of its agent that began at `run_started` never ran it: stopped in
    /// that run, with no exit in it (`autostart = false`). A crash that its restart policy
    /// leaves stopped has its exit in the run, and is still broken.
    pub(super) fn left_off_by(&self, run_started: SystemTime) -> bool {
        self.since >= run_started && self.last_exit.is_none_or(|exit| exit < run_started)
    }
}

fn already_seen() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Active {
    pub(super) key: AlertKey,
    #[serde(with = "respawn_common::time::rfc3339")]
    pub(super) since: SystemTime,
    /// When it was last told (fired or reminded).
    #[serde(with = "respawn_common::time::rfc3339")]
    pub(super) told: SystemTime,
    pub(super) facts: Facts,
}

/// Event ids already handled: the agent delivers at least once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SeenIds {
    pub(super) order: VecDeque<String>,
    #[serde(skip)]
    pub(super) set: HashSet<String>,
}

/// How many event ids are kept in the file, for the redeliveries after a restart of the
/// alerter (those within one reconnection), few enough to keep the file small.
const SEEN_IDS: usize = 2_000;

impl SeenIds {
    /// Whether `id` is new (and remembers it).
    pub(super) fn insert(&mut self, id: &str) -> bool {
        if self.set.len() != self.order.len() {
            self.set = self.order.iter().cloned().collect();
        }
        if !self.set.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        while self.order.len() > SEEN_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}
