#!/usr/bin/env bash
# Archived messages per second into PostgreSQL, by batch size: fills the Redis archive
# queue with N message entries (as nodes write them), starts one archiver, and times it
# until /metrics says every entry is in the database. Needs redis-server and Debian's
# postgresql-15 (initdb/pg_ctl run as the postgres user when root).
#   bench/archive.sh [N] [BATCH...]      (default: 50000 entries; batches 50 200 500 2000)
#   PROFILE=debug bench/archive.sh ...   (the dev build: dependencies at opt-level 1)
source "$(dirname "$0")/lib.sh"
N=${1:-50000}; shift || true
BATCHES=("${@:-50 200 500 2000}")
if [ "${PROFILE:-release}" = debug ]; then
  BIN="$ROOT/target/debug"
  (cd "$ROOT" && cargo build --quiet --bin archiver)
else
  EXTRA_BINS="--bin archiver" build
fi
read -r RPORT PPORT MPORT <<<"$(free_ports 3)"
start_postgres "$PPORT"
start_redis "$RPORT"
echo "# $(machine)"
echo "# $N entries, frames of about 110 bytes, 200 rooms, 4 shards, one archiver (${PROFILE:-release} build), PostgreSQL 15 on loopback (default settings, fsync on)"
echo "| batch | seconds | messages/s |"
echo "| --- | --- | --- |"
for B in ${BATCHES[@]}; do
  redis-cli -p "$RPORT" flushall >/dev/null
  "${AS[@]}" "$PG/psql" -q -h 127.0.0.1 -p "$PPORT" -U postgres -c "DROP TABLE IF EXISTS messages, rooms, markers, _sqlx_migrations" >/dev/null 2>&1
  python3 - "$N" <<'PY' | redis-cli -p "$RPORT" --pipe >/dev/null
import sys
n = int(sys.argv[1])
def cmd(*a):
    out = [f"*{len(a)}\r\n"]
    for x in a:
        b = str(x).encode()
        out.append(f"${len(b)}\r\n{x}\r\n")
    return "".join(out)
w = sys.stdout.write
for i in range(n):
    room = f"room-{i % 200}"
    shard = i % 4
    frame = '{"type":"message","room":"%s","from":"ann","seq":%d,"ts":1700000000000,"body":{"text":"hello %d"}}' % (room, i, i)
    w(cmd("XADD", "roomfleet:archive:{%d}" % shard, "*", "k", "m", "room", room, "epoch", "e1", "seq", i, "f", frame))
PY
  t0=$(date +%s.%N)
  pid=$(start "archiver-$B" "$BIN/archiver" --queue "redis://127.0.0.1:$RPORT" --db "postgres://postgres@127.0.0.1:$PPORT/postgres" --batch "$B" --metrics "127.0.0.1:$MPORT")
  wait_http "http://127.0.0.1:$MPORT/healthz"
  for _ in $(seq 6000); do
    done_n=$(metric "http://127.0.0.1:$MPORT/metrics" archiver_inserted_total || echo 0)
    [ "${done_n%.*}" -ge "$N" ] 2>/dev/null && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  kill "$pid"; wait_exit "$pid"
  awk -v b="$B" -v n="$N" -v a="$t0" -v z="$t1" 'BEGIN { s = z - a; printf "| %d | %.2f | %.0f |\n", b, s, n / s }'
done
