/**
 * `skiff ztunnel` end to end, in network namespaces: two nodes, real ztunnel processes (one per node), the in-pod
 * rules of cni/redirect_linux.ts, and apps in pods. The node agent is played by the test (tests/harness/agent.ts),
 * which scripts each handoff message; tests/cni_test.ts runs the real agent.
 */

import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport, transparentConnect } from "../dataplane/sockets_linux.ts";
import { H2Connection } from "../dataplane/h2/connection.ts";
import { clientTlsOptions } from "../dataplane/hbone/tls.ts";
import { certificatesToPem } from "../certs/x509.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call as callIn, dialFrom, listenIn } from "./harness/tcp.ts";
import { echoApp, meshDir, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const VIP = "10.96.0.10";
const SVC = "echo.default.svc.cluster.local";
const uid = (p: Pod) => `Kubernetes//Pod/default/${p.name}`;
const sa = (who: string) => `cluster.local/ns/default/sa/${who}`;

function workload(p: Pod, opts: { captured: boolean; endpoint?: boolean }) {
  const services = opts.endpoint ? `\n    services: { "default/${SVC}": [{ servicePort: 80, targetPort: 8080 }] }` : "";
  return `  - uid: ${uid(p)}
    name: ${p.name}
    namespace: default
    serviceAccount: ${p.name}
    node: ${p.node.name}
    addresses: [${p.address}]
    tunnelProtocol: ${opts.captured ? "HBONE" : "NONE"}${services}`;
}

function denyPolicy(name: string, principal: string) {
  return `  - name: ${name}
    namespace: default
    scope: NAMESPACE
    action: DENY
    rules: [{ clauses: [{ matches: [{ principals: [{ exact: "${principal}" }] }] }] }]`;
}

/** Sends `message` from `from` (as its app would) and returns the reply, or "closed"/an error. */
const call = (from: Pod, ip: string, port: number, message: string, timeoutMs = 5000) =>
  callIn(from.netnsPath, ip, port, message, timeoutMs);

/** An app that reads until the client half-closes, then answers with the byte count and closes. */
function countApp(pod: Pod, port: number) {
  const listener = listenIn(pod.netnsPath, "0.0.0.0", port);
  const loop = (async () => {
    for await (const conn of listener) {
      let n = 0;
      const buf = new Uint8Array(65536);
      try {
        for (let r = await conn.read(buf); r !== null; r = await conn.read(buf)) n += r;
        await conn.write(new TextEncoder().encode(`got ${n}`));
      } catch { /* reset */ }
      conn.close();
    }
  })().catch(() => {});
  return {
    async [Symbol.asyncDispose]() {
      listener.close();
      await loop;
    },
  };
}

/** How a held connection ends: "closed", an error name, or "data" if it did not end within 5 s. */
async function ending(conn: Deno.TcpConn): Promise<string> {
  const timer = setTimeout(() => conn.close(), 5000);
  let how: string;
  try {
    how = (await conn.read(new Uint8Array(100))) === null ? "closed" : "data";
  } catch (error) {
    how = (error as Error).name;
  } finally {
    clearTimeout(timer);
  }
  try {
    conn.close();
  } catch { /* closed already */ }
  return how;
}

/** Sends a crafted HBONE request from an uncaptured pod straight to `target`:15008; returns the :status. */
async function craftedConnect(
  from: Pod,
  target: string,
  headers: [string, string][],
  creds: Parameters<typeof clientTlsOptions>[0],
  earlyData?: string,
): Promise<string> {
  const fd = await transparentConnect({
    netnsPath: from.netnsPath,
    source: from.address,
    target: { ip: target, port: 15008 },
  });
  const raw = new net.Socket({ fd, readable: true, writable: true });
  const socket = tls.connect(clientTlsOptions(creds, raw));
  await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
  const conn = new H2Connection(socket, { role: "client" });
  try {
    const stream = conn.request(headers);
    if (earlyData) stream.write(new TextEncoder().encode(earlyData));
    const response = await stream.response;
    return response.find(([n]) => n === ":status")![1];
  } finally {
    conn.destroy();
    await conn.closed;
    raw.destroy();
  }
}

netnsTest("ztunnel: captured traffic over HBONE, plaintext paths, services, policy, refusals, telemetry", async (t) => {
  await using cluster = await NetnsCluster.create("ztunnel", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const client = await cluster.addPod(nodeA, "client");
  const near = await cluster.addPod(nodeA, "near");
  const server = await cluster.addPod(nodeB, "server");
  const plain = await cluster.addPod(nodeB, "plain");
  for (const p of [client, near, server]) await installRedirect(p.netnsPath);

  await using mesh = await meshDir();
  const baseConfig = (policies: string[] = []) =>
    `workloads:
${workload(client, { captured: true })}
${workload(near, { captured: true, endpoint: true })}
${workload(server, { captured: true, endpoint: true })}
${workload(plain, { captured: false })}
services:
  - name: echo
    namespace: default
    hostname: ${SVC}
    addresses: [{ address: ${VIP} }]
    ports: [{ port: 80, targetPort: 8080 }]
policies:
${[denyPolicy("no-attacker", sa("attacker")), ...policies].join("\n")}
`;
  await Deno.writeTextFile(mesh.configFile, baseConfig());

  await using _serverApp = echoApp(server, 8080);
  await using _nearApp = echoApp(near, 8080);
  await using plainApp = echoApp(plain, 8080);
  const serverApp = _serverApp;
  const nearApp = _nearApp;

  await using zA = await ZtunnelProcess.start("node-a", mesh);
  await using zB = await ZtunnelProcess.start("node-b", mesh);
  for (const p of [client, near]) {
    assert.deepEqual(await zA.add(uid(p), p, { name: p.name, namespace: "default", serviceAccount: p.name }), {
      type: "ack",
    });
  }
  assert.deepEqual(await zA.snapshotSent(), { type: "ack" });
  assert.deepEqual(
    await zB.add(uid(server), server, { name: "server", namespace: "default", serviceAccount: "server" }),
    {
      type: "ack",
    },
  );
  assert.deepEqual(await zB.snapshotSent(), { type: "ack" });

  await t.step("captured client → captured server across nodes: HBONE, both identities, real client IP", async () => {
    assert.equal(await call(client, server.address, 8080, "hi"), "server:hi");
    assert.equal(serverApp.peers.at(-1), client.address, "the app sees the client pod's own address");
    const inbound = await zB.waitForLog((l) => l.msg === "connection complete" && l.direction === "inbound");
    assert.equal(inbound["src.identity"], `spiffe://${sa("client")}`);
    assert.equal(inbound["dst.identity"], `spiffe://${sa("server")}`);
    const outbound = await zA.waitForLog((l) => l.msg === "connection complete" && l.direction === "outbound");
    assert.equal(outbound["dst.identity"], `spiffe://${sa("server")}`);
    assert.equal(outbound["dst.addr"], `${server.address}:15008`);
    assert.equal(outbound["dst.hbone_addr"], `${server.address}:8080`);
  });

  await t.step("half-close crosses the tunnel both ways: the server answers after the client's FIN", async () => {
    await using _count = countApp(server, 9090);
    const conn = await dialFrom(client.netnsPath, server.address, 9090);
    try {
      const payload = new Uint8Array(3 * 1024 * 1024).fill(7);
      for (let off = 0; off < payload.byteLength;) off += await conn.write(payload.subarray(off));
      await conn.closeWrite();
      const buf = new Uint8Array(100);
      const n = await conn.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), `got ${payload.byteLength}`);
      assert.equal(await conn.read(buf), null, "then the server's FIN arrives");
    } finally {
      conn.close();
    }
  });

  await t.step("captured client → captured server on the same node", async () => {
    assert.equal(await call(client, near.address, 8080, "hey"), "near:hey");
    assert.equal(nearApp.peers.at(-1), client.address);
  });

  await t.step("uncaptured client → captured server through 15006, client IP kept", async () => {
    assert.equal(await call(plain, server.address, 8080, "plain"), "server:plain");
    assert.equal(serverApp.peers.at(-1), plain.address);
    await zB.waitForLog((l) => l.msg === "connection complete" && l.direction === "inbound" && !l["src.identity"]);
  });

  await t.step("captured client → uncaptured server in plaintext", async () => {
    assert.equal(await call(client, plain.address, 8080, "out"), "plain:out");
    assert.equal(plainApp.peers.at(-1), client.address);
    const line = await zA.waitForLog((l) =>
      l.msg === "connection complete" && l["dst.addr"] === `${plain.address}:8080`
    );
    assert.equal(line["dst.hbone_addr"], undefined, "no HBONE to an out-of-mesh workload");
  });

  await t.step("a service VIP spreads over both endpoints", async () => {
    const before = { server: serverApp.peers.length, near: nearApp.peers.length };
    for (let i = 0; i < 20; i++) assert.match(await call(client, VIP, 80, `v${i}`), /^(server|near):v\d+$/);
    assert.ok(serverApp.peers.length > before.server, "the remote endpoint got some");
    assert.ok(nearApp.peers.length > before.near, "the local endpoint got some");
  });

  const attacker = await mesh.ca.issue(SpiffeId.parse(`spiffe://${sa("attacker")}`));
  const attackerCreds = {
    identity: SpiffeId.parse(`spiffe://${sa("attacker")}`),
    chainPem: certificatesToPem(attacker.chain),
    keyPem: attacker.keyPem,
    rootsPem: certificatesToPem(attacker.roots),
  };
  const intruder = await mesh.ca.issue(SpiffeId.parse(`spiffe://${sa("intruder")}`));
  const intruderCreds = {
    ...attackerCreds,
    identity: SpiffeId.parse(`spiffe://${sa("intruder")}`),
    chainPem: certificatesToPem(intruder.chain),
    keyPem: intruder.keyPem,
  };

  await t.step("each inbound refusal, provoked by a crafted request", async (t) => {
    const connect = (authority: string): [string, string][] => [[":method", "CONNECT"], [":authority", authority]];
    const peersBefore = serverApp.peers.length;
    await t.step("not CONNECT → 400", async () => {
      const get: [string, string][] = [[":method", "GET"], [":scheme", "https"], [":path", "/"], [
        ":authority",
        `${server.address}:8080`,
      ]];
      assert.equal(await craftedConnect(plain, server.address, get, intruderCreds), "400");
    });
    await t.step("another pod's address → 400", async () => {
      assert.equal(await craftedConnect(plain, server.address, connect(`${near.address}:8080`), intruderCreds), "400");
    });
    await t.step("loopback → 400", async () => {
      assert.equal(await craftedConnect(plain, server.address, connect("127.0.0.1:22"), intruderCreds), "400");
    });
    await t.step("ztunnel's own port → 503", async () => {
      assert.equal(
        await craftedConnect(plain, server.address, connect(`${server.address}:15008`), intruderCreds),
        "503",
      );
    });
    await t.step("nothing listening → 503", async () => {
      assert.equal(await craftedConnect(plain, server.address, connect(`${server.address}:9`), intruderCreds), "503");
    });
    await t.step("denied by policy → 401, and early bytes never reach the app", async () => {
      const status = await craftedConnect(
        plain,
        server.address,
        connect(`${server.address}:8080`),
        attackerCreds,
        "sneak",
      );
      assert.equal(status, "401");
    });
    assert.equal(serverApp.peers.length, peersBefore, "no refused request reached the app");
    await t.step("allowed → 200", async () => {
      assert.equal(
        await craftedConnect(plain, server.address, connect(`${server.address}:8080`), intruderCreds),
        "200",
      );
    });
  });

  await t.step("a DENY policy refuses, and closes an established connection", async () => {
    const held = await dialFrom(client.netnsPath, server.address, 8080);
    await held.write(new TextEncoder().encode("before"));
    const buf = new Uint8Array(100);
    assert.equal(new TextDecoder().decode(buf.subarray(0, (await held.read(buf))!)), "server:before");
    await Deno.writeTextFile(mesh.configFile, baseConfig([denyPolicy("no-client", sa("client"))]));
    // Closed by whichever thread holds it (ztunnel serves on every core): its access line says why.
    await zB.waitForLog((l) =>
      l.msg === "connection complete" && l["src.workload"] === "client" &&
      String(l.error).startsWith("connection closed due to policy change")
    );
    assert.notEqual(await ending(held), "data");
    assert.notEqual(await call(client, server.address, 8080, "after"), "server:after");
    await Deno.writeTextFile(mesh.configFile, baseConfig());
    await zB.waitForLog((l) => l.msg === "local config reloaded" && Number(l.closed) === 0);
    assert.equal(await call(client, server.address, 8080, "again"), "server:again");
  });

  await t.step("metrics and /config_dump are served", async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${zB.ports.metrics}/metrics`)).text();
    const opened = metrics.split("\n").filter((l) => l.startsWith("istio_tcp_connections_opened_total{"));
    assert.ok(
      opened.some((l) =>
        l.includes('reporter="destination"') && l.includes(`source_principal="spiffe://${sa("client")}"`) &&
        l.includes('connection_security_policy="mutual_tls"')
      ),
      metrics,
    );
    assert.ok(opened.some((l) => l.includes('response_flags="DENY"')), "denied connections are counted");
    assert.match(metrics, /istio_tcp_received_bytes_total\{/);
    const dump = await (await fetch(`http://127.0.0.1:${zB.ports.admin}/config_dump`)).json();
    assert.equal(dump.workloads.length, 4);
    assert.ok(
      dump.certificates.some((c: { identity: string; state: string }) =>
        c.identity === `spiffe://${sa("server")}` && c.state === "available"
      ),
    );
    const ready = await fetch(`http://127.0.0.1:${zB.ports.readiness}/healthz/ready`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
  });

  await t.step("a pod removed mid-connection: its connections end, its listeners close", async () => {
    const held = await dialFrom(client.netnsPath, server.address, 8080);
    await held.write(new TextEncoder().encode("x"));
    const buf = new Uint8Array(100);
    assert.ok((await held.read(buf))! > 0);
    assert.deepEqual(await zB.del(uid(server)), { type: "ack" });
    assert.notEqual(await ending(held), "data");
    assert.notEqual(await call(client, server.address, 8080, "gone", 2000), "server:gone");
    await zB.waitForLog((l) => String(l.msg).startsWith("pod removed"));
  });
});
