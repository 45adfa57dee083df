//! Live logs end to end: `respawnctl logs -f` prints the last lines and then every new line
//! in order, from a real agent over a real broker; the agent's stream is one for all its
//! followers, held to its rate bound however chatty the program and however many leases come,
//! and it stops once nobody renews the lease.

use std::time::{Duration, Instant};

use respawn_agent::control::{Reply, Request};
use respawn_common::messages::LogBatch;
use respawn_tests::broker::Broker;
use respawn_tests::mqtt::{online_session, Commander, Observer};
use respawn_tests::{mqtt_section, on_both_brokers, wait_for, wait_for_or, RunningCtl, TestAgent};

const COUNTER: &str = r#"
[[process]]
name = "counter"
command = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done"]
"#;

/// The number at the end of a printed line.
fn number(text: &str) -> u64 {
    text.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {text:?}"))
}

/// The number of the last line the agent holds of `process`.
fn last_written(agent: &TestAgent, process: &str) -> Option<u64> {
    match agent.request(Request::Logs {
        process: process.into(),
        lines: 1,
    }) {
        Reply::Logs { lines, .. } => lines.last().map(|l| number(&l.text)),
        other => panic!("{other:?}"),
    }
}

fn logs_follow_prints_every_new_line_in_order() {
    let broker = Broker::start();
    let agent = TestAgent::start(&format!("{}{COUNTER}", mqtt_section(&broker)));
    agent.wait_running("counter");
    online_session(&broker, "test");
    wait_for("some output", respawn_tests::TIMEOUT, || {
        last_written(&agent, "counter").filter(|n| *n >= 5)
    });
    for json in [false, true] {
        let before = last_written(&agent, "counter").expect("output");
        let mut args = vec!["logs", "-f", "test/counter", "-n", "3"];
        if json {
            args.push("--json");
        }
        let follow = RunningCtl::start(&broker, &args);
        let lines = follow.wait_lines(60);
        let numbers: Vec<u64> = lines
            .iter()
            .map(|line| match json {
                false => number(line),
                true => {
                    let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
                    assert_eq!(value["process"], "counter", "{value}");
                    number(value["text"].as_str().expect("text"))
                }
            })
            .collect();
        for pair in numbers.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "in order, none missing, none twice: {lines:#?}"
            );
        }
        assert!(
            numbers[0] + 3 > before,
            "starts with the last lines: {numbers:?} {before}"
        );
        assert!(
            numbers[numbers.len() - 1] > before + 40,
            "goes on with lines written after it started"
        );
        if json {
            let seqs: Vec<u64> = lines
                .iter()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{seqs:?}");
        }
        assert_eq!(follow.interrupt(), Some(0), "Ctrl-C ends it");
    }
}

on_both_brokers!(logs_follow_prints_every_new_line_in_order);

#[test]
fn logs_follow_goes_on_across_an_agent_restart_and_says_so() {
    let broker = Broker::start();
    follow_across_an_agent_restart(&mqtt_section(&broker), &broker, COUNTER);
}

/// Through the agent's own broker, which stops and starts with it, the new run's start is
/// told too: the broker keeps the follower's session across its restart.
#[test]
fn logs_follow_across_a_restart_of_the_agents_own_broker_tells_the_new_runs_start() {
    let port = respawn_tests::broker::free_port();
    let own = format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n\n");
    follow_across_an_agent_restart(&own, &Broker::attach(port), COUNTER);
}

/// The new run's count may be past where the old one stopped before the follower hears of
/// it (a program that says much as it starts): the numbers alone would hide its first lines.
#[test]
fn logs_follow_across_an_agent_restart_shows_the_new_runs_first_lines_however_many() {
    let broker = Broker::start();
    follow_across_an_agent_restart(
        &mqtt_section(&broker),
        &broker,
        r#"
[[process]]
name = "counter"
command = ["sh", "-c", "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo \"line $i\"; done; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done"]
"#,
    );
}

/// Follows `counter` of an agent, reporting as `mqtt` says to `broker`, that restarts with
/// `counter_again`, whose lines count from 1 again.
fn follow_across_an_agent_restart(mqtt: &str, broker: &Broker, counter_again: &str) {
    let config = format!("{mqtt}{COUNTER}");
    let mut agent = TestAgent::start(&config);
    agent.wait_running("counter");
    online_session(broker, "test");
    let follow = RunningCtl::start(broker, &["logs", "-f", "test/counter", "-n", "1"]);
    follow.wait_lines(20);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit();
    let config = format!("{mqtt}{counter_again}");
    let agent = TestAgent::start_in(agent.kill_hard(), &config);
    agent.wait_running("counter");
    let lines = wait_for("lines of the new run", respawn_tests::TIMEOUT, || {
        let lines: Vec<String> = follow.lines().into_iter().map(|(_, l)| l).collect();
        let note = lines
            .iter()
            .position(|l| l.contains("the agent restarted"))?;
        (lines.len() > note + 20).then(|| lines[note + 1..].to_vec())
    });
    // What happened to the process is told among its lines.
    let all: Vec<String> = follow.lines().into_iter().map(|(_, l)| l).collect();
    assert!(
        all.iter()
            .any(|l| l.starts_with("── counter exited SIGTERM after")
                && l.ends_with("(the agent stops)")),
        "{all:#?}"
    );
    // In the order it happened: the old run's end before the note, the new run's start after.
    let at = |what: &str| all.iter().position(|l| l.starts_with(what));
    let told = [
        at("── counter exited SIGTERM after"),
        at("── counter stopped"),
        at("(the agent restarted"),
        at("── counter started pid"),
    ];
    assert!(told.iter().all(Option::is_some), "{all:#?}");
    assert!(told.is_sorted(), "{told:?} in {all:#?}");
    let numbers: Vec<u64> = (lines.iter())
        .filter(|l| !l.starts_with("── "))
        .map(|l| number(l))
        .collect();
    assert_eq!(numbers[0], 1, "from the new run's first line: {lines:#?}");
    assert!(numbers.windows(2).all(|p| p[1] == p[0] + 1), "{numbers:?}");
    assert_eq!(follow.interrupt(), Some(0));
}

/// A crash and the restart after it are told among the lines, after the last words.
#[test]
fn logs_follow_tells_a_crash_and_the_restart_after_the_last_words() {
    let broker = Broker::start();
    let crasher = r#"
[[process]]
name = "crasher"
command = ["sh", "-c", "echo up; while [ ! -e crash ]; do sleep 0.05; done; rm crash; echo going down; exit 3"]
backoff = { initial = "200ms", max = "200ms" }
"#;
    let agent = TestAgent::start(&format!("{}{crasher}", mqtt_section(&broker)));
    agent.wait_running("crasher");
    online_session(&broker, "test");
    let follow = RunningCtl::start(&broker, &["logs", "-f", "test/crasher", "-n", "1"]);
    follow.wait_lines(1);
    std::fs::write(agent.dir().join("crash"), "").unwrap();
    let lines = wait_for_or(
        "the crash and the restart among the lines",
        respawn_tests::TIMEOUT,
        || {
            let lines: Vec<String> = follow.lines().into_iter().map(|(_, l)| l).collect();
            let up_again = lines.iter().skip(1).any(|l| l.ends_with("up"));
            up_again.then_some(lines)
        },
        || format!("printed: {:?}\nstderr: {}", follow.lines(), follow.stderr()),
    );
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix) || l.ends_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {lines:#?}"))
    };
    let (last_words, crashed, started) = (
        at("going down"),
        at("── crasher crashed exit 3 after"),
        at("── crasher started pid"),
    );
    assert!(
        last_words < crashed && crashed < started,
        "{lines:#?}\nstderr: {}",
        follow.stderr()
    );
    assert!(lines[crashed].contains(", restarting"), "{lines:#?}");
}

/// A followed program silent for a while, then saying one line: it comes at once, not with
/// the next renewal of the lease (ten seconds), while the program beside it writes nothing
/// either. The batch is due when a followed process writes; each line here is written after
/// the one before was printed, so only that wake-up brings it within the bound, far below
/// the renewal's (the bound is for correctness, not speed: a batch is due 100 ms after).
#[test]
fn logs_follow_prints_a_line_of_a_silent_program_when_it_is_written() {
    let broker = Broker::start();
    let speaker = r#"
[[process]]
name = "speaker"
command = ["sh", "-c", "echo up; n=0; while :; do if [ -e say ]; then rm say; n=$((n+1)); echo \"said $n\"; fi; sleep 0.05; done"]

[[process]]
name = "mute"
command = ["sleep", "100000"]
"#;
    let agent = TestAgent::start(&format!("{}{speaker}", mqtt_section(&broker)));
    agent.wait_running("speaker");
    online_session(&broker, "test");
    let follow = RunningCtl::start(&broker, &["logs", "-f", "test/speaker", "-n", "1"]);
    follow.wait_lines(1);
    for n in 1..=3 {
        std::fs::write(agent.dir().join("say"), "").unwrap();
        let said = format!("said {n}");
        wait_for_or(
            &format!("{said:?} well before the lease's renewal"),
            Duration::from_secs(3),
            || {
                follow
                    .lines()
                    .iter()
                    .any(|(_, l)| l.ends_with(&said))
                    .then_some(())
            },
            || format!("printed: {:?}\nstderr: {}", follow.lines(), follow.stderr()),
        );
    }
}

/// What a program says as the agent stops it reaches its followers before the agent is gone,
/// through a broker of the site and through the agent's own, which stops with it.
#[test]
fn logs_follow_shows_a_programs_last_words_at_the_agents_stop() {
    let broker = Broker::start();
    last_words_reach_the_follower(&mqtt_section(&broker), &broker);
}

#[test]
fn logs_follow_shows_a_programs_last_words_through_the_agents_own_broker() {
    let port = respawn_tests::broker::free_port();
    let own = format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n\n");
    last_words_reach_the_follower(&own, &Broker::attach(port));
}

fn last_words_reach_the_follower(mqtt: &str, broker: &Broker) {
    let door = r#"
[[process]]
name = "door"
command = ["sh", "-c", "trap 'echo closing the door; exit 0' TERM; echo open; while :; do sleep 0.05; done"]
"#;
    let mut agent = TestAgent::start(&format!("{mqtt}{door}"));
    agent.wait_running("door");
    online_session(broker, "test");
    let follow = RunningCtl::start(broker, &["logs", "-f", "test/door", "-n", "1"]);
    follow.wait_lines(1);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit();
    wait_for_or(
        "the program's last words at the follower",
        respawn_tests::TIMEOUT,
        || {
            let lines = follow.lines();
            lines
                .iter()
                .any(|(_, l)| l.ends_with("closing the door"))
                .then_some(())
        },
        || format!("printed: {:?}\nstderr: {}", follow.lines(), follow.stderr()),
    );
}

/// A follow whose process left the agent's configuration ends once the event of its removal
/// is told, saying so, instead of at its next renewal's refusal, up to 10 s later, or renewing
/// in vain every 10 s (each refusal in the agent's audit); what the program said as it was
/// stopped is printed before its exit.
#[test]
fn logs_follow_ends_when_its_process_leaves_the_configuration() {
    let broker = Broker::start();
    let events = Observer::connect(&broker, &["respawn/v1/test/event"]);
    let counter = r#"
[[process]]
name = "counter"
command = ["sh", "-c", "trap 'echo closing the door; exit 0' TERM; i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done"]
"#;
    let agent = TestAgent::start(&format!("{}{counter}", mqtt_section(&broker)));
    agent.wait_running("counter");
    online_session(&broker, "test");
    let mut follow = RunningCtl::start(&broker, &["logs", "-f", "test/counter", "-n", "1"]);
    follow.wait_lines(10);
    let other = "\n[[process]]\nname = \"other\"\ncommand = [\"sleep\", \"1000\"]\n";
    agent.rewrite_config(&format!("{}{other}", mqtt_section(&broker)));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(follow.wait_exit(), Some(2), "{}", follow.stderr());
    let ended = "respawnctl: test/counter left the agent's configuration; the follow ends";
    assert_eq!(
        follow.stderr().matches(ended).count(),
        1,
        "{}",
        follow.stderr()
    );
    // What happened to it before the end is told all the same, after its last words.
    let lines: Vec<String> = follow.lines().into_iter().map(|(_, l)| l).collect();
    let at = |said: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(said) || l.ends_with(said))
    };
    let last_words = at("closing the door");
    let exited = at("── counter exited");
    let stopped = at("── counter stopped as it left the configuration");
    assert!(
        last_words.is_some() && last_words < exited && exited < stopped,
        "{lines:#?}"
    );
    // A command audited after the follow ended: any refusal of its renewal came before it.
    let fence = Commander::new(&broker, "test");
    let restart = fence.body("restart", Some("other"));
    fence.send(&restart);
    let audits: Vec<serde_json::Value> =
        wait_for("the fence's audit", respawn_tests::TIMEOUT, || {
            let audits: Vec<serde_json::Value> = (events.messages().iter())
                .map(|m| m.json())
                .filter(|e| e["kind"] == "command")
                .collect();
            let fenced = audits.iter().any(|a| a["cmd_id"] == restart["cmd_id"]);
            fenced.then_some(audits)
        });
    let refused: Vec<&serde_json::Value> = (audits.iter())
        .filter(|a| a["command"] == "follow" && a["outcome"] != "succeeded")
        .collect();
    assert!(refused.is_empty(), "ended by a refusal: {refused:#?}");
}

/// The agent's documented bound for live output: 128 KiB a second of lines as they travel,
/// with bursts of up to 64 KiB.
const BYTES_PER_SECOND: f64 = 128.0 * 1024.0;
const BURST: f64 = 64.0 * 1024.0;
/// What a batch carries besides its lines: agent, process, seq, skipped.
const BATCH_OVERHEAD: usize = 120;

#[test]
fn one_bounded_stream_for_all_followers_that_stops_when_the_lease_lapses() {
    let broker = Broker::start();
    let agent = TestAgent::start_quiet(&format!(
        "{}[[process]]\nname = \"chatty\"\ncommand = [\"sh\", \"-c\", \"while :; do seq 100000 100300; sleep 0.01; done\"]\n",
        mqtt_section(&broker)
    ));
    agent.wait_running("chatty");
    online_session(&broker, "test");
    let stream = Observer::connect(&broker, &["respawn/v1/test/logs/chatty"]);
    let commander = Commander::new(&broker, "test");

    // Twenty followers at once, and junk among them.
    let mut last_lease = Instant::now();
    for i in 0..20 {
        let body = commander.body("follow", Some("chatty"));
        let replies = commander.send(&body);
        last_lease = Instant::now();
        let done = replies.last().expect("a reply");
        assert!(done.follow.is_some(), "{done:#?}");
        if i % 5 == 0 {
            for junk in [
                commander.body("follow", None),
                commander.body("follow", Some("nope")),
            ] {
                commander.send(&junk);
            }
        }
    }
    // The stream stops when the last lease lapses: no batch for two seconds.
    let batches: Vec<(Instant, usize, LogBatch)> =
        wait_for("the stream to stop", Duration::from_secs(60), || {
            let messages = stream.messages();
            let last = messages.last()?;
            (last.received.elapsed() > Duration::from_secs(2)).then(|| {
                messages
                    .iter()
                    .map(|m| {
                        let batch = serde_json::from_slice(&m.payload).expect("a batch");
                        (m.received, m.payload.len(), batch)
                    })
                    .collect()
            })
        });
    let (first_at, last_at) = (batches[0].0, batches[batches.len() - 1].0);
    assert!(
        last_at.saturating_duration_since(last_lease) <= Duration::from_secs(35),
        "stopped within 30 s of the last lease (+ slack): {:?}",
        last_at.saturating_duration_since(last_lease)
    );
    assert!(
        last_at.saturating_duration_since(last_lease) >= Duration::from_secs(25),
        "held the lease: {:?}",
        last_at.saturating_duration_since(last_lease)
    );

    // One stream, not twenty: every line once, in order, gaps counted.
    let mut next = batches[0].2.seq;
    let mut skipped = 0;
    let mut bytes = 0;
    for (_, size, batch) in &batches {
        assert_eq!(batch.seq, next + batch.skipped, "one stream, in order");
        next = batch.seq + batch.lines.len() as u64;
        skipped += batch.skipped;
        bytes += size.saturating_sub(BATCH_OVERHEAD);
    }
    assert!(
        skipped > 0,
        "a program this chatty goes over the bound, and the stream says so"
    );
    let span = last_at.duration_since(first_at).as_secs_f64();
    let allowed = BYTES_PER_SECOND * (span + 0.2) + BURST;
    assert!(
        (bytes as f64) <= allowed,
        "{bytes} bytes in {span:.1} s is over the bound ({allowed:.0})"
    );
    assert!(agent.status("chatty").pid.is_some(), "still supervised");
}

/// Lines the stream could not bring while the broker was away are filled in from the agent's
/// buffer once both are back: in order, none missing, none twice, and no word of a gap. The
/// follower comes back last (held with SIGSTOP), after the agent has a new session.
#[test]
fn logs_follow_fills_in_what_a_broker_outage_kept_from_the_stream() {
    let mut broker = Broker::mosquitto(respawn_tests::broker::PERSISTENT);
    let config = format!("{}{COUNTER}", mqtt_section(&broker));
    let agent = TestAgent::start(&config);
    agent.wait_running("counter");
    let first_session = online_session(&broker, "test");
    let follow = RunningCtl::start(&broker, &["logs", "-f", "test/counter", "-n", "1"]);
    follow.wait_lines(10);
    let follower = nix::unistd::Pid::from_raw(follow.pid() as i32);
    broker.stop();
    nix::sys::signal::kill(follower, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let shown = follow
        .lines()
        .last()
        .map(|(_, l)| number(l))
        .expect("lines");
    broker.resume();
    wait_for(
        "the agent back with a new session",
        respawn_tests::TIMEOUT,
        || (online_session(&broker, "test") != first_session).then_some(()),
    );
    wait_for("lines written meanwhile", respawn_tests::TIMEOUT, || {
        last_written(&agent, "counter").filter(|n| *n > shown + 50)
    });
    nix::sys::signal::kill(follower, nix::sys::signal::Signal::SIGCONT).unwrap();
    let lines = wait_for("lines after the outage", respawn_tests::TIMEOUT, || {
        let lines: Vec<String> = follow.lines().into_iter().map(|(_, l)| l).collect();
        let past = lines
            .iter()
            .any(|l| !l.starts_with('(') && number(l) > shown + 150);
        past.then_some(lines)
    });
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| match l.starts_with('(') {
            true => panic!("a gap was said: {l}\n{lines:#?}\n{}", follow.stderr()),
            false => number(l),
        })
        .collect();
    assert!(numbers.windows(2).all(|p| p[1] == p[0] + 1), "{numbers:?}");
    assert_eq!(follow.interrupt(), Some(0));
}

/// A follower back on the broker before the agent asks to fill its gap only once the agent is
/// back too: an ask sent while it is away would wait at the broker and reach it bound to its
/// old session, a `stale_session` refusal in its audit after every broker restart.
#[test]
fn logs_follow_asks_again_only_once_the_agent_is_back() {
    let mut broker = Broker::mosquitto(respawn_tests::broker::PERSISTENT);
    let audit = Observer::connect_persistent(&broker, "audit", &["respawn/v1/test/event"]);
    let config = format!("{}{COUNTER}", mqtt_section(&broker));
    let agent = TestAgent::start(&config);
    agent.wait_running("counter");
    online_session(&broker, "test");
    let follow = RunningCtl::start(&broker, &["logs", "-f", "test/counter", "-n", "1"]);
    follow.wait_lines(10);
    let follows = |messages: &[respawn_tests::mqtt::Message], outcome: &str| {
        let json = messages
            .iter()
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok());
        json.filter(|e| e["command"] == "follow" && e["outcome"] == outcome)
            .count()
    };
    audit.wait("the follow's audit", |m| {
        (follows(m, "succeeded") > 0).then_some(())
    });
    broker.stop();
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    broker.resume();
    wait_for(
        "respawnctl back on the broker",
        respawn_tests::TIMEOUT,
        || follow.stderr().contains("reconnected").then_some(()),
    );
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    audit.wait_connected();
    let back = follow.lines().len();
    follow.wait_lines(back + 20);
    // A command after the agent is back: its audit comes after that of anything that waited
    // for the agent at the broker.
    let out = respawn_tests::respawnctl(&broker, &["logs", "test/counter", "-n", "1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    audit.wait("the audit of a command sent after", |m| {
        let json = m
            .iter()
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok());
        json.into_iter()
            .any(|e| e["command"] == "logs")
            .then_some(())
    });
    assert_eq!(
        follows(&audit.messages(), "rejected"),
        0,
        "{}",
        follow.stderr()
    );
    assert_eq!(follow.interrupt(), Some(0));
}
