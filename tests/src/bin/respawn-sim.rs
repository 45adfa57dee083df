//! `respawn-sim`: a simulated fleet on a broker, for scale tests and benchmarks: retained state
//! published from one client (`respawn_tests::sim::publish_fleet`), or live agents
//! (`respawn_tests::sim::live`); `--help` says how.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use respawn_agent::config::OperatorConfig;
use respawn_common::messages::Permission;
use respawn_common::mqtt::BrokerUrl;
use respawn_common::signing::VerifyingKey;
use respawn_tests::sim::live::{self, Counters};

/// A simulated fleet on a broker, for scale tests and benchmarks: the retained state of
/// `--agents` agents published from one client (then it exits), or with `--live` as many
/// live agents, each its own connection, until it is killed.
#[derive(Parser)]
#[command(name = "respawn-sim")]
struct Args {
    /// The broker, plain MQTT.
    #[arg(long, value_name = "URL", default_value = "mqtt://127.0.0.1:1883", value_parser = broker_url)]
    broker: BrokerUrl,
    /// How many agents. Required: a mistyped option must not publish a thousand made-up
    /// agents to whatever broker the default names.
    #[arg(long, value_name = "N")]
    agents: usize,
    /// Processes of each agent.
    #[arg(long, value_name = "M", default_value_t = 10)]
    processes: usize,
    /// Live agents: each its own connection with a Last Will, answering commands signed by an
    /// --operator key. Killing the simulator at once (SIGKILL) is a site outage: the broker
    /// fires every agent's will.
    #[arg(long)]
    live: bool,
    /// The number of the first agent, to run a second simulator (a second site) beside one.
    #[arg(long, value_name = "K", default_value_t = 0, requires = "live")]
    first: usize,
    /// An operator's public key line (`respawnctl keygen`), allowed every command.
    #[arg(long = "operator", value_name = "KEY.pub", requires = "live")]
    operators: Vec<PathBuf>,
    /// How often each agent sends its heartbeat (and its birth again), as `[mqtt] heartbeat`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration, requires = "live")]
    heartbeat: Duration,
    /// Each agent crashes a process about this often.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "live")]
    crash_every: Option<Duration>,
    /// Each agent drops its connection about this often.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "live")]
    churn_every: Option<Duration>,
    /// Log in as each agent's id, without a password (for a broker with an ACL by username).
    #[arg(long, requires = "live")]
    username_is_id: bool,
}

fn broker_url(text: &str) -> Result<BrokerUrl, String> {
    BrokerUrl::parse(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("respawn-sim: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let (url, agents, processes) = (args.broker, args.agents, args.processes);
    if !args.live {
        respawn_tests::sim::publish_fleet(&url.host, url.port, agents, processes);
        println!("published {agents} agents with {processes} processes each to {url}");
        return Ok(());
    }
    let operators = args
        .operators
        .iter()
        .map(|path| operator(path))
        .collect::<Result<Vec<_>, _>>()?;
    let options = live::Options {
        host: url.host.clone(),
        port: url.port,
        first: args.first,
        agents,
        processes: processes.max(1),
        operators,
        heartbeat: args.heartbeat,
        crash_every: args.crash_every,
        churn_every: args.churn_every,
        username_is_id: args.username_is_id,
    };
    // Every agent is a file descriptor: take all the process may have.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let counters = Arc::new(Counters::default());
    runtime.spawn(report(Arc::clone(&counters), agents));
    runtime.block_on(live::run(options, counters));
    Ok(())
}

/// An operator whose public key line is in the file at `path`, allowed every command.
fn operator(path: &Path) -> Result<OperatorConfig, String> {
    let path = path.display();
    let text = std::fs::read_to_string(path.to_string())
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    let line = text.trim();
    let key = VerifyingKey::parse(line).map_err(|e| format!("{path}: {e}"))?;
    let name = VerifyingKey::line_name(line)
        .ok_or_else(|| format!("{path}: the key line names no operator"))?;
    Ok(OperatorConfig {
        name: name.to_owned(),
        key,
        allow: Permission::DEFAULT.to_vec(),
        processes: vec!["*".to_owned()],
    })
}

/// Prints `online N` once all agents are connected, then the counters every 10 s.
async fn report(counters: Arc<Counters>, agents: usize) {
    let started = tokio::time::Instant::now();
    let mut announced = false;
    for tick in 1u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let online = counters.online.load(Ordering::Relaxed);
        if !announced && online == agents {
            announced = true;
            println!("online {online} after {:.1?}", started.elapsed());
        }
        if tick % 100 == 0 {
            eprintln!(
                "respawn-sim: online {online}, commands {}, crashes {}, drops {}, subscriptions refused {} (standing {})",
                counters.commands.load(Ordering::Relaxed),
                counters.crashes.load(Ordering::Relaxed),
                counters.drops.load(Ordering::Relaxed),
                counters.refusals.load(Ordering::Relaxed),
                counters.refused.load(Ordering::Relaxed),
            );
        }
    }
}
