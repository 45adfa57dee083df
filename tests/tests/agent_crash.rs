//! After the agent itself dies hard, its successor stops what was left running before it
//! starts anything, so no program ever runs twice — and it never touches a process that
//! merely reuses a recorded pid.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use respawn_common::messages::{Event, EventKind};
use respawn_common::status::ExitStatus;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::Observer;
use respawn_tests::{alive, mqtt_section, wait_for, wait_for_pid, wait_gone, TestAgent, TIMEOUT};

const SERVER: &str = r#"
[[process]]
name = "server"
command = ["sh", "-c", "echo $$ >> pids; sleep 1000 & echo $! >> helpers; wait"]
"#;

fn leftovers_of_a_killed_agent_are_stopped_before_fresh_starts() {
    let agent = TestAgent::start(SERVER);
    let old = agent.wait_running("server");
    let helper = wait_for_pid(&agent.dir().join("helpers"));
    let dir = agent.kill_hard();
    assert!(
        alive(old) && alive(helper),
        "children outlive a SIGKILLed agent"
    );

    let agent = TestAgent::start_in(dir, SERVER);
    let new = agent.wait_running("server");
    assert_ne!(new, old);
    wait_gone(old, "the old main process");
    wait_gone(helper, "the old helper");
    agent.wait_for_log("stopping what an earlier run of the agent left running");
    // The new run writes its pid once it runs: wait for that, then there must be no third.
    let runs = wait_for("the new run's pid", TIMEOUT, || {
        let runs = std::fs::read_to_string(agent.dir().join("pids")).ok()?;
        (runs.lines().count() >= 2).then_some(runs)
    });
    assert_eq!(runs.lines().count(), 2, "one old and one new run: {runs}");
}

fn a_leftover_stopped_at_start_is_reported_as_exited_before_the_new_run_starts() {
    let broker = Broker::start();
    let observer = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let config = mqtt_section(&broker) + SERVER;
    let agent = TestAgent::start(&config);
    let old = agent.wait_running("server");
    let dir = agent.kill_hard();
    let agent = TestAgent::start_in(dir, &config);
    let new = agent.wait_running("server");
    let events: Vec<Event> = observer.wait("the new run's start", |messages| {
        let events: Vec<Event> = messages
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect();
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Started { pid, .. } if pid == new))
            .then_some(events)
    });
    // Delivery is at least once: an event the killed agent sent but had not seen
    // acknowledged comes again, with its id, from the new one's spool. Readers dedupe by id.
    let mut seen = std::collections::HashSet::new();
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| seen.insert(e.id.clone()))
        .collect();
    let story: Vec<(&str, u32)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Started { pid, .. } => Some(("started", *pid)),
            EventKind::Exited { pid, .. } => Some(("exited", *pid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        story,
        [("started", old), ("exited", old), ("started", new)],
        "{events:#?}"
    );
    let exit = events.iter().find(|e| e.kind.name() == "exited").unwrap();
    let EventKind::Exited {
        status,
        requested,
        leftover,
        runtime_ms,
        ..
    } = &exit.kind
    else {
        unreachable!()
    };
    assert_eq!(
        *status,
        ExitStatus::Signal {
            signal: "SIGTERM".into(),
            core_dumped: false
        }
    );
    assert!(*requested, "stopped by the agent, not a crash");
    assert!(*leftover, "said to be an earlier run's");
    assert!(*runtime_ms < 60_000, "{runtime_ms}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

fn a_recorded_pid_that_now_names_another_process_is_left_alone() {
    // A session leader, as every child of the agent is: its pid is also its session id, so
    // only the pid-reuse checks stand between it and the stop of leftovers.
    let mut command = Command::new("sleep");
    command.arg("1000").stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut bystander = command.spawn().unwrap();
    let pid = bystander.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start_time: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state/children")).unwrap();
    // The same pid, started at another time: a reused pid, not our child.
    std::fs::write(
        dir.path().join("state/children/server"),
        format!(
            r#"{{"pid":{pid},"start_time":{},"boot_id":"{}"}}"#,
            start_time - 1,
            boot_id.trim()
        ),
    )
    .unwrap();
    // The right process, but recorded during another boot.
    std::fs::write(
        dir.path().join("state/children/other"),
        format!(r#"{{"pid":{pid},"start_time":{start_time},"boot_id":"00000000-0000-0000-0000-000000000000"}}"#),
    )
    .unwrap();
    let agent = TestAgent::start_in(dir, SERVER);
    agent.wait_running("server");
    assert!(alive(pid), "the bystander was hit");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// The lifecycle events among `messages`, once each (delivery is at least once), as
/// (kind, pid).
fn story(messages: &[respawn_tests::mqtt::Message]) -> Vec<(&'static str, u32)> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Event>(&m.payload).ok())
        .filter(|e| seen.insert(e.id.clone()))
        .filter_map(|e| match e.kind {
            EventKind::Started { pid, .. } => Some(("started", pid)),
            EventKind::Exited { pid, .. } => Some(("exited", pid)),
            EventKind::Vanished { pid } => Some(("vanished", pid)),
            _ => None,
        })
        .collect()
}

fn a_run_that_ended_while_no_agent_watched_is_reported_as_vanished() {
    let broker = Broker::start();
    let observer = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let config = mqtt_section(&broker)
        + "[[process]]\nname = \"chatty\"\ncommand = [\"sh\", \"-c\", \"while true; do echo tick; sleep 0.05; done\"]\n";
    let agent = TestAgent::start(&config);
    let old = agent.wait_running("chatty");
    let dir = agent.kill_hard();
    // Its next line has no reader any more: SIGPIPE.
    wait_gone(old, "a program that writes, once its agent is dead");
    let agent = TestAgent::start_in(dir, &config);
    let new = agent.wait_running("chatty");
    let story = observer.wait("the new run's start", |messages| {
        let story = story(messages);
        story.contains(&("started", new)).then_some(story)
    });
    assert_eq!(
        story,
        [("started", old), ("vanished", old), ("started", new)],
        "the old run ends in the stream before the new one starts"
    );
}

/// A master that outlives its stop signal and forks a new worker each time one ends: the
/// signal ends the worker, and a new one comes. It says nothing: once its agent is killed its
/// output has no reader, and the shell's note of a worker ended by a signal would be its
/// SIGPIPE.
fn stubborn_master(stop_timeout: &str) -> String {
    format!(
        r#"
[[process]]
name = "master"
stop_timeout = "{stop_timeout}"
command = ["sh", "-c", "exec 2>/dev/null; echo $$ >> masters; trap 'echo TERM >> terms' TERM; while :; do sleep 1000 & echo $! >> workers; wait $!; done"]
"#
    )
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(1)?.parse().ok()
}

fn leftovers_are_found_again_by_an_agent_after_one_killed_while_it_stopped_them() {
    let agent = TestAgent::start(&stubborn_master("60s"));
    let old = agent.wait_running("master");
    wait_for_pid(&agent.dir().join("workers"));
    // The next agent is killed while it waits for the master, which takes no notice, to stop.
    let agent = TestAgent::start_in_unready(agent.kill_hard(), &stubborn_master("60s"));
    agent.wait_for_log("stopping what an earlier run of the agent left running");
    assert!(alive(old), "the master outlives its stop signal");
    // Its successor still knows of the old run; it kills it, and every worker the master
    // made meanwhile (they are found again as they come).
    let agent = TestAgent::start_in(agent.kill_hard(), &stubborn_master("1s"));
    let new = agent.wait_running("master");
    wait_gone(old, "the old master");
    let workers = std::fs::read_to_string(agent.dir().join("workers")).unwrap_or_default();
    let running: Vec<(u32, Option<u32>)> = workers
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .filter(|&pid| alive(pid))
        .map(|pid| (pid, parent_of(pid)))
        .collect();
    assert!(
        running.iter().all(|&(_, parent)| parent == Some(new)),
        "only the new master's workers run: {running:?} (new master {new})"
    );
    // The new master writes its pid once it runs: wait for that, then there must be no third.
    let masters = wait_for("the new master's pid", TIMEOUT, || {
        let masters = std::fs::read_to_string(agent.dir().join("masters")).ok()?;
        (masters.lines().count() >= 2).then_some(masters)
    });
    assert_eq!(
        masters.lines().count(),
        2,
        "one old and one new run: {masters}"
    );
}

fn a_stop_asked_while_leftovers_stop_waits_for_them_and_starts_nothing() {
    let once = "[[process]]\nname = \"once\"\nrestart = \"never\"\ncommand = [\"sh\", \"-c\", \"echo ran >> once\"]\n";
    let agent = TestAgent::start(&stubborn_master("60s"));
    let old = agent.wait_running("master");
    let config = format!("{}{once}", stubborn_master("2s"));
    let mut agent = TestAgent::start_in_unready(agent.kill_hard(), &config);
    agent.wait_for_log("stopping what an earlier run of the agent left running");
    // Meanwhile a local command hears that the agent is starting, not that none runs.
    let status = Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(agent.config_path())
        .arg("status")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "{said}");
    assert!(
        said.contains(
            "the agent is starting: it is stopping what an earlier run of it left running"
        ),
        "{said}"
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit();
    assert!(!alive(old), "what the earlier run left was stopped first");
    assert!(
        !agent.dir().join("once").exists(),
        "a job to run once was not started only to be stopped"
    );
    assert!(
        agent
            .log()
            .contains("SIGTERM while stopping what an earlier run left"),
        "{}",
        agent.log()
    );
}

respawn_tests::on_both_containments!(
    leftovers_of_a_killed_agent_are_stopped_before_fresh_starts,
    a_leftover_stopped_at_start_is_reported_as_exited_before_the_new_run_starts,
    a_recorded_pid_that_now_names_another_process_is_left_alone,
    a_run_that_ended_while_no_agent_watched_is_reported_as_vanished,
    leftovers_are_found_again_by_an_agent_after_one_killed_while_it_stopped_them,
    a_stop_asked_while_leftovers_stop_waits_for_them_and_starts_nothing,
);
