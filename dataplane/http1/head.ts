/**
 * HTTP/1.1 message heads (RFC 9112 §2–§5): finding where a head ends in a byte stream, parsing the start line and
 * field lines strictly, and serialising heads back to bytes.
 *
 * Strictness is the defence against request smuggling and header injection: whatever two HTTP/1.1 parsers could
 * read differently is refused rather than repaired. Refused with 400: a line ending without CR (bare LF), a request
 * line that is not exactly `method SP target SP HTTP/1.x`, a method or field name that is not a token (so whitespace
 * before the colon), obsolete line folding (a line starting with SP or HTAB, §5.2), a value with a control character
 * other than HTAB (NUL, a bare CR, DEL), and an HTTP/1.1 request without exactly one valid Host (§3.2). Limits:
 * a request line over 8 KiB is 414, a head over 64 KiB or with more than 100 fields is 431 (RFC 6585).
 *
 * Heads are decoded as latin1 (one UTF-16 code unit per byte) because field values are opaque octets (RFC 9110
 * §5.5): a byte outside ASCII survives parsing and serialising unchanged. `TextDecoder("latin1")` does not do that:
 * WHATWG maps the label to windows-1252, which turns 0x80 into U+20AC. `Buffer#toString("latin1")` is a true latin1 decode
 * and, in Deno 2.9, five times faster than TextDecoder on a typical head.
 */

import { Buffer } from "node:buffer";
import { Http1Error, malformed } from "./errors.ts";

/** The versions spoken; other HTTP/x.y versions are refused with 505. */
export type HttpVersion = "HTTP/1.0" | "HTTP/1.1";

/** Field lines in order; names lowercase, repeated fields kept as separate entries. */
export type HeaderList = [name: string, value: string][];

/** A request line and header section, as parsed or to be written. */
export interface RequestHead {
  method: string;
  /** The request target as sent: origin-form, absolute-form, authority-form (CONNECT) or `*` (OPTIONS). */
  target: string;
  version: HttpVersion;
  headers: HeaderList;
}

/** A status line and header section, as parsed or to be written. */
export interface ResponseHead {
  version: HttpVersion;
  status: number;
  reason: string;
  headers: HeaderList;
}

/** Size limits for heads and trailer sections. */
export interface HeadLimits {
  /** Longest request or status line, CRLF included; beyond it 414. */
  maxStartLine: number;
  /** Longest head (or trailer section), empty lines skipped before it included; beyond it 431. */
  maxHeadBytes: number;
  /** Most field lines in a head or trailer section; beyond it 431. */
  maxFields: number;
}

/** 8 KiB request line, 64 KiB head, 100 fields: close to Envoy's defaults (60 KiB of headers, 100 fields). */
export const DEFAULT_LIMITS: Readonly<HeadLimits> = Object.freeze({
  maxStartLine: 8 * 1024,
  maxHeadBytes: 64 * 1024,
  maxFields: 100,
});

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;

/** tchar of RFC 9110 §5.6.2: 1 for a token character, 2 for an uppercase letter (also a token character). */
const TCHAR = new Uint8Array(256);
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 2;
for (const ch of "!#$%&'*+-.^_`|~") TCHAR[ch.charCodeAt(0)] = 1;

/** field-vchar / SP / HTAB (RFC 9110 §5.5): everything from 0x00 to 0xff but the controls and DEL. */
export function isFieldValueChar(c: number): boolean {
  return c === HTAB || (c >= SP && c !== 0x7f && c <= 0xff);
}

/** Whether `s` is a non-empty token (RFC 9110 §5.6.2). */
export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff || TCHAR[c] === 0) return false;
  }
  return true;
}

/** Decodes bytes one code unit per byte (see the module comment for why not TextDecoder). */
export function latin1(bytes: Uint8Array, start = 0, end = bytes.length): string {
  const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return buffer.toString("latin1", start, end);
}

/**
 * Finds the end of a head or trailer section (the first empty line) in a buffer that grows between calls, checking
 * line endings and limits on the way. Each call resumes where the last one stopped, so a peer sending one byte at a
 * time costs linear work, not quadratic.
 */
export class SectionScanner {
  /** Where the section starts: past the empty lines skipped before a request line. */
  start = 0;
  #pos = 0;
  #lineStart = 0;
  #lines = 0;

  /**
   * @param startLine the section begins with a request or status line (else it is a trailer section)
   * @param skipEmptyLines ignore empty lines before the start line (RFC 9112 §2.2, for requests)
   */
  constructor(
    private readonly limits: HeadLimits,
    private readonly startLine: boolean,
    private readonly skipEmptyLines = false,
  ) {}

  /** Returns the index just past the empty line that ends the section, or -1 when more bytes are needed. */
  scan(buf: Uint8Array): number {
    const { maxStartLine, maxHeadBytes, maxFields } = this.limits;
    let pos = this.#pos;
    for (;;) {
      const lf = buf.indexOf(LF, pos);
      if (lf < 0) break;
      if (lf === 0 || buf[lf - 1] !== CR) throw malformed("line ending without CR (bare LF)");
      if (lf - 1 === this.#lineStart) {
        if (this.#lines === 0 && this.startLine) {
          if (!this.skipEmptyLines) throw malformed("empty status line");
          this.start = this.#lineStart = pos = lf + 1;
          continue;
        }
        const end = lf + 1;
        if (end > maxHeadBytes) throw tooLarge(maxHeadBytes);
        return end;
      }
      this.#lines++;
      if (this.startLine && this.#lines === 1 && lf + 1 - this.start > maxStartLine) {
        throw startLineTooLong(maxStartLine);
      }
      if (this.#lines - (this.startLine ? 1 : 0) > maxFields) {
        throw new Http1Error(431, "TOO_LARGE", `more than ${maxFields} header fields`);
      }
      this.#lineStart = pos = lf + 1;
    }
    this.#pos = buf.length;
    if (this.startLine && this.#lines === 0 && buf.length - this.start > maxStartLine) {
      throw startLineTooLong(maxStartLine);
    }
    if (buf.length > maxHeadBytes) throw tooLarge(maxHeadBytes);
    return -1;
  }
}

const startLineTooLong = (max: number) => new Http1Error(414, "TOO_LARGE", `start line longer than ${max} bytes`);
const tooLarge = (max: number) => new Http1Error(431, "TOO_LARGE", `header section larger than ${max} bytes`);

function parseVersion(s: string): HttpVersion {
  if (s === "HTTP/1.1" || s === "HTTP/1.0") return s;
  if (/^HTTP\/[0-9]\.[0-9]$/.test(s)) throw new Http1Error(505, "UNSUPPORTED", `unsupported version ${s}`);
  throw malformed(`bad HTTP version ${JSON.stringify(s)}`);
}

/** Characters of a host (RFC 3986 reg-name, IP literal, port): unreserved, pct-encoded, sub-delims, ":[]". */
const HOST_CHAR = /^[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*$/;

function checkTarget(method: string, target: string) {
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= SP || c >= 0x7f) throw malformed(`request target has byte 0x${c.toString(16)} at ${i}`);
  }
  if (method === "CONNECT") {
    // authority-form (RFC 9112 §3.2.3): host ":" port, nothing else.
    if (!HOST_CHAR.test(target) || !/:[0-9]{1,5}$/.test(target)) {
      throw malformed(`CONNECT target ${JSON.stringify(target)} is not host:port`);
    }
  } else if (target === "*") {
    if (method !== "OPTIONS") throw malformed(`asterisk-form target with ${method}`);
  } else if (target.charCodeAt(0) !== 0x2f && !/^[A-Za-z][A-Za-z0-9+.\-]*:/.test(target)) {
    throw malformed(`request target ${JSON.stringify(target.slice(0, 64))} is neither origin- nor absolute-form`);
  }
}

/** Parses a request head: `text` runs from the request line through the empty line that ends the head. */
export function parseRequestHead(text: string): RequestHead {
  const eol = text.indexOf("\r\n");
  const sp1 = text.indexOf(" ");
  const sp2 = sp1 < 0 ? -1 : text.indexOf(" ", sp1 + 1);
  if (sp1 <= 0 || sp2 < 0 || sp2 > eol) throw malformed("request line is not method SP target SP version");
  const method = text.slice(0, sp1);
  if (!isToken(method)) throw malformed(`method ${JSON.stringify(method)} is not a token`);
  const target = text.slice(sp1 + 1, sp2);
  if (target.length === 0) throw malformed("empty request target");
  checkTarget(method, target);
  const version = parseVersion(text.slice(sp2 + 1, eol));
  const headers = parseFieldLines(text, eol + 2);
  let hosts = 0;
  for (const [name, value] of headers) {
    if (name !== "host") continue;
    hosts++;
    if (!HOST_CHAR.test(value)) throw malformed(`invalid Host ${JSON.stringify(value)}`);
  }
  // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request with more than one.
  if (hosts > 1) throw malformed("more than one Host field");
  if (hosts === 0 && version === "HTTP/1.1") throw malformed("HTTP/1.1 request without Host");
  return { method, target, version, headers };
}

/** Parses a response head: `text` runs from the status line through the empty line that ends the head. */
export function parseResponseHead(text: string): ResponseHead {
  const eol = text.indexOf("\r\n");
  const version = parseVersion(text.slice(0, 8));
  const code = text.slice(9, 12);
  if (text.charCodeAt(8) !== SP || !/^[1-5][0-9][0-9]$/.test(code)) {
    throw malformed(`status line ${JSON.stringify(text.slice(0, Math.min(eol, 64)))} has no valid status code`);
  }
  // `HTTP/1.1 200` without the SP before an empty reason is common enough to accept (a client ignores the reason).
  let reason = "";
  if (eol > 12) {
    if (text.charCodeAt(12) !== SP) throw malformed("status code not followed by SP");
    reason = text.slice(13, eol);
    for (let i = 0; i < reason.length; i++) {
      if (!isFieldValueChar(reason.charCodeAt(i))) throw malformed("control character in reason phrase");
    }
  }
  return { version, status: Number(code), reason, headers: parseFieldLines(text, eol + 2) };
}

/**
 * Parses field lines from `from` up to the empty line (RFC 9112 §5). The caller found that empty line with a
 * SectionScanner, so every LF is known to follow a CR.
 */
export function parseFieldLines(text: string, from: number): HeaderList {
  const headers: HeaderList = [];
  let pos = from;
  for (;;) {
    const eol = text.indexOf("\r\n", pos);
    if (eol === pos || eol < 0) return headers;
    const first = text.charCodeAt(pos);
    if (first === SP || first === HTAB) throw malformed("obsolete line folding (field line starting with whitespace)");
    let upper = false;
    let colon = pos;
    for (; colon < eol; colon++) {
      const c = text.charCodeAt(colon);
      if (c === 0x3a) break;
      const kind = c > 0xff ? 0 : TCHAR[c];
      if (kind === 0) {
        if (c === SP || c === HTAB) throw malformed("whitespace between field name and colon");
        throw malformed(`field name has byte 0x${c.toString(16)}`);
      }
      if (kind === 2) upper = true;
    }
    if (colon === eol) throw malformed("field line without a colon");
    if (colon === pos) throw malformed("empty field name");
    let start = colon + 1;
    let end = eol;
    while (start < end && isOws(text.charCodeAt(start))) start++;
    while (end > start && isOws(text.charCodeAt(end - 1))) end--;
    for (let i = start; i < end; i++) {
      const c = text.charCodeAt(i);
      if (!isFieldValueChar(c)) throw malformed(`field value has control byte 0x${c.toString(16)}`);
    }
    const name = text.slice(pos, colon);
    headers.push([upper ? name.toLowerCase() : name, text.slice(start, end)]);
    pos = eol + 2;
  }
}

const isOws = (c: number) => c === SP || c === HTAB;

/**
 * Serialises a head: the start line, `headers` except those `skip` names (lowercase), then `extra`, then the empty
 * line. Refuses anything that would not parse back the same: a name that is not a token, a value with CR, LF, NUL
 * or another control, a character above 0xff. `room` extra bytes are left at the end for a body to be copied in.
 */
export function encodeHead(
  head: RequestHead | ResponseHead,
  skip: ((name: string) => boolean) | null,
  extra: HeaderList,
  room = 0,
): Uint8Array {
  let startLine: string;
  if ("method" in head) {
    if (!isToken(head.method)) throw refuse(`method ${JSON.stringify(head.method)} is not a token`);
    for (let i = 0; i < head.target.length; i++) {
      const c = head.target.charCodeAt(i);
      if (c <= SP || c >= 0x7f) throw refuse(`request target has character 0x${c.toString(16)}`);
    }
    if (head.target.length === 0) throw refuse("empty request target");
    startLine = `${head.method} ${head.target} ${head.version}\r\n`;
  } else {
    if (!Number.isInteger(head.status) || head.status < 100 || head.status > 599) {
      throw refuse(`status ${head.status} is not in 100..599`);
    }
    checkValue("reason phrase", head.reason);
    startLine = `${head.version} ${head.status} ${head.reason}\r\n`;
  }
  return encodeSection(startLine, head.headers, skip, extra, room);
}

/** Serialises a trailer section (after the last chunk): field lines and the final empty line. */
export function encodeTrailers(trailers: HeaderList): Uint8Array {
  return encodeSection("", trailers, null, [], 0);
}

function encodeSection(
  startLine: string,
  headers: HeaderList,
  skip: ((name: string) => boolean) | null,
  extra: HeaderList,
  room: number,
): Uint8Array {
  let size = startLine.length + 2 + room;
  for (const [name, value] of headers) {
    if (skip === null || !skip(name)) size += name.length + value.length + 4;
  }
  for (const [name, value] of extra) size += name.length + value.length + 4;
  const out = new Uint8Array(size);
  let at = 0;
  for (let i = 0; i < startLine.length; i++) out[at++] = startLine.charCodeAt(i);
  const put = (name: string, value: string) => {
    if (!isToken(name)) throw refuse(`field name ${JSON.stringify(name)} is not a token`);
    for (let i = 0; i < name.length; i++) out[at++] = name.charCodeAt(i);
    out[at++] = 0x3a;
    out[at++] = SP;
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if (!isFieldValueChar(c)) throw refuse(`field ${name} has character 0x${c.toString(16)} in its value`);
      out[at++] = c;
    }
    out[at++] = CR;
    out[at++] = LF;
  };
  for (const [name, value] of headers) if (skip === null || !skip(name)) put(name, value);
  for (const [name, value] of extra) put(name, value);
  out[at++] = CR;
  out[at++] = LF;
  return out;
}

function checkValue(what: string, value: string) {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (!isFieldValueChar(c)) throw refuse(`${what} has character 0x${c.toString(16)}`);
  }
}

/** A head the caller asked to send that cannot be sent as asked: a bug upstream of the codec, never wire input. */
const refuse = (message: string) => new Http1Error(500, "MALFORMED", `cannot serialise head: ${message}`);
