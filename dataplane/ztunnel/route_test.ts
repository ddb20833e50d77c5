import assert from "node:assert/strict";
import { asOriginalDst } from "../proxy/addr.ts";
import pino from "pino";
import { ClientConfig } from "../../mesh/control_client.ts";
import type { StreamMessage } from "../../mesh/protocol/config_stream.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload, type Service, type Workload } from "../../mesh/workload.ts";
import { localityRank, weightedPick } from "../proxy/endpoint.ts";
import { buildRequest, type OutboundRequest } from "./route.ts";

const SVC_HOST = "web.shop.svc.cluster.local";
const SVC_KEY = `shop/${SVC_HOST}`;

function workload(name: string, ip: string, extra: Record<string, unknown> = {}): Workload {
  return decodeWorkload({
    uid: `Kubernetes//Pod/shop/${name}`,
    name,
    namespace: "shop",
    serviceAccount: name,
    addresses: [ip],
    node: "node1",
    tunnelProtocol: "HBONE",
    ...extra,
  });
}
function service(extra: Record<string, unknown> = {}): Service {
  return decodeService({
    name: "web",
    namespace: "shop",
    hostname: SVC_HOST,
    addresses: [{ address: "10.96.0.10" }],
    ports: [{ port: 80, targetPort: 8080 }],
    ...extra,
  });
}
function endpoint(name: string, ip: string, extra: Record<string, unknown> = {}): Workload {
  return workload(name, ip, { services: { [SVC_KEY]: [{ servicePort: 80, targetPort: 8080 }] }, ...extra });
}
function meshOf(...items: (Workload | Service)[]): MeshState {
  const s = new MeshState();
  for (const x of items) "uid" in x ? s.workloads.upsert(x) : s.services.upsert(x);
  return s;
}

const client = workload("client", "10.0.1.2");
const fixed = (v: number) => ({ random: () => v });

function hbone(r: OutboundRequest) {
  assert.equal(r.kind, "hbone", JSON.stringify(r));
  return r as Extract<OutboundRequest, { kind: "hbone" }>;
}

Deno.test("buildRequest() refuses loopback to ztunnel's own ports as SelfCall, and passes other loopback ports", async (t) => {
  for (const port of [15001, 15006, 15008]) {
    await t.step(`127.0.0.1:${port}`, () => {
      const r = buildRequest(client, asOriginalDst({ ip: "127.0.0.1", port }), meshOf(client), fixed(0));
      assert.deepEqual([r.kind, r.kind === "refused" && r.reason], ["refused", "SelfCall"]);
    });
  }
  await t.step(
    "[::1]:15008",
    () =>
      assert.equal(buildRequest(client, asOriginalDst({ ip: "::1", port: 15008 }), meshOf(), fixed(0)).kind, "refused"),
  );
  await t.step(
    "127.0.0.1:8080 passes through",
    () =>
      assert.equal(
        buildRequest(client, asOriginalDst({ ip: "127.0.0.1", port: 8080 }), meshOf(), fixed(0)).kind,
        "passthrough",
      ),
  );
});

Deno.test("buildRequest() passes an unknown address through to the original destination", () => {
  const r = buildRequest(client, asOriginalDst({ ip: "192.0.2.7", port: 443 }), meshOf(client), fixed(0));
  assert.deepEqual(r, { kind: "passthrough", target: { ip: "192.0.2.7", port: 443 } });
});

Deno.test("buildRequest() sends an in-mesh pod HBONE to podIP:15008 with authority podIP:port and its identity", () => {
  const server = workload("server", "10.0.2.2");
  const r = hbone(
    buildRequest(client, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), meshOf(client, server), fixed(0)),
  );
  assert.deepEqual(r.hboneAddr, { ip: "10.0.2.2", port: 15008 });
  assert.deepEqual(r.authority, { ip: "10.0.2.2", port: 8080 });
  assert.deepEqual(r.expectedIdentities.map(String), ["spiffe://cluster.local/ns/shop/sa/server"]);
  assert.equal(r.viaWaypoint, false);
});

Deno.test("buildRequest() sends an out-of-mesh pod plain TCP", () => {
  const legacy = workload("legacy", "10.0.2.3", { tunnelProtocol: "NONE" });
  const r = buildRequest(client, asOriginalDst({ ip: "10.0.2.3", port: 5432 }), meshOf(client, legacy), fixed(0));
  assert.equal(r.kind, "tcp");
  assert.deepEqual(r.kind === "tcp" && r.target, { ip: "10.0.2.3", port: 5432 });
});

Deno.test("buildRequest() load-balances a service VIP to an endpoint's target port, with the service's SANs", () => {
  const a = endpoint("a", "10.0.2.2");
  const svc = service({ subjectAltNames: ["spiffe://cluster.local/ns/shop/sa/legacy-web", "not-a-spiffe-id"] });
  const r = hbone(
    buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), meshOf(client, a, svc), fixed(0)),
  );
  assert.deepEqual(r.hboneAddr, { ip: "10.0.2.2", port: 15008 });
  assert.deepEqual(r.authority, { ip: "10.0.2.2", port: 8080 }, "the target port, not the service port");
  assert.deepEqual(r.expectedIdentities.map(String), [
    "spiffe://cluster.local/ns/shop/sa/a",
    "spiffe://cluster.local/ns/shop/sa/legacy-web",
  ]);
  assert.equal(r.destinationService?.hostname, SVC_HOST);
});

Deno.test("buildRequest() spreads a service over its endpoints, weighted by capacity", () => {
  const a = endpoint("a", "10.0.2.2", { capacity: 1 });
  const b = endpoint("b", "10.0.3.2", { capacity: 3 });
  const state = meshOf(client, a, b, service());
  const count = new Map<string, number>();
  for (let i = 0; i < 400; i++) {
    const r = hbone(
      buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), state, { random: () => (i + 0.5) / 400 }),
    );
    count.set(r.destinationWorkload.name, (count.get(r.destinationWorkload.name) ?? 0) + 1);
  }
  assert.deepEqual(Object.fromEntries(count), { a: 100, b: 300 });
});

Deno.test("buildRequest() resolves a named port per endpoint", () => {
  const svc = service({ ports: [{ port: 80, targetPortName: "http" }] });
  const a = workload("a", "10.0.2.2", { services: { [SVC_KEY]: [{ servicePort: 80, targetPort: 9000 }] } });
  const r = hbone(
    buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), meshOf(client, a, svc), fixed(0)),
  );
  assert.equal(r.authority.port, 9000);
});

Deno.test("buildRequest() skips endpoints that cannot serve, and refuses with NoHealthyUpstream when none can", async (t) => {
  const cases: { name: string; endpoints: Workload[]; svc?: Service; port?: number; want: string | undefined }[] = [
    { name: "no endpoints", endpoints: [], want: undefined },
    {
      name: "unhealthy skipped",
      endpoints: [endpoint("sick", "10.0.2.2", { status: "UNHEALTHY" }), endpoint("ok", "10.0.2.3")],
      want: "ok",
    },
    { name: "only unhealthy", endpoints: [endpoint("sick", "10.0.2.2", { status: "UNHEALTHY" })], want: undefined },
    {
      name: "ALLOW_ALL admits unhealthy",
      endpoints: [endpoint("sick", "10.0.2.2", { status: "UNHEALTHY" })],
      svc: service({ loadBalancing: { healthPolicy: "ALLOW_ALL" } }),
      want: "sick",
    },
    { name: "a port the service does not have", endpoints: [endpoint("a", "10.0.2.2")], port: 81, want: undefined },
    {
      name: "named port the endpoint did not resolve",
      endpoints: [workload("a", "10.0.2.2", { services: { [SVC_KEY]: [] } })],
      svc: service({ ports: [{ port: 80, targetPortName: "http" }] }),
      want: undefined,
    },
    {
      name: "capacity 0 is never chosen",
      endpoints: [endpoint("zero", "10.0.2.2", { capacity: 0 }), endpoint("one", "10.0.2.3")],
      want: "one",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const r = buildRequest(
        client,
        asOriginalDst({ ip: "10.96.0.10", port: c.port ?? 80 }),
        meshOf(client, c.svc ?? service(), ...c.endpoints),
        fixed(0.99),
      );
      if (c.want === undefined) {
        assert.deepEqual([r.kind, r.kind === "refused" && r.reason], ["refused", "NoHealthyUpstream"]);
      } else assert.equal(hbone(r).destinationWorkload.name, c.want);
    });
  }
});

Deno.test("buildRequest() sends service traffic to its waypoint, with the VIP as authority", () => {
  const wp = workload("waypoint", "10.0.5.5");
  const svc = service({ waypoint: { address: { address: "10.0.5.5" } } });
  const r = hbone(
    buildRequest(
      client,
      asOriginalDst({ ip: "10.96.0.10", port: 80 }),
      meshOf(client, wp, svc, endpoint("a", "10.0.2.2")),
      fixed(0),
    ),
  );
  assert.equal(r.viaWaypoint, true);
  assert.deepEqual(r.hboneAddr, { ip: "10.0.5.5", port: 15008 });
  assert.deepEqual(r.authority, { ip: "10.96.0.10", port: 80 });
  assert.deepEqual(r.expectedIdentities.map(String), ["spiffe://cluster.local/ns/shop/sa/waypoint"]);
});

Deno.test("buildRequest() finds a waypoint by hostname among its service's endpoints", () => {
  const wpHost = "waypoint.shop.svc.cluster.local";
  const wpSvc = decodeService({
    name: "waypoint",
    namespace: "shop",
    hostname: wpHost,
    addresses: [{ address: "10.96.0.99" }],
    ports: [{ port: 15008, targetPort: 15008 }],
  });
  const wp = workload("waypoint", "10.0.5.5", {
    services: { [`shop/${wpHost}`]: [{ servicePort: 15008, targetPort: 15008 }] },
  });
  const svc = service({ waypoint: { hostname: { namespace: "shop", hostname: wpHost } } });
  const r = hbone(
    buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), meshOf(client, wp, wpSvc, svc), fixed(0)),
  );
  assert.equal(r.destinationWorkload.name, "waypoint");
  assert.equal(r.viaWaypoint, true);
});

Deno.test("buildRequest() lets the waypoint itself go on to the service's endpoints", () => {
  const wp = workload("waypoint", "10.0.5.5");
  const svc = service({ waypoint: { address: { address: "10.0.5.5" } } });
  const r = hbone(
    buildRequest(
      wp,
      asOriginalDst({ ip: "10.96.0.10", port: 80 }),
      meshOf(wp, svc, endpoint("a", "10.0.2.2")),
      fixed(0),
    ),
  );
  assert.equal(r.viaWaypoint, false);
  assert.equal(r.destinationWorkload.name, "a");
});

Deno.test("buildRequest() sends traffic for a pod with a waypoint through it, unless the source is that waypoint", () => {
  const wp = workload("waypoint", "10.0.5.5");
  const server = workload("server", "10.0.2.2", { waypoint: { address: { address: "10.0.5.5" } } });
  const state = meshOf(client, wp, server);
  const via = hbone(buildRequest(client, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), state, fixed(0)));
  assert.equal(via.viaWaypoint, true);
  assert.deepEqual(via.authority, { ip: "10.0.2.2", port: 8080 });
  const onward = hbone(buildRequest(wp, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), state, fixed(0)));
  assert.equal(onward.viaWaypoint, false);
  assert.deepEqual(onward.hboneAddr, { ip: "10.0.2.2", port: 15008 });
});

Deno.test("buildRequest() refuses rather than skip a waypoint it cannot find", () => {
  const svc = service({ waypoint: { address: { address: "10.0.5.5" } } });
  const r = buildRequest(
    client,
    asOriginalDst({ ip: "10.96.0.10", port: 80 }),
    meshOf(client, svc, endpoint("a", "10.0.2.2")),
    fixed(0),
  );
  assert.deepEqual([r.kind, r.kind === "refused" && r.reason], ["refused", "UnknownWaypoint"]);
});

Deno.test("buildRequest() sends a PASSTHROUGH service to the original destination", () => {
  const svc = service({ loadBalancing: { mode: "PASSTHROUGH" } });
  const r = buildRequest(
    client,
    asOriginalDst({ ip: "10.96.0.10", port: 80 }),
    meshOf(client, svc, endpoint("a", "10.0.2.2")),
    fixed(0),
  );
  assert.deepEqual(r, { kind: "passthrough", target: { ip: "10.96.0.10", port: 80 } });
});

Deno.test("locality preference keeps the best-ranked endpoints; STRICT keeps only full matches", async (t) => {
  const here = workload("client", "10.0.1.2", { locality: { region: "eu", zone: "a" } });
  const sameZone = endpoint("same-zone", "10.0.2.2", { locality: { region: "eu", zone: "a" } });
  const sameRegion = endpoint("same-region", "10.0.2.3", { locality: { region: "eu", zone: "b" } });
  const far = endpoint("far", "10.0.2.4", { locality: { region: "us", zone: "a" } });
  await t.step("localityRank counts consecutive matching scopes", () => {
    assert.equal(localityRank(here, sameZone, ["REGION", "ZONE"]), 2);
    assert.equal(localityRank(here, sameRegion, ["REGION", "ZONE"]), 1);
    assert.equal(localityRank(here, far, ["REGION", "ZONE"]), 0, "a zone match after a region miss does not count");
  });
  await t.step("failover prefers the nearest", () => {
    const svc = service({ loadBalancing: { routingPreference: ["REGION", "ZONE"], mode: "FAILOVER" } });
    for (const r of [0, 0.5, 0.99]) {
      assert.equal(
        hbone(
          buildRequest(
            here,
            asOriginalDst({ ip: "10.96.0.10", port: 80 }),
            meshOf(here, svc, sameZone, sameRegion, far),
            fixed(r),
          ),
        ).destinationWorkload.name,
        "same-zone",
      );
    }
    const r = buildRequest(
      here,
      asOriginalDst({ ip: "10.96.0.10", port: 80 }),
      meshOf(here, svc, sameRegion, far),
      fixed(0.99),
    );
    assert.equal(hbone(r).destinationWorkload.name, "same-region");
  });
  await t.step("STRICT refuses when no endpoint matches every scope", () => {
    const svc = service({ loadBalancing: { routingPreference: ["REGION", "ZONE"], mode: "STRICT" } });
    const r = buildRequest(
      here,
      asOriginalDst({ ip: "10.96.0.10", port: 80 }),
      meshOf(here, svc, sameRegion, far),
      fixed(0),
    );
    assert.equal(r.kind, "refused");
  });
});

Deno.test("weightedPick() never picks capacity 0 and returns nothing when all are 0", () => {
  const zero = endpoint("z", "10.0.2.2", { capacity: 0 });
  assert.equal(weightedPick([zero], () => 0.5), undefined);
  assert.equal(weightedPick([zero, endpoint("one", "10.0.2.3")], () => 0)?.name, "one");
});

Deno.test("buildRequest() refuses rather than go around a waypoint an update it could not decode may have added", async (t) => {
  // The attack: the control plane puts a waypoint in front of a service (or a pod) in an update that also holds a
  // field this ztunnel does not know. Refused, the version held stays, without the waypoint, and traffic went
  // straight to the endpoints, around the waypoint's L7 policy.
  type Message = Exclude<StreamMessage, { type: "ping" }>;
  const wp = workload("waypoint", "10.0.5.5");
  const server = endpoint("a", "10.0.2.2");
  const svc = service();
  const resource = (kind: "Workload" | "Service", name: string, body: unknown) => ({ kind, name, version: "1", body });
  const held = (): ClientConfig => {
    const config = new ClientConfig(pino({ level: "silent" }));
    config.apply({
      type: "snapshot",
      version: 1,
      unchanged: 0,
      removed: [],
      resources: [
        ...[client, wp, server].map((w) => resource("Workload", w.uid, w)),
        resource("Service", SVC_KEY, svc),
      ],
    } as Message);
    return config;
  };
  const waypoint = { waypoint: { address: { address: "10.0.5.5" } }, future: true };
  const update = (r: ReturnType<typeof resource>): Message => ({
    type: "delta",
    version: 2,
    resources: [r],
    removed: [],
  });
  await t.step("a service whose update did not decode", () => {
    const config = held();
    assert.equal(config.apply(update(resource("Service", SVC_KEY, { ...svc, ...waypoint }))).refused, 1);
    const r = buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), config.state, fixed(0));
    assert.deepEqual([r.kind, r.kind === "refused" && r.reason], ["refused", "UnknownWaypoint"], JSON.stringify(r));
    assert.match((r as { detail: string }).detail, /did not decode/);
    config.apply(update(resource("Service", SVC_KEY, { ...svc, waypoint: waypoint.waypoint })));
    assert.equal(
      hbone(buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), config.state, fixed(0))).viaWaypoint,
      true,
    );
  });
  await t.step("a pod whose update did not decode", () => {
    const config = held();
    assert.equal(config.apply(update(resource("Workload", server.uid, { ...server, ...waypoint }))).refused, 1);
    const r = buildRequest(client, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), config.state, fixed(0));
    assert.deepEqual([r.kind, r.kind === "refused" && r.reason], ["refused", "UnknownWaypoint"], JSON.stringify(r));
    config.apply({ type: "delta", version: 3, resources: [], removed: [{ kind: "Workload", name: server.uid }] });
    assert.equal(
      buildRequest(client, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), config.state, fixed(0)).kind,
      "passthrough",
    );
  });
  await t.step("a service or pod that decodes is not refused", () => {
    const config = held();
    assert.equal(
      hbone(buildRequest(client, asOriginalDst({ ip: "10.96.0.10", port: 80 }), config.state, fixed(0))).viaWaypoint,
      false,
    );
    assert.equal(
      hbone(buildRequest(client, asOriginalDst({ ip: "10.0.2.2", port: 8080 }), config.state, fixed(0))).viaWaypoint,
      false,
    );
  });
});
