//! The serde side of the configuration: the adapters that the fields of the parent module
//! name in `deserialize_with`, each a check of [`checks`](super::checks) whose refusals are
//! kept for the report, and the two tables whose file shape differs from what the agent runs
//! with (`[process.health]` and `[[operator]]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use respawn_common::config_file::{lenient, refuse, refused_so_far, FromValue, Wrong};
use respawn_common::messages::{Notify, Permission};
use respawn_common::mqtt::BrokerUrl;
use respawn_common::topics::Topics;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::checks::*;
use super::{Backoff, ContainmentMode, HealthCheck, Probe, RestartPolicy};

/// Declares serde adapters: each reads its key's value with a check, and keeps what is wrong
/// for the report ([`lenient`]) instead of failing the whole table.
macro_rules! adapters {
    ($($name:ident -> $out:ty = $check:expr;)*) => {$(
        pub fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$out, D::Error> {
            lenient(d, $check)
        }
    )*};
}

/// A value that must be there when its key is: `Some` is what the adapter returns, and what
/// stands in for a refused one does not matter, as the file is refused.
fn some<T>(
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> impl FnOnce(toml::Value) -> Result<Option<T>, Wrong> {
    move |value| check(value).map(Some)
}

fn checked<T: FromValue, U>(
    check: impl FnOnce(T) -> Result<U, Wrong>,
) -> impl FnOnce(toml::Value) -> Result<U, Wrong> {
    move |value| T::from_value(value).and_then(check)
}

adapters! {
    flag -> bool = bool::from_value;
    any_text -> String = String::from_value;
    text -> Option<String> = some(checked(non_empty));
    path -> Option<PathBuf> = some(checked(|t| non_empty(t).map(Into::into)));
    state_dir -> PathBuf = checked(|t| non_empty(t).map(Into::into));
    agent_id -> String = checked(agent_id_text);
    containment -> ContainmentMode = checked(containment_mode);
    topics -> Topics = checked(topic_prefix);
    keep_alive -> Duration = checked(between(5, 65_535, "5s and 18h"));
    heartbeat -> Duration = checked(at_least(SECOND, "1s"));
    spool_limit -> usize = |v| whole(1)(v).map(|n| n as usize);
    duration -> Duration = Duration::from_value;
    no_busy_loop -> Duration = checked(busy_loop_free);
    window -> Duration = checked(longer_than_zero);
    watchdog -> Option<Duration> = some(checked(at_least(SECOND, "1s")));
    restart_every -> Option<Duration> = some(checked(at_least(MINUTE, "1m")));
    at_least_one -> u32 = whole(1);
    max_restarts -> Option<u32> = some(whole(0));
    command -> Vec<String> = argv;
    env_table -> BTreeMap<String, String> = environment;
    restart_policy -> RestartPolicy = checked(restart);
    notify -> Notify = checked(notify_name);
    size -> Option<u64> = some(memory_size);
}

/// Values with no default of their own: what stands in for a refused one never runs.
pub fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
    let signal = lenient(d, some(checked(signal_name)))?;
    Ok(signal.unwrap_or(Signal::SIGTERM))
}

pub fn broker_url<'de, D: Deserializer<'de>>(d: D) -> Result<BrokerUrl, D::Error> {
    let url = lenient(
        d,
        some(checked(|t: String| {
            BrokerUrl::parse(&t).map_err(Wrong::says)
        })),
    )?;
    Ok(url.unwrap_or_else(|| BrokerUrl {
        host: String::new(),
        port: 0,
        tls: false,
    }))
}

pub fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let address = lenient(d, some(checked(socket_address)))?;
    Ok(address.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// `backoff = { … }`, whose `max` may not be below its `initial`.
pub fn backoff<'de, D: Deserializer<'de>>(d: D) -> Result<Backoff, D::Error> {
    let before = refused_so_far();
    let backoff = Spanned::<Backoff>::deserialize(d)?;
    let (span, backoff) = (backoff.span(), backoff.into_inner());
    if refused_so_far() == before && backoff.max < backoff.initial {
        let (max, initial) = (words(backoff.max), words(backoff.initial));
        refuse(
            span,
            Wrong::says(format_args!(
                "max ({max}) is shorter than initial ({initial})"
            )),
        );
    }
    Ok(backoff)
}

/// `[process.health]` as the file says it: exactly one of `http`, `tcp` and `exec`, and the
/// settings of the check.
#[derive(Deserialize)]
#[serde(default)]
pub struct HealthKeys {
    /// `http://host[:port][/path]`.
    #[serde(deserialize_with = "http")]
    http: Option<Option<Probe>>,
    /// `host:port`.
    #[serde(deserialize_with = "tcp")]
    tcp: Option<Option<Probe>>,
    /// argv of a command that exits 0 when all is well.
    #[serde(deserialize_with = "exec")]
    exec: Option<Option<Probe>>,
    /// http: the statuses that pass, a number or a range; default `"200-399"`.
    #[serde(deserialize_with = "status")]
    status: Option<Spanned<(u16, u16)>>,
    /// http: a text the answer must contain.
    #[serde(deserialize_with = "body")]
    body: Option<Spanned<String>>,
    #[serde(deserialize_with = "interval")]
    interval: Duration,
    #[serde(deserialize_with = "timeout")]
    timeout: Duration,
    #[serde(deserialize_with = "at_least_one")]
    failures: u32,
    #[serde(deserialize_with = "duration")]
    grace: Duration,
}

impl Default for HealthKeys {
    fn default() -> Self {
        let defaults = HealthCheck::new(Probe::Tcp {
            address: String::new(),
        });
        Self {
            http: None,
            tcp: None,
            exec: None,
            status: None,
            body: None,
            interval: defaults.interval,
            timeout: defaults.timeout,
            failures: defaults.failures,
            grace: defaults.grace,
        }
    }
}

adapters! {
    interval -> Duration = checked(at_least(Duration::from_millis(100), "100ms"));
    timeout -> Duration = checked(at_least(Duration::from_millis(10), "10ms"));
}

/// An `[[operator]]` as the file says it: its key line is read with its name.
#[derive(Deserialize)]
#[serde(default)]
pub struct OperatorKeys {
    /// Required; the name in the key line.
    #[serde(deserialize_with = "operator")]
    pub name: Option<String>,
    /// Required; the line `respawnctl keygen` prints.
    #[serde(deserialize_with = "key_line")]
    pub public_key: Option<Spanned<String>>,
    /// The commands this key may send; default: all five.
    #[serde(deserialize_with = "allow")]
    pub allow: Vec<Permission>,
    /// Globs of the process names it may act on; default: `["*"]`.
    #[serde(deserialize_with = "process_globs")]
    pub processes: Vec<String>,
}

impl Default for OperatorKeys {
    fn default() -> Self {
        Self {
            name: None,
            public_key: None,
            allow: Permission::DEFAULT.to_vec(),
            processes: vec!["*".to_owned()],
        }
    }
}

adapters! {
    operator -> Option<String> = some(checked(operator_name));
    allow -> Vec<Permission> = checked(permissions);
    process_globs -> Vec<String> = checked(globs);
}

fn key_line<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<String>>, D::Error> {
    kept(d, checked(non_empty))
}

/// A value kept with its place, for a check across keys to point at; `None` when it was
/// refused.
fn kept<'de, D: Deserializer<'de>, T>(
    d: D,
    check: impl FnOnce(toml::Value) -> Result<T, Wrong>,
) -> Result<Option<Spanned<T>>, D::Error> {
    let value = Spanned::<toml::Value>::deserialize(d)?;
    let span = value.span();
    Ok(match check(value.into_inner()) {
        Ok(read) => Some(Spanned::new(span, read)),
        Err(wrong) => {
            refuse(span, wrong);
            None
        }
    })
}

/// A kind of probe: `Some` when the file names it, even with a value that was refused.
fn declared<'de, D: Deserializer<'de>>(
    d: D,
    check: impl FnOnce(toml::Value) -> Result<Probe, Wrong>,
) -> Result<Option<Option<Probe>>, D::Error> {
    Ok(Some(kept(d, check)?.map(Spanned::into_inner)))
}

fn http<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Probe>>, D::Error> {
    declared(d, checked(http_probe))
}

fn tcp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Probe>>, D::Error> {
    declared(d, checked(tcp_probe))
}

fn exec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Probe>>, D::Error> {
    declared(d, |v| Ok(Probe::Exec { command: argv(v)? }))
}

fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<(u16, u16)>>, D::Error> {
    kept(d, status_range)
}

fn body<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<String>>, D::Error> {
    kept(d, String::from_value)
}

/// `[process.health]`: a check when the table says exactly one way to probe and nothing in
/// it was refused.
pub fn health<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HealthCheck>, D::Error> {
    let before = refused_so_far();
    let keys = Spanned::<HealthKeys>::deserialize(d)?;
    let (span, keys) = (keys.span(), keys.into_inner());
    let probes = [keys.http, keys.tcp, keys.exec];
    if probes.iter().flatten().count() > 1 {
        refuse(
            span,
            Wrong::says("one of `http`, `tcp` or `exec`, not several"),
        );
        return Ok(None);
    }
    let Some(mut probe) = probes.into_iter().flatten().flatten().next() else {
        if refused_so_far() == before {
            refuse(
                span,
                Wrong::says("say how to check: `http`, `tcp` or `exec`"),
            );
        }
        return Ok(None);
    };
    match &mut probe {
        Probe::Http { status, body, .. } => {
            *status = keys.status.map_or(*status, Spanned::into_inner);
            *body = keys.body.map(Spanned::into_inner);
        }
        _ => {
            let http_only = [keys.status.map(|s| s.span()), keys.body.map(|b| b.span())];
            for place in http_only.into_iter().flatten() {
                refuse(place, Wrong::says("only for `http` checks"));
            }
        }
    }
    if refused_so_far() == before && keys.timeout > keys.interval {
        let (timeout, interval) = (words(keys.timeout), words(keys.interval));
        let message = format!(
            "timeout ({timeout}) is longer than interval ({interval}): probes would pile up"
        );
        refuse(span, Wrong::says(message));
    }
    let check = HealthCheck {
        probe,
        interval: keys.interval,
        timeout: keys.timeout,
        failures: keys.failures,
        grace: keys.grace,
    };
    Ok((refused_so_far() == before).then_some(check))
}
