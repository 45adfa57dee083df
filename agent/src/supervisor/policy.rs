//! Restart policy arithmetic: backoff delays, jitter, and the crash-loop window. Pure functions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use respawn_common::status::ExitStatus;

use crate::config::{Backoff, RestartPolicy};

/// Whether a process that ended with `status` is to be started again.
pub fn wants_restart(policy: RestartPolicy, status: &ExitStatus) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !status.is_success(),
        RestartPolicy::Never => false,
    }
}

/// The delay before the restart that follows the `failures`-th unstable exit in a row
/// (1-based), before jitter: `initial · 2^(failures−1)`, capped at `max`.
pub fn backoff_delay(backoff: Backoff, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    backoff
        .initial
        .checked_mul(1 << doublings)
        .map_or(backoff.max, |d| d.min(backoff.max))
}

/// ±20 % jitter so that a fleet whose processes died together (a shared outage) does not
/// restart them in lockstep. A small xorshift generator, seeded by the caller, keeps the state
/// machine deterministic under test.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub const SPREAD: f64 = 0.2;

    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self(seed | 1)
    }

    /// Scales `delay` by a factor drawn uniformly from [0.8, 1.2].
    pub fn apply(&mut self, delay: Duration) -> Duration {
        self.apply_within(delay, Duration::MAX)
    }

    /// As [`Jitter::apply`], drawn from below `ceiling` when 120 % of `delay` would pass it:
    /// `backoff.max` is a promise to whoever waits for the program, and a fleet at its cap
    /// still spreads over the fifth below it.
    pub fn apply_within(&mut self, delay: Duration, ceiling: Duration) -> Duration {
        let low = delay.mul_f64(1.0 - Self::SPREAD);
        let high = delay.mul_f64(1.0 + Self::SPREAD).min(ceiling).max(low);
        low + (high - low).mul_f64(self.next_unit())
    }

    /// A number in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The exits of one process within its crash-loop window.
#[derive(Clone, Debug, Default)]
pub struct ExitWindow {
    exits: VecDeque<Instant>,
}

impl ExitWindow {
    /// Records an exit at `now` and forgets those that left the window.
    pub fn record(&mut self, now: Instant, window: Duration) {
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.exits.pop_front();
        }
    }

    /// Exits less than `window` before `now`.
    pub fn count(&self, now: Instant, window: Duration) -> usize {
        self.exits
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < window)
            .count()
    }

    /// The moment from which fewer than `max_exits` exits lie within the window, if no more
    /// exits happen.
    pub fn below_limit_at(&self, max_exits: u32, window: Duration) -> Option<Instant> {
        let max = max_exits as usize;
        if self.exits.len() < max {
            return None;
        }
        self.exits.get(self.exits.len() - max).map(|&t| t + window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn backoff_doubles_from_initial_up_to_the_cap() {
        let delays: Vec<u64> = (1..=9)
            .map(|n| backoff_delay(DEFAULT, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(DEFAULT, u32::MAX), Duration::from_secs(60));
        assert_eq!(backoff_delay(DEFAULT, 0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_spreads() {
        let mut jitter = Jitter::new(42);
        let base = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..10_000).map(|_| jitter.apply(base)).collect();
        let (lo, hi) = (Duration::from_secs(8), Duration::from_secs(12));
        assert!(samples.iter().all(|d| (lo..=hi).contains(d)));
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*min < Duration::from_millis(8_100), "lowest {min:?}");
        assert!(*max > Duration::from_millis(11_900), "highest {max:?}");
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!((Duration::from_millis(9_900)..Duration::from_millis(10_100)).contains(&mean));
    }

    #[test]
    fn jitter_under_a_ceiling_never_passes_it_and_still_spreads() {
        let mut jitter = Jitter::new(7);
        let cap = Duration::from_secs(60);
        let samples: Vec<Duration> = (0..10_000).map(|_| jitter.apply_within(cap, cap)).collect();
        assert!(samples
            .iter()
            .all(|d| (Duration::from_secs(48)..=cap).contains(d)));
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*min < Duration::from_millis(48_200), "lowest {min:?}");
        assert!(*max > Duration::from_millis(59_800), "highest {max:?}");
        // Below the ceiling the full spread is kept.
        let below: Vec<Duration> = (0..1_000)
            .map(|_| jitter.apply_within(Duration::from_secs(10), cap))
            .collect();
        assert!(below.iter().any(|d| *d > Duration::from_millis(11_900)));
    }

    #[test]
    fn policies_decide_on_exit_status() {
        let clean = ExitStatus::Code { code: 0 };
        let crash = ExitStatus::Signal {
            signal: "SIGSEGV".into(),
            core_dumped: false,
        };
        assert!(wants_restart(RestartPolicy::Always, &clean));
        assert!(!wants_restart(RestartPolicy::OnFailure, &clean));
        assert!(wants_restart(RestartPolicy::OnFailure, &crash));
        assert!(wants_restart(
            RestartPolicy::OnFailure,
            &ExitStatus::Code { code: 2 }
        ));
        assert!(!wants_restart(RestartPolicy::Never, &crash));
    }

    #[test]
    fn exit_window_counts_and_predicts_when_it_drops_below_the_limit() {
        let t0 = Instant::now();
        let window = Duration::from_secs(600);
        let mut w = ExitWindow::default();
        for minute in [0, 1, 2, 3, 4] {
            w.record(t0 + Duration::from_secs(60 * minute), window);
        }
        assert_eq!(w.count(t0 + Duration::from_secs(240), window), 5);
        // The oldest of the last five leaves at 10 min.
        assert_eq!(w.below_limit_at(5, window), Some(t0 + window));
        assert_eq!(w.count(t0 + window, window), 4);
        assert_eq!(w.below_limit_at(6, window), None);
        // Recording far later forgets everything else.
        w.record(t0 + Duration::from_secs(3600), window);
        assert_eq!(w.count(t0 + Duration::from_secs(3600), window), 1);
    }
}
