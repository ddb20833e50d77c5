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
import { bytesEqual, CertError, parseCertificates } from "../../certs/x509.ts";
import type { SpiffeId } from "../../mesh/identity.ts";
import { connectionCerts, peerIdentity, serverTlsOptions, type WorkloadCredentials } from "./tls.ts";
import { chainValidity, type ConnectionCerts, localCertProblem, retireReason, untrustedReason } from "./validity.ts";

/**
 * Between the two GOAWAY frames of a drain, for callers that wait a fixed time (the waypoint's drain); `drain()`
 * here waits for the peer's answer to the PING sent with the first, which needs no guess.
 */
export const GOAWAY_GRACE_MS = 1_000;

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
  /** The last few credentials set, newest first, with their leaf (DER): which one served a handshake. */
  #recent: { creds: WorkloadCredentials; leaf: Uint8Array }[] = [];
  #draining = false;
  #stopped: Promise<void> | undefined;

  constructor(opts: HboneServerOptions) {
    this.#opts = opts;
    this.#creds = opts.credentials;
    this.#remember(opts.credentials);
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
    this.#remember(creds);
    this.server.setSecureContext(serverTlsOptions(creds, this.#opts.handshakeTimeoutMs));
    return bundleChanged ? this.#recheckTrust(creds.rootsPem) : Promise.resolve(0);
  }

  get connections(): number {
    return this.#connections.size;
  }

  /**
   * Stops listening, for a drain (a newer ztunnel serves the pod): each connection is told to go away in two steps
   * (RFC 9113 §6.8; a connection still in its handshake is told once it is up), so clients open their next tunnels
   * elsewhere while the tunnels they have, and any already on their way, run on. A connection ends once its streams
   * are done; `close()` ends the rest.
   */
  drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    void this.#stopListening();
    for (const conn of this.#connections.keys()) this.#goAway(conn);
  }

  /** `server.close()` once: its callback runs when the last connection has ended. */
  #stopListening(): Promise<void> {
    this.#stopped ??= new Promise<void>((resolve) => this.server.close(() => resolve()));
    return this.#stopped;
  }

  #goAway(conn: H2Connection) {
    // Once the peer answered the PING after the first GOAWAY, every stream it opened is here: the final GOAWAY
    // refuses none, and the socket ends with the last of them. A peer that never answers is cut at the deadline.
    void conn.announceShutdown().then(() => conn.close());
  }

  /** Stops listening and closes every connection: GOAWAY, then the sockets. */
  async close(): Promise<void> {
    const closing = this.#stopListening();
    const conns = [...this.#connections.keys()];
    for (const c of conns) c.destroy(new Error("server closing"));
    await Promise.all([closing, ...conns.map((c) => c.closed)]);
  }

  #remember(creds: WorkloadCredentials) {
    const leaf = new Uint8Array(parseCertificates(creds.chainPem, "the server certificate chain")[0].rawData);
    this.#recent = [{ creds, leaf }, ...this.#recent.slice(0, 3)];
  }

  /**
   * The credentials whose TLS context ran `socket`'s handshake. node:tls binds a connection to the context in force
   * when its TCP connection was accepted, so a client may finish its handshake (up to the handshake timeout later)
   * on a context that `setCredentials()` has since replaced: its chain was verified against that context's bundle.
   */
  #handshakeCredentials(socket: tls.TLSSocket): WorkloadCredentials {
    const raw = (socket.getCertificate() as { raw?: Uint8Array } | null)?.raw;
    const found = raw && this.#recent.find((r) => bytesEqual(r.leaf, new Uint8Array(raw)));
    if (!found) throw new CertError("UNTRUSTED", "the handshake ran with a certificate this server no longer holds");
    if (found.creds.rootsPem !== this.#creds.rootsPem) {
      // Refused rather than verified again: bundle changes are rare, and the client's retry gets the new context.
      throw new CertError("UNTRUSTED", "the handshake verified the client against a trust bundle replaced since");
    }
    return found.creds;
  }

  #accept(socket: tls.TLSSocket) {
    let peer: SpiffeId;
    let certs: ConnectionCerts;
    let creds: WorkloadCredentials;
    try {
      peer = peerIdentity(socket, this.#opts.trustDomain, "client");
      creds = this.#handshakeCredentials(socket);
      // Our certificate expired (renewal failing, the CA unreachable): fail closed rather than serve with it.
      const own = localCertProblem(creds.identity.toString(), chainValidity(creds.chainPem), Date.now());
      if (own) throw new CertError("EXPIRED", own);
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
    if (this.#draining) this.#goAway(conn);
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
