//! What each `respawnctl` command does, one module each, and what they share: the fleet
//! snapshot, sending commands (again, when an agent's session moved on), exit codes.
//! Commands return `anyhow` errors that say what failed; [`run`] prints them.

mod act;
mod alerts;
mod config;
mod events;
mod keygen;
mod logs;
mod serve;
mod status;

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use respawn_common::config_file::read_text;
use respawn_common::messages::CommandName;
use respawn_common::signing::SigningKey;
use respawn_common::topics::{Filter, Topics};

use crate::cli::{Cli, Command, ServeAction};
use crate::fleet::{Fleet, Lacking, Target};
use crate::output::Style;
use crate::request::{self, Job, Outcome, Request};
use crate::session::{Session, SessionError};
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
        } => match alerts::load(alerts_config.as_deref(), action.is_some())? {
            alerts::Loaded::Tested(code) => return Ok(code),
            alerts::Loaded::Config(config) => Some(config),
        },
        _ => None,
    };
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
    read_fleet(session, topics, &[Target::agent("*")])
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
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map(|meta| meta.permissions().mode());
    if mode.is_ok_and(|mode| mode & 0o077 != 0) {
        eprintln!(
            "respawnctl: warning: others can read {what} {} (chmod 600 it)",
            path.display()
        );
    }
}

/// Connects and folds the retained state of what `scope` can match (of the whole fleet when
/// it is empty).
pub(crate) async fn fleet_snapshot(
    settings: &Settings,
    scope: &[Target],
) -> Result<(Session, Fleet), SessionError> {
    let mut session = Session::connect(settings, false).await?;
    let fleet = read_fleet(&mut session, &settings.topics, scope).await?;
    Ok((session, fleet))
}

/// The filters that bring what `scope` can match: an agent or process named without a
/// wildcard narrows them (`door-pi/+`… or `+/proc/worker`), a glob cannot (`door-*` is `+`).
pub(crate) fn scope_filters(topics: &Topics, scope: &[Target]) -> Vec<String> {
    if scope.is_empty() {
        let all = [Filter::States, Filter::Processes, Filter::Heartbeats];
        return all.map(|f| topics.filter(f)).to_vec();
    }
    let exact = |part: &str| !part.contains(['*', '?']);
    let (mut states, mut processes, mut heartbeats) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for target in scope {
        let agent = Some(target.agent.as_str())
            .filter(|a| exact(a))
            .unwrap_or("+");
        let process = target.process.as_deref().filter(|p| exact(p));
        states.insert(topics.state(agent));
        processes.insert(topics.process(agent, process.unwrap_or("+")));
        heartbeats.insert(topics.heartbeat(agent));
    }
    // In the order of the whole fleet's: what a broker drops of a first reading too large
    // for it is its end, and heartbeats are the cheapest to ask for again.
    states
        .into_iter()
        .chain(processes)
        .chain(heartbeats)
        .collect()
}

/// Reads and folds the retained state of what `scope` can match (everything when empty).
pub(crate) async fn read_fleet(
    session: &mut Session,
    topics: &Topics,
    scope: &[Target],
) -> Result<Fleet, SessionError> {
    let marker = session.marker(topics);
    let filters = scope_filters(topics, scope);
    let mut fleet = Fleet::default();
    session
        .snapshot_each(&filters, &marker, |m| {
            fleet.apply(topics, &m.topic, &m.payload)
        })
        .await?;
    let mut fleet = fleet.within(scope);
    // A broker drops what it cannot queue for a reader that falls behind (Mosquitto: beyond
    // max_queued_messages, 1,000 by default), so a large fleet may come incomplete. Then what
    // each agent lacks is read again, a few agents at a time: each batch stays far below the
    // queue, and what comes twice folds in the same. Again while that helps: what is still
    // lacking may truly be so (a stale agent's heartbeat).
    let mut unsure = fleet.unsure().len();
    while unsure > 0 {
        let again = read_again(topics, &fleet.unsure());
        tracing::debug!(
            agents = fleet.len(),
            unsure,
            batches = again.len(),
            "read again"
        );
        session
            .snapshots(&again, &marker, |m| {
                fleet.apply(topics, &m.topic, &m.payload)
            })
            .await?;
        let still = fleet.unsure().len();
        if still >= unsure {
            break;
        }
        unsure = still;
    }
    tracing::debug!("read");
    let fleet = fleet.within(scope);
    // What follows (commands) needs replies only: at 10,000 agents the fleet's heartbeats and
    // state changes would otherwise stand in the queue before them.
    session.unsubscribe(&filters).await?;
    session.unsubscribe(&[marker]).await?;
    Ok(fleet)
}

/// The filters that bring again what the `unsure` agents lack: everything of an agent that
/// lacks more than its heartbeat, else the heartbeat alone — in batches that each stay far
/// below what a broker queues for a reader (a heartbeat is one message, an agent a dozen).
pub(crate) fn read_again(topics: &Topics, unsure: &[(&str, Lacking)]) -> Vec<Vec<String>> {
    let (heartbeats, more): (Vec<_>, Vec<_>) = unsure
        .iter()
        .partition(|(_, lacking)| *lacking == Lacking::Heartbeat);
    let more: Vec<String> = more
        .iter()
        .map(|(agent, _)| topics.of_agent(agent))
        .collect();
    let heartbeats: Vec<String> = heartbeats
        .iter()
        .map(|(a, _)| topics.heartbeat(a))
        .collect();
    let batches = more.chunks(AGENTS_PER_BATCH);
    batches
        .chain(heartbeats.chunks(HEARTBEATS_PER_BATCH))
        .map(<[String]>::to_vec)
        .collect()
}

/// The retained messages of each batch of filters, a few batches at a time, for a view that
/// came incomplete.
pub(crate) async fn reread(
    session: &mut Session,
    topics: &Topics,
    batches: &[Vec<String>],
) -> Result<Vec<crate::session::Message>, SessionError> {
    let marker = session.marker(topics);
    let mut messages = Vec::new();
    session
        .snapshots(batches, &marker, |m| messages.push(m))
        .await?;
    Ok(messages)
}

/// How many agents a second reading asks for at once: with ten processes each, about 1,200
/// messages (300 KB), which the connection's buffers take whole before the broker's own queue
/// is touched.
const AGENTS_PER_BATCH: usize = 100;

/// How many heartbeats a second reading asks for at once.
const HEARTBEATS_PER_BATCH: usize = 1000;

/// A job for `process` of `agent`, bound to the agent's current session.
pub(crate) fn job(fleet: &Fleet, agent: &str, process: &str) -> Job {
    let session = fleet.agent(agent).and_then(|a| a.session());
    Job::new(agent, Some(process), session)
}

/// Sends the jobs; those rejected because the agent reconnected since its session was read
/// are sent once more, bound to the session it announces now.
pub(crate) async fn send_with_retry(
    session: &mut Session,
    topics: &Topics,
    request: &Request<'_>,
    jobs: Vec<Job>,
    mut done: impl FnMut(&Job, &Outcome),
) -> Result<Vec<(Job, Outcome)>, SessionError> {
    let mut results = request::send_all(session, request, jobs, |job, outcome| {
        if !outcome.is_stale_session() {
            done(job, outcome);
        }
    })
    .await?;
    let stale: Vec<Job> = results
        .iter()
        .filter(|(_, o)| o.is_stale_session())
        .map(|(j, _)| j.clone())
        .collect();
    if stale.is_empty() {
        return Ok(results);
    }
    tracing::debug!(count = stale.len(), "stale sessions; reading them again");
    results.retain(|(_, o)| !o.is_stale_session());
    let agents: Vec<Target> = stale.iter().map(|j| Target::agent(&j.agent)).collect();
    let fleet = read_fleet(session, topics, &agents).await?;
    let renewed = stale
        .iter()
        .map(|j| j.renewed(fleet.agent(&j.agent).and_then(|a| a.session())))
        .collect();
    results.extend(request::send_all(session, request, renewed, done).await?);
    Ok(results)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_reads_only_what_it_can_match() {
        let topics = Topics::default();
        let target = |text: &str| crate::fleet::Target::parse(text).unwrap();
        assert_eq!(
            scope_filters(&topics, &[]),
            [
                "respawn/v1/+/state",
                "respawn/v1/+/proc/+",
                "respawn/v1/+/heartbeat"
            ]
        );
        assert_eq!(
            scope_filters(&topics, &[target("sim-00*/worker")]),
            [
                "respawn/v1/+/state",
                "respawn/v1/+/proc/worker",
                "respawn/v1/+/heartbeat"
            ]
        );
        assert_eq!(
            scope_filters(&topics, &[target("door-pi"), target("door-pi/web*")]),
            [
                "respawn/v1/door-pi/state",
                "respawn/v1/door-pi/proc/+",
                "respawn/v1/door-pi/heartbeat"
            ]
        );
    }

    #[test]
    fn what_is_read_again_is_what_is_lacking_in_small_batches() {
        let topics = Topics::default();
        let names: Vec<String> = (0..1500).map(|i| format!("a{i}")).collect();
        let unsure: Vec<(&str, Lacking)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.as_str(),
                    if i < 150 {
                        Lacking::More
                    } else {
                        Lacking::Heartbeat
                    },
                )
            })
            .collect();
        let batches = read_again(&topics, &unsure);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 50, 1000, 350]);
        assert_eq!(batches[0][0], "respawn/v1/a0/#");
        assert_eq!(batches[2][0], "respawn/v1/a150/heartbeat");
    }

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
