/**
 * Endpoint selection, after ztunnel's `load_balance` (`src/proxy/outbound.rs`): which endpoint of a service serves
 * a port, ranked by the service's locality preference, then at random weighted by capacity. The eligibility rule
 * and the locality ranking are shared with the waypoint, which ranks from its own workload.
 *
 * @module
 */

import type { MeshState } from "../../mesh/store.ts";
import { type LoadBalancing, type RoutingScope, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";

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
 * list and rank it by locality ({@link localityGroups}): ztunnel from the client's workload, picking at random
 * ({@link pickEndpoint}); the waypoint from its own, going round robin with outlier ejection (`waypoint/upstream.ts`).
 * Empty when the service lacks the port.
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
  const eligible = eligibleEndpoints(service, port, state, source.network);
  // ztunnel keeps only the best-ranked endpoints and never spills over to the next rank.
  const options = localityGroups(source, service.loadBalancing, eligible)[0] ?? [];
  const chosen = weightedPick(options.map((o) => o.workload), opts.random);
  return chosen && options.find((o) => o.workload === chosen);
}

/**
 * The endpoints in `options` that the service's locality preference (`loadBalancing.routingPreference`, what
 * istiod makes of `trafficDistribution` and `networking.istio.io/traffic-distribution`) lets a proxy at `source`
 * use, grouped by {@link localityRank}, best first, each group in the order of `options`. ztunnel uses the first
 * group only (`load_balance`); the waypoint moves on to the next when every endpoint of one is ejected, as Envoy
 * fails over between the priorities istiod gives a waypoint's localities.
 *
 * - No preference: one group, everything.
 * - `STRICT`: one group, the endpoints that match every preferred scope; none when none does.
 * - Otherwise (`FAILOVER`, unspecified): every rank that has endpoints, best first.
 *
 * `source` undefined means the proxy does not know where it is (a waypoint whose own workload the state lacks, or
 * whose replicas disagree on a preferred scope). It fails safe: `STRICT` gets no endpoint at all (the request is
 * refused rather than sent out of the required scope), a failover preference gets one unranked group (a
 * preference, not a requirement, so traffic still flows).
 */
export function localityGroups<T extends { workload: Workload }>(
  source: Workload | undefined,
  loadBalancing: LoadBalancing | undefined,
  options: readonly T[],
): T[][] {
  const prefs = loadBalancing?.routingPreference ?? [];
  if (options.length === 0) return [];
  if (prefs.length === 0) return [[...options]];
  const strict = loadBalancing?.mode === "STRICT";
  if (source === undefined) return strict ? [] : [[...options]];
  const byRank: T[][] = Array.from({ length: prefs.length + 1 }, () => []);
  for (const o of options) byRank[localityRank(source, o.workload, prefs)].push(o);
  if (strict) return byRank[prefs.length].length > 0 ? [byRank[prefs.length]] : [];
  return byRank.reverse().filter((g) => g.length > 0);
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
