//! `respawnctl restart|stop|start`: a command to every matching process, the outcomes as
//! they come.

use std::collections::BTreeSet;
use std::process::ExitCode;

use respawn_common::messages::CommandName;

use super::{exit_code, print, signing_key};
use crate::cli::Act;
use crate::output::{self, Style};
use crate::reading::fleet_snapshot;
use crate::request::{self, Args, Job, Outcome, Request};
use crate::request::{job, send_with_retry};
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    command: CommandName,
    act: Act,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let targets = &act.targets;
    // Read before anything connects: a mistyped --key costs no round trip.
    let key = signing_key(settings)?;
    let (mut session, fleet) = fleet_snapshot(settings, targets).await?;
    let mut unmatched = false;
    let mut chosen = BTreeSet::new();
    let mut not_sent = Vec::new();
    for target in targets {
        let matches = fleet.select(target);
        if matches.is_empty() {
            super::say_unmatched(&mut session, &settings.topics, target).await;
            unmatched = true;
        }
        for (agent, process) in matches {
            if !chosen.insert((agent.clone(), process.clone())) {
                continue;
            }
            let liveness = fleet.agent(&agent).map(|a| a.liveness());
            if let Some(outcome) = request::not_sent_to(liveness) {
                let job = job(&fleet, &agent, &process);
                print(&format!(
                    "{}\n",
                    output::outcome_line(command, &job, &outcome, act.timeout, style)
                ));
                not_sent.push(outcome);
            }
        }
    }
    let jobs: Vec<Job> = chosen
        .iter()
        .filter(|(agent, _)| fleet.agent(agent).is_some_and(|a| a.liveness().reachable()))
        .map(|(agent, process)| job(&fleet, agent, process))
        .collect();
    let requester = request::requester();
    let request = Request {
        topics: &settings.topics,
        requester: &requester,
        command,
        args: Args::default(),
        key: key.as_ref(),
        timeout: act.timeout,
    };
    let results = if jobs.is_empty() {
        Vec::new()
    } else {
        send_with_retry(
            &mut session,
            &settings.topics,
            &request,
            jobs,
            |job, outcome| {
                print(&format!(
                    "{}\n",
                    output::outcome_line(command, job, outcome, act.timeout, style)
                ));
            },
            |_| {},
        )
        .await?
    };
    session.close().await;
    let outcomes: Vec<&Outcome> = results.iter().map(|(_, o)| o).chain(&not_sent).collect();
    Ok(exit_code(&outcomes, unmatched))
}
