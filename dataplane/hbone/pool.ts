/**
 * The HBONE client: CONNECT tunnels over pooled HTTP/2 connections, as ztunnel's `proxy/pool.rs` does.
 *
 * A connection is keyed by (source identity, expected destination identities, destination ip:15008, source ip):
 * only a tunnel with the same source workload, the same peer and the same expectations may share it. A new
 * connection opens when none for the key can take another stream (at most 100 a connection, fewer if the peer
 * says so); first dials for one key are serialized, so a burst makes one connection, not a hundred. A connection
 * with no streams for 5 minutes is closed; one that received GOAWAY is never used again.
 *
 * The server's certificate must carry one of the expected identities (no hostname check); anything else fails the
 * tunnel before a byte of it is sent. Success is a 200 and nothing else.
 *
 * A pooled connection is only as good as the certificates it was made with (`validity.ts`). No new tunnel rides
 * one whose local or server certificate has expired: it is retired (GOAWAY, its open tunnels finish). Before a
 * checkout the source's current certificate is asked for: when there is none (expired and the CA unreachable, or
 * the identity dropped) the key's connections are retired and the tunnel fails, never falls back to plaintext;
 * when its trust bundle differs from the one a connection was verified against, the server chain is verified
 * again and a connection that no longer chains to it is closed. Every retirement is logged with its reason.
 */

import type net from "node:net";
import tls from "node:tls";
import { H2Connection, type H2Options } from "../h2/connection.ts";
import type { HeaderField } from "../h2/fields.ts";
import type { H2Stream } from "../h2/stream.ts";
import type { Logger } from "../../mesh/log.ts";
import {
  clientTlsOptions,
  connectionCerts,
  peerIdentity,
  TLS_HANDSHAKE_TIMEOUT_MS,
  type WorkloadCredentials,
} from "./tls.ts";
import { chainValidity, type ConnectionCerts, localCertProblem, retireReason, untrustedReason } from "./validity.ts";

export const POOL_MAX_STREAMS_PER_CONNECTION = 100;
export const POOL_UNUSED_RELEASE_TIMEOUT_MS = 5 * 60_000;
/**
 * A CONNECT without an answer is given up after this (ztunnel's connect timeout, 10 s): a peer that finished TLS
 * and SETTINGS but never answers must not hold the tunnel, and whoever waits on it, forever.
 */
export const POOL_CONNECT_TIMEOUT_MS = 10_000;

/** Why a tunnel failed; `code` maps to Istio's response flags in one place (the proxy). */
export class HboneError extends Error {
  constructor(
    readonly code: "CONNECT" | "TIMEOUT" | "TLS" | "IDENTITY" | "HTTP_STATUS" | "STREAM",
    message: string,
    options?: ErrorOptions & { status?: number },
  ) {
    super(message, options);
    this.name = "HboneError";
    this.status = options?.status;
  }
  readonly status: number | undefined;
}

/** What identifies a pooled connection. */
export interface PoolKey {
  srcIdentity: string;
  /** The identities the server may present; any one of them is accepted. */
  dstIdentities: readonly string[];
  /** The next hop, ip and port (15008). */
  dst: { ip: string; port: number };
  srcIp: string;
}

export function poolKeyText(k: PoolKey): string {
  return `${k.srcIdentity}|${[...k.dstIdentities].sort().join(",")}|${k.dst.ip}:${k.dst.port}|${k.srcIp}`;
}

/** How the pool reaches the network and its certificates; the pod's namespace is behind `dial`. */
export interface HboneDialer {
  /** A TCP connection to `dst` from `srcIp`. Rejects on failure or after the connect timeout. */
  dial(dst: { ip: string; port: number }, srcIp: string): Promise<net.Socket>;
  /** The current certificate of the source workload. */
  credentials(srcIdentity: string): Promise<WorkloadCredentials>;
  trustDomain: string;
  /** Where the pool says which connection it retired and why (a certificate expired, the bundle changed). */
  log?: Logger;
}

interface Pooled {
  conn: H2Connection;
  idleTimer?: ReturnType<typeof setTimeout>;
  /** The next hop, for logs. */
  where: string;
  certs: ConnectionCerts;
  retired?: boolean;
}

export interface PoolStats {
  connections: number;
  streams: number;
}

export class HbonePool {
  #dialer: HboneDialer;
  #maxStreams: number;
  #idleMs: number;
  #connectTimeoutMs: number;
  #h2: Partial<H2Options>;
  #byKey = new Map<string, Pooled[]>();
  #dialing = new Map<string, Promise<Pooled>>();
  #closed = false;
  /** Connections made since the pool started; a metric and a test seam. */
  connectionsOpened = 0;

  constructor(
    dialer: HboneDialer,
    opts: {
      maxStreamsPerConnection?: number;
      idleTimeoutMs?: number;
      /** How long a CONNECT's answer is awaited; default {@link POOL_CONNECT_TIMEOUT_MS}. */
      connectTimeoutMs?: number;
      h2?: Partial<H2Options>;
    } = {},
  ) {
    this.#dialer = dialer;
    this.#maxStreams = opts.maxStreamsPerConnection ?? POOL_MAX_STREAMS_PER_CONNECTION;
    this.#idleMs = opts.idleTimeoutMs ?? POOL_UNUSED_RELEASE_TIMEOUT_MS;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? POOL_CONNECT_TIMEOUT_MS;
    this.#h2 = opts.h2 ?? {};
  }

  stats(): PoolStats {
    let connections = 0;
    let streams = 0;
    for (const list of this.#byKey.values()) {
      for (const p of list) {
        connections++;
        streams += p.conn.activeStreams;
      }
    }
    return { connections, streams };
  }

  /**
   * Opens a CONNECT tunnel to `authority` (ip:port) with `headers` added, and resolves with the stream once the
   * server answered 200. An aborted `signal` cancels the tunnel (RST_STREAM CANCEL).
   */
  async connect(key: PoolKey, authority: string, headers: HeaderField[], signal?: AbortSignal): Promise<H2Stream> {
    signal?.throwIfAborted();
    const request: HeaderField[] = [[":method", "CONNECT"], [":authority", authority], ...headers];
    const { pooled, stream } = await this.#checkout(key, request);
    clearTimeout(pooled.idleTimer);
    stream.once("close", () => this.#release(pooled));
    const abort = () => stream.reset(0x8);
    signal?.addEventListener("abort", abort, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stream.reset(0x8); // CANCEL; the response promise rejects
    }, this.#connectTimeoutMs);
    let response: HeaderField[];
    try {
      response = await stream.response;
    } catch (error) {
      if (timedOut) {
        throw new HboneError(
          "TIMEOUT",
          `no answer to CONNECT ${authority} from ${key.dst.ip} within ${this.#connectTimeoutMs} ms`,
          { cause: error },
        );
      }
      throw new HboneError(
        "STREAM",
        `the tunnel to ${authority} via ${key.dst.ip} failed: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", abort);
    }
    const status = response.find(([n]) => n === ":status")?.[1];
    if (status !== "200") {
      stream.destroy();
      throw new HboneError("HTTP_STATUS", `${key.dst.ip} answered ${status} to CONNECT ${authority}`, {
        status: Number(status),
      });
    }
    return stream;
  }

  /** Closes every connection (GOAWAY); open tunnels fail. */
  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#byKey.values()].flat();
    this.#byKey.clear();
    for (const p of all) {
      clearTimeout(p.idleTimer);
      p.conn.destroy(new Error("pool closed"));
    }
    await Promise.all(all.map((p) => p.conn.closed));
  }

  /**
   * Finds or makes a connection with room and opens the stream on it in the same tick, so concurrent callers
   * cannot all count the same free slot.
   */
  async #checkout(key: PoolKey, request: HeaderField[]): Promise<{ pooled: Pooled; stream: H2Stream }> {
    const id = poolKeyText(key);
    this.#retireExpired(id);
    await this.#recheck(id, key);
    for (;;) {
      this.#retireExpired(id);
      if (this.#closed) throw new HboneError("CONNECT", "the pool is closed");
      const ready = this.#byKey.get(id)?.find((p) =>
        p.conn.usable && p.conn.activeStreams < Math.min(this.#maxStreams, p.conn.peerMaxConcurrentStreams)
      );
      if (ready) {
        try {
          return { pooled: ready, stream: ready.conn.request(request) };
        } catch (error) {
          throw new HboneError("STREAM", `cannot open a stream to ${key.dst.ip}: ${(error as Error).message}`, {
            cause: error,
          });
        }
      }
      const inFlight = this.#dialing.get(id);
      if (inFlight) {
        await inFlight.catch(() => {});
        continue;
      }
      const dial = this.#open(key, id);
      this.#dialing.set(id, dial);
      try {
        await dial;
      } finally {
        this.#dialing.delete(id);
      }
    }
  }

  async #open(key: PoolKey, id: string): Promise<Pooled> {
    const where = `${key.dst.ip}:${key.dst.port}`;
    const raw = await this.#dialer.dial(key.dst, key.srcIp).catch((error: Error & { errno?: number }) => {
      const timedOut = error.errno === 110 || /timed out/.test(error.message);
      throw new HboneError(
        timedOut ? "TIMEOUT" : "CONNECT",
        timedOut
          ? `connection to ${where} timed out, maybe a NetworkPolicy is blocking HBONE port ${key.dst.port}`
          : `cannot connect to ${where}: ${error.message}`,
        { cause: error },
      );
    });
    let creds: WorkloadCredentials;
    try {
      creds = await this.#dialer.credentials(key.srcIdentity);
      const problem = localCertProblem(key.srcIdentity, chainValidity(creds.chainPem), Date.now());
      if (problem) throw new Error(problem);
    } catch (error) {
      raw.destroy();
      throw new HboneError("TLS", `no valid certificate for ${key.srcIdentity}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    raw.setNoDelay(true);
    const socket = tls.connect(clientTlsOptions(creds, raw));
    let certs: ConnectionCerts;
    try {
      await handshake(socket, where);
      const peer = peerIdentity(socket, this.#dialer.trustDomain, "server");
      if (!key.dstIdentities.includes(peer.toString())) {
        throw new HboneError("IDENTITY", `${where} presented ${peer}, expected ${key.dstIdentities.join(" or ")}`);
      }
      certs = connectionCerts(socket, creds, peer);
      // A renewal may have brought a new trust bundle during this dial (up to the handshake timeout), and
      // applyTrustBundle() found no connection to check then: verify the server against the bundle now in force.
      const current = await this.#dialer.credentials(key.srcIdentity);
      if (current.rootsPem !== creds.rootsPem) {
        const why = await untrustedReason(certs, current.rootsPem, this.#dialer.trustDomain, "server", Date.now());
        if (why) throw new HboneError("TLS", `${where}: ${why}`);
        certs = { ...certs, rootsPem: current.rootsPem };
      }
    } catch (error) {
      socket.destroy();
      raw.destroy();
      if (error instanceof HboneError) throw error;
      throw new HboneError("TLS", `TLS with ${where} failed: ${(error as Error).message}`, { cause: error });
    }
    const conn = new H2Connection(socket, { role: "client", ...this.#h2 });
    const pooled: Pooled = { conn, where, certs };
    this.connectionsOpened++;
    const list = this.#byKey.get(id) ?? [];
    list.push(pooled);
    this.#byKey.set(id, list);
    conn.closed.then(() => {
      clearTimeout(pooled.idleTimer);
      const now = this.#byKey.get(id);
      const at = now?.indexOf(pooled) ?? -1;
      if (at >= 0) now!.splice(at, 1);
      if (now?.length === 0) this.#byKey.delete(id);
    });
    return pooled;
  }

  /**
   * Verifies every connection against a new trust bundle (the source's certificate was renewed with it) and
   * closes those whose server no longer chains to it; resolves with how many were closed. Checkouts do the same
   * for their key, so this only makes it happen at once, idle connections included.
   */
  async applyTrustBundle(rootsPem: string): Promise<number> {
    const stale = [...this.#byKey.values()].flat().filter((p) => !p.retired && p.certs.rootsPem !== rootsPem);
    const closed = await Promise.all(stale.map((p) => this.#recheckTrust(p, rootsPem)));
    return closed.filter(Boolean).length;
  }

  /** Retires the key's connections on which a certificate has expired: no new stream may ride them. */
  #retireExpired(id: string) {
    const now = Date.now();
    for (const p of [...this.#byKey.get(id) ?? []]) {
      const why = retireReason(p.certs, now);
      if (why) this.#retire(p, why, false);
    }
  }

  /**
   * Asks for the source's current certificate before a checkout. None (expired with the CA unreachable, or the
   * identity dropped): the key's connections are retired and the tunnel fails. A new trust bundle: the key's
   * connections are verified against it.
   */
  async #recheck(id: string, key: PoolKey): Promise<void> {
    const list = this.#byKey.get(id)?.filter((p) => !p.retired);
    if (!list?.length) return;
    let creds: WorkloadCredentials;
    try {
      creds = await this.#dialer.credentials(key.srcIdentity);
    } catch (error) {
      const why = `no valid certificate for ${key.srcIdentity}: ${(error as Error).message}`;
      for (const p of list) this.#retire(p, why, false);
      throw new HboneError("TLS", why, { cause: error });
    }
    await Promise.all(
      list.filter((p) => p.certs.rootsPem !== creds.rootsPem).map((p) => this.#recheckTrust(p, creds.rootsPem)),
    );
  }

  /** Verifies the server chain against `rootsPem`; closes the connection when it fails. True when it was closed. */
  async #recheckTrust(p: Pooled, rootsPem: string): Promise<boolean> {
    const why = await untrustedReason(p.certs, rootsPem, this.#dialer.trustDomain, "server", Date.now());
    if (!why) {
      p.certs = { ...p.certs, rootsPem };
      return false;
    }
    this.#retire(p, why, true);
    return true;
  }

  /**
   * No new stream on `p` from now. An expired certificate closes it gracefully (GOAWAY; open tunnels finish, as a
   * rotation would let them); a server the trust bundle no longer vouches for is cut at once.
   */
  #retire(p: Pooled, why: string, abrupt: boolean) {
    if (p.retired) return;
    p.retired = true;
    clearTimeout(p.idleTimer);
    this.#dialer.log?.warn({ dst: p.where, reason: why }, "pooled HBONE connection retired");
    if (abrupt) p.conn.destroy(new Error(why));
    else void p.conn.close();
  }

  #release(p: Pooled) {
    if (p.conn.activeStreams > 0 || this.#closed) return;
    clearTimeout(p.idleTimer);
    if (!p.conn.usable) {
      p.conn.close();
      return;
    }
    p.idleTimer = setTimeout(() => p.conn.close(), this.#idleMs);
  }
}

function handshake(socket: tls.TLSSocket, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no TLS handshake with ${where} within ${TLS_HANDSHAKE_TIMEOUT_MS} ms`)),
      TLS_HANDSHAKE_TIMEOUT_MS,
    );
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.off("secureConnect", ok);
      socket.off("error", fail);
      socket.off("close", closed);
      if (error) reject(error);
      else resolve();
    };
    const ok = () => done();
    const fail = (error: Error) => done(error);
    const closed = () => done(new Error("the connection closed during the TLS handshake"));
    socket.once("secureConnect", ok);
    socket.once("error", fail);
    socket.once("close", closed);
  });
}
