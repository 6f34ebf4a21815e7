// Prints the statuses arriving in room status:<user> as they come (Node.js 22+, or 20 with
// --experimental-websocket): node watch.mjs [USER] [WS_URL]
import { connect } from "../../clients/js/roomfleet.js";

const user = process.argv[2] ?? "u42";
const url = process.argv[3] ?? "ws://127.0.0.1:8080/ws";
const room = connect({ url, room: `status:${user}`, user: `${user}-watch` });
room.on("state", (e) => console.error(`[status:${user}] ${e.state}`));
room.on("message", (m) => {
  const s = m.body ?? {};
  console.log(`seq ${m.seq}  job #${s.job}  ${s.text ?? JSON.stringify(m.body)}`);
});
room.on("error", (e) => console.error(`error ${e.code}: ${e.message ?? ""}`));
