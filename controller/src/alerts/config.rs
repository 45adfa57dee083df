//! `alerts.toml`: how alerts behave (grace period, grouping, reminders, retries), where the
//! alerter keeps its state, and the chat targets with what each wants to hear about.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use respawn_common::config_file::{self as file, checked, path, some, summary, FromValue};
use respawn_common::config_file::{Naming, Report, Section, Wrong};
use serde::Deserialize;
use smart_default::SmartDefault;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::rules::{AlertKind, Settings as RuleSettings};

/// The whole file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertsConfig {
    pub rules: RuleSettings,
    /// Messages are collected this long from the first one, then sent as one.
    pub group_window: Duration,
    /// A message that cannot be delivered is retried this long, then dropped (and logged).
    pub retry_for: Duration,
    pub state_file: PathBuf,
    /// The MQTT client id: the broker keeps this session, and queues events for it, while the
    /// alerter is away.
    pub client_id: String,
    /// How long the broker keeps that session while the alerter is away.
    pub session_expiry: Duration,
    /// With several alerters: the MQTT 5 shared-subscription group that shares the events.
    pub shared_group: Option<String>,
    pub targets: Vec<TargetConfig>,
}

/// One `[[target]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// Names it in logs and in the state file.
    pub name: String,
    pub channel: Channel,
    /// Agent-id globs it wants alerts for.
    pub agents: Vec<String>,
    /// Process-name globs it wants alerts for (agent alerts always pass).
    pub processes: Vec<String>,
    pub kinds: Vec<AlertKind>,
    /// At least this long between two messages to it.
    pub min_interval: Duration,
}

/// Where and how a target is reached, with that service's settings.
#[derive(Clone, PartialEq, Eq)]
pub enum Channel {
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Telegram {
        token: String,
        chat_id: String,
        api: String,
    },
    Matrix {
        homeserver: String,
        room: String,
        token: String,
    },
    Ntfy {
        url: String,
        token: Option<String>,
    },
    Webhook {
        url: String,
    },
}

impl Channel {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Slack { .. } => "slack",
            Self::Discord { .. } => "discord",
            Self::Telegram { .. } => "telegram",
            Self::Matrix { .. } => "matrix",
            Self::Ntfy { .. } => "ntfy",
            Self::Webhook { .. } => "webhook",
        }
    }

    /// Services that allow about one message a second get that, ntfy.sh's one per 5 s after
    /// a burst, Telegram groups 20 a minute.
    pub fn default_min_interval(&self) -> Duration {
        Duration::from_millis(match self {
            Self::Slack { .. } | Self::Matrix { .. } => 1000,
            Self::Discord { .. } => 2000,
            Self::Telegram { .. } => 3000,
            Self::Ntfy { .. } => 1000,
            Self::Webhook { .. } => 0,
        })
    }
}

/// URLs and tokens are secrets (a Slack or Discord webhook URL is all it takes to post).
impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", self.kind())
    }
}

/// `[alerts]` as the file says it.
#[derive(Deserialize, SmartDefault)]
#[serde(default)]
struct AlertsKeys {
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(60))]
    grace: Duration,
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(5))]
    group_window: Duration,
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(4 * 3600))]
    remind_every: Duration,
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(60))]
    resolve_after: Duration,
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(24 * 3600))]
    retry_for: Duration,
    /// Default: `~/.local/state/respawn/alerts.json`.
    #[serde(deserialize_with = "path")]
    state_file: Option<PathBuf>,
    #[serde(deserialize_with = "client_id")]
    #[default("respawn-alerts".to_owned())]
    client_id: String,
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(7 * 24 * 3600))]
    session_expiry: Duration,
    #[serde(deserialize_with = "shared_group")]
    shared_group: Option<String>,
}

/// What names a `[[target]]`, read first: messages about its other keys name it by them.
#[derive(Default, Deserialize)]
#[serde(default)]
struct TargetName {
    /// Required: slack, discord, telegram, matrix, ntfy or webhook.
    #[serde(deserialize_with = "any_text")]
    kind: Option<String>,
    /// Required when several targets have the same kind.
    #[serde(deserialize_with = "any_text")]
    name: Option<String>,
}

/// The keys each kind of target takes beside the ones all take (`name`, `kind`, `agents`,
/// `processes`, `kinds`, `min_interval`).
const KIND_KEYS: [(&str, &[&str]); 6] = [
    ("slack", &["url"]),
    ("discord", &["url"]),
    ("telegram", &["token", "chat_id", "api"]),
    ("matrix", &["homeserver", "room", "token"]),
    ("ntfy", &["url", "token"]),
    ("webhook", &["url"]),
];

/// The kinds of target, in words: `slack, discord, … or webhook`.
fn kinds_listed(conjunction: &str) -> String {
    respawn_common::text::listed(&KIND_KEYS.map(|(kind, _)| kind), conjunction)
}

/// The rest of a `[[target]]`; which of them its kind needs is checked by [`target`].
#[derive(Default, Deserialize)]
#[serde(default)]
struct TargetKeys {
    #[serde(deserialize_with = "placed_text")]
    url: Option<Spanned<String>>,
    #[serde(deserialize_with = "placed_text")]
    token: Option<Spanned<String>>,
    /// Telegram: a number (`-1001234`) or `@channelname`.
    #[serde(deserialize_with = "chat_id")]
    chat_id: Option<Spanned<String>>,
    #[serde(deserialize_with = "placed_text")]
    api: Option<Spanned<String>>,
    #[serde(deserialize_with = "placed_text")]
    homeserver: Option<Spanned<String>>,
    #[serde(deserialize_with = "placed_text")]
    room: Option<Spanned<String>>,
    #[serde(deserialize_with = "globs")]
    agents: Option<Vec<String>>,
    #[serde(deserialize_with = "globs")]
    processes: Option<Vec<String>>,
    #[serde(deserialize_with = "alert_kinds")]
    kinds: Option<Vec<AlertKind>>,
    #[serde(deserialize_with = "min_interval")]
    min_interval: Option<Duration>,
}

respawn_common::adapters! {
    duration -> Duration = Duration::from_value;
    client_id -> String = checked(client_id_text);
    shared_group -> Option<String> = some(checked(group_name));
    any_text -> Option<String> = some(String::from_value);
    globs -> Option<Vec<String>> = some(checked(glob_list));
    alert_kinds -> Option<Vec<AlertKind>> = some(checked(kind_names));
    min_interval -> Option<Duration> = some(Duration::from_value);
    placed_text => String = String::from_value;
    chat_id => String = chat_id_text;
}

/// Reads and checks `path`. `default_state_file` is used when the file names none.
pub fn load(path: &Path, default_state_file: PathBuf) -> Result<AlertsConfig, String> {
    let text = file::read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, default_state_file).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the text of an `alerts.toml`; every problem at once, each with its line.
pub fn parse(text: &str, default_state_file: PathBuf) -> Result<AlertsConfig, String> {
    let mut report = Report::new(text);
    let config = file::parse(text, &mut report)
        .map(|root| read(root.get_ref(), default_state_file, &mut report));
    report.finish().map_err(|problems| summary(&problems))?;
    config.ok_or_else(|| "no configuration".to_owned())
}

fn read(root: &DeTable<'_>, default_state_file: PathBuf, report: &mut Report<'_>) -> AlertsConfig {
    file::unknown_keys(root, &["alerts", "target"], "", report);
    let (mut alerts, mut targets) = (None, Vec::new());
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "alerts" => {
                let mut s = Section::new("[alerts]", Naming::Table, report);
                alerts = s.read(value, &[], &[]);
            }
            "target" => targets = read_targets(value, report),
            _ => {}
        }
    }
    let a: AlertsKeys = alerts.unwrap_or_default();
    if targets.is_empty() && report.count() == 0 {
        report.note("no [[target]]: say where alerts should go");
    }
    AlertsConfig {
        rules: RuleSettings {
            grace: a.grace,
            remind_every: a.remind_every,
            resolve_after: a.resolve_after,
            own_log: None,
        },
        group_window: a.group_window,
        retry_for: a.retry_for,
        state_file: a.state_file.unwrap_or(default_state_file),
        client_id: a.client_id,
        session_expiry: a.session_expiry,
        shared_group: a.shared_group,
        targets,
    }
}

fn client_id_text(id: String) -> Result<String, Wrong> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    match !id.is_empty() && id.len() <= 64 && id.chars().all(allowed) {
        true => Ok(id),
        false => Err(Wrong::says(format_args!(
            "{id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ))),
    }
}

fn group_name(group: String) -> Result<String, Wrong> {
    match group.is_empty() || group.contains(['/', '+', '#']) {
        true => Err(Wrong::says(format_args!(
            "{group:?} must be non-empty, without '/', '+' or '#'"
        ))),
        false => Ok(group),
    }
}

fn read_targets(value: &Spanned<DeValue<'_>>, report: &mut Report<'_>) -> Vec<TargetConfig> {
    let mut known = file::keys::<TargetName>().to_vec();
    known.extend(file::keys::<TargetKeys>());
    let named: Vec<(&Spanned<DeValue<'_>>, String, TargetName)> =
        file::array_of_tables(value, "target", report)
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let numbered = format!("[[target]] #{}", i + 1);
                let mut s = Section::new(numbered.clone(), Naming::Item, report);
                // Unknown keys are told below, under the target's name once it is known.
                if !matches!(item.get_ref(), DeValue::Table(_)) {
                    s.table(item, &known);
                    return None;
                }
                match s.values(item, true) {
                    Some(name) => Some((item, numbered, name)),
                    None => {
                        s.table(item, &known);
                        None
                    }
                }
            })
            .collect();
    let mut targets: Vec<TargetConfig> = Vec::new();
    for (item, numbered, name) in &named {
        let span = item.span();
        let Some(kind) = &name.kind else {
            let heading = match &name.name {
                Some(label) => format!("[[target]] {label:?}"),
                None => numbered.clone(),
            };
            let mut s = Section::new(heading, Naming::Item, report);
            s.table(item, &known);
            if Section::span_of(item, "kind").is_none() {
                s.missing(&span, "kind", &format!(" ({})", kinds_listed("or")));
            }
            continue;
        };
        let mut s = Section::new(numbered.clone(), Naming::Item, report);
        // The name keys the target's undelivered messages in the state file: it must not
        // change when another target is added or removed.
        let twins = named
            .iter()
            .filter(|(_, _, n)| n.kind.as_ref() == Some(kind));
        let label = match (&name.name, twins.count()) {
            (Some(name), _) => Some(name.clone()),
            (None, 1) => Some(kind.clone()),
            (None, _) => {
                let message =
                    format!("{numbered}: there are several {kind} targets: give each a `name`");
                s.problem(&span, message);
                None
            }
        };
        let label = label.filter(|label| {
            let bad = label.is_empty() || label.chars().any(|c| c.is_control());
            if bad {
                s.problem(&span, format!("{numbered}: `name` {label:?} is not a name"));
            }
            !bad
        });
        // A target without a usable name is checked all the same: every problem at once.
        let heading = match &label {
            Some(label) => format!("[[target]] {label:?}"),
            None => numbered.clone(),
        };
        let mut s = Section::new(heading, Naming::Item, report);
        s.table(item, &known);
        let before = s.count();
        let Some(keys) = s.values(item, true) else {
            continue;
        };
        let target = target(&mut s, keys, kind, label.clone().unwrap_or_default(), item);
        if s.count() > before || label.is_none() {
            continue;
        }
        if targets.iter().any(|o| o.name == target.name) {
            s.problem(&span, format!("{}: duplicate name", s.name));
        }
        targets.push(target);
    }
    targets
}

/// One target of `kind`, named `label`; what is wrong with it is reported to `s`.
fn target(
    s: &mut Section<'_, '_>,
    t: TargetKeys,
    kind: &str,
    label: String,
    item: &Spanned<DeValue<'_>>,
) -> TargetConfig {
    let span = &item.span();
    let url_span = [&t.url, &t.homeserver, &t.api]
        .into_iter()
        .find_map(|f| f.as_ref().map(Spanned::span))
        .unwrap_or_else(|| span.clone());
    let room_span = t.room.as_ref().map_or(span.clone(), Spanned::span);
    // A key that is there without a value was refused, and said so, as it was read.
    let need = |s: &mut Section<'_, '_>, key: &str, field: Option<Spanned<String>>| match field
        .map(|v| v.into_inner().trim().to_owned())
    {
        Some(v) if !v.is_empty() => v,
        None if Section::span_of(item, key).is_some() => String::new(),
        _ => {
            let message = format!("{}: a {kind} target needs `{key}`", s.name);
            s.problem(span, message);
            String::new()
        }
    };
    let without_slash = |text: String| text.trim_end_matches('/').to_owned();
    // A key of another kind of target would be ignored: a webhook's `token` sent nothing.
    if let Some((_, takes)) = KIND_KEYS.iter().find(|(k, _)| *k == kind) {
        let others = KIND_KEYS.iter().flat_map(|(_, keys)| keys.iter());
        let foreign: BTreeSet<&str> = others.filter(|key| !takes.contains(key)).copied().collect();
        for key in foreign {
            if let Some(at) = Section::span_of(item, key) {
                let takes = takes.join(", ");
                let message = format!(
                    "{}: a {kind} target takes no `{key}` (its keys: {takes})",
                    s.name
                );
                s.problem(&at, message);
            }
        }
    }
    let channel = match kind {
        "slack" => Channel::Slack {
            url: need(s, "url", t.url),
        },
        "discord" => Channel::Discord {
            url: need(s, "url", t.url),
        },
        "webhook" => Channel::Webhook {
            url: need(s, "url", t.url),
        },
        "telegram" => Channel::Telegram {
            token: need(s, "token", t.token),
            chat_id: need(s, "chat_id", t.chat_id),
            api: without_slash(
                t.api
                    .map_or_else(|| "https://api.telegram.org".into(), Spanned::into_inner),
            ),
        },
        "matrix" => Channel::Matrix {
            homeserver: without_slash(need(s, "homeserver", t.homeserver)),
            room: need(s, "room", t.room),
            token: need(s, "token", t.token),
        },
        "ntfy" => Channel::Ntfy {
            url: without_slash(need(s, "url", t.url)),
            token: t.token.map(Spanned::into_inner).filter(|t| !t.is_empty()),
        },
        other => {
            let message = format!(
                "{}: kind {other:?} is not one of {}",
                s.name,
                kinds_listed("or")
            );
            s.problem(span, message);
            Channel::Webhook { url: String::new() }
        }
    };
    for url in urls(&channel) {
        if !(url.starts_with("https://") || url.starts_with("http://") || url.is_empty()) {
            let message = format!(
                "{}: {:?} is not an http:// or https:// URL",
                s.name,
                redact(url)
            );
            s.problem(&url_span, message);
        } else if !url.is_empty() && !requestable(url) {
            let message = format!(
                "{}: {:?} is not a URL a request can be sent to (a host, a port up to 65535, no spaces)",
                s.name,
                redact(url)
            );
            s.problem(&url_span, message);
        }
    }
    if let Channel::Matrix { room, .. } = &channel {
        if !room.is_empty() && !room.starts_with('!') {
            let message = format!("{}: room {room:?} must be a room id (!abc:example.org), not an alias: find it in the room's settings", s.name);
            s.problem(&room_span, message);
        }
    }
    if let Channel::Telegram { token, .. } = &channel {
        let bot_token = token.split_once(':').is_some_and(|(bot, secret)| {
            bot.parse::<u64>().is_ok()
                && !secret.is_empty()
                && secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !token.is_empty() && !bot_token {
            let at = Section::span_of(item, "token").unwrap_or_else(|| span.clone());
            let message = format!("{}: token is not a bot token as @BotFather gives it (123456789:AA…, letters, digits, - and _)", s.name);
            s.problem(&at, message);
        }
    }
    if let Channel::Ntfy { url, .. } = &channel {
        let topic = url.rsplit('/').next().unwrap_or_default();
        if url.contains(['?', '#']) {
            let message = format!(
                "{}: url must be the server and the topic, without ?… or #… (an access token goes in `token`)",
                s.name
            );
            s.problem(&url_span, message);
        } else if !url.is_empty() && (url.matches('/').count() < 3 || topic.is_empty()) {
            let message = format!(
                "{}: url must be the server and the topic, e.g. https://ntfy.sh/my-door-alerts",
                s.name
            );
            s.problem(&url_span, message);
        }
    }
    let everything = || vec!["*".to_owned()];
    TargetConfig {
        name: label,
        min_interval: t
            .min_interval
            .unwrap_or_else(|| channel.default_min_interval()),
        channel,
        agents: t.agents.unwrap_or_else(everything),
        processes: t.processes.unwrap_or_else(everything),
        kinds: t.kinds.unwrap_or_else(|| AlertKind::ALL.to_vec()),
    }
}

/// A Telegram chat: its number (`-1001234`, also in quotes) or a public `@channelname`;
/// anything else Telegram refuses only when the first alert is due.
fn chat_id_text(value: toml::Value) -> Result<String, Wrong> {
    let number = |s: &str| s.strip_prefix('-').unwrap_or(s).parse::<u64>().is_ok();
    let channel = |s: &str| {
        s.strip_prefix('@').is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    match value {
        toml::Value::String(s) if number(&s) || channel(&s) => Ok(s),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::String(s) => Err(Wrong::then(format_args!(
            "is {s:?}: a chat is a number such as -1001234567890 or a @channelname"
        ))),
        _ => Err(Wrong::must("be a number or a @channelname")),
    }
}

fn glob_list(list: Vec<String>) -> Result<Vec<String>, Wrong> {
    let list = some_named(list)?;
    match list
        .iter()
        .find(|g| g.is_empty() || g.contains(char::is_whitespace))
    {
        Some(g) => Err(Wrong::says(format_args!("{g:?} is not a glob"))),
        None => Ok(list),
    }
}

fn kind_names(names: Vec<String>) -> Result<Vec<AlertKind>, Wrong> {
    let names = some_named(names)?;
    let known = AlertKind::ALL.map(AlertKind::as_str);
    let kind = |n: &String| {
        AlertKind::from_name(n).ok_or_else(|| {
            let near = file::closest(n, &known)
                .map_or(String::new(), |k| format!(" (did you mean `{k}`?)"));
            Wrong::says(format_args!(
                "{n:?} is not one of {}{near}",
                known.join(", ")
            ))
        })
    };
    names.iter().map(kind).collect()
}

/// A list that narrows what a target is sent: an empty one would send it nothing at all.
fn some_named(list: Vec<String>) -> Result<Vec<String>, Wrong> {
    match list.is_empty() {
        true => Err(Wrong::must(
            "name at least one (leave it out for all): with none the target is sent nothing",
        )),
        false => Ok(list),
    }
}

/// Whether the HTTP client can send a request to `url`: what it parses, with a host and a
/// port it can use.
fn requestable(url: &str) -> bool {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    let port_written = authority
        .as_str()
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'));
    !authority.host().is_empty() && (!port_written || authority.port_u16().is_some())
}

fn urls(channel: &Channel) -> Vec<&str> {
    match channel {
        Channel::Slack { url }
        | Channel::Discord { url }
        | Channel::Webhook { url }
        | Channel::Ntfy { url, .. } => vec![url],
        Channel::Telegram { api, .. } => vec![api],
        Channel::Matrix { homeserver, .. } => vec![homeserver],
    }
}

/// A URL fit for a log or an error message: scheme and host only (webhook URLs carry their
/// secret in the path).
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // user:password@ is a secret too.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if end < rest.len() {
        format!("{scheme}{host}/…")
    } else {
        format!("{scheme}{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> AlertsConfig {
        parse(text, PathBuf::from("/state.json")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_and_every_kind_of_target() {
        let config = parse_ok(
            r#"
            [[target]]
            kind = "slack"
            url = "https://hooks.slack.com/services/T/B/X"

            [[target]]
            kind = "discord"
            url = "https://discord.com/api/webhooks/1/abc"
            agents = ["door-*"]
            kinds = ["crash_loop", "offline"]

            [[target]]
            kind = "telegram"
            token = "123:abc"
            chat_id = -100123

            [[target]]
            kind = "matrix"
            homeserver = "https://matrix.example.org/"
            room = "!abc:example.org"
            token = "syt_x"

            [[target]]
            kind = "ntfy"
            url = "https://ntfy.sh/door-alerts"

            [[target]]
            name = "pager"
            kind = "webhook"
            url = "http://alertmanager:9093/hook"
            processes = ["doorbot"]
            min_interval = "0s"
            "#,
        );
        assert_eq!(config.rules.grace, Duration::from_secs(60));
        assert_eq!(config.rules.remind_every, Duration::from_secs(4 * 3600));
        assert_eq!(config.group_window, Duration::from_secs(5));
        assert_eq!(config.retry_for, Duration::from_secs(24 * 3600));
        assert_eq!(config.client_id, "respawn-alerts");
        assert_eq!(config.state_file, PathBuf::from("/state.json"));
        let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["slack", "discord", "telegram", "matrix", "ntfy", "pager"]
        );
        assert_eq!(config.targets[0].kinds, AlertKind::ALL);
        assert_eq!(
            config.targets[1].kinds,
            [AlertKind::CrashLoop, AlertKind::Offline]
        );
        assert_eq!(
            config.targets[2].channel,
            Channel::Telegram {
                token: "123:abc".into(),
                chat_id: "-100123".into(),
                api: "https://api.telegram.org".into()
            }
        );
        assert!(
            matches!(&config.targets[3].channel, Channel::Matrix { homeserver, .. } if homeserver == "https://matrix.example.org")
        );
        assert_eq!(config.targets[5].min_interval, Duration::ZERO);
        assert_eq!(
            format!("{:?}", config.targets[0].channel),
            "slack(..)",
            "no secrets in logs"
        );
    }

    /// Found by a review: a webhook's `token` was taken and sent nowhere; an ntfy URL with
    /// `?auth=` lost it; a Telegram token with a space or a `/` failed only when sent.
    #[test]
    fn what_a_target_would_not_use_is_refused() {
        let error = parse(
            "[[target]]\nkind = \"webhook\"\nurl = \"http://x/hook\"\ntoken = \"secret\"\n\n[[target]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nchat_id = 5\nroom = \"!a:b\"\n\n[[target]]\nkind = \"ntfy\"\nurl = \"https://ntfy.sh/door?auth=SECRET\"\n\n[[target]]\nkind = \"telegram\"\nchat_id = 5\ntoken = \"123:SECRET/../x\"\n",
            "/s".into(),
        )
        .unwrap_err();
        for said in [
            "line 4: [[target]] \"webhook\": a webhook target takes no `token` (its keys: url)",
            "line 9: [[target]] \"slack\": a slack target takes no `chat_id` (its keys: url)",
            "line 10: [[target]] \"slack\": a slack target takes no `room` (its keys: url)",
            "line 14: [[target]] \"ntfy\": url must be the server and the topic, without ?… or #…",
            "line 19: [[target]] \"telegram\": token is not a bot token",
        ] {
            assert!(error.contains(said), "{said:?} in {error}");
        }
        assert!(!error.contains("SECRET"), "{error}");
        assert_eq!(error.lines().count(), 6, "{error}");
    }

    #[test]
    fn a_url_no_request_can_go_to_is_refused() {
        for (url, fine) in [
            ("http://", false),
            ("http://x y/", false),
            ("http://127.0.0.1:99999/", false),
            ("https://:443/x", false),
            ("http://127.0.0.1:8080/hook", true),
            ("https://[::1]/hook", true),
            ("https://[::1]:8443/hook", true),
            ("https://hooks.slack.com/services/T/B/X", true),
        ] {
            let text = format!("[[target]]\nkind = \"webhook\"\nurl = \"{url}\"\n");
            match parse(&text, "/s".into()) {
                Ok(_) => assert!(fine, "{url} taken"),
                Err(error) => {
                    assert!(!fine, "{url}: {error}");
                    assert!(
                        error.contains("line 3: [[target]] \"webhook\": "),
                        "{error}"
                    );
                    assert!(
                        error.contains("is not a URL a request can be sent to"),
                        "{error}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_problem_is_named() {
        let error = parse(
            r##"
            [alerts]
            grace = "soon"
            shared_group = "a/b"

            [[target]]
            kind = "slack"

            [[target]]
            kind = "matrix"
            homeserver = "matrix.example.org"
            room = "#door:example.org"
            token = "x"

            [[target]]
            kind = "ntfy"
            url = "https://ntfy.sh"

            [[target]]
            kind = "webhook"
            url = "https://x"
            kinds = ["crashed", "exploded"]

            [[target]]
            kind = "pigeon"
            "##,
            PathBuf::from("/s"),
        )
        .unwrap_err();
        for expected in [
            // As the agent says it (found by a new-user run: humantime's own words before).
            "[alerts] grace: bad duration \"soon\" (a number must come first); write e.g. \"10s\", \"500ms\" or \"10m\"",
            "[alerts] shared_group: \"a/b\"",
            "[[target]] \"slack\": a slack target needs `url`",
            "[[target]] \"matrix\": \"matrix.example.org\" is not an http:// or https:// URL",
            "must be a room id",
            "[[target]] \"ntfy\": url must be the server and the topic",
            "[[target]] \"webhook\": `kinds`: \"exploded\" is not one of crashed",
            "[[target]] \"pigeon\": kind \"pigeon\" is not one of",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
        // One target has one name in every problem of it, its unknown keys' too.
        let error = parse(
            "[[target]]\nkind = \"slack\"\nurl = \"notaurl\"\nsecret = 1\n\n[[target]]\nname = \"ops\"\nsecret = 2\n",
            "/s".into(),
        )
        .unwrap_err();
        for expected in [
            "line 3: [[target]] \"slack\": \"notaurl\" is not an http:// or https:// URL",
            "line 4: [[target]] \"slack\": unknown key `secret`",
            "line 8: [[target]] \"ops\": unknown key `secret`",
            "[[target]] \"ops\": missing `kind`",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
        assert!(!error.contains('#'), "{error}");
        assert!(parse("", "/s".into())
            .unwrap_err()
            .contains("no [[target]]"));
        let twins = "[[target]]\nkind = \"slack\"\nurl = \"https://a\"\n\n[[target]]\nkind = \"slack\"\nurl = \"ftp://b\"\nkinds = [\"exploded\"]\n";
        let error = parse(twins, "/s".into()).unwrap_err();
        assert!(
            error.contains("[[target]] #1: there are several slack targets: give each a `name`")
        );
        // A target without a name is checked all the same: every problem at once.
        for expected in [
            "line 7: [[target]] #2: \"ftp://b\" is not an http:// or https:// URL",
            "line 8: [[target]] #2: `kinds`: \"exploded\"",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
    }

    #[test]
    fn a_refused_required_value_is_one_problem_not_also_a_missing_key() {
        let error = parse(
            "[[target]]\nkind = \"telegram\"\ntoken = 5\nchat_id = []\n\n[[target]]\nkind = \"ntfy\"\nurl = 5\n",
            "/s".into(),
        )
        .unwrap_err();
        assert!(error.contains("3 problems:"), "{error}");
        for expected in [
            "line 3: [[target]] \"telegram\": `token` must be a string, not an integer",
            "line 4: [[target]] \"telegram\": `chat_id`",
            "line 8: [[target]] \"ntfy\": `url` must be a string, not an integer",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
    }

    #[test]
    fn a_target_sent_nothing_is_refused_and_a_kind_near_a_known_one_is_named() {
        let text = "[[target]]\nname = \"none\"\nkind = \"webhook\"\nurl = \"http://hooks.lan/x\"\nagents = []\nprocesses = []\nkinds = []\n\n[[target]]\nname = \"near\"\nkind = \"webhook\"\nurl = \"http://hooks.lan/y\"\nkinds = [\"crashloop\"]\n";
        let error = parse(text, "/s".into()).unwrap_err();
        for expected in [
            "4 problems:",
            "line 5: [[target]] \"none\": `agents` must name at least one (leave it out for all)",
            "line 6: [[target]] \"none\": `processes` must name at least one",
            "line 7: [[target]] \"none\": `kinds` must name at least one",
            "line 13: [[target]] \"near\": `kinds`: \"crashloop\" is not one of crashed, crash_loop",
            "(did you mean `crash_loop`?)",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
    }

    #[test]
    fn a_telegram_chat_is_a_number_or_a_channel() {
        let target = |chat: &str| {
            format!("[[target]]\nkind = \"telegram\"\ntoken = \"1:x\"\nchat_id = {chat}\n")
        };
        for fine in ["-1001234", "\"-1001234\"", "\"42\"", "\"@door_alerts\""] {
            let config = parse(&target(fine), "/s".into());
            assert!(config.is_ok(), "{fine}: {config:?}");
        }
        for wrong in ["\"mychat\"", "\"@\"", "\"@door alerts\"", "\"\""] {
            let error = parse(&target(wrong), "/s".into()).unwrap_err();
            assert!(
                error.contains("line 4: [[target]] \"telegram\": `chat_id` is")
                    && error
                        .contains("a chat is a number such as -1001234567890 or a @channelname"),
                "{wrong}: {error}"
            );
        }
    }

    #[test]
    fn problems_come_at_once_with_their_lines() {
        let text = "[alerts]\ngrace = \"soon\"\nshared_grop = \"x\"\n\n[[target]]\nkind = \"matrix\"\nhomeserver = \"matrix.example.org\"\nroom = \"#door:example.org\"\ntoken = \"x\"\nmin_interval = 5\n";
        let error = parse(text, "/s".into()).unwrap_err();
        for expected in [
            "5 problems:",
            "line 2: [alerts] grace: bad duration \"soon\" (a number must come first); write e.g. \"10s\", \"500ms\" or \"10m\"",
            "line 3: [alerts]: unknown key `shared_grop` (did you mean `shared_group`?)",
            "line 7: [[target]] \"matrix\": \"matrix.example.org\" is not an http:// or https:// URL",
            "line 8: [[target]] \"matrix\": room \"#door:example.org\" must be a room id",
            "line 10: [[target]] \"matrix\": `min_interval` must be a duration string such as \"10s\", \"500ms\" or \"10m\"",
        ] {
            assert!(error.contains(expected), "{expected:?} in\n{error}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_secret_path() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact("broker.lan/hook/secret"), "broker.lan/…");
        assert_eq!(
            redact("https://user:pass@hooks.lan?token=abc"),
            "https://hooks.lan/…"
        );
        assert_eq!(redact("https://ntfy.sh"), "https://ntfy.sh");
    }
}
