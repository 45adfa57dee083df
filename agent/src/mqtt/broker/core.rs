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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, Login, Packet,
};

use super::session::{in_step, Message, Session, Will};
use crate::mqtt::OwnLogin;
use respawn_common::signing::same_secret;

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
    /// Bytes of QoS 1 messages queued and in flight for one session.
    pub max_session_bytes: usize,
    /// The same for all sessions together: clients away, or that do not acknowledge, must
    /// not take the memory of the supervisor the broker runs in.
    pub max_held_bytes: usize,
    /// QoS 1 messages sent to a client and not yet acknowledged.
    pub max_in_flight: u16,
    pub max_subscriptions: usize,
    /// What the subscriptions of all sessions together may take, each counted as
    /// [`subscription_cost`]: a session's own bound times the number of sessions kept is far
    /// more than a Pi has (found by a hostile-input review: 400 MB).
    pub max_subscription_bytes: usize,
    pub max_retained: usize,
    /// Topic, payload and property bytes of all retained messages.
    pub max_retained_bytes: usize,
    /// Of `max_retained` and `max_retained_bytes`, what only clients on this machine may
    /// fill: the agent's own presence and process states still go in when other machines
    /// have filled the rest.
    pub kept_for_this_machine: (usize, usize),
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
    pub max_client_id: usize,
    /// The longest topic filter a client may subscribe to.
    pub max_filter: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: 256 * 1024,
            max_sessions: 1024,
            max_queued: 1000,
            max_session_bytes: 8 * 1024 * 1024,
            max_held_bytes: 64 * 1024 * 1024,
            max_in_flight: 64,
            max_subscriptions: 256,
            max_subscription_bytes: 4 * 1024 * 1024,
            max_retained: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            kept_for_this_machine: (10_000, 8 * 1024 * 1024),
            connect_timeout: Duration::from_secs(10),
            max_client_id: 256,
            max_filter: 1024,
        }
    }
}

/// What a subscription to `filter` is counted as: the filter twice (the key it is kept under,
/// and the filter parsed) and the room of its entry.
pub(super) fn subscription_cost(filter: &str) -> usize {
    2 * filter.len() + 128
}

/// Whether `login` is the agent's own.
fn proves(own: &OwnLogin, login: Option<&Login>) -> bool {
    login.is_some_and(|login| same_secret(&login.password, &own.password))
}

/// What happened on a connection.
#[derive(Debug)]
pub enum Input {
    /// A connection was accepted, from a client on this machine or from elsewhere.
    Opened { from_this_machine: bool },
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

struct Connection {
    opened_at: Instant,
    /// What its retained messages, wills included, may fill: see
    /// [`Limits::kept_for_this_machine`].
    from_this_machine: bool,
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
    pub(super) limits: Limits,
    connections: HashMap<ConnId, Connection>,
    pub(super) sessions: BTreeMap<String, Session>,
    pub(super) retained: BTreeMap<String, Arc<Message>>,
    pub(super) retained_bytes: usize,
    /// What all sessions hold ([`Session::held`]).
    pub(super) held_bytes: usize,
    /// What the subscriptions of all sessions take ([`subscription_cost`]).
    pub(super) subscription_bytes: usize,
    delayed_wills: Vec<DelayedWill>,
    /// Whose turn it is next in each shared subscription.
    pub(super) shared_turns: HashMap<String, usize>,
    assigned_ids: u64,
    /// Kept sessions ended to make room for a new client.
    evicted: u64,
    /// The agent's own client id, kept for its link.
    reserved: Option<OwnLogin>,
    /// Connections refused for the reserved client id.
    impostors: u64,
}

impl Core {
    /// The connections that have a session (their CONNECT was answered).
    pub fn connected(&self) -> Vec<ConnId> {
        self.sessions.values().filter_map(|s| s.conn).collect()
    }

    /// Whether the client on `conn` connected from this machine.
    pub(super) fn is_from_this_machine(&self, conn: ConnId) -> bool {
        (self.connections.get(&conn)).is_some_and(|c| c.from_this_machine)
    }

    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            connections: HashMap::new(),
            sessions: BTreeMap::new(),
            retained: BTreeMap::new(),
            retained_bytes: 0,
            held_bytes: 0,
            subscription_bytes: 0,
            delayed_wills: Vec::new(),
            shared_turns: HashMap::new(),
            assigned_ids: 0,
            evicted: 0,
            reserved: None,
            impostors: 0,
        }
    }

    /// Whether `client` is the agent's own link, which always has room for its subscriptions.
    pub(super) fn is_the_agent(&self, client: &str) -> bool {
        self.reserved
            .as_ref()
            .is_some_and(|own| own.client_id == client)
    }

    /// Keeps the client id of `own` for whoever gives its password.
    pub fn reserve(&mut self, reserved: OwnLogin) {
        self.reserved = Some(reserved);
    }

    pub fn handle(&mut self, conn: ConnId, input: Input, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Opened { from_this_machine } => {
                self.connections.insert(
                    conn,
                    Connection {
                        opened_at: now,
                        from_this_machine,
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
                Packet::Connect(connect, will, login) => {
                    self.connect(conn, connect, will, login, now, out)
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
                    in_step(&mut self.held_bytes, session, |s, _| {
                        s.acked(ack.pkid, now, out)
                    });
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
        login: Option<Login>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let impostor = (self.reserved.as_ref())
            .is_some_and(|own| own.client_id == connect.client_id && !proves(own, login.as_ref()));
        if impostor {
            self.impostors += 1;
            if self.impostors.is_power_of_two() {
                tracing::warn!(
                    refused = self.impostors,
                    client_id = connect.client_id.as_str(),
                    "embedded broker: a client tried to connect with the agent's own client id; refused"
                );
            }
            return self.refuse(conn, ConnectReturnCode::NotAuthorized, out);
        }
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
        let will = will.map(|will| Will::from_packet(will, self.is_from_this_machine(conn)));
        let will = match will.transpose() {
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
            // A kept session gives way to a client that connects, the one away longest first:
            // clients that come with new ids and ask to be kept forever must not lock out
            // those that stay (the agent's own among them), even after a restart.
            if !self.evict_longest_away("as many sessions as it keeps", now, out) {
                return self.refuse(conn, ConnectReturnCode::QuotaExceeded, out);
            }
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
            self.remove_session(&client);
        }
        let session_present = self.sessions.contains_key(&client);
        let session = self.sessions.entry(client.clone()).or_default();
        session.conn = Some(conn);
        session.expiry = expiry;
        session.expires_at = None;
        session.away_since = None;
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
        in_step(&mut self.held_bytes, session, |s, _| s.resume(now, out));
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
    pub(super) fn fail(
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
        session.away_since = Some(now);
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
        let from_this_machine = will.from_this_machine;
        let message = Arc::new(will.message(now));
        if !message.retain || self.retain(&message, from_this_machine) {
            self.route(&message, None, now, out);
        }
    }

    /// Ends the kept session that has been away longest, for room (`why`) a client that is
    /// here needs; whether there was one.
    pub(super) fn evict_longest_away(
        &mut self,
        why: &str,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> bool {
        let longest_away = (self.sessions.iter())
            .filter_map(|(id, s)| Some((s.away_since?, id)))
            .min()
            .map(|(_, id)| id.clone());
        let Some(evicted) = longest_away else {
            return false;
        };
        self.evicted += 1;
        if self.evicted.is_power_of_two() {
            tracing::warn!(
                evicted = self.evicted,
                "embedded broker: {why}; the session away longest gives way to a client that is here"
            );
        }
        self.end_session(&evicted, now, out);
        true
    }

    fn end_session(&mut self, client: &str, now: Instant, out: &mut Vec<Effect>) {
        self.remove_session(client);
        if let Some(at) = self.delayed_wills.iter().position(|w| w.client == client) {
            let delayed = self.delayed_wills.remove(at);
            self.publish_will(delayed.will, now, out);
        }
    }
}

fn disconnect(conn: ConnId, reason: DisconnectReasonCode) -> Effect {
    Effect::Send(conn, Packet::Disconnect(Disconnect::new(reason)))
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
