import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { HboneError, HbonePool, type PoolKey } from "./pool.ts";
import { serverTlsOptions } from "./tls.ts";
import { FrameType } from "../h2/frame.ts";
import { RawPeer } from "../../tests/harness/h2peer.ts";
import { TestPki } from "../../tests/harness/pki.ts";

const pki = await TestPki.create();
const client = await pki.credentials("default/client");
const server = await pki.credentials("default/server");

/**
 * A peer that completes mTLS and the HTTP/2 preface and SETTINGS, then never answers a CONNECT's HEADERS: the
 * pool must give up after its connect timeout instead of waiting forever.
 */
Deno.test("HbonePool gives up on a CONNECT nobody answers after the connect timeout, and resets the stream", async () => {
  const peers: RawPeer[] = [];
  const listener = tls.createServer(serverTlsOptions(server), (socket) => {
    const peer = new RawPeer(socket, "server");
    peer.settings();
    peers.push(peer);
  });
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const port = (listener.address() as net.AddressInfo).port;
  const pool = new HbonePool({
    trustDomain: "cluster.local",
    credentials: () => Promise.resolve(client),
    dial: (dst) =>
      new Promise((resolve, reject) => {
        const s = net.connect(dst.port, dst.ip);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      }),
  }, { connectTimeoutMs: 300 });
  const key: PoolKey = {
    srcIdentity: pki.id("default/client"),
    dstIdentities: [pki.id("default/server")],
    dst: { ip: "127.0.0.1", port },
    srcIp: "127.0.0.1",
  };
  try {
    const started = performance.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      pool.connect(key, "10.0.2.9:8080", []).then(() => "answered", (e: HboneError) => e),
      new Promise((resolve) => timer = setTimeout(() => resolve("still waiting after 3 s"), 3_000)),
    ]);
    clearTimeout(timer);
    assert.ok(outcome instanceof HboneError, `expected an HboneError, got ${String(outcome)}`);
    assert.equal(outcome.code, "TIMEOUT");
    assert.match(outcome.message, /no answer to CONNECT 10\.0\.2\.9:8080 from 127\.0\.0\.1 within 300 ms/);
    assert.ok(performance.now() - started < 2_000, "gave up at about the connect timeout");
    // The stream is reset (CANCEL), so the peer may forget it too.
    const rst = await peers[0].waitFor((f) => f.type === FrameType.RST_STREAM, 2_000);
    assert.ok(rst, "the abandoned CONNECT stream is reset");
    assert.deepEqual(pool.stats().streams, 0);
  } finally {
    await pool.close();
    for (const p of peers) await p.close();
    await new Promise((resolve) => listener.close(resolve));
  }
});
