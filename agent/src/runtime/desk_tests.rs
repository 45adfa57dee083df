//! The command desk without processes, sockets or clocks: what it admits, refuses, remembers
//! and answers, as effects.

use std::collections::BTreeSet;
use std::time::Duration;

use respawn_common::messages::{CommandEnvelope, Permission};
use respawn_common::signing::SigningKey;
use respawn_common::status::{ExitStatus, ProcessState, Stream};

use super::*;
use crate::config::{OperatorConfig, ProcessConfig};
use crate::supervisor::{Action, NoticeKind, OomEvidence};

const SESSION: &str = "0123456789abcdef";

/// An agent with a running `web` (pid 100) and a `db`, and 1200 lines of output from `web`.
struct Fake;

impl Agent for Fake {
    fn id(&self) -> &str {
        "door-pi"
    }

    fn containment(&self) -> &'static str {
        "cgroup"
    }

    fn contains(&self, process: &str) -> bool {
        ["web", "db"].contains(&process)
    }

    fn pid(&self, process: &str) -> Option<u32> {
        (process == "web").then_some(100)
    }

    fn statuses(&self) -> Vec<ProcessStatus> {
        let status = crate::runtime::report::bare_status;
        vec![
            status("db", ProcessState::Stopped),
            status("web", ProcessState::Running),
        ]
    }

    fn lines(&self, process: &str, n: usize) -> Vec<LogLine> {
        if process != "web" {
            return Vec::new();
        }
        (0..1200)
            .map(|i| LogLine {
                at: SystemTime::UNIX_EPOCH,
                stream: Stream::Stdout,
                text: i.to_string(),
            })
            .skip(1200usize.saturating_sub(n))
            .collect()
    }

    fn dropped_lines(&self, _: &str) -> u64 {
        7
    }

    fn lines_and_end(&self, process: &str, n: usize) -> (Vec<LogLine>, u64) {
        (self.lines(process, n), 1200)
    }

    fn numbered_since(&self, _: &str) -> Option<SystemTime> {
        Some(now())
    }

    fn is_followed(&self, process: &str) -> bool {
        process == "db"
    }
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn body(cmd_id: &str, command: &str, process: Option<&str>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "cmd_id": cmd_id, "agent": "door-pi", "requester": "laptop",
        "command": command, "expires_at": "2027-01-15T08:00:30Z", "session": SESSION,
    });
    if let Some(p) = process {
        body["process"] = p.into();
    }
    body
}

fn unsigned(body: &serde_json::Value) -> Inbound {
    Inbound {
        payload: serde_json::to_vec(&serde_json::json!({"v": 1, "body": body.to_string()}))
            .unwrap(),
        correlation: Some(b"corr".to_vec()),
    }
}

fn signed(key: &SigningKey, body: &serde_json::Value) -> Inbound {
    let text = body.to_string();
    let envelope = CommandEnvelope {
        v: Some(1),
        signature: Some(key.sign(text.as_bytes())),
        body: text,
    };
    Inbound {
        payload: serde_json::to_vec(&envelope).unwrap(),
        correlation: None,
    }
}

fn alice() -> SigningKey {
    SigningKey::parse("respawn-ed25519-private alice AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=")
        .unwrap()
}

/// Sends `inbound` to `desk` under a policy that takes unsigned commands and alice's.
fn remote(desk: &mut Desk, inbound: Inbound, mono: Instant) -> Vec<Effect> {
    let operators = vec![OperatorConfig {
        name: "alice".into(),
        key: alice().verifying_key(),
        allow: Permission::ALL.to_vec(),
        processes: vec!["*".into()],
    }];
    let policy = Policy {
        operators: &operators,
        allow_unsigned: true,
        session: SESSION,
    };
    desk.remote(inbound, policy, now(), mono, &Fake)
}

/// The replies among `effects`, as (status, reason).
fn replies(effects: &[Effect]) -> Vec<(ReplyStatus, Option<Reason>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Reply(_, reply) => Some((reply.status, reply.reason)),
            _ => None,
        })
        .collect()
}

fn audits(effects: &[Effect]) -> Vec<(&CommandReply, &BTreeMap<String, u64>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Audit {
                reply, unaudited, ..
            } => Some((reply, unaudited)),
            _ => None,
        })
        .collect()
}

/// web's new run, as the supervisor tells it.
fn web_started() -> Notice {
    Notice {
        name: "web".into(),
        kind: NoticeKind::Started {
            pid: 200,
            restarts: 0,
        },
    }
}

#[test]
fn a_restart_is_accepted_fed_held_and_answered_when_the_new_process_starts() {
    let mut desk = Desk::new();
    let effects = remote(
        &mut desk,
        unsigned(&body("c1", "restart", Some("web"))),
        Instant::now(),
    );
    assert_eq!(replies(&effects), [(ReplyStatus::Accepted, None)]);
    assert!(audits(&effects).is_empty(), "not final yet");
    assert!(matches!(effects.last(), Some(Effect::Feed(Input::Restart(p))) if p == "web"));

    // A second command on the same process while the first is under way.
    let busy = remote(
        &mut desk,
        unsigned(&body("c2", "stop", Some("web"))),
        Instant::now(),
    );
    assert_eq!(
        replies(&busy),
        [(ReplyStatus::Rejected, Some(Reason::Busy))]
    );
    assert_eq!(audits(&busy).len(), 1);

    let effects = desk.on_notice(&web_started(), "door-pi");
    let Some(Effect::Reply(request, reply)) = effects.first() else {
        panic!("{effects:?}");
    };
    assert_eq!(request.correlation.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        (reply.status, reply.old_pid, reply.new_pid),
        (ReplyStatus::Succeeded, Some(100), Some(200))
    );
    assert_eq!(audits(&effects).len(), 1, "the final outcome is audited");
}

#[test]
fn a_command_signed_with_a_key_the_agent_does_not_know_is_answered_as_unsigned_and_says_so() {
    let mut desk = Desk::new();
    let hub = SigningKey::generate("hub").unwrap();
    let effects = remote(
        &mut desk,
        signed(&hub, &body("c1", "status", None)),
        Instant::now(),
    );
    assert_eq!(
        replies(&effects),
        [
            (ReplyStatus::Accepted, None),
            (ReplyStatus::Succeeded, None)
        ]
    );
    let (audit, _) = audits(&effects)[0];
    let said = audit.message.as_deref().unwrap_or_default();
    assert!(
        said.starts_with(
            "signed as \"hub\", a key this agent has no [[operator]] for: taken as unsigned"
        ),
        "{said}"
    );
    // A signature that verifies says nothing of the kind.
    let effects = remote(
        &mut desk,
        signed(&alice(), &body("c2", "status", None)),
        Instant::now(),
    );
    assert_eq!(audits(&effects)[0].0.message, None);

    // A command whose success says what it did says it too, where respawnctl shows it.
    remote(
        &mut desk,
        signed(&hub, &body("c3", "restart", Some("web"))),
        Instant::now(),
    );
    let effects = desk.on_notice(&web_started(), "door-pi");
    let (audit, _) = audits(&effects)[0];
    let said = audit.message.as_deref().unwrap_or_default();
    assert!(
        said.starts_with("restarted web") && said.contains("; signed as \"hub\""),
        "{said}"
    );
    let warned = audit.warning.as_deref().unwrap_or_default();
    assert!(warned.starts_with("signed as \"hub\""), "{warned}");
}

#[test]
fn a_command_never_runs_twice_and_a_repeat_learns_what_the_first_came_to() {
    let mut desk = Desk::new();
    let status = body("c1", "status", None);
    let first = remote(&mut desk, unsigned(&status), Instant::now());
    assert_eq!(
        replies(&first),
        [
            (ReplyStatus::Accepted, None),
            (ReplyStatus::Succeeded, None)
        ]
    );
    let again = remote(&mut desk, unsigned(&status), Instant::now());
    assert_eq!(
        replies(&again),
        [(ReplyStatus::Rejected, Some(Reason::Replayed))]
    );
    assert!(!again.iter().any(|e| matches!(e, Effect::Feed(_))));
}

#[test]
fn status_and_logs_answer_at_once_within_their_bounds() {
    let mut desk = Desk::new();
    let effects = remote(
        &mut desk,
        unsigned(&body("s", "status", None)),
        Instant::now(),
    );
    let Some(Effect::Reply(_, done)) = effects
        .iter()
        .rev()
        .find(|e| matches!(e, Effect::Reply(..)))
    else {
        panic!("{effects:?}")
    };
    assert_eq!(done.processes.as_ref().map(Vec::len), Some(2));

    let logs = |desk: &mut Desk, id: &str, lines: Option<u64>| {
        let mut b = body(id, "logs", Some("web"));
        if let Some(n) = lines {
            b["lines"] = n.into();
        }
        let effects = remote(desk, unsigned(&b), Instant::now());
        effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Reply(_, r) if r.status == ReplyStatus::Succeeded => r.lines,
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(logs(&mut desk, "l1", None).len(), 50);
    assert!(logs(&mut desk, "l2", Some(0)).is_empty());
    let most = logs(&mut desk, "l3", Some(5000));
    assert_eq!(most.len(), 1000);
    assert_eq!(most[0].text, "200");
}

#[test]
fn a_follow_answers_with_the_last_lines_and_leases_the_stream_from_the_next() {
    let mut desk = Desk::new();
    let mut b = body("f1", "follow", Some("web"));
    b["lines"] = 3.into();
    let effects = remote(&mut desk, unsigned(&b), Instant::now());
    let Some(Effect::Reply(_, done)) = effects
        .iter()
        .find(|e| matches!(e, Effect::Reply(_, r) if r.status == ReplyStatus::Succeeded))
    else {
        panic!("{effects:?}")
    };
    let texts: Vec<&str> = done
        .lines
        .iter()
        .flatten()
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(texts, ["1197", "1198", "1199"]);
    assert_eq!(
        done.follow,
        Some(Following {
            seq: 1200,
            lease_secs: 30,
            numbered_since: Some(now()),
        })
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Follow { process, seq: 1200 } if process == "web"
    )));
    assert_eq!(
        audits(&effects).len(),
        1,
        "the first follow of a stream is audited"
    );
    // A follow of a stream that runs (db's, here) is answered, not audited; it is remembered,
    // so that a copy of it sent again (once the stream has ended, say) starts nothing.
    let renewal = body("r1", "follow", Some("db"));
    let effects = remote(&mut desk, unsigned(&renewal), Instant::now());
    assert!(audits(&effects).is_empty(), "{effects:?}");
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Follow { process, .. } if process == "db")));
    let again = remote(&mut desk, unsigned(&renewal), Instant::now());
    assert_eq!(
        replies(&again),
        [(ReplyStatus::Rejected, Some(Reason::Replayed))]
    );
    assert!(!again.iter().any(|e| matches!(e, Effect::Follow { .. })));
    // A follow that asks for lines reads them: audited and remembered, whoever else follows.
    let mut reading = body("r2", "follow", Some("db"));
    reading["lines"] = 5.into();
    let effects = remote(&mut desk, unsigned(&reading), Instant::now());
    assert_eq!(audits(&effects).len(), 1, "{effects:?}");
    assert_eq!(
        replies(&remote(&mut desk, unsigned(&reading), Instant::now())),
        [(ReplyStatus::Rejected, Some(Reason::Replayed))]
    );
    // A renewal needs no lines; one for a process the agent does not have leases nothing.
    let effects = remote(
        &mut desk,
        unsigned(&body("f2", "follow", Some("web"))),
        Instant::now(),
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Reply(_, r) if r.lines.as_deref() == Some(&[]))));
    let effects = remote(
        &mut desk,
        unsigned(&body("f3", "follow", Some("nope"))),
        Instant::now(),
    );
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::UnknownProcess))]
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Follow { .. })));
}

/// A restart under way when the agent is stopped fails as `shutting_down`, at once (it ended
/// as `unsuccessful`, "web is stopped", found by a protocol implementer); a stop under way
/// reaches its goal with the others.
#[test]
fn commands_the_shutdown_undoes_fail_as_shutting_down() {
    let mut desk = Desk::new();
    let effects = remote(
        &mut desk,
        unsigned(&body("c1", "restart", Some("web"))),
        Instant::now(),
    );
    assert_eq!(replies(&effects), [(ReplyStatus::Accepted, None)]);
    let effects = remote(
        &mut desk,
        unsigned(&body("c2", "stop", Some("db"))),
        Instant::now(),
    );
    assert_eq!(replies(&effects), [(ReplyStatus::Accepted, None)]);
    // A configuration change that has a process to start.
    let deadline = Instant::now() + Duration::from_secs(15);
    desk.await_starts(
        config_request("c3"),
        applied("c3"),
        vec!["new".into()],
        deadline,
    );
    let effects = desk.shut("door-pi");
    let mut answered: Vec<_> = replies(&effects);
    answered.sort_by_key(|(status, _)| *status as u8);
    assert_eq!(
        answered,
        [
            (ReplyStatus::Succeeded, None),
            (ReplyStatus::Failed, Some(Reason::ShuttingDown))
        ]
    );
    let why = not_started(&effects).expect("the change, answered as made");
    assert_eq!(why["new"], SHUTTING_DOWN);
    let audited: Vec<&str> = audits(&effects)
        .iter()
        .map(|(r, _)| r.cmd_id.as_str())
        .collect();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(
        audited.contains(&"c1") && audited.contains(&"c3"),
        "{audited:?}"
    );
    // The stop goes on to its goal, reached as the shutdown stops its process.
    let stopped = Notice {
        name: "db".into(),
        kind: NoticeKind::Stopped { removed: false },
    };
    let effects = desk.on_notice(&stopped, "door-pi");
    assert_eq!(replies(&effects), [(ReplyStatus::Succeeded, None)]);
    assert!(desk.fail_all("door-pi").is_empty(), "each answered once");
}

/// A restart asked on the control socket fails at the shutdown too, with the agent's words.
#[test]
fn a_local_restart_under_way_fails_at_the_shutdown() {
    let mut desk = Desk::new();
    let (answer, mut answered) = oneshot::channel();
    let effects = desk.local(
        Request::Restart {
            process: "web".into(),
        },
        answer,
        &Fake,
    );
    assert!(matches!(&effects[..], [Effect::Feed(Input::Restart(p))] if p == "web"));
    for effect in desk.shut("door-pi") {
        if let Effect::Answer(answer, reply) = effect {
            let _ = answer.send(reply);
        }
    }
    assert!(
        matches!(answered.try_recv(), Ok(Reply::Error { message }) if message == SHUTTING_DOWN),
        "answered at the shutdown"
    );
}

#[test]
fn a_stopping_agent_refuses_new_commands() {
    let mut desk = Desk::new();
    desk.shut("door-pi");
    let effects = remote(
        &mut desk,
        unsigned(&body("c", "start", Some("db"))),
        Instant::now(),
    );
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::ShuttingDown))]
    );
    let (answer, mut answered) = oneshot::channel();
    let effects = desk.local(
        Request::Start {
            process: "db".into(),
        },
        answer,
        &Fake,
    );
    let [Effect::Answer(answer, reply)] = <[Effect; 1]>::try_from(effects).unwrap() else {
        panic!()
    };
    let _ = answer.send(reply);
    assert!(
        matches!(answered.try_recv(), Ok(Reply::Error { message }) if message.contains("shutting down"))
    );
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(Request::Reload { file: None }, answer, &Fake);
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Error { message })] if message.contains("shutting down")),
        "no reload while the processes stop: {effects:?}"
    );
}

#[test]
fn local_requests_are_answered_or_held() {
    let mut desk = Desk::new();
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(
        Request::Logs {
            process: "nope".into(),
            lines: 5,
        },
        answer,
        &Fake,
    );
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Error { message })] if message.contains("unknown process"))
    );
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(
        Request::Restart {
            process: "wbe".into(),
        },
        answer,
        &Fake,
    );
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Error { message })] if message == "unknown process \"wbe\" (did you mean \"web\"?)"),
        "{effects:?}"
    );
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(
        Request::Logs {
            process: "web".into(),
            lines: 5,
        },
        answer,
        &Fake,
    );
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Logs { lines, dropped: 7, .. })] if lines.len() == 5)
    );
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(
        Request::Stop {
            process: "web".into(),
        },
        answer,
        &Fake,
    );
    assert!(matches!(&effects[..], [Effect::Feed(Input::Stop(p))] if p == "web"));
    let (answer, _rx) = oneshot::channel();
    let effects = desk.local(Request::Reload { file: None }, answer, &Fake);
    assert!(
        matches!(&effects[..], [Effect::Reload(_, None)]),
        "{effects:?}"
    );
    let effects = desk.fail_all("door-pi");
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Error { message })] if message.contains("shut down"))
    );
}

#[test]
fn refusals_past_the_budget_are_counted_and_the_latest_audited_when_the_window_ends() {
    let mut desk = Desk::new();
    let start = Instant::now();
    let mut audited = 0;
    for n in 0..40 {
        // Signed for another agent: refused, and answerable.
        let mut b = body(&format!("x{n}"), "status", None);
        b["agent"] = "garage-pi".into();
        let effects = remote(&mut desk, signed(&alice(), &b), start);
        assert_eq!(
            replies(&effects),
            [(ReplyStatus::Rejected, Some(Reason::WrongAgent))]
        );
        audited += audits(&effects).len();
    }
    assert_eq!(audited, 30);
    // Junk that names no command: counted, never audited on its own.
    for _ in 0..5 {
        let junk = Inbound {
            payload: b"junk".to_vec(),
            correlation: None,
        };
        assert!(remote(&mut desk, junk, start).is_empty());
    }
    let flush_at = desk.flush_at().unwrap();
    assert!(desk
        .flush(flush_at - Duration::from_secs(1), "door-pi")
        .is_empty());
    let effects = desk.flush(flush_at, "door-pi");
    let [(reply, unaudited)] = audits(&effects)[..] else {
        panic!("{effects:?}")
    };
    assert_eq!(reply.cmd_id, "x39", "the latest held back");
    assert_eq!(
        unaudited,
        &BTreeMap::from([("malformed".to_owned(), 5), ("wrong_agent".to_owned(), 9)])
    );
}

#[test]
fn a_signed_command_refused_for_what_it_asks_stays_refused_when_the_rules_change() {
    let mut desk = Desk::new();
    let alice_on = |processes: &str| {
        vec![OperatorConfig {
            name: "alice".into(),
            key: alice().verifying_key(),
            allow: Permission::ALL.to_vec(),
            processes: vec![processes.into()],
        }]
    };
    let send = |desk: &mut Desk, operators: &[OperatorConfig], inbound: Inbound| {
        let policy = Policy {
            operators,
            allow_unsigned: false,
            session: SESSION,
        };
        desk.remote(inbound, policy, now(), Instant::now(), &Fake)
    };
    let restart = body("x1", "restart", Some("web"));
    let effects = send(&mut desk, &alice_on("db"), signed(&alice(), &restart));
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::NotAllowed))]
    );
    // Her operator may act on web now; the refused command, sent again, still does not run.
    let effects = send(&mut desk, &alice_on("*"), signed(&alice(), &restart));
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::Replayed))]
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Feed(_))));

    // Junk is not remembered: a command bound to another session, or unsigned.
    let mut stale = body("x2", "restart", Some("web"));
    stale["session"] = "an-earlier-session".into();
    let effects = send(&mut desk, &alice_on("*"), signed(&alice(), &stale));
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::StaleSession))]
    );
    assert_eq!(
        desk.recent.replay("x2", "door-pi"),
        None,
        "a stale command is not remembered"
    );
    let effects = send(
        &mut desk,
        &alice_on("*"),
        unsigned(&body("x3", "restart", Some("web"))),
    );
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::Unsigned))]
    );
    assert_eq!(desk.recent.replay("x3", "door-pi"), None);
}

#[test]
fn a_full_replay_memory_renews_the_session() {
    let mut desk = Desk::new();
    let mut renewed = 0;
    // The memory holds RECENT_COMMANDS; the one after them starts a new session.
    for n in 0..=RECENT_COMMANDS {
        let effects = remote(
            &mut desk,
            unsigned(&body(&format!("c{n}"), "status", None)),
            Instant::now(),
        );
        renewed += effects
            .iter()
            .filter(|e| matches!(e, Effect::RenewSession))
            .count();
    }
    assert_eq!(renewed, 1);
}

#[test]
fn a_stale_session_makes_the_birth_go_out_again() {
    let mut desk = Desk::new();
    let mut b = body("old", "status", None);
    b["session"] = "an-old-session".into();
    let effects = remote(&mut desk, signed(&alice(), &b), Instant::now());
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Rejected, Some(Reason::StaleSession))]
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::RepublishBirth)));
}

#[test]
fn commands_on_a_process_that_goes_are_answered() {
    let mut desk = Desk::new();
    remote(
        &mut desk,
        unsigned(&body("c", "start", Some("db"))),
        Instant::now(),
    );
    let effects = desk.on_forget("db", "door-pi");
    assert_eq!(
        replies(&effects),
        [(ReplyStatus::Failed, Some(Reason::UnknownProcess))]
    );
    let config = ProcessConfig::new("db", vec!["true".into()]);
    let mut supervisor = Supervisor::new(Default::default(), 1);
    supervisor.step(Input::Configure(vec![config]), Instant::now());
    assert!(
        desk.settle(&supervisor, "door-pi").is_empty(),
        "nothing left to settle"
    );
}

fn config_request(cmd_id: &str) -> RemoteRequest {
    RemoteRequest {
        cmd_id: cmd_id.into(),
        requester: "laptop".into(),
        correlation: None,
        command: CommandName::ConfigApply,
        process: None,
        signer: Some("alice".into()),
        unchecked_signer: None,
    }
}

fn applied(cmd_id: &str) -> CommandReply {
    let mut reply = CommandReply::new(cmd_id, "door-pi", ReplyStatus::Succeeded);
    reply.config = Some(Default::default());
    reply
}

/// The processes that could not be started, as the final reply of `effects` says.
fn not_started(effects: &[Effect]) -> Option<BTreeMap<String, String>> {
    effects.iter().find_map(|e| match e {
        Effect::Reply(_, reply) if reply.status.is_final() => {
            Some(reply.config.clone().unwrap_or_default().not_started)
        }
        _ => None,
    })
}

#[test]
fn a_configuration_change_is_answered_once_what_it_starts_has_started_or_could_not() {
    let mut desk = Desk::new();
    let now = Instant::now();
    let mut supervisor = Supervisor::new(BTreeSet::from(["by-hand".to_owned()]), 1);
    let configs = vec![
        ProcessConfig::new("web", vec!["web".into()]),
        ProcessConfig::new("ghost", vec!["/no/such/program".into()]),
        ProcessConfig::new("by-hand", vec!["true".into()]),
    ];
    let starting = ["web", "ghost", "by-hand"].map(String::from).to_vec();
    let deadline = now + Duration::from_secs(15);
    desk.await_starts(config_request("c1"), applied("c1"), starting, deadline);
    supervisor.step(Input::Configure(configs), now);

    // by-hand stays stopped (stopped by hand before); the other two are on their way.
    assert!(desk.settle(&supervisor, "door-pi").is_empty());
    let started = Notice {
        name: "web".into(),
        kind: NoticeKind::Started {
            pid: 300,
            restarts: 0,
        },
    };
    assert!(
        desk.on_notice(&started, "door-pi").is_empty(),
        "ghost still to come"
    );
    let failed = Notice {
        name: "ghost".into(),
        kind: NoticeKind::SpawnFailed {
            error: "No such file or directory (os error 2)".into(),
            next_start: Some(now + Duration::from_secs(1)),
        },
    };
    let effects = desk.on_notice(&failed, "door-pi");
    let why = not_started(&effects).expect("answered");
    assert_eq!(
        why.keys().collect::<Vec<_>>(),
        ["by-hand", "ghost"],
        "web started"
    );
    assert_eq!(
        why["ghost"],
        "No such file or directory (os error 2); tried again after a backoff"
    );
    assert!(why["by-hand"].starts_with("stopped by hand"), "{why:?}");
    assert_eq!(audits(&effects).len(), 1, "the final reply is audited");
    assert!(
        desk.settle(&supervisor, "door-pi").is_empty(),
        "answered once"
    );
    assert_eq!(desk.flush_at(), None, "nothing waits any more");
}

#[test]
fn a_change_is_answered_at_its_deadline_and_never_holds_its_processes() {
    let mut desk = Desk::new();
    let now = Instant::now();
    let deadline = now + Duration::from_secs(15);
    desk.await_starts(
        config_request("c1"),
        applied("c1"),
        vec!["web".into()],
        deadline,
    );
    // A stop of a process the change restarts is taken: the reply will say what came of it.
    let stop = remote(&mut desk, unsigned(&body("c2", "stop", Some("web"))), now);
    assert_eq!(replies(&stop), [(ReplyStatus::Accepted, None)]);

    assert_eq!(desk.flush_at(), Some(deadline));
    assert_eq!(
        not_started(&desk.flush(deadline - Duration::from_millis(1), "door-pi")),
        None
    );
    let effects = desk.flush(deadline, "door-pi");
    let why = not_started(&effects).expect("answered at the deadline");
    assert!(why["web"].contains("had not ended"), "{why:?}");
}

#[test]
fn a_change_with_nothing_to_start_is_answered_at_once_and_one_cut_short_says_why() {
    let mut desk = Desk::new();
    let supervisor = Supervisor::new(Default::default(), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    desk.await_starts(config_request("c1"), applied("c1"), Vec::new(), deadline);
    let effects = desk.settle(&supervisor, "door-pi");
    assert_eq!(not_started(&effects), Some(BTreeMap::new()));

    desk.await_starts(
        config_request("c2"),
        applied("c2"),
        vec!["web".into()],
        deadline,
    );
    let effects = desk.fail_all("door-pi");
    let why = not_started(&effects).expect("answered");
    assert!(why["web"].contains("shut down"), "{why:?}");
}

/// A local stop of `web`, answered once it has stopped.
fn stop_web(desk: &mut Desk) -> Vec<Effect> {
    let (answer, _rx) = oneshot::channel();
    desk.local(
        Request::Stop {
            process: "web".into(),
        },
        answer,
        &Fake,
    );
    let stopped = Notice {
        name: "web".into(),
        kind: NoticeKind::Stopped { removed: false },
    };
    desk.on_notice(&stopped, "door-pi")
}

#[test]
fn a_stop_that_could_not_be_saved_says_it_holds_only_until_the_agent_restarts() {
    let mut desk = Desk::new();
    let stopped = Notice {
        name: "web".into(),
        kind: NoticeKind::Stopped { removed: false },
    };
    // Local: the stop is done, with the warning beside it.
    let (answer, _rx) = oneshot::channel();
    desk.local(
        Request::Stop {
            process: "web".into(),
        },
        answer,
        &Fake,
    );
    desk.stop_saved("web", Some(Err("No space left on device".into())));
    let effects = desk.on_notice(&stopped, "door-pi");
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Done { warning: Some(w), .. })] if w == "the stop could not be saved (No space left on device): web starts again when the agent does"),
        "{effects:?}"
    );
    // Over MQTT: the same, in the reply's message.
    remote(
        &mut desk,
        unsigned(&body("c1", "stop", Some("web"))),
        Instant::now(),
    );
    let effects = desk.on_notice(&stopped, "door-pi");
    let Some(Effect::Reply(_, reply)) = effects.first() else {
        panic!("{effects:?}");
    };
    assert_eq!(reply.status, ReplyStatus::Succeeded);
    assert_eq!(reply.message.as_deref(), Some("stopped web"));
    assert_eq!(
        reply.warning.as_deref(),
        Some("the stop could not be saved (No space left on device): web starts again when the agent does")
    );
    // A change that wrote nothing says nothing of it; once a save goes through, it holds.
    desk.stop_saved("other", None);
    let effects = stop_web(&mut desk);
    assert!(
        matches!(
            &effects[..],
            [Effect::Answer(
                _,
                Reply::Done {
                    warning: Some(_),
                    ..
                }
            )]
        ),
        "{effects:?}"
    );
    desk.stop_saved("other", Some(Ok(())));
    let effects = stop_web(&mut desk);
    assert!(
        matches!(
            &effects[..],
            [Effect::Answer(_, Reply::Done { warning: None, .. })]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_command_undone_by_a_later_one_says_so() {
    let at = Instant::now();
    let mut supervisor = Supervisor::new(Default::default(), 1);
    let config = ProcessConfig::new("web", vec!["server".into()]);
    supervisor.step(Input::Configure(vec![config]), at);
    supervisor.step(
        Input::Spawned {
            name: "web".into(),
            pid: 10,
        },
        at,
    );
    let mut desk = Desk::new();
    // Each requester waits for its answer (a local one that went away is forgotten).
    let request = |desk: &mut Desk, request: Request| {
        let (answer, waiting) = oneshot::channel();
        desk.local(request, answer, &Fake);
        waiting
    };
    let exit = |supervisor: &mut Supervisor, pid: u32| {
        supervisor.step(
            Input::Exited {
                name: "web".into(),
                pid,
                status: ExitStatus::Code { code: 0 },
                oom: OomEvidence::None,
                ended: at,
            },
            at,
        );
    };
    let answer = |effects: &[Effect]| match effects {
        [Effect::Answer(_, Reply::Error { message })] => message.clone(),
        other => panic!("{other:?}"),
    };

    // A stop, then a restart before the process ended: it runs again.
    let _stop = request(
        &mut desk,
        Request::Stop {
            process: "web".into(),
        },
    );
    supervisor.step(Input::Stop("web".into()), at);
    let _restart = request(
        &mut desk,
        Request::Restart {
            process: "web".into(),
        },
    );
    supervisor.step(Input::Restart("web".into()), at);
    exit(&mut supervisor, 10);
    let started = supervisor.step(
        Input::Spawned {
            name: "web".into(),
            pid: 11,
        },
        at,
    );
    let notices: Vec<Notice> = started
        .into_iter()
        .filter_map(|a| match a {
            Action::Emit(notice) => Some(notice),
            _ => None,
        })
        .collect();
    for notice in &notices {
        desk.on_notice(notice, "door-pi");
    }
    assert_eq!(
        answer(&desk.settle(&supervisor, "door-pi")),
        "web is running: a start or restart that came later took over"
    );

    // A restart, then a stop before the new process started: it stays stopped.
    let _restart = request(
        &mut desk,
        Request::Restart {
            process: "web".into(),
        },
    );
    supervisor.step(Input::Restart("web".into()), at);
    let _stop = request(
        &mut desk,
        Request::Stop {
            process: "web".into(),
        },
    );
    supervisor.step(Input::Stop("web".into()), at);
    exit(&mut supervisor, 11);
    let effects = desk.on_notice(
        &Notice {
            name: "web".into(),
            kind: NoticeKind::Stopped { removed: false },
        },
        "door-pi",
    );
    assert!(
        matches!(&effects[..], [Effect::Answer(_, Reply::Done { .. })]),
        "the stop is done: {effects:?}"
    );
    assert_eq!(
        answer(&desk.settle(&supervisor, "door-pi")),
        "web is stopped: a stop that came later took over"
    );

    // A stop, then a start whose process ended at once: it waits to start again.
    supervisor.step(Input::Start("web".into()), at);
    let spawned = |supervisor: &mut Supervisor, pid: u32| {
        supervisor.step(
            Input::Spawned {
                name: "web".into(),
                pid,
            },
            at,
        )
    };
    spawned(&mut supervisor, 12);
    let _stop = request(
        &mut desk,
        Request::Stop {
            process: "web".into(),
        },
    );
    supervisor.step(Input::Stop("web".into()), at);
    supervisor.step(Input::Start("web".into()), at);
    exit(&mut supervisor, 12);
    let mut actions = spawned(&mut supervisor, 13);
    actions.extend(supervisor.step(
        Input::Exited {
            name: "web".into(),
            pid: 13,
            status: ExitStatus::Code { code: 1 },
            oom: OomEvidence::None,
            ended: at,
        },
        at,
    ));
    for action in actions {
        if let Action::Emit(notice) = action {
            desk.on_notice(&notice, "door-pi");
        }
    }
    assert_eq!(
        answer(&desk.settle(&supervisor, "door-pi")),
        "web is waiting to start again: a start or restart that came later took over"
    );
}
