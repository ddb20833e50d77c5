/**
 * Rapid reset spread over many HBONE connections, against a real `skiff ztunnel` in network namespaces. Each
 * connection stays under the codec's per-connection limit (250 early resets of 500), so only a bound across one
 * peer identity's connections (`dataplane/proxy/dial_guard.ts`) keeps ztunnel from dialling the app once per
 * reset stream. The app is a TCP listener that counts what reaches it; the test asserts on that count.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport, transparentConnect } from "../dataplane/sockets_linux.ts";
import { encodeHeaders, encodeRstStream, ErrorCode, FrameType } from "../dataplane/h2/frame.ts";
import { H2Connection } from "../dataplane/h2/connection.ts";
import { clientTlsOptions } from "../dataplane/hbone/tls.ts";
import { DIAL_LIMITS } from "../dataplane/proxy/dial_guard.ts";
import { certificatesToPem } from "../certs/x509.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { listenIn } from "./harness/tcp.ts";
import { RawPeer } from "./harness/h2peer.ts";
import { meshDir, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const APP_PORT = 8080;
const CONNECTIONS = 20;
/** Early resets per connection: under the codec's 250, so no single connection is closed for it. */
const RESETS = 240;

/** A TCP app that counts the connections it accepts and closes each at once. */
function countingApp(pod: Pod, port: number) {
  const listener = listenIn(pod.netnsPath, "0.0.0.0", port);
  const app = { accepted: 0 };
  const loop = (async () => {
    for await (const conn of listener) {
      app.accepted++;
      conn.close();
    }
  })().catch(() => {});
  return Object.assign(app, {
    async [Symbol.asyncDispose]() {
      listener.close();
      await loop;
    },
  });
}

type Creds = Parameters<typeof clientTlsOptions>[0];

/** A TLS connection from `from` straight to `target`:15008 with `creds`, past the in-pod rules. */
async function hboneSocket(from: Pod, target: string, creds: Creds): Promise<tls.TLSSocket> {
  const fd = await transparentConnect({
    netnsPath: from.netnsPath,
    source: from.address,
    target: { ip: target, port: 15008 },
  });
  const raw = new net.Socket({ fd, readable: true, writable: true });
  const socket = tls.connect(clientTlsOptions(creds, raw));
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  return socket;
}

/** One CONNECT with `creds`; returns the :status. */
async function connectStatus(from: Pod, target: string, creds: Creds): Promise<string> {
  const socket = await hboneSocket(from, target, creds);
  const conn = new H2Connection(socket, { role: "client" });
  try {
    const stream = conn.request([[":method", "CONNECT"], [":authority", `${target}:${APP_PORT}`]]);
    const response = await stream.response;
    return response.find(([n]) => n === ":status")![1];
  } finally {
    conn.destroy();
    await conn.closed;
  }
}

/** The count once it has not moved for `quietMs` (at most `maxMs`). */
async function settled(read: () => number, quietMs = 1_000, maxMs = 15_000): Promise<number> {
  const deadline = Date.now() + maxMs;
  let last = read();
  let since = Date.now();
  while (Date.now() < deadline && Date.now() - since < quietMs) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    if (read() !== last) [last, since] = [read(), Date.now()];
  }
  return last;
}

async function rssMiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

netnsTest(
  "ztunnel: rapid reset over many connections of one identity dials the app a bounded number of times",
  async () => {
    await using cluster = await NetnsCluster.create("dialflood", { nodes: 1 });
    const [node] = cluster.nodes;
    const server = await cluster.addPod(node, "server");
    const attackerPod = await cluster.addPod(node, "attacker");
    await installRedirect(server.netnsPath);

    await using mesh = await meshDir();
    await Deno.writeTextFile(
      mesh.configFile,
      `workloads:
  - uid: Kubernetes//Pod/default/server
    name: server
    namespace: default
    serviceAccount: server
    node: ${node.name}
    addresses: [${server.address}]
    tunnelProtocol: HBONE
policies: []
`,
    );
    await using app = countingApp(server, APP_PORT);
    await using z = await ZtunnelProcess.start("dialflood", mesh);
    await z.enroll(server, "default");

    const creds = async (who: string): Promise<Creds> => {
      const identity = SpiffeId.parse(`spiffe://cluster.local/ns/default/sa/${who}`);
      const issued = await mesh.ca.issue(identity);
      return {
        identity,
        chainPem: certificatesToPem(issued.chain),
        keyPem: issued.keyPem,
        rootsPem: certificatesToPem(issued.roots),
      };
    };
    const attacker = await creds("attacker");
    const bystander = await creds("bystander");

    assert.equal(await connectStatus(attackerPod, server.address, bystander), "200", "the path works");
    const baseline = { accepted: await settled(() => app.accepted), rss: await rssMiB(z.pid) };

    // All connections first, then every burst at once: HEADERS + RST_STREAM(CANCEL), 240 times per connection.
    const peers = await Promise.all(
      Array.from({ length: CONNECTIONS }, async () => {
        const peer = new RawPeer(await hboneSocket(attackerPod, server.address, attacker), "client");
        peer.settings();
        return peer;
      }),
    );
    const authority: [string, string][] = [[":method", "CONNECT"], [":authority", `${server.address}:${APP_PORT}`]];
    for (const peer of peers) {
      const frames: Uint8Array[] = [];
      for (let id = 1; id < 2 * RESETS; id += 2) {
        frames.push(encodeHeaders(id, peer.encoder.encode(authority), false, 16_384));
        frames.push(encodeRstStream(id, ErrorCode.CANCEL));
      }
      const burst = new Uint8Array(frames.reduce((n, f) => n + f.byteLength, 0));
      frames.reduce((at, f) => (burst.set(f, at), at + f.byteLength), 0);
      peer.write(burst);
    }
    const dials = (await settled(() => app.accepted)) - baseline.accepted;
    const goaways = peers.filter((p) => p.frames.some((f) => f.type === FrameType.GOAWAY)).length;
    await Promise.all(peers.map((p) => p.close()));
    // For the record only: V8 gives its heap back some 30 s later, so RSS is not asserted on here (by hand, before
    // the bound: 89.6 MiB → 239.6 → 110.4 after 60 s; with it: 91.7 → 149.8 → 99.8).
    console.log(
      `${CONNECTIONS} connections × ${RESETS} early resets: ${dials} dials reached the app, ${goaways} GOAWAYs; ` +
        `ztunnel RSS ${baseline.rss.toFixed(1)} MiB before, ${(await rssMiB(z.pid)).toFixed(1)} right after`,
    );

    const bound = DIAL_LIMITS.pendingPerIdentity + DIAL_LIMITS.cancelledPerWindow;
    assert.ok(
      dials <= bound,
      `${CONNECTIONS * RESETS} streams reset early by one identity made ztunnel dial the app ${dials} times ` +
        `(bound ${bound})`,
    );
    // The identity that flooded is refused for the rest of the window; another identity is served as before.
    assert.equal(await connectStatus(attackerPod, server.address, attacker), "503");
    assert.equal(await connectStatus(attackerPod, server.address, bystander), "200");
    const refused = await z.waitForLog((l) =>
      l.msg === "connection complete" && l["src.identity"] === attacker.identity.toString() &&
      /cancelled by the client/.test(String(l.error))
    );
    assert.match(String(refused.error), /^too many dials for spiffe:\/\/cluster.local\/ns\/default\/sa\/attacker: /);
  },
);
