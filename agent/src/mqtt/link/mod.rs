//! The MQTT link: presence (birth, Last Will, goodbye), retained process states, events from the
//! durable spool, heartbeats, and commands in and replies out — over one MQTT 5 connection that
//! reconnects by itself with capped, jittered backoff.
//!
//! Supervision never waits on the link: every call from the runtime only queues a request
//! (`try_publish`), and while the broker is away nothing is queued at all — states are kept as
//! the latest value and events in the spool, and both go out after the next connection.
//! `core` keeps the books (free of I/O, unit-tested), `drive` polls rumqttc.

mod core;
mod drive;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use respawn_common::messages::{CommandReply, EventKind, Heartbeat, LogBatch, Notify};
use respawn_common::status::ProcessStatus;
use respawn_common::time::ClockOffset;
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::NetworkOptions;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::core::Core;
use self::drive::{drive, Inbox, Unread};
use crate::config::MqttConfig;
use crate::mqtt::spool::Spool;

/// The largest packet the agent sends or accepts. Commands are small; replies to `logs` and
/// events with a log tail are kept well below this.
pub const MAX_PACKET: usize = 256 * 1024;

/// Requests rumqttc may hold: a full birth (state, every process) plus the event window.
const REQUEST_CAPACITY: usize = 1024;

/// QoS 1 publishes awaiting PUBACK. rumqttc allocates a slot per possible packet id up front
/// (by default 65 536 of them, about 15 MiB); the event window needs far fewer.
const MAX_IN_FLIGHT: u16 = 64;

/// Commands waiting for the runtime.
const INBOUND_CAPACITY: usize = 64;

/// How long a graceful shutdown waits for the goodbye and the events in flight.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// `cgroup` or `process-group`.
    pub containment: &'static str,
    /// When this run of the agent began, before any process was configured.
    pub started: SystemTime,
}

/// The running link.
pub struct Link {
    core: Arc<Mutex<Core<AsyncClient>>>,
    /// Commands dropped before the runtime saw them, by why.
    unread: Unread,
    progress: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// The MQTT client id of the agent `agent`.
pub fn client_id(agent: &str) -> String {
    format!("respawn-agent-{agent}")
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
            client_id(&identity.agent),
            config.url.host.clone(),
            config.url.port,
        );
        let lost = self::core::lost_state(&identity);
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
        // A client certificate may be the whole login.
        if let (Some(user), None) = (config.passwordless_user(), &config.cert_file) {
            tracing::warn!("[mqtt] username {user:?} has no password (no password_file, no $RESPAWN_PASSWORD): a broker that asks for one refuses the login");
        }
        if let (Some(user), password) = (&config.username, &config.password) {
            let password = password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            options.set_credentials(user.clone(), password);
        }
        let mut network = NetworkOptions::new();
        // Without it every request/reply hop waits for Nagle (~40 ms).
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        options.set_transport(respawn_common::mqtt::transport(&config.url, &config.tls())?);

        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let core = Arc::new(Mutex::new(Core::new(
            client,
            topics,
            identity,
            config.heartbeat,
            spool,
        )));
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
            config.username.as_ref().and(config.password_file.clone()),
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

    fn core(&self) -> MutexGuard<'_, Core<AsyncClient>> {
        lock(&self.core)
    }

    /// Records a lifecycle event in the spool and sends it when it can.
    pub fn event(&self, process: Option<&str>, kind: EventKind) {
        self.core().event(process, kind);
    }

    /// Publishes a process's state (retained) if it changed.
    pub fn process(&self, status: &ProcessStatus, notify: Notify) {
        self.core().process(status, notify);
    }

    /// Clears a removed process's retained state.
    pub fn removed(&self, name: &str) {
        self.core().removed(name);
    }

    /// Publishes the birth again: a command came for an old session, so the retained birth the
    /// sender read may be outdated (or lost with a broker restart).
    pub fn republish_birth(&self) {
        self.core().publish_birth();
    }

    /// The wall clock stepped by `moved`: the birth, which says when the agent started and
    /// went online, is told again by the new clock (and so is the Last Will at the next
    /// connection).
    pub fn clock_moved(&self, moved: ClockOffset) {
        self.core().clock_moved(moved);
    }

    /// Starts a new session within the same connection, and says so in a new birth: every
    /// command signed for the old one is stale from now on.
    pub fn renew_session(&self) {
        self.core().renew_session();
    }

    /// The configuration changed: a new birth says the processes `names`, and with `renew`
    /// a new session, for a change of who may command the agent.
    pub fn reconfigured(&self, names: Vec<String>, renew: bool) {
        self.core().reconfigured(names, renew);
    }

    /// Replies to a command's requester, echoing its correlation data. Replies are not kept
    /// while the broker is away: the requester has given up by the time it is back.
    pub fn reply(&self, requester: &str, correlation: Option<Vec<u8>>, reply: &CommandReply) {
        self.core().reply(requester, correlation, reply);
    }

    /// Publishes new lines of a followed process.
    pub fn log_batch(&self, batch: &LogBatch) {
        self.core().log_batch(batch);
    }

    /// Publishes a heartbeat (retained, QoS 0) that expires after three intervals. The latest
    /// one is kept and sent again, freshly dated, as soon as a connection is made, so that a
    /// reader never takes an agent that just connected for a stale one.
    pub fn heartbeat(&self, heartbeat: &Heartbeat) {
        self.core().heartbeat(heartbeat);
    }

    /// Commands dropped since the last call before the runtime saw them, by why: `shed`
    /// (too many were waiting), `retained`, `correlation_too_long`.
    pub fn take_unread(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.unread.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The session id of the current connection, as published in the birth (empty while
    /// disconnected). Signed commands must name it.
    /// Whether the link is connected to its broker now.
    pub fn is_connected(&self) -> bool {
        self.core().connected
    }

    pub fn session(&self) -> String {
        self.core().session.clone()
    }

    /// Says goodbye (retained `offline`), waits briefly for it and the events in flight to be
    /// acknowledged, and disconnects. Undelivered events stay in the spool for the next run.
    pub async fn shutdown(mut self) {
        self.core().goodbye();
        let wait = async {
            loop {
                if self.core().said_goodbye() {
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
                let _ = core.requests.try_disconnect();
            }
            core.connected
        };
        if connected {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        }
        self.task.abort();
        let mut core = self.core();
        core.spool.write_back(true);
        let unwritten = core.spool.unwritten();
        let on_disk = core.spool.len() - unwritten;
        if on_disk > 0 {
            tracing::info!(
                events = on_disk,
                "undelivered events stay in the spool for the next run"
            );
        }
        if unwritten > 0 {
            tracing::error!(
                events = unwritten,
                "undelivered events the disk refused are lost with this run; the next run reports them as dropped"
            );
        }
    }
}

fn lock<T>(core: &Mutex<T>) -> MutexGuard<'_, T> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}
