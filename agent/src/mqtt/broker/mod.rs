//! An MQTT 5 broker inside the agent, so that a single Pi — or a new user trying the quick
//! start — needs nothing else. A site with several Pis runs Mosquitto.
//!
//! - `topic`: topic names, filters and matching.
//! - `core`: the broker's decisions — sessions, subscriptions, retained messages, wills,
//!   expiry — pure and fed with time.
//! - `routing`: where a published message goes, and what a subscription brings.
//! - `session`: what is kept per message and per client: expiry, queues, subscriptions, wills.
//! - `kept`: the sessions kept across a restart of the broker, in the state directory.
//! - `net`: the sockets, on a thread and runtime of their own.

mod core;
mod kept;
mod net;
mod routing;
mod session;
mod topic;

pub use net::{start, Keeper};
