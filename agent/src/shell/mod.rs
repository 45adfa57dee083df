//! The process shell: everything that touches the programs the agent runs — starting them in
//! sessions of their own, signalling and reaping them, reading `/proc`, the notify protocol,
//! health probes, and stopping what an earlier run left behind.

pub mod cgroup;
mod clone_into;
pub mod health;
pub mod left;
pub mod leftovers;
pub mod notify;
pub mod oom;
pub mod process;
pub mod procfs;
pub mod watch;

pub use clone_into::find_program;

use std::time::Duration;

/// How long SIGKILLed processes may take to disappear (a process in uninterruptible sleep
/// cannot die at once) before the agent goes on without them.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
