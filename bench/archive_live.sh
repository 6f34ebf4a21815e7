#!/usr/bin/env bash
# The live path with the archive off and on, in one run: scenario (a) of docs/benchmarks.md
# (2,000 connections in 200 rooms of 10, 1 msg/s each, one router and 3 nodes sharing a
# Redis) twice, first with no room archived, then with every room archived (--archive)
# through the Redis queue into PostgreSQL by one archiver. Reports each run's p50/p99/max
# and loss, the servers' CPU, the archiver's largest lag during the run (entries and
# seconds, sampled every 0.5 s from its /metrics), how long it took to drain after the load
# stopped, and that every published message is archived. Release builds; needs
# redis-server and Debian's postgresql-15.
#   bench/archive_live.sh            (DUR=20 seconds of load per run; BATCH=500; ROUNDS=2
#                                     of off then on)
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router --bin archiver" build
DUR=${DUR:-20}
BATCH=${BATCH:-500}
read -r RPORT PPORT MPORT PORT APORT N0 N1 N2 <<<"$(free_ports 8)"
NODES=("$N0" "$N1" "$N2")
start_postgres "$PPORT"
DB="postgres://postgres@127.0.0.1:$PPORT/postgres"
psql_n() { "$PG/psql" -tA -h 127.0.0.1 -p "$PPORT" -U postgres -c "$1" 2>/dev/null || echo 0; }
sum_cpu() { python3 -c "import sys; print(sum(float(x) for x in sys.argv[1:]))" $(for p in "$@"; do cpu_secs "$p"; done); }

# run NAME NODE_ARGS...: one scenario (a) run; prints one table row.
run() {
  local name=$1; shift
  redis-cli -p "$RPORT" flushall >/dev/null 2>&1 || true
  local pids=() args=() i
  for i in 0 1 2; do
    pids+=("$(start "alive-$name-node-$i" "$BIN/ws-node" --listen "127.0.0.1:${NODES[$i]}" --node-id "node-$i" \
      --redis "redis://127.0.0.1:$RPORT" --publish-rate 100000 --publish-burst 100000 --outbound-queue 4096 "$@")")
    args+=(--node "node-$i=127.0.0.1:${NODES[$i]}")
  done
  for i in 0 1 2; do wait_http "http://127.0.0.1:${NODES[$i]}/readyz" 30; done
  pids+=("$(start "alive-$name-router" "$BIN/router" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$APORT" "${args[@]}")")
  wait_http "http://127.0.0.1:$APORT/readyz" 30
  local before; before=$(psql_n "SELECT COUNT(*) FROM messages")
  local c0; c0=$(sum_cpu "${pids[@]}")
  : >"$OUT/alive-$name.lag"
  ( for _ in $(seq $((DUR * 2 + 20))); do
      e=$(metric "http://127.0.0.1:$MPORT/metrics" archiver_lag_entries 2>/dev/null || echo 0)
      m=$(metric "http://127.0.0.1:$MPORT/metrics" archiver_lag_seconds 2>/dev/null || echo 0)
      echo "${e:-0} ${m:-0}" >>"$OUT/alive-$name.lag"; sleep 0.5
    done ) &
  local sampler=$!
  "$BIN/loadtest" --no-bar --url "ws://127.0.0.1:$PORT/ws" --src-ips 127.0.0.2-127.0.0.254 --conns 2000 --rooms 200 \
    --senders 10 --rate 1 --duration "$DUR" --prefix "al$name" --json "$OUT/alive-$name.json" >"$OUT/alive-$name.log" || true
  local c1; c1=$(sum_cpu "${pids[@]}")
  # How long the archive takes to hold everything once the load stopped.
  local published; published=$(json_get "$OUT/alive-$name.json" published)
  local t0; t0=$(date +%s.%N) drained="-" got=0
  if [ "$name" = on ]; then
    for _ in $(seq 600); do
      got=$(( $(psql_n "SELECT COUNT(*) FROM messages") - before ))
      [ "$got" -ge "$published" ] && break
      sleep 0.1
    done
    drained=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  fi
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true
  python3 - "$OUT/alive-$name.json" "$name" "$(python3 -c "print(f'{$c1-$c0:.1f}')")" "$OUT/alive-$name.lag" "$drained" "$got" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["check"]; l = r["latency_us"]
lag = [tuple(float(x) for x in line.split()) for line in open(sys.argv[4]) if len(line.split()) == 2]
le = max((e for e, _ in lag), default=0); lm = max((m for _, m in lag), default=0)
archived = sys.argv[6] if sys.argv[2] == "on" else "-"
print(f"| archive {sys.argv[2]} | {r['connect']['connected']} | {r['published']} | {r['deliveries_per_s']:.0f} | "
      f"{l['p50']/1000:.2f} | {l['p99']/1000:.2f} | {l['max']/1000:.1f} | {c['loss']}/{c['duplicate']}/{c['reorder']} | "
      f"{sys.argv[3]} | {le:.0f} / {lm:.2f} s | {sys.argv[5]} | {archived} |")
PY
}

start_redis "$RPORT"
ARCH=$(start archiver "$BIN/archiver" --queue "redis://127.0.0.1:$RPORT" --db "$DB" --batch "$BATCH" --metrics "127.0.0.1:$MPORT")
wait_http "http://127.0.0.1:$MPORT/healthz" 30
echo "# $(machine)"
echo "# scenario (a): 2,000 conns / 200 rooms / 1 msg/s each for ${DUR} s, router + 3 nodes + Redis; archive: 1 archiver (--batch $BATCH) into PostgreSQL 15 (fsync on)"
echo "| run | connected | published | deliveries/s | p50 ms | p99 ms | max ms | loss/dup/reorder | router+nodes CPU s | largest lag (entries / age) | drained after load s | archived |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
a0=$(cpu_secs "$ARCH")
# Alternated, ROUNDS times, so the machine's drift between runs shows as such.
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
  run off
  run on --archive
done
a1=$(cpu_secs "$ARCH")
echo "# archiver CPU over both runs: $(python3 -c "print(f'{$a1-$a0:.1f}')") s"
