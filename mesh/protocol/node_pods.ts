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
 * @module
 */

import { dnsLabel, dnsSubdomain, Fields, ValidationError } from "../validate.ts";
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

/** The view of one node. */
export interface NodePodsView {
  version: string;
  node: string;
  pods: NodePod[];
  ambientNamespaces: string[];
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
  return {
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
