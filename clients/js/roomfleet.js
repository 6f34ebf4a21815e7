// roomfleet.js: the browser and Node.js client of a roomfleet room. One ES module, no
// dependencies, no build step. It owns one room membership over one WebSocket at a time:
// reconnects that follow the close codes of docs/protocol.md, resume with since/epoch,
// history on the first join, read markers, publishes answered by their ack, and a bounded
// queue for what is published while offline.

/** Close codes of docs/protocol.md that change what the client does next. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  SERVICE_RESTART: 1012,
  IDLE_TIMEOUT: 4000,
  TOKEN_EXPIRED: 4001,
  ROOM_FULL: 4009,
});

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} State
 *
 * @typedef {object} ConnectOptions
 * @property {string} url WebSocket URL of the router's `/ws` (`ws://host:8080/ws`); in a
 *   browser a path such as `/ws` is resolved against the page.
 * @property {string} room Room ID: 1 to 128 of `[A-Za-z0-9._:-]`.
 * @property {string} [user] User ID: 1 to 64 of `[A-Za-z0-9._:-]`; the node makes one up when
 *   absent, and the client keeps that one across reconnects.
 * @property {string} [token] A JWT, sent as the subprotocol `token.<JWT>` next to `roomfleet`.
 * @property {() => (string | null | undefined | Promise<string | null | undefined>)} [getToken]
 *   Called before every connect and after a 4001 close; a new token there reconnects.
 * @property {boolean} [direct] Ask the router's `GET /connect` before every connect and open
 *   the WebSocket on the node it names (with the node's ticket), keeping the router out of
 *   the data path; only where the nodes' addresses are reachable (false).
 * @property {typeof fetch} [fetch] `fetch` to use for `direct` instead of the global one.
 * @property {typeof WebSocket} [WebSocket] Constructor to use instead of the global one.
 * @property {number} [history] On the first connect only, ask for the room's last N messages
 *   (`history=N`, at most 1000; the room may hold or allow fewer): they arrive as ordinary
 *   `message` events right after the welcome. A reconnect resumes with since/epoch instead.
 * @property {number} [ackTimeoutMs] How long a sent publish waits for its ack (10000).
 * @property {number} [queueLimit] Publishes held while not connected (100).
 * @property {number} [backoffBaseMs] First back-off step (500).
 * @property {number} [backoffMaxMs] Largest back-off (30000).
 * @property {() => number} [random] Source of jitter in [0, 1) (Math.random).
 *
 * @typedef {object} Message
 * @property {string} room
 * @property {string} from
 * @property {number} seq
 * @property {number} ts Unix milliseconds at the node.
 * @property {unknown} body
 * @property {string | number} [id]
 *
 * @typedef {object} ReadEvent
 * @property {string} user Who read.
 * @property {number} seq Up to which `seq` (markers only rise).
 *
 * @typedef {object} StateEvent
 * @property {State} state
 * @property {number} [code] The close code that led here.
 * @property {string} [reason] The close reason, or why the client stopped.
 * @property {number} [delay] Milliseconds until the next attempt (state `reconnecting`).
 * @property {number} [attempt] Attempts since the last welcome.
 * @property {boolean} [recovered] (state `open`) Whether the node replayed everything missed.
 * @property {number} [missed] (state `open`, not recovered) How many seqs went by unseen.
 * @property {number} [history] (state `open`) How many earlier messages (option `history`)
 *   follow as `message` events.
 * @property {string} [node] (state `open`) The node holding the connection.
 */

/** An error with a stable `code`: a server error code (`rate_limited`, ...) or one of the
 * client's own: `timeout`, `queue_full`, `closed`. */
export class RoomError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "RoomError";
    this.code = code;
  }
}

/**
 * What to do after a close: `now`, `backoff` or `stop`, from the code alone. 4001 is
 * `refresh`: stop unless `getToken` gives a new token.
 * @param {number} code
 * @returns {"now" | "backoff" | "stop" | "refresh"}
 */
export function closeAction(code) {
  switch (code) {
    case CLOSE.NORMAL:
    case CLOSE.ROOM_FULL:
      return "stop";
    case CLOSE.TOKEN_EXPIRED:
      return "refresh";
    case CLOSE.GOING_AWAY:
    case CLOSE.SERVICE_RESTART:
      return "now";
    default:
      return "backoff";
  }
}

/**
 * Exponential back-off with equal jitter: half of the step is fixed, half random, so
 * clients closed together spread out yet none retries sooner than half its step.
 * @param {number} attempt 0 for the first retry.
 * @param {{baseMs: number, maxMs: number, random: () => number}} o
 */
export function backoffDelay(attempt, { baseMs, maxMs, random }) {
  const step = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(step / 2 + (step / 2) * random());
}

/** Frames of the FIFO that pairs id-less `error` frames with what was sent (see pair()). */
const MAX_UNANSWERED = 256;

/**
 * One room membership that survives reconnects. Create it with {@link connect}.
 */
export class Room {
  /** @param {ConnectOptions} opts */
  constructor(opts) {
    if (!opts || typeof opts.url !== "string") throw new TypeError("connect: url is required");
    if (typeof opts.room !== "string" || !/^[A-Za-z0-9._:-]{1,128}$/.test(opts.room)) {
      throw new TypeError("connect: room must be 1 to 128 of [A-Za-z0-9._:-]");
    }
    if (opts.user != null && !/^[A-Za-z0-9._:-]{1,64}$/.test(opts.user)) {
      throw new TypeError("connect: user must be 1 to 64 of [A-Za-z0-9._:-]");
    }
    const WS = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError(
        "connect: no WebSocket; pass {WebSocket} or use Node.js 22+ (20: --experimental-websocket)",
      );
    }
    this.WebSocket = WS;
    this.url = opts.url;
    /** @readonly */ this.room = opts.room;
    /** @type {string | undefined} the user, once the first welcome named it */
    this.user = opts.user ?? undefined;
    this.token = opts.token ?? null;
    this.getToken = opts.getToken ?? null;
    this.direct = opts.direct ?? false;
    this.fetch = opts.fetch ?? globalThis.fetch;
    if (opts.history != null && (!Number.isSafeInteger(opts.history) || opts.history < 0 || opts.history > 1000)) {
      throw new TypeError("connect: history must be a count from 0 to 1000");
    }
    this.history = opts.history ?? 0;
    this.ackTimeoutMs = opts.ackTimeoutMs ?? 10_000;
    this.queueLimit = opts.queueLimit ?? 100;
    this.backoff = {
      baseMs: opts.backoffBaseMs ?? 500,
      maxMs: opts.backoffMaxMs ?? 30_000,
      random: opts.random ?? Math.random,
    };
    /** @type {State} */ this.state = "connecting";
    /** @type {string[]} every member on every node, sorted */ this.members = [];
    /**
     * Read markers by user: how far each member has read, from the welcome and `read` events
     * (and this client's own read() calls). Markers only rise.
     * @type {Record<string, number>}
     */
    this.reads = {};
    /** @type {number | null} the last seq seen (welcome or message) */ this.seq = null;
    /** @type {string | null} the room history's epoch, once a welcome carried one */
    this.epoch = null;
    /** @type {string | null} */ this.node = null;
    this.attempt = 0;
    this.nextId = 0;
    this.idPrefix = `c${Math.floor(this.backoff.random() * 2 ** 31).toString(36)}-`;
    /** id -> the publish waiting for its ack */
    this.pending = new Map();
    /** publishes made while not open, in order */
    this.queue = [];
    /** what was sent and may still get an error frame, oldest first */
    this.unanswered = [];
    /** @type {number | null} the latest read(seq) not yet sent */
    this.unsentRead = null;
    this.listeners = new Map();
    this.ws = null;
    this.timer = null;
    this.open();
  }

  /**
   * Listens to `message`, `presence`, `signal`, `read`, `state` or `error`; returns a function
   * that stops listening.
   * @param {"message" | "presence" | "signal" | "read" | "state" | "error"} type
   * @param {(event: any) => void} fn
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, event) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(event);
      } catch (e) {
        // One failing listener must not stop the others nor the connection.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  /**
   * Publishes `body` to the room. Resolves with the `seq` the node stamped it with; rejects
   * with a {@link RoomError}. While reconnecting it is queued (up to `queueLimit`) and sent
   * once, on the next welcome; a publish sent on a connection that then broke is never
   * sent again: it resolves if the message comes back (resume), else rejects at its timeout.
   * @param {unknown} body any JSON value
   * @returns {Promise<{seq: number}>}
   */
  publish(body) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") {
        reject(new RoomError("closed", "the room is closed"));
        return;
      }
      const id = `${this.idPrefix}${++this.nextId}`;
      const p = { id, body, resolve, reject, timer: null };
      if (this.state === "open") {
        this.sendPublish(p);
      } else if (this.queue.length >= this.queueLimit) {
        reject(new RoomError("queue_full", `${this.queueLimit} publishes already wait for a connection`));
      } else {
        this.queue.push(p);
      }
    });
  }

  /**
   * Relays `body` to the other members (typing, cursors). Ephemeral: dropped when not open.
   * @param {unknown} body
   * @returns {boolean} whether it was sent
   */
  signal(body) {
    if (this.state !== "open") return false;
    this.send({ type: "signal", body }, "signal");
    return true;
  }

  /**
   * Marks the room read up to `seq` (one this client has seen); the other members get a
   * `read` event and later joiners find it in {@link Room#reads}. Markers only rise: a lower
   * one changes nothing; one above the room's `seq` gets an `error` event `bad_read`.
   * Sent once open (the latest one, if called while not connected).
   * @param {number} seq
   */
  read(seq) {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError("read: seq must be a count");
    if (this.user) this.raiseRead(this.user, seq);
    if (this.state === "open") this.send({ type: "read", seq }, "read");
    else this.unsentRead = seq;
  }

  /** Leaves the room for good: no reconnect; queued and unacked publishes reject. */
  close() {
    this.stop(CLOSE.NORMAL, "closed by the app");
  }

  // --- connection life -------------------------------------------------------------------

  /** @param {boolean} [tokenFresh] the token was just refreshed: do not ask again */
  async open(tokenFresh = false) {
    this.timer = null;
    if (this.getToken && !tokenFresh) {
      try {
        this.token = (await this.getToken()) ?? null;
      } catch (e) {
        this.emit("error", new RoomError("token", `getToken failed: ${e?.message ?? e}`));
        this.retry(CLOSE.ABNORMAL, "getToken failed", "backoff");
        return;
      }
      if (this.state === "closed") return;
    }
    let url = this.connectUrl();
    if (this.direct) {
      try {
        url = await this.placed(url);
      } catch (e) {
        if (e.fatal) this.stop(CLOSE.ABNORMAL, e.message);
        else this.retry(CLOSE.ABNORMAL, e.message, "backoff");
        return;
      }
      if (this.state === "closed") return;
    }
    // A node reached directly takes the router's ticket: the token stays with the router.
    const protocols = this.token && !this.direct ? ["roomfleet", `token.${this.token}`] : undefined;
    let ws;
    try {
      ws = new this.WebSocket(url, protocols);
    } catch (e) {
      // A malformed URL or protocol token will not get better by retrying.
      this.stop(CLOSE.ABNORMAL, `cannot open a WebSocket: ${e?.message ?? e}`);
      return;
    }
    this.ws = ws;
    let welcomed = false;
    ws.onmessage = (ev) => {
      if (this.ws !== ws || typeof ev.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        this.emit("error", new RoomError("bad_json", "the server sent a frame that is not JSON"));
        return;
      }
      if (frame?.type === "welcome") welcomed = true;
      this.onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onClose(ev.code, ev.reason, welcomed);
    };
    // `error` is always followed by `close`, which decides what happens.
    ws.onerror = () => {};
  }

  /**
   * Asks the router where `wsUrl` (its `/ws`) should connect directly: the node's URL with
   * a ticket. A refused token stops the client; anything else is retried with back-off.
   * @param {string} wsUrl
   */
  async placed(wsUrl) {
    const u = new URL(wsUrl);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = u.pathname.replace(/\/ws$/, "/connect");
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    let r;
    try {
      r = await this.fetch(u.toString(), { headers });
    } catch (e) {
      throw new RoomError("connect", `GET /connect failed: ${e?.message ?? e}`);
    }
    const text = await r.text();
    if (r.status === 400 || r.status === 401 || r.status === 403) {
      throw Object.assign(new RoomError("connect", `GET /connect: ${r.status} ${text.trim()}`), { fatal: true });
    }
    if (!r.ok) throw new RoomError("connect", `GET /connect: ${r.status} ${text.trim()}`);
    return JSON.parse(text).url;
  }

  connectUrl() {
    const base = globalThis.location?.href;
    const u = base ? new URL(this.url, base) : new URL(this.url);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    const ours = [["room", this.room]];
    if (this.user) ours.push(["user", this.user]);
    // Resume only within the same history: without an epoch a since would mean nothing.
    if (this.epoch != null && this.seq != null) {
      ours.push(["since", String(this.seq)], ["epoch", this.epoch]);
    } else if (this.history > 0) {
      ours.push(["history", String(this.history)]);
    }
    for (const [k] of ours) u.searchParams.delete(k);
    // IDs are checked to [A-Za-z0-9._:-] and go as they are: servers refuse percent-encoded
    // bytes (docs/protocol.md), and URLSearchParams would send `status:u42` as `status%3Au42`.
    const rest = u.search.slice(1);
    u.search = [rest, ...ours.map(([k, v]) => `${k}=${v}`)].filter(Boolean).join("&");
    return u.toString();
  }

  onClose(code, reason, welcomed) {
    if (this.state === "closed") return;
    // A broken connection answers nothing more: its frames can no longer get errors.
    this.unanswered = [];
    let action = closeAction(code);
    if (!welcomed && action === "now" && this.attempt > 0) action = "backoff";
    if (action === "refresh") {
      const old = this.token;
      Promise.resolve(this.getToken ? this.getToken() : null).then(
        (t) => {
          if (this.state === "closed") return;
          if (t && t !== old) {
            this.token = t;
            this.retry(code, reason, "now", true);
          } else {
            this.stop(code, reason || "token expired");
          }
        },
        () => this.stop(code, reason || "token expired"),
      );
      return;
    }
    if (action === "stop") {
      this.stop(code, reason || (code === CLOSE.ROOM_FULL ? "room full" : "closed"));
      return;
    }
    this.retry(code, reason, action);
  }

  /** Schedules the next attempt. `tokenKnown`: the token was just refreshed, keep it. */
  retry(code, reason, action, tokenKnown = false) {
    const delay = action === "now" ? 0 : backoffDelay(this.attempt, this.backoff);
    this.attempt += 1;
    this.setState({ state: "reconnecting", code, reason, delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.open(tokenKnown), delay);
  }

  stop(code, reason) {
    if (this.state === "closed") return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000);
    const why = new RoomError("closed", `the room is closed: ${reason}`);
    for (const p of this.queue) p.reject(why);
    this.queue = [];
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(why);
    }
    this.pending.clear();
    this.unanswered = [];
    this.setState({ state: "closed", code, reason });
  }

  setState(ev) {
    this.state = ev.state;
    this.emit("state", ev);
  }

  // --- frames ----------------------------------------------------------------------------

  onFrame(f) {
    switch (f?.type) {
      case "welcome":
        return this.onWelcome(f);
      case "message":
        return this.onMessage(f);
      case "ack":
        return this.onAck(f);
      case "presence":
        return this.onPresence(f);
      case "signal":
        return this.emit("signal", { from: f.from, body: f.body });
      case "read":
        if (this.raiseRead(f.user, f.seq)) this.emit("read", { user: f.user, seq: f.seq });
        return undefined;
      case "error":
        return this.onError(f);
      default:
        // Newer servers may add frames; an old client ignores them.
        return undefined;
    }
  }

  onWelcome(w) {
    const first = this.seq == null;
    const recovered = w.recovered === true;
    let missed = 0;
    if (!first && !recovered && typeof w.seq === "number" && w.seq > this.seq) {
      missed = w.seq - this.seq;
    }
    if (!recovered || first) this.seq = w.seq;
    // A first connect's history follows the welcome with seqs up to w.seq: let them through.
    if (first && typeof w.history === "number" && w.history > 0) this.seq = w.seq - w.history;
    if (typeof w.epoch === "string") this.epoch = w.epoch;
    this.user = w.user;
    this.node = w.node;
    this.members = [...(w.members ?? [])].sort();
    for (const [user, seq] of Object.entries(w.reads ?? {})) this.raiseRead(user, seq);
    this.attempt = 0;
    const history = first && typeof w.history === "number" ? w.history : 0;
    this.setState({ state: "open", recovered, missed, history, node: w.node });
    this.emit("presence", { event: "welcome", members: this.members });
    const queued = this.queue;
    this.queue = [];
    for (const p of queued) this.sendPublish(p);
    if (this.unsentRead != null) {
      this.send({ type: "read", seq: this.unsentRead }, "read");
      this.unsentRead = null;
    }
  }

  onMessage(m) {
    // After a resume the replay may overlap what was already seen: nothing twice.
    if (this.seq != null && typeof m.seq === "number" && m.seq <= this.seq) return;
    if (typeof m.seq === "number") this.seq = m.seq;
    // A publish whose ack was lost with its connection is confirmed by its replayed copy.
    if (m.id != null && m.from === this.user && this.pending.has(m.id)) {
      this.settle(m.id, null, m.seq);
    }
    this.emit("message", m);
  }

  onAck(a) {
    const i = this.unanswered.findIndex((u) => u.kind === "publish" && u.id === a.id);
    // Frames sent before an answered publish were taken without error.
    if (i >= 0) this.unanswered.splice(0, i + 1);
    this.settle(a.id, null, a.seq);
  }

  /** Raises `user`'s marker; whether it moved. */
  raiseRead(user, seq) {
    if (typeof user !== "string" || typeof seq !== "number") return false;
    if ((this.reads[user] ?? -1) >= seq) return false;
    this.reads[user] = seq;
    return true;
  }

  onPresence(p) {
    const set = new Set(this.members);
    if (p.event === "join") set.add(p.user);
    if (p.event === "leave") set.delete(p.user);
    this.members = [...set].sort();
    this.emit("presence", { event: p.event, user: p.user, members: this.members });
  }

  /**
   * Error frames carry no id. A node answers one connection's frames in order, so an error
   * belongs to the oldest frame sent and not yet answered; a publish is rejected only when
   * it is that frame. A signal that went through silently can make a later publish's error
   * look like its own: that publish then rejects at its timeout, never as a false failure.
   */
  onError(f) {
    const err = new RoomError(f.code ?? "internal", f.message ?? "error");
    const oldest = this.unanswered.shift();
    if (oldest?.kind === "publish" && this.pending.has(oldest.id)) {
      this.settle(oldest.id, err);
    }
    this.emit("error", err);
  }

  // --- sending ---------------------------------------------------------------------------

  send(frame, kind, id) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    this.unanswered.push({ kind, id });
    if (this.unanswered.length > MAX_UNANSWERED) this.unanswered.shift();
    return true;
  }

  sendPublish(p) {
    this.pending.set(p.id, p);
    p.timer = setTimeout(() => {
      this.settle(p.id, new RoomError("timeout", `no ack within ${this.ackTimeoutMs} ms; the message may or may not be in the room`));
    }, this.ackTimeoutMs);
    this.send({ type: "publish", body: p.body, id: p.id }, "publish", p.id);
  }

  settle(id, err, seq) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve({ seq });
  }
}

/**
 * Joins a room and keeps the membership alive until {@link Room#close}.
 * @param {ConnectOptions} opts
 * @returns {Room}
 */
export function connect(opts) {
  return new Room(opts);
}
