#!/usr/bin/env bash
# Issue 6: scenarios (a) and (b) side by side against roomfleet (router + 3 ws-nodes with
# Redis, as separate processes) and against Socket.IO v4 (two node processes sharing rooms
# through @socket.io/redis-adapter, bench/socketio/server.js). Two loadtest shards in both
# cases, merged. Writes bench/out/socketio.md. Usage: bench/socketio.sh [quick]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
command -v node >/dev/null || { echo "needs node and npm" >&2; exit 1; }
[ -d "$ROOT/bench/socketio/node_modules" ] || (cd "$ROOT/bench/socketio" && (npm ci --silent || npm install --silent))
DUR=${DUR:-10}; RATES=${RATES:-"1 2 4 8"}
[ "${1:-}" = quick ] && { DUR=3; RATES="1 2"; }
RPORT=18379
start redis-sio redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null
for i in $(seq 50); do redis-cli -p $RPORT ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS="redis://127.0.0.1:$RPORT"

PIDS_RF=(); args=()
for i in 0 1 2; do
  PIDS_RF+=("$(start "sio-node-$i" "$BIN/ws-node" --listen "127.0.0.1:$((18300 + i))" --node-id "node-$i" \
    --redis "$REDIS" --publish-rate 100000 --publish-burst 100000)")
  args+=(--node "node-$i=127.0.0.1:$((18300 + i))")
  wait_http "http://127.0.0.1:$((18300 + i))/healthz"
done
PIDS_RF+=("$(start sio-router "$BIN/router" --api 127.0.0.1:0 --listen 127.0.0.1:18310 --admin 127.0.0.1:18311 "${args[@]}")")
wait_http "http://127.0.0.1:18311/healthz"
PIDS_SIO=()
for i in 0 1; do
  PIDS_SIO+=("$(PORT=$((18320 + i)) REDIS_URL=$REDIS start "sio-$i" node "$ROOT/bench/socketio/server.js")")
done
for p in 18320 18321; do
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
sum_cpu() { python3 -c "import sys; print(sum(float(x) for x in sys.argv[1:]))" $(for p in "$@"; do cpu_secs "$p"; done); }

# run NAME RATE URL0 URL1 DIALECT PIDS...: two shards, merged; prints a row.
run() {
  local name=$1 rate=$2 u0=$3 u1=$4 dialect=$5; shift 5
  local c0; c0=$(sum_cpu "$@")
  for k in 0 1; do
    local u=$u0; [ $k = 1 ] && u=$u1
    "$BIN/loadtest" --no-bar --dialect "$dialect" --url "$u" --conns 2000 --rooms 200 --senders 10 \
      --rate "$rate" --warmup 2 --duration "$DUR" --shard "$k/2" --prefix "$name$rate" \
      --json "$OUT/sio-$name-$rate-$k.json" >"$OUT/sio-$name-$rate-$k.log" 2>&1 &
  done
  wait %- %+ 2>/dev/null || wait
  local c1; c1=$(sum_cpu "$@")
  "$BIN/loadtest" merge "$OUT/sio-$name-$rate-0.json" "$OUT/sio-$name-$rate-1.json" --json "$OUT/sio-$name-$rate.json" >/dev/null
  python3 - "$OUT/sio-$name-$rate.json" "$name" "$rate" "$c0" "$c1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]; c = r["check"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['deliveries_per_s']:.0f} | {l['p50']/1000:.2f} | {l['p99']/1000:.2f} | "
      f"{c['loss']}/{c['duplicate']}/{c['reorder']} | {float(sys.argv[5])-float(sys.argv[4]):.1f} | {r['cpu']['total_s']:.1f} |")
PY
}
{
  echo "machine: $(machine)"
  echo
  echo "2,000 connections in 200 rooms of 10, every member publishing at the rate; two loadtest shards."
  echo
  echo "| server | msg/s per member | deliveries/s | p50 ms | p99 ms | loss/dup/reorder | server CPU s | loadtest CPU s |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee "$OUT/socketio.md"
for rate in $RATES; do
  run roomfleet "$rate" ws://127.0.0.1:18310/ws ws://127.0.0.1:18310/ws native "${PIDS_RF[@]}" | tee -a "$OUT/socketio.md"
  run socketio "$rate" ws://127.0.0.1:18320/socket.io/ ws://127.0.0.1:18321/socket.io/ socketio "${PIDS_SIO[@]}" | tee -a "$OUT/socketio.md"
done
