//! `respawnctl serve`: the fleet in a browser, live, with signed actions, and `/metrics` for
//! Prometheus. One MQTT session feeds the [`hub::Hub`] (the same fold as `respawnctl
//! status`), with a second one of its own for the events, which the broker keeps while the
//! hub is away; every change goes to the open pages as server-sent events, and to Home
//! Assistant through the [`bridge::Bridge`] and a third session, which only publishes.
//!
//! - [`config`] — `serve.toml`.
//! - [`auth`] — passwords, sessions, CSRF tokens, the login limit.
//! - [`hub`] — the pure fold, the events kept, the counts.
//! - `metrics` — `/metrics`, in Prometheus' text format.
//! - [`homeassistant`] — MQTT discovery of the fleet for Home Assistant, and its presses.
//! - [`bridge`] — what Home Assistant is told as the fleet changes (pure).
//! - `order` — a signed command of the hub's, for a page's button or a press.
//! - `retained` — what Home Assistant is told, handed to a task of its own that sends it.
//! - `web` — the HTTP side (axum): pages, the JSON API, the event stream, actions.
//!
//! This module is the hub's MQTT side: the fleet read at each connection, each message
//! relayed, the presses sent as restarts, until Ctrl-C or SIGTERM.

pub mod auth;
pub mod bridge;
pub mod config;
pub mod homeassistant;
pub mod hub;
mod metrics;
mod order;
mod retained;
mod web;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use respawn_common::messages::CommandName;
use respawn_common::signing::SigningKey;
use respawn_common::topics::{Filter, Topics};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{broadcast, mpsc};

use crate::output::ShownEvent;
use crate::request::Args;
use crate::session::{Message, Session, SessionError};
use crate::settings::Settings;
use bridge::{Bridge, Publish, Ticket};
use config::ServeConfig;
use homeassistant::{Press, Verdict};
use hub::{Change, Hub};
pub(crate) use order::{Failure, Order, COMMAND_TIMEOUT};
use retained::Retained;

/// What the pages are told, as it happens.
#[derive(Clone, Debug)]
pub enum Update {
    /// An agent changed: its id. Each page's stream writes it as it is when sent, so that a
    /// page that reads slowly holds ids, not a copy of a large agent per change.
    Agent(String),
    /// A new event (JSON).
    Event(String),
    /// The hub's own connection to the broker.
    Broker(bool),
    /// The hub started its view afresh: pages read it again.
    Resync,
}

/// Who the agents' audit says pressed a button in Home Assistant.
const HA_REQUESTER: &str = "homeassistant";

/// How often the hub looks for heartbeats that stopped.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the pages are told of a change in `hub`.
fn update(change: Change, hub: &Hub) -> Option<Update> {
    Some(match change {
        Change::Agent(id) => Update::Agent(id),
        Change::Event(event) => {
            let shown = ShownEvent::new(&event, hub.clock_of(&event.agent));
            Update::Event(serde_json::to_string(&shown).ok()?)
        }
    })
}

/// What the hub reads from the broker at each connection.
struct Subscriptions {
    /// The fleet's retained state, at QoS 0 so that the broker's queue limit for QoS 1 (1,000
    /// messages by default in Mosquitto) cannot drop part of a large fleet's.
    states: Vec<String>,
    /// Home Assistant's messages, at QoS 1.
    live: Vec<String>,
    /// Where retained messages of an earlier run may lie (Home Assistant's discovery), read
    /// once per connection.
    leftovers: Vec<String>,
}

impl Subscriptions {
    fn new(topics: &Topics, bridge: Option<&Bridge>) -> Self {
        let states = [Filter::States, Filter::Processes, Filter::Heartbeats];
        Self {
            states: states.map(|f| topics.filter(f)).to_vec(),
            live: bridge.map(Bridge::subscriptions).unwrap_or_default(),
            leftovers: bridge.map(Bridge::leftover_filters).unwrap_or_default(),
        }
    }

    /// Subscribes, and reads the retained state to its end (a marker after it, as
    /// `respawnctl status` does), so that what was left from before is judged against the
    /// whole fleet. The fleet's messages, and apart, the retained ones under `leftovers`.
    async fn read(
        &self,
        session: &mut Session,
        topics: &Topics,
    ) -> Result<(Vec<Message>, Vec<Publish>), SessionError> {
        let marker = session.marker(topics);
        // As published: a press left retained must not pass for one made now.
        let mut snapshot = match self.live.is_empty() {
            true => Vec::new(),
            false => {
                let live = session.subscribe_as_published(&self.live, QoS::AtLeastOnce);
                live.await?
            }
        };
        let all: Vec<String> = self.states.iter().chain(&self.leftovers).cloned().collect();
        snapshot.extend(session.snapshot(&all, &marker).await?);
        if !self.leftovers.is_empty() {
            session.unsubscribe(&self.leftovers).await?;
        }
        let (mut fleet, mut leftovers) = (Vec::new(), Vec::new());
        for m in snapshot {
            let matches = |f: &String| rumqttc::v5::mqttbytes::matches(&m.topic, f);
            match self.leftovers.iter().any(matches) && !self.states.iter().any(matches) {
                true => leftovers.push((m.topic, m.payload.to_vec())),
                false => fleet.push(m),
            }
        }
        Ok((fleet, leftovers))
    }
}

/// The hub's end of its MQTT session: each message folded into the hub, the pages told of
/// what it changed, Home Assistant told through the bridge, and its presses sent.
struct Relay {
    settings: Settings,
    hub: Arc<Mutex<Hub>>,
    updates: broadcast::Sender<Update>,
    bridge: Option<Bridge>,
    key: Option<Arc<SigningKey>>,
    /// What each press came to, for its "last command" sensor.
    outcomes: mpsc::UnboundedSender<(Ticket, String)>,
}

impl Relay {
    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the fleet at a connection (`again`: a reconnection, after which the hub starts
    /// afresh); what Home Assistant is to be told.
    async fn read_fleet(
        &mut self,
        session: &mut Session,
        subscriptions: &Subscriptions,
        again: bool,
    ) -> Result<Vec<Publish>, SessionError> {
        let topics = self.settings.topics.clone();
        let mut out = Vec::new();
        if again {
            // What the lost connection delivered last (the Last Wills a broker sends as it
            // shuts down) goes in before the fresh reading: after it, it would overwrite the
            // births that follow.
            for m in session.take_pending() {
                out.extend(self.take(&m));
            }
        }
        let (fleet, leftovers) = subscriptions.read(session, &topics).await?;
        if again {
            // What was cleared while the hub was away must not linger on the pages, nor in
            // Home Assistant.
            self.hub().forget_fleet();
            let _ = self.updates.send(Update::Resync);
        }
        let mut read = BTreeSet::new();
        for m in &fleet {
            let (answer, changed) = self.fold(m);
            out.extend(answer);
            read.extend(changed);
        }
        // What the broker dropped of a large fleet, asked for again (`Fleet::unsure`).
        let unsure = crate::reading::read_again(&topics, &self.hub().fleet().unsure());
        for m in crate::reading::reread(session, &topics, &unsure).await? {
            let (answer, changed) = self.fold(&m);
            out.extend(answer);
            read.extend(changed);
        }
        // Home Assistant is told of the agents once they are read whole: read afresh, an
        // agent's Last Will comes before its process states, and for that moment its
        // entities would seem gone (and what its "last command" sensors show with them).
        let Self { hub, bridge, .. } = self;
        if let Some(bridge) = bridge {
            let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
            for agent in &read {
                out.extend(bridge.agent(hub.fleet(), agent));
            }
            out.extend(bridge.after_reading(hub.fleet(), &leftovers, again));
        }
        Ok(out)
    }

    /// A message as it comes: a press, or news to take in. What to publish.
    fn heard(&mut self, m: &Message) -> Vec<Publish> {
        let pressed = match self.bridge {
            Some(_) => homeassistant::press(&m.topic, &m.payload, m.retain),
            None => None,
        };
        match pressed {
            Some(Press::Restart { agent, process }) => self.press(agent, process),
            Some(Press::Refused(why)) => tracing::warn!(topic = %m.topic, "{why}"),
            Some(Press::Retained(why)) => {
                tracing::warn!(topic = %m.topic, "{why}; clearing it from the broker");
                return vec![(m.topic.clone(), Vec::new())];
            }
            Some(Press::Cleared) => {}
            None => return self.take(m),
        }
        Vec::new()
    }

    /// Takes in news: Home Assistant's and the hubs' are answered, the fleet's folded into
    /// the hub, the pages and Home Assistant told of what it changed.
    fn take(&mut self, m: &Message) -> Vec<Publish> {
        let (mut out, changed) = self.fold(m);
        let Self { hub, bridge, .. } = self;
        if let (Some(agent), Some(bridge)) = (changed, bridge) {
            let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(bridge.agent_changed(hub.fleet(), &agent, Instant::now()));
        }
        out
    }

    /// Takes in news but for what Home Assistant is told of the fleet: the answers to Home
    /// Assistant's and the hubs', and the fleet's folded into the hub, the pages told; with
    /// the agent it changed.
    fn fold(&mut self, m: &Message) -> (Vec<Publish>, Option<String>) {
        let Self {
            hub,
            updates,
            bridge,
            ..
        } = self;
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let heard = bridge
            .as_mut()
            .and_then(|b| b.hear(&m.topic, &m.payload, hub.fleet()));
        if let Some(answer) = heard {
            return (answer, None);
        }
        let now = Instant::now();
        let change = hub.apply(&m.topic, &m.payload, now);
        hub.heard(m);
        if let Some(left) = m.expires_in {
            hub.heartbeat_lives(&m.topic, left, now);
        }
        let Some(change) = change else {
            return (Vec::new(), None);
        };
        let agent = match &change {
            Change::Agent(id) => Some(id.clone()),
            Change::Event(_) => None,
        };
        // With no page open, nobody reads the JSON: at 10,000 agents, a heartbeat every
        // 3 ms would be serialised for no one.
        if updates.receiver_count() > 0 {
            if let Some(update) = update(change, &hub) {
                let _ = updates.send(update);
            }
        }
        (Vec::new(), agent)
    }

    /// Heartbeats that stopped: their agents turn stale, on the pages and in Home Assistant;
    /// and the changes of entities that waited for their turn.
    fn expire(&mut self) -> Vec<Publish> {
        let Self {
            hub,
            updates,
            bridge,
            ..
        } = self;
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut out = match bridge.as_mut() {
            Some(bridge) => bridge.remakes_due(hub.fleet(), now),
            None => Vec::new(),
        };
        for change in hub.expire(now) {
            if let (Change::Agent(agent), Some(bridge)) = (&change, bridge.as_mut()) {
                out.extend(bridge.agent_changed(hub.fleet(), agent, now));
            }
            if let Some(update) = update(change, &hub) {
                let _ = updates.send(update);
            }
        }
        out
    }

    /// A Restart button pressed in Home Assistant: judged, then a signed restart in a task of
    /// its own (the hub goes on), its outcome on the process's "last command" sensor.
    fn press(&mut self, agent: String, process: String) {
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        let verdict = {
            let hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
            let can_sign = self.key.is_some();
            bridge.judge(hub.fleet(), &agent, &process, can_sign, Instant::now())
        };
        match verdict {
            Verdict::Restart => {
                let ticket = bridge.ticket(&agent, &process);
                tracing::info!(%agent, %process, "Home Assistant: restart");
                let (settings, key, hub) = (
                    self.settings.clone(),
                    self.key.clone(),
                    Arc::clone(&self.hub),
                );
                let done = self.outcomes.clone();
                tokio::spawn(async move {
                    let order = Order {
                        settings: &settings,
                        key: key.as_deref(),
                        hub: &hub,
                        requester: HA_REQUESTER,
                    };
                    let restart = CommandName::Restart;
                    let text = match order.send(restart, &agent, &process, Args::default()).await {
                        Ok(outcome) => web::outcome_text(restart, &agent, &process, &outcome),
                        Err(Failure::NoProcess(why) | Failure::Broker(why)) => why,
                    };
                    let _ = done.send((ticket, text));
                });
            }
            Verdict::Refused(why) => {
                tracing::warn!(%agent, %process, "Home Assistant press {why}");
                let _ = self.outcomes.send((bridge.ticket(&agent, &process), why));
            }
            Verdict::Ignored(why) => {
                tracing::warn!(%agent, %process, "Home Assistant press {why}");
            }
        }
    }
}

/// Runs the hub until Ctrl-C or SIGTERM.
pub async fn run(
    settings: &Settings,
    config: ServeConfig,
    key: Option<SigningKey>,
) -> anyhow::Result<ExitCode> {
    let bridge = (config.homeassistant.clone()).map(|ha| Bridge::new(settings.topics.clone(), ha));
    let mut session = Session::connect(settings, true).await?;
    let subscriptions = Subscriptions::new(&settings.topics, bridge.as_ref());
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
    let (updates, _) = broadcast::channel(1024);
    let mut relay = Relay {
        settings: settings.clone(),
        hub: Arc::new(Mutex::new(Hub::new(settings.topics.clone()))),
        updates: updates.clone(),
        bridge,
        key: key.map(Arc::new),
        outcomes: outcomes_tx,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let mut stop = crate::stop::Stop::on_ctrl_c_or_term()
        .map_err(|e| anyhow::Error::new(e).context("cannot watch for Ctrl-C and SIGTERM"))?;
    // Before the fleet is read, so that no event sent meanwhile is missed; closed if the
    // reading fails or is cut short, as a session kept for a hub that never ran would have
    // the broker queue the fleet's events for nobody.
    let mut events = EventTail::start(settings).await?;
    let retained = match relay.bridge {
        Some(_) => match Retained::connect(settings).await {
            Ok(retained) => retained,
            Err(e) => {
                events.close().await;
                return Err(e.into());
            }
        },
        None => Retained::none(),
    };
    let read = tokio::select! {
        read = relay.read_fleet(&mut session, &subscriptions, false) => Some(read),
        _ = stop.heard() => None,
    };
    let first = match read {
        Some(Ok(first)) => first,
        Some(Err(e)) => {
            events.close().await;
            retained.close().await;
            return Err(e.into());
        }
        None => {
            events.close().await;
            retained.close().await;
            session.close().await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let state = web::State::new(
        settings.clone(),
        config.clone(),
        relay.key.clone(),
        Arc::clone(&relay.hub),
        updates,
    );
    config.announce(&settings.broker);
    let server = tokio::spawn(web::serve(listener, state.clone()));
    retained.put(first);
    state.set_broker(Ok(()));
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    let mut connected = true;
    let ended = loop {
        if !connected {
            tokio::select! {
                ready = session.wait_connected() => {
                    let read = match ready {
                        Ok(()) => relay.read_fleet(&mut session, &subscriptions, true).await,
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(out) => {
                            retained.put(out);
                            state.set_broker(Ok(()));
                            connected = true;
                        }
                        Err(e @ SessionError::Closed) => break Err(e),
                        Err(e) => {
                            tracing::debug!(error = %e, "still no broker");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                _ = stop.heard() => break Ok(()),
            }
            continue;
        }
        // In this order: a press's outcome and the fleet's events, which come at their own
        // pace, are not kept waiting behind the states of a busy broker; and what has come is
        // taken in before heartbeats are expired, or a busy hub would take its own backlog for
        // agents gone silent.
        tokio::select! {
            biased;
            _ = stop.heard() => break Ok(()),
            Some((ticket, text)) = outcomes.recv() => {
                let shown = relay.bridge.as_mut().and_then(|b| b.outcome(ticket, text));
                retained.put(shown.into_iter().collect());
            }
            got = events.next() => match got {
                Some(m) => retained.put(relay.heard(&m)),
                None => break Err(events.why_ended().await),
            },
            message = session.recv() => match message {
                Ok(m) => retained.put(relay.heard(&m)),
                Err(e) => {
                    let why: &dyn std::fmt::Display = match &e {
                        SessionError::Lost(why) => why,
                        other => other,
                    };
                    state.set_broker(Err(why));
                    connected = false;
                }
            },
            _ = expiry.tick() => retained.put(relay.expire()),
        }
    };
    server.abort();
    if relay.bridge.is_some() {
        retained.put(vec![Bridge::gone()]);
    }
    retained.close().await;
    events.close().await;
    session.close().await;
    ended?;
    Ok(ExitCode::SUCCESS)
}

/// The fleet's events, in a session of their own that the broker keeps while the hub is
/// away (a network loss, a broker restart), queueing them: those an agent back first from a
/// broker restart sends from its spool before the hub has subscribed again reach the pages and
/// the counts all the same. Not the hub's main session: that one holds the shared
/// subscription to Home Assistant's presses, which a session kept for a hub gone would take
/// its share of. Read by a task of its own, so that the hub's loop takes each event from a
/// channel: what a resubscription brings is never dropped with a future the loop let go.
struct EventTail {
    events: mpsc::UnboundedReceiver<Message>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Why the session ended, when it ended by itself.
    task: Option<tokio::task::JoinHandle<Option<SessionError>>>,
}

impl EventTail {
    async fn start(settings: &Settings) -> Result<Self, SessionError> {
        let options = crate::session::Options::kept_while_away("serve");
        let mut session = Session::connect_with(settings, options).await?;
        let filter = [settings.topics.filter(Filter::Events)];
        let early = session.subscribe(&filter, QoS::AtLeastOnce).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let ended = tokio::select! {
                ended = pass_on(&mut session, &filter, early, &tx) => Some(ended),
                _ = &mut stopped => None,
            };
            // Nothing is to be queued for it once the hub is gone.
            let _ = session.unsubscribe(&filter).await;
            session.close().await;
            ended
        });
        Ok(Self {
            events,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The next event; `None` once its session has ended.
    async fn next(&mut self) -> Option<Message> {
        self.events.recv().await
    }

    /// Why the session ended by itself (a subscription refused, the session task gone).
    async fn why_ended(&mut self) -> SessionError {
        let ended = match self.task.take() {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        ended.unwrap_or(SessionError::Closed)
    }

    /// Ends the session, and what the broker would queue for it.
    async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

/// Passes on `early`, then each event as it comes, subscribing again after a lost
/// connection, until the session or the receiver ends; why it ended.
async fn pass_on(
    session: &mut Session,
    filter: &[String],
    early: Vec<Message>,
    to: &mpsc::UnboundedSender<Message>,
) -> SessionError {
    let mut messages = early;
    loop {
        for m in messages.drain(..) {
            if to.send(m).is_err() {
                return SessionError::Closed;
            }
        }
        messages = match session.recv().await {
            Ok(m) => vec![m],
            Err(e @ SessionError::Closed) => return e,
            Err(e) => {
                tracing::debug!(error = %e, "the hub's events: reconnecting");
                match crate::cmd::resubscribe(session, filter).await {
                    Ok(early) => early,
                    Err(e) => return e,
                }
            }
        };
    }
}
