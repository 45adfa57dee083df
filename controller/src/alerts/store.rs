//! The alerter's memory on disk: the rules' state and every target's outbox, replaced
//! atomically (a new file synced and renamed over the old), so that neither a restart nor a
//! power cut makes it repeat or forget an alert.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::outbox::Outbox;
use super::rules::State;

/// Everything kept, by target name for the outboxes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub rules: State,
    #[serde(default)]
    pub outboxes: BTreeMap<String, Outbox>,
}

/// Reads the state at `path`: nothing yet is a fresh start. A file that cannot be read as
/// state is moved aside (and said so) rather than stopping the alerter: alerts matter more.
pub fn load(path: &Path) -> Result<Saved, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(e) => {
            return Err(format!(
                "cannot read the state file {}: {e}",
                path.display()
            ))
        }
    };
    match serde_json::from_str(&text) {
        Ok(saved) => Ok(saved),
        Err(e) => {
            let aside = aside(path);
            std::fs::rename(path, &aside).map_err(|r| {
                format!(
                    "the state file {} is damaged ({e}) and cannot be moved aside: {r}",
                    path.display()
                )
            })?;
            tracing::error!(
                "the state file {} was damaged ({e}); kept as {} and starting afresh",
                path.display(),
                aside.display()
            );
            Ok(Saved::default())
        }
    }
}

fn aside(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".damaged");
    PathBuf::from(name)
}

/// Replaces the state at `path` with `saved`.
pub fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let json = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    respawn_common::file::write_atomically(path, &json, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_reads_back_and_damage_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/alerts.json");
        assert_eq!(load(&path).unwrap(), Saved::default(), "a fresh start");
        let mut saved = Saved::default();
        saved.outboxes.insert("slack-1".into(), Outbox::default());
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), saved);
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
            0
        );

        std::fs::write(&path, "{ half a fi").unwrap();
        assert_eq!(load(&path).unwrap(), Saved::default());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("deep/alerts.json.damaged")).unwrap(),
            "{ half a fi"
        );
    }
}
