//! The alert rules: a pure fold of what the fleet reports — events, agent presence,
//! heartbeats, process states — and of the passing of time into notices: one alert when
//! something breaks, at most periodic reminders while it stays broken, and one resolved notice
//! when it is fixed, only for an alert that was sent. Time is passed in, so tests run on
//! virtual time; the state is serialisable, so a restarted alerter neither repeats nor forgets.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use respawn_common::messages::{
    heartbeat_interval_secs, Event, EventKind, Notify, Presence, MAX_PROCESSES_READ,
};
use respawn_common::time::elapsed;
mod agent;
mod broker;
mod process;
mod state;

use broker::{CutOff, REACHED_AGAIN};
use state::{Active, ProcTrack};
pub use state::{AlertKey, AlertKind, Facts, Notice, Phase, Settings, State};

/// The resolutions that say an agent or process works again; the others only end its alert
/// (stopped by hand, removed, no longer alerted for).
const RUNNING_AGAIN: &str = "running again";
const REMOVED: &str = "removed from the configuration";
const OUT_OF_CRASH_LOOP: &str = "out of its crash loop";
pub const BACK_ONLINE: &str = "back online";
const RESPONDING_AGAIN: &str = "responding again";
/// Not a recovery: the process is off, and only no longer kept down by what was alerted.
const LEFT_OFF: &str = "stopped: the agent restarted and left it off (autostart = false)";

/// Whether an alert ended with `resolution` because what it was about works again.
pub fn is_recovery(resolution: &str) -> bool {
    [
        RUNNING_AGAIN,
        OUT_OF_CRASH_LOOP,
        BACK_ONLINE,
        RESPONDING_AGAIN,
        REACHED_AGAIN,
    ]
    .contains(&resolution)
}

/// The rules and what they remember.
#[derive(Clone, Debug)]
pub struct Rules {
    settings: Settings,
    state: State,
    /// The alerter's own connection to the broker, while it is lost.
    cut_off: Option<CutOff>,
    /// The clocks kept from the last run were started afresh (at the first connection).
    clocks_started: bool,
}

impl Rules {
    pub fn new(settings: Settings, state: State) -> Self {
        Self {
            settings,
            state,
            cut_off: None,
            clocks_started: false,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The alerts active now.
    pub fn active(&self) -> impl Iterator<Item = &AlertKey> {
        self.state.active.iter().map(|a| &a.key)
    }

    /// The facts of the alert `key` raised at `since` as they stand now, while it is active:
    /// a message held for its grouping window tells what came meanwhile (a second crash, a
    /// restart), not only what raised it.
    pub fn facts_now(&self, key: &AlertKey, since: SystemTime) -> Option<&Facts> {
        let active = self.state.active.iter();
        active
            .filter(|a| a.key == *key && a.since == since)
            .map(|a| &a.facts)
            .next()
    }

    /// A lifecycle event from `{prefix}/{agent}/event`. What it raises or ends is dated by
    /// the event (never later than `now`), not by when it came: events held back by an outage
    /// of the alerter, the broker or a bridge say when things happened.
    pub fn on_event(&mut self, now: SystemTime, event: &Event) -> Vec<Notice> {
        // Both take it in: the window while the alerter runs, the file's ids for a restart.
        let among_latest = self
            .state
            .repeats
            .is_repeat(&event.agent, event.seq, &event.id);
        let in_the_file = !self.state.seen.insert(&event.id);
        if among_latest || in_the_file {
            return Vec::new();
        }
        let at = self.by_our_clock(&event.agent, event.at).min(now);
        let mut notices: Vec<Notice> = lost_before(at, event).into_iter().collect();
        notices.extend(self.on_process_event(now, at, event));
        notices
    }

    /// What an event of a process raises or ends, at `at`.
    fn on_process_event(&mut self, now: SystemTime, at: SystemTime, event: &Event) -> Vec<Notice> {
        let Some(process) = event.process.as_deref() else {
            return Vec::new();
        };
        let agent = event.agent.as_str();
        let up = self.agent_up(agent);
        // Its next start by our clock, as alerts say it (`next start in 4s`).
        let clock = self.clock_of(agent);
        let by_our_clock = move |next: &Option<SystemTime>| next.map(|next| clock.ours(next));
        let track = self.process_track(agent, process);
        let notify = track.notify;
        let key = |kind| AlertKey::process(agent, process, kind);
        match &event.kind {
            // How long it has run is the alerter's to time, on its own clock: an agent's clock
            // that is behind (a Pi without a real-time clock) must not make a run look long.
            EventKind::Started { restarts, .. } => {
                track.up_since = Some(now);
                track.exit_requested = false;
                self.restarted(agent, process, *restarts);
                Vec::new()
            }
            EventKind::Exited {
                status,
                restarts,
                requested,
                shutdown,
                reason,
                next_start,
                log_tail,
                oom_killed,
                memory_max,
                ..
            } => {
                track.up_since = None;
                // The agent's own restart or upgrade ends no alert: the process is not known
                // to be well or stopped for good.
                // Nor does its own restart of an unhealthy process: it is to run again.
                track.exit_requested = *requested && !*shutdown && reason.is_none();
                if *requested || status.is_success() {
                    track.last_crash = None;
                    return Vec::new();
                }
                let facts = Facts {
                    exit: Some(status.clone()),
                    oom_killed: *oom_killed,
                    memory_max: *memory_max,
                    restarts: Some(*restarts),
                    log_tail: log_tail.clone(),
                    next_start: by_our_clock(next_start),
                    ..Facts::default()
                };
                track.last_crash = Some(facts.clone());
                self.count_in_loop(&key(AlertKind::CrashLoop), &facts);
                let wanted = up && wanted(notify, AlertKind::Crashed);
                self.fire(now, at, key(AlertKind::Crashed), facts, wanted)
            }
            EventKind::SpawnFailed { error, next_start } => {
                track.up_since = None;
                track.exit_requested = false;
                let facts = Facts {
                    error: Some(error.clone()),
                    next_start: by_our_clock(next_start),
                    ..Facts::default()
                };
                // Its latest failure, for a giving up that follows.
                track.last_crash = Some(facts.clone());
                self.count_in_loop(&key(AlertKind::CrashLoop), &facts);
                let wanted = up && wanted(notify, AlertKind::SpawnFailed);
                self.fire(now, at, key(AlertKind::SpawnFailed), facts, wanted)
            }
            EventKind::Unhealthy { reason } => {
                let facts = Facts {
                    error: Some(reason.clone()),
                    ..Facts::default()
                };
                let wanted = up && wanted(notify, AlertKind::Unhealthy);
                self.fire(now, at, key(AlertKind::Unhealthy), facts, wanted)
            }
            EventKind::CrashLoop { exits, window_secs } => {
                track.in_crash_loop |= track.state_since.is_none_or(|since| event.at >= since);
                let facts = Facts {
                    loop_exits: Some(*exits),
                    loop_window_secs: Some(*window_secs),
                    ..track.last_crash.clone().unwrap_or_default()
                };
                // The loop said again (its agent restarted within it): its exits are counted
                // as they come, the saying is none.
                let looping = key(AlertKind::CrashLoop);
                if let Some(active) = self.state.active.iter_mut().find(|a| a.key == looping) {
                    active.facts.loop_exits = facts.loop_exits;
                    active.facts.loop_window_secs = facts.loop_window_secs;
                    return Vec::new();
                }
                let wanted = up && wanted(notify, AlertKind::CrashLoop);
                self.fire(now, at, looping, facts, wanted)
            }
            EventKind::Failed { restarts } => {
                track.up_since = None;
                let facts = Facts {
                    restarts: Some(*restarts),
                    next_start: None,
                    ..track.last_crash.clone().unwrap_or_default()
                };
                let wanted = up && wanted(notify, AlertKind::Failed);
                self.fire(now, at, key(AlertKind::Failed), facts, wanted)
            }
            // Out of the loop, not yet past its crash: that one ends after `resolve_after`.
            EventKind::Recovered => {
                track.in_crash_loop = false;
                self.resolve(at, OUT_OF_CRASH_LOOP, |k| {
                    k.agent == agent
                        && k.process.as_deref() == Some(process)
                        && k.kind == AlertKind::CrashLoop
                })
            }
            EventKind::Stopped { removed: true } => {
                track.up_since = None;
                self.resolve(at, REMOVED, |k| {
                    k.agent == agent && k.process.as_deref() == Some(process)
                })
            }
            EventKind::Stopped { .. } if track.exit_requested => {
                track.up_since = None;
                self.resolve(at, "stopped by request", |k| {
                    k.agent == agent && k.process.as_deref() == Some(process)
                })
            }
            // Ended unseen while its agent was away: that absence is the news, and is alerted
            // as such; the run is over all the same.
            EventKind::Vanished { .. } => {
                track.up_since = None;
                Vec::new()
            }
            EventKind::Stopped { .. } | EventKind::Command { .. } | EventKind::Unknown => {
                Vec::new()
            }
        }
    }

    /// Time passes: agents away longer than the grace period, processes back long enough,
    /// reminders due.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Notice> {
        if let Some(cut_off) = self.cut_off.clone() {
            return self.tick_cut_off(now, cut_off);
        }
        let mut notices = Vec::new();
        let grace = self.settings.grace;
        // Each agent and each alert looked at once: with thousands of agents away, a look at
        // every alert for every agent, four times a second, would hold up the alerter.
        let alerted: HashSet<&str> = (self.state.active.iter())
            .filter(|a| a.key.kind.is_agent_level())
            .map(|a| a.key.agent.as_str())
            .collect();
        let mut firing = Vec::new();
        for (agent, track) in &self.state.agents {
            if alerted.contains(agent.as_str()) {
                continue;
            }
            match (track.presence, track.down_since) {
                (Some(presence @ (Presence::Offline | Presence::Lost)), Some(since))
                    if elapsed(since, now) >= grace =>
                {
                    let facts = Facts {
                        presence: Some(presence),
                        ..Facts::default()
                    };
                    firing.push((since, AlertKey::agent(agent, AlertKind::Offline), facts));
                }
                (Some(Presence::Online) | None, _) => {
                    if let (Some(heard), Some(secs)) = (track.heard_at, track.heartbeat_secs) {
                        let overdue = Duration::from_secs(heartbeat_interval_secs(secs) * 3);
                        let silent_since = heard.checked_add(overdue).unwrap_or(heard);
                        if elapsed(silent_since, now) >= grace && now > silent_since {
                            // Timed from when it was heard, said as of its last heartbeat.
                            let last_beat = track.last_beat.unwrap_or(heard).min(heard);
                            let key = AlertKey::agent(agent, AlertKind::Stale);
                            firing.push((last_beat, key, Facts::default()));
                        }
                    }
                }
                _ => {}
            }
        }
        for (since, key, facts) in firing {
            notices.extend(self.fire_since(now, since, key, facts));
        }
        // Processes that have run long enough since their failure are back. Not while their
        // agent reports a crash loop, however long this run: its next exit waits the longest
        // backoff, and "recovered" beside "still in a crash loop" would say both. Its alerts
        // end once the loop is over.
        let back: BTreeSet<(String, String)> = (self.state.active.iter())
            .filter_map(|alert| {
                let (agent, name) = (&alert.key.agent, alert.key.process.as_ref()?);
                let track = self.state.agents.get(agent)?;
                if matches!(track.presence, Some(Presence::Offline | Presence::Lost)) {
                    return None;
                }
                let process = track.processes.get(name)?;
                let up = process.up_since?;
                let stable = elapsed(up, now) >= self.settings.resolve_after;
                (stable && !process.in_crash_loop).then(|| (agent.clone(), name.clone()))
            })
            .collect();
        for (agent, name) in back {
            notices.extend(self.resolve(now, RUNNING_AGAIN, |k| {
                k.agent == agent && k.process.as_deref() == Some(name.as_str())
            }));
        }
        // Reminders, for what is still broken and can be seen to be (not the processes of an
        // agent that is away).
        let visible =
            |rules: &Self, key: &AlertKey| key.kind.is_agent_level() || rules.agent_up(&key.agent);
        notices.extend(self.reminders(now, visible));
        notices
    }

    /// The alerts of `keys` were told at `now` (a delivery): their reminders count from then.
    pub fn told(&mut self, keys: &[AlertKey], now: SystemTime) {
        let told = (self.state.active.iter_mut()).filter(|a| keys.contains(&a.key));
        for alert in told {
            alert.told = alert.told.max(now);
        }
    }

    /// Reminders of the active alerts that `which` takes, where one is due.
    fn reminders(
        &mut self,
        now: SystemTime,
        which: impl Fn(&Self, &AlertKey) -> bool,
    ) -> Vec<Notice> {
        let remind_every = self.settings.remind_every;
        if remind_every.is_zero() {
            return Vec::new();
        }
        // A crash is not reminded beside its process's loop or giving up, which say more: a
        // process given up is not "still crashing", and one reminder round is one message.
        let said_better = |rules: &Self, key: &AlertKey| {
            key.kind == AlertKind::Crashed
                && rules.state.active.iter().any(|other| {
                    matches!(other.key.kind, AlertKind::CrashLoop | AlertKind::Failed)
                        && other.key.agent == key.agent
                        && other.key.process == key.process
                })
        };
        let mut notices = Vec::new();
        for i in 0..self.state.active.len() {
            let active = &self.state.active[i];
            let due = elapsed(active.told, now) >= remind_every;
            if due && which(self, &active.key) && !said_better(self, &active.key) {
                let active = &mut self.state.active[i];
                active.told = now;
                notices.push(Notice {
                    key: active.key.clone(),
                    phase: Phase::Reminder,
                    at: now,
                    since: active.since,
                    facts: active.facts.clone(),
                });
            }
        }
        notices
    }

    fn agent_up(&self, agent: &str) -> bool {
        !matches!(
            self.state.agents.get(agent).and_then(|t| t.presence),
            Some(Presence::Offline | Presence::Lost)
        )
    }

    /// Whether `process` of `agent` is tracked, or may be: an agent's first
    /// [`MAX_PROCESSES_READ`] processes are, so that one that publishes without end cannot
    /// grow the alerter's state (and its file) without end.
    pub fn has_room(&self, agent: &str, process: &str) -> bool {
        self.state.agents.get(agent).is_none_or(|track| {
            track.processes.len() < MAX_PROCESSES_READ || track.processes.contains_key(process)
        })
    }

    fn process_track(&mut self, agent: &str, process: &str) -> &mut ProcTrack {
        self.state
            .agents
            .entry(agent.to_owned())
            .or_default()
            .processes
            .entry(process.to_owned())
            .or_default()
    }

    /// A failure (a crash, a failed start) of a process whose crash loop is alerted: the loop's
    /// alert counts it and tells the latest (its reminders and its end said the first).
    fn count_in_loop(&mut self, crash_loop: &AlertKey, crash: &Facts) {
        if let Some(active) = self.state.active.iter_mut().find(|a| &a.key == crash_loop) {
            active.facts = Facts {
                failures: active.facts.failures + 1,
                loop_exits: active.facts.loop_exits,
                loop_window_secs: active.facts.loop_window_secs,
                ..crash.clone()
            };
        }
    }

    /// Raises `key` at `now` for what happened `since`, unless it is active already (then the
    /// new facts are folded in) or not `wanted` (then nothing happens).
    fn fire(
        &mut self,
        now: SystemTime,
        since: SystemTime,
        key: AlertKey,
        facts: Facts,
        wanted: bool,
    ) -> Vec<Notice> {
        if let Some(active) = self.state.active.iter_mut().find(|a| a.key == key) {
            active.facts = Facts {
                failures: active.facts.failures + 1,
                ..facts
            };
            return Vec::new();
        }
        if !wanted {
            return Vec::new();
        }
        // Said as of when it happened: "next start in" counts from there.
        let notice = self.fire_since(now, since, key, facts);
        notice
            .map(|n| Notice { at: since, ..n })
            .into_iter()
            .collect()
    }

    fn fire_since(
        &mut self,
        now: SystemTime,
        since: SystemTime,
        key: AlertKey,
        facts: Facts,
    ) -> Option<Notice> {
        if self.state.active.iter().any(|a| a.key == key) {
            return None;
        }
        let facts = Facts {
            failures: 1,
            ..facts
        };
        self.state.active.push(Active {
            key: key.clone(),
            since,
            told: now,
            facts: facts.clone(),
        });
        Some(Notice {
            key,
            phase: Phase::Firing,
            at: now,
            since,
            facts,
        })
    }

    /// A start of `process` with `restarts` made in all: its failures' alerts say the count
    /// so far from now on (a crash's own is the count before it), and no start to wait for.
    fn restarted(&mut self, agent: &str, process: &str, restarts: u32) {
        let failures = self.state.active.iter_mut().filter(|a| {
            a.key.agent == agent
                && a.key.process.as_deref() == Some(process)
                && matches!(
                    a.key.kind,
                    AlertKind::Crashed | AlertKind::SpawnFailed | AlertKind::CrashLoop
                )
        });
        for alert in failures {
            if let Some(told) = &mut alert.facts.restarts {
                *told = restarts.max(*told);
            }
            alert.facts.next_start = None;
        }
    }

    /// Ends every active alert `which` matches, with a resolved notice each.
    fn resolve(
        &mut self,
        now: SystemTime,
        resolution: &str,
        which: impl Fn(&AlertKey) -> bool,
    ) -> Vec<Notice> {
        // Most reports end nothing: the active list is then left as it is, not rebuilt.
        if !self.state.active.iter().any(|a| which(&a.key)) {
            return Vec::new();
        }
        let (ended, kept): (Vec<Active>, Vec<Active>) = std::mem::take(&mut self.state.active)
            .into_iter()
            .partition(|a| which(&a.key));
        self.state.active = kept;
        ended
            .into_iter()
            .map(|a| Notice {
                key: a.key,
                phase: Phase::Resolved,
                // What is read late may say a time before the alert's own.
                at: now.max(a.since),
                since: a.since,
                facts: Facts {
                    resolution: Some(resolution.to_owned()),
                    ..a.facts
                },
            })
            .collect()
    }
}

/// Whether a process with `notify` wants alerts of `kind`.
/// Events the agent could not keep, as `event` says: told once, with how many.
fn lost_before(at: SystemTime, event: &Event) -> Option<Notice> {
    (event.dropped_before > 0).then(|| Notice {
        key: AlertKey::agent(&event.agent, AlertKind::EventsLost),
        phase: Phase::Firing,
        at,
        since: at,
        facts: Facts {
            lost: Some(event.dropped_before),
            ..Facts::default()
        },
    })
}

fn wanted(notify: Notify, kind: AlertKind) -> bool {
    match notify {
        Notify::Every => true,
        Notify::LoopOnly => matches!(kind, AlertKind::CrashLoop | AlertKind::Failed),
        Notify::Off => false,
    }
}

#[cfg(test)]
mod tests;
