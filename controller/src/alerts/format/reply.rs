//! How each service's answer is read: delivered, wait (for how long), try again, or drop.

use std::time::{Duration, SystemTime};

use respawn_common::text::cut;

use super::HttpResponse;
use crate::alerts::outbox::Delivery;

/// Reads a service's answer: 2xx delivered; 429 wait (as long as it says, in the header or,
/// for Discord, Telegram and Matrix, in the body, and at least a second); 408 and 5xx try
/// again; a message the service cannot take (400, 413, 422) is dropped; anything else (a
/// revoked token, a deleted webhook, and Telegram's 400s that are about the chat, not the
/// message) is tried again until `retry_for`, so that fixing the configuration loses nothing.
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
        400 => match telegram_chat_problem(&response.body) {
            Some(problem) => Delivery::Transient(format!("{}{problem}", excerpt())),
            None => Delivery::Permanent(excerpt()),
        },
        413 | 422 => Delivery::Permanent(excerpt()),
        _ => Delivery::Transient(excerpt()),
    }
}

/// Telegram answers 400 for a chat it cannot post to as for a message it cannot take: that
/// the chat is gone or became a supergroup is the configuration's to fix (`Some`, with what to
/// do where Telegram says it), not the message's.
fn telegram_chat_problem(body: &str) -> Option<String> {
    let json = serde_json::from_str::<serde_json::Value>(body).ok()?;
    if let Some(id) = json["parameters"]["migrate_to_chat_id"].as_i64() {
        return Some(format!(
            " (the group is now a supergroup: set chat_id = \"{id}\" in alerts.toml)"
        ));
    }
    let description = json["description"].as_str()?.to_ascii_lowercase();
    description
        .contains("chat not found")
        .then(|| " (check chat_id, and that the bot is in the chat)".to_owned())
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
                .and_then(|wait| seconds(wait.as_secs_f64()))
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
    // At least a second: `Retry-After: 0` would have the alerter ask again at once.
    secs.is_finite()
        .then(|| Duration::from_secs_f64(secs.clamp(1.0, 86_400.0)))
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
