/**
 * Certificates that expire while the CA is unreachable, end to end: a real control plane (the CA service), two
 * real ztunnel processes taking short-lived certificates from it, and pods in network namespaces. Once the
 * control plane is gone and the certificates run out, traffic must stop, pooled HBONE connections included
 * (fail closed, never plaintext), and ztunnel's log must say which certificate and why.
 */

import assert from "node:assert/strict";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call } from "./harness/tcp.ts";
import { echoApp, ZtunnelProcess } from "./harness/ztunnel.ts";

if (IS_ROOT) loadSocketSupport();

/** Workload certificates live this long (plus the CA's two minutes of backdating before issue). */
const TTL_S = 6;

const pod = (p: Pod) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: shop }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${p.name} }
status: { podIP: ${p.address}, phase: Running }
---
`;

netnsTest(
  "certificates: with the CA unreachable, traffic stops when they expire, pooled connections too",
  async (t) => {
    await using cluster = await NetnsCluster.create("certexpiry", { nodes: 2 });
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
${pod(client)}${pod(server)}`,
    });
    const tokenA = await control.addNode(nodeA.name);
    const tokenB = await control.addNode(nodeB.name);
    for (const [token, p] of [[tokenA, client], [tokenB, server]] as const) {
      assert.deepEqual(await control.reportRedirected(token, "shop", [p]), { accepted: 1 });
    }
    const env = { SKIFF_CERT_TTL: `${TTL_S}s` };
    await using zA = await ZtunnelProcess.start(nodeA.name, {
      dir: control.dir,
      control: control.url,
      tokenFile: tokenA,
    }, env);
    await using zB = await ZtunnelProcess.start(nodeB.name, {
      dir: control.dir,
      control: control.url,
      tokenFile: tokenB,
    }, env);
    await zA.enroll(client, "shop");
    await zB.enroll(server, "shop");
    for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));
    const hi = () => call(client.netnsPath, server.address, 8080, "hi", 3000);

    await t.step("HBONE flows while the CA is up", async () => {
      assert.equal(await hi(), "server:hi");
      assert.equal(await hi(), "server:hi", "the second call rides the pooled connection");
    });

    await t.step("the CA goes away: calls go on while the certificates last, and stop once they expire", async () => {
      await control.kill();
      const killedAt = Date.now();
      assert.equal(await hi(), "server:hi", "a still-valid certificate is kept");
      // Every certificate was issued before the kill, so all have expired TTL_S seconds after it.
      let last = "";
      while (Date.now() - killedAt < (TTL_S + 8) * 1000) {
        last = await hi();
        if (last !== "server:hi") break;
        await new Promise((r) => setTimeout(r, 250));
      }
      const stoppedAfter = Date.now() - killedAt;
      assert.notEqual(last, "server:hi", `calls still succeeded ${stoppedAfter} ms after the CA went away`);
      assert.ok(stoppedAfter > 0);
      for (let i = 0; i < 3; i++) assert.notEqual(await hi(), "server:hi", "a call after expiry succeeded");
    });

    await t.step("ztunnel's log says which certificate and why", async () => {
      const named = (l: Record<string, unknown>) =>
        JSON.stringify(l).includes("spiffe://cluster.local/ns/shop/sa/client");
      const retired = await zA.waitForLog((l) => l.msg === "pooled HBONE connection retired" && named(l));
      assert.match(String(retired.reason), /certificate .* expired at|no valid certificate for/);
      const refused = await zA.waitForLog((l) => named(l) && /no valid certificate for/.test(JSON.stringify(l)));
      assert.match(JSON.stringify(refused), /sa\/client/);
    });
  },
);
