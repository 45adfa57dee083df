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
