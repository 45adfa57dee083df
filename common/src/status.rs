//! What the agent knows about a supervised process: its state, how it last ended, its recent
//! output, and the snapshot that `respawn-agent status` prints and the MQTT link publishes.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Where a supervised process is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// The agent is starting the process.
    Starting,
    /// The process is running.
    Running,
    /// The process exited and waits for its next start.
    Backoff,
    /// The program could not be started (missing binary, permissions, bad working directory);
    /// the agent retries with backoff.
    SpawnFailed,
    /// The process exited too often within the crash-loop window; the agent keeps retrying
    /// at the longest backoff.
    CrashLoop,
    /// The agent is stopping the process.
    Stopping,
    /// The process is not running and will not be started until asked to: it was stopped, it
    /// is not autostarted, or its restart policy says it is done.
    Stopped,
    /// The agent gave up after `max_restarts` unstable restarts.
    Failed,
    /// A state this reader does not know, from a newer agent (the protocol's readers take
    /// unknown values as "something newer"). Never what an agent of this version says.
    #[serde(other)]
    Unknown,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Backoff => "backoff",
            Self::SpawnFailed => "spawn_failed",
            Self::CrashLoop => "crash_loop",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended: an exit code, or the signal that killed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExitStatus {
    Code {
        code: i32,
    },
    Signal {
        /// The signal's name, e.g. `SIGSEGV`, so that readers on other platforms (where the
        /// numbers differ) show the right one.
        signal: String,
        #[serde(default)]
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// Exit code 0.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Code { code: 0 })
    }
}

/// `exit 1`, `SIGSEGV`, `SIGABRT (core dumped)`.
impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code { code } => write!(f, "exit {code}"),
            Self::Signal {
                signal,
                core_dumped: false,
            } => f.write_str(signal),
            Self::Signal {
                signal,
                core_dumped: true,
            } => write!(f, "{signal} (core dumped)"),
        }
    }
}

/// The record of one exit of a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitStatus,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    /// How long the run that ended lasted, in milliseconds.
    pub runtime_ms: u64,
    /// Automatic restarts of this process before this exit.
    pub restarts: u32,
    /// Whether the exit was asked for (a stop, a restart, a shutdown), or the agent stopped an
    /// unhealthy process to restart it (then `reason` says why).
    pub requested: bool,
    /// When the next start is due, if one will follow.
    #[serde(with = "crate::time::rfc3339_opt", default)]
    pub next_start: Option<SystemTime>,
    /// Why the agent stopped the process itself: a failed health check, a missed watchdog
    /// ping, too much memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when the kernel killed it (or one of its processes) for want of memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// With `oom_killed`: the memory limit (bytes) the kernel enforced on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// With `requested`: restarted because its `restart_every` was up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
    /// It did not end within its `stop_timeout` of the stop signal, and was killed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub killed_at_stop_timeout: bool,
}

impl ExitRecord {
    /// How it ended, in words: `exit 1`, `SIGSEGV`, or `killed by the kernel: out of memory
    /// (limit 200 MB)`.
    pub fn describe(&self) -> String {
        describe_exit(&self.status, self.oom_killed, self.memory_max)
    }
}

/// `exit 1`, `SIGSEGV`, or, for an out-of-memory kill, `killed by the kernel: out of memory`
/// with the limit it ran into.
pub fn describe_exit(status: &ExitStatus, oom_killed: bool, memory_max: Option<u64>) -> String {
    match (oom_killed, memory_max) {
        (false, _) => status.to_string(),
        (true, None) => "killed by the kernel: out of memory".to_owned(),
        (true, Some(limit)) => format!(
            "killed by the kernel: out of memory (limit {})",
            megabytes(limit)
        ),
    }
}

/// `200 MB`, `1.5 GB`: memory sizes as people write limits.
pub fn megabytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    match mb {
        mb if mb >= 1000.0 => format!("{:.1} GB", mb / 1000.0),
        mb if mb >= 10.0 => format!("{mb:.0} MB"),
        mb => format!("{mb:.1} MB"),
    }
}

/// What a running process uses: all its processes, helpers and daemons included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time since it started, in seconds.
    pub cpu_seconds: f64,
    /// Share of one CPU core over the last sampling interval, in percent (absent after the
    /// first sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Memory in use, in bytes: its cgroup's `memory.current`, or the sum of its processes'
    /// proportional set sizes (PSS).
    pub memory_bytes: u64,
}

/// A running process's health, as its probes and messages tell it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Failed probes in a row.
    #[serde(default)]
    pub failures: u32,
    /// Why the latest probe failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The process's own word on how it is (`STATUS=` of the notify protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Passing.
    Healthy,
    /// Failing, not yet for long enough to be restarted.
    Failing,
    /// No verdict yet (just started), or one from a newer agent.
    #[serde(other)]
    Unknown,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Unknown => "unknown",
        }
    }
}

/// A snapshot of one supervised process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    pub state: ProcessState,
    /// The main process's pid while one exists.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When the process entered its current state.
    #[serde(with = "crate::time::rfc3339")]
    pub since: SystemTime,
    /// Automatic restarts since it was last started by hand or by the agent's start-up.
    pub restarts: u32,
    /// Set while the process exits more often than its crash-loop limit allows.
    #[serde(default)]
    pub crash_loop: bool,
    /// When the crash loop began, while it lasts (older agents do not say).
    #[serde(
        with = "crate::time::rfc3339_opt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub crash_loop_since: Option<SystemTime>,
    /// Set when the process was stopped by hand; it stays stopped across agent restarts.
    #[serde(default)]
    pub manually_stopped: bool,
    #[serde(default)]
    pub last_exit: Option<ExitRecord>,
    /// The error of the last failed start, while the process waits to retry.
    #[serde(default)]
    pub spawn_error: Option<String>,
    #[serde(with = "crate::time::rfc3339_opt", default)]
    pub next_start: Option<SystemTime>,
    /// What its health check (or the notify protocol) says, for processes that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// What it uses while it runs, refreshed with the heartbeat and on `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Applied over the network (the agent's `remote.toml`), not from its local file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote: bool,
}

impl ProcessStatus {
    /// Its state as status tables show it: with a crash loop outside the crash-loop state
    /// and a stop by hand noted.
    pub fn state_label(&self) -> String {
        self.state_shown().to_string()
    }

    /// [`ProcessStatus::state_label`], to be written into a larger text.
    pub fn state_shown(&self) -> impl fmt::Display + '_ {
        crate::text::written(move |f| {
            f.write_str(self.state.as_str())?;
            if self.crash_loop && self.state != ProcessState::CrashLoop {
                f.write_str(" (crash loop)")?;
            }
            match self.manually_stopped {
                true => f.write_str(" (by hand)"),
                false => Ok(()),
            }
        })
    }

    /// Its name as status tables show it: marked when it came over the network.
    pub fn name_label(&self) -> String {
        self.name_shown().to_string()
    }

    /// [`ProcessStatus::name_label`], to be written into a larger text.
    pub fn name_shown(&self) -> impl fmt::Display + '_ {
        crate::text::written(move |f| match self.remote {
            true => write!(f, "{} (remote)", self.name),
            false => f.write_str(&self.name),
        })
    }
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// Which output a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
    pub stream: Stream,
    pub text: String,
}

/// `2026-11-25T00:11:50.992Z stderr text`, as `logs` commands print it.
impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = crate::time::format(self.at);
        write!(f, "{at} {} {}", self.stream.as_str(), self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reads_like_a_person_would_say_it() {
        assert_eq!(ExitStatus::Code { code: 1 }.to_string(), "exit 1");
        let segv = ExitStatus::Signal {
            signal: "SIGSEGV".into(),
            core_dumped: true,
        };
        assert_eq!(segv.to_string(), "SIGSEGV (core dumped)");
    }

    #[test]
    fn exit_status_round_trips_through_json() {
        for status in [
            ExitStatus::Code { code: 137 },
            ExitStatus::Signal {
                signal: "SIGKILL".into(),
                core_dumped: false,
            },
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(serde_json::from_str::<ExitStatus>(&json).unwrap(), status);
        }
        assert_eq!(
            serde_json::to_string(&ExitStatus::Code { code: 1 }).unwrap(),
            r#"{"code":1}"#
        );
    }

    #[test]
    fn states_serialise_in_snake_case() {
        assert_eq!(
            serde_json::to_string(&ProcessState::CrashLoop).unwrap(),
            r#""crash_loop""#
        );
        assert_eq!(ProcessState::SpawnFailed.to_string(), "spawn_failed");
    }
}
