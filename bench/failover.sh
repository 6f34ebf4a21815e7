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
ROUTER=$(start failover-router "$BIN/router" --api 127.0.0.1:0 --listen "127.0.0.1:$RT" --admin "127.0.0.1:$((RT + 1))" \
  --discovery redis --redis "$REDIS" --max-connections-per-ip 0)
for i in $(seq 100); do
  n=$(ring_ready "http://127.0.0.1:$((RT + 1))")
  [ "$n" = 3 ] && break; sleep 0.1
done

# The load client is Node.js, one core each: PROCS processes share the members.
PROCS=${PROCS:-2}
CLIENT_PIDS=()
for p in $(seq 0 $((PROCS - 1))); do
  fifo="$OUT/failover-$p.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  URL="ws://127.0.0.1:$RT/ws" CONNS=$((CONNS / PROCS)) FIRST=$((p * CONNS / PROCS)) ROOMS=$ROOMS \
    node --experimental-websocket "$ROOT/bench/failover/clients.mjs" >"$fifo" 2>"$OUT/failover-clients-$p.log" &
  CLIENT_PIDS+=($!)
  exec {fd}<"$fifo"; FDS[$p]=$fd
done
READY=()
for p in $(seq 0 $((PROCS - 1))); do
  read -r -t 60 l <&"${FDS[$p]}" || { echo "clients never got ready" >&2; exit 1; }
  READY+=("$l")
done
line=$(python3 -c 'import json,sys
by={}
for l in sys.argv[1:]:
    for k,v in json.loads(l)["nodes"].items(): by[k]=by.get(k,0)+v
print(json.dumps({"nodes": by}))' "${READY[@]}")
echo "$line"
victim=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1])["nodes"]; print(max(d, key=d.get))' "$line")
kill -KILL "${PID[$victim]}"
RESULTS=()
for p in $(seq 0 $((PROCS - 1))); do
  read -r -t 60 r <&"${FDS[$p]}" || { echo "no result" >&2; exit 1; }
  RESULTS+=("$r")
done
client_cpu=$(python3 -c 'import json,sys; print(round(sum(json.loads(l)["cpu_s"] for l in sys.argv[1:]), 2))' "${RESULTS[@]}")
echo "cpu s: clients $client_cpu router $(cpu_secs "$ROUTER") n0/n1/n2 survivors: $(for n in n0 n1 n2; do [ "$n" = "$victim" ] || echo -n "$(cpu_secs "${PID[$n]}") "; done)" | tee "$OUT/failover-cpu.txt"
wait "${CLIENT_PIDS[@]}" || true
rm -f "$OUT"/failover-*.fifo
result=$(python3 -c 'import json,sys
back=[];dropped=0;attempts=0
for l in sys.argv[1:]:
    r=json.loads(l); back+=r["back_ms"]; dropped+=r["dropped"]; attempts+=r["attempts"]
back.sort(); q=lambda p: back[min(len(back)-1,int(p*len(back)))]
print(json.dumps({"dropped":dropped,"back":len(back),"attempts":attempts,"p50_ms":q(0.5),"p99_ms":q(0.99),"max_ms":back[-1]}))' "${RESULTS[@]}")
echo "$result"
python3 - "$line" "$result" "$victim" "$CONNS" "$ROOMS" <<'PY' | tee "$OUT/failover.md"
import json, sys
ready, r, victim, conns, rooms = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"| {conns} members / {rooms} rooms | {victim}: {ready['nodes'][victim]} members | {r['back']} of {r['dropped']} back | {r['attempts']} attempts | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |")
PY
