//! Captured output: splitting a child's byte stream into bounded lines, and the per-process ring
//! buffer that keeps the most recent of them for crash reports and `logs`.

use std::collections::VecDeque;
use std::time::SystemTime;

pub use respawn_common::status::{LogLine, Stream};

/// Lines longer than this are split; a program that never writes a newline cannot make the
/// agent buffer without bound.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// The longest line as it travels: JSON writes a control character in six bytes, and the
/// time, stream and quotes around the text take less than 80.
pub const LONGEST_WIRE_LINE: usize = MAX_LINE_BYTES * 6 + 80;

/// What a line costs in a message: its JSON, where escaping can make text six times longer,
/// and the comma between it and the next.
pub fn wire_size(line: &LogLine) -> usize {
    serde_json::to_vec(line).map_or(LONGEST_WIRE_LINE, |json| json.len() + 1)
}

/// Memory kept per process for its output: the text of each line plus what keeping a line
/// costs, so that a flood of empty lines is bounded too.
pub const RING_BYTES: usize = 256 * 1024;

/// What a kept line costs beyond its text.
pub const LINE_OVERHEAD: usize = std::mem::size_of::<LogLine>();

/// The lines of one process's output that the agent's own log takes per [`LOGGED_WINDOW`]; the
/// ring takes all of them. A burst (a stack trace) passes whole; a flood is 100 lines a
/// second, a third of what journald takes of a whole service by default (10,000 in 30 s).
pub const LOGGED_PER_WINDOW: u32 = 1000;
pub const LOGGED_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

fn cost(line: &LogLine) -> usize {
    line.text.len() + LINE_OVERHEAD
}

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`]; invalid UTF-8 is replaced,
/// `\r\n` counts as one line end.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes and calls `emit` for every complete line.
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(String)) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.pending.len();
            // One byte beyond the room: a newline right after a full line still ends it.
            let search = &bytes[..bytes.len().min(room + 1)];
            if let Some(end) = search.iter().position(|&b| b == b'\n') {
                self.pending.extend_from_slice(&bytes[..end]);
                emit(self.take());
                bytes = &bytes[end + 1..];
            } else if bytes.len() > room {
                self.pending.extend_from_slice(&bytes[..room]);
                // A character cut in two would be two replacement characters: it goes whole
                // to the next line.
                let cut = self.pending.len() - unfinished_character(&self.pending);
                let rest = self.pending.split_off(cut);
                emit(self.take());
                self.pending = rest;
                bytes = &bytes[room..];
            } else {
                self.pending.extend_from_slice(bytes);
                bytes = &[];
            }
        }
    }

    /// Emits what is left when the stream ends without a final newline.
    pub fn finish(&mut self, emit: impl FnOnce(String)) {
        if !self.pending.is_empty() {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        let mut line = std::mem::take(&mut self.pending);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        // The ring's accounting counts the text; keep the allocation to match.
        line.shrink_to_fit();
        match String::from_utf8(line) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that they do not finish.
fn unfinished_character(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: the character began further back
        }
        let length = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if length > back { back } else { 0 };
    }
    0
}

/// The most recent lines of one process, within [`RING_BYTES`]; the oldest lines go first, and
/// how many went is counted.
#[derive(Debug)]
pub struct LogRing {
    lines: VecDeque<LogLine>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
    /// When line number 0 was due: a follower tells a new count from an old one by it.
    began: SystemTime,
    /// Its lines are streamed to followers: each one is to wake the agent's loop.
    pub followed: bool,
}

impl Default for LogRing {
    fn default() -> Self {
        Self::with_capacity(RING_BYTES)
    }
}

impl LogRing {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            capacity,
            dropped: 0,
            began: SystemTime::now(),
            followed: false,
        }
    }

    pub fn push(&mut self, line: LogLine) {
        self.bytes += cost(&line);
        self.lines.push_back(line);
        while self.bytes > self.capacity {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= cost(&old);
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// The number the next line will have: lines are numbered from 0, in the order they
    /// came, across the runs of the process.
    pub fn end(&self) -> u64 {
        self.dropped + self.lines.len() as u64
    }

    /// At most `most` of the lines from number `seq` on that the ring still holds, with the
    /// number of the first of them (more than `seq` when some went to make room).
    pub fn since(&self, seq: u64, most: usize) -> (u64, Vec<LogLine>) {
        let first = seq.max(self.dropped);
        let skip = usize::try_from(first - self.dropped).unwrap_or(usize::MAX);
        (
            first,
            self.lines.iter().skip(skip).take(most).cloned().collect(),
        )
    }

    /// When the count of lines began.
    pub fn began(&self) -> SystemTime {
        self.began
    }

    /// Lines dropped to make room since the process was first started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_across_what_the_ring_dropped() {
        let line = |text: &str| LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: Stream::Stdout,
            text: text.into(),
        };
        let mut ring = LogRing::with_capacity(3 * cost(&line("a")));
        assert_eq!((ring.end(), ring.since(0, 10)), (0, (0, vec![])));
        for text in ["a", "b", "c", "d", "e"] {
            ring.push(line(text));
        }
        assert_eq!(ring.end(), 5);
        let texts = |(first, lines): (u64, Vec<LogLine>)| {
            (first, lines.into_iter().map(|l| l.text).collect::<Vec<_>>())
        };
        assert_eq!(
            texts(ring.since(0, 10)),
            (2, vec!["c".into(), "d".into(), "e".into()])
        );
        assert_eq!(texts(ring.since(4, 10)), (4, vec!["e".into()]));
        assert_eq!(texts(ring.since(5, 10)), (5, vec![]));
        assert_eq!(texts(ring.since(9, 10)), (9, vec![]));
    }

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |l| lines.push(l));
        }
        splitter.finish(|l| lines.push(l));
        lines
    }

    #[test]
    fn lines_are_joined_across_reads_and_split_within_them() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            ["hello", "world", "", "last"]
        );
        assert_eq!(split(&[b"crlf\r\n"]), ["crlf"]);
        assert_eq!(split(&[]), Vec::<String>::new());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        assert_eq!(split(&[b"caf\xe9\n"]), ["caf\u{fffd}"]);
    }

    #[test]
    fn long_lines_are_capped_without_losing_bytes() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = split(&[&long, b"\nnext\n"]);
        let lens: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lens, [MAX_LINE_BYTES, MAX_LINE_BYTES, 10, 4]);
    }

    #[test]
    fn a_long_line_is_cut_between_characters_never_inside_one() {
        let euros = "€".repeat(3000);
        for chunks in [
            vec![euros.as_bytes()],
            euros.as_bytes().chunks(1000).collect(),
        ] {
            let mut written = chunks.concat();
            written.push(b'\n');
            let lines = split(&[&written]);
            assert!(lines.len() > 1 && lines.iter().all(|l| l.len() <= MAX_LINE_BYTES));
            assert_eq!(lines.concat(), euros, "not one character is replaced");
        }
        // A stray lead byte at the cut is no character: it stays invalid, as it was.
        let mut stray = vec![b'x'; MAX_LINE_BYTES - 1];
        stray.extend_from_slice(&[0xE2, b'y', b'\n']);
        assert_eq!(
            split(&[&stray]).concat(),
            "x".repeat(MAX_LINE_BYTES - 1) + "\u{FFFD}y"
        );
    }

    #[test]
    fn a_line_that_fills_the_cap_exactly_is_one_line() {
        let mut exact = vec![b'y'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert_eq!(split(&[&exact, b"z\n"]).len(), 2);
        let (head, tail) = exact.split_at(MAX_LINE_BYTES);
        assert_eq!(split(&[head, tail, b"z\n"]).len(), 2);
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_byte_budget() {
        let mut ring = LogRing::with_capacity(10 + 3 * LINE_OVERHEAD);
        for text in ["aaaa", "bbbb", "cccc", "dd"] {
            ring.push(line(text));
        }
        let texts: Vec<String> = ring.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["bbbb", "cccc", "dd"]);
        assert_eq!(ring.dropped(), 1);
        let last: Vec<String> = ring.tail(2).into_iter().map(|l| l.text).collect();
        assert_eq!(last, ["cccc", "dd"]);
    }

    #[test]
    fn empty_lines_cost_memory_too() {
        let mut ring = LogRing::with_capacity(10 * LINE_OVERHEAD);
        for _ in 0..1000 {
            ring.push(line(""));
        }
        assert_eq!(ring.len(), 10);
        assert_eq!(ring.dropped(), 990);
    }

    #[test]
    fn a_line_larger_than_the_ring_leaves_it_empty_rather_than_overfull() {
        let mut ring = LogRing::with_capacity(3);
        ring.push(line("toolong"));
        assert!(ring.is_empty());
        assert_eq!(ring.dropped(), 1);
    }
}
