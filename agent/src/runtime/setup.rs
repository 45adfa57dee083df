//! What the event loop is made of: the MQTT link and the embedded broker it starts with, and
//! the timers and channels it waits on, each of which may be absent.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cli::control::{self, Envelope};

use crate::config::{Config, Environment};
use crate::mqtt::link::{Identity, Inbound, Link};
use crate::mqtt::spool::Spool;
use crate::runtime::report;
use crate::shell::leftovers::Stopped;
use crate::state::StateDir;

/// Starts the MQTT link when `[mqtt]` asks for one: reports the leftovers of an earlier run
/// that were stopped, and clears the retained state of processes that run no more.
pub fn connect(
    config: &Config,
    state: &StateDir,
    leftovers: &[Stopped],
    containment: &'static str,
) -> anyhow::Result<Option<(Link, mpsc::Receiver<Inbound>)>> {
    let Some(mqtt) = &config.mqtt else {
        tracing::info!("no [mqtt] section: supervising locally only");
        return Ok(None);
    };
    let spool = Spool::open(&state.path().join("spool"), mqtt.spool_limit);
    let identity = Identity {
        agent: config.agent.id.clone(),
        host: Environment::current().hostname,
        processes: config.processes.iter().map(|p| p.name.clone()).collect(),
        containment,
    };
    tracing::info!(broker = %mqtt.url, prefix = %mqtt.topics, undelivered = spool.len(), "reporting over MQTT");
    let (link, inbound) = Link::start(mqtt, identity, spool)
        .with_context(|| format!("cannot set up TLS for {}", mqtt.url))?;
    for stopped in leftovers {
        link.event(Some(&stopped.name), report::leftover_exit(stopped));
    }
    report::log_command_policy(config);
    // Processes reported by an earlier run but configured no more: clear their retained
    // state, or it would linger on the broker forever. The names are kept (clearing again is
    // harmless) in case this run ends before the clear goes out.
    let configured: BTreeSet<String> = config.processes.iter().map(|p| p.name.clone()).collect();
    for gone in state.reported().difference(&configured) {
        link.removed(gone);
    }
    remember_reported(state, configured);
    Ok(Some((link, inbound)))
}

/// Adds `names` to the processes whose state is retained on the broker, so that a later run
/// can clear those it no longer has.
pub fn remember_reported(state: &StateDir, names: impl IntoIterator<Item = String>) {
    let mut reported = state.reported();
    reported.extend(names);
    if let Err(e) = state.save_reported(&reported) {
        tracing::warn!(error = %e, "cannot record the reported processes");
    }
}

/// Listens on the control socket of the state directory (mode 0600): requests come out of the
/// returned receiver.
pub fn control_socket(
    state: &StateDir,
) -> anyhow::Result<(PathBuf, JoinHandle<()>, mpsc::Receiver<Envelope>)> {
    let socket = StateDir::socket_path(state.path());
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    set_mode(&socket, 0o600)?;
    let (requests, received) = mpsc::channel::<Envelope>(16);
    let server = tokio::spawn(control::serve(listener, requests));
    Ok((socket, server, received))
}

#[cfg(feature = "embedded-broker")]
pub fn start_broker(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    crate::mqtt::broker::start(listen)
}

#[cfg(not(feature = "embedded-broker"))]
pub fn start_broker(_listen: std::net::SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("this build has no embedded broker (cargo feature `embedded-broker`)")
}

pub fn interval(every: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

pub async fn next(inbound: &mut Option<mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}
