//! `respawnctl config get|diff|apply|rollback`: an agent's remote processes, read and changed
//! with signed commands. `get` writes the file's hash into its first line, so that an apply of
//! an edited copy is refused if someone changed the agent's file since; every change is
//! checked by the agent first (a dry run against that hash), so that the diff and the changes
//! shown are those that will happen.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use respawn_common::config_file::Problem;
use respawn_common::messages::{
    CommandName, CommandReply, ConfigReport, ConfiguredProcess, Reason, MAX_REMOTE_CONFIG,
};
use respawn_common::signing::short_sha256;
use respawn_common::signing::SigningKey;

use super::{exit_code, print, say_missing_agent, signing_key};
use crate::cli::{ConfigAction, ConfigTarget};
use crate::fleet::{Fleet, Target};
use crate::output::{self, Printable, Style};
use crate::reading::fleet_snapshot;
use crate::request::send_one;
use crate::request::{self, Args, Job, Outcome, Request};
use crate::session::Session;
use crate::settings::Settings;

/// How the first line of what `config get` prints starts; the hash follows `sha256 `.
const HEADER: &str = "# respawn: remote.toml of ";

/// The first line of what `config get` prints: whose remote configuration, and which
/// version of it.
fn header(agent: &str, sha256: &str) -> String {
    format!("{HEADER}{agent}, sha256 {sha256} (config apply refuses this file if the agent's changed since)\n")
}

/// A command may be at most this large once the text is escaped twice (a JSON string in the
/// body, the body a JSON string in the envelope); the agent takes messages of 256 KiB.
const MAX_ENCODED: usize = 240 * 1024;

pub async fn run(
    settings: &Settings,
    action: ConfigAction,
    style: Style,
) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    let apply = |yes: bool, dry_run: bool| match (dry_run, yes, interactive) {
        (true, _, _) => Apply::Never,
        (false, true, _) => Apply::Yes,
        (false, false, true) => Apply::Ask,
        (false, false, false) => Apply::Unasked,
    };
    let (doing, changes) = (action.name(), action.changes());
    let (target, file, what) = match action {
        ConfigAction::Get { agent, json } => (agent, None, What::Get { json }),
        ConfigAction::Diff { agent, file } => (agent, Some(file), What::Apply(Apply::Never)),
        ConfigAction::Apply {
            agent,
            file,
            yes,
            dry_run,
        } => (agent, Some(file), What::Apply(apply(yes, dry_run))),
        ConfigAction::Rollback {
            agent,
            yes,
            dry_run,
        } => (agent, None, What::Rollback(apply(yes, dry_run))),
    };
    // The file is read before anything connects: a mistake costs no round trip.
    let file = match file.map(File::read).transpose() {
        Ok(file) => file,
        // Refused as the agent would refuse it (`too_large`): 2, not a usage error.
        Err(e) if e.is::<TooLarge>() => {
            eprintln!("respawnctl: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e),
    };
    let key = signing_key(settings)?;
    let (session, fleet) = fleet_snapshot(settings, &[Target::agent(&target.id)]).await?;
    let mut talk = Talk {
        settings,
        key,
        session,
        fleet,
        target,
        style,
        doing,
        changes,
    };
    let code = match (what, file) {
        (What::Get { json }, _) => talk.get(json).await,
        (What::Apply(apply), Some(file)) => talk.apply(file, apply).await,
        (What::Rollback(apply), _) => talk.rollback(apply).await,
        (What::Apply(_), None) => Ok(ExitCode::FAILURE),
    };
    talk.session.close().await;
    code
}

/// What a `config` command does once connected.
enum What {
    Get { json: bool },
    Apply(Apply),
    Rollback(Apply),
}

/// Whether a checked change is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Apply {
    Never,
    Ask,
    /// Neither --yes nor a terminal to ask on: a script or a pipe that did not say yes gets
    /// the change shown and not made.
    Unasked,
    Yes,
}

/// A file larger than an agent takes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TooLarge(String);

/// A remote configuration file as the operator has it.
struct File {
    path: PathBuf,
    /// The text for the agent, without the header `config get` wrote.
    text: String,
    /// The hash of the agent's file this one was fetched from, if it says.
    base: Option<String>,
    /// The agent it was fetched from, if it says.
    from: Option<String>,
    /// Lines before `text` in the file (the header), to place the agent's problems.
    offset: usize,
    /// The header as written, with its newline; empty without one.
    header: String,
}

impl File {
    fn read(path: PathBuf) -> anyhow::Result<Self> {
        let whole = respawn_common::config_file::read_text(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (header, text) = match whole.split_once('\n') {
            Some((first, rest)) if first.starts_with(HEADER) => {
                (format!("{first}\n"), rest.to_owned())
            }
            _ => (String::new(), whole),
        };
        let base = header
            .split_once("sha256 ")
            .and_then(|(_, after)| after.get(..64))
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        let from = (header.get(HEADER.len()..))
            .and_then(|named| named.split_once(", sha256 "))
            .map(|(agent, _)| agent.to_owned());
        let offset = usize::from(!header.is_empty());
        if text.len() > MAX_REMOTE_CONFIG {
            return Err(TooLarge(format!(
                "{} is {} bytes; an agent takes at most {MAX_REMOTE_CONFIG}",
                path.display(),
                text.len()
            ))
            .into());
        }
        let once = serde_json::to_string(&text)?;
        let encoded = serde_json::to_string(&once)?.len();
        if encoded > MAX_ENCODED {
            return Err(TooLarge(format!("{} takes {encoded} bytes in a command (quotes, backslashes and control characters are escaped twice); a command carries at most {MAX_ENCODED}", path.display())).into());
        }
        Ok(Self {
            path,
            text,
            base,
            from,
            offset,
            header,
        })
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// Once applied, the file's header names the version it made, as `config get` would:
    /// the next edit of it applies without a new `config get`. Only while the file is as it
    /// was read (an editor may have written it meanwhile).
    fn rebase(&self, agent: &str, sha256: &str) {
        let as_read = format!("{}{}", self.header, self.text);
        // In the file's own line ending.
        let line = match self.header.ends_with("\r\n") {
            true => header(agent, sha256).replace('\n', "\r\n"),
            false => header(agent, sha256),
        };
        let now = respawn_common::config_file::read_text(&self.path);
        let written = match now {
            Ok(now) if now == as_read => respawn_common::file::replace_keeping(
                &self.path,
                format!("{line}{}", self.text).as_bytes(),
            ),
            _ => Err(std::io::Error::other("it changed since it was read")),
        };
        match written {
            Ok(()) => eprintln!(
                "respawnctl: {}'s first line now names {agent}'s remote.toml {}: edit it and apply it again",
                self.name(),
                short_sha256(sha256)
            ),
            // A `config get` into the file would overwrite what changed in it.
            Err(e) => eprint!(
                "respawnctl: {}'s first line still names the version it was fetched as ({e}); to apply it again, make it:\n{line}",
                self.name()
            ),
        }
    }

    /// The agent's problems, placed on the lines of this file.
    fn problems(&self, problems: &[Problem]) -> Vec<Problem> {
        problems.iter().map(|p| p.shifted(self.offset)).collect()
    }
}

/// One conversation with one agent.
struct Talk<'a> {
    settings: &'a Settings,
    /// Read once, before connecting: `apply` sends up to three commands.
    key: Option<SigningKey>,
    session: Session,
    fleet: Fleet,
    target: ConfigTarget,
    style: Style,
    /// The command, as messages name it.
    doing: &'static str,
    /// Whether the command may change the agent's configuration (a diff never does).
    changes: bool,
}

impl Talk<'_> {
    /// Sends one command and waits for its outcome; `Err` carries the exit code of an
    /// outcome that was printed as a failure (the agent's problems placed on `file`).
    async fn send(
        &mut self,
        command: CommandName,
        args: Args,
        file: Option<&File>,
    ) -> anyhow::Result<Result<ConfigReport, ExitCode>> {
        let agent = self.target.id.as_str();
        let Some(known) = self.fleet.agent(agent) else {
            say_missing_agent(&mut self.session, &self.settings.topics, agent).await;
            return Ok(Err(ExitCode::from(2)));
        };
        let job = Job::new(agent, None, known.session());
        let outcome = match request::not_sent_to(Some(known.liveness())) {
            Some(not_sent) => not_sent,
            None => {
                let requester = request::requester();
                let request = Request {
                    topics: &self.settings.topics,
                    requester: &requester,
                    command,
                    args,
                    key: self.key.as_ref(),
                    timeout: self.target.timeout,
                };
                let topics = &self.settings.topics;
                send_one(&mut self.session, topics, &request, job.clone(), |_| {}).await?
            }
        };
        let timeout = self.target.timeout;
        match outcome {
            Outcome::Succeeded(CommandReply {
                config: Some(report),
                ..
            }) => Ok(Ok(report)),
            Outcome::Rejected(mut reply) if reply.reason == Some(Reason::InvalidConfig) => {
                let report = reply.config.take().unwrap_or_default();
                let rejected = Outcome::Rejected(reply);
                let line = output::outcome_line(command, &job, &rejected, timeout, self.style);
                eprintln!("{line}");
                let (name, problems) = match file {
                    Some(file) => (file.name(), file.problems(&report.problems)),
                    None => ("remote.prev.toml".to_owned(), report.problems),
                };
                eprint!("{}", output::config_problems(&problems, &name));
                Ok(Err(ExitCode::from(2)))
            }
            other => {
                let line = output::outcome_line(command, &job, &other, timeout, self.style);
                eprintln!("{line}");
                Ok(Err(exit_code(&[&other], false)))
            }
        }
    }

    async fn get(&mut self, json: bool) -> anyhow::Result<ExitCode> {
        let report = match self
            .send(CommandName::ConfigGet, Args::default(), None)
            .await?
        {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        if json {
            print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
            return Ok(ExitCode::SUCCESS);
        }
        print(&format!(
            "{}{}",
            header(&self.target.id, &report.sha256),
            report.text.as_deref().unwrap_or_default()
        ));
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "# the processes {} runs:", self.target.id);
        for process in &report.processes {
            let from = if process.remote { "remote" } else { "local" };
            let _ = writeln!(err, "#   {from:<6} {}", Printable(&process.name));
        }
        let text = report.text.as_deref().unwrap_or_default();
        for name in shadowed(text, &report.processes) {
            let name = Printable(name);
            let _ = writeln!(err, "# {name} in this file does not run: a local process of {} has its name (take it out of the file, or the next apply is refused)", self.target.id);
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The agent's remote configuration as `doing` (a command that changes it) reads it
    /// first; a failure says why a change was answered by a `config_get`.
    async fn current(&mut self) -> anyhow::Result<Result<ConfigReport, ExitCode>> {
        let read = self.send(CommandName::ConfigGet, Args::default(), None);
        let current = read.await?;
        if current.is_err() {
            let unchanged = match self.changes {
                true => "; nothing was changed",
                false => "",
            };
            eprintln!(
                "respawnctl: {} reads {}'s remote configuration first (config_get){unchanged}",
                self.doing, self.target.id
            );
        }
        Ok(current)
    }

    /// Shows how `file` differs from the agent's remote configuration and what it would do,
    /// then applies it if `apply` says so.
    async fn apply(&mut self, file: File, apply: Apply) -> anyhow::Result<ExitCode> {
        let current = match self.current().await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        let agent = self.target.id.clone();
        let remote = format!("{agent}:remote.toml");
        let diff = output::config_diff(
            (current.text.as_deref().unwrap_or_default(), &remote),
            (&file.text, &file.name(), file.offset),
            self.style,
        );
        // What is in force already needs nothing, whatever the file was fetched as.
        if diff.is_empty() {
            eprintln!("{} is what {agent} runs remotely already", file.name());
            return Ok(ExitCode::SUCCESS);
        }
        // Fetched from another agent: a copy to start from, whose base says nothing here.
        let base = match file.from.as_deref().filter(|from| *from != agent) {
            Some(from) => {
                eprintln!(
                    "respawnctl: {} was fetched from {from}; applying it to {agent} in place of {agent}'s own (the diff below)",
                    file.name()
                );
                None
            }
            None => file.base.as_deref(),
        };
        if let Some(base) = base.filter(|b| *b != current.sha256) {
            print(&diff);
            eprintln!(
                "respawnctl: {agent}'s remote configuration changed since {} was fetched ({} → {}); the diff above is against the current one. Fetch it again with `respawnctl config get {agent}` and redo your change there",
                file.name(),
                short_sha256(base),
                short_sha256(&current.sha256)
            );
            return Ok(ExitCode::from(2));
        }
        print(&diff);
        let base = base.map_or(current.sha256, str::to_owned);
        let args = |dry_run| Args {
            text: Some(file.text.clone()),
            base: Some(base.clone()),
            dry_run,
            ..Args::default()
        };
        let command = CommandName::ConfigApply;
        let checked = match self.send(command, args(true), Some(&file)).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        let what = format!("applying {}", file.name());
        if !self.confirm(&what, &checked, apply) {
            return Ok(decline(apply));
        }
        match self.send(command, args(false), Some(&file)).await? {
            Ok(applied) => {
                let code = self.print_done("applied", &applied);
                if file.base.is_some() && file.from.as_deref() == Some(agent.as_str()) {
                    file.rebase(&agent, &applied.sha256);
                }
                Ok(code)
            }
            Err(code) => Ok(code),
        }
    }

    /// Goes back to the previous remote configuration, having shown what that does.
    async fn rollback(&mut self, apply: Apply) -> anyhow::Result<ExitCode> {
        let current = match self.current().await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        let args = |dry_run| Args {
            base: Some(current.sha256.clone()),
            dry_run,
            ..Args::default()
        };
        let command = CommandName::ConfigRollback;
        let checked = match self.send(command, args(true), None).await? {
            Ok(report) => report,
            Err(code) => return Ok(code),
        };
        // An agent older than the diff of a rollback sends no text: then there is none.
        if let Some(previous) = &checked.text {
            let agent = &self.target.id;
            let (current_label, previous_label) = (
                format!("{agent}:remote.toml"),
                format!("{agent}:remote.prev.toml"),
            );
            print(&output::config_diff(
                (current.text.as_deref().unwrap_or_default(), &current_label),
                (previous, &previous_label, 0),
                self.style,
            ));
        }
        if !self.confirm(
            "rolling back to the previous remote configuration",
            &checked,
            apply,
        ) {
            return Ok(decline(apply));
        }
        match self.send(command, args(false), None).await? {
            Ok(report) => Ok(self.print_done("rolled back", &report)),
            Err(code) => Ok(code),
        }
    }

    /// Shows what a checked change would do; whether to go on.
    fn confirm(&self, what: &str, checked: &ConfigReport, apply: Apply) -> bool {
        let agent = &self.target.id;
        match apply {
            Apply::Never => {
                print(&format!(
                    "{agent}: {what} would do this (nothing was changed):\n"
                ));
                print(&output::config_changes(checked, false, self.style));
                false
            }
            Apply::Ask => {
                print(&format!("{agent}: {what}\n"));
                print(&output::config_changes(checked, false, self.style));
                ask(&format!("Go ahead on {agent}? [y/N] "))
            }
            Apply::Unasked => {
                print(&format!("{agent}: {what}\n"));
                print(&output::config_changes(checked, false, self.style));
                eprintln!("respawnctl: no terminal to ask on: give --yes to make the change without asking");
                false
            }
            Apply::Yes => true,
        }
    }

    /// Shows what a change did; its exit code: 2 if a process it was to start did not.
    fn print_done(&self, what: &str, report: &ConfigReport) -> ExitCode {
        let (agent, sha) = (&self.target.id, short_sha256(&report.sha256));
        print(&format!("{agent}: {what}, remote.toml now {sha}\n"));
        print(&output::config_changes(report, true, self.style));
        if report.not_started.is_empty() {
            return ExitCode::SUCCESS;
        }
        let names: Vec<&str> = report.not_started.keys().map(String::as_str).collect();
        eprintln!(
            "respawnctl: the change is made, but {} did not start (why is above; `respawnctl status {agent}` shows how it is now)",
            output::Printable(names.join(", ")),
        );
        ExitCode::from(2)
    }
}

/// The exit code when a checked change is not made: 0 for a dry run, 2 when the question
/// was answered no or could not be asked.
fn decline(apply: Apply) -> ExitCode {
    match apply {
        Apply::Never => ExitCode::SUCCESS,
        _ => {
            eprintln!("nothing changed");
            ExitCode::from(2)
        }
    }
}

/// Asks on the terminal; anything but yes is no.
fn ask(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// The processes of a remote file that a local process of the same name keeps from running.
fn shadowed(text: &str, running: &[ConfiguredProcess]) -> Vec<String> {
    let Ok(file) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let tables = file.get("process").and_then(toml::Value::as_array);
    let names = tables
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("name")?.as_str());
    let local = |name: &str| running.iter().any(|p| p.name == name && !p.remote);
    names.filter(|n| local(n)).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> File {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garage.toml");
        std::fs::write(&path, text).unwrap();
        File::read(path).unwrap()
    }

    #[test]
    fn an_applied_file_is_rebased_in_its_own_line_ending_unless_it_changed_since_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garage.toml");
        let (old, new) = ("ab".repeat(32), "cd".repeat(32));
        let body = "[[process]]\r\nname = \"a\"\r\ncommand = [\"a\"]\r\n";
        std::fs::write(&path, format!("{HEADER}pi, sha256 {old} (…)\r\n{body}")).unwrap();
        File::read(path.clone()).unwrap().rebase("pi", &new);
        let rebased = std::fs::read_to_string(&path).unwrap();
        let line = header("pi", &new).replace('\n', "\r\n");
        assert_eq!(rebased, format!("{line}{body}"));
        // Written since it was read: left as it is.
        let got = File::read(path.clone()).unwrap();
        std::fs::write(&path, "# mine now\n").unwrap();
        got.rebase("pi", &old);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine now\n");
    }

    #[test]
    fn the_header_of_a_got_file_carries_its_base_and_is_not_sent() {
        let sha = "ab".repeat(32);
        let body = "[[process]]\nname = \"a\"\ncommand = [\"a\"]\n";
        let got = file(&format!("{HEADER}pi, sha256 {sha} (…)\n{body}"));
        assert_eq!(got.base.as_deref(), Some(sha.as_str()));
        assert_eq!(got.from.as_deref(), Some("pi"));
        assert_eq!(got.text, body);
        let problem = Problem {
            line: 2,
            message: "m".into(),
        };
        assert_eq!(
            got.problems(&[problem])[0].line,
            3,
            "placed on the file's lines"
        );
        let written = file(body);
        assert_eq!((written.base, written.text.as_str()), (None, body));
        assert_eq!(written.from, None);
    }

    #[test]
    fn a_remote_process_a_local_one_keeps_from_running_is_named() {
        let running = |name: &str, remote| ConfiguredProcess {
            name: name.into(),
            remote,
        };
        let text = "[[process]]\nname = \"door\"\ncommand = [\"a\"]\n\n[[process]]\nname = \"cam\"\ncommand = [\"b\"]\n";
        let running = [running("door", false), running("cam", true)];
        assert_eq!(shadowed(text, &running), ["door"]);
        assert!(shadowed("not [toml", &running).is_empty());
    }

    #[test]
    fn a_file_too_large_for_a_command_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, "#".repeat(MAX_REMOTE_CONFIG + 1)).unwrap();
        let error = File::read(path.clone()).err().expect("too large");
        assert!(error.is::<TooLarge>(), "exits 2, as the agent's too_large");
        let error = error.to_string();
        assert!(error.contains("at most 65536"), "{error}");
        std::fs::write(&path, "\"".repeat(MAX_REMOTE_CONFIG - 1)).unwrap();
        let error = File::read(path).err().expect("escapes too large");
        assert!(error.is::<TooLarge>());
        let error = error.to_string();
        assert!(error.contains("escaped twice"), "{error}");
    }
}
