//! `respawnctl logs`: the last lines one process wrote; with `-f`, then every new line as it is
//! written, from the agent's live stream, for as long as this follower renews its lease.

mod follower;

use std::process::ExitCode;
use std::time::Duration;

use follower::{Follower, Moment, Said};
use respawn_common::messages::{CommandName, MAX_LOG_LINES};
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::QoS;

use super::{exit_code, print, signing_key};
use crate::fleet::{Fleet, Target};
use crate::output::{self, Style};
use crate::reading::{fleet_snapshot, read_fleet};
use crate::request::{self, Args, Job, Outcome, Request};
use crate::request::{job, send_with_retry};
use crate::session::{Options, Session, SessionError};
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    target: Target,
    lines: usize,
    timeout: Duration,
    style: Style,
) -> anyhow::Result<ExitCode> {
    // Read before anything connects: a mistyped --key costs no round trip.
    let key = signing_key(settings)?;
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
    if !reachable(&fleet, &job, CommandName::Logs, timeout, style) {
        session.close().await;
        return Ok(ExitCode::from(2));
    }
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
        |_| {},
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
            let clock = fleet
                .agent(&agent)
                .and_then(|a| a.clock)
                .unwrap_or_default();
            if let Some(note) = output::clock_note(&agent, clock) {
                eprintln!("{note}");
            }
            print(&output::log_lines(got, reply.truncated, clock));
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

/// Whether the agent of `job` can be reached; if not, says so (to stderr: stdout holds the
/// lines, for files and pipes).
fn reachable(
    fleet: &Fleet,
    job: &Job,
    command: CommandName,
    timeout: Duration,
    style: Style,
) -> bool {
    let Some(liveness) = fleet.agent(&job.agent).map(|a| a.liveness()) else {
        return true;
    };
    let Some(not_sent) = request::not_sent_to(Some(liveness)) else {
        return true;
    };
    eprintln!(
        "{}",
        output::outcome_line(command, job, &not_sent, timeout, style)
    );
    false
}

/// The one process `target` names, or why not (printed) as the exit code.
async fn one_process(
    session: &mut Session,
    topics: &Topics,
    fleet: &Fleet,
    target: &Target,
) -> Result<(String, String), ExitCode> {
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
    let mut stop = crate::stop::Stop::on_ctrl_c()?;
    let key = signing_key(settings)?;
    // Kept by the broker while the connection is lost: the agent's own broker, which restarts
    // with the agent, queues for it what the agent says before it is back (the new run's
    // start).
    let mut session = Session::connect_with(settings, Options::kept_while_away("logs")).await?;
    let fleet = read_fleet(&mut session, topics, std::slice::from_ref(&target)).await?;
    let (agent, process) = match one_process(&mut session, topics, &fleet, &target).await {
        Ok(found) => found,
        Err(code) => {
            session.close().await;
            return Ok(code);
        }
    };
    let job = Job::new(&agent, Some(&process), None);
    if !reachable(&fleet, &job, CommandName::Follow, timeout, style) {
        session.close().await;
        return Ok(ExitCode::from(2));
    }
    let requester = request::requester();
    let filters = [
        topics.logs(&agent, &process),
        topics.state(&agent),
        topics.reply(&agent, &requester),
        topics.event(&agent),
    ];
    let early = session.subscribe(&filters, QoS::AtLeastOnce).await?;
    let mut follower = Follower::new(&agent, &process, json);
    follower.session = fleet
        .agent(&agent)
        .and_then(|a| a.session())
        .map(str::to_owned);
    follower.clock = fleet
        .agent(&agent)
        .and_then(|a| a.clock)
        .unwrap_or_default();
    if let Some(note) = output::clock_note(&agent, follower.clock).filter(|_| !json) {
        eprintln!("{note}");
    }
    let mut request = Request {
        topics,
        requester: &requester,
        command: CommandName::Follow,
        args: Args::default(),
        key: key.as_ref(),
        timeout,
    };
    ask(&mut follower, &session, &mut request, lines).await?;
    let first_deadline = tokio::time::Instant::now() + timeout;
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
    for message in early {
        follower.on_message(topics, &message, Moment::now());
    }
    let code = loop {
        say(&mut follower);
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
            ask(&mut follower, &session, &mut request, MAX_LOG_LINES).await?;
            // It renews the lease too; and a renewal due at once (missed while reconnecting)
            // would only race it.
            renew.reset();
        }
        let waiting_first = follower.next.is_none();
        let marker_due = follower.marker_due().map(tokio::time::Instant::from_std);
        tokio::select! {
            message = session.recv() => match message {
                Ok(m) => follower.on_message(topics, &m, Moment::now()),
                Err(e) => {
                    eprintln!("respawnctl: {e}; reconnecting");
                    let Some(early) = super::back(&mut session, &filters, &mut stop).await? else {
                        break ExitCode::SUCCESS;
                    };
                    for m in early {
                        follower.on_message(topics, &m, Moment::now());
                    }
                    say(&mut follower);
                    eprintln!("respawnctl: reconnected");
                    follower.resync = true;
                }
            },
            // Not while the agent is away: its broker session would queue the renewal and
            // hand it over, bound to its old session, when it is back (a `stale_session`
            // refusal in its audit); its new birth starts the stream again instead.
            _ = renew.tick() => if follower.online {
                let lines = follower.renewal_lines();
                ask(&mut follower, &session, &mut request, lines).await?;
            },
            _ = tokio::time::sleep_until(first_deadline), if waiting_first => {
                let job = Job::new(&agent, Some(&process), None);
                let outcome = Outcome::TimedOut { accepted: follower.accepted };
                eprintln!("{}", output::outcome_line(CommandName::Follow, &job, &outcome, timeout, style));
                break ExitCode::from(3);
            }
            _ = tokio::time::sleep_until(marker_due.unwrap_or_else(tokio::time::Instant::now)), if marker_due.is_some() => {
                follower.tell_due(std::time::Instant::now());
            }
            _ = stop.heard() => break ExitCode::SUCCESS,
        }
    };
    follower.tell_all();
    say(&mut follower);
    session.close().await;
    Ok(code)
}

/// Prints what the follower has to say, each on its stream.
fn say(follower: &mut Follower) {
    for said in follower.take_said() {
        match said {
            Said::Out(text) => print(&text),
            Said::Err(line) => eprintln!("{line}"),
        }
    }
}

/// Sends the `follow` the follower asks for, for the last `lines`.
async fn ask(
    follower: &mut Follower<'_>,
    session: &Session,
    request: &mut Request<'_>,
    lines: usize,
) -> Result<(), SessionError> {
    let (job, lines) = follower.ask(lines);
    request.args.lines = Some(lines);
    let expires_at = std::time::SystemTime::now() + request.timeout;
    request::publish(session, request, &job, expires_at).await
}
