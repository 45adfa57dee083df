//! What the event loop is made of: the runtime as it starts (its state directory, the
//! embedded broker, containment, the leftovers of an earlier run, the MQTT link), and the
//! signals, timers and channels it waits on, each of which may be absent.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use respawn_common::messages::EventKind;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::children::{Children, Finished};
use super::desk::Desk;
use super::follow::Streams;
use super::{configuration, Runtime};
use crate::config::{Config, Environment, MqttConfig, Secret};
use crate::control::{self, Envelope, Reply};
use crate::mqtt::link::{Identity, Inbound, Link};
use crate::mqtt::spool::Spool;
use crate::mqtt::OwnLogin;
use crate::runtime::report;
use crate::shell::cgroup::Containment;
use crate::shell::leftovers::{self, Leftovers};
use crate::shell::notify;
use crate::shell::watch::Watched;
use crate::state::exits::LastExits;
use crate::state::{ManualStops, StateDir};
use crate::supervisor::Supervisor;

/// What the event loop waits on, besides the runtime's own deadlines.
pub struct Sources {
    pub sigterm: Signal,
    pub sigint: Signal,
    pub sighup: Signal,
    pub sigchld: Signal,
    /// Requests on the control socket at `socket`, which `server` serves.
    pub requests: mpsc::Receiver<Envelope>,
    pub socket: PathBuf,
    pub server: JoinHandle<()>,
    /// Commands over MQTT, when there is a link.
    pub inbound: Option<mpsc::Receiver<Inbound>>,
    pub heartbeat: Option<tokio::time::Interval>,
    /// When systemd's watchdog asks for pings.
    pub systemd_watchdog: Option<tokio::time::Interval>,
    /// Children that exited and were reaped.
    pub finished: mpsc::UnboundedReceiver<Finished>,
    /// What is seen of running children: readiness, status, probes, watchdogs.
    pub watched: mpsc::UnboundedReceiver<Watched>,
    /// Rung when a process writes a line: a followed process's lines go out in a batch.
    pub output_written: Arc<Notify>,
    /// The embedded broker, when the agent hosts one.
    pub broker: Option<Keeper>,
}

/// The runtime with nothing started yet, and what its loop waits on; the leftovers of an
/// earlier run are stopped first.
pub(super) async fn start(
    config_path: PathBuf,
    mut config: Config,
) -> anyhow::Result<(Runtime, Sources)> {
    let started = SystemTime::now();
    // Some emulators and sandboxes refuse this (qemu-user before 8.0). Without it, descendants
    // whose parent exits are reparented to init: group stops still reach them, but the agent
    // cannot reap them or wait for them, so it warns rather than refusing to supervise.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}): orphaned descendants of the programs go to init");
    }
    // Signal streams first: a signal that arrives before them must not be lost.
    let (mut sigterm, mut sigint) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let (sighup, sigchld) = (signal(SignalKind::hangup())?, signal(SignalKind::child())?);

    let state = StateDir::open(&config.agent.state_dir)?;
    configuration::add_remote(&mut config, &config_path, &state, &[]);
    // The broker before containment: a port that is taken stops the start with nothing made.
    let own_login = own_login(&config);
    let broker = match &config.broker {
        Some(broker) => {
            let sessions = state.broker_sessions_path();
            Some(start_broker(broker.listen, sessions, own_login.clone())?)
        }
        None => None,
    };
    let containment =
        match Containment::set_up(config.agent.containment, &config.agent.id, state.path()) {
            Ok(containment) => containment,
            Err(e) => {
                close(None, broker).await;
                return Err(anyhow::Error::msg(e));
            }
        };
    // The socket before the leftovers' stop, which may take a program's whole stop_timeout:
    // a `respawn-agent status` meanwhile hears that the agent is starting, not that none runs.
    let (socket, server, mut requests) = match control_socket(&state) {
        Ok(control) => control,
        // Only empty cgroups go: what an earlier run left keeps its own, for the next start.
        Err(e) => {
            containment.tidy();
            close(None, broker).await;
            return Err(e);
        }
    };
    // A stop asked for meanwhile waits for them (they must not outlive the agent), and then
    // nothing starts: a job that is to run once must not be started only to be stopped.
    let mut stop_asked = None;
    let leftovers = {
        let stopping = leftovers::stop(&state, &config, &containment);
        tokio::pin!(stopping);
        loop {
            let signal = tokio::select! {
                leftovers = &mut stopping => break leftovers,
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
                Some((_, reply)) = requests.recv() => {
                    let _ = reply.send(Reply::Error { message: STOPPING_LEFTOVERS.to_owned() });
                    continue;
                }
            };
            tracing::info!("{signal} while stopping what an earlier run left: exiting once that is done, starting nothing");
            stop_asked = Some(signal);
        }
    };
    let connected = match connect(
        &config,
        own_login,
        &state,
        &leftovers,
        containment.kind(),
        started,
    ) {
        Ok(connected) => connected,
        Err(e) => {
            // What the broker took back from its last stop is kept for the next start; the
            // cgroups go, as they would at a stop: nothing runs in them, for `leftovers::stop`
            // waited for a previous run's processes to be gone.
            containment.tidy();
            close(None, broker).await;
            return Err(e);
        }
    };
    let (link, inbound) = match connected {
        Some((link, inbound)) => (Some(link), Some(inbound)),
        None => (None, None),
    };
    let heartbeat = config.mqtt.as_ref().map(|mqtt| interval(mqtt.heartbeat));
    let systemd_watchdog = notify::watchdog_interval().map(interval);
    let (finished_tx, finished) = mpsc::unbounded_channel();
    let (watched_tx, watched) = mpsc::unbounded_channel();
    let output_written = Arc::new(Notify::new());
    let stopped = ManualStops::load(&state);
    let last_exits = LastExits::load(&state);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let runtime = Runtime {
        config_path,
        supervisor: Supervisor::new(stopped.names().clone(), seed),
        config,
        state,
        stopped,
        children: Children::new(
            finished_tx,
            watched_tx,
            Arc::clone(&output_written),
            Arc::new(containment),
            last_exits,
        ),
        desk: Desk::new(),
        streams: Streams::default(),
        link,
        shutting_down: false,
        forced: false,
        give_up_at: None,
        started: Instant::now(),
        clocks: report::WallClock::now(),
        spawns_after_reports: Vec::new(),
        stop_asked,
    };
    let sources = Sources {
        sigterm,
        sigint,
        sighup,
        sigchld,
        requests,
        socket,
        server,
        inbound,
        heartbeat,
        systemd_watchdog,
        finished,
        watched,
        output_written,
        broker,
    };
    Ok((runtime, sources))
}

impl Runtime {
    /// Starts the configured processes and tells systemd, or, when a stop was asked while
    /// what an earlier run left was stopped, begins the shutdown with nothing started.
    pub(super) async fn begin(&mut self) {
        tracing::info!(
            agent = %self.config.agent.id,
            processes = self.config.processes.len(),
            state_dir = %self.state.path().display(),
            "respawn-agent {} started",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(signal) = self.stop_asked {
            return self.shutdown(signal);
        }
        self.configure(self.config.processes.clone());
        self.spawn_put_off().await;
        // Every autostart process has been started (or has failed to): systemd may go on.
        let count = self.config.processes.len();
        notify::to_systemd(&format!(
            "READY=1\nSTATUS=supervising {count} process{}",
            if count == 1 { "" } else { "es" }
        ));
    }
}

/// The login of the agent's link to the broker it hosts, when it reports to that one: without
/// `[mqtt]`, or with one that names it (plain `mqtt://` to its port, on loopback, `localhost`
/// or the address it listens on) and no login of its own.
fn own_login(config: &Config) -> Option<OwnLogin> {
    let (broker, mqtt) = (config.broker.as_ref()?, config.mqtt.as_ref()?);
    let url = &mqtt.url;
    let listen = broker.listen;
    let host = url.host.trim_matches(['[', ']']);
    let this_machine = host == "localhost"
        || (host.parse::<std::net::IpAddr>()).is_ok_and(|ip| ip.is_loopback() || ip == listen.ip());
    let own = !url.tls && url.port == listen.port() && this_machine && mqtt.username.is_none();
    own.then(|| OwnLogin::new(&config.agent.id))
}

/// Starts the MQTT link when `[mqtt]` asks for one: reports the leftovers of an earlier run
/// (stopped, or ended unseen), and clears the retained state of processes that run no more.
fn connect(
    config: &Config,
    own_login: Option<OwnLogin>,
    state: &StateDir,
    leftovers: &Leftovers,
    containment: &'static str,
    started: SystemTime,
) -> anyhow::Result<Option<(Link, mpsc::Receiver<Inbound>)>> {
    let Some(mqtt) = &config.mqtt else {
        tracing::info!("no [mqtt] section: supervising locally only");
        return Ok(None);
    };
    // Only the link: the configuration, which a reload compares, says no login.
    let with_login = own_login.map(|own| MqttConfig {
        username: Some(OwnLogin::USERNAME.to_owned()),
        password: Some(Secret(own.password)),
        ..mqtt.clone()
    });
    let mqtt = with_login.as_ref().unwrap_or(mqtt);
    let spool = Spool::open(&state.spool_dir(), mqtt.spool_limit);
    let identity = Identity {
        agent: config.agent.id.clone(),
        host: Environment::current().hostname,
        processes: config.processes.iter().map(|p| p.name.clone()).collect(),
        containment,
        started,
    };
    tracing::info!(broker = %mqtt.url, prefix = %mqtt.topics, undelivered = spool.len(), "reporting over MQTT");
    let (link, inbound) = Link::start(mqtt, identity, spool)
        .with_context(|| format!("cannot set up TLS for {}", mqtt.url))?;
    for gone in &leftovers.vanished {
        link.event(Some(&gone.name), EventKind::Vanished { pid: gone.pid });
    }
    for stopped in &leftovers.stopped {
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

/// The answer to every local request while the start stops what an earlier run left.
const STOPPING_LEFTOVERS: &str = "the agent is starting: it is stopping what an earlier run of it left running (each program is given its stop_timeout); try again in a moment";

/// Listens on the control socket of the state directory (mode 0600): requests come out of the
/// returned receiver.
fn control_socket(
    state: &StateDir,
) -> anyhow::Result<(PathBuf, JoinHandle<()>, mpsc::Receiver<Envelope>)> {
    let socket = StateDir::socket_path(state.path());
    let _ = std::fs::remove_file(&socket);
    let (requests, received) = mpsc::channel::<Envelope>(16);
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(listener) => listener,
        // A state directory the kernel made read-only: the programs run all the same,
        // commanded over MQTT only. No request ever comes.
        Err(e) if crate::state::on_read_only_fs(&e) => {
            tracing::error!(socket = %socket.display(), error = %e, "no control socket: `respawn-agent status`, `restart` and the others cannot reach this agent (commands over MQTT still do)");
            let server = tokio::spawn(async move {
                let _held = requests;
                std::future::pending::<()>().await
            });
            return Ok((socket, server, received));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", socket.display())),
    };
    set_mode(&socket, 0o600)?;
    let server = tokio::spawn(control::serve(listener, requests));
    Ok((socket, server, received))
}

/// The last steps of an agent that exits in good order: its goodbye to the broker, then the
/// embedded broker's own stop, which keeps what waits for absent clients (the goodbye among
/// it) for the next start.
pub(super) async fn close(link: Option<Link>, broker: Option<Keeper>) {
    if let Some(link) = link {
        link.shutdown().await;
    }
    if let Some(broker) = broker {
        broker.stop().await;
    }
}

#[cfg(feature = "embedded-broker")]
use crate::mqtt::broker::{start as start_broker, Keeper};

/// A build without the embedded broker never has one to stop.
#[cfg(not(feature = "embedded-broker"))]
pub enum Keeper {}

#[cfg(not(feature = "embedded-broker"))]
impl Keeper {
    async fn stop(self) {}
}

#[cfg(not(feature = "embedded-broker"))]
fn start_broker(
    _listen: std::net::SocketAddr,
    _sessions: std::path::PathBuf,
    _own_login: Option<OwnLogin>,
) -> anyhow::Result<Keeper> {
    anyhow::bail!("this build has no embedded broker (cargo feature `embedded-broker`)")
}

fn interval(every: Duration) -> tokio::time::Interval {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn login_for(sections: &str) -> Option<OwnLogin> {
        let text = format!(
            "[agent]\nid = \"door-pi\"\n\n[broker]\nlisten = \"127.0.0.1:1883\"\n\n{sections}"
        );
        let config = parse(&text, Path::new("/etc/respawn"), &Environment::current());
        own_login(&config.expect("valid"))
    }

    /// The agent's client id is kept on its own broker whenever it reports to that one, also
    /// with an `[mqtt]` that names it (found by a review: a `heartbeat` of its own lost it).
    #[test]
    fn the_agent_logs_in_to_its_own_broker_however_mqtt_names_it() {
        let own = login_for("").expect("without [mqtt]");
        assert_eq!(own.client_id, "respawn-agent-door-pi");
        for url in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost:1883",
            "mqtt://[::1]:1883",
        ] {
            let named = format!("[mqtt]\nurl = \"{url}\"\nheartbeat = \"10s\"\n");
            assert!(login_for(&named).is_some(), "{url}");
        }
        // Another broker, or a login of its own: not the agent's to keep.
        for other in [
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1884\"\n",
            "[mqtt]\nurl = \"mqtt://192.168.1.10:1883\"\n",
            "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"pi\"\n",
        ] {
            assert!(login_for(other).is_none(), "{other}");
        }
    }
}
