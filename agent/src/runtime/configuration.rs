//! Which processes the agent runs: the local file (read at start and on SIGHUP) and, where the
//! local file allows it, the remote configuration an operator applies over the network
//! (`remote.toml` in the state directory, `[[process]]` tables only, kept apart so that the
//! network may change what runs but never who is trusted or where the agent reports).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Instant;

use respawn_common::messages::{
    CommandReply, ConfigChanges, ConfigReport, ConfiguredProcess, Reason, ReplyStatus, Tense,
    MAX_REMOTE_CONFIG,
};
use respawn_common::pattern::glob;
use respawn_common::signing::{sha256_hex, short_sha256};
use respawn_common::text::listed;

use crate::config::{self, Config, Environment, ProcessConfig};
use crate::control::{Reply, SHUTTING_DOWN};
use crate::runtime::commands::RemoteRequest;
use crate::runtime::desk::{ConfigCommand, Effect};
use crate::runtime::{report, setup, Runtime};
use crate::shell::KILL_GRACE;
use crate::state::StateDir;
use crate::supervisor::Input;

/// What a `config_*` command comes to, decided before anything is written.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Answer without changing anything.
    Reply(CommandReply),
    /// Make `text` the remote configuration (the one in force becomes the previous), run
    /// `processes`, then answer.
    Write {
        text: String,
        processes: Vec<ProcessConfig>,
        reply: CommandReply,
    },
}

/// The remote configuration as it is on disk.
struct OnDisk {
    current: String,
    previous: Option<String>,
}

/// What a `config_*` decision needs besides the command and the files.
struct Context<'a, P, M, L> {
    cmd_id: &'a str,
    config: &'a Config,
    /// Reads a remote text against the local processes.
    parse: P,
    /// The operator who signed the command, if anyone did.
    signer: Option<&'a str>,
    /// Whether the operator may touch a process of this name (its `processes` globs).
    may_touch: M,
    /// What running these processes would change, as the supervisor will do it.
    plan: L,
}

/// The most problems a reply lists: a text can have one on every line, and a reply must fit
/// in one MQTT message.
const MAX_PROBLEMS: usize = 100;

/// Decides a `config_*` command from the agent's configuration and the remote files: pure,
/// so that every refusal is checked without an agent.
fn decide<P, M, L>(command: ConfigCommand, disk: OnDisk, context: Context<'_, P, M, L>) -> Decision
where
    P: Fn(&str) -> Result<Vec<ProcessConfig>, Vec<config::Problem>>,
    M: Fn(&str) -> bool,
    L: Fn(&[ProcessConfig]) -> ConfigChanges,
{
    let Context {
        cmd_id,
        config,
        parse,
        signer,
        may_touch,
        plan,
    } = context;
    let agent = config.agent.id.as_str();
    let refuse = |reason, message: String| {
        Decision::Reply(CommandReply::rejected(cmd_id, agent, reason, message))
    };
    if !config.agent.remote_config {
        return refuse(
            Reason::RemoteConfigOff,
            "this agent does not take processes over the network ([agent] remote_config = true in its local file, and a restart of the agent, allow it)".into(),
        );
    }
    let sha256 = sha256_hex(disk.current.as_bytes());
    let succeeded = |report: ConfigReport| {
        let mut reply = CommandReply::new(cmd_id, agent, ReplyStatus::Succeeded);
        reply.config = Some(report);
        reply
    };
    let rollback = matches!(command, ConfigCommand::Rollback { .. });
    let (text, base, dry_run) = match command {
        ConfigCommand::Get => {
            return Decision::Reply(succeeded(ConfigReport {
                sha256,
                text: Some(disk.current),
                processes: config
                    .processes
                    .iter()
                    .map(|p| ConfiguredProcess {
                        name: p.name.clone(),
                        remote: p.remote,
                    })
                    .collect(),
                ..ConfigReport::default()
            }))
        }
        ConfigCommand::Apply { text: Some(text), .. } if text.len() > MAX_REMOTE_CONFIG => {
            return refuse(
                Reason::TooLarge,
                format!(
                    "the configuration is {} bytes; an agent takes at most {MAX_REMOTE_CONFIG}",
                    text.len()
                ),
            );
        }
        // Taken for an empty text, a command that lost its text would remove every remote
        // process: an empty text must be sent as one.
        ConfigCommand::Apply { text: None, .. } => {
            return refuse(
                Reason::Malformed,
                "config_apply needs `text`: the whole new remote configuration (\"\" removes every remote process)".into(),
            )
        }
        ConfigCommand::Apply { base: None, .. } => {
            return refuse(
                Reason::Malformed,
                "config_apply needs `base`: the sha256 of the remote configuration it replaces, from config_get".into(),
            )
        }
        ConfigCommand::Apply {
            text: Some(text),
            base,
            dry_run,
        } => (text, base, dry_run),
        ConfigCommand::Rollback { base, dry_run } => match disk.previous {
            Some(previous) => (previous, base, dry_run),
            None => {
                return refuse(
                    Reason::NoPrevious,
                    "there is no earlier remote configuration to go back to".into(),
                )
            }
        },
    };
    if let Some(base) = base.filter(|base| *base != sha256) {
        return refuse(
            Reason::Conflict,
            format!("the remote configuration changed since {}: it is now {}; get it again and redo the change", short_sha256(&base), short_sha256(&sha256)),
        );
    }
    let remote = match parse(&text) {
        Ok(remote) => remote,
        Err(problems) => return invalid(cmd_id, agent, sha256, problems),
    };
    let processes = with_remote(&config.processes, remote);
    // Only remote processes change: the local ones are as they run.
    let remote_names: BTreeSet<&str> = (config.processes.iter().chain(&processes))
        .filter_map(|p| p.remote.then_some(p.name.as_str()))
        .collect();
    let mut changes = plan(&processes);
    changes.retain(|name| remote_names.contains(name));
    if let Some(name) = changes.touched().find(|name| !may_touch(name)) {
        let message = match signer {
            Some(signer) => format!("{signer} may not configure {name} (its `processes` in this agent's [[operator]] do not match it)"),
            None => format!("an unsigned command may not configure {name}: only an [[operator]] whose processes match it"),
        };
        return refuse(Reason::NotAllowed, message);
    }
    if dry_run {
        return Decision::Reply(succeeded(ConfigReport {
            sha256,
            // What a rollback brings back, so that it can be shown before it is done.
            text: rollback.then_some(text),
            changes: Some(changes),
            dry_run: true,
            ..ConfigReport::default()
        }));
    }
    let reply = succeeded(ConfigReport {
        sha256: sha256_hex(text.as_bytes()),
        changes: Some(changes),
        ..ConfigReport::default()
    });
    Decision::Write {
        text,
        processes,
        reply,
    }
}

fn invalid(
    cmd_id: &str,
    agent: &str,
    sha256: String,
    mut problems: Vec<config::Problem>,
) -> Decision {
    let message = match problems.len() {
        1 => "the configuration has a problem; nothing was changed".to_owned(),
        n => format!("the configuration has {n} problems; nothing was changed"),
    };
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(config::Problem {
            line: 0,
            message: format!("… and {more} more problems"),
        });
    }
    let mut reply = CommandReply::rejected(cmd_id, agent, Reason::InvalidConfig, message);
    reply.config = Some(ConfigReport {
        sha256,
        problems,
        ..ConfigReport::default()
    });
    Decision::Reply(reply)
}

/// The local processes of `processes`, then `remote`.
fn with_remote(processes: &[ProcessConfig], remote: Vec<ProcessConfig>) -> Vec<ProcessConfig> {
    let local = processes.iter().filter(|p| !p.remote).cloned();
    local.chain(remote).collect()
}

/// The warning of a reload whose file changed `settings`, which the running agent keeps until
/// it restarts: `[agent] id and [mqtt] changed: …`.
fn restart_pending(settings: &[&str]) -> String {
    let named = listed(settings, "and");
    let they = if settings.len() == 1 {
        "it takes"
    } else {
        "they take"
    };
    format!("{named} changed: {they} effect when the agent restarts; until then the agent keeps the earlier settings")
}

/// What makes `new` another agent's configuration than the running one's: its id or its
/// state directory, which only a restart changes.
fn another_agents(running: &Config, new: &Config) -> Option<String> {
    let (was, now) = (&running.agent, &new.agent);
    if was.id != now.id {
        return Some(format!("[agent] id is {:?}, not {:?}", now.id, was.id));
    }
    (was.state_dir != now.state_dir).then(|| {
        format!(
            "[agent] state_dir is {}, not {}",
            now.state_dir.display(),
            was.state_dir.display()
        )
    })
}

/// The names of the local processes, which a remote one may not take.
fn local_names(processes: &[ProcessConfig]) -> Vec<String> {
    processes
        .iter()
        .filter(|p| !p.remote)
        .map(|p| p.name.clone())
        .collect()
}

/// Adds the processes of `remote.toml` to a freshly read local configuration, if it takes
/// them. Where the file cannot be read or no longer validates (a user deleted since), the
/// remote processes of `running` go on as they are (none at start), and the error is logged:
/// an edit of the local file never stops them, and an agent always starts. A remote process
/// whose name a local one now has is left out: the local one wins.
pub fn add_remote(
    config: &mut Config,
    config_path: &Path,
    state: &StateDir,
    running: &[ProcessConfig],
) {
    if !config.agent.remote_config {
        if state
            .remote_config()
            .ok()
            .flatten()
            .is_some_and(|t| !t.trim().is_empty())
        {
            tracing::warn!("the remote configuration in the state directory is not run: [agent] remote_config is off");
        }
        return;
    }
    let keep_running = || running.iter().filter(|p| p.remote).cloned().collect();
    let remote: Vec<ProcessConfig> = match state.remote_config() {
        Ok(None) => Vec::new(),
        Ok(Some(text)) => {
            let env = Environment::current();
            match config::parse_remote(&text, &config::base_dir(config_path), &env, &[]) {
                Ok(remote) => remote,
                Err(problems) => {
                    tracing::error!(
                        "the remote configuration no longer reads; its processes that run go on as they are:\n{}",
                        respawn_common::config_file::format_problems(&problems)
                    );
                    keep_running()
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the remote configuration; its processes that run go on as they are");
            keep_running()
        }
    };
    let local = local_names(&config.processes);
    for process in remote {
        if local.contains(&process.name) {
            tracing::error!(process = %process.name, "a local process has the name of a remote one; the local one runs (remove it from the remote configuration)");
        } else {
            config.processes.push(process);
        }
    }
}

impl Runtime {
    /// Carries out a `config_*` command and answers it: at once, or for a change that was
    /// made, once the processes it starts have started or could not.
    pub(super) fn config_command(&mut self, request: RemoteRequest, command: ConfigCommand) {
        if let Some(reply) = self.decide_config(&request, command) {
            let effects = self.desk.finish(request, reply);
            self.carry_out(effects);
        }
    }

    /// The reply to a `config_*` command, or `None` when a change was made and handed to
    /// the desk to answer.
    fn decide_config(
        &mut self,
        request: &RemoteRequest,
        command: ConfigCommand,
    ) -> Option<CommandReply> {
        let agent = self.config.agent.id.clone();
        let failed = |message: String| {
            CommandReply::rejected(&request.cmd_id, &agent, Reason::Unsuccessful, message)
        };
        let disk = match (
            self.state.remote_config(),
            self.state.previous_remote_config(),
        ) {
            (Ok(current), Ok(previous)) => OnDisk {
                current: current.unwrap_or_default(),
                previous,
            },
            (Err(e), _) | (_, Err(e)) => {
                return Some(failed(format!("cannot read the remote configuration: {e}")))
            }
        };
        let env = Environment::current();
        let base_dir = config::base_dir(&self.config_path);
        let local = local_names(&self.config.processes);
        let parse = |text: &str| config::parse_remote(text, &base_dir, &env, &local);
        let globs = request.signer.as_deref().and_then(|signer| {
            let operator = self.config.operators.iter().find(|o| o.name == signer)?;
            Some(operator.processes.clone())
        });
        let may_touch = |name: &str| {
            globs
                .as_ref()
                .is_some_and(|globs| globs.iter().any(|g| glob(g, name)))
        };
        let context = Context {
            cmd_id: &request.cmd_id,
            config: &self.config,
            parse,
            signer: request.signer.as_deref(),
            may_touch,
            plan: |processes: &[ProcessConfig]| self.supervisor.plan(processes),
        };
        match decide(command, disk, context) {
            Decision::Reply(reply) => Some(reply),
            Decision::Write {
                text,
                processes,
                reply,
            } => {
                if let Err(e) = self.state.replace_remote_config(&text) {
                    return Some(failed(format!(
                        "cannot write the remote configuration ({e}); nothing was changed"
                    )));
                }
                let sha256 = reply.config.as_ref().map_or("", |c| c.sha256.as_str());
                let changes = (reply.config.iter().flat_map(|c| c.changes.as_ref()))
                    .map(|changes| changes.in_one_line(Tense::Doing))
                    .next()
                    .unwrap_or_default();
                tracing::info!(
                    cmd_id = request.cmd_id.as_str(),
                    signer = request.signer.as_deref().unwrap_or("-"),
                    sha256,
                    "remote configuration {}: {changes}",
                    request.command.as_str()
                );
                let starting = reply
                    .config
                    .iter()
                    .flat_map(|c| c.changes.iter())
                    .flat_map(|changes| {
                        (changes.added.iter())
                            .chain(&changes.changed)
                            .chain(&changes.changed_started)
                    })
                    .cloned()
                    .collect();
                // Each old run gets its stop_timeout, then SIGKILL, before the new one starts;
                // and what starts waits for processes an earlier change removed.
                let stops = self.config.processes.iter().chain(&processes);
                let longest = stops.map(|p| p.stop_timeout).max().unwrap_or_default();
                let now = Instant::now();
                let deadline = (now + longest + KILL_GRACE)
                    .max(self.supervisor.leaving_gone_by(now).unwrap_or(now));
                self.desk
                    .await_starts(request.clone(), reply, starting, deadline);
                self.announce_processes(&processes, false);
                self.configure(processes);
                None
            }
        }
    }

    /// Starts supervising `processes`: added ones start, removed ones stop, changed ones
    /// restart, and every state is reported (a new `notify` changes only what is reported).
    pub(super) fn configure(&mut self, processes: Vec<ProcessConfig>) {
        self.config.processes = processes.clone();
        self.feed(Input::Configure(processes));
        self.schedule_memory_checks();
        let (held, leaving) = self.supervisor.held();
        if !held.is_empty() {
            let listed = |names: &[&str]| respawn_common::text::listed(names, "and");
            let (held, leaving) = (listed(&held), listed(&leaving));
            tracing::info!("waiting for the removed {leaving} to stop before starting {held} (a renamed program may need the port or device of its old run)");
        }
    }

    /// A new birth names `processes`, and after them the processes that leave the
    /// configuration while they still run (they stop, perhaps for their whole `stop_timeout`,
    /// and a reader that did not see them would take them for gone); all are remembered as
    /// reported. In a new session with `renew_session`.
    fn announce_processes(&self, processes: &[ProcessConfig], renew_session: bool) {
        if let Some(link) = &self.link {
            let mut names: Vec<String> = processes.iter().map(|p| p.name.clone()).collect();
            let leaving: Vec<String> = (self.supervisor.views())
                .filter(|view| view.pid.is_some() && !names.contains(&view.name))
                .map(|view| view.name)
                .collect();
            names.extend(leaving);
            setup::remember_reported(&self.state, names.iter().cloned());
            link.reconfigured(names, renew_session);
        }
    }

    /// SIGHUP: reads the local file again, with the remote processes it allows; the outcome
    /// is logged.
    pub(super) fn reload(&mut self) {
        if self.shutting_down {
            tracing::info!("SIGHUP while shutting down: the configuration is not read again");
        }
        let _ = self.reload_reply();
    }

    /// The answer to `respawn-agent --config FILE reload` when `file` is not the file this
    /// agent was started with: a reload reads that one again, and never `file`, whose problems
    /// would go unsaid behind a reload of the other.
    pub(super) fn refused_reload_of(&self, file: Option<&Path>) -> Option<Reply> {
        let identity = |path: &Path| {
            let file = std::fs::metadata(path).ok()?;
            Some((file.dev(), file.ino()))
        };
        let asked = identity(file?);
        if asked.is_some() && asked == identity(&self.config_path) {
            return None;
        }
        let (runs, asked) = (self.config_path.display(), file?.display());
        let message = format!("this agent runs with {runs}: a reload reads that file again, not {asked}. To run the agent with {asked}, restart it with --config {asked} (or edit {runs})");
        Some(Reply::Error { message })
    }

    /// `respawn-agent reload`: as SIGHUP, answered with what changes, or with every problem
    /// of a file that cannot be taken (the running configuration then stays in force).
    pub(super) fn reload_reply(&mut self) -> Reply {
        let path = self.config_path.display().to_string();
        if self.shutting_down {
            let message = SHUTTING_DOWN.to_owned();
            return Reply::Error { message };
        }
        tracing::info!(%path, "reloading the configuration");
        let (mut new, text) =
            match config::load_with_text(&self.config_path, &Environment::current()) {
                Ok(loaded) => loaded,
                Err(e) => {
                    let message =
                        format!("reload failed; the running configuration stays in force.\n{e}");
                    tracing::error!("{message}");
                    return Reply::Error { message };
                }
            };
        // Another agent's file, or one not yet fully written (an editor's or a tool's write
        // caught half way: empty, it names the hostname's agent and no process). Taken, it
        // would stop every program and forget their manual stops.
        // An agent with the hostname's id and the default state directory (as packaged) names
        // itself in an empty file too: a file with no setting at all is not taken either. Told
        // of the text that was read: a second read could find the write finished.
        let blank = || {
            let said = text.lines().map(str::trim);
            (said
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count()
                == 0)
                .then(|| "it has no setting at all".to_owned())
        };
        if let Some(other) = blank().or_else(|| another_agents(&self.config, &new)) {
            let message = format!("reload refused; the running configuration stays in force.\n{path}: {other}: the file is another agent's, or not fully written. To make this agent that one, restart it (systemctl restart respawn-agent)");
            tracing::error!("{message}");
            return Reply::Error { message };
        }
        let pending = self.config.changes_needing_restart(&new);
        let warning = (!pending.is_empty()).then(|| {
            let warning = restart_pending(&pending);
            tracing::warn!("{warning}");
            // Until then, remote processes run as the running agent was told at its start.
            new.agent.remote_config = self.config.agent.remote_config;
            warning
        });
        add_remote(
            &mut new,
            &self.config_path,
            &self.state,
            &self.config.processes,
        );
        // Who may command the agent changes at once, in a new session: a command refused
        // under the old policy (a key not yet added, an `allow` since widened) may not be
        // captured and sent again to run under the new one.
        let operators = report::command_policy_change(&self.config, &new);
        let renew_session = self.config.adopt_command_policy(&new);
        if renew_session && self.link.is_some() {
            report::log_command_policy(&self.config);
        }
        let changes = self.supervisor.plan(&new.processes);
        // The journal keeps what a SIGHUP changed, as the reply tells `reload`.
        let commands = (operators.as_deref()).map_or(String::new(), |o| format!("; commands: {o}"));
        tracing::info!(%path, "reloaded: {}{commands}", changes.in_one_line(Tense::Doing));
        self.announce_processes(&new.processes, renew_session);
        self.configure(new.processes);
        Reply::Reloaded {
            path,
            changes: Box::new(changes),
            operators,
            warning,
        }
    }

    /// A process left the configuration and is gone: what was kept of it goes too (its
    /// output, records, manual stop and retained state), and its waiting commands are answered.
    pub(super) fn forget(&mut self, name: &str) -> Vec<Effect> {
        let children = &self.children;
        let last = (self.streams).end(name, |seq, most| children.lines_since(name, seq, most));
        if let (Some(batch), Some(link), true) = (last, &self.link, self.connected()) {
            let numbered_since = children.numbered_since(name);
            link.log_batch(&batch.message(&self.config.agent.id, numbered_since));
        }
        self.children.forget(name);
        self.state.remove_child(name);
        let saved = self.stopped.set(&self.state, name, false);
        self.desk.stop_saved(name, saved);
        // A process that left the configuration is named no more (a birth at once, as the
        // names change, not at the next heartbeat), before its state is cleared: a reader
        // never sees a birth naming a process with no state.
        self.announce_processes(&self.config.processes, false);
        if let Some(link) = &self.link {
            link.removed(name);
        }
        self.desk.on_forget(name, &self.config.agent.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, parse_remote};
    use crate::supervisor::{OomEvidence, Supervisor};
    use respawn_common::messages::ReplyStatus;
    use respawn_common::status::ExitStatus;

    const LOCAL: &str = r#"
[agent]
id = "pi"
remote_config = true

[[process]]
name = "door"
command = ["/bin/door"]
"#;

    fn local(text: &str) -> Config {
        parse(text, Path::new("/etc/respawn"), &Environment::current()).expect("valid")
    }

    fn remote(text: &str, config: &Config) -> Result<Vec<ProcessConfig>, Vec<config::Problem>> {
        parse_remote(
            text,
            Path::new("/etc/respawn"),
            &Environment::current(),
            &local_names(&config.processes),
        )
    }

    fn run(command: ConfigCommand, config: &Config, disk: OnDisk) -> Decision {
        run_as(command, config, disk, "*")
    }

    /// As an operator whose `processes` is `glob`, every process running.
    fn run_as(command: ConfigCommand, config: &Config, disk: OnDisk, pattern: &str) -> Decision {
        let supervisor = supervising(config, Rest::Running);
        let context = Context {
            cmd_id: "c1",
            config,
            parse: |text: &str| remote(text, config),
            signer: Some("carol"),
            may_touch: |name: &str| glob(pattern, name),
            plan: |processes: &[ProcessConfig]| supervisor.plan(processes),
        };
        decide(command, disk, context)
    }

    /// Where each process of a configuration is.
    #[derive(Clone, Copy)]
    enum Rest {
        Running,
        /// Its start failed: waiting to try again.
        Idle,
        StoppedByHand,
    }

    /// A supervisor of `config`'s processes, each brought to `rest` as the runtime would.
    fn supervising(config: &Config, rest: Rest) -> Supervisor {
        let now = Instant::now();
        let mut supervisor = Supervisor::new(BTreeSet::new(), 1);
        supervisor.step(Input::Configure(config.processes.clone()), now);
        for (pid, process) in (100..).zip(&config.processes) {
            let name = process.name.clone();
            let inputs = match rest {
                Rest::Idle => vec![Input::SpawnFailed {
                    name,
                    error: "no such file".into(),
                }],
                Rest::Running => vec![Input::Spawned { name, pid }],
                Rest::StoppedByHand => vec![
                    Input::Spawned {
                        name: name.clone(),
                        pid,
                    },
                    Input::Stop(name.clone()),
                    Input::Exited {
                        name,
                        pid,
                        status: ExitStatus::Code { code: 0 },
                        oom: OomEvidence::None,
                        ended: now,
                    },
                ],
            };
            for input in inputs {
                supervisor.step(input, now);
            }
        }
        supervisor
    }

    fn empty() -> OnDisk {
        OnDisk {
            current: String::new(),
            previous: None,
        }
    }

    fn apply(text: &str, base: &str, dry_run: bool) -> ConfigCommand {
        ConfigCommand::Apply {
            text: Some(text.into()),
            base: Some(base.into()),
            dry_run,
        }
    }

    fn refusal(decision: &Decision) -> (Reason, &CommandReply) {
        match decision {
            Decision::Reply(reply) if reply.status == ReplyStatus::Rejected => {
                (reply.reason.expect("a reason"), reply)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const SENSOR: &str = "[[process]]\nname = \"sensor\"\ncommand = [\"/bin/sensor\"]\n";

    #[test]
    fn a_reload_warning_names_what_waits_for_a_restart() {
        assert_eq!(
            restart_pending(&["[mqtt]"]),
            "[mqtt] changed: it takes effect when the agent restarts; until then the agent keeps the earlier settings"
        );
        assert_eq!(
            restart_pending(&["[agent] id", "[agent] state_dir", "[broker]"]),
            "[agent] id, [agent] state_dir and [broker] changed: they take effect when the agent restarts; until then the agent keeps the earlier settings"
        );
    }

    #[test]
    fn an_agent_without_remote_config_refuses_every_config_command() {
        let config = local(&LOCAL.replace("remote_config = true", ""));
        for command in [
            ConfigCommand::Get,
            ConfigCommand::Rollback {
                base: None,
                dry_run: false,
            },
            apply(SENSOR, &sha256_hex(b""), false),
        ] {
            let decision = run(command, &config, empty());
            assert_eq!(refusal(&decision).0, Reason::RemoteConfigOff);
        }
    }

    #[test]
    fn get_names_every_process_and_where_it_comes_from() {
        let mut config = local(LOCAL);
        config.processes.extend(remote(SENSOR, &config).unwrap());
        let disk = OnDisk {
            current: SENSOR.into(),
            previous: None,
        };
        let Decision::Reply(reply) = run(ConfigCommand::Get, &config, disk) else {
            panic!("get writes nothing");
        };
        let report = reply.config.expect("a report");
        assert_eq!(report.sha256, sha256_hex(SENSOR.as_bytes()));
        assert_eq!(report.text.as_deref(), Some(SENSOR));
        let names: Vec<(&str, bool)> = report
            .processes
            .iter()
            .map(|p| (p.name.as_str(), p.remote))
            .collect();
        assert_eq!(names, [("door", false), ("sensor", true)]);
    }

    #[test]
    fn an_apply_writes_the_text_keeps_the_old_one_and_says_what_changes() {
        let mut config = local(LOCAL);
        let old = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\"]\n[[process]]\nname = \"b\"\ncommand = [\"/bin/b\"]\n";
        config.processes.extend(remote(old, &config).unwrap());
        let new = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\", \"-v\"]\n[[process]]\nname = \"c\"\ncommand = [\"/bin/c\"]\n";
        let disk = OnDisk {
            current: old.into(),
            previous: None,
        };
        let decision = run(
            apply(new, &sha256_hex(old.as_bytes()), false),
            &config,
            disk,
        );
        let Decision::Write {
            text,
            processes,
            reply,
        } = decision
        else {
            panic!("expected a write, got {decision:?}");
        };
        assert_eq!(text, new);
        let names: Vec<(&str, bool)> = processes
            .iter()
            .map(|p| (p.name.as_str(), p.remote))
            .collect();
        assert_eq!(names, [("door", false), ("a", true), ("c", true)]);
        let report = reply.config.expect("a report");
        assert_eq!(report.sha256, sha256_hex(new.as_bytes()));
        let changes = report.changes.expect("changes");
        assert_eq!(changes.added, ["c"]);
        assert_eq!(changes.removed, ["b"]);
        assert_eq!(changes.changed, ["a"]);
        assert!(changes.unchanged.is_empty());
    }

    /// What a dry run of replacing the remote process `a`, at `rest`, by `new` says.
    fn changes_of_a(new: &str, rest: Rest) -> ConfigChanges {
        let mut config = local(LOCAL);
        let old = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\"]\n";
        config.processes.extend(remote(old, &config).unwrap());
        let supervisor = supervising(&config, rest);
        let context = Context {
            cmd_id: "c1",
            config: &config,
            parse: |text: &str| remote(text, &config),
            signer: Some("alice"),
            may_touch: |_: &str| true,
            plan: |processes: &[ProcessConfig]| supervisor.plan(processes),
        };
        let disk = OnDisk {
            current: old.into(),
            previous: None,
        };
        let apply = apply(new, &sha256_hex(old.as_bytes()), true);
        let Decision::Reply(reply) = decide(apply, disk, context) else {
            panic!("a dry run writes nothing");
        };
        reply.config.and_then(|c| c.changes).expect("changes")
    }

    #[test]
    fn a_process_stopped_by_hand_is_changed_and_stays_stopped() {
        let new = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\", \"-v\"]\n";
        let changes = changes_of_a(new, Rest::StoppedByHand);
        assert_eq!(changes.changed_stopped, ["a"]);
        assert!(changes.changed.is_empty(), "not restarted, so not awaited");
    }

    #[test]
    fn a_change_of_how_a_live_process_is_supervised_restarts_it_not() {
        let supervision = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\"]\nstop_timeout = \"20s\"\nstop_signal = \"INT\"\nrestart = \"on-failure\"\nmax_restarts = 3\nbackoff = { initial = \"2s\", max = \"1m\" }\n";
        assert_eq!(changes_of_a(supervision, Rest::Running).updated, ["a"]);
        // Not running, it is taken as a new process, started if it autostarts.
        assert_eq!(changes_of_a(supervision, Rest::Idle).changed_started, ["a"]);
        // What it runs, or how, restarts it.
        for run in [
            "cwd = \"/tmp\"",
            "env = { A = \"1\" }",
            "max_memory = \"100MB\"",
        ] {
            let new = format!("[[process]]\nname = \"a\"\ncommand = [\"/bin/a\"]\n{run}\n");
            assert_eq!(changes_of_a(&new, Rest::Running).changed, ["a"], "{run}");
        }
    }

    #[test]
    fn a_change_that_turns_autostart_off_starts_a_resting_process_no_more() {
        let off = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\"]\nautostart = false\n";
        let changes = changes_of_a(off, Rest::Idle);
        assert_eq!(changes.changed_left_off, ["a"]);
        assert!(changes.changed.is_empty(), "not started, so not awaited");
        // Running, it takes the change without a restart: autostart says what a start of
        // the agent does, not the process's run now (systemctl disable does not stop it).
        assert_eq!(changes_of_a(off, Rest::Running).updated, ["a"]);
        // Resting with autostart on, the change starts it at once.
        let on = "[[process]]\nname = \"a\"\ncommand = [\"/bin/a\", \"-v\"]\n";
        assert_eq!(changes_of_a(on, Rest::Idle).changed_started, ["a"]);
    }

    #[test]
    fn a_dry_run_says_what_would_change_and_writes_nothing() {
        let config = local(LOCAL);
        let decision = run(apply(SENSOR, &sha256_hex(b""), true), &config, empty());
        let Decision::Reply(reply) = decision else {
            panic!("a dry run writes nothing");
        };
        assert_eq!(reply.status, ReplyStatus::Succeeded);
        let report = reply.config.expect("a report");
        assert_eq!(
            report.sha256,
            sha256_hex(b""),
            "the hash of what is in force"
        );
        assert_eq!(report.changes.expect("changes").added, ["sensor"]);
    }

    #[test]
    fn each_bad_apply_is_refused_with_its_own_reason() {
        let config = local(LOCAL);
        let none = sha256_hex(b"");
        let big = format!("# {}\n{SENSOR}", "x".repeat(MAX_REMOTE_CONFIG));
        let cases = [
            (apply(&big, &none, false), Reason::TooLarge),
            (
                apply(SENSOR, &sha256_hex(b"other"), false),
                Reason::Conflict,
            ),
            (
                ConfigCommand::Apply {
                    text: Some(SENSOR.into()),
                    base: None,
                    dry_run: false,
                },
                Reason::Malformed,
            ),
            (
                ConfigCommand::Apply {
                    text: None,
                    base: Some(none.clone()),
                    dry_run: false,
                },
                Reason::Malformed,
            ),
            (
                apply("[agent]\nid = \"x\"\n", &none, false),
                Reason::InvalidConfig,
            ),
            (
                apply("[[operator]]\nname = \"eve\"\n", &none, false),
                Reason::InvalidConfig,
            ),
            (
                apply("[mqtt]\nurl = \"mqtt://evil\"\n", &none, false),
                Reason::InvalidConfig,
            ),
            (
                apply(
                    "[[process]]\nname = \"door\"\ncommand = [\"/bin/x\"]\n",
                    &none,
                    false,
                ),
                Reason::InvalidConfig,
            ),
            (apply("[[process]\n", &none, true), Reason::InvalidConfig),
            (
                ConfigCommand::Rollback {
                    base: None,
                    dry_run: false,
                },
                Reason::NoPrevious,
            ),
        ];
        for (command, reason) in cases {
            let described = format!("{command:?}");
            let decision = run(command, &config, empty());
            assert_eq!(refusal(&decision).0, reason, "{described}");
        }
    }

    #[test]
    fn an_operator_configures_only_the_processes_its_globs_allow() {
        let mut config = local(LOCAL);
        config.processes.extend(remote(SENSOR, &config).unwrap());
        let disk = || OnDisk {
            current: SENSOR.into(),
            previous: None,
        };
        let base = sha256_hex(SENSOR.as_bytes());
        let more = format!("{SENSOR}[[process]]\nname = \"sensor-2\"\ncommand = [\"/bin/s2\"]\n");
        let decision = run_as(apply(&more, &base, false), &config, disk(), "sensor*");
        assert!(matches!(decision, Decision::Write { .. }), "{decision:?}");
        let decision = run_as(apply("", &base, true), &config, disk(), "other*");
        let (reason, reply) = refusal(&decision);
        assert_eq!(reason, Reason::NotAllowed);
        assert_eq!(
            reply.message.as_deref(),
            Some("carol may not configure sensor (its `processes` in this agent's [[operator]] do not match it)")
        );
    }

    #[test]
    fn a_change_only_of_what_is_reported_restarts_nothing_and_idle_processes_do_not_start() {
        let mut config = local(LOCAL);
        config.processes.extend(remote(SENSOR, &config).unwrap());
        let disk = OnDisk {
            current: SENSOR.into(),
            previous: None,
        };
        let new = format!("{SENSOR}notify = \"off\"\n\n[[process]]\nname = \"idle\"\ncommand = [\"/bin/idle\"]\nautostart = false\n");
        let decision = run(
            apply(&new, &sha256_hex(SENSOR.as_bytes()), true),
            &config,
            disk,
        );
        let Decision::Reply(reply) = decision else {
            panic!("a dry run")
        };
        let changes = reply.config.and_then(|c| c.changes).expect("changes");
        assert_eq!(changes.updated, ["sensor"]);
        assert_eq!(changes.added_stopped, ["idle"]);
        assert!(changes.changed.is_empty() && changes.added.is_empty());
    }

    #[test]
    fn a_text_with_a_problem_on_every_line_is_answered_with_the_first_hundred() {
        let config = local(LOCAL);
        let text = "[[process]]\n".repeat(5000);
        let decision = run(apply(&text, &sha256_hex(b""), false), &config, empty());
        let (_, reply) = refusal(&decision);
        let problems = &reply.config.as_ref().expect("a report").problems;
        assert_eq!(problems.len(), MAX_PROBLEMS + 1);
        assert!(
            problems[MAX_PROBLEMS].message.contains("more problems"),
            "{problems:?}"
        );
        assert!(serde_json::to_vec(reply).unwrap().len() < 64 * 1024);
    }

    #[test]
    fn an_invalid_text_is_answered_with_every_problem_and_its_line() {
        let config = local(LOCAL);
        let text = "[agent]\nid = \"x\"\n\n[[process]]\nname = \"door\"\ncommand = [\"/bin/x\"]\n\n[[process]]\nname = \"ok\"\nrestart = \"sometimes\"\ncommand = [\"/bin/ok\"]\n";
        let decision = run(apply(text, &sha256_hex(b""), false), &config, empty());
        let (_, reply) = refusal(&decision);
        let problems = &reply.config.as_ref().expect("a report").problems;
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [1, 4, 10], "{problems:?}");
        assert!(problems[0]
            .message
            .contains("cannot be set over the network"));
        assert!(problems[1]
            .message
            .contains("taken by a process of the agent's local"));
    }

    #[test]
    fn a_rollback_swaps_in_the_previous_text() {
        let mut config = local(LOCAL);
        config.processes.extend(remote(SENSOR, &config).unwrap());
        let disk = OnDisk {
            current: SENSOR.into(),
            previous: Some(String::new()),
        };
        let stale = OnDisk {
            current: SENSOR.into(),
            previous: Some(String::new()),
        };
        let rollback = |base: &str| ConfigCommand::Rollback {
            base: Some(base.into()),
            dry_run: false,
        };
        let decision = run(rollback("0123"), &config, stale);
        assert_eq!(
            refusal(&decision).0,
            Reason::Conflict,
            "a base, if given, is checked"
        );
        let Decision::Write {
            text,
            processes,
            reply,
        } = run(rollback(&sha256_hex(SENSOR.as_bytes())), &config, disk)
        else {
            panic!("a rollback writes");
        };
        assert_eq!(text, "");
        assert_eq!(processes.len(), 1);
        let changes = reply.config.expect("a report").changes.expect("changes");
        assert_eq!(changes.removed, ["sensor"]);
    }
}
