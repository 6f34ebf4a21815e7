// Starts a real `fleet up` binary for the tests: free ports (port 0, read back from the
// banner), readiness by polling /readyz, and a kill when the test process ends.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

/** Waits for `cond` (async) to hold, polling every 20 ms; throws naming `what`. */
export async function waitFor(what, cond, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves on the first `type` event of `room` that `pred` accepts. */
export function next(room, type, pred = () => true, timeoutMs = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = room.on(type, (ev) => {
      if (!pred(ev)) return;
      clearTimeout(timer);
      off();
      resolve(ev);
    });
  });
}

/**
 * `fleet up` on 127.0.0.1 with free ports and `args` added. FLEET_BIN names the binary
 * (`cargo test` sets it); without it the debug build of this checkout is used.
 */
export async function startFleet(args = []) {
  const bin = process.env.FLEET_BIN ?? new URL("../../../target/debug/fleet", import.meta.url).pathname;
  if (!existsSync(bin)) {
    throw new Error(`no fleet binary at ${bin}: run \`cargo build --bin fleet\` or set FLEET_BIN`);
  }
  const child = spawn(bin, ["up", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--api", "127.0.0.1:0", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  let exited = null;
  child.once("exit", (code) => (exited = code));
  await waitFor("the fleet banner", () => {
    if (exited !== null) throw new Error(`fleet exited with ${exited}: ${err}`);
    return /admin: +http:\/\/\S+\//.test(out);
  });
  const chat = /chat: +(http:\/\/[0-9.:]+)\//.exec(out)[1];
  const admin = /admin: +(http:\/\/[0-9.:]+)\//.exec(out)[1];
  const ws = /ws: +(ws:\/\/\S+\/ws)\?/.exec(out)[1];
  await waitFor("the router's /readyz", async () => {
    try {
      return (await fetch(`${admin}/readyz`)).ok;
    } catch {
      return false;
    }
  });
  return {
    chat,
    admin,
    ws,
    async stop() {
      process.removeListener("exit", kill);
      if (exited !== null) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(kill, 5000);
      await gone;
      clearTimeout(timer);
    },
  };
}
