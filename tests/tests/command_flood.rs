//! A flood of garbage on an agent's command topic — random bytes, broken JSON, forged and
//! unsigned envelopes — while one of its programs keeps crashing: the agent keeps restarting it
//! on schedule, reports every crash without a gap, never loses its broker connection, and
//! still obeys its operator afterwards.

use respawn_common::messages::{Event, EventKind, ReplyStatus};
use respawn_common::signing::SigningKey;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{retained, Commander, Observer};
use respawn_tests::{mqtt_section, wait_for, TestAgent, TIMEOUT};

/// xorshift64*: deterministic, so that a failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Up to `max` random bytes.
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` characters, many of them special to JSON, globs or topics.
    fn text(&mut self, max: u64) -> String {
        let len = self.below(max + 1);
        const CHARS: &[u8] = b"abcXYZ019-_./*?\"\\{}[]:, \x7f\xe2\x82\xac";
        let bytes: Vec<u8> = (0..len)
            .map(|_| CHARS[self.below(CHARS.len() as u64) as usize])
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn value(&mut self, depth: u32) -> serde_json::Value {
        match self.below(if depth > 3 { 4 } else { 6 }) {
            0 => serde_json::Value::Null,
            1 => (self.next() as i64).into(),
            2 => self.text(40).into(),
            3 => (self.below(2) == 0).into(),
            4 => (0..self.below(5))
                .map(|_| self.value(depth + 1))
                .collect::<Vec<_>>()
                .into(),
            _ => (0..self.below(5))
                .map(|_| (self.text(6), self.value(depth + 1)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// One hostile payload: the kinds a fuzzer would reach, weighted towards those that get far
/// into the agent (a body that parses, a signature that must be checked).
fn garbage(random: &mut Random, requester: &str) -> Vec<u8> {
    let command = ["restart", "stop", "start", "logs", "status", "reboot"];
    let process = ["doorbot", "crasher", "nope"][random.below(3) as usize];
    let key = ["alice", "mallory"][random.below(2) as usize];
    let mut body = serde_json::json!({
        "cmd_id": random.text(20),
        "agent": if random.below(4) == 0 { "garage-pi".to_owned() } else { "door-pi".to_owned() },
        "requester": requester,
        "command": command[random.below(command.len() as u64) as usize],
        "process": process,
        "expires_at": "2099-01-01T00:00:00Z",
    });
    match random.below(8) {
        0 => random.bytes(2048),
        1 => random.value(0).to_string().into_bytes(),
        2 => "[".repeat(1 + random.below(100_000) as usize).into_bytes(),
        3 => {
            body[random.text(4)] = random.value(0);
            serde_json::json!({"v": 1, "body": body.to_string()})
                .to_string()
                .into_bytes()
        }
        4 => serde_json::json!({"v": 1, "body": random.text(200)})
            .to_string()
            .into_bytes(),
        _ => {
            let signature = serde_json::json!({
                "key": key,
                "alg": "ed25519",
                "value": random.text(88),
            });
            serde_json::json!({"v": 1, "body": body.to_string(), "signature": signature})
                .to_string()
                .into_bytes()
        }
    }
}

fn events(messages: &[respawn_tests::mqtt::Message]) -> Vec<Event> {
    messages
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

fn crashes(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter(|e| e.process.as_deref() == Some("crasher"))
        .filter_map(|e| match e.kind {
            EventKind::Exited { restarts, .. } => Some(restarts),
            _ => None,
        })
        .collect()
}

fn a_garbage_flood_does_not_disturb_supervision_or_events() {
    let broker = Broker::start();
    let alice = SigningKey::generate("alice").unwrap();
    let config = format!(
        "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\n\n{}{}",
        alice.public_line(),
        mqtt_section(&broker),
        r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "echo about to crash; exit 3"]
backoff = { initial = "20ms", max = "50ms" }
crash_loop = { max_exits = 100000, window = "1m" }

[[process]]
name = "doorbot"
command = ["sleep", "1000"]
"#
    );
    let agent = TestAgent::start_quiet(&config);
    let doorbot = agent.wait_running("doorbot");
    let session = wait_for("the agent online", TIMEOUT, || {
        let birth = retained(&broker, "respawn/v1/door-pi/state")
            .first()?
            .json();
        (birth["state"] == "online").then(|| birth["session"].clone())
    });
    let watcher = Observer::connect(&broker, &["respawn/v1/door-pi/event"]);
    let vandal = Commander::new(&broker, "door-pi");

    // Flood until thousands of payloads are in and the crasher has crashed many times more
    // meanwhile: supervision goes on during the flood, not only after it.
    let crashes_before = crashes(&events(&watcher.messages())).len();
    let mut random = Random(0x5eed_1234_abcd_0001);
    let mut sent = 0;
    let flood_started = std::time::Instant::now();
    while sent < 5000 || crashes(&events(&watcher.messages())).len() < crashes_before + 20 {
        vandal.send_raw(garbage(&mut random, vandal.requester()), b"junk");
        sent += 1;
        assert!(sent < 200_000, "the crasher stopped being restarted");
    }

    // The operator is still obeyed.
    let commander = Commander::new(&broker, "door-pi");
    let mut restart = commander.body("restart", Some("doorbot"));
    restart["session"] = session.clone();
    let mut attempts = 0;
    let replies = wait_for("the operator's restart to get through", TIMEOUT, || {
        // A command may be shed while the agent's queue is full of garbage: a fresh one is
        // sent until one is accepted (a later one may then find it busy), and the outcome is
        // that one's.
        let all: Vec<_> = commander
            .all_replies()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        if let Some(accepted) = all.iter().find(|r| r.status == ReplyStatus::Accepted) {
            return all
                .iter()
                .find(|r| r.cmd_id == accepted.cmd_id && r.status.is_final())
                .cloned();
        }
        attempts += 1;
        restart["cmd_id"] = uuid::Uuid::new_v4().to_string().into();
        let envelope = respawn_tests::mqtt::envelope(&restart, Some(&alice));
        commander.send_raw(envelope, b"op");
        None
    });
    assert_eq!(replies.status, ReplyStatus::Succeeded, "{replies:?}");
    assert_eq!(replies.old_pid, Some(doorbot));

    // Every event arrived, in order, none dropped, and the crasher's restarts count up one by
    // one: no crash went unreported.
    let seen = watcher.wait("the operator's restart in the event stream", |messages| {
        let events = events(messages);
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Command { cmd_id, .. } if *cmd_id == replies.cmd_id))
            .then_some(events)
    });
    for pair in seen.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "a gap in the events");
    }
    assert!(seen.iter().all(|e| e.dropped_before == 0));
    let restarts = crashes(&seen);
    assert!(restarts.len() >= 20, "{restarts:?}");
    for pair in restarts.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "crashes {restarts:?}");
    }
    let state = agent.status("crasher").state;
    assert!(
        ["running", "backoff"].contains(&state.as_str()),
        "still supervised: {state}"
    );

    // The flood did not become a flood of audit events or log lines: past a budget per minute
    // (30 audits, 10 warnings of each kind), unauthenticated rejections are only answered.
    let minutes = flood_started.elapsed().as_secs() / 60 + 2;
    let audits = seen
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Command { requester, .. } if requester == vandal.requester()))
        .count() as u64;
    assert!((1..=30 * minutes).contains(&audits), "{audits} audits");
    let log = agent.log();
    let rejected_lines = log.matches("remote command rejected").count() as u64;
    assert!(rejected_lines <= 30 * minutes, "{rejected_lines} lines");
    let shed_lines = log.matches("too many commands waiting").count() as u64;
    assert!(shed_lines <= 10 * minutes, "{shed_lines} lines");

    // What was not audited one by one is counted in an audit event, never twice (a broker may
    // drop some of a flood before the agent sees it), and commands shed are among the counts.
    // One more audit closes the books.
    let mut status = commander.body("status", None);
    status["session"] = session.clone();
    let last = commander.send_signed(&status, &alice);
    assert_eq!(last.last().unwrap().status, ReplyStatus::Succeeded);
    let all = watcher.wait("the last audit", |messages| {
        let events = events(messages);
        events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Command { cmd_id, .. } if *cmd_id == last[0].cmd_id))
            .then_some(events)
    });
    let mut audited = 0;
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    for event in &all {
        if let EventKind::Command {
            cmd_id, unaudited, ..
        } = &event.kind
        {
            if *cmd_id != last[0].cmd_id {
                audited += 1;
            }
            for (why, n) in unaudited {
                *counted.entry(why.clone()).or_default() += n;
            }
        }
    }
    let total: u64 = counted.values().sum();
    assert!(total > 0, "nothing counted");
    assert!(
        audited + total <= sent + attempts,
        "{audited} audited and {counted:?} counted of {sent} payloads and {attempts} attempts"
    );
    if shed_lines > 0 {
        assert!(counted.get("shed").is_some_and(|&n| n > 0), "{counted:?}");
    }

    // The agent never lost its connection: the same session, still online.
    let birth = retained(&broker, "respawn/v1/door-pi/state")[0].json();
    assert_eq!(birth["state"], "online");
    assert_eq!(birth["session"], session, "never reconnected");
    assert!(respawn_tests::alive(agent.pid()));
    eprintln!(
        "flood: {sent} payloads, {} crashes reported meanwhile, {} replies to the vandal",
        restarts.len(),
        vandal.all_replies().len()
    );
}

/// Junk that names no command has a log budget of its own: it never uses up the audit budget,
/// so a forgery sent right after it is audited, and the junk is counted in the next audit.
fn noise_cannot_hide_a_forged_command_from_the_audit() {
    let broker = Broker::start();
    let alice = SigningKey::generate("alice").unwrap();
    let mallory = SigningKey::generate("mallory").unwrap();
    let config = format!(
        "[agent]\nid = \"door-pi\"\nstate_dir = \"state\"\n\n[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\n\n{}[[process]]\nname = \"doorbot\"\ncommand = [\"sleep\", \"1000\"]\n",
        alice.public_line(),
        mqtt_section(&broker),
    );
    let agent = TestAgent::start_quiet(&config);
    agent.wait_running("doorbot");
    let session = wait_for("the agent online", TIMEOUT, || {
        let birth = retained(&broker, "respawn/v1/door-pi/state")
            .first()?
            .json();
        (birth["state"] == "online").then(|| birth["session"].clone())
    });
    let watcher = Observer::connect(&broker, &["respawn/v1/door-pi/event"]);
    let vandal = Commander::new(&broker, "door-pi");
    for n in 0..100 {
        vandal.send_raw(format!("junk {n}").into_bytes(), b"junk");
    }
    let mut forged = vandal.body("stop", Some("doorbot"));
    forged["session"] = session.clone();
    let replies = vandal.send_signed(&forged, &mallory);
    assert_eq!(replies[0].status, ReplyStatus::Rejected);
    let audit = |cmd_id: &str| {
        watcher.wait(&format!("the audit of {cmd_id}"), |messages| {
            events(messages).into_iter().find_map(|e| match e.kind {
                EventKind::Command {
                    cmd_id: id,
                    unaudited,
                    ..
                } if id == cmd_id => Some(unaudited),
                _ => None,
            })
        })
    };
    // Audited one by one, with the junk before it counted.
    let unaudited = audit(&replies[0].cmd_id);
    assert_eq!(
        unaudited,
        [("malformed".to_owned(), 100)].into(),
        "{unaudited:?}"
    );
    // Counted once: the next audit has nothing more to say.
    let commander = Commander::new(&broker, "door-pi");
    let mut status = commander.body("status", None);
    status["session"] = session;
    let done = commander.send_signed(&status, &alice);
    assert!(audit(&done[0].cmd_id).is_empty());
    let log = agent.log();
    assert_eq!(
        log.matches("ignoring a command that cannot be answered")
            .count(),
        10,
        "the junk's own log budget"
    );
}

respawn_tests::on_both_brokers!(
    a_garbage_flood_does_not_disturb_supervision_or_events,
    noise_cannot_hide_a_forged_command_from_the_audit,
);
