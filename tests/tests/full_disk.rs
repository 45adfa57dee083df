//! The agent's state directory on a full filesystem — a small tmpfs that is filled up, as
//! root — with the broker away and then the agent killed with SIGKILL: supervision goes on,
//! sequence numbers never go back, every lost event shows as a gap that a count accounts for,
//! no program runs twice, and the log says so a few times, not once per event.

use std::collections::{BTreeMap, BTreeSet};

use respawn_agent::control::{Reply, Request};
use respawn_common::messages::{Event, EventKind};
use respawn_tests::broker::{Broker, PERSISTENT};
use respawn_tests::faults::SmallDisk;
use respawn_tests::mqtt::{Message, Observer};
use respawn_tests::{alive, mqtt_section, runs_as_root, wait_for, wait_gone, TestAgent, TIMEOUT};

const PROCESSES: &str = r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "exit 7"]
backoff = { initial = "10ms", max = "20ms" }
crash_loop = { max_exits = 100000, window = "1m" }

[[process]]
name = "server"
command = ["sh", "-c", "echo $$ >> ../server-pids; exec sleep 1000"]
cwd = "work"
"#;

fn events(messages: &[Message]) -> Vec<Event> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

#[test]
fn a_full_disk_and_a_crash_with_the_broker_away_lose_nothing_silently_and_run_nothing_twice() {
    if runs_as_root(
        "a_full_disk_and_a_crash_with_the_broker_away_lose_nothing_silently_and_run_nothing_twice",
        "mounting a tmpfs",
    ) {
        full_disk_then_crash(Broker::mosquitto(PERSISTENT), false);
    }
}

/// With the broker there, the events of the full disk are sent from memory: the next run
/// must not give their numbers again.
#[test]
fn a_full_disk_and_a_crash_with_the_broker_there_never_give_a_number_twice() {
    if runs_as_root(
        "a_full_disk_and_a_crash_with_the_broker_there_never_give_a_number_twice",
        "mounting a tmpfs",
    ) {
        full_disk_then_crash(Broker::mosquitto(PERSISTENT), true);
    }
}

/// `broker` must keep the watcher's session across its restart: an event it acknowledged just
/// before it was stopped is delivered only after that.
fn full_disk_then_crash(mut broker: Broker, broker_stays: bool) {
    let watcher = Observer::connect_persistent(&broker, "full-disk", &["respawn/v1/test/event"]);
    let dir = tempfile::tempdir().unwrap();
    // The agent keeps its state in `state`, here a 256 KiB filesystem; the server writes its
    // pids beside it.
    let disk = SmallDisk::mount_at(&dir.path().join("state"), 256);
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = mqtt_section(&broker) + PROCESSES;
    let agent = TestAgent::start_in(dir, &config);
    let first_server = agent.wait_running("server");
    watcher.wait("events of the first run", |m| {
        (events(m).len() >= 10).then_some(())
    });

    if !broker_stays {
        broker.stop();
    }
    disk.fill();
    let crashes = agent.status("crasher").restarts;
    agent.wait_until("crasher", "crashing on, with the disk full", |s| {
        s.restarts >= crashes + 30
    });
    // A restart while the disk is full: the new child must still be recorded.
    let Reply::Done { .. } = agent.request(Request::Restart {
        process: "server".into(),
    }) else {
        panic!("the restart failed:\n{}", agent.log());
    };
    let second_server = agent.wait_restarted("server", first_server);
    let log = agent.log();
    let crashed = agent.kill_hard();
    assert!(alive(second_server), "children outlive a SIGKILLed agent");

    disk.free();
    if !broker_stays {
        broker.resume();
        watcher.wait_connected();
    }
    let agent = TestAgent::start_in(crashed, &config);
    let third_server = agent.wait_running("server");
    wait_gone(second_server, "the server started while the disk was full");
    let events = watcher.wait("the new run's start of the server", |m| {
        let events = events(m);
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Started { pid, .. } if pid == third_server))
            .then_some(events)
    });

    // Nothing runs twice: of all the servers ever started, only the newest lives. (The
    // server writes its pid once it runs, which can be after the agent says it started.)
    let pids = wait_for("the new server's pid in its file", TIMEOUT, || {
        let pids = std::fs::read_to_string(agent.dir().join("server-pids")).ok()?;
        pids.contains(&third_server.to_string()).then_some(pids)
    });
    let living: Vec<u32> = pids
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| alive(pid))
        .collect();
    assert_eq!(living, [third_server], "{pids}");

    // A number names one event, ever.
    let mut by_seq: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for event in &events {
        by_seq
            .entry(event.seq)
            .or_default()
            .insert(event.id.clone());
    }
    let reused: Vec<_> = by_seq.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(reused.is_empty(), "numbers given twice: {reused:?}");
    // The new run numbers on from where the old one stopped.
    let new_run_start = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Started { pid, .. } if pid == third_server))
        .unwrap();
    let earlier_max = events
        .iter()
        .filter(|e| e.at < new_run_start.at && e.id != new_run_start.id)
        .map(|e| e.seq)
        .max()
        .unwrap();
    assert!(new_run_start.seq > earlier_max);
    // Every number missing is accounted for by a count of dropped events.
    let seen: BTreeSet<u64> = by_seq.keys().copied().collect();
    let highest = *seen.iter().max().unwrap();
    let missing = (1..=highest).filter(|s| !seen.contains(s)).count() as u64;
    let reported: u64 = {
        let mut counted = BTreeSet::new();
        events
            .iter()
            .filter(|e| counted.insert(e.id.clone()))
            .map(|e| e.dropped_before)
            .sum()
    };
    if !broker_stays {
        assert!(
            missing > 0,
            "the test lost nothing: it did not fill the disk in time"
        );
    }
    if broker_stays {
        // An event the broker had but had not yet acknowledged when the agent was killed was
        // not on disk either: the next run cannot know it arrived, and counts it as lost too.
        assert!(
            reported >= missing,
            "every gap is counted: {reported} < {missing}"
        );
    } else {
        assert_eq!(reported, missing, "every gap is counted, once");
    }

    // The full disk was logged a few times, with counts — not once per event.
    // (With the broker there, events are acknowledged at once and the spool gives back its own
    // space as fast as it takes it, so writes may never fail: then there is nothing to log.)
    let errors = log.matches("cannot write the event spool").count();
    let expected = if broker_stays { 0..=3 } else { 1..=3 };
    assert!(expected.contains(&errors), "{errors} lines:\n{log}");
    wait_for("the agent to stay up", TIMEOUT, || {
        agent.statuses().len().eq(&2).then_some(())
    });
}

/// Found by a review: events the full disk refused stayed in memory once it had room again,
/// and a stop of the agent in good order, before the broker was back, lost them. Now they are
/// written as soon as the disk takes a write: nothing is lost, nothing counted as lost.
#[test]
fn events_a_full_disk_refused_are_kept_once_it_has_room_again() {
    if !runs_as_root(
        "events_a_full_disk_refused_are_kept_once_it_has_room_again",
        "mounting a tmpfs",
    ) {
        return;
    }
    let mut broker = Broker::mosquitto(PERSISTENT);
    let watcher = Observer::connect_persistent(&broker, "disk-back", &["respawn/v1/test/event"]);
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount_at(&dir.path().join("state"), 256);
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let config = mqtt_section(&broker) + PROCESSES;
    let agent = TestAgent::start_in(dir, &config);
    agent.wait_running("server");
    watcher.wait("events of the first run", |m| {
        (events(m).len() >= 10).then_some(())
    });
    broker.stop();
    disk.fill();
    let crashes = agent.status("crasher").restarts;
    agent.wait_until("crasher", "crashing on, with the disk full", |s| {
        s.restarts >= crashes + 30
    });
    assert!(
        agent.log().contains("cannot write the event spool"),
        "the disk refused no event: {}",
        agent.log()
    );
    disk.free();
    // The spool on disk holds every number from its first to its last again.
    let spool = agent.dir().join("state/spool/events.jsonl");
    wait_for("the refused events on disk", TIMEOUT, || {
        let text = std::fs::read_to_string(&spool).ok()?;
        let mut numbers: Vec<u64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .map(|e| e.seq)
            .collect();
        numbers.sort_unstable();
        let gapless = numbers.windows(2).all(|w| w[1] == w[0] + 1);
        (gapless && numbers.len() > 30).then_some(())
    });
    let dir = agent.shut_down();

    broker.resume();
    watcher.wait_connected();
    let agent = TestAgent::start_in(dir, &config);
    let server = agent.wait_running("server");
    let events = watcher.wait("the new run's start of the server", |m| {
        let events = events(m);
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Started { pid, .. } if pid == server))
            .then_some(events)
    });
    let seen: BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    let highest = *seen.iter().max().unwrap();
    let missing: Vec<u64> = (1..=highest).filter(|s| !seen.contains(s)).collect();
    assert_eq!(missing, [0u64; 0], "lost");
    let reported: u64 = events.iter().map(|e| e.dropped_before).sum();
    assert_eq!(reported, 0, "counted as lost");
}

/// A stop by hand is kept across agent restarts in the state directory; on a full disk it
/// cannot be, and the stop's answer says so instead of a plain success.
#[test]
fn a_stop_that_a_full_disk_cannot_keep_says_so() {
    if !runs_as_root(
        "a_stop_that_a_full_disk_cannot_keep_says_so",
        "mounting a tmpfs",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount_at(&dir.path().join("state"), 256);
    let agent = TestAgent::start_in(
        dir,
        "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n",
    );
    agent.wait_running("doorbot");
    disk.fill();
    let reply = agent.request(Request::Stop {
        process: "doorbot".into(),
    });
    let Reply::Done {
        warning: Some(warning),
        ..
    } = &reply
    else {
        panic!("{reply:?}\n{}", agent.log());
    };
    assert_eq!(
        warning,
        "the stop could not be saved (No space left on device (os error 28)): doorbot starts again when the agent does"
    );
    // The agent's command line says it too, beside the outcome.
    let output = std::process::Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(agent.config_path())
        .args(["stop", "doorbot"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("warning: the stop could not be saved"),
        "{output:?}"
    );
    // Nothing half written is left behind.
    let left: Vec<String> = std::fs::read_dir(agent.dir().join("state"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    // With space again, the next save holds: no warning.
    disk.free();
    agent.request(Request::Start {
        process: "doorbot".into(),
    });
    let reply = agent.request(Request::Stop {
        process: "doorbot".into(),
    });
    assert!(
        matches!(reply, Reply::Done { warning: None, .. }),
        "{reply:?}"
    );
}

/// Found by a review: on a state directory the kernel had made read-only (an SD card after an
/// error), the agent refused to start and nothing ran. Now the programs run, and the agent
/// says what it cannot do: save, and answer on its control socket.
#[test]
fn on_a_read_only_state_directory_the_programs_still_run() {
    if !runs_as_root(
        "on_a_read_only_state_directory_the_programs_still_run",
        "mounting a tmpfs",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount_at(&dir.path().join("state"), 256);
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let agent = TestAgent::start_in(dir, PROCESSES);
    agent.wait_running("server");
    let dir = agent.shut_down();
    disk.make_read_only();

    let pids = dir.path().join("server-pids");
    std::fs::remove_file(&pids).unwrap();
    let config = dir.path().join("agent.toml");
    let log = dir.path().join("work/agent.log");
    let mut agent = std::process::Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server: u32 = wait_for("the server started", TIMEOUT, || {
        std::fs::read_to_string(&pids).ok()?.trim().parse().ok()
    });
    assert!(alive(server));
    let crashes = wait_for("the crasher restarted again and again", TIMEOUT, || {
        let text = std::fs::read_to_string(&log).ok()?;
        (text.matches("process=crasher").count() >= 10).then_some(text)
    });
    assert!(crashes.contains("read-only file system"), "{crashes}");
    assert!(crashes.contains("no control socket"), "{crashes}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(agent.wait().unwrap().success());
    wait_gone(server, "the server, at the agent's stop");
}
