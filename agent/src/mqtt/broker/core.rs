//! The broker's decisions, free of I/O: what each packet from a client does to sessions,
//! subscriptions, retained messages and wills, and which packets go out in return. Time is an
//! argument, so message expiry, keep-alive and will delays are tested on virtual time.
//!
//! What it implements of MQTT 5 is what a fleet of agents and its tools use: QoS 0 and 1
//! (QoS 2 is refused in CONNACK's Maximum QoS), retained messages with message expiry counted
//! from arrival, wills with delay, persistent sessions with session expiry and in-order
//! redelivery, shared subscriptions, subscription options (no local, retain as published,
//! retain handling), session takeover and keep-alive. No topic aliases, no subscription
//! identifiers, no authentication: it listens on loopback unless told otherwise.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, Packet, PubAck, PubAckReason, Publish, PublishProperties, RetainForwardRule, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

use super::topic::{self, Filter};

/// A network connection, numbered by the socket layer; never reused.
pub type ConnId = u64;

/// Limits that keep one client, careless or hostile, from exhausting the machine.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest packet taken or sent, announced in CONNACK.
    pub max_packet: u32,
    /// Sessions, connected or kept for a client that comes back.
    pub max_sessions: usize,
    /// QoS 1 messages kept per session beyond those in flight; more are dropped.
    pub max_queued: usize,
    /// QoS 1 messages sent to a client and not yet acknowledged.
    pub max_in_flight: u16,
    pub max_subscriptions: usize,
    pub max_retained: usize,
    /// Topic and payload bytes of all retained messages.
    pub max_retained_bytes: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
    pub max_client_id: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: 256 * 1024,
            max_sessions: 1024,
            max_queued: 1000,
            max_in_flight: 64,
            max_subscriptions: 256,
            max_retained: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_client_id: 256,
        }
    }
}

/// What happened on a connection.
#[derive(Debug)]
pub enum Input {
    Opened,
    /// Boxed: inputs wait in a channel, and most packets are far smaller than the largest.
    Packet(Box<Packet>),
    /// Bytes that are not an MQTT 5 packet this broker takes.
    Malformed(Malformed),
    /// The peer closed the connection, or it broke.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A CONNECT of MQTT 3.1.1 or older.
    OldProtocol,
    TooLarge,
    Other,
}

/// What the socket layer is to do.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // Effects live only until carried out, never in a queue.
pub enum Effect {
    Send(ConnId, Packet),
    /// The MQTT 3 CONNACK "unacceptable protocol version", which an MQTT 3 client can read.
    RefuseProtocol(ConnId),
    /// Closes the connection once what was sent before is written.
    Close(ConnId),
}

/// A message as published, shared by every subscriber it goes to.
#[derive(Debug)]
struct Message {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    /// Everything but expiry, topic alias and subscription identifiers, passed on unchanged.
    properties: Option<PublishProperties>,
    expires_at: Option<Instant>,
}

impl Message {
    fn new(
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

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH that carries it, with what is left of its expiry (rounded up, so that a
    /// message still valid never goes out as "expires in 0 s"); `None` once it has expired.
    fn publish(
        &self,
        qos: QoS,
        retain: bool,
        pkid: u16,
        dup: bool,
        now: Instant,
    ) -> Option<Publish> {
        let remaining = match self.expires_at {
            Some(at) if at <= now => return None,
            Some(at) => {
                let left = at - now;
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Some(u32::try_from(secs).unwrap_or(u32::MAX))
            }
            None => None,
        };
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

    fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
struct Delivery {
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
}

#[derive(Clone, Debug)]
struct Subscription {
    filter: Filter,
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
}

/// What the broker keeps of a client between its connections.
#[derive(Debug, Default)]
struct Session {
    conn: Option<ConnId>,
    /// By the filter as the client wrote it.
    subscriptions: BTreeMap<String, Subscription>,
    /// Seconds it outlives its connection: 0 ends it with the connection, `u32::MAX` never.
    expiry: u32,
    expires_at: Option<Instant>,
    /// QoS 1 deliveries sent and not yet acknowledged, in the order sent.
    in_flight: VecDeque<(u16, Delivery)>,
    queue: VecDeque<Delivery>,
    last_pkid: u16,
    /// The client's Receive Maximum, within the broker's own limit.
    window: u16,
    /// The client's Maximum Packet Size.
    max_packet: Option<u32>,
    /// Deliveries dropped from a full queue.
    dropped: u64,
}

impl Session {
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let pkid = self.last_pkid;
            if !self.in_flight.iter().any(|(id, _)| *id == pkid) {
                return pkid;
            }
        }
    }

    fn fits(&self, publish: &Publish) -> bool {
        self.max_packet
            .is_none_or(|max| Packet::Publish(publish.clone()).size() <= max as usize)
    }

    /// Sends what waits, as far as the client's window allows.
    fn pump(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(conn) = self.conn else {
            return;
        };
        while self.in_flight.len() < usize::from(self.window) {
            let Some(delivery) = self.queue.pop_front() else {
                break;
            };
            let pkid = self.next_pkid();
            let Some(publish) =
                delivery
                    .message
                    .publish(QoS::AtLeastOnce, delivery.retain, pkid, false, now)
            else {
                continue;
            };
            if !self.fits(&publish) {
                continue;
            }
            self.in_flight.push_back((pkid, delivery));
            out.push(Effect::Send(conn, Packet::Publish(publish)));
        }
    }

    fn deliver(
        &mut self,
        delivery: Delivery,
        limits: &Limits,
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
        if self.queue.len() >= limits.max_queued {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "embedded broker: a client's queue is full; dropping messages for it"
                );
            }
            return;
        }
        self.queue.push_back(delivery);
        self.pump(now, out);
    }

    /// Sends again what was in flight when the client went away, then what waits.
    fn resume(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(conn) = self.conn else {
            return;
        };
        let in_flight = std::mem::take(&mut self.in_flight);
        for (pkid, delivery) in in_flight {
            if let Some(publish) =
                delivery
                    .message
                    .publish(QoS::AtLeastOnce, delivery.retain, pkid, true, now)
            {
                out.push(Effect::Send(conn, Packet::Publish(publish)));
                self.in_flight.push_back((pkid, delivery));
            }
        }
        self.pump(now, out);
    }
}

/// A will as the client gave it; its expiry counts from when it is published.
#[derive(Clone, Debug)]
struct Will {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    delay: u32,
    properties: Option<PublishProperties>,
}

impl Will {
    fn from_packet(will: LastWill) -> Result<Self, ConnectReturnCode> {
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
        })
    }

    fn message(self, now: Instant) -> Message {
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

struct Connection {
    opened_at: Instant,
    /// Set by CONNECT.
    client: Option<String>,
    /// 1.5 × the keep-alive the client asked for.
    silence_limit: Option<Duration>,
    last_seen: Instant,
    will: Option<Will>,
}

struct DelayedWill {
    client: String,
    at: Instant,
    will: Will,
}

/// The whole broker state.
pub struct Core {
    limits: Limits,
    connections: HashMap<ConnId, Connection>,
    sessions: BTreeMap<String, Session>,
    retained: BTreeMap<String, Arc<Message>>,
    retained_bytes: usize,
    delayed_wills: Vec<DelayedWill>,
    /// Whose turn it is next in each shared subscription.
    shared_turns: HashMap<String, usize>,
    assigned_ids: u64,
}

impl Core {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
            sessions: BTreeMap::new(),
            retained: BTreeMap::new(),
            retained_bytes: 0,
            delayed_wills: Vec::new(),
            shared_turns: HashMap::new(),
            assigned_ids: 0,
        }
    }

    pub fn handle(&mut self, conn: ConnId, input: Input, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Opened => {
                self.connections.insert(
                    conn,
                    Connection {
                        opened_at: now,
                        client: None,
                        silence_limit: None,
                        last_seen: now,
                        will: None,
                    },
                );
            }
            Input::Closed => {
                out.push(Effect::Close(conn));
                self.lose(conn, now, &mut out);
            }
            Input::Malformed(kind) => {
                let connected = self
                    .connections
                    .get(&conn)
                    .is_some_and(|c| c.client.is_some());
                match (kind, connected) {
                    (Malformed::OldProtocol, false) => out.push(Effect::RefuseProtocol(conn)),
                    (Malformed::TooLarge, true) => {
                        out.push(disconnect(conn, DisconnectReasonCode::PacketTooLarge))
                    }
                    (_, true) => out.push(disconnect(conn, DisconnectReasonCode::MalformedPacket)),
                    (_, false) => {}
                }
                out.push(Effect::Close(conn));
                self.lose(conn, now, &mut out);
            }
            Input::Packet(packet) => self.packet(conn, *packet, now, &mut out),
        }
        out
    }

    /// When [`Core::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let connections = self.connections.values().filter_map(|c| match &c.client {
            None => Some(c.opened_at + self.limits.connect_timeout),
            Some(_) => c.silence_limit.map(|limit| c.last_seen + limit),
        });
        let wills = self.delayed_wills.iter().map(|w| w.at);
        let sessions = self.sessions.values().filter_map(|s| s.expires_at);
        connections.chain(wills).chain(sessions).min()
    }

    /// Closes silent connections, publishes delayed wills and ends expired sessions.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        let silent: Vec<(ConnId, bool)> = self
            .connections
            .iter()
            .filter_map(|(&id, c)| match &c.client {
                None => (c.opened_at + self.limits.connect_timeout <= now).then_some((id, false)),
                Some(_) => c
                    .silence_limit
                    .is_some_and(|limit| c.last_seen + limit <= now)
                    .then_some((id, true)),
            })
            .collect();
        for (conn, connected) in silent {
            if connected {
                out.push(disconnect(conn, DisconnectReasonCode::KeepAliveTimeout));
            }
            out.push(Effect::Close(conn));
            self.lose(conn, now, &mut out);
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed_wills)
            .into_iter()
            .partition(|w| w.at <= now);
        self.delayed_wills = later;
        for will in due {
            self.publish_will(will.will, now, &mut out);
        }
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for client in expired {
            self.end_session(&client, now, &mut out);
        }
        self.retained.retain(|_, m| !m.expired(now));
        self.retained_bytes = self.retained.values().map(|m| m.size()).sum();
        out
    }

    fn packet(&mut self, conn: ConnId, packet: Packet, now: Instant, out: &mut Vec<Effect>) {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return; // Closed already; what it still sent is void.
        };
        connection.last_seen = now;
        let Some(client) = connection.client.clone() else {
            match packet {
                Packet::Connect(connect, will, _login) => {
                    self.connect(conn, connect, will, now, out)
                }
                _ => {
                    out.push(Effect::Close(conn));
                    self.lose(conn, now, out);
                }
            }
            return;
        };
        match packet {
            Packet::Publish(publish) => self.publish(conn, &client, publish, now, out),
            Packet::PubAck(ack) => {
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.in_flight.retain(|(pkid, _)| *pkid != ack.pkid);
                    session.pump(now, out);
                }
            }
            Packet::Subscribe(subscribe) => self.subscribe(conn, &client, subscribe, now, out),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(conn, &client, unsubscribe, out),
            Packet::PingReq(_) => out.push(Effect::Send(
                conn,
                Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp),
            )),
            Packet::Disconnect(goodbye) => {
                if goodbye.reason_code == DisconnectReasonCode::NormalDisconnection {
                    if let Some(connection) = self.connections.get_mut(&conn) {
                        connection.will = None;
                    }
                }
                let expiry = goodbye.properties.and_then(|p| p.session_expiry_interval);
                if let (Some(expiry), Some(session)) = (expiry, self.sessions.get_mut(&client)) {
                    if session.expiry == 0 && expiry != 0 {
                        // MQTT 5 3.14.2.2.2: a session that was to end cannot be kept now.
                        return self.fail(conn, DisconnectReasonCode::ProtocolError, now, out);
                    }
                    session.expiry = expiry;
                }
                out.push(Effect::Close(conn));
                self.lose(conn, now, out);
            }
            // QoS 2 (refused in CONNACK), AUTH (no methods), a second CONNECT, and packets
            // only a server sends.
            _ => self.fail(conn, DisconnectReasonCode::ProtocolError, now, out),
        }
    }

    fn connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        will: Option<LastWill>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let properties = connect.properties.as_ref();
        let expiry = properties
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);
        let window = properties
            .and_then(|p| p.receive_maximum)
            .unwrap_or(u16::MAX);
        let max_packet = properties.and_then(|p| p.max_packet_size);
        if window == 0 || max_packet == Some(0) {
            return self.refuse(conn, ConnectReturnCode::ProtocolError, out);
        }
        let will = match will.map(Will::from_packet).transpose() {
            Ok(will) => will,
            Err(code) => return self.refuse(conn, code, out),
        };
        let mut assigned = None;
        let client = if connect.client_id.is_empty() {
            if !connect.clean_start {
                return self.refuse(conn, ConnectReturnCode::ClientIdentifierNotValid, out);
            }
            let id = loop {
                self.assigned_ids += 1;
                let id = format!("auto-{}", self.assigned_ids);
                if !self.sessions.contains_key(&id) {
                    break id;
                }
            };
            assigned = Some(id.clone());
            id
        } else if connect.client_id.len() > self.limits.max_client_id {
            return self.refuse(conn, ConnectReturnCode::ClientIdentifierNotValid, out);
        } else {
            connect.client_id
        };
        if !self.sessions.contains_key(&client) && self.sessions.len() >= self.limits.max_sessions {
            return self.refuse(conn, ConnectReturnCode::QuotaExceeded, out);
        }
        // Session takeover: the old connection goes, and with it its will (MQTT 5 3.1.4).
        if let Some(old) = self.sessions.get(&client).and_then(|s| s.conn) {
            out.push(disconnect(old, DisconnectReasonCode::SessionTakenOver));
            out.push(Effect::Close(old));
            self.lose(old, now, out);
        }
        // A delayed will: a new connection before its time cancels it, unless it ends the
        // session, which publishes it.
        if let Some(at) = self.delayed_wills.iter().position(|w| w.client == client) {
            let delayed = self.delayed_wills.remove(at);
            if connect.clean_start {
                self.publish_will(delayed.will, now, out);
            }
        }
        if connect.clean_start {
            self.sessions.remove(&client);
        }
        let session_present = self.sessions.contains_key(&client);
        let session = self.sessions.entry(client.clone()).or_default();
        session.conn = Some(conn);
        session.expiry = expiry;
        session.expires_at = None;
        session.window = window.min(self.limits.max_in_flight);
        session.max_packet = max_packet;
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.client = Some(client);
            connection.silence_limit = (connect.keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
            connection.will = will;
        }
        out.push(Effect::Send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present,
                code: ConnectReturnCode::Success,
                properties: Some(ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: None,
                    max_qos: Some(1),
                    retain_available: None,
                    max_packet_size: Some(self.limits.max_packet),
                    assigned_client_identifier: assigned,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: None,
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: None,
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                }),
            }),
        ));
        session.resume(now, out);
    }

    fn refuse(&mut self, conn: ConnId, code: ConnectReturnCode, out: &mut Vec<Effect>) {
        out.push(Effect::Send(
            conn,
            Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: None,
            }),
        ));
        out.push(Effect::Close(conn));
        self.connections.remove(&conn);
    }

    /// Ends a connection for a protocol violation: DISCONNECT with the reason, then close.
    fn fail(
        &mut self,
        conn: ConnId,
        reason: DisconnectReasonCode,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        out.push(disconnect(conn, reason));
        out.push(Effect::Close(conn));
        self.lose(conn, now, out);
    }

    /// Forgets a connection: its will is published (now or after its delay) unless it said a
    /// normal goodbye, and its session ends or starts counting down its expiry.
    fn lose(&mut self, conn: ConnId, now: Instant, out: &mut Vec<Effect>) {
        let Some(connection) = self.connections.remove(&conn) else {
            return;
        };
        let Some(client) = connection.client else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        if session.conn != Some(conn) {
            return;
        }
        session.conn = None;
        let expiry = session.expiry;
        session.expires_at = match expiry {
            u32::MAX => None,
            secs => Some(now + Duration::from_secs(u64::from(secs))),
        };
        if let Some(will) = connection.will {
            if will.delay.min(expiry) == 0 {
                self.publish_will(will, now, out);
            } else {
                self.delayed_wills.push(DelayedWill {
                    client: client.clone(),
                    at: now + Duration::from_secs(u64::from(will.delay)),
                    will,
                });
            }
        }
        if expiry == 0 {
            self.end_session(&client, now, out);
        }
    }

    fn publish_will(&mut self, will: Will, now: Instant, out: &mut Vec<Effect>) {
        let message = Arc::new(will.message(now));
        if !message.retain || self.retain(&message) {
            self.route(&message, None, now, out);
        }
    }

    fn end_session(&mut self, client: &str, now: Instant, out: &mut Vec<Effect>) {
        self.sessions.remove(client);
        if let Some(at) = self.delayed_wills.iter().position(|w| w.client == client) {
            let delayed = self.delayed_wills.remove(at);
            self.publish_will(delayed.will, now, out);
        }
    }

    fn publish(
        &mut self,
        conn: ConnId,
        client: &str,
        publish: Publish,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        if publish.qos == QoS::ExactlyOnce {
            return self.fail(conn, DisconnectReasonCode::QoSNotSupported, now, out);
        }
        if publish
            .properties
            .as_ref()
            .is_some_and(|p| p.topic_alias.is_some())
        {
            return self.fail(conn, DisconnectReasonCode::TopicAliasInvalid, now, out);
        }
        let Some(topic) = std::str::from_utf8(&publish.topic)
            .ok()
            .filter(|t| topic::valid_name(t))
        else {
            return self.fail(conn, DisconnectReasonCode::TopicNameInvalid, now, out);
        };
        let message = Arc::new(Message::new(
            topic.to_owned(),
            publish.payload,
            publish.qos,
            publish.retain,
            publish.properties,
            now,
        ));
        let reason = if message.retain && !self.retain(&message) {
            PubAckReason::QuotaExceeded
        } else if self.route(&message, Some(client), now, out) {
            PubAckReason::Success
        } else {
            PubAckReason::NoMatchingSubscribers
        };
        if publish.qos == QoS::AtLeastOnce {
            out.push(Effect::Send(
                conn,
                Packet::PubAck(PubAck {
                    pkid: publish.pkid,
                    reason,
                    properties: None,
                }),
            ));
        }
    }

    /// Stores (or, with an empty payload, clears) a retained message; `false` when over the
    /// limits.
    fn retain(&mut self, message: &Arc<Message>) -> bool {
        let previous = self.retained.get(&message.topic).map_or(0, |m| m.size());
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
            self.retained_bytes -= previous;
            return true;
        }
        let bytes = self.retained_bytes - previous + message.size();
        let new_topic = previous == 0 && !self.retained.contains_key(&message.topic);
        if bytes > self.limits.max_retained_bytes
            || (new_topic && self.retained.len() >= self.limits.max_retained)
        {
            return false;
        }
        self.retained
            .insert(message.topic.clone(), Arc::clone(message));
        self.retained_bytes = bytes;
        true
    }

    /// Delivers `message` to every matching subscription (one member of each shared group);
    /// `origin` is the publishing client, for No Local. Returns whether anyone matched.
    fn route(
        &mut self,
        message: &Arc<Message>,
        origin: Option<&str>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> bool {
        let mut matched = false;
        let mut groups: BTreeMap<String, Vec<(String, QoS, bool)>> = BTreeMap::new();
        for (client, session) in &mut self.sessions {
            let mut best: Option<(QoS, bool)> = None;
            for (key, sub) in &session.subscriptions {
                if !sub.filter.matches(&message.topic) {
                    continue;
                }
                if sub.filter.group.is_some() {
                    groups.entry(key.clone()).or_default().push((
                        client.clone(),
                        sub.qos,
                        sub.retain_as_published,
                    ));
                    continue;
                }
                if sub.no_local && origin == Some(client.as_str()) {
                    continue;
                }
                best = Some(match best {
                    Some((qos, rap)) => (higher(qos, sub.qos), rap || sub.retain_as_published),
                    None => (sub.qos, sub.retain_as_published),
                });
            }
            if let Some((qos, retain_as_published)) = best {
                matched = true;
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: lower(qos, message.qos),
                    retain: message.retain && retain_as_published,
                };
                session.deliver(delivery, &self.limits, now, out);
            }
        }
        for (key, members) in groups {
            // Connected members first; a group whose members are all away queues for one.
            let connected: Vec<&(String, QoS, bool)> = members
                .iter()
                .filter(|(c, _, _)| self.sessions.get(c).is_some_and(|s| s.conn.is_some()))
                .collect();
            let pool: Vec<&(String, QoS, bool)> = if connected.is_empty() {
                members.iter().collect()
            } else {
                connected
            };
            let turn = self.shared_turns.entry(key).or_default();
            let (client, qos, retain_as_published) = pool[*turn % pool.len()];
            *turn = turn.wrapping_add(1);
            if let Some(session) = self.sessions.get_mut(client) {
                matched = true;
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: lower(*qos, message.qos),
                    retain: message.retain && *retain_as_published,
                };
                session.deliver(delivery, &self.limits, now, out);
            }
        }
        matched
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        client: &str,
        subscribe: Subscribe,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut wanted_retained = Vec::new();
        for requested in subscribe.filters {
            let Some(filter) = Filter::parse(&requested.path) else {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            };
            // MQTT 5 3.8.3.1: No Local on a shared subscription is a protocol error.
            if filter.group.is_some() && requested.nolocal {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            let existed = session.subscriptions.contains_key(&requested.path);
            if !existed && session.subscriptions.len() >= self.limits.max_subscriptions {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let qos = lower(requested.qos, QoS::AtLeastOnce);
            let send_retained = filter.group.is_none()
                && match requested.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !existed,
                    RetainForwardRule::Never => false,
                };
            if send_retained {
                wanted_retained.push((filter.clone(), qos));
            }
            session.subscriptions.insert(
                requested.path,
                Subscription {
                    filter,
                    qos,
                    no_local: requested.nolocal,
                    retain_as_published: requested.preserve_retain,
                },
            );
            codes.push(SubscribeReasonCode::Success(qos));
        }
        out.push(Effect::Send(
            conn,
            Packet::SubAck(SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
                properties: None,
            }),
        ));
        if wanted_retained.is_empty() {
            return;
        }
        self.retained.retain(|_, m| !m.expired(now));
        self.retained_bytes = self.retained.values().map(|m| m.size()).sum();
        for (filter, qos) in wanted_retained {
            for message in self.retained.values().filter(|m| filter.matches(&m.topic)) {
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: lower(qos, message.qos),
                    retain: true,
                };
                session.deliver(delivery, &self.limits, now, out);
            }
        }
    }

    fn unsubscribe(
        &mut self,
        conn: ConnId,
        client: &str,
        unsubscribe: Unsubscribe,
        out: &mut Vec<Effect>,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|f| match session.subscriptions.remove(f) {
                Some(_) => UnsubAckReason::Success,
                None => UnsubAckReason::NoSubscriptionExisted,
            })
            .collect();
        out.push(Effect::Send(
            conn,
            Packet::UnsubAck(UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
                properties: None,
            }),
        ));
    }
}

fn lower(a: QoS, b: QoS) -> QoS {
    if a <= b {
        a
    } else {
        b
    }
}

fn higher(a: QoS, b: QoS) -> QoS {
    if a >= b {
        a
    } else {
        b
    }
}

fn disconnect(conn: ConnId, reason: DisconnectReasonCode) -> Effect {
    Effect::Send(conn, Packet::Disconnect(Disconnect::new(reason)))
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
