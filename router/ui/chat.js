// The demo chat: joins a room through roomfleet.js and shows the room's last messages
// (history on join), new ones, who is online, who is typing (signals), who has seen what
// (read markers: it marks read what this page showed while visible) and a banner while
// the client reconnects. Everything it shows comes from the room object's events; user
// text is only ever set as textContent.
import { connect } from "/roomfleet.js";

const $ = (id) => document.getElementById(id);
/** How long a typing signal counts without a follow-up. */
const TYPING_TTL_MS = 4000;
/** Quiet time after the last key before telling the others typing stopped. */
const TYPING_IDLE_MS = 2000;
/** Earlier messages shown on join. */
const HISTORY = 50;
/** A burst of messages is marked read once, after this quiet time. */
const READ_DELAY_MS = 250;

let room = null;
const typing = new Map(); // user -> expiry (ms)
let typingSent = false;
let typingTimer = null;
let readTimer = null;

const params = new URLSearchParams(location.search);
$("room").value = params.get("room") ?? $("room").value;
$("user").value = params.get("user") ?? `guest-${Math.floor(Math.random() * 1e4)}`;

function note(text) {
  const li = document.createElement("li");
  li.className = "note";
  li.textContent = text;
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

function showMessage(m) {
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.from;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = typeof m.body?.text === "string" ? m.body.text : JSON.stringify(m.body);
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = `#${m.seq}`;
  const seen = document.createElement("span");
  seen.className = "seen";
  li.append(from, text, seq, seen);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

/** "seen by …" under the newest message each other member has read. */
function showSeen() {
  const items = [...$("messages").querySelectorAll("li[data-seq]")];
  const by = new Map();
  for (const [user, seq] of Object.entries(room?.reads ?? {})) {
    if (user === room.user) continue;
    const at = items.findLast((li) => Number(li.dataset.seq) <= seq);
    if (at) by.set(at, [...(by.get(at) ?? []), user]);
  }
  for (const li of items) {
    const users = (by.get(li) ?? []).sort();
    li.querySelector(".seen").textContent = users.length ? `seen by ${users.join(", ")}` : "";
  }
}

/** Marks read what the page has shown, once it is visible (soon after a burst). */
function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    if (room?.state === "open" && room.seq != null && document.visibilityState === "visible") {
      if ((room.reads[room.user] ?? -1) < room.seq) room.read(room.seq);
    }
  }, READ_DELAY_MS);
}
document.addEventListener("visibilitychange", markRead);

function showMembers(members) {
  $("members").replaceChildren(
    ...members.map((u) => {
      const li = document.createElement("li");
      li.textContent = u === room?.user ? `${u} (you)` : u;
      li.dataset.user = u;
      return li;
    }),
  );
}

function showTyping() {
  const now = Date.now();
  for (const [u, until] of typing) if (until <= now) typing.delete(u);
  const who = [...typing.keys()];
  $("typing").textContent =
    who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
}
setInterval(showTyping, 500);

function banner(text, closed = false) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text ?? "";
  b.classList.toggle("closed", closed);
}

function setJoined(joined) {
  $("join").disabled = joined;
  $("leave").disabled = !joined;
  $("room").disabled = joined;
  $("user").disabled = joined;
}

/** While reconnecting the input stays on: what is sent then is queued by the client. */
function setInput() {
  $("text").disabled = !room;
  $("send").disabled = !room;
  document.body.dataset.state = room ? room.state : "idle";
}

function join(roomId, user) {
  room = connect({ url: "/ws", room: roomId, user, history: HISTORY });
  setJoined(true);
  $("messages").replaceChildren();
  note(`joining ${roomId}…`);
  room.on("state", (ev) => {
    setInput();
    if (ev.state === "open") {
      banner(null);
      $("status").textContent = `${room.user} in ${room.room} on ${ev.node}`;
      if (ev.recovered) note(`resumed on ${ev.node}: nothing missed`);
      else if (ev.missed > 0) note(`on ${ev.node}; ${ev.missed} message(s) went by while away`);
      else note(`connected to ${ev.node}`);
      if (ev.history > 0) note(`the last ${ev.history} message(s):`);
      showSeen();
      markRead();
    } else if (ev.state === "reconnecting") {
      const why = ev.reason ? `: ${ev.reason}` : "";
      banner(`Reconnecting (closed ${ev.code}${why})… messages you send now are queued.`);
    } else if (ev.state === "closed") {
      banner(`Disconnected: ${ev.reason ?? ev.code}`, true);
      $("status").textContent = "not in a room";
      room = null;
      setJoined(false);
      setInput();
    }
  });
  room.on("message", (m) => {
    typing.delete(m.from);
    showMessage(m);
    showSeen();
    markRead();
  });
  room.on("read", showSeen);
  room.on("presence", (ev) => {
    showMembers(ev.members);
    if (ev.event === "join") note(`${ev.user} joined`);
    if (ev.event === "leave") {
      typing.delete(ev.user);
      note(`${ev.user} left`);
    }
  });
  room.on("signal", (s) => {
    if (s.body?.typing === true) typing.set(s.from, Date.now() + TYPING_TTL_MS);
    else typing.delete(s.from);
    showTyping();
  });
  room.on("error", (e) => note(`error ${e.code}: ${e.message}`));
}

$("join-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!room) join($("room").value.trim(), $("user").value.trim());
});

$("leave").addEventListener("click", () => {
  room?.close();
  room = null;
  setJoined(false);
  setInput();
  banner(null);
  $("members").replaceChildren();
});

$("text").addEventListener("input", () => {
  if (!room) return;
  if (!typingSent && room.signal({ typing: true })) typingSent = true;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    if (typingSent) room?.signal({ typing: false });
    typingSent = false;
  }, TYPING_IDLE_MS);
});

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!room || !text) return;
  $("text").value = "";
  clearTimeout(typingTimer);
  if (typingSent) room.signal({ typing: false });
  typingSent = false;
  room.publish({ text }).catch((e) => note(`not sent (${e.code}): ${text}`));
});

if (params.get("join") === "1") join($("room").value, $("user").value);
