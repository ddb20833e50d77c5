/**
 * A handshake that straddles a rotation, through real TLS on loopback. node:tls binds a connection to the secure
 * context in force when its TCP connection was accepted, so a client can connect, wait (up to the 10 s handshake
 * timeout), and finish its handshake after `setCredentials()` replaced the context: it is verified against the
 * trust bundle the rotation removed. Such a connection must not be served as if the current bundle had verified
 * it, and the certificate it was served with, not the newest, is the one its life is held to.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { HbonePool } from "./pool.ts";
import { type HboneRequest, HboneServer } from "./server.ts";
import { clientTlsOptions, type WorkloadCredentials } from "./tls.ts";
import { encodeHeaders, ErrorCode, FrameType } from "../h2/frame.ts";
import { chainValidity } from "./validity.ts";
import { RawPeer } from "../../tests/harness/h2peer.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const pki = await TestPki.create();
const newRoot = await TestPki.create(); // the same trust domain under another root

/** A server with `before`; a TCP connection accepted; then `after` set; then the TLS handshake on it as `client`. */
async function straddle(before: WorkloadCredentials, after: WorkloadCredentials, client: WorkloadCredentials) {
  const requests: HboneRequest[] = [];
  const rejected: string[] = [];
  const server = new HboneServer({
    credentials: before,
    trustDomain: "cluster.local",
    onRequest: (req) => {
      requests.push(req);
      req.stream.respond([[":status", "200"]]);
    },
    onRejected: (_remote, reason) => rejected.push(reason.message),
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  const raw = net.connect(port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => raw.once("connect", resolve).once("error", reject));
  await server.setCredentials(after);
  const socket = tls.connect(clientTlsOptions(client, raw));
  const handshake = await new Promise<string>((resolve) => {
    socket.once("secureConnect", () => resolve("done"));
    socket.once("error", (e) => resolve(e.message));
  });
  const peer = new RawPeer(socket, "client");
  peer.settings();
  peer.write(
    encodeHeaders(1, peer.encoder.encode([[":method", "CONNECT"], [":authority", "10.0.2.9:80"]]), false, 16_384),
  );
  await peer.waitFor(() => requests.length > 0 || rejected.length > 0, 2_000);
  await new Promise((r) => setTimeout(r, 100));
  return {
    handshake,
    peer,
    requests,
    rejected,
    server,
    async [Symbol.asyncDispose]() {
      await peer.close();
      raw.destroy();
      await server.close();
    },
  };
}

Deno.test("HBONE server: a handshake finished after the trust bundle lost its root is not served", async () => {
  const client = await pki.credentials("default/client"); // chains only to the root being removed
  await using s = await straddle(
    await pki.credentials("default/server"),
    await newRoot.credentials("default/server"),
    client,
  );
  assert.equal(s.handshake, "done", "the handshake itself ran on the old context");
  assert.equal(s.requests.length, 0, `served ${s.requests[0]?.peer}, whose root the bundle no longer holds`);
  assert.match(s.rejected.join("\n"), /trust bundle replaced/);
  assert.equal(s.server.connections, 0);
});

Deno.test("HBONE server: a handshake straddling a plain renewal (same bundle) is served", async () => {
  await using s = await straddle(
    await pki.credentials("default/server"),
    await pki.credentials("default/server"),
    await pki.credentials("default/client"),
  );
  assert.equal(s.handshake, "done");
  assert.deepEqual(s.rejected, []);
  assert.equal(s.requests.length, 1);
});

Deno.test("HBONE server: a connection is held to the certificate its handshake presented, not a newer one", async () => {
  // The handshake runs on a certificate about to expire; a renewal lands before it finishes. Once the certificate
  // it was served with has expired, the connection takes no new stream, however long the renewed one lasts.
  const expiring = await pki.credentials("default/server", { ttlMs: 1_500 });
  await using s = await straddle(
    expiring,
    await pki.credentials("default/server"),
    await pki.credentials("default/client"),
  );
  assert.equal(s.requests.length, 1, "served while its certificate was valid");
  await new Promise((r) => setTimeout(r, Math.max(0, chainValidity(expiring.chainPem).notAfter - Date.now() + 200)));
  s.peer.write(
    encodeHeaders(3, s.peer.encoder.encode([[":method", "CONNECT"], [":authority", "10.0.2.9:80"]]), false, 16_384),
  );
  const reset = await s.peer.waitFor((f) => f.type === FrameType.RST_STREAM && f.streamId === 3, 2_000);
  assert.equal(s.requests.length, 1, "a new stream rode a connection whose certificate had expired");
  assert.equal(reset && "code" in reset ? reset.code : undefined, ErrorCode.REFUSED_STREAM);
});

Deno.test("HBONE pool: a dial that straddles a trust bundle change is verified against the new bundle", async () => {
  // The source's certificate is renewed with a bundle without the old root while the dial is in its handshake:
  // applyTrustBundle() found no connection to check, so the new one is checked before its first tunnel.
  const old = await pki.credentials("default/client");
  const renewed = await newRoot.credentials("default/client");
  let calls = 0;
  const served: HboneRequest[] = [];
  const server = new HboneServer({
    credentials: await pki.credentials("default/server"),
    trustDomain: "cluster.local",
    onRequest: (req) => {
      served.push(req);
      req.stream.respond([[":status", "200"]]);
    },
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(calls++ === 0 ? old : renewed),
    dial: (dst) =>
      new Promise((resolve, reject) => {
        const s = net.connect(dst.port, dst.ip);
        s.once("connect", () => resolve(s)).once("error", reject);
      }),
  });
  try {
    const key = {
      srcIdentity: pki.id("default/client"),
      dstIdentities: [pki.id("default/server")],
      dst: { ip: "127.0.0.1", port },
      srcIp: "",
    };
    await assert.rejects(pool.connect(key, "10.0.2.9:80", []), /does not chain to the new trust bundle/);
    assert.equal(served.length, 0, "a tunnel rode a connection to a server the current bundle does not trust");
  } finally {
    await pool.close();
    await server.close();
  }
});
