//! What `respawnctl logs -f` knows while it follows: where the stream stands, which lines are
//! printed, and what happened to the process, told among its lines. Pure: fed the broker's
//! messages and the time, it says what to print ([`Follower::take_said`]) and what to ask the
//! agent ([`Follower::ask`]); `super::follow` does the printing and the sending.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use respawn_common::messages::TAIL_LINE_BYTES;
use respawn_common::messages::{
    AgentState, CommandName, CommandReply, Event, EventKind, LogBatch, Presence, Reason,
    ReplyStatus, MAX_LOG_LINES,
};
use respawn_common::status::LogLine;
use respawn_common::time::ClockOffset;
use respawn_common::topics::{Topic, Topics};

use crate::cmd::exit_code;
use crate::output::{self, Style};
use crate::request::{Job, Outcome};
use crate::session::Message;

/// How long what happened to the process (a start, say) waits for output written before it,
/// which comes in batches every 100 ms while the event comes at once.
const MARKER_WAIT: Duration = Duration::from_millis(300);
/// How long an exit waits for its last words (the lines its event ends with), should they
/// never come.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(2);

/// The moment an input is taken in: for waits, and for the times printed.
#[derive(Clone, Copy, Debug)]
pub struct Moment {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What the follower has to say, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// Lines, and what happened among them, for standard output.
    Out(String),
    /// A line about the follow itself, for standard error.
    Err(String),
}

/// What a follower knows: the agent's session, and the number of the next line to print.
/// Lines are printed once each, in order; a gap is said, never passed over in silence.
pub struct Follower<'a> {
    agent: &'a str,
    process: &'a str,
    json: bool,
    /// The agent's current session, from its birth.
    pub session: Option<String>,
    /// How far the agent's clock is off ours: its lines are printed by ours (`--json` gives
    /// them as the agent dated them).
    pub clock: ClockOffset,
    /// The `follow` waiting for its answer, and how many lines it asked for.
    sent: Option<(String, usize)>,
    pub accepted: bool,
    /// The number of the next line to print: `None` until the first reply says where the
    /// stream starts (batches that come earlier wait in `early`).
    pub next: Option<u64>,
    /// When the count of lines that `next` belongs to began (from agents that say it).
    numbered_since: Option<SystemTime>,
    early: Vec<LogBatch>,
    /// A `follow` asking for the lines of a gap is under way: the stream's batches wait in
    /// `early` for its lines, which come first (printed at once, they would pass over them).
    filling: bool,
    /// Send a `follow` for the lines of a gap at once (a new session, a reconnection).
    pub resync: bool,
    /// How the command ends, once it is known.
    pub finished: Option<ExitCode>,
    pub online: bool,
    /// What happened to the process, waiting for the lines written before it.
    markers: VecDeque<Marker>,
    /// Which lines were printed, as far as exits wait for them.
    printed: Printed,
    /// The newest event seen, so that one delivered again is told once.
    last_event: u64,
    /// What is to be printed, not yet taken.
    said: Vec<Said>,
}

/// What happened to the followed process (it exited, it started again), told among its lines.
struct Marker {
    at: SystemTime,
    kind: &'static str,
    words: String,
    received: Instant,
    /// For an exit: its last lines, those of the millisecond its output ended in, which are
    /// to be printed first.
    last_words: Vec<LogLine>,
    /// The process left the agent's configuration: once told, the follow ends.
    removal: bool,
}

/// Which lines were printed: those written before the newest printed was, and those printed
/// that were written in its millisecond (times are to the millisecond: the lines of both
/// pipes, read at once, often share one).
#[derive(Debug, Default)]
struct Printed {
    /// When the newest line printed was written.
    until: Option<SystemTime>,
    /// The lines printed that were written then.
    last_millisecond: Vec<LogLine>,
}

/// Whether `printed` is the line `tail` of an exit's tail, which holds a long line cut (at a
/// character's end) to [`TAIL_LINE_BYTES`].
fn same(printed: &LogLine, tail: &LogLine) -> bool {
    let cut = tail.text.len() + 4 > TAIL_LINE_BYTES && printed.text.starts_with(&tail.text);
    printed.at == tail.at && printed.stream == tail.stream && (printed.text == tail.text || cut)
}

/// The lines of `tail` written in its last millisecond, in order.
fn last_millisecond(tail: &[LogLine]) -> Vec<LogLine> {
    let Some(last) = tail.last() else {
        return Vec::new();
    };
    let first = tail
        .iter()
        .rposition(|line| line.at != last.at)
        .map_or(0, |i| i + 1);
    tail[first..].to_vec()
}

impl Printed {
    fn note(&mut self, line: &LogLine) {
        if self.until != Some(line.at) {
            self.last_millisecond.clear();
        }
        self.until = Some(line.at);
        self.last_millisecond.push(line.clone());
    }

    /// Whether `words`, lines of one millisecond, were printed, each and in order: a line
    /// that repeats is printed as often as it is said.
    fn all_of(&self, words: &[LogLine]) -> bool {
        let Some(at) = words.first().map(|line| line.at) else {
            return true;
        };
        match self.until {
            Some(until) if until > at => true,
            Some(until) if until == at => {
                let mut printed = self.last_millisecond.iter();
                words.iter().all(|word| printed.any(|p| same(p, word)))
            }
            _ => false,
        }
    }
}

impl<'a> Follower<'a> {
    pub fn new(agent: &'a str, process: &'a str, json: bool) -> Self {
        Self {
            agent,
            process,
            json,
            session: None,
            clock: ClockOffset::default(),
            sent: None,
            accepted: false,
            next: None,
            numbered_since: None,
            early: Vec::new(),
            filling: false,
            resync: false,
            finished: None,
            online: true,
            markers: VecDeque::new(),
            printed: Printed::default(),
            last_event: 0,
            said: Vec::new(),
        }
    }

    /// What is to be printed since it was last taken, in order.
    pub fn take_said(&mut self) -> Vec<Said> {
        std::mem::take(&mut self.said)
    }

    fn out(&mut self, text: &str) {
        match self.said.last_mut() {
            Some(Said::Out(out)) => out.push_str(text),
            _ => self.said.push(Said::Out(text.to_owned())),
        }
    }

    fn err(&mut self, line: String) {
        self.said.push(Said::Err(line));
    }

    /// What a renewal asks for: no lines, as the stream brings them; but one that replaces an
    /// ask for a gap's lines still unanswered asks for them again, or its answer, the only one
    /// now awaited, would fill nothing.
    pub fn renewal_lines(&self) -> usize {
        self.sent.as_ref().map_or(0, |(_, lines)| *lines)
    }

    /// A `follow` asking for the last `lines` (at most [`MAX_LOG_LINES`]), to be sent as the
    /// job, with the lines it asks for: the answer awaited from now on.
    pub fn ask(&mut self, lines: usize) -> (Job, usize) {
        let job = Job::new(self.agent, Some(self.process), self.session.as_deref());
        self.sent = Some((job.cmd_id.clone(), lines));
        self.accepted = false;
        self.filling |= lines > 0 && self.next.is_some();
        (job, lines.min(MAX_LOG_LINES))
    }

    pub fn on_message(&mut self, topics: &Topics, message: &Message, now: Moment) {
        match topics.parse(&message.topic) {
            Some(Topic::Logs { .. }) => {
                if let Ok(batch) = serde_json::from_slice::<LogBatch>(&message.payload) {
                    self.on_batch(batch, now);
                }
            }
            Some(Topic::State { .. }) => {
                if let Ok(state) = serde_json::from_slice::<AgentState>(&message.payload) {
                    self.on_state(state);
                }
            }
            Some(Topic::Reply { .. }) => {
                if let Ok(reply) = serde_json::from_slice::<CommandReply>(&message.payload) {
                    self.on_reply(reply, now);
                }
            }
            Some(Topic::Event { .. }) => {
                if let Ok(event) = serde_json::from_slice::<Event>(&message.payload) {
                    self.on_event(&event, now.at);
                }
            }
            _ => {}
        }
    }

    /// An event of the agent: one of the followed process's (not a command's audit) waits to
    /// be told where it happened among the lines.
    fn on_event(&mut self, event: &Event, received: Instant) {
        let ours = event.process.as_deref() == Some(self.process);
        if !ours || matches!(event.kind, EventKind::Command { .. }) || event.seq <= self.last_event
        {
            return;
        }
        self.last_event = event.seq;
        let last_words = match &event.kind {
            EventKind::Exited { log_tail, .. } => last_millisecond(log_tail),
            _ => Vec::new(),
        };
        self.markers.push_back(Marker {
            at: event.at,
            kind: event.kind.name(),
            words: output::event_words(event),
            received,
            last_words,
            removal: matches!(event.kind, EventKind::Stopped { removed: true }),
        });
    }

    /// When the first marker is told if no later line comes first: an exit once its last
    /// words are printed (or when they are given up on), anything else after a batch's time.
    pub fn marker_due(&self) -> Option<Instant> {
        let marker = self.markers.front()?;
        Some(match marker.last_words.is_empty() {
            true => marker.received + MARKER_WAIT,
            false if self.printed.all_of(&marker.last_words) => marker.received,
            false => marker.received + LAST_WORDS_WAIT,
        })
    }

    /// Tells the markers due at `now`.
    pub fn tell_due(&mut self, now: Instant) {
        while self.marker_due().is_some_and(|due| due <= now) {
            self.tell_first();
        }
    }

    /// Tells the markers of what happened before a line written at `at`, but not an exit
    /// before its last words (times are to the millisecond: its last line may share its own).
    fn tell_before(&mut self, at: SystemTime) {
        self.tell_while(|follower, m| m.at <= at && follower.printed.all_of(&m.last_words));
    }

    /// Tells every marker left, as the follow ends: what happened to the process before
    /// then, even without its last words (a removal ends the follow before they would come).
    pub fn tell_all(&mut self) {
        self.tell_while(|_, _| true);
    }

    /// Tells the markers in their order for as long as `now_due` says of the first.
    fn tell_while(&mut self, now_due: impl Fn(&Self, &Marker) -> bool) {
        while (self.markers.front()).is_some_and(|m| now_due(self, m)) {
            self.tell_first();
        }
    }

    fn tell_first(&mut self) {
        let Some(marker) = self.markers.pop_front() else {
            return;
        };
        let line = match self.json {
            true => serde_json::json!({
                "agent": self.agent, "process": self.process,
                "at": respawn_common::time::format(marker.at),
                "event": marker.kind, "note": marker.words,
            })
            .to_string(),
            false => format!("── {} {}", output::Printable(self.process), marker.words),
        };
        self.out(&format!("{line}\n"));
        // At once, not at the next renewal's refusal up to 10 s later: the stream's last
        // batch, sent as the process left, came before the marker was due. Not while lines
        // asked for are awaited (batches wait meanwhile): the refusal that answers the ask
        // prints what waited, and ends the follow.
        if marker.removal && self.finished.is_none() && !self.filling {
            self.finished = Some(ExitCode::from(2));
            self.err(self.left_line());
        }
    }

    fn left_line(&self) -> String {
        format!(
            "respawnctl: {}/{} left the agent's configuration; the follow ends",
            self.agent,
            output::Printable(self.process)
        )
    }

    fn on_state(&mut self, state: AgentState) {
        let online = state.state == Presence::Online;
        if online != self.online {
            self.err(match online {
                true => format!("respawnctl: {} is back online", self.agent),
                false => format!(
                    "respawnctl: {} went away; following again when it is back",
                    self.agent
                ),
            });
        }
        self.online = online;
        let session = state.session.filter(|s| !s.is_empty());
        if online && session.is_some() && session != self.session {
            self.session = session;
            // A new session: the agent reconnected or restarted, and the lease may be gone.
            self.resync = true;
        }
    }

    fn on_reply(&mut self, reply: CommandReply, now: Moment) {
        let asked = match &self.sent {
            Some((cmd_id, asked)) if *cmd_id == reply.cmd_id => *asked,
            _ => return,
        };
        match reply.status {
            ReplyStatus::Accepted => self.accepted = true,
            ReplyStatus::Succeeded => {
                self.sent = None;
                let Some(following) = reply.follow else {
                    self.err(format!(
                        "respawnctl: {} does not stream live output (an older agent?)",
                        self.agent
                    ));
                    self.finished = Some(ExitCode::from(2));
                    return;
                };
                // The reply's lines are the newest before `seq`.
                let tail = reply.lines.as_deref().unwrap_or_default();
                let first = following.seq.saturating_sub(tail.len() as u64);
                let initial = self.next.is_none();
                let behind = self.next.is_some_and(|next| following.seq < next);
                if initial {
                    self.next = Some(first);
                    self.numbered_since = following.numbered_since;
                } else if self.counts_anew(following.numbered_since, behind) {
                    self.count_began_again(following.numbered_since, asked == 0, now);
                    if asked == 0 {
                        // The lines of the new count are asked for; the stream's batches wait for them.
                        return;
                    }
                }
                // A renewal asks for no lines: the lines before `seq` are the stream's to bring.
                if initial || asked > 0 {
                    // Cut to size, the reply left out lines: the first ask's older ones, or
                    // after a gap, lines the follower still needed. A reply whose cut part
                    // was printed already left out nothing.
                    let wanted = self.next.filter(|_| !initial);
                    if reply.truncated && wanted.is_none_or(|next| next < first) {
                        let at = tail.first().map_or(now.wall, |line| line.at);
                        self.say("lines_skipped", output::LEFT_OUT, at);
                        // Said, and why: not again as lost on the way.
                        self.next = Some(first);
                    }
                    self.print_from(first, tail, now);
                }
                self.filling = false;
                for batch in std::mem::take(&mut self.early) {
                    // A batch of an earlier count that waited here is passed over.
                    if !self.counts_anew(batch.numbered_since, false) {
                        self.on_batch(batch, now);
                    }
                }
            }
            _ if reply.reason == Some(Reason::StaleSession) => {
                // The agent publishes its birth again; the new session comes with it.
                self.sent = None;
            }
            _ => {
                self.sent = None;
                // A refusal of a renewal that will not pass later either (the process left
                // the configuration, the key lost its permission) ends the follow: renewing
                // would only repeat it every 10 s, in the agent's audit too.
                let passing = matches!(
                    reply.reason,
                    Some(Reason::Busy | Reason::ShuttingDown | Reason::Expired)
                );
                let removed = reply.reason == Some(Reason::UnknownProcess) && self.next.is_some();
                let job = Job::new(self.agent, Some(self.process), None);
                let outcome = match reply.status {
                    ReplyStatus::Rejected => Outcome::Rejected(reply),
                    _ => Outcome::Failed(reply),
                };
                let line = match removed {
                    // Not a refusal of what the operator asked: the process was removed.
                    true => self.left_line(),
                    false => output::outcome_line(
                        CommandName::Follow,
                        &job,
                        &outcome,
                        Duration::ZERO,
                        Style { color: false },
                    ),
                };
                // No lines will fill the gap: what the stream brought meanwhile goes out.
                self.filling = false;
                for batch in std::mem::take(&mut self.early) {
                    self.on_batch(batch, now);
                }
                if self.next.is_none() || !passing {
                    // What happened to the process before the end is told before it.
                    self.tell_all();
                    if self.finished.is_some() {
                        // Its removal, told, ended the follow in its own words.
                        return;
                    }
                    self.finished = Some(exit_code(&[&outcome], false));
                }
                self.err(line);
            }
        }
    }

    fn on_batch(&mut self, batch: LogBatch, now: Moment) {
        if batch.agent != self.agent || batch.process != self.process {
            return;
        }
        if self.next.is_none() || self.filling {
            self.early.push(batch);
            return;
        }
        if self.counts_anew(batch.numbered_since, false) {
            self.count_began_again(batch.numbered_since, true, now);
            self.early.push(batch);
            return;
        }
        self.print_from(batch.seq, &batch.lines, now);
    }

    /// Whether lines of a count that began at `numbered_since` are of a new count: one that
    /// began at another time or, from an agent that does not say when, one `behind` what was
    /// printed.
    fn counts_anew(&self, numbered_since: Option<SystemTime>, behind: bool) -> bool {
        match (self.numbered_since, numbered_since) {
            (Some(known), Some(new)) => known != new,
            _ => behind,
        }
    }

    /// The count of lines began again (the agent restarted, or the process came back to its
    /// configuration): printing goes on from its first line. Unless they came already, the
    /// next `follow` asks for its lines (`ask_lines`), and the stream's batches wait for them.
    fn count_began_again(
        &mut self,
        numbered_since: Option<SystemTime>,
        ask_lines: bool,
        now: Moment,
    ) {
        // What happened before the new count began is the old run's, told before the note
        // (whose last words will not come now).
        self.tell_while(|_, m| numbered_since.is_some_and(|since| m.at < since));
        let note =
            "the agent restarted, or the process was configured anew: its lines from then on";
        self.say("agent_restarted", note, now.wall);
        self.numbered_since = numbered_since;
        self.next = Some(0);
        self.resync |= ask_lines;
        self.filling |= ask_lines;
    }

    /// Prints the lines numbered from `first` on that were not printed yet, saying first how
    /// many before them never came.
    fn print_from(&mut self, first: u64, lines: &[LogLine], now: Moment) {
        let Some(next) = self.next else {
            return;
        };
        // Numbers past the last a count can reach come from no agent (a forged batch).
        let end = first.checked_add(lines.len() as u64);
        let Some(end) = end.filter(|&end| end > next) else {
            return;
        };
        if first > next {
            let missed = first - next;
            let noun = if missed == 1 { "line" } else { "lines" };
            let note = format!("{missed} {noun} not shown: over the agent's rate bound for live output, or lost on the way");
            // The missing lines were written before the first that came, not when it came.
            let at = lines.first().map_or(now.wall, |line| line.at.min(now.wall));
            self.say("lines_skipped", &note, at);
        }
        let skip = usize::try_from(next.saturating_sub(first)).unwrap_or(usize::MAX);
        let start = first.max(next);
        for (i, line) in lines.iter().skip(skip).enumerate() {
            // What happened before this line is told before it.
            self.tell_before(line.at);
            self.printed.note(line);
            if self.json {
                let json = serde_json::json!({
                    "agent": self.agent,
                    "process": self.process,
                    "seq": start + i as u64,
                    "at": respawn_common::time::format(line.at),
                    "stream": line.stream.as_str(),
                    "text": line.text,
                });
                self.out(&format!("{json}\n"));
            } else {
                let line = output::by_our_clock(line, self.clock);
                self.out(&format!("{}\n", output::Printable(&line)));
            }
        }
        // An exit whose last words are now out is told at once.
        self.tell_due(now.at);
        self.next = Some(end);
    }

    /// A note of the follower's own in the output, where it happened.
    fn say(&mut self, event: &str, note: &str, at: SystemTime) {
        let line = self.note_line(event, note, at);
        self.out(&line);
    }

    /// A note as printed: in words, or with `--json` an object like an event's, `event`
    /// naming it as the agent's event kinds name theirs.
    fn note_line(&self, event: &str, note: &str, at: SystemTime) -> String {
        match self.json {
            true => {
                let json = serde_json::json!({
                    "agent": self.agent, "process": self.process,
                    "at": respawn_common::time::format(at),
                    "event": event, "note": note,
                });
                format!("{json}\n")
            }
            false => format!("({note})\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower that printed up to line 5 and waits for the reply to `sent`.
    fn following(sent: (&str, usize)) -> Follower<'static> {
        let mut follower = Follower::new("door-pi", "doorbot", false);
        follower.next = Some(5);
        follower.sent = Some((sent.0.to_owned(), sent.1));
        follower
    }

    /// The event `seq` of door-pi's `process`.
    fn event(seq: u64, at: SystemTime, process: &str, kind: EventKind) -> Event {
        Event {
            v: 1,
            id: seq.to_string(),
            seq,
            agent: "door-pi".into(),
            at,
            process: Some(process.into()),
            dropped_before: 0,
            kind,
        }
    }

    /// A crash of pid 7 after 2 s, not restarted, whose output ended with `log_tail`.
    fn exit(status: respawn_common::status::ExitStatus, log_tail: Vec<LogLine>) -> EventKind {
        EventKind::Exited {
            pid: 7,
            status,
            runtime_ms: 2000,
            restarts: 0,
            requested: false,
            shutdown: false,
            leftover: false,
            scheduled: false,
            killed_at_stop_timeout: false,
            next_start: None,
            reason: None,
            log_tail,
            log_truncated: false,
            oom_killed: false,
            memory_max: None,
        }
    }

    #[test]
    fn the_followers_own_notes_read_as_events_in_json() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let note = "the agent restarted; its lines since follow";
        let words = Follower::new("door-pi", "doorbot", false);
        assert_eq!(
            words.note_line("agent_restarted", note, at),
            format!("({note})\n")
        );
        let json = Follower::new("door-pi", "doorbot", true);
        let line = json.note_line("agent_restarted", note, at);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "agent_restarted");
        assert_eq!(value["at"], respawn_common::time::format(at));
        assert_eq!(value["note"], note);
        assert_eq!(
            (value["agent"].as_str(), value["process"].as_str()),
            (Some("door-pi"), Some("doorbot"))
        );
    }

    #[test]
    fn what_happened_to_the_process_is_told_after_its_last_words_and_before_later_lines() {
        use respawn_common::status::{ExitStatus, Stream};
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms);
        let line = |ms: u64, text: &str| LogLine {
            at: t(ms),
            stream: Stream::Stdout,
            text: text.into(),
        };
        let event =
            |seq: u64, ms: u64, process: &str, kind: EventKind| event(seq, t(ms), process, kind);
        let mut exited = exit(ExitStatus::Code { code: 3 }, vec![line(90, "going down")]);
        if let EventKind::Exited { next_start, .. } = &mut exited {
            *next_start = Some(t(4000));
        }
        let started = EventKind::Started {
            pid: 8,
            restarts: 1,
        };
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let now = std::time::Instant::now();
        follower.printed.note(&line(50, "serving"));
        follower.on_event(&event(5, 100, "doorbot", exited.clone()), now);
        follower.on_event(&event(5, 100, "doorbot", exited), now);
        follower.on_event(
            &event(
                6,
                100,
                "other",
                EventKind::Started {
                    pid: 9,
                    restarts: 0,
                },
            ),
            now,
        );
        follower.on_event(&event(7, 150, "doorbot", started), now);
        assert_eq!(
            follower.markers.len(),
            2,
            "once each, only the process's own"
        );

        // The exit waits for its last words, however long the batch takes (up to a bound),
        // also before a line of its own millisecond.
        follower.tell_due(now + MARKER_WAIT);
        follower.tell_before(t(100));
        assert_eq!(follower.take_said(), []);
        follower.printed.note(&line(90, "going down"));
        follower.tell_due(now);
        assert_eq!(
            follower.take_said(),
            [Said::Out(
                "── doorbot crashed exit 3 after 2s, restarting in 4s\n".into()
            )]
        );
        // The start is told before a later line, or after a batch's time without one.
        follower.tell_before(t(120));
        assert_eq!(follower.take_said(), []);
        follower.tell_before(t(200));
        assert_eq!(
            follower.take_said(),
            [Said::Out("── doorbot started pid 8 (restart 1)\n".into())]
        );
        assert!(follower.markers.is_empty());
    }

    /// What the follower prints of an exit whose output ended with `tail` and of `batches`
    /// of its lines, the exit coming after the first batch: each line's text, or the exit's
    /// note.
    fn told(tail: &[LogLine], batches: &[&[LogLine]]) -> Vec<String> {
        let mut stopped = exit(
            respawn_common::status::ExitStatus::Code { code: 0 },
            tail.to_vec(),
        );
        if let EventKind::Exited { requested, .. } = &mut stopped {
            *requested = true;
        }
        let at = tail.last().map_or(SystemTime::UNIX_EPOCH, |line| line.at);
        let exited = event(5, at + Duration::from_millis(1), "doorbot", stopped);
        let now = Moment::now();
        let mut follower = Follower::new("door-pi", "doorbot", false);
        follower.next = Some(5);
        let mut seq = 5;
        for (i, lines) in batches.iter().enumerate() {
            let batch = LogBatch {
                v: 1,
                agent: "door-pi".into(),
                process: "doorbot".into(),
                seq,
                lines: lines.to_vec(),
                skipped: 0,
                numbered_since: None,
            };
            seq += lines.len() as u64;
            follower.on_batch(batch, now);
            if i == 0 {
                follower.on_event(&exited, now.at);
                follower.tell_due(now.at + MARKER_WAIT);
            }
        }
        let said: String = (follower.take_said().into_iter())
            .map(|said| match said {
                Said::Out(text) | Said::Err(text) => text,
            })
            .collect();
        let text = |printed: &str| match printed.split_once(" std") {
            Some((_, rest)) => rest.split_once(' ').map_or("", |(_, text)| text).to_owned(),
            None => printed.to_owned(),
        };
        said.lines().map(text).collect()
    }

    /// Times are to the millisecond, and the lines of one often share one (both pipes read at
    /// once, or a read of many lines); the batches that carry them may part them. An exit is
    /// told once the last lines its event names are printed, each as often as it says them.
    #[test]
    fn an_exit_waits_for_its_last_words_beside_lines_of_their_millisecond() {
        use respawn_common::status::Stream;
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_914);
        let line = |stream: Stream, text: &str| LogLine {
            at,
            stream,
            text: text.into(),
        };
        let exited = "── doorbot exited exit 0 after 2s (as asked)";
        // Both pipes' last words.
        let (terminated, closing) = (
            line(Stream::Stderr, "Terminated"),
            line(Stream::Stdout, "SIGTERM, closing the door"),
        );
        let tail = [terminated.clone(), closing.clone()];
        assert_eq!(
            told(&tail, &[&[terminated], &[closing]]),
            ["Terminated", "SIGTERM, closing the door", exited]
        );
        // A blank line before the last, a line that starts another, a line said twice.
        for (first, last) in [
            ("", "bye"),
            ("stopping", "stopping: done"),
            ("tick", "tick"),
        ] {
            let (first, last) = (line(Stream::Stderr, first), line(Stream::Stderr, last));
            let tail = [first.clone(), last.clone()];
            assert_eq!(
                told(
                    &tail,
                    &[std::slice::from_ref(&first), std::slice::from_ref(&last)]
                ),
                [first.text.as_str(), last.text.as_str(), exited]
            );
        }
        // A long last line, which the event's tail holds cut.
        let long = line(Stream::Stdout, &"x".repeat(2 * TAIL_LINE_BYTES));
        let mut cut = long.clone();
        cut.text.truncate(TAIL_LINE_BYTES);
        assert_eq!(
            told(&[cut], &[std::slice::from_ref(&long)]),
            [long.text.as_str(), exited]
        );
    }

    #[test]
    fn lines_print_once_in_order_a_gap_is_said_and_a_departure_goes_to_stderr() {
        use respawn_common::messages::Following;
        use respawn_common::status::Stream;
        let topics = Topics::default();
        let now = Moment::now();
        let message = |topic: String, payload: Vec<u8>| Message {
            topic,
            payload: payload.into(),
            correlation: None,
            retain: false,
            expires_in: None,
            received: now.wall,
            ack: None,
        };
        let line = |text: &str| LogLine {
            at: now.wall,
            stream: Stream::Stdout,
            text: text.into(),
        };
        let printed = |texts: &[&str]| -> String {
            let lines = texts
                .iter()
                .map(|t| format!("{}\n", output::Printable(&line(t))));
            lines.collect()
        };
        let batch = |seq: u64, texts: &[&str]| {
            let batch = LogBatch {
                v: 1,
                agent: "door-pi".into(),
                process: "doorbot".into(),
                seq,
                lines: texts.iter().map(|t| line(t)).collect(),
                skipped: 0,
                numbered_since: None,
            };
            let topic = topics.logs("door-pi", "doorbot");
            message(topic, serde_json::to_vec(&batch).unwrap())
        };
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let (job, lines) = follower.ask(MAX_LOG_LINES + 1);
        assert_eq!(lines, MAX_LOG_LINES, "asks for no more than an agent gives");

        // The stream's first batch waits for the reply, which says where it starts.
        follower.on_message(&topics, &batch(10, &["c"]), now);
        assert_eq!(follower.take_said(), []);
        let mut reply = CommandReply::new(&job.cmd_id, "door-pi", ReplyStatus::Succeeded);
        reply.lines = Some(vec![line("a"), line("b")]);
        reply.follow = Some(Following {
            seq: 10,
            lease_secs: 30,
            numbered_since: None,
        });
        let reply = message(
            topics.reply("door-pi", "alice"),
            serde_json::to_vec(&reply).unwrap(),
        );
        follower.on_message(&topics, &reply, now);
        assert_eq!(follower.take_said(), [Said::Out(printed(&["a", "b", "c"]))]);

        // Delivered again: nothing. Two lines missing: said, then the next.
        follower.on_message(&topics, &batch(10, &["c"]), now);
        assert_eq!(follower.take_said(), []);
        follower.on_message(&topics, &batch(13, &["f"]), now);
        let gap = "(2 lines not shown: over the agent's rate bound for live output, or lost on the way)\n";
        assert_eq!(
            follower.take_said(),
            [Said::Out(format!("{gap}{}", printed(&["f"])))]
        );

        // The agent went away: said on stderr, apart from the lines.
        let gone = serde_json::json!({"v": 1, "agent": "door-pi", "state": "offline"});
        let state = message(topics.state("door-pi"), gone.to_string().into_bytes());
        follower.on_message(&topics, &state, now);
        assert_eq!(
            follower.take_said(),
            [Said::Err(
                "respawnctl: door-pi went away; following again when it is back".into()
            )]
        );
        assert!(!follower.online);
    }

    /// A reply to the follow `cmd_id` whose stream goes on at `seq`, in a count begun at
    /// `numbered_since` (seconds), with `lines`.
    fn follow_reply(
        cmd_id: &str,
        seq: u64,
        numbered_since: Option<u64>,
        lines: &[&str],
    ) -> CommandReply {
        use respawn_common::messages::Following;
        let mut reply = CommandReply::new(cmd_id, "door-pi", ReplyStatus::Succeeded);
        reply.lines = Some(lines.iter().map(|text| text_line(text)).collect());
        reply.follow = Some(Following {
            seq,
            lease_secs: 30,
            numbered_since: numbered_since.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        });
        reply
    }

    /// The lines of `texts` as the follower prints them.
    fn shown<T: AsRef<str>>(texts: &[T]) -> String {
        let line = |t: &T| format!("{}\n", output::Printable(&text_line(t.as_ref())));
        texts.iter().map(line).collect()
    }

    fn text_line(text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH,
            stream: respawn_common::status::Stream::Stdout,
            text: text.into(),
        }
    }

    fn log_batch(seq: u64, numbered_since: u64, lines: &[&str]) -> LogBatch {
        LogBatch {
            v: 1,
            agent: "door-pi".into(),
            process: "doorbot".into(),
            seq,
            lines: lines.iter().map(|text| text_line(text)).collect(),
            skipped: 0,
            numbered_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(numbered_since)),
        }
    }

    #[test]
    fn a_count_begun_again_is_printed_from_its_first_line_even_past_where_the_old_one_was() {
        let now = Moment::now();
        let restarted =
            "(the agent restarted, or the process was configured anew: its lines from then on)\n";
        for through_batch in [false, true] {
            let mut follower = Follower::new("door-pi", "doorbot", false);
            let (job, _) = follower.ask(2);
            follower.on_reply(follow_reply(&job.cmd_id, 5, Some(100), &["3", "4"]), now);
            assert_eq!(follower.take_said(), [Said::Out(shown(&["3", "4"]))]);
            // The agent restarted and its new count went past 5 before the follower heard.
            match through_batch {
                false => {
                    let (renewal, _) = follower.ask(0);
                    follower.on_reply(follow_reply(&renewal.cmd_id, 9, Some(200), &[]), now);
                }
                true => follower.on_batch(log_batch(9, 200, &["n9"]), now),
            }
            assert_eq!(
                follower.take_said(),
                [Said::Out(restarted.into())],
                "{through_batch}"
            );
            assert!(follower.resync, "the new count's lines are asked for");
            // Batches wait for them, and one of the old count is passed over.
            follower.on_batch(log_batch(9, 200, &["n9"]), now);
            follower.on_batch(log_batch(10, 200, &["n10"]), now);
            follower.on_batch(log_batch(5, 100, &["old5"]), now);
            assert_eq!(follower.take_said(), []);
            let (catch_up, lines) = follower.ask(MAX_LOG_LINES);
            assert_eq!(lines, MAX_LOG_LINES);
            let all: Vec<String> = (0..9).map(|n| format!("n{n}")).collect();
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            follower.on_reply(follow_reply(&catch_up.cmd_id, 9, Some(200), &all), now);
            let printed: Vec<String> = (0..=10).map(|n| format!("n{n}")).collect();
            let printed = [Said::Out(shown(&printed))];
            assert_eq!(follower.take_said(), printed, "{through_batch}");
        }
    }

    #[test]
    fn the_old_runs_end_is_told_before_the_note_that_the_count_began_again() {
        let now = Moment::now();
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let (job, _) = follower.ask(1);
        follower.on_reply(follow_reply(&job.cmd_id, 5, Some(100), &["4"]), now);
        follower.take_said();
        // Stopped with the old agent, at 150 s; the new count began at 200 s, and a start of
        // the new run, at 201 s, came before its first batch.
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let stopped = EventKind::Stopped { removed: false };
        let started = EventKind::Started {
            pid: 7,
            restarts: 0,
        };
        let received = std::time::Instant::now();
        follower.on_event(&event(9, at(150), "doorbot", stopped), received);
        follower.on_event(&event(10, at(201), "doorbot", started), received);
        follower.on_batch(log_batch(0, 200, &["n0"]), now);
        let said: Vec<String> = (follower.take_said().into_iter())
            .filter_map(|said| match said {
                Said::Out(text) => Some(text),
                Said::Err(_) => None,
            })
            .collect();
        assert_eq!(
            said.concat().lines().collect::<Vec<_>>(),
            [
                "── doorbot stopped",
                "(the agent restarted, or the process was configured anew: its lines from then on)",
            ],
        );
        assert_eq!(
            follower.markers.len(),
            1,
            "the new run's start waits for its lines"
        );
    }

    #[test]
    fn a_first_reply_cut_to_size_says_so_before_its_lines() {
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let (job, _) = follower.ask(1000);
        let mut reply = follow_reply(&job.cmd_id, 9, Some(100), &["7", "8"]);
        reply.truncated = true;
        follower.on_reply(reply, Moment::now());
        let note = format!("({})\n", output::LEFT_OUT);
        assert_eq!(
            follower.take_said(),
            [Said::Out(note + &shown(&["7", "8"]))]
        );
    }

    /// Found by a soak: the catch-up after every reconnection asks for the most lines a
    /// reply holds, which the agent cuts to size; the cut part had been printed already, but
    /// the follower said lines were left out, dated before the lines it had printed.
    #[test]
    fn a_catch_up_cut_to_size_says_lines_left_out_only_when_it_left_out_lines_still_needed() {
        let now = Moment::now();
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let (job, _) = follower.ask(1);
        follower.on_reply(follow_reply(&job.cmd_id, 10, Some(100), &["9"]), now);
        follower.take_said();
        // Back after a gap in which lines 10 and 11 were written: the cut reply holds 8..=11.
        let (catch_up, _) = follower.ask(MAX_LOG_LINES);
        let mut reply = follow_reply(&catch_up.cmd_id, 12, Some(100), &["8", "9", "10", "11"]);
        reply.truncated = true;
        follower.on_reply(reply, now);
        assert_eq!(follower.take_said(), [Said::Out(shown(&["10", "11"]))]);
        // A longer gap, whose reply was cut after line 12 was written: 12 and 13 are left
        // out, said once, as the cut.
        let (catch_up, _) = follower.ask(MAX_LOG_LINES);
        let mut reply = follow_reply(&catch_up.cmd_id, 16, Some(100), &["14", "15"]);
        reply.truncated = true;
        follower.on_reply(reply, now);
        let note = format!("({})\n", output::LEFT_OUT);
        assert_eq!(
            follower.take_said(),
            [Said::Out(note + &shown(&["14", "15"]))]
        );
    }

    #[test]
    fn from_an_agent_that_does_not_say_when_its_count_began_a_smaller_seq_asks_for_the_lines() {
        let now = Moment::now();
        let mut follower = Follower::new("door-pi", "doorbot", false);
        let (job, _) = follower.ask(1);
        follower.on_reply(follow_reply(&job.cmd_id, 50, None, &["49"]), now);
        follower.take_said();
        let (renewal, _) = follower.ask(0);
        follower.on_reply(follow_reply(&renewal.cmd_id, 3, None, &[]), now);
        assert!(follower.resync);
        follower.take_said();
        let (catch_up, _) = follower.ask(MAX_LOG_LINES);
        follower.on_reply(
            follow_reply(&catch_up.cmd_id, 3, None, &["0", "1", "2"]),
            now,
        );
        assert_eq!(follower.take_said(), [Said::Out(shown(&["0", "1", "2"]))]);
    }

    #[test]
    fn a_gap_is_stamped_before_the_line_after_it_not_when_that_line_came() {
        use respawn_common::status::Stream;
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let came = Moment {
            at: Instant::now(),
            wall: written + Duration::from_millis(40),
        };
        let mut follower = Follower::new("door-pi", "doorbot", true);
        follower.next = Some(5);
        let after_gap = LogLine {
            at: written,
            stream: Stream::Stdout,
            text: "f".into(),
        };
        follower.print_from(8, &[after_gap], came);
        let said = follower.take_said();
        let [Said::Out(out)] = said.as_slice() else {
            panic!("one print to stdout, not {said:?}");
        };
        let stamps: Vec<serde_json::Value> = out
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["at"].clone())
            .collect();
        let at = serde_json::Value::from(respawn_common::time::format(written));
        assert_eq!(stamps, [at.clone(), at], "the note, then the line");
    }

    #[test]
    fn a_renewal_that_replaces_an_unanswered_ask_for_a_gap_asks_for_its_lines_again() {
        assert_eq!(
            following(("catch-up", MAX_LOG_LINES)).renewal_lines(),
            MAX_LOG_LINES
        );
        assert_eq!(following(("renewal", 0)).renewal_lines(), 0);
        let mut answered = following(("renewal", 0));
        answered.sent = None;
        assert_eq!(answered.renewal_lines(), 0);
    }

    /// The agent's refusal of the renewal, for `reason`.
    fn refused_renewal(reason: Reason) -> CommandReply {
        let mut reply = CommandReply::new("renewal", "door-pi", ReplyStatus::Rejected);
        reply.reason = Some(reason);
        reply
    }

    #[test]
    fn a_renewal_refused_for_good_ends_the_follow_and_a_passing_refusal_does_not() {
        let refused = |reason| {
            let mut follower = following(("renewal", 0));
            follower.on_reply(refused_renewal(reason), Moment::now());
            follower.finished
        };
        assert_eq!(refused(Reason::UnknownProcess), Some(ExitCode::from(2)));
        assert_eq!(refused(Reason::NotAllowed), Some(ExitCode::from(2)));
        assert_eq!(refused(Reason::Busy), None);
        assert_eq!(refused(Reason::ShuttingDown), None);
    }

    #[test]
    fn a_batch_numbered_past_the_last_number_is_passed_over() {
        let mut follower = following(("renewal", 0));
        let line = LogLine {
            at: SystemTime::now(),
            stream: respawn_common::status::Stream::Stdout,
            text: "forged".into(),
        };
        follower.print_from(u64::MAX - 2, &vec![line; 5], Moment::now());
        assert_eq!(follower.take_said(), []);
    }

    #[test]
    fn the_event_of_a_removal_ends_the_follow_once_told_without_waiting_for_a_renewal() {
        let mut follower = following(("renewal", 0));
        let removed = event(
            9,
            SystemTime::now(),
            "doorbot",
            EventKind::Stopped { removed: true },
        );
        let received = std::time::Instant::now();
        follower.on_event(&removed, received);
        follower.tell_due(received);
        assert_eq!(follower.finished, None, "its last batch may still come");
        follower.tell_due(received + MARKER_WAIT);
        assert_eq!(follower.finished, Some(ExitCode::from(2)));
        let left = "respawnctl: door-pi/doorbot left the agent's configuration; the follow ends";
        let said = [
            Said::Out("── doorbot stopped as it left the configuration\n".into()),
            Said::Err(left.into()),
        ];
        assert_eq!(follower.take_said(), said);
        // The renewal's refusal that follows says nothing more.
        follower.on_reply(refused_renewal(Reason::UnknownProcess), Moment::now());
        assert_eq!(follower.take_said(), []);
    }

    #[test]
    fn a_removal_ends_the_follow_in_its_own_words_after_what_happened_before_it() {
        let mut follower = following(("renewal", 0));
        let stopped = event(
            9,
            SystemTime::now(),
            "doorbot",
            EventKind::Stopped { removed: false },
        );
        follower.on_event(&stopped, std::time::Instant::now());
        follower.on_reply(refused_renewal(Reason::UnknownProcess), Moment::now());
        assert_eq!(follower.finished, Some(ExitCode::from(2)));
        assert_eq!(
            follower.take_said(),
            [
                Said::Out("── doorbot stopped\n".into()),
                Said::Err(
                    "respawnctl: door-pi/doorbot left the agent's configuration; the follow ends"
                        .into()
                ),
            ]
        );
    }
}
