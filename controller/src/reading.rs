//! Reading the fleet from the broker's retained state: what to subscribe to for a scope, the
//! fold of what comes, and the second reading of what a large fleet's first one lacked (a
//! broker queues only so much for a reader). Shared by every command and the hub.

use std::collections::BTreeSet;

use respawn_common::topics::{Filter, Topics};

use crate::fleet::{Fleet, Lacking, Target};
use crate::session::{Session, SessionError};
use crate::settings::Settings;

/// Connects and folds the retained state of what `scope` can match (of the whole fleet when
/// it is empty).
pub async fn fleet_snapshot(
    settings: &Settings,
    scope: &[Target],
) -> Result<(Session, Fleet), SessionError> {
    let mut session = Session::connect(settings, false).await?;
    let fleet = read_fleet(&mut session, &settings.topics, scope).await?;
    Ok((session, fleet))
}

/// The filters that bring what `scope` can match: an agent or process named without a
/// wildcard narrows them (`door-pi/+`… or `+/proc/worker`), a glob cannot (`door-*` is `+`).
pub fn scope_filters(topics: &Topics, scope: &[Target]) -> Vec<String> {
    if scope.is_empty() {
        let all = [Filter::States, Filter::Processes, Filter::Heartbeats];
        return all.map(|f| topics.filter(f)).to_vec();
    }
    let exact = |part: &str| !part.contains(['*', '?']);
    let (mut states, mut processes, mut heartbeats) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for target in scope {
        let agent = Some(target.agent.as_str())
            .filter(|a| exact(a))
            .unwrap_or("+");
        let process = target.process.as_deref().filter(|p| exact(p));
        states.insert(topics.state(agent));
        processes.insert(topics.process(agent, process.unwrap_or("+")));
        heartbeats.insert(topics.heartbeat(agent));
    }
    // In the order of the whole fleet's: what a broker drops of a first reading too large
    // for it is its end, and heartbeats are the cheapest to ask for again.
    states
        .into_iter()
        .chain(processes)
        .chain(heartbeats)
        .collect()
}

/// Reads and folds the retained state of what `scope` can match (everything when empty).
pub async fn read_fleet(
    session: &mut Session,
    topics: &Topics,
    scope: &[Target],
) -> Result<Fleet, SessionError> {
    let marker = session.marker(topics);
    let filters = scope_filters(topics, scope);
    let mut fleet = Fleet::default();
    session
        .snapshot_each(&filters, &marker, |m| fleet.receive(topics, &m))
        .await?;
    let mut fleet = fleet.within(scope);
    // A broker drops what it cannot queue for a reader that falls behind (Mosquitto: beyond
    // max_queued_messages, 1,000 by default), so a large fleet may come incomplete. Then what
    // each agent lacks is read again, a few agents at a time: each batch stays far below the
    // queue, and what comes twice folds in the same. Again while that helps: what is still
    // lacking may truly be so (a stale agent's heartbeat).
    let mut unsure = fleet.unsure().len();
    while unsure > 0 {
        let again = read_again(topics, &fleet.unsure());
        tracing::debug!(
            agents = fleet.len(),
            unsure,
            batches = again.len(),
            "read again"
        );
        session
            .snapshots(&again, &marker, |m| fleet.receive(topics, &m))
            .await?;
        let still = fleet.unsure().len();
        if still >= unsure {
            break;
        }
        unsure = still;
    }
    tracing::debug!("read");
    let fleet = fleet.within(scope);
    // What follows (commands) needs replies only: at 10,000 agents the fleet's heartbeats and
    // state changes would otherwise stand in the queue before them.
    session.unsubscribe(&filters).await?;
    session.unsubscribe(&[marker]).await?;
    Ok(fleet)
}

/// The filters that bring again what the `unsure` agents lack: everything of an agent that
/// lacks more than its heartbeat, else the heartbeat alone — in batches that each stay far
/// below what a broker queues for a reader (a heartbeat is one message, an agent a dozen).
pub fn read_again(topics: &Topics, unsure: &[(&str, Lacking)]) -> Vec<Vec<String>> {
    let (heartbeats, more): (Vec<_>, Vec<_>) = unsure
        .iter()
        .partition(|(_, lacking)| *lacking == Lacking::Heartbeat);
    let more: Vec<String> = more
        .iter()
        .map(|(agent, _)| topics.of_agent(agent))
        .collect();
    let heartbeats: Vec<String> = heartbeats
        .iter()
        .map(|(a, _)| topics.heartbeat(a))
        .collect();
    let batches = more.chunks(AGENTS_PER_BATCH);
    batches
        .chain(heartbeats.chunks(HEARTBEATS_PER_BATCH))
        .map(<[String]>::to_vec)
        .collect()
}

/// The retained messages of each batch of filters, a few batches at a time, for a view that
/// came incomplete.
pub async fn reread(
    session: &mut Session,
    topics: &Topics,
    batches: &[Vec<String>],
) -> Result<Vec<crate::session::Message>, SessionError> {
    let marker = session.marker(topics);
    let mut messages = Vec::new();
    session
        .snapshots(batches, &marker, |m| messages.push(m))
        .await?;
    Ok(messages)
}

/// How many agents a second reading asks for at once: with ten processes each, about 1,200
/// messages (300 KB), which the connection's buffers take whole before the broker's own queue
/// is touched.
const AGENTS_PER_BATCH: usize = 100;

/// How many heartbeats a second reading asks for at once.
const HEARTBEATS_PER_BATCH: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_reads_only_what_it_can_match() {
        let topics = Topics::default();
        let target = |text: &str| crate::fleet::Target::parse(text).unwrap();
        assert_eq!(
            scope_filters(&topics, &[]),
            [
                "respawn/v1/+/state",
                "respawn/v1/+/proc/+",
                "respawn/v1/+/heartbeat"
            ]
        );
        assert_eq!(
            scope_filters(&topics, &[target("sim-00*/worker")]),
            [
                "respawn/v1/+/state",
                "respawn/v1/+/proc/worker",
                "respawn/v1/+/heartbeat"
            ]
        );
        assert_eq!(
            scope_filters(&topics, &[target("door-pi"), target("door-pi/web*")]),
            [
                "respawn/v1/door-pi/state",
                "respawn/v1/door-pi/proc/+",
                "respawn/v1/door-pi/heartbeat"
            ]
        );
    }

    #[test]
    fn what_is_read_again_is_what_is_lacking_in_small_batches() {
        let topics = Topics::default();
        let names: Vec<String> = (0..1500).map(|i| format!("a{i}")).collect();
        let unsure: Vec<(&str, Lacking)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.as_str(),
                    if i < 150 {
                        Lacking::More
                    } else {
                        Lacking::Heartbeat
                    },
                )
            })
            .collect();
        let batches = read_again(&topics, &unsure);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 50, 1000, 350]);
        assert_eq!(batches[0][0], "respawn/v1/a0/#");
        assert_eq!(batches[2][0], "respawn/v1/a150/heartbeat");
    }
}
