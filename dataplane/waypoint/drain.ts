/**
 * How the waypoint stops without failing a request, as Envoy's drain sequence does for Istio's waypoint
 * (`ConnectionManagerImpl::startDrainSequence`): on SIGTERM the HBONE listener closes and each HBONE connection is
 * told to go away (`HboneServer.drain()`), so clients open their next tunnels elsewhere, while what is in flight
 * runs on:
 *
 * - HTTP/2 clients get the graceful GOAWAY of RFC 9113 §6.8: first with stream id 2^31-1 (streams already on their
 *   way are still served) and a PING, then, once the PING is answered (a round trip) or after the grace for a
 *   client that never answers, with the last stream id seen; their open streams complete, and the connection
 *   ends with the last of them.
 * - HTTP/1.1 keep-alive responses carry `Connection: close` (RFC 9112 §9.6) and the connection closes after them,
 *   so the client reconnects, elsewhere; a connection idle between requests is closed after
 *   {@link GOAWAY_GRACE_MS}, time for a request already on its way to arrive.
 * - The process exits once no request is in flight, or at the drain deadline (`--drain-deadline`, 30 s as
 *   ztunnel's and Kubernetes' default grace period), whichever comes first.
 *
 * @module
 */

import type { H2Connection } from "../h2/connection.ts";
import { GOAWAY_GRACE_MS } from "../hbone/server.ts";

export { GOAWAY_GRACE_MS };

/** As ztunnel's drain deadline: Kubernetes' default terminationGracePeriodSeconds. */
export const DEFAULT_DRAIN_DEADLINE_MS = 30_000;

/** What a drain ended on. */
export type DrainEnd = "drained" | "deadline";

/** The waypoint's drain: requests in flight, the HTTP/2 connections of clients, and the HTTP/1.1 ones idle. */
export class WaypointDrain {
  #draining = false;
  #graceOver = false;
  #inflight = 0;
  #http2 = new Set<H2Connection>();
  #idle = new Set<() => void>();
  #changed: (() => void) | undefined;
  #graceMs: number;

  constructor(opts: { graceMs?: number } = {}) {
    this.#graceMs = opts.graceMs ?? GOAWAY_GRACE_MS;
  }

  /** True once the drain has begun: responses close their HTTP/1.1 connections. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Requests being served now. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Counts a request in flight until the returned function is called (once). */
  request(): () => void {
    this.#inflight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#inflight--;
      this.#changed?.();
    };
  }

  /** A client's HTTP/2 connection: told to go away when the drain begins (at once, when it has begun). */
  http2(conn: H2Connection): void {
    if (this.#draining) return this.#goAway(conn);
    this.#http2.add(conn);
    conn.closed.then(() => this.#http2.delete(conn));
  }

  /**
   * An HTTP/1.1 connection waiting for its next request: `close` is called when the drain's grace is over (at once,
   * when it is over already), until the returned function says a request came.
   */
  idle(close: () => void): () => void {
    if (this.#graceOver) {
      close();
      return () => {};
    }
    this.#idle.add(close);
    return () => this.#idle.delete(close);
  }

  /** Begins the drain. */
  begin(): void {
    if (this.#draining) return;
    this.#draining = true;
    for (const conn of this.#http2) this.#goAway(conn);
    this.#http2.clear();
    const timer = setTimeout(() => {
      this.#graceOver = true;
      for (const close of this.#idle) close();
      this.#idle.clear();
      this.#changed?.();
    }, this.#graceMs);
    Deno.unrefTimer(timer);
  }

  /**
   * Resolves once nothing is in flight and the grace is over (requests already on their way have arrived), or
   * once `deadlineMs` passed since it was called, or `cut` aborts.
   */
  wait(deadlineMs: number, cut?: AbortSignal): Promise<DrainEnd> {
    return new Promise((resolve) => {
      const finish = (end: DrainEnd) => {
        clearTimeout(timer);
        cut?.removeEventListener("abort", onCut);
        this.#changed = undefined;
        resolve(end);
      };
      const onCut = () => finish("deadline");
      const timer = setTimeout(() => finish("deadline"), deadlineMs);
      cut?.addEventListener("abort", onCut, { once: true });
      this.#changed = () => {
        if (this.#inflight === 0 && this.#graceOver) finish("drained");
      };
      if (cut?.aborted) return onCut();
      this.#changed();
    });
  }

  #goAway(conn: H2Connection) {
    // The final GOAWAY once the client answered the PING sent with the first: every stream it opened is here by
    // then, so none is refused. A client that never answers gets it after the grace all the same, as Envoy's drain
    // timer sends it: else it could open streams under the first GOAWAY, and be served, until the deadline.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<void>((resolve) => timer = setTimeout(resolve, this.#graceMs));
    Deno.unrefTimer(timer!);
    void Promise.race([conn.announceShutdown(), grace]).then(() => {
      clearTimeout(timer);
      void conn.close();
    });
  }
}
