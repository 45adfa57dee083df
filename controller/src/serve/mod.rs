//! `respawnctl serve`: the fleet in a browser, live, with signed actions, and `/metrics` for
//! Prometheus. One MQTT session feeds the [`hub::Hub`] (the same fold as `respawnctl
//! status`); every change goes to the open pages as server-sent events.
//!
//! - [`config`] — `serve.toml`.
//! - [`auth`] — passwords, sessions, CSRF tokens, the login limit.
//! - [`hub`] — the pure fold, the events kept, the counts.
//! - `metrics` — `/metrics`, in Prometheus' text format.
//! - [`homeassistant`] — MQTT discovery of the fleet for Home Assistant.
//! - `web` — the HTTP side (axum): pages, the JSON API, the event stream, actions.

pub mod auth;
pub mod config;
pub mod homeassistant;
pub mod hub;
mod metrics;
mod web;

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use respawn_common::signing::SigningKey;
use respawn_common::topics::Filter;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::broadcast;

use crate::output::ShownEvent;
use crate::request::{Args, Job, Outcome, Request};
use crate::serve::homeassistant::Press;
use crate::session::{Session, SessionError};
use crate::settings::Settings;
use config::ServeConfig;
use hub::{Change, Hub};
use respawn_common::messages::CommandName;

/// What the pages are told, as it happens.
#[derive(Clone, Debug)]
pub enum Update {
    /// An agent as it now is (JSON).
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

/// How long a command of the hub waits for the agent.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command could not be sent.
pub(crate) enum Failure {
    NoProcess(String),
    Broker(String),
}

/// A command the hub sends, signed with its key, in someone's name.
pub(crate) struct Order<'a> {
    pub settings: &'a Settings,
    pub key: Option<&'a SigningKey>,
    pub hub: &'a Mutex<Hub>,
    /// The user (or `homeassistant`) the agent's audit names.
    pub requester: &'a str,
}

impl Order<'_> {
    /// Sends `command` to `agent`'s `process` and waits for its outcome.
    pub async fn send(
        &self,
        command: CommandName,
        agent: &str,
        process: &str,
        args: Args,
    ) -> Result<Outcome, Failure> {
        let agent_session = {
            let hub = self.hub.lock().unwrap_or_else(PoisonError::into_inner);
            let known = hub
                .fleet()
                .agent(agent)
                .filter(|a| a.process_names().contains(&process))
                .ok_or_else(|| Failure::NoProcess(format!("no process {agent}/{process}")))?;
            if let Some(not_sent) = crate::request::not_sent_to(Some(known.liveness())) {
                return Ok(not_sent);
            }
            known.session().map(str::to_owned)
        };
        let broker = |e: SessionError| Failure::Broker(e.to_string());
        let mut mqtt = Session::connect(self.settings, false)
            .await
            .map_err(broker)?;
        let request = Request {
            topics: &self.settings.topics,
            requester: self.requester,
            command,
            args,
            key: self.key,
            timeout: COMMAND_TIMEOUT,
        };
        let job = Job::new(agent, Some(process), agent_session.as_deref());
        let topics = &self.settings.topics;
        let outcome = crate::request::send_one(&mut mqtt, topics, &request, job).await;
        mqtt.close().await;
        outcome.map_err(broker)
    }
}

/// How often the hub looks for heartbeats that stopped.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the pages are told of a change.
fn update(hub: &Hub, change: Change) -> Option<Update> {
    Some(match change {
        Change::Agent(id) => Update::Agent(hub.agent_json(&id)),
        Change::Event(event) => {
            Update::Event(serde_json::to_string(&ShownEvent::new(&event)).ok()?)
        }
    })
}

/// Publishes retained messages for Home Assistant; a failure is logged (what was not sent
/// goes again when Home Assistant or the hub reconnects).
async fn publish(session: &Session, messages: Vec<(String, Vec<u8>)>) {
    for (topic, payload) in latest_per_topic(messages) {
        if let Err(e) = session.publish_retained(topic.clone(), payload).await {
            tracing::warn!(%topic, error = %e, "cannot publish for Home Assistant");
        }
    }
}

/// The last message of each topic, in the order of those last ones: retained messages that a
/// later one of the same topic replaces at once are not sent. A first view reads an agent's
/// state before its heartbeat, and would otherwise say it away and back (Home Assistant's
/// entities blinked unavailable at every start of the hub).
fn latest_per_topic(messages: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, (topic, _)) in messages.iter().enumerate() {
        last.insert(topic, i);
    }
    let keep: HashSet<usize> = last.into_values().collect();
    let kept = messages.into_iter().enumerate();
    kept.filter(|(i, _)| keep.contains(i))
        .map(|(_, m)| m)
        .collect()
}

/// What the hub reads from the broker at each connection.
struct Subscriptions {
    /// The fleet's retained state, at QoS 0 so that the broker's queue limit for QoS 1 (1,000
    /// messages by default in Mosquitto) cannot drop part of a large fleet's.
    states: Vec<String>,
    /// Events, and Home Assistant's messages, at QoS 1.
    events: Vec<String>,
    /// Where retained messages of an earlier run may lie (Home Assistant's discovery), read
    /// once per connection.
    leftovers: Vec<String>,
}

impl Subscriptions {
    /// Subscribes. The retained state is read to its end (a marker after it, as `respawnctl
    /// status` does), so that what was left from before is judged against the whole fleet:
    /// `afresh` runs once it is in hand, then `take` folds each message in, and what the
    /// broker dropped of a large fleet (`unsure`, asked of the folded fleet) is asked for
    /// again (see `read_fleet`). Returns the retained messages under `leftovers`.
    async fn subscribe(
        &self,
        session: &mut Session,
        topics: &respawn_common::topics::Topics,
        afresh: impl FnOnce(),
        mut take: impl FnMut(&crate::session::Message),
        unsure: impl Fn() -> Vec<Vec<String>>,
    ) -> Result<Vec<(String, Vec<u8>)>, SessionError> {
        let marker = session.marker(topics);
        // As published: a press left retained must not pass for one made now.
        let events = session.subscribe_as_published(&self.events, QoS::AtLeastOnce);
        let mut snapshot = events.await?;
        let all: Vec<String> = self.states.iter().chain(&self.leftovers).cloned().collect();
        snapshot.extend(session.snapshot(&all, &marker).await?);
        if !self.leftovers.is_empty() {
            session.unsubscribe(&self.leftovers).await?;
        }
        afresh();
        let mut leftovers = Vec::new();
        for m in snapshot {
            let matches = |f: &String| rumqttc::v5::mqttbytes::matches(&m.topic, f);
            match self.leftovers.iter().any(matches) && !self.states.iter().any(matches) {
                true => leftovers.push((m.topic, m.payload.to_vec())),
                false => take(&m),
            }
        }
        for m in crate::reading::reread(session, topics, &unsure()).await? {
            take(&m);
        }
        Ok(leftovers)
    }
}

/// Runs the hub until Ctrl-C or SIGTERM.
pub async fn run(
    settings: &Settings,
    config: ServeConfig,
    key: Option<SigningKey>,
) -> anyhow::Result<ExitCode> {
    let hub = Arc::new(Mutex::new(Hub::new(settings.topics.clone())));
    let (updates, _) = broadcast::channel(1024);
    let ha = config.homeassistant.clone();
    // Home Assistant hears that the hub is gone, however it goes.
    let hub_present = ha.is_some().then(|| {
        let topic = homeassistant::HUB_AVAILABILITY.to_owned();
        (topic, homeassistant::ONLINE.to_vec())
    });
    let options = crate::session::Options {
        reconnect: true,
        will: hub_present
            .clone()
            .map(|(topic, _)| (topic, homeassistant::OFFLINE.to_vec())),
        ..Default::default()
    };
    let mut session = Session::connect_with(settings, options).await?;
    let states = [Filter::States, Filter::Processes, Filter::Heartbeats];
    let mut subscriptions = Subscriptions {
        states: states.map(|f| settings.topics.filter(f)).to_vec(),
        events: vec![settings.topics.filter(Filter::Events)],
        leftovers: Vec::new(),
    };
    if let Some(ha) = &ha {
        subscriptions
            .events
            .push(homeassistant::status_topic(&ha.prefix));
        subscriptions.events.push(homeassistant::presses_filter());
        subscriptions
            .events
            .push(homeassistant::HUB_AVAILABILITY.to_owned());
        subscriptions.leftovers = homeassistant::leftover_filters(&ha.prefix).to_vec();
    }
    let mut presses = ha
        .as_ref()
        .map(|ha| homeassistant::Presses::new(ha.presses_per_minute));
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let mut published = homeassistant::Published::default();
    // Folds a message in; the agent it changed, if any.
    let fold = |m: &crate::session::Message| {
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let change = hub.apply(&m.topic, &m.payload, Instant::now())?;
        let agent = match &change {
            Change::Agent(id) => Some(id.clone()),
            Change::Event(_) => None,
        };
        // With no page open, nobody reads the JSON: at 10,000 agents, a heartbeat every
        // 3 ms would be serialised for no one.
        if updates.receiver_count() > 0 {
            if let Some(update) = update(&hub, change) {
                let _ = updates.send(update);
            }
        }
        agent
    };
    // What Home Assistant is to be told of `agent` now.
    let discovery = |published: &mut homeassistant::Published, agent: &str| {
        let Some(ha) = &ha else {
            return Vec::new();
        };
        let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let known = hub.fleet().agent(agent);
        let configs = homeassistant::configs(&settings.topics, &ha.prefix, &ha.allow, agent, known);
        let mut out = published.update(agent, configs);
        let up = known.map(|a| a.liveness() == crate::fleet::Liveness::Online);
        out.extend(published.availability(agent, up));
        out
    };
    let ha_status = ha
        .as_ref()
        .map(|ha| homeassistant::status_topic(&ha.prefix));
    // Takes in a message: the fold, and what Home Assistant is to be told of it.
    let take = |m: &crate::session::Message, published: &mut homeassistant::Published| {
        if m.topic == homeassistant::HUB_AVAILABILITY {
            // Another hub that stopped said the hubs are gone; this one is still here.
            return match (&hub_present, &m.payload[..]) {
                (Some(present), homeassistant::OFFLINE) => vec![present.clone()],
                _ => Vec::new(),
            };
        }
        if ha_status.as_deref() == Some(m.topic.as_str()) {
            // Home Assistant (re)started: it wants every discovery message again.
            return match &m.payload[..] {
                b"online" => published.all(),
                _ => Vec::new(),
            };
        }
        match fold(m) {
            Some(agent) => discovery(published, &agent),
            None => Vec::new(),
        }
    };
    // The agents the first view may lack something of, to read again.
    let unsure = || {
        let hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        crate::reading::read_again(&settings.topics, &hub.fleet().unsure())
    };
    // After a first view: what the hub's earlier runs (or this one, before the broker went
    // away) told Home Assistant of that is no longer so.
    // What an earlier run left is cleared; on a reconnection (`again`), what this run
    // published and the broker no longer keeps goes out again (at the first connection,
    // everything published was just sent).
    let sweep =
        |leftovers: &[(String, Vec<u8>)], published: &mut homeassistant::Published, again: bool| {
            let mut out: Vec<(String, Vec<u8>)> = Vec::new();
            if ha.is_some() {
                out.extend(published.leftovers(leftovers));
                for agent in published.agents() {
                    let gone = hub
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .fleet()
                        .agent(&agent)
                        .is_none();
                    if gone {
                        out.extend(discovery(published, &agent));
                    }
                }
                // After the agents that are gone, so that nothing of theirs goes out again.
                if again {
                    out.extend(published.missing(leftovers));
                }
            }
            out
        };
    let mut first = Vec::new();
    let leftovers = subscriptions
        .subscribe(
            &mut session,
            &settings.topics,
            || {},
            |m| first.extend(take(m, &mut published)),
            unsure,
        )
        .await?;
    first.extend(sweep(&leftovers, &mut published, false));
    first.extend(hub_present.clone());
    let key = key.map(Arc::new);
    let state = web::State::new(
        settings.clone(),
        config.clone(),
        key.clone(),
        Arc::clone(&hub),
        updates.clone(),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    eprintln!(
        "respawnctl serve: the fleet of {} on {}://{}/ ({})",
        settings.broker,
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        config.listen,
        match config.has_users() {
            true if config.users.len() == 1 => "1 user".into(),
            true => format!("{} users", config.users.len()),
            false => "no users: whoever reaches this address acts as `local`".into(),
        }
    );
    if let Some(warning) = config.open_metrics() {
        eprintln!("respawnctl serve: warning: {warning}");
    }
    let server = tokio::spawn(web::serve(listener, state.clone()));
    // Heartbeats that stopped; the agents that turned stale.
    let expire = || {
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let mut agents = Vec::new();
        for change in hub.expire(Instant::now()) {
            if let Change::Agent(id) = &change {
                agents.push(id.clone());
            }
            if let Some(update) = update(&hub, change) {
                let _ = updates.send(update);
            }
        }
        agents
    };
    // A Restart button pressed in Home Assistant: judged, then a signed restart in a task of
    // its own (the loop goes on), its outcome on the process's "last command" sensor.
    let press = |presses: &mut homeassistant::Presses, agent: String, process: String| {
        let allow = ha.as_ref().map_or(&[][..], |ha| &ha.allow[..]);
        let known = hub
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fleet()
            .agent(&agent)
            .is_some_and(|a| a.process_names().contains(&process.as_str()));
        let verdict = match presses.judge(allow, &agent, &process, known, Instant::now()) {
            homeassistant::Verdict::Restart if key.is_none() => {
                homeassistant::Verdict::Refused("refused: the hub has no signing key".into())
            }
            verdict => verdict,
        };
        let topic = homeassistant::last_command_topic(&agent, &process);
        match verdict {
            homeassistant::Verdict::Restart => {
                tracing::info!(%agent, %process, "Home Assistant: restart");
                let (settings, key, hub, done) = (
                    settings.clone(),
                    key.clone(),
                    Arc::clone(&hub),
                    outcomes_tx.clone(),
                );
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
                    let _ = done.send((topic, text.into_bytes()));
                });
            }
            homeassistant::Verdict::Refused(why) => {
                tracing::warn!(%agent, %process, "Home Assistant press {why}");
                let _ = outcomes_tx.send((topic, why.into_bytes()));
            }
            homeassistant::Verdict::Ignored(why) => {
                tracing::warn!(%agent, %process, "Home Assistant press {why}");
            }
        }
    };
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    publish(&session, first).await;
    state.set_broker(Ok(()));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut connected = true;
    loop {
        if !connected {
            tokio::select! {
                ready = session.wait_connected() => {
                    let mut out = Vec::new();
                    // Start afresh: what was cleared while the hub was away must not linger
                    // on the pages, nor in Home Assistant.
                    let afresh = || {
                        hub.lock().unwrap_or_else(PoisonError::into_inner).forget_fleet();
                        let _ = updates.send(Update::Resync);
                    };
                    let leftovers = match ready {
                        Ok(()) => {
                            // What the lost connection delivered last (the Last Wills a broker
                            // sends as it shuts down) goes in before the fresh reading: after
                            // it, it would overwrite the births that follow.
                            for m in session.take_pending() {
                                out.extend(take(&m, &mut published));
                            }
                            let take_in =
                                |m: &crate::session::Message| out.extend(take(m, &mut published));
                            let topics = &settings.topics;
                            subscriptions.subscribe(&mut session, topics, afresh, take_in, unsure).await
                        }
                        Err(e) => Err(e),
                    };
                    match leftovers {
                        Ok(leftovers) => {
                            out.extend(sweep(&leftovers, &mut published, true));
                            out.extend(hub_present.clone());
                            publish(&session, out).await;
                            state.set_broker(Ok(()));
                            connected = true;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "still no broker");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
            continue;
        }
        tokio::select! {
            message = session.recv() => match message {
                Ok(m) => {
                    let pressed = homeassistant::press(&m.topic, &m.payload, m.retain);
                    match presses.as_mut().zip(pressed) {
                        Some((presses, Press::Restart { agent, process })) => {
                            press(presses, agent, process)
                        }
                        Some((_, Press::Refused(why))) => tracing::warn!(topic = %m.topic, "{why}"),
                        Some((_, Press::Retained(why))) => {
                            tracing::warn!(topic = %m.topic, "{why}; clearing it from the broker");
                            publish(&session, vec![(m.topic.clone(), Vec::new())]).await;
                        }
                        Some((_, Press::Cleared)) => {}
                        None => {
                            let out = take(&m, &mut published);
                            publish(&session, out).await;
                        }
                    }
                }
                Err(e) => {
                    let why: &dyn std::fmt::Display = match &e {
                        SessionError::Lost(why) => why,
                        other => other,
                    };
                    state.set_broker(Err(why));
                    connected = false;
                }
            },
            _ = expiry.tick() => {
                for agent in expire() {
                    let out = discovery(&mut published, &agent);
                    publish(&session, out).await;
                }
            }
            Some(outcome) = outcomes.recv() => publish(&session, vec![outcome]).await,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    server.abort();
    if let Some((topic, _)) = hub_present {
        publish(&session, vec![(topic, homeassistant::OFFLINE.to_vec())]).await;
    }
    session.close().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_message_of_a_topic_goes_out_in_the_order_of_the_last_ones() {
        let m = |topic: &str, payload: &str| (topic.to_owned(), payload.as_bytes().to_vec());
        let sent = latest_per_topic(vec![
            m("respawn-ha/door-pi/availability", "offline"),
            m("homeassistant/sensor/door-pi/x/config", "{}"),
            m("respawn-ha/door-pi/availability", "online"),
            m("respawn-ha/hub", "online"),
        ]);
        assert_eq!(
            sent,
            [
                m("homeassistant/sensor/door-pi/x/config", "{}"),
                m("respawn-ha/door-pi/availability", "online"),
                m("respawn-ha/hub", "online"),
            ]
        );
    }
}
