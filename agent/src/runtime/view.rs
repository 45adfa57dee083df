//! The agent at one moment, as the command desk decides on it and the retained states report
//! it: the state machine's views, and what the live children's probes and own messages add.

use std::time::SystemTime;

use respawn_common::status::{LogLine, ProcessState, ProcessStatus};

use crate::runtime::children::Children;
use crate::runtime::desk;
use crate::runtime::follow::Streams;
use crate::runtime::report::{self, WallClock};
use crate::supervisor::{Supervisor, UnitView};

/// What the command desk may know of the agent, at one moment.
pub struct View<'a> {
    id: &'a str,
    supervisor: &'a Supervisor,
    children: &'a Children,
    streams: &'a Streams,
}

impl<'a> View<'a> {
    pub fn new(
        id: &'a str,
        supervisor: &'a Supervisor,
        children: &'a Children,
        streams: &'a Streams,
    ) -> Self {
        Self {
            id,
            supervisor,
            children,
            streams,
        }
    }

    /// A process's status as reported: the state machine's view, and what its probes and
    /// its own messages say.
    pub fn status(&self, name: &str, clock: &WallClock) -> Option<ProcessStatus> {
        Some(self.status_of(self.supervisor.view(name)?, clock))
    }

    fn status_of(&self, view: UnitView, clock: &WallClock) -> ProcessStatus {
        let name = view.name.as_str();
        let mut status = report::status_of(&view, clock);
        status.health = view.pid.and_then(|pid| self.children.health(pid));
        status.usage = view.pid.and_then(|pid| self.children.usage(pid));
        status.remote = self.supervisor.config(name).is_some_and(|c| c.remote);
        // Until it exits in this run, its last exit is the one an earlier run kept.
        let kept = || self.children.last_exit(name).cloned();
        status.last_exit = status.last_exit.or_else(kept);
        // Its main process is gone, and what it left is being stopped: its exit comes next.
        // A stop under way keeps the time it began.
        if let Some((pid, reaped)) = self.children.ending(name) {
            if view.pid == Some(pid) {
                if status.state != ProcessState::Stopping {
                    status.since = clock.at(reaped);
                }
                (status.state, status.pid) = (ProcessState::Stopping, None);
                // Its pid may be another program's by now.
                (status.health, status.usage) = (None, None);
            }
        }
        status
    }
}

impl desk::Agent for View<'_> {
    fn id(&self) -> &str {
        self.id
    }

    fn containment(&self) -> &'static str {
        self.children.containment()
    }

    fn contains(&self, process: &str) -> bool {
        self.supervisor.contains(process)
    }

    fn pid(&self, process: &str) -> Option<u32> {
        self.supervisor.view(process).and_then(|v| v.pid)
    }

    fn statuses(&self) -> Vec<ProcessStatus> {
        let clock = WallClock::now();
        self.supervisor
            .views()
            .map(|view| self.status_of(view, &clock))
            .collect()
    }

    fn lines(&self, process: &str, n: usize) -> Vec<LogLine> {
        self.children.lines(process, n)
    }

    fn dropped_lines(&self, process: &str) -> u64 {
        self.children.dropped_lines(process)
    }

    fn lines_and_end(&self, process: &str, n: usize) -> (Vec<LogLine>, u64) {
        self.children.lines_and_end(process, n)
    }

    fn numbered_since(&self, process: &str) -> Option<SystemTime> {
        self.children.numbered_since(process)
    }

    fn is_followed(&self, process: &str) -> bool {
        self.streams.is_followed(process)
    }
}
