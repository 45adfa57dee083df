//! After the agent died hard (kill -9, OOM, a crash), its children may still run. Before
//! starting anything, the agent stops what its previous run recorded, so that no program ever
//! runs twice, and says so: each one stopped becomes an `exited` event, so that a reader who
//! saw it start sees it end before it starts again.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Config;
use crate::shell::process;
use crate::shell::procfs::{self, Stat};
use crate::state::StateDir;

/// How often the stop of leftovers is checked. Only while the agent starts, never when idle.
const POLL: Duration = Duration::from_millis(20);

/// Used for leftovers of a process that is no longer in the configuration.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SIGKILLed leftovers may take to disappear (a process in uninterruptible sleep
/// cannot die at once) before the agent goes on without them.
const KILL_GRACE: Duration = Duration::from_secs(5);

struct Leftover {
    members: Vec<Stat>,
    kill_at: Instant,
    killed: bool,
    stopped: Stopped,
}

/// A main process of an earlier run that was still running, and was stopped.
#[derive(Clone, Debug)]
pub struct Stopped {
    pub name: String,
    pub pid: u32,
    /// The last signal it was sent: the agent is not its parent and cannot learn more.
    pub signal: Signal,
    /// How long it had run when it was stopped.
    pub runtime: Duration,
}

/// Stops every recorded child of an earlier run that still runs: its stop signal to every
/// member of its session, SIGKILL after its stop timeout. Returns once all are gone, with the
/// main processes that were stopped.
pub async fn stop(state: &StateDir, config: &Config) -> Vec<Stopped> {
    let boot_id = match procfs::boot_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the boot id; not looking for leftovers of an earlier run");
            return Vec::new();
        }
    };
    let now = Instant::now();
    let mut leftovers = Vec::new();
    for (name, record) in state.child_records() {
        if config.processes.iter().any(|p| p.name == name) {
            state.forget_child(&name);
        } else {
            state.remove_child(&name);
        }
        if record.boot_id != boot_id {
            continue;
        }
        let members = procfs::session_members(record.pid, record.start_time);
        if members.is_empty() {
            continue;
        }
        let (signal, timeout) = config
            .processes
            .iter()
            .find(|p| p.name == name)
            .map_or((Signal::SIGTERM, DEFAULT_STOP_TIMEOUT), |p| {
                (p.stop_signal, p.stop_timeout)
            });
        tracing::warn!(
            process = %name,
            pid = record.pid,
            processes = members.len(),
            "stopping what an earlier run of the agent left running"
        );
        let runtime = members
            .iter()
            .find(|m| m.pid == record.pid)
            .and_then(procfs::age)
            .unwrap_or_default();
        for member in &members {
            send(member.pid, signal);
            send(member.pid, Signal::SIGCONT);
        }
        leftovers.push(Leftover {
            stopped: Stopped {
                name,
                pid: record.pid,
                signal,
                runtime,
            },
            members,
            kill_at: now + timeout,
            killed: false,
        });
    }
    let mut stopped = Vec::new();
    while !leftovers.is_empty() {
        let now = Instant::now();
        for leftover in &mut leftovers {
            leftover.members.retain(procfs::still_running);
            if !leftover.killed && now >= leftover.kill_at && !leftover.members.is_empty() {
                tracing::warn!(process = %leftover.stopped.name, "leftovers did not stop in time; sending SIGKILL");
                for member in &leftover.members {
                    send(member.pid, Signal::SIGKILL);
                }
                leftover.killed = true;
                leftover.stopped.signal = Signal::SIGKILL;
            }
            if leftover.killed
                && now >= leftover.kill_at + KILL_GRACE
                && !leftover.members.is_empty()
            {
                let pids: Vec<u32> = leftover.members.iter().map(|m| m.pid).collect();
                tracing::error!(process = %leftover.stopped.name, ?pids, "leftovers survive SIGKILL; starting anyway");
                leftover.members.clear();
            }
        }
        let (gone, left): (Vec<Leftover>, Vec<Leftover>) =
            leftovers.into_iter().partition(|l| l.members.is_empty());
        stopped.extend(gone.into_iter().map(|l| l.stopped));
        leftovers = left;
        if !leftovers.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    stopped
}

fn send(pid: u32, signal: Signal) {
    if let Err(e) = process::signal_process(pid, signal) {
        tracing::error!(pid, error = %e, "cannot signal a leftover process");
    }
}
