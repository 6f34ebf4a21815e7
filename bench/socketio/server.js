// The Socket.IO side of the roomfleet benchmarks: rooms with broadcast, as `loadtest
// --dialect socketio` speaks it. `join` (with an ack) puts the socket in one room; `publish`
// sends `message` {from, body} to the whole room, the sender included. With REDIS_URL set,
// several processes share rooms through @socket.io/redis-adapter. Loopback only.
"use strict";

const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";

const httpServer = createServer((req, res) => {
  res.writeHead(req.url === "/healthz" ? 200 : 404).end();
});
const io = new Server(httpServer, { transports: ["websocket"], serveClient: false });

io.on("connection", (socket) => {
  let room = null;
  socket.on("join", (name, ack) => {
    if (typeof name !== "string" || name.length === 0 || name.length > 128) return;
    if (room !== null) socket.leave(room);
    room = name;
    socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("publish", (body) => {
    if (room !== null) io.to(room).emit("message", { from: socket.id, body });
  });
});

async function main() {
  if (process.env.REDIS_URL) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  httpServer.listen(port, host, () => {
    console.log(`socket.io bench server on ${host}:${port}${process.env.REDIS_URL ? " (redis adapter)" : ""}`);
  });
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => io.close(() => process.exit(0)));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
