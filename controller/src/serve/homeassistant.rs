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
    format!("{ROOT}+/+/restart")
}

/// Where a button of `agent`'s `process` publishes.
pub fn press_topic(agent: &str, process: &str) -> String {
    format!("{ROOT}{agent}/{process}/restart")
}

/// Where the hub says what the last press on `process` came to (retained).
pub fn last_command_topic(agent: &str, process: &str) -> String {
    format!("{ROOT}{agent}/{process}/last_command")
}

/// The agent and process a press names, if `topic` is a press with valid names.
pub fn parse_press(topic: &str) -> Option<(String, String)> {
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

    /// Decides a press of `agent`'s `process` at `now`.
    pub fn judge(&mut self, allow: &[String], agent: &str, process: &str, now: Instant) -> Verdict {
        if !allowed(allow, agent, process) {
            return Verdict::Refused(format!(
                "refused: {agent}/{process} is not in the hub's [homeassistant] allow list"
            ));
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
/// (only respawn's are touched) and the availability messages.
pub fn leftover_filters(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}/+/+/+/config"),
        format!("{ROOT}+/availability"),
    ]
}

/// Whether a discovery config describes an entity of a respawn agent's device.
fn is_respawn_config(payload: &[u8]) -> bool {
    let config: Value = serde_json::from_slice(payload).unwrap_or_default();
    config["device"]["model"] == "respawn-agent"
        && config["unique_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("respawn_"))
}

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

/// Every discovery message of `agent` (`None`: it is gone), by topic.
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
    let version = agent.state.as_ref().and_then(|s| s.version.clone());
    let device = json!({
        "identifiers": [format!("respawn_{id}")],
        "name": id,
        "manufacturer": "respawn",
        "model": "respawn-agent",
        "sw_version": version,
    });
    // Both must say online: the agent's own presence, and the hub's word that its heartbeat
    // has not stopped.
    let availability = json!([
        {
            "topic": topics.state(id),
            "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        },
        { "topic": availability_topic(id) },
    ]);
    let node = level(id);
    for process in agent.process_names() {
        let object = level(process);
        let state_topic = topics.process(id, process);
        let base = |suffix: &str, name: String| {
            json!({
                "name": name,
                "unique_id": format!("respawn_{node}_{object}_{suffix}"),
                "object_id": format!("respawn_{node}_{object}_{suffix}"),
                "state_topic": state_topic,
                "availability": availability,
                "availability_mode": "all",
                "device": device,
            })
        };
        let mut running = base("running", format!("{process} running"));
        running["device_class"] = "running".into();
        running["value_template"] = "{{ 'ON' if value_json.state == 'running' else 'OFF' }}".into();
        let mut restarts = base("restarts", format!("{process} restarts"));
        restarts["state_class"] = "total_increasing".into();
        restarts["value_template"] = "{{ value_json.restarts }}".into();
        let mut exit = base("last_exit", format!("{process} last exit"));
        exit["icon"] = "mdi:exit-run".into();
        exit["value_template"] = LAST_EXIT_TEMPLATE.into();
        let mut entities = vec![
            ("binary_sensor", "running", running),
            ("sensor", "restarts", restarts),
            ("sensor", "last_exit", exit),
        ];
        // The Restart button, and what its last press came to, where the hub obeys it.
        if allowed(allow, id, process) {
            let mut button = base("restart", format!("{process} restart"));
            if let Some(fields) = button.as_object_mut() {
                fields.remove("state_topic");
            }
            button["device_class"] = "restart".into();
            button["command_topic"] = press_topic(id, process).into();
            button["payload_press"] = "PRESS".into();
            let mut last = base("last_command", format!("{process} last command"));
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

/// The last exit in words: `exit 3`, `SIGSEGV`, or `none`.
const LAST_EXIT_TEMPLATE: &str = "{% set e = value_json.last_exit %}{% if not e %}none{% elif 'code' in e.status %}exit {{ e.status.code }}{% else %}{{ e.status.signal }}{% endif %}";

/// What has been published, to publish only what changed.
#[derive(Debug, Default)]
pub struct Published {
    by_agent: BTreeMap<String, BTreeMap<String, Value>>,
    available: BTreeMap<String, bool>,
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
        for (topic, config) in &now {
            if before.get(topic) != Some(config) {
                out.push((topic.clone(), config.to_string().into_bytes()));
            }
        }
        if !now.is_empty() {
            self.by_agent.insert(agent.to_owned(), now);
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
                let word: &[u8] = if up { b"online" } else { b"offline" };
                Some((topic, word.to_vec()))
            }
            Some(_) => None,
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
    /// accounts for: respawn's discovery configs and availability messages left by an
    /// earlier run of the hub (a process removed or an agent gone while it was away, an
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
                    true => !announced.contains(topic),
                    false => !published.contains(topic) && is_respawn_config(payload),
                };
                ours && !payload.is_empty()
            })
            .map(|(topic, _)| (topic.clone(), Vec::new()))
            .collect()
    }

    /// Everything again (Home Assistant restarted).
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        let configs = self
            .by_agent
            .values()
            .flatten()
            .map(|(topic, config)| (topic.clone(), config.to_string().into_bytes()));
        let availability = self.available.iter().map(|(agent, up)| {
            let word: &[u8] = if *up { b"online" } else { b"offline" };
            (availability_topic(agent), word.to_vec())
        });
        configs.chain(availability).collect()
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
    fn each_process_is_three_entities_of_its_agents_device() {
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
            8,
            "three each, and a button and its outcome for doorbot"
        );
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
        assert!(matches!(
            presses.judge(&allow, "door-pi", "web", now),
            Verdict::Refused(_)
        ));
        assert_eq!(
            presses.judge(&allow, "door-pi", "doorbot", now),
            Verdict::Restart
        );
        assert_eq!(
            presses.judge(&allow, "garage-pi", "opener", now),
            Verdict::Restart
        );
        assert!(
            matches!(presses.judge(&allow, "door-pi", "doorbot", now), Verdict::Refused(m) if m.contains("2 presses"))
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            presses.judge(&allow, "door-pi", "doorbot", later),
            Verdict::Restart
        );
        assert_eq!(
            parse_press("respawn-ha/door-pi/doorbot/restart"),
            Some(("door-pi".into(), "doorbot".into()))
        );
        for junk in [
            "respawn-ha/door-pi/doorbot",
            "respawn-ha/Door Pi/x/restart",
            "respawn-ha/a/b/restart/x",
            "other/a/b/restart",
        ] {
            assert_eq!(parse_press(junk), None, "{junk}");
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
                "respawn-ha/ghost/availability"
            ]
        );
        assert!(cleared.iter().all(|(_, payload)| payload.is_empty()));
        assert_eq!(published.agents(), ["door-pi"]);
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
        assert_eq!(published.update("door-pi", first.clone()).len(), 6);
        assert!(
            published.update("door-pi", first).is_empty(),
            "nothing changed"
        );
        let gone = published.update("door-pi", BTreeMap::new());
        assert_eq!(gone.len(), 6);
        assert!(gone.iter().all(|(_, payload)| payload.is_empty()));
        assert!(published.all().is_empty());
    }
}
