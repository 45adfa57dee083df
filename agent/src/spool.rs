//! The durable outbox for events: every event is appended to a file in the state directory
//! before it is sent, and forgotten only once the broker has acknowledged it. Events survive
//! broker outages and agent restarts (also `kill -9`) and are delivered in order with their
//! original id.
//!
//! On disk: `events.jsonl` holds one event per line, appended; `delivered` holds the highest
//! sequence number up to which everything was acknowledged, and the count of events dropped
//! from a full spool that no event has reported yet. Lines at or below that mark are skipped
//! when the spool is read back. Neither file is fsynced: after a crash of the agent alone the
//! page cache still has them, and after a power cut the worst case is a few duplicates or a
//! few lost events from the last seconds — consumers deduplicate by `id` anyway.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use respawn_common::messages::Event;
use serde::{Deserialize, Serialize};

/// Rewrite the event file once this many acknowledged lines have accumulated in it.
const COMPACT_AFTER: usize = 1024;

/// One spooled event.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    /// The serialised event, as published.
    pub payload: Vec<u8>,
    /// The drops this event reports: if it is dropped too, they must be reported again.
    reports: u64,
    acked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Mark {
    delivered: u64,
    #[serde(default)]
    dropped_unreported: u64,
}

/// The outbox.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    file: File,
    entries: VecDeque<Entry>,
    limit: usize,
    mark: Mark,
    next_seq: u64,
    /// Acknowledged lines still in the event file.
    stale_lines: usize,
}

impl Spool {
    /// Opens the spool in `dir`, reading back what an earlier run left undelivered.
    pub fn open(dir: &Path, limit: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mark: Mark = match fs::read(dir.join("delivered")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(error = %e, "damaged spool mark; events may be delivered twice");
                Mark::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Mark::default(),
            Err(e) => return Err(e),
        };
        let path = dir.join("events.jsonl");
        let mut entries = VecDeque::new();
        let mut max_seq = mark.delivered;
        let mut stale_lines = 0;
        match fs::read(&path) {
            Ok(bytes) => {
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    // A torn last line (power cut mid-write) or a damaged one is skipped.
                    let Ok(event) = serde_json::from_slice::<Event>(line) else {
                        tracing::warn!("skipping a damaged line in the event spool");
                        continue;
                    };
                    max_seq = max_seq.max(event.seq);
                    if event.seq <= mark.delivered {
                        stale_lines += 1;
                        continue;
                    }
                    entries.push_back(Entry {
                        seq: event.seq,
                        payload: line.to_vec(),
                        reports: event.dropped_before,
                        acked: false,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut spool = Self {
            dir: dir.to_owned(),
            file,
            entries,
            limit: limit.max(1),
            mark,
            next_seq: max_seq + 1,
            stale_lines,
        };
        while spool.entries.len() > spool.limit {
            spool.drop_oldest();
        }
        Ok(spool)
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events dropped (from a full spool, or refused by the broker) and not yet reported; the
    /// next event reports them.
    pub fn take_dropped(&mut self) -> u64 {
        let dropped = std::mem::take(&mut self.mark.dropped_unreported);
        if dropped > 0 {
            if let Err(e) = self.persist() {
                tracing::error!(error = %e, "cannot record reported drops");
            }
        }
        dropped
    }

    /// Drops the oldest undelivered events (counting them) until one more fits; returns how
    /// many left the front. Called before an event is made, so that the event reports them.
    pub fn make_room(&mut self) -> usize {
        let mut dropped = 0;
        while self.entries.len() >= self.limit {
            self.drop_oldest();
            dropped += 1;
        }
        if dropped > 0 {
            if let Err(e) = self.persist() {
                tracing::error!(error = %e, "cannot record dropped events");
            }
        }
        dropped
    }

    /// Appends `event`, whose `seq` must be [`Spool::next_seq`], after [`Spool::make_room`].
    pub fn push(&mut self, event: &Event) -> io::Result<()> {
        let payload = serde_json::to_vec(event).map_err(io::Error::other)?;
        self.next_seq = event.seq + 1;
        let mut line = payload.clone();
        line.push(b'\n');
        self.entries.push_back(Entry {
            seq: event.seq,
            payload,
            reports: event.dropped_before,
            acked: false,
        });
        self.file.write_all(&line)
    }

    fn drop_oldest(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            if !entry.acked {
                self.mark.dropped_unreported += 1 + entry.reports;
                tracing::warn!(
                    seq = entry.seq,
                    "event spool full: dropping the oldest event"
                );
            }
            self.mark.delivered = self.mark.delivered.max(entry.seq);
            self.stale_lines += 1;
        }
    }

    /// Gives up on `seq` (the broker will never take it) and counts it as dropped. Returns how
    /// many events left the front, as [`Spool::ack`] does.
    pub fn discard(&mut self, seq: u64) -> usize {
        if let Some(entry) = self.entries.iter().find(|e| e.seq == seq && !e.acked) {
            self.mark.dropped_unreported += 1 + entry.reports;
        }
        self.ack(seq)
    }

    /// The undelivered events, oldest first.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `seq` delivered. Returns how many events left the front of the spool (all
    /// delivered events before the first undelivered one).
    pub fn ack(&mut self, seq: u64) -> usize {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq == seq) {
            entry.acked = true;
        }
        let mut popped = 0;
        while self.entries.front().is_some_and(|e| e.acked) {
            if let Some(entry) = self.entries.pop_front() {
                self.mark.delivered = self.mark.delivered.max(entry.seq);
                popped += 1;
            }
        }
        if popped > 0 {
            self.stale_lines += popped;
            if let Err(e) = self.persist() {
                tracing::error!(error = %e, "cannot record delivered events; they may be sent again");
            }
        }
        popped
    }

    /// Records the delivery mark, and rewrites the event file when it is mostly delivered.
    fn persist(&mut self) -> io::Result<()> {
        let mark = serde_json::to_vec(&self.mark).map_err(io::Error::other)?;
        let tmp = self.dir.join(".delivered.tmp");
        fs::write(&tmp, mark)?;
        fs::rename(&tmp, self.dir.join("delivered"))?;
        if self.entries.is_empty() {
            self.file.set_len(0)?;
            self.stale_lines = 0;
        } else if self.stale_lines >= COMPACT_AFTER {
            let tmp = self.dir.join(".events.tmp");
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for entry in &self.entries {
                out.write_all(&entry.payload)?;
                out.write_all(b"\n")?;
            }
            out.into_inner().map_err(|e| e.into_error())?;
            let path = self.dir.join("events.jsonl");
            fs::rename(&tmp, &path)?;
            self.file = OpenOptions::new().append(true).open(&path)?;
            self.stale_lines = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::messages::{EventKind, VERSION};
    use std::time::SystemTime;

    fn event(spool: &mut Spool) -> Event {
        spool.make_room();
        let seq = spool.next_seq();
        let event = Event {
            v: VERSION,
            id: format!("id-{seq}"),
            seq,
            agent: "a".into(),
            at: SystemTime::UNIX_EPOCH,
            process: Some("web".into()),
            dropped_before: spool.take_dropped(),
            kind: EventKind::Stopped,
        };
        spool.push(&event).unwrap();
        event
    }

    fn seqs(spool: &Spool) -> Vec<u64> {
        spool.entries().iter().map(|e| e.seq).collect()
    }

    #[test]
    fn undelivered_events_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        for _ in 0..5 {
            event(&mut spool);
        }
        assert_eq!(spool.ack(1), 1);
        assert_eq!(spool.ack(3), 0, "out of order: stays until 2 is delivered");
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(
            seqs(&spool),
            [2, 3, 4, 5],
            "3 is resent: its ack was not yet persisted"
        );
        assert_eq!(spool.next_seq(), 6, "sequence numbers keep growing");
        let e = serde_json::from_slice::<Event>(&spool.entries()[0].payload).unwrap();
        assert_eq!(e.id, "id-2");
        for seq in 2..=5 {
            spool.ack(seq);
        }
        assert!(spool.is_empty());
        assert_eq!(
            fs::metadata(dir.path().join("events.jsonl")).unwrap().len(),
            0
        );
        drop(spool);
        let spool = Spool::open(dir.path(), 100).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.next_seq(), 6, "the mark remembers the sequence");
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_the_event_that_needed_room_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3).unwrap();
        let first: Vec<u64> = (0..3).map(|_| event(&mut spool).dropped_before).collect();
        assert_eq!(first, [0, 0, 0]);
        let fourth = event(&mut spool);
        assert_eq!(fourth.dropped_before, 1, "event 1 made room for it");
        assert_eq!(seqs(&spool), [2, 3, 4]);
        spool.ack(2);
        let fifth = event(&mut spool);
        assert_eq!(fifth.dropped_before, 0, "there was room");
        assert_eq!(seqs(&spool), [3, 4, 5]);
    }

    #[test]
    fn drops_reported_by_an_event_that_is_dropped_too_are_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3).unwrap();
        for _ in 0..11 {
            event(&mut spool);
        }
        // 11 events, 3 kept: the 8 dropped are all reported by the 3 that remain.
        let reported: u64 = spool.entries().iter().map(|e| e.reports).sum();
        assert_eq!(reported, 8);
    }

    #[test]
    fn a_discarded_event_is_reported_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        event(&mut spool);
        event(&mut spool);
        assert_eq!(spool.discard(2), 0, "not at the front");
        assert_eq!(spool.ack(1), 2);
        assert_eq!(event(&mut spool).dropped_before, 1);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(
            event(&mut spool).dropped_before,
            0,
            "reported once, not again after a restart"
        );
    }

    #[test]
    fn a_drop_not_yet_reported_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1).unwrap();
        event(&mut spool);
        assert_eq!(spool.make_room(), 1);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1).unwrap();
        assert!(spool.is_empty());
        assert_eq!(event(&mut spool).dropped_before, 1);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100).unwrap();
        event(&mut spool);
        event(&mut spool);
        drop(spool);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap();
        file.write_all(b"{\"v\":1,\"id\":\"torn").unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(seqs(&spool), [1, 2]);
    }

    #[test]
    fn the_file_is_compacted_once_mostly_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000).unwrap();
        for _ in 0..(COMPACT_AFTER + 10) {
            event(&mut spool);
        }
        for seq in 1..=(COMPACT_AFTER as u64) {
            spool.ack(seq);
        }
        let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 10);
        drop(spool);
        let spool = Spool::open(dir.path(), 10_000).unwrap();
        assert_eq!(spool.len(), 10);
        assert_eq!(spool.entries()[0].seq, COMPACT_AFTER as u64 + 1);
    }
}
