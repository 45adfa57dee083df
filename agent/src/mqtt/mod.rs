//! The agent's MQTT side: the link that reports and takes commands, the durable spool behind
//! its events, the checks a command passes before it runs, and the broker the agent can host.

#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod link;
pub mod remote;
pub mod spool;

/// The login of the agent's link to the broker the agent hosts, which keeps the agent's
/// client id for it: that broker has no logins, and anyone who could reach it could otherwise
/// take the agent's session over, again and again, each time cutting the agent off from its
/// own broker (shown `lost`, its signed commands refused as of a stale session). The password
/// is made afresh at each start.
#[derive(Clone, Debug)]
pub struct OwnLogin {
    pub client_id: String,
    pub password: String,
}

impl OwnLogin {
    /// The username the link gives with the password.
    pub const USERNAME: &'static str = "respawn-agent";

    pub fn new(agent: &str) -> Self {
        Self {
            client_id: link::client_id(agent),
            password: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}
