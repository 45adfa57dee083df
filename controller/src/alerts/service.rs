//! `respawnctl alerts` as a service: the connection to the broker, kept (connecting and
//! subscribing again as long as it takes, and telling the [`Alerter`] when it has none), and
//! the loop that feeds the alerter what arrives and the time, saves its state, acknowledges
//! events once saved and carries out its deliveries; and `respawnctl alerts test`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

use super::config::AlertsConfig;
use super::outbox::Delivery;
use super::send::{ChatSender, Http, Sender, Transport};
use super::{format, store, Alerter};
use crate::session::{Ack, Handle, Message, Options, Session, SessionError};
use crate::settings::Settings;

/// How often time is advanced and deliveries started while something waits: a message in
/// its grouping window or queued, a delivery under way, a state to save, an acknowledgement
/// owed.
const TICK: Duration = Duration::from_millis(250);

/// How often time is advanced while nothing waits: what comes due then (an agent's grace, a
/// recovery's `resolve_after`, a reminder) is counted in seconds and minutes, and a tick four
/// times a second made the idle alerter the busiest of an operator's processes (found by a
/// soak).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How often the state is saved and events acknowledged, at most: every save rewrites the
/// file, and SD cards wear.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// How long a stop waits for the deliveries under way: their request's timeout, and a little.
const STOP_WAIT: Duration = Duration::from_secs(25);

/// What the MQTT side tells the alerter.
enum FromBroker {
    /// A session is made (a new one should the last one's task end): acknowledgements go
    /// through this handle.
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
    'sessions: loop {
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
                // The session paces its own attempts to connect again; a refused
                // subscription, on a connection that is up, is tried again after a while; a
                // session whose task ended tries no more, and a new one takes over.
                Err(e) if tell(FromBroker::NotBack(e.to_string())) => {
                    match e {
                        SessionError::SubscriptionRefused(_) => {
                            tokio::time::sleep(RETRY_REFUSED).await
                        }
                        SessionError::Closed => {
                            tokio::time::sleep(RETRY).await;
                            continue 'sessions;
                        }
                        _ => {}
                    }
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
}

/// How to read the log of the service this process runs as, from its `/proc/self/cgroup`:
/// `None` outside a systemd service (a shell, a container), where no command would be right.
fn journal_command(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|line| {
        let (hierarchy, path) = line
            .split_once(':')
            .map(|(_, rest)| rest.split_once(':'))??;
        (hierarchy.is_empty() || hierarchy == "name=systemd").then_some(path)
    })?;
    // The innermost service (one may keep sub-cgroups), unless a login's scope is inside it.
    let unit = path
        .rsplit('/')
        .take_while(|part| !part.ends_with(".scope"))
        .find(|part| part.ends_with(".service"))?;
    let user = path.contains("/user@") && !unit.starts_with("user@");
    let scope = if user { "--user " } else { "" };
    // As a shell reads it: systemd escapes some characters with backslashes.
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.@:".contains(c);
    let unit = match unit.chars().all(plain) {
        true => unit.to_owned(),
        false => format!("'{}'", unit.replace('\'', "")),
    };
    Some(format!("journalctl {scope}-u {unit} -n 50"))
}

/// Runs the alerter until SIGTERM or SIGINT.
pub async fn run(settings: &Settings, config: AlertsConfig) -> Result<(), String> {
    let saved = store::load(&config.state_file)?;
    // Events are acknowledged only once the state is on disk: an alerter that cannot write it
    // would take ever fewer events from the broker without a word. Said now, not in a crash.
    store::save(&config.state_file, &saved).map_err(|e| {
        format!(
            "cannot write the state file {}: {e} (set state_file in alerts.toml to a writable place)",
            config.state_file.display()
        )
    })?;
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
        will: None,
    };
    let target_names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
    // Which alerter lost the broker, where several share it.
    let client_id = config.client_id.clone();
    let why = |e: &str| format!("{client_id}: {e}");
    let mut config = config;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    config.rules.own_log = journal_command(&cgroup);
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
    let mut ticked = tokio::time::Instant::now();
    let mut stop = crate::stop::Stop::on_ctrl_c_or_term()
        .map_err(|e| format!("cannot watch for Ctrl-C and SIGTERM: {e}"))?;
    let mut saved_at: Option<std::time::Instant> = None;
    let mut delivering = 0usize;
    // Whether the last save failed, and whether messages waiting for one were said to.
    let (mut save_failing, mut withheld) = (false, false);
    loop {
        let waiting = alerter.undelivered() > 0 || delivering > 0 || alerter.is_dirty();
        let next_tick = ticked
            + if waiting || !acks.is_empty() {
                TICK
            } else {
                IDLE_TICK
            };
        tokio::select! {
            Some(event) = from_broker.recv() => match event {
                FromBroker::Connected(handle) => broker = Some(handle),
                FromBroker::Message(m) => {
                    alerter.heard(&m);
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
                delivering = delivering.saturating_sub(1);
                alerter.settle(SystemTime::now(), index, &id, &delivery);
            }
            _ = tokio::time::sleep_until(next_tick) => {
                ticked = tokio::time::Instant::now();
                let now = SystemTime::now();
                alerter.tick(now);
                let due = alerter.due(now);
                // Saved before anything is sent or acknowledged: what the broker forgets
                // and what a service may already have must be on disk.
                // A save that failed is tried again at the usual pace, not at every tick that
                // has a message waiting for it.
                let save_due = saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY)
                    || (!due.is_empty() && !save_failing);
                if save_due && alerter.take_dirty() {
                    saved_at = Some(std::time::Instant::now());
                    match store::save(&state_file, &alerter.saved()) {
                        Ok(()) if save_failing => {
                            tracing::info!("the state is saved again to {}", state_file.display());
                            (save_failing, withheld) = (false, false);
                        }
                        Ok(()) => {}
                        Err(e) if save_failing => {
                            tracing::debug!(error = %e, "still cannot save the state");
                            alerter.mark_dirty();
                        }
                        Err(e) => {
                            tracing::error!("cannot save the state to {}: {e}; events stay unacknowledged until it is (tried again every {}s)", state_file.display(), SAVE_EVERY.as_secs());
                            save_failing = true;
                            alerter.mark_dirty();
                        }
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
                    // Unsaved, a message sent now would be sent again by the next start.
                    if alerter.is_dirty() {
                        alerter.put_back(index);
                        if !std::mem::replace(&mut withheld, true) {
                            tracing::warn!("messages wait until the state is saved: sent now, they would be sent again by the next start");
                        }
                        continue;
                    }
                    delivering += 1;
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
            _ = stop.heard() => break,
        }
    }
    // A delivery cut short would be sent again at the next start, a repeat in the channel:
    // those under way are let finish (each within the request's timeout), unless asked again.
    if delivering > 0 {
        tracing::info!(
            "stopping once the deliveries under way ({delivering}) are done (Ctrl-C again: at once)"
        );
        let deadline = tokio::time::sleep(STOP_WAIT);
        tokio::pin!(deadline);
        while delivering > 0 {
            tokio::select! {
                Some((index, id, delivery)) = done_rx.recv() => {
                    delivering -= 1;
                    alerter.settle(SystemTime::now(), index, &id, &delivery);
                }
                _ = &mut deadline => break,
                _ = stop.heard() => break,
            }
        }
    }
    match alerter.undelivered() {
        0 => tracing::info!("stopping"),
        1 => tracing::info!("stopping; 1 undelivered message is kept for the next start"),
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
mod tests {
    use super::journal_command;

    #[test]
    fn the_alerters_log_is_named_only_where_a_service_has_one() {
        let system_unit = Some("journalctl -u respawn-alerts.service -n 50");
        let named = [
            // cgroup v2, with a v1 line before it.
            (
                "12:memory:/system.slice/respawn-alerts.service\n0::/system.slice/respawn-alerts.service\n",
                system_unit,
            ),
            (
                "1:name=systemd:/system.slice/alerts-site-b.service\n",
                Some("journalctl -u alerts-site-b.service -n 50"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/respawn-alerts.service\n",
                Some("journalctl --user -u respawn-alerts.service -n 50"),
            ),
            // A service that delegates sub-cgroups.
            ("0::/system.slice/respawn-alerts.service/main\n", system_unit),
            // systemd's escape, quoted for a shell.
            (
                "0::/system.slice/respawn\\x2dalerts.service\n",
                Some("journalctl -u 'respawn\\x2dalerts.service' -n 50"),
            ),
        ];
        for (cgroup, command) in named {
            assert_eq!(journal_command(cgroup).as_deref(), command, "{cgroup}");
        }
        let terminal =
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-term-1.scope\n";
        for elsewhere in [
            terminal,
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/\n",
            "",
        ] {
            assert_eq!(journal_command(elsewhere), None, "{elsewhere}");
        }
    }
}
