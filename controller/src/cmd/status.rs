//! `respawnctl status`: every agent and its processes, from the broker's retained state.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;

use super::{fleet_snapshot, print};
use crate::fleet::Target;
use crate::output::{self, Style};
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    pattern: Option<Target>,
    json: bool,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let (session, fleet) = fleet_snapshot(settings).await?;
    session.close().await;
    let fleet = fleet.filter(pattern.as_ref());
    let text = if json {
        let mut text = serde_json::to_string_pretty(&output::status_json(&fleet))
            .context("cannot write the status as JSON")?;
        text.push('\n');
        text
    } else {
        output::status_table(&fleet, SystemTime::now(), style)
    };
    print(&text);
    Ok(ExitCode::SUCCESS)
}
