//! respawn-agent keeps a list of programs alive on one machine: restart policies with backoff
//! and jitter, crash-loop detection, clean stops of whole process trees, captured output, and
//! a record of why every run ended.
//!
//! # Layout
//! - [`config`]: the TOML file, its defaults and a validation that reports every problem.
//! - [`supervisor`]: the pure state machine that decides; nothing else decides.
//! - `runtime`: the event loop that feeds the state machine and carries out its actions.
//! - `process`: spawning into a new session, group signals, reaping, output capture.
//! - [`logs`]: line splitting and the per-process ring buffer.
//! - `state_dir`, `leftovers`: what survives the agent itself — child records, manual stops.
//! - `link`, `spool`, `remote`, `reports`: the MQTT link — presence, process states, events
//!   through a durable spool, heartbeats, and commands checked before they run.
//! - `throttle`: budgets for what strangers on the network can make the agent do.
//! - `broker`: an embedded MQTT broker (cargo feature `embedded-broker`).
//! - [`control`]: the local control socket used by `respawn-agent status|start|stop|...`.
//! - [`cli`], [`display`]: the command line and how it shows status and logs.

mod audit;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
mod commands;
pub mod config;
pub mod control;
pub mod display;
mod health;
mod leftovers;
mod link;
pub mod logs;
mod notify;
mod process;
mod procfs;
mod remote;
mod reports;
mod reserved;
mod runtime;
mod spool;
mod state_dir;
pub mod supervisor;
mod throttle;
mod watch;

use std::time::{Instant, SystemTime};

pub use runtime::run;
pub use state_dir::StateDir;

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
