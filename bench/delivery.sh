#!/usr/bin/env bash
# Issue 17 benchmark: server CPU per delivery, side by side in one run, with the same
# outside load client (loadtest, two shards) for every server: Socket.IO 4 with its Redis
# adapter (2 processes), sockudo (Pusher protocol; one process, and two with Redis),
# `fleet up` (router + 2 nodes in one process), router + 2 nodes as separate processes
# (proxy; and handoff when the nodes offer it), and one ws-node reached directly.
# 2,000 connections in 200 rooms of 10, every member publishing at RATE msg/s
# (1.5 -> 30,000 deliveries/s, 4.5 -> 90,000; Pusher skips the sender: 27,000 / 81,000).
# Writes bench/out/delivery.md. Usage: bench/delivery.sh [quick]; SERVERS="..." picks rows.
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router --bin fleet" build
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
command -v node >/dev/null || { echo "needs node and npm (bench/socketio)" >&2; exit 1; }
[ -d "$ROOT/bench/socketio/node_modules" ] || (cd "$ROOT/bench/socketio" && (npm ci --silent || npm install --silent))
# sockudo from crates.io, built once and kept between runs (protoc is a build dependency).
DUR=${DUR:-15}; RATES=${RATES:-"1.5 4.5"}
SERVERS=${SERVERS:-"socketio sockudo1 sockudo2 fleet fleet-noarchive proxy handoff node"}
SOCKUDO_ROOT=${SOCKUDO_ROOT:-$ROOT/bench/.tools/sockudo}
SOCKUDO="$SOCKUDO_ROOT/bin/sockudo"
if [[ ! -x "$SOCKUDO" && "$SERVERS" == *sockudo* ]]; then
  command -v protoc >/dev/null || { apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }
  echo "bench/delivery.sh: installing sockudo into $SOCKUDO_ROOT (once; takes a while)" >&2
  cargo install --locked --root "$SOCKUDO_ROOT" sockudo --no-default-features --features local,redis
fi
[ "${1:-}" = quick ] && { DUR=4; RATES="1.5"; }
read -r RPORT SIO0 SIO1 SK0 SK1 SK2 FL FLA FLP N0 N1 RT RTA RTAPI HN0 HN1 HR HRA HRAPI ONE <<<"$(free_ports 20)"
start redis-delivery redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
for i in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS="redis://127.0.0.1:$RPORT"
NODE_FLAGS=(--publish-rate 100000 --publish-burst 100000)
APP=bench-key:bench-secret
wait_tcp() { for i in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
sum_cpu() { python3 -c "import sys; print(sum(float(x) for x in sys.argv[1:]))" $(for p in "$@"; do cpu_secs "$p"; done); }
sockudo() { # sockudo NAME PORT ADAPTER
  # Clustered sockudo refuses a node-local cache: the Redis adapter takes the Redis cache.
  local cache=memory; [ "$3" = redis ] && cache=redis
  PORT=$2 HOST=127.0.0.1 ADAPTER_DRIVER=$3 REDIS_URL=$REDIS APP_MANAGER_DRIVER=memory CACHE_DRIVER=$cache \
    QUEUE_DRIVER=memory RATE_LIMITER_ENABLED=false METRICS_ENABLED=false SOCKUDO_MAX_CONNECTIONS=100000 \
    SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=${APP%%:*} SOCKUDO_DEFAULT_APP_SECRET=${APP##*:} \
    SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true \
    SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=100000 SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=100000 \
    start "$1" "$SOCKUDO"
}
# up SERVER: starts it; sets PIDS, U0, U1 (the two shards' URLs), DIALECT.
up() {
  PIDS=(); DIALECT=native; EXTRA=()
  case $1 in
    socketio)
      for p in $SIO0 $SIO1; do PIDS+=("$(PORT=$p REDIS_URL=$REDIS start "sio-$p" node "$ROOT/bench/socketio/server.js")"); wait_tcp "$p"; done
      U0=ws://127.0.0.1:$SIO0/socket.io/; U1=ws://127.0.0.1:$SIO1/socket.io/; DIALECT=socketio ;;
    sockudo1)
      PIDS+=("$(sockudo sockudo-one "$SK0" local)"); wait_tcp "$SK0"
      U0=ws://127.0.0.1:$SK0; U1=$U0; DIALECT=pusher; EXTRA=(--pusher-app "$APP") ;;
    sockudo2)
      for p in $SK1 $SK2; do PIDS+=("$(sockudo "sockudo-$p" "$p" redis)"); wait_tcp "$p"; done
      U0=ws://127.0.0.1:$SK1; U1=ws://127.0.0.1:$SK2; DIALECT=pusher; EXTRA=(--pusher-app "$APP") ;;
    fleet | fleet-noarchive)
      # Each run archives into a new database of its own: one left from an earlier run
      # would make this run's inserts pay for that run's indexes.
      local archive=(--archive-db "sqlite:$OUT/delivery-archive.db"); [ "$1" = fleet-noarchive ] && archive=(--no-archive)
      rm -f "$OUT"/delivery-archive.db*
      PIDS+=("$(start "$1" "$BIN/fleet" up --nodes 2 --listen "127.0.0.1:$FL" --admin "127.0.0.1:$FLA" --api "127.0.0.1:$FLP" "${archive[@]}")")
      wait_http "http://127.0.0.1:$FLA/readyz"; U0=ws://127.0.0.1:$FL/ws; U1=$U0 ;;
    proxy | handoff)
      local a=$N0 b=$N1 r=$RT ra=$RTA api=$RTAPI nodes=() i=0
      [ "$1" = handoff ] && { a=$HN0; b=$HN1; r=$HR; ra=$HRA; api=$HRAPI; }
      for p in $a $b; do
        local extra=() spec="node-$i=127.0.0.1:$p"
        if [ "$1" = handoff ]; then
          "$BIN/ws-node" --help | grep -q -- --handoff || { echo "ws-node has no --handoff: skipping" >&2; return 1; }
          extra=(--handoff "unix:$OUT/handoff-$p.sock"); spec="$spec,handoff=$OUT/handoff-$p.sock"
        fi
        PIDS+=("$(start "$1-node-$p" "$BIN/ws-node" --listen "127.0.0.1:$p" --node-id "node-$i" --redis "$REDIS" "${NODE_FLAGS[@]}" "${extra[@]}")")
        wait_http "http://127.0.0.1:$p/healthz"; nodes+=(--node "$spec"); i=$((i + 1))
      done
      PIDS+=("$(start "$1-router" "$BIN/router" --listen "127.0.0.1:$r" --admin "127.0.0.1:$ra" --api "127.0.0.1:$api" "${nodes[@]}")")
      wait_http "http://127.0.0.1:$ra/healthz"; U0=ws://127.0.0.1:$r/ws; U1=$U0 ;;
    node)
      PIDS+=("$(start node-alone "$BIN/ws-node" --listen "127.0.0.1:$ONE" --node-id node-one "${NODE_FLAGS[@]}")")
      wait_http "http://127.0.0.1:$ONE/healthz"; U0=ws://127.0.0.1:$ONE/ws; U1=$U0 ;;
  esac
}
down() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait_exit "$p" 20 || kill -9 "$p" 2>/dev/null || true; done; }
# run NAME RATE: two shards of the one load client, each from 250 loopback source addresses
# (the router limits connections per address), each on one thread (--threads 1: a shard per
# core, no hand-offs between threads, so the client leaves the servers more of the machine);
# prints a row.
run() {
  local name=$1 rate=$2 c0 c1 shards=()
  c0=$(sum_cpu "${PIDS[@]}")
  for k in 0 1; do
    local u=$U0; [ $k = 1 ] && u=$U1
    "$BIN/loadtest" --no-bar --dialect "$DIALECT" "${EXTRA[@]}" --url "$u" --conns 2000 --rooms 200 --senders 10 \
      --src-ips "127.0.$((10 + k)).1-127.0.$((10 + k)).250" --rate "$rate" --warmup 3 --duration "$DUR" --shard "$k/2" --threads 1 --prefix "d$name${rate/./_}" \
      --json "$OUT/delivery-$name-$rate-$k.json" >"$OUT/delivery-$name-$rate-$k.log" 2>&1 &
    shards+=($!)
  done
  wait "${shards[@]}" || true
  c1=$(sum_cpu "${PIDS[@]}")
  "$BIN/loadtest" merge "$OUT/delivery-$name-$rate-0.json" "$OUT/delivery-$name-$rate-1.json" --json "$OUT/delivery-$name-$rate.json" >/dev/null || true  # exits 1 when the run lost messages; the row says so
  python3 - "$OUT/delivery-$name-$rate.json" "$name" "$rate" "$c0" "$c1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; c = r["check"]
cpu = float(sys.argv[5]) - float(sys.argv[4])
per = cpu * 1e6 / max(r["delivered"], 1)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['deliveries_per_s']:.0f} | {l['p50']/1000:.2f} | {l['p99']/1000:.2f} | "
      f"{c['loss']}/{c['duplicate']}/{c['reorder']} | {cpu:.1f} | {per:.1f} | {r['cpu']['total_s']:.1f} |")
PY
}
{
  echo "machine: $(machine)"
  echo
  echo "2,000 connections in 200 rooms of 10, every member publishing at the rate; one load client in two shards;"
  echo "server CPU = user+system of every server process over the run (connects and warmup included) / deliveries."
  echo
  echo "| server | msg/s per member | deliveries/s | p50 ms | p99 ms | loss/dup/reorder | server CPU s | µs/delivery | loadtest CPU s |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee "$OUT/delivery.md"
for s in $SERVERS; do
  up "$s" || continue
  for rate in $RATES; do run "$s" "$rate" | tee -a "$OUT/delivery.md"; done
  down
  # The archive's writes (and any server's logs) reach the disk now, not in the next row.
  sync
done
