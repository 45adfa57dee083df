//! Home Assistant's MQTT discovery for the fleet: one device per agent, and per process a
//! `binary_sensor` (running), a `sensor` for its restarts and one for its last exit, and —
//! where the hub's allow list says — a Restart `button` and a "last command" sensor. The
//! entities read state and availability straight from the agents' own retained topics with
//! value templates, so nothing is kept twice. A press becomes a signed restart only through
//! [`Presses::judge`]. Pure: what to publish (and clear) for an agent as the hub knows it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use respawn_common::ids::{validate_agent_id, validate_process_name};
use respawn_common::pattern::glob;
use respawn_common::signing::sha256_hex;
use respawn_common::topics::Topics;
use serde_json::{json, Value};

use crate::fleet::{Agent, Target};

/// Where Home Assistant looks for discovery when `[homeassistant] prefix` does not say.
pub const DEFAULT_PREFIX: &str = "homeassistant";

/// Where Home Assistant says it (re)started: discovery goes out again.
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// The root of the topics between the hub and Home Assistant: presses, outcomes and the
/// hub's word on each agent's availability.
const ROOT: &str = "respawn-ha/";

/// Where Home Assistant's Restart buttons publish.
pub fn presses_filter() -> String {
    // Shared: with two hubs on one broker (each there while the other is not), a press is
    // one restart, by whichever hub the broker hands it to.
    format!("$share/respawn-hub/{ROOT}+/+/restart")
}

/// Where a button of `agent`'s `process` publishes.
pub fn press_topic(agent: &str, process: &str) -> String {
    format!("{ROOT}{agent}/{process}/restart")
}

/// Where the hub says what the last press on `process` came to (retained).
pub fn last_command_topic(agent: &str, process: &str) -> String {
    format!("{ROOT}{agent}/{process}/last_command")
}

/// What the Restart buttons send: anything else on a press topic is refused.
pub const PRESS: &str = "PRESS";

/// What a message on a press topic comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Press {
    /// A Restart button's press of `process` on `agent`.
    Restart { agent: String, process: String },
    /// What no button sends (not [`PRESS`]): logged, nothing restarted.
    Refused(String),
    /// A press kept on the broker (published retained): refused, and to be cleared from the
    /// broker, or it would be refused again at every start of the hub.
    Retained(String),
    /// The broker's word that a retained press was cleared.
    Cleared,
}

/// What a message on `topic` presses: `None` when `topic` is no press topic.
pub fn press(topic: &str, payload: &[u8], retain: bool) -> Option<Press> {
    let (agent, process) = parse_press(topic)?;
    Some(match (retain, payload) {
        (true, []) => Press::Cleared,
        (true, _) => Press::Retained("a retained press is ignored".to_owned()),
        (false, payload) if payload != PRESS.as_bytes() => Press::Refused(format!(
            "a button press sends {PRESS}; ignoring anything else"
        )),
        (false, _) => Press::Restart { agent, process },
    })
}

/// The agent and process a press names, if `topic` is a press with valid names.
fn parse_press(topic: &str) -> Option<(String, String)> {
    let mut levels = topic.strip_prefix(ROOT)?.split('/');
    let (agent, process, verb) = (levels.next()?, levels.next()?, levels.next()?);
    if verb != "restart" || levels.next().is_some() {
        return None;
    }
    validate_agent_id(agent).ok()?;
    validate_process_name(process).ok()?;
    Some((agent.to_owned(), process.to_owned()))
}

/// Whether `[homeassistant] allow` lets the hub restart `agent`'s `process`.
pub fn allowed(allow: &[String], agent: &str, process: &str) -> bool {
    allow
        .iter()
        .filter_map(|g| Target::parse(g).ok())
        .any(|target| {
            glob(&target.agent, agent) && target.process.as_deref().is_none_or(|p| glob(p, process))
        })
}

/// What becomes of a press.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send a signed restart.
    Restart,
    /// Not done; why, for the process's "last command" sensor.
    Refused(String),
    /// Not done, and said only in the log: the process has no "last command" sensor (it is
    /// not allowed, or not in the fleet), and a topic made for it would stay for good.
    Ignored(String),
}

/// The presses the hub turns into restarts: at most so many a minute, all together.
#[derive(Debug)]
pub struct Presses {
    per_minute: u32,
    window: Option<(Instant, u32)>,
}

impl Presses {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            window: None,
        }
    }

    /// Decides a press of `agent`'s `process` (`known`: the fleet has it) at `now`.
    pub fn judge(
        &mut self,
        allow: &[String],
        agent: &str,
        process: &str,
        known: bool,
        now: Instant,
    ) -> Verdict {
        if !allowed(allow, agent, process) {
            return Verdict::Ignored(format!(
                "refused: {agent}/{process} is not in the hub's [homeassistant] allow list"
            ));
        }
        if !known {
            return Verdict::Ignored(format!("refused: the fleet has no {agent}/{process}"));
        }
        let (since, count) = self.window.get_or_insert((now, 0));
        if now.saturating_duration_since(*since) >= Duration::from_secs(60) {
            (*since, *count) = (now, 0);
        }
        if *count >= self.per_minute {
            return Verdict::Refused(format!(
                "refused: more than {} presses a minute",
                self.per_minute
            ));
        }
        *count += 1;
        Verdict::Restart
    }
}

/// Where retained messages the hub may have left are: every discovery config under `prefix`
/// (only respawn's are touched), the availability messages and what presses came to.
pub fn leftover_filters(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}/+/+/+/config"),
        format!("{ROOT}+/availability"),
        last_command_topic("+", "+"),
    ]
}

/// The topic of the hub's that a discovery config reads its state from: a "last command"
/// sensor's, which the hub clears with the sensor.
fn hub_state_topic(config: &Value) -> Option<&str> {
    config["state_topic"]
        .as_str()
        .filter(|t| t.starts_with(ROOT))
}

/// Whether a discovery config describes an entity of a respawn agent's device.
fn is_respawn_config(payload: &[u8]) -> bool {
    let config: Value = serde_json::from_slice(payload).unwrap_or_default();
    config["device"]["model"] == "respawn-agent"
        && config["unique_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("respawn_"))
}

/// Where the hub says whether it is there itself (retained `online`; `offline`, also as its
/// Last Will): a stopped hub can no longer tell a hung agent, nor take a press. One level, so
/// that no agent's topics (`respawn-ha/<agent>/…`, one deeper) can be it; a running hub
/// answers another's `offline` with its own `online`.
pub const HUB_AVAILABILITY: &str = "respawn-ha/hub";

/// The hub's word on itself and on each agent.
pub const ONLINE: &[u8] = b"online";
pub const OFFLINE: &[u8] = b"offline";

/// Where the hub says whether an agent is really there (`online`, or `offline` when it is
/// offline, lost or stale — stale is what the agent's own `state` cannot say).
pub fn availability_topic(agent: &str) -> String {
    format!("{ROOT}{agent}/availability")
}

/// A level of a discovery topic: Home Assistant takes `[a-zA-Z0-9_-]` there.
fn level(name: &str) -> String {
    name.chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '_',
            },
        )
        .collect()
}

/// `text` as the part of an entity id after its domain: lower case, `[a-z0-9]` in runs joined
/// by one `_` (Home Assistant refuses `__` and an `_` at either end).
fn entity_slug(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let runs = lower.split(|c: char| !c.is_ascii_alphanumeric());
    runs.filter(|run| !run.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// Each process's own part of its topics and ids: its name in Home Assistant's alphabet.
/// Where that makes two processes one (`web.v2` and `web_v2`), the name that had to be
/// changed gets a hash of itself after it, so that each keeps entities of its own and a name
/// Home Assistant takes as it is keeps its ids.
fn objects<'a>(names: &[&'a str]) -> BTreeMap<&'a str, String> {
    let levels: Vec<String> = names.iter().map(|name| level(name)).collect();
    let shared = |object: &String| levels.iter().filter(|l| *l == object).count() > 1;
    names
        .iter()
        .zip(&levels)
        .map(|(name, object)| match object != name && shared(object) {
            true => {
                let hash = sha256_hex(name.as_bytes());
                (*name, format!("{object}_{}", &hash[..8]))
            }
            false => (*name, object.clone()),
        })
        .collect()
}

/// Every discovery message of `agent` (`None`: it is gone), by topic. Of the agent, only its
/// process names and version are read: the bridge makes them again only when those change
/// (`bridge::made_from`, which must follow what is read here).
pub fn configs(
    topics: &Topics,
    prefix: &str,
    allow: &[String],
    id: &str,
    agent: Option<&Agent>,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(agent) = agent else {
        return out;
    };
    let mut device = json!({
        "identifiers": [format!("respawn_{id}")],
        "name": id,
        "manufacturer": "respawn",
        "model": "respawn-agent",
    });
    // Left out while unknown: Home Assistant refuses a config whose `sw_version` is null.
    if let Some(version) = agent.state.as_ref().and_then(|s| s.version.clone()) {
        device["sw_version"] = version.into();
    }
    // All must say online: the agent's own presence, the hub's word that its heartbeat has
    // not stopped, and the hub's word that it is there to say so.
    let availability = json!([
        {
            "topic": topics.state(id),
            "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        },
        { "topic": availability_topic(id) },
        { "topic": HUB_AVAILABILITY },
    ]);
    // An `_` of the agent's id doubled: ids are joined with `_`, and agent `lab` with process
    // `pi_sensor` would otherwise be agent `lab_pi` with process `sensor`, whose entities Home
    // Assistant then drops ("ID already exists"). A process's part starts with no `_`.
    let node = level(id).replace('_', "__");
    let names = agent.process_names();
    for (process, object) in objects(&names) {
        let state_topic = topics.process(id, process);
        let base = |component: &str, suffix: &str, name: String| {
            let id = format!("respawn_{node}_{object}_{suffix}");
            json!({
                "name": name,
                "default_entity_id": format!("{component}.{}", entity_slug(&id)),
                "unique_id": id,
                "state_topic": state_topic,
                "availability": availability,
                "availability_mode": "all",
                "device": device,
            })
        };
        let mut running = base("binary_sensor", "running", format!("{process} running"));
        running["device_class"] = "running".into();
        running["value_template"] = "{{ 'ON' if value_json.state == 'running' else 'OFF' }}".into();
        // What an automation wants to hear of: a crash loop stays on through the loop, which
        // `running` goes in and out of with each run.
        let mut problem = base("binary_sensor", "problem", format!("{process} problem"));
        problem["device_class"] = "problem".into();
        problem["value_template"] = PROBLEM_TEMPLATE.into();
        let mut restarts = base("sensor", "restarts", format!("{process} restarts"));
        restarts["state_class"] = "total_increasing".into();
        restarts["value_template"] = "{{ value_json.restarts }}".into();
        let mut exit = base("sensor", "last_exit", format!("{process} last exit"));
        exit["icon"] = "mdi:exit-run".into();
        exit["value_template"] = LAST_EXIT_TEMPLATE.into();
        let mut entities = vec![
            ("binary_sensor", "running", running),
            ("binary_sensor", "problem", problem),
            ("sensor", "restarts", restarts),
            ("sensor", "last_exit", exit),
        ];
        // The Restart button, and what its last press came to, where the hub obeys it.
        if allowed(allow, id, process) {
            let mut button = base("button", "restart", format!("{process} restart"));
            if let Some(fields) = button.as_object_mut() {
                fields.remove("state_topic");
            }
            button["device_class"] = "restart".into();
            button["command_topic"] = press_topic(id, process).into();
            button["payload_press"] = PRESS.into();
            let mut last = base("sensor", "last_command", format!("{process} last command"));
            last["state_topic"] = last_command_topic(id, process).into();
            last["icon"] = "mdi:console".into();
            entities.push(("button", "restart", button));
            entities.push(("sensor", "last_command", last));
        }
        for (component, suffix, config) in entities {
            out.insert(
                format!("{prefix}/{component}/{node}/{object}_{suffix}/config"),
                config,
            );
        }
    }
    out
}

/// A process in trouble: in a crash loop (whatever the state of the moment), given up, or
/// unable to start.
const PROBLEM_TEMPLATE: &str = "{{ 'ON' if value_json.get('crash_loop') or value_json.state in ('crash_loop', 'failed', 'spawn_failed') else 'OFF' }}";

/// The last exit in words: `exit 3`, `SIGSEGV`, or `none`.
const LAST_EXIT_TEMPLATE: &str = "{% set e = value_json.last_exit %}{% if not e %}none{% elif 'code' in e.status %}exit {{ e.status.code }}{% else %}{{ e.status.signal }}{% endif %}";

/// What has been published, to publish only what changed: a digest of each config, not the
/// config (a fleet of 5,000 agents of 10 processes has 150,000 or more, and kept whole they
/// made the hub eleven times larger); what goes out again is made again from the fleet.
#[derive(Debug, Default)]
pub struct Published {
    /// By agent, a digest of the config published on each topic.
    by_agent: BTreeMap<String, BTreeMap<String, u64>>,
    /// By agent, the hub's topics that its published sensors read their state from.
    sensors: BTreeMap<String, BTreeSet<String>>,
    available: BTreeMap<String, bool>,
}

/// The configs of an agent as the fleet has it now, by topic (what [`configs`] says).
pub type ConfigsOf<'a> = dyn Fn(&str) -> BTreeMap<String, Value> + 'a;

/// The digest of a config the broker lost: no payload's (a real one is this by a chance of
/// one in 2^64).
const LOST: u64 = 0;

/// A digest of a retained payload, to tell whether it is what was published. Not kept across
/// runs of the hub: any stable hash of the process does.
fn digest(payload: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(payload);
    hasher.finish()
}

impl Published {
    /// What to publish for `agent` now that its configs are `now`: changed configs, and an
    /// empty payload for those it no longer has.
    pub fn update(&mut self, agent: &str, now: BTreeMap<String, Value>) -> Vec<(String, Vec<u8>)> {
        let before = self.by_agent.remove(agent).unwrap_or_default();
        let mut out: Vec<(String, Vec<u8>)> = before
            .keys()
            .filter(|topic| !now.contains_key(*topic))
            .map(|topic| (topic.clone(), Vec::new()))
            .collect();
        // A sensor that goes takes what its state topic holds with it: a process of that
        // name that comes back starts with no press of the one before.
        let sensors: BTreeSet<String> = (now.values().filter_map(hub_state_topic))
            .map(str::to_owned)
            .collect();
        let sensors_before = self.sensors.remove(agent).unwrap_or_default();
        let gone = sensors_before.difference(&sensors);
        out.extend(gone.map(|topic| (topic.clone(), Vec::new())));
        let mut digests = BTreeMap::new();
        for (topic, config) in now {
            let payload = config.to_string().into_bytes();
            let digest = digest(&payload);
            if before.get(&topic) != Some(&digest) {
                out.push((topic.clone(), payload));
            }
            digests.insert(topic, digest);
        }
        if !digests.is_empty() {
            self.by_agent.insert(agent.to_owned(), digests);
        }
        if !sensors.is_empty() {
            self.sensors.insert(agent.to_owned(), sensors);
        }
        out
    }

    /// The hub's availability message for `agent`, if it changed (`None` as `available`:
    /// the agent is gone, and so is the message).
    pub fn availability(
        &mut self,
        agent: &str,
        available: Option<bool>,
    ) -> Option<(String, Vec<u8>)> {
        let topic = availability_topic(agent);
        match available {
            None => self.available.remove(agent).map(|_| (topic, Vec::new())),
            Some(up) if self.available.insert(agent.to_owned(), up) != Some(up) => {
                Some((topic, availability_word(up)))
            }
            Some(_) => None,
        }
    }

    /// Whether a published sensor reads its state from the hub's `topic`.
    pub fn has_sensor(&self, topic: &str) -> bool {
        let agent = topic
            .strip_prefix(ROOT)
            .and_then(|rest| rest.split('/').next());
        agent
            .and_then(|agent| self.sensors.get(agent))
            .is_some_and(|sensors| sensors.contains(topic))
    }

    /// Whether the broker keeps none of `agent`'s configs: `retained` is what it holds under
    /// [`leftover_filters`].
    pub fn none_kept(&self, agent: &str, retained: &[(String, Vec<u8>)]) -> bool {
        let Some(published) = self.by_agent.get(agent) else {
            return true;
        };
        !retained
            .iter()
            .any(|(topic, payload)| !payload.is_empty() && published.contains_key(topic))
    }

    /// Marks `agent`'s configs as lost (by a broker): when it is back, each goes out again,
    /// and those it no longer has (a process removed meanwhile) are cleared. Its availability
    /// stays.
    pub fn lost_configs(&mut self, agent: &str) {
        if let Some(published) = self.by_agent.get_mut(agent) {
            for digest in published.values_mut() {
                *digest = LOST;
            }
        }
    }

    /// The agents discovery was published for.
    pub fn agents(&self) -> Vec<String> {
        self.by_agent
            .keys()
            .chain(self.available.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Clears for the retained messages of the hub's making that nothing published now
    /// accounts for: respawn's discovery configs, availability messages and what presses
    /// came to, left by an earlier run of the hub (a process removed or an agent gone while it was away, an
    /// allow list since narrowed). `retained` is what the broker holds under
    /// [`leftover_filters`]; another integration's configs are left alone.
    pub fn leftovers(&self, retained: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let published: BTreeSet<&String> =
            self.by_agent.values().flat_map(BTreeMap::keys).collect();
        let announced: BTreeSet<String> = self
            .available
            .keys()
            .map(|a| availability_topic(a))
            .collect();
        retained
            .iter()
            .filter(|(topic, payload)| {
                let ours = match topic.starts_with(ROOT) {
                    true if topic.ends_with("/last_command") => !self.has_sensor(topic),
                    true => !announced.contains(topic),
                    false => !published.contains(topic) && is_respawn_config(payload),
                };
                ours && !payload.is_empty()
            })
            .map(|(topic, _)| (topic.clone(), Vec::new()))
            .collect()
    }

    /// What was published but is not what the broker keeps now: gone (a broker restarted
    /// without its persistence), or older (one restored from an earlier save, or a publish
    /// that failed). To publish again, as `configs_of` makes it, or Home Assistant shows what
    /// is no longer so.
    pub fn missing(
        &self,
        retained: &[(String, Vec<u8>)],
        configs_of: &ConfigsOf<'_>,
    ) -> Vec<(String, Vec<u8>)> {
        let kept: BTreeMap<&str, &[u8]> = retained
            .iter()
            .map(|(topic, payload)| (topic.as_str(), payload.as_slice()))
            .collect();
        let is_kept = |topic: &str, digest: u64| {
            kept.get(topic)
                .is_some_and(|payload| self::digest(payload) == digest)
        };
        let mut out = self.made_again(configs_of, |topic, digest| !is_kept(topic, digest));
        let availability = self.availabilities().into_iter();
        out.extend(
            availability.filter(|(topic, word)| kept.get(topic.as_str()) != Some(&word.as_slice())),
        );
        out
    }

    /// Everything again, as `configs_of` makes it (Home Assistant restarted).
    pub fn all(&self, configs_of: &ConfigsOf<'_>) -> Vec<(String, Vec<u8>)> {
        let mut out = self.made_again(configs_of, |_, _| true);
        out.extend(self.availabilities());
        out
    }

    /// The configs published on the topics `wanted` picks (by the digest published there),
    /// made again by `configs_of`: one making per agent that has any.
    fn made_again(
        &self,
        configs_of: &ConfigsOf<'_>,
        wanted: impl Fn(&str, u64) -> bool,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (agent, published) in &self.by_agent {
            let topics: BTreeSet<&String> = (published.iter())
                .filter(|(topic, digest)| wanted(topic, **digest))
                .map(|(topic, _)| topic)
                .collect();
            if !topics.is_empty() {
                let now = configs_of(agent).into_iter();
                let again = now.filter(|(topic, _)| topics.contains(topic));
                out.extend(again.map(|(topic, config)| (topic, config.to_string().into_bytes())));
            }
        }
        out
    }

    fn availabilities(&self) -> Vec<(String, Vec<u8>)> {
        (self.available.iter())
            .map(|(agent, up)| (availability_topic(agent), availability_word(*up)))
            .collect()
    }
}

fn availability_word(up: bool) -> Vec<u8> {
    match up {
        true => ONLINE.to_vec(),
        false => OFFLINE.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;

    fn fleet() -> Fleet {
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let birth = json!({"v": 1, "agent": "door-pi", "state": "online", "version": "0.1.0",
            "processes": ["doorbot", "web.v2"]});
        fleet.apply(
            &topics,
            "respawn/v1/door-pi/state",
            birth.to_string().as_bytes(),
        );
        fleet
    }

    #[test]
    fn each_process_is_four_entities_of_its_agents_device() {
        let fleet = fleet();
        let allow = ["door-pi/doorbot".to_owned()];
        let topics = Topics::default();
        let configs = configs(
            &topics,
            DEFAULT_PREFIX,
            &allow,
            "door-pi",
            fleet.agent("door-pi"),
        );
        assert_eq!(
            configs.len(),
            10,
            "four each, and a button and its outcome for doorbot"
        );
        let problem = &configs["homeassistant/binary_sensor/door-pi/doorbot_problem/config"];
        assert_eq!(problem["device_class"], "problem");
        assert_eq!(problem["state_topic"], "respawn/v1/door-pi/proc/doorbot");
        let button = &configs["homeassistant/button/door-pi/doorbot_restart/config"];
        assert_eq!(
            button["command_topic"],
            "respawn-ha/door-pi/doorbot/restart"
        );
        assert_eq!(button["device_class"], "restart");
        assert!(button.get("state_topic").is_none());
        assert!(!configs.contains_key("homeassistant/button/door-pi/web_v2_restart/config"));
        let running = &configs["homeassistant/binary_sensor/door-pi/doorbot_running/config"];
        assert_eq!(running["unique_id"], "respawn_door-pi_doorbot_running");
        assert_eq!(
            running["default_entity_id"], "binary_sensor.respawn_door_pi_doorbot_running",
            "the id docs/home-assistant.md's automation uses"
        );
        assert!(
            running.get("object_id").is_none(),
            "Home Assistant 2026.4 dropped it"
        );
        assert_eq!(running["state_topic"], "respawn/v1/door-pi/proc/doorbot");
        assert_eq!(running["device_class"], "running");
        assert_eq!(running["device"]["identifiers"][0], "respawn_door-pi");
        assert_eq!(running["device"]["sw_version"], "0.1.0");
        assert_eq!(
            running["availability"][0]["topic"],
            "respawn/v1/door-pi/state"
        );
        let restarts = &configs["homeassistant/sensor/door-pi/doorbot_restarts/config"];
        assert_eq!(restarts["state_class"], "total_increasing");
        assert!(configs.contains_key("homeassistant/sensor/door-pi/web_v2_last_exit/config"));
    }

    #[test]
    fn presses_become_restarts_only_where_allowed_and_within_the_rate() {
        let allow = ["door-*/doorbot".to_owned(), "garage-pi".to_owned()];
        let mut presses = Presses::new(2);
        let now = Instant::now();
        let known = true;
        assert!(matches!(
            presses.judge(&allow, "door-pi", "web", known, now),
            Verdict::Ignored(_)
        ));
        assert!(
            matches!(presses.judge(&allow, "garage-pi", "ghost", false, now), Verdict::Ignored(m) if m.contains("no garage-pi/ghost")),
            "a name the fleet does not have neither restarts nor uses up the rate"
        );
        assert_eq!(
            presses.judge(&allow, "door-pi", "doorbot", known, now),
            Verdict::Restart
        );
        assert_eq!(
            presses.judge(&allow, "garage-pi", "opener", known, now),
            Verdict::Restart
        );
        assert!(
            matches!(presses.judge(&allow, "door-pi", "doorbot", known, now), Verdict::Refused(m) if m.contains("2 presses"))
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            presses.judge(&allow, "door-pi", "doorbot", known, later),
            Verdict::Restart
        );
    }

    #[test]
    fn only_a_button_press_is_a_press() {
        let topic = "respawn-ha/door-pi/doorbot/restart";
        let restart = Press::Restart {
            agent: "door-pi".to_owned(),
            process: "doorbot".to_owned(),
        };
        assert_eq!(press(topic, b"PRESS", false), Some(restart));
        for payload in [&b"junk"[..], b"", b"{\"press\":true}", b"press"] {
            assert!(
                matches!(press(topic, payload, false), Some(Press::Refused(why)) if why.contains("PRESS")),
                "{payload:?}"
            );
        }
        for payload in [&b"PRESS"[..], b"junk"] {
            let retained = press(topic, payload, true);
            assert!(matches!(retained, Some(Press::Retained(why)) if why.contains("retained")));
        }
        // Its clearing is no press, and is not cleared again.
        assert_eq!(press(topic, b"", true), Some(Press::Cleared));
        for junk in [
            "respawn-ha/door-pi/doorbot",
            "respawn-ha/Door Pi/x/restart",
            "respawn-ha/a/b/restart/x",
            "other/a/b/restart",
        ] {
            assert_eq!(press(junk, b"PRESS", false), None, "{junk}");
        }
    }

    #[test]
    fn entity_ids_are_valid_and_two_processes_never_share_entities() {
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let birth = json!({"v": 1, "agent": "shed-pi", "state": "online",
            "processes": ["web.v2", "web_v2", "Pump--2_", "cam.1"]});
        fleet.apply(
            &topics,
            "respawn/v1/shed-pi/state",
            birth.to_string().as_bytes(),
        );
        let configs = configs(
            &topics,
            DEFAULT_PREFIX,
            &[],
            "shed-pi",
            fleet.agent("shed-pi"),
        );
        let running: Vec<&Value> = configs
            .iter()
            .filter(|(topic, _)| topic.ends_with("_running/config"))
            .map(|(_, config)| config)
            .collect();
        assert_eq!(running.len(), 4, "{:?}", configs.keys());
        let unique: BTreeSet<&str> = running
            .iter()
            .filter_map(|c| c["unique_id"].as_str())
            .collect();
        assert_eq!(unique.len(), 4, "{unique:?}");
        assert!(
            unique.contains("respawn_shed-pi_web_v2_running"),
            "the name taken as it is keeps its id"
        );
        assert!(
            unique.contains("respawn_shed-pi_cam_1_running"),
            "no clash, no hash"
        );
        let valid = |id: &str| {
            let (domain, object) = id.split_once('.').unwrap();
            domain == "binary_sensor"
                && !object.contains("__")
                && !object.starts_with('_')
                && !object.ends_with('_')
                && object
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        for config in &running {
            let id = config["default_entity_id"].as_str().unwrap();
            assert!(valid(id), "{id}");
        }
        let web = running
            .iter()
            .find(|c| c["state_topic"] == "respawn/v1/shed-pi/proc/web.v2")
            .unwrap();
        assert!(web["unique_id"]
            .as_str()
            .unwrap()
            .starts_with("respawn_shed-pi_web_v2_"));
        assert_ne!(web["unique_id"], "respawn_shed-pi_web_v2_running");
    }

    /// Found by a review: agent `lab` with process `pi_sensor` and agent `lab_pi` with process
    /// `sensor` had one `unique_id`, and Home Assistant dropped the second's entities.
    #[test]
    fn two_agents_never_share_an_entity() {
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let agents = [
            ("lab", "pi_sensor"),
            ("lab_pi", "sensor"),
            ("lab_", "pi_sensor"),
        ];
        for (agent, process) in agents {
            let birth = json!({"v": 1, "agent": agent, "state": "online", "version": "0.1.0",
                "processes": [process]});
            let topic = format!("respawn/v1/{agent}/state");
            fleet.apply(&topics, &topic, birth.to_string().as_bytes());
        }
        let mut unique_ids = BTreeSet::new();
        let mut config_topics = BTreeSet::new();
        for (agent, _) in agents {
            let all = ["*".to_owned()];
            let configs = configs(&topics, DEFAULT_PREFIX, &all, agent, fleet.agent(agent));
            assert_eq!(configs.len(), 6, "{agent}: {:?}", configs.keys());
            for (topic, config) in configs {
                let id = config["unique_id"].as_str().unwrap().to_owned();
                assert!(unique_ids.insert(id.clone()), "{agent}: {id} twice");
                assert!(
                    config_topics.insert(topic.clone()),
                    "{agent}: {topic} twice"
                );
            }
        }
        assert!(
            unique_ids.contains("respawn_lab_pi_sensor_running"),
            "an agent with no `_` keeps its ids: {unique_ids:?}"
        );
    }

    /// Home Assistant refuses a device whose `sw_version` is null: with the agent's birth
    /// cleared, its process states still there, the version is left out.
    #[test]
    fn an_unknown_version_is_left_out() {
        let topics = Topics::default();
        let mut fleet = fleet();
        fleet.apply(&topics, "respawn/v1/door-pi/proc/doorbot", br#"{"v":1,"agent":"door-pi","name":"doorbot","state":"running","pid":7,"since":"2026-11-25T00:00:00Z","restarts":0}"#);
        fleet.apply(&topics, "respawn/v1/door-pi/state", b"");
        let agent = fleet.agent("door-pi");
        assert!(agent.is_some_and(|a| a.state.is_none()), "{agent:?}");
        let configs = configs(&topics, DEFAULT_PREFIX, &[], "door-pi", agent);
        assert!(!configs.is_empty());
        for config in configs.values() {
            let device = config["device"].as_object().unwrap();
            assert!(!device.contains_key("sw_version"), "{device:?}");
            assert_eq!(device["model"], "respawn-agent");
        }
    }

    #[test]
    fn what_an_earlier_run_left_is_cleared_and_nothing_else() {
        let fleet = fleet();
        let mut published = Published::default();
        let door = configs(
            &Topics::default(),
            DEFAULT_PREFIX,
            &[],
            "door-pi",
            fleet.agent("door-pi"),
        );
        let (kept, config) = door
            .iter()
            .next()
            .map(|(t, c)| (t.clone(), c.clone()))
            .unwrap();
        published.update("door-pi", door);
        published.availability("door-pi", Some(true));
        let mut ghost = config.clone();
        ghost["unique_id"] = "respawn_ghost_x_restarts".into();
        let foreign = json!({"unique_id": "0x00158d_battery", "device": {"model": "WSDCGQ11LM"}});
        let retained: Vec<(String, Vec<u8>)> = [
            (kept.as_str(), config.to_string()),
            (
                "homeassistant/sensor/ghost/x_restarts/config",
                ghost.to_string(),
            ),
            (
                "homeassistant/sensor/0x00158d/battery/config",
                foreign.to_string(),
            ),
            (
                "homeassistant/sensor/ghost/y_restarts/config",
                String::new(),
            ),
            ("respawn-ha/ghost/availability", "online".into()),
            ("respawn-ha/door-pi/availability", "online".into()),
            ("respawn-ha/door-pi/web.v2/last_command", "restarted".into()),
            ("homeassistant/sensor/junk/x/config", "not json".into()),
        ]
        .into_iter()
        .map(|(t, p)| (t.to_owned(), p.into_bytes()))
        .collect();
        let cleared = published.leftovers(&retained);
        let topics: Vec<&str> = cleared.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/ghost/x_restarts/config",
                "respawn-ha/ghost/availability",
                "respawn-ha/door-pi/web.v2/last_command",
            ]
        );
        assert!(cleared.iter().all(|(_, payload)| payload.is_empty()));
        assert_eq!(published.agents(), ["door-pi"]);
        // What a press came to stays while its sensor is there.
        let mut with_button = Published::default();
        let allow = ["door-pi/doorbot".to_owned()];
        let agent = fleet.agent("door-pi");
        let door = configs(&Topics::default(), DEFAULT_PREFIX, &allow, "door-pi", agent);
        with_button.update("door-pi", door);
        let pressed = [(
            "respawn-ha/door-pi/doorbot/last_command".to_owned(),
            b"restarted".to_vec(),
        )];
        assert!(with_button.leftovers(&pressed).is_empty());
        // A broker that lost what was retained: all of it goes out again, nothing twice.
        let now = |agent: &str| {
            configs(
                &Topics::default(),
                DEFAULT_PREFIX,
                &[],
                agent,
                fleet.agent(agent),
            )
        };
        let all = published.all(&now);
        assert_eq!(all.len(), 9, "eight configs and the availability: {all:?}");
        assert_eq!(published.missing(&[], &now), all);
        assert!(published.missing(&all, &now).is_empty());
        // Kept, but not what was published last (an older save restored): again.
        let mut older = all.clone();
        older[0].1 = b"{}".to_vec();
        assert_eq!(published.missing(&older, &now), [all[0].clone()]);
        let missing = published.missing(&retained, &now);
        assert!(!missing.iter().any(|(topic, _)| *topic == kept));
        assert!(missing.iter().all(|(_, payload)| !payload.is_empty()));
    }

    #[test]
    fn only_changes_go_out_and_what_is_gone_is_cleared() {
        let fleet = fleet();
        let topics = Topics::default();
        let mut published = Published::default();
        let first = configs(
            &topics,
            DEFAULT_PREFIX,
            &[],
            "door-pi",
            fleet.agent("door-pi"),
        );
        assert_eq!(published.update("door-pi", first.clone()).len(), 8);
        assert!(
            published.update("door-pi", first).is_empty(),
            "nothing changed"
        );
        let gone = published.update("door-pi", BTreeMap::new());
        assert_eq!(gone.len(), 8);
        assert!(gone.iter().all(|(_, payload)| payload.is_empty()));
        let now = |agent: &str| configs(&topics, DEFAULT_PREFIX, &[], agent, fleet.agent(agent));
        assert!(published.all(&now).is_empty());

        // A process whose button goes (its allow entry removed) loses what its last press
        // came to with it.
        let allow = ["door-pi/doorbot".to_owned()];
        let with_button = configs(
            &topics,
            DEFAULT_PREFIX,
            &allow,
            "door-pi",
            fleet.agent("door-pi"),
        );
        published.update("door-pi", with_button);
        let without = configs(
            &topics,
            DEFAULT_PREFIX,
            &[],
            "door-pi",
            fleet.agent("door-pi"),
        );
        let cleared: Vec<String> = (published.update("door-pi", without).into_iter())
            .map(|(topic, payload)| {
                assert!(payload.is_empty(), "{topic}");
                topic
            })
            .collect();
        assert_eq!(
            cleared,
            [
                "homeassistant/button/door-pi/doorbot_restart/config",
                "homeassistant/sensor/door-pi/doorbot_last_command/config",
                "respawn-ha/door-pi/doorbot/last_command",
            ]
        );
    }
}
