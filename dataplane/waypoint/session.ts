/**
 * One HBONE tunnel into the waypoint: who sent it and where it is going. A waypoint only serves destinations
 * bound to it (`istio.io/use-waypoint`, limited by `istio.io/waypoint-for` when the control plane resolved the
 * binding): a Service whose VIP is the `:authority` and whose waypoint is this one, or a workload whose address
 * is the `:authority` and whose waypoint is this one. Anything else is refused before a byte flows, so a peer
 * with a mesh certificate cannot use the waypoint as an open relay.
 *
 * @module
 */

import { field, type HeaderField } from "../h2/fields.ts";
import { parseAuthority } from "../proxy/addr.ts";
import { forwardedFor } from "../proxy/headers.ts";
import { workloadIdentity } from "../proxy/identity.ts";

export { forwardedFor };
import type { SpiffeId } from "../../mesh/identity.ts";
import type { MeshState } from "../../mesh/store.ts";
import type { GatewayAddress, Service, Workload } from "../../mesh/workload.ts";

/** The waypoint itself. */
export interface WaypointSelf {
  name: string;
  namespace: string;
  /** Its service's hostname, `NAME.NS.svc.cluster.local`: what bindings name. */
  hostname: string;
  identity: SpiffeId;
  network: string;
}

/** Where a tunnel goes: a service port (VIP-addressed) or a workload port (pod-IP-addressed). */
export type Destination =
  | { kind: "service"; service: Service; vip: string; port: number; appProtocol?: string }
  | { kind: "workload"; workload: Workload; ip: string; port: number; appProtocol?: string };

/** What the waypoint knows of a tunnel's client. */
export interface TunnelPeer {
  /** The verified identity of the client (its ztunnel speaks with the client workload's certificate). */
  identity: SpiffeId;
  /** The client's address from the CONNECT's `Forwarded: for=`, else the TCP peer's. */
  ip: string;
  port: number;
  /** The client's workload, when the state knows its address. */
  workload?: Workload;
}

/** An admitted tunnel. */
export interface Session {
  peer: TunnelPeer;
  destination: Destination;
  /** The authority of the CONNECT, `ip:port`. */
  authority: string;
}

/** A refused tunnel: the CONNECT's answer and the log's reason. */
export interface Refusal {
  status: number;
  reason: string;
}

/** Whether `gw` names this waypoint. */
export function isSelf(gw: GatewayAddress | undefined, self: WaypointSelf, state: MeshState): boolean {
  if (!gw) return false;
  if (gw.hostname) return gw.hostname.hostname === self.hostname && gw.hostname.namespace === self.namespace;
  const found = state.lookupAddress(gw.address.network, gw.address.address);
  return !!found && "service" in found && found.service.hostname === self.hostname &&
    found.service.namespace === self.namespace;
}

/** Admits or refuses a CONNECT to the waypoint. */
export function admit(
  headers: HeaderField[],
  peer: { identity: SpiffeId; ip: string; port: number },
  self: WaypointSelf,
  state: MeshState,
): Session | Refusal {
  if (field(headers, ":method") !== "CONNECT") return { status: 400, reason: "only CONNECT is served on 15008" };
  const raw = field(headers, ":authority");
  const authority = raw === undefined ? undefined : parseAuthority(raw);
  if (!authority?.ip) return { status: 400, reason: `authority ${JSON.stringify(raw)} is not ip:port` };
  // The client's address from `Forwarded` is believed only when it is a workload with the very identity the
  // peer proved: any other mesh certificate could claim any address and pass ipBlocks rules.
  const claimed = forwardedFor(headers);
  const claimedBy = claimed && state.lookupAddress(self.network, claimed.ip);
  const client = claimed && claimedBy && "workload" in claimedBy &&
      workloadIdentity(claimedBy.workload).equals(peer.identity)
    ? claimed
    : { ip: peer.ip, port: peer.port };
  const found = client === claimed ? claimedBy : state.lookupAddress(self.network, client.ip);
  const tunnelPeer: TunnelPeer = {
    identity: peer.identity,
    ip: client.ip,
    port: client.port,
    workload: found && "workload" in found ? found.workload : undefined,
  };
  const dest = state.lookupAddress(self.network, authority.ip);
  if (!dest) return { status: 503, reason: `${raw} is not a service or workload this waypoint knows` };
  if ("service" in dest) {
    const service = dest.service;
    if (!isSelf(service.waypoint, self, state)) {
      return { status: 503, reason: `service ${service.namespace}/${service.hostname} is not bound to this waypoint` };
    }
    const sp = service.ports.find((p) => p.port === authority.port);
    if (!sp) return { status: 503, reason: `service ${service.hostname} has no port ${authority.port}` };
    return {
      peer: tunnelPeer,
      authority: raw!,
      destination: { kind: "service", service, vip: authority.ip, port: authority.port, appProtocol: sp.appProtocol },
    };
  }
  const workload = dest.workload;
  if (!isSelf(workload.waypoint, self, state)) {
    return { status: 503, reason: `workload ${workload.uid} is not bound to this waypoint` };
  }
  return {
    peer: tunnelPeer,
    authority: raw!,
    destination: { kind: "workload", workload, ip: authority.ip, port: authority.port },
  };
}
