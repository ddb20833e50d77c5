/**
 * The model of the mesh from what the sources declare: one reader per kind (`readSpec`, run when an object
 * changes, so a bad spec is reported with its field and its last good version stays), then one pure function,
 * {@link buildMesh}, from every object in force and the node agents' registrations to the workloads, services
 * and policies the proxies receive (with the HTTP routes and L7 policies for waypoints), as istiod's ambient index
 * does, and each node agent's view of the pods on its node (mesh/protocol/node_pods.ts). The same input always
 * gives the same output, in a stable order, so the stream's content versions survive a restart.
 *
 * @module
 */

import type { Authorization } from "../../mesh/authorization.ts";
import { policyKey } from "../../mesh/authorization.ts";
import { addressKey, type Cidr } from "../../mesh/net.ts";
import type { NodePod, NodeUnit } from "../../mesh/protocol/node_pods.ts";
import { type HttpRoute, httpRouteKey, type L7Policy, l7PolicyKey } from "../../mesh/l7.ts";
import { ValidationError } from "../../mesh/validate.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import {
  type AuthorizationPolicySpec,
  convertAuthorizationPolicy,
  convertL7Policy,
  readAuthorizationPolicy,
} from "./authorization_policy.ts";
import { LABELS, type MeshSettings, type Origin, selects } from "./common.ts";
import { type HttpRouteSpec, readHttpRoute, resolveHttpRoute } from "./http_route.ts";
import {
  type DeclaredPeerAuthentication,
  PeerAuthentications,
  type PeerAuthenticationSpec,
  readPeerAuthentication,
  STATIC_STRICT,
  staticStrictPolicy,
} from "./peer_authentication.ts";
import { type NodeSpec, podRangeProblem, podRangesOf, readNode } from "./nodes.ts";
import { buildService, readService, type ServiceSpec } from "./services.ts";
import {
  type GatewaySpec,
  readGateway,
  resolveWaypoint,
  type Waypoint,
  waypointOf,
  waypointService,
} from "./waypoints.ts";
import {
  type Candidate,
  type Declared,
  entryUnit,
  entryWorkload,
  nodePod,
  type PodSpec,
  podWorkload,
  readPod,
  readWorkloadEntry,
  type Registration,
  type WorkloadEntrySpec,
} from "./workloads.ts";

/** The decoded spec of each kind. */
export interface Specs {
  Namespace: Record<string, never>;
  ServiceAccount: Record<string, never>;
  Node: NodeSpec;
  Pod: PodSpec;
  WorkloadEntry: WorkloadEntrySpec;
  Service: ServiceSpec;
  AuthorizationPolicy: AuthorizationPolicySpec;
  PeerAuthentication: PeerAuthenticationSpec;
  Gateway: GatewaySpec;
  HTTPRoute: HttpRouteSpec;
}

const READERS: { [K in keyof Specs]: (doc: Record<string, unknown>, origin: Origin) => Specs[K] } = {
  Namespace: () => ({}),
  ServiceAccount: () => ({}),
  Node: readNode,
  Pod: readPod,
  WorkloadEntry: readWorkloadEntry,
  Service: readService,
  AuthorizationPolicy: readAuthorizationPolicy,
  PeerAuthentication: readPeerAuthentication,
  Gateway: readGateway,
  HTTPRoute: readHttpRoute,
};

/**
 * Reads the spec of an object of `kind` that came from `origin` (a Pod without a Ready condition reads
 * differently from each; workloads.ts `podReady`).
 * @throws {ValidationError} naming the field (a path from the document's root).
 */
export function readSpec(kind: string, document: Record<string, unknown>, origin: Origin = "manifests"): unknown {
  const reader = READERS[kind as keyof Specs];
  if (!reader) throw new ValidationError("kind", `BUG: no reader for kind ${kind}`);
  return reader(document, origin);
}

/** An object in force: its envelope and decoded spec. */
export interface DeclaredObject {
  kind: string;
  namespace: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: unknown;
  /** The document as canonical JSON, when the source has it: equal digests, unchanged object. */
  digest?: string;
}

/** The input of a build. */
export interface MeshInput {
  objects: Iterable<DeclaredObject>;
  /** Node agents' reports, by pod. */
  registrations: Iterable<Registration>;
  /** Addresses allocated to Services and Gateways without explicit ones, by `kind/ns/name`. */
  vips: ReadonlyMap<string, string>;
  settings: MeshSettings;
}

/** Something the operator should know about an object: it could not be used as written. */
export interface ModelNote {
  /** `kind/namespace/name`. */
  key: string;
  severity: "error" | "warning";
  message: string;
}

/** One identity a node may hold: a workload of this namespace and service account runs there. */
export interface NodeIdentity {
  namespace: string;
  serviceAccount: string;
  trustDomain: string;
}

/** The output of a build. */
export interface MeshModel {
  workloads: Workload[];
  services: Service[];
  policies: Authorization[];
  /** HTTPRoutes attached to Services, for waypoints, sorted by key. */
  routes: HttpRoute[];
  /** AuthorizationPolicies with targetRefs, for waypoints, sorted by key. */
  l7Policies: L7Policy[];
  /** Per node, the identities of the workloads scheduled there (with or without an address yet). */
  identities: Map<string, NodeIdentity[]>;
  /** Per node, the pods scheduled there and not finished, by namespace then name: the node agent's view. */
  nodePods: Map<string, NodePod[]>;
  /** Per node, the systemd units to mesh there (WorkloadEntries with `skiff.io/unit`), by namespace then name. */
  nodeUnits: Map<string, NodeUnit[]>;
  /** The namespaces labelled `istio.io/dataplane-mode=ambient`, sorted. */
  ambientNamespaces: string[];
  /** `kind/ns/name` of Services and waypoints that need an allocated address. */
  needAddresses: string[];
  /** `kind/ns/name` of every Service and waypoint that uses an allocated address (or needs one). */
  allocationOwners: string[];
  notes: ModelNote[];
}

const key = (o: { kind: string; namespace: string; name: string }) => `${o.kind}/${o.namespace}/${o.name}`;
/** Code-unit order: stable across machines and locales, and far cheaper than localeCompare on 10,000 keys. */
const byText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
/**
 * Sorts `items` by the text `of` each, computing each key once, into a new array. Most builds sort lists that are
 * in order already (a namespace's objects as its files list them, the workloads by uid), so that is checked first.
 */
function sortBy<T>(items: T[], of: (x: T) => string): T[] {
  const keys = items.map(of);
  let sorted = true;
  for (let i = 1; i < keys.length && sorted; i++) sorted = byText(keys[i - 1], keys[i]) <= 0;
  if (sorted) return items.slice();
  return keys.map((k, i) => [k, items[i]] as const).sort((a, b) => byText(a[0], b[0])).map(([, x]) => x);
}

/**
 * Remembers each namespace's part of the last build, so that a change rebuilds only the namespaces it can
 * affect and the unchanged ones keep their very objects (which the publisher then need not serialize again).
 * It only memoizes: a build with a cache gives the same model as one without.
 */
export class BuildCache {
  /**
   * Per namespace: `fingerprint`, what its part was built from (its objects sorted); `arrival`, the same with its
   * objects in the order the sources listed them, which most builds repeat, so that they need not sort them.
   */
  readonly namespaces = new Map<string, { fingerprint: string[]; arrival: string[]; part: NamespacePart }>();
}

/** What one namespace contributes to the model. */
interface NamespacePart {
  candidates: Candidate[];
  services: Service[];
  policies: Authorization[];
  routes: HttpRoute[];
  l7Policies: L7Policy[];
  identities: [node: string, serviceAccount: string][];
  /** Its pods in their nodes' views, by name. */
  nodePods: [node: string, pod: NodePod][];
  /** Its units in their nodes' views, by name. */
  nodeUnits: [node: string, unit: NodeUnit][];
  needAddresses: string[];
  allocationOwners: string[];
  notes: ModelNote[];
  strictUsed: boolean;
}

/** A selector policy, as the workloads it may apply to see it. */
interface SelectorPolicy {
  key: string;
  namespace: string;
  selector: Record<string, string>;
}

/** What every namespace's build reads from outside the namespace. */
interface Shared {
  settings: MeshSettings;
  nsLabels: ReadonlyMap<string, Record<string, string>>;
  waypoints: ReadonlyMap<string, Waypoint>;
  /** Selector policies of the root namespace (they select in every namespace). */
  rootSelectorPolicies: SelectorPolicy[];
  /** PeerAuthentications of the root namespace (the mesh-wide one). */
  rootPeerAuthentications: DeclaredPeerAuthentication[];
  vips: ReadonlyMap<string, string>;
  /** Each node's pod ranges, from the Nodes that give one. */
  podRanges: ReadonlyMap<string, readonly Cidr[]>;
}

/** Builds the mesh from everything in force. Pure: the same input gives the same output, cache or not. */
export function buildMesh(input: MeshInput, cache?: BuildCache): MeshModel {
  const s = input.settings;
  const objectsIn = new Map<string, DeclaredObject[]>();
  const nsLabels = new Map<string, Record<string, string>>();
  for (const o of input.objects) {
    if (o.kind === "Namespace") nsLabels.set(o.name, o.labels);
    const ns = o.kind === "Namespace" ? o.name : o.namespace;
    const list = objectsIn.get(ns) ?? [];
    list.push(o);
    objectsIn.set(ns, list);
  }
  const registrationsIn = new Map<string, Registration[]>();
  for (const r of input.registrations) {
    const list = registrationsIn.get(r.namespace) ?? [];
    list.push(r);
    registrationsIn.set(r.namespace, list);
  }
  for (const ns of registrationsIn.keys()) if (!objectsIn.has(ns)) objectsIn.set(ns, []);

  // What crosses namespaces: waypoints, the root namespace's selector policies and mesh-wide PeerAuthentication.
  const waypoints = new Map<string, Waypoint>();
  const rootSelectorPolicies: SelectorPolicy[] = [];
  const rootPeerAuthentications: DeclaredPeerAuthentication[] = [];
  for (const o of input.objects) {
    if (o.kind === "Gateway") {
      const w = waypointOf(o.namespace, o.name, o.labels, o.spec as GatewaySpec);
      if (w && !("problem" in w)) waypoints.set(`${w.namespace}/${w.name}`, w);
    } else if (o.namespace === s.rootNamespace && o.kind === "AuthorizationPolicy") {
      const spec = o.spec as AuthorizationPolicySpec;
      if (spec.selector && spec.targetRefs.length === 0) {
        rootSelectorPolicies.push({ key: `${o.namespace}/${o.name}`, namespace: o.namespace, selector: spec.selector });
      }
    } else if (o.namespace === s.rootNamespace && o.kind === "PeerAuthentication") {
      rootPeerAuthentications.push({ namespace: o.namespace, name: o.name, spec: o.spec as PeerAuthenticationSpec });
    }
  }
  const shared: Shared = {
    settings: s,
    nsLabels,
    waypoints,
    rootSelectorPolicies: sortBy(rootSelectorPolicies, (p) => p.key),
    rootPeerAuthentications,
    vips: input.vips,
    podRanges: podRangesOf(input.objects),
  };
  const sharedPrint = JSON.stringify([
    s,
    [...waypoints.values()],
    shared.rootSelectorPolicies,
    rootPeerAuthentications,
    [...shared.podRanges],
  ]);
  const vipsIn = new Map<string, [string, string][]>();
  for (const [owner, ip] of input.vips) {
    const ns = owner.split("/")[1];
    vipsIn.set(ns, [...(vipsIn.get(ns) ?? []), [owner, ip]]);
  }

  const parts: NamespacePart[] = [];
  const seen = new Set<string>();
  for (const ns of [...objectsIn.keys()].sort(byText)) {
    seen.add(ns);
    const registrations = sortBy(registrationsIn.get(ns) ?? [], (r) => `${r.name}/${r.node}`);
    // Compared item by item: digests of unchanged objects are the very same strings, so this is cheap.
    const head = cache ? [sharedPrint, JSON.stringify([nsLabels.get(ns), registrations, vipsIn.get(ns)])] : [];
    const printOf = (o: DeclaredObject) => o.digest ?? JSON.stringify([key(o), o.labels, o.annotations, o.spec]);
    const arrival = cache ? [...head, ...objectsIn.get(ns)!.map(printOf)] : [];
    const cached = cache?.namespaces.get(ns);
    if (cached && sameStrings(cached.arrival, arrival)) {
      parts.push(cached.part);
      continue;
    }
    const objects = sortBy(objectsIn.get(ns)!, key);
    const fingerprint = cache ? [...head, ...objects.map(printOf)] : [];
    if (cached && sameStrings(cached.fingerprint, fingerprint)) {
      cached.arrival = arrival;
      parts.push(cached.part);
      continue;
    }
    const part = buildNamespace(ns, objects, registrations, shared);
    cache?.namespaces.set(ns, { fingerprint, arrival, part });
    parts.push(part);
  }
  if (cache) { for (const ns of cache.namespaces.keys()) if (!seen.has(ns)) cache.namespaces.delete(ns); }

  const notes = parts.flatMap((p) => p.notes);
  const workloads = claimAddresses(parts.flatMap((p) => p.candidates), notes);
  const services = claimVips(parts.flatMap((p) => p.services), notes);
  const policies = parts.flatMap((p) => p.policies);
  if (parts.some((p) => p.strictUsed)) policies.push(staticStrictPolicy(s));
  return {
    workloads: workloads.map((c) => c.workload),
    services,
    policies: sortBy(policies, policyKey),
    routes: sortBy(parts.flatMap((p) => p.routes), httpRouteKey),
    l7Policies: sortBy(parts.flatMap((p) => p.l7Policies), l7PolicyKey),
    identities: nodeIdentities(parts, [...seen].sort(byText), s),
    nodePods: podsByNode(parts),
    nodeUnits: unitsByNode(parts),
    ambientNamespaces: [...nsLabels].filter(([, l]) => l[LABELS.dataplaneMode] === "ambient").map(([ns]) => ns)
      .sort(byText),
    needAddresses: parts.flatMap((p) => p.needAddresses),
    allocationOwners: parts.flatMap((p) => p.allocationOwners),
    notes,
  };
}

function sameStrings(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function nodeIdentities(parts: NamespacePart[], namespaces: string[], s: MeshSettings): Map<string, NodeIdentity[]> {
  const out = new Map<string, NodeIdentity[]>();
  parts.forEach((p, i) => {
    for (const [node, serviceAccount] of p.identities) {
      const list = out.get(node) ?? [];
      if (!list.some((x) => x.namespace === namespaces[i] && x.serviceAccount === serviceAccount)) {
        list.push({ namespace: namespaces[i], serviceAccount, trustDomain: s.trustDomain });
      }
      out.set(node, list);
    }
  });
  return out;
}

/** Each node's pods; the parts come by namespace and each part's pods by name, so the lists come out sorted. */
function podsByNode(parts: NamespacePart[]): Map<string, NodePod[]> {
  const out = new Map<string, NodePod[]>();
  for (const p of parts) {
    for (const [node, pod] of p.nodePods) {
      const list = out.get(node);
      if (list) list.push(pod);
      else out.set(node, [pod]);
    }
  }
  return out;
}

/** Each node's units, in the order of {@link podsByNode}. */
function unitsByNode(parts: NamespacePart[]): Map<string, NodeUnit[]> {
  const out = new Map<string, NodeUnit[]>();
  for (const p of parts) for (const [node, unit] of p.nodeUnits) out.set(node, [...out.get(node) ?? [], unit]);
  return out;
}

/** One namespace's workloads, services and policies, given what it reads from outside. */
function buildNamespace(ns: string, objects: DeclaredObject[], regs: Registration[], shared: Shared): NamespacePart {
  const s = shared.settings;
  const notes: ModelNote[] = [];
  const of = <K extends keyof Specs>(kind: K) =>
    objects.filter((o) => o.kind === kind) as (DeclaredObject & { spec: Specs[K] })[];
  const labels = shared.nsLabels.get(ns) ?? {};
  const identities: [string, string][] = [];
  const addIdentity = (node: string, serviceAccount: string) => {
    if (node && !identities.some(([n, sa]) => n === node && sa === serviceAccount)) {
      identities.push([node, serviceAccount]);
    }
  };

  // Workloads. A node agent's report only completes what the manifests or the API declare, and only for a
  // workload scheduled on that very node: a node can neither make up pods nor speak for another node's. Reports
  // are kept by node (control/store.ts), so another node's report of the same name is there, never in the way.
  const registrations = new Map(regs.map((r) => [`${r.node}/${r.name}`, r]));
  const used = new Set<Registration>();
  const declaredOn = new Map<string, string>();
  const reportFor = (name: string, node: string): Registration | undefined => {
    if (!declaredOn.has(name)) declaredOn.set(name, node);
    const reg = node ? registrations.get(`${node}/${name}`) : undefined;
    if (!reg || used.has(reg)) return undefined;
    used.add(reg);
    return reg;
  };
  // control/reports.ts refuses a report of addresses outside the node's pod range; one stored before the range
  // was known gives none of them.
  const inRange = (pod: { name: string; spec: PodSpec }, reg: Registration | undefined) => {
    if (!reg || pod.spec.ips.length > 0) return reg;
    const ips = reg.ips.filter((ip) => {
      const problem = podRangeProblem(reg.node, ip, shared.podRanges);
      if (problem) notes.push({ key: `Pod/${ns}/${pod.name}`, severity: "error", message: `reported ${problem}` });
      return problem === undefined;
    });
    return ips.length === reg.ips.length ? reg : { ...reg, ips };
  };
  const candidates: Candidate[] = [];
  const nodePods: [string, NodePod][] = [];
  for (const pod of of("Pod")) {
    const reg = inRange(pod, reportFor(pod.name, pod.spec.nodeName));
    if (pod.spec.phase !== "Failed") addIdentity(pod.spec.nodeName, pod.spec.serviceAccount);
    const c = podWorkload(pod as Declared<PodSpec>, labels, reg, s);
    if (c) candidates.push(c);
    const seen = nodePod(pod as Declared<PodSpec>, labels);
    if (seen) nodePods.push([pod.spec.nodeName, seen]);
  }
  const nodeUnits: [string, NodeUnit][] = [];
  for (const entry of of("WorkloadEntry")) {
    const reg = reportFor(entry.name, entry.annotations[LABELS.entryNode] ?? "");
    const c = entryWorkload(entry as Declared<WorkloadEntrySpec>, labels, reg, s);
    addIdentity(c.workload.node, entry.spec.serviceAccount);
    candidates.push(c);
    const unit = entryUnit(entry as Declared<WorkloadEntrySpec>);
    if (unit && "problem" in unit) {
      notes.push({ key: `WorkloadEntry/${ns}/${entry.name}`, severity: "error", message: unit.problem });
    } else if (unit) nodeUnits.push([c.workload.node, unit]);
  }
  for (const reg of regs) {
    if (used.has(reg)) continue;
    const node = declaredOn.get(reg.name);
    notes.push({
      key: `Pod/${ns}/${reg.name}`,
      severity: "warning",
      message: node === undefined
        ? `reported by node ${reg.node}, but no manifest or Kubernetes object declares it; it is left out`
        : `reported by node ${reg.node}, but ${
          node ? `it runs on ${node}` : "it names no node"
        }; the report is ignored`,
    });
  }

  // Waypoints and services.
  const needAddresses: string[] = [];
  const allocationOwners: string[] = [];
  const vipsOf = (k: string, explicit: string[]) => {
    if (explicit.length > 0) return explicit;
    allocationOwners.push(k);
    const vip = shared.vips.get(k);
    if (vip === undefined) needAddresses.push(k);
    return vip === undefined ? [] : [vip];
  };
  const services: Service[] = [];
  for (const gw of of("Gateway")) {
    const w = waypointOf(gw.namespace, gw.name, gw.labels, gw.spec);
    if (w === undefined) continue;
    if ("problem" in w) {
      notes.push({ key: key(gw), severity: "error", message: w.problem });
      continue;
    }
    services.push(waypointService(w, vipsOf(key(gw), gw.spec.addresses), candidates, s));
  }
  const nsBinding = {
    useWaypoint: labels[LABELS.useWaypoint],
    useWaypointNamespace: labels[LABELS.useWaypointNamespace],
  };
  const byLabel = labelIndex(candidates);
  // The Services of this namespace that made a service, by name: what routes and L7 policies can refer to.
  const declared = new Map<string, ServiceSpec>();
  for (const svc of of("Service")) {
    if (shared.waypoints.has(`${ns}/${svc.name}`)) {
      notes.push({
        key: key(svc),
        severity: "error",
        message: "a waypoint of this name already provides this service",
      });
      continue;
    }
    declared.set(svc.name, svc.spec);
    const selector = svc.spec.selector ?? {};
    const first = Object.entries(selector)[0];
    const service = buildService(
      svc.name,
      ns,
      svc.spec,
      svc.spec.headless ? [] : vipsOf(key(svc), svc.spec.clusterIPs),
      first ? byLabel.get(`${first[0]}=${first[1]}`) ?? [] : [],
      s,
    );
    const own = {
      useWaypoint: svc.labels[LABELS.useWaypoint],
      useWaypointNamespace: svc.labels[LABELS.useWaypointNamespace],
    };
    const r = resolveWaypoint("service", ns, own, nsBinding, shared.waypoints, s);
    if (r.address) service.waypoint = r.address;
    if (r.problem) notes.push({ key: key(svc), severity: "warning", message: r.problem });
    services.push(service);
  }
  for (const c of candidates) {
    if (c.isWaypoint) continue;
    const own = { useWaypoint: c.useWaypoint, useWaypointNamespace: c.useWaypointNamespace };
    const r = resolveWaypoint("workload", ns, own, nsBinding, shared.waypoints, s);
    if (r.address) c.workload.waypoint = r.address;
    if (r.problem) notes.push({ key: c.key, severity: "warning", message: r.problem });
  }

  // Routes, for waypoints. Parents and backends are looked up in this namespace only (http_route.ts says why).
  const routes: HttpRoute[] = [];
  for (const hr of of("HTTPRoute")) {
    const r = resolveHttpRoute(ns, hr.name, hr.spec, declared, s);
    for (const w of r.warnings) notes.push({ key: key(hr), severity: "warning", message: w });
    if (r.route) routes.push(r.route);
  }

  // Policies: selector and namespace ones for ztunnel, targetRefs ones for waypoints.
  const policies: Authorization[] = [];
  const l7Policies: L7Policy[] = [];
  const selectorPolicies: SelectorPolicy[] = ns === s.rootNamespace ? [] : [...shared.rootSelectorPolicies];
  for (const ap of of("AuthorizationPolicy")) {
    if (ap.spec.targetRefs.length > 0) {
      const l7 = convertL7Policy(ns, ap.name, ap.annotations, ap.spec, {
        waypoints: shared.waypoints,
        services: declared,
      }, s);
      for (const n of l7.notes) notes.push({ key: key(ap), ...n });
      if (l7.policy) l7Policies.push(l7.policy);
      continue;
    }
    const converted = convertAuthorizationPolicy(ns, ap.name, ap.annotations, ap.spec, s);
    for (const w of converted.warnings) notes.push({ key: key(ap), severity: "warning", message: w });
    if (!converted.authorization) continue;
    policies.push(converted.authorization);
    if (ap.spec.selector) {
      selectorPolicies.push({ key: policyKey(converted.authorization), namespace: ns, selector: ap.spec.selector });
    }
  }
  const pas = of("PeerAuthentication").map((p): DeclaredPeerAuthentication => p);
  for (const pa of pas) {
    for (const w of PeerAuthentications.warnings(pa.spec)) {
      notes.push({ key: `PeerAuthentication/${ns}/${pa.name}`, severity: "warning", message: w });
    }
  }
  const peer = new PeerAuthentications(ns === s.rootNamespace ? pas : [...shared.rootPeerAuthentications, ...pas], s);
  let strictUsed = false;
  for (const c of candidates) {
    const keys: string[] = [];
    for (const p of selectorPolicies) if (selects(p.selector, c.labels)) keys.push(p.key);
    const strict = peer.policyFor(ns, c.labels);
    if (strict) {
      keys.push(strict);
      if (strict.endsWith(`/${STATIC_STRICT}`)) strictUsed = true;
    }
    c.workload.authorizationPolicies = keys.sort(byText);
  }
  policies.push(...peer.policies.values());
  return {
    candidates,
    services,
    policies,
    routes,
    l7Policies,
    identities,
    nodePods,
    nodeUnits,
    needAddresses,
    allocationOwners,
    notes,
    strictUsed,
  };
}

/** Candidates by each `label=value` they carry, so a service finds its endpoints without scanning them all. */
function labelIndex(candidates: Candidate[]): Map<string, Candidate[]> {
  const out = new Map<string, Candidate[]>();
  for (const c of candidates) {
    for (const [k, v] of Object.entries(c.labels)) {
      const list = out.get(`${k}=${v}`);
      if (list) list.push(c);
      else out.set(`${k}=${v}`, [c]);
    }
  }
  return out;
}

/**
 * Gives each address to one workload: a declared address (a manifest's or the API's) before one a node agent
 * reported, then the first by uid. A later claimant loses the address (and is left out when it has none left),
 * with an error on its object, so neither one bad manifest nor one node's report can steal another's traffic.
 * The workloads come out by uid.
 */
function claimAddresses(candidates: Candidate[], notes: ModelNote[]): Candidate[] {
  // Only the candidates of an address claimed more than once need the order: found first, by network then address
  // (the workloads' own strings as keys, rather than 10,000 new `network/ip` ones per build).
  const claims = new Map<string, Map<string, Candidate>>();
  const contested = new Set<Candidate>();
  for (const c of candidates) {
    const w = c.workload;
    let byIp = claims.get(w.network);
    if (!byIp) claims.set(w.network, byIp = new Map());
    for (const ip of w.addresses) {
      const first = byIp.get(ip);
      if (first === undefined) byIp.set(ip, c);
      else contested.add(first).add(c);
    }
  }
  if (contested.size === 0) return sortBy(candidates, (c) => c.workload.uid);
  const owner = new Map<string, string>();
  const out = candidates.filter((c) => !contested.has(c));
  for (const c of sortBy([...contested], (c) => `${c.addressesReported ? 1 : 0}${c.workload.uid}`)) {
    const w = c.workload;
    // The candidate may be a cached one: a lost address makes a new workload, never a changed old one.
    const kept = w.addresses.filter((ip) => {
      const k = addressKey({ network: w.network, address: ip });
      const held = owner.get(k);
      if (held === undefined) {
        owner.set(k, c.key);
        return true;
      }
      notes.push({ key: c.key, severity: "error", message: `address ${ip} is already used by ${held}` });
      return false;
    });
    if (kept.length === w.addresses.length) out.push(c);
    else if (kept.length > 0) out.push({ ...c, workload: { ...w, addresses: kept } });
  }
  return sortBy(out, (c) => c.workload.uid);
}

/** Gives each VIP to one service, the first by key; a later claimant loses it, with an error. */
function claimVips(services: Service[], notes: ModelNote[]): Service[] {
  const owner = new Map<string, string>();
  const out: Service[] = [];
  for (const svc of sortBy(services, (x) => `${x.namespace}/${x.name}`)) {
    const kept = svc.addresses.filter((a) => {
      const held = owner.get(addressKey(a));
      if (held === undefined) {
        owner.set(addressKey(a), `${svc.namespace}/${svc.name}`);
        return true;
      }
      notes.push({
        key: `Service/${svc.namespace}/${svc.name}`,
        severity: "error",
        message: `address ${a.address} is already the address of service ${held}`,
      });
      return false;
    });
    out.push(kept.length === svc.addresses.length ? svc : { ...svc, addresses: kept });
  }
  return sortBy(out, (x) => `${x.namespace}/${x.hostname}`);
}
