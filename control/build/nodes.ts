/**
 * What Skiff reads of a Kubernetes Node (`v1/Node`, cluster-scoped): its pod range, `spec.podCIDRs` (or the older
 * single `spec.podCIDR`), the addresses the node's pods are given, as the node IPAM controller or the operator set
 * it. The control plane accepts a node agent's report of a pod address only inside its node's pod range, when
 * the range is known (control/reports.ts). Everything else in a Node (status, taints, addresses) is Kubernetes'
 * and is left alone, as the reader of Pods does.
 *
 * @module
 */

import { type Cidr, cidrContains, decodeCidr, formatCidr } from "../../mesh/net.ts";
import { ValidationError } from "../../mesh/validate.ts";
import { listAt, objectAt } from "./common.ts";

/** What Skiff reads of a Node. */
export interface NodeSpec {
  /** The node's pod ranges (one per address family); empty when not set. */
  podCidrs: Cidr[];
}

/**
 * Decodes a Node's pod ranges. As Kubernetes validates a Node, `spec.podCIDRs[0]` must equal `spec.podCIDR` when
 * both are given, and there is at most one range per family.
 */
export function readNode(doc: Record<string, unknown>): NodeSpec {
  const spec = objectAt(doc.spec, "spec");
  const podCidrs = listAt(spec.podCIDRs, "spec.podCIDRs").map((v, i) => decodeCidr(v, `spec.podCIDRs[${i}]`));
  if (spec.podCIDR !== undefined && spec.podCIDR !== "") {
    const single = decodeCidr(spec.podCIDR, "spec.podCIDR");
    if (podCidrs.length === 0) podCidrs.push(single);
    else if (formatCidr(podCidrs[0]) !== formatCidr(single)) {
      throw new ValidationError(
        "spec.podCIDRs",
        `the first range ${formatCidr(podCidrs[0])} must be spec.podCIDR ${formatCidr(single)}`,
      );
    }
  }
  if (
    podCidrs.length > 2 ||
    (podCidrs.length === 2 && podCidrs[0].address.includes(":") === podCidrs[1].address.includes(":"))
  ) {
    throw new ValidationError("spec.podCIDRs", "expected at most one range per address family");
  }
  return { podCidrs };
}

/** Each node's pod ranges, from the Node objects that give one. */
export function podRangesOf(objects: Iterable<{ kind: string; name: string; spec: unknown }>): Map<string, Cidr[]> {
  const out = new Map<string, Cidr[]>();
  for (const o of objects) {
    if (o.kind === "Node" && (o.spec as NodeSpec).podCidrs.length > 0) out.set(o.name, (o.spec as NodeSpec).podCidrs);
  }
  return out;
}

/**
 * Addresses no pod has, whatever its node's range (RFC 6890's special-purpose registries): a report naming one
 * is a bug or an attack. The IPv4-mapped and IPv4-compatible IPv6 forms matter most: `::ffff:10.0.1.5` is
 * another spelling of `10.0.1.5` to a dual-stack socket, yet no IPv4 range, address index or VIP matches it.
 */
const NOT_POD_ADDRESSES: [Cidr, string][] = [
  ["::ffff:0:0/96", "an IPv4-mapped IPv6 address (report the IPv4 address itself)"],
  ["::/96", "an IPv4-compatible IPv6 address, the unspecified or the loopback address"],
  ["0.0.0.0/8", "in 0.0.0.0/8 (this network)"],
  ["127.0.0.0/8", "a loopback address"],
  ["169.254.0.0/16", "a link-local address"],
  ["fe80::/10", "a link-local address"],
  ["224.0.0.0/4", "a multicast address"],
  ["ff00::/8", "a multicast address"],
  ["240.0.0.0/4", "a reserved or the broadcast address"],
].map(([range, what]) => [decodeCidr(range, "range"), what]);

/**
 * Why `ip` is not an address `node`'s agent may report, as far as pod ranges tell, or undefined: it must be an
 * address a pod can have, lie in the node's own range when that is known, and, when it is not, outside every
 * other node's.
 */
export function podRangeProblem(
  node: string,
  ip: string,
  ranges: ReadonlyMap<string, readonly Cidr[]>,
): string | undefined {
  const special = NOT_POD_ADDRESSES.find(([range]) => cidrContains(range, ip));
  if (special) return `${ip} is ${special[1]}, not a pod's`;
  const own = ranges.get(node);
  if (own) {
    if (own.some((c) => cidrContains(c, ip))) return undefined;
    return `${ip} is not in the pod range of node ${node} (${own.map(formatCidr).join(", ")})`;
  }
  for (const [other, theirs] of ranges) {
    const range = theirs.find((c) => cidrContains(c, ip));
    if (range) return `${ip} lies in the pod range ${formatCidr(range)} of node ${other}`;
  }
  return undefined;
}
