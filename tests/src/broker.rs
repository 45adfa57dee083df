//! A private MQTT broker per test, on a free port, that a test can stop and start again on the
//! same port: Mosquitto from a generated configuration, or — where no `mosquitto` binary exists
//! — the agent's embedded broker in a process of its own. `RESPAWN_TEST_BROKER=mosquitto`
//! (which `.ci/run` sets) makes Mosquitto mandatory; `=embedded` forces the fallback.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{agent_binary, wait_for, TIMEOUT};

/// Which broker program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mosquitto,
    Embedded,
}

/// A running (or stopped) private broker.
pub struct Broker {
    kind: Kind,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra_config: String,
    tls: bool,
}

fn mosquitto_binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    });
    from_path.or_else(|| {
        ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Broker {
    /// Starts a broker with the default settings.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts a broker; `extra_config` is appended to Mosquitto's configuration (for
    /// passwords, persistence), with `{dir}` standing for the broker's own directory. The
    /// embedded fallback ignores it.
    pub fn start_with(extra_config: &str) -> Self {
        let choice = std::env::var("RESPAWN_TEST_BROKER").unwrap_or_default();
        let kind = match (choice.as_str(), mosquitto_binary()) {
            ("embedded", _) => Kind::Embedded,
            (_, Some(_)) => Kind::Mosquitto,
            ("mosquitto", None) => panic!(
                "RESPAWN_TEST_BROKER=mosquitto but no mosquitto binary found: apt install mosquitto"
            ),
            (_, None) => Kind::Embedded,
        };
        let mut broker = Self {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
            extra_config: extra_config.to_owned(),
            tls: false,
        };
        broker.resume();
        broker
    }

    /// Starts a Mosquitto whose listener speaks TLS (`tls_config` names its files, see
    /// [`crate::pki::Pki::mosquitto_tls`]). There is no embedded fallback for TLS.
    pub fn start_tls(tls_config: &str) -> Self {
        assert!(
            mosquitto_binary().is_some(),
            "TLS tests need mosquitto: apt install mosquitto"
        );
        let mut broker = Self {
            kind: Kind::Mosquitto,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
            extra_config: tls_config.to_owned(),
            tls: true,
        };
        broker.resume();
        broker
    }

    /// A handle on a broker that something else runs on `port`; it is never stopped from here.
    pub fn attach(port: u16) -> Self {
        Self {
            kind: Kind::Embedded,
            port,
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
            extra_config: String::new(),
            tls: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the broker (SIGTERM, so that Mosquitto saves what it persists).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
        wait_for("the broker's port to close", TIMEOUT, || {
            TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }

    /// Starts the broker again on the same port.
    pub fn resume(&mut self) {
        let child = match self.kind {
            Kind::Mosquitto => self.spawn_mosquitto(),
            Kind::Embedded => self.spawn_embedded(),
        };
        self.child = Some(child);
        let port = self.port;
        wait_for("the broker to listen", TIMEOUT, || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    fn spawn_mosquitto(&self) -> Child {
        let config = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n",
            self.port
        );
        if nix::unistd::geteuid().is_root() {
            // Else Mosquitto drops to user `mosquitto`, who cannot write the test's files.
            text.push_str("user root\n");
        }
        text.push_str(
            &self
                .extra_config
                .replace("{dir}", &self.dir.path().display().to_string()),
        );
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log file");
        Command::new(mosquitto_binary().expect("mosquitto"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts")
    }

    fn spawn_embedded(&self) -> Child {
        let config = self.dir.path().join("broker.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nid = \"broker\"\nstate_dir = \"state\"\n[broker]\nlisten = \"127.0.0.1:{}\"\n",
                self.port
            ),
        )
        .expect("write broker.toml");
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("log file");
        Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the embedded broker starts")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
