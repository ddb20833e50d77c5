import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import net from "node:net";
import { PassThrough } from "node:stream";
import { relay } from "./relay.ts";

Deno.test("relay() given a side that is already gone closes the other and finishes", async (t) => {
  for (const gone of ["a", "b"] as const) {
    await t.step(`${gone} closed before the relay began`, async () => {
      // A client that reset its tunnel while the upstream was being dialled: its stream has emitted `close`
      // already, and the fresh upstream connection must not be left open waiting for it.
      const a = new PassThrough();
      const b = new PassThrough();
      const [dead, live] = gone === "a" ? [a, b] : [b, a];
      dead.destroy();
      await new Promise((resolve) => dead.once("close", resolve));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stuck = new Promise<"stuck">((resolve) => timer = setTimeout(() => resolve("stuck"), 1_000));
      const outcome = await Promise.race([relay(a, b).done.then(() => "done" as const), stuck]);
      clearTimeout(timer);
      live.destroy();
      assert.equal(outcome, "done", "the relay waited on the side that was still open");
    });
  }
});

/** Two connected loopback TCP sockets (the dialling end first), both half-open capable, as the proxies make them. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const dialled = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true }, () => resolve(s)).once("error", reject);
  });
  const pair: [net.Socket, net.Socket] = [dialled, await accepted];
  server.close(); // stops listening now; its callback would wait for the pair to close
  return pair;
}

/** Everything `s` receives until its end. */
function readAll(s: net.Socket): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    s.on("data", (c: Uint8Array) => chunks.push(c));
    s.once("end", () => resolve(new Uint8Array(Buffer.concat(chunks))));
    s.once("error", reject);
  });
}

/** app ⇄ a ⇐relay⇒ b ⇄ upstream, on loopback TCP; `before` runs on `a` and `b` before the relay starts. */
async function relayed(before: (a: net.Socket, b: net.Socket) => void = () => {}) {
  const [app, a] = await socketPair();
  const [b, upstream] = await socketPair();
  before(a, b);
  return { app, upstream, a, b, relay: relay(a, b) };
}

Deno.test("relay() carries bytes both ways, counts them, and turns each end into a half-close", async (t) => {
  const cases = [
    { name: "the client ends first", first: "app" as const },
    { name: "the upstream ends first", first: "upstream" as const },
    { name: "a side paused before the relay began still flows", first: "app" as const, paused: true },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { app, upstream, relay: r } = await relayed((a, b) => {
        if (c.paused) a.pause(), b.pause();
      });
      const toUpstream = readAll(upstream);
      const toApp = readAll(app);
      const [x, y] = c.first === "app" ? [app, upstream] : [upstream, app];
      x.end("hello"); // a half-close: x can still read
      assert.equal(new TextDecoder().decode(await (c.first === "app" ? toUpstream : toApp)), "hello");
      y.end("world");
      assert.equal(new TextDecoder().decode(await (c.first === "app" ? toApp : toUpstream)), "world");
      const result = await r.done;
      assert.deepEqual(result, { aToB: 5, bToA: 5 });
      app.destroy();
      upstream.destroy();
    });
  }
});

Deno.test("relay() holds a slow reader's bytes back at the source instead of buffering them", async () => {
  const { app, upstream, b, relay: r } = await relayed();
  upstream.pause(); // reads nothing: the kernel buffers fill, then b's, then the relay must stop reading a
  const chunk = new Uint8Array(256 * 1024);
  let offered = 0;
  // The app writes for as long as its own socket takes bytes, and then some: 64 MiB at most.
  while (offered < 64 * 1024 * 1024) {
    offered += chunk.byteLength;
    if (!app.write(chunk)) {
      const drained = await Promise.race([
        new Promise((resolve) => app.once("drain", () => resolve(true))),
        new Promise((resolve) => setTimeout(() => resolve(false), 500)),
      ]);
      if (!drained) break;
    }
  }
  assert.ok(offered < 64 * 1024 * 1024, "the app's writes never blocked: nothing held the bytes back");
  // What the relay itself holds for the slow side: its write buffer, at most a high-water mark and one chunk.
  assert.ok(b.writableLength <= b.writableHighWaterMark + 256 * 1024, `b buffered ${b.writableLength} bytes`);
  const received = new Promise<number>((resolve) => {
    let n = 0;
    upstream.on("data", (c: Uint8Array) => n += c.byteLength);
    upstream.once("end", () => resolve(n));
  });
  upstream.resume();
  app.end();
  assert.equal(await received, offered, "every byte arrives once the reader reads");
  upstream.end();
  app.resume();
  await r.done;
  app.destroy();
  upstream.destroy();
});

Deno.test("relay() keeps few listeners on each side for the life of an idle connection", async () => {
  // Each listener (and what it closes over) is held for as long as the connection lives, idle or not: with Node's
  // pipe() the relay added ten to each side, with its own pump six (the relay's four and the pump's two).
  // Counts, not bytes: bench/idle_heap.ts measures the heap (issue 18).
  const listeners = (s: net.Socket) => s.eventNames().reduce((n, e) => n + s.listenerCount(e), 0);
  let before = { a: 0, b: 0 };
  const { app, upstream, a, b, relay: r } = await relayed((a, b) => before = { a: listeners(a), b: listeners(b) });
  await new Promise((resolve) => setTimeout(resolve, 10));
  const added = { a: listeners(a) - before.a, b: listeners(b) - before.b };
  assert.ok(added.a <= 6 && added.b <= 6, `the relay added ${JSON.stringify(added)} listeners`);
  app.end();
  upstream.end();
  await r.done;
  app.destroy();
  upstream.destroy();
});
