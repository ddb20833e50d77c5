/**
 * ztunnel on two threads (`--workers 2`: the main thread and one worker, dataplane/ztunnel/threads.ts), in network
 * namespaces with real ztunnel processes, the test playing the node agent. The kernel spreads each pod's new
 * connections over the threads' SO_REUSEPORT listeners, so every count here is over both threads:
 *
 * 1. Many short connections from a captured client pod to a captured server pod over HBONE: every one succeeds,
 *    both threads of the client's ztunnel served some (the access log's `worker` field), and `/metrics` counts
 *    exactly the connections made, summed over the threads.
 * 2. Fail closed on every thread: plaintext connections from an uncaptured pod (each its own 4-tuple, so they
 *    land on both threads of the server's ztunnel) are allowed, then a DENY added to the config refuses every new
 *    one and closes every open one, on the worker thread as on the main one.
 * 3. Connections held on both threads survive a config change that does not concern them; SIGTERM drains them,
 *    the worker's included: each ends by the drain deadline and the process exits 0.
 */

import assert from "node:assert/strict";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call, dialFrom, roundTrip } from "./harness/tcp.ts";
import { echoApp, hboneWorkload, meshDir, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const NS = "default";
const PORT = 8080;
/** Two threads: the main one and a worker, as `--workers 2` gives. */
const ENV = { SKIFF_WORKERS: "2" };

/** Sum of every series of a counter in a ztunnel's `/metrics`. */
async function total(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return text.split("\n").filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

/** How many access log lines each thread wrote, by `worker` field. */
function byThread(lines: Record<string, unknown>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of lines) out[String(l.worker)] = (out[String(l.worker)] ?? 0) + 1;
  return out;
}

/** Runs `n` calls, `parallel` at a time; returns the answers. */
async function calls(n: number, parallel: number, one: (i: number) => Promise<string>): Promise<string[]> {
  const answers: string[] = [];
  for (let i = 0; i < n; i += parallel) {
    const batch = Array.from({ length: Math.min(parallel, n - i) }, (_, j) => one(i + j));
    answers.push(...await Promise.all(batch));
  }
  return answers;
}

/** How a held connection ends: "closed", an error name, or "open" if it did not end within `ms`. */
async function ending(conn: Deno.TcpConn, ms: number): Promise<string> {
  const timer = setTimeout(() => conn.close(), ms);
  try {
    return (await conn.read(new Uint8Array(100))) === null ? "closed" : "data";
  } catch (error) {
    // Closed here by the timer: the read is interrupted (or finds the connection gone).
    const name = (error as Error).name;
    return name === "Interrupted" || name === "BadResource" ? "open" : name;
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/** `n` connections from `from` to the server, each answered once, held open. */
async function hold(from: Pod, server: Pod, n: number): Promise<Deno.TcpConn[]> {
  const held: Deno.TcpConn[] = [];
  for (let i = 0; i < n; i++) {
    const conn = await dialFrom(from.netnsPath, server.address, PORT);
    held.push(conn);
    assert.equal(await roundTrip(conn, `h${i}`), `server:h${i}`);
  }
  return held;
}

const isReload = (l: Record<string, unknown>) => l.msg === "local config reloaded";

netnsTest("ztunnel --workers 2: both threads serve, count, fail closed and drain", async (t) => {
  await using cluster = await NetnsCluster.create("zt-workers", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const client = await cluster.addPod(nodeA, "client");
  const plain = await cluster.addPod(nodeA, "plain");
  const server = await cluster.addPod(nodeB, "server");
  for (const p of [client, server]) await installRedirect(p.netnsPath);

  await using mesh = await meshDir();
  const config = (policies: string, services = "[]") =>
    `workloads:
${hboneWorkload(client, NS)}
${hboneWorkload(server, NS)}
  - { uid: plain, name: plain, namespace: ${NS}, serviceAccount: plain, node: ${nodeA.name}, addresses: [${plain.address}] }
services: ${services}
policies: ${policies}
`;
  await Deno.writeTextFile(mesh.configFile, config("[]"));
  await using _app = echoApp(server, PORT);
  await using zA = await ZtunnelProcess.start("workers-a", mesh, ENV);
  await using zB = await ZtunnelProcess.start("workers-b", mesh, ENV);
  await zA.enroll(client, NS);
  await zB.enroll(server, NS);

  await t.step(
    "short connections over HBONE: every one answered, both threads served, /metrics counts each",
    async () => {
      const n = 60;
      const answers = await calls(n, 4, (i) => call(client.netnsPath, server.address, PORT, `s${i}`));
      assert.deepEqual(answers.filter((a, i) => a !== `server:s${i}`), [], "every connection answered");
      const outbound = () => zA.accessLogs().filter((l) => l.direction === "outbound");
      const inbound = () => zB.accessLogs().filter((l) => l.direction === "inbound");
      await zA.waitForLog(() => outbound().length >= n);
      await zB.waitForLog(() => inbound().length >= n);
      const threads = byThread(outbound());
      assert.deepEqual(
        Object.keys(threads).sort(),
        ["0", "1"],
        `both threads of the client's ztunnel: ${JSON.stringify(threads)}`,
      );
      assert.equal(outbound().length, n);
      assert.equal(inbound().length, n);
      assert.equal(await total(zA.ports.metrics, "istio_tcp_connections_opened_total"), n, "client side, both threads");
      assert.equal(await total(zB.ports.metrics, "istio_tcp_connections_opened_total"), n, "server side");
      // /config_dump lists the pods served now (it listed the pods of the moment ztunnel started: none).
      const dump = await (await fetch(`http://127.0.0.1:${zA.ports.admin}/config_dump`)).json();
      assert.deepEqual(dump.config.pods.map((p: { netns: string }) => p.netns), [client.netnsPath]);
    },
  );

  await t.step(
    "a DENY added after start refuses every new connection and closes every open one, on both threads",
    async () => {
      const m = 40;
      const before = zB.accessLogs().length;
      const allowed = await calls(m, 4, (i) => call(plain.netnsPath, server.address, PORT, `p${i}`));
      assert.deepEqual(allowed.filter((a, i) => a !== `server:p${i}`), [], "plaintext through 15006 is allowed first");
      await zB.waitForLog(() => zB.accessLogs().length >= before + m);
      const served = byThread(zB.accessLogs().slice(before));
      assert.deepEqual(
        Object.keys(served).sort(),
        ["0", "1"],
        `both threads of the server's ztunnel: ${JSON.stringify(served)}`,
      );

      const held = await hold(plain, server, 12);
      const reloads = zB.lines.filter(isReload).length;
      const loggedBefore = zB.accessLogs().length;
      await Deno.writeTextFile(
        mesh.configFile,
        config(`
  - name: no-plain
    namespace: ${NS}
    scope: NAMESPACE
    action: DENY
    rules: [{ clauses: [{ matches: [{ sourceIps: ["${plain.address}/32"] }] }] }]`),
      );
      await zB.waitForLog(() => zB.lines.filter(isReload).length > reloads);
      // New connections first, then the held ones: both counted before either is asserted.
      const denied = await calls(m, 4, (i) => call(plain.netnsPath, server.address, PORT, `d${i}`, 3_000));
      const ends = await Promise.all(held.map((c) => ending(c, 5_000)));
      const through = denied.filter((a) => a.startsWith("server:")).length;
      const open = ends.filter((e) => e === "open").length;
      assert.deepEqual({ through, open }, { through: 0, open: 0 }, `new: ${denied}; held: ${ends}`);
      await zB.waitForLog(() => zB.accessLogs().length >= loggedBefore + m + held.length);
      const logged = zB.accessLogs().slice(loggedBefore);
      const closed = logged.filter((l) => String(l.error).startsWith("connection closed due to policy change"));
      assert.equal(closed.length, held.length, "each held one closed for the policy, by the thread that held it");
      const where = JSON.stringify(byThread(closed));
      assert.deepEqual(Object.keys(byThread(closed)).sort(), ["0", "1"], `held on both: ${where}`);
      const refusals = logged.filter((l) => !closed.includes(l));
      assert.equal(refusals.filter((l) => l.error !== undefined).length, m, "each refusal logged with its reason");
      assert.deepEqual(Object.keys(byThread(refusals)).sort(), ["0", "1"], "refused by both threads");
    },
  );

  await t.step("held connections on both threads survive an unrelated change; SIGTERM drains them", async () => {
    let reloads = zB.lines.filter(isReload).length;
    await Deno.writeTextFile(mesh.configFile, config("[]"));
    await zB.waitForLog(() => zB.lines.filter(isReload).length > reloads);
    const held = await hold(plain, server, 12);
    reloads = zB.lines.filter(isReload).length;
    const unrelated = `
  - { name: other, namespace: ${NS}, hostname: other.${NS}.svc.cluster.local, addresses: [{ address: 10.96.7.7 }], ports: [{ port: 80, targetPort: 8080 }] }`;
    await Deno.writeTextFile(mesh.configFile, config("[]", unrelated));
    await zB.waitForLog(() => zB.lines.filter(isReload).length > reloads);
    // The worker applies the change after the main thread logs it; a round trip through each connection after a
    // moment shows none was closed.
    await new Promise((r) => setTimeout(r, 500));
    const answers = await Promise.all(held.map((c, i) => roundTrip(c, `again${i}`)));
    assert.deepEqual(answers.filter((a, i) => a !== `server:again${i}`), [], "every held connection still answers");

    const before = zB.accessLogs().length;
    Deno.kill(zB.pid, "SIGTERM");
    // The harness's drain deadline is 1 s: every held connection ends by then (5 s allows for a busy machine).
    const ends = await Promise.all(held.map((c) => ending(c, 5_000)));
    assert.equal(ends.filter((e) => e === "open").length, 0, `every held connection ended: ${ends}`);
    assert.equal((await zB.status).code, 0, "the drained ztunnel exits 0");
    const drained = zB.accessLogs().slice(before);
    assert.equal(drained.length, held.length, "each held connection logged as it ended");
    assert.deepEqual(
      Object.keys(byThread(drained)).sort(),
      ["0", "1"],
      `held on both: ${JSON.stringify(byThread(drained))}`,
    );
  });
});
