//! What the broker keeps per message and per client: messages with their expiry, the
//! deliveries queued and in flight for each session, subscriptions, and wills.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

use super::core::{ConnId, Effect, Limits};
use super::topic::{self, Filter};

/// A message as published, shared by every subscriber it goes to.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    /// Everything but expiry, topic alias and subscription identifiers, passed on unchanged.
    pub(super) properties: Option<PublishProperties>,
    pub(super) expires_at: Option<Instant>,
}

impl Message {
    pub(super) fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Option<PublishProperties>,
        now: Instant,
    ) -> Self {
        let expires_at = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        let properties = properties.and_then(|mut p| {
            p.message_expiry_interval = None;
            p.topic_alias = None;
            p.subscription_identifiers.clear();
            (p != PublishProperties::default()).then_some(p)
        });
        Self {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
        }
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The whole seconds it has left, rounded up so that a message still valid never goes
    /// out as "expires in 0 s"; `Ok(None)`: it never expires; `Err` once it has.
    pub(super) fn seconds_left(&self, now: Instant) -> Result<Option<u32>, Expired> {
        match self.expires_at {
            Some(at) if at <= now => Err(Expired),
            Some(at) => {
                let left = at - now;
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Ok(Some(u32::try_from(secs).unwrap_or(u32::MAX)))
            }
            None => Ok(None),
        }
    }

    /// The PUBLISH that carries it, with what is left of its expiry; `None` once it has
    /// expired.
    pub(super) fn publish(
        &self,
        qos: QoS,
        retain: bool,
        pkid: u16,
        dup: bool,
        now: Instant,
    ) -> Option<Publish> {
        let remaining = self.seconds_left(now).ok()?;
        let properties = match (&self.properties, remaining) {
            (None, None) => None,
            (p, remaining) => Some(PublishProperties {
                message_expiry_interval: remaining,
                ..p.clone().unwrap_or_default()
            }),
        };
        Some(Publish {
            dup,
            qos,
            retain,
            topic: Bytes::copy_from_slice(self.topic.as_bytes()),
            pkid,
            payload: self.payload.clone(),
            properties,
        })
    }

    /// What it holds: its topic, payload and properties (user properties can be the most of
    /// it, and each pair takes two strings' room however short they are: 52,000 empty pairs
    /// are 260 KB on the wire and 2.5 MB here).
    pub(super) fn size(&self) -> usize {
        const PAIR: usize = std::mem::size_of::<(String, String)>();
        let properties = self.properties.as_ref().map_or(0, |p| {
            let pairs: usize = p
                .user_properties
                .iter()
                .map(|(k, v)| PAIR + k.len() + v.len())
                .sum();
            let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
            let data = p.correlation_data.as_ref().map_or(0, Bytes::len);
            pairs + text(&p.response_topic) + text(&p.content_type) + data
        });
        self.topic.len() + self.payload.len() + properties
    }
}

/// A message whose time has passed.
pub(super) struct Expired;

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    pub(super) message: Arc<Message>,
    pub(super) qos: QoS,
    pub(super) retain: bool,
}

/// What a queued delivery holds beyond its message's bytes: the message itself, its shared
/// counts, and the delivery. Counted, or a thousand empty messages for each of a thousand
/// sessions would take 60 times the memory the limits allow.
pub(super) const DELIVERY_OVERHEAD: usize = std::mem::size_of::<Message>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<Delivery>();

impl Delivery {
    /// The memory it holds while queued or in flight ([`Message::size`] and the overhead).
    pub(super) fn cost(&self) -> usize {
        self.message.size() + DELIVERY_OVERHEAD
    }
}

#[derive(Clone, Debug)]
pub(super) struct Subscription {
    pub(super) filter: Filter,
    pub(super) qos: QoS,
    pub(super) no_local: bool,
    pub(super) retain_as_published: bool,
}

/// What the broker keeps of a client between its connections.
#[derive(Debug, Default)]
pub(super) struct Session {
    pub(super) conn: Option<ConnId>,
    /// By the filter as the client wrote it.
    pub(super) subscriptions: BTreeMap<String, Subscription>,
    /// Seconds it outlives its connection: 0 ends it with the connection, `u32::MAX` never.
    pub(super) expiry: u32,
    pub(super) expires_at: Option<Instant>,
    /// Since when no client is connected to it (or the broker took it back at its start).
    pub(super) away_since: Option<Instant>,
    /// QoS 1 deliveries sent and not yet acknowledged, in the order sent.
    pub(super) in_flight: VecDeque<(u16, Delivery)>,
    pub(super) queue: VecDeque<Delivery>,
    pub(super) last_pkid: u16,
    /// The client's Receive Maximum, within the broker's own limit.
    pub(super) window: u16,
    /// The client's Maximum Packet Size.
    pub(super) max_packet: Option<u32>,
    /// Deliveries dropped from a full queue.
    pub(super) dropped: u64,
    /// Bytes of the deliveries queued and in flight ([`Delivery::cost`]), shared messages
    /// counted for each session that holds them.
    pub(super) held: usize,
}

/// Runs `f` on `session` with the bytes all sessions hold, keeping `total` in step with what
/// `f` makes the session hold.
pub(super) fn in_step<R>(
    total: &mut usize,
    session: &mut Session,
    f: impl FnOnce(&mut Session, usize) -> R,
) -> R {
    let before = session.held;
    let result = f(session, *total);
    *total = (*total + session.held).saturating_sub(before);
    result
}

impl Session {
    pub(super) fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let pkid = self.last_pkid;
            if !self.in_flight.iter().any(|(id, _)| *id == pkid) {
                return pkid;
            }
        }
    }

    pub(super) fn fits(&self, publish: &Publish) -> bool {
        self.max_packet
            .is_none_or(|max| Packet::Publish(publish.clone()).size() <= max as usize)
    }

    /// Sends what waits, as far as the client's window allows.
    pub(super) fn pump(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(conn) = self.conn else {
            return;
        };
        while self.in_flight.len() < usize::from(self.window) {
            let Some(delivery) = self.queue.pop_front() else {
                break;
            };
            let pkid = self.next_pkid();
            let publish =
                (delivery.message).publish(QoS::AtLeastOnce, delivery.retain, pkid, false, now);
            let Some(publish) = publish.filter(|p| self.fits(p)) else {
                self.release(&delivery);
                continue;
            };
            self.in_flight.push_back((pkid, delivery));
            out.push(Effect::Send(conn, Packet::Publish(publish)));
        }
    }

    /// Queues `delivery` (QoS 1) or sends it (QoS 0); a QoS 1 delivery is dropped beyond the
    /// session's queue or bytes, or when all sessions hold `held_by_all` bytes and it would
    /// take them over the broker's.
    pub(super) fn deliver(
        &mut self,
        delivery: Delivery,
        limits: &Limits,
        held_by_all: usize,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        if delivery.qos == QoS::AtMostOnce {
            let Some(conn) = self.conn else {
                return;
            };
            if let Some(publish) =
                delivery
                    .message
                    .publish(QoS::AtMostOnce, delivery.retain, 0, false, now)
            {
                if self.fits(&publish) {
                    out.push(Effect::Send(conn, Packet::Publish(publish)));
                }
            }
            return;
        }
        let size = delivery.cost();
        let full = self.queue.len() >= limits.max_queued
            || self.held + size > limits.max_session_bytes
            || held_by_all + size > limits.max_held_bytes;
        if full {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "embedded broker: a client's queue is full; dropping messages for it"
                );
            }
            return;
        }
        self.held += size;
        self.queue.push_back(delivery);
        self.pump(now, out);
    }

    /// `delivery` left the session (sent and acknowledged, expired, or dropped): what it held
    /// is free again.
    fn release(&mut self, delivery: &Delivery) {
        self.held = self.held.saturating_sub(delivery.cost());
    }

    /// The client acknowledged `pkid`: its delivery is done with.
    pub(super) fn acked(&mut self, pkid: u16, now: Instant, out: &mut Vec<Effect>) {
        if let Some(at) = self.in_flight.iter().position(|(id, _)| *id == pkid) {
            if let Some((_, delivery)) = self.in_flight.remove(at) {
                self.release(&delivery);
            }
        }
        self.pump(now, out);
    }

    /// Sends again what was in flight when the client went away, then what waits, within
    /// what the client asks for now: its window (the rest waits its turn again) and its
    /// largest packet (a larger one, sent, would end this connection as the last did).
    pub(super) fn resume(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(conn) = self.conn else {
            return;
        };
        let mut in_flight = std::mem::take(&mut self.in_flight);
        while let Some((pkid, delivery)) = in_flight.pop_front() {
            if self.in_flight.len() >= usize::from(self.window) {
                in_flight.push_front((pkid, delivery));
                break;
            }
            let publish =
                (delivery.message).publish(QoS::AtLeastOnce, delivery.retain, pkid, true, now);
            match publish {
                Some(publish) if self.fits(&publish) => {
                    out.push(Effect::Send(conn, Packet::Publish(publish)));
                    self.in_flight.push_back((pkid, delivery));
                }
                // Too large for the client now (a drop), or expired meanwhile.
                unsent => {
                    self.dropped += u64::from(unsent.is_some());
                    self.release(&delivery);
                }
            }
        }
        for (_, delivery) in in_flight.into_iter().rev() {
            self.queue.push_front(delivery);
        }
        self.pump(now, out);
    }
}

/// A will as the client gave it; its expiry counts from when it is published.
#[derive(Clone, Debug)]
pub(super) struct Will {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) delay: u32,
    pub(super) properties: Option<PublishProperties>,
    /// Whether the client that left it connected from this machine.
    pub(super) from_this_machine: bool,
}

impl Will {
    pub(super) fn from_packet(
        will: LastWill,
        from_this_machine: bool,
    ) -> Result<Self, ConnectReturnCode> {
        let topic = String::from_utf8(will.topic.to_vec())
            .ok()
            .filter(|t| topic::valid_name(t))
            .ok_or(ConnectReturnCode::TopicNameInvalid)?;
        if will.qos == QoS::ExactlyOnce {
            return Err(ConnectReturnCode::QoSNotSupported);
        }
        let delay = will
            .properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0);
        let properties = will.properties.map(|p| PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            content_type: p.content_type,
            ..Default::default()
        });
        Ok(Self {
            topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            delay,
            properties,
            from_this_machine,
        })
    }

    pub(super) fn message(self, now: Instant) -> Message {
        Message::new(
            self.topic,
            self.payload,
            self.qos,
            self.retain,
            self.properties,
            now,
        )
    }
}
