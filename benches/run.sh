#!/bin/sh
# Builds the daemon and the harness (release), then runs the benchmark.
# Usage: benches/run.sh [--duration 10s] [--connections 50] [--rounds 3] [--smoke] ...
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p dynia -p dynia-benches --bin dynia --bin dynia-benches
exec target/release/dynia-benches "$@"
