//! The rules of a process's retained state: what it ends (a giving up, an alert of a process
//! stopped by hand or left off by a new run of its agent, one no longer alerted for) and what
//! it shows to be under way where no event said so.

use std::time::SystemTime;

use respawn_common::messages::ProcessReport;
use respawn_common::status::{ProcessState, ProcessStatus};

use super::state::{AlertKey, AlertKind, Facts, Notice, QuietStop};
use super::{wanted, Rules, LEFT_OFF, REMOVED};

impl Rules {
    /// A process's retained state from `{prefix}/{agent}/proc/{name}`; `None` when the process
    /// left the agent's configuration.
    pub fn on_process(
        &mut self,
        now: SystemTime,
        agent: &str,
        name: &str,
        report: Option<&ProcessReport>,
    ) -> Vec<Notice> {
        let Some(report) = report else {
            if let Some(track) = self.state.agents.get_mut(agent) {
                track.processes.remove(name);
            }
            return self.resolve(now, REMOVED, |k| {
                k.agent == agent && k.process.as_deref() == Some(name)
            });
        };
        let up = self.agent_up(agent);
        let track = self.process_track(agent, name);
        // An event may come first and make the track, but it does not say how the process
        // is: only its first state does.
        // Seen while its agent is away, the state is old news: the first one that counts
        // is the one its agent says again once it is back.
        let first_sight = up && !std::mem::replace(&mut track.status_seen, true);
        track.notify = report.notify;
        let status = &report.status;
        track.in_crash_loop = status.crash_loop;
        track.state_since = Some(status.since);
        track.quiet_stop = match status.state {
            ProcessState::Stopped if !status.manually_stopped && status.spawn_error.is_none() => {
                Some(QuietStop {
                    since: status.since,
                    last_exit: status.last_exit.as_ref().map(|exit| exit.at),
                })
            }
            _ => None,
        };
        match status.state {
            // A retained state of an agent that is away is old news.
            ProcessState::Running if up => {
                track.up_since.get_or_insert(now);
            }
            _ => track.up_since = None,
        }
        let notify = report.notify;
        let this = |k: &AlertKey| k.agent == agent && k.process.as_deref() == Some(name);
        let mut notices = self.resolve(now, "no longer alerted for this process", |k| {
            this(k) && !wanted(notify, k.kind)
        });
        // Also seen here, not only in its `stopped` event: with alerters sharing the events,
        // that event may have gone to another one.
        // Dated when the state began, as an event would be: an alerter that was away reads
        // it later.
        let changed = self.by_our_clock(agent, status.since).min(now);
        if status.manually_stopped {
            notices.extend(self.resolve(changed, "stopped by request", this));
        }
        // Left off by a new run of its agent: every alert of it ends alike, a giving up too.
        notices.extend(self.left_off(now, agent, Some(name)));
        // Given up is over once the process is anything else: started by hand (a new failure
        // is a new alert, not a count in the old one), or stopped (a reminder would say
        // "still given up" of a stopped process).
        let resolution = match status.state {
            ProcessState::Failed => None,
            ProcessState::Stopped => Some("stopped"),
            _ => Some("started again"),
        };
        if let Some(resolution) = resolution {
            let given_up = |k: &AlertKey| this(k) && k.kind == AlertKind::Failed;
            notices.extend(self.resolve(changed, resolution, given_up));
        }
        // A crash loop or a giving up that began before this alerter knew the process (its
        // first start, or a state file lost) is said by the state alone: its event is past.
        if first_sight {
            notices.extend(self.ongoing(now, agent, name, status));
        }
        notices
    }

    /// Ends the alerts of the processes (or of `only`) that the current run of `agent` left
    /// stopped: what was alerted keeps them down no more, and a reminder would say "still
    /// crashing" of a program nobody runs.
    pub(super) fn left_off(
        &mut self,
        now: SystemTime,
        agent: &str,
        only: Option<&str>,
    ) -> Vec<Notice> {
        let track = self.state.agents.get(agent);
        let Some((run_started, track)) = track.and_then(|t| Some((t.run_started?, t))) else {
            return Vec::new();
        };
        if !self.agent_up(agent) {
            return Vec::new();
        }
        let left_off: Vec<String> = track
            .processes
            .iter()
            .filter(|(name, _)| only.is_none_or(|only| only == name.as_str()))
            .filter(|(_, p)| {
                p.quiet_stop
                    .is_some_and(|stop| stop.left_off_by(run_started))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let this = |k: &AlertKey| {
            k.agent == agent && k.process.as_ref().is_some_and(|p| left_off.contains(p))
        };
        self.resolve(now, LEFT_OFF, this)
    }

    /// The alert a process's state shows to be under way: a crash loop, or a giving up.
    fn ongoing(
        &mut self,
        now: SystemTime,
        agent: &str,
        name: &str,
        status: &ProcessStatus,
    ) -> Vec<Notice> {
        let kind = match status.state {
            ProcessState::Failed => AlertKind::Failed,
            _ if status.crash_loop => AlertKind::CrashLoop,
            _ => return Vec::new(),
        };
        let last_exit = status.last_exit.as_ref();
        // The output before its latest crash, where this alerter saw that crash's event (one
        // that started in an outage sees the crashes before the state): the state has none.
        let seen = self.process_track(agent, name).last_crash.clone();
        let facts = Facts {
            exit: last_exit.map(|exit| exit.status.clone()),
            oom_killed: last_exit.is_some_and(|exit| exit.oom_killed),
            memory_max: last_exit.and_then(|exit| exit.memory_max),
            restarts: Some(status.restarts),
            error: status.spawn_error.clone(),
            log_tail: seen
                .as_ref()
                .map(|c| c.log_tail.clone())
                .unwrap_or_default(),
            log_command: seen.and_then(|c| c.log_command),
            ..Facts::default()
        };
        // A loop began when its agent saw it begin; an agent that does not say (an older one),
        // and a giving up, are dated by the last exit.
        let began = match kind {
            AlertKind::CrashLoop => status.crash_loop_since,
            _ => None,
        };
        let since = began
            .or(last_exit.map(|exit| exit.at))
            .map_or(now, |at| self.by_our_clock(agent, at).min(now));
        let notify = self.process_track(agent, name).notify;
        let key = AlertKey::process(agent, name, kind);
        if self.state.active.iter().any(|a| a.key == key) {
            // Told already, from its event: this state is no further failure.
            return Vec::new();
        }
        self.fire(now, since, key, facts, wanted(notify, kind))
    }
}
