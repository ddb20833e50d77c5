/**
 * The waypoint ranks a service's endpoints by its own locality, through its real request path on loopback: curl
 * sends HTTP/1.1 requests to `serveHttp1`, which routes them with `handleExchange` and the `Balancer`, and
 * `Http1Upstream` carries them over real TCP connections to two HTTP servers standing for two endpoints of the
 * service web, one in the waypoint's zone and one in another. Counts, not timings: of N requests, how many each
 * backend served, and the status of each answer.
 */

import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import pino from "pino";
import type { WaypointContext } from "./exchange.ts";
import { Http1Upstream, serveHttp1 } from "./http1.ts";
import { Http2Upstream } from "./http2.ts";
import { installed, run } from "./interop_util.ts";
import type { Upstreams } from "./server.ts";
import type { Session, WaypointSelf } from "./session.ts";
import { passTcp } from "./tcp.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "./upstream.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

const WEB = "shop/web.shop.svc.cluster.local";
const N = 20;
const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};

/** What istiod makes of `trafficDistribution: PreferClose`: network, region, zone, subzone, with failover. */
const PREFER_CLOSE = { routingPreference: ["NETWORK", "REGION", "ZONE", "SUBZONE"], mode: "FAILOVER" };
/** The same scopes, required (`mode: STRICT`). */
const ONLY_CLOSE = { routingPreference: ["NETWORK", "REGION", "ZONE", "SUBZONE"], mode: "STRICT" };

/**
 * Service web (80 → 8080) bound to this waypoint, with `loadBalancing`; endpoints near (10.0.0.1, zone z1) and far
 * (10.0.0.2, zone z2), outside the mesh (plain TCP); and, unless `withWaypoint` is false, the waypoint's own
 * workload (zone z1), an endpoint of the waypoint's own service.
 */
function mesh(loadBalancing: Record<string, unknown>, withWaypoint = true): MeshState {
  const state = new MeshState();
  state.services.upsert(decodeService({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ address: "10.96.0.1" }],
    ports: [{ port: 80, targetPort: 8080 }],
    waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
    loadBalancing,
  }));
  const workload = (uid: string, ip: string, zone: string, services: Record<string, unknown>) =>
    state.workloads.upsert(decodeWorkload({
      uid,
      name: uid,
      namespace: "shop",
      addresses: [ip],
      locality: { region: "r1", zone },
      services,
    }));
  workload("near", "10.0.0.1", "z1", { [WEB]: [{ servicePort: 80, targetPort: 8080 }] });
  workload("far", "10.0.0.2", "z2", { [WEB]: [{ servicePort: 80, targetPort: 8080 }] });
  if (withWaypoint) {
    workload("waypoint", "10.0.9.9", "z1", {
      [`shop/${self.hostname}`]: [{ servicePort: 15008, targetPort: 15008 }],
    });
  }
  return state;
}

/** An HTTP server on loopback that answers every request with its name and counts them. */
async function backend(name: string) {
  let served = 0;
  const server = http.createServer((_req, res) => {
    served++;
    res.end(name);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  let open = true;
  const close = async () => {
    if (!open) return;
    open = false;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  };
  return {
    port: (server.address() as net.AddressInfo).port,
    get served() {
      return served;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** How the waypoint serves a client connection: as HTTP/1.1 (`serveHttp1`) or as TCP (`passTcp`). */
type Serve = (socket: net.Socket, session: Session, upstreams: Upstreams, ctx: WaypointContext) => Promise<void>;
const asTcp: Serve = (socket, session, _upstreams, ctx) => passTcp(socket, session, ctx);

/** A waypoint on a loopback port serving the client's session to web; `portOf` maps an endpoint IP to a port. */
async function waypoint(state: MeshState, portOf: (ip: string) => number, serve: Serve = serveHttp1) {
  const access: Record<string, unknown>[] = [];
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE in this test")),
    trustDomain: "cluster.local",
    dial: (ip, _port) => dialTcp("127.0.0.1", portOf(ip)),
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
  };
  const service = state.services.byKey(WEB)!;
  const session: Session = {
    peer: { identity: SpiffeId.of("cluster.local", "shop", "client"), ip: "10.0.0.100", port: 40000 },
    destination: { kind: "service", service, vip: "10.96.0.1", port: 80, appProtocol: "http" },
    authority: "10.96.0.1:80",
  };
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  const sockets = new Set<net.Socket>();
  const served: Promise<void>[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
    served.push(serve(socket, session, upstreams, ctx));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    access,
    metrics: ctx.metrics,
    async [Symbol.asyncDispose]() {
      upstreams.http1.close();
      upstreams.http2.close();
      for (const s of sockets) s.destroy();
      await Promise.allSettled(served);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** N requests on one curl connection; each answer's body (the backend's name) or its status when not 200. */
async function requests(port: number, n = N): Promise<Record<string, number>> {
  const out = await run("curl", [
    "-sS",
    "--max-time",
    "10",
    "-w",
    " %{http_code}\\n",
    "-H",
    "host: web.shop.svc.cluster.local",
    `http://127.0.0.1:${port}/r[1-${n}]`,
  ]);
  assert.equal(out.code, 0, out.stderr);
  const counts: Record<string, number> = {};
  for (const line of out.stdout.trim().split("\n")) {
    const [, body, status] = /^(.*) (\d{3})$/.exec(line) ?? [, line, "?"];
    const who = status === "200" ? body : status;
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

/** N TCP connections, each carrying one HTTP/1.1 request: who answered on each, or `closed` when nobody did. */
async function connections(port: number, n = N): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const text = await new Promise<string>((resolve) => {
      let got = "";
      const socket = net.connect({ host: "127.0.0.1", port }, () => {
        socket.write("GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
      });
      socket.setEncoding("utf8");
      socket.on("data", (d) => got += d);
      socket.on("error", () => {});
      socket.on("close", () => resolve(got));
    });
    const who = /\r\n\r\n(.*)$/s.exec(text)?.[1] || "closed";
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

Deno.test({
  name: "the waypoint sends a service's requests to the endpoints closest to its own workload",
  ignore: !installed("curl", ["--version"]) && Deno.env.get("CI") !== "true",
  fn: async (t) => {
    await using near = await backend("near");
    await using far = await backend("far");
    const ports: Record<string, number> = { "10.0.0.1": near.port, "10.0.0.2": far.port };
    const portOf = (ip: string) => ports[ip];

    await t.step(`PreferClose: all ${N} requests to the endpoint in the waypoint's zone`, async () => {
      await using wp = await waypoint(mesh(PREFER_CLOSE), portOf);
      const before = { near: near.served, far: far.served };
      const got = await requests(wp.port);
      console.log(`PreferClose: ${JSON.stringify(got)}`);
      assert.deepEqual(got, { near: N });
      assert.deepEqual({ near: near.served - before.near, far: far.served - before.far }, { near: N, far: 0 });
    });

    await t.step("no preference: round robin over both zones", async () => {
      await using wp = await waypoint(mesh({}), portOf);
      assert.deepEqual(await requests(wp.port), { near: N / 2, far: N / 2 });
    });

    await t.step("PreferClose, the waypoint's own workload unknown: no ranking, both zones", async () => {
      await using wp = await waypoint(mesh(PREFER_CLOSE, false), portOf);
      assert.deepEqual(await requests(wp.port), { near: N / 2, far: N / 2 });
    });

    await t.step("STRICT, the waypoint's own workload unknown: 503 UH, nothing leaves", async () => {
      await using wp = await waypoint(mesh(ONLY_CLOSE, false), portOf);
      const before = near.served + far.served;
      const got = await requests(wp.port);
      console.log(`STRICT, own workload unknown: ${JSON.stringify(got)}`);
      assert.deepEqual(got, { "503": N });
      assert.equal(near.served + far.served, before, "no backend served a request");
      assert.deepEqual(new Set(wp.access.map((l) => l.response_flags)), new Set(["UH"]));
    });

    await t.step("STRICT: the endpoint in the waypoint's zone only", async () => {
      await using wp = await waypoint(mesh(ONLY_CLOSE), portOf);
      assert.deepEqual(await requests(wp.port), { near: N });
    });

    await t.step(`PreferClose over TCP: all ${N} connections to the endpoint in the waypoint's zone`, async () => {
      await using wp = await waypoint(mesh(PREFER_CLOSE), portOf, asTcp);
      const got = await connections(wp.port);
      console.log(`PreferClose over TCP: ${JSON.stringify(got)}`);
      assert.deepEqual(got, { near: N });
    });

    await t.step("STRICT over TCP, the waypoint's own workload unknown: every connection closed", async () => {
      await using wp = await waypoint(mesh(ONLY_CLOSE, false), portOf, asTcp);
      const before = near.served + far.served;
      assert.deepEqual(await connections(wp.port, 5), { closed: 5 });
      assert.equal(near.served + far.served, before, "no backend served a request");
      const closed = (await wp.metrics.closed.get()).values;
      assert.deepEqual(closed.map((v) => [v.labels.response_flags, v.value]), [["NO_HEALTHY_UPSTREAM", 5]]);
    });

    await near.close();

    await t.step("PreferClose, the near endpoint down: every request fails over to the far one", async () => {
      await using wp = await waypoint(mesh(PREFER_CLOSE), portOf);
      const got = await requests(wp.port);
      console.log(`PreferClose, near down: ${JSON.stringify(got)}`);
      assert.deepEqual(got, { far: N });
    });

    await t.step("STRICT, the near endpoint down: refused, never sent out of the zone", async () => {
      await using wp = await waypoint(mesh(ONLY_CLOSE), portOf);
      const before = far.served;
      const got = await requests(wp.port, 5);
      console.log(`STRICT, near down: ${JSON.stringify(got)}`);
      assert.deepEqual(got, { "503": 5 });
      assert.equal(far.served, before, "the far endpoint served nothing");
    });
  },
});
