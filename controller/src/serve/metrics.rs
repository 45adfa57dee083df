//! `/metrics`: the fleet in Prometheus' text format. Each family is declared once (name, type,
//! help) and written whole, its samples straight into the page: at 10,000 agents × 10
//! processes a scrape is half a million samples, and it is made while the hub's fold waits.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::time::SystemTime;

use respawn_common::status::{ExitStatus, ProcessState, ProcessStatus};

use crate::fleet::{Agent, Fleet, Liveness};

/// A metric family, as its `# HELP` and `# TYPE` lines say it.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const HUB_BROKER_UP: Family = gauge(
    "respawn_hub_broker_up",
    "1 while the hub is connected to the broker; else the other values are what it last knew.",
);
const AGENT_UP: Family = gauge(
    "respawn_agent_up",
    "1 while the agent is online, else 0 (offline, lost, stale).",
);
const AGENT_INFO: Family = gauge(
    "respawn_agent_info",
    "The agent's version and host, as labels; always 1.",
);
const AGENT_CLOCK_OFFSET: Family = gauge(
    "respawn_agent_clock_offset_seconds",
    "How far the agent's clock is ahead of the hub's (negative: behind), from its heartbeats; 0 within 5 s. Its process start times here are moved onto the hub's clock.",
);
const AGENT_PROCESSES_UNKNOWN: Family = gauge(
    "respawn_agent_processes_unknown",
    "Processes the agent's birth names whose state the hub has not received (a broker drops what it cannot queue for a reader) or cannot read: they have no process series, and above 0 the view of the agent is incomplete.",
);
const PROCESS_UP: Family = gauge(
    "respawn_process_up",
    "1 while the process is running, else 0.",
);
const PROCESS_STATE: Family = gauge(
    "respawn_process_state",
    "The process's current state, as a label; always 1 (a state it left is gone).",
);
const PROCESS_CRASH_LOOP: Family = gauge(
    "respawn_process_crash_loop",
    "1 while the process is in a crash loop, through every state of it (running, backoff, crash_loop), else 0.",
);
const PROCESS_RESTARTS: Family = counter(
    "respawn_process_restarts_total",
    "Automatic restarts since the process was last started by hand or by its agent's start.",
);
const PROCESS_START_TIME: Family = gauge(
    "respawn_process_start_time_seconds",
    "When the process entered its current state, while it has a pid (Unix time).",
);
const PROCESS_LAST_EXIT_CODE: Family = gauge(
    "respawn_process_last_exit_code",
    "The exit code of the process's last exit, when it exited with one.",
);
const EVENTS_TOTAL: Family = counter(
    "respawn_events_total",
    "Events the hub received since it started, by agent and kind.",
);

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
    }
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "counter",
        help,
    }
}

/// The fleet as Prometheus reads it; `counts`: events by agent and kind; `broker`: whether the
/// hub is connected (if not, the rest is what it last knew).
pub fn render(
    fleet: &Fleet,
    counts: &BTreeMap<(String, &'static str), u64>,
    now: SystemTime,
    broker: bool,
) -> String {
    let mut page = Page::default();
    page.family(&HUB_BROKER_UP);
    page.sample(&[], u8::from(broker));
    page.family(&AGENT_UP);
    for (id, agent) in fleet.agents() {
        let up = u8::from(agent.liveness() == Liveness::Online);
        page.sample(&[("agent", id)], up);
    }
    page.family(&AGENT_INFO);
    for (id, agent) in fleet.agents() {
        if let Some(state) = &agent.state {
            let version = state.version.as_deref().unwrap_or("");
            let host = state.host.as_deref().unwrap_or("");
            page.sample(&[("agent", id), ("version", version), ("host", host)], 1);
        }
    }
    page.family(&AGENT_CLOCK_OFFSET);
    for (id, agent) in fleet.agents() {
        if let Some(clock) = agent.clock {
            page.sample(&[("agent", id)], clock.ahead_ms() as f64 / 1000.0);
        }
    }
    page.family(&AGENT_PROCESSES_UNKNOWN);
    for (id, agent) in fleet.agents() {
        if agent.state.is_some() {
            page.sample(&[("agent", id)], agent.unknown_processes().len());
        }
    }
    page.family(&PROCESS_UP);
    each_process(fleet, |labels, _, process| {
        page.sample(&labels, u8::from(process.state == ProcessState::Running));
    });
    // Only the current state: the seven others at 0 were most of a large fleet's page (90 MB
    // at 100,000 processes), and `== 1` and `sum by (state)` read the same without them.
    page.family(&PROCESS_STATE);
    each_process(fleet, |[agent, process_name], _, process| {
        let labels = [agent, process_name, ("state", process.state.as_str())];
        page.sample(&labels, 1);
    });
    // Its own series: a loop's process runs, waits and runs again, so an alert on the
    // `crash_loop` state would flap.
    page.family(&PROCESS_CRASH_LOOP);
    each_process(fleet, |labels, _, process| {
        let looping = process.crash_loop || process.state == ProcessState::CrashLoop;
        page.sample(&labels, u8::from(looping));
    });
    page.family(&PROCESS_RESTARTS);
    each_process(fleet, |labels, _, process| {
        page.sample(&labels, process.restarts)
    });
    page.family(&PROCESS_START_TIME);
    let now = seconds(now);
    each_process(fleet, |labels, agent, process| {
        if process.pid.is_some() {
            let clock = agent.clock.unwrap_or_default();
            let since = seconds(clock.ours(process.since)).min(now);
            page.sample(&labels, since);
        }
    });
    page.family(&PROCESS_LAST_EXIT_CODE);
    each_process(fleet, |labels, _, process| {
        if let Some(ExitStatus::Code { code }) = process.last_exit.as_ref().map(|e| &e.status) {
            page.sample(&labels, code);
        }
    });
    page.family(&EVENTS_TOTAL);
    for ((agent, kind), n) in counts {
        page.sample(&[("agent", agent), ("kind", kind)], n);
    }
    page.text
}

/// Each process of the fleet whose state is known, with its `agent` and `process` labels and
/// its agent.
fn each_process(fleet: &Fleet, mut visit: impl FnMut([(&str, &str); 2], &Agent, &ProcessStatus)) {
    for (id, agent) in fleet.agents() {
        for name in agent.process_names() {
            if let Some(process) = agent.processes.get(name) {
                visit([("agent", id), ("process", name)], agent, process);
            }
        }
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The page being written, one family after another.
#[derive(Default)]
struct Page {
    text: String,
    family: &'static str,
}

impl Page {
    fn family(&mut self, family: &Family) {
        let Family { name, kind, help } = family;
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self.family = name;
    }

    /// A sample of the family begun last.
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        let text = &mut self.text;
        text.push_str(self.family);
        for (i, (key, value)) in labels.iter().enumerate() {
            text.push(if i == 0 { '{' } else { ',' });
            text.push_str(key);
            text.push_str("=\"");
            escape_into(text, value);
            text.push('"');
        }
        if !labels.is_empty() {
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape_into(text: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        text.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
}
