/**
 * How big a mesh one node can hold (issue 18): a real `skiff control` over 10,000 and then 100,000 pods (1,000
 * services, 100 policies, 10 nodes), and a real `skiff ztunnel` of one node subscribing to it, as shipped (its
 * threads are the machine's cores) and with `--workers 1`. For each it prints the time from the ztunnel's start
 * until it has applied its snapshot, how many parts the snapshot came in, and the ztunnel's RSS after 10 s of
 * quiet. Targets: a ztunnel holding 10k workloads and 1k services ≤ 120 MiB after 10 s quiet; 100k workloads
 * synced (streamed both ways: the snapshot in parts, so no string holds the whole mesh).
 *
 * Run: `deno run --allow-all bench/sync.ts` (`deno task bench` runs it).
 *
 * @module
 */

import { ControlProcess } from "../tests/harness/control.ts";
import { meshDir, ZtunnelProcess } from "../tests/harness/ztunnel.ts";
import { meshManifests } from "./mesh_manifests.ts";
import { rssMiB } from "./common.ts";

const QUIET_MS = 10_000;

interface Held {
  syncMs: number;
  rss: number;
  workloads: number;
  parts: number;
}

/** One ztunnel subscribing to `control` as node-0, with `env`; what it took and what it holds after the quiet. */
async function hold(control: ControlProcess, token: string, env: Record<string, string>): Promise<Held> {
  await using mesh = await meshDir();
  {
    const started = performance.now();
    await using z = await ZtunnelProcess.start("sync", { dir: mesh.dir, control: control.url, tokenFile: token }, {
      LOG_LEVEL: "info",
      ...env,
    });
    const synced = await z.waitForLog((l) => l.msg === "config synced from the control plane", 600_000);
    const syncMs = performance.now() - started;
    const subscribed = control.process.lines.filter((l) => l.msg === "client subscribed").at(-1);
    await new Promise((r) => setTimeout(r, QUIET_MS));
    return {
      syncMs,
      rss: rssMiB(z.pid),
      workloads: Number(synced.sent ?? 0),
      parts: Number(subscribed?.parts ?? 0),
    };
  }
}

const results: [string, boolean, string][] = [];
for (const pods of [10_000, 100_000]) {
  const startedAt = performance.now();
  await using control = await ControlProcess.start(
    meshManifests({ pods, services: 1_000, policies: 100, nodes: 10, namespaces: 20 }),
    [],
    { LOG_LEVEL: "info" },
    900_000,
  );
  const built = await control.process.waitForLog((l) => l.msg === "pushed", 900_000);
  console.log(
    `control plane with ${built.workloads} workloads, ${built.services} services: first build ${built.ms} ms, ` +
      `ready ${Math.round(performance.now() - startedAt)} ms after start, RSS ${
        rssMiB(control.process.pid).toFixed(0)
      } MiB`,
  );
  const token = await control.addNode("node-0");
  for (const [label, env] of [["as shipped", {}], ["--workers 1", { SKIFF_WORKERS: "1" }]] as const) {
    const h = await hold(control, token, env);
    console.log(
      `  ztunnel (${label}): synced ${h.workloads} resources in ${h.parts} parts, ${Math.round(h.syncMs)} ms ` +
        `from its start; RSS after ${QUIET_MS / 1000} s quiet ${h.rss.toFixed(0)} MiB`,
    );
    if (pods === 10_000 && label === "as shipped") {
      results.push([
        "one ztunnel holding 10k workloads, 1k services: RSS after 10 s quiet ≤ 120 MiB",
        h.rss <= 120,
        `${h.rss.toFixed(0)} MiB`,
      ]);
    }
    if (pods === 100_000 && label === "as shipped") {
      results.push([
        "a node syncs 100k workloads, the snapshot streamed in parts",
        h.workloads >= pods && h.parts > 1,
        `${h.workloads} resources in ${h.parts} parts, ${Math.round(h.syncMs)} ms, RSS ${h.rss.toFixed(0)} MiB`,
      ]);
    }
  }
}
for (const [what, met, detail] of results) console.log(`target ${what}: ${met ? "met" : "MISSED"} (${detail})`);
