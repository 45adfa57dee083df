//! Live simulated agents, thousands in one process: each is its own MQTT 5 connection with the
//! agent's Last Will (retained `lost`), birth, retained process states and expiring heartbeats,
//! and answers signed commands after the agent's own admission check
//! ([`respawn_agent::remote::admit`]: signature, operator, session, expiry) with the agent's
//! replies. Processes do not exist: a restart is a new pid, a crash an `exited` event and a
//! `started` one. Agents can crash now and then, drop their connection now and then (the broker
//! fires their will), and a whole simulator can be killed at once: a site outage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use respawn_agent::config::OperatorConfig;
use respawn_agent::control::Outcome;
use respawn_agent::remote::{self, Policy, RecentCommands};
use respawn_common::messages::{
    AgentState, CommandBody, CommandName, CommandReply, Event, EventKind, Heartbeat, Presence,
    ProcessReport, Reason, ReplyStatus, VERSION,
};
use respawn_common::status::{ExitStatus, LogLine, ProcessState, ProcessStatus, Stream};
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};

/// Connections being opened at once: more overflow a broker's listen backlog (Mosquitto's is 100),
/// and each refused SYN waits a second to be sent again.
const CONNECTING_AT_ONCE: usize = 64;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub host: String,
    pub port: u16,
    /// The agents are `sim-{first}` … `sim-{first + agents - 1}` ([`super::agent_id`]).
    pub first: usize,
    pub agents: usize,
    /// Per agent: `worker`, `web`, then `proc-2`, `proc-3`…
    pub processes: usize,
    /// Whose signed commands the agents take.
    pub operators: Vec<OperatorConfig>,
    pub heartbeat: Duration,
    /// Each agent has one of its processes crash this often, on average.
    pub crash_every: Option<Duration>,
    /// Each agent loses its connection this often, on average, and is back 2–10 s later.
    pub churn_every: Option<Duration>,
    /// Each agent logs in with its id as its username, as agents do behind a per-agent ACL.
    pub username_is_id: bool,
}

/// What the simulated fleet has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agents connected right now.
    pub online: AtomicUsize,
    /// Commands answered (with any final reply).
    pub commands: AtomicUsize,
    pub crashes: AtomicUsize,
    /// Connections dropped on purpose (churn).
    pub drops: AtomicUsize,
    /// Subscriptions to commands the broker refused (each is asked again at the agent's
    /// next heartbeat, as the agent does).
    pub refusals: AtomicUsize,
    /// Agents whose subscription to commands stands refused: they cannot be commanded.
    pub refused: AtomicUsize,
}

/// The names of the processes of every simulated agent.
pub fn process_names(processes: usize) -> Vec<String> {
    (0..processes)
        .map(|p| match p {
            0 => "worker".to_owned(),
            1 => "web".to_owned(),
            p => format!("proc-{p}"),
        })
        .collect()
}

/// Runs the fleet until the process ends; `counters` tell how it goes.
pub async fn run(options: Options, counters: Arc<Counters>) {
    let options = Arc::new(options);
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let tasks: Vec<_> = (options.first..options.first + options.agents)
        .map(|index| {
            let agent = SimAgent::new(&options, index);
            tokio::spawn(agent.live(
                Arc::clone(&options),
                Arc::clone(&counters),
                Arc::clone(&connecting),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// One simulated agent: what it reports, and the commands it has answered.
struct SimAgent {
    id: String,
    topics: Topics,
    session: String,
    /// When the current connection was made: its births say it.
    online_since: SystemTime,
    processes: Vec<ProcessStatus>,
    recent: RecentCommands,
    seq: u64,
    next_pid: u32,
    random: u64,
    started: SystemTime,
}

/// Notes whether an agent's subscription to commands now stands refused, in `counters` too.
fn stand_refused(refused: &mut bool, now: bool, counters: &Counters) {
    match (std::mem::replace(refused, now), now) {
        (false, true) => counters.refused.fetch_add(1, Ordering::Relaxed),
        (true, false) => counters.refused.fetch_sub(1, Ordering::Relaxed),
        _ => 0,
    };
}

impl SimAgent {
    fn new(options: &Options, index: usize) -> Self {
        let now = SystemTime::now();
        let next_pid = 1000 + options.processes as u32;
        let processes = process_names(options.processes)
            .iter()
            .enumerate()
            .map(|(p, name)| super::process_status(name, 1000 + p as u32, 0, now))
            .collect();
        Self {
            id: super::agent_id(index),
            topics: Topics::default(),
            session: String::new(),
            online_since: now,
            processes,
            recent: RecentCommands::new(256),
            seq: 0,
            next_pid,
            random: (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            started: now,
        }
    }

    /// Connected, or waiting to connect again, for ever.
    async fn live(
        mut self,
        options: Arc<Options>,
        counters: Arc<Counters>,
        connecting: Arc<Semaphore>,
    ) {
        loop {
            let mut permit = connecting.clone().acquire_owned().await.ok();
            let (client, mut events) = AsyncClient::new(self.connect_options(&options), 256);
            let mut online = false;
            let mut refused = false;
            let mut heartbeat = Instant::now();
            let mut crash_at = self.after(options.crash_every);
            let churn_at = self.after(options.churn_every);
            loop {
                tokio::select! {
                    event = events.poll() => match event {
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            permit = None;
                            online = true;
                            counters.online.fetch_add(1, Ordering::Relaxed);
                            self.born(&client, &options);
                            heartbeat = Instant::now() + options.heartbeat;
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                            if self.command(&client, &options, &publish.payload) {
                                counters.commands.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                            let accepted = ack.return_codes.iter().all(respawn_common::mqtt::granted);
                            if !accepted {
                                counters.refusals.fetch_add(1, Ordering::Relaxed);
                            }
                            stand_refused(&mut refused, !accepted, &counters);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            stand_refused(&mut refused, false, &counters);
                            permit = None;
                            if std::mem::take(&mut online) {
                                counters.online.fetch_sub(1, Ordering::Relaxed);
                            }
                            // rumqttc connects again at the next poll.
                            sleep(Duration::from_secs(1)).await;
                        }
                    },
                    _ = sleep_until(heartbeat), if online => {
                        if refused {
                            let _ = client.try_subscribe(self.topics.command(&self.id), QoS::AtLeastOnce);
                        }
                        self.heartbeat(&client, &options);
                        heartbeat = Instant::now() + options.heartbeat;
                    }
                    _ = sleep_until(crash_at.unwrap_or_else(Instant::now)), if online && crash_at.is_some() => {
                        self.crash(&client);
                        counters.crashes.fetch_add(1, Ordering::Relaxed);
                        crash_at = self.after(options.crash_every);
                    }
                    _ = sleep_until(churn_at.unwrap_or_else(Instant::now)), if online && churn_at.is_some() => break,
                }
            }
            drop(permit);
            stand_refused(&mut refused, false, &counters);
            // Gone without a DISCONNECT: the broker publishes the will.
            drop(events);
            counters.online.fetch_sub(1, Ordering::Relaxed);
            counters.drops.fetch_add(1, Ordering::Relaxed);
            let away = 2 + self.next_random() % 9;
            sleep(Duration::from_secs(away)).await;
        }
    }

    fn connect_options(&self, options: &Options) -> MqttOptions {
        let mut mqtt = MqttOptions::new(
            format!("respawn-agent-{}", self.id),
            options.host.clone(),
            options.port,
        );
        if options.username_is_id {
            mqtt.set_credentials(self.id.clone(), "");
        }
        let lost = AgentState {
            v: VERSION,
            agent: self.id.clone(),
            state: Presence::Lost,
            version: Some("sim".into()),
            host: Some(self.id.clone()),
            processes: Vec::new(),
            session: None,
            since: None,
            started: Some(self.started),
            heartbeat_secs: None,
            containment: None,
        };
        mqtt.set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true)
            .set_connection_timeout(10)
            // rumqttc keeps a slot per packet id it may use: without a limit, 65,535 of them,
            // megabytes per connection.
            .set_outgoing_inflight_upper_limit(32)
            .set_last_will(LastWill::new(
                self.topics.state(&self.id),
                serde_json::to_vec(&lost).unwrap_or_default(),
                QoS::AtLeastOnce,
                true,
                None,
            ));
        mqtt
    }

    /// A moment a random time from now, `every` apart on average.
    fn after(&mut self, every: Option<Duration>) -> Option<Instant> {
        let every = every?.as_millis().max(1) as u64;
        Some(Instant::now() + Duration::from_millis(self.next_random() % (2 * every)))
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough to spread crashes and churn, and reproducible per agent.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }

    /// A new session: subscribe to commands, publish the birth, every process and a heartbeat.
    fn born(&mut self, client: &AsyncClient, options: &Options) {
        self.session = uuid::Uuid::new_v4().simple().to_string();
        self.online_since = SystemTime::now();
        let _ = client.try_subscribe(self.topics.command(&self.id), QoS::AtLeastOnce);
        self.birth(client, options);
        for index in 0..self.processes.len() {
            self.publish_process(client, index);
        }
        self.beat(client, options);
    }

    /// The birth of the current session: with each heartbeat, as the agent says it.
    fn birth(&self, client: &AsyncClient, options: &Options) {
        let birth = AgentState {
            v: VERSION,
            agent: self.id.clone(),
            state: Presence::Online,
            version: Some("sim".into()),
            host: Some(self.id.clone()),
            processes: self.processes.iter().map(|p| p.name.clone()).collect(),
            session: Some(self.session.clone()),
            since: Some(self.online_since),
            started: Some(self.started),
            heartbeat_secs: Some(options.heartbeat.as_secs()),
            containment: Some("cgroup".into()),
        };
        publish(client, self.topics.state(&self.id), &birth, true, None);
    }

    fn heartbeat(&self, client: &AsyncClient, options: &Options) {
        self.birth(client, options);
        self.beat(client, options);
    }

    fn beat(&self, client: &AsyncClient, options: &Options) {
        let count = self.processes.len() as u32;
        let running = self.processes.iter().filter(|p| p.pid.is_some()).count();
        let heartbeat = Heartbeat {
            v: VERSION,
            agent: self.id.clone(),
            at: SystemTime::now(),
            interval_secs: options.heartbeat.as_secs(),
            uptime_secs: self.started.elapsed().unwrap_or_default().as_secs(),
            running: running as u32,
            processes: count,
            load1: Some(0.1),
            mem_total_kb: Some(512_000),
            mem_available_kb: Some(300_000),
            cpu_temp_c: Some(48.0),
        };
        let expiry = PublishProperties {
            message_expiry_interval: Some((options.heartbeat.as_secs() * 3).max(1) as u32),
            ..Default::default()
        };
        let topic = self.topics.heartbeat(&self.id);
        publish(client, topic, &heartbeat, true, Some(expiry));
    }

    fn publish_process(&self, client: &AsyncClient, index: usize) {
        let status = self.processes[index].clone();
        let topic = self.topics.process(&self.id, &status.name);
        let report = ProcessReport {
            v: VERSION,
            agent: self.id.clone(),
            status,
            notify: Default::default(),
        };
        publish(client, topic, &report, true, None);
    }

    fn event(&mut self, client: &AsyncClient, process: &str, kind: EventKind) {
        self.seq += 1;
        let event = Event {
            v: VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            seq: self.seq,
            agent: self.id.clone(),
            at: SystemTime::now(),
            process: Some(process.to_owned()),
            dropped_before: 0,
            kind,
        };
        publish(client, self.topics.event(&self.id), &event, false, None);
    }

    /// A process exits with code 1 and is started again at once.
    fn crash(&mut self, client: &AsyncClient) {
        let index = (self.next_random() % self.processes.len() as u64) as usize;
        let Some(old_pid) = self.processes[index].pid else {
            return;
        };
        let new_pid = self.new_pid();
        let process = &mut self.processes[index];
        process.restarts += 1;
        let (name, restarts) = (process.name.clone(), process.restarts);
        let ran = process.since.elapsed().unwrap_or_default();
        let exited = EventKind::Exited {
            pid: old_pid,
            status: ExitStatus::Code { code: 1 },
            runtime_ms: ran.as_millis() as u64,
            restarts: restarts - 1,
            requested: false,
            shutdown: false,
            leftover: false,
            scheduled: false,
            killed_at_stop_timeout: false,
            // Started again at once, as after a stable run.
            next_start: Some(SystemTime::now()),
            reason: None,
            log_tail: vec![log_line(format!("{name}: simulated crash"))],
            log_truncated: false,
            oom_killed: false,
            memory_max: None,
        };
        self.event(client, &name, exited);
        self.run_as(index, Some(new_pid));
        self.event(
            client,
            &name,
            EventKind::Started {
                pid: new_pid,
                restarts,
            },
        );
        self.publish_process(client, index);
    }

    fn new_pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn run_as(&mut self, index: usize, pid: Option<u32>) {
        let process = &mut self.processes[index];
        process.pid = pid;
        process.since = SystemTime::now();
        process.state = match pid {
            Some(_) => ProcessState::Running,
            None => ProcessState::Stopped,
        };
        process.manually_stopped = pid.is_none();
    }

    /// Answers a command as the agent does; returns whether it was answered at all.
    fn command(&mut self, client: &AsyncClient, options: &Options, payload: &[u8]) -> bool {
        let policy = Policy {
            operators: &options.operators,
            allow_unsigned: false,
            session: &self.session,
        };
        let names: Vec<String> = self.processes.iter().map(|p| p.name.clone()).collect();
        let configured = |name: &str| names.iter().any(|n| n == name);
        let admitted = remote::admit(payload, &self.id, SystemTime::now(), configured, policy);
        let (requester, replies) = match admitted {
            Err(rejection) => {
                let Some((cmd_id, requester)) = rejection.addressable() else {
                    return false;
                };
                let reply =
                    CommandReply::rejected(cmd_id, &self.id, rejection.reason, &rejection.message);
                (requester.to_owned(), vec![reply])
            }
            Ok(admitted) => {
                let body = admitted.body;
                let replies = match self.recent.replay(&body.cmd_id, &self.id) {
                    Some(replay) => vec![replay],
                    None => self.carry_out(client, &body),
                };
                (body.requester, replies)
            }
        };
        let topic = self.topics.reply(&self.id, &requester);
        for reply in &replies {
            let _ = self.recent.record(reply);
            publish(client, topic.clone(), reply, false, None);
        }
        true
    }

    fn carry_out(&mut self, client: &AsyncClient, body: &CommandBody) -> Vec<CommandReply> {
        let (cmd_id, id) = (body.cmd_id.as_str(), self.id.clone());
        let accepted = CommandReply::new(cmd_id, &id, ReplyStatus::Accepted);
        let mut done = CommandReply::new(cmd_id, &id, ReplyStatus::Succeeded);
        let index = body
            .process
            .as_ref()
            .and_then(|name| self.processes.iter().position(|p| &p.name == name));
        let (command, Some(index)) = (body.command, index) else {
            return match body.command {
                CommandName::Status => {
                    done.processes = Some(self.processes.clone());
                    vec![done]
                }
                _ => vec![CommandReply::rejected(
                    cmd_id,
                    &id,
                    Reason::RemoteConfigOff,
                    "this agent does not take its processes over the network ([agent] remote_config)",
                )],
            };
        };
        let name = self.processes[index].name.clone();
        let pid = self.processes[index].pid;
        let outcome = match (command, pid) {
            (CommandName::Restart, old_pid) => {
                let new_pid = self.new_pid();
                self.run_as(index, Some(new_pid));
                Outcome::Restarted { old_pid, new_pid }
            }
            (CommandName::Start, Some(pid)) => Outcome::AlreadyRunning { pid },
            (CommandName::Start, None) => {
                let pid = self.new_pid();
                self.run_as(index, Some(pid));
                Outcome::Started { pid }
            }
            (CommandName::Stop, None) => Outcome::AlreadyStopped,
            (CommandName::Stop, Some(_)) => {
                self.run_as(index, None);
                Outcome::Stopped
            }
            (CommandName::Logs, _) => {
                let lines = body.lines.unwrap_or(remote::DEFAULT_LOG_LINES).min(3);
                done.lines = Some(
                    (0..lines)
                        .map(|n| log_line(format!("{name}: simulated line {n}")))
                        .collect(),
                );
                return vec![done];
            }
            _ => {
                let message = format!("a simulated agent does not {:?}", body.command);
                return vec![CommandReply::rejected(
                    cmd_id,
                    &id,
                    Reason::UnknownCommand,
                    message,
                )];
            }
        };
        self.publish_process(client, index);
        done.message = Some(outcome.sentence(&name));
        match outcome {
            Outcome::Started { pid } | Outcome::AlreadyRunning { pid } => done.new_pid = Some(pid),
            Outcome::Restarted { old_pid, new_pid } => {
                done.old_pid = old_pid;
                done.new_pid = Some(new_pid);
            }
            Outcome::Stopped | Outcome::AlreadyStopped => {}
        }
        vec![accepted, done]
    }
}

fn log_line(text: String) -> LogLine {
    LogLine {
        at: SystemTime::now(),
        stream: Stream::Stderr,
        text,
    }
}

/// Queues a QoS 1 publish without waiting: the task that queues is the one that drives the
/// connection, so waiting for room would wait for ever.
fn publish(
    client: &AsyncClient,
    topic: String,
    payload: &impl serde::Serialize,
    retain: bool,
    properties: Option<PublishProperties>,
) {
    let Ok(payload) = serde_json::to_vec(payload) else {
        return;
    };
    let _ = match properties {
        Some(p) => client.try_publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, p),
        None => client.try_publish(topic, QoS::AtLeastOnce, retain, payload),
    };
}
