#!/usr/bin/env bash
# Builds the .deb: the release binary, then man pages and shell completions
# rendered by that binary (`dynia man`, `dynia completions`) into
# $target/release/deb-extra/, then `cargo deb --no-build`. Prints the path
# of the .deb on its last line. Needs cargo-deb (`cargo install cargo-deb --locked`).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
extra="$target/release/deb-extra"

cargo build --release --locked --bin dynia
bin="$target/release/dynia"
rm -rf "$extra"
mkdir -p "$extra/man" "$extra/completions"
"$bin" man "$extra/man" >/dev/null
gzip -9n "$extra"/man/*.1
"$bin" completions bash >"$extra/completions/dynia.bash"
"$bin" completions zsh >"$extra/completions/_dynia"
"$bin" completions fish >"$extra/completions/dynia.fish"

cargo deb --no-build --locked -p dynia "$@" | tail -n 1
