//! Reads a configuration file section by section into the types of the parent module, which
//! declare its keys, reporting every problem at once, each with its line: what the types'
//! checks refused, and what only the file as a whole or the machine can tell (a name taken
//! twice, an account that does not exist, a password file).

use std::collections::BTreeMap;
use std::path::Path;

use respawn_common::config_file::{self as file, Naming, Problem, Report, Section, Span, ON_LINE};
use respawn_common::ids::agent_id_from_hostname;
use respawn_common::mqtt::{read_password, TlsFiles};
use respawn_common::signing::VerifyingKey;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::checks::{process_name, public_key, user};
use super::fields::{HealthKeys, OperatorKeys};
use super::{resolve, Environment, MqttConfig, OperatorConfig, ProcessConfig, Secret};
use super::{AgentConfig, Backoff, BrokerConfig, Config, CrashLoop};

/// Parses a configuration; relative paths are taken relative to `base_dir`.
pub fn parse(text: &str, base_dir: &Path, env: &Environment) -> Result<Config, Vec<Problem>> {
    let config = reading(text, base_dir, env, None, |reader, root| reader.root(root))?;
    config.ok_or_else(Vec::new)
}

/// Parses a remote configuration (`remote.toml`): `[[process]]` tables only, none named like
/// a process of `local`; each process comes out marked remote. Relative paths are taken
/// relative to `base_dir`.
pub fn parse_remote(
    text: &str,
    base_dir: &Path,
    env: &Environment,
    local: &[String],
) -> Result<Vec<ProcessConfig>, Vec<Problem>> {
    let processes = reading(text, base_dir, env, Some(local), |reader, root| {
        let mut processes = Vec::new();
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "process" => processes = reader.processes(value),
                other => {
                    let message = format!("`{other}` cannot be set over the network: a remote configuration holds [[process]] tables only");
                    reader.report.add(&key.span(), message);
                }
            }
        }
        processes
    })?;
    let mut processes = processes.unwrap_or_default();
    for process in &mut processes {
        process.remote = true;
    }
    Ok(processes)
}

/// What `read` makes of the file `text` if it parses, and every problem found on the way.
fn reading<T>(
    text: &str,
    base_dir: &Path,
    env: &Environment,
    taken: Option<&[String]>,
    read: impl FnOnce(&mut Reader<'_, '_, '_>, &DeTable<'_>) -> T,
) -> Result<Option<T>, Vec<Problem>> {
    let mut report = Report::new(text);
    let read = file::parse(text, &mut report).map(|root| {
        let mut reader = Reader {
            base_dir,
            env,
            report: &mut report,
            taken,
        };
        read(&mut reader, root.get_ref())
    });
    report.finish()?;
    Ok(read)
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
    fn section(&mut self, name: impl Into<String>, naming: Naming) -> Section<'_, 't> {
        Section::new(name, naming, self.report)
    }

    fn root(&mut self, root: &DeTable<'_>) -> Config {
        let (mut agent, mut processes, mut mqtt, mut broker, mut operators) =
            (None, Vec::new(), None, None, Vec::new());
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "agent" => agent = self.section("[agent]", Naming::Table).read(value, &[], &[]),
                "process" => processes = self.processes(value),
                "operator" => operators = self.operators(value),
                "mqtt" => mqtt = self.mqtt(value),
                "broker" => broker = self.broker(value),
                _ => {}
            }
        }
        let sections = ["agent", "process", "mqtt", "broker", "operator"];
        file::unknown_keys(root, &sections, "", self.report);
        let mut agent: AgentConfig = agent.unwrap_or_default();
        if agent.id.is_empty() {
            agent.id = agent_id_from_hostname(&self.env.hostname);
        }
        agent.state_dir = match agent.state_dir.as_os_str().is_empty() {
            true => self.env.default_state_dir.clone(),
            false => resolve(self.base_dir, &agent.state_dir),
        };
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

    fn broker(&mut self, value: &Spanned<DeValue<'_>>) -> Option<BrokerConfig> {
        let mut s = self.section("[broker]", Naming::Table);
        if cfg!(not(feature = "embedded-broker")) {
            s.problem(&value.span(), "[broker]: this build of respawn-agent has no embedded broker (cargo feature `embedded-broker`); point [mqtt] url at a broker instead");
        }
        s.read(
            value,
            &[("listen", ", e.g. listen = \"127.0.0.1:1883\"")],
            &[],
        )
    }

    fn mqtt(&mut self, value: &Spanned<DeValue<'_>>) -> Option<MqttConfig> {
        let (env_password, read_file, tls_check) = (
            self.env.password.clone(),
            self.env.read_file,
            self.env.tls_check,
        );
        let base_dir = self.base_dir;
        let mut s = self.section("[mqtt]", Naming::Table);
        let before = s.count();
        let url_span = Section::span_of(value, "url");
        let required = [("url", ", e.g. url = \"mqtt://192.168.1.10:1883\"")];
        let mut c: MqttConfig = s.read(value, &required, &[])?;
        let url_span = url_span?;
        for path in [
            &mut c.ca_file,
            &mut c.cert_file,
            &mut c.key_file,
            &mut c.password_file,
        ] {
            *path = path.take().map(|p| resolve(base_dir, &p));
        }
        c.password = match (&c.password_file, Section::span_of(value, "password_file")) {
            (Some(path), Some(span)) => {
                if c.username.is_none() {
                    s.problem(&span, "[mqtt] password_file needs a username");
                }
                read_password(path, read_file)
                    .map_err(|message| s.problem(&span, format!("[mqtt] {message}")))
                    .ok()
                    .map(Secret)
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
            } else {
                for (key, e) in tls_check(&c.tls()) {
                    let span = key.and_then(|key| Section::span_of(value, key));
                    s.problem(&span.unwrap_or(value.span()), format!("[mqtt]: {e}"));
                }
            }
        } else if c.tls() != TlsFiles::default() && s.count() == before {
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
        // Every operator's name and key that could be read, also of those with other
        // problems: a key taken twice is told with them, not only once they are mended.
        let mut seen: Vec<OperatorRead> = Vec::new();
        for (span, operator) in self.each(value, "operator", Self::operator) {
            let title = &operator.title;
            if operator.name.is_some() && seen.iter().any(|o| o.name == operator.name) {
                self.report.add(&span, format!("{title}: duplicate name"));
                continue;
            }
            // A signature names one operator: the audit's name and the allowed would be a guess.
            let same_key = |o: &&OperatorRead| o.key.is_some() && o.key == operator.key;
            if let Some(first) = seen.iter().find(same_key) {
                let first = match &first.name {
                    Some(name) => format!("{name:?}"),
                    None => first.title.clone(),
                };
                let message =
                    format!("{title}: the same public_key as {first}; a key is one operator's");
                self.report.add(&span, message);
                continue;
            }
            seen.push(operator);
        }
        seen.into_iter().filter_map(|o| o.config).collect()
    }

    fn operator(&mut self, value: &Spanned<DeValue<'_>>, ordinal: usize) -> Option<OperatorRead> {
        let title = named("[[operator]]", value, ordinal, false);
        let mut s = self.section(title.clone(), Naming::Item);
        let before = s.count();
        let required = [
            ("name", ""),
            ("public_key", " (the line `respawnctl keygen` prints)"),
        ];
        let keys: OperatorKeys = s.read(value, &required, &[])?;
        let key = keys.public_key.and_then(|line| {
            let span = line.span();
            public_key(line.into_inner(), keys.name.as_deref())
                .map_err(|wrong| s.problem(&span, wrong.about(&s.what("public_key"))))
                .ok()
        });
        let fine = s.count() == before;
        let config = match (&keys.name, &key) {
            (Some(name), Some(key)) if fine => Some(OperatorConfig {
                name: name.clone(),
                key: key.clone(),
                allow: keys.allow,
                processes: keys.processes,
            }),
            _ => None,
        };
        Some(OperatorRead {
            title,
            name: keys.name,
            key,
            config,
        })
    }

    fn processes(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<ProcessConfig> {
        let mut processes = Vec::new();
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for (span, (name, process)) in self.each(value, "process", Self::process) {
            if let Some(first) = first_lines.get(&name) {
                let message = format!(
                    "[[process]] {name:?}: duplicate name (first defined {ON_LINE}{first})"
                );
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
        let (env, base_dir) = (self.env, self.base_dir);
        let before = self.report.count();
        let mut s = self.section(named("[[process]]", value, ordinal, true), Naming::Item);
        let nested = [
            ("backoff", file::keys::<Backoff>()),
            ("crash_loop", file::keys::<CrashLoop>()),
            ("health", file::keys::<HealthKeys>()),
        ];
        let mut p: ProcessConfig = s.read(value, &[("name", ""), ("command", "")], &nested)?;
        // The name names the table in every other message, so it is checked apart.
        let name_span = Section::span_of(value, "name");
        let name = match process_name(p.name.clone()) {
            Ok(name) => Some(name),
            Err(_) if p.name.is_empty() => None,
            Err(wrong) => {
                let numbered = format!("[[process]] #{ordinal}: name");
                s.problem(&name_span.unwrap_or(value.span()), wrong.about(&numbered));
                None
            }
        };
        if let (Some(account), Some(span)) = (&p.user, Section::span_of(value, "user")) {
            if let Err(wrong) = user(account.clone(), env) {
                s.problem(&span, wrong.about(&s.what("user")));
            }
        }
        if let (Some(span), false) = (Section::span_of(value, "watchdog"), p.sd_notify) {
            let message = format!("{}: `watchdog` needs `sd_notify = true`: the process pings with WATCHDOG=1 over the notify socket", s.name);
            s.problem(&span, message);
        }
        p.cwd = p.cwd.map(|cwd| resolve(base_dir, &cwd));
        let fine = s.count() == before;
        Some((name?, fine.then_some(p)))
    }
}

/// An `[[operator]]` as far as it could be read: how messages name it, its name and its key
/// where they are valid, and the whole of it if nothing in it is wrong.
struct OperatorRead {
    title: String,
    name: Option<String>,
    key: Option<VerifyingKey>,
    config: Option<OperatorConfig>,
}

/// `[[process]] "web"` when the table has a name (a valid one, if `valid`), else
/// `[[process]] #2`.
fn named(kind: &str, value: &Spanned<DeValue<'_>>, ordinal: usize, valid: bool) -> String {
    let name = value
        .get_ref()
        .get("name")
        .and_then(|v| v.get_ref().as_str());
    let name = name.filter(|name| !valid || process_name(name.to_string()).is_ok());
    match name {
        Some(name) => format!("{kind} {name:?}"),
        None => format!("{kind} #{ordinal}"),
    }
}
