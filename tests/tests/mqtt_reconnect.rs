//! The broker goes away and comes back: supervision carries on meanwhile, and the agent
//! reconnects, republishing its birth and every process state. Wrong credentials are reported
//! clearly and retried slowly.

use std::time::Duration;

use respawn_common::status::ProcessState;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::retained;
use respawn_tests::{mqtt_section, wait_for, TestAgent, TIMEOUT};

fn after_a_broker_restart_birth_and_states_are_published_again() {
    let mut broker = Broker::start();
    let agent = TestAgent::start(
        &(mqtt_section(&broker)
            + r#"
[[process]]
name = "doorbot"
command = ["sleep", "1000"]

[[process]]
name = "crasher"
command = ["sh", "-c", "exit 1"]
backoff = { initial = "10ms", max = "10ms" }
crash_loop = { max_exits = 1000, window = "1m" }
"#),
    );
    wait_for("the birth", TIMEOUT, || {
        (!retained(&broker, "respawn/v1/test/state").is_empty()).then_some(())
    });
    // A broker without persistence forgets everything retained when it restarts.
    broker.stop();
    let before = agent.status("crasher").restarts;
    agent.wait_until("crasher", "restarted while the broker is away", |s| {
        s.restarts >= before + 5
    });
    broker.resume();
    let states = wait_for("birth and both states again", TIMEOUT, || {
        let birth = retained(&broker, "respawn/v1/test/state");
        let procs = retained(&broker, "respawn/v1/test/proc/+");
        (birth.first().is_some_and(|m| m.json()["state"] == "online") && procs.len() == 2)
            .then_some(procs)
    });
    let doorbot = states
        .iter()
        .find(|m| m.topic.ends_with("/doorbot"))
        .unwrap();
    assert_eq!(doorbot.json()["state"], "running");
    assert_eq!(agent.status("doorbot").state, ProcessState::Running);
    agent.wait_for_log("connected to the broker again");
    // The first retry comes after 0.5 s ± 20 %, and the log says so, not "1s". It is told
    // as the connection lost: the broker was there until then.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("lost the connection to the broker;"))
        .unwrap_or_else(|| panic!("no first retry in:\n{log}"));
    let wait = retry_delay(line);
    assert!(
        (Duration::from_millis(400)..=Duration::from_millis(600)).contains(&wait),
        "{line}"
    );
}

/// The delay a reconnect line announces.
fn retry_delay(line: &str) -> Duration {
    line.split("retrying in ")
        .nth(1)
        .and_then(|rest| rest.split(" broker=").next())
        .and_then(|d| humantime::parse_duration(d).ok())
        .unwrap_or_else(|| panic!("no retry delay in {line:?}"))
}

#[test]
fn wrong_credentials_are_reported_and_retried_slowly() {
    // No password file: Mosquitto refuses every login.
    // The embedded broker takes any login: this is Mosquitto's refusal.
    let broker = Broker::mosquitto("allow_anonymous false\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mqtt-password"), "wrong\n").unwrap();
    let agent = TestAgent::start_in(
        dir,
        &format!(
            "[mqtt]\nurl = \"{}\"\nusername = \"door-pi\"\npassword_file = \"mqtt-password\"\n\n[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n",
            broker.url()
        ),
    );
    agent.wait_for_log("the broker refused the connection as \"door-pi\": ");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("refused the connection"))
        .unwrap();
    assert!(
        line.contains("refused the connection as \"door-pi\": "),
        "{line}"
    );
    // Mosquitto says "not authorized" of a bad password too: the message says so.
    assert!(
        line.contains(
            "not authorized (Mosquitto also answers this to a missing or mistyped username or password)"
        ),
        "{line}"
    );
    let delay = retry_delay(line);
    assert!(
        delay >= std::time::Duration::from_secs(48),
        "retried after {delay:?}: {line}"
    );
    assert!(
        !log.contains("wrong"),
        "the password never appears in the log"
    );
    assert_eq!(
        agent.wait_running("doorbot"),
        agent.status("doorbot").pid.unwrap(),
        "supervision goes on"
    );
}

respawn_tests::on_both_brokers!(after_a_broker_restart_birth_and_states_are_published_again,);

/// A password file corrected after a refusal is read again before the next try: the agent
/// connects without a restart (after the slow retry a refusal waits, about a minute).
#[test]
fn a_corrected_password_file_is_taken_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    std::fs::write(&passwords, "").unwrap();
    let made = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwords)
        .args(["door-pi", "right"])
        .status()
        .expect("mosquitto_passwd runs (it comes with Mosquitto)");
    assert!(made.success());
    let broker = Broker::mosquitto(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwords.display()
    ));
    let agent_dir = tempfile::tempdir().unwrap();
    let secret = agent_dir.path().join("mqtt-password");
    std::fs::write(&secret, "mistyped\n").unwrap();
    let agent = TestAgent::start_in(
        agent_dir,
        &format!(
            "[mqtt]\nurl = \"{}\"\nusername = \"door-pi\"\npassword_file = \"mqtt-password\"\n\n[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n",
            broker.url()
        ),
    );
    agent.wait_for_log("; the password is read again from ");
    std::fs::write(&secret, "right\n").unwrap();
    let retry = Duration::from_secs(60) * 3 / 2 + TIMEOUT;
    respawn_tests::wait_for_or(
        "the agent to connect with the corrected password",
        retry,
        || {
            agent
                .log()
                .contains("connected to the broker after")
                .then_some(())
        },
        || agent.log(),
    );
    assert!(agent
        .log()
        .contains("the broker password changed; connecting with the new one"));
}

/// Found by a review: a password file that anyone on the Pi can read was taken without a
/// word; `respawnctl` already warned of such a signing key.
#[test]
fn a_password_file_others_can_read_is_noted_by_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"door-pi\"\npassword_file = \"{}\"\n",
        password.display()
    );
    std::fs::write(&config, text).unwrap();
    let note = format!(
        "note: [mqtt]: others can read {} (chmod 600 it)",
        password.display()
    );
    for (mode, noted) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = respawn_tests::check(&config);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(stdout.contains(&note), noted, "{mode:o}: {stdout}");
    }
}

/// A username with no password anywhere is said before a broker refuses it.
#[test]
fn a_username_without_a_password_is_noted_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"door-pi\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(respawn_tests::agent_binary())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env_remove("RESPAWN_PASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("note: [mqtt] username \"door-pi\" has no password: no password_file, and $RESPAWN_PASSWORD is not set here"),
        "{stdout}"
    );
}

/// A username the docs' ACL would refuse to let write the agent's reports: it is not the
/// agent id. Said by `check`, not refused: a broker's ACL may be written otherwise.
#[test]
fn a_username_that_is_not_the_agent_id_is_noted_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let note = "note: [mqtt] username \"door-pi\" is not the agent id";
    // Not of an id the file does not say (the hostname of the machine `check` runs on,
    // perhaps not the agent's).
    // Nor of the agent's own broker, by whatever name, which has no ACL.
    let own = "[broker]\nlisten = \"0.0.0.0:1883\"\n";
    for (id, broker, noted) in [
        ("id = \"t1\"", "", true),
        ("id = \"door-pi\"", "", false),
        ("", "", false),
        ("id = \"t1\"", own, false),
    ] {
        std::fs::write(
            &config,
            format!("[agent]\n{id}\n\n[mqtt]\nurl = \"mqtt://localhost:1883\"\nusername = \"door-pi\"\n\n{broker}"),
        )
        .unwrap();
        let out = respawn_tests::check(&config);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(stdout.contains(note), noted, "{id}: {stdout}");
    }
}
