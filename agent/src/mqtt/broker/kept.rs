//! The sessions the embedded broker keeps across its own restart: which clients outlive
//! their connection, and what they subscribed to. A Pi that lost its power comes back with a
//! broker that queues what its agent publishes from the first second — a crash at boot —
//! for the alerter or the events tail that was connected before, as Mosquitto does with
//! persistence. Messages queued at the time of the restart are not kept (a power cut gives
//! no time to write them); the subscriptions change rarely, and are written when they do.

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};

use super::core::Core;
use super::session::{Session, Subscription};
use super::topic::Filter;

/// A session as written to disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSession {
    pub client: String,
    /// Seconds it outlives its connection; `u32::MAX`: forever.
    pub expiry: u32,
    pub subscriptions: Vec<KeptSubscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSubscription {
    /// As the client wrote it, `$share/` group included.
    pub filter: String,
    /// 0 or 1: the broker grants no more.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
}

impl Core {
    /// The sessions a restart must keep: those that outlive their connection.
    pub fn kept(&self) -> Vec<KeptSession> {
        let kept = self.sessions.iter().filter(|(_, s)| s.expiry > 0);
        kept.map(|(client, session)| KeptSession {
            client: client.clone(),
            expiry: session.expiry,
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(filter, s)| KeptSubscription {
                    filter: filter.clone(),
                    qos: u8::from(s.qos == QoS::AtLeastOnce),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                })
                .collect(),
        })
        .collect()
    }

    /// Takes back the sessions an earlier run kept, each waiting for its client as if its
    /// connection had been lost at `now`. What does not read as a session (a filter this
    /// broker refuses, a client id too long), or would pass the limits, is left out.
    pub fn restore(&mut self, kept: Vec<KeptSession>, now: Instant) {
        for session in kept {
            let fits = self.sessions.len() < self.limits.max_sessions
                && session.client.len() <= self.limits.max_client_id
                && !session.client.is_empty()
                && session.expiry > 0;
            if !fits {
                continue;
            }
            let subscriptions = session
                .subscriptions
                .into_iter()
                .filter_map(|s| {
                    let filter = Filter::parse(&s.filter)?;
                    let subscription = Subscription {
                        filter,
                        qos: if s.qos == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        },
                        no_local: s.no_local,
                        retain_as_published: s.retain_as_published,
                    };
                    Some((s.filter, subscription))
                })
                .take(self.limits.max_subscriptions)
                .collect();
            let expires_at = match session.expiry {
                u32::MAX => None,
                secs => Some(now + Duration::from_secs(u64::from(secs))),
            };
            let restored = Session {
                subscriptions,
                expiry: session.expiry,
                expires_at,
                window: self.limits.max_in_flight,
                ..Session::default()
            };
            self.sessions.insert(session.client, restored);
        }
    }
}

/// The sessions kept in `path`; none when there is no file, and none, said in the log, when
/// it cannot be read.
pub fn load(path: &Path) -> Vec<KeptSession> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "embedded broker: cannot read the kept sessions; starting without them");
            return Vec::new();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "embedded broker: the kept sessions do not read; starting without them");
        Vec::new()
    })
}

/// Writes `kept` to `path`, durably: the next start may come after a power cut.
pub fn save(path: &Path, kept: &[KeptSession]) {
    let written = serde_json::to_vec(kept)
        .map_err(std::io::Error::other)
        .and_then(|json| crate::state::write_atomically(path, &json, true));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "embedded broker: cannot keep its sessions for its next start");
    }
}
