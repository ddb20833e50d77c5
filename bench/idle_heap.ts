/**
 * Live heap per idle tunnelled connection (issue 18: "each idle tunnelled connection holds ~26 KB"), on the
 * in-process tier (tests/harness/inprocess.ts: two real ztunnels' pod handling, HBONE over mTLS on loopback, no
 * root). Opens N connections client → server through both ztunnels, one byte echoed on each so every hop is up,
 * forces full GCs and reads the live heap; then the same N connections straight to the app, which is what the
 * app's two ends hold without Skiff. The difference per connection is what the two ztunnels hold for it (the
 * outbound end on node a, the inbound end on node b, sharing one pooled HBONE connection).
 *
 * ```sh
 * deno run --allow-all --v8-flags=--expose-gc bench/idle_heap.ts [connections=500]
 * ```
 *
 * @module
 */

import net from "node:net";
import { InProcessMesh } from "../tests/harness/inprocess.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("bench/idle_heap.ts: run with --v8-flags=--expose-gc");
const N = Number(Deno.args[0] ?? 500);

/** Live heap after full collections, in bytes. */
async function liveHeap(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc!();
    await new Promise((r) => setTimeout(r, 50));
  }
  return Deno.memoryUsage().heapUsed;
}

/** Writes one byte on `s` and resolves once it comes back. */
function echoOnce(s: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once("data", () => resolve());
    s.once("error", reject);
    s.write("x");
  });
}

await using mesh = await InProcessMesh.create();
const client = await mesh.pod("client", { node: "a" });
const server = await mesh.pod("server", { node: "b" });
await server.echo(9000);

// Warm-up: the pooled HBONE connection, certificates, compiled code.
for (let i = 0; i < 20; i++) {
  const s = await client.connect(server.addr(9000));
  await echoOnce(s);
  s.destroy();
}

async function hold(connect: () => Promise<net.Socket>): Promise<number> {
  const before = await liveHeap();
  const sockets: net.Socket[] = [];
  for (let i = 0; i < N; i++) {
    const s = await connect();
    await echoOnce(s);
    sockets.push(s);
  }
  const after = await liveHeap();
  for (const s of sockets) s.destroy();
  await new Promise((r) => setTimeout(r, 500));
  return (after - before) / N;
}

const tunnelled = await hold(() => client.connect(server.addr(9000)));
const direct = await hold(() =>
  new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: server.ip, port: 9000 }, () => resolve(s));
    s.once("error", reject);
  })
);
const kib = (b: number) => (b / 1024).toFixed(1);
console.log(
  `live heap per idle connection, ${N} held: tunnelled ${kib(tunnelled)} KiB, direct ${kib(direct)} KiB; ` +
    `the two ztunnels' share ${kib(tunnelled - direct)} KiB`,
);
