//! The process shell: starting children in their own session, signalling whole process groups,
//! reaping every child (the agent is a subreaper), and capturing output into the log ring.

use std::cell::RefCell;
use std::ffi::CString;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use respawn_common::status::ExitStatus;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use nix::fcntl::OFlag;

use crate::config::ProcessConfig;
use crate::logs::{LineSplitter, LogLine, LogRing, Stream, LOGGED_PER_WINDOW, LOGGED_WINDOW};
use crate::shell::cgroup::CgroupEntry;
use crate::shell::clone_into;
use crate::shell::procfs::{self, Stat};
use crate::throttle::{Throttle, Verdict};

/// Marks every descriptor the agent inherited beyond stdin, stdout and stderr close-on-exec,
/// so that its programs get only their own three, as systemd's and supervisord's do. Whatever
/// started the agent (a shell's `$(…)`, a script's pipe, a terminal multiplexer) may have left
/// more open: a program holding the write end of a pipe keeps its reader waiting for as long
/// as it runs. Called at the start, while the agent has one thread; what the agent opens
/// itself is close-on-exec already.
pub fn keep_inherited_descriptors_from_children() {
    let Ok(listed) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let inherited: Vec<i32> = listed
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in inherited {
        // SAFETY: fcntl takes any number; the listing's own fd, closed since, gives EBADF,
        // which is ignored (a BorrowedFd of it would break I/O safety, hence the raw call).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// A started child: its pid (which is also its process group and session id) and the read
/// ends of its output pipes.
pub struct Launched {
    pub pid: u32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Starts `config`'s command in a new session with stdin from /dev/null and stdout/stderr
/// piped to the agent, with `extra_env` on top of its environment; with `cgroup` it starts
/// inside that cgroup, so that not even its first fork is outside. The error is a sentence
/// for the operator.
pub fn spawn(
    config: &ProcessConfig,
    extra_env: &[(&str, String)],
    cgroup: Option<&CgroupEntry>,
) -> Result<Launched, String> {
    launch(config, &config.command, extra_env, cgroup)
}

/// Starts an `exec` health probe: `argv` as the process's user, in its directory and
/// environment, in a session of its own so that a hung probe can be killed whole.
pub fn spawn_probe(config: &ProcessConfig, argv: &[String]) -> Result<Launched, String> {
    let tag = [(crate::config::PROBE_VAR, config.name.clone())];
    launch(config, argv, &tag, None)
}

fn launch(
    config: &ProcessConfig,
    argv: &[String],
    extra_env: &[(&str, String)],
    cgroup: Option<&CgroupEntry>,
) -> Result<Launched, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "the command is empty".to_owned())?;
    if let Some(dir) = &config.cwd {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "working directory {} is not a directory",
                    dir.display()
                ))
            }
            Err(e) => return Err(format!("working directory {}: {e}", dir.display())),
        }
    }
    let identity = config.user.as_deref().map(Identity::lookup).transpose()?;
    let env = env_changes(config, extra_env, identity.as_ref());
    let clone3 = |entry: &&CgroupEntry| entry.fresh && !CLONE3_UNSUPPORTED.load(Ordering::Relaxed);
    if let Some(entry) = cgroup.filter(clone3) {
        match clone_into_cgroup(config, argv, &env, identity.as_ref(), entry) {
            Err(Clone3::Unsupported) => {
                tracing::info!("this kernel cannot start a process inside a cgroup (clone3, Linux 5.7): each start moves the process in instead, which is slower");
                CLONE3_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(Clone3::Failed(error)) => return Err(error),
            Ok(launched) => return Ok(launched),
        }
    }
    let procs = match cgroup {
        Some(entry) => Some(
            entry
                .procs()
                .map_err(|e| format!("cannot open its cgroup: {e}"))?,
        ),
        None => None,
    };

    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &config.cwd {
        command.current_dir(dir);
    }
    command.envs(env);
    let ids = identity.as_ref().and_then(Identity::switch);
    let cgroup = procs.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, write, setgroups, setgid, setuid); it allocates
    // nothing. The cgroup's fd stays open in the parent until `spawn` returns.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(fd) = cgroup {
                // Before the user switch: the new user may not write to the cgroup.
                nix::unistd::write(BorrowedFd::borrow_raw(fd), b"0").map_err(io::Error::from)?;
            }
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups).map_err(io::Error::from)?;
                nix::unistd::setgid(*gid).map_err(io::Error::from)?;
                nix::unistd::setuid(*uid).map_err(io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the output pipes were not created".to_owned());
    };
    // Dropping `child` neither waits nor kills: the reaper collects it.
    Ok(Launched {
        pid: child.id(),
        stdout: stdout.into(),
        stderr: stderr.into(),
    })
}

/// Set once `clone3` into a cgroup failed for want of kernel support: not tried again.
static CLONE3_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

enum Clone3 {
    Unsupported,
    Failed(String),
}

/// What a child's environment changes from the agent's, in order (a later one wins): the
/// account's `HOME`, `USER` and `LOGNAME` when it switches user, the process's `env`, and
/// `extra_env` (the notify socket).
fn env_changes(
    config: &ProcessConfig,
    extra_env: &[(&str, String)],
    identity: Option<&Identity>,
) -> Vec<(OsString, OsString)> {
    let mut changes: Vec<(OsString, OsString)> = Vec::new();
    if let Some(id) = identity {
        changes.push(("HOME".into(), id.home.clone().into_os_string()));
        changes.push(("USER".into(), id.name.clone().into()));
        changes.push(("LOGNAME".into(), id.name.clone().into()));
    }
    changes.extend(config.env.iter().map(|(k, v)| (k.into(), v.into())));
    changes.extend(extra_env.iter().map(|(k, v)| ((*k).into(), v.into())));
    changes
}

/// [`launch`] by `clone3` into `cgroup`: the same environment, directory, user and streams as
/// `Command` gives, prepared here for [`clone_into::spawn`].
fn clone_into_cgroup(
    config: &ProcessConfig,
    argv: &[String],
    changes: &[(OsString, OsString)],
    identity: Option<&Identity>,
    cgroup: &CgroupEntry,
) -> Result<Launched, Clone3> {
    let failed = |what: &str, e: io::Error| Clone3::Failed(format!("{what}: {e}"));
    let program = &argv[0];
    let path = changes
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var_os("PATH"));
    let cannot_run = |e: io::Error| Clone3::Failed(format!("cannot run {program:?}: {e}"));
    let ids: Option<clone_into::Ids> =
        identity
            .and_then(Identity::switch)
            .map(|(uid, gid, groups)| {
                let groups = groups.iter().map(|g| g.as_raw()).collect();
                (uid.as_raw(), gid.as_raw(), groups)
            });
    let found = clone_into::find_program(OsStr::new(program), path.as_deref(), ids.as_ref())
        .map_err(cannot_run)?;
    let bad = |_| Clone3::Failed(format!("cannot run {program:?}: a NUL byte in its command"));
    let plan = clone_into::Plan {
        program: clone_into::c_path(&found).map_err(&cannot_run)?,
        argv: argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        envp: clone_into::environment(changes),
        cwd: config
            .cwd
            .as_deref()
            .map(clone_into::c_path)
            .transpose()
            .map_err(|e| failed("working directory", e))?,
        ids,
    };
    let null = std::fs::File::open("/dev/null").map_err(|e| failed("/dev/null", e))?;
    let (stdout, stdout_child) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| failed("cannot make its output pipes", e.into()))?;
    let (stderr, stderr_child) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| failed("cannot make its output pipes", e.into()))?;
    let stdio = clone_into::Stdio {
        stdin: null.as_fd(),
        stdout: stdout_child.as_fd(),
        stderr: stderr_child.as_fd(),
    };
    match clone_into::spawn(&plan, cgroup.dir.as_fd(), stdio) {
        Ok(pid) => Ok(Launched {
            pid,
            stdout,
            stderr,
        }),
        Err(e)
            if e.raw_os_error()
                .is_some_and(|errno| clone_into::UNSUPPORTED.contains(&errno)) =>
        {
            Err(Clone3::Unsupported)
        }
        Err(e) => Err(cannot_run(e)),
    }
}

/// The account a process runs as, resolved before fork: the child may only make
/// async-signal-safe calls, and reading /etc/passwd is not one.
struct Identity {
    name: String,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    home: std::path::PathBuf,
}

/// What will keep a process from starting as the account `name`, if anything: as the start
/// says it (`spawn_failed`), for `check`.
pub fn account_problem(name: &str) -> Option<String> {
    Identity::lookup(name).err()
}

impl Identity {
    fn lookup(name: &str) -> Result<Self, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
            .ok_or_else(|| format!("no such user {name:?}"))?;
        let cname = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| format!("cannot list the groups of {name:?}: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
        })
    }

    /// The ids the child takes: none when an agent that is not root names its own account,
    /// which it could not switch to (`setgroups` needs root) and need not.
    fn switch(&self) -> Option<(Uid, Gid, Vec<Gid>)> {
        let euid = nix::unistd::geteuid();
        let own = !euid.is_root() && self.uid == euid;
        (!own).then(|| (self.uid, self.gid, self.groups.clone()))
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// A process or group that no longer exists is not an error: it is what a stop wants.
fn ignore_gone(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Sends `signal` to the process group led by `pid`, followed by SIGCONT so that a stopped
/// process can act on it.
pub fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let result = killpg(pid_of(pid), signal);
    if signal != Signal::SIGKILL {
        let _ = killpg(pid_of(pid), Signal::SIGCONT);
    }
    ignore_gone(result)
}

/// SIGKILLs what is left of the process group that the exited, not yet reaped, `leader`
/// led (see [`reap`]).
pub fn end_group(leader: u32) {
    let _ = killpg(pid_of(leader), Signal::SIGKILL);
}

/// Sends `signal` to one process.
pub fn signal_process(pid: u32, signal: Signal) -> nix::Result<()> {
    ignore_gone(nix::sys::signal::kill(pid_of(pid), signal))
}

/// Sends `signal` to one process of a cgroup being stopped, followed by SIGCONT so that a
/// stopped process can act on it.
pub fn signal_member(pid: u32, signal: Signal) -> nix::Result<()> {
    then_continue(signal, |signal| signal_process(pid, signal))
}

/// `signal` by `send`, then SIGCONT so that a stopped process can act on it (SIGKILL needs
/// none); the result of the first.
fn then_continue(signal: Signal, send: impl Fn(Signal) -> nix::Result<()>) -> nix::Result<()> {
    let result = send(signal);
    if signal != Signal::SIGKILL {
        let _ = send(Signal::SIGCONT);
    }
    result
}

/// Sends `signal` to the process `found` was read from, followed by SIGCONT so that a stopped
/// process can act on it (but for SIGKILL). A process that is not the agent's child may end,
/// and its pid go to another, between the look that found it and the signal: a pidfd holds
/// the process while its start time is compared, so that only the one found is ever
/// signalled. `Ok` when it is gone.
pub fn signal_found(found: &Stat, signal: Signal) -> nix::Result<()> {
    let pidfd = match pidfd_open(found.pid) {
        Ok(pidfd) => Some(pidfd),
        Err(Errno::ESRCH) => return Ok(()),
        // Before Linux 5.3: the start time is compared just before the signal.
        Err(Errno::ENOSYS) => None,
        Err(e) => return Err(e),
    };
    if !procfs::still_running(found) {
        return Ok(());
    }
    then_continue(signal, |signal| match &pidfd {
        Some(pidfd) => ignore_gone(pidfd_send_signal(pidfd.as_fd(), signal)),
        None => signal_process(found.pid, signal),
    })
}

/// A file descriptor that refers to the process `pid` is now, whatever later takes its pid.
fn pidfd_open(pid: u32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, which is owned
    // here alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_of(pid).as_raw(), 0) };
    match i32::try_from(fd) {
        // SAFETY: a descriptor just returned by the kernel, open, and owned by nothing else.
        Ok(fd) if fd >= 0 => Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }),
        _ => Err(Errno::last()),
    }
}

fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> nix::Result<()> {
    let (null, no_flags) = (std::ptr::null::<libc::siginfo_t>(), 0);
    // SAFETY: a valid descriptor, a signal number, no siginfo, no flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            null,
            no_flags,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(Errno::last()),
    }
}

/// A supervised main process that ended.
#[derive(Debug)]
pub struct Reaped {
    pub pid: u32,
    pub status: ExitStatus,
    /// The other processes of its cgroup that were still there when it ended, and were
    /// stopped with it.
    pub left_behind: usize,
}

/// Reaps every child that has exited, including orphans the agent inherited as subreaper.
///
/// For a main process (`is_main`), `end_rest` ends whatever it left — its process group
/// ([`end_group`]), or its cgroup — *before* the leader is reaped: until then its pid, and
/// so the group id, cannot be reused, so a signal to the group can only reach that group. It
/// says how many processes it left.
pub fn reap(
    mut is_main: impl FnMut(u32) -> bool,
    mut end_rest: impl FnMut(u32) -> usize,
) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    loop {
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peek {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => break,
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => {
                tracing::error!(error = %e, "waitid failed");
                break;
            }
        };
        let raw = u32::try_from(pid.as_raw()).unwrap_or(0);
        let main = is_main(raw);
        let mut left_behind = 0;
        if main {
            left_behind = end_rest(raw);
        }
        let status = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        let status = match status {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code { code },
            Ok(WaitStatus::Signaled(_, signal, core_dumped)) => ExitStatus::Signal {
                signal: signal.as_str().to_owned(),
                core_dumped,
            },
            Ok(other) => {
                // Not reaped after all; peeking again would spin. The next SIGCHLD retries.
                tracing::warn!(?other, "unexpected wait status");
                break;
            }
            Err(e) => {
                tracing::error!(pid = raw, error = %e, "waitpid failed");
                break;
            }
        };
        if main {
            reaped.push(Reaped {
                pid: raw,
                status,
                left_behind,
            });
        }
    }
    reaped
}

/// Where captured output goes: the process's ring and the agent's log.
#[derive(Clone)]
pub struct OutputSink {
    process: Arc<str>,
    ring: Arc<Mutex<LogRing>>,
    /// Rung by each line of a followed process: the runtime's loop sends them in a batch.
    written: Arc<Notify>,
    /// What of it the agent's log takes: a flood would drown the agent's own words, and
    /// journald, which limits a whole service, would drop those with it.
    logged: Arc<Mutex<Throttle>>,
}

impl OutputSink {
    /// Says how many lines were not written to the agent's log, if any.
    fn left_out(&self, refused: u64) {
        if refused > 0 {
            let window = humantime::format_duration(LOGGED_WINDOW);
            tracing::warn!(target: "respawn::output", process = %self.process, "{refused} lines of its output were not written to this log (over {LOGGED_PER_WINDOW} in {window}); `respawn-agent logs` has the newest");
        }
    }

    /// The pipe ended: what was left out of the log since its last line is said now, not
    /// with a line that may never come.
    fn finish(&self) {
        let refused = (self.logged.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .take_refused();
        self.left_out(refused);
    }

    pub fn new(process: &str, ring: Arc<Mutex<LogRing>>, written: Arc<Notify>) -> Self {
        Self {
            process: Arc::from(process),
            ring,
            written,
            logged: Arc::new(Mutex::new(Throttle::new(LOGGED_PER_WINDOW, LOGGED_WINDOW))),
        }
    }

    fn record(&self, stream: Stream, text: String) {
        if tracing::enabled!(target: "respawn::output", tracing::Level::INFO) {
            let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
            if let Verdict::Allow { refused } = logged.allow(Instant::now()) {
                self.left_out(refused);
                // As a terminal shows it: a `\r` or a direction mark must not rewrite the line.
                let shown = respawn_common::text::Printable(&text);
                tracing::info!(target: "respawn::output", process = %self.process, stream = %stream.as_str(), "{shown}");
            }
        }
        let line = LogLine {
            at: SystemTime::now(),
            stream,
            text,
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.push(line);
        if ring.followed {
            self.written.notify_one();
        }
    }
}

thread_local! {
    /// One read buffer for all pipes: the agent runs on a single thread, and a buffer per
    /// pipe would cost memory for every idle child. It is what one turn of a pipe takes: a
    /// child that writes without pause (`yes`) gives 8,192 lines to split and keep per turn,
    /// a few milliseconds, before the agent does anything else.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 16 * 1024]);
}

/// Reads one output pipe to its end, line by line, into `sink`. Reading never stops while the
/// pipe is open, so a child never blocks on a full pipe, and it takes turns with the rest of
/// the agent.
pub async fn capture(fd: OwnedFd, stream: Stream, sink: OutputSink) {
    let receiver = match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(process = %sink.process, error = %e, "cannot read the output pipe");
            return;
        }
    };
    let mut splitter = LineSplitter::default();
    loop {
        if let Err(e) = receiver.readable().await {
            tracing::warn!(process = %sink.process, error = %e, "output pipe failed");
            break;
        }
        let read = READ_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            let n = receiver.try_read(&mut buffer)?;
            splitter.feed(&buffer[..n], |line| sink.record(stream, line));
            Ok::<usize, io::Error>(n)
        });
        match read {
            Ok(0) => break,
            // One buffer per turn: a child that writes without pause (`yes`) always has more,
            // and tokio's budget would let this task split tens of megabytes into lines
            // before the agent reaped, restarted or answered anything else.
            Ok(_) => tokio::task::yield_now().await,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!(process = %sink.process, error = %e, "output pipe failed");
                break;
            }
        }
    }
    splitter.finish(|line| sink.record(stream, line));
    sink.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A found process is signalled; another that has its pid (a start time that is not the
    /// one found) is not.
    #[test]
    fn only_the_process_found_is_signalled() {
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let found = procfs::read_stat(child.id()).unwrap();
        let another = Stat {
            start_time: found.start_time + 1,
            ..found.clone()
        };
        signal_found(&another, Signal::SIGKILL).unwrap();
        assert!(
            procfs::still_running(&found),
            "a stranger with its pid was killed"
        );
        signal_found(&found, Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // Gone (reaped): nothing to signal, and no error.
        signal_found(&found, Signal::SIGTERM).unwrap();
    }
}
