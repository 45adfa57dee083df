//! Checks what the file says ([`raw`](super::raw)) and turns it into the configuration the
//! agent runs with, reporting every problem at once, each with its line. Defaults come from
//! the constructors of the types in the parent module; how each kind of value is read is in
//! [`values`](super::values).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use respawn_common::config_file::{self as file, Problem, Report, Section, Span, Wrong};
use respawn_common::ids::agent_id_from_hostname;
use respawn_common::messages::Permission;
use respawn_common::mqtt::{BrokerUrl, TlsFiles};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::values::*;
use super::OperatorConfig;
use super::{raw, Environment, Secret};
use super::{AgentConfig, BrokerConfig, Config, ContainmentMode, HealthCheck, MqttConfig};
use super::{Backoff, CrashLoop, Probe, ProcessConfig};

/// Reads the configuration in `text`; relative paths are relative to `base_dir`.
pub fn document(text: &str, base_dir: &Path, env: &Environment) -> Result<Config, Vec<Problem>> {
    let mut report = Report::new(text);
    let config = file::parse(text, &mut report).map(|root| {
        let mut reader = Reader {
            base_dir,
            env,
            report: &mut report,
            taken: None,
        };
        reader.root(root.get_ref())
    });
    report.finish()?;
    config.ok_or_else(Vec::new)
}

/// Reads a remote configuration: `[[process]]` tables only, none named like a process of
/// `local`; each process comes out marked remote.
pub fn remote_document(
    text: &str,
    base_dir: &Path,
    env: &Environment,
    local: &[String],
) -> Result<Vec<ProcessConfig>, Vec<Problem>> {
    let mut report = Report::new(text);
    let processes = file::parse(text, &mut report).map(|root| {
        let mut reader = Reader {
            base_dir,
            env,
            report: &mut report,
            taken: Some(local),
        };
        let mut processes = Vec::new();
        for (key, value) in root.get_ref().iter() {
            match key.get_ref().as_ref() {
                "process" => processes = reader.processes(value),
                other => {
                    let message = format!("`{other}` cannot be set over the network: a remote configuration holds [[process]] tables only");
                    reader.report.add(&key.span(), message);
                }
            }
        }
        processes
    });
    report.finish()?;
    let mut processes = processes.unwrap_or_default();
    for process in &mut processes {
        process.remote = true;
    }
    Ok(processes)
}

struct Reader<'a, 'r, 't> {
    base_dir: &'a Path,
    env: &'a Environment,
    report: &'r mut Report<'t>,
    /// Reading a remote configuration: the names of the local processes, which it may not
    /// take.
    taken: Option<&'a [String]>,
}

impl<'a, 't> Reader<'a, '_, 't> {
    fn section(&mut self, name: &str, bracketed: bool) -> Section<'a, '_, 't> {
        Section::new(name, bracketed, self.base_dir, self.report)
    }

    fn root(&mut self, root: &DeTable<'_>) -> Config {
        let (mut agent, mut processes, mut mqtt, mut broker, mut operators) =
            (None, Vec::new(), None, None, Vec::new());
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "agent" => agent = self.agent(value),
                "process" => processes = self.processes(value),
                "operator" => operators = self.operators(value),
                "mqtt" => mqtt = self.mqtt(value),
                "broker" => broker = self.broker(value),
                _ => {}
            }
        }
        let sections = ["agent", "process", "mqtt", "broker", "operator"];
        file::unknown_keys(root, &sections, "", self.report);
        let agent = agent.unwrap_or_else(|| AgentConfig {
            id: agent_id_from_hostname(&self.env.hostname),
            state_dir: self.env.default_state_dir.clone(),
            allow_unsigned_commands: false,
            containment: ContainmentMode::Auto,
            remote_config: false,
        });
        // An embedded broker with no [mqtt] section: report to it.
        let mqtt = mqtt.or_else(|| broker.as_ref().map(BrokerConfig::local_mqtt));
        Config {
            agent,
            processes,
            mqtt,
            broker,
            operators,
        }
    }

    fn agent(&mut self, value: &Spanned<DeValue<'_>>) -> Option<AgentConfig> {
        let r: raw::Agent = file::table(value, "[agent]", "[agent]: ", self.report)?;
        let hostname_id = agent_id_from_hostname(&self.env.hostname);
        let default_dir = self.env.default_state_dir.clone();
        let mut s = self.section("[agent]", true);
        Some(AgentConfig {
            id: s.get("id", r.id, agent_id).unwrap_or(hostname_id),
            state_dir: s.path("state_dir", r.state_dir).unwrap_or(default_dir),
            allow_unsigned_commands: s.or(
                "allow_unsigned_commands",
                r.allow_unsigned_commands,
                false,
            ),
            containment: s
                .get("containment", r.containment, containment)
                .unwrap_or(ContainmentMode::Auto),
            remote_config: s.or("remote_config", r.remote_config, false),
        })
    }

    fn broker(&mut self, value: &Spanned<DeValue<'_>>) -> Option<BrokerConfig> {
        let r: raw::Broker = file::table(value, "[broker]", "[broker]: ", self.report)?;
        let mut s = self.section("[broker]", true);
        if cfg!(not(feature = "embedded-broker")) {
            s.problem(&value.span(), "[broker]: this build of respawn-agent has no embedded broker (cargo feature `embedded-broker`); point [mqtt] url at a broker instead");
        }
        if r.listen.is_none() {
            s.missing(
                &value.span(),
                "listen",
                ", e.g. listen = \"127.0.0.1:1883\"",
            );
        }
        let listen = s.get("listen", r.listen, listen_address)?;
        Some(BrokerConfig { listen })
    }

    fn mqtt(&mut self, value: &Spanned<DeValue<'_>>) -> Option<MqttConfig> {
        let r: raw::Mqtt = file::table(value, "[mqtt]", "[mqtt]: ", self.report)?;
        let (env_password, read_file, tls_check) = (
            self.env.password.clone(),
            self.env.read_file,
            self.env.tls_check,
        );
        let mut s = self.section("[mqtt]", true);
        let before = s.count();
        let Some(url_span) = r.url.as_ref().map(|f| f.span.clone()) else {
            s.missing(
                &value.span(),
                "url",
                ", e.g. url = \"mqtt://192.168.1.10:1883\"",
            );
            return None;
        };
        let url = s.get("url", r.url, |t| BrokerUrl::parse(&t).map_err(Wrong::says));
        let unread = || BrokerUrl {
            host: String::new(),
            port: 0,
            tls: false,
        };
        let mut c = MqttConfig::new(url.unwrap_or_else(unread));
        c.tls = TlsFiles {
            ca_file: s.path("ca_file", r.ca_file),
            cert_file: s.path("cert_file", r.cert_file),
            key_file: s.path("key_file", r.key_file),
        };
        c.username = s.get("username", r.username, non_empty);
        let keep_alive = s.get("keep_alive", r.keep_alive, between(5, 65_535, "5s and 18h"));
        c.keep_alive = keep_alive.unwrap_or(c.keep_alive);
        c.topics = s
            .get("topic_prefix", r.topic_prefix, topics)
            .unwrap_or(c.topics);
        c.heartbeat = s
            .get("heartbeat", r.heartbeat, at_least(SECOND, "1s"))
            .unwrap_or(c.heartbeat);
        c.spool_limit = s
            .get("spool_limit", r.spool_limit, whole(1))
            .map_or(c.spool_limit, |n| n as usize);
        let password_span = r.password_file.as_ref().map(|f| f.span.clone());
        c.password = match (s.path("password_file", r.password_file), password_span) {
            (Some(path), Some(span)) => {
                if c.username.is_none() {
                    s.problem(&span, "[mqtt] password_file needs a username");
                }
                match read_password(&path, read_file) {
                    Ok(password) => Some(Secret(password)),
                    Err(message) => {
                        s.problem(&span, message);
                        None
                    }
                }
            }
            _ => c.username.as_ref().and(env_password.map(Secret)),
        };
        if c.url.tls {
            if !respawn_common::mqtt::valid_server_name(&c.url.host) {
                let message = format!(
                    "[mqtt] url: {:?} cannot be checked against a certificate",
                    c.url.host
                );
                s.problem(&url_span, message);
            } else if let Err(e) = tls_check(&c.tls) {
                s.problem(&value.span(), format!("[mqtt]: {e}"));
            }
        } else if c.tls != TlsFiles::default() && s.count() == before {
            s.problem(
                &value.span(),
                "[mqtt]: ca_file, cert_file and key_file need an mqtts:// url",
            );
        }
        (s.count() == before).then_some(c)
    }

    /// The tables of an array of tables (`[[process]]`), each read by `read` with its ordinal.
    fn each<T>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        mut read: impl FnMut(&mut Self, &Spanned<DeValue<'_>>, usize) -> Option<T>,
    ) -> Vec<(Span, T)> {
        let items = file::array_of_tables(value, key, self.report);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((item.span(), read(self, item, i + 1)?)))
            .collect()
    }

    fn operators(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<OperatorConfig> {
        let mut operators: Vec<OperatorConfig> = Vec::new();
        for (span, operator) in self.each(value, "operator", Self::operator) {
            if operators.iter().any(|o| o.name == operator.name) {
                let message = format!("[[operator]] {:?}: duplicate name", operator.name);
                self.report.add(&span, message);
                continue;
            }
            operators.push(operator);
        }
        operators
    }

    fn operator(&mut self, value: &Spanned<DeValue<'_>>, ordinal: usize) -> Option<OperatorConfig> {
        let name = named("[[operator]]", value, ordinal, false);
        let r: raw::Operator = file::table(value, &name, &format!("{name}: "), self.report)?;
        let mut s = self.section(&name, false);
        let before = s.count();
        let (has_name, has_key) = (r.name.is_some(), r.public_key.is_some());
        let name = s.get("name", r.name, operator_name);
        let key = s.get("public_key", r.public_key, |line| {
            public_key(line, name.as_deref())
        });
        let allow = s.get("allow", r.allow, permissions);
        let processes = s.get("processes", r.processes, globs);
        if !has_name {
            s.missing(&value.span(), "name", "");
        }
        if !has_key {
            s.missing(
                &value.span(),
                "public_key",
                " (the line `respawnctl keygen` prints)",
            );
        }
        (s.count() == before).then_some(())?;
        Some(OperatorConfig {
            name: name?,
            key: key?,
            allow: allow.unwrap_or_else(|| Permission::DEFAULT.to_vec()),
            processes: processes.unwrap_or_else(|| vec!["*".to_owned()]),
        })
    }

    fn processes(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<ProcessConfig> {
        let mut processes = Vec::new();
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for (span, (name, process)) in self.each(value, "process", Self::process) {
            if let Some(first) = first_lines.get(&name) {
                let message =
                    format!("[[process]] {name:?}: duplicate name (first defined on line {first})");
                self.report.add(&span, message);
                continue;
            }
            if self.taken.is_some_and(|local| local.contains(&name)) {
                let message = format!("[[process]] {name:?}: the name is taken by a process of the agent's local configuration");
                self.report.add(&span, message);
                continue;
            }
            first_lines.insert(name, self.report.line_of(span.start));
            processes.extend(process);
        }
        processes
    }

    /// The process's name, if it has a valid one, and its configuration, if it has no problem.
    fn process(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        ordinal: usize,
    ) -> Option<(String, Option<ProcessConfig>)> {
        let name = named("[[process]]", value, ordinal, true);
        let r: raw::Process = file::table(value, &name, &format!("{name}: "), self.report)?;
        let (is_root, user_exists) = (self.env.is_root, self.env.user_exists);
        let before = self.report.count();
        let numbered = format!("[[process]] #{ordinal}");
        let name = match r.name {
            Some(field) => field
                .and_then(process_name)
                .take(&format!("{numbered}: name"), self.report),
            None => {
                self.section(&numbered, false)
                    .missing(&value.span(), "name", "");
                None
            }
        };
        let spans = nested_spans(
            value,
            &named("[[process]]", value, ordinal, true),
            self.report,
        );
        let mut s = self.section(&named("[[process]]", value, ordinal, true), false);
        let mut p = ProcessConfig::new(name.as_deref().unwrap_or(""), Vec::new());
        if r.command.is_none() {
            s.missing(&value.span(), "command", "");
        }
        p.command = s.get("command", r.command, command).unwrap_or_default();
        p.cwd = s.path("cwd", r.cwd);
        p.env = s.get("env", r.env, env_table).unwrap_or_default();
        p.user = s.get("user", r.user, |u| user(u, is_root, user_exists));
        p.restart = s
            .get("restart", r.restart, restart_policy)
            .unwrap_or(p.restart);
        if let Some(backoff) = s.nested("backoff", r.backoff, &spans.backoff) {
            p.backoff = read_backoff(&mut s, backoff, p.backoff, &spans.backoff);
        }
        p.stable_after = s.or("stable_after", r.stable_after, p.stable_after);
        if let Some(crash_loop) = s.nested("crash_loop", r.crash_loop, &spans.crash_loop) {
            p.crash_loop = CrashLoop {
                max_exits: s
                    .get("crash_loop.max_exits", crash_loop.max_exits, whole(1))
                    .unwrap_or(p.crash_loop.max_exits),
                window: s
                    .get("crash_loop.window", crash_loop.window, longer_than_zero)
                    .unwrap_or(p.crash_loop.window),
            };
        }
        p.max_restarts = s.get("max_restarts", r.max_restarts, whole(0));
        p.stop_signal = s
            .get("stop_signal", r.stop_signal, signal)
            .unwrap_or(p.stop_signal);
        p.stop_timeout = s.or("stop_timeout", r.stop_timeout, p.stop_timeout);
        p.autostart = s.or("autostart", r.autostart, p.autostart);
        p.notify = s.get("notify", r.notify, notify).unwrap_or(p.notify);
        if let Some(health) = s.nested("health", r.health, &spans.health) {
            p.health = read_health(&mut s, health, &spans.health);
        }
        p.sd_notify = s.or("sd_notify", r.sd_notify, p.sd_notify);
        let watchdog_span = r.watchdog.as_ref().map(|f| f.span.clone());
        p.watchdog = s.get("watchdog", r.watchdog, at_least(SECOND, "1s"));
        p.max_memory = s.get("max_memory", r.max_memory, size);
        p.restart_every = s.get("restart_every", r.restart_every, at_least(MINUTE, "1m"));
        if let (Some(span), false) = (watchdog_span, p.sd_notify) {
            let message = format!("{}: `watchdog` needs `sd_notify = true`: the process pings with WATCHDOG=1 over the notify socket", s.name);
            s.problem(&span, message);
        }
        let fine = s.count() == before;
        Some((name?, fine.then_some(p)))
    }
}

fn read_backoff(
    s: &mut Section<'_, '_, '_>,
    r: raw::Backoff,
    defaults: Backoff,
    span: &Span,
) -> Backoff {
    let before = s.count();
    let backoff = Backoff {
        initial: s
            .get("backoff.initial", r.initial, no_busy_loop)
            .unwrap_or(defaults.initial),
        max: s.or("backoff.max", r.max, defaults.max),
    };
    if s.count() == before && backoff.max < backoff.initial {
        let (max, initial) = (words(backoff.max), words(backoff.initial));
        let message = format!(
            "{}: max ({max}) is shorter than initial ({initial})",
            s.what("backoff")
        );
        s.problem(span, message);
    }
    backoff
}

/// `[process.health]`: exactly one kind of probe, and its settings.
fn read_health(s: &mut Section<'_, '_, '_>, r: raw::Health, span: &Span) -> Option<HealthCheck> {
    let what = s.what("health");
    let before = s.count();
    let declared = [r.http.is_some(), r.tcp.is_some(), r.exec.is_some()];
    let (status_span, body_span) = (
        r.status.as_ref().map(|f| f.span.clone()),
        r.body.as_ref().map(|f| f.span.clone()),
    );
    let mut probes: Vec<Probe> = Vec::new();
    probes.extend(s.get("health.http", r.http, http_probe));
    probes.extend(s.get("health.tcp", r.tcp, tcp_probe));
    probes.extend(s.get("health.exec", r.exec, |v| {
        Ok(Probe::Exec {
            command: command(v)?,
        })
    }));
    let status = s.get("health.status", r.status, status_range);
    let body = s.get("health.body", r.body, Ok);
    let defaults = HealthCheck::new(Probe::Exec {
        command: Vec::new(),
    });
    let mut check = HealthCheck {
        interval: s
            .get(
                "health.interval",
                r.interval,
                at_least(Duration::from_millis(100), "100ms"),
            )
            .unwrap_or(defaults.interval),
        timeout: s
            .get(
                "health.timeout",
                r.timeout,
                at_least(Duration::from_millis(10), "10ms"),
            )
            .unwrap_or(defaults.timeout),
        failures: s
            .get("health.failures", r.failures, whole(1))
            .unwrap_or(defaults.failures),
        grace: s.or("health.grace", r.grace, defaults.grace),
        ..defaults
    };
    if declared.iter().filter(|d| **d).count() > 1 {
        s.problem(
            span,
            format!("{what}: one of `http`, `tcp` or `exec`, not several"),
        );
        return None;
    }
    check.probe = match probes.pop() {
        Some(probe) => probe,
        None if s.count() == before => {
            s.problem(
                span,
                format!("{what}: say how to check: `http`, `tcp` or `exec`"),
            );
            return None;
        }
        None => return None,
    };
    match &mut check.probe {
        Probe::Http {
            status: s, body: b, ..
        } => {
            *s = status.unwrap_or(*s);
            *b = body;
        }
        _ => {
            for (key, place) in [("status", status_span), ("body", body_span)] {
                if let Some(place) = place {
                    s.problem(&place, format!("{what}: `{key}` is for `http` checks"));
                }
            }
        }
    }
    if check.timeout > check.interval {
        let (timeout, interval) = (words(check.timeout), words(check.interval));
        let message = format!("{what}: timeout ({timeout}) is longer than interval ({interval}): probes would pile up");
        s.problem(span, message);
    }
    (s.count() == before).then_some(check)
}

/// `[[process]] "web"` when the table has a name (a valid one, if `valid`), else
/// `[[process]] #2`.
fn named(kind: &str, value: &Spanned<DeValue<'_>>, ordinal: usize, valid: bool) -> String {
    let name = match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == "name")
            .and_then(|(_, v)| v.get_ref().as_str().map(str::to_owned))
            .filter(|name| !valid || process_name(name.clone()).is_ok()),
        _ => None,
    };
    match name {
        Some(name) => format!("{kind} {name:?}"),
        None => format!("{kind} #{ordinal}"),
    }
}

/// Where the tables within a `[[process]]` are, for their problems; their own unknown keys
/// are reported here.
struct NestedSpans {
    backoff: Span,
    crash_loop: Span,
    health: Span,
}

fn nested_spans(
    value: &Spanned<DeValue<'_>>,
    section: &str,
    report: &mut Report<'_>,
) -> NestedSpans {
    let mut span_of = |key: &str, known: &[&str]| {
        let DeValue::Table(table) = value.get_ref() else {
            return value.span();
        };
        let Some((_, nested)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            return value.span();
        };
        if let DeValue::Table(inner) = nested.get_ref() {
            file::unknown_keys(inner, known, &format!("{section}: `{key}`: "), report);
        }
        nested.span()
    };
    NestedSpans {
        backoff: span_of("backoff", file::keys::<raw::Backoff>()),
        crash_loop: span_of("crash_loop", file::keys::<raw::CrashLoop>()),
        health: span_of("health", file::keys::<raw::Health>()),
    }
}
