/**
 * The waypoint's HTTP/1.1 request path in one process, for profiling it (issue 18 item 4): wrk's keep-alive
 * requests on loopback go into `serveHttp1`, through `handleExchange` (policies, routing, the `Balancer`),
 * `Http1Upstream`'s pooled connections and the telemetry (`WaypointMetrics`, the access logger of mesh/log.ts),
 * to a backend in a process of its own that answers every request with a canned 2-byte response. No root, no
 * namespaces, no HBONE: what bench/waypoint.ts adds on top (the client's ztunnel, the waypoint's TLS and HTTP/2
 * server) is not here. The waypoint is the only thing running in this process, so the process's CPU time per
 * request is the request path's cost.
 *
 * ```sh
 * deno run --allow-all bench/waypoint_profile.ts [seconds=10] [rounds=3] [--haproxy]
 * deno run --allow-all --cpu-prof --cpu-prof-dir=/tmp/wprof bench/waypoint_profile.ts 10 1
 * deno run --allow-read bench/cpuprofile_top.ts /tmp/wprof/*.cpuprofile    # self time per function, bottom-up
 * deno run --allow-all bench/waypoint_profile.ts --categories /tmp/wprof/*.cpuprofile     # by kind of cost
 * ```
 *
 * Each round runs `wrk -t1 -c32` for `seconds` and prints req/s and this process's CPU ms (user + system) per
 * request, then their medians: on a shared machine the CPU per request moves much less than the rate does.
 * `LOG_LEVEL` is `warn` unless set (as bench/waypoint.ts runs the waypoint: no access-log lines, metrics on).
 * With `--haproxy`, haproxy (one thread, keep-alive, `http-reuse always`) in front of the same backend is
 * measured the same way, for the ratio without HBONE. Run the waypoint with the V8 flags it is deployed with
 * (mesh/v8_flags.ts) by passing them: `deno run --allow-all --v8-flags=... bench/waypoint_profile.ts`.
 *
 * @module
 */

import net from "node:net";
import process from "node:process";
import { join } from "node:path";
import type { WaypointContext } from "../dataplane/waypoint/exchange.ts";
import { Http1Upstream, serveHttp1 } from "../dataplane/waypoint/http1.ts";
import { Http2Upstream } from "../dataplane/waypoint/http2.ts";
import type { Session, WaypointSelf } from "../dataplane/waypoint/session.ts";
import { WaypointMetrics } from "../dataplane/waypoint/telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "../dataplane/waypoint/upstream.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { logger } from "../mesh/log.ts";
import { MeshState } from "../mesh/store.ts";
import { decodeService, decodeWorkload } from "../mesh/workload.ts";

const CONNECTIONS = 32;

// Writes handed to the runtime's sockets (`_write`/`_writev` calls, each an op and a syscall): a count per request
// that, unlike the rates, does not move with the load of a shared machine.
let writes = 0;
const proto = net.Socket.prototype as unknown as Record<"_write" | "_writev", (...a: unknown[]) => unknown>;
for (const method of ["_write", "_writev"] as const) {
  const original = proto[method];
  proto[method] = function (this: unknown, ...a: unknown[]) {
    writes++;
    return original.apply(this, a);
  };
}

// ---- the backend's process: a canned answer per request head ------------------------------------------------------

if (Deno.args[0] === "--backend") {
  const answer = new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok");
  const server = net.createServer((s) => {
    let tail = "";
    s.setEncoding("latin1");
    s.on("error", () => {});
    s.on("data", (d: string) => {
      // Requests without bodies: one answer per blank line that ends a head.
      const text = tail + d;
      let at = 0;
      for (let i; (i = text.indexOf("\r\n\r\n", at)) !== -1; at = i + 4) s.write(answer);
      tail = text.slice(at);
    });
  });
  server.listen(0, "127.0.0.1", () => console.log((server.address() as net.AddressInfo).port));
}

// ---- the waypoint, in this process ---------------------------------------------------------------------------------

const self: WaypointSelf = {
  name: "waypoint",
  namespace: "bench",
  hostname: "waypoint.bench.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "bench", "waypoint"),
  network: "",
};

/** Service hello (80 → 8080) bound to the waypoint, with one endpoint outside the mesh (plain TCP), as in the bench. */
function mesh(): MeshState {
  const state = new MeshState();
  state.services.upsert(decodeService({
    name: "hello",
    namespace: "bench",
    hostname: "hello.bench.svc.cluster.local",
    addresses: [{ address: "10.96.9.1" }],
    ports: [{ port: 80, targetPort: 8080, appProtocol: "http" }],
    waypoint: { hostname: { namespace: "bench", hostname: self.hostname } },
  }));
  state.workloads.upsert(decodeWorkload({
    uid: "Kubernetes//Pod/bench/app",
    name: "app",
    namespace: "bench",
    addresses: ["10.0.0.1"],
    services: { "bench/hello.bench.svc.cluster.local": [{ servicePort: 80, targetPort: 8080 }] },
  }));
  state.workloads.upsert(decodeWorkload({
    uid: "Kubernetes//Pod/bench/load",
    name: "load",
    namespace: "bench",
    serviceAccount: "load",
    addresses: ["10.0.0.100"],
    tunnelProtocol: "HBONE",
  }));
  return state;
}

/** Serves the waypoint's HTTP/1.1 path on a loopback port; every connection is the load pod's tunnel to hello:80. */
async function waypoint(backendPort: number) {
  const state = mesh();
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE in this benchmark")),
    trustDomain: "cluster.local",
    dial: () => dialTcp("127.0.0.1", backendPort),
  });
  const ctx: WaypointContext = {
    self,
    state: () => state,
    balancer: new Balancer(),
    tunnels,
    metrics: new WaypointMetrics(),
    log: logger("waypoint"),
    access: logger("access"),
    random: Math.random,
  };
  const session: Session = {
    peer: {
      identity: SpiffeId.of("cluster.local", "bench", "load"),
      ip: "10.0.0.100",
      port: 40000,
      workload: state.workloads.byUid("Kubernetes//Pod/bench/load"),
    },
    destination: {
      kind: "service",
      service: state.services.byKey("bench/hello.bench.svc.cluster.local")!,
      vip: "10.96.9.1",
      port: 80,
      appProtocol: "http",
    },
    authority: "10.96.9.1:80",
  };
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    // As the HBONE stream's TLS socket is (dataplane/h2/connection.ts): no Nagle delay on the answer's writes.
    socket.setNoDelay(true);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    serveHttp1(socket, session, upstreams, ctx).catch(() => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    async close() {
      upstreams.http1.close();
      upstreams.http2.close();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---- load ----------------------------------------------------------------------------------------------------------

/** Runs wrk against `url`; returns the requests it completed and their rate. */
async function wrk(url: string, seconds: number): Promise<{ requests: number; rps: number }> {
  const out = await new Deno.Command("wrk", {
    args: ["-t1", `-c${CONNECTIONS}`, `-d${seconds}s`, url],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const requests = Number(/(\d+) requests in/.exec(text)?.[1] ?? 0);
  const bad = /Non-2xx or 3xx responses: (\d+)/.exec(text) ?? /Socket errors: .*/.exec(text);
  if (out.code !== 0 || requests === 0 || bad) {
    throw new Error(`wrk ${url} failed (exit ${out.code}): ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  return { requests, rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? 0) };
}

/** CPU seconds (user + system) `pid` has used so far, from /proc. */
function cpuOf(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ, 100 on Linux
}

/** haproxy in front of the backend, on a loopback port; stopped by its pid. */
async function haproxy(dir: string, backendPort: number): Promise<{ port: number; child: Deno.ChildProcess }> {
  const port = 20_000 + Math.floor(Math.random() * 40_000);
  const file = join(dir, "haproxy.cfg");
  await Deno.writeTextFile(
    file,
    `global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n` +
      `  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend bench\n  bind 127.0.0.1:${port}\n` +
      `  default_backend app\nbackend app\n  server app 127.0.0.1:${backendPort}\n`,
  );
  const child = new Deno.Command("haproxy", { args: ["-db", "-f", file], stdout: "null", stderr: "null" }).spawn();
  for (const deadline = Date.now() + 10_000;;) {
    const up = await dialTcp("127.0.0.1", port).then((s) => (s.destroy(), true), () => false);
    if (up) return { port, child };
    if (Date.now() > deadline) throw new Error(`haproxy: not accepting on 127.0.0.1:${port} after 10 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  const args = Deno.args.filter((a) => !a.startsWith("--"));
  const seconds = Number(args[0] ?? 10);
  const rounds = Number(args[1] ?? 3);
  if (Deno.env.get("LOG_LEVEL") === undefined) Deno.env.set("LOG_LEVEL", "warn");

  const backend = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", new URL(import.meta.url).pathname, "--backend"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = backend.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const backendPort = Number((await reader.read()).value?.trim());
  reader.releaseLock();
  const wp = await waypoint(backendPort);
  const dir = await Deno.makeTempDir({ prefix: "skiff-waypoint-profile-" });
  const hp = Deno.args.includes("--haproxy") ? await haproxy(dir, backendPort) : undefined;
  try {
    await wrk(`http://127.0.0.1:${wp.port}/`, 2); // warm-up: the JIT, the pool, the metrics' series
    if (hp) await wrk(`http://127.0.0.1:${hp.port}/`, 2);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const rows: Record<string, { rps: number[]; cpu: number[] }> = {
      waypoint: { rps: [], cpu: [] },
      haproxy: { rps: [], cpu: [] },
    };
    for (let i = 0; i < rounds; i++) {
      for (
        const [name, port, pid] of [
          ["waypoint", wp.port, Deno.pid],
          ...(hp ? [["haproxy", hp.port, hp.child.pid]] : []),
        ] as [string, number, number][]
      ) {
        const before = name === "waypoint" ? process.cpuUsage() : undefined;
        const beforeTicks = cpuOf(pid);
        const beforeWrites = writes;
        const { requests, rps } = await wrk(`http://127.0.0.1:${port}/`, seconds);
        const cpuMs = before
          ? ((u) => (u.user + u.system) / 1000)(process.cpuUsage(before))
          : (cpuOf(pid) - beforeTicks) * 1000;
        rows[name].rps.push(rps);
        rows[name].cpu.push(cpuMs / requests);
        const perRequest = name === "waypoint"
          ? `, ${((writes - beforeWrites) / requests).toFixed(2)} socket writes/request`
          : "";
        console.log(
          `round ${i + 1} ${name}: ${requests} requests, ${rps.toFixed(0)} req/s, ` +
            `${(1000 * cpuMs / requests).toFixed(1)} CPU µs/request${perRequest}`,
        );
      }
    }
    for (const [name, r] of Object.entries(rows)) {
      if (r.rps.length === 0) continue;
      console.log(
        `median ${name}: ${median(r.rps).toFixed(0)} req/s, ${(1000 * median(r.cpu)).toFixed(1)} CPU µs/request ` +
          `(best ${(1000 * Math.min(...r.cpu)).toFixed(1)}), wrk -t1 -c${CONNECTIONS} -d${seconds}s on loopback`,
      );
    }
    if (hp) {
      const ratio = median(rows.waypoint.rps) / median(rows.haproxy.rps);
      console.log(`waypoint / haproxy req/s: ${ratio.toFixed(2)}× (no HBONE: plain HTTP/1.1 in, one thread each)`);
    }
  } finally {
    if (hp) {
      hp.child.kill("SIGTERM");
      await hp.child.status;
    }
    await wp.close();
    backend.kill("SIGTERM");
    await backend.status;
    await backend.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- the profile by kind of cost ------------------------------------------------------------------------------------

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

/**
 * The busy samples of a V8 `.cpuprofile` (not idle, not module loading) by kind of cost, each sample counted under
 * the first rule that takes it: the socket writes (native, their syscalls included), garbage collection, then
 * whole subtrees (the request's telemetry record, timers), then the file of the function running.
 */
export function costCategories(profile: { nodes: ProfileNode[]; samples: number[] }): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const out = new Map<string, number>();
  for (const id of profile.samples) {
    const { functionName: fn, url } = byId.get(id)!.callFrame;
    if (fn === "(idle)") continue;
    const stack: string[] = [];
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const f = byId.get(x)!.callFrame;
      stack.push(`${f.functionName} ${f.url}`);
    }
    if (stack.some((f) => /node:module|^(Module\._load|compileFunction|loadExtScript) /.test(f))) continue;
    const under = (re: RegExp) => stack.some((f) => re.test(f));
    const kind = fn === "writeBuffer"
      ? "socket writes, plain TCP (writeBuffer)"
      : fn === "writev" || fn === "readBuffer"
      ? "socket I/O, TLS (writev, readBuffer)"
      : fn === "(garbage collector)"
      ? "garbage collection"
      : fn === "(program)"
      ? "(program): V8 and the runtime outside JavaScript"
      : under(/^(record|recordRequest) .*dataplane\/waypoint\/(telemetry|record)\.ts/)
      ? "metrics and access-log record (telemetry.ts, record.ts, prom-client)"
      : under(/^(setTimeout|clearTimeout|Timeout|createTimer) /) || /timers\.(mjs|ts|js)/.test(url)
      ? "timers (setTimeout, clearTimeout)"
      : /deno_web\/0[23]_(event|abort_signal)/.test(url)
      ? "AbortSignal listeners and controllers"
      : /\/dataplane\/http1\//.test(url)
      ? "HTTP/1.1 codec (dataplane/http1)"
      : /\/dataplane\/(h2|hbone)\//.test(url)
      ? "HTTP/2 codec and HBONE (dataplane/h2, hbone)"
      : /\/dataplane\/|\/mesh\//.test(url)
      ? "waypoint request logic (serveRequest, handleExchange, routing, balancer)"
      : /deno_node/.test(url)
      ? "node:stream, events and net machinery"
      : "other runtime (ops, microtasks, crypto)";
    out.set(kind, (out.get(kind) ?? 0) + 1);
  }
  return out;
}

if (Deno.args[0] === "--categories") {
  for (const file of Deno.args.slice(1)) {
    const counts = costCategories(JSON.parse(Deno.readTextFileSync(file)));
    const busy = [...counts.values()].reduce((a, b) => a + b, 0);
    console.log(`${file}: ${busy} busy samples`);
    for (const [kind, n] of [...counts].sort((a, b) => b[1] - a[1])) {
      console.log(`${(100 * n / busy).toFixed(1).padStart(5)}%  ${kind}`);
    }
  }
} else if (Deno.args[0] !== "--backend") await main();
