#!/usr/bin/env bash
# Issue 6 scenarios through routers and nodes as separate processes (release builds):
#  (a) 2,000 connections / 200 rooms / 1 msg/s per connection, router + 3 nodes;
#  (b) saturation: the rate of (a) raised until p99 > 100 ms or a delivery is missing;
#  (c) 20,000 connections / 5,000 zipf rooms, 3 routers sharing one port (--reuse-port)
#      and 3 nodes, 2 loadtest shards merged;
#  (d) idle connections held by the fleet (target 100,000): R routers on one port, N nodes,
#      S loadtest shards over 127.0.0.2-127.0.0.254, with memory per connection per role.
# Each process may hold 20,000 files and a proxied client costs a router 2, hence the
# process counts. Writes bench/out/scale.md. Usage: bench/scale.sh [quick] [a|b|c|d ...]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
QUICK=""; [ "${1:-}" = quick ] && { QUICK=1; shift; }
STEPS=${*:-a b c d}
PORT=18080
DUR=${DUR:-10}; [ -n "$QUICK" ] && DUR=3

# fleet NODES ROUTERS: starts nodes on 1810x and routers sharing $PORT (admin 1820x).
fleet() {
  local nodes=$1 routers=$2 i args=()
  NODE_PIDS=(); ROUTER_PIDS=()
  for ((i = 0; i < nodes; i++)); do
    NODE_PIDS+=("$(start "scale-node-$i" "$BIN/ws-node" --listen "127.0.0.1:$((18100 + i))" \
      --node-id "node-$i" --publish-rate 100000 --publish-burst 100000 --outbound-queue 4096)")
    args+=(--node "node-$i=127.0.0.1:$((18100 + i))")
    wait_http "http://127.0.0.1:$((18100 + i))/healthz"
  done
  for ((i = 0; i < routers; i++)); do
    ROUTER_PIDS+=("$(start "scale-router-$i" "$BIN/router" --listen "127.0.0.1:$PORT" --reuse-port \
      --admin "127.0.0.1:$((18200 + i))" --api "127.0.0.1:$((18250 + i))" "${args[@]}" --health-timeout 2 --health-fall 5)")
    wait_http "http://127.0.0.1:$((18200 + i))/healthz"
  done
}
fleet_stop() {
  kill "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}" 2>/dev/null || true
  wait "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}" 2>/dev/null || true
}
sum_rss() { local t=0 p; for p in "$@"; do t=$((t + $(rss_kib "$p"))); done; echo $t; }
sum_cpu() { python3 -c "import sys; print(sum(float(x) for x in sys.argv[1:]))" $(for p in "$@"; do cpu_secs "$p"; done); }
node_conns() {
  local t=0 i
  for ((i = 0; i < ${#NODE_PIDS[@]}; i++)); do
    local v; v=$(metric "http://127.0.0.1:$((18100 + i))/metrics" wsnode_connections 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo $t
}
lt() { "$BIN/loadtest" --no-bar --url "ws://127.0.0.1:$PORT/ws" --src-ips 127.0.0.2-127.0.0.254 "$@"; }
fmt() { # fmt JSON NAME: one table row from a (merged) report
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["check"]; l = r["latency_us"]
print(f"| {sys.argv[2]} | {r['connect']['connected']} | {r['published']} | {r['deliveries_per_s']:.0f} | "
      f"{l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {l['max']/1000:.1f} | {c['loss']}/{c['duplicate']}/{c['reorder']} | "
      f"{r['cpu']['total_s']:.1f} | {sys.argv[3]} |")
PY
}
HDR="| scenario | connected | published | deliveries/s | p50 ms | p99 ms | max ms | loss/dup/reorder | loadtest CPU s | server CPU s |"
echo "machine: $(machine)" | tee "$OUT/scale.md"
echo | tee -a "$OUT/scale.md"
echo "$HDR" | tee -a "$OUT/scale.md"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" | tee -a "$OUT/scale.md"

for step in $STEPS; do
  case $step in
  a)
    fleet 3 1
    c0=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
    lt --conns 2000 --rooms 200 --senders 10 --rate 1 --duration "$DUR" --prefix sa --json "$OUT/scale-a.json" >"$OUT/scale-a.log" || true
    c1=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
    fmt "$OUT/scale-a.json" "(a) 2,000 conns / 200 rooms / 1 msg/s each" "$(python3 -c "print(f'{$c1-$c0:.1f}')")" | tee -a "$OUT/scale.md"
    fleet_stop
    ;;
  b)
    rates="2 4 8 16 32"; [ -n "$QUICK" ] && rates="2 4"
    last=""
    for rate in $rates; do
      fleet 3 1
      c0=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
      ok=0
      lt --conns 2000 --rooms 200 --senders 10 --rate "$rate" --duration "$DUR" --prefix "sb$rate" --json "$OUT/scale-b$rate.json" >"$OUT/scale-b$rate.log" || ok=1
      c1=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
      fleet_stop
      fmt "$OUT/scale-b$rate.json" "(b) 2,000 conns / 200 rooms / $rate msg/s each" "$(python3 -c "print(f'{$c1-$c0:.1f}')")" | tee -a "$OUT/scale.md"
      p99=$(json_get "$OUT/scale-b$rate.json" latency_us.p99)
      if [ $ok -ne 0 ] || [ "${p99%.*}" -gt 100000 ]; then
        echo "(b) saturation: last good rate ${last:-none}, first bad $rate msg/s per connection" | tee -a "$OUT/scale-b.txt"
        break
      fi
      last=$rate
    done
    ;;
  c)
    conns=20000; rooms=5000; [ -n "$QUICK" ] && { conns=2000; rooms=500; }
    fleet 3 3
    c0=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
    for k in 0 1; do
      lt --conns $conns --rooms $rooms --dist zipf:1.1 --rate 1 --duration "$DUR" --warmup 3 \
        --connect-rate 4000 --shard "$k/2" --prefix sc --json "$OUT/scale-c$k.json" >"$OUT/scale-c$k.log" &
    done
    wait %- %+ 2>/dev/null || wait
    c1=$(sum_cpu "${NODE_PIDS[@]}" "${ROUTER_PIDS[@]}")
    "$BIN/loadtest" merge "$OUT/scale-c0.json" "$OUT/scale-c1.json" --json "$OUT/scale-c.json" >/dev/null
    fmt "$OUT/scale-c.json" "(c) $conns conns / $rooms zipf rooms, 3 routers + 3 nodes" "$(python3 -c "print(f'{$c1-$c0:.1f}')")" | tee -a "$OUT/scale.md"
    fleet_stop
    ;;
  d)
    target=100000; routers=14; nodes=7; shards=6; [ -n "$QUICK" ] && { target=2000; routers=2; nodes=2; shards=2; }
    fleet $nodes $routers
    r0=$(sum_rss "${ROUTER_PIDS[@]}"); n0=$(sum_rss "${NODE_PIDS[@]}")
    # Count held connections by the nodes' open descriptors (one per client): polling their
    # /metrics over loopback competes for the same ports and sockets as the load.
    fds() { local t=0 p; for p in "${NODE_PIDS[@]}"; do t=$((t + $(ls "/proc/$p/fd" | wc -l))); done; echo $t; }
    fd0=$(fds)
    lts=()
    for ((k = 0; k < shards; k++)); do
      lt --conns $target --rooms $((target / 10)) --rate 0 --warmup 0 --duration 90 \
        --connect-rate $((2000 / shards + 1)) --connect-timeout 30 --max-inflight 200 --shard "$k/$shards" --prefix sd \
        --json "$OUT/scale-d$k.json" >"$OUT/scale-d$k.log" &
      lts+=($!)
    done
    best=0; stall=0
    for i in $(seq 400); do   # at most 200 s
      n=$(( $(fds) - fd0 )); [ "$n" -gt "$best" ] && { best=$n; stall=0; } || stall=$((stall + 1))
      [ "$n" -ge "$target" ] && break
      [ $stall -ge 20 ] && break  # no progress for 10 s: that is what the fleet holds
      sleep 0.5
    done
    r1=$(sum_rss "${ROUTER_PIDS[@]}"); n1=$(sum_rss "${NODE_PIDS[@]}"); held=$(( $(fds) - fd0 ))
    kill "${lts[@]}" 2>/dev/null || true; wait "${lts[@]}" 2>/dev/null || true
    {
      echo
      echo "(d) idle: $held of $target connections held at once through $routers routers and $nodes nodes ($shards loadtest shards);"
      echo "router memory $(( (r1 - r0) * 1024 / (held > 0 ? held : 1) )) bytes per connection ($(( r1 / 1024 )) MiB in all), node memory $(( (n1 - n0) * 1024 / (held > 0 ? held : 1) )) bytes per connection ($(( n1 / 1024 )) MiB in all)."
    } | tee -a "$OUT/scale.md"
    fleet_stop
    ;;
  esac
done
[ -f "$OUT/scale-b.txt" ] && cat "$OUT/scale-b.txt" >>"$OUT/scale.md" && rm -f "$OUT/scale-b.txt"
