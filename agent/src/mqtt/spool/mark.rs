//! The spool's mark: the record, rewritten in place, of the next sequence number, what was
//! delivered and what was dropped; read back at the start, and told apart from damage.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MAX_SEQ;
use crate::state::reserved::Record;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Mark {
    pub(super) delivered: u64,
    #[serde(default)]
    pub(super) dropped_unreported: u64,
    /// The number the next event gets. Kept here rather than derived from the events on disk,
    /// which a full disk may have kept from being written.
    #[serde(default)]
    pub(super) next_seq: u64,
    /// Numbers up to this one that are missing from the disk have been counted as dropped.
    #[serde(default)]
    pub(super) counted_through: u64,
    /// The drops reported by events that are not on disk (the disk refused them): if the
    /// agent dies before they are delivered or written, the next run counts them with the
    /// events themselves, or they would never be reported.
    #[serde(default)]
    pub(super) unwritten_reports: u64,
}

impl Mark {
    /// Whether it could have been written by a spool: numbers in range, and the delivered and
    /// counted ones below the next (which an earlier version left at 0).
    pub(super) fn is_sound(&self) -> bool {
        let numbers = [
            self.delivered,
            self.next_seq,
            self.counted_through,
            self.dropped_unreported,
            self.unwritten_reports,
        ];
        let in_order = match self.next_seq {
            0 => self.counted_through <= self.delivered,
            next => self.delivered < next && self.counted_through < next,
        };
        numbers.iter().all(|&n| n <= MAX_SEQ) && in_order
    }
}

/// A mark that cannot be taken: how it is damaged, and the next number it says, where it
/// says one in range.
pub(super) struct Damaged {
    pub(super) why: String,
    pub(super) next_seq: u64,
}

impl Damaged {
    fn because(why: String) -> Self {
        Self { why, next_seq: 0 }
    }
}

/// Opens the mark, taking over the `delivered` file of earlier versions. The mark read:
/// `None` when there is none (or it is blank), `Err` saying how it is damaged.
pub(super) fn open_mark(dir: &Path) -> (Option<Record>, Result<Option<Mark>, Damaged>) {
    let record = Record::open_or_make(&dir.join("mark"))
        .map_err(|e| tracing::error!(error = %e, "cannot make the spool mark; sequence numbers may repeat after a crash of the agent"))
        .ok();
    let from_record = record.as_ref().and_then(|record| match record.read() {
        Ok(bytes) => bytes.map(|b| parse(&b)),
        Err(e) => Some(Err(Damaged::because(format!("unreadable ({e})")))),
    });
    let legacy = dir.join("delivered");
    let mark = from_record.unwrap_or_else(|| match fs::read(&legacy) {
        Ok(bytes) => parse(&bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Damaged::because(format!("unreadable ({e})"))),
    });
    if record.is_some() {
        let _ = fs::remove_file(&legacy);
    }
    (record, mark)
}

/// A mark as written: sound, or how it is damaged.
fn parse(bytes: &[u8]) -> Result<Option<Mark>, Damaged> {
    match serde_json::from_slice::<Mark>(bytes) {
        Ok(mark) if mark.is_sound() => Ok(Some(mark)),
        Ok(mark) => Err(Damaged {
            why: "damaged (its numbers are out of range or out of order)".to_owned(),
            next_seq: Some(mark.next_seq).filter(|&n| n <= MAX_SEQ).unwrap_or(0),
        }),
        Err(e) => Err(Damaged::because(format!("damaged ({e})"))),
    }
}

/// The sound mark `record` holds, if it holds one.
pub(super) fn sound_mark(record: &Record) -> Option<Mark> {
    let bytes = record.read().ok().flatten()?;
    parse(&bytes).ok().flatten()
}
