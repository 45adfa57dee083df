//! What an alert message says, and how each service wants it: Slack blocks with mrkdwn,
//! Discord embeds with colour, Telegram HTML, Matrix HTML, ntfy's JSON with title, priority
//! and tags, and Alertmanager's webhook JSON — each readable on a phone, each within the
//! service's size limits (`services`). Also how each service's answer is read (`reply`).
//! Pure functions.

mod reply;
mod services;

pub use reply::interpret;
use services::{alertmanager, discord, matrix, ntfy, slack, telegram};

use std::time::{Duration, SystemTime};

use respawn_common::messages::Presence;
use respawn_common::status::describe_exit;
use respawn_common::text::{cut, Printable};

use super::config::Channel;
use super::outbox::Batch;
use super::rules::{is_recovery, AlertKind, Notice, Phase, BACK_ONLINE};
use crate::output::short;

/// An HTTP request to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

/// Log lines shown per alert, and characters per line.
const LOG_LINES: usize = 10;
const LOG_LINE_CHARS: usize = 200;

/// One notice, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Item {
    phase: Phase,
    kind: AlertKind,
    headline: String,
    details: Vec<String>,
    log: Vec<String>,
    /// What to run to look or fix.
    commands: Vec<String>,
    at: SystemTime,
    /// Resolved because what it was about works again (not only stopped, removed, …).
    recovered: bool,
}

/// What the message of `respawnctl alerts test` says.
const TEST_HEADLINE: &str = "respawnctl alerts test: this target works";

/// `n` in words, told at `told` (a wait it names counts from there), else as of when it
/// happened.
pub(super) fn item(n: &Notice, told: Option<SystemTime>) -> Item {
    if n.phase == Phase::Test {
        return Item {
            phase: Phase::Test,
            kind: n.key.kind,
            headline: TEST_HEADLINE.to_owned(),
            details: vec![format!("sent at {}; no process is involved", clock(n.at))],
            log: Vec::new(),
            commands: Vec::new(),
            at: n.at,
            recovered: false,
        };
    }
    let subject = n.key.subject();
    let f = &n.facts;
    let since = clock(n.since);
    let down_for = short(n.at.duration_since(n.since).unwrap_or_default());
    let recovered = n.phase == Phase::Resolved && recovered(n);
    let headline = match (n.phase, n.key.kind) {
        (Phase::Resolved, AlertKind::BrokerUnreachable) => {
            format!("the alerter reaches the broker {subject} again, after {down_for}")
        }
        (Phase::Resolved, kind) if recovered && kind.is_agent_level() => match resolution(n) {
            // "is back (back online)" said it twice.
            BACK_ONLINE => format!("{subject} is back online after {down_for}"),
            why => format!("{subject} is back ({why}) after {down_for}"),
        },
        // From when the problem began, not the process's time down (a crash restarted at
        // once is over only once it has run `resolve_after`), nor when it was alerted: an
        // alert raised from a state began before the alerter saw it.
        (Phase::Resolved, _) if recovered => {
            format!(
                "{subject} recovered ({}), {down_for} after the {} alert began",
                resolution(n),
                noun(n.key.kind)
            )
        }
        (Phase::Resolved, kind) => format!(
            "{subject}: {}, {down_for} after the {} alert began",
            resolution(n),
            noun(kind)
        ),
        (Phase::Test, _) => TEST_HEADLINE.to_owned(),
        (Phase::Reminder, kind) => format!("{subject} is still {}", still(kind)),
        (Phase::Firing, AlertKind::Crashed) => match &f.exit {
            Some(exit) if f.oom_killed => {
                let words = describe_exit(exit, f.oom_killed, f.memory_max);
                format!("{subject} was {words}")
            }
            Some(exit) => format!("{subject} crashed: {exit}"),
            None => format!("{subject} crashed"),
        },
        (Phase::Firing, AlertKind::CrashLoop) => format!("{subject} is in a crash loop"),
        (Phase::Firing, AlertKind::SpawnFailed) => format!("{subject} cannot be started"),
        (Phase::Firing, AlertKind::Unhealthy) => {
            format!("{subject} is unhealthy and was restarted")
        }
        (Phase::Firing, AlertKind::Failed) => format!("{subject} was given up"),
        (Phase::Firing, AlertKind::Offline) => match f.presence {
            Some(Presence::Offline) => format!("{subject} is offline: it shut down"),
            _ => format!("{subject} is offline: its connection was lost"),
        },
        (Phase::Firing, AlertKind::Stale) => format!("{subject} stopped responding"),
        (Phase::Firing, AlertKind::BrokerUnreachable) => {
            format!("the alerter has no connection to the broker {subject}")
        }
        (Phase::Firing, AlertKind::EventsLost) => match f.lost {
            Some(1) => format!("{subject} lost an event"),
            Some(n) => format!("{subject} lost {n} events"),
            None => format!("{subject} lost events"),
        },
    };
    let mut details = Vec::new();
    match n.key.kind {
        AlertKind::Crashed
        | AlertKind::SpawnFailed
        | AlertKind::CrashLoop
        | AlertKind::Failed
        | AlertKind::Unhealthy => {
            if let Some(error) = &f.error {
                details.push(error.clone());
            }
            // The crash's own headline says its exit; the others say it here.
            if let (Some(exit), false) = (&f.exit, n.key.kind == AlertKind::Crashed) {
                let words = describe_exit(exit, f.oom_killed, f.memory_max);
                details.push(format!("last exit: {words}"));
            }
            if let (Some(exits), Some(window)) = (f.loop_exits, f.loop_window_secs) {
                let window = short(Duration::from_secs(window));
                details.push(match n.phase {
                    Phase::Resolved => format!("{exits} exits within {window}"),
                    _ => format!("{exits} exits within {window}; retrying at its longest backoff"),
                });
            }
            if n.key.kind == AlertKind::Failed {
                if let Some(restarts) = f.restarts {
                    details.push(match n.phase {
                        Phase::Resolved => format!("it had given up after {restarts} restarts"),
                        _ => format!(
                            "no more restarts after {restarts}; it stays down until started"
                        ),
                    });
                }
            } else if let Some(restarts) = f.restarts {
                details.push(format!("restarts so far: {restarts}"));
            }
            if n.phase != Phase::Resolved {
                // A restart after a stable run follows at once. A firing held through its grace
                // or an outage of the chat would otherwise promise a start already made.
                let from = told.map_or(n.at, |told| told.max(n.at));
                let wait = |next: SystemTime| next.duration_since(from).unwrap_or_default();
                match f
                    .next_start
                    .map(|next| respawn_common::time::wait(wait(next)))
                {
                    Some(Some(wait)) => details.push(format!("next start in {wait}")),
                    Some(None) => details.push("restarting at once".into()),
                    None => {}
                }
            }
            if f.failures > 1 {
                details.push(format!("failed {} times since {since}", f.failures));
            } else {
                details.push(format!("since {since}"));
            }
        }
        AlertKind::EventsLost => details.push(
            "it could not keep them (its spool full while the broker was away, its disk full, \
             or it died before writing them); what they said is gone, see `respawnctl status`"
                .into(),
        ),
        AlertKind::Offline => details.push(format!("since {since}")),
        AlertKind::Stale => details.push(format!("last heard from at {since}")),
        // Once it is over, why it was is no news.
        AlertKind::BrokerUnreachable if n.phase == Phase::Resolved => {}
        AlertKind::BrokerUnreachable => {
            if let Some(error) = &f.error {
                details.push(error.clone());
            }
            details.push(
                "crashes are told when it is back; an agent going offline cannot be noticed".into(),
            );
            details.push(format!("since {since}"));
        }
    }
    let log = if n.phase == Phase::Resolved {
        Vec::new()
    } else {
        let skip = f.log_tail.len().saturating_sub(LOG_LINES);
        f.log_tail[skip..]
            .iter()
            .map(|l| cut(&l.text, LOG_LINE_CHARS))
            .collect()
    };
    let target = n.key.subject();
    let commands = match (n.phase, n.key.kind) {
        (Phase::Resolved, _) => Vec::new(),
        (_, AlertKind::BrokerUnreachable) => f.log_command.iter().cloned().collect(),
        (_, AlertKind::Failed) => vec![
            format!("respawnctl start {target}"),
            format!("respawnctl logs {target}"),
        ],
        // Each one to paste as it is: the agent's own log is on its machine (whose name is
        // the agent's id unless `[agent] id` says otherwise).
        (_, AlertKind::Offline | AlertKind::Stale | AlertKind::EventsLost) => vec![
            format!("respawnctl status {target}"),
            format!("ssh {target} journalctl -u respawn-agent -n 50"),
        ],
        _ => vec![
            format!("respawnctl restart {target}"),
            format!("respawnctl logs {target}"),
        ],
    };
    // What an agent said (an error, a reason, its program's output) may hold what a chat
    // client acts on or reorders by: escaped as respawnctl and the hub show it.
    let printable = |text: String| Printable(&text).to_string();
    Item {
        phase: n.phase,
        kind: n.key.kind,
        headline: printable(headline),
        details: details.into_iter().map(printable).collect(),
        log: log.into_iter().map(printable).collect(),
        commands,
        at: n.at,
        recovered,
    }
}

fn resolution(n: &Notice) -> &str {
    n.facts.resolution.as_deref().unwrap_or("resolved")
}

/// Whether a resolved process alert ended because the process works again.
fn recovered(n: &Notice) -> bool {
    n.facts.resolution.as_deref().is_none_or(is_recovery)
}

/// The alert of `kind`, in words that follow "the": which alert a notice ends, where one
/// stop ends several.
fn noun(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Crashed => "crash",
        AlertKind::CrashLoop => "crash loop",
        AlertKind::SpawnFailed => "failed start",
        AlertKind::Unhealthy => "unhealthy",
        AlertKind::Failed => "given-up",
        AlertKind::Offline => "offline",
        AlertKind::Stale => "unresponsive",
        AlertKind::BrokerUnreachable => "broker-unreachable",
        AlertKind::EventsLost => "lost events",
    }
}

fn still(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Crashed => "crashing",
        AlertKind::CrashLoop => "in a crash loop",
        AlertKind::SpawnFailed => "failing to start",
        AlertKind::Unhealthy => "unhealthy",
        AlertKind::Failed => "given up",
        AlertKind::Offline => "offline",
        AlertKind::Stale => "not responding",
        AlertKind::BrokerUnreachable => "unreachable",
        AlertKind::EventsLost => "losing events",
    }
}

/// `2026-11-25 03:12:05 UTC`.
pub(super) fn clock(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// How bad a message is, for colours, priorities and emoji.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Severity {
    Resolved,
    Warning,
    Critical,
}

pub(super) fn severity(item: &Item) -> Severity {
    match item.phase {
        Phase::Resolved | Phase::Test => Severity::Resolved,
        _ => kind_severity(item.kind),
    }
}

/// How bad an alert of `kind` is, whatever its phase: a label that receivers route on must
/// not change between the alert and its resolution.
pub(super) fn kind_severity(kind: AlertKind) -> Severity {
    match kind {
        AlertKind::Crashed
        | AlertKind::SpawnFailed
        | AlertKind::Unhealthy
        | AlertKind::Stale
        | AlertKind::EventsLost => Severity::Warning,
        _ => Severity::Critical,
    }
}

/// The emoji an item or a message begins with, and its shortcode: ntfy shows it as a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) emoji: &'static str,
    pub(super) shortcode: &'static str,
}

const fn marked(emoji: &'static str, shortcode: &'static str) -> Mark {
    Mark { emoji, shortcode }
}

/// What is broken and needs someone.
const CRITICAL: Mark = marked("🔴", "red_circle");

pub(super) fn mark(item: &Item) -> Mark {
    match (item.phase, severity(item)) {
        (Phase::Resolved, _) if item.recovered => marked("✅", "white_check_mark"),
        (Phase::Resolved, _) => marked("☑️", "ballot_box_with_check"),
        (Phase::Reminder, _) => marked("⏰", "alarm_clock"),
        (Phase::Test, _) => marked("🔔", "bell"),
        (_, Severity::Critical) => CRITICAL,
        _ => marked("🟠", "orange_circle"),
    }
}

/// A batch in words: a title and its items, worst first.
pub(super) struct Message {
    /// Begins with `mark`'s emoji.
    title: String,
    mark: Mark,
    items: Vec<Item>,
    severity: Severity,
}

/// The notices of `batch` with each reminder folded into the firing or reminder of its alert
/// before it in the batch (all held through an outage of the chat): that one is told, with
/// the reminder's facts. "Still in a crash loop" of a loop the chat never heard of would be
/// news told as old, and three reminders of one alert in one message say one thing thrice.
fn folded(batch: &Batch) -> Vec<Notice> {
    let mut told: Vec<Notice> = Vec::with_capacity(batch.notices.len());
    for notice in &batch.notices {
        let earlier = told.iter_mut().rev().find(|n| n.key == notice.key);
        match earlier {
            Some(earlier)
                if notice.phase == Phase::Reminder
                    && matches!(earlier.phase, Phase::Firing | Phase::Reminder) =>
            {
                earlier.at = notice.at;
                earlier.facts = notice.facts.clone();
            }
            _ => told.push(notice.clone()),
        }
    }
    told
}

/// The notices of `batch` as its alerts stand at its end: reminders [`folded`], and one that
/// changed phase within the batch (resolved, then firing again within the window) told once,
/// as it is now. Sorted worst first, "recovered" would otherwise come last and read as the
/// news while the process is down; and a webhook's status would be the other's.
fn latest(batch: &Batch) -> Vec<Notice> {
    let told = folded(batch);
    let changed = |i: usize, n: &Notice| {
        let later = &told[i + 1..];
        later.iter().any(|l| l.key == n.key && l.phase != n.phase)
    };
    let now: Vec<bool> = told
        .iter()
        .enumerate()
        .map(|(i, n)| !changed(i, n))
        .collect();
    told.into_iter()
        .zip(now)
        .filter_map(|(n, now)| now.then_some(n))
        .collect()
}

fn message(batch: &Batch) -> Message {
    let told = |n: &Notice| item(n, batch.told);
    let mut items: Vec<Item> = latest(batch).iter().map(told).collect();
    items.sort_by_key(|i| std::cmp::Reverse(severity(i)));
    let severity = items
        .iter()
        .map(severity)
        .max()
        .unwrap_or(Severity::Resolved);
    let (mark, title) = match items.as_slice() {
        [one] => (mark(one), one.headline.clone()),
        many => {
            // The broker's alert is about no agent: its subject is the broker's URL.
            let about_agents = batch.notices.iter();
            let about_agents = about_agents.filter(|n| n.key.kind != AlertKind::BrokerUnreachable);
            let mut agents: Vec<&str> = about_agents.map(|n| n.key.agent.as_str()).collect();
            agents.sort_unstable();
            agents.dedup();
            // New trouble heads the message, though a reminder of worse comes first in it: a
            // ⏰ in the notification would hide a crash that just happened.
            let news = many.iter().find(|i| i.phase == Phase::Firing);
            let first = news.or(many.first()).map_or(CRITICAL, mark);
            let broker = batch
                .notices
                .iter()
                .any(|n| n.key.kind == AlertKind::BrokerUnreachable);
            let and_broker = if broker {
                " and the alerter's broker"
            } else {
                ""
            };
            let title = match agents.as_slice() {
                [] => format!("{} updates", many.len()),
                [agent] => format!("{} updates from {agent}{and_broker}", many.len()),
                _ => format!(
                    "{} updates from {} agents{and_broker}",
                    many.len(),
                    agents.len()
                ),
            };
            (first, title)
        }
    };
    Message {
        title: format!("{} {title}", mark.emoji),
        mark,
        items,
        severity,
    }
}

/// What a part of a URL path may hold as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The request that posts `batch` to `channel`.
pub fn request(channel: &Channel, batch: &Batch) -> HttpRequest {
    let message = message(batch);
    let json = |url: String, body: serde_json::Value| HttpRequest {
        method: "POST",
        url,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    };
    match channel {
        Channel::Slack { url } => json(url.clone(), slack(&message)),
        Channel::Discord { url } => {
            let separator = if url.contains('?') { '&' } else { '?' };
            json(format!("{url}{separator}wait=true"), discord(&message))
        }
        Channel::Telegram {
            token,
            chat_id,
            api,
        } => json(
            format!("{api}/bot{token}/sendMessage"),
            serde_json::json!({
                "chat_id": chat_id,
                "text": telegram(&message),
                "parse_mode": "HTML",
                "link_preview_options": {"is_disabled": true},
            }),
        ),
        Channel::Matrix {
            homeserver,
            room,
            token,
        } => {
            let (plain, html) = matrix(&message);
            let mut request = json(
                format!(
                    "{homeserver}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    percent_encode(room),
                    percent_encode(&batch.id),
                ),
                serde_json::json!({
                    "msgtype": "m.text",
                    "body": plain,
                    "format": "org.matrix.custom.html",
                    "formatted_body": html,
                    // Intentional mentions (MSC3952): none, so that a display name or `@room`
                    // in a log line notifies nobody.
                    "m.mentions": {},
                }),
            );
            request.method = "PUT";
            request
                .headers
                .push(("Authorization".into(), format!("Bearer {token}")));
            request
        }
        Channel::Ntfy { url, token } => {
            let (server, topic) = url.rsplit_once('/').unwrap_or((url, ""));
            let mut request = json(format!("{server}/"), ntfy(&message, topic));
            if let Some(token) = token {
                request
                    .headers
                    .push(("Authorization".into(), format!("Bearer {token}")));
            }
            request
        }
        Channel::Webhook { url } => json(url.clone(), alertmanager(batch, &message)),
    }
}

/// The test message of `respawnctl alerts test`.
pub fn test_batch(now: SystemTime) -> Batch {
    use super::rules::{AlertKey, Facts};
    Batch {
        id: uuid::Uuid::new_v4().simple().to_string(),
        notices: vec![Notice {
            key: AlertKey {
                agent: "respawn".into(),
                process: Some("alerts-test".into()),
                kind: AlertKind::Crashed,
            },
            phase: Phase::Test,
            at: now,
            since: now,
            facts: Facts::default(),
        }],
        created: now,
        attempts: 0,
        told: None,
    }
}

#[cfg(test)]
mod tests;
