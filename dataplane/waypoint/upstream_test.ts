import assert from "node:assert/strict";
import { Balancer, EJECTION_MS, type Endpoint, endpointKey, ownWorkload } from "./upstream.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload, type Service } from "../../mesh/workload.ts";

const WEB = "shop/web.shop.svc.cluster.local";
/** The waypoint: its own service is `shop/waypoint.shop.svc.cluster.local`. */
const SELF = { namespace: "shop", hostname: "waypoint.shop.svc.cluster.local", network: "" };
const OWN = `shop/${SELF.hostname}`;

function webService(extra: Record<string, unknown> = {}): Service {
  return decodeService({
    name: "web",
    namespace: "shop",
    hostname: "web.shop.svc.cluster.local",
    addresses: [{ address: "10.96.0.1" }],
    ports: [{ port: 80, targetPort: 8080 }, { port: 443, targetPortName: "https" }],
    ...extra,
  });
}

/** An endpoint of web named `uid` at `ip`; `extra` overrides fields of the workload document. */
function endpoint(state: MeshState, uid: string, ip: string, extra: Record<string, unknown> = {}) {
  state.workloads.upsert(decodeWorkload({
    uid,
    name: uid,
    namespace: "shop",
    addresses: [ip],
    tunnelProtocol: "HBONE",
    services: { [WEB]: [{ servicePort: 80, targetPort: 8080 }] },
    ...extra,
  }));
}

/** A mesh where web has the endpoints a (10.0.0.1), b (10.0.0.2) and c (10.0.0.3). */
function mesh(service = webService()): { state: MeshState; service: Service } {
  const state = new MeshState();
  state.services.upsert(service);
  // Inserted out of order: the balancer's order must not depend on it.
  endpoint(state, "c", "10.0.0.3");
  endpoint(state, "a", "10.0.0.1");
  endpoint(state, "b", "10.0.0.2");
  return { state, service };
}

/** The uids of `n` successive picks. */
function picks(b: Balancer, state: MeshState, service: Service, n: number, port = 80, tried?: Set<string>): string[] {
  return Array.from({ length: n }, () => b.pick(state, service, port, SELF, tried)?.workload.uid ?? "-");
}

/** A clock the test moves by hand. */
function fakeClock() {
  const clock = { now: 1_000, read: () => clock.now };
  return clock;
}

Deno.test("Balancer.pick() goes round robin over the endpoints in uid order", () => {
  const { state, service } = mesh();
  assert.deepEqual(picks(new Balancer(), state, service, 7), ["a", "b", "c", "a", "b", "c", "a"]);
});

Deno.test("Balancer.pick() keeps one turn per service port", () => {
  const { state, service } = mesh(
    webService({ ports: [{ port: 80, targetPort: 8080 }, { port: 81, targetPort: 81 }] }),
  );
  const b = new Balancer();
  assert.deepEqual(picks(b, state, service, 2, 80), ["a", "b"]);
  assert.deepEqual(picks(b, state, service, 1, 81), ["a"]);
  assert.deepEqual(picks(b, state, service, 1, 80), ["c"]);
});

Deno.test("Balancer.pick() gives an endpoint as many turns as its capacity", () => {
  const state = new MeshState();
  const service = webService();
  state.services.upsert(service);
  endpoint(state, "a", "10.0.0.1", { capacity: 2 });
  endpoint(state, "b", "10.0.0.2");
  endpoint(state, "z", "10.0.0.26", { capacity: 0 });
  assert.deepEqual(picks(new Balancer(), state, service, 6), ["a", "a", "b", "a", "a", "b"]);
});

Deno.test("Balancer.candidates() leaves out what cannot take traffic", async (t) => {
  const cases: [name: string, extra: Record<string, unknown>, service: Service, included: boolean][] = [
    ["a healthy endpoint", {}, webService(), true],
    ["an unhealthy endpoint", { status: "UNHEALTHY" }, webService(), false],
    [
      "an unhealthy endpoint when the service allows all",
      { status: "UNHEALTHY" },
      webService({ loadBalancing: { healthPolicy: "ALLOW_ALL" } }),
      true,
    ],
    ["capacity 0", { capacity: 0 }, webService(), false],
    ["another network", { network: "remote" }, webService(), false],
    ["no address", { addresses: [], hostname: "x.example.com" }, webService(), false],
    [
      "a mapping with target port 0",
      { services: { [WEB]: [{ servicePort: 80, targetPort: 0 }] } },
      webService(),
      false,
    ],
  ];
  for (const [name, extra, service, included] of cases) {
    await t.step(`${name} → ${included ? "in" : "out"}`, () => {
      const state = new MeshState();
      state.services.upsert(service);
      endpoint(state, "x", "10.0.0.9", extra);
      const got = new Balancer().candidates(state, service, 80, SELF).map((e) => e.workload.uid);
      assert.deepEqual(got, included ? ["x"] : []);
    });
  }
});

Deno.test("Balancer.pick() returns undefined for a port the service lacks or a service without endpoints", () => {
  const { state, service } = mesh();
  const b = new Balancer();
  assert.equal(b.pick(state, service, 8080, SELF), undefined, "8080 is a target port, not a service port");
  const empty = webService({ name: "empty", hostname: "empty.shop.svc.cluster.local" });
  state.services.upsert(empty);
  assert.equal(b.pick(state, empty, 80, SELF), undefined);
});

Deno.test("Balancer.pick() resolves the service port to the endpoint's target port", async (t) => {
  const cases: [name: string, mapping: unknown[], port: number, want: number | undefined][] = [
    ["the endpoint's own mapping wins", [{ servicePort: 80, targetPort: 9090 }], 80, 9090],
    ["no mapping for the port: the service's targetPort", [{ servicePort: 443, targetPort: 8443 }], 80, 8080],
    ["a named port the endpoint resolved", [{ servicePort: 443, targetPort: 8443 }], 443, 8443],
    ["a named port the endpoint did not resolve", [{ servicePort: 80, targetPort: 8080 }], 443, undefined],
  ];
  for (const [name, mapping, port, want] of cases) {
    await t.step(name, () => {
      const state = new MeshState();
      const service = webService();
      state.services.upsert(service);
      endpoint(state, "x", "10.0.0.9", { services: { [WEB]: mapping } });
      const e = new Balancer().pick(state, service, port, SELF);
      assert.equal(e?.port, want);
      if (e) {
        assert.equal(e.ip, "10.0.0.9");
        assert.equal(e.service, service);
        assert.equal(e.hbone, true);
      }
    });
  }
});

Deno.test("Balancer.pick() marks an endpoint outside the mesh as plain TCP", () => {
  const state = new MeshState();
  const service = webService();
  state.services.upsert(service);
  endpoint(state, "x", "10.0.0.9", { tunnelProtocol: "NONE" });
  assert.equal(new Balancer().pick(state, service, 80, SELF)?.hbone, false);
});

Deno.test("Balancer.eject() leaves an endpoint out for EJECTION_MS", () => {
  const { state, service } = mesh();
  const clock = fakeClock();
  const b = new Balancer(clock.read);
  b.eject({ ip: "10.0.0.2", port: 8080 });
  assert.deepEqual(picks(b, state, service, 4), ["a", "c", "a", "c"]);
  clock.now += EJECTION_MS - 1;
  assert.ok(!picks(b, state, service, 4).includes("b"), "b came back before EJECTION_MS");
  clock.now += 1;
  assert.ok(picks(b, state, service, 3).includes("b"), "b did not come back after EJECTION_MS");
});

Deno.test("Balancer.eject() is per endpoint ip:port", () => {
  const { state, service } = mesh();
  const b = new Balancer(fakeClock().read);
  b.eject({ ip: "10.0.0.2", port: 9999 });
  assert.deepEqual(picks(b, state, service, 3), ["a", "b", "c"]);
});

Deno.test("Balancer.pick() brings every endpoint back when all are ejected", () => {
  const { state, service } = mesh();
  const b = new Balancer(fakeClock().read);
  for (const ip of ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) b.eject({ ip, port: 8080 });
  assert.deepEqual(picks(b, state, service, 3).sort(), ["a", "b", "c"]);
});

Deno.test("Balancer.pick() avoids the endpoints already tried when it can", async (t) => {
  const key = (ip: string) => endpointKey({ ip, port: 8080 });
  await t.step("one tried: never picked again", () => {
    const { state, service } = mesh();
    const tried = new Set([key("10.0.0.1")]);
    assert.deepEqual(picks(new Balancer(), state, service, 4, 80, tried), ["b", "c", "b", "c"]);
  });
  await t.step("all but one tried: that one", () => {
    const { state, service } = mesh();
    const tried = new Set([key("10.0.0.1"), key("10.0.0.3")]);
    assert.deepEqual(picks(new Balancer(), state, service, 3, 80, tried), ["b", "b", "b"]);
  });
  await t.step("all tried: round robin over all again", () => {
    const { state, service } = mesh();
    const tried = new Set(["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(key));
    assert.deepEqual(picks(new Balancer(), state, service, 3, 80, tried), ["a", "b", "c"]);
  });
  await t.step("an ejected endpoint stays out even when the others were tried", () => {
    const { state, service } = mesh();
    const b = new Balancer(fakeClock().read);
    b.eject({ ip: "10.0.0.1", port: 8080 });
    const tried = new Set([key("10.0.0.2"), key("10.0.0.3")]);
    const got: (Endpoint | undefined)[] = [
      b.pick(state, service, 80, SELF, tried),
      b.pick(state, service, 80, SELF, tried),
    ];
    assert.ok(got.every((e) => e && e.workload.uid !== "a"), "an ejected endpoint was picked");
  });
});

// ---- locality: the waypoint ranks from its own workload ------------------------------------------------------

const PREFER_CLOSE = { routingPreference: ["NETWORK", "REGION", "ZONE", "SUBZONE"], mode: "FAILOVER" };
const ONLY_CLOSE = { routingPreference: ["NETWORK", "REGION", "ZONE", "SUBZONE"], mode: "STRICT" };
const at = (zone: string, region = "r1") => ({ locality: { region, zone } });

/**
 * web with `loadBalancing`, endpoints a (zone z1), b (z2), c (region r2), and the waypoint's own workloads (an
 * endpoint of its own service each) at the given localities.
 */
function zoned(loadBalancing: Record<string, unknown>, ...own: Record<string, unknown>[]) {
  const { state, service } = { state: new MeshState(), service: webService({ loadBalancing }) };
  state.services.upsert(service);
  endpoint(state, "c", "10.0.0.3", at("z9", "r2"));
  endpoint(state, "b", "10.0.0.2", at("z2"));
  endpoint(state, "a", "10.0.0.1", at("z1"));
  own.forEach((extra, i) =>
    endpoint(state, `waypoint-${i}`, `10.0.9.${i + 1}`, {
      services: { [OWN]: [{ servicePort: 15008, targetPort: 15008 }] },
      ...extra,
    })
  );
  return { state, service };
}

Deno.test("ownWorkload() is the waypoint's workload when the state places it without doubt", async (t) => {
  const prefs = ["REGION", "ZONE"] as const;
  const cases: [name: string, own: Record<string, unknown>[], want: string | undefined][] = [
    ["none in the state", [], undefined],
    ["one replica", [at("z1")], "waypoint-0"],
    ["replicas in the same zone (another node): the first", [
      { ...at("z1"), node: "n1" },
      { ...at("z1"), node: "n2" },
    ], "waypoint-0"],
    ["replicas in different zones: unknown", [at("z1"), at("z2")], undefined],
  ];
  for (const [name, own, want] of cases) {
    await t.step(name, () => {
      const { state } = zoned(PREFER_CLOSE, ...own);
      assert.equal(ownWorkload(SELF, state, prefs)?.uid, want);
    });
  }
  await t.step("replicas on different nodes are unknown when NODE is preferred", () => {
    const { state } = zoned(PREFER_CLOSE, { ...at("z1"), node: "n1" }, { ...at("z1"), node: "n2" });
    assert.equal(ownWorkload(SELF, state, ["ZONE", "NODE"]), undefined);
  });
});

Deno.test("Balancer.pick() ranks the endpoints by the waypoint's own locality", async (t) => {
  const cases: [name: string, lb: Record<string, unknown>, own: Record<string, unknown>[], want: string[]][] = [
    ["no preference: round robin over all", {}, [at("z1")], ["a", "b", "c", "a"]],
    ["PreferClose from z1: a only", PREFER_CLOSE, [at("z1")], ["a", "a", "a", "a"]],
    ["PreferClose from z2: b only", PREFER_CLOSE, [at("z2")], ["b", "b", "b", "b"]],
    ["PreferClose from r1's zone z3: the region, a and b", PREFER_CLOSE, [at("z3")], ["a", "b", "a", "b"]],
    ["PreferClose from r3: no match at all, all of them", PREFER_CLOSE, [at("z1", "r3")], ["a", "b", "c", "a"]],
    ["STRICT from z2: b only", ONLY_CLOSE, [at("z2")], ["b", "b", "b", "b"]],
    ["STRICT from z3: nothing matches every scope", ONLY_CLOSE, [at("z3")], ["-", "-"]],
    ["PreferClose, own workload unknown: all of them", PREFER_CLOSE, [], ["a", "b", "c", "a"]],
    ["STRICT, own workload unknown: none", ONLY_CLOSE, [], ["-", "-"]],
    ["STRICT, replicas in two zones: none", ONLY_CLOSE, [at("z1"), at("z2")], ["-", "-"]],
  ];
  for (const [name, lb, own, want] of cases) {
    await t.step(name, () => {
      const { state, service } = zoned(lb, ...own);
      assert.deepEqual(picks(new Balancer(), state, service, want.length), want);
    });
  }
});

Deno.test("Balancer.pick() fails over to the next locality when the closest endpoints are all ejected", async (t) => {
  const key = (ip: string) => endpointKey({ ip, port: 8080 });
  await t.step("PreferClose: a ejected, then the region's b; b ejected too, then c", () => {
    const { state, service } = zoned(PREFER_CLOSE, at("z1"));
    const b = new Balancer(fakeClock().read);
    b.eject({ ip: "10.0.0.1", port: 8080 });
    assert.deepEqual(picks(b, state, service, 2), ["b", "b"]);
    b.eject({ ip: "10.0.0.2", port: 8080 });
    assert.deepEqual(picks(b, state, service, 2), ["c", "c"]);
  });
  await t.step("PreferClose: all ejected, the closest comes back (panic), not a farther one", () => {
    const { state, service } = zoned(PREFER_CLOSE, at("z1"));
    const b = new Balancer(fakeClock().read);
    for (const ip of ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) b.eject({ ip, port: 8080 });
    assert.deepEqual(picks(b, state, service, 2), ["a", "a"]);
  });
  await t.step("STRICT: a ejected, a still (never out of the zone)", () => {
    const { state, service } = zoned(ONLY_CLOSE, at("z1"));
    const b = new Balancer(fakeClock().read);
    b.eject({ ip: "10.0.0.1", port: 8080 });
    assert.deepEqual(picks(b, state, service, 2), ["a", "a"]);
  });
  await t.step("a tried endpoint does not move a retry to a farther group", () => {
    const { state, service } = zoned(PREFER_CLOSE, at("z1"));
    assert.deepEqual(picks(new Balancer(), state, service, 2, 80, new Set([key("10.0.0.1")])), ["a", "a"]);
  });
});

Deno.test("Balancer.candidates() lists the closest group first and follows the waypoint to a new zone", () => {
  const b = new Balancer();
  const first = zoned(PREFER_CLOSE, at("z2"));
  assert.deepEqual(b.candidates(first.state, first.service, 80, SELF).map((e) => e.workload.uid), ["b", "a", "c"]);
  // A new config (the waypoint rescheduled to z1) is a new state: the groups are computed again.
  const moved = zoned(PREFER_CLOSE, at("z1"));
  assert.deepEqual(b.candidates(moved.state, moved.service, 80, SELF).map((e) => e.workload.uid), ["a", "b", "c"]);
});
