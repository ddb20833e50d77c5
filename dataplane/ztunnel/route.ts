/**
 * Outbound routing as a pure function, after ztunnel's `build_request` (`src/proxy/outbound.rs`): given the
 * source workload, the original destination the app dialled and the mesh state, decide where the connection
 * goes and how. Nothing here touches a socket; the outbound listener carries out what this returns.
 *
 * The order follows upstream (reference §9, fact 14):
 * 1. A loopback destination on one of ztunnel's own ports (15001, 15006, 15008) is refused (`SelfCall`).
 * 2. A service VIP: through the service's waypoint when it has one (unless the source is that waypoint),
 *    with `:authority` the VIP and port as dialled; in PASSTHROUGH mode to the original destination;
 *    otherwise to one endpoint, chosen among those that have an address, serve the port and are healthy
 *    (unless the service allows all), ranked by locality preference, then at random weighted by capacity.
 *    Named ports resolve per endpoint. No endpoint left: refused (`NoHealthyUpstream`).
 * 3. A workload IP: through its waypoint when it has one (unless the source is that waypoint).
 * 4. An in-mesh (HBONE) destination: HBONE to `podIP:15008` with `:authority` `podIP:targetPort`, expecting
 *    the workload's identity (plus the service's SANs). An out-of-mesh one: plain TCP to `podIP:targetPort`.
 * 5. An address the mesh does not know: passthrough, plain TCP to the original destination.
 *
 * Multi-network double-HBONE is not built; a destination on another network is refused as unreachable.
 *
 * @module
 */

import { SpiffeId } from "../../mesh/identity.ts";
import type { MeshState } from "../../mesh/store.ts";
import {
  type GatewayAddress,
  HBONE_PORT,
  type RoutingScope,
  type Service,
  serviceKey,
  type Workload,
} from "../../mesh/workload.ts";

/** ztunnel's own ports in a pod; never a destination (upstream `illegal_ports`). */
export const ILLEGAL_PORTS: ReadonlySet<number> = new Set([15001, 15006, HBONE_PORT]);

/** An address and port. */
export interface SocketAddr {
  ip: string;
  port: number;
}

/** Why a connection is refused, as upstream names it. */
export type RefusalReason = "SelfCall" | "NoHealthyUpstream" | "UnknownWaypoint" | "UnreachableNetwork";

/** What to do with an outbound connection. */
export type OutboundRequest =
  | {
    kind: "hbone";
    /** Where to open (or reuse) the HBONE connection: the destination's or waypoint's ip:15008. */
    hboneAddr: SocketAddr;
    /** The CONNECT `:authority`. */
    authority: SocketAddr;
    /** Identities the server certificate may carry (upstream SANs). */
    expectedIdentities: SpiffeId[];
    destinationWorkload: Workload;
    destinationService?: Service;
    /** The waypoint in between, when there is one. */
    viaWaypoint: boolean;
  }
  | { kind: "tcp"; target: SocketAddr; destinationWorkload: Workload; destinationService?: Service }
  | { kind: "passthrough"; target: SocketAddr }
  | { kind: "refused"; reason: RefusalReason; detail: string };

/** Inputs beside the state: the source's network, and randomness for endpoint choice. */
export interface RouteOptions {
  /** Returns a number in [0, 1). */
  random: () => number;
}

/** The identity a workload's certificate carries. */
export function workloadIdentity(w: Workload): SpiffeId {
  return SpiffeId.of(w.trustDomain, w.namespace, w.serviceAccount);
}

function isLoopback(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1" || ip.startsWith("::ffff:127.");
}

function refused(reason: RefusalReason, detail: string): OutboundRequest {
  return { kind: "refused", reason, detail };
}

/** Decides where an outbound connection from `source` to `dst` goes. */
export function buildRequest(source: Workload, dst: SocketAddr, state: MeshState, opts: RouteOptions): OutboundRequest {
  if (isLoopback(dst.ip) && ILLEGAL_PORTS.has(dst.port)) {
    return refused("SelfCall", `${dst.ip}:${dst.port} is one of ztunnel's own ports`);
  }
  const found = state.lookupAddress(source.network, dst.ip);
  if (!found) return { kind: "passthrough", target: dst };

  // A destination whose last update did not decode may have a waypoint this ztunnel cannot see: going around it
  // would skip its L7 policy, so it is refused until a version that decodes arrives (mesh/control_client.ts).
  const unread = (what: string) =>
    refused("UnknownWaypoint", `${what} did not decode in its last update, so its waypoint, if any, is unknown`);
  if ("service" in found) {
    const service = found.service;
    if (state.services.isRefused(serviceKey(service))) return unread(`service ${serviceKey(service)}`);
    if (service.waypoint) {
      const via = throughWaypoint(source, service.waypoint, dst, state, opts, service);
      if (via) return via;
    }
    if (service.loadBalancing?.mode === "PASSTHROUGH") return { kind: "passthrough", target: dst };
    const picked = pickEndpoint(source, service, dst.port, state, opts);
    if (!picked) {
      return refused(
        "NoHealthyUpstream",
        `service ${serviceKey(service)} has no healthy endpoint for port ${dst.port}`,
      );
    }
    return direct(source, picked.workload, picked.targetPort, service);
  }

  const workload = found.workload;
  if (state.policies.workloadRefusal(workload.uid)) return unread(`workload ${workload.uid}`);
  if (workload.waypoint) {
    const via = throughWaypoint(source, workload.waypoint, dst, state, opts);
    if (via) return via;
  }
  return direct(source, workload, dst.port);
}

/** To a chosen workload: HBONE when it is in the mesh, plain TCP when not. */
function direct(source: Workload, w: Workload, port: number, service?: Service): OutboundRequest {
  const ip = w.addresses[0];
  if (w.network !== source.network || ip === undefined) {
    return refused("UnreachableNetwork", `workload ${w.uid} is on network ${JSON.stringify(w.network)}`);
  }
  if (w.tunnelProtocol !== "HBONE") {
    return { kind: "tcp", target: { ip, port }, destinationWorkload: w, destinationService: service };
  }
  return {
    kind: "hbone",
    hboneAddr: { ip, port: HBONE_PORT },
    authority: { ip, port },
    expectedIdentities: expected(w, service),
    destinationWorkload: w,
    destinationService: service,
    viaWaypoint: false,
  };
}

function expected(w: Workload, service?: Service): SpiffeId[] {
  const ids = [workloadIdentity(w)];
  for (const san of service?.subjectAltNames ?? []) {
    try {
      const id = SpiffeId.parse(san);
      if (!ids.some((x) => x.equals(id))) ids.push(id);
    } catch {
      // A SAN that is not a SPIFFE ID can never match a peer certificate here: leave it out.
    }
  }
  return ids;
}

/**
 * Through a waypoint: HBONE to the waypoint's 15008 with the original destination as authority. Returns
 * undefined when the source is the waypoint itself (its traffic goes on to the destination), and a refusal
 * when the waypoint cannot be found: sending around it would skip its L7 policy.
 */
function throughWaypoint(
  source: Workload,
  gw: GatewayAddress,
  dst: SocketAddr,
  state: MeshState,
  opts: RouteOptions,
  service?: Service,
): OutboundRequest | undefined {
  const resolved = resolveGateway(source, gw, state, opts);
  if (resolved.candidates.some((w) => w.uid === source.uid)) return undefined;
  const waypoint = resolved.chosen;
  const ip = waypoint?.addresses[0];
  if (!waypoint || ip === undefined) {
    return refused("UnknownWaypoint", `waypoint ${describeGateway(gw)} has no usable workload`);
  }
  return {
    kind: "hbone",
    hboneAddr: { ip, port: gw.hboneMtlsPort },
    authority: dst,
    expectedIdentities: expected(waypoint, resolved.service),
    destinationWorkload: waypoint,
    destinationService: service,
    viaWaypoint: true,
  };
}

function describeGateway(gw: GatewayAddress): string {
  return gw.hostname
    ? `${gw.hostname.namespace}/${gw.hostname.hostname}`
    : `${gw.address.network}/${gw.address.address}`;
}

/** The workloads behind a gateway address, and one of them chosen by capacity. */
function resolveGateway(
  source: Workload,
  gw: GatewayAddress,
  state: MeshState,
  opts: RouteOptions,
): { candidates: Workload[]; chosen?: Workload; service?: Service } {
  let service: Service | undefined;
  if (gw.hostname) {
    service = state.services.byHostname(gw.hostname.hostname, gw.hostname.namespace);
  } else {
    const found = state.lookupAddress(gw.address.network, gw.address.address);
    if (found && "workload" in found) return { candidates: [found.workload], chosen: found.workload };
    service = found?.service;
  }
  if (!service) return { candidates: [] };
  const candidates = state.workloads.endpointsOf(serviceKey(service));
  const usable = candidates.filter((w) =>
    w.addresses.length > 0 && w.status === "HEALTHY" && w.network === source.network
  );
  return { candidates, chosen: weightedPick(usable, opts.random), service };
}

/** The port of `service` port `port` on endpoint `w`, or undefined when the endpoint does not serve it. */
export function targetPort(service: Service, port: number, w: Workload): number | undefined {
  const own = w.services[serviceKey(service)]?.find((m) => m.servicePort === port);
  if (own) return own.targetPort === 0 ? undefined : own.targetPort;
  const sp = service.ports.find((p) => p.port === port);
  if (!sp || sp.targetPort === 0) return undefined; // a named port this endpoint did not resolve
  return sp.targetPort;
}

/** Chooses an endpoint of `service` for `port`, as ztunnel's `load_balance`. */
export function pickEndpoint(
  source: Workload,
  service: Service,
  port: number,
  state: MeshState,
  opts: RouteOptions,
): { workload: Workload; targetPort: number } | undefined {
  if (!service.ports.some((p) => p.port === port)) return undefined;
  const allowUnhealthy = service.loadBalancing?.healthPolicy === "ALLOW_ALL";
  let options = state.workloads.endpointsOf(serviceKey(service))
    .filter((w) => w.addresses.length > 0 && w.network === source.network)
    .filter((w) => allowUnhealthy || w.status === "HEALTHY")
    .map((w) => ({ workload: w, targetPort: targetPort(service, port, w) }))
    .filter((o): o is { workload: Workload; targetPort: number } => o.targetPort !== undefined);
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
