//! `respawn-sim --broker mqtt://HOST:PORT --agents N --processes M`: publishes the retained
//! state of a simulated fleet (see `respawn_tests::sim`), then exits; the broker keeps it.

use std::process::ExitCode;

use respawn_common::mqtt::BrokerUrl;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = arg("--broker").unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
    let Ok(url) = BrokerUrl::parse(&url) else {
        eprintln!("usage: respawn-sim --broker mqtt://HOST:PORT --agents N --processes M");
        return ExitCode::from(2);
    };
    let agents = arg("--agents").and_then(|s| s.parse().ok()).unwrap_or(1000);
    let processes = arg("--processes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    respawn_tests::sim::publish_fleet(&url.host, url.port, agents, processes);
    println!("published {agents} agents with {processes} processes each to {url}");
    ExitCode::SUCCESS
}
