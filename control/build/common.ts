/**
 * What the per-kind builders share: Istio's label names, the mesh settings a build runs under, label selectors,
 * and the lenient reader for Kubernetes' own kinds (Pod, Service), whose schemas are large and of which Skiff
 * reads a few fields. Istio's and Gateway API's kinds are read strictly instead (a misspelt policy field is an
 * error, never a silently wider policy).
 *
 * @module
 */

import { fieldPath, show, ValidationError } from "../../mesh/validate.ts";
import { type GatewayAddress, HBONE_PORT } from "../../mesh/workload.ts";

/** Istio's labels and annotations, exactly as upstream spells them. */
export const LABELS = {
  dataplaneMode: "istio.io/dataplane-mode",
  useWaypoint: "istio.io/use-waypoint",
  useWaypointNamespace: "istio.io/use-waypoint-namespace",
  waypointFor: "istio.io/waypoint-for",
  gatewayName: "gateway.networking.k8s.io/gateway-name",
  /** Set by istioctl's and the injector's sidecar injection: the pod has its own proxy. */
  sidecarStatus: "sidecar.istio.io/status",
  canonicalName: "service.istio.io/canonical-name",
  canonicalRevision: "service.istio.io/canonical-revision",
  /** Set by the node agent once the pod's traffic is redirected; only then is the pod reached over HBONE. */
  redirection: "ambient.istio.io/redirection",
  dryRun: "istio.io/dry-run",
  /** Skiff's own: the node a WorkloadEntry's workload runs on (Kubernetes has no field for it). */
  entryNode: "skiff.io/node",
  /**
   * Skiff's own: the systemd unit (`[SLICE/]NAME.service`) a WorkloadEntry's workload is, on its `skiff.io/node`:
   * the node agent meshes it in the node's network namespace, by its cgroup (docs/vm-install.md §4).
   */
  entryUnit: "skiff.io/unit",
} as const;

/**
 * Where an object was read from. Kubernetes fills in what its controllers observe (a pod's `status`); a manifest
 * written by hand often leaves that out, and the pod readers give such a manifest the reading its author meant.
 */
export type Origin = "manifests" | "kubernetes";

/** The settings one build of the model runs under. */
export interface MeshSettings {
  trustDomain: string;
  /** Istio's root namespace (`istio-system`): its selector-less policies apply mesh-wide. */
  rootNamespace: string;
  /** Prefix of workload uids (`Kubernetes//Pod/ns/name`). */
  clusterId: string;
  /** DNS suffix of service hostnames (`name.ns.svc.<suffix>`). */
  domainSuffix: string;
}

/** Upstream's defaults. */
export const DEFAULT_SETTINGS: MeshSettings = {
  trustDomain: "cluster.local",
  rootNamespace: "istio-system",
  clusterId: "Kubernetes",
  domainSuffix: "cluster.local",
};

/** A service's hostname. */
export function serviceHostname(name: string, namespace: string, s: MeshSettings): string {
  return `${name}.${namespace}.svc.${s.domainSuffix}`;
}

/** Where a waypoint declared by Gateway `namespace/name` is reached: its service's hostname, on 15008. */
export function waypointAddress(namespace: string, name: string, s: MeshSettings): GatewayAddress {
  return { hostname: { namespace, hostname: serviceHostname(name, namespace, s) }, hboneMtlsPort: HBONE_PORT };
}

/** Whether every `selector` label is on `labels` (an empty selector matches everything). */
export function selects(selector: Record<string, string>, labels: Record<string, string>): boolean {
  for (const k in selector) if (labels[k] !== selector[k]) return false;
  return true;
}

/** Reads an object field of a Kubernetes kind without rejecting fields Skiff does not use. */
export function objectAt(value: unknown, path: string): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new ValidationError(path, `expected an object, got ${show(value)}`);
  }
  return value as Record<string, unknown>;
}

/** Reads a list field of a Kubernetes kind (absent is empty). */
export function listAt(value: unknown, path: string): unknown[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ValidationError(path, `expected a list, got ${show(value)}`);
  return value;
}

/** Reads `matchLabels` style maps: string keys to string values. */
export function stringMap(value: unknown, path: string): Record<string, string> {
  const o = objectAt(value, path);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== "string") {
      throw new ValidationError(fieldPath(path, k), `expected a string, got ${show(v)}`);
    }
    out[k] = v;
  }
  return out;
}
