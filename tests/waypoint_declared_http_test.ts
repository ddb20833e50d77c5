/**
 * A Service port declared HTTP is served as HTTP, never at L4, however late its first bytes come: through real mTLS
 * on loopback, the waypoint's own `HboneServer` and `handleTunnel` (as `runWaypoint` wires them), a raw HTTP/2
 * client that opens CONNECT tunnels and writes into them when the test says, and two backends that count the
 * connections they accept. Service web routes every request to web-v2 (an HTTPRoute), so a request that reaches
 * web's own endpoint went around the route: at L4.
 *
 * Istio does not sniff a port whose protocol is declared: it goes to Envoy's HTTP connection manager, which waits
 * for the request and never falls back to TCP; bytes that are not HTTP are a codec error (400, `DPE`). Before the
 * fix the waypoint sniffed every port not declared `tcp` for 1 s and passed a silent client at L4, so under load a
 * slow client's request went to the wrong backend.
 */

import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import tls from "node:tls";
import pino from "pino";
import { encodeRstStream, ErrorCode, type Frame, FrameType } from "../dataplane/h2/frame.ts";
import { HboneServer } from "../dataplane/hbone/server.ts";
import { clientTlsOptions } from "../dataplane/hbone/tls.ts";
import type { WaypointContext } from "../dataplane/waypoint/exchange.ts";
import { Http1Upstream } from "../dataplane/waypoint/http1.ts";
import { Http2Upstream } from "../dataplane/waypoint/http2.ts";
import { handleTunnel, HTTP_FIRST_BYTES_TIMEOUT_MS, SNIFF_TIMEOUT_MS } from "../dataplane/waypoint/server.ts";
import type { WaypointSelf } from "../dataplane/waypoint/session.ts";
import { WaypointMetrics } from "../dataplane/waypoint/telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "../dataplane/waypoint/upstream.ts";
import { decodeHttpRoute } from "../mesh/l7.ts";
import { MeshState } from "../mesh/store.ts";
import { decodeService, decodeWorkload } from "../mesh/workload.ts";
import { RawPeer } from "./harness/h2peer.ts";
import { TestPki } from "./harness/pki.ts";

const pki = await TestPki.create();
const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: (await pki.credentials("shop/waypoint")).identity,
  network: "",
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const text = (s: string) => new TextEncoder().encode(s);
/** Later than the sniff's timeout: what a slow client on a loaded node looked like. */
const LATE_MS = SNIFF_TIMEOUT_MS + 500;

/**
 * Services web (10.96.0.1:80) and web-v2 (10.96.0.2:80), one endpoint each (web-a 10.0.0.1, web-b 10.0.0.2, port
 * 8080, outside the mesh), web's port declaring `appProtocol`; and an HTTPRoute sending all of web to web-v2.
 */
function mesh(appProtocol: string | undefined): MeshState {
  const state = new MeshState();
  const declared = appProtocol ? { appProtocol } : {};
  for (
    const [name, vip, uid, ip] of [["web", "10.96.0.1", "web-a", "10.0.0.1"], [
      "web-v2",
      "10.96.0.2",
      "web-b",
      "10.0.0.2",
    ]]
  ) {
    const hostname = `${name}.shop.svc.cluster.local`;
    state.services.upsert(decodeService({
      name,
      namespace: "shop",
      hostname,
      addresses: [{ address: vip }],
      ports: [{ port: 80, targetPort: 8080, ...(name === "web" ? declared : {}) }],
      waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
    }));
    state.workloads.upsert(decodeWorkload({
      uid,
      name: uid,
      namespace: "shop",
      addresses: [ip],
      services: { [`shop/${hostname}`]: [{ servicePort: 80, targetPort: 8080, ...(name === "web" ? declared : {}) }] },
    }));
  }
  state.routes.upsert(decodeHttpRoute({
    name: "to-v2",
    namespace: "shop",
    parents: [{ service: "shop/web.shop.svc.cluster.local" }],
    rules: [{ backends: [{ service: "shop/web-v2.shop.svc.cluster.local", port: 80 }] }],
  }));
  return state;
}

/**
 * An endpoint on loopback that counts the connections it accepts: an HTTP server answering its name, or (`banner`)
 * a server-first protocol that greets each connection with `220 NAME ready`.
 */
async function backend(name: string, kind: "http" | "banner") {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = kind === "http"
    ? http.createServer((_req, res) => res.end(name))
    : net.createServer((s) => void s.write(`220 ${name} ready\r\n`));
  server.on("connection", (s: net.Socket) => {
    accepted++;
    sockets.add(s);
    s.on("error", () => {});
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get accepted() {
      return accepted;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * The waypoint's HBONE listener on loopback, web's port declaring `appProtocol`; web-a speaks `webA`, and a declared
 * port's first bytes are awaited `firstBytesMs`.
 */
async function waypoint(
  appProtocol: string | undefined,
  { webA = "http", firstBytesMs = HTTP_FIRST_BYTES_TIMEOUT_MS }: { webA?: "http" | "banner"; firstBytesMs?: number } =
    {},
) {
  const a = await backend("web-a", webA);
  const b = await backend("web-b", "http");
  const state = mesh(appProtocol);
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE upstream in this test")),
    trustDomain: "cluster.local",
    dial: (ip) => dialTcp("127.0.0.1", ip === "10.0.0.1" ? a.port : b.port),
  });
  const access: Record<string, unknown>[] = [];
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
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  const handled: Promise<void>[] = [];
  let settled = 0;
  const server = new HboneServer({
    credentials: await pki.credentials("shop/waypoint"),
    trustDomain: "cluster.local",
    onRequest: (req) => {
      const done = handleTunnel(req, ctx, upstreams, { firstBytesTimeoutMs: firstBytesMs })
        .catch(() => void req.stream.destroy())
        .finally(() => void settled++);
      handled.push(done);
    },
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  return {
    port,
    a,
    b,
    access,
    metrics: ctx.metrics,
    /** Tunnels the waypoint is done with. */
    get settled() {
      return settled;
    },
    async [Symbol.asyncDispose]() {
      await server.close();
      await Promise.all([a.close(), b.close()]);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise((resolve) => timer = setTimeout(resolve, 3_000));
      await Promise.race([Promise.allSettled(handled), bound]);
      clearTimeout(timer);
      upstreams.http1.close();
      upstreams.http2.close();
      await tunnels.close();
    },
  };
}

/** An mTLS connection to the waypoint as shop/client, with a raw HTTP/2 peer on it. */
async function client(port: number): Promise<RawPeer> {
  const creds = await pki.credentials("shop/client");
  const raw = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => raw.once("connect", resolve).once("error", reject));
  const socket = tls.connect(clientTlsOptions(creds, raw));
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  const peer = new RawPeer(socket, "client");
  peer.settings();
  return peer;
}

/** Opens tunnel `id` to web (10.96.0.1:80) and waits for its 200. */
async function open(peer: RawPeer, id: number): Promise<void> {
  peer.headers(id, [[":method", "CONNECT"], [":authority", "10.96.0.1:80"]]);
  const answer = await peer.waitFor((f) => f.type === FrameType.HEADERS && f.streamId === id);
  assert.ok(answer, `tunnel ${id} was answered`);
}

const endsStream = (id: number) => (f: Frame) =>
  f.streamId === id && (f.type === FrameType.RST_STREAM || ("endStream" in f && f.endStream));

/** What came back on tunnel `id` until it ended (or `timeoutMs`), and whether it ended. */
async function received(peer: RawPeer, id: number, timeoutMs = 5_000): Promise<{ text: string; ended: boolean }> {
  const ended = (await peer.waitFor(endsStream(id), timeoutMs)) !== undefined || peer.socket.destroyed;
  const data = peer.frames.flatMap((f) =>
    f.type === FrameType.DATA && f.streamId === id && "data" in f ? [f.data] : []
  );
  return { text: new TextDecoder().decode(Buffer.concat(data)), ended };
}

const GET = "GET / HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\nconnection: close\r\n\r\n";

for (const appProtocol of ["http", "grpc"]) {
  Deno.test(`waypoint (appProtocol ${appProtocol}): a request that comes after the sniff's timeout is routed as HTTP`, async () => {
    await using w = await waypoint(appProtocol);
    const peer = await client(w.port);
    try {
      const tunnels = 3;
      for (let i = 0; i < tunnels; i++) await open(peer, 1 + 2 * i);
      await sleep(LATE_MS);
      for (let i = 0; i < tunnels; i++) peer.frame(FrameType.DATA, 0, 1 + 2 * i, text(GET));
      const answers: Record<string, number> = {};
      for (let i = 0; i < tunnels; i++) {
        const { text } = await received(peer, 1 + 2 * i);
        const who = text.startsWith("HTTP/1.1 200") ? text.slice(text.indexOf("\r\n\r\n") + 4) : text.slice(0, 12);
        answers[who] = (answers[who] ?? 0) + 1;
      }
      assert.deepEqual(answers, { "web-b": tunnels }, "every request went by the route to web-v2");
      assert.equal(w.a.accepted, 0, `${w.a.accepted} connections to web-a: requests went around the route, at L4`);
      const routed = w.access.filter((l) => l.route_name === "shop/to-v2" && l.response_code === 200);
      assert.equal(routed.length, tunnels, "each request is logged as routed by to-v2");
    } finally {
      await peer.close();
    }
  });
}

for (
  const [name, bytes] of [
    ["a TLS ClientHello", new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03])],
    ["a line of text", text("hello\n")],
  ] as const
) {
  Deno.test(`waypoint (appProtocol http): ${name} is refused, never relayed`, async () => {
    await using w = await waypoint("http");
    const peer = await client(w.port);
    try {
      await open(peer, 1);
      peer.frame(FrameType.DATA, 0, 1, bytes);
      const { text, ended } = await received(peer, 1);
      assert.ok(ended, "the tunnel was closed");
      assert.match(text, /^HTTP\/1\.1 400 /, "answered 400 as Envoy's HTTP/1 codec answers a protocol error");
      assert.equal(w.a.accepted + w.b.accepted, 0, "no upstream connection was made");
      const refused = w.access.filter((l) => l.response_flags === "DPE" && l.response_code === 400);
      assert.equal(refused.length, 1, `access log: ${JSON.stringify(w.access)}`);
      const counted = (await w.metrics.requests.get()).values
        .filter((v) => v.labels.response_flags === "DPE" && String(v.labels.response_code) === "400")
        .reduce((n, v) => n + v.value, 0);
      assert.equal(counted, 1, "istio_requests_total counts it with response_flags DPE");
    } finally {
      await peer.close();
    }
  });
}

Deno.test("waypoint (appProtocol http): a tunnel that never sends is closed after the timeout, not passed at L4", async () => {
  // A first-bytes timeout far below the real one; still longer than the sniff's, which passed the tunnel at L4.
  const firstBytesMs = SNIFF_TIMEOUT_MS + 300;
  await using w = await waypoint("http", { firstBytesMs });
  const peer = await client(w.port);
  try {
    await open(peer, 1);
    const { ended } = await received(peer, 1, firstBytesMs + 3_000);
    assert.ok(ended, "the silent tunnel was closed");
    assert.equal(w.a.accepted + w.b.accepted, 0, `${w.a.accepted + w.b.accepted} upstream connections for it`);
  } finally {
    await peer.close();
  }
});

Deno.test("waypoint (appProtocol http): a tunnel reset before its first bytes is let go at once", async () => {
  // With the real first-bytes timeout: a reset tunnel must not hold its wait (and its timer) that long.
  await using w = await waypoint("http");
  const peer = await client(w.port);
  try {
    const tunnels = 10;
    for (let i = 0; i < tunnels; i++) await open(peer, 1 + 2 * i);
    for (let i = 0; i < tunnels; i++) peer.write(encodeRstStream(1 + 2 * i, ErrorCode.CANCEL));
    for (let waited = 0; w.settled < tunnels && waited < 5_000; waited += 10) await sleep(10);
    assert.equal(w.settled, tunnels, `${tunnels - w.settled} reset tunnels still awaited`);
    assert.equal(w.a.accepted + w.b.accepted, 0, "no upstream connection was made");
  } finally {
    await peer.close();
  }
});

Deno.test("waypoint (nothing declared): a server-first protocol still gets its greeting after the sniff", async () => {
  await using w = await waypoint(undefined, { webA: "banner" });
  const peer = await client(w.port);
  try {
    await open(peer, 1);
    const greeted = await peer.waitFor((f) => f.type === FrameType.DATA && f.streamId === 1, 5_000);
    assert.ok(greeted && "data" in greeted, "the backend's greeting came through the tunnel");
    assert.equal(new TextDecoder().decode(greeted.data), "220 web-a ready\r\n");
    assert.equal(w.a.accepted, 1, "passed at L4 to web's endpoint");
    assert.equal(w.b.accepted, 0);
  } finally {
    await peer.close();
  }
});
