#!/usr/bin/env bash
# Issue 17 item 4: the node's delivery path, old against new in one session. One ws-node
# reached directly, 2,000 connections in 200 rooms of 10, every member publishing at
# RATES msg/s (1.5 = 30,000 deliveries/s, 3 = 60,000), the binaries in turn (A B A B ...)
# so both see the same machine. Node CPU per delivery = node user+system CPU over the
# measured window / wsnode_deliveries_total over the same window. With PERF=1 each run
# also records `perf record -g` of the node into $OUT/hotpath-TAG.perf. With IR=1 the node
# runs under `valgrind --tool=callgrind` at a tenth of the load (200 connections, 20 rooms)
# and the row gives our own (user-space) instructions per delivery over the measured window:
# repeatable whatever else the machine does, unlike CPU seconds.
# Usage: bench/hotpath.sh ANCHOR_BIN NEW_BIN [quick]   (ws-node binaries; loadtest from
# target/release, built when missing)
source "$(dirname "$0")/lib.sh"
A=${1:?anchor ws-node binary}
B=${2:?new ws-node binary}
DUR=${DUR:-12}; RATES=${RATES:-"1.5 3"}; ROUNDS=${ROUNDS:-2}; PORT=${PORT:-$(free_ports 1)}
[ "${3:-}" = quick ] && { DUR=5; RATES=1.5; ROUNDS=1; }
[ -x "$BIN/loadtest" ] || (cd "$ROOT" && cargo build --release --quiet --bin loadtest)

# run BIN TAG RATE: one node, one load run; prints a row.
run() {
  local bin=$1 tag=$2 rate=$3 json="$OUT/hotpath-$2-$3.json" conns=2000 rooms=200 pre=()
  rm -f "$json"
  if [ "${IR:-0}" = 1 ]; then
    conns=200; rooms=20
    pre=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/hotpath-$tag-$rate.cg")
  fi
  local node; node=$(start "hotpath-node-$tag" "${pre[@]}" "$bin" --listen "127.0.0.1:$PORT" --node-id hot \
    --publish-rate 100000 --publish-burst 100000 --outbound-queue 4096)
  wait_http "http://127.0.0.1:$PORT/healthz" 60
  "$BIN/loadtest" --url "ws://127.0.0.1:$PORT/ws" --conns "$conns" --rooms "$rooms" --senders 10 \
    --rate "$rate" --warmup 3 --duration "$DUR" --connect-rate 5000 --prefix "h$tag" \
    --json "$json" --no-bar >"$OUT/hotpath-$tag-$rate.log" 2>&1 &
  local lt=$! i
  while [ "$(metric "http://127.0.0.1:$PORT/metrics" wsnode_connections)" -lt "$conns" ]; do
    kill -0 $lt 2>/dev/null || break; sleep 0.05
  done
  sleep 3 # the loadtest warmup: measure the steady state only
  local c0 d0 c1 d1 t0 t1 perf=""
  c0=$(cpu_secs "$node"); d0=$(metric "http://127.0.0.1:$PORT/metrics" wsnode_deliveries_total); t0=$(date +%s.%N)
  if [ "${IR:-0}" = 1 ]; then
    callgrind_control -i on "$node" >/dev/null || true; sleep $((DUR - 2)); callgrind_control -i off "$node" >/dev/null || true
  elif [ "${PERF:-0}" = 1 ]; then
    perf record -e cpu-clock -F 2000 -g -p "$node" -o "$OUT/hotpath-$tag-$rate.perf" -- sleep $((DUR - 2)) >/dev/null 2>&1 &
    perf=$!
  else
    sleep $((DUR - 2))
  fi
  [ -n "$perf" ] && wait $perf
  c1=$(cpu_secs "$node"); d1=$(metric "http://127.0.0.1:$PORT/metrics" wsnode_deliveries_total); t1=$(date +%s.%N)
  wait $lt || echo "loadtest reported a problem: $OUT/hotpath-$tag-$rate.log" >&2
  kill "$node"; wait_exit "$node" 60
  local ir=0
  [ "${IR:-0}" = 1 ] && ir=$(awk '/^totals:/ { print $2; exit }' "$OUT/hotpath-$tag-$rate.cg")
  python3 - "$json" "$tag" "$rate" "$c0" "$c1" "$d0" "$d1" "$t0" "$t1" "$ir" <<'PY'
import json, os, sys
c0, c1, d0, d1, t0, t1, ir = map(float, sys.argv[4:11])
per = (c1 - c0) * 1e6 / max(d1 - d0, 1)
if ir:
    print(f"| {sys.argv[2]} | {sys.argv[3]} | {(d1-d0)/(t1-t0):.0f} | {ir/max(d1-d0,1):.0f} instructions/delivery (user space) |")
    sys.exit(0)
if os.path.exists(sys.argv[1]):
    r = json.load(open(sys.argv[1])); l = r["latency_us"]; c = r["check"]
    lat = f"{l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {c['loss']}/{c['duplicate']}/{c['reorder']}"
else:
    lat = "- | - | loadtest failed (see its log)"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {(d1-d0)/(t1-t0):.0f} | {lat} | {(c1-c0)/(t1-t0)*100:.0f}% | {per:.2f} |")
PY
}

{
  echo "machine: $(machine)"
  echo "A = $A ($(sha256sum "$A" | cut -c1-12)), B = $B ($(sha256sum "$B" | cut -c1-12))"
  echo
  echo "| binary | msg/s per member | deliveries/s (node) | p50 ms | p99 ms | loss/dup/reorder | node CPU | node µs CPU/delivery |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee "$OUT/hotpath.md"
for rate in $RATES; do
  for ((k = 0; k < ROUNDS; k++)); do
    run "$A" "A$k" "$rate" | tee -a "$OUT/hotpath.md"
    run "$B" "B$k" "$rate" | tee -a "$OUT/hotpath.md"
  done
done
