//! Commands from the network: checking an envelope before anything runs — parsing, the
//! operator's signature, the agent's name, its session, expiry, and what the operator may do —
//! and remembering recent commands so that none runs twice. Pure logic; the runtime acts on
//! the verdicts.
//!
//! Every byte here comes from the network: nothing in it can make the agent panic, and nothing
//! in it is ever executed — a command can only name a process of the configuration.

use std::collections::HashMap;
use std::time::SystemTime;

use respawn_common::ids::{validate_agent_id, validate_process_name};
use respawn_common::messages::{
    CommandBody, CommandEnvelope, CommandName, CommandReply, Permission, Reason, ReplyStatus,
    VERSION,
};
use respawn_common::pattern::glob;
use respawn_common::signing::ALGORITHM;
use respawn_common::topics::validate_requester;
use serde_json::Value;

use crate::config::OperatorConfig;

/// The most lines a `logs` command returns, whatever it asks for.
pub use respawn_common::messages::MAX_LOG_LINES;

/// Lines a `logs` command returns when it does not say.
pub const DEFAULT_LOG_LINES: usize = 50;

/// Explanations are cut to this many characters: they can quote what a sender sent.
const MAX_MESSAGE: usize = 300;

fn bounded(message: String) -> String {
    respawn_common::text::cut(&message, MAX_MESSAGE)
}

/// Whom the agent takes commands from.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub operators: &'a [OperatorConfig],
    pub allow_unsigned: bool,
    /// The agent's current session, from its latest birth message.
    pub session: &'a str,
}

/// A command that may run, and the operator who signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub body: CommandBody,
    pub signer: Option<String>,
    /// Whom a signature this agent has no key for names, taken as unsigned.
    pub unchecked_signer: Option<String>,
}

/// A command that may not run, with whatever could be read of who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub cmd_id: Option<String>,
    pub requester: Option<String>,
    pub command: CommandName,
    pub process: Option<String>,
    pub signer: Option<String>,
    pub reason: Reason,
    pub message: String,
    /// Signed by an operator for this agent and its current session: the sender's own
    /// command, not a capture or junk. Its refusal is remembered like an admitted command,
    /// so that a capture of it stays refused should what refused it change (a process
    /// added, an `allow` widened).
    pub for_this_session: bool,
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
    policy: Policy<'_>,
) -> Result<Admitted, Box<Rejection>> {
    let envelope: CommandEnvelope = serde_json::from_slice(payload).map_err(|e| {
        let (cmd_id, requester) = salvage_ids(payload);
        malformed(cmd_id, requester, format!("not a command envelope: {e}"))
    })?;
    let body: CommandBody = serde_json::from_str(&envelope.body).map_err(|e| {
        // From the body, or else from the envelope beside it.
        let (cmd_id, requester) = salvage_ids(payload);
        malformed(cmd_id, requester, format!("not a command body: {e}"))
    })?;
    // Whatever is echoed back (in replies and audit events) must be small and well-formed.
    if !fits_cmd_id(&body.cmd_id) {
        let message = format!("cmd_id must have 1 to {MAX_CMD_ID_CHARS} characters");
        return Err(malformed(None, None, message));
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
    let ids = (Some(body.cmd_id.clone()), Some(body.requester.clone()));
    // A later version may mean something else by the same fields: refused, not guessed at.
    if envelope.v != Some(VERSION) {
        let said = match envelope.v {
            None => "no protocol version (\"v\")".to_owned(),
            Some(v) => format!("protocol version {v}"),
        };
        let message = format!("{said}: this agent speaks version {VERSION}");
        return Err(malformed(ids.0, ids.1, message));
    }
    if let Err(e) = validate_agent_id(&body.agent) {
        return Err(malformed(
            ids.0,
            ids.1,
            format!("agent is not a valid agent id: it {e}"),
        ));
    }
    if let Some(Err(e)) = body.process.as_deref().map(validate_process_name) {
        return Err(malformed(
            ids.0,
            ids.1,
            format!("process is not a valid process name: it {e}"),
        ));
    }

    let signer = authenticate(&envelope, &policy);
    let reject = |reason: Reason, message: String| {
        Box::new(Rejection {
            cmd_id: Some(body.cmd_id.clone()),
            requester: Some(body.requester.clone()),
            command: body.command,
            process: body.process.clone(),
            signer: signer.as_ref().ok().and_then(|s| s.map(|o| o.name.clone())),
            reason,
            message: bounded(message),
            for_this_session: false,
        })
    };
    let operator = match &signer {
        Ok(operator) => *operator,
        Err((reason, message)) => return Err(reject(*reason, message.clone())),
    };
    if body.agent != agent {
        return Err(reject(
            Reason::WrongAgent,
            format!(
                "the command is for agent {:?}, this is {agent:?}",
                body.agent
            ),
        ));
    }
    // A signed command must name the current session: a captured one cannot be replayed
    // after the agent reconnected or restarted, whatever its clock says.
    let session_required = operator.is_some();
    match body.session.as_deref() {
        // (Empty while disconnected: nothing is bound to that.)
        Some(s) if !s.is_empty() && s == policy.session => {}
        None if !session_required => {}
        _ => {
            return Err(reject(
                Reason::StaleSession,
                "the command is not bound to this agent's current session; read `session` from its birth message".into(),
            ))
        }
    }
    let refuse = |reason: Reason, message: String| {
        let mut rejection = reject(reason, message);
        rejection.for_this_session = operator.is_some();
        rejection
    };
    if body.expires_at < now {
        return Err(refuse(
            Reason::Expired,
            "the command expired before it arrived".into(),
        ));
    }
    let Some(permission) = body.command.permission() else {
        return Err(refuse(Reason::UnknownCommand, "unknown command".into()));
    };
    match (body.command.needs_process(), body.process.as_deref()) {
        (false, _) => {}
        (true, None) => {
            return Err(refuse(
                Reason::Malformed,
                format!("{} needs a process", body.command.as_str()),
            ))
        }
        (true, Some(p)) if !is_configured(p) => {
            return Err(refuse(
                Reason::UnknownProcess,
                format!("no process {p:?} in this agent's configuration"),
            ))
        }
        (true, Some(_)) => {}
    }
    // Configuring chooses what runs on the device: never on the word of an unsigned message,
    // whatever `allow_unsigned_commands` says.
    if permission == Permission::Configure && operator.is_none() {
        // Signed with a key it does not know, taken as unsigned: the signer wants to hear why.
        let unknown_signer = match &envelope.signature {
            Some(signature) => format!("; {}", no_operator(&signature.key)),
            None => String::new(),
        };
        return Err(refuse(
            Reason::Unsigned,
            format!(
                "{} must be signed by an operator allowed to configure{unknown_signer}",
                body.command.as_str()
            ),
        ));
    }
    if let Some(operator) = operator {
        if !operator.allow.contains(&permission) {
            let (command, needed) = (body.command.as_str(), permission.as_str());
            // `follow` is allowed as `logs`: the name to put in the list is said as such.
            let takes = match command == needed {
                true => String::new(),
                false => format!(", which {command} needs"),
            };
            return Err(refuse(
                Reason::NotAllowed,
                format!(
                    "{} may not send {command} (its allow list in this agent's [[operator]] has no {needed:?}{takes})",
                    operator.name,
                ),
            ));
        }
        if let Some(process) = body.process.as_deref() {
            if !operator.processes.iter().any(|g| glob(g, process)) {
                return Err(refuse(
                    Reason::NotAllowed,
                    format!("{} may not act on {process} (its `processes` in this agent's [[operator]] do not match it)", operator.name),
                ));
            }
        }
    }
    let unchecked_signer = match operator {
        Some(_) => None,
        None => envelope.signature.map(|signature| signature.key),
    };
    Ok(Admitted {
        signer: operator.map(|o| o.name.clone()),
        unchecked_signer,
        body,
    })
}

const NO_OPERATORS: &str =
    "this agent takes no commands: it has no [[operator]] and does not allow unsigned ones";

/// Why a signature by `name` does not count here, and how to make it count.
fn no_operator(name: &str) -> String {
    format!("this agent has no [[operator]] {name:?}: add the line from its .pub file to the agent's configuration and reload the agent (SIGHUP)")
}

/// Who signed the envelope: `Ok(None)` for an unsigned command this agent takes,
/// `Ok(Some(operator))` for a valid signature, else the rejection.
fn authenticate<'p>(
    envelope: &CommandEnvelope,
    policy: &Policy<'p>,
) -> Result<Option<&'p OperatorConfig>, (Reason, String)> {
    let Some(signature) = &envelope.signature else {
        if policy.allow_unsigned {
            return Ok(None);
        }
        let message = if policy.operators.is_empty() {
            NO_OPERATORS
        } else {
            "this agent takes only signed commands (respawnctl signs with --key FILE, RESPAWN_KEY or signing_key; `respawnctl keygen` makes a key)"
        };
        return Err((Reason::Unsigned, message.into()));
    };
    // A signature this agent has no key for is no better than none, and no worse: where
    // unsigned commands are taken, so is this one, as unsigned. (A known name whose signature
    // fails is a forgery, and refused below whatever the policy.)
    let known = policy.operators.iter().any(|o| o.name == signature.key);
    if !known && policy.allow_unsigned {
        return Ok(None);
    }
    if policy.operators.is_empty() {
        return Err((Reason::UnknownKey, NO_OPERATORS.into()));
    }
    if signature.alg != ALGORITHM {
        return Err((
            Reason::BadSignature,
            format!("unsupported signature algorithm {:?}", signature.alg),
        ));
    }
    let Some(operator) = policy.operators.iter().find(|o| o.name == signature.key) else {
        return Err((Reason::UnknownKey, no_operator(&signature.key)));
    };
    if !operator
        .key
        .verify(envelope.body.as_bytes(), &signature.value)
    {
        return Err((
            Reason::BadSignature,
            format!(
                "the signature of {:?} does not verify: the body was changed on the way, or it was signed with another key than the one this agent has for {:?} (compare its [[operator]] public_key with the .pub that respawnctl keygen wrote)",
                operator.name, operator.name
            ),
        ));
    }
    Ok(Some(operator))
}

/// The longest `cmd_id` echoed back in replies and audit events.
const MAX_CMD_ID_CHARS: usize = 128;

fn fits_cmd_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_CMD_ID_CHARS
}

fn malformed(cmd_id: Option<String>, requester: Option<String>, message: String) -> Box<Rejection> {
    Box::new(Rejection {
        cmd_id: cmd_id.filter(|id| fits_cmd_id(id)),
        requester: requester.filter(|r| validate_requester(r).is_ok()),
        command: CommandName::Unknown,
        process: None,
        signer: None,
        reason: Reason::Malformed,
        message: bounded(message),
        for_this_session: false,
    })
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
    // The body as an object rather than a string is wrong, but answerable.
    let inner = match map.get("body") {
        Some(Value::String(body)) => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(inner)) => Some(inner),
            _ => None,
        },
        Some(Value::Object(inner)) => Some(inner.clone()),
        _ => None,
    };
    // Each from the body, or else from the envelope beside it.
    let id = |key: &str| {
        let in_body = inner.as_ref().and_then(|inner| field(inner, key));
        in_body.or_else(|| field(&map, key))
    };
    (id("cmd_id"), id("requester"))
}

/// The latest reply to each recent command, by `cmd_id`, without large results. A command
/// runs at most once: any repeat is rejected as replayed, with what happened the first time.
#[derive(Debug)]
pub struct RecentCommands {
    replies: HashMap<String, CommandReply>,
    capacity: usize,
}

/// What [`RecentCommands::record`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Memory {
    Kept,
    Full,
}

impl RecentCommands {
    pub fn new(capacity: usize) -> Self {
        Self {
            replies: HashMap::new(),
            capacity,
        }
    }

    /// The rejection of a repeat of `cmd_id`, if it was seen.
    pub fn replay(&self, cmd_id: &str, agent: &str) -> Option<CommandReply> {
        let earlier = self.replies.get(cmd_id)?;
        let then = match (earlier.status, &earlier.message) {
            (ReplyStatus::Accepted, _) => "it is under way".to_owned(),
            (status, Some(message)) => format!("it {}: {message}", status_word(status)),
            (status, None) => format!("it {}", status_word(status)),
        };
        let mut reply = CommandReply::rejected(
            cmd_id,
            agent,
            Reason::Replayed,
            format!("this cmd_id was already received; {then}"),
        );
        reply.old_pid = earlier.old_pid;
        reply.new_pid = earlier.new_pid;
        Some(reply)
    }

    /// Remembers `reply` as the latest to its admitted command (the rejection of a repeat
    /// leaves the first one's outcome in place). Returns [`Memory::Full`] when the memory was
    /// full and has been emptied to take it: the caller must start a new session, so that no
    /// signed command it forgot can come back.
    pub fn record(&mut self, reply: &CommandReply) -> Memory {
        if reply.reason == Some(Reason::Replayed) {
            return Memory::Kept;
        }
        // What a repeat needs to learn is the outcome, not the payload.
        let mut compact = reply.clone();
        compact.lines = None;
        compact.processes = None;
        compact.config = None;
        compact.follow = None;
        let mut memory = Memory::Kept;
        if !self.replies.contains_key(&reply.cmd_id) && self.replies.len() >= self.capacity {
            self.replies.clear();
            memory = Memory::Full;
        }
        self.replies.insert(reply.cmd_id.clone(), compact);
        memory
    }
}

fn status_word(status: ReplyStatus) -> &'static str {
    match status {
        ReplyStatus::Succeeded => "succeeded",
        ReplyStatus::Failed => "failed",
        ReplyStatus::Rejected => "was rejected",
        ReplyStatus::Accepted | ReplyStatus::Unknown => "was accepted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use respawn_common::messages::{Signature, VERSION};
    use respawn_common::signing::SigningKey;
    use std::time::Duration;

    const SESSION: &str = "0123456789abcdef";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn alice() -> SigningKey {
        SigningKey::parse(
            "respawn-ed25519-private alice AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        )
        .unwrap()
    }

    fn operators() -> Vec<OperatorConfig> {
        vec![OperatorConfig {
            name: "alice".into(),
            key: alice().verifying_key(),
            allow: vec![Permission::Restart, Permission::Status],
            processes: vec!["door*".into()],
        }]
    }

    fn body(command: &str, process: Option<&str>) -> serde_json::Value {
        let mut body = serde_json::json!({
            "cmd_id": "c-1", "agent": "door-pi", "requester": "laptop",
            "command": command, "expires_at": "2027-01-15T08:00:30Z", "session": SESSION,
        });
        if let Some(p) = process {
            body["process"] = p.into();
        }
        body
    }

    fn unsigned(body: &serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"v": 1, "body": body.to_string()})).unwrap()
    }

    fn signed_by(key: &SigningKey, body: &serde_json::Value) -> Vec<u8> {
        let text = body.to_string();
        let envelope = CommandEnvelope {
            v: Some(VERSION),
            signature: Some(key.sign(text.as_bytes())),
            body: text,
        };
        serde_json::to_vec(&envelope).unwrap()
    }

    fn check_with(payload: &[u8], allow_unsigned: bool) -> Result<Admitted, Box<Rejection>> {
        let operators = operators();
        let policy = Policy {
            operators: &operators,
            allow_unsigned,
            session: SESSION,
        };
        admit(
            payload,
            "door-pi",
            now(),
            |p| p == "doorbot" || p == "db",
            policy,
        )
    }

    fn check(payload: &[u8]) -> Result<Admitted, Box<Rejection>> {
        check_with(payload, true)
    }

    fn reason(payload: &[u8]) -> Reason {
        check(payload).unwrap_err().reason
    }

    /// Each point where docs/protocol.md once disagreed with the agent.
    #[test]
    fn the_protocol_as_written() {
        // A body sent as an object, not a string: answered as malformed.
        let object = serde_json::json!({"v": 1, "body": body("status", None)});
        let rejection = check(&serde_json::to_vec(&object).unwrap()).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
        // A signed command without a session is not bound to this one.
        let mut sessionless = body("restart", Some("doorbot"));
        sessionless.as_object_mut().unwrap().remove("session");
        assert_eq!(
            check(&signed_by(&alice(), &sessionless))
                .unwrap_err()
                .reason,
            Reason::StaleSession
        );
        // An unsigned one may leave it out.
        assert!(check(&unsigned(&sessionless)).is_ok());
        // RFC 3339 in either case, with or without milliseconds.
        for expiry in ["2027-01-15t08:00:30z", "2027-01-15T08:00:30.250Z"] {
            let mut lower = body("status", None);
            lower["expires_at"] = expiry.into();
            assert!(check(&signed_by(&alice(), &lower)).is_ok(), "{expiry}");
        }
        // No upper bound on the expiry: a Pi's clock may be far behind.
        let mut far = body("status", None);
        far["expires_at"] = "2037-01-15T08:00:30Z".into();
        assert!(check(&signed_by(&alice(), &far)).is_ok());
    }

    #[test]
    fn a_valid_command_is_admitted() {
        let admitted = check(&unsigned(&body("restart", Some("doorbot")))).unwrap();
        assert_eq!(admitted.body.command, CommandName::Restart);
        assert_eq!(admitted.signer, None);
        let admitted = check_with(
            &signed_by(&alice(), &body("restart", Some("doorbot"))),
            false,
        )
        .unwrap();
        assert_eq!(admitted.signer.as_deref(), Some("alice"));
        assert!(check(&unsigned(&body("status", None))).is_ok());
    }

    #[test]
    fn every_rejection_has_its_reason() {
        assert_eq!(
            reason(&unsigned(&body("restart", Some("nope")))),
            Reason::UnknownProcess
        );
        assert_eq!(
            reason(&unsigned(&body("reboot", Some("doorbot")))),
            Reason::UnknownCommand
        );
        assert_eq!(reason(&unsigned(&body("stop", None))), Reason::Malformed);
        let mut other = body("stop", Some("doorbot"));
        other["agent"] = "garage-pi".into();
        assert_eq!(reason(&unsigned(&other)), Reason::WrongAgent);
        let mut old = body("stop", Some("doorbot"));
        old["expires_at"] = "2020-01-01T00:00:00Z".into();
        let rejection = check(&unsigned(&old)).unwrap_err();
        assert_eq!(rejection.reason, Reason::Expired);
        assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
    }

    #[test]
    fn signatures_sessions_and_permissions() {
        let secure = |payload: &[u8]| check_with(payload, false).map_err(|r| r.reason);
        let good = body("restart", Some("doorbot"));
        assert!(secure(&signed_by(&alice(), &good)).is_ok());
        assert_eq!(secure(&unsigned(&good)), Err(Reason::Unsigned));

        let mallory = SigningKey::generate("alice").unwrap();
        assert_eq!(
            secure(&signed_by(&mallory, &good)),
            Err(Reason::BadSignature),
            "a wrong key under a known name"
        );
        let stranger = SigningKey::generate("mallory").unwrap();
        assert_eq!(
            secure(&signed_by(&stranger, &good)),
            Err(Reason::UnknownKey)
        );
        // Where unsigned commands are taken, a key the agent does not know is taken as no
        // signature: the command runs, unsigned, and configuring stays refused.
        let open = |payload: &[u8]| check_with(payload, true);
        let taken = open(&signed_by(&stranger, &good)).expect("taken as unsigned");
        assert!(taken.signer.is_none());
        let configure = body("config_get", None);
        let refused = open(&signed_by(&stranger, &configure)).unwrap_err();
        assert_eq!(refused.reason, Reason::Unsigned);
        assert!(
            refused
                .message
                .contains("this agent has no [[operator]] \"mallory\""),
            "the signer hears why its signature did not count: {}",
            refused.message
        );
        let refused = open(&unsigned(&configure)).unwrap_err();
        assert_eq!(
            refused.message,
            "config_get must be signed by an operator allowed to configure"
        );
        assert_eq!(
            open(&signed_by(&mallory, &good))
                .map_err(|r| r.reason)
                .err(),
            Some(Reason::BadSignature),
            "a known name with a wrong key is refused however open the agent is"
        );

        // The signature covers the body's exact bytes.
        let mut tampered: serde_json::Value =
            serde_json::from_slice(&signed_by(&alice(), &good)).unwrap();
        tampered["body"] = good.to_string().replace("doorbot", "db").into();
        assert_eq!(
            secure(&serde_json::to_vec(&tampered).unwrap()),
            Err(Reason::BadSignature)
        );
        let mut weird: CommandEnvelope =
            serde_json::from_slice(&signed_by(&alice(), &good)).unwrap();
        weird.signature = Some(Signature {
            alg: "rsa".into(),
            ..weird.signature.unwrap()
        });
        assert_eq!(
            secure(&serde_json::to_vec(&weird).unwrap()),
            Err(Reason::BadSignature)
        );

        let mut stale = good.clone();
        stale["session"] = "an-old-session".into();
        assert_eq!(
            secure(&signed_by(&alice(), &stale)),
            Err(Reason::StaleSession)
        );
        let mut unbound = good.clone();
        unbound.as_object_mut().unwrap().remove("session");
        assert_eq!(
            secure(&signed_by(&alice(), &unbound)),
            Err(Reason::StaleSession),
            "signed commands need a session"
        );

        assert_eq!(
            secure(&signed_by(&alice(), &body("stop", Some("doorbot")))),
            Err(Reason::NotAllowed),
            "stop not allowed"
        );
        assert_eq!(
            secure(&signed_by(&alice(), &body("restart", Some("db")))),
            Err(Reason::NotAllowed),
            "db not matched"
        );
        let rejection =
            check_with(&signed_by(&alice(), &body("restart", Some("db"))), false).unwrap_err();
        assert_eq!(
            rejection.signer.as_deref(),
            Some("alice"),
            "the audit says who"
        );
        assert_eq!(
            rejection.message,
            "alice may not act on db (its `processes` in this agent's [[operator]] do not match it)",
            "and which setting refuses"
        );

        let follow = check_with(
            &signed_by(&alice(), &body("follow", Some("doorbot"))),
            false,
        );
        assert_eq!(
            follow.unwrap_err().message,
            "alice may not send follow (its allow list in this agent's [[operator]] has no \"logs\", which follow needs)"
        );

        let no_operators = Policy {
            operators: &[],
            allow_unsigned: false,
            session: SESSION,
        };
        let r = admit(&unsigned(&good), "door-pi", now(), |_| true, no_operators).unwrap_err();
        assert_eq!(r.reason, Reason::Unsigned);
        assert!(r.message.contains("takes no commands"));
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
        let mut wrong = body("stop", Some("doorbot"));
        wrong["lines"] = "many".into();
        let rejection = check(&unsigned(&wrong)).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
        let mut hostile = body("stop", Some("doorbot"));
        hostile["requester"] = "a/#".into();
        assert_eq!(check(&unsigned(&hostile)).unwrap_err().addressable(), None);
        // Without a `v` too (found by a protocol implementer: it was taken for version 1).
        for version in [None, Some(0), Some(2), Some(999)] {
            let good = body("stop", Some("doorbot"));
            let mut envelope = serde_json::json!({"body": good.to_string()});
            if let Some(version) = version {
                envelope["v"] = version.into();
            }
            let rejection = check(&serde_json::to_vec(&envelope).unwrap()).unwrap_err();
            assert_eq!(rejection.reason, Reason::Malformed, "v {version:?}");
            let said = match version {
                None => "no protocol version (\"v\")".to_owned(),
                Some(v) => format!("protocol version {v}"),
            };
            assert_eq!(
                rejection.message,
                format!("{said}: this agent speaks version 1"),
                "{rejection:?}"
            );
            assert_eq!(rejection.addressable(), Some(("c-1", "laptop")));
        }
        // A body that is no command, with the ids beside it: answered as the doc says (it
        // went unanswered, found by a protocol implementer).
        let beside = br#"{"v":1,"body":"garbage","cmd_id":"top-2","requester":"laptop"}"#;
        let rejection = check(beside).unwrap_err();
        assert_eq!(rejection.reason, Reason::Malformed);
        assert_eq!(rejection.addressable(), Some(("top-2", "laptop")));
        // Field by field: the body's cmd_id, the envelope's requester.
        let halves = br#"{"v":1,"body":"{\"cmd_id\":\"in-body\"}","requester":"laptop"}"#;
        let rejection = check(halves).unwrap_err();
        assert_eq!(rejection.addressable(), Some(("in-body", "laptop")));
        let huge = format!("{{\"v\":1,\"body\":\"{}\"}}", "x".repeat(200_000));
        assert_eq!(reason(huge.as_bytes()), Reason::Malformed);
    }

    #[test]
    fn echoed_fields_are_validated_and_explanations_bounded() {
        assert_eq!(
            reason(&unsigned(&body("restart", Some(&"a".repeat(5000))))),
            Reason::Malformed
        );
        let mut bad = body("restart", Some("doorbot"));
        bad["agent"] = "Not An Id".into();
        assert_eq!(reason(&unsigned(&bad)), Reason::Malformed);
        let mut long = body("logs", Some("doorbot"));
        long["lines"] = "x".repeat(10_000).into();
        let rejection = check(&unsigned(&long)).unwrap_err();
        assert!(rejection.message.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn a_repeat_is_rejected_as_replayed_with_the_earlier_outcome() {
        let mut recent = RecentCommands::new(2);
        assert!(recent.replay("a", "door-pi").is_none());
        let kept = recent.record(&CommandReply::new("a", "door-pi", ReplyStatus::Accepted));
        assert_eq!(kept, Memory::Kept);
        let replay = recent.replay("a", "door-pi").unwrap();
        assert_eq!(
            (replay.status, replay.reason),
            (ReplyStatus::Rejected, Some(Reason::Replayed))
        );
        assert!(replay.message.unwrap().ends_with("it is under way"));
        let mut done = CommandReply::new("a", "door-pi", ReplyStatus::Succeeded);
        done.message = Some("restarted doorbot: pid 1 → 2".into());
        done.new_pid = Some(2);
        done.lines = Some(Vec::new());
        assert_eq!(recent.record(&done), Memory::Kept);
        let repeat = CommandReply::rejected("a", "door-pi", Reason::Replayed, "again");
        assert_eq!(recent.record(&repeat), Memory::Kept);
        let replay = recent.replay("a", "door-pi").unwrap();
        assert_eq!(replay.new_pid, Some(2));
        assert!(replay
            .message
            .unwrap()
            .ends_with("it succeeded: restarted doorbot: pid 1 → 2"));
        let busy = CommandReply::rejected("b", "door-pi", Reason::Busy, "under way");
        assert_eq!(recent.record(&busy), Memory::Kept);
        assert!(
            recent.replay("b", "door-pi").is_some(),
            "a busy command does not run later either"
        );
        assert_eq!(
            recent.record(&CommandReply::new("c", "door-pi", ReplyStatus::Accepted)),
            Memory::Full,
            "full: the caller renews the session"
        );
        assert!(recent.replay("a", "door-pi").is_none());
        assert!(recent.replay("c", "door-pi").is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096)
        ))]

        /// Arbitrary bytes on the command topic never panic and never run anything.
        #[test]
        fn arbitrary_bytes_are_never_admitted(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            prop_assert!(check_with(&payload, false).is_err());
        }

        /// Arbitrary JSON envelopes around arbitrary bodies: never a panic; without a valid
        /// signature never admitted by a secure agent.
        #[test]
        fn forged_envelopes_are_never_admitted(
            cmd_id in ".{0,40}", agent in "[a-z-]{0,12}", requester in ".{0,20}",
            command in "(restart|stop|start|logs|status|[a-z]{0,8})",
            process in proptest::option::of("[A-Za-z0-9_.*/-]{0,20}"),
            session in proptest::option::of(".{0,20}"),
            expires in "(2027-01-15T08:00:30Z|2020-01-01T00:00:00Z|.{0,10})",
            key in ".{0,10}", value in "[A-Za-z0-9+/=]{0,90}",
            signed in any::<bool>(),
        ) {
            let body = serde_json::json!({
                "cmd_id": cmd_id, "agent": agent, "requester": requester, "command": command,
                "process": process, "session": session, "expires_at": expires,
            });
            let mut envelope = serde_json::json!({"v": 1, "body": body.to_string()});
            if signed {
                envelope["signature"] = serde_json::json!({"key": key, "alg": "ed25519", "value": value});
            }
            let payload = serde_json::to_vec(&envelope).unwrap();
            prop_assert!(check_with(&payload, false).is_err());
            let _ = check_with(&payload, true);
        }
    }
}
