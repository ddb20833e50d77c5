/**
 * The in-process tier (issue 18): ztunnel's real pod handling (`PodManager`, the outbound, HBONE and inbound
 * handlers, the pool, the access log and the metrics) on a loopback "pod network", with no root and no namespaces,
 * as upstream ztunnel's direct tests run on 127.0.0.x (`tests/direct.rs`, `src/test_helpers.rs`).
 *
 * Each fake pod gets its own 127.a.b.c address; its ztunnel listens on that address's 15001, 15006 and 15008, and
 * dials from it. Capture is simulated: `pod.connect(dst)` dials the pod's 15001 directly and tells the loopback
 * network the original destination (`PodNetwork.originalDst`), which ztunnel on Linux reads from the TPROXY'd
 * socket's local address instead. Everything above that seam is production code.
 *
 * ```ts
 * await using mesh = await InProcessMesh.create();
 * const client = await mesh.pod("client", { node: "a" });
 * const server = await mesh.pod("server", { node: "b" });
 * await server.echo(8080);
 * const reply = await echoThrough(await client.connect(server.addr(8080)), "hi");
 * ```
 *
 * @module
 */

import net from "node:net";
import pino from "pino";
import { RotationManager } from "../../certs/rotation_manager.ts";
import { decodeAuthorization } from "../../mesh/authorization.ts";
import { SpiffeId } from "../../mesh/identity.ts";
import { TcpMetrics } from "../../mesh/metrics.ts";
import { MeshState } from "../../mesh/store.ts";
import { decodeService, decodeWorkload, type Workload } from "../../mesh/workload.ts";
import { accessLogFields } from "../../dataplane/ztunnel/access_log.ts";
import { ConnectionManager } from "../../dataplane/ztunnel/connection_manager.ts";
import { DialGuard } from "../../dataplane/proxy/dial_guard.ts";
import { INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PodManager, type PodNetwork } from "../../dataplane/ztunnel/inpod.ts";
import { issueLocally, type WorkloadCert } from "../../dataplane/proxy/identity.ts";
import { stripV4Mapped } from "../../dataplane/ztunnel/pod.ts";
import type { SocketAddr } from "../../dataplane/proxy/addr.ts";
import { TestPki } from "./pki.ts";

/** How long a captured connection may wait for its original destination before ztunnel drops it. */
const CAPTURE_WAIT_MS = 2_000;

/** A TCP connection from `source` (an address on lo) to `target`. */
function connectFrom(source: string, target: SocketAddr, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new Error("dial aborted"));
    const socket = net.connect({ host: target.ip, port: target.port, localAddress: source, allowHalfOpen: true });
    const onAbort = () => socket.destroy(new Error("dial aborted"));
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.once("connect", () => {
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", reject);
      resolve(socket);
    });
    socket.once("error", (error) => {
      signal?.removeEventListener("abort", onAbort);
      reject(error);
    });
  });
}

/**
 * The loopback pod network: a pod's "namespace" is its address on lo. Listeners bind that address, dials leave
 * from the source address ztunnel asks for, and `capture()` stands in for the in-pod TPROXY rule.
 */
export class LoopbackPodNetwork implements PodNetwork {
  /** Original destinations by the app's end of a captured connection, `ip:port`. */
  #captured = new Map<string, SocketAddr>();
  #waiting = new Map<string, (dst: SocketAddr) => void>();

  listen(netns: string, port: number): { host: string; port: number } {
    return { host: netns, port };
  }

  dial(_netns: string, source: string, target: SocketAddr, signal?: AbortSignal): Promise<net.Socket> {
    return connectFrom(source, target, signal);
  }

  originalDst(socket: net.Socket): Promise<SocketAddr> {
    const key = `${stripV4Mapped(socket.remoteAddress)}:${socket.remotePort}`;
    const known = this.#captured.get(key);
    if (known) {
      this.#captured.delete(key);
      return Promise.resolve(known);
    }
    // The accept often runs before the app's side sees its connect: wait for `capture()` to say where it went.
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(key);
        reject(new Error(`capture ${key}: no original destination after ${CAPTURE_WAIT_MS} ms`));
      }, CAPTURE_WAIT_MS);
      this.#waiting.set(key, (dst) => {
        clearTimeout(timer);
        resolve(dst);
      });
    });
  }

  /**
   * A connection from `source` to `dst`, captured to the ztunnel listener `via`: by default the source pod's own
   * 15001 (outbound); a destination pod's 15006 for plaintext arriving from outside the mesh.
   */
  async capture(source: string, dst: SocketAddr, via: SocketAddr = { ip: source, port: OUTBOUND_PORT }) {
    const socket = await connectFrom(source, via);
    const key = `${source}:${socket.localPort}`;
    const waiter = this.#waiting.get(key);
    this.#waiting.delete(key);
    if (waiter) waiter(dst);
    else this.#captured.set(key, dst);
    return socket;
  }
}

/** One ztunnel (one node): its pods' listeners, its own metrics and access log. */
export interface InProcessZtunnel {
  node: string;
  pods: PodManager;
  /** Its certificates, issued by the mesh's test CA and renewed as ztunnel's are. */
  certs: RotationManager<WorkloadCert>;
  metrics: TcpMetrics;
  /** The "connection complete" lines, as `accessLogFields` makes them. */
  access: Record<string, string | number>[];
}

/** A fake pod on loopback. */
export class TestPod {
  readonly #mesh: InProcessMesh;
  constructor(mesh: InProcessMesh, readonly name: string, readonly ip: string, readonly workload: Workload) {
    this.#mesh = mesh;
  }

  /** This pod's address and `port`. */
  addr(port: number): SocketAddr {
    return { ip: this.ip, port };
  }

  /** Its SPIFFE identity. */
  get identity(): string {
    return SpiffeId.of(this.#mesh.trustDomain, this.workload.namespace, this.workload.serviceAccount).toString();
  }

  /** An app connection to `dst`, captured by this pod's ztunnel as the in-pod rules would. */
  connect(dst: SocketAddr): Promise<net.Socket> {
    return this.#mesh.network.capture(this.ip, dst);
  }

  /** A plaintext connection from `source` (outside the mesh) to this pod's `port`, captured on its 15006. */
  connectPlaintext(source: string, port: number): Promise<net.Socket> {
    return this.#mesh.network.capture(source, this.addr(port), this.addr(INBOUND_PLAINTEXT_PORT));
  }

  /** An app on `port` that answers `reply(data)` (default: the data itself) and counts its connections. */
  echo(port: number, reply: (data: string) => string = (d) => d): Promise<EchoApp> {
    return this.#mesh.app(this.ip, port, reply);
  }
}

/** A TCP app: echoes with a transform; knows who connected. */
export interface EchoApp {
  /** The client addresses of the connections it accepted. */
  peers: string[];
}

/** Options of {@link InProcessMesh.pod}. */
export interface PodOptions {
  /** The ztunnel serving it (default "a"). */
  node?: string;
  namespace?: string;
  serviceAccount?: string;
  /** More fields of the workload, as `decodeWorkload` reads them (services, authorizationPolicies...). */
  extra?: Record<string, unknown>;
}

let meshes = 0;

/** Fake pods, services and policies on loopback, served by real ztunnel pod handling; dispose to end it all. */
export class InProcessMesh implements AsyncDisposable {
  readonly state = new MeshState();
  readonly network = new LoopbackPodNetwork();
  readonly #ztunnels = new Map<string, InProcessZtunnel>();
  readonly #servers: net.Server[] = [];
  readonly #sockets = new Set<net.Socket>();
  readonly #random: () => number;
  readonly #prefix: string;
  #next = 2;

  private constructor(readonly pki: TestPki, random: () => number, prefix: string) {
    this.#random = random;
    this.#prefix = prefix;
  }

  /**
   * A new mesh on its own 127.N.M.0/24 (N, M from the process id and a counter, so concurrent runs do not meet).
   * `random` is ztunnel's (endpoint picks).
   */
  static async create(opts: { random?: () => number } = {}): Promise<InProcessMesh> {
    const n = meshes++;
    const prefix = `127.${100 + (Deno.pid % 100)}.${(Math.floor(Deno.pid / 100) * 7 + n) % 250}`;
    return new InProcessMesh(await TestPki.create(), opts.random ?? Math.random, prefix);
  }

  get trustDomain(): string {
    return this.pki.trustDomain;
  }

  /** A fresh address of this mesh (for a pod, a VIP, or something outside the mesh). */
  address(): string {
    if (this.#next > 254) throw new Error("BUG: InProcessMesh ran out of addresses");
    return `${this.#prefix}.${this.#next++}`;
  }

  /** The ztunnel of `node`, started on first use. */
  ztunnel(node: string): InProcessZtunnel {
    let z = this.#ztunnels.get(node);
    if (z) return z;
    const metrics = new TcpMetrics();
    const access: Record<string, string | number>[] = [];
    const certs = new RotationManager<WorkloadCert>({ fetch: (id) => this.#issue(id) });
    const pods = new PodManager({
      proxy: {
        state: () => this.state,
        metrics,
        connections: new ConnectionManager(),
        dials: new DialGuard(),
        log: pino({ level: "silent" }),
        access: (r) => access.push(accessLogFields(r)),
        random: this.#random,
      },
      network: this.network,
      certs,
      trustDomain: this.trustDomain,
      refreshMs: 60_000,
    });
    z = { node, pods, certs, metrics, access };
    this.#ztunnels.set(node, z);
    return z;
  }

  /** A meshed (HBONE) pod on `node`'s ztunnel, in the state and enrolled: its listeners are up on return. */
  async pod(name: string, opts: PodOptions = {}): Promise<TestPod> {
    const ip = this.address();
    const namespace = opts.namespace ?? "default";
    const serviceAccount = opts.serviceAccount ?? name;
    const node = opts.node ?? "a";
    const workload = decodeWorkload({
      uid: `Kubernetes//Pod/${namespace}/${name}`,
      name,
      namespace,
      serviceAccount,
      addresses: [ip],
      node,
      tunnelProtocol: "HBONE",
      ...opts.extra,
    });
    this.state.workloads.upsert(workload);
    await this.ztunnel(node).pods.add(workload.uid, { name, namespace, serviceAccount }, ip);
    return new TestPod(this, name, ip, workload);
  }

  /** A service `name.namespace.svc.cluster.local` on a fresh VIP; `ports` maps service port → target port. */
  service(name: string, ports: Record<number, number>, namespace = "default"): { vip: string; key: string } {
    const vip = this.address();
    const hostname = `${name}.${namespace}.svc.cluster.local`;
    this.state.services.upsert(decodeService({
      name,
      namespace,
      hostname,
      addresses: [{ address: vip }],
      ports: Object.entries(ports).map(([port, targetPort]) => ({ port: Number(port), targetPort })),
    }));
    return { vip, key: `${namespace}/${hostname}` };
  }

  /** An AuthorizationPolicy, as `decodeAuthorization` reads it. */
  policy(doc: Record<string, unknown>): void {
    this.state.policies.upsert(decodeAuthorization(doc));
  }

  /** A TCP app on `ip:port` (a pod's, or an address outside the mesh). */
  async app(ip: string, port: number, reply: (data: string) => string): Promise<EchoApp> {
    const peers: string[] = [];
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      this.#sockets.add(s);
      s.once("close", () => this.#sockets.delete(s));
      s.on("error", () => {});
      peers.push(stripV4Mapped(s.remoteAddress));
      s.setEncoding("utf8");
      s.on("data", (d: string) => s.write(reply(d)));
      s.on("end", () => s.end());
    });
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: ip, port }, () => resolve());
    });
    return { peers };
  }

  /** The sum of `name`'s samples on `node`'s ztunnel whose labels include `labels`. */
  async counter(node: string, name: string, labels: Record<string, string> = {}): Promise<number> {
    const metric = this.ztunnel(node).metrics.registry.getSingleMetric(name);
    if (!metric) throw new Error(`counter ${name}: not registered`);
    const { values } = await metric.get();
    return values
      .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
      .reduce((sum, v) => sum + v.value, 0);
  }

  /** Ends every ztunnel (their pods' listeners and connections), every app, and the certificates. */
  async [Symbol.asyncDispose](): Promise<void> {
    for (const z of this.#ztunnels.values()) {
      await z.pods.close();
      z.certs.close();
    }
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }

  #issue(identity: string): Promise<WorkloadCert> {
    return issueLocally(this.pki.ca, identity, 3_600_000);
  }
}

/**
 * Writes `message` on `socket`, half-closes, and reads to the end. Resolves with what came back, or rejects with
 * the error that ended it (a reset: ztunnel refused).
 */
export function exchangeAll(socket: net.Socket, message: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => got += d);
    socket.once("end", () => {
      socket.destroy();
      resolve(got);
    });
    socket.once("error", (error) => {
      socket.destroy();
      reject(error);
    });
    socket.end(message);
  });
}
