//! `respawnctl events`: a live tail of lifecycle events, each shown once.

use std::collections::{HashSet, VecDeque};
use std::io::IsTerminal;
use std::process::ExitCode;

use respawn_common::messages::Event;
use respawn_common::topics::{Filter, Topics};
use rumqttc::v5::mqttbytes::QoS;

use super::print;
use crate::fleet::Target;
use crate::output::{self, Style};
use crate::session::Session;
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    pattern: Option<Target>,
    json: bool,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let topics = settings.topics.clone();
    let filter = topics.filter(Filter::Events);
    let mut session = Session::connect(settings, true).await?;
    session
        .subscribe(std::slice::from_ref(&filter), QoS::AtLeastOnce)
        .await?;
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for events… (Ctrl-C to stop)");
    }
    // Events arrive at least once: remember recent ids to show each once.
    let mut seen: (HashSet<String>, VecDeque<String>) = (HashSet::new(), VecDeque::new());
    loop {
        let message = tokio::select! {
            m = session.recv() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        match message {
            Ok(m) => {
                let Ok(event) = serde_json::from_slice::<Event>(&m.payload) else {
                    continue;
                };
                if !event_matches(&event, pattern.as_ref(), &topics, &m.topic)
                    || !seen.0.insert(event.id.clone())
                {
                    continue;
                }
                seen.1.push_back(event.id.clone());
                if seen.1.len() > 10_000 {
                    if let Some(old) = seen.1.pop_front() {
                        seen.0.remove(&old);
                    }
                }
                if json {
                    print(&format!("{}\n", String::from_utf8_lossy(&m.payload)));
                } else {
                    print(&output::event_line(&event, style));
                }
                // `events | grep -m1 crashed`: done once the reader is.
                if super::reader_gone() {
                    break;
                }
            }
            Err(e) => {
                eprintln!("respawnctl: {e}; reconnecting");
                loop {
                    match session.wait_connected().await {
                        Ok(()) => break,
                        Err(e) => tracing::debug!(error = %e, "still disconnected"),
                    }
                }
                session
                    .subscribe(std::slice::from_ref(&filter), QoS::AtLeastOnce)
                    .await?;
                eprintln!("respawnctl: reconnected");
            }
        }
    }
    session.close().await;
    Ok(ExitCode::SUCCESS)
}

fn event_matches(event: &Event, pattern: Option<&Target>, topics: &Topics, topic: &str) -> bool {
    // The topic names the agent that published; trust it over the payload.
    let agent_ok = topics
        .parse(topic)
        .is_some_and(|t| t.agent() == event.agent);
    let Some(target) = pattern else {
        return agent_ok;
    };
    agent_ok
        && respawn_common::pattern::glob(&target.agent, &event.agent)
        && match (&target.process, &event.process) {
            (None, _) => true,
            (Some(p), Some(process)) => respawn_common::pattern::glob(p, process),
            (Some(_), None) => false,
        }
}
