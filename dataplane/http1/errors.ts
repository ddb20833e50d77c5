/**
 * The one error class of the HTTP/1.1 codec. `status` is the response a server should answer with (400, 408, 413,
 * 414, 431, 501, 505), or 502 for anything that went wrong reading an upstream response; `code` says what kind of
 * failure it was, for logs, metrics and retry decisions.
 */

export type Http1ErrorCode =
  /** The bytes are not HTTP/1.1: a bad start line, field line, chunk or framing header. */
  | "MALFORMED"
  /** A head, start line, field count or trailer section beyond its limit. */
  | "TOO_LARGE"
  /** Well-formed but not supported: a transfer coding other than chunked, an HTTP version other than 1.0/1.1. */
  | "UNSUPPORTED"
  /** A head did not complete within the idle timeout. */
  | "TIMEOUT"
  /** The peer closed or reset the connection before a message was complete. */
  | "CLOSED"
  /** A body written did not match its framing (more or fewer bytes than Content-Length, body on a bodiless message). */
  | "LENGTH_MISMATCH";

/** A message the codec refuses, or a connection that failed before a message was complete. */
export class Http1Error extends Error {
  constructor(
    readonly status: number,
    readonly code: Http1ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "Http1Error";
  }
}

/** A 400 for bytes that are not HTTP/1.1. */
export const malformed = (message: string): Http1Error => new Http1Error(400, "MALFORMED", message);

/** Re-labels a failure reading an upstream response: whatever broke, the downstream answer is 502. */
export function upstreamError(error: unknown): Http1Error {
  if (error instanceof Http1Error) {
    if (error.status === 502) return error;
    return new Http1Error(502, error.code, `upstream response: ${error.message}`, { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new Http1Error(502, "CLOSED", `upstream connection failed: ${message}`, { cause: error });
}
