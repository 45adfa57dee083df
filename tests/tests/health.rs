//! Hung, not crashed: real programs that stop answering HTTP, close their port, hang a probe,
//! never say they are ready, stop pinging their watchdog or grow beyond their memory limit are
//! noticed and restarted, with an `unhealthy` event that says why; and a restart starts the
//! count of failures afresh.

use respawn_agent::control::{Reply, Request};
use respawn_common::messages::{Event, EventKind};
use respawn_common::status::{HealthStatus, ProcessState};
use respawn_tests::broker::{free_port, Broker};
use respawn_tests::mqtt::Observer;
use respawn_tests::{
    mqtt_section, test_app_binary, wait_for, wait_for_pid, wait_gone, TestAgent, TIMEOUT,
};

fn app(name: &str, args: &str, extra: &str) -> String {
    format!(
        "[[process]]\nname = \"{name}\"\ncommand = [\"{}\", {args}]\nbackoff = {{ initial = \"100ms\", max = \"1s\" }}\n{extra}\n",
        test_app_binary().display()
    )
}

/// The `unhealthy` events among `messages`, with the process and reason.
fn unhealthy(messages: &[respawn_tests::mqtt::Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<Event>(&m.payload).ok())
        .filter_map(|e| match e.kind {
            EventKind::Unhealthy { reason } => Some((e.process.unwrap_or_default(), reason)),
            _ => None,
        })
        .collect()
}

fn wait_unhealthy(observer: &Observer, process: &str) -> String {
    observer.wait(&format!("an unhealthy event for {process}"), |messages| {
        unhealthy(messages)
            .into_iter()
            .find(|(p, _)| p == process)
            .map(|(_, reason)| reason)
    })
}

#[test]
fn an_http_server_that_stops_answering_is_restarted_and_the_event_says_why() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let port = free_port();
    let config = mqtt_section(&broker)
        + &app(
            "web",
            &format!("\"--http\", \"{port}\""),
            &format!("[process.health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfailures = 3\ngrace = \"1s\""),
        );
    let agent = TestAgent::start(&config);
    let ready = agent.wait_until("web", "running and healthy", |s| {
        s.state == ProcessState::Running
            && s.health
                .as_ref()
                .is_some_and(|h| h.status == HealthStatus::Healthy)
    });
    let old = ready.pid.expect("a pid");

    std::fs::write(agent.dir().join("hang"), "").unwrap();
    let reason = wait_unhealthy(&events, "web");
    assert_eq!(
        reason,
        "http check failed 3 times in a row: no answer within 100ms"
    );
    let new = agent.wait_restarted("web", old);
    assert!(respawn_tests::alive(agent.pid()));
    // A fresh count for the new run: it is healthy, not one failure from a restart.
    let status = agent.wait_until("web", "healthy again", |s| {
        s.pid == Some(new)
            && s.health
                .as_ref()
                .is_some_and(|h| h.status == HealthStatus::Healthy)
    });
    assert_eq!(status.health.unwrap().failures, 0);
    assert_eq!(status.restarts, 1);
    let last_exit = status.last_exit.expect("the unhealthy run's exit");
    assert_eq!(
        last_exit.reason.as_deref(),
        Some(reason.as_str()),
        "the state says why, for whoever looks later"
    );
    assert!(agent
        .log()
        .contains("unhealthy: http check failed 3 times in a row"));
}

#[test]
fn a_port_that_closes_is_noticed() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let port = free_port();
    let config = mqtt_section(&broker)
        + &app(
            "db",
            &format!("\"--tcp\", \"{port}\""),
            &format!("[process.health]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfailures = 2\ngrace = \"0s\""),
        );
    let agent = TestAgent::start(&config);
    let old = agent
        .wait_until("db", "running", |s| s.state == ProcessState::Running)
        .pid
        .unwrap();
    std::fs::write(agent.dir().join("close"), "").unwrap();
    let reason = wait_unhealthy(&events, "db");
    assert!(
        reason.starts_with("tcp check failed 2 times in a row: cannot connect to 127.0.0.1:"),
        "{reason}"
    );
    agent.wait_restarted("db", old);
}

#[test]
fn a_hanging_exec_probe_is_timed_out_and_killed_never_piling_up() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let config = mqtt_section(&broker)
        + "[[process]]\nname = \"job\"\ncommand = [\"sleep\", \"1000\"]\n[process.health]\nexec = [\"sh\", \"-c\", \"echo checking; exec sleep 4242\"]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nfailures = 2\ngrace = \"0s\"\n";
    let agent = TestAgent::start(&config);
    let reason = wait_unhealthy(&events, "job");
    assert_eq!(
        reason,
        "exec check failed 2 times in a row: \"sh -c echo checking; exec sleep 4242\" did not finish within 200ms"
    );
    // Every abandoned probe was killed with its group: at most the one under way is left.
    let probes = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline == b"sleep\x004242\x00")
        .count();
    assert!(probes <= 1, "{probes} probes left running");
    assert!(respawn_tests::alive(agent.pid()));
}

#[test]
fn a_probe_under_way_goes_with_a_stop_and_with_the_agent() {
    let agent = TestAgent::start(
        "[[process]]\nname = \"job\"\ncommand = [\"sleep\", \"1000\"]\n[process.health]\nexec = [\"sh\", \"-c\", \"echo $$ >> probes; exec sleep 4343\"]\ninterval = \"10s\"\ntimeout = \"5s\"\ngrace = \"0s\"\n",
    );
    let probes = agent.dir().join("probes");
    let first = wait_for_pid(&probes);
    let reply = agent.request(Request::Stop {
        process: "job".into(),
    });
    assert!(matches!(reply, Reply::Done { .. }), "{reply:?}");
    wait_gone(first, "the probe of a stopped process");
    agent.request(Request::Start {
        process: "job".into(),
    });
    let second = wait_for("a probe of the new run", TIMEOUT, || {
        let text = std::fs::read_to_string(&probes).ok()?;
        let newest = text.lines().last()?.trim().parse::<u32>().ok()?;
        (newest != first).then_some(newest)
    });
    drop(agent);
    wait_gone(second, "the probe of an agent that exited");
}

#[test]
fn a_notify_speaker_is_starting_until_ready_and_restarted_when_its_watchdog_starves() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let config = mqtt_section(&broker)
        + &app(
            "door",
            "\"--notify\"",
            "sd_notify = true\nwatchdog = \"1s\"",
        );
    let agent = TestAgent::start(&config);
    let status = agent.wait_until("door", "started, saying so", |s| {
        s.health
            .as_ref()
            .and_then(|h| h.message.as_deref())
            .is_some_and(|m| m == "warming up")
    });
    assert_eq!(status.state, ProcessState::Starting, "not ready yet");
    let pid = status.pid.expect("running already");

    std::fs::write(agent.dir().join("ready"), "").unwrap();
    let status = agent.wait_until("door", "ready", |s| s.state == ProcessState::Running);
    assert_eq!(status.pid, Some(pid));
    assert_eq!(status.health.unwrap().message.as_deref(), Some("serving"));

    std::fs::write(agent.dir().join("stop-pinging"), "").unwrap();
    let reason = wait_unhealthy(&events, "door");
    assert_eq!(reason, "watchdog: no WATCHDOG=1 within 1s");
    let status = agent.wait_until("door", "started again", |s| s.pid.is_some_and(|p| p != pid));
    assert_eq!(
        status.state,
        ProcessState::Starting,
        "ready again only when it says so"
    );
    assert_eq!(status.restarts, 1);
}

/// The start of a Python program that speaks the notify protocol: `address` is where to send.
const NOTIFY_PREAMBLE: &str = r#"import os, socket, time
address = os.environ["NOTIFY_SOCKET"]
address = "\0" + address[1:] if address.startswith("@") else address
"#;

/// A program written for systemd pings its watchdog only once it has started: one that takes
/// longer than `watchdog` to say `READY=1` is not taken for hung.
#[test]
fn the_watchdog_counts_from_ready_as_systemd_does() {
    // Ready after 1.5 s (longer than its 1 s watchdog), then a ping every 0.2 s.
    let slow = format!(
        "{NOTIFY_PREAMBLE}{}",
        r#"s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
time.sleep(1.5)
s.sendto(b"READY=1", address)
print("ready", flush=True)
while True:
    time.sleep(0.2)
    s.sendto(b"WATCHDOG=1", address)
"#
    );
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"slow\"\ncommand = [\"python3\", \"-c\", {slow:?}]\nsd_notify = true\nwatchdog = \"1s\"\n"
    ));
    let status = agent.wait_until("slow", "ready", |s| s.state == ProcessState::Running);
    assert_eq!(
        status.restarts, 0,
        "not restarted while it started: {status:?}"
    );
}

/// `WATCHDOG=trigger`: the program found itself broken and asks for a watchdog failure at
/// once, as systemd handles it (found by a review: it was ignored, and the restart came only
/// when its pings stopped).
#[test]
fn a_watchdog_trigger_restarts_at_once() {
    let triggered = format!(
        "{NOTIFY_PREAMBLE}{}",
        r#"import signal
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", address)
if not os.path.exists("triggered"):
    open("triggered", "w").close()
    s.sendto(b"WATCHDOG=trigger", address)
signal.pause()
"#
    );
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"selfcheck\"\ncommand = [\"python3\", \"-c\", {triggered:?}]\nsd_notify = true\nwatchdog = \"1h\"\n"
    ));
    let status = agent.wait_until("selfcheck", "restarted on its trigger", |s| {
        s.state == ProcessState::Running && s.restarts == 1
    });
    let reason = status.last_exit.and_then(|exit| exit.reason);
    assert_eq!(
        reason.as_deref(),
        Some("watchdog: it said WATCHDOG=trigger")
    );
}

/// Only the process's own group is heard: a descendant that started a session of its own
/// is not, and the agent says why the process stays starting.
#[test]
fn a_notify_message_from_outside_the_group_is_ignored_and_said_so() {
    let outsider = format!(
        "{NOTIFY_PREAMBLE}{}",
        r#"if os.fork() == 0:
    os.setsid()
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
    os._exit(0)
time.sleep(1000)
"#
    );
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"daemonish\"\ncommand = [\"python3\", \"-c\", {outsider:?}]\nsd_notify = true\n"
    ));
    let said = "ignoring a notify message from outside the process's group";
    agent.wait_for_log(said);
    // Named, as every other line about a process is (found by a new-user run).
    let log = agent.log();
    let line = log.lines().find(|l| l.contains(said)).unwrap_or_default();
    assert!(line.contains("process=daemonish"), "{line}");
    assert_eq!(agent.status("daemonish").state, ProcessState::Starting);
}

#[test]
fn a_process_over_its_memory_limit_is_restarted() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let config = mqtt_section(&broker) + &app("leaky", "\"--grow\"", "max_memory = \"60MB\"");
    let agent = TestAgent::start(&config);
    let old = agent.wait_running("leaky");
    let reason = wait_unhealthy(&events, "leaky");
    assert!(
        reason.starts_with("memory: ") && reason.ends_with(" MB in use, over max_memory (60 MB)"),
        "{reason}"
    );
    agent.wait_restarted("leaky", old);
}

#[test]
fn the_agent_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = format!("respawn-test-systemd-{}", uuid::Uuid::new_v4().simple());
    let systemd =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    systemd
        .set_read_timeout(Some(respawn_tests::TIMEOUT))
        .unwrap();
    let address = format!("@{name}");
    // Two children that show what they were given: systemd's variables are the agent's own.
    let shows = |name: &str, sd_notify: bool| {
        format!("[[process]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", \"env | grep -E '^(NOTIFY_SOCKET|WATCHDOG_)' ; echo shown; exec sleep 1000\"]\nsd_notify = {sd_notify}\n")
    };
    let processes = format!(
        "[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n{}{}",
        shows("plain", false),
        shows("notifier", true)
    );
    let mut agent = TestAgent::start_with_env(
        &processes,
        &[("NOTIFY_SOCKET", &address), ("WATCHDOG_USEC", "200000")],
    );
    let mut heard = Vec::new();
    let mut buffer = [0u8; 512];
    while heard
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = systemd.recv(&mut buffer).expect("a notification in time");
        heard.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert_eq!(
        heard[0], "READY=1\nSTATUS=supervising 3 processes",
        "ready once every autostart process was started: {heard:?}"
    );
    agent.wait_running("doorbot");
    let shown = |name: &str| {
        wait_for("the child's environment", respawn_tests::TIMEOUT, || {
            let reply = agent.request(respawn_agent::control::Request::Logs {
                process: name.into(),
                lines: 10,
            });
            let respawn_agent::control::Reply::Logs { lines, .. } = reply else {
                return None;
            };
            let texts: Vec<String> = lines.into_iter().map(|l| l.text).collect();
            texts.iter().any(|t| t == "shown").then_some(texts)
        })
    };
    assert_eq!(shown("plain"), ["shown"], "nothing of systemd's");
    let notifier = shown("notifier");
    assert!(
        notifier.len() == 2 && notifier[0].starts_with("NOTIFY_SOCKET=@respawn/"),
        "its own socket, and no watchdog it did not ask for: {notifier:?}"
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    loop {
        let n = systemd.recv(&mut buffer).expect("STOPPING=1 in time");
        if &buffer[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(agent.wait_exit().success());
}

/// A process that floods its notify socket with `STATUS=` (and `READY=1`) costs the agent
/// neither memory nor its other processes' supervision: a crashing neighbour is restarted as
/// often during the flood as in as long a quiet time before it (compared within the run), and
/// the latest status is shown.
#[test]
fn a_flood_of_notify_messages_costs_the_agent_nothing() {
    let flood = format!(
        "{NOTIFY_PREAMBLE}{}",
        r#"s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", address)
open("quiet", "w").close()
time.sleep(3)
open("flood", "w").close()
lines = b"\n".join([b"READY=1\nSTATUS=" + b"y" * 190] * 20)
end = time.monotonic() + 3
while time.monotonic() < end:
    s.sendto(lines, address)
open("flood-over", "w").close()
s.sendto(b"STATUS=done", address)
time.sleep(1000)
"#
    );
    let agent = TestAgent::start(&format!(
        "[[process]]\nname = \"flood\"\ncommand = [\"python3\", \"-c\", {flood:?}]\nsd_notify = true\n\n\
         [[process]]\nname = \"flap\"\ncommand = [\"sh\", \"-c\", \"sleep 0.3; exit 3\"]\nbackoff = {{ initial = \"100ms\", max = \"100ms\" }}\ncrash_loop = {{ max_exits = 1000, window = \"1m\" }}\n"
    ));
    let restarts_when = |file: &str| {
        let path = agent.dir().join(file);
        let log = || agent.log();
        respawn_tests::wait_for_or(file, TIMEOUT, || path.exists().then_some(()), log);
        agent.status("flap").restarts
    };
    let quiet = restarts_when("quiet");
    let flood = restarts_when("flood");
    let over = restarts_when("flood-over");
    let (in_quiet, in_flood) = (flood - quiet, over - flood);
    assert!(
        in_flood * 2 >= in_quiet && in_quiet >= 2,
        "flap restarted {in_quiet} times in 3 quiet seconds, {in_flood} in 3 of the flood"
    );
    let shown = agent.wait_until("flood", "its last status", |s| {
        s.health.as_ref().and_then(|h| h.message.as_deref()) == Some("done")
    });
    assert_eq!(shown.state, ProcessState::Running);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kb < 100_000, "the agent peaked at {peak_kb} kB");
}

/// The processes in the system whose environment holds `entry`.
fn tagged(entry: &str) -> Vec<u32> {
    let pids = std::fs::read_dir("/proc").unwrap().flatten();
    let pids = pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|pid| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        environ.split(|&b| b == 0).any(|e| e == entry.as_bytes())
    })
    .collect()
}

/// An exec probe that starts something in a session of its own (which its process group
/// does not hold) passes when it exits 0, and what it started is stopped after it: nothing
/// piles up probe after probe, nor outlives the process it checks.
#[test]
fn what_an_exec_probe_leaves_running_is_stopped_after_it() {
    let agent = TestAgent::start(
        "[[process]]\nname = \"probed\"\ncommand = [\"sleep\", \"100000\"]\n\
         [process.health]\nexec = [\"setsid\", \"sleep\", \"300\"]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n",
    );
    agent.wait_until("probed", "healthy", |s| s.state == ProcessState::Running);
    let entry = "RESPAWN_PROBE=probed";
    wait_for("a few probes, each leaving a sleep behind", TIMEOUT, || {
        let said = agent
            .log()
            .matches("stopped what a health probe left running")
            .count();
        (said >= 3).then_some(())
    });
    let left = tagged(entry);
    assert!(left.len() <= 1, "{} left running: {left:?}", left.len());
    agent.stop_process("probed");
    wait_for("nothing a probe started to be left", TIMEOUT, || {
        tagged(entry).is_empty().then_some(())
    });
}
