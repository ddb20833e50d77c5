/**
 * The HBONE server: mutual TLS on a listener (15008 in a pod), HTTP/2 on each connection, one callback per stream.
 *
 * The TLS layer admits only clients with a certificate from our trust bundle whose identity is in our own trust
 * domain (upstream's TrustDomainVerifier); a handshake not finished within 10 s is dropped. What a stream may do
 * (CONNECT only, the authority, authorization, the dial) is the caller's decision (`ztunnel/inbound.ts`); this
 * module only hands it the stream, the request and the verified peer identity.
 *
 * The certificates stay checked for the connection's life (`validity.ts`): once the client's certificate or our own
 * has expired, a new stream is refused (REFUSED_STREAM) and the connection gets GOAWAY; a connection is refused
 * outright while our own certificate is expired; and when the trust bundle changes, connections whose client no
 * longer chains to it are closed. A resumed TLS session is refused (`tls.ts`).
 */

import type net from "node:net";
import tls from "node:tls";
import { H2Connection, type H2Options } from "../h2/connection.ts";
import type { HeaderField } from "../h2/fields.ts";
import { ErrorCode } from "../h2/frame.ts";
import type { H2Stream } from "../h2/stream.ts";
import { CertError } from "../../certs/x509.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import { connectionCerts, peerIdentity, serverTlsOptions, type WorkloadCredentials } from "./tls.ts";
import { chainValidity, type ConnectionCerts, localCertProblem, retireReason, untrustedReason } from "./validity.ts";

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
  /** A connection refused at the TLS or identity layer, or closed because its certificates no longer hold. */
  onRejected?(remote: string, reason: Error): void;
  h2?: Partial<H2Options>;
  /** Default TLS_HANDSHAKE_TIMEOUT_MS. */
  handshakeTimeoutMs?: number;
}

export class HboneServer {
  readonly server: tls.Server;
  #connections = new Map<H2Connection, { certs: ConnectionCerts; remote: string }>();
  #opts: HboneServerOptions;
  #creds: WorkloadCredentials;

  constructor(opts: HboneServerOptions) {
    this.#opts = opts;
    this.#creds = opts.credentials;
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

  /**
   * A rotated certificate: new handshakes use it, established connections keep theirs until it expires. When the
   * trust bundle changed, each connection's client chain is verified against the new one and the connections
   * that fail are closed; resolves with how many were.
   */
  setCredentials(creds: WorkloadCredentials): Promise<number> {
    const bundleChanged = creds.rootsPem !== this.#creds.rootsPem;
    this.#creds = creds;
    this.server.setSecureContext(serverTlsOptions(creds, this.#opts.handshakeTimeoutMs));
    return bundleChanged ? this.#recheckTrust(creds.rootsPem) : Promise.resolve(0);
  }

  get connections(): number {
    return this.#connections.size;
  }

  /** Stops listening and closes every connection: GOAWAY, then the sockets. */
  async close(): Promise<void> {
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const conns = [...this.#connections.keys()];
    for (const c of conns) c.destroy(new Error("server closing"));
    await Promise.all([closing, ...conns.map((c) => c.closed)]);
  }

  #accept(socket: tls.TLSSocket) {
    const creds = this.#creds;
    let peer: SpiffeId;
    let certs: ConnectionCerts;
    try {
      // Our certificate expired (renewal failing, the CA unreachable): fail closed rather than serve with it.
      const own = localCertProblem(creds.identity.toString(), chainValidity(creds.chainPem), Date.now());
      if (own) throw new CertError("EXPIRED", own);
      peer = peerIdentity(socket, this.#opts.trustDomain, "client");
      certs = connectionCerts(socket, creds, peer);
    } catch (error) {
      this.#opts.onRejected?.(`${socket.remoteAddress}:${socket.remotePort}`, error as Error);
      socket.destroy();
      return;
    }
    const remote = { ip: stripV4Mapped(socket.remoteAddress ?? ""), port: socket.remotePort ?? 0 };
    const local = { ip: stripV4Mapped(socket.localAddress ?? ""), port: socket.localPort ?? 0 };
    const where = `${remote.ip}:${remote.port}`;
    const conn: H2Connection = new H2Connection(socket, {
      role: "server",
      ...this.#opts.h2,
      onStream: (stream) => {
        const expired = retireReason(certs, Date.now());
        if (expired) {
          // REFUSED_STREAM: the client may retry on a new connection, with certificates that hold (RFC 9113 §8.7).
          stream.reset(ErrorCode.REFUSED_STREAM);
          if (conn.usable) {
            this.#opts.onRejected?.(where, new CertError("EXPIRED", `connection closed to new streams: ${expired}`));
            void conn.close();
          }
          return;
        }
        this.#opts.onRequest({ stream, headers: stream.requestHeaders, peer, remote, local });
      },
    });
    this.#connections.set(conn, { certs, remote: where });
    conn.closed.then(() => this.#connections.delete(conn));
  }

  async #recheckTrust(rootsPem: string): Promise<number> {
    let closed = 0;
    for (const [conn, entry] of [...this.#connections]) {
      if (entry.certs.rootsPem === rootsPem) continue;
      const why = await untrustedReason(entry.certs, rootsPem, this.#opts.trustDomain, "client", Date.now());
      if (rootsPem !== this.#creds.rootsPem) break; // a newer bundle came meanwhile; its own check goes on
      if (!why) {
        entry.certs = { ...entry.certs, rootsPem };
        continue;
      }
      closed++;
      const reason = new CertError("UNTRUSTED", `connection closed: ${why}`);
      this.#opts.onRejected?.(entry.remote, reason);
      conn.destroy(reason);
    }
    return closed;
  }
}

function stripV4Mapped(ip: string): string {
  return ip.startsWith("::ffff:") ? ip.slice(7) : ip;
}
