/**
 * Waypoints, as istiod declares and binds them (`pilot/pkg/serviceregistry/ambient/waypoints.go`): a Gateway of
 * class `istio-waypoint` declares one; its label `istio.io/waypoint-for` (`service` by default, `workload`,
 * `all`, `none`) says what it may serve. A namespace, service, pod or WorkloadEntry binds to it with the label
 * `istio.io/use-waypoint: NAME` (`none` opts out; the object's own label wins over its namespace's), in its own
 * namespace or in `istio.io/use-waypoint-namespace`.
 *
 * Each waypoint gets a service, `<name>.<ns>.svc.<suffix>` on 15008, whose endpoints are the workloads labelled
 * `gateway.networking.k8s.io/gateway-name: NAME` in the Gateway's namespace (a `skiff waypoint` process or a pod
 * running one). Bound services and workloads carry its address by that hostname.
 *
 * Skiff departs in one place, on the safe side: a binding to a waypoint that does not exist is still written
 * (and reported), so ztunnel refuses the traffic as `UnknownWaypoint` rather than sending it around the L7
 * policy it was meant to pass through. Upstream leaves the binding out and the traffic goes direct.
 *
 * @module
 */

import { decodeIp } from "../../mesh/net.ts";
import { checkString, show, ValidationError } from "../../mesh/validate.ts";
import { type GatewayAddress, HBONE_PORT, type Service } from "../../mesh/workload.ts";
import { LABELS, listAt, type MeshSettings, objectAt, serviceHostname, waypointAddress } from "./common.ts";
import type { Candidate } from "./workloads.ts";

/** The gateway class of waypoints. */
export const WAYPOINT_CLASS = "istio-waypoint";

/** What a waypoint may serve (`istio.io/waypoint-for`). */
export type WaypointFor = "service" | "workload" | "all" | "none";

/** What Skiff reads of a Gateway. */
export interface GatewaySpec {
  className: string;
  /** Explicit IP addresses (`spec.addresses` of type IPAddress); empty means allocate a VIP. */
  addresses: string[];
}

/** Decodes the parts of a Gateway Skiff uses. */
export function readGateway(doc: Record<string, unknown>): GatewaySpec {
  const spec = objectAt(doc.spec, "spec");
  const className = checkString(spec.gatewayClassName, "spec.gatewayClassName", { nonEmpty: true, max: 253 });
  const addresses = listAt(spec.addresses, "spec.addresses").flatMap((a, i) => {
    const o = objectAt(a, `spec.addresses[${i}]`);
    if (o.type !== undefined && o.type !== "IPAddress") return []; // hostnames are for other gateway kinds
    return [decodeIp(o.value, `spec.addresses[${i}].value`)];
  });
  if (className === WAYPOINT_CLASS) {
    listAt(spec.listeners, "spec.listeners").forEach((l, i) => {
      const o = objectAt(l, `spec.listeners[${i}]`);
      if (o.protocol !== undefined && o.protocol !== "HBONE") {
        throw new ValidationError(
          `spec.listeners[${i}].protocol`,
          `a waypoint listens with protocol HBONE on port 15008, got ${show(o.protocol)}`,
        );
      }
    });
  }
  return { className, addresses };
}

/** A declared waypoint. */
export interface Waypoint {
  namespace: string;
  name: string;
  for: WaypointFor;
}

/** The waypoint a Gateway declares, or undefined for other gateway classes. */
export function waypointOf(
  namespace: string,
  name: string,
  labels: Record<string, string>,
  spec: GatewaySpec,
): Waypoint | { problem: string } | undefined {
  if (spec.className !== WAYPOINT_CLASS) return undefined;
  const value = labels[LABELS.waypointFor] ?? "service";
  if (!["service", "workload", "all", "none"].includes(value)) {
    return { problem: `label ${LABELS.waypointFor} must be service, workload, all or none, got ${show(value)}` };
  }
  return { namespace, name, for: value as WaypointFor };
}

/** The service that fronts a waypoint, and its endpoints' port mappings. */
export function waypointService(
  w: Waypoint,
  vips: string[],
  candidates: Iterable<Candidate>,
  s: MeshSettings,
): Service {
  const hostname = serviceHostname(w.name, w.namespace, s);
  const key = `${w.namespace}/${hostname}`;
  for (const c of candidates) {
    if (c.workload.namespace === w.namespace && c.labels[LABELS.gatewayName] === w.name) {
      c.workload.services[key] = [{ servicePort: HBONE_PORT, targetPort: HBONE_PORT }];
    }
  }
  return {
    name: w.name,
    namespace: w.namespace,
    hostname,
    addresses: vips.map((address) => ({ network: "", address })),
    ports: [{ port: HBONE_PORT, targetPort: HBONE_PORT }],
    subjectAltNames: [],
  };
}

/** Labels that bind to a waypoint, read from one object. */
export interface Binding {
  useWaypoint?: string;
  useWaypointNamespace?: string;
}

/** Result of resolving a binding: an address, nothing, or an address with a problem to report. */
export type Resolved = { address?: GatewayAddress; problem?: string };

/**
 * Resolves what `own` (the object's labels) and `namespace` (its namespace's labels) bind to, for an object of
 * type `type` in namespace `ns`.
 */
export function resolveWaypoint(
  type: "service" | "workload",
  ns: string,
  own: Binding,
  namespace: Binding,
  waypoints: ReadonlyMap<string, Waypoint>,
  s: MeshSettings,
): Resolved {
  const from = own.useWaypoint !== undefined ? own : namespace;
  const name = from.useWaypoint;
  if (name === undefined || name === "" || name === "none") return {};
  const wpNs = from.useWaypointNamespace || ns;
  const waypoint = waypoints.get(`${wpNs}/${name}`);
  if (!waypoint) {
    return {
      address: waypointAddress(wpNs, name, s),
      problem: `waypoint ${wpNs}/${name} is not declared (no Gateway of class ${WAYPOINT_CLASS}); ` +
        "its traffic is refused until it is",
    };
  }
  if (waypoint.for !== "all" && waypoint.for !== type) return {};
  return { address: waypointAddress(wpNs, name, s) };
}
