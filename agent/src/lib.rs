//! respawn-agent keeps a list of programs alive on one machine: restart policies with backoff
//! and jitter, crash-loop detection, clean stops of whole process trees, captured output, and
//! a record of why every run ended.
//!
//! # Layout
//!
//! Data flows one way: a child's exit, a timer, a signal or a command becomes an input; the
//! pure state machine (or, for commands, the pure command desk) decides; the runtime carries
//! out the effects through the process shell and the MQTT link (which keeps events in its
//! spool until the broker has them).
//!
//! - [`config`]: the types the agent runs with, their defaults, and loading a file.
//!   - `config::fields`: the serde adapters the keys name, and the tables whose file shape
//!     differs from what the agent runs with (`[process.health]`, `[[operator]]`).
//!   - `config::checks`: how each kind of value (signal, size, probe, glob…) is checked.
//!   - `config::read`: reads a file section by section; every problem with its line.
//! - `supervisor`: the pure state machine: starts, stops, restarts, backoff, crash loops.
//!   - `supervisor::policy`: backoff, jitter and the crash-loop window.
//!   - `supervisor::unit`: one process as the state machine knows it, and its view.
//!   - `supervisor::transitions`: each input applied to the unit it is about.
//!   - `supervisor::health`: what probe results come to (ready, unhealthy), over time.
//! - `runtime`: the event loop that feeds the state machine and carries out its effects.
//!   - `runtime::desk`: command admission (local and remote, replay, busy, shutdown), pure.
//!   - `runtime::children`: the live children: spawn, reap, signal, output rings, the last
//!     exit of each.
//!     - `runtime::children::usage`: what they use (CPU, memory) and `max_memory` checks.
//!   - `runtime::commands`: commands in flight until the processes they act on settle.
//!   - `runtime::audit`: the budget of audited commands and the count of the rest.
//!   - `runtime::report`: events, heartbeats (and a step of the wall clock) and the text of
//!     logs about commands.
//!   - `runtime::view`: what the desk sees of the agent at one moment.
//!   - `runtime::setup`: the runtime as it starts; the signals, timers and channels it awaits.
//!   - `runtime::configuration`: the local file and the remote one: reload, apply, rollback.
//!   - `runtime::follow`: live logs, batched to followers while their lease holds.
//! - `shell`: everything that touches the programs the agent runs.
//!   - `shell::process`: spawning into a session of its own, group signals, reaping.
//!   - `shell::cgroup`: a cgroup per process (or process groups): stop, kill, usage, OOM.
//!     - `shell::cgroup::place`: where on this machine cgroups may be made, and by whom.
//!   - `shell::clone_into`: starting a program inside its cgroup (`CLONE_INTO_CGROUP`).
//!   - `shell::procfs`: `/proc`: start times, sessions, a run's processes by its id, memory.
//!   - `shell::oom`: out-of-memory kill counters, to tell the OOM killer's SIGKILL.
//!   - `shell::left`: what a main process leaves outside its cgroup, and what the agent
//!     inherited.
//!   - `shell::leftovers`: stopping what an agent that died hard left running.
//!   - `shell::notify`: the systemd notify protocol, both ways.
//!   - `shell::health`: HTTP, TCP and exec probes.
//!   - `shell::watch`: the tasks that watch a child's probes and notify socket.
//! - `mqtt`: the agent's side of MQTT.
//!   - `mqtt::link`: presence, states, events, heartbeats and commands over one connection;
//!     `link::core` keeps its books free of network I/O (`core::acks`: what an acknowledgement
//!     or a refusal does to them) and hands each event to the spool, `link::drive` polls
//!     rumqttc.
//!   - `mqtt::spool`: events kept on disk until the broker has them; `spool::mark` the
//!     record of numbers given, delivered and dropped, `spool::failures` the refused writes.
//!   - [`remote`] (`mqtt::remote`): what a remote command must pass (signature, session,
//!     replay, policy); public for the fleet simulator, which answers as the agent does.
//!   - [`mqtt::broker`]: the embedded MQTT 5 broker: `core` (connections, wills, time),
//!     `session`, `routing` and `topic` decide, free of I/O; `kept` keeps the persistent
//!     sessions across its restart; `net` moves the bytes.
//! - `state`: the state directory: lock, child records, manual stops.
//!   - `state::reserved`: records written in place in space reserved ahead of need.
//!   - `state::exits`: the last exit of every process, kept across runs of the agent.
//! - [`logs`]: line splitting and the per-process ring buffer.
//! - `throttle`: budgets for what strangers on the network can make the agent do.
//! - [`control`]: the control socket's requests and replies, and its server, which hands each
//!   request to the runtime; the command line is its client.
//! - [`cli`]: the command line: run the agent, `check` a file, and the local commands;
//!   [`display`] how their replies are shown.

pub mod cli;
pub mod config;
pub mod control;
pub mod logs;
mod mqtt;
mod runtime;
mod shell;
mod state;
mod supervisor;
mod throttle;

pub use cli::display;
#[cfg(feature = "embedded-broker")]
pub use mqtt::broker;
/// The checks a remote command passes, for simulated agents to answer as the agent does.
pub use mqtt::remote;
pub use runtime::run;
use state::StateDir;
