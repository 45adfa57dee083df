//! What the hub tells Home Assistant as the fleet changes: each agent's discovery and
//! availability, kept in step with the broker across the hub's restarts and reconnections,
//! the hub's own presence, and the verdict on each press. Pure: told what the hub heard and
//! what its fleet now is, it says what to publish (retained).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use respawn_common::topics::Topics;
use serde_json::Value;

use super::config::HomeAssistant;
use super::homeassistant::{self as ha, Presses, Published, Verdict};
use crate::fleet::{Agent, Fleet, Liveness};

/// The longest state Home Assistant takes: a longer one is refused and the sensor keeps
/// showing the press before (a failure's outcome, which names a path, can run longer).
const MAX_STATE_CHARS: usize = 255;

/// How often an agent's discovery configs are made again at most as its births change them:
/// a device that may publish only its own births, alternating two lists of a thousand
/// processes, had the hub make and send 8,000 configs per birth, for minutes after it stopped.
const REMAKE_EVERY: Duration = Duration::from_secs(1);

/// A retained message to publish: its topic and payload (empty: clear the topic).
pub type Publish = (String, Vec<u8>);

/// The hub's side of Home Assistant's MQTT discovery.
#[derive(Debug)]
pub struct Bridge {
    topics: Topics,
    config: HomeAssistant,
    published: Published,
    presses: Presses,
    /// Presses that came to something, numbered across all processes.
    presses_numbered: u64,
    /// Per "last command" topic shown: the number of the press whose outcome it shows, and
    /// that outcome, to show it again on a broker that lost it.
    shown: BTreeMap<String, (u64, Vec<u8>)>,
    /// By agent, a digest of what its published configs were made from (its process names
    /// and version): a process's state changes none of it, and making every config of the
    /// agent again at each state kept a hub with a fleet's burst of them busy for a minute.
    made_from: BTreeMap<String, u64>,
    /// By agent, when its configs were last made as its births changed them, and the agents
    /// whose change waits for [`REMAKE_EVERY`] to pass.
    remade: BTreeMap<String, Instant>,
    deferred: BTreeSet<String>,
}

/// A digest of what an agent's discovery configs are made from besides the hub's settings:
/// its process names, in order, and its version.
fn made_from(agent: &Agent) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    agent.process_names().hash(&mut hasher);
    agent
        .state
        .as_ref()
        .and_then(|s| s.version.as_deref())
        .hash(&mut hasher);
    hasher.finish()
}

/// A press's place among the presses of its process, for its outcome.
#[derive(Debug)]
pub struct Ticket {
    topic: String,
    number: u64,
}

impl Bridge {
    pub fn new(topics: Topics, config: HomeAssistant) -> Self {
        let presses = Presses::new(config.presses_per_minute);
        Self {
            topics,
            config,
            published: Published::default(),
            presses,
            presses_numbered: 0,
            shown: BTreeMap::new(),
            made_from: BTreeMap::new(),
            remade: BTreeMap::new(),
            deferred: BTreeSet::new(),
        }
    }

    /// The hub's word that it is there, retained: after each reading of the fleet, and in
    /// answer to another hub's last word.
    pub fn present() -> Publish {
        (ha::HUB_AVAILABILITY.to_owned(), ha::ONLINE.to_vec())
    }

    /// The hub's last word, also its Last Will: Home Assistant hears that it is gone, however
    /// it goes.
    pub fn gone() -> Publish {
        (ha::HUB_AVAILABILITY.to_owned(), ha::OFFLINE.to_vec())
    }

    /// What the hub reads of Home Assistant's, beside the fleet's events (at QoS 1): Home
    /// Assistant's status, the presses, the hubs' presence.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            ha::status_topic(&self.config.prefix),
            ha::presses_filter(),
            ha::HUB_AVAILABILITY.to_owned(),
        ]
    }

    /// Where retained messages of an earlier run may lie, read once per connection.
    pub fn leftover_filters(&self) -> Vec<String> {
        ha::leftover_filters(&self.config.prefix).to_vec()
    }

    /// A message of Home Assistant's or of a hub's: what to publish in answer. `None`: it is
    /// neither (it is the fleet's).
    pub fn hear(&mut self, topic: &str, payload: &[u8], fleet: &Fleet) -> Option<Vec<Publish>> {
        if topic == ha::HUB_AVAILABILITY {
            // Another hub that stopped said the hubs are gone; this one is still here.
            return Some(match payload {
                ha::OFFLINE => vec![Self::present()],
                _ => Vec::new(),
            });
        }
        if topic == ha::status_topic(&self.config.prefix) {
            // Home Assistant (re)started: it wants every discovery message again.
            return Some(match payload {
                b"online" => self.published.all(&self.configs_of(fleet)),
                _ => Vec::new(),
            });
        }
        None
    }

    /// The discovery configs of an agent as `fleet` has it (none when it is gone).
    fn configs_of<'a>(&'a self, fleet: &'a Fleet) -> impl Fn(&str) -> BTreeMap<String, Value> + 'a {
        let (prefix, allow) = (&self.config.prefix, &self.config.allow);
        move |agent| ha::configs(&self.topics, prefix, allow, agent, fleet.agent(agent))
    }

    /// What Home Assistant is to be told of `agent` as `fleet` now has it: what changed of
    /// its entities and of its availability (all of them cleared when it is gone).
    pub fn agent(&mut self, fleet: &Fleet, agent: &str) -> Vec<Publish> {
        self.describe(fleet, agent, None)
    }

    /// As [`Bridge::agent`] for a change heard at `now`, but an agent's entities are made
    /// again at most once per [`REMAKE_EVERY`]; a change within it waits for
    /// [`Bridge::remakes_due`]. Its availability, and its going, are told at once.
    pub fn agent_changed(&mut self, fleet: &Fleet, agent: &str, now: Instant) -> Vec<Publish> {
        self.describe(fleet, agent, Some(now))
    }

    /// The changes of entities that waited and may now be told.
    pub fn remakes_due(&mut self, fleet: &Fleet, now: Instant) -> Vec<Publish> {
        let since = |at: &Instant| now.saturating_duration_since(*at);
        let due: Vec<String> = (self.deferred.iter())
            .filter(|agent| {
                self.remade
                    .get(*agent)
                    .is_none_or(|at| since(at) >= REMAKE_EVERY)
            })
            .cloned()
            .collect();
        (due.iter())
            .flat_map(|agent| self.describe(fleet, agent, Some(now)))
            .collect()
    }

    fn describe(&mut self, fleet: &Fleet, agent: &str, now: Option<Instant>) -> Vec<Publish> {
        let known = fleet.agent(agent);
        let made_from = known.map(made_from);
        let mut out = Vec::new();
        let changed = made_from.is_none() || self.made_from.get(agent) != made_from.as_ref();
        let too_soon = match (now, &made_from, self.remade.get(agent)) {
            (Some(now), Some(_), Some(at)) => now.saturating_duration_since(*at) < REMAKE_EVERY,
            _ => false,
        };
        if !changed {
            // Back as it was told, or told already.
            self.deferred.remove(agent);
        } else if too_soon {
            self.deferred.insert(agent.to_owned());
        } else {
            self.deferred.remove(agent);
            match (now, &made_from) {
                (Some(now), Some(_)) => self.remade.insert(agent.to_owned(), now),
                _ => self.remade.remove(agent),
            };
            let configs = self.configs_of(fleet)(agent);
            out = self.published.update(agent, configs);
            for (topic, payload) in &out {
                if payload.is_empty() {
                    self.shown.remove(topic);
                }
            }
            match made_from {
                Some(digest) => self.made_from.insert(agent.to_owned(), digest),
                None => self.made_from.remove(agent),
            };
        }
        let up = known.map(|a| a.liveness() == Liveness::Online);
        out.extend(self.published.availability(agent, up));
        out
    }

    /// After a reading of the fleet (`leftovers`: the retained messages under
    /// [`Bridge::leftover_filters`]): what the hub's earlier runs, or this one before the
    /// broker went away, told Home Assistant that is no longer so, then the hub's presence.
    /// What an earlier run left is cleared; on a reconnection (`again`), what this run
    /// published and the broker no longer keeps goes out again (at the first connection,
    /// everything published was just sent).
    pub fn after_reading(
        &mut self,
        fleet: &Fleet,
        leftovers: &[Publish],
        again: bool,
    ) -> Vec<Publish> {
        let mut out = self.published.leftovers(leftovers);
        for agent in self.published.agents() {
            if fleet.agent(&agent).is_some() {
                continue;
            }
            // Of a broker that lost what it kept (restarted without persistence), an agent
            // not back yet is only away: cleared, Home Assistant would delete its entities,
            // and what users set on them. They show unavailable, and go out again when it is
            // back. An agent whose configs the broker still keeps did leave.
            if again && self.published.none_kept(&agent, leftovers) {
                self.published.lost_configs(&agent);
                self.made_from.remove(&agent);
                out.extend(self.published.availability(&agent, Some(false)));
                continue;
            }
            out.extend(self.agent(fleet, &agent));
        }
        // After the agents that are gone, so that nothing of theirs goes out again.
        if again {
            out.extend(self.published.missing(leftovers, &self.configs_of(fleet)));
            let kept =
                |topic: &String, text: &Vec<u8>| leftovers.contains(&(topic.clone(), text.clone()));
            let lost = (self.shown.iter()).filter(|(topic, (_, text))| !kept(topic, text));
            out.extend(lost.map(|(topic, (_, text))| (topic.clone(), text.clone())));
        }
        out.push(Self::present());
        out
    }

    /// What becomes of a press of `agent`'s `process` at `now`; `can_sign`: the hub has a
    /// signing key.
    pub fn judge(
        &mut self,
        fleet: &Fleet,
        agent: &str,
        process: &str,
        can_sign: bool,
        now: Instant,
    ) -> Verdict {
        let known = fleet
            .agent(agent)
            .is_some_and(|a| a.process_names().contains(&process));
        let allow = &self.config.allow;
        match self.presses.judge(allow, agent, process, known, now) {
            Verdict::Restart if !can_sign => {
                Verdict::Refused("refused: the hub has no signing key".into())
            }
            verdict => verdict,
        }
    }

    /// The place of a press of `agent`'s `process` that comes to something (a restart, or
    /// a refusal), among its presses.
    pub fn ticket(&mut self, agent: &str, process: &str) -> Ticket {
        let topic = ha::last_command_topic(agent, process);
        self.presses_numbered += 1;
        Ticket {
            topic,
            number: self.presses_numbered,
        }
    }

    /// What a press came to, for its process's "last command" sensor: shown unless a later
    /// press's outcome already is (a restart takes seconds, and a refusal of the presses
    /// after it comes at once: the sensor is to end on the latest press, not the slowest),
    /// and while the sensor is there (a process gone meanwhile would leave it retained).
    pub fn outcome(&mut self, ticket: Ticket, text: String) -> Option<Publish> {
        if !self.published.has_sensor(&ticket.topic) {
            self.shown.remove(&ticket.topic);
            return None;
        }
        let (shown, shown_text) = self.shown.entry(ticket.topic.clone()).or_default();
        if ticket.number < *shown {
            return None;
        }
        let text = respawn_common::text::cut(&text, MAX_STATE_CHARS - 1).into_bytes();
        (*shown, *shown_text) = (ticket.number, text.clone());
        Some((ticket.topic, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(allow: &[&str]) -> HomeAssistant {
        HomeAssistant {
            prefix: ha::DEFAULT_PREFIX.to_owned(),
            allow: allow.iter().map(|g| g.to_string()).collect(),
            presses_per_minute: HomeAssistant::PRESSES_PER_MINUTE,
        }
    }

    fn birth(agent: &str, processes: &[&str]) -> (String, Vec<u8>) {
        let birth = json!({"v": 1, "agent": agent, "state": "online", "version": "0.1.0",
            "processes": processes});
        let topic = Topics::default().state(agent);
        (topic, birth.to_string().into_bytes())
    }

    fn topics_of(out: &[Publish]) -> Vec<&str> {
        out.iter().map(|(topic, _)| topic.as_str()).collect()
    }

    /// Configs are made again only when what they are made of changes: each change of it
    /// goes out, and a process's state is none of it.
    #[test]
    fn configs_follow_an_agents_names_and_version_not_its_states() {
        let mut bridge = Bridge::new(Topics::default(), config(&[]));
        let mut fleet = Fleet::default();
        let topics = Topics::default();
        let (topic, payload) = birth("door-pi", &["doorbot"]);
        fleet.apply(&topics, &topic, &payload);
        bridge.agent(&fleet, "door-pi");
        let state = json!({"v": 1, "agent": "door-pi", "name": "doorbot", "state": "backoff",
            "since": "2026-11-25T00:00:00Z", "restarts": 3});
        let process = topics.process("door-pi", "doorbot");
        fleet.apply(&topics, &process, state.to_string().as_bytes());
        assert_eq!(bridge.agent(&fleet, "door-pi"), []);
        let (topic, payload) = birth("door-pi", &["doorbot", "web"]);
        fleet.apply(&topics, &topic, &payload);
        let added = bridge.agent(&fleet, "door-pi");
        assert!(
            added
                .iter()
                .all(|(t, p)| t.contains("/web_") && !p.is_empty()),
            "{:?}",
            topics_of(&added)
        );
        assert_eq!(added.len(), 4, "{:?}", topics_of(&added));
        let newer = String::from_utf8(payload)
            .unwrap()
            .replace("0.1.0", "0.2.0");
        fleet.apply(&topics, &topic, newer.as_bytes());
        let upgraded = bridge.agent(&fleet, "door-pi");
        assert_eq!(
            upgraded.len(),
            8,
            "every config names the version: {:?}",
            topics_of(&upgraded)
        );
        assert!(upgraded
            .iter()
            .all(|(_, p)| String::from_utf8_lossy(p).contains("0.2.0")));
    }

    #[test]
    fn births_that_change_the_entities_remake_them_once_a_second_at_most() {
        let mut bridge = Bridge::new(Topics::default(), config(&[]));
        let mut fleet = Fleet::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let born = |fleet: &mut Fleet, processes: &[&str]| {
            let (topic, payload) = birth("door-pi", processes);
            fleet.apply(&Topics::default(), &topic, &payload);
        };
        born(&mut fleet, &["doorbot"]);
        assert_eq!(bridge.agent_changed(&fleet, "door-pi", at(0)).len(), 5);
        // A second list within the second waits, as does a third; the last one is told.
        born(&mut fleet, &["web"]);
        assert_eq!(bridge.agent_changed(&fleet, "door-pi", at(100)), []);
        born(&mut fleet, &["web", "db"]);
        assert_eq!(bridge.agent_changed(&fleet, "door-pi", at(200)), []);
        assert_eq!(bridge.remakes_due(&fleet, at(900)), []);
        let told = bridge.remakes_due(&fleet, at(1000));
        let topics = topics_of(&told);
        assert!(
            topics.iter().any(|t| t.contains("/door-pi/db_")),
            "{topics:?}"
        );
        assert!(told
            .iter()
            .any(|(t, p)| t.contains("/doorbot_") && p.is_empty()));
        assert_eq!(bridge.remakes_due(&fleet, at(5000)), [], "told once");
        // Back to what was told before the wait was over: nothing waits any longer.
        born(&mut fleet, &["doorbot"]);
        assert_eq!(bridge.agent_changed(&fleet, "door-pi", at(1500)), []);
        born(&mut fleet, &["web", "db"]);
        assert_eq!(bridge.agent_changed(&fleet, "door-pi", at(1600)), []);
        assert_eq!(bridge.remakes_due(&fleet, at(9000)), []);
        // Gone is told at once.
        fleet.apply(&Topics::default(), &birth("door-pi", &[]).0, b"");
        let gone = bridge.agent_changed(&fleet, "door-pi", at(1700));
        assert!(
            !gone.is_empty() && gone.iter().all(|(_, p)| p.is_empty()),
            "{gone:?}"
        );
    }

    #[test]
    fn an_agent_is_described_once_and_cleared_when_it_is_gone() {
        let mut bridge = Bridge::new(Topics::default(), config(&[]));
        let mut fleet = Fleet::default();
        let (topic, payload) = birth("door-pi", &["doorbot"]);
        fleet.apply(&Topics::default(), &topic, &payload);
        let first = bridge.agent(&fleet, "door-pi");
        assert_eq!(
            first.len(),
            5,
            "four entities and the availability: {first:?}"
        );
        assert!(first.contains(&(
            "respawn-ha/door-pi/availability".to_owned(),
            ha::ONLINE.to_vec()
        )));
        assert!(
            bridge.agent(&fleet, "door-pi").is_empty(),
            "nothing changed"
        );
        fleet.apply(&Topics::default(), &topic, b"");
        let gone = bridge.agent(&fleet, "door-pi");
        assert_eq!(gone.len(), 5, "{gone:?}");
        assert!(
            gone.iter().all(|(_, payload)| payload.is_empty()),
            "all cleared"
        );
    }

    #[test]
    fn a_reading_clears_what_is_no_longer_so_and_says_the_hub_is_there() {
        let mut bridge = Bridge::new(Topics::default(), config(&[]));
        let mut fleet = Fleet::default();
        for agent in ["door-pi", "garage-pi"] {
            let (topic, payload) = birth(agent, &["opener"]);
            fleet.apply(&Topics::default(), &topic, &payload);
            bridge.agent(&fleet, agent);
        }
        // The broker came back without garage-pi (it left while the hub was away), and
        // without door-pi's availability (a broker that lost its persistence).
        let mut reread = Fleet::default();
        let (topic, payload) = birth("door-pi", &["opener"]);
        reread.apply(&Topics::default(), &topic, &payload);
        let retained: Vec<Publish> = bridge
            .published
            .all(&bridge.configs_of(&fleet))
            .into_iter()
            .filter(|(topic, _)| topic != "respawn-ha/door-pi/availability")
            .collect();
        let out = bridge.after_reading(&reread, &retained, true);
        let garage_cleared = out
            .iter()
            .filter(|(topic, payload)| topic.contains("garage-pi") && payload.is_empty());
        assert_eq!(garage_cleared.count(), 5, "{:?}", topics_of(&out));
        assert!(out.contains(&(
            "respawn-ha/door-pi/availability".to_owned(),
            ha::ONLINE.to_vec()
        )));
        assert_eq!(out.last(), Some(&Bridge::present()));
        let first = bridge.after_reading(&reread, &[], false);
        assert_eq!(
            first,
            [Bridge::present()],
            "the first reading sends nothing twice"
        );
    }

    #[test]
    fn home_assistant_and_other_hubs_are_answered_and_the_fleet_is_not_theirs() {
        let mut bridge = Bridge::new(Topics::default(), config(&[]));
        let mut fleet = Fleet::default();
        let (topic, payload) = birth("door-pi", &["opener"]);
        fleet.apply(&Topics::default(), &topic, &payload);
        let described = bridge.agent(&fleet, "door-pi");
        let again = bridge.hear("homeassistant/status", b"online", &fleet);
        assert_eq!(again.map(|out| out.len()), Some(described.len()));
        assert_eq!(
            bridge.hear("homeassistant/status", b"offline", &fleet),
            Some(vec![])
        );
        let answer = bridge.hear(ha::HUB_AVAILABILITY, ha::OFFLINE, &fleet);
        assert_eq!(answer, Some(vec![Bridge::present()]));
        assert_eq!(
            bridge.hear(ha::HUB_AVAILABILITY, ha::ONLINE, &fleet),
            Some(vec![])
        );
        assert_eq!(bridge.hear(&topic, &payload, &fleet), None);
    }

    #[test]
    fn the_last_command_sensor_ends_on_the_latest_press_not_the_slowest() {
        let mut bridge = Bridge::new(Topics::default(), config(&["door-pi"]));
        let mut fleet = Fleet::default();
        let (state, payload) = birth("door-pi", &["opener", "web"]);
        fleet.apply(&Topics::default(), &state, &payload);
        bridge.agent(&fleet, "door-pi");
        let slow_restart = bridge.ticket("door-pi", "opener");
        let refused = bridge.ticket("door-pi", "opener");
        let other = bridge.ticket("door-pi", "web");
        let topic = "respawn-ha/door-pi/opener/last_command".to_owned();
        assert_eq!(
            bridge.outcome(refused, "refused: more than 6 presses a minute".into()),
            Some((
                topic.clone(),
                b"refused: more than 6 presses a minute".to_vec()
            ))
        );
        assert_eq!(bridge.outcome(slow_restart, "restarted".into()), None);
        assert!(
            bridge.outcome(other, "restarted".into()).is_some(),
            "another process's"
        );
        let next = bridge.ticket("door-pi", "opener");
        assert_eq!(
            bridge.outcome(next, "restarted".into()),
            Some((topic.clone(), b"restarted".to_vec()))
        );
        // Home Assistant refuses a state of more than 255 characters, and a failure, which
        // names a path, can run longer: it is cut, not lost.
        let long = format!("failed: cannot run /opt/{}doorbot", "très-long/".repeat(40));
        let failed = bridge.ticket("door-pi", "opener");
        let (_, shown) = bridge.outcome(failed, long.clone()).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert_eq!(shown.chars().count(), MAX_STATE_CHARS, "{shown}");
        assert!(shown.ends_with('…') && long.starts_with(shown.trim_end_matches('…')));

        // The process leaves while a press of it is under way: its sensor and what it showed
        // are cleared, and the late outcome is not published.
        let under_way = bridge.ticket("door-pi", "opener");
        let (state, payload) = birth("door-pi", &["web"]);
        fleet.apply(&Topics::default(), &state, &payload);
        let cleared = bridge.agent(&fleet, "door-pi");
        assert!(
            cleared.contains(&(topic.clone(), Vec::new())),
            "{cleared:?}"
        );
        assert_eq!(bridge.outcome(under_way, "restarted".into()), None);
        assert!(!bridge.shown.contains_key(&topic), "nothing kept of it");
    }

    #[test]
    fn an_agent_told_once_read_whole_keeps_its_sensors() {
        let mut bridge = Bridge::new(Topics::default(), config(&["door-pi"]));
        let mut fleet = Fleet::default();
        let (state, payload) = birth("door-pi", &["opener"]);
        fleet.apply(&Topics::default(), &state, &payload);
        bridge.agent(&fleet, "door-pi");
        // Read afresh, as the hub reads after a reconnection: the Last Will (no processes)
        // first, then the birth again. Told in the middle, the bridge clears the sensors;
        // told once the reading is whole, as the hub tells it, nothing changes.
        let will = json!({"v": 1, "agent": "door-pi", "state": "lost"});
        let mut reread = Fleet::default();
        reread.apply(&Topics::default(), &state, will.to_string().as_bytes());
        let last_command = (
            "respawn-ha/door-pi/opener/last_command".to_owned(),
            Vec::new(),
        );
        let mut midway = Bridge::new(Topics::default(), config(&["door-pi"]));
        midway.agent(&fleet, "door-pi");
        assert!(midway.agent(&reread, "door-pi").contains(&last_command));
        reread.apply(&Topics::default(), &state, &payload);
        assert_eq!(bridge.agent(&reread, "door-pi"), []);
    }

    /// A bridge that described door-pi (one process, `opener`, allowed) and showed what a
    /// press of it came to; its fleet, the description and that outcome.
    fn door_pi_with_a_press() -> (Bridge, Fleet, Vec<Publish>, Publish) {
        let mut bridge = Bridge::new(Topics::default(), config(&["door-pi"]));
        let mut fleet = Fleet::default();
        let (state, payload) = birth("door-pi", &["opener"]);
        fleet.apply(&Topics::default(), &state, &payload);
        let described = bridge.agent(&fleet, "door-pi");
        let press = bridge.ticket("door-pi", "opener");
        let shown = bridge.outcome(press, "restarted".into()).unwrap();
        (bridge, fleet, described, shown)
    }

    /// Found by a review: a broker restarted without its persistence, read again before an
    /// agent was back on it, made the hub clear the agent's configs, and Home Assistant
    /// deleted its entities with their names, areas and automations.
    #[test]
    fn an_agent_not_back_on_a_broker_that_lost_everything_is_unavailable_not_deleted() {
        let (mut bridge, fleet, described, shown) = door_pi_with_a_press();
        let away = bridge.after_reading(&Fleet::default(), &[], true);
        assert!(
            !away
                .iter()
                .any(|(topic, payload)| topic.starts_with("homeassistant/") && payload.is_empty()),
            "no config cleared: {:?}",
            topics_of(&away)
        );
        let unavailable = (
            "respawn-ha/door-pi/availability".to_owned(),
            ha::OFFLINE.to_vec(),
        );
        assert!(away.contains(&unavailable), "{:?}", topics_of(&away));
        assert!(away.contains(&shown), "what the press came to stays");
        // Back: every config goes out again, to the broker that lost them.
        let back = bridge.agent(&fleet, "door-pi");
        for config in described
            .iter()
            .filter(|(topic, _)| topic.starts_with("homeassistant/"))
        {
            assert!(back.contains(config), "{} not again", config.0);
        }
        // Back with a process fewer (removed while the broker had lost everything): its
        // entities are cleared.
        let mut two = Bridge::new(Topics::default(), config(&[]));
        let mut fleet_of_two = Fleet::default();
        let (state, payload) = birth("door-pi", &["opener", "web"]);
        fleet_of_two.apply(&Topics::default(), &state, &payload);
        two.agent(&fleet_of_two, "door-pi");
        two.after_reading(&Fleet::default(), &[], true);
        let (state, payload) = birth("door-pi", &["opener"]);
        let mut fewer = Fleet::default();
        fewer.apply(&Topics::default(), &state, &payload);
        let back = two.agent(&fewer, "door-pi");
        let web_cleared = back
            .iter()
            .filter(|(t, p)| t.contains("/web_") && p.is_empty());
        assert_eq!(web_cleared.count(), 4, "{:?}", topics_of(&back));
        assert!(back
            .iter()
            .any(|(t, p)| t.contains("/opener_") && !p.is_empty()));
        // A broker that kept the configs but not the agent: it left while the hub was away.
        let kept = bridge.published.all(&bridge.configs_of(&fleet));
        let left = bridge.after_reading(&Fleet::default(), &kept, true);
        let cleared = left
            .iter()
            .filter(|(topic, payload)| topic.starts_with("homeassistant/") && payload.is_empty());
        let configs = described
            .iter()
            .filter(|(topic, _)| topic.starts_with("homeassistant/"));
        assert_eq!(cleared.count(), configs.count(), "{:?}", topics_of(&left));
    }

    /// Found by a review: a broker restarted without its persistence lost what the last
    /// presses came to, and the sensors showed unknown; the rest of discovery went out again.
    #[test]
    fn what_a_press_came_to_goes_out_again_to_a_broker_that_lost_it() {
        let (mut bridge, fleet, described, shown) = door_pi_with_a_press();
        let mut retained = described.clone();
        retained.push(shown.clone());
        let again = bridge.after_reading(&fleet, &retained, true);
        assert_eq!(again, [Bridge::present()], "the broker kept it all");
        let lost = bridge.after_reading(&fleet, &[], true);
        assert!(lost.contains(&shown), "{:?}", topics_of(&lost));
    }

    #[test]
    fn a_press_restarts_only_a_known_allowed_process_and_only_with_a_key() {
        let mut bridge = Bridge::new(
            Topics::default(),
            config(&["door-pi/opener", "door-pi/ghost"]),
        );
        let mut fleet = Fleet::default();
        let (topic, payload) = birth("door-pi", &["opener", "web"]);
        fleet.apply(&Topics::default(), &topic, &payload);
        let now = Instant::now();
        let judge = |bridge: &mut Bridge, process, can_sign| {
            bridge.judge(&fleet, "door-pi", process, can_sign, now)
        };
        assert_eq!(judge(&mut bridge, "opener", true), Verdict::Restart);
        assert!(matches!(
            judge(&mut bridge, "web", true),
            Verdict::Ignored(_)
        ));
        assert!(
            matches!(judge(&mut bridge, "opener", false), Verdict::Refused(why) if why.contains("signing key"))
        );
        let ghost = bridge.judge(&fleet, "door-pi", "ghost", true, now);
        assert!(matches!(ghost, Verdict::Ignored(why) if why.contains("no door-pi/ghost")));
    }
}
