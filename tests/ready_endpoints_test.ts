/**
 * Only Ready pods are endpoints, end to end. In process: manifests through `buildMesh` into a proxy's state, then
 * ztunnel's `buildRequest` and the waypoint's `Balancer` choose among the endpoints (no root). In network
 * namespaces: a real control plane reading a manifests directory, a ztunnel on each of two nodes, a real waypoint,
 * and a Service with two pods, one of which stops being Ready in the manifests and later is Ready again. Counts,
 * not timings: of N connections (and N requests through the waypoint), how many each pod took.
 */

import assert from "node:assert/strict";
import { asOriginalDst } from "../dataplane/proxy/addr.ts";
import { installRedirect } from "../cni/redirect_linux.ts";
import { DEFAULT_SETTINGS } from "../control/build/common.ts";
import { buildMesh } from "../control/build/mod.ts";
import { parseManifestFile } from "../control/sources/manifests.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { Balancer } from "../dataplane/waypoint/upstream.ts";
import { buildRequest } from "../dataplane/ztunnel/route.ts";
import { MeshState } from "../mesh/store.ts";
import { decodeService, decodeWorkload } from "../mesh/workload.ts";
import { AppProcess, runIn } from "./harness/apps.ts";
import { ControlProcess } from "./harness/control.ts";
import { IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { call, dialFrom, roundTrip } from "./harness/tcp.ts";
import { echoApp, ZtunnelProcess } from "./harness/ztunnel.ts";
import { freePortBase } from "./harness/ports.ts";
import { startWaypoint } from "./harness/waypoint.ts";

if (IS_ROOT) loadSocketSupport();

const READY = (ready: boolean) => `, conditions: [{ type: Ready, status: "${ready ? "True" : "False"}" }]`;

// ---------------------------------------------------------------------------------------------------------------
// In process: the model as built from manifests, chosen from by both proxies.

const SHOP = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
`;

const manifestPod = (name: string, ip: string, status: string) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: ${name.startsWith("web") ? "web" : name} } }
spec: { nodeName: node-a, serviceAccountName: ${name} }
status: { podIP: ${ip}${status} }
---
`;

const RUNNING = ", phase: Running";

/** A proxy's view of the mesh the manifests declare, decoded as it arrives on the wire. */
function stateOf(web1: string, web2: string, publish = false): MeshState {
  const yaml = SHOP + manifestPod("client", "10.0.1.2", RUNNING) + manifestPod("web-1", "10.0.1.3", web1) +
    manifestPod("web-2", "10.0.1.4", web2) +
    `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.1, selector: { app: web }, ports: [{ port: 80, targetPort: 8080 }]${
      publish ? ", publishNotReadyAddresses: true" : ""
    } }
`;
  const parsed = parseManifestFile(yaml, "shop.yaml");
  assert.deepEqual(parsed.problems, []);
  const model = buildMesh({ objects: parsed.objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
  const state = new MeshState();
  const wire = <T>(x: T) => JSON.parse(JSON.stringify(x));
  for (const w of model.workloads) state.workloads.upsert(decodeWorkload(wire(w)));
  for (const s of model.services) state.services.upsert(decodeService(wire(s)));
  return state;
}

/** Who takes each of `n` connections to the VIP from ztunnel (random values spread evenly over [0, 1)). */
function ztunnelPicks(state: MeshState, n: number): Record<string, number> {
  const client = state.workloads.byUid("Kubernetes//Pod/shop/client")!;
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const r = buildRequest(client, asOriginalDst({ ip: "10.96.0.1", port: 80 }), state, { random: () => i / n });
    const who = r.kind === "refused" ? r.reason : r.kind === "passthrough" ? "passthrough" : r.destinationWorkload.name;
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

/** Who takes each of `n` requests for the service at the waypoint. */
function waypointPicks(state: MeshState, n: number): Record<string, number> {
  const service = state.services.byKey("shop/web.shop.svc.cluster.local")!;
  const balancer = new Balancer();
  const self = { namespace: "shop", hostname: "waypoint.shop.svc.cluster.local", network: "" };
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const who = balancer.pick(state, service, 80, self)?.workload.name ?? "no healthy upstream";
    counts[who] = (counts[who] ?? 0) + 1;
  }
  return counts;
}

Deno.test("a pod whose manifest says it is not Ready takes no service traffic at ztunnel or the waypoint", async (t) => {
  await t.step("both Ready: both take connections and requests", () => {
    const state = stateOf(RUNNING + READY(true), RUNNING);
    assert.deepEqual(ztunnelPicks(state, 20), { "web-1": 10, "web-2": 10 });
    assert.deepEqual(waypointPicks(state, 20), { "web-1": 10, "web-2": 10 });
  });
  await t.step("web-2 Ready False: ztunnel and the waypoint send everything to web-1", () => {
    const state = stateOf(RUNNING, RUNNING + READY(false));
    assert.deepEqual(ztunnelPicks(state, 20), { "web-1": 20 });
    assert.deepEqual(waypointPicks(state, 20), { "web-1": 20 });
  });
  await t.step("web-2 Pending: the same", () => {
    const state = stateOf(RUNNING, ", phase: Pending");
    assert.deepEqual(ztunnelPicks(state, 20), { "web-1": 20 });
    assert.deepEqual(waypointPicks(state, 20), { "web-1": 20 });
  });
  await t.step("a call to the unready pod's own address still finds its workload (identity, policy)", () => {
    const state = stateOf(RUNNING, RUNNING + READY(false));
    const client = state.workloads.byUid("Kubernetes//Pod/shop/client")!;
    const r = buildRequest(client, asOriginalDst({ ip: "10.0.1.4", port: 8080 }), state, { random: () => 0 });
    assert.ok(r.kind === "tcp", JSON.stringify(r));
    assert.equal(r.destinationWorkload.name, "web-2");
  });
  await t.step("none Ready: ztunnel refuses (NoHealthyUpstream), the waypoint has no endpoint (503 UH)", () => {
    const state = stateOf(RUNNING + READY(false), RUNNING + READY(false));
    assert.deepEqual(ztunnelPicks(state, 20), { NoHealthyUpstream: 20 });
    assert.deepEqual(waypointPicks(state, 20), { "no healthy upstream": 20 });
  });
  await t.step("publishNotReadyAddresses: unready pods take traffic, as the Service asks", () => {
    const state = stateOf(RUNNING + READY(false), ", phase: Pending", true);
    assert.deepEqual(ztunnelPicks(state, 20), { "web-1": 10, "web-2": 10 });
    assert.deepEqual(waypointPicks(state, 20), { "web-1": 10, "web-2": 10 });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// End to end, in network namespaces.

const ECHO = "10.96.9.1";
const WEB = "10.96.9.2";
const N = 20;

const pod = (p: Pod, labels: string, status = "", sa = p.name) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: shop, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${sa} }
status: { podIP: ${p.address}, phase: Running${status} }
---
`;

/** Counts answers by their first word before `:` or ` ` (the pod that served), or the whole answer otherwise. */
function tally(answers: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const a of answers) {
    const who = /^(web-\d)[: ]/.exec(a)?.[1] ?? a.trim();
    out[who] = (out[who] ?? 0) + 1;
  }
  return out;
}

netnsTest(
  "only Ready pods take service traffic through ztunnel and the waypoint, and a pod Ready again does",
  async (t) => {
    await using cluster = await NetnsCluster.create("ready", { nodes: 2 });
    const [nodeA, nodeB] = cluster.nodes;
    const client = await cluster.addPod(nodeA, "client");
    const web1 = await cluster.addPod(nodeB, "web-1");
    const web2 = await cluster.addPod(nodeB, "web-2");
    const wp = await cluster.addPod(nodeB, "waypoint");
    for (const p of [client, web1, web2]) await installRedirect(p.netnsPath);
    await using e1 = echoApp(web1, 7000);
    await using e2 = echoApp(web2, 7000);
    await using _h1 = await AppProcess.start(web1, "http_echo.ts", ["web-1", "8080"]);
    await using _h2 = await AppProcess.start(web2, "http_echo.ts", ["web-2", "8080"]);

    const manifests = (web1Status: string, web2Status: string) =>
      `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${pod(client, "app: client")}${pod(web1, "app: web", web1Status)}${pod(web2, "app: web", web2Status)}${
        pod(wp, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none", "", "waypoint")
      }apiVersion: v1
kind: Service
metadata: { name: echo, namespace: shop }
spec: { clusterIP: ${ECHO}, selector: { app: web }, ports: [{ port: 80, targetPort: 7000 }] }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop, labels: { istio.io/use-waypoint: waypoint } }
spec: { clusterIP: ${WEB}, selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }] }
`;
    await using control = await ControlProcess.start({ "shop.yaml": manifests("", "") });
    const tokenA = await control.addNode(nodeA.name);
    const tokenB = await control.addNode(nodeB.name);
    for (const [token, pods] of [[tokenA, [client]], [tokenB, [web1, web2]]] as const) {
      assert.deepEqual(await control.reportRedirected(token, "shop", pods), { accepted: pods.length });
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
    await zA.enroll(client, "shop");
    await zB.enroll(web1, "shop");
    const added = await zB.add(`Kubernetes//Pod/shop/${web2.name}`, web2, {
      name: web2.name,
      namespace: "shop",
      serviceAccount: web2.name,
    });
    assert.equal(added.type, "ack");
    for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));
    const base = freePortBase(3);
    await using waypoint = await startWaypoint({
      namespace: "shop",
      control: control.url,
      tokenFile: tokenB,
      netnsPath: wp.netnsPath,
      base,
    });

    /** N connections through ztunnel to the echo VIP, each a new connection: who answered. */
    const connections = async (n = N) => {
      const answers: string[] = [];
      for (let i = 0; i < n; i++) answers.push(await call(client.netnsPath, ECHO, 80, `c${i}`));
      return tally(answers);
    };
    /** N requests through the waypoint (one curl, one connection): who answered, or the status code. */
    const requests = async (n = N) => {
      const r = await runIn(client, ["curl", "-sS", "--max-time", "10", `http://${WEB}/r[1-${n}]`]);
      assert.equal(r.code, 0, r.stderr);
      return tally(r.stdout.trim().split("\n"));
    };
    const statuses = async (n = N) => {
      const r = await runIn(client, [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        `http://${WEB}/r[1-${n}]`,
      ]);
      assert.equal(r.code, 0, r.stderr);
      return tally(r.stdout.trim().split("\n"));
    };
    /**
     * Polls the admin `/config_dump` of ztunnel A and the waypoint until both hold `want` as web-2's (and web-1's)
     * status; returns whether they did within 5 s. The counts are asserted either way, so a control plane that never
     * sends the change fails on them, not on this wait.
     */
    const propagated = async (want: Record<string, string>) => {
      const seen = async (port: number) => {
        const dump = await (await fetch(`http://127.0.0.1:${port}/config_dump`)).json();
        const status = (name: string) =>
          (dump.workloads as { name: string; status: string }[]).find((w) => w.name === name)?.status;
        return Object.entries(want).every(([name, s]) => status(name) === s);
      };
      for (let i = 0; i < 100; i++) {
        if (await seen(zA.ports.admin) && await seen(base)) return true;
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };
    let held: Deno.TcpConn | undefined;

    try {
      await t.step("both Ready: connections and requests reach both pods", async () => {
        const c = await connections();
        assert.ok(c["web-1"] > 0 && c["web-2"] > 0 && c["web-1"] + c["web-2"] === N, JSON.stringify(c));
        assert.deepEqual(await requests(), { "web-1": N / 2, "web-2": N / 2 }, "round robin at the waypoint");
        // A connection to web-2 that stays open across the change.
        for (let i = 0; i < 40 && !held; i++) {
          const conn = await dialFrom(client.netnsPath, ECHO, 80);
          if ((await roundTrip(conn, "hold")).startsWith("web-2:")) held = conn;
          else conn.close();
        }
        assert.ok(held, "a connection landed on web-2");
      });

      await t.step(`web-2 not Ready in the manifests: all ${N} connections and ${N} requests go to web-1`, async () => {
        const served2 = e2.peers.length;
        await control.writeManifest("shop.yaml", manifests("", READY(false)));
        const seen = await propagated({ "web-2": "UNHEALTHY" });
        const c = await connections();
        const r = await requests();
        console.log(`web-2 not Ready: connections ${JSON.stringify(c)}, requests ${JSON.stringify(r)}`);
        assert.deepEqual(c, { "web-1": N }, "connections through ztunnel");
        assert.deepEqual(r, { "web-1": N }, "requests through the waypoint");
        assert.equal(e2.peers.length, served2, "web-2's app saw no new connection");
        assert.ok(seen, "ztunnel and the waypoint hold web-2 as UNHEALTHY");
      });

      await t.step("the connection opened to web-2 before stays open and works", async () => {
        assert.equal(await roundTrip(held!, "still"), "web-2:still");
      });

      await t.step("a call to web-2's own address still reaches it (its identity and policies apply)", async () => {
        assert.equal(await call(client.netnsPath, web2.address, 7000, "direct"), "web-2:direct");
      });

      await t.step("no pod Ready: ztunnel refuses every connection, the waypoint answers 503 UH", async () => {
        const served = e1.peers.length + e2.peers.length;
        await control.writeManifest("shop.yaml", manifests(READY(false), READY(false)));
        const seen = await propagated({ "web-1": "UNHEALTHY", "web-2": "UNHEALTHY" });
        const c = await connections(10);
        console.log(`no pod Ready: connections ${JSON.stringify(c)}`);
        assert.equal(c["web-1"] ?? 0, 0, JSON.stringify(c));
        assert.equal(c["web-2"] ?? 0, 0, JSON.stringify(c));
        assert.equal(e1.peers.length + e2.peers.length, served, "no app saw a connection");
        assert.deepEqual(await statuses(10), { "503": 10 });
        const line = await waypoint.waitForLog((l) => l.msg === "request complete" && l.response_code === 503);
        assert.equal(line.response_flags, "UH");
        await zA.waitForLog((l) => /no healthy endpoint/.test(String(l.msg)));
        assert.ok(seen);
      });

      await t.step("Ready again: both pods take connections and requests again", async () => {
        await control.writeManifest("shop.yaml", manifests(READY(true), READY(true)));
        assert.ok(await propagated({ "web-1": "HEALTHY", "web-2": "HEALTHY" }));
        const c = await connections();
        assert.ok(c["web-1"] > 0 && c["web-2"] > 0 && c["web-1"] + c["web-2"] === N, JSON.stringify(c));
        const r = await requests();
        assert.deepEqual(r, { "web-1": N / 2, "web-2": N / 2 });
        console.log(`Ready again: connections ${JSON.stringify(c)}, requests ${JSON.stringify(r)}`);
      });
    } finally {
      try {
        held?.close();
      } catch { /* closed */ }
    }
  },
);
