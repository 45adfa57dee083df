//! The hub's retained messages for Home Assistant, handed over without waiting: the hub's loop
//! puts them in a queue that keeps the latest message of each topic, in the order of those
//! latest ones, and a task of its own sends them, over an MQTT session of their own that
//! subscribes to nothing and holds the hub's Last Will.
//!
//! Both found by a hostile-input review, with births of a thousand processes each from one
//! device: awaited in the loop, which reads the fleet, answers the pages and hears SIGTERM,
//! the publishes left the hub deaf to all three for good; and sent on the session that reads
//! the fleet, they stopped after one window of acknowledgements (rumqttc's count of those in
//! flight stayed full while the broker dropped what it had for that session), so that even a
//! stop hung on them. Why they stopped is not known: a plain reproduction of that flood and
//! those publishes on one rumqttc session does not stall.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::bridge::{Bridge, Publish};
use crate::session::{Handle, Options, Session, SessionError};
use crate::settings::Settings;

/// How long a stop waits for what is queued (the bridge's goodbye last) to be handed to the
/// broker.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The latest message of each topic, in the order in which each came last.
#[derive(Debug, Default)]
struct Latest {
    next: u64,
    in_order: BTreeMap<u64, Publish>,
    place_of: HashMap<String, u64>,
}

impl Latest {
    /// `message` replaces one of its topic that waits, and goes after everything else: a
    /// retained message that a later one replaces needs never be sent. (A first view reads an
    /// agent's state before its heartbeat, and would otherwise say it away and back: Home
    /// Assistant's entities blinked unavailable at every start of the hub.)
    fn put(&mut self, message: Publish) {
        if let Some(earlier) = self.place_of.remove(&message.0) {
            self.in_order.remove(&earlier);
        }
        self.place_of.insert(message.0.clone(), self.next);
        self.in_order.insert(self.next, message);
        self.next += 1;
    }

    fn take(&mut self) -> Option<Publish> {
        let (_, message) = self.in_order.pop_first()?;
        self.place_of.remove(&message.0);
        Some(message)
    }
}

#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<Latest>,
    put: Notify,
    closed: AtomicBool,
}

/// Where the hub's loop puts what is to be published for Home Assistant.
pub struct Retained {
    shared: Arc<Shared>,
    sending: Option<Sending>,
}

/// The tasks of a hub that tells Home Assistant: one publishes what is put, one keeps the
/// session (reading what it says, which nothing else does) until it is told to close it.
struct Sending {
    publisher: JoinHandle<()>,
    keeper: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Retained {
    /// Connects the session that publishes, retained at QoS 1, with the bridge's goodbye as
    /// its Last Will.
    pub async fn connect(settings: &Settings) -> Result<Self, SessionError> {
        let options = Options {
            reconnect: true,
            will: Some(Bridge::gone()),
            // Back within a second of the broker: a broker that keeps what is retained
            // (`persistence true`) has the Last Will's "offline" for Home Assistant from its
            // restart until this session says otherwise, and Home Assistant shows every
            // entity unavailable meanwhile (5 s at the default's backoff, found by a
            // new-user run). A session that only publishes costs the broker little to retry.
            retry_at_most: Some(std::time::Duration::from_secs(1)),
            ..Options::default()
        };
        let mut session = Session::connect_with(settings, options).await?;
        let shared = Arc::new(Shared::default());
        let publisher = tokio::spawn(send(Arc::clone(&shared), session.handle()));
        let (stop, stopped) = oneshot::channel();
        let keeper = tokio::spawn(async move {
            tokio::select! {
                () = session.discard_incoming() => {}
                _ = stopped => {}
            }
            session.close().await;
        });
        let sending = Sending {
            publisher,
            keeper,
            stop,
        };
        Ok(Self {
            shared,
            sending: Some(sending),
        })
    }

    /// For a hub that tells Home Assistant nothing: nothing is put.
    pub fn none() -> Self {
        Self {
            shared: Arc::default(),
            sending: None,
        }
    }

    /// Queues `messages`, at once.
    pub fn put(&self, messages: Vec<Publish>) {
        if messages.is_empty() || self.sending.is_none() {
            return;
        }
        let mut waiting = (self.shared.waiting.lock()).unwrap_or_else(PoisonError::into_inner);
        messages
            .into_iter()
            .for_each(|message| waiting.put(message));
        drop(waiting);
        self.shared.put.notify_one();
    }

    /// Hands what is queued to the broker (for a while at most), and disconnects.
    pub async fn close(self) {
        let Some(sending) = self.sending else {
            return;
        };
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.put.notify_one();
        let publisher = sending.publisher.abort_handle();
        if tokio::time::timeout(STOP_WAIT, sending.publisher)
            .await
            .is_err()
        {
            tracing::warn!("messages for Home Assistant were still waiting at the stop");
            // Else it could hold the session's request queue full (the broker away), and the
            // DISCONNECT would wait behind it for ever.
            publisher.abort();
        }
        let _ = sending.stop.send(());
        let keeper = sending.keeper.abort_handle();
        if tokio::time::timeout(STOP_WAIT, sending.keeper)
            .await
            .is_err()
        {
            keeper.abort();
        }
    }
}

async fn send(shared: Arc<Shared>, session: Handle) {
    loop {
        let next = (shared.waiting.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match next {
            Some((topic, payload)) => {
                if let Err(e) = session.publish_retained(topic.clone(), payload).await {
                    tracing::warn!(%topic, error = %e, "cannot publish for Home Assistant");
                }
            }
            None if shared.closed.load(Ordering::Relaxed) => return,
            None => shared.put.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_message_of_a_topic_goes_out_in_the_order_of_the_last_ones() {
        let m = |topic: &str, payload: &str| (topic.to_owned(), payload.as_bytes().to_vec());
        let mut latest = Latest::default();
        for message in [
            m("respawn-ha/door-pi/availability", "offline"),
            m("homeassistant/sensor/door-pi/x/config", "{}"),
            m("respawn-ha/door-pi/availability", "online"),
            m("respawn-ha/hub", "online"),
        ] {
            latest.put(message);
        }
        let sent: Vec<Publish> = std::iter::from_fn(|| latest.take()).collect();
        assert_eq!(
            sent,
            [
                m("homeassistant/sensor/door-pi/x/config", "{}"),
                m("respawn-ha/door-pi/availability", "online"),
                m("respawn-ha/hub", "online"),
            ]
        );
        assert!(latest.place_of.is_empty() && latest.in_order.is_empty());
        // A topic taken and put again goes out again.
        latest.put(m("respawn-ha/hub", "offline"));
        assert_eq!(latest.take(), Some(m("respawn-ha/hub", "offline")));
    }
}
