//! The live fleet simulator is only worth its numbers if respawnctl cannot tell its agents from
//! real ones: each simulated agent shows in `status`, takes a signed restart (and refuses an
//! unsigned one) with the agent's own checks and replies, and a simulator killed at once is a
//! site outage: the broker fires every agent's Last Will.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use respawn_common::signing::SigningKey;
use respawn_tests::broker::Broker;
use respawn_tests::{respawnctl, sim_binary, wait_for, RunningCtl, TIMEOUT};
use serde_json::Value;

const AGENTS: usize = 20;

/// Starts `respawn-sim --live` with `agents` agents on `broker`, taking commands signed by the
/// key whose public line is in `operator`, and waits until all are connected.
fn live_fleet(broker: &Broker, agents: usize, operator: &Path) -> std::process::Child {
    live_fleet_with(broker, agents, operator, &[])
}

/// As [`live_fleet`], with more options for the simulator.
fn live_fleet_with(
    broker: &Broker,
    agents: usize,
    operator: &Path,
    options: &[&str],
) -> std::process::Child {
    let mut sim = Command::new(sim_binary())
        .args([
            "--live",
            "--broker",
            &broker.url(),
            "--agents",
            &agents.to_string(),
        ])
        .args(["--processes", "3", "--heartbeat", "5s", "--operator"])
        .arg(operator)
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("respawn-sim starts");
    let mut first_line = String::new();
    let stdout = sim.stdout.take().expect("the simulator's output");
    BufReader::new(stdout).read_line(&mut first_line).unwrap();
    assert!(
        first_line.starts_with(&format!("online {agents}")),
        "{first_line:?}"
    );
    sim
}

/// A directory with an operator's private key file and, beside it, its public key line: what
/// `respawnctl --key` and `respawn-sim --operator` take.
fn operator_key() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let alice = SigningKey::generate("alice").unwrap();
    let files = tempfile::tempdir().unwrap();
    let key = respawn_tests::key_file(files.path(), &alice);
    let public = files.path().join("alice.pub");
    std::fs::write(&public, alice.public_line()).unwrap();
    (files, key, public)
}

/// Every agent of `status --json` with its liveness.
fn liveness(broker: &Broker) -> Vec<(String, String)> {
    let out = respawnctl(broker, &["status", "--json"]);
    let status: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    agents
        .iter()
        .map(|a| {
            let field = |name: &str| a[name].as_str().unwrap_or_default().to_owned();
            (field("agent"), field("liveness"))
        })
        .collect()
}

#[test]
fn simulated_agents_answer_like_agents_and_leave_wills() {
    let broker = Broker::mosquitto("");
    let (_files, key, public) = operator_key();
    let mut sim = live_fleet(&broker, AGENTS, &public);

    let online = wait_for("every simulated agent online in status", TIMEOUT, || {
        let shown = liveness(&broker);
        let online = shown.iter().filter(|(_, l)| l == "online").count();
        (online == AGENTS).then_some(shown)
    });
    assert!(
        online.iter().any(|(agent, _)| agent == "sim-00019"),
        "{online:?}"
    );

    let unsigned = respawnctl(&broker, &["restart", "sim-00003/worker"]);
    assert_ne!(unsigned.code, Some(0), "{unsigned:?}");
    assert!(
        unsigned.stderr.contains("unsigned") || unsigned.stdout.contains("unsigned"),
        "{unsigned:?}"
    );

    let key = key.to_str().unwrap();
    let restart = respawnctl(&broker, &["--key", key, "restart", "sim-*/worker"]);
    assert_eq!(restart.code, Some(0), "{restart:?}");
    let restarted = restart
        .stdout
        .lines()
        .filter(|l| l.starts_with("restarted sim-"))
        .count();
    assert_eq!(restarted, AGENTS, "{restart:?}");
    let logs = respawnctl(&broker, &["--key", key, "logs", "sim-00007/web"]);
    assert_eq!(logs.code, Some(0), "{logs:?}");
    assert!(logs.stdout.contains("web: simulated line"), "{logs:?}");

    // A site outage: every connection cut at once, no DISCONNECT.
    sim.kill().unwrap();
    sim.wait().unwrap();
    wait_for("every simulated agent lost by its will", TIMEOUT, || {
        let shown = liveness(&broker);
        let lost = shown.iter().filter(|(_, l)| l == "lost").count();
        (lost == AGENTS).then_some(())
    });
}

/// A thousand agents restarted at once: every reply comes back, although a thousand commands
/// bring two thousand replies and Mosquitto drops what it cannot queue for a reader that falls
/// behind — respawnctl keeps no more commands under way than their replies fit in the queue
/// (`request::IN_FLIGHT`, 200: 400 replies), and here the queue holds only that many. (Replies
/// were lost at 10,000 agents, where respawnctl reads slower; at this size this test does not
/// lose them reliably even without the window, so it guards the fan-out, not the window.)
#[test]
fn a_restart_across_a_thousand_agents_gets_every_reply() {
    let broker = Broker::mosquitto("max_queued_messages 400\n");
    let (_files, key, public) = operator_key();
    let mut sim = live_fleet(&broker, 1000, &public);
    let restart = respawnctl(
        &broker,
        &["--key", key.to_str().unwrap(), "restart", "sim-*/worker"],
    );
    sim.kill().unwrap();
    sim.wait().unwrap();
    assert_eq!(restart.code, Some(0), "{}", restart.stderr);
    let restarted = restart
        .stdout
        .lines()
        .filter(|l| l.starts_with("restarted sim-"))
        .count();
    assert_eq!(restarted, 1000, "{}", restart.stderr);
}

/// Crashes and churn: a crashed process is reported as an exit and a start with a new pid, and
/// an agent that drops its connection is `lost` by its will, then online again.
#[test]
fn simulated_crashes_and_churn_look_like_the_real_thing() {
    let broker = Broker::mosquitto("");
    let (_files, _key, public) = operator_key();
    let events = RunningCtl::start(&broker, &["events", "--json"]);
    let options = ["--crash-every", "1s", "--churn-every", "4s"];
    let mut sim = live_fleet_with(&broker, 5, &public, &options);
    let events_of = |kind: &str| -> Vec<Value> {
        let lines = events.lines();
        let parsed = lines
            .iter()
            .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok());
        parsed.filter(|e| e["kind"] == kind).collect()
    };
    let exited = wait_for("a simulated crash", TIMEOUT, || {
        events_of("exited").into_iter().next()
    });
    assert_eq!(exited["status"]["code"], 1, "{exited}");
    wait_for("the restart after it, with a new pid", TIMEOUT, || {
        let same = |e: &Value| e["agent"] == exited["agent"] && e["process"] == exited["process"];
        let restarts = events_of("started").into_iter().filter(same);
        restarts.into_iter().find(|e| e["pid"] != exited["pid"])
    });
    let (lost, _) = wait_for("an agent lost by its will", TIMEOUT, || {
        liveness(&broker).into_iter().find(|(_, l)| l == "lost")
    });
    wait_for("the lost agent back online", TIMEOUT, || {
        let shown = liveness(&broker);
        shown
            .iter()
            .any(|(a, l)| *a == lost && l == "online")
            .then_some(())
    });
    sim.kill().unwrap();
    sim.wait().unwrap();
}

/// A mistyped option publishes nothing: the defaults name a broker on this machine, which
/// may not be a test's (a new-user run's `--help` put a thousand made-up agents on it).
#[test]
fn the_simulator_refuses_what_it_does_not_know_before_it_publishes_anything() {
    let help = Command::new(sim_binary()).arg("--help").output().unwrap();
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: respawn-sim"));
    let refused: [&[&str]; 3] = [
        &["--hlep"],
        &["--broker", "mqtt://127.0.0.1:9"],
        &["--agents"],
    ];
    for args in refused {
        let out = Command::new(sim_binary()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?} published: {out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.starts_with("error: ") && said.contains("try '--help'"),
            "{args:?}: {said}"
        );
    }
}
