//! After the agent died hard (kill -9, OOM, a crash), its children may still run. Before
//! starting anything, the agent stops what its previous run recorded, so that no program ever
//! runs twice.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Config;
use crate::process;
use crate::procfs::{self, Stat};
use crate::state_dir::StateDir;

/// How often the stop of leftovers is checked. Only while the agent starts, never when idle.
const POLL: Duration = Duration::from_millis(20);

/// Used for leftovers of a process that is no longer in the configuration.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SIGKILLed leftovers may take to disappear (a process in uninterruptible sleep
/// cannot die at once) before the agent goes on without them.
const KILL_GRACE: Duration = Duration::from_secs(5);

struct Leftover {
    name: String,
    members: Vec<Stat>,
    kill_at: Instant,
    killed: bool,
}

/// Stops every recorded child of an earlier run that still runs: its stop signal to every
/// member of its session, SIGKILL after its stop timeout. Returns once all are gone.
pub async fn stop(state: &StateDir, config: &Config) {
    let boot_id = match procfs::boot_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the boot id; not looking for leftovers of an earlier run");
            return;
        }
    };
    let now = Instant::now();
    let mut leftovers = Vec::new();
    for (name, record) in state.child_records() {
        state.forget_child(&name);
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
        for member in &members {
            send(member.pid, signal);
            send(member.pid, Signal::SIGCONT);
        }
        leftovers.push(Leftover {
            name,
            members,
            kill_at: now + timeout,
            killed: false,
        });
    }
    while !leftovers.is_empty() {
        let now = Instant::now();
        for leftover in &mut leftovers {
            leftover.members.retain(procfs::still_running);
            if !leftover.killed && now >= leftover.kill_at && !leftover.members.is_empty() {
                tracing::warn!(process = %leftover.name, "leftovers did not stop in time; sending SIGKILL");
                for member in &leftover.members {
                    send(member.pid, Signal::SIGKILL);
                }
                leftover.killed = true;
            }
            if leftover.killed
                && now >= leftover.kill_at + KILL_GRACE
                && !leftover.members.is_empty()
            {
                let pids: Vec<u32> = leftover.members.iter().map(|m| m.pid).collect();
                tracing::error!(process = %leftover.name, ?pids, "leftovers survive SIGKILL; starting anyway");
                leftover.members.clear();
            }
        }
        leftovers.retain(|l| !l.members.is_empty());
        if !leftovers.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
}

fn send(pid: u32, signal: Signal) {
    if let Err(e) = process::signal_process(pid, signal) {
        tracing::error!(pid, error = %e, "cannot signal a leftover process");
    }
}
