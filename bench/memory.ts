/**
 * Memory per mode (issue 18): the resident set of a real `skiff ztunnel` and `skiff waypoint`, each started
 * the way the tests start them (tests/harness: `deno run main.ts MODE`, with the mode's V8 flags), read from
 * /proc/PID/status as bench/dataplane.ts and bench/waypoint.ts read it.
 *
 * One node, a control plane, two enrolled pods (client and server) and a waypoint for the server's service.
 * Figures: each proxy's RSS once ready; again once 200 connections went client → server through ztunnel (HBONE,
 * both ends on this node) and 200 HTTP requests went through the waypoint, all closed, after a 3 s settle ("idle
 * after traffic", what bench/dataplane.ts calls idle); and ztunnel's RSS while 200 tunnelled connections are
 * held open and idle. Once with the modes' V8 flags (mesh/v8_flags.ts), once with V8's defaults; then what the
 * flags cost in speed (bench/hbone_profile.ts's CPU per MiB, with and without them) and the live heap per idle
 * tunnelled connection (bench/idle_heap.ts). Run as root: `deno run --allow-all bench/memory.ts` (`deno task
 * bench` runs it). `SKIFF_BENCH_V8_FLAGS=--a,--b` runs the proxies once with those flags instead (comma-separated,
 * as DENO_V8_FLAGS; empty for V8's defaults), to try settings.
 *
 * @module
 */

import { installRedirect } from "../cni/redirect_linux.ts";
import { ControlProcess } from "../tests/harness/control.ts";
import { IS_ROOT, NetnsCluster, type Pod } from "../tests/harness/netns.ts";
import { SkiffProcess } from "../tests/harness/process.ts";
import { dialFrom, listenIn } from "../tests/harness/tcp.ts";
import { podUid, ZtunnelProcess } from "../tests/harness/ztunnel.ts";
import { v8FlagsFor } from "../mesh/v8_flags.ts";
import { memoryOf, rssMiB, until200 } from "./common.ts";

const VIP = "10.96.9.2";
const ECHO = 5002;
const HTTP = 8080;
const CONNECTIONS = 200;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Echoes bytes back, for tunnelled connections. */
async function serveEcho(listener: Deno.TcpListener) {
  for await (const conn of listener) {
    (async () => {
      const buf = new Uint8Array(16 * 1024);
      try {
        for (let r = await conn.read(buf); r !== null; r = await conn.read(buf)) await conn.write(buf.subarray(0, r));
      } catch { /* reset */ }
      try {
        conn.close();
      } catch { /* closed */ }
    })();
  }
}

/** Answers every HTTP/1.1 request on a connection with 200 "ok" (requests have no body here). */
async function serveHttp(listener: Deno.TcpListener) {
  const answer = new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
  for await (const conn of listener) {
    (async () => {
      const buf = new Uint8Array(16 * 1024);
      let pending = "";
      try {
        for (let r = await conn.read(buf); r !== null; r = await conn.read(buf)) {
          pending += new TextDecoder().decode(buf.subarray(0, r));
          for (let end = pending.indexOf("\r\n\r\n"); end >= 0; end = pending.indexOf("\r\n\r\n")) {
            pending = pending.slice(end + 4);
            await conn.write(answer);
          }
        }
      } catch { /* reset */ }
      try {
        conn.close();
      } catch { /* closed */ }
    })();
  }
}

async function echoOnce(from: Pod, ip: string, port: number): Promise<Deno.TcpConn> {
  const conn = await dialFrom(from.netnsPath, ip, port);
  await conn.write(new Uint8Array([1]));
  if ((await conn.read(new Uint8Array(16))) === null) throw new Error(`echo at ${ip}:${port} closed`);
  return conn;
}

async function httpGets(from: Pod, n: number): Promise<void> {
  const conn = await dialFrom(from.netnsPath, VIP, 80);
  try {
    const buf = new Uint8Array(4096);
    for (let i = 0; i < n; i++) {
      await conn.write(new TextEncoder().encode(`GET / HTTP/1.1\r\nhost: hello.bench\r\n\r\n`));
      let got = "";
      while (!got.endsWith("ok")) {
        const r = await conn.read(buf);
        if (r === null) throw new Error(`waypoint closed after ${i} requests: ${got}`);
        got += new TextDecoder().decode(buf.subarray(0, r));
      }
      if (!got.startsWith("HTTP/1.1 200")) throw new Error(`waypoint answered ${got.split("\r\n")[0]}`);
    }
  } finally {
    conn.close();
  }
}

const pod = (p: Pod, labels: string) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: bench, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${p.name} }
status: { podIP: ${p.address}, phase: Running }
---
`;

/** RSS figures of one run of both proxies. */
interface Figures {
  ready: { ztunnel: number; waypoint: number };
  after: { ztunnel: number; waypoint: number };
  anon: { ztunnel: number; waypoint: number };
  holding: number;
}

/**
 * Runs both proxies with `v8Flags` (comma-separated, as DENO_V8_FLAGS), or with the harness's flags for each
 * mode (mesh/v8_flags.ts) when undefined, and reads their RSS. `workers` sets both proxies' threads
 * (SKIFF_WORKERS; default: the machine's cores, as shipped).
 */
async function measure(v8Flags: string | undefined, workers?: number): Promise<Figures> {
  const env: Record<string, string> = { LOG_LEVEL: "warn" };
  if (workers !== undefined) env.SKIFF_WORKERS = String(workers);
  // DENO_V8_FLAGS replaces the harness's flags for the mode; V8 refuses an empty flag, so "" (V8's defaults)
  // passes one that is already V8's default.
  if (v8Flags !== undefined) env.DENO_V8_FLAGS = v8Flags || "--no-lite-mode";

  await using cluster = await NetnsCluster.create("bench-memory");
  const [node] = cluster.nodes;
  const client = await cluster.addPod(node, "client");
  const server = await cluster.addPod(node, "server");
  const wp = await cluster.addPod(node, "waypoint");
  for (const p of [client, server]) await installRedirect(p.netnsPath);
  const listeners = [listenIn(server.netnsPath, "0.0.0.0", ECHO), listenIn(server.netnsPath, "0.0.0.0", HTTP)];
  serveEcho(listeners[0]);
  serveHttp(listeners[1]);
  try {
    await using control = await ControlProcess.start({
      "bench.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: bench, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: bench }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${pod(client, "app: client")}${pod(server, "app: hello")}${
        pod(wp, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none")
      }apiVersion: v1
kind: Service
metadata: { name: hello, namespace: bench, labels: { istio.io/use-waypoint: waypoint } }
spec:
  clusterIP: ${VIP}
  selector: { app: hello }
  ports: [{ name: http, port: 80, targetPort: ${HTTP} }]
`,
    });
    const token = await control.addNode(node.name);
    const answer = await control.reportRedirected(token, "bench", [client, server]) as { accepted?: number };
    if (answer.accepted !== 2) throw new Error(`registration refused: ${JSON.stringify(answer)}`);
    await using ztunnel = await ZtunnelProcess.start(node.name, {
      dir: control.dir,
      control: control.url,
      tokenFile: token,
    }, env);
    // The test plays the node agent: the server first, then the client and the end of the snapshot.
    const info = { name: server.name, namespace: "bench", serviceAccount: server.name };
    const added = await ztunnel.add(podUid(server, "bench"), server, info);
    if (added.type !== "ack") throw new Error(`ztunnel refused the server pod: ${JSON.stringify(added)}`);
    await ztunnel.enroll(client, "bench");
    await until200("ztunnel", `http://127.0.0.1:${ztunnel.ports.readiness}/healthz/ready`);
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    await using waypoint = new SkiffProcess("waypoint", [
      "waypoint",
      "--name=waypoint",
      "--namespace=bench",
      `--control=${control.url}`,
      `--token-file=${token}`,
      `--admin-port=${base}`,
      `--metrics-port=${base + 1}`,
      `--readiness-port=${base + 2}`,
      `--netns=${wp.netnsPath}`,
    ], env);
    await until200("waypoint", `http://127.0.0.1:${base + 2}/healthz/ready`);
    await sleep(3000);
    const ready = { ztunnel: rssMiB(ztunnel.pid), waypoint: rssMiB(waypoint.pid) };

    for (let i = 0; i < CONNECTIONS; i++) (await echoOnce(client, server.address, ECHO)).close();
    for (let i = 0; i < 4; i++) await httpGets(client, CONNECTIONS / 4);
    await sleep(3000);
    const after = { ztunnel: rssMiB(ztunnel.pid), waypoint: rssMiB(waypoint.pid) };
    const anon = { ztunnel: memoryOf(ztunnel.pid).anon, waypoint: memoryOf(waypoint.pid).anon };

    const held: Deno.TcpConn[] = [];
    try {
      for (let i = 0; i < CONNECTIONS; i++) held.push(await echoOnce(client, server.address, ECHO));
      await sleep(3000);
      return { ready, after, anon, holding: rssMiB(ztunnel.pid) };
    } finally {
      for (const c of held) c.close();
    }
  } finally {
    for (const l of listeners) l.close();
  }
}

function print(label: string, f: Figures) {
  console.log(`${label}:`);
  console.log(
    `  ztunnel:  ready ${f.ready.ztunnel.toFixed(0)}, idle after traffic ${f.after.ztunnel.toFixed(0)} ` +
      `(anonymous ${f.anon.ztunnel.toFixed(0)}); ${CONNECTIONS} idle tunnelled connections held ` +
      `${f.holding.toFixed(0)} (${((f.holding - f.after.ztunnel) * 1024 / CONNECTIONS).toFixed(1)} KiB each, ` +
      `both ends in this one ztunnel)`,
  );
  console.log(
    `  waypoint: ready ${f.ready.waypoint.toFixed(0)}, idle after traffic ${f.after.waypoint.toFixed(0)} ` +
      `(anonymous ${f.anon.waypoint.toFixed(0)})`,
  );
}

/** The last line of a Deno script's output (its summary), run with `v8Flags`. */
async function summary(script: string, args: string[], v8Flags: string): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", ...(v8Flags ? [`--v8-flags=${v8Flags}`] : []), script, ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`${script} ${args.join(" ")} failed (exit ${out.code}): ${text}`);
  return text.split("\n").at(-1)!;
}

async function main() {
  if (!IS_ROOT) return console.log("bench/memory.ts: skipped, needs root (network namespaces)");
  const override = Deno.env.get("SKIFF_BENCH_V8_FLAGS");
  const proxies = v8FlagsFor("ztunnel");
  console.log(
    `RSS in MiB of real \`skiff ztunnel\` and \`skiff waypoint\` processes (LOG_LEVEL=warn; --workers: ${navigator.hardwareConcurrency} ` +
      "threads, the machine's cores, unless said), one node, a control plane, " +
      `two enrolled pods; "idle after traffic": ${CONNECTIONS} connections through ztunnel and ${CONNECTIONS} ` +
      "HTTP requests through the waypoint, all closed, 3 s before; anonymous: RssAnon, the process's own pages " +
      "(the rest is mostly the Deno executable's, shared by every Deno process on the machine)",
  );
  if (override !== undefined) {
    print(`V8 flags ${override || "(V8's defaults)"}`, await measure(override));
    return;
  }
  print(`the modes' V8 flags (mesh/v8_flags.ts: ${proxies})`, await measure(undefined));
  print("V8's defaults", await measure(""));
  // Each worker thread is an isolate of its own, with its own heap and its own copy of the modules it loads.
  print("the modes' V8 flags, --workers=1 (one isolate each)", await measure(undefined, 1));
  // What the flags cost in speed: CPU per MiB through one in-process HBONE tunnel (moves little with the load of
  // a shared machine, unlike MB/s), with and without them.
  const profile = new URL("./hbone_profile.ts", import.meta.url).pathname;
  console.log(`one HBONE tunnel in-process (bench/hbone_profile.ts 300 3), with ${proxies}:`);
  console.log(`  ${await summary(profile, ["300", "3"], proxies)}`);
  console.log("the same with V8's defaults:");
  console.log(`  ${await summary(profile, ["300", "3"], "")}`);
  const heap = new URL("./idle_heap.ts", import.meta.url).pathname;
  console.log(`  ${await summary(heap, ["500"], "--expose-gc")} (bench/idle_heap.ts 500)`);
}

await main();
