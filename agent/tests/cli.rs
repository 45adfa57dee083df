//! The `respawn-agent` command line without a running agent: `check`, help, and clear errors.

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_respawn-agent"))
        .args(args)
        .env_remove("RESPAWN_CONFIG")
        .output()
        .expect("respawn-agent runs")
}

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn check_reports_every_problem_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        r#"[agent]
id = "Door Pi!"

[[process]]
name = "doorbot"
command = []
stop_timeout = "soon"
restrat = "always"

[[process]]
name = "doorbot"
command = ["ruby", "server.rb"]
"#,
    );
    let out = agent(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 problems",
        "line 2: [agent] id \"Door Pi!\" is not a valid agent id",
        "line 6: [[process]] \"doorbot\": `command` must not be empty",
        "line 7: [[process]] \"doorbot\": `stop_timeout`: bad duration \"soon\"",
        "line 8: [[process]] \"doorbot\": unknown key `restrat` (did you mean `restart`?)",
        "line 10: [[process]] \"doorbot\": duplicate name (first defined on line 4)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/agent.toml");
    let out = agent(&["check", "--config", example]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid; agent \"example\", 3 processes"),
        "{stdout}"
    );
    // Named as it is, not as `examples/../target`.
    let workspace = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
    let state_dir = workspace.join("target/example-state");
    let named = format!("state in {}\n", state_dir.display());
    assert!(stdout.contains(&named), "{named:?} in {stdout}");
    assert!(
        stdout.contains("note: allow_unsigned_commands = true"),
        "{stdout}"
    );
}

#[test]
fn check_says_when_a_valid_file_takes_no_commands_or_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n");
    let out = agent(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("note: no [[process]]"), "{stdout}");
    assert!(
        stdout.contains("note: no [[operator]]: the agent takes no commands over MQTT"),
        "{stdout}"
    );
}

#[test]
fn check_takes_the_file_as_its_argument_and_notes_what_cannot_start_here() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let path = write(
        &dir,
        &format!(
            r#"
[[process]]
name = "fine"
command = ["sh", "-c", "true"]

[[process]]
name = "typo"
command = ["slepe", "10"]

[[process]]
name = "moved"
command = ["sh"]
cwd = "/no/such/dir"

[[process]]
name = "script"
command = ["./server.sh"]
cwd = "{dir}"

[[process]]
name = "gone"
command = ["./gone.sh"]
cwd = "{dir}"

[[process]]
name = "own-path"
command = ["sh"]
env = {{ PATH = "/no/such/bin" }}

[[process]]
name = "checked"
command = ["sh"]
health = {{ exec = ["check-it-is-fine", "--quick"] }}

[[process]]
name = "relative"
command = ["./here.sh"]
health = {{ exec = ["bin/probe"] }}
"#,
            dir = dir.path().display()
        ),
    );
    let out = agent(&["check", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "notes, not problems: {out:?}");
    assert!(stdout.contains("valid; agent"), "{stdout}");
    let notes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("note: [[process]]"))
        .collect();
    let gone = dir.path().join("gone.sh");
    assert_eq!(
        notes,
        [
            "note: [[process]] \"typo\": no program \"slepe\" on its PATH: it cannot start on this machine as it is".to_owned(),
            "note: [[process]] \"moved\": cwd /no/such/dir is not a directory: it cannot start on this machine as it is".to_owned(),
            // Not executable.
            format!("note: [[process]] \"script\": {} is not executable: it cannot start on this machine as it is", dir.path().join("server.sh").display()),
            format!("note: [[process]] \"gone\": {} does not exist: it cannot start on this machine as it is", gone.display()),
            "note: [[process]] \"own-path\": no program \"sh\" on its PATH: it cannot start on this machine as it is".to_owned(),
            "note: [[process]] \"checked\": health exec: no program \"check-it-is-fine\" on its PATH: the check cannot run on this machine as it is, and would restart the process for ever".to_owned(),
            // Found by a new-user run: said nothing, and the agent could not start it.
            "note: [[process]] \"relative\": \"./here.sh\" is found from the agent's working directory (/ for a system service), as there is no `cwd`: set one, or name the program by its full path".to_owned(),
            "note: [[process]] \"relative\": \"bin/probe\" is found from the agent's working directory (/ for a system service), as there is no `cwd`: set one, or name the program by its full path".to_owned(),
        ]
    );
    // Made executable, the script is found.
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = agent(&["check", &path]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"script\""),
        "{out:?}"
    );
}

#[test]
fn check_names_the_remote_processes_and_what_the_local_file_takes_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let local = "[[process]]\nname = \"door\"\ncommand = [\"true\"]\n";
    let path = write(
        &dir,
        &format!("[agent]\nstate_dir = \"state\"\nremote_config = true\n\n{local}"),
    );
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let remote = format!("{local}[[process]]\nname = \"sensor\"\ncommand = [\"true\"]\n");
    std::fs::write(dir.path().join("state/remote.toml"), remote).unwrap();
    let out = agent(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("remote processes ("), "{stdout}");
    assert!(stdout.contains("): door, sensor"), "{stdout}");
    assert!(
        stdout.contains("the local process \"door\" takes precedence"),
        "{stdout}"
    );
    let off = write(&dir, &format!("[agent]\nstate_dir = \"state\"\n\n{local}"));
    let out = agent(&["check", "--config", &off]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("is not run: [agent] remote_config is off"),
        "{stdout}"
    );
}

#[test]
fn the_config_path_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[[process]]\nname = \"a\"\ncommand = [\"true\"]\n");
    let out = Command::new(env!("CARGO_BIN_EXE_respawn-agent"))
        .arg("check")
        .env("RESPAWN_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = agent(&["check", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/agent.toml: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn talking_to_an_agent_that_is_not_running_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[agent]\nstate_dir = \"state\"\n");
    let out = agent(&["status", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the agent at"), "{stderr}");
    assert!(stderr.contains("is respawn-agent running"), "{stderr}");
}

#[test]
fn running_with_an_invalid_config_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[[process]]\nname = \"x\"\n");
    let out = agent(&["--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing `command`"));
}

#[test]
fn help_shows_examples() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("respawn-agent restart doorbot"));
}

#[test]
fn a_name_no_process_can_have_and_a_zero_wait_are_refused_before_asking_the_agent() {
    let long = "x".repeat(100_000);
    for args in [
        vec!["start", long.as_str()],
        vec!["stop", "web/../x"],
        vec!["restart", "web", "--timeout", "0s"],
    ] {
        let out = agent(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A mistake on the command line, not the agent's refusal (2).
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a process name") || stderr.contains("must be longer than 0s"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("no answer from the agent"), "{stderr}");
    }
}

#[test]
fn a_command_whose_output_is_closed_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/agent.toml");
    // As `respawn-agent check | head -0`: nobody reads what it prints.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_respawn-agent"))
        .args(["check", "--config", example])
        .env_remove("RESPAWN_CONFIG")
        .stdout(writer)
        .output()
        .expect("respawn-agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {out:?}");
}
