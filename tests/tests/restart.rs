//! Restart behaviour of a real agent with real processes: exit records, immediate restarts
//! after stable runs, backoff, crash loops, giving up, and programs that cannot start.

use respawn_common::status::{ExitStatus, ProcessState};
use respawn_tests::TestAgent;

#[test]
fn a_crash_is_recorded_with_its_code_and_the_process_restarted() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "crasher"
        command = ["sh", "-c", "echo about to fail; echo 'fatal: no config' >&2; exit 3"]
        backoff = { initial = "50ms", max = "100ms" }
        "#,
    );
    let status = agent.wait_until("crasher", "restarted twice", |s| s.restarts >= 2);
    let exit = status.last_exit.expect("an exit record");
    assert_eq!(exit.status, ExitStatus::Code { code: 3 });
    assert!(!exit.requested);
    assert!(exit.next_start.is_some());
    assert!(exit.restarts >= 1);
    agent.wait_for_log("fatal: no config");
    agent.wait_for_log("status=exit 3");
}

#[test]
fn the_first_restart_after_a_stable_run_is_immediate() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "server"
        command = ["sh", "-c", "sleep 0.3; exit 1"]
        stable_after = "100ms"
        backoff = { initial = "10s", max = "60s" }
        "#,
    );
    let first = agent.wait_running("server");
    let second = agent.wait_restarted("server", first);
    let status = agent.status("server");
    let exit = status.last_exit.expect("an exit record");
    assert_eq!(
        exit.next_start,
        Some(exit.at),
        "no backoff after a stable run (a 10 s backoff would show a later next start)"
    );
    assert_eq!(status.pid, Some(second));
}

#[test]
fn a_signal_death_is_named() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "segv"
        command = ["sh", "-c", "kill -SEGV $$"]
        backoff = { initial = "1h", max = "1h" }
        "#,
    );
    let status = agent.wait_until("segv", "dead by signal", |s| s.last_exit.is_some());
    match status.last_exit.map(|e| e.status) {
        Some(ExitStatus::Signal { signal, .. }) => assert_eq!(signal, "SIGSEGV"),
        other => panic!("expected SIGSEGV, got {other:?}"),
    }
    assert_eq!(status.state, ProcessState::Backoff);
    assert!(status.next_start.is_some());
}

#[test]
fn restart_policies_on_failure_and_never() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "job"
        command = ["sh", "-c", "exit 0"]
        restart = "on-failure"

        [[process]]
        name = "failing-job"
        command = ["sh", "-c", "sleep 0.2; exit 1"]
        restart = "on-failure"
        backoff = { initial = "10ms", max = "10ms" }

        [[process]]
        name = "once"
        command = ["sh", "-c", "exit 1"]
        restart = "never"
        "#,
    );
    let job = agent.wait_until("job", "done", |s| {
        s.state == ProcessState::Stopped && s.last_exit.is_some()
    });
    assert_eq!(job.restarts, 0);
    assert!(!job.manually_stopped);
    let once = agent.wait_until("once", "done", |s| {
        s.state == ProcessState::Stopped && s.last_exit.is_some()
    });
    assert_eq!(
        once.last_exit.map(|e| e.status),
        Some(ExitStatus::Code { code: 1 })
    );
    agent.wait_until("failing-job", "restarted", |s| s.restarts >= 1);
    assert_eq!(
        agent.status("job").restarts,
        0,
        "a clean exit under on-failure stays done"
    );
}

#[test]
fn a_program_that_cannot_start_is_retried_and_the_agent_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("server.rb");
    std::fs::write(&not_executable, "puts 'hi'\n").unwrap();
    let agent = TestAgent::start_in(
        dir,
        r#"
        [[process]]
        name = "missing"
        command = ["/nonexistent/door-server"]
        backoff = { initial = "20ms", max = "50ms" }

        [[process]]
        name = "badcwd"
        command = ["true"]
        cwd = "/nonexistent/dir"

        [[process]]
        name = "denied"
        command = ["./server.rb"]

        [[process]]
        name = "fine"
        command = ["sleep", "1000"]
        "#,
    );
    let missing = agent.wait_until("missing", "retried", |s| s.restarts >= 3);
    let error = missing.spawn_error.expect("the OS error");
    assert!(error.contains("No such file or directory"), "{error}");
    let badcwd = agent.wait_until("badcwd", "spawn_failed", |s| s.spawn_error.is_some());
    assert!(badcwd
        .spawn_error
        .unwrap()
        .contains("working directory /nonexistent/dir"));
    let denied = agent.wait_until("denied", "spawn_failed", |s| s.spawn_error.is_some());
    assert!(denied.spawn_error.unwrap().contains("Permission denied"));
    assert_eq!(agent.status("fine").state, ProcessState::Running);
    agent.wait_for_log("could not be started");
}

#[test]
fn a_crash_loop_is_declared_and_retried_at_the_cap() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "looper"
        command = ["sh", "-c", "exit 2"]
        backoff = { initial = "10ms", max = "300ms" }
        crash_loop = { max_exits = 4, window = "1m" }
        "#,
    );
    let status = agent.wait_until("looper", "in a crash loop", |s| s.crash_loop);
    assert!(status.restarts >= 3);
    let began = status.crash_loop_since.expect("when the loop began");
    agent.wait_for_log("crash loop: 4 exits within 1m");
    // Still retried: never given up without max_restarts.
    let later = agent.wait_until("looper", "retried in the loop", |s| s.restarts >= 6);
    assert_eq!(
        later.crash_loop_since,
        Some(began),
        "the loop's start stays"
    );
    assert_eq!(
        agent.log().matches("crash loop:").count(),
        1,
        "one crash-loop report per loop"
    );
}

/// A program that cannot start, under `restart = "never"`, is given up at once: the log says
/// so, not "after 0 restarts" (found by a new-user run).
#[test]
fn a_program_that_cannot_start_and_is_never_restarted_is_given_up_without_a_restart() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "missing"
        command = ["/no/such/program"]
        restart = "never"
        "#,
    );
    agent.wait_until("missing", "failed", |s| s.state == ProcessState::Failed);
    agent.wait_for_log("gave up without a restart; `respawn-agent start missing` tries again");
}

#[test]
fn max_restarts_gives_up_and_a_manual_start_tries_again() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "hopeless"
        command = ["sh", "-c", "exit 1"]
        backoff = { initial = "10ms", max = "10ms" }
        max_restarts = 2
        "#,
    );
    let status = agent.wait_until("hopeless", "failed", |s| s.state == ProcessState::Failed);
    assert_eq!(status.restarts, 2);
    agent.wait_for_log("gave up after 2 restarts");
    let reply = agent.request(respawn_agent::control::Request::Start {
        process: "hopeless".into(),
    });
    assert!(
        matches!(reply, respawn_agent::control::Reply::Done { .. }),
        "{reply:?}"
    );
    agent.wait_until("hopeless", "failed again after fresh restarts", |s| {
        s.state == ProcessState::Failed && s.last_exit.as_ref().is_some_and(|e| e.restarts == 2)
    });
}

#[test]
fn the_last_exit_outlives_the_agent_but_not_its_own_stop() {
    // Fails once, then runs: its last exit is the failure, in this run and the next.
    let config = r#"
        [[process]]
        name = "flaky"
        command = ["sh", "-c", "if [ ! -e failed ]; then touch failed; exit 3; fi; exec sleep 1000"]
        backoff = { initial = "10ms", max = "10ms" }
    "#;
    let agent = TestAgent::start(config);
    let running = agent.wait_until("flaky", "running after its failure", |p| {
        p.state == ProcessState::Running && p.last_exit.is_some()
    });
    let failed = running.last_exit.expect("its failure");
    assert_eq!(failed.status, ExitStatus::Code { code: 3 });

    // A graceful restart of the agent stops it (a stop that says nothing of the program)...
    let dir = agent.shut_down();
    let agent = TestAgent::start_in(dir, config);
    agent.wait_running("flaky");
    let kept = agent
        .status("flaky")
        .last_exit
        .expect("kept across the restart");
    assert_eq!(kept.status, ExitStatus::Code { code: 3 });
    assert_eq!(kept.at, failed.at);
    assert_eq!(kept.next_start, None, "a plan of the agent's earlier run");

    // ...and so does a hard one.
    let agent = TestAgent::start_in(agent.kill_hard(), config);
    agent.wait_running("flaky");
    let kept = agent
        .status("flaky")
        .last_exit
        .expect("kept across a crash");
    assert_eq!(kept.at, failed.at);

    // A process that leaves the configuration takes its last exit with it.
    agent.rewrite_config("");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    respawn_tests::wait_for("flaky to go", respawn_tests::TIMEOUT, || {
        agent.statuses().is_empty().then_some(())
    });
    agent.rewrite_config(config);
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_running("flaky");
    assert_eq!(agent.status("flaky").last_exit, None);
}
