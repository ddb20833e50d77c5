/**
 * Containers through a real runtime: Debian's podman with runc and its CNI backend, on a network whose conflist
 * chains `skiff` after `bridge` + `host-local` (tests/harness/podman.ts), with a real `skiff control`,
 * `skiff cni-agent` and `skiff ztunnel` for the node. Podman passes only `K8S_POD_NAME=<container name>` in
 * CNI_ARGS, so the namespace comes from the conflist's `skiff` entry; each container is declared as a Pod
 * manifest of that name with `spec.nodeName` (docs/vm-install.md, "Containers on a VM").
 *
 * The container's own processes (busybox `nc` under `podman exec`) make the calls: they reach another container
 * over HBONE with both SPIFFE identities, a DENY policy refuses them, and with ztunnel down they are refused,
 * never sent in plaintext.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { checkRedirect } from "../cni/redirect_linux.ts";
import { ControlProcess } from "./harness/control.ts";
import { nodeNetwork, REFERENCE_PLUGINS, SkiffNode, skiffPluginDir } from "./harness/cni.ts";
import { IN_CI, IS_ROOT, NetnsCluster, netnsTest } from "./harness/netns.ts";
import { Podman, podmanInstalled } from "./harness/podman.ts";
import { echoApp } from "./harness/ztunnel.ts";
import { until } from "./harness/assert.ts";

if (IS_ROOT) loadSocketSupport();

const tag = crypto.randomUUID().slice(0, 6);
/** Container names are global to podman: unique per run, and the Pod manifests carry the same names. */
const WEB = `web-${tag}`;
const API = `api-${tag}`;
const LATE = `late-${tag}`;

const pod = (name: string, sa: string) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: ${sa} } }
spec: { nodeName: node1, serviceAccountName: ${sa} }
---
`;
const manifests = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
${pod(WEB, "web")}${pod(API, "api")}${pod(LATE, "web")}apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: shop }
spec: { mtls: { mode: STRICT } }
`;
const denyWeb = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-web, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/web] } }] }]
`;

netnsTest("podman: containers on a skiff CNI network are in the mesh; policy and fail closed", async (t) => {
  const missing = await podmanInstalled();
  if (missing) {
    if (IN_CI) throw new Error(`podman test: ${missing}`);
    console.warn(`podman test skipped: ${missing}`);
    return;
  }
  await using cluster = await NetnsCluster.create("podman", { nodes: 1 });
  const [node1] = cluster.nodes;
  await using bin = await skiffPluginDir();
  await using control = await ControlProcess.start({ "shop.yaml": manifests });
  await using node = new SkiffNode(node1, control.url, await control.addNode(node1.name), control.dir);
  await node.startAgent();
  await node.startZtunnel();
  // The node's conflist, with the namespace for containers whose runtime passes none (podman).
  const list = nodeNetwork(node1, { ipamDir: join(control.dir, "ipam"), agentSocket: node.agentSocket });
  list.name = `skiff-${tag}`;
  const conflist = { ...list, plugins: list.plugins.map((p) => p.type === "skiff" ? { ...p, namespace: "shop" } : p) };
  await using podman = await Podman.create({
    nodeNetns: `/var/run/netns/${node1.netns}`,
    conflist,
    pluginDirs: [REFERENCE_PLUGINS, bin.dir],
  });

  // On a failure, the processes' last log lines say why.
  const step = (name: string, fn: () => Promise<void>) =>
    t.step(name, async () => {
      try {
        await fn();
      } catch (error) {
        for (const p of [node.agent, node.ztunnel, control.process]) {
          if (!p) continue;
          console.error(`--- ${p.name}, last lines:`);
          for (const l of p.lines.slice(-15)) console.error(JSON.stringify(l).slice(0, 300));
        }
        throw error;
      }
    });

  /** `echo MSG | nc IP 8080` inside container `from`: what came back ("" when refused). */
  const callFrom = async (from: string, ip: string, msg: string) => {
    const out = await podman.execIn(from, ["sh", "-c", `echo ${msg} | timeout 3 nc ${ip} 8080`]);
    return out.stdout.trim();
  };

  let apiIp = "";
  let webIp = "";
  await step("podman run on the skiff network: both containers start redirected, named as declared", async () => {
    for (const name of [API, WEB]) {
      // Until the agent holds the control plane's view of the node, ADD is "try again later" (11): run it again
      // then, as an operator (or a restart policy) would.
      await until(`podman run ${name}`, async () => {
        const out = await podman.run(name, ["sleep", "600"]);
        if (out.code === 0) return true;
        await podman.remove(name);
        throw new Error(out.stderr.trim());
      });
    }
    const [api, web] = [await podman.inspect(API), await podman.inspect(WEB)];
    [apiIp, webIp] = [api.ip, web.ip];
    assert.match(api.netns, /^\/run\/netns\//);
    const status = await node.status();
    assert.deepEqual(
      status.pods.map((p) => [p.name, p.state]).sort(),
      [[API, "redirected"], [WEB, "redirected"]].sort(),
      JSON.stringify(status.pods),
    );
    for (const c of [api, web]) assert.deepEqual((await checkRedirect(c.netns)).problems, []);
  });

  await using app = echoApp({ netnsPath: (await podman.inspect(API)).netns, name: "api" }, 8080);

  await step("a container's call reaches the other over HBONE, with both SPIFFE identities", async () => {
    // STRICT refuses plaintext: an answer means the control plane marked both HBONE and ztunnel carried it.
    await until("a call over HBONE", async () => (await callFrom(WEB, apiIp, "hi")) === "api:hi");
    const inbound = await node.ztunnel!.waitForLog((l) =>
      l.msg === "connection complete" && l.direction === "inbound" && String(l["src.addr"]).startsWith(webIp)
    );
    assert.equal(inbound["src.identity"], "spiffe://cluster.local/ns/shop/sa/web");
    assert.equal(inbound["dst.identity"], "spiffe://cluster.local/ns/shop/sa/api");
    assert.ok(app.peers.includes(webIp), `the app sees the container's own address: ${app.peers}`);
  });

  await step("a DENY policy on the server refuses the container's calls; none reach the app", async () => {
    await control.writeManifest("deny.yaml", denyWeb);
    await until("the DENY in force", async () => (await callFrom(WEB, apiIp, "deny?")) === "");
    await node.ztunnel!.waitForLog((l) =>
      l.msg === "connection complete" && /denied by policy shop\/deny-web/.test(String(l.error))
    );
    const before = app.peers.length;
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await callFrom(WEB, apiIp, `d${i}`));
    assert.deepEqual(answers, ["", "", ""]);
    assert.equal(app.peers.length, before, "denied connections never reach the app");
    await Deno.remove(join(control.manifests, "deny.yaml"));
    await until("the DENY lifted", async () => (await callFrom(WEB, apiIp, "again")) === "api:again");
  });

  await step("with ztunnel down, the container's calls are refused (never plaintext), and run fails", async () => {
    await node.stopZtunnel();
    const before = app.peers.length;
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await callFrom(WEB, apiIp, `z${i}`));
    assert.deepEqual(answers, ["", "", ""]);
    assert.equal(app.peers.length, before, "no connection reaches the app around ztunnel");
    // A new container is not started while ztunnel cannot take it: CNI ADD is error 11.
    const late = await podman.run(LATE, ["sleep", "600"]);
    assert.notEqual(late.code, 0, "podman run must fail with ztunnel away");
    assert.match(late.stderr, /ztunnel is not ready|try again later/, late.stderr);
    await node.startZtunnel();
  });

  await step("podman rm runs CNI DEL: the agent forgets the containers", async () => {
    for (const name of [WEB, API, LATE]) {
      const out = await podman.remove(name);
      assert.ok(out.code === 0 || /no such container/i.test(out.stderr), `podman rm ${name}: ${out.stderr}`);
    }
    await until("no pods left on the node", async () => (await node.status()).pods.length === 0);
  });
});
