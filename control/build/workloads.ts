/**
 * Workloads from Pods and WorkloadEntries, as istiod's ambient index builds them (`pilot/pkg/serviceregistry/
 * ambient/workloads.go`): uid `<cluster>//Pod/<ns>/<name>`, the identity from the service account, Istio's
 * canonical name and revision labels for telemetry, and the tunnel: HBONE only for a workload that is enrolled
 * (`istio.io/dataplane-mode=ambient` on it, or on its namespace and not `none` on it) *and* whose node agent
 * reported its redirection in place. Until then peers reach it in plaintext, as upstream does before the CNI
 * has finished. A waypoint's own workload (label `gateway.networking.k8s.io/gateway-name`) speaks HBONE itself
 * and is never captured.
 *
 * Pods with `hostNetwork` share the node's address and are left out, as are pods that finished (Succeeded,
 * Failed). A pod's address comes from its manifest's `status.podIP(s)` or from the report of the node agent of
 * the node it is scheduled on. A pod that is not Ready ({@link podReady}) keeps its workload, so a call to its
 * own address still finds its identity and policies, but with status UNHEALTHY: no proxy picks it as an endpoint
 * of a service.
 *
 * @module
 */

import { canonicalIp } from "../../mesh/net.ts";
import { checkInt, checkString, dnsSubdomain, fieldPath, Fields, ValidationError } from "../../mesh/validate.ts";
import { decodeIp } from "../../mesh/net.ts";
import { type NodePod, type NodeUnit, unitCgroupProblem } from "../../mesh/protocol/node_pods.ts";
import { isIPv4 } from "node:net";
import type { Locality, Workload } from "../../mesh/workload.ts";
import { LABELS, listAt, type MeshSettings, objectAt, type Origin, stringMap } from "./common.ts";

/** What Skiff reads of a Pod. */
export interface PodSpec {
  nodeName: string;
  serviceAccount: string;
  hostNetwork: boolean;
  /** From `status.podIPs` / `status.podIP`; empty until known. */
  ips: string[];
  phase: string;
  /** Whether it may take a service's traffic ({@link podReady}). */
  ready: boolean;
  /** Named container ports, for services' named target ports. */
  namedPorts: Record<string, number>;
}

/** What readiness is decided from: the phase, the `Ready` condition's status if any, a deletion under way. */
export interface ReadinessFacts {
  phase: string;
  /** `status.conditions[type=Ready].status`: "True", "False" or "Unknown"; undefined when there is none. */
  readyCondition?: string;
  /** `metadata.deletionTimestamp` is set: the pod is terminating. */
  terminating: boolean;
}

/**
 * Whether a pod is a load-balancing endpoint, as istiod sets a pod workload's status (`workloads.go`: UNHEALTHY
 * when `!IsPodReady(p) || p.DeletionTimestamp != nil`, the EndpointSlice controller's reading of Ready and
 * Terminating): not while terminating, not while Pending (not started; its workload is still built, as upstream
 * builds one for a Pending pod with an IP, istio/istio#48854), else what the Ready condition says.
 *
 * A pod without a Ready condition: from the Kubernetes API, not ready (the kubelet has not reported, and upstream
 * reads it so); from a hand-written manifest that says nothing of readiness (no phase, or Running), ready, since
 * its author declared a running pod and means it to take traffic. Phase Unknown (the node lost) is not ready.
 */
export function podReady(facts: ReadinessFacts, origin: Origin): boolean {
  if (facts.terminating || facts.phase === "Pending") return false;
  if (facts.readyCondition !== undefined) return facts.readyCondition === "True";
  return origin === "manifests" && (facts.phase === "" || facts.phase === "Running");
}

const CONDITION_STATUSES = ["True", "False", "Unknown"];

/** The status of the first `Ready` condition (as Kubernetes' `GetPodConditionFromList`), or undefined. */
function readyCondition(status: Record<string, unknown>): string | undefined {
  const conditions = listAt(status.conditions, "status.conditions");
  for (let i = 0; i < conditions.length; i++) {
    const c = objectAt(conditions[i], `status.conditions[${i}]`);
    if (c.type !== "Ready") continue;
    if (typeof c.status !== "string" || !CONDITION_STATUSES.includes(c.status)) {
      throw new ValidationError(
        `status.conditions[${i}].status`,
        `expected "True", "False" or "Unknown" (quoted: YAML reads a bare True as a boolean), got ${
          JSON.stringify(c.status)
        }`,
      );
    }
    return c.status;
  }
  return undefined;
}

/**
 * Decodes the parts of a Pod Skiff uses; other fields are Kubernetes' and are left alone. `origin` decides how a
 * pod without a Ready condition reads ({@link podReady}).
 */
export function readPod(doc: Record<string, unknown>, origin: Origin = "manifests"): PodSpec {
  const spec = objectAt(doc.spec, "spec");
  const status = objectAt(doc.status, "status");
  const metadata = objectAt(doc.metadata, "metadata");
  const str = (v: unknown, path: string, check = dnsSubdomain) =>
    v === undefined || v === null || v === "" ? "" : checkString(v, path, { check });
  const namedPorts: Record<string, number> = {};
  listAt(spec.containers, "spec.containers").forEach((c, i) => {
    const cp = fieldPath(fieldPath("spec.containers", i), "ports");
    listAt(objectAt(c, `spec.containers[${i}]`).ports, cp).forEach((p, j) => {
      const port = objectAt(p, `${cp}[${j}]`);
      const number = checkInt(port.containerPort, `${cp}[${j}].containerPort`, 1, 65535);
      if (typeof port.name === "string" && port.name !== "") namedPorts[port.name] = number;
    });
  });
  const ips = listAt(status.podIPs, "status.podIPs").map((p, i) =>
    decodeIp(objectAt(p, `status.podIPs[${i}]`).ip, `status.podIPs[${i}].ip`)
  );
  if (ips.length === 0 && status.podIP) ips.push(decodeIp(status.podIP, "status.podIP"));
  if (spec.hostNetwork !== undefined && typeof spec.hostNetwork !== "boolean") {
    throw new ValidationError("spec.hostNetwork", "expected true or false");
  }
  const phase = typeof status.phase === "string" ? status.phase : "";
  const terminating = metadata.deletionTimestamp !== undefined && metadata.deletionTimestamp !== null &&
    metadata.deletionTimestamp !== "";
  return {
    nodeName: str(spec.nodeName, "spec.nodeName"),
    serviceAccount: str(spec.serviceAccountName ?? spec.serviceAccount, "spec.serviceAccountName") || "default",
    hostNetwork: spec.hostNetwork === true,
    ips,
    phase,
    ready: podReady({ phase, readyCondition: readyCondition(status), terminating }, origin),
    namedPorts,
  };
}

/** What Skiff reads of a WorkloadEntry (networking.istio.io/v1): strictly, as Istio's schema. */
export interface WorkloadEntrySpec {
  address: string;
  /** Service port name → this entry's port. */
  ports: Record<string, number>;
  labels: Record<string, string>;
  network: string;
  locality?: Locality;
  weight: number;
  serviceAccount: string;
}

/** Decodes a WorkloadEntry's spec. */
export function readWorkloadEntry(doc: Record<string, unknown>): WorkloadEntrySpec {
  const f = Fields.of(doc.spec ?? {}, "spec");
  const address = f.string("address");
  if (canonicalIp(address) === undefined) {
    // Upstream also allows a DNS name or a unix socket; Skiff's data plane reaches workloads by IP.
    throw new ValidationError("spec.address", `expected an IP address, got ${JSON.stringify(address)}`);
  }
  const locality = f.optionalString("locality", { max: 253 });
  const out: WorkloadEntrySpec = {
    address: canonicalIp(address)!,
    ports: f.record("ports", (v, p) => checkInt(v, p, 1, 65535)),
    labels: stringMap(f.raw("labels"), "spec.labels"),
    network: f.string("network", { default: "", max: 253 }),
    weight: f.int("weight", { min: 0, max: 0xffffffff, default: 1 }),
    serviceAccount: f.string("serviceAccount", { default: "default", check: dnsSubdomain }) || "default",
  };
  if (locality) {
    const [region = "", zone = "", subzone = ""] = locality.split("/");
    out.locality = { region, zone, subzone };
  }
  f.done();
  return out;
}

/** A node agent's report of one pod it set up (sources/registrations.ts). */
export interface Registration {
  namespace: string;
  name: string;
  node: string;
  ips: string[];
  /** The in-pod rules are in place and ztunnel acknowledged the pod. */
  redirected: boolean;
}

/** A workload before services, waypoints and policies are attached, with what those steps select on. */
export interface Candidate {
  workload: Workload;
  /** The labels services and policies select on. */
  labels: Record<string, string>;
  namedPorts: Record<string, number>;
  /** The workload-level `istio.io/use-waypoint` (and namespace), when set. */
  useWaypoint?: string;
  useWaypointNamespace?: string;
  /** For problems: `kind/ns/name` of the object it came from. */
  key: string;
  /** A waypoint's own workload: never bound to a waypoint. */
  isWaypoint: boolean;
  /** Its addresses come from a node agent's report, not from what the sources declare. */
  addressesReported?: boolean;
}

/** Whether a workload is enrolled in ambient, from its own and its namespace's `istio.io/dataplane-mode`. */
export function enrolled(labels: Record<string, string>, namespaceLabels: Record<string, string>): boolean {
  const own = labels[LABELS.dataplaneMode];
  if (own === "ambient") return true;
  if (own === "none") return false;
  return namespaceLabels[LABELS.dataplaneMode] === "ambient";
}

/** Whether the node agent is to redirect a pod's traffic, and why in words. */
export interface Enrolment {
  enrolled: boolean;
  reason: string;
}

/**
 * A pod's enrolment as upstream's node agent decides it (istio-cni's `PodRedirectionEnabled`): never a pod on the
 * host network (its traffic is the node's), one with a sidecar (its proxy captures it already) or a waypoint's
 * own pod (it speaks HBONE itself); otherwise {@link enrolled}, the rule the workloads are built with.
 */
export function podEnrolment(pod: Declared<PodSpec>, nsLabels: Record<string, string>): Enrolment {
  if (pod.spec.hostNetwork) return { enrolled: false, reason: "host network" };
  if (pod.annotations[LABELS.sidecarStatus] !== undefined) return { enrolled: false, reason: "has a sidecar" };
  if (pod.labels[LABELS.gatewayName] !== undefined) {
    return { enrolled: false, reason: "waypoint (speaks HBONE itself)" };
  }
  const own = pod.labels[LABELS.dataplaneMode];
  if (own === "ambient" || own === "none") {
    return { enrolled: own === "ambient", reason: `pod label ${LABELS.dataplaneMode}=${own}` };
  }
  return enrolled(pod.labels, nsLabels)
    ? { enrolled: true, reason: `namespace label ${LABELS.dataplaneMode}=ambient` }
    : { enrolled: false, reason: `no ${LABELS.dataplaneMode}=ambient on the pod or its namespace` };
}

/**
 * A pod as its node's agent sees it, or undefined when it is in no node's view: finished (Succeeded, Failed) or
 * not scheduled yet. It needs no address: the agent reports that once it has set the pod up.
 */
export function nodePod(pod: Declared<PodSpec>, nsLabels: Record<string, string>): NodePod | undefined {
  const { spec } = pod;
  if (spec.nodeName === "" || spec.phase === "Succeeded" || spec.phase === "Failed") return undefined;
  return {
    namespace: pod.namespace,
    name: pod.name,
    serviceAccount: spec.serviceAccount,
    ...podEnrolment(pod, nsLabels),
  };
}

function canonical(labels: Record<string, string>, workloadName: string) {
  return {
    canonicalName: labels[LABELS.canonicalName] ?? labels["app.kubernetes.io/name"] ?? labels.app ?? workloadName,
    canonicalRevision: labels[LABELS.canonicalRevision] ?? labels["app.kubernetes.io/version"] ?? labels.version ??
      "latest",
  };
}

function tunnel(labels: Record<string, string>, nsLabels: Record<string, string>, redirected: boolean) {
  if (labels[LABELS.gatewayName] !== undefined) return "HBONE" as const;
  return enrolled(labels, nsLabels) && redirected ? "HBONE" as const : "NONE" as const;
}

/** The object a workload came from: envelope and decoded spec. */
export interface Declared<S> {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: S;
}

/** A pod's workload, or undefined when it has none (no address yet, host network, finished). */
export function podWorkload(
  pod: Declared<PodSpec>,
  nsLabels: Record<string, string>,
  registration: Registration | undefined,
  s: MeshSettings,
): Candidate | undefined {
  const { spec, labels } = pod;
  if (spec.hostNetwork || spec.phase === "Succeeded" || spec.phase === "Failed") return undefined;
  const addresses = spec.ips.length > 0 ? spec.ips : registration?.ips ?? [];
  if (addresses.length === 0) return undefined;
  const redirected = registration?.redirected === true || pod.annotations[LABELS.redirection] === "enabled";
  const workload: Workload = {
    uid: `${s.clusterId}//Pod/${pod.namespace}/${pod.name}`,
    name: pod.name,
    namespace: pod.namespace,
    addresses: [...addresses],
    network: "",
    tunnelProtocol: tunnel(labels, nsLabels, redirected),
    trustDomain: s.trustDomain,
    serviceAccount: spec.serviceAccount,
    node: spec.nodeName,
    ...canonical(labels, pod.name),
    workloadType: "POD",
    workloadName: pod.name,
    services: {},
    authorizationPolicies: [],
    status: spec.ready ? "HEALTHY" : "UNHEALTHY",
    clusterId: s.clusterId,
    capacity: 1,
  };
  return {
    workload,
    labels,
    namedPorts: spec.namedPorts,
    useWaypoint: labels[LABELS.useWaypoint],
    useWaypointNamespace: labels[LABELS.useWaypointNamespace],
    key: `Pod/${pod.namespace}/${pod.name}`,
    isWaypoint: labels[LABELS.gatewayName] !== undefined,
    addressesReported: spec.ips.length === 0,
  };
}

/** ztunnel's own ports in the node's namespace once a unit is meshed there: never a unit's port. */
const ZTUNNEL_HOST_PORTS = new Set([15001, 15006, 15008, 15053]);

/**
 * A WorkloadEntry annotated `skiff.io/unit` as its node agent is to mesh it (mesh/protocol/node_pods.ts), or the
 * problem that keeps it out (then it is reached as any entry, in plaintext, and the problem is an error note).
 * Undefined when the entry names no unit. `billing.service` is `system.slice/billing.service`, systemd's default
 * slice for a system unit; `app.slice/billing.service` names the slice.
 */
export function entryUnit(entry: Declared<WorkloadEntrySpec>): NodeUnit | { problem: string } | undefined {
  const unit = entry.annotations[LABELS.entryUnit];
  if (unit === undefined) return undefined;
  const node = entry.annotations[LABELS.entryNode];
  const say = (why: string) => ({ problem: `annotation ${LABELS.entryUnit}: ${why}; the unit is not meshed` });
  if (!node) return say(`needs ${LABELS.entryNode}, the node the unit runs on`);
  const cgroup = unit.includes("/") ? unit : `system.slice/${unit}`;
  const bad = unitCgroupProblem(cgroup);
  if (bad) return say(bad);
  if (!isIPv4(entry.spec.address)) return say(`spec.address ${entry.spec.address} is not IPv4; Skiff captures IPv4`);
  const ports = [...new Set(Object.values(entry.spec.ports))].sort((a, b) => a - b);
  if (ports.length === 0) return say("needs spec.ports: inbound capture covers the unit's ports and nothing else");
  const clash = ports.filter((p) => ZTUNNEL_HOST_PORTS.has(p));
  if (clash.length > 0) return say(`port ${clash.join(", ")} is ztunnel's own in the node's namespace`);
  return {
    namespace: entry.namespace,
    name: entry.name,
    serviceAccount: entry.spec.serviceAccount,
    unit: unit.slice(unit.lastIndexOf("/") + 1),
    cgroup,
    address: entry.spec.address,
    ports,
  };
}

/** A WorkloadEntry's workload. Its labels are the entry's metadata labels overlaid by `spec.labels`. */
export function entryWorkload(
  entry: Declared<WorkloadEntrySpec>,
  nsLabels: Record<string, string>,
  registration: Registration | undefined,
  s: MeshSettings,
): Candidate {
  const { spec } = entry;
  const labels = { ...entry.labels, ...spec.labels };
  const redirected = registration?.redirected === true || entry.annotations[LABELS.redirection] === "enabled";
  // A unit is HBONE as soon as it is declared: its ztunnel listens on the node's 15008 once the agent has it in
  // place, and until then callers are refused there, never sent around it in plaintext (docs/vm-install.md §4).
  const unit = entryUnit(entry);
  const isUnit = unit !== undefined && !("problem" in unit);
  const workload: Workload = {
    uid: `${s.clusterId}/networking.istio.io/WorkloadEntry/${entry.namespace}/${entry.name}`,
    name: entry.name,
    namespace: entry.namespace,
    addresses: [spec.address],
    network: spec.network,
    tunnelProtocol: isUnit ? "HBONE" : tunnel(labels, nsLabels, redirected),
    trustDomain: s.trustDomain,
    serviceAccount: spec.serviceAccount,
    node: entry.annotations[LABELS.entryNode] ?? "",
    ...canonical(labels, entry.name),
    workloadType: "POD",
    workloadName: entry.name,
    services: {},
    authorizationPolicies: [],
    status: "HEALTHY",
    clusterId: s.clusterId,
    capacity: spec.weight,
  };
  if (spec.locality) workload.locality = spec.locality;
  return {
    workload,
    labels,
    namedPorts: spec.ports,
    useWaypoint: labels[LABELS.useWaypoint],
    useWaypointNamespace: labels[LABELS.useWaypointNamespace],
    key: `WorkloadEntry/${entry.namespace}/${entry.name}`,
    isWaypoint: labels[LABELS.gatewayName] !== undefined,
  };
}
