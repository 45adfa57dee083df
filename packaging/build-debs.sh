#!/usr/bin/env bash
# Builds the Debian packages of respawn-agent and respawnctl with cargo-deb, for the Rust
# targets given (default: x86-64, arm64 and armhf Linux), into target/debian/ (under
# $CARGO_TARGET_DIR when it is set).
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
# cargo and cargo-deb build under $CARGO_TARGET_DIR when it is set.
out=${CARGO_TARGET_DIR:-target}
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cargo build --release -p respawn-controller
mkdir -p packaging/completions
"$out"/release/respawnctl completions bash >packaging/completions/respawnctl.bash
"$out"/release/respawnctl completions zsh >packaging/completions/_respawnctl
"$out"/release/respawnctl completions fish >packaging/completions/respawnctl.fish

# The packages declare libc6 (>= 2.34), what Raspberry Pi OS 12 and Debian 12 satisfy; a
# build machine with a newer glibc can produce binaries that need more.
declared_glibc=2.34
check_glibc() {
    local needed
    needed=$(objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    if [ "$(printf '%s\n%s\n' "$needed" "$declared_glibc" | sort -V | tail -n 1)" != "$declared_glibc" ]; then
        echo "$1 needs glibc $needed, but the packages declare libc6 (>= $declared_glibc):" >&2
        echo "build on Debian 12 (bookworm), or raise depends in agent/ and controller/Cargo.toml" >&2
        exit 1
    fi
}

for target in "${targets[@]}"; do
    # This machine's own target builds into $out/release, as above, and is not built twice.
    target_flag=(--target "$target")
    binaries=$out/$target/release
    if [ "$target" = "$host" ]; then
        target_flag=()
        binaries=$out/release
    fi
    # Made aside and put with the others only once checked: a refused package must not be
    # left where it would be copied to a Pi.
    for package in respawn-agent respawn-controller; do
        cargo deb -p "$package" "${target_flag[@]}" --output "$staging"
    done
    check_glibc "$binaries/respawn-agent"
    check_glibc "$binaries/respawnctl"
    mkdir -p "$out/debian"
    mv "$staging"/*.deb "$out/debian/"
done
ls -l "$out"/debian/*.deb
