//! `respawnctl status`: every agent and its processes, from the broker's retained state.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use super::print;
use crate::fleet::Target;
use crate::output::{self, Style};
use crate::reading::fleet_snapshot;
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    pattern: Option<Target>,
    json: bool,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let scope: Vec<Target> = pattern.iter().cloned().collect();
    let (mut session, fleet) = fleet_snapshot(settings, &scope).await?;
    // A pattern that names nothing there is a mistake, said with what was probably meant;
    // an empty broker is an answer.
    let matched_nothing = pattern
        .as_ref()
        .is_some_and(|pattern| match pattern.process {
            Some(_) => fleet.select(pattern).is_empty(),
            None => fleet.is_empty(),
        });
    match (&pattern, matched_nothing) {
        (Some(pattern), true) if pattern.process.is_none() => {
            super::say_missing_agent(&mut session, &settings.topics, &pattern.agent).await;
        }
        (Some(pattern), true) => {
            super::say_unmatched(&mut session, &settings.topics, pattern).await;
        }
        _ => {}
    }
    session.close().await;
    let missing = fleet.missing();
    if json {
        // Written as it is serialised, a large fleet's document is never held whole; like
        // `print`, a reader that went away (`| head`) is no error.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let _ = serde_json::to_writer_pretty(&mut out, &output::status_json(&fleet));
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    } else if !matched_nothing {
        print(&output::status_table(&fleet, SystemTime::now(), style));
    }
    if fleet.is_empty() && pattern.is_none() {
        let (broker, prefix) = (&settings.broker, settings.topics.prefix());
        eprintln!("respawnctl: no agent reports to {broker} under {prefix}/; is it the broker they use (--broker, RESPAWN_BROKER)?");
    }
    let unreadable = fleet.unreadable();
    if let Some((agent, process)) = unreadable.first() {
        let count = unreadable.len();
        eprintln!(
            "respawnctl: incomplete: the state of {count} process{} could not be read (for example {}): not a respawn v1 process state",
            if count == 1 { "" } else { "es" },
            output::Printable(format_args!("{agent}/{process}")),
        );
    }
    if !missing.is_empty() {
        say_incomplete(&missing);
    }
    let code = match missing.is_empty() && unreadable.is_empty() && !matched_nothing {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(2),
    };
    drop(unreadable);
    drop(missing);
    // respawnctl ends here, and the system takes its memory back at once: freeing a large
    // fleet's states one by one was 4 % of `status` at 10,000 agents.
    std::mem::forget(fleet);
    Ok(code)
}

/// Says on stderr that the view lacks what the broker did not send.
fn say_incomplete(missing: &BTreeMap<&str, Vec<&str>>) {
    let count: usize = missing.values().map(Vec::len).sum();
    let examples: Vec<String> = missing
        .iter()
        .filter_map(|(agent, processes)| Some(format!("{agent}/{}", processes.first()?)))
        .take(3)
        .collect();
    eprintln!(
        "respawnctl: incomplete: the broker did not send the state of {count} process{} of {} agent{} (for example {}); it drops what it cannot queue for a reader — see docs/scaling.md",
        if count == 1 { "" } else { "es" },
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        examples.join(", "),
    );
}
