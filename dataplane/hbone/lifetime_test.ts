/**
 * Certificates over a connection's life, through real TLS on loopback: the pool and the server with short-lived
 * certificates from the test PKI, a real rotation manager whose CA goes unreachable, and a trust bundle that
 * changes under established connections.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { HboneError, HbonePool, type PoolKey } from "./pool.ts";
import { type HboneRequest, HboneServer } from "./server.ts";
import { clientTlsOptions, type WorkloadCredentials } from "./tls.ts";
import { chainValidity } from "./validity.ts";
import { H2Connection } from "../h2/connection.ts";
import type { H2Stream } from "../h2/stream.ts";
import { RotationManager } from "../../certs/rotation_manager.ts";
import type { CertTimes } from "../../certs/rotation.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const pki = await TestPki.create();
const otherPki = await TestPki.create(); // another root for the same trust domain
const CLIENT = pki.id("default/client");
const SERVER = pki.id("default/server");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Sleeps until `chainPem` has expired. */
const untilExpired = (chainPem: string) => sleep(Math.max(0, chainValidity(chainPem).notAfter - Date.now() + 200));

function dialLoopback(dst: { ip: string; port: number }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(dst.port, dst.ip);
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** An HBONE server answering 200 and echoing, and what it saw. */
async function echoServer(credentials: WorkloadCredentials) {
  const requests: HboneRequest[] = [];
  const rejected: string[] = [];
  const server = new HboneServer({
    credentials,
    trustDomain: "cluster.local",
    onRequest: (req) => {
      requests.push(req);
      req.stream.respond([[":status", "200"]]);
      req.stream.pipe(req.stream);
    },
    onRejected: (_remote, reason) => rejected.push(reason.message),
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  const key: PoolKey = { srcIdentity: CLIENT, dstIdentities: [SERVER], dst: { ip: "127.0.0.1", port }, srcIp: "" };
  return { server, port, key, requests, rejected, [Symbol.asyncDispose]: () => server.close() };
}

function exchange(stream: H2Stream, text: string): Promise<string> {
  let got = "";
  stream.on("data", (c: Uint8Array) => got += new TextDecoder().decode(c));
  stream.end(new TextEncoder().encode(text));
  return new Promise((resolve, reject) => {
    stream.once("end", () => resolve(got));
    stream.once("close", () => stream.readableEnded ? resolve(got) : reject(stream.errored));
  });
}

Deno.test("HBONE pool: a connection made with a certificate that expired, the CA unreachable, carries no new tunnel", async () => {
  let caReachable = true;
  type Cert = WorkloadCredentials & CertTimes;
  const certs = new RotationManager<Cert>({
    fetch: async (identity) => {
      if (!caReachable) throw new Error("connect ECONNREFUSED 127.0.0.1:15012");
      const c = await pki.credentials(identity, { ttlMs: 2_000 });
      return { ...c, ...chainValidity(c.chainPem) };
    },
  });
  await using f = await echoServer(await pki.credentials("default/server"));
  const pool = new HbonePool({ trustDomain: "cluster.local", credentials: (id) => certs.get(id), dial: dialLoopback });
  try {
    assert.equal(await exchange(await pool.connect(f.key, "10.0.2.9:80", []), "before"), "before");
    caReachable = false;
    await untilExpired(certs.current(CLIENT)!.chainPem);
    await assert.rejects(pool.connect(f.key, "10.0.2.9:80", []), (e: HboneError) => {
      assert.equal(e.code, "TLS");
      assert.match(e.message, /spiffe:\/\/cluster\.local\/ns\/default\/sa\/client/, "the error names the certificate");
      assert.match(e.message, /ECONNREFUSED|expired/, "and says why");
      return true;
    });
    assert.equal(f.requests.length, 1, "no tunnel reached the server after the client certificate expired");
  } finally {
    await pool.close();
    certs.close();
  }
});

Deno.test("HBONE pool: a connection whose server certificate expired carries no new tunnel", async () => {
  const serverCreds = await pki.credentials("default/server", { ttlMs: 2_000 });
  await using f = await echoServer(serverCreds);
  const client = await pki.credentials("default/client");
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(client),
    dial: dialLoopback,
  });
  try {
    assert.equal(await exchange(await pool.connect(f.key, "10.0.2.9:80", []), "before"), "before");
    await untilExpired(serverCreds.chainPem);
    await assert.rejects(pool.connect(f.key, "10.0.2.9:80", []), HboneError);
    assert.equal(f.requests.length, 1, "no tunnel reached the server after its certificate expired");
  } finally {
    await pool.close();
  }
});

Deno.test("HBONE pool: when the trust bundle changes, a connection to a server that no longer chains to it is closed", async (t) => {
  await using f = await echoServer(await pki.credentials("default/server"));
  const before = await pki.credentials("default/client");
  // The same identity, renewed under another root: the bundle that comes with it no longer holds the server's root.
  const after = await otherPki.credentials("default/client");
  let current = before;
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(current),
    dial: dialLoopback,
  });
  try {
    await t.step("the next tunnel does not ride the old connection", async () => {
      assert.equal(await exchange(await pool.connect(f.key, "10.0.2.9:80", []), "before"), "before");
      current = after;
      await assert.rejects(pool.connect(f.key, "10.0.2.9:80", []), HboneError);
      assert.equal(f.requests.length, 1, "no tunnel reached a server the new bundle does not trust");
    });
    await t.step("an idle connection is closed as soon as the pool is told of the new bundle", async () => {
      current = before;
      assert.equal(await exchange(await pool.connect(f.key, "10.0.2.9:80", []), "again"), "again");
      assert.equal(pool.stats().connections, 1);
      current = after;
      assert.equal(await pool.applyTrustBundle(after.rootsPem), 1);
      for (let waited = 0; pool.stats().connections > 0 && waited < 2000; waited += 20) await sleep(20);
      assert.equal(pool.stats().connections, 0);
    });
  } finally {
    await pool.close();
  }
});

/**
 * A client that keeps using its connection whatever its certificates say (it skips the pool's checks): a raw
 * H2Connection over `tls.connect`.
 */
async function rawClient(port: number, creds: WorkloadCredentials, checkServer = true) {
  const raw = await dialLoopback({ ip: "127.0.0.1", port });
  const socket = tls.connect({ ...clientTlsOptions(creds, raw), rejectUnauthorized: checkServer });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", () => resolve());
    socket.once("error", reject);
  });
  const conn = new H2Connection(socket, { role: "client" });
  return {
    conn,
    /** Opens a tunnel and resolves with the status, or with why it failed. */
    async tunnel(): Promise<string> {
      try {
        const stream = conn.request([[":method", "CONNECT"], [":authority", "10.0.2.9:80"]]);
        const response = await stream.response;
        stream.destroy();
        return response.find(([n]) => n === ":status")?.[1] ?? "no status";
      } catch (error) {
        return `failed: ${(error as Error).message}`;
      }
    },
    async [Symbol.asyncDispose]() {
      conn.destroy();
      await conn.closed;
      raw.destroy();
    },
  };
}

Deno.test("HBONE server: no new stream on a connection once either certificate expired", async (t) => {
  await t.step("the client's", async () => {
    const client = await pki.credentials("default/client", { ttlMs: 2_000 });
    await using f = await echoServer(await pki.credentials("default/server"));
    await using c = await rawClient(f.port, client);
    assert.equal(await c.tunnel(), "200");
    await untilExpired(client.chainPem);
    assert.match(await c.tunnel(), /^failed/);
    assert.equal(f.requests.length, 1, "the server served a stream after the client certificate expired");
    assert.match(f.rejected.join("\n"), /peer certificate spiffe:\/\/cluster\.local\/ns\/default\/sa\/client expired/);
  });
  await t.step("its own, and then no new connection either", async () => {
    const serverCreds = await pki.credentials("default/server", { ttlMs: 2_000 });
    await using f = await echoServer(serverCreds);
    // A client that does not check the server's dates, so only the server can refuse.
    await using c = await rawClient(f.port, await pki.credentials("default/client"), false);
    assert.equal(await c.tunnel(), "200");
    await untilExpired(serverCreds.chainPem);
    assert.match(await c.tunnel(), /^failed/);
    await using late = await rawClient(f.port, await pki.credentials("default/client"), false);
    assert.match(await late.tunnel(), /^failed/);
    assert.equal(f.requests.length, 1, "the server served with an expired certificate");
    assert.match(f.rejected.join("\n"), /local certificate spiffe:\/\/cluster\.local\/ns\/default\/sa\/server expired/);
  });
});

Deno.test("HBONE server: a new trust bundle closes connections whose client no longer chains to it", async () => {
  const serverBefore = await pki.credentials("default/server");
  await using f = await echoServer(serverBefore);
  await using c = await rawClient(f.port, await pki.credentials("default/client"));
  assert.equal(await c.tunnel(), "200");
  // Renewed under another root; the new bundle holds only that root.
  const closed = await f.server.setCredentials(await otherPki.credentials("default/server"));
  assert.equal(closed, 1);
  await c.conn.closed;
  for (let waited = 0; f.server.connections > 0 && waited < 2000; waited += 20) await sleep(20);
  assert.equal(f.server.connections, 0);
  assert.match(f.rejected.join("\n"), /does not chain to the new trust bundle/);
});
