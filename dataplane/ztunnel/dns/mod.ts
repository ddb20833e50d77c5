/**
 * ztunnel's DNS proxy (upstream's `src/dns/server.rs`): in each enrolled pod, UDP and TCP listeners on
 * 127.0.0.1:15053, which the in-pod rules send the app's port-53 traffic to (`cni/redirect_linux.ts`, nat
 * `SKIFF_DNS`). Names the mesh holds are answered from the model (`resolver.ts`); everything else is forwarded to
 * the node's resolvers (`forwarder.ts`). A VM or pod with no cluster DNS can so call
 * `http://web.shop.svc.cluster.local`.
 *
 * The listeners are made inside the pod's namespace with synchronous calls (`mesh/netns_linux.ts`): UDP with
 * `Deno.listenDatagram` (Deno's `node:dgram` binds a tick later, after the switch back, and takes no fd; so
 * deno.json turns on `unstable: ["net"]`), TCP as an FFI listener handed to `net.Server`. Both are SO_REUSEADDR /
 * SO_REUSEPORT, so a restarting ztunnel's successor can bind beside this one. They carry no SO_MARK: they only
 * answer the app over `lo`, which the in-pod rules never capture, and a 0x539 reply would tag the connection for
 * the TPROXY path (`SKIFF_PRERT` rule 1).
 *
 * Every failure answers or drops, never throws: a malformed query gets FORMERR when its header could be read (else
 * it is dropped, as upstream's hickory server does), an opcode other than QUERY gets NOTIMP, a forwarding failure
 * SERVFAIL. UDP answers larger than the client takes (512 octets, or its EDNS size up to 1232) are sent truncated
 * (TC), so the client retries over TCP. TCP connections carry one 2-octet-framed query after another, answered in
 * order (RFC 7766 §6.2.1), and are closed after 10 s idle (RFC 7766 §6.2.3) or at a frame over 65535 octets.
 *
 * @module
 */

import net from "node:net";
import type { Logger } from "../../../mesh/log.ts";
import { option, parsers } from "../../../mesh/config.ts";
import { inNetns } from "../../../mesh/netns_linux.ts";
import { transparentListenerFd } from "../../sockets_linux.ts";
import { cacheKey, Forwarder, parseResolvConf, type UpstreamConfig } from "./forwarder.ts";
import { DEFAULT_CLUSTER_DOMAIN, type MeshNames, resolveMesh } from "./resolver.ts";
import { TcpFrames } from "./tcp_frames.ts";
import { buildAnswer, DnsWireError, MAX_MESSAGE, parseQuery, RCODE, truncateForUdp, udpLimit } from "./wire.ts";

/** The DNS proxy's port in each pod (upstream's `DNSCapturePort`). */
export const DNS_PORT = 15053;
/** An idle TCP connection is closed after this (RFC 7766 §6.2.3 suggests seconds, not minutes). */
export const TCP_IDLE_MS = 10_000;
/** At most this many TCP connections per pod. */
export const MAX_TCP_CONNECTIONS = 64;
/** At most this many queries queued on one TCP connection before it stops being read. */
export const MAX_TCP_QUEUED = 16;
/** At most this many UDP queries pending per pod; more are dropped (the client retries). */
export const MAX_UDP_PENDING = 256;

/** ztunnel's options for the DNS proxy, spread into its option table. */
export const DNS_OPTIONS = {
  clusterDomain: option({
    flag: "cluster-domain",
    env: "CLUSTER_DOMAIN",
    help: "the cluster's DNS domain, for NAME, NAME.NS and NAME.NS.svc answered by the DNS proxy",
    parser: parsers.string("a DNS domain such as cluster.local"),
    default: DEFAULT_CLUSTER_DOMAIN,
  }),
  dnsResolvConf: option({
    flag: "dns-resolv-conf",
    env: "SKIFF_DNS_RESOLV_CONF",
    help: "where the DNS proxy reads the node's upstream resolvers (nameserver lines)",
    parser: parsers.string("a file path"),
    default: "/etc/resolv.conf",
  }),
};

/** Where a pod's listeners are made: a namespace path in production, the host's loopback in tests. */
export interface DnsBind {
  netns?: string;
  /** 127.0.0.1 unless a test says otherwise. */
  host?: string;
  /** {@link DNS_PORT} unless a test asks for 0. */
  port?: number;
}

/** One pod's listeners. */
export interface DnsListeners {
  udpPort: number;
  tcpPort: number;
  close(): void;
}

/** The proxy: the resolver and forwarder every pod shares, and the pods' listeners. */
export class DnsProxy {
  #state: () => MeshNames;
  #domain: string;
  #log: Logger;
  readonly forwarder: Forwarder;
  /** Listener sets opened so far: each pod's gets its own name for the forwarder's per-pod bound. */
  #served = 0;
  /** Queries answered, by how (`mesh`, `forwarded`, `servfail`, `formerr`, `notimp`, `dropped`), for tests. */
  readonly counts = new Map<string, number>();

  constructor(opts: {
    state: () => MeshNames;
    log: Logger;
    domain?: string;
    /** The node's resolvers; read from `resolvConf` (each query, so an edit applies) when not given. */
    upstream?: () => UpstreamConfig;
    resolvConf?: string;
    cacheEntries?: number;
  }) {
    this.#state = opts.state;
    this.#domain = opts.domain ?? DEFAULT_CLUSTER_DOMAIN;
    this.#log = opts.log;
    const file = opts.resolvConf ?? "/etc/resolv.conf";
    this.forwarder = new Forwarder({
      upstream: opts.upstream ?? (() => readUpstream(file)),
      cacheEntries: opts.cacheEntries,
    });
  }

  #count(what: string) {
    this.counts.set(what, (this.counts.get(what) ?? 0) + 1);
  }

  /**
   * The answer to one query message from a pod in `namespace`, or undefined to drop it. Never throws. `client`
   * names the pod's listeners (the namespace unless given), whose upstream queries share one bound.
   */
  async answer(
    message: Uint8Array,
    namespace: string,
    transport: "udp" | "tcp",
    client: string = namespace,
  ): Promise<Uint8Array | undefined> {
    let query;
    try {
      query = parseQuery(message);
    } catch (error) {
      const id = error instanceof DnsWireError ? error.id : undefined;
      this.#log.debug({ namespace, error: (error as Error).message }, "dns query refused");
      this.#count(id === undefined ? "dropped" : "formerr");
      return id === undefined ? undefined : buildAnswer({ id }, { rcode: RCODE.FORMERR });
    }
    const fit = (r: Uint8Array) => transport === "udp" ? truncateForUdp(r, udpLimit(query)) : r;
    if (query.opcode !== 0) {
      this.#count("notimp");
      return buildAnswer(query, { rcode: RCODE.NOTIMP });
    }
    const decided = resolveMesh(this.#state(), query, namespace, this.#domain);
    if (decided.kind === "answer") {
      this.#count("mesh");
      this.#log.debug({ namespace, name: query.name, type: query.type, host: decided.host }, "dns answered");
      return fit(buildAnswer(query, { rcode: RCODE.NOERROR, authoritative: true, answers: decided.records }));
    }
    try {
      const key = cacheKey(query.name, query.type, query.class, transport, query.checkingDisabled);
      const response = await this.forwarder.forward(message, query.questionBytes, key, transport, client);
      this.#count("forwarded");
      return fit(response);
    } catch (error) {
      this.#count("servfail");
      this.#log.info({ namespace, name: query.name, error: (error as Error).message }, "dns forwarding failed");
      return buildAnswer(query, { rcode: RCODE.SERVFAIL });
    }
  }

  /** Opens a pod's UDP and TCP listeners and answers on them until `close()`. */
  async serve(bind: DnsBind, namespace: string): Promise<DnsListeners> {
    const host = bind.host ?? "127.0.0.1";
    const port = bind.port ?? DNS_PORT;
    const client = `${namespace}#${++this.#served}`;
    const makeUdp = () => Deno.listenDatagram({ transport: "udp", hostname: host, port, reuseAddress: true });
    const udp = bind.netns ? inNetns(bind.netns, makeUdp) : makeUdp();
    let tcp: net.Server;
    try {
      const fd = transparentListenerFd({ netnsPath: bind.netns, address: host, port, reusePort: true, backlog: 128 });
      tcp = net.createServer((s) => this.#serveTcp(s, namespace, client));
      tcp.maxConnections = MAX_TCP_CONNECTIONS;
      await new Promise<void>((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen({ fd }, () => {
          tcp.off("error", reject);
          resolve();
        });
      });
    } catch (error) {
      udp.close();
      throw error;
    }
    let closed = false;
    void this.#serveUdp(udp, namespace, client, () => closed);
    return {
      udpPort: (udp.addr as Deno.NetAddr).port,
      tcpPort: (tcp.address() as net.AddressInfo).port,
      close: () => {
        if (closed) return;
        closed = true;
        udp.close();
        tcp.close();
      },
    };
  }

  async #serveUdp(conn: Deno.DatagramConn, namespace: string, client: string, closed: () => boolean): Promise<void> {
    let pending = 0;
    let failures = 0;
    while (!closed()) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await conn.receive();
        failures = 0;
      } catch (error) {
        if (closed()) return;
        // A failed receive must not end the pod's DNS for good: go on, unless it keeps failing.
        this.#log.warn({ namespace, error: (error as Error).message }, "dns UDP receive failed");
        if (++failures >= 100) return;
        continue;
      }
      const [message, from] = got;
      if (pending >= MAX_UDP_PENDING) {
        this.#count("dropped");
        continue;
      }
      pending++;
      void this.answer(message, namespace, "udp", client).then(async (reply) => {
        if (reply && !closed()) await conn.send(reply, from).catch(() => {});
      }).finally(() => pending--);
    }
  }

  #serveTcp(socket: net.Socket, namespace: string, client: string): void {
    const frames = new TcpFrames();
    let chain = Promise.resolve();
    let queued = 0;
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy());
    socket.on("error", () => socket.destroy());
    // Messages are taken off the stream only while fewer than MAX_TCP_QUEUED wait, and answered in order, one at a
    // time (RFC 7766 §6.2.1); a client that pipelines thousands in one write is read no further until they are
    // answered, and nothing is answered once the connection is over.
    const pump = () => {
      while (queued < MAX_TCP_QUEUED && !socket.destroyed) {
        const message = frames.next();
        if (!message) break;
        queued++;
        chain = chain.then(async () => {
          if (socket.destroyed) return;
          const reply = await this.answer(message, namespace, "tcp", client);
          if (socket.destroyed) return;
          if (!reply) return void socket.destroy();
          const framed = new Uint8Array(2 + reply.length);
          framed[0] = reply.length >> 8;
          framed[1] = reply.length & 0xff;
          framed.set(reply, 2);
          socket.write(framed);
        }).finally(() => {
          queued--;
          pump();
        });
      }
      if (socket.destroyed) return;
      // Stop reading while the queue is full or a whole message is buffered ahead of it; read on once it drains.
      if (queued >= MAX_TCP_QUEUED || frames.buffered > 2 + MAX_MESSAGE) socket.pause();
      else if (socket.isPaused()) socket.resume();
    };
    socket.on("data", (chunk: Uint8Array) => {
      frames.push(chunk);
      pump();
    });
  }
}

function readUpstream(file: string): UpstreamConfig {
  try {
    return parseResolvConf(Deno.readTextFileSync(file));
  } catch {
    return { servers: [], timeoutMs: 0 };
  }
}
