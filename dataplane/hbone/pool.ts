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
 */

import type net from "node:net";
import tls from "node:tls";
import { H2Connection, type H2Options } from "../h2/connection.ts";
import type { HeaderField } from "../h2/fields.ts";
import type { H2Stream } from "../h2/stream.ts";
import { clientTlsOptions, peerIdentity, TLS_HANDSHAKE_TIMEOUT_MS, type WorkloadCredentials } from "./tls.ts";

export const POOL_MAX_STREAMS_PER_CONNECTION = 100;
export const POOL_UNUSED_RELEASE_TIMEOUT_MS = 5 * 60_000;

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
}

interface Pooled {
  conn: H2Connection;
  idleTimer?: ReturnType<typeof setTimeout>;
}

export interface PoolStats {
  connections: number;
  streams: number;
}

export class HbonePool {
  #dialer: HboneDialer;
  #maxStreams: number;
  #idleMs: number;
  #h2: Partial<H2Options>;
  #byKey = new Map<string, Pooled[]>();
  #dialing = new Map<string, Promise<Pooled>>();
  #closed = false;
  /** Connections made since the pool started; a metric and a test seam. */
  connectionsOpened = 0;

  constructor(
    dialer: HboneDialer,
    opts: { maxStreamsPerConnection?: number; idleTimeoutMs?: number; h2?: Partial<H2Options> } = {},
  ) {
    this.#dialer = dialer;
    this.#maxStreams = opts.maxStreamsPerConnection ?? POOL_MAX_STREAMS_PER_CONNECTION;
    this.#idleMs = opts.idleTimeoutMs ?? POOL_UNUSED_RELEASE_TIMEOUT_MS;
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
    let response: HeaderField[];
    try {
      response = await stream.response;
    } catch (error) {
      throw new HboneError(
        "STREAM",
        `the tunnel to ${authority} via ${key.dst.ip} failed: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    } finally {
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
    for (;;) {
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
    } catch (error) {
      raw.destroy();
      throw new HboneError("TLS", `no certificate for ${key.srcIdentity}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    raw.setNoDelay(true);
    const socket = tls.connect(clientTlsOptions(creds, raw));
    try {
      await handshake(socket, where);
      const peer = peerIdentity(socket, this.#dialer.trustDomain, "server").toString();
      if (!key.dstIdentities.includes(peer)) {
        throw new HboneError("IDENTITY", `${where} presented ${peer}, expected ${key.dstIdentities.join(" or ")}`);
      }
    } catch (error) {
      socket.destroy();
      raw.destroy();
      if (error instanceof HboneError) throw error;
      throw new HboneError("TLS", `TLS with ${where} failed: ${(error as Error).message}`, { cause: error });
    }
    const conn = new H2Connection(socket, { role: "client", ...this.#h2 });
    const pooled: Pooled = { conn };
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
