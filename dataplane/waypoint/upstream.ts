/**
 * The waypoint's side towards the destinations: which endpoint of a service takes a request (L7 load
 * balancing: the closest endpoints to the waypoint's own workload when the service prefers locality, round robin
 * over the healthy ones, with passive health: an endpoint that failed a connect is left out for
 * {@link EJECTION_MS}), and how a byte stream to it is opened: HBONE from the waypoint's own identity to
 * the endpoint's 15008 with `:authority` = endpoint IP:target port (upstream's `connect_originate`), or plain TCP
 * to an endpoint outside the mesh. The destination's ztunnel therefore sees the waypoint's identity, never the
 * client's: waypoints do not impersonate.
 *
 * @module
 */

import net from "node:net";
import type { Duplex } from "node:stream";
import { type HboneDialer, HbonePool } from "../hbone/pool.ts";
import type { WorkloadCredentials } from "../hbone/tls.ts";
import { baggage } from "../proxy/headers.ts";
import { eligibleEndpoints, localityGroups, localityRank } from "../proxy/endpoint.ts";
import { workloadIdentity } from "../proxy/identity.ts";
import type { Logger } from "../../mesh/log.ts";
import type { MeshState } from "../../mesh/store.ts";
import { HBONE_PORT, type RoutingScope, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";
import type { WaypointSelf } from "./session.ts";

/** How long an endpoint that refused a connection is left out of load balancing. */
export const EJECTION_MS = 10_000;
/** A TCP connect to an endpoint outside the mesh gives up after this. */
export const CONNECT_TIMEOUT_MS = 10_000;

/** One endpoint chosen for a request. */
export interface Endpoint {
  workload: Workload;
  /** The service it was chosen for; absent for a workload addressed directly. */
  service?: Service;
  ip: string;
  /** The port on the endpoint (the service port's target). */
  port: number;
  hbone: boolean;
}

/** `ip:port`, the key of an endpoint in pools and in the ejection list. */
export const endpointKey = (e: Pick<Endpoint, "ip" | "port">) => `${e.ip}:${e.port}`;

/** Where the waypoint stands, for choosing endpoints: its network and its own service (which finds its workload). */
export type BalancerSelf = Pick<WaypointSelf, "namespace" | "hostname" | "network">;

/**
 * The waypoint's own workload as the source of locality ranking for a service preferring `prefs`: the endpoint of
 * its own service (its Gateway's), as upstream's waypoint Envoy ranks by its own locality. Undefined when the
 * state has none, or when it has several replicas that disagree on a preferred scope: this process cannot tell
 * which of them it is, so it does not claim a place ({@link localityGroups} then fails safe).
 */
export function ownWorkload(
  self: BalancerSelf,
  state: MeshState,
  prefs: readonly RoutingScope[],
): Workload | undefined {
  const [first, ...rest] = state.workloads.endpointsOf(`${self.namespace}/${self.hostname}`);
  if (first === undefined) return undefined;
  return rest.every((w) => localityRank(first, w, prefs) === prefs.length) ? first : undefined;
}

/**
 * Round robin over the healthy endpoints of each service port, skipping ejected ones, within the best locality
 * group as seen from the waypoint's own workload ({@link localityGroups}). The endpoint lists are kept until
 * {@link Balancer.invalidate} (the waypoint calls it on every config change).
 */
export class Balancer {
  #next = new Map<string, number>();
  #ejected = new Map<string, number>();
  #now: () => number;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Endpoint groups by service, port and waypoint, until the config changes ({@link invalidate}). */
  #cache = new Map<string, { state: MeshState; service: Service; groups: Endpoint[][] }>();

  /** Forgets the endpoint lists: the config changed. */
  invalidate(): void {
    this.#cache.clear();
  }

  /**
   * The endpoints of `service` that serve `port` and may take traffic from this waypoint, grouped by locality
   * (best first; one group when the service has no preference), each group in a stable order.
   */
  groups(state: MeshState, service: Service, port: number, self: BalancerSelf): Endpoint[][] {
    const key = `${serviceKey(service)}|${port}|${self.network}|${self.namespace}/${self.hostname}`;
    const cached = this.#cache.get(key);
    if (cached && cached.state === state && cached.service === service) return cached.groups;
    const groups = this.#groups(state, service, port, self);
    this.#cache.set(key, { state, service, groups });
    return groups;
  }

  /** The endpoints of {@link groups}, best group first. */
  candidates(state: MeshState, service: Service, port: number, self: BalancerSelf): Endpoint[] {
    return this.groups(state, service, port, self).flat();
  }

  #groups(state: MeshState, service: Service, port: number, self: BalancerSelf): Endpoint[][] {
    // Capacity 0 never takes a turn of the round robin (ztunnel's weightedPick never picks it either).
    const out: Endpoint[] = eligibleEndpoints(service, port, state, self.network)
      .filter(({ workload: w }) => w.capacity > 0)
      .map(({ workload: w, targetPort }) => ({
        workload: w,
        service,
        ip: w.addresses[0],
        port: targetPort,
        hbone: w.tunnelProtocol === "HBONE",
      }));
    out.sort((a, b) => (a.workload.uid < b.workload.uid ? -1 : a.workload.uid > b.workload.uid ? 1 : 0));
    const source = ownWorkload(self, state, service.loadBalancing?.routingPreference ?? []);
    return localityGroups(source, service.loadBalancing, out);
  }

  /**
   * The next endpoint for `service` port `port`, leaving out ejected ones and those in `tried` (a retry goes
   * elsewhere when it can). It takes the best locality group that has an endpoint not ejected: a group whose
   * endpoints are all ejected fails over to the next, as Envoy moves a priority's traffic to the next one when
   * none of its hosts is healthy (a simplification: Envoy starts spilling over below 71 % healthy, with its
   * overprovisioning factor of 1.4). When every endpoint is ejected, the best group comes back rather than
   * failing outright, as Envoy's panic threshold does; under `STRICT` that group is the only one, so traffic
   * never leaves the required scope. `tried` never moves a retry to a worse group.
   */
  pick(state: MeshState, service: Service, port: number, self: BalancerSelf, tried?: ReadonlySet<string>) {
    const groups = this.groups(state, service, port, self);
    if (groups.length === 0) return undefined;
    const now = this.#now();
    let usable: Endpoint[] = [];
    for (const g of groups) {
      usable = g.filter((e) => !this.#isEjected(endpointKey(e), now));
      if (usable.length > 0) break;
    }
    if (usable.length === 0) usable = groups[0];
    const fresh = tried ? usable.filter((e) => !tried.has(endpointKey(e))) : usable;
    const from = fresh.length > 0 ? fresh : usable;
    const key = `${serviceKey(service)}:${port}`;
    const i = this.#next.get(key) ?? 0;
    this.#next.set(key, (i + 1) % 1_000_000);
    // Weighted by capacity: an endpoint of capacity 2 takes two turns of every round.
    const total = from.reduce((s, e) => s + e.workload.capacity, 0);
    let slot = i % total;
    for (const e of from) {
      if (slot < e.workload.capacity) return e;
      slot -= e.workload.capacity;
    }
    return from[from.length - 1];
  }

  /** Leaves an endpoint out for {@link EJECTION_MS}. */
  eject(e: Pick<Endpoint, "ip" | "port">): void {
    this.#ejected.set(endpointKey(e), this.#now() + EJECTION_MS);
  }

  #isEjected(key: string, now: number): boolean {
    const until = this.#ejected.get(key);
    if (until === undefined) return false;
    if (until > now) return true;
    this.#ejected.delete(key);
    return false;
  }
}

/** A failure to reach an endpoint at all (Envoy's `UF`, upstream connection failure): safe to retry. */
export class ConnectFailure extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConnectFailure";
  }
}

/** What the tunnels need from the waypoint: its identity and certificate. */
export interface TunnelSource {
  /** The waypoint's own workload, for baggage; may be absent from the state. */
  workload: () => Workload | undefined;
  identity: string;
  credentials: () => Promise<WorkloadCredentials>;
  trustDomain: string;
  /** Makes TCP connections; {@link dialTcp} (this namespace) unless the waypoint serves another one. */
  dial?: (ip: string, port: number) => Promise<net.Socket>;
  /** Where the pool logs the connections it retires (a certificate expired, the trust bundle changed). */
  log?: Logger;
}

/** Opens byte streams to endpoints: HBONE through a shared connection pool, or TCP. */
export class Tunnels {
  readonly pool: HbonePool;
  #source: TunnelSource;
  #dial: (ip: string, port: number) => Promise<net.Socket>;

  constructor(source: TunnelSource) {
    this.#source = source;
    this.#dial = source.dial ?? dialTcp;
    const dialer: HboneDialer = {
      dial: (dst) => this.#dial(dst.ip, dst.port),
      credentials: () => source.credentials(),
      trustDomain: source.trustDomain,
      log: source.log,
    };
    this.pool = new HbonePool(dialer);
  }

  /** A byte stream to `e`, or a {@link ConnectFailure}. */
  async open(e: Endpoint, signal?: AbortSignal): Promise<Duplex> {
    if (!e.hbone) {
      return await this.#dial(e.ip, e.port).catch((error) => {
        throw new ConnectFailure(`cannot connect to ${endpointKey(e)}: ${(error as Error).message}`, { cause: error });
      });
    }
    const own = this.#source.workload();
    // Connections to an endpoint are shared by every client's requests, so the tunnel names no client.
    const headers: [string, string][] = own ? [["baggage", baggage(own)]] : [];
    try {
      return await this.pool.connect(
        {
          srcIdentity: this.#source.identity,
          dstIdentities: [workloadIdentity(e.workload).toString()],
          dst: { ip: e.ip, port: HBONE_PORT },
          srcIp: "",
        },
        endpointKey(e),
        headers,
        signal,
      );
    } catch (error) {
      throw new ConnectFailure((error as Error).message, { cause: error });
    }
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/** A TCP connection with half-close kept, or a rejection after {@link CONNECT_TIMEOUT_MS}. */
export function dialTcp(ip: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: ip, port, allowHalfOpen: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connection to ${ip}:${port} timed out after ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}
