//! The broker ACL of docs/security.md (examples/mosquitto/respawn.acl) on a real Mosquitto
//! with client certificates as identities: a device writes only under its own topic tree and
//! reads only its own commands, while agents and respawnctl work normally under it.

use respawn_tests::broker::Broker;
use respawn_tests::mqtt::Observer;
use respawn_tests::pki::Pki;
use respawn_tests::{wait_for, TestAgent, TIMEOUT};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;

const DOORBOT: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";

#[test]
fn a_device_writes_only_its_own_tree_and_reads_only_its_own_commands() {
    let pki = Pki::new(&["alpha", "bravo", "op-alice"]);
    let broker = Broker::start_tls(&(pki.mosquitto_tls() + &Pki::example_acl()));
    let bravo = TestAgent::start_as(
        "bravo",
        &(pki.mqtt_section(&broker.url(), "bravo") + DOORBOT),
    );
    let pid = bravo.wait_running("doorbot");
    wait_for("bravo online under the ACL", TIMEOUT, || {
        let out = pki.respawnctl(&broker, "op-alice", &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (json["agents"][0]["liveness"] == "online").then_some(())
    });

    // Alpha is a stolen device: its certificate is all the thief has.
    // Mosquitto grants any subscription and checks the read rules on every delivery, so what
    // matters is what arrives, checked below.
    let alpha = Observer::connect_tls(
        &broker,
        &pki,
        "alpha",
        &["respawn/v1/+/cmd", "respawn/v1/bravo/cmd"],
    );
    for topic in [
        "respawn/v1/bravo/state",
        "respawn/v1/bravo/proc/doorbot",
        "respawn/v1/bravo/cmd",
        "respawn/v1/op-alice/reply/x",
    ] {
        assert_eq!(
            alpha.publish_acknowledged(topic, br#"{"forged":true}"#, true),
            PubAckReason::NotAuthorized,
            "{topic}"
        );
    }
    assert_eq!(
        alpha.subscribe("respawn/v1/alpha/cmd"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "its own commands"
    );

    // The operator's command reaches bravo, and only bravo.
    let out = pki.respawnctl(&broker, "op-alice", &["restart", "bravo/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("restarted bravo/doorbot pid {pid} → ")),
        "{out:?}"
    );
    // Mosquitto delivers in the order it handles publishes: once alpha's own marker is in,
    // bravo's command would have been too, had the ACL let it through.
    assert_eq!(
        alpha.publish_acknowledged("respawn/v1/alpha/cmd", b"marker", false),
        PubAckReason::Success
    );
    let seen = alpha.wait("alpha's own marker", |messages| {
        messages
            .iter()
            .any(|m| m.topic == "respawn/v1/alpha/cmd")
            .then(|| messages.to_vec())
    });
    let leaked: Vec<_> = seen.iter().filter(|m| m.topic.contains("bravo")).collect();
    assert!(leaked.is_empty(), "alpha read {leaked:?}");

    // Nothing alpha tried to forge stuck: bravo's retained state is still bravo's own.
    let out = pki.respawnctl(&broker, "op-alice", &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    assert_eq!(json["agents"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json["agents"][0]["agent"], "bravo", "{json}");
    assert_eq!(json["agents"][0]["liveness"], "online", "{json}");
    assert_eq!(
        json["agents"][0]["processes"][0]["state"], "running",
        "{json}"
    );

    // respawnctl with a device's certificate: the ACL refuses it the marker topic (a QoS 0
    // publish refused without a word), and it says where to look rather than "no answer".
    let out = pki.respawnctl(&broker, "alpha", &["status"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("never delivered respawnctl's own marker on respawn/v1/_sync/")
            && out.stderr.contains("ACL"),
        "{out:?}"
    );
}
