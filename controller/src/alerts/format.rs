//! What an alert message says, and how each service wants it: Slack blocks with mrkdwn,
//! Discord embeds with colour, Telegram HTML, Matrix HTML, ntfy's JSON with title, priority
//! and tags, and Alertmanager's webhook JSON — each readable on a phone, each within the
//! service's size limits. Also how each service's answer is read. Pure functions.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use respawn_common::messages::Presence;

use super::config::Channel;
use super::outbox::{Batch, Delivery};
use super::rules::{AlertKind, Notice, Phase};
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
struct Item {
    phase: Phase,
    kind: AlertKind,
    headline: String,
    details: Vec<String>,
    log: Vec<String>,
    /// What to run to look or fix.
    commands: Vec<String>,
    at: SystemTime,
}

fn item(n: &Notice) -> Item {
    let subject = n.key.subject();
    let f = &n.facts;
    let since = clock(n.since);
    let down_for = short(n.at.duration_since(n.since).unwrap_or_default());
    let headline = match (n.phase, n.key.kind) {
        (Phase::Resolved, kind) if kind.is_agent_level() => {
            format!("{subject} is back ({}) after {down_for}", resolution(n))
        }
        (Phase::Resolved, _) => format!("{subject} recovered ({}) after {down_for}", resolution(n)),
        (Phase::Reminder, kind) => format!("{subject} is still {}", still(kind)),
        (Phase::Firing, AlertKind::Crashed) => match &f.exit {
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
            if let (Some(exits), Some(window)) = (f.loop_exits, f.loop_window_secs) {
                details.push(format!(
                    "{exits} exits within {}; retrying at its longest backoff",
                    short(Duration::from_secs(window))
                ));
            }
            if n.key.kind == AlertKind::Failed {
                if let Some(restarts) = f.restarts {
                    details.push(format!(
                        "no more restarts after {restarts}; it stays down until started"
                    ));
                }
            } else if let Some(restarts) = f.restarts {
                details.push(format!("restarts so far: {restarts}"));
            }
            if n.phase != Phase::Resolved {
                if let Some(next) = f.next_start {
                    let wait = next.duration_since(n.at).unwrap_or_default();
                    details.push(format!("next start in {}", short(wait)));
                }
            }
            if f.failures > 1 {
                details.push(format!("failed {} times since {since}", f.failures));
            } else {
                details.push(format!("since {since}"));
            }
        }
        AlertKind::Offline => details.push(format!("since {since}")),
        AlertKind::Stale => details.push(format!("last heard from at {since}")),
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
        (_, AlertKind::Failed) => vec![
            format!("respawnctl start {target}"),
            format!("respawnctl logs {target}"),
        ],
        (_, AlertKind::Offline | AlertKind::Stale) => vec![
            format!("respawnctl status {target}"),
            "on the machine: journalctl -u respawn-agent".into(),
        ],
        _ => vec![
            format!("respawnctl restart {target}"),
            format!("respawnctl logs {target}"),
        ],
    };
    Item {
        phase: n.phase,
        kind: n.key.kind,
        headline,
        details,
        log,
        commands,
        at: n.at,
    }
}

fn resolution(n: &Notice) -> &str {
    n.facts.resolution.as_deref().unwrap_or("resolved")
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
    }
}

/// `2026-11-25 03:12:05 UTC`.
fn clock(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `text` cut to at most `bytes` bytes, on a character boundary, marked when cut.
fn cut_bytes(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_owned();
    }
    let mut end = bytes.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// How bad a message is, for colours, priorities and emoji.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Resolved,
    Warning,
    Critical,
}

fn severity(item: &Item) -> Severity {
    match (item.phase, item.kind) {
        (Phase::Resolved, _) => Severity::Resolved,
        (
            _,
            AlertKind::Crashed | AlertKind::SpawnFailed | AlertKind::Unhealthy | AlertKind::Stale,
        ) => Severity::Warning,
        _ => Severity::Critical,
    }
}

fn emoji(item: &Item) -> &'static str {
    match (item.phase, severity(item)) {
        (Phase::Resolved, _) => "✅",
        (Phase::Reminder, _) => "⏰",
        (_, Severity::Critical) => "🔴",
        _ => "🟠",
    }
}

/// A batch in words: a title and its items, worst first.
struct Message {
    title: String,
    items: Vec<Item>,
    severity: Severity,
}

fn message(batch: &Batch) -> Message {
    let mut items: Vec<Item> = batch.notices.iter().map(item).collect();
    items.sort_by_key(|i| std::cmp::Reverse(severity(i)));
    let severity = items
        .iter()
        .map(severity)
        .max()
        .unwrap_or(Severity::Resolved);
    let title = match items.as_slice() {
        [one] => format!("{} {}", emoji(one), one.headline),
        many => {
            let mut agents: Vec<&str> =
                batch.notices.iter().map(|n| n.key.agent.as_str()).collect();
            agents.sort_unstable();
            agents.dedup();
            let first = many.first().map(emoji).unwrap_or("🔴");
            match agents.as_slice() {
                [agent] => format!("{first} {} updates from {agent}", many.len()),
                _ => format!(
                    "{first} {} updates from {} agents",
                    many.len(),
                    agents.len()
                ),
            }
        }
    };
    Message {
        title,
        items,
        severity,
    }
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
                    percent_encode(&batch.id)
                ),
                serde_json::json!({
                    "msgtype": "m.text",
                    "body": plain,
                    "format": "org.matrix.custom.html",
                    "formatted_body": html,
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

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Incoming-webhook JSON: `text` as the notification's fallback, a section of mrkdwn per
/// item (at most 3000 characters each, at most 50 blocks).
fn slack(message: &Message) -> serde_json::Value {
    let mut blocks = Vec::new();
    let shown = message.items.len().min(24);
    for item in &message.items[..shown] {
        let mut text = format!("{} *{}*", emoji(item), slack_escape(&item.headline));
        for detail in &item.details {
            let _ = write!(text, "\n{}", slack_escape(detail));
        }
        let text = cut(&text, 1400);
        let mut text = text.clone();
        if !item.log.is_empty() {
            // Cut before fencing, so that a fence is never left open; a fence in the log
            // would close it early.
            let log = cut(
                &slack_escape(&item.log.join("\n")).replace("```", "ʼʼʼ"),
                1400,
            );
            let _ = write!(text, "\n```{log}```");
        }
        blocks.push(serde_json::json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": text},
        }));
        if !item.commands.is_empty() {
            let commands: Vec<String> = item
                .commands
                .iter()
                .map(|c| format!("`{}`", slack_escape(c)))
                .collect();
            blocks.push(serde_json::json!({
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": cut(&commands.join("  ·  "), 2900)}],
            }));
        }
    }
    if message.items.len() > shown {
        blocks.push(serde_json::json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("…and {} more", message.items.len() - shown)},
        }));
    }
    serde_json::json!({"text": slack_escape(&message.title), "blocks": blocks})
}

/// Execute-webhook JSON: one embed per item (at most 10), coloured by severity, within the
/// 6000 characters all embeds may hold.
fn discord(message: &Message) -> serde_json::Value {
    let shown = message.items.len().min(10);
    let budget = 5500 / shown.max(1);
    let embeds: Vec<serde_json::Value> = message.items[..shown]
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut description = item.details.join("\n");
            if !item.log.is_empty() {
                let _ = write!(
                    description,
                    "\n```\n{}\n```",
                    item.log.join("\n").replace("```", "ʼʼʼ")
                );
            }
            if !item.commands.is_empty() {
                let commands: Vec<String> =
                    item.commands.iter().map(|c| format!("`{c}`")).collect();
                let _ = write!(description, "\n{}", commands.join("\n"));
            }
            let title = cut(&format!("{} {}", emoji(item), item.headline), 250);
            let mut description = cut(
                &description,
                budget.saturating_sub(title.chars().count() + 20).min(4000),
            );
            if i + 1 == shown && message.items.len() > shown {
                let _ = write!(description, "\n…and {} more", message.items.len() - shown);
            }
            serde_json::json!({
                "title": title,
                "description": description,
                "color": match severity(item) {
                    Severity::Critical => 0xD0_30_30,
                    Severity::Warning => 0xE0_8E_0B,
                    Severity::Resolved => 0x2E_A0_43,
                },
                "timestamp": respawn_common::time::format(item.at),
                "footer": {"text": "respawn"},
            })
        })
        .collect();
    serde_json::json!({
        "content": "",
        "allowed_mentions": {"parse": []},
        "embeds": embeds,
    })
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML both Telegram and Matrix understand: bold headline, details, the log in `<pre>`,
/// commands in `<code>`; lines are broken with `newline` (Telegram takes `\n`, Matrix `<br/>`).
fn html_item(item: &Item, newline: &str) -> String {
    let mut html = format!("{} <b>{}</b>", emoji(item), html_escape(&item.headline));
    for detail in &item.details {
        let _ = write!(html, "{newline}{}", html_escape(detail));
    }
    if !item.log.is_empty() {
        let _ = write!(
            html,
            "{newline}<pre>{}</pre>",
            html_escape(&item.log.join("\n"))
        );
    }
    for command in &item.commands {
        let _ = write!(html, "{newline}<code>{}</code>", html_escape(command));
    }
    html
}

/// Telegram's HTML, at most 4096 characters: whole items only, so that no tag is cut.
fn telegram(message: &Message) -> String {
    let mut text = String::new();
    if message.items.len() > 1 {
        let _ = writeln!(text, "<b>{}</b>\n", html_escape(&message.title));
    }
    let mut shown = 0;
    for item in &message.items {
        let mut html = html_item(item, "\n");
        if html.chars().count() > 3000 {
            // A huge log: leave it out rather than cut a tag.
            let without_log = Item {
                log: vec![],
                ..item.clone()
            };
            html = html_item(&without_log, "\n");
        }
        if text.chars().count() + html.chars().count() + 40 > 4096 {
            break;
        }
        text.push_str(&html);
        text.push_str("\n\n");
        shown += 1;
    }
    if shown < message.items.len() {
        let _ = write!(text, "…and {} more", message.items.len() - shown);
    }
    text.trim_end().to_owned()
}

/// Matrix: a plain body for clients without HTML, and the HTML.
fn matrix(message: &Message) -> (String, String) {
    let mut plain = String::new();
    let mut html = String::new();
    if message.items.len() > 1 {
        let _ = writeln!(plain, "{}\n", message.title);
        let _ = write!(html, "<p><b>{}</b></p>", html_escape(&message.title));
    }
    let mut shown = 0;
    for item in &message.items {
        let text = plain_item(item);
        let markup = matrix_item(item);
        // Events may hold 64 KiB: leave room for the JSON around them.
        if shown > 0 && plain.len() + html.len() + text.len() + markup.len() > 40_000 {
            break;
        }
        let _ = writeln!(plain, "{text}");
        html.push_str(&markup);
        shown += 1;
    }
    if shown < message.items.len() {
        let more = format!("…and {} more", message.items.len() - shown);
        let _ = write!(plain, "{more}");
        let _ = write!(html, "<p>{more}</p>");
    }
    (plain.trim_end().to_owned(), html)
}

/// One item in Matrix's HTML: paragraphs for the words, `<pre>` for the log (never inside a
/// paragraph).
fn matrix_item(item: &Item) -> String {
    let mut html = format!("<p>{} <b>{}</b>", emoji(item), html_escape(&item.headline));
    for detail in &item.details {
        let _ = write!(html, "<br/>{}", html_escape(detail));
    }
    html.push_str("</p>");
    if !item.log.is_empty() {
        let log = cut(&item.log.join("\n"), 4000);
        let _ = write!(html, "<pre><code>{}</code></pre>", html_escape(&log));
    }
    if !item.commands.is_empty() {
        let commands: Vec<String> = item
            .commands
            .iter()
            .map(|c| format!("<code>{}</code>", html_escape(c)))
            .collect();
        let _ = write!(html, "<p>{}</p>", commands.join("<br/>"));
    }
    html
}

fn plain_item(item: &Item) -> String {
    let mut text = format!("{} {}", emoji(item), item.headline);
    for detail in &item.details {
        let _ = write!(text, "\n{detail}");
    }
    for line in &item.log {
        let _ = write!(text, "\n    {line}");
    }
    for command in &item.commands {
        let _ = write!(text, "\n$ {command}");
    }
    text.push('\n');
    text
}

/// ntfy's JSON publishing: title, a Markdown message (at most 4096 bytes), priority and
/// emoji tags.
fn ntfy(message: &Message, topic: &str) -> serde_json::Value {
    // ntfy counts bytes: 4096 at most, or the message becomes an attachment.
    const BUDGET: usize = 3900;
    let mut text = String::new();
    let mut shown = 0;
    for item in &message.items {
        let mut part = format!("**{}**", item.headline);
        for detail in &item.details {
            let _ = write!(part, "\n{detail}");
        }
        if !item.log.is_empty() {
            let log = cut_bytes(&item.log.join("\n").replace("```", "ʼʼʼ"), 1500);
            let _ = write!(part, "\n```\n{log}\n```");
        }
        for command in &item.commands {
            let _ = write!(part, "\n`{command}`");
        }
        if text.len() + part.len() + 2 > BUDGET {
            if shown > 0 {
                break;
            }
            // The first item goes in whatever its size, cut to fit.
            part = cut_bytes(&part, BUDGET);
        }
        text.push_str(&part);
        text.push_str("\n\n");
        shown += 1;
    }
    if shown < message.items.len() {
        let _ = write!(text, "…and {} more", message.items.len() - shown);
    }
    let (priority, tag) = match message.severity {
        Severity::Critical => (5, "rotating_light"),
        Severity::Warning => (4, "warning"),
        Severity::Resolved => (3, "white_check_mark"),
    };
    let title = message
        .title
        .trim_start_matches(['✅', '⏰', '🔴', '🟠'])
        .trim_start()
        .to_owned();
    serde_json::json!({
        "topic": topic,
        "title": cut(&title, 250),
        "message": text.trim_end(),
        "priority": priority,
        "tags": [tag, "respawn"],
        "markdown": true,
    })
}

/// Prometheus Alertmanager's webhook JSON (version 4), one alert per notice, so that tools
/// made for Alertmanager can take respawn's alerts.
fn alertmanager(batch: &Batch, message: &Message) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = batch
        .notices
        .iter()
        .zip(batch.notices.iter().map(item))
        .map(|(notice, item)| {
            let resolved = notice.phase == Phase::Resolved;
            let mut labels = serde_json::json!({
                "alertname": alertname(notice.key.kind),
                "agent": notice.key.agent,
                "kind": notice.key.kind.as_str(),
                "severity": match severity(&item) {
                    Severity::Critical => "critical",
                    _ => "warning",
                },
            });
            if let Some(process) = &notice.key.process {
                labels["process"] = process.clone().into();
            }
            let mut description = item.details.join("\n");
            if !item.log.is_empty() {
                let _ = write!(description, "\n{}", item.log.join("\n"));
            }
            serde_json::json!({
                "status": if resolved { "resolved" } else { "firing" },
                "labels": labels,
                "annotations": {
                    "summary": item.headline,
                    "description": description,
                    "command": item.commands.first().cloned().unwrap_or_default(),
                },
                "startsAt": respawn_common::time::format(notice.since),
                "endsAt": if resolved {
                    respawn_common::time::format(notice.at)
                } else {
                    "0001-01-01T00:00:00Z".to_owned()
                },
                "generatorURL": "",
                "fingerprint": fingerprint(&notice.key.subject(), notice.key.kind.as_str()),
            })
        })
        .collect();
    let firing = batch.notices.iter().any(|n| n.phase != Phase::Resolved);
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{batch=\"{}\"}}", batch.id),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": "respawn",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {"summary": message.title},
        "externalURL": "",
        "alerts": alerts,
    })
}

fn alertname(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::Crashed => "ProcessCrashed",
        AlertKind::CrashLoop => "ProcessCrashLoop",
        AlertKind::SpawnFailed => "ProcessSpawnFailed",
        AlertKind::Unhealthy => "ProcessUnhealthy",
        AlertKind::Failed => "ProcessFailed",
        AlertKind::Offline => "AgentOffline",
        AlertKind::Stale => "AgentStale",
    }
}

/// 16 hex digits that name an alert stably (FNV-1a), as Alertmanager's fingerprints do.
fn fingerprint(subject: &str, kind: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in subject.bytes().chain([0]).chain(kind.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a service's answer: 2xx delivered; 429 wait (as long as it says, in the header or,
/// for Discord, Telegram and Matrix, in the body); 408 and 5xx try again; a message the
/// service cannot take (400, 413, 422) is dropped; anything else (a revoked token, a deleted
/// webhook) is tried again until `retry_for`, so that fixing the configuration loses nothing.
pub fn interpret(response: &HttpResponse) -> Delivery {
    let status = response.status;
    let excerpt = || {
        let body = cut(response.body.trim(), 200);
        if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body}")
        }
    };
    match status {
        200..=299 => Delivery::Delivered,
        429 => Delivery::RetryAfter(retry_after(response).unwrap_or(Duration::from_secs(5))),
        400 | 413 | 422 => Delivery::Permanent(excerpt()),
        _ => Delivery::Transient(excerpt()),
    }
}

/// The longest wait a 429 asks for, from `Retry-After` (seconds or an HTTP date) or the body.
fn retry_after(response: &HttpResponse) -> Option<Duration> {
    let header = response.retry_after.as_deref().and_then(|v| {
        let v = v.trim();
        v.parse::<f64>().ok().and_then(seconds).or_else(|| {
            humantime::parse_rfc3339_weak(v)
                .ok()
                .or_else(|| httpdate(v))
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
        })
    });
    let body: Option<Duration> = serde_json::from_str::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|json| {
            let secs = json["retry_after"]
                .as_f64()
                .or_else(|| json["parameters"]["retry_after"].as_f64())
                .or_else(|| json["retry_after_ms"].as_f64().map(|ms| ms / 1000.0))?;
            seconds(secs)
        });
    header.into_iter().chain(body).max()
}

/// A wait in seconds from a service, at most a day; `None` for what is not a number (NaN).
fn seconds(secs: f64) -> Option<Duration> {
    secs.is_finite()
        .then(|| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)))
}

/// An IMF-fixdate (`Wed, 25 Nov 2026 03:12:05 GMT`).
fn httpdate(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)?
        + 1;
    humantime::parse_rfc3339(&format!("{year}-{month:02}-{day:0>2}T{time}Z")).ok()
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
            phase: Phase::Resolved,
            at: now,
            since: now,
            facts: Facts {
                resolution: Some("a test from respawnctl alerts test: this target works".into()),
                ..Facts::default()
            },
        }],
        created: now,
        attempts: 0,
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
