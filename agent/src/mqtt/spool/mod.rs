//! The durable outbox for events: every event is appended to a file in the state directory
//! before it is sent, and forgotten only once the broker has acknowledged it. Events survive
//! broker outages and agent restarts (also `kill -9`) and are delivered in order with their
//! original id.
//!
//! On disk: `events.jsonl` holds one event per line, appended; `mark` is a record rewritten in
//! place (see [`crate::state::reserved`]) with the next sequence number, the highest one up to which
//! everything was acknowledged, and the count of dropped events that no event has reported
//! yet. The mark stays writable on a full disk, so that sequence numbers never go back; an
//! event that could not be appended is kept in memory and sent, and if the agent dies before
//! that, the next run counts it as dropped (its number is a gap, and the next event reports
//! it). Appends are not fsynced: after a crash of the agent alone the page cache holds it all,
//! and after a power cut the worst case is a few duplicates or a few lost events from the last
//! seconds — consumers deduplicate by `id` anyway. What would lose more is made durable
//! first: the file is cut or rewritten only once the mark is on disk (the delivered lines left
//! in the file are what keeps the numbers from going back until then), and a rewrite is on
//! disk before it replaces the file. So the file is cut only once it has grown past
//! [`CUT_AFTER_BYTES`], and that sync is paid once per so many events, not once per event.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use respawn_common::messages::Event;

use crate::state::reserved::Record;
use crate::throttle::{Throttle, Verdict};

mod failures;
mod mark;

use failures::WriteFailures;
use mark::{open_mark, sound_mark, Damaged, Mark};

/// Rewrite the event file once this many acknowledged lines have accumulated in it, and at
/// least as many as the undelivered ones: a rewrite then copies no more lines than were
/// delivered since the last, so draining a backlog of 10,000 events rewrites 8,976 lines in
/// all, not 43,920 (one rewrite per 1,024 acks), on the thread that supervises.
const COMPACT_AFTER: usize = 1024;

/// Cut the event file, once all of it is delivered, when it has grown this large.
const CUT_AFTER_BYTES: u64 = 64 * 1024;

/// The highest sequence number: the largest integer a JSON reader in JavaScript holds
/// exactly, and more than a thousand events a second give in 280,000 years. A higher one on
/// disk is damage, not history.
const MAX_SEQ: u64 = (1 << 53) - 1;

/// One spooled event.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    /// The serialised event, as published.
    pub payload: Vec<u8>,
    /// The drops this event reports: if it is dropped too, they must be reported again.
    reports: u64,
    acked: bool,
    /// In the event file: an event the disk refused is kept in memory, and written when the
    /// disk takes writes again.
    on_disk: bool,
}

/// The outbox.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// `None` when it could not be opened: events are then kept in memory only.
    file: Option<File>,
    /// The length of the event file after the last whole line.
    file_len: u64,
    entries: VecDeque<Entry>,
    limit: usize,
    mark: Mark,
    /// Where the mark is kept; `None` if it could not even be made.
    record: Option<Record>,
    /// Acknowledged lines still in the event file.
    stale_lines: usize,
    failures: WriteFailures,
    /// The warnings of events dropped from a full spool: one a minute, with how many.
    drops_log: Throttle,
    /// Events dropped to make room while the broker may have them (sent, not yet
    /// acknowledged), with the drops each reports: counted as dropped only if the broker
    /// refuses them or their connection ends without an answer, not when it takes them. (A
    /// crash of the agent meanwhile counts none of them: they were most likely delivered.)
    dropped_in_flight: BTreeMap<u64, u64>,
    /// When events the disk refused may next be written back, and the wait after that if it
    /// fails: a rewrite copies the whole spool, and on a nearly full disk each try would
    /// take the last of its space for a moment.
    write_back_at: Option<Instant>,
    write_back_wait: Duration,
}

/// The wait between tries to write back the events the disk refused, doubled after each
/// failure up to [`WRITE_BACK_MAX_WAIT`].
const WRITE_BACK_WAIT: Duration = Duration::from_secs(1);
const WRITE_BACK_MAX_WAIT: Duration = Duration::from_secs(60);

/// A new file at `path` (emptied if there is one) that only the agent's account may read.
fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

impl Spool {
    /// Opens the spool in `dir`, reading back what an earlier run left undelivered. A spool
    /// that cannot be opened (a full or broken disk) is reported and kept in memory: the agent
    /// supervises with or without it.
    pub fn open(dir: &Path, limit: usize) -> Self {
        // The events hold programs' last lines of output: the agent's to read only, also in a
        // state directory that systemd (StateDirectory=) or an earlier version made 0755.
        let private = crate::state::make_private_dir(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)));
        if let Err(e) = private {
            tracing::error!(dir = %dir.display(), error = %e, "cannot make the event spool's directory, readable by the agent only");
        }
        let (record, found) = open_mark(dir);
        let (known, mut mark, damage) = match found {
            Ok(Some(mark)) => (true, mark, None),
            Ok(None) => (false, Mark::default(), None),
            // What it says of the next number still keeps numbers from going back.
            Err(Damaged { why, next_seq }) => {
                let mark = Mark {
                    next_seq,
                    ..Mark::default()
                };
                (false, mark, Some(why))
            }
        };
        let path = dir.join("events.jsonl");
        let mut entries = VecDeque::new();
        let mut max_seq = mark.delivered;
        let mut stale_lines = 0;
        let mut damaged_lines = 0;
        let mut whole_lines = None;
        match fs::read(&path) {
            Ok(bytes) => {
                // A line torn by a power cut is cut off, or the next event would be glued to it.
                let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if end < bytes.len() {
                    whole_lines = Some(end as u64);
                }
                for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    // A torn last line (power cut mid-write) or a damaged one is skipped; its
                    // number is missing, so it is counted as dropped below.
                    let event = serde_json::from_slice::<Event>(line).ok();
                    let sane = |event: &Event| event.seq.max(event.dropped_before) <= MAX_SEQ;
                    let Some(event) = event.filter(sane) else {
                        damaged_lines += 1;
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
                        on_disk: true,
                    });
                }
                if damaged_lines > 0 {
                    tracing::warn!(damaged_lines, "skipping damaged lines in the event spool");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the event spool; its events are counted as lost")
            }
        }
        mark.next_seq = mark.next_seq.max(max_seq + 1);
        // Numbers given out but neither delivered nor on disk: an earlier run could not write
        // them, then died. Each is counted once. Without the mark, what was delivered (and cut
        // from the file) cannot be told from what was lost: nothing is counted.
        let base = match known {
            true => mark.delivered.max(mark.counted_through),
            false => {
                let lines = entries.len() + stale_lines;
                if lines > 0 {
                    let why = damage.unwrap_or_else(|| "missing".to_owned());
                    tracing::warn!(lines, "the event spool's mark is {why}: the events on disk are sent again, some perhaps twice, and events an earlier run may have lost are not counted");
                }
                mark.next_seq - 1
            }
        };
        let on_disk = entries.iter().filter(|e| e.seq > base).count() as u64;
        let missing = (mark.next_seq - 1 - base).saturating_sub(on_disk);
        // With the drops those events reported, which would otherwise never be.
        let lost = match known {
            true => missing.saturating_add(std::mem::take(&mut mark.unwritten_reports)),
            false => missing,
        };
        mark.counted_through = mark.next_seq - 1;
        if lost > 0 {
            tracing::warn!(
                lost,
                "events of an earlier run are missing from the spool (the disk refused them, or they were damaged) and are lost; the next event reports them"
            );
            mark.dropped_unreported = mark.dropped_unreported.saturating_add(lost);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|file| {
                if let Some(end) = whole_lines {
                    file.set_len(end)?;
                }
                Ok((file.metadata()?.len(), file))
            });
        let (file_len, file) = match file {
            Ok((len, file)) => (len, Some(file)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the event spool; events are kept in memory only");
                (0, None)
            }
        };
        let mut spool = Self {
            dir: dir.to_owned(),
            file,
            file_len,
            entries,
            limit: limit.max(1),
            mark,
            record,
            stale_lines,
            failures: WriteFailures::new(),
            drops_log: Throttle::new(1, Duration::from_secs(60)),
            dropped_in_flight: BTreeMap::new(),
            write_back_at: None,
            write_back_wait: WRITE_BACK_WAIT,
        };
        while spool.entries.len() > spool.limit {
            match known {
                true => spool.drop_oldest(false),
                // Without the mark, the oldest lines may well be delivered ones: not counted.
                false => {
                    if let Some(entry) = spool.entries.pop_front() {
                        spool.mark.delivered = spool.mark.delivered.max(entry.seq);
                        spool.stale_lines += 1;
                    }
                }
            }
        }
        spool.persist();
        spool
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.mark.next_seq
    }

    /// Events dropped (from a full spool, refused by the broker, or lost with an earlier run)
    /// and not yet reported; the next event reports them. The mark says so when that event is
    /// pushed, which must follow.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.mark.dropped_unreported)
    }

    /// Drops the oldest undelivered events (counting them) until one more fits; returns how
    /// many left the front. Called before an event is made, so that the event reports them.
    /// The first `in_flight` are with the broker already: they count only if it never takes
    /// them.
    pub fn make_room(&mut self, in_flight: usize) -> usize {
        let mut dropped = 0;
        while self.entries.len() >= self.limit {
            self.drop_oldest(dropped < in_flight);
            dropped += 1;
        }
        if dropped > 0 {
            self.persist();
        }
        dropped
    }

    /// Appends `event`, whose `seq` must be [`Spool::next_seq`], after [`Spool::make_room`].
    /// It is kept in memory even when the disk refuses it.
    pub fn push(&mut self, event: &Event) {
        let payload = match serde_json::to_vec(event) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise an event");
                return;
            }
        };
        let mut line = payload.clone();
        line.push(b'\n');
        self.entries.push_back(Entry {
            seq: event.seq,
            payload,
            reports: event.dropped_before,
            acked: false,
            on_disk: false,
        });
        // The number is taken for good, and the drops it reports counted as not on disk,
        // before the event is written.
        self.mark.next_seq = event.seq.saturating_add(1);
        self.write_mark();
        let Some(file) = &mut self.file else {
            self.failures.failed(
                "appending an event",
                &io::Error::other("the spool file is not open"),
            );
            return self.write_back(false);
        };
        match file.write_all(&line) {
            Ok(()) => {
                self.file_len += line.len() as u64;
                self.failures.succeeded();
                if let Some(entry) = self.entries.back_mut() {
                    entry.on_disk = true;
                }
                if event.dropped_before > 0 {
                    self.write_mark();
                }
                // The disk takes writes again: what it refused before goes to it too.
                self.write_back(false);
            }
            Err(e) => {
                // A partial line would spoil the next one: cut it off (which needs no space).
                let _ = file.set_len(self.file_len);
                self.failures.failed("appending an event", &e);
            }
        }
    }

    /// How many undelivered events are not on disk (the disk refused them).
    pub fn unwritten(&self) -> usize {
        self.unwritten_entries().count()
    }

    /// The undelivered events that are not on disk.
    fn unwritten_entries(&self) -> impl Iterator<Item = &Entry> {
        (self.entries.iter()).filter(|e| !e.on_disk && !e.acked)
    }

    /// Writes the events the disk refused, rewriting the event file in order: at the next
    /// event the disk takes and at the heartbeat, a second after the last try, or longer after
    /// failures (up to a minute), and only with room for the copy; at once when `now` (the
    /// agent stops). Without it they stayed in memory until a rewrite that only many
    /// deliveries bring, and a restart of the agent lost them.
    pub fn write_back(&mut self, now: bool) {
        if self.unwritten() == 0 {
            return;
        }
        let at = Instant::now();
        if !now && self.write_back_at.is_some_and(|due| at < due) {
            return;
        }
        let tried = match self.room_for_copy() {
            true => self.compact(),
            false => Err(io::Error::from(io::ErrorKind::StorageFull)),
        };
        self.write_back_wait = match tried {
            Ok(()) => WRITE_BACK_WAIT,
            Err(e) => {
                self.failures
                    .failed("writing back the events it refused", &e);
                (self.write_back_wait * 2).min(WRITE_BACK_MAX_WAIT)
            }
        };
        self.write_back_at = Some(at + self.write_back_wait);
    }

    /// Whether the disk has room for a copy of the spool, and as much again to spare (what
    /// the processes write meanwhile); when it cannot be told, a try will tell.
    fn room_for_copy(&self) -> bool {
        let size: u64 = (self.entries.iter())
            .map(|e| e.payload.len() as u64 + 1)
            .sum();
        match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(fs) => {
                // 32 bits on armhf, 64 here.
                #[allow(clippy::useless_conversion)]
                let free = u64::from(fs.blocks_available()) * u64::from(fs.fragment_size());
                free >= size.saturating_mul(2)
            }
            Err(_) => true,
        }
    }

    fn drop_oldest(&mut self, in_flight: bool) {
        if let Some(entry) = self.entries.pop_front() {
            if in_flight && !entry.acked {
                self.dropped_in_flight.insert(entry.seq, entry.reports);
            } else if !entry.acked {
                self.mark.dropped_unreported =
                    (self.mark.dropped_unreported).saturating_add(1 + entry.reports);
                if let Verdict::Allow { refused } = self.drops_log.allow(Instant::now()) {
                    let also = match refused {
                        0 => String::new(),
                        n => format!(" (and {n} more since the last word)"),
                    };
                    tracing::warn!(
                        seq = entry.seq,
                        "event spool full: dropping the oldest event{also}; said once a minute at most"
                    );
                }
            }
            self.mark.delivered = self.mark.delivered.max(entry.seq);
            self.stale_lines += 1;
        }
    }

    /// Gives up on `seq` (the broker will never take it) and counts it as dropped. Returns how
    /// many events left the front, as [`Spool::ack`] does.
    pub fn discard(&mut self, seq: u64) -> usize {
        let in_flight = self.dropped_in_flight.remove(&seq);
        let waiting = self.entries.iter().find(|e| e.seq == seq && !e.acked);
        if let Some(reports) = in_flight.or(waiting.map(|e| e.reports)) {
            self.mark.dropped_unreported = self.mark.dropped_unreported.saturating_add(1 + reports);
        }
        if in_flight.is_some() {
            self.persist();
        }
        self.ack(seq)
    }

    /// The connection the broker had the events in flight on is gone: those dropped to make
    /// room meanwhile will never be acknowledged, and count as dropped.
    pub fn connection_lost(&mut self) {
        if self.dropped_in_flight.is_empty() {
            return;
        }
        let lost = std::mem::take(&mut self.dropped_in_flight);
        let lost = lost
            .values()
            .fold(0u64, |sum, reports| sum.saturating_add(1 + reports));
        self.mark.dropped_unreported = self.mark.dropped_unreported.saturating_add(lost);
        self.persist();
    }

    /// The undelivered events, oldest first.
    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Marks `seq` delivered. Returns how many events left the front of the spool (all
    /// delivered events before the first undelivered one).
    pub fn ack(&mut self, seq: u64) -> usize {
        // Dropped to make room, and delivered all the same: no loss to report.
        self.dropped_in_flight.remove(&seq);
        let mut unwritten_acked = false;
        if let Some(entry) = self.entries.iter_mut().find(|e| e.seq == seq) {
            unwritten_acked = !entry.on_disk && !entry.acked && entry.reports > 0;
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
            self.persist();
        } else if unwritten_acked {
            // The drops it reported were delivered: a crash now must not count them again.
            self.write_mark();
        }
        popped
    }

    fn write_mark(&mut self) {
        self.mark.unwritten_reports =
            (self.unwritten_entries()).fold(0u64, |sum, e| sum.saturating_add(e.reports));
        if self.record.is_none() {
            // Not made at the start (a full disk): until it is, no number is safe from a
            // crash, and the event file is neither cut nor rewritten.
            self.record = Record::open_or_make(&self.dir.join("mark")).ok();
            // One that was there but could not be opened then: the numbers it says were given
            // stay given (what lies between is counted as lost, the safe way).
            if let Some(there) = self.record.as_ref().and_then(sound_mark) {
                self.mark.next_seq = self.mark.next_seq.max(there.next_seq);
            }
        }
        let Some(record) = &self.record else {
            return self.failures.failed(
                "the delivery mark",
                &io::Error::other("the mark could not be made"),
            );
        };
        let written = serde_json::to_vec(&self.mark)
            .map_err(io::Error::other)
            .and_then(|bytes| record.write(&bytes));
        if let Err(e) = written {
            self.failures.failed("the delivery mark", &e);
        }
    }

    /// Puts the mark on disk: what the event file is cut or rewritten after. Without a mark,
    /// the delivered lines in the file are what keeps the numbers from going back.
    fn sync_mark(&self) -> io::Result<()> {
        match &self.record {
            Some(record) => record.sync(),
            None => Err(io::Error::other("the delivery mark could not be made")),
        }
    }

    /// Records the mark, and cuts or rewrites the event file when it is mostly delivered.
    fn persist(&mut self) {
        self.write_mark();
        let delivered = self.entries.is_empty() && self.file_len >= CUT_AFTER_BYTES;
        let tidied = if let (true, Some(file)) = (delivered, &self.file) {
            self.sync_mark().and_then(|()| file.set_len(0)).map(|()| {
                self.file_len = 0;
                self.stale_lines = 0;
            })
        } else if self.stale_lines >= self.compact_after() || self.file.is_none() {
            self.compact()
        } else {
            Ok(())
        };
        if let Err(e) = tidied {
            self.failures.failed("compacting", &e);
        }
    }

    /// How many delivered lines the file holds before it is rewritten: [`COMPACT_AFTER`], and
    /// as many as wait, unless the disk refuses writes, when the space they hold is wanted back
    /// sooner.
    fn compact_after(&self) -> usize {
        match self.failures.refusing() {
            true => COMPACT_AFTER,
            false => COMPACT_AFTER.max(self.entries.len()),
        }
    }

    /// Rewrites the event file with only the undelivered events. Needs space for the copy: on
    /// a full disk it fails, and the old file stays.
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.dir.join(".events.tmp");
        let path = self.dir.join("events.jsonl");
        let copied = (|| {
            self.sync_mark()?;
            let mut out = io::BufWriter::new(private_file(&tmp)?);
            for entry in &self.entries {
                out.write_all(&entry.payload)?;
                out.write_all(b"\n")?;
            }
            // On disk before it replaces the file: some file systems (f2fs, XFS) would
            // otherwise bring back an empty file after a power cut, and the backlog with it.
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The copy is the file now, whatever follows: every event is in it.
        self.stale_lines = 0;
        for entry in &mut self.entries {
            entry.on_disk = true;
        }
        let reopened = (|| {
            File::open(&self.dir)?.sync_all()?;
            let file = OpenOptions::new().append(true).open(&path)?;
            Ok((file.metadata()?.len(), file))
        })();
        let result = match reopened {
            Ok((len, file)) => {
                (self.file_len, self.file) = (len, Some(file));
                Ok(())
            }
            // Not the old file, which is gone: the next event finds none and is kept in
            // memory, to be written back.
            Err(e) => {
                (self.file_len, self.file) = (0, None);
                Err(e)
            }
        };
        // What it said of the events not on disk no longer holds.
        self.write_mark();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Spool {
        pub fn is_empty(&self) -> bool {
            self.entries.is_empty()
        }
    }
    use respawn_common::messages::{EventKind, VERSION};
    use std::time::SystemTime;

    fn event(spool: &mut Spool) -> Event {
        spool.make_room(0);
        let seq = spool.next_seq();
        let event = Event {
            v: VERSION,
            id: format!("id-{seq}"),
            seq,
            agent: "a".into(),
            at: SystemTime::UNIX_EPOCH,
            process: Some("web".into()),
            dropped_before: spool.take_dropped(),
            kind: EventKind::Stopped { removed: false },
        };
        spool.push(&event);
        event
    }

    fn seqs(spool: &Spool) -> Vec<u64> {
        spool.entries().iter().map(|e| e.seq).collect()
    }

    #[test]
    fn undelivered_events_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..5 {
            event(&mut spool);
        }
        assert_eq!(spool.ack(1), 1);
        assert_eq!(spool.ack(3), 0, "out of order: stays until 2 is delivered");
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100);
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
        drop(spool);
        let spool = Spool::open(dir.path(), 100);
        assert!(spool.is_empty());
        assert_eq!(spool.next_seq(), 6, "the mark remembers the sequence");
    }

    /// Found by a review: under systemd's StateDirectory= (0755) the spool was 0755 and its
    /// events, with programs' last lines of output, 0644: any local user could read them.
    #[test]
    fn the_spool_is_the_agents_to_read_only() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("spool");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut spool = Spool::open(&dir, 10_000);
        event(&mut spool);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("events.jsonl")), 0o600);
        spool.ack(1);
        spool.compact().unwrap();
        assert_eq!(mode(&dir.join("events.jsonl")), 0o600, "after a compaction");
    }

    #[test]
    fn a_delivered_file_is_cut_once_large_and_the_numbers_still_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut spool = Spool::open(dir.path(), 10_000);
        event(&mut spool);
        spool.ack(1);
        // Small: the delivered line stays, and with it the number it had, should the mark
        // not have reached the disk before a power cut.
        assert!(fs::metadata(&path).unwrap().len() > 0);
        fs::write(dir.path().join("mark"), b"").unwrap();
        let mut spool = Spool::open(dir.path(), 10_000);
        assert_eq!(
            seqs(&spool),
            [1],
            "sent again: a duplicate, dropped by its id"
        );
        assert_eq!(spool.next_seq(), 2, "taken from the delivered line");
        let mut seq = 1;
        while fs::metadata(&path).unwrap().len() < CUT_AFTER_BYTES {
            seq = event(&mut spool).seq;
        }
        for delivered in 1..=seq {
            spool.ack(delivered);
        }
        assert!(spool.is_empty());
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "cut");
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 10_000).next_seq(), seq + 1);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_the_event_that_needed_room_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3);
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
    fn a_disk_that_takes_one_write_and_refuses_the_next_is_reported_once_a_minute() {
        let mut failures = WriteFailures::new();
        let t0 = Instant::now();
        assert_eq!(failures.success(t0), None, "nothing failed: nothing to say");
        assert_eq!(failures.failure(t0), Some(1));
        for _ in 0..50 {
            assert_eq!(
                failures.success(t0),
                None,
                "no recovery said within the minute"
            );
            assert_eq!(failures.failure(t0), None);
        }
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            failures.success(later),
            Some(50),
            "the failures since, counted"
        );
        assert_eq!(failures.success(later), None);
        // A failure the throttle kept quiet is still counted in the next word.
        assert_eq!(failures.failure(later), None);
        let much_later = later + Duration::from_secs(61);
        assert_eq!(failures.success(much_later), Some(1));
    }

    #[test]
    fn drops_reported_by_an_event_that_is_dropped_too_are_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 3);
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
        let mut spool = Spool::open(dir.path(), 10);
        event(&mut spool);
        event(&mut spool);
        assert_eq!(spool.discard(2), 0, "not at the front");
        assert_eq!(spool.ack(1), 2);
        assert_eq!(event(&mut spool).dropped_before, 1);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 10);
        assert_eq!(
            event(&mut spool).dropped_before,
            0,
            "reported once, not again after a restart"
        );
    }

    /// An event dropped to make room while the broker has it counts only if the broker never
    /// takes it: taken, it was delivered; refused, or its connection lost, it was not.
    #[test]
    fn an_event_dropped_in_flight_counts_only_if_it_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 2);
        for _ in 0..2 {
            event(&mut spool);
        }
        // Events 1 and 2 are in flight; making room for 3 drops 1.
        assert_eq!(spool.make_room(2), 1);
        assert_eq!(spool.take_dropped(), 0, "not yet known to be lost");
        assert_eq!(spool.ack(1), 0, "taken: delivered after all");
        assert_eq!(spool.take_dropped(), 0);
        let third = event(&mut spool);
        assert_eq!(third.dropped_before, 0);
        spool.make_room(2);
        assert_eq!(spool.discard(2), 0);
        assert_eq!(spool.take_dropped(), 1, "refused: lost");
        event(&mut spool);
        spool.make_room(2);
        spool.connection_lost();
        assert_eq!(spool.take_dropped(), 1, "never answered: lost");
        spool.connection_lost();
        assert_eq!(spool.take_dropped(), 0, "counted once");
    }

    #[test]
    fn a_drop_not_yet_reported_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1);
        event(&mut spool);
        assert_eq!(spool.make_room(0), 1);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1);
        assert!(spool.is_empty());
        assert_eq!(event(&mut spool).dropped_before, 1);
    }

    /// The agent dies with events it could not write: what the disk kept is sent, the rest is
    /// counted, and no number is given twice.
    #[test]
    fn a_full_disk_then_a_crash_never_reuses_a_number_and_counts_what_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..3 {
            event(&mut spool);
        }
        spool.ack(1);
        // Every append now fails with ENOSPC; the mark, rewritten in place, still works.
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        let kept_in_memory: Vec<u64> = (0..2).map(|_| event(&mut spool).seq).collect();
        assert_eq!(kept_in_memory, [4, 5]);
        assert_eq!(
            seqs(&spool),
            [2, 3, 4, 5],
            "still sent while the agent lives"
        );
        drop(spool); // kill -9: nothing more reaches the disk

        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [2, 3], "what reached the disk");
        assert_eq!(spool.next_seq(), 6, "4 and 5 are never given again");
        let next = event(&mut spool);
        assert_eq!((next.seq, next.dropped_before), (6, 2));
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(event(&mut spool).dropped_before, 0, "reported once");
    }

    /// Found by a review: events the disk refused stayed in memory only, though the disk took
    /// writes again, and a restart of the agent (even a stop in good order) lost them.
    #[test]
    fn events_the_disk_refused_are_written_once_it_takes_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let appending = || OpenOptions::new().append(true).open(&path).unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..3 {
            event(&mut spool);
        }
        spool.ack(1);
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        event(&mut spool);
        event(&mut spool);
        assert_eq!(spool.unwritten(), 2);
        // Space is back: the next event brings them to the disk, in order.
        spool.file = Some(appending());
        spool.write_back_at = None;
        event(&mut spool);
        assert_eq!(spool.unwritten(), 0);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [2, 3, 4, 5, 6]);
        assert_eq!(event(&mut spool).dropped_before, 0, "nothing lost");

        // With no event to bring them, the heartbeat does (and the agent's stop).
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        event(&mut spool);
        assert_eq!(spool.unwritten(), 1);
        spool.file = Some(appending());
        spool.write_back(true);
        drop(spool);
        let spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [2, 3, 4, 5, 6, 7, 8]);
    }

    /// Found by a review: an event the disk refused took the count of drops it reported with
    /// it when the agent died, and those drops were never reported.
    #[test]
    fn the_drops_an_unwritten_event_reported_are_counted_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 2);
        for _ in 0..4 {
            event(&mut spool);
        }
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        let carrier = event(&mut spool);
        assert_eq!(
            carrier.dropped_before, 2,
            "event 3 made room, with the 1 it reported"
        );
        let later = event(&mut spool);
        assert_eq!(
            later.dropped_before, 2,
            "event 4 made room, with the 2 it reported"
        );
        assert_eq!(seqs(&spool), [5, 6]);
        drop(spool); // kill -9

        let mut spool = Spool::open(dir.path(), 2);
        // Every event before it is lost: 1 to 4 made room and were reported only by 5 and
        // 6, which never reached the disk.
        let next = event(&mut spool);
        assert_eq!((next.seq, next.dropped_before), (7, 6), "{next:?}");
    }

    /// Found by a second look: a rewrite brought by deliveries wrote the refused events, but
    /// the mark still said their drops were not on disk, and a crash counted them twice.
    /// And an event delivered before it was written took its drops out of the count at once.
    #[test]
    fn the_drops_of_refused_events_are_counted_once_whatever_brings_them_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..3 {
            event(&mut spool);
        }
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        spool.mark.dropped_unreported = 3;
        assert_eq!(event(&mut spool).dropped_before, 3);
        spool.file = Some(OpenOptions::new().append(true).open(&path).unwrap());
        spool.compact().unwrap(); // as a rewrite that deliveries bring
        drop(spool); // kill -9
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [1, 2, 3, 4]);
        assert_eq!(event(&mut spool).dropped_before, 0, "reported by 4, once");

        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        spool.mark.dropped_unreported = 2;
        let delivered = event(&mut spool);
        assert_eq!(spool.ack(delivered.seq), 0, "1 to 5 are not yet delivered");
        drop(spool); // kill -9
        let mut spool = Spool::open(dir.path(), 100);
        // Its number is missing and counted (the spool cannot tell it was delivered), but the
        // 2 it reported reached the broker with it.
        assert_eq!(event(&mut spool).dropped_before, 1);
    }

    /// Found by a second look: a mark that could not be opened at the start (not for want of
    /// space) was written over once it could, and the higher numbers it said were given again.
    #[test]
    fn a_mark_opened_late_keeps_the_numbers_it_says_were_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        spool.record = None;
        let given = Mark {
            next_seq: 500,
            delivered: 499,
            counted_through: 499,
            ..Mark::default()
        };
        Record::open_or_make(&dir.path().join("mark"))
            .unwrap()
            .write(&serde_json::to_vec(&given).unwrap())
            .unwrap();
        assert_eq!(event(&mut spool).seq, 1, "given before the mark was opened");
        assert_eq!(event(&mut spool).seq, 500);
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 100).next_seq(), 501);
    }

    /// A write-back copies the whole spool: on a disk that keeps refusing it, it is tried
    /// less and less often, up to once a minute.
    #[test]
    fn a_write_back_the_disk_refuses_is_tried_less_and_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        event(&mut spool);
        spool.dir = PathBuf::from("/dev/null/spool"); // no copy can be made there
        spool.write_back_at = None;
        spool.write_back(false);
        assert_eq!(spool.write_back_wait, Duration::from_secs(2));
        let due = spool.write_back_at;
        spool.write_back(false);
        assert_eq!(spool.write_back_at, due, "not tried again before it is due");
        for _ in 0..10 {
            spool.write_back(true);
        }
        assert_eq!(spool.write_back_wait, WRITE_BACK_MAX_WAIT);
        spool.dir = dir.path().to_owned();
        spool.write_back(true);
        assert_eq!(spool.unwritten(), 0);
        assert_eq!(
            spool.write_back_wait, WRITE_BACK_WAIT,
            "the first wait again"
        );
    }

    /// Found by a review: a mark that could not be made at the start (a full disk) was never
    /// made that run; the delivered file was then cut with nothing on disk to remember the
    /// numbers, and after a crash they began again at 1.
    #[test]
    fn a_mark_the_disk_refused_at_the_start_is_made_later_and_numbers_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000);
        // As if the disk had refused it at the start.
        spool.record = None;
        fs::remove_file(dir.path().join("mark")).unwrap();
        let mut seq = 0;
        while fs::metadata(dir.path().join("events.jsonl")).unwrap().len() < CUT_AFTER_BYTES {
            seq = event(&mut spool).seq;
        }
        assert!(spool.record.is_some(), "made at the next write");
        for delivered in 1..=seq {
            spool.ack(delivered);
        }
        drop(spool); // kill -9
        assert_eq!(Spool::open(dir.path(), 10_000).next_seq(), seq + 1);

        // And while it cannot be made, the delivered lines stay: they keep the numbers.
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000);
        spool.record = None;
        fs::remove_file(dir.path().join("mark")).unwrap();
        fs::create_dir(dir.path().join("mark")).unwrap(); // cannot be opened as a file
        let mut seq = 0;
        while fs::metadata(dir.path().join("events.jsonl")).unwrap().len() < CUT_AFTER_BYTES {
            seq = event(&mut spool).seq;
        }
        for delivered in 1..=seq {
            spool.ack(delivered);
        }
        assert!(spool.record.is_none());
        drop(spool);
        fs::remove_dir(dir.path().join("mark")).unwrap();
        assert_eq!(Spool::open(dir.path(), 10_000).next_seq(), seq + 1);
    }

    /// A mark that is gone (or damaged) says nothing of what was delivered and cut from the
    /// file: the events on disk are sent again and nothing is counted as lost for it.
    #[test]
    fn without_its_mark_the_spool_resends_what_it_has_and_counts_no_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..5 {
            event(&mut spool);
        }
        for seq in 1..=3 {
            spool.ack(seq);
        }
        spool.compact().unwrap();
        drop(spool);
        for mark in [&b""[..], &[0; 512], b"{\"delivered\":14", b"\x93garbage"] {
            fs::write(dir.path().join("mark"), mark).unwrap();
            let mut spool = Spool::open(dir.path(), 100);
            assert_eq!(seqs(&spool), [4, 5], "{mark:?}");
            let next = event(&mut spool);
            assert_eq!((next.seq, next.dropped_before), (6, 0), "{mark:?}");
            drop(spool);
            // The next mark is tried on the same file.
            let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
            let kept: Vec<String> = text
                .lines()
                .filter(|l| !l.contains("\"seq\":6"))
                .map(str::to_owned)
                .collect();
            fs::write(dir.path().join("events.jsonl"), kept.join("\n") + "\n").unwrap();
        }
    }

    /// Numbers no spool gives (damage, or a hand-edited file) are refused, not added to.
    #[test]
    fn numbers_out_of_range_on_disk_are_damage_and_no_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        event(&mut spool);
        drop(spool);
        let line = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let huge = line.replace("\"seq\":1", &format!("\"seq\":{}", u64::MAX));
        fs::write(dir.path().join("events.jsonl"), format!("{line}{huge}")).unwrap();
        let spool = Spool::open(dir.path(), 100);
        assert_eq!((seqs(&spool), spool.next_seq()), (vec![1], 2));
        drop(spool);
        // Refused; a next number in range is kept all the same.
        for (mark, next_seq) in [
            (format!("{{\"delivered\":0,\"next_seq\":{}}}", u64::MAX), 2),
            ("{\"delivered\":9,\"next_seq\":5}".to_owned(), 5),
            (
                "{\"delivered\":0,\"next_seq\":5,\"counted_through\":100}".to_owned(),
                5,
            ),
        ] {
            fs::write(dir.path().join("mark"), &mark).unwrap();
            let mut spool = Spool::open(dir.path(), 100);
            assert_eq!(seqs(&spool), [1], "{mark}");
            let next = event(&mut spool);
            assert_eq!((next.seq, next.dropped_before), (next_seq, 0), "{mark}");
            drop(spool);
            fs::write(dir.path().join("events.jsonl"), &line).unwrap();
        }
    }

    /// A file longer than the spool holds, beside no mark: the oldest lines may be delivered
    /// ones, and going past them counts nothing.
    #[test]
    fn without_its_mark_a_long_file_is_cut_to_the_limit_without_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        for _ in 0..10 {
            event(&mut spool);
        }
        drop(spool);
        fs::write(dir.path().join("mark"), b"").unwrap();
        let mut spool = Spool::open(dir.path(), 4);
        assert_eq!(seqs(&spool), [7, 8, 9, 10]);
        assert_eq!(spool.take_dropped(), 0);
        assert_eq!(spool.next_seq(), 11);
    }

    /// A refused mark still says the next number when it says one in range: numbers do not
    /// go back to what the file holds.
    #[test]
    fn a_refused_mark_still_keeps_the_numbers_from_going_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        event(&mut spool);
        drop(spool);
        let refused = "{\"delivered\":90,\"next_seq\":50}";
        fs::write(dir.path().join("mark"), refused).unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(event(&mut spool).seq, 50);
        drop(spool);
        // The form of earlier versions (no next number) with a count beyond what it
        // delivered, and a line reporting more drops than there can be: refused, no overflow.
        let line = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let first = line.lines().next().unwrap().to_owned();
        let huge = first.replace(
            "\"seq\":1,",
            &format!("\"seq\":2,\"dropped_before\":{},", u64::MAX),
        );
        fs::write(
            dir.path().join("events.jsonl"),
            format!("{first}\n{huge}\n"),
        )
        .unwrap();
        let legacy = "{\"delivered\":0,\"next_seq\":0,\"counted_through\":5}";
        fs::write(dir.path().join("mark"), legacy).unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [1]);
        let next = event(&mut spool);
        assert_eq!((next.seq, next.dropped_before), (2, 0));
    }

    /// A disk that refuses writes wants the space of delivered lines back at once.
    #[test]
    fn on_a_refusing_disk_the_backlog_is_rewritten_every_1024_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000);
        for _ in 0..5000 {
            event(&mut spool);
        }
        spool.file = Some(OpenOptions::new().append(true).open("/dev/full").unwrap());
        event(&mut spool);
        for seq in 1..=(COMPACT_AFTER as u64) {
            spool.ack(seq);
        }
        let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(
            text.lines().count(),
            5001 - COMPACT_AFTER,
            "rewritten, with the event only memory held"
        );
    }

    #[test]
    fn the_mark_of_an_earlier_version_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("delivered"),
            br#"{"delivered":41,"dropped_unreported":3}"#,
        )
        .unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        let next = event(&mut spool);
        assert_eq!((next.seq, next.dropped_before), (42, 3));
        assert!(!dir.path().join("delivered").exists());
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 100).next_seq(), 43);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        event(&mut spool);
        event(&mut spool);
        drop(spool);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("events.jsonl"))
            .unwrap();
        file.write_all(b"{\"v\":1,\"id\":\"torn").unwrap();
        let mut spool = Spool::open(dir.path(), 100);
        assert_eq!(seqs(&spool), [1, 2]);
        // Cut off: the next event is a line of its own, read back after another reopen.
        event(&mut spool);
        drop(spool);
        assert_eq!(seqs(&Spool::open(dir.path(), 100)), [1, 2, 3]);
    }

    #[test]
    fn the_file_is_compacted_once_mostly_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10_000);
        for _ in 0..(COMPACT_AFTER + 10) {
            event(&mut spool);
        }
        for seq in 1..=(COMPACT_AFTER as u64) {
            spool.ack(seq);
        }
        let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 10);
        drop(spool);
        let spool = Spool::open(dir.path(), 10_000);
        assert_eq!(spool.len(), 10);
        assert_eq!(spool.entries()[0].seq, COMPACT_AFTER as u64 + 1);
    }

    #[test]
    fn a_backlog_is_rewritten_only_once_half_of_it_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let lines = || {
            let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
            text.lines().count()
        };
        let mut spool = Spool::open(dir.path(), 10_000);
        for _ in 0..5000 {
            event(&mut spool);
        }
        for seq in 1..=2499 {
            spool.ack(seq);
        }
        assert_eq!(
            lines(),
            5000,
            "2,499 delivered lines are fewer than 2,501 waiting"
        );
        spool.ack(2500);
        assert_eq!(lines(), 2500, "as many delivered as waiting: rewritten");
        for seq in 2501..=3749 {
            spool.ack(seq);
        }
        assert_eq!(lines(), 2500);
        spool.ack(3750);
        assert_eq!(lines(), 1250);
        drop(spool);
        let spool = Spool::open(dir.path(), 10_000);
        assert_eq!(spool.len(), 1250);
        assert_eq!(spool.entries()[0].seq, 3751);
    }
}
