//! `respawn-agent check`: the file read as the agent would read it, and notes on what is
//! valid but perhaps not meant — a process that cannot start on this machine, commands that
//! no one may send, a remote configuration the file no longer runs.

use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, Config, ContainmentMode, Environment, MqttConfig, Probe, ProcessConfig};
use crate::runtime::report::command_policy;
use crate::shell::find_program;
use crate::shell::process::account_problem;
use crate::shell::{cgroup, KILL_GRACE};
use crate::StateDir;

pub fn check(path: &Path) -> ExitCode {
    match super::load(path) {
        Ok(config) => {
            println!(
                "{}: valid; agent {:?}, {} process{}, state in {}",
                path.display(),
                config.agent.id,
                config.processes.len(),
                if config.processes.len() == 1 {
                    ""
                } else {
                    "es"
                },
                config.agent.state_dir.display()
            );
            // Valid, but perhaps not what was meant.
            if config.processes.is_empty() {
                println!("note: no [[process]]: the agent will supervise nothing");
            }
            for note in missing_here(&config) {
                println!("note: {note}");
            }
            let is_root = nix::unistd::geteuid().is_root();
            let wanted = config.agent.containment;
            let why = (wanted != ContainmentMode::ProcessGroup)
                .then(cgroup::unmanageable_here)
                .flatten();
            let containment = containment_note(wanted, is_root, why.as_deref());
            if let Some(note) = &containment {
                println!("note: {note}");
            }
            for note in memory_measured(&config, containment.is_some()) {
                println!("note: {note}");
            }
            if let Some(note) = longer_than_the_unit_waits(&config) {
                println!("note: {note}");
            }
            check_remote(&config, path);
            let mqtt = config.mqtt.as_ref().filter(|mqtt| mqtt.cert_file.is_none());
            if let Some(user) = mqtt.and_then(MqttConfig::passwordless_user) {
                println!("note: [mqtt] username {user:?} has no password: no password_file, and $RESPAWN_PASSWORD is not set here (a service needs it in its own environment)");
            }
            if let Some(note) = username_not_the_id(&config, path) {
                println!("note: {note}");
            }
            let secrets = config
                .mqtt
                .iter()
                .flat_map(|m| [&m.password_file, &m.key_file]);
            for file in secrets.flatten() {
                if respawn_common::config_file::others_can_read(file) {
                    println!(
                        "note: [mqtt]: others can read {} (chmod 600 it)",
                        file.display()
                    );
                }
            }
            if config.mqtt.is_some() || config.broker.is_some() {
                match command_policy(&config) {
                    (true, words) => println!("note: {words}"),
                    (false, words) => println!("{words}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// An MQTT username that is not the agent id, which the ACL of the docs refuses: it lets a
/// client write only under its own username (`pattern write respawn/v1/%u/#`). Not said of a
/// client certificate, whose CN may be the username instead (`use_identity_as_username`), of
/// the agent's own embedded broker, which has no ACL, nor of an id the file does not write:
/// that is the hostname of the machine `check` runs on, perhaps not the agent's.
fn username_not_the_id(config: &Config, path: &Path) -> Option<String> {
    let mqtt = config
        .mqtt
        .as_ref()
        .filter(|mqtt| mqtt.cert_file.is_none())?;
    // Its own broker by whatever name (localhost, the LAN address): the port it listens on.
    let own_port = config.broker.as_ref().map(|broker| broker.listen.port());
    let id_written = config::agent_key_as_written(path, "id").flatten().is_some();
    if own_port == Some(mqtt.url.port) || !id_written {
        return None;
    }
    let (user, id) = (mqtt.username.as_deref()?, &config.agent.id);
    (user != id).then(|| format!("[mqtt] username {user:?} is not the agent id {id:?}: the broker ACL of docs/security.md and the Raspberry Pi guide (`pattern write respawn/v1/%u/#`) lets an agent write only under its own username, and refuses all it reports; name the MQTT user after the agent, or write its ACL for it"))
}

/// How long the packaged systemd unit gives the agent to stop (its `TimeoutStopSec=`) before
/// systemd kills it and its programs.
const PACKAGED_UNIT_STOP_LIMIT: Duration = Duration::from_secs(90);

/// What a stop of the agent takes beyond its programs' own: their kill's grace, then its last
/// words to the broker and the state it saves.
const AGENT_STOP_MARGIN: Duration = Duration::from_secs(10);

/// A stop of the agent that may last longer than the packaged unit waits, said with the
/// drop-in that gives it the time.
fn longer_than_the_unit_waits(config: &Config) -> Option<String> {
    let needs = config.longest_stop() + KILL_GRACE + AGENT_STOP_MARGIN;
    (needs > PACKAGED_UNIT_STOP_LIMIT).then(|| {
        // In whole seconds, as the unit writes it.
        let seconds = |d: Duration| format!("{}s", d.as_secs_f64().ceil());
        let (needs, limit) = (seconds(needs), seconds(PACKAGED_UNIT_STOP_LIMIT));
        format!("a stop of the agent may take {needs} (the longest stop_timeout, the kill's grace and its own last words): under the packaged systemd unit (TimeoutStopSec={limit}) systemd would kill it and its programs first; give it the time with `systemctl edit respawn-agent`: [Service] TimeoutStopSec={needs}")
    })
}

/// What the agent gets instead of a cgroup per process, where it cannot manage cgroups
/// (`why`), said where it is no guess. `check` run as another user than the service, or
/// outside the cgroup systemd delegates to it, cannot tell what the agent will get: a
/// fallback to process groups is said only by root's `check`, and a `containment = "cgroup"`
/// that would keep the agent from starting is said as a condition.
fn containment_note(wanted: ContainmentMode, is_root: bool, why: Option<&str>) -> Option<String> {
    let why = why?;
    let refused = "with [agent] containment = \"cgroup\" it would not start";
    match (wanted, is_root) {
        (ContainmentMode::Cgroup, true) => Some(format!(
            "the agent cannot manage cgroups here ({why}): {refused}"
        )),
        (ContainmentMode::Cgroup, false) => Some(format!(
            "run as this user, the agent could not manage cgroups ({why}): {refused}; as root, or under systemd with Delegate=yes, it can"
        )),
        (ContainmentMode::Auto, true) => Some(format!(
            "the agent cannot manage cgroups here ({why}): it keeps each program in a process group, which a daemon that starts a session of its own leaves"
        )),
        _ => None,
    }
}

/// The processes whose `max_memory` the kernel will not enforce here: the agent measures
/// them every few seconds, and a program that grows fast passes the limit by far meanwhile.
/// `without_cgroups`: the agent would have none, as said already.
fn memory_measured(config: &Config, without_cgroups: bool) -> Vec<String> {
    let why = match (config.agent.containment, cgroup::memory_controller_here()) {
        (ContainmentMode::ProcessGroup, _) => "containment = \"process-group\"",
        // It would not start.
        (ContainmentMode::Cgroup, _) if without_cgroups => return Vec::new(),
        _ if without_cgroups => "process groups, not cgroups",
        (_, Some(true)) => return Vec::new(),
        _ if cgroup::memory_controller_on_v1() => "the memory controller is on the cgroup v1 hierarchy of this hybrid system, where cgroup v2 cannot have it: boot with systemd.unified_cgroup_hierarchy=1",
        (_, _) => "this machine's cgroups have no memory controller",
    };
    let every = crate::runtime::MEMORY_CHECK_EVERY.as_secs();
    let limited = config.processes.iter().filter(|p| p.max_memory.is_some());
    limited
        .map(|p| format!("[[process]] {:?}: max_memory is measured every {every}s here, not enforced by the kernel ({why}): a program that grows fast can pass it by far before it is restarted", p.name))
        .collect()
}

/// What `check` says of the remote configuration in the state directory, if there is one:
/// whether it runs, and what the local file now keeps of it.
fn check_remote(config: &Config, path: &Path) {
    let remote = StateDir::remote_config_path(&config.agent.state_dir);
    let Ok(text) = std::fs::read_to_string(&remote) else {
        return;
    };
    if !config.agent.remote_config {
        if !text.trim().is_empty() {
            println!(
                "note: {} is not run: [agent] remote_config is off",
                remote.display()
            );
        }
        return;
    }
    let base_dir = config::base_dir(path);
    match config::parse_remote(&text, &base_dir, &Environment::current(), &[]) {
        Ok(processes) => {
            let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
            println!(
                "remote processes ({}): {}",
                remote.display(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
            for name in names {
                if config.processes.iter().any(|p| p.name == name) {
                    println!("note: the local process {name:?} takes precedence over the remote one of that name");
                }
            }
        }
        Err(problems) => println!(
            "note: {} no longer reads; the remote processes that run go on as they are:\n{}",
            remote.display(),
            respawn_common::config_file::format_problems(&problems)
        ),
    }
}

/// What keeps processes from starting on this machine as it is now: a working directory or a
/// program that is not there. Notes, not problems: the file may be checked before the
/// software it runs is installed.
fn missing_here(config: &Config) -> Vec<String> {
    let agent_path = std::env::var_os("PATH");
    config
        .processes
        .iter()
        .flat_map(|process| {
            let start = cannot_start_here(process, agent_path.as_deref()).map(|why| {
                format!(
                    "[[process]] {:?}: {why}: it cannot start on this machine as it is",
                    process.name
                )
            });
            let probe_argv = match process.health.as_ref().map(|check| &check.probe) {
                Some(Probe::Exec { command }) => Some(command),
                _ => None,
            };
            // An exec probe that cannot run fails every time: the process is restarted as
            // unhealthy for ever.
            let probe = probe_argv.filter(|_| start.is_none()).and_then(|command| {
                missing_program(process, command, agent_path.as_deref()).map(|why| {
                    format!(
                        "[[process]] {:?}: health exec: {why}: the check cannot run on this machine as it is, and would restart the process for ever",
                        process.name
                    )
                })
            });
            let relative = [Some(&process.command), probe_argv]
                .into_iter()
                .flatten()
                .filter_map(|argv| relative_without_cwd(process, argv))
                .map(|why| format!("[[process]] {:?}: {why}", process.name));
            start.into_iter().chain(probe).chain(relative)
        })
        .collect()
}

/// A program named by a relative path in a process without `cwd`: it is looked for from the
/// agent's working directory, which `check` cannot know, and which is `/` for a system
/// service.
fn relative_without_cwd(process: &ProcessConfig, argv: &[String]) -> Option<String> {
    let program = argv.first()?;
    let relative = program.contains('/') && !program.starts_with('/');
    (relative && process.cwd.is_none()).then(|| {
        format!("{program:?} is found from the agent's working directory (/ for a system service), as there is no `cwd`: set one, or name the program by its full path")
    })
}

/// Why `process` cannot start here, if it cannot: its account does not exist, its `cwd` is not
/// a directory, or its program
/// is not found as the agent looks for it (a path with a `/` from its `cwd`, a bare name on
/// its `PATH`).
///
/// What this user may not look at is left to the agent to find: `check` may run as another
/// account than the agent, and a note must not say "missing" of what it cannot see.
fn cannot_start_here(process: &ProcessConfig, agent_path: Option<&OsStr>) -> Option<String> {
    if let Some(problem) = process.user.as_deref().and_then(account_problem) {
        return Some(problem);
    }
    if let Some(cwd) = &process.cwd {
        match std::fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {}
            _ => return Some(format!("cwd {} is not a directory", cwd.display())),
        }
    }
    missing_program(process, &process.command, agent_path)
}

/// Why the program of `argv`, run as `process`'s programs are (from its `cwd`, on its `PATH`),
/// is not found here, if it is not.
fn missing_program(
    process: &ProcessConfig,
    argv: &[String],
    agent_path: Option<&OsStr>,
) -> Option<String> {
    let program = argv.first()?;
    if program.contains('/') {
        // Without `cwd`, a relative path is the agent's working directory's, not this one's.
        let file: PathBuf = match &process.cwd {
            // As the file would be named: `/srv/app/server.sh`, not `/srv/app/./server.sh`.
            Some(cwd) => cwd.join(program).components().collect(),
            None if program.starts_with('/') => program.into(),
            None => return None,
        };
        let executable = nix::unistd::access(&file, nix::unistd::AccessFlags::X_OK).is_ok();
        return match std::fs::metadata(&file) {
            Ok(meta) if !meta.is_file() => Some(format!("{} is not a file", file.display())),
            Ok(_) if !executable => Some(format!("{} is not executable", file.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Some(format!("{} does not exist", file.display()))
            }
            _ => None,
        };
    }
    let path: Option<OsString> = match process.env.get("PATH") {
        Some(path) => Some(path.into()),
        None => agent_path.map(OsStr::to_owned),
    };
    // Another account's rights are the agent's to check when it starts the process.
    let ids = None;
    match find_program(OsStr::new(program), path.as_deref(), ids) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Some(format!(
            "{program:?} on its PATH is not executable for the account running check"
        )),
        Err(_) => Some(format!("no program {program:?} on its PATH")),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_is_said_only_where_it_is_no_guess() {
        let why = Some("no cgroup2 file system is mounted");
        let note = |wanted, is_root| containment_note(wanted, is_root, why);
        assert!(note(ContainmentMode::Cgroup, true).is_some_and(|n| n.contains("would not start")));
        assert!(note(ContainmentMode::Cgroup, false)
            .is_some_and(|n| n.starts_with("run as this user") && n.contains("would not start")));
        assert!(note(ContainmentMode::Auto, true).is_some_and(|n| n.contains("process group")));
        // Another user's check cannot tell what the service's agent gets.
        assert_eq!(note(ContainmentMode::Auto, false), None);
        assert_eq!(containment_note(ContainmentMode::Cgroup, true, None), None);
    }
}
