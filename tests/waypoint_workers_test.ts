/**
 * The waypoint on two threads (`--workers=2`), end to end in network namespaces: a real control plane, a real
 * ztunnel on each of two nodes, a real `skiff waypoint` whose main thread and one worker thread both listen on
 * 15008 (SO_REUSEPORT), and real clients (curl, python3-h2) in eight captured client pods. Each client pod's
 * tunnels to the waypoint ride their own HBONE connection (the pool's key holds the source address), and the
 * kernel puts each new connection on one thread by its addresses' hash: with eight, both threads serve (all
 * eight on one thread has a chance of 2^-7; the test says so when it happens).
 *
 * Counted: every request answered by the backend its HTTPRoute selects, on both threads (the access log's
 * `worker`), `/metrics` summed over threads equal to the requests made; an L7 DENY added after start refused on
 * every thread (0 of M through); SIGTERM with requests in flight on both threads answers all of them, then exits.
 *
 * Skipped locally when curl, nghttp or python3-h2 is missing, failing in CI (install.sh installs them).
 */

import assert from "node:assert/strict";
import { installRedirect } from "../cni/redirect_linux.ts";
import { loadSocketSupport } from "../dataplane/sockets_linux.ts";
import { AppProcess, runIn } from "./harness/apps.ts";
import { until } from "./harness/assert.ts";
import { ControlProcess } from "./harness/control.ts";
import { IN_CI, IS_ROOT, NetnsCluster, netnsTest, type Pod } from "./harness/netns.ts";
import { podUid, ZtunnelProcess } from "./harness/ztunnel.ts";
import { freePortBase } from "./harness/ports.ts";
import { startWaypoint } from "./harness/waypoint.ts";

if (IS_ROOT) loadSocketSupport();

/** Debian's interpreter: the pyenv shim first on PATH has no `h2`. */
const PYTHON = "/usr/bin/python3";
const H2_LOAD = new URL("./apps/h2_load.py", import.meta.url).pathname;
const ECHO = "10.96.18.1";
const V1 = "10.96.18.2";
const V2 = "10.96.18.3";
/** The backend of the drain step alone, so that its connections count the requests in flight there. */
const SLOW = "10.96.18.4";
const CLIENTS = 8;
/** curl processes per client pod, each its own connection. */
const CURLS = 2;
/** Requests per curl: /to/v1/1, /to/v2/1, … on one keep-alive connection. */
const PER_CURL = 40;

function installed(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

const MISSING = [
  ...(installed("curl", ["--version"]) ? [] : ["curl"]),
  ...(installed("nghttp", ["--version"]) ? [] : ["nghttp2-client"]),
  ...(installed(PYTHON, ["-c", "import h2"]) ? [] : ["python3-h2"]),
];

const pod = (p: Pod, labels: string, sa = p.name) =>
  `apiVersion: v1
kind: Pod
metadata: { name: ${p.name}, namespace: threads, labels: { ${labels} } }
spec: { nodeName: ${p.node.name}, serviceAccountName: ${sa} }
status: { podIP: ${p.address}, phase: Running }
---
`;

const service = (name: string, vip: string, selector: string) =>
  `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: threads }
spec:
  clusterIP: ${vip}
  selector: { ${selector} }
  ports: [{ name: http, port: 80, targetPort: 8080 }]
---
`;

const ROUTES = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: echo, namespace: threads }
spec:
  parentRefs: [{ group: "", kind: Service, name: echo, port: 80 }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: /slow } }]
    backendRefs: [{ name: echo-slow, port: 80 }]
  - matches: [{ path: { type: PathPrefix, value: /to/v2 } }]
    backendRefs: [{ name: echo-v2, port: 80 }]
  - matches: [{ queryParams: [{ name: to, value: v2 }] }]
    backendRefs: [{ name: echo-v2, port: 80 }]
  - backendRefs: [{ name: echo-v1, port: 80 }]
`;

const DENY_SECRET = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-secret, namespace: threads }
spec:
  targetRefs: [{ kind: Service, group: "", name: echo }]
  action: DENY
  rules: [{ to: [{ operation: { paths: [/secret, /secret/*] } }] }]
`;

/** `runIn(pod, cmd)` after `ms`. */
async function staggered(ms: number, [pod, ...cmd]: [Pod, ...string[]]) {
  await new Promise((r) => setTimeout(r, ms));
  return await runIn(pod, cmd, 60_000);
}

/** `istio_requests_total` over every series of the waypoint's `/metrics`. */
async function requestsTotal(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return text.split("\n").filter((l) => l.startsWith("istio_requests_total{"))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

/** Access-log lines by the thread that wrote them ("0" for the main thread). */
function byThread(lines: Record<string, unknown>[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const l of lines) counts[String(l.worker)] = (counts[String(l.worker)] ?? 0) + 1;
  return counts;
}

netnsTest("waypoint --workers=2: both threads serve, one config, one drain", async (t) => {
  if (MISSING.length > 0 && !IN_CI) return console.log(`skipped: install ${MISSING.join(", ")}`);
  assert.deepEqual(MISSING, [], `install ${MISSING.join(", ")} (install.sh installs them)`);
  await using cluster = await NetnsCluster.create("wp-workers", { nodes: 2 });
  const [nodeA, nodeB] = cluster.nodes;
  const clients: Pod[] = [];
  for (let i = 1; i <= CLIENTS; i++) clients.push(await cluster.addPod(nodeA, `client${i}`));
  const v1 = await cluster.addPod(nodeB, "v1");
  const v2 = await cluster.addPod(nodeB, "v2");
  const slowPod = await cluster.addPod(nodeB, "slow");
  const wp = await cluster.addPod(nodeB, "waypoint");
  for (const p of [...clients, v1, v2, slowPod]) await installRedirect(p.netnsPath);
  await using _v1 = await AppProcess.start(v1, "http_echo.ts", ["v1", "8080"]);
  await using _v2 = await AppProcess.start(v2, "http_echo.ts", ["v2", "8080"]);
  await using _slow = await AppProcess.start(slowPod, "http_echo.ts", ["slow", "8080"]);

  await using control = await ControlProcess.start({
    "threads.yaml": `apiVersion: v1
kind: Namespace
metadata: { name: threads, labels: { istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: threads }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
${clients.map((c) => pod(c, "app: client")).join("")}${pod(v1, "app: echo, version: v1")}${
      pod(v2, "app: echo, version: v2")
    }${pod(slowPod, "app: slow")}${
      pod(wp, "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none", "waypoint")
    }${service("echo", ECHO, "app: echo")}${service("echo-v1", V1, "version: v1")}${
      service("echo-v2", V2, "version: v2")
    }${service("echo-slow", SLOW, "app: slow")}${ROUTES}`,
  });
  const tokenA = await control.addNode(nodeA.name);
  const tokenB = await control.addNode(nodeB.name);
  assert.deepEqual(await control.reportRedirected(tokenA, "threads", clients), { accepted: CLIENTS });
  assert.deepEqual(await control.reportRedirected(tokenB, "threads", [v1, v2, slowPod]), { accepted: 3 });
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
  for (const [z, pods] of [[zA, clients], [zB, [v1, v2, slowPod]]] as const) {
    for (const p of pods) {
      const info = { name: p.name, namespace: "threads", serviceAccount: p.name };
      assert.equal((await z.add(podUid(p, "threads"), p, info)).type, "ack", `ztunnel refused ${p.name}`);
    }
    assert.equal((await z.snapshotSent()).type, "ack");
  }
  for (const z of [zA, zB]) await z.waitForLog((l) => String(l.msg).startsWith("ready"));
  const base = freePortBase(3);
  await using waypoint = await startWaypoint({
    namespace: "threads",
    control: control.url,
    tokenFile: tokenB,
    netnsPath: wp.netnsPath,
    base,
    args: ["--workers=2"],
  });
  // The worker thread listens once it has the synced config and the certificate.
  await waypoint.waitForLog((l) => l.msg === "listener established" && l.worker === 1, 20_000);
  const access = (from: number, test: (l: Record<string, unknown>) => boolean) =>
    waypoint.lines.slice(from).filter((l) => l.msg === "request complete" && l.component === "access" && test(l));

  // One request from each client pod first: it opens that pod's HBONE connection to the waypoint (pooled for the
  // steps below) before the load, so the load's tunnels do not wait on TLS handshakes: on a busy machine a client
  // whose first bytes come later than the waypoint's 1 s sniff is passed at L4 (server.ts), not routed.
  for (const c of clients) {
    const r = await runIn(c, ["curl", "-sS", "--max-time", "10", `http://${ECHO}/to/v1/warm-up`]);
    assert.equal(r.stdout, "v1 GET /to/v1/warm-up\n", r.stderr);
  }
  // Their access-log lines are read before the first step counts its own.
  await until("the warm-up's access-log lines", () => access(0, (l) => l.path === "/to/v1/warm-up").length === CLIENTS);

  await t.step("requests on many connections: each answered by its route's backend, on both threads", async () => {
    const from = waypoint.lines.length;
    const before = await requestsTotal(base + 1);
    // The curls start 50 ms apart: 18 processes started at once on a busy machine can hold a client's first bytes
    // past the waypoint's 1 s sniff (server.ts), which then passes that connection at L4, unrouted.
    const curls = clients.flatMap((c, i) =>
      Array.from({ length: CURLS }, (_, k) =>
        staggered((i * CURLS + k) * 50, [
          c,
          "curl",
          "-sS",
          "--max-time",
          "30",
          "-w",
          "%header{x-served-by} %{http_code} %{url}\\n",
          "-o",
          "/dev/null",
          `http://${ECHO}/to/v{1,2}/${c.name}-${k}-[1-${PER_CURL / 2}]`,
        ]))
    );
    // HTTP/2 from two pods (python3-h2, h2c prior knowledge): 2 s at 50 requests a second, 4 at once.
    const h2 = clients.slice(0, 2).map((c) =>
      runIn(c, [PYTHON, H2_LOAD, ECHO, "80", "2", "50", "4", "/h2?to=v1", "/h2?to=v2"], 60_000)
    );
    const answers = await Promise.all(curls);
    const outcomes = answers.flatMap((r) => r.stdout.trim().split("\n"));
    const served = outcomes.map((o) => o.split(" ")[0]);
    assert.deepEqual(answers.map((r) => r.code), Array(curls.length).fill(0), answers.map((r) => r.stderr).join(""));
    // curl steps the last glob fastest, the first slowest: /to/v1/… for the first half of each curl's requests.
    const expected = Array.from({ length: curls.length }, () => [
      ...Array(PER_CURL / 2).fill("v1"),
      ...Array(PER_CURL / 2).fill("v2"),
    ]).flat();
    assert.equal(served.length, CLIENTS * CURLS * PER_CURL);
    const wrong = outcomes.filter((_, i) => served[i] !== expected[i]);
    assert.deepEqual(wrong, [], `${wrong.length} requests not answered by the backend of their route`);
    const loads = (await Promise.all(h2)).map((r) => {
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { sent: number; ok: number; failed: number; wrong: number };
    });
    for (const l of loads) assert.deepEqual([l.failed, l.wrong, l.ok], [0, 0, l.sent], JSON.stringify(l));
    const made = served.length + loads.reduce((n, l) => n + l.sent, 0);

    // Every request's access-log line, written by the thread that served it.
    const deadline = Date.now() + 10_000;
    while (access(from, () => true).length < made && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const lines = access(from, () => true);
    assert.equal(lines.length, made, "one access-log line per request");
    const threads = byThread(lines);
    console.log(`requests made ${made}, by thread (worker field): ${JSON.stringify(threads)}`);
    assert.deepEqual(Object.keys(threads).sort(), ["0", "1"], `both threads serve: ${JSON.stringify(threads)}`);
    assert.equal((await requestsTotal(base + 1)) - before, made, "/metrics sums istio_requests_total over threads");
  });

  await t.step("an L7 DENY added after start is enforced on every thread: 0 of M through", async () => {
    assert.match(
      (await runIn(clients[0], ["curl", "-sS", "--max-time", "10", `http://${ECHO}/secret/before`])).stdout,
      /^v1 GET \/secret\/before/,
    );
    await control.writeManifest("deny.yaml", DENY_SECRET);
    // Applied by the main thread when its own requests are refused; forwarded to the worker in the same tick.
    for (let i = 0;; i++) {
      if (waypoint.lines.some((l) => l.msg === "request complete" && l.response_code === 403)) break;
      assert.ok(i < 100, "the DENY never reached the waypoint");
      await runIn(clients[0], ["curl", "-sS", "--max-time", "10", `http://${ECHO}/secret/probe-${i}`]);
    }
    const from = waypoint.lines.length;
    const curls = clients.flatMap((c) =>
      Array.from({ length: CURLS }, (_, k) =>
        runIn(c, [
          "curl",
          "-sS",
          "--max-time",
          "30",
          "-w",
          "%{http_code}\\n",
          "-o",
          "/dev/null",
          `http://${ECHO}/secret/${c.name}-${k}-[1-10]`,
        ], 60_000))
    );
    const codes = (await Promise.all(curls)).flatMap((r) => r.stdout.trim().split("\n"));
    const through = codes.filter((c) => c !== "403");
    console.log(`DENY added after start: ${through.length} of ${codes.length} got through`);
    assert.equal(codes.length, CLIENTS * CURLS * 10);
    assert.deepEqual(through, [], "requests the DENY should have refused");
    const denied = byThread(access(from, (l) => l.response_code === 403));
    assert.deepEqual(Object.keys(denied).sort(), ["0", "1"], `both threads refuse: ${JSON.stringify(denied)}`);
  });

  // The last step: the waypoint exits in it.
  await t.step("SIGTERM with requests in flight on both threads: all answered, then it exits 0", async () => {
    const from = waypoint.lines.length;
    // A pod's tunnels ride its pooled HBONE connection, so they go to the thread that served it so far. Requests
    // on the worker thread last longer than those on the main thread: the process may exit only after them.
    const threadsOf = (pod: string) => new Set(access(0, (l) => l["src.workload"] === pod).map((l) => l.worker));
    // Pods served by the worker thread alone, else (the kernel hashed every pod's connection onto the main thread
    // at least once, 1 run in ~15) every pod the worker served: their requests run longest.
    const workerOnly = clients.filter((c) => [...threadsOf(c.name)].every((w) => w === 1)).map((c) => c.name);
    const onWorker = workerOnly.length > 0
      ? workerOnly
      : clients.filter((c) => threadsOf(c.name).has(1)).map((c) => c.name);
    const slow = clients.flatMap((c) =>
      Array.from({ length: CURLS }, (_, k) =>
        runIn(c, [
          "curl",
          "-sS",
          "--max-time",
          "20",
          "-D",
          "-",
          "-o",
          "/dev/null",
          "-w",
          "%{http_code}",
          `http://${ECHO}/slow/${onWorker.includes(c.name) ? 8000 : 4000}?${c.name}-${k}`,
        ]))
    );
    const inflight = slow.length;
    assert.ok(onWorker.length > 0, "no client pod served by the worker thread");
    // Each request in flight holds its own connection to the slow backend (HTTP/1.1): all are there once it has as
    // many, and only then is the waypoint told to stop.
    await until(
      `${inflight} requests at the backend`,
      async () => {
        const r = await runIn(slowPod, ["ss", "-Htn", "state", "established", "( sport = :8080 )"]);
        return r.stdout.trim().split("\n").filter((l) => l).length >= inflight;
      },
      20_000,
      100,
    );
    Deno.kill(waypoint.pid, "SIGTERM");
    const answers = await Promise.all(slow);
    const outcomes = answers.map((r) => `${r.code} ${r.stdout.slice(-3)} ${/connection: close/i.test(r.stdout)}`);
    const ok = outcomes.filter((o) => o === "0 200 true").length;
    console.log(`SIGTERM with ${inflight} requests in flight: ${ok} answered 200 with Connection: close`);
    assert.deepEqual(outcomes, Array(inflight).fill("0 200 true"), answers.map((r) => r.stderr).join("\n"));
    assert.equal((await waypoint.status).code, 0);
    const after = waypoint.lines.slice(from);
    const draining = after.find((l) => l.msg === "shutting down: draining");
    assert.equal(draining?.inflight, inflight, "requests in flight on all threads when the drain began");
    assert.ok(after.some((l) => l.msg === "drained: no request left in flight"));
    const held = byThread(access(from, (l) => String(l.path).startsWith("/slow/")));
    assert.deepEqual(Object.keys(held).sort(), ["0", "1"], `both threads held requests: ${JSON.stringify(held)}`);
    const bugs = waypoint.lines.filter((l) => String(l.msg).startsWith("BUG"));
    assert.deepEqual(bugs, []);
    // Two threads write to one stderr: every line of theirs arrived whole (a line cut by another's would not parse).
    const torn = waypoint.lines.filter((l) => typeof l.level !== "number");
    assert.deepEqual(torn, [], "lines that are not whole JSON log lines");
  });
});
