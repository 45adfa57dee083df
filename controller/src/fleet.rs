//! The fleet as the broker's retained messages describe it: a pure fold of `state`, `proc/...`
//! and `heartbeat` messages into one view per agent, and the matching of `agent/process`
//! targets against it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use respawn_common::messages::{read_report, AgentState, Heartbeat, Presence, MAX_PROCESSES_READ};
use respawn_common::pattern::glob;
use respawn_common::status::ProcessStatus;
use respawn_common::time::ClockOffset;
use respawn_common::topics::{Topic, Topics};

use crate::session::Message;

/// What is known of one agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agent {
    pub state: Option<AgentState>,
    pub processes: BTreeMap<String, ProcessStatus>,
    pub heartbeat: Option<Heartbeat>,
    /// Processes whose retained state came but could not be read (not a respawn v1 process
    /// state): the broker did send it, so it is not missing, and reading again would not help.
    pub unreadable: BTreeSet<String>,
    /// How far its clock is off ours, from its latest heartbeat whose age could be told.
    pub clock: Option<ClockOffset>,
    /// The processes its latest birth named, in the file's order: its Last Will names none,
    /// and an agent that went away keeps the order it had.
    pub last_named: Vec<String>,
}

/// How an agent is doing, as far as the broker can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Online,
    /// Claims to be online, but its heartbeat has expired: the connection is probably dead
    /// and the broker has not noticed yet.
    Stale,
    Offline,
    Lost,
    /// Process states exist, but no presence message.
    Unknown,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Stale => "stale",
            Self::Offline => "offline",
            Self::Lost => "lost",
            Self::Unknown => "unknown",
        }
    }

    /// Whether commands can be expected to be answered.
    pub fn reachable(self) -> bool {
        self == Self::Online
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Agent {
    /// Stale detection relies on the broker expiring the retained heartbeat, so it does not
    /// depend on the agent's clock agreeing with ours.
    pub fn liveness(&self) -> Liveness {
        match &self.state {
            None => Liveness::Unknown,
            Some(state) => match state.state {
                Presence::Online if state.heartbeat_secs.is_some() && self.heartbeat.is_none() => {
                    Liveness::Stale
                }
                Presence::Online => Liveness::Online,
                Presence::Offline => Liveness::Offline,
                Presence::Lost => Liveness::Lost,
                Presence::Unknown => Liveness::Unknown,
            },
        }
    }

    /// When the agent started: as its birth (or will) says; from an agent before that was
    /// said, its uptime back from its heartbeat, where that heartbeat was sent on its current
    /// connection (one kept from an earlier run would say that run's); else when it
    /// connected. All by the agent's clock.
    pub fn started(&self) -> Option<SystemTime> {
        if let Some(started) = self.state.as_ref().and_then(|s| s.started) {
            return Some(started);
        }
        let connected = self.state.as_ref().and_then(|s| s.since);
        let by_heartbeat = self
            .heartbeat
            .as_ref()
            .filter(|h| connected.is_none_or(|c| h.at >= c));
        let by_heartbeat =
            by_heartbeat.and_then(|h| h.at.checked_sub(Duration::from_secs(h.uptime_secs)));
        by_heartbeat.or(connected)
    }

    /// Our `now` by the agent's clock, which its times are to be measured against.
    pub fn now(&self, now: SystemTime) -> SystemTime {
        self.clock.map_or(now, |clock| clock.their_now(now))
    }

    /// The session of the agent's current connection, to bind commands to.
    pub fn session(&self) -> Option<&str> {
        self.state.as_ref().and_then(|s| s.session.as_deref())
    }

    /// The processes its birth names whose state is not known: it has not arrived, or it
    /// could not be read. They show as `unknown`.
    pub fn unknown_processes(&self) -> Vec<&str> {
        let named = self.state.iter().flat_map(|s| &s.processes);
        let unknown = named.filter(|name| !self.processes.contains_key(*name));
        unknown.map(String::as_str).collect()
    }

    /// The processes its birth names whose state has not arrived: the unknown ones whose
    /// state came unreadable aside, as reading again would not help.
    fn absent_processes(&self) -> Vec<&str> {
        let mut unknown = self.unknown_processes();
        unknown.retain(|name| !self.unreadable.contains(*name));
        unknown
    }

    /// The agent's processes: those its birth message names (with their state where known),
    /// else every process state seen, in the order its last birth named them (found by a
    /// new-user run: a lost agent's processes came in alphabetical order), then the rest.
    pub fn process_names(&self) -> Vec<&str> {
        match &self.state {
            Some(state) if !state.processes.is_empty() => {
                state.processes.iter().map(String::as_str).collect()
            }
            _ => {
                let named = self.last_named.iter();
                let named = named.filter(|name| self.processes.contains_key(*name));
                let rest = self.processes.keys();
                let rest = rest.filter(|name| !self.last_named.contains(name));
                named.chain(rest).map(String::as_str).collect()
            }
        }
    }

    /// Whether nothing is known of it (as `== Agent::default()` would say without building
    /// one for each message; a new field fails to compile here until it is looked at).
    fn is_empty(&self) -> bool {
        let Agent {
            state,
            processes,
            heartbeat,
            unreadable,
            // Known only with a heartbeat, and no news alone.
            clock: _,
            // Only how to order what else is known.
            last_named: _,
        } = self;
        state.is_none() && processes.is_empty() && heartbeat.is_none() && unreadable.is_empty()
    }
}

/// What a reading of the fleet may lack of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lacking {
    /// Its heartbeat only.
    Heartbeat,
    /// Its birth, or a process state its birth names.
    More,
}

/// Every agent seen, by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    agents: BTreeMap<String, Agent>,
}

impl Fleet {
    /// Folds one message in. Messages that are not ours or do not parse are ignored: a
    /// reader of a shared broker must be lenient.
    pub fn apply(&mut self, topics: &Topics, topic: &str, payload: &[u8]) {
        enum Part {
            State,
            Heartbeat,
            Process(String),
        }
        let (agent, part) = match topics.parse(topic) {
            Some(Topic::State { agent }) => (agent, Part::State),
            Some(Topic::Heartbeat { agent }) => (agent, Part::Heartbeat),
            Some(Topic::Process { agent, process }) => (agent, Part::Process(process)),
            _ => return,
        };
        let removed = payload.is_empty();
        let update = |entry: &mut Agent| match part {
            Part::Process(process) if removed => {
                entry.processes.remove(&process);
                entry.unreadable.remove(&process);
            }
            // The status alone, though the message is a `ProcessReport`: that one flattens
            // the status, which serde reads through a buffer of every field (a third of the
            // time of reading a fleet of 10,000 agents).
            // A process beyond what an agent runs is not held (MAX_PROCESSES_READ).
            Part::Process(process)
                if entry.processes.len() + entry.unreadable.len() >= MAX_PROCESSES_READ
                    && !entry.processes.contains_key(&process)
                    && !entry.unreadable.contains(&process) => {}
            // A state beyond what an agent sends is not read (MAX_REPORT_BYTES).
            // A state that names another process than its topic is not this one's: each
            // view shows the name it says, and would show two rows of one name.
            Part::Process(process) => match read_report::<ProcessStatus>(payload) {
                Ok(status) if status.name == process => {
                    entry.unreadable.remove(&process);
                    entry.processes.insert(process, status);
                }
                // Garbage after a state that was read leaves that state standing.
                _ if entry.processes.contains_key(&process) => {}
                _ => {
                    entry.unreadable.insert(process);
                }
            },
            Part::Heartbeat if removed => entry.heartbeat = None,
            Part::Heartbeat => entry.heartbeat = serde_json::from_slice(payload).ok(),
            Part::State if removed => entry.state = None,
            // A state beyond what an agent sends is not read (AgentState::read).
            Part::State => {
                let read = AgentState::read(payload).ok();
                entry.state = read.or(entry.state.take());
                let named = entry.state.as_ref().map(|s| &s.processes);
                if let Some(named) = named.filter(|named| !named.is_empty()) {
                    entry.last_named.clone_from(named);
                }
            }
        };
        // One look-up a message, and only the agent it touched can have become empty:
        // looking at every agent here made reading a fleet quadratic (20 s for 10,000 agents).
        match self.agents.entry(agent) {
            Entry::Occupied(mut known) => {
                update(known.get_mut());
                if known.get().is_empty() {
                    known.remove();
                }
            }
            Entry::Vacant(new) => {
                let mut agent = Agent::default();
                update(&mut agent);
                if !agent.is_empty() {
                    new.insert(agent);
                }
            }
        }
    }

    /// Folds in `m` (see [`Fleet::apply`]); from a heartbeat, also how far its agent's clock
    /// is off ours.
    pub fn receive(&mut self, topics: &Topics, m: &Message) {
        self.apply(topics, &m.topic, &m.payload);
        self.heard(topics, m);
    }

    /// `m` is folded in: from a heartbeat, how far its agent's clock is off ours.
    pub fn heard(&mut self, topics: &Topics, m: &Message) {
        let Some(Topic::Heartbeat { agent }) = topics.parse(&m.topic) else {
            return;
        };
        if let Some(entry) = self.agents.get_mut(&agent) {
            // Read already: a heartbeat that did not read tells nothing.
            let heard = entry
                .heartbeat
                .as_ref()
                .and_then(|h| m.heartbeat_clock(Some(h)));
            entry.clock = heard.or(entry.clock);
        }
    }

    /// The process states the fleet's births name that have not arrived, by agent: a view
    /// read from the broker that misses some is incomplete (a broker drops what it cannot
    /// queue for a slow reader). A Last Will names no processes, so a lost agent is not
    /// judged.
    pub fn missing(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut missing = BTreeMap::new();
        for (id, agent) in &self.agents {
            let absent = agent.absent_processes();
            if !absent.is_empty() {
                missing.insert(id.as_str(), absent);
            }
        }
        missing
    }

    /// The processes whose state came but could not be read, as (agent, process) pairs.
    pub fn unreadable(&self) -> Vec<(&str, &str)> {
        let agents = self.agents.iter();
        let pairs = agents.flat_map(|(id, agent)| agent.unreadable.iter().map(move |p| (id, p)));
        pairs.map(|(id, p)| (id.as_str(), p.as_str())).collect()
    }

    /// The agents whose view may lack what the broker holds, to be read again, with what
    /// they lack: their birth or a process state it names, or only the heartbeat of an
    /// online agent (which would make it look stale). A broker drops what it cannot queue for
    /// a slow reader.
    pub fn unsure(&self) -> Vec<(&str, Lacking)> {
        let lacking = |agent: &Agent| match &agent.state {
            None => Some(Lacking::More),
            Some(_) if !agent.absent_processes().is_empty() => Some(Lacking::More),
            Some(_) if agent.liveness() == Liveness::Stale => Some(Lacking::Heartbeat),
            Some(_) => None,
        };
        let agents = self.agents.iter();
        agents
            .filter_map(|(id, agent)| Some((id.as_str(), lacking(agent)?)))
            .collect()
    }

    pub fn agents(&self) -> impl Iterator<Item = (&String, &Agent)> {
        self.agents.iter()
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// For an agent id that names none here: the agent likely meant (a typo), or why none
    /// is (none reports to this broker at all: perhaps the wrong one).
    pub fn missing_agent(&self, id: &str) -> Result<&str, String> {
        if self.agents.is_empty() {
            return Err(
                "no agent reports to this broker; is it the one they use (--broker)?".into(),
            );
        }
        let ids: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        respawn_common::config_file::closest(id, &ids)
            .ok_or_else(|| format!("no agent {id} reports to this broker"))
    }

    /// What a `target` that matched nothing probably meant: the process with the nearest
    /// name on an agent it names; for a bare name, the nearest agent, or else the process it
    /// may name (`doorbot` for `door-pi/doorbot`).
    pub fn hint(&self, target: &Target) -> Option<String> {
        let mut agents = self.agents.iter().filter(|(id, _)| glob(&target.agent, id));
        let Some(process) = &target.process else {
            // A bare name that names an agent here matched: it has no processes.
            if agents.next().is_some() {
                return None;
            }
            let name = &target.agent;
            if let Ok(near) = self.missing_agent(name) {
                return Some(format!("did you mean {near}?"));
            }
            let owner = self.agents.iter().find_map(|(id, agent)| {
                let near = respawn_common::config_file::closest(name, &agent.process_names())?;
                Some(format!("{id}/{near}"))
            });
            return Some(match owner {
                Some(meant) => format!("`{name}` alone names an agent: did you mean {meant}?"),
                None => format!("`{name}` alone names an agent; a process is AGENT/PROCESS"),
            });
        };
        let mut agents = agents.peekable();
        if agents.peek().is_none() {
            return Some(match self.missing_agent(&target.agent) {
                Ok(near) => format!("did you mean {near}/{process}?"),
                Err(why) => why,
            });
        }
        agents.find_map(|(id, agent)| {
            let names = agent.process_names();
            let near = respawn_common::config_file::closest(process, &names)?;
            Some(format!("did you mean {id}/{near}?"))
        })
    }

    /// The processes `target` names, as (agent, process) pairs in order.
    pub fn select(&self, target: &Target) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (id, agent) in &self.agents {
            if !glob(&target.agent, id) {
                continue;
            }
            for process in agent.process_names() {
                if target.process.as_ref().is_none_or(|p| glob(p, process)) {
                    out.push((id.clone(), process.to_owned()));
                }
            }
        }
        out
    }

    /// What any of `scope` names, as [`Fleet::filter`] keeps it; everything when `scope` is
    /// empty.
    pub fn within(self, scope: &[Target]) -> Fleet {
        if scope.is_empty() {
            return self;
        }
        let mut within = Fleet::default();
        for target in scope {
            for (id, agent) in self.filter(Some(target)).agents {
                let Some(known) = within.agents.get_mut(&id) else {
                    within.agents.insert(id, agent);
                    continue;
                };
                known.processes.extend(agent.processes);
                if let (Some(known), Some(state)) = (&mut known.state, agent.state) {
                    for name in state.processes {
                        if !known.processes.contains(&name) {
                            known.processes.push(name);
                        }
                    }
                }
            }
        }
        within
    }

    /// The agents `pattern` names (an agent glob, or `agent/process` globs for the agents
    /// that have a matching process), with only the matching processes kept.
    pub fn filter(&self, pattern: Option<&Target>) -> Fleet {
        let Some(target) = pattern else {
            return self.clone();
        };
        let mut agents = BTreeMap::new();
        for (id, agent) in &self.agents {
            if !glob(&target.agent, id) {
                continue;
            }
            let mut kept_agent = agent.clone();
            if let Some(process) = &target.process {
                // The agent's processes are judged before any is left out: a process state
                // its birth does not name (left over on the broker) stays out.
                let mut kept = agent.process_names();
                kept.retain(|name| glob(process, name));
                if kept.is_empty() {
                    continue;
                }
                kept_agent
                    .processes
                    .retain(|name, _| kept.contains(&name.as_str()));
                if let Some(state) = &mut kept_agent.state {
                    state.processes.retain(|name| kept.contains(&name.as_str()));
                }
            }
            agents.insert(id.clone(), kept_agent);
        }
        Fleet { agents }
    }
}

/// `agent` or `agent/process`, each part a glob (`*`, `?`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub agent: String,
    pub process: Option<String>,
}

impl Target {
    /// Every process of one agent.
    pub fn agent(id: &str) -> Self {
        Self {
            agent: id.to_owned(),
            process: None,
        }
    }

    /// Parses `door-*/doorbot`, `*/scraper` or `door-pi`.
    ///
    /// ```
    /// use respawn_controller::fleet::Target;
    /// let t = Target::parse("door-*/doorbot").unwrap();
    /// assert_eq!((t.agent.as_str(), t.process.as_deref()), ("door-*", Some("doorbot")));
    /// assert_eq!(Target::parse("door-pi").unwrap().process, None);
    /// assert!(Target::parse("a/b/c").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let (agent, process) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        // Names have at most 64 characters, and each but `*` stands for at least one.
        let valid = |part: &str| {
            !part.is_empty()
                && part.chars().filter(|&c| c != '*').count() <= 64
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '?'))
        };
        if !valid(agent) || !process.is_none_or(valid) {
            let shown: String = text.chars().take(80).collect();
            let cut = if shown.len() < text.len() { "…" } else { "" };
            return Err(format!(
                "{shown:?}{cut} is not a target: write AGENT or AGENT/PROCESS (names of at most 64 characters), where either may use * and ?"
            ));
        }
        Ok(Self {
            agent: agent.to_owned(),
            process: process.map(str::to_owned),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some(p) => write!(f, "{}/{p}", self.agent),
            None => f.write_str(&self.agent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::messages::MAX_REPORT_BYTES;
    use respawn_common::status::ProcessState;

    fn topics() -> Topics {
        Topics::default()
    }

    fn state(agent: &str, presence: &str, processes: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "agent": agent, "state": presence, "processes": processes,
            "heartbeat_secs": 30, "since": "2026-11-25T00:00:00Z"
        }))
        .unwrap()
    }

    fn proc_state(agent: &str, name: &str, state: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "agent": agent, "name": name, "state": state, "pid": 7,
            "since": "2026-11-25T00:00:00Z", "restarts": 0
        }))
        .unwrap()
    }

    fn heartbeat(agent: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": 1, "agent": agent, "at": "2026-11-25T00:00:00Z", "interval_secs": 30,
            "uptime_secs": 5, "running": 1, "processes": 1
        }))
        .unwrap()
    }

    fn fleet(messages: &[(&str, Vec<u8>)]) -> Fleet {
        let mut fleet = Fleet::default();
        for (topic, payload) in messages {
            fleet.apply(&topics(), topic, payload);
        }
        fleet
    }

    #[test]
    fn retained_messages_fold_into_agents_with_their_processes() {
        let fleet = fleet(&[
            (
                "respawn/v1/door-pi/state",
                state("door-pi", "online", &["doorbot", "cam"]),
            ),
            (
                "respawn/v1/door-pi/proc/doorbot",
                proc_state("door-pi", "doorbot", "running"),
            ),
            ("respawn/v1/door-pi/heartbeat", heartbeat("door-pi")),
            (
                "respawn/v1/garage/state",
                state("garage", "lost", &["opener"]),
            ),
            ("respawn/v1/shed/state", state("shed", "offline", &[])),
            ("other/topic", b"{}".to_vec()),
            ("respawn/v1/door-pi/event", b"{}".to_vec()),
        ]);
        assert_eq!(fleet.len(), 3);
        let door = fleet.agent("door-pi").unwrap();
        assert_eq!(door.liveness(), Liveness::Online);
        assert_eq!(door.process_names(), ["doorbot", "cam"]);
        assert_eq!(door.processes["doorbot"].state, ProcessState::Running);
        assert_eq!(fleet.agent("garage").unwrap().liveness(), Liveness::Lost);
        assert_eq!(fleet.agent("shed").unwrap().liveness(), Liveness::Offline);
    }

    #[test]
    fn an_agent_that_went_away_keeps_the_order_of_its_processes() {
        let mut fleet = fleet(&[
            (
                "respawn/v1/a/state",
                state("a", "online", &["web", "db", "cam"]),
            ),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/a/proc/db", proc_state("a", "db", "running")),
            ("respawn/v1/a/proc/cam", proc_state("a", "cam", "running")),
        ]);
        // Its Last Will names no processes.
        fleet.apply(&topics(), "respawn/v1/a/state", &state("a", "lost", &[]));
        let a = fleet.agent("a").unwrap();
        assert_eq!(a.liveness(), Liveness::Lost);
        assert_eq!(a.process_names(), ["web", "db", "cam"]);
    }

    #[test]
    fn a_birth_names_only_what_can_be_a_process() {
        let fleet = fleet(&[(
            "respawn/v1/door-pi/state",
            state(
                "door-pi",
                "online",
                &["doorbot", "\u{1b}[2Jx", "a/b", "", "doorbot"],
            ),
        )]);
        let door = fleet.agent("door-pi").unwrap();
        assert_eq!(door.process_names(), ["doorbot"], "each once");
    }

    #[test]
    fn a_state_that_came_but_cannot_be_read_is_unreadable_not_missing() {
        let mut fleet = fleet(&[
            ("respawn/v1/a/state", state("a", "online", &["web", "db"])),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/a/proc/db", br#"{"state": 7}"#.to_vec()),
            ("respawn/v1/a/heartbeat", heartbeat("a")),
        ]);
        assert!(fleet.missing().is_empty());
        assert!(fleet.unsure().is_empty(), "reading again would not help");
        assert_eq!(fleet.unreadable(), [("a", "db")]);
        let db = proc_state("a", "db", "running");
        fleet.apply(&topics(), "respawn/v1/a/proc/db", &db);
        assert!(fleet.unreadable().is_empty());
        fleet.apply(&topics(), "respawn/v1/a/proc/web", b"junk");
        assert!(
            fleet.unreadable().is_empty(),
            "the state read before stands"
        );
        fleet.apply(&topics(), "respawn/v1/a/proc/web", b"");
        fleet.apply(&topics(), "respawn/v1/a/proc/web", b"junk");
        assert_eq!(fleet.unreadable(), [("a", "web")]);
        fleet.apply(&topics(), "respawn/v1/a/proc/web", b"");
        assert!(fleet.unreadable().is_empty());
    }

    #[test]
    fn a_state_is_of_the_process_its_topic_names() {
        let mut fleet = fleet(&[
            ("respawn/v1/a/state", state("a", "online", &["web", "db"])),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/a/proc/db", proc_state("a", "web", "failed")),
        ]);
        assert_eq!(fleet.unreadable(), [("a", "db")]);
        let web = &fleet.agent("a").unwrap().processes["web"];
        assert_eq!(
            (web.name.as_str(), web.state),
            ("web", ProcessState::Running)
        );
        fleet.apply(
            &topics(),
            "respawn/v1/a/proc/web",
            &proc_state("a", "db", "failed"),
        );
        let web = &fleet.agent("a").unwrap().processes["web"];
        assert_eq!(
            web.state,
            ProcessState::Running,
            "the state read before stands"
        );
    }

    #[test]
    fn an_agent_is_held_within_bounds_whatever_it_publishes() {
        let names: Vec<String> = (0..MAX_PROCESSES_READ + 500)
            .map(|i| format!("p{i}"))
            .collect();
        let named: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut fleet = fleet(&[("respawn/v1/a/state", state("a", "online", &named))]);
        for name in &names {
            let topic = format!("respawn/v1/a/proc/{name}");
            fleet.apply(&topics(), &topic, &proc_state("a", name, "running"));
        }
        let a = fleet.agent("a").unwrap();
        assert_eq!(a.process_names().len(), MAX_PROCESSES_READ);
        assert_eq!(a.processes.len(), MAX_PROCESSES_READ);
        assert!(!a.processes.contains_key(&names[MAX_PROCESSES_READ]));
        // A state larger than any an agent sends came, but is not read.
        let mut huge: serde_json::Value =
            serde_json::from_slice(&proc_state("b", "web", "running")).unwrap();
        huge["spawn_error"] = "x".repeat(MAX_REPORT_BYTES).into();
        let huge = serde_json::to_vec(&huge).unwrap();
        fleet.apply(&topics(), "respawn/v1/b/proc/web", &huge);
        assert_eq!(fleet.unreadable(), [("b", "web")]);
    }

    #[test]
    fn a_view_that_lacks_a_process_its_birth_names_is_incomplete() {
        let mut fleet = fleet(&[
            ("respawn/v1/a/state", state("a", "online", &["web", "db"])),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/b/state", state("b", "online", &["x"])),
            ("respawn/v1/b/proc/x", proc_state("b", "x", "running")),
            // A Last Will names no processes: nothing to judge by.
            ("respawn/v1/c/state", state("c", "lost", &[])),
        ]);
        assert_eq!(fleet.missing(), BTreeMap::from([("a", vec!["db"])]));
        fleet.apply(
            &topics(),
            "respawn/v1/a/proc/db",
            &proc_state("a", "db", "stopped"),
        );
        assert!(fleet.missing().is_empty());
        // An agent emptied by its last message goes, the others stay.
        fleet.apply(&topics(), "respawn/v1/c/state", b"");
        assert_eq!(fleet.len(), 2);
    }

    #[test]
    fn within_keeps_what_any_target_names() {
        let fleet = fleet(&[
            (
                "respawn/v1/a/state",
                state("a", "online", &["web", "db", "worker"]),
            ),
            ("respawn/v1/a/heartbeat", heartbeat("a")),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/a/proc/db", proc_state("a", "db", "running")),
            (
                "respawn/v1/a/proc/worker",
                proc_state("a", "worker", "running"),
            ),
            ("respawn/v1/b/state", state("b", "online", &["web"])),
            ("respawn/v1/b/proc/web", proc_state("a", "web", "running")),
        ]);
        let scope = [
            Target::parse("a/web").unwrap(),
            Target::parse("*/worker").unwrap(),
        ];
        let within = fleet.clone().within(&scope);
        assert_eq!(within.len(), 1, "b has no worker");
        let a = within.agent("a").unwrap();
        assert_eq!(a.process_names(), ["web", "worker"]);
        assert!(
            within.unsure().is_empty(),
            "db is out of scope, not missing: {a:?}"
        );
        assert_eq!(fleet.clone().within(&[]), fleet);
    }

    #[test]
    fn what_a_broker_may_have_dropped_is_read_again() {
        let mut fleet = fleet(&[
            // A process its birth names is absent.
            ("respawn/v1/a/state", state("a", "online", &["web", "db"])),
            ("respawn/v1/a/heartbeat", heartbeat("a")),
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            // Whole, and lost: a Last Will needs no heartbeat.
            ("respawn/v1/b/state", state("b", "online", &[])),
            ("respawn/v1/b/heartbeat", heartbeat("b")),
            ("respawn/v1/c/state", state("c", "lost", &[])),
            // Online without its heartbeat: stale, or its heartbeat was dropped.
            ("respawn/v1/d/state", state("d", "online", &[])),
            // A process without the birth.
            ("respawn/v1/e/proc/x", proc_state("e", "x", "running")),
        ]);
        assert_eq!(
            fleet.unsure(),
            [
                ("a", Lacking::More),
                ("d", Lacking::Heartbeat),
                ("e", Lacking::More)
            ]
        );
        fleet.apply(
            &topics(),
            "respawn/v1/a/proc/db",
            &proc_state("a", "db", "stopped"),
        );
        fleet.apply(&topics(), "respawn/v1/d/heartbeat", &heartbeat("d"));
        fleet.apply(
            &topics(),
            "respawn/v1/e/state",
            &state("e", "online", &["x"]),
        );
        fleet.apply(&topics(), "respawn/v1/e/heartbeat", &heartbeat("e"));
        assert!(fleet.unsure().is_empty(), "{:?}", fleet.unsure());
    }

    #[test]
    fn an_online_agent_without_its_heartbeat_is_stale() {
        let mut fleet = fleet(&[
            ("respawn/v1/a/state", state("a", "online", &[])),
            ("respawn/v1/a/heartbeat", heartbeat("a")),
        ]);
        assert_eq!(fleet.agent("a").unwrap().liveness(), Liveness::Online);
        fleet.apply(&topics(), "respawn/v1/a/heartbeat", b"");
        assert_eq!(fleet.agent("a").unwrap().liveness(), Liveness::Stale);
    }

    #[test]
    fn an_agent_started_when_its_heartbeat_says_not_when_it_last_connected() {
        let at = |text: &str| humantime::parse_rfc3339(text).unwrap();
        let beat = |at: &str, uptime: u64| {
            serde_json::to_vec(&serde_json::json!({
                "v": 1, "agent": "a", "at": at, "interval_secs": 30,
                "uptime_secs": uptime, "running": 1, "processes": 1
            }))
            .unwrap()
        };
        // Connected at 00:00:00 (a reconnection), running for an hour by then.
        let mut fleet = fleet(&[
            ("respawn/v1/a/state", state("a", "online", &[])),
            ("respawn/v1/a/heartbeat", beat("2026-11-25T00:00:01Z", 3601)),
        ]);
        let started = |fleet: &Fleet| fleet.agent("a").unwrap().started();
        assert_eq!(started(&fleet), Some(at("2026-11-24T23:00:00Z")));
        // A heartbeat of before this connection may be an earlier run's: the connection says.
        fleet.apply(
            &topics(),
            "respawn/v1/a/heartbeat",
            &beat("2026-11-24T23:59:59Z", 9999),
        );
        assert_eq!(started(&fleet), Some(at("2026-11-25T00:00:00Z")));
        fleet.apply(&topics(), "respawn/v1/a/heartbeat", b"");
        assert_eq!(started(&fleet), Some(at("2026-11-25T00:00:00Z")));
        // An agent whose birth says when its run began is taken at its word, also once its
        // heartbeat has expired (stale): the time since it connected is no uptime.
        let mut birth: serde_json::Value =
            serde_json::from_slice(&state("a", "online", &[])).unwrap();
        birth["started"] = "2026-11-24T20:00:00Z".into();
        fleet.apply(
            &topics(),
            "respawn/v1/a/state",
            &serde_json::to_vec(&birth).unwrap(),
        );
        assert_eq!(started(&fleet), Some(at("2026-11-24T20:00:00Z")));
    }

    #[test]
    fn empty_payloads_remove_and_garbage_is_ignored() {
        let mut fleet = fleet(&[
            ("respawn/v1/a/proc/web", proc_state("a", "web", "running")),
            ("respawn/v1/a/proc/web", b"not json".to_vec()),
        ]);
        assert_eq!(
            fleet.agent("a").unwrap().processes.len(),
            1,
            "garbage kept the last state"
        );
        assert_eq!(fleet.agent("a").unwrap().liveness(), Liveness::Unknown);
        fleet.apply(&topics(), "respawn/v1/a/proc/web", b"");
        assert!(fleet.is_empty(), "an agent with nothing left disappears");
    }

    #[test]
    fn a_target_that_matches_nothing_gets_a_hint() {
        let fleet = fleet(&[(
            "respawn/v1/door-pi/state",
            state("door-pi", "online", &["doorbot", "cam"]),
        )]);
        let hint = |t: &str| fleet.hint(&Target::parse(t).unwrap());
        assert_eq!(
            hint("door-pi/doorbt").as_deref(),
            Some("did you mean door-pi/doorbot?")
        );
        assert_eq!(
            hint("door-*/dorbot").as_deref(),
            Some("did you mean door-pi/doorbot?")
        );
        assert_eq!(hint("door-pi/printer"), None);
        // A bare name: the process it may name, or a near agent (found by a new-user run:
        // `events exampel` and `events doorbot` suggested nothing).
        assert_eq!(
            hint("doorbot").as_deref(),
            Some("`doorbot` alone names an agent: did you mean door-pi/doorbot?")
        );
        assert_eq!(hint("dor-pi").as_deref(), Some("did you mean door-pi?"));
        assert_eq!(
            hint("printer").as_deref(),
            Some("`printer` alone names an agent; a process is AGENT/PROCESS")
        );
        assert_eq!(hint("door-pi"), None, "an agent that is there");
        assert_eq!(
            hint("garage/opener").as_deref(),
            Some("no agent garage reports to this broker")
        );
        assert_eq!(
            hint("dor-pi/doorbot").as_deref(),
            Some("did you mean door-pi/doorbot?")
        );
        let empty = self::fleet(&[]);
        assert_eq!(
            empty
                .hint(&Target::parse("door-pi/doorbot").unwrap())
                .as_deref(),
            Some("no agent reports to this broker; is it the one they use (--broker)?")
        );
    }

    #[test]
    fn targets_longer_than_any_name_are_refused_without_echoing_them_whole() {
        let name = "x".repeat(64);
        assert!(Target::parse(&format!("{name}/{name}")).is_ok());
        assert!(Target::parse(&format!("*{name}*/*")).is_ok());
        let long = "x".repeat(70_000);
        for text in [long.clone(), format!("a/{long}")] {
            let error = Target::parse(&text).unwrap_err();
            assert!(error.len() < 300, "{error}");
            assert!(error.contains("at most 64 characters"), "{error}");
        }
    }

    #[test]
    fn targets_select_processes_by_glob() {
        let fleet = fleet(&[
            (
                "respawn/v1/door-pi/state",
                state("door-pi", "online", &["doorbot", "worker"]),
            ),
            (
                "respawn/v1/door-2/state",
                state("door-2", "online", &["worker"]),
            ),
            (
                "respawn/v1/garage/state",
                state("garage", "online", &["worker", "scraper"]),
            ),
        ]);
        let select = |t: &str| fleet.select(&Target::parse(t).unwrap());
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, p)| (a.to_string(), p.to_string()))
                .collect()
        };
        assert_eq!(select("door-*/doorbot"), pairs(&[("door-pi", "doorbot")]));
        assert_eq!(
            select("*/worker"),
            pairs(&[
                ("door-2", "worker"),
                ("door-pi", "worker"),
                ("garage", "worker")
            ])
        );
        assert_eq!(
            select("garage"),
            pairs(&[("garage", "worker"), ("garage", "scraper")])
        );
        assert!(select("nope/*").is_empty());
        let filtered = fleet.filter(Some(&Target::parse("*/scraper").unwrap()));
        assert_eq!(filtered.len(), 1);
    }
}
