//! Fleet simulators: [`publish_fleet`] publishes the retained state of many agents (birth,
//! heartbeat, every process) from one client, for scale tests of what reads the fleet; [`live`]
//! runs agents that are each their own connection, with a Last Will, and answer commands.

pub mod live;

use std::time::{Duration, SystemTime};

use respawn_common::messages::{AgentState, Heartbeat, Presence, ProcessReport, VERSION};
use respawn_common::status::{ExitRecord, ExitStatus, ProcessState, ProcessStatus, Usage};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

/// The id of simulated agent `i`.
pub fn agent_id(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Publishes `agents` agents with `processes` processes each to the broker at `host:port`, and
/// returns once the broker has them all.
pub fn publish_fleet(host: &str, port: u16, agents: usize, processes: usize) {
    publish_fleet_as(host, port, agents, processes, Presence::Online);
}

/// As [`publish_fleet`], the agents each in `presence`.
pub fn publish_fleet_as(
    host: &str,
    port: u16,
    agents: usize,
    processes: usize,
    presence: Presence,
) {
    let mut options = MqttOptions::new(format!("respawn-sim-{}", std::process::id()), host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_outgoing_inflight_upper_limit(256);
    let (client, mut connection) = Client::new(options, 1024);
    let marker = format!("respawn-sim/done/{}", std::process::id());
    let done = std::thread::spawn({
        let marker = marker.clone();
        move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == marker.as_bytes() => {
                        return true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("respawn-sim: {e}");
                        return false;
                    }
                }
            }
            false
        }
    });
    client
        .subscribe(marker.as_str(), QoS::AtLeastOnce)
        .expect("subscribe");
    let now = SystemTime::now();
    for i in 0..agents {
        let agent = agent_id(i);
        let names: Vec<String> = (0..processes).map(|p| format!("proc-{p}")).collect();
        let state = AgentState {
            v: VERSION,
            agent: agent.clone(),
            state: presence,
            version: Some("sim".into()),
            host: Some(agent.clone()),
            processes: names.clone(),
            session: Some(format!("{i:032x}")),
            since: Some(now),
            started: None,
            heartbeat_secs: Some(30),
            containment: Some("cgroup".into()),
        };
        publish(&client, format!("respawn/v1/{agent}/state"), &state, None);
        let heartbeat = Heartbeat {
            v: VERSION,
            agent: agent.clone(),
            at: now,
            interval_secs: 30,
            uptime_secs: 3600,
            running: processes as u32,
            processes: processes as u32,
            load1: Some(0.1),
            mem_total_kb: Some(512_000),
            mem_available_kb: Some(300_000),
            cpu_temp_c: Some(48.0),
        };
        let expiry = PublishProperties {
            message_expiry_interval: Some(3600),
            ..Default::default()
        };
        publish(
            &client,
            format!("respawn/v1/{agent}/heartbeat"),
            &heartbeat,
            Some(expiry),
        );
        for (p, name) in names.iter().enumerate() {
            let report = ProcessReport {
                v: VERSION,
                agent: agent.clone(),
                status: process_status(name, 1000 + p as u32, (i + p) as u32 % 4, now),
                notify: Default::default(),
            };
            publish(
                &client,
                format!("respawn/v1/{agent}/proc/{name}"),
                &report,
                None,
            );
        }
    }
    // The broker handles a client's packets in order: once the marker comes back, it has
    // everything published before it.
    client
        .publish(marker.as_str(), QoS::AtLeastOnce, false, "done")
        .expect("publish");
    assert!(
        done.join().unwrap_or(false),
        "the simulated fleet was not accepted"
    );
    let _ = client.disconnect();
}

/// A running process of a simulated agent, with a past crash and some usage.
pub fn process_status(name: &str, pid: u32, restarts: u32, now: SystemTime) -> ProcessStatus {
    ProcessStatus {
        name: name.to_owned(),
        state: ProcessState::Running,
        pid: Some(pid),
        since: now,
        restarts,
        crash_loop: false,
        crash_loop_since: None,
        manually_stopped: false,
        last_exit: Some(ExitRecord {
            status: ExitStatus::Code { code: 1 },
            at: now,
            runtime_ms: 1000,
            restarts: 0,
            requested: false,
            next_start: Some(now),
            reason: None,
            oom_killed: false,
            memory_max: None,
            scheduled: false,
            killed_at_stop_timeout: false,
        }),
        spawn_error: None,
        next_start: None,
        health: None,
        remote: false,
        usage: Some(Usage {
            cpu_seconds: 12.5 + f64::from(pid % 10),
            cpu_percent: Some(0.4),
            memory_bytes: 24_000_000 + u64::from(pid) * 1000,
        }),
    }
}

fn publish(
    client: &Client,
    topic: String,
    payload: &impl serde::Serialize,
    properties: Option<PublishProperties>,
) {
    let payload = serde_json::to_vec(payload).expect("serialise");
    match properties {
        Some(p) => client.publish_with_properties(topic, QoS::AtLeastOnce, true, payload, p),
        None => client.publish(topic, QoS::AtLeastOnce, true, payload),
    }
    .expect("publish");
}
