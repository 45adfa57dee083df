//! What waits to be sent to one target: notices are collected for a short window and sent as
//! one message; messages go out in order, no faster than the target allows, and are retried
//! while the service is down — after a 429 when it says, after a failure with a growing delay —
//! until they are delivered or too old. Pure: time is passed in; serialisable, so nothing is
//! lost when the alerter restarts.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use respawn_common::time::elapsed;
use serde::{Deserialize, Serialize};

use super::rules::{AlertKey, AlertKind, Facts, Notice, Phase};

/// How fast and how long one target is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Notices are collected this long from the first, then sent as one message.
    pub group_window: Duration,
    /// At least this long between two messages.
    pub min_interval: Duration,
    /// A message is given up this long after it was made.
    pub retry_for: Duration,
}

/// One message: the notices of one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique and stable across retries: services that deduplicate (Matrix) see one message.
    pub id: String,
    pub notices: Vec<Notice>,
    #[serde(with = "respawn_common::time::rfc3339")]
    pub created: SystemTime,
    #[serde(default)]
    pub attempts: u32,
    /// When this try of it goes out: a wait it names counts from there.
    #[serde(skip)]
    pub told: Option<SystemTime>,
}

/// What became of one attempt to send a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// The service asked to wait (HTTP 429).
    RetryAfter(Duration),
    /// The service or the network failed; worth trying again.
    Transient(String),
    /// The service refused this message for good; trying again cannot help.
    Permanent(String),
}

/// What [`Outbox::settle`] did with the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Delivered; the alerts it told of (fired or reminded), for their reminders to count
    /// from now.
    Sent(Vec<AlertKey>),
    /// Kept, to be tried again at this time.
    Retry(SystemTime),
    /// Dropped: refused for good, or too old.
    Dropped(String),
}

/// The most notices one message gathers while the target is down; the services' own limits
/// cut a message far shorter ("…and 480 more").
const MAX_NOTICES: usize = 500;

/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The longest `Retry-After` (or Telegram's `retry_after`) honoured: services ask for seconds
/// to a minute; a longer wait is tried again after this one.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    #[serde(default)]
    collecting: Vec<Notice>,
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    collecting_since: Option<SystemTime>,
    #[serde(default)]
    queue: VecDeque<Batch>,
    /// Nothing is sent before this (a 429's wait, a failure's backoff).
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    not_before: Option<SystemTime>,
    #[serde(default, with = "respawn_common::time::rfc3339_opt")]
    last_sent: Option<SystemTime>,
    /// The alerts this target has heard of (an alert or a reminder of it was delivered) and
    /// not yet of their end: a resolution of any other is not sent, as it would resolve what
    /// the target never heard of. `None` in a state saved before it was kept: then every
    /// resolution goes out, as it did.
    #[serde(default)]
    announced: Option<BTreeSet<AlertKey>>,
    /// Resolutions taken out for that, for the log to say (the log of their routing named
    /// this target).
    #[serde(skip)]
    unsent_resolutions: Vec<AlertKey>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            collecting: Vec::new(),
            collecting_since: None,
            queue: VecDeque::new(),
            not_before: None,
            last_sent: None,
            announced: Some(BTreeSet::new()),
            unsent_resolutions: Vec::new(),
        }
    }
}

impl Outbox {
    pub fn push(&mut self, now: SystemTime, notice: Notice) {
        // A loss an agent tells over several events (each carries what was dropped before
        // it) is one loss of their sum.
        if notice.key.kind == AlertKind::EventsLost {
            if let Some(told) = self.collecting.iter_mut().find(|n| n.key == notice.key) {
                // Told by the agents, so any number: summed without overflow.
                let lost =
                    (told.facts.lost.unwrap_or(0)).saturating_add(notice.facts.lost.unwrap_or(0));
                told.facts.lost = Some(lost);
                return;
            }
        }
        self.collecting.push(notice);
        self.collecting_since.get_or_insert(now);
    }

    /// Takes out of the head of the queue the resolutions of alerts this target never heard
    /// of (nor hears of in the same message); drops a head left empty. Decided as it is sent,
    /// when what went before it has been delivered or given up.
    fn drop_unannounced(&mut self) {
        let Some(announced) = &self.announced else {
            return;
        };
        while let Some(head) = self.queue.front_mut() {
            let mut raised: BTreeSet<AlertKey> = BTreeSet::new();
            let unsent = &mut self.unsent_resolutions;
            head.notices.retain(|n| match n.phase {
                Phase::Resolved => {
                    let heard = announced.contains(&n.key) || raised.contains(&n.key);
                    if !heard {
                        unsent.push(n.key.clone());
                    }
                    heard
                }
                Phase::Firing | Phase::Reminder => {
                    raised.insert(n.key.clone());
                    true
                }
                Phase::Test => true,
            });
            if !head.notices.is_empty() {
                return;
            }
            self.queue.pop_front();
        }
    }

    /// The resolutions left unsent since the last call, as this target never heard of their
    /// alerts.
    pub fn take_unsent_resolutions(&mut self) -> Vec<AlertKey> {
        std::mem::take(&mut self.unsent_resolutions)
    }

    /// Messages waiting, the one being collected included.
    pub fn len(&self) -> usize {
        self.queue.len() + usize::from(!self.collecting.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch to send now, if one is due: its window has closed, and the target may be
    /// sent to again. It stays queued until [`Outbox::settle`]. `facts_now` gives an alert's
    /// facts as they stand, while it is the one a notice raised or reminded of: each is told
    /// with those.
    pub fn due<'a>(
        &mut self,
        now: SystemTime,
        pace: &Pace,
        facts_now: impl Fn(&AlertKey, SystemTime) -> Option<&'a Facts>,
    ) -> Option<Batch> {
        if let Some(since) = self.collecting_since {
            if elapsed(since, now) >= pace.group_window {
                let notices = std::mem::take(&mut self.collecting);
                // While the head fails, what comes meanwhile waits as one message rather than
                // one per window: after an outage the target gets the news at once, not hours
                // of it one message a second.
                let failing = self.queue.front().is_some_and(|head| head.attempts > 0);
                let waiting = self.queue.len() > 1;
                let tail = self.queue.back_mut().filter(|tail| {
                    failing
                        && waiting
                        && tail.attempts == 0
                        && tail.notices.len() + notices.len() <= MAX_NOTICES
                });
                match tail {
                    // Made anew with its latest news: `retry_for` counts from there, so that
                    // news of the last hour is not given up with that of a day ago.
                    Some(tail) => {
                        tail.notices.extend(notices);
                        tail.created = now;
                    }
                    None => self.queue.push_back(Batch {
                        id: uuid::Uuid::new_v4().simple().to_string(),
                        notices,
                        created: now,
                        attempts: 0,
                        told: None,
                    }),
                }
                self.collecting_since = None;
            }
        }
        self.drop_unannounced();
        let waits = self.not_before.is_some_and(|t| now < t)
            || (self.last_sent).is_some_and(|t| elapsed(t, now) < pace.min_interval);
        if waits {
            return None;
        }
        let head = self.queue.front_mut()?;
        let raised = |n: &&mut Notice| matches!(n.phase, Phase::Firing | Phase::Reminder);
        for notice in head.notices.iter_mut().filter(raised) {
            if let Some(facts) = facts_now(&notice.key, notice.since) {
                notice.facts = facts.clone();
            }
        }
        // A start to come when a notice was made, and past when it is sent again (held
        // through an outage of the service), is not said as to come. A first try keeps it:
        // "restarting at once" is past by the end of any grouping window, and still news.
        let mut batch = head.clone();
        batch.told = Some(now);
        for notice in batch.notices.iter_mut().filter(|_| head.attempts > 0) {
            if notice.facts.next_start.is_some_and(|next| next <= now) {
                notice.facts.next_start = None;
            }
        }
        Some(batch)
    }

    /// Records what became of the batch `id` (the head of the queue).
    pub fn settle(
        &mut self,
        now: SystemTime,
        pace: &Pace,
        id: &str,
        delivery: &Delivery,
    ) -> Settled {
        let Some(head) = self.queue.front_mut().filter(|b| b.id == id) else {
            return Settled::Dropped("no longer queued".into());
        };
        head.attempts += 1;
        let attempts = head.attempts;
        let created = head.created;
        let retry = |this: &mut Self, wait: Duration, why: &str| {
            if elapsed(created, now) + wait > pace.retry_for {
                this.queue.pop_front();
                this.not_before = None;
                return Settled::Dropped(format!(
                    "gave up after {attempts} attempts over {}: {why}",
                    humantime::format_duration(Duration::from_secs(
                        elapsed(created, now).as_secs()
                    ))
                ));
            }
            let at = now + wait;
            this.not_before = Some(at);
            Settled::Retry(at)
        };
        match delivery {
            Delivery::Delivered => {
                let sent = self
                    .queue
                    .pop_front()
                    .map(|b| b.notices)
                    .unwrap_or_default();
                let told: Vec<AlertKey> = (sent.iter())
                    .filter(|n| matches!(n.phase, Phase::Firing | Phase::Reminder))
                    .map(|n| n.key.clone())
                    .collect();
                if let Some(announced) = &mut self.announced {
                    for notice in sent {
                        match notice.phase {
                            Phase::Resolved => announced.remove(&notice.key),
                            Phase::Firing | Phase::Reminder => announced.insert(notice.key),
                            Phase::Test => false,
                        };
                    }
                }
                self.not_before = None;
                self.last_sent = Some(now);
                Settled::Sent(told)
            }
            Delivery::RetryAfter(asked) => {
                // A wait beyond any chat service's rate limit (a day, from a misbehaving
                // server) would drop the message at once and hold every later one that long.
                let wait = &(*asked).min(MAX_RATE_LIMIT_WAIT);
                let settled = retry(self, *wait, "rate limited");
                // The service's wait holds for the next message too, also when this one is
                // given up: sending at once would only be refused again (and Discord bans
                // who keeps on).
                self.not_before = Some(now + *wait);
                settled
            }
            Delivery::Transient(why) => retry(self, backoff(attempts), why),
            Delivery::Permanent(why) => {
                self.queue.pop_front();
                self.not_before = None;
                Settled::Dropped(why.clone())
            }
        }
    }
}

/// 1 s, 2 s, 4 s, … up to five minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::testing::{crash_notice, t};

    const PACE: Pace = Pace {
        group_window: Duration::from_secs(5),
        min_interval: Duration::from_secs(1),
        retry_for: Duration::from_secs(3600),
    };

    /// No alert of the rules is active: notices are told as they were made.
    fn no_news(_: &AlertKey, _: SystemTime) -> Option<&'static Facts> {
        None
    }

    fn notice(process: &str) -> Notice {
        crash_notice(process)
    }

    /// An agent's news that it dropped `n` events.
    fn lost(n: u64) -> Notice {
        Notice {
            key: AlertKey {
                agent: "door-pi".into(),
                process: None,
                kind: AlertKind::EventsLost,
            },
            facts: crate::alerts::rules::Facts {
                lost: Some(n),
                ..Default::default()
            },
            ..notice("x")
        }
    }

    fn names(batch: &Batch) -> Vec<&str> {
        batch
            .notices
            .iter()
            .filter_map(|n| n.key.process.as_deref())
            .collect()
    }

    #[test]
    fn a_burst_within_the_window_is_one_message() {
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        outbox.push(t(3), notice("b"));
        assert_eq!(outbox.due(t(4), &PACE, no_news), None, "the window is open");
        let batch = outbox
            .due(t(5), &PACE, no_news)
            .expect("due once the window closed");
        assert_eq!(names(&batch), ["a", "b"]);
        outbox.push(t(5), notice("c"));
        assert_eq!(
            outbox.settle(t(5), &PACE, &batch.id, &Delivery::Delivered),
            Settled::Sent(batch.notices.iter().map(|n| n.key.clone()).collect())
        );
        assert_eq!(
            outbox
                .due(t(10), &PACE, no_news)
                .map(|b| names(&b).join(",")),
            Some("c".into())
        );
    }

    #[test]
    fn a_start_past_by_the_time_it_is_sent_is_not_said_as_to_come() {
        let mut outbox = Outbox::default();
        let mut crash = notice("a");
        crash.facts.next_start = Some(t(20));
        outbox.push(t(0), crash);
        let batch = outbox.due(t(25), &PACE, no_news).expect("due");
        assert_eq!(
            batch.notices[0].facts.next_start,
            Some(t(20)),
            "a first try says it as made"
        );
        let retry = outbox.settle(t(25), &PACE, &batch.id, &Delivery::Transient("down".into()));
        assert!(matches!(retry, Settled::Retry(_)), "{retry:?}");
        let later = outbox.due(t(40), &PACE, no_news).expect("due again");
        assert_eq!(later.notices[0].facts.next_start, None, "past when sent");
    }

    #[test]
    fn in_order_at_the_targets_pace_and_through_an_outage() {
        let pace = Pace {
            group_window: Duration::ZERO,
            ..PACE
        };
        let mut outbox = Outbox::default();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            outbox.push(t(i as u64), notice(name));
            outbox.due(t(i as u64), &pace, no_news);
        }
        // The service is down: the same first message is retried with growing delays.
        let mut now = t(10);
        let mut waits = Vec::new();
        for _ in 0..4 {
            let batch = outbox.due(now, &pace, no_news).expect("due");
            assert_eq!(names(&batch), ["a"]);
            match outbox.settle(
                now,
                &pace,
                &batch.id,
                &Delivery::Transient("HTTP 500".into()),
            ) {
                Settled::Retry(at) => {
                    waits.push(at.duration_since(now).unwrap().as_secs());
                    assert_eq!(
                        outbox.due(at - Duration::from_millis(1), &pace, no_news),
                        None
                    );
                    now = at;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [1, 2, 4, 8]);
        // A 429 says how long.
        let batch = outbox.due(now, &pace, no_news).unwrap();
        let Settled::Retry(at) = outbox.settle(
            now,
            &pace,
            &batch.id,
            &Delivery::RetryAfter(Duration::from_secs(30)),
        ) else {
            panic!("kept")
        };
        assert_eq!(at, now + Duration::from_secs(30));
        // Back: everything goes out, in order, one second apart.
        let mut sent = Vec::new();
        let mut now = at;
        while let Some(batch) = outbox.due(now, &pace, no_news) {
            sent.push(names(&batch).join(","));
            outbox.settle(now, &pace, &batch.id, &Delivery::Delivered);
            assert!(
                outbox.due(now, &pace, no_news).is_none(),
                "not twice in a second"
            );
            now += Duration::from_secs(1);
        }
        assert_eq!(sent, ["a", "b", "c"]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn losses_told_within_one_window_are_one_of_their_sum() {
        let mut outbox = Outbox::default();
        outbox.push(t(0), lost(2));
        outbox.push(t(0), notice("a"));
        outbox.push(t(1), lost(3));
        let batch = outbox.due(t(5), &PACE, no_news).unwrap();
        let losses: Vec<Option<u64>> = batch.notices.iter().map(|n| n.facts.lost).collect();
        assert_eq!(losses, [Some(5), None]);
    }

    #[test]
    fn a_loss_beyond_counting_is_the_largest_count_not_a_crash() {
        let mut outbox = Outbox::default();
        outbox.push(t(0), lost(u64::MAX));
        outbox.push(t(0), lost(u64::MAX));
        let batch = outbox.due(t(5), &PACE, no_news).unwrap();
        assert_eq!(batch.notices[0].facts.lost, Some(u64::MAX));
    }

    #[test]
    fn a_rate_limit_of_a_day_is_tried_again_within_a_quarter_of_an_hour() {
        let pace = Pace {
            group_window: Duration::ZERO,
            retry_for: Duration::from_secs(24 * 3600),
            ..PACE
        };
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        let batch = outbox.due(t(0), &pace, no_news).unwrap();
        let day = Delivery::RetryAfter(Duration::from_secs(24 * 3600));
        let settled = outbox.settle(t(0), &pace, &batch.id, &day);
        assert_eq!(settled, Settled::Retry(t(15 * 60)), "kept, not given up");
        assert!(outbox.due(t(15 * 60 - 1), &pace, no_news).is_none());
        let again = outbox.due(t(15 * 60), &pace, no_news).expect("tried again");
        assert_eq!(again.id, batch.id);
    }

    #[test]
    fn what_comes_while_the_target_is_down_waits_as_one_message() {
        let pace = Pace {
            group_window: Duration::ZERO,
            ..PACE
        };
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        let head = outbox.due(t(0), &pace, no_news).unwrap();
        let down = Delivery::Transient("HTTP 502".into());
        outbox.settle(t(0), &pace, &head.id, &down);
        for (i, name) in ["b", "c", "d"].iter().enumerate() {
            let now = t(100 + 10 * i as u64);
            outbox.push(now, notice(name));
            outbox.due(now, &pace, no_news);
        }
        assert_eq!(outbox.len(), 2, "the failing one, and all since");
        assert_eq!(
            outbox.queue.back().map(|b| b.created),
            Some(t(120)),
            "made anew"
        );
        let head = outbox.due(t(200), &pace, no_news).unwrap();
        outbox.settle(t(200), &pace, &head.id, &Delivery::Delivered);
        let news = outbox.due(t(201), &pace, no_news).unwrap();
        assert_eq!(names(&news), ["b", "c", "d"]);
    }

    #[test]
    fn what_the_target_never_heard_of_is_not_resolved_to_it() {
        let pace = Pace {
            group_window: Duration::ZERO,
            min_interval: Duration::ZERO,
            ..PACE
        };
        let notice = |phase| Notice {
            phase,
            ..crash_notice("doorbot")
        };
        let refused = Delivery::Permanent("HTTP 400".into());
        // Sends what is due at `now` with `delivery`; what it held.
        let send = |outbox: &mut Outbox, now, delivery: &Delivery| {
            let batch = outbox.due(now, &pace, no_news)?;
            outbox.settle(now, &pace, &batch.id, delivery);
            Some(batch.notices.iter().map(|n| n.phase).collect::<Vec<_>>())
        };
        // The alert is refused for good while its resolution waits behind it: neither goes.
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice(Phase::Firing));
        outbox.due(t(0), &pace, no_news);
        outbox.push(t(1), notice(Phase::Resolved));
        assert_eq!(send(&mut outbox, t(1), &refused), Some(vec![Phase::Firing]));
        assert_eq!(send(&mut outbox, t(2), &Delivery::Delivered), None);
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.take_unsent_resolutions(),
            [notice(Phase::Resolved).key],
            "for the log to say"
        );
        assert!(outbox.take_unsent_resolutions().is_empty(), "once");

        // The alert is lost, a reminder gets through: the resolution follows it.
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice(Phase::Firing));
        outbox.due(t(0), &pace, no_news);
        outbox.push(t(1), notice(Phase::Reminder));
        outbox.push(t(1), notice(Phase::Resolved));
        send(&mut outbox, t(1), &refused);
        let rest = send(&mut outbox, t(2), &Delivery::Delivered);
        assert_eq!(rest, Some(vec![Phase::Reminder, Phase::Resolved]));

        // An alert and its end in one message that is lost; the next alert is resolved.
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice(Phase::Firing));
        outbox.push(t(0), notice(Phase::Resolved));
        outbox.due(t(0), &pace, no_news);
        outbox.push(t(1), notice(Phase::Firing));
        send(&mut outbox, t(1), &refused);
        assert_eq!(
            send(&mut outbox, t(2), &Delivery::Delivered),
            Some(vec![Phase::Firing])
        );
        outbox.push(t(3), notice(Phase::Resolved));
        assert_eq!(
            send(&mut outbox, t(3), &Delivery::Delivered),
            Some(vec![Phase::Resolved])
        );

        // A state saved before this was kept resolves as it did.
        let mut legacy: Outbox = serde_json::from_str("{}").unwrap();
        legacy.push(t(0), notice(Phase::Resolved));
        assert_eq!(
            send(&mut legacy, t(0), &Delivery::Delivered),
            Some(vec![Phase::Resolved])
        );
    }

    #[test]
    fn refused_for_good_or_too_old_is_dropped() {
        let pace = Pace {
            group_window: Duration::ZERO,
            retry_for: Duration::from_secs(10),
            ..PACE
        };
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        outbox.push(t(0), notice("b"));
        let batch = outbox.due(t(0), &pace, no_news).unwrap();
        let dropped = outbox.settle(
            t(0),
            &pace,
            &batch.id,
            &Delivery::Permanent("HTTP 400: invalid_payload".into()),
        );
        assert_eq!(
            dropped,
            Settled::Dropped("HTTP 400: invalid_payload".into())
        );

        outbox.push(t(1), notice("c"));
        let batch = outbox.due(t(1), &pace, no_news).unwrap();
        let mut now = t(1);
        loop {
            match outbox.settle(now, &pace, &batch.id, &Delivery::Transient("down".into())) {
                Settled::Retry(at) => now = at,
                Settled::Dropped(why) => {
                    assert!(why.starts_with("gave up after 4 attempts"), "{why}");
                    break;
                }
                Settled::Sent(_) => unreachable!(),
            }
        }
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_rate_limit_holds_for_the_next_message_when_one_is_given_up() {
        let pace = Pace {
            group_window: Duration::ZERO,
            retry_for: Duration::from_secs(10),
            ..PACE
        };
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        let batch = outbox.due(t(0), &pace, no_news).unwrap();
        outbox.push(t(1), notice("b"));
        let wait = Delivery::RetryAfter(Duration::from_secs(60));
        let dropped = outbox.settle(t(1), &pace, &batch.id, &wait);
        assert!(matches!(dropped, Settled::Dropped(_)), "{dropped:?}");
        assert!(
            outbox.due(t(60), &pace, no_news).is_none(),
            "the service's minute"
        );
        assert!(outbox.due(t(61), &pace, no_news).is_some());
    }

    #[test]
    fn the_outbox_survives_a_restart() {
        let mut outbox = Outbox::default();
        outbox.push(t(0), notice("a"));
        let batch = outbox.due(t(10), &PACE, no_news).unwrap();
        outbox.settle(t(10), &PACE, &batch.id, &Delivery::Transient("down".into()));
        let saved = serde_json::to_string(&outbox).unwrap();
        let mut restored: Outbox = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored, outbox);
        let again = restored.due(t(11), &PACE, no_news).unwrap();
        assert_eq!(
            again.id, batch.id,
            "the same message, so that it is deduplicated"
        );
        assert_eq!(again.attempts, 1);
    }
}
