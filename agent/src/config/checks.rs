//! How each kind of value of the agent's configuration is checked, and what is said when it
//! cannot be used: plain functions from what the file has to what the agent runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
pub use respawn_common::config_file::{at_least, non_empty, whole};
use respawn_common::config_file::{each, with_article, without_nul, FromValue, Wrong};
use respawn_common::ids::{validate_agent_id, validate_process_name};
use respawn_common::ids::{AGENT_ID_PATTERN, PROCESS_NAME_PATTERN};
use respawn_common::messages::{Notify, Permission};
use respawn_common::signing::VerifyingKey;
use respawn_common::text::listed;
use respawn_common::topics::Topics;

use super::{ContainmentMode, Environment, Probe, RestartPolicy};
use super::{INVOCATION_VAR, PROBE_VAR, PROCESS_VAR};

pub const SECOND: Duration = Duration::from_secs(1);
pub const MINUTE: Duration = Duration::from_secs(60);

/// A duration in words, for messages: `10s`, `1m 30s`.
pub fn words(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn agent_id_text(id: String) -> Result<String, Wrong> {
    match validate_agent_id(&id) {
        Ok(()) => Ok(id),
        Err(e) => Err(Wrong::then(format_args!(
            "{id:?} is not a valid agent id ({AGENT_ID_PATTERN}): it {e}"
        ))),
    }
}

pub fn process_name(name: String) -> Result<String, Wrong> {
    match validate_process_name(&name) {
        Ok(()) => Ok(name),
        Err(e) => Err(Wrong::then(format_args!(
            "{name:?} is not valid ({PROCESS_NAME_PATTERN}): it {e}"
        ))),
    }
}

pub fn operator_name(name: String) -> Result<String, Wrong> {
    match validate_process_name(&name) {
        Ok(()) => Ok(name),
        Err(e) => Err(Wrong::says(format_args!(
            "{name:?} is not a valid name: it {e}"
        ))),
    }
}

/// A public key line, which must be the key of the operator `name` it is given to.
pub fn public_key(line: String, name: Option<&str>) -> Result<VerifyingKey, Wrong> {
    if let (Some(in_line), Some(name)) = (VerifyingKey::line_name(&line), name) {
        if in_line != name {
            return Err(Wrong::says(format_args!("this is the key of {in_line:?}, whose commands are signed as {in_line:?}: name the operator {in_line:?}, or make a key for {name:?}")));
        }
    }
    VerifyingKey::parse(&line).map_err(Wrong::says)
}

pub fn permissions(names: Vec<String>) -> Result<Vec<Permission>, Wrong> {
    let unknown = names.iter().filter(|n| Permission::from_name(n).is_none());
    every_one_refused(unknown, "a command", "commands").map_err(|is_not| {
        let known = Permission::ALL.map(Permission::as_str).join(", ");
        Wrong::says(format_args!("{is_not} ({known})"))
    })?;
    Ok(names
        .iter()
        .filter_map(|n| Permission::from_name(n))
        .collect())
}

/// Process-name globs: letters, digits, `_-.` and the wildcards `*` and `?`.
pub fn globs(globs: Vec<String>) -> Result<Vec<String>, Wrong> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.*?".contains(c);
    let wrong = globs
        .iter()
        .filter(|g| g.is_empty() || !g.chars().all(allowed));
    every_one_refused(wrong, "a process-name glob", "process-name globs").map_err(Wrong::says)?;
    Ok(globs)
}

/// Every item of a list that is not what it should be, named in one refusal:
/// `"log" and "follow" are not commands`.
fn every_one_refused<'a>(
    wrong: impl Iterator<Item = &'a String>,
    one: &str,
    many: &str,
) -> Result<(), String> {
    let quoted: Vec<String> = wrong.map(|w| format!("{w:?}")).collect();
    match quoted.len() {
        0 => Ok(()),
        1 => Err(format!("{} is not {one}", quoted.concat())),
        _ => Err(format!("{} are not {many}", listed(&quoted, "and"))),
    }
}

pub fn socket_address(text: String) -> Result<SocketAddr, Wrong> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(Wrong::then(format_args!(
            "{text:?} is not an IP address with a port, e.g. \"127.0.0.1:1883\" (a name such as localhost is not looked up)"
        ))),
    }
}

pub fn topic_prefix(prefix: String) -> Result<Topics, Wrong> {
    Topics::new(&prefix).map_err(Wrong::says)
}

/// MQTT's keep-alive: whole seconds in two bytes, and no shorter than a slow link allows.
pub const KEEP_ALIVE_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(u16::MAX as u64);

/// A duration within `range`, which a refusal says in words.
pub fn between(
    range: RangeInclusive<Duration>,
) -> impl FnOnce(Duration) -> Result<Duration, Wrong> {
    move |d| match range.contains(&d) {
        true => Ok(d),
        false => Err(Wrong::must(format_args!(
            "be between {} and {}",
            words(*range.start()),
            words(*range.end())
        ))),
    }
}

pub fn longer_than_zero(d: Duration) -> Result<Duration, Wrong> {
    match d.is_zero() {
        true => Err(Wrong::must("be longer than 0s")),
        false => Ok(d),
    }
}

/// A backoff's first delay: a crashing program must not be restarted in a busy loop.
pub fn busy_loop_free(d: Duration) -> Result<Duration, Wrong> {
    match d < Duration::from_millis(1) {
        true => Err(Wrong::must(
            "be at least 1ms, or a crashing program would be restarted in a busy loop",
        )),
        false => Ok(d),
    }
}

/// Another account for a process: only an agent that runs as root may switch to it, and the
/// agent's own account is no switch at all. An account that does not exist (yet: the package
/// that makes it may come later) keeps only its process from starting, as a missing program
/// does: `check` notes it, and the start fails with `spawn_failed`.
pub fn user(name: String, env: &Environment) -> Result<String, Wrong> {
    let name = non_empty(name)?;
    if !env.is_root && env.own_account.as_deref() != Some(name.as_str()) {
        return Err(Wrong::says(format_args!(
            "switching to user {name:?} needs the agent to run as root"
        )));
    }
    Ok(name)
}

/// argv: a non-empty list of strings, the program not empty, none with a NUL byte.
pub fn argv(value: toml::Value) -> Result<Vec<String>, Wrong> {
    let toml::Value::Array(items) = value else {
        return Err(Wrong::must(
            "be a list of strings, e.g. [\"ruby\", \"server.rb\"]; for a shell line use [\"sh\", \"-c\", \"...\"]",
        ));
    };
    if items.is_empty() {
        return Err(Wrong::must("not be empty"));
    }
    let argument = |(i, item): (usize, toml::Value)| {
        let what = match i {
            0 => "the program".to_owned(),
            i => format!("argument {i}"),
        };
        let text = String::from_value(item).and_then(match i {
            0 => non_empty,
            _ => without_nul,
        });
        text.map_err(|w| Wrong::says(w.about(&what)))
    };
    each(items.into_iter().enumerate().map(argument))
}

pub fn environment(value: toml::Value) -> Result<BTreeMap<String, String>, Wrong> {
    let toml::Value::Table(table) = value else {
        return Err(Wrong::must("be a table"));
    };
    let variable = |(name, value): (String, toml::Value)| {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(Wrong::says(format_args!(
                "{name:?} is not a valid variable name"
            )));
        }
        if [INVOCATION_VAR, PROCESS_VAR, PROBE_VAR].contains(&name.as_str()) {
            return Err(Wrong::says(format_args!(
                "{name} is set by the agent, for each start"
            )));
        }
        let text = String::from_value(value).and_then(without_nul);
        Ok((name.clone(), text.map_err(|w| Wrong::says(w.about(&name)))?))
    };
    Ok(each(table.into_iter().map(variable))?.into_iter().collect())
}

pub fn containment_mode(text: String) -> Result<ContainmentMode, Wrong> {
    use ContainmentMode::*;
    one_of(
        text,
        &[
            ("auto", Auto),
            ("cgroup", Cgroup),
            ("process-group", ProcessGroup),
        ],
    )
}

pub fn restart(text: String) -> Result<RestartPolicy, Wrong> {
    use RestartPolicy::*;
    one_of(
        text,
        &[
            ("always", Always),
            ("on-failure", OnFailure),
            ("never", Never),
        ],
    )
}

/// The value that `text` names among `names`; the refusal lists them.
fn one_of<T: Copy>(text: String, names: &[(&str, T)]) -> Result<T, Wrong> {
    if let Some(&(_, value)) = names.iter().find(|(name, _)| *name == text) {
        return Ok(value);
    }
    let quoted: Vec<String> = names.iter().map(|(name, _)| format!("{name:?}")).collect();
    let expected = listed(&quoted, "or");
    Err(Wrong::then(format_args!(
        "is {text:?}; expected {expected}"
    )))
}

/// A signal a process can handle (not KILL or STOP), with or without `SIG`, in any case.
pub fn signal_name(text: String) -> Result<Signal, Wrong> {
    if let Ok(Ok(signal)) = text.trim().parse::<i32>().map(Signal::try_from) {
        let name = signal.as_str().trim_start_matches("SIG");
        if signal_name(name.to_owned()).is_ok() {
            return Err(Wrong::says(format_args!(
                "{text:?}: signals are named, not numbered: write \"{name}\""
            )));
        }
    }
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if bare.starts_with("RTMIN") || bare.starts_with("RTMAX") {
        return Err(Wrong::says(format_args!("{text:?}: real-time signals are not supported as a stop signal; use e.g. \"TERM\", \"INT\", \"QUIT\" or \"HUP\"")));
    }
    match Signal::from_str(&format!("SIG{bare}")) {
        Ok(Signal::SIGKILL | Signal::SIGSTOP) | Err(_) => Err(Wrong::says(format_args!("{text:?} is not a signal a process can handle; use e.g. \"TERM\", \"INT\", \"QUIT\" or \"HUP\""))),
        Ok(signal) => Ok(signal),
    }
}

pub fn notify_name(text: String) -> Result<Notify, Wrong> {
    one_of(text, &Notify::ALL.map(|n| (n.as_str(), n)))
}

/// A size of at least 1 MB: a number of bytes, or a string such as `"200MB"`, `"512MiB"`,
/// `"1G"` (decimal and binary units, case-insensitive).
pub fn memory_size(value: toml::Value) -> Result<u64, Wrong> {
    let bytes = match value {
        toml::Value::Integer(n) => u64::try_from(n).ok(),
        toml::Value::String(text) => match parse_size::parse_size(&text) {
            Err(parse_size::Error::PosOverflow) => {
                return Err(Wrong::then(format_args!(
                    "is {text:?}: more than any machine has (at most 16EiB)"
                )))
            }
            read => read.ok(),
        },
        // `1e9` reads as a size but is none: said as a type mistake, not as too small.
        other => {
            return Err(Wrong::must(format_args!(
                "be a size such as \"200MB\" or \"1GiB\", or a whole number of bytes, not {}",
                with_article(other.type_str())
            )))
        }
    };
    bytes
        .filter(|&n| n >= 1_000_000)
        .ok_or_else(|| Wrong::must("be a size of at least 1MB, such as \"200MB\" or \"1GiB\""))
}

/// An HTTP status or a range of them: `200` (or `"200"`), `"200-299"`.
pub fn status_range(value: toml::Value) -> Result<(u16, u16), Wrong> {
    let number = |text: &str| text.trim().parse::<u16>().ok();
    let range = match value {
        toml::Value::Integer(n) => u16::try_from(n).ok().map(|n| (n, n)),
        toml::Value::String(text) => match text.split_once('-') {
            Some((low, high)) => number(low).zip(number(high)),
            None => number(&text).map(|n| (n, n)),
        },
        _ => None,
    };
    range
        .filter(|&(low, high)| (100..=599).contains(&low) && low <= high && high <= 599)
        .ok_or_else(|| Wrong::must("be a status such as 200 or a range such as \"200-399\""))
}

/// `http://host[:port][/path]`, passing with a status from 200 to 399 unless `status` says
/// otherwise. Only plain HTTP: a health check talks to the process on this machine.
pub fn http_probe(url: String) -> Result<Probe, Wrong> {
    let url = non_empty(url)?;
    let (host, port, path) = parse_http_url(&url).map_err(Wrong::says)?;
    Ok(Probe::Http {
        url,
        host,
        port,
        path,
        status: (200, 399),
        body: None,
    })
}

pub fn tcp_probe(address: String) -> Result<Probe, Wrong> {
    let address = non_empty(address)?;
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(Probe::Tcp { address })
        }
        _ => Err(Wrong::says(format_args!(
            "{address:?} is not HOST:PORT, e.g. \"127.0.0.1:4567\""
        ))),
    }
}

/// `http://host[:port][/path]` as host, port and path.
fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} must start with http:// (health checks are plain HTTP)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        _ if authority.starts_with('[') && authority.ends_with(']') => (authority, 80),
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("{url:?}: {port:?} is not a port"))?,
        ),
        _ => (authority, 80),
    };
    let unbalanced = host.starts_with('[') != host.ends_with(']') || host == "[]";
    if host.is_empty()
        || unbalanced
        || host.contains(char::is_whitespace)
        || path.contains(char::is_whitespace)
    {
        return Err(format!(
            "{url:?} is not a URL such as http://127.0.0.1:4567/health"
        ));
    }
    Ok((
        host.trim_matches(['[', ']']).to_owned(),
        port,
        path.to_owned(),
    ))
}
