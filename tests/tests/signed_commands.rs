//! Signed commands end to end: an agent that trusts only its configured operators runs what
//! they sign within what they may do, and rejects everything else with its own reason —
//! unsigned, forged, unknown key, not allowed, another agent's, expired, replayed, or bound to
//! a session the agent no longer has — without running any of it.

use std::path::{Path, PathBuf};

use respawn_agent::control::{Reply, Request};
use respawn_common::messages::{CommandReply, Reason, ReplyStatus};
use respawn_common::signing::SigningKey;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{envelope, online_session, retained, Commander, Observer};
use respawn_tests::{mqtt_section, respawnctl, wait_for, TestAgent, TIMEOUT};
use tempfile::TempDir;

const PROCESSES: &str = r#"
[[process]]
name = "doorbot"
command = ["sleep", "1000"]

[[process]]
name = "db"
command = ["sleep", "1000"]
"#;

/// Alice's key made as a user makes it, with `respawnctl keygen`, into a directory that does
/// not exist yet (as `~/.config/respawn` on a fresh machine).
fn keygen(dir: &Path, name: &str) -> (PathBuf, SigningKey) {
    let dir = dir.join("config/respawn");
    let path = dir.join(format!("{name}.key"));
    let keygen = || {
        std::process::Command::new(respawn_tests::respawnctl_binary())
            .args(["keygen", "--out"])
            .arg(&path)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .output()
            .expect("respawnctl keygen runs")
    };
    let fresh = !dir.exists();
    let out = keygen();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.contains(&format!("made the directory {}", dir.display())),
        fresh,
        "a directory made is said: {said}"
    );
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir_mode) & 0o777,
        0o700
    );
    let again = keygen();
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "a key is never overwritten: {again:?}"
    );
    let public = std::fs::read_to_string(dir.join(format!("{name}.key.pub"))).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        public,
        "prints the public key"
    );
    let mode = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let key = SigningKey::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, key)
}

fn operators(alice: &SigningKey, bob: &SigningKey) -> String {
    format!(
        "[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\nprocesses = [\"door*\"]\n\n[[operator]]\nname = \"bob\"\npublic_key = \"{}\"\nallow = [\"logs\"]\n\n",
        alice.public_line(),
        bob.public_line()
    )
}

struct Fleet {
    broker: Broker,
    /// Holds alice's key file.
    _keys: TempDir,
    alice_file: PathBuf,
    alice: SigningKey,
    bob: SigningKey,
    config: String,
}

impl Fleet {
    fn new() -> Self {
        let broker = Broker::start();
        let keys = tempfile::tempdir().unwrap();
        let (alice_file, alice) = keygen(keys.path(), "alice");
        let bob = SigningKey::generate("bob").unwrap();
        let config = format!(
            "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\n\n{}{}{PROCESSES}",
            operators(&alice, &bob),
            mqtt_section(&broker)
        );
        Self {
            broker,
            _keys: keys,
            alice_file,
            alice,
            bob,
            config,
        }
    }

    fn start_agent(&self, dir: impl Into<TempDir>) -> TestAgent {
        let agent = TestAgent::start_in(dir, &self.config);
        agent.wait_running("doorbot");
        agent.wait_running("db");
        self.session();
        agent
    }

    /// The agent's current session, once it is online.
    fn session(&self) -> String {
        online_session(&self.broker, "door-pi")
    }

    fn ctl(&self, args: &[&str]) -> respawn_tests::CtlOutput {
        let key = self.alice_file.display().to_string();
        let mut all = vec!["--key", &key];
        all.extend_from_slice(args);
        respawnctl(&self.broker, &all)
    }
}

/// A body for door-pi bound to `session`.
fn bound(commander: &Commander, command: &str, process: &str, session: &str) -> serde_json::Value {
    let mut body = commander.body(command, Some(process));
    body["session"] = session.into();
    body
}

fn rejected(replies: &[CommandReply]) -> Reason {
    let last = replies.last().expect("a reply");
    assert_eq!(last.status, ReplyStatus::Rejected, "{replies:#?}");
    last.reason.expect("a reason")
}

fn only_what_an_operator_signs_and_may_do_runs() {
    let fleet = Fleet::new();
    let agent = fleet.start_agent(tempfile::tempdir().unwrap());
    agent.wait_for_log("commands signed by: ");
    let session = fleet.session();
    let events = Observer::connect(&fleet.broker, &["respawn/v1/door-pi/event"]);
    let commander = Commander::new(&fleet.broker, "door-pi");

    // respawnctl signs with --key and reads the session from the retained birth.
    let pid = agent.wait_running("doorbot");
    let out = fleet.ctl(&["restart", "door-pi/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("restarted door-pi/doorbot pid {pid} → ")),
        "{out:?}"
    );
    let doorbot = agent.wait_restarted("doorbot", pid);
    let db = agent.wait_running("db");

    // A valid signed command from a plain MQTT client runs too.
    let logs = bound(&commander, "logs", "doorbot", &session);
    let replies = commander.send_signed(&logs, &fleet.bob);
    assert_eq!(replies.last().unwrap().status, ReplyStatus::Succeeded);

    let alice = |command: &str, process: &str| bound(&commander, command, process, &session);
    let mut tampered_body = alice("restart", "doorbot");
    let signed = envelope(&tampered_body, Some(&fleet.alice));
    let mut tampered: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    tampered_body["process"] = "db".into();
    tampered["body"] = tampered_body.to_string().into();
    let mut other_agent = alice("restart", "doorbot");
    other_agent["agent"] = "garage-pi".into();
    let mut expired = alice("restart", "doorbot");
    expired["expires_at"] = "2020-01-01T00:00:00Z".into();
    let impostor = SigningKey::generate("alice").unwrap();
    let mallory = SigningKey::generate("mallory").unwrap();

    let cases: Vec<(&str, serde_json::Value, Vec<u8>, Reason)> = vec![
        {
            let b = alice("restart", "doorbot");
            ("unsigned", b.clone(), envelope(&b, None), Reason::Unsigned)
        },
        (
            "tampered body",
            tampered_body.clone(),
            tampered.to_string().into_bytes(),
            Reason::BadSignature,
        ),
        {
            let b = alice("restart", "doorbot");
            let e = envelope(&b, Some(&impostor));
            ("another key named alice", b, e, Reason::BadSignature)
        },
        {
            let b = alice("restart", "doorbot");
            let e = envelope(&b, Some(&mallory));
            ("unknown key", b, e, Reason::UnknownKey)
        },
        {
            let b = alice("restart", "doorbot");
            let e = envelope(&b, Some(&fleet.bob));
            ("command not allowed", b, e, Reason::NotAllowed)
        },
        {
            let b = alice("restart", "db");
            let e = envelope(&b, Some(&fleet.alice));
            ("process not allowed", b, e, Reason::NotAllowed)
        },
        {
            let e = envelope(&other_agent, Some(&fleet.alice));
            (
                "another agent's",
                other_agent.clone(),
                e,
                Reason::WrongAgent,
            )
        },
        {
            let e = envelope(&expired, Some(&fleet.alice));
            ("expired", expired.clone(), e, Reason::Expired)
        },
        {
            let b = bound(&commander, "restart", "doorbot", "an-old-session");
            let e = envelope(&b, Some(&fleet.alice));
            ("old session", b, e, Reason::StaleSession)
        },
        {
            // Anyone on the broker may send this: its id must not write lines of its own
            // into the agent's log.
            let mut b = alice("restart", "doorbot");
            b["cmd_id"] = FORGED_LOG_LINE.into();
            (
                "unsigned, a log line in its id",
                b.clone(),
                envelope(&b, None),
                Reason::Unsigned,
            )
        },
    ];
    for (what, body, bytes, reason) in &cases {
        let replies = commander.send_envelope(body, bytes.clone());
        assert_eq!(replies.len(), 1, "{what}: nothing accepted: {replies:#?}");
        assert_eq!(rejected(&replies), *reason, "{what}");
    }

    // A signed command runs once; the same bytes again are a replay.
    let restart = alice("restart", "doorbot");
    let signed = envelope(&restart, Some(&fleet.alice));
    let replies = commander.send_envelope(&restart, signed.clone());
    let restarted = replies.last().unwrap();
    assert_eq!(restarted.status, ReplyStatus::Succeeded, "{replies:#?}");
    assert_eq!(restarted.old_pid, Some(doorbot));
    let doorbot = restarted.new_pid.expect("the new pid");
    let replies = commander.send_envelope(&restart, signed);
    assert_eq!(rejected(&replies), Reason::Replayed);

    assert_eq!(
        agent.status("doorbot").pid,
        Some(doorbot),
        "nothing else ran"
    );
    assert_eq!(agent.status("db").pid, Some(db), "nothing ran on db");
    assert_eq!(agent.status("db").restarts, 0);

    // Every verdict is audited, with the operator whose signature verified.
    let audits = events.wait("an audit event for every command", |messages| {
        let audits: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| m.json())
            .filter(|e| e["kind"] == "command")
            .collect();
        (audits.len() >= cases.len() + 4).then_some(audits)
    });
    let audit_of = |cmd_id: &serde_json::Value| {
        audits
            .iter()
            .find(|a| a["cmd_id"] == *cmd_id)
            .unwrap_or_else(|| panic!("no audit of {cmd_id}"))
            .clone()
    };
    let not_allowed = audit_of(&cases[4].1["cmd_id"]);
    assert_eq!(not_allowed["signer"], "bob");
    assert_eq!(not_allowed["outcome"], "rejected");
    assert_eq!(not_allowed["reason"], "not_allowed");
    let unknown = audit_of(&cases[3].1["cmd_id"]);
    assert_eq!(unknown["reason"], "unknown_key");
    assert!(unknown.get("signer").is_none(), "{unknown}");
    assert_eq!(audit_of(&restart["cmd_id"])["signer"], "alice");
    let log = agent.log();
    assert!(
        log.contains("remote command rejected")
            && log.contains("signer=\"bob\"")
            && log.contains("reason=\"not_allowed\""),
        "and logged:\n{log}"
    );
    let (forged, escaped) = FORGED_LOG_LINE.split_once('\n').unwrap();
    assert!(
        !log.lines().any(|line| line.starts_with(escaped)) && log.contains(&format!("{forged}\\n")),
        "a command's id is logged as text, not as lines:\n{log}"
    );
}

/// A command id that would add a line to the agent's log if written as it is.
const FORGED_LOG_LINE: &str =
    "z\n2026-12-06T02:55:00.000Z  INFO respawn_agent: remote command succeeded signer=\"alice\"";

fn a_command_captured_before_the_agent_restarted_is_refused_after() {
    let fleet = Fleet::new();
    let agent = fleet.start_agent(tempfile::tempdir().unwrap());
    let before = fleet.session();
    let commander = Commander::new(&fleet.broker, "door-pi");
    let restart = bound(&commander, "restart", "doorbot", &before);
    let captured = envelope(&restart, Some(&fleet.alice));
    let replies = commander.send_envelope(&restart, captured.clone());
    assert_eq!(replies.last().unwrap().status, ReplyStatus::Succeeded);

    // The agent forgets every cmd_id it saw when it restarts; its new session still refuses
    // the capture, whatever its clock says.
    let agent = fleet.start_agent(agent.kill_hard());
    let after = fleet.session();
    assert_ne!(after, before, "a new session for a new agent process");
    let pid = agent.wait_running("doorbot");
    let replies = commander.send_envelope(&restart, captured);
    assert_eq!(rejected(&replies), Reason::StaleSession);
    assert_eq!(agent.status("doorbot").pid, Some(pid), "not run again");
    assert_eq!(agent.status("doorbot").restarts, 0);
}

/// Rewrites the agent's file to `config` and reloads it, as `respawn-agent reload` does.
fn reload(agent: &TestAgent, config: &str) {
    agent.rewrite_config(config);
    let reply = agent.request(Request::Reload { file: None });
    assert!(matches!(reply, Reply::Reloaded { .. }), "{reply:?}");
}

fn a_command_refused_before_a_reload_stays_refused_after_it() {
    let fleet = Fleet::new();
    let agent = fleet.start_agent(tempfile::tempdir().unwrap());
    let session = fleet.session();
    let commander = Commander::new(&fleet.broker, "door-pi");
    // Alice may act on door*, but there is no doorbell yet; bob may only read logs.
    let ring = bound(&commander, "restart", "doorbell", &session);
    let ring_capture = envelope(&ring, Some(&fleet.alice));
    let replies = commander.send_envelope(&ring, ring_capture.clone());
    assert_eq!(rejected(&replies), Reason::UnknownProcess);
    let bobs = bound(&commander, "restart", "doorbot", &session);
    let bobs_capture = envelope(&bobs, Some(&fleet.bob));
    let replies = commander.send_envelope(&bobs, bobs_capture.clone());
    assert_eq!(rejected(&replies), Reason::NotAllowed);

    // A reload adds the doorbell, with the same operators: the same session, and the
    // captured restart of it is a repeat.
    let with_doorbell = format!(
        "{}\n[[process]]\nname = \"doorbell\"\ncommand = [\"sleep\", \"1000\"]\n",
        fleet.config
    );
    reload(&agent, &with_doorbell);
    let bell = agent.wait_running("doorbell");
    assert_eq!(fleet.session(), session);
    let replies = commander.send_envelope(&ring, ring_capture);
    assert_eq!(rejected(&replies), Reason::Replayed);
    assert_eq!(agent.status("doorbell").pid, Some(bell), "not restarted");

    // A reload lets bob restart: a new session, in which his refused command is stale.
    let pid = agent.wait_running("doorbot");
    let bob_may_restart =
        with_doorbell.replace("allow = [\"logs\"]", "allow = [\"logs\", \"restart\"]");
    assert_ne!(bob_may_restart, with_doorbell);
    reload(&agent, &bob_may_restart);
    wait_for("a new session", TIMEOUT, || {
        (fleet.session() != session).then_some(())
    });
    let replies = commander.send_envelope(&bobs, bobs_capture);
    assert_eq!(rejected(&replies), Reason::StaleSession);
    assert_eq!(agent.status("doorbot").pid, Some(pid), "not restarted");
    assert_eq!(agent.status("doorbot").restarts, 0);
}

fn respawnctl_renews_a_stale_session_once() {
    let fleet = Fleet::new();
    let agent = fleet.start_agent(tempfile::tempdir().unwrap());
    let session = fleet.session();
    let pid = agent.wait_running("doorbot");

    // A birth from an earlier session, as a broker might still hold it.
    let state = retained(&fleet.broker, "respawn/v1/door-pi/state");
    let mut stale = state[0].json();
    stale["session"] = "an-earlier-session".into();
    let forger = Observer::connect(&fleet.broker, &[]);
    forger.publish_retained(
        "respawn/v1/door-pi/state",
        stale.to_string().into_bytes(),
        None,
    );
    wait_for("the stale birth retained", TIMEOUT, || {
        let state = retained(&fleet.broker, "respawn/v1/door-pi/state");
        (state.first()?.json()["session"] == "an-earlier-session").then_some(())
    });

    let out = fleet.ctl(&["restart", "door-pi/doorbot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("restarted door-pi/doorbot pid {pid} → ")),
        "{out:?}"
    );
    assert_eq!(
        agent.status("doorbot").restarts,
        0,
        "restarted once, by request"
    );
    assert_ne!(agent.status("doorbot").pid, Some(pid));
    // The agent answered the stale command by publishing its birth again.
    assert_eq!(fleet.session(), session);
}

fn without_operators_an_agent_takes_no_commands() {
    let broker = Broker::start();
    let config = format!(
        "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\n\n{}{PROCESSES}",
        mqtt_section(&broker)
    );
    let agent = TestAgent::start_in(tempfile::tempdir().unwrap(), &config);
    agent.wait_for_log("no [[operator]]: the agent takes no commands over MQTT");
    let pid = agent.wait_running("doorbot");
    wait_for("the agent online", TIMEOUT, || {
        let state = retained(&broker, "respawn/v1/door-pi/state");
        (state.first()?.json()["state"] == "online").then_some(())
    });
    let commander = Commander::new(&broker, "door-pi");
    let replies = commander.send(&commander.body("restart", Some("doorbot")));
    assert_eq!(rejected(&replies), Reason::Unsigned);
    let message = replies[0].message.as_deref().unwrap_or_default();
    assert!(message.contains("takes no commands"), "{message}");
    let key = SigningKey::generate("alice").unwrap();
    let replies = commander.send_signed(&commander.body("restart", Some("doorbot")), &key);
    assert_eq!(rejected(&replies), Reason::UnknownKey);
    let message = replies[0].message.as_deref().unwrap_or_default();
    assert!(message.contains("takes no commands"), "{message}");
    assert_eq!(agent.status("doorbot").pid, Some(pid));
}

fn accepting_unsigned_commands_warns_at_every_start() {
    let broker = Broker::start();
    let config = format!(
        "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\nallow_unsigned_commands = true\n\n{}{PROCESSES}",
        mqtt_section(&broker)
    );
    let agent = TestAgent::start_in(tempfile::tempdir().unwrap(), &config);
    agent.wait_for_log("allow_unsigned_commands = true: anyone who can publish on the broker can command this agent");
    let dir = agent.kill_hard();
    let agent = TestAgent::start_in(dir, &config);
    agent.wait_for_log("allow_unsigned_commands = true");
}

fn a_session_that_fills_the_replay_memory_is_renewed_rather_than_forgetting() {
    let fleet = Fleet::new();
    let _agent = fleet.start_agent(tempfile::tempdir().unwrap());
    let session = fleet.session();
    let commander = Commander::new(&fleet.broker, "door-pi");
    let first = bound(&commander, "status", "doorbot", &session);
    let captured = envelope(&first, Some(&fleet.alice));
    commander.send_envelope(&first, captured.clone());
    // The agent remembers 1024 commands per session; paced so that none is shed.
    let mut sent = 1;
    while sent < 1025 {
        let batch = (1025 - sent).min(32);
        for _ in 0..batch {
            let body = bound(&commander, "status", "doorbot", &session);
            commander.send_raw(envelope(&body, Some(&fleet.alice)), b"");
        }
        sent += batch;
        wait_for("the batch answered", TIMEOUT, || {
            let finals = commander
                .all_replies()
                .iter()
                .filter(|(r, _)| r.status.is_final())
                .count();
            (finals >= sent).then_some(())
        });
    }
    let renewed = fleet.session();
    assert_ne!(renewed, session, "a new session once the memory was full");
    let replies = commander.send_envelope(&first, captured);
    assert_eq!(rejected(&replies), Reason::StaleSession, "not forgotten");
}

respawn_tests::on_both_brokers!(
    only_what_an_operator_signs_and_may_do_runs,
    a_command_captured_before_the_agent_restarted_is_refused_after,
    a_command_refused_before_a_reload_stays_refused_after_it,
    respawnctl_renews_a_stale_session_once,
    without_operators_an_agent_takes_no_commands,
    accepting_unsigned_commands_warns_at_every_start,
    a_session_that_fills_the_replay_memory_is_renewed_rather_than_forgetting,
);
