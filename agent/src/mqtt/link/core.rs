//! The link's books, free of network I/O: which publish carries which event, what is in flight
//! under which packet id, what the spool still has to send, and what goes out again after a
//! reconnect. Each event is handed to the spool, which has it on disk before it is sent (the
//! tests give it a directory of their own). rumqttc's events come in as calls (`on_written`, `on_acked`…); requests go out
//! through [`Requests`], which is rumqttc's client in the agent and a recorder in tests.
//!
//! rumqttc reports no completion per publish, only `Outgoing::Publish(pkid)` when a request is
//! written and `PubAck(pkid)` when the broker has it. Requests are written in the order they are
//! queued, so a FIFO of what was queued tells which pkid carries which event. On a disconnect
//! the link discards everything rumqttc still holds (the session is not resumed: a clean start
//! each time), so the FIFO and rumqttc never disagree; unacknowledged events are simply sent
//! again from the spool, with their original id.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::{
    AgentState, Event, EventKind, Heartbeat, LogBatch, Notify, Presence, ProcessReport, VERSION,
};
use respawn_common::status::ProcessStatus;
use respawn_common::time::ClockOffset;
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, PublishProperties, RetainForwardRule};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;

use super::{Identity, MAX_PACKET};
use crate::mqtt::spool::Spool;
use crate::throttle::{Throttle, Verdict};

mod acks;
mod waiting;

use waiting::WaitingReply;

/// Events sent but not yet acknowledged at any time.
const EVENT_WINDOW: usize = 32;

/// Where the link's requests go. rumqttc queues them without waiting; `Err` means its queue
/// is full.
pub(super) trait Requests {
    fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) -> Result<(), String>;
    fn subscribe(&self, filter: Filter) -> Result<(), String>;
}

impl Requests for AsyncClient {
    fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
    ) -> Result<(), String> {
        match properties {
            Some(p) => self.try_publish_with_properties(topic, qos, retain, payload, p),
            None => self.try_publish(topic, qos, retain, payload),
        }
        .map_err(|e| e.to_string())
    }

    fn subscribe(&self, filter: Filter) -> Result<(), String> {
        self.try_subscribe_many([filter]).map_err(|e| e.to_string())
    }
}

/// What became of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Queued {
    Yes,
    NotConnected,
    /// Larger than the broker accepts: it never will be sent.
    TooLarge,
    /// rumqttc's request queue is full.
    Full,
}

/// What a queued publish carries, to act on its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    Event(u64),
    Goodbye,
    Other,
}

/// The link's state, shared by the runtime (which queues) and the task that drives rumqttc
/// (which reports progress). Never held across an await.
pub(super) struct Core<R> {
    pub(super) requests: R,
    pub(super) topics: Topics,
    identity: Identity,
    heartbeat: Duration,
    pub(super) session: String,
    /// When this connection was made: the birth's `since`, unchanged when the birth is
    /// published again (after a reload or a session renewal) within it.
    online_since: SystemTime,
    pub(super) connected: bool,
    pub(super) closing: bool,
    /// Queued, not yet written.
    queued: VecDeque<Tag>,
    /// Written, awaiting PUBACK, by pkid.
    in_flight: HashMap<u16, Tag>,
    /// A publish rumqttc holds back until its pkid is free again.
    collided: Option<(u16, Tag)>,
    pub(super) spool: Spool,
    /// Spool entries (from the front) queued on this connection.
    pub(super) spool_queued: usize,
    /// The latest retained state of every process.
    processes: BTreeMap<String, Vec<u8>>,
    /// Processes whose latest state could not be queued; sent again as soon as rumqttc's
    /// queue has room (or on the next change, heartbeat or connection).
    unsent: BTreeSet<String>,
    /// Replies that found the queue full.
    waiting_replies: VecDeque<WaitingReply>,
    /// Publishes that found the queue full, logged.
    queue_full: Throttle,
    /// Removed processes whose retained state still has to be cleared.
    to_clear: BTreeSet<String>,
    max_packet: usize,
    pub(super) goodbye_acked: bool,
    last_heartbeat: Option<Heartbeat>,
    /// Whether the broker refused this connection's subscription to commands: it is asked
    /// again at each heartbeat (a broker may refuse one now and then: rmqtt's ACL does).
    commands_refused: bool,
    /// Messages the broker refused, logged: a wrong ACL refuses every one.
    refusals: Throttle,
    /// Events the broker refused for now (a quota, a busy moment), by seq, with how often on
    /// this connection.
    refused_for_now: HashMap<u64, u32>,
    /// Those of them to send again at the next heartbeat.
    to_retry: Vec<u64>,
}

impl<R: Requests> Core<R> {
    pub(super) fn new(
        requests: R,
        topics: Topics,
        identity: Identity,
        heartbeat: Duration,
        spool: Spool,
    ) -> Self {
        Self {
            requests,
            topics,
            identity,
            heartbeat,
            session: String::new(),
            online_since: SystemTime::now(),
            connected: false,
            closing: false,
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            collided: None,
            spool,
            spool_queued: 0,
            processes: BTreeMap::new(),
            unsent: BTreeSet::new(),
            waiting_replies: VecDeque::new(),
            queue_full: Throttle::new(5, Duration::from_secs(60)),
            to_clear: BTreeSet::new(),
            max_packet: MAX_PACKET,
            goodbye_acked: false,
            last_heartbeat: None,
            commands_refused: false,
            refusals: Throttle::new(5, Duration::from_secs(60)),
            refused_for_now: HashMap::new(),
            to_retry: Vec::new(),
        }
    }

    /// Records a lifecycle event in the spool and queues it when it can.
    pub(super) fn event(&mut self, process: Option<&str>, kind: EventKind) {
        let freed = self.spool.make_room(self.spool_queued);
        self.spool_queued = self.spool_queued.saturating_sub(freed);
        let event = Event {
            v: VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            seq: self.spool.next_seq(),
            agent: self.identity.agent.clone(),
            at: SystemTime::now(),
            process: process.map(str::to_owned),
            dropped_before: self.spool.take_dropped(),
            kind,
        };
        self.spool.push(&event);
        self.pump();
    }

    /// Queues a process's state (retained) if it changed.
    pub(super) fn process(&mut self, status: &ProcessStatus, notify: Notify) {
        let report = ProcessReport {
            v: VERSION,
            agent: self.identity.agent.clone(),
            status: status.clone(),
            notify,
        };
        let Ok(payload) = serde_json::to_vec(&report) else {
            return;
        };
        let name = status.name.clone();
        if self.processes.get(&name) == Some(&payload) && !self.unsent.contains(&name) {
            return;
        }
        self.processes.insert(name.clone(), payload);
        self.to_clear.remove(&name);
        self.unsent.insert(name.clone());
        self.send_state(&name);
    }

    /// Clears a removed process's retained state, now or after the next connection.
    pub(super) fn removed(&mut self, name: &str) {
        self.processes.remove(name);
        self.to_clear.insert(name.to_owned());
        self.clear_removed();
    }

    /// Starts a new session within the same connection, and says so in a new birth.
    pub(super) fn renew_session(&mut self) {
        if self.connected {
            self.session = new_session();
            self.publish_birth();
        }
    }

    /// The configuration was read again or applied: one birth says the new process names
    /// and, when who may command the agent changed (`renew`), a new session — two would
    /// tell a reader the same news twice. Nothing changed, no birth.
    pub(super) fn reconfigured(&mut self, names: Vec<String>, renew: bool) {
        let renamed = names != self.identity.processes;
        self.identity.processes = names;
        if renew && self.connected {
            self.session = new_session();
            self.publish_birth();
        } else if renamed {
            self.publish_birth();
        }
    }

    /// Publishes new lines of a followed process (QoS 0, not retained): live output is for
    /// whoever watches now, so nothing is kept while the broker is away.
    pub(super) fn log_batch(&mut self, batch: &LogBatch) {
        let Ok(payload) = serde_json::to_vec(batch) else {
            return;
        };
        let topic = self.topics.logs(&self.identity.agent, &batch.process);
        self.publish(topic, QoS::AtMostOnce, false, payload, None, Tag::Other);
    }

    /// The heartbeat, with the birth again: a Last Will that reaches a reader after the birth
    /// (a bridge flushing what it queued across a restart) would otherwise leave the agent
    /// `lost` there, and its commands refused, until its next connection.
    pub(super) fn heartbeat(&mut self, heartbeat: &Heartbeat) {
        self.last_heartbeat = Some(heartbeat.clone());
        if self.connected {
            self.publish_birth();
        }
        self.publish_heartbeat();
        if self.connected && self.commands_refused {
            self.subscribe_to_commands();
        }
        self.retry_refused();
        self.send_what_waits();
        // Events the disk refused, with no new event since to bring them to it.
        self.spool.write_back(false);
    }

    /// The broker's answer to the subscription to commands.
    pub(super) fn on_subscribed(&mut self, accepted: bool) {
        self.commands_refused = !accepted;
    }

    fn subscribe_to_commands(&mut self) {
        let mut commands = Filter::new(self.command_topic(), QoS::AtLeastOnce);
        // A retained command would run again at every connection: never take one. Stored ones
        // are not sent on subscription, and live ones keep their retain flag (else the broker
        // clears it), so that they can be told apart and ignored.
        commands.retain_forward_rule = RetainForwardRule::Never;
        commands.preserve_retain = true;
        if let Err(e) = self.requests.subscribe(commands) {
            tracing::error!(error = %e, "cannot subscribe to commands");
        }
    }

    /// Clears the heartbeat and queues the goodbye (retained `offline`); a goodbye that cannot
    /// be queued counts as acknowledged, since nothing will acknowledge it.
    pub(super) fn goodbye(&mut self) {
        self.closing = true;
        // The heartbeat would otherwise outlive the goodbye by up to three intervals.
        let heartbeat = self.topics.heartbeat(&self.identity.agent);
        self.publish(
            heartbeat,
            QoS::AtLeastOnce,
            true,
            Vec::new(),
            None,
            Tag::Other,
        );
        let goodbye = self.state(Presence::Offline);
        let topic = self.topics.state(&self.identity.agent);
        if self.publish(topic, QoS::AtLeastOnce, true, goodbye, None, Tag::Goodbye) != Queued::Yes {
            self.goodbye_acked = true;
        }
    }

    /// The agent's id, as its topics and client id carry it.
    pub(super) fn agent(&self) -> &str {
        &self.identity.agent
    }

    pub(super) fn command_topic(&self) -> String {
        self.topics.command(&self.identity.agent)
    }

    /// Whether a shutdown has nothing left to wait for.
    pub(super) fn said_goodbye(&self) -> bool {
        !self.connected || (self.goodbye_acked && self.spool_queued == 0)
    }

    /// Queues a publish if connected and small enough for the broker.
    fn publish(
        &mut self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        properties: Option<PublishProperties>,
        tag: Tag,
    ) -> Queued {
        if !self.connected {
            return Queued::NotConnected;
        }
        let size = packet_size(&topic, &payload, properties.as_ref());
        if size > self.max_packet {
            tracing::error!(
                topic,
                bytes = size,
                limit = self.max_packet,
                "message too large for the broker; not sent"
            );
            return Queued::TooLarge;
        }
        match self
            .requests
            .publish(topic, qos, retain, payload, properties)
        {
            Ok(()) => {
                self.queued.push_back(tag);
                Queued::Yes
            }
            Err(e) => {
                if let Verdict::Allow { refused } = self.queue_full.allow(Instant::now()) {
                    tracing::warn!(error = %e, similar_before = refused, "MQTT request queue full; the message waits for room");
                }
                Queued::Full
            }
        }
    }

    pub(super) fn state(&self, presence: Presence) -> Vec<u8> {
        let state = AgentState {
            state: presence,
            processes: self.identity.processes.clone(),
            session: Some(self.session.clone()),
            since: Some(match presence {
                Presence::Online => self.online_since,
                _ => SystemTime::now(),
            }),
            heartbeat_secs: Some(self.heartbeat.as_secs()),
            containment: Some(self.identity.containment.to_owned()),
            ..lost_state(&self.identity)
        };
        serde_json::to_vec(&state).unwrap_or_default()
    }

    fn publish_heartbeat(&mut self) {
        let Some(heartbeat) = &self.last_heartbeat else {
            return;
        };
        let Ok(payload) = serde_json::to_vec(heartbeat) else {
            return;
        };
        let expiry = respawn_common::messages::heartbeat_expiry_secs(self.heartbeat.as_secs());
        let topic = self.topics.heartbeat(&self.identity.agent);
        let properties = PublishProperties {
            message_expiry_interval: Some(expiry),
            ..Default::default()
        };
        self.publish(
            topic,
            QoS::AtMostOnce,
            true,
            payload,
            Some(properties),
            Tag::Other,
        );
    }

    /// The wall clock stepped by `moved`: what was timed by the old one is moved onto the new,
    /// and the birth told again.
    pub(super) fn clock_moved(&mut self, moved: ClockOffset) {
        self.identity.started = moved.their_now(self.identity.started);
        self.online_since = moved.their_now(self.online_since);
        if self.connected {
            self.publish_birth();
        }
    }

    pub(super) fn publish_birth(&mut self) {
        let birth = self.state(Presence::Online);
        let topic = self.topics.state(&self.identity.agent);
        self.publish(topic, QoS::AtLeastOnce, true, birth, None, Tag::Other);
    }

    fn publish_event(&mut self, seq: u64, payload: Vec<u8>) -> Queued {
        let topic = self.topics.event(&self.identity.agent);
        self.publish(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            None,
            Tag::Event(seq),
        )
    }

    /// Queues spooled events, oldest first, up to the window.
    fn pump(&mut self) {
        while self.connected && self.spool_queued < self.spool.len().min(EVENT_WINDOW) {
            let Some(entry) = self.spool.entries().get(self.spool_queued) else {
                break;
            };
            let (seq, payload) = (entry.seq, entry.payload.clone());
            match self.publish_event(seq, payload) {
                Queued::Yes => self.spool_queued += 1,
                Queued::TooLarge => {
                    // It can never be sent; keeping it would block every later event. The
                    // next event reports it as dropped.
                    let left = self.spool.discard(seq);
                    self.spool_queued = (self.spool_queued + 1).saturating_sub(left);
                }
                Queued::NotConnected | Queued::Full => break,
            }
        }
    }

    /// A new connection: subscribe to commands, and send the birth, every process's state,
    /// pending removals, the latest heartbeat and the spool.
    pub(super) fn on_connected(&mut self, ack: &ConnAck) {
        self.forget_requests();
        self.connected = true;
        self.session = new_session();
        self.online_since = SystemTime::now();
        self.max_packet = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .map_or(MAX_PACKET, |m| (m as usize).min(MAX_PACKET));
        self.commands_refused = false;
        self.subscribe_to_commands();
        self.publish_birth();
        self.unsent = self.processes.keys().cloned().collect();
        self.send_what_waits();
        if let Some(heartbeat) = &mut self.last_heartbeat {
            heartbeat.at = SystemTime::now();
        }
        self.publish_heartbeat();
        self.pump();
    }

    /// The connection is gone, and with it everything rumqttc held for it (see
    /// `drive::forget_connection`): nothing is queued or in flight any more.
    pub(super) fn on_disconnected(&mut self) {
        self.connected = false;
        self.session.clear();
        self.forget_requests();
    }

    fn forget_requests(&mut self) {
        self.spool.connection_lost();
        self.queued.clear();
        self.in_flight.clear();
        self.collided = None;
        self.spool_queued = 0;
        self.refused_for_now.clear();
        self.to_retry.clear();
    }

    /// rumqttc wrote a publish (`pkid` 0 for QoS 0).
    pub(super) fn on_written(&mut self, pkid: u16) {
        match self.collided {
            Some((collided, tag)) if collided == pkid => {
                self.collided = None;
                self.in_flight.insert(pkid, tag);
            }
            _ => {
                let tag = self.queued.pop_front().unwrap_or(Tag::Other);
                if pkid != 0 {
                    self.in_flight.insert(pkid, tag);
                }
            }
        }
        // A request written is room in rumqttc's queue: events and states that found it
        // full go now, not when the next change or acknowledgement comes (perhaps hours
        // later).
        self.pump();
        self.send_what_waits();
    }

    /// rumqttc holds the next publish back: its pkid is still in flight.
    pub(super) fn on_held_back(&mut self, pkid: u16) {
        let tag = self.queued.pop_front().unwrap_or(Tag::Other);
        self.collided = Some((pkid, tag));
    }
}

/// The agent's Last Will: only what holds without a connection.
pub(super) fn lost_state(identity: &Identity) -> AgentState {
    AgentState {
        v: VERSION,
        agent: identity.agent.clone(),
        state: Presence::Lost,
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        host: Some(identity.host.clone()),
        processes: Vec::new(),
        session: None,
        since: None,
        started: Some(identity.started),
        heartbeat_secs: None,
        containment: None,
    }
}

/// The size of a PUBLISH packet, slightly overestimated.
fn packet_size(topic: &str, payload: &[u8], properties: Option<&PublishProperties>) -> usize {
    let properties = properties.map_or(0, |p| {
        p.correlation_data.as_ref().map_or(0, |c| c.len() + 3)
            + p.response_topic.as_ref().map_or(0, |t| t.len() + 3)
            + p.content_type.as_ref().map_or(0, |t| t.len() + 3)
            + p.user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 5)
                .sum::<usize>()
            + 16
    });
    topic.len() + payload.len() + properties + 16
}

fn new_session() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
