//! Commands to agents: one per target, all sent at once, each answered or timed out.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use respawn_common::messages::{
    CommandBody, CommandEnvelope, CommandName, CommandReply, Reason, ReplyStatus, VERSION,
};
use respawn_common::signing::SigningKey;
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use crate::fleet::{Fleet, Liveness, Target};
use crate::session::{Session, SessionError};

/// One command to one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub agent: String,
    pub process: Option<String>,
    pub cmd_id: String,
    /// The agent's current session, from its birth message; the command is bound to it.
    pub session: Option<String>,
}

impl Job {
    pub fn new(agent: &str, process: Option<&str>, session: Option<&str>) -> Self {
        Self {
            agent: agent.to_owned(),
            process: process.map(str::to_owned),
            cmd_id: uuid::Uuid::new_v4().to_string(),
            session: session.map(str::to_owned),
        }
    }

    /// The same command again, as a new one (new id) for `session`.
    pub fn renewed(&self, session: Option<&str>) -> Self {
        Self::new(&self.agent, self.process.as_deref(), session)
    }

    /// `agent/process`, or `agent`.
    pub fn label(&self) -> String {
        match &self.process {
            Some(p) => format!("{}/{p}", self.agent),
            None => self.agent.clone(),
        }
    }
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(CommandReply),
    Failed(CommandReply),
    Rejected(CommandReply),
    /// No final reply in time; `accepted` says whether the agent at least acknowledged it.
    TimedOut {
        accepted: bool,
    },
    /// Not sent: the agent is not online.
    NotSent(String),
}

impl Outcome {
    /// The agent reconnected or restarted since its session was read.
    pub fn is_stale_session(&self) -> bool {
        matches!(self, Self::Rejected(r) if r.reason == Some(Reason::StaleSession))
    }

    fn from_reply(reply: CommandReply) -> Option<Self> {
        match reply.status {
            ReplyStatus::Succeeded => Some(Self::Succeeded(reply)),
            ReplyStatus::Failed | ReplyStatus::Unknown => Some(Self::Failed(reply)),
            ReplyStatus::Rejected => Some(Self::Rejected(reply)),
            ReplyStatus::Accepted => None,
        }
    }
}

/// A requester id: unique per run, valid as a topic level.
pub fn requester() -> String {
    format!("ctl-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// What a command carries besides its name and target.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// `logs`: how many lines.
    pub lines: Option<usize>,
    /// `config_apply`: the new remote configuration.
    pub text: Option<String>,
    /// `config_apply`: the sha256 of the remote configuration it replaces.
    pub base: Option<String>,
    /// `config_apply`: check only.
    pub dry_run: bool,
}

/// What every command of one run shares.
pub struct Request<'a> {
    pub topics: &'a Topics,
    pub requester: &'a str,
    pub command: CommandName,
    pub args: Args,
    /// Signs every command when set.
    pub key: Option<&'a SigningKey>,
    pub timeout: Duration,
}

/// Commands sent and not yet finally answered, at most. Each brings two replies (accepted, then
/// the outcome), and a broker drops what it cannot queue for a reader that falls behind
/// (Mosquitto: beyond `max_queued_messages`, 1,000 by default): a thousand commands sent at
/// once lost a sixth of their replies, where this window keeps them under half of that queue.
pub const IN_FLIGHT: usize = 200;

/// How long a `stale_session` refusal waits for another agent under the same id to take the
/// command. Two agents given one id (at two sites) both get each command: the one whose
/// session it is bound to takes it, the other refuses it. Their answers cross the same
/// brokers within milliseconds of each other, on a LAN or over a bridge; a second is far
/// above that, and is what a refusal of an agent that truly reconnected costs before the
/// command is sent again.
pub const STALE_REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Whether an agent says `reason` of `command` only before it takes it, never after its
/// `accepted`: such a refusal that follows an `accepted` is another agent's under the same id.
/// A configuration change is taken first and then checked: its text (`malformed`) and the
/// processes it touches (`not_allowed`) may refuse it after its `accepted`.
fn refused_before_taking(command: CommandName, reason: Option<Reason>) -> bool {
    use Reason::*;
    let Some(reason) = reason else {
        return false;
    };
    let checked_after_taking = matches!(
        command,
        CommandName::ConfigApply | CommandName::ConfigRollback
    ) && matches!(reason, Malformed | NotAllowed);
    let before = matches!(
        reason,
        Malformed
            | UnknownCommand
            | WrongAgent
            | Expired
            | Replayed
            | Unsigned
            | BadSignature
            | UnknownKey
            | NotAllowed
            | StaleSession
    );
    before && !checked_after_taking
}

/// A command sent and not finally answered.
struct Pending {
    job: Job,
    command: CommandName,
    accepted: bool,
    deadline: tokio::time::Instant,
    /// A `stale_session` refusal held back until its grace ends, unless the command is taken.
    stale_refusal: Option<(Outcome, tokio::time::Instant)>,
    /// Why another agent under the same id refused the command one of them took: said with
    /// its outcome, as the mistake it shows.
    refused_elsewhere: Option<Reason>,
}

impl Pending {
    fn new(job: Job, command: CommandName, deadline: tokio::time::Instant) -> Self {
        Self {
            job,
            command,
            accepted: false,
            deadline,
            stale_refusal: None,
            refused_elsewhere: None,
        }
    }

    /// When it is settled without a further reply: as refused, or as timed out.
    fn due(&self) -> tokio::time::Instant {
        match &self.stale_refusal {
            Some((_, until)) => (*until).min(self.deadline),
            None => self.deadline,
        }
    }

    fn settled_unanswered(self) -> (Job, Outcome) {
        let outcome = match self.stale_refusal {
            Some((refusal, _)) => refusal,
            None => Outcome::TimedOut {
                accepted: self.accepted,
            },
        };
        (self.job, outcome)
    }

    /// Takes a reply on the topic of the agent the command went to (from it, or from another
    /// agent under the same id); its outcome once it is one.
    fn answer(&mut self, reply: CommandReply, now: tokio::time::Instant) -> Option<Outcome> {
        if reply.status == ReplyStatus::Rejected
            && self.accepted
            && refused_before_taking(self.command, reply.reason)
        {
            self.refused_elsewhere = reply.reason;
            return None;
        }
        match Outcome::from_reply(reply) {
            None => {
                self.accepted = true;
                if self.stale_refusal.take().is_some() {
                    self.refused_elsewhere = Some(Reason::StaleSession);
                }
                None
            }
            Some(refusal) if refusal.is_stale_session() => {
                self.stale_refusal = Some((refusal, now + STALE_REFUSAL_GRACE));
                None
            }
            Some(outcome) => Some(self.with_refusal_elsewhere(outcome)),
        }
    }

    /// `outcome`, warning of the other agent under the same id if one refused the command.
    fn with_refusal_elsewhere(&self, mut outcome: Outcome) -> Outcome {
        let (Some(reason), Outcome::Succeeded(reply) | Outcome::Failed(reply)) =
            (self.refused_elsewhere, &mut outcome)
        else {
            return outcome;
        };
        let twice = format!(
            "another agent answers as {} too, and refused it ({}): give each agent an id of its own",
            self.job.agent,
            reason.as_str()
        );
        reply.warning = Some(match reply.warning.take() {
            Some(warning) => format!("{warning}; {twice}"),
            None => twice,
        });
        outcome
    }
}

/// Takes the commands due at `now` out of `pending`, each with its outcome without a further
/// reply.
fn take_due(
    pending: &mut HashMap<String, Pending>,
    now: tokio::time::Instant,
) -> Vec<(Job, Outcome)> {
    let due: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.due() <= now)
        .map(|(id, _)| id.clone())
        .collect();
    let taken = due.iter().filter_map(|id| pending.remove(id));
    taken.map(Pending::settled_unanswered).collect()
}

/// Sends the request for every job, [`IN_FLIGHT`] at most under way at once, and waits up to
/// the request's timeout from each one's sending for its final reply, calling `done` as each
/// outcome becomes known.
pub async fn send_all(
    session: &mut Session,
    request: &Request<'_>,
    jobs: Vec<Job>,
    mut done: impl FnMut(&Job, &Outcome),
) -> Result<Vec<(Job, Outcome)>, SessionError> {
    let reply_filter = request.topics.replies_to(request.requester);
    session.subscribe(&[reply_filter], QoS::AtLeastOnce).await?;
    let mut waiting = jobs.into_iter();
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut results = Vec::new();
    let mut settle = |job: Job, outcome: Outcome, results: &mut Vec<(Job, Outcome)>| {
        done(&job, &outcome);
        results.push((job, outcome));
    };
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(job) = waiting.next() else {
                break;
            };
            publish(session, request, &job, SystemTime::now() + request.timeout).await?;
            let deadline = tokio::time::Instant::now() + request.timeout;
            let sent = Pending::new(job, request.command, deadline);
            pending.insert(sent.job.cmd_id.clone(), sent);
        }
        let Some(due) = pending.values().map(Pending::due).min() else {
            break;
        };
        let message = match tokio::time::timeout_at(due, session.recv()).await {
            Err(_) => {
                for (job, outcome) in take_due(&mut pending, tokio::time::Instant::now()) {
                    settle(job, outcome, &mut results);
                }
                continue;
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(message)) => message,
        };
        let Ok(reply) = serde_json::from_slice::<CommandReply>(&message.payload) else {
            continue;
        };
        tracing::debug!(cmd_id = %reply.cmd_id, status = ?reply.status, "reply");
        let cmd_id = reply.cmd_id.clone();
        let Some(entry) = pending.get_mut(&cmd_id) else {
            continue;
        };
        // Only the agent the command went to answers it: a reply on another agent's topic
        // (one that saw the command go by, and knows its id) is not its outcome.
        let from = request.topics.parse(&message.topic);
        if from.is_none_or(|topic| topic.agent() != entry.job.agent) {
            tracing::debug!(cmd_id = %cmd_id, topic = %message.topic, "a reply from another agent");
            continue;
        }
        if let Some(outcome) = entry.answer(reply, tokio::time::Instant::now()) {
            if let Some(p) = pending.remove(&cmd_id) {
                settle(p.job, outcome, &mut results);
            }
        }
    }
    Ok(results)
}

/// Publishes `request` for `job`, to run before `expires_at`; the replies go to the
/// requester's reply topic, which the caller has subscribed to.
pub async fn publish(
    session: &Session,
    request: &Request<'_>,
    job: &Job,
    expires_at: SystemTime,
) -> Result<(), SessionError> {
    let (topics, requester, command, args) = (
        request.topics,
        request.requester,
        request.command,
        &request.args,
    );
    let body = CommandBody {
        cmd_id: job.cmd_id.clone(),
        agent: job.agent.clone(),
        requester: requester.to_owned(),
        command,
        process: job.process.clone(),
        lines: args.lines,
        text: args.text.clone(),
        base: args.base.clone(),
        dry_run: args.dry_run,
        expires_at,
        session: job.session.clone(),
    };
    let body = serde_json::to_string(&body).map_err(|e| SessionError::Send(e.to_string()))?;
    let envelope = CommandEnvelope {
        v: Some(VERSION),
        signature: request.key.map(|k| k.sign(body.as_bytes())),
        body,
    };
    let payload = serde_json::to_vec(&envelope).map_err(|e| SessionError::Send(e.to_string()))?;
    let expiry = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let properties = PublishProperties {
        message_expiry_interval: Some(u32::try_from(expiry.as_secs().max(1)).unwrap_or(u32::MAX)),
        correlation_data: Some(job.cmd_id.clone().into_bytes().into()),
        response_topic: Some(topics.reply(&job.agent, requester)),
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    tracing::debug!(agent = %job.agent, cmd_id = %job.cmd_id, command = command.as_str(), "sending");
    session
        .publish(topics.command(&job.agent), payload, properties)
        .await?;
    if command.changes_what_runs() && !args.dry_run {
        respawn_common::interrupt::asked();
    }
    Ok(())
}

/// A job for `process` of `agent`, bound to the agent's current session.
pub fn job(fleet: &Fleet, agent: &str, process: &str) -> Job {
    let session = fleet.agent(agent).and_then(|a| a.session());
    Job::new(agent, Some(process), session)
}

/// Why a command is not sent to an agent in `liveness` (offline, lost, stale, unknown), if it
/// is not: only an agent that is there to answer is sent one.
pub fn not_sent_to(liveness: Option<Liveness>) -> Option<Outcome> {
    match liveness {
        Some(liveness) if liveness.reachable() => None,
        Some(liveness) => Some(Outcome::NotSent(format!("the agent is {liveness}"))),
        None => Some(Outcome::NotSent("the agent is unknown".into())),
    }
}

/// Sends one job, as [`send_with_retry`] does, and its outcome.
pub async fn send_one(
    session: &mut Session,
    topics: &Topics,
    request: &Request<'_>,
    job: Job,
    renewing: impl FnMut(&Job),
) -> Result<Outcome, SessionError> {
    let results = send_with_retry(session, topics, request, vec![job], |_, _| {}, renewing).await?;
    let outcome = results.into_iter().next().map(|(_, outcome)| outcome);
    Ok(outcome.unwrap_or(Outcome::TimedOut { accepted: false }))
}

/// Sends the jobs; those rejected because the agent reconnected since its session was read
/// are sent once more, bound to the session it announces now, as new jobs that `renewing`
/// is told of before they go.
pub async fn send_with_retry(
    session: &mut Session,
    topics: &Topics,
    request: &Request<'_>,
    jobs: Vec<Job>,
    mut done: impl FnMut(&Job, &Outcome),
    mut renewing: impl FnMut(&Job),
) -> Result<Vec<(Job, Outcome)>, SessionError> {
    let mut results = send_all(session, request, jobs, |job, outcome| {
        if !outcome.is_stale_session() {
            done(job, outcome);
        }
    })
    .await?;
    let stale: Vec<Job> = results
        .iter()
        .filter(|(_, o)| o.is_stale_session())
        .map(|(j, _)| j.clone())
        .collect();
    if stale.is_empty() {
        return Ok(results);
    }
    tracing::debug!(count = stale.len(), "stale sessions; reading them again");
    results.retain(|(_, o)| !o.is_stale_session());
    let agents: Vec<Target> = stale.iter().map(|j| Target::agent(&j.agent)).collect();
    let fleet = crate::reading::read_fleet(session, topics, &agents).await?;
    let renewed: Vec<Job> = stale
        .iter()
        .map(|j| j.renewed(fleet.agent(&j.agent).and_then(|a| a.session())))
        .collect();
    renewed.iter().for_each(&mut renewing);
    results.extend(send_all(session, request, renewed, done).await?);
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn reply(status: &str, reason: Option<&str>) -> CommandReply {
        let mut json = serde_json::json!({
            "cmd_id": "c1", "agent": "dup-pi", "status": status, "at": "2026-12-07T12:00:00Z",
        });
        if let Some(reason) = reason {
            json["reason"] = reason.into();
        }
        serde_json::from_value(json).unwrap()
    }

    fn pending(now: Instant) -> Pending {
        sent(CommandName::Restart, now)
    }

    fn sent(command: CommandName, now: Instant) -> Pending {
        let job = Job::new("dup-pi", Some("common"), Some("s1"));
        Pending::new(job, command, now + Duration::from_secs(10))
    }

    fn warning(outcome: &Option<Outcome>) -> Option<&str> {
        match outcome {
            Some(Outcome::Succeeded(reply)) => reply.warning.as_deref(),
            other => panic!("not a success: {other:?}"),
        }
    }

    /// Two agents under one id (found by a new-user run: one `restart` ran on both Pis and
    /// was reported as refused): the refusal of the one whose session the command is not
    /// bound to is not the command's outcome, before or after the other took it, and the
    /// outcome says that two agents answer.
    #[test]
    fn a_stale_session_refusal_is_no_outcome_of_a_command_another_agent_took() {
        let now = Instant::now();
        let stale = || reply("rejected", Some("stale_session"));
        let twice = "another agent answers as dup-pi too, and refused it (stale_session): give each agent an id of its own";
        // Taken, then refused by the other: the outcome is still to come.
        let mut p = pending(now);
        assert_eq!(p.answer(reply("accepted", None), now), None);
        assert_eq!(p.answer(stale(), now), None);
        assert_eq!(p.due(), p.deadline);
        let done = p.answer(reply("succeeded", None), now);
        assert_eq!(warning(&done), Some(twice));
        // Refused first, then taken: the refusal is dropped.
        let mut p = pending(now);
        assert_eq!(p.answer(stale(), now), None);
        assert_eq!(p.due(), now + STALE_REFUSAL_GRACE);
        assert_eq!(p.answer(reply("accepted", None), now), None);
        assert_eq!(p.due(), p.deadline);
        let done = p.answer(reply("succeeded", None), now);
        assert_eq!(warning(&done), Some(twice));
        let (_, outcome) = pending(now).settled_unanswered();
        assert_eq!(outcome, Outcome::TimedOut { accepted: false });
    }

    /// The other agent may refuse it for another reason it gives before taking a command (its
    /// operators differ, found by a review); a refusal an agent gives after taking one is the
    /// outcome.
    #[test]
    fn a_refusal_before_taking_that_follows_an_accepted_is_another_agents() {
        let now = Instant::now();
        let mut p = pending(now);
        assert_eq!(p.answer(reply("accepted", None), now), None);
        assert_eq!(p.answer(reply("rejected", Some("unknown_key")), now), None);
        let done = p.answer(reply("succeeded", None), now);
        assert!(
            warning(&done).is_some_and(|w| w.contains("(unknown_key)")),
            "{done:?}"
        );
        let mut p = pending(now);
        assert_eq!(p.answer(reply("accepted", None), now), None);
        let refused = p.answer(reply("rejected", Some("invalid_config")), now);
        assert!(matches!(refused, Some(Outcome::Rejected(_))), "{refused:?}");
        // A configuration change is checked once taken: its process refused to the operator
        // is its outcome (found by a review: it timed out instead).
        for command in [CommandName::ConfigApply, CommandName::ConfigRollback] {
            for reason in ["not_allowed", "malformed"] {
                let mut p = sent(command, now);
                assert_eq!(p.answer(reply("accepted", None), now), None);
                let refused = p.answer(reply("rejected", Some(reason)), now);
                assert!(matches!(refused, Some(Outcome::Rejected(_))), "{refused:?}");
            }
        }
    }

    /// An agent that reconnected since its session was read refuses alone: after the grace,
    /// the refusal is the outcome, and the command is sent again bound to its new session.
    #[test]
    fn a_stale_session_refusal_alone_is_the_outcome_after_its_grace() {
        let now = Instant::now();
        let mut pending_jobs = HashMap::new();
        let mut refused = pending(now);
        assert_eq!(
            refused.answer(reply("rejected", Some("stale_session")), now),
            None
        );
        pending_jobs.insert("refused".to_owned(), refused);
        pending_jobs.insert("waiting".to_owned(), pending(now));
        assert!(take_due(&mut pending_jobs, now).is_empty());
        let due = take_due(&mut pending_jobs, now + STALE_REFUSAL_GRACE);
        assert_eq!(due.len(), 1, "{due:?}");
        assert!(due[0].1.is_stale_session(), "{due:?}");
        assert_eq!(pending_jobs.len(), 1, "the other waits for its deadline");
        let timed_out = take_due(&mut pending_jobs, now + Duration::from_secs(10));
        assert_eq!(timed_out[0].1, Outcome::TimedOut { accepted: false });
        // Any other refusal is the outcome at once.
        let mut p = pending(now);
        let refused = p.answer(reply("rejected", Some("bad_signature")), now);
        assert!(matches!(refused, Some(Outcome::Rejected(_))), "{refused:?}");
    }
}
