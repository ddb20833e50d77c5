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
 * - CONTINUATION frames: more than 8 in one header block (nghttp2's `max_continuations`, CVE-2024-28182). Each
 *   fragment is kept until END_HEADERS, a view object of ~100 bytes however small the fragment: 60,000 one-byte
 *   CONTINUATIONs (600 KB sent, under the block's byte limit) held 6.9 MB of heap until the PING timeout. A block at
 *   our 64 KiB limit in 16 KiB frames needs 4; we advertise 1 MiB frames, so a peer need not split it at all.
 * - SETTINGS entries: more than 32 in one frame. There are six settings (RFC 9113 §6.5.2) and a few extensions,
 *   but a 1 MiB frame holds 174,762 entries, each applied in turn. nghttp2 refuses more than 32 the same way
 *   (`nghttp2_option_set_max_settings`, default 32, ENHANCE_YOUR_CALM). `frame.ts` checks this before parsing.
 * - Frames queued to a peer that does not read them, counted from our write until the socket has taken the bytes
 *   (its write callback; the kernel's buffers are the peer's to drain, ours is what grows): more than 10,000 of
 *   any kind (Envoy's max_outbound_frames), or more than 1,000 control frames, i.e. RST_STREAM and the SETTINGS
 *   and PING acks a peer provokes (Envoy's max_outbound_control_frames). Each queued write costs a few hundred
 *   bytes however small the frame, so a peer provoking 431s or resets without reading grew us by hundreds of MB.
 */

export const FLOOD_LIMITS = {
  prematureResetStreams: 500,
  prematureResetLifetimeMs: 1_000,
  consecutiveEmptyFrames: 1,
  priorityPerStream: 100,
  windowUpdatesPerDataFrame: 10,
  replyFramesPerWindow: 1_000,
  replyWindowMs: 10_000,
  settingsPerFrame: 32,
  continuationsPerBlock: 8,
  queuedFrames: 10_000,
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
  #queued = 0;
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

  /** Frames written and not yet taken by the socket. */
  get queued(): number {
    return this.#queued;
  }

  /** A frame written to the socket; `control` for RST_STREAM and the acks a peer provokes. */
  frameQueued(control: boolean): string | null {
    this.#queued++;
    if (control) this.#queuedControl++;
    if (this.#queued > FLOOD_LIMITS.queuedFrames) return `${this.#queued} frames queued to a peer that does not read`;
    return this.#queuedControl > FLOOD_LIMITS.queuedControlFrames
      ? `${this.#queuedControl} control frames queued to a peer that does not read`
      : null;
  }

  /** The socket took a frame counted by {@link frameQueued}. */
  frameSent(control: boolean) {
    this.#queued--;
    if (control) this.#queuedControl--;
  }
}
