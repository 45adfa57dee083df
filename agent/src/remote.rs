//! Commands from the network: checking an envelope before anything runs, and remembering the
//! replies to recent commands so that a repeated `cmd_id` gets the earlier reply instead of a
//! second run. Pure logic; the runtime acts on the verdicts.
//!
//! Every byte here comes from the network: nothing in it can make the agent panic, and nothing
//! in it is ever executed — a command can only name a process of the configuration.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use respawn_common::ids::{validate_agent_id, validate_process_name};
use respawn_common::messages::{CommandBody, CommandEnvelope, CommandName, CommandReply, Reason};
use respawn_common::topics::validate_requester;
use serde_json::Value;

/// The most lines a `logs` command returns, whatever it asks for.
pub const MAX_LOG_LINES: usize = 1000;

/// Lines a `logs` command returns when it does not say.
pub const DEFAULT_LOG_LINES: usize = 50;

/// Explanations are cut to this many characters: they can quote what a sender sent.
const MAX_MESSAGE: usize = 300;

fn bounded(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// A command that may not run, with whatever could be read of who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub cmd_id: Option<String>,
    pub requester: Option<String>,
    pub command: CommandName,
    pub process: Option<String>,
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    /// Whether a reply can be sent: it needs an id to match and a valid requester topic.
    pub fn addressable(&self) -> Option<(&str, &str)> {
        Some((self.cmd_id.as_deref()?, self.requester.as_deref()?))
    }
}

/// Reads and checks a command addressed to `agent`. `is_configured` says whether a process
/// name belongs to the configuration.
pub fn admit(
    payload: &[u8],
    agent: &str,
    now: SystemTime,
    is_configured: impl Fn(&str) -> bool,
) -> Result<CommandBody, Rejection> {
    let envelope: CommandEnvelope = serde_json::from_slice(payload).map_err(|e| {
        let (cmd_id, requester) = salvage_ids(payload);
        malformed(cmd_id, requester, format!("not a command envelope: {e}"))
    })?;
    let body: CommandBody = serde_json::from_str(&envelope.body).map_err(|e| {
        let (cmd_id, requester) = salvage_ids(envelope.body.as_bytes());
        malformed(cmd_id, requester, format!("not a command body: {e}"))
    })?;
    // Whatever is echoed back (in replies and audit events) must be small and well-formed.
    if body.cmd_id.is_empty() || body.cmd_id.chars().count() > 128 {
        return Err(malformed(
            None,
            None,
            "cmd_id must have 1 to 128 characters".into(),
        ));
    }
    if let Err(e) = validate_agent_id(&body.agent) {
        return Err(malformed(
            Some(body.cmd_id.clone()),
            Some(body.requester.clone()),
            format!("agent is not a valid agent id: it {e}"),
        ));
    }
    if let Some(Err(e)) = body.process.as_deref().map(validate_process_name) {
        return Err(malformed(
            Some(body.cmd_id.clone()),
            Some(body.requester.clone()),
            format!("process is not a valid process name: it {e}"),
        ));
    }
    let reject = |reason: Reason, message: String| Rejection {
        cmd_id: Some(body.cmd_id.clone()),
        requester: Some(body.requester.clone()),
        command: body.command,
        process: body.process.clone(),
        reason,
        message: bounded(message),
    };
    if body.cmd_id.is_empty() || body.cmd_id.len() > 128 {
        return Err(malformed(
            None,
            None,
            "cmd_id must have 1 to 128 characters".into(),
        ));
    }
    if let Err(e) = validate_requester(&body.requester) {
        return Err(malformed(
            Some(body.cmd_id.clone()),
            None,
            format!(
                "requester {:?} cannot name a reply topic: it {e}",
                body.requester
            ),
        ));
    }
    if body.agent != agent {
        return Err(reject(
            Reason::WrongAgent,
            format!(
                "the command is for agent {:?}, this is {agent:?}",
                body.agent
            ),
        ));
    }
    if body.expires_at < now {
        return Err(reject(
            Reason::Expired,
            "the command expired before it arrived".into(),
        ));
    }
    match body.command {
        CommandName::Unknown => {
            return Err(reject(Reason::UnknownCommand, "unknown command".into()));
        }
        CommandName::Status => {}
        CommandName::Restart | CommandName::Stop | CommandName::Start | CommandName::Logs => {
            match body.process.as_deref() {
                None => {
                    return Err(reject(
                        Reason::Malformed,
                        format!("{} needs a process", body.command.as_str()),
                    ))
                }
                Some(p) if !is_configured(p) => {
                    return Err(reject(
                        Reason::UnknownProcess,
                        format!("no process {p:?} in this agent's configuration"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(body)
}

fn malformed(cmd_id: Option<String>, requester: Option<String>, message: String) -> Rejection {
    Rejection {
        cmd_id: cmd_id.filter(|id| !id.is_empty() && id.chars().count() <= 128),
        requester: requester.filter(|r| validate_requester(r).is_ok()),
        command: CommandName::Unknown,
        process: None,
        reason: Reason::Malformed,
        message: bounded(message),
    }
}

/// The `cmd_id` and `requester` of a message that did not parse, where they can be read, so
/// that the sender still hears why. Looks inside an envelope's body too.
fn salvage_ids(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return (None, None);
    };
    let field = |map: &serde_json::Map<String, Value>, key: &str| {
        map.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    if let Some(Value::String(body)) = map.get("body") {
        if let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(body) {
            return (field(&inner, "cmd_id"), field(&inner, "requester"));
        }
    }
    (field(&map, "cmd_id"), field(&map, "requester"))
}

/// The latest reply to each recent command that changes something, by `cmd_id`, with who
/// sent it. Kept small: results that can be large (`logs`, `status`) are never kept, since
/// running those again is harmless.
#[derive(Debug)]
pub struct RecentCommands {
    replies: HashMap<String, (String, CommandReply)>,
    order: VecDeque<String>,
    capacity: usize,
}

/// What to do with a command whose `cmd_id` was seen before.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// New: run it.
    No,
    /// The same requester again: send it the earlier reply.
    Repeat(&'a CommandReply),
    /// Another requester reuses the id: reject it.
    Replayed,
}

impl RecentCommands {
    pub fn new(capacity: usize) -> Self {
        Self {
            replies: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn check(&self, cmd_id: &str, requester: &str) -> Seen<'_> {
        match self.replies.get(cmd_id) {
            None => Seen::No,
            Some((from, reply)) if from == requester => Seen::Repeat(reply),
            Some(_) => Seen::Replayed,
        }
    }

    /// Remembers `reply` as the latest to its command. Transient rejections are not kept: the
    /// same command may be tried again.
    pub fn record(&mut self, requester: &str, command: CommandName, reply: &CommandReply) {
        if matches!(command, CommandName::Logs | CommandName::Status)
            || matches!(reply.reason, Some(Reason::Busy | Reason::ShuttingDown))
        {
            return;
        }
        let entry = (requester.to_owned(), reply.clone());
        if self.replies.insert(reply.cmd_id.clone(), entry).is_none() {
            self.order.push_back(reply.cmd_id.clone());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.replies.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::messages::{ReplyStatus, VERSION};
    use std::time::Duration;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn body(command: &str, process: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "cmd_id": "c-1", "agent": "door-pi", "requester": "laptop",
            "command": command, "expires_at": "2027-01-15T08:00:30Z",
        });
        if let Some(p) = process {
            body["process"] = p.into();
        }
        body
    }

    fn envelope(body: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"v": 1, "body": body.to_string()})).unwrap()
    }

    fn check(payload: &[u8]) -> Result<CommandBody, Rejection> {
        admit(payload, "door-pi", now(), |p| p == "doorbot")
    }

    fn reason(payload: &[u8]) -> Reason {
        check(payload).unwrap_err().reason
    }

    #[test]
    fn a_valid_command_is_admitted() {
        let body = check(&envelope(&body("restart", Some("doorbot")))).unwrap();
        assert_eq!(body.command, CommandName::Restart);
        assert_eq!(body.process.as_deref(), Some("doorbot"));
        assert!(check(&envelope(&body_without_process("status"))).is_ok());
    }

    fn body_without_process(command: &str) -> serde_json::Value {
        body(command, None)
    }

    #[test]
    fn every_rejection_has_its_reason() {
        assert_eq!(
            reason(&envelope(&body("restart", Some("nope")))),
            Reason::UnknownProcess
        );
        assert_eq!(
            reason(&envelope(&body("reboot", Some("doorbot")))),
            Reason::UnknownCommand
        );
        assert_eq!(reason(&envelope(&body("stop", None))), Reason::Malformed);
        let mut other = body("stop", Some("doorbot"));
        other["agent"] = "garage-pi".into();
        assert_eq!(reason(&envelope(&other)), Reason::WrongAgent);
        let mut old = body("stop", Some("doorbot"));
        old["expires_at"] = "2020-01-01T00:00:00Z".into();
        let rejection = check(&envelope(&old)).unwrap_err();
        assert_eq!(rejection.reason, Reason::Expired);
        assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
    }

    #[test]
    fn garbage_is_malformed_and_answered_when_an_id_can_be_read() {
        for garbage in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"[]",
            b"{\"v\":1}",
            b"{\"body\":42}",
        ] {
            let rejection = check(garbage).unwrap_err();
            assert_eq!(rejection.reason, Reason::Malformed, "{garbage:?}");
            assert_eq!(rejection.addressable(), None, "{garbage:?}");
        }
        // A body with a wrong type, but readable ids: the sender is told.
        let mut wrong = body("stop", Some("doorbot"));
        wrong["lines"] = "many".into();
        let rejection = check(&envelope(&wrong)).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
        // A requester that cannot be a topic level is never replied to.
        let mut hostile = body("stop", Some("doorbot"));
        hostile["requester"] = "a/#".into();
        let rejection = check(&envelope(&hostile)).unwrap_err();
        assert_eq!(rejection.addressable(), None);
        // A huge body is still just malformed.
        let huge = format!("{{\"v\":1,\"body\":\"{}\"}}", "x".repeat(200_000));
        assert_eq!(reason(huge.as_bytes()), Reason::Malformed);
    }

    #[test]
    fn recent_replies_are_remembered_up_to_a_bound() {
        let mut recent = RecentCommands::new(2);
        for id in ["a", "b", "c"] {
            let reply = CommandReply::new(id, "door-pi", ReplyStatus::Accepted);
            recent.record("laptop", CommandName::Restart, &reply);
        }
        assert_eq!(recent.check("a", "laptop"), Seen::No, "evicted");
        let mut done = CommandReply::new("c", "door-pi", ReplyStatus::Succeeded);
        done.v = VERSION;
        recent.record("laptop", CommandName::Restart, &done);
        assert_eq!(recent.check("c", "laptop"), Seen::Repeat(&done));
        assert_eq!(recent.check("c", "mallory"), Seen::Replayed);
        assert!(
            matches!(recent.check("b", "laptop"), Seen::Repeat(_)),
            "updating c did not evict b"
        );
    }

    #[test]
    fn large_and_transient_replies_are_not_kept() {
        let mut recent = RecentCommands::new(10);
        recent.record(
            "l",
            CommandName::Logs,
            &CommandReply::new("logs", "a", ReplyStatus::Succeeded),
        );
        let busy = CommandReply::rejected("busy", "a", Reason::Busy, "under way");
        recent.record("l", CommandName::Stop, &busy);
        assert_eq!(recent.check("logs", "l"), Seen::No);
        assert_eq!(recent.check("busy", "l"), Seen::No);
    }

    #[test]
    fn echoed_fields_are_validated_and_explanations_bounded() {
        let mut bad = body("restart", Some(&"a".repeat(5000)));
        assert_eq!(reason(&envelope(&bad)), Reason::Malformed);
        bad = body("restart", Some("doorbot"));
        bad["agent"] = "Not An Id".into();
        assert_eq!(reason(&envelope(&bad)), Reason::Malformed);
        let mut long = body("logs", Some("doorbot"));
        long["lines"] = "x".repeat(10_000).into();
        let rejection = check(&envelope(&long)).unwrap_err();
        assert!(rejection.message.chars().count() <= MAX_MESSAGE + 1);
    }
}
