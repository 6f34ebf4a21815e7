#!/usr/bin/env bash
# Issue 3 and 17 benchmark: the same ws-node reached directly, through the roomfleet router
# in each of its data paths (proxy with the room and geo policies, same-host handoff over a
# Unix socket, direct connect with GET /connect and a ticket), through nginx (`hash
# $arg_room consistent` + upgrade headers) and through HAProxy (`balance url_param room` +
# `hash-type consistent`), and `fleet up` (router and node in one process, in-process
# handoff), side by side in one run: upgrades per second, message latency, the router's or
# proxy's CPU per upgrade and the node's, and proxy memory per idle connection.
# Writes bench/out/proxies.md. Usage: bench/proxies.sh [quick]
source "$(dirname "$0")/lib.sh"
EXTRA_BINS="--bin router --bin fleet" build
(cd "$ROOT" && cargo build --release --quiet -p geoip --example write_testdb)
for pkg in nginx:nginx-light haproxy:haproxy; do
  command -v "${pkg%%:*}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${pkg##*:}" >/dev/null; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
QUICK=${1:-}
UP=${UP:-3000}; IDLE=${IDLE:-5000}; MSGC=${MSGC:-2000}; DUR=${DUR:-8}
[ "$QUICK" = quick ] && { UP=500; IDLE=500; MSGC=200; DUR=3; }
NODE=17201; ROUTER=17202; ADMIN=17203; NGX=17204; HAP=17205; GEO=17206; GADMIN=17207
HOFF=17208; HADMIN=17209; FLEET=17210; FADMIN=17211
SOCK="$OUT/px-node.sock"

NODE_PID=$(start ws-node "$BIN/ws-node" --listen 127.0.0.1:$NODE --node-id node-a \
  --publish-rate 100000 --publish-burst 100000 --handoff "unix:$SOCK")
wait_http "http://127.0.0.1:$NODE/healthz"
# The same node, handed its clients over its Unix socket by a router of their own.
HOFF_PID=$(start router-handoff "$BIN/router" --api 127.0.0.1:0 --listen 127.0.0.1:$HOFF --admin 127.0.0.1:$HADMIN \
  --node "node-a=127.0.0.1:$NODE,handoff=$SOCK")
wait_http "http://127.0.0.1:$HADMIN/healthz"
# fleet up: a router and one node in one process, clients handed over in process.
FLEET_PID=$(start fleet "$BIN/fleet" up --nodes 1 --listen 127.0.0.1:$FLEET --admin 127.0.0.1:$FADMIN \
  --api 127.0.0.1:$((FADMIN + 1)) --no-archive)
wait_http "http://127.0.0.1:$FADMIN/healthz"
ROUTER_PID=$(start router "$BIN/router" --api 127.0.0.1:0 --listen 127.0.0.1:$ROUTER --admin 127.0.0.1:$ADMIN \
  --node node-a=127.0.0.1:$NODE)
wait_http "http://127.0.0.1:$ADMIN/healthz"
# A geo router over a generated database mapping the load's source range to one country.
"$BIN/examples/write_testdb" "$OUT/bench-geo.mmdb" 127.1.0.0/16=DE 127.2.0.0/16=US
GEO_PID=$(start router-geo "$BIN/router" --api 127.0.0.1:0 --listen 127.0.0.1:$GEO --admin 127.0.0.1:$GADMIN \
  --node node-a=127.0.0.1:$NODE --policy geo --geoip "$OUT/bench-geo.mmdb")
wait_http "http://127.0.0.1:$GADMIN/healthz"

mkdir -p "$OUT/nginx/logs" "$OUT/nginx/tmp"
cat >"$OUT/nginx.conf" <<CONF
user root;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/tmp;
  proxy_temp_path $OUT/nginx/tmp;
  upstream nodes { hash \$arg_room consistent; server 127.0.0.1:$NODE; }
  server {
    listen 127.0.0.1:$NGX backlog=4096;
    location /ws {
      proxy_pass http://nodes;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
CONF
NGINX_PID=$(start nginx "$NGINX" -p "$OUT/nginx" -c "$OUT/nginx.conf" -g 'daemon off;')
cat >"$OUT/haproxy.cfg" <<CONF
global
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$HAP
  default_backend nodes
backend nodes
  balance url_param room
  hash-type consistent
  server node-a 127.0.0.1:$NODE maxconn 9000
CONF
HAP_PID=$(start haproxy "$HAPROXY" -f "$OUT/haproxy.cfg" -db)
for p in $NGX $HAP; do
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

# pid_tree PID: PID and its children (nginx workers).
pid_tree() { echo "$1" $(pgrep -P "$1" || true); }

# cpu_tree PID: CPU seconds of the tree.
cpu_tree() {
  local p
  for p in $(pid_tree "$1"); do cpu_secs "$p"; done | awk '{s += $1} END {print s}'
}

# rss_tree PID: RSS of the tree, KiB.
rss_tree() {
  local total=0 p
  for p in $(pid_tree "$1"); do total=$(( total + $(rss_kib "$p") )); done
  echo $total
}

LT=(--no-bar --src-ips 127.1.0.2-127.1.0.250)
# row NAME PORT [PID [LOADTEST_FLAGS]]: PID is the router's or proxy's (its CPU and memory);
# the node's CPU is read in every row (for `fleet up` it is the same process: "in PID").
row() {
  local name=$1 port=$2 pid=${3:-} extra=(${4:-})
  local url="ws://127.0.0.1:$port/ws"
  # Upgrades per second: connect as fast as possible, hold nothing.
  local c0=0; [ -n "$pid" ] && c0=$(cpu_tree "$pid")
  local n0; n0=$(cpu_secs "$NODE_PID")
  "$BIN/loadtest" "${LT[@]}" "${extra[@]}" --url "$url" --conns "$UP" --rooms $(( UP / 10 )) --rate 0 \
    --warmup 0 --duration 0 --connect-rate 1000000 --max-inflight 200 --prefix "up-$name" \
    --json "$OUT/px-up-$name.json" >"$OUT/px-up-$name.log" 2>&1 || true
  local ups cp50 cp99 cpu="—" ncpu
  [ -n "$pid" ] && cpu=$(awk -v a="$c0" -v b="$(cpu_tree "$pid")" -v n="$UP" 'BEGIN {printf "%.0f", (b - a) * 1e6 / n}')
  ncpu=$(awk -v a="$n0" -v b="$(cpu_secs "$NODE_PID")" -v n="$UP" 'BEGIN {printf "%.0f", (b - a) * 1e6 / n}')
  [ "$name" = fleet-up ] && ncpu="(same process)"
  ups=$(python3 -c "import json;r=json.load(open('$OUT/px-up-$name.json'));print(int(r['connect']['connected']/max(r['wall_s'],1e-9)))")
  cp50=$(json_get "$OUT/px-up-$name.json" connect.latency_us.p50); cp99=$(json_get "$OUT/px-up-$name.json" connect.latency_us.p99)
  # Message latency through the path.
  "$BIN/loadtest" "${LT[@]}" "${extra[@]}" --url "$url" --conns "$MSGC" --rooms $(( MSGC / 10 )) --senders 10 \
    --rate 1 --warmup 2 --duration "$DUR" --prefix "msg-$name" --json "$OUT/px-msg-$name.json" \
    >"$OUT/px-msg-$name.log" 2>&1 || echo "$name: message run failed (see $OUT/px-msg-$name.log)" >&2
  local p50 p99
  p50=$(json_get "$OUT/px-msg-$name.json" latency_us.p50); p99=$(json_get "$OUT/px-msg-$name.json" latency_us.p99)
  # Memory per proxied idle connection.
  local mem="n/a"
  if [ -n "$pid" ]; then
    local r0; r0=$(rss_tree "$pid")
    "$BIN/loadtest" "${LT[@]}" "${extra[@]}" --url "$url" --conns "$IDLE" --rooms $(( IDLE / 10 )) --rate 0 \
      --warmup 0 --duration 6 --connect-rate 20000 --prefix "idle-$name" >"$OUT/px-idle-$name.log" 2>&1 &
    local lt=$!
    # Held: the node's gauge, or for fleet up the process's descriptors (one per client).
    held() {
      if [ "$name" = fleet-up ]; then ls "/proc/$pid/fd" | wc -l
      else metric "http://127.0.0.1:$NODE/metrics" wsnode_connections; fi
    }
    for i in $(seq 200); do
      [ "$(held)" -ge "$IDLE" ] 2>/dev/null && break
      kill -0 $lt 2>/dev/null || break; sleep 0.05
    done
    local r1; r1=$(rss_tree "$pid")
    wait $lt || true
    mem=$(( (r1 - r0) * 1024 / IDLE ))
  fi
  python3 -c "print(f'| $name | $ups | {$cp50/1000:.2f} / {$cp99/1000:.2f} | {$p50/1000:.2f} | {$p99/1000:.2f} | $cpu | $ncpu | $mem |')" | tee -a "$OUT/proxies-rows.md"
}

: >"$OUT/proxies-rows.md"
{
  echo "machine: $(machine)"
  echo
  echo "| path | upgrades/s | connect p50 / p99 ms | msg p50 ms | msg p99 ms | router/proxy CPU µs per upgrade | node CPU µs per upgrade | router/proxy bytes per idle conn |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee "$OUT/proxies.md"
row direct $NODE
row router $ROUTER "$ROUTER_PID"
row router-geo $GEO "$GEO_PID"
row router-handoff $HOFF "$HOFF_PID"
row router-direct $ROUTER "$ROUTER_PID" "--connect direct"
row fleet-up $FLEET "$FLEET_PID"
row nginx $NGX "$NGINX_PID"
row haproxy $HAP "$HAP_PID"
cat "$OUT/proxies-rows.md" >>"$OUT/proxies.md"
