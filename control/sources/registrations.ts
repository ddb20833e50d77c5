/**
 * The node agents' source: each node agent reports the pods it set up on its node (the CNI plugin saw them
 * start), with their addresses and whether their traffic is redirected, as one list that replaces its earlier
 * one (`PUT /v1/registrations`, see control/server.ts). The node is the one its token names, never one the
 * body claims; a pod of a report that is another node's, or has an address that is not the node's to give, is
 * refused and changes nothing (control/reports.ts), and a report only completes a pod the manifests or the
 * Kubernetes API declare on that node (control/build/mod.ts): a compromised node can neither invent pods, and
 * with them identities, nor downgrade another node's pods to plaintext, nor take their addresses. Only a
 * redirected pod is reached over HBONE.
 *
 * @module
 */

import { decodeIp } from "../../mesh/net.ts";
import { dnsLabel, dnsSubdomain, Fields, ValidationError } from "../../mesh/validate.ts";
import type { Registration } from "../build/workloads.ts";

/** Most pods one node may report. */
export const MAX_PODS_PER_NODE = 1024;

/**
 * Decodes a node agent's report for `node`.
 * @throws {ValidationError} naming the field.
 */
export function decodeRegistrationReport(body: unknown, node: string): Registration[] {
  const f = Fields.of(body, "");
  const seen = new Set<string>();
  const pods = f.array("pods", (v, path): Registration => {
    const p = Fields.of(v, path);
    const out: Registration = {
      namespace: p.string("namespace", { check: dnsLabel }),
      name: p.string("name", { max: 253, check: dnsSubdomain }),
      node,
      ips: p.array("ips", decodeIp, { max: 16 }),
      redirected: p.bool("redirected", false),
    };
    p.optionalString("netns", { max: 4096 }); // the agent's own bookkeeping; the control plane does not use it
    p.done();
    const key = `${out.namespace}/${out.name}`;
    if (seen.has(key)) throw new ValidationError(path, `pod ${key} is reported twice`);
    seen.add(key);
    return out;
  }, { max: MAX_PODS_PER_NODE });
  f.done();
  return pods;
}
