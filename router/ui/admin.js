// The admin UI: the ring as an SVG circle, the placement explorer, the nodes table with
// drain and remove, and rates from /metrics. It polls the admin API with the token the
// user typed (sessionStorage, this tab only); the page itself holds no secret.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "roomfleet-admin-token";
const POLL_MS = 2000;
const RADIUS = 130;
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626", "#4f46e5", "#0d9488"];
const TWO64 = 2 ** 64;

let colours = new Map();
let lastMetrics = null; // {at, values}
let lastNodeCounters = new Map(); // id -> {at, messages}
let placedHash = null;

$("token").value = sessionStorage.getItem(TOKEN_KEY) ?? "";

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text ?? "";
}

/** One admin request; throws with the API's `error` text. */
async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = new Headers(init.headers);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const r = await fetch(path, { ...init, headers, cache: "no-store" });
  if (r.status === 401) {
    banner("The admin API needs the router's --admin-token: enter it above.");
    throw new Error("unauthorized");
  }
  const type = r.headers.get("content-type") ?? "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error(body?.error ?? `${r.status} ${body}`);
  return body;
}

/** A 16-hex-digit ring hash as a fraction of the circle. */
const fraction = (hex) => Number(BigInt(`0x${hex}`)) / TWO64;

function point(frac, r = RADIUS) {
  const a = frac * 2 * Math.PI - Math.PI / 2; // 0 at the top, clockwise
  return [r * Math.cos(a), r * Math.sin(a)];
}

function arcPath(f0, f1) {
  if (f1 - f0 >= 0.999999) {
    return `M 0 ${-RADIUS} A ${RADIUS} ${RADIUS} 0 1 1 0 ${RADIUS} A ${RADIUS} ${RADIUS} 0 1 1 0 ${-RADIUS}`;
  }
  const [x0, y0] = point(f0);
  const [x1, y1] = point(f1);
  return `M ${x0} ${y0} A ${RADIUS} ${RADIUS} 0 ${f1 - f0 > 0.5 ? 1 : 0} 1 ${x1} ${y1}`;
}

function el(name, attrs = {}, ns = null) {
  const e = ns ? document.createElementNS(ns, name) : document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function colourOf(id) {
  if (!colours.has(id)) colours.set(id, PALETTE[colours.size % PALETTE.length]);
  return colours.get(id);
}

function drawRing(ring) {
  const svg = $("ring");
  const parts = [el("circle", { r: RADIUS, fill: "none", stroke: "#eaecf0", "stroke-width": 24 }, SVG)];
  for (const a of ring.arcs ?? []) {
    const f0 = fraction(a.from);
    const f1 = fraction(a.to);
    const spans = f0 <= f1 ? [[f0, f1]] : [[f0, 1], [0, f1]];
    for (const [s, e] of spans) {
      const p = el("path", { d: arcPath(s, e), fill: "none", stroke: colourOf(a.node), "stroke-width": 24, class: "arc" }, SVG);
      p.dataset.node = a.node;
      parts.push(p);
    }
  }
  const label = el("text", { "text-anchor": "middle", y: 5, "font-size": 14, fill: "#667085" }, SVG);
  label.textContent = `generation ${ring.generation}`;
  parts.push(label);
  if (placedHash) {
    const [x, y] = point(fraction(placedHash));
    parts.push(el("line", { x1: 0, y1: 0, x2: x, y2: y, stroke: "#101828", "stroke-dasharray": "4 3" }, SVG));
    parts.push(el("circle", { id: "marker", cx: x, cy: y, r: 7, fill: "#101828", stroke: "#fff", "stroke-width": 2 }, SVG));
  }
  svg.replaceChildren(...parts);
  $("legend").replaceChildren(
    ...ring.nodes.map((n) => {
      const li = el("li");
      li.dataset.node = n.id;
      const dot = el("span", { class: "dot" });
      dot.style.background = colourOf(n.id);
      li.append(dot, `${n.id}: ${(n.share * 100).toFixed(1)}% of the ring${n.healthy ? "" : ", unhealthy"}${n.draining ? ", draining" : ""}`);
      return li;
    }),
  );
}

function cell(text, cls) {
  const td = el("td", cls ? { class: cls } : {});
  td.textContent = text;
  return td;
}

function button(text, cls, onClick) {
  const b = el("button", { type: "button", class: cls });
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

async function act(method, path, what) {
  try {
    await api(path, { method });
    banner(null);
  } catch (e) {
    banner(`${what}: ${e.message}`);
  }
  refresh();
}

function drawNodes(nodes) {
  const now = Date.now();
  $("nodes").replaceChildren(
    ...nodes.map((n) => {
      const tr = el("tr");
      tr.dataset.node = n.id;
      const s = n.stats ?? {};
      const fig = (v) => (v == null ? "–" : String(v));
      let rate = "–";
      const prev = lastNodeCounters.get(n.id);
      if (s.messages_in_total != null) {
        if (prev) rate = (((s.messages_in_total - prev.messages) * 1000) / Math.max(1, now - prev.at)).toFixed(1);
        lastNodeCounters.set(n.id, { at: now, messages: s.messages_in_total });
      }
      const id = cell("", "id");
      const dot = el("span", { class: "dot" });
      dot.style.background = colourOf(n.id);
      id.append(dot, n.id);
      const actions = el("td");
      actions.className = "row";
      actions.append(
        button("Drain", "secondary", () => {
          if (confirm(`Drain ${n.id}? Its clients reconnect elsewhere.`)) act("POST", `/admin/nodes/${encodeURIComponent(n.id)}/drain`, `drain ${n.id}`);
        }),
        button("Remove", "danger", () => {
          if (confirm(`Remove ${n.id} from the ring?`)) act("DELETE", `/admin/nodes/${encodeURIComponent(n.id)}`, `remove ${n.id}`);
        }),
      );
      const connections = cell(fig(s.connections ?? n.connections), "connections");
      if (n.stats_error) connections.title = n.stats_error;
      tr.append(
        id,
        cell(n.addr, "addr mono"),
        cell(n.healthy ? "yes" : "no", "healthy"),
        cell(n.draining ? "yes" : "no", "draining"),
        cell(`${(n.share * 100).toFixed(1)}%`, "share"),
        connections,
        cell(fig(s.rooms), "rooms"),
        cell(fig(s.spanning_rooms), "spanning"),
        cell(rate, "rate"),
        actions,
      );
      return tr;
    }),
  );
}

/** Prometheus text -> metric name -> sum over its label sets. */
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) out.set(m[1], (out.get(m[1]) ?? 0) + v);
  }
  return out;
}

const RATES = [
  ["router_upgrades_total", "upgrades/s"],
  ["router_bytes_to_client_total", "bytes/s to clients"],
  ["router_bytes_to_node_total", "bytes/s to nodes"],
  ["router_retries_total", "retries/s"],
  ["router_proxy_errors_total", "proxy errors/s"],
  ["router_refused_total", "refusals/s"],
];
const GAUGES = [
  ["router_connections", "client connections"],
  ["router_tunnels", "tunnels open"],
  ["router_ring_nodes", "nodes on the ring"],
];

function drawRates(text) {
  const now = Date.now();
  const values = parseMetrics(text);
  const rows = [];
  for (const [name, label] of RATES) {
    let v = "–";
    if (lastMetrics && values.has(name)) {
      const dt = Math.max(1, now - lastMetrics.at) / 1000;
      v = ((values.get(name) - (lastMetrics.values.get(name) ?? 0)) / dt).toFixed(1);
    }
    rows.push([label, v, name]);
  }
  for (const [name, label] of GAUGES) rows.push([label, String(values.get(name) ?? "–"), name]);
  lastMetrics = { at: now, values };
  $("rates").replaceChildren(
    ...rows.map(([label, v, name]) => {
      const tr = el("tr");
      tr.dataset.metric = name;
      tr.append(cell(label), cell(v, "value"));
      return tr;
    }),
  );
}

async function refresh() {
  try {
    const [ring, nodes, metrics] = await Promise.all([
      api("/admin/ring?points=1"),
      api("/admin/nodes?stats=1"),
      api("/metrics"),
    ]);
    colours = new Map([...ring.nodes.map((n) => n.id)].sort().map((id, i) => [id, PALETTE[i % PALETTE.length]]));
    drawRing(ring);
    drawNodes(nodes.nodes);
    drawRates(metrics);
    const healthy = ring.nodes.filter((n) => n.healthy && !n.draining).length;
    $("summary").textContent = `${ring.nodes.length} nodes, ${healthy} placing, policy ${ring.policy}, ring generation ${ring.generation}`;
    document.body.dataset.loaded = "1";
    if ($("banner").textContent.startsWith("The admin API")) banner(null);
  } catch (e) {
    if (e.message !== "unauthorized") banner(`admin API: ${e.message}`);
  }
}

async function place() {
  const q = new URLSearchParams({ room: $("place-room").value.trim() });
  const ip = $("place-ip").value.trim();
  if (ip) q.set("ip", ip);
  try {
    const p = await api(`/admin/placement?${q}`);
    placedHash = p.hash;
    $("place-node").textContent = p.node;
    $("place-reason").textContent = `${p.policy}: ${p.reason}${p.fallback ? ` (fallback: ${p.fallback})` : ""}`;
    $("place-key").textContent = p.key;
    $("place-hash").textContent = p.hash;
    $("place-pos").textContent = `${(fraction(p.hash) * 100).toFixed(3)}% around the circle (${(fraction(p.hash) * 360).toFixed(1)}°)`;
    $("place-fallbacks").textContent = p.fallbacks.length ? p.fallbacks.join(" → ") : "none";
    $("place-country").textContent = p.country ?? "–";
    $("place-generation").textContent = String(p.generation);
    $("place-result").hidden = false;
    $("place-error").hidden = true;
    $("place-result").dataset.room = p.room;
    refresh();
  } catch (e) {
    $("place-result").hidden = true;
    $("place-error").hidden = false;
    $("place-error").textContent = e.message;
  }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  banner(null);
  refresh();
});
$("place-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  place();
});

refresh();
setInterval(refresh, POLL_MS);
