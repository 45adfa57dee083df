//! respawnctl's connection to the broker: connect (or fail clearly within five seconds),
//! subscribe and wait for the acknowledgement, publish and receive; `snapshot` reads the
//! retained state whole.

mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::NetworkOptions;
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::settings::Settings;

/// How long connecting, subscribing or a snapshot may take.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// How long a reconnecting session waits after the broker refused it (a login, the ACL).
const REFUSED_RETRY: Duration = Duration::from_secs(10);

/// A message received.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub correlation: Option<Vec<u8>>,
    /// Sent as retained (a stored message, not a live one).
    pub retain: bool,
    /// How long it has left to live (its message expiry, less the time the broker kept it).
    pub expires_in: Option<std::time::Duration>,
    /// When it came, by our clock: a reading of the whole fleet is folded after it is all in.
    pub received: std::time::SystemTime,
    /// With [`Options::manual_acks`]: hand it to [`Session::ack`] once the message is safe.
    pub ack: Option<Ack>,
}

impl Message {
    /// How far the clock of the agent whose heartbeat this message carries is off ours:
    /// `heartbeat`, read from it already, or else read here.
    pub fn heartbeat_clock(
        &self,
        heartbeat: Option<&respawn_common::messages::Heartbeat>,
    ) -> Option<respawn_common::time::ClockOffset> {
        let read: respawn_common::messages::Heartbeat;
        let heartbeat = match heartbeat {
            Some(heartbeat) => heartbeat,
            None => {
                read = serde_json::from_slice(&self.payload).ok()?;
                &read
            }
        };
        heartbeat.clock_offset(self.received, self.retain, self.expires_in)
    }
}

/// The acknowledgement a QoS 1 message is owed (boxed: a publish with its properties is
/// larger than most messages, and a large fleet's snapshot queues 100,000 of them).
#[derive(Clone, Debug)]
pub struct Ack(Box<Publish>);

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Survive a lost connection (the caller resubscribes after [`Session::wait_connected`]).
    pub reconnect: bool,
    /// A fixed client id whose session the broker keeps (and queues QoS 1 messages for) this
    /// long while the client is away, instead of a fresh session per run.
    pub persistent: Option<(String, Duration)>,
    /// Acknowledge messages only through [`Session::ack`]: until then the broker redelivers
    /// them after a reconnection.
    pub manual_acks: bool,
    /// The longest wait between two attempts to connect again; default 10 s.
    pub retry_at_most: Option<Duration>,
    /// A retained message (topic, payload) the broker publishes at QoS 1 if the connection
    /// ends without a DISCONNECT.
    pub will: Option<(String, Vec<u8>)>,
}

impl Options {
    /// A session of this run (client id `respawnctl-{what}-…`) that survives a lost
    /// connection, and that the broker keeps for [`KEPT_WHILE_AWAY`], queueing what comes
    /// at QoS 1 meanwhile: a reader that tails events misses none of a network loss or a
    /// broker restart, even those an agent back before it says first.
    pub fn kept_while_away(what: &str) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Self {
            reconnect: true,
            persistent: Some((format!("respawnctl-{what}-{}", &run[..12]), KEPT_WHILE_AWAY)),
            ..Self::default()
        }
    }
}

/// How long the broker keeps a tail's session, and queues its events, while the connection
/// is lost.
pub const KEPT_WHILE_AWAY: Duration = Duration::from_secs(600);

enum Incoming {
    Connected,
    Subscribed(Vec<SubscribeReasonCode>),
    Message(Box<Message>),
    Lost(Loss),
}

/// Why a connection, or an attempt at one, failed.
#[derive(Debug)]
pub enum Loss {
    /// The broker refused the login, for this reason.
    Refused(String),
    /// Anything else, in words.
    Other(String),
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "refused: {reason}"),
            Self::Other(reason) => f.write_str(reason),
        }
    }
}

/// Why the session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the broker at {url} refused the connection{login}: {reason}")]
    Refused {
        url: String,
        /// Who was refused, in words to follow "the connection".
        login: String,
        reason: String,
    },
    #[error("no answer from the broker at {0} within {secs} s", secs = PATIENCE.as_secs())]
    Timeout(String),
    #[error("the broker at {url} took the connection and the subscriptions, but never delivered respawnctl's own marker on {topic} within {secs} s: does its ACL let this user write and read it (`topic readwrite <prefix>/_sync/#`, docs/security.md)? Mosquitto logs a refusal as \"Denied PUBLISH\"", secs = PATIENCE.as_secs())]
    MarkerUnanswered { url: String, topic: String },
    /// The task that drives the connection has ended: no reconnection will come.
    #[error("the connection to the broker ended for good")]
    Closed,
    #[error("the connection to the broker was lost: {0}")]
    Lost(Loss),
    #[error("the broker refused the subscription to {0} (check its ACL for this user)")]
    SubscriptionRefused(String),
    #[error("cannot send to the broker: {0}")]
    Send(String),
    #[error("{0}")]
    Tls(String),
}

/// A connected session.
pub struct Session {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Whether the connection is up, as far as the events read so far tell.
    connected: bool,
    /// Messages that arrived while waiting for something else.
    pending: std::collections::VecDeque<Message>,
    task: JoinHandle<()>,
    /// End markers sent so far, which numbers each.
    markers_sent: u64,
    /// Whether the broker has sent retained messages after a reading's end marker.
    retained_come_late: bool,
    url: String,
    /// Who the session logs in as, in words for a refusal.
    login: String,
    pub client_id: String,
    /// Set by whoever ends the session, before its DISCONNECT: the connection's task ends
    /// once that is written (rumqttc also writes one of its own after a protocol error, which
    /// a reconnecting session outlives).
    closing: Arc<AtomicBool>,
}

impl Session {
    /// Connects, waiting at most [`PATIENCE`]. With `reconnect`, the session survives a lost
    /// connection (the caller resubscribes after [`Session::wait_connected`]).
    pub async fn connect(settings: &Settings, reconnect: bool) -> Result<Self, SessionError> {
        Self::connect_with(
            settings,
            Options {
                reconnect,
                ..Options::default()
            },
        )
        .await
    }

    /// Connects as `options` say, waiting at most [`PATIENCE`].
    pub async fn connect_with(settings: &Settings, options: Options) -> Result<Self, SessionError> {
        let reconnect = options.reconnect;
        let manual_acks = options.manual_acks;
        let retry_at_most = options.retry_at_most.unwrap_or(Duration::from_secs(10));
        let client_id = match &options.persistent {
            Some((id, _)) => id.clone(),
            None => format!(
                "respawnctl-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
        };
        let persistent = options.persistent.as_ref().map(|(_, expiry)| *expiry);
        let will = options.will;
        let mut options = MqttOptions::new(
            client_id.clone(),
            settings.broker.host.clone(),
            settings.broker.port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(persistent.is_none())
            .set_connection_timeout(PATIENCE.as_secs())
            // Agents publish at most 256 KiB; anything far larger is not from one.
            .set_max_packet_size(Some(1024 * 1024))
            .set_outgoing_inflight_upper_limit(1024)
            .set_manual_acks(manual_acks);
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true, None));
        }
        if let Some(expiry) = persistent {
            options.set_session_expiry_interval(Some(
                u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX),
            ));
        }
        if let Some(user) = &settings.username {
            options.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
        }
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let login = respawn_common::mqtt::login_words(&options);
        let transport = respawn_common::mqtt::transport(&settings.broker, &settings.tls)
            .map_err(|e| SessionError::Tls(e.to_string()))?;
        options.set_transport(transport);
        let broker = settings.broker.clone();
        let (client, mut eventloop) = AsyncClient::new(options, 4096);
        let (tx, incoming) = mpsc::unbounded_channel();
        let named = client_id.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let ending = Arc::clone(&closing);
        let task = tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            let mut ever_connected = false;
            let mut lives = respawn_common::mqtt::ShortLives::default();
            let mut opened_at: Option<Instant> = None;
            loop {
                let forwarded = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        ever_connected = true;
                        opened_at = Some(Instant::now());
                        delay = Duration::from_millis(250);
                        tx.send(Incoming::Connected)
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        tx.send(Incoming::Subscribed(ack.return_codes))
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ack = (manual_acks && p.qos != QoS::AtMostOnce)
                            .then(|| Ack(Box::new(p.clone())));
                        let properties = p.properties.unwrap_or_default();
                        tx.send(Incoming::Message(Box::new(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            retain: p.retain,
                            payload: p.payload,
                            correlation: properties.correlation_data.map(|c| c.to_vec()),
                            expires_in: (properties.message_expiry_interval)
                                .map(|secs| Duration::from_secs(secs.into())),
                            received: std::time::SystemTime::now(),
                            ack,
                        })))
                    }
                    // Written: a session that does not reconnect is over.
                    Ok(Event::Outgoing(Outgoing::Disconnect))
                        if !reconnect || ending.load(Ordering::Relaxed) =>
                    {
                        read_to_the_end(&mut eventloop).await;
                        break;
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let mut why = describe(&e, &broker, !ever_connected);
                        if let (Some(n), Loss::Other(words)) = (
                            opened_at.take().and_then(|at| lives.ended(at.elapsed())),
                            &mut why,
                        ) {
                            words.push_str(&format!("; the broker closed the last {n} connections within seconds of opening them: is another client connected with client id {named:?}?"));
                        }
                        let sent = tx.send(Incoming::Lost(why));
                        if !reconnect || sent.is_err() {
                            break;
                        }
                        // A refused login is mended only by a change of configuration.
                        let wait = match e {
                            ConnectionError::ConnectionRefused(_) => delay.max(REFUSED_RETRY),
                            _ => delay,
                        };
                        tokio::time::sleep(wait).await;
                        delay = (delay * 2).min(retry_at_most);
                        Ok(())
                    }
                };
                if forwarded.is_err() {
                    break;
                }
            }
        });
        let mut session = Self {
            client,
            incoming,
            connected: false,
            pending: std::collections::VecDeque::new(),
            task,
            markers_sent: 0,
            retained_come_late: false,
            url: settings.broker.to_string(),
            login,
            client_id,
            closing,
        };
        if let Err(e) = session.wait_connected().await {
            // Its event loop would go on trying to connect, under the same client id as the
            // caller's next attempt.
            session.task.abort();
            return Err(e);
        }
        Ok(session)
    }

    /// The next event from the connection, noting whether it is up.
    async fn next_incoming(&mut self) -> Option<Incoming> {
        let incoming = self.incoming.recv().await;
        match &incoming {
            Some(Incoming::Connected) => self.connected = true,
            Some(Incoming::Lost(_)) | None => {
                self.connected = false;
                // An acknowledgement belongs to its connection: acknowledging on the next one
                // could answer another message by its number. The broker sends those again
                // if it kept the session (a repeat, which readers know by its id).
                for message in &mut self.pending {
                    message.ack = None;
                }
            }
            _ => {}
        }
        incoming
    }

    /// A handle that acknowledges messages and disconnects, usable while the session itself
    /// waits for messages.
    pub fn handle(&self) -> Handle {
        Handle(self.client.clone(), Arc::clone(&self.closing))
    }

    /// Waits until the (re)connection is made; at once if it is up. Messages that arrive
    /// meanwhile are kept for [`Session::recv`].
    pub async fn wait_connected(&mut self) -> Result<(), SessionError> {
        if self.connected {
            return Ok(());
        }
        let (url, login) = (self.url.clone(), self.login.clone());
        let wait = async {
            loop {
                match self.next_incoming().await {
                    Some(Incoming::Connected) => return Ok(()),
                    // Failed attempts pile up while a caller waits between its tries: only
                    // the latest says how things stand, and a connection made since wins.
                    Some(Incoming::Lost(reason)) => match self.incoming.is_empty() {
                        true => return Err(connect_error(&url, &login, reason)),
                        false => continue,
                    },
                    Some(Incoming::Message(m)) => self.pending.push_back(*m),
                    Some(Incoming::Subscribed(_)) => {}
                    None => return Err(SessionError::Closed),
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .map_err(|_| SessionError::Timeout(url.clone()))?
    }

    /// The messages kept while waiting for a reconnection or a subscription's confirmation:
    /// what the lost connection delivered before it was noticed lost. A reader that reads the
    /// state afresh takes them first, so that they cannot overwrite what it reads.
    pub fn take_pending(&mut self) -> Vec<Message> {
        self.pending.drain(..).collect()
    }

    /// Subscribes to `filters` and waits for the broker to confirm. Messages that arrive
    /// meanwhile are returned, after those kept from before (see [`Session::recv`]). When the
    /// connection is lost first, they are kept for the next subscription or `recv`: a session
    /// the broker keeps, acknowledging as messages come, will not send them again.
    pub async fn subscribe(
        &mut self,
        filters: &[String],
        qos: QoS,
    ) -> Result<Vec<Message>, SessionError> {
        self.subscribe_with(filters, qos, false).await
    }

    /// [`subscribe`](Self::subscribe), with each message's retain flag as its publisher set
    /// it: a message published retained while the subscription runs says so too (by default
    /// only those the broker had kept do).
    pub async fn subscribe_as_published(
        &mut self,
        filters: &[String],
        qos: QoS,
    ) -> Result<Vec<Message>, SessionError> {
        self.subscribe_with(filters, qos, true).await
    }

    async fn subscribe_with(
        &mut self,
        filters: &[String],
        qos: QoS,
        retain_as_published: bool,
    ) -> Result<Vec<Message>, SessionError> {
        let filter = |f: &String| Filter {
            preserve_retain: retain_as_published,
            ..Filter::new(f, qos)
        };
        let subscriptions: Vec<Filter> = filters.iter().map(filter).collect();
        self.client
            .subscribe_many(subscriptions)
            .await
            .map_err(|e| SessionError::Send(e.to_string()))?;
        // Patience with silence: retained messages may come before the confirmation.
        let confirmed = loop {
            let Ok(next) = tokio::time::timeout(PATIENCE, self.next_incoming()).await else {
                break Err(SessionError::Timeout(self.url.clone()));
            };
            match next {
                Some(Incoming::Subscribed(codes)) => break refused(filters, &codes),
                Some(Incoming::Message(m)) => self.pending.push_back(*m),
                Some(Incoming::Lost(reason)) => break Err(SessionError::Lost(reason)),
                Some(Incoming::Connected) => {}
                None => break Err(SessionError::Closed),
            }
        };
        confirmed.map(|()| self.take_pending())
    }

    /// Stops the messages of `filters` (the broker confirms later; what it sent before comes
    /// still).
    pub async fn unsubscribe(&self, filters: &[String]) -> Result<(), SessionError> {
        for filter in filters {
            self.client
                .unsubscribe(filter.clone())
                .await
                .map_err(|e| SessionError::Send(e.to_string()))?;
        }
        Ok(())
    }

    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        properties: PublishProperties,
    ) -> Result<(), SessionError> {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await
            .map_err(|e| SessionError::Send(e.to_string()))
    }

    /// The next message; `Err` when the connection is lost (a reconnecting session goes on
    /// afterwards: call [`Session::wait_connected`] and subscribe again).
    pub async fn recv(&mut self) -> Result<Message, SessionError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            match self.next_incoming().await {
                Some(Incoming::Message(m)) => return Ok(*m),
                Some(Incoming::Lost(reason)) => return Err(SessionError::Lost(reason)),
                Some(_) => {}
                None => return Err(SessionError::Closed),
            }
        }
    }

    /// Reads and drops what the connection says, until the session ends: for a session that
    /// only publishes, whose losses and reconnections would otherwise pile up unread (one a
    /// second while the broker is away).
    pub async fn discard_incoming(&mut self) {
        while self.next_incoming().await.is_some() {}
    }

    /// Acknowledges a message received with [`Options::manual_acks`].
    pub async fn ack(&self, ack: Ack) -> Result<(), SessionError> {
        self.handle().ack(ack).await
    }

    /// Disconnects politely.
    pub async fn close(self) {
        self.closing.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

/// Acknowledges, publishes and disconnects for a [`Session`] that is busy receiving.
#[derive(Clone)]
pub struct Handle(AsyncClient, Arc<AtomicBool>);

impl Handle {
    /// Publishes a retained message (QoS 1); an empty payload clears what was retained.
    pub async fn publish_retained(
        &self,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<(), SessionError> {
        (self.0)
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|e| SessionError::Send(e.to_string()))
    }

    pub async fn ack(&self, ack: Ack) -> Result<(), SessionError> {
        self.0
            .ack(&ack.0)
            .await
            .map_err(|e| SessionError::Send(e.to_string()))
    }

    pub async fn disconnect(&self) {
        self.1.store(true, Ordering::Relaxed);
        let _ = self.0.disconnect().await;
    }
}

/// After a DISCONNECT, reads what the broker still sends until it closes the connection. A
/// socket closed with packets unread in it is reset, and the reset can overtake the DISCONNECT:
/// the broker then takes the connection as lost ("closed its connection", "Broken pipe") and
/// publishes its will. Some brokers (rmqtt) leave the connection open after a DISCONNECT: a
/// short silence ends the wait too, and a broker that keeps talking is left after half a
/// second, well within the second that [`Session::close`] waits for it.
async fn read_to_the_end(eventloop: &mut EventLoop) {
    const SILENCE: Duration = Duration::from_millis(100);
    const AT_MOST: Duration = Duration::from_millis(500);
    let until = tokio::time::Instant::now() + AT_MOST;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(SILENCE, eventloop.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// The first of `filters` whose subscription the broker refused, as an error.
fn refused(filters: &[String], codes: &[SubscribeReasonCode]) -> Result<(), SessionError> {
    let refused = codes.iter().position(|c| !respawn_common::mqtt::granted(c));
    match refused {
        Some(i) => Err(SessionError::SubscriptionRefused(
            filters.get(i).cloned().unwrap_or_default(),
        )),
        None => Ok(()),
    }
}

fn describe(
    error: &ConnectionError,
    broker: &respawn_common::mqtt::BrokerUrl,
    first: bool,
) -> Loss {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            Loss::Refused(respawn_common::mqtt::refusal(*code))
        }
        ConnectionError::Timeout(_) => Loss::Other("no answer".into()),
        other => Loss::Other(respawn_common::mqtt::describe(other, broker, first)),
    }
}

fn connect_error(url: &str, login: &str, loss: Loss) -> SessionError {
    match loss {
        Loss::Refused(reason) => SessionError::Refused {
            url: url.to_owned(),
            login: login.to_owned(),
            reason,
        },
        Loss::Other(reason) => SessionError::Unreachable {
            url: url.to_owned(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session whose connection reports `script` and nothing else: no broker, the order
    /// of events is the test's.
    fn scripted(script: Vec<Incoming>) -> Session {
        let options = MqttOptions::new("scripted", "127.0.0.1", 1);
        let (client, eventloop) = AsyncClient::new(options, 16);
        let (tx, incoming) = mpsc::unbounded_channel();
        for event in script {
            tx.send(event).unwrap();
        }
        // Kept, not polled: the client's requests go nowhere, and the script never ends.
        let task = tokio::spawn(async move {
            let _held = (eventloop, tx);
            std::future::pending::<()>().await
        });
        Session {
            client,
            incoming,
            connected: true,
            pending: std::collections::VecDeque::new(),
            task,
            markers_sent: 0,
            retained_come_late: false,
            url: "mqtt://scripted".to_owned(),
            login: "anonymous".to_owned(),
            client_id: "scripted".to_owned(),
            closing: Arc::default(),
        }
    }

    fn message(topic: &str) -> Incoming {
        Incoming::Message(Box::new(Message {
            topic: topic.to_owned(),
            payload: bytes::Bytes::new(),
            correlation: None,
            retain: false,
            expires_in: None,
            received: std::time::SystemTime::UNIX_EPOCH,
            ack: None,
        }))
    }

    /// A message owed an acknowledgement, as a session with manual acknowledgements gets.
    fn owed(topic: &str) -> Incoming {
        let publish = Publish::new(topic, QoS::AtLeastOnce, Vec::new(), None);
        Incoming::Message(Box::new(Message {
            topic: topic.to_owned(),
            payload: bytes::Bytes::new(),
            correlation: None,
            retain: false,
            expires_in: None,
            received: std::time::SystemTime::UNIX_EPOCH,
            ack: Some(Ack(Box::new(publish))),
        }))
    }

    #[tokio::test]
    async fn a_message_from_a_lost_connection_is_kept_without_its_acknowledgement() {
        let mut session = scripted(vec![
            owed("e/1"),
            Incoming::Lost(Loss::Other("reset".to_owned())),
            Incoming::Connected,
            Incoming::Subscribed(vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]),
        ]);
        let filters = ["e/#".to_owned()];
        let lost = session.subscribe(&filters, QoS::AtLeastOnce).await;
        assert!(matches!(lost, Err(SessionError::Lost(_))), "{lost:?}");
        session.wait_connected().await.unwrap();
        let early = session.subscribe(&filters, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(topics(&early), ["e/1"]);
        assert!(
            early[0].ack.is_none(),
            "not to be acknowledged on another connection"
        );
    }

    /// Also what a wait for the reconnection keeps for `recv`.
    #[tokio::test]
    async fn a_message_kept_across_a_reconnection_loses_its_acknowledgement() {
        let mut session = scripted(vec![
            owed("e/1"),
            Incoming::Lost(Loss::Other("reset".to_owned())),
            Incoming::Connected,
        ]);
        session.connected = false;
        session.wait_connected().await.unwrap();
        let kept = session.recv().await.unwrap();
        assert_eq!(kept.topic, "e/1");
        assert!(
            kept.ack.is_none(),
            "not to be acknowledged on another connection"
        );
    }

    fn topics(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.topic.as_str()).collect()
    }

    #[tokio::test]
    async fn what_came_before_a_subscription_was_lost_comes_first_with_the_next() {
        let granted = || Incoming::Subscribed(vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        let mut session = scripted(vec![
            message("e/1"),
            message("e/2"),
            Incoming::Lost(Loss::Other("reset".to_owned())),
            Incoming::Connected,
            message("e/3"),
            granted(),
        ]);
        let filters = ["e/#".to_owned()];
        let lost = session.subscribe(&filters, QoS::AtLeastOnce).await;
        assert!(matches!(lost, Err(SessionError::Lost(_))), "{lost:?}");
        session.wait_connected().await.unwrap();
        let early = session.subscribe(&filters, QoS::AtLeastOnce).await.unwrap();
        assert_eq!(topics(&early), ["e/1", "e/2", "e/3"]);
    }
}
