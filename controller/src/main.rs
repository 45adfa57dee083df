//! `respawnctl`, the operator's command line. Its fleet commands need the agents' MQTT link;
//! until that lands it only identifies itself.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "respawnctl {}: fleet commands are not available yet; on the agent's machine use `respawn-agent status|start|stop|restart|logs`",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
