//! The serde side of the configuration: the adapters that the fields of the parent module
//! name in `deserialize_with`, each a check of [`checks`](super::checks) whose refusals are
//! kept for the report, and the two tables whose file shape differs from what the agent runs
//! with (`[process.health]` and `[[operator]]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use respawn_common::config_file::{checked, kept, refuse, refused_so_far, some, Span};
pub use respawn_common::config_file::{flag, path, text};
use respawn_common::config_file::{FromValue, Wrong};
use respawn_common::messages::{Notify, Permission};
use respawn_common::mqtt::BrokerUrl;
use respawn_common::topics::Topics;
use serde::{Deserialize, Deserializer};
use smart_default::SmartDefault;
use toml::Spanned;

use super::checks::*;
use super::{Backoff, ContainmentMode, HealthCheck, Probe, RestartPolicy};

respawn_common::adapters! {
    any_text -> String = String::from_value;
    state_dir -> PathBuf = checked(|t| non_empty(t).map(Into::into));
    agent_id -> String = checked(agent_id_text);
    containment -> ContainmentMode = checked(containment_mode);
    topics -> Topics = checked(topic_prefix);
    keep_alive -> Duration = checked(between(KEEP_ALIVE_RANGE));
    heartbeat -> Duration = checked(at_least(SECOND));
    spool_limit -> usize = |v| whole(1)(v).map(|n| n as usize);
    duration -> Duration = Duration::from_value;
    no_busy_loop -> Duration = checked(busy_loop_free);
    window -> Duration = checked(longer_than_zero);
    watchdog -> Option<Duration> = some(checked(at_least(SECOND)));
    restart_every -> Option<Duration> = some(checked(at_least(MINUTE)));
    at_least_one -> u32 = whole(1);
    max_restarts -> Option<u32> = some(whole(0));
    command -> Vec<String> = argv;
    env_table -> BTreeMap<String, String> = environment;
    restart_policy -> RestartPolicy = checked(restart);
    notify -> Notify = checked(notify_name);
    size -> Option<u64> = some(memory_size);
    // Values with no default of their own: what stands in for a refused one never runs.
    signal -> Signal = checked(signal_name), else Signal::SIGTERM;
    broker_url -> BrokerUrl = checked(|t: String| BrokerUrl::parse(&t).map_err(Wrong::says)),
        else BrokerUrl { host: String::new(), port: 0, tls: false };
    listen_address -> SocketAddr = checked(socket_address),
        else SocketAddr::from(([127, 0, 0, 1], 0));
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
#[derive(Deserialize, SmartDefault)]
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
    /// At least 100 ms; default 10 s.
    #[serde(deserialize_with = "interval")]
    interval: Option<Option<Spanned<Duration>>>,
    /// At least 10 ms, not longer than `interval`; default 2 s.
    #[serde(deserialize_with = "timeout")]
    timeout: Option<Option<Spanned<Duration>>>,
    /// Failed probes in a row that make the process unhealthy.
    #[serde(deserialize_with = "at_least_one")]
    #[default(3)]
    failures: u32,
    /// After a start, failed probes do not count for this long.
    #[serde(deserialize_with = "duration")]
    #[default(Duration::from_secs(30))]
    grace: Duration,
}

/// An `[[operator]]` as the file says it: its key line is read with its name.
#[derive(Deserialize, SmartDefault)]
#[serde(default)]
pub struct OperatorKeys {
    /// Required; the name in the key line.
    #[serde(deserialize_with = "operator")]
    pub name: Option<String>,
    /// Required; the line `respawnctl keygen` prints.
    #[serde(deserialize_with = "key_line")]
    pub public_key: Option<Spanned<String>>,
    /// The commands this key may send.
    #[serde(deserialize_with = "allow")]
    #[default(Permission::DEFAULT.to_vec())]
    pub allow: Vec<Permission>,
    /// Globs of the process names it may act on.
    #[serde(deserialize_with = "process_globs")]
    #[default(vec!["*".to_owned()])]
    pub processes: Vec<String>,
}

respawn_common::adapters! {
    operator -> Option<String> = some(checked(operator_name));
    allow -> Vec<Permission> = checked(permissions);
    process_globs -> Vec<String> = checked(globs);
    key_line => String = checked(non_empty);
    status => (u16, u16) = status_range;
    body => String = String::from_value;
}

/// How often a check probes, and how long a probe may take, when the file leaves them out.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// `Some` when the file says it, with its place; `Some(None)` once refused: the check across
/// them looks only at values that were read.
type Written<T> = Option<Option<Spanned<T>>>;

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Written<Duration>, D::Error> {
    Ok(Some(kept(
        d,
        checked(at_least(Duration::from_millis(100))),
    )?))
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Written<Duration>, D::Error> {
    Ok(Some(kept(d, checked(at_least(Duration::from_millis(10))))?))
}

/// A value as the check runs with: as written, or `default` with the place of its table;
/// `None` once refused.
fn or_default(
    written: Written<Duration>,
    default: Duration,
    table: &Span,
) -> Option<(Duration, Span)> {
    match written {
        None => Some((default, table.clone())),
        Some(read) => read.map(|read| (*read.get_ref(), read.span())),
    }
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

/// `[process.health]`: a check when the table says exactly one way to probe and nothing in
/// it was refused.
pub fn health<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HealthCheck>, D::Error> {
    let before = refused_so_far();
    let keys = Spanned::<HealthKeys>::deserialize(d)?;
    let (span, mut keys) = (keys.span(), keys.into_inner());
    // Each read as it should be, whatever else in the table is wrong: every problem at once.
    let interval = or_default(keys.interval.take(), DEFAULT_INTERVAL, &span);
    let timeout = or_default(keys.timeout.take(), DEFAULT_TIMEOUT, &span);
    if let Some(((timeout, at), (interval, interval_at))) = (timeout.as_ref())
        .zip(interval.as_ref())
        .filter(|((t, _), (i, _))| t > i)
    {
        let (timeout, interval) = (words(*timeout), words(*interval));
        // A timeout left out is the default: the one written may be only the interval, whose
        // line is then told.
        let default = words(DEFAULT_TIMEOUT);
        let place = match *at == span {
            true => interval_at.clone(),
            false => at.clone(),
        };
        let message = format!(
            "timeout ({timeout}) is longer than interval ({interval}): probes would pile up; shorten the timeout (default {default}) or lengthen the interval"
        );
        refuse(place, Wrong::says(message));
    }
    let probes = [keys.http.take(), keys.tcp.take(), keys.exec.take()];
    if probes.iter().flatten().count() > 1 {
        refuse(
            span,
            Wrong::says("one of `http`, `tcp` or `exec`, not several"),
        );
        return Ok(None);
    }
    // Beside a `tcp` or `exec` check, also one whose value was refused.
    if probes[0].is_none() && probes.iter().flatten().count() == 1 {
        let http_only = [
            keys.status.take().map(|s| s.span()),
            keys.body.take().map(|b| b.span()),
        ];
        for place in http_only.into_iter().flatten() {
            refuse(place, Wrong::says("only for `http` checks"));
        }
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
    if let Probe::Http { status, body, .. } = &mut probe {
        *status = keys.status.take().map_or(*status, Spanned::into_inner);
        *body = keys.body.take().map(Spanned::into_inner);
    }
    // `interval` and `timeout` are `None` only when refused, and then there is no check.
    let fine = refused_so_far() == before;
    Ok(fine.then(|| HealthCheck {
        probe,
        interval: interval.map(|(d, _)| d).unwrap_or_default(),
        timeout: timeout.map(|(d, _)| d).unwrap_or_default(),
        failures: keys.failures,
        grace: keys.grace,
    }))
}
