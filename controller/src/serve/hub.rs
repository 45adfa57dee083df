//! The hub's view of the fleet: the pure fold of the broker's messages (the same [`Fleet`] as
//! `respawnctl status`), the latest events, what is counted for `/metrics` (which
//! `serve::metrics` writes), and what each message changed, for the live pages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::{
    heartbeat_interval_secs, read_report, AgentState, Event, EventKind,
};
use respawn_common::messages::{CommandName, Heartbeat};
use respawn_common::status::ProcessStatus;
use respawn_common::time::ClockOffset;
use respawn_common::topics::{Topic, Topics};

use crate::fleet::{Agent, Fleet};
use crate::output;
use crate::repeats::Repeats;
use crate::session::Message;

/// Events kept for the pages: the newest, of every agent.
const KEPT_EVENTS: usize = 1000;

/// The hub's own reads of output for process pages whose audit events are still awaited: far
/// more than are sent within the time an audit event takes to come.
const PAGE_READS_AWAITED: usize = 64;

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
    repeats: Repeats,
    /// Events by (agent, kind) since the hub started, of the agents on the broker.
    counts: BTreeMap<(String, &'static str), u64>,
    /// The agents whose retained state was seen and not cleared since: those whose events
    /// are counted. Kept across a reconnection, after which their states come again.
    known: BTreeSet<String>,
    /// When each agent's heartbeat came, and how long it holds: the broker expires a
    /// retained heartbeat for new readers only, so a reader that stays must expire it itself.
    heartbeats: BTreeMap<String, (Instant, Duration)>,
    /// The agents and command ids of the `logs` commands the hub sent to fill its process
    /// pages: their audit events are the pages' own doing, and kept they would crowd out what
    /// happened to the processes (each view and each re-read after a start or exit is one).
    page_reads: VecDeque<(String, String)>,
}

/// The part of an agent that one message on `topic` is about, as it stands.
#[derive(PartialEq)]
enum Part {
    State(Option<AgentState>),
    Heartbeat(Option<Heartbeat>),
    Process(Option<ProcessStatus>, bool),
}

impl Part {
    fn of(agent: &Agent, topic: &Topic) -> Self {
        match topic {
            Topic::Heartbeat { .. } => Part::Heartbeat(agent.heartbeat.clone()),
            Topic::Process { process, .. } => Part::Process(
                agent.processes.get(process).cloned(),
                agent.unreadable.contains(process),
            ),
            _ => Part::State(agent.state.clone()),
        }
    }
}

impl Hub {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            fleet: Fleet::default(),
            events: VecDeque::new(),
            repeats: Repeats::default(),
            counts: BTreeMap::new(),
            known: BTreeSet::new(),
            heartbeats: BTreeMap::new(),
            page_reads: VecDeque::new(),
        }
    }

    /// The command `cmd_id` to `agent` reads output for a process page: its audit event is
    /// counted, not kept or shown (the agent's audit has it: `respawnctl events` shows it).
    pub fn page_read(&mut self, agent: &str, cmd_id: &str) {
        self.page_reads
            .push_back((agent.to_owned(), cmd_id.to_owned()));
        if self.page_reads.len() > PAGE_READS_AWAITED {
            self.page_reads.pop_front();
        }
    }

    /// How far `agent`'s clock is off ours, where known.
    pub fn clock_of(&self, agent: &str) -> Option<ClockOffset> {
        self.fleet.agent(agent).and_then(|agent| agent.clock)
    }

    /// `m` is applied: from a heartbeat, how far its agent's clock is off ours.
    pub fn heard(&mut self, m: &Message) {
        self.fleet.heard(&self.topics, m);
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Folds one message in, received at `now`; what it changed, if anything.
    pub fn apply(&mut self, topic: &str, payload: &[u8], now: Instant) -> Option<Change> {
        match self.topics.parse(topic)? {
            Topic::Event { agent } => {
                let event: Event = read_report(payload).ok()?;
                // Counted under the agent whose topic it came on, not what it claims.
                if event.agent != agent {
                    return None;
                }
                // Only an agent that said it is there (its retained state) is remembered and
                // counted: anyone may publish events under made-up agents, and a series or a
                // window of repeats for each would grow without end. Those are shown alone.
                if self.known.contains(&agent) {
                    if self.repeats.is_repeat(&agent, event.seq, &event.id) {
                        return None;
                    }
                    *self
                        .counts
                        .entry((event.agent.clone(), event.kind.name()))
                        .or_default() += 1;
                }
                // Only a read is ever left out, and only of the agent it was sent to.
                if let EventKind::Command {
                    cmd_id, command, ..
                } = &event.kind
                {
                    let read = |(to, id): &(String, String)| *to == agent && id == cmd_id;
                    let at = (command == CommandName::Logs.as_str())
                        .then(|| self.page_reads.iter().position(read))
                        .flatten();
                    if let Some(at) = at {
                        self.page_reads.remove(at);
                        return None;
                    }
                }
                self.events.push_back(event.clone());
                if self.events.len() > KEPT_EVENTS {
                    self.events.pop_front();
                }
                Some(Change::Event(Box::new(event)))
            }
            parsed @ (Topic::State { .. } | Topic::Process { .. } | Topic::Heartbeat { .. }) => {
                let agent = parsed.agent().to_owned();
                // Only the part the message is about can change: a copy of the whole agent for
                // each heartbeat would cost as much as all its processes' states.
                let before = self.fleet.agent(&agent).map(|a| Part::of(a, &parsed));
                self.fleet.apply(&self.topics, topic, payload);
                if let Topic::State { .. } = parsed {
                    match payload.is_empty() {
                        true => {
                            self.repeats.forget(&agent);
                            self.counts.retain(|(counted, _), _| *counted != agent);
                            self.known.remove(&agent);
                        }
                        false => {
                            self.known.insert(agent.clone());
                            // Each kind from 0 once the agent said it is there (a state that
                            // reads), so that `increase()` counts its first event.
                            if self.fleet.agent(&agent).is_some_and(|a| a.state.is_some()) {
                                for kind in EventKind::NAMES {
                                    self.counts.entry((agent.clone(), kind)).or_default();
                                }
                            }
                        }
                    }
                }
                if let Topic::Heartbeat { .. } = parsed {
                    let interval = self
                        .fleet
                        .agent(&agent)
                        .and_then(|a| a.heartbeat.as_ref())
                        .map(|h| Duration::from_secs(heartbeat_interval_secs(h.interval_secs)));
                    match interval {
                        Some(interval) => {
                            self.heartbeats.insert(agent.clone(), (now, interval * 3));
                        }
                        None => {
                            self.heartbeats.remove(&agent);
                        }
                    }
                }
                let after = self.fleet.agent(&agent).map(|a| Part::of(a, &parsed));
                (after != before).then_some(Change::Agent(agent))
            }
            Topic::Command { .. } | Topic::Reply { .. } | Topic::Logs { .. } => None,
        }
    }

    /// A heartbeat just applied has `left` to live, as the broker says (it was kept for a
    /// while before it came: a hub that starts, or connects again, reads the last one an agent
    /// sent before it went): it expires then, if that is sooner than three intervals.
    pub fn heartbeat_lives(&mut self, topic: &str, left: Duration, now: Instant) {
        if let Some(Topic::Heartbeat { agent }) = self.topics.parse(topic) {
            if let Some((at, holds)) = self.heartbeats.get_mut(&agent) {
                (*at, *holds) = (now, left.min(*holds));
            }
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
        super::metrics::render(&self.fleet, &self.counts, now, broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Liveness;
    use respawn_common::messages::MAX_REPORT_BYTES;

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

    /// Event `seq` of agent `agent`: a repeat has the number of the first.
    fn event(agent: &str, seq: u64, kind: &str) -> serde_json::Value {
        serde_json::json!({"v": 1, "id": format!("{agent}-{seq}"), "seq": seq, "agent": agent, "at": "2026-12-01T00:00:00Z",
            "process": "door", "kind": kind, "exits": 5, "window_secs": 600})
    }

    #[test]
    fn the_audits_of_the_pages_own_reads_are_counted_not_kept() {
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        hub.apply(
            "respawn/v1/a/state",
            &serde_json::to_vec(&birth("a")).unwrap(),
            now,
        );
        let audit_of = |command: &str, seq: u64, cmd_id: &str| {
            let mut audit = event("a", seq, "command");
            let fields = serde_json::json!({"cmd_id": cmd_id, "command": command,
                "requester": "alice", "signer": "hub", "outcome": "succeeded"});
            audit
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            serde_json::to_vec(&audit).unwrap()
        };
        let audit = |seq: u64, cmd_id: &str| audit_of("logs", seq, cmd_id);
        hub.page_read("a", "page-1");
        hub.page_read("b", "page-2");
        assert_eq!(
            hub.apply("respawn/v1/a/event", &audit(1, "page-1"), now),
            None
        );
        // Another's read is kept, and so is the next with the page's id: it was told once.
        let kept = hub.apply("respawn/v1/a/event", &audit(2, "alices-own"), now);
        assert!(matches!(kept, Some(Change::Event(_))), "{kept:?}");
        let again = hub.apply("respawn/v1/a/event", &audit(3, "page-1"), now);
        assert!(matches!(again, Some(Change::Event(_))), "{again:?}");
        // Another agent's event of that id is its own.
        let other = hub.apply("respawn/v1/a/event", &audit(4, "page-2"), now);
        assert!(matches!(other, Some(Change::Event(_))), "{other:?}");
        // Nothing but a read is left out.
        hub.page_read("a", "page-3");
        let stop = hub.apply("respawn/v1/a/event", &audit_of("stop", 5, "page-3"), now);
        assert!(matches!(stop, Some(Change::Event(_))), "{stop:?}");
        assert_eq!(hub.events(Some("a"), Some("door"), 10).len(), 4);
        let counted = "respawn_events_total{agent=\"a\",kind=\"command\"} 5";
        assert!(hub.metrics(SystemTime::now(), true).contains(counted));
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
        let crash = json(event("a", 1, "crash_loop"));
        let first = hub.apply("respawn/v1/a/event", &crash, now);
        assert!(matches!(first, Some(Change::Event(_))));
        assert_eq!(
            hub.apply("respawn/v1/a/event", &crash, now),
            None,
            "a repeat"
        );
        let mut huge = event("a", 3, "crash_loop");
        huge["later_field"] = "x".repeat(MAX_REPORT_BYTES).into();
        let huge = json(huge);
        assert!(serde_json::from_slice::<Event>(&huge).is_ok(), "an event");
        assert_eq!(
            hub.apply("respawn/v1/a/event", &huge, now),
            None,
            "larger than any an agent sends"
        );
        let forged = json(event("a", 2, "started"));
        let other = hub.apply("respawn/v1/b/event", &forged, now);
        assert_eq!(other, None, "an event on another agent's topic");
        assert_eq!(hub.apply("elsewhere/a/state", &state, now), None);
        assert_eq!(hub.events(Some("a"), Some("door"), 10).len(), 1);
    }

    /// After a broker restart each agent of a large fleet sends its last events again, with
    /// thousands of other agents' events between the first time and the second.
    #[test]
    fn a_large_fleets_resent_events_are_counted_once() {
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        let agents: Vec<String> = (0..3_000).map(|i| format!("pi-{i}")).collect();
        for agent in &agents {
            let state = serde_json::to_vec(&birth(agent)).unwrap();
            hub.apply(&format!("respawn/v1/{agent}/state"), &state, now);
        }
        for _delivery in 0..2 {
            for agent in &agents {
                let crash = serde_json::to_vec(&event(agent, 1, "crash_loop")).unwrap();
                hub.apply(&format!("respawn/v1/{agent}/event"), &crash, now);
            }
        }
        let text = hub.metrics(SystemTime::now(), true);
        for agent in ["pi-0", "pi-2999"] {
            let line = format!("respawn_events_total{{agent=\"{agent}\",kind=\"crash_loop\"}} 1");
            assert!(text.lines().any(|l| l == line), "no {line:?}");
        }
    }

    /// Anyone may publish events under agents that never said they are there: shown, but no
    /// series and no window of repeats is kept for them, which would grow without end.
    #[test]
    fn events_of_agents_never_on_the_broker_are_shown_but_not_counted() {
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        for i in 0..100 {
            let crash = serde_json::to_vec(&event(&format!("x{i}"), 1, "crash_loop")).unwrap();
            let change = hub.apply(&format!("respawn/v1/x{i}/event"), &crash, now);
            assert!(matches!(change, Some(Change::Event(_))));
        }
        assert!(hub.counts.is_empty() && hub.repeats == Repeats::default());
        assert!(!hub
            .metrics(SystemTime::now(), true)
            .contains("agent=\"x1\""));
        // An agent on the broker is counted, and forgotten with its state.
        let state = serde_json::to_vec(&birth("a")).unwrap();
        hub.apply("respawn/v1/a/state", &state, now);
        // Each kind at 0 from the start: `increase()` counts the first crash loop.
        let crash_loops = |hub: &Hub, n: u64| {
            let line = format!("respawn_events_total{{agent=\"a\",kind=\"crash_loop\"}} {n}");
            hub.metrics(SystemTime::now(), true)
                .lines()
                .any(|l| l == line)
        };
        assert!(crash_loops(&hub, 0));
        let crash = serde_json::to_vec(&event("a", 1, "crash_loop")).unwrap();
        hub.apply("respawn/v1/a/event", &crash, now);
        assert!(crash_loops(&hub, 1));
        assert_eq!(hub.counts.len(), EventKind::NAMES.len());
        hub.apply("respawn/v1/a/state", b"", now);
        assert!(hub.counts.is_empty() && hub.repeats == Repeats::default());
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
    fn a_heartbeat_the_broker_kept_for_a_while_expires_when_the_broker_says() {
        let json = |value| serde_json::to_vec(&value).unwrap();
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        hub.apply("respawn/v1/a/state", &json(birth("a")), now);
        let heartbeat = serde_json::json!({"v": 1, "agent": "a", "at": "2026-12-01T00:00:00Z",
            "interval_secs": 10, "uptime_secs": 5, "running": 1, "processes": 1});
        // Read by a hub that started 22 s after the agent sent it: 8 s are left of its 30.
        hub.apply("respawn/v1/a/heartbeat", &json(heartbeat), now);
        hub.heartbeat_lives("respawn/v1/a/heartbeat", Duration::from_secs(8), now);
        assert!(hub.expire(now + Duration::from_secs(7)).is_empty());
        assert_eq!(
            hub.expire(now + Duration::from_secs(8)),
            [Change::Agent("a".into())]
        );
        // What the broker says cannot make a heartbeat hold longer than three intervals.
        let fresh = serde_json::json!({"v": 1, "agent": "a", "at": "2026-12-01T00:01:00Z",
            "interval_secs": 10, "uptime_secs": 65, "running": 1, "processes": 1});
        let later = now + Duration::from_secs(60);
        hub.apply("respawn/v1/a/heartbeat", &json(fresh), later);
        hub.heartbeat_lives("respawn/v1/a/heartbeat", Duration::from_secs(3600), later);
        assert_eq!(
            hub.expire(later + Duration::from_secs(30)),
            [Change::Agent("a".into())]
        );
    }

    #[test]
    fn a_heartbeat_interval_beyond_reason_holds_for_three_days_at_most() {
        let json = |value| serde_json::to_vec(&value).unwrap();
        let mut hub = Hub::new(Topics::default());
        let now = Instant::now();
        hub.apply("respawn/v1/a/state", &json(birth("a")), now);
        let heartbeat = serde_json::json!({"v": 1, "agent": "a", "at": "2026-12-01T00:00:00Z",
            "interval_secs": u64::MAX, "uptime_secs": 5, "running": 1, "processes": 1});
        hub.apply("respawn/v1/a/heartbeat", &json(heartbeat), now);
        let day = Duration::from_secs(86_400);
        assert!(hub
            .expire(now + 3 * day - Duration::from_secs(1))
            .is_empty());
        assert_eq!(hub.expire(now + 3 * day), [Change::Agent("a".into())]);
    }

    #[test]
    fn metrics_describe_the_fleet_with_escaped_labels() {
        let mut looping = process("a", "running", 2);
        looping["crash_loop"] = serde_json::json!(true);
        let hub = hub_with(&[
            ("respawn/v1/a/state", birth("a")),
            ("respawn/v1/a/proc/door", looping),
            ("respawn/v1/a/event", event("a", 1, "crash_loop")),
        ]);
        let text = hub.metrics(SystemTime::now(), true);
        for line in [
            "respawn_agent_up{agent=\"a\"} 1",
            "respawn_agent_info{agent=\"a\",version=\"0.1.0\",host=\"pi \\\"one\\\"\"} 1",
            "respawn_process_up{agent=\"a\",process=\"door\"} 1",
            "respawn_process_state{agent=\"a\",process=\"door\",state=\"running\"} 1",
            "respawn_process_crash_loop{agent=\"a\",process=\"door\"} 1",
            "respawn_process_restarts_total{agent=\"a\",process=\"door\"} 2",
            "respawn_process_start_time_seconds{agent=\"a\",process=\"door\"} 1796083200",
            "respawn_process_last_exit_code{agent=\"a\",process=\"door\"} 3",
            "respawn_events_total{agent=\"a\",kind=\"crash_loop\"} 1",
            "# TYPE respawn_process_restarts_total counter",
            "respawn_hub_broker_up 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // One state series per process, its current state's.
        let states = text
            .lines()
            .filter(|l| l.starts_with("respawn_process_state{"));
        assert_eq!(states.count(), 1, "{text}");
    }

    /// An agent whose birth names a process whose state the broker did not send: its view is
    /// incomplete, and `/api/fleet` and `/metrics` say so, as `respawnctl status` does (found
    /// by a new-user run: both showed the agent with no process and no word).
    #[test]
    fn an_agent_whose_process_states_did_not_come_is_shown_incomplete() {
        let mut two = birth("a");
        two["processes"] = serde_json::json!(["door", "bell"]);
        let mut hub = hub_with(&[("respawn/v1/a/state", two)]);
        let json: serde_json::Value = serde_json::from_str(&hub.agent_json("a")).unwrap();
        assert_eq!(
            json["unknown_processes"],
            serde_json::json!(["door", "bell"])
        );
        let text = hub.metrics(SystemTime::now(), true);
        let line = "respawn_agent_processes_unknown{agent=\"a\"} 2";
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        let door = serde_json::to_vec(&process("a", "running", 0)).unwrap();
        hub.apply("respawn/v1/a/proc/door", &door, Instant::now());
        hub.apply("respawn/v1/a/proc/bell", b"not a state", Instant::now());
        let json: serde_json::Value = serde_json::from_str(&hub.agent_json("a")).unwrap();
        assert_eq!(
            json["unknown_processes"],
            serde_json::json!(["bell"]),
            "unreadable"
        );
        let text = hub.metrics(SystemTime::now(), true);
        let line = "respawn_agent_processes_unknown{agent=\"a\"} 1";
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        // Complete: no such field.
        let hub = hub_with(&[
            ("respawn/v1/a/state", birth("a")),
            ("respawn/v1/a/proc/door", process("a", "running", 0)),
        ]);
        let json: serde_json::Value = serde_json::from_str(&hub.agent_json("a")).unwrap();
        assert_eq!(json.get("unknown_processes"), None);
        let text = hub.metrics(SystemTime::now(), true);
        let line = "respawn_agent_processes_unknown{agent=\"a\"} 0";
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    /// An agent's clock a day behind the hub's: its start times move onto the hub's clock,
    /// and its offset is a series of its own.
    #[test]
    fn metrics_move_an_agents_times_onto_the_hubs_clock() {
        let mut hub = hub_with(&[
            ("respawn/v1/a/state", birth("a")),
            ("respawn/v1/a/proc/door", process("a", "running", 2)),
        ]);
        let heartbeat = serde_json::json!({"v": 1, "agent": "a", "at": "2026-12-01T00:00:00Z",
            "interval_secs": 10, "uptime_secs": 65, "running": 1, "processes": 1});
        let message = Message {
            topic: "respawn/v1/a/heartbeat".into(),
            payload: serde_json::to_vec(&heartbeat).unwrap().into(),
            correlation: None,
            retain: false,
            expires_in: Some(Duration::from_secs(30)),
            received: respawn_common::time::parse("2026-12-02T00:00:00Z").unwrap(),
            ack: None,
        };
        let day = Duration::from_secs(86_400);
        hub.apply(&message.topic, &message.payload, Instant::now());
        hub.heard(&message);
        let text = hub.metrics(message.received, true);
        for line in [
            "respawn_agent_clock_offset_seconds{agent=\"a\"} -86400",
            // 1796083200 by its clock.
            &format!(
                "respawn_process_start_time_seconds{{agent=\"a\",process=\"door\"}} {}",
                1796083200 + day.as_secs()
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// A state a newer agent says is shown as unknown, not as the state before it (found by
    /// a review: `paused` after `running` left `running` and up 1 in /metrics for good).
    #[test]
    fn a_state_of_a_newer_agent_shows_as_unknown() {
        let mut hub = hub_with(&[
            ("respawn/v1/a/state", birth("a")),
            ("respawn/v1/a/proc/door", process("a", "running", 0)),
        ]);
        let paused = serde_json::to_vec(&process("a", "paused", 0)).unwrap();
        hub.apply("respawn/v1/a/proc/door", &paused, Instant::now());
        let text = hub.metrics(SystemTime::now(), true);
        for line in [
            "respawn_process_up{agent=\"a\",process=\"door\"} 0",
            "respawn_process_state{agent=\"a\",process=\"door\",state=\"unknown\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(hub.agent_json("a").contains("\"state\":\"unknown\""));
    }
}
