import assert from "node:assert/strict";
import { type ExchangePlan, planExchange, type PlanRequest } from "./exchange.ts";
import type { Session } from "./session.ts";
import { op, policy, rule } from "./test_util.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import type { L7Policy } from "../../mesh/l7.ts";
import { decodeHttpRoute } from "../../mesh/l7.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";

const WEB = "shop/web.shop.svc.cluster.local";
const WEB_V2 = "shop/web-v2.shop.svc.cluster.local";
const CLIENT = SpiffeId.of("cluster.local", "shop", "client");

/** web (80, 8081) and web-v2 (80, declared grpc), and optionally a route on web port 80 with `rules`. */
function mesh(rules?: unknown[]): MeshState {
  const state = new MeshState();
  for (const name of ["web", "web-v2"]) {
    state.services.upsert(decodeService({
      name,
      namespace: "shop",
      hostname: `${name}.shop.svc.cluster.local`,
      addresses: [{ address: name === "web" ? "10.96.0.1" : "10.96.0.2" }],
      ports: [{ port: 80, targetPort: 8080, ...(name === "web-v2" ? { appProtocol: "grpc" } : {}) }, {
        port: 8081,
        targetPort: 8081,
      }],
    }));
  }
  if (rules) {
    state.routes.upsert(
      decodeHttpRoute({ name: "web-route", namespace: "shop", parents: [{ service: WEB, port: 80 }], rules }),
    );
  }
  return state;
}

function toService(state: MeshState, port = 80): Session {
  const service = state.services.byKey(WEB)!;
  return {
    peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
    destination: { kind: "service", service, vip: "10.96.0.1", port, appProtocol: "http" },
    authority: `10.96.0.1:${port}`,
  };
}

function toWorkload(): Session {
  const db = decodeWorkload({ uid: "db", name: "db", namespace: "shop", addresses: ["10.0.0.7"] });
  return {
    peer: { identity: CLIENT, ip: "10.0.0.100", port: 40000 },
    destination: { kind: "workload", workload: db, ip: "10.0.0.7", port: 5000 },
    authority: "10.0.0.7:5000",
  };
}

const GET = (path: string): PlanRequest => ({ method: "GET", path, query: "", host: "web", headers: [] });

/** The plan's outcome in one line: `answer STATUS FLAGS [route]` or `forward KIND TARGET:PORT appProtocol`. */
function summary(p: ExchangePlan): string {
  if (p.kind === "answer") return `answer ${p.status} ${p.flags}${p.route ? ` ${p.route}` : ""}`;
  const target = p.backend.kind === "endpoint"
    ? `endpoint ${p.backend.endpoint.ip}:${p.backend.endpoint.port}`
    : `service ${p.backend.service.name}:${p.backend.port}`;
  return `forward ${target} ${p.appProtocol ?? "-"}${p.route ? ` ${p.route}` : ""}`;
}

Deno.test("planExchange() authorizes, routes and picks a backend without I/O", async (t) => {
  const denyAdmin = policy("DENY", [rule({ to: [op({ paths: ["/admin"] })] })]);
  const dryDeny = policy("DENY", [rule({})], "dry", true);
  const toV2 = [{
    matches: [{ path: { type: "PathPrefix", value: "/v2" } }],
    backends: [{ service: WEB_V2, port: 80 }],
  }];
  const cases: [
    name: string,
    session: (s: MeshState) => Session,
    state: MeshState,
    policies: L7Policy[],
    path: string,
    want: string,
  ][] = [
    ["no route: the service itself", toService, mesh(), [], "/", "forward service web:80 -"],
    ["a workload destination: that endpoint", () => toWorkload(), mesh(), [], "/", "forward endpoint 10.0.0.7:5000 -"],
    ["denied by policy", toService, mesh(), [denyAdmin], "/admin", "answer 403 RBAC"],
    ["a policy that does not match", toService, mesh(), [denyAdmin], "/", "forward service web:80 -"],
    ["a dry-run deny only reports", toService, mesh(), [dryDeny], "/", "forward service web:80 -"],
    [
      "a route's backend, with its port's protocol",
      toService,
      mesh(toV2),
      [],
      "/v2/x",
      "forward service web-v2:80 grpc shop/web-route",
    ],
    ["no rule of the route matches", toService, mesh(toV2), [], "/other", "answer 404 NR"],
    [
      "a route on another port does not apply",
      (s) => toService(s, 8081),
      mesh(toV2),
      [],
      "/v2",
      "forward service web:8081 -",
    ],
    [
      "a backend that does not exist",
      toService,
      mesh([{ backends: [{ service: "shop/gone.shop.svc.cluster.local", port: 80 }] }]),
      [],
      "/",
      "answer 500 NR shop/web-route",
    ],
    [
      "no backend with weight",
      toService,
      mesh([{ backends: [{ service: WEB_V2, port: 80, weight: 0 }] }]),
      [],
      "/",
      "answer 500 NR shop/web-route",
    ],
  ];
  for (const [name, session, state, policies, path, want] of cases) {
    await t.step(name, () => {
      const plan = planExchange(session(state), GET(path), policies, state, () => 0);
      assert.equal(summary(plan), want);
    });
  }
  await t.step("dry-run results are reported with either outcome", () => {
    const state = mesh();
    const plan = planExchange(toService(state), GET("/admin"), [dryDeny, denyAdmin], state, () => 0);
    assert.deepEqual(plan.dryRun, [{ policy: "shop/dry", wouldAllow: false }]);
    assert.equal(plan.kind, "answer");
  });
});
