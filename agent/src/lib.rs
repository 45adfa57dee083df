//! respawn-agent keeps a list of programs alive on one machine: restart policies with backoff
//! and jitter, crash-loop detection, clean stops of whole process trees, captured output, and
//! a record of why every run ended.
//!
//! # Layout
//!
//! Data flows one way: a child's exit, a timer, a signal or a command becomes an input; the
//! pure state machine decides; the runtime carries out the effects through the process shell,
//! the MQTT link and the spool.
//!
//! - [`config`]: the TOML file, its defaults and a validation that reports every problem.
//! - [`supervisor`]: the pure state machine that decides restarts, backoff, crash loops, stops.
//! - `runtime`: the event loop that feeds the state machine and carries out its actions;
//!   `runtime::commands` settles commands in flight, `runtime::audit` budgets the audit
//!   stream, `runtime::report` builds events and replies.
//! - `shell`: spawning into a new session, group signals, reaping, `/proc`, the notify
//!   protocol, health probes, leftovers of an earlier run.
//! - `mqtt`: the link (presence, states, events, heartbeats, commands), the durable event
//!   spool, the checks of a remote command, and the embedded broker ([`mqtt::broker`]).
//! - `state`: the state directory — lock, child records, manual stops — and records kept in
//!   space reserved ahead of need.
//! - [`logs`]: line splitting and the per-process ring buffer.
//! - `throttle`: budgets for what strangers on the network can make the agent do.
//! - [`cli`]: the command line, the control socket ([`control`]) and how status and logs are
//!   shown ([`display`]).

pub mod cli;
pub mod config;
pub mod logs;
mod mqtt;
mod runtime;
mod shell;
mod state;
pub mod supervisor;
mod throttle;

use std::time::{Instant, SystemTime};

pub use cli::{control, display};
#[cfg(feature = "embedded-broker")]
pub use mqtt::broker;
pub use runtime::run;
pub use state::StateDir;

/// Converts monotonic instants into wall-clock times for reports, from one reading of both
/// clocks, so that times converted together stay exactly comparable.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    mono: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    pub fn at(&self, t: Instant) -> SystemTime {
        if t <= self.mono {
            self.wall - (self.mono - t)
        } else {
            self.wall + (t - self.mono)
        }
    }
}
