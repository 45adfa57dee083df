//! Commands in flight: a start, stop or restart is answered once the state machine's notices
//! show that it took effect (or could not).

use respawn_common::status::ProcessState;
use tokio::sync::oneshot;

use crate::control::{Outcome, Reply};
use crate::supervisor::{Notice, NoticeKind, Supervisor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Start,
    Stop,
    Restart,
}

struct Waiter {
    process: String,
    kind: CommandKind,
    old_pid: Option<u32>,
    reply: oneshot::Sender<Reply>,
}

/// The commands that await their outcome.
#[derive(Default)]
pub struct PendingCommands {
    waiters: Vec<Waiter>,
}

impl PendingCommands {
    /// Registers a command before its input is fed to the state machine, so that the notices
    /// it causes are seen.
    pub fn add(
        &mut self,
        process: String,
        kind: CommandKind,
        old_pid: Option<u32>,
        reply: oneshot::Sender<Reply>,
    ) {
        self.waiters.push(Waiter {
            process,
            kind,
            old_pid,
            reply,
        });
    }

    /// Answers the commands that `notice` settles.
    pub fn on_notice(&mut self, notice: &Notice) {
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
                ) => Some(Err(format!("{} could not be started: {error}", w.process))),
                (NoticeKind::Stopped, CommandKind::Stop) => Some(Ok(Outcome::Stopped)),
                _ => None,
            }
        });
    }

    /// The process was removed from the configuration.
    pub fn on_forget(&mut self, name: &str) {
        self.resolve(|w| {
            (w.process == name).then(|| Err(format!("{name} was removed from the configuration")))
        });
    }

    /// After a batch of inputs: answers commands whose goal already held, or can no longer
    /// be reached, and drops those whose requester has gone.
    pub fn settle(&mut self, supervisor: &Supervisor) {
        self.resolve(|w| {
            if w.reply.is_closed() {
                return Some(Err(String::new()));
            }
            let Some(view) = supervisor.view(&w.process) else {
                return Some(Err(format!("{} is not configured", w.process)));
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
                _ => Some(Err(format!("{} is {state}", w.process))),
            }
        });
    }

    /// Fails every command: the agent is going away.
    pub fn fail_all(&mut self, reason: &str) {
        self.resolve(|_| Some(Err(reason.to_owned())));
    }

    fn resolve(&mut self, mut decide: impl FnMut(&Waiter) -> Option<Result<Outcome, String>>) {
        let mut kept = Vec::with_capacity(self.waiters.len());
        for waiter in self.waiters.drain(..) {
            match decide(&waiter) {
                None => kept.push(waiter),
                Some(result) => {
                    let reply = match result {
                        Ok(outcome) => Reply::Done {
                            process: waiter.process,
                            outcome,
                        },
                        Err(message) => Reply::Error { message },
                    };
                    let _ = waiter.reply.send(reply);
                }
            }
        }
        self.waiters = kept;
    }
}
