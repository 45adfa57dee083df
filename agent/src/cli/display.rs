//! How `respawn-agent status`, `logs` and `reload` print: pure functions of the reply and the
//! current time.

use std::fmt::Write as _;
use std::time::SystemTime;

use respawn_common::messages::{ConfigChanges, Tense};
use respawn_common::status::{megabytes, HealthStatus, ProcessState, ProcessStatus};
use respawn_common::text::Printable;
use respawn_common::time::{elapsed, next_start, short};

use crate::logs::LogLine;

/// A table with one row per process.
pub fn status_table(
    agent: &str,
    containment: Option<&str>,
    processes: &[ProcessStatus],
    now: SystemTime,
) -> String {
    // CPU and memory only when something was measured, health only when something is checked.
    let usage = processes.iter().any(|p| p.usage.is_some());
    let checked = processes
        .iter()
        .any(|p| p.health.is_some() || awaits_readiness(p));
    let header = [
        "NAME",
        "STATE",
        "PID",
        "UPTIME",
        "CPU",
        "MEM",
        "RESTARTS",
        "HEALTH",
        "LAST EXIT",
    ];
    let shown = [true, true, true, true, usage, usage, true, checked, true];
    let rows: Vec<[String; 9]> = processes
        .iter()
        .map(|p| {
            let state = p.state_label();
            // A stopping process's `since` is when the stop began: no uptime.
            let uptime = match (p.pid, p.state) {
                (_, ProcessState::Stopping) | (None, _) => "-".into(),
                (Some(_), _) => short(elapsed(p.since, now)),
            };
            let (cpu, memory) = usage_cells(p);
            [
                p.name_label(),
                state,
                p.pid.map_or_else(|| "-".into(), |pid| pid.to_string()),
                uptime,
                cpu,
                memory,
                p.restarts.to_string(),
                health(p),
                last_exit(p, now),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let count = match processes.len() {
        1 => "1 process".to_owned(),
        n => format!("{n} processes"),
    };
    let mut out = match containment {
        Some(containment) => format!("agent {agent}: {count}, containment: {containment}\n"),
        None => format!("agent {agent}: {count}\n"),
    };
    let mut line = |cells: Vec<&str>| {
        let cells: Vec<(&str, usize)> = cells
            .into_iter()
            .zip(widths)
            .enumerate()
            .filter(|(i, _)| shown[*i])
            .map(|(_, cell)| cell)
            .collect();
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `12.5%` and `48.2 MB` while it runs and was measured; `-` otherwise.
pub fn usage_cells(p: &ProcessStatus) -> (String, String) {
    match (&p.usage, p.pid) {
        (Some(usage), Some(_)) => (
            usage
                .cpu_percent
                .map_or_else(|| "-".into(), |percent| format!("{percent:.1}%")),
            megabytes(usage.memory_bytes),
        ),
        _ => ("-".into(), "-".into()),
    }
}

/// Running but still `starting`: it waits for its READY=1 or its check's first pass.
fn awaits_readiness(p: &ProcessStatus) -> bool {
    p.state == ProcessState::Starting && p.pid.is_some()
}

/// `healthy`, `failing (2): connection refused`, with the process's own word if it said one.
fn health(p: &ProcessStatus) -> String {
    let Some(health) = p.health.as_ref().filter(|_| p.pid.is_some()) else {
        return match awaits_readiness(p) {
            true => "waiting to be ready".into(),
            false => "-".into(),
        };
    };
    let mut text = match (health.status, &health.last_error) {
        (HealthStatus::Failing, Some(error)) => format!("failing ({}): {error}", health.failures),
        // Started, and its check has not passed yet: why not, while failures do not count.
        (HealthStatus::Unknown, error) if awaits_readiness(p) && health.message.is_none() => {
            match error {
                Some(error) => format!("waiting to be ready (last check: {error})"),
                None => "waiting to be ready".into(),
            }
        }
        // Nothing probes it (a notify speaker without a check): only what it says counts.
        (HealthStatus::Unknown, _) if health.message.is_some() => String::new(),
        (status, _) => status.as_str().to_owned(),
    };
    if let Some(message) = &health.message {
        let gap = if text.is_empty() { "" } else { " " };
        let _ = write!(text, "{gap}“{message}”");
    }
    // What the process says of itself goes to a terminal: nothing in it may act on that.
    Printable(text).to_string()
}

fn last_exit(p: &ProcessStatus, now: SystemTime) -> String {
    let mut text = match &p.last_exit {
        Some(exit) => {
            // Why the agent stopped an unhealthy one, as respawnctl says it: "unhealthy"
            // alone sends the reader to the log.
            let why = match (&exit.reason, exit.scheduled, exit.killed_at_stop_timeout) {
                (Some(reason), _, true) => format!(
                    " (unhealthy: {}; killed at stop_timeout)",
                    Printable(reason)
                ),
                (Some(reason), _, false) => format!(" (unhealthy: {})", Printable(reason)),
                (None, _, true) => " (killed at stop_timeout)".to_owned(),
                (None, true, false) => " (restart_every)".to_owned(),
                (None, false, false) => String::new(),
            };
            format!(
                "{}{why} {} ago",
                exit.describe(),
                short(elapsed(exit.at, now))
            )
        }
        None => "-".into(),
    };
    if let Some(error) = &p.spawn_error {
        text = format!("could not start: {error}");
    }
    // Its `since` is when the stop began: how long it takes is the news.
    if p.state == ProcessState::Stopping {
        let stopping = format!("stopping for {}", short(elapsed(p.since, now)));
        text = match text.as_str() {
            "-" => stopping,
            _ => format!("{text}; {stopping}"),
        };
    }
    if let Some(next) = p.next_start {
        let _ = write!(text, "; {}", next_start(next, now));
    }
    text
}

/// One line per log line: time, stream, text.
pub fn log_lines(lines: &[LogLine], dropped: u64) -> String {
    let mut out = String::new();
    // Older than the lines shown: with none shown, there is nothing they are older than.
    if dropped > 0 && !lines.is_empty() {
        let _ = writeln!(out, "({dropped} older lines were dropped from the buffer)");
    }
    // A program's output is anyone's words (a request path it logs): escaped, as respawnctl
    // shows it, so that it cannot move the cursor or retitle the terminal.
    for line in lines {
        let _ = writeln!(out, "{}", Printable(line));
    }
    out
}

/// What a reload of the file at `path` starts, restarts and stops, one process a line.
pub fn reloaded(path: &str, changes: &ConfigChanges, operators: Option<&str>) -> String {
    let mut out = format!("reloaded {}\n", Printable(path));
    for (kind, names, note) in changes.groups() {
        for name in names {
            let verb = kind.verb(Tense::Doing);
            let _ = writeln!(out, "  {verb:<13} {}{note}", Printable(name));
        }
    }
    match changes.unchanged.as_slice() {
        [] if changes.touched().next().is_none() => out.push_str("  no process changes\n"),
        [] => {}
        unchanged => {
            let names: Vec<String> = unchanged.iter().map(|n| Printable(n).to_string()).collect();
            let _ = writeln!(out, "  {:<13} {}", "unchanged", names.join(", "));
        }
    }
    if let Some(operators) = operators {
        let _ = writeln!(out, "  {:<13} {}", "commands", Printable(operators));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::status::{ExitRecord, ExitStatus, Health};
    use std::time::Duration;

    #[test]
    fn output_is_shown_as_text_not_as_terminal_commands() {
        let line = LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: crate::logs::Stream::Stdout,
            text: "GET /\u{1b}]0;pwned\u{7} 200".into(),
        };
        let shown = log_lines(&[line], 0);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert!(shown.contains("GET /"), "{shown:?}");
        // What was dropped is said before lines, older than they are; before none, never.
        let note = "(7 older lines were dropped from the buffer)\n";
        assert!(log_lines(&[line_of("a")], 7).starts_with(note));
        assert_eq!(log_lines(&[], 7), "");
    }

    fn line_of(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: crate::logs::Stream::Stdout,
            text: text.into(),
        }
    }

    use crate::runtime::report::bare_status;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn status_table_is_aligned_and_says_why_things_are_down() {
        let now = at(1000);
        let processes = vec![
            ProcessStatus {
                name: "doorbot".into(),
                state: ProcessState::Running,
                pid: Some(812),
                since: at(808),
                restarts: 2,
                crash_loop: false,
                crash_loop_since: None,
                manually_stopped: false,
                last_exit: Some(ExitRecord {
                    status: ExitStatus::Code { code: 1 },
                    at: at(800),
                    runtime_ms: 3000,
                    restarts: 1,
                    requested: false,
                    next_start: Some(at(800)),
                    reason: None,
                    oom_killed: false,
                    memory_max: None,
                    scheduled: false,
                    killed_at_stop_timeout: false,
                }),
                spawn_error: None,
                next_start: None,
                health: None,
                usage: None,
                remote: false,
            },
            ProcessStatus {
                name: "scraper".into(),
                state: ProcessState::SpawnFailed,
                pid: None,
                since: at(990),
                restarts: 4,
                crash_loop: false,
                crash_loop_since: None,
                manually_stopped: false,
                last_exit: None,
                spawn_error: Some(
                    "cannot run \"scrape\": No such file or directory (os error 2)".into(),
                ),
                next_start: Some(at(1008)),
                health: None,
                usage: None,
                remote: false,
            },
            ProcessStatus {
                name: "cron".into(),
                state: ProcessState::Stopped,
                pid: None,
                since: at(0),
                restarts: 0,
                crash_loop: false,
                crash_loop_since: None,
                manually_stopped: true,
                last_exit: Some(ExitRecord {
                    status: ExitStatus::Signal {
                        signal: "SIGTERM".into(),
                        core_dumped: false,
                    },
                    at: at(0),
                    runtime_ms: 1,
                    restarts: 0,
                    requested: true,
                    next_start: None,
                    reason: None,
                    oom_killed: false,
                    memory_max: None,
                    scheduled: false,
                    killed_at_stop_timeout: false,
                }),
                spawn_error: None,
                next_start: None,
                health: None,
                usage: None,
                remote: false,
            },
        ];
        let table = status_table("door-pi", None, &processes, now);
        assert_eq!(
            table,
            "agent door-pi: 3 processes
NAME     STATE              PID  UPTIME  RESTARTS  LAST EXIT
doorbot  running            812  3m12s   2         exit 1 3m20s ago
scraper  spawn_failed       -    -       4         could not start: cannot run \"scrape\": No such file or directory (os error 2); next start in 8s
cron     stopped (by hand)  -    -       0         SIGTERM 16m40s ago
"
        );
        // An unhealthy one stopped by the agent says why, as respawnctl does.
        let mut unhealthy = processes[0].clone();
        if let Some(exit) = &mut unhealthy.last_exit {
            exit.reason = Some("memory: 424 MB in use, over max_memory (100 MB)".into());
        }
        assert_eq!(
            last_exit(&unhealthy, now),
            "exit 1 (unhealthy: memory: 424 MB in use, over max_memory (100 MB)) 3m20s ago"
        );
    }

    #[test]
    fn usage_shows_while_measured_and_an_oom_kill_in_words() {
        let now = at(1000);
        let mut running = ProcessStatus {
            name: "doorbot".into(),
            state: ProcessState::Running,
            pid: Some(812),
            since: at(900),
            restarts: 1,
            crash_loop: false,
            crash_loop_since: None,
            manually_stopped: false,
            last_exit: Some(ExitRecord {
                status: ExitStatus::Signal {
                    signal: "SIGKILL".into(),
                    core_dumped: false,
                },
                at: at(890),
                runtime_ms: 1,
                restarts: 0,
                requested: false,
                next_start: None,
                reason: None,
                oom_killed: true,
                memory_max: Some(200_000_000),
                scheduled: false,
                killed_at_stop_timeout: false,
            }),
            spawn_error: None,
            next_start: None,
            health: None,
            usage: Some(respawn_common::status::Usage {
                cpu_seconds: 3.2,
                cpu_percent: Some(12.5),
                memory_bytes: 48_200_000,
            }),
            remote: false,
        };
        let table = status_table("door-pi", Some("cgroup"), &[running.clone()], now);
        assert_eq!(
            table,
            "agent door-pi: 1 process, containment: cgroup
NAME     STATE    PID  UPTIME  CPU    MEM    RESTARTS  LAST EXIT
doorbot  running  812  1m40s   12.5%  48 MB  1         killed by the kernel: out of memory (limit 200 MB) 1m50s ago
"
        );
        running.usage = None;
        let table = status_table("door-pi", Some("process-group"), &[running], now);
        assert!(table.starts_with("agent door-pi: 1 process, containment: process-group\nNAME     STATE    PID  UPTIME  RESTARTS  LAST EXIT\n"), "{table}");
    }

    #[test]
    fn a_start_whose_time_has_come_is_due() {
        let waiting = |next_start| ProcessStatus {
            since: at(990),
            restarts: 1,
            next_start: Some(next_start),
            ..bare_status("doorbot", ProcessState::Backoff)
        };
        let table = |next| status_table("door-pi", None, &[waiting(next)], at(1000));
        assert!(
            table(at(1004)).ends_with("-; next start in 4s\n"),
            "{}",
            table(at(1004))
        );
        assert!(
            table(at(1000)).ends_with("-; next start due\n"),
            "{}",
            table(at(1000))
        );
        assert!(
            table(at(999)).ends_with("-; next start due\n"),
            "{}",
            table(at(999))
        );
        // Under a second, the wait is said to the tenth: "due" read as overdue.
        let in_half_a_second = at(1000) + Duration::from_millis(500);
        assert!(table(in_half_a_second).ends_with("-; next start in 500ms\n"));
    }

    #[test]
    fn a_process_waiting_for_its_readiness_says_so() {
        let starting = ProcessStatus {
            pid: Some(900),
            since: at(990),
            ..bare_status("notifier", ProcessState::Starting)
        };
        let table = status_table("door-pi", None, &[starting], at(1000));
        assert!(table.contains(" waiting to be ready "), "{table}");
    }

    #[test]
    fn a_stopping_process_shows_how_long_its_stop_takes_not_an_uptime() {
        let now = at(1000);
        let stopping = ProcessStatus {
            pid: Some(812),
            since: at(995),
            manually_stopped: true,
            ..bare_status("doorbot", ProcessState::Stopping)
        };
        let table = status_table("door-pi", None, &[stopping], now);
        assert!(
            table
                .ends_with("doorbot  stopping (by hand)  812  -       0         stopping for 5s\n"),
            "{table}"
        );
    }

    #[test]
    fn health_shows_when_something_is_checked() {
        let now = at(1000);
        let checked = |name: &str, health| ProcessStatus {
            pid: Some(7),
            since: at(990),
            health,
            ..bare_status(name, ProcessState::Running)
        };
        let failing = Health {
            status: HealthStatus::Failing,
            failures: 2,
            last_error: Some("connection refused".into()),
            message: None,
        };
        let healthy = Health {
            status: HealthStatus::Healthy,
            failures: 0,
            last_error: None,
            message: Some("42 doors open".into()),
        };
        let processes = [
            checked("web", Some(failing)),
            checked("door", Some(healthy)),
            checked("cron", None),
        ];
        assert_eq!(
            status_table("pi", None, &processes, now),
            "agent pi: 3 processes
NAME  STATE    PID  UPTIME  RESTARTS  HEALTH                           LAST EXIT
web   running  7    10s     0         failing (2): connection refused  -
door  running  7    10s     0         healthy “42 doors open”          -
cron  running  7    10s     0         -                                -
"
        );
        let sly = Health {
            status: HealthStatus::Healthy,
            failures: 0,
            last_error: None,
            message: Some("\u{1b}[2Jall fine".into()),
        };
        let table = status_table("pi", None, &[checked("web", Some(sly))], now);
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(table.contains("healthy “\\u{1b}[2Jall fine”"), "{table}");
        // A notify speaker without a check: what it says, not "unknown".
        let speaker = Health {
            status: HealthStatus::Unknown,
            failures: 0,
            last_error: None,
            message: Some("serving doors".into()),
        };
        let table = status_table("pi", None, &[checked("door", Some(speaker))], now);
        assert!(table.contains("  “serving doors”"), "{table}");
        assert!(!table.contains("unknown"), "{table}");
        // Started, its check not yet passed: waiting, as for a notify speaker.
        let unprobed = Health {
            status: HealthStatus::Unknown,
            failures: 0,
            last_error: None,
            message: None,
        };
        let mut starting = checked("web", Some(unprobed));
        starting.state = ProcessState::Starting;
        let table = status_table("pi", None, &[starting.clone()], now);
        assert!(table.contains("waiting to be ready"), "{table}");
        // Its first checks failed, within its grace: why it is not ready yet.
        let not_yet = Health {
            status: HealthStatus::Unknown,
            failures: 0,
            last_error: Some("HTTP 404".into()),
            message: None,
        };
        starting.health = Some(not_yet);
        let table = status_table("pi", None, &[starting], now);
        assert!(
            table.contains("waiting to be ready (last check: HTTP 404)"),
            "{table}"
        );
    }

    #[test]
    fn a_reload_reads_as_what_it_does_now() {
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        let changes = ConfigChanges {
            added: names(&["web"]),
            added_stopped: names(&["backup"]),
            changed: names(&["api"]),
            changed_started: names(&["job"]),
            changed_stopped: names(&["door"]),
            changed_left_off: names(&["cam"]),
            updated: names(&["lights"]),
            removed: names(&["old"]),
            unchanged: names(&["db", "mqtt\u{1b}[2J"]),
        };
        assert_eq!(
            reloaded("/etc/respawn/agent.toml", &changes, Some("added carol")),
            "reloaded /etc/respawn/agent.toml
  starting      web
  added         backup (autostart off: not started)
  restarting    api
  starting      job (changed)
  changed       door (stopped by hand: stays stopped until started)
  changed       cam (autostart off: not started)
  updated       lights (no restart)
  removing      old
  unchanged     db, mqtt\\u{1b}[2J
  commands      added carol
"
        );
        assert_eq!(
            reloaded("agent.toml", &ConfigChanges::default(), None),
            "reloaded agent.toml\n  no process changes\n"
        );
    }
}
