//! The Debian packages as defined (cargo-deb metadata in agent/ and controller/Cargo.toml),
//! checked without building them: every file they name exists or is written by
//! packaging/build-debs.sh, their systemd units are there and agree with the agent, and every
//! maintainer script is valid shell that keeps cargo-deb's `#DEBHELPER#` token.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// `[package.metadata.deb]` of the package in `dir`.
fn deb_metadata(dir: &Path) -> toml::Table {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("read Cargo.toml");
    let mut manifest: toml::Table = toml::from_str(&manifest).expect("Cargo.toml parses");
    let mut package = manifest
        .remove("package")
        .and_then(|p| p.try_into::<toml::Table>().ok())
        .expect("[package]");
    let mut metadata = package
        .remove("metadata")
        .and_then(|m| m.try_into::<toml::Table>().ok())
        .expect("[package.metadata]");
    metadata
        .remove("deb")
        .and_then(|d| d.try_into::<toml::Table>().ok())
        .unwrap_or_else(|| panic!("{}: no [package.metadata.deb]", dir.display()))
}

fn text<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no {key} in {table:#?}"))
}

#[test]
fn every_file_the_packages_name_exists_and_every_script_is_sound() {
    let root = workspace();
    let build_script =
        std::fs::read_to_string(root.join("packaging/build-debs.sh")).expect("build-debs.sh");
    for (dir, package, binary) in [
        ("agent", "respawn-agent", "respawn-agent"),
        ("controller", "respawnctl", "respawnctl"),
    ] {
        let dir = root.join(dir);
        let deb = deb_metadata(&dir);
        assert_eq!(text(&deb, "name"), package);
        assert!(
            text(&deb, "depends").starts_with("libc6 (>= "),
            "an explicit libc version, which build-debs.sh checks"
        );

        let assets = deb["assets"].as_array().expect("assets");
        let sources: Vec<&str> = assets
            .iter()
            .map(|a| a[0].as_str().expect("an asset's source"))
            .collect();
        assert!(
            sources.contains(&format!("target/release/{binary}").as_str()),
            "{package} packages its binary"
        );
        for source in sources {
            if let Some(generated) = source.strip_prefix("../packaging/completions/") {
                assert!(
                    build_script.contains(&format!("packaging/completions/{generated}")),
                    "build-debs.sh writes {source}"
                );
            } else if !source.starts_with("target/release/") {
                assert!(dir.join(source).is_file(), "{package}: {source} is missing");
            }
        }

        let units = deb["systemd-units"].as_table().expect("systemd-units");
        let unit = dir
            .join(text(units, "unit-scripts"))
            .join(format!("{}.service", text(units, "unit-name")));
        assert!(unit.is_file(), "{} is missing", unit.display());

        let scripts = dir.join(text(&deb, "maintainer-scripts"));
        let mut count = 0;
        for entry in std::fs::read_dir(&scripts).expect("the maintainer scripts") {
            let path = entry.expect("a directory entry").path();
            let script = std::fs::read_to_string(&path).expect("read a maintainer script");
            let name = path.display();
            assert!(
                script.starts_with("#!/bin/sh\n"),
                "{name}: a /bin/sh script"
            );
            assert!(
                script.contains("\n#DEBHELPER#\n"),
                "{name}: keeps #DEBHELPER#"
            );
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o111, 0o111, "{name} is executable");
            let syntax = Command::new("sh")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("sh runs");
            assert!(syntax.status.success(), "{name}: {syntax:?}");
            count += 1;
        }
        assert!(count >= 2, "{package}: preinst and postrm at least");
    }
}

#[test]
fn the_agent_unit_runs_the_packaged_configuration_as_a_notify_service() {
    let root = workspace();
    let deb = deb_metadata(&root.join("agent"));
    let config_asset = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .find(|a| a[0].as_str() == Some("../packaging/agent.toml"))
        .expect("the packaged configuration");
    assert_eq!(config_asset[1].as_str(), Some("etc/respawn/agent.toml"));

    let unit = std::fs::read_to_string(root.join("examples/systemd/respawn-agent.service"))
        .expect("the agent's unit");
    let lines: Vec<&str> = unit.lines().collect();
    for expected in [
        "Type=notify",
        "ExecStart=/usr/bin/respawn-agent --config /etc/respawn/agent.toml",
        "ExecReload=/usr/bin/respawn-agent --config /etc/respawn/agent.toml reload",
        "Restart=always",
        "KillMode=mixed",
        "StateDirectory=respawn",
        // The spool holds programs' last lines of output: systemd's default is 0755.
        "StateDirectoryMode=0700",
    ] {
        assert!(lines.contains(&expected), "{expected} in the unit");
    }
    // `check` says when a stop may take longer than the unit waits, with the unit's own words.
    let stop_limit = lines
        .iter()
        .find(|l| l.starts_with("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let dir = tempfile::tempdir().expect("a directory");
    for (stop_timeout, noted) in [("80s", true), ("60s", false)] {
        let config = dir.path().join("agent.toml");
        let text = format!("[agent]\nstate_dir = \"state\"\n\n[[process]]\nname = \"slow\"\ncommand = [\"sleep\", \"1000\"]\nstop_timeout = \"{stop_timeout}\"\n");
        std::fs::write(&config, text).expect("write agent.toml");
        let out = respawn_tests::check(&config);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{said}");
        assert_eq!(
            said.contains(&format!("({stop_limit})")),
            noted,
            "{stop_timeout}: {said}"
        );
    }
    // Its programs start with or without a network (a Pi whose Wi-Fi is down at boot).
    let waits = |l: &&&str| l.starts_with("Wants=") || l.starts_with("After=");
    assert!(!lines
        .iter()
        .filter(waits)
        .any(|l| l.contains("network-online")));
    assert!(lines.iter().any(|l| l.starts_with("WatchdogSec=")));
    assert!(lines.iter().any(|l| l.starts_with("RestartSec=")));
}
