//! Bridged sites: an agent on a site's Mosquitto, respawnctl and a persistent subscriber (as
//! the alerter has) on the central one, the two joined by `examples/mosquitto/bridge.conf`
//! itself. Status (with `lost` from a Last Will at the site), a signed restart round trip,
//! events that reach the central broker without a gap across a broken link, and the same, new
//! state on both brokers after it.

use respawn_common::signing::SigningKey;
use respawn_tests::broker::{Broker, PERSISTENT};
use respawn_tests::mqtt::{online_session, Observer};
use respawn_tests::{mqtt_section, respawnctl, wait_for, TestAgent, TIMEOUT};
use serde_json::Value;

const DOORBOT: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"100000\"]\n";

/// The liveness of `agent` and the state of its `process`, as `respawnctl status --json`
/// against `broker` shows them.
fn shown(broker: &Broker, agent: &str, process: &str) -> Option<(String, String)> {
    let out = respawnctl(broker, &["status", "--json"]);
    let status: Value = serde_json::from_str(&out.stdout).ok()?;
    let agents = status["agents"].as_array()?;
    let found = agents.iter().find(|a| a["agent"] == agent)?;
    let processes = found["processes"].as_array()?;
    let state = processes.iter().find(|p| p["name"] == process)?["state"].as_str()?;
    Some((found["liveness"].as_str()?.to_owned(), state.to_owned()))
}

/// The pid of `process` of `agent`, as `respawnctl status --json` against `broker` shows it.
fn pid_shown(broker: &Broker, agent: &str, process: &str) -> Option<u64> {
    let out = respawnctl(broker, &["status", "--json"]);
    let status: Value = serde_json::from_str(&out.stdout).ok()?;
    let agents = status["agents"].as_array()?;
    let found = agents.iter().find(|a| a["agent"] == agent)?;
    let processes = found["processes"].as_array()?;
    processes.iter().find(|p| p["name"] == process)?["pid"].as_u64()
}

#[test]
fn status_lost_and_a_signed_restart_cross_the_bridge() {
    let central = Broker::mosquitto("");
    let site = Broker::bridged_to(&central);
    let alice = SigningKey::generate("alice").unwrap();
    let files = tempfile::tempdir().unwrap();
    let key = respawn_tests::key_file(files.path(), &alice);
    let config = format!(
        "[agent]\nid = \"site-pi\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\n\n{}{DOORBOT}",
        alice.public_line(),
        mqtt_section(&site)
    );
    let agent = TestAgent::start_in(tempfile::tempdir().unwrap(), &config);
    let pid = agent.wait_running("doorbot");
    wait_for("site-pi in the central broker's status", TIMEOUT, || {
        (shown(&central, "site-pi", "doorbot")? == ("online".into(), "running".into()))
            .then_some(())
    });

    // A signed command goes out through the bridge and its reply comes back.
    let key = key.display().to_string();
    let out = respawnctl(&central, &["--key", &key, "restart", "site-pi/doorbot"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let new_pid = agent.wait_restarted("doorbot", pid);
    assert!(
        out.stdout.contains(&new_pid.to_string()),
        "the reply names the new pid {new_pid}: {}",
        out.stdout
    );

    // The agent dies without a word: the site broker publishes its Last Will, which the
    // bridge carries as an ordinary retained message.
    let _leftovers = agent.kill_hard();
    wait_for("site-pi lost, through the bridge", TIMEOUT, || {
        (shown(&central, "site-pi", "doorbot")?.0 == "lost").then_some(())
    });
}

#[test]
fn events_reach_the_central_broker_without_a_gap_across_a_broken_bridge_link() {
    let mut central = Broker::mosquitto(PERSISTENT);
    let site = Broker::bridged_to(&central);
    let config = format!(
        "[agent]\nid = \"site-pi\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n\n{}{DOORBOT}",
        mqtt_section(&site)
    );
    let _agent = TestAgent::start_in(tempfile::tempdir().unwrap(), &config);
    online_session(&site, "site-pi");
    let events = "respawn/v1/+/event";
    // As the alerter subscribes: a session the central broker keeps while it is away.
    let alerter = Observer::connect_persistent(&central, "bridge-test-alerter", &[events]);
    let at_site = Observer::connect(&site, &[events]);
    let ids = |observer: &Observer| -> Vec<String> {
        let messages = observer.messages();
        let mut ids: Vec<String> = messages
            .iter()
            .filter_map(|m| m.json()["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let restart = |n: usize| {
        let out = respawnctl(&site, &["restart", "site-pi/doorbot"]);
        assert_eq!(
            out.code,
            Some(0),
            "restart {n}: {}{}",
            out.stdout,
            out.stderr
        );
    };
    restart(1);
    wait_for("the first events at the central broker", TIMEOUT, || {
        let (central_ids, site_ids) = (ids(&alerter), ids(&at_site));
        (!site_ids.is_empty() && central_ids == site_ids).then_some(())
    });

    // The link breaks (the central broker goes away); the site goes on.
    central.stop();
    let before = ids(&at_site).len();
    for n in 2..=4 {
        restart(n);
    }
    wait_for("the outage's events at the site", TIMEOUT, || {
        (ids(&at_site).len() >= before + 3).then_some(())
    });
    central.resume();
    wait_for(
        "every event at the central broker, none missing",
        TIMEOUT,
        || {
            let site_ids = ids(&at_site);
            let central_ids = ids(&alerter);
            site_ids
                .iter()
                .all(|id| central_ids.contains(id))
                .then_some(())
        },
    );
}

#[test]
fn a_reconnected_bridge_leaves_both_brokers_with_the_site_s_latest_state() {
    let mut central = Broker::mosquitto(PERSISTENT);
    let site = Broker::bridged_to(&central);
    let config = format!(
        "[agent]\nid = \"site-pi\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n\n{}{DOORBOT}",
        mqtt_section(&site)
    );
    let agent = TestAgent::start_in(tempfile::tempdir().unwrap(), &config);
    let first = agent.wait_running("doorbot");
    wait_for("the first pid at the central broker", TIMEOUT, || {
        (pid_shown(&central, "site-pi", "doorbot")? == u64::from(first)).then_some(())
    });

    // While the link is down the site moves on; the central broker keeps the old state.
    central.stop();
    let out = respawnctl(&site, &["restart", "site-pi/doorbot"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let second = u64::from(agent.wait_restarted("doorbot", first));
    central.resume();
    wait_for("the new pid at the central broker", TIMEOUT, || {
        (pid_shown(&central, "site-pi", "doorbot")? == second).then_some(())
    });
    // A command from the centre crosses the reconnected bridge after anything the central
    // broker sent the site when the bridge subscribed, such as its old retained state.
    let out = respawnctl(&central, &["logs", "site-pi/doorbot"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        pid_shown(&site, "site-pi", "doorbot"),
        Some(second),
        "the central broker's old state came back to the site"
    );
    assert_eq!(pid_shown(&central, "site-pi", "doorbot"), Some(second));
}

/// Two agents given one id at two sites (a mistake docs/scaling.md warns of) both get each
/// command for it: the one whose birth the central broker holds takes it, the other refuses
/// it as `stale_session`. respawnctl reports the one that took it, and sends nothing again:
/// it took that refusal for the outcome and sent the command once more, so that a restart
/// ran on both Pis, or was reported as refused (found by a new-user run).
#[test]
fn a_command_for_an_id_two_sites_share_runs_once_and_is_reported_as_done() {
    let central = Broker::mosquitto("");
    let site1 = Broker::bridged_to(&central);
    let site2 = Broker::bridged_with(
        &central,
        &[(
            "remote_clientid respawn-bridge-site1",
            "remote_clientid respawn-bridge-site2",
        )],
    );
    let alice = SigningKey::generate("alice").unwrap();
    let files = tempfile::tempdir().unwrap();
    let key = respawn_tests::key_file(files.path(), &alice);
    let key = key.display().to_string();
    let config = |site: &Broker| {
        format!(
            "[agent]\nid = \"dup-pi\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\n\n{}{COUNTED}",
            alice.public_line(),
            mqtt_section(site)
        )
    };
    let first = TestAgent::start_in(tempfile::tempdir().unwrap(), &config(&site1));
    let first_pid = first.wait_running("doorbot");
    wait_for("the first agent at the central broker", TIMEOUT, || {
        (pid_shown(&central, "dup-pi", "doorbot")? == u64::from(first_pid)).then_some(())
    });
    let second = TestAgent::start_in(tempfile::tempdir().unwrap(), &config(&site2));
    let second_pid = second.wait_running("doorbot");
    wait_for("the second agent at the central broker", TIMEOUT, || {
        (pid_shown(&central, "dup-pi", "doorbot")? == u64::from(second_pid)).then_some(())
    });
    let mut pids = [first_pid, second_pid];
    let agents = [&first, &second];
    let starts = || -> usize {
        let runs =
            |a: &TestAgent| std::fs::read_to_string(a.dir().join("runs")).unwrap_or_default();
        agents.iter().map(|a| runs(a).lines().count()).sum()
    };
    for round in 1..=3 {
        let before = starts();
        let out = respawnctl(&central, &["--key", &key, "restart", "dup-pi/doorbot"]);
        assert_eq!(
            out.code,
            Some(0),
            "round {round}: {}{}",
            out.stdout,
            out.stderr
        );
        // respawnctl waits for every command it sends: one sent again would be done by now.
        let now: Vec<u32> = agents.iter().map(|a| a.wait_running("doorbot")).collect();
        let restarted: Vec<u32> = (0..2)
            .filter(|&i| now[i] != pids[i])
            .map(|i| now[i])
            .collect();
        assert_eq!(
            restarted.len(),
            1,
            "round {round}: one agent restarts, not both nor none: {pids:?} → {now:?}; {}",
            out.stdout
        );
        // Nor one of them twice (the new pid alone could not tell).
        assert_eq!(starts(), before + 1, "round {round}: {}", out.stdout);
        assert!(
            out.stdout.contains(&format!("→ {}\n", restarted[0]))
                || out.stdout.contains(&format!("→ {} ", restarted[0])),
            "round {round}: the reply names the new pid {}: {}",
            restarted[0],
            out.stdout
        );
        pids = [now[0], now[1]];
    }
}

/// A process that notes each of its starts in `runs`, in its agent's directory.
const COUNTED: &str =
    "[[process]]\nname = \"doorbot\"\ncommand = [\"sh\", \"-c\", \"echo $$ >> runs; exec sleep 100000\"]\n";

/// The number of times the site broker has tried to connect its bridge.
fn bridge_attempts(site: &Broker) -> usize {
    let log = std::fs::read_to_string(site.dir().join("mosquitto.log")).unwrap_or_default();
    log.matches("Connecting bridge (step 1)").count()
}

/// Found by a review: at every attempt to reach the central broker, also those that fail,
/// Mosquitto queues the site's whole retained state for the bridge again. Bridged at QoS 1,
/// those copies filled `max_queued_messages` minutes into an outage, and the events after
/// were dropped without a word (the agents' spools, emptied by the site broker, never knew).
/// Bridged at QoS 0, retained state is not queued for a link that is down.
#[test]
fn a_long_outage_does_not_crowd_out_events_with_copies_of_the_retained_state() {
    let mut central = Broker::mosquitto(PERSISTENT);
    // Room for 300 messages: less than three copies of the site's 360 retained ones.
    let room = [("max_queued_messages 200000", "max_queued_messages 300")];
    let site = Broker::bridged_with(&central, &room);
    respawn_tests::sim::publish_fleet("127.0.0.1", site.port(), 30, 10);
    let events = "respawn/v1/+/event";
    let alerter = Observer::connect_persistent(&central, "outage-alerter", &[events]);
    wait_for("the site's fleet at the central broker", TIMEOUT, || {
        let shown = respawn_tests::mqtt::retained(&central, "respawn/v1/+/proc/#");
        (shown.len() == 300).then_some(())
    });

    central.stop();
    let before = bridge_attempts(&site);
    wait_for(
        "three attempts to reach the central broker",
        TIMEOUT * 3,
        || (bridge_attempts(&site) >= before + 3).then_some(()),
    );
    let publisher = Observer::connect(&site, &[]);
    let sent: Vec<String> = (0..20).map(|n| format!("event {n}")).collect();
    for event in &sent {
        publisher.publish_acknowledged("respawn/v1/site-pi/event", event.as_bytes(), false);
    }
    central.resume();
    wait_for(
        "every event of the outage at the central broker",
        TIMEOUT * 3,
        || {
            let arrived: Vec<String> = (alerter.messages().iter())
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            sent.iter().all(|e| arrived.contains(e)).then_some(())
        },
    );
}

/// Found by a review: `respawn/v1/# out` carried commands published at one site to the
/// centre, and from there to the agents of every other site. A command stays at its site;
/// an event published after it crosses, and with it anything published before it would have.
#[test]
fn a_command_published_at_a_site_stays_there() {
    let central = Broker::mosquitto("");
    let site = Broker::bridged_to(&central);
    let at_centre = Observer::connect(&central, &["respawn/v1/#"]);
    let publisher = Observer::connect(&site, &[]);
    wait_for("the bridge up", TIMEOUT, || {
        publisher.publish_acknowledged("respawn/v1/probe/event", b"up", false);
        (!at_centre.on("respawn/v1/probe/event").is_empty()).then_some(())
    });
    publisher.publish_acknowledged("respawn/v1/other-site-pi/cmd", b"{}", false);
    publisher.publish_acknowledged("respawn/v1/probe/event", b"after", false);
    wait_for("the event published after it", TIMEOUT, || {
        let events = at_centre.on("respawn/v1/probe/event");
        events.iter().any(|m| m.payload == b"after").then_some(())
    });
    assert_eq!(at_centre.on("respawn/v1/other-site-pi/cmd").len(), 0);
}

/// docs/scaling.md shows bridge.conf's settings: the same ones, in the same order.
#[test]
fn the_scaling_guide_shows_bridge_conf_as_it_is() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let conf = std::fs::read_to_string(format!("{root}/examples/mosquitto/bridge.conf")).unwrap();
    let settings: Vec<&str> = conf
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let guide = std::fs::read_to_string(format!("{root}/docs/scaling.md")).unwrap();
    let block = guide
        .split("## Many sites")
        .nth(1)
        .and_then(|section| section.split("```\n").nth(1))
        .unwrap_or_default();
    assert_eq!(block.lines().collect::<Vec<_>>(), settings);
}
