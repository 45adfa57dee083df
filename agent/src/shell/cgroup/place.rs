//! Where on this machine the agent may make cgroups, found without changing anything: the
//! cgroup2 mount, the agent's own cgroup, whether systemd delegated it, and what `check`
//! tells of the memory controller.

use std::fs;
use std::path::{Path, PathBuf};

/// Where this process would manage cgroups: its own cgroup, if it is delegated to it, else
/// (as root) a subtree beside it. Found without changing anything; `Err` says why it cannot.
pub(super) struct Place {
    pub(super) own_dir: PathBuf,
    /// The process is in the hierarchy's root cgroup.
    pub(super) at_root: bool,
    pub(super) delegated: bool,
}

impl Place {
    pub(super) fn here() -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = cgroup2_mount(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own_cgroup(&own).ok_or("the agent is in no cgroup v2")?;
        let own_dir = mount.join(own.trim_start_matches('/'));
        let is_root = nix::unistd::geteuid().is_root();
        // Root may write anywhere: for it, only systemd's mark says that the cgroup is its
        // own, not a login session's or another service's shared with other agents.
        let delegated =
            own != "/" && writable(&own_dir) && (!is_root || marked_delegated(&own_dir));
        let at_root = own == "/";
        if !delegated && !is_root {
            return Err(format!(
                "its cgroup {} is not delegated to it, and it is not root",
                own_dir.display()
            ));
        }
        Ok(Self {
            own_dir,
            at_root,
            delegated,
        })
    }
}

/// Why an agent started as this process could not manage cgroups, if it could not (for
/// `check`, which may run as another user, or outside the service's cgroup).
pub fn unmanageable_here() -> Option<String> {
    Place::here().err()
}

/// Whether this machine's cgroup v2 hierarchy has the memory controller at all, read without
/// changing anything (for `check`); `None` when no cgroup v2 is mounted.
pub fn memory_controller_here() -> Option<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let controllers = fs::read_to_string(cgroup2_mount(&mountinfo)?.join("cgroup.controllers"));
    Some(controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")))
}

/// Whether a cgroup v1 hierarchy holds the memory controller (a hybrid system, where cgroup
/// v2 then cannot have it), for `check`'s advice.
pub fn memory_controller_on_v1() -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    memory_on_v1(&mountinfo)
}

fn memory_on_v1(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((_, after)) = line.split_once(" - ") else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let fstype = fields.next();
        let options = fields.nth(1).unwrap_or_default();
        fstype == Some("cgroup") && options.split(',').any(|o| o == "memory")
    })
}

/// Where the cgroup2 file system is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The agent's cgroup v2 path, from `/proc/self/cgroup` (the `0::` line).
fn own_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Eight hex digits of the state directory's path: the same directory, the same cgroup.
pub(super) fn short_hash(state_dir: &Path) -> String {
    // The directory as the kernel names it: `a/../b`, and a symbolic link to it, are one.
    let path = fs::canonicalize(state_dir)
        .or_else(|_| std::path::absolute(state_dir))
        .unwrap_or_else(|_| state_dir.to_owned());
    let digest = ring::digest::digest(&ring::digest::SHA256, path.as_os_str().as_encoded_bytes());
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(&dir.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK).is_ok()
        && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Whether systemd marked `dir` as delegated (`Delegate=yes`, systemd 251 and newer): the
/// `trusted.delegate` extended attribute, or `user.delegate` where it delegates to a user.
fn marked_delegated(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: both names are NUL-terminated and `value` is writable for its length.
        let read = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        usize::try_from(read).is_ok_and(|n| &value[..n] == b"1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_the_agents_cgroup_are_read_from_proc() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 24 0:22 / /sys ro - sysfs sysfs ro\n"),
            None
        );
        let cgroup = "4:memory:/user.slice\n1:name=systemd:/system.slice/respawn-agent.service\n0::/system.slice/respawn-agent.service\n";
        assert_eq!(
            own_cgroup(cgroup),
            Some("/system.slice/respawn-agent.service")
        );
        assert_eq!(own_cgroup("4:memory:/\n"), None);
    }

    #[test]
    fn a_hybrid_systems_memory_controller_is_told_on_v1() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory\n\
                      30 25 0:26 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert!(memory_on_v1(hybrid));
        let unified = "30 25 0:26 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
                       36 25 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert!(!memory_on_v1(unified));
    }

    #[test]
    fn the_same_state_directory_gives_the_same_cgroup_and_another_another() {
        let a = short_hash(Path::new("/var/lib/respawn"));
        assert_eq!(a.len(), 8);
        assert_eq!(a, short_hash(Path::new("/var/lib/respawn")));
        assert_ne!(a, short_hash(Path::new("/home/pi/.local/state/respawn")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let roundabout = dir.path().join("state/../state");
        assert_eq!(
            short_hash(&roundabout),
            short_hash(&dir.path().join("state"))
        );
    }
}
