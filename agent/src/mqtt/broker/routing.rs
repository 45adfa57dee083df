//! Where a message goes: what a PUBLISH does (retained, routed to every matching
//! subscription, one member of each shared group), and what a SUBSCRIBE or UNSUBSCRIBE does,
//! retained messages included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Packet, PubAck, PubAckReason, Publish, RetainForwardRule, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;

use super::core::{subscription_cost, ConnId, Core, Effect};
use super::session::{in_step, Delivery, Message, Subscription};
use super::topic::{self, Filter};

impl Core {
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        client: &str,
        publish: Publish,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        if publish.qos == QoS::ExactlyOnce {
            return self.fail(conn, DisconnectReasonCode::QoSNotSupported, now, out);
        }
        if publish
            .properties
            .as_ref()
            .is_some_and(|p| p.topic_alias.is_some())
        {
            return self.fail(conn, DisconnectReasonCode::TopicAliasInvalid, now, out);
        }
        let Some(topic) = std::str::from_utf8(&publish.topic)
            .ok()
            .filter(|t| topic::valid_name(t))
        else {
            return self.fail(conn, DisconnectReasonCode::TopicNameInvalid, now, out);
        };
        // A copy: the payload is a slice of the buffer the packet was read into, which a
        // message kept (retained, queued for a session) would keep whole behind it.
        let message = Arc::new(Message::new(
            topic.to_owned(),
            Bytes::copy_from_slice(&publish.payload),
            publish.qos,
            publish.retain,
            publish.properties,
            now,
        ));
        let reason = if message.retain && !self.retain(&message, self.is_from_this_machine(conn)) {
            PubAckReason::QuotaExceeded
        } else if self.route(&message, Some(client), now, out) {
            PubAckReason::Success
        } else {
            PubAckReason::NoMatchingSubscribers
        };
        if publish.qos == QoS::AtLeastOnce {
            out.push(Effect::Send(
                conn,
                Packet::PubAck(PubAck {
                    pkid: publish.pkid,
                    reason,
                    properties: None,
                }),
            ));
        }
    }

    /// Stores (or, with an empty payload, clears) a retained message; `false` when over the
    /// limits, which leave room that only a client on this machine may fill.
    pub(super) fn retain(&mut self, message: &Arc<Message>, from_this_machine: bool) -> bool {
        let previous = self.retained.get(&message.topic).map_or(0, |m| m.size());
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
            self.retained_bytes -= previous;
            return true;
        }
        let (mut max_count, mut max_bytes) =
            (self.limits.max_retained, self.limits.max_retained_bytes);
        if !from_this_machine {
            let (kept_count, kept_bytes) = self.limits.kept_for_this_machine;
            max_count = max_count.saturating_sub(kept_count);
            max_bytes = max_bytes.saturating_sub(kept_bytes);
        }
        let bytes = self.retained_bytes - previous + message.size();
        let new_topic = previous == 0 && !self.retained.contains_key(&message.topic);
        if bytes > max_bytes || (new_topic && self.retained.len() >= max_count) {
            return false;
        }
        self.retained
            .insert(message.topic.clone(), Arc::clone(message));
        self.retained_bytes = bytes;
        true
    }

    /// Delivers `message` to every matching subscription (one member of each shared group);
    /// `origin` is the publishing client, for No Local. Returns whether anyone matched.
    pub(super) fn route(
        &mut self,
        message: &Arc<Message>,
        origin: Option<&str>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) -> bool {
        let mut matched = false;
        let mut groups: BTreeMap<String, Vec<(String, QoS, bool)>> = BTreeMap::new();
        for (client, session) in &mut self.sessions {
            let mut best: Option<(QoS, bool)> = None;
            for (key, sub) in &session.subscriptions {
                if !sub.filter.matches(&message.topic) {
                    continue;
                }
                if sub.filter.group.is_some() {
                    groups.entry(key.clone()).or_default().push((
                        client.clone(),
                        sub.qos,
                        sub.retain_as_published,
                    ));
                    continue;
                }
                if sub.no_local && origin == Some(client.as_str()) {
                    continue;
                }
                best = Some(match best {
                    Some((qos, rap)) => (higher(qos, sub.qos), rap || sub.retain_as_published),
                    None => (sub.qos, sub.retain_as_published),
                });
            }
            if let Some((qos, retain_as_published)) = best {
                matched = true;
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: lower(qos, message.qos),
                    retain: message.retain && retain_as_published,
                };
                in_step(&mut self.held_bytes, session, |s, all| {
                    s.deliver(delivery, &self.limits, all, now, out)
                });
            }
        }
        for (key, members) in groups {
            // Connected members first; a group whose members are all away queues for one.
            let connected: Vec<&(String, QoS, bool)> = members
                .iter()
                .filter(|(c, _, _)| self.sessions.get(c).is_some_and(|s| s.conn.is_some()))
                .collect();
            let pool: Vec<&(String, QoS, bool)> = if connected.is_empty() {
                members.iter().collect()
            } else {
                connected
            };
            let turn = self.shared_turns.entry(key).or_default();
            let (client, qos, retain_as_published) = pool[*turn % pool.len()];
            *turn = turn.wrapping_add(1);
            if let Some(session) = self.sessions.get_mut(client) {
                matched = true;
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: lower(*qos, message.qos),
                    retain: message.retain && *retain_as_published,
                };
                in_step(&mut self.held_bytes, session, |s, all| {
                    s.deliver(delivery, &self.limits, all, now, out)
                });
            }
        }
        matched
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        client: &str,
        subscribe: Subscribe,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let is_the_agent = self.is_the_agent(client);
        // Room for what it asks, made first: kept sessions away longest give way to a client
        // that is here, as they do for a connection, so that sessions kept by whoever came
        // before cannot lock out those that come now (respawnctl, the hub, the alerter).
        let Some(session) = self.sessions.get(client) else {
            return;
        };
        let new_filters =
            (subscribe.filters.iter()).filter(|f| !session.subscriptions.contains_key(&f.path));
        let wanted: usize = new_filters.map(|f| subscription_cost(&f.path)).sum();
        let max = self.limits.max_subscription_bytes;
        while !is_the_agent
            && self.subscription_bytes + wanted > max
            && self.evict_longest_away(
                "the subscriptions of all sessions fill their room",
                now,
                out,
            )
        {}
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut wanted_retained = Vec::new();
        // CONNACK says Subscription Identifiers are not available: one asked for anyway makes
        // no subscription (MQTT 5 3.8.2.1.2, reason 0xA1), rather than one that never carries it.
        let with_id = subscribe
            .properties
            .as_ref()
            .is_some_and(|p| p.id.is_some());
        for requested in subscribe.filters {
            if with_id {
                codes.push(SubscribeReasonCode::SubscriptionIdNotSupported);
                continue;
            }
            if requested.path.len() > self.limits.max_filter
                || requested.path.split('/').count() > topic::MAX_FILTER_LEVELS
            {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let Some(filter) = Filter::parse(&requested.path) else {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            };
            // MQTT 5 3.8.3.1: No Local on a shared subscription is a protocol error.
            if filter.group.is_some() && requested.nolocal {
                codes.push(SubscribeReasonCode::TopicFilterInvalid);
                continue;
            }
            let existed = session.subscriptions.contains_key(&requested.path);
            let cost = subscription_cost(&requested.path);
            let over_all = self.subscription_bytes + cost > self.limits.max_subscription_bytes
                && !is_the_agent;
            if !existed
                && (session.subscriptions.len() >= self.limits.max_subscriptions || over_all)
            {
                codes.push(SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            if !existed {
                self.subscription_bytes += cost;
            }
            let qos = lower(requested.qos, QoS::AtLeastOnce);
            let send_retained = filter.group.is_none()
                && match requested.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => true,
                    RetainForwardRule::OnNewSubscribe => !existed,
                    RetainForwardRule::Never => false,
                };
            // A filter given again is looked at once: every copy would be matched against
            // the whole store.
            if send_retained {
                match wanted_retained
                    .iter_mut()
                    .find(|(f, _): &&mut (Filter, QoS)| *f == filter)
                {
                    Some((_, wanted)) => *wanted = higher(*wanted, qos),
                    None => wanted_retained.push((filter.clone(), qos)),
                }
            }
            session.subscriptions.insert(
                requested.path,
                Subscription {
                    filter,
                    qos,
                    no_local: requested.nolocal,
                    retain_as_published: requested.preserve_retain,
                },
            );
            codes.push(SubscribeReasonCode::Success(qos));
        }
        out.push(Effect::Send(
            conn,
            Packet::SubAck(SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
                properties: None,
            }),
        ));
        if wanted_retained.is_empty() {
            return;
        }
        self.retained.retain(|_, m| !m.expired(now));
        self.retained_bytes = self.retained.values().map(|m| m.size()).sum();
        // Each retained message once, at the highest QoS of the filters that match it (MQTT 5
        // 3.3.4 allows one PUBLISH for overlapping subscriptions): a SUBSCRIBE that repeats a
        // filter thousands of times would otherwise send the whole store as many times.
        let mut wanted = topic::FilterTree::default();
        for (filter, qos) in &wanted_retained {
            wanted.insert(&filter.pattern, Rank(*qos));
        }
        for message in self.retained.values() {
            let Some(Rank(qos)) = wanted.best(&message.topic) else {
                continue;
            };
            let delivery = Delivery {
                message: Arc::clone(message),
                qos: lower(qos, message.qos),
                retain: true,
            };
            in_step(&mut self.held_bytes, session, |s, all| {
                s.deliver(delivery, &self.limits, all, now, out)
            });
        }
    }

    pub(super) fn unsubscribe(
        &mut self,
        conn: ConnId,
        client: &str,
        unsubscribe: Unsubscribe,
        out: &mut Vec<Effect>,
    ) {
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        let all = &mut self.subscription_bytes;
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|f| match session.subscriptions.remove(f) {
                Some(_) => {
                    *all = all.saturating_sub(subscription_cost(f));
                    UnsubAckReason::Success
                }
                None => UnsubAckReason::NoSubscriptionExisted,
            })
            .collect();
        self.forget_turns(unsubscribe.filters.iter().cloned());
        out.push(Effect::Send(
            conn,
            Packet::UnsubAck(UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
                properties: None,
            }),
        ));
    }

    /// Forgets whose turn it is in the shared subscriptions among `keys` that no session
    /// holds any more: a client that subscribes to ever new groups must not grow the broker.
    pub(super) fn forget_turns(&mut self, keys: impl Iterator<Item = String>) {
        for key in keys {
            let held = || {
                self.sessions
                    .values()
                    .any(|s| s.subscriptions.contains_key(&key))
            };
            if self.shared_turns.contains_key(&key) && !held() {
                self.shared_turns.remove(&key);
            }
        }
    }

    /// Ends the session of `client`: what it held is free again, its subscriptions go, and
    /// with them the turns of shared subscriptions only it held.
    pub(super) fn remove_session(&mut self, client: &str) {
        if let Some(session) = self.sessions.remove(client) {
            self.held_bytes = self.held_bytes.saturating_sub(session.held);
            let costs = session.subscriptions.keys().map(|f| subscription_cost(f));
            self.subscription_bytes = self.subscription_bytes.saturating_sub(costs.sum());
            self.forget_turns(session.subscriptions.into_keys());
        }
    }
}

/// A QoS, ordered (rumqttc's is only partly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rank(QoS);

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0 as u8).cmp(&(other.0 as u8))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn lower(a: QoS, b: QoS) -> QoS {
    if a <= b {
        a
    } else {
        b
    }
}

fn higher(a: QoS, b: QoS) -> QoS {
    if a >= b {
        a
    } else {
        b
    }
}
