//! What found rumqttc's request queue full and goes out as soon as it has room (each
//! request it writes makes some), or at the next heartbeat or connection: the latest state of
//! each process, the clearing of removed ones, replies to commands.

use respawn_common::messages::CommandReply;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

use super::{Core, Queued, Requests, Tag};

/// Replies that found rumqttc's queue full, kept to be sent when it has room: a requester
/// waits for its answer, but a flood of commands must not grow the agent.
pub(super) const MAX_WAITING_REPLIES: usize = 64;

/// A reply that waits for room in rumqttc's queue.
pub(super) struct WaitingReply {
    topic: String,
    payload: Vec<u8>,
    properties: PublishProperties,
}

impl<R: Requests> Core<R> {
    /// Queues the latest state of `name`, which is in `unsent`; `false` when the queue is
    /// full. It stays in `unsent` only then: not connected, the next connection sends every
    /// state, and one too large for the broker never goes.
    pub(super) fn send_state(&mut self, name: &str) -> bool {
        let Some(payload) = self.processes.get(name).cloned() else {
            self.unsent.remove(name);
            return true;
        };
        let topic = self.topics.process(&self.identity.agent, name);
        let queued = self.publish(topic, QoS::AtLeastOnce, true, payload, None, Tag::Other);
        if queued != Queued::Full {
            self.unsent.remove(name);
        }
        queued != Queued::Full
    }

    /// Sends what found rumqttc's queue full, as far as it has room now: process states,
    /// clearances of removed ones, replies.
    pub(super) fn send_what_waits(&mut self) {
        while let Some(name) = self.unsent.first().cloned() {
            if !self.send_state(&name) {
                return;
            }
        }
        if !self.to_clear.is_empty() && !self.clear_removed() {
            return;
        }
        while let Some(reply) = self.waiting_replies.pop_front() {
            if self.send_reply(&reply) == Queued::Full {
                self.waiting_replies.push_front(reply);
                return;
            }
        }
    }

    pub(super) fn send_reply(&mut self, reply: &WaitingReply) -> Queued {
        let (topic, payload) = (reply.topic.clone(), reply.payload.clone());
        let properties = Some(reply.properties.clone());
        self.publish(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            properties,
            Tag::Other,
        )
    }

    /// Clears the retained states of removed processes; `false` when the queue is full.
    pub(super) fn clear_removed(&mut self) -> bool {
        while let Some(name) = self.to_clear.first().cloned() {
            let topic = self.topics.process(&self.identity.agent, &name);
            match self.publish(topic, QoS::AtLeastOnce, true, Vec::new(), None, Tag::Other) {
                Queued::Yes => {
                    self.to_clear.remove(&name);
                }
                Queued::Full => return false,
                Queued::NotConnected | Queued::TooLarge => return true,
            }
        }
        true
    }

    /// Queues the reply to a command, or keeps it until there is room.
    pub(in super::super) fn reply(
        &mut self,
        requester: &str,
        correlation: Option<Vec<u8>>,
        reply: &CommandReply,
    ) {
        let Ok(payload) = serde_json::to_vec(reply) else {
            return;
        };
        let waiting = WaitingReply {
            topic: self.topics.reply(&self.identity.agent, requester),
            payload,
            properties: PublishProperties {
                correlation_data: correlation.map(Into::into),
                content_type: Some("application/json".into()),
                ..Default::default()
            },
        };
        // Behind replies that wait already: answers go out in order.
        let queued = match self.waiting_replies.is_empty() {
            true => self.send_reply(&waiting),
            false => Queued::Full,
        };
        match queued {
            Queued::Full if self.waiting_replies.len() < MAX_WAITING_REPLIES => {
                self.waiting_replies.push_back(waiting);
            }
            Queued::Yes => {}
            _ => tracing::warn!(cmd_id = reply.cmd_id.as_str(), ?queued, "reply not sent"),
        }
    }
}
