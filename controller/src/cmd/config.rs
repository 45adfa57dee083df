//! `respawnctl config get|diff|apply|rollback`: an agent's remote processes, read and changed
//! with signed commands. An apply is always checked by the agent first (a dry run against the
//! hash that was read), so that the diff and the changes shown are those that will happen.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use respawn_common::messages::{CommandName, CommandReply, ConfigReport, Reason};

use super::{exit_code, fleet_snapshot, print, send_with_retry, signing_key};
use crate::cli::{ConfigAction, ConfigTarget};
use crate::fleet::Fleet;
use crate::output::{self, Style};
use crate::request::{self, Args, Job, Outcome, Request};
use crate::session::Session;
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    action: ConfigAction,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let (target, file, what) = match action {
        ConfigAction::Get { agent, json } => (agent, None, What::Get { json }),
        ConfigAction::Diff { agent, file } => (agent, Some(file), What::Check(Apply::Never)),
        ConfigAction::Apply {
            agent,
            file,
            yes,
            dry_run,
        } => {
            let apply = match (dry_run, yes || !interactive) {
                (true, _) => Apply::Never,
                (false, true) => Apply::Yes,
                (false, false) => Apply::Ask,
            };
            (agent, Some(file), What::Check(apply))
        }
        ConfigAction::Rollback { agent } => (agent, None, What::Rollback),
    };
    // The file is read before anything connects: a typo costs no round trip.
    let file = match file {
        Some(path) => Some((read(&path)?, path)),
        None => None,
    };
    let (session, fleet) = fleet_snapshot(settings).await?;
    let mut talk = Talk {
        settings,
        session,
        fleet,
        target,
        style,
    };
    let code = match (what, file) {
        (What::Get { json }, _) => talk.get(json).await,
        (What::Check(apply), Some((text, path))) => talk.diff(&path, text, apply).await,
        (What::Rollback, _) => talk.rollback().await,
        (What::Check(_), None) => Ok(ExitCode::FAILURE),
    };
    talk.session.close().await;
    code
}

/// What a `config` command does once connected.
enum What {
    Get { json: bool },
    Check(Apply),
    Rollback,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Whether a checked configuration is applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Apply {
    Never,
    Ask,
    Yes,
}

/// One conversation with one agent.
struct Talk<'a> {
    settings: &'a Settings,
    session: Session,
    fleet: Fleet,
    target: ConfigTarget,
    style: Style,
}

impl Talk<'_> {
    /// Sends one command and waits for its outcome; `Err` carries the exit code of an
    /// outcome that was printed as a failure.
    async fn send(
        &mut self,
        command: CommandName,
        args: Args,
    ) -> anyhow::Result<Result<ConfigReport, ExitCode>> {
        let agent = self.target.id.as_str();
        let Some(known) = self.fleet.agent(agent) else {
            eprintln!("respawnctl: no agent {agent} on the broker");
            return Ok(Err(ExitCode::from(2)));
        };
        let job = Job::new(agent, None, known.session());
        let liveness = known.liveness();
        let outcome = if liveness.reachable() {
            let key = signing_key(self.settings)?;
            let requester = request::requester();
            let request = Request {
                topics: &self.settings.topics,
                requester: &requester,
                command,
                args,
                key: key.as_ref(),
                timeout: self.target.timeout,
            };
            let results = send_with_retry(
                &mut self.session,
                &self.settings.topics,
                &request,
                vec![job.clone()],
                |_, _| {},
            )
            .await?;
            results
                .into_iter()
                .next()
                .map_or(Outcome::TimedOut { accepted: false }, |(_, o)| o)
        } else {
            Outcome::NotSent(format!("the agent is {liveness}"))
        };
        match outcome {
            Outcome::Succeeded(CommandReply {
                config: Some(report),
                ..
            }) => Ok(Ok(report)),
            Outcome::Rejected(reply) if reply.reason == Some(Reason::InvalidConfig) => {
                let report = reply.config.unwrap_or_default();
                eprintln!(
                    "{}",
                    output::outcome_line(
                        command,
                        &job,
                        &Outcome::Rejected(CommandReply {
                            config: None,
                            ..reply
                        }),
                        self.target.timeout,
                        self.style
                    )
                );
                eprint!(
                    "{}",
                    output::config_problems(&report.problems, "remote.toml")
                );
                Ok(Err(ExitCode::from(2)))
            }
            other => {
                eprintln!(
                    "{}",
                    output::outcome_line(command, &job, &other, self.target.timeout, self.style)
                );
                Ok(Err(exit_code(&[&other], false)))
            }
        }
    }

    async fn get(&mut self, json: bool) -> anyhow::Result<ExitCode> {
        let report = match self.send(CommandName::ConfigGet, Args::default()).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        if json {
            print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            return Ok(ExitCode::SUCCESS);
        }
        print(report.text.as_deref().unwrap_or_default());
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "# {} remote.toml sha256 {}",
            self.target.id, report.sha256
        );
        for process in &report.processes {
            let from = if process.remote { "remote" } else { "local" };
            let _ = writeln!(err, "#   {from:<6} {}", process.name);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Shows how `text` differs from the agent's remote configuration and what it would do,
    /// then applies it if `apply` says so.
    async fn diff(&mut self, file: &Path, text: String, apply: Apply) -> anyhow::Result<ExitCode> {
        let current = match self.send(CommandName::ConfigGet, Args::default()).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        let old_label = format!("{}:remote.toml", self.target.id);
        let diff = output::config_diff(
            current.text.as_deref().unwrap_or_default(),
            &text,
            &old_label,
            &file.display().to_string(),
            self.style,
        );
        if diff.is_empty() {
            eprintln!(
                "{} is what {} runs remotely already",
                file.display(),
                self.target.id
            );
            return Ok(ExitCode::SUCCESS);
        }
        print(&diff);
        let args = |dry_run| Args {
            text: Some(text.clone()),
            base: Some(current.sha256.clone()),
            dry_run,
            ..Args::default()
        };
        let checked = match self.send(CommandName::ConfigApply, args(true)).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        let changes = checked.changes.unwrap_or_default();
        if apply == Apply::Never {
            print(&format!(
                "{}: {} checks out; nothing was changed\n",
                self.target.id,
                file.display()
            ));
            print(&output::config_changes(&changes, false, self.style));
            return Ok(ExitCode::SUCCESS);
        }
        if apply == Apply::Ask {
            print(&format!(
                "{}: applying {}\n",
                self.target.id,
                file.display()
            ));
            print(&output::config_changes(&changes, false, self.style));
            if !confirm(&format!("Apply to {}? [y/N] ", self.target.id)) {
                eprintln!("nothing changed");
                return Ok(ExitCode::from(2));
            }
        }
        let applied = match self.send(CommandName::ConfigApply, args(false)).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        self.print_done("applied", &applied);
        Ok(ExitCode::SUCCESS)
    }

    async fn rollback(&mut self) -> anyhow::Result<ExitCode> {
        match self
            .send(CommandName::ConfigRollback, Args::default())
            .await?
        {
            Ok(report) => {
                self.print_done("rolled back", &report);
                Ok(ExitCode::SUCCESS)
            }
            Err(code) => Ok(code),
        }
    }

    fn print_done(&self, what: &str, report: &ConfigReport) {
        let sha = report.sha256.get(..12).unwrap_or(&report.sha256);
        print(&format!(
            "{}: {what}, remote.toml now {sha}\n",
            self.target.id
        ));
        print(&output::config_changes(
            &report.changes.clone().unwrap_or_default(),
            true,
            self.style,
        ));
    }
}

/// Asks on the terminal; anything but yes is no.
fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
