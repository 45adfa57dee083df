//! An MQTT broker inside the agent (rumqttd), so that a single Pi — or a new user trying the
//! quick start — needs no separate broker. A fleet of several Pis should run Mosquitto.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Starts the broker on `listen` in threads of its own and returns once it accepts
/// connections.
pub fn start(listen: SocketAddr) -> anyhow::Result<()> {
    // rumqttd reports a taken port only in its own log, from its own thread: check first.
    match TcpListener::bind(listen) {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot host the broker on {listen}: the port is taken. If a broker already runs \
             there, remove [broker] from the configuration and set [mqtt] url = \"mqtt://{listen}\""
        ),
        Err(e) => bail!("cannot host the broker on {listen}: {e}"),
    }
    let server = rumqttd::ServerSettings {
        name: "v5".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: crate::link::MAX_PACKET,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 200,
            // Segments hold the messages in flight; small ones keep the footprint small.
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v5: Some(HashMap::from([("v5".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                tracing::error!(error = %e, "the embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker")?;
    let target = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    };
    let start = Instant::now();
    while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            bail!("the embedded broker on {listen} did not start listening");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%listen, "embedded MQTT broker listening (MQTT 5)");
    Ok(())
}
