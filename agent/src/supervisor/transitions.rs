//! The transitions of one unit: each input the state machine takes, applied to the unit it is
//! about, with the actions it calls for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use respawn_common::status::ExitStatus;

use super::policy::{backoff_delay, wants_restart, Jitter};
use super::unit::{Phase, Unit};
use super::{Action, ExitInfo, Notice, NoticeKind, OomEvidence};
use crate::config::{ProcessConfig, RestartPolicy};

/// One unit, the time, and where its actions go: the context of every transition.
pub(super) struct Ctx<'a> {
    pub(super) unit: &'a mut Unit,
    pub(super) now: Instant,
    pub(super) out: &'a mut Vec<Action>,
    pub(super) jitter: &'a mut Jitter,
    pub(super) shutting_down: bool,
    /// Taking a configuration that removed processes still stopping: starts wait for them.
    pub(super) hold_until: Option<Instant>,
    /// Set when the unit is to be dropped once the transition is done.
    pub(super) drop_unit: bool,
}

impl Ctx<'_> {
    pub(super) fn name(&self) -> String {
        self.unit.config.name.clone()
    }

    pub(super) fn enter(&mut self, phase: Phase) {
        self.unit.phase = phase;
        self.unit.since = self.now;
    }

    pub(super) fn emit(&mut self, kind: NoticeKind) {
        let name = self.name();
        self.out.push(Action::Emit(Notice { name, kind }));
    }

    pub(super) fn emit_all(&mut self, kinds: impl IntoIterator<Item = NoticeKind>) {
        for kind in kinds {
            self.emit(kind);
        }
    }

    pub(super) fn remember_stopped(&mut self, stopped: bool) {
        if self.unit.manually_stopped != stopped {
            self.unit.manually_stopped = stopped;
            let name = self.name();
            self.out.push(Action::RememberStopped { name, stopped });
        }
    }

    pub(super) fn spawn(&mut self) {
        self.enter(Phase::Starting);
        let name = self.name();
        self.out.push(Action::Spawn { name });
    }

    /// A fresh start asked for by a person or a new configuration: no backoff carried over.
    pub(super) fn fresh_start(&mut self) {
        self.forget_backoff();
        self.spawn();
    }

    fn forget_backoff(&mut self) {
        self.unit.restarts = 0;
        self.unit.unstable_exits = 0;
    }

    /// A fresh start that a new configuration asks for, once the processes it removed are
    /// gone: a renamed program may need what its old run still holds (a port, a device).
    pub(super) fn start_when_free(&mut self) {
        self.forget_backoff();
        match self.hold_until {
            Some(until) => self.enter(Phase::Held { until }),
            None => self.spawn(),
        }
    }

    /// Enters `stopped`, reporting it unless the unit already was.
    pub(super) fn rest(&mut self) {
        self.rest_as(false);
    }

    /// [`rest`](Self::rest), `removed` from the configuration: gone, not stopped by anyone.
    fn rest_as(&mut self, removed: bool) {
        if self.unit.phase != Phase::Stopped {
            self.enter(Phase::Stopped);
            self.emit(NoticeKind::Stopped { removed });
        }
    }

    /// A new restart policy for a process waiting to start again after an exit: one that
    /// would not restart that exit (`restart = "never"` now) rests instead of starting once
    /// more.
    pub(super) fn reconsider_restart(&mut self) {
        let Phase::Waiting {
            spawn_failed: false,
            ..
        } = self.unit.phase
        else {
            return;
        };
        let Some(last) = self.unit.last_exit.as_ref() else {
            return;
        };
        // Decided as at the exit: one stopped for not working restarts whatever its code.
        let restart = self.unit.config.restart;
        let wanted = match last.reason {
            Some(_) => restart != RestartPolicy::Never,
            None => wants_restart(restart, &last.status),
        };
        if !wanted {
            self.unit.crash_loop = None;
            self.rest();
        }
    }

    /// Makes the main process go, then carries out the intent.
    pub(super) fn stop_then(&mut self) {
        match self.unit.phase {
            Phase::Running { pid, started, .. } => {
                // A stop for a new configuration stops as that one says, as a restart after
                // systemd's daemon-reload does.
                let config = self.unit.effective_config().clone();
                self.out.push(Action::Signal {
                    name: self.name(),
                    pid,
                    signal: config.stop_signal,
                });
                let kill_at = Some(self.now + config.stop_timeout);
                self.enter(Phase::Stopping {
                    pid,
                    started,
                    asked: self.now,
                    kill_at,
                });
            }
            Phase::Starting => self.unit.intent.stop = true,
            Phase::Stopping { .. } => {}
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } | Phase::Held { .. } => {
                self.finish_stop()
            }
        }
    }

    /// SIGKILLs a stopping process now; no further deadline.
    pub(super) fn kill_now(&mut self) {
        if let Phase::Stopping {
            pid,
            started,
            asked,
            ..
        } = self.unit.phase
        {
            let name = self.name();
            self.out.push(Action::Kill { name, pid });
            self.unit.phase = Phase::Stopping {
                pid,
                started,
                asked,
                kill_at: None,
            };
        }
    }

    /// The main process is gone (or never was): carry out the intent.
    pub(super) fn finish_stop(&mut self) {
        let intent = std::mem::take(&mut self.unit.intent);
        if intent.remove {
            self.rest_as(true);
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
    pub(super) fn keep_starting(&mut self) {
        if self.unit.intent.config.is_none() {
            self.unit.intent.stop = false;
        }
        self.unit.intent.start = true;
    }

    pub(super) fn manual_start(&mut self) {
        if self.shutting_down || self.unit.intent.remove {
            return;
        }
        self.remember_stopped(false);
        match self.unit.phase {
            Phase::Running { .. } => {}
            Phase::Starting => self.keep_starting(),
            Phase::Stopping { .. } => self.unit.intent.start = true,
            // It starts as soon as what it waits for is gone, as a start under way does.
            Phase::Held { .. } => {}
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } => self.fresh_start(),
        }
    }

    pub(super) fn manual_stop(&mut self) {
        self.remember_stopped(true);
        // Stopped on purpose, it loops no more: a crash loop is what runs and fails again.
        // Its exits stay counted, so that failing again soon after a start is a loop again.
        self.unit.crash_loop = None;
        self.unit.intent.start = false;
        self.stop_then();
    }

    pub(super) fn manual_restart(&mut self) {
        if self.shutting_down || self.unit.intent.remove {
            return;
        }
        self.remember_stopped(false);
        match self.unit.phase {
            Phase::Starting => return self.keep_starting(),
            Phase::Held { .. } => return,
            _ => {}
        }
        self.unit.intent.start = true;
        self.stop_then();
    }

    pub(super) fn remove(&mut self) {
        self.unit.intent.remove = true;
        // One held never ran: it leaves without a word, as one that was left off does.
        self.unheld();
        self.stop_then();
    }

    /// Stops holding a start back, without reporting a stop: nothing ran.
    fn unheld(&mut self) {
        if let Phase::Held { .. } = self.unit.phase {
            self.enter(Phase::Stopped);
        }
    }

    /// The configuration file changed this process (or brought back one being removed).
    pub(super) fn replace(&mut self, config: Arc<ProcessConfig>) {
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
                self.unit.follow_stop_timeout();
                if restored {
                    self.unit.intent.start = true;
                }
            }
            Phase::Held { .. } => {
                // Still held: it starts with the new configuration, if it still starts.
                self.unit.config = config;
                if !self.unit.config.autostart {
                    self.unheld();
                }
            }
            Phase::Stopped | Phase::Failed | Phase::Waiting { .. } => {
                // Not running: like a new process with the new configuration.
                let autostart = config.autostart;
                self.unit.config = config;
                if autostart && !self.unit.manually_stopped && !self.shutting_down {
                    self.start_when_free();
                } else if self.unit.phase != Phase::Stopped {
                    self.rest();
                }
            }
        }
    }

    pub(super) fn spawned(&mut self, pid: u32) {
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

    pub(super) fn spawn_failed(&mut self, error: String) {
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
        let (next_start, crash_loop) = self.schedule_restart(false, retry, self.now);
        self.emit(NoticeKind::SpawnFailed { error, next_start });
        self.emit_all(crash_loop);
        self.after_failure(next_start, true);
    }

    pub(super) fn ready(&mut self, pid: u32) {
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

    pub(super) fn unhealthy(&mut self, pid: u32, reason: String) {
        if !matches!(self.unit.phase, Phase::Running { pid: p, .. } if p == pid) {
            return;
        }
        self.unit.intent.unhealthy = Some(reason.clone());
        self.emit(NoticeKind::Unhealthy { reason });
        self.unit.intent.start = true;
        self.stop_then();
    }

    pub(super) fn exited(
        &mut self,
        pid: u32,
        status: ExitStatus,
        oom: OomEvidence,
        ended: Instant,
    ) {
        let ended = ended.min(self.now);
        let (started, stopping, requested) = match self.unit.phase {
            Phase::Running {
                pid: p, started, ..
            } if p == pid => (started, false, false),
            // One that had ended by itself before the stop was asked (what it left was still
            // ending) did not end on it.
            Phase::Stopping {
                pid: p,
                started,
                asked,
                ..
            } if p == pid => (started, true, ended >= asked),
            _ => return,
        };
        let runtime = ended.saturating_duration_since(started);
        let mut info = ExitInfo {
            pid,
            oom: oom.verdict(&status, requested),
            status,
            at: ended,
            runtime,
            restarts: self.unit.restarts,
            requested,
            shutdown: requested && self.shutting_down && !self.unit.manually_stopped,
            next_start: None,
            reason: None,
            scheduled: false,
            killed_at_stop_timeout: self.unit.intent.killed_at_stop_timeout,
        };
        let unhealthy = std::mem::take(&mut self.unit.intent.unhealthy);
        let intent = &self.unit.intent;
        let still_wanted =
            intent.start && !intent.remove && !self.unit.manually_stopped && !self.shutting_down;
        // Unless a stop by hand, a removal or the agent's shutdown took it over: no start follows.
        info.scheduled = intent.scheduled && still_wanted;
        // Reported as it ended (a crash before the stop is a crash); what was asked of it
        // since is carried out.
        if stopping && !(requested && unhealthy.is_some() && still_wanted) {
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
        // The backoff counts from the exit, as the bash loop's `sleep` did, not from when
        // what the program left had ended too.
        let (next_start, crash_loop) = self.schedule_restart(stable, restart, ended);
        info.next_start = next_start;
        self.unit.last_exit = Some(info.clone());
        self.emit(NoticeKind::Exited(info));
        self.emit_all(crash_loop);
        if !restart {
            return self.rest();
        }
        self.after_failure(next_start, false);
    }

    /// Counts an exit (or failed start) at `from` and decides when the next start is due:
    /// `None` when there is none because the process is done or given up. Also returns the
    /// crash-loop notice when this exit began one.
    pub(super) fn schedule_restart(
        &mut self,
        stable: bool,
        restart: bool,
        from: Instant,
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
        if self.unit.crash_loop.is_none() && in_window >= config.crash_loop.max_exits as usize {
            self.unit.crash_loop = Some(self.now);
            began = Some(NoticeKind::CrashLoop {
                exits: u32::try_from(in_window).unwrap_or(u32::MAX),
                window: config.crash_loop.window,
            });
        }
        let delay = if self.unit.crash_loop.is_some() {
            self.jitter
                .apply_within(config.backoff.max, config.backoff.max)
        } else if self.unit.unstable_exits == 0 {
            Duration::ZERO
        } else {
            let delay = backoff_delay(config.backoff, self.unit.unstable_exits);
            self.jitter.apply_within(delay, config.backoff.max)
        };
        (Some(from + delay), began)
    }

    /// After an unrequested exit or failed start: wait, restart now, or give up.
    pub(super) fn after_failure(&mut self, next_start: Option<Instant>, spawn_failed: bool) {
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

    pub(super) fn tick(&mut self) {
        let now = self.now;
        match self.unit.phase {
            Phase::Waiting { until, .. } if now >= until => {
                self.unit.restarts += 1;
                self.spawn();
            }
            // What it waited for did not go in time (a process the kernel cannot kill):
            // it is held no longer.
            Phase::Held { until } if now >= until => self.spawn(),
            Phase::Stopping {
                kill_at: Some(at), ..
            } if now >= at => {
                self.unit.intent.killed_at_stop_timeout = true;
                self.kill_now();
            }
            Phase::Running { started, .. } => {
                let config = Arc::clone(&self.unit.config);
                if config
                    .restart_every
                    .is_some_and(|every| now >= started + every)
                {
                    self.unit.intent.start = true;
                    self.unit.intent.scheduled = true;
                    return self.stop_then();
                }
                if now < started + config.stable_after {
                    return;
                }
                self.unit.unstable_exits = 0;
                let in_window = self.unit.exits.count(now, config.crash_loop.window);
                if self.unit.crash_loop.is_some()
                    && in_window < config.crash_loop.max_exits as usize
                {
                    self.unit.crash_loop = None;
                    self.emit(NoticeKind::Recovered);
                }
            }
            _ => {}
        }
    }

    pub(super) fn shutdown(&mut self, force: bool) {
        self.unit.intent.start = false;
        match self.unit.phase {
            Phase::Running { pid, started, .. } if force => {
                let name = self.name();
                self.out.push(Action::Kill { name, pid });
                self.enter(Phase::Stopping {
                    pid,
                    started,
                    asked: self.now,
                    kill_at: None,
                });
            }
            Phase::Stopping { .. } if force => self.kill_now(),
            Phase::Stopping { .. } | Phase::Stopped | Phase::Failed => {}
            Phase::Running { .. }
            | Phase::Starting
            | Phase::Waiting { .. }
            | Phase::Held { .. } => self.stop_then(),
        }
    }
}
