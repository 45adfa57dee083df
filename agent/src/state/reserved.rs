//! A small record kept in a file of fixed size that is rewritten in place: its space is taken
//! once, when the file is made, so that updating it never needs a free block. The records the
//! agent cannot do without — the event sequence and delivery mark, the children it started —
//! stay writable on a full disk (on filesystems that overwrite in place: ext4, f2fs, tmpfs;
//! not on copy-on-write ones such as btrfs).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The size of every record file: one sector, so that a write is never torn across two.
pub const SIZE: usize = 512;

/// An open record file.
#[derive(Debug)]
pub struct Record {
    file: File,
}

impl Record {
    /// Opens the record at `path`, making it (and taking its space) if it does not exist. A
    /// file shorter than [`SIZE`] (written by an earlier version) keeps its content and is
    /// brought to full size.
    pub fn open_or_make(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let record = Self { file };
        let len = record.file.metadata()?.len();
        if len < SIZE as u64 {
            // Written out, not merely allocated: an overwrite of written blocks never needs new
            // ones, where one of fallocate's unwritten extents may.
            let mut content = record.read_raw()?;
            content.truncate(SIZE);
            content.resize(SIZE, b' ');
            record.file.write_all_at(&content, 0)?;
            record.file.sync_all()?;
        }
        Ok(record)
    }

    /// Opens an existing record; never makes one.
    pub fn open(path: &Path) -> io::Result<Self> {
        // On a file system made read-only it can still be read.
        let opened = OpenOptions::new().read(true).write(true).open(path);
        let (file, _) = super::or_for_reading(opened, path)?;
        Ok(Self { file })
    }

    /// The content, without the padding; `None` when blank.
    pub fn read(&self) -> io::Result<Option<Vec<u8>>> {
        let content = self.read_raw()?;
        let end = content
            .iter()
            .rposition(|b| !b.is_ascii_whitespace() && *b != 0)
            .map_or(0, |i| i + 1);
        Ok((end > 0).then(|| content[..end].to_vec()))
    }

    fn read_raw(&self) -> io::Result<Vec<u8>> {
        let mut content = vec![0; SIZE];
        let mut filled = 0;
        while filled < SIZE {
            match self.file.read_at(&mut content[filled..], filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        content.truncate(filled);
        Ok(content)
    }

    /// Replaces the content, in place. Not synced: after a crash of the agent alone the page
    /// cache still holds it.
    pub fn write(&self, content: &[u8]) -> io::Result<()> {
        if content.len() > SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a record holds at most {SIZE} bytes, not {}", content.len()),
            ));
        }
        let mut padded = content.to_vec();
        padded.resize(SIZE, b' ');
        self.file.write_all_at(&padded, 0)
    }

    /// Makes what was written survive a power cut.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn clear(&self) -> io::Result<()> {
        self.write(b"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_rewritten_in_place_and_reads_back_without_padding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        let record = Record::open_or_make(&path).unwrap();
        assert_eq!(record.read().unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        record.write(br#"{"next_seq":12}"#).unwrap();
        record.write(br#"{"next_seq":7}"#).unwrap();
        assert_eq!(
            Record::open(&path).unwrap().read().unwrap().as_deref(),
            Some(&br#"{"next_seq":7}"#[..])
        );
        record.clear().unwrap();
        assert_eq!(record.read().unwrap(), None);
        assert!(record.write(&[b'x'; SIZE + 1]).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
    }

    #[test]
    fn a_short_record_of_an_earlier_version_keeps_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web");
        std::fs::write(&path, br#"{"pid":1}"#).unwrap();
        let record = Record::open_or_make(&path).unwrap();
        assert_eq!(
            record.read().unwrap().as_deref(),
            Some(&br#"{"pid":1}"#[..])
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        assert!(Record::open(&dir.path().join("missing")).is_err());
    }
}
