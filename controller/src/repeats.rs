//! Which events were taken already: an agent delivers each event at least once, and a repeat
//! comes with the number (`seq`) and id of the first, within that agent's latest events
//! however many of the rest of the fleet's came between.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How many of an agent's latest events are remembered: far more than come between an event
/// and its repeat (an agent has at most 64 events in flight when it sends them again; a broker
/// resends what a kept session had not acknowledged).
const KEPT_PER_AGENT: usize = 128;

/// The events taken so far, by agent: each as its number and a digest of its id. The id
/// tells a repeat from a new event with a number given before, which an agent whose spool
/// mark was lost, or whose state directory is new, sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Repeats {
    agents: BTreeMap<String, VecDeque<(u64, u64)>>,
}

impl Repeats {
    /// Whether the event `seq` with `id` of `agent` was taken before; from now on it was.
    pub fn is_repeat(&mut self, agent: &str, seq: u64, id: &str) -> bool {
        let taken = (seq, digest(id));
        let latest = self.agents.entry(agent.to_owned()).or_default();
        if latest.contains(&taken) {
            return true;
        }
        if latest.len() == KEPT_PER_AGENT {
            latest.pop_front();
        }
        latest.push_back(taken);
        false
    }
}

/// FNV-1a: the same for an id in every run, as the alerter's state file keeps it.
fn digest(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_new_once() {
        let mut repeats = Repeats::default();
        assert!(!repeats.is_repeat("a", 7, "x"));
        assert!(!repeats.is_repeat("b", 7, "x"), "another agent's");
        assert!(repeats.is_repeat("a", 7, "x"));
        assert!(
            !repeats.is_repeat("a", 5, "y"),
            "an earlier one arriving late"
        );
        assert!(repeats.is_repeat("a", 5, "y"));
        assert!(
            !repeats.is_repeat("a", 7, "z"),
            "a number given again, to a new event"
        );
        assert!(!repeats.is_repeat("a", 8, "x"), "an id with another number");
        assert!(repeats.is_repeat("b", 7, "x"));
    }

    #[test]
    fn an_agents_latest_events_are_remembered() {
        let mut repeats = Repeats::default();
        let id = |n: u64| format!("id-{n}");
        for n in 1..=1_000 {
            assert!(!repeats.is_repeat("a", n, &id(n)));
        }
        let kept = 1_000 - KEPT_PER_AGENT as u64;
        for n in (kept + 1..=1_000).rev() {
            assert!(repeats.is_repeat("a", n, &id(n)), "{n} is among the latest");
        }
        assert!(
            !repeats.is_repeat("a", kept, &id(kept)),
            "older ones are let go"
        );
    }

    /// A broker restart under a large fleet: each agent sends its last events again, after
    /// thousands of other agents' events (the ids remembered across the fleet were 1,000).
    #[test]
    fn a_large_fleets_resends_are_each_known() {
        let mut repeats = Repeats::default();
        let agents: Vec<String> = (0..5_000).map(|i| format!("pi-{i}")).collect();
        for seq in 1..=3 {
            for agent in &agents {
                assert!(!repeats.is_repeat(agent, seq, &format!("{agent}-{seq}")));
            }
        }
        for agent in &agents {
            assert!(repeats.is_repeat(agent, 2, &format!("{agent}-2")));
        }
    }

    #[test]
    fn what_was_taken_survives_a_restart_of_its_reader() {
        let mut repeats = Repeats::default();
        for n in [1, 2, 70] {
            repeats.is_repeat("a", n, &n.to_string());
        }
        let text = serde_json::to_string(&repeats).unwrap();
        let mut again: Repeats = serde_json::from_str(&text).unwrap();
        assert_eq!(again, repeats);
        assert!(again.is_repeat("a", 70, "70") && !again.is_repeat("a", 71, "71"));
        // The digest is fixed, not seeded per run: a file from another run reads the same.
        assert_eq!(digest("70"), 0x07f2_0607_b4b4_af12);
    }
}
