//! The link's books over scripted rumqttc event sequences: what rumqttc would report, in the
//! order it would report it, with requests recorded instead of sent.

use std::cell::{Cell, RefCell};

use respawn_common::messages::{Event, EventKind};
use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties, ConnectReturnCode, PubAckReason};

use super::acks::EVENT_TRIES;
use super::waiting::MAX_WAITING_REPLIES;
use respawn_common::messages::CommandReply;

use super::super::MAX_IN_FLIGHT;
use super::*;

/// A publish as the link handed it to rumqttc.
#[derive(Clone, Debug)]
struct Sent {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Vec<u8>,
}

/// Records requests; `full` makes rumqttc's queue refuse them.
#[derive(Default)]
struct Recorder {
    sent: RefCell<Vec<Sent>>,
    full: Cell<bool>,
    subscriptions: Cell<usize>,
}

impl Requests for Recorder {
    fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        _properties: Option<PublishProperties>,
    ) -> Result<(), String> {
        if self.full.get() {
            return Err("full".into());
        }
        self.sent.borrow_mut().push(Sent {
            topic,
            qos,
            retain,
            payload,
        });
        Ok(())
    }

    fn subscribe(&self, _filter: Filter) -> Result<(), String> {
        self.subscriptions.set(self.subscriptions.get() + 1);
        Ok(())
    }
}

/// The link's books, and rumqttc's side of the script: which requests it has written and
/// the packet ids it gave them (1 to 64 and round again, as with `MAX_IN_FLIGHT`).
struct Script {
    core: Core<Recorder>,
    written: usize,
    last_pkid: u16,
    _dir: tempfile::TempDir,
}

impl Script {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let identity = Identity {
            agent: "pi".into(),
            host: "pi.local".into(),
            processes: vec!["door".into()],
            containment: "cgroup",
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let core = Core::new(
            Recorder::default(),
            Topics::new("respawn").expect("valid prefix"),
            identity,
            Duration::from_secs(30),
            Spool::open(dir.path(), 1000),
        );
        Self {
            core,
            written: 0,
            last_pkid: 0,
            _dir: dir,
        }
    }

    fn connect(&mut self, max_packet: Option<u32>) {
        self.written = self.core.requests.sent.borrow().len();
        self.last_pkid = 0;
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: max_packet.map(limited_to),
        };
        self.core.on_connected(&ack);
    }

    fn disconnect(&mut self) {
        self.core.on_disconnected();
    }

    /// rumqttc writes every queued request; returns the pkids of the events among them, by
    /// the event's seq.
    fn write_all(&mut self) -> Vec<(u64, u16)> {
        let sent: Vec<Sent> = self.core.requests.sent.borrow()[self.written..].to_vec();
        self.written += sent.len();
        let mut events = Vec::new();
        for publish in sent {
            let pkid = self.next_pkid(publish.qos);
            self.core.on_written(pkid);
            if publish.topic.ends_with("/event") {
                events.push((seq_of(&publish.payload), pkid));
            }
        }
        events
    }

    fn next_pkid(&mut self, qos: QoS) -> u16 {
        if qos == QoS::AtMostOnce {
            return 0;
        }
        self.last_pkid = self.last_pkid % MAX_IN_FLIGHT + 1;
        self.last_pkid
    }

    fn event(&mut self, process: &str) {
        self.core.event(
            Some(process),
            EventKind::Started {
                pid: 1,
                restarts: 0,
            },
        );
    }

    /// The events published so far, in order, as (seq, dropped_before).
    fn published_events(&self) -> Vec<(u64, u64)> {
        self.core
            .requests
            .sent
            .borrow()
            .iter()
            .filter(|p| p.topic.ends_with("/event"))
            .map(|p| {
                let event: Event = serde_json::from_slice(&p.payload).expect("an event");
                (event.seq, event.dropped_before)
            })
            .collect()
    }

    fn spooled(&self) -> Vec<u64> {
        self.core.spool.entries().iter().map(|e| e.seq).collect()
    }
}

/// CONNACK properties that say only the broker's largest packet.
fn limited_to(max_packet_size: u32) -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: Some(max_packet_size),
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

fn seq_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<Event>(payload)
        .expect("an event")
        .seq
}

#[test]
fn each_acknowledgement_delivers_the_event_its_packet_id_carried() {
    let mut script = Script::new();
    script.connect(None);
    for name in ["a", "b", "c"] {
        script.event(name);
    }
    let carried = script.write_all();
    let seqs: Vec<u64> = carried.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, script.spooled());

    // The broker acknowledges the last event first: nothing leaves the front of the spool.
    let (last_seq, last_pkid) = carried[2];
    script.core.on_acked(last_pkid, PubAckReason::Success);
    assert_eq!(script.spooled(), seqs);
    script.core.on_acked(carried[0].1, PubAckReason::Success);
    assert_eq!(script.spooled(), vec![carried[1].0, last_seq]);
    script.core.on_acked(carried[1].1, PubAckReason::Success);
    assert!(script.spooled().is_empty());
    assert_eq!(script.core.spool_queued, 0);
    // An acknowledgement for nothing in flight changes nothing.
    script.core.on_acked(last_pkid, PubAckReason::Success);
    script.core.on_acked(999, PubAckReason::Success);
    assert!(script.spooled().is_empty());
}

#[test]
fn a_publish_held_back_for_a_packet_id_collision_keeps_its_event() {
    let mut script = Script::new();
    script.connect(None);
    let _birth = script.write_all();
    script
        .core
        .on_acked(script.last_pkid, PubAckReason::Success);
    script.event("first");
    let (first_seq, first_pkid) = script.write_all()[0];
    // Births acknowledged at once use every other packet id, until the next one wraps round to
    // the first event's, still unacknowledged.
    while script.last_pkid != first_pkid - 1 {
        script.core.renew_session();
        let _ = script.write_all();
        script
            .core
            .on_acked(script.last_pkid, PubAckReason::Success);
    }
    script.event("collides");
    let sent = script.core.requests.sent.borrow()[script.written..].to_vec();
    script.written += sent.len();
    let [colliding] = sent.as_slice() else {
        panic!("one publish queued: {sent:?}");
    };
    let colliding_seq = seq_of(&colliding.payload);
    let pkid = script.next_pkid(colliding.qos);
    assert_eq!(pkid, first_pkid, "the script should collide");
    script.core.on_held_back(pkid);
    // The first event is acknowledged, freeing the pkid; rumqttc then writes the held publish.
    script.core.on_acked(pkid, PubAckReason::Success);
    assert_eq!(script.spooled(), vec![colliding_seq], "first: {first_seq}");
    script.core.on_written(pkid);
    script.core.on_acked(pkid, PubAckReason::Success);
    assert!(
        script.spooled().is_empty(),
        "the held-back event was delivered by its own acknowledgement"
    );
}

#[test]
fn an_event_too_large_for_the_broker_is_dropped_and_reported_by_the_next() {
    let mut script = Script::new();
    script.connect(Some(600));
    script.event(&"x".repeat(1000));
    assert!(script.spooled().is_empty(), "it could never be sent");
    assert!(script.published_events().is_empty());
    script.event("small");
    assert_eq!(script.published_events(), vec![(2, 1)]);
}

#[test]
fn an_event_the_broker_refuses_is_dropped_not_sent_again() {
    let mut script = Script::new();
    script.connect(None);
    script.event("a");
    let carried = script.write_all();
    script
        .core
        .on_acked(carried[0].1, PubAckReason::NotAuthorized);
    assert!(script.spooled().is_empty());
    script.disconnect();
    script.connect(None);
    script.event("b");
    assert_eq!(script.published_events(), vec![(1, 0), (2, 1)]);
}

#[test]
fn a_reconnect_sends_unacknowledged_events_again_and_forgets_old_packet_ids() {
    let mut script = Script::new();
    script.connect(None);
    for name in ["a", "b", "c"] {
        script.event(name);
    }
    let carried = script.write_all();
    script.core.on_acked(carried[0].1, PubAckReason::Success);
    script.disconnect();
    // An acknowledgement from the old connection finds nothing in flight.
    script.core.on_acked(carried[1].1, PubAckReason::Success);
    assert_eq!(script.spooled(), vec![2, 3]);

    script.connect(None);
    let again = script.write_all();
    assert_eq!(
        again.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [2, 3]
    );
    for (_, pkid) in &again {
        script.core.on_acked(*pkid, PubAckReason::Success);
    }
    assert!(script.spooled().is_empty());
    assert_eq!(
        script.published_events(),
        vec![(1, 0), (2, 0), (3, 0), (2, 0), (3, 0)]
    );
}

#[test]
fn events_wait_in_the_spool_while_disconnected_or_the_queue_is_full() {
    let mut script = Script::new();
    script.event("offline");
    assert!(script.published_events().is_empty());
    script.core.requests.full.set(true);
    script.connect(None);
    assert!(script.published_events().is_empty());
    assert_eq!(script.core.spool_queued, 0);
    script.core.requests.full.set(false);
    script.event("online");
    assert_eq!(script.published_events(), vec![(1, 0), (2, 0)]);
}

#[test]
fn an_event_held_by_a_full_queue_goes_out_as_soon_as_the_queue_moves() {
    let mut script = Script::new();
    script.connect(None);
    script.core.requests.full.set(true);
    script.event("crashed");
    assert!(script.published_events().is_empty());
    // rumqttc writes what it held (the birth, the states): room again, and no other event
    // or acknowledgement needed to send this one.
    script.core.requests.full.set(false);
    script.write_all();
    assert_eq!(script.published_events(), vec![(1, 0)]);
}

fn running(name: &str, pid: u32) -> ProcessStatus {
    let state = respawn_common::status::ProcessState::Running;
    ProcessStatus {
        pid: Some(pid),
        ..crate::runtime::report::bare_status(name, state)
    }
}

impl Script {
    /// The publishes on `topic` so far, as text.
    fn on(&self, topic: &str) -> Vec<String> {
        let sent = self.core.requests.sent.borrow();
        let on_topic = sent.iter().filter(|p| p.topic == topic);
        on_topic
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    }
}

/// A thousand processes changing at once fill rumqttc's queue: their states, the clearing of
/// a removed one and a command's reply go out as it empties, not at the next change of each
/// (which may never come: a broker showing them running after they stopped, for good).
#[test]
fn states_and_replies_held_by_a_full_queue_go_out_as_soon_as_the_queue_moves() {
    let mut script = Script::new();
    script.connect(None);
    script.core.process(&running("gone", 6), Notify::Every);
    // Queued, not yet written: the queue is full behind them.
    script.core.requests.full.set(true);
    script.core.process(&running("door", 7), Notify::Every);
    script.core.removed("gone");
    let reply = CommandReply::new("c1", "pi", respawn_common::messages::ReplyStatus::Succeeded);
    script.core.reply("alice", None, &reply);
    assert!(script.on("respawn/pi/proc/door").is_empty());

    script.core.requests.full.set(false);
    script.write_all();
    let door = script.on("respawn/pi/proc/door");
    assert_eq!(door.len(), 1, "{door:?}");
    assert!(door[0].contains("\"pid\":7"), "{door:?}");
    assert_eq!(
        script.on("respawn/pi/proc/gone").last().map(String::as_str),
        Some("")
    );
    assert_eq!(script.on("respawn/pi/reply/alice").len(), 1);
}

/// States that found the queue full as the connection was made, when nothing else is
/// written to make room, go out with the next heartbeat.
#[test]
fn states_refused_at_connection_go_out_with_the_next_heartbeat() {
    let mut script = Script::new();
    script.core.process(&running("door", 7), Notify::Every);
    script.core.requests.full.set(true);
    script.connect(None);
    script.core.requests.full.set(false);
    assert!(script.on("respawn/pi/proc/door").is_empty());
    script.core.heartbeat(&heartbeat());
    assert_eq!(script.on("respawn/pi/proc/door").len(), 1);
}

/// Replies wait for room in order, a bounded number of them.
#[test]
fn replies_wait_for_room_in_order_up_to_a_bound() {
    let mut script = Script::new();
    script.connect(None);
    script.core.requests.full.set(true);
    for n in 0..MAX_WAITING_REPLIES + 5 {
        let status = respawn_common::messages::ReplyStatus::Succeeded;
        script.core.reply(
            "alice",
            None,
            &CommandReply::new(&format!("c{n}"), "pi", status),
        );
    }
    script.core.requests.full.set(false);
    script.core.reply(
        "alice",
        None,
        &CommandReply::new(
            "late",
            "pi",
            respawn_common::messages::ReplyStatus::Accepted,
        ),
    );
    script.write_all();
    let replies = script.on("respawn/pi/reply/alice");
    assert_eq!(replies.len(), MAX_WAITING_REPLIES);
    assert!(replies[0].contains("\"c0\""), "{}", replies[0]);
    assert!(replies[MAX_WAITING_REPLIES - 1].contains(&format!("\"c{}\"", MAX_WAITING_REPLIES - 1)));
}

#[test]
fn no_more_than_the_window_of_events_is_in_flight() {
    let mut script = Script::new();
    script.connect(None);
    for i in 0..EVENT_WINDOW + 5 {
        script.event(&format!("p{i}"));
    }
    let carried = script.write_all();
    assert_eq!(carried.len(), EVENT_WINDOW);
    script.core.on_acked(carried[0].1, PubAckReason::Success);
    let next = script.write_all();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, EVENT_WINDOW as u64 + 1);
}

#[test]
fn the_goodbye_waits_for_its_acknowledgement_and_the_events_in_flight() {
    let mut script = Script::new();
    script.connect(None);
    script.event("a");
    let carried = script.write_all();
    script.core.goodbye();
    let _ = script.write_all();
    assert!(!script.core.said_goodbye());
    let goodbye = script.last_pkid;
    script.core.on_acked(goodbye, PubAckReason::Success);
    assert!(!script.core.said_goodbye(), "an event is still in flight");
    script.core.on_acked(carried[0].1, PubAckReason::Success);
    assert!(script.core.said_goodbye());
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        v: 1,
        agent: "pi".into(),
        at: SystemTime::now(),
        interval_secs: 30,
        uptime_secs: 1,
        running: 1,
        processes: 1,
        load1: None,
        mem_total_kb: None,
        mem_available_kb: None,
        cpu_temp_c: None,
    }
}

#[test]
fn an_event_refused_for_now_is_sent_again_at_heartbeats_a_few_times() {
    let mut script = Script::new();
    script.connect(None);
    script.event("a");
    script.event("b");
    let carried = script.write_all();
    // A quota: the first is tried again at the next heartbeat; the second is taken.
    script
        .core
        .on_acked(carried[0].1, PubAckReason::QuotaExceeded);
    script.core.on_acked(carried[1].1, PubAckReason::Success);
    assert_eq!(script.spooled(), [1, 2], "kept, and the second behind it");
    script.core.heartbeat(&heartbeat());
    let again = script.write_all();
    assert_eq!(again.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [1]);
    script.core.on_acked(again[0].1, PubAckReason::Success);
    assert!(script.spooled().is_empty(), "delivered late");

    // Refused for now time after time, it is dropped at the last try, and reported.
    script.event("c");
    let mut carried = script.write_all();
    for _ in 1..EVENT_TRIES {
        script
            .core
            .on_acked(carried[0].1, PubAckReason::UnspecifiedError);
        assert_eq!(script.spooled(), [3]);
        script.core.heartbeat(&heartbeat());
        carried = script.write_all();
    }
    script
        .core
        .on_acked(carried[0].1, PubAckReason::UnspecifiedError);
    assert!(script.spooled().is_empty());
    script.event("d");
    let last = script.core.requests.sent.borrow().last().cloned().unwrap();
    let event: Event = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!((event.seq, event.dropped_before), (4, 1));
}

#[test]
fn a_refused_subscription_to_commands_is_asked_again_at_each_heartbeat_until_accepted() {
    let mut script = Script::new();
    let subscriptions = |script: &Script| script.core.requests.subscriptions.get();
    let heartbeat = heartbeat();
    script.connect(None);
    assert_eq!(subscriptions(&script), 1);
    script.core.heartbeat(&heartbeat);
    assert_eq!(subscriptions(&script), 1, "accepted so far: not again");
    script.core.on_subscribed(false);
    script.core.heartbeat(&heartbeat);
    script.core.heartbeat(&heartbeat);
    assert_eq!(subscriptions(&script), 3);
    script.core.on_subscribed(true);
    script.core.heartbeat(&heartbeat);
    assert_eq!(subscriptions(&script), 3);
    script.core.on_subscribed(false);
    script.disconnect();
    script.core.heartbeat(&heartbeat);
    assert_eq!(subscriptions(&script), 3, "not while disconnected");
    script.connect(None);
    script.core.heartbeat(&heartbeat);
    assert_eq!(subscriptions(&script), 4, "a new connection starts afresh");
}

/// The births the link has handed to rumqttc so far, each retained (a birth replaces a stale
/// will).
fn births(script: &Script) -> Vec<AgentState> {
    let sent = script.core.requests.sent.borrow();
    let births = sent.iter().filter(|p| p.topic.ends_with("/state"));
    births
        .map(|p| {
            assert!(p.retain, "a birth is retained");
            serde_json::from_slice::<AgentState>(&p.payload).expect("a birth")
        })
        .collect()
}

#[test]
fn each_heartbeat_says_the_birth_again_within_its_session() {
    let mut script = Script::new();
    script.connect(None);
    script.core.heartbeat(&heartbeat());
    script.core.heartbeat(&heartbeat());
    let said = births(&script);
    assert_eq!(
        said.len(),
        3,
        "the connection's birth and one per heartbeat"
    );
    assert!(said.iter().all(|b| b.state == Presence::Online));
    assert!(said.iter().all(|b| b.session == said[0].session));
    assert!(said.iter().all(|b| b.since == said[0].since));
    script.core.on_disconnected();
    script.core.heartbeat(&heartbeat());
    assert_eq!(births(&script).len(), 3, "none while away");
}

#[test]
fn a_reconfiguration_is_told_in_one_birth_or_none() {
    let mut script = Script::new();
    script.connect(None);
    let first = births(&script);
    assert_eq!(first.len(), 1);
    script.core.reconfigured(vec!["door".into()], false);
    assert_eq!(births(&script).len(), 1, "nothing changed: no birth");
    script
        .core
        .reconfigured(vec!["door".into(), "gate".into()], false);
    let after = births(&script);
    assert_eq!(after.len(), 2);
    assert_eq!(after[1].processes, ["door", "gate"]);
    assert_eq!(after[1].session, first[0].session);
    // New names and a new session at once: one birth says both.
    script.core.reconfigured(vec!["gate".into()], true);
    let after = births(&script);
    assert_eq!(after.len(), 3);
    assert_eq!(after[2].processes, ["gate"]);
    assert_ne!(after[2].session, first[0].session);
}
