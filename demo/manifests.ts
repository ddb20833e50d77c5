/**
 * What the demo declares, stage by stage, as one manifests file the control plane watches: the two nodes with
 * their pod ranges (so the control plane holds each node agent's report to its own range, control/reports.ts),
 * the sample apps in namespace `demo` (pods scheduled on the two nodes, a systemd unit on node2, services), then
 * the namespace enrolled, then an L4 DENY policy for one client, then a waypoint with an HTTPRoute that splits the
 * echo service 90/10 between versions.
 *
 * @module
 */

import { NODES } from "./cluster.ts";

/** The demo's Kubernetes namespace. */
export const NS = "demo";

/** Services' addresses. */
export const VIPS = {
  echo: "10.96.10.10",
  v1: "10.96.10.11",
  v2: "10.96.10.12",
  tcp: "10.96.10.20",
  billing: "10.96.10.30",
};

/**
 * The demo's systemd unit, run as systemd would run `billing.service` in `skiff-demo.slice` (demo/unit.ts): a
 * process in its own cgroup, in node2's own network namespace on node2's address, no pod around it. A
 * WorkloadEntry declares it with `skiff.io/node` and `skiff.io/unit` (docs/vm-install.md §4), and service
 * `billing` selects it, so pods reach it as `billing.demo.svc.cluster.local`.
 */
export const UNIT = {
  name: "billing",
  node: "node2",
  port: 8090,
  cgroup: "skiff-demo.slice/billing.service",
  address: NODES.find((n) => n.name === "node2")!.address,
} as const;

/** The pods: where they run and what they are. */
export const PODS = [
  { name: "client", node: "node1", labels: { app: "client" } },
  { name: "intruder", node: "node1", labels: { app: "intruder" } },
  { name: "echo-v1", node: "node2", labels: { app: "echo", version: "v1" } },
  { name: "echo-v2", node: "node1", labels: { app: "echo", version: "v2" } },
  { name: "tcp-echo", node: "node2", labels: { app: "tcp-echo" } },
  {
    name: "waypoint",
    node: "node2",
    labels: { "gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/dataplane-mode": "none" },
  },
] as const;

/** How far the tour has gone. */
export type Stage = "plain" | "enrolled" | "deny" | "waypoint";
const ORDER: Stage[] = ["plain", "enrolled", "deny", "waypoint"];

const labels = (l: Record<string, string>) =>
  Object.entries(l).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(", ");

/** The manifests file of a stage. */
export function manifests(stage: Stage): string {
  const at = (s: Stage) => ORDER.indexOf(stage) >= ORDER.indexOf(s);
  const nsLabels: Record<string, string> = at("enrolled") ? { "istio.io/dataplane-mode": "ambient" } : {};
  const docs: string[] = [
    `apiVersion: v1\nkind: Namespace\nmetadata: { name: ${NS}, labels: { ${labels(nsLabels)} } }`,
    // As the node IPAM controller fills them in: the range each node's host-local IPAM gives (demo/cluster.ts).
    ...NODES.map((n) =>
      `apiVersion: v1\nkind: Node\nmetadata: { name: ${n.name} }\n` +
      `spec: { podCIDR: ${n.podCidr}, podCIDRs: [${n.podCidr}] }`
    ),
    ...PODS.map((p) =>
      `apiVersion: v1\nkind: Pod\nmetadata: { name: ${p.name}, namespace: ${NS}, labels: { ${labels(p.labels)} } }\n` +
      `spec: { nodeName: ${p.node}, serviceAccountName: ${p.name} }`
    ),
    service(
      "echo",
      VIPS.echo,
      { app: "echo" },
      80,
      8080,
      at("waypoint") ? { "istio.io/use-waypoint": "waypoint" } : {},
    ),
    service("echo-v1", VIPS.v1, { version: "v1" }, 80, 8080),
    service("echo-v2", VIPS.v2, { version: "v2" }, 80, 8080),
    service("tcp-echo", VIPS.tcp, { app: "tcp-echo" }, 9000, 9000),
    `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ${UNIT.name}
  namespace: ${NS}
  annotations: { skiff.io/node: ${UNIT.node}, skiff.io/unit: ${UNIT.cgroup} }
spec: { address: ${UNIT.address}, serviceAccount: ${UNIT.name}, labels: { app: ${UNIT.name} }, ports: { http: ${UNIT.port} } }`,
    service(UNIT.name, VIPS.billing, { app: UNIT.name }, 80, UNIT.port),
  ];
  if (at("deny")) {
    docs.push(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-intruder, namespace: ${NS} }
spec:
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/${NS}/sa/intruder] } }] }]`);
  }
  if (at("waypoint")) {
    docs.push(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: ${NS} }
spec:
  gatewayClassName: istio-waypoint
  listeners: [{ name: mesh, port: 15008, protocol: HBONE }]`);
    docs.push(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: echo-split, namespace: ${NS} }
spec:
  parentRefs: [{ group: "", kind: Service, name: echo, port: 80 }]
  rules:
  - backendRefs: [{ name: echo-v1, port: 80, weight: 90 }, { name: echo-v2, port: 80, weight: 10 }]`);
  }
  return docs.join("\n---\n") + "\n";
}

function service(
  name: string,
  vip: string,
  selector: Record<string, string>,
  port: number,
  targetPort: number,
  extra: Record<string, string> = {},
): string {
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${NS}, labels: { ${labels(extra)} } }
spec: { clusterIP: ${vip}, selector: { ${labels(selector)} }, ports: [{ port: ${port}, targetPort: ${targetPort} }] }`;
}
