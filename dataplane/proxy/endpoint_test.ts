import assert from "node:assert/strict";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload, type LoadBalancing, type Service } from "../../mesh/workload.ts";
import { eligibleEndpoints, localityGroups, pickEndpoint } from "./endpoint.ts";

const WEB = "shop/web.shop.svc.cluster.local";

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

function mesh(service: Service, endpoints: [uid: string, extra: Record<string, unknown>][]): MeshState {
  const state = new MeshState();
  state.services.upsert(service);
  endpoints.forEach(([uid, extra], i) =>
    state.workloads.upsert(decodeWorkload({
      uid,
      name: uid,
      namespace: "shop",
      addresses: [`10.0.0.${i + 1}`],
      tunnelProtocol: "HBONE",
      services: { [WEB]: [{ servicePort: 80, targetPort: 8080 }] },
      ...extra,
    }))
  );
  return state;
}

Deno.test("eligibleEndpoints() keeps what may take traffic, with its target port", async (t) => {
  const allowAll = webService({ loadBalancing: { healthPolicy: "ALLOW_ALL" } });
  const cases: [name: string, service: Service, port: number, extra: Record<string, unknown>, want: number[]][] = [
    ["a healthy endpoint", webService(), 80, {}, [8080]],
    ["an unhealthy endpoint", webService(), 80, { status: "UNHEALTHY" }, []],
    ["an unhealthy endpoint when the service allows all", allowAll, 80, { status: "UNHEALTHY" }, [8080]],
    ["another network", webService(), 80, { network: "remote" }, []],
    ["no address", webService(), 80, { addresses: [], hostname: "x.example.com" }, []],
    [
      "a mapping with target port 0",
      webService(),
      80,
      { services: { [WEB]: [{ servicePort: 80, targetPort: 0 }] } },
      [],
    ],
    ["a port the service lacks", webService(), 8080, {}, []],
    ["a named port this endpoint resolves", webService(), 443, {
      services: { [WEB]: [{ servicePort: 443, targetPort: 8443 }] },
    }, [8443]],
    ["a named port this endpoint does not resolve", webService(), 443, {}, []],
    // Capacity is for the choosing functions, not for eligibility.
    ["capacity 0", webService(), 80, { capacity: 0 }, [8080]],
  ];
  for (const [name, service, port, extra, want] of cases) {
    await t.step(name, () => {
      const got = eligibleEndpoints(service, port, mesh(service, [["x", extra]]), "");
      assert.deepEqual(got.map((e) => e.targetPort), want);
    });
  }
});

Deno.test("pickEndpoint() chooses among the eligible endpoints by locality, then capacity", async (t) => {
  const here = { locality: { region: "r1", zone: "z1" } };
  const failover = webService({ loadBalancing: { routingPreference: ["REGION", "ZONE"], mode: "FAILOVER" } });
  const strict = webService({ loadBalancing: { routingPreference: ["REGION", "ZONE"], mode: "STRICT" } });
  const cases: [name: string, service: Service, endpoints: [string, Record<string, unknown>][], want?: string][] = [
    ["no preference: any, by capacity", webService(), [["a", { capacity: 0 }], ["b", {}]], "b"],
    ["failover: the same zone first", failover, [["far", { locality: { region: "r2", zone: "z9" } }], [
      "near",
      here,
    ]], "near"],
    ["failover: the same region when no zone matches", failover, [
      ["far", { locality: { region: "r2", zone: "z9" } }],
      ["region", { locality: { region: "r1", zone: "z2" } }],
    ], "region"],
    ["strict: nothing when no endpoint matches every scope", strict, [["region", {
      locality: { region: "r1", zone: "z2" },
    }]], undefined],
    ["an ineligible endpoint is never chosen", webService(), [["sick", { status: "UNHEALTHY" }]], undefined],
  ];
  for (const [name, service, endpoints, want] of cases) {
    await t.step(name, () => {
      const state = mesh(service, endpoints);
      const source = decodeWorkload({ uid: "src", name: "src", namespace: "shop", addresses: ["10.1.0.1"], ...here });
      const got = pickEndpoint(source, service, 80, state, { random: () => 0 });
      assert.equal(got?.workload.uid, want);
    });
  }
});

Deno.test("localityGroups() groups the endpoints by locality rank from the source, best first", async (t) => {
  const w = (uid: string, extra: Record<string, unknown> = {}) =>
    decodeWorkload({ uid, name: uid, namespace: "shop", addresses: ["10.0.0.1"], ...extra });
  const source = w("src", { locality: { region: "r1", zone: "z1", subzone: "s1" }, node: "n1" });
  const options = [
    w("zone", { locality: { region: "r1", zone: "z1", subzone: "s2" }, node: "n2" }),
    w("far", { locality: { region: "r2", zone: "z9" } }),
    w("subzone", { locality: { region: "r1", zone: "z1", subzone: "s1" }, node: "n2" }),
    w("region", { locality: { region: "r1", zone: "z2" } }),
    w("zone2", { locality: { region: "r1", zone: "z1", subzone: "s3" } }),
  ].map((workload) => ({ workload }));
  const lb = (routingPreference: string[], mode = "FAILOVER") =>
    ({ routingPreference, mode, healthPolicy: "ONLY_HEALTHY" }) as LoadBalancing;
  const close = ["NETWORK", "REGION", "ZONE", "SUBZONE"];
  const cases: [name: string, source: typeof source | undefined, lb: LoadBalancing | undefined, want: string[][]][] = [
    ["no load balancing: one group", source, undefined, [["zone", "far", "subzone", "region", "zone2"]]],
    ["no preference: one group", source, lb([]), [["zone", "far", "subzone", "region", "zone2"]]],
    ["PreferClose: subzone, zone, region, the rest", source, lb(close), [
      ["subzone"],
      ["zone", "zone2"],
      ["region"],
      ["far"],
    ]],
    ["unspecified mode ranks as failover", source, lb(close, "UNSPECIFIED_MODE"), [
      ["subzone"],
      ["zone", "zone2"],
      ["region"],
      ["far"],
    ]],
    // region's zone differs first, so its matching region no longer counts: it ranks with far.
    ["a rank stops at the first miss: ZONE then REGION", source, lb(["ZONE", "REGION"]), [
      ["zone", "subzone", "zone2"],
      ["far", "region"],
    ]],
    ["NODE", source, lb(["NODE"]), [["zone", "far", "subzone", "region", "zone2"]]],
    ["STRICT: only what matches every scope", source, lb(close, "STRICT"), [["subzone"]]],
    ["STRICT on ZONE: the zone's", source, lb(["REGION", "ZONE"], "STRICT"), [["zone", "subzone", "zone2"]]],
    ["STRICT, nothing on the node: nothing", source, lb(["NODE"], "STRICT"), []],
    ["source unknown, no preference: one group", undefined, lb([]), [[
      "zone",
      "far",
      "subzone",
      "region",
      "zone2",
    ]]],
    ["source unknown, PreferClose: one unranked group", undefined, lb(close), [[
      "zone",
      "far",
      "subzone",
      "region",
      "zone2",
    ]]],
    ["source unknown, STRICT: nothing (fail safe)", undefined, lb(close, "STRICT"), []],
  ];
  for (const [name, src, balancing, want] of cases) {
    await t.step(name, () => {
      const got = localityGroups(src, balancing, options).map((g) => g.map((o) => o.workload.uid));
      assert.deepEqual(got, want);
    });
  }
  await t.step("no options: no group", () => {
    assert.deepEqual(localityGroups(source, lb(close), []), []);
  });
});
