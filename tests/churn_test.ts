/**
 * Live traffic survives change, end to end in network namespaces: a real control plane over a manifests directory
 * the test rewrites, a real ztunnel on each of two nodes, a real `skiff waypoint`, and real clients in a captured
 * pod: one held TCP connection to a pod, an HTTP/1.1 keep-alive load (curl) and an HTTP/2 load (python3-h2) through
 * the waypoint, which routes each request by an HTTPRoute to one of two backends. For 10 s, Services, policies on
 * other workloads, HTTPRoutes and pods elsewhere are added and removed (and a pod elsewhere is handed to the
 * destination's ztunnel and taken back). None of that concerns the traffic, so none of it may touch it: no
 * connection closed, no request failed, every request answered by the backend its route selects.
 *
 * The node agent is played by the test, and hands pods over as the real one does (cni/agent.ts): by Kubernetes'
 * pod UID, which is not the model's uid (`Kubernetes//Pod/NS/NAME`); one backend keeps the model's uid, as the
 * harness and local configs give it, so both ways of finding a pod's workload are exercised.
 *
 * Skipped locally when curl or python3-h2 is missing, failing in CI (install.sh installs them).
 */

import assert from "node:assert/strict";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { AppProcess, runIn } from "./harness/apps.ts";
import { ControlProcess } from "./harness/control.ts";
import { IN_CI, IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { dialFrom, roundTrip } from "./harness/tcp.ts";
import { echoApp, podUid, ZtunnelProcess } from "./harness/ztunnel.ts";
import { startWaypoint } from "./harness/waypoint.ts";

if (IS_ROOT) loadSocketSupport();

/** Debian's interpreter: the pyenv shim first on PATH has no `h2`. */
const PYTHON = "/usr/bin/python3";
const H2_LOAD = new URL("./apps/h2_load.py", import.meta.url).pathname;
const WEB = "10.96.16.1";
const WEB_V1 = "10.96.16.2";
const WEB_V2 = "10.96.16.3";
const DB = "10.96.16.4";
/** How long the churn and each load last. */
const CHURN_MS = 10_000;
/** One change every this often (about 40 in all), each a build and a delta to every subscriber. */
const STEP_MS = 250;
/** Requests a second of each load. */
const RATE = 100;

function installed(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

const MISSING = [
  ...(installed("curl", ["--version"]) ? [] : ["curl"]),
  ...(installed(PYTHON, ["-c", "import h2"]) ? [] : ["python3-h2"]),
];

const pod = (p: Pod, labels: string, sa = p.name) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: churn, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${sa} }
status: { podIP: ${p.address}, phase: Running }
---
`;

const service = (name: string, vip: string, selector: string, port: number, target: number, labels = "") =>
  `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: churn, labels: { ${labels} } }
spec: { clusterIP: ${vip}, selector: { ${selector} }, ports: [{ name: http, port: ${port}, targetPort: ${target} }] }
---
`;

/** What changes at step `i`: on even steps a set of objects that concern only the pod `other`, on odd steps none. */
function churnStep(i: number, other: Pod): string {
  if (i % 2 === 1) return "# nothing this step\n";
  return `${service(`extra-${i}`, `10.96.17.${i + 1}`, "app: other", 80, 8080, "istio.io/use-waypoint: waypoint")}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: extra-${i}, namespace: churn }
spec:
  parentRefs: [{ group: "", kind: Service, name: extra-${i}, port: 80 }]
  rules: [{ backendRefs: [{ name: extra-${i}, port: 80 }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-${i}, namespace: churn }
spec:
  selector: { matchLabels: { app: other } }
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/churn/sa/client] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-${i}, namespace: churn }
spec:
  selector: { matchLabels: { app: other } }
  action: ALLOW
  rules: [{ from: [{ source: { principals: [cluster.local/ns/churn/sa/nobody-${i}] } }] }]
---
apiVersion: v1
kind: Pod
metadata: { name: ghost-${i}, namespace: churn, labels: { app: ghost } }
spec: { nodeName: ${other.node.name}, serviceAccountName: ghost }
status: { podIP: 10.0.${other.node.index}.${200 + i}, phase: Running }
`;
}

/** A root test that is also skipped locally, never in CI, when a client it runs is missing. */
const churnTest = MISSING.length > 0 && !IN_CI
  ? (name: string) => Deno.test({ name, ignore: true, fn() {} })
  : netnsTest;

churnTest(
  "churn: adding and removing unrelated Services, policies, routes and pods closes no connection",
  async () => {
    if (MISSING.length > 0) {
      throw new Error(`Cannot run the churn test: ${MISSING.join(", ")} not installed (install.sh; CI=true)`);
    }
    await using cluster = await NetnsCluster.create("churn", { nodes: 2 });
    const [nodeA, nodeB] = cluster.nodes;
    const client = await cluster.addPod(nodeA, "client");
    const db = await cluster.addPod(nodeB, "db");
    const v1 = await cluster.addPod(nodeB, "v1");
    const v2 = await cluster.addPod(nodeB, "v2");
    const other = await cluster.addPod(nodeB, "other");
    const wp = await cluster.addPod(nodeB, "waypoint");
    for (const p of [client, db, v1, v2, other]) await installRedirect(p.netnsPath);
    await using _v1 = await AppProcess.start(v1, "http_echo.ts", ["v1", "8080"]);
    await using _v2 = await AppProcess.start(v2, "http_echo.ts", ["v2", "8080"]);
    await using _db = echoApp(db, 7000);

    await using control = await ControlProcess.start({
      "base.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: churn, labels: { istio.io/dataplane-mode: ambient } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: churn }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${pod(client, "app: client")}${pod(db, "app: db")}${pod(v1, "app: web, version: v1")}${
        pod(v2, "app: web, version: v2")
      }${pod(other, "app: other")}${
        pod(wp, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none", "waypoint")
      }${service("web", WEB, "app: web", 80, 8080, "istio.io/use-waypoint: waypoint")}${
        service("web-v1", WEB_V1, "version: v1", 80, 8080)
      }${service("web-v2", WEB_V2, "version: v2", 80, 8080)}${service("db", DB, "app: db", 7000, 7000)}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: web, namespace: churn }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, port: 80 }]
  rules:
  - matches: [{ queryParams: [{ name: to, value: v1 }] }]
    backendRefs: [{ name: web-v1, port: 80 }]
  - matches: [{ queryParams: [{ name: to, value: v2 }] }]
    backendRefs: [{ name: web-v2, port: 80 }]
`,
    });
    const tokenA = await control.addNode(nodeA.name);
    const tokenB = await control.addNode(nodeB.name);
    for (const [token, pods] of [[tokenA, [client]], [tokenB, [db, v1, v2, other]]] as const) {
      assert.deepEqual(await control.reportRedirected(token, "churn", pods), { accepted: pods.length });
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
    // Kubernetes' pod UIDs, as the real node agent hands pods over; v1 keeps the model's uid.
    const uids = new Map<Pod, string>([[v1, podUid(v1, "churn")]]);
    for (const p of [client, db, v2, other]) uids.set(p, crypto.randomUUID());
    const handOver = async (z: ZtunnelProcess, p: Pod) => {
      const answer = await z.add(uids.get(p)!, p, { name: p.name, namespace: "churn", serviceAccount: p.name });
      assert.equal(answer.type, "ack", `${z.name} refused ${p.name}: ${JSON.stringify(answer)}`);
    };
    await handOver(zA, client);
    for (const p of [db, v1, v2]) await handOver(zB, p);
    for (const z of [zA, zB]) {
      assert.equal((await z.snapshotSent()).type, "ack");
      await z.waitForLog((l) => String(l.msg).startsWith("ready"));
    }
    await using waypoint = await startWaypoint({
      namespace: "churn",
      control: control.url,
      tokenFile: tokenB,
      netnsPath: wp.netnsPath,
    });

    // The paths work before the churn starts.
    for (const to of ["v1", "v2"]) {
      const r = await runIn(client, ["curl", "-sS", "--max-time", "10", `http://${WEB}/warm?to=${to}`]);
      assert.equal(r.stdout, `${to} GET /warm\n`, r.stderr);
    }
    const held = await dialFrom(client.netnsPath, DB, 7000);
    /** The load processes, awaited before the fixture goes even when the test fails (runIn kills each after 60 s). */
    const loads: Promise<unknown>[] = [];
    try {
      assert.equal(await roundTrip(held, "hello"), "db:hello");
      const versionBefore = (await control.status()).version;
      const logsFrom = { zA: zA.lines.length, zB: zB.lines.length, waypoint: waypoint.lines.length };

      const requests = (RATE * CHURN_MS) / 1000;
      const http1 = runIn(client, [
        "curl",
        "-sS",
        "--rate",
        `${RATE}/s`,
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %header{x-served-by} %{url}\\n",
        // curl steps the last glob fastest: r1?to=v1, r1?to=v2, r2?to=v1, …, all on one keep-alive connection.
        `http://${WEB}/h1-[1-${requests / 2}]?to={v1,v2}`,
      ], 60_000);
      const http2 = runIn(client, [
        PYTHON,
        H2_LOAD,
        WEB,
        "80",
        String(CHURN_MS / 1000),
        String(RATE),
        "4",
        "/h2?to=v1",
        "/h2?to=v2",
      ], 60_000);
      loads.push(http1, http2);

      let heldFailures = 0;
      const heldAnswers: string[] = [];
      const started = performance.now();
      for (let i = 0; performance.now() - started < CHURN_MS; i++) {
        await control.writeManifest("churn.yaml", churnStep(i, other));
        // A pod elsewhere comes and goes on the destination's node: ztunnel takes it, then lets it go.
        if (i % 8 === 2) await handOver(zB, other);
        if (i % 8 === 6) assert.equal((await zB.del(uids.get(other)!)).type, "ack");
        // Once the held connection is gone, later round trips would only repeat it; the churn goes on for the loads.
        if (heldFailures === 0) {
          const answer = await roundTrip(held, `step${i}`);
          if (answer !== `db:step${i}`) heldFailures++, heldAnswers.push(answer);
        }
        await new Promise((r) => setTimeout(r, STEP_MS));
      }
      await control.writeManifest("churn.yaml", "# done\n");
      if (heldFailures === 0) {
        const answer = await roundTrip(held, "after");
        if (answer !== "db:after") heldFailures++, heldAnswers.push(answer);
      }

      const h1 = await http1;
      const h2 = await http2;
      const h1Lines = h1.stdout.trim().split("\n").filter((l) => l !== "");
      const h1Failed = h1Lines.filter((l) => !l.startsWith("200 "));
      const h1Wrong = h1Lines.filter((l) => {
        const [code, servedBy, url] = l.split(" ");
        return code === "200" && !url.endsWith(`to=${servedBy}`);
      });
      assert.equal(h2.code, 0, h2.stderr);
      const h2Result = JSON.parse(h2.stdout);
      const closedBy = (z: ZtunnelProcess, from: number) =>
        z.lines.slice(from).filter((l) =>
          l.msg === "connection complete" && /policy change|pod removed/.test(String(l.error ?? ""))
        );
      const closed = [...closedBy(zA, logsFrom.zA), ...closedBy(zB, logsFrom.zB)];
      // The waypoint pools its connections to the backends and keeps them while the load goes on (idle ones go
      // after 30 s): any that ended during the churn was cut.
      const upstreamsEnded = zB.lines.slice(logsFrom.zB).filter((l) =>
        l.msg === "connection complete" && l["src.identity"] === "spiffe://cluster.local/ns/churn/sa/waypoint"
      );
      const waypoint5xx = waypoint.lines.slice(logsFrom.waypoint).filter((l) =>
        l.msg === "request complete" && Number(l.response_code) >= 500
      );
      const versions = (await control.status()).version - versionBefore;
      // The counts, for docs/benchmarks.md (bench/run.ts runs this test and keeps what it prints).
      const h1Failures = h1Failed.length + (requests - h1Lines.length);
      console.log([
        `churn for ${CHURN_MS / 1000} s: ${versions} changes published (Services, selector policies on another ` +
        "workload, HTTPRoutes, pods added and removed; a pod elsewhere handed to ztunnel and taken back)",
        `held TCP connection closed: ${heldFailures}`,
        `connections closed by a ztunnel (policy change, pod removed): ${closed.length}`,
        `waypoint → backend connections ended: ${upstreamsEnded.length}`,
        `HTTP/1.1 through the waypoint (curl, ${RATE}/s, keep-alive): ${requests} sent, ${h1Failures} failed, ` +
        `${h1Wrong.length} answered by another backend than the route's`,
        `HTTP/2 through the waypoint (python3-h2, ${RATE}/s, up to 4 streams): ${h2Result.sent} sent, ` +
        `${h2Result.failed} failed, ${h2Result.wrong} answered by another backend than the route's`,
        `waypoint 5xx answers: ${waypoint5xx.length}`,
      ].join("\n"));

      // The churn happened: every step was a build and a delta (the control plane may fold two into one).
      assert.ok(versions >= 10, `only ${versions} changes were published`);
      assert.deepEqual(heldAnswers, [], "the held TCP connection must survive");
      assert.deepEqual(
        closed.map((l) => `${l["dst.workload"]}: ${l.error}`),
        [],
        "no connection may be closed by a change that does not concern it",
      );
      assert.equal(upstreamsEnded.length, 0, "the waypoint's connections to the backends must survive");
      assert.equal(h1Lines.length, requests, h1.stderr.slice(-2000));
      assert.deepEqual(h1Failed.slice(0, 10), [], `HTTP/1.1: ${h1Failed.length} failed`);
      assert.deepEqual(h1Wrong.slice(0, 10), [], `HTTP/1.1: ${h1Wrong.length} answered by the wrong backend`);
      assert.ok(h2Result.sent >= requests / 2, `HTTP/2: only ${h2Result.sent} sent`);
      assert.deepEqual(
        { failed: h2Result.failed, wrong: h2Result.wrong, ok: h2Result.ok },
        { failed: 0, wrong: 0, ok: h2Result.sent },
        `HTTP/2: ${JSON.stringify(h2Result)}`,
      );
      assert.deepEqual(waypoint5xx.map((l) => `${l.response_code} ${l.response_flags}`), []);
    } finally {
      held.close();
      await Promise.allSettled(loads);
    }
  },
);
