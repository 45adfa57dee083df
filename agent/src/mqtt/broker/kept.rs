//! The sessions the embedded broker keeps across its own restart: which clients outlive
//! their connection, what they subscribed to, and — when the agent stops in good order, as
//! at an upgrade — the QoS 1 messages that waited for them. A Pi that lost its power comes
//! back with a broker that queues what its agent publishes from the first second — a crash at
//! boot — for the alerter or the events tail that was connected before, as Mosquitto does with
//! persistence. A power cut gives no time to write the queues; the subscriptions change
//! rarely, and are written when they do.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Deserializer, Serialize};

use super::core::{subscription_cost, Core};
use super::session::{Delivery, Message, Session, Subscription};
use super::topic::{self, Filter};

/// A session as written to disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSession {
    pub client: String,
    /// Seconds it outlives its connection; `u32::MAX`: forever.
    pub expiry: u32,
    pub subscriptions: Vec<KeptSubscription>,
    /// When `queued` was written (Unix seconds): the expiries count down from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_at: Option<u64>,
    /// What waited for the client, in the order it goes out: written only when the broker
    /// stops in good order, and taken back once.
    #[serde(
        default,
        deserialize_with = "readable_messages",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub queued: Vec<KeptMessage>,
}

/// The messages of a queue that read as messages: one damaged entry costs itself, not every
/// session of the file.
fn readable_messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeptMessage>, D::Error> {
    let entries = Vec::<serde_json::Value>::deserialize(d)?;
    let count = entries.len();
    let messages: Vec<KeptMessage> = entries
        .into_iter()
        .filter_map(|entry| serde_json::from_value(entry).ok())
        .collect();
    if messages.len() < count {
        let left_out = count - messages.len();
        tracing::warn!(
            left_out,
            "embedded broker: kept messages that do not read are left out"
        );
    }
    Ok(messages)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSubscription {
    /// As the client wrote it, `$share/` group included.
    pub filter: String,
    /// 0 or 1: the broker grants no more.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
}

/// A QoS 1 message on its way to a kept session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptMessage {
    pub topic: String,
    pub payload: Payload,
    pub retain: bool,
    /// Seconds it has left before it expires; `None`: it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Payload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// Bytes as text where they are UTF-8 (the fleet's JSON), so that the file reads as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Payload {
    Text(String),
    Bytes(Vec<u8>),
}

impl From<&Bytes> for Payload {
    fn from(bytes: &Bytes) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Text(text.to_owned()),
            Err(_) => Self::Bytes(bytes.to_vec()),
        }
    }
}

impl From<Payload> for Bytes {
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::Text(text) => Bytes::from(text),
            Payload::Bytes(bytes) => Bytes::from(bytes),
        }
    }
}

impl KeptMessage {
    /// `None` once it has expired.
    fn of(delivery: &Delivery, now: Instant) -> Option<Self> {
        let message = &delivery.message;
        let expires_in = message.seconds_left(now).ok()?;
        let properties = message.properties.clone().unwrap_or_default();
        Some(Self {
            topic: message.topic.clone(),
            payload: Payload::from(&message.payload),
            retain: delivery.retain,
            expires_in,
            payload_format_indicator: properties.payload_format_indicator,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data.as_ref().map(Payload::from),
            user_properties: properties.user_properties,
            content_type: properties.content_type,
        })
    }

    /// The delivery again, `down` after it was written, its expiry counting on from `now`;
    /// `None` once it has expired, or for what this broker would never have sent (a file
    /// edited by hand): a topic no client may publish to, a string MQTT cannot carry, a
    /// packet over `max_packet`.
    fn delivery(self, now: Instant, down: Duration, max_packet: u32) -> Option<Delivery> {
        let carried = |text: &str| text.len() <= usize::from(u16::MAX);
        let sound = topic::valid_name(&self.topic)
            && carried(&self.topic)
            && (self.response_topic.as_deref()).is_none_or(|t| topic::valid_name(t) && carried(t))
            && self.content_type.as_deref().is_none_or(carried)
            && (self.user_properties.iter()).all(|(key, value)| carried(key) && carried(value));
        let expiry = match self.expires_in {
            Some(secs) => match u64::from(secs).checked_sub(down.as_secs()) {
                Some(left) if left > 0 => u32::try_from(left).ok(),
                _ => return None,
            },
            None => None,
        };
        let properties = PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: expiry,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data.map(Bytes::from),
            user_properties: self.user_properties,
            content_type: self.content_type,
            ..PublishProperties::default()
        };
        let correlation = properties.correlation_data.as_ref();
        if !sound || correlation.is_some_and(|c| c.len() > usize::from(u16::MAX)) {
            return None;
        }
        let message = Message::new(
            self.topic,
            self.payload.into(),
            QoS::AtLeastOnce,
            self.retain,
            Some(properties),
            now,
        );
        let publish = message.publish(QoS::AtLeastOnce, self.retain, 1, false, now)?;
        if Packet::Publish(publish).size() > max_packet as usize {
            return None;
        }
        Some(Delivery {
            message: Arc::new(message),
            qos: QoS::AtLeastOnce,
            retain: self.retain,
        })
    }
}

impl Core {
    /// The sessions a restart must keep, with what waits for each: those sent and not yet
    /// acknowledged first, then the queue, each with the expiry it has left at `now` (`wall`
    /// on the clock that the next start compares with).
    pub fn kept_with_queues(&self, now: Instant, wall: SystemTime) -> Vec<KeptSession> {
        let mut kept = self.kept();
        for session in &mut kept {
            let Some(live) = self.sessions.get(&session.client) else {
                continue;
            };
            let in_flight = live.in_flight.iter().map(|(_, delivery)| delivery);
            session.queued = in_flight
                .chain(&live.queue)
                .filter_map(|delivery| KeptMessage::of(delivery, now))
                .collect();
            session.saved_at = (!session.queued.is_empty()).then(|| unix_seconds(wall));
        }
        kept
    }

    /// The sessions a restart must keep: those that outlive their connection.
    pub fn kept(&self) -> Vec<KeptSession> {
        let kept = self.sessions.iter().filter(|(_, s)| s.expiry > 0);
        kept.map(|(client, session)| KeptSession {
            client: client.clone(),
            expiry: session.expiry,
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(filter, s)| KeptSubscription {
                    filter: filter.clone(),
                    qos: u8::from(s.qos == QoS::AtLeastOnce),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                })
                .collect(),
            saved_at: None,
            queued: Vec::new(),
        })
        .collect()
    }

    /// Takes back the sessions an earlier run kept, each waiting for its client as if its
    /// connection had been lost at `now`, with what was queued for it less what expired since
    /// it was written (by `wall`; a clock that went back counts from now). What does not read
    /// as a session (a filter this broker refuses, a client id too long), or would pass the
    /// limits, is left out.
    pub fn restore(&mut self, kept: Vec<KeptSession>, now: Instant, wall: SystemTime) {
        for session in kept {
            let fits = self.sessions.len() < self.limits.max_sessions
                && session.client.len() <= self.limits.max_client_id
                && !session.client.is_empty()
                && session.expiry > 0;
            if !fits {
                continue;
            }
            // One session a client: a second in a file written by hand replaces the first,
            // and what the first held is free again.
            self.remove_session(&session.client);
            let subscriptions = session
                .subscriptions
                .into_iter()
                .filter_map(|s| {
                    let filter = Filter::parse(&s.filter)?;
                    let subscription = Subscription {
                        filter,
                        qos: if s.qos == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        },
                        no_local: s.no_local,
                        retain_as_published: s.retain_as_published,
                    };
                    Some((s.filter, subscription))
                })
                .take(self.limits.max_subscriptions)
                // Within the room of all sessions' subscriptions, as when they were made: a
                // file of an older version, or edited, may hold more.
                .take_while(|(filter, _)| {
                    let cost = subscription_cost(filter);
                    let fits = self.subscription_bytes + cost <= self.limits.max_subscription_bytes;
                    self.subscription_bytes += if fits { cost } else { 0 };
                    fits
                })
                .collect::<BTreeMap<String, Subscription>>();
            let expires_at = match session.expiry {
                u32::MAX => None,
                secs => Some(now + Duration::from_secs(u64::from(secs))),
            };
            let down = session.saved_at.map_or(Duration::ZERO, |saved| {
                Duration::from_secs(unix_seconds(wall).saturating_sub(saved))
            });
            let max_packet = self.limits.max_packet;
            let mut queue: VecDeque<Delivery> = session
                .queued
                .into_iter()
                .filter_map(|message| message.delivery(now, down, max_packet))
                .collect();
            let over = queue.len().saturating_sub(self.limits.max_queued);
            if over > 0 {
                tracing::warn!(
                    client = session.client.as_str(),
                    dropped = over,
                    "embedded broker: a kept queue is longer than a queue may be; dropping its newest"
                );
                queue.truncate(self.limits.max_queued);
            }
            let held = queue.iter().map(Delivery::cost).sum();
            self.held_bytes += held;
            let restored = Session {
                subscriptions,
                expiry: session.expiry,
                expires_at,
                away_since: Some(now),
                queue,
                window: self.limits.max_in_flight,
                dropped: over as u64,
                held,
                ..Session::default()
            };
            self.sessions.insert(session.client, restored);
        }
    }
}

/// The sessions kept in `path`; none when there is no file, and none, said in the log, when
/// it cannot be read.
pub fn load(path: &Path) -> Vec<KeptSession> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "embedded broker: cannot read the kept sessions; starting without them");
            return Vec::new();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "embedded broker: the kept sessions do not read; starting without them");
        Vec::new()
    })
}

/// The sessions kept in `path`, with their queues; the file keeps the sessions but not the
/// queues from now on, so that a later start (after a crash or a power cut) cannot send them
/// again.
pub fn take_back(path: &Path) -> Vec<KeptSession> {
    let kept = load(path);
    if kept.iter().any(|session| !session.queued.is_empty()) {
        let without_queues: Vec<KeptSession> = (kept.iter())
            .map(|session| KeptSession {
                saved_at: None,
                queued: Vec::new(),
                ..session.clone()
            })
            .collect();
        save(path, &without_queues);
    }
    kept
}

fn unix_seconds(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Writes `kept` to `path`, durably: the next start may come after a power cut. Returns the
/// bytes it wrote.
pub fn save(path: &Path, kept: &[KeptSession]) -> usize {
    let written = serde_json::to_vec(kept)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            respawn_common::file::write_atomically(path, &json, true).map(|()| json.len())
        });
    written.unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "embedded broker: cannot keep its sessions for its next start");
        0
    })
}
