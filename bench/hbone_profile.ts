/**
 * A one-tunnel bulk transfer through two in-process ztunnels (the in-process tier, tests/harness/inprocess.ts: real
 * pod handling, HBONE over mTLS on loopback, no root), for profiling the byte path (issue 18 item 4). Everything
 * runs on one thread, so the figure is the whole path's CPU cost per byte: app writer, outbound, both HTTP/2
 * codecs, both TLS ends, inbound, sink.
 *
 * ```sh
 * deno run --allow-all bench/hbone_profile.ts [MiB=500] [rounds=3] [--bare]
 * deno run --allow-all --cpu-prof --cpu-prof-dir=/tmp/prof bench/hbone_profile.ts 500 1
 * deno run --allow-read bench/cpuprofile_top.ts /tmp/prof/*.cpuprofile    # self time per function, bottom-up
 * ```
 *
 * Prints MiB/s and the process's CPU time (user + system, all threads) per MiB for each round, and their medians:
 * on a shared machine the CPU per MiB moves much less than the rate does, and its best round least of all. With
 * `--bare` the tunnel is instead bench/tls_relay.ts's bare `node:tls` relay pair (same certificates and TLS
 * settings, no HTTP/2), in this process too: the same-thread ceiling.
 * Each round also counts the writes handed to the runtime's sockets (`_write`/`_writev` calls, each one op and one
 * syscall or TLS record run) per MiB, on TLS sockets and on plain ones: unlike the rates, a count that does not move
 * with the load of a shared machine.
 *
 * @module
 */

import net from "node:net";
import process from "node:process";
import { InProcessMesh } from "../tests/harness/inprocess.ts";
import { runTlsRelay } from "./tls_relay.ts";

const MIB = 1024 * 1024;
const args = Deno.args.filter((a) => !a.startsWith("--"));
const bare = Deno.args.includes("--bare");
const total = Number(args[0] ?? 500) * MIB;
const rounds = Number(args[1] ?? 3);
const CHUNK = 64 * 1024;

await using mesh = await InProcessMesh.create();
const client = await mesh.pod("client", { node: "a" });
const server = await mesh.pod("server", { node: "b" });

// The sink: counts what arrives and, once the sender half-closes, answers with the count.
// Writes handed to sockets: `[tls, plain]` calls of `_write`/`_writev` (node:tls sockets are net.Sockets too).
const writes = [0, 0];
const proto = net.Socket.prototype as unknown as Record<"_write" | "_writev", (...a: unknown[]) => unknown>;
for (const method of ["_write", "_writev"] as const) {
  const original = proto[method];
  proto[method] = function (this: { encrypted?: boolean }, ...a: unknown[]) {
    writes[this.encrypted ? 0 : 1]++;
    return original.apply(this, a);
  };
}

const sink = net.createServer({ allowHalfOpen: true }, (s) => {
  let n = 0;
  s.on("error", () => {});
  s.on("data", (d: Uint8Array) => n += d.byteLength);
  s.on("end", () => s.end(String(n)));
});
await new Promise<void>((resolve) => sink.listen({ host: server.ip, port: 9000 }, resolve));

// The bare pair: relay A on the client's 9001 → TLS → relay B on the server's 9002 → the sink.
const relays = bare
  ? [
    ...await runTlsRelay({
      role: "client",
      credentials: await mesh.pki.credentials("default/client"),
      routes: [{ listen: { host: client.ip, port: 9001 }, connect: { host: server.ip, port: 9002 } }],
    }),
    ...await runTlsRelay({
      role: "server",
      credentials: await mesh.pki.credentials("default/server"),
      routes: [{ listen: { host: server.ip, port: 9002 }, connect: { host: server.ip, port: 9000 } }],
    }),
  ]
  : [];

/** Sends `total` bytes through one tunnel; resolves once the sink has counted them all with the seconds and CPU. */
async function transfer(): Promise<{ seconds: number; cpuMs: number; tlsWrites: number; plainWrites: number }> {
  const socket = bare
    ? await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: client.ip, port: 9001, allowHalfOpen: true }, () => resolve(s)).once(
        "error",
        reject,
      );
    })
    : await client.connect(server.addr(9000));
  const chunk = new Uint8Array(CHUNK).fill(0x61);
  const start = performance.now();
  const cpu = process.cpuUsage();
  writes.fill(0);
  const reply = new Promise<string>((resolve, reject) => {
    let got = "";
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => got += d);
    socket.once("end", () => resolve(got));
    socket.once("error", reject);
  });
  let sent = 0;
  while (sent < total) {
    const n = Math.min(CHUNK, total - sent);
    sent += n;
    if (!socket.write(n === CHUNK ? chunk : chunk.subarray(0, n))) {
      await new Promise((r) => socket.once("drain", r));
    }
  }
  socket.end();
  const counted = Number(await reply);
  const seconds = (performance.now() - start) / 1000;
  const used = process.cpuUsage(cpu);
  socket.destroy();
  if (counted !== total) throw new Error(`transfer: the sink counted ${counted} bytes of ${total}`);
  const [tlsWrites, plainWrites] = writes.map((n) => n / (total / MIB));
  return { seconds, cpuMs: (used.user + used.system) / 1000, tlsWrites, plainWrites };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rates: number[] = [];
const costs: number[] = [];
for (let i = 0; i < rounds; i++) {
  const { seconds, cpuMs, tlsWrites, plainWrites } = await transfer();
  rates.push(total / MIB / seconds);
  costs.push(cpuMs / (total / MIB));
  console.log(
    `round ${i + 1}: ${(total / MIB).toFixed(0)} MiB in ${seconds.toFixed(2)} s = ${rates.at(-1)!.toFixed(0)} MiB/s, ` +
      `${costs.at(-1)!.toFixed(2)} CPU ms/MiB, socket writes/MiB: TLS ${tlsWrites.toFixed(1)}, plain ${
        plainWrites.toFixed(1)
      }`,
  );
}
const what = bare ? "a bare node:tls relay pair" : "one HBONE tunnel";
console.log(
  `median: ${median(rates).toFixed(0)} MiB/s, ${median(costs).toFixed(2)} CPU ms/MiB (best ${
    Math.min(...costs).toFixed(2)
  }) over ${what}, one thread`,
);
for (const s of [sink, ...relays]) await new Promise((r) => s.close(r));
