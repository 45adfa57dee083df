//! `serve.toml`: where the hub listens, who may log in (and whether they may act), the key
//! that signs what they do, and the token `/metrics` asks for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use respawn_common::config_file::{self as file, checked, non_empty, path, some, summary, whole};
use respawn_common::config_file::{FromValue, Naming, Problem, Report, Section, Wrong};
use respawn_common::mqtt::server_tls_config;
use respawn_common::topics::validate_requester;

pub use super::web::TrustedProxies;
use ipnet::IpNet;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where the hub listens when `serve.toml` does not say.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

/// The checked file.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Signs the actions of the dashboard's users; else respawnctl's own key.
    pub signing_key: Option<PathBuf>,
    /// `/metrics` wants `Authorization: Bearer` this, when set.
    pub metrics_token: Option<String>,
    pub users: Vec<User>,
    /// Names the hub answers to besides IP addresses, loopback names and this machine's own
    /// name (`web::hosts`); `*` answers to any.
    pub hosts: Vec<String>,
    /// HTTPS with this certificate chain and key (PEM), checked at start.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// `[homeassistant]`: the fleet in Home Assistant, when the section is there.
    pub homeassistant: Option<HomeAssistant>,
}

/// `[homeassistant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeAssistant {
    /// Where Home Assistant looks for discovery (its `discovery_prefix`).
    pub prefix: String,
    /// `agent/process` globs whose Restart button the hub obeys; none by default.
    pub allow: Vec<String>,
    /// Button presses the hub turns into restarts, at most, per minute (all together);
    /// default [`HomeAssistant::PRESSES_PER_MINUTE`].
    pub presses_per_minute: u32,
}

impl HomeAssistant {
    pub const PRESSES_PER_MINUTE: u32 = 6;
}

/// One `[[user]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// Also the `requester` of the commands the user sends: the agents' audit names them.
    pub name: String,
    /// An argon2 hash in PHC form, as `respawnctl serve passwd` prints it.
    pub password: String,
    /// May restart, stop and start; a viewer only looks.
    pub may_act: bool,
}

/// The top level of `serve.toml` as written; `[homeassistant]` and `[[user]]` are read apart.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Raw {
    /// `ADDRESS:PORT`; default `127.0.0.1:8080`.
    #[serde(deserialize_with = "listen_address")]
    listen: Option<Spanned<SocketAddr>>,
    #[serde(deserialize_with = "path")]
    signing_key: Option<PathBuf>,
    #[serde(deserialize_with = "placed_path")]
    metrics_token_file: Option<Spanned<PathBuf>>,
    /// Host names (no port), e.g. a reverse proxy's; `["*"]` for any.
    #[serde(deserialize_with = "host_names")]
    hosts: Vec<String>,
    #[serde(deserialize_with = "placed_path")]
    tls_cert: Option<Spanned<PathBuf>>,
    #[serde(deserialize_with = "placed_path")]
    tls_key: Option<Spanned<PathBuf>>,
    /// Addresses or networks (`"10.0.0.0/24"`) of reverse proxies whose `X-Forwarded-For`
    /// names the client, for the login limit and the connections per address.
    #[serde(deserialize_with = "networks")]
    trusted_proxies: Vec<IpNet>,
}

/// `[homeassistant]`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawHomeAssistant {
    #[serde(deserialize_with = "discovery_prefix")]
    prefix: Option<String>,
    #[serde(deserialize_with = "targets")]
    allow: Vec<String>,
    #[serde(deserialize_with = "presses")]
    presses_per_minute: Option<u32>,
}

/// One `[[user]]`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawUser {
    #[serde(deserialize_with = "user_name")]
    name: Option<String>,
    #[serde(deserialize_with = "placed_text")]
    password: Option<Spanned<String>>,
    /// `operator` (the default) or `viewer`.
    #[serde(rename = "role", deserialize_with = "role")]
    may_act: Option<bool>,
}

respawn_common::adapters! {
    listen_address => SocketAddr = checked(address);
    placed_path => PathBuf = checked(|t| non_empty(t).map(PathBuf::from));
    placed_text => String = String::from_value;
    discovery_prefix -> Option<String> = some(checked(topic_prefix));
    targets -> Vec<String> = checked(target_globs);
    host_names -> Vec<String> = checked(host_name_list);
    networks -> Vec<IpNet> = checked(network_list);
    presses -> Option<u32> = some(whole(1));
    user_name -> Option<String> = some(checked(|name: String| match validate_requester(&name) {
        Ok(()) => Ok(name),
        Err(e) => Err(Wrong::says(format_args!("{name:?} {e}"))),
    }));
    role -> Option<bool> = some(checked(|role: String| match role.as_str() {
        "operator" => Ok(true),
        "viewer" => Ok(false),
        _ => Err(Wrong::then(format_args!("{role:?} is not \"operator\" or \"viewer\""))),
    }));
}

fn address(text: String) -> Result<SocketAddr, Wrong> {
    text.parse().map_err(|_| {
        Wrong::then(format_args!(
            "{text:?} is not an address and port, e.g. \"0.0.0.0:8080\""
        ))
    })
}

fn topic_prefix(prefix: String) -> Result<String, Wrong> {
    match prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
        true => Err(Wrong::then(format_args!(
            "{prefix:?} is not a topic prefix, e.g. \"homeassistant\""
        ))),
        false => Ok(prefix),
    }
}

/// Names a `Host` header may carry: letters, digits, `-`, `_` and dots, without a port.
fn host_name_list(names: Vec<String>) -> Result<Vec<String>, Wrong> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    let wrong = |n: &&String| *n != "*" && (n.is_empty() || !n.chars().all(allowed));
    match names.iter().find(wrong) {
        Some(name) => Err(Wrong::says(format_args!(
            "{name:?} is not a host name such as \"hub.example.lan\" (no port; IP addresses are answered anyway)"
        ))),
        None => Ok(names),
    }
}

/// Addresses (`"127.0.0.1"`, `"::1"`) and networks (`"10.0.0.0/24"`).
fn network_list(texts: Vec<String>) -> Result<Vec<IpNet>, Wrong> {
    let network = |text: &String| {
        let address = text.parse::<std::net::IpAddr>().map(IpNet::from);
        let network = address.or_else(|_| text.parse::<IpNet>()).map_err(|_| {
            Wrong::says(format_args!(
                "{text:?} is not an address or network such as \"10.0.0.5\" or \"10.0.0.0/24\""
            ))
        })?;
        // Every client a proxy: anyone could pass as any address, and the login limit would
        // hold no one (found by a hostile-input review).
        match network.prefix_len() {
            0 => Err(Wrong::says(format_args!("{text:?} trusts every client's X-Forwarded-For: anyone could pass as any address, and the limit on wrong logins would hold no one; name your proxies' addresses"))),
            _ => Ok(network),
        }
    };
    texts.iter().map(network).collect()
}

fn target_globs(globs: Vec<String>) -> Result<Vec<String>, Wrong> {
    match globs
        .iter()
        .find(|g| crate::fleet::Target::parse(g).is_err())
    {
        Some(glob) => Err(Wrong::says(format_args!(
            "{glob:?} is not AGENT/PROCESS (globs allowed)"
        ))),
        None => Ok(globs),
    }
}

impl ServeConfig {
    /// No file: loopback only, no users.
    pub fn local() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            signing_key: None,
            metrics_token: None,
            users: Vec::new(),
            hosts: Vec::new(),
            tls: None,
            trusted_proxies: TrustedProxies::default(),
            homeassistant: None,
        }
    }

    /// Reads and checks `path`; every problem in one message.
    pub fn load(path: &Path, listen: Option<&str>) -> Result<Self, String> {
        let text =
            file::read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, listen, file::read_text)
            .map_err(|problems| format!("{}: {}", path.display(), summary(&problems)))
    }

    /// Checks `text`, every problem at once, each with its line; `listen` (from the command
    /// line) wins over the file's. `read` reads the metrics token file.
    pub fn parse(
        text: &str,
        listen: Option<&str>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, Vec<Problem>> {
        let mut report = Report::new(text);
        let config = file::parse(text, &mut report)
            .map(|root| Self::read(root.get_ref(), listen, read, &mut report));
        report.finish()?;
        config.ok_or_else(Vec::new)
    }

    fn read(
        root: &DeTable<'_>,
        listen: Option<&str>,
        read: impl Fn(&Path) -> std::io::Result<String>,
        report: &mut Report<'_>,
    ) -> Self {
        let mut known = file::keys::<Raw>().to_vec();
        known.extend(["homeassistant", "user"]);
        file::unknown_keys(root, &known, "", report);
        let whole = Spanned::new(0..0, DeValue::Table(root.clone()));
        let raw: Raw = Section::new("serve.toml:", Naming::File, report)
            .values(&whole, true)
            .unwrap_or_default();
        let homeassistant = root.get("homeassistant").and_then(|value| {
            let mut s = Section::new("[homeassistant]", Naming::Table, report);
            let ha: RawHomeAssistant = s.read(value, &[], &[])?;
            Some(HomeAssistant {
                prefix: ha
                    .prefix
                    .unwrap_or_else(|| super::homeassistant::DEFAULT_PREFIX.to_owned()),
                allow: ha.allow,
                presses_per_minute: ha
                    .presses_per_minute
                    .unwrap_or(HomeAssistant::PRESSES_PER_MINUTE),
            })
        });
        let users = root
            .get("user")
            .map_or_else(Vec::new, |value| read_users(value, report));
        let metrics_token = raw.metrics_token_file.and_then(|file| {
            let (span, path) = (file.span(), file.into_inner());
            let token = read(&path).map(|token| token.trim().to_owned());
            let problem = match token {
                Ok(token) if !token.is_empty() => return Some(token),
                Ok(_) => format!("metrics_token_file {} is empty", path.display()),
                Err(e) => format!("cannot read metrics_token_file {}: {e}", path.display()),
            };
            report.add(&span, problem);
            None
        });
        let tls = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => server_tls_config(cert.get_ref(), key.get_ref())
                .map_err(|e| report.add(&cert.span(), format!("tls_cert, tls_key: {e}")))
                .ok(),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                report.add(&one.span(), "tls_cert and tls_key go together");
                None
            }
        };
        let from_file = raw.listen.map(|l| (l.span(), l.into_inner()));
        let (span, address) = match listen {
            Some(given) => match address(given.to_owned()) {
                Ok(address) => (None, address),
                Err(wrong) => {
                    report.note(wrong.about("--listen"));
                    (None, DEFAULT_LISTEN)
                }
            },
            None => match from_file {
                Some((span, address)) => (Some(span), address),
                None => (None, DEFAULT_LISTEN),
            },
        };
        if let (Some(hosts), true) = (root.get("hosts"), users.is_empty()) {
            report.add(&hosts.span(), "hosts: without a [[user]] the hub answers only to 127.0.0.1, [::1] and localhost; add users, or leave hosts out");
        }
        if !address.ip().is_loopback() && users.is_empty() {
            let given = match listen {
                Some(_) => format!("--listen {address}"),
                None => format!("listen = \"{address}\""),
            };
            // Users written but refused are told as such: "add a user" would be of those.
            let written = (root.get("user"))
                .and_then(|users| users.get_ref().as_array())
                .is_some_and(|users| !users.is_empty());
            let add = match written {
                true => "mend the [[user]] tables, none of which could be taken",
                false => "add at least one [[user]] (respawnctl serve passwd NAME prints one)",
            };
            let message =
                format!("{given} is reachable from other machines: {add}, or listen on 127.0.0.1");
            match span {
                Some(span) => report.add(&span, message),
                None => report.note(message),
            }
        }
        Self {
            listen: address,
            signing_key: raw.signing_key,
            metrics_token,
            users,
            hosts: raw.hosts,
            tls,
            trusted_proxies: TrustedProxies(raw.trusted_proxies),
            homeassistant,
        }
    }

    /// Whether people log in (else, on loopback, whoever can reach it is the `local` user).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Says, at the start, where the pages of the fleet at `broker` are and to whom, and what
    /// Home Assistant is told.
    pub fn announce(&self, broker: &impl std::fmt::Display) {
        let scheme = match self.tls {
            Some(_) => "https",
            None => "http",
        };
        let users = match self.users.len() {
            0 => "no users: whoever reaches this address acts as `local`".into(),
            1 => "1 user".into(),
            n => format!("{n} users"),
        };
        eprintln!(
            "respawnctl serve: the fleet of {broker} on {scheme}://{}/ ({users})",
            self.listen
        );
        if let Some(ha) = &self.homeassistant {
            let buttons = match ha.allow.as_slice() {
                [] => "no Restart button obeyed (allow is empty)".to_owned(),
                allow => format!(
                    "Restart obeyed for {}, at most {} presses a minute",
                    allow.join(", "),
                    ha.presses_per_minute
                ),
            };
            eprintln!(
                "respawnctl serve: Home Assistant discovery under {}/ ({buttons})",
                ha.prefix
            );
        }
        if let Some(warning) = self.open_metrics() {
            eprintln!("respawnctl serve: warning: {warning}");
        }
    }

    /// What to warn of at start when `/metrics`, which names every agent, host and process,
    /// answers without a token beyond this machine (as Prometheus' exporters do, but unlike
    /// the hub's pages, which want a login there). A hub on loopback with users or host names
    /// is reached through a proxy: beyond this machine too.
    pub fn open_metrics(&self) -> Option<String> {
        let proxied = self.has_users() || !self.hosts.is_empty();
        let beyond = !self.listen.ip().is_loopback() || proxied;
        (beyond && self.metrics_token.is_none()).then(|| {
            format!(
                "/metrics answers without a token: whoever reaches the hub ({}, or a proxy in front of it) reads the fleet's names (metrics_token_file in serve.toml)",
                self.listen
            )
        })
    }
}

/// The `[[user]]` tables: each needs a name, given once, and a password hash.
fn read_users(value: &Spanned<DeValue<'_>>, report: &mut Report<'_>) -> Vec<User> {
    let mut users: Vec<User> = Vec::new();
    for (i, item) in file::array_of_tables(value, "user", report)
        .iter()
        .enumerate()
    {
        let name = match item.get_ref() {
            DeValue::Table(table) => table.get("name").and_then(|n| n.get_ref().as_str()),
            _ => None,
        };
        let label = match name {
            Some(name) => format!("[[user]] {name:?}"),
            None => format!("[[user]] #{}", i + 1),
        };
        let mut s = Section::new(label, Naming::Item, report);
        let before = s.count();
        let required = [
            ("name", ""),
            ("password", " (what `respawnctl serve passwd NAME` prints)"),
        ];
        let Some(user) = s.read::<RawUser>(item, &required, &[]) else {
            continue;
        };
        let password = user.password.map(|password| {
            let (span, password) = (password.span(), password.into_inner());
            let name = user.name.as_deref().unwrap_or("NAME");
            if let Some(problem) = super::auth::password_hash_problem(&password, name) {
                s.problem(&span, format!("{}: {problem}", s.name));
            }
            password
        });
        let (Some(name), Some(password)) = (user.name, password) else {
            continue;
        };
        if users.iter().any(|u| u.name == name) {
            s.problem(&item.span(), format!("{}: appears twice", s.name));
        }
        if s.count() == before {
            let may_act = user.may_act.unwrap_or(true);
            users.push(User {
                name,
                password,
                may_act,
            });
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, Vec<String>> {
        ServeConfig::parse(text, None, |_| Ok("s3cret\n".into()))
            .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    fn hash() -> String {
        super::super::auth::hash_password("pw").unwrap()
    }

    #[test]
    fn a_file_with_users_and_a_token() {
        let text = format!(
            "listen = \"0.0.0.0:9090\"\nmetrics_token_file = \"/t\"\n[[user]]\nname = \"alice\"\npassword = \"{}\"\n[[user]]\nname = \"bob\"\npassword = \"{}\"\nrole = \"viewer\"\n",
            hash(),
            hash()
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.listen.port(), 9090);
        assert_eq!(config.metrics_token.as_deref(), Some("s3cret"));
        assert_eq!(config.open_metrics(), None);
        let open = parse(&text.replace("metrics_token_file = \"/t\"\n", "")).unwrap();
        assert_eq!(
            open.open_metrics().as_deref(),
            Some("/metrics answers without a token: whoever reaches the hub (0.0.0.0:9090, or a proxy in front of it) reads the fleet's names (metrics_token_file in serve.toml)")
        );
        let local = parse("listen = \"127.0.0.1:9090\"\n").unwrap();
        assert_eq!(local.open_metrics(), None, "this machine's own");
        // On loopback with users: behind a proxy, which serves others.
        let proxied = text
            .replace("0.0.0.0:9090", "127.0.0.1:9090")
            .replace("metrics_token_file = \"/t\"\n", "");
        assert!(parse(&proxied).unwrap().open_metrics().is_some());
        assert_eq!(
            config
                .users
                .iter()
                .map(|u| (u.name.as_str(), u.may_act))
                .collect::<Vec<_>>(),
            [("alice", true), ("bob", false)]
        );
    }

    #[test]
    fn home_assistant_takes_at_least_one_press_a_minute() {
        // None would leave every button refused (found by a new-user run: accepted in silence).
        let problems = parse("[homeassistant]\npresses_per_minute = 0\n").unwrap_err();
        assert!(
            problems[0].contains("presses_per_minute must be a whole number from 1"),
            "{problems:?}"
        );
        let one = parse("[homeassistant]\npresses_per_minute = 1\n").unwrap();
        assert_eq!(one.homeassistant.map(|ha| ha.presses_per_minute), Some(1));
    }

    #[test]
    fn listening_beyond_loopback_needs_a_user() {
        let problems = parse("listen = \"0.0.0.0:8080\"\n").unwrap_err();
        assert!(
            problems[0].contains("add at least one [[user]]"),
            "{problems:?}"
        );
        assert!(parse("").unwrap().listen.ip().is_loopback());
        // A user written but refused is told as such, not as missing (found by a new-user run),
        // and the hub still does not listen beyond loopback without one; nor with `user = []`.
        for (users, said) in [
            (
                "\n[[user]]\nname = \"alice\"\npassword = \"plain\"\n",
                "is reachable from other machines: mend the [[user]] tables, none of which",
            ),
            (
                "user = []\n",
                "is reachable from other machines: add at least one [[user]]",
            ),
        ] {
            let problems = parse(&format!("listen = \"0.0.0.0:8080\"\n{users}")).unwrap_err();
            assert!(problems.iter().any(|p| p.contains(said)), "{problems:?}");
        }
        assert!(ServeConfig::parse("", Some("[::1]:8081"), |_| Ok(String::new())).is_ok());
        let flag = ServeConfig::parse("", Some("0.0.0.0:8081"), |_| Ok(String::new()));
        let problems: Vec<String> = flag.unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            problems[0].starts_with("--listen 0.0.0.0:8081 is reachable"),
            "said as it was given: {problems:?}"
        );
    }

    #[test]
    fn a_key_of_the_top_written_below_a_user_is_told_where_it_goes() {
        let user = format!("[[user]]\nname = \"alice\"\npassword = \"{}\"\n", hash());
        let problems = parse(&format!("{user}listen = \"127.0.0.1:9090\"\n")).unwrap_err();
        assert_eq!(
            problems,
            ["line 4: [[user]] \"alice\": unknown key `listen` (every key after a table header belongs to that table: write it at the top of the file, above the first table header)"]
        );
    }

    #[test]
    fn host_names_are_names_without_a_port() {
        let user = format!("[[user]]\nname = \"alice\"\npassword = \"{}\"\n", hash());
        let config = parse(&format!("hosts = [\"hub.example.lan\", \"*\"]\n{user}")).unwrap();
        assert_eq!(config.hosts, ["hub.example.lan", "*"]);
        assert_eq!(
            parse("hosts = [\"hub.example.lan\"]\n").unwrap_err(),
            ["line 1: hosts: without a [[user]] the hub answers only to 127.0.0.1, [::1] and localhost; add users, or leave hosts out"]
        );
        let problems = parse(&format!("hosts = [\"hub.lan:8080\"]\n{user}")).unwrap_err();
        assert_eq!(
            problems,
            ["line 1: hosts: \"hub.lan:8080\" is not a host name such as \"hub.example.lan\" (no port; IP addresses are answered anyway)"]
        );
        let not_a_list = parse(&format!("hosts = \"hub.lan\"\n{user}")).unwrap_err();
        assert_eq!(not_a_list.len(), 1, "{not_a_list:?}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let user = format!("[[user]]\nname = \"alice\"\npassword = \"{}\"\n", hash());
        let text = format!("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/24\", \"::1\"]\n{user}");
        let trusted = parse(&text).unwrap().trusted_proxies;
        for (address, trusts) in [("127.0.0.1", true), ("10.0.0.200", true), ("::1", true)]
            .into_iter()
            .chain([("127.0.0.2", false), ("10.0.1.1", false)])
        {
            assert_eq!(
                trusted.trusts(address.parse().unwrap()),
                trusts,
                "{address}"
            );
        }
        let problems = parse(&format!("trusted_proxies = [\"proxy.lan\"]\n{user}")).unwrap_err();
        assert_eq!(
            problems,
            ["line 1: trusted_proxies: \"proxy.lan\" is not an address or network such as \"10.0.0.5\" or \"10.0.0.0/24\""]
        );
        for everyone in ["0.0.0.0/0", "::/0"] {
            let problems =
                parse(&format!("trusted_proxies = [\"{everyone}\"]\n{user}")).unwrap_err();
            assert!(
                problems[0].contains("trusts every client's X-Forwarded-For"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_named() {
        let text = "listen = \"nowhere\"\n[[user]]\nname = \"a b\"\npassword = \"hunter2\"\nrole = \"admin\"\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(
            parse("lisen = \"x\"\n").unwrap_err()[0].to_string(),
            "line 1: unknown key `lisen` (did you mean `listen`?)"
        );
    }
}
