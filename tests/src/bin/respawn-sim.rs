//! `respawn-sim`: a simulated fleet on a broker, for scale tests and benchmarks.
//!
//! - `respawn-sim --agents N --processes M`: publishes the retained state of N agents from one
//!   client (`respawn_tests::sim::publish_fleet`), then exits; the broker keeps it.
//! - `respawn-sim --live --agents N …`: N live agents (`respawn_tests::sim::live`), each its own
//!   connection with a Last Will, answering commands signed by `--operator` keys, until killed.
//!   Killing it at once (SIGKILL) is a site outage: the broker fires every agent's will.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use respawn_agent::config::OperatorConfig;
use respawn_common::messages::Permission;
use respawn_common::mqtt::BrokerUrl;
use respawn_common::signing::VerifyingKey;
use respawn_tests::sim::live::{self, Counters};

const USAGE: &str = "usage: respawn-sim [--broker mqtt://HOST:PORT] --agents N [--processes M]
       respawn-sim --live [--broker URL] --agents N [--first K] [--processes M]
                   [--operator KEY.pub]... [--heartbeat 30s] [--crash-every 10m] [--churn-every 1h]
                   [--username-is-id]";

/// The options that take a value, and those that stand alone.
const WITH_VALUE: [&str; 8] = [
    "--broker",
    "--agents",
    "--processes",
    "--first",
    "--operator",
    "--heartbeat",
    "--crash-every",
    "--churn-every",
];
const SWITCHES: [&str; 2] = ["--live", "--username-is-id"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match checked(&args).and_then(|()| run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("respawn-sim: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Refuses what it does not know, and a run without `--agents`: a mistyped option must not
/// publish a thousand made-up agents to whatever broker the default names.
fn checked(args: &[String]) -> Result<(), String> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            with_value if WITH_VALUE.contains(&with_value) => {
                rest.next()
                    .ok_or_else(|| format!("{with_value} needs a value"))?;
            }
            switch if SWITCHES.contains(&switch) => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match args.iter().any(|a| a == "--agents") {
        true => Ok(()),
        false => Err("say how many agents with --agents N".to_owned()),
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let values = |name: &str| -> Vec<String> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| *a == name)
            .filter_map(|(i, _)| args.get(i + 1).cloned())
            .collect()
    };
    let value = |name: &str| values(name).pop();
    let number = |name: &str, default: usize| match value(name) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name}: {text:?} is not a number")),
        None => Ok(default),
    };
    let duration = |name: &str| {
        value(name)
            .map(|text| humantime::parse_duration(&text).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let url = value("--broker").unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let url = BrokerUrl::parse(&url).map_err(|e| e.to_string())?;
    let (agents, processes) = (number("--agents", 1000)?, number("--processes", 10)?);
    if !args.iter().any(|a| a == "--live") {
        respawn_tests::sim::publish_fleet(&url.host, url.port, agents, processes);
        println!("published {agents} agents with {processes} processes each to {url}");
        return Ok(());
    }
    let operators = values("--operator")
        .iter()
        .map(|path| operator(path))
        .collect::<Result<Vec<_>, _>>()?;
    let options = live::Options {
        host: url.host.clone(),
        port: url.port,
        first: number("--first", 0)?,
        agents,
        processes: processes.max(1),
        operators,
        heartbeat: duration("--heartbeat")?.unwrap_or(Duration::from_secs(30)),
        crash_every: duration("--crash-every")?,
        churn_every: duration("--churn-every")?,
        username_is_id: args.iter().any(|a| a == "--username-is-id"),
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
fn operator(path: &str) -> Result<OperatorConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
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
