/**
 * Copies bytes both ways between two duplexes (a TCP socket, an HBONE stream) until both directions are done, as
 * ztunnel's `copy.rs` does: the directions run independently, an end on one side becomes a write-shutdown on the
 * other (`shutdown(SHUT_WR)` on TCP, END_STREAM on HTTP/2), and an error on either side ends both. Backpressure is
 * `pipe()`'s: a slow reader pauses the other side's source, so memory stays within the streams' buffers and the
 * HTTP/2 windows.
 *
 * TCP sockets given here must be made with `allowHalfOpen: true`, or Node would close the write side as soon as
 * the read side ends and half-close would be lost.
 */

import type { Duplex } from "node:stream";

export interface RelayResult {
  /** Bytes from `a` to `b` (for a proxy's downstream socket: received from the client). */
  aToB: number;
  /** Bytes from `b` to `a`. */
  bToA: number;
  /** The first error on either side, if any (a reset rather than an orderly end). */
  error?: Error;
}

/** Relays until both sides are closed; `stop()` ends it early (a policy change, a removed pod). */
export function relay(a: Duplex, b: Duplex): { done: Promise<RelayResult>; stop(reason: Error): void } {
  const result: RelayResult = { aToB: 0, bToA: 0 };
  // TCP_NODELAY, as upstream sets on its sockets: a proxy must not add Nagle's delay to small writes.
  for (const s of [a, b]) (s as Duplex & { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
  a.on("data", (chunk: Uint8Array) => result.aToB += chunk.byteLength);
  b.on("data", (chunk: Uint8Array) => result.bToA += chunk.byteLength);
  const fail = (error: Error) => {
    result.error ??= error;
    a.destroy();
    b.destroy();
  };
  a.on("error", fail);
  b.on("error", fail);
  const closed = (s: Duplex) => s.destroyed && s.closed ? Promise.resolve() : new Promise((r) => s.once("close", r));
  a.pipe(b);
  b.pipe(a);
  const done = Promise.all([closed(a), closed(b)]).then(() => result);
  // If one side closes without ending (a reset), the other must not wait forever for its peer.
  a.once("close", () => !a.readableEnded && b.destroy());
  b.once("close", () => !b.readableEnded && a.destroy());
  // A side already gone (a client that reset while its upstream was dialled) emits no more `close`: without this
  // the other side, a fresh upstream connection, was held open until its peer hung up, which may be never.
  if (a.destroyed) b.destroy();
  else if (b.destroyed) a.destroy();
  return { done, stop: fail };
}
