//! The MQTT topic scheme: building every topic an agent or controller uses, and parsing a
//! received topic back into what it is about.
//!
//! | topic | sender | QoS | retain |
//! |---|---|---|---|
//! | `{prefix}/{agent}/state` | agent | 1 | yes (birth, graceful `offline`, Last Will `lost`) |
//! | `{prefix}/{agent}/proc/{process}` | agent | 1 | yes (empty payload: removed) |
//! | `{prefix}/{agent}/event` | agent | 1 | no |
//! | `{prefix}/{agent}/heartbeat` | agent | 0 | yes, with message expiry |
//! | `{prefix}/{agent}/cmd` | controller | 1 | never |
//! | `{prefix}/{agent}/reply/{requester}` | agent | 1 | no |
//! | `{prefix}/{agent}/logs/{process}` | agent | 0 | no (only while followed) |
//! | `{prefix}/_sync/{client}` | a controller, to itself | 0 | no (ends a read of the retained state) |

use std::fmt;

use crate::ids::{validate_agent_id, validate_process_name, IdError};

/// The prefix when the configuration names none.
pub const DEFAULT_PREFIX: &str = "respawn/v1";

/// Builds and parses topics under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

/// What a topic is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    State { agent: String },
    Process { agent: String, process: String },
    Event { agent: String },
    Heartbeat { agent: String },
    Command { agent: String },
    Reply { agent: String, requester: String },
    Logs { agent: String, process: String },
}

impl Topic {
    /// The agent the topic belongs to.
    pub fn agent(&self) -> &str {
        match self {
            Self::State { agent }
            | Self::Process { agent, .. }
            | Self::Event { agent }
            | Self::Heartbeat { agent }
            | Self::Command { agent }
            | Self::Reply { agent, .. }
            | Self::Logs { agent, .. } => agent,
        }
    }
}

/// Why a topic prefix was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("topic prefix {0:?} must be non-empty topic levels without wildcards (+, #), e.g. \"respawn/v1\"")]
pub struct BadPrefix(pub String);

impl Default for Topics {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Topics {
    /// A scheme under `prefix`, which must be one or more non-empty levels without wildcards.
    ///
    /// ```
    /// use respawn_common::topics::Topics;
    /// assert!(Topics::new("site-a/respawn").is_ok());
    /// assert!(Topics::new("respawn/#").is_err());
    /// assert!(Topics::new("respawn/").is_err());
    /// ```
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= 256
            && prefix
                .split('/')
                .all(|level| !level.is_empty() && !level.contains(['+', '#', '\0']));
        if valid {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The retained presence of an agent.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// let t = topics.state("door-pi");
    /// assert_eq!(t, "respawn/v1/door-pi/state");
    /// assert_eq!(topics.parse(&t), Some(Topic::State { agent: "door-pi".into() }));
    /// ```
    pub fn state(&self, agent: &str) -> String {
        format!("{}/{agent}/state", self.prefix)
    }

    /// The retained state of one process.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// let t = topics.process("door-pi", "doorbot");
    /// assert_eq!(t, "respawn/v1/door-pi/proc/doorbot");
    /// assert_eq!(
    ///     topics.parse(&t),
    ///     Some(Topic::Process { agent: "door-pi".into(), process: "doorbot".into() })
    /// );
    /// ```
    pub fn process(&self, agent: &str, process: &str) -> String {
        format!("{}/{agent}/proc/{process}", self.prefix)
    }

    /// The live output of a followed process.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// let t = topics.logs("door-pi", "doorbot");
    /// assert_eq!(t, "respawn/v1/door-pi/logs/doorbot");
    /// assert_eq!(
    ///     topics.parse(&t),
    ///     Some(Topic::Logs { agent: "door-pi".into(), process: "doorbot".into() })
    /// );
    /// ```
    pub fn logs(&self, agent: &str, process: &str) -> String {
        format!("{}/{agent}/logs/{process}", self.prefix)
    }

    /// Lifecycle events of an agent's processes.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::new("lab").unwrap();
    /// assert_eq!(topics.event("pi-3"), "lab/pi-3/event");
    /// assert_eq!(topics.parse("lab/pi-3/event"), Some(Topic::Event { agent: "pi-3".into() }));
    /// ```
    pub fn event(&self, agent: &str) -> String {
        format!("{}/{agent}/event", self.prefix)
    }

    /// The retained, expiring heartbeat of an agent.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// assert_eq!(topics.parse(&topics.heartbeat("a")), Some(Topic::Heartbeat { agent: "a".into() }));
    /// ```
    pub fn heartbeat(&self, agent: &str) -> String {
        format!("{}/{agent}/heartbeat", self.prefix)
    }

    /// Where commands to an agent are sent.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// assert_eq!(topics.command("door-pi"), "respawn/v1/door-pi/cmd");
    /// assert_eq!(topics.parse("respawn/v1/door-pi/cmd"), Some(Topic::Command { agent: "door-pi".into() }));
    /// ```
    pub fn command(&self, agent: &str) -> String {
        format!("{}/{agent}/cmd", self.prefix)
    }

    /// Where an agent replies to one requester.
    ///
    /// ```
    /// use respawn_common::topics::{Topic, Topics};
    /// let topics = Topics::default();
    /// let t = topics.reply("door-pi", "laptop-1a2b");
    /// assert_eq!(t, "respawn/v1/door-pi/reply/laptop-1a2b");
    /// assert_eq!(
    ///     topics.parse(&t),
    ///     Some(Topic::Reply { agent: "door-pi".into(), requester: "laptop-1a2b".into() })
    /// );
    /// ```
    pub fn reply(&self, agent: &str, requester: &str) -> String {
        format!("{}/{agent}/reply/{requester}", self.prefix)
    }

    /// A subscription filter for the replies to `requester`, from every agent.
    pub fn replies_to(&self, requester: &str) -> String {
        self.reply("+", requester)
    }

    /// A controller session's private topic for the markers that end its reads of the
    /// retained state (`_sync` can be no agent's id, which starts with a letter or digit).
    pub fn sync_marker(&self, client_id: &str) -> String {
        format!("{}/_sync/{client_id}", self.prefix)
    }

    /// A subscription filter for every topic of one agent.
    ///
    /// ```
    /// use respawn_common::topics::Topics;
    /// assert_eq!(Topics::default().of_agent("door-pi"), "respawn/v1/door-pi/#");
    /// ```
    pub fn of_agent(&self, agent: &str) -> String {
        format!("{}/{agent}/#", self.prefix)
    }

    /// A subscription filter for one kind of topic of every agent, e.g. `respawn/v1/+/state`.
    ///
    /// ```
    /// use respawn_common::topics::{Filter, Topics};
    /// let topics = Topics::default();
    /// assert_eq!(topics.filter(Filter::States), "respawn/v1/+/state");
    /// assert_eq!(topics.filter(Filter::Processes), "respawn/v1/+/proc/+");
    /// assert_eq!(topics.filter(Filter::Everything), "respawn/v1/#");
    /// ```
    pub fn filter(&self, filter: Filter) -> String {
        let p = &self.prefix;
        match filter {
            Filter::States => format!("{p}/+/state"),
            Filter::Processes => format!("{p}/+/proc/+"),
            Filter::Events => format!("{p}/+/event"),
            Filter::Heartbeats => format!("{p}/+/heartbeat"),
            Filter::Everything => format!("{p}/#"),
        }
    }

    /// What `topic` is, or `None` when it is not one of ours or names an invalid agent,
    /// process or requester.
    ///
    /// ```
    /// use respawn_common::topics::Topics;
    /// let topics = Topics::default();
    /// assert_eq!(topics.parse("respawn/v1/door-pi/unknown"), None);
    /// assert_eq!(topics.parse("other/v1/door-pi/state"), None);
    /// assert_eq!(topics.parse("respawn/v1/Door Pi/state"), None);
    /// ```
    pub fn parse(&self, topic: &str) -> Option<Topic> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let mut levels = rest.split('/');
        let agent = levels.next()?;
        validate_agent_id(agent).ok()?;
        let agent = agent.to_owned();
        let parsed = match (levels.next()?, levels.next()) {
            ("state", None) => Topic::State { agent },
            ("event", None) => Topic::Event { agent },
            ("heartbeat", None) => Topic::Heartbeat { agent },
            ("cmd", None) => Topic::Command { agent },
            ("proc", Some(process)) => {
                validate_process_name(process).ok()?;
                Topic::Process {
                    agent,
                    process: process.to_owned(),
                }
            }
            ("logs", Some(process)) => {
                validate_process_name(process).ok()?;
                Topic::Logs {
                    agent,
                    process: process.to_owned(),
                }
            }
            ("reply", Some(requester)) => {
                validate_requester(requester).ok()?;
                Topic::Reply {
                    agent,
                    requester: requester.to_owned(),
                }
            }
            _ => return None,
        };
        levels.next().is_none().then_some(parsed)
    }
}

/// Kinds of topic to subscribe to across all agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    States,
    Processes,
    Events,
    Heartbeats,
    Everything,
}

/// Checks a requester id (the last level of a reply topic): the same characters as a process
/// name, `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn validate_requester(requester: &str) -> Result<(), IdError> {
    validate_process_name(requester)
}

impl fmt::Display for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_built_topic_parses_back() {
        let topics = Topics::new("site/a/respawn").unwrap();
        let cases = [
            (topics.state("a1"), Topic::State { agent: "a1".into() }),
            (
                topics.process("a1", "web.v2"),
                Topic::Process {
                    agent: "a1".into(),
                    process: "web.v2".into(),
                },
            ),
            (topics.event("a1"), Topic::Event { agent: "a1".into() }),
            (
                topics.heartbeat("a1"),
                Topic::Heartbeat { agent: "a1".into() },
            ),
            (topics.command("a1"), Topic::Command { agent: "a1".into() }),
            (
                topics.reply("a1", "ops"),
                Topic::Reply {
                    agent: "a1".into(),
                    requester: "ops".into(),
                },
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(topics.parse(&topic), Some(expected.clone()), "{topic}");
            assert_eq!(expected.agent(), "a1");
        }
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        let topics = Topics::default();
        for bad in [
            "respawn/v1",
            "respawn/v1/",
            "respawn/v1/a/state/extra",
            "respawn/v1/a/proc",
            "respawn/v1/a/proc/",
            "respawn/v1/a/proc/x/y",
            "respawn/v1/a/reply/",
            "respawn/v1/A/state",
            "respawn/v10/a/state",
            "respawn/v1/a/proc/.hidden",
        ] {
            assert_eq!(topics.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_without_wildcards_or_empty_levels() {
        for bad in ["", "/", "a//b", "a/+", "#", "/a"] {
            assert!(Topics::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Topics::new("a/b").unwrap().prefix(), "a/b");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096)
        ))]

        /// Any topic, however hostile, parses to nothing or to ids that are valid and build the
        /// same topic again.
        #[test]
        fn parsing_is_total_and_round_trips(
            levels in proptest::collection::vec(
                prop_oneof![
                    Just("state".to_owned()),
                    Just("event".to_owned()),
                    Just("heartbeat".to_owned()),
                    Just("cmd".to_owned()),
                    Just("proc".to_owned()),
                    Just("reply".to_owned()),
                    Just("logs".to_owned()),
                    "[a-zA-Z0-9_.+# -]{0,6}",
                ],
                0..5,
            ),
            raw in any::<String>(),
        ) {
            let topics = Topics::default();
            for topic in [format!("respawn/v1/{}", levels.join("/")), raw] {
                let Some(parsed) = topics.parse(&topic) else { continue };
                let rebuilt = match &parsed {
                    Topic::State { agent } => topics.state(agent),
                    Topic::Event { agent } => topics.event(agent),
                    Topic::Heartbeat { agent } => topics.heartbeat(agent),
                    Topic::Command { agent } => topics.command(agent),
                    Topic::Process { agent, process } => topics.process(agent, process),
                    Topic::Reply { agent, requester } => topics.reply(agent, requester),
                    Topic::Logs { agent, process } => topics.logs(agent, process),
                };
                prop_assert_eq!(&rebuilt, &topic);
                prop_assert!(!topic.contains(['+', '#']));
            }
        }
    }
}
