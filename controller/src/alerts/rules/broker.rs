//! The alerter's own broker, as the rules see it: while the alerter has none, nothing of the
//! fleet can be seen, so only the broker is timed (by the same `grace` as an agent's absence),
//! alerted and reminded of, until it is reached again — when the fleet's clocks start afresh,
//! or move on by the outage.

use std::time::{Duration, SystemTime};

use respawn_common::time::elapsed;

use super::{AlertKey, AlertKind, Facts, Notice, Rules};

pub(super) const REACHED_AGAIN: &str = "reached again";
/// An alert about a broker the alerter no longer uses (its configuration changed).
const NOT_THE_BROKER: &str = "no longer this alerter's broker";

/// Since when the alerter has no broker, which one, and the latest reason.
#[derive(Clone, Debug)]
pub(super) struct CutOff {
    since: SystemTime,
    broker: String,
    why: String,
}

impl Rules {
    /// The alerter cannot reach `broker` (still, or again), for `why`. Until
    /// [`Rules::reached_broker`], time stands still for the fleet's alerts: whether an agent
    /// came back, or a process failed again, cannot be seen. Only the broker's own alert is
    /// timed, by the same `grace` as an agent's absence.
    pub fn lost_broker(&mut self, now: SystemTime, broker: &str, why: &str) {
        let cut_off = self.cut_off.get_or_insert_with(|| CutOff {
            since: now,
            broker: broker.to_owned(),
            why: String::new(),
        });
        cut_off.why = why.to_owned();
    }

    /// The alerter is connected to `broker` and subscribed: its alert, if any, is over (and
    /// one about another broker, from before a change of configuration, too). The clocks of
    /// the fleet start afresh at the first connection (see [`Rules::restart_clocks`]), and
    /// at a later one move on by the time it was lost.
    pub fn reached_broker(&mut self, now: SystemTime, broker: &str) -> Vec<Notice> {
        let outage = self
            .cut_off
            .take()
            .map(|cut_off| elapsed(cut_off.since, now));
        match (self.clocks_started, outage) {
            (false, _) => self.restart_clocks(now),
            (true, Some(outage)) => self.shift_clocks(outage, now),
            (true, None) => {}
        }
        self.clocks_started = true;
        let about = |k: &AlertKey, this: bool| {
            k.kind == AlertKind::BrokerUnreachable && (k.agent == broker) == this
        };
        let mut notices = self.resolve(now, REACHED_AGAIN, |k| about(k, true));
        notices.extend(self.resolve(now, NOT_THE_BROKER, |k| about(k, false)));
        notices
    }

    /// Starts the clocks of silence, absence and uptime from `now`: after the alerter restarted
    /// or reconnected, the times it kept say nothing about what happened meanwhile.
    pub fn restart_clocks(&mut self, now: SystemTime) {
        let restart = |at: &mut Option<SystemTime>| {
            if at.is_some() {
                *at = Some(now);
            }
        };
        for track in self.state.agents.values_mut() {
            restart(&mut track.heard_at);
            restart(&mut track.down_since);
            for process in track.processes.values_mut() {
                restart(&mut process.up_since);
            }
        }
    }

    /// Moves the clocks of silence, absence and uptime on by `outage`, a time the alerter
    /// could not see the fleet: it stood still for them, as it does for everything else
    /// meanwhile. A connection that comes and goes thus delays no alert, nor the end of one,
    /// by more than it was gone; and a process's exits held back meanwhile (at a bridge) can
    /// still come before its crash alert is ended as "running again".
    fn shift_clocks(&mut self, outage: Duration, now: SystemTime) {
        let later = |at: &mut Option<SystemTime>| {
            if let Some(at) = at {
                *at = (*at + outage).min(now);
            }
        };
        for track in self.state.agents.values_mut() {
            later(&mut track.heard_at);
            later(&mut track.down_since);
            for process in track.processes.values_mut() {
                later(&mut process.up_since);
            }
        }
    }

    /// Time passes while the alerter has no broker: once it has been away for `grace`, the
    /// broker's alert, then reminders of it with the latest reason, and of nothing else
    /// (whether anything else is still broken is not known).
    pub(super) fn tick_cut_off(&mut self, now: SystemTime, cut_off: CutOff) -> Vec<Notice> {
        if elapsed(cut_off.since, now) < self.settings.grace {
            return Vec::new();
        }
        let key = AlertKey::agent(&cut_off.broker, AlertKind::BrokerUnreachable);
        if let Some(active) = self.state.active.iter_mut().find(|a| a.key == key) {
            active.facts.error = Some(cut_off.why);
            return self.reminders(now, |_, k| *k == key);
        }
        let facts = Facts {
            error: Some(cut_off.why),
            log_command: self.settings.own_log.clone(),
            ..Facts::default()
        };
        self.fire_since(now, cut_off.since, key, facts)
            .into_iter()
            .collect()
    }
}
