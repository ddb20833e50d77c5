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
import { interopTest, PYTHON, pythonServer, run, until, waypoint } from "./interop_util.ts";

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

/**
 * A raw HTTP/2 client (python-hyper's hpack, frames by hand) that never answers a PING: after its first request is
 * answered it prints `ready`, and once a GOAWAY arrives it opens a stream every 100 ms for 2 s. Prints one JSON
 * line: the GOAWAY frames' last stream ids, and for each stream opened after the drain began how it ended.
 */
const IGNORE_PING_CLIENT = `
import json, socket, struct, sys, threading, time
import hpack
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
enc, dec = hpack.Encoder(), hpack.Decoder()
lock = threading.Lock()
def frame(kind, flags, sid, payload=b""):
    with lock:
        s.sendall(struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload)
def request(sid):
    block = enc.encode([(":method", "GET"), (":scheme", "http"), (":path", "/hello"), (":authority", "web")])
    frame(1, 0x5, sid, block)
goaways, ended = [], {}
first = threading.Event()
def read():
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags, sid, payload = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n]
            buf = buf[9 + n:]
            if kind == 4 and not flags & 1:
                frame(4, 1, 0)  # SETTINGS ack; a PING (kind 6) is never answered
            elif kind == 7:
                goaways.append(int.from_bytes(payload[:4], "big") & 0x7fffffff)
            elif kind == 1:
                dec.decode(payload)
                if sid == 1 and sid not in ended:
                    print("ready", flush=True)
                ended.setdefault(sid, "answered")
            elif kind == 3:
                ended.setdefault(sid, "reset %d" % int.from_bytes(payload[:4], "big"))
threading.Thread(target=read, daemon=True).start()
s.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n")
frame(4, 0, 0)
request(1)
while not goaways:
    time.sleep(0.01)
sids = list(range(3, 83, 2))
for sid in sids:
    try:
        request(sid)
    except OSError:
        ended.setdefault(sid, "connection closed")
    time.sleep(0.1)
deadline = time.time() + 5
while len(goaways) < 2 and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({"goaways": goaways, "ended": [ended.get(sid, "nothing") for sid in sids]}), flush=True)
`;

interopTest(
  "draining: an HTTP/2 client that never answers the PING gets the final GOAWAY after the grace anyway",
  async () => {
    await using backend = await pythonServer("h1_backend.py");
    const drain = new WaypointDrain({ graceMs: 300 });
    await using wp = await waypoint(backend.port, "http", drain);
    const child = new Deno.Command(PYTHON, {
      args: ["-c", IGNORE_PING_CLIENT, String(wp.port)],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const line = async () => {
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`the client exited: ${JSON.stringify(text)}`);
        text += value;
      }
      const at = text.indexOf("\n");
      const out = text.slice(0, at);
      text = text.slice(at + 1);
      return out;
    };
    try {
      assert.equal(await line(), "ready");
      drain.begin();
      const result = JSON.parse(await line());
      // 40 streams opened over 4 s after the first GOAWAY: after the grace (300 ms) the final GOAWAY comes and
      // none is served any more (refused with REFUSED_STREAM, or the connection ended). Half is the bound, so a
      // busy machine that fires the grace timer late does not fail it.
      assert.equal(result.goaways.length, 2, JSON.stringify(result));
      assert.equal(result.goaways[0], 2 ** 31 - 1);
      assert.ok(result.goaways[1] < 2 ** 31 - 1);
      const served = result.ended.filter((e: string) => e === "answered").length;
      assert.ok(served <= 20, `${served} of 40 streams opened after the drain began were served`);
    } finally {
      await reader.cancel();
      try {
        child.kill();
      } catch { /* exited */ }
      await child.status;
      await child.stderr.cancel();
    }
  },
);
