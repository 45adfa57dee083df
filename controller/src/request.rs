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

/// Sends the request for every job and waits up to its timeout for the final replies,
/// calling `done` as each outcome becomes known.
pub async fn send_all(
    session: &mut Session,
    request: &Request<'_>,
    jobs: Vec<Job>,
    mut done: impl FnMut(&Job, &Outcome),
) -> Result<Vec<(Job, Outcome)>, SessionError> {
    let reply_filter = format!("{}/+/reply/{}", request.topics.prefix(), request.requester);
    session.subscribe(&[reply_filter], QoS::AtLeastOnce).await?;
    let expires_at = SystemTime::now() + request.timeout;
    for job in &jobs {
        publish(session, request, job, expires_at).await?;
    }

    let mut pending: HashMap<String, (Job, bool)> = jobs
        .into_iter()
        .map(|j| (j.cmd_id.clone(), (j, false)))
        .collect();
    let mut results = Vec::new();
    let deadline = tokio::time::Instant::now() + request.timeout;
    while !pending.is_empty() {
        let message = match tokio::time::timeout_at(deadline, session.recv()).await {
            Err(_) => break,
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
        match Outcome::from_reply(reply) {
            None => entry.1 = true,
            Some(outcome) => {
                if let Some((job, _)) = pending.remove(&cmd_id) {
                    done(&job, &outcome);
                    results.push((job, outcome));
                }
            }
        }
    }
    for (_, (job, accepted)) in pending {
        let outcome = Outcome::TimedOut { accepted };
        done(&job, &outcome);
        results.push((job, outcome));
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
        v: VERSION,
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
        .await
}
