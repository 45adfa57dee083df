//! What the live children use: CPU time and its share of a core, and memory, sampled with
//! each heartbeat and `status`, and checked against `max_memory` where the kernel does not
//! enforce it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use respawn_common::status::{megabytes, Usage};

use super::{Child, Children};
use crate::shell::cgroup::Containment;
use crate::shell::procfs;
use crate::supervisor::Input;

/// How often the memory of processes with `max_memory` is measured, where the kernel does
/// not enforce it.
pub(crate) const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Samples of CPU time closer together than this say too little about a share of a core.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// What a child uses is not sampled this soon after it started: a program that has barely
/// begun shows a tenth of a megabyte, and the heartbeat would show that until its next one.
const UNSAMPLED_AFTER_START: Duration = Duration::from_secs(1);

impl Children {
    /// Samples what every live child uses: CPU time (and its share of a core since the last
    /// sample) and memory, from its cgroup or from `/proc`.
    pub fn sample_usage(&mut self) {
        let now = Instant::now();
        let grown =
            |child: &Child| now.saturating_duration_since(child.started) >= UNSAMPLED_AFTER_START;
        let pids = self.live.iter().filter(|(_, child)| grown(child));
        let measured = self.measure(pids.map(|(&pid, _)| pid).collect());
        for (pid, (cpu, memory_bytes)) in measured {
            let Some(child) = self.live.get_mut(&pid) else {
                continue;
            };
            let (at, before) = child.last_sample;
            let cpu_percent = match now - at >= MIN_SAMPLE_INTERVAL {
                true => {
                    child.last_sample = (now, cpu);
                    let used = cpu.saturating_sub(before).as_secs_f64();
                    Some((used / (now - at).as_secs_f64() * 1000.0).round() / 10.0)
                }
                false => child.usage.as_ref().and_then(|u| u.cpu_percent),
            };
            // A reading that is stuck keeps the last figure.
            let last = child.usage.as_ref().map(|u| u.memory_bytes);
            child.usage = Some(Usage {
                cpu_seconds: (cpu.as_secs_f64() * 1000.0).round() / 1000.0,
                cpu_percent,
                memory_bytes: memory_bytes.or(last).unwrap_or_default(),
            });
        }
    }

    /// CPU time (this run's) and memory of the children `pids`: one pass over `/proc` for
    /// those without a cgroup.
    fn measure(&self, pids: Vec<u32>) -> Vec<(u32, (Duration, Option<u64>))> {
        let (in_cgroups, in_groups): (Vec<u32>, Vec<u32>) = pids
            .into_iter()
            .partition(|pid| self.live.get(pid).is_some_and(|c| c.in_cgroup));
        let mut measured: Vec<(u32, (Duration, Option<u64>))> =
            procfs::usage_of_groups(&in_groups).into_iter().collect();
        if let Containment::Cgroups(cgroups) = &*self.containment {
            for pid in in_cgroups {
                let Some(child) = self.live.get(&pid) else {
                    continue;
                };
                let usage = cgroups.usage(&child.name);
                let cpu = usage.cpu.saturating_sub(child.cpu_before);
                measured.push((pid, (cpu, usage.memory_bytes)));
            }
        }
        measured
    }

    /// Measures the memory of children with a limit (`limit_of` their name) and returns an
    /// `Unhealthy` input for each one over it.
    pub fn check_memory(&mut self, limit_of: impl Fn(&str) -> Option<u64>) -> Vec<Input> {
        let limits: Vec<(u32, u64)> = self
            .live
            .iter()
            .filter(|(_, c)| !c.over_memory)
            .filter_map(|(&pid, c)| Some((pid, limit_of(&c.name)?)))
            .collect();
        let mut over = Vec::new();
        if !limits.is_empty() {
            // Unread (stuck) is not over: the check waits for a figure.
            let used: HashMap<u32, u64> = self
                .measure(limits.iter().map(|(pid, _)| *pid).collect())
                .into_iter()
                .filter_map(|(pid, (_, memory))| Some((pid, memory?)))
                .collect();
            for (pid, limit) in limits {
                let (Some(&used), Some(child)) = (used.get(&pid), self.live.get_mut(&pid)) else {
                    continue;
                };
                if used > limit {
                    child.over_memory = true;
                    over.push(Input::Unhealthy {
                        name: child.name.clone(),
                        pid,
                        // In the units of the status's MEM column and the limits people write.
                        reason: format!(
                            "memory: {} in use, over max_memory ({})",
                            megabytes(used),
                            megabytes(limit)
                        ),
                    });
                }
            }
        }
        over
    }

    /// Memory is measured every few seconds while some process has a limit that the kernel
    /// does not enforce, never otherwise: an idle agent does not wake up for nothing.
    pub fn schedule_memory_checks(&mut self, any_limit: bool) {
        let kernel_enforces = match &*self.containment {
            Containment::Cgroups(cgroups) => cgroups.enforces_memory(),
            Containment::ProcessGroups => false,
        };
        self.next_memory_check =
            (any_limit && !kernel_enforces).then(|| Instant::now() + MEMORY_CHECK_EVERY);
    }

    pub fn next_memory_check(&self) -> Option<Instant> {
        self.next_memory_check
    }
}
