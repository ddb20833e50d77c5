/**
 * The flood accounting of one HTTP/2 connection, at Envoy's default thresholds (security-and-reliability §3).
 * Each method records one event and returns what was exceeded, or null; the connection answers a non-null result
 * with GOAWAY ENHANCE_YOUR_CALM. Pure bookkeeping: no I/O, no timers, time passed in.
 *
 * - Rapid reset (CVE-2023-44487): streams the peer resets (or we refuse) before we answered, within a second of
 *   opening. The connection goes once they reach half of 500 closed streams, or half of all beyond that.
 * - Empty frames (DATA/HEADERS/CONTINUATION without payload or END_STREAM): more than 1 in a row.
 * - WINDOW_UPDATE: more than 5 + 2 × (streams + 10 × DATA frames we sent).
 * - PRIORITY: more than 100 × (1 + streams).
 * - Frames that demand a reply (PING, SETTINGS): more than 1,000 in 10 s.
 * - Control frames queued while the peer does not read: more than 1,000 (Envoy's max_outbound_control_frames).
 */

export const FLOOD_LIMITS = {
  prematureResetStreams: 500,
  prematureResetLifetimeMs: 1_000,
  consecutiveEmptyFrames: 1,
  priorityPerStream: 100,
  windowUpdatesPerDataFrame: 10,
  replyFramesPerWindow: 1_000,
  replyWindowMs: 10_000,
  queuedControlFrames: 1_000,
} as const;

export class FloodGuard {
  #streamsOpened = 0;
  #closedPeerStreams = 0;
  #prematureResets = 0;
  #consecutiveEmpty = 0;
  #windowUpdates = 0;
  #priorities = 0;
  #dataFramesSent = 0;
  #replyFrames = 0;
  #replyWindowStart: number;
  #queuedControl = 0;

  constructor(now: number) {
    this.#replyWindowStart = now;
  }

  streamOpened() {
    this.#streamsOpened++;
  }

  dataFrameSent() {
    this.#dataFramesSent++;
  }

  /** A stream the peer opened was closed; `premature` when reset before our answer, within the lifetime. */
  peerStreamClosed(premature: boolean): string | null {
    this.#closedPeerStreams++;
    if (premature) this.#prematureResets++;
    const total = FLOOD_LIMITS.prematureResetStreams;
    const tooMany = this.#closedPeerStreams < total
      ? this.#prematureResets * 2 >= total
      : this.#prematureResets * 2 >= this.#closedPeerStreams;
    return tooMany ? `${this.#prematureResets} of ${this.#closedPeerStreams} streams reset early` : null;
  }

  /** A DATA, HEADERS or CONTINUATION frame; `empty` when it carried nothing and ended nothing. */
  frame(empty: boolean): string | null {
    if (!empty) {
      this.#consecutiveEmpty = 0;
      return null;
    }
    return ++this.#consecutiveEmpty > FLOOD_LIMITS.consecutiveEmptyFrames ? "empty frames" : null;
  }

  windowUpdate(): string | null {
    const limit = 5 + 2 * (this.#streamsOpened + FLOOD_LIMITS.windowUpdatesPerDataFrame * this.#dataFramesSent);
    return ++this.#windowUpdates > limit ? "WINDOW_UPDATE frames" : null;
  }

  priority(): string | null {
    return ++this.#priorities > FLOOD_LIMITS.priorityPerStream * (1 + this.#streamsOpened) ? "PRIORITY frames" : null;
  }

  /** A frame we must answer (PING, SETTINGS). */
  replyDemanded(what: string, now: number): string | null {
    if (now - this.#replyWindowStart > FLOOD_LIMITS.replyWindowMs) {
      this.#replyWindowStart = now;
      this.#replyFrames = 0;
    }
    return ++this.#replyFrames > FLOOD_LIMITS.replyFramesPerWindow ? `${what} frames` : null;
  }

  /** A control frame written; `blocked` when the socket is not draining. */
  controlQueued(blocked: boolean): string | null {
    if (!blocked) return null;
    return ++this.#queuedControl > FLOOD_LIMITS.queuedControlFrames
      ? "control frames queued while the peer does not read"
      : null;
  }

  drained() {
    this.#queuedControl = 0;
  }
}
