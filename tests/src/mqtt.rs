//! An independent MQTT client for tests: it watches topics, takes retained snapshots, and sends
//! commands the way any third party would — with plain JSON, not with the agent's code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use respawn_common::messages::CommandReply;
use respawn_common::mqtt::{tls_config, TlsFiles};
use respawn_common::signing::SigningKey;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

use crate::broker::Broker;
use crate::pki::Pki;
use crate::{wait_for, wait_for_or, TIMEOUT};

/// A message as a subscriber saw it.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub properties: Option<PublishProperties>,
    /// When the subscriber got it.
    pub received: std::time::Instant,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct Seen {
    messages: Vec<Message>,
    subscribed: usize,
    suback_codes: Vec<SubscribeReasonCode>,
    puback_reasons: Vec<PubAckReason>,
    connected: bool,
}

/// A connected client that records what it receives.
pub struct Observer {
    client: Client,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    /// Connects with a clean session and subscribes to `filters` (QoS 1).
    pub fn connect(broker: &Broker, filters: &[&str]) -> Self {
        Self::open(broker, filters, None, None)
    }

    /// Connects over TLS with `pki`'s client certificate `name` (so the broker sees `name` as
    /// the username) and subscribes to `filters`.
    pub fn connect_tls(broker: &Broker, pki: &Pki, name: &str, filters: &[&str]) -> Self {
        let files = TlsFiles {
            ca_file: Some(pki.path("ca.pem")),
            cert_file: Some(pki.path(&format!("{name}.pem"))),
            key_file: Some(pki.path(&format!("{name}.key"))),
        };
        let config = tls_config(&files).expect("the test PKI makes a TLS configuration");
        let transport =
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config));
        Self::open(broker, filters, None, Some(transport))
    }

    /// Connects with a session the broker keeps for an hour under `client_id`, so that QoS 1
    /// messages published while this client is away reach it afterwards.
    pub fn connect_persistent(broker: &Broker, client_id: &str, filters: &[&str]) -> Self {
        Self::open(broker, filters, Some(client_id), None)
    }

    fn open(
        broker: &Broker,
        filters: &[&str],
        persistent: Option<&str>,
        transport: Option<rumqttc::Transport>,
    ) -> Self {
        let id = persistent
            .map(str::to_owned)
            .unwrap_or_else(|| format!("test-{}", uuid::Uuid::new_v4().simple()));
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port());
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        if let Some(transport) = transport {
            options.set_transport(transport);
        }
        if persistent.is_some() {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(3600));
        }
        let (client, mut connection) = Client::new(options, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => seen.messages.push(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            properties: p.properties,
                            received: std::time::Instant::now(),
                        }),
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            seen.subscribed += 1;
                            seen.suback_codes.extend(ack.return_codes);
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            seen.puback_reasons.push(ack.reason)
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => seen.connected = true,
                        Ok(_) => {}
                        Err(_) => {
                            seen.connected = false;
                            drop(seen);
                            // The broker may be down on purpose; retry calmly.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
        };
        let observer = Self {
            client,
            seen,
            stop,
            thread: Some(thread),
        };
        for filter in filters {
            observer
                .client
                .subscribe(*filter, QoS::AtLeastOnce)
                .expect("subscribe");
        }
        let wanted = filters.len();
        wait_for("the subscriptions to be acknowledged", TIMEOUT, || {
            (observer.lock().subscribed >= wanted).then_some(())
        });
        observer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// Messages on exactly `topic`.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Waits until `check` finds what it looks for in the messages received so far.
    pub fn wait<T>(&self, what: &str, check: impl Fn(&[Message]) -> Option<T>) -> T {
        wait_for_or(
            what,
            TIMEOUT,
            || check(&self.lock().messages),
            || {
                let topics: Vec<String> = self
                    .messages()
                    .iter()
                    .map(|m| format!("{} {}", m.topic, String::from_utf8_lossy(&m.payload)))
                    .collect();
                format!("received:\n{}", topics.join("\n"))
            },
        )
    }

    /// Waits for a message that parses as `T` (JSON) and satisfies `check`, and returns it.
    pub fn wait_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        check: impl Fn(&T) -> bool,
    ) -> T {
        self.wait(what, |messages| {
            messages
                .iter()
                .filter_map(|m| serde_json::from_slice::<T>(&m.payload).ok())
                .find(|parsed| check(parsed))
        })
    }

    /// Waits until the client is connected (again).
    pub fn wait_connected(&self) {
        wait_for("the observer to connect", TIMEOUT, || {
            self.lock().connected.then_some(())
        });
    }

    /// Subscribes to `filter` and returns the broker's answer to it.
    pub fn subscribe(&self, filter: &str) -> SubscribeReasonCode {
        let before = self.lock().suback_codes.len();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("subscribe");
        wait_for("the broker to answer a subscription", TIMEOUT, || {
            self.lock().suback_codes.get(before).cloned()
        })
    }

    /// Publishes at QoS 1 and returns the broker's acknowledgement. Only for a client that
    /// has nothing else in flight: acknowledgements are matched by order.
    pub fn publish_acknowledged(&self, topic: &str, payload: &[u8], retain: bool) -> PubAckReason {
        let before = self.lock().puback_reasons.len();
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .expect("publish");
        wait_for("the broker to acknowledge a publish", TIMEOUT, || {
            self.lock().puback_reasons.get(before).cloned()
        })
    }

    /// Publishes a retained message (QoS 1), as an agent would.
    pub fn publish_retained(
        &self,
        topic: &str,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) {
        match properties {
            Some(p) => {
                self.client
                    .publish_with_properties(topic, QoS::AtLeastOnce, true, payload, p)
            }
            None => self.client.publish(topic, QoS::AtLeastOnce, true, payload),
        }
        .expect("publish");
    }

    pub fn publish(&self, topic: &str, payload: Vec<u8>, properties: Option<PublishProperties>) {
        match properties {
            Some(p) => {
                self.client
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, p)
            }
            None => self.client.publish(topic, QoS::AtLeastOnce, false, payload),
        }
        .expect("publish");
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The retained messages under `filter`, as a subscriber that arrives now sees them. The broker
/// sends retained messages first, so a marker published after subscribing arrives after all of
/// them — no waiting for an arbitrary time.
pub fn retained(broker: &Broker, filter: &str) -> Vec<Message> {
    let marker = format!("test/marker/{}", uuid::Uuid::new_v4().simple());
    let observer = Observer::connect(broker, &[filter, &marker]);
    observer.publish(&marker, b"end".to_vec(), None);
    let messages = observer.wait("the end of the retained snapshot", |messages| {
        messages
            .iter()
            .position(|m| m.topic == marker)
            .map(|end| messages[..end].to_vec())
    });
    messages.into_iter().filter(|m| m.retain).collect()
}

/// The session of `agent`'s birth message, once it is online.
pub fn online_session(broker: &Broker, agent: &str) -> String {
    crate::wait_for(&format!("{agent} online"), crate::TIMEOUT, || {
        let state = retained(broker, &format!("respawn/v1/{agent}/state"));
        let birth = state.first()?.json();
        (birth["state"] == "online").then(|| birth["session"].as_str().map(str::to_owned))?
    })
}

/// Sends commands to one agent as requester `requester` and collects the replies.
pub struct Commander {
    observer: Observer,
    agent: String,
    requester: String,
}

impl Commander {
    pub fn new(broker: &Broker, agent: &str) -> Self {
        let requester = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let observer =
            Observer::connect(broker, &[&format!("respawn/v1/{agent}/reply/{requester}")]);
        Self {
            observer,
            agent: agent.to_owned(),
            requester,
        }
    }

    pub fn requester(&self) -> &str {
        &self.requester
    }

    /// A command body with a fresh id that expires in a minute.
    pub fn body(&self, command: &str, process: Option<&str>) -> serde_json::Value {
        let expires = SystemTime::now() + Duration::from_secs(60);
        let mut body = serde_json::json!({
            "cmd_id": uuid::Uuid::new_v4().to_string(),
            "agent": self.agent,
            "requester": self.requester,
            "command": command,
            "expires_at": humantime::format_rfc3339_millis(expires).to_string(),
        });
        if let Some(p) = process {
            body["process"] = p.into();
        }
        body
    }

    /// Publishes raw bytes on the agent's command topic, with correlation data.
    pub fn send_raw(&self, payload: Vec<u8>, correlation: &[u8]) {
        let properties = PublishProperties {
            correlation_data: Some(correlation.to_vec().into()),
            response_topic: Some(format!(
                "respawn/v1/{}/reply/{}",
                self.agent, self.requester
            )),
            ..Default::default()
        };
        self.observer.publish(
            &format!("respawn/v1/{}/cmd", self.agent),
            payload,
            Some(properties),
        );
    }

    /// Sends `body` in an unsigned envelope and waits for its final reply; returns every reply
    /// to it.
    pub fn send(&self, body: &serde_json::Value) -> Vec<CommandReply> {
        self.send_envelope(body, envelope(body, None))
    }

    /// Sends `body` signed with `key` and waits for its final reply.
    pub fn send_signed(&self, body: &serde_json::Value, key: &SigningKey) -> Vec<CommandReply> {
        self.send_envelope(body, envelope(body, Some(key)))
    }

    /// Sends `envelope`, the bytes of a command whose body is `body`, and waits for the next
    /// final reply to it.
    pub fn send_envelope(&self, body: &serde_json::Value, envelope: Vec<u8>) -> Vec<CommandReply> {
        let cmd_id = body["cmd_id"].as_str().unwrap_or_default().to_owned();
        let finals = self.final_replies(&cmd_id);
        self.send_raw(envelope, cmd_id.as_bytes());
        self.wait_final(&cmd_id, finals + 1)
    }

    fn final_replies(&self, cmd_id: &str) -> usize {
        replies_to(&self.observer.messages(), cmd_id)
            .iter()
            .filter(|r| r.status.is_final())
            .count()
    }

    /// Waits until `count` final replies to `cmd_id` have arrived; returns all its replies.
    pub fn wait_final(&self, cmd_id: &str, count: usize) -> Vec<CommandReply> {
        self.observer
            .wait(&format!("{count} final replies to {cmd_id}"), |messages| {
                let replies = replies_to(messages, cmd_id);
                let finals = replies.iter().filter(|r| r.status.is_final()).count();
                (finals >= count).then_some(replies)
            })
    }

    /// Every reply received so far, to any command, with the correlation data it carried.
    pub fn all_replies(&self) -> Vec<(CommandReply, Option<Vec<u8>>)> {
        self.observer
            .messages()
            .iter()
            .filter_map(|m| {
                let reply = serde_json::from_slice::<CommandReply>(&m.payload).ok()?;
                let correlation = m
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.as_ref())
                    .map(|c| c.to_vec());
                Some((reply, correlation))
            })
            .collect()
    }
}

/// The command envelope of `body` as bytes, signed with `key` when there is one.
pub fn envelope(body: &serde_json::Value, key: Option<&SigningKey>) -> Vec<u8> {
    let text = body.to_string();
    let mut envelope = serde_json::json!({"v": 1, "body": text});
    if let Some(key) = key {
        envelope["signature"] =
            serde_json::to_value(key.sign(text.as_bytes())).expect("a signature is JSON");
    }
    envelope.to_string().into_bytes()
}

fn replies_to(messages: &[Message], cmd_id: &str) -> Vec<CommandReply> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<CommandReply>(&m.payload).ok())
        .filter(|r| r.cmd_id == cmd_id)
        .collect()
}
