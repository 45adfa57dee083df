//! The live children: starting them (with their record, output capture, probes and notify
//! socket), signalling and reaping them, their output rings, what their probes and their own
//! messages say, and their memory against `max_memory`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use respawn_common::status::{ExitStatus, Health, HealthStatus, LogLine};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ProcessConfig;
use crate::logs::{LogRing, Stream};
use crate::shell::health::{self, ProbeExits};
use crate::shell::notify;
use crate::shell::process::{self, OutputSink};
use crate::shell::procfs;
use crate::shell::watch::{self, Seen, Watched};
use crate::state::StateDir;
use crate::supervisor::Input;

/// How long an exit waits for the rest of the child's output. Normally the pipes close with
/// the process group; only a descendant that escaped into its own session can hold them open.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_millis(500);

/// How often the memory of processes with `max_memory` is measured.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// A main process the agent started and has not yet reaped.
struct Child {
    name: String,
    readers: [JoinHandle<()>; 2],
    /// Its health probes and notify socket, stopped when it is reaped.
    watchers: Vec<JoinHandle<()>>,
    /// What its probes said so far, this run.
    health: Option<health::Tracker>,
    /// Its own word on how it is (`STATUS=`).
    message: Option<String>,
    /// Already reported over `max_memory`: once is enough, the restart is under way.
    over_memory: bool,
}

/// A reaped main process whose output has been read to the end.
pub struct Finished {
    pub name: String,
    pub pid: u32,
    pub status: ExitStatus,
}

/// The children of this run, by pid, and the output of every process, by name.
pub struct Children {
    live: HashMap<u32, Child>,
    rings: HashMap<String, Arc<Mutex<LogRing>>>,
    finished: mpsc::UnboundedSender<Finished>,
    watched: mpsc::UnboundedSender<Watched>,
    probe_exits: ProbeExits,
    /// When memory is next measured, while some process has `max_memory`.
    next_memory_check: Option<Instant>,
}

impl Children {
    /// Exits come out of `finished` once their output is read; what is seen of running
    /// children out of `watched`.
    pub fn new(
        finished: mpsc::UnboundedSender<Finished>,
        watched: mpsc::UnboundedSender<Watched>,
    ) -> Self {
        Self {
            live: HashMap::new(),
            rings: HashMap::new(),
            finished,
            watched,
            probe_exits: ProbeExits::default(),
            next_memory_check: None,
        }
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
        let mut env = Vec::new();
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
        let launched = match process::spawn(config, &env) {
            Ok(launched) => launched,
            Err(error) => return failed(error),
        };
        let pid = launched.pid;
        if let Err(e) = state.record_child(&name, pid) {
            let _ = process::signal_group(pid, Signal::SIGKILL);
            return failed(format!("cannot record it in the state directory: {e}"));
        }
        let sink = OutputSink {
            process: Arc::from(name.as_str()),
            ring: Arc::clone(self.rings.entry(name.clone()).or_default()),
        };
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
            .map(|check| health::Tracker::new(check, Instant::now()));
        self.live.insert(
            pid,
            Child {
                name: name.clone(),
                readers,
                watchers,
                health,
                message: None,
                over_memory: false,
            },
        );
        Input::Spawned { name, pid }
    }

    /// Signals the process group of a live child.
    pub fn signal(&self, name: &str, pid: u32, signal: Signal) {
        // A reaped leader's group was already killed, and its pid may belong to someone else
        // by now; its exit is on its way to the state machine.
        if !self.live.contains_key(&pid) {
            return;
        }
        if let Err(e) = process::signal_group(pid, signal) {
            tracing::error!(process = %name, pid, error = %e, "cannot signal the process group");
        }
    }

    /// Reaps exited children; a main process's exit comes out of `finished` once its output
    /// has been read to the end, so that the last lines are in the ring.
    pub fn reap(&mut self, state: &StateDir) {
        let (live, probes) = (&self.live, &self.probe_exits);
        for reaped in process::reap(|pid| live.contains_key(&pid) || probes.contains(pid)) {
            let Some(child) = self.live.remove(&reaped.pid) else {
                self.probe_exits.exited(reaped.pid, reaped.status);
                continue;
            };
            for watcher in &child.watchers {
                watcher.abort();
            }
            state.forget_child(&child.name);
            let finished = self.finished.clone();
            tokio::spawn(async move {
                let [stdout, stderr] = child.readers;
                let _ = tokio::time::timeout(OUTPUT_DRAIN_LIMIT, async {
                    let _ = stdout.await;
                    let _ = stderr.await;
                })
                .await;
                let _ = finished.send(Finished {
                    name: child.name,
                    pid: reaped.pid,
                    status: reaped.status,
                });
            });
        }
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
                    health::Verdict::Same => None,
                    health::Verdict::Ready => Some(Input::Ready { name, pid }),
                    health::Verdict::Unhealthy(reason) => {
                        Some(Input::Unhealthy { name, pid, reason })
                    }
                }
            }
        }
    }

    /// What the probes of the child `pid` and its own messages say, if anything.
    pub fn health(&self, pid: u32) -> Option<Health> {
        let child = self.live.get(&pid)?;
        let mut health = child.health.as_ref().map(health::Tracker::report);
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

    /// Measures the memory of children with a limit (`limit_of` their name) and returns an
    /// `Unhealthy` input for each one over it.
    pub fn check_memory(&mut self, limit_of: impl Fn(&str) -> Option<u64>) -> Vec<Input> {
        let limits: Vec<(u32, u64)> = self
            .live
            .iter()
            .filter(|(_, c)| !c.over_memory)
            .filter_map(|(&pid, c)| Some((pid, limit_of(&c.name)?)))
            .collect();
        let mut over = Vec::new();
        if !limits.is_empty() {
            let groups: Vec<u32> = limits.iter().map(|(pid, _)| *pid).collect();
            let used = procfs::rss_of_groups(&groups);
            for (pid, limit) in limits {
                let (Some(&rss), Some(child)) = (used.get(&pid), self.live.get_mut(&pid)) else {
                    continue;
                };
                if rss > limit {
                    child.over_memory = true;
                    over.push(Input::Unhealthy {
                        name: child.name.clone(),
                        pid,
                        reason: format!(
                            "memory: {} MiB in use, over max_memory ({} MiB)",
                            rss / (1024 * 1024),
                            limit / (1024 * 1024)
                        ),
                    });
                }
            }
        }
        over
    }

    /// Memory is measured every few seconds while some process has a limit, never otherwise:
    /// an idle agent does not wake up for nothing.
    pub fn schedule_memory_checks(&mut self, any_limit: bool) {
        self.next_memory_check = any_limit.then(|| Instant::now() + MEMORY_CHECK_EVERY);
    }

    pub fn next_memory_check(&self) -> Option<Instant> {
        self.next_memory_check
    }

    /// The last `n` lines a process wrote, oldest first.
    pub fn lines(&self, name: &str, n: usize) -> Vec<LogLine> {
        self.rings.get(name).map_or_else(Vec::new, |ring| {
            ring.lock().unwrap_or_else(PoisonError::into_inner).tail(n)
        })
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

    /// A process left the configuration: its output goes.
    pub fn forget(&mut self, name: &str) {
        self.rings.remove(name);
    }

    /// The names of the children still alive (for the log of an agent that gives up on them).
    pub fn names(&self) -> Vec<String> {
        self.live.values().map(|c| c.name.clone()).collect()
    }
}
