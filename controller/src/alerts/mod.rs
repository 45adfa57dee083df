//! `respawnctl alerts`: crash alerts to chat. A long-running subscriber folds the fleet's
//! events, presence, heartbeats and process states into alerts ([`rules`]), routes them to the
//! targets that want them, groups them per target ([`outbox`]) and delivers them
//! ([`send`], [`format`](mod@format)) to Slack, Discord, Telegram, Matrix, ntfy and webhooks —
//! in order, retrying while a service is down, with everything kept on disk ([`store`]).
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

use crate::session::{Ack, Handle, Message, Options, Session, SessionError};
use crate::settings::Settings;
use config::{AlertsConfig, TargetConfig};
use outbox::{Batch, Delivery, Outbox, Pace, Settled};
use rules::{AlertKey, AlertKind, Notice, Phase, Rules};
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
                // Heartbeats come often and change nothing worth saving by themselves.
                let heartbeat: Option<Heartbeat> = read(topic, payload);
                let notices = self.rules.on_heartbeat(now, &agent, heartbeat.as_ref());
                if !notices.is_empty() {
                    self.dirty = true;
                }
                return self.route(now, notices);
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
            Topic::Command { .. } | Topic::Reply { .. } | Topic::Logs { .. } => return,
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

    /// Whether some target takes the alert of a lost broker.
    pub fn pages_the_broker(&self) -> bool {
        let kinds = self.config.targets.iter().flat_map(|t| &t.kinds);
        kinds
            .into_iter()
            .any(|k| *k == AlertKind::BrokerUnreachable)
    }

    /// Messages not delivered yet, to every target.
    pub fn undelivered(&self) -> usize {
        self.outboxes.values().map(Outbox::len).sum()
    }

    /// Whether the state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The state could not be saved: it is still to be.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The connection to `broker` was lost, or a new attempt failed, for `why`: the fleet's
    /// clocks stand still and only the broker is alerted, until [`Alerter::reached_broker`].
    pub fn lost_broker(&mut self, now: SystemTime, broker: &str, why: &str) {
        self.rules.lost_broker(now, broker, why);
    }

    /// Connected to `broker` and subscribed, at the start or again: the broker's alert is
    /// over, and the clocks of silence and absence start afresh (the retained state that
    /// follows says where everyone is).
    pub fn reached_broker(&mut self, now: SystemTime, broker: &str) {
        let notices = self.rules.reached_broker(now, broker);
        if !notices.is_empty() {
            self.dirty = true;
        }
        self.route(now, notices);
    }

    pub fn saved(&self) -> Saved {
        Saved {
            rules: self.rules.state().clone(),
            outboxes: self.outboxes.clone(),
        }
    }
}

/// Whether `target` wants alerts about `key`. The broker's alert is about every agent, and
/// passes every filter but `kinds`.
pub fn wants(target: &TargetConfig, key: &AlertKey) -> bool {
    if key.kind == AlertKind::BrokerUnreachable {
        return target.kinds.contains(&key.kind);
    }
    target.kinds.contains(&key.kind)
        && target.agents.iter().any(|g| glob(g, &key.agent))
        && key
            .process
            .as_deref()
            .is_none_or(|p| target.processes.iter().any(|g| glob(g, p)))
}

/// Where the state lives unless the file says: systemd's `StateDirectory=`, else where the
/// alerts unit keeps it for root (not in the agent's /var/lib/respawn, which purging the agent's
/// package removes), else in the user's state directory.
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
        return PathBuf::from("/var/lib/respawn-alerts/alerts.json");
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

/// How often time is advanced and deliveries started.
const TICK: Duration = Duration::from_millis(250);

/// How often the state is saved and events acknowledged, at most: every save rewrites the
/// file, and SD cards wear.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// What the MQTT side tells the alerter.
enum FromBroker {
    /// The first connection is made: acknowledgements go through this handle.
    Connected(Handle),
    Message(Box<Message>),
    /// The connection was lost; acknowledgements owed on it are void.
    Lost(String),
    /// An attempt to connect (again) or subscribe failed; another follows.
    NotBack(String),
    /// Subscribed (again): retained state is on its way afresh.
    Subscribed,
}

/// How long to wait between two attempts to reach the broker: at most a second, as what an
/// agent's embedded broker publishes before the alerter is back is queued for no one. A
/// refusal (a login, TLS files, the ACL) is tried again less often: only a change of
/// configuration mends it.
const RETRY: Duration = Duration::from_secs(1);
const RETRY_REFUSED: Duration = Duration::from_secs(10);

fn retry_after(error: &SessionError) -> Duration {
    match error {
        SessionError::Refused { .. }
        | SessionError::Tls(_)
        | SessionError::SubscriptionRefused(_) => RETRY_REFUSED,
        _ => RETRY,
    }
}

/// Connects, subscribes and receives for the alerter, connecting and subscribing again as
/// needed, so that the alerter itself never waits for the broker, and never gives up on it:
/// a broker that is not there, or refuses it, is alerted after `grace` with why.
async fn receive(
    settings: Settings,
    options: Options,
    filters: Vec<String>,
    to: mpsc::UnboundedSender<FromBroker>,
) {
    let tell = |message| to.send(message).is_ok();
    let mut session = loop {
        match Session::connect_with(&settings, options.clone()).await {
            Ok(session) => break session,
            Err(e) if tell(FromBroker::NotBack(e.to_string())) => {
                tokio::time::sleep(retry_after(&e)).await
            }
            Err(_) => return,
        }
    };
    if !tell(FromBroker::Connected(session.handle())) {
        return;
    }
    loop {
        let subscribed = match session.wait_connected().await {
            Ok(()) => session.subscribe(&filters, QoS::AtLeastOnce).await,
            Err(e) => Err(e),
        };
        match subscribed {
            Ok(early) => {
                let told = early
                    .into_iter()
                    .all(|m| tell(FromBroker::Message(Box::new(m))));
                if !told || !tell(FromBroker::Subscribed) {
                    return;
                }
            }
            Err(e) if tell(FromBroker::NotBack(e.to_string())) => {
                tokio::time::sleep(retry_after(&e)).await;
                continue;
            }
            Err(_) => return,
        }
        let lost = loop {
            match session.recv().await {
                Ok(m) => {
                    if !tell(FromBroker::Message(Box::new(m))) {
                        return;
                    }
                }
                Err(e) => break e,
            }
        };
        if !tell(FromBroker::Lost(lost.to_string())) {
            return;
        }
    }
}

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
        retry_at_most: Some(RETRY),
    };
    let target_names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
    // Which alerter lost the broker, where several share it.
    let client_id = config.client_id.clone();
    let why = |e: &str| format!("{client_id}: {e}");
    let mut alerter = Alerter::new(config, settings.topics.clone(), saved);
    let broker_url = settings.broker.to_string();
    // Not there yet: until it is, this counts as a broker away since the start.
    alerter.lost_broker(SystemTime::now(), &broker_url, &why("not reached yet"));
    let (from_broker_tx, mut from_broker) = mpsc::unbounded_channel();
    let receiver = tokio::spawn(receive(
        settings.clone(),
        options,
        alerter.filters(),
        from_broker_tx,
    ));
    let mut broker: Option<Handle> = None;
    let mut acks: Vec<Ack> = Vec::new();
    let mut watching = false;
    // Why the broker cannot be had, as last logged: each reason once while it lasts.
    let mut told_why: Option<String> = None;
    let paged = match alerter.pages_the_broker() {
        true => "the broker is alerted after `grace`",
        false => "no target's `kinds` has broker_unreachable",
    };

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, String, Delivery)>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut saved_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            Some(event) = from_broker.recv() => match event {
                FromBroker::Connected(handle) => broker = Some(handle),
                FromBroker::Message(m) => {
                    alerter.on_message(SystemTime::now(), &m.topic, &m.payload);
                    acks.extend(m.ack);
                }
                FromBroker::Lost(e) => {
                    tracing::warn!("{e}; reconnecting (deliveries go on; no agent is timed out meanwhile; {paged})");
                    told_why = Some(e.clone());
                    alerter.lost_broker(SystemTime::now(), &broker_url, &why(&e));
                    // Acknowledgements belong to the connection: the broker sends the
                    // unacknowledged messages again, and event ids make that harmless.
                    acks.clear();
                }
                FromBroker::NotBack(e) => {
                    if told_why.as_ref() != Some(&e) {
                        tracing::warn!("{e}; trying again ({paged})");
                        told_why = Some(e.clone());
                    }
                    alerter.lost_broker(SystemTime::now(), &broker_url, &why(&e));
                }
                FromBroker::Subscribed => {
                    told_why = None;
                    if watching {
                        tracing::info!("reconnected");
                    } else {
                        watching = true;
                        tracing::info!(broker = %settings.broker, %client_id, targets = ?target_names, state = %state_file.display(), "watching the fleet for alerts");
                    }
                    // Clocks kept from the last run or the outage would make every agent
                    // look silent for that long.
                    alerter.reached_broker(SystemTime::now(), &broker_url);
                }
            },
            Some((index, id, delivery)) = done_rx.recv() => {
                alerter.settle(SystemTime::now(), index, &id, &delivery);
            }
            _ = tick.tick() => {
                let now = SystemTime::now();
                alerter.tick(now);
                let due = alerter.due(now);
                // Saved before anything is sent or acknowledged: what the broker forgets
                // and what a service may already have must be on disk.
                let save_due = saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY) || !due.is_empty();
                if save_due && alerter.take_dirty() {
                    saved_at = Some(std::time::Instant::now());
                    if let Err(e) = store::save(&state_file, &alerter.saved()) {
                        tracing::error!("cannot save the state to {}: {e}; events stay unacknowledged", state_file.display());
                        alerter.mark_dirty();
                    }
                }
                if let (false, Some(broker)) = (alerter.is_dirty(), &broker) {
                    for ack in acks.drain(..) {
                        if let Err(e) = broker.ack(ack).await {
                            tracing::debug!(error = %e, "cannot acknowledge");
                        }
                    }
                }
                for (index, batch) in due {
                    let sender = Arc::clone(&senders[index]);
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let id = batch.id.clone();
                        let delivery = tokio::task::spawn_blocking(move || sender.send(&batch))
                            .await
                            .unwrap_or_else(|e| Delivery::Transient(format!("the delivery failed: {e}")));
                        let _ = done.send((index, id, delivery));
                    });
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    match alerter.undelivered() {
        0 => tracing::info!("stopping"),
        n => tracing::info!("stopping; {n} undelivered messages are kept for the next start"),
    }
    if let Err(e) = store::save(&state_file, &alerter.saved()) {
        tracing::error!("cannot save the state to {}: {e}", state_file.display());
    }
    receiver.abort();
    if let Some(broker) = broker {
        broker.disconnect().await;
    }
    Ok(())
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
