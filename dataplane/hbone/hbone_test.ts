import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { HboneError, HbonePool, type PoolKey } from "./pool.ts";
import { type HboneRequest, HboneServer } from "./server.ts";
import type { WorkloadCredentials } from "./tls.ts";
import type { H2Stream } from "../h2/stream.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const pki = await TestPki.create();
const client = await pki.credentials("default/client");
const server = await pki.credentials("default/server");

interface Fixture {
  server: HboneServer;
  port: number;
  requests: HboneRequest[];
  rejected: Error[];
  pool: HbonePool;
  key: PoolKey;
  [Symbol.asyncDispose](): Promise<void>;
}

/** An HBONE server on loopback that answers 200 and echoes, and a pool whose dials reach it. */
async function fixture(
  opts: {
    serverCreds?: WorkloadCredentials;
    clientCreds?: WorkloadCredentials;
    expect?: string[];
    status?: string;
    pool?: ConstructorParameters<typeof HbonePool>[1];
    handshakeTimeoutMs?: number;
  } = {},
): Promise<Fixture> {
  const requests: HboneRequest[] = [];
  const rejected: Error[] = [];
  const hbone = new HboneServer({
    credentials: opts.serverCreds ?? server,
    trustDomain: "cluster.local",
    handshakeTimeoutMs: opts.handshakeTimeoutMs,
    onRequest: (req) => {
      requests.push(req);
      req.stream.respond([[":status", opts.status ?? "200"]], { endStream: (opts.status ?? "200") !== "200" });
      if ((opts.status ?? "200") === "200") req.stream.pipe(req.stream);
    },
    onRejected: (_remote, reason) => rejected.push(reason),
  });
  const { port } = await hbone.listen({ host: "127.0.0.1", port: 0 });
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(opts.clientCreds ?? client),
    dial: (dst) =>
      new Promise((resolve, reject) => {
        const s = net.connect(dst.port, dst.ip);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      }),
  }, opts.pool);
  const key: PoolKey = {
    srcIdentity: pki.id("default/client"),
    dstIdentities: opts.expect ?? [pki.id("default/server")],
    dst: { ip: "127.0.0.1", port },
    srcIp: "127.0.0.1",
  };
  return {
    server: hbone,
    port,
    requests,
    rejected,
    pool,
    key,
    async [Symbol.asyncDispose]() {
      await pool.close();
      await hbone.close();
    },
  };
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

const forwarded: [string, string][] = [["forwarded", 'for="10.0.1.5:40000"']];

Deno.test("HBONE carries a CONNECT tunnel over mTLS, each side seeing the other's SPIFFE identity", async () => {
  await using f = await fixture();
  const stream = await f.pool.connect(f.key, "10.0.2.9:8080", forwarded);
  assert.equal(await exchange(stream, "hello over HBONE"), "hello over HBONE");
  const req = f.requests[0];
  assert.equal(req.peer.toString(), pki.id("default/client"));
  assert.deepEqual(req.headers, [[":method", "CONNECT"], [":authority", "10.0.2.9:8080"], ...forwarded]);
  assert.equal(req.local.port, f.port);
});

Deno.test("HBONE pools: tunnels with one key share a connection, up to 100 streams each", async () => {
  await using f = await fixture({ pool: { maxStreamsPerConnection: 100 } });
  const streams = await Promise.all(Array.from({ length: 150 }, () => f.pool.connect(f.key, "10.0.2.9:80", [])));
  assert.equal(f.pool.connectionsOpened, 2, "150 concurrent tunnels need two connections, and only two");
  assert.deepEqual(f.pool.stats(), { connections: 2, streams: 150 });
  await Promise.all(streams.map((s, i) => exchange(s, `n${i}`)));
  const again = await f.pool.connect(f.key, "10.0.2.9:80", []);
  await exchange(again, "x");
  assert.equal(f.pool.connectionsOpened, 2, "a finished tunnel leaves its connection for the next one");
  // Another source identity never shares.
  const other = await f.pool.connect({ ...f.key, srcIdentity: pki.id("default/other") }, "10.0.2.9:80", []);
  await exchange(other, "y");
  assert.equal(f.pool.connectionsOpened, 3);
});

Deno.test("HBONE refuses a server whose identity is not the one expected, before sending anything", async () => {
  await using f = await fixture({ expect: [pki.id("default/someone-else")] });
  await assert.rejects(f.pool.connect(f.key, "10.0.2.9:80", []), (e: HboneError) => {
    assert.equal(e.code, "IDENTITY");
    assert.match(e.message, /presented spiffe:\/\/cluster.local\/ns\/default\/sa\/server, expected/);
    return true;
  });
  assert.equal(f.requests.length, 0);
});

Deno.test("HBONE accepts any one of several expected identities", async () => {
  await using f = await fixture({ expect: [pki.id("default/a"), pki.id("default/server")] });
  assert.equal(await exchange(await f.pool.connect(f.key, "10.0.2.9:80", []), "ok"), "ok");
});

Deno.test("HBONE server refuses a client certificate from a foreign root or another trust domain", async (t) => {
  const foreign = await (await TestPki.create()).credentials("default/client");
  const otherDomain = await (await TestPki.create("evil.example")).credentials("default/client");
  for (const [name, creds] of [["foreign root", foreign], ["other trust domain", otherDomain]] as const) {
    await t.step(name, async () => {
      await using f = await fixture({ clientCreds: creds });
      await assert.rejects(f.pool.connect(f.key, "10.0.2.9:80", []), HboneError);
      assert.equal(f.requests.length, 0, "no request reached the server");
    });
  }
  await t.step("a client certificate from our root in another trust domain", async () => {
    const ours = await TestPki.create("cluster.local");
    const serverCreds = await ours.credentials("default/server");
    // Same root signs a workload of another trust domain: the chain verifies, the trust domain does not.
    const stranger = await ours.credentials("spiffe://other.domain/ns/default/sa/client");
    await using f = await fixture({ serverCreds, clientCreds: stranger });
    await assert.rejects(f.pool.connect(f.key, "10.0.2.9:80", []), HboneError);
    assert.equal(f.requests.length, 0);
    assert.match(String(f.rejected[0]), /not in trust domain cluster.local/);
  });
});

Deno.test("HBONE treats any status but 200 as a failed tunnel", async () => {
  await using f = await fixture({ status: "401" });
  await assert.rejects(f.pool.connect(f.key, "10.0.2.9:80", []), (e: HboneError) => {
    assert.equal(e.code, "HTTP_STATUS");
    assert.equal(e.status, 401);
    return true;
  });
});

Deno.test("HBONE pool never reuses a connection after GOAWAY, and releases idle ones", async () => {
  await using f = await fixture({ pool: { idleTimeoutMs: 100 } });
  await exchange(await f.pool.connect(f.key, "10.0.2.9:80", []), "a");
  assert.equal(f.pool.stats().connections, 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(f.pool.stats().connections, 0, "the idle connection was released");
  const held = await f.pool.connect(f.key, "10.0.2.9:80", []);
  await f.server.close(); // GOAWAY to every connection, then close
  await assert.rejects(f.pool.connect(f.key, "10.0.2.9:80", []), HboneError);
  assert.ok(held.destroyed || held.readableEnded);
});

Deno.test("HBONE server drops a peer that never finishes its TLS handshake", async () => {
  await using f = await fixture({ handshakeTimeoutMs: 200 });
  const socket = net.connect(f.port, "127.0.0.1");
  const closedAt = await new Promise<number>((resolve) => {
    socket.on("error", () => {});
    socket.once("close", () => resolve(Date.now()));
    socket.write(new Uint8Array([0x16, 0x03, 0x01])); // the start of a ClientHello, and nothing more
  });
  assert.ok(closedAt > 0);
  assert.equal(f.requests.length, 0);
});

Deno.test("HBONE server speaks only TLS 1.3 with AES-GCM suites and ALPN h2", async (t) => {
  await using f = await fixture();
  const attempt = (extra: tls.ConnectionOptions) =>
    new Promise<string>((resolve) => {
      const s = tls.connect({
        host: "127.0.0.1",
        port: f.port,
        key: client.keyPem,
        cert: client.chainPem,
        ca: client.rootsPem,
        ALPNProtocols: ["h2"],
        checkServerIdentity: () => undefined,
        ...extra,
      });
      s.once("secureConnect", () => {
        const got = `${s.getProtocol()} ${s.getCipher()?.name} ${s.alpnProtocol}`;
        s.destroy();
        resolve(got);
      });
      s.once("error", (e) => resolve(`refused: ${e.message}`));
    });
  await t.step("a standard client gets TLS 1.3, AES-GCM and h2", async () => {
    assert.match(await attempt({}), /^TLSv1\.3 TLS_AES_(256_GCM_SHA384|128_GCM_SHA256) h2$/);
  });
  await t.step("TLS 1.2 is refused", async () => {
    assert.match(await attempt({ maxVersion: "TLSv1.2", minVersion: "TLSv1.2" }), /^refused/);
  });
  // Deno's node:tls ignores `ciphers` on both sides, so openssl offers the suite and the server must refuse the
  // connection after the handshake.
  for (const [suite, refused] of [["TLS_CHACHA20_POLY1305_SHA256", true], ["TLS_AES_128_GCM_SHA256", false]] as const) {
    await t.step(`openssl offering only ${suite} is ${refused ? "refused" : "served"}`, async () => {
      const dir = await Deno.makeTempDir();
      try {
        await Deno.writeTextFile(`${dir}/c.pem`, client.chainPem);
        await Deno.writeTextFile(`${dir}/k.pem`, client.keyPem);
        const before = f.rejected.length;
        const out = await new Deno.Command("openssl", {
          args: ["s_client", "-connect", `127.0.0.1:${f.port}`, "-tls1_3", "-ciphersuites", suite, "-alpn", "h2"]
            .concat(["-cert", `${dir}/c.pem`, "-key", `${dir}/k.pem`]),
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.match(new TextDecoder().decode(out.stdout), new RegExp(`Cipher is ${suite}`));
        await new Promise((r) => setTimeout(r, 100));
        const reasons = f.rejected.slice(before).map(String);
        if (refused) assert.ok(reasons.some((r) => /not TLS 1.3 with an AES-GCM suite/.test(r)), reasons.join());
        else assert.deepEqual(reasons, []);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});
