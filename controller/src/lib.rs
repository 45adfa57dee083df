//! respawnctl, the operator's command line for a fleet of respawn agents: fleet status from
//! the broker's retained state, a live event tail, and remote restart, stop, start and logs
//! with acknowledgement.
//!
//! # Layout
//! - [`settings`]: broker and credentials from the command line, the environment or a file.
//! - [`session`]: the MQTT connection: connect within 5 s, subscribe, retained snapshots.
//! - [`fleet`]: the pure fold of retained messages into a view of the fleet; target globs.
//! - [`reading`]: reading the fleet from the broker, and again what a first reading lacked.
//! - [`request`]: commands sent and their replies awaited, again where a session moved on.
//! - [`output`]: how it all prints.
//! - [`repeats`]: which events were taken already, as agents deliver them at least once.
//! - [`alerts`]: `respawnctl alerts`, crash alerts to chat.
//! - [`serve`]: `respawnctl serve`, the fleet in a browser and `/metrics`.
//! - [`cli`]: the command line: arguments, their checks, usage errors.
//! - [`stop`]: Ctrl-C and SIGTERM for what runs until told to stop, never lost.
//! - `cmd`: what each command does, one module each.

pub mod alerts;
pub mod cli;
mod cmd;
pub mod fleet;
pub mod output;
pub mod reading;
pub mod repeats;
pub mod request;
pub mod serve;
pub mod session;
pub mod settings;
pub mod stop;
