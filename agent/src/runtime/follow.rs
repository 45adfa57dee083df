//! Live logs: while some follower holds a lease on a process (a signed `follow`, renewed), its
//! new lines go out in batches on its `logs/{process}` topic, [`BATCH_EVERY`] after the first
//! of them was written, within one agent-wide byte budget so that a chatty program cannot
//! flood a Pi's uplink. Followers of one process share one stream; nothing is read or sent
//! while nobody follows, and a followed program that is silent wakes nobody (only the lines
//! of followed processes ring the loop). While the broker is away, the streams are looked at
//! every [`BATCH_EVERY`] until it is back or their leases lapse: nothing is read meanwhile.
//! Pure: the runtime passes the time, says when output was written, and passes a way to read
//! a process's lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::{LogBatch, VERSION};
use respawn_common::status::LogLine;

use crate::logs::{wire_size, LONGEST_WIRE_LINE};
use crate::runtime::report::newest_within;

/// How long a `follow` holds the stream open.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long after a followed process writes its new lines go out, with those it writes
/// meanwhile: the longest a line waits, and the most batches a second.
pub const BATCH_EVERY: Duration = Duration::from_millis(100);
/// What all streams together may send, on average, in bytes of the lines as they travel (JSON).
pub const BYTES_PER_SECOND: usize = 128 * 1024;
/// How much unused budget is kept for a burst.
const BURST_BYTES: usize = 64 * 1024;
// The longest line must fit in a full budget, or its stream would wait for ever.
const _: () = assert!(LONGEST_WIRE_LINE <= BURST_BYTES);
/// What the line with the least text costs, to bound what is read for a batch.
const SHORTEST_LINE: usize = 48;

/// New lines of one process, ready to publish.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub process: String,
    /// The number of the first line of `lines`.
    pub seq: u64,
    pub lines: Vec<LogLine>,
    /// Lines before these that were left out.
    pub skipped: u64,
}

impl Batch {
    /// The message that carries these lines of `agent`'s process, whose count began at
    /// `numbered_since`.
    pub fn message(self, agent: &str, numbered_since: Option<SystemTime>) -> LogBatch {
        LogBatch {
            v: VERSION,
            agent: agent.to_owned(),
            process: self.process,
            seq: self.seq,
            lines: self.lines,
            skipped: self.skipped,
            numbered_since,
        }
    }
}

#[derive(Debug)]
struct Stream {
    until: Instant,
    /// The number of the next line to send.
    next: u64,
}

/// The streams under way.
#[derive(Debug)]
pub struct Streams {
    streams: BTreeMap<String, Stream>,
    /// Budget left, in bytes, as of `refilled`.
    tokens: usize,
    refilled: Option<Instant>,
    /// When the next batch goes out: set by output written while nothing is due, by a new
    /// stream, and by lines a batch had to leave for the next.
    next_batch: Option<Instant>,
    /// Which stream goes first at the next batch, so that a short budget is shared.
    turn: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            streams: BTreeMap::new(),
            tokens: BURST_BYTES,
            refilled: None,
            next_batch: None,
            turn: 0,
        }
    }
}

impl Streams {
    /// A `follow` of `process` at `now`: its stream runs until [`LEASE`] from now, starting
    /// at line `seq` if it was not running yet.
    pub fn lease(&mut self, process: &str, seq: u64, now: Instant) {
        let until = now + LEASE;
        match self.streams.get_mut(process) {
            Some(stream) => stream.until = stream.until.max(until),
            None => {
                tracing::info!(process, "streaming its output to followers");
                self.streams
                    .insert(process.to_owned(), Stream { until, next: seq });
            }
        }
        self.next_batch.get_or_insert(now + BATCH_EVERY);
    }

    /// Whether the output of `process` is streamed.
    pub fn is_followed(&self, process: &str) -> bool {
        self.streams.contains_key(process)
    }

    /// When the streams are next due: a batch, or the end of a lease; `None` while nobody
    /// follows.
    pub fn next_due_at(&self) -> Option<Instant> {
        let lapses = self.streams.values().map(|stream| stream.until).min();
        self.next_batch.into_iter().chain(lapses).min()
    }

    /// Whether output written now would make a batch due: some process is followed and none
    /// is due yet. Until then the runtime need not hear of output at all.
    pub fn awaits_output(&self) -> bool {
        !self.streams.is_empty() && self.next_batch.is_none()
    }

    /// A followed process wrote at `now`: its lines go out [`BATCH_EVERY`] later, with what
    /// is written meanwhile.
    pub fn on_output(&mut self, now: Instant) {
        if !self.streams.is_empty() {
            self.next_batch.get_or_insert(now + BATCH_EVERY);
        }
    }

    /// A process left the configuration: its stream ends, with the lines it did not send yet
    /// as a last batch, whatever the budget: what the program said as it was stopped. Of more
    /// than a burst's worth, the newest go, and the others are counted as skipped. `read` as
    /// for [`Streams::batches`].
    pub fn end(
        &mut self,
        process: &str,
        read: impl FnOnce(u64, usize) -> (u64, Vec<LogLine>),
    ) -> Option<Batch> {
        let stream = self.streams.remove(process)?;
        let (first, lines) = read(stream.next, usize::MAX);
        let written = lines.len();
        let (lines, _) = newest_within(lines, BURST_BYTES);
        let left_out = (written - lines.len()) as u64;
        let skipped = first.saturating_sub(stream.next) + left_out;
        (!lines.is_empty() || skipped > 0).then(|| Batch {
            process: process.to_owned(),
            seq: first + left_out,
            lines,
            skipped,
        })
    }

    /// The batches due at `now`, reading each process's lines with `read(process, from, at
    /// most)` (which answers with the number of the first line it still has, and the lines);
    /// streams whose lease lapsed end. Lines go in order and are never left out to make room
    /// for later ones: what the budget cannot take waits for the next batch, and what the
    /// agent's memory lets go meanwhile is counted as skipped. While the agent is not
    /// `connected` nothing is read, so that nothing is lost on the way.
    pub fn batches(
        &mut self,
        now: Instant,
        connected: bool,
        mut read: impl FnMut(&str, u64, usize) -> (u64, Vec<LogLine>),
    ) -> Vec<Batch> {
        self.streams.retain(|process, stream| {
            let keep = stream.until > now;
            if !keep {
                tracing::info!(process, "no follower renewed its lease; the stream stops");
            }
            keep
        });
        self.refill(now);
        self.next_batch = None;
        if !connected {
            // What is written meanwhile waits in the rings: looked at again, in case the
            // link is back.
            self.next_batch = (!self.streams.is_empty()).then(|| now + BATCH_EVERY);
            return Vec::new();
        }
        let names: Vec<String> = self.streams.keys().cloned().collect();
        let start = self.turn % names.len().max(1);
        let mut batches = Vec::new();
        for name in names.iter().cycle().skip(start).take(names.len()) {
            let Some(stream) = self.streams.get_mut(name) else {
                continue;
            };
            let most = self.tokens / SHORTEST_LINE + 1;
            let (first, lines) = read(name, stream.next, most);
            let skipped = first.saturating_sub(stream.next);
            // Lines beyond what the budget took, or beyond what was read: the next batch's.
            let mut left = lines.len() >= most;
            let mut sent = Vec::new();
            for line in lines {
                let cost = wire_size(&line);
                if cost > self.tokens {
                    left = true;
                    break;
                }
                self.tokens -= cost;
                sent.push(line);
            }
            stream.next = first + sent.len() as u64;
            if left {
                self.next_batch = Some(now + BATCH_EVERY);
            }
            if !sent.is_empty() || skipped > 0 {
                batches.push(Batch {
                    process: name.clone(),
                    seq: first,
                    lines: sent,
                    skipped,
                });
            }
        }
        self.turn = self.turn.wrapping_add(1);
        batches
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .refilled
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let earned = (elapsed.as_secs_f64() * BYTES_PER_SECOND as f64) as usize;
        self.tokens = (self.tokens + earned).min(BURST_BYTES);
        self.refilled = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use respawn_common::status::Stream as Output;

    fn line(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: Output::Stdout,
            text: text.into(),
        }
    }

    /// What a process wrote: line `n` is `lines[n - dropped]`.
    struct Written {
        lines: Vec<LogLine>,
        dropped: u64,
    }

    impl Written {
        fn read(&self, from: u64, most: usize) -> (u64, Vec<LogLine>) {
            let first = from.max(self.dropped);
            let skip = (first - self.dropped) as usize;
            (
                first,
                self.lines.iter().skip(skip).take(most).cloned().collect(),
            )
        }
    }

    #[test]
    fn nothing_is_read_or_sent_while_nobody_follows() {
        let mut streams = Streams::default();
        assert_eq!(streams.next_due_at(), None);
        let batches = streams.batches(Instant::now(), true, |_, _, _| panic!("nothing to read"));
        assert!(batches.is_empty());
        assert_eq!(streams.next_due_at(), None);
    }

    #[test]
    fn new_lines_go_out_in_order_until_the_lease_lapses() {
        let t0 = Instant::now();
        let mut written = Written {
            lines: vec![line("old")],
            dropped: 0,
        };
        let mut streams = Streams::default();
        streams.lease("door", 1, t0);
        assert_eq!(streams.next_due_at(), Some(t0 + BATCH_EVERY));
        let at = t0 + BATCH_EVERY;
        assert!(streams
            .batches(at, true, |_, from, most| written.read(from, most))
            .is_empty());
        written.lines.extend([line("a"), line("b")]);
        let batches = streams.batches(at + BATCH_EVERY, true, |_, from, most| {
            written.read(from, most)
        });
        assert_eq!(
            batches,
            [Batch {
                process: "door".into(),
                seq: 1,
                lines: vec![line("a"), line("b")],
                skipped: 0
            }]
        );
        // Renewed just before it lapses: it goes on.
        streams.lease("door", 99, t0 + LEASE - BATCH_EVERY);
        written.lines.push(line("c"));
        let batches = streams.batches(t0 + LEASE, true, |_, from, most| written.read(from, most));
        assert_eq!(batches[0].seq, 3, "a renewal does not move the stream");
        // Not renewed: it ends, and nothing more is due.
        written.lines.push(line("d"));
        let end = t0 + LEASE - BATCH_EVERY + LEASE;
        assert!(streams
            .batches(end, true, |_, from, most| written.read(from, most))
            .is_empty());
        assert_eq!(streams.next_due_at(), None);
    }

    /// A follower left open on a silent program kept the agent waking 20 times a second
    /// (found by a soak run): nothing is due until a line is written, then one batch, and the
    /// lease's end.
    #[test]
    fn a_silent_program_wakes_nobody_until_it_writes() {
        let t0 = Instant::now();
        let mut written = Written {
            lines: Vec::new(),
            dropped: 0,
        };
        let mut streams = Streams::default();
        assert!(!streams.awaits_output(), "nobody follows");
        streams.on_output(t0);
        assert_eq!(streams.next_due_at(), None);
        streams.lease("door", 0, t0);
        let at = t0 + BATCH_EVERY;
        assert!(streams
            .batches(at, true, |_, from, most| written.read(from, most))
            .is_empty());
        // Only the lease's end is due, and output is listened for.
        assert_eq!(streams.next_due_at(), Some(t0 + LEASE));
        assert!(streams.awaits_output());
        written.lines.push(line("a"));
        let wrote = at + Duration::from_secs(5);
        streams.on_output(wrote);
        assert!(
            !streams.awaits_output(),
            "a batch is due: more output changes nothing"
        );
        streams.on_output(wrote + Duration::from_millis(50));
        assert_eq!(streams.next_due_at(), Some(wrote + BATCH_EVERY));
        let batches = streams.batches(wrote + BATCH_EVERY, true, |_, from, most| {
            written.read(from, most)
        });
        assert_eq!(batches[0].lines, [line("a")]);
        assert_eq!(streams.next_due_at(), Some(t0 + LEASE));
    }

    #[test]
    fn a_chatty_program_is_held_to_the_budget_and_what_memory_lost_is_counted() {
        let t0 = Instant::now();
        let text = "x".repeat(100);
        let mut written = Written {
            lines: Vec::new(),
            dropped: 0,
        };
        let mut streams = Streams::default();
        streams.lease("chatty", 0, t0);
        let mut sent_bytes = 0;
        let mut next = 0;
        let mut skipped = 0;
        // Ten seconds of 10,000 lines a second, far beyond the budget; the "ring" keeps the
        // last 2,000 lines.
        for tick in 1..=100u32 {
            written.lines.extend((0..1000).map(|_| line(&text)));
            let excess = written.lines.len().saturating_sub(2000);
            written.lines.drain(..excess);
            written.dropped += excess as u64;
            // Renewed by a flood of followers: it changes nothing.
            for _ in 0..50 {
                streams.lease("chatty", 0, t0 + BATCH_EVERY * tick);
            }
            for batch in streams.batches(t0 + BATCH_EVERY * tick, true, |_, from, most| {
                written.read(from, most)
            }) {
                assert_eq!(batch.seq, next + batch.skipped, "in order, gaps counted");
                next = batch.seq + batch.lines.len() as u64;
                skipped += batch.skipped;
                sent_bytes += batch.lines.iter().map(wire_size).sum::<usize>();
            }
            // What the budget left waits for the next batch, without a word from the rings.
            assert_eq!(
                streams.next_due_at(),
                Some(t0 + BATCH_EVERY * (tick + 1)),
                "tick {tick}"
            );
        }
        let allowed = BYTES_PER_SECOND * 10 + BURST_BYTES;
        assert!(sent_bytes <= allowed, "{sent_bytes} > {allowed}");
        assert!(
            sent_bytes >= BYTES_PER_SECOND * 9,
            "the budget is used: {sent_bytes}"
        );
        assert!(skipped > 0);
    }

    /// A followed process that leaves the configuration sends what it has not sent, past the
    /// budget a chatty program spent: its last words; of more than a burst, the newest, the
    /// others counted. Then its stream is over.
    #[test]
    fn a_stream_that_ends_sends_its_last_lines_whatever_the_budget() {
        let t0 = Instant::now();
        let text = "x".repeat(100);
        let mut written = Written {
            lines: vec![line(&text); 2000],
            dropped: 0,
        };
        let mut streams = Streams::default();
        streams.lease("door", 0, t0);
        let sent: usize = (streams.batches(t0 + BATCH_EVERY, true, |_, from, most| {
            written.read(from, most)
        }))
        .iter()
        .map(|batch| batch.lines.len())
        .sum();
        assert!(sent < 2000, "the budget holds the batches back: {sent}");
        written.lines.push(line("closing the door"));
        let last = streams.end("door", |from, most| written.read(from, most));
        let last = last.expect("a last batch");
        assert_eq!(
            last.lines.last().map(|l| l.text.as_str()),
            Some("closing the door")
        );
        let bytes: usize = last.lines.iter().map(wire_size).sum();
        assert!(bytes <= BURST_BYTES, "{bytes}");
        assert_eq!(
            last.seq + last.lines.len() as u64,
            2001,
            "up to the last line written"
        );
        assert_eq!(
            last.skipped,
            last.seq - sent as u64,
            "what is left out, counted"
        );
        assert!(!streams.is_followed("door"));
        assert_eq!(streams.end("door", |_, _| panic!("nothing to read")), None);
    }

    #[test]
    fn lines_are_charged_as_they_travel_and_the_longest_still_goes() {
        let t0 = Instant::now();
        let mut written = Written {
            lines: vec![line(&"\u{1b}".repeat(crate::logs::MAX_LINE_BYTES)); 3],
            dropped: 0,
        };
        assert!(wire_size(&written.lines[0]) > 6 * crate::logs::MAX_LINE_BYTES);
        assert!(wire_size(&written.lines[0]) <= LONGEST_WIRE_LINE);
        let mut streams = Streams::default();
        streams.lease("ansi", 0, t0);
        let mut sent = 0;
        for tick in 1..=20u32 {
            let at = t0 + BATCH_EVERY * tick;
            for batch in streams.batches(at, true, |_, from, most| written.read(from, most)) {
                sent += batch.lines.len();
            }
        }
        assert_eq!(sent, 3, "each waits for budget enough, none is stuck");
        // Disconnected: nothing is read, so nothing is lost; the lease still lapses.
        written.lines.push(line("later"));
        let at = t0 + BATCH_EVERY * 21;
        assert!(streams
            .batches(at, false, |_, _, _| panic!("not read"))
            .is_empty());
        let batches = streams.batches(at + BATCH_EVERY, true, |_, from, most| {
            written.read(from, most)
        });
        assert_eq!(batches[0].seq, 3);
        assert!(streams
            .batches(t0 + LEASE, false, |_, _, _| panic!("not read"))
            .is_empty());
        assert_eq!(streams.next_due_at(), None);
    }

    #[test]
    fn a_short_budget_is_shared_between_streams() {
        let t0 = Instant::now();
        let text = "y".repeat(1000);
        let written = Written {
            lines: (0..10_000).map(|_| line(&text)).collect(),
            dropped: 0,
        };
        let mut streams = Streams::default();
        streams.lease("a", 0, t0);
        streams.lease("b", 0, t0);
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        for tick in 1..=100u32 {
            for batch in streams.batches(t0 + BATCH_EVERY * tick, true, |_, from, most| {
                written.read(from, most)
            }) {
                *sent.entry(batch.process).or_default() += batch.lines.len();
            }
        }
        let (a, b) = (sent["a"], sent["b"]);
        assert!(a > 0 && b > 0 && a.abs_diff(b) * 4 <= a.max(b), "{sent:?}");
    }
}
