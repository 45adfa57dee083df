//! What each `respawnctl` command does, one module each, and what they share: the settings,
//! the signing key, the hints for a target that matched nothing, output and exit codes.
//! Reading the fleet is [`crate::reading`]'s, sending commands [`crate::request`]'s.
//! Commands return `anyhow` errors that say what failed; [`run`] prints them.

mod act;
mod alerts;
mod config;
mod events;
mod keygen;
mod logs;
mod serve;
mod status;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use respawn_common::config_file::read_text;
use respawn_common::messages::CommandName;
use respawn_common::signing::SigningKey;
use respawn_common::topics::Topics;
use rumqttc::v5::mqttbytes::QoS;

use crate::cli::{Cli, Command, ConfigAction, ServeAction};
use crate::fleet::{Fleet, Target};
use crate::output::Style;
use crate::request::Outcome;
use crate::session::{Message, Session, SessionError};
use crate::settings::{self, Given, Settings};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    // The long-running commands log what they do, as services do; the others only with -v.
    let service = matches!(cli.command, Command::Alerts { .. } | Command::Serve { .. });
    init_tracing(cli.verbose, service);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("respawnctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Keygen { out, name } = &cli.command {
        return keygen::run(out, name.as_deref());
    }
    if let Command::Serve {
        action: Some(ServeAction::Passwd { name, viewer }),
        ..
    } = &cli.command
    {
        return serve::passwd(name, *viewer);
    }
    // respawnctl.toml is checked also for a command that needs no broker (`alerts test`):
    // what the service would refuse is said by its test.
    let settings = load_settings(&cli)?;
    tracing::debug!(?settings, "settings");
    // The alerts file is checked before anything connects.
    let alerts = match &cli.command {
        Command::Alerts {
            alerts_config,
            action,
        } => match alerts::load(alerts_config.as_deref(), action.as_ref())? {
            alerts::Loaded::Done(code) => return Ok(code),
            alerts::Loaded::Config(config) => Some(config),
        },
        _ => None,
    };
    say_what_goes_on_at_interrupt(&cli.command);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start")?;
    let style = Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Status { pattern, json } => status::run(&settings, pattern, json, style).await,
            Command::Events { pattern, json } => events::run(&settings, pattern, json, style).await,
            Command::Restart(act) => act::run(&settings, CommandName::Restart, act, style).await,
            Command::Stop(act) => act::run(&settings, CommandName::Stop, act, style).await,
            Command::Start(act) => act::run(&settings, CommandName::Start, act, style).await,
            Command::Logs {
                target,
                lines,
                follow: false,
                timeout,
                ..
            } => logs::run(&settings, target, lines.unwrap_or(50), timeout, style).await,
            Command::Logs {
                target,
                lines,
                follow: true,
                json,
                timeout,
            } => {
                let lines = lines.unwrap_or(10);
                logs::follow(&settings, target, lines, json, timeout, style).await
            }
            Command::Config(action) => config::run(&settings, action, style).await,
            Command::Serve {
                serve_config,
                listen,
                ..
            } => serve::run(&settings, serve_config.as_deref(), listen.as_deref()).await,
            Command::Alerts { .. } => match alerts {
                Some(config) => alerts::run(&settings, config).await,
                None => Ok(ExitCode::FAILURE),
            },
            Command::Completions { .. } | Command::Keygen { .. } => Ok(ExitCode::SUCCESS),
        }
    })
}

/// Ctrl-C while a command that changes what runs waits for its outcome ends the wait, not
/// what the agents do: said so, rather than ending without a word as if it were undone.
/// Before the runtime, whose threads must inherit SIGINT blocked.
fn say_what_goes_on_at_interrupt(command: &Command) {
    let status = "`respawnctl status` shows how it ends".to_owned();
    let (what, at, shows) = match command {
        Command::Restart(_) => ("restart", "the agents it reached", status),
        Command::Stop(_) => ("stop", "the agents it reached", status),
        Command::Start(_) => ("start", "the agents it reached", status),
        Command::Config(
            ConfigAction::Apply {
                agent,
                dry_run: false,
                ..
            }
            | ConfigAction::Rollback {
                agent,
                dry_run: false,
                ..
            },
        ) => {
            let get = format!("`respawnctl config get {}` shows what it runs", agent.id);
            ("change", agent.id.as_str(), get)
        }
        _ => return,
    };
    respawn_common::interrupt::say_at_interrupt(
        format!("respawnctl: interrupted: the {what} goes on in {at} ({shows})"),
        format!("respawnctl: interrupted before the {what} was sent: nothing was asked"),
    );
}

/// Quiet by default; the alerter and the hub, services, tell their log what they do.
fn init_tracing(verbose: u8, service: bool) {
    let filter = match (verbose, service) {
        (0, false) => return,
        (0, true) => "respawn_controller=info,ureq=warn",
        (1, _) => "respawn_controller=debug",
        _ => {
            // rumqttc says what it does through `log`, which tracing hears only through this.
            if let Err(e) = tracing_log::LogTracer::init() {
                eprintln!("respawnctl: the MQTT client's log is not shown: {e}");
            }
            "debug"
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let path = cli.config.clone().or_else(settings::default_config_path);
    let text = match &path {
        Some(p) => match read_text(p) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cli.config.is_none() => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        },
        None => None,
    };
    let given = Given {
        broker: cli.broker.clone(),
        username: cli.username.clone(),
        password_file: cli.password_file.clone(),
        prefix: cli.prefix.clone(),
        tls: respawn_common::mqtt::TlsFiles {
            ca_file: cli.ca_file.clone(),
            cert_file: cli.cert_file.clone(),
            key_file: cli.key_file.clone(),
        },
        signing_key: cli.key.clone(),
        no_password: matches!(
            cli.command,
            Command::Alerts {
                action: Some(_),
                ..
            }
        ),
    };
    let config = path.as_deref().zip(text.as_deref());
    settings::resolve(
        &given,
        |k| std::env::var(k).ok().filter(|v| !v.is_empty()),
        config,
        read_text,
    )
    .map_err(anyhow::Error::msg)
}

/// Says on stderr that `target` matches no process, with what was probably meant. The view
/// read for `target` holds only what matched, so the whole fleet is read again for the hint
/// (a mistake's cost, not every command's): a near process, a near agent, or no agent at all.
pub(crate) async fn say_unmatched(session: &mut Session, topics: &Topics, target: &Target) {
    let hint = whole_fleet(session, topics)
        .await
        .and_then(|fleet| fleet.hint(target));
    match hint {
        Some(hint) => eprintln!("respawnctl: no process matches {target} ({hint})"),
        None => eprintln!("respawnctl: no process matches {target}"),
    }
}

/// Says that no agent `id` reports to the broker, with the agent likely meant.
pub(crate) async fn say_missing_agent(session: &mut Session, topics: &Topics, id: &str) {
    let fleet = whole_fleet(session, topics).await;
    match fleet.as_ref().map(|fleet| fleet.missing_agent(id)) {
        Some(Ok(near)) => eprintln!("respawnctl: no agent {id} (did you mean {near}?)"),
        Some(Err(why)) => eprintln!("respawnctl: {why}"),
        None => eprintln!("respawnctl: no agent {id} on the broker"),
    }
}

/// The whole fleet, for a hint about a target that matched nothing; `None` when it cannot be
/// read.
async fn whole_fleet(session: &mut Session, topics: &Topics) -> Option<Fleet> {
    crate::reading::read_fleet(session, topics, &[Target::agent("*")])
        .await
        .ok()
}

/// The operator key from the settings, if one is named.
pub(crate) fn signing_key(settings: &Settings) -> anyhow::Result<Option<SigningKey>> {
    let Some(path) = &settings.signing_key else {
        return Ok(None);
    };
    let text = read_text(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let key = SigningKey::parse(&text)
        .with_context(|| format!("the signing key {} cannot be used", path.display()))?;
    warn_if_others_read(path, "the signing key");
    Ok(Some(key))
}

/// Warns when users other than its owner may read `path`, a file of secrets (`what`).
pub(crate) fn warn_if_others_read(path: &std::path::Path, what: &str) {
    if respawn_common::config_file::others_can_read(path) {
        eprintln!(
            "respawnctl: warning: others can read {what} {} (chmod 600 it)",
            path.display()
        );
    }
}

/// Nobody reads standard output any more (`| head -1`, `| grep -m1`).
static READER_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes `text` to standard output; what cannot be written is dropped. A command goes on
/// when its reader has gone (a restart or an apply finishes its work, and its exit code
/// says how it went); a tail, which would run for good, asks [`reader_gone`] and ends.
pub(crate) fn print(text: &str) {
    if reader_gone() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        READER_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether standard output's reader has gone.
pub(crate) fn reader_gone() -> bool {
    READER_GONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// The exit code for a set of outcomes.
pub(crate) fn exit_code(outcomes: &[&Outcome], unmatched: bool) -> ExitCode {
    if outcomes
        .iter()
        .any(|o| matches!(o, Outcome::TimedOut { .. }))
    {
        ExitCode::from(3)
    } else if unmatched || outcomes.iter().any(|o| !matches!(o, Outcome::Succeeded(_))) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// After a lost connection: waits until the session is back and subscribed to `filters` again
/// (however long the broker is away), and returns what came with the subscription. `None`:
/// Ctrl-C came first. An error: it cannot be (the session ended, the broker refuses the
/// subscription).
pub(crate) async fn back(
    session: &mut Session,
    filters: &[String],
    stop: &mut crate::stop::Stop,
) -> Result<Option<Vec<Message>>, SessionError> {
    tokio::select! {
        back = resubscribe(session, filters) => back.map(Some),
        () = stop.heard() => Ok(None),
    }
}

/// After a lost connection: waits until the session is back and subscribed to `filters` again
/// (however long the broker is away), and returns what came with the subscription.
pub(crate) async fn resubscribe(
    session: &mut Session,
    filters: &[String],
) -> Result<Vec<Message>, SessionError> {
    loop {
        match session.wait_connected().await {
            Ok(()) => {}
            Err(e @ SessionError::Closed) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "still disconnected");
                continue;
            }
        }
        match session.subscribe(filters, QoS::AtLeastOnce).await {
            Ok(early) => return Ok(early),
            Err(e @ SessionError::SubscriptionRefused(_)) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "lost again while subscribing");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_prefer_timeouts_then_failures() {
        let ok = Outcome::Succeeded(respawn_common::messages::CommandReply::new(
            "c",
            "a",
            respawn_common::messages::ReplyStatus::Succeeded,
        ));
        let timed_out = Outcome::TimedOut { accepted: false };
        let not_sent = Outcome::NotSent("offline".into());
        assert_eq!(exit_code(&[&ok], false), ExitCode::SUCCESS);
        assert_eq!(exit_code(&[&ok], true), ExitCode::from(2));
        assert_eq!(exit_code(&[&ok, &not_sent], false), ExitCode::from(2));
        assert_eq!(
            exit_code(&[&not_sent, &timed_out], false),
            ExitCode::from(3)
        );
    }
}
