//! The supervision state machine: decides when each process is started, stopped, restarted or
//! given up, and nothing else.
//!
//! It is pure. [`Supervisor::step`] takes an [`Input`] and the current time and returns the
//! [`Action`]s for the runtime to carry out; it never touches a process, a clock, a file or the
//! network. Timers are not kept either: [`Supervisor::next_deadline`] says when the state
//! machine next wants an [`Input::Tick`]. That is what lets backoff, crash loops and stop
//! timeouts be tested exhaustively with virtual time.

pub mod health;
mod policy;
#[cfg(test)]
mod tests;
mod transitions;
mod unit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use respawn_common::messages::ConfigChanges;
use respawn_common::status::{ExitStatus, ProcessState};

use crate::config::ProcessConfig;
use crate::shell::KILL_GRACE;
pub use policy::{backoff_delay, Jitter};
use transitions::Ctx;
use unit::{Phase, Unit};

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
    /// A main process ended, at `ended`; its output has been read to the end, and what else
    /// it started is gone (which may take a while after `ended`).
    Exited {
        name: String,
        pid: u32,
        status: ExitStatus,
        /// What the kernel counted of out-of-memory kills while it ran.
        oom: OomEvidence,
        ended: Instant,
    },
    /// Time has passed; deadlines up to now are due.
    Tick,
    /// The agent is shutting down: stop everything, start nothing. A second, forced shutdown
    /// kills what is still stopping.
    Shutdown { force: bool },
}

/// How a configured process takes a new configuration of it.
enum Fit {
    /// It has none yet.
    New,
    /// The same configuration.
    Same,
    /// Only what is reported differs, or, while it runs, how it is supervised: taken without
    /// a restart.
    InPlace,
    /// It runs something else, or otherwise: stopped if it runs, and started with it.
    Replace,
}

/// What the runtime is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the process with its current configuration, then report
    /// [`Input::Spawned`] or [`Input::SpawnFailed`].
    Spawn { name: String },
    /// Send `signal` to the process `pid` and all it started: its cgroup where it has one, else
    /// the process group it leads.
    Signal {
        name: String,
        pid: u32,
        signal: Signal,
    },
    /// SIGKILL the process `pid` and all it started, as `Signal` reaches them.
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
    /// It stopped; `removed`: as it left the configuration.
    Stopped {
        removed: bool,
    },
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
    /// Restarted because its `restart_every` was up.
    pub scheduled: bool,
    /// It outlived its `stop_timeout` after the stop signal and was killed.
    pub killed_at_stop_timeout: bool,
}

/// A read-only view of one process for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitView {
    pub name: String,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub since: Instant,
    pub restarts: u32,
    /// When its crash loop began, while it lasts.
    pub crash_loop_since: Option<Instant>,
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
    /// While a configuration is taken: what it starts waits until then for the processes
    /// it or an earlier one removed ([`Supervisor::leaving_gone_by`]).
    hold_until: Option<Instant>,
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
            hold_until: None,
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
                ended,
            } => self.with_unit(&name, now, &mut out, |ctx| {
                ctx.exited(pid, status, oom, ended)
            }),
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
        self.release_held(now, &mut out);
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
        // What this change starts waits for what leaves to be gone.
        self.hold_until = self.leaving_gone_by(now);
        for (name, config) in wanted {
            match self.fit(&config) {
                Fit::Same => {}
                Fit::InPlace => {
                    if let Some(unit) = self.units.get_mut(&name) {
                        let config = Arc::new(config);
                        match &mut unit.intent.config {
                            Some(pending) => *pending = config,
                            None => unit.config = config,
                        }
                        unit.follow_stop_timeout();
                    }
                    self.with_unit(&name, now, out, |ctx| ctx.reconsider_restart());
                }
                Fit::Replace => {
                    let config = Arc::new(config);
                    self.with_unit(&name, now, out, |ctx| ctx.replace(config));
                }
                Fit::New => {
                    let manually_stopped = self.remembered_stopped.remove(&name);
                    let autostart = config.autostart;
                    let unit = Unit::new(Arc::new(config), now, manually_stopped);
                    self.units.insert(name.clone(), unit);
                    if autostart && !manually_stopped && !self.shutting_down {
                        self.with_unit(&name, now, out, |ctx| ctx.start_when_free());
                    }
                }
            }
        }
        self.hold_until = None;
    }

    /// When the processes leaving the configuration are gone at the latest: each has its
    /// `stop_timeout` from its stop signal, then SIGKILL and the time that takes. `None` when
    /// none is leaving, or those that are outlived that (the kernel cannot kill them): they
    /// hold back no start.
    pub fn leaving_gone_by(&self, now: Instant) -> Option<Instant> {
        let leaving = self.units.values().filter(|unit| unit.intent.remove);
        let bounds = leaving.map(|unit| {
            let timeout = unit.effective_config().stop_timeout;
            let killed_by = match unit.phase {
                Phase::Stopping { asked, kill_at, .. } => kill_at.unwrap_or(asked + timeout),
                _ => now + timeout,
            };
            killed_by + KILL_GRACE
        });
        bounds.max().filter(|&bound| bound > now)
    }

    /// The processes held back for those leaving the configuration, and the leaving ones.
    pub fn held(&self) -> (Vec<&str>, Vec<&str>) {
        let names = |keep: fn(&Unit) -> bool| {
            let kept = self.units.iter().filter(move |(_, unit)| keep(unit));
            kept.map(|(name, _)| name.as_str()).collect()
        };
        (
            names(|unit| matches!(unit.phase, Phase::Held { .. })),
            names(|unit| unit.intent.remove),
        )
    }

    /// Starts the new processes held for those leaving the configuration, once none is left
    /// that could still go.
    fn release_held(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.shutting_down || self.leaving_gone_by(now).is_some() {
            return;
        }
        let held = self
            .units
            .iter()
            .filter(|(_, unit)| matches!(unit.phase, Phase::Held { .. }));
        let held: Vec<String> = held.map(|(name, _)| name.clone()).collect();
        for name in held {
            self.with_unit(&name, now, out, |ctx| ctx.spawn());
        }
    }

    /// How the process `config` names takes it: what `configure` does, and `plan` tells.
    fn fit(&self, config: &ProcessConfig) -> Fit {
        let Some(unit) = self.units.get(&config.name) else {
            return Fit::New;
        };
        let current = unit.effective_config();
        if unit.intent.remove {
            Fit::Replace
        } else if **current == *config {
            Fit::Same
        } else if current.runs_as(config)
            || (unit.takes_supervision_in_place() && current.runs_the_same_program(config))
        {
            Fit::InPlace
        } else {
            Fit::Replace
        }
    }

    /// What configuring `configs` does to each process, as [`Input::Configure`] will do it:
    /// for the answer to a reload or an apply, and its dry run.
    pub fn plan(&self, configs: &[ProcessConfig]) -> ConfigChanges {
        let mut changes = ConfigChanges::default();
        for config in configs {
            let unit = self.units.get(&config.name);
            let by_hand = unit.map_or_else(
                || self.remembered_stopped.contains(&config.name),
                |unit| unit.manually_stopped,
            );
            let list = match self.fit(config) {
                Fit::Same => &mut changes.unchanged,
                Fit::InPlace => &mut changes.updated,
                _ if by_hand => &mut changes.changed_stopped,
                Fit::New if config.autostart => &mut changes.added,
                Fit::New => &mut changes.added_stopped,
                // Brought back while its removal stops it: it starts again.
                Fit::Replace if unit.is_some_and(|u| u.intent.remove) => &mut changes.added,
                Fit::Replace if unit.is_some_and(|u| !u.is_live()) => match config.autostart {
                    true => &mut changes.changed_started,
                    false => &mut changes.changed_left_off,
                },
                Fit::Replace => &mut changes.changed,
            };
            list.push(config.name.clone());
        }
        let wanted: BTreeSet<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        changes.removed = (self.units.iter())
            .filter(|(name, unit)| !unit.intent.remove && !wanted.contains(name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        changes.sort();
        changes
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
            hold_until: self.hold_until,
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
