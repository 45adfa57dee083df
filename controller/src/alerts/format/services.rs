//! How each service wants a message: Slack blocks with mrkdwn, Discord embeds with colour,
//! Telegram and Matrix HTML, ntfy's JSON with title, priority and tags, and Alertmanager's
//! webhook JSON — each within the service's size limits.

use std::fmt::Write as _;

use respawn_common::text::{cut, cut_bytes};

use super::{item, kind_severity, mark, severity, Item, Message, Severity};
use crate::alerts::outbox::Batch;
use crate::alerts::rules::{AlertKind, Phase};

fn slack_escape(text: &str) -> String {
    unfenced(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` with no Markdown code fence in it: a fence in a log would close the message's own
/// early, and one in a detail or a headline (a health probe's last line of output) would open
/// a block that swallows the rest of the message. Slack, Discord and ntfy read Markdown.
fn unfenced(text: &str) -> String {
    text.replace("```", "ʼʼʼ")
}

/// `text` as plain text to a Markdown reader (Discord, ntfy): what would format it, link it,
/// embed an image, quote, head or open code is escaped with a backslash. An agent's error,
/// a probe's reason or a name must not make a masked link of an alert (found by a
/// hostile-input review: `[link](http://evil)` in a spawn error reached Discord as one).
fn markdown_plain(text: &str) -> String {
    let mut plain = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        if "\\`*_~|[]<>#".contains(c) {
            plain.push('\\');
        }
        plain.push(c);
    }
    plain
}

/// Incoming-webhook JSON: `text` as the notification's fallback, a section of mrkdwn per
/// item (at most 3000 characters each, at most 50 blocks).
pub(super) fn slack(message: &Message) -> serde_json::Value {
    let mut blocks = Vec::new();
    // Blocks replace `text` in the channel: several items need the heading among them.
    if message.items.len() > 1 {
        blocks.push(serde_json::json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("*{}*", slack_escape(&message.title))},
        }));
    }
    let shown = message.items.len().min(24);
    for item in &message.items[..shown] {
        let mut text = format!("{} *{}*", mark(item).emoji, slack_escape(&item.headline));
        for detail in &item.details {
            let _ = write!(text, "\n{}", slack_escape(detail));
        }
        let text = cut(&text, 1400);
        let mut text = text.clone();
        if !item.log.is_empty() {
            // Cut before fencing, so that a fence is never left open; a fence in the log
            // would close it early.
            let log = cut(&slack_escape(&item.log.join("\n")), 1400);
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
pub(super) fn discord(message: &Message) -> serde_json::Value {
    let shown = message.items.len().min(10);
    let budget = 5500 / shown.max(1);
    let embeds: Vec<serde_json::Value> = message.items[..shown]
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let title = cut(
                &format!("{} {}", mark(item).emoji, markdown_plain(&item.headline)),
                250,
            );
            let budget = budget.saturating_sub(title.chars().count() + 20).min(4000);
            // Each part cut on its own, the log before it is fenced: a cut of the whole left
            // the fence open and the commands out.
            let commands: Vec<String> = item.commands.iter().map(|c| format!("`{c}`")).collect();
            let commands = cut(&commands.join("\n"), budget / 4);
            let mut description = cut(&markdown_plain(&item.details.join("\n")), budget / 2);
            let fence = "\n```\n\n```".chars().count();
            let room = budget
                .saturating_sub(description.chars().count() + commands.chars().count() + fence + 2);
            if !item.log.is_empty() {
                let log = unfenced(&item.log.join("\n"));
                let _ = write!(description, "\n```\n{}\n```", cut(&log, room));
            }
            if !commands.is_empty() {
                let _ = write!(description, "\n{commands}");
            }
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
    let heading = match message.items.len() {
        1 => String::new(),
        _ => cut(&message.title, 2000),
    };
    serde_json::json!({
        "content": heading,
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
    let mut html = format!(
        "{} <b>{}</b>",
        mark(item).emoji,
        html_escape(&item.headline)
    );
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
pub(super) fn telegram(message: &Message) -> String {
    let mut text = String::new();
    if message.items.len() > 1 {
        let _ = writeln!(text, "<b>{}</b>\n", html_escape(&message.title));
    }
    let mut shown = 0;
    for item in &message.items {
        let mut html = html_item(item, "\n");
        if html.chars().count() > 3000 {
            // A huge log: leave it out rather than cut a tag; and if that is not enough,
            // each text cut before it is marked up.
            let cut_down = Item {
                log: vec![],
                ..item.clone()
            };
            html = html_item(&cut_down, "\n");
            // Escaping makes a character up to six: shorter until it fits.
            let mut most = 600;
            while html.chars().count() > 3000 && most > 10 {
                most /= 2;
                let short = |texts: &[String]| texts.iter().map(|t| cut(t, most)).collect();
                let shorter = Item {
                    headline: cut(&item.headline, most),
                    details: short(&item.details),
                    commands: short(&item.commands),
                    ..cut_down.clone()
                };
                html = html_item(&shorter, "\n");
            }
        }
        // The first item goes in whatever else comes: a message of only "…and 1 more" says
        // nothing.
        if shown > 0 && text.chars().count() + html.chars().count() + 40 > 4096 {
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
pub(super) fn matrix(message: &Message) -> (String, String) {
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
    let mut html = format!(
        "<p>{} <b>{}</b>",
        mark(item).emoji,
        html_escape(&item.headline)
    );
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
    let mut text = format!("{} {}", mark(item).emoji, item.headline);
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
pub(super) fn ntfy(message: &Message, topic: &str) -> serde_json::Value {
    // ntfy counts bytes: 4096 at most, or the message becomes an attachment.
    const BUDGET: usize = 3900;
    let mut text = String::new();
    let mut shown = 0;
    for item in &message.items {
        let mut part = format!("**{}**", markdown_plain(&item.headline));
        for detail in &item.details {
            let _ = write!(part, "\n{}", markdown_plain(detail));
        }
        if !item.log.is_empty() {
            let log = cut_bytes(&unfenced(&item.log.join("\n")), 1500);
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
    let priority = match message.severity {
        Severity::Critical => 5,
        Severity::Warning => 4,
        Severity::Resolved => 3,
    };
    // ntfy shows the mark as a tag, before the title.
    let title = message.title.strip_prefix(message.mark.emoji);
    let title = title.unwrap_or(&message.title).trim_start();
    serde_json::json!({
        "topic": topic,
        "title": cut(title, 250),
        "message": text.trim_end(),
        "priority": priority,
        "tags": [message.mark.shortcode, "respawn"],
        "markdown": true,
    })
}

/// Prometheus Alertmanager's webhook JSON (version 4), one alert per notice, so that tools
/// made for Alertmanager can take respawn's alerts.
pub(super) fn alertmanager(batch: &Batch, message: &Message) -> serde_json::Value {
    // Every change, also of an alert that changed phase within the batch (queued through an
    // outage, a crash and its end): a receiver loses none; reminders folded into what they
    // remind of. The status is the batch's as it stands at its end, as its summary says.
    let told = super::folded(batch);
    let alerts: Vec<serde_json::Value> = told
        .iter()
        .map(|notice| (notice, item(notice, batch.told)))
        .map(|(notice, item)| {
            let resolved = notice.phase == Phase::Resolved;
            if notice.phase == Phase::Test {
                // As Grafana's and Alertmanager's own test notifications: a firing TestAlert.
                return serde_json::json!({
                    "status": "firing",
                    "labels": {"alertname": "TestAlert", "instance": "respawnctl"},
                    "annotations": {"summary": item.headline, "description": item.details.join("\n")},
                    "startsAt": respawn_common::time::format(notice.at),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": fingerprint("respawnctl", "test"),
                });
            }
            // The broker's alert is about no one agent: its subject is the broker's URL.
            let subject = match notice.key.kind {
                AlertKind::BrokerUnreachable => "broker",
                _ => "agent",
            };
            let mut labels = serde_json::json!({
                "alertname": alertname(notice.key.kind),
                "kind": notice.key.kind.as_str(),
                "severity": match kind_severity(notice.key.kind) {
                    Severity::Critical => "critical",
                    _ => "warning",
                },
            });
            labels[subject] = notice.key.agent.clone().into();
            if let Some(process) = &notice.key.process {
                labels["process"] = process.clone().into();
            }
            let mut description = item.details.join("\n");
            if !item.log.is_empty() {
                let _ = write!(description, "\n{}", item.log.join("\n"));
            }
            let mut annotations = serde_json::json!({
                "summary": item.headline,
                "description": description,
            });
            if let Some(command) = item.commands.first() {
                annotations["command"] = command.clone().into();
            }
            serde_json::json!({
                "status": if resolved { "resolved" } else { "firing" },
                "labels": labels,
                "annotations": annotations,
                "startsAt": respawn_common::time::format(notice.since),
                // Told once, it has nothing to resolve it: it ends as it is told.
                "endsAt": if resolved || notice.key.kind == AlertKind::EventsLost {
                    respawn_common::time::format(notice.at)
                } else {
                    "0001-01-01T00:00:00Z".to_owned()
                },
                "generatorURL": "",
                "fingerprint": fingerprint(&notice.key.subject(), notice.key.kind.as_str()),
            })
        })
        .collect();
    let firing = super::latest(batch)
        .iter()
        .any(|n| n.phase != Phase::Resolved);
    // As Alertmanager's: the labels every alert of the message has, with the same value.
    let mut common = alerts
        .first()
        .and_then(|a| a["labels"].as_object().cloned())
        .unwrap_or_default();
    common.retain(|name, value| alerts.iter().all(|a| a["labels"].get(name) == Some(value)));
    serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{batch=\"{}\"}}", batch.id),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": "respawn",
        "groupLabels": {},
        "commonLabels": common,
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
        AlertKind::BrokerUnreachable => "BrokerUnreachable",
        AlertKind::EventsLost => "AgentEventsLost",
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
