//! Lifecycle events over MQTT: what a crash reports, and that no event is lost while the broker
//! is away — delivered afterwards in order with distinct ids, even across an agent restart.

use std::collections::BTreeSet;

use respawn_common::messages::{Event, EventKind};
use respawn_common::status::{ExitStatus, Stream};
use respawn_tests::broker::{Broker, PERSISTENT};
use respawn_tests::mqtt::{Message, Observer};
use respawn_tests::{mqtt_section, TestAgent};

fn events(messages: &[Message]) -> Vec<Event> {
    messages
        .iter()
        .filter(|m| m.topic == "respawn/v1/test/event")
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn exits(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Exited { .. }))
        .collect()
}

fn a_crash_event_carries_the_exit_code_and_the_last_output() {
    let broker = Broker::start();
    let observer = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let _agent = TestAgent::start(
        &(mqtt_section(&broker)
            + r#"
[[process]]
name = "doorbot"
command = ["sh", "-c", "echo listening; echo 'fatal: GPIO 17 busy' >&2; exit 1"]
backoff = { initial = "1h", max = "1h" }
"#),
    );
    let event = observer.wait("an exit event", |messages| {
        events(messages)
            .into_iter()
            .find(|e| matches!(e.kind, EventKind::Exited { .. }))
    });
    assert_eq!(event.process.as_deref(), Some("doorbot"));
    assert!(uuid::Uuid::parse_str(&event.id).is_ok());
    let EventKind::Exited {
        status,
        restarts,
        requested,
        next_start,
        log_tail,
        ..
    } = event.kind
    else {
        unreachable!()
    };
    assert_eq!(status, ExitStatus::Code { code: 1 });
    assert_eq!(restarts, 0);
    assert!(!requested);
    assert!(next_start.is_some());
    let tail: Vec<(Stream, &str)> = log_tail
        .iter()
        .map(|l| (l.stream, l.text.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            (Stream::Stdout, "listening"),
            (Stream::Stderr, "fatal: GPIO 17 busy")
        ]
    );
}

const CRASHER: &str = r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "exit 7"]
backoff = { initial = "10ms", max = "20ms" }
crash_loop = { max_exits = 1000, window = "1m" }
"#;

#[test]
fn events_during_a_broker_outage_arrive_afterwards_in_order() {
    // The observer's session must outlive the broker's restart: Mosquitto with persistence.
    let mut broker = Broker::mosquitto(PERSISTENT);
    let observer =
        Observer::connect_persistent(&broker, "outage-watcher", &["respawn/v1/test/event"]);
    let agent = TestAgent::start(
        &(mqtt_section(&broker)
            + r#"
[[process]]
name = "crasher"
command = ["sleep", "1000"]
"#),
    );
    observer.wait("the first start", |m| (!events(m).is_empty()).then_some(()));

    broker.stop();
    agent.rewrite_config(&(mqtt_section(&broker) + CRASHER));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_until("crasher", "crashed 20 times", |s| s.restarts >= 20);
    broker.resume();
    observer.wait_connected();

    let all = observer.wait("20 exit events", |messages| {
        let events = events(messages);
        (exits(&events).iter().filter(|e| matches!(&e.kind, EventKind::Exited { status, .. } if *status == ExitStatus::Code { code: 7 })).count() >= 20)
            .then_some(events)
    });
    // Delivery is at least once: a reconnect may repeat an event, with its id.
    let mut seen = BTreeSet::new();
    let all: Vec<&Event> = all.iter().filter(|e| seen.insert(e.id.clone())).collect();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, one event per id");
    assert_eq!(
        sorted.last().unwrap() - sorted.first().unwrap() + 1,
        sorted.len() as u64,
        "no gap in the sequence"
    );
    let distinct: BTreeSet<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(distinct.len(), all.len(), "a distinct id for every event");
}

#[test]
fn events_spooled_before_an_agent_restart_are_still_delivered() {
    // The observer's session must outlive the broker's restart: Mosquitto with persistence.
    let mut broker = Broker::mosquitto(PERSISTENT);
    let observer =
        Observer::connect_persistent(&broker, "restart-watcher", &["respawn/v1/test/event"]);
    broker.stop();
    let agent = TestAgent::start(&(mqtt_section(&broker) + CRASHER));
    agent.wait_until("crasher", "crashed 10 times", |s| s.restarts >= 10);
    let dir = agent.kill_hard();

    broker.resume();
    observer.wait_connected();
    let _agent = TestAgent::start_in(dir, &(mqtt_section(&broker) + CRASHER));
    let all = observer.wait("the spooled events of the first run", |messages| {
        let events = events(messages);
        let seqs: BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
        // The first run's events start at 1; at least its 10 exits and 11 starts.
        (1..=21).all(|s| seqs.contains(&s)).then_some(events)
    });
    let first = all.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!(first.kind.name(), "started");
}

respawn_tests::on_both_brokers!(a_crash_event_carries_the_exit_code_and_the_last_output,);
