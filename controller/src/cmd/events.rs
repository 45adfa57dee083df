//! `respawnctl events`: a live tail of lifecycle events, each shown once.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use respawn_common::messages::Event;
use respawn_common::time::ClockOffset;
use respawn_common::topics::{Filter, Topic};
use rumqttc::v5::mqttbytes::QoS;

use super::print;
use crate::fleet::Target;
use crate::output::{self, Style};
use crate::repeats::Repeats;
use crate::session::{Message, Options, Session};
use crate::settings::Settings;
use respawn_common::pattern::glob;

pub async fn run(
    settings: &Settings,
    pattern: Option<Target>,
    json: bool,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let topics = settings.topics.clone();
    // Heartbeats too, which tell how far each agent's clock is off ours: an event's time is
    // printed by ours. Sent at QoS 0, they are not kept for the session while it is away.
    let filters = [
        topics.filter(Filter::Heartbeats),
        topics.filter(Filter::Events),
    ];
    let mut session = Session::connect_with(settings, Options::kept_while_away("events")).await?;
    // What a kept session has queued comes at once, before the subscription is confirmed.
    let mut queued: VecDeque<Message> = session.subscribe(&filters, QoS::AtLeastOnce).await?.into();
    let mut clocks: HashMap<String, ClockOffset> = HashMap::new();
    if let Some(target) = &pattern {
        warn_if_unmatched(settings, target).await;
    }
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for events… (Ctrl-C to stop)");
    }
    // Events arrive at least once: each is shown once.
    let mut repeats = Repeats::default();
    let mut gaps = Gaps::default();
    let mut judge = tokio::time::interval(Duration::from_secs(1));
    let mut stop = crate::stop::Stop::on_ctrl_c()?;
    loop {
        let message = match queued.pop_front() {
            Some(m) => Ok(m),
            None => tokio::select! {
                m = session.recv() => m,
                _ = judge.tick() => {
                    say_missed(&gaps.missed(Some(Instant::now())));
                    continue;
                }
                _ = stop.heard() => break,
            },
        };
        match message {
            Ok(m) => {
                if let Some(Topic::Heartbeat { agent }) = topics.parse(&m.topic) {
                    if let Some(clock) = m.heartbeat_clock(None) {
                        clocks.insert(agent, clock);
                    }
                    continue;
                }
                let Ok(event) = serde_json::from_slice::<Event>(&m.payload) else {
                    continue;
                };
                // The topic names the agent that published; trust it over the payload, also
                // for the count of what was missed.
                if topics
                    .parse(&m.topic)
                    .is_none_or(|t| t.agent() != event.agent)
                {
                    continue;
                }
                // A process no agent can be configured with (`evil/../../x`) is no agent's, as
                // the alerter and the hub judge it (found by a hostile-input review).
                let named = event.process.as_deref();
                if named.is_some_and(|p| respawn_common::ids::validate_process_name(p).is_err()) {
                    continue;
                }
                gaps.see(&event, Instant::now());
                if !event_matches(&event, pattern.as_ref())
                    || repeats.is_repeat(&event.agent, event.seq, &event.id)
                {
                    continue;
                }
                if json {
                    print(&format!("{}\n", String::from_utf8_lossy(&m.payload)));
                } else {
                    let clock = clocks.get(&event.agent).copied().unwrap_or_default();
                    print(&output::event_line(&event, clock, style));
                }
                // `events | grep -m1 crashed`: done once the reader is.
                if super::reader_gone() {
                    break;
                }
            }
            Err(e) => {
                eprintln!("respawnctl: {e}; reconnecting");
                let Some(early) = super::back(&mut session, &filters, &mut stop).await? else {
                    break;
                };
                queued.extend(early);
                eprintln!("respawnctl: reconnected");
            }
        }
    }
    say_missed(&gaps.missed(None));
    // The broker keeps the session after the tail ends: it is to queue nothing meanwhile.
    let _ = session.unsubscribe(&filters).await;
    session.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Says on stderr when `target` matches nothing in the fleet now, with what was probably
/// meant. The tail goes on, as an agent yet to come is tailed too; but a mistyped name would
/// otherwise wait in silence, where every other command says so.
async fn warn_if_unmatched(settings: &Settings, target: &Target) {
    let everyone = [Target::agent("*")];
    let Ok((session, fleet)) = crate::reading::fleet_snapshot(settings, &everyone).await else {
        return;
    };
    session.close().await;
    let matched = match target.process {
        None => fleet.agents().any(|(id, _)| glob(&target.agent, id)),
        Some(_) => !fleet.select(target).is_empty(),
    };
    if matched {
        return;
    }
    let hint = fleet.hint(target).map(|hint| format!(" ({hint})"));
    eprintln!(
        "respawnctl: nothing matches {target} now{}; tailing it all the same",
        hint.unwrap_or_default()
    );
}

/// Each agent's latest event number, and the numbers missing before it that no
/// `dropped_before` has explained yet. A full spool's drops are told by its newest events, at
/// the end of its backlog: a gap is judged once the agent's stream has been quiet for
/// [`GAP_SETTLES`].
#[derive(Default)]
struct Gaps {
    agents: HashMap<String, Seen>,
}

#[derive(Default)]
struct Seen {
    latest: u64,
    /// Missing numbers not explained; while there are any, when the agent's latest event came
    /// and the number the first of them was missing before.
    owed: u64,
    since: Option<(Instant, u64)>,
}

/// How long an agent's stream is quiet before what it left missing is said to be missed.
const GAP_SETTLES: Duration = Duration::from_secs(3);

impl Gaps {
    /// Takes in `event`, received at `now`. An older or repeated number (a redelivery)
    /// changes nothing; a first event of an agent has nothing before it to compare.
    fn see(&mut self, event: &Event, now: Instant) {
        let seen = self.agents.entry(event.agent.clone()).or_insert(Seen {
            latest: event.seq,
            ..Seen::default()
        });
        if event.seq <= seen.latest {
            return;
        }
        let owed = seen.owed + (event.seq - seen.latest - 1);
        seen.latest = event.seq;
        seen.owed = owed.saturating_sub(event.dropped_before);
        // A backlog has the time it takes to arrive: a full spool's drops are told by its
        // newest events, at its end. The wait starts again with each event that comes.
        seen.since = match (seen.owed, seen.since) {
            (0, _) => None,
            (_, Some((_, first))) => Some((now, first)),
            (_, None) => Some((now, event.seq)),
        };
    }

    /// The events missed that the stream had time to explain and did not, by agent: how
    /// many, and before which number. `None` for `now`: all that is owed, as the tail ends.
    fn missed(&mut self, now: Option<Instant>) -> Vec<(String, u64, u64)> {
        let due = |seen: &&mut Seen| {
            seen.since.is_some_and(|(at, _)| {
                now.is_none_or(|now| now.saturating_duration_since(at) >= GAP_SETTLES)
            })
        };
        let mut missed = Vec::new();
        for (agent, seen) in self.agents.iter_mut().filter(|(_, seen)| due(seen)) {
            let before = seen.since.take().map_or(seen.latest, |(_, seq)| seq);
            missed.push((agent.clone(), std::mem::take(&mut seen.owed), before));
        }
        missed.sort();
        missed
    }
}

fn say_missed(missed: &[(String, u64, u64)]) {
    for (agent, missed, before) in missed {
        eprintln!(
            "respawnctl: {missed} events of {agent} before its #{before} were not seen (lost on the way: while this tail was away from the broker longer than it keeps the tail's session, in a broker that restarted without keeping what it held — a bridged site's broker killed before it saved its queue —, or beyond a broker's max_queued_messages)",
        );
    }
}

fn event_matches(event: &Event, pattern: Option<&Target>) -> bool {
    let Some(target) = pattern else {
        return true;
    };
    respawn_common::pattern::glob(&target.agent, &event.agent)
        && match (&target.process, &event.process) {
            (None, _) => true,
            (Some(p), Some(process)) => respawn_common::pattern::glob(p, process),
            (Some(_), None) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::messages::{EventKind, VERSION};

    fn event(agent: &str, seq: u64, dropped_before: u64) -> Event {
        Event {
            v: VERSION,
            id: format!("{agent}-{seq}"),
            seq,
            agent: agent.into(),
            at: std::time::SystemTime::UNIX_EPOCH,
            process: Some("doorbot".into()),
            dropped_before,
            kind: EventKind::Stopped { removed: false },
        }
    }

    #[test]
    fn missed_events_are_told_from_dropped_and_repeated_ones() {
        let mut gaps = Gaps::default();
        let t0 = Instant::now();
        let settled = t0 + GAP_SETTLES;
        gaps.see(&event("door-pi", 250, 0), t0);
        gaps.see(&event("door-pi", 251, 0), t0);
        assert_eq!(gaps.missed(Some(settled)), [], "the first, and the next");
        gaps.see(&event("door-pi", 255, 0), t0);
        gaps.see(&event("door-pi", 253, 0), t0);
        gaps.see(&event("door-pi", 255, 0), t0);
        assert_eq!(
            gaps.missed(Some(settled - Duration::from_millis(1))),
            [],
            "not yet"
        );
        assert_eq!(
            gaps.missed(Some(settled)),
            [("door-pi".to_owned(), 3, 255)],
            "252 to 254: the late 253 and the redelivered 255 change nothing"
        );
        assert_eq!(gaps.missed(Some(settled)), [], "said once");
        gaps.see(&event("door-pi", 260, 4), t0);
        assert_eq!(gaps.missed(Some(settled)), [], "the agent dropped them");
        gaps.see(&event("door-pi", 265, 1), t0);
        gaps.see(&event("garage-pi", 7, 0), t0);
        assert_eq!(
            gaps.missed(Some(settled)),
            [("door-pi".to_owned(), 3, 265)],
            "each agent its own"
        );
    }

    /// A full spool's backlog: its first event after the gap tells some of the drops, each
    /// next one tells the one it pushed out.
    #[test]
    fn drops_told_by_the_events_after_a_gap_explain_it() {
        let mut gaps = Gaps::default();
        let t0 = Instant::now();
        gaps.see(&event("yard-pi", 29, 0), t0);
        gaps.see(&event("yard-pi", 84, 10), t0);
        // A slow backlog, each event later than the wait for a gap: still explaining it.
        let mut now = t0;
        for seq in 85..89 {
            now += GAP_SETTLES - Duration::from_millis(1);
            assert_eq!(gaps.missed(Some(now)), [], "#{seq} is yet to come");
            gaps.see(&event("yard-pi", seq, 11), now);
        }
        assert_eq!(gaps.missed(Some(now + GAP_SETTLES * 2)), []);
        // What is still owed when the tail ends is said then.
        gaps.see(&event("yard-pi", 95, 0), now);
        assert_eq!(gaps.missed(None), [("yard-pi".to_owned(), 6, 95)]);
    }
}
