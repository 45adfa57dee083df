//! `user` runs a process under another account; only an agent running as root may do that.

use respawn_common::status::ProcessState;
use respawn_tests::{wait_for, TestAgent, TIMEOUT};

#[test]
fn a_process_runs_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        // Only root may switch users: as anyone else the configuration is refused.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            "[[process]]\nname = \"x\"\ncommand = [\"id\"]\nuser = \"nobody\"\n",
        )
        .unwrap();
        let output = std::process::Command::new(respawn_tests::agent_binary())
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("needs the agent to run as root"));
        return;
    }
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "unprivileged"
        command = ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) home=$HOME user=$USER; sleep 1000"]
        user = "nobody"
        "#,
    );
    agent.wait_until("unprivileged", "running", |s| {
        s.state == ProcessState::Running
    });
    let line = wait_for("the child's identity", TIMEOUT, || {
        match agent.request(respawn_agent::control::Request::Logs {
            process: "unprivileged".into(),
            lines: 1,
        }) {
            respawn_agent::control::Reply::Logs { lines, .. } => {
                lines.first().map(|l| l.text.clone())
            }
            _ => None,
        }
    });
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        line,
        format!(
            "uid={} gid={} home={} user=nobody",
            nobody.uid,
            nobody.gid,
            nobody.dir.display()
        )
    );
}
