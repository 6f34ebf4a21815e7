// Clients for bench/failover.sh: CONNS members in ROOMS rooms through the router; once all
// are welcomed it prints the nodes they landed on (the script then SIGKILLs one). Every member whose connection drops reconnects at once, and the
// time from that first reconnect attempt to its new `welcome` is recorded (retries included).
// Prints one JSON line of results when all dropped members are back, or at TIMEOUT_S.
// Needs Node.js 20 with --experimental-websocket.
const url = process.env.URL;
const conns = Number(process.env.CONNS || 2000);
const rooms = Number(process.env.ROOMS || 200);
const timeoutS = Number(process.env.TIMEOUT_S || 20);
// This process's share when several run: members FIRST .. FIRST+CONNS-1.
const first = Number(process.env.FIRST || 0);

const members = [];
let welcomed = 0;
let armed = false;

function open(m) {
  const ws = new WebSocket(`${url}?room=fo-${m.room}&user=u${m.i}`);
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.type !== "welcome") return;
    if (m.reconnectAt !== undefined) {
      m.back = performance.now() - m.reconnectAt;
      m.newNode = f.node;
      maybeDone();
    } else {
      m.node = f.node;
      welcomed++;
      if (welcomed === conns) ready();
    }
  };
  ws.onclose = () => {
    if (!armed || m.back !== undefined) return;
    if (m.reconnectAt === undefined) m.reconnectAt = performance.now();
    m.attempts = (m.attempts || 0) + 1;
    if (m.attempts < 50) setTimeout(() => open(m), m.attempts === 1 ? 0 : 20);
  };
  ws.onerror = () => {};
  m.ws = ws;
}

function ready() {
  const by = {};
  for (const m of members) by[m.node] = (by[m.node] || 0) + 1;
  const connect_ms = performance.now() - started;
  console.log(JSON.stringify({ ready: true, nodes: by, connect_ms, connect_per_s: conns / (connect_ms / 1000) }));
  armed = true;
  setTimeout(report, timeoutS * 1000).unref();
}

function maybeDone() {
  const dropped = members.filter((m) => m.reconnectAt !== undefined);
  if (dropped.length > 0 && dropped.every((m) => m.back !== undefined)) report();
}

let reported = false;
function report() {
  if (reported) return;
  reported = true;
  const dropped = members.filter((m) => m.reconnectAt !== undefined);
  const back = dropped.filter((m) => m.back !== undefined).map((m) => m.back).sort((a, b) => a - b);
  const q = (p) => (back.length ? back[Math.min(back.length - 1, Math.floor(p * back.length))] : null);
  const attempts = dropped.reduce((s, m) => s + (m.attempts || 0), 0);
  console.log(JSON.stringify({
    dropped: dropped.length, back: back.length, attempts,
    p50_ms: q(0.5), p99_ms: q(0.99), max_ms: back.length ? back[back.length - 1] : null,
    back_ms: back,
    cpu_s: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
  }));
  process.exit(0);
}

const started = performance.now();
for (let i = first; i < first + conns; i++) {
  const m = { i, room: i % rooms };
  members.push(m);
  open(m);
}
