//! docs/protocol.md as a client written from it would use it: its signed Python example, run
//! as printed (with the broker, agent and key file of the test put in), restarts a process of
//! a real agent.

use std::process::{Command, Stdio};

use respawn_common::signing::SigningKey;
use respawn_tests::broker::Broker;
use respawn_tests::{has_python_modules, mqtt_section, wait_for, TestAgent, TIMEOUT};

/// The code block that follows `heading` in the protocol document.
fn example(heading: &str, language: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md");
    let section = doc
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/protocol.md"))
        .1;
    let fence = format!("```{language}\n");
    let code = section.split_once(&fence).expect("a code block").1;
    code.split_once("```")
        .expect("the end of the block")
        .0
        .to_owned()
}

/// Replaces the line of `code` that starts with `start`.
fn set(code: &str, start: &str, line: &str) -> String {
    assert!(code.contains(start), "the example no longer has {start:?}");
    code.lines()
        .map(|l| if l.starts_with(start) { line } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

fn the_signed_python_example_restarts_a_process() {
    if !has_python_modules(
        "the_signed_python_example_restarts_a_process",
        &["paho.mqtt.client", "cryptography"],
    ) {
        return;
    }
    let broker = Broker::start();
    let key = SigningKey::generate("alice").unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("alice.key");
    std::fs::write(&key_file, key.to_file()).unwrap();
    let agent = TestAgent::start(&format!(
        "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\n\n{}[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n",
        key.public_line(),
        mqtt_section(&broker)
    ));
    let old = agent.wait_running("doorbot");

    let code = example("## Signed, from Python", "python");
    let code = set(
        &code,
        "BROKER, PORT = ",
        &format!("BROKER, PORT = \"127.0.0.1\", {}", broker.port()),
    );
    let code = set(
        &code,
        "KEY_FILE = ",
        &format!("KEY_FILE = {:?}", key_file.display().to_string()),
    );
    let script = keys.path().join("restart.py");
    std::fs::write(&script, code).unwrap();
    let mut python = Command::new("python3")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the example to finish", TIMEOUT, || {
        python.try_wait().unwrap()
    });
    let output = python.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "{stdout}{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    assert!(stdout.starts_with("accepted"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    let new = agent.wait_restarted("doorbot", old);
    assert!(stdout.contains(&format!("pid {old} → {new}")), "{stdout}");
}

respawn_tests::on_both_brokers!(the_signed_python_example_restarts_a_process);
