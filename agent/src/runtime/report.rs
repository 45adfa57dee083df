//! What the agent reports and logs, built from the state machine's views and notices: status
//! snapshots, events with a bounded log tail, bounded `logs` replies, heartbeats (sent by
//! `Runtime::heartbeat`, with the retained states and a step of the wall clock), audit
//! events, and the log lines that go with them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::{CommandReply, EventKind, Heartbeat, ReplyStatus};
use respawn_common::messages::{TAIL_BYTES, TAIL_LINES, TAIL_LINE_BYTES};
use respawn_common::status::ProcessState;
use respawn_common::status::{ExitRecord, ExitStatus, LogLine, ProcessStatus};
use respawn_common::text::Printable;
use respawn_common::time::{precise, short, ClockOffset};

use crate::config::{Config, OperatorConfig, ProcessConfig};
use crate::control::Outcome;
use crate::logs::wire_size;
use crate::mqtt::link::Link;
use crate::runtime::children::Children;
use crate::runtime::commands::Failure;
use crate::runtime::commands::RemoteRequest;
use crate::runtime::view::View;
use crate::shell::leftovers::Stopped;
use crate::shell::procfs;
use crate::supervisor::{ExitInfo, Notice, NoticeKind, UnitView};

/// Bytes the lines of a `logs` reply may take as JSON.
pub const LOGS_REPLY_BYTES: usize = 64 * 1024;
/// Bytes the processes of a `status` reply may take as JSON: with the rest of the reply,
/// well under the largest packet a broker takes from the agent (`MAX_PACKET`).
pub const STATUS_REPLY_BYTES: usize = 192 * 1024;

pub fn exit_record(info: &ExitInfo, clock: &WallClock) -> ExitRecord {
    ExitRecord {
        status: info.status.clone(),
        at: clock.at(info.at),
        runtime_ms: info.runtime.as_millis() as u64,
        restarts: info.restarts,
        requested: info.requested,
        next_start: info.next_start.map(|t| clock.at(t)),
        reason: info.reason.clone(),
        oom_killed: info.oom.is_some(),
        memory_max: info.oom.and_then(|oom| oom.limit),
        scheduled: info.scheduled,
        killed_at_stop_timeout: info.killed_at_stop_timeout,
    }
}

/// The exit `notice` tells of, to keep for the agent's next run: not the stop of the agent's
/// own shutdown, which says nothing of the program.
pub fn exit_to_keep(notice: &Notice) -> Option<ExitRecord> {
    match &notice.kind {
        NoticeKind::Exited(info) if !info.shutdown => Some(exit_record(info, &WallClock::now())),
        _ => None,
    }
}

pub fn status_of(view: &UnitView, clock: &WallClock) -> ProcessStatus {
    ProcessStatus {
        name: view.name.clone(),
        state: view.state,
        pid: view.pid,
        since: clock.at(view.since),
        restarts: view.restarts,
        crash_loop: view.crash_loop_since.is_some(),
        crash_loop_since: view.crash_loop_since.map(|t| clock.at(t)),
        manually_stopped: view.manually_stopped,
        last_exit: view.last_exit.as_ref().map(|e| exit_record(e, clock)),
        spawn_error: view.spawn_error.clone(),
        next_start: view.next_start.map(|t| clock.at(t)),
        health: None,
        usage: None,
        remote: false,
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
        shutdown: false,
        leftover: true,
        scheduled: false,
        killed_at_stop_timeout: false,
        next_start: None,
        reason: None,
        log_tail: Vec::new(),
        log_truncated: false,
        oom_killed: false,
        memory_max: None,
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
                shutdown: info.shutdown,
                leftover: false,
                scheduled: info.scheduled,
                killed_at_stop_timeout: info.killed_at_stop_timeout,
                next_start: info.next_start.map(|t| clock.at(t)),
                reason: info.reason.clone(),
                log_tail,
                log_truncated,
                oom_killed: info.oom.is_some(),
                memory_max: info.oom.and_then(|oom| oom.limit),
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
        NoticeKind::Stopped { removed } => EventKind::Stopped { removed: *removed },
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

/// The newest lines whose JSON fits `budget` bytes, oldest first; and whether any was left out.
pub fn newest_within(lines: Vec<LogLine>, budget: usize) -> (Vec<LogLine>, bool) {
    let mut used = 0;
    let mut start = lines.len();
    while let Some(size) = start.checked_sub(1).map(|i| wire_size(&lines[i])) {
        if used + size > budget {
            break;
        }
        used += size;
        start -= 1;
    }
    let cut = start > 0;
    (lines.into_iter().skip(start).collect(), cut)
}

/// The first of `statuses`, in the configuration's order, that fit within `budget` bytes of
/// JSON, and whether any were left out.
pub fn first_within(statuses: Vec<ProcessStatus>, budget: usize) -> (Vec<ProcessStatus>, bool) {
    let mut used = 0;
    let fitting = statuses.iter().take_while(|status| {
        used += serde_json::to_vec(status).map_or(budget, |json| json.len() + 1);
        used <= budget
    });
    let kept = fitting.count();
    let cut = kept < statuses.len();
    (statuses.into_iter().take(kept).collect(), cut)
}

/// The final reply to a remote start, stop or restart.
pub fn outcome_reply(
    cmd_id: &str,
    agent: &str,
    process: &str,
    result: &Result<Outcome, Failure>,
    warning: Option<&str>,
) -> CommandReply {
    match result {
        Ok(outcome) => {
            let mut reply = CommandReply::new(cmd_id, agent, ReplyStatus::Succeeded);
            reply.message = Some(outcome.sentence(process));
            reply.warning = warning.map(str::to_owned);
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

/// Whom the agent takes commands from, in words, as `check` prints it and the agent logs it;
/// and whether that deserves a warning.
pub fn command_policy(config: &Config) -> (bool, String) {
    let names: Vec<&str> = config.operators.iter().map(|o| o.name.as_str()).collect();
    if config.agent.allow_unsigned_commands {
        let words = "allow_unsigned_commands = true: anyone who can publish on the broker can command this agent";
        (true, words.to_owned())
    } else if names.is_empty() {
        let words = "no [[operator]]: the agent takes no commands over MQTT";
        (true, words.to_owned())
    } else {
        (false, format!("commands signed by: {}", names.join(", ")))
    }
}

/// Says at every start (and reload) whom the agent takes commands from.
pub fn log_command_policy(config: &Config) {
    match command_policy(config) {
        (true, words) => tracing::warn!("{words}"),
        (false, words) => tracing::info!("{words}"),
    }
}

/// Who may command the agent, as `new` changes it from `old`, in words: `added carol;
/// changed alice; unsigned commands now refused`. `None` when nothing changed.
pub fn command_policy_change(old: &Config, new: &Config) -> Option<String> {
    fn find<'c>(config: &'c Config, name: &str) -> Option<&'c OperatorConfig> {
        config.operators.iter().find(|o| o.name == name)
    }
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    for operator in &new.operators {
        match find(old, &operator.name) {
            None => added.push(operator.name.as_str()),
            Some(was) if was != operator => changed.push(operator.name.as_str()),
            Some(_) => {}
        }
    }
    let removed = (old.operators.iter())
        .filter(|o| find(new, &o.name).is_none())
        .map(|o| o.name.as_str())
        .collect();
    let mut parts = Vec::new();
    for (verb, names) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !names.is_empty() {
            parts.push(format!("{verb} {}", names.join(", ")));
        }
    }
    match (
        old.agent.allow_unsigned_commands,
        new.agent.allow_unsigned_commands,
    ) {
        (false, true) => parts.push("unsigned commands now taken".into()),
        (true, false) => parts.push("unsigned commands now refused".into()),
        _ => {}
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// When the next start comes, as a log line written at `now` says it (`restart in 2s`,
/// `restart now`, `no restart`): the backoff counts from the exit, and what the program left
/// may have taken longer than that to end before the exit was told.
fn next_start_words(next_start: Option<Instant>, now: Instant, what: &str) -> String {
    match next_start {
        Some(at) if at > now => format!("{what} in {}", precise(at - now)),
        Some(_) => format!("{what} now"),
        None => format!("no {what}"),
    }
}

/// How an exit that was asked for, or a run that finished, is logged: with why, when the agent
/// itself asked (its `restart_every` was up, or it was unhealthy), rather than as if someone
/// had.
fn ended_words(info: &ExitInfo) -> String {
    let how = match (info.requested, info.killed_at_stop_timeout) {
        (true, true) => "killed: it had not stopped by its stop_timeout",
        (true, false) => "exited as asked",
        (false, _) => "finished",
    };
    match (info.requested, info.scheduled, &info.reason) {
        (true, true, _) => format!("{how} (restart_every was up)"),
        (true, false, Some(_)) => format!("{how} (unhealthy: restarted)"),
        _ => how.to_owned(),
    }
}

/// Logs what the state machine noticed; `last_line` is the last line a process wrote, for
/// an exit.
pub fn log_notice(notice: &Notice, last_line: impl FnOnce() -> String) {
    let name = &notice.name;
    match &notice.kind {
        NoticeKind::Started { pid, restarts } => {
            tracing::info!(process = %name, pid, restarts, "started");
        }
        NoticeKind::Exited(info)
            if info.requested || (info.next_start.is_none() && info.status.is_success()) =>
        {
            let how = ended_words(info);
            tracing::info!(process = %name, pid = info.pid, status = %info.status, runtime = %precise(info.runtime), "{how}");
        }
        NoticeKind::Exited(info) => {
            let next = next_start_words(info.next_start, Instant::now(), "restart");
            // The kernel's OOM killer is named here too: the journal is where a Pi is read.
            let how = match info.oom {
                Some(_) => "killed by the kernel: out of memory",
                None => "exited",
            };
            tracing::warn!(process = %name, pid = info.pid, status = %info.status, runtime = %precise(info.runtime), restarts = info.restarts, last_line = %Printable(last_line()), "{how}; {next}");
        }
        NoticeKind::SpawnFailed { error, next_start } => {
            let next = next_start_words(*next_start, Instant::now(), "retry");
            tracing::error!(process = %name, error = %error, "could not be started; {next}");
        }
        NoticeKind::CrashLoop { exits, window } => {
            tracing::error!(process = %name, "crash loop: {exits} exits within {}; retrying at the longest backoff", precise(*window));
        }
        NoticeKind::Recovered => {
            tracing::info!(process = %name, "recovered from its crash loop")
        }
        NoticeKind::Unhealthy { reason } => {
            tracing::error!(process = %name, "unhealthy: {}; restarting it", Printable(reason))
        }
        NoticeKind::Stopped { removed: false } => tracing::info!(process = %name, "stopped"),
        NoticeKind::Stopped { removed: true } => {
            tracing::info!(process = %name, "stopped: removed from the configuration")
        }
        NoticeKind::Failed { restarts } => {
            // None made: its restart policy or max_restarts allowed none.
            let after = match restarts {
                0 => "without a restart".to_owned(),
                1 => "after 1 restart without a stable run".to_owned(),
                n => format!("after {n} restarts without a stable run"),
            };
            tracing::error!(process = %name, "gave up {after}; `respawn-agent start {name}` tries again");
        }
    }
}

/// Logs a command's final outcome, and what was not audited one by one before it (with the
/// commands the link dropped unread), and publishes its audit event.
pub fn audit(
    link: &Link,
    request: &RemoteRequest,
    reply: &CommandReply,
    mut unaudited: BTreeMap<String, u64>,
) {
    for (why, n) in link.take_unread() {
        *unaudited.entry(why.to_owned()).or_default() += n;
    }
    if !unaudited.is_empty() {
        tracing::warn!(
            ?unaudited,
            "commands that were not logged or audited one by one since the last audit (over the budget, malformed, or shed)"
        );
    }
    let signer = request.signer.as_deref().unwrap_or("-");
    let process = request.process.as_deref().unwrap_or("-");
    let command = request.command.as_str();
    if reply.status == ReplyStatus::Succeeded {
        // Not `message`: the log prints a field of that name raw, and this one is of
        // anyone's words (a rejected command's name, its process).
        let detail = reply.message.as_deref().unwrap_or_default();
        tracing::info!(
            cmd_id = reply.cmd_id.as_str(),
            requester = request.requester.as_str(),
            signer,
            command,
            process,
            detail,
            "remote command succeeded"
        );
    } else {
        let outcome = match reply.status {
            ReplyStatus::Rejected => "rejected",
            _ => "failed",
        };
        tracing::warn!(
            cmd_id = reply.cmd_id.as_str(),
            requester = request.requester.as_str(),
            signer,
            command,
            process,
            reason = reply.reason.map_or("-", |r| r.as_str()),
            detail = reply.message.as_deref().unwrap_or_default(),
            "remote command {outcome}"
        );
    }
    let event = EventKind::Command {
        cmd_id: reply.cmd_id.clone(),
        command: command.to_owned(),
        requester: request.requester.clone(),
        signer: request.signer.clone(),
        outcome: reply.status,
        reason: reply.reason,
        message: reply.message.clone(),
        sha256: reply
            .config
            .as_ref()
            .filter(|c| c.changes.is_some() && !c.dry_run && reply.status == ReplyStatus::Succeeded)
            .map(|c| c.sha256.clone()),
        dry_run: reply.config.as_ref().is_some_and(|c| c.dry_run),
        unaudited,
    };
    link.event(request.process.as_deref(), event);
}

/// The heartbeat of an agent with these processes, up since `started`.
pub fn heartbeat(
    agent: &str,
    interval: Duration,
    started: Instant,
    views: &[UnitView],
) -> Heartbeat {
    let memory = procfs::memory_kb();
    Heartbeat {
        v: respawn_common::messages::VERSION,
        agent: agent.to_owned(),
        at: SystemTime::now(),
        interval_secs: interval.as_secs(),
        uptime_secs: started.elapsed().as_secs(),
        running: views
            .iter()
            .filter(|v| v.state == ProcessState::Running)
            .count() as u32,
        processes: views.len() as u32,
        load1: procfs::load1(),
        mem_total_kb: memory.map(|m| m.0),
        mem_available_kb: memory.map(|m| m.1),
        cpu_temp_c: procfs::cpu_temperature(),
    }
}

/// Publishes the retained state of the processes `names`, with the `notify` of their
/// configuration.
pub fn states(link: &Link, view: &View, processes: &[ProcessConfig], names: &BTreeSet<String>) {
    let clock = WallClock::now();
    for name in names {
        let Some(status) = view.status(name, &clock) else {
            continue;
        };
        let notify = processes
            .iter()
            .find(|p| &p.name == name)
            .map(|p| p.notify)
            .unwrap_or_default();
        link.process(&status, notify);
    }
}

/// The event for a notice, with the output of the run that ended for an exit.
pub fn event(notice: &Notice, children: &Children) -> EventKind {
    let clock = WallClock::now();
    event_kind(&notice.kind, &clock, || {
        let mut lines = children.lines(&notice.name, TAIL_LINES + 1);
        // Only the run that ended: the ring also holds earlier runs' lines.
        if let NoticeKind::Exited(info) = &notice.kind {
            let started = clock.at(info.at.checked_sub(info.runtime).unwrap_or(info.at));
            lines.retain(|l| l.at >= started);
        }
        lines
    })
}

impl super::Runtime {
    /// The heartbeat, and with it what each running process uses, in its retained state.
    pub(super) fn heartbeat(&mut self) {
        let (Some(link), Some(mqtt)) = (&self.link, &self.config.mqtt) else {
            return;
        };
        self.children.sample_usage();
        let running: BTreeSet<String> = self
            .supervisor
            .views()
            .filter(|v| v.pid.is_some())
            .map(|v| v.name)
            .collect();
        // The wall clock stepped (NTP, at last): the birth and every state are told again by
        // the new one (states are made from monotonic instants; the birth moves its start).
        let told = match clock_step(&mut self.clocks) {
            None => running,
            Some(moved) => {
                link.clock_moved(moved);
                self.supervisor.views().map(|v| v.name).collect()
            }
        };
        states(link, &self.view(), &self.config.processes, &told);
        let views: Vec<_> = self.supervisor.views().collect();
        let heartbeat = heartbeat(&self.config.agent.id, mqtt.heartbeat, self.started, &views);
        link.heartbeat(&heartbeat);
    }
}

/// How far the wall clock stepped since `clocks` were read, said in the log, with `clocks`
/// read again; `None` when it only moved with time.
pub fn clock_step(clocks: &mut WallClock) -> Option<ClockOffset> {
    let now = WallClock::now();
    let moved = now.moved_since(&std::mem::replace(clocks, now));
    let ms = moved.ahead_ms();
    if ms == 0 {
        return None;
    }
    let step = step_words(ms);
    tracing::warn!("the system clock moved {step} (NTP synchronised?): the agent's start and its processes' times are told again by it");
    Some(moved)
}

/// A step of the wall clock of `ms` in words, to the nearest second: the two clocks are read
/// a moment apart, and a week's step read a millisecond short was said as "6d23h".
fn step_words(ms: i64) -> String {
    let seconds = ms.unsigned_abs().saturating_add(500) / 1000;
    let way = if ms > 0 { "forward" } else { "back" };
    format!("{way} by {}", short(Duration::from_secs(seconds)))
}

/// Converts monotonic instants into wall-clock times for reports, from one reading of both
/// clocks, so that times converted together stay exactly comparable.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    mono: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// How far the wall clock moved, beyond the time that passed, since `before` (0 within
    /// [`ClockOffset::TOLERANCE`]): NTP's first step on a Pi that booted with the time it was
    /// shut down at.
    pub fn moved_since(&self, before: &WallClock) -> ClockOffset {
        ClockOffset::between(self.wall, before.at(self.mono))
    }

    pub fn at(&self, t: Instant) -> SystemTime {
        if t <= self.mono {
            self.wall - (self.mono - t)
        } else {
            self.wall + (t - self.mono)
        }
    }
}

/// A process in `state` with nothing else to tell, for tests.
#[cfg(test)]
pub(crate) fn bare_status(name: &str, state: ProcessState) -> ProcessStatus {
    ProcessStatus {
        name: name.into(),
        state,
        pid: None,
        since: SystemTime::UNIX_EPOCH,
        restarts: 0,
        crash_loop: false,
        crash_loop_since: None,
        manually_stopped: false,
        last_exit: None,
        spawn_error: None,
        next_start: None,
        health: None,
        usage: None,
        remote: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_of_the_clock_is_said_to_the_nearest_second() {
        let week_ms = 7 * 86_400_000;
        assert_eq!(step_words(week_ms - 1), "forward by 7d");
        assert_eq!(step_words(week_ms + 499), "forward by 7d");
        assert_eq!(step_words(-(week_ms - 3)), "back by 7d");
        assert_eq!(step_words(90_400), "forward by 1m30s");
    }
    use respawn_common::status::Stream;
    use std::time::SystemTime;

    fn line(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    /// A new-user run saw "exited; restart in 1s 93ms" logged after what a crash left had
    /// taken 5 s to end, and the start 4 ms later.
    #[test]
    fn a_next_start_is_said_from_when_the_line_is_written() {
        let now = Instant::now();
        let exited = now - Duration::from_millis(5500);
        let due = exited + Duration::from_millis(1093);
        assert_eq!(next_start_words(Some(due), now, "restart"), "restart now");
        assert_eq!(next_start_words(Some(now), now, "retry"), "retry now");
        let later = now + Duration::from_millis(1093);
        assert_eq!(
            next_start_words(Some(later), now, "restart"),
            "restart in 1s 93ms"
        );
        assert_eq!(next_start_words(None, now, "retry"), "no retry");
    }

    /// A new-user run read "exited as asked" in the journal after a restart nobody asked for.
    #[test]
    fn an_exit_the_agent_asked_for_itself_says_why() {
        let exit = |scheduled: bool, reason: Option<&str>| ExitInfo {
            pid: 1,
            status: respawn_common::status::ExitStatus::Code { code: 0 },
            at: Instant::now(),
            runtime: Duration::from_secs(60),
            restarts: 0,
            requested: true,
            shutdown: false,
            next_start: None,
            reason: reason.map(str::to_owned),
            oom: None,
            scheduled,
            killed_at_stop_timeout: false,
        };
        assert_eq!(ended_words(&exit(false, None)), "exited as asked");
        assert_eq!(
            ended_words(&exit(true, None)),
            "exited as asked (restart_every was up)"
        );
        assert_eq!(
            ended_words(&exit(false, Some("memory: 166 MB in use"))),
            "exited as asked (unhealthy: restarted)"
        );
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
        let bytes: usize = tail.iter().map(wire_size).sum();
        assert!(bytes <= TAIL_BYTES);
        assert_eq!(tail.len(), 7);
    }

    #[test]
    fn a_step_of_the_wall_clock_is_told_from_time_passing() {
        let before = WallClock::now();
        let later = |passed: u64, wall: SystemTime| WallClock {
            mono: before.mono + Duration::from_secs(passed),
            wall,
        };
        let passed = Duration::from_secs(30);
        let same = later(30, before.wall + passed);
        assert_eq!(same.moved_since(&before).ahead_ms(), 0);
        // Slewed by NTP, or read a little late: within the tolerance.
        let slewed = later(30, before.wall + passed + Duration::from_millis(4_000));
        assert_eq!(slewed.moved_since(&before).ahead_ms(), 0);
        let week = Duration::from_secs(7 * 86_400);
        let stepped = later(30, before.wall + passed + week);
        let moved = stepped.moved_since(&before);
        assert_eq!(moved.ahead_ms(), week.as_millis() as i64);
        // What was timed by the old clock, by the new one.
        assert_eq!(moved.their_now(before.wall), before.wall + week);
        let back = later(30, before.wall + passed - Duration::from_secs(60));
        assert_eq!(back.moved_since(&before).ahead_ms(), -60_000);
    }

    #[test]
    fn logs_keep_the_newest_that_fit() {
        let lines = vec![line("old"), line("mid"), line("new")];
        let two = 2 * wire_size(&lines[0]);
        let (kept, cut) = newest_within(lines, two);
        assert_eq!(
            kept.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["mid", "new"]
        );
        assert!(cut);
    }

    #[test]
    fn a_status_reply_keeps_the_first_processes_that_fit() {
        let status = |n: usize| bare_status(&format!("p{n:04}"), ProcessState::Stopped);
        let many: Vec<ProcessStatus> = (0..2000).map(status).collect();
        let (kept, cut) = first_within(many.clone(), STATUS_REPLY_BYTES);
        assert!(cut);
        assert_eq!(kept, many[..kept.len()]);
        let mut reply = CommandReply::new("c", "pi", ReplyStatus::Succeeded);
        reply.processes = Some(kept);
        let bytes = serde_json::to_vec(&reply).unwrap().len();
        assert!(bytes <= STATUS_REPLY_BYTES + 1024, "{bytes}");
        assert!(bytes > STATUS_REPLY_BYTES - 1024, "{bytes}: room left");
        let few: Vec<ProcessStatus> = (0..3).map(status).collect();
        assert_eq!(first_within(few.clone(), STATUS_REPLY_BYTES), (few, false));
    }
}
