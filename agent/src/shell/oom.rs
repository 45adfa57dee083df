//! Out-of-memory kills: the kernel's counters, read when a process starts and again when it
//! ends, to tell the OOM killer's SIGKILL from anyone else's.

use crate::shell::cgroup::Containment;
use crate::shell::procfs;
use crate::supervisor::OomEvidence;

/// An out-of-memory kill counter, read when a child starts and again when it ends.
#[derive(Clone, Copy, Debug)]
pub enum OomCount {
    /// `oom_kill` in its cgroup's `memory.events`, with the limit the kernel enforces.
    Cgroup {
        kills: u64,
        limit: Option<u64>,
    },
    /// `oom_kill` in `/proc/vmstat`: the machine's.
    Machine(u64),
    Unknown,
}

impl OomCount {
    /// The count for the process `name` about to start: its cgroup's (`in_cgroup`, where the
    /// memory controller is on, with its `limit`), else the machine's.
    pub fn read(
        containment: &Containment,
        name: &str,
        in_cgroup: bool,
        limit: Option<u64>,
    ) -> Self {
        if let (Containment::Cgroups(cgroups), true) = (containment, in_cgroup) {
            if let Some(kills) = cgroups.oom_kills(name) {
                return Self::Cgroup { kills, limit };
            }
        }
        procfs::oom_kills().map_or(Self::Unknown, Self::Machine)
    }

    /// What the kernel counted of out-of-memory kills since this count was read.
    pub fn evidence(self, containment: &Containment, name: &str) -> OomEvidence {
        match (self, containment) {
            (Self::Cgroup { kills, limit }, Containment::Cgroups(cgroups))
                if cgroups.oom_kills(name).is_some_and(|now| now > kills) =>
            {
                OomEvidence::InItsCgroup { limit }
            }
            (Self::Machine(kills), _) if procfs::oom_kills().is_some_and(|now| now > kills) => {
                OomEvidence::OnTheMachine
            }
            _ => OomEvidence::None,
        }
    }
}
