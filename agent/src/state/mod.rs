//! The agent's state directory: a lock so that two agents never share it, the pid and start
//! time of every child (to stop leftovers after the agent died hard), the set of processes
//! stopped by hand, the remote configuration (`remote.toml`, and `remote.prev.toml` before it),
//! the control socket, and where the MQTT link's event spool (`spool/`) and the embedded
//! broker's sessions (`broker-sessions.json`) are kept.
//!
//! A child's record lives in `children/<name>`, a file whose space is reserved before the
//! child first starts ([`crate::state::reserved`]): recording a start never needs disk space, so a
//! full disk can never hide a running child from the next run of the agent.

pub mod exits;
pub mod reserved;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use respawn_common::file::write_atomically;
use serde::{Deserialize, Serialize};

use crate::shell::procfs;
use crate::state::reserved::Record;

/// The files of the remote configuration.
#[derive(Clone, Copy)]
enum Remote {
    /// In force.
    Current,
    /// What a rollback restores.
    Previous,
    /// Being put in place.
    Next,
}

/// An open, locked state directory.
pub struct StateDir {
    path: PathBuf,
    _lock: Flock<File>,
    /// On a read-only file system: nothing can be saved, and children start without a record.
    read_only: bool,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create state directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("another respawn-agent{} is already running with state directory {}", .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), .path.display())]
    Busy {
        path: PathBuf,
        /// The process that holds the lock, if the kernel tells.
        holder: Option<u32>,
    },
}

/// What the agent remembers of a child it started: enough to find it, and only it, again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    pub pid: u32,
    pub start_time: u64,
    pub boot_id: String,
    /// Its run's id (`RESPAWN_INVOCATION`), to find what left its session; empty in a record
    /// of an agent from before it was kept.
    #[serde(default)]
    pub invocation: String,
}

/// Whether `e` says the file system is read-only (an SD card the kernel remounted so after an
/// error).
pub(crate) fn on_read_only_fs(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
}

/// `opened`, an open of `path` for writing; or, on a read-only file system, `path` opened for
/// reading, and whether it was (when that fails too, the first error stands).
pub(crate) fn or_for_reading(opened: io::Result<File>, path: &Path) -> io::Result<(File, bool)> {
    match opened {
        Ok(file) => Ok((file, false)),
        Err(e) if on_read_only_fs(&e) => File::open(path).map(|file| (file, true)).map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// The process that holds an flock on the file at `path`, as `/proc/locks` tells (a pid
/// written into the file could be an earlier run's, where a read-only file system kept the
/// agent from writing its own).
fn lock_holder(path: &Path) -> Option<u32> {
    let file = fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(file.dev()), libc::minor(file.dev()));
    let locks = fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, &format!("{major:02x}:{minor:02x}"), file.ino())
}

/// The pid of the flock on inode `ino` of `device` in the text of `/proc/locks`, or of the only
/// flock on `ino` when none names `device` (btrfs gives `stat` another device).
fn holder_in(locks: &str, device: &str, ino: u64) -> Option<u32> {
    // `1: FLOCK  ADVISORY  WRITE 1234 fe:00:10045507 0 EOF`; a waiter's has `->` after `1:`.
    let flocks: Vec<(u32, &str)> = locks
        .lines()
        .filter_map(|line| match *line.split_whitespace().collect::<Vec<_>>() {
            [_, "FLOCK", _, _, pid, at, ..] => {
                let (on, inode) = at.rsplit_once(':')?;
                (inode.parse::<u64>().ok()? == ino).then_some((pid.parse().ok()?, on))
            }
            _ => None,
        })
        .collect();
    let exact = flocks.iter().find(|(_, on)| *on == device);
    let only = match flocks.as_slice() {
        [only] => Some(only),
        _ => None,
    };
    exact.or(only).map(|(pid, _)| *pid)
}

/// Makes `path` and its parents as needed, readable by the agent's account only.
pub(crate) fn make_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl StateDir {
    /// Creates the directory if needed and takes its lock.
    pub fn open(path: &Path) -> Result<Self, StateDirError> {
        let create = |p: &Path| {
            make_private_dir(p).map_err(|source| StateDirError::Create {
                path: p.to_owned(),
                source,
            })
        };
        create(path)?;
        create(&path.join("children"))?;
        create(&path.join(exits::DIR))?;
        let lock_path = path.join("agent.lock");
        let opened = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path);
        // An SD card the kernel remounted read-only after an error: the programs must still
        // run. The lock of an earlier run is taken as it is (a lock needs no write), and what
        // cannot be saved is reported as on a full disk.
        let (file, read_only) =
            or_for_reading(opened, &lock_path).map_err(|source| StateDirError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        if read_only {
            tracing::error!(path = %path.display(), "the state directory is on a read-only file system: supervising without saving anything (stops by hand, pids and undelivered events are kept in memory only; after a crash of the agent, what its programs left is found by their cgroups only)");
        }
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                StateDirError::Busy {
                    path: path.to_owned(),
                    holder: lock_holder(&lock_path),
                }
            } else {
                StateDirError::Lock {
                    path: lock_path,
                    source: errno.into(),
                }
            }
        })?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
            read_only,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket of the agent that uses `state_dir`.
    pub fn socket_path(state_dir: &Path) -> PathBuf {
        state_dir.join("agent.sock")
    }

    fn stopped_path(&self) -> PathBuf {
        self.path.join("stopped.json")
    }

    /// The processes stopped by hand. A damaged file is reported and read as empty: the
    /// worst outcome is that a stopped process starts again, never that the agent does not.
    pub fn stopped(&self) -> BTreeSet<String> {
        let path = self.stopped_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "ignoring a damaged list of stopped processes");
                BTreeSet::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the list of stopped processes");
                BTreeSet::new()
            }
        }
    }

    /// Saves the processes stopped by hand, durably: a stop must survive a power cut.
    pub fn save_stopped(&self, stopped: &BTreeSet<String>) -> io::Result<()> {
        let json = serde_json::to_vec(stopped).map_err(io::Error::other)?;
        write_atomically(&self.stopped_path(), &json, true)
    }

    fn reported_path(&self) -> PathBuf {
        self.path.join("reported.json")
    }

    /// The processes whose state the agent last reported over MQTT.
    pub fn reported(&self) -> BTreeSet<String> {
        fs::read(self.reported_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Remembers which processes are reported, so that a later run can clear the retained
    /// state of those it no longer has.
    pub fn save_reported(&self, names: &BTreeSet<String>) -> io::Result<()> {
        let json = serde_json::to_vec(names).map_err(io::Error::other)?;
        write_atomically(&self.reported_path(), &json, false)
    }

    /// Where the MQTT link keeps the events the broker does not have yet.
    pub fn spool_dir(&self) -> PathBuf {
        self.path.join("spool")
    }

    /// Where the embedded broker keeps its persistent sessions.
    pub fn broker_sessions_path(&self) -> PathBuf {
        self.path.join("broker-sessions.json")
    }

    /// The remote configuration in force in `state_dir`, for readers without the lock.
    pub fn remote_config_path(state_dir: &Path) -> PathBuf {
        state_dir.join("remote.toml")
    }

    fn remote_path(&self, which: Remote) -> PathBuf {
        self.path.join(match which {
            Remote::Current => return Self::remote_config_path(&self.path),
            Remote::Previous => "remote.prev.toml",
            Remote::Next => "remote.next.toml",
        })
    }

    /// The remote configuration in force; `None` when there is none.
    pub fn remote_config(&self) -> io::Result<Option<String>> {
        self.read_remote(Remote::Current)
    }

    /// The remote configuration a rollback restores; `None` when there is none.
    pub fn previous_remote_config(&self) -> io::Result<Option<String>> {
        self.read_remote(Remote::Previous)
    }

    /// One file of the remote configuration. A change cut short between its two renames is
    /// completed first.
    fn read_remote(&self, which: Remote) -> io::Result<Option<String>> {
        let current = self.remote_path(Remote::Current);
        let next = self.remote_path(Remote::Next);
        if !current.exists() && next.exists() {
            fs::rename(&next, &current)?;
        }
        match fs::read_to_string(self.remote_path(which)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes `text` the remote configuration, and the one in force until now the previous
    /// one. Every step leaves both versions whole on disk, also for a rollback (whose `text`
    /// is the previous one): the new text is written and synced beside them first, then two
    /// renames, which need no space, put it in place.
    pub fn replace_remote_config(&self, text: &str) -> io::Result<()> {
        let (current, previous) = (
            self.remote_path(Remote::Current),
            self.remote_path(Remote::Previous),
        );
        let next = self.remote_path(Remote::Next);
        write_atomically(&next, text.as_bytes(), true)?;
        match fs::rename(&current, &previous) {
            Ok(()) => {}
            // The first remote configuration: before it, none (which a rollback restores).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_atomically(&previous, b"", true)?;
            }
            Err(e) => return Err(e),
        }
        fs::rename(&next, &current)?;
        File::open(&self.path)?.sync_all()
    }

    fn child_path(&self, name: &str) -> PathBuf {
        self.path.join("children").join(name)
    }

    /// Makes sure a record for `name` exists, so that recording its start cannot fail for
    /// want of space. Done before every start; only the first one makes the file.
    pub fn reserve_child(&self, name: &str) -> io::Result<()> {
        // A full disk has room again soon; a read-only one not before a repair: the program
        // runs rather than not at all.
        if self.read_only {
            return Ok(());
        }
        Record::open_or_make(&self.child_path(name)).map(drop)
    }

    /// Records a child just started, in its reserved record.
    pub fn record_child(&self, name: &str, pid: u32, invocation: &str) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        let record = ChildRecord {
            pid,
            start_time: procfs::read_stat(pid)?.start_time,
            boot_id: procfs::boot_id()?,
            invocation: invocation.to_owned(),
        };
        let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
        Record::open(&self.child_path(name))?.write(&json)
    }

    /// Clears the record of a child that is gone, keeping its space for the next start.
    pub fn forget_child(&self, name: &str) {
        match Record::open(&self.child_path(name)).and_then(|r| r.clear()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(process = name, error = %e, "cannot clear the child record"),
        }
    }

    /// Removes the record of a process that is no longer configured.
    pub fn remove_child(&self, name: &str) {
        match fs::remove_file(self.child_path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(process = name, error = %e, "cannot remove the child record"),
        }
    }

    /// The children recorded by an earlier run of the agent, by process name. Unreadable
    /// records are reported and cleared.
    pub fn child_records(&self) -> Vec<(String, ChildRecord)> {
        let Ok(entries) = fs::read_dir(self.path.join("children")) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let content = Record::open(&entry.path()).and_then(|r| r.read());
            match content.map_err(|e| e.to_string()).and_then(|bytes| {
                bytes
                    .map(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                    .transpose()
            }) {
                Ok(Some(record)) => records.push((name, record)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(process = %name, error = %e, "ignoring an unreadable child record");
                    self.forget_child(&name);
                }
            }
        }
        records
    }
}

/// The processes stopped by hand, kept in the state directory so that a stopped process stays
/// stopped across agent restarts.
pub struct ManualStops {
    names: BTreeSet<String>,
}

impl ManualStops {
    pub fn load(state: &StateDir) -> Self {
        Self {
            names: state.stopped(),
        }
    }

    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Marks `name` stopped by hand or not, and saves the set when that changed it: `None`
    /// when nothing changed (nothing was written), else whether the save went through.
    pub fn set(
        &mut self,
        state: &StateDir,
        name: &str,
        stopped: bool,
    ) -> Option<Result<(), String>> {
        let changed = match stopped {
            true => self.names.insert(name.to_owned()),
            false => self.names.remove(name),
        };
        changed.then(|| {
            state.save_stopped(&self.names).map_err(|e| {
                tracing::error!(error = %e, "cannot save the list of stopped processes; it will not survive an agent restart");
                e.to_string()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_configuration_keeps_the_one_before_and_a_rollback_swaps_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.remote_config().unwrap(), None);
        state.replace_remote_config("a").unwrap();
        assert_eq!(state.remote_config().unwrap().as_deref(), Some("a"));
        assert_eq!(state.previous_remote_config().unwrap().as_deref(), Some(""));
        state.replace_remote_config("b").unwrap();
        let previous = state.previous_remote_config().unwrap().unwrap();
        state.replace_remote_config(&previous).unwrap();
        assert_eq!(state.remote_config().unwrap().as_deref(), Some("a"));
        assert_eq!(
            state.previous_remote_config().unwrap().as_deref(),
            Some("b")
        );
        // Cut short between the renames: the next one is taken on the next read.
        fs::rename(
            dir.path().join("remote.toml"),
            dir.path().join("remote.next.toml"),
        )
        .unwrap();
        assert_eq!(state.remote_config().unwrap().as_deref(), Some("a"));
    }

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 31718 fe:00:10045507 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4000 fe:00:10045507 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 2222 fe:00:777 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4385 08:01:777 0 EOF\n";
        assert_eq!(holder_in(locks, "fe:00", 10045507), Some(31718));
        assert_eq!(holder_in(locks, "08:01", 777), Some(4385));
        // Another device for the same inode (btrfs): the only flock on it.
        assert_eq!(holder_in(locks, "00:2d", 10045507), Some(31718));
        assert_eq!(holder_in(locks, "fe:00", 1), None);
    }

    #[test]
    fn a_second_agent_cannot_take_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path()).unwrap();
        let Err(busy) = StateDir::open(dir.path()) else {
            panic!("a second agent took the directory");
        };
        let me = std::process::id();
        assert!(
            matches!(busy, StateDirError::Busy { holder: Some(pid), .. } if pid == me),
            "{busy:?}"
        );
        assert!(busy.to_string().contains(&format!("(pid {me})")), "{busy}");
        drop(first);
        StateDir::open(dir.path()).unwrap();
    }

    #[test]
    fn stopped_processes_survive_a_reopen_and_damage_is_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.stopped().is_empty());
        let stopped = BTreeSet::from(["web".to_owned(), "db".to_owned()]);
        state.save_stopped(&stopped).unwrap();
        drop(state);
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.stopped(), stopped);
        fs::write(dir.path().join("stopped.json"), b"{not json").unwrap();
        assert!(state.stopped().is_empty());
    }

    #[test]
    fn child_records_name_the_process_by_pid_start_time_and_boot() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let me = std::process::id();
        state.reserve_child("web").unwrap();
        state.record_child("web", me, "ab12").unwrap();
        assert!(
            state.record_child("unreserved", me, "ab12").is_err(),
            "only a reserved record is written"
        );
        fs::write(dir.path().join("children/bad"), b"???").unwrap();
        let records = state.child_records();
        assert_eq!(records.len(), 1);
        let (name, record) = &records[0];
        assert_eq!(name, "web");
        assert_eq!(record.pid, me);
        assert_eq!(record.start_time, procfs::read_stat(me).unwrap().start_time);
        assert_eq!(record.boot_id, procfs::boot_id().unwrap());
        assert_eq!(record.invocation, "ab12");
        assert_eq!(
            fs::read(dir.path().join("children/bad"))
                .unwrap()
                .trim_ascii(),
            b"",
            "damaged records are cleared"
        );
        state.forget_child("web");
        assert!(state.child_records().is_empty());
        assert!(
            dir.path().join("children/web").exists(),
            "the space stays reserved"
        );
        state.remove_child("web");
        assert!(!dir.path().join("children/web").exists());
    }
}
