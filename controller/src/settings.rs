//! Where respawnctl finds its broker, credentials, TLS files and signing key: the command line
//! first, then the environment (`RESPAWN_BROKER`, `RESPAWN_USERNAME`, `RESPAWN_PASSWORD`,
//! `RESPAWN_PASSWORD_FILE`, `RESPAWN_KEY`), then `~/.config/respawn/respawnctl.toml`.

use std::fmt;
use std::path::{Path, PathBuf};

use respawn_common::config_file::{self, checked, path, some, summary, text};
use respawn_common::config_file::{Naming, Problem, Report, Section, Wrong};
use respawn_common::mqtt::{BrokerUrl, TlsFiles};
use respawn_common::topics::Topics;
use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

/// The broker when nothing names one.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// How to reach the fleet.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub broker: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    pub topics: Topics,
    /// For `mqtts://`.
    pub tls: TlsFiles,
    /// The operator key that signs commands.
    pub signing_key: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("broker", &self.broker)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("topics", &self.topics)
            .field("tls", &self.tls)
            .field("signing_key", &self.signing_key)
            .finish()
    }
}

/// Settings given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Given {
    pub broker: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub prefix: Option<String>,
    pub tls: TlsFiles,
    pub signing_key: Option<PathBuf>,
    /// For a command that connects to no broker (`alerts check`, `alerts test`): the password
    /// is not read. Its file may be readable to the service alone (systemd's credentials),
    /// and the check is of the files, not of the login.
    pub no_password: bool,
}

/// What `~/.config/respawn/respawnctl.toml` says: each key as its command-line option does.
#[derive(Default, Deserialize)]
#[serde(default)]
struct File {
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[serde(deserialize_with = "broker")]
    broker: Option<String>,
    #[serde(deserialize_with = "text")]
    username: Option<String>,
    #[serde(deserialize_with = "path")]
    password_file: Option<PathBuf>,
    #[serde(deserialize_with = "prefix")]
    topic_prefix: Option<String>,
    #[serde(deserialize_with = "path")]
    ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "path")]
    cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "path")]
    key_file: Option<PathBuf>,
    #[serde(deserialize_with = "path")]
    signing_key: Option<PathBuf>,
}

respawn_common::adapters! {
    broker -> Option<String> = some(checked(|text: String| match BrokerUrl::parse(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(Wrong::says(e)),
    }));
    prefix -> Option<String> = some(checked(|text: String| match Topics::new(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(Wrong::says(e)),
    }));
}

/// Reads `respawnctl.toml`; every problem at once, each with its line. Relative paths are
/// taken as they are, relative to where respawnctl runs.
fn read_file(text: &str) -> Result<File, Vec<Problem>> {
    let mut report = Report::new(text);
    let file = config_file::parse(text, &mut report).and_then(|root| {
        let root = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
        Section::new("respawnctl.toml:", Naming::File, &mut report).read(&root, &[], &[])
    });
    report.finish()?;
    Ok(file.unwrap_or_default())
}

/// The configuration file respawnctl reads when `--config` names none.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("respawn/respawnctl.toml"))
}

/// Combines the three sources. `config` is the file's path and content, if there is one;
/// `env` reads an environment variable; `read` reads a password file.
pub fn resolve(
    given: &Given,
    env: impl Fn(&str) -> Option<String>,
    config: Option<(&Path, &str)>,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Settings, String> {
    let mut file = match config {
        Some((path, text)) => read_file(text)
            .map_err(|problems| format!("{}: {}", path.display(), summary(&problems)))?,
        None => File::default(),
    };
    // A file is not read by a shell: `~/` is expanded here, as a shell would on the command
    // line.
    let home = env("HOME");
    for path in [
        &mut file.password_file,
        &mut file.ca_file,
        &mut file.cert_file,
        &mut file.key_file,
        &mut file.signing_key,
    ] {
        if let (Some(rest), Some(home)) =
            (path.as_ref().and_then(|p| p.strip_prefix("~").ok()), &home)
        {
            *path = Some(Path::new(home).join(rest));
        }
    }
    let named_here = given.broker.clone().or_else(|| env("RESPAWN_BROKER"));
    let overridden = named_here.is_some();
    let file_broker = file.broker.as_deref().map(BrokerUrl::parse);
    let file_broker_tls = matches!(file_broker, Some(Ok(BrokerUrl { tls: true, .. })));
    let broker = named_here
        .or(file.broker.take())
        .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
    let broker = BrokerUrl::parse(&broker).map_err(|e| e.to_string())?;
    // The file's login goes with its broker: a plain one named instead of its mqtts:// one
    // would carry the password in the clear.
    if overridden && !broker.tls && file_broker_tls {
        (file.username, file.password_file) = (None, None);
    }
    let username = given
        .username
        .clone()
        .or_else(|| env("RESPAWN_USERNAME"))
        .or(file.username);
    let password_file = given
        .password_file
        .clone()
        .or_else(|| env("RESPAWN_PASSWORD_FILE").map(PathBuf::from))
        .or(file.password_file);
    let password = match (env("RESPAWN_PASSWORD"), password_file) {
        _ if given.no_password => None,
        (Some(password), _) if given.password_file.is_none() => Some(password),
        (_, Some(path)) => Some(respawn_common::mqtt::read_password(&path, read)?),
        (password, None) => password,
    };
    if password.is_some() && username.is_none() {
        return Err("a password needs a username (--username or RESPAWN_USERNAME)".into());
    }
    let prefix = given
        .prefix
        .clone()
        .or(file.topic_prefix)
        .unwrap_or_else(|| respawn_common::topics::DEFAULT_PREFIX.to_owned());
    let topics = Topics::new(&prefix).map_err(|e| e.to_string())?;
    if !broker.tls && given.tls != TlsFiles::default() {
        return Err("--ca-file, --cert-file and --key-file need an mqtts:// broker".into());
    }
    let from_file = TlsFiles {
        ca_file: file.ca_file,
        cert_file: file.cert_file,
        key_file: file.key_file,
    };
    let tls = match (broker.tls, overridden) {
        // The file's TLS files are for its broker, not for a plain one named instead.
        (false, true) => TlsFiles::default(),
        (false, false) if from_file != TlsFiles::default() => {
            let file = config.map_or(Path::new("respawnctl.toml"), |(path, _)| path);
            return Err(format!(
                "{}: ca_file, cert_file and key_file need an mqtts:// broker",
                file.display()
            ));
        }
        _ => TlsFiles {
            ca_file: given.tls.ca_file.clone().or(from_file.ca_file),
            cert_file: given.tls.cert_file.clone().or(from_file.cert_file),
            key_file: given.tls.key_file.clone().or(from_file.key_file),
        },
    };
    let signing_key = given
        .signing_key
        .clone()
        .or_else(|| env("RESPAWN_KEY").map(PathBuf::from))
        .or(file.signing_key);
    Ok(Settings {
        broker,
        username,
        password,
        topics,
        tls,
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn read(path: &Path) -> std::io::Result<String> {
        match path.to_str() {
            Some("/secret") => Ok("hunter2\n".into()),
            Some("/empty") => Ok("\n".into()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    const FILE: &str = "broker = \"mqtt://from-file\"\nusername = \"file-user\"\ntopic_prefix = \"site/a\"\nsigning_key = \"/keys/alice.key\"\n";

    #[test]
    fn the_command_line_wins_over_the_environment_over_the_file() {
        let file = Some((Path::new("c.toml"), FILE));
        let s = resolve(&Given::default(), env(&[]), file, read).unwrap();
        assert_eq!(s.broker.host, "from-file");
        assert_eq!(s.username.as_deref(), Some("file-user"));
        assert_eq!(s.topics.prefix(), "site/a");
        assert_eq!(s.signing_key.as_deref(), Some(Path::new("/keys/alice.key")));
        let s = resolve(
            &Given::default(),
            env(&[("RESPAWN_KEY", "/env.key")]),
            file,
            read,
        )
        .unwrap();
        assert_eq!(s.signing_key.as_deref(), Some(Path::new("/env.key")));

        let s = resolve(
            &Given::default(),
            env(&[("RESPAWN_BROKER", "mqtt://from-env")]),
            file,
            read,
        )
        .unwrap();
        assert_eq!(s.broker.host, "from-env");

        let given = Given {
            broker: Some("mqtt://from-cli:1884".into()),
            ..Given::default()
        };
        let s = resolve(
            &given,
            env(&[("RESPAWN_BROKER", "mqtt://from-env")]),
            file,
            read,
        )
        .unwrap();
        assert_eq!((s.broker.host.as_str(), s.broker.port), ("from-cli", 1884));
    }

    #[test]
    fn a_home_relative_path_in_the_file_is_expanded() {
        let file = Some((
            Path::new("c.toml"),
            "broker = \"mqtts://x\"\nsigning_key = \"~/.config/respawn/alice.key\"\nca_file = \"~user/ca.pem\"\n",
        ));
        let s = resolve(
            &Given::default(),
            env(&[("HOME", "/home/alice")]),
            file,
            read,
        )
        .unwrap();
        assert_eq!(
            s.signing_key.as_deref(),
            Some(Path::new("/home/alice/.config/respawn/alice.key"))
        );
        assert_eq!(
            s.tls.ca_file.as_deref(),
            Some(Path::new("~user/ca.pem")),
            "only ~/"
        );
    }

    #[test]
    fn defaults_and_passwords() {
        let s = resolve(&Given::default(), env(&[]), None, read).unwrap();
        assert_eq!(s.broker.to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(s.password, None);

        let e = env(&[("RESPAWN_USERNAME", "alice"), ("RESPAWN_PASSWORD", "pw")]);
        assert_eq!(
            resolve(&Given::default(), e, None, read)
                .unwrap()
                .password
                .as_deref(),
            Some("pw")
        );

        let given = Given {
            username: Some("alice".into()),
            password_file: Some("/secret".into()),
            ..Given::default()
        };
        let s = resolve(&given, env(&[("RESPAWN_PASSWORD", "ignored")]), None, read).unwrap();
        assert_eq!(s.password.as_deref(), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"), "never printed");

        // A command that connects to no broker does not read it: the file may be the
        // service's alone (found by a new-user run: `alerts check` failed on it).
        let unread = Given {
            username: Some("alice".into()),
            password_file: Some("/run/credentials/respawn-alerts.service/mqtt-password".into()),
            no_password: true,
            ..Given::default()
        };
        let fail = |path: &Path| -> std::io::Result<String> { panic!("{} read", path.display()) };
        let s = resolve(&unread, env(&[]), None, fail).unwrap();
        assert_eq!(s.password, None);
    }

    #[test]
    fn bad_settings_are_explained() {
        let bad = |given: Given, file: Option<&str>| {
            resolve(
                &given,
                env(&[]),
                file.map(|f| (Path::new("c.toml"), f)),
                read,
            )
            .unwrap_err()
        };
        assert!(bad(
            Given {
                broker: Some("tcp://x".into()),
                ..Given::default()
            },
            None
        )
        .contains("not a broker URL"));
        assert!(bad(Given::default(), Some("brokr = 1")).contains("c.toml"));
        let typos = bad(
            Given::default(),
            Some("brokr = \"mqtt://x\"\nusername = 7\ntopic_prefix = \"a/#\"\npassword = \"x\"\n"),
        );
        for expected in [
            "c.toml: 4 problems:",
            "line 1: unknown key `brokr` (did you mean `broker`?)",
            "line 4: unknown key `password` (did you mean `password_file`?)",
            "line 2: username must be a string, not an integer",
            "line 3: topic_prefix: ",
        ] {
            assert!(typos.contains(expected), "{expected:?} in\n{typos}");
        }
        assert!(bad(
            Given {
                password_file: Some("/missing".into()),
                username: Some("a".into()),
                ..Given::default()
            },
            None
        )
        .contains("cannot read the password file /missing"));
        assert!(bad(
            Given {
                password_file: Some("/empty".into()),
                username: Some("a".into()),
                ..Given::default()
            },
            None
        )
        .contains("the password file /empty is empty"));
        assert!(bad(
            Given {
                password_file: Some("/secret".into()),
                ..Given::default()
            },
            None
        )
        .contains("needs a username"));
        let plain_with_files = "broker = \"mqtt://x\"\nca_file = \"ca.pem\"\n";
        assert_eq!(
            bad(Given::default(), Some(plain_with_files)),
            "c.toml: ca_file, cert_file and key_file need an mqtts:// broker"
        );
        let flag = Given {
            broker: Some("mqtt://x".into()),
            tls: TlsFiles {
                ca_file: Some("ca.pem".into()),
                ..TlsFiles::default()
            },
            ..Given::default()
        };
        assert!(bad(flag, None).starts_with("--ca-file"));
    }

    #[test]
    fn a_plain_broker_named_on_the_command_line_leaves_the_files_tls_files_aside() {
        let file = "broker = \"mqtts://central\"\nca_file = \"ca.pem\"\nusername = \"alice\"\npassword_file = \"/secret\"\n";
        let given = Given {
            broker: Some("mqtt://127.0.0.1:18830".into()),
            ..Given::default()
        };
        let s = resolve(&given, env(&[]), Some((Path::new("c.toml"), file)), read).unwrap();
        assert_eq!(s.tls, TlsFiles::default());
        assert_eq!(
            (s.username, s.password),
            (None, None),
            "nor its login, which would go in the clear"
        );
        let given = Given {
            broker: Some("mqtts://other".into()),
            ..Given::default()
        };
        let s = resolve(&given, env(&[]), Some((Path::new("c.toml"), file)), read).unwrap();
        assert_eq!(s.tls.ca_file.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.password.as_deref(), Some("hunter2"));
    }
}
