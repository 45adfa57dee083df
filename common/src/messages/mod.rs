//! The payloads of the MQTT protocol, version 1. Every message carries `"v": 1`.
//!
//! Readers are lenient by design, so that agents and controllers of different versions work
//! together: unknown fields are ignored, and an unknown event kind, presence, command or reply
//! status reads as `Unknown` instead of failing the whole message.

mod command;
mod config;
mod event;
mod state;

pub use command::*;
pub use config::*;
pub use event::*;
pub use state::*;

/// The protocol version written into every message.
pub const VERSION: u32 = 1;

fn version() -> u32 {
    VERSION
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most a reader (`respawnctl`, the hub, the alerter) takes of one agent's report, so
/// that an agent that misbehaves — or a stolen device, which can still publish under its
/// own topics — cannot make a reader hold more than a bounded amount for it: a process state
/// or an event larger than this is ignored (an agent's own are a few KiB: an exit's output
/// is cut to 4 KiB), and so is a process beyond the first [`MAX_PROCESSES_READ`] of an agent.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
pub const MAX_PROCESSES_READ: usize = 1000;

/// Why a process state or an event was not read.
#[derive(Debug, thiserror::Error)]
pub enum UnreadReport {
    #[error("{0} bytes: larger than any report an agent sends")]
    TooLarge(usize),
    #[error("a {field} of {bytes} bytes: longer than any agent's")]
    TooLong { field: &'static str, bytes: usize },
    #[error(transparent)]
    Invalid(#[from] serde_json::Error),
}

/// A process state or an event, read unless it is larger than [`MAX_REPORT_BYTES`].
pub fn read_report<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, UnreadReport> {
    if payload.len() > MAX_REPORT_BYTES {
        return Err(UnreadReport::TooLarge(payload.len()));
    }
    Ok(serde_json::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ExitStatus, LogLine, ProcessState, ProcessStatus, Stream};
    use std::time::{Duration, SystemTime};

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_600_000_123)
    }

    #[test]
    fn a_heartbeat_tells_how_far_its_agents_clock_is_off_from_its_age() {
        let week = Duration::from_secs(7 * 86_400);
        let heartbeat = Heartbeat {
            v: VERSION,
            agent: "door-pi".into(),
            at: at() - week,
            interval_secs: 30,
            uptime_secs: 60,
            running: 1,
            processes: 1,
            load1: None,
            mem_total_kb: None,
            mem_available_kb: None,
            cpu_temp_c: None,
        };
        let off = |heard, retained, left: Option<u64>| {
            let left = left.map(Duration::from_secs);
            heartbeat
                .clock_offset(heard, retained, left)
                .map(|c| c.ahead_ms() / 1000)
        };
        let behind = -(week.as_secs() as i64);
        // Live: sent as heard.
        assert_eq!(off(at(), false, None), Some(behind));
        assert_eq!(off(at(), false, Some(90)), Some(behind));
        // A broker that caps expiries (below three intervals) does not make a live one old.
        assert_eq!(off(at(), false, Some(30)), Some(behind));
        // Kept by the broker for 50 s of its 90: heard 50 s after it was sent.
        let later = at() + Duration::from_secs(50);
        assert_eq!(off(later, true, Some(40)), Some(behind));
        assert_eq!(
            off(later, true, Some(90)),
            Some(behind - 50),
            "taken for fresh"
        );
        // Kept, with no expiry to tell its age: nothing can be said.
        assert_eq!(off(later, true, None), None);
        assert_eq!(heartbeat_expiry_secs(30), 90);
        assert_eq!(heartbeat_expiry_secs(0), 1);
    }

    #[test]
    fn an_exit_event_has_a_flat_readable_shape() {
        let event = Event {
            v: VERSION,
            id: "6f1c".into(),
            seq: 42,
            agent: "door-pi".into(),
            at: at(),
            process: Some("doorbot".into()),
            dropped_before: 0,
            kind: EventKind::Exited {
                pid: 812,
                status: ExitStatus::Code { code: 1 },
                runtime_ms: 5321,
                restarts: 2,
                requested: false,
                shutdown: false,
                leftover: false,
                scheduled: false,
                killed_at_stop_timeout: false,
                next_start: Some(at()),
                reason: None,
                log_tail: vec![LogLine {
                    at: at(),
                    stream: Stream::Stderr,
                    text: "boom".into(),
                }],
                log_truncated: false,
                oom_killed: false,
                memory_max: None,
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1, "id": "6f1c", "seq": 42, "agent": "door-pi",
                "at": "2026-11-25T09:46:40.123Z", "process": "doorbot",
                "kind": "exited", "pid": 812, "status": {"code": 1}, "runtime_ms": 5321,
                "restarts": 2, "requested": false, "next_start": "2026-11-25T09:46:40.123Z",
                "log_tail": [{"at": "2026-11-25T09:46:40.123Z", "stream": "stderr", "text": "boom"}]
            })
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }

    #[test]
    fn readers_tolerate_unknown_kinds_and_fields() {
        let json = r#"{"v":1,"id":"x","seq":1,"agent":"a","at":"2026-11-25T06:26:40Z",
                       "kind":"teleported","where":"mars","extra":{"nested":true}}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.kind, EventKind::Unknown);
        let json = r#"{"v":2,"agent":"a","state":"hibernating","future":1}"#;
        let state: AgentState = serde_json::from_str(json).unwrap();
        assert_eq!(state.state, Presence::Unknown);
        let json = r#"{"cmd_id":"c","agent":"a","status":"queued","at":"2026-11-25T06:26:40Z","reason":"solar_flare"}"#;
        let reply: CommandReply = serde_json::from_str(json).unwrap();
        assert_eq!(
            (reply.status, reply.reason),
            (ReplyStatus::Unknown, Some(Reason::Other))
        );
        assert_eq!(reply.v, VERSION, "a missing version reads as 1");
    }

    #[test]
    fn a_command_body_travels_as_a_string_inside_the_envelope() {
        let body = CommandBody {
            cmd_id: "c1".into(),
            agent: "door-pi".into(),
            requester: "laptop".into(),
            command: CommandName::Restart,
            process: Some("doorbot".into()),
            lines: None,
            text: None,
            base: None,
            dry_run: false,
            expires_at: at(),
            session: None,
        };
        let envelope = CommandEnvelope {
            v: Some(VERSION),
            body: serde_json::to_string(&body).unwrap(),
            signature: None,
        };
        let json = serde_json::to_string(&envelope).unwrap();
        assert!(
            json.starts_with(r#"{"v":1,"body":"{\"cmd_id\":\"c1\""#),
            "{json}"
        );
        let back: CommandEnvelope = serde_json::from_str(&json).unwrap();
        assert_eq!(
            serde_json::from_str::<CommandBody>(&back.body).unwrap(),
            body
        );
        let unknown: CommandBody = serde_json::from_str(
            r#"{"cmd_id":"c","agent":"a","requester":"r","command":"reboot","expires_at":"2026-11-25T06:26:40Z"}"#,
        )
        .unwrap();
        assert_eq!(unknown.command, CommandName::Unknown);
        // An optional field written null is as if absent, a flag too (protocol.md; found by a
        // review: `"dry_run": null` was malformed).
        let nulls: CommandBody = serde_json::from_str(
            r#"{"cmd_id":"c","agent":"a","requester":"r","command":"config_apply","text":null,"base":null,"lines":null,"dry_run":null,"session":null,"expires_at":"2026-11-25T06:26:40Z"}"#,
        )
        .unwrap();
        assert!(!nulls.dry_run && nulls.text.is_none() && nulls.lines.is_none());
    }

    #[test]
    fn process_reports_flatten_the_status() {
        let report = ProcessReport {
            v: VERSION,
            agent: "a".into(),
            status: ProcessStatus {
                name: "web".into(),
                state: crate::status::ProcessState::Running,
                pid: Some(7),
                since: at(),
                restarts: 0,
                crash_loop: false,
                crash_loop_since: None,
                manually_stopped: false,
                last_exit: None,
                spawn_error: None,
                next_start: None,
                health: None,
                usage: None,
                remote: false,
            },
            notify: Notify::Every,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["name"], "web");
        assert_eq!(json["state"], "running");
        assert!(json.get("notify").is_none(), "the default is left out");
        assert_eq!(
            serde_json::from_value::<ProcessReport>(json.clone()).unwrap(),
            report
        );
        let mut quiet = json.clone();
        quiet["notify"] = "loop_only".into();
        let quiet: ProcessReport = serde_json::from_value(quiet).unwrap();
        assert_eq!(quiet.notify, Notify::LoopOnly);
        let mut future = json;
        future["notify"] = "on_full_moon".into();
        future["state"] = "paused".into();
        let future: ProcessReport = serde_json::from_value(future).unwrap();
        assert_eq!(future.notify, Notify::Every, "unknown values read as every");
        // A state of a newer agent is something newer, not an unreadable report (found by a
        // review: the hub kept showing the state before it, `running`, for good).
        assert_eq!(future.status.state, ProcessState::Unknown);
        assert_eq!(future.status.pid, report.status.pid);
    }

    /// A reader takes no more of an agent's `state` than an agent sends: what a stolen
    /// device publishes under its own topic is refused or cut to that.
    #[test]
    fn a_state_is_read_within_what_an_agent_sends() {
        let state = |fields: serde_json::Value| {
            let mut state = serde_json::json!({"v": 1, "agent": "a", "state": "online"});
            state
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            serde_json::to_vec(&state).unwrap()
        };
        let fine = AgentState::read(&state(serde_json::json!({"version": "0.1.0"}))).unwrap();
        assert_eq!(fine.version.as_deref(), Some("0.1.0"));

        for field in ["version", "host", "session", "containment"] {
            let longest = state(serde_json::json!({field: "v".repeat(MAX_STATE_TEXT)}));
            assert!(AgentState::read(&longest).is_ok(), "{field}");
            let longer = state(serde_json::json!({field: "v".repeat(MAX_STATE_TEXT + 1)}));
            let refused = AgentState::read(&longer).unwrap_err();
            assert!(
                matches!(refused, UnreadReport::TooLong { field: f, bytes: 65 } if f == field),
                "{field}: {refused:?}"
            );
        }

        // The longest names of as many processes as are read fit; more bytes are refused.
        let names: Vec<String> = (0..MAX_PROCESSES_READ)
            .map(|i| format!("{i:04}{}", "p".repeat(60)))
            .collect();
        let full = state(serde_json::json!({"processes": names}));
        assert!(full.len() <= MAX_STATE_BYTES);
        assert_eq!(AgentState::read(&full).unwrap().processes, names);
        let padded = state(serde_json::json!({"padding": "x".repeat(MAX_STATE_BYTES)}));
        assert!(matches!(
            AgentState::read(&padded),
            Err(UnreadReport::TooLarge(_))
        ));

        let names = ["web", "bad name", "web", "../x", "db"];
        let listed = state(serde_json::json!({ "processes": names }));
        assert_eq!(AgentState::read(&listed).unwrap().processes, ["web", "db"]);
        let many: Vec<String> = (0..MAX_PROCESSES_READ + 5)
            .map(|i| format!("p{i}"))
            .collect();
        let many = state(serde_json::json!({ "processes": many }));
        let read = AgentState::read(&many).unwrap().processes;
        assert_eq!(read.len(), MAX_PROCESSES_READ);
        assert_eq!(read.last().map(String::as_str), Some("p999"));
    }
}
