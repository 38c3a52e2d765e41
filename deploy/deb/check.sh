#!/usr/bin/env bash
# CI's package check (as root): build the .deb, `dpkg -i` it, run the
# installed `dynia --version`, `systemd-analyze verify` (and `security`) the
# installed unit, then `dpkg -r` it again, also when a step fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
  echo "package check skipped: dpkg -i needs root" >&2
  exit 0
fi
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked   # ~2 min once; cached in ~/.cargo/bin after
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
deb="$(deploy/deb/build.sh | tail -n 1)"
trap 'dpkg -r dynia >/dev/null' EXIT
dpkg -i "$deb" >/dev/null
version="$(/usr/bin/dynia --version)"
echo "installed: $version ($deb)"
[ "$version" = "dynia $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ]
unit="$(dpkg -L dynia | grep '/systemd/system/dynia\.service$')"
systemd-analyze verify "$unit"
id dynia >/dev/null
man -w dynia-node-add >/dev/null 2>&1 || [ ! -d /usr/share/man/man1 ] || {
  echo "man page dynia-node-add not installed" >&2
  exit 1
}
# The sandbox: `systemd-analyze security` exposure at most 3.0 (docs/packaging.md).
exposure="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
echo "unit $unit verifies; systemd-analyze security exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 3.0) }' || {
  echo "exposure $exposure is above 3.0" >&2
  exit 1
}
