// The client's decisions without a server: close codes, back-off, resume parameters, dedupe
// after a replay, `recovered`, and token refresh on 4001. A scripted WebSocket stands in
// for the socket so each decision is checked on its own.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, closeAction, connect } from "../roomfleet.js";

test("close codes map to the documented reactions", () => {
  assert.equal(closeAction(1012), "now");
  assert.equal(closeAction(1001), "now");
  assert.equal(closeAction(1008), "backoff");
  assert.equal(closeAction(1011), "backoff");
  assert.equal(closeAction(1006), "backoff");
  assert.equal(closeAction(4009), "stop");
  assert.equal(closeAction(4001), "refresh");
});

test("back-off doubles per attempt, keeps half its step, and stops at the maximum", () => {
  const o = (random) => ({ baseMs: 100, maxMs: 1000, random });
  assert.equal(backoffDelay(0, o(() => 0)), 50);
  assert.equal(backoffDelay(0, o(() => 0.999999)), 100);
  assert.equal(backoffDelay(3, o(() => 0)), 400);
  assert.equal(backoffDelay(10, o(() => 0.999999)), 1000);
});

/** A WebSocket whose server side the test plays. */
function scripted() {
  const sockets = [];
  class Fake {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 1;
      this.sent = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    frame(f) {
      this.onmessage({ data: JSON.stringify(f) });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose({ code, reason });
    }
  }
  return { Fake, sockets };
}

const tick = () => new Promise((r) => setTimeout(r, 0));
const welcome = (extra) => ({ type: "welcome", room: "r", user: "ann", node: "node-a", members: ["ann"], seq: 5, ...extra });

test("a reconnect resumes with since/epoch, skips replayed duplicates and surfaces recovered", async () => {
  const { Fake, sockets } = scripted();
  const room = connect({ url: "ws://fleet/ws", room: "r", user: "ann", WebSocket: Fake });
  await tick();
  assert.equal(new URL(sockets[0].url).searchParams.get("since"), null, "nothing to resume yet");
  const states = [];
  room.on("state", (e) => states.push(e));
  const seqs = [];
  room.on("message", (m) => seqs.push(m.seq));
  sockets[0].frame(welcome({ epoch: "e1", recovered: false }));
  sockets[0].frame({ type: "message", room: "r", from: "bob", seq: 6, ts: 1, body: null });
  sockets[0].drop(1012, "node draining");
  await new Promise((r) => setTimeout(r, 5));
  const q = new URL(sockets[1].url).searchParams;
  assert.deepEqual([q.get("since"), q.get("epoch"), q.get("user")], ["6", "e1", "ann"]);
  sockets[1].frame(welcome({ seq: 7, epoch: "e1", recovered: true, node: "node-b" }));
  for (const seq of [6, 7]) sockets[1].frame({ type: "message", room: "r", from: "bob", seq, ts: 1, body: null });
  assert.deepEqual(seqs, [6, 7], "the replayed 6 is not delivered twice");
  assert.equal(states.at(-1).recovered, true);
  room.close();
});

test("without recovery the gap is reported", async () => {
  const { Fake, sockets } = scripted();
  const room = connect({ url: "ws://fleet/ws", room: "r", WebSocket: Fake });
  await tick();
  sockets[0].frame(welcome({}));
  sockets[0].drop(1012);
  await new Promise((r) => setTimeout(r, 5));
  const open = new Promise((r) => room.on("state", (e) => e.state === "open" && r(e)));
  sockets[1].frame(welcome({ seq: 9 }));
  const e = await open;
  assert.equal(e.recovered, false);
  assert.equal(e.missed, 4);
  room.close();
});

test("4001 reconnects with a new token from getToken and stops without one", async () => {
  const { Fake, sockets } = scripted();
  const tokens = ["t1", "t2", "t2"];
  const room = connect({ url: "ws://fleet/ws", room: "r", getToken: () => tokens.shift(), WebSocket: Fake });
  await tick();
  assert.deepEqual(sockets[0].protocols, ["roomfleet", "token.t1"]);
  sockets[0].frame(welcome({}));
  sockets[0].drop(4001, "token expired");
  await new Promise((r) => setTimeout(r, 5));
  assert.deepEqual(sockets[1].protocols, ["roomfleet", "token.t2"]);
  sockets[1].frame(welcome({}));
  const closed = new Promise((r) => room.on("state", (e) => e.state === "closed" && r(e)));
  sockets[1].drop(4001, "token expired");
  assert.equal((await closed).code, 4001, "the same token again: stop");
  assert.equal(sockets.length, 2);
});

test("an error frame rejects the publish it answers, not one sent after a signal", async () => {
  const { Fake, sockets } = scripted();
  const room = connect({ url: "ws://fleet/ws", room: "r", WebSocket: Fake, ackTimeoutMs: 50 });
  await tick();
  sockets[0].frame(welcome({}));
  const p1 = room.publish("a");
  sockets[0].frame({ type: "error", code: "rate_limited", message: "slow down" });
  await assert.rejects(p1, { code: "rate_limited" });
  room.signal({ typing: true });
  const p2 = room.publish("b");
  const id2 = sockets[0].sent.at(-1).id;
  sockets[0].frame({ type: "error", code: "rate_limited", message: "slow down" }); // the signal's
  sockets[0].frame({ type: "ack", id: id2, seq: 6 });
  assert.deepEqual(await p2, { seq: 6 });
  room.close();
});

test("history is asked for on the first connect only; its messages pass, and markers are kept", async () => {
  const { Fake, sockets } = scripted();
  const room = connect({ url: "ws://fleet/ws", room: "r", user: "ann", history: 2, WebSocket: Fake });
  await tick();
  assert.equal(new URL(sockets[0].url).searchParams.get("history"), "2");
  const seqs = [];
  room.on("message", (m) => seqs.push(m.seq));
  const reads = [];
  room.on("read", (r) => reads.push(r));
  sockets[0].frame(welcome({ epoch: "e1", history: 2, reads: { bob: 4 } }));
  for (const seq of [4, 5, 6]) sockets[0].frame({ type: "message", room: "r", from: "bob", seq, ts: 1, body: null });
  assert.deepEqual(seqs, [4, 5, 6], "the history (4, 5) comes before the live 6");
  assert.deepEqual(room.reads, { bob: 4 });
  sockets[0].frame({ type: "read", user: "bob", seq: 6 });
  sockets[0].frame({ type: "read", user: "bob", seq: 5 });
  assert.deepEqual(reads, [{ user: "bob", seq: 6 }], "a marker never goes back");
  room.read(6);
  assert.deepEqual(sockets[0].sent.at(-1), { type: "read", seq: 6 });
  assert.deepEqual(room.reads, { bob: 6, ann: 6 });
  sockets[0].drop(1012);
  await new Promise((r) => setTimeout(r, 5));
  const q = new URL(sockets[1].url).searchParams;
  assert.deepEqual([q.get("since"), q.get("history")], ["6", null], "a reconnect resumes instead");
  assert.throws(() => connect({ url: "ws://fleet/ws", room: "r", history: 1001, WebSocket: Fake }), TypeError);
  room.close();
});
