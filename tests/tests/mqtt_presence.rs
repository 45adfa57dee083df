//! Presence and retained state over MQTT: birth, graceful goodbye, Last Will after a hard kill,
//! retained process states (cleared when a process is removed), and the expiring heartbeat.

use nix::sys::signal::Signal;
use respawn_common::messages::{AgentState, Heartbeat, Presence, ProcessReport};
use respawn_common::status::ProcessState;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{retained, Observer};
use respawn_tests::{mqtt_section, wait_for, TestAgent, TIMEOUT};
use rumqttc::v5::mqttbytes::v5::PubAckReason;

const PROCESSES: &str = r#"
[[process]]
name = "doorbot"
command = ["sleep", "1000"]

[[process]]
name = "idle"
command = ["sleep", "1000"]
autostart = false
"#;

fn state(broker: &Broker) -> Option<AgentState> {
    retained(broker, "respawn/v1/test/state")
        .first()
        .and_then(|m| serde_json::from_slice(&m.payload).ok())
}

fn wait_presence(broker: &Broker, presence: Presence) -> AgentState {
    wait_for(&format!("retained state {presence:?}"), TIMEOUT, || {
        state(broker).filter(|s| s.state == presence)
    })
}

fn birth_retained_states_and_a_graceful_goodbye() {
    let broker = Broker::start();
    let mut agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    let pid = agent.wait_running("doorbot");

    let birth = wait_presence(&broker, Presence::Online);
    assert_eq!(birth.agent, "test");
    assert_eq!(birth.processes, ["doorbot", "idle"]);
    assert!(birth.session.is_some_and(|s| s.len() >= 16));
    assert_eq!(birth.heartbeat_secs, Some(1));

    let reports: Vec<ProcessReport> = wait_for("both process states", TIMEOUT, || {
        let reports: Vec<ProcessReport> = retained(&broker, "respawn/v1/test/proc/+")
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect();
        (reports.len() == 2 && reports.iter().any(|r| r.status.pid == Some(pid))).then_some(reports)
    });
    let idle = reports.iter().find(|r| r.status.name == "idle").unwrap();
    assert_eq!(
        idle.status.state,
        ProcessState::Stopped,
        "not autostarted, still reported"
    );

    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(0));
    let goodbye = wait_presence(&broker, Presence::Offline);
    assert!(goodbye.since.is_some());
    let doorbot = retained(&broker, "respawn/v1/test/proc/doorbot");
    let report: ProcessReport = serde_json::from_slice(&doorbot[0].payload).unwrap();
    assert_eq!(
        report.status.state,
        ProcessState::Stopped,
        "the final state is retained"
    );
}

fn a_reload_announces_the_new_processes_but_keeps_the_time_the_agent_came_online() {
    let broker = Broker::start();
    let agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    let birth = wait_presence(&broker, Presence::Online);
    agent.rewrite_config(
        &(mqtt_section(&broker)
            + PROCESSES
            + "\n[[process]]\nname = \"added\"\ncommand = [\"sleep\", \"1000\"]\n"),
    );
    agent.signal(Signal::SIGHUP);
    let reborn = wait_for("a birth that names the added process", TIMEOUT, || {
        state(&broker).filter(|s| s.processes.iter().any(|p| p == "added"))
    });
    assert_eq!(reborn.session, birth.session, "the same connection");
    assert_eq!(
        reborn.since, birth.since,
        "online since the connection, not the reload"
    );
}

fn a_hard_kill_leaves_the_last_will() {
    let broker = Broker::start();
    let agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    wait_presence(&broker, Presence::Online);
    let _dir = agent.kill_hard();
    let lost = wait_presence(&broker, Presence::Lost);
    assert_eq!(lost.agent, "test");
}

/// A Last Will that reaches a broker after the birth it follows (a bridge flushing what it
/// queued across a restart) is mended by the agent's next heartbeat, session and all.
fn a_stale_last_will_is_overwritten_by_the_next_birth() {
    let broker = Broker::start();
    let _agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    let birth = wait_presence(&broker, Presence::Online);
    let will = serde_json::json!({"v": 1, "agent": "test", "state": "lost", "version": "0.1.0",
        "host": "test"});
    let late = Observer::connect(&broker, &[]);
    let acked =
        late.publish_acknowledged("respawn/v1/test/state", will.to_string().as_bytes(), true);
    let taken = [PubAckReason::Success, PubAckReason::NoMatchingSubscribers];
    assert!(
        taken.contains(&acked),
        "the stand-in will was taken: {acked:?}"
    );
    let mended = wait_presence(&broker, Presence::Online);
    assert_eq!(mended.session, birth.session, "the same connection's birth");
    assert_eq!(mended.since, birth.since);
}

fn the_heartbeat_is_retained_and_expires_when_the_agent_is_gone() {
    let broker = Broker::start();
    let observer = Observer::connect(&broker, &["respawn/v1/test/heartbeat"]);
    let agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    let beat = observer.wait("a heartbeat", |messages| messages.first().cloned());
    let heartbeat: Heartbeat = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!(heartbeat.interval_secs, 1);
    assert_eq!(heartbeat.processes, 2);
    assert!(heartbeat.mem_total_kb.is_some());
    let expiry = beat.properties.and_then(|p| p.message_expiry_interval);
    assert_eq!(expiry, Some(3), "three heartbeat intervals");
    assert_eq!(retained(&broker, "respawn/v1/test/heartbeat").len(), 1);

    let _dir = agent.kill_hard();
    wait_for("the retained heartbeat to expire", TIMEOUT, || {
        retained(&broker, "respawn/v1/test/heartbeat")
            .is_empty()
            .then_some(())
    });
}

fn a_removed_process_has_its_retained_state_cleared() {
    let broker = Broker::start();
    let agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    wait_for("idle's retained state", TIMEOUT, || {
        (!retained(&broker, "respawn/v1/test/proc/idle").is_empty()).then_some(())
    });
    agent.rewrite_config(
        &(mqtt_section(&broker)
            + "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n"),
    );
    agent.signal(Signal::SIGHUP);
    wait_for("idle's retained state to be cleared", TIMEOUT, || {
        retained(&broker, "respawn/v1/test/proc/idle")
            .is_empty()
            .then_some(())
    });
    let birth = wait_for("a birth naming only doorbot", TIMEOUT, || {
        state(&broker).filter(|s| s.processes == ["doorbot"])
    });
    assert_eq!(birth.state, Presence::Online);
}

/// A process that leaves the configuration while it runs is named in the birth until it has
/// stopped: readers show it stopping for its whole `stop_timeout`, not gone while it runs.
fn a_removed_process_is_named_until_it_has_stopped() {
    let broker = Broker::start();
    let doorbot = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";
    let stubborn = r#"
[[process]]
name = "stubborn"
command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
stop_timeout = "3s"
"#;
    let agent = TestAgent::start(&(mqtt_section(&broker) + doorbot + stubborn));
    agent.wait_running("stubborn");
    wait_for("a birth naming both", TIMEOUT, || {
        state(&broker).filter(|s| s.processes == ["doorbot", "stubborn"])
    });
    agent.rewrite_config(&(mqtt_section(&broker) + doorbot));
    agent.signal(Signal::SIGHUP);
    let stopping = |broker: &Broker| {
        let reports = retained(broker, "respawn/v1/test/proc/stubborn");
        let report = serde_json::from_slice::<ProcessReport>(&reports.first()?.payload).ok()?;
        (report.status.state == ProcessState::Stopping).then_some(())
    };
    wait_for("stubborn stopping", TIMEOUT, || stopping(&broker));
    let birth = state(&broker).expect("a birth");
    assert_eq!(birth.processes, ["doorbot", "stubborn"], "while it stops");
    wait_for(
        "a birth naming only doorbot, once stubborn is gone",
        TIMEOUT,
        || state(&broker).filter(|s| s.processes == ["doorbot"]),
    );
    assert!(retained(&broker, "respawn/v1/test/proc/stubborn").is_empty());
}

fn a_process_dropped_while_the_agent_was_down_is_cleared_at_its_next_start() {
    let broker = Broker::start();
    let mut agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    wait_for("idle's retained state", TIMEOUT, || {
        (!retained(&broker, "respawn/v1/test/proc/idle").is_empty()).then_some(())
    });
    agent.signal(Signal::SIGTERM);
    agent.wait_exit();
    let only_doorbot = mqtt_section(&broker)
        + "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";
    let agent = TestAgent::start_in(agent.kill_hard(), &only_doorbot);
    agent.wait_running("doorbot");
    wait_for("idle's stale state to be cleared", TIMEOUT, || {
        retained(&broker, "respawn/v1/test/proc/idle")
            .is_empty()
            .then_some(())
    });
}

/// Two agents of one id (two Pis both named raspberrypi) take turns on the broker: each
/// connection ends the other's. Mosquitto closes the older without a word, the embedded broker
/// says "session taken over"; either way an agent says a second one may have its id.
fn two_agents_of_one_id_are_told_so() {
    let broker = Broker::start();
    let config = mqtt_section(&broker) + PROCESSES;
    let first = TestAgent::start(&config);
    first.wait_running("doorbot");
    let second = TestAgent::start(&config);
    let said = "a second agent running with";
    // The broker was there all along: the connection is said lost, not the broker, and the
    // next connection, at its first try, is said made again.
    let lost = "lost the connection to the broker";
    wait_for("an agent saying a second one has its id", TIMEOUT, || {
        [first.log(), second.log()]
            .iter()
            .any(|log| log.lines().any(|l| l.contains(said) && l.contains(lost)))
            .then_some(())
    });
    wait_for("a connection made again at its first try", TIMEOUT, || {
        [first.log(), second.log()]
            .iter()
            .any(|log| {
                log.lines().any(|l| {
                    l.ends_with("connected to the broker again")
                        || l.contains("connected to the broker again broker=")
                })
            })
            .then_some(())
    });
}

respawn_tests::on_both_brokers!(
    two_agents_of_one_id_are_told_so,
    birth_retained_states_and_a_graceful_goodbye,
    a_reload_announces_the_new_processes_but_keeps_the_time_the_agent_came_online,
    a_hard_kill_leaves_the_last_will,
    a_stale_last_will_is_overwritten_by_the_next_birth,
    the_heartbeat_is_retained_and_expires_when_the_agent_is_gone,
    a_removed_process_has_its_retained_state_cleared,
    a_removed_process_is_named_until_it_has_stopped,
    a_process_dropped_while_the_agent_was_down_is_cleared_at_its_next_start,
);
