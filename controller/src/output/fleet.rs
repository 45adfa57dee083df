//! The fleet as `respawnctl status` prints it: an aligned table of every agent and its
//! processes, or one JSON document for scripts.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use respawn_common::messages::{AgentState, Heartbeat};
use respawn_common::status::{megabytes, HealthStatus, ProcessState, ProcessStatus};
use respawn_common::text::written;
use respawn_common::time::{elapsed, next_start, short, ClockOffset, Short};
use serde::Serialize;

use super::{Style, Tone};
use crate::fleet::{Agent, Fleet, Liveness};

fn liveness_tone(l: Liveness) -> Tone {
    match l {
        Liveness::Online => Tone::Good,
        Liveness::Stale | Liveness::Offline | Liveness::Unknown => Tone::Warn,
        Liveness::Lost => Tone::Bad,
    }
}

fn state_tone(s: ProcessState) -> Tone {
    match s {
        ProcessState::Running => Tone::Good,
        ProcessState::Starting | ProcessState::Stopping => Tone::Plain,
        ProcessState::Backoff | ProcessState::SpawnFailed => Tone::Warn,
        ProcessState::CrashLoop | ProcessState::Failed => Tone::Bad,
        ProcessState::Stopped | ProcessState::Unknown => Tone::Dim,
    }
}

/// The table's columns; the last, the details, is not padded.
const HEADER: [&str; 6] = [
    "AGENT/PROCESS",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "DETAILS",
];

/// One row of the table, its cells written one after another into one string that every
/// row reuses: 100,000 rows are not 600,000 strings of their own.
#[derive(Default)]
struct Row {
    text: String,
    cells: Vec<(usize, Tone)>,
}

impl Row {
    fn start(&mut self) -> &mut Self {
        self.text.clear();
        self.cells.clear();
        self
    }

    fn cell(&mut self, tone: Tone, text: impl fmt::Display) -> &mut Self {
        let _ = write!(self.text, "{}", super::Printable(text));
        self.cells.push((self.text.len(), tone));
        self
    }

    fn cells(&self) -> impl Iterator<Item = (&str, Tone)> {
        let starts = std::iter::once(0).chain(self.cells.iter().map(|&(end, _)| end));
        let cells = starts.zip(&self.cells);
        cells.map(|(start, &(end, tone))| (&self.text[start..end], tone))
    }
}

/// The fleet as an aligned table: each agent, and its processes indented below it.
pub fn status_table(fleet: &Fleet, now: SystemTime, style: Style) -> String {
    if fleet.is_empty() {
        return "no agents found\n".into();
    }
    // The rows are made twice, once for the widths and once to print, rather than held:
    // 100,000 rows would take more memory than the fleet itself. The widths need no
    // details.
    let agents: Vec<(&String, &Agent)> = fleet.agents().collect();
    let parts = in_parts(&agents);
    let mut widths = HEADER.map(str::len);
    for part in on_threads(&parts, |part| column_widths(part, now)) {
        for (w, part_w) in widths.iter_mut().zip(part) {
            *w = (*w).max(part_w);
        }
    }
    let mut header = Row::default();
    for title in HEADER {
        header.cell(Tone::Bold, title);
    }
    let mut out = String::new();
    write_line(&mut out, &header, widths, style);
    for text in on_threads(&parts, |part| {
        let mut text = String::new();
        each_row(part, now, true, |row| {
            write_line(&mut text, row, widths, style)
        });
        text
    }) {
        out.push_str(&text);
    }
    out
}

/// A large fleet in two parts, whose tables are made at once on two threads: by then the
/// broker has sent everything and the machine's other core is free.
fn in_parts<T>(agents: &[T]) -> Vec<&[T]> {
    const ALONE: usize = 1_000;
    match agents.len() {
        0..ALONE => vec![agents],
        n => agents.chunks(n.div_ceil(2)).collect(),
    }
}

/// `make` of each part, each on a thread of its own when there are several.
fn on_threads<'f, P: Sync, T: Send>(
    parts: &[&'f [P]],
    make: impl Fn(&'f [P]) -> T + Sync,
) -> Vec<T> {
    match parts {
        [one] => vec![make(one)],
        _ => std::thread::scope(|scope| {
            let make = &make;
            let threads: Vec<_> = parts
                .iter()
                .map(|&part| scope.spawn(move || make(part)))
                .collect();
            // A panic on a table thread is a bug; it is passed on as it is.
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        }),
    }
}

/// The widths the columns of these agents' rows need, but the details'.
fn column_widths(agents: &[(&String, &Agent)], now: SystemTime) -> [usize; 6] {
    let mut widths = [0; 6];
    each_row(agents, now, false, |row| {
        for (w, (text, _)) in widths.iter_mut().zip(row.cells()) {
            *w = (*w).max(text.chars().count());
        }
    });
    widths
}

/// One row onto `out`, its cells padded to `widths`.
fn write_line(out: &mut String, row: &Row, widths: [usize; 6], style: Style) {
    let start = out.len();
    for (i, ((cell, tone), w)) in row.cells().zip(widths).enumerate() {
        if i != 0 {
            out.push_str("  ");
        }
        style.paint_onto(out, tone, cell);
        let pad = w.saturating_sub(cell.chars().count());
        out.extend(std::iter::repeat_n(' ', pad));
    }
    out.truncate(start + out[start..].trim_end().len());
    out.push('\n');
}

/// Each row of these agents in order, an agent's and then its processes'; details only
/// when `details`.
fn each_row(
    agents: &[(&String, &Agent)],
    now: SystemTime,
    details: bool,
    mut visit: impl FnMut(&Row),
) {
    let mut row = Row::default();
    for &(id, agent) in agents {
        // Its times are by its clock: measured against ours moved onto it.
        let now = agent.now(now);
        agent_row(row.start(), id, agent, now, details);
        visit(&row);
        let reachable = agent.liveness().reachable();
        for name in agent.process_names() {
            match agent.processes.get(name) {
                Some(status) => process_row(row.start(), status, now, reachable, details),
                None => unknown_process_row(row.start(), name),
            }
            visit(&row);
        }
    }
}

/// A process the agent's birth names whose state has not come.
fn unknown_process_row(row: &mut Row, name: &str) {
    row.cell(Tone::Plain, format_args!("  {name}"))
        .cell(Tone::Dim, "unknown")
        .cell(Tone::Dim, "-")
        .cell(Tone::Dim, "-")
        .cell(Tone::Dim, "-");
}

/// An agent's row; its details only when `details`.
fn agent_row(row: &mut Row, id: &str, agent: &Agent, now: SystemTime, details: bool) {
    let liveness = agent.liveness();
    let since = agent.started();
    row.cell(Tone::Bold, id)
        .cell(liveness_tone(liveness), liveness)
        .cell(Tone::Plain, "");
    match (liveness, since) {
        (Liveness::Online | Liveness::Stale, Some(since)) => {
            row.cell(Tone::Plain, Short(elapsed(since, now)))
        }
        _ => row.cell(Tone::Plain, "-"),
    };
    row.cell(Tone::Plain, "");
    if details {
        row.cell(Tone::Dim, agent_details(agent, liveness, now));
    }
}

fn agent_details(agent: &Agent, liveness: Liveness, now: SystemTime) -> String {
    let state = agent.state.as_ref();
    let mut details = Vec::new();
    if let Some(version) = state.and_then(|s| s.version.as_deref()) {
        details.push(format!("v{version}"));
    }
    if let Some(host) = state.and_then(|s| s.host.as_deref()) {
        details.push(format!("on {host}"));
    }
    // Worth a word only when a daemon could escape a stop.
    if state.and_then(|s| s.containment.as_deref()) == Some("process-group") {
        details.push("process groups only".into());
    }
    match (liveness, state.and_then(|s| s.since)) {
        (Liveness::Offline, Some(since)) => {
            details.push(format!("offline for {}", short(elapsed(since, now))))
        }
        (Liveness::Stale, _) => details.push("heartbeat expired".into()),
        (Liveness::Lost, _) => details.push("connection lost".into()),
        _ => {}
    }
    details.extend(agent.clock.and_then(ClockOffset::describe));
    if let Some(hb) = &agent.heartbeat {
        // Only what a machine can report: a forged 1e308 would print 309 digits.
        let plausible = |x: &f64, most: f64| x.is_finite() && x.abs() < most;
        if let Some(load) = hb.load1.filter(|l| plausible(l, 1e6)) {
            details.push(format!("load {load:.2}"));
        }
        if let Some(temp) = hb.cpu_temp_c.filter(|t| plausible(t, 1e4)) {
            details.push(format!("{temp:.0}°C"));
        }
    }
    details.join(", ")
}

/// A process's row; its details only when `details`.
fn process_row(row: &mut Row, p: &ProcessStatus, now: SystemTime, reachable: bool, details: bool) {
    let tone = match reachable {
        true => state_tone(p.state),
        false => Tone::Dim,
    };
    row.cell(Tone::Plain, format_args!("  {}", p.name_shown()))
        .cell(tone, p.state_shown());
    match p.pid {
        Some(pid) => row.cell(Tone::Plain, pid),
        None => row.cell(Tone::Plain, "-"),
    };
    // Of an agent out of reach, only what was last said is known: not that it still runs. A
    // stopping process's `since` is when the stop began; one starting without a pid waits.
    match p.state {
        ProcessState::Running | ProcessState::Starting if reachable && p.pid.is_some() => {
            row.cell(Tone::Plain, Short(elapsed(p.since, now)))
        }
        _ => row.cell(Tone::Plain, "-"),
    };
    row.cell(Tone::Plain, p.restarts);
    if details {
        row.cell(
            Tone::Plain,
            written(|f| process_details(f, p, now, reachable)),
        );
    }
}

/// A process's details, written where they are shown: a fleet's table has 100,000. What it
/// uses is left out when its agent is out of reach.
fn process_details(
    f: &mut fmt::Formatter<'_>,
    p: &ProcessStatus,
    now: SystemTime,
    reachable: bool,
) -> fmt::Result {
    let mut first = true;
    let mut part = |text: fmt::Arguments<'_>| {
        let separator = if first { "" } else { "; " };
        first = false;
        write!(f, "{separator}{text}")
    };
    // A process said to run by an agent out of reach may have ended unseen since.
    if !reachable && p.pid.is_some() {
        part(format_args!("as its agent last said"))?;
    }
    // Its `since` is when the stop began: how long it takes is the news.
    if let (ProcessState::Stopping, true) = (p.state, reachable) {
        part(format_args!(
            "stopping for {}",
            Short(elapsed(p.since, now))
        ))?;
    }
    if let (Some(usage), Some(_), true) = (&p.usage, p.pid, reachable) {
        let memory = megabytes(usage.memory_bytes);
        match usage.cpu_percent {
            Some(cpu) => part(format_args!("CPU {cpu:.1}%, {memory}"))?,
            None => part(format_args!("{memory}"))?,
        }
    }
    if let Some(health) = &p.health {
        match (health.status, &health.last_error) {
            (HealthStatus::Failing, Some(error)) => part(format_args!(
                "failing health check ({}): {error}",
                health.failures
            ))?,
            (HealthStatus::Healthy, _) => part(format_args!("healthy"))?,
            // Its first checks, which do not count yet, failed.
            (HealthStatus::Unknown, Some(error)) => {
                part(format_args!("no health check passed yet: {error}"))?
            }
            _ => {}
        }
        if let Some(message) = &health.message {
            part(format_args!("“{message}”"))?;
        }
    }
    if let Some(error) = &p.spawn_error {
        part(format_args!("could not start: {error}"))?;
    } else if let Some(exit) = &p.last_exit {
        let ago = Short(elapsed(exit.at, now));
        part(format_args!("last {} {ago} ago", exit.describe()))?;
        if let Some(reason) = &exit.reason {
            part(format_args!("stopped by the agent, unhealthy: {reason}"))?;
        } else if exit.scheduled {
            part(format_args!("restarted as restart_every asks"))?;
        }
        if exit.killed_at_stop_timeout {
            part(format_args!("killed: it outlived its stop_timeout"))?;
        }
    }
    // Of an agent out of reach, a start it planned says nothing of what happens.
    if let (Some(next), true) = (p.next_start, reachable) {
        part(format_args!("{}", next_start(next, now)))?;
    }
    Ok(())
}

/// The fleet as one JSON document for scripts, serialised as it is written: built as a
/// `serde_json::Value` first, 10,000 agents' document took several times the fleet's memory.
#[derive(Serialize)]
pub struct StatusDocument<'a> {
    agents: Vec<AgentDocument<'a>>,
}

/// One agent of a [`StatusDocument`].
#[derive(Serialize)]
pub struct AgentDocument<'a> {
    agent: &'a str,
    liveness: &'static str,
    /// When it started, as [`Agent::started`] reckons it: the pages show its uptime from it.
    #[serde(
        with = "respawn_common::time::rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    started: Option<SystemTime>,
    state: &'a Option<AgentState>,
    heartbeat: &'a Option<Heartbeat>,
    processes: Vec<&'a ProcessStatus>,
    /// The processes its birth names whose state was not received (a broker drops what it
    /// cannot queue for a reader) or cannot be read: the view of the agent is incomplete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown_processes: Vec<&'a str>,
    /// How far the agent's clock is ahead of the reader's, in milliseconds (negative: behind;
    /// 0 within 5 s): its times are by its clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_ms: Option<i64>,
}

pub fn status_json(fleet: &Fleet) -> StatusDocument<'_> {
    let agents = fleet.agents().map(|(id, agent)| agent_json(id, agent));
    StatusDocument {
        agents: agents.collect(),
    }
}

pub fn agent_json<'a>(id: &'a str, agent: &'a Agent) -> AgentDocument<'a> {
    let names = agent.process_names();
    let processes = names.into_iter().filter_map(|n| agent.processes.get(n));
    AgentDocument {
        agent: id,
        liveness: agent.liveness().as_str(),
        started: agent.started(),
        state: &agent.state,
        heartbeat: &agent.heartbeat,
        processes: processes.collect(),
        unknown_processes: agent.unknown_processes(),
        clock_offset_ms: agent.clock.map(ClockOffset::ahead_ms),
    }
}
