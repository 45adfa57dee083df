//! The `respawnctl` command line: fleet status, a live event tail, and remote restart, stop,
//! start and logs with acknowledgement.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{CommandFactory, Parser, Subcommand};
use respawn_common::messages::{CommandName, Event};
use respawn_common::topics::{Filter, Topics};
use rumqttc::v5::mqttbytes::QoS;

use crate::fleet::{Fleet, Target};
use crate::output::{self, Style};
use crate::request::{self, Job, Outcome, Request};
use crate::session::{Session, SessionError};
use crate::settings::{self, Given, Settings};

/// Watch and command a fleet of respawn agents through their MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "respawnctl", version, after_help = EXAMPLES)]
struct Cli {
    /// The broker, e.g. mqtt://192.168.1.10:1883 [env: RESPAWN_BROKER; default: mqtt://127.0.0.1:1883]
    #[arg(long, global = true)]
    broker: Option<String>,
    /// The broker username [env: RESPAWN_USERNAME]
    #[arg(long, global = true)]
    username: Option<String>,
    /// A file holding the broker password [env: RESPAWN_PASSWORD_FILE, or the password itself in RESPAWN_PASSWORD]
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// The topic prefix the agents use [default: respawn/v1]
    #[arg(long, global = true)]
    prefix: Option<String>,
    /// respawnctl's configuration file, given before the command [default: ~/.config/respawn/respawnctl.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    /// The operator key that signs commands (from `respawnctl keygen`) [env: RESPAWN_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// For mqtts://: the CA certificate to trust (PEM) instead of the system's.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// For mutual TLS: this client's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    cert_file: Option<PathBuf>,
    /// For mutual TLS: this client's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Debug tracing to stderr (-vv for the MQTT client too).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  respawnctl --broker mqtt://192.168.1.10 status
  respawnctl status 'door-*' --json
  respawnctl events
  respawnctl restart door-pi/doorbot
  respawnctl stop '*/scraper'
  respawnctl logs door-pi/doorbot -n 20
  respawnctl keygen --out ~/.config/respawn/alice.key
  respawnctl --key ~/.config/respawn/alice.key restart door-pi/doorbot
  respawnctl alerts --config /etc/respawn/alerts.toml

Exit codes: 0 success, 1 usage or connection error, 2 a command failed or was rejected (or a
target matched nothing), 3 a command timed out.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Every agent and its processes, from the broker's retained state.
    #[command(
        after_help = "Examples:\n  respawnctl status\n  respawnctl status 'door-*'\n  respawnctl status '*/doorbot' --json"
    )]
    Status {
        /// AGENT or AGENT/PROCESS, with * and ? as wildcards.
        pattern: Option<String>,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live tail of lifecycle events (Ctrl-C to stop).
    #[command(
        after_help = "Examples:\n  respawnctl events\n  respawnctl events 'door-pi/*'\n  respawnctl events --json | jq ."
    )]
    Events {
        /// AGENT or AGENT/PROCESS, with * and ? as wildcards.
        pattern: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Restart processes: stop them if they run, then start them.
    #[command(
        after_help = "Examples:\n  respawnctl restart door-pi/doorbot\n  respawnctl restart '*/worker' --timeout 30s\n  respawnctl restart door-pi        (all of its processes)"
    )]
    Restart(Act),
    /// Stop processes; they stay stopped, also across agent restarts, until started.
    #[command(
        after_help = "Examples:\n  respawnctl stop door-pi/doorbot\n  respawnctl stop 'garage-*/scraper'"
    )]
    Stop(Act),
    /// Start stopped processes.
    #[command(after_help = "Examples:\n  respawnctl start door-pi/doorbot")]
    Start(Act),
    /// The last lines a process wrote to stdout and stderr.
    #[command(
        after_help = "Examples:\n  respawnctl logs door-pi/doorbot\n  respawnctl logs door-pi/doorbot -n 200"
    )]
    Logs {
        /// AGENT/PROCESS naming exactly one process.
        target: String,
        /// How many lines (at most 1000).
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// How long to wait for the agent.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Make an operator key pair: the private key (mode 0600) in FILE, the public key in
    /// FILE.pub and on stdout, for an agent's [[operator]] public_key.
    #[command(
        after_help = "Examples:\n  respawnctl keygen --out alice.key\n  respawnctl keygen --out ~/.config/respawn/ops.key --name ops-team"
    )]
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The operator's name, as agents will know it [default: the file name without extension].
        #[arg(long)]
        name: Option<String>,
    },
    /// Crash alerts to chat — Slack, Discord, Telegram, Matrix, ntfy, webhooks — until stopped.
    #[command(
        after_help = "Examples:\n  respawnctl --broker mqtt://192.168.1.10 alerts --config alerts.toml\n  respawnctl alerts test --config alerts.toml\n\nSee docs/alerts.md for the file, the rules and a systemd unit."
    )]
    Alerts {
        /// The alerts file: targets, and how alerts behave.
        #[arg(long = "config", value_name = "FILE", global = true)]
        alerts_config: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<AlertsAction>,
    },
    /// Shell completions, e.g. `respawnctl completions bash > /etc/bash_completion.d/respawnctl`.
    #[command(
        after_help = "Examples:\n  respawnctl completions bash\n  respawnctl completions zsh > ~/.zfunc/_respawnctl"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum AlertsAction {
    /// Send a test message to every target and say which took it (exit 0 when all did).
    Test,
}

#[derive(Debug, clap::Args)]
struct Act {
    /// AGENT/PROCESS (either part may use * and ?), or AGENT for all of its processes.
    #[arg(required = true)]
    targets: Vec<String>,
    /// How long to wait for the outcomes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs the command line with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose, matches!(cli.command, Command::Alerts { .. }));
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "respawnctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    if let Command::Keygen { out, name } = &cli.command {
        return keygen(out, name.as_deref());
    }
    let alerts = match &cli.command {
        Command::Alerts {
            alerts_config: Some(path),
            action,
        } => match crate::alerts::config::load(path, crate::alerts::default_state_file()) {
            Ok(config) if action.is_some() => {
                return match crate::alerts::test(&config) {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::from(2),
                };
            }
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("respawnctl: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Alerts {
            alerts_config: None,
            ..
        } => {
            eprintln!("respawnctl: alerts needs --config FILE (see docs/alerts.md)");
            return ExitCode::FAILURE;
        }
        _ => None,
    };
    let settings = match load_settings(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("respawnctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(?settings, "settings");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("respawnctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let style = Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Status { pattern, json } => status(&settings, pattern, json, style).await,
            Command::Events { pattern, json } => events(&settings, pattern, json, style).await,
            Command::Restart(act) => act_on(&settings, CommandName::Restart, act, style).await,
            Command::Stop(act) => act_on(&settings, CommandName::Stop, act, style).await,
            Command::Start(act) => act_on(&settings, CommandName::Start, act, style).await,
            Command::Logs {
                target,
                lines,
                timeout,
            } => logs(&settings, &target, lines, timeout, style).await,
            Command::Alerts { .. } => match alerts {
                Some(config) => crate::alerts::run(&settings, config)
                    .await
                    .map(|()| ExitCode::SUCCESS)
                    .map_err(SessionError::Send),
                None => Ok(ExitCode::FAILURE),
            },
            Command::Completions { .. } | Command::Keygen { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("respawnctl: {e}");
        ExitCode::FAILURE
    })
}

/// Quiet by default; the alerter, a service, tells its log what it does.
fn init_tracing(verbose: u8, service: bool) {
    let filter = match (verbose, service) {
        (0, false) => return,
        (0, true) => "respawn_controller=info,ureq=warn",
        (1, _) => "respawn_controller=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn load_settings(cli: &Cli) -> Result<Settings, String> {
    let path = cli.config.clone().or_else(settings::default_config_path);
    let text = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && cli.config.is_none() => None,
            Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
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
        |p| std::fs::read_to_string(p),
    )
}

fn keygen(out: &std::path::Path, name: Option<&str>) -> ExitCode {
    use std::os::unix::fs::OpenOptionsExt;
    let name = name.map(str::to_owned).unwrap_or_else(|| {
        out.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let key = match respawn_common::signing::SigningKey::generate(&name) {
        Ok(key) => key,
        Err(e) => {
            eprintln!("respawnctl: {e} (choose one with --name)");
            return ExitCode::FAILURE;
        }
    };
    let public = out.with_file_name(format!(
        "{}.pub",
        out.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    let write = |path: &std::path::Path, text: &str, mode: u32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let line = key.public_line();
    if let Err(e) = write(out, &key.to_file(), 0o600) {
        eprintln!("respawnctl: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = write(&public, &format!("{line}\n"), 0o644) {
        // Half a key pair is no use, and would make the next try fail on the existing file.
        let _ = std::fs::remove_file(out);
        eprintln!("respawnctl: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wrote the private key to {} (keep it secret) and the public key to {}; put this in each agent's configuration:\n\n[[operator]]\nname = \"{name}\"\npublic_key = \"{line}\"\n",
        out.display(),
        public.display()
    );
    println!("{line}");
    ExitCode::SUCCESS
}

/// The operator key from the settings, if one is named.
fn signing_key(
    settings: &Settings,
) -> Result<Option<respawn_common::signing::SigningKey>, SessionError> {
    let Some(path) = &settings.signing_key else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| SessionError::Tls(format!("cannot read the key {}: {e}", path.display())))?;
    let key = respawn_common::signing::SigningKey::parse(&text)
        .map_err(|e| SessionError::Tls(format!("{}: {e}", path.display())))?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "respawnctl: warning: others can read the signing key {} (chmod 600 it)",
                path.display()
            );
        }
    }
    Ok(Some(key))
}

fn parse_pattern(pattern: Option<String>) -> Result<Option<Target>, SessionError> {
    pattern
        .map(|p| Target::parse(&p))
        .transpose()
        .map_err(SessionError::Send)
}

/// Connects and folds the retained state of the whole fleet.
async fn fleet_snapshot(settings: &Settings) -> Result<(Session, Fleet), SessionError> {
    let mut session = Session::connect(settings, false).await?;
    let fleet = read_fleet(&mut session, &settings.topics).await?;
    Ok((session, fleet))
}

async fn read_fleet(session: &mut Session, topics: &Topics) -> Result<Fleet, SessionError> {
    let marker = format!("{}/_sync/{}", topics.prefix(), session.client_id);
    let filters = [Filter::States, Filter::Processes, Filter::Heartbeats].map(|f| topics.filter(f));
    let messages = session.snapshot(&filters, &marker).await?;
    let mut fleet = Fleet::default();
    for m in &messages {
        fleet.apply(topics, &m.topic, &m.payload);
    }
    tracing::debug!(messages = messages.len(), agents = fleet.len(), "snapshot");
    Ok(fleet)
}

/// A job for `process` of `agent`, bound to the agent's current session.
fn job(fleet: &Fleet, agent: &str, process: &str) -> Job {
    let session = fleet.agent(agent).and_then(|a| a.session());
    Job::new(agent, Some(process), session)
}

/// Sends the jobs; those rejected because the agent reconnected since its session was read
/// are sent once more, bound to the session it announces now.
async fn send_with_retry(
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
    let fleet = read_fleet(session, topics).await?;
    let renewed = stale
        .iter()
        .map(|j| j.renewed(fleet.agent(&j.agent).and_then(|a| a.session())))
        .collect();
    results.extend(request::send_all(session, request, renewed, done).await?);
    Ok(results)
}

async fn status(
    settings: &Settings,
    pattern: Option<String>,
    json: bool,
    style: Style,
) -> Result<ExitCode, SessionError> {
    let pattern = match parse_pattern(pattern) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("respawnctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (session, fleet) = fleet_snapshot(settings).await?;
    session.close().await;
    let fleet = fleet.filter(pattern.as_ref());
    let text = if json {
        let mut text = serde_json::to_string_pretty(&output::status_json(&fleet))
            .map_err(|e| SessionError::Send(e.to_string()))?;
        text.push('\n');
        text
    } else {
        output::status_table(&fleet, SystemTime::now(), style)
    };
    print(&text);
    Ok(ExitCode::SUCCESS)
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

async fn events(
    settings: &Settings,
    pattern: Option<String>,
    json: bool,
    style: Style,
) -> Result<ExitCode, SessionError> {
    let pattern = match parse_pattern(pattern) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("respawnctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let topics = settings.topics.clone();
    let filter = topics.filter(Filter::Events);
    let mut session = Session::connect(settings, true).await?;
    session
        .subscribe(std::slice::from_ref(&filter), QoS::AtLeastOnce)
        .await?;
    if std::io::stderr().is_terminal() {
        eprintln!("waiting for events… (Ctrl-C to stop)");
    }
    // Events arrive at least once: remember recent ids to show each once.
    let mut seen: (HashSet<String>, VecDeque<String>) = (HashSet::new(), VecDeque::new());
    loop {
        let message = tokio::select! {
            m = session.recv() => m,
            _ = tokio::signal::ctrl_c() => break,
        };
        match message {
            Ok(m) => {
                let Ok(event) = serde_json::from_slice::<Event>(&m.payload) else {
                    continue;
                };
                if !event_matches(&event, pattern.as_ref(), &topics, &m.topic)
                    || !seen.0.insert(event.id.clone())
                {
                    continue;
                }
                seen.1.push_back(event.id.clone());
                if seen.1.len() > 10_000 {
                    if let Some(old) = seen.1.pop_front() {
                        seen.0.remove(&old);
                    }
                }
                if json {
                    print(&format!("{}\n", String::from_utf8_lossy(&m.payload)));
                } else {
                    print(&output::event_line(&event, style));
                }
            }
            Err(e) => {
                eprintln!("respawnctl: {e}; reconnecting");
                loop {
                    match session.wait_connected().await {
                        Ok(()) => break,
                        Err(e) => tracing::debug!(error = %e, "still disconnected"),
                    }
                }
                session
                    .subscribe(std::slice::from_ref(&filter), QoS::AtLeastOnce)
                    .await?;
                eprintln!("respawnctl: reconnected");
            }
        }
    }
    session.close().await;
    Ok(ExitCode::SUCCESS)
}

fn event_matches(event: &Event, pattern: Option<&Target>, topics: &Topics, topic: &str) -> bool {
    // The topic names the agent that published; trust it over the payload.
    let agent_ok = topics
        .parse(topic)
        .is_some_and(|t| t.agent() == event.agent);
    let Some(target) = pattern else {
        return agent_ok;
    };
    agent_ok
        && respawn_common::pattern::glob(&target.agent, &event.agent)
        && match (&target.process, &event.process) {
            (None, _) => true,
            (Some(p), Some(process)) => respawn_common::pattern::glob(p, process),
            (Some(_), None) => false,
        }
}

/// The exit code for a set of outcomes.
fn exit_code(outcomes: &[&Outcome], unmatched: bool) -> ExitCode {
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

async fn act_on(
    settings: &Settings,
    command: CommandName,
    act: Act,
    style: Style,
) -> Result<ExitCode, SessionError> {
    let mut targets = Vec::new();
    for text in &act.targets {
        match Target::parse(text) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("respawnctl: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    let (mut session, fleet) = fleet_snapshot(settings).await?;
    let mut unmatched = false;
    let mut chosen = BTreeSet::new();
    let mut not_sent = Vec::new();
    for target in &targets {
        let matches = fleet.select(target);
        if matches.is_empty() {
            eprintln!("respawnctl: no process matches {target}");
            unmatched = true;
        }
        for (agent, process) in matches {
            if !chosen.insert((agent.clone(), process.clone())) {
                continue;
            }
            let liveness = fleet.agent(&agent).map(|a| a.liveness());
            match liveness {
                Some(l) if l.reachable() => {}
                other => {
                    let job = job(&fleet, &agent, &process);
                    let why = format!(
                        "the agent is {}",
                        other.map_or("unknown".into(), |l| l.to_string())
                    );
                    let outcome = Outcome::NotSent(why);
                    print(&format!(
                        "{}\n",
                        output::outcome_line(command, &job, &outcome, act.timeout, style)
                    ));
                    not_sent.push(outcome);
                }
            }
        }
    }
    let jobs: Vec<Job> = chosen
        .iter()
        .filter(|(agent, _)| fleet.agent(agent).is_some_and(|a| a.liveness().reachable()))
        .map(|(agent, process)| job(&fleet, agent, process))
        .collect();
    let key = signing_key(settings)?;
    let requester = request::requester();
    let request = Request {
        topics: &settings.topics,
        requester: &requester,
        command,
        lines: None,
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
        )
        .await?
    };
    session.close().await;
    let outcomes: Vec<&Outcome> = results.iter().map(|(_, o)| o).chain(&not_sent).collect();
    Ok(exit_code(&outcomes, unmatched))
}

async fn logs(
    settings: &Settings,
    target: &str,
    lines: usize,
    timeout: Duration,
    style: Style,
) -> Result<ExitCode, SessionError> {
    let target = match Target::parse(target) {
        Ok(t) if t.process.is_some() => t,
        Ok(t) => {
            eprintln!("respawnctl: name one process: {t}/PROCESS");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("respawnctl: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
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
        lines: Some(lines),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "respawnctl",
            "--config",
            "ctl.toml",
            "alerts",
            "test",
            "--config",
            "alerts.toml",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("ctl.toml")));
        assert!(matches!(
            cli.command,
            Command::Alerts { alerts_config: Some(ref p), action: Some(AlertsAction::Test) }
                if p == &PathBuf::from("alerts.toml")
        ));
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
