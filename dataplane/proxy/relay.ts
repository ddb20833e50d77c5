/**
 * Copies bytes both ways between two duplexes (a TCP socket, an HBONE stream) until both directions are done, as
 * ztunnel's `copy.rs` does: the directions run independently, an end on one side becomes a write-shutdown on the
 * other (`shutdown(SHUT_WR)` on TCP, END_STREAM on HTTP/2), and an error on either side ends both. Backpressure is
 * as with `pipe()`: a slow reader pauses the other side's source, so memory stays within the streams' buffers and
 * the HTTP/2 windows.
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
  const fail = (error: Error) => {
    result.error ??= error;
    a.destroy();
    b.destroy();
  };
  a.on("error", fail);
  b.on("error", fail);
  const closed = (s: Duplex) => s.destroyed && s.closed ? Promise.resolve() : new Promise((r) => s.once("close", r));
  pump(a, b, (n) => result.aToB += n);
  pump(b, a, (n) => result.bToA += n);
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

/**
 * `src.pipe(dst)` for a relay's one direction, counting as it goes: a write the destination cannot take yet
 * pauses the source until `drain`, and the source's end ends the destination (a half-close). Not `pipe()`: the
 * relay already ends both sides on an error or a close, which is most of what `pipe()` adds, and its nine
 * closures and listeners per direction were held for the whole life of every idle connection (issue 18).
 */
function pump(src: Duplex, dst: Duplex, count: (bytes: number) => void): void {
  let waiting = false; // paused here, for `drain`: only this resumes the source, as pipe() does
  src.on("data", (chunk: Uint8Array) => {
    count(chunk.byteLength);
    if (!dst.write(chunk)) {
      waiting = true;
      src.pause();
    }
  });
  dst.on("drain", () => {
    if (!waiting) return;
    waiting = false;
    src.resume();
  });
  src.once("end", () => dst.end());
  // As pipe() starts: a source paused before the relay (a handshake read, say) flows now, unless the destination
  // is already full. A `data` listener alone does not resume a stream paused with pause().
  if (dst.writableNeedDrain) {
    waiting = true;
    src.pause();
  } else src.resume();
}
