//! The agent's own end: SIGTERM/SIGINT stop every process in parallel, a second signal kills.

use nix::sys::signal::Signal;
use respawn_tests::{wait_for_pid, wait_gone, TestAgent};

#[test]
fn sigterm_stops_every_process_in_parallel_then_exits_0() {
    // Each process, on SIGTERM, marks itself and exits only once all three are marked: if the
    // agent stopped them one after another, none could finish and SIGKILL would end them.
    let barrier = r#"trap 'touch stopping.$NAME; while [ $(ls stopping.* | wc -l) -lt 3 ]; do sleep 0.01; done; exit 0' TERM; echo $$ > pid.$NAME; while true; do sleep 0.05; done"#;
    let mut processes = String::new();
    for name in ["a", "b", "c"] {
        processes.push_str(&format!(
            "[[process]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", '''{barrier}''']\nenv = {{ NAME = \"{name}\" }}\nstop_timeout = \"1h\"\n\n"
        ));
    }
    let mut agent = TestAgent::start(&processes);
    let pids: Vec<u32> = ["a", "b", "c"]
        .iter()
        .map(|n| wait_for_pid(&agent.dir().join(format!("pid.{n}"))))
        .collect();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    for pid in pids {
        wait_gone(pid, "a supervised process");
    }
    let log = agent.log();
    assert_eq!(log.matches("exited as asked").count(), 3, "{log}");
    assert_eq!(
        log.matches("status=exit 0").count(),
        3,
        "all exited by themselves:\n{log}"
    );
}

#[test]
fn a_second_signal_kills_at_once() {
    let mut agent = TestAgent::start(
        r#"
        [[process]]
        name = "deaf"
        command = ["sh", "-c", "trap '' TERM; sleep 1000 & echo $! > grandchild; while true; do sleep 0.05; done"]
        stop_timeout = "1h"
        "#,
    );
    agent.wait_running("deaf");
    let grandchild = wait_for_pid(&agent.dir().join("grandchild"));
    agent.signal(Signal::SIGTERM);
    agent.wait_for_log("stopping process=deaf");
    agent.signal(Signal::SIGINT);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(0));
    agent.wait_for_log("killing every process now");
    wait_gone(grandchild, "the grandchild");
}
