//! The fleet as `respawnctl status` prints it: an aligned table of every agent and its
//! processes, or one JSON document for scripts.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use respawn_common::messages::{AgentState, Heartbeat};
use respawn_common::status::{megabytes, HealthStatus, ProcessState, ProcessStatus};
use respawn_common::time::{elapsed, short};
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
        ProcessState::Stopped => Tone::Dim,
    }
}

fn until(t: SystemTime, now: SystemTime) -> Duration {
    t.duration_since(now).unwrap_or_default()
}

/// The fleet as an aligned table: each agent, and its processes indented below it.
pub fn status_table(fleet: &Fleet, now: SystemTime, style: Style) -> String {
    if fleet.is_empty() {
        return "no agents found\n".into();
    }
    let header = [
        "AGENT/PROCESS",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "DETAILS",
    ];
    // The rows are made twice, once for the widths and once to print, rather than held:
    // 100,000 rows of six cells would take more memory than the fleet itself. The widths
    // need no details, the last column, which is not padded.
    let rows = |details: bool| {
        fleet.agents().flat_map(move |(id, agent)| {
            let reachable = agent.liveness().reachable();
            let processes = agent.process_names().into_iter().map(move |name| {
                match agent.processes.get(&name) {
                    Some(status) => process_row(status, now, reachable, details),
                    None => unknown_process_row(&name),
                }
            });
            std::iter::once(agent_row(id, agent, now, details)).chain(processes)
        })
    };
    let mut widths = header.map(str::len);
    for row in rows(false) {
        for (w, (text, _)) in widths.iter_mut().zip(&row) {
            *w = (*w).max(text.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [(String, Tone); 6]| {
        let start = out.len();
        for (i, ((cell, tone), w)) in cells.into_iter().zip(widths).enumerate() {
            if i != 0 {
                out.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            style.paint_onto(&mut out, tone, &cell);
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.truncate(start + out[start..].trim_end().len());
        out.push('\n');
    };
    line(header.map(|h| (h.to_owned(), Tone::Bold)));
    for row in rows(true) {
        line(row);
    }
    out
}

/// A process the agent's birth names whose state has not come.
fn unknown_process_row(name: &str) -> [(String, Tone); 6] {
    [
        (format!("  {name}"), Tone::Plain),
        ("unknown".into(), Tone::Dim),
        ("-".into(), Tone::Dim),
        ("-".into(), Tone::Dim),
        ("-".into(), Tone::Dim),
        (String::new(), Tone::Plain),
    ]
}

/// An agent's row; its details only when `details`.
fn agent_row(id: &str, agent: &Agent, now: SystemTime, details: bool) -> [(String, Tone); 6] {
    let liveness = agent.liveness();
    let uptime = match (liveness, agent.state.as_ref().and_then(|s| s.since)) {
        (Liveness::Online | Liveness::Stale, Some(since)) => short(elapsed(since, now)),
        _ => "-".into(),
    };
    let details = details.then(|| agent_details(agent, liveness, now));
    [
        (id.to_owned(), Tone::Bold),
        (liveness.to_string(), liveness_tone(liveness)),
        (String::new(), Tone::Plain),
        (uptime, Tone::Plain),
        (String::new(), Tone::Plain),
        (details.unwrap_or_default(), Tone::Dim),
    ]
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
    if let Some(hb) = &agent.heartbeat {
        if let Some(load) = hb.load1 {
            details.push(format!("load {load:.2}"));
        }
        if let Some(temp) = hb.cpu_temp_c {
            details.push(format!("{temp:.0}°C"));
        }
    }
    details.join(", ")
}

/// A process's row; its details only when `details`.
fn process_row(
    p: &ProcessStatus,
    now: SystemTime,
    reachable: bool,
    details: bool,
) -> [(String, Tone); 6] {
    let state = p.state_label();
    let tone = if reachable {
        state_tone(p.state)
    } else {
        Tone::Dim
    };
    let uptime = match p.state {
        ProcessState::Running | ProcessState::Starting | ProcessState::Stopping => {
            short(elapsed(p.since, now))
        }
        _ => "-".into(),
    };
    let details = details.then(|| process_details(p, now));
    [
        (format!("  {}", p.name_label()), Tone::Plain),
        (state, tone),
        (p.pid.map_or("-".into(), |pid| pid.to_string()), Tone::Plain),
        (uptime, Tone::Plain),
        (p.restarts.to_string(), Tone::Plain),
        (details.unwrap_or_default(), Tone::Plain),
    ]
}

fn process_details(p: &ProcessStatus, now: SystemTime) -> String {
    // Written into one string: a fleet's table has 100,000 of these.
    let mut details = String::new();
    let mut part = |text: fmt::Arguments<'_>| {
        if !details.is_empty() {
            details.push_str("; ");
        }
        let _ = details.write_fmt(text);
    };
    if let (Some(usage), Some(_)) = (&p.usage, p.pid) {
        let memory = megabytes(usage.memory_bytes);
        match usage.cpu_percent {
            Some(cpu) => part(format_args!("CPU {cpu:.1}%, {memory}")),
            None => part(format_args!("{memory}")),
        }
    }
    if let Some(health) = &p.health {
        match (health.status, &health.last_error) {
            (HealthStatus::Failing, Some(error)) => part(format_args!(
                "failing health check ({}): {error}",
                health.failures
            )),
            (HealthStatus::Healthy, _) => part(format_args!("healthy")),
            _ => {}
        }
        if let Some(message) = &health.message {
            part(format_args!("“{message}”"));
        }
    }
    if let Some(error) = &p.spawn_error {
        part(format_args!("could not start: {error}"));
    } else if let Some(exit) = &p.last_exit {
        let ago = short(elapsed(exit.at, now));
        part(format_args!("last {} {ago} ago", exit.describe()));
    }
    if let Some(next) = p.next_start {
        part(format_args!("next start in {}", short(until(next, now))));
    }
    details
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
    state: &'a Option<AgentState>,
    heartbeat: &'a Option<Heartbeat>,
    processes: Vec<&'a ProcessStatus>,
}

pub fn status_json(fleet: &Fleet) -> StatusDocument<'_> {
    let agents = fleet.agents().map(|(id, agent)| agent_json(id, agent));
    StatusDocument {
        agents: agents.collect(),
    }
}

pub fn agent_json<'a>(id: &'a str, agent: &'a Agent) -> AgentDocument<'a> {
    let names = agent.process_names();
    let processes = names.iter().filter_map(|n| agent.processes.get(n));
    AgentDocument {
        agent: id,
        liveness: agent.liveness().as_str(),
        state: &agent.state,
        heartbeat: &agent.heartbeat,
        processes: processes.collect(),
    }
}
