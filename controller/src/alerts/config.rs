//! `alerts.toml`: how alerts behave (grace period, grouping, reminders, retries), where the
//! alerter keeps its state, and the chat targets with what each wants to hear about.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    fn default_min_interval(&self) -> Duration {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    grace: Option<String>,
    group_window: Option<String>,
    remind_every: Option<String>,
    resolve_after: Option<String>,
    retry_for: Option<String>,
    state_file: Option<PathBuf>,
    client_id: Option<String>,
    session_expiry: Option<String>,
    shared_group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: String,
    name: Option<String>,
    url: Option<String>,
    token: Option<String>,
    chat_id: Option<TextOrNumber>,
    api: Option<String>,
    homeserver: Option<String>,
    room: Option<String>,
    agents: Option<Vec<String>>,
    processes: Option<Vec<String>>,
    kinds: Option<Vec<String>>,
    min_interval: Option<String>,
}

/// Telegram chat ids are numbers (`-1001234`) or `@channelname`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(i64),
}

/// Reads and checks `path`. `default_state_file` is used when the file names none.
pub fn load(path: &Path, default_state_file: PathBuf) -> Result<AlertsConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, default_state_file).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str, default_state_file: PathBuf) -> Result<AlertsConfig, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut duration = |what: &str, value: Option<String>, default: Duration| -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(&text) {
            Ok(d) if d <= Duration::from_secs(365 * 24 * 3600) => d,
            Ok(_) => {
                problems.push(format!("[alerts] {what}: {text:?} is longer than a year"));
                default
            }
            Err(e) => {
                problems.push(format!("[alerts] {what}: {text:?} is not a duration: {e}"));
                default
            }
        }
    };
    let a = raw.alerts;
    let rules = RuleSettings {
        grace: duration("grace", a.grace, Duration::from_secs(60)),
        remind_every: duration(
            "remind_every",
            a.remind_every,
            Duration::from_secs(4 * 3600),
        ),
        resolve_after: duration("resolve_after", a.resolve_after, Duration::from_secs(60)),
    };
    let group_window = duration("group_window", a.group_window, Duration::from_secs(5));
    let retry_for = duration("retry_for", a.retry_for, Duration::from_secs(24 * 3600));
    let session_expiry = duration(
        "session_expiry",
        a.session_expiry,
        Duration::from_secs(7 * 24 * 3600),
    );
    let client_id = a.client_id.unwrap_or_else(|| "respawn-alerts".into());
    if client_id.is_empty()
        || client_id.len() > 64
        || !client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(format!(
            "[alerts] client_id: {client_id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    if let Some(group) = &a.shared_group {
        if group.is_empty() || group.contains(['/', '+', '#']) {
            problems.push(format!(
                "[alerts] shared_group: {group:?} must be non-empty, without '/', '+' or '#'"
            ));
        }
    }

    let mut targets: Vec<TargetConfig> = Vec::new();
    let of_kind = |kind: &str| raw.target.iter().filter(|t| t.kind == kind).count();
    let counts: Vec<usize> = raw.target.iter().map(|t| of_kind(&t.kind)).collect();
    for (index, t) in raw.target.into_iter().enumerate() {
        // The name keys the target's undelivered messages in the state file: it must not
        // change when another target is added or removed.
        let label = match (&t.name, counts[index]) {
            (Some(name), _) => name.clone(),
            (None, 1) => t.kind.clone(),
            (None, _) => {
                problems.push(format!(
                    "[[target]] #{}: there are several {} targets: give each a `name`",
                    index + 1,
                    t.kind
                ));
                continue;
            }
        };
        if label.is_empty() || label.chars().any(|c| c.is_control()) {
            problems.push(format!(
                "[[target]] #{}: `name` {label:?} is not a name",
                index + 1
            ));
            continue;
        }
        match target(t, &label) {
            Ok(target) => {
                if targets.iter().any(|o| o.name == target.name) {
                    problems.push(format!("[[target]] {label:?}: duplicate name"));
                }
                targets.push(target);
            }
            Err(mut e) => problems.append(&mut e),
        }
    }
    if targets.is_empty() && problems.is_empty() {
        problems.push("no [[target]]: say where alerts should go".into());
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    Ok(AlertsConfig {
        rules,
        group_window,
        retry_for,
        state_file: a.state_file.unwrap_or(default_state_file),
        client_id,
        session_expiry,
        shared_group: a.shared_group,
        targets,
    })
}

fn target(t: RawTarget, label: &str) -> Result<TargetConfig, Vec<String>> {
    let mut problems = Vec::new();
    let ctx = format!("[[target]] {label:?}");
    let mut need = |what: &str, value: Option<String>| -> String {
        match value {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => {
                problems.push(format!("{ctx}: a {} target needs `{what}`", t.kind));
                String::new()
            }
        }
    };
    let channel = match t.kind.as_str() {
        "slack" => Channel::Slack {
            url: need("url", t.url),
        },
        "discord" => Channel::Discord {
            url: need("url", t.url),
        },
        "webhook" => Channel::Webhook {
            url: need("url", t.url),
        },
        "telegram" => Channel::Telegram {
            token: need("token", t.token),
            chat_id: need(
                "chat_id",
                t.chat_id.map(|c| match c {
                    TextOrNumber::Text(s) => s,
                    TextOrNumber::Number(n) => n.to_string(),
                }),
            ),
            api: t
                .api
                .unwrap_or_else(|| "https://api.telegram.org".into())
                .trim_end_matches('/')
                .to_owned(),
        },
        "matrix" => Channel::Matrix {
            homeserver: need("homeserver", t.homeserver)
                .trim_end_matches('/')
                .to_owned(),
            room: need("room", t.room),
            token: need("token", t.token),
        },
        "ntfy" => Channel::Ntfy {
            url: need("url", t.url).trim_end_matches('/').to_owned(),
            token: t.token.filter(|t| !t.is_empty()),
        },
        other => {
            return Err(vec![format!(
            "{ctx}: kind {other:?} is not one of slack, discord, telegram, matrix, ntfy, webhook"
        )])
        }
    };
    for url in urls(&channel) {
        if !(url.starts_with("https://") || url.starts_with("http://") || url.is_empty()) {
            problems.push(format!(
                "{ctx}: {:?} is not an http:// or https:// URL",
                redact(url)
            ));
        }
    }
    if let Channel::Matrix { room, .. } = &channel {
        if !room.is_empty() && !room.starts_with('!') {
            problems.push(format!(
                "{ctx}: room {room:?} must be a room id (!abc:example.org), not an alias: find it in the room's settings"
            ));
        }
    }
    if let Channel::Ntfy { url, .. } = &channel {
        let topic = url.rsplit('/').next().unwrap_or_default();
        if url.matches('/').count() < 3 || topic.is_empty() {
            problems.push(format!(
                "{ctx}: url must be the server and the topic, e.g. https://ntfy.sh/my-door-alerts"
            ));
        }
    }
    let globs = |what: &str, list: Option<Vec<String>>, problems: &mut Vec<String>| {
        let list = list.unwrap_or_else(|| vec!["*".into()]);
        for g in &list {
            if g.is_empty() || g.contains(char::is_whitespace) {
                problems.push(format!("{ctx}: `{what}`: {g:?} is not a glob"));
            }
        }
        list
    };
    let agents = globs("agents", t.agents, &mut problems);
    let processes = globs("processes", t.processes, &mut problems);
    let kinds = match t.kinds {
        None => AlertKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .filter_map(|n| {
                let kind = AlertKind::from_name(n);
                if kind.is_none() {
                    problems.push(format!(
                        "{ctx}: `kinds`: {n:?} is not one of {}",
                        AlertKind::ALL.map(AlertKind::as_str).join(", ")
                    ));
                }
                kind
            })
            .collect(),
    };
    let min_interval = match t.min_interval {
        None => channel.default_min_interval(),
        Some(text) => humantime::parse_duration(&text).unwrap_or_else(|e| {
            problems.push(format!(
                "{ctx}: min_interval {text:?} is not a duration: {e}"
            ));
            Duration::ZERO
        }),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(TargetConfig {
        name: label.to_owned(),
        channel,
        agents,
        processes,
        kinds,
        min_interval,
    })
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
            "[alerts] grace: \"soon\" is not a duration",
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
        assert!(parse(
            "[[target]]\nkind = \"slack\"\nurl = \"https://x\"\nsecret = 1\n",
            "/s".into()
        )
        .unwrap_err()
        .contains("unknown field `secret`"));
        assert!(parse("", "/s".into())
            .unwrap_err()
            .contains("no [[target]]"));
        let twins = "[[target]]\nkind = \"slack\"\nurl = \"https://a\"\n\n[[target]]\nkind = \"slack\"\nurl = \"https://b\"\n";
        assert!(parse(twins, "/s".into())
            .unwrap_err()
            .contains("[[target]] #1: there are several slack targets: give each a `name`"));
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
