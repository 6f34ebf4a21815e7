#!/usr/bin/env bash
# Issue 13 benchmark: chaos under load with history and resume. Its own redis-server, three
# ws-nodes with --redis (and --durable-ack), two routers with --discovery redis. loadtest
# --reconnect chats through the routers (24 rooms x 4 members, 20 msgs/s a room; each router
# carries half the rooms) and straight at the nodes (8 rooms x 6 members, two on every node,
# so these rooms span all three), while every node is restarted in turn (SIGTERM, wait for
# the exit, start, wait until ready and every client is back) and then the node holding the
# most members is SIGKILLed and restarted. Reports loss, duplicates, reorder, recovered and
# not-recovered welcomes and time to re-home; then, in separate short runs without faults,
# Redis commands per published message (INFO commandstats deltas, idle background
# subtracted) for one-node rooms only and for spanning rooms only. Runs once with
# --durable-ack and once without (MODES="durable plain"). Writes bench/out/chaos.md.
# Usage: bench/chaos.sh [quick]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
MODES=${MODES:-durable plain}
DUR=${DUR:-70}; SHORT=${SHORT:-10}
[ "${1:-}" = quick ] && { DUR=55; SHORT=4; MODES=durable; }
ROUTED=96; SPAN=48; TOTAL=$((ROUTED + SPAN))

# Everything bounded: each wait has a limit and fails the script when it passes.
wait_for() { # SECONDS WHAT CMD...: until CMD succeeds
  local t=$1 what=$2 i; shift 2
  for ((i = 0; i < t * 10; i++)); do "$@" && return 0; sleep 0.1; done
  echo "timed out after ${t}s waiting for $what" >&2; return 1
}
conns_total() {
  local t=0 i v
  for i in 0 1 2; do
    v=$(metric "http://127.0.0.1:${NPORT[$i]}/metrics" wsnode_connections 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo $t
}
conns_are() { [ "$(conns_total)" -eq "$1" ]; }
rings_are() { [ "$(ring_ready "http://127.0.0.1:${RA[0]}")" = "$1" ] && [ "$(ring_ready "http://127.0.0.1:${RA[1]}")" = "$1" ]; }
redis_up() { redis-cli -p "$RPORT" ping >/dev/null 2>&1; }
node_ready() { curl -fsS -o /dev/null "http://127.0.0.1:${NPORT[$1]}/readyz" 2>/dev/null; }

node_start() { # I: (re)start node nI on its port
  local i=$1
  RUNS[$i]=$((${RUNS[$i]:-0} + 1))
  PID[$i]=$(start "chaos-$MODE-n$i-${RUNS[$i]}" "$BIN/ws-node" --listen "127.0.0.1:${NPORT[$i]}" \
    --node-id "n$i" --redis "redis://127.0.0.1:$RPORT" --advertise "127.0.0.1:${NPORT[$i]}" \
    --publish-rate 1000 --publish-burst 1000 --history-size 1000 \
    --deregister-wait 1 --drain-window 1 --shutdown-grace 3 $DURABLE)
  wait_for 20 "n$i ready" node_ready "$i"
}

fleet_up() {
  read -r RPORT NPORT[0] NPORT[1] NPORT[2] RT[0] RA[0] RT[1] RA[1] <<<"$(free_ports 8)"
  start "chaos-$MODE-redis" redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
  wait_for 10 redis redis_up
  RUNS=()
  for i in 0 1 2; do node_start $i; done
  for j in 0 1; do
    ROUTER[$j]=$(start "chaos-$MODE-router$j" "$BIN/router" --api 127.0.0.1:0 --listen "127.0.0.1:${RT[$j]}" \
      --admin "127.0.0.1:${RA[$j]}" --discovery redis --redis "redis://127.0.0.1:$RPORT" \
      --max-connections-per-ip 0)
  done
  wait_for 20 "both routers placing on 3 nodes" rings_are 3
}

fleet_down() {
  local p
  for p in "${PID[@]}" "${ROUTER[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PID[@]}" "${ROUTER[@]}"; do wait_exit "$p" 30 || kill -KILL "$p" 2>/dev/null || true; done
  redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
}

# load NAME SECONDS EXTRA...: the routed rooms (2 shards, one per router) and the spanning
# rooms (3 shards, one per node) in the background; pids in LOADS.
load() {
  local name=$1 secs=$2 k; shift 2
  LOADS=()
  lt() { "$BIN/loadtest" --no-bar --warmup 2 --duration "$secs" --drain 10 --connect-rate 500 "$@"; }
  if [ "$WHICH" != span ]; then
    for k in 0 1; do
      lt --url "ws://127.0.0.1:${RT[$k]}/ws" --conns $ROUTED --rooms 24 --senders 1 --rate 20 \
        --prefix "r$name" --shard "$k/2" --json "$OUT/chaos-$name-r$k.json" "$@" >"$OUT/chaos-$name-r$k.log" 2>&1 &
      LOADS+=($!)
    done
  fi
  if [ "$WHICH" != routed ]; then
    for k in 0 1 2; do
      lt --url "ws://127.0.0.1:${NPORT[$k]}/ws" --conns $SPAN --rooms 8 --senders 3 --rate 6.667 \
        --prefix "s$name" --shard "$k/3" --json "$OUT/chaos-$name-s$k.json" "$@" >"$OUT/chaos-$name-s$k.log" 2>&1 &
      LOADS+=($!)
    done
  fi
}
load_wait() { local p rc=0; for p in "${LOADS[@]}"; do wait "$p" || rc=1; done; return $rc; }

cmdstats() { redis-cli -p "$RPORT" info commandstats >"$1"; }
# per_message BEFORE AFTER IDLE_BEFORE IDLE_AFTER IDLE_S RUN_S PUBLISHED LABEL: one table row.
per_message() {
  python3 - "$@" <<'PY'
import re, sys
def calls(path):
    out = {}
    for line in open(path):
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m and m.group(1) not in ("info", "ping"):
            out[m.group(1)] = int(m.group(2))
    return out
b, a, ib, ia = (calls(p) for p in sys.argv[1:5])
idle_s, run_s, published, label = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
idle = {k: (ia.get(k, 0) - ib.get(k, 0)) / idle_s for k in set(ia) | set(ib)}
delta = {k: a.get(k, 0) - b.get(k, 0) - idle.get(k, 0) * run_s for k in set(a) | set(b)}
total = sum(delta.values())
top = sorted(((v, k) for k, v in delta.items() if v / published >= 0.005), reverse=True)
parts = ", ".join(f"{k.upper()} {v / published:.2f}" for v, k in top)
print(f"| {label} | {published} | {total / published:.2f} | {parts} | {sum(idle.values()):.1f} |")
PY
}

summary() { # JSON LABEL: one row of the chaos table
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["check"]; w = c.get("resumes") or {}; x = r.get("reconnect") or {}
h = x.get("rehome_us", {})
f = " ".join(f"{k}={v}" for k, v in sorted((x.get("failures") or {}).items())) or "-"
print(f"| {sys.argv[2]} | {r['published']} | {r['acked']} | {c['loss']} | {c['duplicate']} | {c['reorder']} | "
      f"{c['unacked']} | {w.get('recovered', 0)} | {w.get('not_recovered', 0)} | {w.get('not_back', 0)} | "
      f"{h.get('p50', 0) / 1000:.0f} | {h.get('p99', 0) / 1000:.0f} | {h.get('max', 0) / 1000:.0f} | {f} |")
PY
}

{
  echo "machine: $(machine)"
  echo
} | tee "$OUT/chaos.md"
ROWS=(); COST=(); TIMES=()
for MODE in $MODES; do
  DURABLE=""; [ "$MODE" = durable ] && DURABLE=--durable-ack
  fleet_up
  # 1. Chaos under load.
  WHICH=all load "$MODE" "$DUR" --reconnect
  t0=$(date +%s.%N)
  wait_for 30 "every client connected" conns_are $TOTAL
  sleep 3 # warmup (2 s) passed: messages are flowing
  for i in 0 1 2; do
    s=$(date +%s.%N)
    kill -TERM "${PID[$i]}"
    wait_exit "${PID[$i]}" 30
    node_start "$i"
    wait_for 30 "routers placing on n$i again" rings_are 3
    wait_for 40 "every client back after restarting n$i" conns_are $TOTAL
    TIMES+=("$MODE restart n$i: $(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')") s until every client was back")
  done
  victim=0; most=-1
  for i in 0 1 2; do
    v=$(metric "http://127.0.0.1:${NPORT[$i]}/metrics" wsnode_connections 2>/dev/null || true); v=${v:-0}
    [ "$v" -gt "$most" ] && { most=$v; victim=$i; }
  done
  s=$(date +%s.%N)
  kill -KILL "${PID[$victim]}"
  wait_exit "${PID[$victim]}" 10
  # Its routed members come back on the others; its direct (spanning) members wait for it.
  wait_for 40 "routed members of n$victim re-homed" conns_are $((TOTAL - SPAN / 3))
  node_start "$victim"
  wait_for 40 "every client back after the SIGKILL of n$victim" conns_are $TOTAL
  TIMES+=("$MODE SIGKILL n$victim ($most members): $(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')") s until every client was back")
  chaos_s=$(python3 -c "print($(date +%s.%N) - $t0)")
  # The faults must fall inside the publishing (warmup 2 s + DUR), or part of them went unseen.
  python3 -c "import sys; sys.exit(0 if $chaos_s < $DUR else 1)" \
    || echo "warning: the chaos took ${chaos_s}s, longer than the publishing (DUR=$DUR)" | tee -a "$OUT/chaos.md"
  load_wait || true
  "$BIN/loadtest" merge "$OUT/chaos-$MODE-r0.json" "$OUT/chaos-$MODE-r1.json" --json "$OUT/chaos-$MODE-routed.json" >"$OUT/chaos-$MODE-routed.txt" || true
  "$BIN/loadtest" merge "$OUT"/chaos-"$MODE"-s{0,1,2}.json --json "$OUT/chaos-$MODE-span.json" >"$OUT/chaos-$MODE-span.txt" || true
  ROWS+=("$(summary "$OUT/chaos-$MODE-routed.json" "$MODE: 24 one-node rooms via 2 routers")")
  ROWS+=("$(summary "$OUT/chaos-$MODE-span.json" "$MODE: 8 rooms spanning 3 nodes (direct)")")

  # 2. Redis commands per published message, no faults: idle background, then each kind alone.
  cmdstats "$OUT/cs-$MODE-i0"; sleep 5; cmdstats "$OUT/cs-$MODE-i1"
  for WHICH in routed span; do
    cmdstats "$OUT/cs-$MODE-$WHICH-0"; s=$(date +%s.%N)
    load "$MODE$WHICH" "$SHORT"
    load_wait || echo "warning: $MODE $WHICH cost run was not clean" | tee -a "$OUT/chaos.md"
    cmdstats "$OUT/cs-$MODE-$WHICH-1"; run_s=$(python3 -c "print($(date +%s.%N) - $s)")
    pub=$(python3 -c 'import json,sys; print(sum(json.load(open(f))["published"] for f in sys.argv[1:]))' \
      "$OUT"/chaos-"$MODE$WHICH"-[rs]?.json)
    label="$MODE: $([ $WHICH = routed ] && echo "24 one-node rooms" || echo "8 rooms spanning 3 nodes")"
    COST+=("$(per_message "$OUT/cs-$MODE-$WHICH-0" "$OUT/cs-$MODE-$WHICH-1" "$OUT/cs-$MODE-i0" "$OUT/cs-$MODE-i1" 5 "$run_s" "$pub" "$label")")
  done
  fleet_down
done

{
  echo "| run | published | acked | loss | dup | reorder | unacked | recovered | not recovered | not back | re-home p50 ms | p99 ms | max ms | failed attempts |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  printf -- '- %s\n' "${TIMES[@]}"
  echo
  echo "| Redis commands, no faults | published | commands per published message | by command (per message) | idle background, commands/s |"
  echo "| --- | --- | --- | --- | --- |"
  printf '%s\n' "${COST[@]}"
} | tee -a "$OUT/chaos.md"
