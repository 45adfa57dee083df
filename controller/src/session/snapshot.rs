//! Reading retained state: a snapshot of what the broker holds under some filters, ended by a
//! marker this session publishes on a private topic after subscribing, and made whole against
//! brokers that drop or delay part of it.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Filter;
use rumqttc::v5::mqttbytes::QoS;

use super::{refused, Incoming, Message, Session, SessionError, PATIENCE};

/// Silence in a snapshot after which its end marker is sent again: long enough that the
/// marker is seldom sent twice, short enough that a dropped one costs little.
const MARKER_AGAIN: Duration = Duration::from_millis(250);

/// How long a reading waits after its end marker for retained messages that a broker sends
/// late. Mosquitto sends them before the marker; rmqtt sends them from a task of their own,
/// and its broadcast cluster fetches them from the node that holds them: there nearly all of
/// a 1,000-agent fleet's came after the marker, the first within 0.1 ms of it.
const SETTLE: Duration = Duration::from_millis(50);

/// The quiet that ends a reading once the broker has sent retained messages after a marker
/// (rmqtt's stream of them lasted 100 ms for 1,000 agents, without a pause).
const LATE_QUIET: Duration = Duration::from_millis(500);

/// How many groups [`Session::snapshots`] reads at once: with a hundred agents' topics in a
/// group, about 5,000 messages under way, which a connection's buffers take whole.
const GROUPS_AT_ONCE: usize = 4;

/// Whether the filters of a reading stay subscribed once read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    KeepSubscribed,
    Unsubscribe,
}

/// A group of filters being read: its marker's token, whether the broker has confirmed the
/// subscription, and whether the marker came back before it did.
struct Group<'a> {
    filters: &'a [String],
    token: String,
    confirmed: bool,
    echoed_early: bool,
}

impl Session {
    /// The retained messages under `filters`. Mosquitto sends retained messages right after
    /// a subscription and handles a client's packets in order, so a marker published on a
    /// private topic after subscribing arrives after all of them (one that comes back before
    /// the subscription is confirmed is published again). A broker
    /// that sends them in the background instead is waited for until they stop coming (see
    /// `SETTLE`). Everything travels at QoS 0, so that the broker's queue limits for QoS 1
    /// cannot drop any of a large snapshot, and so that the marker cannot overtake it.
    pub async fn snapshot(
        &mut self,
        filters: &[String],
        marker_topic: &str,
    ) -> Result<Vec<Message>, SessionError> {
        let mut messages = Vec::new();
        self.snapshot_each(filters, marker_topic, |m| messages.push(m))
            .await?;
        Ok(messages)
    }

    /// As [`Session::snapshot`], handing each message to `take` as it comes: a large fleet's
    /// state is folded in without all of its messages held at once. The filters stay
    /// subscribed.
    pub async fn snapshot_each(
        &mut self,
        filters: &[String],
        marker_topic: &str,
        take: impl FnMut(Message),
    ) -> Result<(), SessionError> {
        let group = [filters.to_vec()];
        self.read_retained(&group, marker_topic, Reading::KeepSubscribed, take)
            .await
    }

    /// The retained messages of each group of filters, handed to `take`, `GROUPS_AT_ONCE`
    /// groups under way at a time; each group is unsubscribed once read. For what a first
    /// snapshot lacked: small groups stay below what a broker queues for a reader, and
    /// several at once keep the connection busy instead of waiting on each round trip.
    pub async fn snapshots(
        &mut self,
        groups: &[Vec<String>],
        marker_topic: &str,
        take: impl FnMut(Message),
    ) -> Result<(), SessionError> {
        self.read_retained(groups, marker_topic, Reading::Unsubscribe, take)
            .await
    }

    async fn read_retained(
        &mut self,
        groups: &[Vec<String>],
        marker_topic: &str,
        reading: Reading,
        mut take: impl FnMut(Message),
    ) -> Result<(), SessionError> {
        let marker = [marker_topic.to_owned()];
        for m in self.subscribe(&marker, QoS::AtMostOnce).await? {
            // A marker this early is a late copy of an earlier reading's.
            if m.topic != marker_topic {
                take(m);
            }
        }
        let window = match reading {
            Reading::KeepSubscribed => 1,
            Reading::Unsubscribe => GROUPS_AT_ONCE,
        };
        // A group's marker is published right after its subscription, and counts only once
        // the subscription is confirmed: a broker that subscribes in the background (a Raft
        // cluster agrees on it first) echoes it before the subscription exists, and then it
        // is published again. Each marker carries a number of its own, so that a copy that
        // comes late (one sent again after a silence) cannot end a later group.
        let mut under_way: Vec<Group> = Vec::new();
        let mut next = groups.iter();
        let mut silence = Duration::ZERO;
        // No marker came back at all: the broker most likely refuses this user the marker
        // topic (a refused QoS 0 publish is dropped without a word).
        let mut any_marker = false;
        loop {
            while under_way.len() < window {
                let Some(filters) = next.next() else { break };
                let subscriptions = filters.iter().map(|f| Filter::new(f, QoS::AtMostOnce));
                self.client
                    .subscribe_many(subscriptions.collect::<Vec<_>>())
                    .await
                    .map_err(|e| SessionError::Send(e.to_string()))?;
                let token = self.send_marker(marker_topic).await?;
                under_way.push(Group {
                    filters,
                    token,
                    confirmed: false,
                    echoed_early: false,
                });
            }
            if under_way.is_empty() {
                return self.settle(marker_topic, take).await;
            }
            // Patience with silence, not with the whole: a large fleet's state may take longer
            // than that to arrive, as long as it keeps arriving. A broker that drops the end
            // of a snapshot too large for its queue may drop the marker with it: after a
            // silence the markers of confirmed groups are sent again, and come after whatever
            // is left.
            let next_incoming = tokio::time::timeout(MARKER_AGAIN, self.next_incoming()).await;
            let incoming = match next_incoming {
                Ok(incoming) => {
                    silence = Duration::ZERO;
                    incoming
                }
                Err(_) if silence + MARKER_AGAIN < PATIENCE => {
                    silence += MARKER_AGAIN;
                    for group in under_way.iter().filter(|g| g.confirmed) {
                        self.publish_marker(marker_topic, &group.token).await?;
                    }
                    continue;
                }
                // Subscriptions taken and not one marker back: the marker topic is refused.
                Err(_) if !any_marker && under_way.iter().all(|g| g.confirmed) => {
                    return Err(SessionError::MarkerUnanswered {
                        url: self.url.clone(),
                        topic: marker_topic.to_owned(),
                    })
                }
                Err(_) => return Err(SessionError::Timeout(self.url.clone())),
            };
            match incoming {
                Some(Incoming::Message(m)) if m.topic == marker_topic => {
                    any_marker = true;
                    let token = String::from_utf8_lossy(&m.payload);
                    let Some(i) = under_way.iter().position(|g| g.token == token) else {
                        continue;
                    };
                    if !under_way[i].confirmed {
                        under_way[i].echoed_early = true;
                        continue;
                    }
                    let group = under_way.remove(i);
                    if reading == Reading::Unsubscribe {
                        self.unsubscribe(group.filters).await?;
                    }
                }
                Some(Incoming::Message(m)) => take(*m),
                Some(Incoming::Subscribed(codes)) => {
                    // Confirmations come in the order of the subscriptions.
                    let Some(group) = under_way.iter_mut().find(|g| !g.confirmed) else {
                        continue;
                    };
                    refused(group.filters, &codes)?;
                    group.confirmed = true;
                    if std::mem::take(&mut group.echoed_early) {
                        group.token = self.send_marker(marker_topic).await?;
                    }
                }
                Some(Incoming::Lost(reason)) => return Err(SessionError::Lost(reason)),
                Some(Incoming::Connected) => {}
                None => return Err(SessionError::Closed),
            }
        }
    }

    /// The end of a reading, after its last marker: retained messages that still come are
    /// taken until [`SETTLE`] has passed without one. Mosquitto sends none; a broker that
    /// sends them in the background (rmqtt) does, and from then on this session waits for
    /// [`LATE_QUIET`] of quiet instead.
    async fn settle(
        &mut self,
        marker_topic: &str,
        mut take: impl FnMut(Message),
    ) -> Result<(), SessionError> {
        let ended = tokio::time::Instant::now();
        let mut until = ended
            + match self.retained_come_late {
                true => LATE_QUIET,
                false => SETTLE,
            };
        let mut late = 0;
        let mut first = None;
        loop {
            let Ok(incoming) = tokio::time::timeout_at(until, self.next_incoming()).await else {
                if late > 0 {
                    let last = until - LATE_QUIET - ended;
                    tracing::debug!(
                        late,
                        ?first,
                        ?last,
                        "retained messages after the end marker"
                    );
                }
                return Ok(());
            };
            match incoming {
                Some(Incoming::Message(m)) if m.topic == marker_topic => {}
                Some(Incoming::Message(m)) => {
                    // Live messages (not retained) come all the time in a large fleet: only
                    // a retained one says that the reading is not over.
                    if m.retain {
                        self.retained_come_late = true;
                        late += 1;
                        first = first.or(Some(ended.elapsed()));
                        until = tokio::time::Instant::now() + LATE_QUIET;
                    }
                    take(*m);
                }
                Some(Incoming::Lost(reason)) => return Err(SessionError::Lost(reason)),
                Some(Incoming::Subscribed(_) | Incoming::Connected) => {}
                None => return Err(SessionError::Closed),
            }
        }
    }

    /// This session's private topic for the end markers of its snapshots.
    pub fn marker(&self, topics: &respawn_common::topics::Topics) -> String {
        topics.sync_marker(&self.client_id)
    }

    /// Publishes a new end marker; its token.
    async fn send_marker(&mut self, marker_topic: &str) -> Result<String, SessionError> {
        self.markers_sent += 1;
        let token = format!("end {}", self.markers_sent);
        self.publish_marker(marker_topic, &token).await?;
        Ok(token)
    }

    async fn publish_marker(&self, marker_topic: &str, token: &str) -> Result<(), SessionError> {
        self.client
            .publish(marker_topic, QoS::AtMostOnce, false, token.to_owned())
            .await
            .map_err(|e| SessionError::Send(e.to_string()))
    }
}
