//! After the agent itself dies hard, its successor stops what was left running before it
//! starts anything, so no program ever runs twice — and it never touches a process that
//! merely reuses a recorded pid.

use std::process::{Command, Stdio};

use respawn_tests::{alive, wait_for_pid, wait_gone, TestAgent};

const SERVER: &str = r#"
[[process]]
name = "server"
command = ["sh", "-c", "echo $$ >> pids; sleep 1000 & echo $! >> helpers; wait"]
"#;

#[test]
fn leftovers_of_a_killed_agent_are_stopped_before_fresh_starts() {
    let agent = TestAgent::start(SERVER);
    let old = agent.wait_running("server");
    let helper = wait_for_pid(&agent.dir().join("helpers"));
    let dir = agent.kill_hard();
    assert!(
        alive(old) && alive(helper),
        "children outlive a SIGKILLed agent"
    );

    let agent = TestAgent::start_in(dir, SERVER);
    let new = agent.wait_running("server");
    assert_ne!(new, old);
    wait_gone(old, "the old main process");
    wait_gone(helper, "the old helper");
    agent.wait_for_log("stopping what an earlier run of the agent left running");
    let runs = std::fs::read_to_string(agent.dir().join("pids")).unwrap();
    assert_eq!(runs.lines().count(), 2, "one old and one new run: {runs}");
}

#[test]
fn a_recorded_pid_that_now_names_another_process_is_left_alone() {
    let mut bystander = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = bystander.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start_time: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state/children")).unwrap();
    // The same pid, started at another time: a reused pid, not our child.
    std::fs::write(
        dir.path().join("state/children/server"),
        format!(
            r#"{{"pid":{pid},"start_time":{},"boot_id":"{}"}}"#,
            start_time - 1,
            boot_id.trim()
        ),
    )
    .unwrap();
    // The right process, but recorded during another boot.
    std::fs::write(
        dir.path().join("state/children/other"),
        format!(r#"{{"pid":{pid},"start_time":{start_time},"boot_id":"00000000-0000-0000-0000-000000000000"}}"#),
    )
    .unwrap();
    let agent = TestAgent::start_in(dir, SERVER);
    agent.wait_running("server");
    assert!(alive(pid), "the bystander was hit");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
