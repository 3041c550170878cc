#!/usr/bin/env bash
# Builds forkpool's .deb with cargo-deb (`cargo install cargo-deb --locked`):
#   1. the release binary (nothing to do when scripts/test.sh built it already);
#   2. what the package ships that is made from the binary or adapted to the installed
#      layout, into target/deb-assets/: the man pages and completions the binary generates,
#      the units with ExecStart=/usr/bin/forkpool, and the default configuration with its
#      catalog and socket where the package puts them;
#   3. `cargo deb --no-build`, with [package.metadata.deb] in Cargo.toml listing the files.
# Usage: scripts/build-deb.sh [OUTPUT_DIR]   (default target/debian); prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debian}

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "scripts/build-deb.sh: cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
fi

cargo build --release --quiet
bin=target/release/forkpool
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd" "$assets/config"

"$bin" man --dir "$assets/man"
"$bin" completions bash >"$assets/completions/forkpool.bash"
"$bin" completions zsh >"$assets/completions/_forkpool"
"$bin" completions fish >"$assets/completions/forkpool.fish"

for unit in systemd/*.service systemd/*.socket; do
    sed 's#/usr/local/bin/forkpool#/usr/bin/forkpool#g' "$unit" >"$assets/systemd/$(basename "$unit")"
done
cp systemd/forkpool.sysusers "$assets/systemd/"

# The repository's configuration finds its jobs at ../workers and its socket beside it; the
# installed one at /etc/forkpool/workers and /run/forkpool (what the unit binds).
sed -e 's#^catalog = "\.\./workers" .*#catalog = "workers"            \# /etc/forkpool/workers (relative to this file)#' \
    -e 's#^socket = "forkpool\.sock" .*#socket = "/run/forkpool/forkpool.sock" \# where forkpool.service binds, so clients given --config agree#' \
    config/forkpool.toml >"$assets/config/forkpool.toml"
for line in '^catalog = "workers" ' '^socket = "/run/forkpool/forkpool.sock" '; do
    if ! grep -q "$line" "$assets/config/forkpool.toml"; then
        echo "scripts/build-deb.sh: config/forkpool.toml changed: no line matching $line after the rewrite" >&2
        exit 1
    fi
done

mkdir -p "$out"
# --strip: the release profile keeps line tables (debug = 1) for profiling; the package need not.
cargo deb --no-build --strip --quiet --output "$out" | tail -n 1
