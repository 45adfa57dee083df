//! The remote configuration in replies to `config_*` commands: its text and hash, and what
//! a change does to each process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::is_false;

/// An agent's remote configuration, in a reply to a `config_*` command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// sha256 (hex) of `remote.toml` as it now is (an agent without one: of the empty text) —
    /// after an apply, of the new one; after a dry run, of the unchanged one.
    pub sha256: String,
    /// `config_get`: the text of `remote.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `config_get`: every process the agent runs, local and remote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ConfiguredProcess>,
    /// `config_apply` and `config_rollback`: what changed (or, for a dry run, would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ConfigChanges>,
    /// A dry run: `changes` says what an apply would do; nothing was changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// `config_apply` with `invalid_config`: every problem of the text, each with its line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<crate::config_file::Problem>,
    /// `config_apply` and `config_rollback`: the processes of `changes.added`,
    /// `changes.changed` and `changes.changed_started` that do not run, with why: could not be started (and whether they
    /// are tried again), stopped meanwhile, or still stopping when the reply was due. The
    /// reply comes once every one of them has started or could not, or at that deadline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub not_started: BTreeMap<String, String>,
}

/// A process of an agent's configuration, and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfiguredProcess {
    pub name: String,
    /// Applied over the network (`remote.toml`), not from the local file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote: bool,
}

/// What an apply does to the processes, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {
    /// New, and started.
    pub added: Vec<String>,
    /// New with `autostart = false`: configured, not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_stopped: Vec<String>,
    /// Stopped and gone.
    pub removed: Vec<String>,
    /// Restarted with their new configuration.
    pub changed: Vec<String>,
    /// Changed while not running (stopped by their policy, failed, waiting to start again):
    /// started at once with the new configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_started: Vec<String>,
    /// Changed while stopped by hand: they take the new configuration and stay stopped until
    /// started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_stopped: Vec<String>,
    /// Changed while not running, now with `autostart = false`: they take the new
    /// configuration and are not started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_left_off: Vec<String>,
    /// Only what is reported about them changed (`notify`), or, while they run, only how
    /// they are supervised (`restart`, `backoff`, `stop_timeout`, …): taken over without a
    /// restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<String>,
    /// Not touched.
    pub unchanged: Vec<String>,
}

/// What a change does to one group of processes, for the words that tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Started,
    Added,
    Restarted,
    Changed,
    Updated,
    Removed,
}

/// When a change is told of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tense {
    /// Done (an apply, waited for).
    Done,
    /// What a dry run would do.
    Would,
    /// Under way (a local reload, answered before the starts and stops are over).
    Doing,
}

impl ChangeKind {
    pub fn verb(self, tense: Tense) -> &'static str {
        let [done, would, doing] = match self {
            Self::Started => ["started", "would start", "starting"],
            Self::Added => ["added", "would add", "added"],
            Self::Restarted => ["restarted", "would restart", "restarting"],
            Self::Changed => ["changed", "would change", "changed"],
            Self::Updated => ["updated", "would update", "updated"],
            Self::Removed => ["removed", "would remove", "removing"],
        };
        match tense {
            Tense::Done => done,
            Tense::Would => would,
            Tense::Doing => doing,
        }
    }
}

impl ConfigChanges {
    /// The groups of processes a change touches, in the order they are told, each with what
    /// it does to them and a note that goes after each name.
    pub fn groups(&self) -> [(ChangeKind, &[String], &'static str); 8] {
        [
            (ChangeKind::Started, &self.added, ""),
            (
                ChangeKind::Added,
                &self.added_stopped,
                " (autostart off: not started)",
            ),
            (ChangeKind::Restarted, &self.changed, ""),
            (ChangeKind::Started, &self.changed_started, " (changed)"),
            (
                ChangeKind::Changed,
                &self.changed_stopped,
                " (stopped by hand: stays stopped until started)",
            ),
            (
                ChangeKind::Changed,
                &self.changed_left_off,
                " (autostart off: not started)",
            ),
            (ChangeKind::Updated, &self.updated, " (no restart)"),
            (ChangeKind::Removed, &self.removed, ""),
        ]
    }

    fn lists_mut(&mut self) -> [&mut Vec<String>; 9] {
        [
            &mut self.added,
            &mut self.added_stopped,
            &mut self.removed,
            &mut self.changed,
            &mut self.changed_started,
            &mut self.changed_stopped,
            &mut self.changed_left_off,
            &mut self.updated,
            &mut self.unchanged,
        ]
    }

    /// Each list in order of name.
    pub fn sort(&mut self) {
        self.lists_mut().into_iter().for_each(|list| list.sort());
    }

    /// Keeps only the processes `keep` takes.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for list in self.lists_mut() {
            list.retain(|name| keep(name));
        }
    }

    /// The change in one line, for a log: `starting web; removing migrate; unchanged api`,
    /// each name [`Printable`](crate::text::Printable) (a log line is read on a terminal).
    pub fn in_one_line(&self, tense: Tense) -> String {
        let printable = |names: &[String]| {
            let names: Vec<String> = (names.iter())
                .map(|n| crate::text::Printable(n).to_string())
                .collect();
            names.join(", ")
        };
        let mut parts: Vec<String> = (self.groups().into_iter())
            .filter(|(_, names, _)| !names.is_empty())
            .map(|(kind, names, note)| format!("{} {}{note}", kind.verb(tense), printable(names)))
            .collect();
        match (parts.is_empty(), self.unchanged.is_empty()) {
            (true, _) => parts.push("no process changes".to_owned()),
            (false, false) => parts.push(format!("unchanged {}", printable(&self.unchanged))),
            (false, true) => {}
        }
        parts.join("; ")
    }

    /// Every process the change adds, removes or alters.
    pub fn touched(&self) -> impl Iterator<Item = &String> {
        self.added
            .iter()
            .chain(&self.added_stopped)
            .chain(&self.removed)
            .chain(&self.changed)
            .chain(&self.changed_started)
            .chain(&self.changed_stopped)
            .chain(&self.changed_left_off)
            .chain(&self.updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_change_in_one_line_names_each_group_in_the_order_told_then_the_unchanged() {
        let changes = ConfigChanges {
            added: names(&["web"]),
            removed: names(&["migrate", "old"]),
            changed_stopped: names(&["cron"]),
            unchanged: names(&["api"]),
            ..ConfigChanges::default()
        };
        assert_eq!(
            changes.in_one_line(Tense::Doing),
            "starting web; changed cron (stopped by hand: stays stopped until started); removing migrate, old; unchanged api"
        );
        let nothing = ConfigChanges {
            unchanged: names(&["api"]),
            ..ConfigChanges::default()
        };
        assert_eq!(nothing.in_one_line(Tense::Done), "no process changes");
        let odd = ConfigChanges {
            updated: names(&["a\u{1b}[2J"]),
            ..ConfigChanges::default()
        };
        assert_eq!(
            odd.in_one_line(Tense::Done),
            "updated a\\u{1b}[2J (no restart)"
        );
    }
}
