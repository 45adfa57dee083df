//! How respawnctl prints: the fleet table and document (`fleet`), event one-liners, command
//! outcomes, log lines and configuration diffs.
//! Pure functions of the data, the current time and whether to colour.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use respawn_common::config_file::Problem;
use respawn_common::messages::{
    ChangeKind, CommandName, ConfigReport, Event, EventKind, ReplyStatus, Tense,
};
use respawn_common::status::{describe_exit, LogLine};
pub use respawn_common::time::short;
use respawn_common::time::ClockOffset;

use crate::request::{Job, Outcome};

mod fleet;
pub use fleet::{agent_json, status_json, status_table, AgentDocument, StatusDocument};

pub use respawn_common::text::Printable;

/// Terminal colours, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

#[derive(Clone, Copy)]
enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
    Dim,
    Bold,
}

impl Style {
    /// `text` in `tone`, escaped as [`Printable`].
    fn paint(self, tone: Tone, text: &str) -> String {
        let mut painted = String::new();
        self.paint_onto(&mut painted, tone, &Printable(text).to_string());
        painted
    }

    /// As [`Style::paint`], onto the end of `out`, of text that is printable already (a
    /// table's cells are escaped once, as they are written): a table of 100,000 rows is not
    /// made of 600,000 strings of its own, nor read twice.
    fn paint_onto(self, out: &mut String, tone: Tone, text: &str) {
        let code = match tone {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Warn => Some("33"),
            Tone::Bad => Some("31"),
            Tone::Dim => Some("2"),
            Tone::Bold => Some("1"),
        };
        match code {
            Some(code) if self.color && !text.is_empty() => {
                let _ = write!(out, "\x1b[{code}m{text}\x1b[0m");
            }
            _ => out.push_str(text),
        }
    }
}

/// One event as a line (plus, for a crash, its last lines of output indented below).
pub fn event_line(event: &Event, clock: ClockOffset, style: Style) -> String {
    // By our clock, from its agent's.
    let when = humantime::format_rfc3339_seconds(clock.ours(event.at)).to_string();
    let who = match &event.process {
        Some(p) => format!("{}/{p}", event.agent),
        None => event.agent.clone(),
    };
    let (what, tone, detail) = describe_event(&event.kind, event.at);
    let mut line = format!(
        "{} {} {} {}",
        style.paint(Tone::Dim, &when),
        style.paint(Tone::Bold, &who),
        style.paint(tone, what),
        Printable(detail)
    );
    if event.dropped_before > 0 {
        let n = event.dropped_before;
        let events = if n == 1 { "event" } else { "events" };
        let _ = write!(
            line,
            " ({n} older {events} dropped by the agent since its last one)"
        );
    }
    let mut out = line.trim_end().to_owned();
    out.push('\n');
    if let EventKind::Exited {
        log_tail,
        requested: false,
        ..
    } = &event.kind
    {
        let skip = log_tail.len().saturating_sub(3);
        for l in &log_tail[skip..] {
            let _ = writeln!(
                out,
                "    {} {}",
                style.paint(Tone::Dim, "│"),
                Printable(&l.text)
            );
        }
    }
    out
}

/// An event as the dashboard gets it: as published, with the words `respawnctl events` says
/// it in (`what`, `detail`), so that a crash reads the same in both.
#[derive(serde::Serialize)]
pub struct ShownEvent<'a> {
    #[serde(flatten)]
    event: &'a Event,
    what: &'static str,
    detail: String,
    /// How far its agent's clock is ahead of the reader's, in milliseconds, where it is off:
    /// its `at` is by that clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_ms: Option<i64>,
}

/// What an event says, in the words of `respawnctl events`, without its time and its process:
/// `crashed exit 1 after 2s, restarting in 4s`.
pub fn event_words(event: &Event) -> String {
    let (what, _, detail) = describe_event(&event.kind, event.at);
    match detail.is_empty() {
        true => what.to_owned(),
        false => format!("{what} {}", Printable(&detail)),
    }
}

impl<'a> ShownEvent<'a> {
    /// `event`, from an agent whose clock is `clock` (where known).
    pub fn new(event: &'a Event, clock: Option<ClockOffset>) -> Self {
        let (what, _, detail) = describe_event(&event.kind, event.at);
        Self {
            event,
            what,
            detail,
            clock_offset_ms: clock.map(ClockOffset::ahead_ms),
        }
    }
}

/// What an event says, as of `at`, when it happened.
fn describe_event(kind: &EventKind, at: SystemTime) -> (&'static str, Tone, String) {
    match kind {
        EventKind::Started { pid, restarts } => (
            "started",
            Tone::Good,
            match restarts {
                0 => format!("pid {pid}"),
                n => format!("pid {pid} (restart {n})"),
            },
        ),
        EventKind::Exited {
            status,
            runtime_ms,
            requested: true,
            shutdown,
            leftover,
            scheduled,
            killed_at_stop_timeout,
            oom_killed,
            memory_max,
            reason,
            ..
        } => (
            "exited",
            match (reason, killed_at_stop_timeout) {
                (Some(_), _) | (None, true) => Tone::Warn,
                (None, false) => Tone::Plain,
            },
            format!(
                "{} after {} ({}{})",
                describe_exit(status, *oom_killed, *memory_max),
                short(Duration::from_millis(*runtime_ms)),
                match (reason, shutdown, leftover, scheduled) {
                    (Some(reason), ..) => format!("stopped by the agent, unhealthy: {reason}"),
                    (None, true, ..) => "the agent stops".to_owned(),
                    (None, false, true, _) => {
                        "left running by an earlier run of the agent, stopped by this one"
                            .to_owned()
                    }
                    (None, false, false, true) => "restart_every is up".to_owned(),
                    (None, false, false, false) => "as asked".to_owned(),
                },
                match killed_at_stop_timeout {
                    true => "; killed: it outlived its stop_timeout",
                    false => "",
                }
            ),
        ),
        EventKind::Exited {
            status,
            runtime_ms,
            restarts,
            next_start,
            oom_killed,
            memory_max,
            ..
        } => {
            let mut text = format!(
                "{} after {}",
                describe_exit(status, *oom_killed, *memory_max),
                short(Duration::from_millis(*runtime_ms))
            );
            // A restart after a backoff is said with its wait: the program is down meanwhile.
            let wait = next_start.map(|next| next.duration_since(at).unwrap_or_default());
            match wait.map(respawn_common::time::wait) {
                Some(Some(wait)) => {
                    let _ = write!(text, ", restarting in {wait}");
                }
                Some(None) => text.push_str(", restarting"),
                None => text.push_str(", not restarting"),
            }
            match restarts {
                0 => {}
                1 => text.push_str(" (1 restart so far)"),
                n => {
                    let _ = write!(text, " ({n} restarts so far)");
                }
            }
            // An exit by itself with 0 is a program that finished, not a crash.
            match status.is_success() {
                true => ("finished", Tone::Plain, text),
                false => ("crashed", Tone::Bad, text),
            }
        }
        EventKind::SpawnFailed { error, .. } => ("could not start", Tone::Bad, error.clone()),
        EventKind::CrashLoop { exits, window_secs } => (
            "crash loop",
            Tone::Bad,
            format!(
                "{exits} exits within {}",
                short(Duration::from_secs(*window_secs))
            ),
        ),
        EventKind::Recovered => ("recovered", Tone::Good, String::new()),
        EventKind::Unhealthy { reason } => {
            ("unhealthy", Tone::Bad, format!("{reason}; restarting"))
        }
        EventKind::Stopped { removed: false } => ("stopped", Tone::Dim, String::new()),
        EventKind::Stopped { removed: true } => (
            "stopped",
            Tone::Dim,
            "as it left the configuration".to_owned(),
        ),
        EventKind::Failed { restarts } => (
            "gave up",
            Tone::Bad,
            format!("after {restarts} restarts without a stable run"),
        ),
        EventKind::Command {
            command,
            requester,
            signer,
            outcome,
            reason,
            message,
            sha256,
            dry_run,
            unaudited,
            ..
        } => {
            let by = match signer {
                Some(signer) => format!("by {signer} "),
                None => String::new(),
            };
            let dry = if *dry_run { " (dry run)" } else { "" };
            let outcome = status_word(*outcome);
            let mut text = format!("{command}{dry} {by}from {requester}: {outcome}");
            if let Some(reason) = reason {
                let _ = write!(text, " ({})", reason.as_str());
            }
            if let Some(message) = message {
                let _ = write!(text, " — {message}");
            }
            if let Some(sha256) = sha256 {
                let _ = write!(
                    text,
                    " (remote.toml {})",
                    sha256.get(..12).unwrap_or(sha256)
                );
            }
            if !unaudited.is_empty() {
                let counts: Vec<String> = unaudited
                    .iter()
                    .map(|(reason, n)| format!("{reason} {n}"))
                    .collect();
                let _ = write!(text, " (not audited since the last: {})", counts.join(", "));
            }
            ("command", Tone::Plain, text)
        }
        EventKind::Vanished { pid } => (
            "vanished",
            Tone::Warn,
            format!("pid {pid}: it ended while no agent watched it; how is not known"),
        ),
        EventKind::Unknown => ("event", Tone::Dim, "(of a newer kind)".into()),
    }
}

fn status_word(status: ReplyStatus) -> &'static str {
    match status {
        ReplyStatus::Accepted => "accepted",
        ReplyStatus::Succeeded => "succeeded",
        ReplyStatus::Failed => "failed",
        ReplyStatus::Rejected => "rejected",
        ReplyStatus::Unknown => "unknown",
    }
}

/// A unified diff from the agent's remote configuration to a new one; empty when they are
/// the same. The new text's lines are numbered from `new_offset + 1`: those of a file under
/// the header `config get` writes, which the agent's problems are placed on too.
pub fn config_diff(
    (old, old_label): (&str, &str),
    (new, new_label, new_offset): (&str, &str, usize),
    style: Style,
) -> String {
    if old == new {
        return String::new();
    }
    let text = similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let tone = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => Tone::Good,
            Some(b'-') if !line.starts_with("---") => Tone::Bad,
            Some(b'@') => Tone::Dim,
            _ => Tone::Plain,
        };
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, "\n\\ No newline at end of file\n"),
        };
        let shifted;
        let body = match line.starts_with("@@ ") && new_offset > 0 {
            true => {
                shifted = shift_new_side(body, new_offset);
                shifted.as_str()
            }
            false => body,
        };
        out.push_str(&style.paint(tone, body));
        out.push_str(end);
    }
    out
}

/// A hunk header (`@@ -3,4 +3,5 @@`) with the new side's first line moved by `offset`.
fn shift_new_side(header: &str, offset: usize) -> String {
    let parts = header.split(' ').map(|part| {
        let Some(range) = part.strip_prefix('+') else {
            return part.to_owned();
        };
        let digits = range
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(range.len());
        match range[..digits].parse::<usize>() {
            Ok(first) => format!("+{}{}", first + offset, &range[digits..]),
            Err(_) => part.to_owned(),
        }
    });
    parts.collect::<Vec<_>>().join(" ")
}

/// What an apply or rollback did (`done`) or would do, process by process.
pub fn config_changes(report: &ConfigReport, done: bool, style: Style) -> String {
    let changes = report.changes.clone().unwrap_or_default();
    let tense = if done { Tense::Done } else { Tense::Would };
    let mut out = String::new();
    for (kind, names, note) in changes.groups() {
        let tone = match kind {
            ChangeKind::Started | ChangeKind::Added => Tone::Good,
            ChangeKind::Restarted => Tone::Warn,
            ChangeKind::Changed | ChangeKind::Updated => Tone::Plain,
            ChangeKind::Removed => Tone::Bad,
        };
        for name in names {
            let line = match report.not_started.get(name) {
                Some(why) => {
                    let verb = style.paint(Tone::Bad, &format!("{:<13}", "not started"));
                    let why = Printable(why);
                    format!("  {verb} {}: {why}", Printable(name))
                }
                None => {
                    let verb = style.paint(tone, &format!("{:<13}", kind.verb(tense)));
                    format!("  {verb} {}{note}", Printable(name))
                }
            };
            let _ = writeln!(out, "{line}");
        }
    }
    if !changes.unchanged.is_empty() {
        let line = format!("  {:<13} {}", "unchanged", changes.unchanged.join(", "));
        out.push_str(&style.paint(Tone::Dim, &line));
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("  no process changes\n");
    }
    out
}

/// Every problem of a configuration the agent refused, with its line.
pub fn config_problems(problems: &[Problem], file: &str) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            0 => format!("  {file}: {}\n", Printable(&p.message)),
            line => format!("  {file}:{line}: {}\n", Printable(&p.message)),
        })
        .collect()
}

/// One line per command: `restarted door-pi/doorbot pid 812 → 1301`.
pub fn outcome_line(
    command: CommandName,
    job: &Job,
    outcome: &Outcome,
    timeout: Duration,
    style: Style,
) -> String {
    let target = job.label();
    match outcome {
        Outcome::Succeeded(reply) => {
            let text = match (command, reply.old_pid, reply.new_pid) {
                (CommandName::Restart, Some(old), Some(new)) => {
                    format!("restarted {target} pid {old} → {new}")
                }
                (CommandName::Restart, None, Some(new)) => format!("restarted {target} pid {new}"),
                (CommandName::Start, _, Some(new)) => match reply.message.as_deref() {
                    Some(m) if m.contains("already running") => {
                        format!("{target} was already running (pid {new})")
                    }
                    _ => format!("started {target} pid {new}"),
                },
                (CommandName::Stop, _, _) => match reply.message.as_deref() {
                    Some(m) if m.contains("already stopped") => {
                        // A stop by hand all the same: it says what lasts.
                        format!("{target} was already stopped; it now stays stopped, also across agent restarts, until started")
                    }
                    _ => format!("stopped {target}"),
                },
                _ => format!("{} {target}: done", command.as_str()),
            };
            match &reply.warning {
                Some(warning) => style.paint(Tone::Warn, &format!("{text} (but {warning})")),
                None => style.paint(Tone::Good, &text),
            }
        }
        Outcome::Failed(reply) => style.paint(
            Tone::Bad,
            &format!(
                "failed {target}: {}",
                reply.message.as_deref().unwrap_or("no reason given")
            ),
        ),
        Outcome::Rejected(reply) => {
            let reason = reply.reason.map_or("rejected", |r| r.as_str());
            let message = reply.message.as_deref().unwrap_or_default();
            style.paint(
                Tone::Bad,
                &format!("rejected {target}: {reason}: {message}"),
            )
        }
        Outcome::TimedOut { accepted: true } => style.paint(
            Tone::Warn,
            &format!(
                "timed out {target}: accepted, but no result within {} (it may still be under way, as a stop can take the process's stop_timeout: see respawnctl status; --timeout waits longer)",
                short(timeout)
            ),
        ),
        Outcome::TimedOut { accepted: false } => style.paint(
            Tone::Warn,
            &format!("timed out {target}: no answer within {}", short(timeout)),
        ),
        Outcome::NotSent(why) => style.paint(Tone::Bad, &format!("not sent {target}: {why}")),
    }
}

/// What is said when a reply's oldest lines were left out.
pub const LEFT_OUT: &str = "older lines left out to keep the reply small";

/// One line per log line: time, stream, text; the time moved onto ours from its agent's
/// `clock`.
pub fn log_lines(lines: &[LogLine], truncated: bool, clock: ClockOffset) -> String {
    let mut out = String::new();
    if truncated {
        let _ = writeln!(out, "({LEFT_OUT})");
    }
    for line in lines {
        let _ = writeln!(out, "{}", Printable(by_our_clock(line, clock)));
    }
    out
}

/// `line`, dated by our clock from its agent's `clock`.
pub fn by_our_clock(line: &LogLine, clock: ClockOffset) -> LogLine {
    LogLine {
        at: clock.ours(line.at),
        ..line.clone()
    }
}

/// Said (to stderr) before the lines of an agent whose clock is off: their times are ours.
pub fn clock_note(agent: &str, clock: ClockOffset) -> Option<String> {
    let off = clock.describe()?;
    Some(format!(
        "({agent}'s {off}: its times are shown by this machine's clock)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use respawn_common::messages::{
        AgentState, CommandReply, Heartbeat, Presence, Reason, VERSION,
    };
    use respawn_common::status::{ExitRecord, ExitStatus, Stream};
    use respawn_common::status::{HealthStatus, ProcessState, ProcessStatus};
    use respawn_common::topics::Topics;
    use std::time::SystemTime;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    const PLAIN: Style = Style { color: false };

    fn fleet() -> Fleet {
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let state = |agent: &str, presence: Presence, processes: &[&str], since: u64| AgentState {
            v: VERSION,
            agent: agent.into(),
            state: presence,
            version: Some("0.1.0".into()),
            host: Some(agent.into()),
            processes: processes.iter().map(|s| s.to_string()).collect(),
            session: None,
            since: Some(at(since)),
            started: None,
            heartbeat_secs: Some(30),
            containment: None,
        };
        let status = |name: &str, state: ProcessState, pid: Option<u32>| ProcessStatus {
            name: name.into(),
            state,
            pid,
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
        };
        let mut apply = |topic: &str, value: serde_json::Value| {
            fleet.apply(&topics, topic, &serde_json::to_vec(&value).unwrap());
        };
        apply(
            "respawn/v1/door-pi/state",
            serde_json::to_value(state(
                "door-pi",
                Presence::Online,
                &["doorbot", "scraper"],
                700,
            ))
            .unwrap(),
        );
        let mut doorbot = status("doorbot", ProcessState::Running, Some(812));
        doorbot.health = Some(respawn_common::status::Health {
            status: HealthStatus::Failing,
            failures: 2,
            last_error: Some("HTTP 503".into()),
            message: Some("serving".into()),
        });
        let mut doorbot = serde_json::to_value(doorbot).unwrap();
        doorbot["agent"] = "door-pi".into();
        apply("respawn/v1/door-pi/proc/doorbot", doorbot);
        let mut scraper = status("scraper", ProcessState::Backoff, None);
        scraper.last_exit.as_mut().unwrap().status = ExitStatus::Signal {
            signal: "SIGSEGV".into(),
            core_dumped: false,
        };
        scraper.next_start = Some(at(1004));
        let mut scraper = serde_json::to_value(scraper).unwrap();
        scraper["agent"] = "door-pi".into();
        apply("respawn/v1/door-pi/proc/scraper", scraper);
        let heartbeat = Heartbeat {
            v: VERSION,
            agent: "door-pi".into(),
            at: at(990),
            interval_secs: 30,
            // Up 10 s before its connection (at 700): UPTIME counts from its start.
            uptime_secs: 300,
            running: 1,
            processes: 2,
            load1: Some(0.42),
            mem_total_kb: None,
            mem_available_kb: None,
            cpu_temp_c: Some(51.2),
        };
        apply(
            "respawn/v1/door-pi/heartbeat",
            serde_json::to_value(heartbeat).unwrap(),
        );
        apply(
            "respawn/v1/garage/state",
            serde_json::to_value(state("garage", Presence::Lost, &["opener"], 0)).unwrap(),
        );
        apply(
            "respawn/v1/shed/state",
            serde_json::to_value(state("shed", Presence::Online, &[], 900)).unwrap(),
        );
        fleet
    }

    /// The status table of [`fleet`] once `report`, a process's retained state, is in it,
    /// and the row of that process.
    fn table_with(report: serde_json::Value) -> (String, String) {
        let mut fleet = fleet();
        let topic = format!(
            "respawn/v1/{}/proc/{}",
            report["agent"].as_str().unwrap(),
            report["name"].as_str().unwrap()
        );
        fleet.apply(
            &Topics::default(),
            &topic,
            &serde_json::to_vec(&report).unwrap(),
        );
        let table = status_table(&fleet, at(1000), PLAIN);
        let name = report["name"].as_str().unwrap();
        let row = table.lines().find(|l| l.contains(name)).unwrap().to_owned();
        (table, row)
    }

    #[test]
    fn a_process_of_an_agent_out_of_reach_has_no_uptime_or_usage() {
        let (table, row) = table_with(serde_json::json!({
            "agent": "garage", "name": "opener", "state": "running", "pid": 4410,
            "since": "2026-01-01T00:00:00Z", "restarts": 0,
            "usage": {"cpu_seconds": 1.0, "cpu_percent": 0.5, "memory_bytes": 14_000_000},
        }));
        assert_eq!(
            row.split_whitespace().take(5).collect::<Vec<_>>(),
            ["opener", "running", "4410", "-", "0"],
            "{table}"
        );
        assert!(row.ends_with("  as its agent last said"), "{row}");
    }

    #[test]
    fn a_start_is_due_once_its_time_has_come_and_unknown_out_of_reach() {
        let details = |secs: u64| {
            let table = status_table(&fleet(), at(secs), PLAIN);
            let row = table.lines().find(|l| l.contains("scraper")).unwrap();
            row.split("; ").last().unwrap().to_owned()
        };
        assert_eq!(details(1000), "next start in 4s");
        assert_eq!(details(1004), "next start due");
        let table = status_table(&fleet(), at(1003) + Duration::from_millis(200), PLAIN);
        let row = table.lines().find(|l| l.contains("scraper")).unwrap();
        assert!(row.ends_with("; next start in 800ms"), "{row}");
        let (_, row) = table_with(serde_json::json!({
            "agent": "garage", "name": "opener", "state": "backoff",
            "since": "2027-01-15T08:13:20Z", "restarts": 1,
            "next_start": "2027-01-15T08:13:30Z",
        }));
        assert!(!row.contains("next start"), "{row}");
    }

    #[test]
    fn a_stopping_process_has_no_uptime() {
        let (table, row) = table_with(serde_json::json!({
            "agent": "door-pi", "name": "doorbot", "state": "stopping", "pid": 812,
            "since": "2027-01-15T08:16:35Z", "restarts": 2,
        }));
        assert_eq!(
            row.split_whitespace().take(5).collect::<Vec<_>>(),
            ["doorbot", "stopping", "812", "-", "2"],
            "{table}"
        );
        assert!(
            row.ends_with("  stopping for 5s"),
            "how long the stop takes: {row}"
        );
    }

    /// A process whose first checks fail within its grace says why it is not ready yet.
    #[test]
    fn a_starting_process_whose_first_checks_fail_says_why() {
        let (table, row) = table_with(serde_json::json!({
            "agent": "door-pi", "name": "doorbot", "state": "starting", "pid": 812,
            "since": "2027-01-15T08:16:35Z", "restarts": 0,
            "health": {"status": "unknown", "last_error": "HTTP 404"},
        }));
        assert!(
            row.ends_with("no health check passed yet: HTTP 404"),
            "{table}"
        );
    }

    /// A process waiting to start (for a removed one to stop, say) has no pid, and no uptime,
    /// as the agent's own status and the dashboard show it.
    #[test]
    fn a_starting_process_without_a_pid_has_no_uptime() {
        let (table, row) = table_with(serde_json::json!({
            "agent": "door-pi", "name": "doorbot", "state": "starting",
            "since": "2027-01-15T08:16:35Z", "restarts": 0,
        }));
        assert_eq!(
            row.split_whitespace().take(5).collect::<Vec<_>>(),
            ["doorbot", "starting", "-", "-", "0"],
            "{table}"
        );
    }

    #[test]
    fn the_status_table() {
        assert_eq!(
            status_table(&fleet(), at(1000), PLAIN),
            "\
AGENT/PROCESS  STATE    PID  UPTIME  RESTARTS  DETAILS
door-pi        online        5m10s             v0.1.0, on door-pi, load 0.42, 51°C
  doorbot      running  812  3m12s   2         failing health check (2): HTTP 503; “serving”; last exit 1 3m20s ago
  scraper      backoff  -    -       2         last SIGSEGV 3m20s ago; next start in 4s
garage         lost          -                 v0.1.0, on garage, connection lost
  opener       unknown  -    -       -
shed           stale         1m40s             v0.1.0, on shed, heartbeat expired
"
        );
    }

    #[test]
    fn a_heartbeat_with_numbers_no_machine_has_shows_none_of_them() {
        let mut fleet = fleet();
        let mut heartbeat = fleet.agent("door-pi").unwrap().heartbeat.clone().unwrap();
        for (load, temp) in [(1e308, -1e308), (f64::MAX, 1e5)] {
            (heartbeat.load1, heartbeat.cpu_temp_c) = (Some(load), Some(temp));
            let payload = serde_json::to_vec(&heartbeat).unwrap();
            fleet.apply(&Topics::default(), "respawn/v1/door-pi/heartbeat", &payload);
            let table = status_table(&fleet, at(1000), PLAIN);
            let row = table.lines().nth(1).unwrap();
            assert!(row.ends_with("v0.1.0, on door-pi"), "{row}");
        }
    }

    /// A Pi without a real-time clock, away from NTP, a week behind: its times are read by its
    /// clock, so its uptimes are what they are, and the table says its clock is off.
    #[test]
    fn an_agent_whose_clock_is_off_is_read_by_its_clock_and_said_to_be() {
        let week = Duration::from_secs(7 * 86_400);
        let mut fleet = fleet();
        // Its heartbeat (sent at 990 by its clock) kept by the broker 4 s of its 90.
        let heartbeat = fleet.agent("door-pi").unwrap().heartbeat.clone().unwrap();
        let message = crate::session::Message {
            topic: "respawn/v1/door-pi/heartbeat".into(),
            payload: serde_json::to_vec(&heartbeat).unwrap().into(),
            correlation: None,
            retain: true,
            expires_in: Some(Duration::from_secs(86)),
            received: at(994) + week,
            ack: None,
        };
        fleet.receive(&Topics::default(), &message);
        let table = status_table(&fleet, at(1000) + week, PLAIN);
        let agreeing = status_table(&super::tests::fleet(), at(1000), PLAIN);
        let door_pi = |table: &str| -> Vec<String> {
            let rows = table.lines().skip(1).take(3);
            rows.map(|row| row.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(door_pi(&table), door_pi(&agreeing), "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("on door-pi, clock 7d behind, load 0.42, 51°C"),
            "{table}"
        );
        assert!(table.contains("last exit 1 3m20s ago"), "{table}");
        assert!(table.contains("next start in 4s"), "{table}");
        let json = serde_json::to_value(status_json(&fleet)).unwrap();
        assert_eq!(
            json["agents"][0]["clock_offset_ms"],
            -(week.as_millis() as i64)
        );
        // An agent whose clock agrees says nothing of it.
        let json = serde_json::to_value(status_json(&super::tests::fleet())).unwrap();
        assert!(json["agents"][0].get("clock_offset_ms").is_none(), "{json}");
    }

    #[test]
    fn usage_an_oom_kill_and_process_groups_show_in_the_table() {
        let topics = Topics::default();
        let mut fleet = fleet();
        let state = AgentState {
            v: VERSION,
            agent: "shed".into(),
            state: Presence::Online,
            version: Some("0.1.0".into()),
            host: Some("shed".into()),
            processes: vec!["mower".into()],
            session: None,
            since: Some(at(900)),
            started: None,
            heartbeat_secs: Some(30),
            containment: Some("process-group".into()),
        };
        fleet.apply(
            &topics,
            "respawn/v1/shed/state",
            &serde_json::to_vec(&state).unwrap(),
        );
        let mower = serde_json::json!({
            "agent": "shed", "name": "mower", "state": "running", "pid": 77,
            "since": "2027-01-15T08:13:20Z", "restarts": 1,
            "last_exit": {"status": {"signal": "SIGKILL"}, "at": "2027-01-15T08:13:10Z",
                          "runtime_ms": 5000, "restarts": 0, "requested": false,
                          "oom_killed": true, "memory_max": 200000000},
            "usage": {"cpu_seconds": 3.2, "cpu_percent": 12.5, "memory_bytes": 48200000}
        });
        fleet.apply(
            &topics,
            "respawn/v1/shed/proc/mower",
            &serde_json::to_vec(&mower).unwrap(),
        );
        // Heard from lately: what a process uses is shown only of an agent in reach.
        let heartbeat = serde_json::json!({
            "agent": "shed", "at": "2027-01-15T08:16:30Z", "interval_secs": 30,
            "uptime_secs": 100, "running": 1, "processes": 1,
        });
        fleet.apply(
            &topics,
            "respawn/v1/shed/heartbeat",
            &serde_json::to_vec(&heartbeat).unwrap(),
        );
        let table = status_table(&fleet, at(1000), PLAIN);
        assert!(
            table.contains("v0.1.0, on shed, process groups only"),
            "{table}"
        );
        assert!(
            table.contains(
                "CPU 12.5%, 48 MB; last killed by the kernel: out of memory (limit 200 MB)"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_fleet_made_on_two_threads_is_one_table() {
        // More agents than one thread makes alone, the widest name in the second half: its
        // width must reach the rows of the first.
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let ids: Vec<String> = (0..1_500)
            .map(|i| match i {
                1_400 => format!("agent-{i:04}-with-a-long-name"),
                _ => format!("agent-{i:04}"),
            })
            .collect();
        for id in &ids {
            let birth = AgentState {
                v: VERSION,
                agent: id.clone(),
                state: Presence::Online,
                version: None,
                host: None,
                processes: vec!["web".into()],
                session: None,
                since: Some(at(900)),
                started: None,
                heartbeat_secs: None,
                containment: None,
            };
            let topic = format!("respawn/v1/{id}/state");
            fleet.apply(&topics, &topic, &serde_json::to_vec(&birth).unwrap());
        }
        let table = status_table(&fleet, at(1000), PLAIN);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + 2 * ids.len());
        let state_column = lines[0].find("STATE").unwrap();
        assert_eq!(state_column, "agent-1400-with-a-long-name".len() + 2);
        for (i, id) in ids.iter().enumerate() {
            let (agent, process) = (lines[1 + 2 * i], lines[2 + 2 * i]);
            assert!(agent.starts_with(id.as_str()), "{agent}");
            assert_eq!(agent.find("online"), Some(state_column), "{agent}");
            assert_eq!(process.find("unknown"), Some(state_column), "{process}");
        }
    }

    #[test]
    fn an_unhealthy_restart_says_why_not_as_asked() {
        let kind = |reason: Option<&str>| EventKind::Exited {
            pid: 812,
            status: ExitStatus::Signal {
                signal: "SIGTERM".into(),
                core_dumped: false,
            },
            runtime_ms: 2000,
            restarts: 0,
            requested: true,
            shutdown: false,
            leftover: false,
            scheduled: false,
            killed_at_stop_timeout: false,
            next_start: Some(at(4)),
            reason: reason.map(str::to_owned),
            log_tail: vec![],
            log_truncated: false,
            oom_killed: false,
            memory_max: None,
        };
        assert_eq!(
            event_line(&event(kind(Some("tcp check failed 2 times"))), ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot exited SIGTERM after 2s (stopped by the agent, unhealthy: tcp check failed 2 times)\n"
        );
        assert!(
            event_line(&event(kind(None)), ClockOffset::default(), PLAIN)
                .ends_with("after 2s (as asked)\n")
        );
        let mut for_the_agents_stop = kind(None);
        if let EventKind::Exited { shutdown, .. } = &mut for_the_agents_stop {
            *shutdown = true;
        }
        assert!(
            event_line(&event(for_the_agents_stop), ClockOffset::default(), PLAIN)
                .ends_with("after 2s (the agent stops)\n")
        );
        let mut left_over = kind(None);
        if let EventKind::Exited { leftover, .. } = &mut left_over {
            *leftover = true;
        }
        assert!(
            event_line(&event(left_over), ClockOffset::default(), PLAIN).ends_with(
                "after 2s (left running by an earlier run of the agent, stopped by this one)\n"
            )
        );
        let mut on_schedule = kind(None);
        if let EventKind::Exited { scheduled, .. } = &mut on_schedule {
            *scheduled = true;
        }
        assert!(
            event_line(&event(on_schedule), ClockOffset::default(), PLAIN)
                .ends_with("after 2s (restart_every is up)\n")
        );
        let mut killed = kind(None);
        if let EventKind::Exited {
            killed_at_stop_timeout,
            ..
        } = &mut killed
        {
            *killed_at_stop_timeout = true;
        }
        assert!(event_line(&event(killed), ClockOffset::default(), PLAIN)
            .ends_with("after 2s (as asked; killed: it outlived its stop_timeout)\n"));
    }

    #[test]
    fn a_diff_numbers_the_new_file_as_the_operator_has_it() {
        let old = "a\nb\nc\n";
        let new = "a\nB\nc\n";
        let plain = config_diff((old, "pi:remote.toml"), (new, "mine.toml", 0), PLAIN);
        assert!(plain.contains("\n@@ -1,3 +1,3 @@\n"), "{plain}");
        // Under config get's header, b is on line 3 of the file.
        let headed = config_diff((old, "pi:remote.toml"), (new, "mine.toml", 1), PLAIN);
        assert!(headed.contains("\n@@ -1,3 +2,3 @@\n"), "{headed}");
        assert!(headed.contains("\n-b\n+B\n"), "{headed}");
        assert_eq!(shift_new_side("@@ -0,0 +1 @@", 1), "@@ -0,0 +2 @@");
    }

    #[test]
    fn text_from_the_broker_cannot_drive_the_terminal() {
        let topics = Topics::default();
        let mut fleet = Fleet::default();
        let state = AgentState {
            v: VERSION,
            agent: "shed".into(),
            state: Presence::Online,
            version: Some("\u{1b}[31mRED\u{1b}[0m".into()),
            host: Some("h\nnewline \u{202e}desrever".into()),
            processes: vec![],
            session: None,
            since: Some(at(900)),
            started: None,
            heartbeat_secs: Some(30),
            containment: None,
        };
        let state = serde_json::to_vec(&state).unwrap();
        fleet.apply(&topics, "respawn/v1/shed/state", &state);
        for style in [PLAIN, Style { color: true }] {
            let table = status_table(&fleet, at(1000), style);
            assert_eq!(table.lines().count(), 2, "{table}");
            assert!(!table.contains("\u{1b}[31mRED"), "{table}");
            assert!(!table.contains('\u{202e}'), "{table}");
        }
        let table = status_table(&fleet, at(1000), PLAIN);
        assert!(
            table.contains("v\\u{1b}[31mRED\\u{1b}[0m, on h\\u{a}newline \\u{202e}desrever"),
            "{table}"
        );

        let mut crash = event(EventKind::Failed { restarts: 1 });
        crash.process = Some("a\u{1b}]0;pwned\u{7}".into());
        let line = event_line(&crash, ClockOffset::default(), Style { color: true });
        assert!(
            !line.contains('\u{7}') && !line.contains("\u{1b}]0"),
            "{line:?}"
        );
        assert!(line.contains("a\\u{1b}]0;pwned\\u{7}"), "{line:?}");
        let log = LogLine {
            at: at(0),
            stream: Stream::Stdout,
            text: "\u{1b}[2Jcleared\tat Main.java".into(),
        };
        assert!(log_lines(&[log], false, ClockOffset::default())
            .contains("\\u{1b}[2Jcleared\tat Main.java"));
    }

    #[test]
    fn colour_only_when_asked() {
        let coloured = status_table(&fleet(), at(1000), Style { color: true });
        assert!(coloured.contains("\x1b[32monline\x1b[0m"));
        assert!(coloured.contains("\x1b[31mlost\x1b[0m"));
        assert!(!status_table(&fleet(), at(1000), PLAIN).contains('\x1b'));
    }

    #[test]
    fn the_status_document() {
        let json = serde_json::to_value(status_json(&fleet())).unwrap();
        assert_eq!(json["agents"][0]["agent"], "door-pi");
        assert_eq!(json["agents"][0]["liveness"], "online");
        assert_eq!(
            json["agents"][0]["started"],
            respawn_common::time::format(at(690)),
            "its heartbeat's uptime back from the heartbeat, as the table's UPTIME"
        );
        assert_eq!(json["agents"][0]["processes"][0]["pid"], 812);
        assert_eq!(json["agents"][1]["liveness"], "lost");
        assert_eq!(json["agents"][2]["liveness"], "stale");
    }

    fn event(kind: EventKind) -> Event {
        Event {
            v: VERSION,
            id: "x".into(),
            seq: 1,
            agent: "door-pi".into(),
            at: at(0),
            process: Some("doorbot".into()),
            dropped_before: 0,
            kind,
        }
    }

    #[test]
    fn events_read_as_one_liners() {
        let crash = event(EventKind::Exited {
            pid: 812,
            status: ExitStatus::Code { code: 1 },
            runtime_ms: 2001,
            restarts: 3,
            requested: false,
            shutdown: false,
            leftover: false,
            scheduled: false,
            killed_at_stop_timeout: false,
            next_start: Some(at(1)),
            reason: None,
            log_tail: (1..=5)
                .map(|i| LogLine {
                    at: at(0),
                    stream: Stream::Stderr,
                    text: format!("line {i}"),
                })
                .collect(),
            log_truncated: false,
            oom_killed: false,
            memory_max: None,
        });
        assert_eq!(
            event_line(&crash, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot crashed exit 1 after 2s, restarting in 1s (3 restarts so far)\n    │ line 3\n    │ line 4\n    │ line 5\n"
        );
        let mut at_once = crash.clone();
        if let EventKind::Exited {
            next_start,
            log_tail,
            ..
        } = &mut at_once.kind
        {
            (*next_start, *log_tail) = (Some(at(0)), Vec::new());
        }
        assert_eq!(
            event_line(&at_once, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot crashed exit 1 after 2s, restarting (3 restarts so far)\n"
        );
        let mut after_1900ms = crash.clone();
        if let EventKind::Exited { next_start, .. } = &mut after_1900ms.kind {
            *next_start = Some(at(0) + Duration::from_millis(1900));
        }
        assert!(
            event_line(&after_1900ms, ClockOffset::default(), PLAIN)
                .contains(", restarting in 2s ("),
            "to the nearest second"
        );
        let mut after_816ms = crash.clone();
        if let EventKind::Exited { next_start, .. } = &mut after_816ms.kind {
            *next_start = Some(at(0) + Duration::from_millis(816));
        }
        assert!(
            event_line(&after_816ms, ClockOffset::default(), PLAIN)
                .contains(", restarting in 800ms ("),
            "soon, not at once"
        );
        let mut done = crash.clone();
        if let EventKind::Exited {
            status,
            next_start,
            restarts,
            log_tail,
            ..
        } = &mut done.kind
        {
            (*status, *next_start, *restarts) = (ExitStatus::Code { code: 0 }, None, 0);
            log_tail.clear();
        }
        assert_eq!(
            event_line(&done, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot finished exit 0 after 2s, not restarting\n",
            "a job that ends well did not crash"
        );
        assert_eq!(
            event_line(
                &event(EventKind::Started {
                    pid: 9,
                    restarts: 0
                }),
                ClockOffset::default(),
                PLAIN
            ),
            "2027-01-15T08:00:00Z door-pi/doorbot started pid 9\n"
        );
        let mut loop_event = event(EventKind::CrashLoop {
            exits: 5,
            window_secs: 600,
        });
        loop_event.dropped_before = 2;
        assert_eq!(
            event_line(&loop_event, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot crash loop 5 exits within 10m (2 older events dropped by the agent since its last one)\n"
        );
        assert_eq!(
            event_line(&event(EventKind::Vanished { pid: 812 }), ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot vanished pid 812: it ended while no agent watched it; how is not known\n"
        );
        assert_eq!(
            event_line(&event(EventKind::Unknown), ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot event (of a newer kind)\n"
        );
        let audit = event(EventKind::Command {
            cmd_id: "c1".into(),
            command: "restart".into(),
            requester: "ctl-01b5".into(),
            signer: Some("alice".into()),
            outcome: ReplyStatus::Succeeded,
            reason: None,
            message: None,
            sha256: None,
            dry_run: false,
            unaudited: [("bad_signature".to_owned(), 12), ("shed".to_owned(), 3)].into(),
        });
        assert_eq!(
            event_line(&audit, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot command restart by alice from ctl-01b5: succeeded (not audited since the last: bad_signature 12, shed 3)\n"
        );
        let apply = event(EventKind::Command {
            cmd_id: "c2".into(),
            command: "config_apply".into(),
            requester: "ctl-01b5".into(),
            signer: Some("alice".into()),
            outcome: ReplyStatus::Succeeded,
            reason: None,
            message: None,
            sha256: Some("3f2a9c81e0b1c2d3e4f5".into()),
            dry_run: false,
            unaudited: Default::default(),
        });
        assert_eq!(
            event_line(&apply, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot command config_apply by alice from ctl-01b5: succeeded (remote.toml 3f2a9c81e0b1)\n"
        );
        let mut check = apply.clone();
        if let EventKind::Command {
            sha256, dry_run, ..
        } = &mut check.kind
        {
            (*sha256, *dry_run) = (None, true);
        }
        assert_eq!(
            event_line(&check, ClockOffset::default(), PLAIN),
            "2027-01-15T08:00:00Z door-pi/doorbot command config_apply (dry run) by alice from ctl-01b5: succeeded\n"
        );
    }

    #[test]
    fn outcomes_read_as_sentences() {
        let job = Job::new("door-pi", Some("doorbot"), None);
        let mut reply = CommandReply::new("c", "door-pi", ReplyStatus::Succeeded);
        reply.old_pid = Some(812);
        reply.new_pid = Some(1301);
        let line = |command, outcome: &Outcome| {
            outcome_line(command, &job, outcome, Duration::from_secs(10), PLAIN)
        };
        assert_eq!(
            line(CommandName::Restart, &Outcome::Succeeded(reply)),
            "restarted door-pi/doorbot pid 812 → 1301"
        );
        let mut unsaved = CommandReply::new("c", "door-pi", ReplyStatus::Succeeded);
        unsaved.warning = Some("the stop could not be saved (No space left on device): doorbot starts again when the agent does".into());
        assert_eq!(
            line(CommandName::Stop, &Outcome::Succeeded(unsaved)),
            "stopped door-pi/doorbot (but the stop could not be saved (No space left on device): doorbot starts again when the agent does)"
        );
        // Found by a new-user run: "was already stopped" read as nothing done, though the
        // stop lasts (a finished job no longer ran at the agent's start).
        let mut already = CommandReply::new("c", "door-pi", ReplyStatus::Succeeded);
        already.message = Some("doorbot is already stopped; it now stays stopped, also across agent restarts, until started".into());
        assert_eq!(
            line(CommandName::Stop, &Outcome::Succeeded(already)),
            "door-pi/doorbot was already stopped; it now stays stopped, also across agent restarts, until started"
        );
        let rejected = CommandReply::rejected(
            "c",
            "door-pi",
            Reason::UnknownProcess,
            "no process \"doorbot\"",
        );
        assert_eq!(
            line(CommandName::Stop, &Outcome::Rejected(rejected)),
            "rejected door-pi/doorbot: unknown_process: no process \"doorbot\""
        );
        assert_eq!(
            line(CommandName::Stop, &Outcome::TimedOut { accepted: false }),
            "timed out door-pi/doorbot: no answer within 10s"
        );
        assert_eq!(
            line(
                CommandName::Start,
                &Outcome::NotSent("the agent is lost".into())
            ),
            "not sent door-pi/doorbot: the agent is lost"
        );
    }

    #[test]
    fn a_refused_configurations_problems_are_printed_escaped() {
        let problems = [Problem {
            line: 3,
            message: "unknown key `\u{1b}[2J`".into(),
        }];
        let text = config_problems(&problems, "garage.toml");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.starts_with("  garage.toml:3: unknown key"), "{text}");
    }
}
