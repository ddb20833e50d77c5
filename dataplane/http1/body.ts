/**
 * The two body streams an Http1Connection hands out: `Http1Body`, a Readable of the decoded bytes of one incoming
 * body, and `Http1BodyWriter`, a Writable that frames one outgoing body (Content-Length, chunked or until close).
 *
 * Both leave the I/O to the connection through a small interface, so that the connection stays the only owner of
 * the duplex. Neither throws into the event loop: each carries an `error` listener of its own, and a consumer sees
 * failures through `pipeline()`, `errored` or its own listener.
 */

import { Readable, Writable } from "node:stream";
import { checkTrailers, encodeChunk, encodeLastChunk } from "./chunked.ts";
import { Http1Error } from "./errors.ts";
import type { Framing } from "./framing.ts";
import type { HeaderList } from "./head.ts";

/** Body streams buffer at most this much on their side of the connection. */
export const BODY_HIGH_WATER_MARK = 64 * 1024;

/** Implemented by Http1Connection. */
export interface BodySource {
  /** The consumer wants more bytes. */
  pull(body: Http1Body): void;
  /** The body was destroyed, before its end (error or not) or after it. */
  destroyed(body: Http1Body): void;
}

/** The decoded bytes of one incoming body; `trailers` holds the trailer section of a chunked body after `end`. */
export class Http1Body extends Readable {
  /** Trailer fields of a chunked body, set before `end` is emitted; empty otherwise. */
  trailers: HeaderList = [];

  constructor(private readonly source: BodySource | null, readonly framing: Framing) {
    super({ highWaterMark: BODY_HIGH_WATER_MARK });
    this.on("error", () => {});
    if (source === null) this.push(null);
  }

  override _read() {
    this.source?.pull(this);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void) {
    this.source?.destroyed(this);
    callback(error);
  }
}

/** Implemented by Http1Connection. */
export interface BodySink {
  /** The head written by writeHead and not sent yet, so that it leaves with the first body bytes. */
  takeHead(): Uint8Array | null;
  /** Writes bytes to the duplex; `callback` runs once the duplex can take more. */
  send(bytes: Uint8Array, callback?: (error?: Error | null) => void): void;
  /** Ends the duplex's writable side (a body delimited by closing). */
  endOutput(): void;
  /** The body was sent completely. */
  completed(writer: Http1BodyWriter): void;
  /** The body cannot be completed: the peer would mis-frame what follows, so the connection must go. */
  aborted(writer: Http1BodyWriter, error: Error): void;
}

/** Heads and chunks up to this size are copied into one write with the head; larger ones are written apart. */
const MERGE_LIMIT = 16 * 1024;

/**
 * Frames one outgoing body. Content-Length is enforced exactly: writing past it, or ending short of it, fails the
 * writer and destroys the connection. `finish(trailers)` ends a chunked body with a trailer section.
 */
export class Http1BodyWriter extends Writable {
  #trailers: HeaderList = [];
  #written = 0;
  #complete = false;

  constructor(private readonly sink: BodySink, readonly framing: Framing) {
    super({ highWaterMark: BODY_HIGH_WATER_MARK });
    this.on("error", () => {});
  }

  /** Body bytes accepted so far (before chunk framing). */
  get bytesWritten(): number {
    return this.#written;
  }

  /** Ends the body; `trailers` are sent after the last chunk (chunked framing only). */
  finish(trailers: HeaderList = []): this {
    if (trailers.length > 0) {
      if (this.framing.kind !== "chunked") throw new Error("BUG: trailers need chunked framing");
      checkTrailers(trailers);
      this.#trailers = trailers;
    }
    this.end();
    return this;
  }

  override _write(chunk: Uint8Array, _encoding: string, callback: (error?: Error | null) => void) {
    if (chunk.length === 0) return callback(); // an empty chunk would read as the last one
    const framing = this.framing;
    if (framing.kind === "none") return callback(this.#mismatch("body bytes written to a message without a body"));
    if (framing.kind === "length" && this.#written + chunk.length > framing.length) {
      return callback(this.#mismatch(`body longer than its Content-Length ${framing.length}`));
    }
    this.#written += chunk.length;
    const head = this.sink.takeHead();
    if (framing.kind === "chunked") return this.sink.send(encodeChunk(chunk, head), callback);
    if (head === null) return this.sink.send(chunk, callback);
    if (chunk.length > MERGE_LIMIT) {
      this.sink.send(head);
      return this.sink.send(chunk, callback);
    }
    const merged = new Uint8Array(head.length + chunk.length);
    merged.set(head, 0);
    merged.set(chunk, head.length);
    this.sink.send(merged, callback);
  }

  override _final(callback: (error?: Error | null) => void) {
    const framing = this.framing;
    if (framing.kind === "length" && this.#written !== framing.length) {
      return callback(this.#mismatch(`body ended after ${this.#written} of ${framing.length} bytes`));
    }
    const head = this.sink.takeHead();
    const done = (error?: Error | null) => {
      if (!error) {
        this.#complete = true;
        this.sink.completed(this);
      }
      callback(error);
    };
    if (framing.kind === "chunked") return this.sink.send(encodeLastChunk(this.#trailers, head), done);
    if (head !== null) this.sink.send(head);
    if (framing.kind === "close") this.sink.endOutput();
    done();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void) {
    if (!this.#complete) this.sink.aborted(this, error ?? new Error("body writer destroyed before the body ended"));
    callback(error);
  }

  #mismatch(message: string): Http1Error {
    return new Http1Error(500, "LENGTH_MISMATCH", message);
  }
}
