//! Reading `/proc`: a process's session, group and start time, to recognise our own leftovers
//! without ever mistaking a process that merely reuses an old pid; and memory/CPU figures.

use std::io;

use crate::config::INVOCATION_VAR;

/// The fields of `/proc/{pid}/stat` the agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// The kernel's `PF_*` flags.
    pub flags: u32,
    /// Clock ticks after boot at which the process started; together with the pid it names a
    /// process uniquely within one boot.
    pub start_time: u64,
    /// Resident memory, in pages.
    pub rss_pages: u64,
    /// CPU time in clock ticks: its own (user and system) and that of its reaped children.
    pub cpu_ticks: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }

    /// Whether it is ending (`PF_EXITING`): from then on the kernel tears down its memory, and
    /// its environment reads empty, however it came to end.
    pub fn is_exiting(&self) -> bool {
        const PF_EXITING: u32 = 0x4;
        self.flags & PF_EXITING != 0
    }

    /// Whether `other` is a reading of the same process (its state and figures may differ).
    pub fn same_process(&self, other: &Stat) -> bool {
        (self.pid, self.start_time) == (other.pid, other.start_time)
    }
}

/// Parses the content of `/proc/{pid}/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        flags: field(9)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
        cpu_ticks: (14..=17)
            .map(|n| field(n)?.parse::<u64>().ok())
            .sum::<Option<u64>>()?,
    })
}

pub fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// The stat of every process that can be read.
pub fn all_processes() -> Vec<Stat> {
    pids().filter_map(|pid| read_stat(pid).ok()).collect()
}

/// The pids in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The memory (bytes) the processes `pids` use together: see [`memory_of`].
pub fn memory_of_pids(pids: &[u32]) -> Option<u64> {
    let stats: Vec<Stat> = pids.iter().filter_map(|&pid| read_stat(pid).ok()).collect();
    memory_of(&stats)
}

/// The memory (bytes) the processes `stats` use together: the sum of their proportional set
/// sizes (a page shared by n processes counts 1/n in each), so that the workers of a
/// pre-fork server, which share most of their pages, count them once and not once each. The
/// resident size of one whose `smaps_rollup` cannot be read (a kernel before 4.14). `None`
/// while the reading is stuck: not a figure to act on.
pub fn memory_of(stats: &[Stat]) -> Option<u64> {
    if stats.is_empty() {
        return Some(0);
    }
    let page = page_size();
    let pids: Vec<u32> = stats.iter().map(|s| s.pid).collect();
    let pss = off_the_loop(
        &PSS_ABANDONED,
        "memory (smaps_rollup)",
        PSS_LIMIT,
        move || {
            let read = |pid: &u32| {
                let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"));
                rollup.ok().and_then(|text| pss_kb(&text))
            };
            pids.iter().map(read).collect::<Vec<_>>()
        },
    )?;
    let each =
        |(stat, pss_kb): (&Stat, Option<u64>)| pss_kb.map_or(stat.rss_pages * page, |kb| kb * 1024);
    Some(stats.iter().zip(pss).map(each).sum())
}

/// How long the agent waits for the PSS of the processes it measures.
const PSS_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Readings of PSS given up on that still run ([`off_the_loop`]).
static PSS_ABANDONED: Abandoned = Abandoned::new(0);

/// How many readings of one kind were given up on and still run: none other of that kind
/// starts meanwhile.
pub type Abandoned = std::sync::atomic::AtomicUsize;

/// `read` on a thread of its own, waited for `limit` at most. Reading another process's
/// environment or `smaps_rollup` waits for its memory map, which one stuck in a page fault
/// (a dead NFS server) holds as long as it is stuck: the agent must not wait with it. `None`
/// when `read` takes longer, or one of its kind (`abandoned`) given up on earlier is still
/// stuck.
pub fn off_the_loop<T: Send + 'static>(
    abandoned: &'static Abandoned,
    what: &str,
    limit: std::time::Duration,
    read: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Condvar, Mutex, PoisonError};
    /// The reading's state, and what it read once done; a Mutex and a Condvar, which the
    /// binary has anyway, rather than a channel with a timeout, which it would not.
    enum Slot<T> {
        Running,
        Done(Option<T>),
        GivenUp,
    }
    if abandoned.load(Ordering::Acquire) > 0 {
        return None;
    }
    let handoff = Arc::new((Mutex::new(Slot::Running), Condvar::new()));
    let reader_handoff = Arc::clone(&handoff);
    let reader = move || {
        let read = read();
        let (slot, ready) = &*reader_handoff;
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match *slot {
            Slot::GivenUp => {
                abandoned.fetch_sub(1, Ordering::AcqRel);
            }
            _ => *slot = Slot::Done(Some(read)),
        }
        ready.notify_one();
    };
    if let Err(e) = std::thread::Builder::new()
        .name("proc-reader".into())
        .spawn(reader)
    {
        tracing::warn!(error = %e, "cannot start a thread to read {what}");
        return None;
    }
    let (slot, ready) = &*handoff;
    let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let running = |slot: &mut Slot<T>| matches!(slot, Slot::Running);
    let (mut slot, _) = ready
        .wait_timeout_while(slot, limit, running)
        .unwrap_or_else(PoisonError::into_inner);
    match &mut *slot {
        Slot::Done(read) => read.take(),
        _ => {
            *slot = Slot::GivenUp;
            abandoned.fetch_add(1, Ordering::AcqRel);
            tracing::warn!("reading the processes' {what} takes longer than {limit:?}: the machine is very busy, or a process is stuck (in a page fault?); no other reading of the processes' {what} starts until this one is done");
            None
        }
    }
}

/// The `Pss:` line of a `smaps_rollup`, in KiB.
fn pss_kb(rollup: &str) -> Option<u64> {
    let line = rollup.lines().find_map(|l| l.strip_prefix("Pss:"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// CPU time and memory (bytes, [`memory_of`]) of each process group led by one of `leaders`,
/// from `/proc` in one pass: what a process uses where there is no cgroup to ask.
pub fn usage_of_groups(
    leaders: &[u32],
) -> std::collections::HashMap<u32, (std::time::Duration, Option<u64>)> {
    let mut members: std::collections::HashMap<u32, Vec<Stat>> = Default::default();
    if !leaders.is_empty() {
        for stat in all_processes()
            .into_iter()
            .filter(|s| leaders.contains(&s.pgrp))
        {
            members.entry(stat.pgrp).or_default().push(stat);
        }
    }
    let hz = clock_ticks();
    let usage = |stats: Vec<Stat>| {
        let ticks: u64 = stats.iter().map(|stat| stat.cpu_ticks).sum();
        let cpu = std::time::Duration::from_millis(ticks * 1000 / hz);
        (cpu, memory_of(&stats))
    };
    members
        .into_iter()
        .map(|(leader, stats)| (leader, usage(stats)))
        .collect()
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Out-of-memory kills on this machine since boot (`oom_kill` in `/proc/vmstat`).
pub fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// Identifies the current boot, so that records from before a reboot are never acted on.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// The live (non-zombie) processes of the session that the process `leader` started at
/// `start_time` leads, the leader included.
pub fn session_members(leader: u32, start_time: u64) -> Vec<Stat> {
    members_of_session(leader, start_time, &all_processes())
}

/// [`session_members`] among `processes`. A session id stays reserved while any process of
/// the session lives, so when the leader's pid now belongs to a process that started at
/// another time, the old session is gone entirely — and the process with that pid is a
/// stranger that must never be touched.
fn members_of_session(leader: u32, start_time: u64, processes: &[Stat]) -> Vec<Stat> {
    if processes
        .iter()
        .any(|s| s.pid == leader && s.start_time != start_time)
    {
        return Vec::new();
    }
    processes
        .iter()
        .filter(|s| s.session == leader && s.start_time >= start_time && !s.is_zombie())
        .cloned()
        .collect()
}

/// A fresh invocation id: 32 hex digits, random, from the kernel.
pub fn new_invocation_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        Ok(uuid) => uuid.trim().replace('-', ""),
        // Unique on this machine still: the agent's pid and the time, to the nanosecond.
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            format!(
                "{:08x}{:024x}",
                std::process::id(),
                now.unwrap_or_default().as_nanos()
            )
        }
    }
}

/// The live processes whose environment carries the invocation id `invocation` (those whose
/// environment can be read: all of them for root, one's own otherwise); with `born_after`,
/// only those whose pid was allocated after that one (which must be recent enough for the
/// pids not to have wrapped around past it since).
pub fn of_invocation(invocation: &str, born_after: Option<u32>) -> Vec<Stat> {
    let tag = format!("{INVOCATION_VAR}={invocation}");
    // The environment before the stat: reading it is a copy, where a stat of a process with
    // many threads sums their times; this runs at each exit of a program.
    let tagged = |&pid: &u32| environ_has(pid, |environ| holds_entry(environ, &tag));
    // An agent started from within a run (a terminal in a supervised tmux) carries its tag,
    // and so may those it was started by.
    let ours = lineage();
    let stats = pids_since(born_after).into_iter();
    let stats = stats.filter(|pid| !ours.contains(pid)).filter(tagged);
    let stats = stats.filter_map(|pid| read_stat(pid).ok());
    stats.filter(|stat| !stat.is_zombie()).collect()
}

/// The live processes this one inherited as subreaper whose environment carries no run's
/// [`INVOCATION_VAR`] or cannot be read (a daemon that cleared or overwrote it; a
/// non-dumpable or setuid one under an agent that is not root): no run can be told to be
/// theirs. Not those that are ending: their environment reads empty whoever's they were. `born_after` as for [`of_invocation`]. The processes this one started itself
/// are among them where their environment cannot be read: the caller knows them.
pub fn inherited_untagged(born_after: Option<u32>) -> Vec<Stat> {
    let own = std::process::id();
    let any_tag = format!("{INVOCATION_VAR}=");
    let tagged = |pid: u32| {
        environ_has(pid, |environ| {
            let mut entries = environ.split(|&b| b == 0);
            entries.any(|entry| entry.starts_with(any_tag.as_bytes()))
        })
    };
    let stats = pids_since(born_after).into_iter();
    let stats = stats.filter_map(|pid| read_stat(pid).ok());
    let inherited = stats.filter(|stat| stat.ppid == own && !stat.is_zombie());
    let untagged = inherited.filter(|stat| !tagged(stat.pid));
    // Read again after its environment: one that was ending then, and read empty for it,
    // shows it now, or is gone.
    let still_living = |stat: &Stat| {
        read_stat(stat.pid)
            .is_ok_and(|now| now.same_process(stat) && !now.is_zombie() && !now.is_exiting())
    };
    untagged.filter(still_living).collect()
}

/// The processes this agent inherited (orphans it parents as a child subreaper) whose
/// environment holds `entry` (`VAR=value`): its own children are read from
/// `/proc/self/task/*/children`, or, on a kernel without it, from every process.
pub fn inherited_with(entry: &str) -> Vec<Stat> {
    let own = std::process::id();
    let lists: Vec<String> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .collect();
    let children: Vec<u32> = match lists.is_empty() {
        true => pids().collect(),
        false => (lists.iter().flat_map(|list| list.split_whitespace()))
            .filter_map(|pid| pid.parse().ok())
            .collect(),
    };
    let stats = children.into_iter().filter_map(|pid| read_stat(pid).ok());
    let inherited = stats.filter(|stat| stat.ppid == own && !stat.is_zombie());
    inherited
        .filter(|stat| environ_has(stat.pid, |environ| holds_entry(environ, entry)))
        .collect()
}

/// The pids in `/proc`; with `born_after`, only those allocated after it (which must be recent
/// enough for the pids not to have wrapped around past it since).
fn pids_since(born_after: Option<u32>) -> Vec<u32> {
    let pids = pids();
    // Read after the list: every pid in it was allocated by then.
    let pids: Vec<u32> = pids.collect();
    let last = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid");
    let last = last.ok().and_then(|text| text.trim().parse::<u32>().ok());
    match born_after.zip(last) {
        Some((first, last)) => pids
            .into_iter()
            .filter(|&pid| allocated_after(pid, first, last))
            .collect(),
        None => pids,
    }
}

/// This process and its ancestors.
fn lineage() -> Vec<u32> {
    let mut lineage = vec![std::process::id()];
    while let Some(parent) = lineage.last().and_then(|&pid| read_stat(pid).ok()) {
        if parent.ppid <= 1 || lineage.contains(&parent.ppid) {
            break;
        }
        lineage.push(parent.ppid);
    }
    lineage
}

/// Whether `pid` was allocated after `first` and no later than `last`, the latest, in the
/// kernel's order: upwards, from the bottom again after `pid_max`.
fn allocated_after(pid: u32, first: u32, last: u32) -> bool {
    match first <= last {
        true => first < pid && pid <= last,
        false => first < pid || pid <= last,
    }
}

/// Whether the environment block of `pid` (NUL-separated entries) can be read and is
/// `wanted`.
fn environ_has(pid: u32, wanted: impl FnOnce(&[u8]) -> bool) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ"));
    environ.is_ok_and(|environ| wanted(&environ))
}

/// Whether the NUL-separated environment block `environ` holds exactly the entry `entry`.
fn holds_entry(environ: &[u8], entry: &str) -> bool {
    environ.split(|&b| b == 0).any(|e| e == entry.as_bytes())
}

/// How long the process has been running, from its start time and the system's uptime.
pub fn age(stat: &Stat) -> Option<std::time::Duration> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)?;
    let started = stat.start_time as f64 / ticks as f64;
    std::time::Duration::try_from_secs_f64(uptime - started).ok()
}

/// Whether the process described by `stat` still runs (same pid, same start, not a zombie).
pub fn still_running(stat: &Stat) -> bool {
    read_stat(stat.pid).is_ok_and(|now| now.start_time == stat.start_time && !now.is_zombie())
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Total and available memory in KiB.
pub fn memory_kb() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// The CPU temperature in °C, where the board reports one (every Raspberry Pi does).
pub fn cpu_temperature() -> Option<f64> {
    let millidegrees: f64 = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(millidegrees / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242,
                flags: 4194560,
                start_time: 987654,
                rss_pages: 100,
                cpu_ticks: 3,
            }
        );
        assert!(!stat.is_exiting());
        let ending = line.replace(" 4194560 ", " 4194564 ");
        assert!(parse_stat(&ending).unwrap().is_exiting());
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    fn stat(pid: u32, session: u32, start_time: u64, state: char) -> Stat {
        Stat {
            pid,
            state,
            ppid: 1,
            pgrp: pid,
            session,
            flags: 0,
            start_time,
            rss_pages: 0,
            cpu_ticks: 0,
        }
    }

    #[test]
    fn a_session_is_its_live_members_unless_its_leaders_pid_was_reused() {
        let processes = [
            stat(100, 100, 5000, 'S'), // the leader
            stat(101, 100, 5001, 'S'), // its child
            stat(102, 100, 5002, 'Z'), // a zombie: nothing to stop
            stat(103, 103, 5003, 'S'), // a session of its own
        ];
        let pids = |m: Vec<Stat>| m.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(members_of_session(100, 5000, &processes)), [100, 101]);
        // Leader gone, child left: still ours (the session id is reserved while it lives).
        assert_eq!(pids(members_of_session(100, 5000, &processes[1..])), [101]);
        // Pid 100 is now a process that started at another time: a stranger, even though
        // it leads a session of that id.
        assert!(members_of_session(100, 4000, &processes).is_empty());
        assert!(members_of_session(100, 6000, &processes).is_empty());
        assert!(members_of_session(999, 1, &processes).is_empty());
    }

    #[test]
    fn an_invocation_is_found_by_its_whole_entry_only() {
        let environ = b"PATH=/bin\0RESPAWN_INVOCATION=ab12\0HOME=/root\0";
        assert!(holds_entry(environ, "RESPAWN_INVOCATION=ab12"));
        assert!(!holds_entry(environ, "RESPAWN_INVOCATION=ab1"));
        assert!(!holds_entry(
            b"X_RESPAWN_INVOCATION=ab12\0",
            "RESPAWN_INVOCATION=ab12"
        ));
        assert!(!holds_entry(b"", "RESPAWN_INVOCATION=ab12"));
        let (one, other) = (new_invocation_id(), new_invocation_id());
        assert_eq!(one.len(), 32, "{one}");
        assert!(one.chars().all(|c| c.is_ascii_hexdigit()), "{one}");
        assert_ne!(one, other);
    }

    /// The stat of `child` once it sleeps: loaded, its environment and pages in place (they
    /// are not yet when `spawn` returns).
    fn asleep(child: &std::process::Child) -> Stat {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = read_stat(child.id()).unwrap();
            if stat.state == 'S' {
                return stat;
            }
            assert!(std::time::Instant::now() < deadline, "{stat:?}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_run_is_found_by_its_invocation_but_never_in_our_own_lineage() {
        let me = std::process::id();
        let parent = read_stat(me).unwrap().ppid;
        assert_eq!(lineage()[..2], [me, parent]);
        let id = new_invocation_id();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(INVOCATION_VAR, &id)
            .spawn()
            .unwrap();
        asleep(&child);
        let pids = |born_after| -> Vec<u32> {
            let found = of_invocation(&id, born_after);
            found.iter().map(|s| s.pid).collect()
        };
        let (everywhere, since_me, since_it) = (pids(None), pids(Some(me)), pids(Some(child.id())));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(everywhere, [child.id()]);
        assert_eq!(
            since_me,
            [child.id()],
            "the child's pid was allocated after ours"
        );
        assert!(since_it.is_empty(), "{since_it:?}");
    }

    /// What carries a run's id, whichever, is some run's; what does not is no run's.
    #[test]
    fn a_child_without_a_runs_id_is_no_runs() {
        let spawn = |tagged: bool| {
            let mut command = std::process::Command::new("sleep");
            command.arg("30");
            if tagged {
                command.env(INVOCATION_VAR, new_invocation_id());
            }
            let child = command.spawn().unwrap();
            asleep(&child);
            child
        };
        let (mut tagged, mut untagged) = (spawn(true), spawn(false));
        let found: Vec<u32> = inherited_untagged(None).iter().map(|s| s.pid).collect();
        let since: Vec<u32> = inherited_untagged(Some(untagged.id()))
            .iter()
            .map(|s| s.pid)
            .collect();
        for child in [&mut tagged, &mut untagged] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(found.contains(&untagged.id()), "{found:?}");
        assert!(!found.contains(&tagged.id()), "{found:?}");
        assert!(!since.contains(&untagged.id()), "{since:?}");
    }

    #[test]
    fn pids_are_allocated_upwards_and_from_the_bottom_after_pid_max() {
        assert!(allocated_after(120, 100, 200));
        assert!(allocated_after(200, 100, 200));
        assert!(!allocated_after(100, 100, 200));
        assert!(!allocated_after(99, 100, 200));
        assert!(!allocated_after(201, 100, 200));
        // Wrapped around: after 32000, up to 32768, then from 300 up to 500.
        assert!(allocated_after(32500, 32000, 500));
        assert!(allocated_after(400, 32000, 500));
        assert!(!allocated_after(600, 32000, 500));
        assert!(!allocated_after(31999, 32000, 500));
    }

    #[test]
    fn our_own_age_is_short_and_positive() {
        let age = age(&read_stat(std::process::id()).unwrap()).unwrap();
        assert!(age < std::time::Duration::from_secs(3600), "{age:?}");
    }

    #[test]
    fn our_own_stat_is_readable() {
        let me = std::process::id();
        let stat = read_stat(me).unwrap();
        assert_eq!(stat.pid, me);
        assert!(!stat.is_zombie());
        assert!(boot_id().unwrap().len() >= 32);
    }

    #[test]
    fn memory_is_the_proportional_set_size_where_the_kernel_gives_it() {
        let rollup = "55d1c0a4e000-7ffd2b1f6000 ---p 00000000 00:00 0    [rollup]\nRss:               10488 kB\nPss:                4242 kB\nPss_Anon:           2000 kB\n";
        assert_eq!(pss_kb(rollup), Some(4242));
        assert_eq!(pss_kb("Rss: 10488 kB\n"), None);
        // A process whose memory stands still, unlike this one's with other tests running.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stat = asleep(&sleeper);
        let pss = memory_of(std::slice::from_ref(&stat)).expect("read");
        let rss = stat.rss_pages * page_size();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        // Its libraries are shared with the rest of the machine: it has only a share of them.
        assert!(pss > 0 && pss < rss, "PSS {pss} against RSS {rss}");
    }

    #[test]
    fn a_stuck_reading_is_not_waited_for_and_holds_back_the_next_until_it_ends() {
        static STUCK: Abandoned = Abandoned::new(0);
        let limit = std::time::Duration::from_millis(50);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let stuck = off_the_loop(&STUCK, "test", limit, move || held.recv().is_ok());
        assert_eq!(stuck, None, "given up after its limit");
        assert_eq!(off_the_loop(&STUCK, "test", limit, || 2), None, "held back");
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let next = loop {
            match off_the_loop(&STUCK, "test", std::time::Duration::from_secs(10), || 3) {
                Some(read) => break read,
                None => assert!(std::time::Instant::now() < deadline, "never released"),
            }
            std::thread::yield_now();
        };
        assert_eq!(next, 3);
    }

    #[test]
    fn system_figures_are_readable() {
        assert!(load1().is_some_and(|l| l >= 0.0));
        let (total, available) = memory_kb().unwrap();
        assert!(total > 0 && available <= total);
    }
}
