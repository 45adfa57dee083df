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

use std::time::{Duration, Instant};

/// How long SIGKILLed processes may take to disappear (a process in uninterruptible sleep
/// cannot die at once) before the agent goes on without them.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Whether `done` holds within `limit`, asked as [`polled`] asks.
pub async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    polled(|| match done() {
        true => Some(true),
        false => (Instant::now() >= deadline).then_some(false),
    })
    .await
}

/// The first answer of `step`, asked at once and then after pauses that grow from 1 ms to
/// 50 ms: quick for what ends at once, light for what takes seconds. The kernel tells of
/// neither an emptied cgroup nor the end of a process that is not the agent's child.
pub async fn polled<T>(mut step: impl FnMut() -> Option<T>) -> T {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(answer) = step() {
            return answer;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
