//! Files replaced whole: a reader sees the old content or the new, never a torn one, and a
//! write a full disk refuses leaves nothing half written behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt, PermissionsExt as _};
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path` (readable by its owner only) and renames
/// it over `path`; with `sync`, both are on disk before it returns.
pub fn write_atomically(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // What a full disk left half written goes, and with it the space it took.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if sync {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// Replaces a user's file with `bytes` as an editor saves it: the file a symbolic link names,
/// with its mode, owner and group, by a new file renamed over it, so that a kill midway leaves
/// the old one whole. Where a rename would lose something (a second hard link, an owner this
/// account cannot give, a directory it may not write), the file is written in place instead.
/// A file this account may not write is refused, as a write in place would be.
pub fn replace_keeping(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let target = fs::canonicalize(path)?;
    // Opened for writing, not truncated: the permission check a write in place would meet.
    drop(OpenOptions::new().write(true).open(&target)?);
    let was = fs::metadata(&target)?;
    if was.nlink() > 1 {
        return fs::write(&target, bytes);
    }
    match renamed_over(&target, bytes, &was) {
        Err(Unrenamable) => fs::write(&target, bytes),
        Err(Failed(e)) => Err(e),
        Ok(()) => Ok(()),
    }
}

/// Why a file was not replaced by a rename.
enum Refusal {
    /// The new file cannot be made beside it, or given its owner: written in place instead.
    Unrenamable,
    /// Writing it failed (a full disk): the old file is left as it was.
    Failed(io::Error),
}
use Refusal::{Failed, Unrenamable};

fn renamed_over(target: &Path, bytes: &[u8], was: &fs::Metadata) -> Result<(), Refusal> {
    let file_name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = target.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::AlreadyExists => Unrenamable,
            // A full disk: a write in place would truncate the file and fail too.
            _ => Failed(e),
        })?;
    let written = (|| {
        let made = file.metadata().map_err(Failed)?;
        if (was.uid(), was.gid()) != (made.uid(), made.gid()) {
            std::os::unix::fs::fchown(&file, Some(was.uid()), Some(was.gid()))
                .map_err(|_| Unrenamable)?;
        }
        let mode = fs::Permissions::from_mode(was.mode() & 0o7777);
        file.set_permissions(mode).map_err(Failed)?;
        file.write_all(bytes).map_err(Failed)?;
        file.sync_all().map_err(Failed)?;
        fs::rename(&tmp, target).map_err(Failed)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"old", true).unwrap();
        write_atomically(&path, b"new", false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        // A place it cannot be written to: an error, and no temporary file.
        let missing = dir.path().join("no such dir/state.json");
        assert!(write_atomically(&missing, b"x", true).is_err());
    }

    #[test]
    fn a_replaced_file_keeps_its_link_mode_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("remote.toml");
        fs::write(&file, "old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        replace_keeping(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(fs::read(&file).unwrap(), b"new");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o640);
        // Renamed over, not written through: a reader holding the old file still reads it all.
        let inode = fs::metadata(&file).unwrap().ino();
        replace_keeping(&file, b"newer").unwrap();
        assert_ne!(fs::metadata(&file).unwrap().ino(), inode);
        // A second name of the file keeps seeing what is written.
        let second = dir.path().join("second name");
        fs::hard_link(&file, &second).unwrap();
        replace_keeping(&file, b"shared").unwrap();
        assert_eq!(fs::read(&second).unwrap(), b"shared");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["link.toml", "remote.toml", "second name"]);
    }
}
