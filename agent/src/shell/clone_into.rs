//! Starting a program inside its cgroup from its first instruction: `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7).
//!
//! The other way in — the child writing itself into `cgroup.procs` before `exec` — takes the
//! kernel's cgroup migration lock for writing, which waits for an RCU grace period when no
//! migration happened recently: about 10 ms per start here, where a whole fork and exec takes
//! one. `std::process::Command` cannot pass the flag, so this does what it does — prepare
//! everything first, then in the child only make system calls, and report a failed `exec`
//! through a close-on-exec pipe — by hand.
//!
//! The child of a raw `clone3` is not told by glibc that it is single-threaded, so it calls
//! nothing that would act on the parent's other threads: the user and group switches are
//! raw system calls (glibc's broadcast them to every thread).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use libc::{c_char, c_long};

/// What the child is to become, all of it prepared before the clone: the child may not
/// allocate.
pub struct Plan {
    /// The program, found on `PATH` already.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// uid, gid and supplementary groups to switch to.
    pub ids: Option<Ids>,
}

/// A uid, gid and supplementary groups.
pub type Ids = (u32, u32, Vec<u32>);

/// The child's ends of its standard streams.
pub struct Stdio<'a> {
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// `clone3` is not there (before 5.3), or cannot start into a cgroup (before 5.7).
pub const UNSUPPORTED: [i32; 3] = [libc::ENOSYS, libc::E2BIG, libc::EINVAL];

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `<linux/sched.h>`, up to `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

#[cfg(target_arch = "arm")]
const IDS: (c_long, c_long, c_long) = (
    libc::SYS_setgroups32,
    libc::SYS_setgid32,
    libc::SYS_setuid32,
);
#[cfg(not(target_arch = "arm"))]
const IDS: (c_long, c_long, c_long) = (libc::SYS_setgroups, libc::SYS_setgid, libc::SYS_setuid);

/// Starts `plan` in a new session, in the cgroup whose directory `cgroup` is open. Returns
/// its pid; an `exec` that failed is this error, and leaves no process behind.
pub fn spawn(plan: &Plan, cgroup: BorrowedFd<'_>, stdio: Stdio<'_>) -> io::Result<u32> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.envp);
    let (report_read, report_write) = pipe()?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: a clone without CLONE_VM is a fork: the child has its own copy of memory. In
    // the child (0) only `child` runs, which makes system calls on what was prepared above
    // and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { child(plan, &argv, &envp, &stdio, report_write.as_raw_fd()) },
        pid => {
            drop(report_write);
            let pid = u32::try_from(pid).map_err(|_| io::Error::other("bad pid"))?;
            match read_errno(&report_read)? {
                None => Ok(pid),
                Some(errno) => {
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                    Err(io::Error::from_raw_os_error(errno))
                }
            }
        }
    }
}

/// The child: becomes `plan`, or reports why it could not through `report` and exits.
///
/// # Safety
/// Only in the child of a fork-like clone.
unsafe fn child(
    plan: &Plan,
    argv: &[*const c_char],
    envp: &[*const c_char],
    stdio: &Stdio<'_>,
    report: RawFd,
) -> ! {
    let fail = |report: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    };
    // What the agent blocks or ignores is not the program's business.
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    if libc::setsid() < 0 {
        fail(report);
    }
    for (from, to) in [
        (stdio.stdin.as_raw_fd(), 0),
        (stdio.stdout.as_raw_fd(), 1),
        (stdio.stderr.as_raw_fd(), 2),
    ] {
        // dup2 onto itself would keep close-on-exec: clear it instead.
        let done = match from == to {
            true => libc::fcntl(to, libc::F_SETFD, 0),
            false => libc::dup2(from, to),
        };
        if done < 0 {
            fail(report);
        }
    }
    if let Some(dir) = &plan.cwd {
        if libc::chdir(dir.as_ptr()) < 0 {
            fail(report);
        }
    }
    if let Some((uid, gid, groups)) = &plan.ids {
        let (setgroups, setgid, setuid) = IDS;
        if libc::syscall(setgroups, groups.len(), groups.as_ptr()) < 0
            || libc::syscall(setgid, *gid) < 0
            || libc::syscall(setuid, *uid) < 0
        {
            fail(report);
        }
    }
    libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    fail(report)
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's errno if its `exec` failed; `None` when the pipe closed on a successful one.
fn read_errno(pipe: &OwnedFd) -> io::Result<Option<i32>> {
    let mut bytes = [0u8; 4];
    let mut read = 0;
    while read < bytes.len() {
        match nix::unistd::read(pipe, &mut bytes[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((read == bytes.len()).then(|| i32::from_ne_bytes(bytes)))
}

/// Where `program` is, as `execvp` would look for it: as given when it has a `/`, else the
/// first file of that name on `path` that the account it will run as (`ids`, else the agent's)
/// may execute.
pub fn find_program(
    program: &OsStr,
    path: Option<&OsStr>,
    ids: Option<&Ids>,
) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = false;
    for dir in std::env::split_paths(path) {
        let candidate = dir.join(program);
        if !candidate.is_file() {
            continue;
        }
        match executable(&candidate, ids) {
            true => return Ok(candidate),
            false => denied = true,
        }
    }
    Err(io::Error::from_raw_os_error(match denied {
        true => libc::EACCES,
        false => libc::ENOENT,
    }))
}

/// Whether `ids` may execute the file, by its mode bits. The lookup runs before the switch
/// of user, so `access` would answer for the agent (root), not for the account that will
/// exec it: a root-only program earlier on the path would hide the one it may run.
fn executable(file: &Path, ids: Option<&Ids>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid, groups)) = ids else {
        return nix::unistd::access(file, nix::unistd::AccessFlags::X_OK).is_ok();
    };
    let Ok(meta) = std::fs::metadata(file) else {
        return false;
    };
    let bits = match () {
        _ if *uid == 0 => 0o111,
        _ if meta.uid() == *uid => 0o100,
        _ if meta.gid() == *gid || groups.contains(&meta.gid()) => 0o010,
        _ => 0o001,
    };
    meta.mode() & bits != 0
}

/// The environment a child gets: the agent's, with `changes` on top, as `NAME=value` lines.
pub fn environment(changes: &[(OsString, OsString)]) -> Vec<CString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in changes {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter()
        .filter_map(|(name, value)| {
            let mut line = name.into_vec();
            line.push(b'=');
            line.extend_from_slice(value.as_bytes());
            CString::new(line).ok()
        })
        .collect()
}

/// `path` as a C string, if it holds no NUL byte.
pub fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path_as_execvp_would() {
        assert_eq!(
            find_program(
                OsStr::new("sh"),
                Some(OsStr::new("/nonexistent:/bin")),
                None
            )
            .unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            find_program(OsStr::new("./x"), None, None).unwrap(),
            PathBuf::from("./x")
        );
        let missing = find_program(
            OsStr::new("no-such-program"),
            Some(OsStr::new("/bin")),
            None,
        );
        assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn the_path_is_searched_for_what_the_switched_account_may_run() {
        use std::os::unix::fs::PermissionsExt;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        for (dir, mode) in dirs.iter().zip([0o700, 0o755]) {
            let program = dir.path().join("door");
            std::fs::write(&program, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = std::env::join_paths(dirs.iter().map(|d| d.path())).unwrap();
        let found = |ids| find_program(OsStr::new("door"), Some(&path), ids).unwrap();
        // The owner may run the first; another account only the second, as execvp finds.
        assert_eq!(found(None), dirs[0].path().join("door"));
        let nobody: Ids = (65534, 65534, Vec::new());
        assert_eq!(found(Some(&nobody)), dirs[1].path().join("door"));
    }

    #[test]
    fn the_environment_is_the_agents_with_the_changes_on_top() {
        let env = environment(&[("RESPAWN_TEST_X".into(), "1".into())]);
        assert!(env.iter().any(|l| l.as_bytes() == b"RESPAWN_TEST_X=1"));
        assert!(env.iter().any(|l| l.as_bytes().starts_with(b"PATH=")));
    }
}
