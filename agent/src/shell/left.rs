//! What a main process leaves running when it ends, outside what its cgroup takes care of:
//! the processes of its run that left its process group (found by its invocation id and
//! killed, off the agent's loop), and, at the agent's shutdown, whatever the agent inherited
//! as subreaper and still runs.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::shell::health::ProbeExits;
use crate::shell::process::signal_found;
use crate::shell::procfs::{self, Stat};
use crate::shell::KILL_GRACE;

/// Says what a main process left running when it ended, `place` saying where and what becomes
/// of it. An exit 0 that leaves some is the classic mistake under a supervisor: a program
/// that forks into the background and exits.
pub fn say_left(name: &str, left: usize, exit_0: bool, place: &str) {
    match exit_0 {
        true => {
            tracing::warn!(process = %name, left, "the main process exited 0 and left processes running {place}: a program that forks into the background (daemonizes) must be run in the foreground under a supervisor (often an option such as --foreground or --nodaemon)")
        }
        false => {
            tracing::warn!(process = %name, left, "the main process ended and left processes running {place}")
        }
    }
}

/// How long the look for what left a process group may take ([`procfs::off_the_loop`]): it
/// holds up the agent, once, should a process's environment be stuck.
const ESCAPES_LIMIT: Duration = Duration::from_millis(500);

/// Looks for what left a process group given up on that still run.
static ESCAPES_ABANDONED: procfs::Abandoned = procfs::Abandoned::new(0);

/// The run of a main process that ended outside a cgroup, to look for what left its process
/// group.
pub struct Escapes {
    pub name: String,
    pub invocation: String,
    pub leader: u32,
    pub lived: Duration,
    /// It exited 0 by itself (not on a stop): the mistake of a program that daemonizes.
    pub exit_0: bool,
    /// The main processes of the other programs, which the agent started (some may not let
    /// it read their environment).
    pub mains: Vec<u32>,
    /// The exec probes running, which the agent started too.
    pub probes: ProbeExits,
}

impl Escapes {
    /// SIGKILLs the processes of the run that left its process group ([`end_escaped`], off
    /// the agent's loop), says so, and returns them to wait for. Says too what the agent
    /// inherited that no run can be told to be the owner of ([`unseen`]), which runs on.
    pub fn end(self) -> Vec<Stat> {
        let Escapes {
            name,
            invocation,
            leader,
            lived,
            exit_0,
            mains,
            probes,
        } = self;
        // Far too short for the pids to wrap around past the leader's, even at a pid_max of
        // 32768: only the pids allocated since are looked at (a crash loop), which spares
        // most of `/proc`.
        const RECENT: Duration = Duration::from_secs(5);
        let born_after = (lived < RECENT).then_some(leader);
        let look = move || {
            let escaped = end_escaped(&invocation, leader, born_after);
            let started = |pid| mains.contains(&pid) || probes.contains(pid);
            (escaped, unseen(born_after, started))
        };
        match procfs::off_the_loop(&ESCAPES_ABANDONED, "environments", ESCAPES_LIMIT, look) {
            Some((escaped, unseen)) => {
                if !escaped.is_empty() {
                    let place = "that had left its process group, which are killed with it (SIGKILL: no stop signal reaches them)";
                    say_left(&name, escaped.len(), exit_0, place);
                }
                if !unseen.is_empty() {
                    let pids: Vec<u32> = unseen.iter().map(|stat| stat.pid).collect();
                    tracing::warn!(ended = %name, ?pids, "found as a program ended: processes the agent inherited from its programs that no run can be told to own (their environment cleared, overwritten, or not readable to the agent), which keep running; the agent stops them only at its shutdown. Run programs in the foreground, or give the agent cgroups");
                }
                escaped
            }
            None => {
                tracing::error!(process = %name, "processes that left its process group were not looked for: an earlier look through /proc has not ended, or this one took too long (a very busy machine, or a process stuck); they may outlive it");
                Vec::new()
            }
        }
    }
}

/// SIGKILLs the processes of the run `invocation` that left the process group of `leader`
/// (a `setsid`, a daemon's double fork), found by [`INVOCATION_VAR`](crate::config::INVOCATION_VAR); returns them, to
/// wait until they are gone. `born_after`: only the pids allocated after it are looked at.
pub fn end_escaped(invocation: &str, leader: u32, born_after: Option<u32>) -> Vec<Stat> {
    kill_all_found("a process that left its group", || {
        let tagged = procfs::of_invocation(invocation, born_after);
        tagged
            .into_iter()
            .filter(|stat| stat.pgrp != leader)
            .collect()
    })
}

/// What the agent inherited that no run can be told to own ([`procfs::inherited_untagged`]),
/// but what it `started` itself, each said once.
fn unseen(born_after: Option<u32>, started: impl Fn(u32) -> bool) -> Vec<Stat> {
    static SAID: Mutex<Vec<Stat>> = Mutex::new(Vec::new());
    let found = procfs::inherited_untagged(born_after);
    let mut said = SAID.lock().unwrap_or_else(PoisonError::into_inner);
    said.retain(procfs::still_running);
    let new: Vec<Stat> = found
        .into_iter()
        .filter(|stat| !started(stat.pid) && !said.iter().any(|old| old.same_process(stat)))
        .collect();
    said.extend(new.iter().cloned());
    new
}

/// SIGKILLs each process `look` finds, looking again while it finds new ones (at most three
/// times): one may have forked between a look and the kill. Returns those it could signal.
fn kill_all_found(what: &str, mut look: impl FnMut() -> Vec<Stat>) -> Vec<Stat> {
    let mut killed: Vec<Stat> = Vec::new();
    for _ in 0..3 {
        let found = look();
        let new: Vec<Stat> = found
            .into_iter()
            .filter(|stat| !killed.iter().any(|k| k.same_process(stat)))
            .collect();
        if new.is_empty() {
            break;
        }
        for stat in new {
            match signal_found(&stat, Signal::SIGKILL) {
                Ok(()) => killed.push(stat),
                Err(e) => tracing::error!(pid = stat.pid, error = %e, "cannot kill {what}"),
            }
        }
    }
    killed
}

/// How long what the agent inherited is given to end on SIGTERM at its shutdown: it belongs to
/// no program, so no `stop_timeout` says; a daemon that cleans up on SIGTERM does in far less.
pub const INHERITED_STOP_GRACE: Duration = Duration::from_secs(2);

/// Stops what the agent inherited as subreaper and still runs once every program has
/// stopped, with its descendants: processes that escaped both their program's process group
/// and [`end_escaped`] (their environment cleared, or unreadable: a non-dumpable or setuid
/// process under an agent that is not root). Else they would outlive the agent, adopted by
/// init, and run beside the next agent's. SIGTERM first, SIGKILL for what is left after
/// [`INHERITED_STOP_GRACE`]. Returns their pids once they are gone.
pub async fn end_inherited() -> Vec<u32> {
    let mut stopping = inherited();
    stopping.retain(|stat| match signal_found(stat, Signal::SIGTERM) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(pid = stat.pid, error = %e, "cannot stop a process the agent inherited");
            false
        }
    });
    let mut pids: Vec<u32> = stopping.iter().map(|s| s.pid).collect();
    all_gone_within(INHERITED_STOP_GRACE, &mut stopping).await;
    let killed = kill_all_found("a process the agent inherited", inherited);
    for stat in &killed {
        if !pids.contains(&stat.pid) {
            pids.push(stat.pid);
        }
    }
    gone(killed).await;
    pids
}

/// The live descendants of the agent that are not its programs' main processes: at the
/// shutdown, once every program has stopped, all it has inherited.
fn inherited() -> Vec<Stat> {
    let all = procfs::all_processes();
    let mut descendants: Vec<Stat> = Vec::new();
    let mut parents = vec![std::process::id()];
    while let Some(parent) = parents.pop() {
        for stat in all.iter().filter(|s| s.ppid == parent && !s.is_zombie()) {
            parents.push(stat.pid);
            descendants.push(stat.clone());
        }
    }
    descendants
}

/// Waits until the processes `stats` are gone, [`KILL_GRACE`] at most (SIGKILLed, one in
/// uninterruptible sleep may take longer).
pub async fn gone(mut stats: Vec<Stat>) {
    if !all_gone_within(KILL_GRACE, &mut stats).await {
        let pids: Vec<u32> = stats.iter().map(|s| s.pid).collect();
        tracing::error!(?pids, "processes survive SIGKILL (in uninterruptible sleep?); going on without waiting for them");
    }
}

/// Waits until the processes `stats` are gone, `limit` at most; `stats` keeps those that
/// are not. Whether all are.
async fn all_gone_within(limit: Duration, stats: &mut Vec<Stat>) -> bool {
    super::within(limit, || {
        stats.retain(procfs::still_running);
        stats.is_empty()
    })
    .await
}
