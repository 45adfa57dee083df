//! What the agent reports, built from the state machine's views and notices: status snapshots,
//! events with a bounded log tail, and bounded `logs` replies. Pure functions.

use respawn_common::messages::{CommandReply, EventKind, ReplyStatus};
use respawn_common::status::{ExitRecord, ExitStatus, LogLine, ProcessStatus};

use crate::cli::control::Outcome;
use crate::runtime::commands::Failure;
use crate::shell::leftovers::Stopped;
use crate::supervisor::{ExitInfo, NoticeKind, UnitView};
use crate::WallClock;

/// Lines of output an exit event carries at most.
pub const TAIL_LINES: usize = 20;
/// Characters kept of each of those lines.
pub const TAIL_LINE_BYTES: usize = 512;
/// Bytes the whole tail may take as JSON, so that an event stays a few KiB.
pub const TAIL_BYTES: usize = 4096;
/// Bytes the lines of a `logs` reply may take as JSON.
pub const LOGS_REPLY_BYTES: usize = 64 * 1024;

pub fn exit_record(info: &ExitInfo, clock: &WallClock) -> ExitRecord {
    ExitRecord {
        status: info.status.clone(),
        at: clock.at(info.at),
        runtime_ms: info.runtime.as_millis() as u64,
        restarts: info.restarts,
        requested: info.requested,
        next_start: info.next_start.map(|t| clock.at(t)),
    }
}

pub fn status_of(view: &UnitView, clock: &WallClock) -> ProcessStatus {
    ProcessStatus {
        name: view.name.clone(),
        state: view.state,
        pid: view.pid,
        since: clock.at(view.since),
        restarts: view.restarts,
        crash_loop: view.crash_loop,
        manually_stopped: view.manually_stopped,
        last_exit: view.last_exit.as_ref().map(|e| exit_record(e, clock)),
        spawn_error: view.spawn_error.clone(),
        next_start: view.next_start.map(|t| clock.at(t)),
        health: None,
    }
}

/// The `exited` event for a program an earlier run of the agent left running and this run
/// stopped: asked for, with the last signal it was sent (the agent is not its parent, so its
/// exit status cannot be known).
pub fn leftover_exit(stopped: &Stopped) -> EventKind {
    EventKind::Exited {
        pid: stopped.pid,
        status: ExitStatus::Signal {
            signal: stopped.signal.as_str().to_owned(),
            core_dumped: false,
        },
        runtime_ms: stopped.runtime.as_millis() as u64,
        restarts: 0,
        requested: true,
        next_start: None,
        log_tail: Vec::new(),
        log_truncated: false,
    }
}

/// The event for a notice; `tail` supplies the last lines of output for an exit.
pub fn event_kind(
    notice: &NoticeKind,
    clock: &WallClock,
    tail: impl FnOnce() -> Vec<LogLine>,
) -> EventKind {
    match notice {
        NoticeKind::Started { pid, restarts } => EventKind::Started {
            pid: *pid,
            restarts: *restarts,
        },
        NoticeKind::Exited(info) => {
            let (log_tail, log_truncated) = bounded_tail(tail());
            EventKind::Exited {
                pid: info.pid,
                status: info.status.clone(),
                runtime_ms: info.runtime.as_millis() as u64,
                restarts: info.restarts,
                requested: info.requested,
                next_start: info.next_start.map(|t| clock.at(t)),
                log_tail,
                log_truncated,
            }
        }
        NoticeKind::SpawnFailed { error, next_start } => EventKind::SpawnFailed {
            error: error.clone(),
            next_start: next_start.map(|t| clock.at(t)),
        },
        NoticeKind::CrashLoop { exits, window } => EventKind::CrashLoop {
            exits: *exits,
            window_secs: window.as_secs(),
        },
        NoticeKind::Recovered => EventKind::Recovered,
        NoticeKind::Unhealthy { reason } => EventKind::Unhealthy {
            reason: reason.clone(),
        },
        NoticeKind::Stopped => EventKind::Stopped,
        NoticeKind::Failed { restarts } => EventKind::Failed {
            restarts: *restarts,
        },
    }
}

/// The last [`TAIL_LINES`] lines, each cut to [`TAIL_LINE_BYTES`], the oldest dropped until the
/// whole fits [`TAIL_BYTES`]; and whether anything was cut.
pub fn bounded_tail(mut lines: Vec<LogLine>) -> (Vec<LogLine>, bool) {
    let mut truncated = false;
    if lines.len() > TAIL_LINES {
        lines.drain(..lines.len() - TAIL_LINES);
        truncated = true;
    }
    for line in &mut lines {
        if line.text.len() > TAIL_LINE_BYTES {
            let mut end = TAIL_LINE_BYTES;
            while !line.text.is_char_boundary(end) {
                end -= 1;
            }
            line.text.truncate(end);
            truncated = true;
        }
    }
    let (kept, cut) = newest_within(lines, TAIL_BYTES);
    (kept, truncated || cut)
}

/// What a line costs in a message: its JSON, where escaping can make text six times longer.
fn json_size(line: &LogLine) -> usize {
    serde_json::to_vec(line).map_or(usize::MAX, |v| v.len() + 1)
}

/// The newest lines whose JSON fits `budget` bytes, oldest first; and whether any was left out.
pub fn newest_within(lines: Vec<LogLine>, budget: usize) -> (Vec<LogLine>, bool) {
    let mut used = 0;
    let mut start = lines.len();
    while start > 0 && used + json_size(&lines[start - 1]) <= budget {
        used += json_size(&lines[start - 1]);
        start -= 1;
    }
    let cut = start > 0;
    (lines.into_iter().skip(start).collect(), cut)
}

/// The final reply to a remote start, stop or restart.
pub fn outcome_reply(
    cmd_id: &str,
    agent: &str,
    process: &str,
    result: &Result<Outcome, Failure>,
) -> CommandReply {
    match result {
        Ok(outcome) => {
            let mut reply = CommandReply::new(cmd_id, agent, ReplyStatus::Succeeded);
            reply.message = Some(crate::cli::display::outcome(process, outcome));
            match outcome {
                Outcome::Started { pid } | Outcome::AlreadyRunning { pid } => {
                    reply.new_pid = Some(*pid);
                }
                Outcome::Restarted { old_pid, new_pid } => {
                    reply.old_pid = *old_pid;
                    reply.new_pid = Some(*new_pid);
                }
                Outcome::Stopped | Outcome::AlreadyStopped => {}
            }
            reply
        }
        Err(failure) => {
            let mut reply = CommandReply::new(cmd_id, agent, ReplyStatus::Failed);
            reply.reason = Some(failure.reason);
            reply.message = Some(failure.message.clone());
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::status::Stream;
    use std::time::SystemTime;

    fn line(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn escaping_counts_against_the_budget() {
        let ansi = "\u{1b}[31m".repeat(1000);
        let (kept, cut) = newest_within(vec![line(&ansi)], 8 * 1024);
        assert!(
            kept.is_empty() && cut,
            "6 bytes of JSON per escape character: over budget"
        );
    }

    #[test]
    fn a_short_tail_is_kept_whole() {
        let (tail, cut) = bounded_tail(vec![line("a"), line("b")]);
        assert_eq!(tail.len(), 2);
        assert!(!cut);
    }

    #[test]
    fn a_tail_is_bounded_in_lines_line_length_and_bytes() {
        let lines: Vec<LogLine> = (0..100).map(|i| line(&format!("line {i}"))).collect();
        let (tail, cut) = bounded_tail(lines);
        assert!(cut);
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().unwrap().text, "line 99");

        let long = "é".repeat(1000);
        let (tail, cut) = bounded_tail(vec![line(&long)]);
        assert!(cut);
        assert!(tail[0].text.len() <= TAIL_LINE_BYTES && tail[0].text.len() >= TAIL_LINE_BYTES - 1);

        let wide: Vec<LogLine> = (0..20).map(|_| line(&"x".repeat(500))).collect();
        let (tail, _) = bounded_tail(wide);
        let bytes: usize = tail.iter().map(json_size).sum();
        assert!(bytes <= TAIL_BYTES);
        assert_eq!(tail.len(), 7);
    }

    #[test]
    fn logs_keep_the_newest_that_fit() {
        let lines = vec![line("old"), line("mid"), line("new")];
        let two = 2 * json_size(&lines[0]);
        let (kept, cut) = newest_within(lines, two);
        assert_eq!(
            kept.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["mid", "new"]
        );
        assert!(cut);
    }
}
