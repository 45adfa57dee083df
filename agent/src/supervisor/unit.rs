//! One supervised process as the state machine knows it: its phase, its counts and what is to
//! happen once its process is gone, and how that reads from outside.

use std::sync::Arc;
use std::time::Instant;

use respawn_common::status::ProcessState;

use super::policy::ExitWindow;
use super::{ExitInfo, UnitView};
use crate::config::ProcessConfig;

#[derive(Debug)]
pub(super) struct Unit {
    pub(super) config: Arc<ProcessConfig>,
    pub(super) phase: Phase,
    /// When `phase` was entered.
    pub(super) since: Instant,
    pub(super) manually_stopped: bool,
    /// Automatic restarts since the last manual or initial start.
    pub(super) restarts: u32,
    /// Runs in a row that ended before `stable_after`; drives backoff and `max_restarts`.
    pub(super) unstable_exits: u32,
    pub(super) exits: ExitWindow,
    /// When its crash loop began, while it lasts.
    pub(super) crash_loop: Option<Instant>,
    pub(super) last_exit: Option<ExitInfo>,
    pub(super) spawn_error: Option<String>,
    /// What is to happen once the main process is gone.
    pub(super) intent: Intent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Stopped,
    Failed,
    /// [`Action::Spawn`](super::Action::Spawn) was issued; the outcome is awaited.
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
    /// A new process waiting for those that left the configuration to be gone, at most until
    /// `until`: a renamed program may need what its old run still holds (a port, a device,
    /// a lock file), as supervisord's `update` stops what it removes before it adds.
    Held {
        until: Instant,
    },
    /// The stop signal was sent at `asked`; `kill_at` is when SIGKILL follows (`None` once
    /// sent).
    Stopping {
        pid: u32,
        started: Instant,
        asked: Instant,
        kill_at: Option<Instant>,
    },
}

/// What is to happen once a unit's main process is gone. Requests that arrive while a stop is
/// under way combine here instead of replacing one another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Intent {
    /// Stop as soon as the starting process has a pid.
    pub(super) stop: bool,
    /// Start again (unless stopped by hand or shutting down).
    pub(super) start: bool,
    /// Take this configuration before starting again.
    pub(super) config: Option<Arc<ProcessConfig>>,
    /// Drop the unit: it left the configuration. Wins over everything else.
    pub(super) remove: bool,
    /// Why the process is stopped for being unhealthy: its exit counts like a crash.
    pub(super) unhealthy: Option<String>,
    /// The stop is the restart `restart_every` asks for.
    pub(super) scheduled: bool,
    /// The stop signal was not enough: SIGKILL followed at `stop_timeout`.
    pub(super) killed_at_stop_timeout: bool,
}

impl Unit {
    pub(super) fn new(config: Arc<ProcessConfig>, now: Instant, manually_stopped: bool) -> Self {
        Self {
            config,
            phase: Phase::Stopped,
            since: now,
            manually_stopped,
            restarts: 0,
            unstable_exits: 0,
            exits: ExitWindow::default(),
            crash_loop: None,
            last_exit: None,
            spawn_error: None,
            intent: Intent::default(),
        }
    }

    /// Whether it has a process, or is getting one, and was not stopped by hand (as
    /// `Resting` in the runtime sees it). One held back has not started: it takes changes
    /// as one that is left off does.
    pub(super) fn is_live(&self) -> bool {
        !self.manually_stopped
            && !matches!(
                self.phase,
                Phase::Stopped | Phase::Failed | Phase::Waiting { .. } | Phase::Held { .. }
            )
    }

    /// Whether a change only of how it is supervised is taken as it stands, without a fresh
    /// start: a live process, and one that ran and now rests — a finished job, one waiting
    /// out its backoff, one given up. A reload must not run a finished job again or cut a
    /// backoff short, as systemd's daemon-reload runs no oneshot again. One that never ran (left
    /// off, or unable to start) is taken as a new process is.
    pub(super) fn takes_supervision_in_place(&self) -> bool {
        self.is_live() || self.last_exit.is_some()
    }

    /// Gives a stop under way the newest `stop_timeout`, counted from its stop signal: an
    /// operator who shortens it for a process that hangs on its way out means this stop too.
    pub(super) fn follow_stop_timeout(&mut self) {
        let timeout = self.effective_config().stop_timeout;
        if let Phase::Stopping {
            kill_at: Some(kill_at),
            ..
        } = &mut self.phase
        {
            *kill_at = self.since + timeout;
        }
    }

    /// The configuration the unit will run with once pending changes are applied.
    pub(super) fn effective_config(&self) -> &Arc<ProcessConfig> {
        self.intent.config.as_ref().unwrap_or(&self.config)
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { until, .. } | Phase::Held { until } => Some(until),
            Phase::Stopping { kill_at, .. } => kill_at,
            Phase::Running { started, .. } => {
                let stable_at = started + self.config.stable_after;
                let reset = (self.unstable_exits > 0).then_some(stable_at);
                let recover = self.crash_loop.map(|_| {
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

    pub(super) fn view(&self) -> UnitView {
        let (state, pid, next_start) = match self.phase {
            Phase::Stopped => (ProcessState::Stopped, None, None),
            Phase::Failed => (ProcessState::Failed, None, None),
            Phase::Starting | Phase::Held { .. } => (ProcessState::Starting, None, None),
            Phase::Running {
                pid, ready: false, ..
            } => (ProcessState::Starting, Some(pid), None),
            Phase::Running { pid, .. } => (ProcessState::Running, Some(pid), None),
            Phase::Stopping { pid, .. } => (ProcessState::Stopping, Some(pid), None),
            Phase::Waiting {
                until,
                spawn_failed,
            } => {
                let state = if self.crash_loop.is_some() {
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
            crash_loop_since: self.crash_loop,
            manually_stopped: self.manually_stopped,
            last_exit: self.last_exit.clone(),
            spawn_error: self.spawn_error.clone(),
            next_start,
        }
    }
}
