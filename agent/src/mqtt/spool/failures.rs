//! Failed writes of the spool, logged at a bounded rate with how many there were.

use std::io;
use std::time::{Duration, Instant};

use crate::throttle::{Throttle, Verdict};

/// Failed writes, logged at a bounded rate with how many there were.
#[derive(Debug)]
pub(super) struct WriteFailures {
    /// One word a minute at most, of failures and recoveries alike: a nearly full disk takes
    /// a small write and refuses the next, and must not fill the journal either way.
    log: Throttle,
    /// Writes that failed since the last word about them.
    unreported: u64,
    /// A failure was said and no recovery since.
    failing: bool,
}

impl WriteFailures {
    pub(super) fn new() -> Self {
        Self {
            log: Throttle::new(1, Duration::from_secs(60)),
            unreported: 0,
            failing: false,
        }
    }

    pub(super) fn failed(&mut self, what: &str, error: &io::Error) {
        if let Some(failed_writes) = self.failure(Instant::now()) {
            tracing::error!(
                error = %error,
                failed_writes,
                "cannot write the event spool ({what}); events are kept in memory and still sent, but would be lost if the agent died now"
            );
        }
    }

    pub(super) fn succeeded(&mut self) {
        if let Some(failed_writes) = self.success(Instant::now()) {
            tracing::info!(
                failed_writes,
                "the event spool took a write again (a nearly full disk may still refuse the next)"
            );
        }
    }

    /// Whether the disk refused a write lately (said or not yet).
    pub(super) fn refusing(&self) -> bool {
        self.failing || self.unreported > 0
    }

    /// A write failed: the failures since the last word, when one is to be said now.
    pub(super) fn failure(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let Verdict::Allow { .. } = self.log.allow(now) else {
            return None;
        };
        self.failing = true;
        Some(std::mem::take(&mut self.unreported))
    }

    /// A write succeeded: the failures since the last word, when the recovery is to be said
    /// now.
    pub(super) fn success(&mut self, now: Instant) -> Option<u64> {
        if !self.failing && self.unreported == 0 {
            return None;
        }
        let Verdict::Allow { .. } = self.log.allow(now) else {
            return None;
        };
        self.failing = false;
        Some(std::mem::take(&mut self.unreported))
    }
}
