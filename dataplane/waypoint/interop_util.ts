/**
 * The loopback fixture of the waypoint's interop and drain tests: a waypoint serving one session (client → Service
 * web) on a loopback port with real sockets, its endpoints reached over plain TCP to a backend on loopback, its
 * access log captured; and the third-party peers (Python processes from `tests/apps/`, curl, nghttp) they use.
 *
 * @module
 */

import assert from "node:assert/strict";
import net from "node:net";
import pino from "pino";
import type { WaypointDrain } from "./drain.ts";
import type { WaypointContext } from "./exchange.ts";
import { Http1Upstream, serveHttp1 } from "./http1.ts";
import { Http2Upstream, serveHttp2 } from "./http2.ts";
import { sniff } from "./server.ts";
import type { Session, WaypointSelf } from "./session.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "./upstream.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

export const PYTHON = "/usr/bin/python3";
export const APPS = new URL("../../tests/apps/", import.meta.url).pathname;
const WEB = "shop/web.shop.svc.cluster.local";
const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};

export function installed(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

export const missing = [
  ...(installed(PYTHON, ["-c", "import grpc"]) ? [] : ["python3-grpcio"]),
  ...(installed(PYTHON, ["-c", "import h2"]) ? [] : ["python3-h2"]),
  ...(installed("curl", ["--version"]) ? [] : ["curl"]),
  ...(installed("nghttp", ["--version"]) ? [] : ["nghttp2-client"]),
];

/** A test that needs the third-party peers: skipped locally without them, failing in CI. */
export function interopTest(name: string, fn: () => Promise<void>) {
  Deno.test({
    name,
    ignore: missing.length > 0 && Deno.env.get("CI") !== "true",
    fn: async () => {
      if (missing.length > 0) throw new Error(`interop test: missing ${missing.join(", ")} (install.sh installs them)`);
      await fn();
    },
  });
}

/** One access-log line, as the waypoint writes it. */
export type AccessLine = Record<string, string | number>;

/** Service web (10.96.0.1:80 → 8080, `appProtocol` as given) with one endpoint outside the mesh. */
function mesh(appProtocol: string | undefined): MeshState {
  const state = new MeshState();
  state.services.upsert(decodeService({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ address: "10.96.0.1" }],
    ports: [{ port: 80, targetPort: 8080, ...(appProtocol ? { appProtocol } : {}) }],
    waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
  }));
  state.workloads.upsert(decodeWorkload({
    uid: "web-a",
    name: "web-a",
    namespace: "shop",
    addresses: ["10.0.0.1"],
    services: { [WEB]: [{ servicePort: 80, targetPort: 8080, ...(appProtocol ? { appProtocol } : {}) }] },
  }));
  return state;
}

/** A waypoint on a loopback port for one session (client → web), every endpoint being `backendPort`. */
export async function waypoint(backendPort: number, appProtocol?: string, drain?: WaypointDrain) {
  const state = mesh(appProtocol);
  const access: AccessLine[] = [];
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE in this test")),
    trustDomain: "cluster.local",
    dial: (_ip, _port) => dialTcp("127.0.0.1", backendPort),
  });
  const ctx: WaypointContext = {
    self,
    state: () => state,
    balancer: new Balancer(),
    tunnels,
    metrics: new WaypointMetrics(),
    log: pino({ level: "silent" }),
    access: pino({ level: "info" }, { write: (line: string) => void access.push(JSON.parse(line)) }),
    random: Math.random,
    drain,
  };
  const service = state.services.byKey(WEB)!;
  const session: Session = {
    peer: { identity: SpiffeId.of("cluster.local", "shop", "client"), ip: "10.0.0.100", port: 40000 },
    destination: { kind: "service", service, vip: "10.96.0.1", port: 80, appProtocol },
    authority: "10.96.0.1:80",
  };
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  const sockets = new Set<net.Socket>();
  const served: Promise<void>[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    served.push((async () => {
      const kind = await sniff(socket);
      if (kind === "http2") await serveHttp2(socket, session, upstreams, ctx);
      else if (kind === "http1") await serveHttp1(socket, session, upstreams, ctx);
      else socket.destroy();
    })());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    access,
    async [Symbol.asyncDispose]() {
      upstreams.http1.close();
      upstreams.http2.close();
      for (const s of sockets) s.destroy();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([Promise.allSettled(served), new Promise((r) => timer = setTimeout(r, 2_000))]);
      clearTimeout(timer);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A Python peer serving until disposed of: it prints its port, and stops when its stdin closes. */
export async function pythonServer(script: string, args: string[] = []) {
  const child = new Deno.Command(PYTHON, {
    args: [`${APPS}${script}`, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${script}: exited before printing its port`);
    text += value;
  }
  return {
    port: Number(text.trim()),
    async [Symbol.asyncDispose]() {
      await child.stdin.close();
      await reader.cancel();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const exited = await Promise.race([child.status, new Promise((r) => timer = setTimeout(() => r(null), 3_000))]);
      clearTimeout(timer);
      if (exited === null) child.kill("SIGKILL");
      await child.status;
    },
  };
}

export async function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

/** Runs a Python client; each line it prints is one JSON result. */
export async function pythonClient(script: string, args: string[]): Promise<Record<string, unknown>[]> {
  const out = await run(PYTHON, [`${APPS}${script}`, ...args]);
  assert.equal(out.code, 0, `${script} failed: ${out.stderr}`);
  return out.stdout.trim().split("\n").map((l) => JSON.parse(l));
}

/** Polls until `get` is true or `ms` pass. */
export async function until(get: () => boolean, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!get() && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}
