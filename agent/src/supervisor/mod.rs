//! The supervision state machine: decides when each process is started, stopped, restarted or
//! given up, and nothing else.
//!
//! It is pure. [`Supervisor::step`] takes an [`Input`] and the current time and returns the
//! [`Action`]s for the runtime to carry out; it never touches a process, a clock, a file or the
//! network. Timers are not kept either: [`Supervisor::next_deadline`] says when the state
//! machine next wants an [`Input::Tick`]. That is what lets backoff, crash loops and stop
//! timeouts be tested exhaustively with virtual time.

mod policy;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use respawn_common::status::{ExitStatus, ProcessState};

use crate::config::{ProcessConfig, RestartPolicy};
pub use policy::Jitter;
use policy::{backoff_delay, wants_restart, ExitWindow};

/// Something that happened, for the state machine to decide on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The configured set of processes, at start-up and on every reload.
    Configure(Vec<ProcessConfig>),
    /// Start a process that is not running (a manual start).
    Start(String),
    /// Stop a process and keep it stopped (a manual stop).
    Stop(String),
    /// Stop a process if it runs, then start it.
    Restart(String),
    /// The runtime started the process asked for by [`Action::Spawn`].
    Spawned { name: String, pid: u32 },
    /// The runtime could not start the process asked for by [`Action::Spawn`].
    SpawnFailed { name: String, error: String },
    /// The process is ready: its health check passed for the first time, or it said
    /// `READY=1`.
    Ready { name: String, pid: u32 },
    /// The process runs but does not work (a failed health check, a missed watchdog ping,
    /// too much memory): it is restarted, and that counts like a crash.
    Unhealthy {
        name: String,
        pid: u32,
        reason: String,
    },
    /// A main process ended; its output has been read to the end, and what else it started
    /// is gone.
    Exited {
        name: String,
        pid: u32,
        status: ExitStatus,
        /// What the kernel counted of out-of-memory kills while it ran.
        oom: OomEvidence,
    },
    /// Time has passed; deadlines up to now are due.
    Tick,
    /// The agent is shutting down: stop everything, start nothing. A second, forced shutdown
    /// kills what is still stopping.
    Shutdown { force: bool },
}

/// What the runtime is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process with its current configuration, then report
    /// [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn { name: String },
    /// Send `signal` to the process group led by `pid`.
    Signal {
        name: String,
        pid: u32,
        signal: Signal,
    },
    /// SIGKILL the process group led by `pid`.
    Kill { name: String, pid: u32 },
    /// Report a lifecycle event.
    Emit(Notice),
    /// Persist whether the process was stopped by hand, so that it stays stopped across
    /// agent restarts.
    RememberStopped { name: String, stopped: bool },
    /// The process was removed from the configuration and is gone; drop what is kept for it.
    Forget { name: String },
}

impl Action {
    /// The process the action is about.
    pub fn process(&self) -> &str {
        match self {
            Self::Spawn { name }
            | Self::Signal { name, .. }
            | Self::Kill { name, .. }
            | Self::RememberStopped { name, .. }
            | Self::Forget { name } => name,
            Self::Emit(notice) => &notice.name,
        }
    }
}

/// A lifecycle event of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub name: String,
    pub kind: NoticeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    Started {
        pid: u32,
        restarts: u32,
    },
    Exited(ExitInfo),
    SpawnFailed {
        error: String,
        next_start: Option<Instant>,
    },
    /// The process exited `exits` times within `window`; it is now retried at the
    /// longest backoff.
    CrashLoop {
        exits: u32,
        window: Duration,
    },
    /// A crash loop ended: the process has run stably and the window holds fewer exits than
    /// the limit.
    Recovered,
    /// The process runs but does not work; it is being restarted.
    Unhealthy {
        reason: String,
    },
    Stopped,
    /// The process was given up after `restarts` unstable restarts in a row.
    Failed {
        restarts: u32,
    },
}

/// What the kernel counted of out-of-memory kills while a process ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OomEvidence {
    /// None counted, or nothing to count them with.
    #[default]
    None,
    /// Its own cgroup counted one: the kernel killed it, or one of its processes. `limit`:
    /// the `memory.max` it ran into, if it had one.
    InItsCgroup { limit: Option<u64> },
    /// The machine counted one while it ran: it was this process if a SIGKILL that nobody
    /// asked for ended it.
    OnTheMachine,
}

/// The kernel killed the process for want of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// The memory limit the kernel enforced on it, if any (else the machine ran out).
    pub limit: Option<u64>,
}

impl OomEvidence {
    /// Whether the exit was an out-of-memory kill, and how it is known.
    fn verdict(self, status: &ExitStatus, requested: bool) -> Option<OomKill> {
        let unasked_sigkill = !requested
            && matches!(status, ExitStatus::Signal { signal, .. } if signal == "SIGKILL");
        match self {
            Self::InItsCgroup { limit } => Some(OomKill { limit }),
            Self::OnTheMachine if unasked_sigkill => Some(OomKill { limit: None }),
            Self::OnTheMachine | Self::None => None,
        }
    }
}

/// How a run of a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    pub status: ExitStatus,
    pub at: Instant,
    pub runtime: Duration,
    /// Automatic restarts before this exit.
    pub restarts: u32,
    /// Whether a stop, restart or shutdown asked for this exit, or the agent's own restart of
    /// an unhealthy process.
    pub requested: bool,
    /// Asked for by the agent's own shutdown (not by a stop by hand): a restart or an upgrade
    /// of the agent, which says nothing about the process.
    pub shutdown: bool,
    pub next_start: Option<Instant>,
    /// Why the agent stopped the process itself: what made it unhealthy.
    pub reason: Option<String>,
    /// Set when the kernel killed it for want of memory.
    pub oom: Option<OomKill>,
}

/// A read-only view of one process for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub since: Instant,
    pub restarts: u32,
    pub crash_loop: bool,
    pub manually_stopped: bool,
    pub last_exit: Option<ExitInfo>,
    pub spawn_error: Option<String>,
    pub next_start: Option<Instant>,
}

/// Every supervised process and the decisions about it.
#[derive(Debug)]
pub struct Supervisor {
    units: BTreeMap<String, Unit>,
    /// The processes' names in the order of the configuration, which views keep.
    order: Vec<String>,
    /// Names stopped by hand in an earlier run of the agent, applied when the unit is created.
    remembered_stopped: BTreeSet<String>,
    jitter: Jitter,
    shutting_down: bool,
}

#[derive(Debug)]
struct Unit {
    config: Arc<ProcessConfig>,
    phase: Phase,
    /// When `phase` was entered.
    since: Instant,
    manually_stopped: bool,
    /// Automatic restarts since the last manual or initial start.
    restarts: u32,
    /// Runs in a row that ended before `stable_after`; drives backoff and `max_restarts`.
    unstable_exits: u32,
    exits: ExitWindow,
    crash_loop: bool,
    last_exit: Option<ExitInfo>,
    spawn_error: Option<String>,
    /// What is to happen once the main process is gone.
    intent: Intent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Stopped,
    Failed,
    /// [`Action::Spawn`] was issued; the outcome is awaited.
    Starting,
    Running {
        pid: u32,
        started: Instant,
        /// Whether it said it is ready (shown as `starting` until then).
        ready: bool,
    },
    /// Waiting to start again after an exit or a failed start.
    Waiting {
        until: Instant,
        spawn_failed: bool,
    },
    /// The stop signal was sent; `kill_at` is when SIGKILL follows (`None` once sent).
    Stopping {
        pid: u32,
        started: Instant,
        kill_at: Option<Instant>,
    },
}

/// What is to happen once a unit's main process is gone. Requests that arrive while a stop is
/// under way combine here instead of replacing one another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Intent {
    /// Stop as soon as the starting process has a pid.
    stop: bool,
    /// Start again (unless stopped by hand or shutting down).
    start: bool,
    /// Take this configuration before starting again.
    config: Option<Arc<ProcessConfig>>,
    /// Drop the unit: it left the configuration. Wins over everything else.
    remove: bool,
    /// Why the process is stopped for being unhealthy: its exit counts like a crash.
    unhealthy: Option<String>,
}

impl Supervisor {
    /// `remembered_stopped` holds the processes that were stopped by hand before the agent
    /// last exited; `seed` seeds the backoff jitter.
    pub fn new(remembered_stopped: BTreeSet<String>, seed: u64) -> Self {
        Self {
            units: BTreeMap::new(),
            order: Vec::new(),
            remembered_stopped,
            jitter: Jitter::new(seed),
            shutting_down: false,
        }
    }

    /// Feeds one input to the state machine at time `now`.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Configure(configs) => self.configure(configs, now, &mut out),
            Input::Start(name) => self.with_unit(&name, now, &mut out, |ctx| ctx.manual_start()),
            Input::Stop(name) => self.with_unit(&name, now, &mut out, |ctx| ctx.manual_stop()),
            Input::Restart(name) => {
                self.with_unit(&name, now, &mut out, |ctx| ctx.manual_restart())
            }
            Input::Spawned { name, pid } => {
                self.with_unit(&name, now, &mut out, |ctx| ctx.spawned(pid))
            }
            Input::SpawnFailed { name, error } => {
                self.with_unit(&name, now, &mut out, |ctx| ctx.spawn_failed(error))
            }
            Input::Ready { name, pid } => {
                self.with_unit(&name, now, &mut out, |ctx| ctx.ready(pid))
            }
            Input::Unhealthy { name, pid, reason } => {
                self.with_unit(&name, now, &mut out, |ctx| ctx.unhealthy(pid, reason))
            }
            Input::Exited {
                name,
                pid,
                status,
                oom,
            } => self.with_unit(&name, now, &mut out, |ctx| ctx.exited(pid, status, oom)),
            Input::Tick => {
                let names: Vec<String> = self.units.keys().cloned().collect();
                for name in names {
                    self.with_unit(&name, now, &mut out, |ctx| ctx.tick());
                }
            }
            Input::Shutdown { force } => {
                self.shutting_down = true;
                let names: Vec<String> = self.units.keys().cloned().collect();
                for name in names {
                    self.with_unit(&name, now, &mut out, |ctx| ctx.shutdown(force));
                }
            }
        }
        out
    }

    /// The earliest moment at which an [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.units.values().filter_map(Unit::deadline).min()
    }

    /// True when no process is starting, running or stopping.
    pub fn is_idle(&self) -> bool {
        self.units.values().all(|u| {
            matches!(
                u.phase,
                Phase::Stopped | Phase::Failed | Phase::Waiting { .. }
            )
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.units.contains_key(name)
    }

    /// The configuration a process is started with.
    pub fn config(&self, name: &str) -> Option<&Arc<ProcessConfig>> {
        self.units.get(name).map(|u| &u.config)
    }

    pub fn view(&self, name: &str) -> Option<UnitView> {
        self.units.get(name).map(|u| u.view())
    }

    /// Every process, in the order of the configuration; those removed from it and still
    /// stopping come last.
    pub fn views(&self) -> impl Iterator<Item = UnitView> + '_ {
        let configured = self.order.iter().filter_map(|name| self.units.get(name));
        let ordered: BTreeSet<&str> = self.order.iter().map(String::as_str).collect();
        let leaving = (self.units.iter())
            .filter(move |(name, _)| !ordered.contains(name.as_str()))
            .map(|(_, unit)| unit);
        configured.chain(leaving).map(Unit::view)
    }

    fn configure(&mut self, configs: Vec<ProcessConfig>, now: Instant, out: &mut Vec<Action>) {
        self.order = configs.iter().map(|c| c.name.clone()).collect();
        let wanted: BTreeMap<String, ProcessConfig> =
            configs.into_iter().map(|c| (c.name.clone(), c)).collect();
        let removed: Vec<String> = self
            .units
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            self.with_unit(&name, now, out, |ctx| ctx.remove());
        }
        for (name, config) in wanted {
            match self.units.get(&name) {
                Some(unit) if !unit.intent.remove && **unit.effective_config() == config => {}
                // Only what is reported differs: take it without a restart.
                Some(unit) if !unit.intent.remove && unit.effective_config().runs_as(&config) => {
                    if let Some(unit) = self.units.get_mut(&name) {
                        let config = Arc::new(config);
                        match &mut unit.intent.config {
                            Some(pending) => *pending = config,
                            None => unit.config = config,
                        }
                    }
                }
                Some(_) => {
                    let config = Arc::new(config);
                    self.with_unit(&name, now, out, |ctx| ctx.replace(config));
                }
                None => {
                    let manually_stopped = self.remembered_stopped.remove(&name);
                    let autostart = config.autostart;
                    self.units.insert(
                        name.clone(),
                        Unit::new(Arc::new(config), now, manually_stopped),
                    );
                    if autostart && !manually_stopped && !self.shutting_down {
                        self.with_unit(&name, now, out, |ctx| ctx.spawn());
                    }
                }
            }
        }
    }

    fn with_unit(
        &mut self,
        name: &str,
        now: Instant,
        out: &mut Vec<Action>,
        f: impl FnOnce(&mut Ctx<'_>),
    ) {
        let Some(unit) = self.units.get_mut(name) else {
            return;
        };
        let mut ctx = Ctx {
            unit,
            now,
            out,
            jitter: &mut self.jitter,
            shutting_down: self.shutting_down,
            drop_unit: false,
        };
        f(&mut ctx);
        if ctx.drop_unit {
            self.units.remove(name);
            out.push(Action::Forget {
                name: name.to_owned(),
            });
        }
    }
}

impl Unit {
    fn new(config: Arc<ProcessConfig>, now: Instant, manually_stopped: bool) -> Self {
        Self {
            config,
            phase: Phase::Stopped,
            since: now,
            manually_stopped,
            restarts: 0,
            unstable_exits: 0,
            exits: ExitWindow::default(),
            crash_loop: false,
            last_exit: None,
            spawn_error: None,
            intent: Intent::default(),
        }
    }

    /// The configuration the unit will run with once pending changes are applied.
    fn effective_config(&self) -> &Arc<ProcessConfig> {
        self.intent.config.as_ref().unwrap_or(&self.config)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { until, .. } => Some(until),
            Phase::Stopping { kill_at, .. } => kill_at,
            Phase::Running { started, .. } => {
                let stable_at = started + self.config.stable_after;
                let reset = (self.unstable_exits > 0).then_some(stable_at);
                let recover = self.crash_loop.then(|| {
                    let cl = self.config.crash_loop;
                    self.exits
                        .below_limit_at(cl.max_exits, cl.window)
                        .map_or(stable_at, |t| t.max(stable_at))
                });
                let scheduled = self.config.restart_every.map(|every| started + every);
                reset.into_iter().chain(recover).chain(scheduled).min()
            }
            Phase::Stopped | Phase::Failed | Phase::Starting => None,
        }
    }

    fn view(&self) -> UnitView {
        let (state, pid, next_start) = match self.phase {
            Phase::Stopped => (ProcessState::Stopped, None, None),
            Phase::Failed => (ProcessState::Failed, None, None),
            Phase::Starting => (ProcessState::Starting, None, None),
            Phase::Running {
                pid, ready: false, ..
            } => (ProcessState::Starting, Some(pid), None),
            Phase::Running { pid, .. } => (ProcessState::Running, Some(pid), None),
            Phase::Stopping { pid, .. } => (ProcessState::Stopping, Some(pid), None),
            Phase::Waiting {
                until,
                spawn_failed,
            } => {
                let state = if self.crash_loop {
                    ProcessState::CrashLoop
                } else if spawn_failed {
                    ProcessState::SpawnFailed
                } else {
                    ProcessState::Backoff
                };
                (state, None, Some(until))
            }
        };
        UnitView {
            name: self.config.name.clone(),
            state,
            pid,
            since: self.since,
            restarts: self.restarts,
            crash_loop: self.crash_loop,
            manually_stopped: self.manually_stopped,
            last_exit: self.last_exit.clone(),
            spawn_error: self.spawn_error.clone(),
            next_start,
        }
    }
}

/// One unit, the time, and where its actions go: the context of every transition.
struct Ctx<'a> {
    unit: &'a mut Unit,
    now: Instant,
    out: &'a mut Vec<Action>,
    jitter: &'a mut Jitter,
    shutting_down: bool,
    /// Set when the unit is to be dropped once the transition is done.
    drop_unit: bool,
}

impl Ctx<'_> {
    fn name(&self) -> String {
        self.unit.config.name.clone()
    }

    fn enter(&mut self, phase: Phase) {
        self.unit.phase = phase;
        self.unit.since = self.now;
    }

    fn emit(&mut self, kind: NoticeKind) {
        let name = self.name();
        self.out.push(Action::Emit(Notice { name, kind }));
    }

    fn emit_all(&mut self, kinds: impl IntoIterator<Item = NoticeKind>) {
        for kind in kinds {
            self.emit(kind);
        }
    }

    fn remember_stopped(&mut self, stopped: bool) {
        if self.unit.manually_stopped != stopped {
            self.unit.manually_stopped = stopped;
            let name = self.name();
            self.out.push(Action::RememberStopped { name, stopped });
        }
    }

    fn spawn(&mut self) {
        self.enter(Phase::Starting);
        let name = self.name();
        self.out.push(Action::Spawn { name });
    }

    /// A fresh start asked for by a person or a new configuration: no backoff carried over.
    fn fresh_start(&mut self) {
        self.unit.restarts = 0;
        self.unit.unstable_exits = 0;
        self.spawn();
    }

    /// Enters `stopped`, reporting it unless the unit already was.
    fn rest(&mut self) {
        if self.unit.phase != Phase::Stopped {
            self.enter(Phase::Stopped);
            self.emit(NoticeKind::Stopped);
        }
    }

    /// Makes the main process go, then carries out the intent.
    fn stop_then(&mut self) {
        match self.unit.phase {
            Phase::Running { pid, started, .. } => {
                let name = self.name();
                self.out.push(Action::Signal {
                    name,
                    pid,
                    signal: self.unit.config.stop_signal,
                });
                let kill_at = Some(self.now + self.unit.config.stop_timeout);
                self.enter(Phase::Stopping {
                    pid,
                    started,
                    kill_at,
                });
            }
            Phase::Starting => self.unit.intent.stop = true,
            Phase::Stopping { .. } => {}
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } => self.finish_stop(),
        }
    }

    /// SIGKILLs a stopping process now; no further deadline.
    fn kill_now(&mut self) {
        if let Phase::Stopping { pid, started, .. } = self.unit.phase {
            let name = self.name();
            self.out.push(Action::Kill { name, pid });
            self.unit.phase = Phase::Stopping {
                pid,
                started,
                kill_at: None,
            };
        }
    }

    /// The main process is gone (or never was): carry out the intent.
    fn finish_stop(&mut self) {
        let intent = std::mem::take(&mut self.unit.intent);
        if intent.remove {
            self.rest();
            self.drop_unit = true;
            return;
        }
        if let Some(config) = intent.config {
            self.unit.config = config;
        }
        if intent.start && !self.shutting_down && !self.unit.manually_stopped {
            self.fresh_start();
        } else {
            self.rest();
        }
    }

    /// While starting, a start or restart cancels a requested stop, unless a new
    /// configuration waits for that stop.
    fn keep_starting(&mut self) {
        if self.unit.intent.config.is_none() {
            self.unit.intent.stop = false;
        }
        self.unit.intent.start = true;
    }

    fn manual_start(&mut self) {
        if self.shutting_down || self.unit.intent.remove {
            return;
        }
        self.remember_stopped(false);
        match self.unit.phase {
            Phase::Running { .. } => {}
            Phase::Starting => self.keep_starting(),
            Phase::Stopping { .. } => self.unit.intent.start = true,
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } => self.fresh_start(),
        }
    }

    fn manual_stop(&mut self) {
        self.remember_stopped(true);
        // Stopped on purpose, it loops no more: a crash loop is what runs and fails again.
        // Its exits stay counted, so that failing again soon after a start is a loop again.
        self.unit.crash_loop = false;
        self.unit.intent.start = false;
        self.stop_then();
    }

    fn manual_restart(&mut self) {
        if self.shutting_down || self.unit.intent.remove {
            return;
        }
        self.remember_stopped(false);
        if self.unit.phase == Phase::Starting {
            return self.keep_starting();
        }
        self.unit.intent.start = true;
        self.stop_then();
    }

    fn remove(&mut self) {
        self.unit.intent.remove = true;
        self.stop_then();
    }

    /// The configuration file changed this process (or brought back one being removed).
    fn replace(&mut self, config: Arc<ProcessConfig>) {
        let restored = std::mem::take(&mut self.unit.intent.remove);
        let changed = config != self.unit.config;
        match self.unit.phase {
            Phase::Running { .. } | Phase::Starting => {
                if changed {
                    self.unit.intent.config = Some(config);
                    self.unit.intent.start = true;
                    self.stop_then();
                } else {
                    self.unit.intent.config = None;
                }
            }
            Phase::Stopping { .. } => {
                // Whatever the stop was for still holds; only the configuration to start
                // with changes. A process brought back while being removed starts again.
                self.unit.intent.config = changed.then_some(config);
                if restored {
                    self.unit.intent.start = true;
                }
            }
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } => {
                // Not running: like a new process with the new configuration.
                let autostart = config.autostart;
                self.unit.config = config;
                if autostart && !self.unit.manually_stopped && !self.shutting_down {
                    self.fresh_start();
                } else if self.unit.phase != Phase::Stopped {
                    self.rest();
                }
            }
        }
    }

    fn spawned(&mut self, pid: u32) {
        if self.unit.phase != Phase::Starting {
            return;
        }
        self.unit.spawn_error = None;
        self.enter(Phase::Running {
            pid,
            started: self.now,
            ready: !self.unit.config.awaits_readiness(),
        });
        let restarts = self.unit.restarts;
        self.emit(NoticeKind::Started { pid, restarts });
        if std::mem::take(&mut self.unit.intent.stop) {
            self.stop_then();
        }
    }

    fn spawn_failed(&mut self, error: String) {
        if self.unit.phase != Phase::Starting {
            return;
        }
        self.unit.spawn_error = Some(error.clone());
        if std::mem::take(&mut self.unit.intent.stop) {
            self.emit(NoticeKind::SpawnFailed {
                error,
                next_start: None,
            });
            return self.finish_stop();
        }
        // `never` runs a program once; one that could not even start is given up at once.
        let retry = self.unit.config.restart != RestartPolicy::Never;
        let (next_start, crash_loop) = self.schedule_restart(false, retry);
        self.emit(NoticeKind::SpawnFailed { error, next_start });
        self.emit_all(crash_loop);
        self.after_failure(next_start, true);
    }

    fn ready(&mut self, pid: u32) {
        if let Phase::Running {
            pid: p,
            started,
            ready: false,
        } = self.unit.phase
        {
            if p == pid {
                // Not `enter`: `since` stays the start, so that uptime is the process's.
                self.unit.phase = Phase::Running {
                    pid,
                    started,
                    ready: true,
                };
            }
        }
    }

    fn unhealthy(&mut self, pid: u32, reason: String) {
        if !matches!(self.unit.phase, Phase::Running { pid: p, .. } if p == pid) {
            return;
        }
        self.unit.intent.unhealthy = Some(reason.clone());
        self.emit(NoticeKind::Unhealthy { reason });
        self.unit.intent.start = true;
        self.stop_then();
    }

    fn exited(&mut self, pid: u32, status: ExitStatus, oom: OomEvidence) {
        let (started, requested) = match self.unit.phase {
            Phase::Running {
                pid: p, started, ..
            } if p == pid => (started, false),
            Phase::Stopping {
                pid: p, started, ..
            } if p == pid => (started, true),
            _ => return,
        };
        let runtime = self.now.saturating_duration_since(started);
        let mut info = ExitInfo {
            pid,
            oom: oom.verdict(&status, requested),
            status,
            at: self.now,
            runtime,
            restarts: self.unit.restarts,
            requested,
            shutdown: requested && self.shutting_down && !self.unit.manually_stopped,
            next_start: None,
            reason: None,
        };
        let unhealthy = std::mem::take(&mut self.unit.intent.unhealthy);
        let intent = &self.unit.intent;
        let still_wanted =
            intent.start && !intent.remove && !self.unit.manually_stopped && !self.shutting_down;
        if requested && !(unhealthy.is_some() && still_wanted) {
            self.unit.last_exit = Some(info.clone());
            self.emit(NoticeKind::Exited(info));
            return self.finish_stop();
        }
        if unhealthy.is_some() {
            // Stopped for not working: restarted like after a crash, with backoff, and
            // counted towards a crash loop. A new configuration that waited is taken.
            let intent = std::mem::take(&mut self.unit.intent);
            if let Some(config) = intent.config {
                self.unit.config = config;
            }
        }

        // However a process stopped for being unhealthy went, it is to run again (unless it
        // is never to be restarted).
        let restart = !self.shutting_down
            && match unhealthy {
                Some(_) => self.unit.config.restart != RestartPolicy::Never,
                None => wants_restart(self.unit.config.restart, &info.status),
            };
        info.reason = unhealthy;
        let stable = runtime >= self.unit.config.stable_after;
        let (next_start, crash_loop) = self.schedule_restart(stable, restart);
        info.next_start = next_start;
        self.unit.last_exit = Some(info.clone());
        self.emit(NoticeKind::Exited(info));
        self.emit_all(crash_loop);
        if !restart {
            return self.rest();
        }
        self.after_failure(next_start, false);
    }

    /// Counts an exit (or failed start) and decides when the next start is due: `None`
    /// when there is none because the process is done or given up. Also returns the
    /// crash-loop notice when this exit began one.
    fn schedule_restart(
        &mut self,
        stable: bool,
        restart: bool,
    ) -> (Option<Instant>, Option<NoticeKind>) {
        let config = Arc::clone(&self.unit.config);
        self.unit.exits.record(self.now, config.crash_loop.window);
        if stable {
            self.unit.unstable_exits = 0;
        } else {
            self.unit.unstable_exits = self.unit.unstable_exits.saturating_add(1);
        }
        if !restart || self.shutting_down {
            return (None, None);
        }
        if config
            .max_restarts
            .is_some_and(|max| self.unit.unstable_exits > max)
        {
            return (None, None);
        }
        let in_window = self.unit.exits.count(self.now, config.crash_loop.window);
        let mut began = None;
        if !self.unit.crash_loop && in_window >= config.crash_loop.max_exits as usize {
            self.unit.crash_loop = true;
            began = Some(NoticeKind::CrashLoop {
                exits: u32::try_from(in_window).unwrap_or(u32::MAX),
                window: config.crash_loop.window,
            });
        }
        let delay = if self.unit.crash_loop {
            self.jitter
                .apply_within(config.backoff.max, config.backoff.max)
        } else if self.unit.unstable_exits == 0 {
            Duration::ZERO
        } else {
            let delay = backoff_delay(config.backoff, self.unit.unstable_exits);
            self.jitter.apply_within(delay, config.backoff.max)
        };
        (Some(self.now + delay), began)
    }

    /// After an unrequested exit or failed start: wait, restart now, or give up.
    fn after_failure(&mut self, next_start: Option<Instant>, spawn_failed: bool) {
        match next_start {
            None if self.shutting_down => self.rest(),
            None => {
                self.enter(Phase::Failed);
                let restarts = self.unit.unstable_exits.saturating_sub(1);
                self.emit(NoticeKind::Failed { restarts });
            }
            Some(at) if at <= self.now => {
                self.unit.restarts += 1;
                self.spawn();
            }
            Some(until) => self.enter(Phase::Waiting {
                until,
                spawn_failed,
            }),
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        match self.unit.phase {
            Phase::Waiting { until, .. } if now >= until => {
                self.unit.restarts += 1;
                self.spawn();
            }
            Phase::Stopping {
                kill_at: Some(at), ..
            } if now >= at => self.kill_now(),
            Phase::Running { started, .. } => {
                let config = Arc::clone(&self.unit.config);
                if config
                    .restart_every
                    .is_some_and(|every| now >= started + every)
                {
                    self.unit.intent.start = true;
                    return self.stop_then();
                }
                if now < started + config.stable_after {
                    return;
                }
                self.unit.unstable_exits = 0;
                let in_window = self.unit.exits.count(now, config.crash_loop.window);
                if self.unit.crash_loop && in_window < config.crash_loop.max_exits as usize {
                    self.unit.crash_loop = false;
                    self.emit(NoticeKind::Recovered);
                }
            }
            _ => {}
        }
    }

    fn shutdown(&mut self, force: bool) {
        self.unit.intent.start = false;
        match self.unit.phase {
            Phase::Running { pid, started, .. } if force => {
                let name = self.name();
                self.out.push(Action::Kill { name, pid });
                self.enter(Phase::Stopping {
                    pid,
                    started,
                    kill_at: None,
                });
            }
            Phase::Stopping { .. } if force => self.kill_now(),
            Phase::Stopping { .. } | Phase::Stopped | Phase::Failed => {}
            Phase::Running { .. } | Phase::Starting | Phase::Waiting { .. } => self.stop_then(),
        }
    }
}
