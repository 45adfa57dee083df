//! The agent's embedded MQTT broker on its own, for the end-to-end tests: the code an agent
//! runs for `[broker]`, in a process that a test can stop and start again on the same port.
//! Usage: `respawn-test-broker 127.0.0.1:PORT SESSIONS_FILE`.

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let _logging = respawn_agent::cli::init_tracing();
    let mut args = std::env::args().skip(1);
    let listen = args.next().and_then(|a| a.parse::<SocketAddr>().ok());
    let (Some(listen), Some(sessions)) = (listen, args.next()) else {
        eprintln!("usage: respawn-test-broker ADDRESS:PORT SESSIONS_FILE");
        return ExitCode::from(2);
    };
    // Stopped by a signal, as a power cut stops an agent: what waits is not written.
    let _broker = match respawn_agent::broker::start(listen, sessions.into(), None) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        std::thread::park();
    }
}
