import assert from "node:assert/strict";
import { decodeWorkload } from "../../mesh/workload.ts";
import { nodeIdentities, prefetchPlan } from "./prefetch.ts";

const w = (name: string, sa: string, tunnel: "HBONE" | "NONE", trustDomain = "cluster.local") =>
  decodeWorkload({
    uid: `Kubernetes//Pod/shop/${name}`,
    name,
    namespace: "shop",
    serviceAccount: sa,
    addresses: ["10.0.0.1"],
    tunnelProtocol: tunnel,
    trustDomain,
  });

Deno.test("nodeIdentities() takes the HBONE workloads of the mesh's trust domain, each identity once", () => {
  const ids = nodeIdentities([
    w("a", "web", "HBONE"),
    w("b", "web", "HBONE"),
    w("c", "db", "NONE"),
    w("d", "x", "HBONE", "other.td"),
  ], "cluster.local");
  assert.deepEqual([...ids], ["spiffe://cluster.local/ns/shop/sa/web"]);
});

Deno.test("prefetchPlan() fetches what the node newly runs and forgets what left, unless a pod still uses it", async (t) => {
  const cases: [string, string[], string[], string[], { prefetch: string[]; forget: string[]; release: string[] }][] = [
    ["first config", ["a", "b"], [], [], { prefetch: ["a", "b"], forget: [], release: [] }],
    ["nothing changed", ["a"], ["a"], [], { prefetch: [], forget: [], release: [] }],
    ["a workload left", ["a"], ["a", "b"], [], { prefetch: [], forget: ["b"], release: ["b"] }],
    ["it left but a pod here still uses it", [], ["b"], ["b"], { prefetch: [], forget: [], release: ["b"] }],
  ];
  for (const [name, wanted, prefetched, used, want] of cases) {
    await t.step(name, () => {
      assert.deepEqual(prefetchPlan(new Set(wanted), new Set(prefetched), (id) => used.includes(id)), want);
    });
  }
});
