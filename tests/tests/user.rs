//! `user` runs a process under another account; only an agent running as root may do that.

use std::os::unix::process::CommandExt;

use respawn_common::status::ProcessState;
use respawn_tests::{runs_as_root, wait_for, TestAgent, TIMEOUT};

/// The first line `process` wrote: its identity, as its `sh -c "echo …"` says it.
fn identity_line(agent: &TestAgent, process: &str) -> String {
    wait_for("the child's identity", TIMEOUT, || {
        match agent.request(respawn_agent::control::Request::Logs {
            process: process.into(),
            lines: 1,
        }) {
            respawn_agent::control::Reply::Logs { lines, .. } => {
                lines.first().map(|l| l.text.clone())
            }
            _ => None,
        }
    })
}

#[test]
fn a_process_runs_as_the_configured_user_with_its_groups_and_home() {
    if !runs_as_root(
        "a_process_runs_as_the_configured_user_with_its_groups_and_home",
        "only root may switch users",
    ) {
        return;
    }
    let agent = TestAgent::start(
        r#"
        [[process]]
        name = "unprivileged"
        command = ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER logname=$LOGNAME; sleep 1000"]
        user = "nobody"
        "#,
    );
    agent.wait_until("unprivileged", "running", |s| {
        s.state == ProcessState::Running
    });
    let line = identity_line(&agent, "unprivileged");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let name = std::ffi::CString::new("nobody").unwrap();
    let groups: Vec<String> = nix::unistd::getgrouplist(&name, nobody.gid)
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(
        line,
        format!(
            "uid={} gid={} groups={} home={} user=nobody logname=nobody",
            nobody.uid,
            nobody.gid,
            groups.join(" "),
            nobody.dir.display()
        ),
        "not root's groups, nobody's"
    );
}

#[test]
fn an_agent_that_is_not_root_refuses_a_user_switch() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        // Another account than the agent's own (which it may name).
        "[[process]]\nname = \"x\"\ncommand = [\"id\"]\nuser = \"root\"\n",
    )
    .unwrap();
    // As nobody, so that the refusal is tested wherever the tests run.
    let output = check_not_as_root(dir.path(), &config);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("needs the agent to run as root"),
        "{output:?}"
    );
}

/// `respawn-agent check` of `config` (in `dir`) as nobody when the tests run as root, else as
/// the user they run as.
fn check_not_as_root(dir: &std::path::Path, config: &std::path::Path) -> std::process::Output {
    let mut check = std::process::Command::new(respawn_tests::agent_binary());
    check.arg("check").arg("--config").arg(config);
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(dir, mode).unwrap();
        std::fs::set_permissions(config, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        check.uid(nobody.uid.as_raw()).gid(nobody.gid.as_raw());
    }
    check.output().unwrap()
}

/// `check`, run as a user that cannot manage cgroups, says that an agent run as that user
/// would not start with `containment = "cgroup"`; of the default, which falls back to process
/// groups, it says nothing: the service may run as root.
#[test]
fn check_says_when_the_agent_could_not_manage_cgroups() {
    if !runs_as_root(
        "check_says_when_the_agent_could_not_manage_cgroups",
        "check is run as nobody, who has no cgroup delegated",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let state = dir.path().join("state");
    for (containment, note) in [
        (
            "cgroup",
            Some("note: run as this user, the agent could not manage cgroups (its cgroup"),
        ),
        ("auto", None),
    ] {
        let text = format!(
            "[agent]\ncontainment = \"{containment}\"\nstate_dir = \"{}\"\n\n[[process]]\nname = \"x\"\ncommand = [\"sleep\", \"1\"]\nmax_memory = \"100MB\"\n",
            state.display()
        );
        std::fs::write(&config, text).unwrap();
        let output = check_not_as_root(dir.path(), &config);
        let said = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let said_cgroups: Vec<&str> = said.lines().filter(|l| l.contains("cgroups")).collect();
        match note {
            Some(note) => assert!(
                said_cgroups.len() == 1
                    && said_cgroups[0].starts_with(note)
                    && said_cgroups[0]
                        .contains("with [agent] containment = \"cgroup\" it would not start"),
                "{containment}: {said}"
            ),
            None => assert!(
                said_cgroups.iter().all(|l| l.contains("max_memory")),
                "{containment}: {said}"
            ),
        }
    }
}

#[test]
fn an_agent_that_is_not_root_may_name_its_own_account() {
    if !runs_as_root(
        "an_agent_that_is_not_root_may_name_its_own_account",
        "the agent is started as nobody",
    ) {
        return;
    }
    let agent = TestAgent::start_as_account(
        "nobody",
        r#"
        [[process]]
        name = "own"
        command = ["sh", "-c", "echo uid=$(id -u) user=$USER; sleep 1000"]
        user = "nobody"
        "#,
    );
    agent.wait_until("own", "running", |s| s.state == ProcessState::Running);
    let line = identity_line(&agent, "own");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(line, format!("uid={} user=nobody", nobody.uid));
}

#[test]
fn check_says_nothing_of_what_its_account_may_not_look_at() {
    let test = "check_says_nothing_of_what_its_account_may_not_look_at";
    if !runs_as_root(
        test,
        "the check runs as nobody, next to root's private files",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mode = |m| std::os::unix::fs::PermissionsExt::from_mode(m);
    std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
    // Root's: nobody cannot tell what is inside.
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let app = private.join("app");
    std::fs::create_dir(&app).unwrap();
    let server = private.join("server");
    std::fs::write(&server, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&server, mode(0o755)).unwrap();
    std::fs::set_permissions(&private, mode(0o700)).unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "[[process]]\nname = \"private-cwd\"\ncommand = [\"sh\"]\ncwd = \"{app}\"\n\
         [[process]]\nname = \"private-program\"\ncommand = [\"{server}\"]\n\
         [[process]]\nname = \"moved\"\ncommand = [\"sh\"]\ncwd = \"/no/such/dir\"\n",
        app = app.display(),
        server = server.display(),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, mode(0o644)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let output = std::process::Command::new(respawn_tests::agent_binary())
        .arg("check")
        .arg(&config)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let notes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(
        notes,
        ["note: [[process]] \"moved\": cwd /no/such/dir is not a directory: it cannot start on this machine as it is"],
        "{output:?}"
    );
}

/// Found by a new-user run: a process whose account does not exist (the Pi guide's
/// `user = "pi"` on an image without `pi`) refused the whole file, and nothing ran. It now
/// keeps only its own process from starting: `check` notes it, the others run.
#[test]
fn an_account_that_does_not_exist_keeps_only_its_process_from_starting() {
    if !runs_as_root(
        "an_account_that_does_not_exist_keeps_only_its_process_from_starting",
        "switching users",
    ) {
        return;
    }
    let processes = "[[process]]\nname = \"door\"\ncommand = [\"sleep\", \"1000\"]\n\
        [[process]]\nname = \"ghost\"\ncommand = [\"sleep\", \"1000\"]\nuser = \"nobody-here\"\n";
    let agent = TestAgent::start(processes);
    agent.wait_running("door");
    agent.wait_until("ghost", "refused a start", |s| {
        s.state == ProcessState::SpawnFailed
            && s.spawn_error.as_deref() == Some("no such user \"nobody-here\"")
    });
    let output = respawn_tests::check(&agent.config_path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.contains("note: [[process]] \"ghost\": no such user \"nobody-here\": it cannot start on this machine as it is"),
        "{output:?}"
    );
}
