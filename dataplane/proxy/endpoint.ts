/**
 * Endpoint selection, after ztunnel's `load_balance` (`src/proxy/outbound.rs`): which endpoint of a service serves
 * a port, ranked by the service's locality preference, then at random weighted by capacity.
 *
 * @module
 */

import type { MeshState } from "../../mesh/store.ts";
import { type RoutingScope, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";

/** Randomness for endpoint choice. */
export interface PickOptions {
  /** Returns a number in [0, 1). */
  random: () => number;
}

/** The port of `service` port `port` on endpoint `w`, or undefined when the endpoint does not serve it. */
export function targetPort(service: Service, port: number, w: Workload): number | undefined {
  const own = w.services[serviceKey(service)]?.find((m) => m.servicePort === port);
  if (own) return own.targetPort === 0 ? undefined : own.targetPort;
  const sp = service.ports.find((p) => p.port === port);
  if (!sp || sp.targetPort === 0) return undefined; // a named port this endpoint did not resolve
  return sp.targetPort;
}

/** An endpoint of a service, with the port it serves the service port on. */
export interface EligibleEndpoint {
  workload: Workload;
  targetPort: number;
}

/**
 * The endpoints of `service` that may take traffic for service port `port` from `network`, in the store's order:
 * those with an address on the same network (multi-network is not built), healthy unless the service's health
 * policy is `ALLOW_ALL`, and serving the port (named ports resolve per endpoint). Both proxies start from this
 * list: ztunnel ranks it by locality and picks at random ({@link pickEndpoint}); the waypoint goes round robin
 * over it with outlier ejection (`waypoint/upstream.ts`). Empty when the service lacks the port.
 */
export function eligibleEndpoints(
  service: Service,
  port: number,
  state: MeshState,
  network: string,
): EligibleEndpoint[] {
  if (!service.ports.some((p) => p.port === port)) return [];
  const allowUnhealthy = service.loadBalancing?.healthPolicy === "ALLOW_ALL";
  const out: EligibleEndpoint[] = [];
  for (const w of state.workloads.endpointsOf(serviceKey(service))) {
    if (w.addresses.length === 0 || w.network !== network) continue;
    if (!allowUnhealthy && w.status !== "HEALTHY") continue;
    const tp = targetPort(service, port, w);
    if (tp !== undefined) out.push({ workload: w, targetPort: tp });
  }
  return out;
}

/** Chooses an endpoint of `service` for `port`, as ztunnel's `load_balance`. */
export function pickEndpoint(
  source: Workload,
  service: Service,
  port: number,
  state: MeshState,
  opts: PickOptions,
): { workload: Workload; targetPort: number } | undefined {
  let options = eligibleEndpoints(service, port, state, source.network);
  const prefs = service.loadBalancing?.routingPreference ?? [];
  if (prefs.length > 0 && options.length > 0) {
    const ranked = options.map((o) => ({ o, rank: localityRank(source, o.workload, prefs) }));
    if (service.loadBalancing?.mode === "STRICT") {
      options = ranked.filter((r) => r.rank === prefs.length).map((r) => r.o);
    } else {
      const best = Math.max(...ranked.map((r) => r.rank));
      options = ranked.filter((r) => r.rank === best).map((r) => r.o);
    }
  }
  const chosen = weightedPick(options.map((o) => o.workload), opts.random);
  return chosen && options.find((o) => o.workload === chosen);
}

/** How many of the preferred scopes, in order, the endpoint shares with the source before the first miss. */
export function localityRank(source: Workload, w: Workload, prefs: readonly RoutingScope[]): number {
  let rank = 0;
  for (const scope of prefs) {
    const same = scope === "REGION"
      ? source.locality?.region === w.locality?.region
      : scope === "ZONE"
      ? source.locality?.zone === w.locality?.zone
      : scope === "SUBZONE"
      ? source.locality?.subzone === w.locality?.subzone
      : scope === "NODE"
      ? source.node === w.node
      : scope === "CLUSTER"
      ? source.clusterId === w.clusterId
      : source.network === w.network;
    if (!same) break;
    rank++;
  }
  return rank;
}

/** A random element, weighted by capacity; capacity 0 is never chosen. */
export function weightedPick(ws: readonly Workload[], random: () => number): Workload | undefined {
  const total = ws.reduce((s, w) => s + w.capacity, 0);
  if (total <= 0) return undefined;
  let r = random() * total;
  for (const w of ws) {
    if (w.capacity <= 0) continue;
    if (r < w.capacity) return w;
    r -= w.capacity;
  }
  return ws.findLast((w) => w.capacity > 0);
}
