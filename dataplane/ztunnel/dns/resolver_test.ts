import assert from "node:assert/strict";
import { MeshState } from "../../../mesh/store.ts";
import type { Service, Workload } from "../../../mesh/workload.ts";
import { aliases, resolveMesh } from "./resolver.ts";
import { TYPE } from "./wire.ts";

function service(name: string, namespace: string, vips: string[], domain = "cluster.local"): Service {
  return {
    name,
    namespace,
    hostname: `${name}.${namespace}.svc.${domain}`,
    addresses: vips.map((address) => ({ network: "", address })),
    ports: [{ port: 80, targetPort: 8080 }],
    subjectAltNames: [],
  };
}

function workload(name: string, namespace: string, addresses: string[], extra: Partial<Workload> = {}): Workload {
  return {
    uid: `Kubernetes//Pod/${namespace}/${name}`,
    name,
    namespace,
    addresses,
    network: "",
    tunnelProtocol: "HBONE",
    trustDomain: "cluster.local",
    serviceAccount: name,
    node: "node1",
    canonicalName: name,
    canonicalRevision: "latest",
    workloadType: "POD",
    workloadName: name,
    services: {},
    authorizationPolicies: [],
    status: "HEALTHY",
    clusterId: "Kubernetes",
    capacity: 1,
    ...extra,
  } as Workload;
}

function state(): MeshState {
  const s = new MeshState();
  s.services.upsert(service("web", "shop", ["10.96.0.10"]));
  s.services.upsert(service("web", "other", ["10.96.0.20"]));
  s.services.upsert(service("db", "shop", ["10.96.0.30", "fd00::30"]));
  s.services.upsert(service("headless", "shop", []));
  s.workloads.upsert(
    workload("h1", "shop", ["10.0.1.5"], { services: { "shop/headless.shop.svc.cluster.local": [] } }),
  );
  s.workloads.upsert(workload("vm1", "shop", ["10.0.9.9"], { hostname: "vm1.example.internal" }));
  return s;
}

const A = (name: string, address: string) => ({ name, type: TYPE.A, ttl: 30, address });
const CNAME = (name: string, target: string) => ({ name, type: TYPE.CNAME, ttl: 30, target });

Deno.test("resolveMesh() answers mesh names from the model and forwards the rest", async (t) => {
  const s = state();
  const cases: {
    name: string;
    q: string;
    type?: number;
    ns?: string;
    klass?: number;
    want: ReturnType<typeof resolveMesh>["kind"];
    records?: unknown[];
  }[] = [
    {
      name: "the FQDN",
      q: "web.shop.svc.cluster.local",
      want: "answer",
      records: [A("web.shop.svc.cluster.local", "10.96.0.10")],
    },
    { name: "NAME.NS", q: "web.shop", ns: "other", want: "answer", records: [A("web.shop", "10.96.0.10")] },
    { name: "NAME.NS.svc", q: "web.shop.svc", want: "answer", records: [A("web.shop.svc", "10.96.0.10")] },
    { name: "NAME in the caller's namespace", q: "web", ns: "shop", want: "answer", records: [A("web", "10.96.0.10")] },
    {
      name: "the same NAME from another namespace is that namespace's",
      q: "web",
      ns: "other",
      want: "answer",
      records: [A("web", "10.96.0.20")],
    },
    { name: "NAME from a namespace without it: forwarded", q: "db", ns: "other", want: "forward" },
    {
      name: "case-insensitive, answered under the name as asked",
      q: "WEB.Shop.SVC.cluster.LOCAL",
      want: "answer",
      records: [A("WEB.Shop.SVC.cluster.LOCAL", "10.96.0.10")],
    },
    {
      name: "a search domain the client's resolver appended is stripped, with a CNAME",
      q: "web.shop.shop.svc.cluster.local",
      ns: "shop",
      want: "answer",
      records: [CNAME("web.shop.shop.svc.cluster.local", "web.shop"), A("web.shop", "10.96.0.10")],
    },
    {
      name: "AAAA for a mesh name: empty NOERROR (IPv4-only), not forwarded",
      q: "web.shop.svc.cluster.local",
      type: TYPE.AAAA,
      want: "answer",
      records: [],
    },
    {
      name: "an IPv6 VIP is never answered",
      q: "db.shop",
      want: "answer",
      records: [A("db.shop", "10.96.0.30")],
    },
    {
      name: "a headless service: its endpoints' addresses",
      q: "headless.shop.svc.cluster.local",
      want: "answer",
      records: [A("headless.shop.svc.cluster.local", "10.0.1.5")],
    },
    {
      name: "a workload's declared hostname",
      q: "vm1.example.internal",
      want: "answer",
      records: [A("vm1.example.internal", "10.0.9.9")],
    },
    { name: "an unknown name", q: "example.test", want: "forward" },
    { name: "an unknown service name", q: "nope.shop.svc.cluster.local", want: "forward" },
    { name: "another record type for a mesh name (MX)", q: "web.shop.svc.cluster.local", type: 15, want: "forward" },
    { name: "another class (CH)", q: "web.shop.svc.cluster.local", klass: 3, want: "forward" },
    { name: "the root", q: "", want: "forward" },
  ];
  for (const c of cases) {
    await t.step(c.name, () => {
      const got = resolveMesh(s, { name: c.q, type: c.type ?? TYPE.A, class: c.klass ?? 1 }, c.ns ?? "shop");
      assert.equal(got.kind, c.want);
      if (got.kind === "answer") assert.deepEqual(got.records, c.records);
    });
  }
});

Deno.test("resolveMesh() honours another cluster domain", () => {
  const s = new MeshState();
  s.services.upsert(service("web", "shop", ["10.96.0.10"], "corp.example"));
  const q = (name: string, domain?: string) => resolveMesh(s, { name, type: TYPE.A, class: 1 }, "shop", domain).kind;
  assert.equal(q("web", "corp.example"), "answer");
  assert.equal(q("web.shop", "corp.example"), "answer");
  assert.equal(q("web"), "forward", "cluster.local expansions do not reach corp.example names");
});

Deno.test("aliases() lists upstream's forms in order, each once", async (t) => {
  const cases: { q: string; want: string[] }[] = [
    { q: "web", want: ["web", "web.ns.svc.cluster.local"] },
    { q: "web.shop", want: ["web.shop", "web.shop.svc.cluster.local", "web.shop.ns.svc.cluster.local"] },
    { q: "web.shop.svc", want: ["web.shop.svc", "web.shop.svc.cluster.local", "web.shop.svc.svc.cluster.local"] },
    { q: "a.b.c", want: ["a.b.c", "a.b.c.svc.cluster.local"] },
    { q: "p.sub.shop.svc", want: ["p.sub.shop.svc", "p.sub.shop.svc.cluster.local"] },
    {
      q: "web.ns.svc.cluster.local",
      want: ["web.ns.svc.cluster.local", "web", "web.ns", "web.ns.svc"],
    },
  ];
  for (const c of cases) {
    await t.step(c.q, () => {
      const got = aliases(c.q, "ns", "cluster.local").map((a) => a.name);
      for (const w of c.want) assert.ok(got.includes(w), `${w} in ${got}`);
      assert.equal(got[0], c.q);
      assert.equal(new Set(got).size, got.length);
    });
  }
});
