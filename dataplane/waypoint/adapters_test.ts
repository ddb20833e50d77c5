/**
 * The waypoint's in-process tier: the HTTP/1 and HTTP/2 adapters (`http1.ts`, `http2.ts`) on real loopback
 * sockets, between real clients (curl, raw sockets, our HTTP/2 client) and real backends, with the tunnels to the
 * endpoints replaced by plain TCP to a loopback backend. What a backend receives and how long its connections and
 * streams stay open are measured there, on the backend's side.
 */

import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import pino from "pino";
import { H2Connection } from "../h2/connection.ts";
import { field, type HeaderField } from "../h2/fields.ts";
import type { H2Stream } from "../h2/stream.ts";
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

const WEB = "shop/web.shop.svc.cluster.local";
const CLIENT = SpiffeId.of("cluster.local", "shop", "client");
const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};
const silent = pino({ level: "silent" });

/** Service web (10.96.0.1:80 → 8080) with one endpoint outside the mesh, web-a 10.0.0.1. */
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
    uid: "web-a",
    name: "web-a",
    namespace: "shop",
    addresses: ["10.0.0.1"],
    services: { [WEB]: [{ servicePort: 80, targetPort: 8080 }] },
  }));
  return state;
}

/** Resolves on the next `close` of `s`, at once when it is closed already. */
const closed = (s: net.Socket) => s.destroyed ? Promise.resolve() : new Promise<void>((r) => s.once("close", r));

/**
 * A waypoint serving one session (client → web) on a loopback port, whose every endpoint is `backendPort`. Each
 * dial to the endpoint waits `dialDelayMs` first, as an HBONE handshake would.
 */
async function waypoint(backendPort: () => number, opts: { dialDelayMs?: number } = {}) {
  const state = mesh();
  const tunnels = new Tunnels({
    workload: () => undefined,
    identity: self.identity.toString(),
    credentials: () => Promise.reject(new Error("no HBONE in this test")),
    trustDomain: "cluster.local",
    dial: async (_ip, _port) => {
      await new Promise((r) => setTimeout(r, opts.dialDelayMs ?? 0));
      return await dialTcp("127.0.0.1", backendPort());
    },
  });
  const ctx: WaypointContext = {
    self,
    state: () => state,
    balancer: new Balancer(),
    tunnels,
    metrics: new WaypointMetrics(),
    log: silent,
    access: silent,
    random: Math.random,
  };
  const service = state.services.byKey(WEB)!;
  const session: Session = {
    peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
    destination: { kind: "service", service, vip: "10.96.0.1", port: 80 },
    authority: "10.96.0.1:80",
  };
  const http1 = new Http1Upstream(tunnels);
  const http2 = new Http2Upstream(tunnels);
  const sockets = new Set<net.Socket>();
  const served: Promise<void>[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    served.push((async () => {
      const kind = await sniff(socket);
      if (kind === "http2") await serveHttp2(socket, session, { http1, http2 }, ctx);
      else if (kind === "http1") await serveHttp1(socket, session, { http1, http2 }, ctx);
      else socket.destroy();
    })());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    async [Symbol.asyncDispose]() {
      http1.close();
      http2.close();
      for (const s of sockets) s.destroy();
      await Promise.all([...sockets].map(closed));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([Promise.allSettled(served), new Promise((r) => timer = setTimeout(r, 2_000))]);
      clearTimeout(timer);
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A TCP backend that reads whatever comes and never answers; counts its open connections. */
async function silentBackend() {
  const sockets = new Set<net.Socket>();
  let received = 0;
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("data", (c: Uint8Array) => received += c.byteLength);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return sockets.size;
    },
    get received() {
      return received;
    },
    async [Symbol.asyncDispose]() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** An HTTP/2 (prior knowledge) backend that reads request bodies and never answers; counts its open streams. */
async function silentH2Backend() {
  const conns = new Set<H2Connection>();
  const sockets = new Set<net.Socket>();
  let open = 0;
  let requests = 0;
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    const conn = new H2Connection(socket, {
      role: "server",
      onStream: (stream) => {
        open++;
        requests++;
        stream.resume();
        stream.once("close", () => open--);
      },
    });
    conns.add(conn);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return open;
    },
    get requests() {
      return requests;
    },
    async [Symbol.asyncDispose]() {
      for (const c of conns) c.destroy();
      for (const s of sockets) s.destroy();
      await Promise.all([...conns].map((c) => c.closed));
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Polls `get` until it returns `want` or `ms` pass; returns the last value. */
async function settle<T>(get: () => T, want: T, ms: number): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = get();
    if (v === want || performance.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sends raw bytes to `port` and reads the answer until the waypoint closes, or `ms` pass. */
async function rawExchange(port: number, chunks: string[], ms: number): Promise<string> {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => {});
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  let answer = "";
  socket.on("data", (c: Uint8Array) => answer += new TextDecoder().decode(c));
  for (const c of chunks) {
    socket.write(c);
    await new Promise((r) => setTimeout(r, 30));
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([closed(socket), new Promise((r) => timer = setTimeout(r, ms))]);
  clearTimeout(timer);
  socket.destroy();
  await closed(socket);
  return answer;
}

async function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

// ---- (a) x-forwarded-client-cert ------------------------------------------------------------------------------

/** What the waypoint writes: its own identity and the verified peer's, nothing the client sent. */
const XFCC = `By=${self.identity};URI=${CLIENT}`;
const FORGED =
  'By=spiffe://cluster.local/ns/shop/sa/web;Hash=00;Subject="";URI=spiffe://cluster.local/ns/shop/sa/admin';

Deno.test("the waypoint replaces a client's x-forwarded-client-cert over HTTP/1.1 (curl)", async () => {
  const seen: string[][] = [];
  const backend = http.createServer((req, res) => {
    const values: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (req.rawHeaders[i].toLowerCase() === "x-forwarded-client-cert") values.push(req.rawHeaders[i + 1]);
    }
    seen.push(values);
    res.end("ok");
  });
  await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
  const backendPort = (backend.address() as net.AddressInfo).port;
  try {
    await using wp = await waypoint(() => backendPort);
    const url = `http://127.0.0.1:${wp.port}/whoami`;
    for (const args of [[url], ["-H", `x-forwarded-client-cert: ${FORGED}`, "-H", "X-Forwarded-Client-Cert: x", url]]) {
      const out = await run("curl", ["-sS", "--max-time", "5", ...args]);
      assert.equal(out.stdout, "ok", out.stderr);
    }
    assert.deepEqual(seen, [[XFCC], [XFCC]]);
  } finally {
    backend.closeAllConnections();
    await new Promise((resolve) => backend.close(resolve));
  }
});

Deno.test("the waypoint replaces a client's x-forwarded-client-cert over HTTP/2 (curl --http2-prior-knowledge)", async () => {
  const seen: string[][] = [];
  const conns = new Set<H2Connection>();
  const backend = net.createServer((socket) => {
    conns.add(
      new H2Connection(socket, {
        role: "server",
        onStream: (stream) => {
          seen.push(stream.requestHeaders.filter(([n]) => n === "x-forwarded-client-cert").map(([, v]) => v));
          stream.resume();
          stream.respond([[":status", "200"]]);
          stream.end(new TextEncoder().encode("ok"));
        },
      }),
    );
  });
  await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
  const backendPort = (backend.address() as net.AddressInfo).port;
  try {
    await using wp = await waypoint(() => backendPort);
    const url = `http://127.0.0.1:${wp.port}/whoami`;
    const out = await run("curl", [
      "-sS",
      "--http2-prior-knowledge",
      "--max-time",
      "5",
      "-H",
      `x-forwarded-client-cert: ${FORGED}`,
      url,
    ]);
    assert.equal(out.stdout, "ok", out.stderr);
    assert.deepEqual(seen, [[XFCC]]);
  } finally {
    for (const c of conns) c.destroy();
    await Promise.all([...conns].map((c) => c.closed));
    await new Promise((resolve) => backend.close(resolve));
  }
});

// ---- (d, e) a request body the codec refuses after the head went upstream -------------------------------------

const HTTP1_BAD_BODIES: [name: string, body: string][] = [
  ["a chunk size that is not hexadecimal", "5\r\nhello\r\nzz\r\n"],
  ["a control character in a chunk extension", "5;ext=\x01\r\nhello\r\n0\r\n\r\n"],
  ["chunk data not followed by CRLF", "5\r\nhelloXX0\r\n\r\n"],
];

Deno.test("an HTTP/1 body the waypoint refuses mid-way gets a 400 and closes the upstream connection at once", async (t) => {
  for (const dialDelayMs of [0, 150]) {
    for (const [name, body] of HTTP1_BAD_BODIES) {
      await t.step(`${name}${dialDelayMs ? ", while the endpoint is still being dialled" : ""}`, async () => {
        // Made after the waypoint so that it is disposed of first: a waypoint still waiting on it then lets go.
        let port = 0;
        await using wp = await waypoint(() => port, { dialDelayMs });
        await using backend = await silentBackend();
        port = backend.port;
        const head = "POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n";
        const started = performance.now();
        const answer = await rawExchange(wp.port, [head, body], 1_500);
        assert.match(answer, /^HTTP\/1\.1 400 /, `the client's answer: ${JSON.stringify(answer)}`);
        // No upstream connection may be left waiting for the rest of the body; counted once the dial is surely
        // over, so that a connection made late is counted too.
        await new Promise((r) => setTimeout(r, Math.max(0, started + dialDelayMs + 100 - performance.now())));
        assert.equal(await settle(() => backend.open, 0, 1_000), 0, "upstream connections still open after 1 s");
      });
    }
  }
});

/** Our HTTP/2 client: a POST whose body breaks the rules in `misbehave`; resolves with how the stream ended. */
async function h2BadRequest(
  port: number,
  headers: HeaderField[],
  misbehave: (stream: H2Stream) => void,
): Promise<string> {
  const socket = net.connect(port, "127.0.0.1");
  socket.on("error", () => {});
  const client = new H2Connection(socket, { role: "client" });
  try {
    const stream = client.request([
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/upload"],
      [":authority", "web"],
      ...headers,
    ]);
    stream.write(new TextEncoder().encode("0123456789"));
    await new Promise((r) => setTimeout(r, 30));
    misbehave(stream);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const ended = await Promise.race([
      stream.response.then((h) => `answered ${field(h, ":status")}`, () => `reset ${stream.resetCode}`),
      new Promise<string>((r) => timer = setTimeout(() => r("no answer within 1.5 s"), 1_500)),
    ]);
    clearTimeout(timer);
    return ended;
  } finally {
    client.destroy();
    socket.destroy();
    await client.closed;
  }
}

Deno.test("an HTTP/2 body the waypoint refuses mid-way is reset and resets the upstream stream at once", async (t) => {
  const cases: [string, HeaderField[], (s: H2Stream) => void][] = [
    [
      "DATA beyond its content-length",
      [["content-length", "12"]],
      (s) => s.end(new TextEncoder().encode("0123456789")),
    ],
    [
      "trailers with a pseudo-header",
      [],
      (s) => s.endWithTrailers([[":path", "/admin"]]),
    ],
  ];
  for (const dialDelayMs of [0, 150]) {
    for (const [name, headers, misbehave] of cases) {
      await t.step(`${name}${dialDelayMs ? ", while the endpoint is still being dialled" : ""}`, async () => {
        let port = 0;
        await using wp = await waypoint(() => port, { dialDelayMs });
        await using backend = await silentH2Backend();
        port = backend.port;
        const started = performance.now();
        const ended = await h2BadRequest(wp.port, headers, misbehave);
        // RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR (1): that is its answer.
        assert.equal(ended, "reset 1");
        // Counted once the dial is surely over, so that a stream opened late is counted too.
        await new Promise((r) => setTimeout(r, Math.max(0, started + dialDelayMs + 100 - performance.now())));
        assert.equal(await settle(() => backend.open, 0, 1_000), 0, "upstream streams still open after 1 s");
      });
    }
  }
});

// ---- (c) an endpoint's early answer, then RST_STREAM(NO_ERROR) ------------------------------------------------

Deno.test("the waypoint delivers an HTTP/2 endpoint's complete answer that it follows with RST_STREAM(NO_ERROR)", async () => {
  const conns = new Set<H2Connection>();
  const backend = net.createServer((socket) => {
    conns.add(
      new H2Connection(socket, {
        role: "server",
        onStream: (stream) => {
          // Answered before the upload ends; then the rest of the upload is refused without error (RFC 9113 §8.1).
          stream.respond([[":status", "200"], ["content-length", "13"]]);
          stream.end(new TextEncoder().encode("early answer\n"), () => stream.reset(0));
        },
      }),
    );
  });
  await new Promise<void>((resolve) => backend.listen(0, "127.0.0.1", resolve));
  const backendPort = (backend.address() as net.AddressInfo).port;
  try {
    await using wp = await waypoint(() => backendPort);
    const s = net.connect(wp.port, "127.0.0.1");
    s.on("error", () => {});
    const client = new H2Connection(s, { role: "client" });
    try {
      const stream = client.request([[":method", "POST"], [":scheme", "http"], [":path", "/"], [":authority", "web"]]);
      stream.write(new TextEncoder().encode("part of a long upload"));
      const chunks: string[] = [];
      stream.on("data", (c: Uint8Array) => chunks.push(new TextDecoder().decode(c)));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const outcome = await Promise.race([
        new Promise<string>((resolve) => {
          stream.once("end", () => resolve(`ended: ${chunks.join("")}`));
          stream.once(
            "close",
            () => resolve(stream.readableEnded ? `ended: ${chunks.join("")}` : `reset ${stream.resetCode}`),
          );
        }),
        new Promise<string>((r) => timer = setTimeout(() => r("no answer within 3 s"), 3_000)),
      ]);
      clearTimeout(timer);
      assert.equal(outcome, "ended: early answer\n");
    } finally {
      client.destroy();
      s.destroy();
      await client.closed;
    }
  } finally {
    for (const c of conns) c.destroy();
    await Promise.all([...conns].map((c) => c.closed));
    await new Promise((resolve) => backend.close(resolve));
  }
});
