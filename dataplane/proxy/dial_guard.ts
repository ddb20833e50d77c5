/**
 * How much one peer identity may make ztunnel dial its pods' apps, across all of that identity's HBONE
 * connections. Pure bookkeeping, node-wide, time passed in; `inbound.ts` asks before each dial and reports after.
 *
 * Why: every CONNECT that passes the inbound checks costs a dial to the app (a TCP handshake the app accepts), and
 * on a local network the dial completes before the client's RST_STREAM on the same read is even looked at. The
 * codec's rapid-reset limit is per connection (250 early resets before GOAWAY), so 20 connections of one peer
 * made 4,800 dials for 4,800 streams they reset unanswered. Upstream ztunnel is shielded by the h2 crate, which
 * hands a stream to the application only when it accepts it and drops (and counts, `max_pending_accept_reset_streams`)
 * those reset before that; our codec hands streams over as they arrive, so the bound lives here, per identity:
 *
 * - At most 1,024 dials pending for one identity at once; beyond, 503 without dialling. This bounds a burst: a
 *   read of many HEADERS + RST_STREAM pairs starts its dials before any of the resets is seen. (Envoy's circuit
 *   breakers refuse the same way, `max_pending_requests`, flag UO, and 1,024 is their default.) It is no lower
 *   because a legitimate identity meets it too: after ztunnel's event loop stalls (a busy node, a successor
 *   starting), the streams that queued meanwhile are all admitted at once; at 128, 10-34 of 200 new connections
 *   a second from one client were refused after such a stall.
 * - Dials whose client was gone by the time the dial finished (reset, or the connection closed) are "cancelled".
 *   Once an identity's cancelled dials in a 10 s window reach 100 and at least half of its dials, its new streams
 *   are refused (503, no dial) for the rest of the window: Envoy's premature-reset rule (half of the streams, from
 *   a floor), applied to the identity instead of the connection. A client whose peers cancel now and then never
 *   gets near half; one that cancels everything gets 100 dials plus one burst per window.
 *
 * Identities are authenticated (mTLS, our trust domain), so the table is as large as the mesh; idle entries go.
 */

export const DIAL_LIMITS = {
  pendingPerIdentity: 1024,
  cancelledPerWindow: 100,
  windowMs: 10_000,
} as const;

interface PeerDials {
  pending: number;
  /** Dials started and cancelled in the window that began at `windowStart`. */
  dials: number;
  cancelled: number;
  windowStart: number;
}

/** Dials per peer identity: {@link admit} before each, {@link settled} after it. */
export class DialGuard {
  #peers = new Map<string, PeerDials>();
  readonly #pendingLimit: number;
  readonly #cancelledLimit: number;

  /**
   * `threads`: how many threads of the proxy keep a guard each (dataplane/proxy/workers.ts). Each takes its share
   * of {@link DIAL_LIMITS}, so an identity whose connections land on every thread still meets the node-wide bound.
   */
  constructor(threads = 1) {
    this.#pendingLimit = Math.ceil(DIAL_LIMITS.pendingPerIdentity / threads);
    this.#cancelledLimit = Math.ceil(DIAL_LIMITS.cancelledPerWindow / threads);
  }

  /** Identities with dials pending or counted in their window. */
  get size(): number {
    return this.#peers.size;
  }

  /** Before dialling for `identity`: null to go ahead (a pending slot is taken), or why it must not. */
  admit(identity: string, now: number): string | null {
    let peer = this.#peers.get(identity);
    if (!peer) {
      if (this.#peers.size >= 1024) this.#sweep(now);
      peer = { pending: 0, dials: 0, cancelled: 0, windowStart: now };
      this.#peers.set(identity, peer);
    }
    if (now - peer.windowStart >= DIAL_LIMITS.windowMs) {
      peer.windowStart = now;
      peer.dials = peer.cancelled = 0;
    }
    if (peer.cancelled >= this.#cancelledLimit && peer.cancelled * 2 >= peer.dials) {
      const seconds = DIAL_LIMITS.windowMs / 1000;
      return `${peer.cancelled} of ${peer.dials} dials in ${seconds} s cancelled by the client before an answer`;
    }
    if (peer.pending >= this.#pendingLimit) return `${peer.pending} dials pending`;
    peer.pending++;
    peer.dials++;
    return null;
  }

  /** A dial {@link admit}ted for `identity` finished; `cancelled` when its client was gone by then. */
  settled(identity: string, cancelled: boolean, now: number) {
    const peer = this.#peers.get(identity);
    if (!peer || peer.pending === 0) throw new Error(`BUG: a dial settled for ${identity} that was not admitted`);
    peer.pending--;
    if (cancelled) peer.cancelled++;
    if (peer.pending === 0 && now - peer.windowStart >= DIAL_LIMITS.windowMs) this.#peers.delete(identity);
  }

  /** Forgets identities with nothing pending whose window is over: they start afresh anyway. */
  #sweep(now: number) {
    for (const [identity, peer] of this.#peers) {
      if (peer.pending === 0 && now - peer.windowStart >= DIAL_LIMITS.windowMs) this.#peers.delete(identity);
    }
  }
}
