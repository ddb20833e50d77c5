import assert from "node:assert/strict";
import { decodeHttpRoute, decodeL7Policy } from "../../mesh/l7.ts";
import { parseManifestFile } from "../sources/manifests.ts";
import { DEFAULT_SETTINGS } from "./common.ts";
import { BuildCache, buildMesh, type MeshModel } from "./mod.ts";
import type { Registration } from "./workloads.ts";

const NS = (name: string, labels = "") =>
  `apiVersion: v1
kind: Namespace
metadata:
  name: ${name}
  labels: {${labels}}
---
`;

const POD = (name: string, ns: string, ip: string, opts: { labels?: string; sa?: string; node?: string } = {}) =>
  `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: ${ns}
  labels: {${opts.labels ?? ""}}
spec:
  nodeName: ${opts.node ?? "node-a"}
  serviceAccountName: ${opts.sa ?? "default"}
  containers:
    - name: app
      ports: [{ name: http, containerPort: 8080 }]
status:
  podIP: ${ip}
---
`;

function build(yaml: string, registrations: Registration[] = [], vips = new Map<string, string>()): MeshModel {
  const parsed = parseManifestFile(yaml, "test.yaml");
  assert.deepEqual(parsed.problems, []);
  return buildMesh({ objects: parsed.objects, registrations, vips, settings: DEFAULT_SETTINGS });
}

const redirected = (name: string, ns: string, node = "node-a"): Registration => ({
  namespace: ns,
  name,
  node,
  ips: [],
  redirected: true,
});

Deno.test("buildMesh() makes workloads from pods: uid, identity, canonical labels, HBONE only once redirected", async (t) => {
  const yaml = NS("shop", `istio.io/dataplane-mode: ambient`) +
    POD("web-1", "shop", "10.0.1.2", { labels: "app: web, version: v2", sa: "web" }) +
    POD("db-1", "shop", "10.0.1.3", { labels: "istio.io/dataplane-mode: none" }) +
    POD("off-1", "other", "10.0.2.2") +
    POD("in-1", "other", "10.0.2.3", { labels: "istio.io/dataplane-mode: ambient" });
  await t.step("before the node agent reports, every pod is plaintext", () => {
    const m = build(yaml);
    assert.deepEqual(m.workloads.map((w) => [w.name, w.tunnelProtocol]), [
      ["in-1", "NONE"],
      ["off-1", "NONE"],
      ["db-1", "NONE"],
      ["web-1", "NONE"],
    ]);
  });
  await t.step("after it reports, enrolled pods are HBONE; opted-out and unenrolled ones stay plaintext", () => {
    const regs = ["web-1", "db-1"].map((n) => redirected(n, "shop")).concat(
      ["off-1", "in-1"].map((n) => redirected(n, "other")),
    );
    const m = build(yaml, regs);
    const byName = new Map(m.workloads.map((w) => [w.name, w]));
    assert.equal(byName.get("web-1")!.tunnelProtocol, "HBONE");
    assert.equal(byName.get("db-1")!.tunnelProtocol, "NONE");
    assert.equal(byName.get("off-1")!.tunnelProtocol, "NONE");
    assert.equal(byName.get("in-1")!.tunnelProtocol, "HBONE");
    const web = byName.get("web-1")!;
    assert.equal(web.uid, "Kubernetes//Pod/shop/web-1");
    assert.equal(web.serviceAccount, "web");
    assert.equal(web.node, "node-a");
    assert.deepEqual([web.canonicalName, web.canonicalRevision], ["web", "v2"]);
  });
  await t.step("the CA's registry knows each node's identities", () => {
    const m = build(yaml + POD("late", "shop", "10.0.1.9", { sa: "batch", node: "node-b" }));
    assert.deepEqual(m.identities.get("node-b"), [{
      namespace: "shop",
      serviceAccount: "batch",
      trustDomain: "cluster.local",
    }]);
    assert.equal(m.identities.get("node-a")!.length, 3);
  });
});

Deno.test("buildMesh() completes a pod from its own node's agent, and from no one else", async (t) => {
  const yaml = POD("web-1", "shop", "10.0.1.2").replace("status:\n  podIP: 10.0.1.2\n", "");
  await t.step("the address comes from the report of the node the pod is scheduled on", () => {
    assert.equal(build(yaml).workloads.length, 0);
    const m = build(yaml, [{ ...redirected("web-1", "shop"), ips: ["10.0.1.7"] }]);
    assert.deepEqual(m.workloads.map((w) => [w.addresses, w.tunnelProtocol]), [[["10.0.1.7"], "NONE"]]);
  });
  await t.step("another node's report about the pod is ignored, and said so", () => {
    const m = build(POD("web-1", "shop", "10.0.1.2", { labels: "istio.io/dataplane-mode: ambient" }), [
      redirected("web-1", "shop", "node-evil"),
    ]);
    assert.equal(m.workloads[0].tunnelProtocol, "NONE", "not flipped to HBONE by someone else");
    assert.deepEqual(m.notes.map((n) => n.message), [
      "reported by node node-evil, but it runs on node-a; the report is ignored",
    ]);
  });
  await t.step("with reports of the pod from two nodes, its own node's counts, whichever comes first", () => {
    const ambient = yaml.replace("labels: {}", "labels: { istio.io/dataplane-mode: ambient }");
    const own = { ...redirected("web-1", "shop"), ips: ["10.0.1.7"] };
    const other = { ...redirected("web-1", "shop", "node-b"), ips: ["10.0.2.7"], redirected: false };
    for (const regs of [[own, other], [other, own]]) {
      const m = build(ambient, regs);
      assert.deepEqual(m.workloads.map((w) => [w.addresses, w.tunnelProtocol]), [[["10.0.1.7"], "HBONE"]]);
      assert.deepEqual(m.notes.map((n) => n.message), [
        "reported by node node-b, but it runs on node-a; the report is ignored",
      ]);
    }
  });
  await t.step("a declared address wins over a reported one, whatever the uids' order", () => {
    const m = build(POD("zz", "shop", "10.0.1.2") + yaml.replaceAll("web-1", "aa"), [
      { ...redirected("aa", "shop"), ips: ["10.0.1.2"] },
    ]);
    assert.deepEqual(m.workloads.map((w) => [w.name, w.addresses]), [["zz", ["10.0.1.2"]]]);
    assert.deepEqual(m.notes.map((n) => n.message), ["address 10.0.1.2 is already used by Pod/shop/zz"]);
  });
  await t.step("a reported address outside the node's pod range (a Node's spec.podCIDRs) is left out", () => {
    const nodes = `apiVersion: v1
kind: Node
metadata: { name: node-a }
spec: { podCIDR: 10.0.1.0/24 }
---
apiVersion: v1
kind: Node
metadata: { name: node-b }
spec: { podCIDR: 10.0.2.0/24 }
---
`;
    const m = build(nodes + yaml + POD("api-1", "shop", "", { node: "node-c" }).replace("status:\n  podIP: \n", ""), [
      { ...redirected("web-1", "shop"), ips: ["10.0.1.7", "10.0.2.7"] },
      { ...redirected("api-1", "shop", "node-c"), ips: ["10.0.2.8"] },
    ]);
    assert.deepEqual(m.workloads.map((w) => [w.name, w.addresses]), [["web-1", ["10.0.1.7"]]]);
    assert.deepEqual(m.notes.map((n) => [n.key, n.message]), [
      ["Pod/shop/api-1", "reported 10.0.2.8 lies in the pod range 10.0.2.0/24 of node node-b"],
      ["Pod/shop/web-1", "reported 10.0.2.7 is not in the pod range of node node-a (10.0.1.0/24)"],
    ]);
  });
  await t.step("a reported address no pod has (stored before reports were checked) is left out", () => {
    const m = build(yaml, [{ ...redirected("web-1", "shop"), ips: ["::ffff:a00:107", "10.0.1.7", "127.0.0.1"] }]);
    assert.deepEqual(m.workloads.map((w) => [w.name, w.addresses]), [["web-1", ["10.0.1.7"]]]);
    assert.deepEqual(m.notes.map((n) => n.message), [
      "reported ::ffff:a00:107 is an IPv4-mapped IPv6 address (report the IPv4 address itself), not a pod's",
      "reported 127.0.0.1 is a loopback address, not a pod's",
    ]);
  });
  await t.step("a pod nothing declares is left out: no workload, no identity for the reporting node", () => {
    const m = build("", [{ ...redirected("job-1", "batch", "node-c"), ips: ["10.0.3.3"] }]);
    assert.deepEqual([m.workloads, m.identities.get("node-c")], [[], undefined]);
    assert.match(m.notes[0].message, /no manifest or Kubernetes object declares it; it is left out/);
  });
});

Deno.test("buildMesh() refuses a second claim on an address and says whose it is", () => {
  const m = build(POD("a", "shop", "10.0.1.2") + POD("b", "shop", "10.0.1.2"));
  assert.deepEqual(m.workloads.map((w) => w.name), ["a"]);
  assert.deepEqual(m.notes, [{
    key: "Pod/shop/b",
    severity: "error",
    message: "address 10.0.1.2 is already used by Pod/shop/a",
  }]);
});

Deno.test("buildMesh() makes services with VIPs, named target ports resolved per endpoint, and WorkloadEntries", () => {
  const yaml = POD("web-1", "shop", "10.0.1.2", { labels: "app: web" }) +
    POD("web-2", "shop", "10.0.1.3", { labels: "app: web" }) +
    POD("db-1", "shop", "10.0.1.4", { labels: "app: db" }) +
    `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: shop, annotations: { skiff.io/node: vm-1 } }
spec:
  address: 192.168.5.10
  labels: { app: web }
  ports: { http: 9090 }
  serviceAccount: legacy
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  clusterIP: 10.96.0.10
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: http }
    - { name: metrics, port: 9100, targetPort: 9100 }
    - { name: dns, port: 53, protocol: UDP }
---
apiVersion: v1
kind: Service
metadata: { name: auto, namespace: shop }
spec:
  selector: { app: db }
  ports: [{ port: 5432 }]
`;
  const m = build(yaml, [], new Map([["Service/shop/auto", "10.96.0.99"]]));
  const web = m.services.find((s) => s.name === "web")!;
  assert.equal(web.hostname, "web.shop.svc.cluster.local");
  assert.deepEqual(web.addresses, [{ network: "", address: "10.96.0.10" }]);
  // Port `http` declares HTTP/1.1 by its name, as istiod reads it.
  assert.deepEqual(web.ports, [
    { port: 80, targetPort: 0, targetPortName: "http", appProtocol: "http" },
    { port: 9100, targetPort: 9100 },
  ]);
  const svcKey = "shop/web.shop.svc.cluster.local";
  const byName = new Map(m.workloads.map((w) => [w.name, w]));
  assert.deepEqual(byName.get("web-1")!.services[svcKey], [
    { servicePort: 80, targetPort: 8080, appProtocol: "http" },
    { servicePort: 9100, targetPort: 9100 },
  ]);
  assert.deepEqual(byName.get("vm-1")!.services[svcKey][0], { servicePort: 80, targetPort: 9090, appProtocol: "http" });
  assert.equal(byName.get("vm-1")!.uid, "Kubernetes/networking.istio.io/WorkloadEntry/shop/vm-1");
  assert.equal(byName.get("vm-1")!.node, "vm-1");
  assert.equal(byName.get("db-1")!.services[svcKey], undefined);
  assert.deepEqual(m.services.find((s) => s.name === "auto")!.addresses, [{ network: "", address: "10.96.0.99" }]);
  assert.deepEqual(m.needAddresses, []);
  assert.deepEqual(build(yaml).needAddresses, ["Service/shop/auto"]);
});

Deno.test("buildMesh() binds services and workloads to waypoints as istio.io/use-waypoint says", async (t) => {
  const gateway = (name: string, waypointFor = "") =>
    `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: ${name}
  namespace: shop
  labels: {${waypointFor ? `istio.io/waypoint-for: ${waypointFor}` : ""}}
spec:
  gatewayClassName: istio-waypoint
  addresses: [{ type: IPAddress, value: 10.96.1.1 }]
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
`;
  const svc = (name: string, labels = "") =>
    `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop, labels: {${labels}} }
spec: { clusterIP: 10.96.0.${name.length}, selector: { app: ${name} }, ports: [{ port: 80 }] }
---
`;
  const address = { hostname: { namespace: "shop", hostname: "wp.shop.svc.cluster.local" }, hboneMtlsPort: 15008 };
  await t.step("a namespace label binds its services; a service's own label wins, none opts out", () => {
    const m = build(
      NS("shop", "istio.io/use-waypoint: wp") + gateway("wp") + svc("a") + svc("bb", "istio.io/use-waypoint: none") +
        POD("wp-1", "shop", "10.0.1.50", { labels: "gateway.networking.k8s.io/gateway-name: wp" }) +
        POD("a-1", "shop", "10.0.1.2", { labels: "app: a" }),
    );
    const byName = new Map(m.services.map((s) => [s.name, s]));
    assert.deepEqual(byName.get("a")!.waypoint, address);
    assert.equal(byName.get("bb")!.waypoint, undefined);
    assert.deepEqual(byName.get("wp")!.addresses, [{ network: "", address: "10.96.1.1" }]);
    assert.deepEqual(byName.get("wp")!.ports, [{ port: 15008, targetPort: 15008 }]);
    const wl = new Map(m.workloads.map((w) => [w.name, w]));
    // waypoint-for defaults to service: workloads are not bound; the waypoint's own workload is HBONE.
    assert.equal(wl.get("a-1")!.waypoint, undefined);
    assert.equal(wl.get("wp-1")!.tunnelProtocol, "HBONE");
    assert.deepEqual(Object.keys(wl.get("wp-1")!.services), ["shop/wp.shop.svc.cluster.local"]);
  });
  await t.step("waypoint-for workload binds workloads, not services", () => {
    const m = build(
      NS("shop", "istio.io/use-waypoint: wp") + gateway("wp", "workload") + svc("a") +
        POD("a-1", "shop", "10.0.1.2", { labels: "app: a" }),
    );
    assert.equal(m.services.find((s) => s.name === "a")!.waypoint, undefined);
    assert.deepEqual(m.workloads.find((w) => w.name === "a-1")!.waypoint, address);
  });
  await t.step("a binding to a waypoint nobody declared is kept, so traffic is refused, and reported", () => {
    const m = build(svc("a", "istio.io/use-waypoint: wp"));
    assert.deepEqual(m.services[0].waypoint, address);
    assert.match(m.notes[0].message, /waypoint shop\/wp is not declared/);
  });
});

Deno.test("buildMesh() converts AuthorizationPolicy as istiod does for ztunnel, stricter on L7", async (t) => {
  const policy = (name: string, ns: string, spec: string) =>
    `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: ${ns} }
spec:
${spec}
---
`;
  const yaml = POD("web-1", "shop", "10.0.1.2", { labels: "app: web" }) +
    POD("db-1", "shop", "10.0.1.3", { labels: "app: db" }) +
    policy(
      "mesh",
      "istio-system",
      "  action: DENY\n  rules: [{ from: [{ source: { ipBlocks: [203.0.113.0/24] } }] }]",
    ) +
    policy("ns", "shop", "  rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/*'] } }] }]") +
    policy(
      "web-only",
      "shop",
      `  selector: { matchLabels: { app: web } }
  rules:
    - from: [{ source: { namespaces: [front] } }, { source: { principals: ["*"] } }]
      to: [{ operation: { ports: ["8080"] } }]
      when: [{ key: source.ip, values: [10.0.0.0/8] }]
    - to: [{ operation: { methods: [GET] } }]`,
    ) +
    policy(
      "deny-admin",
      "shop",
      `  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin], ports: ["9000"] } }] }]`,
    ) +
    policy("for-waypoint", "shop", "  targetRefs: [{ kind: Service, group: '', name: web }]\n  rules: [{}]");
  const m = build(yaml);
  const byName = new Map(m.policies.map((p) => [p.name, p]));
  await t.step(
    "scope: root namespace GLOBAL, namespace NAMESPACE, selector WORKLOAD_SELECTOR; targetRefs not sent",
    () => {
      assert.deepEqual(m.policies.map((p) => [p.name, p.scope, p.action]), [
        ["mesh", "GLOBAL", "DENY"],
        ["deny-admin", "NAMESPACE", "DENY"],
        ["ns", "NAMESPACE", "ALLOW"],
        ["web-only", "WORKLOAD_SELECTOR", "ALLOW"],
      ]);
      assert.deepEqual(m.workloads.find((w) => w.name === "web-1")!.authorizationPolicies, ["shop/web-only"]);
      assert.deepEqual(m.workloads.find((w) => w.name === "db-1")!.authorizationPolicies, []);
    },
  );
  await t.step("from, to and each when become clauses; patterns become prefix/suffix/presence", () => {
    const [rule] = byName.get("web-only")!.rules;
    assert.equal(rule.clauses.length, 3);
    assert.deepEqual(rule.clauses[0].matches.map((x) => [x.namespaces, x.principals]), [
      [[{ exact: "front" }], []],
      [[], [{ presence: true }]],
    ]);
    assert.deepEqual(rule.clauses[1].matches[0].destinationPorts, [8080]);
    assert.deepEqual(rule.clauses[2].matches[0].sourceIps, [{ address: "10.0.0.0", length: 8 }]);
    assert.deepEqual(byName.get("ns")!.rules[0].clauses[0].matches[0].principals, [{
      prefix: "cluster.local/ns/shop/sa/",
    }]);
  });
  await t.step("an ALLOW rule with L7 fields is dropped; a DENY rule keeps its L4 part; both are warned", () => {
    assert.equal(byName.get("web-only")!.rules.length, 1);
    const deny = byName.get("deny-admin")!.rules;
    assert.equal(deny.length, 1);
    assert.deepEqual(deny[0].clauses[0].matches[0].destinationPorts, [9000]);
    const warnings = m.notes.filter((n) => n.severity === "warning").map((n) => n.key);
    assert.deepEqual(warnings, [
      "AuthorizationPolicy/shop/deny-admin",
      "AuthorizationPolicy/shop/for-waypoint", // for waypoints: its target Service web is not declared here
      "AuthorizationPolicy/shop/web-only",
    ]);
  });
});

Deno.test("buildMesh() turns PeerAuthentication STRICT into a DENY of plaintext, with Istio's precedence", async (t) => {
  const pa = (name: string, ns: string, spec: string) =>
    `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: ${name}, namespace: ${ns} }
spec:
${spec}
---
`;
  const pods = POD("web-1", "shop", "10.0.1.2", { labels: "app: web" }) +
    POD("db-1", "shop", "10.0.1.3", { labels: "app: db" }) + POD("x-1", "other", "10.0.2.2");
  const policiesOf = (m: MeshModel) => Object.fromEntries(m.workloads.map((w) => [w.name, w.authorizationPolicies]));
  await t.step("mesh-wide STRICT applies everywhere; a namespace PERMISSIVE overrides it", () => {
    const m = build(
      pods + pa("default", "istio-system", "  mtls: { mode: STRICT }") +
        pa("default", "other", "  mtls: { mode: PERMISSIVE }"),
    );
    const strict = "istio-system/istio_converted_static_strict";
    assert.deepEqual(policiesOf(m), { "x-1": [], "db-1": [strict], "web-1": [strict] });
    const p = m.policies.find((x) => x.name === "istio_converted_static_strict")!;
    assert.equal(p.action, "DENY");
    assert.deepEqual(p.rules[0].clauses[0].matches[0].notPrincipals, [{ presence: true }]);
  });
  await t.step("a workload policy with UNSET inherits; port-level modes become port rules", () => {
    const m = build(
      pods + pa("default", "shop", "  mtls: { mode: STRICT }") +
        pa(
          "web",
          "shop",
          "  selector: { matchLabels: { app: web } }\n  portLevelMtls: { '8081': { mode: PERMISSIVE } }",
        ),
    );
    const key = "shop/istio_converted_peer_authentication_web";
    assert.deepEqual(policiesOf(m)["web-1"], [key]);
    const p = m.policies.find((x) => `${x.namespace}/${x.name}` === key)!;
    assert.deepEqual(p.rules[0].clauses[0].matches[0].notDestinationPorts, [8081]);
  });
});

Deno.test("buildMesh() with a cache gives the same model, and keeps the objects of namespaces nothing touched", () => {
  const yaml = NS("shop", "istio.io/dataplane-mode: ambient") +
    POD("web-1", "shop", "10.0.1.2", { labels: "app: web" }) +
    POD("db-1", "data", "10.0.2.2") + `apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, selector: { app: web }, ports: [{ port: 80 }] }
`;
  const input = (text: string) => ({
    objects: parseManifestFile(text, "t.yaml").objects,
    registrations: [redirected("web-1", "shop")],
    vips: new Map<string, string>(),
    settings: DEFAULT_SETTINGS,
  });
  const cache = new BuildCache();
  const first = buildMesh(input(yaml), cache);
  assert.deepEqual(first, buildMesh(input(yaml)));
  const changed = yaml.replace("10.0.2.2", "10.0.2.3");
  const second = buildMesh(input(changed), cache);
  assert.deepEqual(second, buildMesh(input(changed)));
  const byName = (m: MeshModel, n: string) => m.workloads.find((w) => w.name === n);
  assert.equal(byName(second, "web-1"), byName(first, "web-1"), "shop was not rebuilt");
  assert.notEqual(byName(second, "db-1"), byName(first, "db-1"));
  assert.deepEqual(byName(second, "db-1")!.addresses, ["10.0.2.3"]);
});

Deno.test("buildMesh() gives each node agent the pods on its node, enrolled as upstream's node agent decides", async (t) => {
  const pod = (
    name: string,
    ns: string,
    o: { node?: string; labels?: string; annotations?: string; spec?: string; phase?: string } = {},
  ) =>
    `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns}, labels: {${o.labels ?? ""}}, annotations: {${o.annotations ?? ""}} }
spec: { ${o.node === "" ? "" : `nodeName: ${o.node ?? "node-a"},`} serviceAccountName: sa-${name} ${o.spec ?? ""} }
status: { phase: ${o.phase ?? "Running"} }
---
`;
  const yaml = NS("shop", "istio.io/dataplane-mode: ambient") + NS("other") +
    NS("apps", "istio.io/dataplane-mode: ambient") +
    pod("web", "shop") +
    pod("host", "shop", { spec: ", hostNetwork: true" }) +
    pod("sidecar", "shop", { annotations: "sidecar.istio.io/status: '{}'" }) +
    pod("wp", "shop", { labels: "gateway.networking.k8s.io/gateway-name: wp" }) +
    pod("opted-out", "shop", { labels: "istio.io/dataplane-mode: none" }) +
    pod("opted-in", "other", { labels: "istio.io/dataplane-mode: ambient" }) +
    pod("both", "shop", { labels: "istio.io/dataplane-mode: ambient" }) +
    pod("plain", "other") +
    pod("done", "shop", { phase: "Succeeded" }) +
    pod("failed", "shop", { phase: "Failed" }) +
    pod("unscheduled", "shop", { node: "" }) +
    pod("elsewhere", "apps", { node: "node-b" });
  const m = build(yaml);
  const view = (node: string) => m.nodePods.get(node)?.map((p) => [`${p.namespace}/${p.name}`, p.enrolled, p.reason]);
  await t.step("each exclusion and label says why; a pod's own label wins over its namespace's", () => {
    assert.deepEqual(view("node-a"), [
      ["other/opted-in", true, "pod label istio.io/dataplane-mode=ambient"],
      ["other/plain", false, "no istio.io/dataplane-mode=ambient on the pod or its namespace"],
      ["shop/both", true, "pod label istio.io/dataplane-mode=ambient"],
      ["shop/host", false, "host network"],
      ["shop/opted-out", false, "pod label istio.io/dataplane-mode=none"],
      ["shop/sidecar", false, "has a sidecar"],
      ["shop/web", true, "namespace label istio.io/dataplane-mode=ambient"],
      ["shop/wp", false, "waypoint (speaks HBONE itself)"],
    ], "finished and unscheduled pods are in no view; pods need no address");
    assert.deepEqual(m.nodePods.get("node-a")![0], {
      namespace: "other",
      name: "opted-in",
      serviceAccount: "sa-opted-in",
      enrolled: true,
      reason: "pod label istio.io/dataplane-mode=ambient",
    });
  });
  await t.step("a node sees only its own pods; the ambient namespaces are listed, sorted", () => {
    assert.deepEqual(view("node-b"), [["apps/elsewhere", true, "namespace label istio.io/dataplane-mode=ambient"]]);
    assert.deepEqual([...m.nodePods.keys()].sort(), ["node-a", "node-b"]);
    assert.deepEqual(m.ambientNamespaces, ["apps", "shop"]);
  });
  await t.step("a WorkloadEntry is no pod of any node", () => {
    const entry = `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: vm-1, namespace: shop, annotations: { skiff.io/node: node-a } }
spec: { address: 192.168.5.10 }
`;
    assert.deepEqual(build(entry).nodePods, new Map());
  });
  await t.step("a build with the cache gives the same views as one without, before and after a change", () => {
    const input = (text: string) => ({
      objects: parseManifestFile(text, "t.yaml").objects,
      registrations: [],
      vips: new Map<string, string>(),
      settings: DEFAULT_SETTINGS,
    });
    const cache = new BuildCache();
    const first = buildMesh(input(yaml), cache);
    assert.deepEqual(first, buildMesh(input(yaml)));
    const changed = yaml + pod("web-2", "shop", { labels: "istio.io/dataplane-mode: none" });
    const labelled = changed.replace(NS("other"), NS("other", "istio.io/dataplane-mode: ambient"));
    for (const text of [changed, labelled]) {
      const cached = buildMesh(input(text), cache);
      assert.deepEqual(cached, buildMesh(input(text)));
    }
    const last = buildMesh(input(labelled), cache);
    assert.deepEqual(last.ambientNamespaces, ["apps", "other", "shop"]);
    assert.deepEqual(
      last.nodePods.get("node-a")!.find((p) => p.name === "plain")!.reason,
      "namespace label istio.io/dataplane-mode=ambient",
      "a namespace's new label reaches its cached pods",
    );
  });
});

Deno.test("buildMesh() attaches HTTPRoutes to the Services they name, for waypoints, and notes what it left out", async (t) => {
  const yaml = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: web-v2, namespace: shop }
spec: { clusterIP: 10.96.0.11, selector: { app: web-v2 }, ports: [{ port: 80 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: split, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, port: 80 }, { group: "", kind: Service, name: gone }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /v2 } }]
      backendRefs: [{ name: web-v2, port: 80, weight: 10 }, { name: web, port: 80, weight: 90 }, { name: old, port: 80 }]
      timeouts: { request: 1h30m }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: at-gateway, namespace: shop }
spec:
  parentRefs: [{ name: waypoint }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: z, namespace: apps }
spec:
  parentRefs: [{ group: "", kind: Service, name: api }]
---
apiVersion: v1
kind: Service
metadata: { name: api, namespace: apps }
spec: { clusterIP: 10.96.0.12, ports: [{ port: 8080 }] }
`;
  const m = build(yaml);
  await t.step("parents and backends are service keys; the routes come sorted by namespace/name", () => {
    assert.deepEqual(m.routes.map((r) => `${r.namespace}/${r.name}`), ["apps/z", "shop/split"]);
    const split = m.routes[1];
    assert.deepEqual(split.parents, [{ service: "shop/web.shop.svc.cluster.local", port: 80 }]);
    assert.deepEqual(split.rules[0].backends, [
      { service: "shop/web-v2.shop.svc.cluster.local", port: 80, weight: 10 },
      { service: "shop/web.shop.svc.cluster.local", port: 80, weight: 90 },
      { service: "shop/old.shop.svc.cluster.local", port: 80, weight: 1, problem: "Service shop/old is not declared" },
    ]);
    assert.equal(split.rules[0].timeoutMs, 5_400_000);
  });
  await t.step("an undeclared parent, a Gateway parent and an undeclared backend are noted on the route", () => {
    assert.deepEqual(m.notes.map((n) => [n.key, n.severity]), [
      ["HTTPRoute/shop/at-gateway", "warning"],
      ["HTTPRoute/shop/at-gateway", "warning"],
      ["HTTPRoute/shop/split", "warning"],
      ["HTTPRoute/shop/split", "warning"],
    ]);
    assert.match(m.notes[0].message, /Skiff's waypoints take routes attached to Services/);
    assert.match(m.notes[1].message, /no parent Service is left/);
    assert.match(
      m.notes[2].message,
      /spec.parentRefs\[1\]: Service shop\/gone is not declared; this parent is ignored/,
    );
    assert.match(m.notes[3].message, /backendRefs\[2\]: Service shop\/old is not declared; its share of requests/);
  });
  await t.step("what the waypoint receives decodes unchanged; a build with the cache gives the same routes", () => {
    for (const r of m.routes) assert.deepEqual(decodeHttpRoute(JSON.parse(JSON.stringify(r))), r);
    const input = () => ({
      objects: parseManifestFile(yaml, "t.yaml").objects,
      registrations: [],
      vips: new Map<string, string>(),
      settings: DEFAULT_SETTINGS,
    });
    const cache = new BuildCache();
    buildMesh(input(), cache);
    assert.deepEqual(buildMesh(input(), cache), m);
  });
});

Deno.test("buildMesh() converts targetRefs AuthorizationPolicies for waypoints, failing the safe way", async (t) => {
  const policy = (name: string, spec: string, annotations = "") =>
    `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: shop, annotations: {${annotations}} }
spec:
${spec}
---
`;
  const waypoint = "  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }]\n";
  const web = "  targetRefs: [{ kind: Service, group: '', name: web }]\n";
  const yaml = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec: { gatewayClassName: istio-waypoint }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ port: 80 }] }
---
` +
    policy(
      "allow-get",
      waypoint + `  rules:
    - to: [{ operation: { methods: [GET], ports: ["8080"], paths: ["/api/*"] } }]
    - from: [{ source: { requestPrincipals: ["*"] } }]
    - when: [{ key: "request.auth.claims[iss]", values: [issuer] }]
    - when: [{ key: "request.headers[X-Token]", values: [secret] }]`,
    ) +
    policy(
      "deny-jwt",
      web + `  action: DENY
  rules:
    - from: [{ source: { requestPrincipals: [evil], namespaces: [dev] } }]
      to: [{ operation: { paths: [/admin] } }]
      when: [{ key: connection.sni, values: [x] }, { key: source.ip, values: [10.0.0.0/8] }]`,
    ) +
    policy(
      "by-sa",
      web + `  rules: [{ from: [{ source: { serviceAccounts: [shop/cart], notServiceAccounts: [dev/x] } }] }]`,
      "istio.io/dry-run: 'true'",
    ) +
    policy("custom", web + "  action: CUSTOM\n  provider: { name: ext-authz }\n  rules: [{}]") +
    policy("audit", web + "  action: AUDIT\n  rules: [{}]") +
    policy(
      "ghost",
      "  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: nope }, { kind: Service, group: '', name: gone }]\n  action: DENY\n  rules: [{}]",
    ) +
    policy("pods", "  targetRefs: [{ kind: Pod, group: '', name: web-1 }]\n  rules: [{}]");
  const m = build(yaml);
  const byName = new Map(m.l7Policies.map((p) => [p.name, p]));
  const notes = (name: string) =>
    m.notes.filter((n) => n.key === `AuthorizationPolicy/shop/${name}`).map((n) => `${n.severity}: ${n.message}`);
  await t.step("the policies go to waypoints only, sorted by key, with their targets", () => {
    assert.deepEqual(m.l7Policies.map((p) => p.name), ["allow-get", "by-sa", "custom", "deny-jwt", "ghost"]);
    assert.deepEqual(m.policies.filter((p) => p.namespace === "shop"), [], "ztunnel receives none of them");
    assert.deepEqual(byName.get("allow-get")!.targets, [{ kind: "Gateway", namespace: "shop", name: "waypoint" }]);
    assert.deepEqual(byName.get("deny-jwt")!.targets, [{ kind: "Service", namespace: "shop", name: "web" }]);
  });
  await t.step("an ALLOW rule the waypoint cannot check is dropped; the rest keep L7 fields as written", () => {
    const p = byName.get("allow-get")!;
    assert.equal(p.action, "ALLOW");
    assert.deepEqual(p.rules, [
      {
        from: [],
        to: [{
          hosts: [],
          notHosts: [],
          ports: [8080],
          notPorts: [],
          methods: ["GET"],
          notMethods: [],
          paths: ["/api/*"],
          notPaths: [],
        }],
        when: [],
      },
      { from: [], to: [], when: [{ key: "request.headers[x-token]", values: ["secret"], notValues: [] }] },
    ]);
    assert.deepEqual(notes("allow-get").length, 2);
    assert.match(
      notes("allow-get")[0],
      /^warning: rule 1 uses spec.rules\[1\].from\[0\].source.requestPrincipals .*dropped/,
    );
    assert.match(
      notes("allow-get")[1],
      /^warning: rule 2 uses spec.rules\[2\].when\[0\] \(request.auth.claims\[iss\]: JWT/,
    );
  });
  await t.step("a DENY rule loses what the waypoint cannot check, so it denies more, and says so", () => {
    const [rule] = byName.get("deny-jwt")!.rules;
    assert.deepEqual(rule.from[0].namespaces, ["dev"]);
    assert.deepEqual(rule.to[0].paths, ["/admin"]);
    assert.deepEqual(rule.when, [{ key: "source.ip", values: ["10.0.0.0/8"], notValues: [] }]);
    assert.match(notes("deny-jwt")[0], /requestPrincipals .*connection.sni.* denies all the traffic it could cover/);
  });
  await t.step("service accounts become principals of the trust domain; dry-run is read from the annotation", () => {
    const p = byName.get("by-sa")!;
    assert.deepEqual([p.rules[0].from[0].principals, p.rules[0].from[0].notPrincipals], [
      ["cluster.local/ns/shop/sa/cart"],
      ["cluster.local/ns/dev/sa/x"],
    ]);
    assert.equal(p.dryRun, true);
    assert.equal(byName.get("allow-get")!.dryRun, false);
  });
  await t.step("CUSTOM denies every request, as istiod does without its provider; AUDIT is dropped", () => {
    assert.deepEqual([byName.get("custom")!.action, byName.get("custom")!.rules], ["DENY", [{
      from: [],
      to: [],
      when: [],
    }]]);
    assert.match(notes("custom")[0], /^error: action CUSTOM .* denies every request/);
    assert.equal(byName.has("audit"), false);
    assert.match(notes("audit")[0], /^warning: action AUDIT is not supported/);
  });
  await t.step("an undeclared target still streams and is noted; a kind Skiff cannot target is left out", () => {
    assert.equal(byName.get("ghost")!.targets.length, 2);
    assert.deepEqual(notes("ghost").map((n) => n.split(":")[0]), ["warning", "warning"]);
    assert.match(notes("ghost")[0], /Gateway shop\/nope is not a declared waypoint/);
    assert.match(notes("ghost")[1], /Service shop\/gone is not declared/);
    assert.equal(byName.has("pods"), false);
    assert.match(notes("pods")[0], /^error: spec.targetRefs\[0\]: Pod of group "" is not a target Skiff supports/);
  });
  await t.step("what the waypoint receives decodes unchanged", () => {
    for (const p of m.l7Policies) assert.deepEqual(decodeL7Policy(JSON.parse(JSON.stringify(p))), p);
  });
  await t.step("CUSTOM and AUDIT stay refused for ztunnel's policies", () => {
    const parsed = parseManifestFile(policy("c", "  action: CUSTOM\n  provider: { name: x }"), "t.yaml");
    assert.deepEqual(parsed.problems.map((p) => [p.field, p.message]), [[
      "spec.action",
      "CUSTOM is not supported by Skiff (ALLOW and DENY are)",
    ]]);
  });
});
