//! `respawnctl alerts`: the alerts file checked before anything connects, then crash alerts
//! to chat until stopped — or `alerts test`, one message to every target.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::alerts::{self, config::AlertsConfig};
use crate::settings::Settings;

/// What reading the alerts file came to.
pub enum Loaded {
    /// `alerts test` ran; its outcome.
    Tested(ExitCode),
    /// Boxed: the configuration is large beside an exit code.
    Config(Box<AlertsConfig>),
}

/// Reads the alerts file; with `test`, sends the test message to every target at once.
pub fn load(path: Option<&Path>, test: bool) -> anyhow::Result<Loaded> {
    let Some(path) = path else {
        bail!("alerts needs --config FILE (see docs/alerts.md)");
    };
    let config =
        alerts::config::load(path, alerts::default_state_file()).map_err(anyhow::Error::msg)?;
    // Its webhook URLs and tokens let anyone who reads them post to the chats.
    super::warn_if_others_read(path, "the alerts file, with its tokens and webhook URLs,");
    if test {
        let code = match alerts::test(&config) {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(2),
        };
        return Ok(Loaded::Tested(code));
    }
    Ok(Loaded::Config(Box::new(config)))
}

/// Forwards alerts until the alerter is stopped.
pub async fn run(settings: &Settings, config: Box<AlertsConfig>) -> anyhow::Result<ExitCode> {
    alerts::run(settings, *config)
        .await
        .map_err(anyhow::Error::msg)
        .context("the alerter stopped")?;
    Ok(ExitCode::SUCCESS)
}
