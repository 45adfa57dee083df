//! The agent's MQTT side: the link that reports and takes commands, the durable spool behind
//! its events, the checks a command passes before it runs, and the broker the agent can host.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod link;
pub mod remote;
pub mod spool;
