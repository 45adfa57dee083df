//! Commands in flight: a start, stop or restart is answered once the state machine's notices
//! show that it took effect (or could not), whether it came from the local control socket or
//! over MQTT; a configuration change, once every process it starts has started or could not.

use std::time::Instant;

use respawn_common::messages::{CommandName, CommandReply, Reason};
use respawn_common::status::ProcessState::{self, Running, Starting, Stopped, Stopping};
use tokio::sync::oneshot;

use crate::control::{Outcome, Reply};
use crate::supervisor::{Notice, NoticeKind, Supervisor, UnitView};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Start,
    Stop,
    Restart,
}

/// Who waits for the outcome.
#[derive(Debug)]
pub enum Requester {
    /// `respawn-agent stop ...` on the control socket.
    Local(oneshot::Sender<Reply>),
    /// A command over MQTT.
    Remote(RemoteRequest),
}

/// What is needed to answer a command over MQTT.
#[derive(Clone, Debug)]
pub struct RemoteRequest {
    pub cmd_id: String,
    pub requester: String,
    pub correlation: Option<Vec<u8>>,
    pub command: CommandName,
    pub process: Option<String>,
    /// The operator whose signature verified.
    pub signer: Option<String>,
    /// Whom a signature the agent has no key for names: taken as unsigned, which its answer
    /// says.
    pub unchecked_signer: Option<String>,
}

impl RemoteRequest {
    /// Logs that the command passed every check and is carried out.
    pub fn log_accepted(&self) {
        let signer = self.signer.as_deref().unwrap_or("-");
        let process = self.process.as_deref().unwrap_or("-");
        tracing::info!(
            cmd_id = self.cmd_id.as_str(),
            requester = self.requester.as_str(),
            signer,
            command = self.command.as_str(),
            process,
            "remote command accepted"
        );
    }
}

/// Why a command did not reach its goal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    fn new(reason: Reason, message: String) -> Self {
        Self { reason, message }
    }
}

/// A command whose outcome is known.
#[derive(Debug)]
pub struct Resolved {
    pub requester: Requester,
    pub process: String,
    pub result: Result<Outcome, Failure>,
    /// The process did not end on its stop signal within its `stop_timeout`, and was killed.
    pub killed: bool,
}

struct Waiter {
    process: String,
    kind: CommandKind,
    old_pid: Option<u32>,
    requester: Requester,
    killed: bool,
}

/// A `config_apply` or `config_rollback` that was carried out: its reply waits for the
/// processes it starts (added, or changed and so restarted) to start or fail to.
struct PendingChange {
    request: RemoteRequest,
    reply: CommandReply,
    starting: Vec<String>,
    /// A process that does not die holds the reply no longer than this.
    deadline: Instant,
}

impl PendingChange {
    /// Records that `name` could not be started, and why.
    fn not_started(&mut self, name: &str, why: &str) {
        if let Some(report) = &mut self.reply.config {
            report.not_started.insert(name.to_owned(), why.to_owned());
        }
    }
}

/// The commands that await their outcome.
#[derive(Default)]
pub struct PendingCommands {
    waiters: Vec<Waiter>,
    changes: Vec<PendingChange>,
}

impl PendingCommands {
    /// Registers a command before its input is fed to the state machine, so that the notices
    /// it causes are seen.
    pub fn add(
        &mut self,
        process: String,
        kind: CommandKind,
        old_pid: Option<u32>,
        requester: Requester,
    ) {
        self.waiters.push(Waiter {
            process,
            kind,
            old_pid,
            requester,
            killed: false,
        });
    }

    /// Registers a configuration change before its processes are fed to the state machine;
    /// `reply` goes out once each of `starting` has started or could not, or at `deadline`.
    pub fn add_change(
        &mut self,
        request: RemoteRequest,
        reply: CommandReply,
        starting: Vec<String>,
        deadline: Instant,
    ) {
        let change = PendingChange {
            request,
            reply,
            starting,
            deadline,
        };
        self.changes.push(change);
    }

    /// Whether a command on `process` is under way. (A change that restarts it does not
    /// count: a stop sent meanwhile is taken, and the change's reply says it did not start.)
    pub fn is_busy(&self, process: &str) -> bool {
        self.waiters.iter().any(|w| w.process == process)
    }

    /// The configuration changes whose processes have all started or could not, with their
    /// replies.
    pub fn changes_done(&mut self) -> Vec<(RemoteRequest, CommandReply)> {
        let (done, waiting) = std::mem::take(&mut self.changes)
            .into_iter()
            .partition(|c| c.starting.is_empty());
        self.changes = waiting;
        done.into_iter().map(|c| (c.request, c.reply)).collect()
    }

    /// When the first configuration change that still waits is answered regardless.
    pub fn change_deadline(&self) -> Option<Instant> {
        self.changes.iter().map(|c| c.deadline).min()
    }

    /// At `now`: the changes past their deadline give up on what is still on its way.
    pub fn expire_changes(&mut self, now: Instant) {
        for change in self.changes.iter_mut().filter(|c| c.deadline <= now) {
            for name in std::mem::take(&mut change.starting) {
                change.not_started(&name, "an old run (its own, or a removed process's) had not ended when the reply was due");
            }
        }
    }

    /// Takes `notice` into the configuration changes that wait for its process.
    fn change_notice(&mut self, notice: &Notice) {
        for change in &mut self.changes {
            let Some(i) = change.starting.iter().position(|s| *s == notice.name) else {
                continue;
            };
            match &notice.kind {
                NoticeKind::Started { .. } => {}
                NoticeKind::SpawnFailed { error, next_start } => {
                    let then = match next_start {
                        Some(_) => "tried again after a backoff",
                        None => "not tried again (its restart policy)",
                    };
                    change.not_started(&notice.name, &format!("{error}; {then}"));
                }
                _ => continue,
            }
            change.starting.remove(i);
        }
    }

    /// The commands that `notice` settles (configuration changes: see [`Self::changes_done`]).
    pub fn on_notice(&mut self, notice: &Notice) -> Vec<Resolved> {
        self.change_notice(notice);
        // Killed on its way out: said to the stop or restart of that very run only.
        if let NoticeKind::Exited(info) = &notice.kind {
            let stopping = self.waiters.iter_mut().filter(|w| {
                w.process == notice.name
                    && w.old_pid == Some(info.pid)
                    && matches!(w.kind, CommandKind::Stop | CommandKind::Restart)
            });
            stopping.for_each(|w| w.killed |= info.killed_at_stop_timeout);
        }
        self.resolve(|w| {
            if w.process != notice.name {
                return None;
            }
            match (&notice.kind, w.kind) {
                (NoticeKind::Started { pid, .. }, CommandKind::Start) => {
                    Some(Ok(Outcome::Started { pid: *pid }))
                }
                (NoticeKind::Started { pid, .. }, CommandKind::Restart) => {
                    Some(Ok(Outcome::Restarted {
                        old_pid: w.old_pid,
                        new_pid: *pid,
                    }))
                }
                (
                    NoticeKind::SpawnFailed { error, .. },
                    CommandKind::Start | CommandKind::Restart,
                ) => Some(Err(Failure::new(
                    Reason::Unsuccessful,
                    format!("{} could not be started: {error}", w.process),
                ))),
                (NoticeKind::Stopped { .. }, CommandKind::Stop) => Some(Ok(Outcome::Stopped)),
                _ => None,
            }
        })
    }

    /// The commands on a process that was removed from the configuration.
    pub fn on_forget(&mut self, name: &str) -> Vec<Resolved> {
        for change in &mut self.changes {
            change.starting.retain(|s| s != name);
        }
        self.resolve(|w| {
            (w.process == name).then(|| {
                Err(Failure::new(
                    Reason::UnknownProcess,
                    format!("{name} was removed from the configuration"),
                ))
            })
        })
    }

    /// After a batch of inputs: the commands whose goal already held, or can no longer be
    /// reached. Local requesters that have gone are dropped.
    pub fn settle(&mut self, supervisor: &Supervisor) -> Vec<Resolved> {
        self.waiters.retain(|w| match &w.requester {
            Requester::Local(reply) => !reply.is_closed(),
            Requester::Remote(_) => true,
        });
        // A process that is neither starting nor stopping on its way to a restart will not
        // start now (stopped by hand, say); one that did start was taken off by its notice.
        for change in &mut self.changes {
            let mut not_started = Vec::new();
            change.starting.retain(|name| match supervisor.view(name) {
                Some(view) if matches!(view.state, Starting | Stopping) => true,
                Some(view) if view.state != Running => {
                    not_started.push((name.clone(), not_running(&view)));
                    false
                }
                _ => false,
            });
            for (name, why) in not_started {
                change.not_started(&name, &why);
            }
        }
        self.resolve(|w| {
            let Some(view) = supervisor.view(&w.process) else {
                return Some(Err(Failure::new(
                    Reason::UnknownProcess,
                    format!("{} is not configured", w.process),
                )));
            };
            let state = view.state;
            match (w.kind, state) {
                (_, ProcessState::Starting | ProcessState::Stopping) => None,
                (CommandKind::Start, ProcessState::Running) => {
                    view.pid.map(|pid| Ok(Outcome::AlreadyRunning { pid }))
                }
                (CommandKind::Stop, ProcessState::Stopped | ProcessState::Failed) => {
                    Some(Ok(Outcome::AlreadyStopped))
                }
                // Commands combine (README): a later one can undo what this one waited for.
                (CommandKind::Start | CommandKind::Restart, ProcessState::Stopped)
                    if view.manually_stopped =>
                {
                    Some(Err(Failure::new(
                        Reason::Unsuccessful,
                        format!("{} is stopped: a stop that came later took over", w.process),
                    )))
                }
                (CommandKind::Stop, ProcessState::Running | ProcessState::Backoff)
                    if !view.manually_stopped =>
                {
                    let now = match state {
                        ProcessState::Backoff => "waiting to start again",
                        _ => "running",
                    };
                    Some(Err(Failure::new(
                        Reason::Unsuccessful,
                        format!(
                            "{} is {now}: a start or restart that came later took over",
                            w.process
                        ),
                    )))
                }
                _ => Some(Err(Failure::new(
                    Reason::Unsuccessful,
                    format!("{} is {state}", w.process),
                ))),
            }
        })
    }

    /// Every command: the agent is going away. A configuration change was made, so it is
    /// answered as such, with the processes it had yet to start.
    pub fn fail_all(&mut self, message: &str) -> Vec<Resolved> {
        self.fail_where(message, |_| true)
    }

    /// The commands whose goal the agent's stop undoes, at once, while the broker may still
    /// hear it: a start and a restart fail; a configuration change, which is made, is answered
    /// with the processes it had yet to start as not started; a stop reaches its goal with the
    /// others.
    pub fn fail_undone_by_shutdown(&mut self, message: &str) -> Vec<Resolved> {
        self.fail_where(message, |w| w.kind != CommandKind::Stop)
    }

    fn fail_where(&mut self, message: &str, undone: impl Fn(&Waiter) -> bool) -> Vec<Resolved> {
        for change in &mut self.changes {
            for name in std::mem::take(&mut change.starting) {
                change.not_started(&name, message);
            }
        }
        let failure = || Err(Failure::new(Reason::ShuttingDown, message.to_owned()));
        self.resolve(|w| undone(w).then(failure))
    }

    fn resolve(
        &mut self,
        mut decide: impl FnMut(&Waiter) -> Option<Result<Outcome, Failure>>,
    ) -> Vec<Resolved> {
        let mut resolved = Vec::new();
        let mut kept = Vec::with_capacity(self.waiters.len());
        for waiter in self.waiters.drain(..) {
            match decide(&waiter) {
                None => kept.push(waiter),
                Some(result) => resolved.push(Resolved {
                    requester: waiter.requester,
                    process: waiter.process,
                    result,
                    killed: waiter.killed,
                }),
            }
        }
        self.waiters = kept;
        resolved
    }
}

/// Why a process that a change was to start does not run.
fn not_running(view: &UnitView) -> String {
    match (view.state, view.manually_stopped) {
        (Stopped, true) => "stopped by hand: `start` runs it".to_owned(),
        (Stopped, false) => "stopped (autostart is off, or the agent is stopping)".to_owned(),
        (state, _) => format!("{state}: it ended before its new run could start"),
    }
}
