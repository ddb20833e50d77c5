import assert from "node:assert/strict";
import { decodeAuthorization } from "../../mesh/authorization.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload } from "../../mesh/workload.ts";
import { checkInbound, type InboundContext, type InboundRequest } from "./inbound_check.ts";

const POD = decodeWorkload({
  uid: "u-web",
  name: "web-1",
  namespace: "shop",
  serviceAccount: "web",
  addresses: ["10.0.1.2"],
  tunnelProtocol: "HBONE",
  services: { "shop/web.shop.svc.cluster.local": [{ servicePort: 80, targetPort: 8080 }] },
});
const PEER = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client");

function ctx(extra: Partial<InboundContext> = {}, policies: unknown[] = []): InboundContext {
  const state = new MeshState();
  state.workloads.upsert(POD);
  state.services.upsert(
    decodeService({
      name: "web",
      namespace: "shop",
      hostname: "web.shop.svc.cluster.local",
      ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 15006 }],
    }),
  );
  for (const p of policies) state.policies.upsert(decodeAuthorization(p));
  return { arrivedOn: "10.0.1.2", srcIp: "10.0.2.2", peer: PEER, local: POD, state, ...extra };
}
const CONNECT = (authority: string): InboundRequest => ({ method: "CONNECT", authority });

Deno.test("checkInbound() accepts a CONNECT to this pod's own address and port", () => {
  assert.deepEqual(checkInbound(CONNECT("10.0.1.2:8080"), ctx()), {
    ok: true,
    upstream: { ip: "10.0.1.2", port: 8080 },
    policy: undefined,
  });
});

Deno.test("checkInbound() refuses each bad request with upstream's status", async (t) => {
  const cases: { name: string; req: InboundRequest; ctx?: InboundContext; status: number; reason: RegExp }[] = [
    { name: "GET", req: { method: "GET", authority: "10.0.1.2:8080" }, status: 400, reason: /not CONNECT/ },
    { name: "no method", req: { authority: "10.0.1.2:8080" }, status: 400, reason: /not CONNECT/ },
    {
      name: "extended CONNECT",
      req: { ...CONNECT("10.0.1.2:8080"), protocol: "websocket" },
      status: 400,
      reason: /extended CONNECT/,
    },
    {
      name: "CONNECT with :path",
      req: { ...CONNECT("10.0.1.2:8080"), path: "/" },
      status: 400,
      reason: /:scheme or :path/,
    },
    {
      name: "CONNECT with :scheme",
      req: { ...CONNECT("10.0.1.2:8080"), scheme: "https" },
      status: 400,
      reason: /:scheme or :path/,
    },
    { name: "missing authority", req: { method: "CONNECT" }, status: 400, reason: /not ip:port/ },
    { name: "authority without a port", req: CONNECT("10.0.1.2"), status: 400, reason: /not ip:port/ },
    { name: "another pod's address", req: CONNECT("10.0.3.3:8080"), status: 400, reason: /ip mismatch/ },
    { name: "loopback", req: CONNECT("127.0.0.1:22"), status: 400, reason: /ip mismatch/ },
    { name: "[::1]", req: CONNECT("[::1]:8080"), status: 400, reason: /ip mismatch/ },
    {
      name: "unknown local workload",
      req: CONNECT("10.0.1.2:8080"),
      ctx: ctx({ local: undefined }),
      status: 503,
      reason: /no workload/,
    },
    { name: "15008", req: CONNECT("10.0.1.2:15008"), status: 503, reason: /ztunnel's own/ },
    { name: "15006", req: CONNECT("10.0.1.2:15006"), status: 503, reason: /ztunnel's own/ },
    { name: "15001", req: CONNECT("10.0.1.2:15001"), status: 503, reason: /ztunnel's own/ },
    {
      name: "a service port that maps to 15006",
      req: CONNECT("web.shop.svc.cluster.local:81"),
      status: 503,
      reason: /ztunnel's own/,
    },
    { name: "an unknown service", req: CONNECT("nope.shop.svc.cluster.local:80"), status: 503, reason: /no service/ },
    {
      name: "a port the service lacks",
      req: CONNECT("web.shop.svc.cluster.local:9"),
      status: 503,
      reason: /no service/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const r = checkInbound(c.req, c.ctx ?? ctx());
      assert.equal(r.ok, false);
      assert.equal(!r.ok && r.status, c.status);
      assert.match(!r.ok ? r.reason : "", c.reason);
    });
  }
});

Deno.test("checkInbound() maps a service hostname to this pod's target port", () => {
  const r = checkInbound(CONNECT("web.shop.svc.cluster.local:80"), ctx());
  assert.deepEqual(r.ok && r.upstream, { ip: "10.0.1.2", port: 8080 });
});

Deno.test("checkInbound() authorizes the verified peer against the pod's port: deny is 401", async (t) => {
  const onlyWaypoint = {
    name: "only-waypoint",
    namespace: "shop",
    scope: "NAMESPACE",
    action: "ALLOW",
    rules: [{ clauses: [{ matches: [{ principals: [{ exact: "cluster.local/ns/shop/sa/waypoint" }] }] }] }],
  };
  await t.step("an attacker with a valid mesh certificate but not the waypoint's identity", () => {
    const r = checkInbound(CONNECT("10.0.1.2:8080"), ctx({}, [onlyWaypoint]));
    assert.deepEqual([r.ok, !r.ok && r.status, !r.ok && r.flag], [false, 401, "DENY"]);
  });
  await t.step("the waypoint itself", () => {
    const r = checkInbound(
      CONNECT("10.0.1.2:8080"),
      ctx({ peer: SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/waypoint") }, [onlyWaypoint]),
    );
    assert.deepEqual(r.ok && r.policy, "shop/only-waypoint");
  });
  await t.step("the destination port is the app's, not 15008", () => {
    const denyApp = {
      name: "deny-8080",
      namespace: "shop",
      scope: "NAMESPACE",
      action: "DENY",
      rules: [{ clauses: [{ matches: [{ destinationPorts: [8080] }] }] }],
    };
    assert.equal(checkInbound(CONNECT("10.0.1.2:8080"), ctx({}, [denyApp])).ok, false);
    assert.equal(checkInbound(CONNECT("10.0.1.2:9090"), ctx({}, [denyApp])).ok, true);
  });
});
