/**
 * Whether a node agent's report (`PUT /v1/registrations`, control/sources/registrations.ts) stays on its node.
 * A node token proves one node; a report is that node's word about its own pods, and the control plane believes
 * nothing more of it. A pod of a report is refused, and what this node reported of it before stays in force (a
 * refused pod changes nothing), when it
 *
 * 1. is declared (by the manifests or the Kubernetes API) on another node, or on none: a node may neither speak
 *    for another node's pod (downgrading it to plaintext, or taking its address away) nor claim an unscheduled
 *    one. A pod declared nowhere is accepted and left out of the model until it is declared on this node, as
 *    before (the agent reports every pod it set up, in the mesh or not);
 * 2. has an address no pod has (loopback, link-local, multicast, unspecified, IPv4-mapped or -compatible IPv6,
 *    which would spell another node's IPv4 address past the range checks), or one outside this node's pod range,
 *    when the range is known (a Kubernetes Node's `spec.podCIDRs`, control/build/nodes.ts), or, when it is not,
 *    inside another node's range;
 * 3. has an address another workload holds: a pod's or WorkloadEntry's declared address, or a pod's reported
 *    by another node, in the last build or since ({@link recordReport}). Addresses this node's own earlier report gave are its to give again (a pod deleted and
 *    another started in its address), since this report replaces that one;
 * 4. has an address a service or waypoint holds as its VIP, or one in the service range (allocated later);
 * 5. has an address an earlier pod of the same report has.
 *
 * The other pods of the report are taken: one bad pod (a stale view of a pod that moved, an agent bug) must not
 * hold back the updates of every other pod on the node while the agent retries. The answer is still a 403 that
 * names each refused pod, so the agent logs them and retries, and a pod refused only because the last build is
 * behind (declared on this node a moment ago) is taken once it has caught up.
 *
 * Upstream has no such report (istiod reads pod IPs from the Kubernetes API, which the kubelet of each node
 * writes under the NodeRestriction admission plugin); these checks are the same restriction for Skiff's own
 * channel. The decision is a pure function of the last build ({@link reportFacts}) and the report
 * ({@link checkReport}). Behind it, the store keeps reports by node, so one node's report never replaces
 * another's, and the build (control/build/mod.ts) takes a pod's report only from the node it is declared on,
 * drops reported addresses outside that node's range, and gives a declared address before a reported one.
 *
 * @module
 */

import { addressKey, type Cidr, cidrContains, formatCidr } from "../mesh/net.ts";
import type { Service, Workload } from "../mesh/workload.ts";
import type { DeclaredObject } from "./build/mod.ts";
import { podRangeProblem, podRangesOf } from "./build/nodes.ts";
import { LABELS } from "./build/common.ts";
import type { PodSpec, Registration } from "./build/workloads.ts";

/** Who holds an address in the last build. */
export interface AddressHolder {
  /** How refusals name it: `Pod shop/web-1`, `WorkloadEntry shop/vm-1`, `service shop/db`. */
  what: string;
  /** `namespace/name` of the workload (a report names a pod so). */
  pod?: string;
  /** The node whose report gave the address; absent when a manifest or the Kubernetes API declares it. */
  reportedBy?: string;
}

/** What a report is checked against: the last build's view of nodes, pods and addresses. */
export interface ReportFacts {
  /** `namespace/name` of each Pod and WorkloadEntry → the node it is declared on (empty for none). */
  declaredOn: ReadonlyMap<string, string>;
  /** `network/ip` → who holds it. */
  holders: ReadonlyMap<string, AddressHolder>;
  /** Node name → its pod ranges, for nodes whose range is known. */
  podRanges: ReadonlyMap<string, readonly Cidr[]>;
  /** Where services' VIPs are allocated from. */
  serviceRange: Cidr;
}

/** No pods, no addresses: what a control plane knows before its first build. */
export function emptyFacts(serviceRange: Cidr): ReportFacts {
  return { declaredOn: new Map(), holders: new Map(), podRanges: new Map(), serviceRange };
}

/** The facts of a build: its objects in force and the workloads and services it made. Pure. */
export function reportFacts(
  objects: readonly DeclaredObject[],
  model: { workloads: readonly Workload[]; services: readonly Service[] },
  serviceRange: Cidr,
): ReportFacts {
  const declaredOn = new Map<string, string>();
  /** Pods whose addresses their manifest declares (`status.podIPs`): a report does not give those. */
  const declaredIps = new Set<string>();
  const pods = new Set<string>();
  for (const o of objects) {
    const name = `${o.namespace}/${o.name}`;
    if (o.kind === "Pod") {
      const spec = o.spec as PodSpec;
      pods.add(name);
      declaredOn.set(name, spec.nodeName);
      if (spec.ips.length > 0) declaredIps.add(name);
    } else if (o.kind === "WorkloadEntry") {
      // A Pod of the same name wins, as it does when the build matches a report to an object.
      if (!declaredOn.has(name)) declaredOn.set(name, o.annotations[LABELS.entryNode] ?? "");
    }
  }
  const holders = new Map<string, AddressHolder>();
  for (const w of model.workloads) {
    const pod = `${w.namespace}/${w.name}`;
    const isPod = w.uid.endsWith(`/Pod/${pod}`);
    // A report of this name is the Pod's when there is one: a WorkloadEntry's address is not that Pod's own.
    const holder: AddressHolder = { what: `${isPod ? "Pod" : "WorkloadEntry"} ${pod}` };
    if (isPod || !pods.has(pod)) holder.pod = pod;
    if (isPod && !declaredIps.has(pod)) holder.reportedBy = w.node;
    for (const address of w.addresses) holders.set(addressKey({ network: w.network, address }), holder);
  }
  for (const s of model.services) {
    for (const a of s.addresses) holders.set(addressKey(a), { what: `service ${s.namespace}/${s.name}` });
  }
  return { declaredOn, holders, podRanges: podRangesOf(objects), serviceRange };
}

/** A pod of a report that is refused, with one line per problem. */
export interface RefusedPod {
  pod: Registration;
  problems: string[];
}

/** A report checked: the pods that may be taken and the ones refused, each in the report's order. */
export interface ReportCheck {
  accepted: Registration[];
  refused: RefusedPod[];
}

/** Which pods of `node`'s report of `pods` may be taken, and why the others are refused. Pure. */
export function checkReport(node: string, pods: readonly Registration[], facts: ReportFacts): ReportCheck {
  const out: ReportCheck = { accepted: [], refused: [] };
  const seen = new Map<string, string>();
  for (const p of pods) {
    const problems: string[] = [];
    const pod = `${p.namespace}/${p.name}`;
    const declared = facts.declaredOn.get(pod);
    if (declared !== undefined && declared !== node) {
      problems.push(
        declared === ""
          ? `pod ${pod} is declared on no node, not on ${node}`
          : `pod ${pod} is declared on node ${declared}, not ${node}`,
      );
    }
    for (const ip of p.ips) {
      const problem = addressProblem(node, pod, ip, facts);
      const twice = seen.get(ip);
      if (problem) problems.push(`pod ${pod}: address ${problem}`);
      else if (twice !== undefined) problems.push(`pod ${pod}: address ${ip} is reported for pod ${twice} too`);
      // The first pod to name an address keeps it, refused or not: a later one never takes it over.
      if (twice === undefined) seen.set(ip, pod);
    }
    if (problems.length > 0) out.refused.push({ pod: p, problems });
    else out.accepted.push(p);
  }
  return out;
}

/**
 * The facts once `node`'s `accepted` pods are stored, before the build that follows: the addresses of those
 * declared on `node` (the ones the build will use) are held by them, so that another node's report in the same
 * debounce window cannot take them (the build would give an address two nodes reported to the first by uid).
 * Pure.
 */
export function recordReport(facts: ReportFacts, node: string, accepted: readonly Registration[]): ReportFacts {
  const holders = new Map(facts.holders);
  for (const p of accepted) {
    const pod = `${p.namespace}/${p.name}`;
    if (facts.declaredOn.get(pod) !== node) continue;
    for (const ip of p.ips) {
      const key = addressKey({ network: "", address: ip });
      // A declared address stays its holder's: the build gives it before any reported one.
      const holder = holders.get(key);
      if (holder && holder.reportedBy === undefined) continue;
      holders.set(key, { what: `pod ${pod}, as node ${node} reported it`, pod, reportedBy: node });
    }
  }
  return { ...facts, holders };
}

function addressProblem(
  node: string,
  pod: string,
  ip: string,
  facts: ReportFacts,
): string | undefined {
  // Pods are on the default network; the model keys addresses by network.
  const holder = facts.holders.get(addressKey({ network: "", address: ip }));
  // The pod's own address as the sources declare it: the report gives nothing the build did not have.
  if (holder?.pod === pod && holder.reportedBy === undefined) return undefined;
  const outside = podRangeProblem(node, ip, facts.podRanges);
  if (outside) return outside;
  if (holder && holder.pod !== pod && holder.reportedBy !== node) {
    return holder.pod === undefined ? `${ip} is the address of ${holder.what}` : `${ip} is held by ${holder.what}`;
  }
  if (cidrContains(facts.serviceRange, ip)) {
    return `${ip} lies in the service range ${formatCidr(facts.serviceRange)}`;
  }
  return undefined;
}

/** Pods of a report refused: they stay as the node last reported them; the report's other pods were taken. */
export class ReportError extends Error {
  readonly code = "REPORT_REFUSED";
  readonly node: string;
  readonly refused: RefusedPod[];
  /** How many pods of the report were taken. */
  readonly accepted: number;
  constructor(node: string, refused: RefusedPod[], accepted: number) {
    const problems = refused.flatMap((r) => r.problems);
    const shown = problems.slice(0, MAX_PROBLEMS_SHOWN).join("; ");
    const more = problems.length > MAX_PROBLEMS_SHOWN ? `; and ${problems.length - MAX_PROBLEMS_SHOWN} more` : "";
    super(
      `report of node ${node}: ${refused.length} pod(s) refused, staying as this node last reported them ` +
        `(${accepted} taken): ${shown}${more}`,
    );
    this.name = "ReportError";
    this.node = node;
    this.refused = refused;
    this.accepted = accepted;
  }
}

/** How many problems a refusal names (a node of 1,024 pods could have as many). */
const MAX_PROBLEMS_SHOWN = 10;
