//! The command desk: every command — from the control socket or over MQTT — is admitted or
//! refused here, remembered so that it never runs twice, held while it is under way and
//! answered once settled. Pure: decisions are made from the desk's state, the request, what
//! the agent knows ([`Agent`]) and the time, and come back as [`Effect`]s for the runtime to
//! carry out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use respawn_common::messages::{CommandName, CommandReply, Following, Reason, ReplyStatus};
use respawn_common::status::{LogLine, ProcessStatus};
use tokio::sync::oneshot;

use crate::control::{Outcome, Reply, Request, SHUTTING_DOWN};
use crate::mqtt::link::Inbound;
use crate::mqtt::remote::{self, Memory, Policy, RecentCommands, Rejection};
use crate::runtime::audit::AuditBudget;
use crate::runtime::commands::{CommandKind, PendingCommands, RemoteRequest, Requester, Resolved};
use crate::runtime::follow;
use crate::runtime::report;
use crate::supervisor::{Input, Notice, Supervisor};

/// Remote commands remembered for repeats within one session.
const RECENT_COMMANDS: usize = 1024;

/// What the desk needs to know of the agent.
pub trait Agent {
    fn id(&self) -> &str;
    /// `cgroup` or `process-group`.
    fn containment(&self) -> &'static str;
    fn contains(&self, process: &str) -> bool;
    fn pid(&self, process: &str) -> Option<u32>;
    fn statuses(&self) -> Vec<ProcessStatus>;
    /// The last `n` lines of a process's output, oldest first.
    fn lines(&self, process: &str, n: usize) -> Vec<LogLine>;
    fn dropped_lines(&self, process: &str) -> u64;
    /// The last `n` lines of a process, and the number the next line it writes will have.
    fn lines_and_end(&self, process: &str, n: usize) -> (Vec<LogLine>, u64);
    /// When the count of the process's lines began.
    fn numbered_since(&self, process: &str) -> Option<SystemTime>;
    /// Whether a follower holds a lease on the process's output.
    fn is_followed(&self, process: &str) -> bool;
}

/// What the runtime is to do.
#[derive(Debug)]
pub enum Effect {
    /// Answers a request of the control socket.
    Answer(oneshot::Sender<Reply>, Reply),
    /// Replies to a remote requester.
    Reply(RemoteRequest, CommandReply),
    /// Logs a final reply and publishes it as a `command` event, with what was not audited
    /// one by one since the previous one.
    Audit {
        request: RemoteRequest,
        reply: CommandReply,
        unaudited: BTreeMap<String, u64>,
    },
    /// An input for the state machine.
    Feed(Input),
    /// The replay memory is full: a new session, so that nothing forgotten can be replayed.
    RenewSession,
    /// A command came for an old session: the sender may have read an outdated birth.
    RepublishBirth,
    /// Reads or changes the remote configuration; the runtime answers through
    /// [`Desk::finish`].
    Config(RemoteRequest, ConfigCommand),
    /// A follower holds a lease on the output of `process`, from line `seq` on.
    Follow { process: String, seq: u64 },
    /// Reads the configuration file again and answers with what changes; not when it is not
    /// the file the caller named.
    Reload(oneshot::Sender<Reply>, Option<PathBuf>),
}

/// What a `config_*` command asks of the remote configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigCommand {
    Get,
    Apply {
        /// `None` when the command said no text: refused, not taken for an empty one.
        text: Option<String>,
        base: Option<String>,
        dry_run: bool,
    },
    Rollback {
        base: Option<String>,
        dry_run: bool,
    },
}

/// The desk's memory.
pub struct Desk {
    recent: RecentCommands,
    pending: PendingCommands,
    audit: AuditBudget<(RemoteRequest, CommandReply)>,
    shutting_down: bool,
    /// Processes stopped by hand whose stop could not be saved, with why: it holds only until
    /// the agent's next start, and their stop's answer says so.
    unsaved_stops: BTreeMap<String, String>,
}

impl Desk {
    pub fn new() -> Self {
        Self {
            recent: RecentCommands::new(RECENT_COMMANDS),
            pending: PendingCommands::default(),
            audit: AuditBudget::new(),
            shutting_down: false,
            unsaved_stops: BTreeMap::new(),
        }
    }

    /// How saving the stops by hand went after `process`'s changed (`None`: nothing was
    /// written); a save is of them all.
    pub fn stop_saved(&mut self, process: &str, saved: Option<Result<(), String>>) {
        match saved {
            None => {}
            Some(Ok(())) => self.unsaved_stops.clear(),
            Some(Err(why)) => {
                self.unsaved_stops.insert(process.to_owned(), why);
            }
        }
    }

    /// What the answer to a stop or restart must add: that the process had to be killed, and
    /// that a stop holds only until the agent's next start, when it could not be saved.
    fn stop_warning(&self, done: &Resolved) -> Option<String> {
        let stopped = matches!(done.result, Ok(Outcome::Stopped | Outcome::AlreadyStopped));
        let unsaved = self.unsaved_stops.get(&done.process).filter(|_| stopped);
        let unsaved = unsaved.map(|why| {
            let process = &done.process;
            format!(
                "the stop could not be saved ({why}): {process} starts again when the agent does"
            )
        });
        match done.killed && done.result.is_ok() {
            true => Some(joined(
                unsaved,
                "it had not ended on its stop signal by its stop_timeout: killed (SIGKILL)",
            )),
            false => unsaved,
        }
    }

    /// A request on the control socket.
    pub fn local(
        &mut self,
        request: Request,
        answer: oneshot::Sender<Reply>,
        agent: &impl Agent,
    ) -> Vec<Effect> {
        let (process, kind, input) = match request {
            Request::Status => {
                let reply = Reply::Status {
                    agent: agent.id().to_owned(),
                    containment: Some(agent.containment().to_owned()),
                    processes: agent.statuses(),
                };
                return vec![Effect::Answer(answer, reply)];
            }
            Request::Logs { process, lines } => {
                let reply = match agent.contains(&process) {
                    true => Reply::Logs {
                        lines: agent.lines(&process, lines),
                        dropped: agent.dropped_lines(&process),
                        process,
                    },
                    false => unknown(&process, agent),
                };
                return vec![Effect::Answer(answer, reply)];
            }
            Request::Start { process } => {
                (process.clone(), CommandKind::Start, Input::Start(process))
            }
            Request::Stop { process } => (process.clone(), CommandKind::Stop, Input::Stop(process)),
            Request::Reload { .. } if self.shutting_down => {
                return vec![Effect::Answer(answer, shutting_down())];
            }
            Request::Reload { file } => return vec![Effect::Reload(answer, file)],
            Request::Restart { process } => (
                process.clone(),
                CommandKind::Restart,
                Input::Restart(process),
            ),
        };
        if !agent.contains(&process) {
            return vec![Effect::Answer(answer, unknown(&process, agent))];
        }
        if self.shutting_down {
            return vec![Effect::Answer(answer, shutting_down())];
        }
        tracing::info!(process = %process, command = ?kind, "command from the control socket");
        let old_pid = agent.pid(&process);
        self.pending
            .add(process, kind, old_pid, Requester::Local(answer));
        vec![Effect::Feed(input)]
    }

    /// A command that arrived over MQTT, checked against `policy` at `now` (the wall clock,
    /// for its expiry) and `mono` (the monotonic one, for the audit budget).
    pub fn remote(
        &mut self,
        inbound: Inbound,
        policy: Policy<'_>,
        now: SystemTime,
        mono: Instant,
        agent: &impl Agent,
    ) -> Vec<Effect> {
        let id = agent.id();
        let admitted = match remote::admit(&inbound.payload, id, now, |p| agent.contains(p), policy)
        {
            Ok(admitted) => admitted,
            Err(rejection) => {
                let answer = rejection.addressable().map(|(cmd_id, requester)| {
                    let request = RemoteRequest {
                        cmd_id: cmd_id.to_owned(),
                        requester: requester.to_owned(),
                        correlation: inbound.correlation,
                        command: rejection.command,
                        process: rejection.process.clone(),
                        signer: rejection.signer.clone(),
                        unchecked_signer: None,
                    };
                    let reply = CommandReply::rejected(
                        cmd_id,
                        id,
                        rejection.reason,
                        rejection.message.clone(),
                    );
                    (request, reply)
                });
                return self.refuse(answer, &rejection, mono);
            }
        };
        let body = admitted.body;
        let request = RemoteRequest {
            cmd_id: body.cmd_id.clone(),
            requester: body.requester.clone(),
            correlation: inbound.correlation,
            command: body.command,
            process: body.process.clone(),
            signer: admitted.signer,
            unchecked_signer: admitted.unchecked_signer,
        };
        // A command runs at most once: a repeat is rejected, with what happened the first
        // time (checked after the signature, so that a forgery learns nothing).
        if let Some(replay) = self.recent.replay(&body.cmd_id, id) {
            let rejection = Rejection {
                cmd_id: Some(body.cmd_id.clone()),
                requester: Some(body.requester.clone()),
                command: body.command,
                process: body.process.clone(),
                signer: request.signer.clone(),
                reason: Reason::Replayed,
                message: replay.message.clone().unwrap_or_default(),
                for_this_session: false,
            };
            return self.refuse(Some((request, replay)), &rejection, mono);
        }
        let process = body.process.clone().unwrap_or_default();
        let reject =
            |reason, message: String| CommandReply::rejected(&body.cmd_id, id, reason, message);
        if self.shutting_down {
            let reply = reject(Reason::ShuttingDown, SHUTTING_DOWN.into());
            return self.answer(request, reply);
        }
        let (kind, input) = match body.command {
            CommandName::ConfigGet | CommandName::ConfigApply | CommandName::ConfigRollback => {
                let command = match body.command {
                    CommandName::ConfigGet => ConfigCommand::Get,
                    CommandName::ConfigApply => ConfigCommand::Apply {
                        text: body.text.clone(),
                        base: body.base.clone(),
                        dry_run: body.dry_run,
                    },
                    _ => ConfigCommand::Rollback {
                        base: body.base.clone(),
                        dry_run: body.dry_run,
                    },
                };
                request.log_accepted();
                let accepted = CommandReply::new(&body.cmd_id, id, ReplyStatus::Accepted);
                let mut effects = self.answer(request.clone(), accepted);
                effects.push(Effect::Config(request, command));
                return effects;
            }
            CommandName::Follow => return self.follow(request, body.lines, agent),
            CommandName::Status | CommandName::Logs => {
                request.log_accepted();
                let accepted = CommandReply::new(&body.cmd_id, id, ReplyStatus::Accepted);
                let mut done = CommandReply::new(&body.cmd_id, id, ReplyStatus::Succeeded);
                if body.command == CommandName::Status {
                    let statuses = agent.statuses();
                    let (statuses, cut) =
                        report::first_within(statuses, report::STATUS_REPLY_BYTES);
                    done.truncated = cut;
                    done.processes = Some(statuses);
                } else {
                    let wanted = body
                        .lines
                        .unwrap_or(remote::DEFAULT_LOG_LINES)
                        .min(remote::MAX_LOG_LINES);
                    let lines = agent.lines(&process, wanted);
                    let (lines, cut) = report::newest_within(lines, report::LOGS_REPLY_BYTES);
                    done.truncated = cut;
                    done.lines = Some(lines);
                }
                let mut effects = self.answer(request.clone(), accepted);
                effects.extend(self.answer(request, done));
                return effects;
            }
            CommandName::Start => (CommandKind::Start, Input::Start(process.clone())),
            CommandName::Stop => (CommandKind::Stop, Input::Stop(process.clone())),
            CommandName::Restart => (CommandKind::Restart, Input::Restart(process.clone())),
            // `remote::admit` refuses what it does not know, so this is not reached.
            CommandName::Unknown => {
                let reply = reject(Reason::UnknownCommand, "not a command".into());
                return self.answer(request, reply);
            }
        };
        if self.pending.is_busy(&process) {
            let reply = reject(
                Reason::Busy,
                format!("another command on {process} is under way"),
            );
            return self.answer(request, reply);
        }
        request.log_accepted();
        let accepted = CommandReply::new(&body.cmd_id, id, ReplyStatus::Accepted);
        let mut effects = self.answer(request.clone(), accepted);
        let old_pid = agent.pid(&process);
        self.pending
            .add(process, kind, old_pid, Requester::Remote(request));
        effects.push(Effect::Feed(input));
        effects
    }

    /// A `follow`: the last lines, and a lease on the stream of the next ones. A renewal — no
    /// lines asked for, of a stream that runs — is answered but neither remembered nor
    /// audited: it can only keep the stream going 30 s more, and the followers of a process
    /// renew it every 10 s each, which would otherwise fill the audit stream and the replay
    /// memory. A `follow` that asks for lines reads the output, so it is a command like
    /// `logs`: remembered, so that a capture cannot read it again, and audited.
    fn follow(
        &mut self,
        request: RemoteRequest,
        lines: Option<usize>,
        agent: &impl Agent,
    ) -> Vec<Effect> {
        let process = request.process.clone().unwrap_or_default();
        let id = agent.id();
        let accepted = CommandReply::new(&request.cmd_id, id, ReplyStatus::Accepted);
        let mut done = CommandReply::new(&request.cmd_id, id, ReplyStatus::Succeeded);
        let wanted = lines.unwrap_or(0).min(remote::MAX_LOG_LINES);
        let (lines, seq) = agent.lines_and_end(&process, wanted);
        let (lines, cut) = report::newest_within(lines, report::LOGS_REPLY_BYTES);
        done.truncated = cut;
        done.lines = Some(lines);
        done.follow = Some(Following {
            seq,
            lease_secs: follow::LEASE.as_secs(),
            numbered_since: agent.numbered_since(&process),
        });
        let renewal = wanted == 0 && agent.is_followed(&process);
        let mut effects = match renewal {
            true => {
                tracing::debug!(cmd_id = request.cmd_id.as_str(), process = %process, "follow renewed");
                // Not audited, but remembered as every command is: a copy sent again once the
                // stream has ended would otherwise start it anew.
                let mut effects = Vec::from_iter(self.remember(&done));
                effects.push(Effect::Reply(request.clone(), accepted));
                effects.push(Effect::Reply(request, done));
                effects
            }
            false => {
                request.log_accepted();
                let mut effects = self.answer(request.clone(), accepted);
                effects.extend(self.answer(request, done));
                effects
            }
        };
        effects.push(Effect::Follow { process, seq });
        effects
    }

    /// The final reply to a command the runtime carried out itself (a `config_*`).
    pub fn finish(&mut self, request: RemoteRequest, reply: CommandReply) -> Vec<Effect> {
        self.answer(request, reply)
    }

    /// A configuration change that was made, answered with `reply` once each of `starting`
    /// (the processes it adds or restarts) has started or could not: a start that failed
    /// is in the reply, not only in a state published later. Called before the change is fed
    /// to the state machine, so that its notices are seen.
    pub fn await_starts(
        &mut self,
        request: RemoteRequest,
        reply: CommandReply,
        starting: Vec<String>,
        deadline: Instant,
    ) {
        self.pending.add_change(request, reply, starting, deadline);
    }

    /// The agent is stopping: commands that arrive from now on are refused, and a start or
    /// restart under way fails (`shutting_down`), rather than as `unsuccessful` once its
    /// process has stopped; a configuration change under way is answered as made, with what
    /// it had yet to start as not started; a stop goes on to its goal.
    pub fn shut(&mut self, agent_id: &str) -> Vec<Effect> {
        self.shutting_down = true;
        let resolved = self.pending.fail_undone_by_shutdown(SHUTTING_DOWN);
        self.dispatch(resolved, agent_id)
    }

    /// The answers to the commands a notice of the state machine settles.
    pub fn on_notice(&mut self, notice: &Notice, agent_id: &str) -> Vec<Effect> {
        let resolved = self.pending.on_notice(notice);
        self.dispatch(resolved, agent_id)
    }

    /// The answers to the commands on a process that left the configuration.
    pub fn on_forget(&mut self, name: &str, agent_id: &str) -> Vec<Effect> {
        let resolved = self.pending.on_forget(name);
        self.dispatch(resolved, agent_id)
    }

    /// After a batch of inputs: the answers to the commands whose goal already held, or can
    /// no longer be reached.
    pub fn settle(&mut self, supervisor: &Supervisor, agent_id: &str) -> Vec<Effect> {
        let resolved = self.pending.settle(supervisor);
        self.dispatch(resolved, agent_id)
    }

    /// The agent has shut down: every command still under way fails.
    pub fn fail_all(&mut self, agent_id: &str) -> Vec<Effect> {
        let resolved = self.pending.fail_all("the agent has shut down");
        self.dispatch(resolved, agent_id)
    }

    /// When [`Desk::flush`] has an audit to make or a change to answer.
    pub fn flush_at(&self) -> Option<Instant> {
        let deadlines = [self.audit.flush_at(), self.pending.change_deadline()];
        deadlines.into_iter().flatten().min()
    }

    /// At the end of an audit window with refusals held back and no audit since: the audit
    /// of the latest of them, carrying the count of the others. And the answers to the
    /// changes that waited as long as they may.
    pub fn flush(&mut self, mono: Instant, agent_id: &str) -> Vec<Effect> {
        self.pending.expire_changes(mono);
        let mut effects = self.dispatch(Vec::new(), agent_id);
        if let Some((request, reply)) = self.audit.flush(mono) {
            effects.push(self.audited(request, reply));
        }
        effects
    }

    fn dispatch(&mut self, resolved: Vec<Resolved>, agent_id: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (request, reply) in self.pending.changes_done() {
            effects.extend(self.answer(request, reply));
        }
        for done in resolved {
            let warning = self.stop_warning(&done);
            match done.requester {
                Requester::Local(answer) => {
                    let reply = match done.result {
                        Ok(outcome) => Reply::Done {
                            process: done.process,
                            outcome,
                            warning,
                        },
                        Err(failure) => Reply::Error {
                            message: failure.message,
                        },
                    };
                    effects.push(Effect::Answer(answer, reply));
                }
                Requester::Remote(request) => {
                    let reply = report::outcome_reply(
                        &request.cmd_id,
                        agent_id,
                        &done.process,
                        &done.result,
                        warning.as_deref(),
                    );
                    effects.extend(self.answer(request, reply));
                }
            }
        }
        effects
    }

    /// Replies to an admitted command, remembers the reply so that the command never runs
    /// again, and audits a final one.
    fn answer(&mut self, request: RemoteRequest, mut reply: CommandReply) -> Vec<Effect> {
        // A signature that counted for nothing: its signer, and the audit, hear so, also
        // beside what the command did (a success shows its warning, not its message).
        if let Some(key) = request.unchecked_signer.as_deref() {
            let note = format!("signed as {key:?}, a key this agent has no [[operator]] for: taken as unsigned, as allow_unsigned_commands = true lets it");
            if reply.status == ReplyStatus::Succeeded {
                reply.warning = Some(joined(reply.warning.take(), &note));
            }
            if reply.status.is_final() {
                reply.message = Some(joined(reply.message.take(), &note));
            }
        }
        let mut effects = Vec::from_iter(self.remember(&reply));
        effects.push(Effect::Reply(request.clone(), reply.clone()));
        if reply.status.is_final() {
            effects.push(self.audited(request, reply));
        }
        effects
    }

    /// Remembers `reply` so that its command never runs again; when the memory is full, a
    /// new session rather than forgetting.
    fn remember(&mut self, reply: &CommandReply) -> Option<Effect> {
        let full = self.recent.record(reply) == Memory::Full;
        full.then(|| {
            tracing::warn!("{RECENT_COMMANDS} commands in one session: starting a new session, so that none of them can be replayed once forgotten");
            Effect::RenewSession
        })
    }

    /// Answers a command that will not run — unsigned, forged, stale, replayed, … — and
    /// audits it within the budget: anyone who can publish on the broker, or who once saw a
    /// signed command go by, can send these by the thousand, and a flood of them must fill
    /// neither the log nor the event stream (nor the chat channels that follow it). What is
    /// not audited one by one is counted in the next audit event.
    fn refuse(
        &mut self,
        answer: Option<(RemoteRequest, CommandReply)>,
        rejection: &Rejection,
        mono: Instant,
    ) -> Vec<Effect> {
        let reason = rejection.reason.as_str();
        let Some((request, reply)) = answer else {
            if let Some(similar_before) = self.audit.garbage(reason, mono) {
                tracing::warn!(
                    reason,
                    detail = rejection.message.as_str(),
                    similar_before,
                    "ignoring a command that cannot be answered"
                );
            }
            return Vec::new();
        };
        let mut effects = Vec::new();
        if rejection.for_this_session {
            effects.extend(self.remember(&reply));
        }
        let answer = Effect::Reply(request.clone(), reply.clone());
        let Some((request, reply)) = self.audit.refuse((request, reply), reason, mono) else {
            effects.push(answer);
            return effects;
        };
        // The birth goes out before the answer: on the same connection the broker takes it
        // first, so a sender that reads the birth again on this answer finds the new one.
        if rejection.reason == Reason::StaleSession {
            effects.push(Effect::RepublishBirth);
        }
        effects.push(answer);
        effects.push(self.audited(request, reply));
        effects
    }

    fn audited(&mut self, request: RemoteRequest, reply: CommandReply) -> Effect {
        Effect::Audit {
            request,
            reply,
            unaudited: self.audit.take_counts(),
        }
    }
}

/// `note` after what `said` already says, if anything.
fn joined(said: Option<String>, note: &str) -> String {
    match said {
        Some(said) => format!("{said}; {note}"),
        None => note.to_owned(),
    }
}

/// The answer to a local command that comes while the agent stops.
fn shutting_down() -> Reply {
    Reply::Error {
        message: SHUTTING_DOWN.into(),
    }
}

/// No such process, with the one probably meant.
fn unknown(process: &str, agent: &impl Agent) -> Reply {
    let statuses = agent.statuses();
    let names: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
    let hint = match respawn_common::config_file::closest(process, &names) {
        Some(name) => format!(" (did you mean {name:?}?)"),
        None => String::new(),
    };
    Reply::Error {
        message: format!("unknown process {process:?}{hint}"),
    }
}

#[cfg(test)]
#[path = "desk_tests.rs"]
mod tests;
