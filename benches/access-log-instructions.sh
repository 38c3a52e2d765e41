#!/bin/sh
# Instructions per proxied request with the access log off and on, counted by
# valgrind's callgrind (counts instructions, not seconds: the same on a busy
# machine as on a quiet one). The proxy runs one worker thread; everything in
# its process counts (worker, writer thread, timers). See benches/README.md,
# "Access log cost".
# Usage: benches/access-log-instructions.sh [requests]   (default 4000)
set -eu
cd "$(dirname "$0")/.."
N=${1:-4000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -p dynia --bin dynia >/dev/null 2>&1
BIN=$PWD/target/release/dynia
DIR=$(mktemp -d /tmp/dynia-alog-ir.XXXXXX)
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
[ -n "${KEEP:-}" ] && trap - EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP=$(free_port)
"$BIN" upstream --listen "127.0.0.61:$APP" --id bench-app >/dev/null 2>&1 & PIDS="$PIDS $!"

# One node, one service over the app; the node itself is a member on 127.0.0.60.
write_files() { # dir listen admin eport access
  d=$1; mkdir -p "$d/state"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$d/admin.token"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$d/cluster.key"
  chmod 600 "$d/admin.token" "$d/cluster.key"
  cat > "$d/dynia.toml" <<EOF
[node]
id = "bench-node"
private_ip = "127.0.0.60"
state_dir = "$d/state"
worker_threads = 1
[admin]
listen = "$3"
token_file = "$d/admin.token"
[[listener]]
name = "http"
bind = "$2"
[election]
key_file = "$d/cluster.key"
port = $4
[reserved_ip]
driver = "none"
$5
EOF
  cat > "$d/state/cluster.toml" <<EOF
generation = 1
cluster = "bench"
[[member]]
id = "bench-node"
private_ip = "127.0.0.60"
priority = 150
[[member]]
id = "bench-app"
private_ip = "127.0.0.61"
priority = 100
[[service]]
name = "web"
hosts = ["bench.example"]
port = $APP
EOF
}

# Sends $2 keep-alive GETs to 127.0.0.1:$1 (fails on any non-200).
requests() {
  python3 - "$1" "$2" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/", headers={"Host": "bench.example"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
EOF
}

# Instructions of the whole proxy process for $N requests after a warm-up.
measure() { # name access-toml
  d=$DIR/$1; L=$(free_port); A=$(free_port); E=$(free_port)
  write_files "$d" "127.0.0.1:$L" "127.0.0.1:$A" "$E" "$2"
  valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" --instr-atstart=no \
    "$BIN" run -c "$d/dynia.toml" >"$d/log" 2>&1 & vp=$!; PIDS="$PIDS $vp"
  i=0; until requests "$L" 1 2>/dev/null; do i=$((i+1)); [ $i -lt 600 ] || { cat "$d/log"; exit 1; }; sleep 0.1; done
  requests "$L" 500
  callgrind_control -i on "$vp" >/dev/null 2>&1
  requests "$L" "$N"
  callgrind_control -d "$vp" >/dev/null 2>&1
  callgrind_control -i off "$vp" >/dev/null 2>&1
  kill "$vp"; wait "$vp" 2>/dev/null || true
  ir=$(awk '/^totals:/ {s+=$2} END {print s}' "$d"/cg.out.1)
  echo "$1 $ir"
}

off=$(measure off "")
on=$(measure on "[log]
access = \"haproxy\"
access_file = \"$DIR/access.log\"")
echo "$off" | awk -v n="$N" '{printf "access log off: %.0f instructions per request\n", $2/n}'
echo "$on" | awk -v n="$N" '{printf "access log on:  %.0f instructions per request\n", $2/n}'
lines=$(wc -l < "$DIR/access.log")
echo "access log lines written: $lines"
printf '%s\n%s\n' "$off" "$on" | awk 'NR==1{o=$2} NR==2{printf "on/off = %.3f (requests per instruction: %.3f; target >= 0.95)\n", $2/o, o/$2}'
