import assert from "node:assert/strict";
import pino from "pino";
import { ClientConfig, ControlConnection, ControlError, runConfigClient, runNodePodsClient } from "./control_client.ts";
import { logger } from "./log.ts";
import { STREAM_PATH } from "./protocol/config_stream.ts";
import { NODE_PODS_PATH, type NodePodsView } from "./protocol/node_pods.ts";

const body = (name: string, ip: string) => ({
  uid: `Kubernetes//Pod/shop/${name}`,
  name,
  namespace: "shop",
  addresses: [ip],
});

Deno.test("ClientConfig applies snapshots and deltas; a resource that does not decode keeps its previous version", () => {
  const config = new ClientConfig(capturingLogger().log);
  const applied = config.apply({
    type: "snapshot",
    version: 1,
    unchanged: 0,
    removed: [],
    resources: [
      { kind: "Workload", name: "Kubernetes//Pod/shop/a", version: "v1", body: body("a", "10.0.0.1") },
      {
        kind: "Service",
        name: "shop/web.shop.svc.cluster.local",
        version: "s1",
        body: {
          name: "web",
          namespace: "shop",
          hostname: "web.shop.svc.cluster.local",
          addresses: [{ address: "10.96.0.1" }],
          ports: [{ port: 80, targetPort: 8080 }],
        },
      },
    ],
  });
  assert.deepEqual(applied, { type: "snapshot", version: 1, updated: 2, removed: 0, refused: 0 });
  const delta = config.apply({
    type: "delta",
    version: 2,
    removed: [{ kind: "Service", name: "shop/web.shop.svc.cluster.local" }],
    resources: [{
      kind: "Workload",
      name: "Kubernetes//Pod/shop/a",
      version: "v2",
      body: { ...body("a", "10.0.0.1"), addresses: ["not-an-ip"] },
    }],
  });
  assert.equal(delta.refused, 1);
  assert.deepEqual(config.state.workloads.byUid("Kubernetes//Pod/shop/a")!.addresses, ["10.0.0.1"]);
  assert.equal(config.state.services.size, 0);
  assert.deepEqual(config.known(), { "Workload/Kubernetes//Pod/shop/a": "v1" }, "the refused version is not claimed");
});

Deno.test("ClientConfig applies and removes HTTP routes and L7 policies; a body filed under another name is refused", () => {
  const config = new ClientConfig(capturingLogger().log);
  const web = "shop/web.shop.svc.cluster.local";
  const routeBody = { name: "web", namespace: "shop", parents: [{ service: web }], rules: [] };
  const policyBody = {
    name: "get-only",
    namespace: "shop",
    targets: [{ kind: "Gateway", namespace: "shop", name: "waypoint" }],
    rules: [{ to: [{ methods: ["GET"] }] }],
  };
  const applied = config.apply({
    type: "snapshot",
    version: 1,
    unchanged: 0,
    removed: [],
    resources: [
      { kind: "HttpRoute", name: "shop/web", version: "r1", body: routeBody },
      { kind: "L7Policy", name: "shop/get-only", version: "p1", body: policyBody },
      { kind: "HttpRoute", name: "shop/other", version: "r1", body: routeBody },
      { kind: "L7Policy", name: "shop/bad", version: "p1", body: { ...policyBody, name: "bad", targets: [] } },
    ],
  });
  assert.deepEqual(applied, { type: "snapshot", version: 1, updated: 2, removed: 0, refused: 2 });
  assert.deepEqual(config.state.routes.forService(web).map((r) => r.name), ["web"]);
  // The refused policy (no target) fails closed: a deny-all of every request, until a version that decodes arrives.
  assert.deepEqual(config.state.l7Policies.forTarget("Gateway", "shop", "waypoint").map((p) => [p.name, p.action]), [
    ["bad", "DENY"],
    ["get-only", "ALLOW"],
  ]);
  config.apply({
    type: "delta",
    version: 2,
    resources: [],
    removed: [{ kind: "HttpRoute", name: "shop/web" }, { kind: "L7Policy", name: "shop/get-only" }],
  });
  assert.deepEqual([config.state.routes.size, config.state.l7Policies.size], [0, 0]);
  assert.deepEqual(config.known(), {});
});

/** A connection that answers each request with the next of `answers`, and remembers what was asked. */
class FakeConnection extends ControlConnection {
  readonly requests: { method: string; path: string; body: unknown }[] = [];
  closed = false;
  constructor(readonly answers: ((signal: AbortSignal) => Response)[]) {
    super({ url: "https://control.invalid:15012", tokenFile: "/nonexistent/token", caFile: "/nonexistent/root" });
  }
  override request(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<Response> {
    this.requests.push({ method, path, body });
    const answer = this.answers.shift();
    if (!answer) return Promise.reject(new Error("BUG: the test gave no answer for this request"));
    try {
      return Promise.resolve(answer(signal!));
    } catch (error) {
      return Promise.reject(error);
    }
  }
  override close(): void {
    this.closed = true;
  }
}

/** A stream of `lines`; it ends after them, or with `open`, stays open until `open` aborts (as fetch's body). */
const ndjson = (lines: unknown[], open?: AbortSignal) =>
  new Response(
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const l of lines) {
          c.enqueue(new TextEncoder().encode(`${typeof l === "string" ? l : JSON.stringify(l)}\n`));
        }
        if (open) open.addEventListener("abort", () => c.error(open.reason), { once: true });
        else c.close();
      },
    }),
  );

/** A logger whose lines the test reads. */
function capturingLogger(): { log: ReturnType<typeof logger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  return { log: pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s)) }), lines };
}

const view = (version: string, names: string[]): NodePodsView => ({
  version,
  node: "node-a",
  pods: names.map((name) => ({ namespace: "shop", name, serviceAccount: "default", enrolled: true, reason: "r" })),
  ambientNamespaces: ["shop"],
});

Deno.test("runNodePodsClient() hands over each view, reconnects with backoff, and resets it after a message", async () => {
  const controller = new AbortController();
  const views: NodePodsView[] = [];
  const connected: boolean[] = [];
  let lastSeen: () => void = () => {};
  const sawLast = new Promise<void>((r) => lastSeen = r);
  const connection = new FakeConnection([
    () => {
      throw new ControlError("the control plane refused our node token: revoked", 401);
    },
    () => {
      throw new ControlError("cannot reach the control plane at https://control.invalid:15012: refused");
    },
    () => ndjson([{ type: "pods", ...view("v1", ["a"]) }, { type: "ping" }, { type: "pods", ...view("v2", []) }]),
    () => ndjson(['{"type":"nope"}']),
    (signal) => ndjson([{ type: "pods", ...view("v3", ["b"]) }], signal),
  ]);
  const { log, lines } = capturingLogger();
  const run = runNodePodsClient({
    connection,
    log,
    signal: controller.signal,
    onView: (v) => {
      views.push(v);
      if (v.version === "v3") lastSeen();
    },
    onConnected: (c) => connected.push(c),
  });
  await sawLast;
  controller.abort();
  await run;
  assert.deepEqual(views, [view("v1", ["a"]), view("v2", []), view("v3", ["b"])]);
  assert.deepEqual(connection.requests, Array(5).fill({ method: "POST", path: NODE_PODS_PATH, body: {} }));
  assert.deepEqual(connected, [false, false, true, false, true, false, true]);
  assert.ok(connection.closed, "the connection is released at the end");
  const retries = lines.filter((l) => l.retryInMs !== undefined).map((l) => [l.level, l.retryInMs, l.msg]);
  assert.deepEqual(retries, [
    [50, 10, "the control plane refused our node token: revoked; keeping the last view of the node's pods"],
    [
      40,
      20,
      "cannot reach the control plane at https://control.invalid:15012: refused; keeping the last view of the node's pods",
    ],
    [40, 20, 'message.type: expected one of pods, ping, got "nope"; keeping the last view of the node\'s pods'],
  ], "10 ms doubling; back to 10 ms (then 20) after a stream that brought views");
  assert.ok(
    lines.some((l) =>
      l.msg === "the control plane closed the node-pods stream; keeping the last view of the node's pods"
    ),
  );
});

Deno.test("runConfigClient() resumes with the versions it holds after the stream breaks", async () => {
  const controller = new AbortController();
  let resumed: () => void = () => {};
  const resumedOnce = new Promise<void>((r) => resumed = r);
  const snapshot = {
    type: "snapshot",
    version: 1,
    unchanged: 0,
    removed: [],
    resources: [{ kind: "Workload", name: "Kubernetes//Pod/shop/a", version: "v1", body: body("a", "10.0.0.1") }],
  };
  const connection = new FakeConnection([
    () => ndjson([snapshot]),
    (signal) => {
      resumed();
      return ndjson([], signal);
    },
  ]);
  const config = new ClientConfig(logger("test"));
  const run = runConfigClient({
    connection,
    config,
    log: capturingLogger().log,
    signal: controller.signal,
    onChange: () => {},
  });
  await resumedOnce;
  controller.abort();
  await run;
  assert.deepEqual(connection.requests.map((r) => [r.path, r.body]), [
    [STREAM_PATH, { known: {} }],
    [STREAM_PATH, { known: { "Workload/Kubernetes//Pod/shop/a": "v1" } }],
  ]);
  assert.equal(config.state.workloads.size, 1, "the config is kept across the break");
});
