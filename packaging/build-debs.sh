#!/usr/bin/env bash
# Builds the Debian packages of respawn-agent and respawnctl with cargo-deb, for the Rust
# targets given (default: x86-64, arm64 and armhf Linux), into target/debian/.
#   packaging/build-debs.sh [TARGET...]
# Needs cargo-deb (cargo install cargo-deb --locked) and, for the Pi, Debian's cross linkers
# and the rustup targets: see docs/raspberry-pi.md.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2
    exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')

# The completions are the same for every architecture: a build for this machine writes them.
# (packaging/completions/ is not in git: generated files must not go stale there.)
cargo build --release -p respawn-controller
mkdir -p packaging/completions
target/release/respawnctl completions bash >packaging/completions/respawnctl.bash
target/release/respawnctl completions zsh >packaging/completions/_respawnctl
target/release/respawnctl completions fish >packaging/completions/respawnctl.fish

for target in "${targets[@]}"; do
    # This machine's own target builds into target/release, as above, and is not built twice.
    target_flag=(--target "$target")
    [ "$target" = "$host" ] && target_flag=()
    for package in respawn-agent respawn-controller; do
        cargo deb -p "$package" "${target_flag[@]}"
    done
done
ls -l target/debian/*.deb
