/**
 * One HTTP/1.1 connection over any Node duplex: a TCP socket, or an `H2Stream` carrying a CONNECT tunnel. As a
 * server it reads requests and writes responses; as a client it writes requests and reads responses. Messages are
 * sequential: keep-alive and pipelined requests work, and bytes read past one message stay for the next.
 *
 * Reading is pull-based, which is what bounds memory. The duplex flows only while someone waits for a head or reads
 * a body; when a body's consumer stops reading, the duplex is paused, so a TCP peer meets a full receive window and
 * an HTTP/2 peer meets an exhausted stream window. Writing follows the duplex's own backpressure: a body writer's
 * write completes when the duplex can take more.
 *
 * Timeouts: `readRequest()` waits at most `idleTimeoutMs` (60 s) for a complete head, then resolves null if no byte
 * of a request came (an idle keep-alive connection; close it) or fails with 408 if a head started (slowloris).
 * Nothing else has a timeout here: a proxy bounds upstream responses and bodies with its route timeouts, by
 * calling `destroy()`.
 *
 * Ownership: the connection never ends or destroys the duplex on its own except when a body writer fails (the peer
 * would mis-frame what follows) and in `close()`/`destroy()`. After a parse error the connection refuses further
 * reads; answer with `errorResponse(error.status)` (or let `sendError` do it) and close.
 */

import type { Duplex } from "node:stream";
import { type BodySink, type BodySource, Http1Body, Http1BodyWriter } from "./body.ts";
import { ReceiveBuffer } from "./buffer.ts";
import { ChunkedDecoder } from "./chunked.ts";
import { Http1Error, upstreamError } from "./errors.ts";
import { errorResponse, type Framing, hasBody, NO_BODY, requestFraming, responseFraming } from "./framing.ts";
import {
  DEFAULT_LIMITS,
  encodeHead,
  type HeadLimits,
  latin1,
  parseRequestHead,
  parseResponseHead,
  type RequestHead,
  type ResponseHead,
  SectionScanner,
} from "./head.ts";

/** Options of an Http1Connection; only `role` is required. */
export interface Http1ConnectionOptions {
  role: "server" | "client";
  /** Server: how long `readRequest()` waits for a complete request head; 0 waits forever. Default 60 s. */
  idleTimeoutMs?: number;
  /** How long `close()` keeps reading after ending its side, before destroying the duplex. Default 1 s. */
  lingerMs?: number;
  /** Bytes already read from the duplex (after protocol sniffing, say); parsed before anything it delivers. */
  initial?: Uint8Array;
  limits?: Partial<HeadLimits>;
  /**
   * Largest body accepted (decoded bytes); none by default, bodies are streamed. Beyond it 413 for requests (at
   * `readRequest()` for a Content-Length, from the body stream for a chunked body), 502 for responses.
   */
  maxBodyBytes?: number;
}

/** Options of `readResponse()`. */
export interface ReadResponseOptions {
  /** Called with each interim (1xx) response other than 101, which `readResponse()` otherwise skips. */
  onInterim?: (head: ResponseHead) => void;
}

/** State of the body being read. */
interface Reading {
  body: Http1Body;
  framing: Framing;
  remaining: number;
  /** Decoded bytes so far, against `maxBodyBytes`. */
  received: number;
  decoder: ChunkedDecoder | null;
}

/** One HTTP/1.1 connection over a duplex, in the server or the client role (see the module comment). */
export class Http1Connection {
  readonly role: "server" | "client";
  readonly socket: Duplex;
  readonly #idleTimeoutMs: number;
  readonly #lingerMs: number;
  readonly #limits: HeadLimits;
  readonly #maxBodyBytes: number;

  /** Bytes read from the duplex and not consumed yet. */
  readonly #received = new ReceiveBuffer();
  #eof = false;
  #failure: Error | null = null;
  #wake: (() => void) | null = null;
  #reading: Reading | null = null;
  /** Framing of the last head read, while its body has not been read to the end. */
  #unread: Framing | null = null;
  /** Why no further message can be read, once one cannot. */
  #poisoned: string | null = null;
  #pendingHead: Uint8Array | null = null;
  #writer: Http1BodyWriter | null = null;
  #detached = false;
  #discarding = false;
  #closed: Promise<void> | null = null;
  /** Server: when the head being read must be complete (`performance.now()`); 0 while no head is awaited. */
  #headDeadline = 0;
  #headTimedOut = false;
  /**
   * One idle timer per connection, not one armed and cleared for every request head (a per-request cost of the
   * waypoint, docs/performance.md): armed for the first head; when it fires before the current head's deadline
   * (the deadline moved on with each head) it is armed again for what is left; with no head awaited it lapses.
   */
  #headTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(socket: Duplex, options: Http1ConnectionOptions) {
    this.socket = socket;
    this.role = options.role;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 60_000;
    this.#lingerMs = options.lingerMs ?? 1_000;
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#maxBodyBytes = options.maxBodyBytes ?? Infinity;
    if (options.initial && options.initial.length > 0) this.#received.append(options.initial);
    // Paused before the data listener is attached, so that attaching it does not start the flow.
    socket.pause();
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
  }

  /**
   * Whether the connection can carry another message now: nothing failed or ended, the last body was read and
   * written to its end, nothing was refused, and (client) nothing arrived beyond the last response. A client pool
   * checks it (with `keepAlive()`) before reuse.
   */
  get reusable(): boolean {
    return this.#poisoned === null && this.#failure === null && !this.#eof && !this.#detached &&
      this.#closed === null && this.#unread === null && this.#writer === null && this.#pendingHead === null &&
      // A client that holds bytes past the last response (a backend that sent more than its framing said, or spoke
      // unasked) would hand them to the next request as its response: never reuse such a connection.
      (this.role === "server" || this.#received.length === 0);
  }

  /**
   * Server: the next request head, or null when the peer closed (or the idle timeout passed) before sending a byte
   * of one. Throws Http1Error for a request to refuse; its `status` is the answer. The body is read with
   * `readBody()`, and must be read to its end before the next `readRequest()`.
   */
  async readRequest(): Promise<RequestHead | null> {
    this.#checkCanRead("server");
    try {
      const text = await this.#readHead(true);
      if (text === null) return null;
      const head = parseRequestHead(text);
      const framing = requestFraming(head);
      if (framing.kind === "length" && framing.length > this.#maxBodyBytes) throw this.#bodyTooLarge();
      this.#unread = hasBody(framing) ? framing : null;
      return head;
    } catch (error) {
      this.#poison(error);
      throw error;
    }
  }

  /**
   * Client: the final response to a `requestMethod` request. Interim responses (1xx but 101) go to `onInterim`.
   * A 101 is returned as is: `detach()` then. Throws Http1Error with status 502 for anything that went wrong,
   * code CLOSED when the server closed before a byte of a response (a reused connection may have raced its close).
   */
  async readResponse(requestMethod: string, options: ReadResponseOptions = {}): Promise<ResponseHead> {
    this.#checkCanRead("client");
    try {
      for (;;) {
        const text = await this.#readHead(false);
        if (text === null) {
          throw new Http1Error(502, "CLOSED", "upstream closed the connection before sending a response");
        }
        const head = parseResponseHead(text);
        if (head.status < 200 && head.status !== 101) {
          options.onInterim?.(head);
          continue;
        }
        const framing = responseFraming(head, requestMethod);
        if (framing.kind === "length" && framing.length > this.#maxBodyBytes) throw this.#bodyTooLarge();
        this.#unread = hasBody(framing) ? framing : null;
        return head;
      }
    } catch (error) {
      this.#poison(error);
      throw upstreamError(error);
    }
  }

  /**
   * The body of the message whose head was read last, decoded (chunks unwrapped, trailers in `body.trailers`), as
   * a Readable with backpressure. `framing` defaults to the one the head announced. A body abandoned before its
   * end (destroyed) leaves the connection unusable for further messages.
   */
  readBody(framing: Framing = this.#unread ?? NO_BODY): Http1Body {
    if (this.#reading) throw new Error("BUG: the previous body is still being read");
    if (!hasBody(framing)) {
      this.#unread = null;
      return new Http1Body(null, framing);
    }
    if (framing.kind === "close" && this.role === "server") {
      throw new Error("BUG: a request body cannot run until close");
    }
    const body = new Http1Body(this.#source, framing);
    this.#reading = {
      body,
      framing,
      remaining: framing.kind === "length" ? framing.length : 0,
      received: 0,
      decoder: framing.kind === "chunked" ? new ChunkedDecoder(this.#limits) : null,
    };
    this.#unread = framing;
    return body;
  }

  /**
   * Writes a request (client) or response (server) head. For `length` and `chunked` framings the Content-Length
   * and Transfer-Encoding fields of `head` are replaced by the ones `framing` calls for; for `close` both are
   * dropped; for `none` the fields are written as given (a response to HEAD, or a 304, may carry the
   * Content-Length of the representation). Chunked framing needs an HTTP/1.1 peer; the caller checks its version.
   *
   * A head with a body is held until the first body bytes (or the end of the current microtask), so that a small
   * message leaves in one write. Interim responses (100 Continue) may precede the final one.
   */
  writeHead(head: RequestHead | ResponseHead, framing: Framing): void {
    if (("method" in head) !== (this.role === "client")) throw new Error(`BUG: a ${this.role} cannot write that head`);
    if (this.#writer) throw new Error("BUG: writeHead() while the previous body is being written");
    if (framing.kind === "close" && this.role === "client") {
      throw new Error("BUG: a request body cannot run until close");
    }
    let bytes: Uint8Array;
    if (framing.kind === "none") bytes = encodeHead(head, null, []);
    else if (framing.kind === "length") {
      bytes = encodeHead(head, isFramingField, [["content-length", String(framing.length)]]);
    } else if (framing.kind === "chunked") bytes = encodeHead(head, isFramingField, [["transfer-encoding", "chunked"]]);
    else bytes = encodeHead(head, isFramingField, []);
    this.#flushHead();
    if (!hasBody(framing)) return this.#send(bytes);
    this.#pendingHead = bytes;
    queueMicrotask(() => this.#flushHead());
  }

  /**
   * A Writable for the body of the head just written, framed by `framing` (the same as given to `writeHead`).
   * Its writes complete with the duplex's backpressure; `finish(trailers)` or `end()` completes the message.
   */
  bodyWriter(framing: Framing): Http1BodyWriter {
    if (this.#writer) throw new Error("BUG: the previous body is still being written");
    const writer = new Http1BodyWriter(this.#sink, framing);
    this.#writer = writer;
    return writer;
  }

  /** Server: writes `errorResponse(status)` and closes the connection. */
  sendError(status: number): Promise<void> {
    this.#flushHead();
    this.#send(errorResponse(status));
    return this.close();
  }

  /**
   * Hands the duplex back for an upgrade (after a 101) or a CONNECT tunnel (after a 2xx): `head` holds the bytes
   * already read past the last head, which the caller must relay first. The duplex is paused; the connection's
   * listeners are removed but for its `error` listener (which only records the failure), so a failure never
   * throws into the event loop. If the
   * peer already ended its side, `socket.readableEnded` says so.
   */
  detach(): { socket: Duplex; head: Uint8Array } {
    if (this.#reading || this.#writer) throw new Error("BUG: detach() while a body is being read or written");
    if (this.#detached) throw new Error("BUG: detach() twice");
    this.#stopHeadTimer();
    this.#flushHead();
    this.#detached = true;
    const socket = this.socket;
    socket.off("data", this.#onData);
    socket.off("end", this.#onEnd);
    socket.off("close", this.#onClose);
    socket.pause();
    return { socket, head: this.#received.clear() };
  }

  /**
   * Ends the connection gracefully (RFC 9112 §9.6): sends what is pending, ends the writable side, then reads and
   * discards until the peer closes too, so that a reset cannot destroy a response the peer has not read yet. After
   * `lingerMs` the duplex is destroyed. Resolves once it is closed.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    const socket = this.socket;
    this.#stopHeadTimer();
    this.#flushHead();
    this.#poisoned ??= "the connection is closing";
    this.#discarding = true;
    this.#received.clear();
    this.#reading?.body.destroy(new Http1Error(400, "CLOSED", "connection closed before the body ended"));
    this.#closed = new Promise((resolve) => {
      if (socket.closed || socket.destroyed) return resolve();
      const timer = setTimeout(() => socket.destroy(), this.#lingerMs);
      socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    socket.end();
    socket.resume();
    return this.#closed;
  }

  /** Destroys the duplex at once; a body being read or written fails with `error` (or a CLOSED error). */
  destroy(error?: Error): void {
    this.#poisoned ??= "the connection was destroyed";
    this.#failure ??= error ?? null;
    this.#stopHeadTimer();
    this.socket.destroy(error);
  }

  // ---- reading -------------------------------------------------------------------------------------------------

  #checkCanRead(role: "server" | "client") {
    if (this.role !== role) throw new Error(`BUG: a ${this.role} connection cannot read that`);
    if (this.#detached) throw new Error("BUG: the connection was detached");
    if (this.#poisoned !== null) throw new Error(`cannot read another message: ${this.#poisoned}`);
    if (this.#reading || this.#unread !== null) throw new Error("BUG: read the previous body to its end first");
  }

  #poison(error: unknown) {
    this.#poisoned ??= error instanceof Error ? error.message : String(error);
  }

  /** The text of the next head (start line through the empty line), or null at a clean end before one. */
  async #readHead(request: boolean): Promise<string | null> {
    const scanner = new SectionScanner(this.#limits, true, request);
    if (request && this.#idleTimeoutMs > 0) {
      this.#headTimedOut = false;
      this.#headDeadline = performance.now() + this.#idleTimeoutMs;
      this.#headTimer ??= setTimeout(this.#onHeadTimer, this.#idleTimeoutMs);
    }
    try {
      for (;;) {
        if (this.#received.length > 0) {
          const end = scanner.scan(this.#received.bytes);
          if (end >= 0) {
            const text = latin1(this.#received.bytes, scanner.start, end);
            this.#received.consume(end);
            return text;
          }
        }
        // Bytes of a head beyond the empty lines skipped before a request line.
        const started = this.#received.length > scanner.start;
        if (!started && (this.#eof || this.#failure || (request && this.#headTimedOut))) {
          if (this.#failure && !request) throw this.#failure;
          this.#received.consume(this.#received.length);
          return null;
        }
        if (this.#failure) {
          throw new Http1Error(400, "CLOSED", "connection failed inside a head", { cause: this.#failure });
        }
        if (this.#eof) throw new Http1Error(400, "CLOSED", "connection closed inside a head");
        if (request && this.#headTimedOut) {
          throw new Http1Error(408, "TIMEOUT", `request head not complete after ${this.#idleTimeoutMs} ms`);
        }
        this.socket.resume();
        await new Promise<void>((resolve) => (this.#wake = resolve));
      }
    } finally {
      this.#wake = null;
      this.#headDeadline = 0;
      // A connection that will read no further head (ended, failed, timed out) keeps no timer.
      if (this.#eof || this.#failure || this.#headTimedOut) this.#stopHeadTimer();
    }
  }

  #onHeadTimer = () => {
    this.#headTimer = undefined;
    if (this.#headDeadline === 0) return;
    const left = this.#headDeadline - performance.now();
    if (left > 0) {
      this.#headTimer = setTimeout(this.#onHeadTimer, left);
      return;
    }
    this.#headTimedOut = true;
    this.#wakeUp();
  };

  #stopHeadTimer() {
    clearTimeout(this.#headTimer);
    this.#headTimer = undefined;
  }

  #wakeUp() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #onData = (chunk: Uint8Array) => {
    if (this.#discarding) return;
    this.#received.append(chunk);
    if (this.#reading) this.#pump();
    else if (this.#wake) this.#wakeUp();
    // Nobody wants bytes now: leave the rest in the duplex, where flow control holds the peer back.
    else this.socket.pause();
  };

  #onEnd = () => {
    this.#eof = true;
    this.#settle();
  };

  #onError = (error: Error) => {
    this.#failure ??= error;
    this.#settle();
  };

  #onClose = () => {
    this.#stopHeadTimer();
    if (!this.#eof) this.#failure ??= new Http1Error(400, "CLOSED", "connection closed");
    this.#settle();
  };

  #settle() {
    this.#wakeUp();
    if (this.#reading) this.#pump();
    if (this.#writer && this.#failure) this.#writer.destroy(this.#failure);
  }

  #source: BodySource = {
    pull: () => this.#pump(),
    destroyed: (body) => {
      if (this.#reading?.body !== body) return;
      this.#reading = null;
      this.#poisoned ??= "a body was abandoned before its end";
    },
  };

  #pumping = false;

  /** Moves decoded body bytes from `#received` into the body until it ends or its consumer has enough. */
  #pump() {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      this.#pumpBody();
    } finally {
      this.#pumping = false;
    }
  }

  #pumpBody() {
    const reading = this.#reading;
    if (!reading) return;
    const { body, framing, decoder } = reading;
    for (;;) {
      let consumed = 0;
      let data: Uint8Array | null = null;
      if (this.#received.length > 0) {
        if (decoder !== null) {
          try {
            consumed = decoder.step(this.#received.bytes);
          } catch (error) {
            return this.#failBody(reading, error as Error);
          }
          data = decoder.data;
        } else {
          consumed = framing.kind === "length"
            ? Math.min(reading.remaining, this.#received.length)
            : this.#received.length;
          data = this.#received.bytes.subarray(0, consumed);
          reading.remaining -= consumed;
        }
        this.#received.consume(consumed);
      }
      if (consumed === 0) {
        if (this.#failure) {
          return this.#failBody(
            reading,
            new Http1Error(400, "CLOSED", "connection failed inside a body", { cause: this.#failure }),
          );
        }
        if (this.#eof) {
          if (framing.kind === "close") return this.#endBody(reading);
          const missing = framing.kind === "length" ? ` (${reading.remaining} bytes missing)` : "";
          return this.#failBody(reading, new Http1Error(400, "CLOSED", `connection closed inside a body${missing}`));
        }
        this.socket.resume();
        return;
      }
      if (data !== null && (reading.received += data.length) > this.#maxBodyBytes) {
        return this.#failBody(reading, this.#bodyTooLarge());
      }
      const done = decoder !== null ? decoder.done : framing.kind === "length" && reading.remaining === 0;
      const more = data === null || data.length === 0 || body.push(data);
      if (this.#reading !== reading) return; // the consumer destroyed the body from inside push()
      if (done) {
        if (decoder) body.trailers = decoder.trailers;
        return this.#endBody(reading);
      }
      if (!more) {
        this.socket.pause();
        return;
      }
    }
  }

  #bodyTooLarge(): Http1Error {
    return new Http1Error(413, "TOO_LARGE", `body larger than ${this.#maxBodyBytes} bytes`);
  }

  #endBody(reading: Reading) {
    this.#reading = null;
    this.#unread = null;
    reading.body.push(null);
    // Keep the duplex flowing while idle, so that an idle pooled connection notices its peer closing; bytes that
    // arrive meanwhile pause it again (#onData).
    if (this.#received.length === 0 && !this.#eof) this.socket.resume();
  }

  #failBody(reading: Reading, error: Error) {
    this.#poison(error);
    reading.body.destroy(this.role === "client" ? upstreamError(error) : error);
  }

  // ---- writing -------------------------------------------------------------------------------------------------

  #flushHead() {
    const head = this.#pendingHead;
    if (head === null) return;
    this.#pendingHead = null;
    this.#send(head);
  }

  #send(bytes: Uint8Array, callback?: (error?: Error | null) => void) {
    const socket = this.socket;
    if (socket.destroyed || socket.writableEnded) {
      return callback?.(this.#failure ?? new Http1Error(400, "CLOSED", "connection closed"));
    }
    if (socket.write(bytes) || callback === undefined) return callback?.();
    const onDrain = () => {
      socket.off("close", onClose);
      callback();
    };
    const onClose = () => {
      socket.off("drain", onDrain);
      callback(this.#failure ?? new Http1Error(400, "CLOSED", "connection closed"));
    };
    socket.once("drain", onDrain);
    socket.once("close", onClose);
  }

  #sink: BodySink = {
    takeHead: () => {
      const head = this.#pendingHead;
      this.#pendingHead = null;
      return head;
    },
    send: (bytes, callback) => this.#send(bytes, callback),
    endOutput: () => this.socket.end(),
    completed: (writer) => {
      if (this.#writer === writer) this.#writer = null;
    },
    aborted: (writer, error) => {
      if (this.#writer === writer) this.#writer = null;
      this.destroy(error);
    },
  };
}

const isFramingField = (name: string) => name === "content-length" || name === "transfer-encoding";
