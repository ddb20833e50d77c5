/**
 * The CA's node-scoped decision, as istiod's node authorizer for ztunnel (`security/pkg/server/ca/node_auth.go`):
 * a node may obtain a certificate for an identity only while a workload with that namespace and service
 * account runs on that node. Skiff pins the trust domain too, which istiod leaves to the caller. A pure
 * function of its inputs; the CA service supplies the caller's node (from its token) and the registry.
 *
 * @module
 */

import type { SpiffeId } from "../mesh/identity.ts";
import type { Workload } from "../mesh/workload.ts";

/** The part of the registry the decision reads. */
export interface NodeRegistryView {
  /** The workloads the registry places on `node` (terminating ones included, as upstream). */
  onNode(node: string): Iterable<Pick<Workload, "namespace" | "serviceAccount" | "trustDomain">>;
}

/** The decision; a refusal carries the reason for the log, never for the caller. */
export type NodeDecision = { allowed: true } | { allowed: false; reason: string };

/** Decides whether the node `callerNode` may obtain a certificate for `requested`. */
export function authorizeNodeIdentity(
  callerNode: string,
  requested: SpiffeId,
  trustDomain: string,
  registry: NodeRegistryView,
): NodeDecision {
  if (callerNode === "") return { allowed: false, reason: "the caller has no node name" };
  if (requested.trustDomain !== trustDomain) {
    return { allowed: false, reason: `identity ${requested} is not in the mesh trust domain ${trustDomain}` };
  }
  for (const w of registry.onNode(callerNode)) {
    if (
      w.namespace === requested.namespace && w.serviceAccount === requested.serviceAccount &&
      w.trustDomain === trustDomain
    ) return { allowed: true };
  }
  return {
    allowed: false,
    reason:
      `no workload with namespace ${requested.namespace} and service account ${requested.serviceAccount} runs on node ${callerNode}`,
  };
}
