/**
 * One HTTP/2 stream as a Node duplex: what the peer sends arrives as readable bytes, what is written goes out as
 * DATA frames, `end()` sends END_STREAM, so a stream pipes to and from a TCP socket like any other.
 *
 * Flow control is what bounds memory. Bytes the consumer has not read yet are not credited back to the peer, so a
 * consumer that stops reading stops the peer after one stream window (and the connection window bounds all streams
 * together). A write completes only once its bytes are framed onto the connection, so a producer that writes faster
 * than the peer's windows or the socket allow is held back by the duplex's own high-water mark.
 *
 * An error on a stream never throws into the event loop: the stream carries a listener of its own, and consumers
 * see the failure through `close`, `errored` and `resetCode`. A proxy must not die because one peer misbehaved.
 */

import { Duplex } from "node:stream";
import type { HeaderField } from "./fields.ts";

/** What a stream needs from its connection; implemented by H2Connection. */
export interface StreamHost {
  flush(stream: H2Stream): void;
  credit(stream: H2Stream): void;
  streamDestroyed(stream: H2Stream, error: Error | null): void;
  sendHeaders(stream: H2Stream, fields: HeaderField[], endStream: boolean): void;
}

export class H2Stream extends Duplex {
  /** Request headers: received on a server stream, sent on a client stream. */
  readonly requestHeaders: HeaderField[];
  /** The final response headers, once sent (server) or received (client). */
  responseHeaders: HeaderField[] | undefined;
  /** Trailers received from the peer. */
  trailers: HeaderField[] | undefined;
  /** The RST_STREAM code, when the stream was reset by either side. */
  resetCode: number | undefined;
  /** Client streams: settles with the final response headers, or rejects when the stream ends without them. */
  readonly response: Promise<HeaderField[]>;
  readonly createdAt = performance.now();

  // Connection-owned state; not for consumers.
  sendWindow: number;
  recvWindow: number;
  recvUnacked = 0;
  pushedTotal = 0;
  creditedTotal = 0;
  headersSent = false;
  localEnded = false;
  remoteEnded = false;
  /** Closed on the wire (both END_STREAMs, or a reset); the duplex may still hold unread bytes. */
  wireClosed = false;
  pendingChunk: Uint8Array | null = null;
  pendingCallback: ((error?: Error | null) => void) | null = null;
  finalCallback: ((error?: Error | null) => void) | null = null;
  trailersToSend: HeaderField[] | null = null;
  /** The peer's declared content-length, when it must be checked against the DATA received. */
  expectedLength: number | undefined;
  receivedLength = 0;

  /** The peer asked us to stop sending (RST_STREAM NO_ERROR after its response): writes are dropped. */
  #sendStopped = false;
  #resolveResponse!: (headers: HeaderField[]) => void;
  #rejectResponse!: (error: Error) => void;

  constructor(
    readonly id: number,
    private readonly host: StreamHost,
    requestHeaders: HeaderField[],
    sendWindow: number,
    recvWindow: number,
  ) {
    super({ allowHalfOpen: true, readableHighWaterMark: 64 * 1024, writableHighWaterMark: 64 * 1024 });
    this.requestHeaders = requestHeaders;
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
    this.response = new Promise((resolve, reject) => {
      this.#resolveResponse = resolve;
      this.#rejectResponse = reject;
    });
    this.response.catch(() => {});
    this.on("error", () => {});
  }

  /** Server: sends the response headers; with `endStream`, the response has no body. */
  respond(fields: HeaderField[], options: { endStream?: boolean } = {}) {
    if (this.headersSent) throw new Error(`BUG: stream ${this.id} already sent its headers`);
    this.host.sendHeaders(this, fields, options.endStream ?? false);
    this.responseHeaders = fields;
    if (options.endStream && !this.writableEnded) this.end();
  }

  /** Ends the stream with a trailer section instead of an empty DATA frame (gRPC status, for instance). */
  endWithTrailers(fields: HeaderField[]) {
    this.trailersToSend = fields;
    this.end();
  }

  /** Resets the stream with `code` (RST_STREAM) and destroys it. */
  reset(code: number) {
    this.resetCode ??= code;
    this.destroy();
  }

  /**
   * Connection: the peer reset the stream with NO_ERROR after its complete response (RFC 9113 §8.1), asking us to
   * stop sending. What is still written is dropped; the response stays readable to its end, then the stream closes.
   */
  stopSending() {
    this.#sendStopped = true;
    const pending = this.pendingCallback;
    this.pendingChunk = null;
    this.pendingCallback = null;
    pending?.();
    const final = this.finalCallback;
    this.finalCallback = null;
    final?.();
    if (this.readableEnded) this.destroy();
    else this.once("end", () => this.destroy());
  }

  /** Connection: the final response headers arrived. */
  gotResponse(fields: HeaderField[]) {
    this.responseHeaders = fields;
    this.#resolveResponse(fields);
  }

  /** Connection: the stream ended or failed; a pending response promise rejects. */
  failResponse(error: Error) {
    if (!this.responseHeaders) this.#rejectResponse(error);
  }

  /** Connection: bytes from a DATA frame. */
  receive(data: Uint8Array) {
    this.pushedTotal += data.byteLength;
    this.push(data);
  }

  /** Bytes handed to the consumer so far (pushed and no longer buffered). */
  get consumedTotal(): number {
    return this.pushedTotal - this.readableLength;
  }

  override _read() {
    this.host.credit(this);
  }

  override _write(chunk: Uint8Array, _encoding: string, callback: (error?: Error | null) => void) {
    if (this.#sendStopped) return callback();
    if (this.wireClosed) return callback(new Error(`stream ${this.id} is closed`));
    this.pendingChunk = chunk;
    this.pendingCallback = callback;
    this.host.flush(this);
  }

  override _final(callback: (error?: Error | null) => void) {
    if (this.localEnded || this.#sendStopped) return callback();
    if (this.wireClosed) return callback(new Error(`stream ${this.id} is closed`));
    this.finalCallback = callback;
    this.host.flush(this);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void) {
    this.host.streamDestroyed(this, error);
    // Errors are built only when someone will see them: a stack per closed stream is measurable under churn.
    if (!this.responseHeaders) this.failResponse(error ?? new Error(`stream ${this.id} closed before a response`));
    const pending = this.pendingCallback;
    this.pendingCallback = null;
    if (pending) pending(error ?? new Error(`stream ${this.id} closed`));
    callback(error);
  }
}
