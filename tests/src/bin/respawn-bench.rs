//! Benchmarks of the agent, as one reproducible command (results go to docs/benchmarks.md):
//!
//! - `respawn`: the time from a child's exit to the next child's start when the agent restarts
//!   it after a stable run, next to the fork+exec floor measured in the same run.
//! - `idle`: the agent's RSS, PSS and CPU time over a minute with 50 idle children.
//! - `events`: from a child's exit to its `exited` event at an independent MQTT subscriber,
//!   next to a bare publish→receive through the same private Mosquitto in the same run.
//! - `fleet`: `respawnctl status` against a simulated fleet's retained state.
//! - `commands`: restart round trips (send → `succeeded`) against a real agent, and one
//!   `respawnctl restart '*/worker'` across many real agents.
//!
//! `respawn-bench child` is the supervised program itself: it appends monotonic timestamps of
//! its start and its exit to a file, so both ends of every restart are measured by the
//! processes themselves.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use respawn_agent::control::{self, Reply, Request};
use respawn_common::status::ProcessState;

#[derive(clap::Parser)]
#[command(about = "Benchmarks of the agent; docs/benchmarks.md has the results and the commands")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// The agent's `[agent] containment` (respawn, events, idle and the others that start one).
    #[arg(long, global = true, value_parser = ["auto", "cgroup", "process-group"])]
    containment: Option<String>,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// The supervised program of `respawn`: stamps its start and exit into LOG.
    #[command(hide = true)]
    Child {
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 0)]
        run_ms: u64,
    },
    /// From a child's exit to the next start, next to the fork+exec floor.
    Respawn {
        #[arg(long, default_value_t = 200)]
        crashes: usize,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// From a child's exit to its `exited` event at a subscriber, next to a bare publish.
    Events {
        #[arg(long, default_value_t = 500)]
        crashes: usize,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// `respawnctl status` against a simulated fleet's retained state.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        processes: usize,
    },
    /// Restart round trips against a real agent, and one restart across many agents.
    Commands {
        #[arg(long, default_value_t = 200)]
        restarts: usize,
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// Remote configuration applies of many processes.
    RemoteConfig {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        #[arg(long, default_value_t = 50)]
        processes: usize,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// Live logs followed over MQTT.
    LiveLogs {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// `respawnctl alerts` with thousands of agents away: how soon a crash is alerted, and
    /// what the alerter spends meanwhile.
    Alerts {
        #[arg(long, default_value_t = 20_000)]
        agents: usize,
        #[arg(long, default_value_t = 9)]
        crashes: usize,
        /// The respawnctl to measure; default: the one beside this program.
        #[arg(long)]
        respawnctl: Option<PathBuf>,
    },
    /// The web dashboard under a crash storm in a large fleet.
    Dashboard {
        #[arg(long, default_value_t = 100)]
        crashes: usize,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[command(flatten)]
        agent: AgentPath,
    },
    /// The hub at a large fleet: its memory with and without Home Assistant discovery, and
    /// scrapes of /metrics at once.
    Hub {
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        #[arg(long, default_value_t = 30)]
        scrapes: usize,
        /// The respawnctl to measure; default: the one beside this program.
        #[arg(long)]
        respawnctl: Option<PathBuf>,
    },
    /// The agent's RSS, PSS, CPU time and wake-ups with idle children.
    Idle {
        #[arg(long, default_value_t = 50)]
        children: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Report to a private Mosquitto.
        #[arg(long, conflicts_with = "host_broker")]
        mqtt: bool,
        /// Host the embedded broker and report to it.
        #[arg(long)]
        host_broker: bool,
        /// Give each child a health check.
        #[arg(long, value_parser = ["http", "tcp", "exec"])]
        probe: Option<String>,
        #[command(flatten)]
        agent: AgentPath,
    },
}

#[derive(clap::Args)]
struct AgentPath {
    /// The respawn-agent to measure; default: the one beside this program.
    #[arg(long)]
    agent: Option<PathBuf>,
}

impl AgentPath {
    fn path(self) -> PathBuf {
        self.agent.unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("own path");
            exe.with_file_name("respawn-agent")
        })
    }
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    if let Some(mode) = cli.containment {
        let _ = CONTAINMENT.set(mode);
    }
    match cli.bench {
        Bench::Child { log, run_ms } => child(&log, run_ms),
        Bench::Respawn { crashes, agent } => respawn(&agent.path(), crashes),
        Bench::Events { crashes, agent } => events(&agent.path(), crashes),
        Bench::Fleet { agents, processes } => fleet(agents, processes),
        Bench::Commands {
            restarts,
            agents,
            agent,
        } => commands(&agent.path(), restarts, agents),
        Bench::RemoteConfig {
            rounds,
            processes,
            agent,
        } => remote_config(&agent.path(), rounds, processes),
        Bench::LiveLogs { seconds, agent } => live_logs(&agent.path(), seconds),
        Bench::Alerts {
            agents,
            crashes,
            respawnctl,
        } => alerts(&respawnctl.unwrap_or_else(respawnctl_path), agents, crashes),
        Bench::Dashboard {
            crashes,
            agents,
            agent,
        } => dashboard(&agent.path(), crashes, agents),
        Bench::Hub {
            agents,
            scrapes,
            respawnctl,
        } => hub(&respawnctl.unwrap_or_else(respawnctl_path), agents, scrapes),
        Bench::Idle {
            children,
            seconds,
            mqtt,
            host_broker,
            probe,
            agent,
        } => {
            let reporting = match (mqtt, host_broker) {
                (true, _) => Reporting::Broker,
                (_, true) => Reporting::HostedBroker,
                _ => Reporting::Nothing,
            };
            idle(
                &agent.path(),
                children,
                seconds,
                reporting,
                probe.as_deref(),
            )
        }
    }
}

fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn append(log: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the timestamp log");
    file.write_all(line.as_bytes()).expect("write a timestamp");
}

/// The supervised program: records its start, runs `run_ms`, records its exit, exits 1.
fn child(log: &Path, run_ms: u64) {
    append(log, &format!("start {}\n", monotonic_ns()));
    std::thread::sleep(Duration::from_millis(run_ms));
    append(
        log,
        &format!("exit {} {}\n", std::process::id(), monotonic_ns()),
    );
    std::process::exit(1);
}

/// Pairs every exit with the next start and returns the gaps.
fn restart_gaps(log: &Path) -> Vec<Duration> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut gaps = Vec::new();
    let mut last_exit = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("exit", rest)) => {
                last_exit = rest.rsplit(' ').next().and_then(|t| t.parse::<u64>().ok())
            }
            Some(("start", t)) => {
                if let (Some(exit), Ok(start)) = (last_exit.take(), t.parse::<u64>()) {
                    gaps.push(Duration::from_nanos(start.saturating_sub(exit)));
                }
            }
            _ => {}
        }
    }
    gaps
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(gaps: &mut [Duration]) -> (Duration, Duration) {
    gaps.sort();
    (percentile(gaps, 0.5), percentile(gaps, 0.95))
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `--containment MODE`: the `[agent] containment` of the agents `respawn` and `idle` start.
static CONTAINMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn start_agent(agent: &Path, dir: &Path, processes: &str) -> Child {
    let config = dir.join("agent.toml");
    let containment = CONTAINMENT.get().map_or("auto", String::as_str);
    std::fs::write(
        &config,
        format!("[agent]\nid = \"bench\"\nstate_dir = \"state\"\ncontainment = \"{containment}\"\n\n{processes}"),
    )
    .expect("write the configuration");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    // RESPAWN_BENCH_EMULATOR="qemu-aarch64 -L /usr/aarch64-linux-gnu" runs a cross-built
    // agent under qemu-user, in the same process (so its pid is the agent's).
    let emulator = std::env::var("RESPAWN_BENCH_EMULATOR").unwrap_or_default();
    let mut command = match emulator
        .split_whitespace()
        .collect::<Vec<_>>()
        .split_first()
    {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(agent);
            command
        }
        None => Command::new(agent),
    };
    command
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", agent.display()))
}

fn stop_agent(mut agent: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
}

fn respawn(agent: &Path, crashes: usize) {
    let me = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temporary directory");
    let run_ms = 20;

    // The floor: a tight loop that starts the same program and waits for it.
    let floor_log = dir.path().join("floor.log");
    for _ in 0..=crashes {
        Command::new(&me)
            .args(["child", "--log"])
            .arg(&floor_log)
            .args(["--run-ms", &run_ms.to_string()])
            .status()
            .expect("run the child");
    }
    let mut floor = restart_gaps(&floor_log);

    // The agent, restarting the same program after stable runs (stable_after < run time).
    let agent_log = dir.path().join("agent-children.log");
    let process = format!(
        "[[process]]\nname = \"crasher\"\ncommand = [{me:?}, \"child\", \"--log\", {agent_log:?}, \"--run-ms\", \"{run_ms}\"]\nstable_after = \"10ms\"\ncrash_loop = {{ max_exits = 1000000, window = \"1s\" }}\n",
    );
    let child = start_agent(agent, dir.path(), &process);
    wait_until("the restarts", Duration::from_secs(120), || {
        (restart_gaps(&agent_log).len() >= crashes).then_some(())
    });
    stop_agent(child);
    let mut restarts = restart_gaps(&agent_log);
    restarts.truncate(crashes);

    let (floor_median, floor_p95) = summary(&mut floor);
    let (median, p95) = summary(&mut restarts);
    println!(
        "respawn latency, exit → next start, {} restarts after a stable run ({run_ms} ms runs), containment {}",
        restarts.len(),
        CONTAINMENT.get().map_or("auto", String::as_str)
    );
    println!("  fork+exec floor (tight spawn/wait loop): median {floor_median:>10.3?}  p95 {floor_p95:>10.3?}");
    println!("  respawn-agent:                           median {median:>10.3?}  p95 {p95:>10.3?}");
    println!(
        "  ratio agent/floor:                       median {:>9.2}×  p95 {:>9.2}×",
        median.as_secs_f64() / floor_median.as_secs_f64(),
        p95.as_secs_f64() / floor_p95.as_secs_f64()
    );
}

/// Messages as they arrived: monotonic time, topic, payload.
type Stamped = std::sync::Arc<std::sync::Mutex<Vec<(u64, String, Vec<u8>)>>>;

/// A subscriber that stamps every message with the monotonic time it arrived.
fn stamping_subscriber(port: u16, filters: &[&str]) -> (rumqttc::v5::Client, Stamped) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    let mut options =
        rumqttc::v5::MqttOptions::new(format!("bench-{}", std::process::id()), "127.0.0.1", port);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let (client, mut connection) = rumqttc::v5::Client::new(options, 1024);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscribed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (seen, subscribed) = (seen.clone(), subscribed.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        let now = monotonic_ns();
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        seen.lock().unwrap().push((now, topic, p.payload.to_vec()));
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                        subscribed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
    }
    for filter in filters {
        client
            .subscribe(*filter, QoS::AtLeastOnce)
            .expect("subscribe");
    }
    wait_until("the subscriptions", Duration::from_secs(10), || {
        (subscribed.load(std::sync::atomic::Ordering::SeqCst) == filters.len()).then_some(())
    });
    (client, seen)
}

fn events(agent: &Path, crashes: usize) {
    use respawn_common::messages::{Event, EventKind};
    use rumqttc::v5::mqttbytes::QoS;
    let broker = respawn_tests::broker::Broker::start();
    let me = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temporary directory");
    let (publisher, seen) = stamping_subscriber(
        broker.port(),
        &["bench/roundtrip", "respawn/v1/bench/event"],
    );

    // The bare round trip: publish a timestamp, wait for it to come back, one at a time.
    let mut bare = Vec::new();
    for i in 0..crashes {
        let sent = monotonic_ns();
        publisher
            .publish("bench/roundtrip", QoS::AtLeastOnce, false, sent.to_string())
            .expect("publish");
        let received = wait_until("the round trip", Duration::from_secs(10), || {
            let seen = seen.lock().unwrap();
            seen.iter()
                .filter(|(_, t, _)| t == "bench/roundtrip")
                .nth(i)
                .map(|(at, _, _)| *at)
        });
        bare.push(Duration::from_nanos(received - sent));
    }

    let exits_log = dir.path().join("exits.log");
    let process = format!(
        "[mqtt]\nurl = \"{}\"\n\n[[process]]\nname = \"crasher\"\ncommand = [{me:?}, \"child\", \"--log\", {exits_log:?}, \"--run-ms\", \"20\"]\nstable_after = \"10ms\"\ncrash_loop = {{ max_exits = 1000000, window = \"1s\" }}\n",
        broker.url()
    );
    let child = start_agent(agent, dir.path(), &process);
    let arrivals: Vec<(u64, u32)> = wait_until("the exit events", Duration::from_secs(300), || {
        let seen = seen.lock().unwrap();
        let exits: Vec<(u64, u32)> = seen
            .iter()
            .filter(|(_, t, _)| t == "respawn/v1/bench/event")
            .filter_map(|(at, _, payload)| {
                let event: Event = serde_json::from_slice(payload).ok()?;
                match event.kind {
                    EventKind::Exited { pid, .. } => Some((*at, pid)),
                    _ => None,
                }
            })
            .collect();
        (exits.len() >= crashes).then_some(exits)
    });
    stop_agent(child);
    let exit_times: std::collections::HashMap<u32, u64> = std::fs::read_to_string(&exits_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            (fields.next()? == "exit").then_some(())?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .collect();
    let mut crash: Vec<Duration> = arrivals
        .iter()
        .take(crashes)
        .filter_map(|(at, pid)| Some(Duration::from_nanos(at.checked_sub(*exit_times.get(pid)?)?)))
        .collect();
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        percentile(v, q)
    };
    let (bare50, bare99) = (p(&mut bare, 0.5), p(&mut bare, 0.99));
    let (crash50, crash99) = (p(&mut crash, 0.5), p(&mut crash, 0.99));
    println!(
        "crash → event at an independent subscriber, {} crashes, {:?} broker on loopback",
        crash.len(),
        broker.kind()
    );
    println!("  bare publish→receive (QoS 1):  p50 {bare50:>10.3?}  p99 {bare99:>10.3?}");
    println!("  child exit → exited event:     p50 {crash50:>10.3?}  p99 {crash99:>10.3?}");
    println!(
        "  difference:                    p50 {:>10.3?}  p99 {:>10.3?}",
        crash50.saturating_sub(bare50),
        crash99.saturating_sub(bare99)
    );
    // The same crashes' restarts: with a broker, the exit's event goes out first.
    let mut restarts = restart_gaps(&exits_log);
    let (restart50, restart99) = (p(&mut restarts, 0.5), p(&mut restarts, 0.99));
    println!("  child exit → next start:       p50 {restart50:>10.3?}  p99 {restart99:>10.3?}");
}

fn respawnctl_path() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("respawnctl")
}

fn respawnctl(broker: &respawn_tests::broker::Broker, args: &[&str]) -> std::process::Output {
    Command::new(respawnctl_path())
        .arg("--broker")
        .arg(broker.url())
        .args(args)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", respawnctl_path().display()))
}

/// `agents` simulated agents away (their state `lost`, an offline alert each once `grace` is
/// over) and one more online, whose crashes go to a webhook: from each crash's event on the
/// broker to the webhook's request, and the alerter's CPU time while nothing happens.
fn alerts(ctl: &Path, agents: usize, crashes: usize) {
    use respawn_common::messages::{AgentState, Presence, VERSION};
    use respawn_tests::chat::ChatServer;

    // As docs/alerts.md says for a large fleet: Mosquitto queues 1000 messages per client by
    // default, and the retained state of every agent is queued for the alerter at once.
    let broker = respawn_tests::broker::Broker::mosquitto("max_queued_messages 0\n");
    let server = ChatServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let start = Instant::now();
    let presence = Presence::Lost;
    respawn_tests::sim::publish_fleet_as("127.0.0.1", broker.port(), agents, 0, presence);
    println!("published {agents} agents away in {:.2?}", start.elapsed());
    let online = AgentState {
        v: VERSION,
        agent: "bench-pi".into(),
        state: Presence::Online,
        version: None,
        host: None,
        processes: vec!["door".into()],
        session: Some(format!("{:032x}", 1)),
        since: None,
        started: None,
        heartbeat_secs: Some(30),
        containment: None,
    };
    let publisher = respawn_tests::mqtt::Observer::connect(&broker, &[]);
    let state = serde_json::to_vec(&online).expect("a state");
    publisher.publish_retained("respawn/v1/bench-pi/state", state, None);

    let state_file = dir.path().join("alerts-state.json");
    let config = dir.path().join("alerts.toml");
    let text = format!(
        "[alerts]\ngrace = \"1s\"\ngroup_window = \"0s\"\nstate_file = \"{}\"\nclient_id = \"alerts-bench\"\n\n[[target]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nagents = [\"bench-pi\"]\n",
        state_file.display(),
        server.url("/hook")
    );
    std::fs::write(&config, text).expect("write alerts.toml");
    let log = dir.path().join("alerter.log");
    let mut alerter = Command::new(ctl)
        .arg("--broker")
        .arg(broker.url())
        .arg("alerts")
        .arg("--config")
        .arg(&config)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the alerter's log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ctl.display()));
    let started = Instant::now();
    // Every agent away is an active alert once the state file says so.
    respawn_tests::wait_for(
        "an offline alert for every agent away",
        Duration::from_secs(600),
        || {
            let saved = std::fs::read_to_string(&state_file).ok()?;
            let count = saved.matches("\"offline\"").count();
            (count >= agents).then_some(())
        },
    );
    println!(
        "{agents} offline alerts active after {:.2?}",
        started.elapsed()
    );

    let pid = alerter.id();
    let (ticks, idle) = (cpu_ticks(pid), Instant::now());
    let mut latencies = Vec::new();
    for i in 0..crashes {
        let process = format!("door{i}");
        let event = serde_json::json!({
            "v": 1, "id": uuid::Uuid::new_v4().to_string(), "seq": i + 1, "agent": "bench-pi",
            "at": "2027-01-15T08:00:00Z",
            "process": process, "kind": "exited", "pid": 7, "status": {"code": 1},
            "runtime_ms": 5, "restarts": 0, "requested": false, "log_tail": [],
        });
        let sent = Instant::now();
        publisher.publish(
            "respawn/v1/bench-pi/event",
            event.to_string().into_bytes(),
            None,
        );
        let quoted = format!("\"{process}\"");
        respawn_tests::wait_for(
            "the crash at the webhook",
            Duration::from_secs(1200),
            || {
                let requests = server.requests_to("/hook");
                let body = |r: &respawn_tests::chat::Recorded| {
                    String::from_utf8_lossy(&r.body).contains(&quoted)
                };
                requests.iter().any(body).then_some(())
            },
        );
        latencies.push(sent.elapsed());
    }
    let cpu = (cpu_ticks(pid) - ticks) as f64 / 100.0 / idle.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{agents} agents away, a crash → the webhook: median {:.3?}, fastest {:.3?}, slowest {:.3?} ({crashes} crashes); the alerter busy {:.0}% of the time meanwhile",
        latencies[latencies.len() / 2],
        latencies[0],
        latencies[latencies.len() - 1],
        cpu * 100.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = alerter.wait();
}

fn fleet(agents: usize, processes: usize) {
    let broker = respawn_tests::broker::Broker::start();
    let start = Instant::now();
    respawn_tests::sim::publish_fleet("127.0.0.1", broker.port(), agents, processes);
    println!(
        "published {agents} agents × {processes} processes ({} retained messages) in {:.2?}",
        agents * (processes + 2),
        start.elapsed()
    );
    let out = respawnctl(&broker, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let seen_agents = json["agents"].as_array().map_or(0, Vec::len);
    let seen_processes: usize = json["agents"].as_array().map_or(0, |a| {
        a.iter()
            .map(|a| a["processes"].as_array().map_or(0, Vec::len))
            .sum()
    });
    assert_eq!(
        (seen_agents, seen_processes),
        (agents, agents * processes),
        "every agent and process is shown"
    );
    for args in [&["status"][..], &["status", "--json"][..]] {
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let out = respawnctl(&broker, args);
                assert!(out.status.success());
                start.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "respawnctl {}: median {:.3?}, fastest {:.3?}, slowest {:.3?} (5 runs, wall time)",
            args.join(" "),
            times[2],
            times[0],
            times[4]
        );
    }
}

fn commands(agent: &Path, restarts: usize, agents: usize) {
    use respawn_common::messages::CommandName;
    use respawn_controller::request::{self, Job, Outcome};
    use respawn_controller::session::Session;

    let broker = respawn_tests::broker::Broker::start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let key = respawn_common::signing::SigningKey::generate("bench").expect("a key");
    let worker = format!(
        "[agent]\nid = \"bench\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n[[operator]]\nname = \"bench\"\npublic_key = \"{}\"\n[mqtt]\nurl = \"{}\"\n\n[[process]]\nname = \"worker\"\ncommand = [\"sleep\", \"100000\"]\n",
        key.public_line(),
        broker.url()
    );
    std::fs::write(dir.path().join("agent.toml"), &worker).expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut child = Command::new(agent)
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .stderr(log)
        .spawn()
        .expect("agent");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = broker_settings(&broker);
    let agent_session = bench_session(&broker);
    // Unsigned and signed restarts alternate, so that both see the same machine.
    let (mut unsigned, mut signed): (Vec<Duration>, Vec<Duration>) = runtime.block_on(async {
        let mut session = Session::connect(&settings, false).await.expect("connect");
        let requester = request::requester();
        let (mut unsigned, mut signed) = (Vec::new(), Vec::new());
        for i in 0..restarts * 2 {
            let key = (i % 2 == 1).then_some(&key);
            let start = Instant::now();
            let request = request::Request {
                topics: &settings.topics,
                requester: &requester,
                command: CommandName::Restart,
                args: Default::default(),
                key,
                timeout: Duration::from_secs(10),
            };
            let results = request::send_all(
                &mut session,
                &request,
                vec![Job::new("bench", Some("worker"), Some(&agent_session))],
                |_, _| {},
            )
            .await
            .expect("send");
            assert!(matches!(results[0].1, Outcome::Succeeded(_)), "{results:?}");
            match key {
                Some(_) => signed.push(start.elapsed()),
                None => unsigned.push(start.elapsed()),
            }
        }
        session.close().await;
        (unsigned, signed)
    });
    stop_agent_child(&mut child);
    for (what, times) in [("unsigned", &mut unsigned), ("signed", &mut signed)] {
        let sorted = sorted(times);
        println!(
            "restart round trip (send → succeeded), {what}, {restarts} restarts of one process: p50 {:.3?}, p99 {:.3?}",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99)
        );
    }
    println!(
        "signed / unsigned, p50: {:.2}",
        percentile(&sorted(&mut signed), 0.5).as_secs_f64()
            / percentile(&sorted(&mut unsigned), 0.5).as_secs_f64()
    );

    // Many real agents, one command.
    let dirs: Vec<tempfile::TempDir> = (0..agents)
        .map(|_| tempfile::tempdir().expect("dir"))
        .collect();
    let mut children = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let config = worker.replace("id = \"bench\"", &format!("id = \"agent-{i:03}\""));
        std::fs::write(dir.path().join("agent.toml"), config).expect("config");
        children.push(
            Command::new(agent)
                .arg("--config")
                .arg(dir.path().join("agent.toml"))
                .stderr(Stdio::null())
                .spawn()
                .expect("agent"),
        );
    }
    wait_until("every agent online", Duration::from_secs(120), || {
        let out = respawnctl(&broker, &["status", "agent-*", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let online = json["agents"]
            .as_array()?
            .iter()
            .filter(|a| a["liveness"] == "online" && a["processes"][0]["state"] == "running")
            .count();
        (online == agents).then_some(())
    });
    let start = Instant::now();
    let out = respawnctl(&broker, &["restart", "*/worker", "--timeout", "60s"]);
    let elapsed = start.elapsed();
    let restarted = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("restarted "))
        .count();
    assert_eq!(
        restarted,
        agents,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("respawnctl restart '*/worker' across {agents} real agents: every reply in after {elapsed:.3?} (wall time of the command)");
    for child in &mut children {
        stop_agent_child(child);
    }
}

fn sorted(v: &mut [Duration]) -> Vec<Duration> {
    v.sort();
    v.to_vec()
}

fn stop_agent_child(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn rollup_kib(pid: u32, field: &str) -> u64 {
    proc_kib(pid, "smaps_rollup", field)
}

/// The `field: N kB` line of /proc/PID/`file`, in KiB (0 when absent).
fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Field n (1-based) is fields[n - 3]: utime is 14, stime 15.
    let get = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

/// CPU ticks of reaped children (cutime + cstime): during an idle run these are the `exec`
/// health probes, which run as processes of their own.
fn children_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(16 - 3)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Voluntary context switches of all threads: each one is a wake-up.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// What an idle agent reports to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reporting {
    Nothing,
    /// A private broker (`--mqtt`): Mosquitto, or the embedded one in a process of its own
    /// with `RESPAWN_TEST_BROKER=embedded`.
    Broker,
    /// The broker the agent hosts itself (`--host-broker`).
    HostedBroker,
}

fn idle(agent: &Path, children: usize, seconds: u64, reporting: Reporting, probe: Option<&str>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    // Heartbeat and keep-alive at their defaults, 30 s.
    let broker = (reporting == Reporting::Broker).then(respawn_tests::broker::Broker::start);
    let mut processes = match (&broker, reporting) {
        (Some(b), _) => format!("[mqtt]\nurl = \"{}\"\n\n", b.url()),
        (None, Reporting::HostedBroker) => format!(
            "[broker]\nlisten = \"127.0.0.1:{}\"\n\n",
            respawn_tests::broker::free_port()
        ),
        (None, _) => String::new(),
    };
    // With --probe: every child has a health check every second, against a server of its
    // own (respawn-test-app) for http and tcp.
    let app = std::env::current_exe()
        .expect("own path")
        .with_file_name("respawn-test-app")
        .display()
        .to_string();
    for i in 0..children {
        let port = respawn_tests::broker::free_port();
        let (command, health) = match probe {
            None => (r#"["sleep", "100000"]"#.to_owned(), String::new()),
            Some("http") => (
                format!(r#"["{app}", "--http", "{port}"]"#),
                format!(r#"http = "http://127.0.0.1:{port}/health""#),
            ),
            Some("tcp") => (
                format!(r#"["{app}", "--tcp", "{port}"]"#),
                format!(r#"tcp = "127.0.0.1:{port}""#),
            ),
            Some(_) => (
                r#"["sleep", "100000"]"#.to_owned(),
                r#"exec = ["true"]"#.to_owned(),
            ),
        };
        processes.push_str(&format!(
            "[[process]]\nname = \"idle-{i}\"\ncommand = {command}\n"
        ));
        if !health.is_empty() {
            processes.push_str(&format!(
                "[process.health]\n{health}\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
            ));
        }
        processes.push('\n');
    }
    let child = start_agent(agent, dir.path(), &processes);
    let pid = child.id();
    let socket = dir.path().join("state/agent.sock");
    wait_until(
        "all children running",
        Duration::from_secs(30),
        || match control::request(&socket, &Request::Status, Duration::from_secs(2)) {
            Ok(Reply::Status { processes, .. })
                if processes.len() == children
                    && processes.iter().all(|p| p.state == ProcessState::Running) =>
            {
                Some(())
            }
            _ => None,
        },
    );
    // Let start-up settle (a stable_after of 60 s arms no timer: the backoff has nothing to
    // reset), then measure.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, pss) = (rollup_kib(pid, "Rss"), rollup_kib(pid, "Pss"));
    let (ticks0, wake0, reaped0) = (cpu_ticks(pid), wakeups(pid), children_cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(seconds));
    let (ticks1, wake1, reaped1) = (cpu_ticks(pid), wakeups(pid), children_cpu_ticks(pid));
    stop_agent(child);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let reporting = match reporting {
        Reporting::Nothing => ", no broker",
        Reporting::Broker => ", reporting over MQTT",
        Reporting::HostedBroker => ", hosting its own broker and reporting to it",
    };
    let probing = match probe {
        Some(kind) => format!(", each with a 1 s {kind} health check"),
        None => String::new(),
    };
    let containment = CONTAINMENT.get().map_or("auto", String::as_str);
    println!("respawn-agent with {children} idle children{reporting}{probing}, containment {containment}");
    println!(
        "  RSS {:.2} MiB, PSS {:.2} MiB",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    println!(
        "  CPU time over {seconds} s idle: {} ms ({} wake-ups)",
        (ticks1 - ticks0) * 1000 / hz,
        wake1 - wake0
    );
    if probe == Some("exec") {
        println!(
            "  CPU time of the exec probes themselves: {} ms",
            (reaped1 - reaped0) * 1000 / hz
        );
    }
}

/// A private broker and an agent named `bench` reporting to it (unsigned commands, remote
/// configuration on), with `processes` in its local file; the agent, its directory and its
/// current session once online.
fn agent_on_broker(
    agent: &Path,
    broker: &respawn_tests::broker::Broker,
    processes: &str,
) -> (Child, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = format!(
        "[agent]\nid = \"bench\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\nremote_config = true\n[mqtt]\nurl = \"{}\"\n\n{processes}",
        broker.url()
    );
    std::fs::write(dir.path().join("agent.toml"), config).expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let child = Command::new(agent)
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent");
    let session = bench_session(broker);
    (child, dir, session)
}

/// The processes of the agent in `dir`, as (name, state).
fn local_states(dir: &Path) -> Vec<(String, ProcessState)> {
    match control::request(
        &dir.join("state/agent.sock"),
        &Request::Status,
        Duration::from_secs(5),
    ) {
        Ok(Reply::Status { processes, .. }) => {
            processes.into_iter().map(|p| (p.name, p.state)).collect()
        }
        _ => Vec::new(),
    }
}

/// Signed `config_apply` round trips for a file of `processes` processes: all added (they
/// start), all changed (they restart), all removed (they are told to stop), `rounds` times
/// each.
fn remote_config(agent: &Path, rounds: usize, processes: usize) {
    use respawn_common::messages::CommandName;
    use respawn_common::signing::sha256_hex;
    use respawn_controller::request::{self, Args, Job, Outcome};
    use respawn_controller::session::Session;

    let broker = respawn_tests::broker::Broker::start();
    let key = respawn_common::signing::SigningKey::generate("bench").expect("a key");
    // Configuring is never taken unsigned.
    let local = format!(
        "[[operator]]\nname = \"bench\"\npublic_key = \"{}\"\nallow = [\"configure\"]\n\n[[process]]\nname = \"local\"\ncommand = [\"sleep\", \"100000\"]\n",
        key.public_line()
    );
    let (mut child, dir, session) = agent_on_broker(agent, &broker, &local);
    let file = |seconds: u32| -> String {
        (0..processes)
            .map(|i| {
                format!("[[process]]\nname = \"p{i:03}\"\ncommand = [\"sleep\", \"{seconds}\"]\n\n")
            })
            .collect()
    };
    let settings = broker_settings(&broker);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let steps = [
        ("add (all start)", file(100_000), processes + 1),
        ("change (all restart)", file(100_001), processes + 1),
        ("remove (all stop)", String::new(), 1),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); steps.len()];
    runtime.block_on(async {
        let mut mqtt = Session::connect(&settings, false).await.expect("connect");
        let requester = request::requester();
        let mut current = String::new();
        for _ in 0..rounds {
            for (i, (_, text, expected)) in steps.iter().enumerate() {
                let request = request::Request {
                    topics: &settings.topics,
                    requester: &requester,
                    command: CommandName::ConfigApply,
                    args: Args {
                        text: Some(text.clone()),
                        base: Some(sha256_hex(current.as_bytes())),
                        ..Args::default()
                    },
                    key: Some(&key),
                    timeout: Duration::from_secs(30),
                };
                let start = Instant::now();
                let results = request::send_all(
                    &mut mqtt,
                    &request,
                    vec![Job::new("bench", None, Some(&session))],
                    |_, _| {},
                )
                .await
                .expect("send");
                times[i].push(start.elapsed());
                assert!(matches!(results[0].1, Outcome::Succeeded(_)), "{results:?}");
                current = text.clone();
                // Settled before the next step: every process running, the removed gone.
                wait_until("the processes to settle", Duration::from_secs(60), || {
                    let states = local_states(dir.path());
                    (states.len() == *expected
                        && states.iter().all(|(_, s)| *s == ProcessState::Running))
                    .then_some(())
                });
            }
        }
        mqtt.close().await;
    });
    stop_agent_child(&mut child);
    for ((what, text, _), times) in steps.iter().zip(&mut times) {
        let sorted = sorted(times);
        println!(
            "config_apply round trip (sent → applied → reply), {processes}-process file ({} bytes), {what}: p50 {:.1?}, max {:.1?} over {rounds}",
            text.len(),
            percentile(&sorted, 0.5),
            sorted[sorted.len() - 1]
        );
    }
}

/// A program that writes `rate` lines a second, each its wall-clock time in nanoseconds and
/// its number, one write per line.
fn paced_writer(rate: u32) -> String {
    let script = format!(
        "import sys, time\nn = 0\nstart = time.monotonic()\nwhile True:\n    n += 1\n    sys.stdout.write('%d %d\\n' % (time.time_ns(), n))\n    sys.stdout.flush()\n    wait = start + n / {rate} - time.monotonic()\n    if wait > 0:\n        time.sleep(wait)\n"
    );
    format!(
        "[[process]]\nname = \"writer\"\ncommand = [\"python3\", \"-u\", \"-c\", {}]\n",
        serde_json::Value::String(script)
    )
}

/// `respawnctl logs -f --json` on the writer, its lines as they come: (read at, wall ns).
struct Follow {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<u128>>>,
}

impl Follow {
    fn start(broker: &respawn_tests::broker::Broker) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(respawnctl_path())
            .args([
                "--broker",
                &broker.url(),
                "logs",
                "-f",
                "-n",
                "0",
                "--json",
                "bench/writer",
            ])
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("respawnctl");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let seen = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let written = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["text"].as_str()?.split(' ').next()?.parse::<u128>().ok());
                if let Some(written) = written {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(now.saturating_sub(written));
                }
            }
        });
        Self { child, lines }
    }

    fn latencies(&self) -> Vec<Duration> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(|ns| Duration::from_nanos(*ns as u64))
            .collect()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        stop_agent_child(&mut self.child);
    }
}

/// Live logs: the latency of a line from the program to `respawnctl logs -f`, at 20 and at
/// 1,000 lines a second, and the agent's CPU at 1,000 lines a second with and without a
/// follower.
fn live_logs(agent: &Path, seconds: u64) {
    let broker = respawn_tests::broker::Broker::start();
    let ticks_per_second = 100.0;
    for rate in [20, 1000] {
        let (mut child, _dir, _) = agent_on_broker(agent, &broker, &paced_writer(rate));
        let pid = child.id();
        std::thread::sleep(Duration::from_secs(2));
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(seconds));
        let alone = (cpu_ticks(pid) - before) as f64 / ticks_per_second / seconds as f64;
        let follow = Follow::start(&broker);
        wait_until("the first followed line", Duration::from_secs(30), || {
            (!follow.latencies().is_empty()).then_some(())
        });
        let before = cpu_ticks(pid);
        let from = follow.latencies().len();
        std::thread::sleep(Duration::from_secs(seconds));
        let streaming = (cpu_ticks(pid) - before) as f64 / ticks_per_second / seconds as f64;
        let mut latencies = follow.latencies().split_off(from);
        drop(follow);
        stop_agent_child(&mut child);
        let count = latencies.len();
        let sorted = sorted(&mut latencies);
        println!(
            "{rate} lines/s: {count} lines followed in {seconds} s; latency (written → printed by logs -f) p50 {:.1?}, p99 {:.1?}, max {:.1?}; agent CPU {:.2} % of a core alone, {:.2} % streaming",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted[sorted.len() - 1],
            alone * 100.0,
            streaming * 100.0
        );
    }
}

/// `respawnctl serve` on `broker`, without users, on a free port: its process and address.
fn start_hub(broker: &respawn_tests::broker::Broker) -> (Child, String) {
    start_hub_of(&respawnctl_path(), broker, &[])
}

/// `ctl serve`, with `args` after it, listening on a free port of this machine.
fn start_hub_of(
    ctl: &Path,
    broker: &respawn_tests::broker::Broker,
    args: &[&str],
) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let child = Command::new(ctl)
        .args([
            "--broker",
            &broker.url(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(args)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("respawnctl serve");
    let url = format!("http://127.0.0.1:{port}");
    let http = ureq::Agent::new_with_defaults();
    wait_until("the hub", Duration::from_secs(30), || {
        http.get(format!("{url}/metrics")).call().ok().map(drop)
    });
    (child, url)
}

/// The hub: crash → on the page (a browser-side timestamp), the first view of a large
/// simulated fleet and the hub's memory, and a `/metrics` scrape at that size.
fn dashboard(agent: &Path, crashes: usize, agents: usize) {
    use respawn_tests::webdriver::Browser;

    // Crash → visible: a process that crashes whenever a file appears, restarted at once.
    let broker = respawn_tests::broker::Broker::start();
    let trigger = tempfile::tempdir().expect("a directory");
    let crash = trigger.path().join("crash");
    let crasher = format!("[[process]]\nname = \"crasher\"\ncommand = [\"sh\", \"-c\", \"while [ ! -e {0} ]; do sleep 0.01; done; rm -f {0}; exit 3\"]\nbackoff = {{ initial = \"1ms\", max = \"1ms\" }}\ncrash_loop = {{ max_exits = 100000, window = \"1s\" }}\n", crash.display());
    let (mut child, dir, _) = agent_on_broker(agent, &broker, &crasher);
    let (mut hub, url) = start_hub(&broker);
    let browser = Browser::start(1200, 900);
    browser.goto(&format!("{url}/"));
    browser.wait(
        "the crasher on the page",
        "return document.querySelector('tr[data-process=\"crasher\"]') !== null",
    );
    // The page notes when each exit count first shows.
    browser.eval("window.seen = {}; new MutationObserver(() => { const row = document.querySelector('tr[data-process=\"crasher\"]'); if (!row) return; const n = row.children[4].innerText; if (!(n in window.seen)) window.seen[n] = Date.now(); }).observe(document.getElementById('agents'), {subtree: true, childList: true, characterData: true}); return true");
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let mut latencies = Vec::new();
    for n in 1..=crashes {
        let crashed_at = wall_ms();
        std::fs::write(&crash, "").expect("the trigger");
        let shown = browser.wait(
            "the crash on the page",
            &format!("return window.seen['{n}'] || null"),
        );
        let shown = shown.as_u64().unwrap_or(crashed_at);
        latencies.push(Duration::from_millis(shown.saturating_sub(crashed_at)));
        wait_until("the crasher back", Duration::from_secs(10), || {
            local_states(dir.path())
                .iter()
                .any(|(name, state)| name == "crasher" && *state == ProcessState::Running)
                .then_some(())
        });
    }
    drop(browser);
    stop_agent_child(&mut hub);
    stop_agent_child(&mut child);
    let latencies = sorted(&mut latencies);
    println!(
        "crash → on the page (the trigger written → the row changed, in the browser): p50 {:.0?}, p99 {:.0?}, max {:.0?} over {crashes} crashes",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // A large fleet: its first view, the hub's memory, a scrape.
    let broker = respawn_tests::broker::Broker::start();
    let processes = 10;
    respawn_tests::sim::publish_fleet("127.0.0.1", broker.port(), agents, processes);
    let started = Instant::now();
    let (mut hub, url) = start_hub(&broker);
    let http = ureq::Agent::new_with_defaults();
    wait_until("the hub to hold the fleet", Duration::from_secs(60), || {
        let text = http
            .get(format!("{url}/metrics"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let every = text.matches("respawn_agent_up{").count() == agents
            && text.matches("respawn_process_up{").count() == agents * processes;
        every.then_some(())
    });
    let loaded = started.elapsed();
    let browser = Browser::start(1200, 900);
    browser.goto(&format!("{url}/"));
    let view = browser.wait(
        "every card",
        &format!("return document.querySelectorAll('[data-agent]').length === {agents} ? performance.now() : null"),
    );
    let rss_kb = rollup_kib(hub.id(), "Rss");
    let mut scrapes: Vec<Duration> = (0..20)
        .map(|_| {
            let start = Instant::now();
            let mut response = http.get(format!("{url}/metrics")).call().expect("a scrape");
            let _ = response.body_mut().read_to_string();
            start.elapsed()
        })
        .collect();
    let size = http
        .get(format!("{url}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .map_or(0, |t| t.len());
    drop(browser);
    stop_agent_child(&mut hub);
    let scrapes = sorted(&mut scrapes);
    println!(
        "{agents} agents × {processes} processes: the hub holds them {loaded:.2?} after its start; the page shows every card {:.0} ms after navigation starts (browser clock); hub RSS {:.1} MB; /metrics ({} KB) p50 {:.1?}, max {:.1?} over 20 scrapes",
        view.as_f64().unwrap_or(0.0),
        rss_kb as f64 / 1024.0,
        size / 1024,
        percentile(&scrapes, 0.5),
        scrapes[scrapes.len() - 1]
    );
}

/// The hub of `ctl` at `agents` simulated agents of 10 processes: how soon it holds them and
/// its memory then, without and with Home Assistant discovery (every process with a Restart
/// button: five entities each); then `scrapes` scrapes of /metrics at once: how long until
/// all are answered, how long a page asked meanwhile waits, and the hub's peak memory.
fn hub(ctl: &Path, agents: usize, scrapes: usize) {
    let broker = respawn_tests::broker::Broker::start();
    let processes = 10;
    respawn_tests::sim::publish_fleet("127.0.0.1", broker.port(), agents, processes);
    let dir = tempfile::tempdir().expect("a directory");
    for (name, file) in [
        ("without Home Assistant", ""),
        ("with Home Assistant", "[homeassistant]\nallow = [\"*\"]\n"),
    ] {
        let config = dir.path().join("serve.toml");
        std::fs::write(&config, file).expect("serve.toml");
        let started = Instant::now();
        let config = config.display().to_string();
        let (mut hub, url) = start_hub_of(ctl, &broker, &["--config", &config]);
        let http = ureq::Agent::new_with_defaults();
        let page = |path: &str| {
            let mut response = http.get(format!("{url}{path}")).call().ok()?;
            whole_body(&mut response).ok()
        };
        wait_until(
            "the hub to hold the fleet",
            Duration::from_secs(120),
            || {
                let text = page("/metrics")?;
                (text.matches("respawn_process_up{").count() == agents * processes).then_some(())
            },
        );
        let loaded = started.elapsed();
        // Settled: what it publishes for Home Assistant goes out after the fleet is read.
        let mut ticks = cpu_ticks(hub.id());
        wait_until("the hub idle", Duration::from_secs(300), || {
            std::thread::sleep(Duration::from_secs(1));
            let now = cpu_ticks(hub.id());
            let idle = now.saturating_sub(ticks) < 5;
            ticks = now;
            idle.then_some(())
        });
        let settled = started.elapsed();
        let rss_kb = rollup_kib(hub.id(), "Rss");
        let peak_before_kb = status_kib(hub.id(), "VmHWM");

        let start = Instant::now();
        let scrapers: Vec<_> = (0..scrapes)
            .map(|_| {
                let url = format!("{url}/metrics");
                std::thread::spawn(move || {
                    let http = ureq::Agent::new_with_defaults();
                    let mut response = http.get(url).call().expect("a scrape");
                    whole_body(&mut response).map_or(0, |t| t.len())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        page("/login").expect("the login page");
        let page_wait = asked.elapsed();
        let sizes: Vec<usize> = scrapers
            .into_iter()
            .map(|s| s.join().expect("a scraper"))
            .collect();
        let all_answered = start.elapsed();
        let peak_kb = status_kib(hub.id(), "VmHWM");
        stop_agent_child(&mut hub);
        assert!(sizes.iter().all(|&n| n > 0), "every scrape answered");
        println!(
            "{agents} agents × {processes} processes, {name}: the hub holds them {loaded:.2?} after its start, settled after {settled:.2?}, RSS {:.0} MB; {scrapes} scrapes of /metrics ({} KB) at once: all answered in {all_answered:.2?}, /login asked meanwhile waited {page_wait:.2?}, peak RSS {:.0} MB (before them {:.0} MB)",
            rss_kb as f64 / 1024.0,
            sizes[0] / 1024,
            peak_kb as f64 / 1024.0,
            peak_before_kb as f64 / 1024.0,
        );
    }
}

/// A response's body, however large: ureq stops at 10 MB unless told, and /metrics of
/// 5,000 agents is twice that.
fn whole_body(response: &mut ureq::http::Response<ureq::Body>) -> Result<String, ureq::Error> {
    response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
}

/// A field of /proc/PID/status in KiB (`VmHWM`: the peak resident set).
fn status_kib(pid: u32, field: &str) -> u64 {
    proc_kib(pid, "status", field)
}

/// respawnctl's settings for `broker`, as the benches' controller sessions use them.
fn broker_settings(
    broker: &respawn_tests::broker::Broker,
) -> respawn_controller::settings::Settings {
    use respawn_controller::settings::{resolve, Given};
    let given = Given {
        broker: Some(broker.url()),
        ..Given::default()
    };
    resolve(&given, |_| None, None, |p| std::fs::read_to_string(p)).expect("settings")
}

/// The session of the agent `bench` on `broker`, once it is online.
fn bench_session(broker: &respawn_tests::broker::Broker) -> String {
    wait_until("the agent online", Duration::from_secs(30), || {
        let out = respawnctl(broker, &["status", "bench", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let agent = &json["agents"][0];
        (agent["liveness"] == "online")
            .then(|| agent["state"]["session"].as_str().map(str::to_owned))?
    })
}
