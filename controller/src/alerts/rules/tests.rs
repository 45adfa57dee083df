//! The alert rules on virtual time: what each situation makes them say, and what it must not.

use super::*;
use crate::alerts::testing::t;
use respawn_common::messages::{AgentState, Heartbeat, ProcessReport, VERSION};
use respawn_common::status::ProcessState;
use respawn_common::status::{ExitRecord, ExitStatus, LogLine};
use respawn_common::status::{ProcessStatus, Stream};
use respawn_common::time::ClockOffset;

fn rules() -> Rules {
    Rules::new(
        Settings {
            grace: Duration::from_secs(60),
            remind_every: Duration::from_secs(3600),
            resolve_after: Duration::from_secs(60),
            own_log: None,
        },
        State::default(),
    )
}

struct Agent {
    name: &'static str,
    next: u64,
    clock: SystemTime,
    /// When its current run began, as its births say.
    run_started: Option<SystemTime>,
}

impl Agent {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            next: 0,
            clock: t(0),
            run_started: None,
        }
    }

    /// The agent's clock, for the events it makes next.
    fn at(&mut self, clock: SystemTime) -> &mut Self {
        self.clock = clock;
        self
    }

    fn event(&mut self, process: &str, kind: EventKind) -> Event {
        self.next += 1;
        Event {
            v: VERSION,
            id: format!("{}-{}", self.name, self.next),
            seq: self.next,
            agent: self.name.into(),
            at: self.clock,
            process: Some(process.into()),
            dropped_before: 0,
            kind,
        }
    }

    fn crash(&mut self, process: &str, code: i32, restarts: u32) -> Event {
        self.event(
            process,
            EventKind::Exited {
                pid: 100 + restarts,
                status: ExitStatus::Code { code },
                runtime_ms: 1000,
                restarts,
                requested: false,
                shutdown: false,
                leftover: false,
                scheduled: false,
                killed_at_stop_timeout: false,
                next_start: Some(t(1)),
                reason: None,
                log_tail: vec![LogLine {
                    at: t(0),
                    stream: Stream::Stderr,
                    text: "fatal: GPIO 17 busy".into(),
                }],
                log_truncated: false,
                oom_killed: false,
                memory_max: None,
            },
        )
    }

    fn started(&mut self, process: &str) -> Event {
        self.restarted(process, 0)
    }

    /// A start with `restarts` made in all, this one among them.
    fn restarted(&mut self, process: &str, restarts: u32) -> Event {
        self.event(process, EventKind::Started { pid: 7, restarts })
    }

    fn presence(&self, presence: Presence) -> AgentState {
        AgentState {
            v: VERSION,
            agent: self.name.into(),
            state: presence,
            version: None,
            host: None,
            processes: vec![],
            session: None,
            since: None,
            started: self.run_started,
            heartbeat_secs: Some(10),
            containment: None,
        }
    }
}

fn report(agent: &str, name: &str, notify: Notify) -> ProcessReport {
    ProcessReport {
        v: VERSION,
        agent: agent.into(),
        status: ProcessStatus {
            name: name.into(),
            state: ProcessState::Running,
            pid: Some(7),
            since: t(0),
            restarts: 0,
            crash_loop: false,
            crash_loop_since: None,
            manually_stopped: false,
            last_exit: None,
            spawn_error: None,
            next_start: None,
            health: None,
            usage: None,
            remote: false,
        },
        notify,
    }
}

/// door-pi's heartbeat made at `at`, every 10 s.
fn heartbeat(at: SystemTime) -> Heartbeat {
    Heartbeat {
        v: VERSION,
        agent: "door-pi".into(),
        at,
        interval_secs: 10,
        uptime_secs: 1,
        running: 1,
        processes: 1,
        load1: None,
        mem_total_kb: None,
        mem_available_kb: None,
        cpu_temp_c: None,
    }
}

fn phases(notices: &[Notice]) -> Vec<(String, AlertKind, Phase)> {
    notices
        .iter()
        .map(|n| (n.key.subject(), n.key.kind, n.phase))
        .collect()
}

fn one(subject: &str, kind: AlertKind, phase: Phase) -> Vec<(String, AlertKind, Phase)> {
    vec![(subject.to_owned(), kind, phase)]
}

#[test]
fn one_crash_is_one_alert_and_one_resolved_notice_once_it_runs_again() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let fired = rules.on_event(t(0), &pi.at(t(0)).crash("doorbot", 1, 0));
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Firing)
    );
    let facts = &fired[0].facts;
    assert_eq!(facts.exit, Some(ExitStatus::Code { code: 1 }));
    assert_eq!(facts.log_tail[0].text, "fatal: GPIO 17 busy");
    assert_eq!(facts.failures, 1);

    assert_eq!(facts.restarts, Some(0), "none before the crash");
    assert_eq!(facts.next_start, Some(t(1)));

    // It crashes again before it is back: no second alert, but it is counted.
    assert!(rules
        .on_event(t(2), &pi.at(t(2)).restarted("doorbot", 1))
        .is_empty());
    assert!(rules
        .on_event(t(5), &pi.at(t(5)).crash("doorbot", 2, 1))
        .is_empty());
    assert!(rules
        .on_event(t(6), &pi.at(t(6)).restarted("doorbot", 2))
        .is_empty());
    assert!(rules.tick(t(65)).is_empty(), "not yet a minute up");
    let resolved = rules.tick(t(66));
    assert_eq!(
        phases(&resolved),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
    assert_eq!(resolved[0].since, t(0));
    assert_eq!(resolved[0].facts.failures, 2);
    assert_eq!(resolved[0].facts.exit, Some(ExitStatus::Code { code: 2 }));
    assert_eq!(
        resolved[0].facts.resolution.as_deref(),
        Some("running again")
    );
    assert_eq!(
        resolved[0].facts.restarts,
        Some(2),
        "the restarts made, the one that brought it back among them"
    );
    assert_eq!(resolved[0].facts.next_start, None, "started since");
    assert!(rules.tick(t(10_000)).is_empty(), "nothing left to say");
}

/// A Pi without a real-time clock, a week behind: its crash is dated by the alerter's clock
/// (it did not crash a week ago), once its heartbeat has told how far off it is.
#[test]
fn the_times_of_an_agent_whose_clock_is_off_are_moved_onto_ours() {
    let week = Duration::from_secs(7 * 86_400);
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.clock_heard("door-pi", ClockOffset::between(t(0) - week, t(0)));
    let mut crash = pi.at(t(9) - week).crash("doorbot", 1, 0);
    if let EventKind::Exited { next_start, .. } = &mut crash.kind {
        *next_start = Some(t(10) - week);
    }
    let fired = rules.on_event(t(10), &crash);
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Firing)
    );
    assert_eq!((fired[0].since, fired[0].at), (t(9), t(9)));
    assert_eq!(fired[0].facts.next_start, Some(t(10)), "its next start too");
    // Kept across a restart of the alerter: the events its session kept come before the
    // retained heartbeat.
    let saved = serde_json::to_string(rules.state()).unwrap();
    let mut rules = Rules::new(
        rules.settings.clone(),
        serde_json::from_str(&saved).unwrap(),
    );
    let fired = rules.on_event(t(20), &pi.at(t(19) - week).crash("lights", 1, 0));
    assert_eq!(fired[0].since, t(19), "{saved}");
    // A giving up first seen in a retained state is dated by its last exit, by our clock.
    let mut given_up = stopped_since("scraper", t(25) - week, Some(t(24) - week));
    given_up.status.state = ProcessState::Failed;
    let fired = rules.on_process(t(30), "door-pi", "scraper", Some(&given_up));
    assert_eq!(
        phases(&fired),
        one("door-pi/scraper", AlertKind::Failed, Phase::Firing)
    );
    assert_eq!(fired[0].since, t(24));
    // Another agent's clock agrees: its times are as it says.
    let mut shed = Agent::new("shed");
    rules.clock_heard("shed", ClockOffset::between(t(0), t(0)));
    let fired = rules.on_event(t(10), &shed.at(t(8)).crash("mower", 1, 0));
    assert_eq!(fired[0].since, t(8));
}

#[test]
fn a_redelivered_event_is_seen_once() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let crash = pi.crash("doorbot", 1, 0);
    assert_eq!(rules.on_event(t(0), &crash).len(), 1);
    rules.on_event(t(1), &pi.at(t(1)).started("doorbot"));
    rules.tick(t(100));
    assert!(
        rules.on_event(t(101), &crash).is_empty(),
        "the same id again is not a new crash"
    );
}

/// An agent's next event says how many it dropped: told once, with the count, and nothing
/// stays active to remind of or resolve.
/// A spool sent again (its delivery mark lost) after more of the fleet's events than the
/// file keeps ids of: its old crash is no new alert.
#[test]
fn a_repeat_after_a_fleets_worth_of_events_is_seen_once() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let crash = pi.at(t(0)).crash("doorbot", 1, 0);
    assert_eq!(rules.on_event(t(0), &crash).len(), 1);
    rules.on_event(t(1), &pi.at(t(1)).started("doorbot"));
    assert_eq!(rules.tick(t(61)).len(), 1, "resolved");
    let mut busy = Agent::new("garage-pi");
    for _ in 0..2_500 {
        rules.on_event(t(62), &busy.at(t(62)).started("opener"));
    }
    assert_eq!(rules.on_event(t(63), &crash), [], "the same crash again");
}

#[test]
fn events_an_agent_dropped_are_told_once() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let mut started = pi.at(t(5)).started("doorbot");
    started.dropped_before = 12;
    let told = rules.on_event(t(6), &started);
    assert_eq!(
        phases(&told),
        one("door-pi", AlertKind::EventsLost, Phase::Firing)
    );
    assert_eq!((told[0].facts.lost, told[0].at), (Some(12), t(5)));
    assert!(
        rules.on_event(t(7), &started).is_empty(),
        "a redelivery is not news"
    );
    assert_eq!(rules.active().count(), 0);
    assert!(rules.tick(t(100_000)).is_empty(), "no reminder");
    // With a crash in the same event, both are told.
    let mut crash = pi.at(t(8)).crash("doorbot", 1, 0);
    crash.dropped_before = 1;
    let kinds: Vec<AlertKind> = rules
        .on_event(t(8), &crash)
        .iter()
        .map(|n| n.key.kind)
        .collect();
    assert_eq!(kinds, [AlertKind::EventsLost, AlertKind::Crashed]);
}

#[test]
fn a_crash_loop_is_one_more_alert_not_one_per_exit_and_each_ends_on_its_own_terms() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let mut all = Vec::new();
    for i in 0..50 {
        all.extend(rules.on_event(t(i * 2), &pi.at(t(i * 2)).crash("doorbot", 1, i as u32)));
        all.extend(rules.on_event(t(i * 2 + 1), &pi.at(t(i * 2 + 1)).started("doorbot")));
        // The loop said again at 30: its agent restarted within it (found by a soak run:
        // each saying counted as one more failure).
        if i == 4 || i == 30 {
            let looping = EventKind::CrashLoop {
                exits: 5,
                window_secs: 600,
            };
            let at = t(i * 2 + 1);
            all.extend(rules.on_event(at, &pi.at(at).event("doorbot", looping)));
        }
        all.extend(rules.tick(t(i * 2 + 1)));
    }
    assert_eq!(
        phases(&all),
        [
            (
                "door-pi/doorbot".to_owned(),
                AlertKind::Crashed,
                Phase::Firing
            ),
            (
                "door-pi/doorbot".to_owned(),
                AlertKind::CrashLoop,
                Phase::Firing
            ),
        ]
    );
    // Running for `resolve_after` (since t(99)) ends nothing while the agent still reports
    // the loop: its next exit would restart it at the longest backoff, and "recovered"
    // beside "still in a crash loop" would say both.
    assert!(rules.tick(t(170)).is_empty());
    let subject = "door-pi/doorbot";
    let recovered = rules.on_event(
        t(200),
        &pi.at(t(200)).event("doorbot", EventKind::Recovered),
    );
    assert_eq!(
        phases(&recovered),
        one(subject, AlertKind::CrashLoop, Phase::Resolved)
    );
    assert_eq!(
        recovered[0].facts.failures, 46,
        "the exits since the loop began, the fifth and the 45 after it"
    );
    // Then the crash, which has run long enough: one alert for the fifty.
    let running = rules.tick(t(201));
    assert_eq!(
        phases(&running),
        one(subject, AlertKind::Crashed, Phase::Resolved)
    );
    assert_eq!(running[0].facts.failures, 50);
}

/// The agent's word that a loop is over is its `recovered` event, and also its retained
/// state: an event that went to another alerter (shared subscriptions) leaves the state.
#[test]
fn a_crash_loop_ends_when_the_agent_says_so_not_after_a_quiet_minute_and_not_before_the_crash() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let subject = "door-pi/doorbot";
    let mut in_loop = report("door-pi", "doorbot", Notify::Every);
    in_loop.status.crash_loop = true;
    // A crash at `at`, the loop it makes, the next start and the state that says so.
    let loop_at = |rules: &mut Rules, pi: &mut Agent, at: u64| {
        rules.on_event(t(at), &pi.at(t(at)).crash("doorbot", 1, 0));
        let looping = EventKind::CrashLoop {
            exits: 5,
            window_secs: 600,
        };
        rules.on_event(t(at + 1), &pi.at(t(at + 1)).event("doorbot", looping));
        rules.on_event(t(at + 2), &pi.at(t(at + 2)).started("doorbot"));
        rules.on_process(t(at + 2), "door-pi", "doorbot", Some(&in_loop));
    };
    loop_at(&mut rules, &mut pi, 0);
    // Recovered before `resolve_after`: the loop ends, the crash not yet.
    let recovered = rules.on_event(t(30), &pi.at(t(30)).event("doorbot", EventKind::Recovered));
    assert_eq!(
        phases(&recovered),
        one(subject, AlertKind::CrashLoop, Phase::Resolved)
    );
    assert_eq!(
        phases(&rules.tick(t(62))),
        one(subject, AlertKind::Crashed, Phase::Resolved)
    );

    // Another loop, whose `recovered` this alerter never sees: its state says it.
    loop_at(&mut rules, &mut pi, 100);
    assert!(
        rules.tick(t(170)).is_empty(),
        "nothing ends while the agent reports the loop"
    );
    let mut out_of_loop = report("door-pi", "doorbot", Notify::Every);
    out_of_loop.status.since = t(175);
    rules.on_process(t(180), "door-pi", "doorbot", Some(&out_of_loop));
    let mut over = phases(&rules.tick(t(181)));
    over.sort_by_key(|(_, kind, _)| *kind);
    assert_eq!(
        over,
        [
            (subject.to_owned(), AlertKind::Crashed, Phase::Resolved),
            (subject.to_owned(), AlertKind::CrashLoop, Phase::Resolved),
        ]
    );

    // A loop's event spooled through an outage, older than the state that says it is over:
    // alerted late, and over as the state says.
    let looping = EventKind::CrashLoop {
        exits: 5,
        window_secs: 600,
    };
    let late = rules.on_event(t(300), &pi.at(t(170)).event("doorbot", looping));
    assert_eq!(
        phases(&late),
        one(subject, AlertKind::CrashLoop, Phase::Firing)
    );
    assert_eq!(
        phases(&rules.tick(t(301))),
        one(subject, AlertKind::CrashLoop, Phase::Resolved)
    );
}

#[test]
fn notify_loop_only_and_off() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_process(
        t(0),
        "door-pi",
        "scraper",
        Some(&report("door-pi", "scraper", Notify::LoopOnly)),
    );
    rules.on_process(
        t(0),
        "door-pi",
        "noisy",
        Some(&report("door-pi", "noisy", Notify::Off)),
    );
    assert!(rules
        .on_event(t(1), &pi.at(t(1)).crash("scraper", 1, 0))
        .is_empty());
    assert!(rules
        .on_event(t(1), &pi.at(t(1)).crash("noisy", 1, 0))
        .is_empty());
    let looping = EventKind::CrashLoop {
        exits: 5,
        window_secs: 600,
    };
    let looped = rules.on_event(t(2), &pi.at(t(2)).event("scraper", looping.clone()));
    assert_eq!(
        phases(&looped),
        one("door-pi/scraper", AlertKind::CrashLoop, Phase::Firing)
    );
    // The only alert of a loop_only process says why: the exit and the lines before it.
    assert_eq!(looped[0].facts.exit, Some(ExitStatus::Code { code: 1 }));
    assert_eq!(looped[0].facts.log_tail[0].text, "fatal: GPIO 17 busy");
    assert_eq!(looped[0].facts.loop_exits, Some(5));
    assert!(rules
        .on_event(t(2), &pi.at(t(2)).event("noisy", looping))
        .is_empty());
    let failed = EventKind::Failed { restarts: 10 };
    assert!(rules
        .on_event(t(3), &pi.at(t(3)).event("noisy", failed))
        .is_empty());

    // Each later exit of the loop is counted on the loop's alert, which tells the latest: its
    // reminders say how many restarts, not those of the first.
    for restarts in 1..=14 {
        rules.on_event(t(2), &pi.at(t(2)).crash("scraper", 2, restarts));
    }
    let reminded = rules.tick(t(3602));
    assert_eq!(
        phases(&reminded),
        one("door-pi/scraper", AlertKind::CrashLoop, Phase::Reminder)
    );
    let facts = &reminded[0].facts;
    assert_eq!(
        (
            facts.restarts,
            facts.failures,
            facts.exit.clone(),
            facts.loop_exits
        ),
        (Some(14), 15, Some(ExitStatus::Code { code: 2 }), Some(5))
    );
    // A failed start of the loop counts too, and is what it tells next.
    let failed_start = EventKind::SpawnFailed {
        error: "No such file or directory (os error 2)".into(),
        next_start: Some(t(60)),
    };
    rules.on_event(t(3), &pi.at(t(3)).event("scraper", failed_start));
    let reminded = rules.tick(t(7203));
    let facts = &reminded[0].facts;
    assert_eq!(
        (facts.failures, facts.error.as_deref()),
        (16, Some("No such file or directory (os error 2)"))
    );

    // Turning alerts off for a process ends its active ones, with a notice.
    let ended = rules.on_process(
        t(4),
        "door-pi",
        "scraper",
        Some(&report("door-pi", "scraper", Notify::Off)),
    );
    assert_eq!(
        phases(&ended),
        one("door-pi/scraper", AlertKind::CrashLoop, Phase::Resolved)
    );
}

/// An exit by SIGTERM that a stop asked for; `shutdown`: the agent's own.
fn stop_asked(shutdown: bool) -> EventKind {
    EventKind::Exited {
        pid: 1,
        status: ExitStatus::Signal {
            signal: "SIGTERM".into(),
            core_dumped: false,
        },
        runtime_ms: 5,
        restarts: 0,
        requested: true,
        shutdown,
        leftover: false,
        scheduled: false,
        killed_at_stop_timeout: false,
        next_start: None,
        reason: None,
        log_tail: vec![],
        log_truncated: false,
        oom_killed: false,
        memory_max: None,
    }
}

#[test]
fn a_stop_for_the_agents_restart_ends_no_alert_whatever_came_before() {
    let unhealthy_restart = || {
        let mut exit = stop_asked(false);
        if let EventKind::Exited { reason, .. } = &mut exit {
            *reason = Some("http check failed 3 times".into());
        }
        exit
    };
    // Unhealthy, restarted by the agent and waiting out its backoff when the agent stops.
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let reason = "http check failed 3 times".to_owned();
    rules.on_event(
        t(1),
        &pi.at(t(1)).event("web", EventKind::Unhealthy { reason }),
    );
    rules.on_event(t(1), &pi.at(t(1)).event("web", unhealthy_restart()));
    let ended = rules.on_event(
        t(2),
        &pi.at(t(2))
            .event("web", EventKind::Stopped { removed: false }),
    );
    assert!(ended.is_empty(), "{ended:?}");
    // Restarted by hand, could not start again, and waiting when the agent stops.
    rules.on_event(t(3), &pi.at(t(3)).event("web", stop_asked(false)));
    let error = "cannot run \"/opt/web\": No such file or directory".to_owned();
    let spawn_failed = EventKind::SpawnFailed {
        error,
        next_start: Some(t(5)),
    };
    rules.on_event(t(3), &pi.at(t(3)).event("web", spawn_failed));
    let ended = rules.on_event(
        t(4),
        &pi.at(t(4))
            .event("web", EventKind::Stopped { removed: false }),
    );
    assert!(ended.is_empty(), "{ended:?}");
    assert_eq!(rules.active().count(), 2);
}

#[test]
fn a_restart_of_the_agent_ends_no_alert() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_event(t(1), &pi.at(t(1)).crash("doorbot", 1, 0));
    let for_the_agents_stop = stop_asked(true);
    let ended = [
        rules.on_event(t(2), &pi.at(t(2)).event("doorbot", for_the_agents_stop)),
        rules.on_event(
            t(2),
            &pi.at(t(2))
                .event("doorbot", EventKind::Stopped { removed: false }),
        ),
    ];
    assert!(ended.iter().all(Vec::is_empty), "{ended:?}");
    assert_eq!(rules.active().count(), 1);
}

/// A process stopped since `since` (not by hand), that last exited at `last_exit`.
fn stopped_since(process: &str, since: SystemTime, last_exit: Option<SystemTime>) -> ProcessReport {
    let running = report("door-pi", process, Notify::Every);
    let last_exit = last_exit.map(|at| ExitRecord {
        status: ExitStatus::Code { code: 1 },
        at,
        runtime_ms: 1000,
        restarts: 0,
        requested: false,
        next_start: None,
        reason: None,
        oom_killed: false,
        memory_max: None,
        scheduled: false,
        killed_at_stop_timeout: false,
    });
    ProcessReport {
        status: ProcessStatus {
            state: ProcessState::Stopped,
            pid: None,
            since,
            last_exit,
            ..running.status
        },
        ..running
    }
}

#[test]
fn a_new_run_of_the_agent_that_leaves_a_crashed_process_off_ends_its_alert() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    pi.run_started = Some(t(0));
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_event(t(10), &pi.at(t(10)).crash("doorbot", 1, 0));
    // Waiting out its backoff when the agent stops: that stop, in the run it crashed in,
    // ends nothing.
    let at_shutdown = stopped_since("doorbot", t(20), Some(t(10)));
    let ended = rules.on_process(t(20), "door-pi", "doorbot", Some(&at_shutdown));
    assert!(ended.is_empty(), "{ended:?}");
    rules.on_presence(t(21), "door-pi", Some(&pi.presence(Presence::Offline)));
    // Restarted with `autostart = false`. Retained messages come in any order: its state
    // may come before its agent's birth.
    pi.run_started = Some(t(30));
    let left_off = stopped_since("doorbot", t(31), None);
    let ended = rules.on_process(t(32), "door-pi", "doorbot", Some(&left_off));
    assert!(ended.is_empty(), "its agent is not back yet: {ended:?}");
    let ended = rules.on_presence(t(33), "door-pi", Some(&pi.presence(Presence::Online)));
    assert_eq!(
        phases(&ended),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
    let resolution = ended[0].facts.resolution.as_deref().unwrap_or_default();
    assert!(resolution.contains("left it off"), "{resolution}");
    assert!(!is_recovery(resolution), "it does not run");
    let later = rules.tick(t(10_000));
    assert!(
        later.iter().all(|n| n.key.process.is_none()),
        "no reminder: {later:?}"
    );

    // A crash that its restart policy leaves stopped, in this run: still broken.
    rules.on_event(t(40), &pi.at(t(40)).crash("once", 1, 0));
    let stays_down = stopped_since("once", t(40), Some(t(40)));
    assert!(rules
        .on_process(t(41), "door-pi", "once", Some(&stays_down))
        .is_empty());
    // Nor is anything ended for an agent that does not say when its run began.
    let mut older = Agent::new("old-pi");
    rules.on_presence(t(0), "old-pi", Some(&older.presence(Presence::Online)));
    rules.on_event(t(10), &older.at(t(10)).crash("doorbot", 1, 0));
    let left_off = stopped_since("doorbot", t(31), None);
    assert!(rules
        .on_process(t(32), "old-pi", "doorbot", Some(&left_off))
        .is_empty());
    let open: Vec<String> = rules
        .active()
        .filter(|k| k.process.is_some())
        .map(AlertKey::subject)
        .collect();
    assert_eq!(open, ["door-pi/once", "old-pi/doorbot"]);
}

/// Found by a new-user run: a giving up ended as plain "stopped" where the spawn failure of
/// the same restart ended as left off.
#[test]
fn a_giving_up_and_a_spawn_failure_left_off_by_a_new_run_end_alike() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    pi.run_started = Some(t(0));
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    let failed = EventKind::Failed { restarts: 3 };
    rules.on_event(t(10), &pi.at(t(10)).event("giveup", failed));
    let spawn_failed = EventKind::SpawnFailed {
        error: "no such file".into(),
        next_start: None,
    };
    rules.on_event(t(10), &pi.at(t(10)).event("missing", spawn_failed));
    assert_eq!(rules.active().count(), 2);
    rules.on_presence(t(21), "door-pi", Some(&pi.presence(Presence::Offline)));
    pi.run_started = Some(t(30));
    rules.on_presence(t(31), "door-pi", Some(&pi.presence(Presence::Online)));
    let mut resolutions = Vec::new();
    for name in ["giveup", "missing"] {
        let left_off = stopped_since(name, t(31), Some(t(10)));
        let ended = rules.on_process(t(32), "door-pi", name, Some(&left_off));
        assert_eq!(ended.len(), 1, "{ended:?}");
        resolutions.push(ended[0].facts.resolution.clone().unwrap_or_default());
    }
    assert_eq!(resolutions[0], resolutions[1]);
    assert!(resolutions[0].contains("left it off"), "{resolutions:?}");
    assert_eq!(rules.active().count(), 0);
}

#[test]
fn exits_that_were_asked_for_or_succeeded_are_no_crash_and_a_stop_ends_the_alert() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let stop = stop_asked(false);
    assert!(rules
        .on_event(t(0), &pi.at(t(0)).event("doorbot", stop.clone()))
        .is_empty());
    assert!(
        rules
            .on_event(t(0), &pi.at(t(0)).crash("job", 0, 0))
            .is_empty(),
        "exit 0"
    );

    rules.on_event(t(1), &pi.at(t(1)).crash("doorbot", 1, 0));
    assert!(rules
        .on_event(t(2), &pi.at(t(2)).event("doorbot", stop))
        .is_empty());
    assert_eq!(
        phases(
            &rules.on_event(
                t(3),
                &pi.at(t(3))
                    .event("doorbot", EventKind::Stopped { removed: false })
            )
        ),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );

    // Removed from the configuration: stopped as asked, but by no one.
    rules.on_event(t(3), &pi.at(t(3)).crash("sensor", 1, 0));
    rules.on_event(t(4), &pi.at(t(4)).event("sensor", stop_asked(false)));
    let removed = EventKind::Stopped { removed: true };
    let ended = rules.on_event(t(5), &pi.at(t(5)).event("sensor", removed));
    assert_eq!(
        phases(&ended),
        one("door-pi/sensor", AlertKind::Crashed, Phase::Resolved)
    );
    assert_eq!(
        ended[0].facts.resolution.as_deref(),
        Some("removed from the configuration")
    );

    // Stopped by hand, as its retained state says (its `stopped` event may have gone to
    // another alerter).
    rules.on_event(t(3), &pi.at(t(3)).crash("lights", 1, 0));
    let mut stopped = report("door-pi", "lights", Notify::Every);
    stopped.status.state = ProcessState::Stopped;
    stopped.status.manually_stopped = true;
    assert_eq!(
        phases(&rules.on_process(t(4), "door-pi", "lights", Some(&stopped))),
        one("door-pi/lights", AlertKind::Crashed, Phase::Resolved)
    );

    // A process that crashed and stays down by its policy is still broken.
    rules.on_event(t(4), &pi.at(t(4)).crash("once", 1, 0));
    assert!(rules
        .on_event(
            t(5),
            &pi.at(t(5))
                .event("once", EventKind::Stopped { removed: false })
        )
        .is_empty());
    assert_eq!(rules.active().count(), 1);
}

#[test]
fn an_agent_away_is_reported_after_the_grace_period_and_its_processes_are_quiet() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    assert!(rules
        .on_presence(t(10), "door-pi", Some(&pi.presence(Presence::Lost)))
        .is_empty());
    assert!(rules.tick(t(69)).is_empty(), "within the grace period");
    assert!(
        rules
            .on_event(t(69), &pi.at(t(69)).crash("doorbot", 1, 0))
            .is_empty(),
        "no process alerts while its agent is away"
    );
    let fired = rules.tick(t(70));
    assert_eq!(
        phases(&fired),
        one("door-pi", AlertKind::Offline, Phase::Firing)
    );
    assert_eq!(fired[0].since, t(10));
    assert_eq!(fired[0].facts.presence, Some(Presence::Lost));
    assert!(rules.tick(t(3000)).is_empty(), "one alert, no repeats");

    let back = rules.on_presence(t(3010), "door-pi", Some(&pi.presence(Presence::Online)));
    assert_eq!(
        phases(&back),
        one("door-pi", AlertKind::Offline, Phase::Resolved)
    );
    assert_eq!(back[0].facts.resolution.as_deref(), Some("back online"));
}

/// Found by a review: an agent back after an absence longer than `remind_every` brought a
/// reminder of each of its held alerts with it, at once, and a chat's size limit cut the
/// notice that it was back.
#[test]
fn held_alerts_are_reminded_of_from_their_agents_return() {
    let (mut rules, pi, fired) = doorbot_crashed_at_1();
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Firing)
    );
    rules.on_presence(t(10), "door-pi", Some(&pi.presence(Presence::Lost)));
    rules.tick(t(70));
    assert_eq!(
        phases(&rules.tick(t(3700))),
        one("door-pi", AlertKind::Offline, Phase::Reminder),
        "the crash is held while its agent is away"
    );
    let back = rules.on_presence(t(5000), "door-pi", Some(&pi.presence(Presence::Online)));
    assert_eq!(
        phases(&back),
        one("door-pi", AlertKind::Offline, Phase::Resolved)
    );
    assert!(
        rules.tick(t(5001)).is_empty(),
        "no reminder with its return"
    );
    // (It sends no heartbeat here: it turns stale meanwhile.)
    assert!(!phases(&rules.tick(t(8599))).contains(&doorbot_reminder()));
    assert!(phases(&rules.tick(t(8600))).contains(&doorbot_reminder()));
}

/// door-pi online at 0, its doorbot crashed at 1: the rules, the agent, and what fired.
fn doorbot_crashed_at_1() -> (Rules, Agent, Vec<Notice>) {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    let crash = pi.at(t(1)).crash("doorbot", 1, 0);
    let fired = rules.on_event(t(1), &crash);
    (rules, pi, fired)
}

/// A reminder of doorbot's crash, as [`phases`] gives it.
fn doorbot_reminder() -> (String, AlertKind, Phase) {
    (
        "door-pi/doorbot".to_owned(),
        AlertKind::Crashed,
        Phase::Reminder,
    )
}

/// Found by a review: an alert held through a chat's outage was followed within seconds of
/// its delivery by a reminder, its clock having run from when it was raised.
#[test]
fn reminders_count_from_the_delivery() {
    let (mut rules, _, fired) = doorbot_crashed_at_1();
    rules.told(&[fired[0].key.clone()], t(3000));
    assert!(!phases(&rules.tick(t(3601))).contains(&doorbot_reminder()));
    assert!(phases(&rules.tick(t(6600))).contains(&doorbot_reminder()));
}

/// Found by a review of the above: an absence too short to be alerted put the reminders of
/// a failed process off as well; on a Pi whose Wi-Fi drops now and then they never came.
#[test]
fn a_short_absence_leaves_the_reminders_as_they_were() {
    let (mut rules, pi, _) = doorbot_crashed_at_1();
    rules.on_presence(t(3000), "door-pi", Some(&pi.presence(Presence::Lost)));
    rules.on_presence(t(3010), "door-pi", Some(&pi.presence(Presence::Online)));
    assert!(phases(&rules.tick(t(3601))).contains(&doorbot_reminder()));
}

#[test]
fn a_short_absence_says_nothing_at_all() {
    let mut rules = rules();
    let pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Offline)));
    assert!(rules.tick(t(59)).is_empty());
    assert!(rules
        .on_presence(t(59), "door-pi", Some(&pi.presence(Presence::Online)))
        .is_empty());
    assert!(
        rules.tick(t(140)).is_empty(),
        "(and no heartbeat is overdue yet)"
    );
}

#[test]
fn a_silent_agent_that_claims_to_be_online_is_reported_stale() {
    let mut rules = rules();
    let pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    // Heartbeats every 10 s: overdue after 30 s, reported after the grace period on top.
    assert!(rules.tick(t(89)).is_empty());
    let fired = rules.tick(t(91));
    assert_eq!(
        phases(&fired),
        one("door-pi", AlertKind::Stale, Phase::Firing)
    );
    // Lost later: still one agent alert.
    rules.on_presence(t(100), "door-pi", Some(&pi.presence(Presence::Lost)));
    assert!(rules.tick(t(500)).is_empty());
    let heartbeat = heartbeat(t(600));
    let back = rules.on_heartbeat(t(600), "door-pi", Some(&heartbeat));
    assert_eq!(
        phases(&back),
        one("door-pi", AlertKind::Stale, Phase::Resolved)
    );
}

/// "Last heard from" is the agent's last heartbeat, not the time the alerter read it again
/// (a retained heartbeat comes anew at each reconnection: a new-user run was told the time its
/// alerter reconnected).
#[test]
fn a_stale_agent_was_last_heard_from_at_its_last_heartbeat() {
    let mut rules = rules();
    let pi = Agent::new("door-pi");
    let heartbeat = heartbeat(t(10));
    rules.on_presence(t(10), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_heartbeat(t(10), "door-pi", Some(&heartbeat));
    // The alerter reconnects at t(30), and reads the same retained heartbeat again.
    rules.restart_clocks(t(30));
    rules.on_heartbeat(t(30), "door-pi", Some(&heartbeat));
    assert!(rules.tick(t(119)).is_empty(), "timed from the reconnection");
    let fired = rules.tick(t(121));
    assert_eq!(
        phases(&fired),
        one("door-pi", AlertKind::Stale, Phase::Firing)
    );
    assert_eq!(fired[0].since, t(10), "said as of its last heartbeat");

    // A restart of the alerter long after: the heartbeat has expired, and is not read again.
    let mut rules = super::tests::rules();
    rules.on_presence(t(10), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_heartbeat(t(10), "door-pi", Some(&heartbeat));
    rules.restart_clocks(t(1800));
    let fired = rules.tick(t(1891));
    assert_eq!(
        phases(&fired),
        one("door-pi", AlertKind::Stale, Phase::Firing)
    );
    assert_eq!(fired[0].since, t(10), "not the restart's time");

    // An agent's clock days behind says no time before its heartbeat could have been made.
    let mut rules = super::tests::rules();
    let behind = Heartbeat {
        at: SystemTime::UNIX_EPOCH,
        ..heartbeat
    };
    rules.on_presence(t(100), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_heartbeat(t(100), "door-pi", Some(&behind));
    let fired = rules.tick(t(191));
    assert_eq!(
        fired[0].since,
        t(70),
        "three intervals before it was read, at most"
    );
}

/// A connection of the alerter's that comes and goes delays its alerts by no more than it was
/// gone: its clocks stand still while it is cut off, and are not started afresh.
#[test]
fn a_short_loss_of_the_broker_moves_the_clocks_on_by_its_length_only() {
    const HUB: &str = "mqtt://hub.lan:1883";
    let mut rules = rules();
    assert!(rules.reached_broker(t(0), HUB).is_empty());
    let pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.lost_broker(t(40), HUB, "the connection was lost");
    assert!(rules.reached_broker(t(45), HUB).is_empty());
    assert!(rules.tick(t(94)).is_empty());
    assert_eq!(
        phases(&rules.tick(t(96))),
        one("door-pi", AlertKind::Stale, Phase::Firing),
        "five seconds later than without the loss, not 45"
    );
}

/// Uptime the alerter could not see does not count: behind a bridge, the exits of a process
/// crashing while the central broker was down come after the broker is back (a new-user run:
/// "recovered (running again)", then its crash from the outage fired anew).
#[test]
fn a_loss_of_the_broker_is_no_time_running() {
    const HUB: &str = "mqtt://hub.lan:1883";
    let mut rules = rules();
    rules.reached_broker(t(0), HUB);
    let mut pi = Agent::new("door-pi");
    pi.run_started = Some(t(0));
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_event(t(1), &pi.at(t(1)).crash("doorbot", 1, 0));
    rules.on_event(t(2), &pi.at(t(2)).started("doorbot"));
    rules.lost_broker(t(10), HUB, "the connection was lost");
    assert!(rules.reached_broker(t(40), HUB).is_empty());
    assert!(
        rules.tick(t(62)).is_empty(),
        "up since t(2), but 30 s of it unseen"
    );
    let late = rules.on_event(t(63), &pi.at(t(20)).crash("doorbot", 1, 1));
    assert!(late.is_empty(), "one alert still, {late:?}");
    rules.on_event(t(64), &pi.at(t(21)).started("doorbot"));
    // The agent says it is there, as its heartbeats would.
    rules.on_presence(t(100), "door-pi", Some(&pi.presence(Presence::Online)));
    assert!(rules.tick(t(123)).is_empty());
    let resolved = rules.tick(t(124));
    assert_eq!(
        phases(&resolved),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
    assert_eq!(resolved[0].facts.failures, 2, "the late exit counted");

    // An alerter restarted from its state file counts no uptime from before either.
    let mut pi = Agent::new("door-pi");
    let mut rules = self::rules();
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_event(t(1), &pi.at(t(1)).crash("doorbot", 1, 0));
    rules.on_event(t(2), &pi.at(t(2)).started("doorbot"));
    let saved = serde_json::to_string(rules.state()).unwrap();
    let mut restarted = Rules::new(
        rules.settings.clone(),
        serde_json::from_str(&saved).unwrap(),
    );
    assert!(restarted.reached_broker(t(3600), HUB).is_empty());
    // (Its reminder, an hour after the crash, is due meanwhile.)
    let resolved = |notices: Vec<Notice>| {
        let phases = phases(&notices);
        phases
            .into_iter()
            .filter(|(_, _, phase)| *phase == Phase::Resolved)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        resolved(restarted.tick(t(3659))),
        [],
        "up from the restart on"
    );
    assert_eq!(
        resolved(restarted.tick(t(3660))),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
}

/// The retained state of the same run, read again at a reconnection, leaves its processes
/// running since when they started: a crash alert still ends a minute after the restart.
#[test]
fn the_same_run_read_again_keeps_its_processes_running() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    pi.run_started = Some(t(0));
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    rules.on_event(t(1), &pi.at(t(1)).crash("doorbot", 1, 0));
    rules.on_event(t(2), &pi.at(t(2)).started("doorbot"));
    rules.on_presence(t(30), "door-pi", Some(&pi.presence(Presence::Online)));
    assert!(rules.tick(t(61)).is_empty());
    assert_eq!(
        phases(&rules.tick(t(62))),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
}

#[test]
fn reminders_while_it_stays_broken_but_not_for_an_absent_agents_processes() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_event(
        t(0),
        &pi.event("doorbot", EventKind::Failed { restarts: 10 }),
    );
    assert!(rules.tick(t(3599)).is_empty());
    let reminded = rules.tick(t(3600));
    assert_eq!(
        phases(&reminded),
        one("door-pi/doorbot", AlertKind::Failed, Phase::Reminder)
    );
    assert_eq!(reminded[0].since, t(0));
    assert!(rules.tick(t(3601)).is_empty());
    rules.on_presence(t(4000), "door-pi", Some(&pi.presence(Presence::Offline)));
    let later = rules.tick(t(7300));
    assert_eq!(
        phases(&later),
        one("door-pi", AlertKind::Offline, Phase::Firing),
        "the agent's absence, not its process"
    );
}

/// A process given up after its crashes is reminded as given up, not also as "still
/// crashing" (a new-user run: two reminders a round, one of them wrong).
#[test]
fn a_crash_is_not_reminded_beside_the_giving_up_that_followed() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_event(t(0), &pi.at(t(0)).crash("doorbot", 1, 3));
    let failed = EventKind::Failed { restarts: 3 };
    rules.on_event(t(1), &pi.at(t(1)).event("doorbot", failed));
    assert_eq!(rules.active().count(), 2);
    let reminded = rules.tick(t(3601));
    assert_eq!(
        phases(&reminded),
        one("door-pi/doorbot", AlertKind::Failed, Phase::Reminder)
    );
}

#[test]
fn the_broker_alert_says_how_to_read_the_alerters_own_log() {
    let mut rules = rules();
    rules.settings.own_log = Some("journalctl -u respawn-alerts.service -n 50".into());
    rules.lost_broker(t(0), "mqtt://hub.lan:1883", "connection refused");
    let fired = rules.tick(t(61));
    assert_eq!(
        fired[0].facts.log_command.as_deref(),
        Some("journalctl -u respawn-alerts.service -n 50")
    );
}

#[test]
fn without_a_broker_only_the_broker_is_alerted_and_reminded() {
    const HUB: &str = "mqtt://hub.lan:1883";
    let mut rules = rules();
    let pi = Agent::new("door-pi");
    let mut garage = Agent::new("garage");
    // A process given up on an agent that stays online, and an agent that went away.
    rules.on_event(
        t(0),
        &garage.event("opener", EventKind::Failed { restarts: 10 }),
    );
    rules.on_presence(t(10), "door-pi", Some(&pi.presence(Presence::Lost)));
    rules.lost_broker(t(10), HUB, "the connection was lost");
    assert!(rules.tick(t(69)).is_empty(), "within grace");
    rules.lost_broker(t(65), HUB, "connection refused");
    let fired = rules.tick(t(70));
    assert_eq!(
        phases(&fired),
        one(HUB, AlertKind::BrokerUnreachable, Phase::Firing),
        "and not the agent, whose coming back could not be seen"
    );
    assert_eq!(fired[0].since, t(10));
    assert_eq!(fired[0].facts.error.as_deref(), Some("connection refused"));
    assert!(
        rules.tick(t(3600)).is_empty(),
        "no reminder of what cannot be seen, though garage/opener's is due"
    );
    rules.lost_broker(t(3000), HUB, "refused: not authorized");
    let reminded = rules.tick(t(3670));
    assert_eq!(
        phases(&reminded),
        one(HUB, AlertKind::BrokerUnreachable, Phase::Reminder)
    );
    assert_eq!(
        reminded[0].facts.error.as_deref(),
        Some("refused: not authorized"),
        "the latest reason"
    );
    let back = rules.reached_broker(t(4000), HUB);
    assert_eq!(
        phases(&back),
        one(HUB, AlertKind::BrokerUnreachable, Phase::Resolved)
    );
    assert_eq!(back[0].facts.resolution.as_deref(), Some("reached again"));
    // The agent's clocks start afresh: its absence is alerted a grace after the broker is
    // back; the reminder held back goes out.
    assert_eq!(
        phases(&rules.tick(t(4000))),
        one("garage/opener", AlertKind::Failed, Phase::Reminder)
    );
    assert!(rules.tick(t(4059)).is_empty());
    assert_eq!(
        phases(&rules.tick(t(4060))),
        one("door-pi", AlertKind::Offline, Phase::Firing)
    );
    // A broker back within grace is no alert at all.
    rules.lost_broker(t(5000), HUB, "the connection was lost");
    assert!(rules.tick(t(5030)).is_empty());
    assert!(rules.reached_broker(t(5031), HUB).is_empty());
}

#[test]
fn a_broker_alert_kept_across_a_restart_waits_for_grace_and_ends_with_its_broker() {
    const OLD: &str = "mqtt://old-hub.lan:1883";
    let mut before = rules();
    before.lost_broker(t(0), OLD, "connection refused");
    assert_eq!(before.tick(t(60)).len(), 1);
    // Restarted an hour later, pointed at another broker, not reached yet.
    let mut rules = Rules::new(before.settings.clone(), before.state().clone());
    rules.lost_broker(t(3600), "mqtt://hub.lan:1883", "not reached yet");
    assert!(
        rules.tick(t(3601)).is_empty(),
        "no reminder before grace, though one is due"
    );
    let back = rules.reached_broker(t(3602), "mqtt://hub.lan:1883");
    assert_eq!(
        phases(&back),
        one(OLD, AlertKind::BrokerUnreachable, Phase::Resolved)
    );
    assert_eq!(
        back[0].facts.resolution.as_deref(),
        Some("no longer this alerter's broker"),
        "not 'reached again': nothing reached it"
    );
}

#[test]
fn spawn_failures_and_removed_processes() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let failed = EventKind::SpawnFailed {
        error: "No such file or directory (os error 2)".into(),
        next_start: Some(t(5)),
    };
    let fired = rules.on_event(t(0), &pi.at(t(0)).event("doorbot", failed));
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::SpawnFailed, Phase::Firing)
    );
    assert_eq!(
        fired[0].facts.error.as_deref(),
        Some("No such file or directory (os error 2)")
    );
    let gone = rules.on_process(t(10), "door-pi", "doorbot", None);
    assert_eq!(
        phases(&gone),
        one("door-pi/doorbot", AlertKind::SpawnFailed, Phase::Resolved)
    );
}

#[test]
fn the_state_survives_a_restart_of_the_alerter() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let crash = pi.crash("doorbot", 1, 0);
    rules.on_event(t(0), &crash);
    let saved = serde_json::to_string(rules.state()).unwrap();

    let mut restarted = Rules::new(
        rules.settings.clone(),
        serde_json::from_str(&saved).unwrap(),
    );
    assert!(
        restarted.on_event(t(1), &crash).is_empty(),
        "redelivered after the restart"
    );
    assert!(
        restarted
            .on_event(t(2), &pi.at(t(2)).crash("doorbot", 1, 1))
            .is_empty(),
        "still the same alert"
    );
    restarted.on_event(t(3), &pi.at(t(3)).started("doorbot"));
    assert_eq!(
        phases(&restarted.tick(t(70))),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved),
        "and resolved after it"
    );
}

#[test]
fn a_restarted_alerter_gives_every_agent_a_fresh_start_before_judging_it() {
    let mut rules = rules();
    let pi = Agent::new("door-pi");
    rules.on_presence(t(0), "door-pi", Some(&pi.presence(Presence::Online)));
    let saved = serde_json::to_string(rules.state()).unwrap();
    // Back an hour later: without fresh clocks every agent would look silent at once.
    let mut restarted = Rules::new(
        rules.settings.clone(),
        serde_json::from_str(&saved).unwrap(),
    );
    restarted.restart_clocks(t(3600));
    assert!(restarted.tick(t(3601)).is_empty());
    assert_eq!(
        phases(&restarted.tick(t(3600 + 91))),
        one("door-pi", AlertKind::Stale, Phase::Firing),
        "still judged, from the restart on"
    );
}

#[test]
fn an_old_running_state_of_an_absent_agent_resolves_nothing() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_event(t(0), &pi.at(t(0)).crash("doorbot", 1, 0));
    rules.on_presence(t(1), "door-pi", Some(&pi.presence(Presence::Lost)));
    rules.on_process(
        t(2),
        "door-pi",
        "doorbot",
        Some(&report("door-pi", "doorbot", Notify::Every)),
    );
    rules.on_presence(t(100), "door-pi", Some(&pi.presence(Presence::Online)));
    assert!(
        rules.tick(t(101)).is_empty(),
        "not back until it says so again, and runs for resolve_after"
    );
    rules.on_process(
        t(102),
        "door-pi",
        "doorbot",
        Some(&report("door-pi", "doorbot", Notify::Every)),
    );
    assert_eq!(
        phases(&rules.tick(t(162))),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
}

#[test]
fn an_unhealthy_process_is_an_alert_of_its_own() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let unhealthy = EventKind::Unhealthy {
        reason: "http check failed 3 times in a row: HTTP 503".into(),
    };
    let fired = rules.on_event(t(0), &pi.at(t(0)).event("doorbot", unhealthy));
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::Unhealthy, Phase::Firing)
    );
    assert_eq!(
        fired[0].facts.error.as_deref(),
        Some("http check failed 3 times in a row: HTTP 503")
    );
    rules.on_event(t(1), &pi.at(t(1)).started("doorbot"));
    assert_eq!(
        phases(&rules.tick(t(61))),
        one("door-pi/doorbot", AlertKind::Unhealthy, Phase::Resolved)
    );
}

#[test]
fn an_oom_kill_is_a_crash_that_says_so() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let mut oom = pi.crash("doorbot", 0, 0);
    if let EventKind::Exited {
        status,
        oom_killed,
        memory_max,
        ..
    } = &mut oom.kind
    {
        *status = ExitStatus::Signal {
            signal: "SIGKILL".into(),
            core_dumped: false,
        };
        *oom_killed = true;
        *memory_max = Some(200_000_000);
    }
    let fired = rules.on_event(t(0), &oom);
    assert_eq!(
        phases(&fired),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Firing)
    );
    assert!(fired[0].facts.oom_killed);
    assert_eq!(fired[0].facts.memory_max, Some(200_000_000));
}

#[test]
fn events_that_come_late_are_dated_when_they_happened() {
    // The alerter was away: a crash at 0 s and a stop by hand at 18 s reach it at 300 s.
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let fired = rules.on_event(t(300), &pi.at(t(0)).crash("doorbot", 3, 0));
    assert_eq!(
        (fired[0].since, fired[0].at),
        (t(0), t(0)),
        "since the crash, and said as of then (\"next start in 1s\")"
    );
    let stop = EventKind::Exited {
        pid: 101,
        status: ExitStatus::Signal {
            signal: "SIGTERM".into(),
            core_dumped: false,
        },
        runtime_ms: 17_000,
        restarts: 0,
        requested: true,
        shutdown: false,
        leftover: false,
        scheduled: false,
        killed_at_stop_timeout: false,
        next_start: None,
        reason: None,
        log_tail: Vec::new(),
        log_truncated: false,
        oom_killed: false,
        memory_max: None,
    };
    rules.on_event(t(300), &pi.at(t(18)).event("doorbot", stop));
    let resolved = rules.on_event(
        t(300),
        &pi.at(t(18))
            .event("doorbot", EventKind::Stopped { removed: false }),
    );
    assert_eq!(
        (resolved[0].phase, resolved[0].since, resolved[0].at),
        (Phase::Resolved, t(0), t(18)),
        "it lasted 18 s, not 0"
    );
    // An agent whose clock is ahead does not date anything in the alerter's future.
    let fired = rules.on_event(t(400), &pi.at(t(9_999)).crash("sensor", 1, 0));
    assert_eq!(fired[0].since, t(400));
}

#[test]
fn given_up_ends_when_the_process_is_started_again_or_stopped() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let failed = EventKind::Failed { restarts: 2 };
    let state = |state: ProcessState| ProcessReport {
        status: ProcessStatus {
            state,
            ..report("door-pi", "giveup", Notify::Every).status
        },
        ..report("door-pi", "giveup", Notify::Every)
    };
    let fired = rules.on_event(t(0), &pi.at(t(0)).event("giveup", failed.clone()));
    assert_eq!(fired.len(), 1);
    assert!(rules
        .on_process(
            t(0),
            "door-pi",
            "giveup",
            Some(&state(ProcessState::Failed))
        )
        .is_empty());
    // Started by hand: given up is over, and failing again is a new alert, not a count.
    let started = rules.on_process(
        t(60),
        "door-pi",
        "giveup",
        Some(&state(ProcessState::Starting)),
    );
    assert_eq!(
        phases(&started),
        one("door-pi/giveup", AlertKind::Failed, Phase::Resolved)
    );
    assert_eq!(
        started[0].facts.resolution.as_deref(),
        Some("started again")
    );
    let again = rules.on_event(t(70), &pi.at(t(70)).event("giveup", failed));
    assert_eq!(
        phases(&again),
        one("door-pi/giveup", AlertKind::Failed, Phase::Firing)
    );
    // The agent restarted with it off (autostart = false): stopped, not given up.
    let stopped = rules.on_process(
        t(80),
        "door-pi",
        "giveup",
        Some(&state(ProcessState::Stopped)),
    );
    assert_eq!(stopped[0].facts.resolution.as_deref(), Some("stopped"));
    assert!(
        rules.tick(t(10_000)).is_empty(),
        "no reminder of a stopped process"
    );
}

#[test]
fn an_agent_clock_behind_does_not_make_a_run_look_long() {
    // The Pi's clock is an hour behind: its `started` must not count as an hour of running.
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    let skew = 3600;
    assert_eq!(
        rules
            .on_event(t(skew), &pi.at(t(0)).crash("doorbot", 1, 0))
            .len(),
        1
    );
    rules.on_event(t(skew + 1), &pi.at(t(1)).started("doorbot"));
    assert!(rules.tick(t(skew + 2)).is_empty(), "up 1 s, not an hour");
    assert_eq!(
        rules.tick(t(skew + 61)).len(),
        1,
        "resolved after resolve_after"
    );
}

#[test]
fn a_crash_loop_under_way_before_the_alerter_knew_the_process_is_alerted() {
    let mut rules = rules();
    let looping = |name: &str| ProcessReport {
        status: ProcessStatus {
            crash_loop: true,
            crash_loop_since: None,
            restarts: 5,
            last_exit: Some(respawn_common::status::ExitRecord {
                status: ExitStatus::Code { code: 3 },
                at: t(5),
                runtime_ms: 10,
                restarts: 4,
                requested: false,
                next_start: None,
                reason: None,
                oom_killed: false,
                memory_max: None,
                scheduled: false,
                killed_at_stop_timeout: false,
            }),
            ..report("door-pi", name, Notify::Every).status
        },
        ..report("door-pi", name, Notify::Every)
    };
    // The alerter's first start: the retained state is all it has of a loop begun before.
    let fired = rules.on_process(t(10), "door-pi", "flaky", Some(&looping("flaky")));
    assert_eq!(
        phases(&fired),
        one("door-pi/flaky", AlertKind::CrashLoop, Phase::Firing)
    );
    assert_eq!(fired[0].facts.exit, Some(ExitStatus::Code { code: 3 }));
    assert_eq!(
        fired[0].since,
        t(5),
        "since its last exit: its agent does not say when the loop began"
    );
    // Every later state of it says the same: no second alert.
    assert!(rules
        .on_process(t(20), "door-pi", "flaky", Some(&looping("flaky")))
        .is_empty());
    // An agent that says when the loop began: since then, not since the last exit (it gave
    // the alerter's start, or the latest exit, found by a review).
    let mut dated = looping("dated");
    dated.status.crash_loop_since = Some(t(2));
    let fired = rules.on_process(t(10), "door-pi", "dated", Some(&dated));
    assert_eq!(
        phases(&fired),
        one("door-pi/dated", AlertKind::CrashLoop, Phase::Firing)
    );
    assert_eq!(fired[0].since, t(2));
    // Given up before: the same. Running well, or a process whose loop the alerter saw end
    // (it knows the process), says nothing.
    let failed = ProcessReport {
        status: ProcessStatus {
            state: ProcessState::Failed,
            pid: None,
            ..report("door-pi", "giveup", Notify::Every).status
        },
        ..report("door-pi", "giveup", Notify::Every)
    };
    let given_up = rules.on_process(t(10), "door-pi", "giveup", Some(&failed));
    assert_eq!(
        phases(&given_up),
        one("door-pi/giveup", AlertKind::Failed, Phase::Firing)
    );
    let fine = report("door-pi", "doorbot", Notify::Every);
    assert!(rules
        .on_process(t(10), "door-pi", "doorbot", Some(&fine))
        .is_empty());
    // A process whose state the alerter saw before: its loop is its events' to tell.
    let known = report("door-pi", "known", Notify::Every);
    assert!(rules
        .on_process(t(10), "door-pi", "known", Some(&known))
        .is_empty());
    assert!(rules
        .on_process(t(11), "door-pi", "known", Some(&looping("known")))
        .is_empty());
    // An event that comes before the first state (the broker sends what it queued for the
    // alerter's session first) does not hide the loop the state shows.
    let mut pi = Agent::new("door-pi");
    rules.on_event(t(10), &pi.at(t(10)).started("early"));
    assert_eq!(
        phases(&rules.on_process(t(11), "door-pi", "early", Some(&looping("early")))),
        one("door-pi/early", AlertKind::CrashLoop, Phase::Firing)
    );
    // A loop already told from its event is not told again, nor counted twice.
    let loop_event = pi.at(t(12)).event(
        "told",
        EventKind::CrashLoop {
            exits: 5,
            window_secs: 600,
        },
    );
    assert_eq!(
        phases(&rules.on_event(t(12), &loop_event)),
        one("door-pi/told", AlertKind::CrashLoop, Phase::Firing)
    );
    assert!(rules
        .on_process(t(13), "door-pi", "told", Some(&looping("told")))
        .is_empty());
    let told = rules
        .state()
        .active
        .iter()
        .find(|a| a.key.subject() == "door-pi/told");
    assert_eq!(told.map(|a| a.facts.failures), Some(1));
    // `notify = "off"`: nothing.
    let quiet = ProcessReport {
        notify: Notify::Off,
        ..looping("quiet")
    };
    assert!(rules
        .on_process(t(10), "door-pi", "quiet", Some(&quiet))
        .is_empty());
    // First seen while its agent is away (the alerter started in an outage): its state is old
    // news then, and the loop is told once the agent is back and says it again (found by a
    // new-user run: the crash loop was never alerted).
    let mut garage = Agent::new("garage");
    rules.on_presence(t(20), "garage", Some(&garage.presence(Presence::Lost)));
    let away = ProcessReport {
        agent: "garage".into(),
        ..looping("opener")
    };
    assert!(rules
        .on_process(t(21), "garage", "opener", Some(&away))
        .is_empty());
    rules.on_presence(t(30), "garage", Some(&garage.presence(Presence::Online)));
    // Back, it sends the crash it spooled before its state: the loop's alert carries that
    // crash's output, which the state has not.
    rules.on_event(t(30), &garage.at(t(30)).crash("opener", 3, 5));
    let fired = rules.on_process(t(31), "garage", "opener", Some(&away));
    assert_eq!(
        phases(&fired),
        one("garage/opener", AlertKind::CrashLoop, Phase::Firing)
    );
    assert_eq!(fired[0].facts.log_tail.len(), 1, "{:?}", fired[0].facts);
}

/// A stop by hand read from the retained state by an alerter that was away ends the alert
/// when the process stopped, not when the alerter came back.
#[test]
fn a_stop_read_late_from_the_state_is_dated_when_it_happened() {
    let mut rules = rules();
    let mut pi = Agent::new("door-pi");
    rules.on_event(t(10), &pi.at(t(10)).crash("doorbot", 1, 0));
    let mut stopped = report("door-pi", "doorbot", Notify::Every);
    stopped.status.state = ProcessState::Stopped;
    stopped.status.pid = None;
    stopped.status.manually_stopped = true;
    stopped.status.since = t(70);
    let ended = rules.on_process(t(1000), "door-pi", "doorbot", Some(&stopped));
    assert_eq!(
        phases(&ended),
        one("door-pi/doorbot", AlertKind::Crashed, Phase::Resolved)
    );
    assert_eq!((ended[0].since, ended[0].at), (t(10), t(70)));
    // A state older than the alert (an agent clock behind) ends it no earlier than it began.
    rules.on_event(t(1100), &pi.at(t(1100)).crash("doorbot", 1, 1));
    stopped.status.since = t(5);
    let ended = rules.on_process(t(1200), "door-pi", "doorbot", Some(&stopped));
    assert_eq!(ended[0].at, t(1100));
}
