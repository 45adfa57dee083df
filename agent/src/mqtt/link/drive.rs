//! The task that polls rumqttc: it hands every event to the link's books, passes commands to
//! the runtime, and reconnects with capped, jittered backoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttState};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, watch};

use super::core::Core;
use super::{lock, Inbound, MAX_IN_FLIGHT};
use crate::config::Backoff;
use crate::supervisor::{backoff_delay, Jitter};
use crate::throttle::{Throttle, Verdict};

/// Correlation data longer than this is not accepted: it is echoed in every reply.
const MAX_CORRELATION: usize = 1024;

/// A connection that lasted this long resets the reconnect backoff; shorter ones (a broker
/// that accepts and then drops the agent) keep it growing.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Drops everything rumqttc holds for a connection that is gone, as the next clean start would
/// drop it on the broker's side, and starts its packet ids over.
///
/// rumqttc is built to resume sessions: `clean()` moves unacknowledged publishes and unread
/// requests into `pending` to send them first on the next connection, and its packet-id state
/// survives. The link starts clean every time and resends events from the spool itself, so
/// those copies would arrive twice; worse, a publish held back for a packet-id collision would
/// block every request of every later connection. `pending` and `state` are public fields, but
/// what they hold is rumqttc's internal business: the version is pinned exactly, and
/// `forgets_everything_rumqttc_holds` fails if a new one keeps anything.
pub(super) fn forget_connection(eventloop: &mut EventLoop) {
    eventloop.clean();
    eventloop.pending.clear();
    eventloop.state = MqttState::new(MAX_IN_FLIGHT, false);
}

/// Reconnect delays: from 0.5 s doubling to 30 s with ±20 % jitter; 60 s after the broker
/// refused the credentials, which will not fix themselves quickly.
struct ReconnectBackoff {
    /// Connections that failed in a row.
    failures: u32,
    jitter: Jitter,
}

impl ReconnectBackoff {
    /// The same doubling as a crashing process's restarts.
    const DOUBLING: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    const REFUSED: Duration = Duration::from_secs(60);

    fn new(seed: u64) -> Self {
        Self {
            failures: 0,
            jitter: Jitter::new(seed),
        }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn after(&mut self, refused: bool) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = match refused {
            true => Self::REFUSED,
            false => backoff_delay(Self::DOUBLING, self.failures),
        };
        self.jitter.apply(base)
    }
}

/// Why a connection ended.
enum Problem {
    /// The broker refused the agent's credentials or identity.
    Refused(String),
    Lost(String),
}

/// Whether the broker refused the agent's credentials or identity.
fn refused(error: &ConnectionError) -> Option<String> {
    match error {
        ConnectionError::ConnectionRefused(code) => Some(respawn_common::mqtt::refusal(*code)),
        _ => None,
    }
}

/// Counts of commands dropped before they reached the runtime, by why.
#[derive(Clone, Debug, Default)]
pub(super) struct Unread(pub(super) Arc<Mutex<BTreeMap<&'static str, u64>>>);

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
pub(super) struct Inbox {
    pub(super) commands: mpsc::Sender<Inbound>,
    pub(super) unread: Unread,
}

/// Polls rumqttc forever (it makes no progress otherwise) and reports to the core. Never
/// awaits anything but the event loop and the reconnect delay.
pub(super) async fn drive(
    mut eventloop: EventLoop,
    core: Arc<Mutex<Core<AsyncClient>>>,
    inbox: Inbox,
    progress: watch::Sender<u64>,
    broker: respawn_common::mqtt::BrokerUrl,
    password_file: Option<PathBuf>,
) {
    let url = broker.to_string();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64);
    let mut backoff = ReconnectBackoff::new(seed);
    let mut failures: u32 = 0;
    let command_topic = lock(&core).command_topic();
    let bump = |progress: &watch::Sender<u64>| progress.send_modify(|n| *n = n.wrapping_add(1));
    let mut connected_at: Option<Instant> = None;
    let mut lives = respawn_common::mqtt::ShortLives::default();
    // Whoever can publish on the command topic decides how often these warnings would fire.
    let mut refusals = Throttle::new(10, Duration::from_secs(60));
    let mut shed_log = Throttle::new(10, Duration::from_secs(60));
    let mut shed_total: u64 = 0;
    let mut refuse = |why: &str| {
        if let Verdict::Allow { refused } = refusals.allow(Instant::now()) {
            tracing::warn!(similar_before = refused, "{why}");
        }
    };
    let mut ever_connected = false;
    // What the last failed attempt that was logged said: a new reason is logged at once (a
    // broker back with another certificate is not "connection refused" for minutes).
    let mut last_told: Option<String> = None;
    loop {
        let problem = match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                if lock(&core).connected {
                    Some(Problem::Lost("a second CONNACK on one connection".into()))
                } else {
                    let attempts = match failures {
                        1 => "1 failed attempt".to_owned(),
                        n => format!("{n} failed attempts"),
                    };
                    match (failures, ever_connected) {
                        (0, false) => tracing::info!(broker = %url, "connected to the broker"),
                        (0, true) => tracing::info!(broker = %url, "connected to the broker again"),
                        (_, true) => {
                            tracing::info!(broker = %url, "connected to the broker again after {attempts}")
                        }
                        (_, false) => {
                            tracing::info!(broker = %url, "connected to the broker after {attempts}")
                        }
                    }
                    ever_connected = true;
                    failures = 0;
                    last_told = None;
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
                let codes = &ack.return_codes;
                let accepted = codes.iter().all(respawn_common::mqtt::granted);
                if !accepted {
                    tracing::error!(topic = %command_topic, ?codes, "the broker refused the subscription to commands (check its ACL); asking again at each heartbeat");
                }
                lock(&core).on_subscribed(accepted);
                None
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(disconnect))) => {
                if disconnect.reason_code == DisconnectReasonCode::SessionTakenOver {
                    tracing::error!("another client connected with this agent's client id: is a second agent running with the same [agent] id, or someone else connecting with it?");
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
                None => Problem::Lost(respawn_common::mqtt::describe(
                    &error,
                    &broker,
                    !ever_connected,
                )),
            }),
        };
        let Some(mut problem) = problem else {
            continue;
        };
        let lasted = connected_at.take().map(|at| at.elapsed());
        if let (Some(n), Problem::Lost(words)) = (lasted.and_then(|d| lives.ended(d)), &mut problem)
        {
            let id = lock(&core).agent().to_owned();
            let client = super::client_id(&id);
            words.push_str(&format!("; the broker closed the last {n} connections within seconds of opening them: is a second agent running with the id {id:?} ([agent] id, the hostname by default: two Pis both named raspberrypi), or another client connecting as {client:?}?"));
        }
        let closing = {
            let mut core = lock(&core);
            forget_connection(&mut eventloop);
            core.on_disconnected();
            core.closing
        };
        bump(&progress);
        if closing {
            break;
        }
        if lasted.is_some_and(|d| d >= STABLE_CONNECTION) {
            backoff.reset();
        }
        // A connection that was open and ended is a loss, not a failed attempt to reach the
        // broker: a client id taken over ends one at a broker that is there.
        let lost_open = lasted.is_some();
        if !lost_open {
            failures += 1;
        }
        let refused = matches!(problem, Problem::Refused(_));
        let delay = backoff.after(refused);
        // Whole milliseconds: the wait as it is, not rounded to a second it does not last.
        let wait = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        match problem {
            Problem::Refused(why) => {
                let login = respawn_common::mqtt::login_words(&eventloop.options);
                let reread = match &password_file {
                    Some(file) => format!("; the password is read again from {}", file.display()),
                    None => String::new(),
                };
                tracing::error!(broker = %url, "the broker refused the connection{login}: {why}{reread}; retrying in {wait}")
            }
            Problem::Lost(error) if lost_open => {
                tracing::warn!(broker = %url, %error, "lost the connection to the broker; supervision goes on, events are kept; retrying in {wait}")
            }
            Problem::Lost(error)
                if failures == 1 || failures % 10 == 0 || last_told.as_ref() != Some(&error) =>
            {
                tracing::warn!(broker = %url, %error, "broker unreachable (attempt {failures}); supervision goes on, events are kept; retrying in {wait}");
                last_told = Some(error);
            }
            Problem::Lost(error) => {
                tracing::debug!(broker = %url, %error, "broker unreachable (attempt {failures})")
            }
        }
        tokio::time::sleep(delay).await;
        if let (Some(file), true) = (&password_file, refused) {
            renew_password(&mut eventloop.options, file);
        }
    }
}

/// Takes the password in `file` for the next connection when it is not the one tried: an
/// operator who corrects the file after a refusal need not restart the agent.
fn renew_password(options: &mut rumqttc::v5::MqttOptions, file: &Path) {
    let Some(login) = options.credentials() else {
        return;
    };
    match respawn_common::mqtt::read_password(file, respawn_common::config_file::read_text) {
        Ok(password) if password == login.password => {}
        Ok(password) => {
            tracing::info!(file = %file.display(), "the broker password changed; connecting with the new one");
            options.set_credentials(login.username, password);
        }
        Err(problem) => {
            tracing::warn!(%problem, "cannot read the broker password again; trying the one read before")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{PubAck, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{MqttOptions, Request};

    #[test]
    fn a_corrected_password_file_is_taken_for_the_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        let mut options = MqttOptions::new("door-pi", "127.0.0.1", 1883);
        options.set_credentials("door-pi", "mistyped");
        let mut tried_after = |file_text: &str| {
            std::fs::write(&file, file_text).unwrap();
            renew_password(&mut options, &file);
            let login = options.credentials().unwrap();
            (login.username, login.password)
        };
        let corrected = ("door-pi".to_owned(), "corrected".to_owned());
        assert_eq!(tried_after("corrected\n"), corrected);
        assert_eq!(tried_after("corrected\r\n"), corrected, "the same one");
        assert_eq!(
            tried_after("\n"),
            corrected,
            "an emptied file keeps the last"
        );
        std::fs::remove_file(&file).unwrap();
        renew_password(&mut options, &file);
        assert_eq!(
            options.credentials().unwrap().password,
            "corrected",
            "so does a removed one"
        );
    }

    /// The rumqttc release whose private state `forget_connection` was checked against.
    const RUMQTTC_CHECKED: &str = "0.25.1";

    #[test]
    fn rumqttc_is_the_release_forget_connection_was_checked_against() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|package| package.contains("name = \"rumqttc\""))
            .and_then(|package| package.lines().find_map(|l| l.strip_prefix("version = ")))
            .map(|v| v.trim_matches('"'));
        assert_eq!(
            version,
            Some(RUMQTTC_CHECKED),
            "rumqttc changed: check that forget_connection still leaves nothing behind, then update RUMQTTC_CHECKED"
        );
    }

    #[test]
    fn forgets_everything_rumqttc_holds() {
        let mut options = MqttOptions::new("agent", "127.0.0.1", 1883);
        options.set_outgoing_inflight_upper_limit(MAX_IN_FLIGHT);
        let (client, mut eventloop) = AsyncClient::new(options, 1);
        let publish = || Request::Publish(Publish::new("t", QoS::AtLeastOnce, "x", None));
        // Every packet id in flight, and one more publish held back for a collision…
        for _ in 0..=MAX_IN_FLIGHT {
            eventloop
                .state
                .handle_outgoing_packet(publish())
                .expect("rumqttc takes the publish");
        }
        assert!(eventloop.state.collision.is_some());
        // …and a request not yet read, which fills the queue.
        client
            .try_publish("t", QoS::AtLeastOnce, false, "queued")
            .expect("room for one request");
        assert!(client
            .try_publish("t", QoS::AtLeastOnce, false, "y")
            .is_err());

        forget_connection(&mut eventloop);

        assert!(eventloop.pending.is_empty(), "{:?}", eventloop.pending);
        assert_eq!(eventloop.state.inflight(), 0);
        assert!(eventloop.state.collision.is_none());
        assert!(eventloop.state.events.is_empty());
        // The queued request is gone, not kept to be sent on the next connection.
        client
            .try_publish("t", QoS::AtLeastOnce, false, "next")
            .expect("the queue was emptied");
        // Packet ids start over, free, and an acknowledgement from the old connection is
        // unsolicited.
        let written = eventloop
            .state
            .handle_outgoing_packet(publish())
            .expect("rumqttc takes the publish");
        assert!(matches!(written, Some(Packet::Publish(p)) if p.pkid == 1));
        assert!(eventloop
            .state
            .handle_incoming_packet(rumqttc::v5::Incoming::PubAck(PubAck::new(2, None)))
            .is_err());
    }

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
