#!/usr/bin/env bash
# Issue 2 benchmark: one ws-node on this machine. Deliveries per second at 1,000
# connections in 100 rooms and 10,000 in 1,000 rooms (rate raised until p99 > 100 ms, a
# delivery is missing, or the node falls behind), node CPU per delivery, the load client's
# CPU, and node memory per idle connection. Writes bench/out/node.md.
# Usage: bench/node.sh [quick]
source "$(dirname "$0")/lib.sh"
build
QUICK=${1:-}
PORT=${PORT:-17001}
DUR=${DUR:-10}
[ "$QUICK" = quick ] && DUR=4

node_start() {
  NODE=$(start ws-node "$BIN/ws-node" --listen "127.0.0.1:$PORT" --node-id bench \
    --publish-rate 100000 --publish-burst 100000 --outbound-queue 4096 --max-connections 19000)
  wait_http "http://127.0.0.1:$PORT/healthz"
}
node_stop() { kill "$NODE"; wait "$NODE" 2>/dev/null || true; }
deliveries() { metric "http://127.0.0.1:$PORT/metrics" wsnode_deliveries_total; }

# run CONNS ROOMS RATE TAG: one loadtest run (every member sends); prints a table row and
# returns non-zero when the run was not sustainable.
run() {
  local conns=$1 rooms=$2 rate=$3 tag=$4 per=$(( $1 / $2 ))
  local json="$OUT/node-$tag.json"
  "$BIN/loadtest" --url "ws://127.0.0.1:$PORT/ws" --conns "$conns" --rooms "$rooms" \
    --senders "$per" --rate "$rate" --warmup 2 --duration "$DUR" --connect-rate 5000 \
    --prefix "$tag" --json "$json" --no-bar >"$OUT/node-$tag.log" 2>&1 &
  local lt=$!
  # Measure the node from the moment every client is in (publishing starts then).
  while [ "$(metric "http://127.0.0.1:$PORT/metrics" wsnode_connections)" -lt "$conns" ]; do
    kill -0 $lt 2>/dev/null || break; sleep 0.05
  done
  local c0 d0; c0=$(cpu_secs "$NODE"); d0=$(deliveries)
  local ok=0; wait $lt || ok=$?
  local c1 d1; c1=$(cpu_secs "$NODE"); d1=$(deliveries)
  local dps p50 p99 lcpu offered
  dps=$(json_get "$json" deliveries_per_s); p50=$(json_get "$json" latency_us.p50)
  p99=$(json_get "$json" latency_us.p99); lcpu=$(json_get "$json" cpu.total_s)
  offered=$(( rooms * per * per ))
  offered=$(python3 -c "print(int($offered * $rate))")
  local us_per; us_per=$(python3 -c "print(f'{($c1-$c0)/max(1,($d1-$d0))*1e6:.2f}')")
  python3 -c "print(f'| $conns | $rooms | $rate | $offered | {$dps:.0f} | {$p50/1000:.1f} | {$p99/1000:.1f} | $us_per | {$c1-$c0:.1f} | {$lcpu:.1f} |')" \
    | tee -a "$OUT/node-rows.md"
  [ $ok -eq 0 ] || return 1
  python3 -c "import sys; sys.exit(0 if $p99 < 100000 and $dps >= 0.9 * $offered else 1)"
}

saturate() {
  local conns=$1 rooms=$2; shift 2
  local best=""
  for rate in "$@"; do
    node_start
    if run "$conns" "$rooms" "$rate" "c$conns-r$rate"; then best=$rate; node_stop; else node_stop; break; fi
  done
  echo "sustained up to rate $best per member at $conns connections / $rooms rooms" | tee -a "$OUT/node-rows.md"
}

: >"$OUT/node-rows.md"
echo "machine: $(machine)" | tee "$OUT/node.md"
echo '| conns | rooms | rate/member | offered deliveries/s | deliveries/s | p50 ms | p99 ms | node µs CPU/delivery | node CPU s | loadtest CPU s |' | tee -a "$OUT/node-rows.md"
echo '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |' | tee -a "$OUT/node-rows.md"
if [ "$QUICK" = quick ]; then
  saturate 1000 100 5
  saturate 10000 1000 1
else
  saturate 1000 100 5 10 20 40 80
  saturate 10000 1000 0.5 1 2 4 8
fi
cat "$OUT/node-rows.md" >>"$OUT/node.md"

# Idle memory: RSS delta over 10,000 idle connections.
node_start
rss0=$(rss_kib "$NODE")
"$BIN/loadtest" --url "ws://127.0.0.1:$PORT/ws" --conns 10000 --rooms 1000 --rate 0 \
  --warmup 0 --duration 8 --connect-rate 5000 --prefix idle --no-bar >"$OUT/node-idle.log" 2>&1 &
lt=$!
while [ "$(metric "http://127.0.0.1:$PORT/metrics" wsnode_connections)" -lt 10000 ]; do
  kill -0 $lt 2>/dev/null || { echo "idle loadtest ended early" >&2; break; }; sleep 0.1
done
sleep 1 # let allocator settle after the connect burst (measurement only, not a test)
rss1=$(rss_kib "$NODE")
wait $lt || true
node_stop
echo "idle: RSS $rss0 KiB -> $rss1 KiB over 10000 connections = $(( (rss1 - rss0) * 1024 / 10000 )) bytes per idle connection" | tee -a "$OUT/node.md"
