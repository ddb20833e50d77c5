/**
 * The waypoint's side towards the destinations: which endpoint of a service takes a request (L7 load
 * balancing, round robin over healthy endpoints, with passive health: an endpoint that failed a connect is left
 * out for {@link EJECTION_MS}), and how a byte stream to it is opened: HBONE from the waypoint's own identity to
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
import { eligibleEndpoints } from "../proxy/endpoint.ts";
import { workloadIdentity } from "../proxy/identity.ts";
import type { Logger } from "../../mesh/log.ts";
import type { MeshState } from "../../mesh/store.ts";
import { HBONE_PORT, type Service, serviceKey, type Workload } from "../../mesh/workload.ts";

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

/**
 * Round robin over the healthy endpoints of each service port, skipping ejected ones. The endpoint lists are
 * kept until {@link Balancer.invalidate} (the waypoint calls it on every config change).
 */
export class Balancer {
  #next = new Map<string, number>();
  #ejected = new Map<string, number>();
  #now: () => number;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Endpoint lists by service, port and network, until the config changes ({@link invalidate}). */
  #cache = new Map<string, { state: MeshState; service: Service; endpoints: Endpoint[] }>();

  /** Forgets the endpoint lists: the config changed. */
  invalidate(): void {
    this.#cache.clear();
  }

  /** The endpoints of `service` that serve `port` and may take traffic, in a stable order. */
  candidates(state: MeshState, service: Service, port: number, network: string): Endpoint[] {
    const key = `${serviceKey(service)}|${port}|${network}`;
    const cached = this.#cache.get(key);
    if (cached && cached.state === state && cached.service === service) return cached.endpoints;
    const endpoints = this.#candidates(state, service, port, network);
    this.#cache.set(key, { state, service, endpoints });
    return endpoints;
  }

  #candidates(state: MeshState, service: Service, port: number, network: string): Endpoint[] {
    // Capacity 0 never takes a turn of the round robin (ztunnel's weightedPick never picks it either).
    const out: Endpoint[] = eligibleEndpoints(service, port, state, network)
      .filter(({ workload: w }) => w.capacity > 0)
      .map(({ workload: w, targetPort }) => ({
        workload: w,
        service,
        ip: w.addresses[0],
        port: targetPort,
        hbone: w.tunnelProtocol === "HBONE",
      }));
    return out.sort((a, b) => (a.workload.uid < b.workload.uid ? -1 : a.workload.uid > b.workload.uid ? 1 : 0));
  }

  /**
   * The next endpoint for `service` port `port`, leaving out ejected ones and those in `tried` (a retry goes
   * elsewhere when it can). When every endpoint is ejected, they all come back rather than failing outright, as
   * Envoy's panic threshold does.
   */
  pick(state: MeshState, service: Service, port: number, network: string, tried?: ReadonlySet<string>) {
    const all = this.candidates(state, service, port, network);
    if (all.length === 0) return undefined;
    const now = this.#now();
    let usable = all.filter((e) => !this.#isEjected(endpointKey(e), now));
    if (usable.length === 0) usable = all;
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
