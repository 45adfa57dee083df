//! `respawnctl alerts`: the alerts file checked before anything connects, then crash alerts
//! to chat until stopped — or `alerts test`, one message to every target, or `alerts check`,
//! what the file sets up.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};

use respawn_common::time::short;

use crate::alerts::{self, config::AlertsConfig, rules::AlertKind};
use crate::cli::AlertsAction;
use crate::settings::Settings;

/// What reading the alerts file came to.
pub enum Loaded {
    /// `alerts test` or `alerts check` ran; its outcome.
    Done(ExitCode),
    /// Boxed: the configuration is large beside an exit code.
    Config(Box<AlertsConfig>),
}

/// Reads the alerts file; with `test`, sends the test message to every target at once; with
/// `check`, says what the file sets up.
pub fn load(path: Option<&Path>, action: Option<&AlertsAction>) -> anyhow::Result<Loaded> {
    let Some(path) = path else {
        bail!("alerts needs --config FILE (see docs/alerts.md)");
    };
    let config =
        alerts::config::load(path, alerts::default_state_file()).map_err(anyhow::Error::msg)?;
    // Its webhook URLs and tokens let anyone who reads them post to the chats.
    super::warn_if_others_read(path, "the alerts file, with its tokens and webhook URLs,");
    match action {
        Some(AlertsAction::Test) => {
            let code = match alerts::test(&config) {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(2),
            };
            Ok(Loaded::Done(code))
        }
        Some(AlertsAction::Check) => {
            print!("{}", checked(path, &config));
            Ok(Loaded::Done(ExitCode::SUCCESS))
        }
        None => Ok(Loaded::Config(Box::new(config))),
    }
}

/// What `alerts check` says of a valid file: each target with what it is sent (never its
/// URL or token, which are secrets), then how alerts behave.
fn checked(path: &Path, config: &AlertsConfig) -> String {
    let count = config.targets.len();
    let mut text = format!(
        "{}: valid; {count} target{}, state in {}\n",
        path.display(),
        if count == 1 { "" } else { "s" },
        config.state_file.display()
    );
    for target in &config.targets {
        let every = |globs: &[String]| globs.iter().all(|g| g == "*");
        let mut sent = Vec::new();
        sent.push(match target.kinds.len() == AlertKind::ALL.len() {
            true => "every alert".to_owned(),
            false => target
                .kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
        if !every(&target.agents) {
            sent.push(format!("agents {}", target.agents.join(", ")));
        }
        if !every(&target.processes) {
            sent.push(format!("processes {}", target.processes.join(", ")));
        }
        if !target.min_interval.is_zero() {
            let pause = short(target.min_interval);
            sent.push(format!("at most a message every {pause}"));
        }
        let (name, kind) = (&target.name, target.channel.kind());
        text += &format!("  {name} ({kind}): {}\n", sent.join("; "));
    }
    let rules = &config.rules;
    let reminders = match rules.remind_every.is_zero() {
        true => "no reminders".to_owned(),
        false => format!("reminders every {}", short(rules.remind_every)),
    };
    text += &format!(
        "an agent away is alerted after {}; a process is back after {} up; {reminders}; grouped for {}; a message undelivered is dropped after {}\n",
        short(rules.grace),
        short(rules.resolve_after),
        short(config.group_window),
        short(config.retry_for),
    );
    if let Some(group) = &config.shared_group {
        text += &format!("events shared with the other alerters of group {group:?}\n");
    }
    for note in notes(config) {
        text += &format!("note: {note}\n");
    }
    text
}

/// What is valid in a file but perhaps not meant.
fn notes(config: &AlertsConfig) -> Vec<String> {
    let rules = &config.rules;
    let mut notes = Vec::new();
    if rules.grace < Duration::from_secs(40) {
        notes.push(format!("grace {}: agents still retrying a broker that came back (their wait grows to 30s) are reported offline after every broker outage", short(rules.grace)));
    }
    if rules.resolve_after.is_zero() {
        notes
            .push("resolve_after 0s: a crash is resolved as soon as its process runs again".into());
    }
    if config.retry_for.is_zero() {
        notes.push("retry_for 0s: a message a service cannot take at once is dropped".into());
    }
    for target in &config.targets {
        let pace = target.channel.default_min_interval();
        if target.min_interval < pace {
            notes.push(format!(
                "{}: min_interval {} is quicker than {} takes messages ({}): it may refuse some (HTTP 429), which then wait",
                target.name,
                short(target.min_interval),
                target.channel.kind(),
                short(pace)
            ));
        }
    }
    notes
}

/// Forwards alerts until the alerter is stopped.
pub async fn run(settings: &Settings, config: Box<AlertsConfig>) -> anyhow::Result<ExitCode> {
    alerts::run(settings, *config)
        .await
        .map_err(anyhow::Error::msg)
        .context("the alerter stopped")?;
    Ok(ExitCode::SUCCESS)
}
