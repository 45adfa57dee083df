//! SIGHUP reloads the configuration: added processes start, removed ones stop, changed ones
//! restart, unchanged ones are left alone; an invalid file changes nothing.

use nix::sys::signal::Signal;
use respawn_common::status::ProcessState;
use respawn_tests::{wait_for, wait_gone, TestAgent, TIMEOUT};

const BEFORE: &str = r#"
[[process]]
name = "keep"
command = ["sleep", "1000"]

[[process]]
name = "change"
command = ["sleep", "1000"]

[[process]]
name = "drop"
command = ["sleep", "1000"]
"#;

const AFTER: &str = r#"
[[process]]
name = "keep"
command = ["sleep", "1000"]

[[process]]
name = "change"
command = ["sleep", "2000"]

[[process]]
name = "new"
command = ["sleep", "1000"]
"#;

#[test]
fn sighup_applies_the_difference_and_nothing_more() {
    let agent = TestAgent::start(BEFORE);
    let keep = agent.wait_running("keep");
    let change = agent.wait_running("change");
    let dropped = agent.wait_running("drop");

    agent.rewrite_config(AFTER);
    agent.signal(Signal::SIGHUP);

    agent.wait_running("new");
    agent.wait_restarted("change", change);
    wait_for("drop to be removed", TIMEOUT, || {
        agent
            .statuses()
            .iter()
            .all(|p| p.name != "drop")
            .then_some(())
    });
    wait_gone(dropped, "the removed process");
    wait_gone(change, "the changed process's old run");
    assert_eq!(
        agent.status("keep").pid,
        Some(keep),
        "unchanged keeps running untouched"
    );
    assert_eq!(agent.status("keep").state, ProcessState::Running);
}

#[test]
fn an_invalid_configuration_on_reload_keeps_the_old_one() {
    let agent = TestAgent::start(BEFORE);
    let keep = agent.wait_running("keep");
    agent.rewrite_config("[[process]]\nname = \"keep\"\ncomand = [\"x\"]\n");
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("reload failed; the running configuration stays in force");
    agent.wait_for_log("unknown key `comand`");
    let names: Vec<String> = agent.statuses().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["keep", "change", "drop"],
        "all of them, in the file's order"
    );
    assert_eq!(agent.status("keep").pid, Some(keep));
    // The local commands still reach it, and say that the file has problems.
    let status = || {
        let out = std::process::Command::new(respawn_tests::agent_binary())
            .arg("--config")
            .arg(agent.config_path())
            .arg("status")
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = status();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("keep") && stdout.contains("drop"),
        "{stdout}"
    );
    assert!(stderr.contains("unknown key `comand`"), "{stderr}");
    assert!(stderr.contains("asking it anyway"), "{stderr}");
    // A file that is no TOML at all cannot say which agent it meant: nothing is asked.
    agent.rewrite_config("[[process]\nname = \"keep\"\n");
    let (code, _, stderr) = status();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("asking it anyway"), "{stderr}");
}
