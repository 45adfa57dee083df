//! The broker inside the agent: a single Pi needs nothing else, what waits for an absent
//! client outlives an upgrade of the agent, and a taken port is a clear error.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{retained, Observer};
use respawn_tests::{wait_for, RunningCtl, TestAgent, TIMEOUT};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent that hosts a broker and reports to it, its doorbot running; the broker, and the
/// agent's birth on it.
fn agent_on_its_own_broker() -> (TestAgent, Broker, serde_json::Value) {
    let port = free_port();
    let agent = TestAgent::start(&format!(
        "[broker]\nlisten = \"127.0.0.1:{port}\"\n\n[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    agent.wait_running("doorbot");
    let broker = Broker::attach(port);
    let state = wait_for("the birth on the embedded broker", TIMEOUT, || {
        retained(&broker, "respawn/v1/test/state")
            .first()
            .map(|m| m.json())
    });
    (agent, broker, state)
}

#[test]
fn an_agent_with_an_embedded_broker_reports_to_it() {
    let (_agent, _broker, state) = agent_on_its_own_broker();
    assert_eq!(state["state"], "online");
    assert_eq!(state["processes"][0], "doorbot");
}

/// An agent restarted in good order (an upgrade, `systemctl restart`) keeps what its broker
/// queued for a client that was away: the alerter on a laptop that slept through the crash
/// hears of it when it wakes.
#[test]
fn events_queued_for_an_absent_client_outlive_a_restart_of_the_agent() {
    let port = free_port();
    let config = format!(
        "[broker]\nlisten = \"127.0.0.1:{port}\"\n\n[[process]]\nname = \"crasher\"\ncommand = [\"sh\", \"-c\", \"while [ ! -e crash ]; do sleep 0.05; done; rm -f crash; exit 3\"]\n"
    );
    let agent = TestAgent::start(&config);
    let broker = Broker::attach(port);
    let events = ["respawn/v1/test/event"];
    drop(Observer::connect_persistent(
        &broker,
        "sleepy-alerter",
        &events,
    ));
    let awake = Observer::connect(&broker, &events);
    agent.wait_running("crasher");
    std::fs::write(agent.dir().join("crash"), "").unwrap();
    let is_the_crash = |e: &serde_json::Value| e["kind"] == "exited" && e["status"]["code"] == 3;
    // Routed to one subscriber, it is queued for the other too.
    awake.wait_json::<serde_json::Value>("the crash", is_the_crash);
    drop(awake);
    // A tail connected when the agent stops hears that its broker shut down, not of a cut.
    let tail = RunningCtl::start(&broker, &["events"]);
    // It listens once a command's audit event reaches it.
    wait_for("the tail to listen", TIMEOUT, || {
        let out = respawn_tests::respawnctl(&broker, &["restart", "test/crasher"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let lines = tail.lines();
        lines
            .iter()
            .any(|(_, l)| l.contains("command restart"))
            .then_some(())
    });
    let dir = agent.shut_down();
    respawn_tests::wait_for_or(
        "the tail to hear of the broker's stop",
        TIMEOUT,
        || (tail.stderr().contains("the broker shut down; reconnecting")).then_some(()),
        || format!("respawnctl events said:\n{}", tail.stderr()),
    );
    let agent = TestAgent::start_in(dir, &config);
    agent.wait_running("crasher");
    let woken = Observer::connect_persistent(&broker, "sleepy-alerter", &events);
    woken.wait_json::<serde_json::Value>("the crash from before the restart", is_the_crash);
}

/// A session kept for a client is written down soon after it subscribes, and struck out once
/// it expires: a restart of the agent does not bring back what has ended.
#[test]
fn an_expired_session_is_struck_from_the_kept_ones() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{Client, Event, MqttOptions};

    let port = free_port();
    let agent = TestAgent::start(&format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut options = MqttOptions::new("short-lived", "127.0.0.1", port);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(2));
    let (client, mut connection) = Client::new(options, 8);
    client
        .subscribe("respawn/v1/+/event", QoS::AtLeastOnce)
        .unwrap();
    let subscribed = connection
        .iter()
        .take(20)
        .any(|e| matches!(e, Ok(Event::Incoming(Packet::SubAck(_)))));
    assert!(subscribed, "no SUBACK");
    drop((client, connection));
    let kept = agent.dir().join("state/broker-sessions.json");
    let holds_it = || {
        std::fs::read_to_string(&kept)
            .unwrap_or_default()
            .contains("short-lived")
    };
    wait_for("the session written down", TIMEOUT, || {
        holds_it().then_some(())
    });
    wait_for("the expired session struck out", TIMEOUT, || {
        (!holds_it()).then_some(())
    });
}

/// Runs an agent on `config` (written to `path`) that is expected to stop by itself: its exit
/// code and stderr.
fn run_agent(path: &Path, config: &str) -> (Option<i32>, String) {
    std::fs::write(path, config).unwrap();
    let out = std::process::Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_agent(
        &dir.path().join("agent.toml"),
        &format!("[agent]\nstate_dir = \"state\"\n[broker]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("the port is taken"), "{stderr}");
    assert!(
        stderr.contains(&format!("[mqtt] url = \"mqtt://127.0.0.1:{port}\"")),
        "{stderr}"
    );
}

/// This test's cgroup (v2): its directory.
fn own_cgroup_dir() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(str::to_owned))?
        })
        .expect("a cgroup2 mount");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::"));
    let own = own.expect("a cgroup v2 of the test");
    Path::new(&mount).join(own.trim_start_matches('/'))
}

/// The cgroups `id`'s agent made under this test's cgroup (`respawn-<id>-<hash>`).
fn cgroups_of(id: &str) -> Vec<String> {
    std::fs::read_dir(own_cgroup_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&format!("respawn-{id}-")))
        .collect()
}

#[test]
fn an_agent_that_cannot_start_leaves_no_cgroup_behind() {
    let test = "an_agent_that_cannot_start_leaves_no_cgroup_behind";
    if !respawn_tests::runs_as_root(test, "cgroups are made as root") {
        return;
    }
    // In a cgroup systemd delegated, root's agent makes no respawn-<id>-<hash>: there would be
    // nothing to look for.
    let own = own_cgroup_dir();
    let delegated = ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|mark| respawn_tests::xattr(&own, mark).as_deref() == Some("1"));
    if delegated && !respawn_tests::skip(test, "the test runs in a cgroup delegated by systemd") {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    // The broker's port is taken; then, with the port free, the control socket cannot be
    // made (its path is longer than a unix socket's can be), after the cgroups were.
    let long = "d".repeat(120);
    for (case, broker) in [
        ("port", format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n")),
        ("socket", String::new()),
    ] {
        let id = format!("cannot-start-{case}-{}", std::process::id());
        let state_dir = match case {
            "port" => "state".to_owned(),
            _ => format!("state/{long}"),
        };
        let (code, stderr) = run_agent(
            &dir.path().join(format!("{case}.toml")),
            &format!("[agent]\nid = \"{id}\"\nstate_dir = \"{state_dir}\"\ncontainment = \"cgroup\"\n{broker}\n[[process]]\nname = \"worker\"\ncommand = [\"sleep\", \"1000\"]\n"),
        );
        assert_eq!(code, Some(1), "{case}: {stderr}");
        if case == "socket" {
            assert!(stderr.contains("cannot listen on"), "{stderr}");
            assert!(
                stderr.contains("a cgroup per process"),
                "cgroups were made: {stderr}"
            );
        }
        assert_eq!(cgroups_of(&id), Vec::<String>::new(), "{case}: {stderr}");
    }
}

/// `doorbot`, run by the agent of a test of clients on other machines.
const DOORBOT: &str = "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n";

/// For `test`, whose clients on another machine run python3 with `modules`: a network
/// namespace (`n` keeps tests apart) and an agent hosting its broker on every address, with
/// `doorbot` running; `None` when the test is skipped (loudly).
fn hosting_for_elsewhere(
    test: &str,
    modules: &[&str],
    n: u8,
) -> Option<(respawn_tests::faults::Netns, u16, TestAgent)> {
    if !respawn_tests::runs_as_root(test, "network namespaces")
        || !respawn_tests::has_python_modules(test, modules)
    {
        return None;
    }
    let netns = respawn_tests::faults::Netns::new(n);
    let port = free_port();
    let agent = TestAgent::start(&format!(
        "[broker]\nlisten = \"0.0.0.0:{port}\"\n\n{DOORBOT}"
    ));
    agent.wait_running("doorbot");
    Some((netns, port, agent))
}

/// Fills the retained store of the broker at `host:port` as far as it takes, from wherever it
/// runs, halving the message size at each refusal down to one byte; prints the bytes kept.
const RETAINED_FILLER: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
host, port = sys.argv[1], int(sys.argv[2])
acks, changed = {}, threading.Condition()
def on_publish(client, userdata, mid, reason_code, properties):
    with changed:
        acks[mid] = reason_code.is_failure
        changed.notify_all()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="filler", protocol=mqtt.MQTTv5)
client.on_publish = on_publish
client.connect(host, port)
client.loop_start()
size, n, kept = 200_000, 0, 0
while size:
    info = client.publish(f"junk/{n}", b"x" * size, qos=1, retain=True)
    with changed:
        if not changed.wait_for(lambda: info.mid in acks, timeout=30):
            sys.exit("no PUBACK")
    if acks[info.mid]:
        size //= 2
    else:
        kept, n = kept + size, n + 1
print(kept)
"#;

/// Another machine that fills the broker's retained store does not take the room of the
/// agent's own states: a process added afterwards is still shown, retained, on the broker.
#[test]
fn other_machines_cannot_fill_the_room_of_the_agents_states() {
    let test = "other_machines_cannot_fill_the_room_of_the_agents_states";
    let Some((netns, port, agent)) = hosting_for_elsewhere(test, &["paho.mqtt"], 3) else {
        return;
    };
    let broker_section = format!("[broker]\nlisten = \"0.0.0.0:{port}\"\n");

    let mut filler = std::process::Command::new("ip");
    filler.args([
        "netns",
        "exec",
        &netns.name,
        "python3",
        "-c",
        RETAINED_FILLER,
    ]);
    let filled = filler
        .arg(&netns.host_ip)
        .arg(port.to_string())
        .output()
        .unwrap();
    assert!(filled.status.success(), "{filled:?}");
    let kept: u64 = String::from_utf8_lossy(&filled.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(kept > 50_000_000, "only {kept} bytes kept from elsewhere");

    let two = "[[process]]\nname = \"added\"\ncommand = [\"sleep\", \"1000\"]\n";
    agent.rewrite_config(&format!("{broker_section}\n{DOORBOT}\n{two}"));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let pid = agent.wait_running("added");
    let broker = Broker::attach(port);
    let state = wait_for("the added process's state, retained", TIMEOUT, || {
        let state = retained(&broker, "respawn/v1/test/proc/added")
            .first()?
            .json();
        (state["pid"] == pid).then_some(state)
    });
    assert_eq!(state["state"], "running");
}

/// Opens `count` MQTT 5 connections to `host:port` that never time out (keep-alive 0) and
/// holds them; prints how many the broker answered with a CONNACK, then waits for stdin to
/// close.
const CONNECTION_HOLDER: &str = r#"
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, answered = [], 0
for n in range(count):
    client = f"holder-{n}".encode()
    body = b"\x00\x04MQTT\x05\x02\x00\x00\x00" + len(client).to_bytes(2, "big") + client
    s = socket.create_connection((host, port))
    s.settimeout(5)
    s.sendall(bytes([0x10, len(body)]) + body)
    try:
        if s.recv(1)[:1] == b"\x20":
            answered += 1
    except OSError:
        pass
    held.append(s)
print(answered, flush=True)
sys.stdin.read()
"#;

/// Other machines that open every connection they can leave the last ones to clients on the
/// Pi itself: respawnctl run there still reaches the agent.
#[test]
fn other_machines_cannot_take_the_last_connections() {
    use std::io::{BufRead as _, BufReader};
    let test = "other_machines_cannot_take_the_last_connections";
    let Some((netns, port, _agent)) = hosting_for_elsewhere(test, &["socket"], 4) else {
        return;
    };
    let broker = Broker::attach(port);
    respawn_tests::mqtt::online_session(&broker, "test");

    let mut holder = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "python3",
            "-c",
            CONNECTION_HOLDER,
        ])
        .args([&netns.host_ip, &port.to_string(), "300"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut answered = String::new();
    let stdout = holder.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut answered).unwrap();
    let answered: usize = answered.trim().parse().unwrap();
    // 256 in all, the last 16 kept for this machine, one of them the agent's own.
    assert_eq!(answered, 239, "connections taken from elsewhere");
    let status = respawn_tests::respawnctl(&broker, &["status", "test"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(status.stdout.contains("doorbot"), "{status:?}");
    drop(holder.stdin.take());
    holder.wait().unwrap();
}

/// Another client cannot connect as the agent: its session would be taken over, the agent
/// shown `lost` and its signed commands refused as of a stale session, again and again (found
/// by a hostile-input review). The agent's link alone gives the password it made at its start.
#[test]
fn no_other_client_can_connect_with_the_agents_client_id() {
    use std::io::{Read, Write};
    let (agent, broker, before) = agent_on_its_own_broker();
    assert_eq!(before["state"], "online");
    let port = broker.port();
    // MQTT 5 CONNECT, clean start, keep-alive 10 s, no properties, client id as the agent's.
    let client_id = b"respawn-agent-test";
    let mut connect = vec![0x10, 10 + 1 + 2 + client_id.len() as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10, 0]);
    connect.extend_from_slice(&[0, client_id.len() as u8]);
    connect.extend_from_slice(client_id);
    let mut rogue = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    rogue.set_read_timeout(Some(TIMEOUT)).unwrap();
    rogue.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    rogue.read_exact(&mut connack).unwrap();
    assert_eq!(connack[0], 0x20, "a CONNACK: {connack:?}");
    assert_eq!(connack[3], 0x87, "Not authorized: {connack:?}");
    agent.wait_for_log("a client tried to connect with the agent's own client id");
    // Still on its first connection: the same session, never lost meanwhile.
    let after = retained(&broker, "respawn/v1/test/state")[0].json();
    assert_eq!(after["session"], before["session"]);
}
