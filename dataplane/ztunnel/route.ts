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
import { type GatewayAddress, HBONE_PORT, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";
import {
  asAuthority,
  asHboneAddr,
  type Authority,
  type HboneAddr,
  type OriginalDst,
  type SocketAddr,
} from "../proxy/addr.ts";
import { pickEndpoint, weightedPick } from "../proxy/endpoint.ts";
import { workloadIdentity } from "../proxy/identity.ts";

/** ztunnel's own ports in a pod; never a destination (upstream `illegal_ports`). */
export const ILLEGAL_PORTS: ReadonlySet<number> = new Set([15001, 15006, HBONE_PORT]);

/** Why a connection is refused, as upstream names it. */
export type RefusalReason = "SelfCall" | "NoHealthyUpstream" | "UnknownWaypoint" | "UnreachableNetwork";

/** What to do with an outbound connection. */
export type OutboundRequest =
  | {
    kind: "hbone";
    /** Where to open (or reuse) the HBONE connection: the destination's or waypoint's ip:15008. */
    hboneAddr: HboneAddr;
    /** The CONNECT `:authority`. */
    authority: Authority;
    /** Identities the server certificate may carry (upstream SANs). */
    expectedIdentities: SpiffeId[];
    destinationWorkload: Workload;
    destinationService?: Service;
    /** The waypoint in between, when there is one. */
    viaWaypoint: boolean;
  }
  | { kind: "tcp"; target: SocketAddr; destinationWorkload: Workload; destinationService?: Service }
  | { kind: "passthrough"; target: OriginalDst }
  | { kind: "refused"; reason: RefusalReason; detail: string };

/** Inputs beside the state: the source's network, and randomness for endpoint choice. */
export interface RouteOptions {
  /** Returns a number in [0, 1). */
  random: () => number;
}

function isLoopback(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1" || ip.startsWith("::ffff:127.");
}

function refused(reason: RefusalReason, detail: string): OutboundRequest {
  return { kind: "refused", reason, detail };
}

/** Decides where an outbound connection from `source` to `dst` goes. */
export function buildRequest(
  source: Workload,
  dst: OriginalDst,
  state: MeshState,
  opts: RouteOptions,
): OutboundRequest {
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
    hboneAddr: asHboneAddr(ip, HBONE_PORT),
    authority: asAuthority({ ip, port }),
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
  dst: OriginalDst,
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
    hboneAddr: asHboneAddr(ip, gw.hboneMtlsPort),
    authority: asAuthority(dst),
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
