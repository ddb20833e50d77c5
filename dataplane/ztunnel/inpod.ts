/**
 * In-pod mode, as ztunnel's `inpod`: for each pod the node agent hands over, ztunnel opens its three listeners
 * inside the pod's network namespace (15001 outbound and 15006 plaintext inbound with IP_TRANSPARENT for TPROXY,
 * 15008 HBONE), all marked 0x539 so the pod's rules let ztunnel's own traffic through, and keeps a certificate for
 * the pod's identity. A pod removed loses all of it: listeners closed, certificate forgotten, connections ended.
 *
 * `add` answers only once the listeners are up and the certificate is in hand, so the agent's ack means the pod is
 * really served; a failure is a nack and the agent tries again.
 *
 * Restarts and upgrades: the listeners carry SO_REUSEPORT (as upstream's, `src/inpod/config.rs`), so a second
 * ztunnel can listen in the pod beside this one, and the pod's namespace migrates queued connections between them
 * (`tcp_migrate_req`). Once the agent says the new one serves the pod (`release`), this one closes its listeners,
 * which hands what the kernel had queued for it to the new one, tells its HBONE clients to go away (two-step
 * GOAWAY), and keeps its open connections until they end or the drain deadline (`drain.ts`).
 */

import net from "node:net";
import type { PodInfo } from "../../mesh/protocol/handoff.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { INPOD_MARK } from "../../mesh/inpod.ts";
import { enableListenerMigration, transparentConnect, transparentListenerFd } from "../sockets_linux.ts";
import { HbonePool } from "../hbone/pool.ts";
import { HboneServer } from "../hbone/server.ts";
import { HBONE_PORT } from "../../mesh/workload.ts";
import type { PodHandler } from "./handoff_client.ts";
import type { PodContext, ProxyContext } from "./pod.ts";
import { handleOutbound } from "./outbound.ts";
import { handleHboneInbound, handlePlaintextInbound } from "./inbound.ts";
import type { SocketAddr } from "../proxy/addr.ts";
import type { WorkloadCert } from "../proxy/identity.ts";
import type { CertSource } from "../proxy/worker_certs.ts";

export const OUTBOUND_PORT = 15001;
export const INBOUND_PLAINTEXT_PORT = 15006;

/** How listeners and dials are made; Linux namespaces in production, loopback in in-process tests. */
export interface PodNetwork {
  /** A listening server for `port` in the pod's namespace, handed to `net.Server.listen`. */
  listen(netns: string, port: number, transparent: boolean): { fd: number } | { host: string; port: number };
  /** Makes the namespace hand a closed listener's queued connections to the others on its port. */
  prepare?(netns: string): void;
  dial(netns: string, source: string, target: SocketAddr, signal?: AbortSignal): Promise<net.Socket>;
  /**
   * Where a connection accepted on 15001 or 15006 was going. Linux has none: TPROXY makes it the accepted socket's
   * local address. A loopback network, whose "capture" dials the pod's listener directly, says it here (upstream's
   * direct tests use a SOCKS5 listener for the same purpose). A rejection drops the connection.
   */
  originalDst?(socket: net.Socket): Promise<SocketAddr>;
}

/** The real thing: FFI sockets in the pod's namespace, marked 0x539. */
export const linuxPodNetwork: PodNetwork = {
  listen: (netns, port, transparent) => ({
    fd: transparentListenerFd({
      netnsPath: netns,
      address: "0.0.0.0",
      port,
      mark: INPOD_MARK,
      transparent,
      reusePort: true,
    }),
  }),
  prepare: enableListenerMigration,
  dial: async (netns, source, target, signal) => {
    const fd = await transparentConnect({ netnsPath: netns, source, target, mark: INPOD_MARK, signal });
    return new net.Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
  },
};

interface ServedPod {
  ctx: PodContext;
  netns: string;
  outbound: net.Server;
  plaintext: net.Server;
  hbone: HboneServer;
  cert: WorkloadCert;
  /** The DNS proxy's listeners (15053), when ztunnel runs one. */
  dns?: { close(): void };
}

/** Opens a pod's DNS proxy listeners (`dns/mod.ts`), answering as from the pod's namespace. */
export interface PodDns {
  serve(bind: { netns: string }, namespace: string): Promise<{ close(): void }>;
}

export class PodManager implements PodHandler {
  #pods = new Map<string, ServedPod>();
  /**
   * Pods a newer ztunnel serves now, whose open connections this one keeps until they end or the deadline. Keyed
   * per release, not per uid: a pod handed back (its successor died, cni/handoff_server.ts) and released again
   * drains twice at once.
   */
  #draining = new Map<string, ServedPod>();
  #releases = 0;
  #proxy: ProxyContext;
  #network: PodNetwork;
  #certs: CertSource;
  #trustDomain: string;
  #refresh: ReturnType<typeof setInterval>;
  #retain: (identity: string) => boolean;
  #dns?: PodDns;

  constructor(opts: {
    proxy: ProxyContext;
    network: PodNetwork;
    /** The rotation manager on the main thread, the certificates it pushed on a worker thread. */
    certs: CertSource;
    trustDomain: string;
    /** How often rotated certificates are put on the pods' HBONE listeners. */
    refreshMs?: number;
    /** Whether an identity no pod uses any more is still wanted (prefetched for the node's workloads). */
    retain?: (identity: string) => boolean;
    /** The DNS proxy, whose 15053 listeners each pod gets beside the other three. */
    dns?: PodDns;
  }) {
    this.#retain = opts.retain ?? (() => false);
    this.#dns = opts.dns;
    this.#proxy = opts.proxy;
    this.#network = opts.network;
    this.#certs = opts.certs;
    this.#trustDomain = opts.trustDomain;
    this.#refresh = setInterval(() => this.#applyRotated(), opts.refreshMs ?? 5_000);
  }

  /** uid → identity of the pods served, for admin and tests. */
  pods(): { uid: string; identity: string; netns: string }[] {
    return [...this.#pods.values()].map((p) => ({
      uid: p.ctx.uid,
      identity: p.ctx.identity.toString(),
      netns: p.netns,
    }));
  }

  async add(uid: string, info: PodInfo, netns: string): Promise<void> {
    const existing = this.#pods.get(uid);
    if (existing && existing.netns === netns) return;
    if (existing) await this.del(uid);
    const identity = SpiffeId.of(this.#trustDomain, info.namespace, info.serviceAccount);
    const log = this.#proxy.log.child({ uid, pod: `${info.namespace}/${info.name}` });
    this.#certs.prefetch(identity.toString());
    const cert = await this.#certs.get(identity.toString());
    const pool = new HbonePool({
      trustDomain: this.#trustDomain,
      credentials: (id) => this.#certs.get(id),
      dial: (dst, srcIp) => this.#network.dial(netns, srcIp, dst),
      log,
    });
    const ctx: PodContext = {
      uid,
      identity,
      // The agent's uid is the model's in tests and local configs, Kubernetes' pod UID otherwise: match as upstream.
      workload: () => {
        const workloads = this.#proxy.state().workloads;
        return workloads.byUid(uid) ?? workloads.byPod(info.namespace, info.name, info.serviceAccount);
      },
      pool,
      dial: (source, target, signal) => this.#network.dial(netns, source, target, signal),
      open: new Set(),
    };
    const proxy = { ...this.#proxy, log };
    try {
      this.#network.prepare?.(netns);
    } catch (error) {
      log.warn(
        { error: (error as Error).message },
        "tcp_migrate_req not set: a restart may reset connections queued then",
      );
    }
    const servers: { close(): unknown }[] = [];
    const network = this.#network;
    const captured = (serve: typeof handleOutbound) => (s: net.Socket) => {
      if (!network.originalDst) return void serve(s, ctx, proxy);
      s.on("error", () => {});
      network.originalDst(s).then((dst) => serve(s, ctx, proxy, dst), () => s.destroy());
    };
    try {
      const outbound = net.createServer({ allowHalfOpen: true }, captured(handleOutbound));
      servers.push(outbound);
      await listen(outbound, this.#network.listen(netns, OUTBOUND_PORT, true));
      const plaintext = net.createServer({ allowHalfOpen: true }, captured(handlePlaintextInbound));
      servers.push(plaintext);
      await listen(plaintext, this.#network.listen(netns, INBOUND_PLAINTEXT_PORT, true));
      const hbone = new HboneServer({
        credentials: cert,
        trustDomain: this.#trustDomain,
        onRequest: (req) => void handleHboneInbound(req, ctx, proxy),
        onRejected: (remote, reason) => log.info({ src: remote, error: reason.message }, "connection failed"),
      });
      servers.push(hbone.server);
      await hbone.listen(this.#network.listen(netns, HBONE_PORT, false));
      const dns = await this.#dns?.serve({ netns }, info.namespace);
      if (dns) servers.push(dns);
      this.#pods.set(uid, { ctx, netns, outbound, plaintext, hbone, cert, dns });
      log.info({ identity: identity.toString(), netns }, "pod enrolled: listeners established on 15001, 15006, 15008");
    } catch (error) {
      for (const s of servers) s.close();
      await pool.close();
      throw error;
    }
  }

  async del(uid: string): Promise<void> {
    const ending: ServedPod[] = [];
    const served = this.#pods.get(uid);
    if (served) ending.push(served);
    this.#pods.delete(uid);
    for (const [key, pod] of this.#draining) {
      if (pod.ctx.uid !== uid) continue;
      ending.push(pod);
      this.#draining.delete(key);
    }
    if (ending.length === 0) return;
    const reason = new Error("pod removed");
    const closing: Promise<unknown>[] = [];
    for (const pod of ending) {
      pod.outbound.close();
      pod.plaintext.close();
      pod.dns?.close();
      closing.push(pod.hbone.close());
      for (const open of [...pod.ctx.open]) open.destroy(reason);
    }
    this.#proxy.connections.closeWorkload(uid, "pod removed");
    await Promise.all([...closing, ...ending.map((pod) => pod.ctx.pool.close())]);
    const identity = ending[0].ctx.identity.toString();
    if (!this.usesIdentity(identity) && !this.#retain(identity)) this.#certs.forget(identity);
    this.#proxy.log.info({ uid }, "pod removed: listeners closed, certificate forgotten, connections ended");
  }

  /**
   * A newer ztunnel serves the pod now (its listeners are up): stop accepting, so that what the kernel queued here
   * moves to the new listeners, and tell HBONE clients to go away; open connections carry on.
   */
  release(uid: string): Promise<void> {
    const pod = this.#pods.get(uid);
    if (!pod) return Promise.resolve();
    this.#pods.delete(uid);
    this.#draining.set(`${uid}#${++this.#releases}`, pod);
    pod.outbound.close();
    pod.plaintext.close();
    pod.dns?.close();
    pod.hbone.drain();
    this.#proxy.log.info({ uid, open: this.#openOf(pod) }, "pod released: listeners closed, connections draining");
    return Promise.resolve();
  }

  /** Stops accepting for every pod (shutting down): each is released, with no successor to take its traffic. */
  async releaseAll(): Promise<void> {
    for (const uid of [...this.#pods.keys()]) await this.release(uid);
  }

  /** Connections still open on every pod, served or draining: the drain waits for none. */
  openConnections(): number {
    let n = 0;
    for (const pod of [...this.#pods.values(), ...this.#draining.values()]) n += this.#openOf(pod);
    return n;
  }

  #openOf(pod: ServedPod): number {
    return pod.ctx.open.size + pod.hbone.connections;
  }

  /** Whether a pod served now, or draining, has this identity. */
  usesIdentity(identity: string): boolean {
    return [...this.#pods.values(), ...this.#draining.values()].some((p) => p.ctx.identity.toString() === identity);
  }

  async reconcile(keep: ReadonlySet<string>): Promise<void> {
    for (const uid of [...this.#pods.keys()]) if (!keep.has(uid)) await this.del(uid);
  }

  /** Ends everything: every pod's listeners and connections, served or draining. */
  async close(): Promise<void> {
    clearInterval(this.#refresh);
    const uids = new Set([...this.#pods.keys(), ...[...this.#draining.values()].map((p) => p.ctx.uid)]);
    for (const uid of uids) await this.del(uid);
  }

  #applyRotated() {
    for (const pod of this.#pods.values()) {
      const current = this.#certs.current(pod.ctx.identity.toString());
      if (current && current !== pod.cert) {
        // A renewal brings the trust bundle too: connections whose peer no longer chains to it are closed.
        if (current.rootsPem !== pod.cert.rootsPem) void pod.ctx.pool.applyTrustBundle(current.rootsPem);
        pod.cert = current;
        void pod.hbone.setCredentials(current);
      }
    }
  }
}

function listen(server: net.Server, at: { fd: number } | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(at, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
