//! The oldest Rust the README promises (the workspace's `rust-version`, that of Debian 13 and
//! Raspberry Pi OS) builds every locked dependency: a `cargo update` that takes in a crate
//! needing a newer compiler fails here, not on a Pi owner's `cargo build`.

use std::path::Path;
use std::process::Command;

/// `1.85` or `1.88.0` as numbers, a missing patch as 0.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|part| {
        part.parse::<u64>()
            .unwrap_or_else(|_| panic!("{text:?} is not a version"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
}

#[test]
fn every_locked_dependency_builds_with_the_rust_the_readme_promises() {
    let promised = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        !promised.is_empty(),
        "the workspace declares a rust-version"
    );
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let said = format!("Rust toolchain ({promised} or newer)");
    assert!(readme.contains(&said), "the README says {said:?}");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let host = String::from_utf8(
        Command::new("rustc")
            .arg("-vV")
            .output()
            .expect("run rustc -vV")
            .stdout,
    )
    .expect("rustc -vV is UTF-8");
    let host = host
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", host])
        .current_dir(workspace())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    assert!(packages.len() > 50, "the whole dependency graph is listed");
    let too_new: Vec<String> = packages
        .iter()
        .filter_map(|package| {
            let needs = package["rust_version"].as_str()?;
            let (name, at) = (package["name"].as_str()?, package["version"].as_str()?);
            (version(needs) > version(promised)).then(|| format!("{name} {at} needs Rust {needs}"))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "the README promises Rust {promised}, but: {too_new:#?}\n\
         `cargo update NAME...` picks versions that build with it (.cargo/config.toml)"
    );
}
