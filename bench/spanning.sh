#!/usr/bin/env bash
# Issue 4 benchmark: what spanning costs. Two ws-nodes on one redis-server.
#  1. latency: 100 rooms all on one node vs the same rooms split over two nodes;
#  2. Redis PUBLISH per delivered message with 1,000 rooms of which 10% span,
#     against Socket.IO's Redis adapter (one PUBLISH per broadcast, every room).
# Writes bench/out/spanning.md.
source "$(dirname "$0")/lib.sh"
build
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
RPORT=${RPORT:-16379}
A=17011
B=17012
DUR=${DUR:-10}
start redis redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
for i in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
for n in a b; do
  port=$([ $n = a ] && echo $A || echo $B)
  start "node-$n" "$BIN/ws-node" --listen "127.0.0.1:$port" --node-id "node-$n" \
    --redis "redis://127.0.0.1:$RPORT" --publish-rate 1000 --publish-burst 1000 >/dev/null
  wait_http "http://127.0.0.1:$port/healthz"
done
lt() { "$BIN/loadtest" --no-bar --warmup 2 --duration "$DUR" --connect-rate 3000 "$@"; }
publishes() { redis-cli -p "$RPORT" info commandstats | awk -F'[=,]' '/^cmdstat_publish:/ { n = $2 } END { print n + 0 }'; }
p() { json_get "$1" "latency_us.$2" | awk '{ printf "%.2f", $1 / 1000 }'; }

echo "machine: $(machine)" | tee "$OUT/spanning.md"
# 1. Latency, single node vs spanning (same scenario, every member sends 1/s, two client
#    processes in both cases so only the server path differs). loadtest seats connection i
#    in room i % rooms and a shard takes every second connection, so the room count is odd:
#    with an even one each shard would hold whole rooms and no room would span. The
#    spanning run checks that its rooms did cross Redis.
lt --url "ws://127.0.0.1:$A/ws" --conns 990 --rooms 99 --senders 10 --rate 1 --prefix single \
  --shard 0/2 --json "$OUT/span-single-0.json" >"$OUT/span-single-0.log" &
s0=$!
lt --url "ws://127.0.0.1:$A/ws" --conns 990 --rooms 99 --senders 10 --rate 1 --prefix single \
  --shard 1/2 --json "$OUT/span-single-1.json" >"$OUT/span-single-1.log"
wait $s0
"$BIN/loadtest" merge "$OUT/span-single-0.json" "$OUT/span-single-1.json" --json "$OUT/span-single.json" >/dev/null
before_wide=$(publishes)
lt --url "ws://127.0.0.1:$A/ws" --conns 990 --rooms 99 --senders 10 --rate 1 --prefix wide \
  --shard 0/2 --json "$OUT/span-wide-0.json" >"$OUT/span-wide-0.log" &
w0=$!
lt --url "ws://127.0.0.1:$B/ws" --conns 990 --rooms 99 --senders 10 --rate 1 --prefix wide \
  --shard 1/2 --json "$OUT/span-wide-1.json" >"$OUT/span-wide-1.log"
wait $w0
"$BIN/loadtest" merge "$OUT/span-wide-0.json" "$OUT/span-wide-1.json" --json "$OUT/span-wide.json" >/dev/null
[ "$(publishes)" -gt "$before_wide" ] || { echo "bench/spanning.sh: the spanning run published nothing to Redis: its rooms did not span" >&2; exit 1; }
{
  echo
  echo "| 99 rooms x 10 members, 1 msg/s each | p50 ms | p99 ms | deliveries/s |"
  echo "| --- | --- | --- | --- |"
  echo "| one node (no Redis) | $(p "$OUT/span-single.json" p50) | $(p "$OUT/span-single.json" p99) | $(json_get "$OUT/span-single.json" deliveries_per_s | cut -d. -f1) |"
  echo "| spanning two nodes (Redis) | $(p "$OUT/span-wide.json" p50) | $(p "$OUT/span-wide.json" p99) | $(json_get "$OUT/span-wide.json" deliveries_per_s | cut -d. -f1) |"
} | tee -a "$OUT/spanning.md"

# 2. PUBLISH per delivery: 1,000 rooms x 5 members on node-a; 100 of them also get 2 members
#    on node-b, so 10% of rooms span.
before=$(publishes)
lt --url "ws://127.0.0.1:$A/ws" --conns 5000 --rooms 1000 --senders 1 --rate 1 --prefix mix \
  --json "$OUT/span-mix-a.json" >"$OUT/span-mix-a.log" &
ma=$!
lt --url "ws://127.0.0.1:$B/ws" --conns 200 --rooms 100 --senders 1 --rate 1 --prefix mix \
  --json "$OUT/span-mix-b.json" >"$OUT/span-mix-b.log"
wait $ma
after=$(publishes)
da=$(json_get "$OUT/span-mix-a.json" delivered); db=$(json_get "$OUT/span-mix-b.json" delivered)
pa=$(json_get "$OUT/span-mix-a.json" published); pb=$(json_get "$OUT/span-mix-b.json" published)
python3 - "$before" "$after" "$da" "$db" "$pa" "$pb" <<'PY' | tee -a "$OUT/spanning.md"
import sys
before, after, da, db, pa, pb = map(float, sys.argv[1:])
pubs = after - before
deliv = da + db
msgs = pa + pb
print()
print("| 1,000 rooms, 10% spanning | value |")
print("| --- | --- |")
print(f"| messages published | {msgs:.0f} |")
print(f"| deliveries | {deliv:.0f} |")
print(f"| Redis PUBLISH commands (incl. presence and control) | {pubs:.0f} |")
print(f"| roomfleet: PUBLISH per delivered message | {pubs / deliv:.4f} |")
print(f"| roomfleet: PUBLISH per published message | {pubs / msgs:.3f} |")
print(f"| Socket.IO redis-adapter: PUBLISH per published message (one per broadcast) | 1.000 |")
print(f"| Socket.IO redis-adapter: PUBLISH per delivered message, same rooms | {msgs / deliv:.4f} |")
PY
