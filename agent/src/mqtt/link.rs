//! The MQTT link: presence (birth, Last Will, goodbye), retained process states, events from the
//! durable spool, heartbeats, and commands in and replies out — over one MQTT 5 connection that
//! reconnects by itself with capped, jittered backoff.
//!
//! Supervision never waits on the link: every call from the runtime only queues a request
//! (`try_publish`), and while the broker is away nothing is queued at all — states are kept as
//! the latest value and events in the spool, and both go out after the next connection.
//!
//! rumqttc reports no completion per publish, only `Outgoing::Publish(pkid)` when a request is
//! written and `PubAck(pkid)` when the broker has it. Requests are written in the order they are
//! queued, so a FIFO of what was queued tells which pkid carries which event. On a disconnect
//! the link discards everything rumqttc still holds (the session is not resumed: a clean start
//! each time), so the FIFO and rumqttc never disagree; unacknowledged events are simply sent
//! again from the spool, with their original id.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::{
    AgentState, CommandReply, Event, EventKind, Heartbeat, Notify, Presence, ProcessReport, VERSION,
};
use respawn_common::status::ProcessStatus;
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, Packet, PubAckReason,
    PublishProperties, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, MqttState,
};
use rumqttc::{NetworkOptions, Outgoing};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::MqttConfig;
use crate::mqtt::spool::Spool;
use crate::supervisor::Jitter;
use crate::throttle::{Throttle, Verdict};

/// The largest packet the agent sends or accepts. Commands are small; replies to `logs` and
/// events with a log tail are kept well below this.
pub const MAX_PACKET: usize = 256 * 1024;

/// Events sent but not yet acknowledged at any time.
const EVENT_WINDOW: usize = 32;

/// Requests rumqttc may hold: a full birth (state, every process) plus the event window.
const REQUEST_CAPACITY: usize = 1024;

/// QoS 1 publishes awaiting PUBACK. rumqttc allocates a slot per possible packet id up front
/// (by default 65 536 of them, about 15 MiB); the event window needs far fewer.
const MAX_IN_FLIGHT: u16 = 64;

/// Commands waiting for the runtime.
const INBOUND_CAPACITY: usize = 64;

/// How long a graceful shutdown waits for the goodbye and the events in flight.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// Correlation data longer than this is not accepted: it is echoed in every reply.
const MAX_CORRELATION: usize = 1024;

/// A connection that lasted this long resets the reconnect backoff; shorter ones (a broker
/// that accepts and then drops the agent) keep it growing.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// What became of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queued {
    Yes,
    NotConnected,
    /// Larger than the broker accepts: it never will be sent.
    TooLarge,
    /// rumqttc's request queue is full.
    Full,
}

/// A command as it arrived on the agent's `cmd` topic.
#[derive(Debug)]
pub struct Inbound {
    pub payload: Vec<u8>,
    pub correlation: Option<Vec<u8>>,
}

/// What the agent says about itself in its birth message.
#[derive(Clone, Debug)]
pub struct Identity {
    pub agent: String,
    pub host: String,
    pub processes: Vec<String>,
}

/// The running link.
pub struct Link {
    core: Arc<Mutex<Core>>,
    /// Commands dropped before the runtime saw them, by why.
    unread: Unread,
    progress: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// What a queued publish carries, to act on its acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Event(u64),
    Goodbye,
    Other,
}

/// The link's state, shared by the runtime (which queues) and the task that drives rumqttc
/// (which reports progress). Never held across an await.
struct Core {
    client: AsyncClient,
    topics: Topics,
    identity: Identity,
    heartbeat: Duration,
    session: String,
    /// When this connection was made: the birth's `since`, unchanged when the birth is
    /// published again (after a reload or a session renewal) within it.
    online_since: SystemTime,
    connected: bool,
    closing: bool,
    /// Queued, not yet written.
    queued: VecDeque<Tag>,
    /// Written, awaiting PUBACK, by pkid.
    in_flight: HashMap<u16, Tag>,
    /// A publish rumqttc holds back until its pkid is free again.
    collided: Option<(u16, Tag)>,
    spool: Spool,
    /// Spool entries (from the front) queued on this connection.
    spool_queued: usize,
    /// The latest retained state of every process.
    processes: BTreeMap<String, Vec<u8>>,
    /// Processes whose latest state could not be queued; sent again on the next change or
    /// connection.
    unsent: BTreeSet<String>,
    /// Removed processes whose retained state still has to be cleared.
    to_clear: BTreeSet<String>,
    max_packet: usize,
    goodbye_acked: bool,
    last_heartbeat: Option<Heartbeat>,
    /// Messages the broker refused, logged: a wrong ACL refuses every one.
    refusals: Throttle,
}

impl Link {
    /// Starts the link; commands that arrive come out of the returned receiver.
    pub fn start(
        config: &MqttConfig,
        identity: Identity,
        spool: Spool,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), respawn_common::mqtt::TlsError> {
        let topics = config.topics.clone();
        let mut options = MqttOptions::new(
            format!("respawn-agent-{}", identity.agent),
            config.url.host.clone(),
            config.url.port,
        );
        let lost = AgentState {
            v: VERSION,
            agent: identity.agent.clone(),
            state: Presence::Lost,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            host: Some(identity.host.clone()),
            processes: Vec::new(),
            session: None,
            since: None,
            heartbeat_secs: None,
        };
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_start(true)
            .set_max_packet_size(Some(MAX_PACKET as u32))
            .set_connection_timeout(5)
            .set_outgoing_inflight_upper_limit(MAX_IN_FLIGHT)
            .set_last_will(LastWill::new(
                topics.state(&identity.agent),
                serde_json::to_vec(&lost).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
                None,
            ));
        if let (Some(user), password) = (&config.username, &config.password) {
            let password = password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        let mut network = NetworkOptions::new();
        // Without it every request/reply hop waits for Nagle (~40 ms).
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        options.set_transport(respawn_common::mqtt::transport(&config.url, &config.tls)?);

        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let core = Arc::new(Mutex::new(Core {
            client,
            topics: topics.clone(),
            identity,
            heartbeat: config.heartbeat,
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
            to_clear: BTreeSet::new(),
            max_packet: MAX_PACKET,
            goodbye_acked: false,
            last_heartbeat: None,
            refusals: Throttle::new(5, Duration::from_secs(60)),
        }));
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (progress_tx, progress) = watch::channel(0);
        let unread = Unread::default();
        let task = tokio::spawn(drive(
            eventloop,
            Arc::clone(&core),
            Inbox {
                commands: inbound_tx,
                unread: unread.clone(),
            },
            progress_tx,
            config.url.clone(),
        ));
        Ok((
            Self {
                core,
                unread,
                progress,
                task,
            },
            inbound_rx,
        ))
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Records a lifecycle event in the spool and sends it when it can.
    pub fn event(&self, process: Option<&str>, kind: EventKind) {
        let mut core = self.core();
        let freed = core.spool.make_room();
        core.spool_queued = core.spool_queued.saturating_sub(freed);
        let event = Event {
            v: VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            seq: core.spool.next_seq(),
            agent: core.identity.agent.clone(),
            at: SystemTime::now(),
            process: process.map(str::to_owned),
            dropped_before: core.spool.take_dropped(),
            kind,
        };
        core.spool.push(&event);
        core.pump();
    }

    /// Publishes a process's state (retained) if it changed.
    pub fn process(&self, status: &ProcessStatus, notify: Notify) {
        let mut core = self.core();
        let report = ProcessReport {
            v: VERSION,
            agent: core.identity.agent.clone(),
            status: status.clone(),
            notify,
        };
        let Ok(payload) = serde_json::to_vec(&report) else {
            return;
        };
        let name = status.name.clone();
        if core.processes.get(&name) == Some(&payload) && !core.unsent.contains(&name) {
            return;
        }
        core.processes.insert(name.clone(), payload.clone());
        core.to_clear.remove(&name);
        let topic = core.topics.process(&core.identity.agent, &name);
        match core.publish(topic, QoS::AtLeastOnce, true, payload, None, Tag::Other) {
            Queued::Yes | Queued::NotConnected => core.unsent.remove(&name),
            Queued::TooLarge | Queued::Full => core.unsent.insert(name),
        };
    }

    /// Clears a removed process's retained state.
    pub fn removed(&self, name: &str) {
        let mut core = self.core();
        core.processes.remove(name);
        core.to_clear.insert(name.to_owned());
        core.clear_removed();
    }

    /// Publishes the birth again: a command came for an old session, so the retained birth the
    /// sender read may be outdated (or lost with a broker restart).
    pub fn republish_birth(&self) {
        self.core().publish_birth();
    }

    /// Starts a new session within the same connection, and says so in a new birth: every
    /// command signed for the old one is stale from now on.
    pub fn renew_session(&self) {
        let mut core = self.core();
        if core.connected {
            core.session = new_session();
            core.publish_birth();
        }
    }

    /// The configured processes changed: a new birth message says so.
    pub fn processes_changed(&self, names: Vec<String>) {
        let mut core = self.core();
        core.identity.processes = names;
        core.publish_birth();
    }

    /// Replies to a command's requester, echoing its correlation data. Replies are not kept
    /// while the broker is away: the requester has given up by the time it is back.
    pub fn reply(&self, requester: &str, correlation: Option<Vec<u8>>, reply: &CommandReply) {
        let mut core = self.core();
        let Ok(payload) = serde_json::to_vec(reply) else {
            return;
        };
        let topic = core.topics.reply(&core.identity.agent, requester);
        let properties = PublishProperties {
            correlation_data: correlation.map(Into::into),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let queued = core.publish(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            Some(properties),
            Tag::Other,
        );
        if queued != Queued::Yes {
            tracing::warn!(cmd_id = %reply.cmd_id, ?queued, "reply not sent");
        }
    }

    /// Publishes a heartbeat (retained, QoS 0) that expires after three intervals. The latest
    /// one is kept and sent again, freshly dated, as soon as a connection is made, so that a
    /// reader never takes an agent that just connected for a stale one.
    pub fn heartbeat(&self, heartbeat: &Heartbeat) {
        let mut core = self.core();
        core.last_heartbeat = Some(heartbeat.clone());
        core.publish_heartbeat();
    }

    /// Commands dropped since the last call before the runtime saw them, by why: `shed`
    /// (too many were waiting), `retained`, `correlation_too_long`.
    pub fn take_unread(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.unread.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The session id of the current connection, as published in the birth (empty while
    /// disconnected). Signed commands must name it.
    pub fn session(&self) -> String {
        self.core().session.clone()
    }

    /// Says goodbye (retained `offline`), waits briefly for it and the events in flight to be
    /// acknowledged, and disconnects. Undelivered events stay in the spool for the next run.
    pub async fn shutdown(mut self) {
        {
            let mut core = self.core();
            core.closing = true;
            // The heartbeat would otherwise outlive the goodbye by up to three intervals.
            let heartbeat = core.topics.heartbeat(&core.identity.agent);
            core.publish(
                heartbeat,
                QoS::AtLeastOnce,
                true,
                Vec::new(),
                None,
                Tag::Other,
            );
            let goodbye = core.state(Presence::Offline);
            let topic = core.topics.state(&core.identity.agent);
            if core.publish(topic, QoS::AtLeastOnce, true, goodbye, None, Tag::Goodbye)
                != Queued::Yes
            {
                core.goodbye_acked = true;
            }
        }
        let done = |core: &Core| !core.connected || (core.goodbye_acked && core.spool_queued == 0);
        let wait = async {
            loop {
                if done(&self.core()) {
                    break;
                }
                if self.progress.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(GOODBYE_TIMEOUT, wait).await.is_err() {
            tracing::warn!("the broker did not acknowledge the goodbye in time");
        }
        let connected = {
            let core = self.core();
            if core.connected {
                let _ = core.client.try_disconnect();
            }
            core.connected
        };
        if connected {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        }
        self.task.abort();
        let core = self.core();
        if !core.spool.is_empty() {
            tracing::info!(
                events = core.spool.len(),
                "undelivered events stay in the spool for the next run"
            );
        }
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
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
        let result = match properties {
            Some(p) => self
                .client
                .try_publish_with_properties(topic, qos, retain, payload, p),
            None => self.client.try_publish(topic, qos, retain, payload),
        };
        match result {
            Ok(()) => {
                self.queued.push_back(tag);
                Queued::Yes
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT request queue full; message not sent");
                Queued::Full
            }
        }
    }

    fn state(&self, presence: Presence) -> Vec<u8> {
        let state = AgentState {
            v: VERSION,
            agent: self.identity.agent.clone(),
            state: presence,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            host: Some(self.identity.host.clone()),
            processes: self.identity.processes.clone(),
            session: Some(self.session.clone()),
            since: Some(match presence {
                Presence::Online => self.online_since,
                _ => SystemTime::now(),
            }),
            heartbeat_secs: Some(self.heartbeat.as_secs()),
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
        let expiry =
            u32::try_from(self.heartbeat.as_secs().saturating_mul(3).max(1)).unwrap_or(u32::MAX);
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

    fn publish_birth(&mut self) {
        let birth = self.state(Presence::Online);
        let topic = self.topics.state(&self.identity.agent);
        self.publish(topic, QoS::AtLeastOnce, true, birth, None, Tag::Other);
    }

    fn clear_removed(&mut self) {
        let names: Vec<String> = self.to_clear.iter().cloned().collect();
        for name in names {
            let topic = self.topics.process(&self.identity.agent, &name);
            if self.publish(topic, QoS::AtLeastOnce, true, Vec::new(), None, Tag::Other)
                == Queued::Yes
            {
                self.to_clear.remove(&name);
            }
        }
    }

    /// Queues spooled events, oldest first, up to the window.
    fn pump(&mut self) {
        while self.connected && self.spool_queued < self.spool.len().min(EVENT_WINDOW) {
            let Some(entry) = self.spool.entries().get(self.spool_queued) else {
                break;
            };
            let (seq, payload) = (entry.seq, entry.payload.clone());
            let topic = self.topics.event(&self.identity.agent);
            match self.publish(
                topic,
                QoS::AtLeastOnce,
                false,
                payload,
                None,
                Tag::Event(seq),
            ) {
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

    fn on_connected(&mut self, ack: &ConnAck) {
        self.connected = true;
        self.queued.clear();
        self.in_flight.clear();
        self.collided = None;
        self.spool_queued = 0;
        self.session = new_session();
        self.online_since = SystemTime::now();
        self.max_packet = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .map_or(MAX_PACKET, |m| (m as usize).min(MAX_PACKET));
        let mut commands = Filter::new(self.topics.command(&self.identity.agent), QoS::AtLeastOnce);
        // A retained command would run again at every connection: never take one. Stored ones
        // are not sent on subscription, and live ones keep their retain flag (else the broker
        // clears it), so that they can be told apart and ignored.
        commands.retain_forward_rule = RetainForwardRule::Never;
        commands.preserve_retain = true;
        if let Err(e) = self.client.try_subscribe_many([commands]) {
            tracing::error!(error = %e, "cannot subscribe to commands");
        }
        self.unsent.clear();
        self.publish_birth();
        let states: Vec<(String, Vec<u8>)> = self
            .processes
            .iter()
            .map(|(name, payload)| (name.clone(), payload.clone()))
            .collect();
        for (name, payload) in states {
            let topic = self.topics.process(&self.identity.agent, &name);
            self.publish(topic, QoS::AtLeastOnce, true, payload, None, Tag::Other);
        }
        self.clear_removed();
        if let Some(heartbeat) = &mut self.last_heartbeat {
            heartbeat.at = SystemTime::now();
        }
        self.publish_heartbeat();
        self.pump();
    }

    fn on_disconnected(&mut self) {
        self.connected = false;
        self.session.clear();
        self.queued.clear();
        self.in_flight.clear();
        self.collided = None;
        self.spool_queued = 0;
    }

    fn on_written(&mut self, pkid: u16) {
        if let Some((collided, tag)) = self.collided {
            if collided == pkid {
                self.collided = None;
                self.in_flight.insert(pkid, tag);
                return;
            }
        }
        let tag = self.queued.pop_front().unwrap_or(Tag::Other);
        if pkid != 0 {
            self.in_flight.insert(pkid, tag);
        }
    }

    fn on_held_back(&mut self, pkid: u16) {
        let tag = self.queued.pop_front().unwrap_or(Tag::Other);
        self.collided = Some((pkid, tag));
    }

    fn on_acked(&mut self, pkid: u16, reason: PubAckReason) {
        let Some(tag) = self.in_flight.remove(&pkid) else {
            return;
        };
        let refused = !matches!(
            reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        );
        if refused {
            if let Verdict::Allow { refused } = self.refusals.allow(Instant::now()) {
                tracing::error!(
                    ?reason,
                    ?tag,
                    similar_before = refused,
                    "the broker refused a message: check its ACL for this agent (with use_identity_as_username, [agent] id must be the CN of the agent's certificate)"
                );
            }
        }
        match tag {
            Tag::Event(seq) => {
                // A refused event would be refused again: it is dropped, and the next event
                // reports it.
                let left = if refused {
                    self.spool.discard(seq)
                } else {
                    self.spool.ack(seq)
                };
                self.spool_queued = self.spool_queued.saturating_sub(left);
                self.pump();
            }
            Tag::Goodbye => self.goodbye_acked = true,
            Tag::Other => {}
        }
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

/// Reconnect delays: from 0.5 s doubling to 30 s with ±20 % jitter; 60 s after the broker
/// refused the credentials, which will not fix themselves quickly.
struct ReconnectBackoff {
    next: Duration,
    jitter: Jitter,
}

impl ReconnectBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);
    const REFUSED: Duration = Duration::from_secs(60);

    fn new(seed: u64) -> Self {
        Self {
            next: Self::FIRST,
            jitter: Jitter::new(seed),
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn after(&mut self, refused: bool) -> Duration {
        let base = if refused { Self::REFUSED } else { self.next };
        self.next = (self.next * 2).min(Self::CAP);
        self.jitter.apply(base)
    }
}

/// Why a connection ended.
enum Problem {
    /// The broker refused the agent's credentials or identity.
    Refused(&'static str),
    Lost(String),
}

/// Whether the broker refused the agent's credentials or identity.
fn refused(error: &ConnectionError) -> Option<&'static str> {
    match error {
        ConnectionError::ConnectionRefused(code) => Some(match code {
            ConnectReturnCode::BadUserNamePassword => "bad username or password",
            ConnectReturnCode::NotAuthorized => "not authorized",
            ConnectReturnCode::Banned => "banned",
            ConnectReturnCode::BadClientId | ConnectReturnCode::ClientIdentifierNotValid => {
                "client id not accepted"
            }
            _ => "connection refused",
        }),
        _ => None,
    }
}

fn new_session() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Counts of commands dropped before they reached the runtime, by why.
#[derive(Clone, Debug, Default)]
struct Unread(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Unread {
    fn count(&self, why: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }
}

/// Where commands go: to the runtime, or, when they cannot, into the count of the unread.
struct Inbox {
    commands: mpsc::Sender<Inbound>,
    unread: Unread,
}

/// Polls rumqttc forever (it makes no progress otherwise) and reports to the core. Never
/// awaits anything but the event loop and the reconnect delay.
async fn drive(
    mut eventloop: EventLoop,
    core: Arc<Mutex<Core>>,
    inbox: Inbox,
    progress: watch::Sender<u64>,
    broker: respawn_common::mqtt::BrokerUrl,
) {
    let url = broker.to_string();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64);
    let mut backoff = ReconnectBackoff::new(seed);
    let mut failures: u32 = 0;
    let command_topic = {
        let core = lock(&core);
        core.topics.command(&core.identity.agent)
    };
    let bump = |progress: &watch::Sender<u64>| progress.send_modify(|n| *n = n.wrapping_add(1));
    let mut connected_at: Option<Instant> = None;
    // Whoever can publish on the command topic decides how often these warnings would fire.
    let mut refusals = Throttle::new(10, Duration::from_secs(60));
    let mut shed_log = Throttle::new(10, Duration::from_secs(60));
    let mut shed_total: u64 = 0;
    let mut refuse = |why: &str| {
        if let Verdict::Allow { refused } = refusals.allow(Instant::now()) {
            tracing::warn!(similar_before = refused, "{why}");
        }
    };
    loop {
        let problem = match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                if lock(&core).connected {
                    Some(Problem::Lost("a second CONNACK on one connection".into()))
                } else {
                    if failures > 0 {
                        tracing::info!(broker = %url, "connected to the broker again after {failures} failed attempts");
                    } else {
                        tracing::info!(broker = %url, "connected to the broker");
                    }
                    failures = 0;
                    connected_at = Some(Instant::now());
                    lock(&core).on_connected(&ack);
                    None
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                lock(&core).on_acked(ack.pkid, ack.reason);
                bump(&progress);
                None
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                let correlation = publish.properties.and_then(|p| p.correlation_data);
                if publish.topic != command_topic.as_bytes() {
                    // Not subscribed to anything else.
                } else if publish.retain {
                    inbox.unread.count("retained");
                    refuse("ignoring a retained command: commands must not be retained");
                } else if correlation
                    .as_ref()
                    .is_some_and(|c| c.len() > MAX_CORRELATION)
                {
                    inbox.unread.count("correlation_too_long");
                    refuse("ignoring a command with more than 1 KiB of correlation data");
                } else {
                    let message = Inbound {
                        payload: publish.payload.to_vec(),
                        correlation: correlation.map(|c| c.to_vec()),
                    };
                    if inbox.commands.try_send(message).is_err() {
                        shed_total += 1;
                        inbox.unread.count("shed");
                        if let Verdict::Allow { .. } = shed_log.allow(Instant::now()) {
                            tracing::warn!(
                                shed_so_far = shed_total,
                                "too many commands waiting: dropping commands (each is counted in the next audit event)"
                            );
                        }
                    }
                }
                None
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    tracing::error!(topic = %command_topic, codes = ?ack.return_codes, "the broker refused the subscription to commands (check its ACL)");
                }
                None
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(disconnect))) => {
                if disconnect.reason_code == DisconnectReasonCode::SessionTakenOver {
                    tracing::error!("another client connected with this agent's client id: is a second agent running with the same [agent] id?");
                } else {
                    tracing::warn!(reason = ?disconnect.reason_code, "the broker closed the connection");
                }
                None
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                lock(&core).on_written(pkid);
                None
            }
            Ok(MqttEvent::Outgoing(Outgoing::AwaitAck(pkid))) => {
                lock(&core).on_held_back(pkid);
                None
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                if lock(&core).closing {
                    break;
                }
                // rumqttc's answer to a protocol error it found; the connection is not usable.
                Some(Problem::Lost(
                    "the MQTT client gave up the connection".into(),
                ))
            }
            Ok(_) => None,
            Err(error) => Some(match refused(&error) {
                Some(why) => Problem::Refused(why),
                None => Problem::Lost(respawn_common::mqtt::describe(&error, &broker.host)),
            }),
        };
        let Some(problem) = problem else {
            continue;
        };
        let closing = {
            let mut core = lock(&core);
            // Whatever rumqttc still holds is discarded, as the next clean start would discard
            // it, and its state starts over: a publish held back for a packet id collision
            // would otherwise block every request of every later connection.
            eventloop.clean();
            eventloop.pending.clear();
            eventloop.state = MqttState::new(MAX_IN_FLIGHT, false);
            core.on_disconnected();
            core.closing
        };
        bump(&progress);
        if closing {
            break;
        }
        if connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE_CONNECTION)
        {
            backoff.reset();
        }
        failures += 1;
        let delay = backoff.after(matches!(problem, Problem::Refused(_)));
        // Whole milliseconds: the wait as it is, not rounded to a second it does not last.
        let wait = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        match problem {
            Problem::Refused(why) => {
                tracing::error!(broker = %url, "the broker refused the connection: {why}; retrying in {wait}")
            }
            Problem::Lost(error) if failures == 1 || failures % 10 == 0 => {
                tracing::warn!(broker = %url, %error, "broker unreachable (attempt {failures}); supervision goes on, events are kept; retrying in {wait}")
            }
            Problem::Lost(error) => {
                tracing::debug!(broker = %url, %error, "broker unreachable (attempt {failures})")
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_to_a_cap_and_slowly_after_a_refusal() {
        let mut backoff = ReconnectBackoff::new(3);
        let delays: Vec<Duration> = (0..10).map(|_| backoff.after(false)).collect();
        let within = |d: Duration, base: Duration| d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2);
        assert!(within(delays[0], Duration::from_millis(500)), "{delays:?}");
        assert!(within(delays[1], Duration::from_secs(1)), "{delays:?}");
        assert!(within(delays[9], Duration::from_secs(30)), "{delays:?}");
        assert!(within(backoff.after(true), Duration::from_secs(60)));
        backoff.reset();
        assert!(within(backoff.after(false), Duration::from_millis(500)));
    }
}
