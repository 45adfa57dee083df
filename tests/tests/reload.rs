//! SIGHUP and `respawn-agent reload` reload the configuration: added processes start, removed
//! ones stop, changed ones restart, unchanged ones are left alone; an invalid file changes
//! nothing. `reload` says which, or every problem of the file with exit 2.

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
    // The journal keeps what the SIGHUP changed, also of what did not run.
    agent.wait_for_log("reloaded: starting new; restarting change; removing drop; unchanged keep");
}

/// A program renamed in the file holds its port until its old run is gone, which takes a
/// second after SIGTERM here: the new name starts only then, and binds at its first start
/// (it started beside the old run, failed to bind and crashed once).
#[test]
fn a_renamed_program_starts_once_its_old_run_has_let_go() {
    let port = respawn_tests::broker::free_port();
    let server = |name: &str| {
        format!(
            r#"
[[process]]
name = "{name}"
command = ["python3", "-c", """
import signal, socket, sys, time
def slow_stop(*_):
    time.sleep(1)
    sys.exit(0)
signal.signal(signal.SIGTERM, slow_stop)
s = socket.socket()
s.bind(('127.0.0.1', {port}))
s.listen()
print('listening', flush=True)
while True:
    signal.pause()
"""]
"#
        )
    };
    let agent = TestAgent::start(&server("door"));
    let old = agent.wait_running("door");
    agent.wait_for_log("listening process=door");

    agent.rewrite_config(&server("door-opener"));
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("waiting for the removed door to stop before starting door-opener");
    agent.wait_for_log("listening process=door-opener");
    let renamed = agent.wait_running("door-opener");
    wait_gone(old, "the old name's run");
    let status = agent.status("door-opener");
    assert_eq!((status.pid, status.restarts), (Some(renamed), 0));
    assert!(status.last_exit.is_none(), "{}", agent.log());
}

/// `respawn-agent --config FILE ARGS…`: exit code, stdout, stderr.
fn agent_cli(agent: &TestAgent, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(agent.config_path())
        .args(args)
        .output()
        .expect("respawn-agent runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Found by a review: an empty file (one caught half written by a tool) names the
/// hostname's agent and no process; taken, it stopped every program and forgot their manual
/// stops, so the next good reload started one stopped by hand.
#[test]
fn a_file_of_another_agent_or_half_written_is_refused_whole() {
    let agent = TestAgent::start(BEFORE);
    let keep = agent.wait_running("keep");
    agent.wait_running("drop");
    agent.stop_process("drop");
    std::fs::write(agent.config_path(), "").unwrap();
    // The local command finds no agent through an empty file: a SIGHUP (a burst of them while
    // a tool writes the file) is what reads it.
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_log("the file is another agent's, or not fully written");
    let log = agent.log();
    // Said as empty: an agent that names no id (as packaged) would find its own id and state
    // directory in it.
    for said in [
        "reload refused; the running configuration stays in force",
        "it has no setting at all: the file is another agent's, or not fully written",
    ] {
        assert!(log.contains(said), "{said:?} in {log}");
    }
    assert_eq!(agent.status("keep").pid, Some(keep));
    // Comments alone are no settings either.
    std::fs::write(agent.config_path(), "# being written\n\n").unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    respawn_tests::wait_for("the second refusal", respawn_tests::TIMEOUT, || {
        (agent.log().matches("it has no setting at all").count() >= 2).then_some(())
    });
    assert_eq!(agent.status("keep").pid, Some(keep));
    // Another agent's file, in this state directory: refused, with why, exit 2.
    let other = format!("[agent]\nid = \"other\"\nstate_dir = \"state\"\n{BEFORE}");
    agent.rewrite_config(&other);
    let (code, stdout, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("[agent] id is \"other\", not \"test\": the file is another agent's"),
        "{stderr}"
    );
    // Another agent's state directory is another agent too.
    agent.rewrite_config(&BEFORE.replace("name = \"keep\"", "name = \"kept\""));
    let other = std::fs::read_to_string(agent.config_path()).unwrap();
    std::fs::write(
        agent.config_path(),
        other.replace("state_dir = \"state\"", "state_dir = \"elsewhere\""),
    )
    .unwrap();
    // The local commands look for it there: a SIGHUP reaches it.
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_log("[agent] state_dir is");
    assert!(
        agent.statuses().iter().all(|p| p.name != "kept"),
        "not taken"
    );
    // Written whole again: taken, and the manual stop stands.
    agent.rewrite_config(BEFORE);
    let (code, _, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(agent.status("keep").pid, Some(keep));
    let dropped = agent.status("drop");
    assert!(
        dropped.manually_stopped && dropped.pid.is_none(),
        "{dropped:?}"
    );
}

#[test]
fn reload_says_what_it_starts_restarts_and_stops_or_why_it_refuses() {
    let agent = TestAgent::start(BEFORE);
    let keep = agent.wait_running("keep");
    let change = agent.wait_running("change");
    agent.wait_running("drop");

    agent.rewrite_config(AFTER);
    let (code, stdout, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(0), "{stderr}");
    let path = agent.config_path().display().to_string();
    assert_eq!(
        stdout,
        format!(
            "reloaded {path}\n  starting      new\n  restarting    change\n  removing      drop\n  unchanged     keep\n"
        )
    );
    agent.wait_running("new");
    agent.wait_restarted("change", change);
    assert_eq!(agent.status("keep").pid, Some(keep));

    let (code, stdout, _) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        format!("reloaded {path}\n  unchanged     change, keep, new\n")
    );

    // A file with mistakes: every one, once (not also as the client's own warning), exit 2.
    agent.rewrite_config("[[process]]\nname = \"keep\"\ncomand = [\"x\"]\n");
    let (code, stdout, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("reload failed; the running configuration stays in force"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("unknown key `comand`").count(),
        1,
        "{stderr}"
    );
    assert_eq!(agent.status("keep").pid, Some(keep), "nothing changed");
}

#[test]
fn a_change_to_a_process_left_off_is_said_as_it_is_done_not_as_a_restart() {
    let off = |command: &str| {
        format!("[[process]]\nname = \"keep\"\ncommand = [\"sleep\", \"1000\"]\n\n[[process]]\nname = \"off\"\ncommand = [\"sleep\", \"{command}\"]\nautostart = false\n")
    };
    let agent = TestAgent::start(&off("1000"));
    agent.wait_running("keep");
    assert_eq!(agent.status("off").state, ProcessState::Stopped);

    agent.rewrite_config(&off("2000"));
    let (code, stdout, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(0), "{stderr}");
    let path = agent.config_path().display().to_string();
    assert_eq!(
        stdout,
        format!("reloaded {path}\n  changed       off (autostart off: not started)\n  unchanged     keep\n")
    );
    let (_, status, _) = agent_cli(&agent, &["status"]);
    assert_eq!(agent.status("off").state, ProcessState::Stopped, "{status}");
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

#[test]
fn reload_says_when_who_may_command_the_agent_changed() {
    let alice = respawn_common::signing::SigningKey::generate("alice").unwrap();
    let carol = respawn_common::signing::SigningKey::generate("carol").unwrap();
    let operator = |key: &respawn_common::signing::SigningKey, allow: &str| {
        format!(
            "[[operator]]\nname = \"{}\"\npublic_key = \"{}\"\nallow = [{allow}]\n\n",
            key.public_line().rsplit(' ').next().unwrap(),
            key.public_line()
        )
    };
    let agent_table = "[agent]\nid = \"test\"\nstate_dir = \"state\"\n";
    let agent = TestAgent::start(&format!(
        "{agent_table}\n{}{BEFORE}",
        operator(&alice, "\"restart\"")
    ));
    agent.wait_running("keep");
    agent.rewrite_config(&format!(
        "{agent_table}allow_unsigned_commands = true\n\n{}{}{BEFORE}",
        operator(&alice, "\"restart\", \"stop\""),
        operator(&carol, "\"logs\"")
    ));
    let (code, stdout, stderr) = agent_cli(&agent, &["reload"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout
            .ends_with("  commands      added carol; changed alice; unsigned commands now taken\n"),
        "{stdout}"
    );
    agent.wait_for_log(
        "reloaded: no process changes; commands: added carol; changed alice; unsigned commands now taken",
    );
    // Nothing changed: nothing said.
    let (_, stdout, _) = agent_cli(&agent, &["reload"]);
    assert!(!stdout.contains("commands"), "{stdout}");
}

/// `respawn-agent --config OTHER reload` to an agent started with another file is refused:
/// a reload reads the agent's own file again, and OTHER's mistakes went unsaid behind a
/// "reloaded" of it (found by a new-user run). The same file named another way is its own.
#[test]
fn a_reload_of_a_file_the_agent_does_not_run_with_is_refused() {
    let agent = TestAgent::start(BEFORE);
    let keep = agent.wait_running("keep");
    let reload = |config: &std::path::Path| {
        let out = std::process::Command::new(respawn_tests::agent_binary())
            .arg("--config")
            .arg(config)
            .arg("reload")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let other = agent.dir().join("other.toml");
    let text = "[agent]\nid = \"test\"\nstate_dir = \"state\"\n[[process]]\nname = \"keep\"\ncomand = [\"x\"]\n";
    std::fs::write(&other, text).unwrap();
    let (code, stderr) = reload(&other);
    assert_eq!(code, Some(2), "{stderr}");
    let (runs, asked) = (agent.config_path(), other.display());
    let said = format!(
        "this agent runs with {}: a reload reads that file again, not {asked}",
        runs.display()
    );
    assert!(stderr.contains(&said), "{stderr}");
    assert_eq!(agent.status("keep").pid, Some(keep));
    // Through a symbolic link, the agent's own file.
    let link = agent.dir().join("link.toml");
    std::os::unix::fs::symlink(&runs, &link).unwrap();
    let (code, stderr) = reload(&link);
    assert_eq!(code, Some(0), "{stderr}");
}
