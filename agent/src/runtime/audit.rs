//! The audit budget: how many refused commands become audit events one by one, and an account
//! of the rest. Anyone who can publish on the broker can send refusable commands by the
//! thousand, so only so many are audited a minute; the others, and malformed messages and
//! shed commands, are counted by reason and the counts ride on the next audit event — so noise
//! can delay what the audit stream shows, but never hide it. Pure: time is an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::throttle::{Throttle, Verdict};

/// Refusals audited one by one per window.
const AUDITED_PER_WINDOW: u32 = 30;
/// Log lines about malformed messages per window; they have a budget of their own, so that
/// junk never uses up the audit budget of commands that name an id.
const GARBAGE_LOGGED_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// Decides what is audited; `T` is what an audit event is made from.
#[derive(Debug)]
pub struct AuditBudget<T> {
    refusals: Throttle,
    garbage: Throttle,
    counts: BTreeMap<String, u64>,
    /// The latest refusal held back, audited at the end of the window if no other audit
    /// event has carried the counts by then.
    held: Option<(T, String)>,
    flush_at: Option<Instant>,
}

impl<T> AuditBudget<T> {
    pub fn new() -> Self {
        Self {
            refusals: Throttle::new(AUDITED_PER_WINDOW, WINDOW),
            garbage: Throttle::new(GARBAGE_LOGGED_PER_WINDOW, WINDOW),
            counts: BTreeMap::new(),
            held: None,
            flush_at: None,
        }
    }

    /// A refused command that can be audited (it names its id): returns it when it is to be
    /// audited now; otherwise it is counted under `reason`.
    pub fn refuse(&mut self, refusal: T, reason: &str, now: Instant) -> Option<T> {
        match self.refusals.allow(now) {
            Verdict::Allow { .. } => Some(refusal),
            Verdict::Refuse => {
                self.count(reason, 1);
                self.held = Some((refusal, reason.to_owned()));
                self.flush_at.get_or_insert(now + WINDOW);
                None
            }
        }
    }

    /// A message that names no command: counted under `reason`; returns how many such were
    /// not logged before it when this one is to be logged.
    pub fn garbage(&mut self, reason: &str, now: Instant) -> Option<u64> {
        self.count(reason, 1);
        match self.garbage.allow(now) {
            Verdict::Allow { refused } => Some(refused),
            Verdict::Refuse => None,
        }
    }

    /// Counts `n` more under `reason` (such as commands shed before they were read).
    pub fn count(&mut self, reason: &str, n: u64) {
        if n > 0 {
            *self.counts.entry(reason.to_owned()).or_default() += n;
        }
    }

    /// What the next audit event reports as not audited; afterwards nothing is pending.
    pub fn take_counts(&mut self) -> BTreeMap<String, u64> {
        self.held = None;
        self.flush_at = None;
        std::mem::take(&mut self.counts)
    }

    /// When [`AuditBudget::flush`] has something to audit.
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// At the end of a window with refusals held back and no audit event since: the latest of
    /// them, to be audited now (its own count is taken off; the next audit carries the rest).
    pub fn flush(&mut self, now: Instant) -> Option<T> {
        if self.flush_at.is_none_or(|at| now < at) {
            return None;
        }
        self.flush_at = None;
        let (refusal, reason) = self.held.take()?;
        if let Some(n) = self.counts.get_mut(&reason) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&reason);
            }
        }
        Some(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_over_the_budget_are_counted_and_ride_on_the_next_audit() {
        let now = Instant::now();
        let mut budget = AuditBudget::new();
        for n in 0..30 {
            assert_eq!(budget.refuse(n, "bad_signature", now), Some(n));
        }
        assert_eq!(budget.refuse(30, "bad_signature", now), None);
        assert_eq!(budget.refuse(31, "replayed", now), None);
        budget.count("shed", 4);
        let counts = budget.take_counts();
        assert_eq!(
            counts,
            BTreeMap::from([
                ("bad_signature".to_owned(), 1),
                ("replayed".to_owned(), 1),
                ("shed".to_owned(), 4)
            ])
        );
        assert!(budget.take_counts().is_empty(), "counted once");
        assert_eq!(budget.flush_at(), None, "carried already: nothing to flush");
    }

    #[test]
    fn garbage_never_uses_up_the_audit_budget() {
        let now = Instant::now();
        let mut budget = AuditBudget::new();
        let logged = (0..1000)
            .filter(|_| budget.garbage("malformed", now).is_some())
            .count();
        assert_eq!(logged, 10);
        assert_eq!(
            budget.refuse("forged", "bad_signature", now),
            Some("forged")
        );
        assert_eq!(budget.take_counts()["malformed"], 1000);
    }

    #[test]
    fn held_refusals_are_audited_at_the_end_of_the_window_if_nothing_carried_them() {
        let start = Instant::now();
        let mut budget = AuditBudget::new();
        for n in 0..35 {
            budget.refuse(n, "stale_session", start);
        }
        assert_eq!(budget.flush_at(), Some(start + WINDOW));
        assert_eq!(budget.flush(start + WINDOW / 2), None, "not yet");
        assert_eq!(budget.flush(start + WINDOW), Some(34), "the latest one");
        assert_eq!(
            budget.take_counts(),
            BTreeMap::from([("stale_session".to_owned(), 4)]),
            "the others, counted"
        );
        assert_eq!(budget.flush(start + WINDOW * 3), None);
    }
}
