//! The last exit of every process, kept across runs of the agent: after a reboot, a crash or
//! an upgrade of the agent, a status still says why each program's last run ended. One
//! reserved record per process (`exits/<name>`), rewritten in place at every exit that says
//! something of the program — not at the stops of the agent's own shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use respawn_common::status::ExitRecord;
use respawn_common::text::cut_bytes;

use crate::state::reserved::{Record, SIZE};
use crate::state::{make_private_dir, StateDir};

/// The directory of the records, in the state directory.
pub const DIR: &str = "exits";

/// Bytes kept of why the agent stopped a process: the record is one sector.
const REASON_BYTES: usize = 256;

/// The last exits known, by process name.
#[derive(Debug)]
pub struct LastExits {
    dir: PathBuf,
    exits: BTreeMap<String, ExitRecord>,
    /// The records this run has made sure of.
    reserved: BTreeSet<String>,
}

impl LastExits {
    /// Those kept in `state`; a record that cannot be read is logged and left out.
    pub fn load(state: &StateDir) -> Self {
        let dir = state.path().join(DIR);
        let mut exits = BTreeMap::new();
        let entries = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let read = Record::open(&entry.path()).and_then(|record| record.read());
            let parsed = read.and_then(|bytes| {
                let parse = |b: Vec<u8>| serde_json::from_slice::<ExitRecord>(&b);
                bytes.map(parse).transpose().map_err(io::Error::other)
            });
            match parsed {
                Ok(Some(exit)) => drop(exits.insert(name, exit)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(process = %name, error = %e, "ignoring an unreadable last exit")
                }
            }
        }
        Self {
            dir,
            exits,
            reserved: BTreeSet::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&ExitRecord> {
        self.exits.get(name)
    }

    /// Keeps `exit` as the last of `name`. One that cannot be written (a full disk before its
    /// record was made) is logged and kept for this run only.
    pub fn remember(&mut self, name: &str, mut exit: ExitRecord) {
        // A plan of this run, void in the next.
        exit.next_start = None;
        exit.reason = exit.reason.map(|reason| cut_bytes(&reason, REASON_BYTES));
        if let Err(e) = self.write(name, &fitted(exit.clone())) {
            tracing::warn!(process = %name, error = %e, "cannot keep the last exit for the agent's next run");
        }
        self.exits.insert(name.to_owned(), exit);
    }

    /// Takes the space of `name`'s record before its first start, so that keeping its exits
    /// never needs any (a full disk). One that cannot be made is made at its first exit.
    pub fn reserve(&mut self, name: &str) {
        if self.reserved.contains(name) {
            return;
        }
        match self.record(name) {
            Ok(_) => drop(self.reserved.insert(name.to_owned())),
            Err(e) => {
                tracing::debug!(process = %name, error = %e, "cannot reserve the record of its last exit")
            }
        }
    }

    fn record(&self, name: &str) -> io::Result<Record> {
        let path = self.dir.join(name);
        match Record::open_or_make(&path) {
            // Made when the state directory was opened; made again if it went since.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_private_dir(&self.dir)?;
                Record::open_or_make(&path)
            }
            made => made,
        }
    }

    fn write(&self, name: &str, exit: &ExitRecord) -> io::Result<()> {
        let json = serde_json::to_vec(exit).map_err(io::Error::other)?;
        self.record(name)?.write(&json)
    }

    /// Forgets a process that left the configuration.
    pub fn forget(&mut self, name: &str) {
        self.exits.remove(name);
        self.reserved.remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(process = %name, error = %e, "cannot remove the last exit"),
        }
    }
}

/// `exit` with as much of its reason as fits the record's sector: JSON may write a byte of
/// the reason as six (`\u001b`), and a record that does not fit is not kept at all.
fn fitted(exit: ExitRecord) -> ExitRecord {
    let Some(reason) = exit.reason.clone() else {
        return exit;
    };
    let cut = |bytes: usize| ExitRecord {
        reason: Some(cut_bytes(&reason, bytes)),
        ..exit.clone()
    };
    let fits = |bytes: &usize| serde_json::to_vec(&cut(*bytes)).is_ok_and(|j| j.len() <= SIZE);
    let lengths: Vec<usize> = (0..=reason.len()).collect();
    match lengths.partition_point(fits) {
        0 => ExitRecord {
            reason: None,
            ..exit
        },
        fitting => cut(fitting - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::status::ExitStatus;
    use std::time::{Duration, SystemTime};

    fn exit(code: i32, reason: Option<String>) -> ExitRecord {
        ExitRecord {
            status: ExitStatus::Code { code },
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            runtime_ms: 2001,
            restarts: 3,
            requested: false,
            next_start: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_004)),
            reason,
            oom_killed: false,
            memory_max: None,
            scheduled: false,
            killed_at_stop_timeout: false,
        }
    }

    #[test]
    fn the_last_exits_outlive_the_agent_and_a_removed_process_takes_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut exits = LastExits::load(&state);
        assert!(exits.get("door").is_none());
        exits.reserve("door");
        assert!(
            LastExits::load(&state).get("door").is_none(),
            "reserved, blank"
        );
        exits.remember("door", exit(1, None));
        exits.remember("door", exit(3, None));
        exits.remember("gone", exit(2, None));
        exits.forget("gone");
        // A reason too long for one sector is cut, not lost with the rest.
        exits.remember("cam", exit(9, Some("x".repeat(4000))));
        drop(state);

        let state = StateDir::open(dir.path()).unwrap();
        let exits = LastExits::load(&state);
        let door = exits.get("door").expect("kept");
        assert_eq!(door.status, ExitStatus::Code { code: 3 });
        assert_eq!(door.restarts, 3);
        assert_eq!(door.at, exit(3, None).at);
        assert_eq!(door.next_start, None, "a plan of the run before");
        assert!(exits.get("gone").is_none());
        let cam = exits.get("cam").expect("kept");
        assert!(cam.reason.as_ref().is_some_and(|r| r.len() <= REASON_BYTES));
    }

    #[test]
    fn the_longest_exit_is_kept_with_as_much_of_its_reason_as_fits() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        // Every field at its longest, and a reason that JSON writes six bytes a byte.
        let longest = ExitRecord {
            status: ExitStatus::Signal {
                signal: "SIGKILL".into(),
                core_dumped: true,
            },
            runtime_ms: u64::MAX,
            restarts: u32::MAX,
            requested: true,
            oom_killed: true,
            memory_max: Some(u64::MAX),
            scheduled: true,
            killed_at_stop_timeout: true,
            ..exit(i32::MIN, Some("\u{1b}\"".repeat(200)))
        };
        LastExits::load(&state).remember("cam", longest.clone());
        let exits = LastExits::load(&state);
        let cam = exits.get("cam").expect("kept");
        let reason = cam.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with("\u{1b}\"\u{1b}") && reason.ends_with('…'),
            "{reason:?}"
        );
        let rest = ExitRecord {
            reason: None,
            next_start: None,
            ..cam.clone()
        };
        let longest = ExitRecord {
            reason: None,
            next_start: None,
            ..longest
        };
        assert_eq!(rest, longest);
    }

    #[test]
    fn a_damaged_record_is_left_out_and_the_others_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        LastExits::load(&state).remember("door", exit(1, None));
        fs::write(dir.path().join("exits/cam"), "{not json").unwrap();
        let exits = LastExits::load(&state);
        assert!(exits.get("cam").is_none());
        assert!(exits.get("door").is_some());
    }
}
