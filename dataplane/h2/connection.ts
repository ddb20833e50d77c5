/**
 * An HTTP/2 connection (RFC 9113), client or server, over any Node duplex (a `node:tls` socket in the mesh, a plain
 * TCP socket in tests). Written for Skiff because `node:http2` aborts the whole process in Deno 2.9.6 (see
 * ARCHITECTURE.md); it carries HBONE's CONNECT tunnels and, later, the waypoint's HTTP/2.
 *
 * Defaults are ztunnel's (reference §2): 4 MiB stream window, 16 MiB connection window, 1 MiB frames, 200
 * concurrent streams and a 64 KiB header list on the server, PING every 10 s with a 20 s timeout.
 *
 * Limits that hold under attack: the flood thresholds of `flood.ts` (rapid reset, empty frames, PING, SETTINGS,
 * WINDOW_UPDATE, PRIORITY, SETTINGS entries, frames queued to a peer that does not read), answered with GOAWAY
 * ENHANCE_YOUR_CALM, and a header block (HEADERS + CONTINUATION) beyond the header-list limit before END_HEADERS
 * (CVE-2024-27919), likewise.
 * Streams beyond the concurrency limit get REFUSED_STREAM; a decoded header list beyond the limit gets 431.
 */

import type { Duplex } from "node:stream";
import {
  CONNECTION_PREFACE,
  dataFrameHeader,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_WINDOW_SIZE,
  encodeGoaway,
  encodeHeaders,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeWindowUpdate,
  ErrorCode,
  errorName,
  type Frame,
  FrameReader,
  FrameType,
  H2Error,
  MAX_WINDOW_SIZE,
  Setting,
  SETTINGS_ACK,
} from "./frame.ts";
import { contentLength, field, type HeaderField, requestProblem, responseProblem, trailersProblem } from "./fields.ts";
import { HpackDecoder, HpackEncoder, HpackError } from "./hpack.ts";
import { H2Stream, type StreamHost } from "./stream.ts";
import { FLOOD_LIMITS, FloodGuard } from "./flood.ts";

export interface H2Options {
  role: "client" | "server";
  /** Called for each new request on a server connection. */
  onStream?: (stream: H2Stream) => void;
  streamWindow?: number;
  connectionWindow?: number;
  maxFrameSize?: number;
  maxHeaderListSize?: number;
  /** Streams the peer may open at once (server); beyond it REFUSED_STREAM. */
  maxConcurrentStreams?: number;
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
}

export const H2_DEFAULTS = {
  streamWindow: 4 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  maxFrameSize: 1024 * 1024,
  maxHeaderListSize: 64 * 1024,
  maxConcurrentStreams: 200,
  pingIntervalMs: 10_000,
  pingTimeoutMs: 20_000,
} as const;

/**
 * Bytes the socket may hold before streams wait for its `drain`: four default DATA chunks. It bounds what a
 * connection buffers for a slow peer on top of the HTTP/2 windows, which still bound the rest.
 */
const SOCKET_QUEUE_BYTES = 256 * 1024;

interface PendingBlock {
  streamId: number;
  endStream: boolean;
  chunks: Uint8Array[];
  bytes: number;
}

export class H2Connection implements StreamHost {
  readonly role: "client" | "server";
  /** Settles once the socket has closed; never rejects. */
  readonly closed: Promise<void>;
  /** Why the connection closed, when it was not a clean close. */
  closeError: Error | undefined;
  /** Set when the peer sent GOAWAY: no new streams on this connection. */
  goawayReceived: { lastStreamId: number; code: number } | undefined;

  #socket: Duplex;
  #opts: Required<Omit<H2Options, "onStream">>;
  #onStream: ((stream: H2Stream) => void) | undefined;
  #reader: FrameReader;
  #decoder: HpackDecoder;
  #encoder = new HpackEncoder();
  #streams = new Map<number, H2Stream>();
  #nextStreamId: number;
  #lastPeerStreamId = 0;
  #peerSettingsSeen = false;
  #peerMaxConcurrent = 100;
  #peerInitialWindow = DEFAULT_WINDOW_SIZE;
  #peerMaxFrameSize = DEFAULT_MAX_FRAME_SIZE;
  #connSendWindow = DEFAULT_WINDOW_SIZE;
  #connRecvWindow: number;
  #connRecvUnacked = 0;
  #block: PendingBlock | null = null;
  #blocked = false;
  /** Corked until the end of this turn of the event loop (see #write). */
  #corked = false;
  #uncork = () => {
    this.#corked = false;
    this.#socket.uncork();
  };
  #waiting = new Set<H2Stream>();
  #goawaySent = false;
  #isClosed = false;
  #resolveClosed!: () => void;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #pingSentAt: number | undefined;
  #pingPayload: Uint8Array | undefined;
  /** The PING after a shutdown's first GOAWAY ({@link announceShutdown}). */
  #shutdownPing: { payload: Uint8Array; answered: () => void; done: Promise<void> } | undefined;
  #flood = new FloodGuard(performance.now());
  /** Write callbacks: the socket has taken a frame (see `flood.ts` on the outbound queue). */
  #frameSent = () => this.#flood.frameSent(false);
  #controlSent = () => this.#flood.frameSent(true);

  constructor(socket: Duplex, options: H2Options) {
    this.role = options.role;
    this.#socket = socket;
    this.#onStream = options.onStream;
    this.#opts = {
      role: options.role,
      streamWindow: options.streamWindow ?? H2_DEFAULTS.streamWindow,
      connectionWindow: options.connectionWindow ?? H2_DEFAULTS.connectionWindow,
      maxFrameSize: options.maxFrameSize ?? H2_DEFAULTS.maxFrameSize,
      maxHeaderListSize: options.maxHeaderListSize ?? H2_DEFAULTS.maxHeaderListSize,
      maxConcurrentStreams: options.maxConcurrentStreams ?? H2_DEFAULTS.maxConcurrentStreams,
      pingIntervalMs: options.pingIntervalMs ?? H2_DEFAULTS.pingIntervalMs,
      pingTimeoutMs: options.pingTimeoutMs ?? H2_DEFAULTS.pingTimeoutMs,
    };
    this.#nextStreamId = this.role === "client" ? 1 : 2;
    this.#reader = new FrameReader(this.#opts.maxFrameSize, this.role === "server");
    this.#decoder = new HpackDecoder({ maxHeaderListSize: this.#opts.maxHeaderListSize });
    this.#connRecvWindow = this.#opts.connectionWindow;
    this.closed = new Promise((resolve) => this.#resolveClosed = resolve);

    if (this.role === "client") this.#write(CONNECTION_PREFACE);
    this.#write(encodeSettings([
      [Setting.ENABLE_PUSH, 0],
      [Setting.MAX_CONCURRENT_STREAMS, this.role === "server" ? this.#opts.maxConcurrentStreams : 0],
      [Setting.INITIAL_WINDOW_SIZE, this.#opts.streamWindow],
      [Setting.MAX_FRAME_SIZE, this.#opts.maxFrameSize],
      [Setting.MAX_HEADER_LIST_SIZE, this.#opts.maxHeaderListSize],
    ]));
    if (this.#opts.connectionWindow > DEFAULT_WINDOW_SIZE) {
      this.#write(encodeWindowUpdate(0, this.#opts.connectionWindow - DEFAULT_WINDOW_SIZE));
    }

    // Without TCP_NODELAY every window refill waits out a delayed ACK (~40 ms): ztunnel sets it on every socket.
    (socket as Duplex & { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("drain", () => this.#onDrain());
    socket.on("end", () => this.#teardown(this.#streams.size ? new Error("peer closed the connection") : undefined));
    socket.on("error", (error: Error) => this.#teardown(error));
    socket.on("close", () => {
      this.#teardown(new Error("connection closed"));
      this.#resolveClosed();
    });
    if (this.#opts.pingIntervalMs > 0) {
      this.#pingTimer = setInterval(() => this.#keepalive(), this.#opts.pingIntervalMs);
    }
  }

  /** Frames written and not yet taken by the socket. */
  get queuedFrames(): number {
    return this.#flood.queued;
  }

  /** Streams open now. */
  get activeStreams(): number {
    return this.#streams.size;
  }

  /** The peer's SETTINGS_MAX_CONCURRENT_STREAMS (100 until its SETTINGS arrive). */
  get peerMaxConcurrentStreams(): number {
    return this.#peerMaxConcurrent;
  }

  /** False once either side sent GOAWAY or the connection closed: no new streams. */
  get usable(): boolean {
    return !this.#isClosed && !this.#goawaySent && !this.goawayReceived;
  }

  /** Client: opens a stream with a request. Throws H2Error REFUSED_STREAM when no stream can be opened here. */
  request(fields: HeaderField[], options: { endStream?: boolean } = {}): H2Stream {
    if (this.role !== "client") throw new Error("BUG: request() on a server connection");
    if (!this.usable) throw new H2Error(ErrorCode.REFUSED_STREAM, "the connection is closing");
    if (this.#streams.size >= this.#peerMaxConcurrent) {
      throw new H2Error(ErrorCode.REFUSED_STREAM, `the peer allows ${this.#peerMaxConcurrent} concurrent streams`);
    }
    const problem = requestProblem(fields);
    if (problem) throw new TypeError(`malformed request: ${problem}`);
    const id = this.#nextStreamId;
    if (id > MAX_WINDOW_SIZE) throw new H2Error(ErrorCode.REFUSED_STREAM, "stream ids exhausted");
    this.#nextStreamId += 2;
    const stream = new H2Stream(id, this, fields, this.#peerInitialWindow, this.#opts.streamWindow);
    this.#streams.set(id, stream);
    this.#flood.streamOpened();
    this.sendHeaders(stream, fields, options.endStream ?? false);
    if (options.endStream) stream.end();
    return stream;
  }

  /** Graceful close: GOAWAY, no new streams, the socket ends once the open streams are done. */
  close(): Promise<void> {
    if (!this.#isClosed) {
      this.#sendGoaway(ErrorCode.NO_ERROR, "");
      this.#maybeFinish();
    }
    return this.closed;
  }

  /**
   * The first step of a graceful shutdown (RFC 9113 §6.8, as hyper's `graceful_shutdown`): GOAWAY NO_ERROR with
   * the largest stream id, so the peer opens no new stream here while the ones already on their way are still
   * served, then a PING. Resolves once the PING is answered (the peer has read the GOAWAY, and every stream it
   * opened before is here) or the connection closed: `close()` then sends the final GOAWAY and refuses nothing.
   */
  announceShutdown(): Promise<void> {
    if (this.#goawaySent || this.#isClosed) return Promise.resolve();
    if (!this.#shutdownPing) {
      const payload = crypto.getRandomValues(new Uint8Array(8));
      let answered!: () => void;
      const done = new Promise<void>((resolve) => (answered = resolve));
      this.closed.then(answered, answered);
      this.#shutdownPing = { payload, answered, done };
      this.#write(encodeGoaway(0x7fffffff, ErrorCode.NO_ERROR, "shutting down"), "goaway");
      this.#write(encodePing(payload, false));
    }
    return this.#shutdownPing.done;
  }

  /** Abrupt close: GOAWAY with `code`, every stream fails, the socket is destroyed. */
  destroy(error?: Error, code: number = ErrorCode.NO_ERROR) {
    if (this.#isClosed) return;
    this.#sendGoaway(code, error?.message ?? "");
    this.#teardown(error);
  }

  // ---- StreamHost ------------------------------------------------------------------------------------------------

  sendHeaders(stream: H2Stream, fields: HeaderField[], endStream: boolean) {
    if (stream.wireClosed) return;
    if (this.role === "server") {
      const problem = responseProblem(fields);
      if (problem) throw new TypeError(`malformed response: ${problem}`);
    }
    const block = this.#encoder.encode(fields);
    this.#write(encodeHeaders(stream.id, block, endStream, this.#peerMaxFrameSize));
    stream.headersSent = true;
    if (endStream) this.#localEnd(stream);
    else this.flush(stream);
  }

  flush(stream: H2Stream) {
    if (stream.wireClosed || !stream.headersSent) return;
    while (stream.pendingChunk) {
      if (this.#blocked) return void this.#waiting.add(stream);
      const room = Math.min(stream.sendWindow, this.#connSendWindow, this.#peerMaxFrameSize);
      if (room <= 0) return void this.#waiting.add(stream);
      const chunk = stream.pendingChunk;
      const n = Math.min(room, chunk.byteLength);
      // Header and payload go out as two writes in one corked batch: no copy of the payload.
      this.#write(dataFrameHeader(stream.id, n, false));
      const frame = n === chunk.byteLength ? chunk : chunk.subarray(0, n);
      stream.sendWindow -= n;
      this.#connSendWindow -= n;
      this.#flood.dataFrameSent();
      if (n === chunk.byteLength) {
        const callback = stream.pendingCallback;
        stream.pendingChunk = null;
        stream.pendingCallback = null;
        this.#write(frame, "payload");
        callback?.();
      } else {
        stream.pendingChunk = chunk.subarray(n);
        this.#write(frame, "payload");
      }
    }
    this.#waiting.delete(stream);
    if (stream.finalCallback && !stream.localEnded) {
      const callback = stream.finalCallback;
      stream.finalCallback = null;
      if (stream.trailersToSend) {
        this.#write(
          encodeHeaders(stream.id, this.#encoder.encode(stream.trailersToSend), true, this.#peerMaxFrameSize),
        );
      } else {
        this.#write(dataFrameHeader(stream.id, 0, true));
      }
      this.#localEnd(stream);
      callback();
    }
  }

  credit(stream: H2Stream) {
    const consumed = stream.consumedTotal;
    const delta = consumed - stream.creditedTotal;
    if (delta <= 0) return;
    stream.creditedTotal = consumed;
    this.#creditConnection(delta);
    if (stream.wireClosed || stream.remoteEnded) return;
    stream.recvUnacked += delta;
    if (stream.recvUnacked >= this.#opts.streamWindow / 4) {
      this.#write(encodeWindowUpdate(stream.id, stream.recvUnacked));
      stream.recvWindow += stream.recvUnacked;
      stream.recvUnacked = 0;
    }
  }

  streamDestroyed(stream: H2Stream, error: Error | null) {
    // Bytes the consumer will now never read go back to the connection window.
    const unread = stream.pushedTotal - stream.creditedTotal;
    stream.creditedTotal = stream.pushedTotal;
    this.#creditConnection(unread);
    if (stream.wireClosed) return;
    if (!this.#isClosed) {
      const code = stream.resetCode ?? (error ? ErrorCode.INTERNAL_ERROR : ErrorCode.CANCEL);
      stream.resetCode = code;
      this.#writeControl(encodeRstStream(stream.id, code));
    }
    this.#forget(stream);
  }

  // ---- receiving -------------------------------------------------------------------------------------------------

  #onData(chunk: Uint8Array) {
    if (this.#isClosed) return;
    this.#reader.push(chunk);
    try {
      for (;;) {
        if (this.#isClosed) return;
        let frame: Frame | null;
        try {
          frame = this.#reader.next();
          if (frame === null) return;
          this.#onFrame(frame);
        } catch (error) {
          if (!(error instanceof H2Error) || error.streamId === 0) throw error;
          this.#streamError(error);
        }
      }
    } catch (error) {
      if (error instanceof H2Error) this.destroy(error, error.code);
      else this.destroy(new Error(`BUG: ${error}`, { cause: error }), ErrorCode.INTERNAL_ERROR);
    }
  }

  #onFrame(frame: Frame) {
    if (!this.#peerSettingsSeen) {
      if (frame.type !== FrameType.SETTINGS || frame.ack) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, "the first frame from the peer must be SETTINGS");
      }
      this.#peerSettingsSeen = true;
    }
    if (this.#block && frame.type !== FrameType.CONTINUATION) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted by another frame");
    }
    switch (frame.type) {
      case FrameType.DATA:
        if (this.#flooded(this.#flood.frame(frame.data.byteLength === 0 && !frame.endStream))) return;
        return this.#onDataFrame(frame);
      case FrameType.HEADERS:
        if (this.#flooded(this.#flood.frame(frame.block.byteLength === 0 && !frame.endStream && !frame.endHeaders))) {
          return;
        }
        this.#block = { streamId: frame.streamId, endStream: frame.endStream, chunks: [], bytes: 0 };
        return this.#onBlockFragment(frame.block, frame.endHeaders);
      case FrameType.CONTINUATION:
        if (this.#flooded(this.#flood.frame(frame.block.byteLength === 0 && !frame.endHeaders))) return;
        if (!this.#block || this.#block.streamId !== frame.streamId) {
          throw new H2Error(ErrorCode.PROTOCOL_ERROR, `CONTINUATION on stream ${frame.streamId} out of sequence`);
        }
        return this.#onBlockFragment(frame.block, frame.endHeaders);
      case FrameType.PRIORITY:
        this.#flooded(this.#flood.priority());
        return;
      case FrameType.RST_STREAM:
        return this.#onReset(frame.streamId, frame.code);
      case FrameType.SETTINGS:
        if (frame.ack) return;
        if (this.#flooded(this.#flood.replyDemanded("SETTINGS", performance.now()))) return;
        this.#applySettings(frame.settings);
        return this.#writeControl(SETTINGS_ACK);
      case FrameType.PING:
        if (frame.ack) {
          if (this.#pingPayload && frame.payload.every((b, i) => b === this.#pingPayload![i])) {
            this.#pingSentAt = this.#pingPayload = undefined;
          }
          const shutdown = this.#shutdownPing;
          if (shutdown && frame.payload.every((b, i) => b === shutdown.payload[i])) shutdown.answered();
          return;
        }
        if (this.#flooded(this.#flood.replyDemanded("PING", performance.now()))) return;
        return this.#writeControl(encodePing(frame.payload, true));
      case FrameType.GOAWAY:
        return this.#onGoaway(frame.lastStreamId, frame.code, frame.debug);
      case FrameType.WINDOW_UPDATE:
        return this.#onWindowUpdate(frame.streamId, frame.increment);
      default:
        return;
    }
  }

  #onDataFrame(frame: Extract<Frame, { type: 0x0 }>) {
    this.#connRecvWindow -= frame.flowLength;
    if (this.#connRecvWindow < 0) {
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window");
    }
    const stream = this.#streams.get(frame.streamId);
    if (!stream) {
      this.#checkNotIdle(frame.streamId, "DATA");
      this.#creditConnection(frame.flowLength); // a stream we already closed; the bytes are dropped
      return;
    }
    if (stream.remoteEnded) {
      this.#creditConnection(frame.flowLength);
      throw new H2Error(ErrorCode.STREAM_CLOSED, `DATA after END_STREAM on stream ${stream.id}`, stream.id);
    }
    stream.recvWindow -= frame.flowLength;
    if (stream.recvWindow < 0) {
      this.#creditConnection(frame.flowLength);
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, `DATA beyond the window of stream ${stream.id}`, stream.id);
    }
    const padding = frame.flowLength - frame.data.byteLength;
    if (padding > 0) {
      this.#creditConnection(padding);
      stream.recvUnacked += padding;
    }
    stream.receivedLength += frame.data.byteLength;
    if (stream.expectedLength !== undefined && stream.receivedLength > stream.expectedLength) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, `DATA beyond content-length ${stream.expectedLength}`, stream.id);
    }
    if (frame.data.byteLength > 0) {
      stream.receive(frame.data);
      this.credit(stream);
    }
    if (frame.endStream) this.#remoteEnd(stream);
  }

  #onBlockFragment(fragment: Uint8Array, endHeaders: boolean) {
    const block = this.#block!;
    block.chunks.push(fragment);
    block.bytes += fragment.byteLength;
    if (block.chunks.length > 1 + FLOOD_LIMITS.continuationsPerBlock) {
      return this.#calm(`a header block in more than ${FLOOD_LIMITS.continuationsPerBlock} CONTINUATION frames`);
    }
    // An encoded block is never larger than its decoded list (each field costs 32 bytes more decoded than its few
    // length bytes), so past the limit here the decoded list is too; and we cannot skip it without breaking HPACK.
    if (block.bytes > this.#opts.maxHeaderListSize + 1024) {
      return this.#calm(`a header block over ${this.#opts.maxHeaderListSize} bytes`);
    }
    if (!endHeaders) return;
    this.#block = null;
    const bytes = block.chunks.length === 1 ? block.chunks[0] : concat(block.chunks, block.bytes);
    let fields: HeaderField[] | null;
    try {
      fields = this.#decoder.decode(bytes);
    } catch (error) {
      if (!(error instanceof HpackError)) throw error;
      if (error.kind === "compression") {
        throw new H2Error(ErrorCode.COMPRESSION_ERROR, `header block: ${error.message}`, 0, { cause: error });
      }
      fields = null;
    }
    this.#onHeaders(block.streamId, block.endStream, fields);
  }

  /** A complete header block; `fields` is null when its decoded size was over the limit. */
  #onHeaders(streamId: number, endStream: boolean, fields: HeaderField[] | null) {
    const stream = this.#streams.get(streamId);
    if (!stream) {
      if (this.role === "client" || streamId % 2 === 0) {
        this.#checkNotIdle(streamId, "HEADERS");
        return; // trailers for a stream we already reset
      }
      if (streamId <= this.#lastPeerStreamId) return; // a stream we already closed
      return this.#onRequest(streamId, endStream, fields);
    }
    if (fields === null) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, `headers over ${this.#opts.maxHeaderListSize} bytes`, streamId);
    }
    if (stream.remoteEnded) {
      throw new H2Error(ErrorCode.STREAM_CLOSED, `HEADERS after END_STREAM on stream ${streamId}`, streamId);
    }
    if (this.role === "client" && !stream.responseHeaders) {
      const problem = responseProblem(fields);
      if (problem) throw new H2Error(ErrorCode.PROTOCOL_ERROR, `malformed response: ${problem}`, streamId);
      const status = fields.find(([n]) => n === ":status")![1];
      if (status[0] === "1") {
        if (endStream || status === "101") {
          throw new H2Error(ErrorCode.PROTOCOL_ERROR, `interim response ${status} not allowed here`, streamId);
        }
        return;
      }
      const method = field(stream.requestHeaders, ":method");
      if (method !== "HEAD" && method !== "CONNECT" && status !== "204" && status !== "304") {
        const length = contentLength(fields);
        if (length === "invalid") throw new H2Error(ErrorCode.PROTOCOL_ERROR, "invalid content-length", streamId);
        stream.expectedLength = length;
      }
      stream.gotResponse(fields);
    } else {
      if (!endStream) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM", streamId);
      const problem = trailersProblem(fields);
      if (problem) throw new H2Error(ErrorCode.PROTOCOL_ERROR, `malformed trailers: ${problem}`, streamId);
      stream.trailers = fields;
      stream.emit("trailers", fields);
    }
    if (endStream) this.#remoteEnd(stream);
  }

  #onRequest(streamId: number, endStream: boolean, fields: HeaderField[] | null) {
    this.#lastPeerStreamId = streamId;
    this.#flood.streamOpened();
    if (this.#goawaySent) return this.#writeControl(encodeRstStream(streamId, ErrorCode.REFUSED_STREAM));
    if (fields === null) {
      this.#write(encodeHeaders(streamId, this.#encoder.encode([[":status", "431"]]), true, this.#peerMaxFrameSize));
      if (!endStream) this.#writeControl(encodeRstStream(streamId, ErrorCode.NO_ERROR));
      return;
    }
    if (this.#streams.size >= this.#opts.maxConcurrentStreams) {
      this.#writeControl(encodeRstStream(streamId, ErrorCode.REFUSED_STREAM));
      this.#peerStreamClosed(true);
      return;
    }
    const problem = requestProblem(fields);
    if (problem) {
      this.#writeControl(encodeRstStream(streamId, ErrorCode.PROTOCOL_ERROR));
      this.#peerStreamClosed(false);
      return;
    }
    const length = field(fields, ":method") === "CONNECT" ? undefined : contentLength(fields);
    if (length === "invalid") {
      this.#writeControl(encodeRstStream(streamId, ErrorCode.PROTOCOL_ERROR));
      this.#peerStreamClosed(false);
      return;
    }
    const stream = new H2Stream(streamId, this, fields, this.#peerInitialWindow, this.#opts.streamWindow);
    stream.expectedLength = length;
    this.#streams.set(streamId, stream);
    if (endStream) this.#remoteEnd(stream);
    if (this.#onStream) this.#onStream(stream);
    else stream.reset(ErrorCode.REFUSED_STREAM);
  }

  #onReset(streamId: number, code: number) {
    const stream = this.#streams.get(streamId);
    if (!stream) return this.#checkNotIdle(streamId, "RST_STREAM");
    stream.resetCode = code;
    const premature = this.role === "server" && !stream.localEnded &&
      performance.now() - stream.createdAt < FLOOD_LIMITS.prematureResetLifetimeMs;
    this.#forget(stream, premature);
    // RFC 9113 §8.1: a server may answer in full, then reset with NO_ERROR to stop the request body; the client
    // "MUST NOT discard" that response, so the stream stays readable to its end.
    if (code === ErrorCode.NO_ERROR && stream.remoteEnded && this.role === "client") stream.stopSending();
    else if (code === ErrorCode.NO_ERROR && stream.remoteEnded) stream.destroy();
    else stream.destroy(new H2Error(code, `stream ${streamId} reset by the peer: ${errorName(code)}`, streamId));
  }

  #onWindowUpdate(streamId: number, increment: number) {
    if (this.#flooded(this.#flood.windowUpdate())) return;
    if (streamId === 0) {
      this.#connSendWindow += increment;
      if (this.#connSendWindow > MAX_WINDOW_SIZE) {
        throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection send window beyond 2^31-1");
      }
      return this.#flushWaiting();
    }
    const stream = this.#streams.get(streamId);
    if (!stream) return this.#checkNotIdle(streamId, "WINDOW_UPDATE");
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW_SIZE) {
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, `send window of stream ${streamId} beyond 2^31-1`, streamId);
    }
    this.flush(stream);
  }

  #applySettings(settings: [number, number][]) {
    for (const [id, value] of settings) {
      switch (id) {
        case Setting.HEADER_TABLE_SIZE:
          this.#encoder.setMaxTableSize(value);
          break;
        case Setting.ENABLE_PUSH:
          if (this.role === "client" && value === 1) {
            throw new H2Error(ErrorCode.PROTOCOL_ERROR, "a server sent SETTINGS_ENABLE_PUSH=1");
          }
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          this.#peerMaxConcurrent = value;
          break;
        case Setting.INITIAL_WINDOW_SIZE: {
          const delta = value - this.#peerInitialWindow;
          this.#peerInitialWindow = value;
          for (const stream of this.#streams.values()) {
            stream.sendWindow += delta;
            if (stream.sendWindow > MAX_WINDOW_SIZE) {
              throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE overflows a window");
            }
          }
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          this.#peerMaxFrameSize = value;
          break;
      }
    }
    this.#flushWaiting();
  }

  #onGoaway(lastStreamId: number, code: number, debug: Uint8Array) {
    this.goawayReceived = { lastStreamId, code };
    const reason = new TextDecoder().decode(debug);
    for (const stream of [...this.#streams.values()]) {
      const ours = (stream.id % 2 === 1) === (this.role === "client");
      if (ours && stream.id > lastStreamId) {
        stream.resetCode = ErrorCode.REFUSED_STREAM;
        this.#forget(stream);
        stream.destroy(new H2Error(ErrorCode.REFUSED_STREAM, `GOAWAY ${errorName(code)} before stream ${stream.id}`));
      }
    }
    if (code !== ErrorCode.NO_ERROR) {
      this.closeError ??= new H2Error(code, `the peer sent GOAWAY ${errorName(code)}${reason ? `: ${reason}` : ""}`);
    }
    this.#maybeFinish();
  }

  // ---- stream lifecycle ------------------------------------------------------------------------------------------

  #localEnd(stream: H2Stream) {
    stream.localEnded = true;
    if (stream.remoteEnded) this.#forget(stream);
  }

  #remoteEnd(stream: H2Stream) {
    if (stream.expectedLength !== undefined && stream.receivedLength !== stream.expectedLength) {
      const what = `${stream.receivedLength} bytes of DATA for content-length ${stream.expectedLength}`;
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, what, stream.id);
    }
    stream.remoteEnded = true;
    stream.push(null);
    if (stream.localEnded) this.#forget(stream);
  }

  /** Removes a stream from the connection's books: it is closed on the wire. */
  #forget(stream: H2Stream, premature = false) {
    if (stream.wireClosed) return;
    stream.wireClosed = true;
    this.#streams.delete(stream.id);
    this.#waiting.delete(stream);
    if (!stream.responseHeaders) stream.failResponse(new Error(`stream ${stream.id} closed before a response`));
    const peers = (stream.id % 2 === 1) === (this.role === "server");
    if (peers) this.#peerStreamClosed(premature);
    this.#maybeFinish();
  }

  #peerStreamClosed(premature: boolean) {
    this.#flooded(this.#flood.peerStreamClosed(premature));
  }

  #streamError(error: H2Error) {
    const stream = this.#streams.get(error.streamId);
    if (stream) {
      stream.resetCode = error.code;
      this.#forget(stream);
      stream.destroy(error);
    }
    this.#writeControl(encodeRstStream(error.streamId, error.code));
  }

  #checkNotIdle(streamId: number, what: string) {
    const idle = (streamId % 2 === 1) === (this.role === "client")
      ? streamId >= this.#nextStreamId
      : streamId > this.#lastPeerStreamId;
    if (idle) throw new H2Error(ErrorCode.PROTOCOL_ERROR, `${what} on idle stream ${streamId}`);
  }

  // ---- sending ---------------------------------------------------------------------------------------------------

  /**
   * Queues frames for the peer. Each is counted until the socket takes it (a DATA payload goes with its header);
   * too many waiting is a peer that provokes frames without reading them, and closes the connection.
   */
  #write(bytes: Uint8Array, kind: "frame" | "control" | "payload" | "goaway" = "frame") {
    if (this.#socket.destroyed || this.#socket.writableEnded) return;
    if (!this.#corked) {
      // Frames written in one turn of the event loop leave together: one TLS record run, one syscall.
      this.#corked = true;
      this.#socket.cork();
      queueMicrotask(this.#uncork);
    }
    if (kind === "payload") {
      this.#socket.write(bytes);
    } else {
      const over = this.#flood.frameQueued(kind === "control");
      this.#socket.write(bytes, kind === "control" ? this.#controlSent : this.#frameSent);
      // The GOAWAY that closes the connection for it is the one frame allowed past the limit.
      if (kind !== "goaway" && this.#flooded(over)) return;
    }
    // Not `write() === false`: a socket says so past its 64 KiB high-water mark, so each 64 KiB DATA frame went
    // out alone and waited for `drain`, a write and a wait per frame. Up to SOCKET_QUEUE_BYTES, frames leave in
    // batches (docs/performance.md, "Where the CPU goes"); past it (`write()` has said false by then, so `drain`
    // will come) streams wait.
    if (this.#socket.writableLength >= SOCKET_QUEUE_BYTES) this.#blocked = true;
  }

  /** Frames the peer made us send (RST_STREAM, SETTINGS and PING acks): a tighter limit applies to them. */
  #writeControl(bytes: Uint8Array) {
    this.#write(bytes, "control");
  }

  #onDrain() {
    this.#blocked = false;
    this.#flushWaiting();
  }

  #flushWaiting() {
    for (const stream of [...this.#waiting]) {
      if (this.#blocked || this.#connSendWindow <= 0) return;
      this.flush(stream);
    }
  }

  #creditConnection(n: number) {
    if (n <= 0 || this.#isClosed) return;
    this.#connRecvUnacked += n;
    if (this.#connRecvUnacked >= this.#opts.connectionWindow / 4) {
      this.#write(encodeWindowUpdate(0, this.#connRecvUnacked));
      this.#connRecvWindow += this.#connRecvUnacked;
      this.#connRecvUnacked = 0;
    }
  }

  #sendGoaway(code: number, debug: string) {
    if (this.#goawaySent || this.#isClosed) return;
    this.#goawaySent = true;
    this.#write(encodeGoaway(this.#lastPeerStreamId, code, debug), "goaway");
  }

  // ---- limits, keepalive and teardown ----------------------------------------------------------------------------

  /** True when `reason` says a flood limit was crossed; the connection is then closing. */
  #flooded(reason: string | null): boolean {
    if (reason === null) return false;
    this.#calm(reason);
    return true;
  }

  /** A flood: GOAWAY ENHANCE_YOUR_CALM and close. Callers return right after; later frames are not read. */
  #calm(what: string) {
    this.destroy(new H2Error(ErrorCode.ENHANCE_YOUR_CALM, `flood: ${what}`), ErrorCode.ENHANCE_YOUR_CALM);
  }

  #keepalive() {
    if (this.#isClosed) return;
    const now = performance.now();
    if (this.#pingSentAt !== undefined) {
      if (now - this.#pingSentAt >= this.#opts.pingTimeoutMs) {
        this.destroy(new Error(`no PING answer within ${this.#opts.pingTimeoutMs} ms`), ErrorCode.NO_ERROR);
      }
      return;
    }
    this.#pingPayload = crypto.getRandomValues(new Uint8Array(8));
    this.#pingSentAt = now;
    this.#write(encodePing(this.#pingPayload, false));
  }

  #maybeFinish() {
    if (this.#isClosed || this.#streams.size > 0) return;
    if (this.#goawaySent || this.goawayReceived) {
      this.#socket.end();
      this.#teardown(undefined);
    }
  }

  #teardown(error: Error | undefined) {
    if (this.#isClosed) return;
    this.#isClosed = true;
    if (error) this.closeError ??= error;
    clearInterval(this.#pingTimer);
    const failure = this.closeError ?? new Error("connection closed");
    for (const stream of [...this.#streams.values()]) {
      this.#forget(stream);
      stream.destroy(failure);
    }
    this.#waiting.clear();
    if (this.#socket.destroyed) return this.#resolveClosed();
    if (!this.#socket.writableEnded) this.#socket.end();
    // Give the final GOAWAY a moment to leave, then release the socket whatever the peer does.
    const timer = setTimeout(() => this.#socket.destroy(), error ? 100 : 1000);
    this.#socket.once("close", () => clearTimeout(timer));
  }
}

function concat(chunks: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}
