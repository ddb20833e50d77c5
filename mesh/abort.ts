/**
 * Waiting that an abort signal cuts short: the reconnect backoffs of the stream clients and the handoff client,
 * the waypoint's retry backoff and its wait for a certificate. One piece, so that none of them leaks a timer
 * or a listener when the signal fires first.
 *
 * @module
 */

/** Resolves after `ms`, or as soon as `signal` aborts (at once when it already has); never rejects. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
