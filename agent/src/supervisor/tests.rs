//! Unit tests of the supervision state machine over virtual time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use respawn_common::status::{ExitStatus, ProcessState};

use super::*;
use crate::config::{CrashLoop, ProcessConfig, RestartPolicy, DEFAULT_STOP_TIMEOUT};

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn config(name: &str) -> ProcessConfig {
    ProcessConfig::new(name, vec!["true".into()])
}

/// A clock, a supervisor and a pid counter: the runtime, simulated.
struct Sim {
    sup: Supervisor,
    t0: Instant,
    now: Instant,
    next_pid: u32,
}

impl Sim {
    fn new(configs: Vec<ProcessConfig>) -> (Self, Vec<Action>) {
        Self::with_remembered(configs, BTreeSet::new())
    }

    fn with_remembered(
        configs: Vec<ProcessConfig>,
        stopped: BTreeSet<String>,
    ) -> (Self, Vec<Action>) {
        let t0 = Instant::now();
        let mut sim = Self {
            sup: Supervisor::new(stopped, 7),
            t0,
            now: t0,
            next_pid: 100,
        };
        let actions = sim.step(Input::Configure(configs));
        (sim, actions)
    }

    /// Starts every process in `configs` and returns their pids.
    fn running(configs: Vec<ProcessConfig>) -> (Self, Vec<u32>) {
        let (mut sim, actions) = Self::new(configs);
        let pids = spawned_names(&actions)
            .into_iter()
            .map(|name| sim.spawn_ok(&name).0)
            .collect();
        (sim, pids)
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        self.sup.step(input, self.now)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Reports a successful spawn of `name`; returns the pid and the resulting actions.
    fn spawn_ok(&mut self, name: &str) -> (u32, Vec<Action>) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let actions = self.step(Input::Spawned {
            name: name.into(),
            pid,
        });
        (pid, actions)
    }

    fn exit(&mut self, name: &str, code: i32) -> Vec<Action> {
        self.exit_ended(name, code, self.now)
    }

    /// An exit reported now of a process that `ended` earlier (what it left took a while).
    fn exit_ended(&mut self, name: &str, code: i32, ended: Instant) -> Vec<Action> {
        let pid = self.pid(name);
        self.step(Input::Exited {
            name: name.into(),
            pid,
            status: ExitStatus::Code { code },
            oom: OomEvidence::None,
            ended,
        })
    }

    fn killed_by(&mut self, name: &str, signal: &str) -> Vec<Action> {
        let pid = self.pid(name);
        self.step(Input::Exited {
            name: name.into(),
            pid,
            status: ExitStatus::Signal {
                signal: signal.into(),
                core_dumped: false,
            },
            oom: OomEvidence::None,
            ended: self.now,
        })
    }

    /// Moves the clock to the next deadline and ticks.
    fn tick_to_deadline(&mut self) -> Vec<Action> {
        let deadline = self.sup.next_deadline().expect("a deadline");
        self.now = self.now.max(deadline);
        self.step(Input::Tick)
    }

    fn pid(&self, name: &str) -> u32 {
        self.view(name).pid.expect("a pid")
    }

    fn view(&self, name: &str) -> UnitView {
        self.sup.view(name).expect("a unit")
    }

    fn state(&self, name: &str) -> ProcessState {
        self.view(name).state
    }

    /// Crashes `name` right after each start, `n` times, and returns the delay before each
    /// following restart.
    fn crash_repeatedly(&mut self, name: &str, n: usize, run: Duration) -> Vec<Duration> {
        let mut delays = Vec::new();
        for _ in 0..n {
            self.advance(run);
            let exit_at = self.now;
            let actions = self.exit(name, 1);
            if spawned_names(&actions).is_empty() {
                let actions = self.tick_to_deadline();
                assert_eq!(spawned_names(&actions), [name], "{actions:?}");
            }
            delays.push(self.now - exit_at);
            self.spawn_ok(name);
        }
        delays
    }
}

fn spawned_names(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn notices(actions: &[Action]) -> Vec<NoticeKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(n) => Some(n.kind.clone()),
            _ => None,
        })
        .collect()
}

fn exit_info(actions: &[Action]) -> ExitInfo {
    notices(actions)
        .into_iter()
        .find_map(|n| match n {
            NoticeKind::Exited(info) => Some(info),
            _ => None,
        })
        .expect("an exited notice")
}

fn no_crash_loop(mut c: ProcessConfig) -> ProcessConfig {
    c.crash_loop = CrashLoop {
        max_exits: 1000,
        window: secs(600),
    };
    c
}

#[test]
fn autostart_spawns_and_a_spawn_reports_started() {
    let mut manual = config("manual");
    manual.autostart = false;
    let (mut sim, actions) = Sim::new(vec![config("web"), manual]);
    assert_eq!(actions, [Action::Spawn { name: "web".into() }]);
    assert_eq!(sim.state("web"), ProcessState::Starting);
    assert_eq!(sim.state("manual"), ProcessState::Stopped);
    let (pid, actions) = sim.spawn_ok("web");
    assert_eq!(
        notices(&actions),
        [NoticeKind::Started { pid, restarts: 0 }]
    );
    assert_eq!(sim.state("web"), ProcessState::Running);
    assert_eq!(sim.view("web").pid, Some(pid));
}

#[test]
fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
    let (mut sim, _) = Sim::running(vec![no_crash_loop(config("web"))]);
    let delays = sim.crash_repeatedly("web", 10, Duration::from_millis(100));
    let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
    for (n, (delay, base)) in delays.iter().zip(expected).enumerate() {
        let base = secs(base);
        assert!(
            *delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2),
            "restart {}: {delay:?} not within 20% of {base:?}",
            n + 1
        );
        assert!(
            *delay <= secs(60),
            "restart {}: {delay:?} past backoff.max",
            n + 1
        );
    }
    // Jitter really varies the delays at the cap.
    let at_cap: BTreeSet<Duration> = delays[6..].iter().copied().collect();
    assert!(at_cap.len() > 1, "{at_cap:?}");
}

/// A process that crashed, while what it left in its cgroup still ended, then was asked to
/// stop or restart: its exit is the crash it was, dated and timed as it was, and what was
/// asked of it since is carried out.
#[test]
fn an_exit_that_came_before_the_stop_is_reported_as_it_was() {
    for restart in [false, true] {
        let (mut sim, _) = Sim::running(vec![config("web")]);
        sim.advance(Duration::from_secs(2));
        let ended = sim.now;
        sim.advance(Duration::from_secs(1));
        match restart {
            false => sim.step(Input::Stop("web".into())),
            true => sim.step(Input::Restart("web".into())),
        };
        sim.advance(Duration::from_secs(1));
        let actions = sim.exit_ended("web", 3, ended);
        let info = exit_info(&actions);
        assert!(!info.requested, "a crash, not the stop");
        // Dated when it ended: the run's output is what was written between its start and then.
        assert_eq!((info.at, info.runtime), (ended, Duration::from_secs(2)));
        assert_eq!(info.next_start, None);
        match restart {
            false => {
                assert_eq!(sim.state("web"), ProcessState::Stopped);
                assert!(sim.view("web").manually_stopped);
            }
            true => assert_eq!(spawned_names(&actions), ["web"], "restarted at once"),
        }
        assert_eq!(sim.view("web").last_exit, Some(info));
    }
    // One that ended on the stop is the stop's.
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Stop("web".into()));
    sim.advance(Duration::from_secs(1));
    let actions = sim.exit("web", 0);
    assert!(exit_info(&actions).requested);
}

/// What a program left in its cgroup may take a while to end after it exits: its restart
/// counts from the exit, and one after a stable run comes at once.
#[test]
fn a_restart_counts_from_the_exit_not_from_its_report() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.advance(Duration::from_secs(120));
    let ended = sim.now;
    sim.advance(Duration::from_millis(300));
    let actions = sim.exit_ended("web", 1, ended);
    let info = exit_info(&actions);
    assert_eq!((info.at, info.next_start), (ended, Some(ended)));
    assert_eq!(spawned_names(&actions), ["web"]);
}

#[test]
fn backoff_state_and_next_start_are_visible_while_waiting() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.advance(Duration::from_millis(500));
    let actions = sim.exit("web", 3);
    let info = exit_info(&actions);
    assert_eq!(info.status, ExitStatus::Code { code: 3 });
    assert_eq!(info.runtime, Duration::from_millis(500));
    assert_eq!(info.restarts, 0);
    assert!(!info.requested);
    let view = sim.view("web");
    assert_eq!(view.state, ProcessState::Backoff);
    assert_eq!(view.pid, None);
    assert_eq!(view.next_start, info.next_start);
    assert_eq!(sim.sup.next_deadline(), info.next_start);
    assert_eq!(view.last_exit, Some(info));
}

#[test]
fn restart_after_a_stable_run_is_immediate() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.advance(secs(61));
    sim.step(Input::Tick);
    let actions = sim.exit("web", 1);
    assert_eq!(spawned_names(&actions), ["web"]);
    assert_eq!(exit_info(&actions).next_start, Some(sim.now));
    let (_, actions) = sim.spawn_ok("web");
    assert_eq!(
        notices(&actions),
        [NoticeKind::Started {
            pid: 102,
            restarts: 1
        }]
    );
}

#[test]
fn a_stable_run_counts_even_without_a_tick_in_between() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.crash_repeatedly("web", 3, Duration::from_millis(10));
    sim.advance(secs(60));
    assert_eq!(spawned_names(&sim.exit("web", 1)), ["web"]);
}

#[test]
fn backoff_resets_after_stable_uptime() {
    let (mut sim, _) = Sim::running(vec![no_crash_loop(config("web"))]);
    let delays = sim.crash_repeatedly("web", 4, Duration::from_millis(10));
    assert!(delays[3] >= secs(6), "{delays:?}");
    // Running now; the reset is a deadline at stable_after.
    let started = sim.now;
    assert_eq!(sim.sup.next_deadline(), Some(started + secs(60)));
    let actions = sim.tick_to_deadline();
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.sup.next_deadline(), None, "nothing left to wake up for");
    // The next crash is treated as the first one again.
    let delays = sim.crash_repeatedly("web", 1, secs(5));
    assert_eq!(delays, [Duration::ZERO]);
    let delays = sim.crash_repeatedly("web", 1, secs(1));
    assert!(delays[0] >= Duration::from_millis(800) && delays[0] <= Duration::from_millis(1200));
}

#[test]
fn crash_loop_is_detected_whatever_each_run_lasted() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    // Each run lasts 90 s, longer than stable_after: five exits still fall within 10 min.
    let mut loops = Vec::new();
    let mut began = None;
    for i in 0..7 {
        sim.advance(secs(90));
        sim.step(Input::Tick);
        let actions = sim.exit("web", 1);
        if i == 4 {
            began = Some(sim.now);
        }
        loops.extend(
            notices(&actions)
                .into_iter()
                .filter(|n| matches!(n, NoticeKind::CrashLoop { .. })),
        );
        if i < 4 {
            assert_eq!(
                spawned_names(&actions),
                ["web"],
                "stable runs restart at once"
            );
        } else {
            assert_eq!(sim.state("web"), ProcessState::CrashLoop);
            let wait = sim.view("web").next_start.unwrap() - sim.now;
            assert!(
                wait >= secs(48) && wait <= secs(72),
                "retries at the cap: {wait:?}"
            );
            sim.tick_to_deadline();
        }
        sim.spawn_ok("web");
    }
    assert_eq!(
        loops,
        [NoticeKind::CrashLoop {
            exits: 5,
            window: secs(600)
        }],
        "one notice per loop"
    );
    // Dated by the exit that made it a loop, through the runs and waits after it.
    assert_eq!(sim.view("web").crash_loop_since, began);
    assert_eq!(sim.state("web"), ProcessState::Running);
}

#[test]
fn crash_loop_recovers_once_stable_and_the_window_has_cleared() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let first_exit = sim.now + Duration::from_millis(10);
    sim.crash_repeatedly("web", 5, Duration::from_millis(10));
    assert!(sim.view("web").crash_loop_since.is_some());
    // Stable after 60 s of uptime: the backoff resets, but the window still holds five exits
    // until 10 min after the first of them.
    let started = sim.now;
    assert_eq!(sim.sup.next_deadline(), Some(started + secs(60)));
    assert!(notices(&sim.tick_to_deadline()).is_empty());
    assert!(sim.view("web").crash_loop_since.is_some());
    let deadline = sim.sup.next_deadline().unwrap();
    assert_eq!(deadline, first_exit + secs(600));
    sim.now = deadline - Duration::from_millis(1);
    assert!(notices(&sim.step(Input::Tick)).is_empty());
    let actions = sim.tick_to_deadline();
    assert_eq!(notices(&actions), [NoticeKind::Recovered]);
    assert_eq!(sim.view("web").crash_loop_since, None);
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn a_stop_by_hand_ends_a_crash_loop_and_failing_again_after_a_start_is_one_again() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.crash_repeatedly("web", 5, Duration::from_millis(10));
    assert!(sim.view("web").crash_loop_since.is_some());
    let actions = sim.step(Input::Stop("web".into()));
    assert!(
        !notices(&actions).contains(&NoticeKind::Recovered),
        "not a recovery"
    );
    assert!(
        sim.view("web").crash_loop_since.is_none(),
        "{:?}",
        sim.view("web")
    );
    sim.killed_by("web", "SIGTERM");
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert_eq!(sim.view("web").crash_loop_since, None);
    sim.step(Input::Start("web".into()));
    sim.spawn_ok("web");
    sim.advance(Duration::from_millis(10));
    let actions = sim.exit("web", 1);
    assert!(
        notices(&actions)
            .iter()
            .any(|n| matches!(n, NoticeKind::CrashLoop { .. })),
        "{actions:?}"
    );
    assert!(sim.view("web").crash_loop_since.is_some());
}

#[test]
fn max_restarts_gives_up_as_failed() {
    let mut c = config("web");
    c.max_restarts = Some(2);
    let (mut sim, _) = Sim::running(vec![c]);
    sim.crash_repeatedly("web", 2, Duration::from_millis(10));
    sim.advance(Duration::from_millis(10));
    let actions = sim.exit("web", 1);
    assert!(spawned_names(&actions).is_empty());
    assert_eq!(exit_info(&actions).next_start, None);
    assert!(notices(&actions).contains(&NoticeKind::Failed { restarts: 2 }));
    assert_eq!(sim.state("web"), ProcessState::Failed);
    assert_eq!(sim.sup.next_deadline(), None);
    // A manual start gives it a fresh chance.
    assert_eq!(
        spawned_names(&sim.step(Input::Start("web".into()))),
        ["web"]
    );
    assert_eq!(sim.view("web").restarts, 0);
}

#[test]
fn without_max_restarts_it_never_gives_up() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.crash_repeatedly("web", 200, Duration::from_millis(1));
    assert_eq!(sim.state("web"), ProcessState::Running);
    assert_eq!(sim.view("web").restarts, 200);
}

#[test]
fn max_restarts_counts_unstable_restarts_in_a_row() {
    let mut c = config("web");
    c.max_restarts = Some(1);
    c.crash_loop.max_exits = 100;
    let (mut sim, _) = Sim::running(vec![c]);
    for _ in 0..5 {
        sim.crash_repeatedly("web", 1, Duration::from_millis(10));
        sim.advance(secs(61));
        sim.step(Input::Tick);
    }
    assert_eq!(sim.state("web"), ProcessState::Running);
}

#[test]
fn restart_policies() {
    let mut on_failure = config("of");
    on_failure.restart = RestartPolicy::OnFailure;
    let mut never = config("nv");
    never.restart = RestartPolicy::Never;
    let (mut sim, _) = Sim::running(vec![config("al"), on_failure, never]);
    sim.advance(secs(61));

    assert_eq!(
        spawned_names(&sim.exit("al", 0)),
        ["al"],
        "always restarts a clean exit"
    );

    let actions = sim.exit("of", 0);
    assert!(
        spawned_names(&actions).is_empty(),
        "on-failure: exit 0 is done"
    );
    assert!(notices(&actions).contains(&NoticeKind::Stopped { removed: false }));
    assert_eq!(sim.state("of"), ProcessState::Stopped);
    assert!(!sim.view("of").manually_stopped);

    sim.step(Input::Start("of".into()));
    sim.spawn_ok("of");
    sim.advance(secs(61));
    assert_eq!(
        spawned_names(&sim.killed_by("of", "SIGSEGV")),
        ["of"],
        "on-failure: a signal is a failure"
    );
    sim.spawn_ok("of");
    sim.advance(secs(61));
    assert_eq!(spawned_names(&sim.exit("of", 2)), ["of"]);

    let actions = sim.exit("nv", 1);
    assert!(spawned_names(&actions).is_empty(), "never restarts");
    assert_eq!(sim.state("nv"), ProcessState::Stopped);
}

#[test]
fn stop_signals_the_group_then_kills_after_the_timeout() {
    let mut c = config("web");
    c.stop_signal = Signal::SIGINT;
    c.stop_timeout = secs(5);
    let (mut sim, pids) = Sim::running(vec![c]);
    let pid = pids[0];
    let actions = sim.step(Input::Stop("web".into()));
    assert_eq!(
        actions,
        [
            Action::RememberStopped {
                name: "web".into(),
                stopped: true
            },
            Action::Signal {
                name: "web".into(),
                pid,
                signal: Signal::SIGINT
            },
        ]
    );
    assert_eq!(sim.state("web"), ProcessState::Stopping);
    assert_eq!(sim.sup.next_deadline(), Some(sim.now + secs(5)));
    sim.advance(Duration::from_millis(4999));
    assert!(sim.step(Input::Tick).is_empty());
    let actions = sim.tick_to_deadline();
    assert_eq!(
        actions,
        [Action::Kill {
            name: "web".into(),
            pid
        }]
    );
    assert_eq!(sim.sup.next_deadline(), None, "SIGKILL is sent once");
    let actions = sim.killed_by("web", "SIGKILL");
    let exit = exit_info(&actions);
    assert!(exit.requested && exit.killed_at_stop_timeout && !exit.scheduled);
    assert!(notices(&actions).contains(&NoticeKind::Stopped { removed: false }));
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert!(sim.view("web").manually_stopped);
    assert!(sim.sup.is_idle());
}

#[test]
fn a_process_that_exits_on_the_stop_signal_is_not_killed() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Stop("web".into()));
    sim.advance(secs(1));
    let actions = sim.killed_by("web", "SIGTERM");
    assert!(notices(&actions).contains(&NoticeKind::Stopped { removed: false }));
    assert!(!exit_info(&actions).killed_at_stop_timeout);
    assert!(!actions.iter().any(|a| matches!(a, Action::Kill { .. })));
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn a_manual_stop_is_remembered_and_keeps_the_process_stopped() {
    let (mut sim, actions) = Sim::with_remembered(
        vec![config("web"), config("db")],
        BTreeSet::from(["web".to_owned()]),
    );
    assert_eq!(spawned_names(&actions), ["db"]);
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert!(sim.view("web").manually_stopped);
    let actions = sim.step(Input::Start("web".into()));
    assert_eq!(
        actions,
        [
            Action::RememberStopped {
                name: "web".into(),
                stopped: false
            },
            Action::Spawn { name: "web".into() },
        ]
    );
}

#[test]
fn stop_during_backoff_cancels_the_restart() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.advance(Duration::from_millis(10));
    sim.exit("web", 1);
    assert_eq!(sim.state("web"), ProcessState::Backoff);
    let actions = sim.step(Input::Stop("web".into()));
    assert!(notices(&actions).contains(&NoticeKind::Stopped { removed: false }));
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn restart_stops_then_starts_at_once_without_counting_a_crash() {
    let (mut sim, pids) = Sim::running(vec![config("web")]);
    sim.crash_repeatedly("web", 2, Duration::from_millis(10));
    let pid = sim.pid("web");
    assert_ne!(pid, pids[0]);
    let actions = sim.step(Input::Restart("web".into()));
    assert!(
        matches!(actions[..], [Action::Signal { .. }]),
        "{actions:?}"
    );
    let actions = sim.killed_by("web", "SIGTERM");
    assert!(exit_info(&actions).requested);
    assert_eq!(spawned_names(&actions), ["web"]);
    assert_eq!(sim.view("web").restarts, 0);
    assert!(!sim.view("web").manually_stopped);
}

#[test]
fn restart_of_a_waiting_or_stopped_process_starts_it_now() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.advance(Duration::from_millis(10));
    sim.exit("web", 1);
    assert_eq!(
        spawned_names(&sim.step(Input::Restart("web".into()))),
        ["web"]
    );
    sim.spawn_ok("web");
    sim.step(Input::Stop("web".into()));
    sim.killed_by("web", "SIGTERM");
    assert_eq!(
        spawned_names(&sim.step(Input::Restart("web".into()))),
        ["web"]
    );
}

#[test]
fn a_failed_spawn_is_retried_with_backoff() {
    let (mut sim, _) = Sim::new(vec![config("web")]);
    let mut delays = Vec::new();
    for _ in 0..3 {
        let failed_at = sim.now;
        let actions = sim.step(Input::SpawnFailed {
            name: "web".into(),
            error: "No such file or directory (os error 2)".into(),
        });
        assert!(matches!(
            notices(&actions)[..],
            [NoticeKind::SpawnFailed {
                next_start: Some(_),
                ..
            }]
        ));
        let view = sim.view("web");
        assert_eq!(view.state, ProcessState::SpawnFailed);
        assert_eq!(
            view.spawn_error.as_deref(),
            Some("No such file or directory (os error 2)")
        );
        assert_eq!(spawned_names(&sim.tick_to_deadline()), ["web"]);
        delays.push(sim.now - failed_at);
    }
    assert!(delays[0] >= Duration::from_millis(800) && delays[0] <= Duration::from_millis(1200));
    assert!(delays[2] >= Duration::from_millis(3200) && delays[2] <= Duration::from_millis(4800));
    sim.spawn_ok("web");
    assert_eq!(sim.view("web").spawn_error, None);
}

#[test]
fn failed_spawns_count_towards_the_crash_loop() {
    let (mut sim, _) = Sim::new(vec![config("web")]);
    for _ in 0..5 {
        sim.step(Input::SpawnFailed {
            name: "web".into(),
            error: "denied".into(),
        });
        if sim.state("web") != ProcessState::CrashLoop {
            sim.tick_to_deadline();
        }
    }
    assert_eq!(sim.state("web"), ProcessState::CrashLoop);
}

#[test]
fn shutdown_stops_every_process_at_once_and_restarts_none() {
    let (mut sim, pids) = Sim::running(vec![config("a"), config("b"), config("c")]);
    sim.advance(Duration::from_millis(10));
    sim.exit("c", 1);
    let actions = sim.step(Input::Shutdown { force: false });
    let signalled: Vec<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal {
                pid,
                signal: Signal::SIGTERM,
                ..
            } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(signalled, pids[..2]);
    assert_eq!(
        sim.state("c"),
        ProcessState::Stopped,
        "the waiting one is not restarted"
    );
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::RememberStopped { .. })));
    assert!(!sim.sup.is_idle());
    let actions = sim.exit("a", 0);
    assert!(spawned_names(&actions).is_empty());
    assert!(
        sim.step(Input::Start("a".into())).is_empty(),
        "no starts during shutdown"
    );
    sim.killed_by("b", "SIGTERM");
    assert!(sim.sup.is_idle());
}

#[test]
fn an_exit_the_agents_shutdown_asked_for_says_so_and_a_stop_by_hand_does_not() {
    let (mut sim, _) = Sim::running(vec![config("a"), config("b")]);
    sim.step(Input::Stop("b".into()));
    sim.step(Input::Shutdown { force: false });
    let a = exit_info(&sim.killed_by("a", "SIGTERM"));
    assert!(a.requested && a.shutdown, "{a:?}");
    let b = exit_info(&sim.killed_by("b", "SIGTERM"));
    assert!(b.requested && !b.shutdown, "stopped by hand before: {b:?}");
}

#[test]
fn a_second_shutdown_kills_at_once() {
    let (mut sim, pids) = Sim::running(vec![config("a"), config("b")]);
    sim.step(Input::Shutdown { force: false });
    let actions = sim.step(Input::Shutdown { force: true });
    assert_eq!(
        actions,
        [
            Action::Kill {
                name: "a".into(),
                pid: pids[0]
            },
            Action::Kill {
                name: "b".into(),
                pid: pids[1]
            },
        ]
    );
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn reload_adds_removes_and_restarts_changed_processes_only() {
    let (mut sim, _) = Sim::running(vec![config("keep"), config("change"), config("drop")]);
    let pids = [sim.pid("keep"), sim.pid("change"), sim.pid("drop")];
    let mut changed = config("change");
    changed.command = vec!["false".into()];
    let actions = sim.step(Input::Configure(vec![
        config("keep"),
        changed.clone(),
        config("new"),
    ]));
    let signalled: BTreeSet<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(signalled, BTreeSet::from([pids[1], pids[2]]));
    // The new one waits for the removed one to be gone.
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.view("new").state, ProcessState::Starting);
    assert_eq!(
        sim.view("keep").pid,
        Some(pids[0]),
        "unchanged keeps running"
    );

    let actions = sim.killed_by("drop", "SIGTERM");
    assert!(actions.contains(&Action::Forget {
        name: "drop".into()
    }));
    assert_eq!(spawned_names(&actions), ["new"]);
    assert!(!sim.sup.contains("drop"));
    // Said as a removal, not as a stop someone asked for.
    assert!(notices(&actions).contains(&NoticeKind::Stopped { removed: true }));

    let actions = sim.killed_by("change", "SIGTERM");
    assert_eq!(spawned_names(&actions), ["change"]);
    assert!(!notices(&actions).contains(&NoticeKind::Stopped { removed: true }));
    assert_eq!(sim.sup.config("change").unwrap().command, ["false"]);
}

/// A renamed program is a removal and an addition: the new name starts once the old name's
/// run is gone, which may hold what the new one needs (a port, a device), as supervisord's
/// `update` does. A removal that cannot end holds it no longer than its stop can take.
#[test]
fn a_process_added_with_a_removal_starts_once_the_removed_one_is_gone() {
    let (mut sim, _) = Sim::running(vec![config("door")]);
    let old_pid = sim.pid("door");
    let actions = sim.step(Input::Configure(vec![config("door-opener")]));
    assert!(actions.contains(&Action::Signal {
        name: "door".into(),
        pid: old_pid,
        signal: Signal::SIGTERM
    }));
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    let held = sim.view("door-opener");
    assert_eq!((held.state, held.pid), (ProcessState::Starting, None));
    // A tick before the old run is gone starts nothing.
    sim.advance(secs(2));
    assert!(spawned_names(&sim.step(Input::Tick)).is_empty());
    let actions = sim.killed_by("door", "SIGTERM");
    assert_eq!(spawned_names(&actions), ["door-opener"]);
    assert!(!sim.sup.contains("door"));
    sim.spawn_ok("door-opener");
    assert_eq!(sim.view("door-opener").restarts, 0, "a first start");

    // One that the kernel cannot kill holds it until its stop timeout and the kill's grace.
    let (mut sim, _) = Sim::running(vec![config("door")]);
    sim.step(Input::Configure(vec![config("door-opener")]));
    let held_from = sim.now;
    let kill = sim.tick_to_deadline();
    assert!(
        kill.iter().any(|a| matches!(a, Action::Kill { .. })),
        "{kill:?}"
    );
    assert!(spawned_names(&kill).is_empty());
    let actions = sim.tick_to_deadline();
    assert_eq!(spawned_names(&actions), ["door-opener"]);
    assert_eq!(sim.now, held_from + DEFAULT_STOP_TIMEOUT + KILL_GRACE);

    // Held, it can be stopped by hand, or taken out again, and then never starts.
    let (mut sim, _) = Sim::running(vec![config("door")]);
    sim.step(Input::Configure(vec![
        config("door-opener"),
        config("bell"),
    ]));
    sim.step(Input::Stop("door-opener".into()));
    sim.step(Input::Configure(vec![config("door-opener")]));
    let actions = sim.killed_by("door", "SIGTERM");
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.state("door-opener"), ProcessState::Stopped);
    assert!(!sim.sup.contains("bell"));
    // A process added alone starts at once.
    let actions = sim.step(Input::Configure(vec![
        config("door-opener"),
        config("bell"),
    ]));
    assert_eq!(spawned_names(&actions), ["bell"]);
}

/// Found by a review: what a held process is told while it waits.
#[test]
fn a_held_process_takes_changes_and_commands_as_one_that_has_not_started() {
    let slow = || {
        let mut door = config("door");
        door.stop_timeout = secs(20);
        door
    };
    let renamed = |autostart: bool| {
        let mut opener = config("door-opener");
        opener.autostart = autostart;
        opener
    };
    // Left off while held: it does not start when the removed one is gone.
    let (mut sim, _) = Sim::running(vec![slow()]);
    sim.step(Input::Configure(vec![renamed(true)]));
    let plan = sim.sup.plan(&[renamed(false)]);
    assert_eq!(plan.changed_left_off, ["door-opener"]);
    let actions = sim.step(Input::Configure(vec![renamed(false)]));
    assert!(notices(&actions).is_empty(), "nothing ran: {actions:?}");
    assert_eq!(sim.state("door-opener"), ProcessState::Stopped);
    assert!(spawned_names(&sim.killed_by("door", "SIGTERM")).is_empty());

    // Turned on again while the removed one still stops, it waits for it again; a start or
    // a restart by hand waits with it, as for a start under way; a new command is a start,
    // not a restart.
    let (mut sim, _) = Sim::running(vec![slow()]);
    sim.step(Input::Configure(vec![renamed(false)]));
    let actions = sim.step(Input::Configure(vec![renamed(true)]));
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.state("door-opener"), ProcessState::Starting);
    assert!(spawned_names(&sim.step(Input::Start("door-opener".into()))).is_empty());
    assert!(spawned_names(&sim.step(Input::Restart("door-opener".into()))).is_empty());
    let mut other = renamed(true);
    other.command.push("-v".into());
    assert_eq!(
        sim.sup.plan(&[other.clone()]).changed_started,
        ["door-opener"]
    );
    assert!(spawned_names(&sim.step(Input::Configure(vec![other]))).is_empty());
    assert_eq!(
        spawned_names(&sim.killed_by("door", "SIGTERM")),
        ["door-opener"]
    );

    // Removed while held, it leaves without a stop to report.
    let (mut sim, _) = Sim::running(vec![slow()]);
    sim.step(Input::Configure(vec![renamed(true)]));
    let actions = sim.step(Input::Configure(vec![]));
    assert!(notices(&actions).is_empty(), "{actions:?}");
    assert!(!sim.sup.contains("door-opener"));

    // One the kernel cannot kill holds what is added no longer than its own stop can take.
    let (mut sim, _) = Sim::running(vec![slow()]);
    sim.step(Input::Configure(vec![config("bell")]));
    sim.advance(secs(20) + KILL_GRACE);
    let actions = sim.step(Input::Tick);
    assert_eq!(spawned_names(&actions), ["bell"], "{actions:?}");
    assert_eq!(sim.state("door"), ProcessState::Stopping, "not gone");
    let actions = sim.step(Input::Configure(vec![config("bell"), config("gate")]));
    assert_eq!(
        spawned_names(&actions),
        ["gate"],
        "not held by the stuck one"
    );
}

#[test]
fn a_change_of_what_is_reported_only_needs_no_restart() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let pid = sim.pid("web");
    let mut quiet = config("web");
    quiet.notify = respawn_common::messages::Notify::Off;
    let actions = sim.step(Input::Configure(vec![quiet]));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.view("web").pid, Some(pid));
    assert_eq!(
        sim.sup.config("web").unwrap().notify,
        respawn_common::messages::Notify::Off
    );
}

#[test]
fn a_change_of_how_a_running_process_is_supervised_is_taken_without_a_restart() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let pid = sim.pid("web");
    let mut changed = config("web");
    changed.stop_timeout = secs(20);
    changed.stop_signal = Signal::SIGINT;
    changed.autostart = false;
    changed.restart = RestartPolicy::OnFailure;
    let actions = sim.step(Input::Configure(vec![changed]));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.view("web").pid, Some(pid));
    // The next stop is the new configuration's.
    let actions = sim.step(Input::Stop("web".into()));
    assert!(actions.contains(&Action::Signal {
        name: "web".into(),
        pid,
        signal: Signal::SIGINT
    }));
    let stop_began = sim.now;
    assert_eq!(sim.sup.next_deadline(), Some(stop_began + secs(20)));
    // A stop under way takes a new stop_timeout, counted from its stop signal.
    sim.advance(secs(3));
    let mut shorter = config("web");
    shorter.stop_timeout = secs(5);
    shorter.stop_signal = Signal::SIGINT;
    shorter.autostart = false;
    shorter.restart = RestartPolicy::OnFailure;
    let actions = sim.step(Input::Configure(vec![shorter]));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.sup.next_deadline(), Some(stop_began + secs(5)));
    let actions = sim.tick_to_deadline();
    assert!(actions.contains(&Action::Kill {
        name: "web".into(),
        pid
    }));
    // So does the stop of a restart, which a reload leaves under way.
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Restart("web".into()));
    let stop_began = sim.now;
    sim.advance(secs(1));
    let mut shorter = config("web");
    shorter.stop_timeout = secs(2);
    let actions = sim.step(Input::Configure(vec![shorter]));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.sup.next_deadline(), Some(stop_began + secs(2)));
    // What it runs is another matter: a new command restarts it, stopped as the new
    // configuration says.
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let mut changed = config("web");
    changed.command.push("-v".into());
    changed.stop_signal = Signal::SIGINT;
    changed.stop_timeout = secs(3);
    let actions = sim.step(Input::Configure(vec![changed]));
    assert!(actions.contains(&Action::Signal {
        name: "web".into(),
        pid: sim.pid("web"),
        signal: Signal::SIGINT
    }));
    assert_eq!(sim.sup.next_deadline(), Some(sim.now + secs(3)));
}

/// Found by a review: a change of how a resting process is supervised ran a finished job
/// again, and cut a backoff short; one that never ran is still started as a new one is.
#[test]
fn a_change_of_how_a_resting_process_is_supervised_starts_nothing_it_would_not() {
    let mut job = config("migrate");
    job.restart = RestartPolicy::Never;
    let (mut sim, _) = Sim::running(vec![job.clone()]);
    sim.exit("migrate", 0);
    assert_eq!(sim.view("migrate").state, ProcessState::Stopped);
    job.stop_timeout = secs(20);
    let actions = sim.step(Input::Configure(vec![job.clone()]));
    assert!(
        spawned_names(&actions).is_empty(),
        "a finished job ran again: {actions:?}"
    );
    assert_eq!(sim.view("migrate").state, ProcessState::Stopped);
    job.restart = RestartPolicy::OnFailure;
    assert!(spawned_names(&sim.step(Input::Configure(vec![job]))).is_empty());

    // Waiting out its backoff: a longer stop_timeout keeps the wait; restart = "never" ends it.
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.exit("web", 1);
    let until = sim.sup.next_deadline();
    let mut changed = config("web");
    changed.stop_timeout = secs(20);
    let actions = sim.step(Input::Configure(vec![changed.clone()]));
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.view("web").state, ProcessState::Backoff);
    assert_eq!(sim.sup.next_deadline(), until, "the backoff stands");
    changed.restart = RestartPolicy::Never;
    let actions = sim.step(Input::Configure(vec![changed]));
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.view("web").state, ProcessState::Stopped);
    assert_eq!(sim.sup.next_deadline(), None, "no start is due");

    // Stopped for not working, it restarts whatever its code, as at its exit (found by a
    // review: a clean exit after the stop of a hung on-failure process rested at a reload).
    let mut hung = config("api");
    hung.restart = RestartPolicy::OnFailure;
    let (mut sim, _) = Sim::running(vec![hung.clone()]);
    let pid = sim.pid("api");
    sim.step(Input::Unhealthy {
        name: "api".into(),
        pid,
        reason: "http check failed 3 times in a row: HTTP 503".into(),
    });
    sim.exit("api", 0);
    assert_eq!(sim.view("api").state, ProcessState::Backoff);
    hung.stop_timeout = secs(20);
    sim.step(Input::Configure(vec![hung]));
    assert_eq!(
        sim.view("api").state,
        ProcessState::Backoff,
        "its restart stands"
    );

    // Left off: turned on, it starts, as a process added with autostart does.
    let mut off = config("later");
    off.autostart = false;
    let (mut sim, _) = Sim::new(vec![off.clone()]);
    off.autostart = true;
    let actions = sim.step(Input::Configure(vec![off]));
    assert_eq!(spawned_names(&actions), ["later"]);
}

#[test]
fn reload_never_starts_a_manually_stopped_process() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Stop("web".into()));
    sim.killed_by("web", "SIGTERM");
    let mut changed = config("web");
    changed.stop_timeout = secs(1);
    let actions = sim.step(Input::Configure(vec![changed]));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sim.sup.config("web").unwrap().stop_timeout, secs(1));
}

#[test]
fn views_keep_the_order_of_the_file_and_a_process_leaving_comes_last() {
    let (mut sim, _) = Sim::running(vec![config("zeta"), config("alpha"), config("mid")]);
    let names = |sim: &Sim| sim.sup.views().map(|v| v.name).collect::<Vec<_>>();
    assert_eq!(names(&sim), ["zeta", "alpha", "mid"]);
    // alpha is removed and still stopping; the new order holds for the others.
    sim.step(Input::Configure(vec![config("mid"), config("zeta")]));
    assert_eq!(sim.state("alpha"), ProcessState::Stopping);
    assert_eq!(names(&sim), ["mid", "zeta", "alpha"]);
}

#[test]
fn reload_removes_stopped_processes_at_once() {
    let mut c = config("idle");
    c.autostart = false;
    let (mut sim, _) = Sim::new(vec![c]);
    let actions = sim.step(Input::Configure(vec![]));
    assert_eq!(
        actions,
        [Action::Forget {
            name: "idle".into()
        }]
    );
}

#[test]
fn stale_and_foreign_events_are_ignored() {
    let (mut sim, pids) = Sim::running(vec![config("web")]);
    let stale = sim.step(Input::Exited {
        name: "web".into(),
        pid: pids[0] + 1000,
        status: ExitStatus::Code { code: 1 },
        oom: OomEvidence::None,
        ended: sim.now,
    });
    assert!(stale.is_empty());
    assert!(sim.step(Input::Stop("nope".into())).is_empty());
    assert!(sim
        .step(Input::Spawned {
            name: "web".into(),
            pid: 9
        })
        .is_empty());
    assert_eq!(sim.view("web").pid, Some(pids[0]));
}

#[test]
fn a_stop_while_starting_takes_effect_once_started() {
    let (mut sim, _) = Sim::new(vec![config("web")]);
    assert!(matches!(
        sim.step(Input::Stop("web".into()))[..],
        [Action::RememberStopped { .. }]
    ));
    let (pid, actions) = sim.spawn_ok("web");
    assert!(actions.contains(&Action::Signal {
        name: "web".into(),
        pid,
        signal: Signal::SIGTERM
    }));
}

#[test]
fn a_stable_fleet_has_no_deadline_so_the_agent_sleeps() {
    let configs: Vec<ProcessConfig> = (0..50).map(|i| config(&format!("p{i}"))).collect();
    let (mut sim, _) = Sim::running(configs);
    assert_eq!(sim.sup.next_deadline(), None);
    sim.crash_repeatedly("p7", 1, secs(1));
    assert!(sim.sup.next_deadline().is_some());
    sim.advance(secs(120));
    sim.step(Input::Tick);
    assert_eq!(sim.sup.next_deadline(), None);
    assert!(sim.elapsed() > secs(120));
}

#[test]
fn a_reload_during_a_manual_stop_keeps_the_process_stopped_with_the_new_config() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Stop("web".into()));
    let mut changed = config("web");
    changed.command = vec!["false".into()];
    assert!(spawned_names(&sim.step(Input::Configure(vec![changed]))).is_empty());
    let actions = sim.killed_by("web", "SIGTERM");
    assert!(spawned_names(&actions).is_empty(), "{actions:?}");
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert!(sim.view("web").manually_stopped);
    assert_eq!(sim.sup.config("web").unwrap().command, ["false"]);
}

#[test]
fn a_stop_during_a_config_change_keeps_the_new_config_and_stops() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let mut changed = config("web");
    changed.command = vec!["false".into()];
    sim.step(Input::Configure(vec![changed]));
    sim.step(Input::Stop("web".into()));
    let actions = sim.killed_by("web", "SIGTERM");
    assert!(spawned_names(&actions).is_empty());
    assert_eq!(sim.sup.config("web").unwrap().command, ["false"]);
    assert_eq!(sim.state("web"), ProcessState::Stopped);
}

#[test]
fn a_removed_process_cannot_be_started_while_it_stops() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Configure(vec![]));
    assert!(sim.step(Input::Start("web".into())).is_empty());
    assert!(sim.step(Input::Restart("web".into())).is_empty());
    let actions = sim.killed_by("web", "SIGTERM");
    assert!(spawned_names(&actions).is_empty());
    assert!(actions.contains(&Action::Forget { name: "web".into() }));
    assert!(!sim.sup.contains("web"));
}

#[test]
fn a_process_restored_while_being_removed_starts_again() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    sim.step(Input::Configure(vec![]));
    sim.step(Input::Configure(vec![config("web")]));
    let actions = sim.killed_by("web", "SIGTERM");
    assert_eq!(spawned_names(&actions), ["web"]);
    assert!(sim.sup.contains("web"));
}

#[test]
fn a_change_reverted_during_the_stop_starts_the_original_config() {
    let (mut sim, _) = Sim::running(vec![config("web")]);
    let mut changed = config("web");
    changed.command = vec!["false".into()];
    sim.step(Input::Configure(vec![changed]));
    assert!(sim.step(Input::Configure(vec![config("web")])).is_empty());
    let actions = sim.killed_by("web", "SIGTERM");
    assert_eq!(spawned_names(&actions), ["web"]);
    assert_eq!(sim.sup.config("web").unwrap().command, ["true"]);
}

#[test]
fn a_never_process_that_cannot_start_is_given_up() {
    let mut c = config("once");
    c.restart = RestartPolicy::Never;
    let (mut sim, _) = Sim::new(vec![c]);
    let actions = sim.step(Input::SpawnFailed {
        name: "once".into(),
        error: "missing".into(),
    });
    assert!(notices(&actions).contains(&NoticeKind::Failed { restarts: 0 }));
    assert_eq!(sim.state("once"), ProcessState::Failed);
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn failed_counts_only_the_unstable_restarts() {
    let mut c = config("web");
    c.max_restarts = Some(1);
    c.crash_loop.max_exits = 100;
    let (mut sim, _) = Sim::running(vec![c]);
    for _ in 0..3 {
        sim.advance(secs(61));
        sim.step(Input::Tick);
        sim.exit("web", 1);
        sim.spawn_ok("web");
    }
    sim.crash_repeatedly("web", 1, Duration::from_millis(10));
    sim.advance(Duration::from_millis(10));
    let actions = sim.exit("web", 1);
    assert!(
        notices(&actions).contains(&NoticeKind::Failed { restarts: 1 }),
        "{actions:?}"
    );
    assert_eq!(sim.view("web").restarts, 4);
}

/// Random inputs at random times: the machine never panics, and ticking at its deadline
/// always moves the deadline on, so the runtime can never spin. Also: a process stopped by
/// hand is never spawned, and once nothing runs, only configured processes are left.
#[test]
fn random_inputs_never_spin_or_panic() {
    let mut rng = Jitter::new(99);
    let mut unit_random = move |n: usize| -> usize {
        let d = rng.apply(Duration::from_secs(1_000_000));
        (d.as_micros() as usize) % n
    };
    let mut quick = config("a");
    quick.stable_after = Duration::ZERO;
    quick.stop_timeout = Duration::ZERO;
    let mut limited = config("b");
    limited.max_restarts = Some(3);
    let mut checked = health_checked("c");
    checked.restart_every = Some(secs(120));
    let (mut sim, _) = Sim::new(vec![quick.clone(), limited, checked.clone()]);
    let names = ["a", "b", "c"];
    let mut configured: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    for _ in 0..20_000 {
        let name = names[unit_random(3)].to_string();
        let input = match unit_random(11) {
            0 => Input::Start(name),
            1 => Input::Stop(name),
            2 => Input::Restart(name),
            3 => Input::Spawned {
                name,
                pid: 1000 + unit_random(5) as u32,
            },
            4 => Input::SpawnFailed {
                name,
                error: "x".into(),
            },
            5 => match sim.sup.view(&name).and_then(|v| v.pid) {
                Some(pid) => Input::Exited {
                    name,
                    pid,
                    status: ExitStatus::Code { code: 1 },
                    oom: OomEvidence::None,
                    ended: sim.now,
                },
                None => Input::Tick,
            },
            6 => Input::Configure(vec![quick.clone(), config("c")]),
            7 => Input::Configure(vec![config("a"), config("b"), checked.clone()]),
            8 => match sim.sup.view(&name).and_then(|v| v.pid) {
                Some(pid) => Input::Unhealthy {
                    name,
                    pid,
                    reason: "hung".into(),
                },
                None => Input::Tick,
            },
            9 => match sim.sup.view(&name).and_then(|v| v.pid) {
                Some(pid) => Input::Ready { name, pid },
                None => Input::Tick,
            },
            _ => Input::Tick,
        };
        if let Input::Configure(configs) = &input {
            configured = configs.iter().map(|c| c.name.clone()).collect();
        }
        sim.advance(Duration::from_millis(unit_random(5000) as u64));
        let mut actions = sim.step(input);
        if let Some(deadline) = sim.sup.next_deadline() {
            sim.now = sim.now.max(deadline);
            actions.extend(sim.step(Input::Tick));
            if let Some(after) = sim.sup.next_deadline() {
                assert!(
                    after > sim.now,
                    "deadline {after:?} not after now {:?}",
                    sim.now
                );
            }
        }
        for name in spawned_names(&actions) {
            assert!(
                configured.contains(&name),
                "{name} spawned but not configured"
            );
            assert!(
                !sim.view(&name).manually_stopped,
                "{name} spawned while stopped by hand"
            );
        }
        if sim.sup.is_idle() {
            for view in sim.sup.views() {
                assert!(configured.contains(&view.name), "{} left over", view.name);
            }
        }
    }
}

fn health_checked(name: &str) -> ProcessConfig {
    let mut c = config(name);
    c.health = Some(crate::config::HealthCheck {
        probe: crate::config::Probe::Tcp {
            address: "127.0.0.1:1".into(),
        },
        interval: secs(10),
        timeout: secs(2),
        failures: 3,
        grace: secs(30),
    });
    c
}

#[test]
fn a_checked_process_is_starting_until_it_is_ready() {
    let (mut sim, _) = Sim::running(vec![health_checked("web"), config("plain")]);
    let pid = sim.pid("web");
    assert_eq!(
        sim.state("web"),
        ProcessState::Starting,
        "running, not ready"
    );
    assert_eq!(sim.view("web").pid, Some(pid));
    assert_eq!(
        sim.state("plain"),
        ProcessState::Running,
        "nothing to wait for"
    );
    sim.advance(secs(3));
    assert!(sim
        .step(Input::Ready {
            name: "web".into(),
            pid: pid + 50
        })
        .is_empty());
    assert_eq!(
        sim.state("web"),
        ProcessState::Starting,
        "another run's word"
    );
    sim.step(Input::Ready {
        name: "web".into(),
        pid,
    });
    assert_eq!(sim.state("web"), ProcessState::Running);
    assert_eq!(
        sim.view("web").since,
        sim.t0,
        "uptime counts from the start"
    );
}

#[test]
fn an_unhealthy_process_is_stopped_and_restarted_like_after_a_crash() {
    let (mut sim, _) = Sim::running(vec![no_crash_loop(health_checked("web"))]);
    let mut delays = Vec::new();
    for round in 0..3u32 {
        let pid = sim.pid("web");
        sim.advance(secs(5));
        let actions = sim.step(Input::Unhealthy {
            name: "web".into(),
            pid,
            reason: "tcp check failed 3 times in a row".into(),
        });
        assert_eq!(
            notices(&actions),
            [NoticeKind::Unhealthy {
                reason: "tcp check failed 3 times in a row".into()
            }]
        );
        assert!(actions.contains(&Action::Signal {
            name: "web".into(),
            pid,
            signal: Signal::SIGTERM
        }));
        // It exits 0 on SIGTERM, as many programs do: still restarted.
        let actions = sim.exit("web", 0);
        let info = exit_info(&actions);
        assert!(
            info.requested,
            "not reported as a crash: the unhealthy event says why"
        );
        assert_eq!(
            info.reason.as_deref(),
            Some("tcp check failed 3 times in a row"),
            "and so does the exit, which status shows later"
        );
        assert_eq!(info.restarts, round);
        let next = info.next_start.expect("restarted");
        delays.push(next - sim.now);
        assert!(spawned_names(&sim.tick_to_deadline()) == ["web"]);
        sim.spawn_ok("web");
    }
    assert!(
        delays[0] < delays[1] && delays[1] < delays[2],
        "backoff grows: {delays:?}"
    );
    assert_eq!(sim.view("web").restarts, 3);
}

#[test]
fn unhealthy_exits_count_towards_a_crash_loop_and_a_stop_wins() {
    let mut c = health_checked("web");
    c.crash_loop = CrashLoop {
        max_exits: 2,
        window: secs(600),
    };
    let (mut sim, _) = Sim::running(vec![c]);
    for _ in 0..2 {
        let pid = sim.pid("web");
        sim.step(Input::Unhealthy {
            name: "web".into(),
            pid,
            reason: "hung".into(),
        });
        let actions = sim.killed_by("web", "SIGTERM");
        if sim.view("web").crash_loop_since.is_some() {
            assert!(notices(&actions)
                .iter()
                .any(|n| matches!(n, NoticeKind::CrashLoop { .. })));
            break;
        }
        sim.tick_to_deadline();
        sim.spawn_ok("web");
    }
    assert!(sim.view("web").crash_loop_since.is_some());

    // Unhealthy, then stopped by hand while it stops: it stays down.
    let (mut sim, _) = Sim::running(vec![health_checked("web")]);
    let pid = sim.pid("web");
    sim.step(Input::Unhealthy {
        name: "web".into(),
        pid,
        reason: "hung".into(),
    });
    sim.step(Input::Stop("web".into()));
    let actions = sim.killed_by("web", "SIGTERM");
    assert_eq!(
        exit_info(&actions).reason,
        None,
        "a person's stop, not the agent's"
    );
    assert_eq!(sim.state("web"), ProcessState::Stopped);
    assert_eq!(sim.sup.next_deadline(), None);
}

#[test]
fn restart_every_restarts_on_schedule_without_counting_a_failure() {
    let mut c = config("leaky");
    c.restart_every = Some(secs(3600));
    let (mut sim, _) = Sim::running(vec![c]);
    let pid = sim.pid("leaky");
    assert_eq!(sim.sup.next_deadline(), Some(sim.t0 + secs(3600)));
    let actions = sim.tick_to_deadline();
    assert_eq!(sim.elapsed(), secs(3600));
    assert!(actions.contains(&Action::Signal {
        name: "leaky".into(),
        pid,
        signal: Signal::SIGTERM
    }));
    let actions = sim.killed_by("leaky", "SIGTERM");
    let exit = exit_info(&actions);
    assert!(exit.requested && exit.scheduled && !exit.killed_at_stop_timeout);
    assert_eq!(spawned_names(&actions), ["leaky"], "at once");
    sim.spawn_ok("leaky");
    assert_eq!(sim.view("leaky").restarts, 0);
    // The next stop, by hand, is not the schedule's.
    let pid = sim.pid("leaky");
    sim.step(Input::Stop("leaky".into()));
    let actions = sim.killed_by("leaky", "SIGTERM");
    assert!(!exit_info(&actions).scheduled, "{pid}");
    // Nor one by hand that came while the schedule's was under way.
    sim.step(Input::Start("leaky".into()));
    sim.spawn_ok("leaky");
    for _ in 0..3 {
        if sim.state("leaky") == ProcessState::Stopping {
            break;
        }
        sim.tick_to_deadline();
    }
    assert_eq!(
        sim.state("leaky"),
        ProcessState::Stopping,
        "the schedule's stop"
    );
    sim.step(Input::Stop("leaky".into()));
    let actions = sim.killed_by("leaky", "SIGTERM");
    assert!(!exit_info(&actions).scheduled);
    // Nor a removal from the configuration.
    sim.step(Input::Start("leaky".into()));
    sim.spawn_ok("leaky");
    sim.tick_to_deadline();
    assert_eq!(sim.state("leaky"), ProcessState::Stopping);
    sim.step(Input::Configure(vec![]));
    let actions = sim.killed_by("leaky", "SIGTERM");
    assert!(!exit_info(&actions).scheduled);
}

#[test]
fn an_exit_is_an_oom_kill_when_the_kernel_counted_one_for_it() {
    let sigkill = || ExitStatus::Signal {
        signal: "SIGKILL".into(),
        core_dumped: false,
    };
    let cases = [
        (
            OomEvidence::InItsCgroup { limit: Some(200) },
            ExitStatus::Code { code: 1 },
            Some(OomKill { limit: Some(200) }),
        ),
        (
            OomEvidence::OnTheMachine,
            sigkill(),
            Some(OomKill { limit: None }),
        ),
        (
            OomEvidence::OnTheMachine,
            ExitStatus::Code { code: 137 },
            None,
        ),
        (OomEvidence::None, sigkill(), None),
    ];
    for (oom, status, expected) in cases {
        let (mut sim, pids) = Sim::running(vec![config("web")]);
        let actions = sim.step(Input::Exited {
            name: "web".into(),
            pid: pids[0],
            status: status.clone(),
            oom,
            ended: sim.now,
        });
        assert_eq!(exit_info(&actions).oom, expected, "{oom:?}, {status}");
    }
    // A SIGKILL the agent sent (a stop that ran out of time) is not the kernel's, whatever
    // the machine counted meanwhile.
    let (mut sim, pids) = Sim::running(vec![config("web")]);
    sim.step(Input::Stop("web".into()));
    let actions = sim.step(Input::Exited {
        name: "web".into(),
        pid: pids[0],
        status: sigkill(),
        oom: OomEvidence::OnTheMachine,
        ended: sim.now,
    });
    assert_eq!(exit_info(&actions).oom, None);
}

#[test]
fn a_plan_says_what_configure_then_does_to_each_process() {
    let names = [
        "same", "notify", "timeout", "cmd", "by_hand", "idle_off", "idle_on", "gone",
    ];
    let (mut sim, _) = Sim::running(names.map(config).to_vec());
    sim.step(Input::Stop("by_hand".into()));
    sim.exit("by_hand", 0);
    for idle in ["idle_off", "idle_on"] {
        sim.exit(idle, 1);
        assert_eq!(sim.state(idle), ProcessState::Backoff, "{idle}");
    }
    let other_command = |name: &str| ProcessConfig::new(name, vec!["false".into()]);
    let mut notify = config("notify");
    notify.notify = respawn_common::messages::Notify::Off;
    let mut timeout = config("timeout");
    timeout.stop_timeout = secs(30);
    let mut idle_off = other_command("idle_off");
    idle_off.autostart = false;
    let mut new_off = config("new_off");
    new_off.autostart = false;
    let new = vec![
        config("same"),
        notify,
        timeout,
        other_command("cmd"),
        other_command("by_hand"),
        idle_off,
        other_command("idle_on"),
        config("new"),
        new_off,
    ];

    let plan = sim.sup.plan(&new);
    assert_eq!(plan.unchanged, ["same"]);
    assert_eq!(plan.updated, ["notify", "timeout"]);
    assert_eq!(plan.changed, ["cmd"]);
    assert_eq!(plan.changed_started, ["idle_on"]);
    assert_eq!(plan.changed_stopped, ["by_hand"]);
    assert_eq!(plan.changed_left_off, ["idle_off"]);
    assert_eq!(plan.added, ["new"]);
    assert_eq!(plan.added_stopped, ["new_off"]);
    assert_eq!(plan.removed, ["gone"]);

    // What the plan says starts, restarts or stops is exactly what configure acts on: at
    // once, or, for an added one, once the removed one is gone.
    let mut actions = sim.step(Input::Configure(new));
    actions.extend(sim.killed_by("gone", "SIGTERM"));
    let acted_on: BTreeSet<&str> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { name } | Action::Signal { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let said: BTreeSet<&str> = (plan.added.iter())
        .chain(&plan.changed)
        .chain(&plan.changed_started)
        .chain(&plan.removed)
        .map(String::as_str)
        .collect();
    assert_eq!(acted_on, said);
}
