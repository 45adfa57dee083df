//! The rules of an agent's presence and heartbeat: its birth, goodbye and Last Will (an
//! offline alert after the grace period, its return), a heartbeat that comes again after a
//! stale one, and how far its clock is off ours, which its times are moved by.

use std::time::{Duration, SystemTime};

use respawn_common::messages::{heartbeat_interval_secs, AgentState, Heartbeat, Presence};
use respawn_common::time::{elapsed, ClockOffset};

use super::{AlertKind, Notice, Rules, BACK_ONLINE, RESPONDING_AGAIN};

impl Rules {
    /// An agent's retained presence from `{prefix}/{agent}/state`; `None` when it was cleared.
    pub fn on_presence(
        &mut self,
        now: SystemTime,
        agent: &str,
        state: Option<&AgentState>,
    ) -> Vec<Notice> {
        let Some(state) = state else {
            self.state.agents.remove(agent);
            return self.resolve(now, "removed from the broker", |k| k.agent == agent);
        };
        if self.knows_birth(agent, state) {
            return Vec::new();
        }
        let online = state.state == Presence::Online;
        let alerted_away = (self.state.active.iter())
            .any(|a| a.key.agent == agent && a.key.kind == AlertKind::Offline);
        if online && alerted_away {
            // Its processes' reminders that came due while its own alert said more count from
            // its return, not come all at once with it. (After an absence too short to be
            // alerted, they come as they would have.)
            let remind_every = self.settings.remind_every;
            let held = (self.state.active.iter_mut()).filter(|a| {
                a.key.agent == agent
                    && !a.key.kind.is_agent_level()
                    && elapsed(a.told, now) >= remind_every
            });
            for alert in held {
                alert.told = now;
            }
        }
        let track = self.state.agents.entry(agent.to_owned()).or_default();
        if let Some(secs) = state.heartbeat_secs {
            track.heartbeat_secs = Some(heartbeat_interval_secs(secs));
        }
        track.session = state.session.clone().filter(|_| online);
        match state.state {
            Presence::Online => {
                track.presence = Some(Presence::Online);
                track.down_since = None;
                track.heard_at = Some(now);
                // A new run: what its processes do now, it will say again. The same run again
                // (the agent or the alerter reconnected, the retained state read afresh) leaves
                // them running since when they did.
                let same_run = state.started.is_some() && state.started == track.run_started;
                track.run_started = state.started;
                if !same_run {
                    for process in track.processes.values_mut() {
                        process.up_since = None;
                    }
                }
                let mut notices = self.resolve(now, BACK_ONLINE, |k| {
                    k.agent == agent && k.kind.is_agent_level()
                });
                notices.extend(self.left_off(now, agent, None));
                notices
            }
            Presence::Offline | Presence::Lost => {
                if track.down_since.is_none() {
                    track.down_since = Some(now);
                }
                track.presence = Some(state.state);
                // Its processes are nobody's to watch while it is away.
                for process in track.processes.values_mut() {
                    process.up_since = None;
                }
                Vec::new()
            }
            Presence::Unknown => Vec::new(),
        }
    }

    /// An agent's heartbeat; `None` when it was cleared or expired.
    pub fn on_heartbeat(
        &mut self,
        now: SystemTime,
        agent: &str,
        heartbeat: Option<&Heartbeat>,
    ) -> Vec<Notice> {
        let Some(heartbeat) = heartbeat else {
            return Vec::new();
        };
        let track = self.state.agents.entry(agent.to_owned()).or_default();
        track.heard_at = Some(now);
        track.heartbeat_secs = Some(heartbeat_interval_secs(heartbeat.interval_secs));
        // When it was made, by our clock (a Pi without a real-time clock may be days
        // behind), and within the three intervals a retained heartbeat lasts before it is read.
        let lasts = Duration::from_secs(heartbeat_interval_secs(heartbeat.interval_secs) * 3);
        let made = track.clock.unwrap_or_default().ours(heartbeat.at);
        track.last_beat = Some(made.clamp(now.checked_sub(lasts).unwrap_or(now), now));
        self.resolve(now, RESPONDING_AGAIN, |k| {
            k.agent == agent && k.kind == AlertKind::Stale
        })
    }

    /// How far `agent`'s clock is off ours, from its heartbeat heard just now.
    pub fn clock_heard(&mut self, agent: &str, clock: ClockOffset) {
        self.state.agents.entry(agent.to_owned()).or_default().clock = Some(clock);
    }

    /// A time by `agent`'s clock, by ours: alerts say when things happened on the alerter's
    /// clock, and a Pi without a real-time clock may be days behind.
    pub(super) fn by_our_clock(&self, agent: &str, theirs: SystemTime) -> SystemTime {
        self.clock_of(agent).ours(theirs)
    }

    /// How far `agent`'s clock is off ours, as far as is known (agreeing, until told).
    pub(super) fn clock_of(&self, agent: &str) -> ClockOffset {
        let track = self.state.agents.get(agent);
        track.and_then(|t| t.clock).unwrap_or_default()
    }
}
