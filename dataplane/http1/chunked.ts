/**
 * The chunked transfer coding (RFC 9112 §7.1): an incremental decoder that hands out body bytes as views of the
 * input, without copying, and the encoder used by the body writer.
 *
 * Decoding is strict where parsers have disagreed in the past (the chunk-extension and chunk-size smuggling
 * variants): the size is hexadecimal digits only, at most MAX_SAFE_INTEGER; whitespace after it is accepted only
 * before a `;` extension; an extension holds no control characters; the size line is at most 4 KiB; a chunk's data
 * must be followed by exactly CRLF. Trailer fields obey the same rules and limits as header fields.
 */

import { Http1Error, malformed } from "./errors.ts";
import {
  encodeTrailers,
  type HeaderList,
  type HeadLimits,
  isFieldValueChar,
  latin1,
  parseFieldLines,
  SectionScanner,
} from "./head.ts";

const CR = 0x0d;
const LF = 0x0a;

/** Longest chunk-size line (size and extensions) accepted. */
export const MAX_CHUNK_LINE = 4 * 1024;

const enum State {
  Size,
  Data,
  DataEnd,
  Trailers,
  Done,
}

/** hex digit value by byte, -1 for anything else */
const HEX = new Int8Array(256).fill(-1);
for (let i = 0; i < 10; i++) HEX[0x30 + i] = i;
for (let i = 0; i < 6; i++) HEX[0x41 + i] = HEX[0x61 + i] = 10 + i;

/** Decodes one chunked body incrementally; feed it the pending bytes with `step()` until `done`. */
export class ChunkedDecoder {
  /** The trailer section, once `done`. */
  trailers: HeaderList = [];
  /** Body bytes produced by the last `step()`: a view of its input, or null. */
  data: Uint8Array | null = null;
  #state = State.Size;
  #remaining = 0;
  #scanned = 0;
  #trailerScanner: SectionScanner | null = null;

  constructor(private readonly limits: HeadLimits) {}

  /** The last chunk and the trailer section have been read. */
  get done(): boolean {
    return this.#state === State.Done;
  }

  /**
   * Consumes a prefix of `input` and returns its length; the body bytes in it are left in `data`. Returns 0 when
   * `input` holds too little to make progress; call again with the same bytes and more appended. Throws
   * Http1Error on malformed input.
   */
  step(input: Uint8Array): number {
    this.data = null;
    switch (this.#state) {
      case State.Size:
        return this.#size(input);
      case State.Data: {
        const n = Math.min(this.#remaining, input.length);
        this.data = input.subarray(0, n);
        this.#remaining -= n;
        if (this.#remaining === 0) this.#state = State.DataEnd;
        return n;
      }
      case State.DataEnd:
        if (input.length > 0 && input[0] !== CR) throw malformed("chunk data not followed by CRLF");
        if (input.length < 2) return 0;
        if (input[1] !== LF) throw malformed("chunk data not followed by CRLF");
        this.#state = State.Size;
        return 2;
      case State.Trailers:
        return this.#trailers(input);
      case State.Done:
        return 0;
    }
  }

  #size(input: Uint8Array): number {
    const lf = input.indexOf(LF, this.#scanned);
    if (lf < 0) {
      if (input.length > MAX_CHUNK_LINE) throw malformed(`chunk-size line longer than ${MAX_CHUNK_LINE} bytes`);
      this.#scanned = input.length;
      return 0;
    }
    if (lf + 1 > MAX_CHUNK_LINE) throw malformed(`chunk-size line longer than ${MAX_CHUNK_LINE} bytes`);
    if (lf === 0 || input[lf - 1] !== CR) throw malformed("chunk-size line ending without CR (bare LF)");
    const end = lf - 1;
    let size = 0;
    let i = 0;
    for (; i < end; i++) {
      const digit = HEX[input[i]];
      if (digit < 0) break;
      size = size * 16 + digit;
      if (size > Number.MAX_SAFE_INTEGER) throw malformed("chunk size too large");
    }
    if (i === 0) throw malformed("chunk size is not hexadecimal");
    if (i < end) checkExtensions(input, i, end);
    this.#scanned = 0;
    if (size === 0) {
      this.#state = State.Trailers;
      this.#trailerScanner = new SectionScanner(this.limits, false);
    } else {
      this.#state = State.Data;
      this.#remaining = size;
    }
    return lf + 1;
  }

  #trailers(input: Uint8Array): number {
    // Almost every chunked body ends with `0 CRLF CRLF`: no trailer section to parse.
    if (input.length >= 2 && input[0] === CR && input[1] === LF) {
      this.#state = State.Done;
      return 2;
    }
    const end = this.#trailerScanner!.scan(input);
    if (end < 0) return 0;
    // Framing, routing and authentication fields are not allowed in trailers (RFC 9110 §6.5.1); drop them here so
    // that nothing downstream merges them into the header section.
    this.trailers = parseFieldLines(latin1(input, 0, end), 0).filter(([name]) => !FORBIDDEN_TRAILERS.has(name));
    this.#state = State.Done;
    return end;
  }
}

/** chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] ); checked for shape, never interpreted. */
function checkExtensions(line: Uint8Array, from: number, end: number) {
  let i = from;
  while (i < end && (line[i] === 0x20 || line[i] === 0x09)) i++;
  if (i === end || line[i] !== 0x3b) throw malformed("chunk size followed by something other than an extension");
  for (; i < end; i++) {
    if (!isFieldValueChar(line[i])) throw malformed("control character in a chunk extension");
  }
}

/** One chunk: size line, data, CRLF, in one buffer (after `prefix`, a pending head, when given). */
export function encodeChunk(data: Uint8Array, prefix: Uint8Array | null = null): Uint8Array {
  const sizeLine = data.length.toString(16);
  const pre = prefix?.length ?? 0;
  const out = new Uint8Array(pre + sizeLine.length + 2 + data.length + 2);
  if (prefix) out.set(prefix, 0);
  let at = pre;
  for (let i = 0; i < sizeLine.length; i++) out[at++] = sizeLine.charCodeAt(i);
  out[at++] = CR;
  out[at++] = LF;
  out.set(data, at);
  at += data.length;
  out[at++] = CR;
  out[at] = LF;
  return out;
}

/** The last chunk and the trailer section (after `prefix`, when given). */
export function encodeLastChunk(trailers: HeaderList, prefix: Uint8Array | null = null): Uint8Array {
  const section = trailers.length > 0 ? encodeTrailers(trailers) : CRLF;
  const pre = prefix?.length ?? 0;
  const out = new Uint8Array(pre + 3 + section.length);
  if (prefix) out.set(prefix, 0);
  out.set(LAST_CHUNK, pre);
  out.set(section, pre + 3);
  return out;
}

const LAST_CHUNK = new Uint8Array([0x30, CR, LF]);
const CRLF = new Uint8Array([CR, LF]);

/** Trailer fields that must never appear in a trailer section (RFC 9110 §6.5.1): framing, routing, auth. */
const FORBIDDEN_TRAILERS = new Set([
  "content-length",
  "transfer-encoding",
  "host",
  "content-type",
  "content-encoding",
  "content-range",
  "trailer",
  "te",
  "connection",
  "authorization",
  "set-cookie",
  "cookie",
]);

/** Throws for a trailer field the decoder above would drop; the body writer checks before sending. */
export function checkTrailers(trailers: HeaderList) {
  for (const [name] of trailers) {
    if (FORBIDDEN_TRAILERS.has(name)) {
      throw new Http1Error(500, "MALFORMED", `cannot send ${name} as a trailer field`);
    }
  }
}
