//! `respawnctl alerts`: crash alerts to chat. A long-running subscriber folds the fleet's
//! events, presence, heartbeats and process states into alerts ([`rules`]), routes them to the
//! targets that want them, groups them per target ([`outbox`]) and delivers them
//! ([`send`], [`format`]) to Slack, Discord, Telegram, Matrix, ntfy and webhooks — in order,
//! retrying while a service is down, with everything kept on disk ([`store`]).
//!
//! Nothing is missed while the alerter itself is away: it keeps a persistent MQTT session,
//! so the broker queues events for it, and it acknowledges an event only once what it
//! changed is on disk.

pub mod config;
pub mod format;
pub mod outbox;
pub mod rules;
pub mod send;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use respawn_common::messages::{AgentState, Event, Heartbeat, ProcessReport};
use respawn_common::pattern::glob;
use respawn_common::topics::{Filter, Topic, Topics};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

use crate::session::{Ack, Options, Session};
use crate::settings::Settings;
use config::{AlertsConfig, TargetConfig};
use outbox::{Batch, Delivery, Outbox, Pace, Settled};
use rules::{AlertKey, Notice, Phase, Rules};
use send::{ChatSender, Http, Sender, Transport};
use store::Saved;

/// The alerter's state and decisions, without any input or output of its own: it is told
/// what arrived and what time it is, and says what to send.
pub struct Alerter {
    config: AlertsConfig,
    topics: Topics,
    rules: Rules,
    outboxes: BTreeMap<String, Outbox>,
    /// Targets with a delivery under way.
    sending: HashSet<usize>,
    /// Something changed since the state was last saved.
    dirty: bool,
}

impl Alerter {
    pub fn new(config: AlertsConfig, topics: Topics, saved: Saved) -> Self {
        let rules = Rules::new(config.rules.clone(), saved.rules);
        let mut outboxes = saved.outboxes;
        // Targets removed from the configuration take their undelivered messages with them.
        for name in outboxes.keys().cloned().collect::<Vec<_>>() {
            if !config.targets.iter().any(|t| t.name == name) {
                let left = outboxes.remove(&name).map_or(0, |o| o.len());
                if left > 0 {
                    tracing::warn!(target = %name, "{left} undelivered messages dropped: the target is no longer configured");
                }
            }
        }
        for target in &config.targets {
            outboxes.entry(target.name.clone()).or_default();
        }
        Self {
            config,
            topics,
            rules,
            outboxes,
            sending: HashSet::new(),
            dirty: false,
        }
    }

    /// The MQTT subscriptions it needs: events (shared between alerters, if configured), and
    /// the retained state, process states and heartbeats (never shared: a shared subscription
    /// gets no retained messages).
    pub fn filters(&self) -> Vec<String> {
        let events = self.topics.filter(Filter::Events);
        let events = match &self.config.shared_group {
            Some(group) => format!("$share/{group}/{events}"),
            None => events,
        };
        vec![
            events,
            self.topics.filter(Filter::States),
            self.topics.filter(Filter::Processes),
            self.topics.filter(Filter::Heartbeats),
        ]
    }

    /// One message from the broker. Anything unreadable is ignored (and said so in the
    /// debug log): the alerter must not stop because some client published nonsense.
    pub fn on_message(&mut self, now: SystemTime, topic: &str, payload: &[u8]) {
        let Some(parsed) = self.topics.parse(topic) else {
            return;
        };
        fn read<T: serde::de::DeserializeOwned>(topic: &str, payload: &[u8]) -> Option<T> {
            serde_json::from_slice(payload)
                .map_err(|e| tracing::debug!(%topic, error = %e, "ignoring an unreadable message"))
                .ok()
        }
        let notices = match parsed {
            Topic::State { agent } => {
                let state: Option<AgentState> = match payload.is_empty() {
                    true => None,
                    false => match read(topic, payload) {
                        Some(state) => Some(state),
                        None => return,
                    },
                };
                self.rules.on_presence(now, &agent, state.as_ref())
            }
            Topic::Heartbeat { agent } => {
                let heartbeat: Option<Heartbeat> = read(topic, payload);
                self.rules.on_heartbeat(now, &agent, heartbeat.as_ref())
            }
            Topic::Process { agent, process } => {
                let report: Option<ProcessReport> = match payload.is_empty() {
                    true => None,
                    false => match read(topic, payload) {
                        Some(report) => Some(report),
                        None => return,
                    },
                };
                self.rules
                    .on_process(now, &agent, &process, report.as_ref())
            }
            Topic::Event { agent } => {
                let Some(mut event) = read::<Event>(topic, payload) else {
                    return;
                };
                // The topic says whose it is (a broker ACL makes sure of that).
                event.agent = agent;
                self.rules.on_event(now, &event)
            }
            Topic::Command { .. } | Topic::Reply { .. } => return,
        };
        self.dirty = true;
        self.route(now, notices);
    }

    /// Time passes.
    pub fn tick(&mut self, now: SystemTime) {
        let notices = self.rules.tick(now);
        if !notices.is_empty() {
            self.dirty = true;
        }
        self.route(now, notices);
    }

    fn route(&mut self, now: SystemTime, notices: Vec<Notice>) {
        for notice in notices {
            let to: Vec<&TargetConfig> = self
                .config
                .targets
                .iter()
                .filter(|t| wants(t, &notice.key))
                .collect();
            let names: Vec<&str> = to.iter().map(|t| t.name.as_str()).collect();
            let phase = match notice.phase {
                Phase::Firing => "alert",
                Phase::Reminder => "reminder",
                Phase::Resolved => "resolved",
            };
            tracing::info!(
                subject = %notice.key.subject(),
                kind = notice.key.kind.as_str(),
                to = ?names,
                "{phase}"
            );
            for target in to {
                if let Some(outbox) = self.outboxes.get_mut(&target.name) {
                    outbox.push(now, notice.clone());
                }
            }
        }
    }

    fn pace(&self, target: &TargetConfig) -> Pace {
        Pace {
            group_window: self.config.group_window,
            min_interval: target.min_interval,
            retry_for: self.config.retry_for,
        }
    }

    /// The batches to send now, by target index; each target has one delivery under way at
    /// most, so that messages arrive in order.
    pub fn due(&mut self, now: SystemTime) -> Vec<(usize, Batch)> {
        let mut due = Vec::new();
        for (i, target) in self.config.targets.iter().enumerate() {
            if self.sending.contains(&i) {
                continue;
            }
            let pace = self.pace(target);
            if let Some(outbox) = self.outboxes.get_mut(&target.name) {
                if let Some(batch) = outbox.due(now, &pace) {
                    self.sending.insert(i);
                    self.dirty = true;
                    due.push((i, batch));
                }
            }
        }
        due
    }

    /// What became of a delivery to target `index`.
    pub fn settle(&mut self, now: SystemTime, index: usize, id: &str, delivery: &Delivery) {
        self.sending.remove(&index);
        let Some(target) = self.config.targets.get(index) else {
            return;
        };
        let pace = self.pace(target);
        let Some(outbox) = self.outboxes.get_mut(&target.name) else {
            return;
        };
        self.dirty = true;
        match outbox.settle(now, &pace, id, delivery) {
            Settled::Sent => tracing::info!(target = %target.name, "delivered"),
            Settled::Retry(at) => {
                let wait = at.duration_since(now).unwrap_or_default();
                let why = match delivery {
                    Delivery::RetryAfter(_) => "rate limited".to_owned(),
                    Delivery::Transient(why) | Delivery::Permanent(why) => why.clone(),
                    Delivery::Delivered => String::new(),
                };
                tracing::warn!(
                    target = %target.name,
                    queued = outbox.len(),
                    "not delivered ({why}); trying again in {}",
                    crate::output::short(wait)
                );
            }
            Settled::Dropped(why) => {
                tracing::error!(target = %target.name, "a message was dropped: {why}")
            }
        }
    }

    /// Whether the state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn saved(&self) -> Saved {
        Saved {
            rules: self.rules.state().clone(),
            outboxes: self.outboxes.clone(),
        }
    }
}

/// Whether `target` wants alerts about `key`.
pub fn wants(target: &TargetConfig, key: &AlertKey) -> bool {
    target.kinds.contains(&key.kind)
        && target.agents.iter().any(|g| glob(g, &key.agent))
        && key
            .process
            .as_deref()
            .is_none_or(|p| target.processes.iter().any(|g| glob(g, p)))
}

/// Where the state lives unless the file says: systemd's `StateDirectory=`, else beside the
/// agents' state for root, else in the user's state directory.
pub fn default_state_file() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first).join("alerts.json");
    }
    if is_root() {
        return PathBuf::from("/var/lib/respawn/alerts.json");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("respawn/alerts.json")
}

fn is_root() -> bool {
    // /proc/self belongs to this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// How often time is advanced, the state saved and events acknowledged.
const TICK: Duration = Duration::from_millis(250);

/// Runs the alerter until SIGTERM or SIGINT.
pub async fn run(settings: &Settings, config: AlertsConfig) -> Result<(), String> {
    let saved = store::load(&config.state_file)?;
    let http: Arc<dyn Transport> = Arc::new(Http::new());
    let senders: Vec<Arc<dyn Sender>> = config
        .targets
        .iter()
        .map(|t| Arc::new(ChatSender::new(t.clone(), Arc::clone(&http))) as Arc<dyn Sender>)
        .collect();
    let state_file = config.state_file.clone();
    let options = Options {
        reconnect: true,
        persistent: Some((config.client_id.clone(), config.session_expiry)),
        manual_acks: true,
    };
    let target_names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
    let mut alerter = Alerter::new(config, settings.topics.clone(), saved);
    let filters = alerter.filters();
    let mut session = Session::connect_with(settings, options)
        .await
        .map_err(|e| e.to_string())?;
    let mut acks: Vec<Ack> = Vec::new();
    for m in session
        .subscribe(&filters, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?
    {
        alerter.on_message(SystemTime::now(), &m.topic, &m.payload);
        acks.extend(m.ack);
    }
    tracing::info!(broker = %settings.broker, targets = ?target_names, state = %state_file.display(), "watching the fleet for alerts");

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, String, Delivery)>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            message = session.recv() => match message {
                Ok(m) => {
                    alerter.on_message(SystemTime::now(), &m.topic, &m.payload);
                    acks.extend(m.ack);
                }
                Err(e) => {
                    tracing::warn!("{e}; reconnecting");
                    // Acknowledgements belong to the connection: the broker sends the
                    // unacknowledged messages again, and event ids make that harmless.
                    acks.clear();
                    reconnect(&mut session, &filters, &mut alerter, &mut acks, &mut done_rx).await;
                }
            },
            Some((index, id, delivery)) = done_rx.recv() => {
                alerter.settle(SystemTime::now(), index, &id, &delivery);
            }
            _ = tick.tick() => {
                let now = SystemTime::now();
                alerter.tick(now);
                if alerter.take_dirty() {
                    if let Err(e) = store::save(&state_file, &alerter.saved()) {
                        // Not acknowledged: the broker will send these again.
                        tracing::error!("cannot save the state to {}: {e}", state_file.display());
                        continue;
                    }
                }
                for ack in acks.drain(..) {
                    if let Err(e) = session.ack(ack).await {
                        tracing::debug!(error = %e, "cannot acknowledge");
                    }
                }
                for (index, batch) in alerter.due(now) {
                    let sender = Arc::clone(&senders[index]);
                    let done = done_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let delivery = sender.send(&batch);
                        let _ = done.send((index, batch.id, delivery));
                    });
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping; undelivered alerts are kept for the next start");
    if let Err(e) = store::save(&state_file, &alerter.saved()) {
        tracing::error!("cannot save the state to {}: {e}", state_file.display());
    }
    session.close().await;
    Ok(())
}

/// Waits for the session to come back and subscribes again, settling deliveries meanwhile.
async fn reconnect(
    session: &mut Session,
    filters: &[String],
    alerter: &mut Alerter,
    acks: &mut Vec<Ack>,
    done_rx: &mut mpsc::UnboundedReceiver<(usize, String, Delivery)>,
) {
    loop {
        tokio::select! {
            connected = session.wait_connected() => {
                if connected.is_err() {
                    continue;
                }
                match session.subscribe(filters, QoS::AtLeastOnce).await {
                    Ok(early) => {
                        for m in early {
                            alerter.on_message(SystemTime::now(), &m.topic, &m.payload);
                            acks.extend(m.ack);
                        }
                        tracing::info!("reconnected");
                        return;
                    }
                    Err(e) => tracing::warn!("{e}; reconnecting"),
                }
            }
            Some((index, id, delivery)) = done_rx.recv() => {
                alerter.settle(SystemTime::now(), index, &id, &delivery);
            }
        }
    }
}

/// `respawnctl alerts test`: one test message to every target; true when all took it.
pub fn test(config: &AlertsConfig) -> bool {
    let http: Arc<dyn Transport> = Arc::new(Http::new());
    let batch = format::test_batch(SystemTime::now());
    let mut all = true;
    for target in &config.targets {
        let sender = ChatSender::new(target.clone(), Arc::clone(&http));
        let verdict = match sender.send(&batch) {
            Delivery::Delivered => "ok".to_owned(),
            Delivery::RetryAfter(wait) => {
                all = false;
                format!(
                    "rate limited: it answers, but asks to wait {}",
                    crate::output::short(wait)
                )
            }
            Delivery::Transient(why) | Delivery::Permanent(why) => {
                all = false;
                format!("failed: {why}")
            }
        };
        println!("{} ({}): {verdict}", target.name, target.channel.kind());
    }
    all
}

#[cfg(test)]
#[path = "alerter_tests.rs"]
mod tests;

/// What the alerts tests share: virtual time and a notice to start from.
#[cfg(test)]
mod testing {
    use std::time::{Duration, SystemTime};

    use super::rules::{AlertKey, AlertKind, Facts, Notice, Phase};

    /// `secs` after 2027-01-15T08:00:00Z.
    pub fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A crash of `door-pi/{process}` at `t(0)`, without details.
    pub fn crash_notice(process: &str) -> Notice {
        Notice {
            key: AlertKey {
                agent: "door-pi".into(),
                process: Some(process.into()),
                kind: AlertKind::Crashed,
            },
            phase: Phase::Firing,
            at: t(0),
            since: t(0),
            facts: Facts::default(),
        }
    }
}
