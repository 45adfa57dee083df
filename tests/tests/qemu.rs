//! The Raspberry Pi builds of the agent (arm64 and armhf), run on this machine under qemu-user:
//! each restarts a crashing program, reports it to a private broker here (Mosquitto in CI),
//! takes a signed restart from the host's respawnctl and refuses an unsigned one (Ed25519 and
//! the session nonce, on ARM code), and stops cleanly with its programs.
//!
//! Ignored by plain `cargo test`: it needs the cross-built agents and Debian's qemu-user.
//! `.ci/run` builds them and runs it; by hand (see docs/raspberry-pi.md):
//!
//! ```sh
//! rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
//! cargo build -p respawn-agent --target aarch64-unknown-linux-gnu
//! cargo build -p respawn-agent --target armv7-unknown-linux-gnueabihf
//! cargo test -p respawn-tests --test qemu -- --ignored
//! ```
//!
//! `RESPAWN_CROSS_PROFILE=release` tests the release builds instead of the debug ones.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use respawn_common::messages::{Event, EventKind};
use respawn_common::signing::SigningKey;
use respawn_common::status::ExitStatus;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{retained, Message, Observer};
use respawn_tests::{mqtt_section, respawnctl, wait_for, wait_gone, TestAgent, TIMEOUT};

/// ELF machine numbers, from the header's `e_machine`.
const EM_ARM: u16 = 40;
const EM_AARCH64: u16 = 183;

#[test]
#[ignore = "needs the cross-built agents and qemu-user: run by .ci/run"]
fn the_arm64_agent_supervises_and_reports_under_qemu() {
    supervises_and_reports(
        "aarch64-unknown-linux-gnu",
        EM_AARCH64,
        &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
    );
}

#[test]
#[ignore = "needs the cross-built agents and qemu-user: run by .ci/run"]
fn the_armhf_agent_supervises_and_reports_under_qemu() {
    supervises_and_reports(
        "armv7-unknown-linux-gnueabihf",
        EM_ARM,
        &["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"],
    );
}

/// `target/<triple>/<profile>/respawn-agent`, in the target directory this test was built in.
fn cross_agent(triple: &str) -> PathBuf {
    let profile = std::env::var("RESPAWN_CROSS_PROFILE").unwrap_or_else(|_| "debug".into());
    let exe = std::env::current_exe().expect("the test executable's path");
    let target_dir = exe
        .ancestors()
        .find(|dir| dir.join(triple).is_dir())
        .unwrap_or_else(|| panic!("no {triple} build beside {}", exe.display()));
    let agent = target_dir.join(triple).join(profile).join("respawn-agent");
    assert!(
        agent.exists(),
        "{} is missing: cargo build -p respawn-agent --target {triple}",
        agent.display()
    );
    agent
}

fn elf_machine(program: &Path) -> u16 {
    let bytes = std::fs::read(program).expect("read the agent program");
    assert_eq!(bytes.get(..4), Some(&b"\x7fELF"[..]), "not an ELF file");
    // e_machine is at offset 18, in the file's byte order (little-endian on both targets).
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn events(messages: &[Message]) -> Vec<Event> {
    messages
        .iter()
        .filter(|m| m.topic == "respawn/v1/pi/event")
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn supervises_and_reports(triple: &str, machine: u16, emulator: &[&str]) {
    let program = cross_agent(triple);
    assert_eq!(elf_machine(&program), machine, "{triple} build expected");
    let broker = Broker::start();
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = keys.path().join("alice.key");
    let out = std::process::Command::new(respawn_tests::respawnctl_binary())
        .args(["keygen", "--out"])
        .arg(&key_file)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .expect("respawnctl keygen runs");
    assert!(out.status.success(), "{out:?}");
    let alice = SigningKey::parse(&std::fs::read_to_string(&key_file).expect("the key file"))
        .expect("a valid key");

    let observer = Observer::connect(&broker, &["respawn/v1/pi/#"]);
    let config = format!(
        r#"[agent]
id = "pi"
state_dir = "state"

[[operator]]
name = "alice"
public_key = "{}"

{}
[[process]]
name = "doorbot"
command = ["sleep", "1000"]

[[process]]
name = "flaky"
command = ["sh", "-c", "echo 'door jammed' >&2; exit 3"]
backoff = {{ initial = "100ms", max = "100ms" }}
max_restarts = 2
"#,
        alice.public_line(),
        mqtt_section(&broker)
    );
    let mut agent = TestAgent::start_wrapped(emulator, &program, &config);

    // A crash is reported with its exit code and its last output, and restarted.
    let crash = observer.wait("flaky's second exit", |messages| {
        events(messages).into_iter().find(|e| {
            matches!(&e.kind, EventKind::Exited { restarts, .. } if *restarts >= 1)
                && e.process.as_deref() == Some("flaky")
        })
    });
    let EventKind::Exited {
        status, log_tail, ..
    } = &crash.kind
    else {
        unreachable!()
    };
    assert_eq!(*status, ExitStatus::Code { code: 3 });
    assert!(
        log_tail.iter().any(|line| line.text == "door jammed"),
        "{log_tail:?}"
    );

    // A signed restart from the host's respawnctl, acknowledged with the old and new pid.
    let pid = agent.wait_running("doorbot");
    wait_for("the agent online", TIMEOUT, || {
        let state = retained(&broker, "respawn/v1/pi/state");
        (state.first()?.json()["state"] == "online").then_some(())
    });
    let unsigned = respawnctl(&broker, &["restart", "pi/doorbot", "--timeout", "30s"]);
    assert_eq!(unsigned.code, Some(2), "{unsigned:?}");
    assert!(
        unsigned.stdout.contains("rejected pi/doorbot: unsigned"),
        "{unsigned:?}"
    );
    assert_eq!(agent.status("doorbot").pid, Some(pid), "not restarted");
    let key = key_file.display().to_string();
    let out = respawnctl(
        &broker,
        &["--key", &key, "restart", "pi/doorbot", "--timeout", "30s"],
    );
    assert_eq!(out.code, Some(0), "{out:?}\nagent log:\n{}", agent.log());
    assert!(
        out.stdout
            .starts_with(&format!("restarted pi/doorbot pid {pid} → ")),
        "{out:?}"
    );
    let doorbot = agent.wait_restarted("doorbot", pid);

    // A clean stop: its programs stopped, exit 0 and `offline` retained, not the Last Will.
    agent.signal(Signal::SIGTERM);
    assert_eq!(agent.wait_exit().code(), Some(0), "{}", agent.log());
    wait_gone(doorbot, "doorbot after the agent stopped");
    wait_for("the agent offline", TIMEOUT, || {
        let state = retained(&broker, "respawn/v1/pi/state");
        (state.first()?.json()["state"] == "offline").then_some(())
    });
}
