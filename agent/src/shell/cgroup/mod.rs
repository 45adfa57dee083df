//! Containment by cgroup v2: every process in a cgroup of its own (`proc.<name>`), entered
//! before `exec`, so that a stop reaches everything it started — daemons that left its
//! session and process group included — and its CPU, memory and out-of-memory kills can be
//! read from the kernel. Where the agent cannot manage a cgroup subtree it falls back to
//! process groups (see [`Containment`]).
//!
//! The subtree is the agent's own cgroup when systemd delegated it (`Delegate=yes`): the agent
//! moves itself into the leaf `agent` (cgroup v2 allows processes only in leaves once
//! controllers are enabled) and makes one cgroup per process beside it. Otherwise, as root,
//! it makes `respawn-<agent id>-<hash of the state directory>` under its current cgroup: the
//! hash keeps two agents on one machine apart, and the same state directory finds the same
//! cgroups again after a crash.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::ContainmentMode;
use crate::shell::process;
use crate::shell::procfs;

mod place;

pub use place::{memory_controller_here, memory_controller_on_v1, unmanageable_here};
use place::{short_hash, Place};

/// How long the processes of a killed cgroup may take to be gone (one in uninterruptible
/// sleep cannot die at once) before the next start goes ahead without waiting for them.
const EMPTY_LIMIT: Duration = Duration::from_secs(5);

/// How processes are kept together, so that a stop reaches all of them.
pub enum Containment {
    Cgroups(Cgroups),
    /// Each process leads a session and process group of its own; a descendant that starts a
    /// session of its own gets no stop signal, and is found by its run's id only when the
    /// main process has ended.
    ProcessGroups,
}

impl Containment {
    /// The word the birth message and `status` use.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cgroups(_) => "cgroup",
            Self::ProcessGroups => "process-group",
        }
    }

    /// Sets containment up as `wanted`: cgroups when the agent can manage a subtree, with why
    /// not when it cannot. `Err` only when cgroups are required and unavailable.
    pub fn set_up(
        wanted: ContainmentMode,
        agent_id: &str,
        state_dir: &Path,
    ) -> Result<Self, String> {
        if wanted == ContainmentMode::ProcessGroup {
            tracing::info!("containment: process groups, as configured");
            return Ok(Self::ProcessGroups);
        }
        match Cgroups::set_up(agent_id, state_dir) {
            Ok(cgroups) => {
                tracing::info!(
                    cgroup = %cgroups.base.display(),
                    memory_controller = cgroups.memory,
                    "containment: a cgroup per process"
                );
                Ok(Self::Cgroups(cgroups))
            }
            Err(why) if wanted == ContainmentMode::Cgroup => Err(format!(
                "[agent] containment = \"cgroup\", but the agent cannot manage cgroups: {why}"
            )),
            Err(why) => {
                tracing::warn!("containment: process groups only ({why}); a program that daemonizes into a session of its own gets no stop signal (it is killed once its main process ends, if it kept $RESPAWN_INVOCATION). Run the agent under systemd with Delegate=yes, or as root, for a cgroup per process");
                Ok(Self::ProcessGroups)
            }
        }
    }

    /// The agent is done: the cgroups it made go, if they are empty.
    pub fn tidy(&self) {
        if let Self::Cgroups(cgroups) = self {
            cgroups.tidy();
        }
    }
}

/// The cgroup subtree the agent manages.
pub struct Cgroups {
    /// Each process's cgroup is `proc.<name>` in here.
    base: PathBuf,
    /// The memory controller is on for the processes' cgroups: `memory.max`, `memory.current`
    /// and `memory.events` work.
    memory: bool,
    /// `base` is the agent's own cgroup, delegated by systemd, which removes it.
    delegated: bool,
    /// The cgroups whose main process ended while others of it remain, given time to end on
    /// their stop signal ([`Cgroups::stop_left`]), with when they were killed once they are.
    left: Mutex<HashMap<String, Option<Instant>>>,
}

/// A process's cgroup, open, for a child to start in.
pub struct CgroupEntry {
    /// The directory, for `clone3` with `CLONE_INTO_CGROUP`.
    pub dir: OwnedFd,
    path: PathBuf,
    /// Made for this run: nothing was ever killed in it.
    pub fresh: bool,
}

impl CgroupEntry {
    /// Its `cgroup.procs`, open for writing, for a child to move itself in before `exec`
    /// where `clone3` cannot start it inside.
    pub fn procs(&self) -> io::Result<OwnedFd> {
        Ok(File::options()
            .write(true)
            .open(self.path.join("cgroup.procs"))?
            .into())
    }
}

/// What a cgroup's processes have used, read at one moment: the runtime makes the reported
/// `status::Usage` (with the share of a core) from two of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// CPU time of everything in it, since it was made.
    pub cpu: Duration,
    /// `None` while it cannot be read ([`procfs::memory_of`]).
    pub memory_bytes: Option<u64>,
}

impl Cgroups {
    fn set_up(agent_id: &str, state_dir: &Path) -> Result<Self, String> {
        let Place {
            own_dir,
            at_root,
            delegated,
        } = Place::here()?;
        if delegated {
            return Self::delegated(own_dir);
        }
        let base = own_dir.join(format!("respawn-{agent_id}-{}", short_hash(state_dir)));
        make_dir(&base)?;
        if at_root {
            // The root cgroup may hold processes and enable controllers at once.
            let _ = enable_memory(&own_dir);
        }
        let memory = enable_memory(&base).is_ok();
        Ok(Self {
            base,
            memory,
            delegated: false,
            left: Mutex::default(),
        })
    }

    /// Under systemd with `Delegate=yes`: the agent's own cgroup is its to manage.
    fn delegated(own_dir: PathBuf) -> Result<Self, String> {
        let leaf = own_dir.join("agent");
        make_dir(&leaf)?;
        write(&leaf.join("cgroup.procs"), "0")
            .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
        let memory = enable_memory(&own_dir).is_ok();
        Ok(Self {
            base: own_dir,
            memory,
            delegated: true,
            left: Mutex::default(),
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.base.join(format!("proc.{name}"))
    }

    /// Makes `name`'s cgroup for one run (with `memory.max` when given and the memory
    /// controller is on) and opens it, for a child to start in.
    ///
    /// Each run gets a fresh cgroup: its counters start at zero, and no kill of an earlier
    /// run hangs over it — on some kernels (6.18 here) a process started into a cgroup that
    /// was once killed through `cgroup.kill` is killed at once. A cgroup that cannot be made
    /// afresh (something of the last run survives in it) is used as it is.
    pub fn prepare(&self, name: &str, memory_max: Option<u64>) -> io::Result<CgroupEntry> {
        let dir = self.dir(name);
        let fresh = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => remove_tree(&dir)
                .and_then(|()| fs::create_dir(&dir))
                .is_ok(),
            Err(e) => return Err(e),
        };
        if self.memory {
            let max = memory_max.map_or("max".to_owned(), |bytes| bytes.to_string());
            write(&dir.join("memory.max"), &max)?;
        }
        // Opened close-on-exec (as std opens every file): a child keeps it only until exec.
        let handle = File::open(&dir)?;
        Ok(CgroupEntry {
            dir: handle.into(),
            path: dir,
            fresh,
        })
    }

    /// Whether the kernel enforces `max_memory` (no polling needed).
    pub fn enforces_memory(&self) -> bool {
        self.memory
    }

    /// Ends what the ended main process `main` of `name` left in its cgroup, and says how
    /// many processes that is: given time to end ([`Cgroups::drain`]; [`Cgroups::kill_left`]
    /// meanwhile), sent `signal` first unless a stop sent them its own already.
    pub fn stop_left(&self, name: &str, main: u32, signal: Option<Signal>) -> usize {
        let left = self.pids(name).into_iter().filter(|&p| p != main).count();
        if left == 0 {
            self.kill(name);
            return 0;
        }
        // A kill made while the main process lived keeps its time: no other kill is coming.
        self.left_lock().entry(name.to_owned()).or_insert(None);
        if let Some(signal) = signal {
            self.signal(name, signal);
        }
        left
    }

    /// SIGKILLs the members of the process group `leader` leads that are not in `name`'s
    /// cgroup: those that moved to a cgroup elsewhere (`systemd-run --scope`), which a stop
    /// reached through the group and which its kill, of the cgroup, would not reach. Before the
    /// leader is reaped, while its pid names the group.
    pub fn end_group_elsewhere(&self, name: &str, leader: u32) {
        let members: Vec<procfs::Stat> = procfs::all_processes()
            .into_iter()
            .filter(|stat| stat.pgrp == leader && stat.pid != leader)
            .collect();
        if members.is_empty() {
            return;
        }
        // Read after the members: one forked in the cgroup meanwhile is no member found.
        let inside = self.pids(name);
        for member in members.iter().filter(|m| !inside.contains(&m.pid)) {
            let _ = process::signal_found(member, Signal::SIGKILL);
        }
    }

    /// SIGKILLs what an ended main process left in `name`'s cgroup, if it is being given time
    /// to end: at a stop's deadline, or a shutdown's force.
    pub fn kill_left(&self, name: &str) {
        if let Some(killed) = self.left_lock().get_mut(name) {
            self.kill(name);
            killed.get_or_insert_with(Instant::now);
        }
    }

    /// Notes a kill of `name`'s cgroup made while its main process lived (a stop's deadline):
    /// what survives it is waited for [`EMPTY_LIMIT`] at most once that process is reaped.
    pub fn killed_with_main(&self, name: &str) {
        self.left_lock()
            .insert(name.to_owned(), Some(Instant::now()));
    }

    fn left_lock(&self) -> MutexGuard<'_, HashMap<String, Option<Instant>>> {
        self.left.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `name`'s cgroup is empty, then removes it, so that the next run gets a
    /// cgroup of its own. What [`Cgroups::stop_left`] gave time is killed after `kill_after`
    /// (what a main process that ended by itself left), or by [`Cgroups::kill_left`] (a stop's
    /// leftovers, at the stop's deadline); what it did not was killed already. What survives
    /// SIGKILL (in uninterruptible sleep) is waited for [`EMPTY_LIMIT`] at most.
    pub async fn drain(&self, name: &str, kill_after: Option<Duration>) {
        let started = Instant::now();
        self.left_lock()
            .entry(name.to_owned())
            .or_insert(Some(started));
        let ended = super::polled(|| {
            if self.is_empty(name) {
                return Some(true);
            }
            let killed = self.left_lock().get(name).copied().flatten();
            match (killed, kill_after) {
                (Some(at), _) if at.elapsed() >= EMPTY_LIMIT => return Some(false),
                (None, Some(grace)) if started.elapsed() >= grace => {
                    tracing::warn!(process = %name, pids = ?self.pids(name), "what the main process left did not end in time on its stop signal; sending it SIGKILL");
                    self.kill_left(name);
                }
                _ => {}
            }
            None
        })
        .await;
        self.left_lock().remove(name);
        match ended {
            true => self.remove(name),
            false => {
                tracing::error!(process = %name, pids = ?self.pids(name), "processes in its cgroup survive SIGKILL (in uninterruptible sleep?); going on without waiting for them")
            }
        }
    }

    /// The processes in `name`'s cgroup, and in the cgroups a program made in it.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        pids_under(&self.dir(name))
    }

    /// Sends `signal` to every process in `name`'s cgroup, followed by SIGCONT so that a
    /// stopped one can act on it; SIGKILL is [`Cgroups::kill`].
    pub fn signal(&self, name: &str, signal: Signal) {
        self.signal_outside(name, signal, None);
    }

    /// [`Cgroups::signal`], but with `group` only for the processes outside that process
    /// group, which was signalled as a whole: each process gets the stop signal once, for a
    /// second one makes many programs skip their graceful stop (Node's, Python's asyncio
    /// servers', uvicorn's "force quit").
    pub fn signal_outside(&self, name: &str, signal: Signal, group: Option<u32>) {
        if signal == Signal::SIGKILL {
            return self.kill(name);
        }
        let as_pid = |pid: u32| nix::unistd::Pid::from_raw(pid as i32);
        let group = group.map(as_pid);
        for pid in self.pids(name) {
            if group.is_none() || nix::unistd::getpgid(Some(as_pid(pid))).ok() != group {
                let _ = process::signal_member(pid, signal);
            }
        }
    }

    fn signal_each(&self, name: &str, signal: Signal) {
        for pid in self.pids(name) {
            let _ = process::signal_member(pid, signal);
        }
    }

    /// SIGKILLs everything in `name`'s cgroup: `cgroup.kill` where the kernel has it (5.14),
    /// else frozen, killed one by one, and thawed, so that nothing forks in between.
    pub fn kill(&self, name: &str) {
        let dir = self.dir(name);
        if !dir.exists() {
            return;
        }
        match write(&dir.join("cgroup.kill"), "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let freeze = dir.join("cgroup.freeze");
                let _ = write(&freeze, "1");
                self.signal_each(name, Signal::SIGKILL);
                let _ = write(&freeze, "0");
            }
            Err(e) => {
                tracing::error!(process = %name, error = %e, "cannot kill the cgroup; killing its processes one by one");
                self.signal_each(name, Signal::SIGKILL);
            }
        }
    }

    /// Whether nothing runs in `name`'s cgroup any more (`cgroup.events`: `populated 0`).
    pub fn is_empty(&self, name: &str) -> bool {
        fs::read_to_string(self.dir(name).join("cgroup.events"))
            .map_or(true, |events| !populated(&events))
    }

    /// Out-of-memory kills counted in `name`'s cgroup, where the memory controller is on.
    pub fn oom_kills(&self, name: &str) -> Option<u64> {
        if !self.memory {
            return None;
        }
        let events = fs::read_to_string(self.dir(name).join("memory.events")).ok()?;
        flat_key(&events, "oom_kill")
    }

    /// CPU time ([`Cgroups::cpu`]); memory from `memory.current`, or what its processes use
    /// without the controller ([`procfs::memory_of`]).
    pub fn usage(&self, name: &str) -> Sample {
        let dir = self.dir(name);
        let cpu = self.cpu(name);
        let memory_bytes = match self.memory {
            true => fs::read_to_string(dir.join("memory.current"))
                .ok()
                .and_then(|m| m.trim().parse().ok())
                .or(Some(0)),
            false => procfs::memory_of_pids(&self.pids(name)),
        };
        Sample { cpu, memory_bytes }
    }

    /// CPU time of everything in `name`'s cgroup since it was made, from `cpu.stat` (there
    /// with or without the cpu controller).
    pub fn cpu(&self, name: &str) -> Duration {
        fs::read_to_string(self.dir(name).join("cpu.stat"))
            .ok()
            .and_then(|stat| flat_key(&stat, "usage_usec"))
            .map_or(Duration::ZERO, Duration::from_micros)
    }

    /// Removes `name`'s cgroup (it must be empty): its run is over, or the process left the
    /// configuration.
    pub fn remove(&self, name: &str) {
        match remove_tree(&self.dir(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(process = %name, error = %e, "cannot remove the process's cgroup");
            }
            _ => {}
        }
    }

    /// Removes the empty cgroups of processes, and the agent's own subtree when it made it:
    /// the agent is exiting with everything stopped.
    pub fn tidy(&self) {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.starts_with("proc.")) {
                let _ = remove_tree(&entry.path());
            }
        }
        if !self.delegated {
            let _ = fs::remove_dir(&self.base);
        }
    }

    /// The processes whose cgroups still hold something: what an earlier run of the agent
    /// left running.
    pub fn populated(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("proc.")
                    .map(str::to_owned)
            })
            .filter(|name| !self.is_empty(name))
            .collect();
        names.sort();
        names
    }
}

/// `populated 1` in `cgroup.events`.
fn populated(events: &str) -> bool {
    flat_key(events, "populated").is_some_and(|n| n != 0)
}

/// The number after `key` in a flat-keyed cgroup file (`key value` per line).
fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(format!("cannot create the cgroup {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Turns the memory controller on for the cgroups under `dir`, if `dir` has it.
fn enable_memory(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers"))?;
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(io::ErrorKind::Unsupported.into());
    }
    write(&dir.join("cgroup.subtree_control"), "+memory")
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    File::options()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The processes in the cgroup `dir` and in those under it (a program may make its own).
fn pids_under(dir: &Path) -> Vec<u32> {
    let procs = fs::read_to_string(dir.join("cgroup.procs"));
    let mut pids: Vec<u32> = procs
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    for sub in subgroups(dir) {
        pids.extend(pids_under(&sub));
    }
    pids
}

/// The cgroups made in the cgroup `dir`.
fn subgroups(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let entries = entries.filter_map(Result::ok);
    let dirs = entries.filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
    dirs.map(|e| e.path()).collect()
}

/// Removes the empty cgroup `dir` with the empty ones under it, the deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subgroups(dir) {
        remove_tree(&sub)?;
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        assert!(populated("populated 1\nfrozen 0\n"));
        assert!(!populated("populated 0\nfrozen 0\n"));
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(flat_key(events, "oom_kill"), Some(1));
        assert_eq!(flat_key(events, "oom"), Some(1));
        assert_eq!(flat_key(events, "absent"), None);
    }
}
