//! What a process's health probes come to, counted over time: ready (the first pass),
//! unhealthy (enough failures in a row after the grace period). Pure: the probes themselves
//! are the shell's ([`crate::shell::health`]).

use std::time::{Duration, Instant};

use respawn_common::status::{Health, HealthStatus};

use crate::config::HealthCheck;

/// The count of one process's probe results since its start.
#[derive(Debug)]
pub struct Tracker {
    check: HealthCheck,
    started: Instant,
    failures: u32,
    /// When the latest failure that counted came.
    counted_at: Option<Instant>,
    ready: bool,
    status: HealthStatus,
    last_error: Option<String>,
}

/// What a probe result means for the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing new.
    Same,
    /// Its first pass: the start succeeded.
    Ready,
    /// Failed `failures` times in a row after the grace period: restart it.
    Unhealthy(String),
}

impl Tracker {
    /// A fresh count for a process started at `started`: failures never carry over from an
    /// earlier run, or a restart would be followed by another at once.
    pub fn new(check: HealthCheck, started: Instant) -> Self {
        Self {
            check,
            started,
            failures: 0,
            counted_at: None,
            ready: false,
            status: HealthStatus::Unknown,
            last_error: None,
        }
    }

    pub fn record(&mut self, now: Instant, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.status = HealthStatus::Healthy;
                self.last_error = None;
                if std::mem::replace(&mut self.ready, true) {
                    Verdict::Same
                } else {
                    Verdict::Ready
                }
            }
            Err(error) => {
                self.last_error = Some(error.clone());
                if now.saturating_duration_since(self.started) < self.check.grace {
                    // Still coming up: failures do not count yet.
                    return Verdict::Same;
                }
                // Until its first pass it is probed every half second, to show it ready soon;
                // its failures count once an `interval`, so that a slow start has `grace` and
                // `failures` intervals, as the configuration reads (Docker's start period and
                // retries), not `failures` half seconds.
                let recently =
                    |at: Instant| now.saturating_duration_since(at) < self.check.interval;
                if !self.ready && self.counted_at.is_some_and(recently) {
                    return Verdict::Same;
                }
                self.counted_at = Some(now);
                self.failures += 1;
                self.status = HealthStatus::Failing;
                if self.failures >= self.check.failures {
                    Verdict::Unhealthy(format!(
                        "{} check failed {} time{} in a row: {error}",
                        self.check.probe.kind(),
                        self.failures,
                        if self.failures == 1 { "" } else { "s" }
                    ))
                } else {
                    Verdict::Same
                }
            }
        }
    }

    pub fn report(&self) -> Health {
        Health {
            status: self.status,
            failures: self.failures,
            last_error: self.last_error.clone(),
            message: None,
        }
    }

    /// How long to wait before the next probe: quickly until the first pass, so that
    /// readiness shows soon, then every `interval`.
    pub fn next_delay(check: &HealthCheck, ready: bool) -> Duration {
        if ready {
            check.interval
        } else {
            check.interval.min(Duration::from_millis(500))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Probe;

    fn check(failures: u32, grace: u64) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp {
                address: "127.0.0.1:1".into(),
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            failures,
            grace: Duration::from_secs(grace),
        }
    }

    /// Found by a review: probed every half second before its first pass, a slow start was
    /// unhealthy after `failures` half seconds, not `failures` intervals.
    #[test]
    fn before_its_first_pass_a_failure_counts_once_an_interval() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut tracker = Tracker::new(check(3, 2), t0);
        let mut unhealthy_at = None;
        for ms in (500..60_000).step_by(500) {
            if let Verdict::Unhealthy(_) = tracker.record(at(ms), Err("refused".into())) {
                unhealthy_at = Some(ms);
                break;
            }
        }
        // Counted at 2 s, 12 s and 22 s: grace, then three intervals' worth.
        assert_eq!(unhealthy_at, Some(22_000));
        // Once it passed, each probe comes an interval apart and each failure counts.
        let mut tracker = Tracker::new(check(2, 0), t0);
        assert_eq!(tracker.record(at(500), Ok(())), Verdict::Ready);
        assert_eq!(
            tracker.record(at(10_500), Err("refused".into())),
            Verdict::Same
        );
        assert!(matches!(
            tracker.record(at(20_500), Err("refused".into())),
            Verdict::Unhealthy(_)
        ));
    }

    #[test]
    fn ready_at_the_first_pass_unhealthy_after_enough_failures_in_a_row() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut tracker = Tracker::new(check(3, 30), t0);
        assert_eq!(
            tracker.record(at(1), Err("refused".into())),
            Verdict::Same,
            "in the grace period"
        );
        assert_eq!(tracker.report().failures, 0);
        assert_eq!(tracker.record(at(2), Ok(())), Verdict::Ready);
        assert_eq!(tracker.record(at(12), Ok(())), Verdict::Same);
        assert_eq!(
            tracker.record(at(40), Err("HTTP 500".into())),
            Verdict::Same
        );
        assert_eq!(
            tracker.record(at(50), Err("HTTP 500".into())),
            Verdict::Same
        );
        assert_eq!(tracker.report().status, HealthStatus::Failing);
        assert_eq!(
            tracker.record(at(55), Ok(())),
            Verdict::Same,
            "a pass resets the count"
        );
        assert_eq!(tracker.report().failures, 0);
        tracker.record(at(60), Err("HTTP 500".into()));
        tracker.record(at(70), Err("HTTP 500".into()));
        assert_eq!(
            tracker.record(at(80), Err("no answer within 2s".into())),
            Verdict::Unhealthy("tcp check failed 3 times in a row: no answer within 2s".into())
        );
    }

    #[test]
    fn a_process_that_never_comes_up_is_unhealthy_after_the_grace_period() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(check(1, 5), t0);
        assert_eq!(
            tracker.record(t0 + Duration::from_secs(4), Err("refused".into())),
            Verdict::Same
        );
        assert!(matches!(
            tracker.record(t0 + Duration::from_secs(5), Err("refused".into())),
            Verdict::Unhealthy(_)
        ));
        let fresh = Tracker::new(check(1, 5), t0 + Duration::from_secs(6));
        assert_eq!(fresh.report().failures, 0, "a restart starts from nothing");
        assert_eq!(fresh.report().status, HealthStatus::Unknown);
    }
}
