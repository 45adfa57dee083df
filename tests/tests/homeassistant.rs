//! Home Assistant's MQTT discovery from `respawnctl serve` with `[homeassistant]`: two real
//! agents on a real Mosquitto, the discovery messages checked field by field against Home
//! Assistant's documented schema, a removed process's entities cleared, a Restart button press
//! turned into a signed restart in the allow list and refused outside it, and discovery
//! published again when Home Assistant announces itself.

use std::net::TcpListener;

use respawn_common::signing::SigningKey;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{online_session, retained, Observer};
use respawn_tests::{mqtt_section, wait_for, wait_for_or, RunningCtl, TestAgent, TIMEOUT};
use serde_json::Value;

const DOOR: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"100000\"]\n\n[[process]]\nname = \"web\"\ncommand = [\"sleep\", \"100000\"]\n";
const GARAGE: &str = "[[process]]\nname = \"opener\"\ncommand = [\"sleep\", \"100000\"]\n";

/// Where the hub says whether it is there.
const HUB: &str = "respawn-ha/hub";

/// What the broker keeps on the hub's own availability topic.
fn hub_says(broker: &Broker) -> Option<Vec<u8>> {
    retained(broker, HUB).first().map(|m| m.payload.to_vec())
}

/// Waits until the broker keeps `word` as the hub's own availability.
fn wait_hub_says(broker: &Broker, why: &str, word: &[u8]) {
    wait_for(why, TIMEOUT, || {
        (hub_says(broker).as_deref() == Some(word)).then_some(())
    });
}

fn agent_config(broker: &Broker, key: &SigningKey, id: &str, processes: &str) -> String {
    format!(
        "[agent]\nid = \"{id}\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"hub\"\npublic_key = \"{}\"\n\n{}{processes}",
        key.public_line(),
        mqtt_section(broker)
    )
}

/// The retained discovery configs under `homeassistant/`, by topic (empty ones left out).
fn discovery(broker: &Broker) -> Vec<(String, Value)> {
    retained(broker, "homeassistant/+/+/+/config")
        .into_iter()
        .filter(|m| !m.payload.is_empty())
        .map(|m| (m.topic.clone(), m.json()))
        .collect()
}

/// What Home Assistant's MQTT discovery requires of a config of `component` (its schema, as
/// documented for each platform), and what this one must say.
fn check_schema(topic: &str, config: &Value) {
    let component = topic.split('/').nth(1).unwrap_or_default();
    let text = |key: &str| {
        config[key]
            .as_str()
            .unwrap_or_else(|| panic!("{topic}: no {key}: {config}"))
    };
    assert!(text("unique_id").starts_with("respawn_"), "{topic}");
    assert!(
        text("default_entity_id").starts_with(&format!("{component}.respawn_")),
        "{topic}"
    );
    assert!(!text("name").is_empty());
    let device = &config["device"];
    assert!(
        device["identifiers"][0]
            .as_str()
            .is_some_and(|i| i.starts_with("respawn_")),
        "{topic}"
    );
    assert_eq!(device["model"], "respawn-agent");
    assert_eq!(config["availability_mode"], "all");
    let availability = config["availability"].as_array().expect("availability");
    assert_eq!(availability.len(), 3);
    assert!(availability.iter().all(|a| a["topic"].is_string()));
    assert!(
        availability.iter().any(|a| a["topic"] == HUB),
        "unavailable while the hub is not there to tell a hung agent: {topic}"
    );
    match component {
        "binary_sensor" => {
            text("state_topic");
            assert!(text("value_template").contains("value_json.state"));
            match topic.ends_with("_problem/config") {
                true => assert_eq!(config["device_class"], "problem"),
                false => assert_eq!(config["device_class"], "running"),
            }
        }
        "sensor" => {
            text("state_topic");
            if topic.ends_with("_restarts/config") {
                assert_eq!(config["state_class"], "total_increasing");
                assert_eq!(text("value_template"), "{{ value_json.restarts }}");
            }
        }
        "button" => {
            assert_eq!(config["device_class"], "restart");
            assert!(text("command_topic").starts_with("respawn-ha/"));
            assert!(config.get("state_topic").is_none(), "a button has no state");
        }
        other => panic!("{topic}: a component Home Assistant would not expect here: {other}"),
    }
}

#[test]
fn the_fleet_appears_in_home_assistant_and_its_buttons_stay_signed() {
    let mut broker = Broker::start();
    let (hub_key, files, key_file) = hub_key();
    let door_config = agent_config(&broker, &hub_key, "door-pi", DOOR);
    let door = TestAgent::start_in(tempfile::tempdir().unwrap(), &door_config);
    let _garage = TestAgent::start_in(
        tempfile::tempdir().unwrap(),
        &agent_config(&broker, &hub_key, "garage-pi", GARAGE),
    );
    online_session(&broker, "door-pi");
    online_session(&broker, "garage-pi");
    let events = Observer::connect(&broker, &["respawn/v1/+/event"]);
    let ha = Observer::connect(&broker, &["homeassistant/#", "respawn-ha/#"]);
    let homeassistant =
        "allow = [\"door-pi/doorbot\", \"door-pi/gh*\"]\npresses_per_minute = 100\n";
    let hub = start_hub(&broker, files.path(), &key_file, homeassistant);
    // Its start says Home Assistant is told, and which buttons it obeys.
    wait_for("the hub's word on Home Assistant", TIMEOUT, || {
        hub.stderr().contains("respawnctl serve: Home Assistant discovery under homeassistant/ (Restart obeyed for door-pi/doorbot, door-pi/gh*, at most 100 presses a minute)").then_some(())
    });

    // Both agents, each process four entities, doorbot a button and its outcome too.
    let configs = wait_for("the discovery of both agents", TIMEOUT, || {
        let configs = discovery(&broker);
        (configs.len() == 3 * 4 + 2).then_some(configs)
    });
    for (topic, config) in &configs {
        check_schema(topic, config);
    }
    let by_topic = |t: &str| {
        configs
            .iter()
            .find(|(topic, _)| topic == t)
            .map(|(_, c)| c.clone())
    };
    let running = by_topic("homeassistant/binary_sensor/door-pi/doorbot_running/config")
        .expect("doorbot running");
    assert_eq!(
        running["state_topic"], "respawn/v1/door-pi/proc/doorbot",
        "read from the agent's own topic"
    );
    assert!(by_topic("homeassistant/button/door-pi/doorbot_restart/config").is_some());
    assert!(
        by_topic("homeassistant/button/door-pi/web_restart/config").is_none(),
        "not in the allow list"
    );
    let available = retained(&broker, "respawn-ha/+/availability");
    assert_eq!(available.len(), 2);
    assert!(available.iter().all(|m| m.payload == b"online"));
    // Agents online all along are never said to be away: no blink at the hub's start.
    let said = ha.messages();
    let away = said
        .iter()
        .filter(|m| m.topic.ends_with("/availability") && m.payload == b"offline");
    assert_eq!(
        away.map(|m| m.topic.clone()).collect::<Vec<_>>(),
        Vec::<String>::new()
    );

    // A press in the allow list: a signed restart in Home Assistant's name, and its outcome.
    let pid = door.wait_running("doorbot");
    ha.publish(
        "respawn-ha/door-pi/doorbot/restart",
        b"PRESS".to_vec(),
        None,
    );
    let new_pid = door.wait_restarted("doorbot", pid);
    let outcome = ha.wait("the outcome of the press", |messages| {
        messages
            .iter()
            .rev()
            .find(|m| m.topic == "respawn-ha/door-pi/doorbot/last_command")
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    });
    assert_eq!(
        outcome,
        format!("restarted door-pi/doorbot pid {pid} → {new_pid}")
    );
    let audit = events.wait_json::<Value>("the audit of the press", |e| {
        e["kind"] == "command" && e["process"] == "doorbot" && e["outcome"] == "succeeded"
    });
    assert_eq!(
        (audit["requester"].as_str(), audit["signer"].as_str()),
        (Some("homeassistant"), Some("hub"))
    );

    // Outside the allow list, junk, a retained press: nothing reaches an agent, and only the
    // hub's log says so (a topic for a process with no "last command" sensor would stay).
    let web = door.wait_running("web");
    ha.publish("respawn-ha/door-pi/web/restart", b"PRESS".to_vec(), None);
    for junk in [
        "respawn-ha/nobody/x/restart",
        "respawn-ha/door-pi/ghost/restart",
        "respawn-ha/door-pi/doorbot",
        "respawn-ha/a b/c/restart",
    ] {
        ha.publish(junk, b"PRESS".to_vec(), None);
    }
    for payload in [&b"junk"[..], b"", b"{\"press\":true}"] {
        ha.publish("respawn-ha/door-pi/doorbot/restart", payload.to_vec(), None);
    }
    ha.publish("homeassistant/status", b"\xff\xfe garbage".to_vec(), None);
    ha.publish_retained(
        "respawn-ha/door-pi/doorbot/restart",
        b"PRESS".to_vec(),
        None,
    );
    let said_each = || {
        let log = hub.stderr();
        let said = |what: &str| log.matches(what).count();
        (said("door-pi/web is not in the hub's [homeassistant] allow list") == 1
            && said("the fleet has no door-pi/ghost") == 1
            && said("a button press sends PRESS") == 3
            && said("a retained press is ignored") == 1)
            .then_some(())
    };
    wait_for_or("the hub's word on each", TIMEOUT, said_each, || {
        hub.stderr()
    });
    // The hub is still there and still obeys: a second allowed press restarts again, from
    // the pid of the first (no junk press restarted it in between).
    ha.publish(
        "respawn-ha/door-pi/doorbot/restart",
        b"PRESS".to_vec(),
        None,
    );
    let newest = door.wait_restarted("doorbot", new_pid);
    let outcome = ha.wait("the outcome of the second press", |messages| {
        messages
            .iter()
            .filter(|m| m.topic == "respawn-ha/door-pi/doorbot/last_command")
            .nth(1)
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    });
    assert_eq!(
        outcome,
        format!("restarted door-pi/doorbot pid {new_pid} → {newest}")
    );
    assert_eq!(door.wait_running("web"), web, "never restarted");
    let commands = events.wait("the audits of both presses", |messages| {
        let commands: Vec<Value> = messages
            .iter()
            .map(|m| m.json())
            .filter(|e| e["kind"] == "command")
            .collect();
        (commands.len() >= 2).then_some(commands)
    });
    assert!(
        commands.iter().all(|e| e["process"] == "doorbot"),
        "{commands:#?}"
    );
    let refusals = retained(&broker, "respawn-ha/+/+/last_command");
    assert!(
        refusals
            .iter()
            .all(|m| m.topic == "respawn-ha/door-pi/doorbot/last_command"),
        "only the allowed process has an outcome topic: {:?}",
        refusals.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    // The hub cleared the retained press, so that it is not refused at its every start.
    wait_for("the retained press cleared", TIMEOUT, || {
        retained(&broker, "respawn-ha/+/+/restart")
            .is_empty()
            .then_some(())
    });

    // Home Assistant restarts: discovery goes out again.
    let before = ha
        .on("homeassistant/binary_sensor/garage-pi/opener_running/config")
        .len();
    ha.publish("homeassistant/status", b"online".to_vec(), None);
    let topic = "homeassistant/binary_sensor/garage-pi/opener_running/config";
    ha.wait("discovery again", |messages| {
        (messages.iter().filter(|m| m.topic == topic).count() > before).then_some(())
    });

    // A process removed from its agent: its entities go.
    door.rewrite_config(&door_config.replace(
        "[[process]]\nname = \"web\"\ncommand = [\"sleep\", \"100000\"]\n",
        "",
    ));
    door.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("web's entities cleared", TIMEOUT, || {
        let configs = discovery(&broker);
        (!configs.iter().any(|(t, _)| t.contains("/door-pi/web_")) && configs.len() == 2 * 4 + 2)
            .then_some(())
    });
    // A broker restarted without its persistence: what it kept is gone, and the hub puts
    // it back when it reconnects, without waiting for Home Assistant to announce itself.
    broker.stop();
    broker.resume();
    wait_for("the discovery published again", TIMEOUT, || {
        let configs = discovery(&broker);
        let available = retained(&broker, "respawn-ha/+/availability");
        (configs.len() == 2 * 4 + 2 && available.len() == 2).then_some(())
    });
    assert!(
        hub.stderr().contains("respawnctl serve"),
        "{}",
        hub.stderr()
    );
}

/// The hub's key, and its file in a directory of the hub's own.
fn hub_key() -> (SigningKey, tempfile::TempDir, std::path::PathBuf) {
    let key = SigningKey::generate("hub").unwrap();
    let files = tempfile::tempdir().unwrap();
    let key_file = respawn_tests::key_file(files.path(), &key);
    (key, files, key_file)
}

/// A hub signing with `key_file`, its `[homeassistant]` section saying `homeassistant`.
fn start_hub(
    broker: &Broker,
    dir: &std::path::Path,
    key_file: &std::path::Path,
    homeassistant: &str,
) -> RunningCtl {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let serve = dir.join("serve.toml");
    std::fs::write(
        &serve,
        format!(
            "listen = \"127.0.0.1:{port}\"\nsigning_key = \"{}\"\n\n[homeassistant]\n{homeassistant}",
            key_file.display()
        ),
    )
    .unwrap();
    RunningCtl::start(broker, &["serve", "--config", &serve.display().to_string()])
}

#[test]
fn a_restarted_hub_clears_what_it_left_and_a_silent_agent_goes_unavailable() {
    let broker = Broker::start();
    let (hub_key, files, key_file) = hub_key();
    // A keep-alive far longer than three heartbeats: a silent agent is found stale by the
    // hub long before the broker would give up on its connection.
    let door_config = agent_config(&broker, &hub_key, "door-pi", DOOR)
        .replace("keep_alive = \"5s\"", "keep_alive = \"120s\"");
    let door = TestAgent::start_in(tempfile::tempdir().unwrap(), &door_config);
    online_session(&broker, "door-pi");
    // What a hub of long ago left for an agent since gone, and another integration's entity,
    // which no hub may touch.
    let other = Observer::connect(&broker, &[]);
    let mut ghost = serde_json::json!({
        "name": "x restarts", "unique_id": "respawn_ghost_x_restarts",
        "state_topic": "respawn/v1/ghost/proc/x", "device": {"model": "respawn-agent"},
    });
    let foreign = "homeassistant/sensor/0x00158d/battery/config";
    other.publish_retained(
        "homeassistant/sensor/ghost/x_restarts/config",
        ghost.to_string().into_bytes(),
        None,
    );
    ghost["device"]["model"] = "WSDCGQ11LM".into();
    other.publish_retained(foreign, ghost.to_string().into_bytes(), None);
    other.publish_retained("respawn-ha/ghost/availability", b"online".to_vec(), None);
    // What presses came to: the ghost's, and web's, whose sensor stays while web does.
    for process in ["ghost/x", "door-pi/web"] {
        let topic = format!("respawn-ha/{process}/last_command");
        other.publish_retained(&topic, b"restarted".to_vec(), None);
    }
    wait_for("the leftovers retained", TIMEOUT, || {
        (retained(&broker, "respawn-ha/ghost/availability").len() == 1
            && retained(&broker, "respawn-ha/+/+/last_command").len() == 2)
            .then_some(())
    });

    let allow_door = "allow = [\"door-pi/*\"]\n";
    let hub = start_hub(&broker, files.path(), &key_file, allow_door);
    wait_for("door-pi's entities, and the ghost's gone", TIMEOUT, || {
        let configs = discovery(&broker);
        let topics: Vec<&str> = configs.iter().map(|(t, _)| t.as_str()).collect();
        (topics.len() == 2 * 6 + 1
            && topics.contains(&foreign)
            && retained(&broker, "respawn-ha/ghost/availability").is_empty()
            && retained(&broker, "respawn-ha/ghost/x/last_command").is_empty())
        .then_some(())
    });
    assert_eq!(
        retained(&broker, "respawn-ha/door-pi/web/last_command").len(),
        1,
        "web's sensor is there: what its last press came to stays"
    );

    wait_hub_says(&broker, "the hub online", b"online");

    // The hub stops, and says so; meanwhile a process goes. The next hub clears its entities.
    hub.interrupt();
    wait_hub_says(&broker, "the stopped hub offline", b"offline");
    door.rewrite_config(&door_config.replace(
        "[[process]]\nname = \"web\"\ncommand = [\"sleep\", \"100000\"]\n",
        "",
    ));
    door.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("web's state cleared", TIMEOUT, || {
        retained(&broker, "respawn/v1/door-pi/proc/web")
            .is_empty()
            .then_some(())
    });
    let hub = start_hub(&broker, files.path(), &key_file, allow_door);
    wait_for("web's entities cleared by the new hub", TIMEOUT, || {
        let configs = discovery(&broker);
        (!configs.iter().any(|(t, _)| t.contains("/door-pi/web_"))
            && configs
                .iter()
                .filter(|(t, _)| t.contains("/door-pi/doorbot_"))
                .count()
                == 6
            && configs.iter().any(|(t, _)| t == foreign)
            && retained(&broker, "respawn-ha/door-pi/web/last_command").is_empty())
        .then_some(())
    });

    // The agent falls silent (stopped, its connection still open): the hub says unavailable
    // while the agent's own retained state still says online; it comes back when it does.
    let availability = Observer::connect(&broker, &["respawn-ha/door-pi/availability"]);
    door.signal(nix::sys::signal::Signal::SIGSTOP);
    availability.wait("the hub's word that door-pi is stale", |messages| {
        messages
            .iter()
            .any(|m| m.payload == b"offline")
            .then_some(())
    });
    let state = retained(&broker, "respawn/v1/door-pi/state");
    assert_eq!(
        state.first().map(|m| m.json()["state"].clone()),
        Some("online".into())
    );
    door.signal(nix::sys::signal::Signal::SIGCONT);
    availability.wait("door-pi available again", |messages| {
        messages
            .iter()
            .skip_while(|m| m.payload != b"offline")
            .any(|m| m.payload == b"online")
            .then_some(())
    });

    // A second hub stops: the one still running says it is there.
    wait_hub_says(&broker, "the new hub online", b"online");
    let watch = Observer::connect(&broker, &[HUB]);
    let second = start_hub(&broker, files.path(), &key_file, allow_door);
    watch.wait("the second hub online", |messages| {
        (messages.iter().filter(|m| m.payload == b"online").count() >= 2).then_some(())
    });
    // With two hubs, a press is still one restart: one of them takes it. A second press is
    // the barrier: a duplicate of the first would have been audited before it.
    let audits = Observer::connect(&broker, &["respawn/v1/door-pi/event"]);
    let presser = Observer::connect(&broker, &[]);
    let mut pid = door.wait_running("doorbot");
    for _ in 0..2 {
        presser.publish(
            "respawn-ha/door-pi/doorbot/restart",
            b"PRESS".to_vec(),
            None,
        );
        pid = door.wait_restarted("doorbot", pid);
    }
    let restarts = audits.wait("the audits of both presses", |messages| {
        let mut ids = std::collections::HashSet::new();
        let restarts: Vec<Value> = messages
            .iter()
            .map(|m| m.json())
            .filter(|e| e["kind"] == "command" && e["command"] == "restart")
            .filter(|e| ids.insert(e["id"].to_string()))
            .collect();
        (restarts.len() >= 2).then_some(restarts)
    });
    assert_eq!(
        restarts.len(),
        2,
        "each press sent once, by one hub: {restarts:#?}"
    );
    second.interrupt();
    watch.wait("online again after the second hub's offline", |messages| {
        messages
            .iter()
            .skip_while(|m| m.payload != b"offline")
            .any(|m| m.payload == b"online")
            .then_some(())
    });
    wait_hub_says(&broker, "the running hub's word kept", b"online");

    // A hub killed without a word: its Last Will says it is gone.
    drop(hub);
    wait_hub_says(&broker, "the killed hub offline, by its will", b"offline");
}

/// A device that may publish only its own births sends three thousand of them in a second,
/// alternating two lists of two hundred processes. The hub stays awake: it goes on following
/// the fleet and telling Home Assistant, tells the device's list after the burst, and stops
/// when asked. (Found by a hostile-input review: the hub published its thousands of
/// discovery configs on the session that read the fleet, waiting for each, and stopped for
/// good after one window of acknowledgements, deaf to SIGTERM.)
#[test]
fn a_burst_of_births_from_one_device_leaves_the_hub_awake() {
    let broker = Broker::start();
    let (hub_key, files, key_file) = hub_key();
    let door_config = agent_config(&broker, &hub_key, "door-pi", DOOR);
    let door = TestAgent::start_in(tempfile::tempdir().unwrap(), &door_config);
    online_session(&broker, "door-pi");
    let hub = start_hub(
        &broker,
        files.path(),
        &key_file,
        "allow = [\"door-pi/*\"]\n",
    );
    // Read apart: the broker queues a reader at most 1,000 of them.
    let configs_of = |agent: &str| {
        let filter = format!("homeassistant/+/{agent}/+/config");
        let configs = retained(&broker, &filter).into_iter();
        let told: Vec<String> = configs
            .filter(|m| !m.payload.is_empty())
            .map(|m| m.topic)
            .collect();
        told
    };
    let of = |agent: &str| configs_of(agent).len();
    wait_for("door-pi's entities", TIMEOUT, || {
        (of("door-pi") == 2 * 6).then_some(())
    });

    let birth = |list: usize| {
        let names: Vec<String> = (0..200).map(|i| format!("p{list}x{i:04}")).collect();
        let birth = serde_json::json!({"v": 1, "agent": "evil", "state": "online",
            "version": "0.1.0", "host": "h", "processes": names, "session": "s",
            "since": "2026-12-07T12:00:00Z", "started": "2026-12-07T12:00:00Z",
            "heartbeat_secs": 30});
        birth.to_string().into_bytes()
    };
    let births = [birth(0), birth(1)];
    let device = Observer::connect(&broker, &[]);
    for n in 0..3000 {
        device.publish_retained("respawn/v1/evil/state", births[n % 2].clone(), None);
    }

    // A change of door-pi's after the burst reaches Home Assistant.
    door.rewrite_config(&door_config.replace(
        "[[process]]\nname = \"web\"\ncommand = [\"sleep\", \"100000\"]\n",
        "",
    ));
    door.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("web's entities cleared after the burst", TIMEOUT, || {
        (of("door-pi") == 6).then_some(())
    });
    // Its births told after the burst are told whole (the broker may have dropped some of the
    // burst's on their way to the hub, which fell behind, without a word: the last one among
    // them), however soon after the burst's.
    device.publish_retained("respawn/v1/evil/state", births[1].clone(), None);
    wait_for("the device's last list told", TIMEOUT, || {
        let configs = configs_of("evil");
        let named: std::collections::BTreeSet<&str> = (configs.iter())
            .filter_map(|topic| topic.split('/').nth(3)?.split('_').next())
            .collect();
        let last_list = named.iter().all(|name| name.starts_with("p1x"));
        (named.len() == 200 && last_list).then_some(())
    });
    assert_eq!(hub.interrupt(), Some(0), "the hub stops when asked");
    wait_hub_says(&broker, "the stopped hub offline", b"offline");
}
