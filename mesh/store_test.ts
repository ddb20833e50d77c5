import assert from "node:assert/strict";
import { type Authorization, decodeAuthorization } from "./authorization.ts";
import { decodeHttpRoute, decodeL7Policy, type HttpRoute, type L7Policy } from "./l7.ts";
import { L7PolicyStore, MeshState, PolicyStore, RouteStore, ServiceStore, WorkloadStore } from "./store.ts";
import { decodeService, decodeWorkload, type Service, type Workload } from "./workload.ts";

const WEB = "default/web.default.svc.cluster.local";
const API = "shop/api.shop.svc.cluster.local";

function workload(uid: string, doc: Record<string, unknown> = {}): Workload {
  return decodeWorkload({ uid, name: uid, namespace: "default", addresses: [], hostname: `${uid}.example`, ...doc });
}

function service(name: string, namespace: string, doc: Record<string, unknown> = {}): Service {
  return decodeService({ name, namespace, hostname: `${name}.${namespace}.svc.cluster.local`, ...doc });
}

function policy(doc: Record<string, unknown>): Authorization {
  return decodeAuthorization(doc);
}

const uids = (ws: Iterable<Workload>) => [...ws].map((w) => w.uid).sort();

Deno.test("WorkloadStore indexes a workload by uid, address, hostname, node and service", () => {
  const store = new WorkloadStore();
  const w = workload("a", {
    addresses: ["10.0.0.1", "FD00::1"],
    network: "net1",
    hostname: "a.example.com",
    node: "node-1",
    services: { [WEB]: [{ servicePort: 80, targetPort: 8080 }], [API]: [{ servicePort: 90, targetPort: 90 }] },
  });
  store.upsert(w);
  assert.equal(store.size, 1);
  assert.equal(store.byUid("a"), w);
  assert.equal(store.byAddress("net1", "10.0.0.1"), w);
  assert.equal(store.byAddress("net1", "fd00::1"), w, "found by its canonical address");
  assert.equal(store.byAddress("", "10.0.0.1"), undefined, "an address is keyed by its network");
  assert.equal(store.byAddress("net1", "10.0.0.2"), undefined);
  assert.deepEqual(uids(store.byHostname("a.example.com")), ["a"]);
  assert.deepEqual(uids(store.onNode("node-1")), ["a"]);
  assert.deepEqual(uids(store.endpointsOf(WEB)), ["a"]);
  assert.deepEqual(uids(store.endpointsOf(API)), ["a"]);
  assert.deepEqual(store.endpointsOf("default/other.default.svc.cluster.local"), []);
  assert.deepEqual(store.onNode("node-2"), []);
  assert.deepEqual(store.byHostname("b.example.com"), []);
  assert.equal(store.byUid("b"), undefined);
});

Deno.test("WorkloadStore lists every workload sharing a hostname, node or service", () => {
  const store = new WorkloadStore();
  const svc = { [WEB]: [{ servicePort: 80, targetPort: 8080 }] };
  store.upsert(workload("a", { addresses: ["10.0.0.1"], node: "n1", services: svc, hostname: "vm.example" }));
  store.upsert(workload("b", { addresses: ["10.0.0.2"], node: "n1", services: svc, hostname: "vm.example" }));
  store.upsert(workload("c", { addresses: ["10.0.0.3"], node: "n2" }));
  assert.deepEqual(uids(store.onNode("n1")), ["a", "b"]);
  assert.deepEqual(uids(store.onNode("n2")), ["c"]);
  assert.deepEqual(uids(store.endpointsOf(WEB)), ["a", "b"]);
  assert.deepEqual(uids(store.byHostname("vm.example")), ["a", "b"]);
  assert.deepEqual(uids(store.all()), ["a", "b", "c"]);
  assert.equal(store.size, 3);
});

Deno.test("WorkloadStore.upsert() of a moved workload drops every old index entry", () => {
  const store = new WorkloadStore();
  store.upsert(workload("a", {
    addresses: ["10.0.0.1"],
    hostname: "old.example",
    node: "n1",
    services: { [WEB]: [{ servicePort: 80, targetPort: 80 }] },
  }));
  const moved = workload("a", {
    addresses: ["10.0.0.9"],
    hostname: "new.example",
    node: "n2",
    services: { [API]: [{ servicePort: 80, targetPort: 80 }] },
  });
  store.upsert(moved);
  assert.equal(store.size, 1);
  assert.equal(store.byUid("a"), moved);
  assert.equal(store.byAddress("", "10.0.0.1"), undefined, "the old address no longer resolves to it");
  assert.equal(store.byAddress("", "10.0.0.9"), moved);
  assert.deepEqual(store.byHostname("old.example"), []);
  assert.deepEqual(uids(store.byHostname("new.example")), ["a"]);
  assert.deepEqual(store.onNode("n1"), []);
  assert.deepEqual(uids(store.onNode("n2")), ["a"]);
  assert.deepEqual(store.endpointsOf(WEB), []);
  assert.deepEqual(uids(store.endpointsOf(API)), ["a"]);
});

Deno.test("WorkloadStore.upsert() of a workload that changed network re-keys its address", () => {
  const store = new WorkloadStore();
  store.upsert(workload("a", { addresses: ["10.0.0.1"], network: "net1" }));
  store.upsert(workload("a", { addresses: ["10.0.0.1"], network: "net2" }));
  assert.equal(store.byAddress("net1", "10.0.0.1"), undefined);
  assert.equal(store.byAddress("net2", "10.0.0.1")?.uid, "a");
});

Deno.test("WorkloadStore.upsert() of an unchanged workload keeps it findable", () => {
  const store = new WorkloadStore();
  const doc = { addresses: ["10.0.0.1"], node: "n1", services: { [WEB]: [{ servicePort: 80, targetPort: 80 }] } };
  store.upsert(workload("a", doc));
  store.upsert(workload("a", doc));
  assert.equal(store.size, 1);
  assert.equal(store.byAddress("", "10.0.0.1")?.uid, "a");
  assert.deepEqual(uids(store.onNode("n1")), ["a"]);
  assert.deepEqual(uids(store.endpointsOf(WEB)), ["a"]);
});

Deno.test("WorkloadStore.remove() cleans every index", () => {
  const store = new WorkloadStore();
  store.upsert(workload("a", {
    addresses: ["10.0.0.1", "fd00::1"],
    hostname: "a.example",
    node: "n1",
    services: { [WEB]: [{ servicePort: 80, targetPort: 80 }] },
  }));
  store.upsert(workload("b", { addresses: ["10.0.0.2"], node: "n1" }));
  assert.equal(store.remove("a"), true);
  assert.equal(store.size, 1);
  assert.equal(store.byUid("a"), undefined);
  assert.equal(store.byAddress("", "10.0.0.1"), undefined);
  assert.equal(store.byAddress("", "fd00::1"), undefined);
  assert.deepEqual(store.byHostname("a.example"), []);
  assert.deepEqual(uids(store.onNode("n1")), ["b"]);
  assert.deepEqual(store.endpointsOf(WEB), []);
  assert.deepEqual(uids(store.all()), ["b"]);
  assert.equal(store.remove("a"), false, "a second remove finds nothing");
  assert.equal(store.remove("never-there"), false);
});

Deno.test("WorkloadStore keeps an address taken over by another workload when the first is removed", () => {
  const store = new WorkloadStore();
  store.upsert(workload("old-pod", { addresses: ["10.0.0.1"] }));
  // The IP is reused by a new pod before the old pod's removal arrives.
  store.upsert(workload("new-pod", { addresses: ["10.0.0.1"] }));
  assert.equal(store.byAddress("", "10.0.0.1")?.uid, "new-pod", "the latest owner wins");
  store.remove("old-pod");
  assert.equal(store.byAddress("", "10.0.0.1")?.uid, "new-pod");
  // Nor does re-upserting the old pod elsewhere take the address back from the new one.
  store.upsert(workload("old-pod", { addresses: ["10.0.0.7"] }));
  assert.equal(store.byAddress("", "10.0.0.1")?.uid, "new-pod");
  assert.equal(store.byAddress("", "10.0.0.7")?.uid, "old-pod");
});

Deno.test("ServiceStore indexes a service by key, VIP and hostname", () => {
  const store = new ServiceStore();
  const s = service("web", "default", {
    addresses: [{ address: "10.96.0.1" }, { network: "net1", address: "FD00::10" }],
  });
  store.upsert(s);
  assert.equal(store.size, 1);
  assert.equal(store.byKey(WEB), s);
  assert.equal(store.byVip("", "10.96.0.1"), s);
  assert.equal(store.byVip("net1", "fd00::10"), s);
  assert.equal(store.byVip("net1", "10.96.0.1"), undefined, "a VIP is keyed by its network");
  assert.equal(store.byVip("", "10.96.0.2"), undefined);
  assert.equal(store.byHostname("web.default.svc.cluster.local"), s);
  assert.equal(store.byHostname("web.other.svc.cluster.local"), undefined);
  assert.equal(store.byKey("other/web.default.svc.cluster.local"), undefined);
});

Deno.test("ServiceStore.upsert() of a service whose VIP changed drops the old VIP", () => {
  const store = new ServiceStore();
  store.upsert(service("web", "default", { addresses: [{ address: "10.96.0.1" }] }));
  const next = service("web", "default", { addresses: [{ address: "10.96.0.2" }] });
  store.upsert(next);
  assert.equal(store.size, 1);
  assert.equal(store.byVip("", "10.96.0.1"), undefined);
  assert.equal(store.byVip("", "10.96.0.2"), next);
  assert.equal(store.byKey(WEB), next);
});

Deno.test("ServiceStore.remove() cleans every index, and keeps a VIP another service took over", () => {
  const store = new ServiceStore();
  store.upsert(service("web", "default", { addresses: [{ address: "10.96.0.1" }, { address: "10.96.0.5" }] }));
  store.upsert(service("api", "shop", { addresses: [{ address: "10.96.0.5" }] }));
  assert.equal(store.remove(WEB), true);
  assert.equal(store.byKey(WEB), undefined);
  assert.equal(store.byVip("", "10.96.0.1"), undefined);
  assert.equal(store.byVip("", "10.96.0.5")?.name, "api");
  assert.equal(store.byHostname("web.default.svc.cluster.local"), undefined);
  assert.equal(store.remove(WEB), false);
  assert.deepEqual([...store.all()].map((s) => s.name), ["api"]);
});

Deno.test("ServiceStore.byHostname() prefers the given namespace, else the first by key", async (t) => {
  const store = new ServiceStore();
  const host = "shared.example.com";
  for (const ns of ["zeta", "alpha", "mid"]) {
    store.upsert(decodeService({ name: "shared", namespace: ns, hostname: host }));
  }
  await t.step("preferred namespace present", () => assert.equal(store.byHostname(host, "mid")?.namespace, "mid"));
  await t.step("preferred namespace absent", () => assert.equal(store.byHostname(host, "nope")?.namespace, "alpha"));
  await t.step("no preference", () => assert.equal(store.byHostname(host)?.namespace, "alpha"));
  await t.step("after the preferred one is removed", () => {
    store.remove(`zeta/${host}`);
    assert.equal(store.byHostname(host, "zeta")?.namespace, "alpha");
  });
});

Deno.test("PolicyStore.forWorkload() gathers GLOBAL, its namespace's and its named selector policies", () => {
  const store = new PolicyStore();
  const defs = [
    { name: "global-deny", namespace: "istio-system", scope: "GLOBAL", action: "DENY" },
    { name: "ns-allow", namespace: "shop", scope: "NAMESPACE" },
    { name: "ns-other", namespace: "other", scope: "NAMESPACE" },
    { name: "sel-cart", namespace: "shop", scope: "WORKLOAD_SELECTOR" },
    { name: "sel-orders", namespace: "shop", scope: "WORKLOAD_SELECTOR" },
    { name: "sel-foreign", namespace: "other", scope: "WORKLOAD_SELECTOR" },
    { name: "a-global", scope: "GLOBAL" },
  ];
  for (const d of defs) store.upsert(policy(d));
  assert.equal(store.size, defs.length);
  const keys = (ps: Authorization[]) => ps.map((p) => `${p.namespace}/${p.name}`);
  assert.deepEqual(
    keys(store.forWorkload({ namespace: "shop", authorizationPolicies: ["shop/sel-cart", "shop/sel-cart"] })),
    ["/a-global", "istio-system/global-deny", "shop/ns-allow", "shop/sel-cart"],
    "sorted, each once; not other namespaces' policies nor selector policies it does not name",
  );
  assert.deepEqual(
    keys(store.forWorkload({ namespace: "other", authorizationPolicies: [] })),
    ["/a-global", "istio-system/global-deny", "other/ns-other"],
  );
  assert.deepEqual(keys(store.forWorkload({ namespace: "empty", authorizationPolicies: [] })), [
    "/a-global",
    "istio-system/global-deny",
  ]);
});

Deno.test("PolicyStore.forWorkload() lists a policy the workload names only once, whatever its scope", () => {
  const store = new PolicyStore();
  store.upsert(policy({ name: "g", namespace: "istio-system", scope: "GLOBAL" }));
  store.upsert(policy({ name: "n", namespace: "shop", scope: "NAMESPACE" }));
  const got = store.forWorkload({
    namespace: "shop",
    authorizationPolicies: ["istio-system/g", "shop/n", "shop/missing"],
  });
  assert.deepEqual(got.map((p) => p.name), ["g", "n"]);
});

Deno.test("PolicyStore.upsert() of a policy whose scope changed moves it between sets", () => {
  const store = new PolicyStore();
  const shop = { namespace: "shop", authorizationPolicies: ["shop/p"] };
  store.upsert(policy({ name: "p", namespace: "shop", scope: "NAMESPACE" }));
  assert.deepEqual(store.forWorkload({ namespace: "shop", authorizationPolicies: [] }).map((p) => p.name), ["p"]);
  store.upsert(policy({ name: "p", namespace: "shop", scope: "WORKLOAD_SELECTOR" }));
  assert.deepEqual(store.forWorkload({ namespace: "shop", authorizationPolicies: [] }), []);
  assert.deepEqual(store.forWorkload(shop).map((p) => p.scope), ["WORKLOAD_SELECTOR"]);
  store.upsert(policy({ name: "p", namespace: "shop", scope: "GLOBAL" }));
  assert.deepEqual(store.forWorkload({ namespace: "x", authorizationPolicies: [] }).map((p) => p.scope), ["GLOBAL"]);
  assert.equal(store.size, 1);
});

Deno.test("PolicyStore.remove() drops a policy from every set", () => {
  const store = new PolicyStore();
  store.upsert(policy({ name: "g", namespace: "istio-system", scope: "GLOBAL" }));
  store.upsert(policy({ name: "n", namespace: "shop", scope: "NAMESPACE" }));
  store.upsert(policy({ name: "s", namespace: "shop", scope: "WORKLOAD_SELECTOR" }));
  const shop = { namespace: "shop", authorizationPolicies: ["shop/s"] };
  assert.equal(store.forWorkload(shop).length, 3);
  assert.equal(store.remove("istio-system/g"), true);
  assert.equal(store.remove("shop/n"), true);
  assert.equal(store.remove("shop/s"), true);
  assert.deepEqual(store.forWorkload(shop), []);
  assert.equal(store.byKey("shop/n"), undefined);
  assert.equal(store.size, 0);
  assert.equal(store.remove("shop/n"), false);
});

Deno.test("MeshState.lookupAddress() prefers a service VIP over a workload with the same address", () => {
  const mesh = new MeshState();
  const w = workload("pod", { addresses: ["10.96.0.1", "10.0.0.5"] });
  const s = service("web", "default", { addresses: [{ address: "10.96.0.1" }] });
  mesh.workloads.upsert(w);
  mesh.services.upsert(s);
  assert.deepEqual(mesh.lookupAddress("", "10.96.0.1"), { service: s });
  assert.deepEqual(mesh.lookupAddress("", "10.0.0.5"), { workload: w });
  assert.equal(mesh.lookupAddress("", "192.0.2.1"), undefined, "an address outside the mesh");
  assert.equal(mesh.lookupAddress("net1", "10.0.0.5"), undefined, "another network");
  mesh.services.remove(WEB);
  assert.deepEqual(mesh.lookupAddress("", "10.96.0.1"), { workload: w });
});

Deno.test("WorkloadStore.byPod() finds a pod by namespace, name and service account, as ztunnel matches the agent's", () => {
  const s = new WorkloadStore();
  const pod = { name: "web-1", namespace: "shop", serviceAccount: "web", hostname: "", addresses: ["10.0.1.5"] };
  s.upsert(workload("Kubernetes//Pod/shop/web-1", pod));
  s.upsert(workload("entry", { ...pod, addresses: ["10.0.1.6"], workloadType: "DEPLOYMENT" }));
  assert.equal(s.byPod("shop", "web-1", "web")?.uid, "Kubernetes//Pod/shop/web-1");
  assert.equal(s.byPod("shop", "web-1", "other"), undefined, "another service account is another identity");
  s.remove("Kubernetes//Pod/shop/web-1");
  assert.equal(s.byPod("shop", "web-1", "web"), undefined);
});

function route(name: string, namespace: string, parents: string[]): HttpRoute {
  return decodeHttpRoute({ name, namespace, parents: parents.map((service) => ({ service })), rules: [] });
}

function l7Policy(name: string, targets: [kind: string, name: string][]): L7Policy {
  return decodeL7Policy({
    name,
    namespace: "shop",
    targets: targets.map(([kind, name]) => ({ kind, namespace: "shop", name })),
  });
}

const keys = (items: { namespace: string; name: string }[]) => items.map((x) => `${x.namespace}/${x.name}`);

Deno.test("RouteStore.forService() lists the routes with a parent of that service, by key, each once", () => {
  const store = new RouteStore();
  store.upsert(route("b", "shop", [API]));
  store.upsert(route("a", "shop", [API, API, WEB]));
  store.upsert(route("c", "other", [WEB]));
  assert.equal(store.size, 3);
  assert.deepEqual(keys(store.forService(API)), ["shop/a", "shop/b"]);
  assert.deepEqual(keys(store.forService(WEB)), ["other/c", "shop/a"]);
  assert.deepEqual(store.forService("shop/none.shop.svc.cluster.local"), []);
  assert.equal(store.byKey("shop/a")?.name, "a");
});

Deno.test("RouteStore.upsert() of a route that moved to another parent, and remove(), keep the index right", () => {
  const store = new RouteStore();
  store.upsert(route("a", "shop", [API]));
  store.upsert(route("a", "shop", [WEB]));
  assert.deepEqual(store.forService(API), [], "the old parent no longer lists it");
  assert.deepEqual(keys(store.forService(WEB)), ["shop/a"]);
  assert.equal(store.remove("shop/a"), true);
  assert.equal(store.remove("shop/a"), false);
  assert.deepEqual([store.size, store.forService(WEB), [...store.all()]], [0, [], []]);
});

Deno.test("L7PolicyStore.forTarget() lists the policies attached to a Gateway or Service, by key", () => {
  const store = new L7PolicyStore();
  store.upsert(l7Policy("b", [["Gateway", "waypoint"]]));
  store.upsert(l7Policy("a", [["Gateway", "waypoint"], ["Service", "web"]]));
  store.upsert(l7Policy("c", [["Service", "waypoint"]]));
  assert.deepEqual(keys(store.forTarget("Gateway", "shop", "waypoint")), ["shop/a", "shop/b"]);
  assert.deepEqual(keys(store.forTarget("Service", "shop", "web")), ["shop/a"]);
  assert.deepEqual(keys(store.forTarget("Service", "shop", "waypoint")), ["shop/c"], "the kind is part of the target");
  assert.deepEqual(store.forTarget("Gateway", "other", "waypoint"), []);
  store.upsert(l7Policy("a", [["Service", "web"]]));
  assert.deepEqual(keys(store.forTarget("Gateway", "shop", "waypoint")), ["shop/b"], "a dropped target is unindexed");
  assert.equal(store.remove("shop/a"), true);
  assert.deepEqual(store.forTarget("Service", "shop", "web"), []);
  assert.equal(store.size, 2);
});

Deno.test("MeshState holds the waypoints' routes and L7 policies beside the rest", () => {
  const state = new MeshState();
  state.routes.upsert(route("a", "shop", [API]));
  state.l7Policies.upsert(l7Policy("p", [["Service", "api"]]));
  assert.deepEqual(keys(state.routes.forService(API)), ["shop/a"]);
  assert.deepEqual(keys(state.l7Policies.forTarget("Service", "shop", "api")), ["shop/p"]);
});
