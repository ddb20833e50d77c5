/**
 * How many writes the waypoint's HTTP/1.1 path hands its sockets per request, through its real request path on
 * loopback (`serveHttp1` → `handleExchange` → `Balancer` → `Http1Upstream` over real TCP to a backend). A write is
 * the costliest step of a small request (an op and a syscall; over HBONE a DATA frame and a TLS record, see
 * docs/performance.md), so the counts are the test: a small answer leaves for the client in one write, its head
 * and body together, and the request in one write to the endpoint.
 */

import assert from "node:assert/strict";
import net from "node:net";
import pino from "pino";
import type { WaypointContext } from "./exchange.ts";
import { Http1Upstream, serveHttp1 } from "./http1.ts";
import { Http2Upstream } from "./http2.ts";
import type { Session, WaypointSelf } from "./session.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "./upstream.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

const N = 5;
const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};

/** Counts the writes handed to `socket`'s runtime side (`_write`/`_writev`, each one op). */
function countWrites(socket: net.Socket): { readonly count: number } {
  let count = 0;
  const s = socket as unknown as Record<"_write" | "_writev", (...a: unknown[]) => unknown>;
  for (const method of ["_write", "_writev"] as const) {
    const original = s[method];
    s[method] = function (this: unknown, ...a: unknown[]) {
      count++;
      return original.apply(this, a);
    };
  }
  return {
    get count() {
      return count;
    },
  };
}

/** A backend answering each request head with `answer` in one write. */
async function backend(answer: string) {
  const server = net.createServer((s) => {
    let tail = "";
    s.setEncoding("latin1");
    s.on("error", () => {});
    s.on("data", (d: string) => {
      const text = tail + d;
      let at = 0;
      for (let i; (i = text.indexOf("\r\n\r\n", at)) !== -1; at = i + 4) s.write(answer);
      tail = text.slice(at);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Service web (80 → 8080) bound to the waypoint, with one endpoint outside the mesh. */
function mesh(): MeshState {
  const state = new MeshState();
  state.services.upsert(decodeService({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ address: "10.96.0.1" }],
    ports: [{ port: 80, targetPort: 8080 }],
    waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
  }));
  state.workloads.upsert(decodeWorkload({
    uid: "web",
    name: "web",
    namespace: "shop",
    addresses: ["10.0.0.1"],
    services: { "shop/web.shop.svc.cluster.local": [{ servicePort: 80, targetPort: 8080 }] },
  }));
  return state;
}

/** The first whole answer in `text`: its status and decoded body, and what follows; undefined until it is whole. */
function oneAnswer(text: string): { status: string; body: string; rest: string } | undefined {
  const head = /^HTTP\/1\.1 (\d{3})[^]*?\r\n\r\n/.exec(text);
  if (!head) return undefined;
  let at = head[0].length;
  const length = /content-length: (\d+)/i.exec(head[0]);
  if (length) {
    const end = at + Number(length[1]);
    return end > text.length ? undefined : { status: head[1], body: text.slice(at, end), rest: text.slice(end) };
  }
  let body = "";
  for (;;) {
    const line = /^([0-9a-f]+)\r\n/i.exec(text.slice(at));
    if (!line) return undefined;
    const size = parseInt(line[1], 16);
    at += line[0].length;
    if (size === 0) {
      return text.startsWith("\r\n", at) ? { status: head[1], body, rest: text.slice(at + 2) } : undefined;
    }
    if (text.length < at + size + 2) return undefined;
    body += text.slice(at, at + size);
    at += size + 2;
  }
}

/**
 * Sends N requests one after another on one connection through a waypoint to a backend answering `answer`;
 * returns the answers and the writes on the waypoint's two sockets.
 */
async function exchange(answer: string) {
  await using app = await backend(answer);
  const state = mesh();
  const upstreamSockets: net.Socket[] = [];
  const upstreamWrites: { readonly count: number }[] = [];
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE in this test")),
    trustDomain: "cluster.local",
    dial: async () => {
      const s = await dialTcp("127.0.0.1", app.port);
      upstreamSockets.push(s);
      upstreamWrites.push(countWrites(s));
      return s;
    },
  });
  const ctx: WaypointContext = {
    self,
    state: () => state,
    balancer: new Balancer(),
    tunnels,
    metrics: new WaypointMetrics(),
    log: pino({ level: "silent" }),
    access: pino({ level: "silent" }),
    random: Math.random,
  };
  const session: Session = {
    peer: { identity: SpiffeId.of("cluster.local", "shop", "client"), ip: "10.0.0.100", port: 40000 },
    destination: {
      kind: "service",
      service: state.services.byKey("shop/web.shop.svc.cluster.local")!,
      vip: "10.96.0.1",
      port: 80,
    },
    authority: "10.96.0.1:80",
  };
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  let downstreamWrites: { readonly count: number } | undefined;
  let served: Promise<void> | undefined;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on("error", () => {});
    downstreamWrites = countWrites(socket);
    served = serveHttp1(socket, session, upstreams, ctx);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const client = net.connect({ host: "127.0.0.1", port: (server.address() as net.AddressInfo).port });
  client.setEncoding("latin1");
  try {
    const answers: string[] = [];
    let got = "";
    const more = () => new Promise<void>((resolve) => client.once("data", (d: string) => (got += d, resolve())));
    for (let i = 0; i < N; i++) {
      client.write(`GET /r${i} HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\n\r\n`);
      // One answer: its head, and its body (Content-Length or chunked).
      let answer = oneAnswer(got);
      while (answer === undefined) {
        await more();
        answer = oneAnswer(got);
      }
      const { status, body, rest } = answer;
      answers.push(`${status} ${body}`);
      got = rest;
    }
    return {
      answers,
      downstream: downstreamWrites!.count,
      upstream: upstreamWrites.reduce((s, w) => s + w.count, 0),
      upstreamConnections: upstreamSockets.length,
    };
  } finally {
    client.destroy();
    await served;
    upstreams.http1.close();
    upstreams.http2.close();
    await new Promise((resolve) => server.close(resolve));
  }
}

Deno.test("serveHttp1() writes a small answer with its head in one write, and each request in one write", async (t) => {
  // `writes`: to the client per request. A chunked body is re-framed: its head and chunk in one write, the last chunk
  // (written once the endpoint's body has ended) in a second.
  const cases = [
    { name: "Content-Length body", answer: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", body: "ok", writes: 1 },
    {
      name: "chunked body",
      answer: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
      body: "ok",
      writes: 2,
    },
    { name: "no body", answer: "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", body: "", writes: 1 },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const got = await exchange(c.answer);
      assert.deepEqual(got.answers, Array(N).fill(`200 ${c.body}`));
      assert.equal(got.upstreamConnections, 1, "one pooled connection to the endpoint");
      assert.equal(got.upstream, N, "writes to the endpoint");
      assert.equal(got.downstream, N * c.writes, "writes to the client");
    });
  }
});
