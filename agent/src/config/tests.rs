//! The agent's configuration as users write it: every key, every default, every problem.

use super::*;

#[test]
fn relative_paths_climb_out_of_the_files_directory_in_their_names() {
    let config = parse_ok(
        r#"
        [agent]
        state_dir = "./../var/./state"
        [mqtt]
        url = "mqtts://b"
        ca_file = "../../ca.pem"
        [[process]]
        name = "doorbot"
        command = ["ruby"]
        cwd = "/srv/../door"
        "#,
    );
    // As written past the start: a `..` there may follow a symbolic link.
    assert_eq!(config.agent.state_dir, Path::new("/etc/var/./state"));
    let ca_file = config.mqtt.and_then(|m| m.ca_file);
    assert_eq!(ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(
        config.processes[0].cwd.as_deref(),
        Some(Path::new("/srv/../door"))
    );
    // No further up than the root.
    assert_eq!(
        resolve(Path::new("/"), Path::new("../../x")),
        Path::new("/x")
    );
    assert_eq!(
        resolve(Path::new("/a/b"), Path::new("c/../d")),
        Path::new("/a/b/c/../d")
    );
}

fn env() -> Environment {
    Environment {
        hostname: "Door-Pi.local".into(),
        is_root: false,
        own_account: Some("door".into()),
        default_state_dir: PathBuf::from("/var/lib/respawn"),
        password: None,
        read_file: |path| match path.to_str() {
            Some("/etc/respawn/mqtt-password") => Ok("s3cret\n".into()),
            Some("/etc/respawn/empty") => Ok("\n".into()),
            // Certificates and keys are there, except what is called missing.
            Some(p) if (p.ends_with(".pem") || p.ends_with(".key")) && !p.contains("missing") => {
                Ok("PEM".into())
            }
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        },
        // As `mqtt::tls_problems` finds them in files of these names.
        tls_check: |files| {
            use respawn_common::mqtt::TlsError;
            let named = [
                ("ca_file", &files.ca_file),
                ("cert_file", &files.cert_file),
                ("key_file", &files.key_file),
            ];
            let mut problems = Vec::new();
            for (key, path) in named.into_iter().filter_map(|(k, p)| Some((k, p.clone()?))) {
                if path.to_string_lossy().contains("missing") {
                    let gone = TlsError::Read(path, "entity not found".into());
                    problems.push((Some(key), gone));
                } else if path.ends_with("bad-ca.pem") {
                    problems.push((Some(key), TlsError::NoCertificate(path)));
                }
            }
            if files
                .key_file
                .as_ref()
                .is_some_and(|k| k.ends_with("other.key"))
            {
                let crossed = TlsError::ClientAuth("the key is another's".into());
                problems.push((Some("key_file"), crossed));
            }
            problems
        },
    }
}

fn root_env() -> Environment {
    Environment {
        is_root: true,
        ..env()
    }
}

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new("/etc/respawn"), &env()) {
        Ok(c) => c,
        Err(problems) => panic!("unexpected problems: {problems:#?}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    problems_in(text, &env())
}

fn problems_in(text: &str, env: &Environment) -> Vec<String> {
    match parse(text, Path::new("/etc/respawn"), env) {
        Ok(c) => panic!("expected problems, got {c:#?}"),
        Err(p) => p.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_process_gets_the_documented_defaults() {
    let config = parse_ok("[[process]]\nname = \"web\"\ncommand = [\"ruby\", \"server.rb\"]\n");
    assert_eq!(config.agent.id, "door-pi");
    assert_eq!(config.agent.state_dir, PathBuf::from("/var/lib/respawn"));
    let p = &config.processes[0];
    assert_eq!(
        p,
        &ProcessConfig::new("web", vec!["ruby".into(), "server.rb".into()])
    );
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.backoff.initial, Duration::from_secs(1));
    assert_eq!(p.backoff.max, Duration::from_secs(60));
    assert_eq!(p.stable_after, Duration::from_secs(60));
    assert_eq!(p.crash_loop.max_exits, 5);
    assert_eq!(p.crash_loop.window, Duration::from_secs(600));
    assert_eq!(p.max_restarts, None);
    assert_eq!(p.stop_signal, Signal::SIGTERM);
    assert_eq!(p.stop_timeout, Duration::from_secs(10));
    assert!(p.autostart);
}

#[test]
fn every_key_is_read() {
    let config = parse_ok(
        r#"
        [agent]
        id = "door-pi"
        state_dir = "state"

        [[process]]
        name = "doorbot"
        command = ["ruby", "server.rb", ""]
        cwd = "door"
        env = { PORT = "4567", RACK_ENV = "production" }
        restart = "on-failure"
        backoff = { initial = "500ms", max = "30s" }
        stable_after = "2m"
        crash_loop = { max_exits = 3, window = "1h" }
        max_restarts = 10
        stop_signal = "int"
        stop_timeout = "3s"
        autostart = false
        "#,
    );
    assert_eq!(config.agent.state_dir, PathBuf::from("/etc/respawn/state"));
    let p = &config.processes[0];
    assert_eq!(p.command, ["ruby", "server.rb", ""]);
    assert_eq!(p.cwd.as_deref(), Some(Path::new("/etc/respawn/door")));
    assert_eq!(p.env["PORT"], "4567");
    assert_eq!(p.restart, RestartPolicy::OnFailure);
    assert_eq!(
        p.backoff,
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30)
        }
    );
    assert_eq!(p.stable_after, Duration::from_secs(120));
    assert_eq!(
        p.crash_loop,
        CrashLoop {
            max_exits: 3,
            window: Duration::from_secs(3600)
        }
    );
    assert_eq!(p.max_restarts, Some(10));
    assert_eq!(p.stop_signal, Signal::SIGINT);
    assert_eq!(p.stop_timeout, Duration::from_secs(3));
    assert!(!p.autostart);
}

#[test]
fn all_problems_are_reported_at_once_with_their_lines() {
    let found = problems(
        r#"[agent]
id = "Door Pi"

[[process]]
name = "web"
comand = ["x"]

[[process]]
name = "web"
command = []
stop_timeout = "ten seconds"

[[process]]
name = "web"
command = ["ok"]
"#,
    );
    assert_eq!(
        found,
        [
            "line 2: [agent] id \"Door Pi\" is not a valid agent id ([a-z0-9][a-z0-9_-]{0,63}): it contains 'D', ' ' and 'P'; allowed are a-z, 0-9, '_' and '-'",
            "line 4: [[process]] \"web\": missing `command`",
            "line 6: [[process]] \"web\": unknown key `comand` (did you mean `command`?)",
            "line 8: [[process]] \"web\": duplicate name (first defined on line 4)",
            "line 10: [[process]] \"web\": `command` must not be empty",
            "line 11: [[process]] \"web\": `stop_timeout`: bad duration \"ten seconds\" (a number must come first); write e.g. \"10s\", \"500ms\" or \"10m\"",
            "line 13: [[process]] \"web\": duplicate name (first defined on line 4)",
        ]
    );
}

#[test]
fn wrong_types_and_values_are_explained() {
    let found = problems(
        r#"[[process]]
name = "a/b"
command = "ruby server.rb"
restart = "sometimes"
backoff = { initial = "0s", maximum = "1s" }
crash_loop = { max_exits = 0, window = "0s" }
max_restarts = -1
stop_signal = "KILL"
autostart = "yes"
env = { PORT = 4567 }
"#,
    );
    let expected_fragments = [
        "line 2: [[process]] #1: name \"a/b\" is not valid",
        "line 3: [[process]] #1: `command` must be a list of strings",
        "line 4: [[process]] #1: `restart` is \"sometimes\"",
        "line 5: [[process]] #1: `backoff.initial` must be at least 1ms",
        "line 5: [[process]] #1: `backoff`: unknown key `maximum` (known keys: initial, max)",
        "line 6: [[process]] #1: `crash_loop.max_exits` must be a whole number from 1",
        "line 6: [[process]] #1: `crash_loop.window` must be longer than 0s",
        "line 7: [[process]] #1: `max_restarts` must be a whole number from 0",
        "line 8: [[process]] #1: `stop_signal`: \"KILL\" is not a signal a process can handle",
        "line 9: [[process]] #1: `autostart` must be true or false",
        "line 10: [[process]] #1: `env`: PORT must be a string",
    ];
    for fragment in expected_fragments {
        assert!(
            found.iter().any(|p| p.starts_with(fragment)),
            "no problem starts with {fragment:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected_fragments.len(), "{found:#?}");
}

#[test]
fn unknown_sections_and_syntax_errors_are_reported() {
    let found = problems("[agnet]\nid = \"x\"\n");
    assert_eq!(
        found,
        ["line 1: unknown key `agnet` (did you mean `agent`?)"]
    );
    let found = problems("[[process]]\nname = \"x\"\ncommand = [\"a\"\n");
    assert!(found[0].starts_with("line 3: TOML syntax:"), "{found:?}");
}

#[test]
fn user_needs_root_and_an_existing_account() {
    let text = "[[process]]\nname = \"x\"\ncommand = [\"id\"]\nuser = \"pi\"\n";
    assert_eq!(
        problems(text),
        ["line 4: [[process]] \"x\": `user`: switching to user \"pi\" needs the agent to run as root"]
    );
    let config = parse(text, Path::new("/"), &root_env()).unwrap();
    assert_eq!(config.processes[0].user.as_deref(), Some("pi"));
    // Its own account is no switch: an agent run by `door` may name it.
    let own = parse(&text.replace("\"pi\"", "\"door\""), Path::new("/"), &env()).unwrap();
    assert_eq!(own.processes[0].user.as_deref(), Some("door"));
    // An account that does not exist keeps only its process from starting (found by a
    // new-user run: one such process refused the whole file, and nothing ran): `check`
    // notes it, and the start fails.
    let text = text.replace("\"pi\"", "\"nobody-here\"");
    let config = parse(&text, Path::new("/"), &root_env()).unwrap();
    assert_eq!(config.processes[0].user.as_deref(), Some("nobody-here"));
}

#[test]
fn absurd_durations_and_nul_bytes_are_refused() {
    let found = problems(
        "[[process]]\nname = \"x\"\ncommand = [\"a\", \"b\\u0000c\"]\nstop_timeout = \"500000000000years\"\nbackoff = { max = \"400days\" }\nenv = { A = \"x\\u0000\" }\n",
    );
    assert_eq!(
        found,
        [
            "line 3: [[process]] \"x\": `command`: argument 1 must not contain a NUL byte",
            "line 4: [[process]] \"x\": `stop_timeout`: \"500000000000years\" is longer than the limit of 365 days",
            "line 5: [[process]] \"x\": `backoff.max`: \"400days\" is longer than the limit of 365 days",
            "line 6: [[process]] \"x\": `env`: A must not contain a NUL byte",
        ]
    );
}

#[test]
fn backoff_max_below_initial_is_refused() {
    let found = problems(
        "[[process]]\nname = \"x\"\ncommand = [\"a\"]\nbackoff = { initial = \"10s\", max = \"1s\" }\n",
    );
    assert_eq!(
        found,
        ["line 4: [[process]] \"x\": `backoff`: max (1s) is shorter than initial (10s)"]
    );
}

#[test]
fn partial_tables_keep_the_other_defaults() {
    let config = parse_ok(
        "[[process]]\nname = \"x\"\ncommand = [\"a\"]\nbackoff = { max = \"5s\" }\ncrash_loop = { window = \"1m\" }\n",
    );
    let p = &config.processes[0];
    assert_eq!(p.backoff.initial, Duration::from_secs(1));
    assert_eq!(p.backoff.max, Duration::from_secs(5));
    assert_eq!(p.crash_loop.max_exits, 5);
}

/// What the Debian package installs as /etc/respawn/agent.toml: valid as it is, and its
/// commented door-server example valid once uncommented.
#[test]
fn the_packaged_configuration_and_its_example_are_valid() {
    let packaged = include_str!("../../../packaging/agent.toml");
    assert!(parse_ok(packaged).processes.is_empty());
    let example: String = packaged
        .lines()
        .skip_while(|line| *line != "# [[process]]")
        .filter_map(|line| line.strip_prefix("# "))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = parse_ok_as_root(&example);
    assert_eq!(config.processes[0].name, "doorbot");
    assert!(config.processes[0].health.is_some());
}

/// docs/raspberry-pi.md has the reader add its TOML snippets, one after the other, to the
/// packaged file: every stage must stay valid.
#[test]
fn the_raspberry_pi_guide_builds_a_valid_configuration() {
    let guide = include_str!("../../../docs/raspberry-pi.md");
    let agent_part = &guide[..guide.find("## 7.").expect("the alerts step")];
    let mut config = include_str!("../../../packaging/agent.toml").to_owned();
    let mut in_block = false;
    let mut snippets = 0;
    for line in agent_part.lines() {
        match (in_block, line) {
            (false, "```toml") => in_block = true,
            (true, "```") => {
                in_block = false;
                snippets += 1;
                if let Err(problems) = parse(&config, Path::new("/etc/respawn"), &root_env()) {
                    panic!("after snippet {snippets}:\n{config}\n{problems:#?}");
                }
            }
            (true, line) => {
                config.push_str(line);
                config.push('\n');
            }
            (false, _) => {}
        }
    }
    assert_eq!(snippets, 3, "the process, the broker and the operator");
    let config = parse_ok_as_root(&config);
    assert_eq!(config.agent.id, "door-pi");
    assert!(config.mqtt.is_some());
    assert_eq!(config.operators.len(), 1);
    assert_eq!(config.processes[0].user.as_deref(), Some("pi"));
}

fn parse_ok_as_root(text: &str) -> Config {
    match parse(text, Path::new("/etc/respawn"), &root_env()) {
        Ok(c) => c,
        Err(problems) => panic!("unexpected problems: {problems:#?}"),
    }
}

#[test]
fn an_empty_file_is_a_valid_agent_with_nothing_to_do() {
    let config = parse_ok("");
    assert!(config.processes.is_empty());
}

#[test]
fn mqtt_section_with_defaults_and_every_key() {
    let config = parse_ok("[mqtt]\nurl = \"mqtt://broker.lan\"\n");
    let mqtt = config.mqtt.unwrap();
    assert_eq!(mqtt.url.to_string(), "mqtt://broker.lan:1883");
    assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(mqtt.heartbeat, Duration::from_secs(30));
    assert_eq!(mqtt.topics.prefix(), "respawn/v1");
    assert_eq!(mqtt.spool_limit, 10_000);
    assert_eq!((mqtt.username, mqtt.password), (None, None));

    let config = parse_ok(
        r#"
        [mqtt]
        url = "mqtt://10.0.0.1:1884"
        username = "door-pi"
        password_file = "mqtt-password"
        keep_alive = "10s"
        topic_prefix = "site-a/respawn"
        heartbeat = "5s"
        spool_limit = 100
        "#,
    );
    let mqtt = config.mqtt.unwrap();
    assert_eq!(mqtt.username.as_deref(), Some("door-pi"));
    assert_eq!(mqtt.password, Some(Secret("s3cret".into())));
    assert_eq!(format!("{:?}", mqtt.password), "Some(Secret(..))");
    assert_eq!(mqtt.topics.prefix(), "site-a/respawn");
    assert_eq!(mqtt.spool_limit, 100);
}

#[test]
fn health_checks_and_limits() {
    let config = parse_ok(
        r#"
        [[process]]
        name = "web"
        command = ["ruby", "server.rb"]
        max_memory = "200MB"
        restart_every = "1d"
        [process.health]
        http = "http://127.0.0.1:4567/health"
        status = "200-299"
        body = "ok"
        interval = "5s"
        timeout = "1s"
        failures = 2
        grace = "10s"

        [[process]]
        name = "db"
        command = ["db"]
        sd_notify = true
        watchdog = "30s"
        health = { tcp = "127.0.0.1:5432" }

        [[process]]
        name = "job"
        command = ["job"]
        health = { exec = ["./check.sh", "--quick"] }
        "#,
    );
    let web = &config.processes[0];
    let check = web.health.as_ref().unwrap();
    assert_eq!(
        check.probe,
        Probe::Http {
            url: "http://127.0.0.1:4567/health".into(),
            host: "127.0.0.1".into(),
            port: 4567,
            path: "/health".into(),
            status: (200, 299),
            body: Some("ok".into()),
        }
    );
    assert_eq!(
        (check.interval, check.timeout, check.failures, check.grace),
        (
            Duration::from_secs(5),
            Duration::from_secs(1),
            2,
            Duration::from_secs(10)
        )
    );
    assert_eq!(web.max_memory, Some(200_000_000));
    assert_eq!(web.restart_every, Some(Duration::from_secs(86_400)));
    assert!(web.awaits_readiness());
    let db = &config.processes[1];
    assert!(db.sd_notify && db.awaits_readiness());
    assert_eq!(db.watchdog, Some(Duration::from_secs(30)));
    let defaults = db.health.as_ref().unwrap();
    assert_eq!(
        (
            defaults.interval,
            defaults.timeout,
            defaults.failures,
            defaults.grace
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(2),
            3,
            Duration::from_secs(30)
        ),
        "the defaults"
    );
    assert_eq!(
        config.processes[2].health.as_ref().unwrap().probe,
        Probe::Exec {
            command: vec!["./check.sh".into(), "--quick".into()]
        }
    );
    assert!(
        !parse_ok("[[process]]\nname = \"a\"\ncommand = [\"x\"]\n").processes[0].awaits_readiness()
    );

    let found = problems(
        r#"[[process]]
name = "a"
command = ["x"]
watchdog = "30s"
max_memory = "lots"
restart_every = "5s"
[process.health]
http = "https://example.org/"
tcp = "nowhere"
status = "600"
interval = "1s"
timeout = "5s"
speed = 1
"#,
    );
    for expected in [
        "line 4: [[process]] \"a\": `watchdog` needs `sd_notify = true`",
        "line 5: [[process]] \"a\": `max_memory` must be a size of at least 1MB",
        "line 6: [[process]] \"a\": `restart_every` must be at least 1m",
        "line 8: [[process]] \"a\": `health.http`: \"https://example.org/\" must start with http://",
        "line 9: [[process]] \"a\": `health.tcp`: \"nowhere\" is not HOST:PORT",
        "line 10: [[process]] \"a\": `health.status` must be a status such as 200",
        "[[process]] \"a\": `health`: unknown key `speed`",
        // Read well themselves, the two are checked together whatever else is wrong; told at
        // the timeout's line, not the table's (found by a new-user run).
        "line 12: [[process]] \"a\": `health.timeout`: timeout (5s) is longer than interval (1s): probes would pile up",
    ] {
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "{expected:?} in {found:#?}"
        );
    }
    let both = problems(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", exec = [\"y\"], interval = \"1s\", timeout = \"5s\" }\n",
    );
    assert!(
        both.iter()
            .any(|p| p.contains("one of `http`, `tcp` or `exec`, not several")),
        "{both:?}"
    );
}

/// The sizes `max_memory` takes, as the parse-size crate reads them.
fn parse_size(text: &str) -> Option<u64> {
    ::parse_size::parse_size(text).ok()
}

#[test]
fn max_memory_is_at_least_the_megabyte_it_says() {
    let at = |size: &str| {
        let text = format!("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nmax_memory = {size}\n");
        parse(&text, Path::new("/etc/respawn"), &env()).map(|c| c.processes[0].max_memory)
    };
    assert_eq!(at("\"1MB\"").ok(), Some(Some(1_000_000)));
    assert_eq!(at("1000000").ok(), Some(Some(1_000_000)));
    assert!(at("\"999kB\"").is_err());
    // Too much is said as too much, not as too little.
    let said = |size: &str| {
        let text = format!("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nmax_memory = {size}\n");
        problems(&text)
    };
    assert_eq!(
        said("\"99999999999GB\""),
        ["line 4: [[process]] \"a\": `max_memory` is \"99999999999GB\": more than any machine has (at most 16EiB)"]
    );
    assert_eq!(
        said("18446744073709551615"),
        ["line 4: [[process]] \"a\": `max_memory` is a number beyond TOML's 64 bits"]
    );
    // A float is a size of the wrong type, not one too small (found by a new-user run).
    assert_eq!(
        said("1e9"),
        ["line 4: [[process]] \"a\": `max_memory` must be a size such as \"200MB\" or \"1GiB\", or a whole number of bytes, not a float"]
    );
}

/// A real-time signal is refused as what it is, not as a signal no process can handle.
#[test]
fn a_real_time_stop_signal_is_refused_as_such() {
    for name in ["RTMIN+1", "SIGRTMIN", "rtmax"] {
        let text =
            format!("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nstop_signal = \"{name}\"\n");
        assert_eq!(
            problems(&text),
            [format!("line 4: [[process]] \"a\": `stop_signal`: {name:?}: real-time signals are not supported as a stop signal; use e.g. \"TERM\", \"INT\", \"QUIT\" or \"HUP\"")]
        );
    }
}

/// A timeout left out is the default, which the refusal names: the file may say only the
/// interval (found by a new-user run).
#[test]
fn a_timeout_longer_than_the_interval_names_the_default() {
    let found = problems(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", interval = \"1s\" }\n",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("timeout (2s) is longer than interval (1s): probes would pile up; shorten the timeout (default 2s) or lengthen the interval"),
        "{found:?}"
    );
    // Told at the interval's line, the only one of the two written.
    let found = problems(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\n[process.health]\ntcp = \"h:1\"\ninterval = \"1s\"\n",
    );
    assert!(found[0].starts_with("line 6: "), "{found:?}");
}

#[test]
fn sizes_in_every_unit() {
    assert_eq!(parse_size("200MB"), Some(200_000_000));
    assert_eq!(parse_size("512MiB"), Some(512 * 1024 * 1024));
    assert_eq!(parse_size("1.5G"), Some(1_500_000_000));
    assert_eq!(parse_size("1048576"), Some(1_048_576));
    assert_eq!(parse_size("12 kb"), Some(12_000));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_size("-1MB"), None);
    assert_eq!(parse_size("1e400"), None);
}

#[test]
fn notify_says_which_failures_are_alerted() {
    let config = parse_ok(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nnotify = \"loop_only\"\n\n[[process]]\nname = \"b\"\ncommand = [\"x\"]\n",
    );
    assert_eq!(config.processes[0].notify, Notify::LoopOnly);
    assert_eq!(config.processes[1].notify, Notify::Every, "the default");
    assert_eq!(
        problems("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nnotify = \"sometimes\"\n"),
        ["line 4: [[process]] \"a\": `notify` is \"sometimes\"; expected \"every\", \"loop_only\" or \"off\""]
    );
}

#[test]
fn the_password_may_come_from_the_environment_but_the_file_wins() {
    let env = Environment {
        password: Some("from-env".into()),
        ..env()
    };
    let parse_with = |text: &str| {
        parse(text, Path::new("/etc/respawn"), &env)
            .expect("valid")
            .mqtt
            .expect("[mqtt]")
            .password
    };
    let base = "[mqtt]\nurl = \"mqtt://b\"\nusername = \"door-pi\"\n";
    assert_eq!(parse_with(base), Some(Secret("from-env".into())));
    assert_eq!(
        parse_with(&format!(
            "{base}password_file = \"/etc/respawn/mqtt-password\"\n"
        )),
        Some(Secret("s3cret".into()))
    );
    assert_eq!(
        parse_with("[mqtt]\nurl = \"mqtt://b\"\n"),
        None,
        "no username, no password"
    );
}

#[test]
fn mqtt_problems_are_reported() {
    let found = problems(
        r#"[mqtt]
url = "tcp://broker"
password_file = "missing"
keep_alive = "1s"
topic_prefix = "a/#"
heartbeat = "0s"
spool_limit = 0
qos = 2
"#,
    );
    let expected = [
        "line 2: [mqtt] url: \"tcp://broker\" is not a broker URL",
        "line 3: [mqtt] password_file needs a username",
        "line 3: [mqtt] cannot read the password file /etc/respawn/missing: entity not found",
        "line 4: [mqtt] keep_alive must be between 5s and 18h 12m 15s",
        "line 5: [mqtt] topic_prefix: topic prefix \"a/#\" must be",
        "line 6: [mqtt] heartbeat must be at least 1s",
        "line 7: [mqtt] spool_limit must be a whole number from 1",
        "line 8: [mqtt]: unknown key `qos`",
    ];
    for fragment in expected {
        assert!(
            found.iter().any(|p| p.starts_with(fragment)),
            "no {fragment:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    assert_eq!(
        problems("[mqtt]\nusername = \"x\"\n"),
        ["line 1: [mqtt]: missing `url`, e.g. url = \"mqtt://192.168.1.10:1883\""]
    );
}

#[test]
fn an_embedded_broker_is_reported_to_unless_mqtt_says_otherwise() {
    let config = parse_ok("[broker]\nlisten = \"0.0.0.0:18830\"\n");
    assert_eq!(
        config.broker.unwrap().listen,
        "0.0.0.0:18830".parse().unwrap()
    );
    assert_eq!(
        config.mqtt.unwrap().url.to_string(),
        "mqtt://127.0.0.1:18830"
    );
    let config =
        parse_ok("[broker]\nlisten = \"127.0.0.1:1\"\n[mqtt]\nurl = \"mqtt://elsewhere\"\n");
    assert_eq!(config.mqtt.unwrap().url.host, "elsewhere");
    assert_eq!(
        problems("[broker]\nlisten = \"localhost\"\n"),
        ["line 2: [broker] listen \"localhost\" is not an IP address with a port, e.g. \"127.0.0.1:1883\" (a name such as localhost is not looked up)"]
    );
    assert_eq!(
        problems("[broker]\nlisten = \"localhost:1883\"\n"),
        ["line 2: [broker] listen \"localhost:1883\" is not an IP address with a port, e.g. \"127.0.0.1:1883\" (a name such as localhost is not looked up)"]
    );
}

#[test]
fn tls_files_belong_to_mqtts_and_are_checked() {
    let config = parse_ok(
        "[mqtt]\nurl = \"mqtts://broker.lan\"\nca_file = \"ca.pem\"\ncert_file = \"door.pem\"\nkey_file = \"door.key\"\n",
    );
    let mqtt = config.mqtt.unwrap();
    assert_eq!(mqtt.url.port, 8883);
    assert_eq!(
        mqtt.ca_file.as_deref(),
        Some(Path::new("/etc/respawn/ca.pem"))
    );
    assert_eq!(
        mqtt.key_file.as_deref(),
        Some(Path::new("/etc/respawn/door.key"))
    );
    assert_eq!(
        problems("[mqtt]\nurl = \"mqtt://broker\"\nca_file = \"ca.pem\"\n"),
        ["line 1: [mqtt]: ca_file, cert_file and key_file need an mqtts:// url"]
    );
    assert_eq!(
        problems("[mqtt]\nurl = \"mqtts://broker\"\nca_file = \"bad-ca.pem\"\n"),
        ["line 3: [mqtt]: /etc/respawn/bad-ca.pem holds no PEM certificate"]
    );
    // Every file that cannot be read, each at its own line.
    assert_eq!(
        problems("[mqtt]\nurl = \"mqtts://broker\"\nca_file = \"missing-ca.pem\"\ncert_file = \"door.pem\"\nkey_file = \"missing.key\"\n"),
        [
            "line 3: [mqtt]: cannot read /etc/respawn/missing-ca.pem: entity not found",
            "line 5: [mqtt]: cannot read /etc/respawn/missing.key: entity not found",
        ]
    );
    // And what is wrong with those that can, beside them.
    assert_eq!(
        problems("[mqtt]\nurl = \"mqtts://broker\"\nca_file = \"missing-ca.pem\"\ncert_file = \"door.pem\"\nkey_file = \"other.key\"\n"),
        [
            "line 3: [mqtt]: cannot read /etc/respawn/missing-ca.pem: entity not found",
            "line 5: [mqtt]: the client certificate and key do not work together: the key is another's",
        ]
    );
}

#[test]
fn operators_with_their_permissions() {
    let key = respawn_common::signing::SigningKey::generate("alice").unwrap();
    let bob_key = respawn_common::signing::SigningKey::generate("bob").unwrap();
    let config = parse_ok(&format!(
        "[agent]\nallow_unsigned_commands = true\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\nallow = [\"restart\", \"logs\"]\nprocesses = [\"door*\"]\n\n[[operator]]\nname = \"bob\"\npublic_key = \"{}\"\n",
        key.public_line(),
        bob_key.public_line()
    ));
    assert!(config.agent.allow_unsigned_commands);
    let alice = &config.operators[0];
    assert_eq!(alice.key, key.verifying_key());
    assert_eq!(alice.allow, [Permission::Restart, Permission::Logs]);
    assert_eq!(alice.processes, ["door*"]);
    let bob = &config.operators[1];
    assert_eq!(
        bob.allow,
        Permission::DEFAULT,
        "everything but configure by default"
    );
    assert!(!bob.allow.contains(&Permission::Configure));
    assert_eq!(bob.processes, ["*"]);
    assert!(
        !parse_ok("").agent.allow_unsigned_commands,
        "signed only by default"
    );

    assert_eq!(
        problems(&format!(
            "[[operator]]\nname = \"carol\"\npublic_key = \"{}\"\n",
            bob_key.public_line()
        )),
        ["line 3: [[operator]] \"carol\": `public_key`: this is the key of \"bob\", whose commands are signed as \"bob\": name the operator \"bob\", or make a key for \"carol\""]
    );

    // Without the name at its end, one key under two names: whose would a signature be?
    let unnamed = bob_key.public_line().trim_end_matches(" bob").to_owned();
    assert_eq!(
        problems(&format!(
            "[[operator]]\nname = \"bob\"\npublic_key = \"{unnamed}\"\n\n[[operator]]\nname = \"robert\"\npublic_key = \"{unnamed}\"\n"
        )),
        ["line 5: [[operator]] \"robert\": the same public_key as \"bob\"; a key is one operator's"]
    );
    // Told with the first one's own mistakes, not only once they are mended.
    assert_eq!(
        problems(&format!(
            "[[operator]]\nname = \"bob\"\npublic_key = \"{unnamed}\"\nallow = [\"reboot\"]\n\n[[operator]]\nname = \"bob\"\npublic_key = \"{unnamed}\"\n\n[[operator]]\nname = \"robert\"\npublic_key = \"{unnamed}\"\n"
        )),
        [
            "line 4: [[operator]] \"bob\": `allow`: \"reboot\" is not a command (restart, stop, start, logs, status, configure)",
            "line 6: [[operator]] \"bob\": duplicate name",
            "line 10: [[operator]] \"robert\": the same public_key as \"bob\"; a key is one operator's",
        ]
    );

    let found = problems(
        "[[operator]]\nname = \"a b\"\npublic_key = \"ssh-rsa AAAA\"\nallow = [\"reboot\", \"logs\", \"configur\", \"follow\"]\nprocesses = [\"a/b\", \"door*\", \"\"]\n\n[[operator]]\nname = \"x\"\n",
    );
    let expected = [
        "line 2: [[operator]] \"a b\": `name`: \"a b\" is not a valid name",
        "line 3: [[operator]] \"a b\": `public_key`: not a respawn public key",
        "line 4: [[operator]] \"a b\": `allow`: \"reboot\", \"configur\" and \"follow\" are not commands (restart,",
        "line 5: [[operator]] \"a b\": `processes`: \"a/b\" and \"\" are not process-name globs",
        "line 7: [[operator]] \"x\": missing `public_key`",
    ];
    for fragment in expected {
        assert!(
            found.iter().any(|p| p.starts_with(fragment)),
            "no {fragment:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn typo_suggestions_only_when_close() {
    use respawn_common::config_file::{closest, keys};
    let process_keys = keys::<ProcessConfig>();
    assert_eq!(closest("comand", process_keys), Some("command"));
    assert_eq!(closest("stop_sigal", process_keys), Some("stop_signal"));
    assert_eq!(closest("zzzzzz", process_keys), None);
}

/// The mistakes of a long list, each reported once, on its own line.
#[test]
fn ten_different_mistakes_are_ten_problems_on_their_lines() {
    let found = problems(
        r#"[agent]
id = "Door_Pi"

[mqtt]
username = "door-pi"

[[operator]]
name = "alice"
public_key = "respawn-ed25519 YN/UnFCjj5U/a4TRcXINB5URrx+sZpCfOPPdxszURk4= alice"
processes = ["door/*"]

[[process]]
name = "web"
command = []
stop_timout = "5s"
stable_after = "a while"
stop_signal = "FOO"
crash_loop = { max_exits = 0 }
autostart = "yes"

[[process]]
name = "web"
command = ["x"]
"#,
    );
    assert_eq!(
        found,
        [
            "line 2: [agent] id \"Door_Pi\" is not a valid agent id ([a-z0-9][a-z0-9_-]{0,63}): it contains 'D' and 'P'; allowed are a-z, 0-9, '_' and '-'",
            "line 4: [mqtt]: missing `url`, e.g. url = \"mqtt://192.168.1.10:1883\"",
            "line 10: [[operator]] \"alice\": `processes`: \"door/*\" is not a process-name glob",
            "line 14: [[process]] \"web\": `command` must not be empty",
            "line 15: [[process]] \"web\": unknown key `stop_timout` (did you mean `stop_timeout`?)",
            "line 16: [[process]] \"web\": `stable_after`: bad duration \"a while\" (a number must come first); write e.g. \"10s\", \"500ms\" or \"10m\"",
            "line 17: [[process]] \"web\": `stop_signal`: \"FOO\" is not a signal a process can handle; use e.g. \"TERM\", \"INT\", \"QUIT\" or \"HUP\"",
            "line 18: [[process]] \"web\": `crash_loop.max_exits` must be a whole number from 1 to 4294967295",
            "line 19: [[process]] \"web\": `autostart` must be true or false, not a string",
            "line 21: [[process]] \"web\": duplicate name (first defined on line 12)",
        ]
    );
}

/// A missing `]` is one problem, on the line that misses it: what the parser read after it
/// (the rest of the file, as part of the list) is not reported as more problems.
#[test]
fn a_missing_bracket_is_one_problem_on_its_own_line() {
    let found = problems(
        "[[process]]\nname = \"a\"\nstop_timeout = \"5s\"\nautostart = true\ncommand = [\"ruby\", \"server.rb\"\nstable_after = \"1m\"\n\n[[process]]\nname = \"b\"\ncommand = [\"x\"]\n",
    );
    assert_eq!(found, ["line 5: TOML syntax: unclosed array, expected `]`"]);
}

/// Two kinds of check in one table are a mistake even when one of them is itself wrong.
#[test]
fn probe_addresses_need_a_host_and_a_port_that_can_be_reached() {
    for url in [
        "http://[::1",
        "http://[::1]:0/",
        "http://h:0",
        "http://::1]/",
        "http://[]/",
    ] {
        assert!(super::checks::http_probe(url.into()).is_err(), "{url}");
    }
    for url in [
        "http://[::1]:8080/health",
        "http://[::1]/",
        "http://localhost/",
    ] {
        assert!(super::checks::http_probe(url.into()).is_ok(), "{url}");
    }
    for address in ["localhost:0", ":80", "localhost"] {
        assert!(
            super::checks::tcp_probe(address.into()).is_err(),
            "{address}"
        );
    }
    assert!(super::checks::tcp_probe("[::1]:5432".into()).is_ok());
}

#[test]
fn two_kinds_of_health_check_are_flagged_even_when_one_is_invalid() {
    let found = problems(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\n[process.health]\nhttp = \"ftp://x\"\ntcp = \"127.0.0.1:1\"\n",
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("one of `http`, `tcp` or `exec`, not several")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("line 5:") && p.contains("must start with http://")),
        "{found:?}"
    );
}

/// Every problem of a health table at once: `body` beside a `tcp` check is told also when
/// the address itself is refused (found by a new-user run: only the address was).
#[test]
fn an_http_setting_beside_another_check_is_told_also_when_that_check_is_refused() {
    for tcp in ["\"nohost\"", "\"127.0.0.1:1\""] {
        let found = problems(&format!(
            "[[process]]\nname = \"a\"\ncommand = [\"x\"]\n[process.health]\ntcp = {tcp}\nbody = \"x\"\n"
        ));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("line 6:") && p.contains("only for `http` checks")),
            "{tcp}: {found:?}"
        );
    }
}

#[test]
fn a_signal_given_by_number_is_told_by_its_name() {
    assert_eq!(
        problems("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nstop_signal = \"15\"\n"),
        ["line 4: [[process]] \"a\": `stop_signal`: \"15\": signals are named, not numbered: write \"TERM\""]
    );
}

#[test]
fn types_are_named_with_their_article() {
    assert_eq!(
        problems("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { PORT = 4567 }\n"),
        ["line 4: [[process]] \"a\": `env`: PORT must be a string, not an integer"]
    );
}

#[test]
fn what_the_agent_sets_in_the_environment_cannot_be_set() {
    assert_eq!(
        problems(
            "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { RESPAWN_PROCESS = \"b\" }\n"
        ),
        ["line 4: [[process]] \"a\": `env`: RESPAWN_PROCESS is set by the agent, for each start"]
    );
}

#[test]
fn a_refused_value_is_one_problem_not_a_cascade() {
    let found = problems(
        "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nbackoff = { initial = \"bad\", max = \"1s\" }\nhealth = { tcp = \"h:1\", interval = \"bad\", timeout = \"1s\" }\n",
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("line 4: [[process]] \"a\": `backoff.initial`: bad duration"));
    assert!(found[1].starts_with("line 5: [[process]] \"a\": `health.interval`: bad duration"));
}

#[test]
fn a_table_written_as_a_value_is_one_problem_and_unknown_keys_name_each_key_once() {
    assert_eq!(
        problems(
            "[[process]]\nname = \"a\"\ncommand = [\"x\"]\nbackoff = 5\nhealth = \"x\"\ncolour = \"red\"\n"
        ),
        [
            "line 4: [[process]] \"a\": `backoff` must be a table",
            "line 5: [[process]] \"a\": `health` must be a table",
            "line 6: [[process]] \"a\": unknown key `colour` (known keys: name, command, cwd, env, user, restart, backoff, stable_after, crash_loop, max_restarts, stop_signal, stop_timeout, autostart, notify, health, sd_notify, watchdog, max_memory, restart_every)",
        ]
    );
}

#[test]
fn a_reload_names_each_setting_that_waits_for_a_restart() {
    let before = parse_ok("[agent]\nid = \"door\"\n[broker]\nlisten = \"127.0.0.1:1883\"\n");
    let processes_only = "[agent]\nid = \"door\"\n[broker]\nlisten = \"127.0.0.1:1883\"\n[[process]]\nname = \"web\"\ncommand = [\"web\"]\n";
    assert!(before
        .changes_needing_restart(&parse_ok(processes_only))
        .is_empty());
    let moved = parse_ok("[agent]\nid = \"gate\"\ncontainment = \"process-group\"\n[broker]\nlisten = \"127.0.0.1:1884\"\n");
    assert_eq!(
        before.changes_needing_restart(&moved),
        ["[agent] id", "[agent] containment", "[broker]"],
        "no [mqtt] in either file: the broker's change is the one to name"
    );
    let reporting_elsewhere = parse_ok(
        "[agent]\nid = \"door\"\n[broker]\nlisten = \"127.0.0.1:1883\"\n[mqtt]\nurl = \"mqtt://hub:1883\"\n",
    );
    assert_eq!(
        before.changes_needing_restart(&reporting_elsewhere),
        ["[mqtt]"]
    );
}

#[test]
fn a_key_of_an_earlier_section_below_a_later_header_is_told_where_it_goes() {
    let text = "[agent]\nid = \"door-pi\"\n\n[[process]]\nname = \"web\"\ncommand = [\"web\"]\nremote_config = true\n";
    assert_eq!(
        problems(text),
        ["line 7: [[process]] \"web\": unknown key `remote_config` (every key after a table header belongs to that table: write it under [agent])"]
    );
    // A near miss of the section's own key is still that.
    let typo = "[agent]\nid = \"door-pi\"\n\n[[process]]\nname = \"web\"\ncommand = [\"web\"]\nautostrat = true\n";
    assert_eq!(
        problems(typo),
        ["line 7: [[process]] \"web\": unknown key `autostrat` (did you mean `autostart`?)"]
    );
}

#[test]
fn a_health_status_is_a_number_or_a_range_quoted_or_not() {
    for (written, expected) in [
        ("204", (204, 204)),
        ("\"204\"", (204, 204)),
        ("\"200-299\"", (200, 299)),
    ] {
        let config = parse_ok(&format!(
            "[[process]]\nname = \"web\"\ncommand = [\"web\"]\n[process.health]\nhttp = \"http://127.0.0.1:80/\"\nstatus = {written}\n"
        ));
        let check = config.processes[0].health.as_ref().expect("a check");
        let Probe::Http { status, .. } = &check.probe else {
            panic!("an http check");
        };
        assert_eq!(*status, expected, "{written}");
    }
}

#[test]
fn a_file_named_the_long_way_round_has_its_directory_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let pi = dir.path().join("pi");
    std::fs::create_dir(&pi).unwrap();
    let direct = base_dir(&pi.join("agent.toml"));
    assert_eq!(base_dir(&pi.join("../pi/agent.toml")), direct);
    assert!(!direct.to_string_lossy().contains(".."), "{direct:?}");
}

/// Found by a review: only the first bad variable of `env` (and argument of a command) was
/// named, the next one only once it was mended.
#[test]
fn every_bad_item_of_a_list_or_table_is_named_at_once() {
    let text = "[[process]]\nname = \"a\"\ncommand = [\"sh\", 3, \"-c\", 4]\nenv = { \"A=B\" = \"1\", C = 2 }\n";
    assert_eq!(
        problems(text),
        [
            "line 3: [[process]] \"a\": `command`: argument 1 must be a string, not an integer; argument 3 must be a string, not an integer",
            "line 4: [[process]] \"a\": `env`: \"A=B\" is not a valid variable name; C must be a string, not an integer",
        ]
    );
}
