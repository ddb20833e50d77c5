/**
 * TLS session resumption against the HBONE server, with a real openssl client: a resumed session carries no
 * certificate, so serving it would serve whoever holds the session with the identity of a certificate that may
 * since have expired (CVE-2022-21654 is Envoy's version of this).
 */

import assert from "node:assert/strict";
import net from "node:net";
import { HbonePool } from "./pool.ts";
import { type HboneRequest, HboneServer } from "./server.ts";
import { CONNECTION_PREFACE, encodeHeaders, encodeSettings } from "../h2/frame.ts";
import { HpackEncoder } from "../h2/hpack.ts";
import { parseCertificates } from "../../certs/x509.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const pki = await TestPki.create();
const serverCreds = await pki.credentials("default/server");

/** Preface, SETTINGS and one CONNECT: what a client sends to open a tunnel. */
function connectBytes(): Uint8Array {
  const headers = new HpackEncoder().encode([[":method", "CONNECT"], [":authority", "10.0.2.9:8080"]]);
  const parts = [CONNECTION_PREFACE, encodeSettings([]), encodeHeaders(1, headers, false, 16_384)];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

async function hboneServer() {
  const requests: HboneRequest[] = [];
  const rejected: string[] = [];
  const server = new HboneServer({
    credentials: serverCreds,
    trustDomain: "cluster.local",
    onRequest: (req) => {
      requests.push(req);
      req.stream.respond([[":status", "200"]]);
    },
    onRejected: (_remote, reason) => rejected.push(reason.message),
  });
  const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
  return { server, port, requests, rejected, [Symbol.asyncDispose]: () => server.close() };
}

/**
 * Runs `openssl s_client` against `port`, writes a CONNECT once the handshake is done, and waits until `settled()`
 * or 3 s. Returns s_client's report ("New" or "Reused").
 */
async function sClient(port: number, args: string[], settled: () => boolean): Promise<string> {
  const child = new Deno.Command("openssl", {
    args: ["s_client", "-connect", `127.0.0.1:${port}`, "-tls1_3", "-alpn", "h2", "-nocommands", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(connectBytes()).catch(() => {});
  for (let waited = 0; waited < 3000 && !settled(); waited += 50) await new Promise((r) => setTimeout(r, 50));
  await writer.close().catch(() => {});
  const timer = setTimeout(() => child.kill(), 2000);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout);
  return text.match(/^(New|Reused), TLSv1\.3/m)?.[1] ?? `no session (${new TextDecoder().decode(out.stderr).trim()})`;
}

Deno.test("HBONE server refuses a resumed TLS session, before any byte", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-resume-" });
  try {
    // A certificate that expires a few seconds from now: its session must not outlive it, nor serve without it.
    const client = await pki.credentials("default/client", { ttlMs: 2_500 });
    await Deno.writeTextFile(`${dir}/cert.pem`, client.chainPem);
    await Deno.writeTextFile(`${dir}/key.pem`, client.keyPem);
    await Deno.writeTextFile(`${dir}/roots.pem`, client.rootsPem);
    await using f = await hboneServer();
    const session = `${dir}/session.pem`;

    await t.step("a full handshake with a valid client certificate is served", async () => {
      const got = await sClient(
        f.port,
        ["-cert", `${dir}/cert.pem`, "-key", `${dir}/key.pem`, "-CAfile", `${dir}/roots.pem`, "-sess_out", session],
        () => f.requests.length > 0,
      );
      assert.equal(got, "New");
      assert.equal(f.requests.length, 1);
      assert.equal(f.requests[0].peer.toString(), pki.id("default/client"));
      assert.ok((await Deno.stat(session)).size > 0, "openssl saved the session");
    });

    await t.step("resuming that session with no certificate is not served", async () => {
      const before = f.rejected.length;
      const got = await sClient(
        f.port,
        ["-CAfile", `${dir}/roots.pem`, "-sess_in", session],
        () => f.requests.length > 1 || f.rejected.length > before,
      );
      assert.equal(f.requests.length, 1, `a resumed session (${got}) was served as ${f.requests[1]?.peer}`);
      assert.match(f.rejected.slice(before).join("\n"), /resumed a TLS session/);
    });

    await t.step("resuming it after the certificate expired is not served either", async () => {
      const notAfter = parseCertificates(client.chainPem, "the client certificate")[0].notAfter;
      await new Promise((r) => setTimeout(r, Math.max(0, notAfter.getTime() - Date.now() + 200)));
      const before = f.rejected.length;
      const got = await sClient(
        f.port,
        ["-CAfile", `${dir}/roots.pem`, "-sess_in", session],
        () => f.requests.length > 1 || f.rejected.length > before,
      );
      assert.equal(f.requests.length, 1, `a resumed session (${got}) of an expired certificate was served`);
      assert.match(f.rejected.slice(before).join("\n"), /resumed a TLS session/);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("HBONE clients never resume: every pooled connection is a full handshake", async () => {
  await using f = await hboneServer();
  const client = await pki.credentials("default/client");
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(client),
    dial: (dst) =>
      new Promise((resolve, reject) => {
        const s = net.connect(dst.port, dst.ip);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      }),
  });
  try {
    // Three keys, three connections to one server, one after the other: a client that kept sessions would offer
    // one on the second and third, and the server refuses those.
    for (const sa of ["a", "b", "c"]) {
      const stream = await pool.connect(
        {
          srcIdentity: pki.id(`default/${sa}`),
          dstIdentities: [pki.id("default/server")],
          dst: { ip: "127.0.0.1", port: f.port },
          srcIp: "127.0.0.1",
        },
        "10.0.2.9:80",
        [],
      );
      stream.destroy();
    }
    assert.equal(pool.connectionsOpened, 3);
    assert.equal(f.requests.length, 3);
    assert.deepEqual(f.rejected, []);
  } finally {
    await pool.close();
  }
});
