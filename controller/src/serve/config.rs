//! `serve.toml`: where the hub listens, who may log in (and whether they may act), the key
//! that signs what they do, and the token `/metrics` asks for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use respawn_common::mqtt::server_tls_config;

use respawn_common::topics::validate_requester;
use serde::Deserialize;

/// Where the hub listens when `serve.toml` does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The checked file.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Signs the actions of the dashboard's users; else respawnctl's own key.
    pub signing_key: Option<PathBuf>,
    /// `/metrics` wants `Authorization: Bearer` this, when set.
    pub metrics_token: Option<String>,
    pub users: Vec<User>,
    /// HTTPS with this certificate chain and key (PEM), checked at start.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
    /// Button presses the hub turns into restarts, at most, per minute (all together).
    pub presses_per_minute: u32,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    signing_key: Option<PathBuf>,
    metrics_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    homeassistant: Option<RawHomeAssistant>,
    #[serde(default)]
    user: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHomeAssistant {
    prefix: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    presses_per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: String,
    role: Option<String>,
}

impl ServeConfig {
    /// No file: loopback only, no users.
    pub fn local() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            signing_key: None,
            metrics_token: None,
            users: Vec::new(),
            tls: None,
            homeassistant: None,
        }
    }

    /// Reads and checks `path`; every problem in one message.
    pub fn load(path: &Path, listen: Option<&str>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, listen, |p| std::fs::read_to_string(p))
            .map_err(|problems| format!("{}:\n  {}", path.display(), problems.join("\n  ")))
    }

    /// Checks `text`; `listen` (from the command line) wins over the file's.
    pub fn parse(
        text: &str,
        listen: Option<&str>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, Vec<String>> {
        let raw: Raw = toml::from_str(text).map_err(|e| vec![e.to_string().trim().to_owned()])?;
        let mut problems = Vec::new();
        let listen = listen
            .map(str::to_owned)
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let address = listen.parse::<SocketAddr>().map_err(|_| {
            format!("listen = {listen:?} is not an address and port, e.g. \"0.0.0.0:8080\"")
        });
        let metrics_token = match raw.metrics_token_file {
            Some(path) => match read(&path) {
                Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
                Ok(_) => {
                    problems.push(format!("metrics_token_file {} is empty", path.display()));
                    None
                }
                Err(e) => {
                    problems.push(format!(
                        "cannot read metrics_token_file {}: {e}",
                        path.display()
                    ));
                    None
                }
            },
            None => None,
        };
        let mut users: Vec<User> = Vec::new();
        for user in raw.user {
            let name = user.name;
            if let Err(e) = validate_requester(&name) {
                problems.push(format!("[[user]] {name:?}: {e}"));
            }
            if users.iter().any(|u| u.name == name) {
                problems.push(format!("[[user]] {name:?} appears twice"));
            }
            if let Some(problem) = super::auth::password_hash_problem(&user.password, &name) {
                problems.push(format!("[[user]] {name:?}: {problem}"));
            }
            let may_act = match user.role.as_deref() {
                None | Some("operator") => true,
                Some("viewer") => false,
                Some(other) => {
                    problems.push(format!(
                        "[[user]] {name:?}: role {other:?} is not \"operator\" or \"viewer\""
                    ));
                    false
                }
            };
            users.push(User {
                name,
                password: user.password,
                may_act,
            });
        }
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(cert), Some(key)) => match server_tls_config(cert, key) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    problems.push(format!("tls_cert, tls_key: {e}"));
                    None
                }
            },
            (None, None) => None,
            _ => {
                problems.push("tls_cert and tls_key go together".into());
                None
            }
        };
        let homeassistant = raw.homeassistant.map(|ha| {
            let prefix = ha
                .prefix
                .unwrap_or_else(|| super::homeassistant::DEFAULT_PREFIX.to_owned());
            if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
                problems.push(format!("[homeassistant] prefix = {prefix:?} is not a topic prefix, e.g. \"homeassistant\""));
            }
            for glob in &ha.allow {
                if crate::fleet::Target::parse(glob).is_err() {
                    problems.push(format!("[homeassistant] allow: {glob:?} is not AGENT/PROCESS (globs allowed)"));
                }
            }
            HomeAssistant {
                prefix,
                allow: ha.allow,
                presses_per_minute: ha.presses_per_minute.unwrap_or(6),
            }
        });
        match &address {
            Ok(address) if !address.ip().is_loopback() && users.is_empty() => problems.push(format!(
                "listen = {listen:?} is reachable from other machines: add at least one [[user]] (respawnctl serve passwd NAME prints one), or listen on 127.0.0.1"
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.clone()),
        }
        match (address, problems.is_empty()) {
            (Ok(listen), true) => Ok(Self {
                listen,
                signing_key: raw.signing_key,
                metrics_token,
                users,
                tls,
                homeassistant,
            }),
            _ => Err(problems),
        }
    }

    /// Whether people log in (else, on loopback, whoever can reach it is the `local` user).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, Vec<String>> {
        ServeConfig::parse(text, None, |_| Ok("s3cret\n".into()))
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
    fn listening_beyond_loopback_needs_a_user() {
        let problems = parse("listen = \"0.0.0.0:8080\"\n").unwrap_err();
        assert!(
            problems[0].contains("add at least one [[user]]"),
            "{problems:?}"
        );
        assert!(parse("").unwrap().listen.ip().is_loopback());
        assert!(ServeConfig::parse("", Some("[::1]:8081"), |_| Ok(String::new())).is_ok());
    }

    #[test]
    fn every_problem_is_named() {
        let text = "listen = \"nowhere\"\n[[user]]\nname = \"a b\"\npassword = \"hunter2\"\nrole = \"admin\"\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(parse("lisen = \"x\"\n").unwrap_err()[0].contains("unknown field"));
    }
}
