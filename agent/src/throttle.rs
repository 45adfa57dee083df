//! A budget of so many actions per time window, for what a stranger on the network can make
//! the agent do over and over — log a line, publish an audit event — so that a flood of
//! garbage cannot flood the log, the event spool or the chat channels behind them.

use std::time::{Duration, Instant};

/// Allows `budget` actions per `window` and counts the ones it refused.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    budget: u32,
    started: Option<Instant>,
    used: u32,
    refused: u64,
}

/// What [`Throttle::allow`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead; `refused` actions were held back since the last one that went ahead.
    Allow {
        refused: u64,
    },
    Refuse,
}

impl Throttle {
    pub fn new(budget: u32, window: Duration) -> Self {
        Self {
            window,
            budget,
            started: None,
            used: 0,
            refused: 0,
        }
    }

    /// The actions refused since the last one allowed, counted as told.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    pub fn allow(&mut self, now: Instant) -> Verdict {
        let expired = self
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window);
        if expired {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used >= self.budget {
            self.refused += 1;
            return Verdict::Refuse;
        }
        self.used += 1;
        Verdict::Allow {
            refused: std::mem::take(&mut self.refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_per_window_and_a_count_of_what_was_held_back() {
        let t0 = Instant::now();
        let mut throttle = Throttle::new(2, Duration::from_secs(60));
        assert_eq!(throttle.allow(t0), Verdict::Allow { refused: 0 });
        assert_eq!(throttle.allow(t0), Verdict::Allow { refused: 0 });
        for _ in 0..5 {
            assert_eq!(
                throttle.allow(t0 + Duration::from_secs(59)),
                Verdict::Refuse
            );
        }
        let next = t0 + Duration::from_secs(60);
        assert_eq!(throttle.allow(next), Verdict::Allow { refused: 5 });
        assert_eq!(throttle.allow(next), Verdict::Allow { refused: 0 });
        assert_eq!(throttle.allow(next), Verdict::Refuse);
    }

    #[test]
    fn a_zero_budget_refuses_everything() {
        let mut throttle = Throttle::new(0, Duration::from_secs(1));
        assert_eq!(throttle.allow(Instant::now()), Verdict::Refuse);
    }
}
