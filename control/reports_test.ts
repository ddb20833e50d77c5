import assert from "node:assert/strict";
import { decodeCidr } from "../mesh/net.ts";
import { buildMesh } from "./build/mod.ts";
import { DEFAULT_SETTINGS } from "./build/common.ts";
import { readNode } from "./build/nodes.ts";
import type { Registration } from "./build/workloads.ts";
import { checkReport, ReportError, reportFacts } from "./reports.ts";
import { parseManifestFile } from "./sources/manifests.ts";

const MANIFESTS = `apiVersion: v1
kind: Node
metadata: { name: node-a }
spec: { podCIDRs: [10.1.0.0/24, "fd00:1::/64"] }
---
apiVersion: v1
kind: Node
metadata: { name: node-c }
spec: {}
---
apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop }
spec: { nodeName: node-a }
---
apiVersion: v1
kind: Pod
metadata: { name: fixed, namespace: shop }
spec: { nodeName: node-a }
status: { podIP: 10.9.0.1 }
---
apiVersion: v1
kind: Pod
metadata: { name: api, namespace: shop }
spec: { nodeName: node-b }
---
apiVersion: v1
kind: Pod
metadata: { name: pending, namespace: shop }
spec: {}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm, namespace: shop, annotations: { skiff.io/node: node-b } }
spec: { address: 10.9.0.2 }
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: shop }
spec: { clusterIP: 10.9.0.3, ports: [{ port: 5432 }] }
`;

const pod = (name: string, node: string, ...ips: string[]): Registration => ({
  namespace: "shop",
  name,
  node,
  ips,
  redirected: true,
});

/** The facts of a build in which node-a reported web at 10.1.0.5 and node-b reported api at 10.2.0.5. */
function facts() {
  const parsed = parseManifestFile(MANIFESTS, "test.yaml");
  assert.deepEqual(parsed.problems, []);
  const model = buildMesh({
    objects: parsed.objects,
    registrations: [pod("web", "node-a", "10.1.0.5"), pod("api", "node-b", "10.2.0.5")],
    vips: new Map(),
    settings: DEFAULT_SETTINGS,
  });
  return reportFacts(parsed.objects, model, decodeCidr("10.96.0.0/16", "range"));
}

Deno.test("checkReport() takes a node's report only about its own pods and addresses", async (t) => {
  const f = facts();
  const cases: [string, string, Registration[], string[]][] = [
    ["its own pods in its range", "node-a", [pod("web", "node-a", "10.1.0.6", "fd00:1::6")], []],
    ["a pod declared nowhere (kept, left out of the model)", "node-b", [pod("job", "node-b", "10.2.0.9")], []],
    ["a pod's declared address, outside the range", "node-a", [pod("fixed", "node-a", "10.9.0.1")], []],
    ["an address its own earlier report gave another pod", "node-a", [pod("job", "node-a", "10.1.0.5")], []],
    ["a pod of no address (not set up yet)", "node-a", [pod("web", "node-a")], []],
    ["another node's pod", "node-b", [pod("web", "node-b")], ["pod shop/web is declared on node node-a, not node-b"]],
    ["another node's WorkloadEntry", "node-a", [pod("vm", "node-a")], [
      "pod shop/vm is declared on node node-b, not node-a",
    ]],
    ["a pod on no node", "node-a", [pod("pending", "node-a")], [
      "pod shop/pending is declared on no node, not on node-a",
    ]],
    ["an address outside its range", "node-a", [pod("web", "node-a", "10.2.0.6")], [
      "pod shop/web: address 10.2.0.6 is not in the pod range of node node-a (10.1.0.0/24, fd00:1::/64)",
    ]],
    ["an address of a family it has no range for", "node-a", [pod("web", "node-a", "fd00:2::1")], [
      "pod shop/web: address fd00:2::1 is not in the pod range of node node-a (10.1.0.0/24, fd00:1::/64)",
    ]],
    ["with no range known, an address in another node's", "node-b", [pod("api", "node-b", "10.1.0.77")], [
      "pod shop/api: address 10.1.0.77 lies in the pod range 10.1.0.0/24 of node node-a",
    ]],
    ["an address another node reported", "node-c", [pod("job", "node-c", "10.2.0.5")], [
      "pod shop/job: address 10.2.0.5 is held by Pod shop/api",
    ]],
    ["a pod's declared address", "node-b", [pod("api", "node-b", "10.9.0.1")], [
      "pod shop/api: address 10.9.0.1 is held by Pod shop/fixed",
    ]],
    ["a WorkloadEntry's address", "node-b", [pod("api", "node-b", "10.9.0.2")], [
      "pod shop/api: address 10.9.0.2 is held by WorkloadEntry shop/vm",
    ]],
    ["a service's VIP", "node-b", [pod("api", "node-b", "10.9.0.3")], [
      "pod shop/api: address 10.9.0.3 is the address of service shop/db",
    ]],
    ["an address of the service range", "node-b", [pod("api", "node-b", "10.96.3.3")], [
      "pod shop/api: address 10.96.3.3 lies in the service range 10.96.0.0/16",
    ]],
    ["one address for two pods", "node-b", [pod("api", "node-b", "10.2.0.8"), pod("job", "node-b", "10.2.0.8")], [
      "pod shop/job: address 10.2.0.8 is reported for pod shop/api too",
    ]],
  ];
  for (const [what, node, pods, problems] of cases) {
    await t.step(what, () => assert.deepEqual(checkReport(node, pods, f), problems));
  }
});

Deno.test("ReportError names the node and the first ten problems", () => {
  const e = new ReportError("node-b", Array.from({ length: 12 }, (_, i) => `problem ${i}`));
  assert.match(e.message, /^report of node node-b refused, its earlier report stays in force: problem 0; /);
  assert.match(e.message, /problem 9; and 2 more$/);
});

Deno.test("readNode() reads a Node's pod ranges as Kubernetes sets them", async (t) => {
  const cases: [string, unknown, string[] | RegExp][] = [
    ["none", {}, []],
    ["podCIDR alone", { podCIDR: "10.1.0.0/24" }, ["10.1.0.0/24"]],
    ["podCIDRs, dual stack", { podCIDR: "10.1.0.0/24", podCIDRs: ["10.1.0.0/24", "fd00::/64"] }, [
      "10.1.0.0/24",
      "fd00::/64",
    ]],
    ["podCIDRs[0] not podCIDR", { podCIDR: "10.1.0.0/24", podCIDRs: ["10.2.0.0/24"] }, /must be spec.podCIDR/],
    ["two of one family", { podCIDRs: ["10.1.0.0/24", "10.2.0.0/24"] }, /one range per address family/],
    ["host bits", { podCIDR: "10.1.0.1/24" }, /spec.podCIDR: has host bits set/],
  ];
  for (const [what, spec, want] of cases) {
    await t.step(what, () => {
      if (want instanceof RegExp) assert.throws(() => readNode({ spec }), want);
      else assert.deepEqual(readNode({ spec }).podCidrs.map((c) => `${c.address}/${c.length}`), want);
    });
  }
});
