//! What the broker's acknowledgements do to the link's books: an event delivered, refused
//! for good (dropped, and reported by the next), or refused for now and sent again at the
//! next heartbeat, a few times.

use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::PubAckReason;

use super::{Core, Queued, Requests, Tag};
use crate::throttle::Verdict;

/// How often an event refused for now is tried on one connection before it is dropped (and
/// reported by the next).
pub(super) const EVENT_TRIES: u32 = 5;

/// What a PUBACK says of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ack {
    Taken,
    /// Would be refused again: not allowed, or not well-formed.
    Refused,
    /// A quota, a packet id in use, an error of the moment: may be taken later.
    RefusedForNow,
}

impl Ack {
    fn of(reason: PubAckReason) -> Self {
        match reason {
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Self::Taken,
            PubAckReason::NotAuthorized
            | PubAckReason::TopicNameInvalid
            | PubAckReason::PayloadFormatInvalid => Self::Refused,
            _ => Self::RefusedForNow,
        }
    }
}

impl<R: Requests> Core<R> {
    /// Sends again the events the broker refused for now. They stay in the spool and count
    /// in the window meanwhile.
    pub(super) fn retry_refused(&mut self) {
        for seq in std::mem::take(&mut self.to_retry) {
            let entry = self.spool.entries().iter().find(|e| e.seq == seq);
            // Gone: dropped from a full spool meanwhile.
            let Some(payload) = entry.map(|e| e.payload.clone()) else {
                continue;
            };
            if self.publish_event(seq, payload) != Queued::Yes {
                self.to_retry.push(seq);
            }
        }
    }

    pub(in crate::mqtt::link) fn on_acked(&mut self, pkid: u16, reason: PubAckReason) {
        let Some(tag) = self.in_flight.remove(&pkid) else {
            return;
        };
        let ack = Ack::of(reason);
        if ack != Ack::Taken {
            if let Verdict::Allow { refused } = self.refusals.allow(Instant::now()) {
                let why = match ack {
                    Ack::RefusedForNow => "the broker refused a message for now (an event is sent again at the next heartbeat)",
                    _ => "the broker refused a message: check its ACL for this agent (the ACL of docs/security.md lets a client write only under its own username: [mqtt] username, or with use_identity_as_username the CN of the agent's certificate, must be the agent id)",
                };
                tracing::error!(?reason, ?tag, similar_before = refused, "{why}");
            }
        }
        match tag {
            Tag::Event(seq) => {
                // An event refused for good would be refused again: it is dropped, and the
                // next event reports it. One refused for now is tried again, a few times.
                let left = match ack {
                    Ack::Taken => {
                        self.refused_for_now.remove(&seq);
                        self.spool.ack(seq)
                    }
                    Ack::RefusedForNow if self.retry_later(seq) => 0,
                    _ => self.spool.discard(seq),
                };
                self.spool_queued = self.spool_queued.saturating_sub(left);
                self.pump();
            }
            Tag::Goodbye => self.goodbye_acked = true,
            Tag::Other => {}
        }
    }

    /// Whether the event `seq`, refused for now, is to be sent again (at the next
    /// heartbeat): not after [`EVENT_TRIES`] refusals on this connection.
    fn retry_later(&mut self, seq: u64) -> bool {
        let refusals = self.refused_for_now.entry(seq).or_default();
        *refusals += 1;
        let again = *refusals < EVENT_TRIES;
        if again {
            self.to_retry.push(seq);
        } else {
            self.refused_for_now.remove(&seq);
        }
        again
    }
}
