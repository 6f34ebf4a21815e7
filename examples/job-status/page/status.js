// The job-status page: joins the room status:<user> through the router and shows each job's
// latest status as the worker's inbox entries arrive; submits jobs with POST /jobs.
import { connect } from "/roomfleet.js";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("/config.json")).json();
let room = null;
let watching = "";

function watch(user) {
  if (user === watching) return;
  if (room) room.close();
  $("jobs").replaceChildren();
  watching = user;
  room = connect({ url: config.ws, room: `status:${user}`, user });
  room.on("state", (e) => { $("state").textContent = `room status:${user}: ${e.state}`; });
  room.on("message", (m) => show(m));
  room.on("error", (e) => { $("state").textContent = `error: ${e.code} ${e.message ?? ""}`; });
}

function show(m) {
  const s = m.body;
  if (!s || typeof s.job !== "number") return;
  let row = document.getElementById(`job-${s.job}`);
  if (!row) {
    row = document.createElement("tr");
    row.id = `job-${s.job}`;
    row.append(document.createElement("td"), document.createElement("td"), document.createElement("td"));
    $("jobs").prepend(row);
  }
  row.cells[0].textContent = `#${s.job}`;
  row.cells[1].textContent = s.text;
  row.cells[1].className = s.state;
  row.cells[2].textContent = m.seq;
}

$("submit").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const user = $("user").value.trim();
  watch(user);
  const fail = $("fail").value.split(",").map((t) => parseInt(t, 10)).filter((t) => t > 0);
  const r = await fetch("/jobs", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user, tests: parseInt($("tests").value, 10) || 12, fail }),
  });
  const answer = await r.json();
  if (!r.ok) $("state").textContent = `refused: ${answer.code}: ${answer.message}`;
});

watch($("user").value.trim());
