//! `respawnctl logs`: the last lines one process wrote; with `-f`, then every new line as it is
//! written, from the agent's live stream, for as long as this follower renews its lease.

use std::process::ExitCode;
use std::time::Duration;

use respawn_common::messages::{
    AgentState, CommandName, CommandReply, LogBatch, Presence, Reason, ReplyStatus, MAX_LOG_LINES,
};
use respawn_common::status::LogLine;
use respawn_common::topics::{Topic, Topics};
use rumqttc::v5::mqttbytes::QoS;
use tokio::signal::unix::SignalKind;

use super::{exit_code, fleet_snapshot, job, print, read_fleet, send_with_retry, signing_key};
use crate::fleet::{Fleet, Target};
use crate::output::{self, Style};
use crate::request::{self, Args, Job, Outcome, Request};
use crate::session::{Message, Session};
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    target: Target,
    lines: usize,
    timeout: Duration,
    style: Style,
) -> anyhow::Result<ExitCode> {
    if target.process.is_none() {
        eprintln!("respawnctl: name one process: {target}/PROCESS");
        return Ok(ExitCode::FAILURE);
    }
    let (mut session, fleet) = fleet_snapshot(settings, std::slice::from_ref(&target)).await?;
    let (agent, process) = match one_process(&mut session, &settings.topics, &fleet, &target).await
    {
        Ok(found) => found,
        Err(code) => {
            session.close().await;
            return Ok(code);
        }
    };
    let job = job(&fleet, &agent, &process);
    if let Some(l) = fleet
        .agent(&agent)
        .map(|a| a.liveness())
        .filter(|l| !l.reachable())
    {
        let outcome = Outcome::NotSent(format!("the agent is {l}"));
        // Errors to stderr: stdout holds the lines, for files and pipes.
        eprintln!(
            "{}",
            output::outcome_line(CommandName::Logs, &job, &outcome, timeout, style)
        );
        session.close().await;
        return Ok(ExitCode::from(2));
    }
    let key = signing_key(settings)?;
    let requester = request::requester();
    let request = Request {
        topics: &settings.topics,
        requester: &requester,
        command: CommandName::Logs,
        args: Args {
            lines: Some(lines),
            ..Args::default()
        },
        key: key.as_ref(),
        timeout,
    };
    let results = send_with_retry(
        &mut session,
        &settings.topics,
        &request,
        vec![job],
        |_, _| {},
    )
    .await?;
    session.close().await;
    let Some((job, outcome)) = results.into_iter().next() else {
        return Ok(ExitCode::from(3));
    };
    match &outcome {
        Outcome::Succeeded(reply) => {
            let got = reply.lines.as_deref().unwrap_or_default();
            // `-n 0` asked for none: that there are none says nothing.
            if got.is_empty() && lines > 0 {
                eprintln!("(no output from {} yet)", job.label());
            }
            print(&output::log_lines(got, reply.truncated));
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprintln!(
                "{}",
                output::outcome_line(CommandName::Logs, &job, other, timeout, style)
            );
            Ok(exit_code(&[other], false))
        }
    }
}

/// The one process `target` names, or why not (printed) as the exit code.
async fn one_process(
    session: &mut Session,
    topics: &Topics,
    fleet: &Fleet,
    target: &Target,
) -> Result<(String, String), ExitCode> {
    if target.process.is_none() {
        eprintln!("respawnctl: name one process: {target}/PROCESS");
        return Err(ExitCode::FAILURE);
    }
    match fleet.select(target).as_slice() {
        [] => {
            super::say_unmatched(session, topics, target).await;
            Err(ExitCode::from(2))
        }
        [one] => Ok(one.clone()),
        many => {
            let names: Vec<String> = many.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            eprintln!(
                "respawnctl: {target} matches {} processes ({}); name one",
                many.len(),
                names.join(", ")
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// How often a follower renews its lease; the agent holds it for three times as long.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// `respawnctl logs -f`: the last `lines`, then every new line until Ctrl-C.
pub async fn follow(
    settings: &Settings,
    target: Target,
    lines: usize,
    json: bool,
    timeout: Duration,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let topics = &settings.topics;
    // Installed first: a Ctrl-C at any moment from here on ends the command cleanly.
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut session = Session::connect(settings, true).await?;
    let fleet = read_fleet(&mut session, topics, std::slice::from_ref(&target)).await?;
    let (agent, process) = match one_process(&mut session, topics, &fleet, &target).await {
        Ok(found) => found,
        Err(code) => {
            session.close().await;
            return Ok(code);
        }
    };
    if let Some(liveness) = fleet
        .agent(&agent)
        .map(|a| a.liveness())
        .filter(|l| !l.reachable())
    {
        let job = Job::new(&agent, Some(&process), None);
        let outcome = Outcome::NotSent(format!("the agent is {liveness}"));
        let line = output::outcome_line(CommandName::Follow, &job, &outcome, timeout, style);
        eprintln!("{line}");
        session.close().await;
        return Ok(ExitCode::from(2));
    }
    let key = signing_key(settings)?;
    let requester = request::requester();
    let filters = [
        topics.logs(&agent, &process),
        topics.state(&agent),
        topics.reply(&agent, &requester),
    ];
    let early = session.subscribe(&filters, QoS::AtLeastOnce).await?;
    let mut follower = Follower::new(&agent, &process, json);
    follower.session = fleet
        .agent(&agent)
        .and_then(|a| a.session())
        .map(str::to_owned);
    let mut request = Request {
        topics,
        requester: &requester,
        command: CommandName::Follow,
        args: Args::default(),
        key: key.as_ref(),
        timeout,
    };
    follower.send(&session, &mut request, lines).await?;
    let first_deadline = tokio::time::Instant::now() + timeout;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    for message in early {
        follower.on_message(topics, &message);
    }
    let code = loop {
        if let Some(code) = follower.finished.take() {
            break code;
        }
        // `logs -f | head`: done once the reader is (its lease then runs out at the agent).
        if super::reader_gone() {
            break ExitCode::SUCCESS;
        }
        // Back after a gap: the reply's lines fill in what the stream did not bring. Not while
        // the agent is away: the ask would wait at the broker and reach it bound to its old
        // session (a `stale_session` refusal in its audit); its birth asks again.
        if follower.resync && follower.online {
            follower.resync = false;
            follower.send(&session, &mut request, MAX_LOG_LINES).await?;
            // It renews the lease too; and a renewal due at once (missed while reconnecting)
            // would only race it.
            renew.reset();
        }
        let waiting_first = follower.next.is_none();
        tokio::select! {
            message = session.recv() => match message {
                Ok(m) => follower.on_message(topics, &m),
                Err(e) => {
                    eprintln!("respawnctl: {e}; reconnecting");
                    while let Err(e) = session.wait_connected().await {
                        tracing::debug!(error = %e, "still disconnected");
                    }
                    for m in session.subscribe(&filters, QoS::AtLeastOnce).await? {
                        follower.on_message(topics, &m);
                    }
                    eprintln!("respawnctl: reconnected");
                    follower.resync = true;
                }
            },
            // Not while the agent is away: its broker session would queue the renewal and
            // hand it over, bound to its old session, when it is back (a `stale_session`
            // refusal in its audit); its new birth starts the stream again instead.
            _ = renew.tick() => if follower.online {
                let lines = follower.renewal_lines();
                follower.send(&session, &mut request, lines).await?;
            },
            _ = tokio::time::sleep_until(first_deadline), if waiting_first => {
                let job = Job::new(&agent, Some(&process), None);
                let outcome = Outcome::TimedOut { accepted: follower.accepted };
                eprintln!("{}", output::outcome_line(CommandName::Follow, &job, &outcome, timeout, style));
                break ExitCode::from(3);
            }
            _ = interrupt.recv() => break ExitCode::SUCCESS,
        }
    };
    session.close().await;
    Ok(code)
}

/// What a follower knows: the agent's session, and the number of the next line to print.
/// Lines are printed once each, in order; a gap is said, never passed over in silence.
struct Follower<'a> {
    agent: &'a str,
    process: &'a str,
    json: bool,
    /// The agent's current session, from its birth.
    session: Option<String>,
    /// The `follow` waiting for its answer, and how many lines it asked for.
    sent: Option<(String, usize)>,
    accepted: bool,
    /// The number of the next line to print: `None` until the first reply says where the
    /// stream starts (batches that come earlier wait in `early`).
    next: Option<u64>,
    early: Vec<LogBatch>,
    /// A `follow` asking for the lines of a gap is under way: the stream's batches wait in
    /// `early` for its lines, which come first (printed at once, they would pass over them).
    filling: bool,
    /// Send a `follow` for the lines of a gap at once (a new session, a reconnection).
    resync: bool,
    /// How the command ends, once it is known.
    finished: Option<ExitCode>,
    online: bool,
}

impl<'a> Follower<'a> {
    fn new(agent: &'a str, process: &'a str, json: bool) -> Self {
        Self {
            agent,
            process,
            json,
            session: None,
            sent: None,
            accepted: false,
            next: None,
            early: Vec::new(),
            filling: false,
            resync: false,
            finished: None,
            online: true,
        }
    }

    /// What a renewal asks for: no lines, as the stream brings them; but one that replaces an
    /// ask for a gap's lines still unanswered asks for them again, or its answer, the only one
    /// now awaited, would fill nothing.
    fn renewal_lines(&self) -> usize {
        self.sent.as_ref().map_or(0, |(_, lines)| *lines)
    }

    /// Sends a `follow` asking for the last `lines`.
    async fn send(
        &mut self,
        session: &Session,
        request: &mut Request<'_>,
        lines: usize,
    ) -> Result<(), crate::session::SessionError> {
        request.args.lines = Some(lines.min(MAX_LOG_LINES));
        let job = Job::new(self.agent, Some(self.process), self.session.as_deref());
        let expires_at = std::time::SystemTime::now() + request.timeout;
        request::publish(session, request, &job, expires_at).await?;
        self.sent = Some((job.cmd_id, lines));
        self.accepted = false;
        self.filling |= lines > 0 && self.next.is_some();
        Ok(())
    }

    fn on_message(&mut self, topics: &Topics, message: &Message) {
        match topics.parse(&message.topic) {
            Some(Topic::Logs { .. }) => {
                if let Ok(batch) = serde_json::from_slice::<LogBatch>(&message.payload) {
                    self.on_batch(batch);
                }
            }
            Some(Topic::State { .. }) => {
                if let Ok(state) = serde_json::from_slice::<AgentState>(&message.payload) {
                    self.on_state(state);
                }
            }
            Some(Topic::Reply { .. }) => {
                if let Ok(reply) = serde_json::from_slice::<CommandReply>(&message.payload) {
                    self.on_reply(reply);
                }
            }
            _ => {}
        }
    }

    fn on_state(&mut self, state: AgentState) {
        let online = state.state == Presence::Online;
        if online != self.online {
            match online {
                true => eprintln!("respawnctl: {} is back online", self.agent),
                false => eprintln!(
                    "respawnctl: {} went away; following again when it is back",
                    self.agent
                ),
            }
        }
        self.online = online;
        let session = state.session.filter(|s| !s.is_empty());
        if online && session.is_some() && session != self.session {
            self.session = session;
            // A new session: the agent reconnected or restarted, and the lease may be gone.
            self.resync = true;
        }
    }

    fn on_reply(&mut self, reply: CommandReply) {
        let asked = match &self.sent {
            Some((cmd_id, asked)) if *cmd_id == reply.cmd_id => *asked,
            _ => return,
        };
        match reply.status {
            ReplyStatus::Accepted => self.accepted = true,
            ReplyStatus::Succeeded => {
                self.sent = None;
                let Some(following) = reply.follow else {
                    eprintln!(
                        "respawnctl: {} does not stream live output (an older agent?)",
                        self.agent
                    );
                    self.finished = Some(ExitCode::from(2));
                    return;
                };
                // The reply's lines are the newest before `seq`.
                let tail = reply.lines.as_deref().unwrap_or_default();
                let first = following.seq.saturating_sub(tail.len() as u64);
                match self.next {
                    None => {
                        self.next = Some(first);
                        self.print_from(first, tail);
                    }
                    // The count started again: the agent restarted (or the process was
                    // configured anew).
                    Some(next) if following.seq < next => {
                        self.say("the agent restarted; its lines since follow");
                        self.next = Some(first);
                    }
                    Some(_) => {}
                }
                // A renewal asks for no lines: the lines before `seq` are the stream's to bring.
                if asked > 0 {
                    self.print_from(first, tail);
                }
                self.filling = false;
                for batch in std::mem::take(&mut self.early) {
                    self.on_batch(batch);
                }
            }
            _ if reply.reason == Some(Reason::StaleSession) => {
                // The agent publishes its birth again; the new session comes with it.
                self.sent = None;
            }
            _ => {
                self.sent = None;
                // A refusal of a renewal that will not pass later either (the process left
                // the configuration, the key lost its permission) ends the follow: renewing
                // would only repeat it every 10 s, in the agent's audit too.
                let passing = matches!(
                    reply.reason,
                    Some(Reason::Busy | Reason::ShuttingDown | Reason::Expired)
                );
                let job = Job::new(self.agent, Some(self.process), None);
                let outcome = match reply.status {
                    ReplyStatus::Rejected => Outcome::Rejected(reply),
                    _ => Outcome::Failed(reply),
                };
                let plain = Style { color: false };
                let line = output::outcome_line(
                    CommandName::Follow,
                    &job,
                    &outcome,
                    Duration::ZERO,
                    plain,
                );
                eprintln!("{line}");
                if self.next.is_none() || !passing {
                    self.finished = Some(exit_code(&[&outcome], false));
                }
                // No lines will fill the gap: what the stream brought meanwhile goes out.
                self.filling = false;
                for batch in std::mem::take(&mut self.early) {
                    self.on_batch(batch);
                }
            }
        }
    }

    fn on_batch(&mut self, batch: LogBatch) {
        if batch.agent != self.agent || batch.process != self.process {
            return;
        }
        if self.next.is_none() || self.filling {
            self.early.push(batch);
            return;
        }
        self.print_from(batch.seq, &batch.lines);
    }

    /// Prints the lines numbered from `first` on that were not printed yet, saying first how
    /// many before them never came.
    fn print_from(&mut self, first: u64, lines: &[LogLine]) {
        let Some(next) = self.next else {
            return;
        };
        let end = first + lines.len() as u64;
        if end <= next {
            return;
        }
        if first > next {
            let missed = first - next;
            self.say(&format!(
                "{missed} line{} not shown: over the agent's rate bound for live output, or lost on the way",
                if missed == 1 { "" } else { "s" }
            ));
        }
        let skip = usize::try_from(next.saturating_sub(first)).unwrap_or(usize::MAX);
        let start = first.max(next);
        let mut out = String::new();
        for (i, line) in lines.iter().skip(skip).enumerate() {
            if self.json {
                let json = serde_json::json!({
                    "agent": self.agent,
                    "process": self.process,
                    "seq": start + i as u64,
                    "at": respawn_common::time::format(line.at),
                    "stream": line.stream.as_str(),
                    "text": line.text,
                });
                out.push_str(&format!("{json}\n"));
            } else {
                out.push_str(&format!("{}\n", output::Printable(line)));
            }
        }
        print(&out);
        self.next = Some(end);
    }

    /// A note in the output, where it happened.
    fn say(&self, note: &str) {
        match self.json {
            true => {
                let json =
                    serde_json::json!({"agent": self.agent, "process": self.process, "note": note});
                print(&format!("{json}\n"));
            }
            false => print(&format!("({note})\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower that printed up to line 5 and waits for the reply to `sent`.
    fn following(sent: (&str, usize)) -> Follower<'static> {
        let mut follower = Follower::new("door-pi", "doorbot", false);
        follower.next = Some(5);
        follower.sent = Some((sent.0.to_owned(), sent.1));
        follower
    }

    #[test]
    fn a_renewal_that_replaces_an_unanswered_ask_for_a_gap_asks_for_its_lines_again() {
        assert_eq!(
            following(("catch-up", MAX_LOG_LINES)).renewal_lines(),
            MAX_LOG_LINES
        );
        assert_eq!(following(("renewal", 0)).renewal_lines(), 0);
        let mut answered = following(("renewal", 0));
        answered.sent = None;
        assert_eq!(answered.renewal_lines(), 0);
    }

    #[test]
    fn a_renewal_refused_for_good_ends_the_follow_and_a_passing_refusal_does_not() {
        let refused = |reason| {
            let mut reply = CommandReply::new("renewal", "door-pi", ReplyStatus::Rejected);
            reply.reason = Some(reason);
            let mut follower = following(("renewal", 0));
            follower.on_reply(reply);
            follower.finished
        };
        assert_eq!(refused(Reason::UnknownProcess), Some(ExitCode::from(2)));
        assert_eq!(refused(Reason::NotAllowed), Some(ExitCode::from(2)));
        assert_eq!(refused(Reason::Busy), None);
        assert_eq!(refused(Reason::ShuttingDown), None);
    }
}
