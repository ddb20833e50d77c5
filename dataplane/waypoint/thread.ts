/**
 * One thread's share of the waypoint: what serves HBONE on 15008, built the same way on the main thread
 * (`mod.ts`) and on each worker thread (`worker.ts`): the tunnels to backends and their pool, the HTTP/1.1 and
 * HTTP/2 upstreams, the balancer, the drain, and an {@link HboneServer} on a SO_REUSEPORT listener, so that every
 * thread listens on the same address and port and the kernel spreads new connections between them (a connection
 * stays on the thread that accepted it). Each thread decides from its own copy of the config and takes its
 * certificate from a {@link CertSource}: the rotation manager on the main thread, the pushed ones on a worker.
 *
 * @module
 */

import net from "node:net";
import type { ClientConfig } from "../../mesh/control_client.ts";
import type { Logger } from "../../mesh/log.ts";
import { HboneServer } from "../hbone/server.ts";
import type { WorkloadCert } from "../proxy/identity.ts";
import type { CertSource } from "../proxy/worker_certs.ts";
import { transparentConnect, transparentListenerFd } from "../sockets_linux.ts";
import { WaypointDrain } from "./drain.ts";
import type { WaypointContext } from "./exchange.ts";
import { Http1Upstream } from "./http1.ts";
import { Http2Upstream } from "./http2.ts";
import { handleTunnel } from "./server.ts";
import type { WaypointSelf } from "./session.ts";
import type { WaypointMetrics } from "./telemetry.ts";
import { Balancer, Tunnels } from "./upstream.ts";

/** What a thread serves with. */
export interface WaypointThreadOptions {
  self: WaypointSelf;
  config: ClientConfig;
  certs: CertSource;
  trustDomain: string;
  /** The pod's network namespace to listen and dial in; this one when absent. */
  netns?: string;
  listenAddress: string;
  hbonePort: number;
  metrics: WaypointMetrics;
  log: Logger;
  access: Logger;
}

/** The HBONE listener of one thread and everything behind it. */
export class WaypointThread {
  readonly drain = new WaypointDrain();
  readonly ctx: WaypointContext;
  readonly tunnels: Tunnels;
  readonly #o: WaypointThreadOptions;
  readonly #upstreams: { http1: Http1Upstream; http2: Http2Upstream };
  #server: HboneServer | undefined;
  #cert: WorkloadCert | undefined;

  constructor(o: WaypointThreadOptions) {
    this.#o = o;
    const { self, config, netns } = o;
    const identity = self.identity.toString();
    this.tunnels = new Tunnels({
      dial: netns === undefined ? undefined : async (ip, port) => {
        const fd = await transparentConnect({ netnsPath: netns, source: "0.0.0.0", target: { ip, port } });
        return new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
      },
      // Its own workload is an endpoint of its own service (found through the store's service index).
      workload: () => config.state.workloads.endpointsOf(`${self.namespace}/${self.hostname}`)[0],
      identity,
      credentials: () => o.certs.get(identity),
      trustDomain: o.trustDomain,
      log: o.log,
    });
    this.ctx = {
      self,
      state: () => config.state,
      balancer: new Balancer(),
      tunnels: this.tunnels,
      metrics: o.metrics,
      log: o.log,
      access: o.access,
      random: Math.random,
      drain: this.drain,
    };
    this.#upstreams = { http1: new Http1Upstream(this.tunnels), http2: new Http2Upstream(this.tunnels) };
  }

  /** True once listening. */
  get listening(): boolean {
    return this.#server !== undefined;
  }

  /** The config changed: endpoints picked before are picked again. */
  configChanged(): void {
    this.ctx.balancer.invalidate();
  }

  /**
   * Listens on the HBONE port with `cert`. The socket is SO_REUSEPORT in every case, so the other threads' (and,
   * during a restart, a second waypoint's, run by the same user) listen beside it.
   */
  async listen(cert: WorkloadCert): Promise<net.AddressInfo> {
    const { log } = this.#o;
    this.#cert = cert;
    const server = new HboneServer({
      credentials: cert,
      trustDomain: this.#o.trustDomain,
      h2: { maxConcurrentStreams: 100 },
      onRequest: (req) => {
        handleTunnel(req, this.ctx, this.#upstreams).catch((error) => {
          log.error({ error: String(error) }, "BUG: tunnel handling failed");
          req.stream.destroy();
        });
      },
      onRejected: (remote, reason) => log.info({ remote, reason: reason.message }, "connection refused"),
    });
    this.#server = server;
    const fd = transparentListenerFd({
      netnsPath: this.#o.netns,
      address: this.#o.listenAddress,
      port: this.#o.hbonePort,
      reusePort: true,
    });
    const address = await server.listen({ fd });
    log.info({ listener: "hbone", address: `${address.address}:${address.port}` }, "listener established");
    return address;
  }

  /**
   * Puts the source's current certificate on the listener when it is a newer one than it serves; a renewal brings
   * the trust bundle too: pooled connections whose peer no longer chains to it are closed.
   */
  rotate(): void {
    const current = this.#o.certs.current(this.#o.self.identity.toString());
    // Compared by chain: a worker's pushed certificates are copies, never the same object twice.
    if (!this.#server || !current || current.chainPem === this.#cert?.chainPem) return;
    if (current.rootsPem !== this.#cert?.rootsPem) void this.tunnels.pool.applyTrustBundle(current.rootsPem);
    this.#cert = current;
    void this.#server.setCredentials(current);
    this.#o.log.info({ notAfter: new Date(current.notAfter).toISOString() }, "certificate rotated");
  }

  /** Stops accepting: clients are told to go away, what is in flight runs on (drain.ts). */
  beginDrain(): void {
    this.#server?.drain();
    this.drain.begin();
  }

  /** Closes the listener, every connection and the upstreams. */
  async close(): Promise<void> {
    await this.#server?.close();
    this.#upstreams.http1.close();
    this.#upstreams.http2.close();
    await this.tunnels.close();
  }
}
