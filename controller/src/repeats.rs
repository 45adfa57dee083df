//! Which events were taken already, for the hub, `respawnctl events` and the alerter while it
//! runs: an agent delivers each event at least once, and a repeat comes with the number (`seq`) and id of the first,
//! within that agent's latest events however many of the rest of the fleet's came between.

use std::collections::{HashMap, VecDeque};

/// How many of an agent's latest events are remembered: far more than a reconnection resends
/// (64 in flight), and what its spool sends again when its delivery mark was lost, unless that
/// comes in the middle of draining a long backlog (then the spool may hold thousands of lines
/// delivered already, and those beyond the window are shown and counted again). 8 KiB for an
/// agent whose window is full, 80 MiB for 10,000 of them; an agent with few events holds few.
const KEPT_PER_AGENT: usize = 1024;

/// The events taken so far, by agent, each as a digest of its number and id: the id tells a
/// repeat from a new event with a number given before, which an agent whose delivery mark was
/// lost, or whose state directory is new, sends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Repeats {
    agents: HashMap<String, VecDeque<u64>>,
}

impl Repeats {
    /// Whether the event `seq` with `id` of `agent` was taken before; from now on it was.
    pub fn is_repeat(&mut self, agent: &str, seq: u64, id: &str) -> bool {
        let taken = digest(seq, id);
        let latest = match self.agents.get_mut(agent) {
            Some(latest) => latest,
            None => self.agents.entry(agent.to_owned()).or_default(),
        };
        if latest.contains(&taken) {
            return true;
        }
        while latest.len() >= KEPT_PER_AGENT {
            latest.pop_front();
        }
        latest.push_back(taken);
        false
    }

    /// Lets an agent go whose retained state was cleared: it left the broker.
    pub fn forget(&mut self, agent: &str) {
        self.agents.remove(agent);
    }
}

/// FNV-1a over the number and the id.
fn digest(seq: u64, id: &str) -> u64 {
    let bytes = seq.to_le_bytes().into_iter().chain(id.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
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

    /// An agent whose delivery mark was lost sends all its spool holds again.
    #[test]
    fn an_agents_latest_events_are_remembered_as_far_as_its_spool_goes() {
        let mut repeats = Repeats::default();
        let id = |n: u64| format!("id-{n}");
        for n in 1..=3_000 {
            assert!(!repeats.is_repeat("a", n, &id(n)));
        }
        let kept = 3_000 - KEPT_PER_AGENT as u64;
        for n in (kept + 1..=3_000).rev() {
            assert!(repeats.is_repeat("a", n, &id(n)), "{n} is among the latest");
        }
        assert!(
            !repeats.is_repeat("a", kept, &id(kept)),
            "older ones are let go"
        );
        assert!(repeats.agents["a"].len() <= KEPT_PER_AGENT);
        repeats.forget("a");
        assert!(
            !repeats.is_repeat("a", 3_000, &id(3_000)),
            "an agent gone starts afresh"
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
}
