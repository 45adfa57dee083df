//! `respawnctl keygen`: an operator key pair, the private key readable by its owner only.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use respawn_common::signing::SigningKey;

/// Writes the private key to `out` (mode 0600) and the public one beside it, and prints the
/// public key line for the agents' `[[operator]]`.
pub fn run(out: &Path, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let name = name.map(str::to_owned).unwrap_or_else(|| {
        out.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let key =
        SigningKey::generate(&name).map_err(|e| anyhow::anyhow!("{e} (choose one with --name)"))?;
    let public = out.with_file_name(format!(
        "{}.pub",
        out.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    // Where keys are kept (~/.config/respawn) may not exist yet: made for its owner only,
    // and said (a mistyped path makes directories too).
    let made = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists());
    if let Some(dir) = made {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot make the directory {}", dir.display()))?;
    }
    let write = |path: &Path, text: &str, mode: u32| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path);
        match file {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(anyhow::anyhow!(
                "{} exists already: a key is never overwritten (move it away, or choose another --out)",
                path.display()
            )),
            file => file
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .with_context(|| format!("cannot write {}", path.display())),
        }
    };
    let line = key.public_line();
    write(out, &key.to_file(), 0o600)?;
    if let Err(e) = write(&public, &format!("{line}\n"), 0o644) {
        // Half a key pair is no use, and would make the next try fail on the existing file.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    if let Some(dir) = made {
        eprintln!("made the directory {} (mode 0700)", dir.display());
    }
    eprintln!(
        "wrote the private key to {} (keep it secret) and the public key to {}; put this in each agent's configuration:\n\n[[operator]]\nname = \"{name}\"\npublic_key = \"{line}\"\n",
        out.display(),
        public.display()
    );
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
