/**
 * The control plane end to end, in network namespaces: a real `skiff control` process reading a manifests
 * directory, two real ztunnel processes taking their config from its stream and their certificates from its CA
 * service with node tokens, and pods declared by manifests. The node agent is played by the test here (it
 * reports redirection to the control plane and hands pods to ztunnel), so each step is the control plane's
 * alone; tests/cni_test.ts runs the real agent. The node-pods stream a node agent follows is tested on loopback
 * alone, with fetch as any HTTPS client.
 */

import assert from "node:assert/strict";
import { requestCertificate } from "../certs/ca_client.ts";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { ControlConnection, ControlError } from "../mesh/control_client.ts";
import { SpiffeId } from "../mesh/identity.ts";
import { PING_INTERVAL_MS, REGISTRATIONS_PATH } from "../mesh/protocol/config_stream.ts";
import { NODE_PODS_PATH } from "../mesh/protocol/node_pods.ts";
import { ControlProcess } from "./harness/control.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call as callIn, dialFrom, roundTrip } from "./harness/tcp.ts";
import { echoApp, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

const VIP = "10.96.7.7";

const pod = (p: Pod) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: shop, labels: { app: ${p.name} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${p.name} }
status: { podIP: ${p.address}, phase: Running }
---
`;

const denyClient = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-client, namespace: shop }
spec:
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/client] } }] }]
`;

/** Opens a connection from `from` to ip:port and checks one echo; returns the open connection. */
async function open(from: Pod, ip: string, port: number): Promise<Deno.TcpConn> {
  const conn = await dialFrom(from.netnsPath, ip, port);
  await roundTrip(conn, "hello");
  return conn;
}

/** One call from pod `from`. */
const call = (from: Pod, ip: string, port: number, message: string) => callIn(from.netnsPath, ip, port, message);

/** Polls `fn` until its answer passes `ok`; returns how long it took, or throws after `timeoutMs`. */
async function until(fn: () => Promise<string>, ok: (answer: string) => boolean, timeoutMs: number): Promise<number> {
  const started = Date.now();
  let last = "";
  while (Date.now() - started < timeoutMs) {
    last = await fn();
    if (ok(last)) return Date.now() - started;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`still ${JSON.stringify(last)} after ${timeoutMs} ms`);
}

netnsTest("control plane: manifests → stream → two ztunnels, CA with node scope, crash and resume", async (t) => {
  await using cluster = await NetnsCluster.create("control", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const client = await cluster.addPod(nodeA, "client");
  const server = await cluster.addPod(nodeB, "server");
  for (const p of [client, server]) await installRedirect(p.netnsPath);
  await using _app = echoApp(server, 8080);

  await using control = await ControlProcess.start({
    "shop.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
${pod(client)}${pod(server)}apiVersion: v1
kind: Service
metadata: { name: echo, namespace: shop }
spec: { clusterIP: ${VIP}, selector: { app: server }, ports: [{ port: 80, targetPort: 8080 }] }
`,
  });
  const tokenA = await control.addNode(nodeA.name);
  const tokenB = await control.addNode(nodeB.name);
  const caFile = (token: string) => token.replace(/token$/, "root-cert.pem");

  // The test plays each node's agent: report the pods as redirected, then hand them to ztunnel.
  for (const [token, node, p] of [[tokenA, nodeA, client], [tokenB, nodeB, server]] as const) {
    assert.deepEqual(
      await control.reportRedirected(token, "shop", [p]),
      { accepted: 1 },
      `registration of ${node.name}`,
    );
  }
  await using zA = await ZtunnelProcess.start(nodeA.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: tokenA,
  });
  await using zB = await ZtunnelProcess.start(nodeB.name, {
    dir: control.dir,
    control: control.url,
    tokenFile: tokenB,
  });
  // Each ztunnel fetches its node's identities as soon as the config names them, before any pod is handed over.
  const prefetched = await zA.waitForLog((l) => l.msg === "node's certificates updated");
  assert.deepEqual(prefetched.prefetch, ["spiffe://cluster.local/ns/shop/sa/client"]);
  await zA.enroll(client, "shop");
  await zB.enroll(server, "shop");
  for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));

  await t.step("HBONE flows through the service VIP with identities the CA service issued", async () => {
    assert.equal(await call(client, VIP, 80, "hi"), "server:hi");
    const inbound = await zB.waitForLog((l) => l.msg === "connection complete" && l.direction === "inbound");
    assert.equal(inbound["src.identity"], "spiffe://cluster.local/ns/shop/sa/client");
    assert.equal(inbound["dst.identity"], "spiffe://cluster.local/ns/shop/sa/server");
    const issued = control.process.lines.filter((l) => l.msg === "certificate issued").map((l) => [l.node, l.identity]);
    assert.deepEqual(issued.sort(), [
      [nodeA.name, "spiffe://cluster.local/ns/shop/sa/client"],
      [nodeB.name, "spiffe://cluster.local/ns/shop/sa/server"],
    ]);
  });

  await t.step("a node asking for an identity that is not on it is refused, opaquely; the log says why", async () => {
    const conn = new ControlConnection({ url: control.url, tokenFile: tokenA, caFile: caFile(tokenA) });
    const err = await requestCertificate(conn, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/server"), 3_600_000)
      .then(() => undefined, (e) => e);
    conn.close();
    assert.ok(err instanceof ControlError && err.status === 403, String(err));
    assert.match(err.message, /request impersonation authentication failure$/);
    const line = await control.process.waitForLog((l) => l.msg === "certificate refused");
    assert.equal(line.node, nodeA.name);
    assert.match(String(line.reason), /no workload with namespace shop and service account server runs on node/);
  });

  await t.step("a wrong token gets a 401 that says why, and the control plane logs it", async () => {
    const bad = `${control.dir}/bad-token`;
    await Deno.writeTextFile(bad, "not-a-token");
    const conn = new ControlConnection({ url: control.url, tokenFile: bad, caFile: caFile(tokenA) });
    const err = await conn.request("PUT", REGISTRATIONS_PATH, { pods: [] }).then(() => undefined, (e) => e);
    conn.close();
    assert.ok(err instanceof ControlError && err.status === 401);
    assert.match(err.message, /refused our node token: the node token is not valid for this control plane/);
    await control.process.waitForLog((l) => l.msg === "request refused: 401");
  });

  await t.step("a policy dropped into the manifests directory is enforced within a second", async () => {
    const before = control.process.lines.length;
    await control.writeManifest("deny.yaml", denyClient);
    // Timing is the benchmark's to measure; here the bound only keeps a broken push from passing.
    const took = await until(() => call(client, VIP, 80, "x"), (a) => a !== "server:x", 5_000);
    console.log(`policy enforced ${took} ms after the file was written`);
    await control.process.waitForLog((l) => l.msg === "pushed", 5_000, before);
    await zB.waitForLog((l) =>
      l.msg === "connection complete" && l.error !== undefined && /DENY|policy/i.test(JSON.stringify(l))
    );
    await control.writeManifest("deny.yaml", "# nothing denied\n");
    await until(() => call(client, VIP, 80, "x"), (a) => a === "server:x", 5_000);
  });

  await t.step("a broken manifest is reported with its line and changes nothing else", async () => {
    const { version } = await control.status();
    await control.writeManifest(
      "broken.yaml",
      `apiVersion: v1
kind: Service
metadata: { name: broken, namespace: shop }
spec:
  ports:
    - port: 99999
`,
    );
    let problems: string[] = [];
    for (let i = 0; i < 50 && problems.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      problems = (await control.status()).problems.map((p) => p.text);
    }
    assert.deepEqual(problems, [
      `${control.manifests}/broken.yaml:6: spec.ports[0].port: expected an integer from 1 to 65535, got 99999`,
    ]);
    assert.equal((await control.status()).version, version, "nothing was pushed");
    assert.equal(await call(client, VIP, 80, "still"), "server:still");
    await control.process.waitForLog((l) => l.msg === "manifest rejected; the last good version stays in force");
  });

  await t.step("with the control plane killed, open and new connections keep working", async () => {
    const held = await open(client, VIP, 80);
    await control.kill();
    assert.equal(await roundTrip(held, "after"), "server:after");
    held.close();
    assert.equal(await call(client, VIP, 80, "new"), "server:new");
    assert.equal(await call(client, server.address, 8080, "direct"), "server:direct");
    await zA.waitForLog((l) => String(l.msg).includes("keeping the last config"));
  });

  await t.step("restarted, it resumes each ztunnel without resending what did not change", async () => {
    await control.restart();
    for (const node of [nodeA.name, nodeB.name]) {
      const line = await control.process.waitForLog((l) => l.msg === "client subscribed" && l.node === node, 20_000);
      assert.equal(line.sent, 0, `${node} was sent nothing again`);
      assert.ok(Number(line.unchanged) >= 3, `${node} kept ${line.unchanged} resources`);
    }
    assert.equal(await call(client, VIP, 80, "back"), "server:back");
  });

  await t.step(
    "a revoked node is refused with a clear 401 in ztunnel's log, and keeps serving what it has",
    async () => {
      await control.removeNode(nodeA.name);
      await control.restart(); // ends the open streams; a running control plane ends them at the next ping
      const line = await zA.waitForLog((l) => String(l.msg).includes("refused our node token"), 20_000);
      assert.match(String(line.msg), new RegExp(`the node token of ${nodeA.name} was revoked`));
      assert.equal(line.level, 50, "logged as an error");
      assert.equal(await call(client, VIP, 80, "revoked"), "server:revoked");
    },
  );
});

/** A node-pods stream opened with fetch, as any HTTPS client would, read a line at a time. */
async function openNodePods(url: string, tokenFile: string, opts: { token?: string; body?: string } = {}) {
  const root = await Deno.readTextFile(tokenFile.replace(/token$/, "root-cert.pem"));
  const client = Deno.createHttpClient({ caCerts: [root] });
  const token = opts.token ?? (await Deno.readTextFile(tokenFile)).trim();
  const response = await fetch(new URL(NODE_PODS_PATH, url), {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
    body: opts.body ?? "{}",
    client,
  });
  const lines = response.ok ? response.body!.pipeThrough(new TextDecoderStream())[Symbol.asyncIterator]() : undefined;
  let buffer = "";
  return {
    response,
    /** The next message, within `timeoutMs`. */
    async next(timeoutMs = 10_000): Promise<Record<string, unknown>> {
      const deadline = Date.now() + timeoutMs;
      while (!buffer.includes("\n")) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no message within ${timeoutMs} ms`)),
            Math.max(0, deadline - Date.now()),
          );
        });
        const chunk = await Promise.race([lines!.next(), timeout]).finally(() => clearTimeout(timer));
        if (chunk.done) throw new Error("the stream ended");
        buffer += chunk.value;
      }
      const nl = buffer.indexOf("\n");
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      return JSON.parse(line);
    },
    async close() {
      if (lines) await lines.return?.();
      else if (!response.bodyUsed) await response.body?.cancel();
      client.close();
    },
  };
}

Deno.test({
  name: "control plane: each node agent follows its own node's pods on POST /v1/node-pods",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    const pod = (name: string, ns: string, node: string, extra = { labels: "", spec: "" }) =>
      `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns}, labels: { app: ${name}${extra.labels} } }
spec: { nodeName: ${node}, serviceAccountName: ${name}${extra.spec} }
status: { phase: Running }
---
`;
    const pods = (webLabels: string) =>
      `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: infra }
---
${pod("web-1", "shop", "node1", { labels: webLabels, spec: "" })}${
        pod("db-1", "shop", "node1", { labels: ", istio.io/dataplane-mode: none", spec: "" })
      }${pod("agent-1", "infra", "node1", { labels: "", spec: ", hostNetwork: true" })}${
        pod("api-1", "shop", "node2")
      }`;
    await using control = await ControlProcess.start({ "pods.yaml": pods("") });
    const token1 = await control.addNode("node1");
    const token2 = await control.addNode("node2");
    const stream1 = await openNodePods(control.url, token1);
    const stream2 = await openNodePods(control.url, token2);
    const summary = (m: Record<string, unknown>) =>
      (m.pods as Record<string, unknown>[]).map((p) => [`${p.namespace}/${p.name}`, p.enrolled, p.reason]);
    let first: Record<string, unknown> = {};

    await t.step("a node sees its own pods, each enrolled or not with the reason, as NDJSON", async () => {
      assert.equal(stream1.response.status, 200);
      assert.equal(stream1.response.headers.get("content-type"), "application/x-ndjson");
      first = await stream1.next();
      assert.equal(first.type, "pods");
      assert.equal(first.node, "node1");
      assert.deepEqual(first.ambientNamespaces, ["shop"]);
      assert.deepEqual(summary(first), [
        ["infra/agent-1", false, "host network"],
        ["shop/db-1", false, "pod label istio.io/dataplane-mode=none"],
        ["shop/web-1", true, "namespace label istio.io/dataplane-mode=ambient"],
      ]);
      assert.equal((first.pods as Record<string, unknown>[])[2].serviceAccount, "web-1");
      assert.deepEqual(summary(await stream2.next()), [
        ["shop/api-1", true, "namespace label istio.io/dataplane-mode=ambient"],
      ]);
    });

    await t.step("a manifest that opts a pod out sends that node a new view, and no other node", async () => {
      await control.writeManifest("pods.yaml", pods(", istio.io/dataplane-mode: none"));
      const next = await stream1.next();
      assert.equal(next.type, "pods");
      assert.notEqual(next.version, first.version);
      assert.deepEqual(summary(next)[2], ["shop/web-1", false, "pod label istio.io/dataplane-mode=none"]);
      await control.process.waitForLog((l) => l.msg === "pushed" && l.nodeViewsChanged === 1);
    });

    await t.step("a bad token is a 401; a body naming a node is a 400 (the node is the token's)", async () => {
      const refused = await openNodePods(control.url, token1, { token: "not-a-token" });
      assert.equal(refused.response.status, 401);
      assert.match(String((await refused.response.json()).error), /not valid/);
      await refused.close();
      const named = await openNodePods(control.url, token1, { body: '{"node":"node2"}' });
      assert.equal(named.response.status, 400);
      assert.match(String((await named.response.json()).error), /^bad request: node: is not a known field/);
      await named.close();
    });

    await t.step("a node removed meanwhile has its stream closed at the next ping", async () => {
      await control.removeNode("node2");
      await assert.rejects(stream2.next(PING_INTERVAL_MS + 5_000), /the stream ended/);
      const line = await control.process.waitForLog((l) => l.msg === "closing the node-pods stream");
      assert.equal(line.node, "node2");
    });

    await stream1.close();
    await stream2.close();
  },
});
