// roomfleet.js against a real `fleet up` (three nodes, rooms of at most two members per
// node): acks, queued sends, reconnect across a drain, back-off after 1008, stop on 4009.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect } from "../roomfleet.js";
import { next, startFleet, waitFor } from "./fleet.js";

let fleet;
before(async () => {
  fleet = await startFleet(["--max-room-members", "2", "--drain-window", "0.2", "--health-interval", "0.2"]);
});
after(async () => fleet?.stop());

let rooms = 0;
const join = (user, opts = {}) => connect({ url: fleet.ws, room: opts.room ?? `t-${process.pid}-${rooms}`, user, ...opts });
const freshRoom = () => `t-${process.pid}-${++rooms}`;

test("publish resolves with the seq of its ack and the message reaches the other member", async () => {
  const room = freshRoom();
  const ann = join("ann", { room });
  const bob = join("bob", { room });
  await Promise.all([next(ann, "state", (e) => e.state === "open"), next(bob, "state", (e) => e.state === "open")]);
  const got = next(bob, "message", (m) => m.body?.text === "two");
  const first = await ann.publish({ text: "one" });
  const second = await ann.publish({ text: "two" });
  assert.equal(second.seq, first.seq + 1);
  assert.equal((await got).seq, second.seq);
  assert.deepEqual(bob.members, ["ann", "bob"]);
  ann.close();
  bob.close();
});

test("a room id with a colon (status:u42) is sent as it is and joins", async () => {
  const room = `status:${freshRoom()}`;
  const ann = join("ann", { room });
  const open = await next(ann, "state", (e) => e.state === "open");
  assert.ok(open.node, "welcomed by a node");
  assert.equal(ann.room, room);
  ann.close();
});

test("publishes made before the welcome are queued, sent once, and bounded", async () => {
  const room = freshRoom();
  const bob = join("bob", { room });
  await next(bob, "state", (e) => e.state === "open");
  const seen = [];
  bob.on("message", (m) => seen.push(m.body.n));
  const ann = join("ann", { room, queueLimit: 2 });
  assert.equal(ann.state, "connecting");
  const sent = [ann.publish({ n: 1 }), ann.publish({ n: 2 })];
  await assert.rejects(ann.publish({ n: 3 }), { code: "queue_full" });
  const acks = await Promise.all(sent);
  assert.equal(acks[1].seq, acks[0].seq + 1);
  await waitFor("both messages at bob", () => seen.length >= 2);
  await ann.publish({ n: 4 });
  await waitFor("the last message at bob", () => seen.includes(4));
  assert.deepEqual(seen, [1, 2, 4], "each queued message arrives exactly once, in order");
  ann.close();
  bob.close();
});

test("a drain closes with 1012; the client reconnects at once, elsewhere, and sends what was queued", async () => {
  const room = freshRoom();
  const ann = join("ann", { room });
  const bob = join("bob", { room });
  const [open] = await Promise.all([next(ann, "state", (e) => e.state === "open"), next(bob, "state", (e) => e.state === "open")]);
  const drained = open.node;
  const seen = [];
  bob.on("message", (m) => seen.push(m.body.text));
  const reconnecting = next(ann, "state", (e) => e.state === "reconnecting");
  const r = await fetch(`${fleet.admin}/admin/nodes/${drained}/drain`, { method: "POST" });
  assert.equal(r.status, 202, await r.text());
  const ev = await reconnecting;
  assert.equal(ev.code, 1012);
  assert.equal(ev.delay, 0, "a drain asks for an immediate reconnect");
  const queued = ann.publish({ text: "while away" });
  const reopened = await next(ann, "state", (e) => e.state === "open");
  assert.notEqual(reopened.node, drained, "the router placed the room on another node");
  // fleet up's in-process nodes share the rooms' history: the move is resumed whole.
  assert.equal(reopened.recovered, true, "the reconnect resumed with since/epoch");
  await next(bob, "state", (e) => e.state === "open").catch(() => {});
  await waitFor("bob back in the room", () => bob.state === "open" && bob.members.includes("ann"));
  await queued;
  await ann.publish({ text: "after" });
  await waitFor("bob sees the message sent after the drain", () => seen.includes("after"));
  assert.equal(seen.filter((t) => t === "after").length, 1);
  const seqs = [];
  ann.on("message", (m) => seqs.push(m.seq));
  await waitFor("ann has seen her own message", () => ann.seq != null && ann.seq >= 2);
  const before = ann.seq;
  await bob.publish({ text: "last" });
  await waitFor("ann sees bob's last message", () => seqs.length === 1);
  assert.equal(seqs[0], before + 1, "no gap: ann's order goes on from where the resume left it");
  ann.close();
  bob.close();
});

test("direct: the client asks the router where to go and talks to that node itself", async () => {
  const room = freshRoom();
  const ann = join("ann", { room, direct: true });
  const bob = join("bob", { room });
  const [a, b] = await Promise.all([next(ann, "state", (e) => e.state === "open"), next(bob, "state", (e) => e.state === "open")]);
  assert.equal(a.node, b.node, "the direct client lands on the room's node");
  const got = next(bob, "message", (m) => m.body?.text === "direct");
  const ack = await ann.publish({ text: "direct" });
  assert.equal((await got).seq, ack.seq);
  ann.close();
  bob.close();
});

test("a 1008 close (rate limit) backs off before reconnecting", async () => {
  const ann = join("ann", { room: freshRoom(), backoffBaseMs: 400 });
  await next(ann, "state", (e) => e.state === "open");
  const reconnecting = next(ann, "state", (e) => e.state === "reconnecting");
  // Far past the node's burst (40) and abuse threshold (200 refusals in a row).
  for (let i = 0; i < 400 && ann.state === "open"; i++) ann.signal({ i });
  const ev = await reconnecting;
  assert.equal(ev.code, 1008);
  assert.ok(ev.delay >= 200 && ev.delay <= 400, `half to all of the first back-off step: ${ev.delay}`);
  await next(ann, "state", (e) => e.state === "open");
  ann.close();
});

test("a 4009 close (room full) stops the client and rejects what waits", async () => {
  const room = freshRoom();
  const ann = join("ann", { room });
  const bob = join("bob", { room });
  await Promise.all([next(ann, "state", (e) => e.state === "open"), next(bob, "state", (e) => e.state === "open")]);
  const cat = join("cat", { room });
  const waiting = cat.publish({ text: "never" });
  const closed = await next(cat, "state", (e) => e.state === "closed");
  assert.equal(closed.code, 4009);
  await assert.rejects(waiting, { code: "closed" });
  assert.equal(cat.state, "closed");
  ann.close();
  bob.close();
});

test("a late joiner with history gets the last messages, then live ones; read markers reach the others", async () => {
  const room = freshRoom();
  const ann = join("ann", { room });
  await next(ann, "state", (e) => e.state === "open");
  for (const n of [1, 2, 3]) await ann.publish({ n });
  ann.read(3);
  const seen = [];
  const bob = join("bob", { room, history: 2 });
  bob.on("message", (m) => seen.push(m.body.n));
  await next(bob, "state", (e) => e.state === "open");
  await waitFor("bob's history", () => seen.length >= 2);
  assert.deepEqual(seen, [2, 3], "the last two, oldest first");
  await waitFor("ann's marker in bob's welcome", () => bob.reads.ann === 3);
  const marker = next(ann, "read", (r) => r.user === "bob");
  bob.read(3);
  assert.deepEqual(await marker, { user: "bob", seq: 3 });
  assert.equal(ann.reads.bob, 3);
  await ann.publish({ n: 4 });
  await waitFor("bob sees the live message", () => seen.includes(4));
  assert.deepEqual(seen, [2, 3, 4], "nothing twice");
  ann.close();
  bob.close();
});
