//! Commands over MQTT: every command, acknowledgement before outcome, correlation data echoed,
//! repeats answered without a second run, and every rejection reason — plus garbage on the
//! command topic, which must never hurt the agent.

use respawn_common::messages::{CommandReply, Reason, ReplyStatus};
use respawn_common::status::ProcessState;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{Commander, Observer};
use respawn_tests::{mqtt_section, wait_for, RunningCtl, TestAgent, TIMEOUT};

const PROCESSES: &str = r#"
[[process]]
name = "doorbot"
command = ["sh", "-c", "echo door ready; exec sleep 1000"]

[[process]]
name = "slow"
command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"]
stop_timeout = "1h"
"#;

fn setup() -> (Broker, TestAgent, Commander) {
    let broker = Broker::start();
    let agent = TestAgent::start(&(mqtt_section(&broker) + PROCESSES));
    agent.wait_running("doorbot");
    let commander = Commander::new(&broker, "test");
    wait_online(&broker);
    (broker, agent, commander)
}

/// Commands are only subscribed once the agent is connected; its birth says it is.
fn wait_online(broker: &Broker) {
    respawn_tests::wait_for("the agent online", respawn_tests::TIMEOUT, || {
        respawn_tests::mqtt::retained(broker, "respawn/v1/test/state")
            .first()
            .filter(|m| m.json()["state"] == "online")
            .map(|_| ())
    });
}

fn statuses(replies: &[CommandReply]) -> Vec<ReplyStatus> {
    replies.iter().map(|r| r.status).collect()
}

fn rejection(replies: &[CommandReply]) -> Reason {
    assert_eq!(statuses(replies), [ReplyStatus::Rejected], "{replies:#?}");
    replies[0].reason.expect("a reason")
}

fn restart_is_accepted_then_succeeds_with_the_old_and_new_pid() {
    let (_broker, agent, commander) = setup();
    let old = agent.wait_running("doorbot");
    let body = commander.body("restart", Some("doorbot"));
    let replies = commander.send(&body);
    assert_eq!(
        statuses(&replies),
        [ReplyStatus::Accepted, ReplyStatus::Succeeded]
    );
    let done = &replies[1];
    assert_eq!(done.old_pid, Some(old));
    let new = done.new_pid.expect("the new pid");
    assert_ne!(new, old);
    assert_eq!(agent.status("doorbot").pid, Some(new));
    let cmd_id = body["cmd_id"].as_str().unwrap();
    assert!(commander
        .all_replies()
        .iter()
        .all(|(r, correlation)| r.cmd_id != cmd_id
            || correlation.as_deref() == Some(cmd_id.as_bytes())));
}

fn stop_start_status_and_logs() {
    let (_broker, agent, commander) = setup();
    let replies = commander.send(&commander.body("stop", Some("doorbot")));
    assert_eq!(
        statuses(&replies),
        [ReplyStatus::Accepted, ReplyStatus::Succeeded]
    );
    assert_eq!(agent.status("doorbot").state, ProcessState::Stopped);
    assert!(agent.status("doorbot").manually_stopped);

    let replies = commander.send(&commander.body("start", Some("doorbot")));
    assert_eq!(
        statuses(&replies),
        [ReplyStatus::Accepted, ReplyStatus::Succeeded]
    );
    assert_eq!(replies[1].new_pid, agent.status("doorbot").pid);

    let replies = commander.send(&commander.body("status", None));
    let processes = replies[1].processes.as_ref().expect("processes");
    assert_eq!(processes.len(), 2);
    assert!(processes
        .iter()
        .any(|p| p.name == "doorbot" && p.state == ProcessState::Running));

    let mut body = commander.body("logs", Some("doorbot"));
    body["lines"] = 1.into();
    let lines = respawn_tests::wait_for("the log line", respawn_tests::TIMEOUT, || {
        let replies = commander.send(&{
            let mut b = body.clone();
            b["cmd_id"] = uuid::Uuid::new_v4().to_string().into();
            b
        });
        replies[1].lines.clone().filter(|l| !l.is_empty())
    });
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].text, "door ready");
}

fn a_repeated_command_is_rejected_as_replayed_and_never_runs_twice() {
    let (_broker, agent, commander) = setup();
    let body = commander.body("restart", Some("doorbot"));
    let first = commander.send(&body);
    let pid = agent.status("doorbot").pid;
    let cmd_id = body["cmd_id"].as_str().unwrap();
    let envelope = serde_json::json!({"v": 1, "body": body.to_string()});
    commander.send_raw(envelope.to_string().into_bytes(), b"again");
    let all = commander.wait_final(cmd_id, 2);
    assert_eq!(
        all.len(),
        3,
        "accepted, succeeded, and the repeat's rejection"
    );
    assert_eq!(
        (all[2].status, all[2].reason),
        (ReplyStatus::Rejected, Some(Reason::Replayed))
    );
    assert_eq!(all[2].new_pid, first[1].new_pid, "with the earlier outcome");
    assert!(all[2]
        .message
        .as_deref()
        .unwrap()
        .contains("it succeeded: restarted doorbot"));
    assert_eq!(agent.status("doorbot").pid, pid, "not restarted again");
    let correlations: Vec<Option<Vec<u8>>> = commander
        .all_replies()
        .into_iter()
        .filter(|(r, _)| r.cmd_id == cmd_id)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        correlations.last().unwrap().as_deref(),
        Some(&b"again"[..]),
        "the repeat echoes its own correlation data"
    );

    // Another requester reusing the id is a replay.
    let other = Commander::new(&_broker, "test");
    let mut stolen = body.clone();
    stolen["requester"] = other.requester().into();
    assert_eq!(rejection(&other.send(&stolen)), Reason::Replayed);
    assert_eq!(agent.status("doorbot").pid, pid);
}

fn every_rejection_reason() {
    let (_broker, _agent, commander) = setup();
    assert_eq!(
        rejection(&commander.send(&commander.body("restart", Some("nope")))),
        Reason::UnknownProcess
    );
    assert_eq!(
        rejection(&commander.send(&commander.body("reboot", Some("doorbot")))),
        Reason::UnknownCommand
    );
    assert_eq!(
        rejection(&commander.send(&commander.body("stop", None))),
        Reason::Malformed
    );

    let mut other = commander.body("stop", Some("doorbot"));
    other["agent"] = "garage-pi".into();
    assert_eq!(rejection(&commander.send(&other)), Reason::WrongAgent);

    let mut expired = commander.body("stop", Some("doorbot"));
    expired["expires_at"] = "2020-01-01T00:00:00Z".into();
    assert_eq!(rejection(&commander.send(&expired)), Reason::Expired);

    let mut wrong_type = commander.body("logs", Some("doorbot"));
    wrong_type["lines"] = "lots".into();
    assert_eq!(rejection(&commander.send(&wrong_type)), Reason::Malformed);
}

fn a_second_command_on_a_busy_process_is_rejected() {
    let (_broker, agent, commander) = setup();
    agent.wait_running("slow");
    let first = commander.body("restart", Some("slow"));
    let cmd_id = first["cmd_id"].as_str().unwrap().to_owned();
    let envelope = serde_json::json!({"v": 1, "body": first.to_string()});
    commander.send_raw(envelope.to_string().into_bytes(), b"1");
    agent.wait_until("slow", "stopping", |s| s.state == ProcessState::Stopping);
    let second = commander.send(&commander.body("stop", Some("slow")));
    assert_eq!(rejection(&second), Reason::Busy);
    let pending: Vec<ReplyStatus> = commander
        .all_replies()
        .iter()
        .filter(|(r, _)| r.cmd_id == cmd_id)
        .map(|(r, _)| r.status)
        .collect();
    assert_eq!(
        pending,
        [ReplyStatus::Accepted],
        "the first is still under way"
    );
}

fn garbage_on_the_command_topic_never_hurts_the_agent() {
    let (broker, agent, commander) = setup();
    let pid = agent.pid();
    let session = respawn_tests::mqtt::retained(&broker, "respawn/v1/test/state")[0].json()
        ["session"]
        .clone();
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        vec![0xff, 0x00, 0xfe],
        b"{\"v\":1,\"body\":\"{\\\"cmd_id\\\":5}\"}".to_vec(),
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".repeat(1000),
        vec![b'x'; 1024 * 1024],
    ];
    // From a client of its own: a broker may disconnect whoever sends an oversized packet.
    let vandal = Commander::new(&broker, "test");
    for payload in garbage {
        vandal.send_raw(payload, b"junk");
    }
    // A readable id in a malformed body is answered as malformed.
    let mut bad = commander.body("stop", Some("doorbot"));
    bad["process"] = 42.into();
    assert_eq!(rejection(&commander.send(&bad)), Reason::Malformed);
    // The agent is alive, still on its first connection, and still obeys.
    assert!(respawn_tests::alive(pid));
    let replies = commander.send(&commander.body("status", None));
    assert_eq!(
        statuses(&replies),
        [ReplyStatus::Accepted, ReplyStatus::Succeeded]
    );
    let state = respawn_tests::mqtt::retained(&broker, "respawn/v1/test/state");
    assert_eq!(state[0].json()["state"], "online");
    assert_eq!(state[0].json()["session"], session, "never reconnected");
    let log = agent.log();
    assert!(!log.contains("lost the connection") && !log.contains("broker unreachable"));
}

fn a_retained_command_is_never_run() {
    let broker = Broker::start();
    let doorbot_only = mqtt_section(&broker)
        + "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";
    let agent = TestAgent::start(&doorbot_only);
    let commander = Commander::new(&broker, "test");
    let pid = agent.wait_running("doorbot");
    wait_online(&broker);
    // Planted while the agent is down: a retained command would reach it at its next
    // connection, long after it was sent.
    let dir = agent.kill_hard();
    let body = commander.body("restart", Some("doorbot"));
    let envelope = serde_json::json!({"v": 1, "body": body.to_string()});
    let planter = Observer::connect(&broker, &[]);
    planter.publish_retained(
        "respawn/v1/test/cmd",
        envelope.to_string().into_bytes(),
        None,
    );
    wait_for("the planted command", respawn_tests::TIMEOUT, || {
        (!respawn_tests::mqtt::retained(&broker, "respawn/v1/test/cmd").is_empty()).then_some(())
    });
    let agent = TestAgent::start_in(dir, &doorbot_only);
    let new_pid = agent.wait_running("doorbot");
    wait_online(&broker);
    let replies = commander.send(&commander.body("status", None));
    assert_eq!(
        statuses(&replies),
        [ReplyStatus::Accepted, ReplyStatus::Succeeded]
    );
    assert_eq!(agent.status("doorbot").restarts, 0);
    assert_eq!(agent.status("doorbot").pid, Some(new_pid));
    assert_ne!(new_pid, pid);
    assert!(commander
        .all_replies()
        .iter()
        .all(|(r, _)| r.cmd_id != body["cmd_id"]));

    // Published retained while the agent listens: the broker hands it on at once (retain
    // flag as published), and the agent ignores it and counts it in the next audit.
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let live = commander.body("restart", Some("doorbot"));
    let envelope = serde_json::json!({"v": 1, "body": live.to_string()});
    planter.publish_retained(
        "respawn/v1/test/cmd",
        envelope.to_string().into_bytes(),
        None,
    );
    agent.wait_for_log("ignoring a retained command");
    let status = commander.body("status", None);
    commander.send(&status);
    let unaudited = events.wait("the status command's audit", |messages| {
        messages.iter().find_map(|m| {
            let event: respawn_common::messages::Event = serde_json::from_slice(&m.payload).ok()?;
            match event.kind {
                respawn_common::messages::EventKind::Command {
                    cmd_id, unaudited, ..
                } if cmd_id == status["cmd_id"] => Some(unaudited),
                _ => None,
            }
        })
    });
    assert_eq!(unaudited.get("retained"), Some(&1), "{unaudited:?}");
    assert_eq!(agent.status("doorbot").pid, Some(new_pid), "not restarted");
}

/// `lines` of a `logs` command: 50 when absent, none for 0, and at most 1000.
fn logs_returns_as_many_lines_as_asked_within_its_bounds() {
    let broker = Broker::start();
    let agent = TestAgent::start(
        &(mqtt_section(&broker)
            + "[[process]]\nname = \"chatty\"\ncommand = [\"sh\", \"-c\", \"seq 1500; exec sleep 1000\"]\n"),
    );
    agent.wait_running("chatty");
    wait_online(&broker);
    let commander = Commander::new(&broker, "test");
    let lines = |wanted: Option<u64>| {
        let mut body = commander.body("logs", Some("chatty"));
        if let Some(n) = wanted {
            body["lines"] = n.into();
        }
        let replies = commander.send(&body);
        let last = replies.last().unwrap();
        assert_eq!(last.status, ReplyStatus::Succeeded, "{last:?}");
        last.lines.clone().unwrap()
    };
    wait_for("all 1500 lines in the ring", respawn_tests::TIMEOUT, || {
        (lines(Some(1)).last()?.text == "1500").then_some(())
    });
    let default = lines(None);
    assert_eq!(default.len(), 50);
    assert_eq!(default[0].text, "1451");
    assert!(lines(Some(0)).is_empty());
    let most = lines(Some(5000));
    assert_eq!(most.len(), 1000);
    assert_eq!(most[0].text, "501");
}

fn a_hostile_command_cannot_block_events() {
    let (broker, agent, commander) = setup();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let mut huge = commander.body("restart", Some(&"a".repeat(130_000)));
    huge["cmd_id"] = "x".repeat(100).into();
    let envelope = serde_json::json!({"v": 1, "body": huge.to_string()});
    commander.send_raw(envelope.to_string().into_bytes(), b"h");
    assert_eq!(
        rejection(&commander.wait_final(&"x".repeat(100), 1)),
        Reason::Malformed
    );
    // Events still flow: a restart is reported.
    let replies = commander.send(&commander.body("restart", Some("doorbot")));
    let new_pid = replies[1].new_pid.unwrap();
    events.wait("the restart's started event", |m| {
        m.iter()
            .filter_map(|m| serde_json::from_slice::<respawn_common::messages::Event>(&m.payload).ok())
            .find(|e| matches!(e.kind, respawn_common::messages::EventKind::Started { pid, .. } if pid == new_pid))
    });
    assert!(respawn_tests::alive(agent.pid()));
}

fn every_command_outcome_is_an_audit_event() {
    let (broker, _agent, commander) = setup();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let ok = commander.body("restart", Some("doorbot"));
    commander.send(&ok);
    let bad = commander.body("restart", Some("nope"));
    commander.send(&bad);
    let audits = events.wait("two audit events", |m| {
        let audits: Vec<serde_json::Value> = m
            .iter()
            .map(|m| m.json())
            .filter(|e| e["kind"] == "command")
            .collect();
        (audits.len() >= 2).then_some(audits)
    });
    assert_eq!(audits[0]["cmd_id"], ok["cmd_id"]);
    assert_eq!(audits[0]["outcome"], "succeeded");
    assert_eq!(audits[0]["process"], "doorbot");
    assert_eq!(audits[0]["requester"], commander.requester());
    assert_eq!(audits[1]["cmd_id"], bad["cmd_id"]);
    assert_eq!(audits[1]["outcome"], "rejected");
    assert_eq!(audits[1]["reason"], "unknown_process");
}

respawn_tests::on_both_brokers!(
    restart_is_accepted_then_succeeds_with_the_old_and_new_pid,
    stop_start_status_and_logs,
    a_repeated_command_is_rejected_as_replayed_and_never_runs_twice,
    every_rejection_reason,
    a_second_command_on_a_busy_process_is_rejected,
    garbage_on_the_command_topic_never_hurts_the_agent,
    a_retained_command_is_never_run,
    a_hostile_command_cannot_block_events,
    every_command_outcome_is_an_audit_event,
    logs_returns_as_many_lines_as_asked_within_its_bounds,
);

/// Ctrl-C while `respawnctl stop` waits ends the wait, not the stop: said so, rather than
/// ending without a word as if it were undone (found by a new-user run), and respawnctl dies
/// by SIGINT, so that a shell script stops there. Before anything is sent, it says that
/// nothing was asked.
#[test]
fn an_interrupted_respawnctl_says_whether_its_command_goes_on() {
    let (broker, agent, _commander) = setup();
    agent.wait_running("slow");
    let stopping = RunningCtl::start(&broker, &["stop", "test/slow"]);
    agent.wait_until("slow", "its stop under way", |s| {
        s.state == ProcessState::Stopping
    });
    ends_by_ctrl_c_saying(stopping, "respawnctl: interrupted: the stop goes on in the agents it reached (`respawnctl status` shows how it ends)");
    assert_eq!(agent.status("slow").state, ProcessState::Stopping);

    // A broker that takes the connection and never answers: nothing is sent.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!("mqtt://{}", silent.local_addr().unwrap());
    let connecting = RunningCtl::start_at(&url, &["restart", "test/slow"]);
    let _held = wait_for("respawnctl to connect", TIMEOUT, || silent.accept().ok());
    ends_by_ctrl_c_saying(
        connecting,
        "respawnctl: interrupted before the restart was sent: nothing was asked",
    );
}

/// Ctrl-C to `ctl`: it says `said` and dies by SIGINT, as Ctrl-C ends a program.
fn ends_by_ctrl_c_saying(mut ctl: RunningCtl, said: &str) {
    use std::os::unix::process::ExitStatusExt;
    let status = ctl.interrupt_status();
    let stderr = ctl.stderr();
    let sigint = nix::sys::signal::Signal::SIGINT as i32;
    assert_eq!(status.signal(), Some(sigint), "{status:?}: {stderr}");
    assert!(stderr.contains(said), "{stderr}");
}
