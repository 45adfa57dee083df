//! The runtime around the pure state machine: one event loop that turns signals, child exits,
//! timers and control requests into inputs, and carries out the actions that come back.

mod audit;
mod commands;
mod report;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use respawn_common::messages::{
    CommandName, CommandReply, EventKind, Heartbeat, Reason, ReplyStatus,
};
use respawn_common::status::{Health, HealthStatus, LogLine, ProcessState, ProcessStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cli::control::{self, Envelope, Reply, Request};
use crate::config::{self, Config, Environment};
use crate::logs::{LogRing, Stream};
use crate::mqtt::link::{Identity, Inbound, Link};
use crate::mqtt::remote::{self, Memory, Policy, RecentCommands, Rejection};
use crate::mqtt::spool::Spool;
use crate::runtime::audit::AuditBudget;
use crate::runtime::commands::{CommandKind, PendingCommands, RemoteRequest, Requester, Resolved};
use crate::shell::health::{self, ProbeExits};
use crate::shell::notify;
use crate::shell::process::{self, OutputSink};
use crate::shell::watch::{self, Seen, Watched};
use crate::shell::{leftovers, procfs};
use crate::state::StateDir;
use crate::supervisor::{Action, Input, Notice, NoticeKind, Supervisor, UnitView};
use crate::WallClock;
use report::status_of;

/// How long an exit waits for the rest of the child's output. Normally the pipes close with
/// the process group; only a descendant that escaped into its own session can hold them open.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// A main process the agent started and has not yet reaped.
struct Child {
    name: String,
    readers: [JoinHandle<()>; 2],
    /// Its health probes and notify socket, stopped when it is reaped.
    watchers: Vec<JoinHandle<()>>,
    /// What its probes said so far, this run.
    health: Option<health::Tracker>,
    /// Its own word on how it is (`STATUS=`).
    message: Option<String>,
    /// Already reported over `max_memory`: once is enough, the restart is under way.
    over_memory: bool,
}

/// A reaped main process whose output has been read.
struct Finished {
    name: String,
    pid: u32,
    status: respawn_common::status::ExitStatus,
}

struct Runtime {
    config_path: PathBuf,
    config: Config,
    supervisor: Supervisor,
    state: StateDir,
    stopped: BTreeSet<String>,
    children: HashMap<u32, Child>,
    rings: HashMap<String, Arc<Mutex<LogRing>>>,
    finished: mpsc::UnboundedSender<Finished>,
    watched: mpsc::UnboundedSender<Watched>,
    probe_exits: ProbeExits,
    /// When memory is next measured, while some process has `max_memory`.
    next_memory_check: Option<Instant>,
    commands: PendingCommands,
    shutting_down: bool,
    /// A second SIGTERM/SIGINT came: everything is being killed.
    forced: bool,
    /// When the agent exits even if some process has not gone (one stuck in uninterruptible
    /// sleep survives even SIGKILL).
    give_up_at: Option<Instant>,
    /// The MQTT link, when a broker is configured.
    link: Option<Link>,
    /// Replies to recent remote commands, to answer repeats without running them again.
    recent: RecentCommands,
    /// How many refused commands are audited one by one, and the count of the rest.
    audit_budget: AuditBudget<(RemoteRequest, CommandReply)>,
    started: Instant,
}

/// Remote commands remembered for repeats.
const RECENT_COMMANDS: usize = 1024;

/// How long SIGKILLed processes may take to disappear before the agent exits without them.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the memory of processes with `max_memory` is measured.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs the agent until SIGTERM or SIGINT, with `config` read from `config_path` (which a
/// SIGHUP reads again).
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    // Some emulators and sandboxes refuse this (qemu-user before 8.0). Without it, descendants
    // whose parent exits are reparented to init: group stops still reach them, but the agent
    // cannot reap them or wait for them, so it warns rather than refusing to supervise.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}): orphaned descendants of the programs go to init");
    }
    // Signal streams first: a signal that arrives before them must not be lost.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigchld = signal(SignalKind::child())?;

    let state = StateDir::open(&config.agent.state_dir)?;
    if let Some(broker) = &config.broker {
        start_broker(broker.listen)?;
    }
    let leftovers = leftovers::stop(&state, &config).await;

    let socket = StateDir::socket_path(state.path());
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    set_mode(&socket, 0o600)?;
    let (request_tx, mut requests) = mpsc::channel::<Envelope>(16);
    let server = tokio::spawn(control::serve(listener, request_tx));

    let (link, mut inbound) = match &config.mqtt {
        Some(mqtt) => {
            let spool = Spool::open(&state.path().join("spool"), mqtt.spool_limit);
            let identity = Identity {
                agent: config.agent.id.clone(),
                host: Environment::current().hostname,
                processes: config.processes.iter().map(|p| p.name.clone()).collect(),
            };
            tracing::info!(broker = %mqtt.url, prefix = %mqtt.topics, undelivered = spool.len(), "reporting over MQTT");
            let (link, inbound) = Link::start(mqtt, identity, spool)
                .with_context(|| format!("cannot set up TLS for {}", mqtt.url))?;
            for stopped in &leftovers {
                link.event(Some(&stopped.name), report::leftover_exit(stopped));
            }
            log_command_policy(&config);
            // Processes reported by an earlier run but configured no more: clear their
            // retained state, or it would linger on the broker forever. The names are kept
            // (clearing again is harmless) in case this run ends before the clear goes out.
            let configured: BTreeSet<String> =
                config.processes.iter().map(|p| p.name.clone()).collect();
            let mut reported = state.reported();
            for gone in reported.difference(&configured) {
                link.removed(gone);
            }
            reported.extend(configured);
            if let Err(e) = state.save_reported(&reported) {
                tracing::warn!(error = %e, "cannot record the reported processes");
            }
            (Some(link), Some(inbound))
        }
        None => {
            tracing::info!("no [mqtt] section: supervising locally only");
            (None, None)
        }
    };
    let mut heartbeat = config.mqtt.as_ref().map(|mqtt| {
        let mut interval = tokio::time::interval(mqtt.heartbeat);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });

    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let (watched_tx, mut watched) = mpsc::unbounded_channel();
    let mut systemd_watchdog = notify::watchdog_interval().map(|every| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let stopped = state.stopped();
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut rt = Runtime {
        config_path,
        supervisor: Supervisor::new(stopped.clone(), seed),
        config,
        state,
        stopped,
        children: HashMap::new(),
        rings: HashMap::new(),
        finished: finished_tx,
        watched: watched_tx,
        probe_exits: ProbeExits::default(),
        next_memory_check: None,
        commands: PendingCommands::default(),
        shutting_down: false,
        forced: false,
        give_up_at: None,
        link,
        recent: RecentCommands::new(RECENT_COMMANDS),
        audit_budget: AuditBudget::new(),
        started: Instant::now(),
    };
    tracing::info!(
        agent = %rt.config.agent.id,
        processes = rt.config.processes.len(),
        state_dir = %rt.state.path().display(),
        "respawn-agent {} started",
        env!("CARGO_PKG_VERSION")
    );
    let processes = rt.config.processes.clone();
    rt.feed(Input::Configure(processes));
    rt.schedule_memory_checks();
    // Every autostart process has been started (or has failed to): systemd may go on.
    let count = rt.config.processes.len();
    notify::to_systemd(&format!(
        "READY=1\nSTATUS=supervising {count} process{}",
        if count == 1 { "" } else { "es" }
    ));

    loop {
        if rt.shutting_down && rt.supervisor.is_idle() {
            break;
        }
        if rt.give_up_at.is_some_and(|at| Instant::now() >= at) {
            let left: Vec<String> = rt.children.values().map(|c| c.name.clone()).collect();
            tracing::error!(
                ?left,
                "processes survive SIGKILL (uninterruptible sleep?); exiting without them"
            );
            break;
        }
        let deadline = rt
            .supervisor
            .next_deadline()
            .into_iter()
            .chain(rt.give_up_at)
            .min();
        let memory_check = rt.next_memory_check;
        let audit_flush = rt.audit_budget.flush_at();
        tokio::select! {
            _ = sigterm.recv() => rt.shutdown("SIGTERM"),
            _ = sigint.recv() => rt.shutdown("SIGINT"),
            _ = sighup.recv() => rt.reload(),
            _ = sigchld.recv() => rt.reap(),
            Some(done) = finished.recv() => rt.feed(Input::Exited {
                name: done.name,
                pid: done.pid,
                status: done.status,
            }),
            Some((request, reply)) = requests.recv() => rt.handle(request, reply),
            Some(command) = next(&mut inbound) => rt.handle_remote(command),
            _ = tick(&mut heartbeat) => rt.heartbeat(),
            // From this loop, so that a hung agent misses it and systemd restarts it.
            _ = tick(&mut systemd_watchdog) => notify::to_systemd("WATCHDOG=1"),
            Some(seen) = watched.recv() => rt.on_watched(seen),
            () = sleep_until(memory_check) => rt.check_memory(),
            () = sleep_until(audit_flush) => rt.flush_audit(),
            () = sleep_until(deadline) => rt.feed(Input::Tick),
        }
    }
    let resolved = rt.commands.fail_all("the agent has shut down");
    rt.dispatch(resolved);
    server.abort();
    let _ = std::fs::remove_file(&socket);
    if let Some(link) = rt.link.take() {
        link.shutdown().await;
    }
    tracing::info!("all processes stopped; respawn-agent exits");
    Ok(())
}

/// Says at every start whom the agent takes commands from.
fn log_command_policy(config: &Config) {
    let names: Vec<&str> = config.operators.iter().map(|o| o.name.as_str()).collect();
    if config.agent.allow_unsigned_commands {
        tracing::warn!(
            operators = ?names,
            "allow_unsigned_commands = true: anyone who can publish on the broker can command this agent"
        );
    } else if names.is_empty() {
        tracing::warn!("no [[operator]] configured: this agent takes no commands over MQTT");
    } else {
        tracing::info!(operators = ?names, "taking commands signed by these operators");
    }
}

#[cfg(feature = "embedded-broker")]
fn start_broker(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    crate::mqtt::broker::start(listen)
}

#[cfg(not(feature = "embedded-broker"))]
fn start_broker(_listen: std::net::SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!("this build has no embedded broker (cargo feature `embedded-broker`)")
}

async fn next(inbound: &mut Option<mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match inbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
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

impl Runtime {
    /// Feeds `input` to the state machine and carries out the actions, including those of
    /// the inputs the actions themselves produce (a spawn's outcome); then reports the
    /// processes it touched and answers the commands it settled.
    fn feed(&mut self, input: Input) {
        let configure = matches!(input, Input::Configure(_));
        let mut queue = VecDeque::from([input]);
        let mut touched = BTreeSet::new();
        let mut resolved = Vec::new();
        while let Some(input) = queue.pop_front() {
            let actions = self.supervisor.step(input, Instant::now());
            for action in actions {
                touched.insert(action.process().to_owned());
                if let Some(next) = self.execute(action, &mut resolved) {
                    queue.push_back(next);
                }
            }
        }
        if configure {
            touched.extend(self.supervisor.views().map(|v| v.name));
        }
        resolved.extend(self.commands.settle(&self.supervisor));
        self.publish_states(&touched);
        self.dispatch(resolved);
    }

    /// Something was seen of a running child: readiness, its own status, a probe's result,
    /// an overdue watchdog.
    fn on_watched(&mut self, watched: Watched) {
        let Some(child) = self
            .children
            .get_mut(&watched.pid)
            .filter(|c| c.name == watched.name)
        else {
            return; // From a run that is over.
        };
        let (name, pid) = (watched.name, watched.pid);
        let input = match watched.seen {
            Seen::Ready => Some(Input::Ready {
                name: name.clone(),
                pid,
            }),
            Seen::Status(text) => {
                child.message = Some(text);
                None
            }
            Seen::Unhealthy(reason) => Some(Input::Unhealthy {
                name: name.clone(),
                pid,
                reason,
            }),
            Seen::Probe(result) => {
                let Some(tracker) = child.health.as_mut() else {
                    return;
                };
                if let Err(e) = &result {
                    tracing::debug!(process = %name, pid, error = %e, "health check failed");
                }
                match tracker.record(Instant::now(), result) {
                    health::Verdict::Same => None,
                    health::Verdict::Ready => Some(Input::Ready {
                        name: name.clone(),
                        pid,
                    }),
                    health::Verdict::Unhealthy(reason) => Some(Input::Unhealthy {
                        name: name.clone(),
                        pid,
                        reason,
                    }),
                }
            }
        };
        if let Some(input) = input {
            self.feed(input);
        }
        self.publish_states(&BTreeSet::from([name]));
    }

    /// Measures the memory of processes with `max_memory`, and restarts those over it.
    fn check_memory(&mut self) {
        let limits: Vec<(u32, String, u64)> = self
            .children
            .iter()
            .filter(|(_, c)| !c.over_memory)
            .filter_map(|(&pid, c)| {
                let limit = self.supervisor.config(&c.name)?.max_memory?;
                Some((pid, c.name.clone(), limit))
            })
            .collect();
        if !limits.is_empty() {
            let groups: Vec<u32> = limits.iter().map(|(pid, _, _)| *pid).collect();
            let used = procfs::rss_of_groups(&groups);
            for (pid, name, limit) in limits {
                let Some(&rss) = used.get(&pid) else {
                    continue;
                };
                if rss > limit {
                    if let Some(child) = self.children.get_mut(&pid) {
                        child.over_memory = true;
                    }
                    let reason = format!(
                        "memory: {} MiB in use, over max_memory ({} MiB)",
                        rss / (1024 * 1024),
                        limit / (1024 * 1024)
                    );
                    self.feed(Input::Unhealthy { name, pid, reason });
                }
            }
        }
        self.schedule_memory_checks();
    }

    /// Memory is measured every few seconds while some process has a limit, never otherwise:
    /// an idle agent does not wake up for nothing.
    fn schedule_memory_checks(&mut self) {
        self.next_memory_check = self
            .config
            .processes
            .iter()
            .any(|p| p.max_memory.is_some())
            .then(|| Instant::now() + MEMORY_CHECK_EVERY);
    }

    /// A process's status as reported: the state machine's view, and what its probes and
    /// its own messages say.
    fn status(&self, view: &UnitView, clock: &WallClock) -> ProcessStatus {
        let mut status = status_of(view, clock);
        let child = view.pid.and_then(|pid| self.children.get(&pid));
        if let Some(child) = child {
            let mut health = child.health.as_ref().map(health::Tracker::report);
            if let Some(message) = &child.message {
                health
                    .get_or_insert(Health {
                        status: HealthStatus::Unknown,
                        failures: 0,
                        last_error: None,
                        message: None,
                    })
                    .message = Some(message.clone());
            }
            status.health = health;
        }
        status
    }

    fn publish_states(&self, names: &BTreeSet<String>) {
        let Some(link) = &self.link else {
            return;
        };
        let clock = WallClock::now();
        for view in names.iter().filter_map(|n| self.supervisor.view(n)) {
            let notify = self
                .config
                .processes
                .iter()
                .find(|p| p.name == view.name)
                .map(|p| p.notify)
                .unwrap_or_default();
            link.process(&self.status(&view, &clock), notify);
        }
    }

    fn execute(&mut self, action: Action, resolved: &mut Vec<Resolved>) -> Option<Input> {
        match action {
            Action::Spawn { name } => return Some(self.spawn(name)),
            Action::Signal { name, pid, signal } => {
                tracing::info!(process = %name, pid, signal = signal.as_str(), "stopping");
                self.signal(&name, pid, signal);
            }
            Action::Kill { name, pid } => {
                if self.forced {
                    tracing::warn!(process = %name, pid, "killing its process group");
                } else {
                    tracing::warn!(process = %name, pid, "did not stop in time; sending SIGKILL to its process group");
                }
                self.signal(&name, pid, Signal::SIGKILL);
            }
            Action::Emit(notice) => {
                self.log_notice(&notice);
                self.report(&notice);
                resolved.extend(self.commands.on_notice(&notice));
            }
            Action::RememberStopped { name, stopped } => {
                if stopped {
                    self.stopped.insert(name);
                } else {
                    self.stopped.remove(&name);
                }
                self.save_stopped();
            }
            Action::Forget { name } => {
                self.rings.remove(&name);
                self.state.remove_child(&name);
                if self.stopped.remove(&name) {
                    self.save_stopped();
                }
                if let Some(link) = &self.link {
                    link.removed(&name);
                }
                resolved.extend(self.commands.on_forget(&name));
            }
        }
        None
    }

    /// Sends a lifecycle event over MQTT.
    fn report(&self, notice: &Notice) {
        let Some(link) = &self.link else {
            return;
        };
        let clock = WallClock::now();
        let kind = report::event_kind(&notice.kind, &clock, || {
            let mut lines = self.lines(&notice.name, report::TAIL_LINES + 1);
            // Only the run that ended: the ring also holds earlier runs' lines.
            if let NoticeKind::Exited(info) = &notice.kind {
                let started = clock.at(info.at.checked_sub(info.runtime).unwrap_or(info.at));
                lines.retain(|l| l.at >= started);
            }
            lines
        });
        link.event(Some(&notice.name), kind);
    }

    fn lines(&self, name: &str, n: usize) -> Vec<LogLine> {
        self.rings.get(name).map_or_else(Vec::new, |ring| {
            ring.lock().unwrap_or_else(PoisonError::into_inner).tail(n)
        })
    }

    fn spawn(&mut self, name: String) -> Input {
        let Some(config) = self.supervisor.config(&name).cloned() else {
            return Input::SpawnFailed {
                name,
                error: "not configured".into(),
            };
        };
        // A child that speaks the notify protocol gets a socket of its own.
        let notify_socket = match config.sd_notify {
            true => match notify::NotifySocket::bind(&name) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    return Input::SpawnFailed {
                        name,
                        error: format!("cannot make its notify socket: {e}"),
                    }
                }
            },
            false => None,
        };
        let mut env = Vec::new();
        if let Some(socket) = &notify_socket {
            env.push(("NOTIFY_SOCKET", socket.address.clone()));
            if let Some(watchdog) = config.watchdog {
                env.push(("WATCHDOG_USEC", watchdog.as_micros().to_string()));
            }
        }
        // A child the next run of the agent could not find might run twice: it is not
        // started unless its record can be written.
        if let Err(e) = self.state.reserve_child(&name) {
            return Input::SpawnFailed {
                name,
                error: format!("cannot reserve its record in the state directory: {e}"),
            };
        }
        let launched = match process::spawn(&config, &env) {
            Ok(launched) => launched,
            Err(error) => return Input::SpawnFailed { name, error },
        };
        let pid = launched.pid;
        if let Err(e) = self.state.record_child(&name, pid) {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            return Input::SpawnFailed {
                name,
                error: format!("cannot record it in the state directory: {e}"),
            };
        }
        let sink = OutputSink {
            process: Arc::from(name.as_str()),
            ring: Arc::clone(self.rings.entry(name.clone()).or_default()),
        };
        let readers = [
            tokio::spawn(process::capture(
                launched.stdout,
                Stream::Stdout,
                sink.clone(),
            )),
            tokio::spawn(process::capture(launched.stderr, Stream::Stderr, sink)),
        ];
        let watchers = watch::start(
            Arc::clone(&config),
            pid,
            notify_socket,
            &self.probe_exits,
            &self.watched,
        );
        let health = config
            .health
            .clone()
            .map(|check| health::Tracker::new(check, Instant::now()));
        self.children.insert(
            pid,
            Child {
                name: name.clone(),
                readers,
                watchers,
                health,
                message: None,
                over_memory: false,
            },
        );
        Input::Spawned { name, pid }
    }

    fn signal(&self, name: &str, pid: u32, signal: Signal) {
        // A reaped leader's group was already killed, and its pid may belong to someone else
        // by now; its exit is on its way to the state machine.
        if !self.children.contains_key(&pid) {
            return;
        }
        if let Err(e) = process::signal_group(pid, signal) {
            tracing::error!(process = %name, pid, error = %e, "cannot signal the process group");
        }
    }

    fn save_stopped(&self) {
        if let Err(e) = self.state.save_stopped(&self.stopped) {
            tracing::error!(error = %e, "cannot save the list of stopped processes; it will not survive an agent restart");
        }
    }

    /// Reaps exited children; a main process's exit is fed to the state machine once its
    /// output has been read to the end, so that the last lines are in the ring.
    fn reap(&mut self) {
        let (children, probes) = (&self.children, &self.probe_exits);
        for reaped in process::reap(|pid| children.contains_key(&pid) || probes.contains(pid)) {
            let Some(child) = self.children.remove(&reaped.pid) else {
                self.probe_exits.exited(reaped.pid, reaped.status);
                continue;
            };
            for watcher in &child.watchers {
                watcher.abort();
            }
            self.state.forget_child(&child.name);
            let finished = self.finished.clone();
            tokio::spawn(async move {
                let [stdout, stderr] = child.readers;
                let _ = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, async {
                    let _ = stdout.await;
                    let _ = stderr.await;
                })
                .await;
                let _ = finished.send(Finished {
                    name: child.name,
                    pid: reaped.pid,
                    status: reaped.status,
                });
            });
        }
    }

    fn shutdown(&mut self, signal: &str) {
        let force = self.shutting_down;
        if force {
            tracing::warn!("{signal} again: killing every process now");
        } else {
            tracing::info!("{signal}: stopping every process (send it again to kill them at once)");
            notify::to_systemd("STOPPING=1");
        }
        self.shutting_down = true;
        self.forced = force;
        let longest_stop = self
            .config
            .processes
            .iter()
            .map(|p| p.stop_timeout)
            .max()
            .unwrap_or_default();
        let grace = if force {
            KILL_GRACE
        } else {
            longest_stop + KILL_GRACE
        };
        self.give_up_at = Some(Instant::now() + grace);
        self.feed(Input::Shutdown { force });
    }

    fn reload(&mut self) {
        if self.shutting_down {
            return;
        }
        tracing::info!(path = %self.config_path.display(), "SIGHUP: reloading the configuration");
        match config::load(&self.config_path, &Environment::current()) {
            Err(e) => {
                tracing::error!("reload failed; the running configuration stays in force.\n{e}")
            }
            Ok(new) => {
                if new.agent.id != self.config.agent.id
                    || new.agent.state_dir != self.config.agent.state_dir
                    || new.mqtt != self.config.mqtt
                    || new.broker != self.config.broker
                {
                    tracing::warn!("changes to [agent] id and state_dir, [mqtt] and [broker] take effect when the agent restarts");
                }
                // Who may command the agent changes at once.
                if new.operators != self.config.operators
                    || new.agent.allow_unsigned_commands
                        != self.config.agent.allow_unsigned_commands
                {
                    self.config.operators = new.operators.clone();
                    self.config.agent.allow_unsigned_commands = new.agent.allow_unsigned_commands;
                    if self.link.is_some() {
                        log_command_policy(&self.config);
                    }
                }
                self.config.processes = new.processes.clone();
                if let Some(link) = &self.link {
                    let names: Vec<String> = new.processes.iter().map(|p| p.name.clone()).collect();
                    let mut reported = self.state.reported();
                    reported.extend(names.iter().cloned());
                    if let Err(e) = self.state.save_reported(&reported) {
                        tracing::warn!(error = %e, "cannot record the reported processes");
                    }
                    link.processes_changed(names);
                }
                let names: BTreeSet<String> =
                    new.processes.iter().map(|p| p.name.clone()).collect();
                self.feed(Input::Configure(new.processes));
                // A new `notify` changes nothing the supervisor does, only what is reported.
                self.publish_states(&names);
            }
        }
    }

    fn handle(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        let (process, kind, input) = match request {
            Request::Status => {
                let clock = WallClock::now();
                let processes = self
                    .supervisor
                    .views()
                    .map(|v| self.status(&v, &clock))
                    .collect();
                let _ = reply.send(Reply::Status {
                    agent: self.config.agent.id.clone(),
                    processes,
                });
                return;
            }
            Request::Logs { process, lines } => {
                let answer = match self.rings.get(&process) {
                    Some(ring) => {
                        let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                        Reply::Logs {
                            process,
                            lines: ring.tail(lines),
                            dropped: ring.dropped(),
                        }
                    }
                    None if self.supervisor.contains(&process) => Reply::Logs {
                        process,
                        lines: Vec::new(),
                        dropped: 0,
                    },
                    None => unknown(&process),
                };
                let _ = reply.send(answer);
                return;
            }
            Request::Start { process } => {
                (process.clone(), CommandKind::Start, Input::Start(process))
            }
            Request::Stop { process } => (process.clone(), CommandKind::Stop, Input::Stop(process)),
            Request::Restart { process } => (
                process.clone(),
                CommandKind::Restart,
                Input::Restart(process),
            ),
        };
        let Some(view) = self.supervisor.view(&process) else {
            let _ = reply.send(unknown(&process));
            return;
        };
        if self.shutting_down {
            let _ = reply.send(Reply::Error {
                message: "the agent is shutting down".into(),
            });
            return;
        }
        tracing::info!(process = %process, command = ?kind, "command from the control socket");
        self.commands
            .add(process, kind, view.pid, Requester::Local(reply));
        self.feed(input);
    }

    /// Answers commands whose outcome is known, on the socket or over MQTT.
    fn dispatch(&mut self, resolved: Vec<Resolved>) {
        for done in resolved {
            match done.requester {
                Requester::Local(reply) => {
                    let answer = match done.result {
                        Ok(outcome) => Reply::Done {
                            process: done.process,
                            outcome,
                        },
                        Err(failure) => Reply::Error {
                            message: failure.message,
                        },
                    };
                    let _ = reply.send(answer);
                }
                Requester::Remote(request) => {
                    let reply = report::outcome_reply(
                        &request.cmd_id,
                        &self.config.agent.id,
                        &done.process,
                        &done.result,
                    );
                    self.answer(&request, reply);
                }
            }
        }
    }

    /// Sends a reply to an admitted command, remembers it so that the command never runs
    /// again, and records a final one as an audit event.
    fn answer(&mut self, request: &RemoteRequest, reply: CommandReply) {
        if self.recent.record(&reply) == Memory::Full {
            tracing::warn!("{RECENT_COMMANDS} commands in one session: starting a new session, so that none of them can be replayed once forgotten");
            if let Some(link) = &self.link {
                link.renew_session();
            }
        }
        self.send_reply(request, &reply);
        self.audit(request, &reply);
    }

    fn send_reply(&self, request: &RemoteRequest, reply: &CommandReply) {
        if let Some(link) = &self.link {
            link.reply(&request.requester, request.correlation.clone(), reply);
        }
    }

    /// Answers a command that will not run — unsigned, forged, stale, replayed, … — and logs
    /// and audits it within a budget: anyone who can publish on the broker, or who once saw a
    /// signed command go by, can send these by the thousand, and a flood of them must fill
    /// neither the log nor the event stream (nor the chat channels that follow it). What is
    /// not audited one by one is counted in the next audit event.
    fn refuse(&mut self, answer: Option<(RemoteRequest, CommandReply)>, rejection: &Rejection) {
        let now = Instant::now();
        let reason = rejection.reason.as_str();
        let Some((request, reply)) = answer else {
            if let Some(similar_before) = self.audit_budget.garbage(reason, now) {
                tracing::warn!(reason, message = %rejection.message, similar_before, "ignoring a command that cannot be answered");
            }
            return;
        };
        self.send_reply(&request, &reply);
        let Some((request, reply)) = self.audit_budget.refuse((request, reply), reason, now) else {
            return;
        };
        if rejection.reason == Reason::StaleSession {
            // The sender may have read an outdated birth (or none survived a broker restart).
            if let Some(link) = &self.link {
                link.republish_birth();
            }
        }
        self.audit(&request, &reply);
    }

    /// The end of an audit window with refusals held back and no audit since.
    fn flush_audit(&mut self) {
        if let Some((request, reply)) = self.audit_budget.flush(Instant::now()) {
            self.audit(&request, &reply);
        }
    }

    /// Logs a final reply and publishes it as an audit event, with the counts of what was not
    /// audited one by one since the previous one.
    fn audit(&mut self, request: &RemoteRequest, reply: &CommandReply) {
        let Some(link) = &self.link else {
            return;
        };
        if !reply.status.is_final() {
            return;
        }
        for (why, n) in link.take_unread() {
            self.audit_budget.count(why, n);
        }
        let unaudited = self.audit_budget.take_counts();
        if !unaudited.is_empty() {
            tracing::warn!(
                ?unaudited,
                "commands that were not logged or audited one by one since the last audit (over the budget, malformed, or shed)"
            );
        }
        if reply.status == ReplyStatus::Succeeded {
            tracing::info!(cmd_id = %reply.cmd_id, requester = %request.requester, signer = request.signer.as_deref().unwrap_or("-"), command = request.command.as_str(), process = request.process.as_deref().unwrap_or("-"), "remote command succeeded");
        } else {
            tracing::warn!(cmd_id = %reply.cmd_id, requester = %request.requester, signer = request.signer.as_deref().unwrap_or("-"), command = request.command.as_str(), process = request.process.as_deref().unwrap_or("-"), reason = reply.reason.map_or("-", |r| r.as_str()), message = reply.message.as_deref().unwrap_or_default(), "remote command {}", match reply.status {
                ReplyStatus::Rejected => "rejected",
                _ => "failed",
            });
        }
        link.event(
            request.process.as_deref(),
            EventKind::Command {
                cmd_id: reply.cmd_id.clone(),
                command: request.command.as_str().to_owned(),
                requester: request.requester.clone(),
                signer: request.signer.clone(),
                outcome: reply.status,
                reason: reply.reason,
                message: reply.message.clone(),
                unaudited,
            },
        );
    }

    /// A command that arrived over MQTT.
    fn handle_remote(&mut self, inbound: Inbound) {
        let agent = self.config.agent.id.clone();
        let session = self.link.as_ref().map(Link::session).unwrap_or_default();
        let policy = Policy {
            operators: &self.config.operators,
            allow_unsigned: self.config.agent.allow_unsigned_commands,
            session: &session,
        };
        let verdict = remote::admit(
            &inbound.payload,
            &agent,
            SystemTime::now(),
            |p| self.supervisor.contains(p),
            policy,
        );
        let admitted = match verdict {
            Ok(admitted) => admitted,
            Err(rejection) => {
                let answer = rejection.addressable().map(|(cmd_id, requester)| {
                    let request = RemoteRequest {
                        cmd_id: cmd_id.to_owned(),
                        requester: requester.to_owned(),
                        correlation: inbound.correlation,
                        command: rejection.command,
                        process: rejection.process.clone(),
                        signer: rejection.signer.clone(),
                    };
                    let reply = CommandReply::rejected(
                        cmd_id,
                        &agent,
                        rejection.reason,
                        rejection.message.clone(),
                    );
                    (request, reply)
                });
                return self.refuse(answer, &rejection);
            }
        };
        let body = admitted.body;
        // A command runs at most once: a repeat is rejected, with what happened the first
        // time (checked after the signature, so that a forgery learns nothing).
        let request = RemoteRequest {
            cmd_id: body.cmd_id.clone(),
            requester: body.requester.clone(),
            correlation: inbound.correlation,
            command: body.command,
            process: body.process.clone(),
            signer: admitted.signer,
        };
        if let Some(replay) = self.recent.replay(&body.cmd_id, &agent) {
            let rejection = Rejection {
                cmd_id: Some(body.cmd_id.clone()),
                requester: Some(body.requester.clone()),
                command: body.command,
                process: body.process.clone(),
                signer: request.signer.clone(),
                reason: Reason::Replayed,
                message: replay.message.clone().unwrap_or_default(),
            };
            return self.refuse(Some((request, replay)), &rejection);
        }
        let process = body.process.clone().unwrap_or_default();
        let reject =
            |reason, message: String| CommandReply::rejected(&body.cmd_id, &agent, reason, message);
        if self.shutting_down {
            let reply = reject(Reason::ShuttingDown, "the agent is shutting down".into());
            return self.answer(&request, reply);
        }
        let kind = match body.command {
            CommandName::Start => Some((CommandKind::Start, Input::Start(process.clone()))),
            CommandName::Stop => Some((CommandKind::Stop, Input::Stop(process.clone()))),
            CommandName::Restart => Some((CommandKind::Restart, Input::Restart(process.clone()))),
            CommandName::Logs | CommandName::Status | CommandName::Unknown => None,
        };
        if kind.is_some() && self.commands.is_busy(&process) {
            let reply = reject(
                Reason::Busy,
                format!("another command on {process} is under way"),
            );
            return self.answer(&request, reply);
        }
        tracing::info!(cmd_id = %body.cmd_id, requester = %body.requester, signer = request.signer.as_deref().unwrap_or("-"), command = body.command.as_str(), process = %process, "remote command accepted");
        self.answer(
            &request,
            CommandReply::new(&body.cmd_id, &agent, ReplyStatus::Accepted),
        );
        match kind {
            Some((kind, input)) => {
                let old_pid = self.supervisor.view(&process).and_then(|v| v.pid);
                self.commands
                    .add(process, kind, old_pid, Requester::Remote(request));
                self.feed(input);
            }
            None if body.command == CommandName::Status => {
                let clock = WallClock::now();
                let mut reply = CommandReply::new(&body.cmd_id, &agent, ReplyStatus::Succeeded);
                reply.processes = Some(
                    self.supervisor
                        .views()
                        .map(|v| self.status(&v, &clock))
                        .collect(),
                );
                self.answer(&request, reply);
            }
            None => {
                let wanted = body
                    .lines
                    .unwrap_or(remote::DEFAULT_LOG_LINES)
                    .min(remote::MAX_LOG_LINES);
                let (lines, cut) =
                    report::newest_within(self.lines(&process, wanted), report::LOGS_REPLY_BYTES);
                let mut reply = CommandReply::new(&body.cmd_id, &agent, ReplyStatus::Succeeded);
                reply.truncated = cut;
                reply.lines = Some(lines);
                self.answer(&request, reply);
            }
        }
    }

    /// Publishes the heartbeat.
    fn heartbeat(&self) {
        let (Some(link), Some(mqtt)) = (&self.link, &self.config.mqtt) else {
            return;
        };
        let views: Vec<_> = self.supervisor.views().collect();
        let memory = procfs::memory_kb();
        let heartbeat = Heartbeat {
            v: respawn_common::messages::VERSION,
            agent: self.config.agent.id.clone(),
            at: SystemTime::now(),
            interval_secs: mqtt.heartbeat.as_secs(),
            uptime_secs: self.started.elapsed().as_secs(),
            running: views
                .iter()
                .filter(|v| v.state == ProcessState::Running)
                .count() as u32,
            processes: views.len() as u32,
            load1: procfs::load1(),
            mem_total_kb: memory.map(|m| m.0),
            mem_available_kb: memory.map(|m| m.1),
            cpu_temp_c: procfs::cpu_temperature(),
        };
        link.heartbeat(&heartbeat);
    }

    fn log_notice(&self, notice: &Notice) {
        let name = &notice.name;
        match &notice.kind {
            NoticeKind::Started { pid, restarts } => {
                tracing::info!(process = %name, pid, restarts, "started");
            }
            NoticeKind::Exited(info)
                if info.requested || (info.next_start.is_none() && info.status.is_success()) =>
            {
                let how = if info.requested {
                    "exited as asked"
                } else {
                    "finished"
                };
                tracing::info!(process = %name, pid = info.pid, status = %info.status, runtime = %format_duration(info.runtime), "{how}");
            }
            NoticeKind::Exited(info) => {
                let next = match info.next_start {
                    Some(at) => format!(
                        "restart in {}",
                        format_duration(at.saturating_duration_since(info.at))
                    ),
                    None => "no restart".into(),
                };
                let tail = self.tail(name, 1);
                tracing::warn!(process = %name, pid = info.pid, status = %info.status, runtime = %format_duration(info.runtime), restarts = info.restarts, last_line = %tail, "exited; {next}");
            }
            NoticeKind::SpawnFailed { error, next_start } => {
                let next = match next_start {
                    Some(at) => format!(
                        "retry in {}",
                        format_duration(at.saturating_duration_since(Instant::now()))
                    ),
                    None => "no retry".into(),
                };
                tracing::error!(process = %name, error = %error, "could not be started; {next}");
            }
            NoticeKind::CrashLoop { exits, window } => {
                tracing::error!(process = %name, "crash loop: {exits} exits within {}; retrying at the longest backoff", format_duration(*window));
            }
            NoticeKind::Recovered => {
                tracing::info!(process = %name, "recovered from its crash loop")
            }
            NoticeKind::Unhealthy { reason } => {
                tracing::error!(process = %name, "unhealthy: {reason}; restarting it")
            }
            NoticeKind::Stopped => tracing::info!(process = %name, "stopped"),
            NoticeKind::Failed { restarts } => {
                tracing::error!(process = %name, "gave up after {restarts} restarts without a stable run; `respawn-agent start {name}` tries again");
            }
        }
    }

    fn tail(&self, name: &str, n: usize) -> String {
        self.rings
            .get(name)
            .map(|ring| {
                let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                ring.tail(n)
                    .into_iter()
                    .map(|l| l.text)
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default()
    }
}

fn unknown(process: &str) -> Reply {
    Reply::Error {
        message: format!("unknown process {process:?}"),
    }
}

fn format_duration(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    };
    humantime::format_duration(rounded).to_string()
}
