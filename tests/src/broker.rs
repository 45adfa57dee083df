//! A private MQTT broker per test, on a free port, that a test can stop and start again on the
//! same port: Mosquitto from a generated configuration, or the agent's embedded broker in a
//! process of its own (`respawn-test-broker`). The protocol tests run on both
//! ([`on_both_brokers!`](crate::on_both_brokers)); a test that needs what only Mosquitto has
//! (persistence, passwords, TLS, ACLs) asks for it by name. Neither is ever swapped for the
//! other: a missing `mosquitto` fails the tests that need it, with what to install.

use std::cell::Cell;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{wait_for, TIMEOUT};

/// Mosquitto's configuration for keeping sessions, and what is queued for them, across its
/// restart: for an observer that must see every message the broker acknowledged.
pub const PERSISTENT: &str = "persistence true\npersistence_location {dir}/\n";

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
    /// The address it listens on: loopback, unless a test needs more.
    listen: &'static str,
}

thread_local! {
    /// The broker [`Broker::start`] starts on this thread (each test has its own).
    static KIND: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Runs `test` with [`Broker::start`] starting brokers of `kind`.
pub fn with_kind<T>(kind: Kind, test: impl FnOnce() -> T) -> T {
    KIND.set(Some(kind));
    test()
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

/// The broker of this test: the one [`with_kind`] chose, else the one `RESPAWN_TEST_BROKER`
/// names (`mosquitto`, the default, or `embedded`).
fn chosen_kind() -> Kind {
    KIND.get()
        .unwrap_or_else(|| match std::env::var("RESPAWN_TEST_BROKER").as_deref() {
            Ok("embedded") => Kind::Embedded,
            _ => Kind::Mosquitto,
        })
}

/// A port free now, and never given before to another test of this binary: tests run in
/// parallel, and one that asked first may not be listening yet when the next one asks.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Broker {
    /// Starts the broker of this test: the one [`with_kind`] chose, else the one
    /// `RESPAWN_TEST_BROKER` names (`mosquitto`, the default, or `embedded`).
    pub fn start() -> Self {
        Self::launch(chosen_kind(), "")
    }

    /// Starts the broker of this test (as [`Broker::start`]) keeping sessions across its own
    /// restart: Mosquitto with persistence; the embedded broker always keeps them.
    pub fn keeping_sessions() -> Self {
        match chosen_kind() {
            Kind::Mosquitto => Self::mosquitto(PERSISTENT),
            Kind::Embedded => Self::start(),
        }
    }

    /// Starts a Mosquitto with `extra_config` appended to its configuration (for passwords,
    /// persistence), `{dir}` standing for the broker's own directory.
    pub fn mosquitto(extra_config: &str) -> Self {
        Self::launch(Kind::Mosquitto, extra_config)
    }

    /// A site's Mosquitto bridged to `central` by `examples/mosquitto/bridge.conf` itself,
    /// its address pointed at `central`, with a quicker keep-alive and retry for tests.
    pub fn bridged_to(central: &Broker) -> Self {
        Self::bridged_with(central, &[])
    }

    /// As [`Broker::bridged_to`], with more of bridge.conf's lines changed (`from`, `to`).
    pub fn bridged_with(central: &Broker, changes_more: &[(&str, &str)]) -> Self {
        let example = include_str!("../../examples/mosquitto/bridge.conf");
        let mut bridge = example.to_owned();
        let address = format!("127.0.0.1:{}", central.port());
        let changes = [
            ("central.example.org:1883", address.as_str()),
            ("keepalive_interval 30", "keepalive_interval 5"),
            ("restart_timeout 5", "restart_timeout 1"),
        ];
        for (from, to) in changes.iter().chain(changes_more) {
            assert!(bridge.contains(from), "bridge.conf no longer says {from:?}");
            bridge = bridge.replace(from, to);
        }
        Self::mosquitto(&bridge)
    }

    fn launch(kind: Kind, extra_config: &str) -> Self {
        if kind == Kind::Mosquitto {
            require_mosquitto();
        }
        let mut broker = Self::unstarted(kind, extra_config, false);
        broker.resume();
        broker
    }

    fn unstarted(kind: Kind, extra_config: &str, tls: bool) -> Self {
        Self {
            kind,
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
            extra_config: extra_config.to_owned(),
            tls,
            listen: "127.0.0.1",
        }
    }

    /// Starts the broker of this test (as [`Broker::start`]) listening on every address, for
    /// clients in other network namespaces.
    pub fn start_on_all_addresses() -> Self {
        let mut broker = Self::start();
        broker.stop();
        broker.listen = "0.0.0.0";
        broker.resume();
        broker
    }

    /// Starts a Mosquitto whose listener speaks TLS (`tls_config` names its files, see
    /// [`crate::pki::Pki::mosquitto_tls`]). There is no embedded fallback for TLS.
    pub fn start_tls(tls_config: &str) -> Self {
        require_mosquitto();
        let mut broker = Self::unstarted(Kind::Mosquitto, tls_config, true);
        broker.resume();
        broker
    }

    /// A handle on a broker that something else runs on `port`; it is never stopped from here.
    pub fn attach(port: u16) -> Self {
        let mut broker = Self::unstarted(Kind::Embedded, "", false);
        broker.port = port;
        broker
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

    /// Has the broker read its configuration files again (SIGHUP), as an administrator who
    /// changed a password does.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP);
        }
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
            "listener {} {}\nallow_anonymous true\nset_tcp_nodelay true\n",
            self.port, self.listen
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
        let log = std::fs::File::create(self.dir.path().join("broker.log")).expect("log file");
        Command::new(crate::test_broker_binary())
            .arg(format!("{}:{}", self.listen, self.port))
            // Kept across `stop` and `resume`, as in the agent's state directory.
            .arg(self.dir.path().join("broker-sessions.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the embedded broker starts")
    }
}

fn require_mosquitto() {
    assert!(
        mosquitto_binary().is_some(),
        "this test needs Mosquitto, and no mosquitto binary was found: apt install mosquitto"
    );
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
