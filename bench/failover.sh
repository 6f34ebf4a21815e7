#!/usr/bin/env bash
# Issue 11 benchmark: failover after a SIGKILL. Redis, three ws-nodes registered in it, a
# router with --discovery redis, CONNS members in ROOMS rooms through the router; then the
# node holding the most members is SIGKILLed and its members reconnect at once. Reports the
# time from each one's first reconnect attempt to its new `welcome` on the fallback node.
# Writes bench/out/failover.md. Usage: bench/failover.sh [quick]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
node --experimental-websocket -e 'new WebSocket("ws://127.0.0.1:1").onerror=()=>{}' 2>/dev/null \
  || { echo "needs Node.js 20.10 or later (global WebSocket)" >&2; exit 1; }
CONNS=${CONNS:-2000}; ROOMS=${ROOMS:-200}
[ "${1:-}" = quick ] && { CONNS=200; ROOMS=20; }
RPORT=${RPORT:-16390}; BASE=${BASE:-17100}; RT=${RT:-18100}
REDIS="redis://127.0.0.1:$RPORT"

start redis redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
for i in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
declare -A PID
for i in 0 1 2; do
  port=$((BASE + i))
  PID[n$i]=$(start "failover-n$i" "$BIN/ws-node" --listen "127.0.0.1:$port" --node-id "n$i" \
    --redis "$REDIS" --advertise "127.0.0.1:$port" --max-connections 19000)
  wait_http "http://127.0.0.1:$port/healthz"
done
ROUTER=$(start failover-router "$BIN/router" --listen "127.0.0.1:$RT" --admin "127.0.0.1:$((RT + 1))" \
  --discovery redis --redis "$REDIS" --max-connections-per-ip 0)
for i in $(seq 100); do
  n=$(curl -fsS "http://127.0.0.1:$((RT + 1))/admin/ring" | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["healthy"] and not n["draining"] and n["share"] > 0))' 2>/dev/null || echo 0)
  [ "$n" = 3 ] && break; sleep 0.1
done

FIFO="$OUT/failover.fifo"; rm -f "$FIFO"; mkfifo "$FIFO"
URL="ws://127.0.0.1:$RT/ws" CONNS=$CONNS ROOMS=$ROOMS \
  node --experimental-websocket "$ROOT/bench/failover/clients.mjs" >"$FIFO" 2>"$OUT/failover-clients.log" &
CLIENTS=$!
exec 3<"$FIFO"
read -r -t 60 line <&3 || { echo "clients never got ready" >&2; exit 1; }
echo "$line"
victim=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["nodes"]; print(max(d, key=d.get))' "$line")
kill -KILL "${PID[$victim]}"
read -r -t 60 result <&3 || { echo "no result" >&2; exit 1; }
echo "cpu s: clients $(cpu_secs "$CLIENTS") router $(cpu_secs "$ROUTER") n0 $(cpu_secs "${PID[n0]}") n2 $(cpu_secs "${PID[n2]}")" | tee "$OUT/failover-cpu.txt"
wait "$CLIENTS" || true
rm -f "$FIFO"
echo "$result"
python3 - "$line" "$result" "$victim" "$CONNS" "$ROOMS" <<'PY' | tee "$OUT/failover.md"
import json, sys
ready, r, victim, conns, rooms = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"| {conns} members / {rooms} rooms | {victim}: {ready['nodes'][victim]} members | {r['back']} of {r['dropped']} back | {r['attempts']} attempts | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |")
PY
