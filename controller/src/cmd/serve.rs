//! `respawnctl serve`: starts the hub with its `serve.toml` and key; `serve passwd` prints a
//! user for the file.

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use respawn_common::config_file::read_text;
use respawn_common::topics::validate_requester;

use super::signing_key;
use crate::serve::auth::hash_password;
use crate::serve::config::ServeConfig;
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    config: Option<&Path>,
    listen: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => ServeConfig::load(path, listen).map_err(anyhow::Error::msg)?,
        None => ServeConfig::parse("", listen, read_text).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(lines.join("\n"))
        })?,
    };
    let mut key_settings = settings.clone();
    if let Some(path) = &config.signing_key {
        key_settings.signing_key = Some(path.clone());
    }
    let key = signing_key(&key_settings)?;
    if key.is_none() {
        eprintln!("respawnctl serve: no signing key (signing_key in serve.toml, or --key): the pages show the fleet but send no commands");
    }
    crate::serve::run(settings, config, key).await
}

/// Prints a `[[user]]` table for `name`.
pub fn passwd(name: &str, viewer: bool) -> anyhow::Result<ExitCode> {
    validate_requester(name).map_err(|e| anyhow::anyhow!("{name:?}: {e}"))?;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))
            .context("cannot read the password from the terminal")?;
        let again = rpassword::prompt_password("again: ")
            .context("cannot read the password from the terminal")?;
        if first != again {
            anyhow::bail!("the two passwords differ");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.len() < 8 {
        anyhow::bail!("a password of at least 8 characters, please");
    }
    let hash = hash_password(&password).map_err(anyhow::Error::msg)?;
    let role = if viewer { "viewer" } else { "operator" };
    println!("\n[[user]]\nname = \"{name}\"\npassword = \"{hash}\"\nrole = \"{role}\"");
    Ok(ExitCode::SUCCESS)
}
