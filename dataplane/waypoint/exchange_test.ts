import assert from "node:assert/strict";
import { Readable } from "node:stream";
import pino from "pino";
import {
  DEFAULT_CONNECT_RETRIES,
  type Exchange,
  type Handled,
  handleExchange,
  RequestBodyError,
  type Upstream,
  type UpstreamRequest,
  type UpstreamResponse,
  type WaypointContext,
  withClientCert,
} from "./exchange.ts";
import type { Session, WaypointSelf } from "./session.ts";
import { WaypointMetrics } from "./telemetry.ts";
import { Balancer, ConnectFailure, type Endpoint, type Tunnels } from "./upstream.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { decodeHttpRoute, decodeL7Policy } from "../../mesh/l7.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload, type Service } from "../../mesh/workload.ts";

const WEB = "shop/web.shop.svc.cluster.local";
const WEB_V2 = "shop/web-v2.shop.svc.cluster.local";
const EMPTY = "shop/empty.shop.svc.cluster.local";
const CLIENT = SpiffeId.of("cluster.local", "shop", "client");
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const self: WaypointSelf = {
  name: "waypoint",
  namespace: "shop",
  hostname: "waypoint.shop.svc.cluster.local",
  identity: SpiffeId.of("cluster.local", "shop", "waypoint"),
  network: "",
};

/**
 * web (ports 80 → 8080 and 8081 → 8081) with endpoints web-a 10.0.0.1 and web-b 10.0.0.2; web-v2 (80 → 8080)
 * with web-v2-a 10.0.1.1; empty (80) without endpoints; and the workload db 10.0.0.7.
 */
function mesh(): MeshState {
  const state = new MeshState();
  const service = (name: string) =>
    state.services.upsert(decodeService({
      name,
      namespace: "shop",
      hostname: `${name}.shop.svc.cluster.local`,
      addresses: [{ address: name === "web" ? "10.96.0.1" : name === "web-v2" ? "10.96.0.2" : "10.96.0.3" }],
      ports: [{ port: 80, targetPort: 8080 }, { port: 8081, targetPort: 8081 }],
      waypoint: { hostname: { namespace: "shop", hostname: self.hostname } },
    }));
  service("web");
  service("web-v2");
  service("empty");
  const endpoint = (uid: string, ip: string, key: string) =>
    state.workloads.upsert(decodeWorkload({
      uid,
      name: uid,
      namespace: "shop",
      addresses: [ip],
      tunnelProtocol: "HBONE",
      serviceAccount: uid.replace(/-[ab]$/, ""),
      services: { [key]: [{ servicePort: 80, targetPort: 8080 }, { servicePort: 8081, targetPort: 8081 }] },
    }));
  endpoint("web-a", "10.0.0.1", WEB);
  endpoint("web-b", "10.0.0.2", WEB);
  endpoint("web-v2-a", "10.0.1.1", WEB_V2);
  state.workloads.upsert(decodeWorkload({ uid: "db", name: "db", namespace: "shop", addresses: ["10.0.0.7"] }));
  return state;
}

/** A deterministic `random()` (mulberry32). */
function seeded(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const silent = pino({ level: "silent" });

function context(state: MeshState, balancer = new Balancer()): WaypointContext {
  return {
    self,
    state: () => state,
    balancer,
    tunnels: {} as Tunnels, // the fake upstream opens no tunnel
    metrics: new WaypointMetrics(),
    log: silent,
    access: silent,
    random: seeded(7),
  };
}

/** A tunnel from the client to `service` port `port`. */
function session(state: MeshState, key = WEB, port = 80): Session {
  const service = state.services.byKey(key)!;
  const vip = service.addresses[0].address;
  return {
    peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
    destination: { kind: "service", service, vip, port, appProtocol: "http" },
    authority: `${vip}:${port}`,
  };
}

function request(path = "/", extra: Partial<Exchange> = {}): Exchange {
  return {
    method: "GET",
    path,
    query: "",
    host: "web.shop.svc.cluster.local",
    authority: "web.shop.svc.cluster.local",
    headers: [],
    body: null,
    grpc: false,
    ...extra,
  };
}

const body = (text: string) => Readable.from([new TextEncoder().encode(text)]);

/** One call of the fake upstream, with the body it read. */
interface Attempt {
  endpoint: Endpoint;
  request: UpstreamRequest;
  body: string;
  signal: AbortSignal;
}

/**
 * What the fake does on an attempt: answer a status, fail to connect (before reading the body, or after), never
 * answer, or reset.
 */
type Behaviour = number | "refuse" | "refuse-after-body" | "hang" | "reset";

/** An upstream that records every attempt and behaves as `plan` says for each. */
class FakeUpstream implements Upstream {
  readonly attempts: Attempt[] = [];
  /** Indexes of the attempts whose response was discarded. */
  readonly discarded: number[] = [];
  #plan: (a: Attempt, index: number) => Behaviour;

  constructor(plan: (a: Attempt, index: number) => Behaviour) {
    this.#plan = plan;
  }

  async send(endpoint: Endpoint, request: UpstreamRequest, signal: AbortSignal): Promise<UpstreamResponse> {
    const index = this.attempts.length;
    const attempt: Attempt = { endpoint, request, body: "", signal };
    this.attempts.push(attempt);
    const behaviour = this.#plan(attempt, index);
    if (behaviour === "refuse") throw new ConnectFailure(`connection refused by ${endpoint.ip}`);
    if (request.body) attempt.body = await readText(request.body);
    if (behaviour === "refuse-after-body") throw new ConnectFailure(`connection to ${endpoint.ip} lost`);
    if (behaviour === "reset") throw new Error("stream reset by peer");
    if (behaviour === "hang") {
      // A real upstream gives up when the signal aborts; until then it never answers.
      return await new Promise((_, reject) => {
        if (signal.aborted) return reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    }
    return {
      status: behaviour,
      headers: [],
      body: null,
      trailers: () => undefined,
      discard: () => this.discarded.push(index),
    };
  }
}

async function readText(r: Readable): Promise<string> {
  const chunks: Uint8Array[] = [];
  for await (const c of r) chunks.push(c);
  return new TextDecoder().decode(Buffer.concat(chunks));
}

/** Runs one exchange and clears its timers, as the protocol adapters do. */
async function handle(
  state: MeshState,
  upstream: Upstream,
  x = request(),
  opts: { session?: Session; ctx?: WaypointContext } = {},
): Promise<Handled> {
  const handled = await handleExchange(opts.session ?? session(state), x, upstream, opts.ctx ?? context(state));
  handled.done();
  return handled;
}

/** The status of the answer, local or from the endpoint. */
function statusOf(h: Handled): number {
  if (h.answer.kind === "cancelled") return 0;
  return h.answer.kind === "local" ? h.answer.status : h.answer.response.status;
}

function localBody(h: Handled): string {
  assert.equal(h.answer.kind, "local", "expected a local answer");
  return h.answer.kind === "local" ? h.answer.body : "";
}

/** A route named `web-route` on `parent` (service key and optional port) with `rules`. */
function addRoute(state: MeshState, rules: unknown[], parent: { service?: string; port?: number } = {}) {
  state.routes.upsert(decodeHttpRoute({
    name: "web-route",
    namespace: "shop",
    parents: [{ service: WEB, ...parent }],
    rules,
  }));
}

function addPolicy(state: MeshState, doc: Record<string, unknown>) {
  state.l7Policies.upsert(decodeL7Policy({ namespace: "shop", ...doc }));
}

Deno.test("handleExchange() forwards to an endpoint of the service when no route applies", async () => {
  const state = mesh();
  const up = new FakeUpstream(() => 200);
  const h = await handle(state, up, request("/items", { query: "page=2", method: "POST" }));
  assert.equal(statusOf(h), 200);
  assert.equal(h.flags, "-");
  assert.equal(h.attempts, 1);
  assert.equal(h.route, undefined);
  assert.equal(h.service?.hostname, "web.shop.svc.cluster.local");
  assert.equal(h.servicePort, 80);
  assert.equal(up.attempts.length, 1);
  const [a] = up.attempts;
  assert.equal(a.endpoint.workload.uid, "web-a");
  assert.equal(a.endpoint.port, 8080);
  assert.equal(a.request.method, "POST");
  assert.equal(a.request.authority, "web.shop.svc.cluster.local");
  assert.equal(a.request.target, "/items?page=2");
  assert.equal(h.facts.reporter, "waypoint");
  assert.equal(h.facts.sourceIdentity, CLIENT);
  assert.equal(h.facts.destination?.uid, "web-a");
  assert.equal(h.facts.destinationIdentity?.toString(), "spiffe://cluster.local/ns/shop/sa/web");
});

Deno.test("handleExchange() sends a workload destination to that workload, without routes", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB_V2, port: 80 }] }]);
  const db = state.workloads.byUid("db")!;
  const s: Session = {
    peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
    destination: { kind: "workload", workload: db, ip: "10.0.0.7", port: 5000 },
    authority: "10.0.0.7:5000",
  };
  const up = new FakeUpstream(() => 200);
  const h = await handle(state, up, request(), { session: s });
  assert.equal(statusOf(h), 200);
  assert.equal(up.attempts[0].endpoint.workload.uid, "db");
  assert.equal(up.attempts[0].endpoint.ip, "10.0.0.7");
  assert.equal(up.attempts[0].endpoint.port, 5000);
  assert.equal(up.attempts[0].endpoint.hbone, false);
  assert.equal(h.facts.service, undefined);
  assert.equal(h.facts.destination?.uid, "db");
});

Deno.test("handleExchange() answers 403 RBAC: access denied when an L7 policy denies", async (t) => {
  const denyAdmin = (kind: string, name: string) => ({
    name: "deny-admin",
    targets: [{ kind, namespace: "shop", name }],
    action: "DENY",
    rules: [{ to: [{ paths: ["/admin/*"] }] }],
  });
  const cases: [name: string, policy: Record<string, unknown>, path: string, denied: boolean][] = [
    ["a DENY attached to the service", denyAdmin("Service", "web"), "/admin/users", true],
    ["a DENY attached to the waypoint's Gateway", denyAdmin("Gateway", "waypoint"), "/admin/users", true],
    ["a DENY attached to the service, another path", denyAdmin("Service", "web"), "/public", false],
    ["a DENY attached to another service", denyAdmin("Service", "web-v2"), "/admin/users", false],
    ["a DENY attached to another Gateway", denyAdmin("Gateway", "other-waypoint"), "/admin/users", false],
    [
      "an ALLOW for another principal",
      {
        name: "allow-bob",
        targets: [{ kind: "Service", namespace: "shop", name: "web" }],
        action: "ALLOW",
        rules: [{ from: [{ principals: ["cluster.local/ns/shop/sa/bob"] }] }],
      },
      "/",
      true,
    ],
    [
      "an ALLOW for the client's principal",
      {
        name: "allow-client",
        targets: [{ kind: "Service", namespace: "shop", name: "web" }],
        action: "ALLOW",
        rules: [{ from: [{ principals: ["cluster.local/ns/shop/sa/client"] }] }],
      },
      "/",
      false,
    ],
  ];
  for (const [name, policy, path, denied] of cases) {
    await t.step(`${name}, ${path} → ${denied ? 403 : 200}`, async () => {
      const state = mesh();
      addPolicy(state, policy);
      const up = new FakeUpstream(() => 200);
      const h = await handle(state, up, request(path));
      if (denied) {
        assert.equal(statusOf(h), 403);
        assert.equal(localBody(h), "RBAC: access denied");
        assert.equal(h.flags, "RBAC");
        assert.equal(h.attempts, 0);
        assert.equal(up.attempts.length, 0, "a denied request reached an endpoint");
      } else {
        assert.equal(statusOf(h), 200);
      }
    });
  }
});

Deno.test("handleExchange() denies before routing: a denied request to an unroutable path is 403", async () => {
  const state = mesh();
  addRoute(state, [{ matches: [{ path: { type: "Exact", value: "/only" } }], backends: [{ service: WEB, port: 80 }] }]);
  addPolicy(state, {
    name: "deny-all",
    targets: [{ kind: "Service", namespace: "shop", name: "web" }],
    action: "DENY",
    rules: [{}],
  });
  const h = await handle(state, new FakeUpstream(() => 200), request("/nowhere"));
  assert.equal(statusOf(h), 403);
  assert.equal(h.flags, "RBAC");
});

Deno.test("handleExchange() routes by the rule of a route whose parent is the service on this port", async (t) => {
  const rules = [
    { matches: [{ path: { type: "PathPrefix", value: "/v2" } }], backends: [{ service: WEB_V2, port: 80 }] },
    { backends: [{ service: WEB, port: 80 }] },
  ];
  const cases: [name: string, parent: { port?: number }, port: number, path: string, want: string][] = [
    ["parent on port 80, /v2/items", { port: 80 }, 80, "/v2/items", "web-v2-a"],
    ["parent on port 80, /items", { port: 80 }, 80, "/items", "web-a"],
    ["parent without a port, request on 8081", {}, 8081, "/v2/items", "web-v2-a"],
  ];
  for (const [name, parent, port, path, want] of cases) {
    await t.step(`${name} → ${want}`, async () => {
      const state = mesh();
      addRoute(state, rules, parent);
      const up = new FakeUpstream(() => 200);
      const h = await handle(state, up, request(path), { session: session(state, WEB, port) });
      assert.equal(statusOf(h), 200);
      assert.equal(up.attempts[0].endpoint.workload.uid, want);
      assert.equal(h.route, "shop/web-route");
      assert.equal(h.service?.hostname, want === "web-v2-a" ? "web-v2.shop.svc.cluster.local" : WEB.slice(5));
      assert.equal(h.servicePort, 80, "the backend's port");
      assert.equal(h.facts.service, h.service);
    });
  }
});

Deno.test("handleExchange() sends a port no route attaches to the service itself", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB_V2, port: 80 }] }], { port: 8081 });
  const up = new FakeUpstream(() => 200);
  const h = await handle(state, up, request("/"), { session: session(state, WEB, 80) });
  assert.equal(statusOf(h), 200);
  assert.equal(up.attempts[0].endpoint.workload.uid, "web-a");
  assert.equal(up.attempts[0].endpoint.port, 8080);
  assert.equal(h.route, undefined);
});

Deno.test("handleExchange() answers 404 NR when no rule of the routes matches", async () => {
  const state = mesh();
  addRoute(state, [{ matches: [{ path: { type: "Exact", value: "/only" } }], backends: [{ service: WEB, port: 80 }] }]);
  const up = new FakeUpstream(() => 200);
  const h = await handle(state, up, request("/other"));
  assert.equal(statusOf(h), 404);
  assert.equal(localBody(h), "route not found");
  assert.equal(h.flags, "NR");
  assert.equal(up.attempts.length, 0);
});

Deno.test("handleExchange() answers 500 when the rule's backend cannot be used", async (t) => {
  const cases: [name: string, backends: unknown[]][] = [
    ["a backend with a problem", [{ service: WEB_V2, port: 80, problem: "backend not permitted by a ReferenceGrant" }]],
    ["a backend service that does not exist", [{ service: "shop/gone.shop.svc.cluster.local", port: 80 }]],
    ["no backend", []],
    ["only backends of weight 0", [{ service: WEB_V2, port: 80, weight: 0 }]],
  ];
  for (const [name, backends] of cases) {
    await t.step(name, async () => {
      const state = mesh();
      addRoute(state, [{ backends }]);
      const up = new FakeUpstream(() => 200);
      const h = await handle(state, up, request("/"));
      assert.equal(statusOf(h), 500);
      assert.equal(h.flags, "NR");
      assert.equal(h.route, "shop/web-route");
      assert.equal(up.attempts.length, 0);
    });
  }
});

Deno.test("handleExchange() answers 503 UH when the service has no endpoint", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: EMPTY, port: 80 }] }]);
  const up = new FakeUpstream(() => 200);
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 503);
  assert.equal(localBody(h), "no healthy upstream");
  assert.equal(h.flags, "UH");
  assert.equal(h.attempts, 0);
});

Deno.test("handleExchange() retries a connect failure on the other endpoint and ejects the first", async () => {
  const state = mesh();
  const ctx = context(state);
  const up = new FakeUpstream((a) => (a.endpoint.ip === "10.0.0.1" ? "refuse" : 200));
  const h = await handle(state, up, request("/"), { ctx });
  assert.equal(statusOf(h), 200);
  assert.equal(h.attempts, 2);
  assert.equal(h.flags, "-");
  assert.deepEqual(up.attempts.map((a) => a.endpoint.ip), ["10.0.0.1", "10.0.0.2"]);
  assert.equal(h.answer.kind === "upstream" && h.answer.endpoint.ip, "10.0.0.2");
  assert.equal(h.facts.destination?.uid, "web-b");
  // Passive health: the next requests leave the refusing endpoint out.
  const next = new FakeUpstream(() => 200);
  for (let i = 0; i < 3; i++) await handle(state, next, request("/"), { ctx });
  assert.deepEqual(next.attempts.map((a) => a.endpoint.ip), ["10.0.0.2", "10.0.0.2", "10.0.0.2"]);
});

Deno.test("handleExchange() answers 503 URX,UF when every endpoint refuses", async () => {
  const state = mesh();
  const up = new FakeUpstream(() => "refuse");
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 503);
  assert.equal(h.flags, "URX,UF");
  assert.match(localBody(h), /^upstream connect error or disconnect\/reset before headers\. reset reason: /);
  assert.match(localBody(h), /connection refused/);
  assert.equal(up.attempts.length, DEFAULT_CONNECT_RETRIES + 1);
  assert.deepEqual(new Set(up.attempts.map((a) => a.endpoint.ip)), new Set(["10.0.0.1", "10.0.0.2"]));
});

Deno.test("handleExchange() reports every try in attempts when connects fail", async (t) => {
  await t.step("a service with two endpoints, three tries", async () => {
    const state = mesh();
    const up = new FakeUpstream(() => "refuse");
    const h = await handle(state, up, request("/"));
    assert.equal(up.attempts.length, 3);
    assert.equal(h.attempts, up.attempts.length);
  });
  await t.step("a workload destination, three tries", async () => {
    const state = mesh();
    const db = state.workloads.byUid("db")!;
    const s: Session = {
      peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
      destination: { kind: "workload", workload: db, ip: "10.0.0.7", port: 5000 },
      authority: "10.0.0.7:5000",
    };
    const up = new FakeUpstream(() => "refuse");
    const h = await handle(state, up, request("/"), { session: s });
    assert.equal(statusOf(h), 503);
    assert.equal(up.attempts.length, 3);
    assert.equal(h.attempts, up.attempts.length);
  });
});

Deno.test("handleExchange() answers 503 UF without URX when the route allows no retry", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], retry: { attempts: 0, codes: [], backoffMs: 1 } }]);
  const up = new FakeUpstream(() => "refuse");
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 503);
  assert.equal(h.flags, "UF");
  assert.equal(up.attempts.length, 1);
});

Deno.test("handleExchange() does not resend a streamed body that a failed connect consumed", async () => {
  const state = mesh();
  // No retry on codes, so the body streams through rather than being held.
  const up = new FakeUpstream((_, i) => (i === 0 ? "refuse-after-body" : 200));
  const h = await handle(state, up, request("/", { method: "POST", body: body("hello") }));
  assert.equal(statusOf(h), 503);
  assert.equal(h.flags, "URX,UF");
  assert.deepEqual(up.attempts.map((a) => a.body), ["hello"], "the consumed body was sent again");
});

Deno.test("handleExchange() retries a listed response code, replaying the body, and discards the retried response", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], retry: { attempts: 1, codes: [503], backoffMs: 1 } }]);
  const up = new FakeUpstream((_, i) => (i === 0 ? 503 : 200));
  const h = await handle(state, up, request("/", { method: "POST", body: body("hello") }));
  assert.equal(statusOf(h), 200);
  assert.equal(h.attempts, 2);
  assert.equal(h.flags, "-");
  assert.deepEqual(up.attempts.map((a) => a.body), ["hello", "hello"]);
  assert.deepEqual(up.discarded, [0]);
  assert.deepEqual(up.attempts.map((a) => a.endpoint.ip), ["10.0.0.1", "10.0.0.2"], "the retry goes elsewhere");
});

Deno.test("handleExchange() returns the last listed code when the retries run out", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], retry: { attempts: 1, codes: [503], backoffMs: 1 } }]);
  const up = new FakeUpstream(() => 503);
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 503);
  assert.equal(h.answer.kind, "upstream");
  assert.equal(h.attempts, 2);
  assert.deepEqual(up.discarded, [0], "the answered response was discarded");
});

Deno.test("handleExchange() does not retry a code the route does not list", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], retry: { attempts: 2, codes: [503], backoffMs: 1 } }]);
  const up = new FakeUpstream(() => 500);
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 500);
  assert.equal(up.attempts.length, 1);
  assert.deepEqual(up.discarded, []);
});

Deno.test("handleExchange() answers 503 UC, without retrying, when the endpoint resets", async () => {
  const state = mesh();
  const up = new FakeUpstream(() => "reset");
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 503);
  assert.equal(h.flags, "UC");
  assert.equal(up.attempts.length, 1);
});

Deno.test("handleExchange() answers 504 UT when the request timeout runs out first", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], timeoutMs: 30 }]);
  const up = new FakeUpstream(() => "hang");
  const started = performance.now();
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 504);
  assert.equal(localBody(h), "upstream request timeout");
  assert.equal(h.flags, "UT");
  assert.equal(h.attempts, 1);
  assert.equal(h.deadline.aborted, true);
  assert.equal(up.attempts[0].signal.aborted, true, "the attempt was not told to stop");
  assert.ok(performance.now() - started < 2_000);
});

Deno.test("handleExchange() limits each try to backendTimeoutMs and retries on the next endpoint", async () => {
  const state = mesh();
  addRoute(state, [{
    backends: [{ service: WEB, port: 80 }],
    timeoutMs: 10_000,
    backendTimeoutMs: 20,
    retry: { attempts: 1, codes: [], backoffMs: 1 },
  }]);
  const up = new FakeUpstream((_, i) => (i === 0 ? "hang" : 200));
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 200);
  assert.equal(h.attempts, 2);
  assert.equal(up.attempts[0].signal.aborted, true);
  assert.equal(up.attempts[1].signal.aborted, false);
  assert.equal(h.deadline.aborted, false);
});

Deno.test("handleExchange() answers 504 UT when every try runs out of backendTimeoutMs", async () => {
  const state = mesh();
  addRoute(state, [{
    backends: [{ service: WEB, port: 80 }],
    backendTimeoutMs: 20,
    retry: { attempts: 1, codes: [], backoffMs: 1 },
  }]);
  const up = new FakeUpstream(() => "hang");
  const h = await handle(state, up, request("/"));
  assert.equal(statusOf(h), 504);
  assert.equal(h.flags, "UT");
  assert.equal(h.attempts, 2);
  assert.equal(up.attempts.length, 2);
});

Deno.test("handleExchange() does not resend a streamed body after a try timed out", async () => {
  const state = mesh();
  // No codes are retried, so the body is streamed, not held: once a try has read it, it cannot be sent again.
  addRoute(state, [{
    backends: [{ service: WEB, port: 80 }],
    backendTimeoutMs: 20,
    retry: { attempts: 1, codes: [], backoffMs: 1 },
  }]);
  const up = new FakeUpstream((_, i) => (i === 0 ? "hang" : 200));
  const h = await handle(state, up, request("/", { method: "POST", body: body("hello") }));
  assert.equal(up.attempts[0].body, "hello");
  assert.deepEqual(up.attempts.map((a) => a.body), ["hello"], "a retry sent the consumed body, now empty");
  assert.equal(statusOf(h), 504);
  assert.equal(h.flags, "UT");
});

Deno.test("handleExchange() applies the rule's request header modifier and adds x-request-id", async (t) => {
  const rules = [{
    backends: [{ service: WEB, port: 80 }],
    requestHeaders: {
      set: [{ name: "X-Env", value: "prod" }],
      add: [{ name: "x-tag", value: "b" }],
      remove: ["x-drop"],
    },
    responseHeaders: { set: [], add: [{ name: "x-served-by", value: "waypoint" }], remove: [] },
  }];
  await t.step("modified headers and a new request id", async () => {
    const state = mesh();
    addRoute(state, rules);
    const up = new FakeUpstream(() => 200);
    const headers: [string, string][] = [["x-drop", "1"], ["x-env", "dev"], ["x-tag", "a"], ["accept", "*/*"]];
    const h = await handle(state, up, request("/", { headers }));
    const sent = up.attempts[0].request.headers;
    assert.deepEqual(sent.filter(([n]) => n !== "x-request-id" && n !== "x-forwarded-client-cert"), [
      ["x-env", "prod"],
      ["x-tag", "a"],
      ["accept", "*/*"],
      ["x-tag", "b"],
    ]);
    const ids = sent.filter(([n]) => n === "x-request-id");
    assert.equal(ids.length, 1);
    assert.match(ids[0][1], UUID);
    assert.deepEqual(h.responseHeaders, { set: [], add: [{ name: "x-served-by", value: "waypoint" }], remove: [] });
    assert.deepEqual(headers[0], ["x-drop", "1"], "the exchange's headers were changed");
  });
  await t.step("a request id the client sent is kept", async () => {
    const state = mesh();
    const up = new FakeUpstream(() => 200);
    await handle(state, up, request("/", { headers: [["x-request-id", "abc"]] }));
    const sent = up.attempts[0].request.headers.filter(([n]) => n !== "x-forwarded-client-cert");
    assert.deepEqual(sent, [["x-request-id", "abc"]]);
  });
});

Deno.test("handleExchange()'s done() clears the request timeout", async () => {
  const state = mesh();
  addRoute(state, [{ backends: [{ service: WEB, port: 80 }], timeoutMs: 20 }]);
  const h = await handleExchange(session(state), request("/"), new FakeUpstream(() => 200), context(state));
  assert.equal(statusOf(h), 200);
  h.done();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(h.deadline.aborted, false, "the deadline fired after done()");
});

Deno.test("handleExchange() leaves the service of a service destination in facts", async () => {
  const state = mesh();
  const h = await handle(state, new FakeUpstream(() => 200));
  const web: Service | undefined = h.facts.service;
  assert.equal(web?.hostname, "web.shop.svc.cluster.local");
  assert.equal(h.facts.mtls, true);
});

Deno.test("withClientCert() drops every x-forwarded-client-cert the client sent and sets the verified one", async (t) => {
  const xfcc = `By=${self.identity};URI=${CLIENT}`;
  const cases: [name: string, headers: [string, string][], want: [string, string][]][] = [
    ["none sent", [["accept", "*/*"]], [["accept", "*/*"], ["x-forwarded-client-cert", xfcc]]],
    [
      "a forged one",
      [["x-forwarded-client-cert", "By=spiffe://x;URI=spiffe://cluster.local/ns/shop/sa/admin"], ["a", "1"]],
      [["a", "1"], ["x-forwarded-client-cert", xfcc]],
    ],
    ["several", [["x-forwarded-client-cert", "a"], ["x-forwarded-client-cert", "b"]], [[
      "x-forwarded-client-cert",
      xfcc,
    ]]],
  ];
  for (const [name, headers, want] of cases) {
    await t.step(name, () => assert.deepEqual(withClientCert(headers, self.identity, CLIENT), want));
  }
});

Deno.test("handleExchange() forwards the verified x-forwarded-client-cert, and policies see that one", async () => {
  const state = mesh();
  addPolicy(state, {
    name: "allow-admin-cert",
    targets: [{ kind: "Service", namespace: "shop", name: "web" }],
    action: "ALLOW",
    rules: [{ when: [{ key: "request.headers[x-forwarded-client-cert]", values: ["*sa/admin"] }] }],
  });
  const up = new FakeUpstream(() => 200);
  const forged = "By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/shop/sa/admin";
  const h = await handle(state, up, request("/", { headers: [["x-forwarded-client-cert", forged]] }));
  assert.equal(statusOf(h), 403, "a policy matched the forged certificate header");
  state.l7Policies.remove("shop/allow-admin-cert");
  await handle(state, up, request("/", { headers: [["x-forwarded-client-cert", forged]] }));
  assert.deepEqual(up.attempts[0].request.headers.filter(([n]) => n === "x-forwarded-client-cert"), [
    ["x-forwarded-client-cert", `By=${self.identity};URI=${CLIENT}`],
  ]);
});

Deno.test("handleExchange() answers 400 DPE and ends the attempt when the request body fails", async (t) => {
  const failing = () => {
    const b = new Readable({ read() {} });
    b.push(new TextEncoder().encode("partial"));
    return b;
  };
  await t.step("while the endpoint has not answered", async () => {
    const state = mesh();
    const up = new FakeUpstream(() => "hang");
    const b = failing();
    const handled = handle(state, up, request("/", { method: "POST", body: b }));
    await new Promise((r) => setTimeout(r, 10));
    b.destroy(new Error("chunk size is not hexadecimal"));
    const h = await handled;
    assert.deepEqual([statusOf(h), h.flags, up.attempts.length], [400, "DPE", 1]);
    assert.ok(up.attempts[0].signal.reason instanceof RequestBodyError, "the attempt was not cancelled");
  });
  await t.step("before the attempt started", async () => {
    const state = mesh();
    const up = new FakeUpstream(() => "hang");
    const b = failing();
    b.destroy(new Error("chunk size is not hexadecimal"));
    const h = await handle(state, up, request("/", { method: "POST", body: b }));
    assert.deepEqual([statusOf(h), h.flags], [400, "DPE"]);
  });
  await t.step("while it is held for replay", async () => {
    const state = mesh();
    addRoute(state, [{ backends: [{ service: WEB, port: 80 }], retry: { attempts: 2, codes: [503], backoffMs: 1 } }]);
    const up = new FakeUpstream(() => 200);
    const b = failing();
    const handled = handle(state, up, request("/", { method: "POST", body: b }));
    await new Promise((r) => setTimeout(r, 10));
    b.destroy(new Error("chunk size is not hexadecimal"));
    const h = await handled;
    assert.deepEqual([statusOf(h), h.flags, up.attempts.length], [400, "DPE", 0]);
  });
});
