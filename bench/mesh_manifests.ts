/**
 * A mesh of any size as manifests, for the benchmarks (bench/control.ts, bench/sync.ts): pods spread over nodes
 * and namespaces, services each selecting every SERVICES-th pod, and ALLOW policies between namespaces.
 *
 * @module
 */

/** How big a mesh {@link meshManifests} writes. */
export interface MeshSize {
  pods: number;
  services: number;
  policies: number;
  nodes: number;
  namespaces: number;
}

/** File name → YAML of a mesh of `size`. */
export function meshManifests(
  { pods: PODS, services: SERVICES, policies: POLICIES, nodes: NODES, namespaces: NAMESPACES }: MeshSize,
): Record<string, string> {
  const files: Record<string, string[]> = {};
  const add = (ns: number, doc: string) => (files[`ns-${ns}.yaml`] ??= []).push(doc);
  for (let n = 0; n < NAMESPACES; n++) {
    add(
      n,
      `apiVersion: v1\nkind: Namespace\nmetadata: { name: ns-${n}, labels: { istio.io/dataplane-mode: ambient } }`,
    );
  }
  for (let i = 0; i < PODS; i++) {
    const ns = i % NAMESPACES;
    const ip = `10.${100 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`;
    add(
      ns,
      `apiVersion: v1
kind: Pod
metadata: { name: pod-${i}, namespace: ns-${ns}, labels: { app: svc-${
        i % SERVICES
      } }, annotations: { ambient.istio.io/redirection: enabled } }
spec: { nodeName: node-${i % NODES}, serviceAccountName: sa-${
        i % 50
      }, containers: [{ name: app, ports: [{ name: http, containerPort: 8080 }] }] }
status: { podIP: ${ip}, phase: Running }`,
    );
  }
  for (let s = 0; s < SERVICES; s++) {
    // svc-s selects the pods i with i % SERVICES == s, which all sit in namespace s % NAMESPACES.
    const ns = s % NAMESPACES;
    add(
      ns,
      `apiVersion: v1
kind: Service
metadata: { name: svc-${s}, namespace: ns-${ns} }
spec: { clusterIP: 10.96.${Math.floor(s / 256)}.${
        s % 256
      }, selector: { app: svc-${s} }, ports: [{ name: http, port: 80, targetPort: http }] }`,
    );
  }
  for (let p = 0; p < POLICIES; p++) {
    add(
      p % NAMESPACES,
      `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-${p}, namespace: ns-${p % NAMESPACES} }
spec:
  selector: { matchLabels: { app: svc-${p} } }
  rules: [{ from: [{ source: { namespaces: [ns-${
        (p + 1) % NAMESPACES
      }] } }], to: [{ operation: { ports: ["8080"] } }] }]`,
    );
  }
  return Object.fromEntries(Object.entries(files).map(([f, docs]) => [f, docs.join("\n---\n") + "\n"]));
}
