#!/usr/bin/env bash
# Issue 12 benchmark: what identity and TLS cost an upgrade. One fleet per variant (a router
# and two ws-nodes on 127.0.0.1): auth off over plain TCP, HS256 tokens, ES256 tokens, TLS
# on the router's listener (auth off), TLS with HS256, and TLS from the router to the nodes
# too (--node-tls-ca). For each: upgrades per second (connections opened as fast as 200 in
# flight allow, each with a token minted for it, then closed), connect latency, and router,
# node and client CPU per upgrade. Variants run interleaved, ROUNDS times; each column of
# the table is the median over the rounds. Test keys and certificates come from openssl
# into bench/out/auth/. Writes bench/out/auth.md. Usage: bench/auth.sh [quick]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router" build
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
QUICK=${1:-}
UP=${UP:-5000}; ROUNDS=${ROUNDS:-5}
[ "$QUICK" = quick ] && { UP=500; ROUNDS=1; }
K="$OUT/auth"; mkdir -p "$K"

# Keys: an HS256 secret, an ES256 key pair, a CA and a certificate for localhost/127.0.0.1.
openssl rand -hex 32 >"$K/hs256.secret"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$K/es256.key" 2>/dev/null
openssl pkey -in "$K/es256.key" -pubout -out "$K/es256.pub" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=roomfleet-bench-ca -keyout "$K/ca.key" -out "$K/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$K/tls.key" -out "$K/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$K/leaf.ext"
openssl x509 -req -in "$K/tls.csr" -CA "$K/ca.pem" -CAkey "$K/ca.key" -CAcreateserial \
  -days 1 -extfile "$K/leaf.ext" -out "$K/tls.pem" 2>/dev/null
openssl rand -hex 32 >"$K/hop.secret"; HOP=(--hop-secret "$K/hop.secret")

# fleet NAME BASEPORT [router flags] -- [node flags]: a router on BASEPORT (admin +1) and
# nodes on +2 and +3; their pids in ROUTER_PID[NAME] and NODE_PIDS[NAME].
declare -A ROUTER_PID NODE_PIDS PORT
fleet() {
  local name=$1 base=$2; shift 2
  local rflags=() nflags=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do rflags+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  nflags=("$@")
  local pids="" i
  for i in 2 3; do
    pids+=" $(start "auth-$name-node$i" "$BIN/ws-node" --listen "127.0.0.1:$((base + i))" \
      --node-id "node-$i" "${nflags[@]}")"
  done
  for i in 2 3; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((base + i))") 2>/dev/null && break; sleep 0.1; done
  done
  ROUTER_PID[$name]=$(start "auth-$name-router" "$BIN/router" --api 127.0.0.1:0 --listen "127.0.0.1:$base" \
    --admin "127.0.0.1:$((base + 1))" --node "node-2=127.0.0.1:$((base + 2))" \
    --node "node-3=127.0.0.1:$((base + 3))" "${rflags[@]}")
  NODE_PIDS[$name]=$pids
  PORT[$name]=$base
  wait_http "http://127.0.0.1:$((base + 1))/readyz"
}

fleet plain 17300
fleet hs256 17310 --jwt-key "$K/hs256.secret" "${HOP[@]}" -- --jwt-key "$K/hs256.secret" "${HOP[@]}"
fleet es256 17320 --jwt-key "$K/es256.pub" "${HOP[@]}" -- --jwt-key "$K/es256.pub" "${HOP[@]}"
fleet tls 17330 --tls-cert "$K/tls.pem" --tls-key "$K/tls.key"
fleet tls-hs256 17340 --tls-cert "$K/tls.pem" --tls-key "$K/tls.key" --jwt-key "$K/hs256.secret" \
  "${HOP[@]}" -- --jwt-key "$K/hs256.secret" "${HOP[@]}"
fleet tls-nodes 17350 --tls-cert "$K/tls.pem" --tls-key "$K/tls.key" --node-tls-ca "$K/ca.pem" \
  -- --tls-cert "$K/tls.pem" --tls-key "$K/tls.key"

# cpu_of PIDS...: their CPU seconds together.
cpu_of() { local p; for p in "$@"; do cpu_secs "$p"; done | awk '{s += $1} END {print s}'; }

# client flags per variant
client_flags() {
  case $1 in
    plain) echo "--url ws://127.0.0.1:${PORT[$1]}/ws" ;;
    hs256) echo "--url ws://127.0.0.1:${PORT[$1]}/ws --jwt-secret $K/hs256.secret" ;;
    es256) echo "--url ws://127.0.0.1:${PORT[$1]}/ws --jwt-es256-key $K/es256.key" ;;
    tls|tls-nodes) echo "--url wss://localhost:${PORT[$1]}/ws --ca $K/ca.pem" ;;
    tls-hs256) echo "--url wss://localhost:${PORT[$1]}/ws --ca $K/ca.pem --jwt-secret $K/hs256.secret" ;;
  esac
}

VARIANTS=(plain hs256 es256 tls tls-hs256 tls-nodes)
: >"$OUT/auth-rounds.txt"
for round in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    r0=$(cpu_of "${ROUTER_PID[$v]}"); n0=$(cpu_of ${NODE_PIDS[$v]})
    # shellcheck disable=SC2046
    "$BIN/loadtest" $(client_flags "$v") --no-bar --src-ips 127.1.0.2-127.1.0.250 \
      --conns "$UP" --rooms $(( UP / 10 )) --rate 0 --warmup 0 --duration 0 \
      --connect-rate 1000000 --max-inflight 200 --prefix "auth-$v-$round" \
      --json "$OUT/auth-$v-$round.json" >"$OUT/auth-$v-$round.log" 2>&1 || true
    r1=$(cpu_of "${ROUTER_PID[$v]}"); n1=$(cpu_of ${NODE_PIDS[$v]})
    python3 - "$OUT/auth-$v-$round.json" "$v" "$r0" "$r1" "$n0" "$n1" "$UP" >>"$OUT/auth-rounds.txt" <<'PY'
import json, sys
f, v, r0, r1, n0, n1, up = sys.argv[1:]
r = json.load(open(f))
c = r["connect"]
ups = c["connected"] / max(r["wall_s"], 1e-9)
print(json.dumps({"v": v, "ups": ups, "ok": c["connected"], "failed": c["failed"],
  "failures": c["failures"], "p50": c["latency_us"]["p50"], "p99": c["latency_us"]["p99"],
  "router_us": (float(r1) - float(r0)) * 1e6 / int(up), "node_us": (float(n1) - float(n0)) * 1e6 / int(up),
  "client_us": r["cpu"]["total_s"] * 1e6 / int(up)}))
PY
    tail -1 "$OUT/auth-rounds.txt"
  done
done

python3 - "$OUT/auth-rounds.txt" "$UP" "$ROUNDS" "$(machine)" >"$OUT/auth.md" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
up, rounds, machine = sys.argv[2], sys.argv[3], sys.argv[4]
names = {"plain": "plain, auth off", "hs256": "HS256 tokens", "es256": "ES256 tokens",
  "tls": "TLS, auth off", "tls-hs256": "TLS + HS256 tokens", "tls-nodes": "TLS to the router and to the nodes, auth off"}
print(f"machine: {machine}\n")
print(f"{up} upgrades per variant and round, {rounds} rounds interleaved; each column is the median over the rounds.\n")
print("| variant | upgrades/s (median) | all rounds | connect p50 / p99 ms | router CPU µs/upgrade | nodes CPU µs/upgrade | loadtest CPU µs/upgrade | failed |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
base = None
for v in names:
    rs = [r for r in rows if r["v"] == v]
    if not rs:
        continue
    med = lambda k: statistics.median(r[k] for r in rs)
    ups = med("ups")
    base = base or ups
    allr = " / ".join(f"{r['ups']:,.0f}" for r in rs)
    failed = sum(r["failed"] for r in rs)
    print(f"| {names[v]} | {ups:,.0f} ({ups / base * 100:.0f}%) | {allr} | {med('p50')/1000:.0f} / {med('p99')/1000:.0f} | {med('router_us'):.0f} | {med('node_us'):.0f} | {med('client_us'):.0f} | {failed} |")
PY
cat "$OUT/auth.md"
