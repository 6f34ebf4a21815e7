#!/usr/bin/env bash
# Issue 14 benchmark: the server API and the Redis inbox. A router (--inbox) in front of
# three ws-nodes on one redis-server, all on loopback. `loadtest api` puts 3 members in each
# of 30 rooms (10 of them spread over the three nodes, so they span; the other 20 behind the
# router on their owner), then publishes for DUR seconds through POST /api/rooms/{room}/publish
# (N calls in flight) and for DUR seconds through XADD {prefix}:inbox (N entries not yet
# delivered at most), for each N in INFLIGHT. Writes bench/out/api.md and api-N.json.
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
DUR=${DUR:-10}
INFLIGHT=${INFLIGHT:-4 32 256}
read -r RPORT LPORT APORT PPORT N1 N2 N3 <<<"$(free_ports 7)"
start redis redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
for i in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS="redis://127.0.0.1:$RPORT"
nodes=()
for n in a b c; do
  port=$(case $n in a) echo "$N1";; b) echo "$N2";; c) echo "$N3";; esac)
  start "api-node-$n" "$BIN/ws-node" --listen "127.0.0.1:$port" --node-id "node-$n" --redis "$REDIS" >/dev/null
  wait_http "http://127.0.0.1:$port/healthz"
  nodes+=("--node" "node-$n=127.0.0.1:$port")
done
start api-router "$BIN/router" --listen "127.0.0.1:$LPORT" --admin "127.0.0.1:$APORT" --api "127.0.0.1:$PPORT" \
  --redis "$REDIS" --inbox "${nodes[@]}" >/dev/null
wait_http "http://127.0.0.1:$APORT/healthz"
for i in $(seq 100); do [ "$(ring_ready "http://127.0.0.1:$APORT")" = 3 ] && break; sleep 0.1; done

lt() {
  "$BIN/loadtest" api --url "ws://127.0.0.1:$LPORT/ws" \
    --node-url "ws://127.0.0.1:$N1/ws,ws://127.0.0.1:$N2/ws,ws://127.0.0.1:$N3/ws" \
    --api "127.0.0.1:$PPORT" --rooms 30 --spanning 10 --members 3 \
    --duration "$DUR" "$@"
}
{
  echo "machine: $(machine); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "command: DUR=$DUR INFLIGHT='$INFLIGHT' bench/api.sh"
  for n in $INFLIGHT; do
    echo
    echo "in flight: $n (loadtest api --rooms 30 --spanning 10 --members 3 --concurrency $n --window $n --duration $DUR)"
    lt --redis "$REDIS" --concurrency "$n" --window "$n" --prefix "api$n" --json "$OUT/api-$n.json"
  done
  # What idempotency costs over Redis: the owner reads and writes the id's mark per publish.
  echo
  echo "in flight: 32, HTTP publishes without an id (loadtest api ... --concurrency 32 --without-ids, no inbox phase)"
  lt --concurrency 32 --prefix api32n --without-ids --json "$OUT/api-32-noid.json"
} | tee "$OUT/api.md"
