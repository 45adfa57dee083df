//! `respawnctl serve`: the fleet in a browser, live, with signed actions, and `/metrics` for
//! Prometheus. One MQTT session feeds the [`hub::Hub`] (the same fold as `respawnctl
//! status`); every change goes to the open pages as server-sent events.
//!
//! - [`config`] — `serve.toml`.
//! - [`auth`] — passwords, sessions, CSRF tokens, the login limit.
//! - [`hub`] — the pure fold, the events kept, the metrics.
//! - `web` — the HTTP side (axum): pages, the JSON API, the event stream, actions.

pub mod auth;
pub mod config;
pub mod hub;
mod web;

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use respawn_common::signing::SigningKey;
use respawn_common::topics::Filter;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::broadcast;

use crate::session::Session;
use crate::settings::Settings;
use config::ServeConfig;
use hub::{Change, Hub};

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

/// How often the hub looks for heartbeats that stopped.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the pages are told of a change.
fn update(hub: &Hub, change: Change) -> Option<Update> {
    Some(match change {
        Change::Agent(id) => Update::Agent(hub.agent_json(&id).to_string()),
        Change::Event(event) => Update::Event(serde_json::to_string(&event).ok()?),
    })
}

/// Subscribes to the fleet's retained state and its events; what came meanwhile.
async fn subscribe(
    session: &mut Session,
    states: &[String],
    events: &[String],
) -> Result<Vec<crate::session::Message>, crate::session::SessionError> {
    let mut early = session.subscribe(states, QoS::AtMostOnce).await?;
    early.extend(session.subscribe(events, QoS::AtLeastOnce).await?);
    Ok(early)
}

/// Runs the hub until Ctrl-C or SIGTERM.
pub async fn run(
    settings: &Settings,
    config: ServeConfig,
    key: Option<SigningKey>,
) -> anyhow::Result<ExitCode> {
    let hub = Arc::new(Mutex::new(Hub::new(settings.topics.clone())));
    let (updates, _) = broadcast::channel(1024);
    let mut session = Session::connect(settings, true).await?;
    // The retained state at QoS 0, so that the broker's queue limit for QoS 1 (1,000
    // messages by default in Mosquitto) cannot drop part of a large fleet's; events at QoS 1.
    let states =
        [Filter::States, Filter::Processes, Filter::Heartbeats].map(|f| settings.topics.filter(f));
    let events = [settings.topics.filter(Filter::Events)];
    let early = subscribe(&mut session, &states, &events).await?;
    let state = web::State::new(
        settings.clone(),
        config.clone(),
        key,
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
            true => format!("{} users", config.users.len()),
            false => "no users: whoever reaches this address acts as `local`".into(),
        }
    );
    let server = tokio::spawn(web::serve(listener, state.clone()));
    let fold = |m: &crate::session::Message| {
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        let change = hub.apply(&m.topic, &m.payload, Instant::now())?;
        if let Some(update) = update(&hub, change) {
            let _ = updates.send(update);
        }
        Some(())
    };
    let expire = || {
        let mut hub = hub.lock().unwrap_or_else(PoisonError::into_inner);
        for change in hub.expire(Instant::now()) {
            if let Some(update) = update(&hub, change) {
                let _ = updates.send(update);
            }
        }
    };
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    for message in &early {
        fold(message);
    }
    state.set_broker(true);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut connected = true;
    loop {
        if !connected {
            tokio::select! {
                ready = session.wait_connected() => {
                    let early = match ready {
                        Ok(()) => subscribe(&mut session, &states, &events).await,
                        Err(e) => Err(e),
                    };
                    match early {
                        Ok(early) => {
                            // Start afresh: what was cleared while the hub was away must
                            // not linger on the pages.
                            hub.lock().unwrap_or_else(PoisonError::into_inner).forget_fleet();
                            let _ = updates.send(Update::Resync);
                            for message in &early {
                                fold(message);
                            }
                            state.set_broker(true);
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
                    fold(&m);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the broker; reconnecting");
                    state.set_broker(false);
                    connected = false;
                }
            },
            _ = expiry.tick() => expire(),
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    server.abort();
    session.close().await;
    Ok(ExitCode::SUCCESS)
}
