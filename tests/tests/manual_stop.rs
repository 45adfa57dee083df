//! A process stopped by hand stays stopped, across agent restarts, until started by hand.

use respawn_agent::control::{Outcome, Reply, Request};
use respawn_common::status::ProcessState;
use respawn_tests::TestAgent;

const CONFIG: &str = r#"
[[process]]
name = "web"
command = ["sleep", "1000"]

[[process]]
name = "worker"
command = ["sleep", "1000"]
"#;

fn request(agent: &TestAgent, request: Request) -> Outcome {
    match agent.request(request) {
        Reply::Done { outcome, .. } => outcome,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn a_manual_stop_survives_agent_restarts_until_a_manual_start() {
    let mut agent = TestAgent::start(CONFIG);
    agent.wait_running("web");
    assert_eq!(
        request(
            &agent,
            Request::Stop {
                process: "web".into()
            }
        ),
        Outcome::Stopped
    );
    assert_eq!(
        request(
            &agent,
            Request::Stop {
                process: "web".into()
            }
        ),
        Outcome::AlreadyStopped
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit();
    let dir = agent.kill_hard();
    let agent = TestAgent::start_in(dir, CONFIG);
    agent.wait_running("worker");
    let web = agent.status("web");
    assert_eq!(web.state, ProcessState::Stopped);
    assert!(web.manually_stopped);

    let pid = match request(
        &agent,
        Request::Start {
            process: "web".into(),
        },
    ) {
        Outcome::Started { pid } => pid,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        request(
            &agent,
            Request::Start {
                process: "web".into()
            }
        ),
        Outcome::AlreadyRunning { pid }
    );
    let dir = agent.kill_hard();
    let agent = TestAgent::start_in(dir, CONFIG);
    agent.wait_running("web");
    assert!(!agent.status("web").manually_stopped);
}

#[test]
fn restart_reports_the_old_and_new_pid() {
    let agent = TestAgent::start(CONFIG);
    let old = agent.wait_running("web");
    match request(
        &agent,
        Request::Restart {
            process: "web".into(),
        },
    ) {
        Outcome::Restarted { old_pid, new_pid } => {
            assert_eq!(old_pid, Some(old));
            assert_ne!(new_pid, old);
            assert_eq!(agent.status("web").pid, Some(new_pid));
        }
        other => panic!("{other:?}"),
    }
    let reply = agent.request(Request::Restart {
        process: "nope".into(),
    });
    assert_eq!(
        reply,
        Reply::Error {
            message: "unknown process \"nope\"".into()
        }
    );
}

/// Ctrl-C while `respawn-agent stop` waits ends the wait, not the stop: said so, rather than
/// ending without a word as if the stop were undone (found by a new-user run); and the command
/// dies by SIGINT, so that a shell script stops there.
#[test]
fn an_interrupted_stop_goes_on_and_says_so() {
    use std::os::unix::process::ExitStatusExt;
    let agent = TestAgent::start(
        "[[process]]\nname = \"stubborn\"\ncommand = [\"sh\", \"-c\", \"trap '' TERM; touch trapped; while :; do sleep 0.05; done\"]\nstop_timeout = \"10s\"\n",
    );
    agent.wait_running("stubborn");
    // Deaf to SIGTERM before it is asked to stop: else it would be stopped at once.
    let trapped = agent.dir().join("trapped");
    respawn_tests::wait_for("the trap set", respawn_tests::TIMEOUT, || {
        trapped.exists().then_some(())
    });
    let waiting = std::process::Command::new(respawn_tests::agent_binary())
        .arg("--config")
        .arg(agent.config_path())
        .args(["stop", "stubborn"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    agent.wait_until("stubborn", "its stop under way", |s| {
        s.state == ProcessState::Stopping
    });
    let pid = nix::unistd::Pid::from_raw(waiting.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc_sigint()),
        "{:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("interrupted: the stop goes on in the agent"),
        "{stderr}"
    );
    agent.wait_until("stubborn", "stopped all the same", |s| {
        s.state == ProcessState::Stopped && s.manually_stopped
    });
}

fn libc_sigint() -> i32 {
    nix::sys::signal::Signal::SIGINT as i32
}

/// A mistake on the command line exits 1, as respawnctl's do, not 2, which says the agent
/// refused (found by a new-user run: a script could not tell a typo from a refusal).
#[test]
fn a_mistake_on_the_command_line_is_not_told_as_a_refusal() {
    let run = |args: &[&str]| {
        std::process::Command::new(respawn_tests::agent_binary())
            .args(args)
            .output()
            .unwrap()
    };
    let typo = run(&["start", "doorbot", "--timeout", "abc"]);
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid value 'abc'"), "{stderr}");
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}
