/**
 * New connections through two in-process ztunnels (the in-process tier, tests/harness/inprocess.ts: real pod
 * handling, HBONE over mTLS on loopback, no root), for profiling the per-connection path (issue 18 item 4: the
 * "new connections/s ≥ 3× stunnel" target). Each connection is an app's: dial the client pod's 15001, send one
 * byte, read its echo from the server pod's app, close; `concurrency` run at once. Everything runs on one thread,
 * so the process's CPU time per connection is the whole path's cost: outbound, the pooled HBONE connection's new
 * stream, inbound, the dial to the app, both relays, telemetry and the access log (at LOG_LEVEL=warn, as the
 * benchmarks run ztunnel: no access-log line is written).
 *
 * ```sh
 * deno run --allow-all bench/conns_profile.ts [connections=3000] [concurrency=16] [rounds=3]
 * deno run --allow-all --cpu-prof --cpu-prof-dir=/tmp/cprof bench/conns_profile.ts 5000 16 1
 * deno run --allow-read bench/cpuprofile_top.ts /tmp/cprof/*.cpuprofile    # self time per function, bottom-up
 * ```
 *
 * @module
 */

import process from "node:process";
import { exchangeAll, InProcessMesh } from "../tests/harness/inprocess.ts";

if (Deno.env.get("LOG_LEVEL") === undefined) Deno.env.set("LOG_LEVEL", "warn");

const [count, concurrency, rounds] = [3000, 16, 3].map((d, i) => Number(Deno.args[i] ?? d));

await using mesh = await InProcessMesh.create();
const client = await mesh.pod("client", { node: "a" });
const server = await mesh.pod("server", { node: "b" });
await server.echo(8080);
// One connection first: the HBONE connection and both certificates are in place before the clock starts.
await exchangeAll(await client.connect(server.addr(8080)), "x");

const results: { rate: number; cpuUs: number }[] = [];
for (let r = 0; r < rounds; r++) {
  let next = 0;
  let failed = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      next++;
      try {
        if (await exchangeAll(await client.connect(server.addr(8080)), "x") !== "x") failed++;
      } catch {
        failed++;
      }
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  const used = process.cpuUsage(cpu0);
  const cpuUs = (used.user + used.system) / count;
  results.push({ rate: count / seconds, cpuUs });
  console.log(
    `round ${r + 1}: ${count} connections, ${concurrency} at once: ${(count / seconds).toFixed(0)}/s, ` +
      `${cpuUs.toFixed(0)} CPU µs per connection, ${failed} failed`,
  );
}
const median = <T>(xs: T[], key: (x: T) => number) => xs.map(key).sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(
  `median: ${median(results, (r) => r.rate).toFixed(0)} connections/s, ${
    median(results, (r) => r.cpuUs).toFixed(0)
  } CPU µs per connection (both ztunnels, the app and the client, one thread)`,
);
