# Shared helpers for the bench/ scripts: build once, start processes on loopback, read
# CPU time, RSS and metrics from /proc and /metrics. Source it; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/bench/out}"
BIN="$ROOT/target/release"
mkdir -p "$OUT"
# Pids of everything `start` ran, in a file: `X=$(start ...)` runs in a subshell.
PIDFILE="$OUT/.pids.$$"
: >"$PIDFILE"

cleanup() {
  local p
  while read -r p; do kill "$p" 2>/dev/null || true; done <"$PIDFILE"
  wait 2>/dev/null || true
  rm -f "$PIDFILE"
}
trap cleanup EXIT

build() {
  (cd "$ROOT" && cargo build --release --quiet --bin ws-node --bin loadtest ${EXTRA_BINS:-})
}

# start NAME CMD...: runs CMD in the background, logs to $OUT/NAME.log, records its pid.
start() {
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  echo $! >>"$PIDFILE"
  echo $!
}

# wait_http URL [SECONDS]: until URL answers 200.
wait_http() {
  local url=$1 t=${2:-20} i
  for ((i = 0; i < t * 10; i++)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $url" >&2
  return 1
}

# cpu_secs PID: user + system CPU seconds the process has used.
cpu_secs() {
  local tck; tck=$(getconf CLK_TCK)
  awk -v t="$tck" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}

# rss_kib PID: resident set size in KiB.
rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# metric URL NAME: one unlabeled sample from a Prometheus text endpoint. awk reads to the
# end: exiting early makes curl fail on a closed pipe, which `set -o pipefail` turns fatal.
metric() {
  curl -fsS "$1" | awk -v n="$2" '$1 == n && !found { print $2; found = 1 }'
}

# machine: one line naming the machine, for the report.
machine() {
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))," \
    "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)," \
    "open-file limit $(ulimit -n)"
}

# jq-free JSON field read: json_get FILE a.b.c (numbers and strings).
json_get() {
  python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v=v[int(k)] if isinstance(v,list) else v[k]
print(v)' "$1" "$2"
}

# free_ports N: N distinct loopback ports nobody listens on right now.
free_ports() {
  python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1",0))
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

# wait_exit PID [SECONDS]: until the process is gone.
wait_exit() {
  local pid=$1 t=${2:-30} i
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "process $pid still running after ${t}s" >&2
  return 1
}

# ring_ready ADMIN_URL: how many nodes the router would place on (healthy, not draining).
ring_ready() {
  curl -fsS "$1/admin/ring" 2>/dev/null | python3 -c 'import json,sys
print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["healthy"] and not n["draining"] and n["share"] > 0))' 2>/dev/null || echo 0
}

# start_postgres PORT: a PostgreSQL 15 of the script's own in a temporary directory on
# 127.0.0.1:PORT (Debian's postgresql-15; initdb and pg_ctl run as postgres when root),
# stopped and removed at exit. Sets PG (the binaries) and AS (the runuser prefix).
start_postgres() {
  local port=$1
  PG=/usr/lib/postgresql/15/bin
  PGDIR=$(mktemp -d /tmp/roomfleet-bench-pg.XXXX)
  AS=(); [ "$(id -u)" = 0 ] && { chown postgres "$PGDIR"; AS=(runuser -u postgres --); }
  "${AS[@]}" "$PG/initdb" -A trust -U postgres --no-sync -D "$PGDIR/data" >/dev/null
  "${AS[@]}" "$PG/pg_ctl" start -W -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PGDIR" -l "$PGDIR/log" -D "$PGDIR/data" >/dev/null
  trap '"${AS[@]}" "$PG/pg_ctl" stop -m fast -D "$PGDIR/data" >/dev/null 2>&1; rm -rf "$PGDIR"; cleanup' EXIT
  local i
  for i in $(seq 100); do "$PG/pg_isready" -q -h 127.0.0.1 -p "$port" && return 0; sleep 0.1; done
  echo "PostgreSQL on $port did not come up (see $PGDIR/log)" >&2
  return 1
}

# start_redis PORT: a redis-server without persistence on 127.0.0.1:PORT, until it answers.
start_redis() {
  local i
  start redis redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
  for i in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server on $1 did not answer" >&2
  return 1
}
