/**
 * The waypoint's drain (`drain.ts`) through its adapters on loopback, with clients and a backend that are not
 * Skiff's own (raw HTTP/1.1 sockets, nghttp, Python's http.server as an HTTP/1.1 backend): requests in flight when the drain begins are
 * all answered, HTTP/1.1 keep-alive clients are told `Connection: close` and reconnect elsewhere, an idle keep-alive
 * connection is closed after the grace, and an HTTP/2 client gets the two GOAWAY frames of RFC 9113 §6.8 while its
 * open streams complete. `tests/waypoint_test.ts` sends a real `skiff waypoint` SIGTERM.
 */

import assert from "node:assert/strict";
import net from "node:net";
import { WaypointDrain } from "./drain.ts";
import { interopTest, pythonServer, run, until, waypoint } from "./interop_util.ts";

/** One raw HTTP/1.1 keep-alive connection to the waypoint. */
async function connect(port: number) {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  let text = "";
  let ended = false;
  socket.on("data", (c: Uint8Array) => text += new TextDecoder().decode(c));
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.once("end", () => ended = true);
  return {
    socket,
    get text() {
      return text;
    },
    /** The waypoint ended the connection (FIN), rather than the test. */
    get endedByPeer() {
      return ended;
    },
    closed,
    send: (path: string) => socket.write(`GET ${path} HTTP/1.1\r\nhost: web\r\n\r\n`),
    [Symbol.dispose]() {
      socket.destroy();
    },
  };
}

interopTest(
  "draining: HTTP/1.1 requests in flight complete with Connection: close; idle keep-alive closes",
  async () => {
    await using backend = await pythonServer("h1_backend.py");
    const drain = new WaypointDrain({ graceMs: 500 });
    await using wp = await waypoint(backend.port, undefined, drain);
    await using elsewhere = await waypoint(backend.port);

    // An idle keep-alive connection: one request answered, then nothing.
    using idle = await connect(wp.port);
    idle.send("/hello");
    await until(() => idle.text.includes("\r\n0\r\n"), 5_000);
    assert.match(idle.text, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(idle.text, /connection: close/i);

    const N = 5;
    const clients = await Promise.all(Array.from({ length: N }, () => connect(wp.port)));
    for (const c of clients) c.send("/slow");
    await until(() => drain.inflight === N, 5_000);
    assert.equal(drain.inflight, N, "the slow requests are in flight");
    drain.begin();
    const ended = drain.wait(10_000);

    await Promise.all(clients.map((c) => c.closed));
    const answers = clients.map((c) => ({
      status: c.text.slice(0, 12),
      close: /\r\nconnection: close\r\n/i.test(c.text),
      body: c.text.endsWith("\r\n\r\nslow done"),
      endedByPeer: c.endedByPeer,
    }));
    assert.deepEqual(answers, Array(N).fill({ status: "HTTP/1.1 200", close: true, body: true, endedByPeer: true }));
    // Told to close, each client reconnects elsewhere (another waypoint) and is served there.
    for (const c of clients) {
      using again = await connect(elsewhere.port);
      again.send("/hello");
      await until(() => again.text.includes("\r\n0\r\n"), 5_000);
      assert.match(again.text, /^HTTP\/1\.1 200 /, `reconnected after ${c.text.length} bytes`);
    }
    // The idle keep-alive connection is closed by the waypoint once the grace is over.
    await idle.closed;
    assert.equal(idle.endedByPeer, true);
    assert.equal(await ended, "drained");
    const logged = wp.access.filter((l) => l.path === "/slow").map((l) => `${l.response_code} ${l.response_flags}`);
    assert.deepEqual(logged, Array(N).fill("200 -"));
  },
);

interopTest(
  "draining: an HTTP/2 client gets GOAWAY 2^31-1, then its last stream id; its open streams complete",
  async () => {
    await using backend = await pythonServer("h1_backend.py");
    const drain = new WaypointDrain({ graceMs: 300 });
    await using wp = await waypoint(backend.port, "http", drain);
    const url = `http://127.0.0.1:${wp.port}/slow`;
    const client = run("nghttp", ["-v", "-n", "-t", "10", `${url}?1`, `${url}?2`, `${url}?3`]);
    await until(() => drain.inflight === 3, 5_000);
    assert.equal(drain.inflight, 3, "three streams are in flight");
    drain.begin();
    const out = await client;
    assert.equal(out.code, 0, out.stdout.slice(-2000) + out.stderr);
    const lines = out.stdout.split("\n");
    const goaways = lines.flatMap((l, i) =>
      /recv GOAWAY frame/.test(l) ? [Number(/last_stream_id=(\d+)/.exec(lines[i + 1])![1])] : []
    );
    const statuses = lines.flatMap((l) => {
      const m = /recv \(stream_id=(\d+)\) :status: (\d+)/.exec(l);
      return m ? [[Number(m[1]), m[2]] as const] : [];
    });
    assert.deepEqual(statuses.map(([, s]) => s), ["200", "200", "200"]);
    const lastStream = Math.max(...statuses.map(([id]) => id));
    assert.deepEqual(goaways, [2 ** 31 - 1, lastStream]);
    assert.equal(await drain.wait(10_000), "drained");
  },
);
