/**
 * The model of the mesh from what the sources declare: one reader per kind (`readSpec`, run when an object
 * changes, so a bad spec is reported with its field and its last good version stays), then one pure function,
 * {@link buildMesh}, from every object in force and the node agents' registrations to the workloads, services
 * and policies the proxies receive, as istiod's ambient index does. The same input always gives the same
 * output, in a stable order, so the stream's content versions survive a restart.
 *
 * @module
 */

import type { Authorization } from "../../mesh/authorization.ts";
import { policyKey } from "../../mesh/authorization.ts";
import { addressKey } from "../../mesh/net.ts";
import { Fields, ValidationError } from "../../mesh/validate.ts";
import type { Service, Workload } from "../../mesh/workload.ts";
import {
  type AuthorizationPolicySpec,
  convertAuthorizationPolicy,
  readAuthorizationPolicy,
} from "./authorization_policy.ts";
import { LABELS, listAt, type MeshSettings, objectAt, selects } from "./common.ts";
import {
  type DeclaredPeerAuthentication,
  PeerAuthentications,
  type PeerAuthenticationSpec,
  readPeerAuthentication,
  STATIC_STRICT,
  staticStrictPolicy,
} from "./peer_authentication.ts";
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
  entryWorkload,
  type PodSpec,
  podWorkload,
  readPod,
  readWorkloadEntry,
  type Registration,
  type WorkloadEntrySpec,
} from "./workloads.ts";

/** What Skiff reads of an HTTPRoute here: where it attaches. Its rules are the waypoint's to read. */
export interface HttpRouteSpec {
  parentRefs: { group: string; kind: string; name: string; namespace?: string; port?: number }[];
  rules: unknown[];
}

function readHttpRoute(doc: Record<string, unknown>): HttpRouteSpec {
  const spec = objectAt(doc.spec, "spec");
  const parentRefs = listAt(spec.parentRefs, "spec.parentRefs").map((v, i) => {
    const f = Fields.of(v, `spec.parentRefs[${i}]`);
    const ref: HttpRouteSpec["parentRefs"][number] = {
      group: f.string("group", { default: "gateway.networking.k8s.io" }),
      kind: f.string("kind", { default: "Gateway" }),
      name: f.string("name", { nonEmpty: true, max: 253 }),
    };
    const ns = f.optionalString("namespace");
    if (ns) ref.namespace = ns;
    if (f.has("port")) ref.port = f.int("port", { min: 1, max: 65535 });
    f.optionalString("sectionName");
    f.done();
    return ref;
  });
  if (parentRefs.length === 0) throw new ValidationError("spec.parentRefs", "an HTTPRoute needs a parent");
  return { parentRefs, rules: listAt(spec.rules, "spec.rules") };
}

/** The decoded spec of each kind. */
export interface Specs {
  Namespace: Record<string, never>;
  ServiceAccount: Record<string, never>;
  Pod: PodSpec;
  WorkloadEntry: WorkloadEntrySpec;
  Service: ServiceSpec;
  AuthorizationPolicy: AuthorizationPolicySpec;
  PeerAuthentication: PeerAuthenticationSpec;
  Gateway: GatewaySpec;
  HTTPRoute: HttpRouteSpec;
}

const READERS: { [K in keyof Specs]: (doc: Record<string, unknown>) => Specs[K] } = {
  Namespace: () => ({}),
  ServiceAccount: () => ({}),
  Pod: readPod,
  WorkloadEntry: readWorkloadEntry,
  Service: readService,
  AuthorizationPolicy: readAuthorizationPolicy,
  PeerAuthentication: readPeerAuthentication,
  Gateway: readGateway,
  HTTPRoute: readHttpRoute,
};

/**
 * Reads the spec of an object of `kind`.
 * @throws {ValidationError} naming the field (a path from the document's root).
 */
export function readSpec(kind: string, document: Record<string, unknown>): unknown {
  const reader = READERS[kind as keyof Specs];
  if (!reader) throw new ValidationError("kind", `BUG: no reader for kind ${kind}`);
  return reader(document);
}

/** An object in force: its envelope and decoded spec. */
export interface DeclaredObject {
  kind: string;
  namespace: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: unknown;
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
  /** Per node, the identities of the workloads scheduled there (with or without an address yet). */
  identities: Map<string, NodeIdentity[]>;
  /** `kind/ns/name` of Services and waypoints that need an allocated address. */
  needAddresses: string[];
  /** `kind/ns/name` of every Service and waypoint that uses an allocated address (or needs one). */
  allocationOwners: string[];
  notes: ModelNote[];
}

const key = (o: { kind: string; namespace: string; name: string }) => `${o.kind}/${o.namespace}/${o.name}`;

/** Builds the mesh from everything in force. Pure: the same input gives the same output. */
export function buildMesh(input: MeshInput): MeshModel {
  const s = input.settings;
  const notes: ModelNote[] = [];
  const byKind = new Map<string, DeclaredObject[]>();
  for (const o of input.objects) {
    const list = byKind.get(o.kind) ?? [];
    list.push(o);
    byKind.set(o.kind, list);
  }
  for (const list of byKind.values()) list.sort((a, b) => key(a).localeCompare(key(b)));
  const of = <K extends keyof Specs>(kind: K) => (byKind.get(kind) ?? []) as (DeclaredObject & { spec: Specs[K] })[];
  const nsLabels = new Map(of("Namespace").map((n) => [n.name, n.labels]));
  const labelsOfNs = (ns: string) => nsLabels.get(ns) ?? {};

  // Workloads.
  const registrations = new Map<string, Registration>();
  for (const r of input.registrations) registrations.set(`${r.namespace}/${r.name}`, r);
  const candidates: Candidate[] = [];
  const identities = new Map<string, NodeIdentity[]>();
  const addIdentity = (node: string, namespace: string, serviceAccount: string) => {
    if (!node) return;
    const list = identities.get(node) ?? [];
    if (!list.some((i) => i.namespace === namespace && i.serviceAccount === serviceAccount)) {
      list.push({ namespace, serviceAccount, trustDomain: s.trustDomain });
    }
    identities.set(node, list);
  };
  const declaredPods = new Set<string>();
  for (const pod of of("Pod")) {
    const id = `${pod.namespace}/${pod.name}`;
    declaredPods.add(id);
    const reg = registrations.get(id);
    if (pod.spec.phase !== "Failed") {
      addIdentity(pod.spec.nodeName || reg?.node || "", pod.namespace, pod.spec.serviceAccount);
    }
    const c = podWorkload(pod as Declared<PodSpec>, labelsOfNs(pod.namespace), reg, s);
    if (c) candidates.push(c);
  }
  // Pods the node agents saw start that no manifest declares: what the agent reported is all there is.
  for (const [id, reg] of [...registrations].sort(([a], [b]) => a.localeCompare(b))) {
    if (declaredPods.has(id)) continue;
    const pod: Declared<PodSpec> = {
      namespace: reg.namespace,
      name: reg.name,
      labels: reg.labels ?? {},
      annotations: {},
      spec: {
        nodeName: reg.node,
        serviceAccount: reg.serviceAccount ?? "default",
        hostNetwork: false,
        ips: reg.ips,
        phase: "Running",
        namedPorts: {},
      },
    };
    addIdentity(reg.node, pod.namespace, pod.spec.serviceAccount);
    const c = podWorkload(pod, labelsOfNs(pod.namespace), reg, s);
    if (c) candidates.push(c);
  }
  for (const entry of of("WorkloadEntry")) {
    const reg = registrations.get(`${entry.namespace}/${entry.name}`);
    const c = entryWorkload(entry as Declared<WorkloadEntrySpec>, labelsOfNs(entry.namespace), reg, s);
    addIdentity(c.workload.node, entry.namespace, entry.spec.serviceAccount);
    candidates.push(c);
  }
  const workloads = claimAddresses(candidates, notes);

  // Waypoints and services.
  const needAddresses: string[] = [];
  const allocationOwners: string[] = [];
  const vipsOf = (k: string, explicit: string[]) => {
    if (explicit.length > 0) return explicit;
    allocationOwners.push(k);
    const vip = input.vips.get(k);
    if (vip === undefined) needAddresses.push(k);
    return vip === undefined ? [] : [vip];
  };
  const waypoints = new Map<string, Waypoint>();
  const services: Service[] = [];
  for (const gw of of("Gateway")) {
    const w = waypointOf(gw.namespace, gw.name, gw.labels, gw.spec);
    if (w === undefined) continue;
    if ("problem" in w) {
      notes.push({ key: key(gw), severity: "error", message: w.problem });
      continue;
    }
    waypoints.set(`${w.namespace}/${w.name}`, w);
    services.push(waypointService(w, vipsOf(key(gw), gw.spec.addresses), workloads, s));
  }
  const nsBinding = (ns: string) => ({
    useWaypoint: labelsOfNs(ns)[LABELS.useWaypoint],
    useWaypointNamespace: labelsOfNs(ns)[LABELS.useWaypointNamespace],
  });
  for (const svc of of("Service")) {
    if (waypoints.has(`${svc.namespace}/${svc.name}`)) {
      notes.push({
        key: key(svc),
        severity: "error",
        message: "a waypoint of this name already provides this service",
      });
      continue;
    }
    const service = buildService(
      svc.name,
      svc.namespace,
      svc.spec,
      svc.spec.headless ? [] : vipsOf(key(svc), svc.spec.clusterIPs),
      workloads,
      s,
    );
    const own = {
      useWaypoint: svc.labels[LABELS.useWaypoint],
      useWaypointNamespace: svc.labels[LABELS.useWaypointNamespace],
    };
    const r = resolveWaypoint("service", svc.namespace, own, nsBinding(svc.namespace), waypoints, s);
    if (r.address) service.waypoint = r.address;
    if (r.problem) notes.push({ key: key(svc), severity: "warning", message: r.problem });
    services.push(service);
  }
  const servicesInForce = claimVips(services, notes);
  for (const c of workloads) {
    if (c.isWaypoint) continue;
    const own = { useWaypoint: c.useWaypoint, useWaypointNamespace: c.useWaypointNamespace };
    const r = resolveWaypoint("workload", c.workload.namespace, own, nsBinding(c.workload.namespace), waypoints, s);
    if (r.address) c.workload.waypoint = r.address;
    if (r.problem) notes.push({ key: c.key, severity: "warning", message: r.problem });
  }

  // Policies.
  const policies: Authorization[] = [];
  const selectorPolicies: { key: string; namespace: string; selector: Record<string, string> }[] = [];
  for (const ap of of("AuthorizationPolicy")) {
    const converted = convertAuthorizationPolicy(ap.namespace, ap.name, ap.annotations, ap.spec, s);
    for (const w of converted.warnings) notes.push({ key: key(ap), severity: "warning", message: w });
    if (!converted.authorization) continue;
    policies.push(converted.authorization);
    if (ap.spec.selector) {
      selectorPolicies.push({
        key: policyKey(converted.authorization),
        namespace: ap.namespace,
        selector: ap.spec.selector,
      });
    }
  }
  const pas = of("PeerAuthentication");
  for (const pa of pas) {
    for (const w of PeerAuthentications.warnings(pa.spec)) {
      notes.push({ key: key(pa), severity: "warning", message: w });
    }
  }
  const peer = new PeerAuthentications(pas.map((p): DeclaredPeerAuthentication => p), s);
  let strictUsed = false;
  for (const c of workloads) {
    const keys: string[] = [];
    for (const p of selectorPolicies) {
      const inScope = p.namespace === c.workload.namespace || p.namespace === s.rootNamespace;
      if (inScope && selects(p.selector, c.labels)) keys.push(p.key);
    }
    const strict = peer.policyFor(c.workload.namespace, c.labels);
    if (strict) {
      keys.push(strict);
      if (strict.endsWith(`/${STATIC_STRICT}`)) strictUsed = true;
    }
    c.workload.authorizationPolicies = keys.sort();
  }
  if (strictUsed) policies.push(staticStrictPolicy(s));
  policies.push(...peer.policies.values());

  return {
    workloads: workloads.map((c) => c.workload),
    services: servicesInForce,
    policies: policies.sort((a, b) => policyKey(a).localeCompare(policyKey(b))),
    identities,
    needAddresses,
    allocationOwners,
    notes,
  };
}

/**
 * Gives each address to one workload: the first by uid. A later claimant loses the address (and is left out
 * when it has none left), with an error on its object, so one bad manifest cannot steal another's traffic.
 */
function claimAddresses(candidates: Candidate[], notes: ModelNote[]): Candidate[] {
  const owner = new Map<string, string>();
  const out: Candidate[] = [];
  for (const c of [...candidates].sort((a, b) => a.workload.uid.localeCompare(b.workload.uid))) {
    const w = c.workload;
    w.addresses = w.addresses.filter((ip) => {
      const k = addressKey({ network: w.network, address: ip });
      const held = owner.get(k);
      if (held === undefined) {
        owner.set(k, c.key);
        return true;
      }
      notes.push({ key: c.key, severity: "error", message: `address ${ip} is already used by ${held}` });
      return false;
    });
    if (w.addresses.length > 0) out.push(c);
  }
  return out;
}

/** Gives each VIP to one service, the first by key; a later claimant loses it, with an error. */
function claimVips(services: Service[], notes: ModelNote[]): Service[] {
  const owner = new Map<string, string>();
  for (
    const svc of [...services].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`))
  ) {
    svc.addresses = svc.addresses.filter((a) => {
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
  }
  return services.sort((a, b) => `${a.namespace}/${a.hostname}`.localeCompare(`${b.namespace}/${b.hostname}`));
}
