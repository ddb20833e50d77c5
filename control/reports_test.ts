import assert from "node:assert/strict";
import { decodeCidr } from "../mesh/net.ts";
import { buildMesh } from "./build/mod.ts";
import { DEFAULT_SETTINGS } from "./build/common.ts";
import { readNode } from "./build/nodes.ts";
import type { Registration } from "./build/workloads.ts";
import { checkReport, recordReport, ReportError, reportFacts } from "./reports.ts";
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
    // Another spelling of an address of node-a's range, which no IPv4 range, index or VIP would match.
    ["an IPv4-mapped IPv6 address", "node-c", [pod("job", "node-c", "::ffff:a01:5")], [
      "pod shop/job: address ::ffff:a01:5 is an IPv4-mapped IPv6 address (report the IPv4 address itself), not a pod's",
    ]],
    ["an IPv4-compatible IPv6 address", "node-c", [pod("job", "node-c", "::a01:5")], [
      "pod shop/job: address ::a01:5 is an IPv4-compatible IPv6 address, the unspecified or the loopback address, not a pod's",
    ]],
    ["a loopback address", "node-c", [pod("job", "node-c", "127.0.0.1")], [
      "pod shop/job: address 127.0.0.1 is a loopback address, not a pod's",
    ]],
    ["the unspecified address", "node-c", [pod("job", "node-c", "0.0.0.0")], [
      "pod shop/job: address 0.0.0.0 is in 0.0.0.0/8 (this network), not a pod's",
    ]],
    ["a link-local address (the metadata service's)", "node-c", [pod("job", "node-c", "169.254.169.254")], [
      "pod shop/job: address 169.254.169.254 is a link-local address, not a pod's",
    ]],
    ["an IPv6 link-local address", "node-c", [pod("job", "node-c", "fe80::1")], [
      "pod shop/job: address fe80::1 is a link-local address, not a pod's",
    ]],
    ["a multicast address", "node-c", [pod("job", "node-c", "ff02::1")], [
      "pod shop/job: address ff02::1 is a multicast address, not a pod's",
    ]],
    ["the broadcast address", "node-c", [pod("job", "node-c", "255.255.255.255")], [
      "pod shop/job: address 255.255.255.255 is a reserved or the broadcast address, not a pod's",
    ]],
    ["a NAT64 address is a pod's like any other", "node-c", [pod("job", "node-c", "64:ff9b::a01:5")], []],
  ];
  for (const [what, node, pods, problems] of cases) {
    await t.step(what, () => {
      const { accepted, refused } = checkReport(node, pods, f);
      assert.deepEqual(refused.flatMap((r) => r.problems), problems);
      assert.deepEqual(
        accepted.map((p) => p.name),
        pods.filter((p) => !refused.some((r) => r.pod === p)).map((p) => p.name),
        "every pod not refused is taken",
      );
    });
  }
});

Deno.test("checkReport(): a Pod named like a WorkloadEntry does not own the entry's address", () => {
  const parsed = parseManifestFile(
    `apiVersion: v1
kind: Pod
metadata: { name: vm, namespace: shop }
spec: { nodeName: node-b }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm, namespace: shop }
spec: { address: 10.9.0.2 }
`,
    "test.yaml",
  );
  const model = buildMesh({ objects: parsed.objects, registrations: [], vips: new Map(), settings: DEFAULT_SETTINGS });
  const f = reportFacts(parsed.objects, model, decodeCidr("10.96.0.0/16", "range"));
  assert.deepEqual(checkReport("node-b", [pod("vm", "node-b", "10.9.0.2")], f).refused.map((r) => r.problems), [
    ["pod shop/vm: address 10.9.0.2 is the address of WorkloadEntry shop/vm"],
  ]);
});

Deno.test("checkReport() refuses only the offending pods of a report, and takes the others", () => {
  const { accepted, refused } = checkReport("node-a", [
    pod("api", "node-a", "10.1.0.9"),
    pod("web", "node-a", "10.1.0.6"),
    pod("job", "node-a", "10.2.0.7"),
    pod("cron", "node-a", "10.1.0.7"),
  ], facts());
  assert.deepEqual(accepted.map((p) => p.name), ["web", "cron"]);
  assert.deepEqual(refused.map((r) => [r.pod.name, r.problems]), [
    ["api", ["pod shop/api is declared on node node-b, not node-a"]],
    ["job", ["pod shop/job: address 10.2.0.7 is not in the pod range of node node-a (10.1.0.0/24, fd00:1::/64)"]],
  ]);
});

Deno.test("recordReport() holds the addresses a report gave its node's pods until the next build", async (t) => {
  const f = facts();
  const after = recordReport(f, "node-b", [pod("api", "node-b", "10.3.0.1"), pod("job", "node-b", "10.3.0.2")]);
  await t.step("another node is refused the address of a pod declared on the reporting node", () => {
    assert.deepEqual(checkReport("node-c", [pod("job", "node-c", "10.3.0.1")], after).refused[0].problems, [
      "pod shop/job: address 10.3.0.1 is held by pod shop/api, as node node-b reported it",
    ]);
  });
  await t.step("a pod declared nowhere holds nothing (the build leaves it out)", () => {
    assert.deepEqual(checkReport("node-c", [pod("job", "node-c", "10.3.0.2")], after).refused, []);
  });
  await t.step("the reporting node may give the address again", () => {
    assert.deepEqual(checkReport("node-b", [pod("job", "node-b", "10.3.0.1")], after).refused, []);
  });
  await t.step("the facts it was given are left as they were", () => {
    assert.deepEqual(checkReport("node-c", [pod("job", "node-c", "10.3.0.1")], f).refused, []);
  });
});

Deno.test("ReportError names the node, how many pods were taken, and the first ten problems", () => {
  const refused = Array.from({ length: 12 }, (_, i) => ({ pod: pod(`p${i}`, "node-b"), problems: [`problem ${i}`] }));
  const e = new ReportError("node-b", refused, 3);
  assert.match(
    e.message,
    /^report of node node-b: 12 pod\(s\) refused, staying as this node last reported them \(3 taken\): problem 0; /,
  );
  assert.match(e.message, /problem 9; and 2 more$/);
  assert.deepEqual([e.accepted, e.refused.length], [3, 12]);
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
