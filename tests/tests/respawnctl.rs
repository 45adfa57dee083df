//! respawnctl against a real Mosquitto and real agents: fleet status (online, offline, lost),
//! commands with their outcomes and exit codes, globs, logs, events, JSON.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use respawn_agent::control::Request;
use respawn_common::status::ProcessState;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{retained, Observer};
use respawn_tests::{
    mqtt_section, respawnctl, respawnctl_binary, wait_for, wait_for_or, RunningCtl, TestAgent,
    TIMEOUT,
};

fn processes(broker: &Broker) -> String {
    mqtt_section(broker)
        + r#"
[[process]]
name = "doorbot"
command = ["sh", "-c", "echo door ready; exec sleep 1000"]

[[process]]
name = "worker"
command = ["sleep", "1000"]
"#
}

/// A Pi without a real-time clock, out of reach of NTP, keeps the time it was shut down at:
/// here a week behind. Its times are read by its own clock (its uptimes are minutes, not a
/// week) and the table says its clock is off.
#[test]
fn an_agent_whose_clock_is_a_week_behind_is_read_by_its_clock() {
    let test = "an_agent_whose_clock_is_a_week_behind_is_read_by_its_clock";
    let Some(week_behind) = respawn_tests::clock_a_week_behind(test) else {
        return;
    };
    let broker = Broker::start();
    let agent = TestAgent::start_with_env(&processes(&broker), &week_behind);
    agent.wait_running("doorbot");
    let said = wait_for("status to say the agent's clock is off", TIMEOUT, || {
        let out = respawnctl(&broker, &["status"]);
        out.stdout.contains("clock 7d behind").then_some(out.stdout)
    });
    let uptimes: Vec<&str> = said
        .lines()
        .skip(1)
        .filter_map(|row| {
            row.split_whitespace()
                .nth(if row.starts_with("  ") { 3 } else { 2 })
        })
        .collect();
    assert_eq!(uptimes.len(), 3, "{said}");
    assert!(
        uptimes
            .iter()
            .all(|up| up.ends_with('s') && !up.contains(['h', 'd'])),
        "uptimes of a minute at most: {said}"
    );
    let json = respawnctl(&broker, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let offset = json["agents"][0]["clock_offset_ms"].as_i64().unwrap();
    let week = 7 * 86_400_000;
    assert!((offset + week).abs() < 5_000, "{offset}");

    // Its output and its events are dated by this machine's clock, and say why.
    let within_a_minute = |stamp: &str| {
        let at = respawn_common::time::parse(stamp).unwrap();
        let now = std::time::SystemTime::now();
        let apart = now
            .duration_since(at)
            .or_else(|e| Ok::<_, ()>(e.duration()));
        apart.unwrap() < std::time::Duration::from_secs(60)
    };
    let logs = respawnctl(&broker, &["logs", "test/doorbot", "-n", "1"]);
    let stamp = logs.stdout.split_whitespace().next().unwrap_or_default();
    assert!(within_a_minute(stamp), "{}", logs.stdout);
    assert!(
        logs.stderr
            .contains("(test's clock 7d behind: its times are shown by this machine's clock)"),
        "{}",
        logs.stderr
    );
    let tail = RunningCtl::start(&broker, &["events", "test/*"]);
    let started = wait_for("the tail to show a restart", TIMEOUT, || {
        assert_eq!(
            respawnctl(&broker, &["restart", "test/worker"]).code,
            Some(0)
        );
        let lines = tail.lines();
        let started = lines
            .iter()
            .find(|(_, line)| line.contains("test/worker started"));
        started.map(|(_, line)| line.clone())
    });
    let stamp = started.split_whitespace().next().unwrap_or_default();
    assert!(within_a_minute(stamp), "{started}");
}

/// The same Pi's clock set right at last (NTP's first step): its start and its processes'
/// times are told again by the new clock, so that it does not read "up 7d" once its clock
/// agrees with ours.
#[test]
fn an_agent_whose_clock_is_set_right_tells_its_times_again() {
    let test = "an_agent_whose_clock_is_set_right_tells_its_times_again";
    let Some(library) = respawn_tests::faketime(test) else {
        return;
    };
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    std::fs::write(&clock, "-7d\n").unwrap();
    let clock_file = clock.to_string_lossy().into_owned();
    let env = [
        ("LD_PRELOAD", library),
        ("FAKETIME_TIMESTAMP_FILE", clock_file.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    // Its heartbeat comes every second: the step is seen within one.
    let agent = TestAgent::start_with_env(&processes(&broker), &env);
    agent.wait_running("doorbot");
    wait_for("status to say the agent's clock is off", TIMEOUT, || {
        let out = respawnctl(&broker, &["status"]);
        out.stdout.contains("clock 7d behind").then_some(())
    });
    std::fs::write(&clock, "+0\n").unwrap();
    agent.wait_for_log("the system clock moved forward by 7d");
    let said = wait_for("status by the clock set right", TIMEOUT, || {
        let out = respawnctl(&broker, &["status"]);
        (!out.stdout.contains("clock")).then_some(out.stdout)
    });
    let agent_row = said.lines().nth(1).unwrap_or_default();
    let uptime = agent_row.split_whitespace().nth(2).unwrap_or_default();
    assert!(
        uptime.ends_with('s') && !uptime.contains(['h', 'd']),
        "the agent is up a minute at most: {said}"
    );
}

/// Waits until respawnctl sees `agent` as `liveness`.
fn wait_liveness(broker: &Broker, agent: &str, liveness: &str) {
    wait_for(&format!("{agent} {liveness}"), TIMEOUT, || {
        let out = respawnctl(broker, &["status", agent, "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (json["agents"][0]["liveness"] == liveness).then_some(())
    });
}

fn fleet_status_shows_online_offline_and_lost() {
    let broker = Broker::start();
    let a = TestAgent::start_as("alpha", &processes(&broker));
    let mut b = TestAgent::start_as("bravo", &processes(&broker));
    let c = TestAgent::start_as("charlie", &processes(&broker));
    let pid = a.wait_running("doorbot");
    for agent in ["alpha", "bravo", "charlie"] {
        wait_liveness(&broker, agent, "online");
    }
    b.signal(Signal::SIGTERM);
    b.wait_exit();
    let _dir = c.kill_hard();
    wait_liveness(&broker, "bravo", "offline");
    wait_liveness(&broker, "charlie", "lost");

    let out = respawnctl(&broker, &["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("AGENT/PROCESS"), "{}", out.stdout);
    let row = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in\n{}", out.stdout))
            .to_string()
    };
    assert!(row("alpha ").contains("online"));
    assert!(row("bravo ").contains("offline"));
    assert!(row("charlie ").contains("lost"));
    assert!(row("  doorbot ").contains(&pid.to_string()));

    let json: serde_json::Value =
        serde_json::from_str(&respawnctl(&broker, &["status", "--json"]).stdout).unwrap();
    let agents = json["agents"].as_array().unwrap();
    let liveness: Vec<(&str, &str)> = agents
        .iter()
        .map(|a| {
            (
                a["agent"].as_str().unwrap(),
                a["liveness"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        liveness,
        [
            ("alpha", "online"),
            ("bravo", "offline"),
            ("charlie", "lost")
        ]
    );
    let alpha_doorbot = &agents[0]["processes"][0];
    assert_eq!(alpha_doorbot["name"], "doorbot");
    assert_eq!(alpha_doorbot["pid"], pid);

    let only: serde_json::Value =
        serde_json::from_str(&respawnctl(&broker, &["status", "a*/work*", "--json"]).stdout)
            .unwrap();
    assert_eq!(only["agents"].as_array().unwrap().len(), 1);
    assert_eq!(only["agents"][0]["processes"][0]["name"], "worker");

    // A pattern that names nothing is said on stderr with what was probably meant, and
    // nothing is printed as if it were the fleet.
    for (pattern, said) in [
        ("alpah", "no agent alpah (did you mean alpha?)"),
        ("alpha/xyz", "no process matches alpha/xyz"),
        (
            "alpha/workr",
            "no process matches alpha/workr (did you mean alpha/worker?)",
        ),
    ] {
        let none = respawnctl(&broker, &["status", pattern]);
        assert_eq!(none.code, Some(2), "{none:?}");
        assert!(none.stderr.contains(said), "{none:?}");
        assert_eq!(none.stdout, "", "{none:?}");
    }
}

fn restart_stop_and_start_are_acknowledged() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    let old = agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");

    let out = respawnctl(&broker, &["restart", "alpha/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let new = agent.status("doorbot").pid.unwrap();
    assert_ne!(new, old);
    assert_eq!(
        out.stdout,
        format!("restarted alpha/doorbot pid {old} → {new}\n")
    );

    let out = respawnctl(&broker, &["stop", "alpha/doorbot"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "stopped alpha/doorbot\n")
    );
    assert_eq!(agent.status("doorbot").state, ProcessState::Stopped);

    let out = respawnctl(&broker, &["start", "alpha/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let pid = agent.wait_running("doorbot");
    assert_eq!(out.stdout, format!("started alpha/doorbot pid {pid}\n"));

    let out = respawnctl(&broker, &["logs", "alpha/doorbot", "-n", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.trim_end().ends_with("stdout door ready"),
        "{out:?}"
    );
}

fn globs_reach_every_matching_process_and_a_bare_agent_means_all_of_its_processes() {
    let broker = Broker::start();
    let a = TestAgent::start_as("door-1", &processes(&broker));
    let b = TestAgent::start_as("door-2", &processes(&broker));
    let (a_pid, b_pid) = (a.wait_running("worker"), b.wait_running("worker"));
    wait_liveness(&broker, "door-1", "online");
    wait_liveness(&broker, "door-2", "online");

    let out = respawnctl(&broker, &["restart", "door-*/worker"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(lines[0].starts_with(&format!("restarted door-1/worker pid {a_pid} → ")));
    assert!(lines[1].starts_with(&format!("restarted door-2/worker pid {b_pid} → ")));

    let out = respawnctl(&broker, &["stop", "door-2"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout.lines().count(),
        2,
        "both processes of door-2: {out:?}"
    );
    assert_eq!(b.status("worker").state, ProcessState::Stopped);
    assert_eq!(b.status("doorbot").state, ProcessState::Stopped);
}

fn nothing_matched_offline_and_silent_agents_and_a_dead_broker() {
    let broker = Broker::start();
    let mut agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");

    let out = respawnctl(&broker, &["restart", "alpha/nope"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("no process matches alpha/nope"),
        "{out:?}"
    );
    // An agent this broker has never heard of; on a broker with none, perhaps the wrong one.
    let out = respawnctl(&broker, &["restart", "garage/opener"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("no process matches garage/opener (no agent garage reports to this broker)"),
        "{out:?}"
    );
    let empty = Broker::start();
    let out = respawnctl(&empty, &["restart", "alpha/doorbot"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("no process matches alpha/doorbot (no agent reports to this broker; is it the one they use (--broker)?)"),
        "{out:?}"
    );
    let out = respawnctl(&empty, &["status"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "no agents found\n")
    );
    let said = format!(
        "no agent reports to {} under respawn/v1/; is it the broker they use",
        empty.url()
    );
    assert!(out.stderr.contains(&said), "{out:?}");
    for command in ["restart", "logs"] {
        let out = respawnctl(&broker, &[command, "alpha/dorbot"]);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(
            out.stderr
                .contains("no process matches alpha/dorbot (did you mean alpha/doorbot?)"),
            "{command}: {out:?}"
        );
    }

    // An agent that claims to be online but never answers.
    let ghost = Observer::connect(&broker, &[]);
    ghost.publish_retained(
        "respawn/v1/ghost/state",
        br#"{"v":1,"agent":"ghost","state":"online","processes":["doorbot"]}"#.to_vec(),
        None,
    );
    wait_liveness(&broker, "ghost", "online");
    let out = respawnctl(&broker, &["restart", "ghost/doorbot", "--timeout", "1s"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "timed out ghost/doorbot: no answer within 1s\n");

    agent.signal(Signal::SIGTERM);
    agent.wait_exit();
    wait_liveness(&broker, "alpha", "offline");
    let out = respawnctl(&broker, &["restart", "alpha/doorbot", "--timeout", "1h"]);
    assert_eq!(out.code, Some(2), "said at once, not waited for: {out:?}");
    assert_eq!(out.stdout, "not sent alpha/doorbot: the agent is offline\n");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = Broker::attach(port);
    let out = respawnctl(&dead, &["status"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot reach the broker at mqtt://127.0.0.1:"),
        "{out:?}"
    );
}

fn a_command_the_agent_rejects_exits_2_and_an_unfinished_one_3() {
    let broker = Broker::start();
    let agent = TestAgent::start_as(
        "alpha",
        &(mqtt_section(&broker)
            + r#"
[[process]]
name = "slow"
command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"]
stop_timeout = "1h"
"#),
    );
    agent.wait_running("slow");
    wait_liveness(&broker, "alpha", "online");
    let out = respawnctl(&broker, &["restart", "alpha/slow", "--timeout", "1s"]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(
        out.stdout,
        "timed out alpha/slow: accepted, but no result within 1s (it may still be under way, as a stop can take the process's stop_timeout: see respawnctl status; --timeout waits longer)\n"
    );
    let out = respawnctl(&broker, &["stop", "alpha/slow"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stdout.starts_with("rejected alpha/slow: busy: "),
        "{out:?}"
    );
}

/// A reply counts only from the agent the command went to: another agent that saw the
/// command go by (or anyone who may publish a reply topic) cannot answer it in its name.
fn a_reply_on_another_agents_topic_is_not_the_outcome() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");
    let commands = Observer::connect(&broker, &["respawn/v1/alpha/cmd"]);
    // Frozen, the agent answers nothing; its retained state still says online.
    agent.signal(Signal::SIGSTOP);
    let forger = Observer::connect(&broker, &[]);
    let out = std::thread::scope(|scope| {
        let ctl =
            scope.spawn(|| respawnctl(&broker, &["restart", "alpha/doorbot", "--timeout", "3s"]));
        let body: serde_json::Value = commands.wait("the command", |messages| {
            let envelope = messages.first()?.json();
            serde_json::from_str(envelope["body"].as_str()?).ok()
        });
        let (cmd_id, requester) = (&body["cmd_id"], body["requester"].as_str().unwrap());
        let reply = serde_json::json!({
            "v": 1, "cmd_id": cmd_id, "agent": "alpha", "status": "succeeded",
            "at": "2026-12-05T00:00:00Z", "old_pid": 1, "new_pid": 2
        });
        forger.publish(
            &format!("respawn/v1/beta/reply/{requester}"),
            reply.to_string().into_bytes(),
            None,
        );
        ctl.join().unwrap()
    });
    agent.signal(Signal::SIGCONT);
    assert_eq!(out.code, Some(3), "timed out, not succeeded: {out:?}");
    assert!(out.stdout.starts_with("timed out alpha/doorbot"), "{out:?}");
}

fn a_process_the_agent_no_longer_has_is_not_targeted() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");
    // A process state the broker still holds, of a process the agent no longer has.
    let stale = Observer::connect(&broker, &[]);
    stale.publish_retained(
        "respawn/v1/alpha/proc/retired",
        br#"{"v":1,"agent":"alpha","name":"retired","state":"stopped","since":"2026-01-01T00:00:00Z","restarts":0}"#.to_vec(),
        None,
    );
    wait_for("the retired process in the snapshot", TIMEOUT, || {
        (!retained(&broker, "respawn/v1/alpha/proc/retired").is_empty()).then_some(())
    });
    // The birth lists the configured processes; only those are targets.
    let out = respawnctl(&broker, &["stop", "alpha/retired"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no process matches"), "{out:?}");
    assert!(!respawnctl(&broker, &["status"]).stdout.contains("retired"));
}

fn events_are_tailed_as_lines_and_as_json() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");
    for json in [false, true] {
        let mut child = Command::new(respawnctl_binary())
            .args(["--broker", &broker.url(), "events", "alpha/*"])
            .args(json.then_some("--json"))
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // The tail subscribes before it prints anything; a command round trip shows it is
        // listening: its audit event must then appear.
        wait_for("respawnctl events to subscribe", TIMEOUT, || {
            let out = respawnctl(&broker, &["restart", "alpha/worker"]);
            assert_eq!(out.code, Some(0));
            let seen = lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("command") || l.contains("\"command\""));
            seen.then_some(())
        });
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        let lines = lines.lock().unwrap().clone();
        if json {
            let events: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert!(events.iter().all(|e| e["agent"] == "alpha" && e["v"] == 1));
            assert!(events
                .iter()
                .any(|e| e["kind"] == "started" && e["process"] == "worker"));
        } else {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(" alpha/worker started pid ")),
                "{lines:?}"
            );
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains(" alpha/worker command restart from ctl-")),
                "{lines:?}"
            );
        }
    }
}

/// Thousands of retained messages at once: the broker hands the whole snapshot to one
/// subscriber, and `status` shows every agent and process.
fn status_of_a_large_fleet_is_complete() {
    let broker = Broker::start();
    let (agents, processes) = (400, 10);
    respawn_tests::sim::publish_fleet("127.0.0.1", broker.port(), agents, processes);
    let out = respawnctl(&broker, &["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let shown = json["agents"].as_array().unwrap();
    assert_eq!(shown.len(), agents);
    let shown_processes: usize = shown
        .iter()
        .map(|a| a["processes"].as_array().unwrap().len())
        .sum();
    assert_eq!(shown_processes, agents * processes);
}

/// A broker that lacks a process state its agent's birth names, as one that dropped it for a
/// slow reader would: `status` shows what it has, says what is missing, and exits 2 — never a
/// partial view that looks whole.
fn a_view_missing_a_process_its_birth_names_says_so() {
    let broker = Broker::start();
    let publisher = Observer::connect(&broker, &[]);
    let birth = serde_json::json!({
        "v": 1, "agent": "partial-pi", "state": "online", "processes": ["doorbot", "ghost"],
        "since": "2026-11-25T00:00:00Z",
    });
    let doorbot = serde_json::json!({
        "v": 1, "agent": "partial-pi", "name": "doorbot", "state": "running", "pid": 7,
        "since": "2026-11-25T00:00:00Z", "restarts": 0,
    });
    let state = "respawn/v1/partial-pi/state";
    publisher.publish_retained(state, birth.to_string().into_bytes(), None);
    let process = "respawn/v1/partial-pi/proc/doorbot";
    publisher.publish_retained(process, doorbot.to_string().into_bytes(), None);
    wait_for("both retained", TIMEOUT, || {
        (retained(&broker, "respawn/v1/partial-pi/#").len() == 2).then_some(())
    });
    for args in [&["status"][..], &["status", "--json"][..]] {
        let out = respawnctl(&broker, args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.contains("doorbot"), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("incomplete") && out.stderr.contains("partial-pi/ghost"),
            "{args:?}: {out:?}"
        );
    }
}

/// Each error says what failed: a bad target is a usage error (exit 1), an unreadable signing
/// key is not a TLS problem, and an alerter that cannot read its state file is not a broker
/// that cannot be sent to.
#[test]
fn errors_say_what_failed() {
    let broker = Broker::start();
    let out = respawnctl(&broker, &["restart", "door pi/x"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("is not a target"), "{out:?}");

    let agent = TestAgent::start(&processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "test", "online");
    let out = respawnctl(
        &broker,
        &["--key", "/nonexistent/alice.key", "restart", "test/doorbot"],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("cannot read the signing key /nonexistent/alice.key: "),
        "{out:?}"
    );
    assert!(!out.stderr.contains("TLS"), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.toml");
    std::fs::write(
        &alerts,
        format!(
            "[alerts]\nstate_file = \"{}\"\n\n[[target]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = respawnctl(
        &broker,
        &["alerts", "--config", &alerts.display().to_string()],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("the alerter stopped: "), "{out:?}");
    assert!(!out.stderr.contains("cannot send to the broker"), "{out:?}");

    // A --config that names no file, or one the service would refuse, is an error also
    // where no broker is needed.
    let ctl = dir.path().join("respawnctl.toml");
    std::fs::write(&ctl, "brokr = \"mqtt://127.0.0.1\"\n").unwrap();
    let alerts = alerts.display().to_string();
    for (config, said) in [
        (
            "/nonexistent/respawnctl.toml".to_owned(),
            "cannot read /nonexistent/respawnctl.toml",
        ),
        (
            ctl.display().to_string(),
            "unknown key `brokr` (did you mean `broker`?)",
        ),
    ] {
        let args = ["--config", &config, "alerts", "test", "--config", &alerts];
        let out = respawnctl(&broker, &args);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(out.stderr.contains(said), "{out:?}");
    }
}

/// The broker keeps the tail's session while its connection is down: what an agent said
/// meanwhile reaches it after. (Here the broker restarts, keeping sessions — the embedded one
/// from its state directory, as after a Pi's power cut —, and the tail is held back until the
/// agent, back first, has said it all.)
fn events_sent_while_the_tail_was_cut_off_reach_it_after() {
    let mut broker = Broker::keeping_sessions();
    let watcher = Observer::connect_persistent(&broker, "watcher", &["respawn/v1/alpha/event"]);
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    let before = agent.wait_running("worker");
    wait_liveness(&broker, "alpha", "online");
    let tail = RunningCtl::start(&broker, &["events", "--json", "alpha/*"]);
    let said = |kind: &str, pid: u32| {
        tail.lines().iter().any(|(_, line)| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|e| e["kind"] == kind && e["pid"] == pid)
        })
    };
    // Listening once a command's audit shows.
    wait_for("the tail to subscribe", TIMEOUT, || {
        respawnctl(&broker, &["restart", "alpha/doorbot"]);
        let lines = tail.lines();
        lines
            .iter()
            .any(|(_, l)| l.contains("\"command\""))
            .then_some(())
    });

    broker.stop();
    let tail_pid = nix::unistd::Pid::from_raw(tail.pid() as i32);
    nix::sys::signal::kill(tail_pid, Signal::SIGSTOP).unwrap();
    agent.request(Request::Restart {
        process: "worker".into(),
    });
    let after = agent.wait_restarted("worker", before);
    broker.resume();
    watcher.wait_connected();
    watcher.wait_json::<serde_json::Value>("the agent's spool delivered", |e| {
        e["kind"] == "started" && e["pid"] == after
    });
    nix::sys::signal::kill(tail_pid, Signal::SIGCONT).unwrap();
    wait_for_or(
        "the events sent while the tail was away",
        TIMEOUT,
        || (said("exited", before) && said("started", after)).then_some(()),
        || format!("{:?}\n{}", tail.lines(), tail.stderr()),
    );
}

/// `respawnctl events | grep -m1 crashed`: once its reader is gone, the tail ends, with 0.
fn a_tail_whose_reader_went_away_ends() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("worker");
    wait_liveness(&broker, "alpha", "online");
    let mut child = Command::new(respawnctl_binary())
        .args(["--broker", &broker.url(), "events", "alpha/*"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    // Reads one line, then closes the pipe, as `head -1` does.
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let first = wait_for("the tail's first line", TIMEOUT, || {
        let out = respawnctl(&broker, &["restart", "alpha/worker"]);
        assert_eq!(out.code, Some(0));
        rx.try_recv().ok()
    });
    assert!(first.contains("alpha/worker"), "{first}");
    reader.join().unwrap();
    let status = wait_for("the tail to end", TIMEOUT, || {
        respawnctl(&broker, &["restart", "alpha/worker"]);
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}

/// A tail of a pattern that matches nothing says so, with what was meant, and goes on (an
/// agent yet to come is tailed too): a typo waited in silence.
fn a_tail_of_nothing_says_so_and_goes_on() {
    let broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("worker");
    wait_liveness(&broker, "alpha", "online");
    let typo = RunningCtl::start(&broker, &["events", "alpah/worker"]);
    wait_for_or(
        "the tail to say that nothing matches",
        TIMEOUT,
        || {
            let said = typo.stderr();
            (said.contains("nothing matches alpah/worker now") && said.contains("alpha/worker"))
                .then_some(())
        },
        || typo.stderr(),
    );
    let right = RunningCtl::start(&broker, &["events", "alpha/worker"]);
    wait_for(
        "the tail of alpha/worker to show its restart",
        TIMEOUT,
        || {
            respawnctl(&broker, &["restart", "alpha/worker"]);
            (!right.lines().is_empty()).then_some(())
        },
    );
    assert!(
        !right.stderr().contains("nothing matches"),
        "{}",
        right.stderr()
    );
    assert_eq!(typo.interrupt(), Some(0), "still tailing");
}

/// Ctrl-C ends a tail, a follow and the hub also while the broker is away: it was ignored
/// then, and lost for good (each wait made a listener of its own, and none was listening
/// while they reconnected).
fn ctrl_c_ends_tails_and_the_hub_while_the_broker_is_away() {
    let mut broker = Broker::start();
    let agent = TestAgent::start_as("alpha", &processes(&broker));
    agent.wait_running("doorbot");
    wait_liveness(&broker, "alpha", "online");
    let dir = tempfile::tempdir().unwrap();
    let serve = dir.path().join("serve.toml");
    let port = respawn_tests::broker::free_port();
    std::fs::write(&serve, format!("listen = \"127.0.0.1:{port}\"\n")).unwrap();
    let serve = serve.display().to_string();
    let hub = RunningCtl::start(&broker, &["serve", "--config", &serve]);
    let follow = RunningCtl::start(&broker, &["logs", "-f", "alpha/doorbot"]);
    follow.wait_lines(1);
    let events = RunningCtl::start(&broker, &["events", "--json", "alpha/*"]);
    wait_for("the tail to subscribe", TIMEOUT, || {
        respawnctl(&broker, &["restart", "alpha/worker"]);
        let lines = events.lines();
        lines
            .iter()
            .any(|(_, l)| l.contains("\"command\""))
            .then_some(())
    });
    wait_for("the hub to serve", TIMEOUT, || {
        hub.stderr()
            .contains("connected to the broker")
            .then_some(())
    });

    broker.stop();
    for (ctl, lost) in [
        (&events, "reconnecting"),
        (&follow, "reconnecting"),
        (&hub, "lost the broker"),
    ] {
        wait_for_or(
            &format!("respawnctl to say {lost:?}"),
            TIMEOUT,
            || ctl.stderr().contains(lost).then_some(()),
            || ctl.stderr(),
        );
    }
    for (what, ctl) in [("events", events), ("logs -f", follow), ("serve", hub)] {
        assert_eq!(ctl.interrupt(), Some(0), "respawnctl {what}");
    }
}

respawn_tests::on_both_brokers!(
    a_tail_whose_reader_went_away_ends,
    ctrl_c_ends_tails_and_the_hub_while_the_broker_is_away,
    a_tail_of_nothing_says_so_and_goes_on,
    status_of_a_large_fleet_is_complete,
    a_view_missing_a_process_its_birth_names_says_so,
    fleet_status_shows_online_offline_and_lost,
    restart_stop_and_start_are_acknowledged,
    globs_reach_every_matching_process_and_a_bare_agent_means_all_of_its_processes,
    nothing_matched_offline_and_silent_agents_and_a_dead_broker,
    a_command_the_agent_rejects_exits_2_and_an_unfinished_one_3,
    a_process_the_agent_no_longer_has_is_not_targeted,
    a_reply_on_another_agents_topic_is_not_the_outcome,
    events_are_tailed_as_lines_and_as_json,
    events_sent_while_the_tail_was_cut_off_reach_it_after,
);

/// `-vv` adds the MQTT client's own log, as its help says; `-v` keeps to respawnctl's.
#[test]
fn very_verbose_adds_the_mqtt_clients_log() {
    let broker = Broker::start();
    let very = respawnctl(&broker, &["-vv", "status"]);
    assert!(very.stderr.contains("rumqttc"), "{very:?}");
    let verbose = respawnctl(&broker, &["-v", "status"]);
    assert!(
        verbose.stderr.contains("respawn_controller") && !verbose.stderr.contains("rumqttc"),
        "{verbose:?}"
    );
}

#[test]
fn logs_of_an_agent_without_a_process_is_a_usage_error_before_any_connection() {
    // Nothing listens at this broker: the error comes before any attempt to connect.
    let out = Command::new(respawnctl_binary())
        .args(["--broker", "mqtt://127.0.0.1:9", "logs", "door-pi"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .expect("respawnctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("name one process: door-pi/PROCESS"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach the broker"), "{stderr}");
}

/// A one-shot command ends its connection with a DISCONNECT the broker reads. A client that
/// closes its socket with the broker's last packets unread (the acknowledgements of its
/// unsubscriptions) resets the connection, and the reset can overtake the DISCONNECT: the
/// broker then logs the connection as lost ("closed its connection", "Broken pipe") and would
/// publish a will.
#[test]
fn one_shot_commands_end_their_connection_with_a_disconnect_the_broker_reads() {
    let broker = Broker::mosquitto("log_type all\n");
    let agent = TestAgent::start(&processes(&broker));
    agent.wait_running("worker");
    let commands: Vec<&[&str]> = [&["status"][..], &["logs", "test/doorbot", "-n", "1"][..]]
        .into_iter()
        .cycle()
        .take(30)
        .collect();
    for args in &commands {
        let out = respawnctl(&broker, args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
    }
    let log = broker.dir().join("mosquitto.log");
    let ended = wait_for("every command's connection to end", TIMEOUT, || {
        let text = std::fs::read_to_string(&log).ok()?;
        let ended: Vec<String> = (text.lines())
            .filter(|l| l.contains("Client respawnctl-"))
            .filter(|l| l.contains(" disconnected") || l.contains("closed its connection"))
            .map(str::to_owned)
            .collect();
        (ended.len() == commands.len()).then_some(ended)
    });
    let unclean: Vec<&String> = (ended.iter())
        .filter(|l| !l.ends_with(" disconnected."))
        .collect();
    assert!(
        unclean.is_empty(),
        "{} of {} ended uncleanly: {unclean:#?}",
        unclean.len(),
        commands.len()
    );
}

/// `events` shows no event of a process no agent can be configured with (`evil/../../x`): the
/// alerter and the hub pass such an event over, and so does the tail (found by a
/// hostile-input review).
#[test]
fn events_of_a_process_no_agent_can_have_are_not_shown() {
    let broker = Broker::start();
    let tail = RunningCtl::start(&broker, &["events", "--json"]);
    let publisher = Observer::connect(&broker, &[]);
    let event = |seq: u64, process: &str| {
        serde_json::json!({
            "v": 1, "id": format!("e{seq}"), "seq": seq, "agent": "forger",
            "at": "2026-12-07T12:00:00Z", "process": process,
            "kind": "started", "pid": 7, "restarts": 0,
        })
        .to_string()
        .into_bytes()
    };
    // Until the tail listens: each round a forged event, then one of a valid name after it.
    let mut seq = 0;
    wait_for("the tail to show an event of a valid name", TIMEOUT, || {
        seq += 2;
        publisher.publish("respawn/v1/forger/event", event(seq, "evil/../../x"), None);
        publisher.publish("respawn/v1/forger/event", event(seq + 1, "web"), None);
        let lines = tail.lines();
        lines
            .iter()
            .any(|(_, l)| l.contains("\"web\""))
            .then_some(())
    });
    // Listening now: a forged event, and one after it, which comes once the other has.
    publisher.publish("respawn/v1/forger/event", event(1000, "evil/../../x"), None);
    publisher.publish("respawn/v1/forger/event", event(1001, "db"), None);
    wait_for("the event after the forged one", TIMEOUT, || {
        let lines = tail.lines();
        lines
            .iter()
            .any(|(_, l)| l.contains("\"db\""))
            .then_some(())
    });
    let shown: Vec<String> = tail.lines().into_iter().map(|(_, l)| l).collect();
    assert!(!shown.iter().any(|l| l.contains("evil/")), "{shown:#?}");
}
