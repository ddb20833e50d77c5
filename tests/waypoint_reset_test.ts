/**
 * Rapid reset against the waypoint's HBONE listener, through real mTLS on loopback: the waypoint's own
 * `HboneServer` and `handleTunnel` (as `runWaypoint` wires them), a backend that counts the connections it
 * accepts, and a raw HTTP/2 client that opens CONNECT streams and resets each at once. A tunnel whose client is
 * gone must cost no upstream dial: the waypoint answers 200 before it sniffs the first bytes and dials, so
 * without a check each reset stream was dialled anyway (after the 1 s sniff timeout, or at once for a Service
 * port whose `appProtocol` is `tcp`). ztunnel's inbound bounds the same thing with `proxy/dial_guard.ts`.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import pino from "pino";
import { encodeHeaders, encodeRstStream, ErrorCode, FrameType } from "../dataplane/h2/frame.ts";
import { HboneServer } from "../dataplane/hbone/server.ts";
import { clientTlsOptions } from "../dataplane/hbone/tls.ts";
import type { WaypointContext } from "../dataplane/waypoint/exchange.ts";
import { Http1Upstream } from "../dataplane/waypoint/http1.ts";
import { Http2Upstream } from "../dataplane/waypoint/http2.ts";
import { handleTunnel, SNIFF_TIMEOUT_MS } from "../dataplane/waypoint/server.ts";
import { DIAL_LIMITS } from "../dataplane/proxy/dial_guard.ts";
import type { WaypointSelf } from "../dataplane/waypoint/session.ts";
import { WaypointMetrics } from "../dataplane/waypoint/telemetry.ts";
import { Balancer, dialTcp, Tunnels } from "../dataplane/waypoint/upstream.ts";
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
/** Resets per connection: under the codec's 250 early resets, so the connection itself is never closed for it. */
const RESETS = 200;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Service web (10.96.0.1:80 → 8080) bound to the waypoint, one endpoint outside the mesh. */
function mesh(appProtocol: string | undefined): MeshState {
  const state = new MeshState();
  const port = { port: 80, targetPort: 8080, ...(appProtocol ? { appProtocol } : {}) };
  state.services.upsert(decodeService({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ address: "10.96.0.1" }],
    ports: [port],
    waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
  }));
  state.workloads.upsert(decodeWorkload({
    uid: "web-a",
    name: "web-a",
    namespace: "shop",
    addresses: ["10.0.0.1"],
    services: {
      "shop/web.shop.svc.cluster.local": [{
        servicePort: 80,
        targetPort: 8080,
        ...(appProtocol ? { appProtocol } : {}),
      }],
    },
  }));
  return state;
}

/** The waypoint's HBONE listener on loopback, every endpoint being a backend that counts what it accepts. */
async function waypoint(appProtocol: string | undefined, dialDelayMs = 0) {
  const backend = { accepted: 0, sockets: new Set<net.Socket>() };
  const app = net.createServer((s) => {
    backend.accepted++;
    backend.sockets.add(s);
    s.on("error", () => {});
    s.on("close", () => backend.sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => app.listen(0, "127.0.0.1", resolve));
  const appPort = (app.address() as net.AddressInfo).port;
  const state = mesh(appProtocol);
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE upstream in this test")),
    trustDomain: "cluster.local",
    dial: async () => {
      await sleep(dialDelayMs);
      return dialTcp("127.0.0.1", appPort);
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
  const upstreams = { http1: new Http1Upstream(tunnels), http2: new Http2Upstream(tunnels) };
  const handled: Promise<void>[] = [];
  const server = new HboneServer({
    credentials: await pki.credentials("shop/waypoint"),
    trustDomain: "cluster.local",
    h2: { maxConcurrentStreams: 100 },
    onRequest: (req) => {
      handled.push(handleTunnel(req, ctx, upstreams).catch(() => void req.stream.destroy()));
    },
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  return {
    port,
    backend,
    async [Symbol.asyncDispose]() {
      await server.close();
      for (const s of backend.sockets) s.destroy();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise((resolve) => timer = setTimeout(resolve, 2_000));
      await Promise.race([Promise.allSettled(handled), bound]); // a tunnel still relaying is a failure above
      clearTimeout(timer);
      upstreams.http1.close();
      upstreams.http2.close();
      await tunnels.close();
      await new Promise((resolve) => app.close(resolve));
    },
  };
}

/** An mTLS connection to the waypoint as `who` (ns/sa), with a raw HTTP/2 peer on it. */
async function client(port: number, who = "shop/client"): Promise<RawPeer> {
  const creds = await pki.credentials(who);
  const raw = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => raw.once("connect", resolve).once("error", reject));
  const socket = tls.connect(clientTlsOptions(creds, raw));
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  const peer = new RawPeer(socket, "client");
  peer.settings();
  return peer;
}

const CONNECT: [string, string][] = [[":method", "CONNECT"], [":authority", "10.96.0.1:80"]];

for (const appProtocol of [undefined, "tcp"]) {
  const port = appProtocol ? `appProtocol ${appProtocol}` : "a sniffed port";
  Deno.test(`waypoint (${port}): a CONNECT reset at once costs no upstream dial`, async () => {
    await using w = await waypoint(appProtocol);
    const peer = await client(w.port);
    try {
      // Control: a tunnel that is used reaches the backend, so a count of 0 below is the waypoint's doing.
      peer.headers(1, CONNECT);
      peer.frame(FrameType.DATA, 0, 1, new TextEncoder().encode("hello"));
      const echo = await peer.waitFor((f) => f.type === FrameType.DATA && f.streamId === 1);
      assert.ok(echo, "the tunnel echoes");
      assert.equal(w.backend.accepted, 1);

      // The attack: HEADERS and RST_STREAM together, as one write, stream after stream.
      for (let i = 0; i < RESETS; i++) {
        const id = 3 + 2 * i;
        const block = peer.encoder.encode(CONNECT);
        peer.socket.cork();
        peer.write(encodeHeaders(id, block, false, 16_384));
        peer.write(encodeRstStream(id, ErrorCode.CANCEL));
        peer.socket.uncork();
      }
      await sleep(SNIFF_TIMEOUT_MS + 1_000);
      assert.ok(!peer.socket.destroyed, "the connection stayed open: the codec's own limit did not step in");
      assert.equal(w.backend.accepted, 1, `${w.backend.accepted - 1} dials for ${RESETS} streams reset at once`);
      assert.equal(w.backend.sockets.size, 1, `${w.backend.sockets.size - 1} upstream connections held open`);
    } finally {
      await peer.close();
    }
  });
}

Deno.test("waypoint: a client gone while its upstream was dialled leaves no upstream connection open", async () => {
  // The dial takes 300 ms; each client sends its first bytes (so the tunnel is taken as TCP and dialled) and
  // resets 50 ms later. The backend echoes and never hangs up first, as a database or a message broker would not.
  await using w = await waypoint(undefined, 300);
  const peer = await client(w.port, "shop/gone");
  try {
    const streams = 20;
    for (let i = 0; i < streams; i++) {
      const id = 1 + 2 * i;
      peer.headers(id, CONNECT);
      peer.frame(FrameType.DATA, 0, id, new TextEncoder().encode("hello"));
    }
    await sleep(50);
    for (let i = 0; i < streams; i++) peer.write(encodeRstStream(1 + 2 * i, ErrorCode.CANCEL));
    await sleep(SNIFF_TIMEOUT_MS);
    assert.equal(w.backend.accepted, streams, "each tunnel was dialled: its reset came after the dial began");
    assert.equal(w.backend.sockets.size, 0, `${w.backend.sockets.size} upstream connections held for gone clients`);
  } finally {
    await peer.close();
  }
});

Deno.test("waypoint: resets after the dial began, spread over connections, make a bounded number of dials", async () => {
  // 5 connections x 40 streams, twice: each connection far under the codec's limit, so only a bound across the
  // identity's connections holds. Each stream sends its first bytes and is reset 50 ms into a 300 ms dial.
  await using w = await waypoint(undefined, 300);
  const peers = await Promise.all(Array.from({ length: 5 }, () => client(w.port, "shop/flooder")));
  const good = await client(w.port, "shop/bystander");
  try {
    for (let round = 0; round < 2; round++) {
      const first = 1 + 80 * round;
      for (const peer of peers) {
        for (let id = first; id < first + 80; id += 2) {
          peer.headers(id, CONNECT);
          peer.frame(FrameType.DATA, 0, id, new TextEncoder().encode("hello"));
        }
      }
      await sleep(50);
      for (const peer of peers) {
        for (let id = first; id < first + 80; id += 2) peer.write(encodeRstStream(id, ErrorCode.CANCEL));
      }
      await sleep(600);
    }
    assert.ok(peers.every((p) => !p.socket.destroyed), "no connection was closed by the codec's own limit");
    assert.ok(
      w.backend.accepted <= DIAL_LIMITS.pendingPerIdentity,
      `${w.backend.accepted} dials for 400 streams reset early, more than ${DIAL_LIMITS.pendingPerIdentity}`,
    );
    // Another identity is still served meanwhile.
    good.headers(1, CONNECT);
    good.frame(FrameType.DATA, 0, 1, new TextEncoder().encode("hello"));
    assert.ok(
      await good.waitFor((f) => f.type === FrameType.DATA && f.streamId === 1),
      "the bystander's tunnel echoes",
    );
  } finally {
    await Promise.all([...peers, good].map((p) => p.close()));
  }
});
