/**
 * The node agent's view from the control plane: which pods are scheduled on its node and whether each is
 * enrolled in the mesh, as upstream's istio-cni node agent learns from its pod and namespace informers. The
 * control plane decides enrolment with the same rule it uses to build workloads (control/build/workloads.ts),
 * so the agent and the model can never disagree about a pod.
 *
 * ```
 * POST https://CONTROL:15012/v1/node-pods        Authorization: Bearer <node token>
 * {}
 * ```
 *
 * The body asks for nothing (any field is a 400): the node is the one the token names, so an agent can never
 * read another node's pods. A wrong, expired or revoked token is a 401, as on every endpoint of 15012.
 *
 * The answer is `application/x-ndjson`, one message a line, for as long as the client stays:
 *
 * - `{"type":"pods","version":"<digest>","node":"node1","pods":[...],"ambientNamespaces":[...]}` first, and again
 *   whenever the view of this node changes: always the whole view (a node holds at most a few hundred pods).
 *   `version` is a digest of the view, equal across control-plane restarts.
 * - `{"type":"ping"}` every `PING_INTERVAL_MS` (config_stream.ts). The token is checked again at each: one revoked
 *   or expired meanwhile ends the stream. A client takes a stream silent for three pings as dead, and reconnects.
 *
 * A pod is `{"namespace","name","serviceAccount","enrolled","reason"}`, sorted by namespace then name. Every pod
 * scheduled on the node (`spec.nodeName`) and not finished (phase Succeeded or Failed) is listed, with or without
 * an address yet: the agent reports addresses once it has set the pod up. `reason` says in words why it is or is
 * not enrolled, the first of: `host network`, `has a sidecar` (annotation `sidecar.istio.io/status`),
 * `waypoint (speaks HBONE itself)`, `pod label istio.io/dataplane-mode=ambient` (or `=none`),
 * `namespace label istio.io/dataplane-mode=ambient`, `no istio.io/dataplane-mode=ambient on the pod or its
 * namespace`. `ambientNamespaces` lists the namespaces labelled `istio.io/dataplane-mode=ambient`, sorted, so the
 * agent can tell a pod it does not know yet in an enrolled namespace (not declared yet: try again later) from one
 * outside the mesh.
 *
 * `units` (Skiff's own, left out when empty) lists the node's systemd units to mesh in the node's own network
 * namespace: WorkloadEntries annotated `skiff.io/node: <this node>` and `skiff.io/unit: [SLICE/]NAME.service`
 * (docs/vm-install.md §4), each `{"namespace","name","serviceAccount","unit","cgroup","address","ports"}`, sorted
 * by namespace then name. `cgroup` is the unit's cgroup v2 path below the hierarchy's root (`system.slice/NAME`
 * when the annotation names no slice), `ports` the entry's `spec.ports` (what inbound capture covers).
 *
 * @module
 */

import { isIPv4 } from "node:net";
import { checkInt, dnsLabel, dnsSubdomain, Fields, ValidationError } from "../validate.ts";
import { readStreamLine } from "./config_stream.ts";

/** The path of the node-pods stream. */
export const NODE_PODS_PATH = "/v1/node-pods";

/** Most pods in one node's view. */
export const MAX_NODE_PODS = 4096;

/** One pod scheduled on the node. */
export interface NodePod {
  namespace: string;
  name: string;
  serviceAccount: string;
  /** Whether its traffic is to be redirected to ztunnel. */
  enrolled: boolean;
  /** Why it is or is not enrolled, in words. */
  reason: string;
}

/** A systemd unit on the node, meshed in the node's own network namespace (a WorkloadEntry's). */
export interface NodeUnit {
  /** The WorkloadEntry's namespace and name. */
  namespace: string;
  name: string;
  serviceAccount: string;
  /** The unit's name as its annotation gives it, e.g. `billing.service`. */
  unit: string;
  /** Its cgroup v2 path below the hierarchy's root, e.g. `system.slice/billing.service`. */
  cgroup: string;
  /** The entry's address: the node's own. */
  address: string;
  /** The ports the unit listens on (the entry's `spec.ports`), sorted: inbound capture covers these. */
  ports: number[];
}

/** Most units in one node's view. */
export const MAX_NODE_UNITS = 256;

/** A cgroup v2 path as a unit's: `[SLICE.slice/...]NAME.service` (or `.scope`), systemd's unit-name characters. */
const UNIT_CGROUP = /^([A-Za-z0-9:_.@\\-]+\.slice\/)*[A-Za-z0-9:_.@\\-]+\.(service|scope)$/;

/** Why `path` is not a unit's cgroup path, or undefined when it is. */
export function unitCgroupProblem(path: string): string | undefined {
  if (path.length > 255 || !UNIT_CGROUP.test(path) || path.split("/").some((s) => s.startsWith("."))) {
    return `expected a unit's cgroup path such as system.slice/billing.service, got ${JSON.stringify(path)}`;
  }
  return undefined;
}

/** The view of one node. */
export interface NodePodsView {
  version: string;
  node: string;
  pods: NodePod[];
  ambientNamespaces: string[];
  /** The node's meshed systemd units; absent when there are none. */
  units?: NodeUnit[];
}

/** A message of the node-pods stream. */
export type NodePodsMessage = ({ type: "pods" } & NodePodsView) | { type: "ping" };

/** Decodes a view (the body of a `pods` message, or the agent's saved copy). */
export function decodeNodePodsView(value: unknown, path = "view"): NodePodsView {
  const f = Fields.of(value, path);
  const out = readView(f);
  f.done();
  return out;
}

function readView(f: Fields): NodePodsView {
  const view: NodePodsView = {
    version: f.string("version", { nonEmpty: true, max: 128 }),
    node: f.string("node", { nonEmpty: true, max: 253, check: dnsSubdomain }),
    pods: f.array("pods", (v, p) => {
      const pf = Fields.of(v, p);
      const pod: NodePod = {
        namespace: pf.string("namespace", { check: dnsLabel }),
        name: pf.string("name", { max: 253, check: dnsSubdomain }),
        serviceAccount: pf.string("serviceAccount", { check: dnsSubdomain }),
        enrolled: pf.bool("enrolled", false),
        reason: pf.string("reason", { max: 256, default: "" }),
      };
      pf.done();
      return pod;
    }, { max: MAX_NODE_PODS }),
    ambientNamespaces: f.array("ambientNamespaces", (v, p) => {
      if (typeof v !== "string" || dnsLabel(v) !== undefined) {
        throw new ValidationError(p, "expected a namespace name");
      }
      return v;
    }, { max: 100_000 }),
  };
  const units = f.array("units", (v, p) => {
    const uf = Fields.of(v, p);
    const unit: NodeUnit = {
      namespace: uf.string("namespace", { check: dnsLabel }),
      name: uf.string("name", { max: 253, check: dnsSubdomain }),
      serviceAccount: uf.string("serviceAccount", { check: dnsSubdomain }),
      unit: uf.string("unit", { nonEmpty: true, max: 255 }),
      cgroup: uf.string("cgroup", { check: unitCgroupProblem }),
      address: uf.string("address", { check: (a) => (isIPv4(a) ? undefined : "expected an IPv4 address") }),
      ports: uf.array("ports", (n, q) => checkInt(n, q, 1, 65535), { max: 64 }),
    };
    uf.done();
    return unit;
  }, { max: MAX_NODE_UNITS });
  if (units.length > 0) view.units = units;
  return view;
}

/**
 * Decodes one line of the stream.
 * @throws {ValidationError} naming the field.
 */
export function decodeNodePodsMessage(line: string): NodePodsMessage {
  const { f, type } = readStreamLine(line, ["pods", "ping"] as const);
  if (type === "ping") {
    f.done();
    return { type };
  }
  const view = readView(f);
  f.done();
  return { type, ...view };
}
