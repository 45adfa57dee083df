//! Real faults, made as root, for the tests that need them: a small tmpfs that can be filled
//! up or made read-only, and a network namespace joined to this one by a veth pair whose link can be black-holed
//! (`tc qdisc … pfifo limit 0` drops every packet while both ends keep their sockets open).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A tmpfs of a few hundred KiB mounted at a directory, unmounted on drop.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `kib` KiB at `path` (made if missing).
    pub fn mount_at(path: &Path, kib: u32) -> Self {
        std::fs::create_dir_all(path).expect("the mount point");
        let options = format!("size={kib}k,mode=0700");
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs at {}: {e}", path.display()));
        Self {
            path: path.to_owned(),
        }
    }

    /// Takes every free byte, until writing fails with "no space left on device".
    pub fn fill(&self) {
        let mut filler = std::fs::File::create(self.filler()).expect("the filler file");
        let block = [0u8; 4096];
        loop {
            match filler.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = filler.sync_all();
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }

    /// Remounts it read-only, as the kernel does with a file system after an error.
    pub fn make_read_only(&self) {
        let flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(None::<&str>, &self.path, None::<&str>, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("cannot remount {} read-only: {e}", self.path.display()));
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        // The directory it was mounted on, and a temporary parent that was removed around it.
        let _ = std::fs::remove_dir(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A network namespace with a veth link to this one: `host_ip` here, `inner_ip` inside.
pub struct Netns {
    pub name: String,
    host_veth: String,
    inner_veth: String,
    pub host_ip: String,
    pub inner_ip: String,
}

fn run(what: &[&str]) {
    let output = Command::new(what[0])
        .args(&what[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what:?} ({e}): apt install iproute2"));
    assert!(
        output.status.success(),
        "{what:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    /// Makes the namespace and its link; `n` (0..=255) keeps parallel tests apart.
    pub fn new(n: u8) -> Self {
        let tag = format!("{}{n}", std::process::id() % 10_000);
        let netns = Self {
            name: format!("rsp{tag}"),
            host_veth: format!("rsph{tag}"),
            inner_veth: format!("rspn{tag}"),
            host_ip: format!("10.213.{n}.1"),
            inner_ip: format!("10.213.{n}.2"),
        };
        run(&["ip", "netns", "add", &netns.name]);
        run(&[
            "ip",
            "link",
            "add",
            &netns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &netns.inner_veth,
        ]);
        run(&["ip", "link", "set", &netns.inner_veth, "netns", &netns.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", netns.host_ip),
            "dev",
            &netns.host_veth,
        ]);
        run(&["ip", "link", "set", &netns.host_veth, "up"]);
        netns.inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", netns.inner_ip),
            "dev",
            &netns.inner_veth,
        ]);
        netns.inside(&["ip", "link", "set", &netns.inner_veth, "up"]);
        netns.inside(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Runs a command inside the namespace.
    pub fn inside(&self, what: &[&str]) {
        let mut command = vec!["ip", "netns", "exec", &self.name];
        command.extend_from_slice(what);
        run(&command);
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Drops every packet on the link, both ways, without closing anything.
    pub fn black_hole(&self) {
        run(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.host_veth,
            "root",
            "pfifo",
            "limit",
            "0",
        ]);
        self.inside(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.inner_veth,
            "root",
            "pfifo",
            "limit",
            "0",
        ]);
    }

    /// Lets packets through again.
    pub fn restore(&self) {
        run(&["tc", "qdisc", "del", "dev", &self.host_veth, "root"]);
        self.inside(&["tc", "qdisc", "del", "dev", &self.inner_veth, "root"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
