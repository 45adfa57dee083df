//! Types shared by `respawn-agent` and `respawnctl`.
//!
//! # Layout
//! - [`config_file`]: TOML configuration files that report every problem at once, with lines.
//!   - `config_file::values`: how one value is read and checked; refusals kept for the report.
//! - [`file`]: files replaced whole, never torn, nothing left behind by a refused write.
//! - [`interrupt`]: Ctrl-C during a command that asked another program to act: said, then
//!   died of.
//! - [`ids`]: the rules for agent ids and process names, which end up in MQTT topics and file
//!   names, and the sanitising of a hostname into an agent id.
//! - [`status`]: a process's state, its exit records and the status snapshot that the agent
//!   reports and the controller displays.
//! - [`topics`]: the MQTT topic scheme, built and parsed.
//! - [`messages`]: the versioned payloads of the MQTT protocol.
//! - [`mqtt`]: broker URLs, TLS set-up, connection errors in words.
//! - [`pattern`]: globs for names.
//! - [`signing`]: operator keys and Ed25519 command signatures.
//! - [`text`]: text cut to a length on a character boundary, and text written in place.
//! - [`time`]: RFC 3339 timestamps for serde, durations in words.

pub mod config_file;
pub mod file;
pub mod ids;
pub mod interrupt;
pub mod messages;
pub mod mqtt;
pub mod pattern;
pub mod signing;
pub mod status;
pub mod text;
pub mod time;
pub mod topics;
