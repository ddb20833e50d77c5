/**
 * The HBONE server: mutual TLS on a listener (15008 in a pod), HTTP/2 on each connection, one callback per stream.
 *
 * The TLS layer admits only clients with a certificate from our trust bundle whose identity is in our own trust
 * domain (upstream's TrustDomainVerifier); a handshake not finished within 10 s is dropped. What a stream may do
 * (CONNECT only, the authority, authorization, the dial) is the caller's decision (`ztunnel/inbound.ts`); this
 * module only hands it the stream, the request and the verified peer identity.
 */

import type net from "node:net";
import tls from "node:tls";
import { H2Connection, type H2Options } from "../h2/connection.ts";
import type { HeaderField } from "../h2/fields.ts";
import type { H2Stream } from "../h2/stream.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import { peerIdentity, serverTlsOptions, type WorkloadCredentials } from "./tls.ts";

/** One CONNECT (or other) request that arrived over HBONE. */
export interface HboneRequest {
  stream: H2Stream;
  headers: HeaderField[];
  /** The verified identity of the client. */
  peer: SpiffeId;
  /** The TCP peer: the client's ztunnel or waypoint. */
  remote: { ip: string; port: number };
  /** Where the connection arrived (pod IP:15008). */
  local: { ip: string; port: number };
}

export interface HboneServerOptions {
  credentials: WorkloadCredentials;
  trustDomain: string;
  onRequest(request: HboneRequest): void;
  /** A connection refused at the TLS or identity layer. */
  onRejected?(remote: string, reason: Error): void;
  h2?: Partial<H2Options>;
  /** Default TLS_HANDSHAKE_TIMEOUT_MS. */
  handshakeTimeoutMs?: number;
}

export class HboneServer {
  readonly server: tls.Server;
  #connections = new Set<H2Connection>();
  #opts: HboneServerOptions;

  constructor(opts: HboneServerOptions) {
    this.#opts = opts;
    this.server = tls.createServer(
      serverTlsOptions(opts.credentials, opts.handshakeTimeoutMs),
      (socket) => this.#accept(socket),
    );
    this.server.on("tlsClientError", (error: Error, socket: tls.TLSSocket) => {
      opts.onRejected?.(`${socket.remoteAddress}:${socket.remotePort}`, error);
      socket.destroy();
    });
  }

  /** Listens on an fd made by `sockets_linux.ts` (inside a pod) or on a host address (tests). */
  listen(at: { fd: number } | { host: string; port: number }): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(at, () => {
        this.server.off("error", reject);
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  /** A rotated certificate: new handshakes use it, established connections keep theirs. */
  setCredentials(creds: WorkloadCredentials) {
    this.server.setSecureContext(serverTlsOptions(creds, this.#opts.handshakeTimeoutMs));
  }

  get connections(): number {
    return this.#connections.size;
  }

  /** Stops listening and closes every connection: GOAWAY, then the sockets. */
  async close(): Promise<void> {
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const conns = [...this.#connections];
    for (const c of conns) c.destroy(new Error("server closing"));
    await Promise.all([closing, ...conns.map((c) => c.closed)]);
  }

  #accept(socket: tls.TLSSocket) {
    let peer: SpiffeId;
    try {
      peer = peerIdentity(socket, this.#opts.trustDomain, "client");
    } catch (error) {
      this.#opts.onRejected?.(`${socket.remoteAddress}:${socket.remotePort}`, error as Error);
      socket.destroy();
      return;
    }
    const remote = { ip: stripV4Mapped(socket.remoteAddress ?? ""), port: socket.remotePort ?? 0 };
    const local = { ip: stripV4Mapped(socket.localAddress ?? ""), port: socket.localPort ?? 0 };
    const conn = new H2Connection(socket, {
      role: "server",
      ...this.#opts.h2,
      onStream: (stream) => this.#opts.onRequest({ stream, headers: stream.requestHeaders, peer, remote, local }),
    });
    this.#connections.add(conn);
    conn.closed.then(() => this.#connections.delete(conn));
  }
}

function stripV4Mapped(ip: string): string {
  return ip.startsWith("::ffff:") ? ip.slice(7) : ip;
}
