/**
 * HTTP/2 frames (RFC 9113 §4 and §6): the constants, one encoder per frame type, and an incremental reader that
 * turns a byte stream into validated frames.
 *
 * The reader enforces everything that can be decided from one frame alone: the size limit we advertised (checked
 * from the 9-byte header, before any payload is buffered, so a peer cannot make us hold more than one frame of our
 * choosing), the stream-id rules per type, fixed lengths, padding, and SETTINGS values. What needs connection state
 * (stream states, CONTINUATION sequencing, flow control, floods) is the connection's job (`connection.ts`).
 *
 * PUSH_PROMISE is refused as a connection error: we always send SETTINGS_ENABLE_PUSH=0 (RFC 9113 §8.4), and a
 * server never receives it. Frames of unknown types are skipped (RFC 9113 §5.5) but still reported, so the
 * connection can count them against its flood limits. A SETTINGS frame of more entries than `flood.ts` allows is
 * refused before it is parsed.
 */

import { FLOOD_LIMITS } from "./flood.ts";

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;

/** Error codes, RFC 9113 §7. */
export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const;

/** The name of an error code, for logs and error messages. */
export function errorName(code: number): string {
  for (const [name, value] of Object.entries(ErrorCode)) if (value === code) return name;
  return `0x${code.toString(16)}`;
}

/** SETTINGS identifiers, RFC 9113 §6.5.2. */
export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

export const CONNECTION_PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
export const FRAME_HEADER_LENGTH = 9;
export const DEFAULT_MAX_FRAME_SIZE = 16_384;
export const MAX_ALLOWED_FRAME_SIZE = 0xffffff;
export const DEFAULT_WINDOW_SIZE = 65_535;
export const MAX_WINDOW_SIZE = 0x7fffffff;

/**
 * A protocol violation. `streamId` 0 means a connection error (GOAWAY), anything else a stream error (RST_STREAM
 * on that stream), as RFC 9113 §5.4 distinguishes them.
 */
export class H2Error extends Error {
  constructor(readonly code: number, message: string, readonly streamId = 0, options?: ErrorOptions) {
    super(message, options);
    this.name = "H2Error";
  }
}

export type Frame =
  | { type: 0x0; streamId: number; endStream: boolean; data: Uint8Array; flowLength: number }
  | { type: 0x1; streamId: number; endStream: boolean; endHeaders: boolean; block: Uint8Array }
  | { type: 0x2; streamId: number }
  | { type: 0x3; streamId: number; code: number }
  | { type: 0x4; streamId: 0; ack: boolean; settings: [id: number, value: number][] }
  | { type: 0x6; streamId: 0; ack: boolean; payload: Uint8Array }
  | { type: 0x7; streamId: 0; lastStreamId: number; code: number; debug: Uint8Array }
  | { type: 0x8; streamId: number; increment: number }
  | { type: 0x9; streamId: number; endHeaders: boolean; block: Uint8Array }
  | { type: "unknown"; streamId: number; frameType: number; length: number };

// ---- encoding ----------------------------------------------------------------------------------------------------

/** Writes a frame header into the first 9 bytes of `into`. */
export function writeFrameHeader(into: Uint8Array, length: number, type: number, flags: number, streamId: number) {
  into[0] = length >>> 16;
  into[1] = (length >>> 8) & 0xff;
  into[2] = length & 0xff;
  into[3] = type;
  into[4] = flags;
  new DataView(into.buffer, into.byteOffset, into.byteLength).setUint32(5, streamId & MAX_WINDOW_SIZE);
}

/** One frame with the given payload, copied after its header. */
export function encodeFrame(type: number, flags: number, streamId: number, payload?: Uint8Array): Uint8Array {
  const length = payload?.byteLength ?? 0;
  const out = new Uint8Array(FRAME_HEADER_LENGTH + length);
  writeFrameHeader(out, length, type, flags, streamId);
  if (payload) out.set(payload, FRAME_HEADER_LENGTH);
  return out;
}

/** The 9-byte header of a DATA frame; the payload is written after it without copying. */
export function dataFrameHeader(streamId: number, length: number, endStream: boolean): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_LENGTH);
  writeFrameHeader(out, length, FrameType.DATA, endStream ? Flag.END_STREAM : 0, streamId);
  return out;
}

export function encodeSettings(settings: [id: number, value: number][]): Uint8Array {
  const payload = new Uint8Array(settings.length * 6);
  const view = new DataView(payload.buffer);
  settings.forEach(([id, value], i) => {
    view.setUint16(i * 6, id);
    view.setUint32(i * 6 + 2, value);
  });
  return encodeFrame(FrameType.SETTINGS, 0, 0, payload);
}

export const SETTINGS_ACK = encodeFrame(FrameType.SETTINGS, Flag.ACK, 0);

export function encodePing(payload: Uint8Array, ack: boolean): Uint8Array {
  return encodeFrame(FrameType.PING, ack ? Flag.ACK : 0, 0, payload);
}

export function encodeWindowUpdate(streamId: number, increment: number): Uint8Array {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setUint32(0, increment);
  return encodeFrame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
}

export function encodeRstStream(streamId: number, code: number): Uint8Array {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setUint32(0, code);
  return encodeFrame(FrameType.RST_STREAM, 0, streamId, payload);
}

export function encodeGoaway(lastStreamId: number, code: number, debug = ""): Uint8Array {
  const text = new TextEncoder().encode(debug.slice(0, 256));
  const payload = new Uint8Array(8 + text.byteLength);
  const view = new DataView(payload.buffer);
  view.setUint32(0, lastStreamId);
  view.setUint32(4, code);
  payload.set(text, 8);
  return encodeFrame(FrameType.GOAWAY, 0, 0, payload);
}

/** HEADERS and as many CONTINUATION frames as `maxFrameSize` requires, in one buffer. */
export function encodeHeaders(streamId: number, block: Uint8Array, endStream: boolean, maxFrameSize: number) {
  const frames = Math.max(1, Math.ceil(block.byteLength / maxFrameSize));
  const out = new Uint8Array(block.byteLength + frames * FRAME_HEADER_LENGTH);
  let at = 0;
  for (let i = 0; i < frames; i++) {
    const piece = block.subarray(i * maxFrameSize, (i + 1) * maxFrameSize);
    const last = i === frames - 1;
    const type = i === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
    const flags = (last ? Flag.END_HEADERS : 0) | (i === 0 && endStream ? Flag.END_STREAM : 0);
    writeFrameHeader(out.subarray(at), piece.byteLength, type, flags, streamId);
    out.set(piece, at + FRAME_HEADER_LENGTH);
    at += FRAME_HEADER_LENGTH + piece.byteLength;
  }
  return out;
}

// ---- decoding ----------------------------------------------------------------------------------------------------

/**
 * Collects bytes and hands out whole frames. Chunks are kept as they arrive and joined only once a whole frame is
 * there, so a 1 MiB frame that arrives in 16 KiB pieces is copied once, not once per piece.
 */
export class FrameReader {
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #prefaceLeft: number;

  /** @param maxFrameSize our SETTINGS_MAX_FRAME_SIZE; @param expectPreface true on a server */
  constructor(public maxFrameSize: number, expectPreface: boolean) {
    this.#prefaceLeft = expectPreface ? CONNECTION_PREFACE.byteLength : 0;
  }

  /** Bytes held that are not yet a whole frame. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Uint8Array) {
    if (chunk.byteLength === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.byteLength;
  }

  /** The next whole frame, or null when more bytes are needed. Throws H2Error on a malformed frame. */
  next(): Frame | null {
    if (this.#prefaceLeft > 0) {
      if (this.#buffered < this.#prefaceLeft) {
        const got = this.#peek(this.#buffered);
        const at = CONNECTION_PREFACE.byteLength - this.#prefaceLeft;
        if (!got.every((b, i) => b === CONNECTION_PREFACE[at + i])) throw prefaceError();
        return null;
      }
      const got = this.#take(this.#prefaceLeft);
      if (!got.every((b, i) => b === CONNECTION_PREFACE[i])) throw prefaceError();
      this.#prefaceLeft = 0;
    }
    if (this.#buffered < FRAME_HEADER_LENGTH) return null;
    const header = this.#peek(FRAME_HEADER_LENGTH);
    const length = (header[0] << 16) | (header[1] << 8) | header[2];
    if (length > this.maxFrameSize) {
      throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `frame of ${length} bytes exceeds our limit ${this.maxFrameSize}`);
    }
    if (this.#buffered < FRAME_HEADER_LENGTH + length) return null;
    const bytes = this.#take(FRAME_HEADER_LENGTH + length);
    return parseFrame(bytes[3], bytes[4], readStreamId(bytes, 5), bytes.subarray(FRAME_HEADER_LENGTH));
  }

  #peek(n: number): Uint8Array {
    const first = this.#chunks[0];
    if (first.byteLength >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let at = 0;
    for (const c of this.#chunks) {
      const piece = c.subarray(0, n - at);
      out.set(piece, at);
      at += piece.byteLength;
      if (at === n) break;
    }
    return out;
  }

  #take(n: number): Uint8Array {
    this.#buffered -= n;
    const first = this.#chunks[0];
    if (first.byteLength > n) {
      this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    if (first.byteLength === n) {
      this.#chunks.shift();
      return first;
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const c = this.#chunks[0];
      const want = n - at;
      if (c.byteLength <= want) {
        out.set(c, at);
        at += c.byteLength;
        this.#chunks.shift();
      } else {
        out.set(c.subarray(0, want), at);
        this.#chunks[0] = c.subarray(want);
        at = n;
      }
    }
    return out;
  }
}

function prefaceError() {
  return new H2Error(ErrorCode.PROTOCOL_ERROR, "the client connection preface is wrong (not HTTP/2 prior knowledge)");
}

function readStreamId(bytes: Uint8Array, at: number): number {
  return ((bytes[at] & 0x7f) << 24 | bytes[at + 1] << 16 | bytes[at + 2] << 8 | bytes[at + 3]) >>> 0;
}

function readUint32(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 24 | bytes[at + 1] << 16 | bytes[at + 2] << 8 | bytes[at + 3]) >>> 0;
}

const FRAME_NAMES = Object.fromEntries(Object.entries(FrameType).map(([name, type]) => [type, name]));

/** Validates and parses one frame's payload (RFC 9113 §6). */
export function parseFrame(type: number, flags: number, streamId: number, payload: Uint8Array): Frame {
  const name = FRAME_NAMES[type];
  const onStream0 = type === FrameType.SETTINGS || type === FrameType.PING || type === FrameType.GOAWAY;
  if (name !== undefined && type !== FrameType.WINDOW_UPDATE && onStream0 !== (streamId === 0)) {
    throw new H2Error(ErrorCode.PROTOCOL_ERROR, `${name} frame on stream ${streamId}`);
  }
  switch (type) {
    case FrameType.DATA: {
      const data = unpad(flags, payload, 0, name);
      return { type, streamId, endStream: (flags & Flag.END_STREAM) !== 0, data, flowLength: payload.byteLength };
    }
    case FrameType.HEADERS: {
      const skip = flags & Flag.PRIORITY ? 5 : 0;
      const block = unpad(flags, payload, skip, name);
      if (skip && readStreamId(payload, flags & Flag.PADDED ? 1 : 0) === streamId) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, `HEADERS on stream ${streamId} depends on itself`, streamId);
      }
      const endStream = (flags & Flag.END_STREAM) !== 0;
      return { type, streamId, endStream, endHeaders: (flags & Flag.END_HEADERS) !== 0, block };
    }
    case FrameType.PRIORITY:
      if (payload.byteLength !== 5) {
        throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `PRIORITY of ${payload.byteLength} bytes`, streamId);
      }
      return { type, streamId };
    case FrameType.RST_STREAM:
      fixedLength(name, payload, 4);
      return { type, streamId, code: readUint32(payload, 0) };
    case FrameType.SETTINGS: {
      const ack = (flags & Flag.ACK) !== 0;
      if (ack && payload.byteLength !== 0) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ack with a payload");
      if (payload.byteLength % 6 !== 0) {
        throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `SETTINGS of ${payload.byteLength} bytes, not a multiple of 6`);
      }
      // Counted before parsing: applying 174,762 entries of a 1 MiB frame took 56-193 ms (flood.ts).
      const entries = payload.byteLength / 6;
      if (entries > FLOOD_LIMITS.settingsPerFrame) {
        throw new H2Error(
          ErrorCode.ENHANCE_YOUR_CALM,
          `flood: a SETTINGS frame of ${entries} entries, more than ${FLOOD_LIMITS.settingsPerFrame}`,
        );
      }
      const settings: [number, number][] = [];
      for (let at = 0; at < payload.byteLength; at += 6) {
        const id = (payload[at] << 8) | payload[at + 1];
        const value = readUint32(payload, at + 2);
        checkSetting(id, value);
        settings.push([id, value]);
      }
      return { type, streamId: 0, ack, settings };
    }
    case FrameType.PUSH_PROMISE:
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE received, but push is disabled");
    case FrameType.PING:
      fixedLength(name, payload, 8);
      return { type, streamId: 0, ack: (flags & Flag.ACK) !== 0, payload };
    case FrameType.GOAWAY:
      if (payload.byteLength < 8) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes");
      return {
        type,
        streamId: 0,
        lastStreamId: readStreamId(payload, 0),
        code: readUint32(payload, 4),
        debug: payload.subarray(8),
      };
    case FrameType.WINDOW_UPDATE: {
      fixedLength(name, payload, 4);
      const increment = readStreamId(payload, 0);
      if (increment === 0) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, `WINDOW_UPDATE of 0 on stream ${streamId}`, streamId);
      }
      return { type, streamId, increment };
    }
    case FrameType.CONTINUATION:
      return { type, streamId, endHeaders: (flags & Flag.END_HEADERS) !== 0, block: payload };
    default:
      return { type: "unknown", streamId, frameType: type, length: payload.byteLength };
  }
}

function fixedLength(name: string, payload: Uint8Array, length: number) {
  if (payload.byteLength !== length) {
    throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `${name} of ${payload.byteLength} bytes, expected ${length}`);
  }
}

/** Strips padding (RFC 9113 §6.1): the pad length must leave room for the rest of the payload. */
function unpad(flags: number, payload: Uint8Array, skip: number, name: string): Uint8Array {
  if ((flags & Flag.PADDED) === 0) {
    if (payload.byteLength < skip) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `${name} too short`);
    return payload.subarray(skip);
  }
  if (payload.byteLength < 1 + skip) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `${name} too short`);
  const padLength = payload[0];
  if (padLength > payload.byteLength - 1 - skip) {
    throw new H2Error(ErrorCode.PROTOCOL_ERROR, `${name} padding of ${padLength} exceeds its payload`);
  }
  return payload.subarray(1 + skip, payload.byteLength - padLength);
}

function checkSetting(id: number, value: number) {
  if (id === Setting.ENABLE_PUSH && value > 1) {
    throw new H2Error(ErrorCode.PROTOCOL_ERROR, `SETTINGS_ENABLE_PUSH=${value}`);
  }
  if (id === Setting.INITIAL_WINDOW_SIZE && value > MAX_WINDOW_SIZE) {
    throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE=${value} exceeds 2^31-1`);
  }
  if (id === Setting.MAX_FRAME_SIZE && (value < DEFAULT_MAX_FRAME_SIZE || value > MAX_ALLOWED_FRAME_SIZE)) {
    throw new H2Error(ErrorCode.PROTOCOL_ERROR, `SETTINGS_MAX_FRAME_SIZE=${value} outside 16384..16777215`);
  }
}
