//! `respawnctl logs`: the last lines one process wrote.

use std::process::ExitCode;
use std::time::Duration;

use respawn_common::messages::CommandName;

use super::{exit_code, fleet_snapshot, job, print, send_with_retry, signing_key};
use crate::fleet::Target;
use crate::output::{self, Style};
use crate::request::{self, Args, Outcome, Request};
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
    let (mut session, fleet) = fleet_snapshot(settings).await?;
    let matches = fleet.select(&target);
    let (agent, process) = match matches.as_slice() {
        [] => {
            eprintln!("respawnctl: no process matches {target}");
            session.close().await;
            return Ok(ExitCode::from(2));
        }
        [one] => one.clone(),
        many => {
            let names: Vec<String> = many.iter().map(|(a, p)| format!("{a}/{p}")).collect();
            eprintln!(
                "respawnctl: {target} matches {} processes ({}); name one",
                many.len(),
                names.join(", ")
            );
            session.close().await;
            return Ok(ExitCode::FAILURE);
        }
    };
    let job = job(&fleet, &agent, &process);
    if let Some(l) = fleet
        .agent(&agent)
        .map(|a| a.liveness())
        .filter(|l| !l.reachable())
    {
        let outcome = Outcome::NotSent(format!("the agent is {l}"));
        print(&format!(
            "{}\n",
            output::outcome_line(CommandName::Logs, &job, &outcome, timeout, style)
        ));
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
            let lines = reply.lines.as_deref().unwrap_or_default();
            if lines.is_empty() {
                eprintln!("(no output from {} yet)", job.label());
            }
            print(&output::log_lines(lines, reply.truncated));
            Ok(ExitCode::SUCCESS)
        }
        other => {
            print(&format!(
                "{}\n",
                output::outcome_line(CommandName::Logs, &job, other, timeout, style)
            ));
            Ok(exit_code(&[other], false))
        }
    }
}
