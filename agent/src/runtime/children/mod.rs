//! The live children: starting them (in their cgroup, with their record, output capture,
//! probes and notify socket), signalling and reaping them with everything they started, their
//! output rings, what their probes and their own messages say, and the last exit of each,
//! kept across runs of the agent. What they use, and their memory against `max_memory`, is
//! measured in `usage`.

mod usage;

pub(crate) use usage::MEMORY_CHECK_EVERY;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use respawn_common::status::{ExitRecord, ExitStatus, Health, HealthStatus, LogLine, Usage};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::config::{self, ProcessConfig};
use crate::logs::{LogRing, Stream};
use crate::shell::cgroup::Containment;
use crate::shell::health::ProbeExits;
use crate::shell::left;
use crate::shell::notify;
use crate::shell::oom::OomCount;
use crate::shell::process::{self, OutputSink};
use crate::shell::procfs;
use crate::shell::watch::{self, Seen, Watched};
use crate::state::exits::LastExits;
use crate::state::StateDir;
use crate::supervisor::health::{Tracker, Verdict};
use crate::supervisor::{Input, OomEvidence};

/// How long an exit waits for the rest of the child's output. Normally the pipes close with
/// the process group; only a descendant that escaped into its own session can hold them open.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// At most this long, what a main process that ended by itself left gets to end on its stop
/// signal before it is killed: until then its exit is not reported, nor is it restarted.
const LEFT_GRACE: Duration = Duration::from_secs(10);

/// A main process the agent started and has not yet reaped.
struct Child {
    name: String,
    readers: [JoinHandle<()>; 2],
    /// Its health probes and notify socket, stopped when it is reaped.
    watchers: Vec<JoinHandle<()>>,
    /// What its probes said so far, this run.
    health: Option<Tracker>,
    /// Its own word on how it is (`STATUS=`).
    message: Option<String>,
    /// Already reported over `max_memory`: once is enough, the restart is under way.
    over_memory: bool,
    /// The agent has signalled it (a stop, a restart): what it leaves is no surprise.
    signalled: bool,
    /// In a cgroup of its own; else in its process group only.
    in_cgroup: bool,
    /// Its run's id, in its environment and that of all it starts ([`INVOCATION_VAR`](crate::config::INVOCATION_VAR)).
    invocation: String,
    /// Its `stop_signal` and `stop_timeout`, for what it leaves when it ends by itself.
    stop: (Signal, Duration),
    /// The kernel's count of out-of-memory kills when it started.
    oom_before: OomCount,
    /// CPU time its cgroup had used before it started: zero, unless the cgroup could not be
    /// made afresh and an earlier run's count is in it.
    cpu_before: Duration,
    /// When its usage was last sampled, and its CPU time then; at first, its start.
    last_sample: (Instant, Duration),
    started: Instant,
    usage: Option<Usage>,
}

/// A reaped main process whose output has been read to the end, and whose cgroup is empty.
pub struct Finished {
    pub name: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub oom: OomEvidence,
    /// When it was reaped: what it left may take a while longer to end.
    pub ended: Instant,
}

/// The children of this run, by pid, and the output of every process, by name.
pub struct Children {
    live: HashMap<u32, Child>,
    rings: HashMap<String, Arc<Mutex<LogRing>>>,
    finished: mpsc::UnboundedSender<Finished>,
    watched: mpsc::UnboundedSender<Watched>,
    /// Rung by each line a followed process writes.
    output_written: Arc<Notify>,
    probe_exits: ProbeExits,
    /// When memory is next measured, while some process has `max_memory`.
    next_memory_check: Option<Instant>,
    containment: Arc<Containment>,
    last_exits: LastExits,
    /// Main processes that ended by themselves leaving processes in their cgroup, which are
    /// being stopped before the exit is told: by name, with the pid and when it was reaped.
    ending: HashMap<String, (u32, Instant)>,
}

impl Children {
    /// Exits come out of `finished` once their output is read; what is seen of running
    /// children out of `watched`.
    pub fn new(
        finished: mpsc::UnboundedSender<Finished>,
        watched: mpsc::UnboundedSender<Watched>,
        output_written: Arc<Notify>,
        containment: Arc<Containment>,
        last_exits: LastExits,
    ) -> Self {
        Self {
            live: HashMap::new(),
            rings: HashMap::new(),
            finished,
            watched,
            output_written,
            probe_exits: ProbeExits::default(),
            next_memory_check: None,
            containment,
            last_exits,
            ending: HashMap::new(),
        }
    }

    /// The pid of `name`'s main process and when it was reaped, while what it left in its
    /// cgroup is stopped: the exit is told only once that is done.
    pub fn ending(&self, name: &str) -> Option<(u32, Instant)> {
        self.ending.get(name).copied()
    }

    /// The exit of `name` is told.
    pub fn finished(&mut self, name: &str) {
        self.ending.remove(name);
    }

    /// The last exit of `name` known, from this run of the agent or an earlier one.
    pub fn last_exit(&self, name: &str) -> Option<&ExitRecord> {
        self.last_exits.get(name)
    }

    pub fn remember_exit(&mut self, name: &str, exit: ExitRecord) {
        self.last_exits.remember(name, exit);
    }

    /// `cgroup` or `process-group`.
    pub fn containment(&self) -> &'static str {
        self.containment.kind()
    }

    /// Starts the process `config` describes, or says why it could not be.
    pub fn spawn(&mut self, config: &Arc<ProcessConfig>, state: &StateDir) -> Input {
        let name = config.name.clone();
        let failed = |error: String| Input::SpawnFailed {
            name: name.clone(),
            error,
        };
        // A child that speaks the notify protocol gets a socket of its own.
        let notify_socket = match config.sd_notify {
            true => match notify::NotifySocket::bind(&name) {
                Ok(socket) => Some(socket),
                Err(e) => return failed(format!("cannot make its notify socket: {e}")),
            },
            false => None,
        };
        let invocation = procfs::new_invocation_id();
        let mut env = vec![
            (config::INVOCATION_VAR, invocation.clone()),
            (config::PROCESS_VAR, name.clone()),
        ];
        if let Some(socket) = &notify_socket {
            env.push(("NOTIFY_SOCKET", socket.address.clone()));
            if let Some(watchdog) = config.watchdog {
                env.push(("WATCHDOG_USEC", watchdog.as_micros().to_string()));
            }
        }
        // A child the next run of the agent could not find might run twice: it is not
        // started unless its record can be written.
        if let Err(e) = state.reserve_child(&name) {
            return failed(format!(
                "cannot reserve its record in the state directory: {e}"
            ));
        }
        self.last_exits.reserve(&name);
        let cgroup = match &*self.containment {
            Containment::Cgroups(cgroups) => match cgroups.prepare(&name, config.max_memory) {
                Ok(procs) => Some(procs),
                Err(e) => {
                    tracing::error!(process = %name, error = %e, "cannot prepare its cgroup; it runs in its process group only");
                    None
                }
            },
            Containment::ProcessGroups => None,
        };
        let in_cgroup = cgroup.is_some();
        // A fresh cgroup starts from zero; one that served an earlier run does not.
        let reused = cgroup.as_ref().is_some_and(|entry| !entry.fresh);
        let (oom_before, cpu_before) = (
            OomCount::read(&self.containment, &name, in_cgroup, config.max_memory),
            self.cgroup_cpu(&name, reused),
        );
        let launched = match process::spawn(config, &env, cgroup.as_ref()) {
            Ok(launched) => launched,
            Err(error) => return failed(error),
        };
        let (pid, started) = (launched.pid, Instant::now());
        if let Err(e) = state.record_child(&name, pid, &invocation) {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            return failed(format!("cannot record it in the state directory: {e}"));
        }
        let sink = OutputSink::new(
            &name,
            Arc::clone(self.rings.entry(name.clone()).or_default()),
            Arc::clone(&self.output_written),
        );
        let readers = [
            tokio::spawn(process::capture(
                launched.stdout,
                Stream::Stdout,
                sink.clone(),
            )),
            tokio::spawn(process::capture(launched.stderr, Stream::Stderr, sink)),
        ];
        let watchers = watch::start(
            Arc::clone(config),
            pid,
            notify_socket,
            &self.probe_exits,
            &self.watched,
        );
        let health = config
            .health
            .clone()
            .map(|check| Tracker::new(check, started));
        self.live.insert(
            pid,
            Child {
                name: name.clone(),
                readers,
                watchers,
                health,
                message: None,
                over_memory: false,
                signalled: false,
                in_cgroup,
                invocation,
                stop: (config.stop_signal, config.stop_timeout),
                oom_before,
                cpu_before,
                last_sample: (started, Duration::ZERO),
                started,
                usage: None,
            },
        );
        Input::Spawned { name, pid }
    }

    fn cgroup_cpu(&self, name: &str, reused: bool) -> Duration {
        match (&*self.containment, reused) {
            (Containment::Cgroups(cgroups), true) => cgroups.cpu(name),
            _ => Duration::ZERO,
        }
    }

    /// Signals every process of a live child: its cgroup, or its process group.
    pub fn signal(&mut self, name: &str, pid: u32, signal: Signal) {
        // A reaped leader's group was already ended, and its pid may belong to someone else
        // by now; its exit is on its way to the state machine, once what it left is gone.
        // A kill (a stop's timeout, a forced shutdown) does not wait for that.
        // By name too: after a stop's main process ended, its pid may be another program's.
        let Some(child) = self.live.get_mut(&pid).filter(|c| c.name == name) else {
            if let (Containment::Cgroups(cgroups), Signal::SIGKILL) = (&*self.containment, signal) {
                cgroups.kill_left(name);
            }
            return;
        };
        child.signalled = true;
        match &*self.containment {
            Containment::Cgroups(cgroups) if child.in_cgroup => {
                // The process group reaches what moved itself to a cgroup elsewhere
                // (`systemd-run --scope`, a container runtime); the cgroup what left the
                // group (a daemon's session of its own).
                let _ = process::signal_group(pid, signal);
                cgroups.signal_outside(name, signal, Some(pid));
                if signal == Signal::SIGKILL {
                    cgroups.killed_with_main(name);
                }
            }
            _ => {
                if let Err(e) = process::signal_group(pid, signal) {
                    tracing::error!(process = %name, pid, error = %e, "cannot signal the process group");
                }
            }
        }
    }

    /// Reaps exited children; a main process's exit comes out of `finished` once its output
    /// has been read to the end, so that the last lines are in the ring.
    ///
    /// What a main process leaves behind in its cgroup when it ends by itself gets its
    /// `stop_signal`, then SIGKILL after its `stop_timeout` or [`LEFT_GRACE`], the shorter
    /// (after a stop, which signalled it already, the stop's kill at its deadline; what left
    /// the cgroup but not the process group, at once), and its exit comes out only once the
    /// cgroup is empty: the next start never meets the last run's daemon on its port. Its
    /// process group outside a cgroup is SIGKILLed at once, with the processes of its run that
    /// left the group, and its exit comes out once they are gone. Its child record is kept
    /// until then: an agent killed meanwhile leaves the next one what to look for. Returns
    /// the names of the processes whose leftovers in their cgroup are now being stopped.
    pub fn reap(&mut self) -> BTreeSet<String> {
        let mut ending = BTreeSet::new();
        let (live, probes, containment) = (&self.live, &self.probe_exits, &self.containment);
        let is_ours = |pid| live.contains_key(&pid) || probes.contains(pid);
        let end_rest = |pid| match (&**containment, live.get(&pid)) {
            (Containment::Cgroups(cgroups), Some(child)) if child.in_cgroup => {
                if child.signalled {
                    cgroups.end_group_elsewhere(&child.name, pid);
                }
                // After a stop, what is left had its signal with the main process, once.
                let signal = (!child.signalled).then_some(child.stop.0);
                cgroups.stop_left(&child.name, pid, signal)
            }
            _ => {
                process::end_group(pid);
                0
            }
        };
        for reaped in process::reap(is_ours, end_rest) {
            let Some(child) = self.live.remove(&reaped.pid) else {
                self.probe_exits.exited(reaped.pid, reaped.status);
                continue;
            };
            for watcher in &child.watchers {
                watcher.abort();
            }
            // Nothing else would say that they went. An exit 0 that leaves some is the classic
            // mistake under a supervisor: a program that forks into the background and exits.
            // A crash waits for them to be reported: not beyond LEFT_GRACE.
            let (left, exit_0) = (reaped.left_behind, reaped.status.is_success());
            // A stop waits for every process of the program, as systemd's
            // `KillMode=control-group` does, not only for the main one: a worker's clean-up is
            // not cut short. The stop's kill at its deadline ends what is still there.
            let kill_after = (left > 0 && !child.signalled).then(|| {
                left::say_left(
                    &child.name,
                    left,
                    exit_0,
                    "in its cgroup, which are stopped with it",
                );
                child.stop.1.min(LEFT_GRACE)
            });
            // Outside a cgroup, what left the process group is looked for away from this loop:
            // reading a process's environment waits for its memory map.
            let escapes = (!child.in_cgroup).then(|| left::Escapes {
                name: child.name.clone(),
                invocation: child.invocation.clone(),
                leader: reaped.pid,
                lived: child.started.elapsed(),
                exit_0: exit_0 && !child.signalled,
                mains: self.live.keys().copied().collect(),
                probes: self.probe_exits.clone(),
            });
            let oom = child.oom_before.evidence(&self.containment, &child.name);
            let ended = Instant::now();
            if left > 0 {
                self.ending.insert(child.name.clone(), (reaped.pid, ended));
                ending.insert(child.name.clone());
            }
            let finished = self.finished.clone();
            let containment = Arc::clone(&self.containment);
            tokio::spawn(async move {
                // Before the output: they may hold its pipes open.
                let escaped = match escapes {
                    Some(escapes) => escapes.end(),
                    None => Vec::new(),
                };
                let [stdout, stderr] = child.readers;
                let _ = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, async {
                    let _ = stdout.await;
                    let _ = stderr.await;
                })
                .await;
                if let (Containment::Cgroups(cgroups), true) = (&*containment, child.in_cgroup) {
                    cgroups.drain(&child.name, kill_after).await;
                }
                left::gone(escaped).await;
                let _ = finished.send(Finished {
                    name: child.name,
                    pid: reaped.pid,
                    status: reaped.status,
                    oom,
                    ended,
                });
            });
        }
        ending
    }

    /// What was seen of a running child, as an input for the state machine if it is one.
    pub fn on_watched(&mut self, watched: Watched) -> Option<Input> {
        let child = self
            .live
            .get_mut(&watched.pid)
            .filter(|c| c.name == watched.name)?; // else from a run that is over
        let (name, pid) = (watched.name, watched.pid);
        match watched.seen {
            Seen::Ready => Some(Input::Ready { name, pid }),
            Seen::Status(text) => {
                child.message = Some(text);
                None
            }
            Seen::Unhealthy(reason) => Some(Input::Unhealthy { name, pid, reason }),
            Seen::Probe(result) => {
                let tracker = child.health.as_mut()?;
                if let Err(e) = &result {
                    tracing::debug!(process = %name, pid, error = %e, "health check failed");
                }
                match tracker.record(Instant::now(), result) {
                    Verdict::Same => None,
                    Verdict::Ready => Some(Input::Ready { name, pid }),
                    Verdict::Unhealthy(reason) => Some(Input::Unhealthy { name, pid, reason }),
                }
            }
        }
    }

    /// What the probes of the child `pid` and its own messages say, if anything.
    pub fn health(&self, pid: u32) -> Option<Health> {
        let child = self.live.get(&pid)?;
        let mut health = child.health.as_ref().map(Tracker::report);
        if let Some(message) = &child.message {
            health
                .get_or_insert(Health {
                    status: HealthStatus::Unknown,
                    failures: 0,
                    last_error: None,
                    message: None,
                })
                .message = Some(message.clone());
        }
        health
    }

    /// What a live child uses, as last sampled.
    pub fn usage(&self, pid: u32) -> Option<Usage> {
        self.live.get(&pid)?.usage.clone()
    }

    /// The last `n` lines a process wrote, oldest first.
    pub fn lines(&self, name: &str, n: usize) -> Vec<LogLine> {
        self.rings.get(name).map_or_else(Vec::new, |ring| {
            ring.lock().unwrap_or_else(PoisonError::into_inner).tail(n)
        })
    }

    /// The last `n` lines of a process, and the number its next line will have — read at
    /// once, so that a follower misses no line between the two.
    pub fn lines_and_end(&self, name: &str, n: usize) -> (Vec<LogLine>, u64) {
        self.rings.get(name).map_or((Vec::new(), 0), |ring| {
            let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
            (ring.tail(n), ring.end())
        })
    }

    /// When the count of a process's lines began.
    pub fn numbered_since(&self, name: &str) -> Option<SystemTime> {
        let ring = self.rings.get(name)?;
        Some(ring.lock().unwrap_or_else(PoisonError::into_inner).began())
    }

    /// At most `most` lines of a process from line number `seq` on, with the number of the
    /// first (later than `seq` when the ring let lines go).
    pub fn lines_since(&self, name: &str, seq: u64, most: usize) -> (u64, Vec<LogLine>) {
        self.rings.get(name).map_or((seq, Vec::new()), |ring| {
            ring.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .since(seq, most)
        })
    }

    /// Marks the processes whose lines `followed` says are streamed: theirs wake the loop.
    pub fn mark_followed(&self, followed: impl Fn(&str) -> bool) {
        for (name, ring) in &self.rings {
            ring.lock().unwrap_or_else(PoisonError::into_inner).followed = followed(name);
        }
    }

    /// Marks `name` as followed before it has written anything, or run at all.
    pub fn mark_one_followed(&mut self, name: &str) {
        let ring = self.rings.entry(name.to_owned()).or_default();
        ring.lock().unwrap_or_else(PoisonError::into_inner).followed = true;
    }

    /// Lines dropped from a process's ring to make room.
    pub fn dropped_lines(&self, name: &str) -> u64 {
        self.rings.get(name).map_or(0, |ring| {
            ring.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .dropped()
        })
    }

    /// The last `n` lines of a process, on one line, for the log.
    pub fn tail(&self, name: &str, n: usize) -> String {
        self.lines(name, n)
            .into_iter()
            .map(|l| l.text)
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// A process left the configuration: its output goes, its cgroup and its last exit.
    pub fn forget(&mut self, name: &str) {
        self.rings.remove(name);
        self.last_exits.forget(name);
        if let Containment::Cgroups(cgroups) = &*self.containment {
            cgroups.remove(name);
        }
    }

    /// The agent is done: the cgroups it made go, if they are empty.
    pub async fn tidy(&self) {
        let inherited = left::end_inherited().await;
        if !inherited.is_empty() {
            let grace = left::INHERITED_STOP_GRACE.as_secs();
            tracing::warn!(pids = ?inherited, "processes the agent inherited (descendants of its programs that left them, their RESPAWN_INVOCATION cleared or unreadable) still ran when it stopped: stopped (SIGTERM, SIGKILL after {grace}s)");
        }
        self.containment.tidy();
    }

    /// The names of the children still alive (for the log of an agent that gives up on them).
    pub fn names(&self) -> Vec<String> {
        self.live.values().map(|c| c.name.clone()).collect()
    }
}
