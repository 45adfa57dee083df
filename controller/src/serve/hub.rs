//! The hub's view of the fleet: the pure fold of the broker's messages (the same [`Fleet`] as
//! `respawnctl status`), the latest events, what is counted for `/metrics`, and what each
//! message changed, for the live pages.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::Event;
use respawn_common::status::{ExitStatus, ProcessState};
use respawn_common::topics::{Topic, Topics};

use crate::fleet::{Agent, Fleet, Liveness};
use crate::output;

/// Events kept for the pages: the newest, of every agent.
const KEPT_EVENTS: usize = 1000;

/// What one message changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An agent's presence, heartbeat or one of its processes.
    Agent(String),
    /// A new event (events come at least once: a repeat changes nothing).
    Event(Box<Event>),
}

/// Everything the hub knows.
#[derive(Debug)]
pub struct Hub {
    topics: Topics,
    fleet: Fleet,
    events: VecDeque<Event>,
    seen: HashSet<String>,
    /// Events by (agent, kind) since the hub started.
    counts: BTreeMap<(String, &'static str), u64>,
    /// When each agent's heartbeat came, and how long it holds: the broker expires a
    /// retained heartbeat for new readers only, so a reader that stays must expire it itself.
    heartbeats: BTreeMap<String, (Instant, Duration)>,
}

impl Hub {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            fleet: Fleet::default(),
            events: VecDeque::new(),
            seen: HashSet::new(),
            counts: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
        }
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Folds one message in, received at `now`; what it changed, if anything.
    pub fn apply(&mut self, topic: &str, payload: &[u8], now: Instant) -> Option<Change> {
        match self.topics.parse(topic)? {
            Topic::Event { agent } => {
                let event: Event = serde_json::from_slice(payload).ok()?;
                // Counted under the agent whose topic it came on, not what it claims.
                if event.agent != agent {
                    return None;
                }
                if !self.seen.insert(event.id.clone()) {
                    return None;
                }
                *self
                    .counts
                    .entry((event.agent.clone(), event.kind.name()))
                    .or_default() += 1;
                self.events.push_back(event.clone());
                if self.events.len() > KEPT_EVENTS {
                    if let Some(old) = self.events.pop_front() {
                        self.seen.remove(&old.id);
                    }
                }
                Some(Change::Event(Box::new(event)))
            }
            parsed @ (Topic::State { .. } | Topic::Process { .. } | Topic::Heartbeat { .. }) => {
                let agent = parsed.agent().to_owned();
                let before = self.fleet.agent(&agent).cloned();
                self.fleet.apply(&self.topics, topic, payload);
                if let Topic::Heartbeat { .. } = parsed {
                    let interval = self
                        .fleet
                        .agent(&agent)
                        .and_then(|a| a.heartbeat.as_ref())
                        .map(|h| Duration::from_secs(h.interval_secs.max(1)));
                    match interval {
                        Some(interval) => {
                            self.heartbeats.insert(agent.clone(), (now, interval * 3));
                        }
                        None => {
                            self.heartbeats.remove(&agent);
                        }
                    }
                }
                (self.fleet.agent(&agent) != before.as_ref()).then_some(Change::Agent(agent))
            }
            Topic::Command { .. } | Topic::Reply { .. } | Topic::Logs { .. } => None,
        }
    }

    /// Forgets every agent (the retained state comes again after a reconnection); the events
    /// and their counts stay.
    pub fn forget_fleet(&mut self) {
        self.fleet = Fleet::default();
        self.heartbeats.clear();
    }

    /// Drops the heartbeats older than three intervals at `now`, as the broker would for a
    /// new reader: their agents show as stale. The agents this changed.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let expired: Vec<String> = self
            .heartbeats
            .iter()
            .filter(|(_, (at, holds))| now.saturating_duration_since(*at) >= *holds)
            .map(|(agent, _)| agent.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|agent| {
                let topic = self.topics.heartbeat(&agent);
                self.apply(&topic, b"", now)
            })
            .collect()
    }

    /// One agent as the pages show it (absent: it left the broker).
    pub fn agent_json(&self, id: &str) -> String {
        let document = match self.fleet.agent(id) {
            Some(agent) => serde_json::to_string(&output::agent_json(id, agent)),
            None => serde_json::to_string(&serde_json::json!({ "agent": id, "gone": true })),
        };
        // Strings, numbers and maps with string keys: serialising cannot fail.
        document.unwrap_or_default()
    }

    /// The newest events first, at most `n`, of `agent` (and `process`) if given.
    pub fn events(&self, agent: Option<&str>, process: Option<&str>, n: usize) -> Vec<&Event> {
        self.events
            .iter()
            .rev()
            .filter(|e| agent.is_none_or(|a| e.agent == a))
            .filter(|e| process.is_none_or(|p| e.process.as_deref() == Some(p)))
            .take(n)
            .collect()
    }

    /// The fleet in Prometheus' text format; `broker`: whether the hub is connected (if not,
    /// the rest is what it last knew).
    pub fn metrics(&self, now: SystemTime, broker: bool) -> String {
        let mut families = Families::default();
        families.add("respawn_hub_broker_up", &[], u8::from(broker));
        for (id, agent) in self.fleet.agents() {
            let up = u8::from(agent.liveness() == Liveness::Online);
            families.add("respawn_agent_up", &[("agent", id)], up);
            if let Some(state) = &agent.state {
                let version = state.version.as_deref().unwrap_or("");
                let host = state.host.as_deref().unwrap_or("");
                let labels = [("agent", id.as_str()), ("version", version), ("host", host)];
                families.add("respawn_agent_info", &labels, 1);
            }
            process_metrics(&mut families, id, agent, now);
        }
        for ((agent, kind), n) in &self.counts {
            families.add(
                "respawn_events_total",
                &[("agent", agent), ("kind", kind)],
                n,
            );
        }
        families.render()
    }
}

fn process_metrics(families: &mut Families, id: &str, agent: &Agent, now: SystemTime) {
    for name in agent.process_names() {
        let Some(process) = agent.processes.get(name) else {
            continue;
        };
        let labels = [("agent", id), ("process", name)];
        let running = process.state == ProcessState::Running;
        families.add("respawn_process_up", &labels, u8::from(running));
        for state in ProcessState::ALL {
            let with_state = [labels[0], labels[1], ("state", state.as_str())];
            let current = u8::from(process.state == state);
            families.add("respawn_process_state", &with_state, current);
        }
        families.add("respawn_process_restarts_total", &labels, process.restarts);
        if process.pid.is_some() {
            let since = process
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let since = since.min(seconds(now));
            families.add("respawn_process_start_time_seconds", &labels, since);
        }
        if let Some(ExitStatus::Code { code }) = process.last_exit.as_ref().map(|e| &e.status) {
            families.add("respawn_process_last_exit_code", &labels, code);
        }
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metric families, each declared once: its type and help, then its samples.
#[derive(Default)]
struct Families {
    samples: BTreeMap<&'static str, Vec<String>>,
}

/// Every metric the hub exports: name, type, help.
const FAMILIES: [(&str, &str, &str); 9] = [
    (
        "respawn_hub_broker_up",
        "gauge",
        "1 while the hub is connected to the broker; else the other values are what it last knew.",
    ),
    (
        "respawn_agent_up",
        "gauge",
        "1 while the agent is online, else 0 (offline, lost, stale).",
    ),
    (
        "respawn_agent_info",
        "gauge",
        "The agent's version and host, as labels; always 1.",
    ),
    (
        "respawn_process_up",
        "gauge",
        "1 while the process is running, else 0.",
    ),
    (
        "respawn_process_state",
        "gauge",
        "1 for the process's current state, 0 for the others.",
    ),
    (
        "respawn_process_restarts_total",
        "counter",
        "Automatic restarts since the process was last started by hand or by its agent's start.",
    ),
    (
        "respawn_process_start_time_seconds",
        "gauge",
        "When the process entered its current state, while it has a pid (Unix time).",
    ),
    (
        "respawn_process_last_exit_code",
        "gauge",
        "The exit code of the process's last exit, when it exited with one.",
    ),
    (
        "respawn_events_total",
        "counter",
        "Events the hub received since it started, by agent and kind.",
    ),
];

impl Families {
    fn add(&mut self, name: &'static str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let sample = match labels.is_empty() {
            true => format!("{name} {value}"),
            false => format!("{name}{{{}}} {value}", labels.join(",")),
        };
        self.samples.entry(name).or_default().push(sample);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for sample in self.samples.get(name).into_iter().flatten() {
                out.push_str(sample);
                out.push('\n');
            }
        }
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_with(messages: &[(&str, serde_json::Value)]) -> Hub {
        let mut hub = Hub::new(Topics::default());
        for (topic, payload) in messages {
            hub.apply(topic, &serde_json::to_vec(payload).unwrap(), Instant::now());
        }
        hub
    }

    fn birth(agent: &str) -> serde_json::Value {
        serde_json::json!({"v": 1, "agent": agent, "state": "online", "version": "0.1.0",
            "host": "pi \"one\"", "processes": ["door"]})
    }

    fn process(agent: &str, state: &str, restarts: u32) -> serde_json::Value {
        serde_json::json!({"v": 1, "agent": agent, "name": "door", "state": state, "pid": 42,
            "since": "2026-12-01T00:00:00Z", "restarts": restarts,
            "last_exit": {"status": {"code": 3}, "at": "2026-12-01T00:00:00Z", "runtime_ms": 5,
                          "restarts": 0, "requested": false}})
    }

    fn event(id: &str, kind: &str) -> serde_json::Value {
        serde_json::json!({"v": 1, "id": id, "seq": 1, "agent": "a", "at": "2026-12-01T00:00:00Z",
            "process": "door", "kind": kind, "exits": 5, "window_secs": 600})
    }

    #[test]
    fn changes_name_the_agent_and_events_come_once() {
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
        let state = json(birth("a"));
        let agent_a = Some(Change::Agent("a".into()));
        assert_eq!(hub.apply("respawn/v1/a/state", &state, now), agent_a);
        assert_eq!(
            hub.apply("respawn/v1/a/state", &state, now),
            None,
            "nothing new"
        );
        let crash = json(event("e1", "crash_loop"));
        let first = hub.apply("respawn/v1/a/event", &crash, now);
        assert!(matches!(first, Some(Change::Event(_))));
        assert_eq!(
            hub.apply("respawn/v1/a/event", &crash, now),
            None,
            "a repeat"
        );
        let forged = json(event("e2", "started"));
        let other = hub.apply("respawn/v1/b/event", &forged, now);
        assert_eq!(other, None, "an event on another agent's topic");
        assert_eq!(hub.apply("elsewhere/a/state", &state, now), None);
        assert_eq!(hub.events(Some("a"), Some("door"), 10).len(), 1);
    }

    #[test]
    fn an_agent_whose_heartbeat_stops_turns_stale() {
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        let mut state = birth("a");
        state["heartbeat_secs"] = 10.into();
        hub.apply(
            "respawn/v1/a/state",
            &serde_json::to_vec(&state).unwrap(),
            now,
        );
        let heartbeat = serde_json::json!({"v": 1, "agent": "a", "at": "2026-12-01T00:00:00Z",
            "interval_secs": 10, "uptime_secs": 5, "running": 1, "processes": 1});
        hub.apply(
            "respawn/v1/a/heartbeat",
            &serde_json::to_vec(&heartbeat).unwrap(),
            now,
        );
        let liveness = |hub: &Hub| hub.fleet().agent("a").map(|a| a.liveness());
        assert_eq!(liveness(&hub), Some(Liveness::Online));
        assert!(hub.expire(now + Duration::from_secs(29)).is_empty());
        assert_eq!(
            hub.expire(now + Duration::from_secs(30)),
            [Change::Agent("a".into())]
        );
        assert_eq!(liveness(&hub), Some(Liveness::Stale));
        assert!(hub
            .metrics(SystemTime::now(), true)
            .contains("respawn_agent_up{agent=\"a\"} 0"));
    }

    #[test]
    fn metrics_describe_the_fleet_with_escaped_labels() {
        let hub = hub_with(&[
            ("respawn/v1/a/state", birth("a")),
            ("respawn/v1/a/proc/door", process("a", "running", 2)),
            ("respawn/v1/a/event", event("e1", "crash_loop")),
        ]);
        let text = hub.metrics(SystemTime::now(), true);
        for line in [
            "respawn_agent_up{agent=\"a\"} 1",
            "respawn_agent_info{agent=\"a\",version=\"0.1.0\",host=\"pi \\\"one\\\"\"} 1",
            "respawn_process_up{agent=\"a\",process=\"door\"} 1",
            "respawn_process_state{agent=\"a\",process=\"door\",state=\"running\"} 1",
            "respawn_process_state{agent=\"a\",process=\"door\",state=\"failed\"} 0",
            "respawn_process_restarts_total{agent=\"a\",process=\"door\"} 2",
            "respawn_process_start_time_seconds{agent=\"a\",process=\"door\"} 1796083200",
            "respawn_process_last_exit_code{agent=\"a\",process=\"door\"} 3",
            "respawn_events_total{agent=\"a\",kind=\"crash_loop\"} 1",
            "# TYPE respawn_process_restarts_total counter",
            "respawn_hub_broker_up 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
