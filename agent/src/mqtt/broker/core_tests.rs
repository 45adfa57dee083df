//! The broker core on virtual time: every MQTT 5 behaviour the fleet protocol relies on.

use super::*;
use crate::mqtt::broker::kept;
use crate::mqtt::broker::session::DELIVERY_OVERHEAD;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, Filter as SubscribeFilter, LastWillProperties, PubAck, PubAckReason,
    Publish, PublishProperties, RetainForwardRule, Subscribe, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use std::time::SystemTime;

/// A broker and a clock that tests move by hand.
struct Bench {
    core: Core,
    now: Instant,
    /// What clients connected by `connect_with` ask for; 0 s: they never time out.
    keep_alive: u16,
    /// Whether clients opened from now on connect from this machine.
    from_this_machine: bool,
}

fn qos1() -> QoS {
    QoS::AtLeastOnce
}

impl Bench {
    fn new() -> Self {
        Self::with(Limits::default())
    }

    fn with(limits: Limits) -> Self {
        Self {
            core: Core::new(limits),
            now: Instant::now(),
            keep_alive: 0,
            from_this_machine: true,
        }
    }

    fn advance(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        self.core.tick(self.now)
    }

    fn input(&mut self, conn: ConnId, input: Input) -> Vec<Effect> {
        self.core.handle(conn, input, self.now)
    }

    fn packet(&mut self, conn: ConnId, packet: Packet) -> Vec<Effect> {
        self.input(conn, Input::Packet(Box::new(packet)))
    }

    /// Opens `conn` and connects it as `client`; returns the CONNACK.
    fn connect_with(
        &mut self,
        conn: ConnId,
        client: &str,
        clean_start: bool,
        expiry: Option<u32>,
        will: Option<LastWill>,
    ) -> ConnAck {
        let out = self.open(conn, client, clean_start, expiry, will);
        match out.first() {
            Some(Effect::Send(c, Packet::ConnAck(ack))) if *c == conn => ack.clone(),
            other => panic!("no CONNACK: {other:?}"),
        }
    }

    /// Opens `conn` and connects it as `client`; returns everything that follows.
    fn open(
        &mut self,
        conn: ConnId,
        client: &str,
        clean_start: bool,
        expiry: Option<u32>,
        will: Option<LastWill>,
    ) -> Vec<Effect> {
        self.input(
            conn,
            Input::Opened {
                from_this_machine: self.from_this_machine,
            },
        );
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = expiry;
        let connect = Connect {
            keep_alive: self.keep_alive,
            client_id: client.into(),
            clean_start,
            properties: Some(properties),
        };
        self.packet(conn, Packet::Connect(connect, will, None))
    }

    fn connect(&mut self, conn: ConnId, client: &str) -> ConnAck {
        self.connect_with(conn, client, true, None, None)
    }

    fn subscribe(&mut self, conn: ConnId, filter: &str, qos: QoS) -> Vec<Effect> {
        self.subscribe_with(conn, SubscribeFilter::new(filter, qos))
    }

    fn subscribe_with(&mut self, conn: ConnId, filter: SubscribeFilter) -> Vec<Effect> {
        let out = self.packet(conn, Packet::Subscribe(Subscribe::new(filter, None)));
        assert!(
            matches!(out.first(), Some(Effect::Send(c, Packet::SubAck(_))) if *c == conn),
            "{out:?}"
        );
        out
    }

    fn publish(
        &mut self,
        conn: ConnId,
        topic: &str,
        payload: &str,
        retain: bool,
        expiry: Option<u32>,
    ) -> Vec<Effect> {
        let mut publish = Publish::new(topic, qos1(), payload.as_bytes().to_vec(), None);
        publish.pkid = 1;
        publish.retain = retain;
        publish.properties = expiry.map(|secs| PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        });
        self.packet(conn, Packet::Publish(publish))
    }
}

/// The PUBLISHes among `effects` that go to `conn`.
fn published(effects: &[Effect], conn: ConnId) -> Vec<Publish> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(c, Packet::Publish(p)) if *c == conn => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn payloads(effects: &[Effect], conn: ConnId) -> Vec<String> {
    published(effects, conn)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

fn closed(effects: &[Effect], conn: ConnId) -> bool {
    effects.contains(&Effect::Close(conn))
}

fn expiry_of(publish: &Publish) -> Option<u32> {
    publish
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
}

#[test]
fn a_retained_message_with_expiry_survives_any_number_of_readers_until_it_expires() {
    // The heartbeat: retained, expiring after 90 s, read by every `respawnctl status`.
    let mut bench = Bench::new();
    bench.connect(1, "agent");
    bench.publish(1, "respawn/v1/a/heartbeat", "beat", true, Some(90));
    for reader in 0..60 {
        bench.advance(Duration::from_secs(1));
        let conn = 100 + reader;
        bench.connect(conn, &format!("reader-{reader}"));
        let out = bench.subscribe(conn, "respawn/v1/+/heartbeat", qos1());
        let seen = published(&out, conn);
        assert_eq!(seen.len(), 1, "reader {reader} after {}s", reader + 1);
        assert!(seen[0].retain);
        assert_eq!(expiry_of(&seen[0]), Some(90 - 1 - reader as u32));
        bench.packet(
            conn,
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        );
    }
    bench.advance(Duration::from_secs(30));
    bench.connect(999, "late");
    let out = bench.subscribe(999, "#", qos1());
    assert!(published(&out, 999).is_empty(), "gone after 90 s");
}

#[test]
fn retained_messages_reach_wildcard_subscribers_and_an_empty_payload_clears_them() {
    let mut bench = Bench::new();
    bench.connect(1, "agent");
    bench.publish(1, "respawn/v1/a/proc/web", "up", true, None);
    bench.publish(1, "respawn/v1/a/proc/db", "up", true, None);
    bench.publish(1, "respawn/v1/a/state", "online", true, None);
    bench.publish(1, "respawn/v1/a/event", "not retained", false, None);
    bench.connect(2, "reader");
    let out = bench.subscribe(2, "respawn/v1/+/proc/+", qos1());
    let mut topics: Vec<String> = published(&out, 2)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    topics.sort();
    assert_eq!(topics, ["respawn/v1/a/proc/db", "respawn/v1/a/proc/web"]);
    let out = bench.subscribe(2, "respawn/v1/#", qos1());
    assert_eq!(published(&out, 2).len(), 3);

    let out = bench.publish(1, "respawn/v1/a/proc/db", "", true, None);
    assert_eq!(payloads(&out, 2), [""], "live subscribers see the clear");
    bench.connect(3, "later");
    let out = bench.subscribe(3, "respawn/v1/#", qos1());
    assert_eq!(published(&out, 3).len(), 2);
}

#[test]
fn live_subscribers_get_retain_false_unless_they_ask_for_retain_as_published() {
    let mut bench = Bench::new();
    bench.connect(1, "pub");
    bench.connect(2, "plain");
    bench.connect(3, "rap");
    bench.subscribe(2, "t", qos1());
    let mut rap = SubscribeFilter::new("t", qos1());
    rap.preserve_retain = true;
    bench.subscribe_with(3, rap);
    let out = bench.publish(1, "t", "x", true, None);
    assert!(!published(&out, 2)[0].retain);
    assert!(published(&out, 3)[0].retain);
}

#[test]
fn message_expiry_is_passed_on_reduced_by_the_time_waited() {
    let mut bench = Bench::new();
    bench.connect_with(1, "away", false, Some(3600), None);
    bench.subscribe(1, "cmd", qos1());
    bench.input(1, Input::Closed);
    bench.connect(2, "pub");
    bench.publish(2, "cmd", "soon stale", false, Some(10));
    bench.publish(2, "cmd", "fresh", false, Some(100));
    bench.now += Duration::from_secs(30);
    let out = bench.open(3, "away", false, Some(3600), None);
    let sent = published(&out, 3);
    assert_eq!(sent.len(), 1, "the expired one is not delivered");
    assert_eq!(sent[0].payload, "fresh");
    assert_eq!(expiry_of(&sent[0]), Some(70));
}

#[test]
fn a_lost_connection_publishes_its_will_and_a_goodbye_does_not() {
    let will = || LastWill::new("respawn/v1/a/state", "lost", qos1(), true, None);
    let mut bench = Bench::new();
    bench.connect(9, "watcher");
    bench.subscribe(9, "respawn/v1/+/state", qos1());
    bench.connect_with(1, "agent", true, None, Some(will()));
    let out = bench.input(1, Input::Closed);
    assert_eq!(payloads(&out, 9), ["lost"]);
    bench.connect(10, "late");
    let out = bench.subscribe(10, "respawn/v1/+/state", qos1());
    assert_eq!(payloads(&out, 10), ["lost"], "the will was retained");

    bench.connect_with(2, "agent", true, None, Some(will()));
    let out = bench.packet(
        2,
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
    );
    assert!(closed(&out, 2));
    assert!(payloads(&out, 9).is_empty());

    bench.connect_with(3, "agent", true, None, Some(will()));
    let out = bench.packet(
        3,
        Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::DisconnectWithWillMessage,
        )),
    );
    assert_eq!(payloads(&out, 9), ["lost"]);
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_with_its_will() {
    let mut bench = Bench::new();
    bench.keep_alive = 10;
    bench.connect(9, "watcher");
    bench.subscribe(9, "state", qos1());
    bench.connect_with(
        1,
        "agent",
        true,
        None,
        Some(LastWill::new("state", "lost", qos1(), true, None)),
    );
    // keep_alive 10 s: the watcher pings, the agent goes silent.
    for _ in 0..14 {
        bench.packet(9, Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq));
        let out = bench.advance(Duration::from_secs(1));
        assert!(out.is_empty(), "{out:?}");
    }
    bench.packet(9, Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq));
    let out = bench.advance(Duration::from_secs(1));
    assert!(out.contains(&Effect::Send(
        1,
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::KeepAliveTimeout))
    )));
    assert!(closed(&out, 1));
    assert_eq!(payloads(&out, 9), ["lost"]);
    assert_eq!(
        bench.core.next_deadline(),
        Some(bench.now + Duration::from_secs(14)),
        "only the watcher's keep-alive is left"
    );
}

#[test]
fn a_takeover_closes_the_old_connection_and_publishes_its_will_before_the_new_one_speaks() {
    // A half-open link: the agent reconnects while the broker still holds the old connection.
    let mut bench = Bench::new();
    bench.connect(9, "watcher");
    bench.subscribe(9, "state", qos1());
    let will = LastWill::new("state", "lost", qos1(), true, None);
    bench.connect_with(1, "agent", true, None, Some(will.clone()));
    bench.input(
        2,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let connect = Connect {
        keep_alive: 10,
        client_id: "agent".into(),
        clean_start: true,
        properties: None,
    };
    let out = bench.packet(2, Packet::Connect(connect, Some(will), None));
    assert_eq!(
        out[0],
        Effect::Send(
            1,
            Packet::Disconnect(Disconnect::new(DisconnectReasonCode::SessionTakenOver))
        )
    );
    assert_eq!(out[1], Effect::Close(1));
    assert_eq!(payloads(&out, 9), ["lost"]);
    assert!(matches!(
        out.last(),
        Some(Effect::Send(2, Packet::ConnAck(_)))
    ));
    let out = bench.publish(2, "state", "online", true, None);
    assert_eq!(payloads(&out, 9), ["online"]);
    // What the old connection still had in the pipe is ignored.
    let out = bench.publish(1, "state", "ghost", true, None);
    assert!(out.is_empty());
}

#[test]
fn a_delayed_will_is_cancelled_by_a_reconnect_in_time() {
    let will = || {
        LastWill::new(
            "state",
            "lost",
            qos1(),
            true,
            Some(LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        )
    };
    let mut bench = Bench::new();
    bench.connect(9, "watcher");
    bench.subscribe(9, "state", qos1());
    bench.connect_with(1, "agent", false, Some(60), Some(will()));
    assert!(payloads(&bench.input(1, Input::Closed), 9).is_empty());
    bench.advance(Duration::from_secs(3));
    bench.connect_with(2, "agent", false, Some(60), Some(will()));
    assert!(payloads(&bench.advance(Duration::from_secs(10)), 9).is_empty());
    bench.input(2, Input::Closed);
    let out = bench.advance(Duration::from_secs(5));
    assert_eq!(payloads(&out, 9), ["lost"]);
}

#[test]
fn a_persistent_session_keeps_qos1_messages_and_redelivers_unacknowledged_ones() {
    let mut bench = Bench::new();
    bench.connect_with(1, "alerter", false, Some(3600), None);
    bench.subscribe(1, "events", qos1());
    bench.connect(2, "agent");
    let out = bench.publish(2, "events", "one", false, None);
    let first = published(&out, 1);
    assert_eq!(first.len(), 1);
    bench.input(1, Input::Closed);
    bench.publish(2, "events", "two", false, None);
    bench.publish(2, "events", "three", false, None);

    let out = bench.open(3, "alerter", false, None, None);
    assert!(matches!(&out[0], Effect::Send(3, Packet::ConnAck(ack)) if ack.session_present));
    let again = published(&out, 3);
    assert_eq!(
        again.iter().map(|p| p.payload.clone()).collect::<Vec<_>>(),
        ["one", "two", "three"],
        "in order"
    );
    assert!(again[0].dup, "the unacknowledged one is a duplicate");
    assert_eq!(again[0].pkid, first[0].pkid);
    assert!(!again[1].dup);

    // The session expired 0 s after this connection: a clean start finds nothing.
    bench.packet(
        3,
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
    );
    bench.advance(Duration::from_secs(3601));
    let ack = bench.connect_with(4, "alerter", false, Some(10), None);
    assert!(!ack.session_present);
}

#[test]
fn a_kept_session_outlives_a_restart_of_the_broker_and_queues_from_its_first_message() {
    let mut before = Bench::new();
    before.connect_with(1, "alerter", false, Some(3600), None);
    before.subscribe(1, "respawn/v1/+/event", qos1());
    before.subscribe_with(
        1,
        SubscribeFilter::new("$share/alerts/respawn/v1/+/state", QoS::AtMostOnce),
    );
    before.connect(2, "respawnctl-status");
    before.subscribe(2, "respawn/v1/+/state", qos1());
    let kept = before.core.kept();
    assert_eq!(
        kept.iter().map(|k| k.client.as_str()).collect::<Vec<_>>(),
        ["alerter"],
        "a clean session is not kept"
    );
    assert_eq!(kept[0].subscriptions.len(), 2);
    // Through the file's form, as at the next start.
    let json = serde_json::to_vec(&kept).unwrap();
    let mut after = Bench::new();
    after
        .core
        .restore(serde_json::from_slice(&json).unwrap(), after.now, wall());
    assert_eq!(after.core.kept(), kept);
    after.connect(5, "door-pi");
    after.publish(
        5,
        "respawn/v1/door-pi/event",
        "crashed at boot",
        false,
        None,
    );
    let out = after.open(6, "alerter", false, Some(3600), None);
    assert!(matches!(&out[0], Effect::Send(6, Packet::ConnAck(ack)) if ack.session_present));
    assert_eq!(payloads(&out, 6), ["crashed at boot"]);
    // A client that does not come back within its expiry is forgotten as usual.
    let mut forgotten = Bench::new();
    forgotten.core.restore(kept, forgotten.now, wall());
    forgotten.advance(Duration::from_secs(3601));
    assert!(forgotten.core.kept().is_empty());
    // What does not read as a session is left out.
    let mut odd = Bench::new();
    let bad = |client: &str, filter: &str| kept::KeptSession {
        client: client.into(),
        expiry: 60,
        subscriptions: vec![kept::KeptSubscription {
            filter: filter.into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
        }],
        saved_at: None,
        queued: Vec::new(),
    };
    odd.core.restore(
        vec![bad("", "a"), bad("x", "a/#/b"), bad(&"y".repeat(300), "a")],
        odd.now,
        wall(),
    );
    let kept = odd.core.kept();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].subscriptions.is_empty(), "{kept:?}");
}

/// The wall clock of the tests that write and read kept queues.
fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

#[test]
fn what_waits_for_a_kept_session_outlives_a_stop_in_good_order() {
    let mut before = Bench::new();
    // One client away, one connected that has not acknowledged what it was sent.
    before.connect_with(1, "alerter", false, Some(3600), None);
    before.subscribe(1, "respawn/v1/+/event", qos1());
    before.input(1, Input::Closed);
    before.connect_with(2, "tail", false, Some(600), None);
    before.subscribe(2, "respawn/v1/+/event", qos1());
    before.connect(3, "door-pi");
    before.publish(3, "respawn/v1/door-pi/event", "crashed", false, None);
    before.publish(3, "respawn/v1/door-pi/event", "restarted", false, Some(60));
    before.publish(3, "respawn/v1/door-pi/event", "stale soon", false, Some(5));
    before.advance(Duration::from_secs(10));
    let kept = before.core.kept_with_queues(before.now, wall());
    let queued = |client: &str| -> Vec<kept::Payload> {
        let session = kept.iter().find(|k| k.client == client).unwrap();
        session.queued.iter().map(|m| m.payload.clone()).collect()
    };
    let text = |t: &str| kept::Payload::Text(t.into());
    assert_eq!(queued("alerter"), [text("crashed"), text("restarted")]);
    assert_eq!(queued("tail"), [text("crashed"), text("restarted")]);
    // Through the file's form, as at the next start, `down` later by the wall clock.
    let json = serde_json::to_vec(&kept).unwrap();
    let restarted = |down: i64| {
        let mut after = Bench::new();
        let wall = match down {
            0.. => wall() + Duration::from_secs(down as u64),
            _ => wall() - Duration::from_secs(down.unsigned_abs()),
        };
        (after.core).restore(serde_json::from_slice(&json).unwrap(), after.now, wall);
        after.advance(Duration::from_secs(5));
        let out = after.open(4, "alerter", false, Some(3600), None);
        let expiries: Vec<_> = published(&out, 4).iter().map(expiry_of).collect();
        (payloads(&out, 4), expiries, after)
    };
    let (payloads_30s, expiries, mut after) = restarted(30);
    assert_eq!(payloads_30s, ["crashed", "restarted"]);
    assert_eq!(expiries, [None, Some(15)], "50 s left, 30 s down, 5 s up");
    let out = after.open(5, "tail", false, Some(600), None);
    assert_eq!(payloads(&out, 5), ["crashed", "restarted"]);
    // A clock that went back (a Pi without a battery, before NTP) counts from the start.
    assert_eq!(restarted(-100).1, [None, Some(45)]);
    // What expired while the agent was down is not sent.
    assert_eq!(restarted(50).0, ["crashed"]);
}

#[test]
fn kept_queues_are_taken_back_once() {
    let mut bench = Bench::new();
    bench.connect_with(1, "alerter", false, Some(3600), None);
    bench.subscribe(1, "respawn/v1/+/event", qos1());
    bench.input(1, Input::Closed);
    bench.connect(2, "door-pi");
    bench.publish(2, "respawn/v1/door-pi/event", "crashed", false, None);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker-sessions.json");
    kept::save(&file, &bench.core.kept_with_queues(bench.now, wall()));
    let first = kept::take_back(&file);
    assert_eq!(first[0].queued.len(), 1);
    let second = kept::take_back(&file);
    assert!(second[0].queued.is_empty(), "{second:?}");
    assert_eq!(second[0].subscriptions, first[0].subscriptions);
}

#[test]
fn a_hand_edited_queue_loses_only_what_this_broker_would_not_send() {
    let message =
        |topic: &str| serde_json::json!({"topic": topic, "payload": "x", "retain": false});
    let file = serde_json::json!([{
        "client": "alerter", "expiry": 3600, "subscriptions": [], "saved_at": 1,
        "queued": [
            message("respawn/v1/a/event"),
            {"topic": "no payload"},
            message("a/+/wildcard"),
            message(&"t".repeat(70_000)),
            {"topic": "t", "payload": "x", "retain": false, "response_topic": "#"},
            {"topic": "t", "payload": [256], "retain": false},
            {"topic": "t", "payload": "y".repeat(300_000), "retain": false},
            message("respawn/v1/b/event"),
        ],
    }]);
    let kept: Vec<kept::KeptSession> = serde_json::from_value(file).unwrap();
    let mut bench = Bench::new();
    bench.core.restore(kept, bench.now, wall());
    let out = bench.open(1, "alerter", false, Some(3600), None);
    let topics: Vec<_> = published(&out, 1)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    assert_eq!(topics, ["respawn/v1/a/event", "respawn/v1/b/event"]);
}

#[test]
fn a_kept_payload_reads_as_text_when_it_is_and_as_bytes_otherwise() {
    for bytes in [&b"{\"kind\":\"exited\"}"[..], &[0xff, 0x00, 0x7f][..]] {
        let payload = kept::Payload::from(&bytes::Bytes::copy_from_slice(bytes));
        let json = serde_json::to_string(&payload).unwrap();
        let back: kept::Payload = serde_json::from_str(&json).unwrap();
        assert_eq!(bytes::Bytes::from(back), bytes, "{json}");
    }
    let text = kept::Payload::from(&bytes::Bytes::from_static(b"up"));
    assert_eq!(serde_json::to_string(&text).unwrap(), "\"up\"");
}

#[test]
fn a_clean_session_ends_with_its_connection() {
    let mut bench = Bench::new();
    bench.connect(1, "ctl");
    bench.subscribe(1, "reply", qos1());
    bench.input(1, Input::Closed);
    bench.connect(2, "agent");
    let out = bench.publish(2, "reply", "r", false, None);
    assert!(
        matches!(out.last(), Some(Effect::Send(2, Packet::PubAck(ack))) if ack.reason == PubAckReason::NoMatchingSubscribers)
    );
    let ack = bench.connect_with(3, "ctl", false, Some(10), None);
    assert!(!ack.session_present);
}

#[test]
fn qos1_deliveries_respect_the_clients_receive_maximum() {
    let mut bench = Bench::new();
    bench.input(
        1,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let mut properties = ConnectProperties::new();
    properties.receive_maximum = Some(2);
    let connect = Connect {
        keep_alive: 0,
        client_id: "slow".into(),
        clean_start: true,
        properties: Some(properties),
    };
    bench.packet(1, Packet::Connect(connect, None, None));
    bench.subscribe(1, "t", qos1());
    bench.connect(2, "pub");
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.extend(published(
            &bench.publish(2, "t", &n.to_string(), false, None),
            1,
        ));
    }
    assert_eq!(sent.len(), 2);
    let out = bench.packet(1, Packet::PubAck(PubAck::new(sent[0].pkid, None)));
    assert_eq!(payloads(&out, 1), ["2"]);
}

/// A client back with a smaller window or packet size gets what was in flight within them:
/// more, or larger, would be a protocol error that ends its connection again, and again.
#[test]
fn a_resumed_session_sends_again_within_what_the_client_asks_for_now() {
    let mut bench = Bench::new();
    bench.connect_with(1, "alerter", false, Some(3600), None);
    bench.subscribe(1, "t", qos1());
    bench.connect(2, "pub");
    for payload in ["one", &"x".repeat(200), "three", "four"] {
        bench.publish(2, "t", payload, false, None);
    }
    bench.input(1, Input::Closed);
    bench.input(
        3,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let mut properties = ConnectProperties::new();
    properties.session_expiry_interval = Some(3600);
    properties.receive_maximum = Some(2);
    properties.max_packet_size = Some(100);
    let connect = Connect {
        keep_alive: 0,
        client_id: "alerter".into(),
        clean_start: false,
        properties: Some(properties),
    };
    let out = bench.packet(3, Packet::Connect(connect, None, None));
    let again = published(&out, 3);
    assert_eq!(
        payloads(&out, 3),
        ["one", "three"],
        "the one too large for it is dropped, and the window is two"
    );
    assert!(again.iter().all(|p| p.dup));
    let out = bench.packet(3, Packet::PubAck(PubAck::new(again[0].pkid, None)));
    assert_eq!(payloads(&out, 3), ["four"], "then the rest, in turn");
}

#[test]
fn qos_is_the_lower_of_publish_and_subscription_and_never_two() {
    let mut bench = Bench::new();
    bench.connect(1, "sub0");
    bench.connect(2, "sub2");
    bench.subscribe(1, "t", QoS::AtMostOnce);
    let out = bench.subscribe(2, "t", QoS::ExactlyOnce);
    assert!(
        matches!(&out[0], Effect::Send(2, Packet::SubAck(ack)) if ack.return_codes == [SubscribeReasonCode::Success(QoS::AtLeastOnce)])
    );
    bench.connect(3, "pub");
    let out = bench.publish(3, "t", "x", false, None);
    assert_eq!(published(&out, 1)[0].qos, QoS::AtMostOnce);
    assert_eq!(published(&out, 2)[0].qos, QoS::AtLeastOnce);
    let mut publish = Publish::new("t", QoS::ExactlyOnce, "x", None);
    publish.pkid = 7;
    let out = bench.packet(3, Packet::Publish(publish));
    assert!(out.contains(&Effect::Send(
        3,
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::QoSNotSupported))
    )));
    assert!(closed(&out, 3));
}

#[test]
fn a_shared_subscription_gives_each_message_to_one_member_in_turn() {
    let mut bench = Bench::new();
    bench.connect(1, "alerter-a");
    bench.connect(2, "alerter-b");
    bench.subscribe(1, "$share/alerts/respawn/v1/+/event", qos1());
    bench.subscribe(2, "$share/alerts/respawn/v1/+/event", qos1());
    bench.connect(3, "agent");
    let mut counts = [0, 0];
    for _ in 0..10 {
        let out = bench.publish(3, "respawn/v1/a/event", "e", false, None);
        counts[0] += published(&out, 1).len();
        counts[1] += published(&out, 2).len();
    }
    assert_eq!(counts, [5, 5]);
    bench.input(2, Input::Closed);
    let out = bench.publish(3, "respawn/v1/a/event", "e", false, None);
    assert_eq!(published(&out, 1).len(), 1, "the one left gets everything");
}

#[test]
fn no_local_keeps_a_clients_own_messages_from_it() {
    let mut bench = Bench::new();
    bench.connect(1, "me");
    let mut filter = SubscribeFilter::new("t", qos1());
    filter.nolocal = true;
    bench.subscribe_with(1, filter);
    assert!(published(&bench.publish(1, "t", "x", false, None), 1).is_empty());
    bench.connect(2, "other");
    assert_eq!(
        published(&bench.publish(2, "t", "x", false, None), 1).len(),
        1
    );
}

#[test]
fn retain_handling_never_and_on_new_subscribe() {
    let mut bench = Bench::new();
    bench.connect(1, "agent");
    bench.publish(1, "cmd", "retained command", true, None);
    bench.connect(2, "reader");
    let mut never = SubscribeFilter::new("cmd", qos1());
    never.retain_forward_rule = RetainForwardRule::Never;
    assert!(published(&bench.subscribe_with(2, never), 2).is_empty());
    let mut new_only = SubscribeFilter::new("+", qos1());
    new_only.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    assert_eq!(
        published(&bench.subscribe_with(2, new_only.clone()), 2).len(),
        1
    );
    assert!(
        published(&bench.subscribe_with(2, new_only), 2).is_empty(),
        "not again"
    );
}

#[test]
fn bad_input_is_refused_with_a_reason_and_never_kept() {
    let mut bench = Bench::new();
    bench.connect(1, "c");
    let out = bench.packet(
        1,
        Packet::Subscribe(Subscribe::new(SubscribeFilter::new("a/#/b", qos1()), None)),
    );
    assert!(
        matches!(&out[0], Effect::Send(1, Packet::SubAck(ack)) if ack.return_codes == [SubscribeReasonCode::TopicFilterInvalid])
    );
    let out = bench.publish(1, "a/+", "x", false, None);
    assert!(out.contains(&Effect::Send(
        1,
        Packet::Disconnect(Disconnect::new(DisconnectReasonCode::TopicNameInvalid))
    )));
    assert!(closed(&out, 1));

    // A client that does not start with CONNECT is closed; one that says MQTT 3 is told.
    bench.input(
        2,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let out = bench.packet(2, Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq));
    assert_eq!(out, [Effect::Close(2)]);
    bench.input(
        3,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let out = bench.input(3, Input::Malformed(Malformed::OldProtocol));
    assert_eq!(out, [Effect::RefuseProtocol(3), Effect::Close(3)]);
    // One that never sends CONNECT is closed after the connect timeout.
    bench.input(
        4,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let out = bench.advance(Duration::from_secs(11));
    assert!(closed(&out, 4));
    // An empty client id with a persistent session is invalid.
    let out = bench.open(5, "", false, None, None);
    assert!(
        matches!(&out[0], Effect::Send(5, Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::ClientIdentifierNotValid)
    );
}

#[test]
fn an_empty_client_id_is_given_one() {
    let mut bench = Bench::new();
    let a = bench.connect(1, "");
    let b = bench.connect(2, "");
    let (a, b) = (
        a.properties.unwrap().assigned_client_identifier.unwrap(),
        b.properties.unwrap().assigned_client_identifier.unwrap(),
    );
    assert_ne!(a, b);
}

#[test]
fn retained_storage_and_queues_are_bounded() {
    let limits = Limits {
        max_retained: 2,
        max_queued: 3,
        ..Limits::default()
    };
    let mut bench = Bench::with(limits);
    bench.connect(1, "p");
    for topic in ["a", "b"] {
        let out = bench.publish(1, topic, "x", true, None);
        assert!(
            matches!(out.last(), Some(Effect::Send(1, Packet::PubAck(ack))) if ack.reason == PubAckReason::NoMatchingSubscribers)
        );
    }
    let out = bench.publish(1, "c", "x", true, None);
    assert!(
        matches!(out.last(), Some(Effect::Send(1, Packet::PubAck(ack))) if ack.reason == PubAckReason::QuotaExceeded)
    );
    let out = bench.publish(1, "a", "replaced", true, None);
    assert!(
        matches!(out.last(), Some(Effect::Send(1, Packet::PubAck(ack))) if ack.reason != PubAckReason::QuotaExceeded)
    );

    bench.connect_with(2, "away", false, Some(600), None);
    bench.subscribe(2, "q", qos1());
    bench.input(2, Input::Closed);
    for n in 0..10 {
        bench.publish(1, "q", &n.to_string(), false, None);
    }
    let out = bench.open(3, "away", false, None, None);
    assert_eq!(payloads(&out, 3), ["0", "1", "2"]);
}

/// Other machines fill the retained store up to the room kept for this machine, where the
/// agent's own states, and its will, still go in.
#[test]
fn other_machines_leave_the_agent_room_for_its_retained_states() {
    let limits = Limits {
        max_retained: 5,
        max_retained_bytes: 1000,
        kept_for_this_machine: (2, 400),
        ..Limits::default()
    };
    let mut bench = Bench::with(limits);
    let accepted = |out: &[Effect], conn: ConnId| {
        let acks: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send(c, Packet::PubAck(ack)) if *c == conn => Some(ack.reason),
                _ => None,
            })
            .collect();
        assert_eq!(acks.len(), 1, "{out:?}");
        acks[0] != PubAckReason::QuotaExceeded
    };
    bench.from_this_machine = false;
    bench.connect(1, "filler");
    let big = "x".repeat(250);
    assert!(accepted(&bench.publish(1, "junk/1", &big, true, None), 1));
    assert!(accepted(&bench.publish(1, "junk/2", &big, true, None), 1));
    assert!(
        !accepted(&bench.publish(1, "junk/3", &big, true, None), 1),
        "past the 600 bytes other machines may fill"
    );
    assert!(accepted(&bench.publish(1, "junk/3", "x", true, None), 1));
    assert!(
        !accepted(&bench.publish(1, "junk/4", "x", true, None), 1),
        "past the 3 messages other machines may keep"
    );

    bench.from_this_machine = true;
    let will = LastWill::new("respawn/v1/pi/state", "lost", qos1(), true, None);
    bench.connect_with(2, "respawn-agent-pi", true, None, Some(will));
    assert!(accepted(
        &bench.publish(2, "respawn/v1/pi/p/web", &big, true, None),
        2
    ));
    assert!(
        !accepted(&bench.publish(2, "respawn/v1/pi/p/db", &big, true, None), 2),
        "the whole store is bounded all the same"
    );
    bench.input(2, Input::Closed);
    bench.connect(3, "reader");
    let out = bench.subscribe(3, "respawn/v1/pi/#", qos1());
    assert_eq!(payloads(&out, 3), [big, "lost".to_owned()]);
}

/// Clients that come with new ids and ask to be kept forever fill the sessions the broker
/// keeps; the next client is still let in, in the place of the one away longest.
#[test]
fn a_new_client_takes_the_place_of_the_session_away_longest() {
    let limits = Limits {
        max_sessions: 3,
        ..Limits::default()
    };
    let mut bench = Bench::with(limits);
    for (conn, client) in [(1, "kept-1"), (2, "kept-2"), (3, "kept-3")] {
        bench.connect_with(conn, client, false, Some(u32::MAX), None);
        bench.input(conn, Input::Closed);
        bench.advance(Duration::from_secs(1));
    }
    let agent = bench.connect(4, "respawn-agent-door-pi");
    assert_eq!(agent.code, ConnectReturnCode::Success);
    let kept: Vec<&String> = bench.core.sessions.keys().collect();
    assert_eq!(kept, ["kept-2", "kept-3", "respawn-agent-door-pi"]);
    // Those connected stay: with every session in use, the next is refused.
    bench.connect(5, "five");
    bench.connect(6, "six");
    let refused = bench.connect(7, "seven");
    assert_eq!(refused.code, ConnectReturnCode::QuotaExceeded);
}

#[test]
fn long_filters_and_properties_count_against_the_bounds() {
    let limits = Limits {
        max_retained_bytes: 1000,
        ..Limits::default()
    };
    let mut bench = Bench::with(limits);
    bench.connect(1, "p");
    let out = bench.packet(
        1,
        Packet::Subscribe(Subscribe::new_many(
            [
                SubscribeFilter::new("a/".repeat(600), qos1()),
                // Short, but of more levels than a publish is matched against.
                SubscribeFilter::new("+/".repeat(64) + "x", qos1()),
                SubscribeFilter::new("+/".repeat(63) + "x", qos1()),
            ],
            None,
        )),
    );
    assert!(
        matches!(out.first(), Some(Effect::Send(1, Packet::SubAck(ack))) if ack.return_codes == [SubscribeReasonCode::QuotaExceeded, SubscribeReasonCode::QuotaExceeded, SubscribeReasonCode::Success(qos1())]),
        "{out:?}"
    );
    // Empty user properties take room all the same.
    let mut publish = Publish::new("t", qos1(), b"x".to_vec(), None);
    publish.pkid = 1;
    publish.retain = true;
    publish.properties = Some(PublishProperties {
        user_properties: vec![(String::new(), String::new()); 100],
        ..Default::default()
    });
    let out = bench.packet(1, Packet::Publish(publish));
    assert!(
        matches!(out.last(), Some(Effect::Send(1, Packet::PubAck(ack))) if ack.reason == PubAckReason::QuotaExceeded),
        "{out:?}"
    );
    // A one-byte payload with 2 KB of user properties is a 2 KB retained message.
    let mut publish = Publish::new("t", qos1(), b"x".to_vec(), None);
    publish.pkid = 1;
    publish.retain = true;
    publish.properties = Some(PublishProperties {
        user_properties: vec![("k".into(), "v".repeat(2000))],
        ..Default::default()
    });
    let out = bench.packet(1, Packet::Publish(publish));
    assert!(
        matches!(out.last(), Some(Effect::Send(1, Packet::PubAck(ack))) if ack.reason == PubAckReason::QuotaExceeded),
        "{out:?}"
    );
}

/// A SUBSCRIBE whose filters overlap gets each retained message once.
#[test]
fn a_subscribe_that_repeats_a_filter_gets_each_retained_message_once() {
    let mut bench = Bench::new();
    bench.connect(1, "p");
    for i in 0..3 {
        bench.publish(1, &format!("b/{i}"), "v", true, None);
    }
    bench.connect(2, "reader");
    let mut filters = vec![SubscribeFilter::new("b/#", qos1()); 100];
    filters.push(SubscribeFilter::new("+/1", qos1()));
    let out = bench.packet(2, Packet::Subscribe(Subscribe::new_many(filters, None)));
    let mut topics: Vec<String> = published(&out, 2)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    topics.sort();
    assert_eq!(topics, ["b/0", "b/1", "b/2"]);
}

/// Subscription Identifiers are not available (CONNACK says so): a SUBSCRIBE that gives one
/// subscribes to nothing, and says why.
#[test]
fn a_subscription_identifier_is_refused() {
    let mut bench = Bench::new();
    bench.connect(1, "p");
    let properties = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
        id: Some(7),
        user_properties: Vec::new(),
    };
    let out = bench.packet(
        1,
        Packet::Subscribe(Subscribe::new(
            SubscribeFilter::new("a/#", qos1()),
            Some(properties),
        )),
    );
    assert!(
        matches!(out.first(), Some(Effect::Send(1, Packet::SubAck(ack))) if ack.return_codes == [SubscribeReasonCode::SubscriptionIdNotSupported]),
        "{out:?}"
    );
    bench.connect(2, "q");
    let out = bench.publish(2, "a/b", "x", false, None);
    assert!(published(&out, 1).is_empty(), "{out:?}");
}

/// A kept message holds its own payload, not the buffer its packet was read into.
#[test]
fn a_retained_payload_is_its_own() {
    let mut bench = Bench::new();
    bench.connect(1, "p");
    let buffer = bytes::Bytes::from(vec![b'x'; 100_000]);
    let mut publish = Publish::new("t", qos1(), buffer.slice(..1), None);
    publish.pkid = 1;
    publish.retain = true;
    bench.packet(1, Packet::Publish(publish));
    let kept = bench.core.retained.get("t").expect("retained");
    assert!(
        kept.payload.is_unique(),
        "the read buffer is kept behind it"
    );
}

#[test]
fn the_turns_of_a_shared_subscription_go_with_its_last_member() {
    let mut bench = Bench::new();
    bench.connect(1, "member");
    bench.connect(2, "pub");
    for group in 0..3 {
        let filter = format!("$share/g{group}/t");
        bench.subscribe(1, &filter, qos1());
        bench.publish(2, "t", "x", false, None);
        let unsubscribe = Unsubscribe::new(filter, None);
        bench.packet(1, Packet::Unsubscribe(unsubscribe));
    }
    assert!(
        bench.core.shared_turns.is_empty(),
        "{:?}",
        bench.core.shared_turns
    );
    bench.subscribe(1, "$share/kept/t", qos1());
    bench.connect_with(3, "other", false, Some(60), None);
    bench.subscribe(3, "$share/kept/t", qos1());
    bench.publish(2, "t", "x", false, None);
    bench.input(1, Input::Closed);
    assert_eq!(bench.core.shared_turns.len(), 1, "another member holds it");
    bench.input(3, Input::Closed);
    assert_eq!(bench.core.shared_turns.len(), 1, "kept with its session");
    bench.connect(4, "other");
    assert!(
        bench.core.shared_turns.is_empty(),
        "its last member started afresh"
    );
}

/// Sessions away hold what they are sent within their own bytes and the broker's, and give
/// back what their client takes: an alerter away for long cannot take the Pi's memory.
#[test]
fn queued_bytes_are_bounded_per_session_and_for_all() {
    // Each message holds 5 bytes ("q" and 4) and what keeping it costs: two fit a session,
    // three all of them.
    let one = 5 + DELIVERY_OVERHEAD;
    let limits = Limits {
        max_session_bytes: 2 * one,
        max_held_bytes: 3 * one,
        ..Limits::default()
    };
    let mut bench = Bench::with(limits);
    for (conn, client) in [(1, "a"), (2, "b")] {
        bench.connect_with(conn, client, false, Some(600), None);
        bench.subscribe(conn, "q", qos1());
        bench.input(conn, Input::Closed);
    }
    bench.connect(3, "pub");
    for n in 0..3 {
        bench.publish(3, "q", &format!("msg{n}"), false, None);
    }
    assert_eq!(bench.core.held_bytes, 3 * one);
    let (a, b) = (&bench.core.sessions["a"], &bench.core.sessions["b"]);
    assert_eq!((a.queue.len(), a.dropped), (2, 1), "a: its own bound");
    assert_eq!((b.queue.len(), b.dropped), (1, 2), "b: the broker's");

    let out = bench.open(4, "a", false, Some(600), None);
    assert_eq!(payloads(&out, 4), ["msg0", "msg1"]);
    for publish in published(&out, 4) {
        bench.packet(4, Packet::PubAck(PubAck::new(publish.pkid, None)));
    }
    assert_eq!(bench.core.held_bytes, one, "what a took is given back");
    bench.publish(3, "q", "msg3", false, None);
    assert_eq!(
        bench.core.held_bytes,
        3 * one,
        "in flight to a, queued for b"
    );
    assert_eq!(bench.core.sessions["b"].queue.len(), 2);
    bench.connect(5, "b");
    assert_eq!(
        bench.core.held_bytes, one,
        "b started afresh: what it held is gone"
    );

    // With room in the broker, a session's own bound holds alone.
    let mut bench = Bench::with(Limits {
        max_session_bytes: 2 * one,
        ..Limits::default()
    });
    bench.connect_with(1, "a", false, Some(600), None);
    bench.subscribe(1, "q", qos1());
    bench.input(1, Input::Closed);
    bench.connect(2, "pub");
    for n in 0..3 {
        bench.publish(2, "q", &format!("msg{n}"), false, None);
    }
    let a = &bench.core.sessions["a"];
    assert_eq!((a.queue.len(), a.dropped, a.held), (2, 1, 2 * one));
}

#[test]
fn an_idle_broker_has_nothing_to_wake_up_for() {
    let mut bench = Bench::new();
    assert_eq!(bench.core.next_deadline(), None);
    bench.connect(1, "forever");
    assert_eq!(bench.core.next_deadline(), None);
}

/// The agent's own client id is kept for its link, which gives the password the agent made
/// at its start: another client cannot take the agent's session over (found by a
/// hostile-input review: five connections a second apart made the agent flap `lost`).
#[test]
fn the_agents_own_client_id_takes_only_its_password() {
    let mut bench = Bench::new();
    let own = OwnLogin::new("door-pi");
    bench.core.reserve(own.clone());
    let connect = |id: &str| Connect {
        keep_alive: 0,
        client_id: id.into(),
        clean_start: true,
        properties: None,
    };
    let login = |password: &str| Login {
        username: OwnLogin::USERNAME.into(),
        password: password.into(),
    };
    let connack = |out: &[Effect]| match out.first() {
        Some(Effect::Send(_, Packet::ConnAck(ack))) => ack.code,
        other => panic!("no CONNACK: {other:?}"),
    };
    let login_with = |bench: &mut Bench, conn, id: &str, login: Option<Login>| {
        bench.input(
            conn,
            Input::Opened {
                from_this_machine: true,
            },
        );
        connack(&bench.packet(conn, Packet::Connect(connect(id), None, login)))
    };
    let agent = &own.client_id;
    assert_eq!(
        login_with(&mut bench, 1, agent, Some(login(&own.password))),
        ConnectReturnCode::Success
    );
    for (conn, wrong) in [(2, None), (3, Some(login(""))), (4, Some(login("guess")))] {
        assert_eq!(
            login_with(&mut bench, conn, agent, wrong),
            ConnectReturnCode::NotAuthorized
        );
    }
    assert_eq!(bench.core.connected(), [1], "the agent's connection stays");
    // Any other id connects as before, with or without a login.
    assert_eq!(
        login_with(&mut bench, 5, "respawnctl-x", None),
        ConnectReturnCode::Success
    );
}

/// The subscriptions of all sessions together are bounded, as their queues are: kept sessions
/// that each hold their 256 longest filters would take hundreds of megabytes (found by a
/// hostile-input review). What leaves, by unsubscribe or with its session, frees its room;
/// the agent's own link always has room.
#[test]
fn the_subscriptions_of_all_sessions_together_are_bounded() {
    let filter = |n: usize| format!("{n:0>200}");
    let cost = subscription_cost(&filter(0));
    let mut bench = Bench::with(Limits {
        max_subscription_bytes: 3 * cost,
        ..Limits::default()
    });
    let codes = |out: &[Effect]| match out.first() {
        Some(Effect::Send(_, Packet::SubAck(ack))) => ack.return_codes.clone(),
        other => panic!("no SUBACK: {other:?}"),
    };
    let granted = [SubscribeReasonCode::Success(qos1())];
    let refused = [SubscribeReasonCode::QuotaExceeded];
    bench.connect_with(1, "kept-1", false, Some(u32::MAX), None);
    bench.connect_with(2, "kept-2", false, Some(u32::MAX), None);
    for n in 0..2 {
        assert_eq!(codes(&bench.subscribe(1, &filter(n), qos1())), granted);
    }
    assert_eq!(codes(&bench.subscribe(2, &filter(2), qos1())), granted);
    assert_eq!(codes(&bench.subscribe(2, &filter(3), qos1())), refused);
    // A filter given again takes no more room.
    assert_eq!(codes(&bench.subscribe(2, &filter(2), qos1())), granted);
    // Room freed by an unsubscribe, and by a session that ends.
    bench.packet(1, Packet::Unsubscribe(Unsubscribe::new(filter(0), None)));
    assert_eq!(codes(&bench.subscribe(2, &filter(3), qos1())), granted);
    assert_eq!(codes(&bench.subscribe(2, &filter(4), qos1())), refused);
    bench.input(1, Input::Closed);
    bench.connect_with(4, "kept-1", true, None, None);
    assert_eq!(codes(&bench.subscribe(2, &filter(4), qos1())), granted);
    assert_eq!(codes(&bench.subscribe(2, &filter(5), qos1())), refused);
    // The agent's own link is never refused for want of room.
    let own = OwnLogin::new("door-pi");
    bench.core.reserve(own.clone());
    bench.input(
        5,
        Input::Opened {
            from_this_machine: true,
        },
    );
    let connect = Connect {
        keep_alive: 0,
        client_id: own.client_id.clone(),
        clean_start: true,
        properties: None,
    };
    let login = Login {
        username: OwnLogin::USERNAME.into(),
        password: own.password.clone(),
    };
    bench.packet(5, Packet::Connect(connect, None, Some(login)));
    assert_eq!(
        codes(&bench.subscribe(5, "respawn/v1/door-pi/cmd", qos1())),
        granted
    );
    // Sessions away give way, the one away longest first, to a client that is here: whoever
    // came before cannot lock out those that come now (found by a review: nine kept sessions
    // locked respawnctl out, across restarts).
    bench.input(2, Input::Closed);
    bench.advance(Duration::from_secs(1));
    bench.connect(6, "respawnctl");
    assert_eq!(codes(&bench.subscribe(6, &filter(6), qos1())), granted);
    assert!(
        !bench.core.sessions.contains_key("kept-2"),
        "kept-2 gave way"
    );
    assert!(
        bench.core.sessions.contains_key("kept-1"),
        "connected, kept-1 stays"
    );
    // What a file brings back is held to the room too, and a client named twice is one.
    let mut before = Bench::new();
    for (conn, client) in [(1, "a"), (2, "b")] {
        before.connect_with(conn, client, false, Some(u32::MAX), None);
        for n in 0..2 {
            before.subscribe(conn, &filter(n), qos1());
        }
    }
    let mut kept = before.core.kept();
    kept.push(kept[0].clone());
    let mut restored = Bench::with(Limits {
        max_subscription_bytes: 2 * cost,
        ..Limits::default()
    });
    restored.core.restore(kept, restored.now, wall());
    assert!(restored.core.subscription_bytes <= 2 * cost);
    let held: usize = (restored.core.sessions.values())
        .flat_map(|s| s.subscriptions.keys())
        .map(|f| subscription_cost(f))
        .sum();
    assert_eq!(restored.core.subscription_bytes, held, "counted as held");
    assert_eq!(
        held,
        2 * cost,
        "the room filled, a's second session in place of its first"
    );
}
