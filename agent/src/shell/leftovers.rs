//! After the agent died hard (kill -9, OOM, a crash), its children may still run. Before
//! starting anything, the agent stops what its previous run recorded, so that no program ever
//! runs twice, and says so: each one stopped becomes an `exited` event, so that a reader who
//! saw it start sees it end before it starts again.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{Config, DEFAULT_STOP_TIMEOUT};
use crate::shell::cgroup::{Cgroups, Containment};
use crate::shell::process;
use crate::shell::procfs::{self, Stat};
use crate::shell::KILL_GRACE;
use crate::state::{ChildRecord, StateDir};

/// How often the stop of leftovers is checked. Only while the agent starts, never when idle.
const POLL: Duration = Duration::from_millis(20);
/// How often a run's processes are looked for again while they stop, without cgroups: a
/// program that forks new workers as its old ones die (a master that ignores its stop signal)
/// must not leave the new ones running.
const RESCAN: Duration = Duration::from_millis(250);

/// What is left of one process, and how to reach it: its cgroup, and its run's processes that
/// are not in it.
struct Remains {
    /// Everything in its cgroup, where there are cgroups.
    cgroup: Option<String>,
    /// Found from its record, where it has one ([`run_members`]), outside its cgroup (a
    /// process its program moved to a cgroup elsewhere). Found again every [`RESCAN`].
    run: Option<Run>,
}

struct Run {
    record: ChildRecord,
    members: Vec<Stat>,
    scanned: Instant,
}

impl Remains {
    fn new(cgroup: Option<String>, record: Option<ChildRecord>, containment: &Containment) -> Self {
        let run = record.map(|record| Run {
            members: outside(
                reach(&cgroup, containment),
                run_members(&record, containment),
            ),
            record,
            scanned: Instant::now(),
        });
        Self { cgroup, run }
    }

    fn members(&self) -> &[Stat] {
        self.run.as_ref().map_or(&[], |run| &run.members)
    }
}

/// The cgroup `cgroup` names, where there are cgroups.
fn reach<'a>(
    cgroup: &'a Option<String>,
    containment: &'a Containment,
) -> Option<(&'a Cgroups, &'a str)> {
    match (cgroup, containment) {
        (Some(name), Containment::Cgroups(cgroups)) => Some((cgroups, name)),
        _ => None,
    }
}

/// Those of `found` that the signal to `cgroup` does not reach: each process is signalled
/// once.
fn outside(cgroup: Option<(&Cgroups, &str)>, mut found: Vec<Stat>) -> Vec<Stat> {
    if let Some((cgroups, name)) = cgroup {
        let inside = cgroups.pids(name);
        found.retain(|f| !inside.contains(&f.pid));
    }
    found
}

/// The processes of the run `record` names: those that carry its invocation id, and without
/// cgroups the members of the session it led. With cgroups, what is outside the cgroup is
/// looked for by the invocation id alone, which is random: a session is found by its leader's
/// pid, and when the leader is gone a stranger's session may have its pid.
fn run_members(record: &ChildRecord, containment: &Containment) -> Vec<Stat> {
    let mut members = match containment {
        Containment::Cgroups(_) => Vec::new(),
        Containment::ProcessGroups => procfs::session_members(record.pid, record.start_time),
    };
    if !record.invocation.is_empty() {
        let escaped = procfs::of_invocation(&record.invocation, None);
        let escaped: Vec<Stat> = escaped
            .into_iter()
            .filter(|e| !members.iter().any(|m| m.same_process(e)))
            .collect();
        members.extend(escaped);
    }
    members
}

struct Leftover {
    remains: Remains,
    /// Its main process was found still running: its stop is reported (else its run is
    /// reported as vanished, and only what it left is stopped).
    main_found: bool,
    kill_at: Instant,
    killed: bool,
    stopped: Stopped,
}

impl Leftover {
    fn signal(&self, containment: &Containment, signal: Signal) {
        if let Some((cgroups, name)) = reach(&self.remains.cgroup, containment) {
            cgroups.signal(name, signal);
        }
        signal_each(self.remains.members(), signal);
    }

    /// Forgets what is gone, and (every [`RESCAN`], when `now_or_never`, and before it says
    /// nothing is left) finds what the run started meanwhile, which gets the signal the others
    /// got; whether anything is left.
    fn still_there(&mut self, containment: &Containment, now: Instant, now_or_never: bool) -> bool {
        let cgroup = reach(&self.remains.cgroup, containment);
        let in_cgroup = cgroup.is_some_and(|(cgroups, name)| !cgroups.is_empty(name));
        let Some(run) = &mut self.remains.run else {
            return in_cgroup;
        };
        run.members.retain(procfs::still_running);
        // Before the run is taken as gone too: what a member forked just before it ended is
        // not among them yet.
        let gone = run.members.is_empty() && !in_cgroup;
        if now_or_never || gone || now >= run.scanned + RESCAN {
            let found = outside(cgroup, run_members(&run.record, containment));
            let new: Vec<Stat> = (found.iter())
                .filter(|f| !run.members.iter().any(|m| m.same_process(f)))
                .cloned()
                .collect();
            signal_each(&new, self.stopped.signal);
            run.members = found;
            run.scanned = now;
        }
        in_cgroup || !run.members.is_empty()
    }

    fn pids(&self, containment: &Containment) -> Vec<u32> {
        let cgroup = reach(&self.remains.cgroup, containment);
        let mut pids = cgroup.map_or_else(Vec::new, |(cgroups, name)| cgroups.pids(name));
        pids.extend(self.remains.members().iter().map(|m| m.pid));
        pids
    }
}

fn signal_each(members: &[Stat], signal: Signal) {
    for member in members {
        if let Err(e) = process::signal_found(member, signal) {
            tracing::error!(pid = member.pid, error = %e, "cannot signal a leftover process");
        }
    }
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

/// A run of an earlier agent that ended unwatched: its agent died before it (one that writes
/// output dies of SIGPIPE once its reader is gone), or the machine went down with it.
#[derive(Clone, Debug)]
pub struct Vanished {
    pub name: String,
    pub pid: u32,
}

/// What an earlier run of the agent left: what still ran, and was stopped, and what had
/// ended unseen.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub stopped: Vec<Stopped>,
    pub vanished: Vec<Vanished>,
}

/// Stops everything of an earlier run that still runs — found by cgroup where there are
/// cgroups (a pid reused by a stranger is never in one) and, outside it, by the run's
/// invocation id; else from the recorded children's sessions and invocation ids: its stop
/// signal to every process, once, SIGKILL after its stop timeout. Returns once all are gone, with the main processes that were stopped, and the
/// recorded runs whose main process had ended meanwhile (what they left is stopped too).
pub async fn stop(state: &StateDir, config: &Config, containment: &Containment) -> Leftovers {
    let boot_id = match procfs::boot_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the boot id; not looking for leftovers of an earlier run");
            return Leftovers::default();
        }
    };
    // A record goes once what it names is gone: an agent that dies while it stops them
    // finds them again.
    let let_go = |name: &str| match config.processes.iter().any(|p| p.name == name) {
        true => state.forget_child(name),
        false => state.remove_child(name),
    };
    let mut records = std::collections::BTreeMap::new();
    let mut vanished = Vec::new();
    for (name, record) in state.child_records() {
        match record.boot_id == boot_id {
            true => {
                records.insert(name, record);
            }
            false => {
                let_go(&name);
                vanished.push(Vanished {
                    name,
                    pid: record.pid,
                });
            }
        }
    }
    let mut found: Vec<(String, Option<u32>, Remains)> = Vec::new();
    if let Containment::Cgroups(cgroups) = containment {
        for name in cgroups.populated() {
            let members = cgroups.pids(&name);
            // A recorded main that is not among them ended unseen: what it left is stopped,
            // not reported as its stop under another process's pid.
            let record = records.remove(&name);
            let remains = Remains::new(Some(name.clone()), record.clone(), containment);
            // A main that moved itself out of its cgroup is found by its invocation id.
            let moved = |record: &ChildRecord| {
                let main = |m: &Stat| m.pid == record.pid && m.start_time == record.start_time;
                remains.members().iter().any(main)
            };
            let main = match &record {
                Some(record) if members.contains(&record.pid) || moved(record) => Some(record.pid),
                Some(record) => {
                    vanished.push(Vanished {
                        name: name.clone(),
                        pid: record.pid,
                    });
                    None
                }
                // No record (it could not be written): the oldest member stands for the run.
                None => members.first().copied(),
            };
            found.push((name, main, remains));
        }
    }
    for (name, record) in records {
        let members = run_members(&record, containment);
        let main = record.pid;
        let main_found = members
            .iter()
            .any(|m| m.pid == main && m.start_time == record.start_time);
        let remains = |members| Remains {
            cgroup: None,
            run: Some(Run {
                record,
                members,
                scanned: Instant::now(),
            }),
        };
        match members.is_empty() {
            true => {
                let_go(&name);
                vanished.push(Vanished { name, pid: main });
            }
            false if main_found => found.push((name, Some(main), remains(members))),
            false => {
                vanished.push(Vanished {
                    name: name.clone(),
                    pid: main,
                });
                found.push((name, None, remains(members)));
            }
        }
    }
    for gone in &vanished {
        tracing::warn!(process = %gone.name, pid = gone.pid, "a run that an earlier run of the agent left had ended unseen");
    }
    let now = Instant::now();
    let mut leftovers = Vec::new();
    for (name, main, remains) in found {
        let (signal, timeout) = config
            .processes
            .iter()
            .find(|p| p.name == name)
            .map_or((Signal::SIGTERM, DEFAULT_STOP_TIMEOUT), |p| {
                (p.stop_signal, p.stop_timeout)
            });
        let runtime = main
            .and_then(|pid| procfs::read_stat(pid).ok())
            .and_then(|stat| procfs::age(&stat))
            .unwrap_or_default();
        let leftover = Leftover {
            remains,
            main_found: main.is_some(),
            kill_at: now + timeout,
            killed: false,
            stopped: Stopped {
                name,
                pid: main.unwrap_or(0),
                signal,
                runtime,
            },
        };
        tracing::warn!(
            process = %leftover.stopped.name,
            // Only a main process that still runs: else its run was reported ended unseen.
            pid = main,
            processes = leftover.pids(containment).len(),
            "stopping what an earlier run of the agent left running"
        );
        leftover.signal(containment, signal);
        leftovers.push(leftover);
    }
    let mut stopped = Vec::new();
    while !leftovers.is_empty() {
        let now = Instant::now();
        leftovers.retain_mut(|leftover| {
            let killing = !leftover.killed && now >= leftover.kill_at;
            if !leftover.still_there(containment, now, killing) {
                if let Some((cgroups, name)) = reach(&leftover.remains.cgroup, containment) {
                    cgroups.remove(name);
                }
                let_go(&leftover.stopped.name);
                if leftover.main_found {
                    stopped.push(leftover.stopped.clone());
                }
                return false;
            }
            if killing {
                tracing::warn!(process = %leftover.stopped.name, "leftovers did not stop in time; sending SIGKILL");
                leftover.signal(containment, Signal::SIGKILL);
                leftover.killed = true;
                leftover.stopped.signal = Signal::SIGKILL;
            }
            if leftover.killed && now >= leftover.kill_at + KILL_GRACE {
                let pids = leftover.pids(containment);
                tracing::error!(process = %leftover.stopped.name, ?pids, "leftovers survive SIGKILL; starting anyway");
                let_go(&leftover.stopped.name);
                if leftover.main_found {
                    stopped.push(leftover.stopped.clone());
                }
                return false;
            }
            true
        });
        if !leftovers.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Leftovers { stopped, vanished }
}
