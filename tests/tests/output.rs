//! Captured output: line by line into a bounded ring, forwarded to the agent's log with the
//! process name, never blocking the child, and complete when an exit is recorded.

use respawn_agent::control::{Reply, Request};
use respawn_agent::logs::{LogLine, Stream, LINE_OVERHEAD, MAX_LINE_BYTES, RING_BYTES};
use respawn_common::status::ProcessState;
use respawn_tests::{wait_for_file, TestAgent, TIMEOUT};

fn logs(agent: &TestAgent, process: &str, lines: usize) -> (Vec<LogLine>, u64) {
    match agent.request(Request::Logs {
        process: process.into(),
        lines,
    }) {
        Reply::Logs { lines, dropped, .. } => (lines, dropped),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn stdout_and_stderr_are_captured_and_forwarded_with_the_process_name() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "talker"
        command = ["sh", "-c", "echo hello from stdout; echo trouble on stderr >&2; for i in $(seq 1 200); do echo line $i; done; echo last words; exit 4"]
        restart = "never"
        "#,
    );
    agent.wait_until("talker", "exited", |s| s.state == ProcessState::Stopped);
    // The exit was recorded with the last line of each stream already in the buffer: which of
    // the two is last depends on which pipe the agent read first, as the two have no order
    // between them.
    agent.wait_for_log("exited; no restart process=talker");
    let log = agent.log();
    let exited = log.find("exited; no restart process=talker").unwrap_or(0);
    for last in [
        "last words process=talker stream=stdout",
        "trouble on stderr process=talker stream=stderr",
    ] {
        assert!(
            log.find(last).is_some_and(|at| at < exited),
            "{last:?} before the exit: {log}"
        );
    }
    let exit_line = log[exited..].lines().next().unwrap_or_default();
    assert!(
        exit_line.ends_with("last_line=last words")
            || exit_line.ends_with("last_line=trouble on stderr"),
        "{exit_line}"
    );
    let (lines, dropped) = logs(&agent, "talker", 1000);
    assert_eq!(dropped, 0);
    assert_eq!(lines.len(), 203);
    // Each stream in its own order (the two pipes have none between them).
    let of = |stream: Stream| -> Vec<&str> {
        let of_stream = lines.iter().filter(|l| l.stream == stream);
        of_stream.map(|l| l.text.as_str()).collect()
    };
    let stdout = of(Stream::Stdout);
    let numbered: Vec<String> = (1..=200).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout.len(), 202);
    assert_eq!(
        (stdout[0], &stdout[1..201], stdout[201]),
        (
            "hello from stdout",
            &numbered.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "last words"
        )
    );
    assert_eq!(of(Stream::Stderr), ["trouble on stderr"]);
    // The last lines, as many as asked for.
    let (tail, _) = logs(&agent, "talker", 2);
    assert_eq!(tail, lines[201..]);
}

#[test]
fn a_flood_of_output_never_blocks_the_child_and_the_ring_stays_bounded() {
    let agent = TestAgent::start_quiet(
        r#"
        [[process]]
        name = "flood"
        command = ["sh", "-c", "yes 'the quick brown fox jumps over the lazy dog' | head -c 20000000; echo done > finished; sleep 1000"]
        "#,
    );
    wait_for_file(&agent.dir().join("finished"));
    let (lines, dropped) = logs(&agent, "flood", usize::MAX);
    let bytes: usize = lines.iter().map(|l| l.text.len() + LINE_OVERHEAD).sum();
    assert!(bytes <= RING_BYTES, "{bytes} bytes kept");
    assert!(dropped > 400_000, "dropped {dropped}");
    assert!(lines
        .iter()
        .all(|l| l.text == "the quick brown fox jumps over the lazy dog"));
}

/// The agent's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_empty_lines_is_bounded_too() {
    let agent = TestAgent::start_quiet(
        r#"
        [[process]]
        name = "blank"
        command = ["sh", "-c", "yes '' | head -n 3000000; echo done > finished; sleep 1000"]
        "#,
    );
    wait_for_file(&agent.dir().join("finished"));
    let lines = respawn_tests::wait_for("every line to be read", respawn_tests::TIMEOUT, || {
        let (lines, dropped) = logs(&agent, "blank", usize::MAX);
        (lines.len() + dropped as usize >= 3_000_000).then_some(lines)
    });
    assert!(
        lines.len() * LINE_OVERHEAD <= RING_BYTES,
        "{} lines kept",
        lines.len()
    );
    // Generous: a leak of 3 million lines would be hundreds of MiB.
    let rss = rss_kib(agent.pid());
    assert!(rss < 64 * 1024, "the agent holds {rss} KiB");
}

#[test]
fn long_lines_are_capped_and_invalid_utf8_tolerated() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "odd"
        command = ["sh", "-c", "printf 'caf\\351\\n'; head -c 20000 /dev/zero | tr '\\0' x; echo; sleep 1000"]
        "#,
    );
    agent.wait_running("odd");
    let lines = respawn_tests::wait_for("the output", respawn_tests::TIMEOUT, || {
        let (lines, _) = logs(&agent, "odd", 100);
        (lines.len() >= 4).then_some(lines)
    });
    assert_eq!(lines[0].text, "caf\u{fffd}");
    let lens: Vec<usize> = lines[1..].iter().map(|l| l.text.len()).collect();
    assert_eq!(
        lens,
        [MAX_LINE_BYTES, MAX_LINE_BYTES, 20000 - 2 * MAX_LINE_BYTES]
    );
}

#[test]
fn respawn_log_sets_levels_by_target_and_a_bad_one_is_said_and_ignored() {
    let talker = "[[process]]\nname = \"talker\"\ncommand = [\"sh\", \"-c\", \"echo hello from talker; exec sleep 1000\"]\n";
    // The programs' lines at info, the agent's own only from warn up.
    let agent = TestAgent::start_with_env(talker, &[("RESPAWN_LOG", "warn,respawn::output=info")]);
    agent.wait_for_log("hello from talker");
    let log = agent.log();
    assert!(!log.contains(" INFO respawn_agent"), "{log}");

    let agent = TestAgent::start_with_env(talker, &[("RESPAWN_LOG", "info,[span{x=1}]=debug")]);
    agent.wait_for_log("RESPAWN_LOG=\"info,[span{x=1}]=debug\" is not a filter");
    agent.wait_for_log("hello from talker");
    assert!(
        agent.log().contains(" INFO respawn_agent"),
        "{}",
        agent.log()
    );
}

/// A child that writes as fast as it can (`yes`) must not take the agent from its other
/// children, its control socket or its signals: output is read a buffer at a time between
/// everything else.
#[test]
fn a_child_that_never_stops_writing_leaves_the_agent_free_for_the_rest() {
    let agent = TestAgent::start_quiet(
        r#"
        [[process]]
        name = "yes"
        command = ["yes"]

        [[process]]
        name = "brief"
        command = ["sh", "-c", "sleep 0.2; exit 3"]
        backoff = { initial = "10ms", max = "10ms" }
        crash_loop = { max_exits = 1000, window = "1s" }
        "#,
    );
    agent.wait_running("yes");
    // Each exit of `brief` is reaped and restarted while `yes` floods its pipe.
    let status = agent.wait_until("brief", "restarted five times", |s| s.restarts >= 5);
    assert!(status.restarts >= 5);
    let (_, dropped) = logs(&agent, "yes", 1);
    assert!(dropped > 0, "the flood was read: {dropped} lines dropped");
    // And a stop request is heard: the agent stops everything and exits 0.
    agent.shut_down();
}

/// A flood of output goes whole into the ring, and only so much at a time into the agent's
/// log, where it would drown the agent's own words (and journald, which limits the agent's
/// service as a whole, would drop those with it): what was left out is counted there, also
/// when the flood ends with the program.
#[test]
fn the_agents_log_takes_a_bounded_share_of_a_flood_and_counts_the_rest() {
    use respawn_agent::logs::LOGGED_PER_WINDOW;
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "flood"
        command = ["sh", "-c", "yes y | head -n 20000"]
        restart = "never"
        "#,
    );
    agent.wait_until("flood", "exited", |s| s.state == ProcessState::Stopped);
    let counted = |log: &str| {
        let logged = log.matches("y process=flood stream=stdout").count() as u64;
        let left_out: u64 = log
            .lines()
            .filter_map(|line| {
                let (before, _) =
                    line.split_once(" lines of its output were not written to this log")?;
                before.rsplit(' ').next()?.parse::<u64>().ok()
            })
            .sum();
        (logged, left_out)
    };
    // The pipe's reader says the last count when the pipe ends, which may be after the exit
    // is reaped; a flood that straddled a window has said an earlier count already.
    let (logged, left_out) = respawn_tests::wait_for_or(
        "the flood's last count in the agent's log",
        TIMEOUT,
        || {
            let (logged, left_out) = counted(&agent.log());
            (logged + left_out >= 20_000).then_some((logged, left_out))
        },
        || agent.log(),
    );
    let log = agent.log();
    assert!(left_out > 0, "{log}");
    assert_eq!(logged + left_out, 20_000, "every line logged or counted");
    // The flood may straddle the start of a window.
    assert!(
        logged <= 2 * u64::from(LOGGED_PER_WINDOW),
        "{logged} lines logged"
    );
    let (lines, dropped) = logs(&agent, "flood", usize::MAX);
    assert_eq!(
        lines.len() as u64 + dropped,
        20_000,
        "the ring took them all"
    );
}

/// Clients of the control socket that ask for a large answer and never read it hold neither
/// the agent's memory nor its file descriptors (which restarts need): it serves 32 at once,
/// and the CLI is answered once they go.
#[test]
fn control_clients_that_never_read_hold_neither_memory_nor_descriptors() {
    use std::io::Write as _;
    let agent = TestAgent::start_quiet(
        r#"
        [[process]]
        name = "noisy"
        command = ["python3", "-c", "import time\nfor _ in range(40): print('\\x01' * 8000, flush=True)\nopen('written', 'w').close()\ntime.sleep(1000)"]
        "#,
    );
    let written = agent.dir().join("written");
    let log = || agent.log();
    respawn_tests::wait_for_or(
        "the output",
        TIMEOUT,
        || written.exists().then_some(()),
        log,
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let (fds_before, rss_before) = (fds(), rss_kib(agent.pid()));
    let socket = agent.dir().join("state/agent.sock");
    let held: Vec<std::os::unix::net::UnixStream> = (0..200)
        .map(|_| {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let ask = b"{\"cmd\":\"logs\",\"process\":\"noisy\",\"lines\":100000}\n";
            stream.write_all(ask).unwrap();
            stream
        })
        .collect();
    respawn_tests::wait_for("the agent to serve what it takes", TIMEOUT, || {
        (fds() >= fds_before + 32).then_some(())
    });
    respawn_tests::wait_for("its answers to be made", TIMEOUT, || {
        (rss_kib(agent.pid()) > rss_before + 20_000).then_some(())
    });
    let (fds_held, rss_held) = (fds(), rss_kib(agent.pid()));
    assert!(
        fds_held < fds_before + 40,
        "{fds_before} → {fds_held} descriptors"
    );
    assert!(
        rss_held < rss_before + 100_000,
        "{rss_before} → {rss_held} KiB"
    );
    drop(held);
    assert_eq!(logs(&agent, "noisy", 1).0.len(), 1);
}

/// The agent's own log shows a program's output as a terminal may show it: a carriage return
/// (a progress bar) cannot rewrite the log's line, nor a direction mark reorder it; nor can
/// the last line an exit names retitle the terminal.
#[test]
fn a_carriage_return_in_output_cannot_rewrite_the_agents_log_line() {
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "progress"
        command = ["sh", "-c", "printf 'progress 1\\rprogress 2 \\342\\200\\256txt\\n'; exec sleep 1000"]

        [[process]]
        name = "titler"
        command = ["sh", "-c", "printf 'title \\033]0;owned\\007 \\342\\200\\256txt\\n'; exit 1"]
        restart = "never"
        "#,
    );
    agent.wait_for_log("progress 1\\u{d}progress 2 \\u{202e}txt process=progress");
    // The exit's line names its last line escaped too (found by a hostile-input review).
    agent.wait_for_log("last_line=title \\u{1b}]0;owned");
    let log = agent.log();
    assert!(!log.contains(['\u{1b}', '\u{7}', '\u{202e}']), "{log:?}");
}
