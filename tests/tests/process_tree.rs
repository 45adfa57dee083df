//! Whole process trees: nothing a supervised program started survives its restart or its stop,
//! and every child is reaped.

use std::collections::BTreeSet;

use respawn_agent::control::{Outcome, Reply, Request};
use respawn_common::status::{ExitStatus, ProcessState};
use respawn_tests::{alive, wait_for, wait_for_pid, wait_gone, TestAgent, TIMEOUT};

fn lines_of(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn restart_kills_grandchild(trap: &str) {
    let agent = TestAgent::start(&format!(
        r#"
        [[process]]
        name = "parent"
        command = ["sh", "-c", "{trap} sleep 1000 & echo $! >> grandchildren; sleep 0.3; exit 1"]
        backoff = {{ initial = "10ms", max = "10ms" }}
        "#
    ));
    let file = agent.dir().join("grandchildren");
    let first = wait_for("the first grandchild", TIMEOUT, || {
        lines_of(&file).first().copied()
    });
    wait_for("a second run", TIMEOUT, || {
        (lines_of(&file).len() >= 2).then_some(())
    });
    wait_gone(first, "the first run's backgrounded sleep");
}

fn a_restart_leaves_no_backgrounded_grandchild() {
    restart_kills_grandchild("");
}

fn a_restart_leaves_no_grandchild_that_ignores_sigterm() {
    restart_kills_grandchild("trap '' TERM;");
}

fn a_stop_kills_the_group_after_the_timeout_when_sigterm_is_ignored() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "stubborn"
        command = ["sh", "-c", "trap '' TERM; sleep 1000 & echo $! > grandchild; while true; do sleep 0.05; done"]
        stop_timeout = "300ms"
        "#,
    );
    let main = agent.wait_running("stubborn");
    let grandchild = wait_for_pid(&agent.dir().join("grandchild"));
    let reply = agent.request(Request::Stop {
        process: "stubborn".into(),
    });
    assert_eq!(
        reply,
        Reply::Done {
            process: "stubborn".into(),
            outcome: Outcome::Stopped,
            warning: Some(
                "it had not ended on its stop signal by its stop_timeout: killed (SIGKILL)".into()
            ),
        }
    );
    let status = agent.status("stubborn");
    assert_eq!(status.state, ProcessState::Stopped);
    assert_eq!(
        status.last_exit.as_ref().map(|e| &e.status),
        Some(&ExitStatus::Signal {
            signal: "SIGKILL".into(),
            core_dumped: false
        })
    );
    // The exit says that the stop signal was not enough, not only "as asked".
    assert!(
        status
            .last_exit
            .as_ref()
            .is_some_and(|e| e.requested && e.killed_at_stop_timeout),
        "{:?}",
        status.last_exit
    );
    agent.wait_for_log("did not stop in time");
    agent.wait_for_log("killed: it had not stopped by its stop_timeout");
    wait_gone(main, "the main process");
    wait_gone(grandchild, "the grandchild");
}

fn a_cooperative_stop_does_not_wait_for_the_timeout() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "polite"
        command = ["sh", "-c", "sleep 1000 & echo $! > grandchild; wait"]
        stop_timeout = "1h"
        "#,
    );
    agent.wait_running("polite");
    let grandchild = wait_for_pid(&agent.dir().join("grandchild"));
    // The stop answers long before the hour is up: SIGTERM to the group ends both. (Not
    // SIGINT, which a shell's `&` job ignores: that holds a stop until its timeout.)
    agent.stop_process("polite");
    wait_gone(grandchild, "the grandchild");
    assert!(!agent.log().contains("did not stop in time"));
}

fn orphans_are_reaped_so_no_zombie_remains() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "spawner"
        command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do (sleep 0.05 & echo $! >> orphans); done; sleep 1000"]
        "#,
    );
    let main = agent.wait_running("spawner");
    let file = agent.dir().join("orphans");
    let orphans: BTreeSet<u32> = wait_for("eight orphans", TIMEOUT, || {
        let pids = lines_of(&file);
        (pids.len() == 8).then(|| pids.into_iter().collect())
    });
    // The orphans were re-parented to the agent (a subreaper); once they end, it must reap
    // them: their /proc entries disappear rather than linger as zombies.
    for pid in &orphans {
        wait_for(&format!("orphan {pid} to be reaped"), TIMEOUT, || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        });
    }
    assert!(alive(main));
}

respawn_tests::on_both_containments!(
    a_restart_leaves_no_backgrounded_grandchild,
    a_restart_leaves_no_grandchild_that_ignores_sigterm,
    a_stop_kills_the_group_after_the_timeout_when_sigterm_is_ignored,
    a_cooperative_stop_does_not_wait_for_the_timeout,
    orphans_are_reaped_so_no_zombie_remains,
);

/// A stop waits for every process of the program, not only for the main one, as systemd's
/// `KillMode=control-group` does: a worker's clean-up is not cut short because the main
/// process ended first (found by a new-user run: a worker that flushes for a second on
/// SIGTERM was killed with its wrapper). In a cgroup: under process groups, what is left of
/// the group is killed when the main process ends.
#[test]
fn a_stop_waits_for_a_workers_clean_up_after_the_main_process_ended() {
    let test = "a_stop_waits_for_a_workers_clean_up_after_the_main_process_ended";
    if !respawn_tests::runs_as_root(test, "cgroups are made as root") {
        return;
    }
    respawn_tests::with_containment("cgroup", || {
        let agent = TestAgent::start(
            r#"
            [[process]]
            name = "wrapper"
            command = ["sh", "-c", "sh -c 'trap \"sleep 0.5; echo done > cleaned; exit 0\" TERM; echo $$ > worker; while :; do sleep 0.05; done' & exec sleep 1000"]
            stop_timeout = "30s"
            "#,
        );
        let main = agent.wait_running("wrapper");
        let worker = wait_for_pid(&agent.dir().join("worker"));
        agent.stop_process("wrapper");
        // Done once the cgroup is empty: the worker cleaned up and exited by itself.
        let cleaned = std::fs::read_to_string(agent.dir().join("cleaned"));
        assert_eq!(cleaned.ok().as_deref(), Some("done\n"), "{}", agent.log());
        assert!(!alive(main) && !alive(worker));
        assert!(
            !agent.log().contains("did not stop in time"),
            "{}",
            agent.log()
        );
    });
}

/// What started the agent may have left descriptors open beyond stdin, stdout and stderr (a
/// shell's `$(…)`, a script's pipe): its programs and their health probes get none of them,
/// as systemd's and supervisord's do. A program holding the write end of such a pipe would
/// keep its reader waiting for as long as it runs.
#[test]
fn programs_get_no_descriptor_the_agent_inherited() {
    let agent = respawn_tests::TestAgent::start_wrapped(
        &["sh", "-c", "exec 9</dev/null; exec \"$@\"", "sh"],
        &respawn_tests::agent_binary(),
        r#"
        [[process]]
        name = "inheritor"
        command = ["sh", "-c", "if [ -e /proc/self/fd/9 ]; then echo fd 9 was inherited; else echo fd 9 is not there; fi; exec sleep 1000"]
        health = { exec = ["sh", "-c", "[ ! -e /proc/self/fd/9 ] || echo fd 9 in the probe >&2; [ ! -e /proc/self/fd/9 ]"], interval = "200ms", timeout = "100ms", grace = "0s" }
        "#,
    );
    agent.wait_for_log("fd 9 is not there");
    let status = agent.wait_until("inheritor", "healthy", |s| s.state == ProcessState::Running);
    assert!(status.pid.is_some());
    let log = agent.log();
    assert!(!log.contains("fd 9 was inherited"), "{log}");
    assert!(!log.contains("fd 9 in the probe"), "{log}");
}
