//! A half-open connection, made for real: the agent runs in a network namespace of its own,
//! and its link to the broker is black-holed (`tc … pfifo limit 0` on both ends of the veth
//! pair), so packets vanish while both sockets stay open. The broker must notice and publish
//! the agent's `lost`; the agent must notice, keep supervising, reconnect once the link is
//! back, and deliver what happened meanwhile without a gap.

use std::collections::BTreeSet;
use std::time::Instant;

use respawn_common::messages::{AgentState, Event, EventKind, Presence};
use respawn_tests::broker::{Broker, Kind};
use respawn_tests::faults::Netns;
use respawn_tests::mqtt::{Message, Observer};
use respawn_tests::{agent_binary, runs_as_root, wait_for, TestAgent, TIMEOUT};

const CRASHER: &str = r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "exit 3"]
backoff = { initial = "200ms", max = "300ms" }
crash_loop = { max_exits = 100000, window = "1m" }
"#;

fn presences(messages: &[Message]) -> Vec<Presence> {
    messages
        .iter()
        .filter(|m| m.topic == "respawn/v1/test/state")
        .filter_map(|m| serde_json::from_slice::<AgentState>(&m.payload).ok())
        .map(|s| s.state)
        .collect()
}

fn events(messages: &[Message]) -> Vec<Event> {
    messages
        .iter()
        .filter(|m| m.topic == "respawn/v1/test/event")
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn a_black_holed_link_is_lost_then_recovered_without_a_gap() {
    if !runs_as_root(
        "a_black_holed_link_is_lost_then_recovered_without_a_gap",
        "network namespaces",
    ) {
        return;
    }
    let broker = Broker::start_on_all_addresses();
    let netns = Netns::new(match broker.kind() {
        Kind::Mosquitto => 1,
        Kind::Embedded => 2,
    });
    let observer = Observer::connect(&broker, &["respawn/v1/test/state", "respawn/v1/test/event"]);
    let config = format!(
        "[mqtt]\nurl = \"mqtt://{}:{}\"\nheartbeat = \"1s\"\nkeep_alive = \"5s\"\n\n{CRASHER}",
        netns.host_ip,
        broker.port()
    );
    let agent = TestAgent::start_wrapped(&netns.exec_prefix(), &agent_binary(), &config);
    observer.wait("the agent online", |m| {
        (presences(m).last() == Some(&Presence::Online)).then_some(())
    });
    observer.wait("a few crashes reported", |m| {
        (events(m).len() >= 6).then_some(())
    });

    let cut = Instant::now();
    netns.black_hole();
    // Both sides notice, each on its own: when the broker publishes the will, and when the
    // agent says it lost the broker.
    let (mut lost_after, mut noticed_after) = (None, None);
    wait_for("the broker and the agent to notice", TIMEOUT, || {
        if lost_after.is_none() && presences(&observer.messages()).last() == Some(&Presence::Lost) {
            lost_after = Some(cut.elapsed());
        }
        if noticed_after.is_none() && agent.log().contains("lost the connection to the broker") {
            noticed_after = Some(cut.elapsed());
        }
        lost_after.zip(noticed_after)
    });
    let (lost_after, noticed_after) = (lost_after.unwrap(), noticed_after.unwrap());
    let before = agent.status("crasher").restarts;
    agent.wait_until("crasher", "crashing on, cut off", |s| {
        s.restarts >= before + 5
    });
    let restarts_when_restored = agent.status("crasher").restarts;

    netns.restore();
    observer.wait("the agent back online", |m| {
        (presences(m).last() == Some(&Presence::Online)).then_some(())
    });
    let all = observer.wait("every crash of the outage reported", |m| {
        let events = events(m);
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Exited { restarts, .. } if restarts >= restarts_when_restored))
            .then_some(events)
    });
    // At least once: a repeat keeps its id.
    let mut ids = BTreeSet::new();
    let unique: Vec<&Event> = all.iter().filter(|e| ids.insert(e.id.clone())).collect();
    let seqs: Vec<u64> = unique.iter().map(|e| e.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "in order");
    assert!(
        sorted.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap: {sorted:?}"
    );
    assert!(unique.iter().all(|e| e.dropped_before == 0));
    eprintln!(
        "{:?} broker: lost published {lost_after:?} and the agent noticed {noticed_after:?} after the cut (keep-alive 5 s)",
        broker.kind()
    );
}

respawn_tests::on_both_brokers!(a_black_holed_link_is_lost_then_recovered_without_a_gap);
